//! Preconditions of the root tests: skip (with a message) rather than fake a pass.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::meshprobe::{Meshprobe, find_binary};

/// Prints a skip message on stderr (visible with `--nocapture` and in failure output).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}

/// How many times slower than native the machine runs: `MESHPROBE_TEST_TIME_SCALE` (a whole
/// number ≥ 1, default 1). `cargo xtask test --kernel` sets it for a guest under qemu's TCG,
/// where a JVM takes minutes to start. It stretches waits for services to come up, never a
/// figure a test judges.
pub fn time_scale() -> u32 {
    match std::env::var("MESHPROBE_TEST_TIME_SCALE") {
        Err(_) => 1,
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("MESHPROBE_TEST_TIME_SCALE={v}: expected a whole number >= 1"),
        },
    }
}

/// `d` × [`time_scale`].
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * time_scale()
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

fn lock_path() -> std::path::PathBuf {
    std::env::temp_dir().join("meshprobe-tests.lock")
}

/// The lab supervisor (`meshprobe-lab mesh serve`) holds the lock for as long as a lab is up:
/// its pid, if it holds it now. The holder writes its pid into the lock file.
pub fn lab_holding_lock() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(lock_path())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid != std::process::id() && is_lab_supervisor(pid)).then_some(pid)
}

/// Is `pid` a live lab supervisor (`meshprobe-lab mesh serve`)? A pid read from a file may be
/// gone or reused by another program: only the command line tells.
pub fn is_lab_supervisor(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("meshprobe-lab") && c.contains("serve")
    })
}

/// An error naming the lab when one is up: waiting for its lock would never end.
pub fn fail_if_lab_holds_lock() -> Result<()> {
    if let Some(pid) = lab_holding_lock() {
        bail!(
            "a lab mesh is up (supervisor pid {pid}) and holds the harness lock; stop it with \
             `cargo xtask mesh down` first"
        );
    }
    Ok(())
}

/// Serialises the timing-sensitive tests across threads and test binaries (`flock` on a file
/// in the temp dir), so concurrent tests do not disturb each other's measurements. Fails at
/// once, instead of waiting for ever, while a lab is up.
pub fn exclusive() -> Result<Flock<File>> {
    fail_if_lab_holds_lock()?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path())?;
    let mut lock = match Flock::lock(f, FlockArg::LockExclusive) {
        Ok(l) => l,
        Err((_, e)) => bail!("flock: {e}"),
    };
    lock.set_len(0)?;
    lock.write_all(std::process::id().to_string().as_bytes())?;
    Ok(lock)
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
