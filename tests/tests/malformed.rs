//! Issue test 7: malformed requests get no reply, do not hurt the reflector, and are counted.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meshprobe_harness::craft::{UdpFrame, send_frames};
use meshprobe_harness::meshprobe::ebpf_counter;
use meshprobe_harness::stamp::{build_request, reply_key};
use meshprobe_harness::topo::mac_of;
use meshprobe_harness::{Family, STAMP_PORT, TestEnv, TwoHosts};

const SPORT: u16 = 40001;

/// Sender sequence numbers of the crafted requests (a reply echoes it at offset 24).
const SEQ_LYING: u32 = 2;
const SEQ_TLV: u32 = 3;
const SEQ_GOOD: u32 = 4;

/// Every reply that arrived on `sock` until one to the well-formed request `SEQ_GOOD` (the
/// requests are sent in order and it goes last), at most `limit`, a safety limit.
fn replies_until_good(sock: &UdpSocket, limit: Duration) -> Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "the well-formed crafted request got no reply within {limit:?}; replies: {out:02x?}"
        );
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                out.push(buf[..n].to_vec());
                if reply_key(&buf[..n]).is_some_and(|(_, seq)| seq == SEQ_GOOD) {
                    return Ok(out);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whatever is already waiting on `sock`.
fn pending_replies(sock: &UdpSocket) -> Result<Vec<Vec<u8>>> {
    sock.set_nonblocking(true)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    sock.set_nonblocking(false)?;
    Ok(out)
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
    lying.payload = build_request(SEQ_LYING, 0x5a5a, None);
    lying.udp_len = Some((8 + lying.payload.len() + 40) as u16);
    // 3. An Extra Padding TLV whose length runs past the end of the packet.
    let mut tlv = base.clone();
    tlv.payload = build_request(SEQ_TLV, 0x5a5a, Some((200, 16)));
    let tlv_req_len = tlv.payload.len();
    // Control, sent last: a well-formed 44-octet request on the same crafted path is answered,
    // so the silence about the others means something, and its reply ends the wait (no reply
    // window: a slow reply is matched to its request by sequence number, not by arrival time).
    let mut good = base.clone();
    good.payload = build_request(SEQ_GOOD, 0x5a5a, None);
    let frames = [&short, &lying, &tlv, &good]
        .iter()
        .map(|f| f.build())
        .collect::<Result<Vec<_>>>()?;
    send_frames(&t.a, TwoHosts::A_IF, &frames, Duration::ZERO)?;
    let mut replies = replies_until_good(&sock, Duration::from_secs(10))?;
    ensure!(
        refl.is_running(),
        "reflector died on malformed input: {}",
        refl.child.stderr_text()
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
    // Anything that came in behind the control reply counts too.
    replies.extend(pending_replies(&sock)?);

    let seq_of = |r: &Vec<u8>| reply_key(r).map(|(_, seq)| seq);
    let to =
        |seq: u32| -> Vec<&Vec<u8>> { replies.iter().filter(|r| seq_of(r) == Some(seq)).collect() };
    let (to_lying, to_tlv, to_good) = (to(SEQ_LYING), to(SEQ_TLV), to(SEQ_GOOD));
    // A reply to the 20-octet request could carry no sequence number at all.
    let others: Vec<_> = replies
        .iter()
        .filter(|r| !matches!(seq_of(r), Some(SEQ_LYING | SEQ_TLV | SEQ_GOOD)))
        .collect();
    eprintln!(
        "replies: 20-octet/other {}, UDP length overrun {}, TLV length overrun {}, \
         well-formed {}",
        others.len(),
        to_lying.len(),
        to_tlv.len(),
        to_good.len()
    );
    ensure!(
        others.is_empty(),
        "{} replies to the 20-octet request (or unknown): {others:02x?}",
        others.len()
    );
    ensure!(
        to_lying.is_empty(),
        "{} replies to the UDP length overrun request: {to_lying:02x?}",
        to_lying.len()
    );
    ensure!(
        to_good.len() == 1,
        "well-formed crafted request got {} replies",
        to_good.len()
    );
    // RFC 8972 §4: a packet whose TLV Length overruns the packet is answered with the M
    // (malformed) flag set in that TLV and the rest copied, at the request's length.
    let r = match to_tlv.as_slice() {
        [r] => *r,
        [] => anyhow::bail!(
            "the TLV length overrun got no reply (RFC 8972 §4: reflect it with the M flag)"
        ),
        more => anyhow::bail!(
            "{} replies to the TLV length overrun request: {more:02x?}",
            more.len()
        ),
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
