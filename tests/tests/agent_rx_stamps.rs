//! With `--no-sw-rx-stamps` the agent in kernel mode asks the kernel for no RX software stamps
//! (they turn on the host-wide stamping of every received packet; scenario 3 of the benchmarks
//! measures that cost). The TC programs stamp T4 into the reply's echoed padding. A reply
//! without room for it (44-octet probes, or a reflector that does not echo the padding) must
//! still get a kernel T4: the agent then turns RX software stamps on, once, and says so. By
//! default they are on from the start, and nothing needs switching.
//!
//! Two agents probe each other: node0 with 44-octet probes (replies have no room), node1 with
//! the default size. node0 must log the switch exactly once and node1 never; both directions
//! must measure the same path (p50 of the network RTT within 25 µs of each other). Had node0
//! fallen back to its userspace receive time, its figure would carry the wake-up of its
//! process, tens of µs or more on this kind of machine.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_tests::agent::{Lab, num2, window_now};
use meshprobe_tests::stats::median;
use meshprobe_tests::topo::Family;

const SWITCH_LINE: &str = "no room for the in-band T4: RX software timestamps turned on";
const AGREEMENT_NS: i64 = 25_000;

#[test]
fn replies_without_room_for_t4_turn_rx_stamps_on_once() -> Result<()> {
    let Some(mut lab) = Lab::acquire(
        "replies_without_room_for_t4_turn_rx_stamps_on_once",
        2,
        Family::V4,
        false,
        false,
    )?
    else {
        return Ok(());
    };
    for i in 0..2 {
        let other = 1 - i;
        let mut cfg = lab
            .config(i)
            .env(
                "MESHPROBE_PEERS",
                format!("{}={}", Lab::node_id(other), lab.node_ip(other)),
            )
            .env("MESHPROBE_NO_SW_RX_STAMPS", "true");
        if i == 0 {
            cfg = cfg.env("MESHPROBE_SIZES", "44");
        }
        lab.start_agent_with(i, &cfg)?;
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&[0, 1], s0 + 3, Duration::from_secs(30))?;

    let p50s = |i: usize, from: u64| -> Vec<i64> {
        lab.agent(i)
            .summaries()
            .iter()
            .filter(|s| meshprobe_tests::agent::num(s, "window_seq") >= from)
            .filter_map(|s| num2(s, "network_rtt_ns", "p50"))
            .collect()
    };
    // Windows after the first full one: the switch happened in node0's first reply.
    let (a, b) = (p50s(0, s0 + 1), p50s(1, s0 + 1));
    let (ma, mb) = (
        median(&a).context("node0 measured nothing")?,
        median(&b).context("node1 measured nothing")?,
    );
    eprintln!(
        "network RTT p50 (median of windows): node0 (44-octet probes, socket RX stamp) {:.1} µs \
         over {} windows, node1 (in-band T4) {:.1} µs over {} windows",
        ma as f64 / 1e3,
        a.len(),
        mb as f64 / 1e3,
        b.len()
    );
    let e0 = lab.agent(0).stderr_text();
    let e1 = lab.agent(1).stderr_text();
    ensure!(
        e0.matches(SWITCH_LINE).count() == 1,
        "node0 should say once that it turned RX stamps on; stderr:\n{e0}"
    );
    ensure!(
        !e1.contains(SWITCH_LINE),
        "node1's replies carry the in-band T4, yet it turned RX stamps on; stderr:\n{e1}"
    );
    ensure!(
        (ma - mb).abs() <= AGREEMENT_NS,
        "node0's network RTT p50 {ma} ns and node1's {mb} ns differ by more than \
         {AGREEMENT_NS} ns: node0's T4 is not a kernel stamp"
    );
    Ok(())
}
