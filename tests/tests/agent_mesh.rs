//! Issue 3: three agents in three namespaces register with ZooKeeper, discover each other
//! and stream window summaries to the broker; `meshprobe consume` decodes them and the network
//! RTT of every pair agrees with the delay injected on its links. (How fast discovery is, the
//! registration-to-first-probe time, is the bench's discovery scenario; here it only has to
//! happen.)
//!
//! Delays: `meshprobe-delay --udp-port 862` on the core-side end of each node's link (egress
//! of `veth-c<i>`, the bridge port towards node i), so everything STAMP sent *to* node i is
//! held d_i: requests to i's reflector (dport 862) and replies to i's sender (sport 862).
//! Probing i -> j therefore sees d_j on the request and d_i on the reply: RTT(i,j) = d_i + d_j,
//! with d = 1/2/4 ms -> 3, 5, 6 ms (milliseconds, so that the shift is resolved under qemu's TCG
//! too, where windows' p50s drift ~110 µs apart: `cargo xtask test --kernel`). Holding on the core side keeps the delay
//! element off the interfaces the agents stamp on (so its program cannot run before theirs),
//! and the port filter keeps ZooKeeper/Kafka traffic undelayed.
//!
//! Zones: node0 and node1 in `z-a`, node2 without a zone label (the empty zone is a zone too):
//! every window, every agent prints one zone record per destination zone whose pairs are its
//! peers there and whose counts add up its pair summaries; /metrics has per-zone-pair series
//! and names peers only among the worst K.
//!
//! Like the core delay test, the assertion is on the added delay ([`Shift`]): windows without
//! the delays, with them, and without them again (so drift cancels), each window's consumed
//! p50 one run; the shift of the median must be the injected RTT within the spread of those
//! same windows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::agent::{Cluster, num, num2, summary_key, window_now};
use meshprobe_harness::meshprobe::DELAY_SLACK_PCT;
use meshprobe_harness::stats::{Shift, us};
use meshprobe_harness::topo::Family;

const DELAYS_US: [i64; 3] = [1_000, 2_000, 4_000];
const ZONES: [&str; 3] = ["z-a", "z-a", ""];
/// A safety timeout for discovery (a hang), not a speed figure.
const DISCOVERY_WAIT: Duration = Duration::from_secs(30);
/// Whole windows per phase without the delays (before, and again after) and with them.
const BASE_WINDOWS: u64 = 3;
const DELAYED_WINDOWS: u64 = 4;

/// Every agent in `nodes` prints peer_added for every other (printing how long after the
/// later of the two ready lines).
fn check_discovery(lab: &mut Cluster, nodes: &[usize]) -> Result<()> {
    for &a in nodes {
        for &b in nodes {
            if a == b {
                continue;
            }
            let id_b = Cluster::node_id(b);
            let ready_b = lab.agent(b).ready_at().context("no ready line")?;
            let ready_a = lab.agent(a).ready_at().context("no ready line")?;
            let t_ref = ready_a.max(ready_b);
            let ev = lab
                .agent_mut(a)
                .wait_for(DISCOVERY_WAIT, |e| {
                    e.kind() == "peer_added" && e.v["node_id"] == id_b.as_str()
                })
                .with_context(|| {
                    format!("{} never reported peer_added {id_b}", Cluster::node_id(a))
                })?;
            eprintln!(
                "{} added {id_b} {:?} after both were ready: {}",
                Cluster::node_id(a),
                ev.at.saturating_duration_since(t_ref),
                ev.v
            );
        }
    }
    Ok(())
}

/// Agent `i`'s peers per destination zone.
fn expected_pairs(i: usize) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for (j, z) in ZONES.iter().enumerate() {
        if j != i {
            *m.entry(*z).or_default() += 1;
        }
    }
    m
}

/// Agent `i`'s zone records of windows `lo..=hi` (all peers known): one per destination zone
/// each window, pairs = its peers there, counts = the sums of its pair summaries.
fn check_zone_records(lab: &Cluster, i: usize, lo: u64, hi: u64) -> Vec<String> {
    let a = lab.agent(i);
    let src = Cluster::node_id(i);
    let want = expected_pairs(i);
    let zones = a.lines("zone");
    let sums = a.summaries();
    let mut failures = Vec::new();
    let mut checked = 0;
    for w in lo..=hi {
        let recs: Vec<_> = zones.iter().filter(|z| num(z, "window_seq") == w).collect();
        let got: BTreeMap<&str, u64> = recs
            .iter()
            .map(|z| (z["dst_zone"].as_str().unwrap_or("?"), num(z, "pairs")))
            .collect();
        if recs.len() != got.len() || got != want {
            failures.push(format!(
                "{src} window {w}: zone records {got:?} ({} records), want {want:?}",
                recs.len()
            ));
            continue;
        }
        for z in recs {
            let dz = z["dst_zone"].as_str().unwrap_or("?");
            let pairs: Vec<_> = sums
                .iter()
                .filter(|s| num(s, "window_seq") == w && s["dst_zone"] == dz)
                .collect();
            let sum = |k: &str| pairs.iter().map(|s| num(s, k)).sum::<u64>();
            let ok = z["src"] == src.as_str()
                && z["src_zone"] == ZONES[i]
                && num(z, "dst_zone_members") == want[dz]
                && num(z, "sent") == sum("sent")
                && num(z, "received") == sum("received")
                && num(z, "lost") == sum("lost")
                && num2(z, "network_rtt_ns", "count") == Some(sum("received") as i64)
                && z["timestamping"] == pairs[0]["timestamping"]
                && z["agent_instance"] == pairs[0]["agent_instance"]
                // The merged histogram prints as base64 text, never as a number array.
                && (sum("received") == 0
                    || z["network_rtt_hdr"].as_str().is_some_and(|b| !b.is_empty()));
            if !ok || pairs.len() as u64 != want[dz] {
                failures.push(format!(
                    "{src} window {w} zone {dz:?}: {z} does not add up its {} pair summaries",
                    pairs.len()
                ));
            }
            checked += 1;
        }
    }
    eprintln!("{src}: {checked} zone records checked, windows {lo}..={hi}, {want:?}");
    if checked == 0 {
        failures.push(format!("{src}: no zone record in windows {lo}..={hi}"));
    }
    failures
}

/// Agent `i`'s /metrics: probe series per (src_zone, dst_zone) and peers named only by the
/// worst-K gauges (the default K = 10 covers both peers).
fn check_metrics(lab: &Cluster, i: usize) -> Result<Vec<String>> {
    let text = lab.agent(i).metrics()?;
    let src = Cluster::node_id(i);
    let mut failures = Vec::new();
    for dz in expected_pairs(i).keys() {
        let labels = [
            format!("src_zone=\"{}\"", ZONES[i]),
            format!("dst_zone=\"{dz}\""),
        ];
        let has = |name: &str| {
            text.lines()
                .any(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x.as_str())))
        };
        for name in [
            "meshprobe_zone_probes_sent_total{",
            "meshprobe_zone_probes_received_total{",
            "meshprobe_zone_network_rtt_seconds_bucket{",
        ] {
            if !has(name) {
                failures.push(format!("{src}: /metrics has no {name}{labels:?}}}"));
            }
        }
    }
    for j in (0..3).filter(|&j| j != i) {
        let peer = format!("peer=\"{}\"", Cluster::node_id(j));
        let zone = format!("zone=\"{}\"", ZONES[j]);
        if !text.lines().any(|l| {
            l.starts_with("meshprobe_worst_peer_loss_ratio{")
                && l.contains(&peer)
                && l.contains(&zone)
        }) {
            failures.push(format!("{src}: no worst-peer loss gauge for {peer}"));
        }
    }
    let named: Vec<_> = text
        .lines()
        .filter(|l| l.contains("peer=\"") && !l.starts_with("meshprobe_worst_peer_"))
        .collect();
    if !named.is_empty() {
        failures.push(format!(
            "{src}: per-peer series outside the worst K: {named:?}"
        ));
    }
    Ok(failures)
}

fn injected_rtt_ns(i: usize, j: usize) -> i64 {
    (DELAYS_US[i] + DELAYS_US[j]) * 1000
}

fn run(test: &str, family: Family) -> Result<()> {
    let Some(mut lab) = Cluster::acquire(test, 3, family, true, true)? else {
        return Ok(());
    };
    let t0 = Instant::now();
    for (i, zone) in ZONES.iter().enumerate() {
        let cfg = lab.config(i).env("MESHPROBE_ZONE", zone);
        lab.start_agent_with(i, &cfg)?;
    }
    check_discovery(&mut lab, &[0, 1, 2])?;

    // Baseline windows: complete before the delays are attached (b0 may predate discovery).
    let b0 = window_now();
    lab.wait_pairs_measured(&[0, 1, 2], b0 + BASE_WINDOWS, Duration::from_secs(30))?;
    let base_last = window_now() - 1;

    let mut delays = Vec::new();
    for (i, d) in DELAYS_US.iter().enumerate() {
        let iface = lab.star.core_if(i);
        delays.push(lab.env.mp.delay(
            lab.star.core(),
            &iface,
            &format!("{d}us"),
            &["--udp-port", "862"],
        )?);
    }
    // The window in progress now is mixed; the next ones are fully delayed.
    let first_delayed = window_now() + 1;
    lab.wait_pairs_measured(
        &[0, 1, 2],
        first_delayed + DELAYED_WINDOWS - 1,
        Duration::from_secs(30),
    )?;
    let last_delayed = window_now() - 1;
    // Restored: the baseline again after the delayed phase (A B A), so drift cancels.
    drop(delays);
    let first_restored = window_now() + 1;
    lab.wait_pairs_measured(
        &[0, 1, 2],
        first_restored + BASE_WINDOWS - 1,
        Duration::from_secs(30),
    )?;
    let last_checked = window_now() - 1;
    let mut failures = Vec::new();
    for i in 0..3 {
        failures.extend(check_metrics(&lab, i)?);
    }
    lab.stop_agents(Duration::from_secs(15))?;
    for i in 0..3 {
        failures.extend(check_zone_records(&lab, i, b0 + 1, last_checked));
    }

    let stdout: Vec<_> = lab.stdout_summaries();
    let consumed = lab.consume(&["--kind", "summary"])?;
    let consumed: Vec<_> = consumed
        .into_iter()
        .filter(|v| v["type"] == "summary")
        .collect();
    eprintln!(
        "{} summaries on stdout, {} consumed ({} windows {}..={}), baseline <= {base_last}, \
         delayed {first_delayed}..={last_delayed}, restored {first_restored}..={last_checked}",
        stdout.len(),
        consumed.len(),
        family.label(),
        b0,
        last_checked
    );

    // What was consumed is what the agents printed.
    let out_keys: BTreeSet<_> = stdout.iter().map(summary_key).collect();
    let in_keys: BTreeSet<_> = consumed.iter().map(summary_key).collect();
    ensure!(
        in_keys.len() == consumed.len(),
        "duplicate summaries consumed: {} records, {} distinct",
        consumed.len(),
        in_keys.len()
    );
    let not_consumed: Vec<_> = out_keys.difference(&in_keys).collect();
    let not_printed: Vec<_> = in_keys.difference(&out_keys).collect();
    ensure!(
        not_consumed.is_empty() && not_printed.is_empty(),
        "stdout and topic differ: printed but not consumed {not_consumed:?}; consumed but not \
         printed {not_printed:?}"
    );

    for i in 0..3 {
        for j in 0..3 {
            if i == j {
                continue;
            }
            let (src, dst) = (Cluster::node_id(i), Cluster::node_id(j));
            let pair: Vec<_> = consumed
                .iter()
                .filter(|v| v["src"] == src.as_str() && v["dst"] == dst.as_str())
                .collect();
            // One run per window: its consumed p50.
            let p50s = |lo: u64, hi: u64| -> Vec<Vec<i64>> {
                pair.iter()
                    .filter(|v| {
                        let s = num(v, "window_seq");
                        s >= lo && s <= hi && num(v, "received") > 0
                    })
                    .filter_map(|v| num2(v, "network_rtt_ns", "p50"))
                    .map(|p| vec![p])
                    .collect()
            };
            let before = p50s(b0 + 1, base_last);
            let delayed = p50s(first_delayed, last_delayed);
            let after = p50s(first_restored, last_checked);
            let lost: u64 = pair
                .iter()
                .filter(|v| num(v, "window_seq") <= last_checked)
                .map(|v| num(v, "lost"))
                .sum();
            let sent: u64 = pair.iter().map(|v| num(v, "sent")).sum();
            let ts: BTreeSet<_> = pair.iter().map(|v| v["timestamping"].to_string()).collect();
            let show = |runs: &[Vec<i64>]| runs.iter().map(|r| us(r[0])).collect::<Vec<_>>();
            let baseline = [before.clone(), after.clone()].concat();
            let shift = match Shift::of(&baseline, &delayed) {
                Some(s)
                    if before.len() as u64 >= BASE_WINDOWS
                        && after.len() as u64 >= BASE_WINDOWS
                        && delayed.len() as u64 >= DELAYED_WINDOWS =>
                {
                    s
                }
                _ => {
                    failures.push(format!(
                        "{src}->{dst}: too few consumed windows with replies (before {}, \
                         delayed {}, after {})",
                        before.len(),
                        delayed.len(),
                        after.len()
                    ));
                    continue;
                }
            };
            let injected = injected_rtt_ns(i, j);
            eprintln!(
                "{src}->{dst}: window p50s before {:?}, delayed {:?}, after {:?}; {} vs \
                 injected {}; sent {sent}, lost {lost}, timestamping {ts:?}",
                show(&before),
                show(&delayed),
                show(&after),
                shift.report(),
                us(injected)
            );
            // The delay element never holds less than asked, a little more when packets meet.
            let slack = injected * DELAY_SLACK_PCT / 100;
            if let Err(e) = shift.check_added(injected, slack, &format!("{src}->{dst} added RTT")) {
                failures.push(format!("{e:#}"));
            }
            if lost > 0 {
                failures.push(format!("{src}->{dst}: {lost} probes lost"));
            }
        }
    }
    // Every window of every pair after discovery is present and contiguous on the topic.
    let mut seqs: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (s, d, w) in &in_keys {
        seqs.entry((s.clone(), d.clone())).or_default().push(*w);
    }
    for ((s, d), w) in &seqs {
        let (lo, hi) = (w[0], w[w.len() - 1]);
        if (hi - lo + 1) as usize != w.len() {
            failures.push(format!("{s}->{d}: window_seq not contiguous: {w:?}"));
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[test]
fn agents_discover_each_other_and_measure_injected_delays_ipv4() -> Result<()> {
    run(
        "agents_discover_each_other_and_measure_injected_delays_ipv4",
        Family::V4,
    )
}

#[test]
fn agents_discover_each_other_and_measure_injected_delays_ipv6() -> Result<()> {
    run(
        "agents_discover_each_other_and_measure_injected_delays_ipv6",
        Family::V6,
    )
}
