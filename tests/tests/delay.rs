//! Issue test 2: a known delay added on the path shows up in the median network RTT.
//!
//! Routed topology; `meshprobe delay` holds requests on R's interface toward B. Runs without
//! and with the delay alternate (A B B A) so drift cancels.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_tests::scenario::ping_timeout;
use meshprobe_tests::stats::{median, us};
use meshprobe_tests::{Family, Routed, TestEnv};

const DELAY_NS: i64 = 500_000;
const TOLERANCE_NS: i64 = 10_000;
const PROBES_PER_RUN: u32 = 150;

#[test]
fn added_delay_appears_in_median_network_rtt() -> Result<()> {
    let Some(env) = TestEnv::acquire("added_delay_appears_in_median_network_rtt", &["ping"])?
    else {
        return Ok(());
    };
    let t = Routed::new()?;
    let _refl = env.mp.reflect(&t.b, &[])?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = PROBES_PER_RUN.to_string();
    let args = [peer.as_str(), "-c", &count, "-i", "3ms", "-W", "200ms"];
    let timeout = ping_timeout(
        PROBES_PER_RUN,
        Duration::from_millis(3),
        Duration::from_millis(200),
    );

    let mut without = Vec::new();
    let mut with = Vec::new();
    for delayed in [false, true, true, false] {
        let _delay = if delayed {
            Some(
                env.mp
                    .delay(&t.r, Routed::RB_IF, "500us", &["--udp-port", "862"])?,
            )
        } else {
            None
        };
        let run = env.mp.ping(&t.a, &args, timeout)?;
        let s = run.summary()?;
        ensure!(
            s.received == PROBES_PER_RUN as u64,
            "delayed={delayed}: {s:?}"
        );
        let m = median(&run.network_rtts()).unwrap();
        eprintln!(
            "delay {delayed}: median network RTT {} over {} probes",
            us(m),
            run.probes.len()
        );
        if delayed {
            with.extend(run.network_rtts())
        } else {
            without.extend(run.network_rtts())
        }
    }
    let m0 = median(&without).unwrap();
    let m1 = median(&with).unwrap();
    let added = m1 - m0;
    eprintln!(
        "median without {} with {} -> added {} (injected {})",
        us(m0),
        us(m1),
        us(added),
        us(DELAY_NS)
    );
    ensure!(
        (added - DELAY_NS).abs() <= TOLERANCE_NS,
        "measured added delay {} differs from the injected {} by more than {}",
        us(added),
        us(DELAY_NS),
        us(TOLERANCE_NS)
    );
    Ok(())
}
