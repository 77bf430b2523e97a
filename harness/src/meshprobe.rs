//! Running the `meshprobe` binary in namespaces and reading its JSON output (CONTRACT.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::child::{ChildGuard, Finished};
use crate::netns::Netns;

pub use crate::child::READY_TIMEOUT;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `MESHPROBE_BIN`, else `<workspace>/target/release/meshprobe`, else `target/debug/meshprobe`.
/// `Err` if `MESHPROBE_BIN` is set but missing; `Ok(None)` if nothing is built.
pub fn find_binary() -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("MESHPROBE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MESHPROBE_BIN={} does not exist", p.display());
        }
        return Ok(Some(p));
    }
    let root = workspace_root();
    for p in ["target/release/meshprobe", "target/debug/meshprobe"] {
        let p = root.join(p);
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// How much longer than asked (per cent of the added delay) the delay element may hold
/// packets. It spins in the softirq that delivers them, so a packet that arrives while another
/// is held waits for that hold too; with the lab's probe rates this adds 0.4 to 0.9 % at 2 ms
/// (the rise measured +2009 to +2018 µs in CI runs). Never less than asked.
pub const DELAY_SLACK_PCT: i64 = 2;

/// The delay element's binary (`meshprobe-delay`, built beside meshprobe): `MESHPROBE_DELAY_BIN`,
/// else the sibling of the meshprobe binary `meshprobe_bin`.
pub fn delay_binary(meshprobe_bin: &Path) -> Result<PathBuf> {
    sibling_binary(meshprobe_bin, "meshprobe-delay", "MESHPROBE_DELAY_BIN")
}

/// The tracepoint reference's binary (`meshprobe-tracer`, built beside meshprobe):
/// `MESHPROBE_TRACER_BIN`, else the sibling of the meshprobe binary `meshprobe_bin`.
pub fn tracer_binary(meshprobe_bin: &Path) -> Result<PathBuf> {
    sibling_binary(meshprobe_bin, "meshprobe-tracer", "MESHPROBE_TRACER_BIN")
}

/// A tool of this workspace built beside meshprobe (`cargo xtask build` builds them all): the
/// file `env` names, else `name` next to `meshprobe_bin`.
fn sibling_binary(meshprobe_bin: &Path, name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let p = meshprobe_bin.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} does not exist: build it beside meshprobe \
             (`cargo build --release -p probe-user -p meshprobe-delay -p meshprobe-tracer`, or \
             `cargo xtask build`), or set {env}",
            p.display()
        );
    }
    Ok(p)
}

/// Percentile summary of one quantity (nanoseconds).
#[derive(Clone, Debug, Deserialize)]
pub struct Dist {
    pub min: i64,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
    pub mean: f64,
}

/// `{"type":"probe",...}`.
#[derive(Clone, Debug, Deserialize)]
pub struct Probe {
    pub peer: String,
    pub ssid: u32,
    pub seq: u32,
    pub t1_ns: u64,
    pub t2_ns: u64,
    pub t3_ns: u64,
    pub t4_ns: u64,
    pub network_rtt_ns: i64,
    pub turnaround_ns: i64,
    pub app_rtt_ns: i64,
    pub stack_overhead_ns: i64,
    pub timestamping: String,
    pub t4_source: String,
    /// Absent from binaries before issue 16.
    #[serde(default)]
    pub t1_source: Option<String>,
    /// What the reflector's follow-up TLV said (issue 18; absent before).
    #[serde(default)]
    pub t2_source: Option<String>,
    #[serde(default)]
    pub t3_source: Option<String>,
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// `{"type":"summary",...}` (sender).
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    pub peer: String,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Replies that came after the probe's timeout (the probe counts as lost).
    pub late: u64,
    /// Replies that did not count, by reason (absent from binaries before issue 13).
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Authenticated mode `optional`: replies accepted without authentication (issue 16).
    #[serde(default)]
    pub unauthenticated: u64,
    /// Two-step T3 (issue 18): follow-up corrections applied and follow-ups not used.
    #[serde(default)]
    pub follow_up_applied: u64,
    #[serde(default)]
    pub follow_up_ignored: u64,
    pub network_rtt_ns: Option<Dist>,
    pub turnaround_ns: Option<Dist>,
    pub app_rtt_ns: Option<Dist>,
    pub stack_overhead_ns: Option<Dist>,
    pub timestamping: String,
    /// "tai" or "monotonic" with kernel stamps (absent before issue 17, and with socket ones).
    #[serde(default)]
    pub kernel_clock: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Everything a finished `meshprobe ping --json` printed.
#[derive(Debug)]
pub struct PingRun {
    pub ready: Option<Value>,
    pub probes: Vec<Probe>,
    pub losses: Vec<Value>,
    pub duplicates: Vec<Value>,
    pub reordered: Vec<Value>,
    pub summaries: Vec<Summary>,
    /// The `stamping_summary` line (eBPF counters of the sender's programs), if printed.
    pub stamping: Option<Value>,
    pub exit_ok: bool,
    pub stderr: String,
}

impl PingRun {
    /// The `t1_source` of a kernel-stamped probe of this run: "handoff" when its ready line
    /// says the driver hand-off program is on, else "tc".
    pub fn kernel_t1_source(&self) -> &'static str {
        if self.ready.as_ref().is_some_and(|r| r["handoff"] == "on") {
            "handoff"
        } else {
            "tc"
        }
    }

    /// Parses the JSON lines of a finished sender.
    pub fn parse(fin: &Finished) -> Result<PingRun> {
        let mut run = PingRun {
            ready: None,
            probes: Vec::new(),
            losses: Vec::new(),
            duplicates: Vec::new(),
            reordered: Vec::new(),
            summaries: Vec::new(),
            stamping: None,
            exit_ok: fin.status.success(),
            stderr: fin.stderr_text(),
        };
        for v in fin.json_lines() {
            match v["type"].as_str() {
                Some("ready") => run.ready = Some(v),
                Some("probe") => run.probes.push(
                    serde_json::from_value(v.clone()).with_context(|| format!("probe line {v}"))?,
                ),
                Some("loss") => run.losses.push(v),
                Some("stamping_summary") => run.stamping = Some(v),
                Some("duplicate") => run.duplicates.push(v),
                Some("reordered") => run.reordered.push(v),
                Some("summary") => run.summaries.push(
                    serde_json::from_value(v.clone())
                        .with_context(|| format!("summary line {v}"))?,
                ),
                _ => {}
            }
        }
        Ok(run)
    }

    /// The only summary (single peer), or an error that includes stderr.
    pub fn summary(&self) -> Result<&Summary> {
        match self.summaries.as_slice() {
            [s] => Ok(s),
            other => Err(anyhow!(
                "expected one summary line, got {}; exit ok={}; stderr:\n{}",
                other.len(),
                self.exit_ok,
                self.stderr
            )),
        }
    }

    pub fn network_rtts(&self) -> Vec<i64> {
        self.probes.iter().map(|p| p.network_rtt_ns).collect()
    }

    pub fn app_rtts(&self) -> Vec<i64> {
        self.probes.iter().map(|p| p.app_rtt_ns).collect()
    }
}

/// A running `meshprobe reflect --json`.
pub struct Reflector {
    pub child: ChildGuard,
    pub ready: Value,
}

impl Reflector {
    /// SIGTERM, then the `reflector_summary` line.
    pub fn stop(mut self) -> Result<Value> {
        let fin = self.child.stop()?;
        let sum = fin
            .json_lines()
            .into_iter()
            .find(|v| v["type"] == "reflector_summary")
            .ok_or_else(|| {
                anyhow!(
                    "reflector printed no reflector_summary (exit {}); stdout: {:?}; stderr:\n{}",
                    fin.status,
                    fin.stdout,
                    fin.stderr_text()
                )
            })?;
        if !fin.status.success() {
            bail!(
                "reflector exited {} after SIGTERM; stderr:\n{}",
                fin.status,
                fin.stderr_text()
            );
        }
        Ok(sum)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

/// Set to `1` to let tests run against a meshprobe that fell back to socket timestamps (useful
/// while the eBPF side is broken); by default a ready line without `"timestamping":"kernel"`
/// fails the test, since the programs under test would not be attached.
pub const ALLOW_SOCKET_ENV: &str = "MESHPROBE_TESTS_ALLOW_SOCKET";

/// The `meshprobe` binary under test.
#[derive(Clone, Debug)]
pub struct Meshprobe {
    pub bin: PathBuf,
    /// Fail when a reflector or sender reports anything but kernel timestamping.
    pub require_kernel: bool,
}

impl Meshprobe {
    pub fn new(bin: impl Into<PathBuf>) -> Meshprobe {
        let allow = std::env::var(ALLOW_SOCKET_ENV).is_ok_and(|v| v == "1");
        Meshprobe {
            bin: bin.into(),
            require_kernel: !allow,
        }
    }

    /// Checks a ready (or summary) line's `timestamping` against [`Meshprobe::require_kernel`].
    pub fn check_timestamping(&self, what: &str, line: &Value, stderr: &str) -> Result<()> {
        let ts = line["timestamping"].as_str().unwrap_or("<missing>");
        if ts == "kernel" {
            return Ok(());
        }
        if self.require_kernel {
            let note = line["note"]
                .as_str()
                .map(|n| n.lines().next().unwrap_or(""))
                .unwrap_or("");
            let first_err = stderr
                .lines()
                .find(|l| l.contains("WARN") || l.contains("rror"))
                .unwrap_or("");
            bail!(
                "{what}: timestamping is {ts:?}, not \"kernel\": the eBPF programs under test are \
                 not attached (set {ALLOW_SOCKET_ENV}=1 to run anyway). note: {note} stderr: {first_err}"
            );
        }
        eprintln!("WARNING {what}: timestamping {ts:?} (allowed by {ALLOW_SOCKET_ENV})");
        Ok(())
    }

    /// `PREFIX... meshprobe SUB ARGS...`
    fn argv<'a>(&'a self, prefix: &[&'a str], sub: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = prefix.to_vec();
        v.extend([self.bin.to_str().expect("utf-8 binary path"), sub]);
        v.extend_from_slice(args);
        v
    }

    /// Starts `meshprobe reflect --json ARGS` in `ns` and waits for its ready line.
    pub fn reflect(&self, ns: &Netns, args: &[&str]) -> Result<Reflector> {
        self.reflect_under(ns, &[], args)
    }

    /// Like [`Meshprobe::reflect`], with the command run under `prefix` (e.g. `taskset -c 1`,
    /// which execs meshprobe, so the child's pid is meshprobe's).
    pub fn reflect_under(&self, ns: &Netns, prefix: &[&str], args: &[&str]) -> Result<Reflector> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let mut child = ns.spawn(self.argv(prefix, "reflect", &a))?;
        let ready = child
            .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
            .context("meshprobe reflect ready line")?;
        if ready["role"] != "reflector" {
            bail!("reflector ready line has role {}: {ready}", ready["role"]);
        }
        self.check_timestamping("meshprobe reflect", &ready, &child.stderr_text())?;
        Ok(Reflector { child, ready })
    }

    /// Starts `meshprobe ping ARGS` in `ns` (add `--json` yourself) without waiting.
    pub fn ping_spawn(&self, ns: &Netns, args: &[&str]) -> Result<ChildGuard> {
        self.ping_spawn_under(ns, &[], args)
    }

    /// Like [`Meshprobe::ping_spawn`], with the command run under `prefix` (e.g.
    /// `taskset -c 0`).
    pub fn ping_spawn_under(
        &self,
        ns: &Netns,
        prefix: &[&str],
        args: &[&str],
    ) -> Result<ChildGuard> {
        ns.spawn(self.argv(prefix, "ping", args))
    }

    /// Runs `meshprobe ping --json ARGS` in `ns` to completion (at most `timeout`).
    pub fn ping(&self, ns: &Netns, args: &[&str], timeout: Duration) -> Result<PingRun> {
        self.ping_under(ns, &[], args, timeout)
    }

    /// Like [`Meshprobe::ping`], with the command run under `prefix` (e.g. `taskset -c 0`).
    pub fn ping_under(
        &self,
        ns: &Netns,
        prefix: &[&str],
        args: &[&str],
        timeout: Duration,
    ) -> Result<PingRun> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let mut child = self.ping_spawn_under(ns, prefix, &a)?;
        let fin = child.wait_exit(timeout)?;
        let run = PingRun::parse(&fin)?;
        if !run.exit_ok {
            bail!(
                "meshprobe ping {args:?} exited {}; stderr:\n{}",
                fin.status,
                run.stderr
            );
        }
        let ready = run
            .ready
            .clone()
            .ok_or_else(|| anyhow!("meshprobe ping printed no ready line"))?;
        self.check_timestamping("meshprobe ping", &ready, &run.stderr)?;
        Ok(run)
    }

    /// `meshprobe-delay ARGS...` (see [`delay_binary`]).
    fn delay_argv(&self, args: &[&str]) -> Result<Vec<String>> {
        let bin = delay_binary(&self.bin)?;
        let mut v = vec![
            bin.to_str()
                .context("meshprobe-delay path is not UTF-8")?
                .to_string(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        Ok(v)
    }

    /// Starts the tracepoint reference (`meshprobe-tracer`, see [`tracer_binary`]) for the
    /// STAMP ports `ports` (unauthenticated mode), machine-wide.
    pub fn tracer(&self, ports: &[u16]) -> Result<crate::trace::Tracer> {
        let args: Vec<String> = ports
            .iter()
            .flat_map(|p| ["--port".to_string(), p.to_string()])
            .collect();
        self.tracer_with(&args)
    }

    /// [`Meshprobe::tracer`] with the tracer's own arguments.
    pub fn tracer_with(&self, args: &[String]) -> Result<crate::trace::Tracer> {
        crate::trace::Tracer::start(&tracer_binary(&self.bin)?, args)
    }

    /// Starts `meshprobe-delay -I IF --delay D ARGS` in `ns` and waits for its ready line
    /// (JSON on stdout or a line mentioning "ready" on stderr).
    pub fn delay(&self, ns: &Netns, iface: &str, delay: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut a = vec!["-I", iface, "--delay", delay];
        a.extend_from_slice(args);
        let mut child = ns.spawn(self.delay_argv(&a)?)?;
        child
            .wait_ready_either(READY_TIMEOUT, |v| v["type"] == "ready", "ready")
            .context("meshprobe-delay ready line")?;
        Ok(child)
    }

    /// Starts `meshprobe-delay --json -I IF ARGS` in `ns` (ARGS say `--delay`, `--to`, ...)
    /// and waits for its ready line. Stop it with [`stop_delay`] for its summary.
    pub fn delay_element(&self, ns: &Netns, iface: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut a = vec!["--json", "-I", iface];
        a.extend_from_slice(args);
        let mut child = ns.spawn(self.delay_argv(&a)?)?;
        let ready = child
            .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
            .with_context(|| format!("meshprobe-delay {args:?} ready line"))?;
        if ready["role"] != "delay" {
            bail!("delay ready line has role {}: {ready}", ready["role"]);
        }
        Ok(child)
    }
}

/// Stops a `meshprobe-delay --json` (SIGTERM) and returns its `delay_summary` line
/// (`held`, `cut_short`, `dst_hit`).
pub fn stop_delay(mut child: ChildGuard) -> Result<Value> {
    let fin = child.stop()?;
    if !fin.status.success() {
        bail!(
            "meshprobe-delay exited {} after SIGTERM; stderr:\n{}",
            fin.status,
            fin.stderr_text()
        );
    }
    fin.json_lines()
        .into_iter()
        .find(|v| v["type"] == "delay_summary")
        .ok_or_else(|| {
            anyhow!(
                "meshprobe-delay printed no delay_summary; stdout: {:?}; stderr:\n{}",
                fin.stdout,
                fin.stderr_text()
            )
        })
}

/// Reads `ebpf_counters.NAME` from a reflector summary or a sender's `stamping_summary` (0 when
/// absent).
pub fn ebpf_counter(summary: &Value, name: &str) -> u64 {
    summary["ebpf_counters"][name].as_u64().unwrap_or(0)
}
