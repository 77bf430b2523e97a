//! Scenario 3: does traffic that is not ours slow down when meshprobe's programs sit on the
//! path? TCP throughput (iperf3) and TCP request/response rate (`sockperf ping-pong --tcp`,
//! one message in flight) across a veth, without and with the programs attached on both
//! ends (a `meshprobe reflect` per side), alternating without/with in every round so that
//! drift of a noisy machine hits both alike. Reported: per-round ratios with/without.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshprobe_tests::{ChildGuard, Meshprobe, Reflector, TwoHosts};
use serde_json::json;

use super::ebpf_cost::{iperf_client, iperf_server};
use super::{Ctx, ScenarioReport, Table, max, median, min, pause, progress};

const GOAL_RATIO: f64 = 0.98;
const SOCKPERF_PORT: &str = "11111";

fn servers(t: &TwoHosts) -> Result<(ChildGuard, ChildGuard)> {
    let b4 = TwoHosts::B4.to_string();
    let iperf = iperf_server(t)?;
    let mut sock = t.b.spawn([
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

fn attach(mp: &Meshprobe, t: &TwoHosts) -> Result<(Reflector, Reflector)> {
    Ok((
        mp.reflect(&t.a, &["-I", TwoHosts::A_IF])?,
        mp.reflect(&t.b, &["-I", TwoHosts::B_IF])?,
    ))
}

#[derive(Default)]
struct Series {
    off: Vec<f64>,
    on: Vec<f64>,
}

impl Series {
    fn ratios(&self) -> Vec<f64> {
        self.on.iter().zip(&self.off).map(|(a, b)| a / b).collect()
    }

    /// Relative spread (max/min − 1) of the runs without programs: the machine's noise.
    fn noise(&self) -> f64 {
        max(&self.off) / min(&self.off) - 1.0
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench fast-path", &["iperf3", "sockperf"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let rounds = ctx.pick(3, 5);
    let secs: u64 = ctx.pick(2, 4);
    rep.method(format!(
        "A ⟷ B on a veth; {rounds} rounds, each: without programs, then with (`meshprobe \
         reflect -I <veth>` in A and in B: egress and ingress programs on both ends); ratio = \
         with / without of the same round"
    ));
    rep.method(format!(
        "per condition: `iperf3 -c B -t {secs}` (TCP throughput, A→B), then `sockperf \
         ping-pong --tcp -t {secs}` (request/response: one 14-octet message in flight, \
         messages per second)"
    ));
    rep.method(format!(
        "kernel.bpf_stats_enabled left as found ({}); when 1 the kernel times every program \
         run, which costs the \"with\" runs a little more",
        meshprobe_tests::bench_util::bpf_stats_enabled().unwrap_or("?".into())
    ));
    let t = TwoHosts::new()?;
    let _servers = servers(&t)?;
    let mp = &env.mp;
    let mut tput = Series::default();
    let mut rr = Series::default();
    for r in 0..rounds {
        for with in [false, true] {
            progress(format!(
                "fast-path: round {}/{rounds}, {}",
                r + 1,
                if with { "with programs" } else { "without" }
            ));
            let refl = if with { Some(attach(mp, &t)?) } else { None };
            let v = iperf_client(&t, &["-t", &secs.to_string()])?;
            let gbps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 result without end.sum_received.bits_per_second")?
                / 1e9;
            let mps = sockperf_rate(&t, secs)?;
            if let Some((a, b)) = refl {
                a.stop()?;
                b.stop()?;
            }
            let (s_t, s_r) = (&mut tput, &mut rr);
            if with {
                s_t.on.push(gbps);
                s_r.on.push(mps);
            } else {
                s_t.off.push(gbps);
                s_r.off.push(mps);
            }
        }
    }
    let mut table = Table::new(
        "Median of the rounds (min–max in brackets):",
        &[
            "metric",
            "without programs",
            "with programs",
            "ratio with/without",
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
        let ratios = s.ratios();
        let rm = median(&ratios);
        table.row([
            name.to_string(),
            fmt(&s.off, unit, prec),
            fmt(&s.on, unit, prec),
            format!("{rm:.3} ({:.3}–{:.3})", min(&ratios), max(&ratios)),
        ]);
        let noise = s.noise();
        rep.goal(
            what,
            "≥ 0.98",
            format!("{rm:.3} (rounds {:.3}–{:.3})", min(&ratios), max(&ratios)),
            rm >= GOAL_RATIO,
            Some(if 1.0 - rm <= noise {
                format!(
                    "median ratio {rm:.3}; the runs without programs alone vary by {:.1} %, \
                     more than the gap, so the gap is within this machine's run-to-run noise",
                    noise * 100.0
                )
            } else {
                format!(
                    "median ratio {rm:.3}, a gap larger than the {:.1} % spread of the runs \
                     without programs",
                    noise * 100.0
                )
            }),
        );
        data.insert(
            name.to_string(),
            json!({"unit": unit, "without": s.off, "with": s.on, "ratios": ratios,
                   "median_ratio": rm, "noise_without": noise}),
        );
    }
    rep.tables.push(table);
    rep.data = json!({"rounds": rounds, "seconds_per_run": secs, "metrics": data});
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
