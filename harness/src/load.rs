//! CPU load for measurements under stress.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::child::ChildGuard;

/// `stress-ng --cpu N --timeout T` in the root namespace (CPU load has no namespace); returns
/// once stress-ng has dispatched its workers. Dropping the guard stops it.
pub fn cpu_stress(workers: usize, timeout: Duration) -> Result<ChildGuard> {
    let mut cmd = Command::new("stress-ng");
    cmd.args([
        "--cpu",
        &workers.to_string(),
        "--cpu-method",
        "matrixprod",
        "--timeout",
        &format!("{}s", timeout.as_secs().max(1)),
    ]);
    let mut g = ChildGuard::spawn(cmd, format!("stress-ng --cpu {workers}"))?;
    // stress-ng reports "dispatching hogs" once forked; then give the hogs a moment to spin up.
    let _ = g.wait_stderr("dispatching", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    if !g.is_running() {
        anyhow::bail!("stress-ng exited early: {}", g.stderr_text());
    }
    Ok(g)
}

/// Number of online CPUs.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A PM QoS request of 0 µs CPU wake-up latency (`/dev/cpu_dma_latency`), held while the guard
/// lives, as latency tools such as cyclictest do: idle CPUs poll instead of halting, so a
/// probe sent after 1 ms of idleness does not find the caches and TLB cold (on a KVM guest a
/// halted vCPU gives its core away). The kernel drops the request when the file is closed.
pub struct WakeLatency {
    file: Option<std::fs::File>,
}

impl WakeLatency {
    /// Requests 0 µs; without /dev/cpu_dma_latency (or permission) it says so and holds
    /// nothing, and the measurement runs as the machine is.
    pub fn zero() -> WakeLatency {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|_| f));
        match file {
            Ok(f) => WakeLatency { file: Some(f) },
            Err(e) => {
                eprintln!("note: no PM QoS request (/dev/cpu_dma_latency: {e}); CPUs may halt");
                WakeLatency { file: None }
            }
        }
    }

    pub fn held(&self) -> bool {
        self.file.is_some()
    }
}

/// One CPU's counters from /proc/stat (USER_HZ ticks): busy (everything but idle and iowait),
/// softirq + irq, steal (time the hypervisor ran something else while this vCPU wanted to
/// run), total.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuStat {
    pub busy: u64,
    pub irq: u64,
    pub steal: u64,
    pub total: u64,
}

impl CpuStat {
    /// The line of CPU `cpu`, or with `None` the sum over all CPUs (the `cpu` line).
    pub fn parse(text: &str, cpu: Option<usize>) -> Option<CpuStat> {
        let tag = cpu.map_or_else(|| "cpu".to_string(), |c| format!("cpu{c}"));
        let l = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(tag.as_str()))?;
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() < 8 {
            return None;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
        let total: u64 = f[..8].iter().sum();
        Some(CpuStat {
            busy: total - f[3] - f[4],
            irq: f[5] + f[6],
            steal: f[7],
            total,
        })
    }

    /// All CPUs now; `None` without a readable /proc/stat.
    pub fn now() -> Option<CpuStat> {
        CpuStat::parse(&std::fs::read_to_string("/proc/stat").ok()?, None)
    }
}

/// Milliseconds in `ticks` of /proc/stat (USER_HZ).
pub fn ticks_ms(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}
