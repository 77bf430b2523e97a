//! Many members registered in ZooKeeper by one light client instead of agents: one session
//! holds all their ephemeral znodes, each member created (or deleted) by one transaction of its
//! two znodes, as an agent does, with the transactions pipelined.
//!
//! The paths and data come from the caller, which builds them with the product's rule
//! (`meshprobe::discovery::layout::registration`): this crate cannot depend on the product,
//! so the rule stays in one place and this module only does the transport.

use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{self as zk, Acls, CreateMode};

use crate::netns::Netns;

/// Transactions in flight at once.
const PIPELINE: usize = 512;
/// Longest a batch may take (10 000 members take a few seconds).
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The two znodes of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberZnodes {
    /// The registration, `/<root>/<heartbeat>/<node_id>`.
    pub path: String,
    /// Its data (a protobuf NodeInfo).
    pub data: Vec<u8>,
    /// Its topology index entry (no data).
    pub entry: String,
}

enum Cmd {
    Register(Vec<MemberZnodes>, oneshot::Sender<Result<()>>),
    Deregister(Vec<MemberZnodes>, oneshot::Sender<Result<()>>),
}

/// One ZooKeeper session holding many members; dropping it closes the session, and every
/// member it holds goes with it.
pub struct ZkMembers {
    cmds: Option<mpsc::Sender<Cmd>>,
    session: i64,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl ZkMembers {
    /// Connects to `servers` from inside `ns`.
    pub fn connect(ns: &Netns, servers: &str) -> Result<ZkMembers> {
        let servers = servers.to_string();
        let (tx, rx) = mpsc::channel(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn_thread(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(servers, rx, ready_tx))
        });
        let session = ready_rx
            .recv()
            .map_err(|_| anyhow!("the ZooKeeper member client thread ended at start"))??;
        Ok(ZkMembers {
            cmds: Some(tx),
            session,
            thread: Some(thread),
        })
    }

    /// The session holding the members.
    pub fn session_id(&self) -> i64 {
        self.session
    }

    fn call(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Cmd) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .as_ref()
            .expect("open until drop")
            .blocking_send(make(tx))
            .map_err(|_| anyhow!("the ZooKeeper member client is gone"))?;
        rx.blocking_recv()
            .map_err(|_| anyhow!("the ZooKeeper member client is gone"))?
    }

    /// Creates the members (their directories first, persistent): each one's registration and
    /// entry in one transaction.
    pub fn register(&self, members: &[MemberZnodes]) -> Result<()> {
        self.call(|tx| Cmd::Register(members.to_vec(), tx))
    }

    /// Deletes the members (registration and entry in one transaction each).
    pub fn deregister(&self, members: &[MemberZnodes]) -> Result<()> {
        self.call(|tx| Cmd::Deregister(members.to_vec(), tx))
    }
}

impl Drop for ZkMembers {
    fn drop(&mut self) {
        self.cmds.take();
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) | Ok(Err(e)) => eprintln!("harness: ZooKeeper members: {e:#}"),
                Err(_) => eprintln!("harness: ZooKeeper members: the client thread panicked"),
            }
        }
    }
}

fn parent(path: &str) -> &str {
    &path[..path.rfind('/').unwrap_or(0)]
}

async fn run(
    servers: String,
    mut rx: mpsc::Receiver<Cmd>,
    ready: std::sync::mpsc::Sender<Result<i64>>,
) -> Result<()> {
    let connect = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(&servers);
    let client = match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = ready.send(Err(anyhow!("connecting to ZooKeeper {servers}: {e}")));
            return Ok(());
        }
        Err(_) => {
            let _ = ready.send(Err(anyhow!("connecting to ZooKeeper {servers} timed out")));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(client.session_id().0));
    let mut dirs = BTreeSet::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Register(m, reply) => {
                let r = tokio::time::timeout(BATCH_TIMEOUT, register(&client, &mut dirs, &m))
                    .await
                    .unwrap_or_else(|_| bail!("registering {} members timed out", m.len()));
                let _ = reply.send(r);
            }
            Cmd::Deregister(m, reply) => {
                let r = tokio::time::timeout(BATCH_TIMEOUT, deregister(&client, &m))
                    .await
                    .unwrap_or_else(|_| bail!("deregistering {} members timed out", m.len()));
                let _ = reply.send(r);
            }
        }
    }
    Ok(())
}

async fn register(
    client: &zk::Client,
    dirs: &mut BTreeSet<String>,
    members: &[MemberZnodes],
) -> Result<()> {
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let wanted: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| [parent(&m.path), parent(&m.entry)])
        .collect();
    for d in wanted {
        if !dirs.contains(d) {
            client
                .mkdir(d, &persistent)
                .await
                .with_context(|| format!("mkdir {d}"))?;
            dirs.insert(d.to_string());
        }
    }
    for chunk in members.chunks(PIPELINE) {
        let mut commits = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut w = client.new_multi_writer();
            w.add_create(&m.path, &m.data, &ephemeral)?;
            w.add_create(&m.entry, &[], &ephemeral)?;
            commits.push(w.commit());
        }
        for (m, r) in chunk.iter().zip(futures_join(commits).await) {
            r.with_context(|| format!("registering {} and {}", m.path, m.entry))?;
        }
    }
    Ok(())
}

async fn deregister(client: &zk::Client, members: &[MemberZnodes]) -> Result<()> {
    for chunk in members.chunks(PIPELINE) {
        let mut commits = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut w = client.new_multi_writer();
            w.add_delete(&m.path, None)?;
            w.add_delete(&m.entry, None)?;
            commits.push(w.commit());
        }
        for (m, r) in chunk.iter().zip(futures_join(commits).await) {
            r.with_context(|| format!("deregistering {} and {}", m.path, m.entry))?;
        }
    }
    Ok(())
}

/// Awaits futures in order; they are all in flight already (the client sends on creation).
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(fs.len());
    for f in fs {
        out.push(f.await);
    }
    out
}
