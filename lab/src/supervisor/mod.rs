//! `cargo xtask mesh up|status|logs|matrix|chaos|down`: a whole meshprobe cluster on this
//! machine ([`Lab`](crate::Lab): node namespaces on a bridge, ZooKeeper and the broker
//! in the core namespace, one agent per node, shaped links).
//!
//! `up` starts a supervisor (`meshprobe-lab mesh serve`, this binary in its own session) that owns the lab
//! and answers the other commands on a unix socket in [`STATE_DIR`]; every lab part is a guard
//! in it, so a clean exit removes everything. `down` asks it to stop, then sweeps what a
//! crashed supervisor may have left (namespaces and temp dirs of dead harness processes, the
//! processes inside them, the state dir). `up` runs the same sweep first.

mod chaos;
mod control;
mod serve;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meshprobe_harness::topo::Family;

use crate::spec::{self, LabSpec, Shape};

/// Where the running lab keeps its socket, pid, log and state.
pub const STATE_DIR: &str = "/run/meshprobe-mesh";
/// Nodes of a lab without --nodes or --matrix.
const DEFAULT_NODES: usize = 4;
/// How long `up` waits for the lab (services, agents) to be ready.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Subcommand)]
pub enum MeshCmd {
    /// Start a lab mesh in the background (cleans up a crashed one first).
    Up(UpArgs),
    /// Who is up, ZooKeeper members, what the topic holds.
    Status,
    /// Show a node's agent log (`node2`), or `zookeeper`, `broker`, `supervisor`.
    Logs {
        target: String,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run `meshprobe matrix` on the lab's topic (extra arguments go to it).
    Matrix {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a chaos experiment and print its verdict: kill-agent NODE | zk-outage [SECS] |
    /// broker-outage [SECS] | link-delay A B [RTT] | link-loss A B [PCT] | partition NODE [SECS].
    Chaos {
        #[arg(required = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Stop the lab and remove everything it created (safe to run twice).
    Down,
    /// The supervisor itself (started by `up`).
    #[command(hide = true)]
    Serve(UpArgs),
}

/// The lab's shape. Delays are added round-trip times per node pair.
#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    /// Number of nodes (one agent each) [default: 4, or the matrix file's].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Added RTT on every pair, e.g. 200us.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["zones", "matrix"])]
    pub delay: Option<Duration>,
    /// Loss on every pair, e.g. 1% (packets from the lower- to the higher-numbered node).
    #[arg(long, value_parser = spec::parse_loss)]
    pub loss: Option<f64>,
    /// Split the nodes into this many zones of consecutive nodes.
    #[arg(long, conflicts_with = "matrix")]
    pub zones: Option<usize>,
    /// Added RTT between nodes of one zone (with --zones).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100us", requires = "zones")]
    pub intra_zone: Duration,
    /// Added RTT between nodes of different zones (with --zones).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500us", requires = "zones")]
    pub inter_zone: Duration,
    /// A matrix file: per-pair added RTT (and loss), optional zones; fixes the node count.
    #[arg(long)]
    pub matrix: Option<PathBuf>,
    /// Agents register and probe over IPv6 (fd00::/64) instead of IPv4.
    #[arg(long)]
    pub ipv6: bool,
    /// Agent summary window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub window: Duration,
    /// Agent probe interval per peer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub interval: Duration,
}

impl UpArgs {
    pub fn spec(&self) -> Result<LabSpec> {
        let mut s = match &self.matrix {
            Some(p) => {
                let s = LabSpec::from_matrix_file(p)?;
                if let Some(n) = self.nodes
                    && n != s.nodes
                {
                    bail!("--nodes {n} but the matrix file has {} nodes", s.nodes);
                }
                s
            }
            None => LabSpec::new(self.nodes.unwrap_or(DEFAULT_NODES))?,
        };
        if let Some(z) = self.zones {
            s = s.zoned(z, self.intra_zone, self.inter_zone)?;
        }
        if let Some(d) = self.delay {
            s = s.uniform(d, 0.0)?;
        }
        if let Some(l) = self.loss {
            for a in 0..s.nodes {
                for b in a + 1..s.nodes {
                    let rtt = s.shape(a, b).rtt;
                    s.set(a, b, Shape { rtt, loss_pct: l });
                }
            }
        }
        if self.ipv6 {
            s.family = Family::V6;
        }
        if self.interval.is_zero() || self.window < self.interval * 2 {
            bail!(
                "--window {} must hold at least two --interval {}",
                humantime::format_duration(self.window),
                humantime::format_duration(self.interval)
            );
        }
        s.window = self.window;
        s.interval = self.interval;
        Ok(s)
    }

    /// The flags that reproduce these arguments (for the supervisor's command line).
    fn to_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(n) = self.nodes {
            v.extend(["--nodes".to_string(), n.to_string()]);
        }
        let d = |d: Duration| format!("{}ns", d.as_nanos());
        if let Some(x) = self.delay {
            v.extend(["--delay".into(), d(x)]);
        }
        if let Some(x) = self.loss {
            v.extend(["--loss".into(), format!("{x}%")]);
        }
        if let Some(z) = self.zones {
            v.extend(["--zones".into(), z.to_string()]);
            v.extend(["--intra-zone".into(), d(self.intra_zone)]);
            v.extend(["--inter-zone".into(), d(self.inter_zone)]);
        }
        if let Some(m) = &self.matrix {
            v.extend(["--matrix".into(), m.display().to_string()]);
        }
        if self.ipv6 {
            v.push("--ipv6".into());
        }
        v.extend(["--window".into(), d(self.window)]);
        v.extend(["--interval".into(), d(self.interval)]);
        v
    }
}

pub fn run(cmd: MeshCmd) -> Result<()> {
    if !meshprobe_harness::env::is_root() {
        bail!("the lab creates network namespaces and attaches eBPF programs: run it as root");
    }
    match cmd {
        MeshCmd::Up(a) => up(&a),
        MeshCmd::Serve(a) => serve::run(&a),
        MeshCmd::Status => print_request(&control::Request::Status),
        MeshCmd::Logs {
            target,
            lines,
            follow,
        } => logs(&target, lines, follow),
        MeshCmd::Matrix { args } => matrix(&args),
        MeshCmd::Chaos { args } => print_request(&control::Request::Chaos { args }),
        MeshCmd::Down => down(),
    }
}

fn state_dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}

/// The supervisor's pid if it is alive.
pub fn live_supervisor() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir().join(control::PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    meshprobe_harness::env::is_lab_supervisor(pid).then_some(pid)
}

fn up(a: &UpArgs) -> Result<()> {
    // Fail on bad flags before building anything.
    let spec = a.spec()?;
    if let Some(pid) = live_supervisor() {
        bail!(
            "a lab is already up (supervisor pid {pid}); `cargo xtask mesh status` shows it, \
             `cargo xtask mesh down` stops it"
        );
    }
    sweep(false);
    // `cargo xtask mesh up` builds it and passes it in, as the test suite does.
    let bin = crate::built_meshprobe()?;
    println!("[mesh] using MESHPROBE_BIN={}", bin.display());
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join(control::LOG_FILE);
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mesh")
        .arg("serve")
        .args(a.to_argv())
        .env("MESHPROBE_BIN", &bin)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: closing this terminal or Ctrl-C here does not stop the lab.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the lab supervisor")?;
    println!(
        "[mesh] starting {} nodes (supervisor pid {}, log {})",
        spec.nodes,
        child.id(),
        log_path.display()
    );
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait()? {
            let tail = tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 30);
            sweep(true);
            bail!("the lab supervisor exited ({st}) before the lab was up:\n{tail}");
        }
        if dir.join(control::READY_FILE).exists() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            sweep(true);
            bail!(
                "the lab was not up within {UP_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    print_request(&control::Request::Status)?;
    println!(
        "\n[mesh] up. `cargo xtask mesh matrix` shows the heatmap; `mesh status`, `mesh logs \
         node1`, `mesh chaos ...`, `mesh down`."
    );
    Ok(())
}

/// Sends `req` to the supervisor and prints its answer; fails if it reports a failure.
fn print_request(req: &control::Request) -> Result<()> {
    let ok = request(req, |line| println!("{line}"))?;
    if !ok {
        bail!("the lab reported a failure (see above)");
    }
    Ok(())
}

/// Sends `req`, calls `out` for every line of the answer; returns the final ok flag.
fn request(req: &control::Request, mut out: impl FnMut(&str)) -> Result<bool> {
    if live_supervisor().is_none() {
        bail!("no lab is up: start one with `cargo xtask mesh up`");
    }
    let sock = state_dir().join(control::SOCKET);
    let mut s = UnixStream::connect(&sock)
        .with_context(|| format!("connecting to the lab supervisor at {}", sock.display()))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    for l in BufReader::new(s).lines() {
        let l = l.context("reading the supervisor's answer")?;
        match serde_json::from_str::<control::Reply>(&l)? {
            control::Reply::Line(t) => out(&t),
            control::Reply::Done { ok, error } => {
                if let Some(e) = error {
                    eprintln!("error: {e}");
                }
                return Ok(ok);
            }
        }
    }
    bail!(
        "the supervisor closed the connection without an answer (did it crash? see {}/{})",
        STATE_DIR,
        control::LOG_FILE
    )
}

fn logs(target: &str, lines: usize, follow: bool) -> Result<()> {
    if target == "supervisor" {
        let text = std::fs::read_to_string(state_dir().join(control::LOG_FILE))
            .context("no supervisor log: no lab was started")?;
        println!("{}", tail(&text, lines));
        return Ok(());
    }
    let mut printed = 0usize;
    loop {
        let mut text = String::new();
        let ok = request(
            &control::Request::Logs {
                target: target.to_string(),
            },
            |l| {
                text.push_str(l);
                text.push('\n');
            },
        )?;
        if !ok {
            bail!("no log for {target:?}");
        }
        let all: Vec<&str> = text.lines().collect();
        let start = if printed == 0 {
            all.len().saturating_sub(lines)
        } else {
            printed.min(all.len())
        };
        for l in &all[start..] {
            println!("{l}");
        }
        printed = all.len();
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn matrix(extra: &[String]) -> Result<()> {
    let dir = state_dir();
    let state: control::State = serde_json::from_str(
        &std::fs::read_to_string(dir.join(control::READY_FILE))
            .context("no lab is up: start one with `cargo xtask mesh up`")?,
    )?;
    let st = Command::new("ip")
        .args(["netns", "exec", &state.core_ns])
        .arg(&state.meshprobe_bin)
        .args([
            "matrix",
            "--kafka-bootstrap-servers",
            &state.bootstrap,
            "--kafka-topic",
            &state.topic,
            "--expected",
        ])
        .arg(dir.join(control::EXPECTED_FILE))
        .args(extra)
        .status()
        .context("running meshprobe matrix")?;
    if !st.success() {
        bail!("meshprobe matrix exited {st}");
    }
    Ok(())
}

fn down() -> Result<()> {
    if let Some(pid) = live_supervisor() {
        println!("[mesh] stopping the lab (supervisor pid {pid})");
        if let Err(e) = request(&control::Request::Down, |l| println!("{l}")) {
            // Still coming up (not listening yet) or stuck: SIGTERM makes it stop as soon as
            // it can, removing what it built.
            println!("[mesh] the supervisor did not answer ({e:#}): SIGTERM");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[mesh] supervisor {pid} did not stop within 60 s: SIGKILL");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    sweep(true);
    Ok(())
}

/// Removes what dead harness processes left: namespaces (and processes in them), temp dirs,
/// and the state dir unless a supervisor is alive.
fn sweep(verbose: bool) {
    let ns = meshprobe_harness::netns::sweep_stale_namespaces();
    let tmp = meshprobe_harness::services::sweep_stale_temp_dirs();
    let mut state = false;
    if live_supervisor().is_none() && state_dir().exists() {
        state = std::fs::remove_dir_all(state_dir()).is_ok();
    }
    if verbose {
        if ns.is_empty() && tmp.is_empty() && !state {
            println!("[mesh] nothing left to remove");
        } else {
            println!(
                "[mesh] removed {} namespace(s), {} temp dir(s){}",
                ns.len(),
                tmp.len(),
                if state { ", the state dir" } else { "" }
            );
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn parse(argv: &[&str]) -> UpArgs {
        Cli::try_parse_from(std::iter::once("up").chain(argv.iter().copied()))
            .expect("valid flags")
            .up
    }

    /// The supervisor gets `to_argv()`: it must describe the same lab as the user's flags.
    fn same_lab(a: &LabSpec, b: &LabSpec) -> bool {
        a.nodes == b.nodes
            && a.zones == b.zones
            && a.links == b.links
            && a.family == b.family
            && a.window == b.window
            && a.interval == b.interval
    }

    #[test]
    fn supervisor_flags_describe_the_same_lab() {
        let dir = std::env::temp_dir().join(format!("xtask-mesh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join("three.matrix");
        std::fs::write(
            &m,
            "node0 node1 node2\nnode0 - 1ms 2ms\nnode1 1ms - 3ms\nnode2 2ms 3ms -\n",
        )
        .unwrap();
        let m = m.to_str().unwrap();
        for argv in [
            vec![],
            vec!["--nodes", "3", "--delay", "250us", "--loss", "2%", "--ipv6"],
            vec!["--zones", "2", "--inter-zone", "700us", "--window", "4s"],
            // A matrix of 3 nodes without --nodes: the default of 4 must not get in the way.
            vec!["--matrix", m],
        ] {
            let user = parse(&argv);
            let mine = user.spec().unwrap();
            let argv2 = user.to_argv();
            let sup = parse(&argv2.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(
                same_lab(&mine, &sup.spec().unwrap()),
                "{argv:?} -> {argv2:?}"
            );
        }
        assert_eq!(parse(&["--matrix", m]).spec().unwrap().nodes, 3);
        let e = parse(&["--matrix", m, "--nodes", "4"]).spec().unwrap_err();
        assert!(
            format!("{e:#}").contains("--nodes 4 but the matrix file has 3"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
