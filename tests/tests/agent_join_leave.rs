//! Issue 3: a fourth agent joins and is probed by all; one agent leaves (SIGTERM) and the
//! others drop it without loss alarms. How fast a newcomer is probed is the bench's figure
//! (`cargo xtask bench`, scenario discovery); here the times are printed only.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::agent::{Cluster, HEARTBEAT_PATH, num, window_now};
use meshprobe_harness::topo::Family;

/// MESHPROBE_TIMEOUT of every agent here (the agent's default, set so the test can use it).
/// The leave below is judged against it; it is also the shortest gap between the leaver's end
/// of answering and its peers' notice that shows as loss, so it is kept short.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn wait_peer_added(lab: &mut Cluster, a: usize, b: usize) -> Result<Instant> {
    let id_b = Cluster::node_id(b);
    let ev = lab
        .agent_mut(a)
        .wait_for(Duration::from_secs(10), |e| {
            e.kind() == "peer_added" && e.v["node_id"] == id_b.as_str()
        })
        .with_context(|| format!("{} never reported peer_added {id_b}", Cluster::node_id(a)))?;
    Ok(ev.at)
}

fn config(lab: &Cluster, i: usize) -> meshprobe_harness::agent::AgentConfig {
    lab.config(i).env(
        "MESHPROBE_TIMEOUT",
        humantime::format_duration(PROBE_TIMEOUT),
    )
}

#[test]
fn fourth_agent_is_probed_and_a_leaving_agent_raises_no_loss() -> Result<()> {
    let test = "fourth_agent_is_probed_and_a_leaving_agent_raises_no_loss";
    let Some(mut lab) = Cluster::acquire(test, 3, Family::V4, true, false)? else {
        return Ok(());
    };
    let t0 = Instant::now();
    for i in 0..3 {
        let cfg = config(&lab, i);
        lab.start_agent_with(i, &cfg)?;
    }
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                wait_peer_added(&mut lab, a, b)?;
            }
        }
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&[0, 1, 2], s0 + 1, Duration::from_secs(15))?;

    // Join: node 3. Its registration time is when its znode is first seen (polled every 20 ms
    // from the core namespace); the others report it after that (printed, not bounded).
    let n3 = lab.star.add_node()?;
    let id3 = Cluster::node_id(n3);
    let cfg = config(&lab, n3);
    let spawned = Instant::now();
    {
        // Start without waiting for the ready line, so the znode poll below is not delayed.
        let a = meshprobe_harness::agent::Agent::spawn(lab.bin(), lab.star.node(n3), &id3, &cfg)?;
        lab.agents.insert(n3, a);
    }
    let mut registered = None;
    while spawned.elapsed() < Duration::from_secs(30) {
        if lab.zk().ls(HEARTBEAT_PATH)?.contains(&id3) {
            registered = Some(Instant::now());
            break;
        }
        if !lab.agent_mut(n3).is_running() {
            let a = lab.agent(n3);
            bail!("{} exited; stderr:\n{}", a.label(), a.stderr_tail(40));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let registered = registered
        .with_context(|| format!("{id3} not registered under {HEARTBEAT_PATH} within 30 s"))?;
    let ready = lab.agent_mut(n3).wait_ready(Duration::from_secs(20))?;
    let stderr = lab.agent(n3).stderr_tail(20);
    lab.env
        .mp
        .check_timestamping(&format!("agent {id3}"), &ready, &stderr)?;
    eprintln!("{id3} registered {:?} after spawn", registered - spawned);
    for a in 0..3 {
        let at = wait_peer_added(&mut lab, a, n3)?;
        let late = at.saturating_duration_since(registered);
        if at < registered {
            eprintln!(
                "{} added {id3} {:?} before the harness saw its znode",
                Cluster::node_id(a),
                registered - at
            );
        } else {
            eprintln!(
                "{} added {id3} {late:?} after its registration",
                Cluster::node_id(a)
            );
        }
    }
    for b in 0..3 {
        wait_peer_added(&mut lab, n3, b)?;
    }
    // Its pairs appear in summaries, both directions.
    let s1 = window_now();
    lab.wait_pairs_measured(&[0, 1, 2, n3], s1 + 1, Duration::from_secs(15))?;

    // Leave: node 1, gracefully.
    let leaver = 1;
    let id1 = Cluster::node_id(leaver);
    let marks: Vec<_> = [0, 2, n3]
        .iter()
        .map(|&i| (i, lab.agent(i).mark()))
        .collect();
    let left_at = Instant::now();
    lab.agent_mut(leaver).sigterm()?;
    let st = lab.agent_mut(leaver).wait_exit(Duration::from_secs(15))?;
    ensure!(
        st.success(),
        "{id1} exited {st} after SIGTERM; stderr:\n{}",
        lab.agent(leaver).stderr_tail(40)
    );
    eprintln!("{id1} exited {:?} after SIGTERM", left_at.elapsed());
    ensure!(
        !lab.zk().ls(HEARTBEAT_PATH)?.contains(&id1),
        "{id1}'s znode is still there after it exited"
    );
    // The contract: the leaver deregisters first, then stops probing, then keeps answering a
    // moment before its reflector stops. A peer's unanswered probe counts as lost only when its
    // timeout passes, and not at all once the peer has removed the leaver. So a peer that
    // removed the leaver within one probe timeout of the SIGTERM (the deregistration and the
    // end of answering both come after it) cannot have counted a loss towards it. A slower
    // peer is reported, not judged; a run where no peer was that fast cannot tell.
    let mut removed_after = Vec::new();
    for &(i, mark) in &marks {
        let ev = lab
            .agent_mut(i)
            .wait_for_since(mark, Duration::from_secs(15), |e| {
                e.kind() == "peer_removed" && e.v["node_id"] == id1.as_str()
            })
            .with_context(|| {
                format!("{} never reported peer_removed {id1}", Cluster::node_id(i))
            })?;
        let after = ev.at - left_at;
        eprintln!(
            "{} removed {id1} {after:?} after SIGTERM (judged for loss within the \
             {PROBE_TIMEOUT:?} probe timeout)",
            Cluster::node_id(i),
        );
        removed_after.push(after);
    }
    ensure!(
        removed_after.iter().any(|d| *d <= PROBE_TIMEOUT),
        "too slow to judge: no peer removed {id1} within the {PROBE_TIMEOUT:?} probe timeout \
         of its SIGTERM ({removed_after:?})"
    );
    // Two more windows, then no summary towards the leaver may show loss.
    let s2 = window_now();
    lab.wait_pairs_measured(&[0, 2, n3], s2 + 2, Duration::from_secs(15))?;
    let mut failures = Vec::new();
    for (&(i, _), after) in marks.iter().zip(&removed_after) {
        let a = lab.agent(i);
        let towards: Vec<_> = a
            .summaries()
            .into_iter()
            .filter(|s| s["dst"] == id1.as_str())
            .collect();
        ensure!(
            !towards.is_empty(),
            "{} printed no summary towards {id1}",
            a.node_id
        );
        let judged = *after <= PROBE_TIMEOUT;
        for s in towards.iter().filter(|s| num(s, "lost") > 0) {
            if judged {
                failures.push(format!("{} -> {id1}: false loss alarm: {s}", a.node_id));
            } else {
                eprintln!(
                    "{} -> {id1}: loss, not judged (peer_removed {after:?} after SIGTERM): {s}",
                    a.node_id
                );
            }
        }
        let last = towards.last().expect("not empty");
        eprintln!(
            "{} -> {id1}: {} summaries, last window {} peer_left={} sent {} received {} lost {}",
            a.node_id,
            towards.len(),
            num(last, "window_seq"),
            last["peer_left"],
            num(last, "sent"),
            num(last, "received"),
            num(last, "lost")
        );
        // The others keep measuring each other without loss meanwhile.
        for s in a.summaries() {
            if s["dst"] != id1.as_str() && num(&s, "lost") > 0 {
                failures.push(format!(
                    "{} : loss between remaining agents: {s}",
                    a.node_id
                ));
            }
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
