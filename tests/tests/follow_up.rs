//! The two-step T3 (issue 18): a probe large enough carries meshprobe's follow-up TLV, our
//! reflector fills it (its T2 source, and the hand-off correction of its previous reply when
//! the hand-off program recorded one), and the sender holds each sample for the next reply.
//!
//! Against the same run's baseline (probes too small for the TLV): every probe is still
//! reported exactly once, nothing is lost or rejected, and each probe says where T2 and T3
//! came from. Without the hand-off program every T3 stays the TC stamp (`tc`); with it a
//! corrected one says `handoff`, and the correction never makes the network RTT negative.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::{Family, PingRun, Probe, TestEnv, TwoHosts};

const COUNT: u32 = 100;

fn run(env: &TestEnv, t: &TwoHosts, size: usize) -> Result<PingRun> {
    let refl = env.mp.reflect(&t.b, &[])?;
    let peer = t.b_addr(Family::V4).to_string();
    let (count, size) = (COUNT.to_string(), size.to_string());
    let args = [
        peer.as_str(),
        "-c",
        &count,
        "-i",
        "2ms",
        "-W",
        "500ms",
        "-s",
        &size,
    ];
    let timeout = ping_timeout(COUNT, Duration::from_millis(2), Duration::from_millis(500));
    let run = env.mp.ping(&t.a, &args, timeout)?;
    refl.stop()?;
    let s = run.summaries.first().context("no summary")?;
    ensure!(s.timestamping == "kernel", "size {size}: not kernel mode");
    let mut seqs: Vec<u32> = run.probes.iter().map(|p| p.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    ensure!(
        s.received == u64::from(COUNT)
            && run.probes.len() == COUNT as usize
            && seqs.len() == COUNT as usize,
        "size {size}: {} of {COUNT} answered, {} probe lines, {} distinct",
        s.received,
        run.probes.len(),
        seqs.len()
    );
    ensure!(
        s.lost == 0 && s.rejected.values().sum::<u64>() == 0,
        "size {size}: {s:?}"
    );
    Ok(run)
}

/// How many of `run`'s probes give each value of the source `f` reads.
fn sources(run: &PingRun, f: fn(&Probe) -> &Option<String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in &run.probes {
        *m.entry(f(p).clone().unwrap_or_default()).or_default() += 1;
    }
    m
}

#[test]
fn our_reflector_fills_the_follow_up_and_every_sample_comes_out_once() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "our_reflector_fills_the_follow_up_and_every_sample_comes_out_once",
        &[],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;

    // Baseline: 68 octets, no room for the TLV: the reflector says nothing about T2 and T3.
    let base = run(&env, &t, 68)?;
    let (b2, b3) = (
        sources(&base, |p| &p.t2_source),
        sources(&base, |p| &p.t3_source),
    );
    eprintln!("68 octets: T2 sources {b2:?}, T3 sources {b3:?}");
    ensure!(
        b2.keys().eq(["unspecified"]) && b3.keys().eq(["unspecified"]),
        "without the TLV: T2 {b2:?}, T3 {b3:?}"
    );

    let two = run(&env, &t, 128)?;
    let (s2, s3) = (
        sources(&two, |p| &p.t2_source),
        sources(&two, |p| &p.t3_source),
    );
    let s = &two.summaries[0];
    eprintln!(
        "128 octets: T2 sources {s2:?}, T3 sources {s3:?}, follow-ups applied {} ignored {}",
        s.follow_up_applied, s.follow_up_ignored
    );
    // Our reflector's T2 is a kernel stamp (skb receive stamp by default, TC clock otherwise).
    ensure!(
        s2.keys().all(|k| k == "skb_rx" || k == "tc"),
        "T2 sources {s2:?}"
    );
    ensure!(
        s3.keys().all(|k| k == "tc" || k == "handoff"),
        "T3 sources {s3:?}"
    );
    let handoff = s3.get("handoff").copied().unwrap_or(0) as u64;
    ensure!(
        handoff == s.follow_up_applied && s.follow_up_ignored == 0,
        "{handoff} hand-off T3s, {} follow-ups applied, {} ignored",
        s.follow_up_applied,
        s.follow_up_ignored
    );
    if handoff == 0 {
        eprintln!("NOTE: no hand-off program loaded: every T3 is the TC stamp");
    }
    for p in &two.probes {
        ensure!(
            p.network_rtt_ns >= 0 && p.t3_ns >= p.t2_ns,
            "probe {}: {p:?}",
            p.seq
        );
    }
    Ok(())
}

/// The agent's prober holds samples the same way (one `Session` for both): every answered
/// probe is one probe record and one sample of one window, also with sizes in turn that carry
/// the TLV and do not (a reply without it releases the held sample and its own at once).
#[test]
fn the_agent_reports_each_sample_once_with_its_sources() -> Result<()> {
    use meshprobe_harness::agent::{Cluster, num, window_now};
    use serde_json::Value;

    let Some(mut lab) = Cluster::acquire(
        "the_agent_reports_each_sample_once_with_its_sources",
        2,
        Family::V4,
        false,
        true,
    )?
    else {
        return Ok(());
    };
    // node0: every probe carries the TLV; node1: 68 (even seq) and 128 (odd seq) in turn.
    let sizes = ["128", "68,128"];
    for (i, size) in sizes.iter().enumerate() {
        let other = 1 - i;
        let cfg = lab
            .config(i)
            .env(
                "MESHPROBE_PEERS",
                format!("{}={}", Cluster::node_id(other), lab.node_ip(other)),
            )
            .env("MESHPROBE_SIZES", *size)
            .env("MESHPROBE_INTERVAL", "20ms")
            .env("MESHPROBE_KAFKA_PROBES", "true");
        lab.start_agent_with(i, &cfg)?;
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&[0, 1], s0 + 2, Duration::from_secs(30))?;
    // A graceful stop releases the held samples and closes the last window.
    lab.stop_agents(Duration::from_secs(10))?;

    let source = |p: &Value, k: &str| match &p[k] {
        Value::String(s) => s.clone(),
        Value::Null => "STAMP_SOURCE_UNSPECIFIED".to_string(),
        v => v.to_string(),
    };
    for (i, size) in sizes.iter().enumerate() {
        let probes = lab.agent(i).lines("probe");
        let answered: Vec<&Value> = probes
            .iter()
            .filter(|p| !p["lost"].as_bool().unwrap_or(false))
            .collect();
        let mut seqs: Vec<u64> = answered.iter().map(|p| num(p, "seq")).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let received: u64 = lab
            .agent(i)
            .summaries()
            .iter()
            .map(|s| num(s, "received"))
            .sum();
        let mut by: BTreeMap<(bool, String, String), usize> = BTreeMap::new();
        for p in &answered {
            let with_tlv = i == 0 || num(p, "seq") % 2 == 1;
            *by.entry((with_tlv, source(p, "t2_source"), source(p, "t3_source")))
                .or_default() += 1;
        }
        eprintln!(
            "node{i} (sizes {size}): {} answered probe records, {} distinct, {received} received \
             in the windows; (TLV, T2, T3) sources {by:?}",
            answered.len(),
            seqs.len()
        );
        ensure!(!answered.is_empty(), "node{i}: no answered probe records");
        ensure!(
            seqs.len() == answered.len() && answered.len() as u64 == received,
            "node{i}: {} records, {} distinct, {received} samples in the windows",
            answered.len(),
            seqs.len()
        );
        for ((with_tlv, t2, t3), n) in &by {
            let ok = if *with_tlv {
                ["STAMP_SOURCE_SKB_RX", "STAMP_SOURCE_TC"].contains(&t2.as_str())
                    && ["STAMP_SOURCE_TC", "STAMP_SOURCE_HANDOFF"].contains(&t3.as_str())
            } else {
                t2 == "STAMP_SOURCE_UNSPECIFIED" && t3 == "STAMP_SOURCE_UNSPECIFIED"
            };
            ensure!(
                ok,
                "node{i}: {n} probes with TLV {with_tlv}: T2 {t2}, T3 {t3}"
            );
        }
    }
    Ok(())
}
