//! Scenario 3: does traffic that is not ours slow down when meshprobe runs on the hosts?
//! TCP throughput (iperf3) and TCP request/response rate (`sockperf ping-pong --tcp`, one
//! message in flight) across a veth, without meshprobe and with its programs attached on both
//! ends (a `meshprobe reflect` per side), in the same round, round after round, so that drift
//! of a noisy machine hits both alike. Two more conditions per round say where a gap comes
//! from: empty TCX programs on the same hooks (the hook itself), and meshprobe with
//! `--no-sw-rx-stamps` (its programs, without the software RX stamps that kernel mode asks for
//! by default and that make the kernel stamp every received packet). A fifth, meshprobe with
//! `--handoff off`, says what its driver hand-off program (on `net_dev_start_xmit`, every
//! transmitted packet of the host) adds.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshprobe_harness::{ChildGuard, Meshprobe, Reflector, TwoHosts};
use serde_json::json;

use super::ebpf_cost::{iperf_client, iperf_server};
use crate::sample::bpf_stats::{BpfStatsGuard, EmptyTcProg};

use crate::numbers::{max, median, min};
use crate::report::{ScenarioReport, Table};
use crate::scenario::{Ctx, pause, progress};

const GOAL_RATIO: f64 = 0.98;
const SOCKPERF_PORT: &str = "11111";
/// Both ends of the request/response test run on this CPU: every round trip then takes the
/// same path (no cross-CPU wake-ups, whose cost in a VM varies with what else runs), so the
/// rate reflects the per-packet path the programs add to.
const RR_CPU: &str = "1";
/// iperf3 client on CPU 0, server on CPU 1 (`-A 0,1`): the same placement in every run.
const IPERF_AFFINITY: &str = "0,1";

fn servers(t: &TwoHosts) -> Result<(ChildGuard, ChildGuard)> {
    let b4 = TwoHosts::B4.to_string();
    let iperf = iperf_server(t)?;
    let mut sock = t.b.spawn([
        "taskset",
        "-c",
        RR_CPU,
        "sockperf",
        "server",
        "--tcp",
        "-i",
        &b4,
        "-p",
        SOCKPERF_PORT,
    ])?;
    pause(Duration::from_millis(700))?;
    if !sock.is_running() {
        bail!("sockperf server exited: {}", sock.stderr_text());
    }
    Ok((iperf, sock))
}

/// Messages per second of `sockperf ping-pong --tcp` from A for `secs` seconds.
fn sockperf_rate(t: &TwoHosts, secs: u64) -> Result<f64> {
    let b4 = TwoHosts::B4.to_string();
    let out = t.a.output([
        "taskset",
        "-c",
        RR_CPU,
        "sockperf",
        "ping-pong",
        "--tcp",
        "-i",
        &b4,
        "-p",
        SOCKPERF_PORT,
        "-t",
        &secs.to_string(),
    ])?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("sockperf ping-pong failed ({}): {text}", out.status);
    }
    parse_sockperf(&text).with_context(|| format!("sockperf output without a run line:\n{text}"))
}

/// `[Valid Duration] RunTime=5.000 sec; SentMessages=N; ReceivedMessages=M` → M / RunTime.
fn parse_sockperf(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .or_else(|| text.lines().find(|l| l.contains("RunTime=")))?;
    let field = |k: &str| -> Option<f64> {
        let rest = &line[line.find(k)? + k.len()..];
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        v.parse().ok()
    };
    let run = field("RunTime=")?;
    let recv = field("ReceivedMessages=")?;
    (run > 0.0).then(|| recv / run)
}

fn attach(mp: &Meshprobe, t: &TwoHosts, extra: &[&str]) -> Result<(Reflector, Reflector)> {
    let args = |ifname: &'static str| {
        let mut v = vec!["-I", ifname];
        v.extend_from_slice(extra);
        v
    };
    Ok((
        mp.reflect(&t.a, &args(TwoHosts::A_IF))?,
        mp.reflect(&t.b, &args(TwoHosts::B_IF))?,
    ))
}

/// What runs on the two hosts during one measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cond {
    /// Nothing of meshprobe.
    Off,
    /// `meshprobe reflect` on both ends as shipped: programs attached, and its sockets ask for
    /// software RX stamps (the kernel then stamps every received packet).
    On,
    /// `meshprobe reflect --no-sw-rx-stamps` on both ends: the programs alone.
    Lean,
    /// An empty TCX program on each of the four hooks: what any TC program costs the path.
    Empty,
    /// `meshprobe reflect --handoff off` on both ends: as shipped, without the hand-off
    /// program.
    NoHandoff,
}

impl Cond {
    fn label(self) -> &'static str {
        match self {
            Cond::Off => "without",
            Cond::On => "with meshprobe",
            Cond::Lean => "with --no-sw-rx-stamps",
            Cond::Empty => "empty programs",
            Cond::NoHandoff => "with --handoff off",
        }
    }
}

#[derive(Default)]
struct Series {
    off: Vec<f64>,
    on: Vec<f64>,
    lean: Vec<f64>,
    empty: Vec<f64>,
    no_handoff: Vec<f64>,
}

impl Series {
    fn push(&mut self, c: Cond, v: f64) {
        match c {
            Cond::Off => self.off.push(v),
            Cond::On => self.on.push(v),
            Cond::Lean => self.lean.push(v),
            Cond::Empty => self.empty.push(v),
            Cond::NoHandoff => self.no_handoff.push(v),
        }
    }

    /// Per-round ratios of `of` to the run without anything.
    fn ratios(&self, of: &[f64]) -> Vec<f64> {
        of.iter().zip(&self.off).map(|(a, b)| a / b).collect()
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench fast-path", &["iperf3", "sockperf", "taskset"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    if meshprobe_harness::load::online_cpus() < 2 {
        rep.skip("needs at least 2 CPUs (fixed placement of iperf3 client and server)");
        return Ok(());
    }
    let rounds = ctx.pick(3, 5);
    let secs: u64 = ctx.pick(2, 3);
    let stats = BpfStatsGuard::set("0")?;
    rep.method(format!(
        "A ⟷ B on a veth; {rounds} rounds of five conditions, their order rotating from \
         round to round: without meshprobe; with meshprobe as shipped (`meshprobe reflect -I \
         <veth>` in A and in B: egress and ingress programs on both ends, the driver hand-off \
         program on net_dev_start_xmit (host-wide), and sockets that ask for software RX \
         stamps, which makes the kernel stamp every received packet); with `--handoff off` \
         (as shipped without the hand-off program); with \
         `--no-sw-rx-stamps` (the programs alone); empty programs (`return TC_ACT_UNSPEC` \
         with TCX on the same four hooks: the cost of the hook itself); ratio = condition / \
         without, of the same round"
    ));
    rep.method(format!(
        "per condition: `iperf3 -c B -A {IPERF_AFFINITY} -t {secs}` (TCP throughput, A→B, \
         client on CPU 0, server on CPU 1), then `sockperf ping-pong --tcp -t {secs}` with \
         client and server on CPU {RR_CPU} (request/response: one 14-octet message in flight, \
         messages per second)"
    ));
    rep.method(format!(
        "kernel.bpf_stats_enabled=0 during the runs, as on a production host (it was {}; \
         restored afterwards): with 1 the kernel times every program run, which costs more \
         than the programs themselves (scenario 2)",
        stats.previous()
    ));
    let t = TwoHosts::new()?;
    let _servers = servers(&t)?;
    let mp = &env.mp;
    let mut tput = Series::default();
    let mut rr = Series::default();
    for r in 0..rounds {
        let mut order = [
            Cond::Off,
            Cond::On,
            Cond::Lean,
            Cond::Empty,
            Cond::NoHandoff,
        ];
        let n = order.len();
        order.rotate_left(r % n);
        for c in order {
            progress(format!(
                "fast-path: round {}/{rounds}, {}",
                r + 1,
                c.label()
            ));
            let refl = match c {
                Cond::Off | Cond::Empty => None,
                Cond::On => Some(attach(mp, &t, &[])?),
                Cond::Lean => Some(attach(mp, &t, &["--no-sw-rx-stamps"])?),
                Cond::NoHandoff => Some(attach(mp, &t, &["--handoff", "off"])?),
            };
            let mut empties = Vec::new();
            if c == Cond::Empty {
                for (ns, ifname) in [(&t.a, TwoHosts::A_IF), (&t.b, TwoHosts::B_IF)] {
                    for ingress in [false, true] {
                        empties.push(EmptyTcProg::attach(ns, ifname, ingress)?);
                    }
                }
            }
            let v = iperf_client(&t, &["-A", IPERF_AFFINITY, "-t", &secs.to_string()])?;
            let gbps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 result without end.sum_received.bits_per_second")?
                / 1e9;
            let mps = sockperf_rate(&t, secs)?;
            if let Some((a, b)) = refl {
                a.stop()?;
                b.stop()?;
            }
            drop(empties);
            tput.push(c, gbps);
            rr.push(c, mps);
        }
    }
    let stats_before = stats.previous().to_string();
    drop(stats);
    let mut table = Table::new(
        "Median of the rounds (min–max in brackets):",
        &[
            "metric",
            "without",
            "with meshprobe",
            "with --no-sw-rx-stamps",
            "empty programs",
            "with --handoff off",
            "ratio with/without",
            "ratio --handoff off/without",
            "ratio --no-sw-rx-stamps/without",
            "ratio empty programs/without",
        ],
    );
    let fmt = |v: &[f64], unit: &str, prec: usize| {
        format!(
            "{:.p$} {unit} ({:.p$}–{:.p$})",
            median(v),
            min(v),
            max(v),
            p = prec
        )
    };
    let fmt_r = |v: &[f64]| format!("{:.3} ({:.3}–{:.3})", median(v), min(v), max(v));
    let mut data = serde_json::Map::new();
    for (name, s, unit, prec, what) in [
        ("TCP throughput", &tput, "Gbit/s", 2, "throughput ratio"),
        (
            "TCP request/response",
            &rr,
            "msg/s",
            0,
            "request/response ratio",
        ),
    ] {
        let on = s.ratios(&s.on);
        let lean = s.ratios(&s.lean);
        let empty = s.ratios(&s.empty);
        let no_handoff = s.ratios(&s.no_handoff);
        let (rm, lm, em) = (median(&on), median(&lean), median(&empty));
        let hm = median(&no_handoff);
        table.row([
            name.to_string(),
            fmt(&s.off, unit, prec),
            fmt(&s.on, unit, prec),
            fmt(&s.lean, unit, prec),
            fmt(&s.empty, unit, prec),
            fmt(&s.no_handoff, unit, prec),
            fmt_r(&on),
            fmt_r(&no_handoff),
            fmt_r(&lean),
            fmt_r(&empty),
        ]);
        let gap = 1.0 - rm;
        let cause = if gap > 0.0 {
            // Hook first, then the programs' own work, then the receive stamping: each part
            // at most what is left of the gap.
            let from_hook = (1.0 - em).clamp(0.0, gap);
            let from_programs = (em - lm).clamp(0.0, gap - from_hook);
            format!(
                "median ratio {rm:.3}: {:.1} % slower; of that, about {:.1} points come with \
                 having any TC program on the four hooks (empty programs: {em:.3}), {:.1} with \
                 the work of meshprobe's programs (--no-sw-rx-stamps: {lm:.3}) and {:.1} with \
                 the software RX stamp the kernel then takes of every received packet; rounds \
                 {:.3}–{:.3}",
                gap * 100.0,
                from_hook * 100.0,
                from_programs * 100.0,
                (gap - from_hook - from_programs) * 100.0,
                min(&on),
                max(&on)
            )
        } else {
            format!("median ratio {rm:.3}")
        };
        rep.goal(
            what,
            "≥ 0.98",
            format!("{rm:.3} (rounds {:.3}–{:.3})", min(&on), max(&on)),
            rm >= GOAL_RATIO,
            Some(format!(
                "{cause}; the same without the hand-off program (--handoff off): {hm:.3}"
            )),
        );
        rep.goal(
            &format!("{what}, --no-sw-rx-stamps"),
            "≥ 0.98",
            format!("{lm:.3} (rounds {:.3}–{:.3})", min(&lean), max(&lean)),
            lm >= GOAL_RATIO,
            Some(format!(
                "median ratio {lm:.3}; empty programs on the same hooks: {em:.3}"
            )),
        );
        data.insert(
            name.to_string(),
            json!({"unit": unit, "without": s.off, "with": s.on, "no_sw_rx_stamps": s.lean,
                   "empty_programs": s.empty, "handoff_off": s.no_handoff,
                   "ratios_handoff_off": no_handoff, "median_ratio_handoff_off": hm,
                   "ratios_with": on, "ratios_no_sw_rx_stamps": lean,
                   "ratios_empty_programs": empty,
                   "median_ratio_with": rm, "median_ratio_no_sw_rx_stamps": lm,
                   "median_ratio_empty_programs": em}),
        );
    }
    rep.tables.push(table);
    rep.note(format!(
        "The split of a gap subtracts medians of separate conditions: with {rounds} rounds on a \
         shared machine each is good to a few points (compare the min–max columns)."
    ));
    rep.data = json!({
        "rounds": rounds, "seconds_per_run": secs, "bpf_stats_enabled_before": stats_before,
        "metrics": data,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_sockperf;

    #[test]
    fn sockperf_line() {
        let t = "sockperf: [Total Run] RunTime=2.100 sec; Warm up time=400 msec; \
                 SentMessages=1000; ReceivedMessages=999\n\
                 sockperf: [Valid Duration] RunTime=2.000 sec; SentMessages=900; \
                 ReceivedMessages=900\n";
        assert_eq!(parse_sockperf(t), Some(450.0));
        assert_eq!(parse_sockperf("nothing"), None);
    }
}
