//! Spawn: the built agent's tasks, each in a tracing span named for it. The reflector answers
//! first (peers may probe us as soon as we register), then discovery, the pinglist, the admin
//! server and the prober; `ready` is announced in between, as before.
use std::sync::{Arc, atomic::Ordering};

use anyhow::Result;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{Instrument as _, info, info_span};

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use tokio::net::TcpListener;

use super::{
    App, Config,
    admin::{self, AdminMetrics, Health},
    dedicated::{self, Dedicated},
    pinglist::{self, PinglistMetrics, PinglistView},
    prober::{self, ProberError},
};
use crate::{
    discovery::{self, DiscoveryError, PeerMap, ZkOptions, ZkState},
    probe::{Stamping, reflector::ReflectorStats},
    sink::{OutputFormat, Sinks, json::emit_json},
};

/// A running task and the switch that stops it.
pub(super) struct Task<J> {
    pub stop: watch::Sender<bool>,
    pub join: J,
}

impl<J> Task<J> {
    fn new(make: impl FnOnce(watch::Receiver<bool>) -> J) -> Task<J> {
        let (stop, rx) = watch::channel(false);
        Task {
            stop,
            join: make(rx),
        }
    }
}

/// The running agent: what [`Running::drain`](super::drain) stops, in order.
pub struct Running {
    pub(super) discovery: Option<Task<JoinHandle<Result<(), DiscoveryError>>>>,
    pub(super) prober: Task<Dedicated<Result<(), ProberError>>>,
    pub(super) reflector: Task<Dedicated<Option<ReflectorStats>>>,
    pub(super) admin: Option<Task<JoinHandle<std::io::Result<()>>>>,
    pub(super) health: Arc<Health>,
    pub(super) sinks: Arc<Sinks>,
    /// Holds the eBPF collector's handle on the programs until the end.
    pub(super) registry: Arc<Registry>,
    pub(super) st: Stamping,
    pub(super) grace: std::time::Duration,
    /// The probe timeout: how long peers' last probes may still arrive after we leave.
    pub(super) probe_timeout: std::time::Duration,
}

/// JSON output: the pinglist changed (`GET /pinglist` has the list).
#[derive(Serialize)]
struct PinglistChanged<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    node_id: &'a str,
    members: usize,
    peers: usize,
    trimmed: usize,
}

#[derive(Serialize)]
struct Ready<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    node_id: &'a str,
    listen: String,
    timestamping: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_clock: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: Option<&'static str>,
    interfaces: Vec<String>,
    admin: Option<String>,
    instance: &'a str,
}

impl App {
    /// Starts every task. Only starting the prober's thread can fail here.
    pub fn spawn(self) -> Result<Running> {
        let App {
            config: c,
            instance,
            st,
            admin_listener,
            metrics: m,
            sinks,
            members,
            members_rx,
            reflector: r,
        } = self;
        let _ = r.go.send(());
        m.health.reflector.store(true, Ordering::Relaxed);
        let reflector = Task {
            stop: r.stop,
            join: r.task,
        };
        let discovery = c.discovery.zk.clone().map(|zk| {
            let statics = &c.discovery.static_peers;
            spawn_zk(zk, &st, &m.health, m.zk_state, statics, members)
        }); // without ZooKeeper `members` is dropped: the static peers are the membership

        // Pinglist: who of the members the prober probes.
        let json = c.output.format == OutputFormat::Json;
        let changed = on_pinglist_change(m.pinglist, json);
        let lists = pinglist::spawn(me(&c), c.pinglist, members_rx, changed.clone());

        let admin_addr = admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        let admin = admin_listener.map(|l| {
            let (registry, health, view) = (m.registry.clone(), m.health.clone(), &lists.view);
            spawn_admin(l, registry, health, view.clone(), m.admin)
        });
        if json {
            emit_json(&Ready {
                kind: "ready",
                role: "agent",
                node_id: &c.node.id,
                listen: c.reflector.listen.to_string(),
                timestamping: st.label(),
                kernel_clock: st.kernel_clock(),
                handoff: st.handoff(),
                interfaces: st.interfaces(),
                admin: admin_addr.clone(),
                instance: &instance,
            });
        }
        changed(&lists.view.borrow());

        let opts = prober_options(&c, instance);
        let prober = prober::Prober::new(opts, st.clone(), sinks.clone(), m.probe)
            .with_zone_sizes(lists.zone_sizes);
        let prober = spawn_prober(prober, lists.probed)?;
        m.health.prober.store(true, Ordering::Relaxed);

        info!(
            "agent {} ready: reflecting on {}, {}, admin {}",
            c.node.id,
            c.reflector.listen,
            match &c.discovery.zk {
                Some(z) => format!("ZooKeeper {}", z.servers),
                None => format!("{} static peers", c.discovery.static_peers.len()),
            },
            admin_addr.as_deref().unwrap_or("off")
        );
        Ok(Running {
            discovery,
            prober,
            reflector,
            admin,
            health: m.health,
            sinks,
            registry: m.registry,
            st,
            grace: c.shutdown_grace,
            probe_timeout: c.probing.timeout,
        })
    }
}

/// Who the pinglist is computed for.
fn me(c: &Config) -> pinglist::Me {
    pinglist::Me {
        node_id: c.node.id.clone(),
        place: crate::pinglist::Place {
            zone: c.node.zone.clone(),
            rack: c.node.rack.clone(),
        },
    }
}

fn prober_options(c: &Config, instance: String) -> prober::ProberOptions {
    prober::ProberOptions {
        node_id: c.node.id.clone(),
        zone: c.node.zone.clone(),
        interval: c.probing.interval,
        jitter_pct: c.probing.jitter_pct,
        timeout: c.probing.timeout,
        sizes: c.probing.sizes.clone(),
        window: c.probing.window,
        grace: c.probing.peer_grace,
        instance,
        json_events: c.output.format == OutputFormat::Json,
        auth: c.stamp_auth.sender.clone(),
    }
}

/// ZooKeeper membership: registration and discovery, the union with the static peers, and
/// its state in /readyz and /metrics.
fn spawn_zk(
    mut zk: ZkOptions,
    st: &Stamping,
    health: &Arc<Health>,
    zk_state: Gauge<i64>,
    statics: &PeerMap,
    members: watch::Sender<PeerMap>,
) -> Task<JoinHandle<Result<(), DiscoveryError>>> {
    if st.is_kernel() {
        zk.me.capabilities.push("kernel-timestamps".into());
    }
    health.zookeeper_required.store(true, Ordering::Relaxed);
    health.set_zookeeper(Some(format!("connecting to {}", zk.servers)));
    let (state_tx, state_rx) = watch::channel(ZkState::Connecting);
    let zk_peers = if statics.is_empty() {
        // The membership is ZooKeeper's map itself: no second copy of every member.
        members
    } else {
        merge_static(statics.clone(), members)
    };
    let servers = zk.servers.clone();
    let task = Task::new(|stop| {
        let run = discovery::run_zk(zk, zk_peers, state_tx, stop);
        tokio::spawn(run.instrument(info_span!("discovery")))
    });
    let follow = follow_zk_state(state_rx, zk_state, health.clone(), servers);
    tokio::spawn(follow.instrument(info_span!("zookeeper_state")));
    task
}

/// Static peers ∪ ZooKeeper members (ZooKeeper's entry wins on a shared id): returns the
/// sender discovery feeds.
fn merge_static(statics: PeerMap, members: watch::Sender<PeerMap>) -> watch::Sender<PeerMap> {
    let (zk_peers_tx, mut zk_peers_rx) = watch::channel(PeerMap::new());
    let merge = async move {
        while zk_peers_rx.changed().await.is_ok() {
            // A clone of ZooKeeper's map keeps its compact nodes (inserting 10 000 members one
            // by one leaves half-full ones); the static peers go in after.
            let mut m = zk_peers_rx.borrow_and_update().clone();
            for (id, p) in &statics {
                m.entry(id.clone()).or_insert_with(|| p.clone());
            }
            if members.send(m).is_err() {
                break;
            }
        }
    };
    tokio::spawn(merge.instrument(info_span!("membership")));
    zk_peers_tx
}

/// Mirrors the ZooKeeper state into the gauge and /readyz.
async fn follow_zk_state(
    mut state: watch::Receiver<ZkState>,
    gauge: Gauge<i64>,
    health: Arc<Health>,
    servers: String,
) {
    loop {
        let s = *state.borrow_and_update();
        gauge.set(s.as_i64());
        health.set_zookeeper(match s {
            ZkState::Registered => None,
            other => Some(format!("{} ({servers})", other.as_str())),
        });
        if state.changed().await.is_err() {
            break;
        }
    }
}

/// What a new pinglist does: the metrics, and a JSON line when the output is JSON.
fn on_pinglist_change(
    metrics: PinglistMetrics,
    json: bool,
) -> impl Fn(&PinglistView) + Clone + Send + 'static {
    move |v: &PinglistView| {
        metrics.observe(v);
        if json {
            emit_json(&PinglistChanged {
                kind: "pinglist",
                node_id: &v.node_id,
                members: v.members,
                peers: v.peers.len(),
                trimmed: v.trimmed,
            });
        }
    }
}

fn spawn_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    view: watch::Receiver<Arc<PinglistView>>,
    metrics: AdminMetrics,
) -> Task<JoinHandle<std::io::Result<()>>> {
    Task::new(|stop| {
        let limits = admin::Limits::default();
        let serve = admin::serve(listener, registry, health, view, limits, metrics, stop);
        tokio::spawn(serve.instrument(info_span!("admin")))
    })
}

/// The prober on its own thread.
fn spawn_prober(
    prober: prober::Prober,
    probed: watch::Receiver<PeerMap>,
) -> Result<Task<Dedicated<Result<(), ProberError>>>> {
    let (stop, stop_rx) = watch::channel(false);
    let join = dedicated::spawn("prober", move || {
        prober.run(probed, stop_rx).instrument(info_span!("prober"))
    })?;
    Ok(Task { stop, join })
}
