//! Scenario 4: the probe capacity of one sender/reflector pair.
//!
//! One `meshprobe ping` in A (pinned to one CPU) sends to one `meshprobe reflect` in B (pinned
//! to the other) over the harness veth, both with kernel stamps. The offered rate is stepped
//! up; a step is one ping run of `-c N` probes (several sessions in the one process, i.e.
//! the peer named several times, when one session's interval would be shorter than
//! [`MIN_INTERVAL_NS`]). Per step:
//!
//! - the four stamps from the eBPF counters of both processes (`COUNTERS`: t1/t4 by the
//!   sender's programs, t2/t3 by the reflector's), read through map descriptors this process
//!   holds, so the sender's totals are read after it exited and stopped changing them;
//! - sent/received/lost from the sender's summaries;
//! - over a steady window in the middle of the run: the achieved rate (t1 counter), CPU of
//!   both processes (schedstat nanoseconds; user/system split from utime/stime), context
//!   switches, and the CPU of the ksoftirqd threads of both CPUs.
//!
//! The capacity is the highest achieved rate of a step with at most 0.1 % of its probes
//! missing a stamp or a reply. At the capacity step's offered rate the CPU per probe is then
//! decomposed (user space from perf samples, the four stamping programs from the kernel's
//! accounting with `kernel.bpf_stats_enabled=1` less an empty program's floor, the rest of the
//! kernel by difference), and at the highest offered rate the pair is profiled (perf stat
//! syscall and context-switch counts, strace -c, perf record) for where the time goes.

use std::time::{Duration, Instant};

use crate::sample::held_map::{HeldMap, counters_by_name};
use crate::sample::procfs::{clock_ticks_per_sec, ksoftirqd_pid, thread_totals, user_sys_ticks};
use anyhow::{Context, Result, bail};
use meshprobe_harness::TwoHosts;
use meshprobe_harness::load::CpuStat;
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::services::TempDir;
use meshprobe_harness::{ChildGuard, Meshprobe};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::json;

use super::profile::{
    self, HOOKS, Runs, Split, both, bpf_stats_window, ebpf_per_context, parse_strace,
    per_probe_breakdown, perf_modes, perf_stat, strace_counts, top_symbol, us_share,
};
use super::{Ctx, ScenarioReport, Table, pause, progress};

const GOAL_PER_CORE: f64 = 200_000.0;
/// At most this fraction of a step's probes may lack a stamp or a reply.
const MAX_MISSING: f64 = 0.001;
/// Offered rates, probes/s.
const RATES: [u64; 6] = [10_000, 20_000, 50_000, 100_000, 200_000, 400_000];
/// The shortest interval one session is asked for; faster steps use more sessions.
const MIN_INTERVAL_NS: u64 = 20_000;
/// Probes' reply timeout (`-W`).
const TIMEOUT_S: u64 = 1;
const SENDER_CPU: usize = 0;
const REFLECTOR_CPU: usize = 1;

/// Sessions and per-session interval that offer `rate` probes/s.
fn plan_step(rate: u64) -> (u64, u64) {
    let per_session_max = 1_000_000_000 / MIN_INTERVAL_NS;
    let sessions = rate.div_ceil(per_session_max).max(1);
    (sessions, sessions * 1_000_000_000 / rate)
}

/// Probes of a step that lack at least one of the four stamps or the reply: `sent` less the
/// smallest of the stamp counts and the replies received. Exact when the gaps are nested (a
/// probe that lacks an earlier stamp lacks the later ones, as a lost request or reply does);
/// a lower bound otherwise (the stamp gaps are also listed one by one).
fn missing(sent: u64, received: u64, stamps: [u64; 4]) -> u64 {
    let complete = stamps.iter().copied().fold(received, u64::min);
    sent.saturating_sub(complete)
}

/// Does a step hold: probes sent and at most [`MAX_MISSING`] of them incomplete?
fn holds(sent: u64, missing: u64) -> bool {
    sent > 0 && missing as f64 <= sent as f64 * MAX_MISSING
}

/// The step that gives the capacity: the highest achieved rate among those that hold.
fn pick_capacity(steps: &[(bool, f64)]) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, (ok, rate))| *ok && rate.is_finite() && *rate > 0.0)
        .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map(|(i, _)| i)
}

/// One process's CPU at an instant.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    /// sum_exec_runtime of every thread, ns.
    sched_ns: u64,
    switches: u64,
    user_ticks: u64,
    sys_ticks: u64,
}

impl Cpu {
    fn read(pid: u32) -> Result<Cpu> {
        let (sched_ns, switches) = thread_totals(pid)?;
        let (user_ticks, sys_ticks) = user_sys_ticks(pid)?;
        Ok(Cpu {
            sched_ns,
            switches,
            user_ticks,
            sys_ticks,
        })
    }
}

/// A process's use over a window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Use {
    /// Fraction of one core.
    cores: f64,
    /// Share of the CPU ticks in the kernel (stime / (utime + stime)).
    sys_share: f64,
    switches_per_s: f64,
}

fn usage(a: Cpu, b: Cpu, secs: f64) -> Use {
    let user = b.user_ticks.saturating_sub(a.user_ticks) as f64;
    let sys = b.sys_ticks.saturating_sub(a.sys_ticks) as f64;
    Use {
        cores: b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1e9 / secs,
        sys_share: if user + sys > 0.0 {
            sys / (user + sys)
        } else {
            f64::NAN
        },
        switches_per_s: b.switches.saturating_sub(a.switches) as f64 / secs,
    }
}

/// A CPU's use over a window, fractions of its time.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct CpuUse {
    busy: f64,
    irq: f64,
    steal: f64,
}

fn cpu_use(a: CpuStat, b: CpuStat) -> CpuUse {
    let t = b.total.saturating_sub(a.total) as f64;
    if t <= 0.0 {
        return CpuUse::default();
    }
    CpuUse {
        busy: b.busy.saturating_sub(a.busy) as f64 / t,
        irq: b.irq.saturating_sub(a.irq) as f64 / t,
        steal: b.steal.saturating_sub(a.steal) as f64 / t,
    }
}

/// Everything measured at one instant of a step.
struct Sample {
    /// /proc/stat of the sender's and the reflector's CPU.
    cpus: [CpuStat; 2],
    at: Instant,
    sender: Cpu,
    reflector: Cpu,
    /// sum_exec_runtime of the ksoftirqd threads of both CPUs, ns.
    ksoftirqd_ns: u64,
    t1: u64,
}

#[derive(Debug, Serialize)]
struct Step {
    offered: u64,
    sessions: u64,
    interval_ns: u64,
    /// Probes asked for (`-c` per session × sessions).
    count: u64,
    sent: u64,
    received: u64,
    lost: u64,
    /// Neither answered nor timed out when the sender was stopped (only when it had to be).
    unresolved: u64,
    /// The run had to be stopped at its deadline.
    cut: bool,
    /// t1..t4 stamped for this step's probes.
    stamps: [u64; 4],
    /// Any err_* counter of either side during the step.
    stamp_errors: u64,
    missing: u64,
    holds: bool,
    /// Window: seconds, achieved rate (t1 counter), CPU.
    window_s: f64,
    achieved: f64,
    sender: Use,
    reflector: Use,
    /// Both ksoftirqd threads, fraction of one core.
    ksoftirqd_cores: f64,
    /// The sender's and the reflector's CPU as a whole (/proc/stat), anyone's work.
    cpu_sender: CpuUse,
    cpu_reflector: CpuUse,
}

impl Step {
    fn pct(&self, n: u64) -> f64 {
        if self.sent == 0 {
            f64::NAN
        } else {
            n as f64 / self.sent as f64 * 100.0
        }
    }
    fn cores(&self) -> f64 {
        self.sender.cores + self.reflector.cores
    }
    /// µs of CPU (sender + reflector) per probe.
    fn us_per_probe(&self) -> f64 {
        self.cores() / self.achieved * 1e6
    }
    /// Achieved rate per core used by the two processes.
    fn per_core(&self) -> f64 {
        self.achieved / self.cores()
    }
}

fn sample(
    spid: u32,
    rpid: u32,
    cpus: [usize; 2],
    ksoft: &[u32],
    sender_counters: &HeldMap,
) -> Result<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu = |c| CpuStat::parse(&stat, Some(c)).with_context(|| format!("cpu{c} in /proc/stat"));
    let cpus = [cpu(cpus[0])?, cpu(cpus[1])?];
    let at = Instant::now();
    let t1 = sender_counters.percpu_u64_sums()?[0];
    let sender = Cpu::read(spid)?;
    let reflector = Cpu::read(rpid)?;
    let mut ksoftirqd_ns = 0;
    for p in ksoft {
        ksoftirqd_ns += thread_totals(*p).map(|t| t.0).unwrap_or(0);
    }
    Ok(Sample {
        cpus,
        at,
        sender,
        reflector,
        ksoftirqd_ns,
        t1,
    })
}

/// Stamp counts (t1..t4) and the sum of the err_* counters of a COUNTERS map.
fn stamps_of(m: &HeldMap) -> Result<([u64; 4], u64)> {
    let c = counters_by_name(&m.percpu_u64_sums()?);
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    let errs = c
        .iter()
        .filter(|(k, _)| k.starts_with("err_"))
        .map(|(_, v)| *v)
        .sum();
    Ok((
        [
            g("t1_stamped"),
            g("t2_stamped"),
            g("t3_stamped"),
            g("t4_stamped"),
        ],
        errs,
    ))
}

struct Pair<'a> {
    mp: &'a Meshprobe,
    cpus: [usize; 2],
    t: &'a TwoHosts,
    sender_cpu: String,
    reflector_pid: u32,
    reflector_counters: &'a HeldMap,
    ksoft: Vec<u32>,
}

impl Pair<'_> {
    /// Starts `meshprobe ping` (pinned) offering `rate`, `count` probes in all (0: until
    /// stopped); returns it with its pid and its COUNTERS map.
    fn start_ping(&self, rate: u64, count: u64) -> Result<(ChildGuard, u32, HeldMap)> {
        let (sessions, interval_ns) = plan_step(rate);
        let per_session = count.div_ceil(sessions).to_string();
        let interval = format!("{interval_ns}ns");
        let w = format!("{TIMEOUT_S}s");
        let b4 = TwoHosts::B4.to_string();
        let mut args = vec![
            "--json",
            "-q",
            "-c",
            &per_session,
            "-i",
            &interval,
            "-W",
            &w,
            "-I",
            TwoHosts::A_IF,
        ];
        for _ in 0..sessions {
            args.push(&b4);
        }
        let mut ping =
            self.mp
                .ping_spawn_under(&self.t.a, &["taskset", "-c", &self.sender_cpu], &args)?;
        let ready = ping
            .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
            .context("meshprobe ping ready line")?;
        self.mp
            .check_timestamping("meshprobe ping", &ready, &ping.stderr_text())?;
        let pid = ping.pid().context("ping pid")?;
        let counters = HeldMap::of_process(pid, "COUNTERS")?;
        Ok((ping, pid, counters))
    }

    fn run_step(&self, rate: u64, settle: f64, window: f64) -> Result<Step> {
        let (sessions, interval_ns) = plan_step(rate);
        let run_s = settle + window + 0.3;
        let count = ((rate as f64 * run_s) as u64).div_ceil(sessions) * sessions;
        let (refl0, refl_err0) = stamps_of(self.reflector_counters)?;
        let (mut ping, spid, sc) = self.start_ping(rate, count)?;
        pause(Duration::from_secs_f64(settle))?;
        let a = sample(spid, self.reflector_pid, self.cpus, &self.ksoft, &sc)?;
        pause(Duration::from_secs_f64(window))?;
        let b = sample(spid, self.reflector_pid, self.cpus, &self.ksoft, &sc)?;
        // A sender slower than offered takes longer; bounded, then stopped.
        let deadline = Duration::from_secs_f64(run_s + (run_s * 4.0).max(5.0) + TIMEOUT_S as f64);
        let started = a.at - Duration::from_secs_f64(settle);
        let left = deadline.saturating_sub(started.elapsed());
        let (fin, cut) = match ping.wait_exit(left) {
            Ok(f) => (f, false),
            Err(_) if !ping.is_running() => bail!("meshprobe ping ended without output"),
            Err(_) => (
                ping.stop_with(Signal::SIGINT, Duration::from_secs(5))?,
                true,
            ),
        };
        if !fin.status.success() {
            bail!(
                "meshprobe ping at {rate}/s exited {}; stderr:\n{}",
                fin.status,
                fin.stderr_text()
            );
        }
        let (mut sent, mut received, mut lost) = (0, 0, 0);
        let mut summaries = 0;
        for v in fin.json_lines() {
            if v["type"] == "summary" {
                summaries += 1;
                sent += v["sent"].as_u64().unwrap_or(0);
                received += v["received"].as_u64().unwrap_or(0);
                lost += v["lost"].as_u64().unwrap_or(0);
            }
        }
        if summaries != sessions {
            bail!(
                "meshprobe ping at {rate}/s printed {summaries} summaries for {sessions} \
                 sessions; stderr:\n{}",
                fin.stderr_text()
            );
        }
        // Replies still on their way to a stopped sender: none when it ran to its count.
        pause(Duration::from_millis(50))?;
        let (s_stamps, s_err) = stamps_of(&sc)?;
        let (refl1, refl_err1) = stamps_of(self.reflector_counters)?;
        let stamps = [
            s_stamps[0],
            refl1[1].saturating_sub(refl0[1]),
            refl1[2].saturating_sub(refl0[2]),
            s_stamps[3],
        ];
        let unresolved = sent.saturating_sub(received + lost);
        // A run stopped at its deadline leaves probes unresolved that did not fail: they are
        // left out of the judgement (and shown).
        let judged_sent = if cut { sent - unresolved } else { sent };
        let miss = missing(judged_sent, received, stamps);
        let secs = (b.at - a.at).as_secs_f64();
        let ksoftirqd_cores = b.ksoftirqd_ns.saturating_sub(a.ksoftirqd_ns) as f64 / 1e9 / secs;
        Ok(Step {
            offered: rate,
            sessions,
            interval_ns,
            count,
            sent,
            received,
            lost,
            unresolved,
            cut,
            stamps,
            stamp_errors: s_err + refl_err1.saturating_sub(refl_err0),
            missing: miss,
            holds: holds(judged_sent, miss),
            window_s: secs,
            achieved: b.t1.saturating_sub(a.t1) as f64 / secs,
            sender: usage(a.sender, b.sender, secs),
            reflector: usage(a.reflector, b.reflector, secs),
            ksoftirqd_cores,
            cpu_sender: cpu_use(a.cpus[0], b.cpus[0]),
            cpu_reflector: cpu_use(a.cpus[1], b.cpus[1]),
        })
    }
}

/// `perf record -g` of `pid` for `secs` seconds: (kernel share of samples, top symbols).
fn perf_profile(pid: u32, secs: u64, dir: &std::path::Path, tag: &str) -> Result<(f64, String)> {
    let data = dir.join(format!("perf-{tag}.data"));
    profile::perf_record(pid, secs, 1999, &data)?;
    let kernel = profile::perf_kernel_share(&data)?;
    Ok((kernel, profile::perf_top(&data, "1.5", 18)?))
}

const WHO: [&str; 2] = ["sender", "reflector"];

/// The decomposition at one offered rate.
#[derive(Debug, Serialize)]
struct Decomposition {
    rate: u64,
    /// Probes/s (t1) during the bpf_stats window.
    stats_rate: f64,
    stats_s: f64,
    /// Per hook (order of [`HOOKS`]): meshprobe's program, the empty program's floor.
    runs: [Runs; 4],
    floor: Option<[Runs; 4]>,
    floor_rate: f64,
    /// µs CPU per probe of both processes with bpf_stats on.
    us_per_probe_stats_on: [f64; 2],
    /// perf at the rate (stats off): % of samples in kernel, user, BPF programs.
    perf: [Option<(f64, f64, f64)>; 2],
    perf_rate: f64,
    /// From the capacity step: CPU per probe, user share by utime/stime.
    step_total: [f64; 2],
    step_user_share_ticks: [f64; 2],
    /// The user share used (perf if it ran, else utime/stime).
    user_share: [f64; 2],
    user_from_perf: bool,
    /// µs per probe in eBPF per context, as the kernel accounts it and less the floor.
    ebpf_raw: [f64; 2],
    ebpf_net: [f64; 2],
    splits: [Split; 2],
}

impl Decomposition {
    fn total(&self) -> Split {
        self.splits[0].add(self.splits[1])
    }
    /// Program runs per probe at each hook.
    fn runs_per_probe(&self, i: usize) -> f64 {
        let probes = self.stats_rate * self.stats_s;
        self.runs[i].run_cnt as f64 / probes
    }
}

impl Pair<'_> {
    /// Runs the sender at `step`'s offered rate (same pinning, `-c 0`) and measures where its
    /// CPU goes: perf record of both processes (bpf_stats as found), then `secs` with
    /// `kernel.bpf_stats_enabled=1` for the programs' run time, then `floor_s` more with an
    /// empty program added on each of the four hooks (the accounting's floor).
    fn decompose(
        &self,
        step: &Step,
        secs: f64,
        floor_s: f64,
        settle: f64,
        scratch: &std::path::Path,
    ) -> Result<(Decomposition, Vec<(String, String)>)> {
        let rate = step.offered;
        let (mut ping, spid, sc) = self.start_ping(rate, 0)?;
        let pids = [spid, self.reflector_pid];
        let result = (|| -> Result<(Decomposition, Vec<(String, String)>)> {
            pause(Duration::from_secs_f64(settle))?;
            let mut evidence = Vec::new();
            // perf record, bpf_stats off (as during the steps).
            let psecs = secs.ceil() as u64;
            let a = sample(spid, pids[1], self.cpus, &self.ksoft, &sc)?;
            let profiles = both(|i| -> Result<(String, (f64, f64, f64))> {
                let tag = format!("{}-capacity", WHO[i]);
                let (_, txt) = perf_profile(pids[i], psecs, scratch, &tag)?;
                let modes = perf_modes(&scratch.join(format!("perf-{tag}.data")))?;
                Ok((txt, modes))
            });
            let b = sample(spid, pids[1], self.cpus, &self.ksoft, &sc)?;
            let perf_rate = b.t1.saturating_sub(a.t1) as f64 / (b.at - a.at).as_secs_f64();
            let mut perf = [None, None];
            for (i, r) in profiles.into_iter().enumerate() {
                match r {
                    Ok((txt, m)) => {
                        perf[i] = Some(m);
                        evidence.push((
                            format!(
                                "perf record -e cpu-clock -g of the {} at the capacity step ({} \
                                 probes/s offered), {psecs} s: {:.0} % of samples in the kernel, \
                                 {:.0} % in user space, {:.1} % inside the BPF programs (with \
                                 their helpers); top symbols",
                                WHO[i],
                                fmt_rate(rate as f64),
                                m.0,
                                m.1,
                                m.2
                            ),
                            txt,
                        ));
                    }
                    Err(e) => progress(format!(
                        "capacity: perf record of the {} failed: {e:#}",
                        WHO[i]
                    )),
                }
            }
            // The programs' run time, bpf_stats on, then the accounting's floor.
            let w = bpf_stats_window(pids, self.t, secs, floor_s, || {
                sample(spid, pids[1], self.cpus, &self.ksoft, &sc)
            })?;
            let (a, b, runs) = (&w.a, &w.b, w.runs);
            let stats_s = (b.at - a.at).as_secs_f64();
            let stats_rate = b.t1.saturating_sub(a.t1) as f64 / stats_s;
            let on = [
                usage(a.sender, b.sender, stats_s).cores / stats_rate * 1e6,
                usage(a.reflector, b.reflector, stats_s).cores / stats_rate * 1e6,
            ];
            let mut floor = None;
            let mut floor_rate = f64::NAN;
            match &w.floor {
                Ok((f, a, b)) => {
                    floor_rate = b.t1.saturating_sub(a.t1) as f64 / (b.at - a.at).as_secs_f64();
                    floor = Some(*f);
                }
                Err(e) => progress(format!(
                    "capacity: could not attach the empty programs: {e}"
                )),
            }
            let probes = stats_rate * stats_s;
            let floor_ns = floor.map_or([0.0; 4], |f| f.map(|r| r.ns_per_run()));
            let ebpf_raw = ebpf_per_context(&runs, &[0.0; 4], probes);
            let ebpf_net = ebpf_per_context(&runs, &floor_ns, probes);
            let step_total = [
                step.sender.cores / step.achieved * 1e6,
                step.reflector.cores / step.achieved * 1e6,
            ];
            let step_user_share_ticks =
                [1.0 - step.sender.sys_share, 1.0 - step.reflector.sys_share];
            let user_from_perf = perf.iter().all(Option::is_some);
            let mut user_share = step_user_share_ticks;
            let mut splits = [Split::default(); 2];
            for i in 0..2 {
                if user_from_perf && let Some((k, u, _)) = perf[i] {
                    user_share[i] = u / (k + u);
                }
                splits[i] = Split::new(step_total[i], user_share[i], ebpf_net[i]);
            }
            Ok((
                Decomposition {
                    rate,
                    stats_rate,
                    stats_s,
                    runs,
                    floor,
                    floor_rate,
                    us_per_probe_stats_on: on,
                    perf,
                    perf_rate,
                    step_total,
                    step_user_share_ticks,
                    user_share,
                    user_from_perf,
                    ebpf_raw,
                    ebpf_net,
                    splits,
                },
                evidence,
            ))
        })();
        let _ = ping.stop_with(Signal::SIGINT, Duration::from_secs(5));
        drop(sc);
        result
    }
}

/// The cause sentence of the verdict: where the CPU of a probe goes, both processes together.
fn cause_split(t: Split, runs_per_probe: f64, ns_per_run: f64, floor_known: bool) -> String {
    let allowed = 1e6 / GOAL_PER_CORE;
    let kernel = t.ebpf + t.rest;
    format!(
        "of {:.2} µs of CPU per probe (both processes), {} is user space (meshprobe's own code, \
         libc, the vDSO), {} its eBPF programs ({:.1} stamping program runs per probe at {:.0} ns \
         each{}), {} the rest of the kernel (the UDP/IP/veth path of the request and the reply, \
         syscall entry/exit, wake-ups); the goal allows {allowed:.2} µs per probe, and the \
         kernel's part alone (eBPF + rest) is {kernel:.2} µs{}",
        t.total,
        us_share(t.user, t.total),
        us_share(t.ebpf, t.total),
        runs_per_probe,
        ns_per_run,
        if floor_known {
            ", less the accounting's floor"
        } else {
            " as the kernel accounts them (floor included)"
        },
        us_share(t.rest, t.total),
        if kernel > allowed {
            ", more than that by itself"
        } else {
            ""
        },
    )
}

/// The decomposition's tables and notes.
fn render_decomposition(rep: &mut ScenarioReport, d: &Decomposition, step: &Step) {
    let t = d.total();
    let [s, r] = d.splits;
    let mut table = Table::new(
        &format!(
            "Where the CPU of one probe goes at the capacity step ({} probes/s offered, {} \
             achieved): µs of CPU per probe and share of the column's total",
            fmt_rate(d.rate as f64),
            fmt_rate(step.achieved)
        ),
        &["", "sender", "reflector", "both processes"],
    );
    // A row of shares: `part` of each column's split, of that column's total.
    let shares = |label: String, part: fn(&Split) -> f64| {
        let cell = |x: &Split| us_share(part(x), x.total);
        [label, cell(&s), cell(&r), cell(&t)]
    };
    table.row(shares(
        "user space (meshprobe's code, libc, vDSO)".to_string(),
        |x| x.user,
    ));
    table.row(shares(
        format!(
            "eBPF programs ({}; sender's CPU: T1, T2; reflector's: T3, T4)",
            if d.floor.is_some() {
                "kernel accounting less its floor"
            } else {
                "kernel accounting"
            }
        ),
        |x| x.ebpf,
    ));
    table.row(shares(
        "rest of the kernel (UDP/IP/veth path, syscalls, wake-ups)".to_string(),
        |x| x.rest,
    ));
    table.row([
        "total (the step's schedstat CPU / achieved rate)".to_string(),
        format!("{:.2} µs", s.total),
        format!("{:.2} µs", r.total),
        format!("{:.2} µs", t.total),
    ]);
    rep.tables.push(table);

    let probes = d.stats_rate * d.stats_s;
    let mut progs = Table::new(
        &format!(
            "The stamping programs at {} probes/s offered ({:.1} s with \
             kernel.bpf_stats_enabled=1, {} probes/s achieved; floor: an empty program on the \
             same hook, same window length, {} probes/s):",
            fmt_rate(d.rate as f64),
            d.stats_s,
            fmt_rate(d.stats_rate),
            fmt_rate(d.floor_rate)
        ),
        &[
            "stamp",
            "hook (program of)",
            "runs on the CPU of",
            "runs / probe",
            "ns / run (kernel accounting)",
            "empty program (floor), ns / run",
            "above the floor, ns / run",
            "µs / probe above the floor",
        ],
    );
    for (i, h) in HOOKS.iter().enumerate() {
        let ns = d.runs[i].ns_per_run();
        let floor = d.floor.map_or(f64::NAN, |f| f[i].ns_per_run());
        let net = if floor.is_finite() { ns - floor } else { ns };
        progs.row([
            h.stamp.to_string(),
            format!(
                "{} {} ({})",
                if h.holder == 0 { "A" } else { "B" },
                h.prog,
                WHO[h.holder]
            ),
            WHO[h.context].to_string(),
            format!("{:.3}", d.runs_per_probe(i)),
            format!("{ns:.0}"),
            if floor.is_finite() {
                format!("{floor:.0}")
            } else {
                "—".into()
            },
            format!("{net:.0}"),
            format!("{:.3}", net * d.runs[i].run_cnt as f64 / probes / 1000.0),
        ]);
    }
    rep.tables.push(progs);

    let on = d.us_per_probe_stats_on;
    rep.note(format!(
        "eBPF: each probe is four stamped packets' worth of program runs (T1 at the sender's \
         egress, T2 at the reflector's ingress, T3 at its egress, T4 at the sender's ingress); \
         the runs per probe above are what the kernel counted. On a veth the receive path of a \
         packet (TC ingress included) runs in the softirq of the CPU that sent it, charged to \
         the sending task, so T2 is on the sender's CPU and T4 on the reflector's. The kernel's \
         accounting adds a clock read pair to every run it times: an empty program on the same \
         hook measures that floor, and the table uses the programs' time above it ({:.2} µs per \
         probe as reported, {:.2} µs above the floor). With the accounting on, the pair used \
         {:.2} µs per probe (sender {:.2}, reflector {:.2}) against {:.2} µs with it off.",
        d.ebpf_raw[0] + d.ebpf_raw[1],
        d.ebpf_net[0] + d.ebpf_net[1],
        on[0] + on[1],
        on[0],
        on[1],
        d.step_total[0] + d.step_total[1],
    ));
    let share = |i: usize| d.user_share[i] * 100.0;
    let ticks = |i: usize| d.step_user_share_ticks[i] * 100.0;
    let perf_txt = match d.perf {
        [Some(ps), Some(pr)] => format!(
            "; perf's samples at the same rate ({} probes/s achieved while recorded, \
             accounting off) put {:.0} % (sender) and {:.0} % (reflector) in user space, \
             {:.0} % / {:.0} % in the kernel, and {:.1} % / {:.1} % inside the BPF programs \
             with the helpers they call, i.e. {:.2} / {:.2} µs per probe (against {:.2} / {:.2} \
             from the accounting above its floor)",
            fmt_rate(d.perf_rate),
            ps.1,
            pr.1,
            ps.0,
            pr.0,
            ps.2,
            pr.2,
            ps.2 / 100.0 * d.step_total[0],
            pr.2 / 100.0 * d.step_total[1],
            d.ebpf_net[0],
            d.ebpf_net[1],
        ),
        _ => String::new(),
    };
    rep.note(format!(
        "User space vs kernel: the table's user share is {} — sender {:.0} %, reflector {:.0} % \
         of each process's CPU; utime/stime over the step's window say {:.0} % and {:.0} %{perf_txt}.",
        if d.user_from_perf {
            "perf record's (cpu-clock samples at 1999 Hz, user-mode samples over user + kernel)"
        } else {
            "utime/stime's (perf did not run)"
        },
        share(0),
        share(1),
        ticks(0),
        ticks(1),
    ));
}

/// Where a step's incomplete probes were lost, from the successive counts sent → t1 → t2 → t3
/// → t4 → received: "(n) stage" for each drop, e.g. "37102 between T2 and T3 (at the
/// reflector: stamped on arrival, never answered)".
fn loss_stages(sent: u64, stamps: [u64; 4], received: u64) -> String {
    const STAGES: [&str; 5] = [
        "before T1 (never left the sender)",
        "between T1 and T2 (on the way out)",
        "between T2 and T3 (at the reflector: stamped on arrival, never answered)",
        "between T3 and T4 (on the way back)",
        "between T4 and the sender's socket (stamped on arrival, never read)",
    ];
    let counts = [sent, stamps[0], stamps[1], stamps[2], stamps[3], received];
    let parts: Vec<String> = (0..5)
        .filter(|&i| counts[i] > counts[i + 1])
        .map(|i| format!("{} {}", counts[i] - counts[i + 1], STAGES[i]))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `t`, or "n/a" when empty.
fn or_na(t: &str) -> String {
    if t.is_empty() {
        "n/a".to_string()
    } else {
        t.to_string()
    }
}

fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        return "—".into();
    }
    // Thin grouping of thousands.
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A table of one row per step: the offered rate, then `cells` of the step.
fn per_step_table<const N: usize>(
    title: &str,
    header: [&str; N],
    steps: &[Step],
    cells: impl Fn(&Step) -> [String; N],
) -> Table {
    let mut table = Table::new(title, &[&["offered /s"][..], &header[..]].concat());
    for s in steps {
        table.row(std::iter::once(fmt_rate(s.offered as f64)).chain(cells(s)));
    }
    table
}

fn fmt_interval(ns: u64) -> String {
    if ns.is_multiple_of(1000) {
        format!("{} µs", ns / 1000)
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench capacity", &["taskset"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let cpus = meshprobe_harness::load::online_cpus();
    let (scpu, rcpu) = if cpus >= 2 {
        (SENDER_CPU, REFLECTOR_CPU)
    } else {
        (0, 0)
    };
    let settle = ctx.pick(0.3, 0.5);
    let window = ctx.pick(1.2, 4.0);
    let prof_s = ctx.pick(2u64, 3);
    // The decomposition at the capacity step: bpf_stats window, then the floor's.
    let dec_s = ctx.pick(1.5, 3.0);
    let floor_s = ctx.pick(1.0, 2.0);
    rep.method(format!(
        "A ⟷ B on the harness veth; one `meshprobe ping` in A pinned to CPU {scpu} (`taskset`, \
         all its threads) sends to one `meshprobe reflect` in B pinned to CPU {rcpu}; both \
         attach their TC programs to the veth only (-I), kernel stamps; payload 68 octets \
         (default, T4 in-band){}",
        if cpus < 2 {
            " — this machine has one CPU, so both share it"
        } else {
            ""
        }
    ));
    rep.method(format!(
        "steps of offered rate {} probes/s; a step is one ping run of -c N probes, N = rate × \
         {:.1} s; a session (one socket, one tokio ticker) is asked for intervals down to {} µs, \
         faster steps use several sessions in the one sender process (the peer named k times, \
         -i = k / rate); -W {TIMEOUT_S}s",
        RATES.map(|r| fmt_rate(r as f64)).join(", "),
        settle + window + 0.3,
        MIN_INTERVAL_NS / 1000
    ));
    rep.method(format!(
        "stamps: the `COUNTERS` maps of both processes (t1/t4 stamped by the sender's programs, \
         t2/t3 by the reflector's), read through map descriptors the bench holds, so the \
         sender's totals are read after it exited; a probe is incomplete unless it has all four \
         stamps and its reply: incomplete = sent − min(t1, t2, t3, t4, replies received) (exact \
         when gaps are nested, as with a lost request or reply); a step holds with ≤ {:.1} % \
         incomplete",
        MAX_MISSING * 100.0
    ));
    rep.method(format!(
        "CPU over a {window} s window starting {settle} s after the sender's ready line \
         (excludes loading the programs): sum_exec_runtime of every thread \
         (/proc/PID/task/*/schedstat) for CPU, utime/stime (/proc/PID/stat, {} ticks/s) for \
         the user/kernel split, voluntary+involuntary context switches; achieved rate = t1 \
         stamps in that window / its length; ksoftirqd/{scpu},{rcpu} CPU shown apart",
        clock_ticks_per_sec()
    ));
    rep.method(
        "probes/s per core = achieved rate / (sender CPU + reflector CPU, in cores); the CPU of \
         a process includes the kernel work done in its context: on a veth a send runs the \
         peer's receive path (TC ingress, UDP, socket enqueue, wake-up) on the sender's CPU"
            .to_string(),
    );
    rep.method(format!(
        "capacity = the highest achieved rate of a step that holds; then, at the highest offered \
         rate, `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock` of each \
         process ({prof_s} s), `strace -c -f` ({prof_s} s, slows the process) and `perf record \
         -e cpu-clock -g` ({prof_s} s)"
    ));

    rep.method(format!(
        "where the CPU of one probe goes, at the capacity step's offered rate (same pinning, \
         sender run with -c 0): `perf record -e cpu-clock -g` of both processes ({dec_s} s, \
         user-mode vs kernel samples); then {dec_s} s with kernel.bpf_stats_enabled=1 \
         (restored afterwards): run_time_ns/run_cnt of the four stamping programs (fdinfo of \
         the processes holding them), then {floor_s} s more with an empty program added on \
         each of the four hooks (the accounting's own floor, subtracted); total = the step's \
         CPU per probe; rest of the kernel = total − user − eBPF"
    ));

    let t = TwoHosts::new()?;
    let scratch = TempDir::new("bench-capacity")?;
    let mp = &env.mp;
    let rcpu_s = rcpu.to_string();
    // The pair's capacity is measured from one source: no reply budget in the way.
    let refl = mp.reflect_under(
        &t.b,
        &["taskset", "-c", &rcpu_s],
        &[
            "-I",
            TwoHosts::B_IF,
            "--budget-per-source",
            "off",
            "--budget-total",
            "off",
        ],
    )?;
    let rpid = refl.child.pid().context("reflector pid")?;
    let refl_counters = HeldMap::of_process(rpid, "COUNTERS")?;
    let mut ksoft = Vec::new();
    for c in [scpu, rcpu] {
        if let Some(p) = ksoftirqd_pid(c)
            && !ksoft.contains(&p)
        {
            ksoft.push(p);
        }
    }
    let pair = Pair {
        mp,
        cpus: [scpu, rcpu],
        t: &t,
        sender_cpu: scpu.to_string(),
        reflector_pid: rpid,
        reflector_counters: &refl_counters,
        ksoft,
    };

    let mut steps: Vec<Step> = Vec::new();
    for rate in RATES {
        progress(format!(
            "capacity: {} probes/s offered",
            fmt_rate(rate as f64)
        ));
        let s = pair.run_step(rate, settle, window)?;
        progress(format!(
            "capacity: achieved {} /s, {} of {} incomplete, sender {:.0} % reflector {:.0} %",
            fmt_rate(s.achieved),
            s.missing,
            s.sent,
            s.sender.cores * 100.0,
            s.reflector.cores * 100.0
        ));
        steps.push(s);
    }

    let table = per_step_table(
        "Per step (CPU over the window; % = of one core; user/kernel split of each process in \
         brackets):",
        [
            "sessions × interval",
            "achieved /s",
            "sent",
            "lost %",
            "incomplete %",
            "sender CPU",
            "reflector CPU",
            "ksoftirqd",
            "whole CPUs s / r busy (irq+softirq; steal)",
            "ctx switches / probe (s + r)",
            "µs CPU / probe",
            "probes/s per core",
            "holds",
        ],
        &steps,
        |s| {
            [
                format!("{} × {}", s.sessions, fmt_interval(s.interval_ns)),
                fmt_rate(s.achieved),
                format!(
                    "{}{}",
                    s.sent,
                    if s.cut {
                        format!(" (stopped at deadline, {} unresolved)", s.unresolved)
                    } else {
                        String::new()
                    }
                ),
                format!("{:.3}", s.pct(s.sent.saturating_sub(s.received))),
                format!("{:.3}", s.pct(s.missing)),
                format!(
                    "{:.0} % ({:.0}/{:.0})",
                    s.sender.cores * 100.0,
                    (1.0 - s.sender.sys_share) * 100.0,
                    s.sender.sys_share * 100.0
                ),
                format!(
                    "{:.0} % ({:.0}/{:.0})",
                    s.reflector.cores * 100.0,
                    (1.0 - s.reflector.sys_share) * 100.0,
                    s.reflector.sys_share * 100.0
                ),
                format!("{:.1} %", s.ksoftirqd_cores * 100.0),
                format!(
                    "{:.0} / {:.0} % ({:.0}/{:.0}; {:.0}/{:.0})",
                    s.cpu_sender.busy * 100.0,
                    s.cpu_reflector.busy * 100.0,
                    s.cpu_sender.irq * 100.0,
                    s.cpu_reflector.irq * 100.0,
                    s.cpu_sender.steal * 100.0,
                    s.cpu_reflector.steal * 100.0
                ),
                format!(
                    "{:.2} + {:.2}",
                    s.sender.switches_per_s / s.achieved,
                    s.reflector.switches_per_s / s.achieved
                ),
                format!("{:.2}", s.us_per_probe()),
                fmt_rate(s.per_core()),
                if s.holds { "yes" } else { "no" }.to_string(),
            ]
        },
    );
    rep.tables.push(table);
    let stamps = per_step_table(
        "Stamps per step (t1/t4 sender's programs, t2/t3 reflector's) against probes sent and \
         replies received:",
        [
            "sent",
            "t1",
            "t2",
            "t3",
            "t4",
            "received",
            "lost (timeout)",
            "stamp errors",
        ],
        &steps,
        |s| {
            [
                s.sent.to_string(),
                s.stamps[0].to_string(),
                s.stamps[1].to_string(),
                s.stamps[2].to_string(),
                s.stamps[3].to_string(),
                s.received.to_string(),
                s.lost.to_string(),
                s.stamp_errors.to_string(),
            ]
        },
    );
    rep.tables.push(stamps);

    // Where the CPU of one probe goes, at the capacity step.
    let oks: Vec<(bool, f64)> = steps.iter().map(|s| (s.holds, s.achieved)).collect();
    let cap = pick_capacity(&oks);
    let mut decomp = None;
    if let Some(i) = cap {
        progress(format!(
            "capacity: where the CPU goes at {} probes/s offered",
            fmt_rate(steps[i].offered as f64)
        ));
        match pair.decompose(&steps[i], dec_s, floor_s, settle, scratch.path()) {
            Ok((d, ev)) => {
                render_decomposition(rep, &d, &steps[i]);
                rep.evidence.extend(ev);
                decomp = Some(d);
            }
            Err(e) => rep.note(format!(
                "The decomposition of the CPU at the capacity step failed: {e:#}"
            )),
        }
    }

    // Where the time goes at the highest offered rate.
    let top = *RATES.last().expect("rates");
    progress(format!(
        "capacity: profiling at {} probes/s offered",
        fmt_rate(top as f64)
    ));
    let (mut ping, spid, sc) = pair.start_ping(top, 0)?;
    pause(Duration::from_secs_f64(settle))?;
    let p0 = sample(spid, rpid, pair.cpus, &pair.ksoft, &sc)?;
    let r0 = stamps_of(&refl_counters)?.0[1];
    let [ps, pr] = both(|i| perf_stat([spid, rpid][i], prof_s as f64));
    let p1 = sample(spid, rpid, pair.cpus, &pair.ksoft, &sc)?;
    let r1 = stamps_of(&refl_counters)?.0[1];
    let prof_secs = (p1.at - p0.at).as_secs_f64();
    let prof_rate = p1.t1.saturating_sub(p0.t1) as f64 / prof_secs;
    let prof_refl_rate = r1.saturating_sub(r0) as f64 / prof_secs;
    let (su, ru) = (
        usage(p0.sender, p1.sender, prof_secs),
        usage(p0.reflector, p1.reflector, prof_secs),
    );
    let mut evidence_rows = Vec::new();
    let mut prof_data = json!({ "rate": prof_rate, "reflector_rate": prof_refl_rate });
    let mut syscalls_per_probe = [f64::NAN; 2];
    let mut switches_per_probe = [f64::NAN; 2];
    for (i, (who, r, rate)) in [
        ("sender", &ps, prof_rate),
        ("reflector", &pr, prof_refl_rate),
    ]
    .into_iter()
    .enumerate()
    {
        match r {
            Ok(p) => {
                let probes = rate * p.elapsed_s;
                syscalls_per_probe[i] = p.syscalls / probes;
                switches_per_probe[i] = p.switches / probes;
                evidence_rows.push(format!(
                    "{who}: {:.0} syscalls/s, {:.2} per probe; {:.0} context switches/s, {:.3} \
                     per probe; task-clock {:.2} cores ({:.0} probes/s over {:.2} s)",
                    p.syscalls / p.elapsed_s,
                    syscalls_per_probe[i],
                    p.switches / p.elapsed_s,
                    switches_per_probe[i],
                    p.task_clock_ms / 1000.0 / p.elapsed_s,
                    rate,
                    p.elapsed_s
                ));
                prof_data[who] = json!(p);
            }
            Err(e) => evidence_rows.push(format!("{who}: perf stat failed: {e:#}")),
        }
    }
    rep.evidence.push((
        format!(
            "perf stat at {} probes/s offered ({} sessions), {prof_s} s",
            fmt_rate(top as f64),
            plan_step(top).0
        ),
        evidence_rows.join("\n"),
    ));
    let mut breakdown = [String::new(), String::new()];
    let traces = both(|i| strace_counts([spid, rpid][i], prof_s, 14));
    for (i, (who, r)) in ["sender", "reflector"].into_iter().zip(traces).enumerate() {
        match r {
            Ok(s) => {
                breakdown[i] = per_probe_breakdown(&parse_strace(&s), syscalls_per_probe[i]);
                rep.evidence
                    .push((format!("strace -c -f of the {who}, {prof_s} s"), s));
            }
            Err(e) => rep.note(format!("strace of the {who} failed: {e:#}")),
        }
    }
    let mut kernel_share = [f64::NAN; 2];
    let mut top_symbols = [String::new(), String::new()];
    let dir = scratch.path();
    let profiles = both(|i| perf_profile([spid, rpid][i], prof_s, dir, WHO[i]));
    for (i, (who, r)) in ["sender", "reflector"]
        .into_iter()
        .zip(profiles)
        .enumerate()
    {
        match r {
            Ok((k, txt)) => {
                kernel_share[i] = k;
                top_symbols[i] = top_symbol(&txt).unwrap_or_default();
                rep.evidence.push((
                    format!(
                        "perf record -e cpu-clock -g of the {who}, {prof_s} s: {k:.0} % of \
                         samples in the kernel; top symbols"
                    ),
                    txt,
                ));
            }
            Err(e) => rep.note(format!("perf record of the {who} failed: {e:#}")),
        }
    }
    let _ = ping.stop_with(Signal::SIGINT, Duration::from_secs(5));
    drop(ping);
    drop(sc);
    let refl_sum = refl.stop()?;

    // The verdict.
    let first_fail = steps.iter().find(|s| !s.holds);
    if let Some(f) = first_fail {
        rep.note(format!(
            "First step that did not hold: {} offered, {} achieved, {} of {} probes incomplete \
             ({:.3} %): stamps t1..t4 {:?}, {} replies, {} lost after {TIMEOUT_S} s; lost: {}.",
            fmt_rate(f.offered as f64),
            fmt_rate(f.achieved),
            f.missing,
            f.sent,
            f.pct(f.missing),
            f.stamps,
            f.received,
            f.lost,
            loss_stages(f.sent, f.stamps, f.received)
        ));
    }
    let saturated = steps.iter().find(|s| s.achieved < s.offered as f64 * 0.95);
    let saturation = saturated.map(|s| {
        let busy = |u: &Use, c: &CpuUse| u.cores >= 0.9 || c.busy >= 0.9;
        let which = match (
            busy(&s.sender, &s.cpu_sender),
            busy(&s.reflector, &s.cpu_reflector),
        ) {
            (true, true) => "both CPUs saturated",
            (true, false) => "the sender's CPU saturated",
            (false, true) => "the reflector's CPU saturated",
            (false, false) => "neither CPU saturated by these readings",
        };
        format!(
            "at {} probes/s offered the pair achieved {} ({which}: sender process {:.0} % of a \
             core, CPU {scpu} {:.0} % busy; reflector process {:.0} %, CPU {rcpu} {:.0} % busy)",
            fmt_rate(s.offered as f64),
            fmt_rate(s.achieved),
            s.sender.cores * 100.0,
            s.cpu_sender.busy * 100.0,
            s.reflector.cores * 100.0,
            s.cpu_reflector.busy * 100.0,
        )
    });
    if let Some(t) = &saturation {
        rep.note(format!(
            "The first step the sender did not keep up with: {t}; above it the achieved rate is \
             what the pair managed, not the schedule."
        ));
    }
    rep.note(format!(
        "Profile at the top step ({} probes/s offered, {} achieved): sender {:.0} % of a core, \
         reflector {:.0} %; kernel share of the CPU (utime/stime) sender {:.0} %, reflector {:.0} %; perf \
         samples in the kernel: sender {:.0} %, reflector {:.0} %. Syscalls per probe: sender \
         {:.2}, reflector {:.2}; context switches per probe: sender {:.3}, reflector {:.3}.",
        fmt_rate(top as f64),
        fmt_rate(prof_rate),
        su.cores * 100.0,
        ru.cores * 100.0,
        su.sys_share * 100.0,
        ru.sys_share * 100.0,
        kernel_share[0],
        kernel_share[1],
        syscalls_per_probe[0],
        syscalls_per_probe[1],
        switches_per_probe[0],
        switches_per_probe[1],
    ));
    rep.note(format!(
        "Reflector over the whole scenario: {} requests, {} replies, {} send errors.",
        refl_sum["requests"], refl_sum["replies"], refl_sum["send_errors"]
    ));
    let kern = {
        let (s, r) = (su.sys_share, ru.sys_share);
        (s * su.cores + r * ru.cores) / (su.cores + ru.cores)
    };
    let syscalls = format!(
        "at the top step {:.2} syscalls per probe in the sender ({}) and {:.2} in the reflector \
         ({}), {:.3} / {:.3} context switches per probe (perf stat), {:.0} % of the two \
         processes' CPU in the kernel (utime/stime)",
        syscalls_per_probe[0],
        or_na(&breakdown[0]),
        syscalls_per_probe[1],
        or_na(&breakdown[1]),
        switches_per_probe[0],
        switches_per_probe[1],
        kern * 100.0,
    );
    let where_it_goes = match &decomp {
        Some(d) => {
            let runs: f64 = (0..4).map(|i| d.runs_per_probe(i)).sum();
            let t = d.total();
            // Mean ns per run above the floor over the four hooks.
            let ns = if runs > 0.0 {
                t.ebpf * 1000.0 / runs
            } else {
                f64::NAN
            };
            cause_split(t, runs, ns, d.floor.is_some())
        }
        None => "the CPU per probe was not decomposed (see the notes)".to_string(),
    };
    let fail = first_fail.map(|f| {
        format!(
            "the {} probes/s step did not hold ({:.3} % incomplete; lost {})",
            fmt_rate(f.offered as f64),
            f.pct(f.missing),
            loss_stages(f.sent, f.stamps, f.received)
        )
    });
    let cause_tail = [
        Some(where_it_goes),
        saturation.clone(),
        fail,
        Some(syscalls),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ");
    match cap {
        Some(i) => {
            let s = &steps[i];
            let per_core = s.per_core();
            let met = per_core >= GOAL_PER_CORE;
            rep.note(format!(
                "Capacity: {} probes/s (the {} probes/s step), {:.3} % incomplete; CPU {:.0} % \
                 (sender) + {:.0} % (reflector) of a core = {:.2} µs per probe, i.e. {:.2} % of a \
                 core per 1000 probes/s. Per core, two readings: over both processes (the \
                 strict one, judged against the goal) {} probes/s per core; per process {} \
                 probes/s per core (sender) and {} (reflector). With ksoftirqd ({:.1} %) \
                 counted too, {} probes/s per core.",
                fmt_rate(s.achieved),
                fmt_rate(s.offered as f64),
                s.pct(s.missing),
                s.sender.cores * 100.0,
                s.reflector.cores * 100.0,
                s.us_per_probe(),
                s.us_per_probe() / 10.0,
                fmt_rate(per_core),
                fmt_rate(s.achieved / s.sender.cores),
                fmt_rate(s.achieved / s.reflector.cores),
                s.ksoftirqd_cores * 100.0,
                fmt_rate(s.achieved / (s.cores() + s.ksoftirqd_cores)),
            ));
            rep.goal(
                "probes/s per core",
                "≥ 200 000 (≤ 0.1 % incomplete)",
                format!(
                    "{} per core over both processes (capacity {} probes/s at {:.0} % + {:.0} % \
                     of a core, {:.2} µs CPU per probe); per process: {} (sender), {} \
                     (reflector)",
                    fmt_rate(per_core),
                    fmt_rate(s.achieved),
                    s.sender.cores * 100.0,
                    s.reflector.cores * 100.0,
                    s.us_per_probe(),
                    fmt_rate(s.achieved / s.sender.cores),
                    fmt_rate(s.achieved / s.reflector.cores),
                ),
                met,
                Some(format!(
                    "{} per core counted over both processes, {} short of the goal; {cause_tail}",
                    fmt_rate(per_core),
                    fmt_rate(GOAL_PER_CORE - per_core),
                )),
            );
        }
        None => rep.goal(
            "probes/s per core",
            "≥ 200 000 (≤ 0.1 % incomplete)",
            "no step held",
            false,
            Some(format!(
                "even {} probes/s left more than 0.1 % of probes incomplete; {cause_tail}",
                fmt_rate(RATES[0] as f64)
            )),
        ),
    }
    rep.data = json!({
        "sender_cpu": scpu,
        "reflector_cpu": rcpu,
        "settle_s": settle,
        "window_s": window,
        "steps": steps,
        "capacity_step": cap.map(|i| steps[i].offered),
        "capacity_rate": cap.map(|i| steps[i].achieved),
        "per_core": cap.map(|i| steps[i].per_core()),
        "profile": prof_data,
        "profile_kernel_sample_pct": kernel_share,
        "decomposition": decomp,
        "reflector_summary": refl_sum,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_plans() {
        assert_eq!(plan_step(10_000), (1, 100_000));
        assert_eq!(plan_step(50_000), (1, 20_000));
        assert_eq!(plan_step(100_000), (2, 20_000));
        assert_eq!(plan_step(400_000), (8, 20_000));
        assert_eq!(plan_step(70_000), (2, 28_571));
    }

    #[test]
    fn incomplete_probes() {
        // All stamped and answered.
        assert_eq!(missing(1000, 1000, [1000; 4]), 0);
        // A lost request: no t2, t3, t4, no reply.
        assert_eq!(missing(1000, 999, [1000, 999, 999, 999]), 1);
        // A reply dropped at the sender's socket after T4 was stamped.
        assert_eq!(missing(1000, 998, [1000, 1000, 1000, 1000]), 2);
        // A stamp failed on a packet that went on.
        assert_eq!(missing(1000, 1000, [1000, 1000, 997, 1000]), 3);
        // Never negative.
        assert_eq!(missing(10, 12, [12; 4]), 0);
        assert!(holds(1000, 1));
        assert!(!holds(1000, 2));
        assert!(holds(100_000, 100));
        assert!(!holds(0, 0));
    }

    #[test]
    fn capacity_pick() {
        assert_eq!(pick_capacity(&[]), None);
        assert_eq!(pick_capacity(&[(false, 1.0)]), None);
        // The highest achieved rate that held, not the last step that held.
        let s = [
            (true, 10_000.0),
            (true, 50_000.0),
            (false, 90_000.0),
            (true, 80_000.0),
            (true, f64::NAN),
        ];
        assert_eq!(pick_capacity(&s), Some(3));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_rate(1234567.4), "1 234 567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_interval(20_000), "20 µs");
    }

    #[test]
    fn proc_stat_and_strace() {
        let st =
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 20 60 10 5 5 0 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n";
        let c = CpuStat::parse(st, Some(0)).unwrap();
        assert_eq!((c.busy, c.irq, c.steal, c.total), (40, 10, 0, 110));
        assert!(CpuStat::parse(st, Some(2)).is_none());
        assert_eq!(CpuStat::parse(st, None).unwrap().steal, 8);
        let u = cpu_use(CpuStat::default(), c);
        assert!((u.busy - 40.0 / 110.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_split() {
        let c = cause_split(Split::new(7.0, 0.1, 0.4), 4.0, 100.0, true);
        assert!(c.starts_with("of 7.00 µs of CPU per probe"), "{c}");
        assert!(c.contains("0.70 µs (10 %) is user space"), "{c}");
        assert!(c.contains("0.40 µs (6 %) its eBPF programs (4.0 stamping program runs"));
        assert!(c.contains("5.90 µs (84 %) the rest of the kernel"), "{c}");
        assert!(
            c.contains("(eBPF + rest) is 6.30 µs, more than that by itself"),
            "{c}"
        );
        let c = cause_split(Split::new(4.0, 0.5, 0.4), 4.0, 100.0, false);
        assert!(c.ends_with("is 2.00 µs"), "{c}");
        assert!(c.contains("floor included"), "{c}");
    }

    #[test]
    fn not_available() {
        assert_eq!(or_na(""), "n/a");
        assert_eq!(or_na("x"), "x");
    }

    #[test]
    fn where_probes_were_lost() {
        assert_eq!(loss_stages(10, [10; 4], 10), "none");
        assert_eq!(
            loss_stages(100, [100, 100, 90, 90], 90),
            "10 between T2 and T3 (at the reflector: stamped on arrival, never answered)"
        );
        assert_eq!(
            loss_stages(100, [99, 99, 99, 99], 97),
            "1 before T1 (never left the sender), 2 between T4 and the sender's socket \
             (stamped on arrival, never read)"
        );
    }
}
