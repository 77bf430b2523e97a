//! Build: everything that can fail, before anything runs. The admin port is bound, the TC
//! programs attached, the metrics registered, the Kafka producer created and the reflector
//! socket bound; a failure here stops the start before `ready`.
use std::{borrow::Cow, sync::Arc};

use anyhow::{Context as _, Result};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use rand::Rng as _;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};
use tracing::{Instrument as _, info, info_span, warn};

use super::{
    Config,
    admin::{self, AdminMetrics, Health},
    dedicated::{self, Dedicated},
    metrics::{EbpfCollector, ProbeMetrics},
    pinglist::PinglistMetrics,
};
use crate::{
    cli::error::ConfigError,
    discovery::PeerMap,
    net,
    probe::{
        Stamping,
        policy::PolicyConfig,
        reflector::{self, LiveCounters, ReflectorOptions, ReflectorStats},
    },
    sink::{KafkaSink, Sinks, StdoutSink},
};

/// A built agent: every resource held, no task started yet. [`App::spawn`] starts them.
pub struct App {
    pub(super) config: Config,
    /// Random id of this process run, in every record.
    pub(super) instance: String,
    pub(super) st: Stamping,
    pub(super) admin_listener: Option<TcpListener>,
    pub(super) metrics: Metrics,
    pub(super) sinks: Arc<Sinks>,
    /// The membership: static peers, plus ZooKeeper's once discovery runs.
    pub(super) members: watch::Sender<PeerMap>,
    pub(super) members_rx: watch::Receiver<PeerMap>,
    pub(super) reflector: BoundReflector,
}

/// The registry and the metrics each task updates.
pub(super) struct Metrics {
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
    pub probe: Arc<ProbeMetrics>,
    pub admin: AdminMetrics,
    pub pinglist: PinglistMetrics,
    pub zk_state: Gauge<i64>,
}

/// The reflector's thread, its socket bound; it answers once `go` fires (or ends if `go` is
/// dropped: the start failed).
pub(super) struct BoundReflector {
    pub task: Dedicated<Option<ReflectorStats>>,
    pub go: oneshot::Sender<()>,
    pub stop: watch::Sender<bool>,
}

impl Config {
    /// Acquires everything the agent needs. A `ConfigError` (exit code 2) before anything is
    /// attached when the admin address cannot be bound.
    pub async fn build(self) -> Result<App> {
        let instance = format!("{:016x}", rand::rng().random::<u64>());
        // Admin port first: a port in use is a configuration problem, reported before
        // attaching.
        let admin_listener = bind_admin(&self).await?;
        let st = self.start_stamping()?;
        self.stamp_auth.watch();
        let live = LiveCounters::default();
        let (mut registry, meters) = register_metrics(&self, &st, &live);
        let kafka = match &self.output.kafka {
            Some(k) => {
                Some(KafkaSink::new(k, &mut registry).context("starting the Kafka producer")?)
            }
            None => None,
        };
        let sinks = Arc::new(Sinks {
            stdout: StdoutSink::new(self.output.format),
            kafka,
            kafka_probes: self.output.kafka_probes,
        });
        let metrics = meters.with_registry(registry);
        let (members, members_rx) = watch::channel(self.discovery.static_peers.clone());
        let reflector = self.bind_reflector(&st, live, members_rx.clone()).await?;
        Ok(App {
            config: self,
            instance,
            st,
            admin_listener,
            metrics,
            sinks,
            members,
            members_rx,
            reflector,
        })
    }

    /// Loads and attaches the TC programs (or falls back to socket timestamps, with a note).
    fn start_stamping(&self) -> Result<Stamping> {
        let s = &self.stamping;
        let interfaces = if s.interfaces.is_empty() {
            net::up_interfaces().context("listing interfaces")?
        } else {
            s.interfaces.clone()
        };
        let mut st = Stamping::start(&interfaces, s.no_ebpf, &s.load, s.clock_synchronized);
        st.hw_rx_stamps = s.hw_rx_stamps;
        st.hw_tx_stamps = s.hw_tx_stamps;
        if s.hw_tx_stamps {
            crate::probe::report_hw_timestamping(&interfaces);
        }
        st.sw_rx_stamps = !s.no_sw_rx_stamps;
        info!("{}", st.note());
        Ok(st)
    }

    /// Starts the reflector's thread, which binds there (its socket registers with that
    /// thread's runtime); a bind error still stops the start, before `ready`.
    async fn bind_reflector(
        &self,
        st: &Stamping,
        live: LiveCounters,
        members: watch::Receiver<PeerMap>,
    ) -> Result<BoundReflector> {
        let r = &self.reflector;
        if r.policy.allow.is_any() {
            warn!("MESHPROBE_REFLECT_ALLOW=any: the reflector answers every source");
        }
        // Answers the current peers (it follows the membership) and REFLECT_ALLOW.
        let ropts = ReflectorOptions {
            listen: r.listen,
            think_time: None,
            live: Some(live),
            policy: PolicyConfig {
                auth: self.stamp_auth.reflector.clone(),
                ..r.policy.clone()
            },
            peers: Some(members),
            allow_ephemeral_port: r.allow_ephemeral_port,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (go, go_rx) = oneshot::channel();
        let (bound_tx, bound_rx) = oneshot::channel();
        let st = st.clone();
        let task = dedicated::spawn("reflector", move || {
            async move {
                let sock = match reflector::bind(&ropts, &st) {
                    Ok(sock) => sock,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return None;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                go_rx.await.ok()?;
                Some(reflector::run(sock, ropts, st, stop_rx).await)
            }
            .instrument(info_span!("reflector"))
        })?;
        let listen = r.listen;
        bound_rx
            .await
            .map_err(|_| anyhow::anyhow!("the reflector thread stopped while binding"))?
            .with_context(|| {
                format!(
                    "REGISTER_LISTENER_DNS/REGISTER_LISTENER_PORT {listen}: the reflector cannot \
                     listen there"
                )
            })?;
        Ok(BoundReflector { task, go, stop })
    }
}

async fn bind_admin(c: &Config) -> Result<Option<TcpListener>, ConfigError> {
    let Some(addr) = c.admin.listen else {
        return Ok(None);
    };
    admin::bind(addr).await.map(Some).map_err(|e| {
        ConfigError::new(
            "MESHPROBE_ADMIN_LISTEN (--admin-listen)",
            format!("cannot listen on {addr}: {e}"),
            "choose a free address:port, or off",
        )
    })
}

/// The metrics before the registry is shared (the Kafka sink registers its own first).
struct Meters {
    health: Arc<Health>,
    probe: Arc<ProbeMetrics>,
    admin: AdminMetrics,
    pinglist: PinglistMetrics,
    zk_state: Gauge<i64>,
}

impl Meters {
    fn with_registry(self, registry: Registry) -> Metrics {
        Metrics {
            registry: Arc::new(registry),
            health: self.health,
            probe: self.probe,
            admin: self.admin,
            pinglist: self.pinglist,
            zk_state: self.zk_state,
        }
    }
}

/// Every metric but Kafka's, in the order /metrics lists them; every series carries `node`.
fn register_metrics(c: &Config, st: &Stamping, live: &LiveCounters) -> (Registry, Meters) {
    let mut registry =
        Registry::with_labels([(Cow::Borrowed("node"), Cow::Owned(c.node.id.clone()))].into_iter());
    let probe = ProbeMetrics::new(&mut registry, &c.node.zone, c.admin.worst_peers);
    EbpfCollector::register(st.clone(), &mut registry);
    let admin = AdminMetrics::register(&mut registry);
    live.register(&mut registry);
    let pinglist = PinglistMetrics::register(&mut registry);
    let zk_state = Gauge::<i64>::default();
    registry.register(
        "meshprobe_zookeeper_state",
        "ZooKeeper: 0 not configured, 1 connecting, 2 registered, 3 disconnected, 4 expired, \
         5 stopped",
        zk_state.clone(),
    );
    if let Some(zk) = &c.discovery.zk {
        zk.metrics.register(&mut registry);
    }
    let meters = Meters {
        health: Arc::new(Health::default()),
        probe,
        admin,
        pinglist,
        zk_state,
    };
    (registry, meters)
}
