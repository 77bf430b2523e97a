//! Issue 3: ZooKeeper stopped for 20 s and restarted, and a forced session expiry: the agents
//! keep probing the peers they know meanwhile, then re-register, and the mesh recovers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::agent::{
    Cluster, HEARTBEAT_PATH, TEST_CONN_TIMEOUT_S, ZK_PORT, num, window_now,
};
use meshprobe_harness::services::{TcpBlock, wait_until};
use meshprobe_harness::topo::Family;

const NODES: [usize; 3] = [0, 1, 2];

fn all_ids() -> Vec<String> {
    NODES.iter().map(|&i| Cluster::node_id(i)).collect()
}

/// A lab with three agents that found each other and measured one window.
fn mesh_up(test: &str) -> Result<Option<Cluster>> {
    let Some(mut lab) = Cluster::acquire(test, 3, Family::V4, true, false)? else {
        return Ok(None);
    };
    for i in NODES {
        lab.start_agent(i)?;
    }
    for a in NODES {
        for b in NODES {
            if a != b {
                let id_b = Cluster::node_id(b);
                lab.agent_mut(a)
                    .wait_for(Duration::from_secs(10), |e| {
                        e.kind() == "peer_added" && e.v["node_id"] == id_b.as_str()
                    })
                    .with_context(|| {
                        format!(
                            "{} never added {id_b}\n{}",
                            Cluster::node_id(a),
                            lab.diagnostics()
                        )
                    })?;
            }
        }
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&NODES, s0 + 1, Duration::from_secs(15))?;
    Ok(Some(lab))
}

/// Every pair from `srcs` to `dsts` has a summary with `sent > 0` for every window in
/// `lo..=hi`; each failure ends with `when`.
fn check_no_pause(
    lab: &Cluster,
    srcs: &[usize],
    dsts: &[usize],
    lo: u64,
    hi: u64,
    when: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    for &i in srcs {
        let sums = lab.agent(i).summaries();
        for &j in dsts {
            if i == j {
                continue;
            }
            let dst = Cluster::node_id(j);
            for w in lo..=hi {
                let sent: u64 = sums
                    .iter()
                    .filter(|s| s["dst"] == dst.as_str() && num(s, "window_seq") == w)
                    .map(|s| num(s, "sent"))
                    .sum();
                if sent == 0 {
                    failures.push(format!(
                        "{} -> {dst}: window {w} has no probes sent {when}",
                        Cluster::node_id(i)
                    ));
                }
            }
        }
    }
    failures
}

fn readyz(lab: &Cluster, i: usize) -> (u16, String) {
    lab.agent(i)
        .http_get("/readyz")
        .unwrap_or_else(|e| (0, format!("{e:#}")))
}

#[test]
fn zookeeper_down_20s_probing_continues_and_agents_reregister() -> Result<()> {
    let test = "zookeeper_down_20s_probing_continues_and_agents_reregister";
    let Some(mut lab) = mesh_up(test)? else {
        return Ok(());
    };
    let t0 = Instant::now();
    let before = window_now();
    let removed_before: Vec<usize> = NODES
        .iter()
        .map(|&i| lab.agent(i).lines("peer_removed").len())
        .collect();
    lab.zk_mut().stop();
    let stopped = Instant::now();
    let mut readyz_during = Vec::new();
    while stopped.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        for i in NODES {
            if !lab.agent_mut(i).is_running() {
                let a = lab.agent(i);
                bail!(
                    "{} exited during the ZooKeeper outage; stderr:\n{}",
                    a.label(),
                    a.stderr_tail(40)
                );
            }
        }
        if readyz_during.is_empty() && stopped.elapsed() > Duration::from_secs(10) {
            readyz_during = NODES.iter().map(|&i| readyz(&lab, i)).collect();
        }
    }
    let during_last = window_now();
    eprintln!("/readyz 10 s into the outage: {readyz_during:?}");
    lab.zk_mut().start_again()?;
    let restarted = Instant::now();

    let want = all_ids();
    let mut members = Vec::new();
    let back = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        members = lab.zk().ls(HEARTBEAT_PATH).unwrap_or_default();
        want.iter().all(|id| members.contains(id))
    });
    ensure!(
        back,
        "after the restart, {HEARTBEAT_PATH} has {members:?}, want all of {want:?} (30 s)"
    );
    eprintln!(
        "all registered again {:?} after the restart",
        restarted.elapsed()
    );
    for i in NODES {
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            readyz(&lab, i).0 == 200
        });
        ensure!(
            ok,
            "{}: /readyz still {:?} 15 s after re-registration",
            Cluster::node_id(i),
            readyz(&lab, i)
        );
    }
    // Windows from the one in progress when ZooKeeper stopped to the one after the restart.
    lab.wait_pairs_measured(&NODES, during_last + 2, Duration::from_secs(15))?;
    let mut failures = check_no_pause(
        &lab,
        &NODES,
        &NODES,
        before,
        during_last + 1,
        "(or no summary)",
    );
    for (k, &i) in NODES.iter().enumerate() {
        let removed = &lab.agent(i).lines("peer_removed")[removed_before[k]..];
        if !removed.is_empty() {
            eprintln!(
                "note: {} reported peer_removed during/after the outage: {removed:?}",
                Cluster::node_id(i)
            );
        }
        // Whatever happened, every peer is known again at the end.
        for j in NODES {
            if i == j {
                continue;
            }
            let id = Cluster::node_id(j);
            let evs = lab.agent(i).events();
            let last_add = evs
                .iter()
                .rposition(|e| e.kind() == "peer_added" && e.v["node_id"] == id.as_str());
            let last_rm = evs
                .iter()
                .rposition(|e| e.kind() == "peer_removed" && e.v["node_id"] == id.as_str());
            if last_rm > last_add {
                failures.push(format!(
                    "{}: {id} removed and not added again",
                    Cluster::node_id(i)
                ));
            }
        }
    }
    eprintln!(
        "{test}: windows {}..={} checked, {:?}",
        before,
        during_last + 1,
        t0.elapsed()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[test]
fn forced_session_expiry_agent_reregisters_and_peers_keep_it() -> Result<()> {
    let test = "forced_session_expiry_agent_reregisters_and_peers_keep_it";
    let Some(mut lab) = mesh_up(test)? else {
        return Ok(());
    };
    let t0 = Instant::now();
    let victim = 0;
    let id = Cluster::node_id(victim);
    let znode = format!("{HEARTBEAT_PATH}/{id}");
    let session_before = lab
        .zk()
        .session_of(&znode)
        .with_context(|| format!("{znode} is not an ephemeral znode of any session"))?;
    let before = window_now();
    let marks: Vec<_> = NODES.iter().map(|&i| lab.agent(i).mark()).collect();

    // Cut the victim off ZooKeeper for twice the session timeout: the server expires the
    // session and deletes the znode.
    let block = TcpBlock::install(lab.star.node(victim), ZK_PORT)?;
    let blocked = Instant::now();
    let hold = Duration::from_secs(2 * TEST_CONN_TIMEOUT_S);
    let mut gone_after = None;
    while blocked.elapsed() < hold {
        if gone_after.is_none() && !lab.zk().ls(HEARTBEAT_PATH)?.contains(&id) {
            gone_after = Some(blocked.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone_after = gone_after.with_context(|| {
        format!(
            "{znode} still there after {hold:?} without contact: the session did not expire \
             (CONN_TIMEOUT={TEST_CONN_TIMEOUT_S})"
        )
    })?;
    eprintln!("{znode} deleted {gone_after:?} after the block (session expired)");
    let during_last = window_now();
    drop(block);
    let unblocked = Instant::now();

    let back = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.zk().ls(HEARTBEAT_PATH).is_ok_and(|m| m.contains(&id))
    });
    ensure!(
        back,
        "{id} did not re-register within 20 s of regaining ZooKeeper; stderr:\n{}",
        lab.agent(victim).stderr_tail(40)
    );
    eprintln!(
        "{id} re-registered {:?} after the unblock",
        unblocked.elapsed()
    );
    let session_after = lab.zk().session_of(&znode);
    ensure!(
        session_after.as_ref() != Some(&session_before),
        "{znode} still belongs to the old session {session_before}"
    );

    // The others know the victim at the end (kept it, or removed and added it again), and
    // measure it again.
    for (k, &i) in NODES.iter().enumerate() {
        if i == victim {
            continue;
        }
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            let evs = lab.agent(i).events_since(marks[k]);
            let last_add = evs
                .iter()
                .rposition(|e| e.kind() == "peer_added" && e.v["node_id"] == id.as_str());
            let last_rm = evs
                .iter()
                .rposition(|e| e.kind() == "peer_removed" && e.v["node_id"] == id.as_str());
            last_rm <= last_add
        });
        let evs: Vec<_> = lab
            .agent(i)
            .events_since(marks[k])
            .into_iter()
            .filter(|e| e.kind().starts_with("peer_"))
            .map(|e| e.v)
            .collect();
        eprintln!(
            "{} membership events since the block: {evs:?}",
            Cluster::node_id(i)
        );
        ensure!(
            ok,
            "{} removed {id} and did not add it back",
            Cluster::node_id(i)
        );
    }
    let now = window_now();
    lab.wait_pairs_measured(&NODES, now + 1, Duration::from_secs(15))?;
    // The victim never stopped probing the peers it knew.
    let failures = check_no_pause(
        &lab,
        &[victim],
        &NODES,
        before,
        during_last,
        "while ZooKeeper was cut off",
    );
    eprintln!("{test}: {:?}", t0.elapsed());
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
