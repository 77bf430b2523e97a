//! `--text`: the matrix as aligned plain text (for CI logs and pipes), printed each time a
//! window completes, or once at the end with `--once`.
use std::io::Write;

use super::{
    Feed, Input, MatrixError, Model, Settings,
    model::Ingested,
    view::{MARKS_LEGEND, View},
};

/// Space between columns.
const GAP: &str = "  ";

/// The whole frame: title and status, the grid, the scale and the marks.
pub fn render(v: &View) -> String {
    let corner = v.corner();
    let row_labels: Vec<String> = v.nodes.iter().map(|n| n.label()).collect();
    let label_w = row_labels
        .iter()
        .map(|l| width(l))
        .chain([width(corner)])
        .max()
        .unwrap_or(0);
    let col_w: Vec<usize> = (0..v.nodes.len())
        .map(|d| {
            v.cells
                .iter()
                .map(|row| width(&row[d].one_line()))
                .chain([width(&v.nodes[d].id), width(&v.nodes[d].zone)])
                .max()
                .unwrap_or(0)
        })
        .collect();

    let mut out = format!(
        "{}: {} | {} | {}\n",
        v.title,
        v.metric.label(),
        v.source,
        v.progress()
    );
    let mut line = pad_right(corner, label_w);
    for (n, w) in v.nodes.iter().zip(&col_w) {
        line.push_str(GAP);
        line.push_str(&pad_left(&n.id, *w));
    }
    push_line(&mut out, line);
    if v.zones {
        let mut line = pad_right("", label_w);
        for (n, w) in v.nodes.iter().zip(&col_w) {
            line.push_str(GAP);
            line.push_str(&pad_left(&n.zone, *w));
        }
        push_line(&mut out, line);
    }
    for (label, row) in row_labels.iter().zip(&v.cells) {
        let mut line = pad_right(label, label_w);
        for (c, w) in row.iter().zip(&col_w) {
            line.push_str(GAP);
            line.push_str(&pad_left(&c.one_line(), *w));
        }
        push_line(&mut out, line);
    }
    out.push_str(&format!("scale {}\n", v.scale_text()));
    out.push_str(&format!("marks: {MARKS_LEGEND}"));
    if v.has_expected() {
        out.push_str("  (+X) expected added RTT");
    }
    out.push('\n');
    let coverage = v.coverage.text();
    if !coverage.is_empty() {
        out.push_str(&coverage);
        out.push('\n');
    }
    out
}

/// Characters, not bytes: `µ` is one column.
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad_left(s: &str, w: usize) -> String {
    format!("{}{s}", " ".repeat(w.saturating_sub(width(s))))
}

fn pad_right(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

/// Trailing blanks (the diagonal at the end of a row) would only clutter logs.
fn push_line(out: &mut String, line: String) {
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Reads the feed to its end, printing frames to `out`; returns the final state.
pub fn run(s: &Settings, mut feed: Feed, out: &mut impl Write) -> anyhow::Result<Model> {
    let mut model = Model::default();
    let mut printer = Printer { out, printed: 0 };
    // The newest window has data that is not printed yet.
    let mut pending = false;
    // Before the end of what was there at the start, only an ordered input (a file) is
    // printed window by window: a topic's partitions arrive one after the other.
    let mut caught_up = false;
    let frames = !s.once;
    while let Some(ev) = feed.next(std::time::Duration::from_millis(200)) {
        let live = frames && (caught_up || s.ordered_input);
        match ev {
            Input::Summary(sum) => {
                let newer = model
                    .newest()
                    .is_some_and(|(start, _)| sum.window_start_tai_ns() > start);
                if live && pending && newer {
                    // The window before this one is as complete as it gets.
                    printer.frame(&model, s)?;
                    pending = false;
                }
                match model.ingest(*sum) {
                    Ok(Ingested::Old) => {}
                    Ok(_) => pending = true,
                    Err(e) => eprintln!("warning: {e}"),
                }
                if live && pending && model.newest_complete() {
                    printer.frame(&model, s)?;
                    pending = false;
                }
            }
            Input::Warning(w) => eprintln!("warning: {w}"),
            Input::CaughtUp => {
                caught_up = true;
                if frames && pending && !s.ordered_input {
                    printer.frame(&model, s)?;
                    pending = false;
                }
            }
            Input::Idle => {}
            Input::Failed(e) => return Err(e),
        }
        if printer.closed() {
            feed.close();
            return Ok(model);
        }
    }
    if model.summaries + model.zone_summaries == 0 {
        return Err(MatrixError::NoSummaries(s.source.clone()).into());
    }
    if pending || printer.printed == 0 {
        printer.frame(&model, s)?;
    }
    Ok(model)
}

struct Printer<'a, W: Write> {
    out: &'a mut W,
    /// Frames printed; `usize::MAX` once the reader went away.
    printed: usize,
}

impl<W: Write> Printer<'_, W> {
    fn frame(&mut self, model: &Model, s: &Settings) -> anyhow::Result<()> {
        if self.closed() {
            return Ok(());
        }
        let text = render(&View::of(model, s, s.metric, s.by));
        let sep = if self.printed > 0 { "\n" } else { "" };
        match write!(self.out, "{sep}{text}").and_then(|()| self.out.flush()) {
            Ok(()) => self.printed += 1,
            // `| head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.printed = usize::MAX,
            Err(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
        }
        Ok(())
    }

    fn closed(&self) -> bool {
        self.printed == usize::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{
        Metric,
        model::tests::at,
        view::tests::{model, settings},
    };

    #[test]
    fn frame_shows_values_marks_and_expected_aligned() {
        let v = View::build(&model(), &settings("a,b,400us\nb,a,400us\n"), Metric::P50);
        let text = render(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "lab <mesh> & co: network RTT p50 | file agent.jsonl | 3 windows (4 summaries), \
             newest 1970-01-01T00:02:43Z (10s)"
        );
        assert_eq!(lines[1], "src \\ dst               a               b  c");
        assert_eq!(lines[2], "a                          412µs (+400µs)  ·");
        assert_eq!(lines[3], "b          398µs (+400µs)                  ·");
        assert_eq!(lines[4], "c                 1.25ms!         45.3µs*");
        assert_eq!(lines[5], "scale 45.3µs .. 1.25ms (min..max)");
        assert!(lines[6].starts_with("marks: * stale"), "{}", lines[6]);
        assert!(lines[6].contains("! peer left"));
        assert!(lines[6].contains("· not probed  - no data"));
        assert!(lines[6].ends_with("(+X) expected added RTT"));
        assert_eq!(
            lines[7],
            "coverage: pairs probed 3/6 (50%), nodes probed 2/3 (fewest probers 0)"
        );
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn zones_add_a_header_line_and_row_labels() {
        let mut m = Model::default();
        let mut s = at("a", "b", 1, 40_000);
        s.src_zone = "z1".into();
        s.dst_zone = "z2".into();
        m.ingest(s).unwrap();
        let text = render(&View::build(&m, &settings(""), Metric::P50));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("| 1 window (1 summary), newest"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "src \\ dst   a       b");
        assert_eq!(lines[2], "           z1      z2");
        assert_eq!(lines[3], "a (z1)         40.0µs");
        assert_eq!(lines[4], "b (z2)      -");
    }

    #[test]
    fn zone_view_frame() {
        let mut s = settings("");
        s.by = crate::matrix::By::Zone;
        let mut out = Vec::new();
        let inputs = vec![Input::Summary(Box::new(
            crate::matrix::zones::tests::zone_at("a1", "z1", "z2", 1, &[40_000], 0).into(),
        ))];
        run(&s, Feed::from_inputs(inputs), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with(
                "| 1 window (0 summaries, 1 zone summary), newest 1970-01-01T00:00:00Z (10s)"
            ),
            "{out}"
        );
        // z1 has one node (no pair inside it); z2 reports nothing (missing).
        assert_eq!(lines[1], "src zone \\ dst zone  z1               z2");
        assert_eq!(lines[2], "z1                       40.0µs, loss 0%");
        assert_eq!(lines[3], "z2                    -                -");
        assert_eq!(lines[6], "coverage: zone pairs covered 1/3");
    }

    fn run_on(inputs: Vec<Input>, once: bool) -> (anyhow::Result<Model>, String) {
        let mut s = settings("");
        s.once = once;
        let mut out = Vec::new();
        let r = run(&s, Feed::from_inputs(inputs), &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    fn sum(src: &str, dst: &str, seq: u64, p50: i64) -> Input {
        Input::Summary(Box::new(at(src, dst, seq, p50).into()))
    }

    #[test]
    fn prints_each_completed_window_and_the_last() {
        let inputs = vec![
            sum("a", "b", 1, 10_000),
            sum("b", "a", 1, 11_000),
            // Window 2 starts: window 1 is printed.
            sum("a", "b", 2, 20_000),
            // Every pair of window 1 is in window 2 now: printed at once.
            sum("b", "a", 2, 21_000),
            sum("a", "b", 3, 30_000),
            Input::CaughtUp,
        ];
        let (r, out) = run_on(inputs, false);
        assert_eq!(r.unwrap().summaries, 5);
        let frames: Vec<&str> = out.split("\n\n").collect();
        assert_eq!(frames.len(), 3, "{out}");
        assert!(frames[0].contains("10.0µs") && frames[0].contains("11.0µs"));
        assert!(frames[1].contains("20.0µs") && frames[1].contains("21.0µs"));
        // The input ended with window 3 incomplete: printed as it is.
        assert!(frames[2].contains("30.0µs") && frames[2].contains("21.0µs"));
    }

    #[test]
    fn once_prints_only_the_end() {
        let (r, out) = run_on(
            vec![
                sum("a", "b", 1, 10_000),
                sum("a", "b", 2, 20_000),
                sum("a", "b", 7, 70_000),
                sum("b", "a", 2, 21_000),
            ],
            true,
        );
        r.unwrap();
        assert_eq!(out.matches("src \\ dst").count(), 1, "{out}");
        assert!(out.contains("70.0µs"));
        // b->a is 5 windows behind the newest: stale.
        assert!(out.contains("21.0µs*"), "{out}");
        assert!(!out.contains("20.0µs"));
    }

    #[test]
    fn unordered_input_waits_until_caught_up() {
        let mut s = settings("");
        s.ordered_input = false;
        let mut out = Vec::new();
        let inputs = vec![
            sum("a", "b", 1, 10_000),
            sum("a", "b", 2, 20_000),
            sum("a", "b", 3, 30_000),
            sum("b", "a", 1, 11_000),
            Input::CaughtUp,
        ];
        run(&s, Feed::from_inputs(inputs), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("src \\ dst").count(), 1, "{out}");
        assert!(out.contains("30.0µs") && out.contains("11.0µs"));
    }

    #[test]
    fn empty_input_is_an_error_naming_the_source() {
        let (r, out) = run_on(vec![Input::Warning("line 1: skipped".into())], false);
        assert_eq!(
            r.unwrap_err().to_string(),
            "no window summaries found in file agent.jsonl"
        );
        assert!(out.is_empty());
        let (r, _) = run_on(vec![Input::Failed(anyhow::anyhow!("broker gone"))], false);
        assert_eq!(r.unwrap_err().to_string(), "broker gone");
    }
}
