//! A small TCP server of the harness (the TLS proxy, the ZooKeeper counting proxy) on its own
//! thread and single-threaded runtime inside a namespace: bound before `start` returns, stopped
//! and joined when dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::netns::Netns;

/// How long the thread has to bind its listener.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server thread; dropping it stops the server and joins the thread.
pub struct ServerThread {
    /// What the server is, for messages ("the TLS proxy").
    what: &'static str,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<Result<Result<()>>>>,
}

impl ServerThread {
    /// Binds `listen` inside `ns` on a new thread and runs `serve(listener, stop)` there until
    /// `stop` turns true. Returns once the listener is bound (or binding failed).
    pub fn start<F, Fut>(
        ns: &Netns,
        what: &'static str,
        listen: SocketAddr,
        serve: F,
    ) -> Result<Self>
    where
        F: FnOnce(TcpListener, watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn_thread(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = match TcpListener::bind(listen).await {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("binding {listen}: {e}")));
                        return Ok(());
                    }
                };
                serve(listener, stop_rx).await;
                Ok(())
            })
        });
        let mut s = ServerThread {
            what,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e).with_context(|| format!("starting {what}")),
            Err(_) => {
                s.shutdown();
                bail!("{what} did not start")
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Err(e) | Ok(Err(e))) => eprintln!("harness: {}: {e:#}", self.what),
                Err(_) => eprintln!("harness: {} thread panicked", self.what),
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
