//! The bench's report: each scenario's goals, tables, notes and verdict, the machine it ran
//! on; markdown on stdout and JSON in a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

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
    /// The report of scenario `id` (its name, title and goal as the list gives them), before
    /// it runs.
    pub fn new(
        id: u8,
        name: &'static str,
        title: &'static str,
        goal: &'static str,
    ) -> ScenarioReport {
        ScenarioReport {
            id,
            name,
            title,
            goal,
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
    pub fn conclude(&mut self) {
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

pub fn machine() -> Machine {
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

pub fn tool_versions() -> BTreeMap<String, String> {
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

pub fn utc_now() -> String {
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

pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
