//! Running `meshprobe agent --output json` in a namespace (CONTRACT.md, "meshprobe agent") and
//! `meshprobe consume --json`.
//!
//! An [`Agent`] keeps every JSON line it printed (ready, summary, probe, peer_added,
//! peer_removed) with the time it arrived, collected by its [`ChildGuard`]'s stdout handler; its
//! stderr goes to a file (the agent logs for as long as it runs, so it is not kept in memory). The admin port
//! is reached with a plain HTTP/1.0 request from inside the namespace.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
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

/// How long an agent may take to print its ready line.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Drop`] waits after SIGTERM (the agent's shutdown grace plus a margin) before
/// SIGKILL.
pub const AGENT_TERM_WAIT: Duration = Duration::from_secs(10);

/// Every setting name of CONTRACT.md's table that is read from the environment: removed from
/// the agent's environment unless the test sets it, so the caller's shell cannot leak into a
/// test.
pub const AGENT_ENV_NAMES: &[&str] = &[
    "MESHPROBE_CONFIG",
    "MESHPROBE_NODE_ID",
    "MESHPROBE_ZONE",
    "MESHPROBE_RACK",
    "SERVERS_ZK",
    "ROOT_PATH_ZK",
    "HEART_BEAT_NODE_PATH",
    "CONN_TIMEOUT",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_PRODUCER_GROUP",
    "REGISTER_PUBLIC_DNS",
    "REGISTER_PUBLIC_PORT",
    "REGISTER_LISTENER_DNS",
    "REGISTER_LISTENER_PORT",
    "MESHPROBE_PEERS",
    "MESHPROBE_PEERS_FILE",
    "MESHPROBE_INTERVAL",
    "MESHPROBE_JITTER",
    "MESHPROBE_TIMEOUT",
    "MESHPROBE_SIZES",
    "MESHPROBE_WINDOW",
    "MESHPROBE_PEER_GRACE",
    "MESHPROBE_OUTPUT",
    "MESHPROBE_KAFKA_PROBES",
    "MESHPROBE_KAFKA_BUFFER_MESSAGES",
    "MESHPROBE_KAFKA_COMPRESSION",
    "MESHPROBE_ADMIN_LISTEN",
    "MESHPROBE_METRICS_PEER_LIMIT",
    "MESHPROBE_METRICS_WORST_PEERS",
    "MESHPROBE_SHUTDOWN_GRACE",
    "MESHPROBE_INTERFACES",
    "MESHPROBE_REFLECT_ALLOW",
    "MESHPROBE_REFLECT_BUDGET_PER_SOURCE",
    "MESHPROBE_REFLECT_BUDGET_TOTAL",
    "MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT",
];

/// One stdout JSON line and when the harness read it.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub v: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.v["type"].as_str().unwrap_or("")
    }
}

/// A number field that may be a JSON number or a decimal string (proto3 JSON writes 64-bit
/// integers as strings); 0 when absent.
pub fn num(v: &Value, key: &str) -> u64 {
    match &v[key] {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `v[outer][inner]` as a signed number (e.g. `network_rtt_ns.p50`); `None` when absent.
pub fn num2(v: &Value, outer: &str, inner: &str) -> Option<i64> {
    match &v[outer][inner] {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `src`, `dst` and `window_seq` of a summary line: what identifies it.
pub fn summary_key(v: &Value) -> (String, String, u64) {
    (
        v["src"].as_str().unwrap_or("").to_string(),
        v["dst"].as_str().unwrap_or("").to_string(),
        num(v, "window_seq"),
    )
}

/// How to start an agent: environment variables and extra flags on top of
/// `meshprobe agent --output json`.
#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    /// Do not keep `{"type":"probe"}` lines (long-running labs: memory stays flat).
    pub drop_probe_lines: bool,
}

impl AgentConfig {
    pub fn new() -> AgentConfig {
        AgentConfig::default()
    }

    /// Sets an environment variable (a setting by its environment name).
    pub fn env(mut self, key: &str, value: impl ToString) -> AgentConfig {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Removes an environment variable set before.
    pub fn unset(mut self, key: &str) -> AgentConfig {
        self.env.remove(key);
        self
    }

    /// Appends command-line arguments.
    pub fn arg<S: ToString>(mut self, args: impl IntoIterator<Item = S>) -> AgentConfig {
        self.args.extend(args.into_iter().map(|s| s.to_string()));
        self
    }
}

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
    stderr_path: PathBuf,
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
        let mut cmd = ns.command(&argv);
        for k in AGENT_ENV_NAMES {
            cmd.env_remove(k);
        }
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
            stderr_path,
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
        &self.stderr_path
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

/// Sum of the samples of `name` in a Prometheus text exposition (`name` or `name{...}`,
/// followed by a value); `None` if there is none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A plain HTTP/1.0 GET from inside namespace `ns_name` (a harness namespace): (status, body).
pub fn http_get_in(ns_name: &str, sa: SocketAddr, path: &str) -> Result<(u16, String)> {
    let ns_name = ns_name.to_string();
    let path = path.to_string();
    let h = thread::spawn(move || -> Result<(u16, String)> {
        let fd = File::open(format!("/run/netns/{ns_name}"))
            .with_context(|| format!("opening /run/netns/{ns_name}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {ns_name}"))?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .with_context(|| format!("connecting to {sa}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {sa}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading the answer to GET {path}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("GET {path}: no header end in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("GET {path}: bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    });
    h.join().map_err(|_| anyhow!("http_get thread panicked"))?
}

/// Runs `BIN consume --kafka-bootstrap-servers BOOTSTRAP --kafka-topic TOPIC --json ARGS` in
/// `ns` to completion (at most 120 s) and returns its JSON lines. Fails unless it exits 0.
pub fn consume(
    bin: &Path,
    ns: &Netns,
    bootstrap: &str,
    topic: &str,
    args: &[&str],
) -> Result<Vec<Value>> {
    let mut argv: Vec<&str> = vec![
        bin.to_str().expect("utf-8 binary path"),
        "consume",
        "--kafka-bootstrap-servers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--json",
    ];
    argv.extend_from_slice(args);
    let mut cmd = ns.command(&argv);
    for k in AGENT_ENV_NAMES {
        cmd.env_remove(k);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "meshprobe consume {bootstrap} {topic} {args:?} exited {}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout.lines().filter_map(parse_json_line).collect())
}

// ---- a lab: mesh + services + agents --------------------------------------------------------

/// Short settings that keep the agent tests quick (CONTRACT.md names).
pub const TEST_WINDOW: &str = "2s";
pub const TEST_WINDOW_DURATION: Duration = Duration::from_secs(2);
pub const TEST_INTERVAL: &str = "100ms";
pub const TEST_CONN_TIMEOUT_S: u64 = 4;
pub const TEST_PEER_GRACE: &str = "2s";
pub const TEST_SHUTDOWN_GRACE: &str = "3s";
/// CLOCK_TAI now, in nanoseconds (the agents' window clock).
pub fn tai_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_TAI).expect("CLOCK_TAI");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The index (`window_seq`) of the window in progress now, for windows of `len`: agents align
/// windows to CLOCK_TAI, `window_seq = window_start_tai_ns / window_length_ns`. Its summary is
/// printed once it ends.
pub fn window_now_of(len: Duration) -> u64 {
    tai_now_ns() / len.as_nanos() as u64
}

/// [`window_now_of`] the test window ([`TEST_WINDOW_DURATION`]).
pub fn window_now() -> u64 {
    window_now_of(TEST_WINDOW_DURATION)
}

/// The znode folder with the defaults ROOT_PATH_ZK=meshprobe, HEART_BEAT_NODE_PATH=heartbeat.
pub const HEARTBEAT_PATH: &str = "/meshprobe/heartbeat";
pub const ZK_PORT: u16 = 2181;
pub const KAFKA_PORT: u16 = 9092;
pub const TEST_TOPIC: &str = "distributedTrace";

/// A [`Star`](crate::star::Star) with ZooKeeper and/or the broker in its core namespace, and
/// agents on its nodes. Drop order: agents, broker, ZooKeeper, mesh, then the test lock.
pub struct Cluster {
    pub agents: BTreeMap<usize, Agent>,
    pub kafka: Option<crate::services::Tansu>,
    pub zk: Option<crate::services::ZooKeeper>,
    pub star: crate::star::Star,
    pub family: crate::topo::Family,
    pub env: crate::env::TestEnv,
}

impl Cluster {
    /// `Ok(None)` (after printing why) when the test must be skipped: no root, a tool, the
    /// meshprobe binary, java/ZooKeeper (with `zk`) or tansu (with `kafka`) missing.
    pub fn acquire(
        test: &str,
        nodes: usize,
        family: crate::topo::Family,
        zk: bool,
        kafka: bool,
    ) -> Result<Option<Cluster>> {
        let missing = if zk {
            crate::services::zookeeper_missing()
        } else {
            None
        }
        .or_else(|| {
            if kafka {
                crate::services::tansu_missing()
            } else {
                None
            }
        });
        if let Some(why) = missing {
            crate::env::skip(test, &why);
            return Ok(None);
        }
        let Some(env) = crate::env::TestEnv::acquire(test, &["ping", "nft"])? else {
            return Ok(None);
        };
        let star = crate::star::Star::new(nodes)?;
        let core_ip = star.core_ip(family);
        let zk = if zk {
            Some(crate::services::ZooKeeper::start(
                star.core(),
                core_ip,
                ZK_PORT,
            )?)
        } else {
            None
        };
        let kafka = if kafka {
            let t = crate::services::Tansu::start(star.core(), core_ip, KAFKA_PORT)?;
            t.create_topic(TEST_TOPIC, 3)
                .with_context(|| format!("creating topic {TEST_TOPIC}"))?;
            Some(t)
        } else {
            None
        };
        Ok(Some(Cluster {
            agents: BTreeMap::new(),
            kafka,
            zk,
            star,
            family,
            env,
        }))
    }

    pub fn bin(&self) -> &Path {
        &self.env.mp.bin
    }

    /// Node `i`'s id: `node<i>`.
    pub fn node_id(i: usize) -> String {
        format!("node{i}")
    }

    pub fn node_ip(&self, i: usize) -> IpAddr {
        self.star.node_ip(i, self.family)
    }

    pub fn zk(&self) -> &crate::services::ZooKeeper {
        self.zk.as_ref().expect("lab without ZooKeeper")
    }

    pub fn zk_mut(&mut self) -> &mut crate::services::ZooKeeper {
        self.zk.as_mut().expect("lab without ZooKeeper")
    }

    pub fn kafka(&self) -> &crate::services::Tansu {
        self.kafka.as_ref().expect("lab without broker")
    }

    pub fn kafka_mut(&mut self) -> &mut crate::services::Tansu {
        self.kafka.as_mut().expect("lab without broker")
    }

    /// The test settings for node `i`: ZooKeeper and Kafka of the lab (when running), the
    /// node's address as REGISTER_PUBLIC_DNS, short window/interval/grace, admin on
    /// 127.0.0.1:9862.
    pub fn config(&self, i: usize) -> AgentConfig {
        let mut c = AgentConfig::new()
            .env("MESHPROBE_NODE_ID", Self::node_id(i))
            .env("REGISTER_PUBLIC_DNS", self.node_ip(i))
            .env("MESHPROBE_WINDOW", TEST_WINDOW)
            .env("MESHPROBE_INTERVAL", TEST_INTERVAL)
            .env("CONN_TIMEOUT", TEST_CONN_TIMEOUT_S)
            .env("MESHPROBE_PEER_GRACE", TEST_PEER_GRACE)
            .env("MESHPROBE_SHUTDOWN_GRACE", TEST_SHUTDOWN_GRACE)
            .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862")
            // Tests probe agents with `meshprobe ping` from the core, which is no peer: the
            // lab's networks are allowed besides the peers (the default answers peers only).
            .env("MESHPROBE_REFLECT_ALLOW", "198.18.0.0/15,fd00::/8");
        if let Some(zk) = &self.zk {
            c = c.env("SERVERS_ZK", zk.connect_string());
        }
        if let Some(k) = &self.kafka {
            c = c
                .env("KAFKA_BOOTSTRAP_SERVERS", k.bootstrap())
                .env("KAFKA_TOPIC", TEST_TOPIC);
        }
        c
    }

    /// Starts the agent of node `i` with `cfg`, waits for its ready line and checks its
    /// timestamping (kernel, unless MESHPROBE_TESTS_ALLOW_SOCKET=1).
    pub fn start_agent_with(&mut self, i: usize, cfg: &AgentConfig) -> Result<&mut Agent> {
        if self.agents.contains_key(&i) {
            bail!("node {i} already runs an agent");
        }
        let a = Agent::start(&self.env.mp.bin, self.star.node(i), &Self::node_id(i), cfg)?;
        let ready = a.ready.clone().unwrap_or_default();
        self.env.mp.check_timestamping(
            &format!("agent {}", a.node_id),
            &ready,
            &a.stderr_tail(20),
        )?;
        self.agents.insert(i, a);
        Ok(self.agents.get_mut(&i).expect("just inserted"))
    }

    /// [`Cluster::start_agent_with`] the lab's [`Cluster::config`].
    pub fn start_agent(&mut self, i: usize) -> Result<&mut Agent> {
        let cfg = self.config(i);
        self.start_agent_with(i, &cfg)
    }

    pub fn agent(&self, i: usize) -> &Agent {
        self.agents
            .get(&i)
            .unwrap_or_else(|| panic!("no agent on node {i}"))
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Agent {
        self.agents
            .get_mut(&i)
            .unwrap_or_else(|| panic!("no agent on node {i}"))
    }

    /// Every summary line printed by every agent so far.
    pub fn stdout_summaries(&self) -> Vec<Value> {
        self.agents.values().flat_map(Agent::summaries).collect()
    }

    /// Highest window_seq printed by any agent so far (0 if none).
    pub fn max_window_seq(&self) -> u64 {
        self.stdout_summaries()
            .iter()
            .map(|s| num(s, "window_seq"))
            .max()
            .unwrap_or(0)
    }

    /// `meshprobe consume` of the lab's topic from the core namespace.
    pub fn consume(&self, args: &[&str]) -> Result<Vec<Value>> {
        consume(
            &self.env.mp.bin,
            self.star.core(),
            &self.kafka().bootstrap(),
            TEST_TOPIC,
            args,
        )
    }

    /// Waits until every agent in `agents` printed a summary with `received > 0` towards every
    /// other one of them in a window `>= min_seq` (at most `timeout`).
    pub fn wait_pairs_measured(
        &mut self,
        agents: &[usize],
        min_seq: u64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for &i in agents {
                let sums = self.agent(i).summaries();
                for &j in agents {
                    if i == j {
                        continue;
                    }
                    let dst = Self::node_id(j);
                    if !sums.iter().any(|s| {
                        s["dst"] == dst.as_str()
                            && num(s, "window_seq") >= min_seq
                            && num(s, "received") > 0
                    }) {
                        missing.push(format!("{}->{dst}", Self::node_id(i)));
                    }
                }
                if !self.agent_mut(i).is_running() {
                    let a = self.agent(i);
                    bail!("{} exited; stderr:\n{}", a.label(), a.stderr_tail(40));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no summary with received > 0 in a window >= {min_seq} within {timeout:?} \
                     for {missing:?}"
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// State for a failure message: TCP sockets and neighbours of every namespace, ZooKeeper's
    /// connections and members, the tail of every agent's stderr.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut section = |title: String, body: String| {
            out.push_str(&format!("--- {title}\n{}\n", body.trim_end()));
        };
        let run = |ns: &Netns, argv: &[&str]| match ns.output(argv) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("{e:#}"),
        };
        section(
            "core: ss -tnoi".into(),
            run(self.star.core(), &["ss", "-tnoi"]),
        );
        for i in self.star.node_indices() {
            let ns = self.star.node(i);
            section(format!("node{i}: ss -tnoi"), run(ns, &["ss", "-tnoi"]));
            section(format!("node{i}: ip neigh"), run(ns, &["ip", "neigh"]));
        }
        if let Some(zk) = &self.zk {
            section(
                "ZooKeeper cons".into(),
                zk.four_letter("cons").unwrap_or_else(|e| format!("{e:#}")),
            );
            section(
                format!("ZooKeeper ls {HEARTBEAT_PATH}"),
                format!("{:?}", zk.ls(HEARTBEAT_PATH)),
            );
            section("ZooKeeper log".into(), zk.log_tail(15));
        }
        for (i, a) in &self.agents {
            section(format!("agent node{i} stderr"), a.stderr_tail(25));
        }
        out
    }

    /// SIGTERMs every agent, then waits for each exit (at most `timeout` each).
    pub fn stop_agents(&mut self, timeout: Duration) -> Result<()> {
        for a in self.agents.values_mut() {
            a.sigterm()?;
        }
        for a in self.agents.values_mut() {
            let st = a.wait_exit(timeout)?;
            if !st.success() {
                bail!(
                    "{} exited {st} after SIGTERM; stderr:\n{}",
                    a.label(),
                    a.stderr_tail(40)
                );
            }
        }
        Ok(())
    }
}
