//! Per-destination delays: `meshprobe-delay --to ADDR=DUR` on a star of namespaces around a bridge.
//!
//! One delay element on node 1's core-side port (`veth-c1`, ingress: everything node 1 sends)
//! holds packets to node 2 for 400 µs and to node 3 for 150 µs, IPv4 and IPv6 addresses alike.
//! Plain UDP packets 1 → 2, 1 → 3, 1 → 0 and the control pair 2 → 3 are captured at the
//! sender's egress and the receiver's ingress (tcpdump on the node-side interfaces); a
//! packet's one-way delay is the difference of its two capture times (one machine, one
//! CLOCK_REALTIME). Baseline runs and runs with the element alternate (A1 B1 C1 C2 B2 A2, so
//! drift cancels). Each flow is measured relative to the control pair 2 → 3 of its family in
//! the same run (no element on its path): under stress-ng on every core a whole run measured
//! about 10 µs more or less than another, all flows alike, depending on whether the element
//! was spinning on holds; the holds must not be judged against that. The baseline runs also
//! keep an element attached, holding only a port no flow uses; the median added delay of each flow must match what was asked within the
//! runs' own noise ([`Shift`]), and a flow that must not be held must not move. The C runs use
//! a second element that checks the fallback to `--delay`, an explicit `ADDR=0`, and the
//! `--udp-port` filter; two of them, so their own run-to-run spread counts as noise.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::capture::{Capture, one_way_delays};
use meshprobe_harness::meshprobe::stop_delay;
use meshprobe_harness::star::Star;
use meshprobe_harness::stats::{Shift, median, us};
use meshprobe_harness::{Family, TestEnv};
use serde_json::Value;

const TEST: &str = "per_destination_delays_on_a_mesh";
/// The flows' destination port, and one the `--udp-port` filter leaves alone.
const PORT: u16 = 9300;
const OTHER_PORT: u16 = 9301;
/// The only port the baseline element holds: no flow uses it.
const UNUSED_PORT: u16 = 9302;
/// Measured packets per flow and run; warm-up rounds (neighbour resolution) before each run.
const ROUNDS: u32 = 200;
const WARMUP: u32 = 3;
/// Pause between rounds (one packet per flow each).
const GAP: Duration = Duration::from_millis(1);
/// The longest hold any element here applies (`--to FAR=…`), µs.
const FAR_HOLD_US: u64 = 400;
/// Pause after each packet: longer than any hold. A hold spins in the receive processing of
/// the sending CPU; when the kernel defers that processing (to ksoftirqd), `send_to` returns
/// before the hold ends, and a packet sent sooner than the hold's end queues behind it. With a
/// 100 µs pause, the flow sent after a held one measured up to +110 µs in whole runs on a fresh
/// VM (CI), and 3 runs of 5 failed here; past the longest hold, each flow measures only its own.
const PACE: Duration = Duration::from_micros(FAR_HOLD_US + 200);
/// Fewest packets per flow seen in both captures for a run to count (tcpdump may miss a few
/// on a busy machine; the medians do not need them).
const MIN_MATCHED: usize = (ROUNDS as usize) * 9 / 10;

const SENDER: usize = 1;
const FAR: usize = 2;
const NEAR: usize = 3;
const OTHER: usize = 0;

/// One flow's samples, one Vec per run.
type Runs = Vec<Vec<i64>>;

#[derive(Clone, Copy, Debug)]
struct Flow {
    src: usize,
    dst: usize,
    fam: Family,
    port: u16,
    /// Added one-way delay expected with the element of the run, µs.
    expect_us: i64,
}

impl Flow {
    /// The pair without an element on its path that the flows of its family are measured
    /// against.
    fn is_control(&self) -> bool {
        (self.src, self.dst, self.port) == (FAR, NEAR, PORT)
    }

    fn label(&self) -> String {
        format!(
            "{} -> {} {} :{}",
            self.src,
            self.dst,
            self.fam.label(),
            self.port
        )
    }

    /// Baseline key: the path, whatever the port.
    fn path(&self) -> (usize, usize, Family) {
        (self.src, self.dst, self.fam)
    }
}

const fn flow(src: usize, dst: usize, fam: Family, port: u16, expect_us: i64) -> Flow {
    Flow {
        src,
        dst,
        fam,
        port,
        expect_us,
    }
}

/// The star with a bound receiver for both ports on every node (no ICMP unreachable noise)
/// and one sender socket per node and family.
struct Rig {
    star: Star,
    senders: Vec<(usize, Family, UdpSocket)>,
    _receivers: Vec<UdpSocket>,
}

impl Rig {
    fn new() -> Result<Rig> {
        let star = Star::new(4)?;
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for i in star.node_indices() {
            for port in [PORT, OTHER_PORT] {
                let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
                receivers.push(star.node(i).enter(move || UdpSocket::bind(any))??);
            }
            for fam in [Family::V4, Family::V6] {
                let local = SocketAddr::new(star.node_ip(i, fam), 0);
                senders.push((i, fam, star.node(i).enter(move || UdpSocket::bind(local))??));
            }
        }
        Ok(Rig {
            star,
            senders,
            _receivers: receivers,
        })
    }

    fn sender(&self, node: usize, fam: Family) -> &UdpSocket {
        &self
            .senders
            .iter()
            .find(|(i, f, _)| *i == node && *f == fam)
            .expect("a sender per node and family")
            .2
    }

    fn send(&self, f: &Flow, payload: &[u8]) -> Result<()> {
        let dst = SocketAddr::new(self.star.node_ip(f.dst, f.fam), f.port);
        self.sender(f.src, f.fam)
            .send_to(payload, dst)
            .with_context(|| format!("sending {}", f.label()))?;
        Ok(())
    }

    /// Sends `ROUNDS` packets per flow (after `WARMUP` uncaptured rounds) and returns each
    /// flow's one-way delays, ns.
    fn measure(&self, run: &str, flows: &[Flow]) -> Result<Vec<Vec<i64>>> {
        for r in 0..WARMUP {
            for f in flows {
                self.send(f, format!("warm {r}").as_bytes())?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let filter = format!("udp portrange {PORT}-{OTHER_PORT}");
        let nodes = self.star.node_indices();
        let mut caps = Vec::new();
        for &i in &nodes {
            caps.push(Capture::start_filter(
                self.star.node(i),
                &self.star.node_if(i),
                &filter,
            )?);
        }
        for r in 0..ROUNDS {
            // Rotate the order so that no flow is always first after the pause (colder).
            for j in 0..flows.len() {
                let k = (j + r as usize) % flows.len();
                self.send(&flows[k], format!("{run} {k} {r}").as_bytes())?;
                std::thread::sleep(PACE);
            }
            std::thread::sleep(GAP);
        }
        let mut packets = Vec::new();
        for (c, &i) in caps.into_iter().zip(&nodes) {
            let res = c.stop()?;
            if res.dropped_by_kernel > 0 {
                eprintln!(
                    "{run}: tcpdump on node {i} dropped {} packets",
                    res.dropped_by_kernel
                );
            }
            packets.push((i, res.packets));
        }
        let of = |node: usize| {
            &packets
                .iter()
                .find(|(i, _)| *i == node)
                .expect("a capture per node")
                .1
        };
        let mut out = Vec::new();
        for (k, f) in flows.iter().enumerate() {
            let tag = format!("{run} {k} ");
            let d: Vec<i64> = one_way_delays(of(f.src), of(f.dst))
                .into_iter()
                .filter(|(p, _)| p.payload.starts_with(tag.as_bytes()))
                .map(|(_, d)| d)
                .collect();
            if d.len() < MIN_MATCHED {
                bail!(
                    "{run} {}: only {} of {ROUNDS} packets in both captures",
                    f.label(),
                    d.len()
                );
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// Each flow's median one-way delay, µs, for the log.
/// Each flow's one-way delays less the median of the control flow of its family in the same
/// run (see the module comment).
fn relative_to_control(flows: &[Flow], d: Vec<Vec<i64>>) -> Result<Vec<Vec<i64>>> {
    let control = |fam: Family| -> Result<i64> {
        let i = flows
            .iter()
            .position(|f| f.is_control() && f.fam == fam)
            .context("no control flow of a family")?;
        median(&d[i]).context("control flow without samples")
    };
    let offsets = flows
        .iter()
        .map(|f| control(f.fam))
        .collect::<Result<Vec<_>>>()?;
    Ok(d.into_iter()
        .zip(offsets)
        .map(|(v, o)| v.into_iter().map(|x| x - o).collect())
        .collect())
}

fn medians(per_flow: &[Vec<i64>]) -> String {
    per_flow
        .iter()
        .map(|d| format!("{:.1}", median(d).unwrap_or(0) as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

fn counter(summary: &Value, name: &str) -> u64 {
    summary[name].as_u64().unwrap_or(0)
}

#[test]
fn per_destination_delays_on_a_mesh() -> Result<()> {
    let Some(env) = TestEnv::acquire(TEST, &["tcpdump"])? else {
        return Ok(());
    };
    let rig = Rig::new()?;
    let m = &rig.star;
    let core_port = m.core_if(SENDER);
    let to = |node: usize, fam: Family, d: &str| format!("{}={d}", m.node_ip(node, fam));
    use Family::{V4, V6};

    // Element 1: per destination only, nothing else held.
    let far_hold = format!("{FAR_HOLD_US}us");
    let per_dst_args = [
        "--ingress".to_string(),
        "--to".into(),
        to(FAR, V4, &far_hold),
        "--to".into(),
        to(FAR, V6, &far_hold),
        "--to".into(),
        to(NEAR, V4, "150us"),
        "--to".into(),
        to(NEAR, V6, "150us"),
    ];
    let per_dst_flows = [
        flow(SENDER, FAR, V4, PORT, FAR_HOLD_US as i64),
        flow(SENDER, FAR, V6, PORT, FAR_HOLD_US as i64),
        flow(SENDER, NEAR, V4, PORT, 150),
        flow(SENDER, NEAR, V6, PORT, 150),
        flow(SENDER, OTHER, V4, PORT, 0), // not listed, no --delay: passes
        flow(SENDER, OTHER, V6, PORT, 0),
        flow(FAR, NEAR, V4, PORT, 0), // control: no element on its path
        flow(FAR, NEAR, V6, PORT, 0),
    ];
    // Baseline element: attached like the others, holding nothing (see the module comment).
    let idle_args = [
        "--ingress".to_string(),
        "--delay".into(),
        "250us".into(),
        "--udp-port".into(),
        UNUSED_PORT.to_string(),
    ];
    // Element 2: fallback --delay, an exempted address, and the UDP port filter.
    let fallback_args = [
        "--ingress".to_string(),
        "--delay".into(),
        "250us".into(),
        "--udp-port".into(),
        PORT.to_string(),
        "--to".into(),
        to(FAR, V6, "0"),
        "--to".into(),
        to(NEAR, V4, "150us"),
        "--to".into(),
        to(NEAR, V6, "150us"),
    ];
    let fallback_flows = [
        flow(SENDER, FAR, V4, PORT, 250), // not listed: --delay
        flow(SENDER, FAR, V6, PORT, 0),   // listed with 0: exempt
        flow(SENDER, NEAR, V4, PORT, 150),
        flow(SENDER, NEAR, V6, PORT, 150),
        flow(SENDER, OTHER, V6, PORT, 250),
        flow(SENDER, FAR, V4, OTHER_PORT, 0), // --udp-port: not held at all
        flow(SENDER, NEAR, V6, OTHER_PORT, 0),
        flow(FAR, NEAR, V4, PORT, 0),
        flow(FAR, NEAR, V6, PORT, 0),
    ];
    // Held per round by element 2: the four flows with a non-zero time, two of them by --to.
    let fallback_held = 4 * u64::from(ROUNDS + WARMUP);
    let fallback_dst_hit = 2 * u64::from(ROUNDS + WARMUP);

    // Per path (baseline) or flow: one Vec of one-way delays per run, so that the spread
    // between runs of a condition counts as noise.
    let mut base: Vec<((usize, usize, Family), Runs)> = Vec::new();
    let mut with_per_dst: Vec<Runs> = vec![Vec::new(); per_dst_flows.len()];
    let mut with_fallback: Vec<Runs> = Vec::new();
    let mut problems = Vec::new();

    for run in ["A1", "B1", "C1", "C2", "B2", "A2"] {
        match &run[..1] {
            "A" => {
                let args: Vec<&str> = idle_args.iter().map(String::as_str).collect();
                let el = env.mp.delay_element(m.core(), &core_port, &args)?;
                let d = rig.measure(run, &per_dst_flows);
                let sum = stop_delay(el)?;
                let d = relative_to_control(&per_dst_flows, d?)?;
                eprintln!("{run}: medians {}", medians(&d));
                if counter(&sum, "held") + counter(&sum, "cut_short") != 0 {
                    problems.push(format!("{run}: the baseline element held packets: {sum}"));
                }
                for (f, d) in per_dst_flows.iter().zip(d) {
                    match base.iter_mut().find(|(p, _)| *p == f.path()) {
                        Some((_, v)) => v.push(d),
                        None => base.push((f.path(), vec![d])),
                    }
                }
            }
            "B" => {
                let args: Vec<&str> = per_dst_args.iter().map(String::as_str).collect();
                let el = env.mp.delay_element(m.core(), &core_port, &args)?;
                let d = rig.measure(run, &per_dst_flows);
                let sum = stop_delay(el)?;
                let d = relative_to_control(&per_dst_flows, d?)?;
                eprintln!("{run}: medians {}", medians(&d));
                for (acc, d) in with_per_dst.iter_mut().zip(d) {
                    acc.push(d);
                }
                eprintln!("{run}: element summary {sum}");
                let holds = counter(&sum, "held") + counter(&sum, "cut_short");
                // At least our four listed flows; more if neighbour discovery went to a
                // listed address. Every hold came from --to (there is no --delay).
                if holds < 4 * u64::from(ROUNDS + WARMUP)
                    || counter(&sum, "dst_hit") != holds
                    || counter(&sum, "cut_short") != 0
                {
                    problems.push(format!("{run}: unexpected element counters {sum}"));
                }
            }
            _ => {
                let args: Vec<&str> = fallback_args.iter().map(String::as_str).collect();
                let el = env.mp.delay_element(m.core(), &core_port, &args)?;
                let d = rig.measure(run, &fallback_flows);
                let sum = stop_delay(el)?;
                let d = relative_to_control(&fallback_flows, d?)?;
                eprintln!("{run}: medians {}", medians(&d));
                with_fallback.resize(d.len(), Vec::new());
                for (acc, d) in with_fallback.iter_mut().zip(d) {
                    acc.push(d);
                }
                eprintln!("{run}: element summary {sum}");
                if counter(&sum, "held") + counter(&sum, "cut_short") != fallback_held
                    || counter(&sum, "dst_hit") != fallback_dst_hit
                {
                    problems.push(format!(
                        "{run}: element counters {sum}, want {fallback_held} holds of which \
                         {fallback_dst_hit} by --to"
                    ));
                }
            }
        }
    }

    let base_of = |f: &Flow| -> Result<&Runs> {
        Ok(&base
            .iter()
            .find(|(p, _)| *p == f.path())
            .context("baseline of a path")?
            .1)
    };
    let mut check = |title: &str, flows: &[Flow], with: &[Runs]| -> Result<()> {
        // A packet held by mistake is held for one of the element's times, at least the
        // smallest: what a flow that must stay put would move by if its rule were broken.
        let smallest_hold = flows
            .iter()
            .map(|f| f.expect_us * 1000)
            .filter(|&d| d > 0)
            .min()
            .context("an element holding nothing")?;
        eprintln!("{title}");
        eprintln!(
            "  {:<22} {:>10} {:>12} {:>12} {:>12} {:>12} {:>6}",
            "flow", "asked", "baseline", "with", "added", "tolerance", "n"
        );
        for (f, runs) in flows.iter().zip(with) {
            if f.is_control() {
                eprintln!("  {:<22} the reference of its family", f.label());
                continue;
            }
            let shift = Shift::of(base_of(f)?, runs).context("a run without samples")?;
            let asked = f.expect_us * 1000;
            let verdict = if asked > 0 {
                shift.check(asked, &f.label())
            } else {
                shift.check_unchanged(smallest_hold, &f.label())
            };
            eprintln!(
                "  {:<22} {:>10} {:>12} {:>12} {:>12} {:>12} {:>6} {}",
                f.label(),
                us(asked),
                us(shift.baseline),
                us(shift.treated),
                us(shift.added),
                us(shift.tolerance()),
                runs.iter().map(Vec::len).sum::<usize>(),
                if verdict.is_ok() { "ok" } else { "FAILED" }
            );
            if let Err(e) = verdict {
                problems.push(format!("{title} {e:#}"));
            }
        }
        Ok(())
    };
    check(
        &format!("per destination (--to FAR={far_hold} --to NEAR=150us), runs B1+B2:"),
        &per_dst_flows,
        &with_per_dst,
    )?;
    check(
        "fallback (--delay 250us --udp-port 9300 --to FAR6=0 --to NEAR=150us), runs C1+C2:",
        &fallback_flows,
        &with_fallback,
    )?;
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
