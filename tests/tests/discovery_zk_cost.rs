//! What ZooKeeper discovery costs one agent, in bytes on the wire, against a real ZooKeeper:
//! members registered by a light client ([`Registrar`], the product's own layout rule), one
//! real agent (static settings, JSON on stdout) connected through a counting proxy
//! ([`CountingProxy`]).
//!
//! Topology: TwoHosts; ZooKeeper on A (198.18.0.1:2181) with the proxy next to it
//! (198.18.0.1:2182); the agent runs in B (198.18.0.2) and reaches ZooKeeper only through the
//! proxy, which counts per client address. The light client talks to ZooKeeper directly.
//!
//! The bounds come from the ZooKeeper wire format, not from a measurement:
//! - a listing carries each child name as a 4-byte length and its bytes, so starting among M
//!   members may grow by at most Σ(entry name + 4) over the members added;
//! - a join or a leave is one watch event: a 4-byte frame length, the 16-byte reply header
//!   (xid, zxid, error), type, state and the path's length (4 bytes each), then the path.
//!
//! Set MESHPROBE_BIN to an agent without the topology index to see the old figures (it has no
//! membership gauge: the pinglist line's member count tells when it has seen a change); the
//! bounds then fail, after the figures are printed.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshprobe::discovery::{layout, member_parent_path};
use meshprobe_harness::agent::{Agent, AgentConfig, num};
use meshprobe_harness::env::TestEnv;
use meshprobe_harness::services::{ZooKeeper, zookeeper_missing};
use meshprobe_harness::topo::TwoHosts;
use meshprobe_harness::zkproxy::{CountingProxy, Traffic};
use meshprobe_harness::zkreg::{MemberCodec, Registrar, SyntheticMember};
use support::ProductLayout;

const ZK_PORT: u16 = 2181;
const RELAY_PORT: u16 = 2182;
const ROOT: &str = "meshprobe";
const HEARTBEAT: &str = "heartbeat";
const ZONES: usize = 10;
const SMALL: usize = 100;
const LARGE: usize = 500;
/// Joins and leaves measured per cluster size.
const CHANGES: usize = 3;

/// One watch event without its path: frame length 4, reply header 16, type 4, state 4, path
/// length 4.
const EVENT_OVERHEAD: u64 = 32;
/// A string in a listing: its 4-byte length, then its bytes.
const NAME_OVERHEAD: u64 = 4;
/// One keep-alive exchange (request 12 bytes, reply 20), which may fall into any window.
const PING: u64 = 32;
/// Everything at start that does not depend on the members: session handshake, the two
/// directories, the registration transaction and its checks, the watch, the root listing, a
/// listing request and reply header per zone, the registration count. Generous: the test is
/// about what grows.
const START_FIXED_MAX: u64 = 4 * 1024;
/// How long the agent may take to see a change (a stuck agent, not a speed goal).
const SEEN_WITHIN: Duration = Duration::from_secs(15);

fn member_parent() -> String {
    member_parent_path(ROOT, HEARTBEAT).expect("valid defaults")
}

fn member(i: usize, id: &str) -> SyntheticMember {
    SyntheticMember {
        node_id: id.into(),
        zone: format!("zone-{:02}", i % ZONES),
        rack: format!("rack-{}", (i / ZONES) % 4),
        addr: TwoHosts::A4.into(),
        port: 20_000 + i as u16,
    }
}

/// The product's layout under the default member directory.
fn codec() -> ProductLayout {
    ProductLayout {
        member_parent: member_parent(),
    }
}

fn entry_name_len(m: &SyntheticMember) -> u64 {
    ProductLayout::entry_name(m).len() as u64
}

fn entry_path_len(m: &SyntheticMember) -> u64 {
    codec().entry_path(m).len() as u64
}

/// The agent's traffic through the proxy (it is the only client from B).
fn agent_traffic(proxy: &CountingProxy) -> Traffic {
    proxy.client(TwoHosts::B4.into())
}

fn show(t: &Traffic) -> String {
    format!(
        "{} B ({} B to ZooKeeper, {} B from it)",
        t.bytes(),
        t.to_server.bytes,
        t.to_client.bytes
    )
}

/// Members the agent knows: its gauge; for an agent without it, its last pinglist line, or
/// (older still, probing every member) its peer_added and peer_removed lines.
fn members_seen(a: &Agent) -> Result<Option<u64>> {
    if let Some(v) = a.metric("meshprobe_zookeeper_members")? {
        return Ok(Some(v as u64));
    }
    if let Some(v) = a.lines("pinglist").last() {
        // Its member count includes the agent itself.
        return Ok(Some(num(v, "members").saturating_sub(1)));
    }
    let mut peers = std::collections::BTreeSet::new();
    for e in a.events() {
        let id = e.v["node_id"].as_str().unwrap_or_default().to_string();
        match e.kind() {
            "peer_added" => peers.insert(id),
            "peer_removed" => peers.remove(&id),
            _ => false,
        };
    }
    Ok(Some(peers.len() as u64))
}

fn wait_members(a: &Agent, want: usize, what: &str) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let seen = members_seen(a)?;
        if seen == Some(want as u64) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > SEEN_WITHIN {
            bail!(
                "{what}: the agent does not see {want} members within {SEEN_WITHIN:?} (sees \
                 {seen:?}); stderr:\n{}",
                a.stderr_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

struct Figures {
    members: usize,
    start: Traffic,
    /// Σ(entry name + 4) over the members.
    names: u64,
    joins: Vec<u64>,
    leaves: Vec<u64>,
    /// Largest entry path among the joiners.
    path_max: u64,
}

/// Starts an agent among the `n` members registered, measures its start and `CHANGES` joins
/// and leaves, stops it.
fn measure(
    env: &TestEnv,
    t: &TwoHosts,
    proxy: &CountingProxy,
    lc: &mut Registrar,
    registered: &[SyntheticMember],
) -> Result<Figures> {
    let n = registered.len();
    let cfg = AgentConfig::new()
        .env("MESHPROBE_NODE_ID", "agent")
        .env("SERVERS_ZK", proxy.addr())
        .env("REGISTER_PUBLIC_DNS", TwoHosts::B4)
        .env("MESHPROBE_ZONE", "zone-00")
        // A long session timeout keeps keep-alives rare (one every 3/20 of it).
        .env("CONN_TIMEOUT", 60)
        .env("MESHPROBE_INTERVAL", "1s")
        .env("MESHPROBE_WINDOW", "10s")
        .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862");
    let mut cfg = cfg;
    cfg.drop_probe_lines = true;
    let before = agent_traffic(proxy);
    let mut agent = Agent::start(&env.mp.bin, &t.b, "agent", &cfg)?;
    let took = wait_members(&agent, n, "start")?;
    let start = agent_traffic(proxy).since(&before);
    eprintln!("discovery_zk_cost: M={n}: the agent saw all members {took:?} after its ready line");
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    let mut path_max = 0;
    for k in 0..CHANGES {
        let m = member(n + k, &format!("joiner-{n}-{k}"));
        path_max = path_max.max(entry_path_len(&m));
        let b = agent_traffic(proxy);
        lc.add(m.clone())?;
        wait_members(&agent, n + 1, "a join")?;
        joins.push(agent_traffic(proxy).since(&b).bytes());
        let b = agent_traffic(proxy);
        lc.remove(&m.node_id)?;
        wait_members(&agent, n, "a leave")?;
        leaves.push(agent_traffic(proxy).since(&b).bytes());
    }
    // Each change was an applied event (agents with the gauge count them).
    if agent.metric("meshprobe_zookeeper_members")?.is_some() {
        let events = agent.metric_value("meshprobe_zookeeper_events")?;
        ensure!(
            events >= (2 * CHANGES) as f64,
            "M={n}: {events} index events counted for {CHANGES} joins and leaves"
        );
    }
    agent.sigterm()?;
    agent.wait_exit(Duration::from_secs(15))?;
    Ok(Figures {
        members: n,
        start,
        names: registered
            .iter()
            .map(|i| entry_name_len(i) + NAME_OVERHEAD)
            .sum(),
        joins,
        leaves,
        path_max,
    })
}

fn report(f: &Figures) {
    eprintln!(
        "discovery_zk_cost: M={}: start {} = {:.1} B per member (names + lengths {} B = {:.1} B \
         per member); joins {:?} B, leaves {:?} B (bound {} B each)",
        f.members,
        show(&f.start),
        f.start.bytes() as f64 / f.members as f64,
        f.names,
        f.names as f64 / f.members as f64,
        f.joins,
        f.leaves,
        f.path_max + EVENT_OVERHEAD + PING
    );
}

/// Start cost grows by at most the members' entry names (and their lengths); a join or a leave
/// costs one event, the same at 100 and 500 members; the agent sees each change.
#[test]
fn start_grows_with_names_and_a_change_costs_one_event() -> Result<()> {
    let test = "start_grows_with_names_and_a_change_costs_one_event";
    if let Some(why) = zookeeper_missing() {
        meshprobe_harness::env::skip(test, &why);
        return Ok(());
    }
    let Some(env) = TestEnv::acquire(test, &[])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let a: IpAddr = TwoHosts::A4.into();
    let zk = ZooKeeper::start(&t.a, a, ZK_PORT)?;
    let proxy = CountingProxy::start(
        &t.a,
        SocketAddr::new(a, RELAY_PORT),
        SocketAddr::new(a, ZK_PORT),
    )?;
    let all: Vec<SyntheticMember> = (0..LARGE)
        .map(|i| member(i, &format!("member-{i:05}")))
        .collect();
    let t0 = Instant::now();
    let mut lc = Registrar::start(
        &t.a,
        &zk.connect_string(),
        Arc::new(codec()),
        all[..SMALL].to_vec(),
    )?;
    let small = measure(&env, &t, &proxy, &mut lc, &all[..SMALL])?;
    report(&small);
    lc.add_all(all[SMALL..].to_vec())?;
    eprintln!(
        "discovery_zk_cost: {LARGE} members registered by one light client in {:?} (with the \
         first agent's run)",
        t0.elapsed()
    );
    let large = measure(&env, &t, &proxy, &mut lc, &all)?;
    report(&large);
    let connections = agent_traffic(&proxy).connections;
    ensure!(
        connections == 2,
        "the proxy saw {connections} connections from the agent, expected one per agent run (a \
         reconnection would distort the figures)"
    );

    for f in [&small, &large] {
        let bound = START_FIXED_MAX + f.names;
        ensure!(
            f.start.bytes() <= bound,
            "M={}: start cost {} over {START_FIXED_MAX} B + the names ({} B)",
            f.members,
            show(&f.start),
            f.names
        );
        let change_bound = f.path_max + EVENT_OVERHEAD + PING;
        for (kind, v) in [("join", &f.joins), ("leave", &f.leaves)] {
            for b in v.iter() {
                ensure!(
                    *b <= change_bound,
                    "M={}: a {kind} cost {b} B, over one event ({change_bound} B with a \
                     keep-alive): {v:?}",
                    f.members
                );
            }
        }
    }
    // Growth: only the names of the members added (a keep-alive or two aside).
    let growth = large.start.bytes().saturating_sub(small.start.bytes());
    let names_added = large.names - small.names;
    eprintln!(
        "discovery_zk_cost: start grew by {growth} B for {} more members ({:.1} B each; their \
         names and lengths: {:.1} B each)",
        LARGE - SMALL,
        growth as f64 / (LARGE - SMALL) as f64,
        names_added as f64 / (LARGE - SMALL) as f64
    );
    ensure!(
        growth <= names_added + 2 * PING,
        "start cost grew by {growth} B from {SMALL} to {LARGE} members, more than their entry \
         names and lengths ({names_added} B): something per member beyond the listing"
    );
    // Independent of M: the worst change among 500 is no dearer than among 100, a keep-alive
    // aside.
    let worst = |f: &Figures| f.joins.iter().chain(&f.leaves).copied().max().unwrap_or(0);
    ensure!(
        worst(&large) <= worst(&small) + PING,
        "a change costs more among {LARGE} members ({} B) than among {SMALL} ({} B)",
        worst(&large),
        worst(&small)
    );
    drop(lc);
    drop(proxy);
    drop(zk);
    Ok(())
}

/// The helpers themselves: the light client's znodes are exactly what an agent would create.
#[test]
fn light_client_registers_as_an_agent_does() -> Result<()> {
    let m = member(7, "member-00007");
    let z = codec().registration(&m);
    // What the registrar creates: the registration with its data, the entry without.
    ensure!(
        codec().znodes(&m)
            == vec![
                (z.path.clone(), z.data.clone()),
                (z.entry.clone(), Vec::new())
            ]
    );
    ensure!(z.path == "/meshprobe/heartbeat/member-00007", "{}", z.path);
    ensure!(
        z.entry == "/meshprobe/heartbeat.topology/=zone-07/1~member-00007~rack-0~198.18.0.1~20007",
        "{}",
        z.entry
    );
    let (zone_dir, name) = layout::split_entry_path("/meshprobe/heartbeat.topology", &z.entry)
        .context("entry path")?;
    let back = layout::parse_entry(&layout::parse_zone_dir(zone_dir).unwrap(), name).unwrap();
    ensure!(back == layout::entry_of(&ProductLayout::node_info(&m)));
    ensure!(name == ProductLayout::entry_name(&m), "{name}");
    Ok(())
}
