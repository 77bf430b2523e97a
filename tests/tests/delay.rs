//! Issue test 2 and issue 17: a known delay added on the path shows up in the median network
//! RTT, by two independent delay tools that must agree with each other.
//!
//! Routed topology; requests are held on R's interface toward B, by the project's delay element
//! (`meshprobe-delay`, every kernel here) and, where the kernel has it, by netem (Debian's 6.1
//! in `cargo xtask test --kernel debian-6.1`; this machine's 6.18 has none, which is said
//! loudly). Runs alternate symmetrically (none, element, netem, netem, element, none) so linear
//! drift cancels for every pair of conditions.
//!
//! Two truths per tool: what it was asked to add, and what it really held, measured by
//! captures on both of R's interfaces (request in on R-A, out on R-B after the TC hook and the
//! qdisc). A tool may hold longer than asked, never shorter: netem's hold ends at a timer, and
//! under qemu's TCG that timer fires late (+161 to +244 µs on 2 ms in a Debian 6.1 guest). So
//! each tool must hold at least what was asked (and not much more), and meshprobe's network
//! RTT must follow the hold the captures measured probe by probe: per probe, RTT − hold must
//! not move when the tool is on, within the same runs' own noise ([`Shift`]), where missing the
//! hold would move it by the whole delay. Both tools pass the same check, which is what makes
//! them agree. Under TCG the noise is larger and the tolerance widens with it; a run too noisy
//! to resolve the delay fails instead of passing.
//!
//! A third view (issue 18): the tracepoint reference (`meshprobe-tracer`, driver hand-off and
//! receive entry on A's and B's interfaces) runs alongside; its RTT must follow the captured
//! hold probe by probe just as meshprobe's does (the same [`Shift`] check), which validates
//! the reference against a known added delay.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::capture::{Capture, one_way_delays};
use meshprobe_harness::netem::Netem;
use meshprobe_harness::reference::{network_rtt, trace_times};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::stats::{Shift, median, us};
use meshprobe_harness::trace::Site;
use meshprobe_harness::{Family, Routed, STAMP_PORT, TestEnv};

/// Large enough to be resolved under qemu's TCG: there the medians of repeated runs of one
/// condition drifted 55 to 98 µs apart (Debian 6.1 guest), and [`Shift`] resolves a delay only
/// when 8 × noise is below it; 2 ms is resolved up to 250 µs of noise.
const DELAY_NS: i64 = 2_000_000;
const PROBES_PER_RUN: u32 = 150;
/// How much longer than asked a tool may hold: netem's timer fired 244 µs late on 2 ms under
/// qemu's TCG (12 %); twice that is still far from a broken tool (a missed hold, a doubled one).
const HOLD_SLACK_PCT: i64 = 25;
/// Past the hold, so no request waits behind the previous one's.
const INTERVAL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    None,
    Element,
    Netem,
}

/// One ping run: its network RTTs, the transit times through R of its requests, and per probe
/// the difference of the two.
struct Run {
    tool: Tool,
    rtts: Vec<i64>,
    transit: Vec<i64>,
    residual: Vec<i64>,
    /// Per probe, the tracepoint reference's RTT less the captured hold.
    trace_residual: Vec<i64>,
}

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
    let interval = format!("{}ms", INTERVAL.as_millis());
    let args = [peer.as_str(), "-c", &count, "-i", &interval, "-W", "200ms"];
    let timeout = ping_timeout(PROBES_PER_RUN, INTERVAL, Duration::from_millis(200));
    let delay = format!("{DELAY_NS}ns");
    let (site_a, site_b) = (Site::of(&t.a, Routed::A_IF)?, Site::of(&t.b, Routed::B_IF)?);

    // Does this kernel have netem? Asked once, on the interface the runs use.
    let netem_missing = match Netem::add(&t.r, Routed::RB_IF, DELAY_NS)? {
        Ok(q) => {
            eprintln!("netem available: {}", q.show()?);
            None
        }
        Err(why) => Some(why),
    };
    let order: &[Tool] = if netem_missing.is_none() {
        &[
            Tool::None,
            Tool::Element,
            Tool::Netem,
            Tool::Netem,
            Tool::Element,
            Tool::None,
        ]
    } else {
        &[Tool::None, Tool::Element, Tool::Element, Tool::None]
    };

    // One run per condition change: the spread between runs of a condition is part of the
    // noise.
    let mut runs: Vec<Run> = Vec::new();
    for &tool in order {
        let _element = (tool == Tool::Element)
            .then(|| {
                env.mp
                    .delay(&t.r, Routed::RB_IF, &delay, &["--udp-port", "862"])
            })
            .transpose()?;
        let _netem = match tool {
            Tool::Netem => {
                Some(Netem::add(&t.r, Routed::RB_IF, DELAY_NS)?.map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        let requests = "udp dst port 862";
        let inbound = Capture::start_filter(&t.r, Routed::RA_IF, requests)?;
        let outbound = Capture::start_filter(&t.r, Routed::RB_IF, requests)?;
        let tracer = env.mp.tracer(&[STAMP_PORT])?;
        let run = env.mp.ping(&t.a, &args, timeout)?;
        let (inbound, outbound) = (inbound.stop()?, outbound.stop()?);
        let traced = tracer.stop()?;
        ensure!(
            traced.dropped() == 0,
            "{tool:?}: the tracer lost {} events",
            traced.dropped()
        );
        let trace_rtt: std::collections::HashMap<u32, i64> =
            trace_times(&traced.events, site_a, site_b, STAMP_PORT)
                .into_iter()
                .map(|((_, seq), t)| (seq, network_rtt(t)))
                .collect();
        let s = run.summary()?;
        ensure!(s.received == PROBES_PER_RUN as u64, "{tool:?}: {s:?}");
        let rtts = run.network_rtts();
        // R's transit time of each request, by its STAMP sequence number (payload offset 0).
        let transit: std::collections::HashMap<u32, i64> =
            one_way_delays(&inbound.packets, &outbound.packets)
                .into_iter()
                .filter_map(|(p, d)| Some((p.be32(0)?, d)))
                .collect();
        // Per probe: meshprobe's network RTT less what R held it; a hold meshprobe missed (or
        // invented) would move this by the whole delay.
        let residual: Vec<i64> = run
            .probes
            .iter()
            .filter_map(|p| Some(p.network_rtt_ns - transit.get(&p.seq)?))
            .collect();
        ensure!(
            residual.len() == PROBES_PER_RUN as usize,
            "{tool:?}: R's captures matched {} of {PROBES_PER_RUN} probes (dropped by the \
             kernel: {} in, {} out)",
            residual.len(),
            inbound.dropped_by_kernel,
            outbound.dropped_by_kernel
        );
        let trace_residual: Vec<i64> = run
            .probes
            .iter()
            .filter_map(|p| Some(trace_rtt.get(&p.seq)? - transit.get(&p.seq)?))
            .collect();
        ensure!(
            trace_residual.len() == PROBES_PER_RUN as usize,
            "{tool:?}: the tracepoint reference matched {} of {PROBES_PER_RUN} probes",
            trace_residual.len()
        );
        let transit: Vec<i64> = transit.into_values().collect();
        eprintln!(
            "{tool:?}: median network RTT {}, transit through R {}, RTT − transit {}, \
             tracepoint RTT − transit {}",
            us(median(&rtts).unwrap()),
            us(median(&transit).unwrap()),
            us(median(&residual).unwrap()),
            us(median(&trace_residual).unwrap()),
        );
        runs.push(Run {
            tool,
            rtts,
            transit,
            residual,
            trace_residual,
        });
    }
    let of = |tool: Tool, pick: fn(&Run) -> &Vec<i64>| -> Vec<Vec<i64>> {
        runs.iter()
            .filter(|r| r.tool == tool)
            .map(|r| pick(r).clone())
            .collect()
    };
    let judge = |tool: Tool, name: &str| -> Result<i64> {
        let rtt = Shift::of(&of(Tool::None, |r| &r.rtts), &of(tool, |r| &r.rtts))
            .expect("every run has probes");
        let hold = Shift::of(&of(Tool::None, |r| &r.transit), &of(tool, |r| &r.transit))
            .expect("every run has requests");
        eprintln!("{name}: asked {}", us(DELAY_NS));
        eprintln!("  held (captures at R): {}", hold.report());
        eprintln!("  network RTT:          {}", rtt.report());
        // Never shorter than asked; a little longer where its timer fires late.
        hold.check_held(DELAY_NS, DELAY_NS * HOLD_SLACK_PCT / 100, name)?;
        // meshprobe measures what the tool really did, probe by probe: RTT − hold stays put.
        let residual = Shift::of(&of(Tool::None, |r| &r.residual), &of(tool, |r| &r.residual))
            .expect("every run has probes");
        eprintln!("  RTT − hold per probe: {}", residual.report());
        residual.check_unchanged(DELAY_NS, &format!("{name}: network RTT − captured hold"))?;
        // The tracepoint reference follows the hold the same way.
        let traced = Shift::of(
            &of(Tool::None, |r| &r.trace_residual),
            &of(tool, |r| &r.trace_residual),
        )
        .expect("every run has probes");
        eprintln!("  tracepoint RTT − hold: {}", traced.report());
        traced.check_unchanged(
            DELAY_NS,
            &format!("{name}: tracepoint reference RTT − captured hold"),
        )?;
        eprintln!("  held {} beyond the ask", us(hold.added - DELAY_NS));
        Ok(hold.added)
    };
    let element = judge(Tool::Element, "delay element")?;

    let Some(why) = netem_missing else {
        let netem = judge(Tool::Netem, "netem")?;
        eprintln!(
            "element and netem both measured as held: holds {} and {}",
            us(element),
            us(netem)
        );
        return Ok(());
    };
    eprintln!(
        "\n################################################################################\n\
         ##  SKIPPED the netem half: {why}\n\
         ##  Only the delay element was checked here; `cargo xtask test --kernel debian-6.1`\n\
         ##  (part of `cargo xtask test`) checks it against netem.\n\
         ################################################################################"
    );
    Ok(())
}
