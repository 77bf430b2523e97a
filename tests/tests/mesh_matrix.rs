//! Issue 4, end to end: a 4-node lab (two zones, four different added RTTs, ZooKeeper and the
//! broker in the core namespace), and the latency matrix built from what reached Kafka must
//! match the injected matrix for every ordered pair, over IPv4 and over IPv6. The same data
//! through `meshprobe matrix --svg` must give a heatmap with every node and every pair.
//!
//! The delay element holds half of each pair's added RTT in each direction on the bridge
//! ports (lab/links.rs), so a pair's network RTT is the bridge path (about 20 µs here) plus
//! the injected value. A pair passes when its median per-window p50 is within
//! [injected − 10 µs, injected + 80 µs]: the low side allows clock granularity, the high side
//! the bridge path and a loaded CI machine, and both are far tighter than the gaps between the
//! injected values (100, 250, 600, 1000 µs), so a pair measured against the wrong delay fails.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_tests::lab::{LabSpec, MeshLab, node_name};
use meshprobe_tests::services::TempDir;
use meshprobe_tests::topo::Family;

const LOW_US: f64 = 10.0;
const HIGH_US: f64 = 80.0;
/// Windows measured after every pair is up.
const WINDOWS: u64 = 4;

fn spec(family: Family) -> Result<LabSpec> {
    let mut s = LabSpec::two_zone_demo()?;
    s.family = family;
    Ok(s)
}

fn run(family: Family) -> Result<()> {
    let Some(mut lab) = MeshLab::up(spec(family)?)? else {
        return Ok(());
    };
    eprintln!("injected ({}):\n{}", family.label(), lab.spec.describe());
    let start = lab.window_now() + 1;
    lab.wait_all_measured(start, Duration::from_secs(20))
        .with_context(|| lab.lab.diagnostics())?;
    let last = start + WINDOWS;
    lab.wait_window(last + 1);
    // Every agent has sent its summaries of windows ..=last; give the producers a moment.
    std::thread::sleep(Duration::from_secs(1));
    let w = lab.kafka_windows()?;
    let mut failures = Vec::new();
    let n = lab.spec.nodes;
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let pair = (node_name(a), node_name(b));
            let injected = lab.spec.shape(a, b).rtt.as_secs_f64() * 1e6;
            let gaps = w.gaps(&pair, start..=last);
            let measured = w.median_p50_us(&pair, start..=last);
            eprintln!(
                "{}->{}: injected {injected:.0} µs, measured p50 {measured:?} µs, windows \
                 missing {gaps:?}",
                pair.0, pair.1
            );
            match measured {
                Some(m) if m >= injected - LOW_US && m <= injected + HIGH_US && gaps.is_empty() => {
                }
                _ => failures.push(format!(
                    "{}->{}: {measured:?} vs {injected} (gaps {gaps:?})",
                    pair.0, pair.1
                )),
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{}: pairs off the injected matrix: {failures:?}",
        family.label()
    );
    check_svg(&lab)?;
    lab.check()?;
    Ok(())
}

/// `meshprobe matrix --svg` from the same topic: well-formed, every node labelled on both
/// axes, one cell per ordered pair with the measured value and the injected one beside it.
fn check_svg(lab: &MeshLab) -> Result<()> {
    let dir = TempDir::new("matrix-svg")?;
    let expected = dir.path().join("expected.csv");
    lab.write_expected(&expected)?;
    let svg_path = dir.path().join("matrix.svg");
    let bin = lab.bin().to_str().context("utf-8 path")?;
    lab.mesh().core().run([
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
fn injected_us(lab: &MeshLab, src: &str, dst: &str) -> f64 {
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
