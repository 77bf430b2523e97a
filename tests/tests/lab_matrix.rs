//! Issue 4, end to end: a 4-node lab (two zones, four different added RTTs, ZooKeeper and the
//! broker in the core namespace), and the latency matrix built from what reached Kafka must
//! match the injected matrix for every ordered pair, over IPv4 and over IPv6. The same data
//! through `meshprobe matrix --svg` must give a heatmap with every node and every pair.
//!
//! The delay element holds half of each pair's added RTT in each direction on the bridge
//! ports (lab/links.rs), so a pair's network RTT is the bridge path plus the injected value.
//! The lab has no run without the delays, so the pairs are judged against each other: every
//! pair crosses the same bridge, so its offset (median per-window p50 − injected) must agree
//! with the median offset of all pairs within [`NOISE_K`] × the noise (the largest confidence
//! interval of a pair's median, from the spread of its per-window p50s), and that tolerance
//! must be well below the smallest difference a wrong delay would make. A spin hold cannot come out short (a stall during it only adds),
//! so no pair may measure less than it was injected by more than the noise.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshprobe_harness::services::{TempDir, wait_until};
use meshprobe_harness::stats::{NOISE_FLOOR_NS, NOISE_K, median, median_ci, us};
use meshprobe_harness::topo::Family;
use meshprobe_lab::{Lab, LabSpec, Windows, node_name};

/// Windows measured after every pair is up.
const WINDOWS: u64 = 4;
/// A safety timeout for the summaries of the measured windows to reach the topic.
const KAFKA_WAIT: Duration = Duration::from_secs(30);

fn spec(family: Family) -> Result<LabSpec> {
    let mut s = LabSpec::two_zone_demo()?;
    s.family = family;
    Ok(s)
}

/// One ordered pair's figures, ns.
struct PairFigures {
    name: String,
    injected: i64,
    /// Median of the per-window p50s.
    measured: i64,
    /// [`median_ci`] of the per-window p50s: how far `measured` may stray by chance.
    ci: i64,
    gaps: Vec<u64>,
}

fn run(family: Family) -> Result<()> {
    let Some(mut lab) = Lab::up(spec(family)?)? else {
        return Ok(());
    };
    eprintln!("injected ({}):\n{}", family.label(), lab.spec.describe());
    let start = lab.window_now() + 1;
    lab.wait_all_measured(start, Duration::from_secs(20))
        .with_context(|| lab.cluster.diagnostics())?;
    let last = start + WINDOWS;
    lab.wait_window(last + 1);
    let n = lab.spec.nodes;
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect();
    let names = |&(a, b): &(usize, usize)| (node_name(a), node_name(b));
    // The producers deliver asynchronously: read the topic until every measured window of
    // every pair is there (a missing one after the wait is a failure below).
    let mut w = None;
    let mut read_err = None;
    let t0 = Instant::now();
    let complete = wait_until(KAFKA_WAIT, Duration::from_millis(500), || {
        match lab.kafka_windows() {
            Ok(read) => w = Some(read),
            Err(e) => read_err = Some(e),
        }
        w.as_ref().is_some_and(|w: &Windows| {
            pairs
                .iter()
                .all(|p| w.gaps(&names(p), start..=last).is_empty())
        })
    });
    let w = match (w, read_err) {
        (Some(w), _) => w,
        (None, Some(e)) => return Err(e.context("reading the summaries from Kafka")),
        (None, None) => anyhow::bail!("no read of Kafka within {KAFKA_WAIT:?}"),
    };
    eprintln!(
        "topic complete for windows {start}..={last}: {complete} after {:?}",
        t0.elapsed()
    );
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    for p in &pairs {
        let pair = names(p);
        let name = format!("{}->{}", pair.0, pair.1);
        let injected = lab.spec.shape(p.0, p.1).rtt.as_nanos() as i64;
        let gaps = w.gaps(&pair, start..=last);
        let p50s: Vec<i64> = w
            .of(&pair, start..=last)
            .into_iter()
            .filter_map(|o| o.p50_ns)
            .collect();
        eprintln!(
            "{name}: injected {}, window p50s {:?}, windows missing {gaps:?}",
            us(injected),
            p50s.iter().map(|&v| us(v)).collect::<Vec<_>>()
        );
        match (median(&p50s), median_ci(&p50s)) {
            (Some(measured), Some(ci)) => figures.push(PairFigures {
                name,
                injected,
                measured,
                ci,
                gaps,
            }),
            _ => failures.push(format!("{name}: no window with replies (gaps {gaps:?})")),
        }
    }
    if failures.is_empty() {
        failures = judge(&figures, &lab.spec, n);
    }
    ensure!(
        failures.is_empty(),
        "{}: pairs off the injected matrix:\n{}",
        family.label(),
        failures.join("\n")
    );
    check_svg(&lab)?;
    lab.check()?;
    Ok(())
}

/// The agreement of the pairs' offsets (see the module comment); the failures, one a line.
fn judge(figures: &[PairFigures], spec: &LabSpec, n: usize) -> Vec<String> {
    let offsets: Vec<i64> = figures.iter().map(|f| f.measured - f.injected).collect();
    let common = median(&offsets).unwrap_or(0);
    let noise = figures.iter().map(|f| f.ci).fold(NOISE_FLOOR_NS, i64::max);
    let tol = NOISE_K * noise;
    // The smallest difference a wrong delay would make: between two injected values, or
    // between the smallest one and none.
    let mut values: Vec<i64> = (0..n)
        .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
        .map(|(a, b)| spec.shape(a, b).rtt.as_nanos() as i64)
        .chain([0])
        .collect();
    values.sort_unstable();
    values.dedup();
    let smallest_gap = values.windows(2).map(|v| v[1] - v[0]).min().unwrap_or(0);
    eprintln!(
        "offsets (measured − injected): common {}, per pair {}; noise {} (largest ci), \
         tolerance ±{}, smallest gap between injected values {}",
        us(common),
        figures
            .iter()
            .zip(&offsets)
            .map(|(f, o)| format!("{} {} (ci {})", f.name, us(*o), us(f.ci)))
            .collect::<Vec<_>>()
            .join(", "),
        us(noise),
        us(tol),
        us(smallest_gap)
    );
    let mut failures = Vec::new();
    if 2 * tol >= smallest_gap {
        failures.push(format!(
            "too noisy to tell the injected values apart: tolerance ±{} (noise {}) is not below \
             half of the smallest gap {}",
            us(tol),
            us(noise),
            us(smallest_gap)
        ));
    }
    for (f, off) in figures.iter().zip(&offsets) {
        if !f.gaps.is_empty() {
            failures.push(format!(
                "{}: windows missing on the topic {:?}",
                f.name, f.gaps
            ));
        }
        if (off - common).abs() > tol {
            failures.push(format!(
                "{}: measured {} for an injected {}: offset {} vs the pairs' common {} (±{})",
                f.name,
                us(f.measured),
                us(f.injected),
                us(*off),
                us(common),
                us(tol)
            ));
        }
        if *off < -noise {
            failures.push(format!(
                "{}: measured {}, less than the injected {} beyond the noise {}",
                f.name,
                us(f.measured),
                us(f.injected),
                us(noise)
            ));
        }
    }
    failures
}

/// `meshprobe matrix --svg` from the same topic: well-formed, every node labelled on both
/// axes, one cell per ordered pair with the measured value and the injected one beside it.
fn check_svg(lab: &Lab) -> Result<()> {
    let dir = TempDir::new("matrix-svg")?;
    let expected = dir.path().join("expected.csv");
    lab.write_expected(&expected)?;
    let svg_path = dir.path().join("matrix.svg");
    let bin = lab.bin().to_str().context("utf-8 path")?;
    lab.star().core().run([
        bin,
        "matrix",
        "--kafka-bootstrap-servers",
        &lab.bootstrap(),
        "--kafka-topic",
        lab.topic(),
        "--expected",
        expected.to_str().context("utf-8 path")?,
        "--svg",
        svg_path.to_str().context("utf-8 path")?,
    ])?;
    let text = std::fs::read_to_string(&svg_path)?;
    let doc = roxmltree::Document::parse(&text).context("the SVG is not well-formed XML")?;
    let n = lab.spec.nodes;
    for i in 0..n {
        let name = node_name(i);
        let labels = doc
            .descendants()
            .filter(|d| {
                d.attribute("class").is_some_and(|c| c.starts_with("label"))
                    && d.text() == Some(name.as_str())
            })
            .count();
        ensure!(
            labels == 2,
            "{name}: {labels} axis labels in the SVG, expected 2"
        );
    }
    let mut cells = 0;
    for g in doc
        .descendants()
        .filter(|d| d.attribute("class") == Some("pair"))
    {
        let (src, dst) = (
            g.attribute("data-src").unwrap_or(""),
            g.attribute("data-dst").unwrap_or(""),
        );
        ensure!(src != dst, "a cell for {src}->{src}");
        ensure!(
            g.children()
                .any(|c| c.attribute("class").is_some_and(|k| k.starts_with("cell"))),
            "pair {src}->{dst} has no cell rect"
        );
        // The injected value is printed as "(+X)" beside the measurement.
        let injected: Vec<f64> = g
            .descendants()
            .filter_map(|d| d.text())
            .filter_map(|t| t.trim().strip_prefix("(+")?.strip_suffix(')').map(parse_us))
            .flatten()
            .collect();
        let want = injected_us(lab, src, dst);
        ensure!(
            injected.iter().any(|v| (v - want).abs() < 0.5),
            "pair {src}->{dst}: injected {want} µs not shown beside the measurement ({injected:?})"
        );
        cells += 1;
    }
    ensure!(
        cells == n * (n - 1),
        "{cells} cells in the SVG, expected {}",
        n * (n - 1)
    );
    eprintln!(
        "SVG: {} bytes, {cells} cells, every node labelled",
        text.len()
    );
    Ok(())
}

/// The injected added RTT of `src->dst` in µs.
fn injected_us(lab: &Lab, src: &str, dst: &str) -> f64 {
    let idx = |s: &str| {
        s.trim_start_matches("node")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    };
    lab.spec.shape(idx(src), idx(dst)).rtt.as_secs_f64() * 1e6
}

/// `1.00ms`, `100µs`, `250us`, `2s` in µs.
fn parse_us(t: &str) -> Option<f64> {
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-3,
        "µs" | "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    Some(v * scale)
}

#[test]
fn matrix_from_kafka_matches_injected_ipv4() -> Result<()> {
    run(Family::V4)
}

#[test]
fn matrix_from_kafka_matches_injected_ipv6() -> Result<()> {
    run(Family::V6)
}
