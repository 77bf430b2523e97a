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

use anyhow::Result;
use meshprobe_harness::load::{WakeLatency, cpu_stress, online_cpus};
use meshprobe_harness::scenario::agreement;
use meshprobe_harness::{Family, TestEnv, TwoHosts};

/// Probes per run (the issue asks for ≥ 1000). p99 rests on the worst 1 %: 2000 probes give 20
/// samples there, a steadier estimate than 10.
const PROBES: u32 = 2000;

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

    idle.check_kernel_stamps("idle", count)?;
    loaded.check_kernel_stamps("loaded", count)
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
