//! Admin HTTP endpoint: /metrics (Prometheus text), /healthz, /readyz.
//!
//! It faces whoever can reach its address, so it has bounds of its own: connections in all and
//! per source address, time to send a request's headers, and a connection's lifetime. Over a
//! bound a connection is closed at once (counted); one client cannot take every slot, so the
//! kubelet's liveness probe from the node's own address still gets in.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{sync::watch, task::JoinSet};
use tracing::debug;

use super::pinglist::PinglistView;

/// Bounds of the admin listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections in all (each holds a file descriptor and a few KiB).
    pub connections: usize,
    /// Open connections from one source address.
    pub per_source: usize,
    /// Time a client has to send a request's headers, the first and each later one.
    pub header_timeout: Duration,
    /// A connection is closed after this long, busy or not (scrapers and probes reconnect).
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 256,
            per_source: 16,
            header_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// Connections the admin listener closed unserved, by the bound they hit.
#[derive(Clone, Default)]
pub struct AdminMetrics {
    refused: Family<RefusedLabels, Counter>,
}

impl AdminMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "meshprobe_admin_connections_refused",
            "Admin connections closed unserved: reason = connections (all slots taken) or \
             per_source (that address holds its share)",
            m.refused.clone(),
        );
        m
    }
}

/// Open connections, in all and per source address.
#[derive(Default)]
struct Slots {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection's place; given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    source: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, source: IpAddr, l: &Limits) -> Result<Self, &'static str> {
        let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= l.connections {
            return Err("connections");
        }
        let n = s.by_source.entry(source).or_default();
        if *n >= l.per_source {
            return Err("per_source");
        }
        *n += 1;
        s.total += 1;
        Ok(Self {
            slots: slots.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total -= 1;
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
    }
}

/// What /readyz reports: every part that must be up, with the reason when it is not.
#[derive(Default)]
pub struct Health {
    pub reflector: AtomicBool,
    pub prober: AtomicBool,
    /// None: no ZooKeeper configured. Some(reason) while not registered.
    pub zookeeper: Mutex<Option<String>>,
    pub zookeeper_required: AtomicBool,
    pub stopping: AtomicBool,
}

impl Health {
    /// Ok, or the first reason the agent is not ready.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if !self.reflector.load(Ordering::Relaxed) {
            return Err("reflector not bound yet".into());
        }
        if !self.prober.load(Ordering::Relaxed) {
            return Err("prober not started yet".into());
        }
        if self.zookeeper_required.load(Ordering::Relaxed)
            && let Some(r) = self
                .zookeeper
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
        {
            return Err(format!("ZooKeeper: {r}"));
        }
        Ok(())
    }

    pub fn set_zookeeper(&self, not_ready: Option<String>) {
        *self.zookeeper.lock().unwrap_or_else(|p| p.into_inner()) = not_ready;
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
    pinglist: watch::Receiver<Arc<PinglistView>>,
}

async fn metrics_page(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

async fn pinglist(State(s): State<AppState>) -> impl IntoResponse {
    let view = s.pinglist.borrow().clone();
    match serde_json::to_string(&*view) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body + "\n",
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding the pinglist: {e}\n"),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
    }
}

/// Binds the admin listener (errors here are configuration errors: reported at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves until `stop`, within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    pinglist_view: watch::Receiver<Arc<PinglistView>>,
    limits: Limits,
    metrics: AdminMetrics,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/pinglist", get(pinglist))
        .with_state(AppState {
            registry,
            health,
            pinglist: pinglist_view,
        });
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: retry shortly
                    // rather than spin.
                    debug!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        while conns.try_join_next().is_some() {}
        let slot = match Slot::take(&slots, peer.ip(), &limits) {
            Ok(s) => s,
            Err(reason) => {
                metrics
                    .refused
                    .get_or_create(&RefusedLabels { reason })
                    .inc();
                continue; // dropping the stream closes it
            }
        };
        let svc = TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(limits.lifetime, conn).await;
        });
    }
    // Requests under way get a moment; then the connections close.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let h = Health::default();
        assert!(h.ready().unwrap_err().contains("reflector"));
        h.reflector.store(true, Ordering::Relaxed);
        h.prober.store(true, Ordering::Relaxed);
        assert!(h.ready().is_ok());
        h.zookeeper_required.store(true, Ordering::Relaxed);
        h.set_zookeeper(Some("connecting to 198.18.0.1:2181".into()));
        assert!(h.ready().unwrap_err().contains("ZooKeeper: connecting"));
        h.set_zookeeper(None);
        assert!(h.ready().is_ok());
        h.stopping.store(true, Ordering::Relaxed);
        assert!(h.ready().is_err());
    }

    #[test]
    fn slots_bound_connections_in_all_and_per_source() {
        let l = Limits {
            connections: 3,
            per_source: 2,
            ..Limits::default()
        };
        let slots = Arc::new(Mutex::new(Slots::default()));
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let a1 = Slot::take(&slots, a, &l).unwrap();
        let _a2 = Slot::take(&slots, a, &l).unwrap();
        assert_eq!(Slot::take(&slots, a, &l).err(), Some("per_source"));
        let _b1 = Slot::take(&slots, b, &l).unwrap();
        assert_eq!(Slot::take(&slots, b, &l).err(), Some("connections"));
        drop(a1);
        let _b2 = Slot::take(&slots, b, &l).expect("a1's slot was given back");
        assert_eq!(slots.lock().unwrap().total, 3);
        drop((_a2, _b1, _b2));
        let s = slots.lock().unwrap();
        assert_eq!(
            (s.total, s.by_source.len()),
            (0, 0),
            "every slot given back"
        );
    }
}
