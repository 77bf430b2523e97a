//! Issue 13, reply budgets: a source flooding the reflector gets at most its per-source budget
//! of replies (token bucket: one second's burst, then the rate), and another source probing
//! at the same time is still answered in full. Evidence: a capture of the replies to the
//! flooding address, the reflector's refusal counters, and `meshprobe ping`'s summary.
//!
//! Before (main 265afe9): no budget existed (every request of a flood was answered).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meshprobe_harness::safety::{FAMILIES, refused, refused_total};
use meshprobe_harness::stamp::build_request;
use meshprobe_harness::{Capture, Family, STAMP_PORT, TestEnv, TwoHosts};

/// Replies per second to one source.
const BUDGET: u64 = 50;
/// Requests the flooder sends, about one a millisecond.
const FLOOD: u32 = 1500;
const FLOOD_PORT: u16 = 40003;

fn flood_addr(f: Family) -> IpAddr {
    match f {
        Family::V4 => "198.18.0.31".parse().unwrap(),
        Family::V6 => "fd00::31".parse().unwrap(),
    }
}

#[test]
fn a_flooding_source_gets_its_budget_and_others_are_answered() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "a_flooding_source_gets_its_budget_and_others_are_answered",
        &["tcpdump"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    // The flooder's own address on A, never A's default source (IPv4 secondary; IPv6
    // deprecated), so `ping` from A is another source.
    t.a.run(["ip", "addr", "add", "198.18.0.31/24", "dev", TwoHosts::A_IF])?;
    t.a.run([
        "ip",
        "-6",
        "addr",
        "add",
        "fd00::31/64",
        "dev",
        TwoHosts::A_IF,
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    let budget = format!("{BUDGET}/s");
    for f in FAMILIES {
        let refl = env.mp.reflect(
            &t.b,
            &["--budget-per-source", &budget, "--budget-total", "off"],
        )?;
        let src = flood_addr(f);
        let cap = Capture::start_filter(
            &t.a,
            TwoHosts::A_IF,
            &format!("udp and src port {STAMP_PORT} and dst host {src}"),
        )?;
        let sock =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(src, FLOOD_PORT)))??;
        let to = SocketAddr::new(t.b_addr(f), STAMP_PORT);
        let peer = t.b_addr(f).to_string();
        let mut ping = env.mp.ping_spawn(
            &t.a,
            &["--json", &peer, "-c", "10", "-i", "100ms", "-W", "500ms"],
        )?;
        let start = Instant::now();
        for seq in 0..FLOOD {
            sock.send_to(&build_request(seq, 0x1515, None), to)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        let flood_secs = start.elapsed().as_secs_f64();
        let fin = ping.wait_exit(Duration::from_secs(20))?;
        let run = meshprobe_harness::PingRun::parse(&fin)?;
        let sum = refl.stop()?;
        let replies = cap.stop()?.packets.len() as u64;
        let received = run.summary()?.received;
        // One second's burst, then the rate for as long as the flood lasted (+0.1 s for the
        // last requests still queued when it ended, +1 for rounding).
        let bound = BUDGET + (BUDGET as f64 * (flood_secs + 0.1)).ceil() as u64 + 1;
        eprintln!(
            "{}: flood of {FLOOD} in {flood_secs:.2} s: {replies} replies (bound {bound}); \
             other source: {received}/10 answered; reflector {} requests, {} replies, \
             refused {}",
            f.label(),
            sum["requests"],
            sum["replies"],
            sum["refused"]
        );
        ensure!(
            (BUDGET..=bound).contains(&replies),
            "{}: the flooding source got {replies} replies, expected {BUDGET}..={bound}",
            f.label()
        );
        ensure!(
            received == 10,
            "{}: the other source got {received} of 10 replies during the flood",
            f.label()
        );
        let requests = sum["requests"].as_u64().unwrap_or(0);
        let answered = sum["replies"].as_u64().unwrap_or(0);
        ensure!(
            refused(&sum, "source_budget") == u64::from(FLOOD) - replies
                && refused_total(&sum) == refused(&sum, "source_budget")
                && requests == u64::from(FLOOD) + 10
                && answered == replies + 10,
            "{}: counters do not add up ({FLOOD} flood requests, {replies} replies captured, \
             10 pings): {sum}",
            f.label()
        );
    }
    Ok(())
}
