//! Issue tests 1 and 8: per-probe network RTT against an independent kernel reference
//! (tcpdump on both veth ends), at idle and with every core busy, over IPv4 and IPv6.
//!
//! Judged by what holds at any machine speed, against what the same run measures (issue 12):
//! - (nearly) every probe is matched by the reference;
//! - T2 and T4 are the receive stamps the capture reports: both ingress legs exact;
//! - T1 and T3 precede the capture tap: no egress leg below zero;
//! - meshprobe's error is far below the socket-level (app RTT) error of the same probes.
//!
//! The absolute figures are printed; the absolute goals (1/3 µs idle, 2/5 µs loaded, p50/p99)
//! are the bench's precision scenario's (`cargo xtask bench`), which reports them met or missed.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::load::{WakeLatency, cpu_stress, online_cpus};
use meshprobe_harness::scenario::{Agreement, agreement};
use meshprobe_harness::stats::{percentile, us};
use meshprobe_harness::{Family, TestEnv, TwoHosts};

const MIN_MATCHED: f64 = 0.99;
/// Share of matched probes whose ingress legs must be exact. Not all: a probe whose reply came
/// without room for the in-band T4 takes T4 elsewhere (the t4 sources line says which).
const MIN_INGRESS_EXACT: f64 = 0.99;
/// meshprobe's network-RTT error against the socket-level error of the same probes: the p50 of
/// the first at most this fraction of the p50 of the second, and likewise at p99. The egress
/// legs (TC → tap) that make meshprobe's error are a few calls of the path the socket-level
/// error spans (syscalls, the UDP/IP stack, wake-ups, the reflector's turnaround), so the
/// ratio holds on a slow machine as on a fast one.
const MAX_ERROR_RATIO: f64 = 0.1;
/// Probes per run (the issue asks for ≥ 1000). p99 rests on the worst 1 %: 2000 probes give 20
/// samples there, a steadier estimate than 10.
const PROBES: u32 = 2000;

fn check(label: &str, a: &Agreement, count: u32) -> Result<()> {
    ensure!(a.sent >= count as u64, "{label}: sent {} < {count}", a.sent);
    ensure!(
        a.matched_frac() >= MIN_MATCHED,
        "{label}: only {} of {} probes matched a reference RTT ({} probe lines, capture drops {})",
        a.matched,
        a.sent,
        a.probes,
        a.capture_drops
    );
    let exact = a.ingress_exact();
    ensure!(
        exact as f64 >= MIN_INGRESS_EXACT * a.matched as f64,
        "{label}: ingress legs exact for only {exact} of {} probes: {}",
        a.matched,
        a.legs_report()
    );
    ensure!(
        a.egress_negative() == 0,
        "{label}: {} probes stamped after the capture tap saw them leave: {}",
        a.egress_negative(),
        a.legs_report()
    );
    let app = a.app_abs_err();
    for pct in [50.0, 99.0] {
        let net = a.p(pct);
        let sock = percentile(&app, pct).unwrap_or(0);
        ensure!(
            net as f64 <= MAX_ERROR_RATIO * sock as f64,
            "{label}: p{pct} |error| {} is not below {MAX_ERROR_RATIO} × the socket-level \
             p{pct} |error| {} of the same probes: {}",
            us(net),
            us(sock),
            a.report(label)
        );
    }
    Ok(())
}

fn run(test: &str, f: Family, count: u32) -> Result<()> {
    let Some(env) = TestEnv::acquire(test, &["tcpdump", "stress-ng", "ethtool"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;

    // Idle, as latency measurements are made: no load, CPUs polling rather than halting
    // between probes (see WakeLatency).
    let idle = {
        let wake = WakeLatency::zero();
        let a = agreement(&env.mp, &t, f, count, "1ms")?;
        eprintln!(
            "{} (PM QoS cpu_dma_latency 0: {})",
            a.report(&format!("{} idle", f.label())),
            if wake.held() { "held" } else { "not available" }
        );
        a
    };
    eprintln!("  legs (capture − stamp): {}", idle.legs_report());
    eprintln!("  {}", idle.stalls_report());

    let loaded = {
        let _stress = cpu_stress(online_cpus(), Duration::from_secs(120))?;
        agreement(&env.mp, &t, f, count, "1ms")?
    };
    eprintln!(
        "{}",
        loaded.report(&format!(
            "{} loaded ({} CPU hogs)",
            f.label(),
            online_cpus()
        ))
    );
    eprintln!("  legs (capture − stamp): {}", loaded.legs_report());
    eprintln!("  {}", loaded.stalls_report());

    check("idle", &idle, count)?;
    check("loaded", &loaded, count)
}

#[test]
fn correctness_ipv4_matches_capture_reference() -> Result<()> {
    run(
        "correctness_ipv4_matches_capture_reference",
        Family::V4,
        PROBES,
    )
}

#[test]
fn correctness_ipv6_matches_capture_reference() -> Result<()> {
    run(
        "correctness_ipv6_matches_capture_reference",
        Family::V6,
        PROBES,
    )
}
