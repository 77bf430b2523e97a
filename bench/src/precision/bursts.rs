//! Running the bursts: the reflectors, each contender's burst and its time span, the load.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use meshprobe_harness::capture::{Capture, Frames};
use meshprobe_harness::load::{cpu_stress, online_cpus};
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::services::TempDir;
use meshprobe_harness::trace::TraceResult;
use meshprobe_harness::{
    ChildGuard, Meshprobe, PingRun, Reflector, STAMP_PORT, TwoHosts, interrupt,
};

use super::parse::{parse_full_log, parse_ping, ping_transmitted};
use super::{AUTH_PORT, FILTER, INTERVAL_MS, Load, SOCKPERF_PORT};
use crate::scenario::{pause, progress};

// ---- running the bursts ---------------------------------------------------------------------

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One burst's time span (CLOCK_REALTIME ns, the captures' clock): its packets are the ones
/// captured inside it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) start: u64,
    pub(super) end: u64,
}

impl Window {
    pub(super) fn has(&self, ts: u64) -> bool {
        ts >= self.start && ts <= self.end
    }
}

pub(super) enum Burst {
    Meshprobe {
        w: Window,
        run: PingRun,
    },
    /// `meshprobe ping --auth required` against the authenticated reflector.
    MeshprobeAuth {
        w: Window,
        run: PingRun,
    },
    Ping {
        w: Window,
        id: u16,
        sent: u64,
        replies: Vec<(u16, i64)>,
    },
    Sockperf {
        w: Window,
        rows: Vec<(i64, i64)>,
    },
}

pub(super) struct Plan {
    pub(super) rounds: usize,
    /// Probes per meshprobe and ping burst.
    pub(super) count: u32,
    /// `sockperf ping-pong -t` (whole seconds: it reads the number as an integer; its log
    /// covers all but the first 400 and the last 50 ms).
    pub(super) sockperf_secs: &'static str,
    pub(super) sender_cpu: String,
    pub(super) reflector_cpu: String,
}

/// `meshprobe reflect` in B, pinned to the reflector CPU, its programs on B's veth.
pub(super) fn reflector(mp: &Meshprobe, t: &TwoHosts, cpu: &str) -> Result<Reflector> {
    reflector_with(mp, t, cpu, &[])
}

/// The authenticated-mode reflector: `--auth required` on `AUTH_PORT`, same CPU.
pub(super) fn reflector_auth(
    mp: &Meshprobe,
    t: &TwoHosts,
    cpu: &str,
    key_file: &str,
) -> Result<Reflector> {
    let port = AUTH_PORT.to_string();
    reflector_with(
        mp,
        t,
        cpu,
        &["-p", &port, "--auth", "required", "--key-file", key_file],
    )
}

fn reflector_with(mp: &Meshprobe, t: &TwoHosts, cpu: &str, extra: &[&str]) -> Result<Reflector> {
    let bin = mp.bin.to_string_lossy().into_owned();
    let mut argv = vec![
        "taskset",
        "-c",
        cpu,
        &bin,
        "reflect",
        "--json",
        "-I",
        TwoHosts::B_IF,
    ];
    argv.extend_from_slice(extra);
    let mut child = t.b.spawn(argv)?;
    let ready = child
        .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
        .context("meshprobe reflect ready line")?;
    mp.check_timestamping("meshprobe reflect", &ready, &child.stderr_text())?;
    Ok(Reflector { child, ready })
}

pub(super) fn sockperf_server(t: &TwoHosts, cpu: &str) -> Result<ChildGuard> {
    let b4 = TwoHosts::B4.to_string();
    let port = SOCKPERF_PORT.to_string();
    let mut g = t.b.spawn([
        "taskset", "-c", cpu, "sockperf", "server", "-i", &b4, "-p", &port,
    ])?;
    pause(Duration::from_millis(700))?;
    if !g.is_running() {
        bail!("sockperf server exited: {}", g.stderr_text());
    }
    Ok(g)
}

pub(super) fn run_meshprobe(mp: &Meshprobe, t: &TwoHosts, plan: &Plan) -> Result<Burst> {
    let (w, run) = meshprobe_burst(mp, t, plan, &[])?;
    Ok(Burst::Meshprobe { w, run })
}

/// The authenticated-mode burst: same probes, signed, to the authenticated reflector.
pub(super) fn run_meshprobe_auth(
    mp: &Meshprobe,
    t: &TwoHosts,
    plan: &Plan,
    key_file: &str,
) -> Result<Burst> {
    let port = AUTH_PORT.to_string();
    let extra = ["-p", &port, "--auth", "required", "--key-file", key_file];
    let (w, run) = meshprobe_burst(mp, t, plan, &extra)?;
    Ok(Burst::MeshprobeAuth { w, run })
}

fn meshprobe_burst(
    mp: &Meshprobe,
    t: &TwoHosts,
    plan: &Plan,
    extra: &[&str],
) -> Result<(Window, PingRun)> {
    let b4 = TwoHosts::B4.to_string();
    let count = plan.count.to_string();
    let interval = format!("{INTERVAL_MS}ms");
    let mut args = vec![
        "-c",
        &count,
        "-i",
        &interval,
        "-W",
        "500ms",
        "-I",
        TwoHosts::A_IF,
    ];
    args.extend_from_slice(extra);
    args.push(&b4);
    let start = now_ns();
    let run = mp.ping_under(
        &t.a,
        &["taskset", "-c", &plan.sender_cpu],
        &args,
        Duration::from_secs(60),
    )?;
    let end = now_ns();
    Ok((Window { start, end }, run))
}

/// Runs `cmd` in A pinned to the sender's CPU; returns the span it ran in and its output.
pub(super) fn run_pinned(
    t: &TwoHosts,
    plan: &Plan,
    cmd: &[&str],
) -> Result<(Window, std::process::Output)> {
    let mut argv = vec!["taskset", "-c", plan.sender_cpu.as_str()];
    argv.extend_from_slice(cmd);
    let start = now_ns();
    let out = t.a.output(&argv)?;
    let end = now_ns();
    Ok((Window { start, end }, out))
}

pub(super) fn run_ping(t: &TwoHosts, plan: &Plan, id: u16) -> Result<Burst> {
    let b4 = TwoHosts::B4.to_string();
    let count = plan.count.to_string();
    let interval = format!("{:.3}", INTERVAL_MS as f64 / 1000.0);
    let ids = id.to_string();
    let (w, out) = run_pinned(
        t,
        plan,
        &[
            "ping", "-D", "-n", "-i", &interval, "-c", &count, "-e", &ids, "-W", "1", &b4,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies = parse_ping(&text);
    if replies.is_empty() {
        bail!(
            "ping printed no replies ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Burst::Ping {
        w,
        id,
        sent: ping_transmitted(&text).unwrap_or(0),
        replies,
    })
}

pub(super) fn run_sockperf(t: &TwoHosts, plan: &Plan, dir: &TempDir, n: usize) -> Result<Burst> {
    let b4 = TwoHosts::B4.to_string();
    let port = SOCKPERF_PORT.to_string();
    let mps = (1000 / INTERVAL_MS).to_string();
    let log = dir.path().join(format!("sockperf-{n}.csv"));
    let logs = log.to_string_lossy().into_owned();
    let (w, out) = run_pinned(
        t,
        plan,
        &[
            "sockperf",
            "ping-pong",
            "-i",
            &b4,
            "-p",
            &port,
            "--mps",
            &mps,
            "-t",
            plan.sockperf_secs,
            "--full-log",
            &logs,
        ],
    )?;
    if !out.status.success() {
        bail!(
            "sockperf ping-pong failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {logs}"))?;
    let _ = std::fs::remove_file(&log);
    let rows = parse_full_log(&text);
    if rows.is_empty() {
        bail!("sockperf full log without rows:\n{text}");
    }
    Ok(Burst::Sockperf { w, rows })
}

/// The load of a condition, stopped on drop.
pub(super) fn start_load(load: Load, reflector_cpu: &str, secs: u64) -> Result<Option<ChildGuard>> {
    match load {
        Load::Idle => Ok(None),
        Load::AllCores => Ok(Some(cpu_stress(online_cpus(), Duration::from_secs(secs))?)),
        Load::Neighbour => {
            let mut cmd = Command::new("stress-ng");
            cmd.args([
                "--cpu",
                "1",
                "--taskset",
                reflector_cpu,
                "--cpu-method",
                "matrixprod",
                "--timeout",
                &format!("{secs}s"),
            ]);
            let mut g = ChildGuard::spawn(cmd, "stress-ng --cpu 1 --taskset")?;
            let _ = g.wait_stderr("dispatching", Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(300));
            if !g.is_running() {
                bail!("stress-ng exited early: {}", g.stderr_text());
            }
            Ok(Some(g))
        }
    }
}

/// The bursts of every condition, in order: what they share, and the ICMP id and the
/// sockperf log number that go on from one condition to the next.
pub(super) struct Sequence<'a> {
    pub(super) mp: &'a Meshprobe,
    pub(super) t: &'a TwoHosts,
    pub(super) plan: &'a Plan,
    pub(super) dir: &'a TempDir,
    /// The authenticated-mode key file.
    pub(super) key_file: &'a str,
    pub(super) ping_id: u16,
    pub(super) sp_n: usize,
}

impl Sequence<'_> {
    /// One condition's rounds under both captures and the tracepoint reference (each round
    /// one burst per contender, the order rotated): the bursts, the frames of A and of B, and
    /// the tracer's events.
    pub(super) fn condition(
        &mut self,
        load: Load,
    ) -> Result<(Vec<Burst>, Frames, Frames, TraceResult)> {
        let t = self.t;
        let tracer = self.tracer()?;
        let ca = Capture::start_buffered(&t.a, TwoHosts::A_IF, FILTER, 32768)?;
        let cb = Capture::start_buffered(&t.b, TwoHosts::B_IF, FILTER, 32768)?;
        let bursts = self.rounds(load, "", &[0, 1, 2, 3])?;
        let fa = ca.stop_frames()?;
        let fb = cb.stop_frames()?;
        let traced = tracer.stop()?;
        Ok((bursts, fa, fb, traced))
    }

    /// The same condition's rounds under the tracepoint reference alone (no capture clones
    /// the packets): meshprobe, ping and authenticated mode (sockperf's rows are matched
    /// through the captures).
    pub(super) fn trace_only(&mut self, load: Load) -> Result<(Vec<Burst>, TraceResult)> {
        let tracer = self.tracer()?;
        let bursts = self.rounds(load, ", no capture", &[0, 1, 3])?;
        Ok((bursts, tracer.stop()?))
    }

    /// The tracepoint reference for every contender's packets, as the capture filter has
    /// them.
    fn tracer(&self) -> Result<meshprobe_harness::trace::Tracer> {
        self.mp.tracer_with(
            &[
                "--port",
                &STAMP_PORT.to_string(),
                "--auth-port",
                &AUTH_PORT.to_string(),
                "--seq64-port",
                &SOCKPERF_PORT.to_string(),
                "--icmp-echo",
            ]
            .map(String::from),
        )
    }

    /// `plan.rounds` rounds of one burst of each contender in `kinds` (0 meshprobe, 1 ping,
    /// 2 sockperf, 3 authenticated), the order rotated every round.
    fn rounds(&mut self, load: Load, what: &str, kinds: &[usize]) -> Result<Vec<Burst>> {
        let (mp, t, plan, dir) = (self.mp, self.t, self.plan, self.dir);
        let mut bursts = Vec::new();
        for round in 0..plan.rounds {
            progress(format!(
                "precision: {}{what}, round {}/{}",
                load.name(),
                round + 1,
                plan.rounds
            ));
            for k in 0..kinds.len() {
                if interrupt::interrupted() {
                    bail!("interrupted");
                }
                match kinds[(k + round) % kinds.len()] {
                    0 => bursts.push(run_meshprobe(mp, t, plan)?),
                    3 => bursts.push(run_meshprobe_auth(mp, t, plan, self.key_file)?),
                    1 => {
                        self.ping_id = self.ping_id.wrapping_add(1);
                        bursts.push(run_ping(t, plan, self.ping_id)?);
                    }
                    _ => {
                        self.sp_n += 1;
                        bursts.push(run_sockperf(t, plan, dir, self.sp_n)?);
                    }
                }
            }
        }
        Ok(bursts)
    }
}
