//! Scenario 5: what one agent costs its host when it probes 1000 peers at 1 probe/s each.
//!
//! The peers are 1000 addresses (198.19.0.1 ... 198.19.3.250) on the veth of one namespace B,
//! answered by one `meshprobe reflect`; A routes 198.19.0.0/16 through B and runs the agent
//! with those 1000 static peers (MESHPROBE_PEERS_FILE). Every second the agent's VmRSS and
//! utime+stime are sampled from /proc. When a goal is missed, the agent is profiled (perf,
//! syscall counts with strace, CPU per thread) and the report shows what was found.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meshprobe_tests::TwoHosts;
use meshprobe_tests::agent::{Agent, AgentConfig};
use meshprobe_tests::bench_util::{
    ProcSample, clock_ticks_per_sec, ip_batch, sample_process, thread_totals,
};
use meshprobe_tests::services::TempDir;
use serde_json::json;

use super::{Ctx, ScenarioReport, Table, max, mean, pause, progress};

const PEERS: usize = 1000;
const GOAL_RSS_MB: f64 = 25.0;
const GOAL_CPU_PCT: f64 = 1.0;
/// Flat: the last third's mean may exceed the first third's by at most this much (RSS), or by
/// this fraction plus 0.1 percentage points (CPU).
const FLAT_RSS_MB: f64 = 1.0;
const FLAT_CPU_REL: f64 = 0.10;
/// The agent's window: thirds are made of whole windows, so that each holds the same number
/// of window ends (when 1000 summaries are written at once).
const WINDOW_S: usize = 10;

fn peer_addr(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

/// CPU % of one core per thread (`name (tid N)`) over `secs` seconds (/proc/PID/task/*/stat),
/// busiest first.
fn thread_cpu(pid: u32, secs: u64) -> Result<Vec<(String, f64)>> {
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
            let f: Vec<&str> = stat[c + 1..].split_whitespace().collect();
            let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            m.insert(tid, (comm, ticks));
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

/// `perf record` of the agent for `secs` seconds, then the top symbols; `None` without perf.
fn perf_profile(pid: u32, secs: u64, dir: &std::path::Path) -> Option<String> {
    if !meshprobe_tests::env::have_tool("perf") {
        return None;
    }
    let data = dir.join("perf.data");
    let d = data.to_string_lossy().into_owned();
    let mut rec = std::process::Command::new("perf");
    rec.args([
        "record",
        "-e",
        "cpu-clock",
        "-F",
        "999",
        "-g",
        "-p",
        &pid.to_string(),
        "-o",
        &d,
        "--",
        "sleep",
        &secs.to_string(),
    ]);
    let out = meshprobe_tests::child::run_with_timeout(rec, Duration::from_secs(secs + 30)).ok()?;
    if !out.status.success() {
        return Some(format!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut rep = std::process::Command::new("perf");
    rep.args([
        "report",
        "-i",
        &d,
        "--stdio",
        "--no-children",
        "--sort",
        "dso,symbol",
        "-g",
        "none",
        "--percent-limit",
        "0.8",
    ]);
    let out = meshprobe_tests::child::run_with_timeout(rep, Duration::from_secs(60)).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && (!l.starts_with('#') || l.contains("Samples")))
        .map(|l| {
            // perf pads its columns far to the right and ends each row with empty columns.
            l.trim_end().trim_end_matches(['-', ' ']).to_string()
        })
        .take(25)
        .collect();
    Some(lines.join("\n"))
}

/// `strace -c -f` of the agent for `secs` seconds: syscall counts; `None` without strace.
fn strace_counts(pid: u32, secs: u64) -> Option<String> {
    if !meshprobe_tests::env::have_tool("strace") {
        return None;
    }
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "-s",
        "INT",
        &secs.to_string(),
        "strace",
        "-c",
        "-f",
        "-p",
        &pid.to_string(),
    ]);
    let out = meshprobe_tests::child::run_with_timeout(cmd, Duration::from_secs(secs + 20)).ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("strace: Process"))
        .take(25)
        .collect();
    Some(lines.join("\n"))
}

/// Which descriptors the agent writes to (`strace -f -e trace=write`, `secs` seconds): per
/// descriptor the count per second and what it is (/proc/PID/fd); `None` without strace.
fn strace_writes(pid: u32, secs: u64, dir: &std::path::Path) -> Option<String> {
    if !meshprobe_tests::env::have_tool("strace") {
        return None;
    }
    let log = dir.join("writes.strace");
    let l = log.to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "-s",
        "INT",
        &secs.to_string(),
        "strace",
        "-f",
        "-e",
        "trace=write",
        "-e",
        "signal=none",
        "-s",
        "40",
        "-o",
        &l,
        "-p",
        &pid.to_string(),
    ]);
    meshprobe_tests::child::run_with_timeout(cmd, Duration::from_secs(secs + 20)).ok()?;
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

struct Thirds {
    first: f64,
    last: f64,
}

/// Means of the first and the last third of `v`, thirds rounded down to whole windows of
/// [`WINDOW_S`] samples (at least one window each when there are two).
fn thirds(v: &[f64]) -> Thirds {
    let windows = v.len() / WINDOW_S;
    let n = if windows >= 2 {
        (windows / 3).max(1) * WINDOW_S
    } else {
        v.len() / 3
    };
    if n == 0 {
        return Thirds {
            first: f64::NAN,
            last: f64::NAN,
        };
    }
    Thirds {
        first: mean(&v[..n]),
        last: mean(&v[v.len() - n..]),
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench footprint", &["ping"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let secs = ctx.pick(20u64, 60);
    let warmup = ctx.pick(5u64, 10);
    rep.method(format!(
        "one `meshprobe agent` in A with {PEERS} static peers (MESHPROBE_PEERS_FILE), \
         interval 1s (jitter 10 %), window 10s, `--output json` to the harness (1000 summaries \
         per window), no ZooKeeper, no Kafka"
    ));
    rep.method(format!(
        "the peers: {PEERS} addresses 198.19.0.1–198.19.3.250/16 on B's veth, one `meshprobe \
         reflect` in B answers them all (from B's primary address; the agent matches replies \
         by SSID); A routes 198.19.0.0/16 via B"
    ));
    rep.method(format!(
        "after a {warmup} s warm-up, VmRSS (/proc/PID/status) and utime+stime \
         (/proc/PID/stat, {} ticks/s) sampled every second for {secs} s; flat = the mean \
         of the last third (whole 10 s windows) exceeds the first third's by at most \
         {FLAT_RSS_MB} MB RSS and by at most {:.0} % + 0.1 percentage points CPU",
        clock_ticks_per_sec(),
        FLAT_CPU_REL * 100.0
    ));
    let t = TwoHosts::new()?;
    let scratch = TempDir::new("bench-footprint")?;
    let addrs: Vec<String> = (0..PEERS)
        .map(|i| format!("addr add {}/16 dev {}", peer_addr(i), TwoHosts::B_IF))
        .collect();
    ip_batch(&t.b, &addrs, scratch.path())?;
    t.a.run([
        "ip",
        "route",
        "add",
        "198.19.0.0/16",
        "via",
        &TwoHosts::B4.to_string(),
    ])?;
    let peers_file = scratch.path().join("peers.txt");
    let text: String = (0..PEERS)
        .map(|i| format!("peer{i:04}={}\n", peer_addr(i)))
        .collect();
    std::fs::write(&peers_file, text)?;
    let refl = env.mp.reflect(&t.b, &["-I", TwoHosts::B_IF])?;
    let mut cfg = AgentConfig::new()
        .env("MESHPROBE_PEERS_FILE", peers_file.display())
        .env("MESHPROBE_INTERVAL", "1s")
        .env("MESHPROBE_WINDOW", "10s")
        .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862");
    cfg.drop_probe_lines = true;
    let agent = Agent::start(&env.mp.bin, &t.a, "footprint", &cfg)?;
    let ready = agent.ready.clone().unwrap_or_default();
    env.mp
        .check_timestamping("agent", &ready, &agent.stderr_tail(20))?;
    let pid = agent.pid().context("agent pid")?;
    progress(format!(
        "footprint: warm-up {warmup} s, then {secs} s of samples"
    ));
    pause(Duration::from_secs(warmup))?;
    let sent0 = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
    let recv0 = agent.metric("meshprobe_probes_received")?.unwrap_or(0.0);
    let totals0 = thread_totals(pid)?;
    let mut samples: Vec<ProcSample> = vec![sample_process(pid)?];
    let start = Instant::now();
    for k in 1..=secs {
        let next = start + Duration::from_secs(k);
        pause(next.saturating_duration_since(Instant::now()))?;
        samples.push(sample_process(pid)?);
    }
    let totals1 = thread_totals(pid)?;
    let sent1 = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
    let recv1 = agent.metric("meshprobe_probes_received")?.unwrap_or(0.0);
    let hz = clock_ticks_per_sec() as f64;
    let rss_mb: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let cpu_pct: Vec<f64> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].at - w[0].at).as_secs_f64();
            (w[1].cpu_ticks - w[0].cpu_ticks) as f64 / hz / dt * 100.0
        })
        .collect();
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let cpu_mean =
        (last.cpu_ticks - first.cpu_ticks) as f64 / hz / (last.at - first.at).as_secs_f64() * 100.0;
    let span = (last.at - first.at).as_secs_f64();
    // The same CPU time from the scheduler's nanosecond accounting, as a cross-check of ticks.
    let cpu_sched = (totals1.0 - totals0.0) as f64 / 1e9 / span * 100.0;
    let switches = (totals1.1 - totals0.1) as f64 / span;
    let rss_t = thirds(&rss_mb);
    let cpu_t = thirds(&cpu_pct);
    let rate = (sent1 - sent0) / secs as f64;
    let answered = if sent1 > sent0 {
        (recv1 - recv0) / (sent1 - sent0) * 100.0
    } else {
        0.0
    };
    let mut table = Table::new("", &["", "mean", "max", "first third → last third", "flat"]);
    let rss_flat = rss_t.last - rss_t.first <= FLAT_RSS_MB;
    let cpu_flat = cpu_t.last <= cpu_t.first * (1.0 + FLAT_CPU_REL) + 0.1;
    table.row([
        "RSS".to_string(),
        format!("{:.1} MB", mean(&rss_mb)),
        format!("{:.1} MB", max(&rss_mb)),
        format!("{:.1} → {:.1} MB", rss_t.first, rss_t.last),
        if rss_flat { "yes" } else { "no" }.to_string(),
    ]);
    table.row([
        "CPU (% of one core)".to_string(),
        format!("{cpu_mean:.2} %"),
        format!("{:.1} %", max(&cpu_pct)),
        format!("{:.2} → {:.2} %", cpu_t.first, cpu_t.last),
        if cpu_flat { "yes" } else { "no" }.to_string(),
    ]);
    rep.tables.push(table);
    rep.note(format!(
        "Load: {rate:.0} probes/s sent during the samples, {answered:.1} % answered (agent \
         metrics). CPU from the scheduler's own accounting (schedstat, all threads): \
         {cpu_sched:.2} % of a core, {:.1} µs per probe. Context switches: {switches:.0} per \
         second, {:.2} per probe. MB = 2^20 octets.",
        cpu_sched / 100.0 / rate.max(1.0) * 1e6,
        switches / rate.max(1.0)
    ));
    if rate < PEERS as f64 * 0.9 {
        rep.note(format!(
            "The agent sent only {rate:.0} probes/s to {PEERS} peers at 1/s: it did not keep up \
             with the load asked for."
        ));
    }
    let rss_met = max(&rss_mb) <= GOAL_RSS_MB;
    let cpu_met = cpu_mean <= GOAL_CPU_PCT;
    let flat = rss_flat && cpu_flat;

    // Profile when a goal is missed, while the agent still runs.
    let mut cause_cpu = None;
    let mut cause_rss = None;
    if !cpu_met || !rss_met || !flat {
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
        if let Some(p) = perf_profile(pid, 10, scratch.path()) {
            top = p
                .lines()
                .find(|l| {
                    l.trim_start()
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit())
                })
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
            rep.evidence
                .push(("perf record -e cpu-clock -g, 10 s: top symbols".into(), p));
        }
        if let Some(s) = strace_counts(pid, 5) {
            let calls = s
                .lines()
                .find(|l| l.trim_end().ends_with("total"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(c) = calls {
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
        if let Some(w) = strace_writes(pid, 5, scratch.path()) {
            rep.evidence.push((
                "write(2) by descriptor (strace -e trace=write, 5 s)".into(),
                w,
            ));
        }
        cause_cpu = Some(format!(
            "{cpu_sched:.2} % of a core for {rate:.0} probes/s = {:.0} µs per probe, with \
             {switches:.0} context switches/s ({:.2} per probe: about one wake-up per probe); \
             busiest thread: {}; perf's top symbol: {} (profile below)",
            cpu_sched / 100.0 / rate.max(1.0) * 1e6,
            switches / rate.max(1.0),
            tlist.split(", ").next().unwrap_or("?"),
            top.unwrap_or_else(|| "n/a".into())
        ));
        cause_rss = Some(format!("max {:.1} MB (profile below)", max(&rss_mb)));
    }
    rep.goal(
        "RSS",
        "≤ 25 MB",
        format!("max {:.1} MB, mean {:.1} MB", max(&rss_mb), mean(&rss_mb)),
        rss_met,
        cause_rss,
    );
    rep.goal(
        "CPU",
        "≤ 1 % of a core",
        format!("{cpu_mean:.2} %"),
        cpu_met,
        cause_cpu,
    );
    rep.goal(
        "flat",
        "no growth",
        format!(
            "RSS {:+.2} MB, CPU {:+.2} pp (last − first third)",
            rss_t.last - rss_t.first,
            cpu_t.last - cpu_t.first
        ),
        flat,
        Some(format!(
            "RSS {:.1} → {:.1} MB, CPU {:.2} → {:.2} %",
            rss_t.first, rss_t.last, cpu_t.first, cpu_t.last
        )),
    );
    rep.data = json!({
        "peers": PEERS,
        "seconds": secs,
        "warmup_seconds": warmup,
        "probes_per_second": rate,
        "answered_pct": answered,
        "rss_mb": rss_mb,
        "cpu_pct_per_second": cpu_pct,
        "cpu_pct_mean": cpu_mean,
        "cpu_pct_schedstat": cpu_sched,
        "context_switches_per_second": switches,
        "rss_thirds_mb": [rss_t.first, rss_t.last],
        "cpu_thirds_pct": [cpu_t.first, cpu_t.last],
    });
    drop(agent);
    let _ = refl.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(peer_addr(0), "198.19.0.1");
        assert_eq!(peer_addr(249), "198.19.0.250");
        assert_eq!(peer_addr(250), "198.19.1.1");
        assert_eq!(peer_addr(999), "198.19.3.250");
        let t = thirds(&[1.0, 1.0, 5.0, 9.0, 3.0, 3.0]);
        assert_eq!((t.first, t.last), (1.0, 3.0));
        // 20 samples: two windows, first vs last window.
        let v: Vec<f64> = (0..20).map(|i| if i < 10 { 1.0 } else { 2.0 }).collect();
        let t = thirds(&v);
        assert_eq!((t.first, t.last), (1.0, 2.0));
    }
}
