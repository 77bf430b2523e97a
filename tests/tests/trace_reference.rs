//! Issue 18: the tracepoint reference (`meshprobe-tracer`: `net_dev_start_xmit`, `netif_rx`, ...)
//! against the capture reference (tcpdump on both veth ends), leg by leg, on the same probes.
//!
//! What the kernel's code order says, and what is asserted (see harness::trace):
//! - out (A request, B reply): the tap stamps its clone in `dev_queue_xmit_nit`, then
//!   `xmit_one` fires `net_dev_start_xmit`: trace ≥ capture for every probe;
//! - in (B request, A reply): `netif_rx_internal` stamps the skb (the time the capture reports)
//!   right before `netif_rx` fires: trace ≥ capture for every probe, by far less than out
//!   (a few instructions against the tap's clone and delivery): p99 of in below p50 of out;
//! - so the trace RTT is the capture RTT less the two taps' work (per probe, trace RTT −
//!   capture RTT = (A in + B in) − (A out + B out) of the legs: printed, not judged again);
//! - (nearly) every probe the capture matched, the trace matched too, with no event lost.
//!
//! Then the tracepoint reference alone (no capture: nothing clones the probes): it matches
//! (nearly) every probe, loses no event, and meshprobe's TC egress stamps T1 and T3 precede
//! the hand-off for every probe (TC egress runs before `xmit_one`).
//!
//! The figures (per leg p50/p99, meshprobe against each reference) are printed.

use anyhow::{Result, ensure};
use meshprobe_harness::scenario::{
    AgreementRun, LEG_NAMES, MIN_MATCHED, Refs, agreement_run, agreement_traced,
};
use meshprobe_harness::stats::{percentile, us};
use meshprobe_harness::{Family, TestEnv, TwoHosts};

/// Share of probes whose T3 must come through the follow-up (see `check_alone`).
const MIN_T3_HANDOFF: f64 = 0.99;
const PROBES: u32 = 1000;

fn check(label: &str, r: &AgreementRun) -> Result<()> {
    let tr = r.traced.as_ref().expect("traced run");
    let both = &tr.both;
    eprintln!(
        "{label}: tracer at {:?}, {} events, counters {:?}",
        tr.result.points,
        tr.result.events.len(),
        tr.result.counters
    );
    eprintln!("  {}", both.report());
    eprintln!("  {}", r.agreement.report("meshprobe vs capture reference"));
    eprintln!("    legs (capture − stamp): {}", r.agreement.legs_report());
    eprintln!(
        "  {}",
        tr.agreement.report("meshprobe vs tracepoint reference")
    );
    eprintln!("    legs (trace − stamp): {}", tr.agreement.legs_report());

    ensure!(
        tr.result.dropped() == 0,
        "{label}: the tracer lost {} events",
        tr.result.dropped()
    );
    ensure!(
        both.legs.len() as f64 >= MIN_MATCHED * both.captured as f64,
        "{label}: the trace matched only {} of the {} probes the capture matched",
        both.legs.len(),
        both.captured
    );
    let n = both.legs.len();
    for (i, name) in LEG_NAMES.iter().enumerate() {
        let before = both.legs.iter().filter(|l| l[i] < 0).count();
        ensure!(
            before == 0,
            "{label}: {name}: the tracepoint fired before the capture's stamp for {before} of \
             {n} probes: {}",
            both.report()
        );
    }
    let out: Vec<i64> = both.legs.iter().flat_map(|l| [l[0], l[2]]).collect();
    let inn: Vec<i64> = both.legs.iter().flat_map(|l| [l[1], l[3]]).collect();
    let (out_p50, in_p99) = (
        percentile(&out, 50.0).unwrap_or(0),
        percentile(&inn, 99.0).unwrap_or(i64::MAX),
    );
    ensure!(
        in_p99 < out_p50,
        "{label}: receive legs p99 {} not below the hand-off legs' p50 {}: {}",
        us(in_p99),
        us(out_p50),
        both.report()
    );
    Ok(())
}

/// The tracepoint reference alone.
fn check_alone(label: &str, r: &AgreementRun, count: u32) -> Result<()> {
    let tr = r.traced.as_ref().expect("traced run");
    let a = &tr.agreement;
    eprintln!(
        "  {}",
        a.report(&format!(
            "{label} meshprobe vs tracepoint reference, no capture"
        ))
    );
    eprintln!("    legs (trace − stamp): {}", a.legs_report());
    ensure!(
        tr.result.dropped() == 0,
        "{label}: the tracer lost {} events",
        tr.result.dropped()
    );
    ensure!(a.sent >= count as u64, "{label}: sent {} < {count}", a.sent);
    ensure!(
        a.matched_frac() >= MIN_MATCHED,
        "{label}: the trace matched only {} of {} probes",
        a.matched,
        a.sent
    );
    // The probes' egress stamps are the hand-off's (T1 in the sender's record, T3 through the
    // reflector's follow-up), where the program loaded (the ready line says). T3's comes with
    // the session's next reply: the run's last sample has none, and one whose next reply is
    // later than its probe's deadline keeps its TC T3, so nearly all, not all.
    let n = a.matched;
    let t3 = a.handoff_t3.iter().filter(|(h, _)| *h).count();
    if r.ping.kernel_t1_source() == "handoff" {
        ensure!(
            a.handoff_t1() as f64 >= MIN_MATCHED * n as f64
                && t3 as f64 >= MIN_T3_HANDOFF * n as f64,
            "{label}: hand-off stamps for only {} T1 and {t3} T3 of {n} probes; sender {}",
            a.handoff_t1(),
            r.ping
                .summaries
                .first()
                .map(|s| format!(
                    "follow-ups applied {} ignored {}",
                    s.follow_up_applied, s.follow_up_ignored
                ))
                .unwrap_or_default()
        );
    }
    // A TC stamp before the hand-off: trace − stamp ≥ 0 (a hand-off stamp is at the trace's
    // own point, in attach order).
    ensure!(
        a.egress_negative() == 0,
        "{label}: {} probes stamped after the driver hand-off: {}",
        a.egress_negative(),
        a.legs_report()
    );
    Ok(())
}

fn run(test: &str, f: Family) -> Result<()> {
    let Some(env) = TestEnv::acquire(test, &["tcpdump"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let r = agreement_traced(&env.mp, &t, f, PROBES, "1ms", &[])?;
    check(f.label(), &r)?;
    let alone = agreement_run(&env.mp, &t, f, PROBES, "1ms", &[], Refs::Trace)?;
    check_alone(f.label(), &alone, PROBES)
}

#[test]
fn trace_reference_ipv4_against_capture() -> Result<()> {
    run("trace_reference_ipv4_against_capture", Family::V4)
}

#[test]
fn trace_reference_ipv6_against_capture() -> Result<()> {
    run("trace_reference_ipv6_against_capture", Family::V6)
}
