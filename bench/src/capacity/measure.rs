//! What is read at one instant of a step (both processes' CPU, the two CPUs, ksoftirqd, the
//! t1 counter) and the use over a window between two such readings.

use std::time::Instant;

use anyhow::{Context, Result};
use meshprobe_harness::load::CpuStat;
use serde::Serialize;

use crate::sample::held_map::{HeldMap, counters_by_name};
use crate::sample::procfs::{thread_totals, user_sys_ticks};

/// One process's CPU at an instant.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cpu {
    /// sum_exec_runtime of every thread, ns.
    pub(super) sched_ns: u64,
    pub(super) switches: u64,
    pub(super) user_ticks: u64,
    pub(super) sys_ticks: u64,
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
pub(super) struct Use {
    /// Fraction of one core.
    pub(super) cores: f64,
    /// Share of the CPU ticks in the kernel (stime / (utime + stime)).
    pub(super) sys_share: f64,
    pub(super) switches_per_s: f64,
}

pub(super) fn usage(a: Cpu, b: Cpu, secs: f64) -> Use {
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
pub(super) struct CpuUse {
    pub(super) busy: f64,
    pub(super) irq: f64,
    pub(super) steal: f64,
}

pub(super) fn cpu_use(a: CpuStat, b: CpuStat) -> CpuUse {
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
pub(super) struct Sample {
    /// /proc/stat of the sender's and the reflector's CPU.
    pub(super) cpus: [CpuStat; 2],
    pub(super) at: Instant,
    pub(super) sender: Cpu,
    pub(super) reflector: Cpu,
    /// sum_exec_runtime of the ksoftirqd threads of both CPUs, ns.
    pub(super) ksoftirqd_ns: u64,
    pub(super) t1: u64,
}

pub(super) fn sample(
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
pub(super) fn stamps_of(m: &HeldMap) -> Result<([u64; 4], u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
