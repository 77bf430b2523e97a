//! Profiling shared by the scenarios that ask where a process's CPU goes (capacity,
//! footprint): `perf record`/`perf report`, `perf stat`, `strace -c`, and the split of the CPU
//! of one probe into user space, the stamping programs (the kernel's own accounting with
//! `kernel.bpf_stats_enabled=1`, less an empty program's floor) and the rest of the kernel.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::sample::bpf_stats::{BpfStatsGuard, EmptyTcProg, ProgStats, find_prog, process_progs};
use anyhow::{Result, bail};
use meshprobe_harness::TwoHosts;
use meshprobe_harness::child::run_with_timeout;
use serde::Serialize;

use crate::scenario::pause;

/// `f(0)` and `f(1)` side by side, each on a thread of its own (e.g. the same tool on two
/// processes at once).
pub fn both<T: Send>(f: impl Fn(usize) -> T + Sync) -> [T; 2] {
    let f = &f;
    std::thread::scope(|scope| {
        let a = scope.spawn(move || f(0));
        let b = scope.spawn(move || f(1));
        [
            a.join().expect("profiling thread"),
            b.join().expect("profiling thread"),
        ]
    })
}

// ---- perf stat -------------------------------------------------------------------------------

/// One perf stat reading of a process: syscalls, context switches, task-clock (ms), elapsed s.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PerfStat {
    pub syscalls: f64,
    pub switches: f64,
    pub task_clock_ms: f64,
    pub elapsed_s: f64,
}

pub fn parse_perf_stat(text: &str) -> PerfStat {
    let mut p = PerfStat::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(v), Some(what)) = (f.first(), f.get(1)) else {
            continue;
        };
        let Ok(v) = v.replace(',', "").parse::<f64>() else {
            continue;
        };
        match *what {
            "raw_syscalls:sys_enter" => p.syscalls = v,
            "context-switches" | "cs" => p.switches = v,
            "msec" if f.get(2) == Some(&"task-clock") => p.task_clock_ms = v,
            "seconds" if l.contains("time elapsed") => p.elapsed_s = v,
            _ => {}
        }
    }
    p
}

/// `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -p PID` for `secs`.
pub fn perf_stat(pid: u32, secs: f64) -> Result<PerfStat> {
    let mut cmd = std::process::Command::new("perf");
    cmd.args([
        "stat",
        "--no-big-num",
        "-e",
        "raw_syscalls:sys_enter,context-switches,task-clock",
        "-p",
        &pid.to_string(),
        "--",
        "sleep",
        &format!("{secs}"),
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs_f64(secs + 30.0))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let p = parse_perf_stat(&text);
    if p.elapsed_s <= 0.0 {
        bail!("perf stat -p {pid}: {}", text.trim());
    }
    Ok(p)
}

// ---- strace -c -------------------------------------------------------------------------------

/// `strace ARGS -p PID`, stopped with SIGINT after `secs` seconds.
pub fn strace(pid: u32, secs: u64, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-s", "INT", &secs.to_string(), "strace"]);
    cmd.args(args);
    cmd.args(["-p", &pid.to_string()]);
    run_with_timeout(cmd, Duration::from_secs(secs + 20))
}

/// `strace -c -f -p PID` for `secs` seconds: the summary table, at most `lines` lines.
pub fn strace_counts(pid: u32, secs: u64, lines: usize) -> Result<String> {
    let out = strace(pid, secs, &["-c", "-f"])?;
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with("strace: Process"))
        .take(lines)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// (syscall, calls, errors) rows of a `strace -c` table.
pub fn parse_strace(text: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() < 5 || f[0].parse::<f64>().is_err() || f.last() == Some(&"total") {
            continue;
        }
        let Ok(calls) = f[3].parse::<u64>() else {
            continue;
        };
        let errors = if f.len() >= 6 {
            f[4].parse::<u64>().unwrap_or(0)
        } else {
            0
        };
        out.push((f[f.len() - 1].to_string(), calls, errors));
    }
    out
}

/// The calls of the `total` row of a `strace -c` table.
pub fn strace_total(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
}

/// "sendto 1.00, recvmsg 1.02 (0.04 failed)": each syscall's share of the strace counts
/// scaled to `per_probe` syscalls per probe (perf stat's, untraced).
pub fn per_probe_breakdown(rows: &[(String, u64, u64)], per_probe: f64) -> String {
    let total: u64 = rows.iter().map(|r| r.1).sum();
    if total == 0 || !per_probe.is_finite() {
        return String::new();
    }
    rows.iter()
        .filter(|r| r.1 as f64 / total as f64 * per_probe >= 0.005)
        .map(|(n, c, e)| {
            let k = per_probe / total as f64;
            if *e > 0 {
                format!("{n} {:.2} ({:.2} failed)", *c as f64 * k, *e as f64 * k)
            } else {
                format!("{n} {:.2}", *c as f64 * k)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- perf record -----------------------------------------------------------------------------

/// `perf record -e cpu-clock -F FREQ -g -p PID` for `secs` seconds into `data`.
pub fn perf_record(pid: u32, secs: u64, freq: u32, data: &Path) -> Result<()> {
    let d = data.to_string_lossy().into_owned();
    let mut rec = std::process::Command::new("perf");
    rec.args([
        "record",
        "-e",
        "cpu-clock",
        "-F",
        &freq.to_string(),
        "-g",
        "-p",
        &pid.to_string(),
        "-o",
        &d,
        "--",
        "sleep",
        &secs.to_string(),
    ]);
    let out = run_with_timeout(rec, Duration::from_secs(secs + 30))?;
    if !out.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `perf report --no-children -g none` of `data` sorted by `sort`, rows above `limit` %.
fn perf_report(data: &Path, sort: &str, limit: &str) -> Result<String> {
    let d = data.to_string_lossy().into_owned();
    let mut rep = std::process::Command::new("perf");
    rep.args([
        "report",
        "-i",
        &d,
        "--stdio",
        "--no-children",
        "--sort",
        sort,
        "-g",
        "none",
        "--percent-limit",
        limit,
    ]);
    let out = run_with_timeout(rep, Duration::from_secs(60))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rows of a `perf report` worth showing: the sample count and the symbol rows, at most
/// `lines`.
pub fn trim_report(text: &str, lines: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty() && (!l.starts_with('#') || l.contains("Samples")))
        // perf pads its columns far to the right and ends each row with empty columns.
        .map(|l| l.trim_end().trim_end_matches(['-', ' ']).to_string())
        .take(lines)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top symbols of a recording (by dso and symbol, above `limit` %), at most `lines`.
pub fn perf_top(data: &Path, limit: &str, lines: usize) -> Result<String> {
    Ok(trim_report(&perf_report(data, "dso,symbol", limit)?, lines))
}

/// The share of a recording's samples (%) in the kernel (by dso).
pub fn perf_kernel_share(data: &Path) -> Result<f64> {
    Ok(parse_kernel_dso(&perf_report(data, "dso", "0")?))
}

fn parse_kernel_dso(text: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("[kernel"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|v| v.trim_end_matches('%').parse::<f64>().ok())
        .sum()
}

/// The first symbol row of [`perf_top`]'s text, its columns joined by single spaces.
pub fn top_symbol(text: &str) -> Option<String> {
    text.lines()
        .find(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Shares of perf samples (%) by mode, from `perf report --sort sym` (`[k]` kernel, `[.]`
/// user; others, e.g. hypervisor or unknown, in neither).
pub fn parse_sym_modes(text: &str) -> (f64, f64) {
    let (mut kernel, mut user) = (0.0, 0.0);
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(pct) = f
            .first()
            .and_then(|v| v.strip_suffix('%'))
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        match f.get(1) {
            Some(&"[k]") => kernel += pct,
            Some(&"[.]") => user += pct,
            _ => {}
        }
    }
    (kernel, user)
}

/// The share of perf samples (%) inside BPF programs, with the helpers they call: the Children
/// column of `perf report --children --sort sym`, summed over `bpf_prog_*` symbols.
pub fn parse_bpf_children(text: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("bpf_prog_"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|v| v.strip_suffix('%').and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// perf samples of a recording by mode, %: (kernel, user, inside BPF programs inclusive).
pub fn perf_modes(data: &Path) -> Result<(f64, f64, f64)> {
    let d = data.to_string_lossy().into_owned();
    let report = |extra: &[&str]| -> Result<String> {
        let mut rep = std::process::Command::new("perf");
        rep.args(["report", "-i", &d, "--stdio", "--sort", "sym", "-g", "none"]);
        rep.args(["--percent-limit", "0"]);
        rep.args(extra);
        let out = run_with_timeout(rep, Duration::from_secs(60))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (k, u) = parse_sym_modes(&report(&["--no-children"])?);
    let bpf = parse_bpf_children(&report(&["--children"])?);
    if k + u <= 0.0 {
        bail!("perf report of {d}: no samples");
    }
    Ok((k, u, bpf))
}

// ---- where the CPU of one probe goes ---------------------------------------------------------

/// One of the four hooks a probe's packets are stamped at. Process 0 is the prober (in A, on
/// [`TwoHosts::A_IF`]), process 1 the reflector (in B, on [`TwoHosts::B_IF`]).
pub struct Hook {
    pub stamp: &'static str,
    /// The process whose program it is: 0 prober, 1 reflector.
    pub holder: usize,
    pub prog: &'static str,
    pub ingress: bool,
    /// The process on whose CPU (in whose context) it runs: 0 prober, 1 reflector.
    pub context: usize,
}

/// The four stamping hooks in a probe's order. On a veth a packet's receive path (TC ingress,
/// IP, UDP, socket enqueue, wake-up) runs in the NET_RX softirq of the CPU that sent it, in
/// the sending task's context (this kernel has no IRQ_TIME_ACCOUNTING, so it is charged to
/// that task): T1 and T2 run on the prober's CPU, T3 and T4 on the reflector's.
pub const HOOKS: [Hook; 4] = [
    Hook {
        stamp: "T1",
        holder: 0,
        prog: "meshprobe_egress",
        ingress: false,
        context: 0,
    },
    Hook {
        stamp: "T2",
        holder: 1,
        prog: "meshprobe_ingress",
        ingress: true,
        context: 0,
    },
    Hook {
        stamp: "T3",
        holder: 1,
        prog: "meshprobe_egress",
        ingress: false,
        context: 1,
    },
    Hook {
        stamp: "T4",
        holder: 0,
        prog: "meshprobe_ingress",
        ingress: true,
        context: 1,
    },
];

/// The kernel's accounting of one program over a window (deltas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Runs {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl Runs {
    pub fn ns_per_run(self) -> f64 {
        if self.run_cnt == 0 {
            f64::NAN
        } else {
            self.run_time_ns as f64 / self.run_cnt as f64
        }
    }
}

/// µs per probe in each context [prober, reflector] of the programs at [`HOOKS`], less a
/// floor of `floor_ns` per run at each hook (0 for none; never below 0 per hook).
pub fn ebpf_per_context(runs: &[Runs; 4], floor_ns: &[f64; 4], probes: f64) -> [f64; 2] {
    let mut out = [0.0; 2];
    if probes <= 0.0 {
        return [f64::NAN; 2];
    }
    for (i, h) in HOOKS.iter().enumerate() {
        let floor = if floor_ns[i].is_finite() {
            floor_ns[i]
        } else {
            0.0
        };
        let ns = (runs[i].run_time_ns as f64 - floor * runs[i].run_cnt as f64).max(0.0);
        out[h.context] += ns / probes / 1000.0;
    }
    out
}

/// One process's CPU per probe split three ways, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Split {
    pub total: f64,
    /// In user mode: meshprobe's own code, libc, the vDSO.
    pub user: f64,
    /// Inside the stamping programs (kernel accounting).
    pub ebpf: f64,
    /// The rest of the kernel: total − user − eBPF.
    pub rest: f64,
}

impl Split {
    pub fn new(total: f64, user_share: f64, ebpf: f64) -> Split {
        let user = total * user_share;
        Split {
            total,
            user,
            ebpf,
            rest: total - user - ebpf,
        }
    }

    pub fn add(self, o: Split) -> Split {
        Split {
            total: self.total + o.total,
            user: self.user + o.user,
            ebpf: self.ebpf + o.ebpf,
            rest: self.rest + o.rest,
        }
    }
}

/// "1.23 µs (17 %)": `part` of `total`.
pub fn us_share(part: f64, total: f64) -> String {
    if !part.is_finite() {
        return "—".into();
    }
    if total > 0.0 {
        format!("{part:.2} µs ({:.0} %)", part / total * 100.0)
    } else {
        format!("{part:.2} µs")
    }
}

/// The programs at [`HOOKS`] with their accounting, read from the holders' fdinfo.
fn hook_stats(pids: [u32; 2], names: &mut BTreeMap<u32, String>) -> Result<[ProgStats; 4]> {
    let progs = [
        process_progs(pids[0], names)?,
        process_progs(pids[1], names)?,
    ];
    let get = |h: &Hook| find_prog(&progs[h.holder], h.prog).cloned();
    Ok([
        get(&HOOKS[0])?,
        get(&HOOKS[1])?,
        get(&HOOKS[2])?,
        get(&HOOKS[3])?,
    ])
}

/// What [`bpf_stats_window`] measured; `S` is the caller's own sample (rates, CPU).
pub struct StatsWindow<S> {
    /// Samples around the window with the accounting on.
    pub a: S,
    pub b: S,
    /// Per hook (order of [`HOOKS`]): meshprobe's program over that window.
    pub runs: [Runs; 4],
    /// The empty program on each hook and the samples around its window, or why it could not
    /// be attached.
    pub floor: std::result::Result<([Runs; 4], S, S), String>,
}

/// With `kernel.bpf_stats_enabled=1` (restored on return): the stamping programs of the
/// prober `pids[0]` (A) and the reflector `pids[1]` (B) over `secs`, then `floor_s` more with
/// an empty program added after meshprobe's on each of the four hooks (it returns
/// TC_ACT_UNSPEC, so the next program runs): the accounting's floor. `sample` is taken right
/// before and after each window.
pub fn bpf_stats_window<S>(
    pids: [u32; 2],
    t: &TwoHosts,
    secs: f64,
    floor_s: f64,
    mut sample: impl FnMut() -> Result<S>,
) -> Result<StatsWindow<S>> {
    let guard = BpfStatsGuard::enable()?;
    let mut names = BTreeMap::new();
    // Names first (bpftool, slow), so the readings below are adjacent to the samples.
    hook_stats(pids, &mut names)?;
    let h0 = hook_stats(pids, &mut names)?;
    let a = sample()?;
    pause(Duration::from_secs_f64(secs))?;
    let b = sample()?;
    let h1 = hook_stats(pids, &mut names)?;
    let mut runs = [Runs::default(); 4];
    for i in 0..4 {
        if h1[i].id != h0[i].id {
            bail!("{} changed program id during the window", HOOKS[i].prog);
        }
        let (rt, cnt) = h1[i].delta(&h0[i]);
        runs[i] = Runs {
            run_time_ns: rt,
            run_cnt: cnt,
        };
    }
    let empties: Result<Vec<EmptyTcProg>> = HOOKS
        .iter()
        .map(|h| {
            let (ns, ifname) = if h.holder == 0 {
                (&t.a, TwoHosts::A_IF)
            } else {
                (&t.b, TwoHosts::B_IF)
            };
            EmptyTcProg::attach(ns, ifname, h.ingress)
        })
        .collect();
    let floor = match empties {
        Ok(empties) => {
            let e0: Vec<(u64, u64)> = empties.iter().map(|e| e.stats()).collect::<Result<_>>()?;
            let fa = sample()?;
            pause(Duration::from_secs_f64(floor_s))?;
            let fb = sample()?;
            let e1: Vec<(u64, u64)> = empties.iter().map(|e| e.stats()).collect::<Result<_>>()?;
            let mut f = [Runs::default(); 4];
            for i in 0..4 {
                f[i] = Runs {
                    run_time_ns: e1[i].0.saturating_sub(e0[i].0),
                    run_cnt: e1[i].1.saturating_sub(e0[i].1),
                };
            }
            Ok((f, fa, fb))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    drop(guard);
    Ok(StatsWindow { a, b, runs, floor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_text() {
        let t = "\n Performance counter stats for process id '42':\n\n\
                 \x20          123456      raw_syscalls:sys_enter           #  41.1 K/sec\n\
                 \x20             789      context-switches                 #  263 /sec\n\
                 \x20         3001.50 msec task-clock                       #  1.0 CPUs utilized\n\n\
                 \x20      3.002 seconds time elapsed\n";
        let p = parse_perf_stat(t);
        assert_eq!(p.syscalls, 123456.0);
        assert_eq!(p.switches, 789.0);
        assert_eq!(p.task_clock_ms, 3001.5);
        assert_eq!(p.elapsed_s, 3.002);
    }

    #[test]
    fn strace_text() {
        let t = "% time     seconds  usecs/call     calls    errors syscall\n\
                 ------ ----------- ----------- --------- --------- ----------------\n\
                 \x2059.21    0.652421          16     40000           sendto\n\
                 \x2033.66    0.370901           8     42000      2000 recvmsg\n\
                 ------ ----------- ----------- --------- --------- ----------------\n\
                 100.00    1.101955          12     82000      2000 total\n";
        let rows = parse_strace(t);
        assert_eq!(
            rows,
            vec![
                ("sendto".to_string(), 40000, 0),
                ("recvmsg".to_string(), 42000, 2000)
            ]
        );
        assert_eq!(strace_total(t), Some(82000.0));
        assert_eq!(strace_total("nothing"), None);
        assert_eq!(
            per_probe_breakdown(&rows, 2.05),
            "sendto 1.00, recvmsg 1.05 (0.05 failed)"
        );
    }

    #[test]
    fn perf_report_text() {
        let t = "# Event count (approx.): 3000\n\
                 # Samples: 3K of event 'cpu-clock'\n\
                 #\n\
                 \x20    8.19%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore    --   \n\
                 \n\
                 \x20    2.74%  libc.so.6          [.] _int_free\n";
        let r = trim_report(t, 10);
        assert_eq!(
            r,
            "# Samples: 3K of event 'cpu-clock'\n\
             \x20    8.19%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore\n\
             \x20    2.74%  libc.so.6          [.] _int_free"
        );
        assert_eq!(trim_report(t, 1).lines().count(), 1);
        assert_eq!(
            top_symbol(&r).as_deref(),
            Some("8.19% [kernel.kallsyms] [k] _raw_spin_unlock_irqrestore")
        );
        assert_eq!(top_symbol("# nothing"), None);
        let d = "# Samples: 3K\n\
                 \x20   60.00%  [kernel.kallsyms]\n\
                 \x20   30.00%  meshprobe\n\
                 \x20   10.00%  [kernel.kallsyms]\n";
        assert!((parse_kernel_dso(d) - 70.0).abs() < 1e-9);
    }

    #[test]
    fn perf_report_modes() {
        let t = "# Samples: 3K of event 'cpu-clock'\n\
                 #\n\
                 \x20    8.19%  [k] _raw_spin_unlock_irqrestore\n\
                 \x20    2.74%  [.] _int_free\n\
                 \x20    1.62%  [k] bpf_prog_9a69c0f1dbcca8f5_meshprobe_ingress\n\
                 \x20    0.50%  [H] something\n";
        let (k, u) = parse_sym_modes(t);
        assert!(
            (k - 9.81).abs() < 1e-9 && (u - 2.74).abs() < 1e-9,
            "{k} {u}"
        );
        let c = "# Children      Self  Symbol\n\
                 \x20   40.00%     0.00%  [k] entry_SYSCALL_64\n\
                 \x20    5.00%     1.62%  [k] bpf_prog_9a69c0f1dbcca8f5_meshprobe_ingress\n\
                 \x20    2.50%     1.00%  [k] bpf_prog_9a69c0f1dbcca8f5_meshprobe_egress\n";
        assert!((parse_bpf_children(c) - 7.5).abs() < 1e-9);
    }

    #[test]
    fn cpu_split() {
        let r = |ns, cnt| Runs {
            run_time_ns: ns,
            run_cnt: cnt,
        };
        assert!(r(5, 0).ns_per_run().is_nan());
        assert_eq!(r(300, 2).ns_per_run(), 150.0);
        // 1000 probes, each hook 1000 runs at 200 ns: 0.2 µs per hook; T1+T2 on the prober's
        // CPU, T3+T4 on the reflector's.
        let runs = [
            r(200_000, 1000),
            r(200_000, 1000),
            r(300_000, 1000),
            r(100_000, 1000),
        ];
        let e = ebpf_per_context(&runs, &[0.0; 4], 1000.0);
        assert!((e[0] - 0.4).abs() < 1e-9 && (e[1] - 0.4).abs() < 1e-9);
        // Less a floor of 50 ns per run (NaN: no floor at that hook; never below zero).
        let e = ebpf_per_context(&runs, &[50.0, f64::NAN, 50.0, 500.0], 1000.0);
        assert!((e[0] - 0.35).abs() < 1e-9, "{e:?}");
        assert!((e[1] - 0.25).abs() < 1e-9, "{e:?}");
        assert!(ebpf_per_context(&runs, &[0.0; 4], 0.0)[0].is_nan());
        let s = Split::new(4.0, 0.25, 0.5);
        assert_eq!((s.user, s.ebpf, s.rest), (1.0, 0.5, 2.5));
        let t = s.add(Split::new(3.0, 0.0, 1.0));
        assert_eq!((t.total, t.user, t.ebpf, t.rest), (7.0, 1.0, 1.5, 4.5));
        assert_eq!(us_share(1.0, 4.0), "1.00 µs (25 %)");
        assert_eq!(us_share(1.0, 0.0), "1.00 µs");
        assert_eq!(us_share(f64::NAN, 1.0), "—");
    }

    #[test]
    fn side_by_side() {
        let [a, b] = both(|i| i * 10);
        assert_eq!((a, b), (0, 10));
    }
}
