//! What every front end draws: the grid of cells with their text, marks and place on the
//! colour scale, built once from the model so the terminal, the text and the SVG agree.
use std::{
    collections::BTreeSet,
    time::{Duration, UNIX_EPOCH},
};

pub use super::mark::{Mark, mark};
use super::{By, Metric, Model, Settings, coverage::Coverage, zones::ZoneCell};
use crate::pb;

/// The explanation of the marks, for the text and terminal legends.
pub const MARKS_LEGEND: &str = "* stale (no new window for > 3 window lengths)  ! peer left  \
                                · not probed  - no data";

/// Shown for a cell without data.
pub const NO_DATA: &str = "-";

/// Shown for a cell its source does not probe.
pub const UNPROBED: &str = "·";

/// Shown for a zone that nodes without a zone label are put in.
pub const NO_ZONE: &str = "(no zone)";

#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub mark: Mark,
    /// The metric's value (ns for RTT, a ratio for loss); `None` without data or samples.
    pub value: Option<f64>,
    /// The value for people, e.g. `412µs`, `0.25%`, `all lost`; empty on the diagonal.
    pub text: String,
    /// The known added RTT, e.g. `+400µs` (RTT metrics only).
    pub expected: Option<String>,
    /// A second figure (zone view): `loss 0.25%` beside an RTT, `p50 412µs` beside a loss.
    pub detail: Option<String>,
    /// Place on the colour scale, 0 (low) ..= 1 (high).
    pub t: Option<f64>,
}

impl Cell {
    /// Value, marker, expected and detail on one line: `412µs* (+400µs)`, `412µs, loss 0%`.
    pub fn one_line(&self) -> String {
        let mut s = format!("{}{}", self.text, self.mark.marker());
        if let Some(e) = &self.expected {
            s.push_str(&format!(" ({e})"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!(", {d}"));
        }
        s
    }

    fn new(mark: Mark, value: Option<f64>, text: impl Into<String>) -> Cell {
        Cell {
            mark,
            value,
            text: text.into(),
            expected: None,
            detail: None,
            t: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    /// Empty when the summaries carry no zone.
    pub zone: String,
}

impl Node {
    /// `node1 (eu-1a)`, or the id alone.
    pub fn label(&self) -> String {
        if self.zone.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, self.zone)
        }
    }
}

/// The colour scale: `min..max` of the shown values, or `0..--scale-max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub min: f64,
    pub max: f64,
    pub fixed: bool,
}

impl Scale {
    pub fn t(&self, v: f64) -> f64 {
        if self.max > self.min {
            ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub title: String,
    pub metric: Metric,
    pub nodes: Vec<Node>,
    /// `cells[src][dst]`, in the order of `nodes`.
    pub cells: Vec<Vec<Cell>>,
    /// `None` when no cell has a value.
    pub scale: Option<Scale>,
    pub source: String,
    pub windows: usize,
    pub summaries: u64,
    pub zone_summaries: u64,
    /// The newest window: start in UTC (RFC 3339) and length.
    pub newest: Option<(String, Duration)>,
    /// Rows and columns carry zones (the node view of zoned nodes).
    pub zones: bool,
    /// Rows and columns are nodes or zones.
    pub by: By,
    pub coverage: Coverage,
}

impl View {
    /// The view `by` asks for.
    pub fn of(model: &Model, s: &Settings, metric: Metric, by: By) -> View {
        match by {
            By::Node => View::build(model, s, metric),
            By::Zone => View::build_zones(model, s, metric),
        }
    }

    /// Node × node: the latest summary of every ordered pair.
    pub fn build(model: &Model, s: &Settings, metric: Metric) -> View {
        let ids: BTreeSet<&str> = model.nodes().chain(s.expected.nodes()).collect();
        let nodes: Vec<Node> = ids
            .iter()
            .map(|id| Node {
                id: id.to_string(),
                zone: model.zone(id).unwrap_or_default().to_string(),
            })
            .collect();
        let cells: Vec<Vec<Cell>> = nodes
            .iter()
            .map(|src| {
                nodes
                    .iter()
                    .map(|dst| cell(model, s, metric, &src.id, &dst.id))
                    .collect()
            })
            .collect();
        let coverage =
            Coverage::of_nodes(nodes.len(), |s, d| cells[s][d].mark, model.zone_matrix());
        View::finish(model, s, metric, By::Node, nodes, cells, coverage)
    }

    /// Zone × zone: what the agents of each zone measured towards each zone, merged.
    pub fn build_zones(model: &Model, s: &Settings, metric: Metric) -> View {
        let zm = model.zone_matrix();
        let nodes: Vec<Node> = zm
            .zones
            .iter()
            .map(|z| Node {
                id: if z.is_empty() {
                    NO_ZONE.into()
                } else {
                    z.clone()
                },
                zone: String::new(),
            })
            .collect();
        let cells = zm
            .zones
            .iter()
            .map(|src| {
                zm.zones
                    .iter()
                    .map(|dst| match zm.cells.get(&(src.clone(), dst.clone())) {
                        Some(c) => zone_cell(metric, c),
                        // A zone of one node: no pair inside it.
                        None if src == dst && !zm.pairs_inside(src) => {
                            Cell::new(Mark::Diagonal, None, "")
                        }
                        None if zm.reporting.contains(src) => {
                            Cell::new(Mark::Unprobed, None, UNPROBED)
                        }
                        None => Cell::new(Mark::NoData, None, NO_DATA),
                    })
                    .collect()
            })
            .collect();
        View::finish(
            model,
            s,
            metric,
            By::Zone,
            nodes,
            cells,
            Coverage::of_zones(zm),
        )
    }

    /// The colour scale and the status figures, common to both views.
    fn finish(
        model: &Model,
        s: &Settings,
        metric: Metric,
        by: By,
        nodes: Vec<Node>,
        mut cells: Vec<Vec<Cell>>,
        coverage: Coverage,
    ) -> View {
        let values = || cells.iter().flatten().filter_map(|c| c.value);
        let scale = match s.scale_max.and_then(|m| m.for_metric(metric)) {
            Some(max) => Some(Scale {
                min: 0.0,
                max,
                fixed: true,
            }),
            None => values().reduce(f64::min).map(|min| Scale {
                min,
                max: values().fold(min, f64::max),
                fixed: false,
            }),
        };
        if let Some(sc) = scale {
            for c in cells.iter_mut().flatten() {
                c.t = c.value.map(|v| sc.t(v));
            }
        }
        View {
            title: s.title.clone(),
            metric,
            zones: nodes.iter().any(|n| !n.zone.is_empty()),
            nodes,
            cells,
            scale,
            source: s.source.clone(),
            windows: model.windows_seen(),
            summaries: model.summaries,
            zone_summaries: model.zone_summaries,
            newest: model
                .newest()
                .map(|(start, len)| (utc(start, s.tai_offset_ns), Duration::from_nanos(len))),
            by,
            coverage,
        }
    }

    /// `12 windows (36 summaries), newest 2023-11-14T22:13:20Z (10s)`.
    pub fn progress(&self) -> String {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut s = format!(
            "{} ({}",
            plural(self.windows as u64, "window", "windows"),
            plural(self.summaries, "summary", "summaries")
        );
        if self.zone_summaries > 0 {
            s.push_str(&format!(
                ", {}",
                plural(self.zone_summaries, "zone summary", "zone summaries")
            ));
        }
        s.push(')');
        match &self.newest {
            Some((t, len)) => s.push_str(&format!(
                ", newest {t} ({})",
                humantime::format_duration(*len)
            )),
            None => s.push_str(", waiting for window summaries"),
        }
        s
    }

    /// `scale 31.2µs .. 412µs (min..max)`, or `fixed` with --scale-max.
    pub fn scale_text(&self) -> String {
        match self.scale {
            Some(sc) => format!(
                "{} .. {} ({})",
                fmt_value(self.metric, sc.min),
                fmt_value(self.metric, sc.max),
                if sc.fixed { "fixed" } else { "min..max" }
            ),
            None => "no values".into(),
        }
    }

    /// Any cell shows an expected value.
    pub fn has_expected(&self) -> bool {
        self.cells.iter().flatten().any(|c| c.expected.is_some())
    }

    /// Any cell has a second line (an expected value or a detail).
    pub fn has_second_line(&self) -> bool {
        self.cells
            .iter()
            .flatten()
            .any(|c| c.expected.is_some() || c.detail.is_some())
    }

    /// The label of the corner between the axes.
    pub fn corner(&self) -> &'static str {
        match self.by {
            By::Node => "src \\ dst",
            By::Zone => "src zone \\ dst zone",
        }
    }

    /// The cell's second line: the expected RTT in parentheses, or the detail.
    pub fn second_line(c: &Cell) -> Option<String> {
        c.expected
            .as_ref()
            .map(|e| format!("({e})"))
            .or_else(|| c.detail.clone())
    }
}

fn cell(model: &Model, s: &Settings, metric: Metric, src: &str, dst: &str) -> Cell {
    let mut c = match (mark(model, src, dst), model.get(src, dst)) {
        (Mark::Diagonal, _) => Cell::new(Mark::Diagonal, None, ""),
        (Mark::Unprobed, _) => Cell::new(Mark::Unprobed, None, UNPROBED),
        (m @ (Mark::Fresh | Mark::Stale | Mark::Left), Some(sum)) => summary_cell(metric, sum, m),
        _ => Cell::new(Mark::NoData, None, NO_DATA),
    };
    c.expected = (metric.is_rtt() && src != dst)
        .then(|| s.expected.get(src, dst))
        .flatten()
        .map(|d| format!("+{}", fmt_rtt(d.as_nanos() as f64)));
    c
}

fn summary_cell(metric: Metric, sum: &pb::WindowSummary, mark: Mark) -> Cell {
    let value = metric_value(metric, sum);
    let text = match value {
        Some(v) => fmt_value(metric, v),
        None if sum.lost > 0 => "all lost".into(),
        None => "no probes".into(),
    };
    Cell::new(mark, value, text)
}

/// A zone pair's cell: the metric, and loss beside an RTT or the p50 beside a loss. RTTs
/// rebuilt from pair quantiles (no histograms to merge) are marked `≈`.
fn zone_cell(metric: Metric, z: &ZoneCell) -> Cell {
    let approx = if z.exact { "" } else { "≈" };
    let rtt = |v: Option<u64>| v.map(|v| v as f64);
    let value = match metric {
        Metric::P50 => rtt(z.p50),
        Metric::P99 => rtt(z.p99),
        Metric::Loss => z.loss_ratio(),
    };
    let text = match value {
        Some(v) if metric.is_rtt() => format!("{approx}{}", fmt_rtt(v)),
        Some(v) => fmt_loss(v),
        None if z.lost > 0 => "all lost".into(),
        None => "no probes".into(),
    };
    let mut c = Cell::new(Mark::Fresh, value, text);
    c.detail = if metric.is_rtt() {
        z.loss_ratio().map(|l| format!("loss {}", fmt_loss(l)))
    } else {
        z.p50.map(|p| format!("p50 {approx}{}", fmt_rtt(p as f64)))
    };
    c
}

/// The metric of a summary: RTT quantiles need at least one reply, loss one resolved probe.
pub fn metric_value(metric: Metric, s: &pb::WindowSummary) -> Option<f64> {
    let q = s.network_rtt_ns.as_ref().filter(|q| q.count > 0);
    match metric {
        Metric::P50 => q.map(|q| q.p50 as f64),
        Metric::P99 => q.map(|q| q.p99 as f64),
        Metric::Loss => (s.received + s.lost > 0).then_some(s.loss_ratio),
    }
}

pub fn fmt_value(metric: Metric, v: f64) -> String {
    if metric.is_rtt() {
        fmt_rtt(v)
    } else {
        fmt_loss(v)
    }
}

/// Three significant digits with the unit: `950ns`, `45.3µs`, `412µs`, `1.25ms`, `2.00s`.
pub fn fmt_rtt(ns: f64) -> String {
    let (v, unit) = match ns.abs() {
        a if a < 1e3 => return format!("{ns:.0}ns"),
        a if a < 1e6 => (ns / 1e3, "µs"),
        a if a < 1e9 => (ns / 1e6, "ms"),
        _ => (ns / 1e9, "s"),
    };
    // 999.95µs would print as 1000µs: fine, still three digits of the same unit.
    match v.abs() {
        a if a < 10.0 => format!("{v:.2}{unit}"),
        a if a < 100.0 => format!("{v:.1}{unit}"),
        _ => format!("{v:.0}{unit}"),
    }
}

/// A loss ratio as a percentage: `0%`, `0.25%`, `1.5%`, `12%`.
pub fn fmt_loss(ratio: f64) -> String {
    let p = ratio * 100.0;
    match p {
        0.0 => "0%".into(),
        p if p < 1.0 => format!("{p:.2}%"),
        p if p < 10.0 => format!("{p:.1}%"),
        p => format!("{p:.0}%"),
    }
}

/// A TAI instant (ns) as UTC, RFC 3339 to the second.
pub fn utc(tai_ns: u64, tai_offset_ns: i64) -> String {
    let unix = (tai_ns as i128 - tai_offset_ns as i128).max(0) as u64;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(unix)).to_string()
}

/// Colour of scale position `t` (green, yellow, red; light enough for black text).
pub fn rgb(t: f64) -> (u8, u8, u8) {
    const STOPS: [(f64, f64, f64); 3] = [
        (87.0, 187.0, 138.0),
        (255.0, 214.0, 102.0),
        (230.0, 124.0, 115.0),
    ];
    let t = t.clamp(0.0, 1.0) * 2.0;
    let i = (t.floor() as usize).min(1);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matrix::{
        Expected, ScaleMax,
        coverage::NodeCoverage,
        model::tests::{LEN, at},
    };

    pub(crate) fn settings(expected: &str) -> Settings {
        Settings {
            title: "lab <mesh> & co".into(),
            metric: Metric::P50,
            by: By::Node,
            scale_max: None,
            expected: Expected::parse(expected).unwrap(),
            svg: None,
            html: None,
            once: false,
            source: "file agent.jsonl".into(),
            ordered_input: true,
            tai_offset_ns: 37_000_000_000,
        }
    }

    /// Three nodes: a<->b fresh (b->a with +400µs expected); c stopped reporting after window
    /// 11: c->b stale, c->a peer left; a and b report but do not probe c (not probed).
    pub(crate) fn model() -> Model {
        let mut m = Model::default();
        m.ingest(at("c", "b", 10, 45_300)).unwrap();
        m.ingest(at("a", "b", 20, 412_000)).unwrap();
        m.ingest(at("b", "a", 20, 398_000)).unwrap();
        let mut left = at("c", "a", 11, 1_250_000);
        left.peer_left = true;
        m.ingest(left).unwrap();
        m
    }

    #[test]
    fn cells_values_marks_and_expected() {
        let v = View::build(&model(), &settings("a,b,400us\n"), Metric::P50);
        let ids: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let c = |s: usize, d: usize| &v.cells[s][d];
        assert_eq!(c(0, 0).mark, Mark::Diagonal);
        assert_eq!(c(0, 0).text, "");
        assert_eq!(c(0, 1).text, "412µs");
        assert_eq!(c(0, 1).expected.as_deref(), Some("+400µs"));
        assert_eq!(c(0, 1).one_line(), "412µs (+400µs)");
        assert_eq!(c(2, 1).mark, Mark::Stale);
        assert_eq!(c(2, 1).one_line(), "45.3µs*");
        assert_eq!(c(2, 0).mark, Mark::Left);
        assert_eq!(c(2, 0).one_line(), "1.25ms!");
        // a and b report (window 20) without a summary for c: not probed, not missing.
        assert_eq!(c(0, 2).mark, Mark::Unprobed);
        assert_eq!(c(1, 2).one_line(), UNPROBED);
        assert_eq!(c(1, 2).value, None);
        let sc = v.scale.unwrap();
        assert_eq!((sc.min, sc.max, sc.fixed), (45_300.0, 1_250_000.0, false));
        assert_eq!(c(2, 1).t, Some(0.0));
        assert_eq!(c(2, 0).t, Some(1.0));
        assert_eq!(v.windows, 3);
        // Window 20 starts at 200 s TAI = 163 s UTC.
        assert_eq!(
            v.newest,
            Some(("1970-01-01T00:02:43Z".into(), Duration::from_nanos(LEN)))
        );
    }

    #[test]
    fn loss_metric_and_fixed_scale() {
        let mut s = settings("a,b,400us\n");
        s.scale_max = Some(ScaleMax::Loss(0.2));
        let v = View::build(&model(), &s, Metric::Loss);
        assert_eq!(v.cells[0][1].text, "10%");
        // Expected RTT is not shown beside a loss.
        assert_eq!(v.cells[0][1].expected, None);
        assert_eq!(v.cells[0][1].t, Some(0.5));
        assert_eq!(v.scale_text(), "0% .. 20% (fixed)");
        // A duration scale does not apply to loss.
        s.scale_max = Some(ScaleMax::Rtt(1e6));
        assert!(!View::build(&model(), &s, Metric::Loss).scale.unwrap().fixed);
    }

    #[test]
    fn expected_nodes_get_rows_and_all_lost_is_said() {
        let mut m = Model::default();
        let mut s = at("a", "b", 1, 1);
        s.network_rtt_ns.as_mut().unwrap().count = 0;
        s.received = 0;
        m.ingest(s).unwrap();
        let v = View::build(&m, &settings("a,z,1ms\n"), Metric::P99);
        let ids: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "z"]);
        assert_eq!(v.cells[0][1].text, "all lost");
        assert_eq!(v.cells[0][1].value, None);
        // a reports, but not towards z: not probed; z reports nothing: missing.
        assert_eq!(v.cells[0][2].one_line(), "· (+1.00ms)");
        assert_eq!(v.cells[2][0].mark, Mark::NoData);
        assert_eq!(v.cells[2][0].one_line(), NO_DATA);
        assert!(v.scale.is_none());
    }

    fn zoned(src: &str, sz: &str, dst: &str, dz: &str, seq: u64, p50: i64) -> pb::WindowSummary {
        let mut s = at(src, dst, seq, p50);
        s.src_zone = sz.into();
        s.dst_zone = dz.into();
        s
    }

    /// Four nodes in two zones with pinglists: a probes b and c (it probed d until window 1),
    /// b probes c, c probes a and d; d stopped reporting after window 1.
    pub(crate) fn partial() -> Model {
        let mut m = Model::default();
        for s in [
            zoned("a", "z1", "d", "z2", 1, 90_000),
            zoned("d", "z2", "a", "z1", 1, 80_000),
            zoned("a", "z1", "b", "z1", 5, 10_000),
            zoned("a", "z1", "c", "z2", 5, 50_000),
            zoned("b", "z1", "c", "z2", 5, 60_000),
            zoned("c", "z2", "a", "z1", 5, 55_000),
            zoned("c", "z2", "d", "z2", 5, 20_000),
        ] {
            m.ingest(s).unwrap();
        }
        m
    }

    #[test]
    fn partial_matrix_tells_unprobed_from_missing() {
        let v = View::build(&partial(), &settings(""), Metric::P50);
        let mark = |s: usize, d: usize| v.cells[s][d].mark;
        // a reports: b and c probed; d dropped from its pinglist (old summary): not probed.
        assert_eq!(
            [mark(0, 1), mark(0, 2), mark(0, 3)],
            [Mark::Fresh, Mark::Fresh, Mark::Unprobed]
        );
        assert_eq!(v.cells[0][3].text, UNPROBED);
        assert_eq!(v.cells[0][3].value, None);
        // b reports: a and d not probed.
        assert_eq!([mark(1, 0), mark(1, 3)], [Mark::Unprobed, Mark::Unprobed]);
        // d reports nothing current: its old pair is stale, the others missing.
        assert_eq!(
            [mark(3, 0), mark(3, 1), mark(3, 2)],
            [Mark::Stale, Mark::NoData, Mark::NoData]
        );
        // Unprobed and missing cells stay off the colour scale.
        let sc = v.scale.unwrap();
        assert_eq!((sc.min, sc.max), (10_000.0, 80_000.0));
        assert_eq!(
            v.coverage.nodes,
            Some(NodeCoverage {
                probed: 5,
                possible: 12,
                nodes_probed: 4,
                nodes: 4,
                min_probers: 1,
            })
        );
        // z1->z1 (a->b), z1->z2 (a->c, b->c), z2->z1 (c->a), z2->z2 (c->d).
        assert_eq!(v.coverage.zone_pairs, Some((4, 4)));
        assert_eq!(
            v.coverage.text(),
            "coverage: pairs probed 5/12 (41%), nodes probed 4/4 (fewest probers 1), \
             zone pairs covered 4/4"
        );
    }

    #[test]
    fn zone_view_merges_agents_and_marks_unprobed_zone_pairs() {
        use crate::matrix::zones::tests::zone_at;
        let mut m = Model::default();
        let a1: Vec<u64> = (0..20).map(|i| 100_000 + i * 1_000).collect();
        let a2: Vec<u64> = (0..20).map(|i| 200_000 + i * 1_000).collect();
        m.ingest(zone_at("a1", "z1", "z2", 5, &a1, 0)).unwrap();
        m.ingest(zone_at("a2", "z1", "z2", 5, &a2, 0)).unwrap();
        // Everything b1 sent towards z1 was lost.
        m.ingest(zone_at("b1", "z2", "z1", 5, &[], 4)).unwrap();
        // Towards z3 a1 wrote no zone summary: its pair summary stands in, approximately.
        m.ingest(zoned("a1", "z1", "c1", "z3", 5, 700_000)).unwrap();
        let v = View::build_zones(&m, &settings(""), Metric::P50);
        let ids: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["z1", "z2", "z3"]);
        assert_eq!(v.corner(), "src zone \\ dst zone");
        let c = |s: usize, d: usize| &v.cells[s][d];
        // z1 -> z2: the 40 samples of a1 and a2 merged exactly.
        let union = zm_union(&a1, &a2);
        assert_eq!(c(0, 1).value, Some(union as f64));
        assert_eq!(
            c(0, 1).one_line(),
            format!("{}, loss 0%", fmt_rtt(union as f64))
        );
        assert_eq!(c(1, 0).one_line(), "all lost, loss 100%");
        assert!(c(0, 2).text.starts_with('≈'), "{:?}", c(0, 2));
        // z1 and z2 report: their empty cells are not probed; z3 does not: missing, and with
        // one node it has no pair inside.
        assert_eq!([c(0, 0).mark, c(1, 1).mark], [Mark::Unprobed; 2]);
        assert_eq!([c(2, 0).mark, c(2, 2).mark], [Mark::NoData, Mark::Diagonal]);
        assert_eq!(v.coverage.nodes, None);
        assert_eq!(v.coverage.text(), "coverage: zone pairs covered 3/8");
        // Loss: the p50 beside it.
        let v = View::build_zones(&m, &settings(""), Metric::Loss);
        assert_eq!(
            v.cells[0][1].one_line(),
            format!("0%, p50 {}", fmt_rtt(union as f64))
        );
        assert_eq!(v.cells[1][0].value, Some(1.0));
    }

    /// p50 of the union of two sample sets, as one histogram gives it.
    fn zm_union(a: &[u64], b: &[u64]) -> u64 {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for &v in a.iter().chain(b) {
            h.record(v).unwrap();
        }
        h.value_at_quantile(0.5)
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_rtt(950.0), "950ns");
        assert_eq!(fmt_rtt(45_300.0), "45.3µs");
        assert_eq!(fmt_rtt(400_000.0), "400µs");
        assert_eq!(fmt_rtt(1_250_000.0), "1.25ms");
        assert_eq!(fmt_rtt(12_500_000.0), "12.5ms");
        assert_eq!(fmt_rtt(2e9), "2.00s");
        assert_eq!(fmt_loss(0.0), "0%");
        assert_eq!(fmt_loss(0.0025), "0.25%");
        assert_eq!(fmt_loss(0.015), "1.5%");
        assert_eq!(fmt_loss(1.0), "100%");
        assert_eq!(
            utc(1_700_000_037_000_000_000, 37_000_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(rgb(0.0), (87, 187, 138));
        assert_eq!(rgb(0.5), (255, 214, 102));
        assert_eq!(rgb(1.0), (230, 124, 115));
    }
}
