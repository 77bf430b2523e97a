//! Network namespaces that clean up after themselves.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::child::{ChildGuard, run_checked, run_with_timeout};

/// Every namespace this harness creates is named `PREFIX-<pid>-<n>-<role>`.
pub const PREFIX: &str = "mpt";

/// Bound on one helper command (ip, ethtool, nft, sysctl, ping -c ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// Names of namespaces on this machine (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    let out = run_checked(cmd, CMD_TIMEOUT)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Deletes namespaces left by harness processes that no longer exist (a test run or lab
/// supervisor that was SIGKILLed cannot run its destructors), after killing any process still
/// inside them. Returns the names deleted.
pub fn sweep_stale_namespaces() -> Vec<String> {
    let Ok(names) = list_namespaces() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut deleted = Vec::new();
    for name in names {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("harness: deleting stale namespace {name} (pid {pid} is gone)");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &name]);
        if let Ok(out) = run_with_timeout(cmd, CMD_TIMEOUT) {
            for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "delete", &name]);
        if run_with_timeout(cmd, CMD_TIMEOUT).is_ok() {
            deleted.push(name);
        }
    }
    deleted
}

/// The pid in a harness namespace name `PREFIX-<pid>-...`, if `name` is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.split('-');
    if parts.next() != Some(PREFIX) {
        return None;
    }
    parts.next().and_then(|p| p.parse::<u32>().ok())
}

fn sweep_stale() {
    sweep_stale_namespaces();
}

/// A network namespace; `Drop` deletes it (and with it its veth ends).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mpt-<pid>-<n>-<role>` and brings its loopback up.
    pub fn new(role: &str) -> Result<Netns> {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}-{}-{n}-{role}", std::process::id());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "add", &name]);
        run_checked(cmd, CMD_TIMEOUT).with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns { name };
        ns.run(["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME argv...` as a Command, not started.
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd.args(argv);
        cmd
    }

    /// `argv` exec'd directly (no `ip` process in between), the child entering the namespace
    /// in a pre_exec hook the way `ip netns exec` does: setns, a private mount namespace with
    /// the namespace's own /sys. Hooks the caller adds afterwards run inside it, right before
    /// exec (where a container runtime installs its seccomp filter).
    pub fn command_direct<I, S>(&self, argv: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        let mut argv = argv.into_iter();
        let prog = argv.next().context("command_direct: empty argv")?;
        let mut cmd = Command::new(prog);
        cmd.args(argv);
        let ns = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening /run/netns/{}", self.name))?;
        let name = CString::new(self.name.as_str())?;
        // SAFETY: only async-signal-safe syscalls on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                ok(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
                ok(libc::unshare(libc::CLONE_NEWNS))?;
                // Mount changes stay in this child.
                ok(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                ok(libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH))?;
                ok(libc::mount(
                    name.as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ))
            });
        }
        Ok(cmd)
    }

    /// Runs `argv` in the namespace; fails unless it exits 0; returns stdout.
    pub fn run<I, S>(&self, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.command(argv), CMD_TIMEOUT)
    }

    /// Runs `argv` in the namespace and returns its output whatever the exit status.
    pub fn output<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_timeout(self.command(argv), CMD_TIMEOUT)
    }

    /// Alias of [`Netns::run`] for shell-like call sites.
    pub fn exec<I, S>(&self, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run(argv)
    }

    /// Starts `argv` in the namespace as a guarded background process.
    pub fn spawn<I, S>(&self, argv: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<_> = argv.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let label = format!(
            "[{}] {}",
            self.name,
            argv.iter()
                .map(|s| s.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        ChildGuard::spawn(self.command(&argv), label)
    }

    fn join_ns(name: &str) -> Result<()> {
        let f = File::open(format!("/run/netns/{name}"))
            .with_context(|| format!("opening /run/netns/{name}"))?;
        setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
        Ok(())
    }

    /// Runs `f` on a fresh thread that joined this namespace, and returns its result. Sockets
    /// opened by `f` belong to the namespace (and stay there if returned). A panic in `f` is
    /// propagated.
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let name = self.name.as_str();
        thread::scope(|s| {
            let h = s.spawn(move || -> Result<T> {
                Self::join_ns(name)?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Like [`Netns::enter`] but in the background: the caller joins the handle.
    pub fn spawn_thread<T, F>(&self, f: F) -> thread::JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let name = self.name.clone();
        thread::spawn(move || -> Result<T> {
            Self::join_ns(&name)?;
            Ok(f())
        })
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Reads one counter from `/proc/net/snmp` (e.g. ("Udp", "InCsumErrors")) in the namespace.
    pub fn snmp_counter(&self, proto: &str, field: &str) -> Result<u64> {
        let text = self.run(["cat", "/proc/net/snmp"])?;
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
        let hdr = lines
            .next()
            .ok_or_else(|| anyhow!("no {proto} in /proc/net/snmp"))?;
        let val = lines.next().ok_or_else(|| anyhow!("no {proto} values"))?;
        let idx = hdr
            .split_whitespace()
            .position(|h| h == field)
            .ok_or_else(|| anyhow!("no {proto} {field}"))?;
        Ok(val.split_whitespace().nth(idx).unwrap_or("0").parse()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "delete", &self.name]);
        match run_with_timeout(cmd, CMD_TIMEOUT) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "harness: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("harness: ip netns delete {}: {e:#}", self.name),
        }
    }
}
