//! Issue 18: egress stamps at the driver hand-off (tp_btf `net_dev_start_xmit`, after the TC
//! hook and the capture tap, just before the driver). Against the capture reference of the
//! same run:
//! - the stamping says so (ready lines, reflector summary), and (nearly) every probe's T1 is
//!   the hand-off time;
//! - per probe, the hand-off T1 follows the TC T1 its request carried on the wire and the
//!   capture tap's out time (the kernel's egress order), the ingress legs stay exact, and the
//!   error stays far below the socket-level error (`Agreement::check_kernel_stamps`);
//! - the reflector's hand-off program records a follow-up (`FOLLOW_UP` insert, counted) for
//!   (nearly) every reply it sent, and the sender's a hand-off time for every request;
//! - `--handoff off` (`MESHPROBE_HANDOFF`): TC stamps, and the output says so, judged by the
//!   same rule.
//!
//! Foreign datagrams from another socket with our port: `safety_foreign.rs`.

use anyhow::{Result, ensure};
use meshprobe_harness::load::WakeLatency;
use meshprobe_harness::meshprobe::ebpf_counter;
use meshprobe_harness::scenario::{AgreementRun, agreement_with};
use meshprobe_harness::{Family, TestEnv, TwoHosts};

const PROBES: u32 = 500;
/// Share of probes whose T1 must be the hand-off time, and of replies with a follow-up.
const MIN_HANDOFF: f64 = 0.99;

/// `handoff` in the ping's and the reflector's ready lines and the reflector's summary.
fn says(r: &AgreementRun, state: &str) -> Result<()> {
    let ready = r.ping.ready.clone().unwrap_or_default();
    for (what, line) in [
        ("ping ready", &ready),
        ("reflector ready", &r.reflector_ready),
        ("reflector summary", &r.reflector_summary),
    ] {
        ensure!(
            line["timestamping"] == "kernel" && line["handoff"] == state,
            "{what} does not say kernel stamps with hand-off {state}: {line}"
        );
    }
    Ok(())
}

fn run(test: &str, f: Family) -> Result<()> {
    let Some(env) = TestEnv::acquire(test, &["tcpdump"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let _wake = WakeLatency::zero();

    let on = agreement_with(&env.mp, &t, f, PROBES, "1ms", &[])?;
    let label = format!("{} hand-off", f.label());
    eprintln!("{}", on.agreement.report(&label));
    eprintln!("  legs (capture − stamp): {}", on.agreement.legs_report());
    if on.reflector_ready["handoff"] != "on" {
        eprintln!(
            "SKIPPED {test}: the hand-off program did not load on this kernel (the reflector \
             says {}); the TC stamps stand",
            on.reflector_ready
        );
        return Ok(());
    }
    says(&on, "on")?;
    let a = &on.agreement;
    let handoff = a.handoff_t1();
    let after_tc: Vec<i64> = a.handoff.iter().filter_map(|(_, d)| *d).collect();
    eprintln!(
        "  T1 hand-off for {handoff} of {} matched; hand-off − TC T1 (wire) p50 {} ns over {} \
         probes",
        a.matched,
        meshprobe_harness::stats::percentile(&after_tc, 50.0).unwrap_or(0),
        after_tc.len()
    );
    ensure!(
        handoff as f64 >= MIN_HANDOFF * a.matched as f64,
        "{label}: T1 is the hand-off time for only {handoff} of {} matched probes: {:?}",
        a.matched,
        a.t1_sources
    );
    ensure!(
        after_tc.len() as f64 >= MIN_HANDOFF * a.matched as f64,
        "{label}: the capture gave the wire T1 of only {} of {} probes",
        after_tc.len(),
        a.matched
    );
    // Egress order per probe (TC ≤ tap ≤ hand-off), ingress exact, error ratio.
    a.check_kernel_stamps(&label, PROBES)?;

    let (sender, refl) = (
        on.ping.stamping.clone().unwrap_or_default(),
        &on.reflector_summary,
    );
    let s = on.ping.summary()?;
    let replies = refl["replies"].as_u64().unwrap_or(0);
    let (t1s, follow_ups) = (
        ebpf_counter(&sender, "handoff_t1"),
        ebpf_counter(refl, "handoff_follow_up"),
    );
    eprintln!(
        "  sender handoff_t1 {t1s} of {} sent; reflector handoff_follow_up {follow_ups} of \
         {replies} replies; skips: sender {sender}",
        s.sent
    );
    ensure!(
        t1s <= s.sent && t1s as f64 >= MIN_HANDOFF * s.sent as f64,
        "{label}: hand-off times for {t1s} of {} requests",
        s.sent
    );
    ensure!(
        follow_ups <= replies && follow_ups as f64 >= MIN_HANDOFF * replies as f64,
        "{label}: follow-ups recorded for {follow_ups} of {replies} replies: {refl}"
    );

    // Off: TC stamps, said so, judged by the same rule.
    let off = agreement_with(&env.mp, &t, f, PROBES, "1ms", &["--handoff", "off"])?;
    let label = format!("{} --handoff off", f.label());
    eprintln!("{}", off.agreement.report(&label));
    eprintln!("  legs (capture − stamp): {}", off.agreement.legs_report());
    says(&off, "off")?;
    let not_tc = off
        .ping
        .probes
        .iter()
        .filter(|p| p.t1_source.as_deref() != Some("tc"))
        .count();
    ensure!(
        not_tc == 0 && off.agreement.handoff_t1() == 0,
        "{label}: {not_tc} probes with a T1 not from TC: {:?}",
        off.agreement.t1_sources
    );
    let note = off.ping.summary()?.note.clone().unwrap_or_default();
    ensure!(
        note.contains("egress at TC: --handoff off"),
        "{label}: the note does not say why: {note}"
    );
    let off_sender = off.ping.stamping.clone().unwrap_or_default();
    ensure!(
        ebpf_counter(&off_sender, "handoff_t1") == 0
            && ebpf_counter(&off.reflector_summary, "handoff_follow_up") == 0,
        "{label}: hand-off counters moved: {off_sender} {}",
        off.reflector_summary
    );
    off.agreement.check_kernel_stamps(&label, PROBES)
}

#[test]
fn handoff_ipv4_follows_the_tap_and_agrees_with_capture_reference() -> Result<()> {
    run(
        "handoff_ipv4_follows_the_tap_and_agrees_with_capture_reference",
        Family::V4,
    )
}

#[test]
fn handoff_ipv6_follows_the_tap_and_agrees_with_capture_reference() -> Result<()> {
    run(
        "handoff_ipv6_follows_the_tap_and_agrees_with_capture_reference",
        Family::V6,
    )
}
