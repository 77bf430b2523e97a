//! Issue test 4: random loss in the router is reported exactly.
//!
//! The nft rule drops 10% of the *requests* (UDP to port 862) forwarded by R: dropping both
//! directions at 10% would lose 1 − 0.9² = 19% of the probes. Every drop then loses exactly one
//! probe, so `lost` must equal the rule's counter.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_tests::nft::NftLoss;
use meshprobe_tests::scenario::ping_timeout;
use meshprobe_tests::{Family, Routed, TestEnv};

const PROBES: u32 = 2000;

#[test]
fn random_loss_is_reported_exactly() -> Result<()> {
    let Some(env) = TestEnv::acquire("random_loss_is_reported_exactly", &["ping", "nft"])? else {
        return Ok(());
    };
    let t = Routed::new()?;
    let _refl = env.mp.reflect(&t.b, &[])?;
    let nft = NftLoss::install(&t.r, "meta l4proto udp udp dport 862", 10)?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = PROBES.to_string();
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", &count, "-i", "1ms", "-W", "200ms"],
        ping_timeout(PROBES, Duration::from_millis(1), Duration::from_millis(200)),
    )?;
    let dropped = nft.dropped_packets()?;
    let s = run.summary()?;
    eprintln!(
        "sent {} received {} lost {} loss_pct {:.2} (nft dropped {dropped}); loss lines {}",
        s.sent,
        s.received,
        s.lost,
        s.loss_pct,
        run.losses.len()
    );
    ensure!(s.sent == PROBES as u64, "sent {}", s.sent);
    ensure!(
        s.received + s.lost == s.sent,
        "received {} + lost {} != sent {}",
        s.received,
        s.lost,
        s.sent
    );
    ensure!(
        s.lost == dropped,
        "reported lost {} != nft drop counter {dropped}",
        s.lost
    );
    ensure!(
        (s.loss_pct - 10.0).abs() <= 3.0,
        "loss_pct {:.2} not within 10 ± 3",
        s.loss_pct
    );
    let expect_pct = 100.0 * s.lost as f64 / s.sent as f64;
    ensure!(
        (s.loss_pct - expect_pct).abs() < 0.01,
        "loss_pct {} != 100·lost/sent {expect_pct}",
        s.loss_pct
    );
    ensure!(
        run.losses.len() as u64 == s.lost,
        "{} loss lines for {} lost",
        run.losses.len(),
        s.lost
    );
    Ok(())
}
