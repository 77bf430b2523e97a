//! The profile of an agent that missed a goal: CPU per thread, perf record, strace counts and
//! the writes by descriptor.

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use anyhow::Result;

use super::samples::Samples;
use crate::numbers::max;
use crate::profile::{self, strace_total, top_symbol};
use crate::report::ScenarioReport;
use crate::sample::procfs::{clock_ticks_per_sec, parse_stat_user_sys};
use crate::scenario::{pause, progress};

/// CPU % of one core per thread (`name (tid N)`) over `secs` seconds (/proc/PID/task/*/stat),
/// busiest first.
pub(super) fn thread_cpu(pid: u32, secs: u64) -> Result<Vec<(String, f64)>> {
    let read = || -> BTreeMap<String, (String, u64)> {
        let mut m = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return m;
        };
        for e in rd.flatten() {
            let tid = e.file_name().to_string_lossy().into_owned();
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(o), Some(c)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[o + 1..c].to_string();
            let (u, s) = parse_stat_user_sys(&stat).unwrap_or((0, 0));
            m.insert(tid, (comm, u + s));
        }
        m
    };
    let a = read();
    pause(Duration::from_secs(secs))?;
    let b = read();
    let hz = clock_ticks_per_sec() as f64;
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (comm, t1)) in &b {
        let t0 = a.get(tid).map(|x| x.1).unwrap_or(0);
        *by_name.entry(format!("{comm} (tid {tid})")).or_default() +=
            (t1.saturating_sub(t0)) as f64 / hz / secs as f64 * 100.0;
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|x, y| y.1.total_cmp(&x.1));
    Ok(v)
}

/// `perf record` of the agent for `secs` seconds into `data`, then the top symbols; `None`
/// without perf.
pub(super) fn perf_profile(pid: u32, secs: u64, data: &std::path::Path) -> Option<String> {
    if !meshprobe_harness::env::have_tool("perf") {
        return None;
    }
    if let Err(e) = profile::perf_record(pid, secs, 999, data) {
        return Some(format!("{e:#}"));
    }
    profile::perf_top(data, "0.8", 25).ok()
}

/// `strace -c -f` of the agent for `secs` seconds: syscall counts; `None` without strace.
pub(super) fn strace_counts(pid: u32, secs: u64) -> Option<String> {
    if !meshprobe_harness::env::have_tool("strace") {
        return None;
    }
    profile::strace_counts(pid, secs, 25).ok()
}

/// Which descriptors the agent writes to (`strace -f -e trace=write`, `secs` seconds): per
/// descriptor the count per second and what it is (/proc/PID/fd); `None` without strace.
pub(super) fn strace_writes(pid: u32, secs: u64, dir: &std::path::Path) -> Option<String> {
    if !meshprobe_harness::env::have_tool("strace") {
        return None;
    }
    let log = dir.join("writes.strace");
    let l = log.to_string_lossy().into_owned();
    let args = [
        "-f",
        "-e",
        "trace=write",
        "-e",
        "signal=none",
        "-s",
        "40",
        "-o",
        &l,
    ];
    profile::strace(pid, secs, &args).ok()?;
    let text = std::fs::read_to_string(&log).ok()?;
    let mut by_fd: BTreeMap<i32, (u64, String)> = BTreeMap::new();
    let mut threads: BTreeMap<i32, std::collections::BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.split("write(").nth(1) else {
            continue;
        };
        let tid = line.split_whitespace().next().unwrap_or("");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| format!("thread {tid}"));
        let Some(fd) = rest
            .split(',')
            .next()
            .and_then(|f| f.trim().parse::<i32>().ok())
        else {
            continue;
        };
        threads.entry(fd).or_default().insert(comm);
        let e = by_fd.entry(fd).or_insert_with(|| {
            let sample = rest.split(',').nth(1).unwrap_or("").trim().to_string();
            (0, sample)
        });
        e.0 += 1;
    }
    let mut out = Vec::new();
    for (fd, (n, sample)) in by_fd {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let by: Vec<String> = threads
            .remove(&fd)
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.push(format!(
            "fd {fd} ({target}): {:.0} writes/s by {}, e.g. {sample}",
            n as f64 / secs as f64,
            by.join(", ")
        ));
    }
    Some(out.join("\n"))
}

/// What the profile of an agent that missed a goal found.
#[derive(Default)]
pub(super) struct Missed {
    pub(super) syscalls_per_probe: Option<f64>,
    pub(super) busiest: Option<String>,
    pub(super) top_sym: Option<String>,
    pub(super) cause_rss: Option<String>,
}

impl Missed {
    /// CPU per thread, perf record (into `perf_data`), strace counts and writes of the agent
    /// `pid`; evidence and notes into `rep`.
    pub(super) fn profile(
        rep: &mut ScenarioReport,
        pid: u32,
        s: &Samples,
        scratch: &Path,
        perf_data: &Path,
    ) -> Result<Missed> {
        let rate = s.rate;
        let mut syscalls_per_probe = None;
        progress("footprint: goal missed; profiling the agent");
        let threads = thread_cpu(pid, 5)?;
        let tlist = threads
            .iter()
            .filter(|(_, p)| *p > 0.0)
            .map(|(n, p)| format!("{n} {p:.2} %"))
            .collect::<Vec<_>>()
            .join(", ");
        rep.evidence.push((
            format!(
                "CPU per thread (5 s, % of one core; {} threads in all, idle ones not listed)",
                threads.len()
            ),
            tlist.clone(),
        ));
        let mut top = None;
        if let Some(p) = perf_profile(pid, 10, perf_data) {
            top = top_symbol(&p);
            rep.evidence
                .push(("perf record -e cpu-clock -g, 10 s: top symbols".into(), p));
        }
        if let Some(s) = strace_counts(pid, 5) {
            if let Some(c) = strace_total(&s) {
                syscalls_per_probe = Some(c / 5.0 / rate.max(1.0));
                rep.note(format!(
                "Syscalls (strace -c -f, 5 s, while traced): {:.0} per second, {:.1} per probe.",
                c / 5.0,
                c / 5.0 / rate.max(1.0)
            ));
            }
            rep.evidence.push((
                "strace -c -f, 5 s (slows the agent while attached)".into(),
                s,
            ));
        }
        if let Some(w) = strace_writes(pid, 5, scratch) {
            rep.evidence.push((
                "write(2) by descriptor (strace -e trace=write, 5 s)".into(),
                w,
            ));
        }
        Ok(Missed {
            syscalls_per_probe,
            busiest: tlist.split(", ").next().map(str::to_string),
            top_sym: top,
            cause_rss: Some(format!("max {:.1} MB (profile below)", max(&s.rss_mb))),
        })
    }
}
