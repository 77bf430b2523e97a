//! A counting TCP relay between clients and ZooKeeper: what discovery costs in bytes, measured
//! on the wire (payload bytes each way; the ZooKeeper client has no byte counters).
//!
//! The relay runs on its own thread (and tokio runtime) inside a namespace, listens on an
//! address of that namespace and forwards every connection to ZooKeeper. Point the client's
//! SERVERS_ZK at [`ZkByteCounter::addr`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::netns::Netns;

/// Bytes relayed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZkBytes {
    /// Client to ZooKeeper (requests).
    pub to_server: u64,
    /// ZooKeeper to client (responses and watch events).
    pub to_client: u64,
}

impl ZkBytes {
    pub fn total(&self) -> u64 {
        self.to_server + self.to_client
    }
}

impl std::ops::Sub for ZkBytes {
    type Output = ZkBytes;
    fn sub(self, o: ZkBytes) -> ZkBytes {
        ZkBytes {
            to_server: self.to_server.saturating_sub(o.to_server),
            to_client: self.to_client.saturating_sub(o.to_client),
        }
    }
}

impl std::fmt::Display for ZkBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} B ({} B to ZooKeeper, {} B from it)",
            self.total(),
            self.to_server,
            self.to_client
        )
    }
}

#[derive(Default)]
struct Counters {
    to_server: AtomicU64,
    to_client: AtomicU64,
    connections: AtomicU64,
}

/// The relay; dropping it closes every relayed connection and joins its thread.
pub struct ZkByteCounter {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl ZkByteCounter {
    /// Listens on `listen` inside `ns` and relays each connection to `upstream`.
    pub fn start(ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Result<ZkByteCounter> {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let c = counters.clone();
        let thread = ns.spawn_thread(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = match TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(anyhow!("binding {listen}: {e}")));
                        return Ok(());
                    }
                };
                let _ = bound_tx.send(listener.local_addr().map_err(Into::into));
                serve(listener, upstream, c, stop_rx).await;
                Ok(())
            })
        });
        let addr = bound_rx
            .recv()
            .map_err(|_| anyhow!("the ZooKeeper relay thread ended before binding"))?
            .context("starting the ZooKeeper byte counter")?;
        Ok(ZkByteCounter {
            addr,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Where clients connect (`ip:port`, SERVERS_ZK form).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes relayed since the start, over all connections.
    pub fn bytes(&self) -> ZkBytes {
        ZkBytes {
            to_server: self.counters.to_server.load(Ordering::SeqCst),
            to_client: self.counters.to_client.load(Ordering::SeqCst),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }
}

impl Drop for ZkByteCounter {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => {
                let Ok((client, _)) = r else { continue };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tasks.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    relay(client, server, c).await;
                });
            }
        }
    }
    tasks.abort_all();
}

/// Copies both ways until either side closes, counting bytes.
async fn relay(client: TcpStream, server: TcpStream, c: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = copy(&mut cr, &mut sw, &c.to_server);
    let down = copy(&mut sr, &mut cw, &c.to_client);
    // One side closing ends the relay (ZooKeeper sessions use one connection each way).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn copy(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    n: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(k) => {
                n.fetch_add(k as u64, Ordering::SeqCst);
                if w.write_all(&buf[..k]).await.is_err() {
                    return;
                }
            }
        }
    }
}
