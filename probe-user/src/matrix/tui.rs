//! The live terminal heatmap (ratatui on crossterm). Plain 256/16-colour styles and no mouse,
//! so it works over ssh and in tmux; the terminal is restored on quit, on error and on panic.
use std::time::Duration;

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Cell, Paragraph, Row, Table},
};

use super::{
    By, Feed, Input, MatrixError, Metric, Model, Settings,
    view::{MARKS_LEGEND, Mark, View},
};

/// Inputs taken per screen refresh, so keys stay responsive while a topic is caught up on.
const BATCH: usize = 5000;

/// Light colours of the xterm 256 palette, green to red: black text stays readable.
const RAMP_256: [u8; 7] = [114, 150, 186, 222, 216, 210, 203];
const RAMP_16: [Color; 4] = [Color::Green, Color::Yellow, Color::LightRed, Color::Red];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Palette {
    C256,
    C16,
    /// NO_COLOR: values and marks only.
    Mono,
}

impl Palette {
    fn detect() -> Palette {
        let var = |k| std::env::var(k).unwrap_or_default();
        if !var("NO_COLOR").is_empty() {
            Palette::Mono
        } else if var("TERM").contains("256") || !var("COLORTERM").is_empty() {
            Palette::C256
        } else {
            Palette::C16
        }
    }

    /// The colour of scale position `t`.
    fn color(self, t: f64) -> Option<Color> {
        let pick = |n: usize| ((t.clamp(0.0, 1.0) * (n - 1) as f64).round() as usize).min(n - 1);
        match self {
            Palette::C256 => Some(Color::Indexed(RAMP_256[pick(RAMP_256.len())])),
            Palette::C16 => Some(RAMP_16[pick(RAMP_16.len())]),
            Palette::Mono => None,
        }
    }

    fn steps(self) -> usize {
        match self {
            Palette::C256 => RAMP_256.len(),
            Palette::C16 => RAMP_16.len(),
            Palette::Mono => 0,
        }
    }
}

struct App<'a> {
    s: &'a Settings,
    model: Model,
    metric: Metric,
    by: By,
    palette: Palette,
    row_off: usize,
    col_off: usize,
    /// "reading", "live", "input ended".
    state: &'static str,
    /// The last warning from the input.
    warning: String,
}

pub fn run(s: &Settings, mut feed: Feed) -> anyhow::Result<()> {
    // try_init enters the alternate screen in raw mode and hooks panics to restore it first.
    let mut terminal = ratatui::try_init().map_err(MatrixError::Terminal)?;
    let mut app = App {
        s,
        model: Model::default(),
        metric: s.metric,
        by: s.by,
        palette: Palette::detect(),
        row_off: 0,
        col_off: 0,
        state: "reading",
        warning: String::new(),
    };
    let r = app.run(&mut terminal, &mut feed);
    ratatui::restore();
    feed.close();
    r
}

impl App<'_> {
    fn run(&mut self, terminal: &mut DefaultTerminal, feed: &mut Feed) -> anyhow::Result<()> {
        let mut ended = false;
        loop {
            terminal
                .draw(|f| self.draw(f))
                .map_err(MatrixError::Terminal)?;
            // Keys first: a quit must not wait behind a backlog of input.
            if event::poll(Duration::from_millis(100)).map_err(MatrixError::Terminal)?
                && !self.key(event::read().map_err(MatrixError::Terminal)?)
            {
                return Ok(());
            }
            for _ in 0..BATCH {
                if ended {
                    break;
                }
                match feed.next(Duration::ZERO) {
                    Some(Input::Summary(sum)) => {
                        if let Err(e) = self.model.ingest(*sum) {
                            self.warning = e.to_string();
                        }
                    }
                    Some(Input::Warning(w)) => self.warning = w,
                    Some(Input::CaughtUp) => self.state = "live",
                    Some(Input::Idle) => break,
                    Some(Input::Failed(e)) => return Err(e),
                    None => {
                        ended = true;
                        self.state = "input ended";
                    }
                }
            }
            // A signal or --duration: leave like `q`.
            if feed.stopped() {
                return Ok(());
            }
        }
    }

    /// Handles one terminal event; `false` to quit.
    fn key(&mut self, ev: Event) -> bool {
        let Event::Key(k) = ev else {
            return true; // resize and the like: the next draw adapts
        };
        if k.kind != KeyEventKind::Press {
            return true;
        }
        let last = self.model.nodes().count().saturating_sub(1);
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Char('m') => self.metric = self.metric.next(),
            KeyCode::Char('z') => {
                self.by = self.by.next();
                (self.row_off, self.col_off) = (0, 0);
            }
            KeyCode::Left | KeyCode::Char('h') => self.col_off = self.col_off.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => self.col_off = (self.col_off + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.row_off = self.row_off.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.row_off = (self.row_off + 1).min(last),
            KeyCode::Home => (self.row_off, self.col_off) = (0, 0),
            _ => {}
        }
        true
    }

    fn draw(&self, f: &mut Frame) {
        let v = View::of(&self.model, self.s, self.metric, self.by);
        let [title, status, grid, legend, coverage, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(v.title.clone(), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!(": {}", v.metric.label())),
            ])),
            title,
        );
        f.render_widget(
            Paragraph::new(format!(
                "metric {} | {} | {} | {}",
                v.metric.label(),
                v.source,
                self.state,
                v.progress()
            )),
            status,
        );
        self.grid(f, &v, grid);
        f.render_widget(Paragraph::new(self.legend(&v)), legend);
        f.render_widget(Paragraph::new(v.coverage.text()), coverage);
        let mut help_line = vec![Span::styled(
            "m metric  z nodes/zones  arrows/hjkl scroll  Home reset  q quit",
            Style::new().add_modifier(Modifier::DIM),
        )];
        if !self.warning.is_empty() {
            help_line.push(Span::styled(
                format!("  warning: {}", self.warning),
                Style::new().fg(Color::Yellow),
            ));
        }
        f.render_widget(Paragraph::new(Line::from(help_line)), help);
    }

    fn grid(&self, f: &mut Frame, v: &View, area: Rect) {
        if v.nodes.is_empty() {
            f.render_widget(
                Paragraph::new(format!("waiting for window summaries from {}", v.source)),
                area,
            );
            return;
        }
        let label_w = v.nodes.iter().map(|n| width(&n.label())).max().unwrap_or(0);
        let label_w = label_w.max(width(v.corner())) as u16;
        let cell_w = v
            .cells
            .iter()
            .flatten()
            .map(|c| {
                (width(&c.text) + width(c.mark.marker()))
                    .max(View::second_line(c).map_or(0, |l| width(&l)))
            })
            .chain(v.nodes.iter().map(|n| width(&n.id).max(width(&n.zone))))
            .max()
            .unwrap_or(0)
            .max(6) as u16;
        // As many columns and rows as fit, from the scroll offsets.
        let cols = ((area.width.saturating_sub(label_w) / (cell_w + 1)) as usize).max(1);
        let two_lines = v.has_second_line();
        let row_h: u16 = if two_lines { 2 } else { 1 };
        let head_h: u16 = if v.zones { 2 } else { 1 };
        let rows = ((area.height.saturating_sub(head_h) / row_h) as usize).max(1);
        let col_off = self.col_off.min(v.nodes.len().saturating_sub(cols));
        let row_off = self.row_off.min(v.nodes.len().saturating_sub(rows));
        let shown_cols = col_off..(col_off + cols).min(v.nodes.len());

        let bold = Style::new().add_modifier(Modifier::BOLD);
        let header = Row::new(
            std::iter::once(Cell::from(v.corner()).style(Style::new().add_modifier(Modifier::DIM)))
                .chain(v.nodes[shown_cols.clone()].iter().map(|n| {
                    let mut t = Text::from(Line::from(n.id.clone()).alignment(Alignment::Center));
                    if v.zones {
                        t.push_line(Line::from(n.zone.clone()).alignment(Alignment::Center));
                    }
                    Cell::from(t).style(bold)
                })),
        )
        .height(head_h);
        let body = v
            .nodes
            .iter()
            .zip(&v.cells)
            .skip(row_off)
            .take(rows)
            .map(|(node, row)| {
                Row::new(
                    std::iter::once(Cell::from(node.label()).style(bold)).chain(
                        row[shown_cols.clone()]
                            .iter()
                            .map(|c| self.cell(c, two_lines)),
                    ),
                )
                .height(row_h)
            });
        let widths = std::iter::once(Constraint::Length(label_w)).chain(std::iter::repeat_n(
            Constraint::Length(cell_w),
            shown_cols.len(),
        ));
        f.render_widget(
            Table::new(body, widths).header(header).column_spacing(1),
            area,
        );
    }

    fn cell(&self, c: &super::view::Cell, two_lines: bool) -> Cell<'static> {
        let mut t = Text::from(
            Line::from(format!("{}{}", c.text, c.mark.marker())).alignment(Alignment::Center),
        );
        if two_lines && let Some(l) = View::second_line(c) {
            t.push_line(Line::from(l).alignment(Alignment::Center));
        }
        let colour = c.t.and_then(|t| self.palette.color(t));
        let style = match (c.mark, colour) {
            (Mark::Diagonal, _) => Style::new(),
            (Mark::NoData, _) => Style::new().fg(Color::DarkGray),
            (Mark::Unprobed, _) => Style::new().add_modifier(Modifier::DIM),
            // Stale: the value's colour as text on no background, dimmed, with its marker.
            (Mark::Stale | Mark::Left, Some(col)) => {
                Style::new().fg(col).add_modifier(Modifier::DIM)
            }
            (Mark::Stale | Mark::Left, None) => Style::new().add_modifier(Modifier::DIM),
            (Mark::Fresh, Some(col)) => Style::new().bg(col).fg(Color::Black),
            // Fresh but no value: every probe lost.
            (Mark::Fresh, None) if c.value.is_none() => Style::new()
                .fg(Color::LightRed)
                .add_modifier(Modifier::BOLD),
            (Mark::Fresh, None) => Style::new(),
        };
        Cell::from(t).style(style)
    }

    fn legend(&self, v: &View) -> Line<'static> {
        let mut spans = vec![Span::raw("scale ")];
        let steps = self.palette.steps();
        for i in 0..steps {
            let t = i as f64 / (steps - 1) as f64;
            if let Some(c) = self.palette.color(t) {
                spans.push(Span::styled("  ", Style::new().bg(c)));
            }
        }
        spans.push(Span::raw(format!(" {}   {MARKS_LEGEND}", v.scale_text())));
        if v.has_expected() {
            spans.push(Span::raw("  (+X) expected added RTT"));
        }
        Line::from(spans)
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::matrix::view::tests::{model, settings};

    fn render(app: &App<'_>, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| app.draw(f)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn app(s: &Settings) -> App<'_> {
        App {
            s,
            model: model(),
            metric: Metric::P50,
            by: By::Node,
            palette: Palette::C256,
            row_off: 0,
            col_off: 0,
            state: "live",
            warning: String::new(),
        }
    }

    #[test]
    fn screen_shows_grid_marks_status_and_switches_metric() {
        let s = settings("a,b,400us\n");
        let mut a = app(&s);
        let screen = render(&a, 120, 14);
        assert!(
            screen.contains("file agent.jsonl | live | 3 windows"),
            "{screen}"
        );
        assert!(screen.contains("412µs"), "{screen}");
        assert!(screen.contains("(+400µs)"), "{screen}");
        assert!(screen.contains("45.3µs*"), "{screen}");
        assert!(screen.contains("1.25ms!"), "{screen}");
        assert!(screen.contains("* stale"), "{screen}");
        assert!(a.key(Event::Key(KeyCode::Char('m').into())));
        let screen = render(&a, 120, 14);
        assert!(screen.contains("network RTT p99"), "{screen}");
        assert!(screen.contains("824µs"), "{screen}");
        assert!(!a.key(Event::Key(KeyCode::Char('q').into())));
        assert!(!a.key(Event::Key(ratatui::crossterm::event::KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL
        ))));
    }

    #[test]
    fn coverage_line_and_z_switches_to_zones() {
        let s = settings("");
        let mut a = app(&s);
        let screen = render(&a, 120, 14);
        assert!(
            screen.contains("coverage: pairs probed 3/6 (50%), nodes probed 2/3"),
            "{screen}"
        );
        assert!(a.key(Event::Key(KeyCode::Char('z').into())));
        assert_eq!(a.by, By::Zone);
        // The fixture has no zone labels: one zone of every node, rebuilt from pair quantiles.
        let screen = render(&a, 120, 14);
        assert!(screen.contains("src zone \\ dst zone"), "{screen}");
        assert!(screen.contains("(no zone)"), "{screen}");
        assert!(screen.contains("≈"), "{screen}");
        assert!(screen.contains("loss 10%"), "{screen}");
        a.key(Event::Key(KeyCode::Char('z').into()));
        assert_eq!(a.by, By::Node);
    }

    #[test]
    fn fresh_cells_are_coloured_stale_dimmed() {
        let s = settings("");
        let a = app(&s);
        let v = View::build(&a.model, &s, Metric::P50);
        let fresh = a.cell(&v.cells[0][1], false);
        let stale = a.cell(&v.cells[2][1], false);
        assert_eq!(
            fresh,
            Cell::from(Text::from(Line::from("412µs").alignment(Alignment::Center))).style(
                Style::new()
                    .bg(Color::Indexed(RAMP_256[2]))
                    .fg(Color::Black)
            )
        );
        assert_eq!(
            stale,
            Cell::from(Text::from(
                Line::from("45.3µs*").alignment(Alignment::Center)
            ))
            .style(
                Style::new()
                    .fg(Color::Indexed(RAMP_256[0]))
                    .add_modifier(Modifier::DIM)
            )
        );
    }

    #[test]
    fn narrow_terminal_scrolls_columns() {
        let s = settings("");
        let mut a = app(&s);
        // Room for two columns: a and b.
        let screen = render(&a, 30, 9);
        assert!(screen.contains("412µs"), "{screen}");
        assert!(screen.contains("1.25ms!"), "{screen}");
        assert!(!screen.contains('·'), "{screen}");
        for _ in 0..5 {
            a.key(Event::Key(KeyCode::Right.into()));
        }
        // Scrolled as far as it goes: b and c.
        let screen = render(&a, 30, 9);
        assert!(
            screen.contains("45.3µs*") && screen.contains('·'),
            "{screen}"
        );
        assert!(!screen.contains("1.25ms!"), "{screen}");
    }
}
