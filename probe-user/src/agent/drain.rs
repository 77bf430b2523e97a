//! Drain: on SIGINT/SIGTERM (or when the prober dies), leave the membership, let probes in
//! flight finish, stop the reflector and the admin server, flush Kafka and detach the
//! programs, all within the shutdown grace.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Result;
use prometheus_client::registry::Registry;
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use super::{
    super::probe::Stamping,
    dedicated::DedicatedError,
    prober::ProberError,
    spawn::{Running, Task},
};

type ProberResult = Result<Result<(), ProberError>, DedicatedError>;

impl Running {
    /// Runs until `stop` fires or the prober ends, then shuts down in order.
    pub async fn drain(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let prober_early = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            r = &mut self.prober.join => Some(r),
        };
        self.health.stopping.store(true, Ordering::Relaxed);
        info!(
            "stopping: deregistering, finishing probes in flight, flushing (at most {})",
            humantime::format_duration(self.grace)
        );
        let deadline = Instant::now() + self.grace;
        let finished = tokio::time::timeout_at(deadline, self.leave(prober_early)).await;
        if finished.is_err() {
            warn!("shutdown grace expired before probes in flight finished");
        }
        self.reflector.signal();
        if let Some(a) = &self.admin {
            a.signal();
        }
        let _ = (&mut self.reflector.join).await;
        self.flush(deadline).await;
        if let Some(a) = self.admin.take() {
            let _ = a.join.await;
        }
        let Running {
            registry,
            st,
            sinks,
            ..
        } = self;
        detach(registry, st);
        info!("agent stopped");
        drop(sinks);
        Ok(())
    }

    /// Steps 1-3, bounded by the grace.
    async fn leave(&mut self, prober_early: Option<ProberResult>) {
        // 1. Leave the membership first: peers stop probing us at once.
        if let Some(d) = self.discovery.take() {
            d.signal();
            match d.join.await {
                Ok(Err(e)) => warn!("ZooKeeper: {e}"),
                Err(e) => warn!("discovery task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        // 2. Stop probing; the prober waits for replies in flight and emits its last window.
        self.prober.signal();
        match prober_early {
            Some(r) => report_prober(r),
            None => report_prober((&mut self.prober.join).await),
        }
        // 3. Keep answering a moment so peers' last probes, sent before they saw us leave, are
        //    not lost; then (in `drain`) stop the reflector.
        tokio::time::sleep(Duration::from_millis(500).min(self.probe_timeout)).await;
    }

    /// Step 4: flushes Kafka with what is left of the grace (at least a second).
    async fn flush(&self, deadline: Instant) {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let sinks = self.sinks.clone();
        let undelivered = tokio::task::spawn_blocking(move || sinks.flush(left))
            .await
            .unwrap_or(0);
        if undelivered > 0 {
            warn!(
                "{undelivered} records not delivered to Kafka before shutdown (counted as dropped)"
            );
        }
    }
}

/// Step 5: detaches the TC programs (the registry's eBPF collector holds the last other
/// handle, so it goes first).
fn detach(registry: Arc<Registry>, mut st: Stamping) {
    drop(registry);
    if let Some(k) = st.kernel.take() {
        match Arc::try_unwrap(k) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()).detach(),
            Err(_) => warn!("TC programs still referenced at exit; the kernel detaches them"),
        }
    }
}

fn report_prober(r: ProberResult) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("prober: {e}"),
        Err(e) => warn!("prober task: {e}"),
    }
}

impl<J> Task<J> {
    /// Tells the task to stop.
    pub fn signal(&self) {
        let _ = self.stop.send(true);
    }
}
