//! Preconditions of the root tests: skip (with a message) rather than fake a pass.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::meshprobe::{Meshprobe, find_binary};

/// Prints a skip message on stderr (visible with `--nocapture` and in failure output).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Is `tool` an executable on PATH (or in /sbin, /usr/sbin)?
pub fn have_tool(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).is_file())
}

/// Why the harness cannot run here, if it cannot: not root, a tool missing, no netns support.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, tc, raw sockets)".into());
    }
    for t in ["ip"].iter().chain(tools) {
        if !have_tool(t) {
            return Some(format!("tool {t:?} not installed"));
        }
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("kernel without network namespaces".into());
    }
    None
}

/// Serialises the timing-sensitive tests across threads and test binaries (`flock` on a file
/// in the temp dir), so concurrent tests do not disturb each other's measurements.
pub fn exclusive() -> Result<Flock<File>> {
    let path = std::env::temp_dir().join("meshprobe-tests.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match Flock::lock(f, FlockArg::LockExclusive) {
        Ok(l) => Ok(l),
        Err((_, e)) => bail!("flock: {e}"),
    }
}

/// What a meshprobe test needs: the binary, and exclusive use of the machine's timing.
pub struct TestEnv {
    pub mp: Meshprobe,
    _lock: Flock<File>,
}

impl TestEnv {
    /// `Ok(None)` (after printing why) when the test must be skipped: not root, a tool missing,
    /// or no meshprobe binary built. A missing binary is an error instead when `CI` is set or
    /// `MESHPROBE_BIN` names a file that does not exist.
    pub fn acquire(test: &str, tools: &[&str]) -> Result<Option<TestEnv>> {
        if let Some(why) = missing_prerequisite(tools) {
            skip(test, &why);
            return Ok(None);
        }
        let Some(bin) = find_binary()? else {
            if std::env::var_os("CI").is_some() {
                bail!(
                    "meshprobe binary not found (set MESHPROBE_BIN or build target/release/meshprobe)"
                );
            }
            skip(
                test,
                "meshprobe binary not built (cargo build --release -p probe-user, or set MESHPROBE_BIN)",
            );
            return Ok(None);
        };
        let lock = exclusive()?;
        Ok(Some(TestEnv {
            mp: Meshprobe::new(bin),
            _lock: lock,
        }))
    }
}
