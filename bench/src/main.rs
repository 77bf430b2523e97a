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
mod numbers;
mod pinglist;
mod precision;
mod profile;
mod report;
mod sample;
mod scale;
mod scenario;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use meshprobe_harness::interrupt;

use report::{
    Outcome, Report, ScenarioReport, Settings, machine, tool_versions, utc_now, write_json,
};
use scenario::{Ctx, Scenario, progress};

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

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: 1,
        name: "precision",
        title: "Precision against capture and tracepoint truth, idle and under load",
        goal: "meshprobe |error| p50/p99 ≤ 0.5/1 µs idle, ≤ 1/2 µs under stress (against the tracepoint reference alone); better than ping",
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
        let mut rep = ScenarioReport::new(s.id, s.name, s.title, s.goal);
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

#[cfg(test)]
mod tests {
    use super::*;
    use report::Machine;
    use std::collections::BTreeMap;

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
        let mut r = {
            let s = &SCENARIOS[1];
            ScenarioReport::new(s.id, s.name, s.title, s.goal)
        };
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
