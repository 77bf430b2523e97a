//! Issue 3: the broker stopped for 30 s and restarted under steady probing: afterwards every
//! summary the agents produced is on the topic exactly once (audit by window sequence per
//! pair: no duplicate, no gap), and the topic holds exactly what the agents printed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::agent::{Cluster, num, summary_key, window_now};
use meshprobe_harness::services::wait_until;
use meshprobe_harness::topo::Family;
use serde_json::Value;

const NODES: [usize; 3] = [0, 1, 2];
const OUTAGE: Duration = Duration::from_secs(30);

fn metric(lab: &Cluster, i: usize, name: &str) -> Result<f64> {
    lab.agent(i).metric_value(name)
}

/// Per (src, dst): the window_seq values must be unique and contiguous.
pub fn audit(consumed: &[Value]) -> Vec<String> {
    let mut per_pair: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for v in consumed {
        let (s, d, w) = summary_key(v);
        per_pair.entry((s, d)).or_default().push(w);
    }
    let mut failures = Vec::new();
    for ((s, d), mut w) in per_pair {
        w.sort_unstable();
        let n = w.len();
        let mut dups = w.clone();
        dups.dedup();
        if dups.len() != n {
            let mut seen = BTreeSet::new();
            let d2: Vec<_> = w.iter().filter(|x| !seen.insert(**x)).collect();
            failures.push(format!("{s}->{d}: duplicate windows {d2:?}"));
        }
        let (lo, hi) = (dups[0], dups[dups.len() - 1]);
        let missing: Vec<_> = (lo..=hi)
            .filter(|x| dups.binary_search(x).is_err())
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{s}->{d}: windows missing between {lo} and {hi}: {missing:?}"
            ));
        }
        eprintln!("{s}->{d}: {n} summaries, windows {lo}..={hi}");
    }
    failures
}

#[test]
fn broker_down_30s_every_summary_consumed_exactly_once() -> Result<()> {
    let test = "broker_down_30s_every_summary_consumed_exactly_once";
    let Some(mut lab) = Cluster::acquire(test, 3, Family::V4, true, true)? else {
        return Ok(());
    };
    ensure!(
        lab.kafka().persistent(),
        "the broker runs with {} storage, which does not survive the restart this test needs: \
         install tansu with the libsql feature (cargo xtask setup)",
        lab.kafka().storage()
    );
    let t0 = Instant::now();
    for i in NODES {
        lab.start_agent(i)?;
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&NODES, s0 + 1, Duration::from_secs(20))?;
    for i in NODES {
        let ok = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            metric(&lab, i, "meshprobe_kafka_delivered").unwrap_or(0.0) > 0.0
        });
        ensure!(
            ok,
            "{}: nothing delivered to Kafka before the outage (meshprobe_kafka_delivered {:?})",
            Cluster::node_id(i),
            metric(&lab, i, "meshprobe_kafka_delivered")
        );
    }

    let before = window_now();
    lab.kafka_mut().stop();
    let stopped = Instant::now();
    while stopped.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(500));
        for i in NODES {
            if !lab.agent_mut(i).is_running() {
                let a = lab.agent(i);
                bail!(
                    "{} exited during the broker outage; stderr:\n{}",
                    a.label(),
                    a.stderr_tail(40)
                );
            }
        }
    }
    let during_last = window_now();
    for i in NODES {
        let b = metric(&lab, i, "meshprobe_kafka_buffered")?;
        eprintln!(
            "{}: {b} records buffered after {OUTAGE:?} without broker",
            Cluster::node_id(i)
        );
        ensure!(
            b > 0.0,
            "{}: meshprobe_kafka_buffered is {b} after {OUTAGE:?} of outage with windows \
             {before}..={during_last} produced",
            Cluster::node_id(i)
        );
    }
    lab.kafka_mut().start_again()?;
    let restarted = Instant::now();
    for i in NODES {
        let ok = wait_until(Duration::from_secs(90), Duration::from_millis(250), || {
            metric(&lab, i, "meshprobe_kafka_buffered").is_ok_and(|b| b == 0.0)
        });
        ensure!(
            ok,
            "{}: meshprobe_kafka_buffered still {:?} 90 s after the broker came back; \
             stderr:\n{}",
            Cluster::node_id(i),
            metric(&lab, i, "meshprobe_kafka_buffered"),
            lab.agent(i).stderr_tail(30)
        );
    }
    eprintln!(
        "buffers drained {:?} after the restart",
        restarted.elapsed()
    );
    for i in NODES {
        let dropped = metric(&lab, i, "meshprobe_kafka_dropped")?;
        ensure!(
            dropped == 0.0,
            "{}: {dropped} records dropped",
            Cluster::node_id(i)
        );
    }
    // One more window under steady probing, then a clean stop (flushes the last windows).
    let now = window_now();
    lab.wait_pairs_measured(&NODES, now + 1, Duration::from_secs(15))?;
    lab.stop_agents(Duration::from_secs(15))?;

    let stdout = lab.stdout_summaries();
    let consumed: Vec<_> = lab
        .consume(&["--kind", "summary"])
        .context("consuming the topic")?
        .into_iter()
        .filter(|v| v["type"] == "summary")
        .collect();
    eprintln!(
        "{} summaries printed, {} consumed; outage windows {before}..={during_last}",
        stdout.len(),
        consumed.len()
    );
    let mut failures = audit(&consumed);
    let printed: BTreeMap<_, _> = stdout.iter().map(|v| (summary_key(v), v)).collect();
    ensure!(
        printed.len() == stdout.len(),
        "an agent printed the same (src, dst, window) twice"
    );
    let got: BTreeMap<_, _> = consumed.iter().map(|v| (summary_key(v), v)).collect();
    let lost: Vec<_> = printed.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !printed.contains_key(*k)).collect();
    if !lost.is_empty() {
        failures.push(format!(
            "{} summaries printed but not on the topic: {lost:?}",
            lost.len()
        ));
    }
    if !extra.is_empty() {
        failures.push(format!(
            "{} summaries on the topic that no agent printed: {extra:?}",
            extra.len()
        ));
    }
    for (k, p) in &printed {
        if let Some(c) = got.get(k) {
            for f in ["sent", "received", "lost", "agent_instance"] {
                if p[f] != c[f] {
                    failures.push(format!("{k:?}: {f} printed {} consumed {}", p[f], c[f]));
                }
            }
        }
    }
    // The outage windows are there for every pair.
    for i in NODES {
        for j in NODES {
            if i == j {
                continue;
            }
            let (s, d) = (Cluster::node_id(i), Cluster::node_id(j));
            for w in before..=during_last {
                if !got.contains_key(&(s.clone(), d.clone(), w)) {
                    failures.push(format!("{s}->{d}: outage window {w} not on the topic"));
                }
            }
        }
    }
    let total: u64 = consumed.iter().map(|v| num(v, "sent")).sum();
    eprintln!(
        "{test}: {total} probes in consumed summaries, {:?}",
        t0.elapsed()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
