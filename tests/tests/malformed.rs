//! Issue test 7: malformed requests get no reply, do not hurt the reflector, and are counted.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meshprobe_tests::craft::{UdpFrame, send_frames};
use meshprobe_tests::meshprobe::ebpf_counter;
use meshprobe_tests::stamp::build_request;
use meshprobe_tests::topo::mac_of;
use meshprobe_tests::{Family, STAMP_PORT, TestEnv, TwoHosts};

const SPORT: u16 = 40001;

/// Datagrams arriving on `sock` within `window`.
fn replies_within(sock: &UdpSocket, window: Duration) -> Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(out);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[test]
fn malformed_requests_are_dropped_and_counted() -> Result<()> {
    let Some(env) = TestEnv::acquire("malformed_requests_are_dropped_and_counted", &["ping"])?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let mut refl = env.mp.reflect(&t.b, &[])?;
    let (a, b) = (t.a_addr(Family::V4), t.b_addr(Family::V4));
    let sock = t.a.enter(|| UdpSocket::bind(SocketAddr::new(a, SPORT)))??;
    let base = UdpFrame::new(
        mac_of(&t.a, TwoHosts::A_IF)?,
        mac_of(&t.b, TwoHosts::B_IF)?,
        a,
        b,
        SPORT,
        STAMP_PORT,
        Vec::new(),
    );
    // 1. A 20-octet payload: shorter than the 44-octet base packet.
    let mut short = base.clone();
    short.payload = vec![0x11; 20];
    // 2. UDP length claims 40 octets more than the datagram holds.
    let mut lying = base.clone();
    lying.payload = build_request(2, 0x5a5a, None);
    lying.udp_len = Some((8 + lying.payload.len() + 40) as u16);
    // 3. An Extra Padding TLV whose length runs past the end of the packet.
    let mut tlv = base.clone();
    tlv.payload = build_request(3, 0x5a5a, Some((200, 16)));
    let tlv_req_len = tlv.payload.len();
    let mut tlv_reply = None;
    for (name, frame) in [
        ("20-octet", &short),
        ("UDP length overrun", &lying),
        ("TLV length overrun", &tlv),
    ] {
        send_frames(&t.a, TwoHosts::A_IF, &[frame.build()?], Duration::ZERO)?;
        let got = replies_within(&sock, Duration::from_millis(500))?;
        eprintln!("{name}: {} replies within 500 ms", got.len());
        if name == "TLV length overrun" && got.len() == 1 {
            tlv_reply = Some(got[0].clone());
            continue;
        }
        ensure!(
            got.is_empty(),
            "{} replies to the {name} request: {got:02x?}",
            got.len()
        );
    }
    // RFC 8972 §4: a packet whose TLV Length overruns the packet is answered with the M
    // (malformed) flag set in that TLV and the rest copied, at the request's length.
    let Some(r) = &tlv_reply else {
        anyhow::bail!(
            "the TLV length overrun got no reply (RFC 8972 §4: reflect it with the M flag)"
        );
    };
    ensure!(
        r.len() == tlv_req_len,
        "reply of {} octets to a {tlv_req_len}-octet request",
        r.len()
    );
    let flags = r[probe_common::wire::TLV_START];
    ensure!(
        flags & 0x40 != 0,
        "reply to the TLV length overrun does not set the M flag (TLV flags {flags:#04x})"
    );
    ensure!(
        refl.is_running(),
        "reflector died on malformed input: {}",
        refl.child.stderr_text()
    );

    // Control: a well-formed 44-octet request from the same crafted path is answered, so the
    // silence above means something.
    let mut good = base.clone();
    good.payload = build_request(4, 0x5a5a, None);
    send_frames(&t.a, TwoHosts::A_IF, &[good.build()?], Duration::ZERO)?;
    let got = replies_within(&sock, Duration::from_millis(500))?;
    ensure!(
        got.len() == 1,
        "well-formed crafted request got {} replies",
        got.len()
    );

    let run = env.mp.ping(
        &t.a,
        &[&b.to_string(), "-c", "3", "-i", "100ms"],
        Duration::from_secs(20),
    )?;
    let s = run.summary()?;
    ensure!(
        s.received == 3,
        "reflector answered {} of 3 after malformed input: {s:?}",
        s.received
    );

    let sum = refl.stop()?;
    let malformed = sum["malformed"].as_u64().unwrap_or(0);
    let skip_short = ebpf_counter(&sum, "skip_short");
    eprintln!("reflector summary: {sum}");
    eprintln!("malformed {malformed}, ebpf skip_short {skip_short}");
    // The 20-octet payload and the lying UDP length both fail the eBPF base-length check
    // (skip_short); the lying one never reaches the socket (the kernel drops it), so only the
    // eBPF counter sees it. The 20-octet one reaches userspace and is dropped there
    // (malformed); the TLV overrun is answered and counted as malformed_tlv.
    let malformed_tlv = sum["malformed_tlv"].as_u64().unwrap_or(0);
    ensure!(
        skip_short == 2,
        "ebpf skip_short {skip_short}, expected 2 (the 20-octet and the UDP-length-overrun requests)"
    );
    ensure!(
        malformed == 1,
        "malformed {malformed}, expected 1 (the 20-octet request)"
    );
    ensure!(
        malformed_tlv == 1,
        "malformed_tlv {malformed_tlv}, expected 1 (the TLV length overrun)"
    );
    Ok(())
}
