//! Orphaned TC filters: what a crashed meshprobe process leaves attached, and removing it.
//!
//! TCX links die with the process that holds them, but clsact (netlink) filters stay attached
//! after a crash. Each process in clsact mode records its filters in
//! `/run/meshprobe/<netns inode>-<pid>.json` and holds an exclusive `flock` on it while alive.
//! On start, a file whose lock can be taken belongs to a dead process of this network
//! namespace: its filters are detached and the file removed. Live processes are never touched.
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::programs::{
    TcAttachType,
    links::Link as _,
    tc::{SchedClassifierLink, TcHandle},
};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{Direction, EbpfError};

const STATE_DIR: &str = "/run/meshprobe";

#[derive(Default, Serialize, Deserialize)]
struct State {
    pid: u32,
    netns: u64,
    filters: Vec<Filter>,
}

#[derive(Serialize, Deserialize)]
struct Filter {
    iface: String,
    ingress: bool,
    priority: u16,
    handle: u32,
}

#[derive(Debug, Default)]
pub struct OrphanReport {
    pub removed: usize,
}

fn netns_inode() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// This process's state file, locked while it lives. Written only when there is something to
/// record (clsact filters).
pub(super) struct StateFile {
    path: PathBuf,
    lock: Option<Flock<File>>,
    state: State,
}

impl StateFile {
    pub(super) fn create() -> Result<Self, EbpfError> {
        let state = State {
            pid: std::process::id(),
            netns: netns_inode(),
            filters: Vec::new(),
        };
        let path = Path::new(STATE_DIR).join(format!("{}-{}.json", state.netns, state.pid));
        Ok(Self {
            path,
            lock: None,
            state,
        })
    }

    pub(super) fn record(
        &mut self,
        iface: &str,
        dir: Direction,
        priority: u16,
        handle: u32,
    ) -> Result<(), EbpfError> {
        self.state.filters.push(Filter {
            iface: iface.to_owned(),
            ingress: dir == Direction::Ingress,
            priority,
            handle,
        });
        self.write()
    }

    fn write(&mut self) -> Result<(), EbpfError> {
        let err = |source| EbpfError::State {
            path: self.path.display().to_string(),
            source,
        };
        if self.lock.is_none() {
            fs::create_dir_all(STATE_DIR).map_err(err)?;
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)
                .map_err(err)?;
            let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| err(std::io::Error::from(e)))?;
            self.lock = Some(lock);
        }
        let body = serde_json::to_vec(&self.state).map_err(|e| err(e.into()))?;
        let f: &mut File = self.lock.as_mut().expect("locked above");
        f.set_len(0).map_err(err)?;
        use std::io::Seek as _;
        f.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_data().map_err(err)
    }

    pub(super) fn remove(&mut self) {
        if self.lock.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Detaches the filters of dead meshprobe processes of this network namespace.
pub fn clean() -> OrphanReport {
    let mut report = OrphanReport::default();
    let Ok(dir) = fs::read_dir(STATE_DIR) else {
        return report;
    };
    let ours = netns_inode();
    for entry in dir.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{ours}-")) || !name.ends_with(".json") {
            continue;
        }
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        // Held by a live process: leave it alone.
        let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let state: State = match fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(s) => s,
            None => {
                warn!("unreadable state file {}: removing it", path.display());
                let _ = fs::remove_file(&path);
                continue;
            }
        };
        for f in &state.filters {
            let at = if f.ingress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            match SchedClassifierLink::attached(
                &f.iface,
                at,
                f.priority,
                TcHandle::from(f.handle),
                None,
            )
            .map_err(|e| e.to_string())
            .and_then(|l| l.detach().map_err(|e| e.to_string()))
            {
                Ok(()) => report.removed += 1,
                Err(e) => debug!(
                    "leftover filter of pid {} on {} (prio {}): {e}",
                    state.pid, f.iface, f.priority
                ),
            }
        }
        let _ = fs::remove_file(&path);
        drop(lock);
    }
    report
}
