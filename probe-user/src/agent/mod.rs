//! `meshprobe agent`: the per-node daemon. Configuration → build → spawn tasks (reflector,
//! prober, discovery, admin) → on SIGINT/SIGTERM: deregister, let probes in flight finish,
//! flush Kafka, detach the programs, all within a grace timeout.
pub mod admin;
pub mod config;
mod dedicated;
pub mod metrics;
pub mod pinglist;
pub mod prober;

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use probe_common::STAMP_DEFAULT_PORT;
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use rand::Rng as _;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::{AgentArgs, ConfigError};

use crate::{
    discovery::{self, PeerMap, ZkOptions, ZkState},
    ebpf::LoadOptions,
    net, pb,
    probe::{
        Stamping, emit_json,
        policy::PolicyConfig,
        reflector::{self, LiveCounters, ReflectorOptions},
    },
    sink::{self, KafkaOptions, KafkaSink, OutputFormat, Sinks, StdoutSink},
};

fn cfg_err(setting: &str, problem: impl std::fmt::Display, fix: &str) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: problem.to_string(),
        fix: fix.into(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Our source address towards `server` (`host:port`): the address peers most likely reach.
fn source_address_towards(server: &str) -> std::io::Result<IpAddr> {
    let target = server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let sock = match target {
        SocketAddr::V4(_) => UdpSocket::bind(("0.0.0.0", 0))?,
        SocketAddr::V6(_) => UdpSocket::bind(("::", 0))?,
    };
    sock.connect(target)?;
    Ok(sock.local_addr()?.ip())
}

/// Everything derived from the arguments, checked before anything is started.
struct Plan {
    node_id: String,
    listen: SocketAddr,
    static_peers: PeerMap,
    zk: Option<ZkOptions>,
    kafka: Option<KafkaOptions>,
    output: OutputFormat,
}

fn plan(a: &AgentArgs) -> Result<Plan, ConfigError> {
    a.validate()?;
    if let Some(w) = a.deprecation() {
        warn!("{w}");
    }
    let node_id = a.node_id.clone().unwrap_or_else(hostname);
    let listen_ip: IpAddr = a
        .register_listener_dns
        .parse()
        .expect("validated as an IP address");
    let listen = SocketAddr::new(listen_ip, a.register_listener_port);
    let static_peers = if a.peers.is_empty() && a.peers_file.is_none() {
        PeerMap::new()
    } else {
        discovery::parse_static(&a.peers, a.peers_file.as_deref(), STAMP_DEFAULT_PORT)
            .map_err(ConfigError::named)?
    };
    let kafka = a.kafka_bootstrap_servers.as_ref().map(|b| KafkaOptions {
        brokers: b.trim().to_string(),
        topic: a.kafka_topic.clone(),
        client_id: a.kafka_producer_group.clone(),
        compression: a.kafka_compression.clone(),
        buffer_messages: a.kafka_buffer_messages,
        conn_timeout: a.conn_timeout,
    });
    if let Some(k) = &kafka {
        sink::validate(k).map_err(ConfigError::named)?;
    }
    let zk = match &a.servers_zk {
        None => None,
        Some(servers) => {
            // Syntax first: a bad connect string must be named as such, not as a failure to
            // derive our address from it.
            let servers = discovery::normalize_servers(servers).map_err(ConfigError::named)?;
            let servers = &servers;
            let public = match &a.register_public_dns {
                Some(p) => p.clone(),
                None if !listen_ip.is_unspecified() => listen_ip.to_string(),
                None => {
                    let first = servers.split(',').next().unwrap_or_default().trim();
                    let ip = source_address_towards(first).map_err(|e| {
                        cfg_err(
                            "REGISTER_PUBLIC_DNS",
                            format!("unset, and no source address towards {first}: {e}"),
                            "set REGISTER_PUBLIC_DNS to the address peers should probe",
                        )
                    })?;
                    info!(
                        "REGISTER_PUBLIC_DNS unset: registering {ip}, our address towards {first}"
                    );
                    ip.to_string()
                }
            };
            let opts = ZkOptions {
                servers: servers.trim().to_string(),
                root_path: a.root_path_zk.clone(),
                heartbeat_path: a.heart_beat_node_path.clone(),
                session_timeout: a.conn_timeout,
                me: pb::NodeInfo {
                    node_id: node_id.clone(),
                    public_address: public,
                    public_port: u32::from(
                        a.register_public_port.unwrap_or(a.register_listener_port),
                    ),
                    zone: a.zone.clone(),
                    rack: a.rack.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    capabilities: vec!["stamp-reflector".into(), "rfc8972-tlv".into()],
                    started_tai_ns: crate::clock::tai_now_ns(),
                },
                default_port: STAMP_DEFAULT_PORT,
                metrics: discovery::ZkMetrics::default(),
            };
            discovery::validate_zk(&opts).map_err(ConfigError::named)?;
            Some(opts)
        }
    };
    if zk.is_none() && a.register_public_dns.is_some() {
        // Harmless (templates often set it everywhere), but worth knowing.
        info!("REGISTER_PUBLIC_DNS is set but SERVERS_ZK is not: it is not used");
    }
    if zk.is_none() && static_peers.is_empty() {
        warn!("no SERVERS_ZK and no static peers: this agent only reflects");
    }
    Ok(Plan {
        node_id,
        listen,
        static_peers,
        zk,
        kafka,
        output: a.output(),
    })
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
    interfaces: Vec<String>,
    admin: Option<String>,
    instance: &'a str,
}

/// Runs the agent until SIGINT/SIGTERM. A `ConfigError` (exit code 2) comes back before
/// anything is attached.
pub async fn run(a: AgentArgs, stop: watch::Receiver<bool>) -> Result<()> {
    let plan = plan(&a)?;
    let instance = format!("{:016x}", rand::rng().random::<u64>());
    // Admin port first: a port in use is a configuration problem, reported before attaching.
    let admin_listener = match a.admin_listen.0 {
        Some(addr) => Some(admin::bind(addr).await.map_err(|e| {
            cfg_err(
                "MESHPROBE_ADMIN_LISTEN (--admin-listen)",
                format!("cannot listen on {addr}: {e}"),
                "choose a free address:port, or off",
            )
        })?),
        None => None,
    };

    let interfaces = if a.interfaces.is_empty() {
        net::up_interfaces().context("listing interfaces")?
    } else {
        a.interfaces.clone()
    };
    let mut st = Stamping::start(
        &interfaces,
        a.no_ebpf,
        &LoadOptions {
            mode: a.attach,
            log_level: a.ebpf_log_level,
        },
        a.clock_synchronized,
    );
    st.hw_rx_stamps = a.hw_rx_stamps;
    st.sw_rx_stamps = !a.no_sw_rx_stamps;
    info!("{}", st.note());

    let mut registry = Registry::with_labels(
        [(
            std::borrow::Cow::Borrowed("node"),
            std::borrow::Cow::Owned(plan.node_id.clone()),
        )]
        .into_iter(),
    );
    let health = Arc::new(admin::Health::default());
    let probe_metrics =
        metrics::ProbeMetrics::new(&mut registry, &a.zone, a.metrics_worst_peers().0);
    metrics::EbpfCollector::register(st.clone(), &mut registry);
    let admin_metrics = admin::AdminMetrics::register(&mut registry);
    let live = LiveCounters::default();
    live.register(&mut registry);
    let pinglist_metrics = pinglist::PinglistMetrics::register(&mut registry);
    let zk_gauge = Gauge::<i64>::default();
    registry.register(
        "meshprobe_zookeeper_state",
        "ZooKeeper: 0 not configured, 1 connecting, 2 registered, 3 disconnected, 4 expired, \
         5 stopped",
        zk_gauge.clone(),
    );
    if let Some(zk) = &plan.zk {
        zk.metrics.register(&mut registry);
    }
    let kafka = match &plan.kafka {
        Some(k) => Some(KafkaSink::new(k, &mut registry).context("starting the Kafka producer")?),
        None => None,
    };
    let sinks = Arc::new(Sinks {
        stdout: StdoutSink::new(plan.output),
        kafka,
        kafka_probes: a.kafka_probes,
    });
    let registry = Arc::new(registry);

    // Membership: static peers, plus ZooKeeper's when configured.
    let (members_tx, members_rx) = watch::channel(plan.static_peers.clone());

    // Reflector: answers the current peers (it follows the membership) and REFLECT_ALLOW.
    let ropts = ReflectorOptions {
        listen: plan.listen,
        think_time: None,
        live: Some(live),
        policy: reflector_policy(&a),
        peers: Some(members_rx.clone()),
        allow_ephemeral_port: a.reflect_allow_ephemeral_port,
    };
    // The reflector binds on its own thread (its socket registers with that runtime); a bind
    // error still stops the start, before `ready`.
    let (stop_reflector_tx, stop_reflector) = watch::channel(false);
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let reflector_task = dedicated::spawn("reflector", {
        let st = st.clone();
        move || async move {
            match reflector::bind(&ropts, &st) {
                Ok(sock) => {
                    let _ = bound_tx.send(Ok(()));
                    Some(reflector::run(sock, ropts, st, stop_reflector).await)
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    None
                }
            }
        }
    })?;
    let listen = plan.listen;
    bound_rx
        .await
        .map_err(|_| anyhow::anyhow!("the reflector thread stopped while binding"))?
        .with_context(|| {
            format!(
                "REGISTER_LISTENER_DNS/REGISTER_LISTENER_PORT {listen}: the reflector cannot \
                 listen there"
            )
        })?;
    health.reflector.store(true, Ordering::Relaxed);
    let (stop_disc_tx, stop_disc) = watch::channel(false);
    let mut disc_task = None;
    if let Some(mut zk) = plan.zk.clone() {
        if st.is_kernel() {
            zk.me.capabilities.push("kernel-timestamps".into());
        }
        health.zookeeper_required.store(true, Ordering::Relaxed);
        health.set_zookeeper(Some(format!("connecting to {}", zk.servers)));
        let (state_tx, mut state_rx) = watch::channel(ZkState::Connecting);
        let zk_peers_tx = if plan.static_peers.is_empty() {
            // The membership is ZooKeeper's map itself: no second copy of every member.
            members_tx
        } else {
            // Static peers ∪ ZooKeeper members (ZooKeeper's entry wins on a shared id).
            let (zk_peers_tx, mut zk_peers_rx) = watch::channel(PeerMap::new());
            let statics = plan.static_peers.clone();
            tokio::spawn(async move {
                while zk_peers_rx.changed().await.is_ok() {
                    // A clone of ZooKeeper's map keeps its compact nodes (inserting 10 000
                    // members one by one leaves half-full ones); the static peers go in after.
                    let mut m = zk_peers_rx.borrow_and_update().clone();
                    for (id, p) in &statics {
                        m.entry(id.clone()).or_insert_with(|| p.clone());
                    }
                    if members_tx.send(m).is_err() {
                        break;
                    }
                }
            });
            zk_peers_tx
        };
        disc_task = Some(tokio::spawn(discovery::run_zk(
            zk.clone(),
            zk_peers_tx,
            state_tx,
            stop_disc.clone(),
        )));
        let h = health.clone();
        let servers = zk.servers.clone();
        tokio::spawn(async move {
            loop {
                let s = *state_rx.borrow_and_update();
                zk_gauge.set(s.as_i64());
                h.set_zookeeper(match s {
                    ZkState::Registered => None,
                    other => Some(format!("{} ({servers})", other.as_str())),
                });
                if state_rx.changed().await.is_err() {
                    break;
                }
            }
        });
    } else {
        drop(members_tx);
    }

    // Pinglist: who of the members the prober probes.
    let json = plan.output == OutputFormat::Json;
    let changed = move |v: &pinglist::PinglistView| {
        pinglist_metrics.observe(v);
        if json {
            emit_json(&PinglistChanged {
                kind: "pinglist",
                node_id: &v.node_id,
                members: v.members,
                peers: v.peers.len(),
                trimmed: v.trimmed,
            });
        }
    };
    let lists = pinglist::spawn(
        pinglist::Me {
            node_id: plan.node_id.clone(),
            place: crate::pinglist::Place {
                zone: a.zone.clone(),
                rack: a.rack.clone(),
            },
        },
        a.pinglist_params(),
        members_rx.clone(),
        changed.clone(),
    );

    // Admin.
    let (stop_admin_tx, stop_admin) = watch::channel(false);
    let admin_addr = admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            registry.clone(),
            health.clone(),
            lists.view.clone(),
            admin::Limits::default(),
            admin_metrics,
            stop_admin,
        ))
    });

    let ready = Ready {
        kind: "ready",
        role: "agent",
        node_id: &plan.node_id,
        listen: plan.listen.to_string(),
        timestamping: st.label(),
        interfaces: st.interfaces(),
        admin: admin_addr.clone(),
        instance: &instance,
    };
    if plan.output == OutputFormat::Json {
        emit_json(&ready);
    }
    changed(&lists.view.borrow());
    // Prober.
    let (stop_prober_tx, stop_prober) = watch::channel(false);
    let prober = prober::Prober::new(
        prober::ProberOptions {
            node_id: plan.node_id.clone(),
            zone: a.zone.clone(),
            interval: a.interval,
            jitter_pct: a.jitter,
            timeout: a.timeout,
            sizes: a.sizes.clone(),
            window: a.window,
            grace: a.peer_grace,
            instance: instance.clone(),
            json_events: plan.output == OutputFormat::Json,
        },
        st.clone(),
        sinks.clone(),
        probe_metrics,
    )
    .with_zone_sizes(lists.zone_sizes);
    let probed = lists.probed;
    let prober_task = dedicated::spawn("prober", move || prober.run(probed, stop_prober))?;
    health.prober.store(true, Ordering::Relaxed);

    info!(
        "agent {} ready: reflecting on {}, {}, admin {}",
        plan.node_id,
        plan.listen,
        match &plan.zk {
            Some(z) => format!("ZooKeeper {}", z.servers),
            None => format!("{} static peers", plan.static_peers.len()),
        },
        admin_addr.as_deref().unwrap_or("off")
    );

    // Run until a signal or a task dies.
    let mut stop = stop;
    let mut prober_task = prober_task;
    let prober_early = tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        r = &mut prober_task => Some(r),
    };
    health.stopping.store(true, Ordering::Relaxed);
    let grace = a.shutdown_grace;
    info!(
        "stopping: deregistering, finishing probes in flight, flushing (at most {})",
        humantime::format_duration(grace)
    );
    let deadline = tokio::time::Instant::now() + grace;
    let sinks2 = sinks.clone();
    let drained = tokio::time::timeout_at(deadline, async {
        // 1. Leave the membership first: peers stop probing us at once.
        let _ = stop_disc_tx.send(true);
        if let Some(t) = disc_task {
            match t.await {
                Ok(Err(e)) => warn!("ZooKeeper: {e}"),
                Err(e) => warn!("discovery task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        // 2. Stop probing; the prober waits for replies in flight and emits its last window.
        let _ = stop_prober_tx.send(true);
        match prober_early {
            Some(r) => report_prober(r),
            None => report_prober(prober_task.await),
        }
        // 3. Keep answering a moment so peers' last probes, sent before they saw us leave, are
        //    not lost; then stop the reflector.
        tokio::time::sleep(Duration::from_millis(500).min(a.timeout)).await;
    })
    .await;
    if drained.is_err() {
        warn!("shutdown grace expired before probes in flight finished");
    }
    let _ = stop_reflector_tx.send(true);
    let _ = stop_admin_tx.send(true);
    let _ = reflector_task.await;
    // 4. Flush Kafka with what is left of the grace (at least a second).
    let left = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    let undelivered = tokio::task::spawn_blocking(move || sinks2.flush(left))
        .await
        .unwrap_or(0);
    if undelivered > 0 {
        warn!("{undelivered} records not delivered to Kafka before shutdown (counted as dropped)");
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    // 5. Detach the TC programs (the registry's eBPF collector holds the last other handle).
    drop(registry);
    if let Some(k) = st.kernel.take() {
        match Arc::try_unwrap(k) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()).detach(),
            Err(_) => warn!("TC programs still referenced at exit; the kernel detaches them"),
        }
    }
    info!("agent stopped");
    Ok(())
}

fn reflector_policy(a: &AgentArgs) -> PolicyConfig {
    if a.reflect_allow.is_any() {
        warn!("MESHPROBE_REFLECT_ALLOW=any: the reflector answers every source");
    }
    PolicyConfig {
        allow: a.reflect_allow.clone(),
        per_source: a.reflect_budget_per_source.0,
        total: a.reflect_budget_total.0,
    }
}

fn report_prober(r: Result<Result<(), prober::ProberError>, dedicated::DedicatedError>) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("prober: {e}"),
        Err(e) => warn!("prober task: {e}"),
    }
}
