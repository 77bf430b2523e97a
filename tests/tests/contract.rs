//! CONTRACT.md: ready lines, per-probe fields and their arithmetic, summary consistency, peer
//! syntaxes, and rejection of bad input. The namespaces share one kernel clock, so the four
//! timestamps of a probe must also be in order.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::meshprobe::{Dist, PingRun};
use meshprobe_harness::stamp::tai_now_ns;
use meshprobe_harness::stats::percentile;
use meshprobe_harness::{Family, TestEnv, TwoHosts};

const PROBES: u32 = 20;

/// `d` agrees with the exact values `v` within histogram precision.
fn check_dist(name: &str, d: &Dist, v: &[i64]) -> Result<()> {
    let close = |a: i64, b: i64| (a - b).abs() <= 2 + b.abs() / 100;
    ensure!(
        d.min <= d.p50 && d.p50 <= d.p90 && d.p90 <= d.p99 && d.p99 <= d.max,
        "{name}: percentiles out of order: {d:?}"
    );
    let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    let p50 = percentile(v, 50.0).unwrap();
    ensure!(
        close(d.min, min) && close(d.max, max),
        "{name}: min/max {d:?} vs exact {min}/{max}"
    );
    ensure!(close(d.p50, p50), "{name}: p50 {} vs exact {p50}", d.p50);
    Ok(())
}

fn check_run(run: &PingRun, peer: &str, iface: &str) -> Result<()> {
    let ready = run.ready.as_ref().unwrap();
    ensure!(ready["role"] == "sender", "sender ready line: {ready}");
    ensure!(
        ready["interfaces"] == serde_json::json!([iface]),
        "sender interfaces: {ready}"
    );
    let s = run.summary()?;
    ensure!(s.peer == peer, "summary peer {} != {peer}", s.peer);
    ensure!(
        s.sent == PROBES as u64 && s.received == s.sent && s.lost == 0 && s.loss_pct == 0.0,
        "{s:?}"
    );
    ensure!(
        run.probes.len() == PROBES as usize,
        "{} probe lines",
        run.probes.len()
    );
    let now = tai_now_ns();
    let ssids: BTreeSet<_> = run.probes.iter().map(|p| p.ssid).collect();
    ensure!(ssids.len() == 1, "one session, several SSIDs: {ssids:?}");
    let seqs: Vec<u32> = run.probes.iter().map(|p| p.seq).collect();
    ensure!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers not consecutive: {seqs:?}"
    );
    for p in &run.probes {
        ensure!(p.peer == peer, "probe peer {}", p.peer);
        ensure!(
            p.timestamping == "kernel",
            "probe timestamping {}",
            p.timestamping
        );
        ensure!(
            p.t1_ns <= p.t2_ns && p.t2_ns <= p.t3_ns && p.t3_ns <= p.t4_ns,
            "seq {}: stamps out of order on a shared clock: {p:?}",
            p.seq
        );
        ensure!(
            now.abs_diff(p.t1_ns) < 120_000_000_000,
            "seq {}: t1 {} is not CLOCK_TAI now {now}",
            p.seq,
            p.t1_ns
        );
        let net = (p.t4_ns - p.t1_ns) as i64 - (p.t3_ns - p.t2_ns) as i64;
        ensure!(
            p.network_rtt_ns == net,
            "seq {}: network_rtt_ns {} != (t4-t1)-(t3-t2) = {net}",
            p.seq,
            p.network_rtt_ns
        );
        ensure!(
            p.turnaround_ns == (p.t3_ns - p.t2_ns) as i64,
            "seq {}: turnaround_ns",
            p.seq
        );
        let outer = (p.t4_ns - p.t1_ns) as i64;
        ensure!(
            p.app_rtt_ns >= outer,
            "seq {}: app_rtt_ns {} < t4-t1 {outer}",
            p.seq,
            p.app_rtt_ns
        );
        ensure!(
            (p.stack_overhead_ns - (p.app_rtt_ns - outer)).abs() <= 1,
            "seq {}: stack_overhead_ns {} != app_rtt - (t4-t1) = {}",
            p.seq,
            p.stack_overhead_ns,
            p.app_rtt_ns - outer
        );
    }
    let col =
        |f: fn(&meshprobe_harness::Probe) -> i64| run.probes.iter().map(f).collect::<Vec<_>>();
    for (name, d, v) in [
        (
            "network_rtt_ns",
            &s.network_rtt_ns,
            col(|p| p.network_rtt_ns),
        ),
        ("turnaround_ns", &s.turnaround_ns, col(|p| p.turnaround_ns)),
        ("app_rtt_ns", &s.app_rtt_ns, col(|p| p.app_rtt_ns)),
        (
            "stack_overhead_ns",
            &s.stack_overhead_ns,
            col(|p| p.stack_overhead_ns),
        ),
    ] {
        let Some(d) = d else {
            anyhow::bail!("summary without {name}")
        };
        check_dist(name, d, &v)?;
    }
    Ok(())
}

#[test]
fn output_follows_the_contract() -> Result<()> {
    let Some(env) = TestEnv::acquire("output_follows_the_contract", &["ping"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let ifs = refl.ready["interfaces"].clone();
    eprintln!("reflector ready: {}", refl.ready);

    let count = PROBES.to_string();
    let timeout = Duration::from_secs(20);
    let mut requests = 0;
    for (arg, peer) in [
        (t.b_addr(Family::V4).to_string(), "198.18.0.2:862"),
        ("198.18.0.2:862".to_string(), "198.18.0.2:862"),
        (t.b_addr(Family::V6).to_string(), "[fd00::2]:862"),
        ("[fd00::2]:862".to_string(), "[fd00::2]:862"),
    ] {
        let run = env
            .mp
            .ping(&t.a, &[&arg, "-c", &count, "-i", "5ms"], timeout)?;
        check_run(&run, peer, TwoHosts::A_IF).map_err(|e| e.context(format!("ping {arg}")))?;
        requests += PROBES as u64;
    }

    for bad in [
        vec!["not-a-host..invalid"],
        vec!["198.18.0.2", "-s", "20"],
        vec!["198.18.0.2", "-i", "fast"],
    ] {
        let mut args = vec!["--json"];
        args.extend(bad.iter().copied());
        let mut c = env.mp.ping_spawn(&t.a, &args)?;
        let fin = c.wait_exit(Duration::from_secs(10))?;
        ensure!(!fin.status.success(), "ping {bad:?} exited 0");
        ensure!(
            !fin.stderr_text().trim().is_empty(),
            "ping {bad:?} failed without a message"
        );
    }

    let sum = refl.stop()?;
    eprintln!(
        "reflector summary: requests {} replies {} malformed {}",
        sum["requests"], sum["replies"], sum["malformed"]
    );
    ensure!(
        sum["requests"] == requests && sum["replies"] == requests,
        "reflector summary {sum}"
    );
    ensure!(
        sum["timestamping"] == "kernel",
        "reflector summary timestamping {}",
        sum["timestamping"]
    );
    ensure!(
        ebpf_names_present(&sum),
        "ebpf_counters lacks some of probe_common::counter::NAMES: {}",
        sum["ebpf_counters"]
    );
    // Default interfaces: every UP interface with an address (loopback included, so probes
    // from the same host are stamped too), each once.
    ensure!(
        ifs == serde_json::json!(["lo", TwoHosts::B_IF]),
        "reflector attached to {ifs}, expected [\"lo\", \"{}\"] (every UP interface with an address, no duplicates)",
        TwoHosts::B_IF
    );
    Ok(())
}

fn ebpf_names_present(sum: &serde_json::Value) -> bool {
    probe_common::counter::NAMES
        .iter()
        .all(|n| sum["ebpf_counters"][n].is_u64())
}
