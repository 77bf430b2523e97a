//! Issue 13, the reflection loop (CVE-2024-2169): one spoofed request from A's reflector port
//! to B's, with kernel-stamping reflectors on both, must not start an endless exchange.
//!
//! Same port (862 on both): the source-port rule stops it at B (at most the crafted datagram
//! crosses the link). Different configured ports (4000 on A, 5000 on B): B cannot know that
//! 4000 is a reflector port and answers once; A must refuse that reply by its shape (a reply's
//! octets 36..44 are never all zero), so at most two datagrams cross the link.
//!
//! Before (main 265afe9): 862→862 the two reflectors answered each other for the whole 3 s
//! (see the report of issue 13: tens of thousands of datagrams).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::safety::{FAMILIES, frame_from_a, refused};
use meshprobe_harness::stamp::build_request;
use meshprobe_harness::{Capture, Family, TestEnv, TwoHosts};

/// How long the link is watched after the crafted request.
const WATCH: Duration = Duration::from_secs(3);

/// Sends one request from A:`a_port` to B:`b_port` (reflectors listening on both), watches
/// the link for `WATCH`, and returns (datagrams on the link, A's summary, B's summary).
fn one_spoofed_request(
    env: &TestEnv,
    t: &TwoHosts,
    f: Family,
    a_port: u16,
    b_port: u16,
) -> Result<(usize, serde_json::Value, serde_json::Value)> {
    let (a_pa, b_pa) = (a_port.to_string(), b_port.to_string());
    let ra = env.mp.reflect(&t.a, &["-p", &a_pa])?;
    let rb = env.mp.reflect(&t.b, &["-p", &b_pa])?;
    let cap = Capture::start_filter(
        &t.b,
        TwoHosts::B_IF,
        &format!("udp and (port {a_port} or port {b_port})"),
    )?;
    let (a, b): (IpAddr, IpAddr) = (t.a_addr(f), t.b_addr(f));
    let frame = frame_from_a(t, a, a_port, b, b_port, build_request(1, 0x1313, None))?;
    meshprobe_harness::craft::send_frames(&t.a, TwoHosts::A_IF, &[frame], Duration::ZERO)?;
    std::thread::sleep(WATCH);
    // Stop both first: on a binary that loops, the exchange ends only with them.
    let sa = ra.stop()?;
    let sb = rb.stop()?;
    let got = cap.stop()?;
    Ok((got.packets.len(), sa, sb))
}

#[test]
fn a_spoofed_request_between_two_reflectors_does_not_loop() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "a_spoofed_request_between_two_reflectors_does_not_loop",
        &["tcpdump"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    for f in FAMILIES {
        let (n, sa, sb) = one_spoofed_request(&env, &t, f, 862, 862)?;
        eprintln!(
            "{} 862->862: {n} datagrams in {WATCH:?}; A requests {} refused {}, B requests {} \
             refused {}",
            f.label(),
            sa["requests"],
            sa["refused"],
            sb["requests"],
            sb["refused"]
        );
        ensure!(
            n <= 1,
            "{}: {n} datagrams crossed the link after one spoofed request 862->862 (a loop)",
            f.label()
        );
        ensure!(
            refused(&sb, "source_port") == 1 && sb["replies"] == 0,
            "{}: B did not refuse the request from port 862 by its source port: {sb}",
            f.label()
        );

        let (n, sa, sb) = one_spoofed_request(&env, &t, f, 4000, 5000)?;
        eprintln!(
            "{} 4000->5000: {n} datagrams in {WATCH:?}; A requests {} refused {}, B requests \
             {} replies {}",
            f.label(),
            sa["requests"],
            sa["refused"],
            sb["requests"],
            sb["replies"]
        );
        ensure!(
            n <= 2,
            "{}: {n} datagrams crossed the link after one spoofed request 4000->5000 (a loop)",
            f.label()
        );
        ensure!(
            refused(&sa, "reflected") == 1 && sa["replies"] == 0,
            "{}: A did not refuse B's reply by its shape: {sa}",
            f.label()
        );
    }
    Ok(())
}
