//! Issue test 4: random loss in the router is reported exactly.
//!
//! The nft rule drops 10% of the *requests* (UDP to port 862) forwarded by R: dropping both
//! directions at 10% would lose 1 − 0.9² = 19% of the probes. Every drop then loses exactly one
//! probe, so `lost` must equal the rule's counter, plus any probe whose reply came after `-W`
//! (which the sender reports as `late`).

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::nft::NftLoss;
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::{Family, Routed, TestEnv};

const PROBES: u32 = 2000;
const INTERVAL: Duration = Duration::from_millis(1);
/// Share of the requests the rule drops, percent.
const LOSS_PCT: u32 = 10;
/// How many standard deviations of the binomial drop count the rule may stray from its mean.
const SIGMAS: f64 = 5.0;

#[test]
fn random_loss_is_reported_exactly() -> Result<()> {
    let Some(env) = TestEnv::acquire("random_loss_is_reported_exactly", &["ping", "nft"])? else {
        return Ok(());
    };
    let t = Routed::new()?;
    let _refl = env.mp.reflect(&t.b, &[])?;
    let nft = NftLoss::install(&t.r, "meta l4proto udp udp dport 862", LOSS_PCT)?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = PROBES.to_string();
    // -W as long as the whole sending phase: a reply is late only behind a stall that long.
    // Late replies are counted anyway; the generous wait covers the last probes, whose late
    // replies would come after the sender exits.
    let reply_wait = INTERVAL * PROBES;
    let (interval, wait) = (
        humantime::format_duration(INTERVAL).to_string(),
        humantime::format_duration(reply_wait).to_string(),
    );
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", &count, "-i", &interval, "-W", &wait],
        ping_timeout(PROBES, INTERVAL, reply_wait),
    )?;
    let dropped = nft.dropped_packets()?;
    let s = run.summary()?;
    let late = s.late;
    // Binomial drop count of the rule: mean n·p, standard deviation √(n·p·(1−p)).
    let p = LOSS_PCT as f64 / 100.0;
    let mean = s.sent as f64 * p;
    let bound = SIGMAS * (s.sent as f64 * p * (1.0 - p)).sqrt();
    eprintln!(
        "sent {} received {} lost {} late {late} loss_pct {:.2} (nft dropped {dropped}, \
         expected {mean:.0} ± {bound:.1}); loss lines {}",
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
        s.lost == dropped + late,
        "reported lost {} != nft drop counter {dropped} + late replies {late}",
        s.lost
    );
    // Guards the equality above against a rule that drops nothing (0 == 0).
    ensure!(
        (dropped as f64 - mean).abs() <= bound,
        "nft dropped {dropped} of {}: not {mean:.0} ± {bound:.1} ({SIGMAS}σ of a binomial \
         with p = {p})",
        s.sent
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
