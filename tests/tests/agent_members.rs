//! Issue 16 (membership validated before anything is probed): an agent with the default
//! MESHPROBE_PEER_NETWORKS (its own networks) and MESHPROBE_PEER_PORTS, among members that
//! anyone with write access to ZooKeeper could register: loopback, a cloud metadata address,
//! a link-local one, an address outside the node's networks, the subnet's broadcast address,
//! a privileged port and a node id that is no label. It probes only the real agent and a
//! member that passes; each refusal is counted by reason on /metrics and logged once. Then
//! members past MESHPROBE_MAX_MEMBERS are refused (counted, one log line) while probing goes on.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::agent::{Agent, Cluster, window_now};
use meshprobe_harness::services::wait_until;
use meshprobe_harness::topo::Family;
use meshprobe_harness::zkreg::{Registrar, SyntheticMember};
use support::ProductLayout;

const TEST: &str = "refused_members_are_never_probed";
/// Our entry, node 1's and the ghost's, plus two of the four extras.
const MAX_MEMBERS: usize = 5;

fn member(id: &str, addr: &str, port: u16) -> SyntheticMember {
    SyntheticMember {
        node_id: id.into(),
        zone: "zone-x".into(),
        rack: "rack-1".into(),
        addr: addr.parse::<IpAddr>().expect("an address"),
        port,
    }
}

/// `meshprobe_zookeeper_members_rejected_total{..,reason="<reason>"}`, 0 when absent.
fn rejected(agent: &Agent, reason: &str) -> Result<f64> {
    let text = agent.metrics()?;
    let label = format!("reason=\"{reason}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("meshprobe_zookeeper_members_rejected_total{"))
        .filter_map(|l| l.split_once("} "))
        .find(|(labels, _)| {
            labels
                .split(',')
                .any(|kv| kv.trim_end_matches('}') == label)
        })
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0))
}

fn added(agent: &Agent) -> Vec<String> {
    agent
        .events()
        .iter()
        .filter(|e| e.kind() == "peer_added")
        .filter_map(|e| e.v["node_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn refused_members_are_never_probed() -> Result<()> {
    let Some(mut lab) = Cluster::acquire(TEST, 2, Family::V4, true, false)? else {
        return Ok(());
    };
    // Node 0 keeps the defaults under test; node 1 is a real peer in the same subnet.
    let cfg0 = lab
        .config(0)
        .unset("MESHPROBE_PEER_NETWORKS")
        .env("MESHPROBE_MAX_MEMBERS", MAX_MEMBERS);
    lab.start_agent_with(0, &cfg0)?;
    let cfg1 = lab.config(1);
    lab.start_agent_with(1, &cfg1)?;
    let stderr0 = lab.agent_mut(0).stderr_text();
    ensure!(
        stderr0.contains("MESHPROBE_PEER_NETWORKS unset") && stderr0.contains("198.18.0.0/24"),
        "node 0 does not say which networks it allows by default:\n{}",
        lab.agent_mut(0).stderr_tail(20)
    );

    let refused = [
        (member("lo", "127.0.0.1", 862), "loopback"),
        (member("wireserver", "168.63.129.16", 862), "metadata"),
        (member("imds", "169.254.169.254", 862), "link_local"),
        (member("far", "198.19.0.5", 862), "network"),
        (member("bcast", "198.18.0.255", 862), "not_unicast"),
        (member("ssh", "198.18.0.50", 22), "port"),
        (member("a\"b{c}", "198.18.0.51", 862), "label"),
    ];
    let ghost = member("ghost", "198.18.0.60", 862);
    let mut all: Vec<SyntheticMember> = refused.iter().map(|(m, _)| m.clone()).collect();
    all.push(ghost.clone());
    let zk = lab.zk().connect_string();
    let mut reg = Registrar::start(
        lab.star.core(),
        &zk,
        Arc::new(ProductLayout::default_paths()),
        all,
    )?;

    let a0 = lab.agent_mut(0);
    for id in [Cluster::node_id(1), ghost.node_id.clone()] {
        a0.wait_for(Duration::from_secs(15), |e| {
            e.kind() == "peer_added" && e.v["node_id"] == id.as_str()
        })
        .with_context(|| format!("node 0 never added {id}"))?;
    }
    let counted = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        refused
            .iter()
            .all(|(_, r)| rejected(a0, r).is_ok_and(|n| n >= 1.0))
    });
    if !counted {
        let text = a0.metrics()?;
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("rejected")).collect();
        eprintln!(
            "{TEST}: /metrics lines about rejections:\n{}",
            lines.join("\n")
        );
    }
    let mut by_reason = Vec::new();
    for (m, r) in &refused {
        let n = rejected(a0, r)?;
        by_reason.push(format!("{r}={n}"));
        let stderr = a0.stderr_text();
        let logged = stderr
            .lines()
            .filter(|l| l.contains("not probing") && l.contains(&format!("reason={r}")))
            .count();
        ensure!(
            n == 1.0 && logged == 1,
            "{} ({r}): counted {n} times, logged {logged} times (want 1 and 1)",
            m.node_id
        );
    }
    ensure!(counted, "refusals not all counted: {}", by_reason.join(" "));
    let peers = added(a0);
    for (m, _) in &refused {
        ensure!(
            !peers.contains(&m.node_id),
            "node 0 probes refused member {}: {peers:?}",
            m.node_id
        );
    }
    eprintln!("{TEST}: probed {peers:?}; refused {}", by_reason.join(" "));

    // The cap: 3 entries so far (node 0, node 1, ghost); 4 more valid members, room for 2.
    let extras: Vec<SyntheticMember> = (0..4)
        .map(|i| member(&format!("extra{i}"), &format!("198.18.0.{}", 70 + i), 862))
        .collect();
    reg.add_all(extras.clone())?;
    let extras_added = |a: &Agent| added(a).iter().filter(|id| id.starts_with("extra")).count();
    let capped = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        rejected(a0, "cap").is_ok_and(|n| n >= 2.0) && extras_added(a0) >= 2
    });
    let n_cap = rejected(a0, "cap")?;
    let extras_added = extras_added(a0);
    let cap_logs = a0
        .stderr_text()
        .lines()
        .filter(|l| l.contains("MESHPROBE_MAX_MEMBERS=5"))
        .filter(|l| l.contains("not probing the others"))
        .count();
    ensure!(
        capped && n_cap == 2.0 && extras_added == 2 && cap_logs == 1,
        "cap {MAX_MEMBERS}: {n_cap} refused for the cap (want 2), {extras_added} extras probed \
         (want 2), {cap_logs} cap log lines (want 1)"
    );
    // Probing goes on: node 0 → node 1 measured in a window after all this.
    let s = window_now();
    lab.wait_pairs_measured(&[0, 1], s + 1, Duration::from_secs(15))?;
    ensure!(lab.agent_mut(0).is_running(), "node 0 stopped");
    eprintln!(
        "{TEST}: cap {MAX_MEMBERS}: 2 extras refused (counted, one log line); node 0 → node 1 measured after"
    );
    reg.shutdown()?;
    Ok(())
}
