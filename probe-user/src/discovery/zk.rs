//! ZooKeeper membership: register our ephemeral znode, watch everybody else's.
//!
//! One loop owns one ZooKeeper session at a time. Inside a session, everything is driven by
//! one-shot watches (children of the member directory, each member's data, our own znode) and
//! the session state; a failed operation is retried after a short hold. The peer map only
//! changes on authoritative answers from ZooKeeper, so an outage keeps the last known map.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prost::Message;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};
use zookeeper_client::{self as zk, Acls, CreateMode, EventType, SessionState, WatchedEvent};

use super::syntax::{bracket, member_parent_path, normalize_servers};
use super::{DiscoveryError, Peer, PeerMap, ZkOptions, ZkState, validate_zk};
use crate::pb::NodeInfo;

/// New-session backoff: first delay, doubling up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Retry of a registration blocked by another agent with our node id.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(5);
/// Repeat of the node-id conflict error while it lasts.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Retry of member addresses that did not resolve.
const RESOLVE_RETRY: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Graceful leave: deleting our znode, then closing the session, within this in total.
pub const STOP_BUDGET: Duration = Duration::from_secs(2);
const DELETE_BUDGET: Duration = Duration::from_millis(1500);
/// Hold after an operation lost its connection (the session reconnects by itself).
const CONNECTION_LOSS_HOLD: Duration = Duration::from_millis(200);

const PERSISTENT: zk::CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());

type EventFuture = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;
type MemberEventFuture = Pin<Box<dyn Future<Output = (String, WatchedEvent)> + Send>>;
/// A DNS lookup of a member's address: (member, its mzxid then, result).
type LookupFuture = Pin<Box<dyn Future<Output = (String, i64, Result<SocketAddr, String>)> + Send>>;

/// Runs the ZooKeeper membership until `stop` becomes true (or its sender is dropped):
/// connects, creates the member directory `/<root>/<heartbeat>` (persistent, idempotent),
/// registers the ephemeral znode `/<root>/<heartbeat>/<node_id>` holding `me` (protobuf),
/// watches the directory's children and each child's data, and publishes the peer map (without
/// ourselves) on `peers` and our state on `state`.
///
/// ZooKeeper being unreachable (also at start), connection loss and session expiry are not
/// errors: the last known peer map stays published, the session reconnects (the client's own
/// retries while the session lives; new sessions with a 0.5 s to 5 s backoff, forever), and we
/// register again. On stop our znode is deleted first, then the session closed (about 2 s at
/// most). Errors are returned only for invalid options (see [`validate_zk`]).
pub async fn run_zk(
    opts: ZkOptions,
    peers: watch::Sender<PeerMap>,
    state: watch::Sender<ZkState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DiscoveryError> {
    validate_zk(&opts)?;
    let parent = member_parent_path(&opts.root_path, &opts.heartbeat_path)?;
    let me_path = format!("{parent}/{}", opts.me.node_id);
    let mut runner = Runner {
        servers: normalize_servers(&opts.servers)?,
        data: opts.me.encode_to_vec(),
        parent,
        me_path,
        opts,
        peers,
        state,
        members: BTreeMap::new(),
        lookups: FuturesUnordered::new(),
        resolve_at: None,
        outage: None,
        conflict_logged: None,
    };
    runner.set_state(ZkState::Connecting);
    runner.run(&mut stop).await;
    runner.set_state(ZkState::Stopped);
    Ok(())
}

/// Resolves when `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn next_event(w: &mut Option<EventFuture>) -> WatchedEvent {
    match w {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

/// Exponential backoff with a little jitter, so a fleet does not reconnect in lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        d.mul_f64(rand::random_range(0.8..=1.0))
    }
}

/// A failed ZooKeeper operation and what it was for.
struct OpError {
    what: String,
    err: zk::Error,
}

fn op_err(what: impl Into<String>) -> impl FnOnce(zk::Error) -> OpError {
    move |err| OpError {
        what: what.into(),
        err,
    }
}

/// Why a session ended.
enum End {
    Stop { registered: bool },
    Expired,
    Lost(String),
}

/// What we know about one member znode.
struct Member {
    czxid: i64,
    mzxid: i64,
    /// None: undecodable data.
    info: Option<NodeInfo>,
    /// None: undecodable, or the address is not resolved (yet).
    peer: Option<Peer>,
    /// A DNS lookup for it is under way.
    looking_up: bool,
    /// We warned that it cannot be used (once per znode version).
    warned: bool,
}

impl Member {
    fn new(stat: &zk::Stat, info: Option<NodeInfo>) -> Member {
        Member {
            czxid: stat.czxid,
            mzxid: stat.mzxid,
            info,
            peer: None,
            looking_up: false,
            warned: false,
        }
    }
}

/// Outcome of a registration attempt.
enum Registration {
    /// Our znode exists in our session; the watch fires when it changes or disappears.
    Done(EventFuture),
    /// Another agent holds our node id; the watch (if the znode still exists) fires when it goes.
    Conflict(Option<EventFuture>),
}

/// Per-session bookkeeping.
struct Session {
    connected: bool,
    registered: bool,
    /// First listing in this session: every member's data is read again (the data watches of
    /// an earlier session are gone).
    fresh: bool,
    need_mkdir: bool,
    need_register: bool,
    need_list: bool,
    reread: BTreeSet<String>,
    /// Next registration attempt while another agent holds our node id.
    register_at: Option<Instant>,
    /// No operations before this after an error.
    hold_until: Option<Instant>,
    errors: Backoff,
    error_logged: bool,
    children_watch: Option<EventFuture>,
    own_watch: Option<EventFuture>,
    member_watches: FuturesUnordered<MemberEventFuture>,
}

impl Session {
    fn new() -> Session {
        Session {
            connected: true,
            registered: false,
            fresh: true,
            need_mkdir: true,
            need_register: true,
            need_list: true,
            reread: BTreeSet::new(),
            register_at: None,
            hold_until: None,
            errors: Backoff::new(),
            error_logged: false,
            children_watch: None,
            own_watch: None,
            member_watches: FuturesUnordered::new(),
        }
    }

    fn register_due(&self, now: Instant) -> bool {
        self.need_register && self.register_at.is_none_or(|t| now >= t)
    }
}

struct Runner {
    opts: ZkOptions,
    servers: String,
    parent: String,
    me_path: String,
    data: Vec<u8>,
    peers: watch::Sender<PeerMap>,
    state: watch::Sender<ZkState>,
    /// Member znodes by name (ourselves excluded); survives sessions so that outages keep the
    /// last known map.
    members: BTreeMap<String, Member>,
    /// DNS lookups of member addresses, in the background so a slow resolver never holds up
    /// the rest of the map.
    lookups: FuturesUnordered<LookupFuture>,
    /// Next retry of unresolved member addresses.
    resolve_at: Option<Instant>,
    /// Since when ZooKeeper is out of reach (warned once per outage).
    outage: Option<Instant>,
    conflict_logged: Option<Instant>,
}

impl Runner {
    fn set_state(&self, s: ZkState) {
        self.state.send_if_modified(|cur| {
            if *cur == s {
                return false;
            }
            debug!(from = cur.as_str(), to = s.as_str(), "ZooKeeper state");
            *cur = s;
            true
        });
    }

    fn outage_begins(&mut self, what: std::fmt::Arguments<'_>) {
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            warn!(
                "{what}; keeping the last known {} peer(s) and retrying",
                self.peers.borrow().len()
            );
        } else {
            debug!("{what}");
        }
    }

    fn outage_ends(&mut self, how: std::fmt::Arguments<'_>) {
        if let Some(since) = self.outage.take() {
            info!(
                "ZooKeeper reachable again after {:.1?} ({how})",
                since.elapsed()
            );
        }
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            if *stop.borrow() {
                return;
            }
            // fail_eagerly: one pass over the servers per attempt; our loop owns the backoff.
            let connect = zk::Client::connector()
                .with_session_timeout(self.opts.session_timeout)
                .with_fail_eagerly()
                .connect(&self.servers);
            let client = tokio::select! {
                r = connect => r,
                () = stopped(stop) => return,
            };
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    let servers = self.servers.clone();
                    self.outage_begins(format_args!("cannot reach ZooKeeper {servers}: {e}"));
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                        () = stopped(stop) => return,
                    }
                }
            };
            backoff.reset();
            let id = client.session_id();
            info!(
                session = %id,
                timeout_ms = client.session_timeout().as_millis() as u64,
                "ZooKeeper session established"
            );
            self.outage_ends(format_args!("new session {id}"));
            match self.serve(&client, stop).await {
                End::Stop { registered } => {
                    self.leave(client, registered).await;
                    return;
                }
                End::Expired => {
                    self.set_state(ZkState::Expired);
                    // A new session is due at once: our znode is gone until we register again.
                    if self.outage.is_none() {
                        warn!(session = %id, "ZooKeeper session expired; registering again in a new session");
                    } else {
                        info!(session = %id, "ZooKeeper session expired during the outage");
                    }
                }
                End::Lost(why) => {
                    self.set_state(ZkState::Connecting);
                    warn!(session = %id, "ZooKeeper session ended ({why}); starting a new one");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = stopped(stop) => return,
                    }
                }
            }
        }
    }

    /// Serves one session until it ends.
    async fn serve(&mut self, client: &zk::Client, stop: &mut watch::Receiver<bool>) -> End {
        let mut states = client.state_watcher();
        let mut s = Session::new();
        loop {
            let now = Instant::now();
            let held = s.hold_until.is_some_and(|t| now < t);
            let resolve_due = self.resolve_at.is_some_and(|t| now >= t);
            let work = s.need_mkdir
                || s.register_due(now)
                || s.need_list
                || !s.reread.is_empty()
                || resolve_due;
            if s.connected && !held && work {
                s.hold_until = None;
                let r = tokio::select! {
                    r = self.work(client, &mut s, now) => r,
                    () = stopped(stop) => return End::Stop { registered: s.registered },
                };
                self.publish();
                match r {
                    Ok(()) => {
                        s.errors.reset();
                        s.error_logged = false;
                    }
                    Err(OpError { err, what }) => match err {
                        zk::Error::SessionExpired => return End::Expired,
                        zk::Error::ClientClosed | zk::Error::AuthFailed => {
                            return End::Lost(format!("{what}: {err}"));
                        }
                        zk::Error::ConnectionLoss => {
                            s.hold_until = Some(Instant::now() + CONNECTION_LOSS_HOLD);
                        }
                        err => {
                            // The member directory may have gone: redo the whole setup.
                            if err == zk::Error::NoNode {
                                s.need_mkdir = true;
                                s.need_register = true;
                                s.need_list = true;
                            }
                            let delay = s.errors.next_delay();
                            if s.error_logged {
                                debug!("ZooKeeper: {what}: {err}; retrying in {delay:.1?}");
                            } else {
                                s.error_logged = true;
                                warn!("ZooKeeper: {what}: {err}; retrying");
                            }
                            s.hold_until = Some(Instant::now() + delay);
                        }
                    },
                }
                continue;
            }
            // Timers only matter while connected (they lead to operations); a past one must
            // not wake us while disconnected, or this loop would spin.
            let wake = earliest([
                s.hold_until,
                s.register_at.filter(|_| s.need_register),
                self.resolve_at,
            ])
            .filter(|_| s.connected);
            tokio::select! {
                () = stopped(stop) => return End::Stop { registered: s.registered },
                st = states.changed() => match st {
                    SessionState::Disconnected => {
                        s.connected = false;
                        self.set_state(ZkState::Disconnected);
                        let id = client.session_id();
                        self.outage_begins(format_args!("lost the ZooKeeper connection (session {id}); reconnecting"));
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        s.connected = true;
                        // Watches are re-armed by the client, but re-list anyway: events of
                        // the disconnected time may be missing. Re-check our znode as well.
                        s.need_list = true;
                        s.need_register = true;
                        s.register_at = None;
                        self.outage_ends(format_args!("session {} resumed", client.session_id()));
                    }
                    SessionState::Expired => return End::Expired,
                    SessionState::Closed => return End::Lost("session closed".into()),
                    SessionState::AuthFailed => return End::Lost("authentication failed".into()),
                },
                ev = next_event(&mut s.children_watch) => {
                    s.children_watch = None;
                    match ev.event_type {
                        // Terminal session states arrive through `states` as well.
                        EventType::Session => {}
                        EventType::NodeDeleted => {
                            warn!(path = %self.parent, "the ZooKeeper member directory was deleted; creating it again");
                            s.need_mkdir = true;
                            s.need_register = true;
                            s.register_at = None;
                            s.need_list = true;
                        }
                        _ => s.need_list = true,
                    }
                }
                ev = next_event(&mut s.own_watch) => {
                    s.own_watch = None;
                    match ev.event_type {
                        EventType::Session => {}
                        EventType::NodeDeleted if s.registered => {
                            warn!(path = %self.me_path, "our znode was deleted while our session is alive; registering again");
                            s.registered = false;
                            s.need_register = true;
                            s.register_at = None;
                            self.set_state(ZkState::Connecting);
                        }
                        _ => {
                            // Data changed under us, or the conflicting znode changed/left.
                            s.need_register = true;
                            s.register_at = None;
                        }
                    }
                }
                Some((name, ev)) = s.member_watches.next(), if !s.member_watches.is_empty() => {
                    if ev.event_type != EventType::Session {
                        s.reread.insert(name);
                    }
                }
                Some((name, mzxid, addr)) = self.lookups.next(), if !self.lookups.is_empty() => {
                    self.looked_up(name, mzxid, addr);
                    self.publish();
                }
                () = sleep_opt(wake) => {}
            }
        }
    }

    /// Does what the session needs: directory, registration, listing, member reads, address
    /// retries.
    async fn work(
        &mut self,
        client: &zk::Client,
        s: &mut Session,
        now: Instant,
    ) -> Result<(), OpError> {
        if s.need_mkdir {
            client
                .mkdir(&self.parent, &PERSISTENT)
                .await
                .map_err(op_err(format!("creating {}", self.parent)))?;
            s.need_mkdir = false;
        }
        if s.register_due(now) {
            s.register_at = None;
            match self.register(client).await? {
                Registration::Done(watch) => {
                    s.own_watch = Some(watch);
                    s.need_register = false;
                    if !s.registered {
                        info!(path = %self.me_path, session = %client.session_id(), "registered in ZooKeeper");
                    }
                    s.registered = true;
                    self.conflict_logged = None;
                    self.set_state(ZkState::Registered);
                }
                Registration::Conflict(watch) => {
                    s.own_watch = watch;
                    s.registered = false;
                    s.register_at = Some(now + CONFLICT_RETRY);
                    self.set_state(ZkState::Connecting);
                }
            }
        }
        if s.need_list {
            let (names, _, watch) = client
                .get_and_watch_children(&self.parent)
                .await
                .map_err(op_err(format!("listing {}", self.parent)))?;
            s.children_watch = Some(Box::pin(watch.changed()));
            let names: BTreeSet<String> = names
                .into_iter()
                .filter(|n| *n != self.opts.me.node_id)
                .collect();
            self.members.retain(|n, _| names.contains(n));
            let to_read: Vec<String> = if s.fresh {
                names.into_iter().collect()
            } else {
                names
                    .into_iter()
                    .filter(|n| !self.members.contains_key(n))
                    .collect()
            };
            self.read_members(client, s, to_read).await?;
            s.need_list = false;
            s.fresh = false;
        }
        if !s.reread.is_empty() {
            let names: Vec<String> = s.reread.iter().cloned().collect();
            self.read_members(client, s, names).await?;
            s.reread.clear();
        }
        if self.resolve_at.is_some_and(|t| now >= t) {
            self.retry_unresolved();
        }
        Ok(())
    }

    /// Creates our ephemeral znode, taking over a stale one left by our previous incarnation.
    async fn register(&mut self, client: &zk::Client) -> Result<Registration, OpError> {
        let ours = client.session_id().0;
        let path = self.me_path.clone();
        let path = path.as_str();
        // A few rounds: each one either settles or reacts to a znode that changed under us.
        for _ in 0..5 {
            match client.create(path, &self.data, &EPHEMERAL).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(op_err(format!("creating {path}"))(e)),
            }
            let (data, stat) = match client.get_data(path).await {
                Ok(x) => x,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(op_err(format!("reading {path}"))(e)),
            };
            if stat.ephemeral_owner == ours {
                if data != self.data {
                    // Someone rewrote our registration: put ours back.
                    match client.set_data(path, &self.data, Some(stat.version)).await {
                        Ok(_) => {}
                        Err(zk::Error::BadVersion | zk::Error::NoNode) => continue,
                        Err(e) => return Err(op_err(format!("writing {path}"))(e)),
                    }
                }
                let (stat, watch) = client
                    .check_and_watch_stat(path)
                    .await
                    .map_err(op_err(format!("watching {path}")))?;
                if stat.is_some_and(|st| st.ephemeral_owner == ours) {
                    return Ok(Registration::Done(Box::pin(watch.changed())));
                }
                continue;
            }
            let theirs = NodeInfo::decode(data.as_slice()).ok();
            if theirs
                .as_ref()
                .is_some_and(|t| is_previous_incarnation(t, &self.opts.me))
            {
                info!(
                    path,
                    stale_session = format!("{:#x}", stat.ephemeral_owner),
                    "taking over the znode of our previous incarnation (same address and port)"
                );
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                    Err(e) => return Err(op_err(format!("deleting stale {path}"))(e)),
                }
            }
            self.report_conflict(stat.ephemeral_owner, theirs.as_ref());
            let (stat, watch) = client
                .check_and_watch_stat(path)
                .await
                .map_err(op_err(format!("watching {path}")))?;
            if stat.is_none() {
                continue;
            }
            return Ok(Registration::Conflict(Some(Box::pin(watch.changed()))));
        }
        // The znode keeps changing under us; try again later.
        Ok(Registration::Conflict(None))
    }

    fn report_conflict(&mut self, owner: i64, theirs: Option<&NodeInfo>) {
        let now = Instant::now();
        if self
            .conflict_logged
            .is_some_and(|t| now.duration_since(t) < CONFLICT_LOG_EVERY)
        {
            return;
        }
        self.conflict_logged = Some(now);
        let holder = match theirs {
            Some(t) => format!(
                "registered address {}:{}",
                bracket(&t.public_address),
                t.public_port
            ),
            None => "undecodable data".to_string(),
        };
        error!(
            path = %self.me_path,
            "node id {:?} is already registered in ZooKeeper by another agent (session {owner:#x}, {holder}); \
             set a unique MESHPROBE_NODE_ID. Not taking it over; retrying every {}s",
            self.opts.me.node_id,
            CONFLICT_RETRY.as_secs()
        );
    }

    /// Reads the given members (data + a data watch each) and updates `members`.
    async fn read_members(
        &mut self,
        client: &zk::Client,
        s: &mut Session,
        names: Vec<String>,
    ) -> Result<(), OpError> {
        if names.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = names
            .iter()
            .map(|n| format!("{}/{n}", self.parent))
            .collect();
        // All requests go out at once (the client sends on creation): one round trip.
        let results =
            futures::future::join_all(paths.iter().map(|p| client.get_and_watch_data(p))).await;
        for (name, r) in names.into_iter().zip(results) {
            let (data, stat, watch) = match r {
                Ok(x) => x,
                Err(zk::Error::NoNode) => {
                    self.members.remove(&name);
                    continue;
                }
                Err(e) => return Err(op_err(format!("reading member {name}"))(e)),
            };
            let n = name.clone();
            s.member_watches
                .push(Box::pin(async move { (n, watch.changed().await) }));
            if self
                .members
                .get(&name)
                .is_some_and(|m| m.czxid == stat.czxid && m.mzxid == stat.mzxid)
            {
                continue;
            }
            let info = match NodeInfo::decode(data.as_slice()) {
                Ok(info) => info,
                Err(e) => {
                    warn!(member = %name, "skipping ZooKeeper member {name:?}: its data is not a NodeInfo ({e})");
                    let mut m = Member::new(&stat, None);
                    m.warned = true;
                    self.members.insert(name, m);
                    continue;
                }
            };
            self.members
                .insert(name.clone(), Member::new(&stat, Some(info)));
            self.start_lookup(&name);
        }
        Ok(())
    }

    /// Resolves a member's address: at once for IP literals, else in the background.
    fn start_lookup(&mut self, name: &str) {
        let port = self.opts.default_port;
        let Some(m) = self.members.get_mut(name) else {
            return;
        };
        let Some(info) = m.info.as_ref() else {
            return;
        };
        match literal_addr(info, port) {
            Ok(Some(addr)) => m.peer = Some(peer_of(name, info, addr)),
            Ok(None) => {
                m.looking_up = true;
                let (host, mzxid, n) = (
                    info.public_address.trim().to_string(),
                    m.mzxid,
                    name.to_string(),
                );
                let port = effective_port(info, port).unwrap_or(port);
                self.lookups.push(Box::pin(
                    async move { (n, mzxid, lookup(&host, port).await) },
                ));
            }
            Err(why) => {
                let mzxid = m.mzxid;
                self.looked_up(name.to_string(), mzxid, Err(why));
            }
        }
    }

    /// Applies a lookup result (if the member did not change meanwhile).
    fn looked_up(&mut self, name: String, mzxid: i64, addr: Result<SocketAddr, String>) {
        let Some(m) = self.members.get_mut(&name) else {
            return;
        };
        if m.mzxid != mzxid {
            return;
        }
        m.looking_up = false;
        let Some(info) = m.info.as_ref() else {
            return;
        };
        match addr {
            Ok(addr) => {
                if m.warned {
                    info!(member = %name, %addr, "ZooKeeper member address resolved");
                    m.warned = false;
                }
                m.peer = Some(peer_of(&name, info, addr));
            }
            Err(why) => {
                if !m.warned {
                    m.warned = true;
                    warn!(member = %name, "skipping ZooKeeper member {name:?} for now: {why}; retrying every {}s", RESOLVE_RETRY.as_secs());
                } else {
                    debug!(member = %name, "still unusable: {why}");
                }
                m.peer = None;
                self.resolve_at
                    .get_or_insert(Instant::now() + RESOLVE_RETRY);
            }
        }
    }

    /// Looks up again the members whose address did not resolve.
    fn retry_unresolved(&mut self) {
        self.resolve_at = None;
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.peer.is_none() && m.info.is_some() && !m.looking_up)
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.start_lookup(&n);
        }
    }

    /// Publishes the current peer map if it changed.
    fn publish(&self) {
        let map: PeerMap = self
            .members
            .iter()
            .filter_map(|(n, m)| m.peer.clone().map(|p| (n.clone(), p)))
            .collect();
        self.peers.send_if_modified(|cur| {
            if *cur == map {
                return false;
            }
            let added = map.keys().filter(|k| !cur.contains_key(*k)).count();
            let removed = cur.keys().filter(|k| !map.contains_key(*k)).count();
            for (k, p) in &map {
                if cur.get(k) != Some(p) {
                    debug!(peer = %k, addr = %p.addr, "peer joined or changed");
                }
            }
            for k in cur.keys().filter(|k| !map.contains_key(*k)) {
                debug!(peer = %k, "peer left");
            }
            info!(
                peers = map.len(),
                added, removed, "ZooKeeper membership changed"
            );
            *cur = map;
            true
        });
    }

    /// Graceful leave: delete our znode (peers see us go at once), then close the session.
    async fn leave(&mut self, client: zk::Client, registered: bool) {
        let start = Instant::now();
        if registered {
            let ours = client.session_id().0;
            let path = self.me_path.as_str();
            let delete = async {
                let (_, stat) = client.get_data(path).await?;
                if stat.ephemeral_owner == ours {
                    client.delete(path, Some(stat.version)).await?;
                }
                Ok::<(), zk::Error>(())
            };
            match timeout(DELETE_BUDGET, delete).await {
                Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {
                    info!(path, "deregistered from ZooKeeper")
                }
                Ok(Err(e)) => warn!(path, "could not delete our znode on stop: {e}"),
                Err(_) => warn!(
                    path,
                    "deleting our znode on stop timed out; it goes when the session ends"
                ),
            }
        }
        let mut states = client.state_watcher();
        // The session closes when its last client handle is dropped.
        drop(client);
        let left = STOP_BUDGET.saturating_sub(start.elapsed());
        let closed = timeout(left, async {
            while !states.changed().await.is_terminated() {}
        })
        .await;
        if closed.is_err() {
            debug!("ZooKeeper session close not confirmed within {STOP_BUDGET:?}");
        }
    }
}

/// Is `theirs` (found at our znode, in another session) a leftover of an earlier run of this
/// agent? Same registered address and port, and not started after us (a newer process with the
/// same identity is a live twin: it wins, and we do not fight over the znode).
fn is_previous_incarnation(theirs: &NodeInfo, me: &NodeInfo) -> bool {
    if theirs.public_port != me.public_port
        || !same_host(&theirs.public_address, &me.public_address)
    {
        return false;
    }
    theirs.started_tai_ns == 0
        || me.started_tai_ns == 0
        || theirs.started_tai_ns <= me.started_tai_ns
}

fn same_host(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim();
        s.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s)
            .to_string()
    };
    let (a, b) = (strip(a), strip(b));
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(&b),
    }
}

fn peer_of(name: &str, info: &NodeInfo, addr: SocketAddr) -> Peer {
    Peer {
        node_id: name.to_string(),
        addr,
        zone: info.zone.clone(),
        rack: info.rack.clone(),
    }
}

fn effective_port(info: &NodeInfo, default_port: u16) -> Result<u16, String> {
    match info.public_port {
        0 => Ok(default_port),
        p => u16::try_from(p).map_err(|_| format!("public_port {p} is not a port")),
    }
}

/// A member's probe address when it registered an IP literal (`Ok(None)`: a DNS name).
fn literal_addr(info: &NodeInfo, default_port: u16) -> Result<Option<SocketAddr>, String> {
    let port = effective_port(info, default_port)?;
    let host = info.public_address.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("empty public_address".into());
    }
    Ok(host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port)))
}

async fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    match timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address")),
        Ok(Err(e)) => Err(format!("cannot resolve {host:?}: {e}")),
        Err(_) => Err(format!("resolving {host:?} timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(addr: &str, port: u32, started: u64) -> NodeInfo {
        NodeInfo {
            node_id: "n".into(),
            public_address: addr.into(),
            public_port: port,
            started_tai_ns: started,
            ..Default::default()
        }
    }

    #[test]
    fn previous_incarnation() {
        let me = info("198.18.0.1", 862, 200);
        assert!(is_previous_incarnation(&info("198.18.0.1", 862, 100), &me));
        assert!(is_previous_incarnation(&info("198.18.0.1", 862, 0), &me));
        assert!(!is_previous_incarnation(&info("198.18.0.1", 863, 100), &me));
        assert!(!is_previous_incarnation(&info("198.18.0.2", 862, 100), &me));
        // A newer process with our identity is a twin, not a leftover.
        assert!(!is_previous_incarnation(&info("198.18.0.1", 862, 300), &me));
        let me6 = info("fd00::1", 862, 0);
        assert!(is_previous_incarnation(&info("[fd00:0::1]", 862, 5), &me6));
        assert!(same_host("Host.Example", "host.example"));
    }

    #[tokio::test]
    async fn member_addresses() {
        let a = literal_addr(&info("198.18.0.7", 0, 0), 862).unwrap();
        assert_eq!(a, Some("198.18.0.7:862".parse().unwrap()));
        let a = literal_addr(&info("[fd00::7]", 900, 0), 862).unwrap();
        assert_eq!(a, Some("[fd00::7]:900".parse().unwrap()));
        let a = literal_addr(&info(" fd00::8 ", 900, 0), 862).unwrap();
        assert_eq!(a, Some("[fd00::8]:900".parse().unwrap()));
        assert_eq!(literal_addr(&info("localhost", 901, 0), 862), Ok(None));
        let a = lookup("localhost", 901).await.unwrap();
        assert!(a.ip().is_loopback() && a.port() == 901);
        assert!(literal_addr(&info("", 1, 0), 862).is_err());
        assert!(literal_addr(&info("1.2.3.4", 70000, 0), 862).is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let d: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        assert!(d[0] <= BACKOFF_START && d[0] >= BACKOFF_START.mul_f64(0.8));
        assert!(d[1] <= Duration::from_secs(1));
        assert!(d[6] <= BACKOFF_CAP && d[6] >= BACKOFF_CAP.mul_f64(0.8));
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
    }

    #[test]
    fn run_zk_is_send() {
        fn send<T: Send>(_: &T) {}
        let (p, _) = watch::channel(PeerMap::new());
        let (s, _) = watch::channel(ZkState::Connecting);
        let (_, stop) = watch::channel(false);
        let opts = ZkOptions {
            servers: "198.18.0.1".into(),
            root_path: "mp".into(),
            heartbeat_path: "hb".into(),
            session_timeout: Duration::from_secs(1),
            me: info("198.18.0.1", 862, 0),
            default_port: 862,
        };
        send(&run_zk(opts, p, s, stop));
    }
}
