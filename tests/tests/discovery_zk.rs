//! ZooKeeper membership (`meshprobe::discovery::run_zk`) against a real ZooKeeper 3.8, in
//! process: each member runs on its own thread inside a harness namespace, with its own tokio
//! runtime, so its ZooKeeper connection comes from that namespace's address.
//!
//! Topology: TwoHosts; ZooKeeper listens on A (198.18.0.1:2181); member "a" runs in A, member
//! "b" in B (198.18.0.2), so B's ZooKeeper traffic can be cut with nftables alone.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use meshprobe::discovery::admit::{self, MemberPolicy};
use meshprobe::discovery::{
    CONFLICT_RETRY, DiscoveryError, PeerMap, RESYNC_JITTER_MAX, STOP_BUDGET, ZkMetrics, ZkOptions,
    ZkState, layout, run_zk,
};
use meshprobe::pb::NodeInfo;
use meshprobe_harness::env::{exclusive, missing_prerequisite, skip};
use meshprobe_harness::netns::Netns;
use meshprobe_harness::services::{TcpBlock, ZooKeeper, zookeeper_missing};
use meshprobe_harness::topo::TwoHosts;
use meshprobe_harness::zkreg::{Registrar, SyntheticMember};
use support::ProductLayout;
use tokio::sync::watch;

const ZK_PORT: u16 = 2181;
const ROOT: &str = "/meshprobe-test/";
const HEARTBEAT: &str = "heartbeat";
const MEMBERS: &str = "/meshprobe-test/heartbeat";
const TOPOLOGY: &str = "/meshprobe-test/heartbeat.topology";
const PROBE_PORT: u16 = 862;

/// Longest wait for something that should follow at once: four session timeouts (the slowest
/// way anything here happens is a session expiry, one timeout). Only stops a hang.
fn safety(session_timeout: Duration) -> Duration {
    4 * session_timeout
}

/// Root, ip, nft, java and the ZooKeeper jars, and the machine to ourselves; else skip.
fn prereq(test: &str) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    if let Some(why) = missing_prerequisite(&["nft"]).or_else(zookeeper_missing) {
        skip(test, &why);
        return Ok(None);
    }
    Ok(Some(exclusive()?))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn node_info(id: &str, addr: IpAddr, port: u32, tag: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        public_address: addr.to_string(),
        public_port: port,
        zone: format!("zone-{id}"),
        rack: "rack-1".into(),
        version: tag.into(),
        capabilities: vec!["stamp-reflector".into()],
        started_tai_ns: now_ns(),
    }
}

fn options(servers: &str, me: NodeInfo, timeout: Duration) -> ZkOptions {
    ZkOptions {
        servers: servers.into(),
        root_path: ROOT.into(),
        heartbeat_path: HEARTBEAT.into(),
        session_timeout: timeout,
        me,
        default_port: PROBE_PORT,
        // The harness's networks (the members here are in several subnets of it).
        policy: MemberPolicy {
            networks: admit::parse_networks(meshprobe_harness::TEST_NETWORKS)
                .expect("the test networks parse"),
            ..MemberPolicy::any_network()
        },
        metrics: ZkMetrics::default(),
        auth: None,
    }
}

/// The registration and index entry of `info`, by the product's rule.
fn znodes(info: &NodeInfo) -> layout::Registration {
    layout::registration(MEMBERS, info)
}

/// The index entry path of `info`.
fn entry_of(info: &NodeInfo) -> String {
    znodes(info).entry
}

/// Registers `info` (registration and entry, one transaction) in a detached session that
/// lives on for `linger` after we close it, like the session of a killed agent; its id.
fn register_detached(ns: &Netns, servers: &str, info: &NodeInfo, linger: Duration) -> Result<i64> {
    let z = znodes(info);
    zk_session(ns, servers, Some(linger), async move |c| {
        let persistent = persistent_opts();
        for p in [&z.path, &z.entry] {
            let dir = &p[..p.rfind('/').unwrap()];
            c.mkdir(dir, &persistent)
                .await
                .map_err(|e| anyhow!("mkdir {dir}: {e}"))?;
        }
        let eph =
            zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
        let mut w = c.new_multi_writer();
        w.add_create(&z.path, &z.data, &eph)?;
        w.add_create(&z.entry, &[], &eph)?;
        w.commit()
            .await
            .map_err(|e| anyhow!("registering {}: {e}", z.path))?;
        Ok(c.session_id().0)
    })
}

/// Deletes a member's registration and entry (one transaction), as its graceful leave does.
fn deregister(ns: &Netns, servers: &str, info: &NodeInfo) -> Result<()> {
    let z = znodes(info);
    zk_session(ns, servers, None, async move |c| {
        let mut w = c.new_multi_writer();
        w.add_delete(&z.path, None)?;
        w.add_delete(&z.entry, None)?;
        w.commit()
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("deregistering {}: {e}", z.path))
    })
}

/// Runs `f` with a ZooKeeper client connected from inside `ns`. A `detached` session is not
/// closed afterwards: it stays alive on the server until its timeout, like the session of an
/// agent that was killed.
fn zk_session<T, F>(ns: &Netns, servers: &str, detached: Option<Duration>, f: F) -> Result<T>
where
    T: Send,
    F: AsyncFnOnce(&zookeeper_client::Client) -> Result<T> + Send,
{
    let servers = servers.to_string();
    ns.enter(move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut c = zookeeper_client::Client::connector()
                .with_session_timeout(detached.unwrap_or(Duration::from_secs(5)));
            if detached.is_some() {
                c = c.with_detached();
            }
            let client = tokio::time::timeout(Duration::from_secs(10), c.connect(&servers))
                .await
                .map_err(|_| anyhow!("connecting to ZooKeeper {servers} timed out"))?
                .with_context(|| format!("connecting to ZooKeeper {servers}"))?;
            let r = tokio::time::timeout(Duration::from_secs(10), f(&client))
                .await
                .map_err(|_| anyhow!("ZooKeeper operation timed out"))?;
            drop(client);
            r
        })
    })?
}

/// Data and ephemeral owner of `path`, `None` if it does not exist.
fn znode(ns: &Netns, servers: &str, path: &str) -> Result<Option<(Vec<u8>, i64)>> {
    let p = path.to_string();
    zk_session(ns, servers, None, async move |c| {
        match c.get_data(&p).await {
            Ok((data, stat)) => Ok(Some((data, stat.ephemeral_owner))),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(anyhow!("get_data {p}: {e}")),
        }
    })
}

/// Polls `path` (every 20 ms, over one session) until it is an ephemeral znode; how long that
/// took, `None` if it was not within `within` (at most the 10 s a session operation may take).
fn wait_ephemeral(
    ns: &Netns,
    servers: &str,
    path: &str,
    within: Duration,
) -> Result<Option<Duration>> {
    let p = path.to_string();
    zk_session(ns, servers, None, async move |c| {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            match c.get_data(&p).await {
                Ok((_, stat)) if stat.ephemeral_owner != 0 => return Ok(Some(t0.elapsed())),
                Ok(_) | Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(anyhow!("get_data {p}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    })
}

fn delete_znode(ns: &Netns, servers: &str, path: &str) -> Result<()> {
    let p = path.to_string();
    zk_session(ns, servers, None, async move |c| {
        c.delete(&p, None)
            .await
            .map_err(|e| anyhow!("delete {p}: {e}"))
    })
}

fn persistent_opts() -> zookeeper_client::CreateOptions<'static> {
    zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all())
}

/// Creates the persistent `path` (and its parents) holding `data`.
fn create_znode(ns: &Netns, servers: &str, path: &str, data: Vec<u8>) -> Result<()> {
    let p = path.to_string();
    zk_session(ns, servers, None, async move |c| {
        let parent = &p[..p.rfind('/').unwrap()];
        c.mkdir(parent, &persistent_opts())
            .await
            .map_err(|e| anyhow!("mkdir {parent}: {e}"))?;
        c.create(&p, &data, &persistent_opts())
            .await
            .map_err(|e| anyhow!("create {p}: {e}"))?;
        Ok(())
    })
}

type Outcome = Result<Result<(), DiscoveryError>>;

/// One `run_zk` on its own thread (and current-thread runtime) inside a namespace. Dropping it
/// stops it (graceful leave) and joins the thread.
struct Member {
    name: String,
    stop: watch::Sender<bool>,
    peers: watch::Receiver<PeerMap>,
    state: watch::Receiver<ZkState>,
    thread: Option<JoinHandle<Outcome>>,
}

impl Member {
    fn start(ns: &Netns, opts: ZkOptions) -> Member {
        let name = opts.me.node_id.clone();
        let (peers_tx, peers) = watch::channel(PeerMap::new());
        let (state_tx, state) = watch::channel(ZkState::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let thread = ns.spawn_thread(move || -> Result<(), DiscoveryError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run_zk(opts, peers_tx, state_tx, stop_rx))
        });
        Member {
            name,
            stop,
            peers,
            state,
            thread: Some(thread),
        }
    }

    fn state(&self) -> ZkState {
        *self.state.borrow()
    }

    fn peer_ids(&self) -> BTreeSet<String> {
        self.peers.borrow().keys().cloned().collect()
    }

    fn has_peer(&self, id: &str) -> bool {
        self.peers.borrow().contains_key(id)
    }

    /// Polls (every 1 ms) until `cond` holds; returns how long that took.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&PeerMap, ZkState) -> bool,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if cond(&self.peers.borrow(), self.state()) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{}: not {what} within {timeout:?} (state {}, peers {:?})",
                    self.name,
                    self.state(),
                    self.peer_ids()
                );
            }
            if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                bail!("{}: run_zk returned while waiting for {what}", self.name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_registered_with(&self, peers: &[&str], timeout: Duration) -> Result<Duration> {
        let want: BTreeSet<String> = peers.iter().map(|s| s.to_string()).collect();
        self.wait(
            &format!("registered with peers {want:?}"),
            timeout,
            |m, s| s == ZkState::Registered && m.keys().cloned().collect::<BTreeSet<_>>() == want,
        )
    }

    /// Stops `run_zk` and returns how long it took to return.
    fn stop(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.stop.send_replace(true);
        let Some(h) = self.thread.take() else {
            return Ok(Duration::ZERO);
        };
        while !h.is_finished() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("{}: run_zk did not return within 10 s of stop", self.name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = t0.elapsed();
        match h.join() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("{}: run_zk failed: {e}", self.name),
            Ok(Err(e)) => bail!("{}: could not enter the namespace: {e:#}", self.name),
            Err(_) => bail!("{}: run_zk panicked", self.name),
        }
        ensure!(
            self.state() == ZkState::Stopped,
            "{}: state after stop is {}",
            self.name,
            self.state()
        );
        Ok(took)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("discovery_zk: {e:#}");
        }
    }
}

fn a_addr() -> IpAddr {
    TwoHosts::A4.into()
}

fn b_addr() -> IpAddr {
    TwoHosts::B4.into()
}

/// Discovery, peer details, junk members skipped, the registration's content, and a member
/// that stops is dropped at once (by its leave, not by its session's expiry). How fast a new
/// member is discovered is the bench's figure (`cargo xtask bench`, scenario discovery).
#[test]
fn members_see_each_other_and_leave_at_once() -> Result<()> {
    let test = "members_see_each_other_and_leave_at_once";
    let Some(_lock) = prereq(test)? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let zk = ZooKeeper::start(&t.a, a_addr(), ZK_PORT)?;
    let servers = zk.connect_string();
    // Junk next to the real members. Registrations without an index entry (as agents of an
    // older version make them) are not probed: not a NodeInfo, and a name that cannot resolve.
    // In the index: a name that is no entry, and an entry whose name cannot resolve.
    create_znode(
        &t.a,
        &servers,
        &format!("{}/not-an-entry", layout::zone_path(TOPOLOGY, "zone-x")),
        Vec::new(),
    )?;
    let mut ghost = node_info("ghost2", a_addr(), 862, "t");
    ghost.public_address = "no-such-host.invalid".into();
    create_znode(&t.a, &servers, &entry_of(&ghost), Vec::new())?;
    create_znode(&t.a, &servers, &format!("{MEMBERS}/junk"), vec![0xff; 3])?;
    let mut unresolvable = node_info("ghost", a_addr(), 862, "t");
    unresolvable.public_address = "no-such-host.invalid".into();
    let unresolvable = znodes(&unresolvable).data;
    create_znode(&t.a, &servers, &format!("{MEMBERS}/ghost"), unresolvable)?;

    let timeout = Duration::from_secs(4);
    let mut a = Member::start(
        &t.a,
        options(&servers, node_info("a", a_addr(), 862, "test-a"), timeout),
    );
    a.wait_registered_with(&[], Duration::from_secs(10))?;

    // b registers port 0: a must use its default port.
    let t0 = Instant::now();
    let mut b = Member::start(
        &t.b,
        options(&servers, node_info("b", b_addr(), 0, "test-b"), timeout),
    );
    b.wait("registered", Duration::from_secs(10), |_, s| {
        s == ZkState::Registered
    })?;
    let registered_at = t0.elapsed();
    a.wait("seeing b", safety(timeout), |m, _| m.contains_key("b"))?;
    let seen_at = t0.elapsed();
    let after_registration = seen_at.saturating_sub(registered_at);
    eprintln!(
        "discovery_zk: b registered {registered_at:?} after start; a saw b {after_registration:?} \
         after b's registration ({seen_at:?} after start)"
    );
    b.wait_registered_with(&["a"], safety(timeout))?;

    let pb = a.peers.borrow()["b"].clone();
    ensure!(
        pb.addr == "198.18.0.2:862".parse()? && pb.zone == "zone-b" && pb.rack == "rack-1",
        "a's view of b: {pb:?}"
    );
    let pa = b.peers.borrow()["a"].clone();
    ensure!(
        pa.addr == "198.18.0.1:862".parse()?,
        "b's view of a: {pa:?}"
    );
    ensure!(
        a.peer_ids() == BTreeSet::from(["b".to_string()]),
        "junk members or ourselves in a's map: {:?}",
        a.peer_ids()
    );

    // Our registration is an ephemeral znode holding our NodeInfo, and our index entry an
    // empty ephemeral znode of the same session.
    let (data, owner) =
        znode(&t.a, &servers, &format!("{MEMBERS}/a"))?.ok_or_else(|| anyhow!("no znode for a"))?;
    ensure!(owner != 0, "a's znode is not ephemeral");
    ensure!(
        data.windows(6).any(|w| w == b"test-a"),
        "a's znode does not hold a's NodeInfo: {data:?}"
    );
    let a_entry = entry_of(&node_info("a", a_addr(), 862, "test-a"));
    let (data, entry_owner) =
        znode(&t.a, &servers, &a_entry)?.ok_or_else(|| anyhow!("no index entry {a_entry}"))?;
    ensure!(
        entry_owner == owner && data.is_empty(),
        "a's index entry {a_entry}: owner {entry_owner:#x} (registration {owner:#x}), data {data:?}"
    );

    // b stops: its znode goes first, a's map drops it at once. Had b only abandoned its
    // session, the server would expire it no earlier than b's last contact plus the session
    // timeout; an idle client pings well within half the timeout (this one every 3/20), so that
    // contact is at most half a timeout before the stop. A drop within half a timeout of the
    // stop is therefore the leave's doing (delete or session close), not an expiry.
    let leave_bound = timeout / 2;
    // The leave is bounded by STOP_BUDGET; as much again for scheduling and the thread's join.
    let stop_bound = 2 * STOP_BUDGET;
    let t0 = Instant::now();
    let stop_took = b.stop()?;
    let gone = a.wait("dropping b", safety(timeout), |m, _| !m.contains_key("b"))?;
    let gone_after_stop = t0.elapsed();
    eprintln!(
        "discovery_zk: b's stop took {stop_took:?} (bound {stop_bound:?}); a dropped b \
         {gone_after_stop:?} after the stop began ({gone:?} after it returned; bound \
         {leave_bound:?}, half the {timeout:?} session timeout)"
    );
    ensure!(
        stop_took < stop_bound,
        "stop took {stop_took:?}, over twice STOP_BUDGET ({STOP_BUDGET:?})"
    );
    ensure!(
        gone_after_stop < leave_bound,
        "a dropped b only {gone_after_stop:?} after b's stop began: not before an expiry of \
         b's session could have removed it (half the {timeout:?} session timeout)"
    );
    ensure!(znode(&t.a, &servers, &format!("{MEMBERS}/b"))?.is_none());
    let b_entry = entry_of(&node_info("b", b_addr(), 0, "test-b"));
    ensure!(
        znode(&t.a, &servers, &b_entry)?.is_none(),
        "b's index entry {b_entry} outlived its leave"
    );

    // A new member appears again (watch re-armed after each event).
    let t0 = Instant::now();
    let _c = Member::start(
        &t.b,
        options(&servers, node_info("c", b_addr(), 862, "test-c"), timeout),
    );
    a.wait("seeing c", safety(timeout), |m, _| m.contains_key("c"))?;
    eprintln!(
        "discovery_zk: a saw a third member c {:?} after c started",
        t0.elapsed()
    );
    a.stop()?;
    Ok(())
}

/// ZooKeeper down at start, then up; killed for 3 s and restarted on the same data: the maps
/// stay populated throughout and both members are registered again afterwards. Member b uses
/// a connect string with a dead server first.
#[test]
fn zookeeper_outage_keeps_the_map() -> Result<()> {
    let test = "zookeeper_outage_keeps_the_map";
    let Some(_lock) = prereq(test)? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let live = format!("{}:{ZK_PORT}", a_addr());
    let with_dead = format!("{}:{},{live}", a_addr(), ZK_PORT + 1);
    let timeout = Duration::from_secs(6);
    let a = Member::start(
        &t.a,
        options(&live, node_info("a", a_addr(), 862, "test-a"), timeout),
    );
    let b = Member::start(
        &t.b,
        options(&with_dead, node_info("b", b_addr(), 862, "test-b"), timeout),
    );
    std::thread::sleep(Duration::from_secs(2));
    for m in [&a, &b] {
        ensure!(
            m.state() == ZkState::Connecting && m.peer_ids().is_empty(),
            "{} without ZooKeeper: state {}, peers {:?}",
            m.name,
            m.state(),
            m.peer_ids()
        );
    }
    let mut zk = ZooKeeper::start(&t.a, a_addr(), ZK_PORT)?;
    let t0 = Instant::now();
    a.wait_registered_with(&["b"], Duration::from_secs(15))?;
    b.wait_registered_with(&["a"], Duration::from_secs(15))?;
    eprintln!(
        "discovery_zk: both registered and complete {:?} after ZooKeeper came up (started late)",
        t0.elapsed()
    );

    zk.stop();
    let t0 = Instant::now();
    let mut seen = BTreeSet::new();
    while t0.elapsed() < Duration::from_secs(3) {
        for (m, other) in [(&a, "b"), (&b, "a")] {
            ensure!(
                m.has_peer(other),
                "{} lost {other} from its map during the outage ({:?} in, state {})",
                m.name,
                t0.elapsed(),
                m.state()
            );
            seen.insert((m.name.clone(), m.state().as_str()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for m in [&a, &b] {
        ensure!(
            seen.contains(&(m.name.clone(), "disconnected")),
            "{} never reported Disconnected: {seen:?}",
            m.name
        );
    }
    zk.start_again()?;
    let t0 = Instant::now();
    a.wait_registered_with(&["b"], Duration::from_secs(15))?;
    b.wait_registered_with(&["a"], Duration::from_secs(15))?;
    eprintln!(
        "discovery_zk: after a 3 s ZooKeeper outage both were registered again {:?} after it \
         came back; maps stayed complete throughout",
        t0.elapsed()
    );
    let ephemerals: BTreeSet<String> = zk
        .ephemerals()?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.starts_with("/meshprobe-test/"))
        .collect();
    let want = BTreeSet::from([
        format!("{MEMBERS}/a"),
        format!("{MEMBERS}/b"),
        entry_of(&node_info("a", a_addr(), 862, "")),
        entry_of(&node_info("b", b_addr(), 862, "")),
    ]);
    ensure!(
        ephemerals == want,
        "ephemerals after the outage: {ephemerals:?}, want {want:?}"
    );
    // Leave while ZooKeeper is still up (locals drop in reverse order: zk first).
    drop(b);
    drop(a);
    Ok(())
}

/// b's traffic to ZooKeeper is dropped for longer than the session timeout: its session
/// expires (a sees b go), b keeps its map, then creates a new session and registers again.
#[test]
fn session_expiry_registers_again() -> Result<()> {
    let test = "session_expiry_registers_again";
    let Some(_lock) = prereq(test)? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let zk = ZooKeeper::start(&t.a, a_addr(), ZK_PORT)?;
    let servers = zk.connect_string();
    let timeout = Duration::from_secs(2);
    let a = Member::start(
        &t.a,
        options(&servers, node_info("a", a_addr(), 862, "test-a"), timeout),
    );
    let b = Member::start(
        &t.b,
        options(&servers, node_info("b", b_addr(), 862, "test-b"), timeout),
    );
    a.wait_registered_with(&["b"], Duration::from_secs(10))?;
    b.wait_registered_with(&["a"], Duration::from_secs(10))?;
    let (_, old_session) =
        znode(&t.a, &servers, &format!("{MEMBERS}/b"))?.ok_or_else(|| anyhow!("no znode for b"))?;

    let block = TcpBlock::install(&t.b, ZK_PORT)?;
    let t0 = Instant::now();
    let mut b_states = BTreeSet::new();
    let mut a_lost_b = None;
    while t0.elapsed() < Duration::from_secs(5) {
        ensure!(
            b.has_peer("a"),
            "b lost a from its map while cut off ({:?} in, state {})",
            t0.elapsed(),
            b.state()
        );
        b_states.insert(b.state().as_str());
        if a_lost_b.is_none() && !a.has_peer("b") {
            a_lost_b = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(block);
    let unblocked = Instant::now();
    eprintln!(
        "discovery_zk: b cut off for 5 s with a 2 s session timeout: b's states {b_states:?}; \
         a dropped b {a_lost_b:?} into the cut"
    );
    ensure!(
        b_states.contains("expired"),
        "b never reported its session expired: {b_states:?}"
    );
    ensure!(a_lost_b.is_some(), "a kept b although b's session expired");
    b.wait_registered_with(&["a"], Duration::from_secs(10))?;
    let back = unblocked.elapsed();
    a.wait("seeing b again", safety(timeout), |m, _| {
        m.contains_key("b")
    })?;
    let (_, new_session) = znode(&t.a, &servers, &format!("{MEMBERS}/b"))?
        .ok_or_else(|| anyhow!("no znode for b after the expiry"))?;
    ensure!(
        new_session != old_session,
        "b's znode still belongs to the expired session {old_session:#x}"
    );
    let b_entry = entry_of(&node_info("b", b_addr(), 862, ""));
    let (_, entry_session) = znode(&t.a, &servers, &b_entry)?
        .ok_or_else(|| anyhow!("no index entry {b_entry} after the expiry"))?;
    ensure!(
        entry_session == new_session,
        "b's index entry belongs to session {entry_session:#x}, not b's {new_session:#x}"
    );
    eprintln!(
        "discovery_zk: b registered again in a new session {back:?} after the cut ended \
         (session {old_session:#x} -> {new_session:#x}); a saw b again {:?} after the cut",
        unblocked.elapsed()
    );
    Ok(())
}

/// A znode left by our previous incarnation (same address, session still alive) is taken
/// over at once; one held by another agent (different address) is not, until it goes; our
/// znode deleted by someone else is created again.
#[test]
fn stale_own_znode_is_taken_over_conflicts_are_not() -> Result<()> {
    let test = "stale_own_znode_is_taken_over_conflicts_are_not";
    let Some(_lock) = prereq(test)? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let zk = ZooKeeper::start(&t.a, a_addr(), ZK_PORT)?;
    let servers = zk.connect_string();
    let linger = Duration::from_secs(40);
    let timeout = Duration::from_secs(4);

    // A "crashed" a: its session lives on for 40 s. It ran in another zone and rack: its
    // index entry is found from its registration's data.
    let mut stale = node_info("a", a_addr(), 862, "crashed-a");
    stale.started_tai_ns = 1;
    stale.zone = "zone-old".into();
    stale.rack = "rack-9".into();
    let stale_session = register_detached(&t.a, &servers, &stale, linger)?;
    let t0 = Instant::now();
    let a = Member::start(
        &t.a,
        options(&servers, node_info("a", a_addr(), 862, "test-a"), timeout),
    );
    let took = a.wait_registered_with(&[], Duration::from_secs(10))?;
    let (data, owner) =
        znode(&t.a, &servers, &format!("{MEMBERS}/a"))?.ok_or_else(|| anyhow!("no znode for a"))?;
    ensure!(
        owner != stale_session && data.windows(6).any(|w| w == b"test-a"),
        "a's znode still the stale one (owner {owner:#x}, stale {stale_session:#x})"
    );
    ensure!(
        znode(&t.a, &servers, &entry_of(&stale))?.is_none(),
        "the stale index entry {} outlived the takeover",
        entry_of(&stale)
    );
    let a_entry = entry_of(&node_info("a", a_addr(), 862, ""));
    ensure!(
        znode(&t.a, &servers, &a_entry)?.is_some_and(|(_, o)| o == owner),
        "a's own index entry {a_entry} missing after the takeover"
    );
    eprintln!(
        "discovery_zk: a took over its stale znodes (session {stale_session:#x} still alive) \
         {took:?} after start ({:?})",
        t0.elapsed()
    );

    // Another agent (198.18.0.9) holds "c": c waits and does not steal it.
    let mut other = node_info("c", "198.18.0.9".parse()?, 862, "other-c");
    other.started_tai_ns = 1;
    let other_session = register_detached(&t.a, &servers, &other, linger)?;
    let c_started = Instant::now();
    let c = Member::start(
        &t.b,
        options(&servers, node_info("c", b_addr(), 862, "test-c"), timeout),
    );
    // It still watches the members meanwhile; it lists them after its first (conflicting)
    // registration attempt, so that attempt came between its start and now.
    c.wait("seeing a", Duration::from_secs(10), |m, _| {
        m.contains_key("a")
    })?;
    let first_attempt_by = Instant::now();
    // c retries every CONFLICT_RETRY: its first retry is due by first_attempt_by +
    // CONFLICT_RETRY, its second no earlier than c_started + 2 × CONFLICT_RETRY. Deleting the
    // conflicting znode halfway between the two leaves half a CONFLICT_RETRY in which only the
    // watch on it can make c register; and c must not have stolen it at its first retry.
    let delete_at = first_attempt_by + CONFLICT_RETRY + CONFLICT_RETRY / 2;
    let second_retry = c_started + 2 * CONFLICT_RETRY;
    std::thread::sleep(delete_at.saturating_duration_since(Instant::now()));
    ensure!(
        c.state() == ZkState::Connecting,
        "c with a conflicting node id: state {}",
        c.state()
    );
    let (_, owner) = znode(&t.a, &servers, &format!("{MEMBERS}/c"))?
        .ok_or_else(|| anyhow!("the other agent's znode c is gone"))?;
    ensure!(owner == other_session, "c stole the other agent's znode");
    // a sees the other agent's c (its data is valid), not ours.
    ensure!(
        a.peers.borrow().get("c").map(|p| p.addr) == Some("198.18.0.9:862".parse()?),
        "a's view of c: {:?}",
        a.peers.borrow().get("c")
    );
    // The other agent leaves: c registers at once (it watches the conflicting znode). The
    // wait covers c's retries too, so a missing watch shows as a late registration.
    deregister(&t.a, &servers, &other)?;
    let deleted = Instant::now();
    c.wait("registered", 2 * CONFLICT_RETRY, |_, s| {
        s == ZkState::Registered
    })?;
    let registered = Instant::now();
    let c_took = registered - deleted;
    a.wait("seeing our c", safety(timeout), |m, _| {
        m.get("c")
            .is_some_and(|p| p.addr == "198.18.0.2:862".parse().unwrap())
    })?;
    let retry_after = second_retry.saturating_duration_since(deleted);
    eprintln!(
        "discovery_zk: c registered {c_took:?} after the conflicting znode went (its next retry \
         was due no earlier than {retry_after:?} after that; CONFLICT_RETRY {CONFLICT_RETRY:?})"
    );
    ensure!(
        registered < second_retry,
        "c registered {c_took:?} after the conflicting znode went, not before its next retry \
         ({retry_after:?} after that): its watch on the conflicting znode did not act"
    );

    // Someone deletes a's znode: a creates it again, on its watch of its own znode (nothing
    // else would make it register again while its session lives).
    delete_znode(&t.a, &servers, &format!("{MEMBERS}/a"))?;
    let recreated =
        wait_ephemeral(&t.a, &servers, &format!("{MEMBERS}/a"), timeout)?.ok_or_else(|| {
            anyhow!("a did not re-create its deleted znode within the {timeout:?} session timeout")
        })?;
    a.wait_registered_with(&["c"], safety(timeout))?;
    eprintln!(
        "discovery_zk: a re-created its deleted znode within {recreated:?} (bound: the \
         {timeout:?} session timeout)"
    );

    // Someone deletes a's index entry: a creates it again, on the event of its index watch.
    delete_znode(&t.a, &servers, &a_entry)?;
    let recreated = wait_ephemeral(&t.a, &servers, &a_entry, timeout)?.ok_or_else(|| {
        anyhow!(
            "a did not re-create its deleted index entry within the {timeout:?} session timeout"
        )
    })?;
    c.wait("seeing a again", safety(timeout), |m, _| {
        m.contains_key("a")
    })?;
    eprintln!("discovery_zk: a re-created its deleted index entry within {recreated:?}");
    Ok(())
}

/// Joins and leaves while b is cut off from ZooKeeper (its connection lost, its session alive)
/// are lost for its watch; b catches up by its re-synchronisation after the jitter, and its
/// watch works again afterwards.
#[test]
fn changes_during_a_disconnection_are_caught_up() -> Result<()> {
    let test = "changes_during_a_disconnection_are_caught_up";
    let Some(_lock) = prereq(test)? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let zk = ZooKeeper::start(&t.a, a_addr(), ZK_PORT)?;
    let servers = zk.connect_string();
    let timeout = Duration::from_secs(10);
    let b = Member::start(
        &t.b,
        options(&servers, node_info("b", b_addr(), 862, "test-b"), timeout),
    );
    b.wait_registered_with(&[], Duration::from_secs(10))?;
    let member = |id: &str, last: u8| SyntheticMember {
        node_id: id.into(),
        zone: format!("zone-{id}"),
        rack: "rack-1".into(),
        addr: IpAddr::from([198, 18, 0, last]),
        port: PROBE_PORT,
    };
    let (x, y, z) = (member("x", 10), member("y", 11), member("z", 12));
    let codec = ProductLayout {
        member_parent: MEMBERS.into(),
    };
    let mut lc = Registrar::start(&t.a, &servers, Arc::new(codec), vec![y.clone()])?;
    b.wait_registered_with(&["y"], safety(timeout))?;

    // Cut b off until its client gives the connection up (about 0.4 session timeouts); its
    // session stays alive (a timeout without contact). x joins, y leaves meanwhile.
    let (_, session) = znode(&t.a, &servers, &format!("{MEMBERS}/b"))?
        .ok_or_else(|| anyhow!("b is not registered"))?;
    let block = TcpBlock::install(&t.b, ZK_PORT)?;
    lc.add(x)?;
    lc.remove(&y.node_id)?;
    b.wait("disconnected", timeout, |_, s| s == ZkState::Disconnected)?;
    ensure!(
        b.peer_ids() == BTreeSet::from(["y".to_string()]),
        "b's map changed while it was cut off: {:?}",
        b.peer_ids()
    );
    drop(block);
    let unblocked = Instant::now();
    // Reconnection, then the re-synchronisation within the jitter.
    let bound = timeout / 2 + RESYNC_JITTER_MAX.min(timeout / 2) + Duration::from_secs(2);
    let took = b.wait_registered_with(&["x"], bound)?;
    eprintln!(
        "discovery_zk: b caught up with a join and a leave of its disconnection {took:?} after \
         the cut ended (jitter up to {:?})",
        RESYNC_JITTER_MAX.min(timeout / 2)
    );
    let (_, after) = znode(&t.a, &servers, &format!("{MEMBERS}/b"))?
        .ok_or_else(|| anyhow!("b's registration is gone"))?;
    ensure!(
        after == session,
        "b's session did not survive the cut ({session:#x} -> {after:#x}): not the case tested"
    );
    // The watch is back: a join after the catch-up is seen without another re-sync.
    lc.add(z)?;
    let took = b.wait("seeing z", safety(timeout), |m, _| m.contains_key("z"))?;
    eprintln!(
        "discovery_zk: b saw a join after the catch-up {took:?} after it ({:?} after the cut)",
        unblocked.elapsed()
    );
    Ok(())
}
