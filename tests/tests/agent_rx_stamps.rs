//! With `--no-sw-rx-stamps` the agent in kernel mode asks the kernel for no RX software stamps
//! (they turn on the host-wide stamping of every received packet; scenario 3 of the benchmarks
//! measures that cost). The TC programs stamp T4 into the reply's echoed padding. A reply
//! without room for it (44-octet probes, or a reflector that does not echo the padding) must
//! still get a kernel T4: the agent then turns RX software stamps on, once, and says so. By
//! default they are on from the start, and nothing needs switching.
//!
//! Two agents probe each other: node0 with 44-octet probes (replies have no room), node1 with
//! the default size. node0 must log the switch exactly once and node1 never. Where each T4
//! came from is read from the agents' own probe records (`t4_source`, printed as JSON lines
//! with MESHPROBE_KAFKA_PROBES, hence the broker): from node0's first full window on, every T4
//! is the socket's kernel RX stamp, never the userspace receive time; node1's are all in-band
//! (TC) stamps. The network-RTT p50 of both directions is printed for reference.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::agent::{Cluster, TEST_WINDOW_DURATION, num, num2, window_now};
use meshprobe_harness::stats::median;
use meshprobe_harness::topo::Family;
use serde_json::Value;

const SWITCH_LINE: &str = "no room for the in-band T4: RX software timestamps turned on";
/// node0's T4 once the switch is done: the socket's kernel RX stamp.
const SOCKET: &str = "STAMP_SOURCE_SOCKET";
/// In-band T4 written by the TC program (with or without the skb's receive stamp in it).
const IN_BAND: [&str; 2] = ["STAMP_SOURCE_TC", "STAMP_SOURCE_SKB_RX"];

#[test]
fn replies_without_room_for_t4_turn_rx_stamps_on_once() -> Result<()> {
    let Some(mut lab) = Cluster::acquire(
        "replies_without_room_for_t4_turn_rx_stamps_on_once",
        2,
        Family::V4,
        false,
        true,
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
                format!("{}={}", Cluster::node_id(other), lab.node_ip(other)),
            )
            .env("MESHPROBE_NO_SW_RX_STAMPS", "true")
            // Per-probe records (with their T4 source) on stdout as well.
            .env("MESHPROBE_KAFKA_PROBES", "true");
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
            .filter(|s| num(s, "window_seq") >= from)
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
         over {} windows, node1 (in-band T4) {:.1} µs over {} windows; difference {:.1} µs",
        ma as f64 / 1e3,
        a.len(),
        mb as f64 / 1e3,
        b.len(),
        (ma - mb) as f64 / 1e3
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

    // T4 sources of each agent's answered probes sent from window `from` on (T1 is TAI, the
    // agents' window clock), with how many of each.
    let window_ns = TEST_WINDOW_DURATION.as_nanos() as u64;
    let sources = |i: usize, from: u64| -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        let probes = lab.agent(i).lines("probe");
        let answered = probes
            .iter()
            .filter(|p| !p["lost"].as_bool().unwrap_or(false))
            .filter(|p| num(p, "t1_ns") / window_ns >= from);
        for p in answered {
            let s = match &p["t4_source"] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            match out.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => out.push((s, 1)),
            }
        }
        out
    };
    let (src0, src1) = (sources(0, s0 + 1), sources(1, s0 + 1));
    eprintln!(
        "T4 sources from window {} on: node0 {src0:?}, node1 {src1:?}",
        s0 + 1
    );
    ensure!(
        !src0.is_empty() && src0.iter().all(|(s, _)| s == SOCKET),
        "node0's T4 after the switch must all be the socket's kernel RX stamp ({SOCKET}), \
         got {src0:?}"
    );
    ensure!(
        !src1.is_empty() && src1.iter().all(|(s, _)| IN_BAND.contains(&s.as_str())),
        "node1's T4 must all be in-band ({IN_BAND:?}), got {src1:?}"
    );
    Ok(())
}
