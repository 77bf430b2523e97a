//! Issue 13: no forged kernel stamp is trusted. A request or reply that the programs skip (an
//! IPv4 fragment, an IPv6 packet with a longer extension-header chain than they walk) reaches
//! the socket with whatever octets the sender put where a receive-stamp block goes. Those
//! octets carry a forged block (the old constant marker, or a guessed key) with a time far in
//! the past; neither the reflector (T2) nor `meshprobe ping` (T4) may use it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::craft::{UdpFrame, send_frames, send_frames_here};
use meshprobe_harness::meshprobe::ebpf_counter;
use meshprobe_harness::stamp::{build_reply, build_request, ptp_ns, tai_now_ns};
use meshprobe_harness::topo::mac_of;
use meshprobe_harness::{Family, Netns, STAMP_PORT, TestEnv, TwoHosts};
use probe_common::wire;

/// Seconds of the forged receive time: 1970, far from any real stamp.
const FORGED_SECS: u32 = 1_000_000;
const SPORT: u16 = 40002;

/// How a forged block claims to be the kernel's.
#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// The layout main used: secs, nsecs, hw_hi, hw_lo, magic "MP", source, pad.
    OldMagic,
    /// The current layout with a guessed key.
    GuessedKey(u32),
}

impl Forgery {
    fn block(self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&FORGED_SECS.to_be_bytes());
        b[4..8].copy_from_slice(&(1u32 << 30 | 7).to_be_bytes()); // source 1, 7 ns
        match self {
            Forgery::OldMagic => {
                b[4..8].copy_from_slice(&7u32.to_be_bytes());
                b[16..20].copy_from_slice(&[0x4D, 0x50, 0x01, 0x00]);
            }
            Forgery::GuessedKey(k) => b[16..20].copy_from_slice(&k.to_be_bytes()),
        }
        b
    }
}

const FORGERIES: [Forgery; 3] = [
    Forgery::OldMagic,
    Forgery::GuessedKey(0xDEAD_BEEF),
    Forgery::GuessedKey(1),
];

/// How the packet slips past the programs.
fn skipped(f: UdpFrame, family: Family) -> UdpFrame {
    let mut f = f;
    match family {
        // The first fragment carries the UDP header; the programs skip fragments.
        Family::V4 => f.ipv4_fragment_at = Some(32),
        // One header more than the programs walk (4).
        Family::V6 => f.ipv6_dst_opts = 5,
    }
    f
}

/// A receive time in PTP format is a real stamp: within a minute of now, not the forged one.
fn check_real(what: &str, ns: u64) -> Result<()> {
    let now = tai_now_ns();
    ensure!(
        ns / 1_000_000_000 != u64::from(FORGED_SECS),
        "{what} is the forged block's time ({ns} ns)"
    );
    ensure!(
        ns.abs_diff(now) < 60_000_000_000,
        "{what} {ns} ns is not a real receive time (now {now})"
    );
    Ok(())
}

#[test]
fn reflector_ignores_forged_t2_blocks_in_skipped_requests() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "reflector_ignores_forged_t2_blocks_in_skipped_requests",
        &[],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let (mac_a, mac_b) = (mac_of(&t.a, TwoHosts::A_IF)?, mac_of(&t.b, TwoHosts::B_IF)?);
    let mut sent = 0u64;
    for family in [Family::V4, Family::V6] {
        let (a, b) = (t.a_addr(family), t.b_addr(family));
        let sock = t.a.enter(|| UdpSocket::bind(SocketAddr::new(a, SPORT)))??;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        for (i, forgery) in FORGERIES.iter().enumerate() {
            let seq = 100 + i as u32;
            let mut req = build_request(seq, 0x5AFE, Some((20, 20)));
            req[wire::REQUEST_RX_STAMP..wire::REQUEST_RX_STAMP + 20]
                .copy_from_slice(&forgery.block());
            let frame = skipped(
                UdpFrame::new(mac_a, mac_b, a, b, SPORT, STAMP_PORT, req),
                family,
            );
            send_frames(&t.a, TwoHosts::A_IF, &frame.build_frames()?, Duration::ZERO)?;
            sent += 1;
            let mut buf = [0u8; 2048];
            let (n, _) = sock
                .recv_from(&mut buf)
                .with_context(|| format!("{} {forgery:?}: no reply", family.label()))?;
            ensure!(n >= wire::BASE_LEN, "short reply");
            let t2 = ptp_ns(&buf[wire::RECEIVE_TIMESTAMP..]);
            eprintln!(
                "{} {forgery:?}: reflector T2 = {} s {} ns",
                family.label(),
                t2 / 1_000_000_000,
                t2 % 1_000_000_000
            );
            check_real(&format!("{} {forgery:?}: T2", family.label()), t2)?;
        }
    }
    let summary = refl.stop()?;
    let untrusted = ebpf_counter(&summary, "rx_block_untrusted");
    let (frag, ext) = (
        ebpf_counter(&summary, "skip_fragment"),
        ebpf_counter(&summary, "skip_ipv6_ext"),
    );
    eprintln!(
        "reflector: rx_block_untrusted {untrusted}, skip_fragment {frag}, skip_ipv6_ext {ext}"
    );
    ensure!(
        untrusted == sent,
        "{sent} forged blocks, {untrusted} counted as untrusted"
    );
    ensure!(frag > 0 && ext > 0, "the programs did not skip the packets");
    Ok(())
}

/// A reflector stand-in on B: answers each request on `STAMP_PORT` with a reply that carries a
/// forged T4 block in its echoed padding, sent as frames that the programs skip.
fn forging_reflector(
    b: &Netns,
    family: Family,
    forgery: Forgery,
    macs: ([u8; 6], [u8; 6]),
    count: u32,
) -> std::thread::JoinHandle<Result<Result<u32>>> {
    let addr = match family {
        Family::V4 => IpAddr::from(TwoHosts::B4),
        Family::V6 => IpAddr::from(TwoHosts::B6),
    };
    b.spawn_thread(move || -> Result<u32> {
        let sock = UdpSocket::bind(SocketAddr::new(addr, STAMP_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut answered = 0;
        let mut buf = [0u8; 2048];
        while answered < count && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < wire::MIN_PROBE_LEN {
                continue;
            }
            let now = tai_now_ns();
            let mut reply = build_reply(&buf[..n], answered, now, now + 1_000, 64)?;
            reply[wire::REPLY_RX_STAMP..wire::REPLY_RX_STAMP + 20]
                .copy_from_slice(&forgery.block());
            let frame = skipped(
                UdpFrame::new(
                    macs.1,
                    macs.0,
                    addr,
                    from.ip(),
                    STAMP_PORT,
                    from.port(),
                    reply,
                ),
                family,
            );
            send_frames_here(TwoHosts::B_IF, &frame.build_frames()?, Duration::ZERO)?;
            answered += 1;
        }
        Ok(answered)
    })
}

#[test]
fn sender_ignores_forged_t4_blocks_in_skipped_replies() -> Result<()> {
    let Some(env) = TestEnv::acquire("sender_ignores_forged_t4_blocks_in_skipped_replies", &[])?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let macs = (mac_of(&t.a, TwoHosts::A_IF)?, mac_of(&t.b, TwoHosts::B_IF)?);
    const N: u32 = 5;
    for family in [Family::V4, Family::V6] {
        for forgery in FORGERIES {
            let fake = forging_reflector(&t.b, family, forgery, macs, N);
            std::thread::sleep(Duration::from_millis(200));
            let peer = t.b_addr(family).to_string();
            let run = env.mp.ping(
                &t.a,
                &[&peer, "-c", &N.to_string(), "-i", "100ms", "-W", "2s"],
                Duration::from_secs(30),
            );
            let answered = fake
                .join()
                .map_err(|_| anyhow::anyhow!("fake panicked"))???;
            let run = run?;
            let s = run.summary()?;
            let label = format!("{} {forgery:?}", family.label());
            let sources: Vec<&str> = run.probes.iter().map(|p| p.t4_source.as_str()).collect();
            let untrusted = run
                .stamping
                .as_ref()
                .map_or(0, |v| ebpf_counter(v, "rx_block_untrusted"));
            eprintln!(
                "{label}: answered {answered}, received {}, T4 sources {sources:?}, \
                 rx_block_untrusted {untrusted}",
                s.received
            );
            ensure!(s.received > 0, "{label}: no reply got through");
            for p in &run.probes {
                if matches!(p.t4_source.as_str(), "tc" | "skb_rx" | "hw" | "map") {
                    bail!(
                        "{label}: seq {} took T4 from the forged block ({}, t4 {} ns)",
                        p.seq,
                        p.t4_source,
                        p.t4_ns
                    );
                }
                check_real(&format!("{label}: seq {} T4", p.seq), p.t4_ns)?;
            }
            ensure!(
                untrusted >= s.received,
                "{label}: {} forged replies received, {untrusted} counted as untrusted",
                s.received
            );
        }
    }
    Ok(())
}
