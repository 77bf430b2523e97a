//! Admin HTTP endpoint: /metrics (Prometheus text), /healthz, /readyz.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

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
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
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

/// Serves until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
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
}
