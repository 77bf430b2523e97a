//! Issue test 3: reflector think time moves app RTT, not network RTT.
//!
//! Runs without and with think time alternate (none, think, think, none) so drift cancels.
//! Network RTT must not shift (a think time leaking into it would shift it by the think
//! time); every reply waits at least the think time (a sleep cannot come up short), so the
//! median turnaround and the app RTT shift must reach it.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::stats::{Shift, median, us};
use meshprobe_harness::{Family, TestEnv, TwoHosts};

const PROBES: u32 = 150;
const THINK: Duration = Duration::from_millis(5);

#[test]
fn think_time_grows_app_rtt_not_network_rtt() -> Result<()> {
    let Some(env) = TestEnv::acquire("think_time_grows_app_rtt_not_network_rtt", &["ping"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = PROBES.to_string();
    let args = [peer.as_str(), "-c", &count, "-i", "10ms", "-W", "500ms"];
    let timeout = ping_timeout(
        PROBES,
        Duration::from_millis(10),
        Duration::from_millis(500),
    );
    let think_ns = THINK.as_nanos() as i64;
    let think_arg = humantime::format_duration(THINK).to_string();

    // Per condition, one Vec per run: (network, app, turnaround) RTTs.
    let mut net = [Vec::new(), Vec::new()];
    let mut app = [Vec::new(), Vec::new()];
    let mut turn = [Vec::new(), Vec::new()];
    for thinking in [false, true, true, false] {
        let refl_args: Vec<&str> = if thinking {
            vec!["--think-time", &think_arg]
        } else {
            vec![]
        };
        let refl = env.mp.reflect(&t.b, &refl_args)?;
        let run = env.mp.ping(&t.a, &args, timeout)?;
        refl.stop()?;
        let s = run.summary()?;
        ensure!(s.received == PROBES as u64, "think {thinking}: {s:?}");
        let turns: Vec<i64> = run.probes.iter().map(|p| p.turnaround_ns).collect();
        eprintln!(
            "think {thinking}: median network RTT {} app RTT {} turnaround {}",
            us(median(&run.network_rtts()).unwrap()),
            us(median(&run.app_rtts()).unwrap()),
            us(median(&turns).unwrap())
        );
        let k = usize::from(thinking);
        net[k].push(run.network_rtts());
        app[k].push(run.app_rtts());
        turn[k].push(turns);
    }
    let net = Shift::of(&net[0], &net[1]).expect("every run has probes");
    let app = Shift::of(&app[0], &app[1]).expect("every run has probes");
    let turn_think = median(&turn[1].concat()).expect("probes");
    eprintln!("network RTT: {}", net.report());
    eprintln!("app RTT: {}", app.report());
    eprintln!(
        "turnaround with think time: median {} (think time {})",
        us(turn_think),
        us(think_ns)
    );
    net.check_unchanged(think_ns, "network RTT with think time")?;
    ensure!(
        turn_think >= think_ns,
        "median turnaround {} with a think time of {}: replies left before their wait was over",
        us(turn_think),
        us(think_ns)
    );
    // The app RTT contains the whole turnaround, so it grows by at least the think time; the
    // wake-up after the sleep adds a machine-dependent amount on top, so no upper bound.
    let tol = app.tolerance();
    ensure!(
        2 * tol < think_ns,
        "app RTT: too noisy to judge a growth of {}: {}",
        us(think_ns),
        app.report()
    );
    ensure!(
        app.added >= think_ns - tol,
        "app RTT grew by less than the think time {}: {}",
        us(think_ns),
        app.report()
    );
    Ok(())
}
