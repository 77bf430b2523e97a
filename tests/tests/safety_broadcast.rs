//! Issue 13, the reflector answers only unicast requests addressed to a local unicast address,
//! from that address.
//!
//! 1. Requests to the subnet broadcast, 255.255.255.255, 224.0.0.1 and ff02::1 get no reply
//!    (one spoofed packet must not draw an answer from every node of a segment); a unicast
//!    control request sent after them is answered, so the silence means something.
//! 2. A multi-homed reflector (a second address on its interface, not the one the kernel would
//!    pick as source towards the sender) answers from the address each request was sent to.
//!
//! Before (main 265afe9): the subnet broadcast, 255.255.255.255 and ff02::1 requests were
//! answered; the replies to one of the two addresses left from the other (IPv4: to the
//! secondary 198.18.0.11 from 198.18.0.2; IPv6: to fd00::2 from fd00::b), so `ping` lost all 5.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::craft::send_frames;
use meshprobe_harness::safety::{FAMILIES, frame_from_a, refused};
use meshprobe_harness::stamp::{build_request, reply_key};
use meshprobe_harness::topo::add_addr;
use meshprobe_harness::{Capture, Family, STAMP_PORT, TestEnv, TwoHosts};

const SPORT: u16 = 40001;
/// Sequence number of the unicast control request.
const SEQ_CONTROL: u32 = 99;

fn not_unicast(f: Family) -> Vec<IpAddr> {
    match f {
        Family::V4 => vec![
            Ipv4Addr::new(198, 18, 0, 255).into(),
            Ipv4Addr::BROADCAST.into(),
            Ipv4Addr::new(224, 0, 0, 1).into(),
        ],
        Family::V6 => vec![Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).into()],
    }
}

#[test]
fn broadcast_and_multicast_requests_get_no_reply() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "broadcast_and_multicast_requests_get_no_reply",
        &["tcpdump"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    for f in FAMILIES {
        let refl = env.mp.reflect(&t.b, &[])?;
        let cap = Capture::start_filter(
            &t.a,
            TwoHosts::A_IF,
            &format!("udp and src port {STAMP_PORT}"),
        )?;
        let (a, b) = (t.a_addr(f), t.b_addr(f));
        let targets = not_unicast(f);
        let mut frames = Vec::new();
        for (i, &dst) in targets.iter().enumerate() {
            let req = build_request(i as u32 + 1, 0x1414, None);
            frames.push(frame_from_a(&t, a, SPORT, dst, STAMP_PORT, req)?);
        }
        let control = build_request(SEQ_CONTROL, 0x1414, None);
        frames.push(frame_from_a(&t, a, SPORT, b, STAMP_PORT, control)?);
        send_frames(&t.a, TwoHosts::A_IF, &frames, Duration::from_millis(20))?;
        std::thread::sleep(Duration::from_millis(500));
        let sum = refl.stop()?;
        let replies = cap.stop()?.packets;
        let seqs: Vec<Option<u32>> = replies
            .iter()
            .map(|p| reply_key(&p.payload).map(|k| k.1))
            .collect();
        eprintln!(
            "{}: replies captured (by request seq) {seqs:?}; reflector requests {} refused {}",
            f.label(),
            sum["requests"],
            sum["refused"]
        );
        ensure!(
            seqs == [Some(SEQ_CONTROL)],
            "{}: expected only the unicast control request answered, got replies to {seqs:?} \
             (1..={} are requests to {targets:?})",
            f.label(),
            targets.len()
        );
        // Whatever reached the socket besides the control was refused for its destination
        // (224.0.0.1 does not reach a dual-stack socket at all; the broadcasts and ff02::1 do).
        let requests = sum["requests"].as_u64().unwrap_or(0);
        let must_reach = match f {
            Family::V4 => 2,
            Family::V6 => 1,
        };
        ensure!(
            requests > must_reach && refused(&sum, "destination") == requests - 1,
            "{}: refused.destination should count every request but the control ({requests} \
             requests, at least {must_reach} of them to a broadcast or multicast address): {sum}",
            f.label()
        );
    }
    Ok(())
}

#[test]
fn a_multi_homed_reflector_answers_from_the_address_asked() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "a_multi_homed_reflector_answers_from_the_address_asked",
        &["tcpdump"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    // Second addresses the kernel would not choose as source towards A: a secondary IPv4
    // address, and an IPv6 address sharing a shorter prefix with A's than B's first one.
    let second: [(Family, IpAddr); 2] = [
        (Family::V4, Ipv4Addr::new(198, 18, 0, 11).into()),
        (
            Family::V6,
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xb).into(),
        ),
    ];
    for (_, addr) in second {
        let prefix = if addr.is_ipv4() { 24 } else { 64 };
        add_addr(&t.b, TwoHosts::B_IF, addr, prefix)?;
    }
    let refl = env.mp.reflect(&t.b, &[])?;
    for (f, extra) in second {
        for dst in [t.b_addr(f), extra] {
            let cap = Capture::start_filter(
                &t.a,
                TwoHosts::A_IF,
                &format!("udp and src port {STAMP_PORT}"),
            )?;
            let run = env.mp.ping(
                &t.a,
                &[&dst.to_string(), "-c", "5", "-i", "50ms", "-W", "500ms"],
                Duration::from_secs(20),
            );
            let replies = cap.stop()?.packets;
            let sources: Vec<IpAddr> = replies.iter().map(|p| p.src.ip()).collect();
            let received = run
                .as_ref()
                .ok()
                .and_then(|r| r.summary().ok())
                .map(|s| s.received);
            eprintln!(
                "{}: ping {dst}: received {received:?}, reply sources {sources:?}",
                f.label()
            );
            ensure!(
                sources.len() == 5 && sources.iter().all(|s| *s == dst),
                "{}: replies to requests for {dst} came from {sources:?}",
                f.label()
            );
            ensure!(
                received == Some(5),
                "{}: ping {dst} received {received:?} of 5 ({:?})",
                f.label(),
                run.err()
            );
        }
    }
    refl.stop()?;
    Ok(())
}
