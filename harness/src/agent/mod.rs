//! Running `meshprobe agent --output json` in a namespace (CONTRACT.md, "meshprobe agent"),
//! and a [`Cluster`] of agents with ZooKeeper and the broker.
//!
//! An [`Agent`] keeps every JSON line it printed (ready, summary, probe, peer_added,
//! peer_removed) with the time it arrived, collected by its [`ChildGuard`]'s stdout handler; its
//! stderr goes to a file (the agent logs for as long as it runs, so it is not kept in memory). The admin port
//! is reached with a plain HTTP/1.0 request from inside the namespace.

mod admin;
mod cluster;
mod config;
mod consume;
mod lines;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::child::{ChildGuard, parse_json_line, run_with_timeout};
use crate::netns::Netns;
use crate::services::TempDir;

pub use admin::*;
pub use cluster::*;
pub use config::*;
pub use consume::*;
pub use lines::*;

/// How long an agent may take to print its ready line.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Drop`] waits after SIGTERM (the agent's shutdown grace plus a margin) before
/// SIGKILL.
pub const AGENT_TERM_WAIT: Duration = Duration::from_secs(10);

/// A running (or exited) `meshprobe agent`.
pub struct Agent {
    pub node_id: String,
    ns_name: String,
    /// The process (the harness's one child guard); declared before `_dir`, which holds its
    /// stderr file.
    child: ChildGuard,
    events: Arc<Mutex<Vec<Event>>>,
    /// Non-JSON stdout lines (table output, stray prints).
    other_stdout: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
    /// The ready line, once seen.
    pub ready: Option<Value>,
    pub started: Instant,
    /// The admin address configured (MESHPROBE_ADMIN_LISTEN / --admin-listen), for before the
    /// ready line.
    admin_hint: Option<SocketAddr>,
}

impl Agent {
    /// Starts `BIN agent --output json ARGS` in `ns` with `cfg` (and `MESHPROBE_NODE_ID =
    /// node_id` unless `cfg` sets it), without waiting for anything.
    pub fn spawn(bin: &Path, ns: &Netns, node_id: &str, cfg: &AgentConfig) -> Result<Agent> {
        let dir = TempDir::new(&format!("agent-{node_id}"))?;
        let stderr_path = dir.path().join("stderr.log");
        let mut argv: Vec<OsString> = vec![
            bin.as_os_str().to_owned(),
            "agent".into(),
            "--output".into(),
            "json".into(),
        ];
        argv.extend(cfg.args.iter().map(OsString::from));
        let mut cmd = match &cfg.pre_exec {
            None => ns.command(&argv),
            Some(hook) => {
                let mut cmd = ns.command_direct(&argv)?;
                let hook = hook.0.clone();
                // SAFETY: PreExec's contract: async-signal-safe.
                unsafe { cmd.pre_exec(move || hook()) };
                cmd
            }
        };
        remove_agent_env(&mut cmd);
        if !cfg.env.contains_key("MESHPROBE_NODE_ID") {
            cmd.env("MESHPROBE_NODE_ID", node_id);
        }
        // The agent's log filter (tracing EnvFilter syntax); the caller's value wins.
        if std::env::var_os("MESHPROBE_LOG").is_none() {
            cmd.env("MESHPROBE_LOG", "info");
        }
        cmd.envs(&cfg.env);
        let label = format!("[{}] meshprobe agent {node_id}", ns.name());
        let events = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        let (ev, ot) = (events.clone(), other.clone());
        let drop_probes = cfg.drop_probe_lines;
        let on_line = move |line: String| match parse_json_line(&line) {
            Some(v) if drop_probes && v["type"] == "probe" => {}
            Some(v) => ev.lock().unwrap().push(Event {
                at: Instant::now(),
                v,
            }),
            None => ot.lock().unwrap().push(line),
        };
        let child = ChildGuard::spawn_streaming(cmd, label, on_line, &stderr_path)?
            .with_term_grace(AGENT_TERM_WAIT);
        let admin_hint = cfg
            .args
            .iter()
            .position(|a| a == "--admin-listen")
            .and_then(|p| cfg.args.get(p + 1))
            .or(cfg.env.get("MESHPROBE_ADMIN_LISTEN"))
            .and_then(|s| s.parse().ok());
        Ok(Agent {
            admin_hint,
            node_id: node_id.to_string(),
            ns_name: ns.name().to_string(),
            child,
            events,
            other_stdout: other,
            _dir: dir,
            ready: None,
            started: Instant::now(),
        })
    }

    /// [`Agent::spawn`], then waits for the ready line (at most [`AGENT_READY_TIMEOUT`]).
    pub fn start(bin: &Path, ns: &Netns, node_id: &str, cfg: &AgentConfig) -> Result<Agent> {
        let mut a = Agent::spawn(bin, ns, node_id, cfg)?;
        a.wait_ready(AGENT_READY_TIMEOUT)?;
        Ok(a)
    }

    /// Waits for `{"type":"ready","role":"agent",...}`; returns it.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value> {
        let ev = self
            .wait_for(timeout, |e| e.kind() == "ready")
            .context("meshprobe agent ready line")?;
        if ev.v["role"] != "agent" {
            bail!(
                "{}: ready line has role {}: {}",
                self.label(),
                ev.v["role"],
                ev.v
            );
        }
        self.ready = Some(ev.v.clone());
        Ok(ev.v)
    }

    /// When the ready line was read.
    pub fn ready_at(&self) -> Option<Instant> {
        self.events()
            .into_iter()
            .find(|e| e.kind() == "ready")
            .map(|e| e.at)
    }

    pub fn label(&self) -> &str {
        self.child.label()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Everything printed so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Number of events so far (a mark for [`Agent::events_since`]).
    pub fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Events after `mark`.
    pub fn events_since(&self, mark: usize) -> Vec<Event> {
        self.events.lock().unwrap()[mark..].to_vec()
    }

    /// Lines of type `kind` so far.
    pub fn lines(&self, kind: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind() == kind)
            .map(|e| e.v.clone())
            .collect()
    }

    /// `{"type":"summary",...}` lines so far.
    pub fn summaries(&self) -> Vec<Value> {
        self.lines("summary")
    }

    /// Stdout lines that were not JSON.
    pub fn other_stdout(&self) -> Vec<String> {
        self.other_stdout.lock().unwrap().clone()
    }

    /// The first event (from the very start) satisfying `pred`, waiting at most `timeout`.
    /// Fails early, with stderr, if the agent exits.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        self.wait_for_since(0, timeout, pred)
    }

    /// Like [`Agent::wait_for`], among the events after `mark`.
    pub fn wait_for_since(
        &mut self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        let mut seen = mark;
        loop {
            {
                let evs = self.events.lock().unwrap();
                if let Some(e) = evs.iter().skip(seen).find(|e| pred(e)) {
                    return Ok(e.clone());
                }
                seen = evs.len().max(seen);
            }
            if !self.is_running() {
                thread::sleep(Duration::from_millis(100));
                let evs = self.events.lock().unwrap();
                if let Some(e) = evs.iter().skip(mark).find(|e| pred(e)) {
                    return Ok(e.clone());
                }
                drop(evs);
                let status = self.try_exited().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "{} exited ({status}) before the awaited line; stderr:\n{}",
                    self.label(),
                    self.stderr_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no matching line within {timeout:?}; stderr (tail):\n{}",
                    self.label(),
                    self.stderr_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Some(status)` once the agent exited (reaps it).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_exited()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Waits up to `timeout` for the exit (an error, the agent left running, if it does not);
    /// then lets the stdout reader finish.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(st) = self.child.wait_status(timeout) else {
            bail!(
                "{} did not exit within {timeout:?}; stderr (tail):\n{}",
                self.label(),
                self.stderr_tail(40)
            );
        };
        self.child.join_readers();
        Ok(st)
    }

    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        self.child.signal(sig)
    }

    /// SIGTERM (graceful leave: deregister, flush).
    pub fn sigterm(&mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// The file the agent's stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        self.child
            .stderr_path()
            .expect("agents are spawned with stderr to a file")
    }

    pub fn stderr_text(&self) -> String {
        self.child.stderr_text()
    }

    /// The last `lines` lines of stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        self.child.stderr_tail(lines)
    }

    /// The admin address from the ready line (before it: the configured one), with an
    /// unspecified IP replaced by loopback.
    pub fn admin_addr(&self) -> Result<SocketAddr> {
        let ready = match (&self.ready, self.admin_hint) {
            (Some(r), _) => r,
            (None, Some(mut sa)) => {
                if sa.ip().is_unspecified() {
                    sa.set_ip(Ipv4Addr::LOCALHOST.into());
                }
                return Ok(sa);
            }
            (None, None) => bail!(
                "{}: not ready yet, and no admin address configured",
                self.label()
            ),
        };
        let s = ready["admin"]
            .as_str()
            .ok_or_else(|| anyhow!("{}: ready line has no admin address: {ready}", self.label()))?;
        let mut sa: SocketAddr = s
            .parse()
            .with_context(|| format!("admin address {s:?} in {ready}"))?;
        if sa.ip().is_unspecified() {
            sa.set_ip(match sa.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(sa)
    }

    /// `GET path` on the admin port from inside the agent's namespace: (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let sa = self.admin_addr()?;
        http_get_in(&self.ns_name, sa, path)
    }

    /// GET /metrics.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = self.http_get("/metrics")?;
        if status != 200 {
            bail!("{}: /metrics answered {status}: {body}", self.label());
        }
        Ok(body)
    }

    /// Sum of every sample of metric `name` (any labels; a counter's `name_total` too) on
    /// /metrics; `None` if absent.
    pub fn metric(&self, name: &str) -> Result<Option<f64>> {
        let text = self.metrics()?;
        Ok(metric_sum(&text, name).or_else(|| metric_sum(&text, &format!("{name}_total"))))
    }

    /// [`Agent::metric`], an error if the agent does not export it.
    pub fn metric_value(&self, name: &str) -> Result<f64> {
        self.metric(name)?
            .ok_or_else(|| anyhow!("{}: /metrics has no {name}", self.label()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The guard stops the process when it drops (SIGTERM, AGENT_TERM_WAIT, SIGKILL);
        // stopping it here first lets a failing test's message show the agent's last words.
        if std::thread::panicking() {
            let _ = self.signal(Signal::SIGTERM);
            let _ = self.child.wait_status(AGENT_TERM_WAIT);
            eprintln!(
                "harness: {} stderr (tail) at test failure:\n{}",
                self.label(),
                self.stderr_tail(30)
            );
        }
    }
}
