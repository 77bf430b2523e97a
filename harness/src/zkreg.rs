//! A light ZooKeeper member registrar: registers many synthetic members (no agent behind them)
//! the way an agent registers itself, fast enough for 10 000 members in seconds.
//!
//! What a registration consists of (which znodes, which data) is not decided here: the caller
//! gives a [`MemberCodec`] built on the product's own layout (`meshprobe::discovery::layout`),
//! so the rule stays in one place. This crate cannot link the product (xtask depends on it and
//! must build before the eBPF toolchain exists), hence the trait.
//!
//! One ZooKeeper session, owned by a thread that joined the caller's namespace. Every member is
//! one `multi` transaction of ephemeral creates, as the agent does it; requests are pipelined
//! (up to [`IN_FLIGHT`] outstanding). Missing ancestors are created persistent first. Dropping
//! the [`Registrar`] closes the session, so every ephemeral it created vanishes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{self as zk, Acls, CreateMode};

use crate::netns::Netns;

/// Requests outstanding at once while registering many members.
pub const IN_FLIGHT: usize = 512;
/// Session timeout of the registrar's session: short, so a crashed test's members expire soon.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one command (a bulk registration of 10 000 members included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const PERSISTENT: zk::CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());

/// A member without an agent: what a registration says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticMember {
    pub node_id: String,
    pub zone: String,
    pub rack: String,
    pub addr: IpAddr,
    pub port: u16,
}

/// One znode of a registration: (absolute path, data). All are created ephemeral.
pub type Znode = (String, Vec<u8>);

/// How a member is registered: the product's layout, given by the caller (see the module docs).
pub trait MemberCodec: Send + Sync + 'static {
    /// The znodes of `m`'s registration, created together in one transaction.
    fn znodes(&self, m: &SyntheticMember) -> Vec<Znode>;
}

/// When ZooKeeper created a registration (its first znode's `ctime`, ms since the epoch, from
/// the multi's answer; servers before 3.7 answer without a Stat there, ZOOKEEPER-4026, and the
/// value is then not a time).
#[derive(Clone, Copy, Debug)]
pub struct Registered {
    pub ctime_ms: i64,
}

/// The registrar's thread body.
type Job = Box<dyn FnOnce() -> Result<()> + Send>;

enum Cmd {
    Add(
        Vec<SyntheticMember>,
        oneshot::Sender<Result<Vec<Registered>>>,
    ),
    Remove(Vec<SyntheticMember>, oneshot::Sender<Result<()>>),
}

/// Synthetic members registered in ZooKeeper; see the module docs.
pub struct Registrar {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<std::thread::JoinHandle<Result<Result<()>>>>,
    members: BTreeMap<String, SyntheticMember>,
}

impl Registrar {
    /// Opens a session to `connect` from inside `ns` and registers `members` (pipelined).
    pub fn start(
        ns: &Netns,
        connect: &str,
        codec: Arc<dyn MemberCodec>,
        members: Vec<SyntheticMember>,
    ) -> Result<Registrar> {
        Self::launch(connect, codec, members, |f| ns.spawn_thread(f))
    }

    /// [`Registrar::start`] from the namespace this process is in.
    pub fn start_here(
        connect: &str,
        codec: Arc<dyn MemberCodec>,
        members: Vec<SyntheticMember>,
    ) -> Result<Registrar> {
        Self::launch(connect, codec, members, |f| {
            std::thread::spawn(move || Ok(f()))
        })
    }

    fn launch(
        connect: &str,
        codec: Arc<dyn MemberCodec>,
        members: Vec<SyntheticMember>,
        spawn: impl FnOnce(Job) -> std::thread::JoinHandle<Result<Result<()>>>,
    ) -> Result<Registrar> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let cs = connect.to_string();
        let thread = spawn(Box::new(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(cs, codec, rx, ready_tx))
        }));
        let mut reg = Registrar {
            tx: Some(tx),
            thread: Some(thread),
            members: BTreeMap::new(),
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let why = reg.shutdown().err();
                bail!("the registrar did not connect to ZooKeeper {connect}: {why:?}");
            }
        }
        reg.add_all(members)?;
        Ok(reg)
    }

    fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .context("registrar stopped")?
            .send(make(tx))
            .map_err(|_| anyhow!("the registrar's thread is gone"))?;
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        let mut rx = rx;
        loop {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => {
                    bail!("the registrar's thread is gone")
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if std::time::Instant::now() > deadline {
                bail!("registrar command not done within {COMMAND_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Registers more members (pipelined); errors if one is registered already.
    pub fn add_all(&mut self, members: Vec<SyntheticMember>) -> Result<Vec<Registered>> {
        for m in &members {
            if self.members.contains_key(&m.node_id) {
                bail!("{} is registered already", m.node_id);
            }
        }
        let r = self.call(|tx| Cmd::Add(members.clone(), tx))?;
        self.members
            .extend(members.into_iter().map(|m| (m.node_id.clone(), m)));
        Ok(r)
    }

    /// Registers one member: a join.
    pub fn add(&mut self, m: SyntheticMember) -> Result<Registered> {
        Ok(self.add_all(vec![m])?[0])
    }

    /// Deletes one member's registration (one transaction): a leave.
    pub fn remove(&mut self, node_id: &str) -> Result<SyntheticMember> {
        let m = self
            .members
            .get(node_id)
            .cloned()
            .with_context(|| format!("{node_id} is not registered here"))?;
        self.call(|tx| Cmd::Remove(vec![m.clone()], tx))?;
        self.members.remove(node_id);
        Ok(m)
    }

    /// The members registered now.
    pub fn members(&self) -> impl Iterator<Item = &SyntheticMember> {
        self.members.values()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Closes the session (every member leaves at once) and waits for the thread.
    pub fn shutdown(&mut self) -> Result<()> {
        self.tx = None;
        self.members.clear();
        match self.thread.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the registrar's thread panicked"))??,
            None => Ok(()),
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("harness: registrar: {e:#}");
        }
    }
}

async fn serve(
    cs: String,
    codec: Arc<dyn MemberCodec>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<()> {
    let connect = zk::Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(&cs);
    let client = match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = ready.send(Err(anyhow!("connecting to ZooKeeper {cs}: {e}")));
            return Ok(());
        }
        Err(_) => {
            let _ = ready.send(Err(anyhow!("connecting to ZooKeeper {cs} timed out")));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let mut dirs = BTreeSet::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Add(members, reply) => {
                let r = add(&client, codec.as_ref(), &mut dirs, &members).await;
                let _ = reply.send(r);
            }
            Cmd::Remove(members, reply) => {
                let r = remove(&client, codec.as_ref(), &members).await;
                let _ = reply.send(r);
            }
        }
    }
    // Close the session and wait until the client says so: the ephemerals are gone then.
    let mut states = client.state_watcher();
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !states.changed().await.is_terminated() {}
    })
    .await;
    Ok(())
}

/// Every proper ancestor of `path` (`/a/b/c` -> `/a`, `/a/b`).
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = path[at + 1..].find('/') {
        at += i + 1;
        out.push(path[..at].to_string());
    }
    out
}

async fn add(
    client: &zk::Client,
    codec: &dyn MemberCodec,
    dirs: &mut BTreeSet<String>,
    members: &[SyntheticMember],
) -> Result<Vec<Registered>> {
    let regs: Vec<Vec<Znode>> = members.iter().map(|m| codec.znodes(m)).collect();
    // Parents first, in order (one level at a time), each once per registrar.
    let mut need: BTreeSet<String> = BTreeSet::new();
    for (p, _) in regs.iter().flatten() {
        need.extend(ancestors(p).into_iter().filter(|d| !dirs.contains(d)));
    }
    let mut by_depth: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for d in need {
        by_depth.entry(d.matches('/').count()).or_default().push(d);
    }
    for level in by_depth.into_values() {
        let futs: Vec<_> = level
            .iter()
            .map(|d| client.create(d, &[], &PERSISTENT))
            .collect();
        for (d, f) in level.iter().zip(futs) {
            match f.await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => bail!("creating {d}: {e}"),
            }
        }
        dirs.extend(level);
    }
    let mut out = Vec::with_capacity(members.len());
    for (chunk, ms) in regs.chunks(IN_FLIGHT).zip(members.chunks(IN_FLIGHT)) {
        let mut futs = Vec::with_capacity(chunk.len());
        for znodes in chunk {
            let mut w = client.new_multi_writer();
            for (p, data) in znodes {
                w.add_create(p, data, &EPHEMERAL)
                    .map_err(|e| anyhow!("{p}: {e}"))?;
            }
            futs.push(w.commit());
        }
        for (f, m) in futs.into_iter().zip(ms) {
            let res = f
                .await
                .map_err(|e| anyhow!("registering {}: {e}", m.node_id))?;
            let ctime_ms = match res.first() {
                Some(zk::MultiWriteResult::Create { stat, .. }) => stat.ctime,
                _ => bail!("registering {}: unexpected answer {res:?}", m.node_id),
            };
            out.push(Registered { ctime_ms });
        }
    }
    Ok(out)
}

async fn remove(
    client: &zk::Client,
    codec: &dyn MemberCodec,
    members: &[SyntheticMember],
) -> Result<()> {
    for m in members {
        let mut w = client.new_multi_writer();
        for (p, _) in codec.znodes(m) {
            w.add_delete(&p, None).map_err(|e| anyhow!("{p}: {e}"))?;
        }
        w.commit()
            .await
            .map_err(|e| anyhow!("deregistering {}: {e}", m.node_id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_a_path() {
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
        assert!(ancestors("/a").is_empty());
    }
}
