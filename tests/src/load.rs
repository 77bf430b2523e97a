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
