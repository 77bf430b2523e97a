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

/// The reflector's side end to end, without the hand-off program (another part of issue 18):
/// an entry put into the reflector's own `FOLLOW_UP` map (with bpftool, as the tracing program
/// would write it) for the reply whose sample the sender holds is carried in the next reply and
/// corrects that sample. Checks the key layout (IPv4-mapped sender address, ports, SSID) and
/// the map access of the loaded object.
#[test]
fn a_recorded_correction_reaches_the_held_sample() -> Result<()> {
    use serde_json::Value;

    let name = "a_recorded_correction_reaches_the_held_sample";
    let Some(env) = TestEnv::acquire(name, &["bpftool", "ss"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let pid = refl.child.pid().context("reflector pid")?;
    // The reflector's FOLLOW_UP map: by name, among the maps its file descriptors hold (other
    // meshprobe processes may run).
    let maps: Value = serde_json::from_str(
        &t.b.run(["bpftool", "-j", "map", "show"])
            .context("bpftool map show")?,
    )?;
    let owned: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    let Some(id) = maps.as_array().into_iter().flatten().find_map(|m| {
        let id = m["id"].as_u64()?;
        (m["name"] == "FOLLOW_UP" && owned.contains(&id)).then_some(id)
    }) else {
        eprintln!(
            "SKIPPED: {name}: no FOLLOW_UP map among the reflector's (pid {pid}) maps {owned:?}"
        );
        return Ok(());
    };

    let peer = t.b_addr(Family::V4).to_string();
    let mut ping = env.mp.ping_spawn(
        &t.a,
        &[&peer, "-c", "40", "-i", "200ms", "-s", "128", "--json"],
    )?;
    let is_probe = |v: &Value| v["type"] == "probe";
    let first = ping.wait_json(Duration::from_secs(5), is_probe)?;
    let ssid = first["ssid"].as_u64().context("ssid")? as u16;
    // The sender's port: its one UDP socket towards the reflector.
    let ss = t.a.run(["ss", "-Hun", "dst", &format!("{peer}:862")])?;
    let dst = format!("{peer}:862");
    let lport: u16 = ss
        .split_whitespace()
        .find(|w| w.contains(':') && *w != dst)
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("sender port in {ss:?}"))?;
    let a = match t.a_addr(Family::V4) {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
    let mut key = a.to_vec();
    for v in [lport, 862, ssid, 0] {
        key.extend_from_slice(&v.to_ne_bytes());
    }

    // Each line L is printed when the reply to L+1 arrives, which then is held: record a
    // correction for L+1 before the request L+2 reaches the reflector (200 ms later).
    let mut corrected = None;
    for _ in 0..8 {
        let l = ping.wait_json(Duration::from_secs(5), is_probe)?;
        let held = (l["seq"].as_u64().context("seq")? as u32).wrapping_add(1);
        let rtt = l["network_rtt_ns"].as_i64().context("rtt")?;
        let c = (rtt / 4).clamp(1, 500) as u32;
        let mut value = 1u64.to_ne_bytes().to_vec();
        value.extend_from_slice(&held.to_ne_bytes());
        value.extend_from_slice(&c.to_ne_bytes());
        let id_s = id.to_string();
        let mut argv = vec!["bpftool", "map", "update", "id", &id_s, "key", "hex"];
        let (k, v) = (hex(&key), hex(&value));
        argv.extend(k.iter().map(String::as_str));
        argv.extend(["value", "hex"]);
        argv.extend(v.iter().map(String::as_str));
        t.b.run(&argv)?;
        let next = ping.wait_json(Duration::from_secs(5), is_probe)?;
        eprintln!(
            "held {held}: next line seq {} t3_source {} rtt {}",
            next["seq"], next["t3_source"], next["network_rtt_ns"]
        );
        if next["seq"] == held && next["t3_source"] == "handoff" {
            // Carried once: the reflector took our entry out of the map (a hand-off program,
            // when loaded, may have recorded a later reply since).
            let left = t.b.run(["bpftool", "-j", "map", "dump", "id", &id_s])?;
            let left: Value = serde_json::from_str(&left)?;
            let ours = left.as_array().into_iter().flatten().any(|e| {
                let bytes: Vec<u8> = e["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| {
                        u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()
                    })
                    .collect();
                bytes == value
            });
            ensure!(!ours, "our entry is still in the map: {left}");
            corrected = Some(next);
            break;
        }
    }
    let fin = ping.stop()?;
    refl.stop()?;
    let corrected = corrected.context("no correction reached its held sample in 8 tries")?;
    ensure!(
        corrected["network_rtt_ns"].as_i64() >= Some(0),
        "{corrected}"
    );
    let sum = fin
        .json_lines()
        .into_iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    ensure!(
        sum["follow_up_applied"].as_u64() >= Some(1) && sum["follow_up_ignored"] == 0,
        "{sum}"
    );
    Ok(())
}

/// A reflector that answers a session's requests in one batch (it fell behind: here, stopped
/// while the sender kept probing) lets each reply leave before the next one's follow-up is
/// looked up, so each reports the one before it. Judged against the same run: the probes
/// answered before the stop. Without that, every queued reply but the first finds no hand-off
/// record and its sample keeps the TC T3.
#[test]
fn a_session_s_requests_answered_in_one_batch_each_report_the_one_before() -> Result<()> {
    use nix::sys::signal::Signal;

    let name = "a_session_s_requests_answered_in_one_batch_each_report_the_one_before";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let mut refl = env.mp.reflect(&t.b, &[])?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = 60u32;
    let mut ping = env.mp.ping_spawn(
        &t.a,
        &[
            &peer,
            "-c",
            &count.to_string(),
            "-i",
            "2ms",
            "-W",
            "2s",
            "-s",
            "128",
            "--json",
        ],
    )?;
    ping.wait_json(Duration::from_secs(10), |v| v["type"] == "ready")?;
    std::thread::sleep(Duration::from_millis(20));
    // About 25 requests (of 32 a batch reads) queue while the reflector is stopped.
    refl.child.signal(Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_millis(50));
    refl.child.signal(Signal::SIGCONT)?;
    let fin = ping.wait_exit(ping_timeout(
        count,
        Duration::from_millis(2),
        Duration::from_secs(2),
    ))?;
    let handoff = refl.ready["handoff"] == "on";
    refl.stop()?;
    let run = PingRun::parse(&fin)?;
    let s = run.summaries.first().context("no summary")?;
    ensure!(
        s.received == u64::from(count) && run.probes.len() == count as usize,
        "{} of {count} answered, {} probe lines",
        s.received,
        run.probes.len()
    );
    if !handoff {
        eprintln!("SKIPPED: {name}: the reflector's hand-off program is off (its ready line)");
        return Ok(());
    }
    let s3 = sources(&run, |p| &p.t3_source);
    // A burst shows as turnarounds far beyond the run's own median (the stop).
    let mut turn: Vec<i64> = run.probes.iter().map(|p| p.turnaround_ns).collect();
    turn.sort_unstable();
    let median = turn[turn.len() / 2];
    let held = run
        .probes
        .iter()
        .filter(|p| p.turnaround_ns > 10 * median.max(1_000))
        .count();
    eprintln!(
        "T3 sources {s3:?}; {held} probes waited for the stopped reflector (median turnaround \
         {median} ns); follow-ups applied {} ignored {}",
        s.follow_up_applied, s.follow_up_ignored
    );
    ensure!(
        held >= 5,
        "the stop held only {held} probes: no burst to judge"
    );
    // Only the run's last sample has no next reply to carry its correction.
    let tc = s3.get("tc").copied().unwrap_or(0);
    ensure!(
        tc <= 1 && s.follow_up_ignored == 0,
        "{tc} of {count} T3s kept the TC stamp: {s3:?}"
    );
    Ok(())
}
