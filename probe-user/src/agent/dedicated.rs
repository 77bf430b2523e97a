//! A role on a thread of its own, with its own single-threaded runtime.
//!
//! The agent's reflector, prober and the rest (discovery, admin, start and stop) each get one:
//! a flood at the reflector port, a burst of admin connections or a slow ZooKeeper server then
//! cannot delay probes, because the kernel schedules the roles and no role's task can starve
//! another's. Each runtime stays single-threaded, so a role's own sockets and timers wake only
//! its thread (no cross-thread wake-ups on the probe path).
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    thread,
};

use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum DedicatedError {
    #[error("starting the {role} thread: {source}")]
    Start {
        role: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread stopped without a result (it panicked)")]
    Lost(&'static str),
}

/// The result of a role running on its own thread: await it like a task.
pub struct Dedicated<T> {
    role: &'static str,
    rx: oneshot::Receiver<T>,
}

/// Runs `make()` to completion on a new thread named `meshprobe-<role>`. The future is built
/// on that thread, so it need not be `Send`, and sockets it opens register with its runtime.
pub fn spawn<F, Fut>(role: &'static str, make: F) -> Result<Dedicated<Fut::Output>, DedicatedError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    let start = |source| DedicatedError::Start { role, source };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(start)?;
    let (tx, rx) = oneshot::channel();
    thread::Builder::new()
        .name(format!("meshprobe-{role}"))
        .spawn(move || {
            let out = rt.block_on(make());
            let _ = tx.send(out);
        })
        .map_err(start)?;
    Ok(Dedicated { role, rx })
}

impl<T> Future for Dedicated<T> {
    type Output = Result<T, DedicatedError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let role = self.role;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| DedicatedError::Lost(role)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_thread_and_reports_loss() {
        let caller = thread::current().id();
        let other = spawn("test", || async { thread::current().id() })
            .unwrap()
            .await
            .unwrap();
        assert_ne!(other, caller);
        let lost = spawn("boom", || async {
            if thread::current().name().is_some() {
                panic!("on purpose");
            }
        })
        .unwrap()
        .await;
        assert!(matches!(lost, Err(DedicatedError::Lost("boom"))));
    }
}
