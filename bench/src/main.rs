//! `meshprobe-bench` (run by `cargo xtask bench`, which sets up and builds first): the
//! benchmarks, each in network namespaces built by the test harness (`meshprobe-harness`), and
//! their report: markdown on stdout, JSON in a file.
//!
//! Every scenario measures and compares with its goal; a missed goal is reported as missed
//! with the measured cause, never as a failure of the command. The command fails only when a
//! scenario could not run (the bench itself broke), after writing the report.
//!
//! This file holds the CLI, the driver and the report; each scenario has its own module (a
//! file, or a directory of small files for the larger ones).

mod capacity;
mod cluster;
mod discovery;
mod ebpf_cost;
mod fast_path;
mod footprint;
mod pinglist;
mod precision;
mod profile;
mod sample;
mod scale;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use meshprobe_harness::env::TestEnv;
use meshprobe_harness::{Meshprobe, interrupt};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "meshprobe-bench",
    about = "meshprobe's benchmarks in network namespaces: a markdown report on stdout and JSON \
             in a file; never fails for a slow machine"
)]
pub struct BenchArgs {
    /// Run only this scenario (repeatable): a name or number of `--list`; default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Shorter runs for a smoke check (the report says so).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report (relative to the workspace root).
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// For `cargo xtask bench`: no setup, no build. This binary never builds: it runs
    /// MESHPROBE_BIN, else target/release/meshprobe.
    #[arg(long)]
    no_build: bool,
}

/// What a scenario gets: the binary under test and the run length.
pub struct Ctx {
    pub bin: PathBuf,
    pub quick: bool,
}

impl Ctx {
    /// The harness's exclusive test environment (the machine-wide lock timing-sensitive tests
    /// take), or `None` with the reason when a prerequisite is missing.
    pub fn env(&self, what: &str, tools: &[&str]) -> Result<std::result::Result<TestEnv, String>> {
        if let Some(why) = meshprobe_harness::env::missing_prerequisite(tools) {
            return Ok(Err(why));
        }
        match TestEnv::acquire(what, tools)? {
            Some(mut env) => {
                env.mp = Meshprobe::new(&self.bin);
                Ok(Ok(env))
            }
            None => Ok(Err("a prerequisite is missing (see the SKIP line)".into())),
        }
    }

    /// `quick` or `full` depending on the run.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Sleeps `d`, in small steps; an error once Ctrl-C was pressed (so guards unwind).
pub fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if interrupt::interrupted() {
            bail!("interrupted");
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Progress on stderr (stdout is the report).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// ---- scenarios ------------------------------------------------------------------------------

type RunFn = fn(&Ctx, &mut ScenarioReport) -> Result<()>;

struct Scenario {
    id: u8,
    name: &'static str,
    title: &'static str,
    goal: &'static str,
    run: Option<RunFn>,
    /// For scenarios not implemented yet: what is planned.
    plan: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: 1,
        name: "precision",
        title: "Precision against capture truth, idle and under load",
        goal: "meshprobe |error| p50/p99 ≤ 1/3 µs idle, ≤ 2/5 µs under stress; better than ping",
        run: Some(precision::run),
        plan: "meshprobe network RTT, its app RTT, iputils ping and sockperf ping-pong in the \
               same run, each against AF_PACKET capture RTTs at both ends; idle, stress-ng on \
               every core, and a noisy neighbour pinned to the reflector's core",
    },
    Scenario {
        id: 2,
        name: "ebpf-cost",
        title: "eBPF cost per packet (kernel accounting)",
        goal: "≤ 60 ns per non-probe packet",
        run: Some(ebpf_cost::run),
        plan: "",
    },
    Scenario {
        id: 3,
        name: "fast-path",
        title: "Fast-path impact: TCP throughput and request/response rate",
        goal: "with/without programs ≥ 0.98",
        run: Some(fast_path::run),
        plan: "",
    },
    Scenario {
        id: 4,
        name: "capacity",
        title: "Probe capacity of one sender/reflector pair",
        goal: "≥ 200 000 probes/s per core with ≤ 0.1 % of probes missing a stamp",
        run: Some(capacity::run),
        plan: "step the probe rate of one sender/reflector pair up until more than 0.1 % of \
               the probes lack one of the four stamps (or are lost); report the highest rate \
               that held and CPU time per 1000 probes/s from /proc of both processes",
    },
    Scenario {
        id: 5,
        name: "footprint",
        title: "Agent footprint: 1000 peers at 1 probe/s",
        goal: "≤ 25 MB RSS, ≤ 1 % of a core, flat",
        run: Some(footprint::run),
        plan: "",
    },
    Scenario {
        id: 6,
        name: "discovery",
        title: "Discovery: a 21st agent joins 20 (ZooKeeper)",
        goal: "≤ 2 s from registration to every agent probing it",
        run: Some(discovery::run),
        plan: "",
    },
    Scenario {
        id: 7,
        name: "pinglist",
        title: "Pinglists simulated at 1 000, 10 000 and 50 000 members",
        goal: "≤ 128 peers per agent; every node ≥ 3 probers, from ≥ 2 zones; every zone pair \
               covered; ≤ 2 000 entries changed per join or leave",
        run: Some(pinglist::run),
        plan: "",
    },
    Scenario {
        id: 8,
        name: "scale",
        title: "One agent among 10 000 members (ZooKeeper, pinglists)",
        goal: "≤ 128 peers, ≤ 1 % of a core, ≤ 25 MB RSS, ZooKeeper ≤ 200 B/member at start and \
               ≤ 300 B per change, a new member probed within 2 s",
        run: Some(scale::run),
        plan: "",
    },
];

fn select(names: &[String]) -> Result<Vec<&'static Scenario>> {
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    let mut out: Vec<&Scenario> = Vec::new();
    for n in names {
        let s = SCENARIOS
            .iter()
            .find(|s| s.name == n || s.id.to_string() == *n)
            .with_context(|| {
                format!(
                    "unknown scenario {n:?}; known: {}",
                    SCENARIOS
                        .iter()
                        .map(|s| format!("{} ({})", s.name, s.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        if !out.iter().any(|o| o.id == s.id) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.id);
    Ok(out)
}

// ---- the report -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Met,
    Missed,
    NotImplemented,
    Skipped,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Met => "goal met",
            Outcome::Missed => "goal missed",
            Outcome::NotImplemented => "not implemented yet",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// One goal against its measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct GoalCheck {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// Why it was missed (measured), when it was.
    pub cause: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }
}

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub id: u8,
    pub name: &'static str,
    pub title: &'static str,
    pub goal: &'static str,
    pub outcome: Outcome,
    /// "goal met" / "goal missed (cause)" / the error.
    pub verdict: String,
    /// How it was measured, one item per line.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    pub goals: Vec<GoalCheck>,
    pub notes: Vec<String>,
    /// Preformatted evidence (profiles), shown as code blocks.
    pub evidence: Vec<(String, String)>,
    /// The raw figures.
    pub data: serde_json::Value,
    pub seconds: f64,
}

impl ScenarioReport {
    fn new(s: &Scenario) -> ScenarioReport {
        ScenarioReport {
            id: s.id,
            name: s.name,
            title: s.title,
            goal: s.goal,
            outcome: Outcome::Error,
            verdict: String::new(),
            method: Vec::new(),
            tables: Vec::new(),
            goals: Vec::new(),
            notes: Vec::new(),
            evidence: Vec::new(),
            data: serde_json::json!({}),
            seconds: 0.0,
        }
    }

    pub fn method(&mut self, line: impl Into<String>) {
        self.method.push(line.into());
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    pub fn goal(
        &mut self,
        what: &str,
        goal: &str,
        measured: impl Into<String>,
        met: bool,
        cause: Option<String>,
    ) {
        self.goals.push(GoalCheck {
            what: what.to_string(),
            goal: goal.to_string(),
            measured: measured.into(),
            met,
            cause: if met { None } else { cause },
        });
    }

    pub fn skip(&mut self, why: impl Into<String>) {
        self.outcome = Outcome::Skipped;
        self.verdict = format!("skipped: {}", why.into());
    }

    /// Met when every goal was, missed (with the causes) otherwise.
    fn conclude(&mut self) {
        if self.outcome == Outcome::Skipped {
            return;
        }
        if self.goals.is_empty() {
            self.outcome = Outcome::Error;
            self.verdict = "error: the scenario checked no goal".into();
            return;
        }
        let missed: Vec<_> = self.goals.iter().filter(|g| !g.met).collect();
        if missed.is_empty() {
            self.outcome = Outcome::Met;
            self.verdict = "goal met".into();
        } else {
            self.outcome = Outcome::Missed;
            let causes: Vec<String> = missed
                .iter()
                .map(|g| match &g.cause {
                    Some(c) => format!("{}: {c}", g.what),
                    None => format!("{}: {}", g.what, g.measured),
                })
                .collect();
            self.verdict = format!("goal missed ({})", causes.join("; "));
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub virtualized: bool,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub rustc_nightly: String,
    pub meshprobe_commit: String,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub command: String,
    pub quick: bool,
    pub scenarios: Vec<String>,
    pub meshprobe_bin: String,
    pub bpf_stats_enabled_at_start: Option<String>,
    pub tools: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub title: String,
    pub started_utc: String,
    pub seconds: f64,
    pub machine: Machine,
    pub settings: Settings,
    pub scenarios: Vec<ScenarioReport>,
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// A command run in the workspace root, quietly; `None` if it cannot start.
fn quiet_output(program: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .current_dir(meshprobe_harness::meshprobe::workspace_root())
        .output()
        .ok()
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = quiet_output(program, args)?;
    let text = if out.stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let l = first_line(&text);
    (!l.is_empty()).then_some(l)
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let virtualized = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {} ({})",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let commit = command_line("git", &["rev-parse", "--short=12", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = quiet_output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|o| !o.stdout.is_empty());
    Machine {
        cpu_model,
        cores: meshprobe_harness::load::online_cpus(),
        memory_gib,
        virtualized,
        kernel,
        os,
        rustc: command_line("rustc", &["-V"]).unwrap_or_else(|| "unknown".into()),
        rustc_nightly: command_line("rustc", &["+nightly", "-V"])
            .unwrap_or_else(|| "unknown".into()),
        meshprobe_commit: if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        },
    }
}

fn tool_versions() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (tool, args) in [
        ("iperf3", &["--version"][..]),
        ("sockperf", &["--version"][..]),
        ("stress-ng", &["--version"][..]),
        ("ping", &["-V"][..]),
        ("bpftool", &["version"][..]),
        ("perf", &["--version"][..]),
        ("strace", &["-V"][..]),
    ] {
        if let Some(v) = command_line(tool, args) {
            m.insert(tool.to_string(), v);
        }
    }
    m
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(
        out,
        "| {} |",
        header
            .iter()
            .map(|h| md_escape(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# {}\n", self.title);
        let _ = writeln!(
            o,
            "`{}` — started {}, took {:.0} s{}.\n",
            self.settings.command,
            self.started_utc,
            self.seconds,
            if self.settings.quick {
                " (**--quick**: shortened runs, a smoke check)"
            } else {
                ""
            }
        );
        let m = &self.machine;
        let _ = writeln!(o, "## Machine\n");
        md_table(
            &mut o,
            &["".into(), "".into()],
            &[
                vec![
                    "CPU".into(),
                    format!(
                        "{} × {}{}",
                        m.cores,
                        m.cpu_model,
                        if m.virtualized {
                            " (virtual machine)"
                        } else {
                            ""
                        }
                    ),
                ],
                vec!["memory".into(), format!("{} GiB", m.memory_gib)],
                vec!["kernel".into(), m.kernel.clone()],
                vec!["OS".into(), m.os.clone()],
                vec![
                    "rustc".into(),
                    format!("{}; eBPF: {}", m.rustc, m.rustc_nightly),
                ],
                vec!["meshprobe".into(), m.meshprobe_commit.clone()],
            ],
        );
        let _ = writeln!(o, "\n## Settings\n");
        let s = &self.settings;
        let mut rows = vec![
            vec!["scenarios".into(), s.scenarios.join(", ")],
            vec!["binary".into(), s.meshprobe_bin.clone()],
            vec![
                "kernel.bpf_stats_enabled at start".into(),
                s.bpf_stats_enabled_at_start.clone().unwrap_or("?".into()),
            ],
        ];
        for (t, v) in &s.tools {
            rows.push(vec![t.clone(), v.clone()]);
        }
        md_table(&mut o, &["".into(), "".into()], &rows);

        let _ = writeln!(o, "\n## Summary\n");
        let rows: Vec<Vec<String>> = self
            .scenarios
            .iter()
            .map(|sc| {
                let measured = sc
                    .goals
                    .iter()
                    .map(|g| format!("{}: {}", g.what, g.measured))
                    .collect::<Vec<_>>()
                    .join("; ");
                vec![
                    format!("{}. {}", sc.id, sc.name),
                    sc.goal.to_string(),
                    if measured.is_empty() {
                        "—".into()
                    } else {
                        measured
                    },
                    sc.outcome.label().to_string(),
                ]
            })
            .collect();
        md_table(
            &mut o,
            &[
                "scenario".into(),
                "goal".into(),
                "measured".into(),
                "verdict".into(),
            ],
            &rows,
        );

        for sc in &self.scenarios {
            let _ = writeln!(o, "\n## {}. {} (`{}`)\n", sc.id, sc.title, sc.name);
            if !sc.method.is_empty() {
                for l in &sc.method {
                    let _ = writeln!(o, "- {l}");
                }
                let _ = writeln!(o);
            }
            for t in &sc.tables {
                if !t.title.is_empty() {
                    let _ = writeln!(o, "{}\n", t.title);
                }
                md_table(&mut o, &t.header, &t.rows);
                let _ = writeln!(o);
            }
            if !sc.goals.is_empty() {
                let rows: Vec<Vec<String>> = sc
                    .goals
                    .iter()
                    .map(|g| {
                        vec![
                            g.what.clone(),
                            g.goal.clone(),
                            g.measured.clone(),
                            if g.met {
                                "met".into()
                            } else {
                                format!(
                                    "**missed**{}",
                                    g.cause
                                        .as_ref()
                                        .map(|c| format!(" ({c})"))
                                        .unwrap_or_default()
                                )
                            },
                        ]
                    })
                    .collect();
                md_table(
                    &mut o,
                    &[
                        "".into(),
                        "goal".into(),
                        "measured".into(),
                        "verdict".into(),
                    ],
                    &rows,
                );
                let _ = writeln!(o);
            }
            for n in &sc.notes {
                let _ = writeln!(o, "{n}\n");
            }
            for (title, text) in &sc.evidence {
                let _ = writeln!(o, "{title}:\n\n```text\n{}\n```\n", text.trim_end());
            }
            let _ = writeln!(o, "**{}** — {:.0} s\n", sc.verdict, sc.seconds);
        }
        o
    }
}

// ---- the driver ------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmeshprobe-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: BenchArgs) -> Result<()> {
    if args.list {
        for s in SCENARIOS {
            println!(
                "{} {:<10} {}{}",
                s.id,
                s.name,
                s.title,
                if s.run.is_none() {
                    " (not implemented yet)"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let selected = select(&args.scenarios)?;
    if !meshprobe_harness::env::is_root() {
        bail!("the benchmarks create network namespaces and attach eBPF programs: run as root");
    }
    meshprobe_harness::env::fail_if_lab_holds_lock()?;
    let Some(bin) = meshprobe_harness::meshprobe::find_binary()? else {
        bail!("no meshprobe binary: `cargo xtask bench` builds it (or `cargo xtask build`)");
    };
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    // SAFETY: single-threaded here; the harness reads it to find the binary under test.
    unsafe { std::env::set_var("MESHPROBE_BIN", &bin) };
    interrupt::install()?;

    let json_path = if args.json.is_absolute() {
        args.json.clone()
    } else {
        meshprobe_harness::meshprobe::workspace_root().join(&args.json)
    };
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    }
    for s in &args.scenarios {
        command.push_str(&format!(" --scenario {s}"));
    }
    let t0 = Instant::now();
    let mut report = Report {
        title: "meshprobe benchmark report".into(),
        started_utc: utc_now(),
        seconds: 0.0,
        machine: machine(),
        settings: Settings {
            command,
            quick: args.quick,
            scenarios: selected.iter().map(|s| s.name.to_string()).collect(),
            meshprobe_bin: bin.display().to_string(),
            bpf_stats_enabled_at_start: crate::sample::bpf_stats::bpf_stats_enabled(),
            tools: tool_versions(),
        },
        scenarios: Vec::new(),
    };
    let ctx = Ctx {
        bin: bin.clone(),
        quick: args.quick,
    };
    for s in &selected {
        let mut rep = ScenarioReport::new(s);
        let started = Instant::now();
        match s.run {
            None => {
                rep.outcome = Outcome::NotImplemented;
                rep.verdict = "not implemented yet (not counted as met)".into();
                rep.note(format!("Planned: {}.", s.plan));
            }
            Some(f) if interrupt::interrupted() => {
                let _ = f;
                rep.skip("interrupted before it started");
            }
            Some(f) => {
                progress(format!("{}. {} ...", s.id, s.title));
                match f(&ctx, &mut rep) {
                    Ok(()) => rep.conclude(),
                    Err(e) => {
                        rep.outcome = Outcome::Error;
                        rep.verdict = format!("error: {e:#}");
                    }
                }
                progress(format!("{}. {}: {}", s.id, s.name, rep.verdict));
            }
        }
        rep.seconds = started.elapsed().as_secs_f64();
        report.scenarios.push(rep);
    }
    report.seconds = t0.elapsed().as_secs_f64();
    write_json(&json_path, &report)?;
    println!("{}", report.markdown());
    progress(format!("JSON report: {}", json_path.display()));
    let broken: Vec<_> = report
        .scenarios
        .iter()
        .filter(|s| s.outcome == Outcome::Error)
        .map(|s| s.name)
        .collect();
    if !broken.is_empty() {
        bail!("the bench broke in: {} (see the report)", broken.join(", "));
    }
    Ok(())
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Builds `example` of `package` (release; cargo reuses what is built) and returns its path.
/// Cargo's output goes to stderr: stdout belongs to the report.
pub fn build_example(package: &str, example: &str) -> Result<PathBuf> {
    let root = meshprobe_harness::meshprobe::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = ["build", "--release", "-p", package, "--example", example];
    progress(format!("+ cargo {}", args.join(" ")));
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the {example} example of {package} failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("release/examples").join(example);
    if !p.is_file() {
        bail!("{} missing after the build", p.display());
    }
    Ok(p)
}

// ---- small statistics ------------------------------------------------------------------------

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Median (mean of the two middle values for even lengths).
/// The harness's median; NaN when empty (a table cell, not a decision).
pub fn median(v: &[f64]) -> f64 {
    meshprobe_harness::stats::median(v).unwrap_or(f64::NAN)
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A duration in milliseconds, 0.1 ms resolution.
pub fn fmt_ms(ms: f64) -> String {
    format!("{ms:.1} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert!(median(&[]).is_nan());
        assert_eq!(min(&[2.0, 1.0]), 1.0);
        assert_eq!(max(&[2.0, 1.0]), 2.0);
    }

    #[test]
    fn selection() {
        let s = select(&["6".into(), "ebpf-cost".into(), "discovery".into()]).unwrap();
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2, 6]);
        let s = select(&["scale".into(), "7".into()]).unwrap();
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), vec![7, 8]);
        assert!(select(&["nope".into()]).is_err());
        assert_eq!(select(&[]).unwrap().len(), 8);
    }

    #[test]
    fn verdicts() {
        let mut r = ScenarioReport::new(&SCENARIOS[1]);
        r.goal("a", "≤ 1", "0.5", true, None);
        r.conclude();
        assert_eq!(r.outcome, Outcome::Met);
        r.goal("b", "≤ 1", "2", false, Some("slow".into()));
        r.conclude();
        assert_eq!(r.outcome, Outcome::Missed);
        assert_eq!(r.verdict, "goal missed (b: slow)");
        let md = Report {
            title: "t".into(),
            started_utc: utc_now(),
            seconds: 1.0,
            machine: Machine {
                cpu_model: "cpu".into(),
                cores: 2,
                memory_gib: 1.0,
                virtualized: false,
                kernel: "k".into(),
                os: "os".into(),
                rustc: "r".into(),
                rustc_nightly: "n".into(),
                meshprobe_commit: "c".into(),
            },
            settings: Settings {
                command: "cargo xtask bench".into(),
                quick: true,
                scenarios: vec![],
                meshprobe_bin: "b".into(),
                bpf_stats_enabled_at_start: None,
                tools: BTreeMap::new(),
            },
            scenarios: vec![r],
        }
        .markdown();
        assert!(md.contains("| b | ≤ 1 | 2 | **missed** (slow) |"), "{md}");
    }
}
