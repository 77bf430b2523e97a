//! Scenario 5: what one agent costs its host when it probes 1000 peers at 1 probe/s each.
//!
//! The peers are 1000 addresses (198.19.0.1 ... 198.19.3.250) on the veth of one namespace B,
//! answered by one `meshprobe reflect`; A routes 198.19.0.0/16 through B and runs the agent
//! with those 1000 static peers (MESHPROBE_PEERS_FILE). Every second the agent's VmRSS and
//! utime+stime are sampled from /proc. When a goal is missed, the agent is profiled (perf,
//! syscall counts with strace, CPU per thread) and the report shows what was found.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster::ip_batch;
use crate::sample::procfs::{
    ProcSample, clock_ticks_per_sec, parse_stat_user_sys, sample_process, thread_totals,
    user_sys_ticks,
};
use anyhow::{Context, Result};
use meshprobe_harness::TwoHosts;
use meshprobe_harness::agent::{Agent, AgentConfig};
use meshprobe_harness::services::TempDir;
use serde::Serialize;
use serde_json::json;

use super::profile::{
    self, Runs, Split, StatsWindow, bpf_stats_window, ebpf_per_context, strace_total, top_symbol,
    us_share,
};
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
fn perf_profile(pid: u32, secs: u64, data: &std::path::Path) -> Option<String> {
    if !meshprobe_harness::env::have_tool("perf") {
        return None;
    }
    if let Err(e) = profile::perf_record(pid, secs, 999, data) {
        return Some(format!("{e:#}"));
    }
    profile::perf_top(data, "0.8", 25).ok()
}

/// `strace -c -f` of the agent for `secs` seconds: syscall counts; `None` without strace.
fn strace_counts(pid: u32, secs: u64) -> Option<String> {
    if !meshprobe_harness::env::have_tool("strace") {
        return None;
    }
    profile::strace_counts(pid, secs, 25).ok()
}

/// Which descriptors the agent writes to (`strace -f -e trace=write`, `secs` seconds): per
/// descriptor the count per second and what it is (/proc/PID/fd); `None` without strace.
fn strace_writes(pid: u32, secs: u64, dir: &std::path::Path) -> Option<String> {
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

/// The goal as CPU per probe, µs: 1 % of a core over [`PEERS`] probes/s.
const GOAL_US_PER_PROBE: f64 = GOAL_CPU_PCT / 100.0 / PEERS as f64 * 1e6;

/// The agent's cost per probe sent, over the samples.
#[derive(Clone, Copy, Debug)]
struct PerProbe {
    /// µs of CPU (schedstat, all threads).
    total: f64,
    /// Context switches (wake-ups).
    switches: f64,
    /// Syscalls (strace -c, when it ran).
    syscalls: Option<f64>,
}

/// The user-mode share of the agent's CPU: perf's user samples over user + kernel when it
/// recorded (`modes`: kernel %, user %, BPF %), else utime / (utime + stime) (`ticks`); and
/// whether it came from perf.
fn user_share(modes: Option<(f64, f64, f64)>, ticks: (u64, u64)) -> (f64, bool) {
    match modes {
        Some((k, u, _)) if k + u > 0.0 => (u / (k + u), true),
        _ if ticks.0 + ticks.1 > 0 => (ticks.0 as f64 / (ticks.0 + ticks.1) as f64, false),
        _ => (f64::NAN, false),
    }
}

/// A bpf_stats window's sample: when, probes sent so far (agent metric), the agent's
/// sum_exec_runtime (ns).
type Mark = (Instant, f64, u64);

/// The stamping programs during the bpf_stats window and the split of the agent's CPU.
#[derive(Debug, Serialize)]
struct Decomp {
    stats_s: f64,
    /// Probes sent during the window.
    probes: f64,
    /// Per hook (order of [`profile::HOOKS`]): meshprobe's program, the empty program's floor.
    runs: [Runs; 4],
    floor: Option<[Runs; 4]>,
    floor_error: Option<String>,
    /// The agent's µs of CPU per probe with the accounting on.
    us_per_probe_stats_on: f64,
    /// µs per probe in eBPF on the agent's and on the reflector's CPU, as the kernel accounts
    /// it and less the floor.
    ebpf_raw: [f64; 2],
    ebpf_net: [f64; 2],
    split: Split,
}

impl Decomp {
    fn runs_per_probe(&self, i: usize) -> f64 {
        self.runs[i].run_cnt as f64 / self.probes
    }
}

fn decompose(w: &StatsWindow<Mark>, total: f64, user_share: f64) -> Decomp {
    let stats_s = (w.b.0 - w.a.0).as_secs_f64();
    let probes = w.b.1 - w.a.1;
    let floor = w.floor.as_ref().ok().map(|f| f.0);
    let floor_ns = floor.map_or([0.0; 4], |f| f.map(|r| r.ns_per_run()));
    let ebpf_net = ebpf_per_context(&w.runs, &floor_ns, probes);
    Decomp {
        stats_s,
        probes,
        runs: w.runs,
        floor,
        floor_error: w.floor.as_ref().err().cloned(),
        us_per_probe_stats_on: w.b.2.saturating_sub(w.a.2) as f64 / 1000.0 / probes,
        ebpf_raw: ebpf_per_context(&w.runs, &[0.0; 4], probes),
        ebpf_net,
        split: Split::new(total, user_share, ebpf_net[0]),
    }
}

/// The breakdown table and its notes.
#[allow(clippy::too_many_arguments)]
fn render(
    rep: &mut ScenarioReport,
    d: &Decomp,
    w: &StatsWindow<Mark>,
    pp: PerProbe,
    cpu_sched: f64,
    rate: f64,
    switches: f64,
    modes: Option<(f64, f64, f64)>,
    ticks: (u64, u64),
) {
    let s = d.split;
    let ns = |i: usize| {
        let raw = d.runs[i].ns_per_run();
        let floor = d.floor.map_or(f64::NAN, |f| f[i].ns_per_run());
        if floor.is_finite() {
            format!(
                "{:.2} runs/probe at {:.0} ns ({raw:.0} − floor {floor:.0})",
                d.runs_per_probe(i),
                raw - floor
            )
        } else {
            format!(
                "{:.2} runs/probe at {raw:.0} ns (floor unknown)",
                d.runs_per_probe(i)
            )
        }
    };
    let mut table = Table::new(
        &format!(
            "Where the agent's CPU per probe goes ({rate:.0} probes/s sent, {cpu_sched:.2} % of \
             a core): µs of CPU per probe and share of the total"
        ),
        &["", "µs / probe", "measured by"],
    );
    table.row([
        "agent user space (meshprobe + libc)".to_string(),
        us_share(s.user, s.total),
        match modes {
            Some((k, u, _)) if s.user.is_finite() && u + k > 0.0 => format!(
                "perf record (cpu-clock, 999 Hz, 10 s): {u:.0} % of samples in user mode, \
                 {k:.0} % in the kernel"
            ),
            _ => format!(
                "utime/stime over the samples: {} / {} ticks",
                ticks.0, ticks.1
            ),
        },
    ]);
    table.row([
        "eBPF programs on the agent's CPU (T1: A's meshprobe_egress; T2: B's \
         meshprobe_ingress, run in the agent's send context)"
            .to_string(),
        us_share(s.ebpf, s.total),
        format!(
            "kernel.bpf_stats_enabled=1, {:.1} s, {}: T1 {}; T2 {}",
            d.stats_s,
            if d.floor.is_some() {
                "less an empty program's floor"
            } else {
                "floor included"
            },
            ns(0),
            ns(1)
        ),
    ]);
    table.row([
        "rest of the kernel (UDP/IP/veth, route lookups for 1000 destinations, syscalls, \
         wake-ups/context switches)"
            .to_string(),
        us_share(s.rest, s.total),
        "total − user space − eBPF".to_string(),
    ]);
    table.row([
        "total".to_string(),
        format!("{:.2} µs", s.total),
        format!(
            "schedstat CPU of all threads over the samples / probes sent (goal: ≤ \
             {GOAL_US_PER_PROBE:.0} µs)"
        ),
    ]);
    table.row([
        "wake-ups (context switches)".to_string(),
        format!("{:.2} per probe", pp.switches),
        format!("{switches:.0} per second, voluntary + involuntary, all threads"),
    ]);
    table.row([
        "syscalls".to_string(),
        pp.syscalls
            .map_or("—".to_string(), |v| format!("{v:.2} per probe")),
        "strace -c -f, 5 s (only when a goal is missed; slows the agent while attached)"
            .to_string(),
    ]);
    rep.tables.push(table);
    let floor_rate = w
        .floor
        .as_ref()
        .ok()
        .map(|(_, a, b)| (b.1 - a.1) / (b.0 - a.0).as_secs_f64());
    rep.note(format!(
        "eBPF per probe: {:.2} µs on the agent's CPU as the kernel accounts it, {:.2} µs above \
         the floor; on the reflector's CPU (T3: B's egress, {}; T4: A's ingress, the agent's own \
         program, run in the reflector's send context, {}) {:.2} µs above the floor, not \
         charged to the agent. {} probes sent in the {:.1} s window ({:.0}/s{}); with the \
         accounting on the agent used {:.2} µs per probe against {:.2} µs with it off.",
        d.ebpf_raw[0],
        d.ebpf_net[0],
        ns(2),
        ns(3),
        d.ebpf_net[1],
        d.probes,
        d.stats_s,
        d.probes / d.stats_s,
        match (floor_rate, &d.floor_error) {
            (Some(r), _) => format!("; {r:.0}/s during the floor's window"),
            (None, Some(e)) => format!("; no floor: {e}"),
            (None, None) => String::new(),
        },
        d.us_per_probe_stats_on,
        s.total,
    ));
}

/// The CPU verdict's cause: the measured cost per probe and where it goes (`split`, with
/// whether user space came from perf), then `tail`.
fn cpu_cause(
    cpu_sched: f64,
    rate: f64,
    pp: PerProbe,
    split: Option<(Split, bool)>,
    tail: &str,
) -> String {
    let mut out = format!(
        "{cpu_sched:.2} % of a core for {rate:.0} probes/s = {:.1} µs per probe (the goal \
         allows {GOAL_US_PER_PROBE:.0} µs)",
        pp.total
    );
    if let Some((s, perf)) = split {
        out += &format!(
            ": {} agent user space (meshprobe + libc, {}), {} eBPF programs on the agent's CPU \
             (T1 and B's T2, kernel accounting less its floor), {} the rest of the kernel \
             (UDP/IP/veth, route lookups for 1000 destinations, syscalls, wake-ups); the \
             kernel's part alone is {:.1} µs{}",
            us_share(s.user, s.total),
            if perf { "perf samples" } else { "utime/stime" },
            us_share(s.ebpf, s.total),
            us_share(s.rest, s.total),
            s.ebpf + s.rest,
            if s.ebpf + s.rest > GOAL_US_PER_PROBE {
                ", more than the goal allows by itself"
            } else {
                ""
            },
        );
    }
    out += &format!("; {:.2} context switches per probe", pp.switches);
    if let Some(v) = pp.syscalls {
        out += &format!(", {v:.2} syscalls per probe");
    }
    format!("{out}; {tail}")
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
    // The decomposition: a bpf_stats window, then the floor's.
    let (dec_s, floor_s) = ctx.pick((5.0, 3.0), (10.0, 5.0));
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
        "after a {warmup} s warm-up, VmRSS (/proc/PID/status) and CPU time of all threads \
         (the scheduler's schedstat, ns) sampled every second for {secs} s; flat = the mean \
         of the last third (whole 10 s windows) exceeds the first third's by at most \
         {FLAT_RSS_MB} MB RSS and by at most {:.0} % + 0.1 percentage points CPU",
        FLAT_CPU_REL * 100.0
    ));
    rep.method(format!(
        "where the agent's CPU per probe goes, after the samples: {dec_s} s with \
         kernel.bpf_stats_enabled=1 (restored afterwards): run_time_ns/run_cnt of the stamping \
         programs (fdinfo of the agent and the reflector), then {floor_s} s more with an empty \
         program added on each of the four hooks (the accounting's own floor, subtracted); on \
         a veth the receive path of a packet runs in the sender's context, so the agent's CPU \
         carries T1 (its egress) and T2 (B's ingress); user space = the share of user-mode \
         perf samples when the agent was profiled, else utime/stime over the samples; total = \
         the samples' schedstat CPU per probe sent; rest of the kernel = total − user − eBPF"
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
        // The per-peer cost is what this scenario measures: every peer on the pinglist (by
        // default an agent probes at most 128; scenario `scale` measures that).
        .env("MESHPROBE_PINGLIST_FULL_MESH_MAX", PEERS.to_string())
        .env("MESHPROBE_PINGLIST_MAX_PEERS", PEERS.to_string())
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
    let ticks0 = user_sys_ticks(pid)?;
    let mut samples: Vec<ProcSample> = vec![sample_process(pid)?];
    let start = Instant::now();
    for k in 1..=secs {
        let next = start + Duration::from_secs(k);
        pause(next.saturating_duration_since(Instant::now()))?;
        samples.push(sample_process(pid)?);
    }
    let ticks1 = user_sys_ticks(pid)?;
    let sent1 = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
    let recv1 = agent.metric("meshprobe_probes_received")?.unwrap_or(0.0);
    let rss_mb: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    // Per-second CPU from schedstat: at a few % of a core, utime+stime ticks (10 ms each)
    // quantise a 1 s sample to whole percent, too coarse to compare thirds.
    let cpu_pct: Vec<f64> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].at - w[0].at).as_secs_f64();
            (w[1].cpu_ns - w[0].cpu_ns) as f64 / 1e9 / dt * 100.0
        })
        .collect();
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let span = (last.at - first.at).as_secs_f64();
    let cpu_sched = (last.cpu_ns - first.cpu_ns) as f64 / 1e9 / span * 100.0;
    let switches = (last.switches - first.switches) as f64 / span;
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
        format!("{cpu_sched:.2} %"),
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
    let cpu_met = cpu_sched <= GOAL_CPU_PCT;
    let flat = rss_flat && cpu_flat;

    // The stamping programs' share, bpf_stats on.
    progress(format!(
        "footprint: {dec_s} s with kernel.bpf_stats_enabled=1, {floor_s} s for its floor"
    ));
    let rpid = refl.child.pid().context("reflector pid")?;
    let window = bpf_stats_window([pid, rpid], &t, dec_s, floor_s, || {
        let at = Instant::now();
        let sent = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        Ok((at, sent, thread_totals(pid)?.0))
    });

    // Profile when a goal is missed, while the agent still runs.
    let perf_data = scratch.path().join("perf.data");
    let mut syscalls_per_probe = None;
    let mut cause_cpu = None;
    let mut busiest = None;
    let mut top_sym = None;
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
        if let Some(p) = perf_profile(pid, 10, &perf_data) {
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
        if let Some(w) = strace_writes(pid, 5, scratch.path()) {
            rep.evidence.push((
                "write(2) by descriptor (strace -e trace=write, 5 s)".into(),
                w,
            ));
        }
        busiest = tlist.split(", ").next().map(str::to_string);
        top_sym = top;
        cause_rss = Some(format!("max {:.1} MB (profile below)", max(&rss_mb)));
    }

    // Where the CPU of one probe goes.
    let per_probe = PerProbe {
        total: cpu_sched / 100.0 / rate.max(1.0) * 1e6,
        switches: switches / rate.max(1.0),
        syscalls: syscalls_per_probe,
    };
    let modes = if perf_data.exists() {
        profile::perf_modes(&perf_data)
            .map_err(|e| progress(format!("footprint: perf report failed: {e:#}")))
            .ok()
    } else {
        None
    };
    let ticks = (ticks1.0 - ticks0.0, ticks1.1 - ticks0.1);
    let (user_share, user_from_perf) = user_share(modes, ticks);
    let decomp = match window {
        Ok(w) => {
            let d = decompose(&w, per_probe.total, user_share);
            render(
                rep, &d, &w, per_probe, cpu_sched, rate, switches, modes, ticks,
            );
            Some(d)
        }
        Err(e) => {
            rep.note(format!(
                "The decomposition of the agent's CPU per probe failed: {e:#}"
            ));
            None
        }
    };
    if !cpu_met {
        let tail = format!(
            "busiest thread: {}; perf's top symbol: {} (profile below)",
            busiest.unwrap_or_else(|| "?".into()),
            top_sym.unwrap_or_else(|| "n/a".into())
        );
        cause_cpu = Some(cpu_cause(
            cpu_sched,
            rate,
            per_probe,
            decomp.as_ref().map(|d| (d.split, user_from_perf)),
            &tail,
        ));
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
        format!("{cpu_sched:.2} %"),
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
        "cpu_pct_schedstat": cpu_sched,
        "context_switches_per_second": switches,
        "rss_thirds_mb": [rss_t.first, rss_t.last],
        "cpu_thirds_pct": [cpu_t.first, cpu_t.last],
        "us_per_probe": per_probe.total,
        "syscalls_per_probe": per_probe.syscalls,
        "user_share": user_share,
        "user_share_from_perf": user_from_perf,
        "decomposition": decomp,
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

    #[test]
    fn user_space_share() {
        assert_eq!(user_share(Some((75.0, 25.0, 1.0)), (1, 1)), (0.25, true));
        assert_eq!(user_share(None, (30, 90)), (0.25, false));
        assert_eq!(user_share(Some((0.0, 0.0, 0.0)), (1, 3)), (0.25, false));
        assert!(user_share(None, (0, 0)).0.is_nan());
    }

    #[test]
    fn cause_text() {
        assert_eq!(GOAL_US_PER_PROBE, 10.0);
        let pp = PerProbe {
            total: 31.0,
            switches: 0.25,
            syscalls: Some(1.5),
        };
        let cause = |pp, split| cpu_cause(3.1, 1000.0, pp, split, "x");
        let c = cause(pp, Some((Split::new(31.0, 0.2, 0.62), true)));
        assert!(
            c.starts_with("3.10 % of a core for 1000 probes/s = 31.0 µs per probe (the goal allows 10 µs): 6.20 µs (20 %) agent user space (meshprobe + libc, perf samples), 0.62 µs (2 %) eBPF"),
            "{c}"
        );
        assert!(c.contains("24.18 µs (78 %) the rest of the kernel"), "{c}");
        assert!(
            c.contains("the kernel's part alone is 24.8 µs, more than the goal allows by itself;"),
            "{c}"
        );
        assert!(
            c.ends_with("; 0.25 context switches per probe, 1.50 syscalls per probe; x"),
            "{c}"
        );
        let c = cause(pp, Some((Split::new(9.0, 0.5, 0.5), false)));
        assert!(c.contains("utime/stime"), "{c}");
        assert!(c.contains("the kernel's part alone is 4.5 µs;"), "{c}");
        let c = cause(
            PerProbe {
                syscalls: None,
                ..pp
            },
            None,
        );
        assert_eq!(
            c,
            "3.10 % of a core for 1000 probes/s = 31.0 µs per probe (the goal allows 10 µs); \
             0.25 context switches per probe; x"
        );
    }
}
