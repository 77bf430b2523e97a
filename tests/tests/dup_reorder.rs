//! Issue test 5: duplicates and reordering, from a fake reflector written here.
//!
//! B runs no meshprobe: a plain UDP socket on port 862 receives the requests and answers with
//! replies built by hand from `probe_common::wire`; some are sent twice, some held back and sent
//! after the next one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::fake::{Action, FakeReflector};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::{Family, STAMP_PORT, TestEnv, TwoHosts};

const PROBES: u32 = 60;

/// The action for the `n`th probe of the session (counted from its first sequence number,
/// which is random): the last probes get plain replies, so the session ends with nothing held.
fn plan(n: u32) -> Action {
    match n % 10 {
        3 => Action::Duplicate,
        6 => Action::Reorder,
        _ => Action::Reply,
    }
}

#[test]
fn duplicates_and_reordering_are_counted_not_sampled() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "duplicates_and_reordering_are_counted_not_sampled",
        &["ping"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    // Requests arrive in order here (one veth): the first one carries the first sequence number.
    let first = std::sync::OnceLock::new();
    let fake = FakeReflector::start(
        &t.b,
        SocketAddr::new(t.b_addr(Family::V4), STAMP_PORT),
        move |seq| plan(seq.wrapping_sub(*first.get_or_init(|| seq))),
    )?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = PROBES.to_string();
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", &count, "-i", "10ms", "-W", "500ms"],
        ping_timeout(
            PROBES,
            Duration::from_millis(10),
            Duration::from_millis(500),
        ),
    )?;
    let st = fake.stop()?;
    let s = run.summary()?;
    eprintln!("fake reflector: {st:?}");
    eprintln!(
        "summary: sent {} received {} lost {} duplicates {} reordered {} rejected {:?}; lines: {} probe, {} duplicate, {} reordered",
        s.sent,
        s.received,
        s.lost,
        s.duplicates,
        s.reordered,
        s.rejected,
        run.probes.len(),
        run.duplicates.len(),
        run.reordered.len()
    );
    ensure!(
        st.requests == PROBES as u64,
        "fake reflector saw {} requests",
        st.requests
    );
    ensure!(
        st.duplicated > 0 && st.reordered > 0,
        "nothing crafted: {st:?}"
    );
    ensure!(s.sent == PROBES as u64, "sent {}", s.sent);
    ensure!(
        s.duplicates == st.duplicated,
        "duplicates {} != crafted {}",
        s.duplicates,
        st.duplicated
    );
    ensure!(
        s.reordered == st.reordered,
        "reordered {} != crafted {}",
        s.reordered,
        st.reordered
    );
    ensure!(
        s.received == PROBES as u64,
        "received {} != unique probes {PROBES}",
        s.received
    );
    ensure!(s.lost == 0, "lost {}", s.lost);
    let unique: HashSet<_> = run.probes.iter().map(|p| (p.ssid, p.seq)).collect();
    ensure!(
        run.probes.len() == PROBES as usize && unique.len() == PROBES as usize,
        "{} probe lines, {} unique: duplicates must not be samples",
        run.probes.len(),
        unique.len()
    );
    ensure!(
        run.duplicates.len() as u64 == st.duplicated,
        "{} duplicate lines",
        run.duplicates.len()
    );
    ensure!(
        run.reordered.len() as u64 == st.reordered,
        "{} reordered lines",
        run.reordered.len()
    );
    Ok(())
}
