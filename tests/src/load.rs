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
