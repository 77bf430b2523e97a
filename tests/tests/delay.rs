//! Issue test 2: a known delay added on the path shows up in the median network RTT.
//!
//! Routed topology; `meshprobe-delay` holds requests on R's interface toward B. Runs without
//! and with the delay alternate (A B B A) so drift cancels; the added median must be the
//! injected delay within the same runs' own noise ([`Shift`]).

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::stats::{Shift, median, us};
use meshprobe_harness::{Family, Routed, TestEnv};

const DELAY_NS: i64 = 500_000;
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
    let delay = format!("{DELAY_NS}ns");

    // One Vec per run: the spread between runs of a condition is part of the noise.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for delayed in [false, true, true, false] {
        let _delay = if delayed {
            Some(
                env.mp
                    .delay(&t.r, Routed::RB_IF, &delay, &["--udp-port", "862"])?,
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
        let rtts = run.network_rtts();
        eprintln!(
            "delay {delayed}: median network RTT {} over {} probes",
            us(median(&rtts).unwrap()),
            rtts.len()
        );
        if delayed {
            with.push(rtts)
        } else {
            without.push(rtts)
        }
    }
    let shift = Shift::of(&without, &with).expect("every run has probes");
    eprintln!("{} (injected {})", shift.report(), us(DELAY_NS));
    shift.check(DELAY_NS, "added delay")
}
