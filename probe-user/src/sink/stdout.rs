//! Records on stdout: a fixed-width table for people, or JSON lines for programs.
use std::{
    io::Write as _,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    clock,
    pb::{self, StampSource, Timestamping, record::Kind},
    probe::fmt_ns,
};

/// What `--output` prints on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
    /// Nothing.
    None,
}

/// Summary rows between two table headers.
const HEADER_EVERY: u64 = 20;

/// Summary rows printed so far by this process: stdout is process-wide, so is the header
/// cadence.
static ROWS: AtomicU64 = AtomicU64::new(0);

/// The kernel's TAI−UTC offset, read once: records carry TAI, the table shows UTC.
fn tai_offset_ns() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(clock::tai_offset_ns)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutSink {
    pub format: OutputFormat,
}

impl StdoutSink {
    pub const fn new(format: OutputFormat) -> StdoutSink {
        StdoutSink { format }
    }

    /// Prints one record in the configured format (nothing for `None`). A closed stdout
    /// (e.g. piped into `head`) is ignored rather than a panic.
    pub fn send(&self, rec: &pb::Record) {
        let text = match self.format {
            OutputFormat::None => return,
            OutputFormat::Json => match super::json::line(rec) {
                Some(l) => l + "\n",
                None => return,
            },
            OutputFormat::Table => match rec.kind.as_ref() {
                Some(Kind::Summary(s)) => with_header(summary_row(s, tai_offset_ns())),
                Some(Kind::Zone(z)) => with_header(zone_row(z, tai_offset_ns())),
                Some(Kind::Probe(p)) => probe_line(p, tai_offset_ns()) + "\n",
                None => return,
            },
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// A table row and its newline, after the header every [`HEADER_EVERY`] rows.
fn with_header(row: String) -> String {
    if ROWS
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(HEADER_EVERY)
    {
        table_header() + "\n" + &row + "\n"
    } else {
        row + "\n"
    }
}

/// `-` for a distribution without a value, else the figure `f` picks.
fn quantile(q: &Option<pb::Quantiles>, f: fn(&pb::Quantiles) -> i64) -> String {
    match q {
        Some(q) if q.count > 0 => fmt_ns(f(q)),
        _ => "-".to_string(),
    }
}

/// Column titles for [`summary_row`] and [`zone_row`].
pub fn table_header() -> String {
    format!(
        "{:<8}  {:<30} {:>6} {:>6} {:>7}  {:>10} {:>10} {:>10}  {:>10} {:>10}",
        "UTC",
        "SRC -> DST",
        "SENT",
        "RECV",
        "LOSS%",
        "RTT p50",
        "RTT p99",
        "RTT max",
        "APP p50",
        "TURN p50"
    )
}

/// One summary as a table row: window start (UTC time of day), pair, counts, loss and the
/// medians/tails that matter; `-` where a window had no answered probe.
pub fn summary_row(s: &pb::WindowSummary, tai_offset_ns: i64) -> String {
    let q = quantile;
    let mut row = format!(
        "{:<8}  {:<30} {:>6} {:>6} {:>7.2}  {:>10} {:>10} {:>10}  {:>10} {:>10}",
        time_of_day(s.window_start_tai_ns, tai_offset_ns, false),
        format!("{} -> {}", s.src, s.dst),
        s.sent,
        s.received,
        s.loss_ratio * 100.0,
        q(&s.network_rtt_ns, |q| q.p50),
        q(&s.network_rtt_ns, |q| q.p99),
        q(&s.network_rtt_ns, |q| q.max),
        q(&s.app_rtt_ns, |q| q.p50),
        q(&s.turnaround_ns, |q| q.p50),
    );
    // Facts that change how to read the row go last, only when they apply.
    if s.timestamping == Timestamping::Socket as i32 {
        row.push_str("  socket-stamps");
    }
    if s.peer_left {
        row.push_str("  peer-left");
    }
    row
}

/// One zone summary as a table row: the summary columns up to RTT max (over every sample of
/// the zone's pairs), then the pairs over the zone's members and the spread of the pairs'
/// p50s. The destination reads `zone:NAME` (`zone:""` for the empty label).
pub fn zone_row(z: &pb::ZoneSummary, tai_offset_ns: i64) -> String {
    let zone = if z.dst_zone.is_empty() {
        "\"\"".to_string()
    } else {
        z.dst_zone.clone()
    };
    let mut row = format!(
        "{:<8}  {:<30} {:>6} {:>6} {:>7.2}  {:>10} {:>10} {:>10}  pairs {}/{}",
        time_of_day(z.window_start_tai_ns, tai_offset_ns, false),
        format!("{} -> zone:{zone}", z.src),
        z.sent,
        z.received,
        z.loss_ratio * 100.0,
        quantile(&z.network_rtt_ns, |q| q.p50),
        quantile(&z.network_rtt_ns, |q| q.p99),
        quantile(&z.network_rtt_ns, |q| q.max),
        z.pairs,
        z.dst_zone_members,
    );
    if z.pair_p50_ns.as_ref().is_some_and(|q| q.count > 1) {
        row.push_str(&format!(
            "  pair p50 {}..{}",
            quantile(&z.pair_p50_ns, |q| q.min),
            quantile(&z.pair_p50_ns, |q| q.max)
        ));
    }
    if z.timestamping == Timestamping::Socket as i32 {
        row.push_str("  socket-stamps");
    }
    row
}

/// One probe as a compact line.
pub fn probe_line(p: &pb::ProbeResult, tai_offset_ns: i64) -> String {
    let head = format!(
        "{}  {} -> {}  ssid {} seq {}",
        time_of_day(p.sent_tai_ns, tai_offset_ns, true),
        p.src,
        p.dst,
        p.ssid,
        p.seq
    );
    if p.lost {
        return head + "  LOST";
    }
    let mut line = format!(
        "{head}  rtt {}  turn {}  app {}  ttl {}",
        fmt_ns(p.network_rtt_ns),
        fmt_ns(p.turnaround_ns),
        fmt_ns(p.app_rtt_ns),
        p.ttl
    );
    if p.timestamping == Timestamping::Socket as i32 {
        line.push_str("  socket-stamps");
    } else if p.t4_source == StampSource::Map as i32 {
        line.push_str("  t4-map");
    }
    if p.reordered {
        line.push_str("  reordered");
    }
    line
}

/// `HH:MM:SS[.mmm]` (UTC) of a TAI instant.
fn time_of_day(tai_ns: u64, tai_offset_ns: i64, millis: bool) -> String {
    let utc = (tai_ns as i64).saturating_sub(tai_offset_ns).max(0) as u64;
    let secs = utc / 1_000_000_000 % 86_400;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if millis {
        format!("{h:02}:{m:02}:{s:02}.{:03}", utc / 1_000_000 % 1000)
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::{probe, summary, zone};

    const OFFSET: i64 = 37_000_000_000;

    #[test]
    fn summary_row_lines_up_with_header() {
        let s = summary("node-a", "node-b", 7);
        let row = summary_row(&s, OFFSET);
        let hdr = table_header();
        assert_eq!(row.chars().count(), hdr.chars().count(), "{hdr}\n{row}");
        // 1_700_000_037 s TAI = 1_700_000_000 s UTC = 22:13:20 UTC.
        assert!(row.starts_with("22:13:20  node-a -> node-b "), "{row}");
        assert!(row.contains("    10      9   10.00"), "{row}");
        // µs with one decimal below 10 ms, ms above.
        assert!(row.contains("45.3 µs"), "{row}");
        assert!(row.contains("90.0 µs"), "{row}");
        assert!(row.contains("12.50 ms"), "{row}");
    }

    #[test]
    fn summary_row_marks_empty_windows_and_notes() {
        let mut s = summary("a", "b", 1);
        s.network_rtt_ns = None;
        s.app_rtt_ns.as_mut().unwrap().count = 0;
        s.peer_left = true;
        s.timestamping = Timestamping::Socket as i32;
        let row = summary_row(&s, OFFSET);
        // No answered probe: RTT and app columns are `-`, turnaround still shown.
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(cols[7..12], ["-", "-", "-", "-", "12.0"], "{row}");
        assert!(row.ends_with("  socket-stamps  peer-left"), "{row}");
    }

    #[test]
    fn zone_row_lines_up_with_the_summary_columns() {
        let z = zone("node-a", "eu-1", 7);
        let row = zone_row(&z, OFFSET);
        let summary = summary_row(&summary("node-a", "node-b", 7), OFFSET);
        // Same columns up to RTT max.
        let upto = |r: &str| r.split_whitespace().take(10).count();
        assert_eq!(upto(&row), upto(&summary));
        assert!(row.starts_with("22:13:20  node-a -> zone:eu-1 "), "{row}");
        assert!(row.contains("    30     27   10.00"), "{row}");
        assert!(
            row.contains("12.50 ms  pairs 3/5  pair p50 20.0 µs..52.0 µs"),
            "{row}"
        );
        // RTT max ends where it ends in a summary row (before its APP p50 and TURN p50).
        let p = row.find("  pairs").unwrap();
        assert_eq!(
            row[..p].chars().count(),
            summary.chars().count() - (2 + 10 + 1 + 10),
            "{summary}\n{row}"
        );
        // The empty zone label, a zone without an answered probe, socket stamps.
        let mut e = zone("a", "", 1);
        e.network_rtt_ns = None;
        e.pair_p50_ns = None;
        e.timestamping = Timestamping::Socket as i32;
        let row = zone_row(&e, OFFSET);
        assert!(row.contains("a -> zone:\"\" "), "{row}");
        assert!(
            row.ends_with("-          -          -  pairs 3/5  socket-stamps"),
            "{row}"
        );
    }

    #[test]
    fn probe_lines() {
        let p = probe("a", "b", 3);
        let l = probe_line(&p, OFFSET);
        assert_eq!(
            l,
            "22:13:20.250  a -> b  ssid 1 seq 3  rtt 45.3 µs  turn 12.0 µs  app 80.1 µs  ttl 64"
        );
        let mut lost = p;
        lost.lost = true;
        assert!(probe_line(&lost, OFFSET).ends_with("seq 3  LOST"));
    }

    #[test]
    fn output_format_names_are_lowercase() {
        use clap::ValueEnum as _;
        let names: Vec<_> = OutputFormat::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(names, ["table", "json", "none"]);
    }
}
