//! Issue tests 1 and 8: per-probe network RTT against an independent kernel reference
//! (tcpdump on both veth ends), at idle and with every core busy, over IPv4 and IPv6.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_tests::load::{WakeLatency, cpu_stress, online_cpus};
use meshprobe_tests::scenario::agreement;
use meshprobe_tests::{Family, TestEnv, TwoHosts};

/// p99 of |meshprobe − reference| at idle.
const IDLE_P99_NS: i64 = 5_000;
/// p99 of |meshprobe − reference| with every core busy.
const LOADED_P99_NS: i64 = 20_000;
const MIN_MATCHED: f64 = 0.99;
/// Probes per run (the issue asks for ≥ 1000). p99 rests on the worst 1 %: 2000 probes give 20
/// samples there, a steadier estimate than 10.
const PROBES: u32 = 2000;

fn run(test: &str, f: Family, count: u32) -> Result<()> {
    let Some(env) = TestEnv::acquire(test, &["tcpdump", "stress-ng", "ethtool"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;

    // Idle, as latency measurements are made: no load, CPUs polling rather than halting
    // between probes (see WakeLatency). Without it the same VM measures idle p99 4.4-5.5 µs,
    // all of it in the egress legs' cold path (the capture tap's skb_clone included).
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

    for (label, a) in [("idle", &idle), ("loaded", &loaded)] {
        ensure!(a.sent >= count as u64, "{label}: sent {} < {count}", a.sent);
        ensure!(
            a.matched_frac() >= MIN_MATCHED,
            "{label}: only {} of {} probes matched a reference RTT ({} probe lines, capture drops {})",
            a.matched,
            a.sent,
            a.probes,
            a.capture_drops
        );
    }
    ensure!(
        idle.p(99.0) <= IDLE_P99_NS,
        "idle p99 |error| {} ns > {IDLE_P99_NS} ns: {}",
        idle.p(99.0),
        idle.report("idle")
    );
    ensure!(
        loaded.p(99.0) <= LOADED_P99_NS,
        "loaded p99 |error| {} ns > {LOADED_P99_NS} ns: {}",
        loaded.p(99.0),
        loaded.report("loaded")
    );
    Ok(())
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
