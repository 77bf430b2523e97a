//! The clean start: a baseline, agent log marks, membership, and the lab as it was before.

use super::*;

/// Waits for [`BASELINE_WINDOWS`] consecutive windows in which every pair has one summary with
/// replies and no loss (unless its link has loss set), read from Kafka; returns them.
pub(super) fn baseline(lab: &Lab, log: &mut dyn FnMut(&str)) -> Result<RangeInclusive<u64>> {
    let pairs = all_pairs(lab.spec.nodes);
    let lossy = expected_loss(lab.spec.clone());
    let mut lo = lab.window_now() + 1;
    for _ in 0..5 {
        let hi = lo + BASELINE_WINDOWS - 1;
        lab.wait_window(hi + 1);
        let (w, _) = wait_kafka(lab, Duration::from_secs(20), |w| {
            complete(w, &pairs, lo..=hi)
        })?;
        let h = Health::of(&w, &pairs, lo..=hi, &lossy);
        if h.clean() {
            log(&format!(
                "baseline: windows {lo}..={hi}, all {} pairs measured, nothing lost",
                pairs.len()
            ));
            return Ok(lo..=hi);
        }
        log(&format!(
            "baseline windows {lo}..={hi} not clean yet: {}",
            h.problems().join("; ")
        ));
        lo = hi + 1;
    }
    bail!("no clean baseline of {BASELINE_WINDOWS} windows within 5 tries")
}

/// Each of `nodes`' agents' event count now (marks for `events_since`).
pub(super) fn agent_marks(
    lab: &Lab,
    nodes: impl IntoIterator<Item = usize>,
) -> BTreeMap<usize, usize> {
    nodes
        .into_iter()
        .map(|i| (i, lab.cluster.agent(i).mark()))
        .collect()
}

/// Waits (at most `secs` each) for every agent in `marks` but `x`'s own to print, after its
/// mark and not before `since`, a `kind` line about node `x`; when each did (`None`: not in time).
pub(super) fn wait_peers(
    lab: &mut Lab,
    marks: &BTreeMap<usize, usize>,
    [kind, x]: [&str; 2],
    since: Instant,
    secs: u64,
) -> BTreeMap<usize, Option<Instant>> {
    let about = |e: &Event| e.kind() == kind && e.v["node_id"] == x && e.at >= since;
    let mut out = BTreeMap::new();
    for (&i, &mark) in marks.iter().filter(|(i, _)| node_name(**i) != x) {
        let agent = lab.cluster.agent_mut(i);
        let e = agent.wait_for_since(mark, Duration::from_secs(secs), about);
        out.insert(i, e.ok().map(|e| e.at));
    }
    out
}

/// Polls ZooKeeper until `want(members)` (at most `timeout`); when it first held.
pub(super) fn wait_members(
    lab: &Lab,
    timeout: Duration,
    want: impl Fn(&[String]) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if lab.zk_members().is_ok_and(|m| want(&m)) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session owning each member znode (node id → session), from ZooKeeper's `dump`.
pub(super) fn znode_sessions(lab: &Lab) -> BTreeMap<String, String> {
    let prefix = format!("{}/", meshprobe_harness::agent::HEARTBEAT_PATH);
    lab.cluster
        .zk()
        .ephemerals()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(s, p)| Some((p.strip_prefix(&prefix)?.to_string(), s)))
        .collect()
}

/// What the lab looked like before the fault, to check it is back to that.
pub(super) struct Prior {
    pub(super) agents: Vec<usize>,
    pub(super) links: BTreeMap<(usize, usize), Shape>,
}

impl Prior {
    pub(super) fn of(lab: &Lab) -> Prior {
        Prior {
            agents: lab.cluster.agents.keys().copied().collect(),
            links: lab.spec.links.clone(),
        }
    }

    /// Checks the lab is as it was: the same agents running, the same link shapes, no
    /// partition, ZooKeeper and the broker up, agents and delay elements alive.
    pub(super) fn check_restored(&self, lab: &mut Lab, j: &mut Judge) {
        let mut wrong = Vec::new();
        let agents: Vec<usize> = lab.cluster.agents.keys().copied().collect();
        if agents != self.agents {
            wrong.push(format!("agents on {agents:?}, were {:?}", self.agents));
        }
        if lab.spec.links != self.links {
            wrong.push("link shapes differ from before".into());
        }
        if !lab.links.partitioned().is_empty() {
            wrong.push(format!("partitioned: {:?}", lab.links.partitioned()));
        }
        if let Some(zk) = lab.cluster.zk.as_mut()
            && !zk.is_running()
        {
            wrong.push("ZooKeeper is not running".into());
        }
        if let Some(k) = lab.cluster.kafka.as_mut()
            && !k.is_running()
        {
            wrong.push("the broker is not running".into());
        }
        if let Err(e) = lab.check() {
            wrong.push(format!("{e:#}"));
        }
        j.check(
            wrong.is_empty(),
            if wrong.is_empty() {
                format!(
                    "lab restored ({} agents running, links as before, no partition, services up)",
                    agents.len()
                )
            } else {
                format!("lab restored: {}", wrong.join("; "))
            },
        );
    }
}
