//! `meshprobe matrix`: the mesh as an N×N heatmap of the latest window per (src, dst), or as a
//! zone × zone heatmap ([`zones`]), live in the terminal, as plain text for logs, or as an
//! SVG/HTML file. With pinglists not every pair is probed: cells a reporting agent does not
//! probe are shown apart from missing ones, beside [`coverage`] figures.
//!
//! One input thread (Kafka or JSON lines, [`source`]) feeds summaries to one front end
//! ([`tui`], [`text`], or the batch writer here); all of them draw the same [`view::View`].
use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::cli::error::ConfigError;

pub mod coverage;
pub mod expected;
pub mod mark;
pub mod model;
pub mod source;
pub mod svg;
pub mod text;
pub mod tui;
pub mod view;
pub mod zones;

pub use expected::Expected;
pub use model::Model;
pub use source::Input;

/// What each cell shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Median network RTT of the window.
    #[default]
    P50,
    /// 99th percentile network RTT of the window.
    P99,
    /// Lost probes / resolved probes.
    Loss,
}

impl Metric {
    /// The next metric, for the TUI's `m` key.
    pub fn next(self) -> Metric {
        match self {
            Metric::P50 => Metric::P99,
            Metric::P99 => Metric::Loss,
            Metric::Loss => Metric::P50,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::P50 => "network RTT p50",
            Metric::P99 => "network RTT p99",
            Metric::Loss => "loss",
        }
    }

    pub fn is_rtt(self) -> bool {
        self != Metric::Loss
    }
}

/// What the rows and columns are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Nodes: one cell per ordered pair.
    #[default]
    Node,
    /// Zones: per (src zone, dst zone), the agents of the src zone merged (from zone
    /// summaries, or the pair summaries when there are none).
    Zone,
}

impl By {
    /// The other one, for the TUI's `z` key.
    pub fn next(self) -> By {
        match self {
            By::Node => By::Zone,
            By::Zone => By::Node,
        }
    }
}

/// `--scale-max`: a duration applies to the RTT metrics, a percentage to loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleMax {
    Rtt(f64),
    Loss(f64),
}

impl ScaleMax {
    /// The fixed top of the scale for `metric`, if this one applies to it.
    pub fn for_metric(self, metric: Metric) -> Option<f64> {
        match (self, metric.is_rtt()) {
            (ScaleMax::Rtt(ns), true) => Some(ns),
            (ScaleMax::Loss(r), false) => Some(r),
            _ => None,
        }
    }
}

fn parse_scale_max(s: &str) -> Result<ScaleMax, String> {
    let v = if let Some(pct) = s.trim().strip_suffix('%') {
        let p: f64 = pct
            .trim()
            .parse()
            .map_err(|_| format!("`{pct}` is not a number"))?;
        ScaleMax::Loss(p / 100.0)
    } else {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{e}; give a duration (e.g. 2ms) or a percentage (e.g. 5%)"))?;
        ScaleMax::Rtt(d.as_nanos() as f64)
    };
    match v {
        ScaleMax::Rtt(x) | ScaleMax::Loss(x) if x > 0.0 && x.is_finite() => Ok(v),
        _ => Err("must be greater than 0".into()),
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(
    after_help = "Keys (terminal UI): m next metric, z nodes/zones, arrows/hjkl scroll, \
                  q/Esc/Ctrl-C quit.\n\
                  Exit codes: 0 done, 1 input or output failed (e.g. no window summaries), \
                  2 bad flags or --expected file."
)]
pub struct MatrixArgs {
    /// Read an agent's JSON lines (`--output json`, or `consume --json`) from FILE (`-` for
    /// stdin) instead of Kafka.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Keep reading: a growing --input file (like `tail -f`), or Kafka past the end of the
    /// topic with --text/--once/--svg/--html (the terminal UI always follows Kafka).
    #[arg(long)]
    pub follow: bool,
    /// Kafka brokers, `host:port[,host:port]` (ignored with --input).
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,
    /// Topic the agents write to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "distributedTrace")]
    pub kafka_topic: String,
    /// How long to wait for Kafka (connecting, and when not following for progress).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// What the cells show (`m` switches in the terminal UI).
    #[arg(long, value_enum, default_value_t = Metric::P50)]
    pub metric: Metric,
    /// Rows and columns: nodes, or zones (`z` switches in the terminal UI).
    #[arg(long, value_enum, default_value_t = By::Node)]
    pub by: By,
    /// Known added RTT per pair (`src,dst,added_rtt` lines, e.g. `node1,node2,400us`), shown
    /// beside the measured RTT.
    #[arg(long, value_name = "FILE")]
    pub expected: Option<PathBuf>,
    /// Fixed top of the colour scale (from 0): a duration for p50/p99 (e.g. 2ms), a percentage
    /// for loss (e.g. 5%). Default: min..max of the shown values.
    #[arg(long, value_parser = parse_scale_max, value_name = "DUR|PCT")]
    pub scale_max: Option<ScaleMax>,
    /// Write the heatmap as a standalone SVG file (no terminal UI: reads until the input
    /// ends or --duration, then writes and exits).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write an HTML page embedding the same SVG (as --svg).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Title of the SVG/HTML heatmap.
    #[arg(long, default_value = "meshprobe latency matrix")]
    pub title: String,
    /// Plain-text matrix instead of the terminal UI, printed each time a window completes
    /// (the default when stdout is not a terminal).
    #[arg(long)]
    pub text: bool,
    /// Plain text, printed once at the end of the input (implies --text).
    #[arg(long)]
    pub once: bool,
    /// Stop reading after this long (e.g. 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub security: crate::kafka_security::SecurityArgs,
}

/// Errors of this module; flag problems become [`ConfigError`]s (exit code 2) in [`run`].
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("{path}:{line}: {problem}")]
    Expected {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no window summaries found in {0}")]
    NoSummaries(String),
    #[error("summary {src}->{dst}: {problem}")]
    BadSummary {
        src: String,
        dst: String,
        problem: &'static str,
    },
    #[error("terminal input/output failed")]
    Terminal(#[source] std::io::Error),
}

/// How the matrix is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tui,
    Text,
    /// Only --svg/--html, written at the end.
    Batch,
}

/// Everything `run` decided from the flags, before any input is read.
pub struct Settings {
    pub title: String,
    pub metric: Metric,
    pub by: By,
    pub scale_max: Option<ScaleMax>,
    pub expected: Expected,
    pub svg: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub once: bool,
    /// Describes the input in the status line and in errors.
    pub source: String,
    /// Summaries arrive in time order (a file), so text frames can be printed while reading
    /// the past; a topic's partitions come one after another.
    pub ordered_input: bool,
    /// The kernel's TAI−UTC offset: summaries carry TAI, people read UTC.
    pub tai_offset_ns: i64,
}

fn flag_error(setting: &str, problem: impl std::fmt::Display, fix: &str) -> anyhow::Error {
    ConfigError::new(setting, problem.to_string(), fix).into()
}

/// An output file must be creatable: checked before reading, which may take long.
fn check_output(flag: &str, path: &Path) -> anyhow::Result<()> {
    let fix = "give a path in an existing directory";
    if path.is_dir() {
        return Err(flag_error(
            flag,
            format!("{} is a directory", path.display()),
            fix,
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(flag_error(
            flag,
            format!("directory {} does not exist", dir.display()),
            fix,
        ));
    }
    Ok(())
}

pub async fn run(args: MatrixArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT/SIGTERM end the input like its end would: text and SVG are still written, the
    // terminal is restored.
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    // Front ends block (terminal, stdout, channel); the input gets a thread of its own.
    tokio::task::spawn_blocking(move || run_blocking(args, stop))
        .await
        .context("matrix thread")?
}

fn run_blocking(args: MatrixArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    for (flag, p) in [("--svg", &args.svg), ("--html", &args.html)] {
        if let Some(p) = p {
            check_output(flag, p)?;
        }
    }
    if args.svg.is_some() && args.svg == args.html {
        return Err(flag_error(
            "--html",
            "same file as --svg",
            "give two different paths",
        ));
    }
    let expected = match &args.expected {
        Some(p) => Expected::load(p).map_err(|e| {
            flag_error(
                "--expected",
                // With its cause (e.g. the file is missing): the error is flattened to text.
                format!("{:#}", anyhow::Error::new(e)),
                "lines are `src,dst,added_rtt`, e.g. `node1,node2,400us`",
            )
        })?,
        None => Expected::default(),
    };
    let mode = if args.text || args.once {
        Mode::Text
    } else if args.svg.is_some() || args.html.is_some() {
        Mode::Batch
    } else if std::io::stdout().is_terminal() {
        Mode::Tui
    } else {
        Mode::Text
    };

    let (tx, rx) = mpsc::channel();
    let source = if let Some(path) = &args.input {
        let src = source::FileSource::open(path, args.follow)?;
        let what = src.describe();
        src.spawn(tx, stop.clone());
        what
    } else if let Some(bs) = &args.kafka_bootstrap_servers {
        crate::sink::kafka::validate_bootstrap(bs).map_err(|e| {
            flag_error(
                "--kafka-bootstrap-servers",
                e,
                "or read a file with --input",
            )
        })?;
        let security =
            crate::kafka_security::Security::from_args(&args.security, std::env::vars_os())
                .map_err(ConfigError::named)?;
        let src = source::KafkaSource {
            security,
            bootstrap: bs.clone(),
            topic: args.kafka_topic.clone(),
            timeout: args.timeout,
            // A live view follows; one-shot outputs stop at the end of the topic.
            follow: args.follow || mode == Mode::Tui,
        };
        let what = src.describe();
        src.spawn(tx, stop.clone());
        what
    } else {
        return Err(flag_error(
            "--input / --kafka-bootstrap-servers",
            "no input",
            "give --input FILE (`-` for stdin) or --kafka-bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS)",
        ));
    };

    let settings = Settings {
        title: args.title,
        metric: args.metric,
        by: args.by,
        scale_max: args.scale_max,
        expected,
        svg: args.svg,
        html: args.html,
        once: args.once,
        source,
        ordered_input: args.input.is_some(),
        tai_offset_ns: crate::clock::tai_offset_ns(),
    };
    let deadline = args.duration.map(|d| Instant::now() + d);
    let feed = Feed { rx, stop, deadline };
    match mode {
        Mode::Tui => tui::run(&settings, feed)?,
        Mode::Text => {
            let model = text::run(&settings, feed, &mut std::io::stdout())?;
            write_files(&settings, &model)?;
        }
        Mode::Batch => {
            let mut model = Model::default();
            let mut feed = feed;
            while let Some(ev) = feed.next(Duration::from_millis(200)) {
                match ev {
                    Input::Summary(s) => {
                        if let Err(e) = model.ingest(*s) {
                            eprintln!("warning: {e}");
                        }
                    }
                    Input::Warning(w) => eprintln!("warning: {w}"),
                    Input::CaughtUp | Input::Idle => {}
                    Input::Failed(e) => return Err(e),
                }
            }
            write_files(&settings, &model)?;
        }
    }
    Ok(())
}

/// Writes --svg and --html (if given) from the final state.
fn write_files(s: &Settings, model: &Model) -> anyhow::Result<()> {
    if s.svg.is_none() && s.html.is_none() {
        return Ok(());
    }
    if model.summaries + model.zone_summaries == 0 {
        return Err(MatrixError::NoSummaries(s.source.clone()).into());
    }
    let view = view::View::of(model, s, s.metric, s.by);
    if let Some(p) = &s.svg {
        write_atomic(p, &svg::svg(&view))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &s.html {
        write_atomic(p, &svg::html(&view))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Write-then-rename, so a browser reloading the file never sees half of it.
fn write_atomic(path: &Path, text: &str) -> Result<(), MatrixError> {
    let err = |source| MatrixError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The input as the front ends see it: summaries until the input ends, the deadline passes
/// or a signal stops it.
pub struct Feed {
    rx: mpsc::Receiver<Input>,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Feed {
    /// The next input, [`Input::Idle`] after `wait` without any, `None` at the end. The
    /// input thread is not joined: it may sit in a blocking read (stdin) and dies with us.
    pub fn next(&mut self, wait: Duration) -> Option<Input> {
        if self.stopped() {
            return None;
        }
        let wait = match self.deadline {
            Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
            None => wait,
        };
        match self.rx.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(mpsc::RecvTimeoutError::Timeout) => Some(Input::Idle),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        }
    }

    /// A signal came or the deadline passed.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Asks the input thread to stop (it checks between reads).
    pub fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn from_inputs(inputs: Vec<Input>) -> Feed {
        let (tx, rx) = mpsc::channel();
        for i in inputs {
            tx.send(i).expect("receiver alive");
        }
        Feed {
            rx,
            stop: Arc::new(AtomicBool::new(false)),
            deadline: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MatrixArgs,
    }

    fn parse(argv: &[&str]) -> Result<MatrixArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("matrix").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_and_defaults() {
        let a = parse(&["--input", "x.jsonl"]).unwrap();
        assert_eq!(a.metric, Metric::P50);
        assert_eq!(a.by, By::Node);
        assert_eq!(a.kafka_topic, "distributedTrace");
        assert_eq!(a.title, "meshprobe latency matrix");
        assert!(!a.follow && !a.text && !a.once && a.scale_max.is_none());
        let a = parse(&[
            "--input",
            "-",
            "--metric",
            "loss",
            "--scale-max",
            "5%",
            "--duration",
            "30s",
            "--by",
            "zone",
        ])
        .unwrap();
        assert_eq!(a.metric, Metric::Loss);
        assert_eq!(a.by, By::Zone);
        assert_eq!(By::Zone.next(), By::Node);
        assert_eq!(a.scale_max, Some(ScaleMax::Loss(0.05)));
        assert_eq!(a.duration, Some(Duration::from_secs(30)));
        assert!(parse(&["--metric", "p90"]).is_err());
    }

    #[test]
    fn scale_max_kinds() {
        assert_eq!(parse_scale_max("2ms"), Ok(ScaleMax::Rtt(2e6)));
        assert_eq!(parse_scale_max("12.5%"), Ok(ScaleMax::Loss(0.125)));
        assert!(parse_scale_max("0%").is_err());
        assert!(parse_scale_max("0ms").is_err());
        assert!(parse_scale_max("fast").is_err());
        assert_eq!(ScaleMax::Rtt(2e6).for_metric(Metric::P99), Some(2e6));
        assert_eq!(ScaleMax::Rtt(2e6).for_metric(Metric::Loss), None);
        assert_eq!(ScaleMax::Loss(0.1).for_metric(Metric::Loss), Some(0.1));
    }

    #[test]
    fn metric_cycles_through_all() {
        let m = Metric::P50;
        assert_eq!(m.next(), Metric::P99);
        assert_eq!(m.next().next(), Metric::Loss);
        assert_eq!(m.next().next().next(), Metric::P50);
    }

    #[test]
    fn output_into_missing_directory_is_a_flag_error() {
        let e = check_output("--svg", Path::new("/nonexistent-dir-xyz/m.svg")).unwrap_err();
        assert!(e.downcast_ref::<ConfigError>().is_some());
        assert!(
            e.to_string()
                .contains("directory /nonexistent-dir-xyz does not exist"),
            "{e}"
        );
        assert!(check_output("--svg", Path::new("m.svg")).is_ok());
        assert!(check_output("--svg", Path::new("/tmp")).is_err());
    }
}
