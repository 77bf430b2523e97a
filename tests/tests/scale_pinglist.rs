//! Pinglists at scale against a real ZooKeeper: 10 000 members registered by a light client
//! (`meshprobe_harness::zkreg`, the product's own layout) and 20 real agents on a bridge mesh.
//!
//! - Every agent's `GET /pinglist` is `meshprobe::pinglist::select` over the membership the
//!   test knows (the synthetic members and the agents), with the agent's parameters.
//! - After one join and one leave of a synthetic member, every agent's pinglist is the new
//!   function result within [`UPDATE_BOUND`] (a behaviour bound: the 2 s goal is a bench
//!   figure, `cargo xtask bench --scenario scale`); the delay is printed.
//! - What each agent costs ZooKeeper, through a counting proxy (SERVERS_ZK points at it): bytes
//!   at start and per change, printed and held under bounds derived from ZooKeeper's wire
//!   format (see [`start_bound`] and [`change_bound`]).
//!
//! The synthetic members' addresses (198.19.0.0/16) are all answered by one `meshprobe
//! reflect` in the last mesh node (an AnyIP `local` route, `meshprobe_harness::synthetic`), so
//! the agents really probe them.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use meshprobe::pinglist::{Params, Topology};
use meshprobe_harness::agent::{Cluster, HEARTBEAT_PATH, ZK_PORT};
use meshprobe_harness::synthetic::{self, Shape};
use meshprobe_harness::topo::Family;
use meshprobe_harness::zkproxy::{CountingProxy, Traffic};
use meshprobe_harness::zkreg::{MemberCodec, Registrar, SyntheticMember};
use serde_json::Value;
use support::ProductLayout;

const AGENTS: usize = 20;
const SHAPE: Shape = Shape::TEN_THOUSAND;
const FAMILY: Family = Family::V4;
/// The counting proxy listens next to ZooKeeper, in the core namespace.
const PROXY_PORT: u16 = ZK_PORT + 1;
/// Until every agent's pinglist is the function's at start (10 000 members listed per agent).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Behaviour bound on one join or leave reaching every agent's pinglist. The goal (2 s) is a
/// bench figure; this only says "it follows the change, without a restart or a resync".
const UPDATE_BOUND: Duration = Duration::from_secs(10);
/// After every pinglist matched: late ZooKeeper traffic of the change still counts.
const SETTLE: Duration = Duration::from_secs(1);

/// ZooKeeper's wire format (jute), for the byte bounds: a frame is a 4-byte length and a
/// body; a reply starts with xid, zxid, err (16 bytes); a request with xid, type (8); a string
/// is a 4-byte length and its bytes; a Stat is 6 longs and 5 ints (68 bytes).
mod wire {
    pub const FRAME: usize = 4;
    pub const REPLY_HEADER: usize = 16;
    pub const REQUEST_HEADER: usize = 8;
    pub const STRING: usize = 4;
    pub const INT: usize = 4;
    pub const STAT: usize = 68;

    /// A watch notification for `path`: type and state ints, then the path.
    pub fn notification(path: &str) -> usize {
        FRAME + REPLY_HEADER + INT + INT + STRING + path.len()
    }

    /// A children listing of `dir` (getChildren2: the request's watch flag, the reply's count
    /// and Stat) without the names; each name adds `STRING + len`.
    pub fn listing_overhead(dir: &str) -> usize {
        (FRAME + REQUEST_HEADER + STRING + dir.len() + 1) + (FRAME + REPLY_HEADER + INT + STAT)
    }
}

/// Fixed work of one agent's session whatever the membership: the handshake (about 50 bytes
/// each way), creating the parents, its own registration (one multi with its NodeInfo, under
/// 300 bytes), the recursive watch. 4 KiB covers it several times over.
const SESSION_FIXED: usize = 4096;

/// Bytes an agent may move at start (pings and watch events excluded): every zone listed with
/// at most one extra request of the same size per zone (e.g. a stat), every entry name once.
fn start_bound(layout: &ProductLayout, members: &[SyntheticMember]) -> usize {
    let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
    for m in members {
        *zones.entry(&m.zone).or_default() += wire::STRING + ProductLayout::entry_name(m).len();
    }
    zones
        .iter()
        .map(|(z, names)| names + 2 * wire::listing_overhead(&layout.zone_path(z)))
        .sum::<usize>()
        + SESSION_FIXED
}

/// Bytes an agent may move for one member's join or leave (pings excluded): one notification
/// per znode of the registration (the design needs one, for the index entry; the registration
/// znode is allowed too) and no request.
fn change_bound(layout: &ProductLayout, m: &SyntheticMember) -> usize {
    layout
        .znodes(m)
        .iter()
        .map(|(p, _)| wire::notification(p))
        .sum()
}

/// The agent at node `i`: where it sits in the topology.
fn agent_member(lab: &Cluster, i: usize) -> SyntheticMember {
    // Two agents per zone, in the zone's first rack (with 20 synthetic rack mates).
    SyntheticMember {
        node_id: Cluster::node_id(i),
        zone: synthetic::zone_name(i / 2),
        rack: synthetic::rack_name(i / 2, 0),
        addr: lab.node_ip(i),
        port: meshprobe_harness::STAMP_PORT,
    }
}

/// One agent's `GET /pinglist`, parsed.
struct Served {
    node_id: String,
    members: u64,
    params: Params,
    peers: BTreeMap<String, String>,
}

fn parse_pinglist(body: &str) -> Result<Served> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    let p = &v["params"];
    let param = |k: &str| -> Result<usize> {
        p[k].as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("params.{k} missing in {p}"))
    };
    let params = Params {
        full_mesh_max: param("full_mesh_max")?,
        rack_peers: param("rack_peers")?,
        zone_peers: param("zone_peers")?,
        min_probers: param("min_probers")?,
        max_peers: param("max_peers")?,
    };
    let mut peers = BTreeMap::new();
    for e in v["peers"]
        .as_array()
        .ok_or_else(|| anyhow!("no peers array"))?
    {
        let id = e["node_id"].as_str().ok_or_else(|| anyhow!("peer {e}"))?;
        let reason = e["reason"].as_str().ok_or_else(|| anyhow!("peer {e}"))?;
        peers.insert(id.to_string(), reason.to_string());
    }
    Ok(Served {
        node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
        members: v["members"].as_u64().unwrap_or(0),
        params,
        peers,
    })
}

/// How `got` differs from `want`, briefly.
fn diff(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> String {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let reason: Vec<_> = want
        .iter()
        .filter(|(k, r)| got.get(*k).is_some_and(|g| g != *r))
        .map(|(k, r)| format!("{k}: {} not {r}", got[k]))
        .collect();
    format!(
        "{} peers served, {} expected; missing {} {:?}; extra {} {:?}; other reason {} {:?}",
        got.len(),
        want.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        reason.len(),
        reason.iter().take(5).collect::<Vec<_>>(),
    )
}

/// The scale lab: ZooKeeper behind the counting proxy, the reflector namespace, the members.
struct Scale {
    /// Declared first: dropped first, so agents stop before their members vanish.
    registrar: Registrar,
    proxy: CountingProxy,
    _reflector: meshprobe_harness::Reflector,
    layout: Arc<ProductLayout>,
    agents: Vec<SyntheticMember>,
    cluster: Cluster,
}

impl Scale {
    fn topology(&self) -> Topology {
        support::topology(self.registrar.members().chain(self.agents.iter()))
    }

    fn traffic(&self) -> Vec<Traffic> {
        let by = self.proxy.by_client();
        self.agents
            .iter()
            .map(|a| by.get(&a.addr).copied().unwrap_or_default())
            .collect()
    }

    /// Each agent's pinglist, or why it cannot be read.
    fn served(&self, i: usize) -> Result<Served> {
        let (status, body) = self.cluster.agent(i).http_get("/pinglist")?;
        if status != 200 {
            bail!("GET /pinglist answered {status}: {body}");
        }
        parse_pinglist(&body)
    }

    /// Polls every agent until its pinglist is the function's over the current membership;
    /// returns, per agent, when it first matched (after `since`). Fails after `timeout` with
    /// every agent's difference.
    fn wait_pinglists(&mut self, since: Instant, timeout: Duration) -> Result<Vec<Duration>> {
        let topo = self.topology();
        let mut done: Vec<Option<Duration>> = vec![None; self.agents.len()];
        let mut last: Vec<String> = vec![String::new(); self.agents.len()];
        let deadline = since + timeout;
        loop {
            for (i, a) in self.agents.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let at = since.elapsed();
                match self.served(i) {
                    Ok(s) => {
                        ensure!(
                            s.node_id == a.node_id,
                            "{}: /pinglist of {}",
                            a.node_id,
                            s.node_id
                        );
                        let want = support::expected(&topo, a, &s.params);
                        if s.peers == want && s.members == topo.len() as u64 {
                            done[i] = Some(at);
                        } else {
                            last[i] = format!(
                                "members {} (expected {}); {}",
                                s.members,
                                topo.len(),
                                diff(&s.peers, &want)
                            );
                        }
                    }
                    Err(e) => last[i] = format!("{e:#}"),
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            for i in 0..self.agents.len() {
                if !self.cluster.agent_mut(i).is_running() {
                    let a = self.cluster.agent(i);
                    bail!("{} exited; stderr:\n{}", a.label(), a.stderr_tail(40));
                }
            }
            if Instant::now() > deadline {
                let lagging: Vec<String> = (0..self.agents.len())
                    .filter(|&i| done[i].is_none())
                    .map(|i| format!("{}: {}", self.agents[i].node_id, last[i]))
                    .collect();
                bail!(
                    "pinglists not the function's within {timeout:?}:\n{}\n{}",
                    lagging.join("\n"),
                    self.cluster.agent(0).stderr_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return "-".into();
    }
    format!(
        "min {:.0}, median {:.0}, max {:.0}",
        s[0],
        s[s.len() / 2],
        s[s.len() - 1]
    )
}

/// A join or a leave: every agent's pinglist follows within the bound; bytes per agent under
/// the change bound.
fn change(
    sc: &mut Scale,
    what: &str,
    m: &SyntheticMember,
    apply: impl FnOnce(&mut Registrar) -> Result<()>,
) -> Result<()> {
    let before = sc.traffic();
    let t0 = Instant::now();
    apply(&mut sc.registrar)?;
    let delays = sc.wait_pinglists(t0, UPDATE_BOUND)?;
    std::thread::sleep(SETTLE);
    let after = sc.traffic();
    let bound = change_bound(&sc.layout, m);
    let mut per_agent = Vec::new();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let d = a.since(b);
        ensure!(
            d.connections == 0,
            "{}: opened a new ZooKeeper connection during the {what}",
            sc.agents[i].node_id
        );
        ensure!(
            d.work_bytes() as usize <= bound,
            "{}: {} bytes with ZooKeeper for the {what} of {} (bound {bound}: one notification \
             per znode of the registration, no request); to ZooKeeper {:?}, from it {:?}",
            sc.agents[i].node_id,
            d.work_bytes(),
            m.node_id,
            d.to_server,
            d.to_client
        );
        per_agent.push(d.work_bytes() as f64);
    }
    let delays: Vec<f64> = delays.into_iter().map(ms).collect();
    eprintln!(
        "scale: {what} of {}: every pinglist the function's after {} ms (poll every 50 ms; \
         bound {UPDATE_BOUND:?}, goal 2 s in the bench); ZooKeeper bytes per agent without \
         pings: {} (bound {bound}, goal 300)",
        m.node_id,
        summary(&delays),
        summary(&per_agent)
    );
    Ok(())
}

/// ZooKeeper's address and the counting proxy in front of it, next to it in the core
/// namespace.
fn counting_proxy(lab: &Cluster) -> Result<(SocketAddr, CountingProxy)> {
    let core_ip = lab.star.core_ip(FAMILY);
    let zk_addr = SocketAddr::new(core_ip, ZK_PORT);
    let proxy = CountingProxy::start(
        lab.star.core(),
        SocketAddr::new(core_ip, PROXY_PORT),
        zk_addr,
    )?;
    Ok((zk_addr, proxy))
}

#[test]
fn pinglists_at_scale() -> Result<()> {
    let test = "scale_pinglist::pinglists_at_scale";
    // The last mesh node is the reflector namespace of the synthetic members.
    let Some(mut lab) = Cluster::acquire(test, AGENTS + 1, FAMILY, true, false)? else {
        return Ok(());
    };
    let refl_node = AGENTS;
    let (zk_addr, proxy) = counting_proxy(&lab)?;
    synthetic::answer_all(lab.star.node(refl_node), FAMILY)?;
    let refl_if = lab.star.node_if(refl_node);
    let reflector = lab
        .env
        .mp
        .reflect(lab.star.node(refl_node), &["-I", &refl_if])?;
    let refl_ip = lab.node_ip(refl_node);

    let layout = Arc::new(ProductLayout::default_paths());
    let members = synthetic::members(SHAPE, FAMILY);
    let t = Instant::now();
    let registrar = Registrar::start(
        lab.star.core(),
        &zk_addr.to_string(),
        layout.clone(),
        members,
    )?;
    eprintln!(
        "scale: {} synthetic members registered in {:.1} s (one session, one multi each)",
        registrar.len(),
        t.elapsed().as_secs_f64()
    );
    let agents: Vec<SyntheticMember> = (0..AGENTS).map(|i| agent_member(&lab, i)).collect();
    for (i, a) in agents.iter().enumerate() {
        synthetic::route_via(lab.star.node(i), refl_ip)?;
        let mut cfg = lab
            .config(i)
            .env("SERVERS_ZK", proxy.connect_string())
            .env("MESHPROBE_ZONE", &a.zone)
            .env("MESHPROBE_RACK", &a.rack)
            // The product's default session timeout: 2 cores carry 20 agents and ZooKeeper
            // with 10 000 members here; the lab's short one could expire a session.
            .env("CONN_TIMEOUT", 10)
            // One probe per peer per second and 5 s windows: 20 agents × 128 peers stay quiet.
            .env("MESHPROBE_INTERVAL", "1s")
            .env("MESHPROBE_WINDOW", "5s");
        cfg.drop_probe_lines = true;
        lab.start_agent_with(i, &cfg)?;
    }
    let mut sc = Scale {
        registrar,
        proxy,
        _reflector: reflector,
        layout,
        agents,
        cluster: lab,
    };
    let t0 = Instant::now();
    let synced = sc.wait_pinglists(t0, SYNC_TIMEOUT)?;
    eprintln!(
        "scale: {} agents' pinglists are the function's over {} members, {:.1} s after the \
         last agent was ready",
        AGENTS,
        sc.topology().len(),
        ms(synced.into_iter().max().unwrap_or_default()) / 1000.0
    );

    // The parameters the agents use are the defaults (the test sets none).
    for i in 0..AGENTS {
        let s = sc.served(i)?;
        ensure!(
            s.params == Params::default(),
            "{}: params {:?}, the defaults are {:?}",
            sc.agents[i].node_id,
            s.params,
            Params::default()
        );
        ensure!(
            s.peers.len() <= s.params.max_peers,
            "{}: {} peers, max_peers {}",
            sc.agents[i].node_id,
            s.peers.len(),
            s.params.max_peers
        );
    }

    // The synthetic members really answer: agent 0 measures one of its synthetic peers.
    let s0 = sc.served(0)?;
    let syn_peer = s0
        .peers
        .keys()
        .find(|id| id.starts_with("syn-"))
        .cloned()
        .context("agent 0 probes no synthetic member")?;
    sc.cluster
        .agent_mut(0)
        .wait_for(Duration::from_secs(20), |e| {
            e.kind() == "summary"
                && e.v["dst"] == syn_peer.as_str()
                && e.v["received"].as_u64().unwrap_or(0) > 0
        })
        .with_context(|| format!("node0: no reply from its synthetic peer {syn_peer}"))?;

    // Bytes at start: everything but pings and the watch events of later joins (the other
    // agents registering).
    let members: Vec<SyntheticMember> = sc
        .registrar
        .members()
        .chain(sc.agents.iter())
        .cloned()
        .collect();
    let bound = start_bound(&sc.layout, &members);
    let mut per_agent = Vec::new();
    for (a, t) in sc.agents.iter().zip(sc.traffic()) {
        ensure!(
            t.connections == 1,
            "{}: {} ZooKeeper connections",
            a.node_id,
            t.connections
        );
        let start = t.work_bytes() - t.to_client.event_bytes;
        ensure!(
            start as usize <= bound,
            "{}: {start} bytes with ZooKeeper at start (bound {bound}: every zone listed, each \
             entry name once, {SESSION_FIXED} fixed); to ZooKeeper {:?}, from it {:?}",
            a.node_id,
            t.to_server,
            t.to_client
        );
        per_agent.push(start as f64);
    }
    eprintln!(
        "scale: ZooKeeper bytes per agent at start without pings and events: {} for {} \
         members = {:.1} B/member at most (bound {bound} = {:.1} B/member; goal 200)",
        summary(&per_agent),
        members.len(),
        per_agent.iter().copied().fold(0.0, f64::max) / members.len() as f64,
        bound as f64 / members.len() as f64
    );

    // A join in agent 0's rack (so its rack mesh changes), then its leave.
    let i = SHAPE.members();
    let newcomer = SyntheticMember {
        node_id: "syn-joiner".into(),
        zone: sc.agents[0].zone.clone(),
        rack: sc.agents[0].rack.clone(),
        addr: synthetic::address(i, FAMILY),
        port: meshprobe_harness::STAMP_PORT,
    };
    let m = newcomer.clone();
    change(&mut sc, "join", &newcomer, move |r| r.add(m).map(|_| ()))?;
    change(&mut sc, "leave", &newcomer, |r| {
        r.remove("syn-joiner").map(|_| ())
    })?;

    sc.cluster.stop_agents(Duration::from_secs(15))?;
    Ok(())
}

/// The harness parts by themselves: one reflector namespace answers the synthetic addresses;
/// the registrar registers 10 000 members as the product lays them out, fast; the counting
/// proxy sees a listing and a notification byte for byte as [`wire`] says; every ephemeral
/// goes with the registrar.
#[test]
fn registrar_and_counting_proxy() -> Result<()> {
    let test = "scale_pinglist::registrar_and_counting_proxy";
    let Some(lab) = Cluster::acquire(test, 2, FAMILY, true, false)? else {
        return Ok(());
    };
    synthetic::answer_all(lab.star.node(1), FAMILY)?;
    let refl_if = lab.star.node_if(1);
    let reflector = lab.env.mp.reflect(lab.star.node(1), &["-I", &refl_if])?;
    synthetic::route_via(lab.star.node(0), lab.node_ip(1))?;
    for i in [0, SHAPE.members() - 1] {
        let dst = synthetic::address(i, FAMILY).to_string();
        let run = lab.env.mp.ping(
            lab.star.node(0),
            &[dst.as_str(), "-c", "3", "-i", "100ms", "-W", "500ms"],
            Duration::from_secs(20),
        )?;
        let s = run.summary()?;
        ensure!(
            s.received == 3,
            "synthetic address {dst} not answered: {s:?}"
        );
    }
    drop(reflector);
    let (zk_addr, proxy) = counting_proxy(&lab)?;
    let layout = Arc::new(ProductLayout::default_paths());
    let members = synthetic::members(SHAPE, FAMILY);
    let zone0: Vec<String> = {
        let mut v: Vec<String> = members
            .iter()
            .filter(|m| m.zone == members[0].zone)
            .map(ProductLayout::entry_name)
            .collect();
        v.sort();
        v
    };
    let t = Instant::now();
    let mut reg = Registrar::start(
        lab.star.core(),
        &zk_addr.to_string(),
        layout.clone(),
        members.clone(),
    )?;
    let took = t.elapsed();
    eprintln!("registrar: {} members in {took:.1?}", members.len());
    ensure!(
        took < Duration::from_secs(60),
        "10 000 members took {took:?} to register (the scale test needs well under a minute)"
    );
    let zone_dir = layout.zone_path(&members[0].zone);
    ensure!(
        lab.zk().ls(&zone_dir)? == zone0,
        "zone listing of {zone_dir}"
    );
    ensure!(lab.zk().ls(HEARTBEAT_PATH)?.len() == members.len());
    let info = lab
        .zk()
        .get(&format!("{HEARTBEAT_PATH}/{}", members[0].node_id))?
        .context("registration data")?;
    ensure!(
        info == layout.znodes(&members[0])[0].1,
        "registration data is the NodeInfo"
    );

    // A client in node 0, through the proxy: one listing, then a recursive watch that sees a
    // join. The proxy counts exactly what the wire format says.
    let node_ip = lab.node_ip(0);
    let proxy_cs = proxy.connect_string();
    let joiner = synthetic::member(SHAPE.members(), 0, 0, 999, FAMILY);
    let joiner_entry = layout.entry_path(&joiner);
    let topo_root = meshprobe::discovery::layout::topology_root(HEARTBEAT_PATH);
    let (listing, before_join) = lab.star.node(0).enter(|| -> Result<(Traffic, Traffic)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, mut watcher, listing) = rt.block_on(async {
            let c = zookeeper_client::Client::connector()
                .with_session_timeout(Duration::from_secs(20))
                .connect(&proxy_cs)
                .await?;
            let before = proxy.client(node_ip);
            let (names, _) = c.get_children(&zone_dir).await?;
            ensure!(names.len() == zone0.len(), "listing through the proxy");
            let listing = proxy.client(node_ip).since(&before);
            let w = c
                .watch(
                    &topo_root,
                    zookeeper_client::AddWatchMode::PersistentRecursive,
                )
                .await?;
            anyhow::Ok((c, w, listing))
        })?;
        let before_join = proxy.client(node_ip);
        reg.add(joiner.clone())?;
        rt.block_on(async {
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), watcher.changed())
                    .await
                    .context("no watch event for the join")?;
                if ev.path == joiner_entry {
                    break;
                }
            }
            drop(client);
            anyhow::Ok(())
        })?;
        Ok((listing, before_join))
    })??;
    let names: usize = zone0.iter().map(|n| wire::STRING + n.len()).sum();
    ensure!(
        listing.to_client.work_bytes() as usize
            == wire::FRAME + wire::REPLY_HEADER + wire::INT + names + wire::STAT,
        "listing reply of {} bytes, {names} of names: {listing:?}",
        listing.to_client.bytes
    );
    ensure!(
        listing.to_server.work_bytes() as usize
            == wire::listing_overhead(&zone_dir)
                - (wire::FRAME + wire::REPLY_HEADER + wire::INT + wire::STAT),
        "listing request: {listing:?}"
    );
    let join = proxy.client(node_ip).since(&before_join);
    ensure!(
        join.to_client.event_frames == 1
            && join.to_client.event_bytes as usize == wire::notification(&joiner_entry),
        "the join's notification: {join:?}, expected {} bytes",
        wire::notification(&joiner_entry)
    );
    ensure!(
        join.work_bytes() as usize <= change_bound(&layout, &joiner),
        "a join seen by a recursive watch: {join:?}"
    );

    // A leave, then every member at once when the registrar goes.
    reg.remove(&joiner.node_id)?;
    ensure!(
        !lab.zk()
            .ls(&zone_dir)?
            .contains(&ProductLayout::entry_name(&joiner))
    );
    drop(reg);
    let gone = meshprobe_harness::services::wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || lab.zk().ls(HEARTBEAT_PATH).is_ok_and(|v| v.is_empty()),
    );
    ensure!(gone, "members left after the registrar was dropped");
    ensure!(lab.zk().ls(&zone_dir)?.is_empty(), "index entries left");
    drop(proxy);
    Ok(())
}
