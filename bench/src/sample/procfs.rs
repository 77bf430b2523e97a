//! A process's CPU, memory and context switches from /proc (schedstat, status, stat), and the
//! ksoftirqd threads.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};

/// A process's memory and CPU at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// CPU time of every thread from the scheduler (schedstat), ns: a 1 s sample of a process
    /// using 2 % of a core is 2 ticks of utime+stime, but 20 000 000 ns.
    pub cpu_ns: u64,
    /// Voluntary + involuntary context switches of every thread.
    pub switches: u64,
}

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// VmRSS from `/proc/PID/status` and utime+stime from `/proc/PID/stat`.
pub fn sample_process(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let (cpu_ns, switches) = thread_totals(pid)?;
    Ok(ProcSample {
        at,
        rss_kib,
        cpu_ns,
        switches,
    })
}

/// Totals over every thread of process `pid`: CPU time run (`sum_exec_runtime` from
/// `/proc/PID/task/*/schedstat`, nanoseconds) and context switches (voluntary + involuntary
/// from `/proc/PID/task/*/status`). Threads that ended are not counted.
pub fn thread_totals(pid: u32) -> Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    let (mut ns, mut switches) = (0u64, 0u64);
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok((ns, switches))
}

/// A process's user and system CPU time (utime, stime from `/proc/PID/stat`, clock ticks).
pub fn user_sys_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_user_sys(&stat).ok_or_else(|| anyhow!("bad /proc/{pid}/stat: {stat:?}"))
}

/// utime and stime (fields 14 and 15, clock ticks) of a `/proc/PID/stat` or
/// `/proc/PID/task/TID/stat` line.
pub fn parse_stat_user_sys(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest's first field is field 3 (state).
    let mut f = rest.split_whitespace().skip(14 - 3);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The pid of the kernel thread `ksoftirqd/CPU`, if there is one.
pub fn ksoftirqd_pid(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_stat_user_sys;

    #[test]
    fn stat_ticks() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0\n";
        assert_eq!(parse_stat_user_sys(stat), Some((17, 5)));
        assert_eq!(parse_stat_user_sys("42 (x) S 1 2"), None);
        assert_eq!(parse_stat_user_sys("no paren"), None);
    }
}
