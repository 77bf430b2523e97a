//! Scenario 6: how fast a new agent is probed by everyone. 20 agents run on a mesh with
//! ZooKeeper (the harness's [`Cluster`]); a 21st starts. Its registration time is the creation
//! time (`ctime`) of its znode as ZooKeeper recorded it. Two arrival times per other agent:
//!
//! - `peer_added`: the agent printed that it added the newcomer (harness read time);
//! - first probe: the first STAMP request from that agent's address captured (AF_PACKET,
//!   tcpdump) on the newcomer's interface, the wire truth of "it probes the newcomer".
//!
//! The goal is judged on the second: every agent's first probe on the wire within 2 s of the
//! registration. The newcomer joins under a fresh node id in every trial, so each trial is a
//! first join (not a return within the peer grace period).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::znode_ctime_ms;
use anyhow::{Context, Result, bail};
use meshprobe_harness::agent::{Cluster, HEARTBEAT_PATH};
use meshprobe_harness::capture::Capture;
use meshprobe_harness::topo::Family;
use serde_json::json;

use crate::numbers::{fmt_ms, max, median, min};
use crate::report::{ScenarioReport, Table};
use crate::scenario::{Ctx, pause, progress};

const AGENTS: usize = 20;
const GOAL_MS: f64 = 2000.0;
const INTERVAL: &str = "1s";
const WINDOW: &str = "10s";

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    if let Some(why) = meshprobe_harness::services::zookeeper_missing() {
        rep.skip(why);
        return Ok(());
    }
    let trials = ctx.pick(2, 5);
    rep.method(format!(
        "{AGENTS} agents on a {}-node harness mesh (bridge, ZooKeeper in the core \
         namespace, no Kafka), interval {INTERVAL}, window {WINDOW} (a longer interval keeps \
         {AGENTS} agents on 2 cores quiet; the first probe to a new peer does not wait for \
         the interval)",
        AGENTS + 1
    ));
    rep.method(format!(
        "{trials} trials: the 21st agent starts under a fresh node id; registration = its \
         znode's ctime (ZooKeeper's clock, ms); for each of the {AGENTS} agents: its \
         `peer_added` line (harness read time) and its first STAMP request captured on the \
         newcomer's interface (tcpdump, same host clock); the newcomer stops (SIGTERM, \
         deregisters) between trials"
    ));
    rep.method(
        "goal judged on the first probe on the wire: that is when an agent is probing the \
         newcomer; peer_added shows how much of it is discovery",
    );
    let Some(mut lab) = Cluster::acquire("bench discovery", AGENTS + 1, Family::V4, true, false)?
    else {
        rep.skip("a prerequisite is missing (see the SKIP line)");
        return Ok(());
    };
    lab.env.mp = meshprobe_harness::Meshprobe::new(&ctx.bin);
    let cfg_of = |lab: &Cluster, i: usize| {
        let mut c = lab
            .config(i)
            .env("MESHPROBE_INTERVAL", INTERVAL)
            .env("MESHPROBE_WINDOW", WINDOW)
            .env("MESHPROBE_PEER_GRACE", WINDOW);
        c.drop_probe_lines = true;
        c
    };
    progress(format!("discovery: starting {AGENTS} agents"));
    for i in 0..AGENTS {
        let c = cfg_of(&lab, i);
        lab.start_agent_with(i, &c)?;
    }
    // Every agent knows every other before the newcomer comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let complete = (0..AGENTS).all(|i| {
            let added = lab.agent(i).lines("peer_added");
            (0..AGENTS).filter(|&j| j != i).all(|j| {
                added
                    .iter()
                    .any(|v| v["node_id"] == Cluster::node_id(j).as_str())
            })
        });
        if complete {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the {AGENTS} agents did not all discover each other within 60 s");
        }
        pause(Duration::from_millis(200))?;
    }
    pause(Duration::from_secs(2))?;

    let new = AGENTS;
    let new_ip = lab.node_ip(new);
    let mut all_added = Vec::new();
    let mut all_probe = Vec::new();
    let mut all_ready = Vec::new();
    let mut per_trial = Vec::new();
    for trial in 0..trials {
        progress(format!("discovery: trial {}/{trials}", trial + 1));
        let id = format!("newcomer{trial}");
        let cap = Capture::start_filter(
            lab.star.node(new),
            &lab.star.node_if(new),
            &format!(
                "udp and dst port {} and dst host {new_ip}",
                meshprobe_harness::STAMP_PORT
            ),
        )?;
        let marks: Vec<usize> = (0..AGENTS).map(|i| lab.agent(i).mark()).collect();
        let cfg = cfg_of(&lab, new).env("MESHPROBE_NODE_ID", &id);
        lab.start_agent_with(new, &cfg)?;
        let ready_at = lab.agent(new).ready_at().context("newcomer ready time")?;
        let mut added_ns = Vec::new();
        for (i, &mark) in marks.iter().enumerate() {
            let ev = lab
                .agent_mut(i)
                .wait_for_since(mark, Duration::from_secs(30), |e| {
                    e.kind() == "peer_added" && e.v["node_id"] == id.as_str()
                })
                .with_context(|| format!("{}: peer_added {id}", Cluster::node_id(i)))?;
            added_ns.push(instant_to_unix_ns(ev.at));
        }
        // First probes follow within the interval at the latest.
        pause(Duration::from_millis(2500))?;
        let packets = cap.stop()?.packets;
        let ctime_ms = znode_ctime_ms(
            lab.star.core(),
            &lab.zk().connect_string(),
            &format!("{HEARTBEAT_PATH}/{id}"),
        )?;
        let reg_ns = i128::from(ctime_ms) * 1_000_000;
        let ms = |ns: i128| (ns - reg_ns) as f64 / 1e6;
        let mut added_ms = Vec::new();
        let mut probe_ms = Vec::new();
        let mut missing = Vec::new();
        for (i, a) in added_ns.iter().enumerate() {
            added_ms.push(ms(*a));
            let src = lab.node_ip(i);
            match packets
                .iter()
                .filter(|p| p.src.ip() == src)
                .map(|p| p.ts_ns)
                .min()
            {
                Some(ts) => probe_ms.push(ms(i128::from(ts))),
                None => missing.push(Cluster::node_id(i)),
            }
        }
        if !missing.is_empty() {
            bail!(
                "trial {}: no probe from {missing:?} to the newcomer captured within 2.5 s of \
                 their peer_added",
                trial + 1
            );
        }
        let ready_ms = ms(instant_to_unix_ns(ready_at));
        per_trial.push(json!({
            "node_id": id, "znode_ctime_ms": ctime_ms, "ready_line_ms": ready_ms,
            "peer_added_ms": added_ms, "first_probe_ms": probe_ms,
        }));
        all_ready.push(ready_ms);
        all_added.extend(added_ms);
        all_probe.extend(probe_ms);
        // The newcomer leaves (deregisters) before the next trial.
        let mut a = lab.agents.remove(&new).expect("started above");
        a.sigterm()?;
        a.wait_exit(Duration::from_secs(15))?;
        drop(a);
        pause(Duration::from_secs(2))?;
    }
    let mut table = Table::new(
        &format!(
            "Time after the newcomer's registration (znode ctime), over {trials} trials × \
             {AGENTS} agents:"
        ),
        &["", "min", "p50", "max"],
    );
    let row = |name: &str, v: &[f64]| {
        vec![
            name.to_string(),
            fmt_ms(min(v)),
            fmt_ms(median(v)),
            fmt_ms(max(v)),
        ]
    };
    table.rows.push(row(
        "newcomer's ready line (before it registers)",
        &all_ready,
    ));
    table
        .rows
        .push(row("peer_added at the other agents", &all_added));
    table
        .rows
        .push(row("first probe on the wire (capture)", &all_probe));
    rep.tables.push(table);
    let worst = max(&all_probe);
    rep.goal(
        "every agent probing the newcomer",
        "≤ 2 s",
        format!("max {} (p50 {})", fmt_ms(worst), fmt_ms(median(&all_probe))),
        worst <= GOAL_MS,
        Some(format!(
            "the last agent's first probe came {} after the registration; peer_added max {}",
            fmt_ms(worst),
            fmt_ms(max(&all_added))
        )),
    );
    rep.note(
        "ZooKeeper's ctime has millisecond resolution; the harness reads the agents' lines \
         through a pipe (sub-millisecond). The newcomer's ready line comes a few milliseconds \
         before its znode exists: it says the reflector and the stamping are set up, and the \
         registration follows (probe-user/src/agent/spawn.rs; /readyz waits for it), so the \
         ready line is not a registration time. From peer_added to the first probe is the \
         prober's deliberate spread of first probes to new peers (random, up to 200 ms or the \
         interval, probe-user/src/agent/prober.rs apply_members)."
            .to_string(),
    );
    rep.data = json!({
        "agents": AGENTS, "interval": INTERVAL, "window": WINDOW, "trials": per_trial,
    });
    Ok(())
}

/// Wall-clock time (nanoseconds since the epoch) of an `Instant` taken in this process.
pub fn instant_to_unix_ns(t: Instant) -> i128 {
    let now_i = Instant::now();
    let now_w = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128;
    if t <= now_i {
        now_w - (now_i - t).as_nanos() as i128
    } else {
        now_w + (t - now_i).as_nanos() as i128
    }
}
