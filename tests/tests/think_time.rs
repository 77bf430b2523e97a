//! Issue test 3: reflector think time moves app RTT, not network RTT.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_tests::scenario::ping_timeout;
use meshprobe_tests::stats::{median, us};
use meshprobe_tests::{Family, TestEnv, TwoHosts};

const PROBES: u32 = 150;
const NET_TOLERANCE_NS: i64 = 10_000;
const MIN_APP_GROWTH_NS: i64 = 4_500_000;

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

    let mut res = Vec::new();
    for think in [None, Some("5ms")] {
        let refl_args: Vec<&str> = think.map(|d| vec!["--think-time", d]).unwrap_or_default();
        let refl = env.mp.reflect(&t.b, &refl_args)?;
        let run = env.mp.ping(&t.a, &args, timeout)?;
        refl.stop()?;
        let s = run.summary()?;
        ensure!(s.received == PROBES as u64, "think {think:?}: {s:?}");
        let net = median(&run.network_rtts()).unwrap();
        let app = median(&run.app_rtts()).unwrap();
        let turn = median(
            &run.probes
                .iter()
                .map(|p| p.turnaround_ns)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        eprintln!(
            "think {think:?}: median network RTT {} app RTT {} turnaround {}",
            us(net),
            us(app),
            us(turn)
        );
        res.push((net, app));
    }
    let (net0, app0) = res[0];
    let (net1, app1) = res[1];
    ensure!(
        (net1 - net0).abs() <= NET_TOLERANCE_NS,
        "median network RTT moved by {} with 5 ms think time ({} -> {})",
        us(net1 - net0),
        us(net0),
        us(net1)
    );
    ensure!(
        app1 - app0 >= MIN_APP_GROWTH_NS,
        "median app RTT grew by only {} ({} -> {})",
        us(app1 - app0),
        us(app0),
        us(app1)
    );
    Ok(())
}
