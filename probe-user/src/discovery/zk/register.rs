//! Our registration: the registration znode and its topology index entry, created together in
//! one transaction. A pair left by our previous incarnation is taken over (both deleted); a
//! live agent holding our node id is left alone (error log, retry); a piece deleted under us is
//! created again. The graceful leave deletes both, in one transaction.

use std::net::IpAddr;

use tokio::time::{Instant, timeout};
use tracing::{error, info, warn};
use zookeeper_client::{self as zk, MultiWriteError};

use super::{
    CONFLICT_LOG_EVERY, CONFLICT_RETRY, DELETE_BUDGET, EventFuture, OpError, Runner, STOP_BUDGET,
    op_err,
};
use crate::discovery::layout;
use crate::discovery::syntax::bracket;
use crate::pb::NodeInfo;

/// Attempts per registration: each one either settles or reacts to a znode that changed under
/// us.
const ROUNDS: usize = 5;

/// Outcome of a registration attempt.
pub(super) enum Registration {
    /// Our znodes exist in our session; the watch fires when the registration changes or goes.
    Done(EventFuture),
    /// Another agent holds our node id; the watch (if its znode still exists) fires when it
    /// goes.
    Conflict(Option<EventFuture>),
}

/// Deletes a registration (at `version`, if given) and its index entry in one transaction; an
/// entry already gone (an agent of an older version has none) does not keep the registration.
async fn delete_pair(
    client: &zk::Client,
    path: &str,
    version: Option<i32>,
    entry: &str,
) -> Result<(), zk::Error> {
    let mut w = client.new_multi_writer();
    w.add_delete(path, version)?;
    w.add_delete(entry, None)?;
    match w.commit().await {
        Ok(_) => Ok(()),
        Err(MultiWriteError::OperationFailed {
            index: 1,
            source: zk::Error::NoNode,
        }) => client.delete(path, version).await,
        Err(e) => Err(e.into()),
    }
}

impl Runner {
    /// Creates our registration and index entry (one transaction), or repairs the missing half.
    pub(super) async fn register(&mut self, client: &zk::Client) -> Result<Registration, OpError> {
        let ours = client.session_id().0;
        let reg = self.reg.clone();
        let access = self.access.clone();
        let ephemeral = access.ephemeral();
        let (path, entry) = (reg.path.as_str(), reg.entry.as_str());
        for _ in 0..ROUNDS {
            let mut w = client.new_multi_writer();
            w.add_create(path, &reg.data, &ephemeral)
                .and_then(|()| w.add_create(entry, &[], &ephemeral))
                .map_err(op_err(format!("registering {path}")))?;
            match w.commit().await {
                Ok(_) => match self.watch_own(client, ours).await? {
                    Some(watch) => return Ok(Registration::Done(watch)),
                    None => continue,
                },
                Err(MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::NodeExists,
                }) => {}
                Err(MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NodeExists,
                }) => {
                    self.free_entry_without_registration(client, ours).await?;
                    continue;
                }
                Err(e) => {
                    return Err(op_err(format!("registering {path} and {entry}"))(e.into()));
                }
            }
            // The registration znode exists: ours, our previous incarnation's, or a conflict.
            let (data, stat) = match client.get_data(path).await {
                Ok(x) => x,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(op_err(format!("reading {path}"))(e)),
            };
            if stat.ephemeral_owner == ours {
                if data != reg.data {
                    // Someone rewrote our registration: put ours back.
                    match client.set_data(path, &reg.data, Some(stat.version)).await {
                        Ok(_) => {}
                        Err(zk::Error::BadVersion | zk::Error::NoNode) => continue,
                        Err(e) => return Err(op_err(format!("writing {path}"))(e)),
                    }
                }
                if !self.ensure_entry(client, ours).await? {
                    continue;
                }
                match self.watch_own(client, ours).await? {
                    Some(watch) => return Ok(Registration::Done(watch)),
                    None => continue,
                }
            }
            let theirs = layout::decode_node_info(&data);
            if let Some(t) = theirs
                .as_ref()
                .filter(|t| is_previous_incarnation(t, &self.opts.me))
            {
                // Its entry is named after ITS registration (zone, rack may have changed).
                let stale_entry = layout::entry_path(self.index.root(), &layout::entry_of(t));
                info!(
                    path,
                    stale_entry,
                    stale_session = format!("{:#x}", stat.ephemeral_owner),
                    "taking over the registration of our previous incarnation (same address and port)"
                );
                match delete_pair(client, path, Some(stat.version), &stale_entry).await {
                    Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                    Err(e) => return Err(op_err(format!("deleting stale {path}"))(e)),
                }
            }
            self.report_conflict(stat.ephemeral_owner, theirs.as_ref());
            let (stat, watch) = client
                .check_and_watch_stat(path)
                .await
                .map_err(op_err(format!("watching {path}")))?;
            if stat.is_none() {
                continue;
            }
            return Ok(Registration::Conflict(Some(Box::pin(watch.changed()))));
        }
        // The znodes keep changing under us; try again later.
        Ok(Registration::Conflict(None))
    }

    /// Watches our registration; `None` if it is not (or no longer) ours.
    async fn watch_own(
        &mut self,
        client: &zk::Client,
        ours: i64,
    ) -> Result<Option<EventFuture>, OpError> {
        let path = self.reg.path.as_str();
        let (stat, watch) = client
            .check_and_watch_stat(path)
            .await
            .map_err(op_err(format!("watching {path}")))?;
        Ok(stat
            .filter(|st| st.ephemeral_owner == ours)
            .map(|_| Box::pin(watch.changed()) as EventFuture))
    }

    /// Our entry's name exists while the registration does not: ours (the registration was
    /// deleted under us: create it alone), or left by an earlier session of an agent with our
    /// very name (same id, zone, rack, address and port) that no longer holds the node id:
    /// delete it.
    async fn free_entry_without_registration(
        &mut self,
        client: &zk::Client,
        ours: i64,
    ) -> Result<(), OpError> {
        let (path, entry) = (self.reg.path.as_str(), self.reg.entry.as_str());
        match client.check_stat(entry).await {
            Ok(None) => Ok(()),
            Ok(Some(st)) if st.ephemeral_owner == ours => {
                match client
                    .create(path, &self.reg.data, &self.access.ephemeral())
                    .await
                {
                    Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
                    Err(e) => Err(op_err(format!("creating {path}"))(e)),
                }
            }
            Ok(Some(st)) => {
                info!(
                    entry,
                    stale_session = format!("{:#x}", st.ephemeral_owner),
                    "deleting a stale index entry with our name (nobody holds our registration)"
                );
                match client.delete(entry, Some(st.version)).await {
                    Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(()),
                    Err(e) => Err(op_err(format!("deleting stale {entry}"))(e)),
                }
            }
            Err(e) => Err(op_err(format!("reading {entry}"))(e)),
        }
    }

    /// Our registration is ours: makes sure our index entry is too. `false`: try again.
    async fn ensure_entry(&mut self, client: &zk::Client, ours: i64) -> Result<bool, OpError> {
        let entry = self.reg.entry.as_str();
        match client.create(entry, &[], &self.access.ephemeral()).await {
            Ok(_) => {
                info!(entry, "created our missing topology index entry again");
                Ok(true)
            }
            Err(zk::Error::NodeExists) => match client.check_stat(entry).await {
                Ok(Some(st)) if st.ephemeral_owner == ours => Ok(true),
                Ok(None) => Ok(false),
                Ok(Some(st)) => match client.delete(entry, Some(st.version)).await {
                    Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(false),
                    Err(e) => Err(op_err(format!("deleting stale {entry}"))(e)),
                },
                Err(e) => Err(op_err(format!("reading {entry}"))(e)),
            },
            Err(e) => Err(op_err(format!("creating {entry}"))(e)),
        }
    }

    fn report_conflict(&mut self, owner: i64, theirs: Option<&NodeInfo>) {
        let now = Instant::now();
        if self
            .conflict_logged
            .is_some_and(|t| now.duration_since(t) < CONFLICT_LOG_EVERY)
        {
            return;
        }
        self.conflict_logged = Some(now);
        let holder = match theirs {
            Some(t) => format!(
                "registered address {}:{}",
                bracket(&t.public_address),
                t.public_port
            ),
            None => "undecodable data".to_string(),
        };
        error!(
            path = %self.reg.path,
            "node id {:?} is already registered in ZooKeeper by another agent (session {owner:#x}, {holder}); \
             set a unique MESHPROBE_NODE_ID. Not taking it over; retrying every {}s",
            self.opts.me.node_id,
            CONFLICT_RETRY.as_secs()
        );
    }

    /// Graceful leave: delete our registration and entry (peers see us go at once), then close
    /// the session.
    pub(super) async fn leave(&mut self, client: zk::Client, registered: bool) {
        let start = Instant::now();
        if registered {
            let ours = client.session_id().0;
            let (path, entry) = (self.reg.path.as_str(), self.reg.entry.as_str());
            let delete = async {
                let (_, stat) = client.get_data(path).await?;
                if stat.ephemeral_owner == ours {
                    delete_pair(&client, path, Some(stat.version), entry).await?;
                }
                Ok::<(), zk::Error>(())
            };
            match timeout(DELETE_BUDGET, delete).await {
                Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {
                    info!(path, "deregistered from ZooKeeper")
                }
                Ok(Err(e)) => warn!(path, "could not delete our znodes on stop: {e}"),
                Err(_) => warn!(
                    path,
                    "deleting our znodes on stop timed out; they go when the session ends"
                ),
            }
        }
        let mut states = client.state_watcher();
        // The session closes when its last client handle is dropped.
        drop(client);
        let left = STOP_BUDGET.saturating_sub(start.elapsed());
        let closed = timeout(left, async {
            while !states.changed().await.is_terminated() {}
        })
        .await;
        if closed.is_err() {
            tracing::debug!("ZooKeeper session close not confirmed within {STOP_BUDGET:?}");
        }
    }
}

/// Is `theirs` (found at our znode, in another session) a leftover of an earlier run of this
/// agent? Same registered address and port, and not started after us (a newer process with the
/// same identity is a live twin: it wins, and we do not fight over the znode).
fn is_previous_incarnation(theirs: &NodeInfo, me: &NodeInfo) -> bool {
    if theirs.public_port != me.public_port
        || !same_host(&theirs.public_address, &me.public_address)
    {
        return false;
    }
    theirs.started_tai_ns == 0
        || me.started_tai_ns == 0
        || theirs.started_tai_ns <= me.started_tai_ns
}

fn same_host(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim();
        s.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s)
            .to_string()
    };
    let (a, b) = (strip(a), strip(b));
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(&b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(addr: &str, port: u32, started: u64) -> NodeInfo {
        NodeInfo {
            node_id: "n".into(),
            public_address: addr.into(),
            public_port: port,
            started_tai_ns: started,
            ..Default::default()
        }
    }

    #[test]
    fn previous_incarnation() {
        let me = info("198.18.0.1", 862, 200);
        assert!(is_previous_incarnation(&info("198.18.0.1", 862, 100), &me));
        assert!(is_previous_incarnation(&info("198.18.0.1", 862, 0), &me));
        assert!(!is_previous_incarnation(&info("198.18.0.1", 863, 100), &me));
        assert!(!is_previous_incarnation(&info("198.18.0.2", 862, 100), &me));
        // A newer process with our identity is a twin, not a leftover.
        assert!(!is_previous_incarnation(&info("198.18.0.1", 862, 300), &me));
        let me6 = info("fd00::1", 862, 0);
        assert!(is_previous_incarnation(&info("[fd00:0::1]", 862, 5), &me6));
        assert!(same_host("Host.Example", "host.example"));
    }
}
