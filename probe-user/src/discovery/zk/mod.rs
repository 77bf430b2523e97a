//! ZooKeeper membership at constant cost per change: register ourselves (registration znode and
//! topology index entry, one transaction), follow everybody through the index.
//!
//! One loop owns one ZooKeeper session at a time. Membership comes from the topology index
//! ([`layout`]): at start one listing of the topology root and one per zone directory (names
//! only: no member's data is read), then the events of ONE persistent recursive watch on the
//! topology root (ZooKeeper 3.6+), each a join or a leave applied without any read. So a change
//! costs every agent one event, whatever the size of the cluster.
//!
//! Persistent watches do not replay the events of a disconnection: after a reconnection or in a
//! new session the watch is added again at once and the index re-synchronised after a random
//! delay ([`RESYNC_JITTER_MAX`], at most half the session timeout), listing again only the zone
//! directories whose children changed since we last listed them. The delay spreads the reads of
//! a whole fleet that lost its ZooKeeper at once (a restart of it, an expiry of every session).
//!
//! A failed operation is retried after a short hold. The peer map only changes on
//! authoritative answers from ZooKeeper, so an outage keeps the last known map.

mod access;
mod auth;
mod index;
mod register;
mod resolve;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
pub use index::{Rejected, RejectedLabel};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};
use zookeeper_client::{self as zk, AddWatchMode, EventType, SessionState, WatchedEvent};

pub use self::auth::ZkAuth;
pub(super) use self::auth::validate as validate_auth;

use self::access::Access;
use self::index::{Applied, Index, Key, ZoneVersion};
use self::register::Registration;
use super::layout;
use super::syntax::{member_parent_path, normalize_servers};
use super::{DiscoveryError, PeerMap, ZkOptions, ZkState, validate_zk};

/// New-session backoff: first delay, doubling up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Retry of a registration blocked by another agent with our node id.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(5);
/// Repeat of the node-id conflict error while it lasts.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Retry of member addresses that did not resolve.
const RESOLVE_RETRY: Duration = Duration::from_secs(30);
/// Graceful leave: deleting our znodes, then closing the session, within this in total.
pub const STOP_BUDGET: Duration = Duration::from_secs(2);
const DELETE_BUDGET: Duration = Duration::from_millis(1500);
/// Hold after an operation lost its connection (the session reconnects by itself).
const CONNECTION_LOSS_HOLD: Duration = Duration::from_millis(200);
/// Re-synchronisation after a reconnection or in a new session waits a uniform random delay in
/// 0..min(this, session timeout / 2): a fleet that lost ZooKeeper together does not read it
/// together (the watch is back at once, so only what changed meanwhile waits).
pub const RESYNC_JITTER_MAX: Duration = Duration::from_secs(5);
/// Watch events applied before the peer map is published (a burst is published once).
const EVENT_BATCH: usize = 4096;
/// Repeat of the error about refused credentials while it lasts.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(60);

type EventFuture = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;
/// A DNS lookup of a member's address: (its entry, result).
type LookupFuture = Pin<Box<dyn Future<Output = (Key, Result<SocketAddr, String>)> + Send>>;

/// Membership metrics; cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct ZkMetrics {
    /// Other members in the topology index (distinct node ids, ourselves excluded).
    pub members: Gauge,
    /// Join and leave events of the topology index applied.
    pub events: Counter,
    /// Members not probed, by reason (see [`admit`](crate::discovery::admit)).
    pub rejected: Rejected,
}

impl ZkMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "meshprobe_zookeeper_members",
            "Other members in the ZooKeeper topology index (node ids, ourselves excluded)",
            self.members.clone(),
        );
        registry.register(
            "meshprobe_zookeeper_events",
            "Join and leave events of the ZooKeeper topology index applied",
            self.events.clone(),
        );
        registry.register(
            "meshprobe_zookeeper_members_rejected",
            "ZooKeeper members not probed, by reason (each counted once while it is registered)",
            self.rejected.clone(),
        );
    }
}

/// Runs the ZooKeeper membership until `stop` becomes true (or its sender is dropped):
/// connects, creates the member directory `/<root>/<heartbeat>` and our zone's directory in the
/// topology index (persistent, idempotent), registers (one transaction: the ephemeral
/// `/<root>/<heartbeat>/<node_id>` holding `me` as protobuf, and our ephemeral index entry),
/// follows the index, and publishes the peer map (all members but ourselves) on `peers` and our
/// state on `state`.
///
/// ZooKeeper being unreachable (also at start), connection loss and session expiry are not
/// errors: the last known peer map stays published, the session reconnects (the client's own
/// retries while the session lives; new sessions with a 0.5 s to 5 s backoff, forever), and we
/// register again. On stop our znodes are deleted first, then the session closed (about 2 s at
/// most). Errors are returned only for invalid options (see [`validate_zk`]).
pub async fn run_zk(
    opts: ZkOptions,
    peers: watch::Sender<PeerMap>,
    state: watch::Sender<ZkState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DiscoveryError> {
    validate_zk(&opts)?;
    let parent = member_parent_path(&opts.root_path, &opts.heartbeat_path)?;
    let topology = layout::topology_root(&parent);
    match &opts.auth {
        Some(a) => info!(
            "ZooKeeper membership authenticated by SASL DIGEST-MD5 ({}); our znodes are \
             writable by sasl:{} only",
            a.describe(),
            a.username
        ),
        None => warn!(
            "ZooKeeper membership is UNAUTHENTICATED: our znodes are world-writable, so any \
             client that reaches ZooKeeper can add, change or delete members; set \
             ZK_SASL_USERNAME and ZK_SASL_PASSWORD_FILE"
        ),
    }
    let mut runner = Runner {
        access: Access::of(opts.auth.as_ref()),
        auth_failed_logged: None,
        servers: normalize_servers(&opts.servers)?,
        reg: layout::registration(&parent, &opts.me),
        zone_dir: layout::zone_path(&topology, &opts.me.zone),
        index: Index::new(
            topology,
            opts.me.node_id.clone(),
            opts.default_port,
            opts.policy.clone(),
            opts.metrics.rejected.clone(),
        ),
        parent,
        opts,
        peers,
        state,
        lookups: FuturesUnordered::new(),
        resolve_at: None,
        outage: None,
        conflict_logged: None,
        synced: false,
        count_warned: None,
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

async fn next_index_event(w: &mut Option<zk::PersistentWatcher>) -> WatchedEvent {
    match w {
        Some(w) => w.changed().await,
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

/// The re-synchronisation delay: uniform in 0..min([`RESYNC_JITTER_MAX`], session timeout / 2).
fn resync_delay(session_timeout: Duration) -> Duration {
    RESYNC_JITTER_MAX
        .min(session_timeout / 2)
        .mul_f64(rand::random_range(0.0..1.0))
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

/// Per-session bookkeeping.
struct Session {
    connected: bool,
    registered: bool,
    need_mkdir: bool,
    /// (Re-)add the persistent recursive watch on the topology root.
    need_watch: bool,
    need_register: bool,
    need_sync: bool,
    /// No re-synchronisation before this (the jitter).
    sync_at: Option<Instant>,
    /// Next registration attempt while another agent holds our node id.
    register_at: Option<Instant>,
    /// No operations before this after an error.
    hold_until: Option<Instant>,
    errors: Backoff,
    error_logged: bool,
    index_watch: Option<zk::PersistentWatcher>,
    own_watch: Option<EventFuture>,
}

impl Session {
    fn new(sync_at: Option<Instant>) -> Session {
        Session {
            connected: true,
            registered: false,
            need_mkdir: true,
            need_watch: true,
            need_register: true,
            need_sync: true,
            sync_at,
            register_at: None,
            hold_until: None,
            errors: Backoff::new(),
            error_logged: false,
            index_watch: None,
            own_watch: None,
        }
    }

    fn register_due(&self, now: Instant) -> bool {
        self.need_register && self.register_at.is_none_or(|t| now >= t)
    }

    fn sync_due(&self, now: Instant) -> bool {
        self.need_sync && self.sync_at.is_none_or(|t| now >= t)
    }

    /// Start over: directories, watch, registration, a full re-synchronisation now.
    fn redo_all(&mut self) {
        self.need_mkdir = true;
        self.need_watch = true;
        self.need_register = true;
        self.register_at = None;
        self.need_sync = true;
        self.sync_at = None;
    }
}

struct Runner {
    opts: ZkOptions,
    /// The ACLs of every znode we create.
    access: Access,
    /// Since when our credentials are refused (error repeated every [`AUTH_LOG_EVERY`]).
    auth_failed_logged: Option<Instant>,
    servers: String,
    /// `/<root>/<heartbeat>`.
    parent: String,
    /// Our registration and index entry.
    reg: layout::Registration,
    /// Our zone's directory in the index.
    zone_dir: String,
    /// What we know of the index; survives sessions so that outages keep the last known map.
    index: Index,
    peers: watch::Sender<PeerMap>,
    state: watch::Sender<ZkState>,
    /// DNS lookups of member addresses, in the background so a slow resolver never holds up
    /// the rest of the map.
    lookups: FuturesUnordered<LookupFuture>,
    /// Next retry of unresolved member addresses.
    resolve_at: Option<Instant>,
    /// Since when ZooKeeper is out of reach (warned once per outage).
    outage: Option<Instant>,
    conflict_logged: Option<Instant>,
    /// The index was listed once: later syncs are re-synchronisations (jittered).
    synced: bool,
    /// (registrations, index entries) last warned about.
    count_warned: Option<(usize, usize)>,
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

    /// ZooKeeper refused our credentials: as loud as a configuration error (it is one), but
    /// retried like an outage, since a server or the Secret may be fixed meanwhile.
    fn auth_refused(&mut self) {
        self.set_state(ZkState::Connecting);
        let now = Instant::now();
        if self
            .auth_failed_logged
            .is_some_and(|t| now.duration_since(t) < AUTH_LOG_EVERY)
        {
            debug!("ZooKeeper refused our credentials again");
            return;
        }
        self.auth_failed_logged = Some(now);
        let auth = self.opts.auth.as_ref().map_or_else(
            || "no credentials configured; the server requires SASL: set ZK_SASL_USERNAME and ZK_SASL_PASSWORD_FILE".to_string(),
            |a| format!("{}: check both against the user_<name> entries of the server's JAAS Server section", a.describe()),
        );
        error!(
            "ZooKeeper {} refused our authentication ({auth}); not registered, retrying every \
             {}s at most",
            self.servers,
            BACKOFF_CAP.as_secs()
        );
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

    /// When the next re-synchronisation may start (now for the first listing).
    fn resync_at(&self, client: &zk::Client) -> Option<Instant> {
        self.synced
            .then(|| Instant::now() + resync_delay(client.session_timeout()))
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let connect = match auth::connector(self.opts.session_timeout, self.opts.auth.as_ref())
            {
                Ok(c) => c.connect(&self.servers),
                Err(e) => {
                    // The password file went away (a Secret being replaced?): keep trying.
                    error!("cannot authenticate to ZooKeeper: {e}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                        () = stopped(stop) => return,
                    }
                }
            };
            let client = tokio::select! {
                r = connect => r,
                () = stopped(stop) => return,
            };
            let client = match client {
                Ok(c) => c,
                Err(zk::Error::AuthFailed) => {
                    self.auth_refused();
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                        () = stopped(stop) => return,
                    }
                }
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
            if self.auth_failed_logged.take().is_some() {
                info!("ZooKeeper accepted our credentials");
            }
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
                    // A new session is due at once: our znodes are gone until we register again.
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
        let mut s = Session::new(self.resync_at(client));
        loop {
            let now = Instant::now();
            let held = s.hold_until.is_some_and(|t| now < t);
            let resolve_due = self.resolve_at.is_some_and(|t| now >= t);
            let work = s.need_mkdir
                || s.need_watch
                || s.register_due(now)
                || s.sync_due(now)
                || resolve_due;
            if s.connected && !held && work {
                s.hold_until = None;
                let r = tokio::select! {
                    r = self.work(client, &mut s, now) => r,
                    () = stopped(stop) => return End::Stop { registered: s.registered },
                };
                self.start_lookups();
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
                            // A directory may have gone: redo the whole setup.
                            if err == zk::Error::NoNode {
                                s.redo_all();
                            }
                            let delay = s.errors.next_delay();
                            if s.error_logged {
                                debug!("ZooKeeper: {what}: {err}; retrying in {delay:.1?}");
                            } else if err == zk::Error::NoAuth {
                                s.error_logged = true;
                                error!(
                                    "ZooKeeper: {what}: {err}: {}; retrying",
                                    self.access.no_auth_hint()
                                );
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
                s.sync_at.filter(|_| s.need_sync),
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
                        // Events of the disconnected time are lost for a persistent watch (and
                        // the client may not set it again): add it again now, re-synchronise
                        // after the jitter. Re-check our registration as well.
                        s.need_watch = true;
                        s.need_sync = true;
                        s.sync_at = self.resync_at(client);
                        s.need_register = true;
                        s.register_at = None;
                        self.outage_ends(format_args!("session {} resumed", client.session_id()));
                    }
                    SessionState::Expired => return End::Expired,
                    SessionState::Closed => return End::Lost("session closed".into()),
                    SessionState::AuthFailed => return End::Lost("authentication failed".into()),
                },
                ev = next_index_event(&mut s.index_watch) => {
                    let mut changed = self.on_index_event(&mut s, ev);
                    // Apply what else is there before publishing once.
                    for _ in 0..EVENT_BATCH {
                        let Some(ev) = s.index_watch.as_mut().and_then(|w| w.changed().now_or_never()) else {
                            break;
                        };
                        changed |= self.on_index_event(&mut s, ev);
                    }
                    if changed {
                        self.start_lookups();
                        self.publish();
                    }
                }
                ev = next_event(&mut s.own_watch) => {
                    s.own_watch = None;
                    match ev.event_type {
                        EventType::Session => {}
                        EventType::NodeDeleted if s.registered => {
                            warn!(path = %self.reg.path, "our registration was deleted while our session is alive; registering again");
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
                Some((key, addr)) = self.lookups.next(), if !self.lookups.is_empty() => {
                    if !self.index.looked_up(&key, addr) {
                        self.resolve_at.get_or_insert(Instant::now() + RESOLVE_RETRY);
                    }
                    self.publish();
                }
                () = sleep_opt(wake) => {}
            }
        }
    }

    /// Applies one event of the index watch; returns whether the index changed.
    fn on_index_event(&mut self, s: &mut Session, ev: WatchedEvent) -> bool {
        if ev.event_type == EventType::Session {
            // The state watcher handles the session; after a terminal state the watcher
            // must not be polled again.
            if ev.session_state.is_terminated() {
                s.index_watch = None;
            }
            return false;
        }
        match self.index.apply(ev.event_type, &ev.path) {
            Applied::Nothing => {}
            Applied::Changed => {
                self.opts.metrics.events.inc();
            }
            Applied::RootDeleted => {
                warn!(path = %self.index.root(), "the ZooKeeper topology index was deleted; creating it again");
                s.redo_all();
                s.registered = false;
                self.set_state(ZkState::Connecting);
                return false;
            }
        }
        if ev.event_type == EventType::NodeDeleted && ev.path == self.reg.entry && s.registered {
            warn!(path = %self.reg.entry, "our topology index entry was deleted while our session is alive; creating it again");
            s.need_register = true;
            s.register_at = None;
        }
        true
    }

    /// Does what the session needs: directories, watch, registration, (re-)synchronisation,
    /// address retries.
    async fn work(
        &mut self,
        client: &zk::Client,
        s: &mut Session,
        now: Instant,
    ) -> Result<(), OpError> {
        if s.need_mkdir {
            for dir in [&self.parent, &self.zone_dir] {
                client
                    .mkdir(dir, &self.access.persistent())
                    .await
                    .map_err(op_err(format!("creating {dir}")))?;
            }
            // The directories whose CREATE and DELETE rights say who may join or leave.
            for dir in [&self.parent, self.index.root(), &self.zone_dir] {
                self.access
                    .secure(client, dir)
                    .await
                    .map_err(op_err(format!("checking the ACL of {dir}")))?;
            }
            s.need_mkdir = false;
        }
        if s.need_watch {
            let root = self.index.root();
            let w = client
                .watch(root, AddWatchMode::PersistentRecursive)
                .await
                .map_err(op_err(format!("watching {root}")))?;
            // The new watcher first, then the old one goes: the client keeps the server's watch.
            let _old = s.index_watch.replace(w);
            s.need_watch = false;
        }
        if s.register_due(now) {
            s.register_at = None;
            match self.register(client).await? {
                Registration::Done(watch) => {
                    s.own_watch = Some(watch);
                    s.need_register = false;
                    if !s.registered {
                        info!(path = %self.reg.path, entry = %self.reg.entry, session = %client.session_id(), "registered in ZooKeeper");
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
        if s.sync_due(now) {
            self.sync(client).await?;
            s.need_sync = false;
            s.sync_at = None;
            if s.registered && !self.index.contains_path(&self.reg.entry) {
                // Deleted while we were not watching.
                s.need_register = true;
            }
        }
        if self.resolve_at.is_some_and(|t| now >= t) {
            self.resolve_at = None;
            self.index.retry_failed();
        }
        Ok(())
    }

    /// Lists the topology root, then the zone directories never listed or whose children
    /// changed since we listed them (one stat each, all at once); compares the member count
    /// with the registrations.
    async fn sync(&mut self, client: &zk::Client) -> Result<(), OpError> {
        let root = self.index.root().to_string();
        let (dirs, _) = client
            .get_children(&root)
            .await
            .map_err(op_err(format!("listing {root}")))?;
        let dirs = self.index.set_zone_dirs(dirs);
        let path = |d: &str| format!("{root}/{d}");
        // All requests of a step go out at once (the client sends on creation): one round trip.
        let known: Vec<&String> = dirs
            .iter()
            .filter(|d| self.index.version(d).is_some())
            .collect();
        let stats =
            futures::future::join_all(known.iter().map(|d| client.check_stat(&path(d)))).await;
        let mut to_list: Vec<String> = dirs
            .iter()
            .filter(|d| self.index.version(d).is_none())
            .cloned()
            .collect();
        for (d, r) in known.into_iter().zip(stats) {
            match r {
                Ok(Some(st)) if self.index.version(d) == Some(ZoneVersion::of(&st)) => {}
                Ok(_) => to_list.push(d.clone()),
                Err(e) => return Err(op_err(format!("reading {}", path(d)))(e)),
            }
        }
        let listings =
            futures::future::join_all(to_list.iter().map(|d| client.get_children(&path(d)))).await;
        let (listed, skipped) = (to_list.len(), dirs.len() - to_list.len());
        for (d, r) in to_list.into_iter().zip(listings) {
            match r {
                Ok((names, st)) => {
                    self.index.set_listing(&d, names, ZoneVersion::of(&st));
                }
                Err(zk::Error::NoNode) => {
                    self.index.remove_zone(&d);
                }
                Err(e) => return Err(op_err(format!("listing {}", path(&d)))(e)),
            }
        }
        // Members registered without an index entry (agents of an older version) are not
        // seen here: one stat tells whether there are any.
        let registrations = client
            .check_stat(&self.parent)
            .await
            .map_err(op_err(format!("reading {}", self.parent)))?
            .map_or(0, |st| st.num_children.max(0) as usize);
        self.compare_counts(registrations);
        debug!(
            zones = dirs.len(),
            listed,
            unchanged = skipped,
            members = self.index.members(),
            "ZooKeeper topology index synchronised"
        );
        self.synced = true;
        Ok(())
    }

    fn compare_counts(&mut self, registrations: usize) {
        let indexed = self.index.node_ids();
        if registrations == indexed {
            self.count_warned = None;
            return;
        }
        if self.count_warned == Some((registrations, indexed)) {
            return;
        }
        self.count_warned = Some((registrations, indexed));
        warn!(
            registrations,
            indexed,
            "{} holds {registrations} registration(s) but the topology index {} has {indexed} \
             member(s): members registered without an index entry (agents of a version before \
             the index, or foreign znodes) are NOT probed; upgrade them",
            self.parent,
            self.index.root()
        );
    }

    /// Starts the DNS lookups the index asks for.
    fn start_lookups(&mut self) {
        for (key, host, port) in self.index.take_lookups() {
            self.lookups.push(Box::pin(async move {
                let r = resolve::lookup(&host, port).await;
                (key, r)
            }));
        }
    }

    /// Publishes the current peer map if it changed.
    fn publish(&self) {
        self.opts.metrics.members.set(self.index.members() as i64);
        let map = self.index.peers();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::NodeInfo;

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
    fn resync_jitter_is_bounded_by_the_session_timeout() {
        for _ in 0..1000 {
            assert!(resync_delay(Duration::from_secs(4)) < Duration::from_secs(2));
            assert!(resync_delay(Duration::from_secs(60)) < RESYNC_JITTER_MAX);
        }
        let spread: Vec<Duration> = (0..100)
            .map(|_| resync_delay(Duration::from_secs(60)))
            .collect();
        assert!(spread.iter().any(|d| *d < RESYNC_JITTER_MAX / 2));
        assert!(spread.iter().any(|d| *d > RESYNC_JITTER_MAX / 2));
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
            me: NodeInfo {
                node_id: "n".into(),
                public_address: "198.18.0.1".into(),
                ..Default::default()
            },
            default_port: 862,
            policy: crate::discovery::admit::MemberPolicy::any_network(),
            metrics: ZkMetrics::default(),
            auth: None,
        };
        send(&run_zk(opts, p, s, stop));
    }
}
