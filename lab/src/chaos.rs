//! Chaos experiments on a [`Lab`]: each states a hypothesis with numbers, waits for a clean
//! baseline, applies one fault, keeps it for its time, puts the lab back exactly as it was, waits
//! for recovery, and decides from what the mesh itself recorded (window summaries read back
//! from Kafka, ZooKeeper membership, the agents' peer_added/peer_removed lines) whether the
//! hypothesis holds. Nothing in a [`Verdict`] is assumed: every number comes from that data.
//!
//! From the command line (`cargo xtask mesh chaos ...`) an experiment is named as
//! [`USAGE`] says; nodes are `node2` or `2`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::Lab;
use crate::data::{Pair, Windows, pct};
use crate::spec::{LabSpec, MAX_RTT, Shape, fmt_duration, node_name, parse_loss};
use meshprobe_harness::agent::{Event, tai_now_ns};
use meshprobe_harness::stats::{NOISE_K, Shift};

/// The experiments and their arguments, as the command line takes them.
pub const USAGE: &str = "kill-agent NODE | zk-outage [SECS=20] | broker-outage [SECS=30] | \
                         link-delay A B [RTT=2ms] | link-loss A B [PCT=20] | partition NODE [SECS=15]";

/// Experiment names, as [`Experiment::parse`] takes them.
pub const NAMES: [&str; 6] = [
    "kill-agent",
    "zk-outage",
    "broker-outage",
    "link-delay",
    "link-loss",
    "partition",
];

/// Windows of the clean baseline every experiment starts from.
pub const BASELINE_WINDOWS: u64 = 3;
/// kill-agent: the agent stays dead at least this many windows, and until the middle of the
/// second window after the one in which the last peer dropped it.
pub const KILL_DOWN_WINDOWS: u64 = 2;
/// kill-agent and partition: every pair involving the node is measured again by the end of
/// this many windows after the one in which the node registered again (its znode seen). The
/// others add it on their ZooKeeper watch and probe it within an interval (at most 200 ms), it
/// probes them once it has listed them, right after registering; the interval is at most a
/// window (the agent's rule), so a registration late in a window is measured in the next.
/// (Counted from the registration, not the restart: how long an agent takes to start is the
/// machine's speed, not the product's.)
pub const RECOVERY_WINDOWS: u64 = 1;
/// Peers notice a dead or cut-off node this long after its ZooKeeper session timeout: the
/// server checks expiry every tick (500 ms in the lab), then the watch fires and the agent acts.
pub const REMOVAL_SLACK: Duration = Duration::from_secs(2);
/// link-delay: windows the added delay is held for.
pub const DELAY_WINDOWS: u64 = 4;
/// link-loss: windows the loss is held for (about 100 probes per direction at 10/s).
pub const LOSS_WINDOWS: u64 = 5;
/// link-loss: observed loss is within this many binomial standard deviations of the setting
/// (a false alarm once in about 15 000 runs).
pub const LOSS_SIGMAS: f64 = 4.0;
/// Longest time a chaos experiment waits for data to reach Kafka.
pub const KAFKA_WAIT: Duration = Duration::from_secs(90);
/// The agents' new-session backoff cap, BACKOFF_CAP of probe-user's discovery/zk.rs (this
/// library does not link the product; tests/tests/lab_chaos.rs checks that they agree).
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// kill-agent and partition: every peer drops the node within this of losing it: its session
/// expires after CONN_TIMEOUT, then [`REMOVAL_SLACK`].
pub fn removal_bound(conn_timeout: Duration) -> Duration {
    conn_timeout + REMOVAL_SLACK
}

/// zk-outage and partition: an agent is registered again this long after ZooKeeper is in reach
/// again. A session still alive resumes and an expired one is replaced at once, within the
/// client's connect timeout (a part of CONN_TIMEOUT); an agent between two attempts waits its
/// new-session backoff, at most BACKOFF_CAP (discovery/zk.rs).
pub fn reregister_bound(conn_timeout: Duration) -> Duration {
    BACKOFF_CAP + conn_timeout
}

/// One chaos experiment.
#[derive(Clone, Debug, PartialEq)]
pub enum Experiment {
    /// SIGKILL the node's agent (no deregistration, no flush), restart it after
    /// [`KILL_DOWN_WINDOWS`] windows.
    KillAgent { node: usize },
    /// Stop ZooKeeper (SIGKILL) for `secs`, then start it again on the same data.
    ZkOutage { secs: u64 },
    /// Stop the broker (SIGKILL) for `secs`, then start it again on the same storage.
    BrokerOutage { secs: u64 },
    /// Add `rtt` to the pair's round-trip time for [`DELAY_WINDOWS`] windows.
    LinkDelay { a: usize, b: usize, rtt: Duration },
    /// Drop `pct` % of the pair's packets (lower → higher node) for [`LOSS_WINDOWS`] windows.
    LinkLoss { a: usize, b: usize, pct: f64 },
    /// Cut the node off from everything (peers, ZooKeeper, broker) for `secs`.
    Partition { node: usize, secs: u64 },
}

/// `node2` or `2`.
pub fn parse_node(s: &str) -> Result<usize> {
    let d = s.strip_prefix("node").unwrap_or(s);
    d.parse::<usize>()
        .map_err(|_| anyhow!("node {s:?}: expected node2 or 2"))
}

/// Whole seconds: `20` or `20s`, 1 to 600.
fn parse_secs(s: &str) -> Result<u64> {
    let v = match s.parse::<u64>() {
        Ok(v) => v,
        Err(_) => {
            let d = humantime::parse_duration(s)
                .map_err(|_| anyhow!("{s:?}: expected seconds such as 20 or 20s"))?;
            if d.subsec_nanos() != 0 {
                bail!("{s:?}: whole seconds only");
            }
            d.as_secs()
        }
    };
    if !(1..=600).contains(&v) {
        bail!("{s:?}: between 1 and 600 seconds");
    }
    Ok(v)
}

impl Experiment {
    /// `name` with its arguments, as on the command line (see [`USAGE`]).
    pub fn parse<S: AsRef<str>>(name: &str, args: &[S]) -> Result<Experiment> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        if !NAMES.contains(&name) {
            bail!("unknown chaos experiment {name:?}; one of: {USAGE}");
        }
        // The usage line counts the arguments; `[SECS=20]` ones are optional.
        let usage = usage_of(name);
        let words: Vec<&str> = usage.split(' ').skip(1).collect();
        let min = words.iter().filter(|w| !w.starts_with('[')).count();
        if !(min..=words.len()).contains(&args.len()) {
            bail!("{name}: {} argument(s) given; usage: {usage}", args.len());
        }
        let node = |i: usize| parse_node(args[i]);
        let secs_or = |i: usize, default: u64| -> Result<u64> {
            Ok(args
                .get(i)
                .map(|s| parse_secs(s))
                .transpose()?
                .unwrap_or(default))
        };
        let e = match name {
            "kill-agent" => Experiment::KillAgent { node: node(0)? },
            "zk-outage" => Experiment::ZkOutage {
                secs: secs_or(0, 20)?,
            },
            "broker-outage" => Experiment::BrokerOutage {
                secs: secs_or(0, 30)?,
            },
            "link-delay" => {
                let rtt = match args.get(2) {
                    Some(s) => humantime::parse_duration(s)
                        .map_err(|_| anyhow!("link-delay RTT {s:?}: expected e.g. 2ms or 500us"))?,
                    None => Duration::from_millis(2),
                };
                if rtt.is_zero() || rtt > MAX_RTT {
                    bail!(
                        "link-delay RTT {}: more than 0 and at most {}",
                        fmt_duration(rtt),
                        fmt_duration(MAX_RTT)
                    );
                }
                let (a, b) = (node(0)?, node(1)?);
                Experiment::LinkDelay { a, b, rtt }
            }
            "link-loss" => {
                let pct = args.get(2).map_or(Ok(20.0), |s| parse_loss(s))?;
                if pct <= 0.0 {
                    bail!("link-loss PCT must be more than 0%");
                }
                let (a, b) = (node(0)?, node(1)?);
                Experiment::LinkLoss { a, b, pct }
            }
            _ => Experiment::Partition {
                node: node(0)?,
                secs: secs_or(1, 15)?,
            },
        };
        if let Experiment::LinkDelay { a, b, .. } | Experiment::LinkLoss { a, b, .. } = e
            && a == b
        {
            bail!("{name}: A and B are the same node ({})", node_name(a));
        }
        Ok(e)
    }

    /// The whole command line: the name, then its arguments.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Experiment> {
        let Some((name, rest)) = args.split_first() else {
            bail!("which experiment? {USAGE}");
        };
        Experiment::parse(name.as_ref(), rest)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Experiment::KillAgent { .. } => "kill-agent",
            Experiment::ZkOutage { .. } => "zk-outage",
            Experiment::BrokerOutage { .. } => "broker-outage",
            Experiment::LinkDelay { .. } => "link-delay",
            Experiment::LinkLoss { .. } => "link-loss",
            Experiment::Partition { .. } => "partition",
        }
    }

    /// What should happen, with the numbers, for the lab's defaults (2 s windows, 100 ms
    /// interval, CONN_TIMEOUT 4 s). [`run`] states it for the lab it runs on.
    pub fn hypothesis(&self) -> String {
        self.hypothesis_for(&Timing {
            window: meshprobe_harness::agent::TEST_WINDOW_DURATION,
            interval: Duration::from_millis(100),
            conn_timeout: Duration::from_secs(meshprobe_harness::agent::TEST_CONN_TIMEOUT_S),
            probe_timeout: Duration::from_secs(1),
        })
    }

    fn hypothesis_for(&self, t: &Timing) -> String {
        let conn = t.conn_timeout.as_secs_f64();
        let removal = removal_bound(t.conn_timeout).as_secs_f64();
        let reregister = reregister_bound(t.conn_timeout).as_secs_f64();
        match *self {
            Experiment::KillAgent { node } => {
                let x = node_name(node);
                format!(
                    "After SIGKILL of {x}'s agent the other agents count loss towards {x} only \
                     until its ZooKeeper session expires (CONN_TIMEOUT {conn:.0} s: peer_removed \
                     within {removal:.0} s, no loss counted after it), and pairs not involving {x} \
                     miss no window and lose no probe. Restarted once the peers had a whole window \
                     without it (at least {KILL_DOWN_WINDOWS} windows), {x} registers again and \
                     every pair involving it is measured again by the end of the window after \
                     the one of its registration (+{RECOVERY_WINDOWS})."
                )
            }
            Experiment::ZkOutage { secs } => format!(
                "With ZooKeeper down for {secs} s the agents keep probing the peers they know: \
                 every pair has exactly one summary with replies and no loss in every window \
                 of the outage ({:.0} windows), and all agents are registered again within \
                 {reregister:.0} s of ZooKeeper's return (BACKOFF_CAP + CONN_TIMEOUT).",
                secs as f64 / t.window.as_secs_f64(),
            ),
            Experiment::BrokerOutage { secs } => format!(
                "With the broker down for {secs} s the agents keep probing and buffer their \
                 summaries (about {:.0} windows per pair); once the broker is back they \
                 deliver them, so every pair has exactly one summary in every window from \
                 before the outage to after it: no gap, no duplicate, no loss.",
                secs as f64 / t.window.as_secs_f64()
            ),
            Experiment::LinkDelay { a, b, rtt } => {
                let (a, b) = (node_name(a), node_name(b));
                format!(
                    "Adding {} of RTT to {a}–{b} raises the median network-RTT p50 of {a}→{b} \
                     and {b}→{a} by {} from the first full window after the change, while every \
                     other pair's median stays where it was; after the restore both are back. \
                     \"By\" and \"where it was\" within {NOISE_K}× each pair's own noise (the \
                     spread of its per-window p50 over the windows compared), which must be \
                     well below the change it judges.",
                    fmt_duration(rtt),
                    fmt_duration(rtt),
                )
            }
            Experiment::LinkLoss { a, b, pct } => {
                let (lo, hi) = (node_name(a.min(b)), node_name(a.max(b)));
                format!(
                    "Dropping {pct} % of the packets {lo}→{hi} makes {lo}→{hi} (requests) and \
                     {hi}→{lo} (replies) each lose {pct} % of their probes, within \
                     {LOSS_SIGMAS:.0} binomial standard deviations over {LOSS_WINDOWS} windows; \
                     every packet the nft rule dropped is one lost probe; every other pair \
                     loses nothing; the loss stops within a window of the restore."
                )
            }
            Experiment::Partition { node, secs } => {
                let x = node_name(node);
                format!(
                    "Cut off for {secs} s, {x} loses all of its probes but keeps summarising \
                     every window; its producer buffers them and delivers them after healing, \
                     so {x}'s rows have no gap. The others count 100 % loss towards {x} until \
                     its session expires (peer_removed within {removal:.0} s), then stop \
                     counting. Pairs not involving {x} are untouched. Within {reregister:.0} s of \
                     healing (BACKOFF_CAP + CONN_TIMEOUT) {x} is registered again, and every pair \
                     involving it is measured again by the end of the window after the one of \
                     its registration (+{RECOVERY_WINDOWS})."
                )
            }
        }
    }
}

/// `name`'s part of [`USAGE`] (all of it for an unknown name).
fn usage_of(name: &str) -> &'static str {
    USAGE
        .split(" | ")
        .find(|u| u.split(' ').next() == Some(name))
        .unwrap_or(USAGE)
}

impl fmt::Display for Experiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Experiment::KillAgent { node } => write!(f, " {}", node_name(node)),
            Experiment::ZkOutage { secs } | Experiment::BrokerOutage { secs } => {
                write!(f, " {secs}s")
            }
            Experiment::LinkDelay { a, b, rtt } => {
                write!(
                    f,
                    " {} {} +{}",
                    node_name(a),
                    node_name(b),
                    fmt_duration(rtt)
                )
            }
            Experiment::LinkLoss { a, b, pct } => {
                write!(f, " {} {} {pct}%", node_name(a), node_name(b))
            }
            Experiment::Partition { node, secs } => write!(f, " {} {secs}s", node_name(node)),
        }
    }
}

impl FromStr for Experiment {
    type Err = anyhow::Error;

    /// `"link-delay node0 node2 2ms"`: the name and its arguments, separated by white space.
    fn from_str(s: &str) -> Result<Experiment> {
        let words: Vec<&str> = s.split_whitespace().collect();
        Experiment::from_args(&words)
    }
}

/// What an experiment found.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The experiment as on the command line (`kill-agent node2`).
    pub experiment: String,
    pub hypothesis: String,
    pub holds: bool,
    /// Why: every check when it holds, the failed checks when it does not.
    pub reason: String,
    /// What the mesh saw: pairs, windows, times, counts.
    pub findings: Vec<String>,
    /// The numbers the checks were made of, by name (see each experiment's figures in [`run`]).
    pub figures: BTreeMap<String, f64>,
}

impl Verdict {
    /// A figure, or NaN when the experiment did not produce it.
    pub fn figure(&self, name: &str) -> f64 {
        self.figures.get(name).copied().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== chaos: {}", self.experiment)?;
        writeln!(f, "hypothesis: {}", self.hypothesis)?;
        writeln!(f, "findings:")?;
        for x in &self.findings {
            writeln!(f, "  - {x}")?;
        }
        if !self.figures.is_empty() {
            // Wrapped at about 100 columns.
            let mut line = String::from("figures:");
            for (k, v) in &self.figures {
                let item = format!(" {k}={}", fmt_num(*v));
                if line.len() + item.len() > 100 && line.len() > "figures:".len() {
                    writeln!(f, "{line}")?;
                    line = String::from("        ");
                }
                line.push_str(&item);
            }
            writeln!(f, "{line}")?;
        }
        write!(
            f,
            "VERDICT: {} — {}",
            if self.holds { "holds" } else { "does not hold" },
            self.reason
        )
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The lab's timing settings that hypotheses and bounds depend on.
#[derive(Clone, Copy, Debug)]
struct Timing {
    window: Duration,
    interval: Duration,
    conn_timeout: Duration,
    probe_timeout: Duration,
}

impl Timing {
    fn of(lab: &Lab) -> Timing {
        let cfg = lab.agent_config(0);
        let conn = cfg
            .env
            .get("CONN_TIMEOUT")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(10);
        let probe_timeout = cfg
            .env
            .get("MESHPROBE_TIMEOUT")
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(1));
        Timing {
            window: lab.spec.window,
            interval: lab.spec.interval,
            conn_timeout: Duration::from_secs(conn),
            probe_timeout,
        }
    }
}

/// Collects findings, figures and checks.
#[derive(Default)]
struct Judge {
    findings: Vec<String>,
    figures: BTreeMap<String, f64>,
    checks: Vec<(bool, String)>,
}

impl Judge {
    fn note(&mut self, s: impl Into<String>) {
        self.findings.push(s.into());
    }

    fn fig(&mut self, k: impl Into<String>, v: f64) {
        self.figures.insert(k.into(), v);
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        self.checks.push((ok, what.into()));
        ok
    }

    fn verdict(self, exp: &Experiment, hypothesis: String) -> Verdict {
        let holds = self.checks.iter().all(|(ok, _)| *ok);
        let reason = if self.checks.is_empty() {
            "nothing was checked".to_string()
        } else {
            // Every check when it holds, else the failed ones.
            let shown = self.checks.iter().filter(|(ok, _)| holds || !ok);
            let shown = shown.map(|(ok, s)| if *ok { s.clone() } else { format!("NOT {s}") });
            shown.collect::<Vec<_>>().join("; ")
        };
        Verdict {
            experiment: exp.to_string(),
            hypothesis,
            holds: holds && !self.checks.is_empty(),
            reason,
            findings: self.findings,
            figures: self.figures,
        }
    }
}

/// Maps harness instants to the agents' TAI clock (windows are TAI-aligned).
struct Clock {
    at: Instant,
    tai: u64,
    len: u64,
}

impl Clock {
    fn new(window: Duration) -> Clock {
        Clock {
            at: Instant::now(),
            tai: tai_now_ns(),
            len: window.as_nanos() as u64,
        }
    }

    fn tai_of(&self, i: Instant) -> u64 {
        if i >= self.at {
            self.tai + (i - self.at).as_nanos() as u64
        } else {
            self.tai.saturating_sub((self.at - i).as_nanos() as u64)
        }
    }

    fn window_of(&self, i: Instant) -> u64 {
        self.tai_of(i) / self.len
    }

    /// Seconds from `i` to the end of window `w` (when its summary is due).
    fn secs_to_end_of(&self, i: Instant, w: u64) -> f64 {
        ((w + 1) * self.len) as f64 / 1e9 - self.tai_of(i) as f64 / 1e9
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn arrow(p: &Pair) -> String {
    format!("{}→{}", p.0, p.1)
}

fn key(p: &Pair) -> String {
    format!("{}->{}", p.0, p.1)
}

fn pair(a: usize, b: usize) -> Pair {
    (node_name(a), node_name(b))
}

fn all_pairs(n: usize) -> Vec<Pair> {
    let others = move |a| (0..n).filter(move |&b| b != a).map(move |b| pair(a, b));
    (0..n).flat_map(others).collect()
}

/// `node2` → 2.
fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")?.parse().ok()
}

fn involves(p: &Pair, x: &str) -> bool {
    p.0 == x || p.1 == x
}

/// `v` joined by commas into `f`, or nothing for an empty `v`.
fn listed(v: &[String], f: impl Fn(String) -> String) -> String {
    if v.is_empty() {
        String::new()
    } else {
        f(v.join(", "))
    }
}

/// `[3, 4, 5, 9]` as `3..=5, 9`.
fn ranges(v: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..={}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// Sleeps until the middle of a window (the current one if its first half is not over yet, else
/// the next one) and returns that window: a fault applied there is attributed to one window.
fn at_mid_window(lab: &Lab) -> u64 {
    let len = lab.spec.window.as_nanos() as u64;
    let now = tai_now_ns();
    let w = now / len;
    let mid = w * len + len / 2;
    let target = if now <= mid { mid } else { mid + len };
    std::thread::sleep(Duration::from_nanos(target.saturating_sub(tai_now_ns())));
    lab.window_now()
}

/// Sleeps `d`, checking every 250 ms that the agents still run; `each` runs at every check.
fn hold(lab: &mut Lab, d: Duration, mut each: impl FnMut(&mut Lab)) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(250)));
        for (i, a) in &mut lab.cluster.agents {
            if !a.is_running() {
                bail!("{}'s agent exited:\n{}", node_name(*i), a.stderr_tail(30));
            }
        }
        each(lab);
    }
}

/// A fault's timeline: applied in the middle of window `on` (at `on_at`; `on1` in progress once
/// it took effect), undone in window `off` (at `off_at`; `off1` in progress once undone).
struct Span {
    on: u64,
    on1: u64,
    on_at: Instant,
    off: u64,
    off1: u64,
    off_at: Instant,
}

/// Applies a fault in the middle of a window, keeps it while `hold` runs (given `on1`), then
/// undoes it even when `hold` failed: the lab is put back before any error is returned. `undo`
/// may first read what it needs. `on` and `off` name the two steps in the log.
fn fault<T>(
    lab: &mut Lab,
    [on, off]: [&str; 2],
    log: &mut dyn FnMut(&str),
    apply: impl FnOnce(&mut Lab) -> Result<()>,
    hold: impl FnOnce(&mut Lab, u64) -> Result<()>,
    undo: impl FnOnce(&mut Lab) -> Result<T>,
) -> Result<(Span, T)> {
    let on_w = at_mid_window(lab);
    let on_at = Instant::now();
    apply(lab)?;
    let on1 = lab.window_now();
    log(&format!("{on} in window {on_w}"));
    let held = hold(lab, on1);
    let off_w = lab.window_now();
    let undone = undo(lab);
    let (off_at, off1) = (Instant::now(), lab.window_now());
    log(&format!("{off} in window {off_w}"));
    held?;
    let (on, off) = (on_w, off_w);
    Ok((
        Span {
            on,
            on1,
            on_at,
            off,
            off1,
            off_at,
        },
        undone?,
    ))
}

/// [`fault`] that shapes link `(a, b)` as `new` (`what` in the log) for `windows` whole
/// windows, then, in the middle of the next, reads what `read` needs and puts `old` back.
fn change_link<T>(
    lab: &mut Lab,
    log: &mut dyn FnMut(&str),
    (a, b): (usize, usize),
    [old, new]: [Shape; 2],
    windows: u64,
    what: &str,
    read: impl FnOnce(&Lab) -> T,
) -> Result<(Span, T)> {
    let link = format!("{}–{}", node_name(a), node_name(b));
    fault(
        lab,
        [&format!("{link}: {what}"), &format!("{link}: restored")],
        log,
        |lab| lab.set_link(a, b, new),
        |lab, on1| {
            lab.wait_window(on1 + windows + 1);
            let held = lab.check();
            at_mid_window(lab);
            held
        },
        |lab| {
            let r = read(lab);
            lab.set_link(a, b, old).map(|()| r)
        },
    )
}

/// Reads the topic until `done` holds (at most `timeout`); returns the last read and when
/// `done` first held. Errors only if no read succeeded at all.
fn wait_kafka(
    lab: &Lab,
    timeout: Duration,
    mut done: impl FnMut(&Windows) -> bool,
) -> Result<(Windows, Option<Instant>)> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Windows> = None;
    let mut last_err = None;
    loop {
        match lab.kafka_windows() {
            Ok(w) => {
                if done(&w) {
                    return Ok((w, Some(Instant::now())));
                }
                last = Some(w);
            }
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return match (last, last_err) {
                (Some(w), _) => Ok((w, None)),
                (None, Some(e)) => Err(e.context("reading the summaries from Kafka")),
                (None, None) => bail!("no read of Kafka within {timeout:?}"),
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the end of window `last`, then reads the topic until `done` (at most 30 s).
fn read_after(lab: &Lab, last: u64, done: impl FnMut(&Windows) -> bool) -> Result<Windows> {
    lab.wait_window(last + 1);
    Ok(wait_kafka(lab, Duration::from_secs(30), done)?.0)
}

/// [`read_after`] the end of `range`, until every pair of `pairs` is [`complete`] in it.
fn read_complete(lab: &Lab, pairs: &[Pair], range: RangeInclusive<u64>) -> Result<Windows> {
    read_after(lab, *range.end(), |w| complete(w, pairs, range.clone()))
}

/// Every pair of `pairs` has a summary in every window of `range`.
fn complete(w: &Windows, pairs: &[Pair], range: RangeInclusive<u64>) -> bool {
    pairs.iter().all(|p| w.gaps(p, range.clone()).is_empty())
}

/// Every pair has a summary at window `seq` or later (the topic is read up to there).
fn reached(w: &Windows, pairs: &[Pair], seq: u64) -> bool {
    pairs.iter().all(|p| !w.of(p, seq..=u64::MAX).is_empty())
}

/// Pairs whose loss is expected: their link has loss set in `spec`.
fn expected_loss(spec: LabSpec) -> impl Fn(&Pair) -> bool {
    move |p| match (node_index(&p.0), node_index(&p.1)) {
        (Some(a), Some(b)) => spec.shape(a, b).loss_pct > 0.0,
        _ => false,
    }
}

/// Problems of `pairs` in `range`: missing windows, windows without replies, lost probes (for
/// pairs not in `lossy`), duplicates.
#[derive(Default)]
struct Health {
    gaps: Vec<(Pair, Vec<u64>)>,
    silent: Vec<(Pair, Vec<u64>)>,
    lost: Vec<(Pair, u64, u64)>,
    dups: Vec<(Pair, u64, usize)>,
    sent: u64,
    windows: u64,
}

impl Health {
    fn of(
        w: &Windows,
        pairs: &[Pair],
        range: RangeInclusive<u64>,
        lossy: &dyn Fn(&Pair) -> bool,
    ) -> Health {
        if range.is_empty() {
            return Health::default();
        }
        let mut h = Health {
            windows: range.end() - range.start() + 1,
            ..Health::default()
        };
        let dups = w.duplicates();
        for p in pairs {
            let g = w.gaps(p, range.clone());
            if !g.is_empty() {
                h.gaps.push((p.clone(), g));
            }
            let silent: Vec<u64> = w
                .of(p, range.clone())
                .iter()
                .filter(|o| o.received == 0)
                .map(|o| o.seq)
                .collect();
            if !silent.is_empty() {
                h.silent.push((p.clone(), silent));
            }
            let (sent, lost) = w.loss(p, range.clone());
            h.sent += sent;
            if lost > 0 && !lossy(p) {
                h.lost.push((p.clone(), sent, lost));
            }
            let mine = dups.iter().filter(|(q, s, _)| q == p && range.contains(s));
            h.dups.extend(mine.cloned());
        }
        h
    }

    fn gap_count(&self) -> usize {
        self.gaps.iter().map(|(_, g)| g.len()).sum()
    }

    fn silent_count(&self) -> usize {
        self.silent.iter().map(|(_, g)| g.len()).sum()
    }

    fn lost_count(&self) -> u64 {
        self.lost.iter().map(|(_, _, l)| l).sum()
    }

    fn clean(&self) -> bool {
        self.gaps.is_empty()
            && self.silent.is_empty()
            && self.lost.is_empty()
            && self.dups.is_empty()
    }

    /// One line per problem, or nothing when clean.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, g) in &self.gaps {
            out.push(format!("{}: no summary in windows {}", arrow(p), ranges(g)));
        }
        for (p, g) in &self.silent {
            out.push(format!("{}: no reply in windows {}", arrow(p), ranges(g)));
        }
        for (p, s, l) in &self.lost {
            out.push(format!(
                "{}: {l} of {s} probes lost ({:.1} %)",
                arrow(p),
                pct(*s, *l)
            ));
        }
        for (p, s, n) in &self.dups {
            out.push(format!("{}: window {s} summarised {n} times", arrow(p)));
        }
        out
    }

    fn describe(&self, what: &str, range: &RangeInclusive<u64>) -> String {
        if self.clean() {
            format!(
                "{what}: one summary with replies in each of windows {range:?} ({} windows), \
                 0 of {} probes lost",
                self.windows, self.sent
            )
        } else {
            format!("{what}, windows {range:?}: {}", self.problems().join("; "))
        }
    }
}

impl Judge {
    /// Figures `gaps`, `windows_without_replies`, `lost` and `duplicates` of `h`.
    fn health_figs(&mut self, h: &Health) {
        self.fig("gaps", h.gap_count() as f64);
        self.fig("windows_without_replies", h.silent_count() as f64);
        self.fig("lost", h.lost_count() as f64);
        self.fig("duplicates", h.dups.len() as f64);
    }

    /// Exactly one summary per pair of `h` and window of `range`.
    fn summarised_once(&mut self, h: &Health, range: &RangeInclusive<u64>) {
        self.check(
            h.gaps.is_empty() && h.dups.is_empty(),
            format!(
                "exactly one summary per pair and window {range:?}: {} missing, {} duplicated",
                h.gap_count(),
                h.dups.len()
            ),
        );
    }

    /// The pairs `rest` (`what`) the fault should not touch are clean over `range`, but for
    /// `lossy` ones' loss: a finding, `others_lost`, a check.
    fn untouched(
        &mut self,
        w: &Windows,
        rest: &[Pair],
        range: RangeInclusive<u64>,
        lossy: &dyn Fn(&Pair) -> bool,
        what: &str,
    ) -> Health {
        let h = Health::of(w, rest, range.clone(), lossy);
        self.fig("others_lost", h.lost_count() as f64);
        self.note(h.describe(what, &range));
        self.check(
            h.clean(),
            format!(
                "{what}: {} missing windows, {} lost probes",
                h.gap_count(),
                h.lost_count()
            ),
        );
        h
    }

    /// Everybody but `xid` is [`untouched`](Judge::untouched) over `range` (`others_gaps`,
    /// `others_lost`), and no window is summarised twice anywhere on the topic (`duplicates`).
    fn bystanders(&mut self, w: &Windows, pairs: &[Pair], xid: &str, range: RangeInclusive<u64>) {
        let rest: Vec<Pair> = pairs
            .iter()
            .filter(|p| !involves(p, xid))
            .cloned()
            .collect();
        let what = format!("the {} pairs not involving {xid}", rest.len());
        let h = self.untouched(w, &rest, range, &|_| false, &what);
        self.fig("others_gaps", h.gap_count() as f64);
        let dups = w.duplicates();
        self.fig("duplicates", dups.len() as f64);
        self.check(
            dups.is_empty(),
            format!("{} windows summarised twice on the topic", dups.len()),
        );
    }

    /// Median p50 of `p` in each of the `phases` (before, during, after), in µs, as
    /// `before_us.<pair>`, `during_us.<pair>`, `after_us.<pair>`; `None` if a phase has none.
    fn medians(
        &mut self,
        w: &Windows,
        p: &Pair,
        phases: &[RangeInclusive<u64>; 3],
    ) -> Option<[f64; 3]> {
        let m = phases.each_ref().map(|r| w.median_p50_us(p, r.clone()));
        let [Some(before), Some(during), Some(after)] = m else {
            return None;
        };
        self.fig(format!("before_us.{}", key(p)), before);
        self.fig(format!("during_us.{}", key(p)), during);
        self.fig(format!("after_us.{}", key(p)), after);
        Some([before, during, after])
    }
}

/// Waits for [`BASELINE_WINDOWS`] consecutive windows in which every pair has one summary with
/// replies and no loss (unless its link has loss set), read from Kafka; returns them.
fn baseline(lab: &Lab, log: &mut dyn FnMut(&str)) -> Result<RangeInclusive<u64>> {
    let pairs = all_pairs(lab.spec.nodes);
    let lossy = expected_loss(lab.spec.clone());
    let mut lo = lab.window_now() + 1;
    for _ in 0..5 {
        let hi = lo + BASELINE_WINDOWS - 1;
        lab.wait_window(hi + 1);
        let (w, _) = wait_kafka(lab, Duration::from_secs(20), |w| {
            complete(w, &pairs, lo..=hi)
        })?;
        let h = Health::of(&w, &pairs, lo..=hi, &lossy);
        if h.clean() {
            log(&format!(
                "baseline: windows {lo}..={hi}, all {} pairs measured, nothing lost",
                pairs.len()
            ));
            return Ok(lo..=hi);
        }
        log(&format!(
            "baseline windows {lo}..={hi} not clean yet: {}",
            h.problems().join("; ")
        ));
        lo = hi + 1;
    }
    bail!("no clean baseline of {BASELINE_WINDOWS} windows within 5 tries")
}

/// Each of `nodes`' agents' event count now (marks for `events_since`).
fn agent_marks(lab: &Lab, nodes: impl IntoIterator<Item = usize>) -> BTreeMap<usize, usize> {
    nodes
        .into_iter()
        .map(|i| (i, lab.cluster.agent(i).mark()))
        .collect()
}

/// Waits (at most `secs` each) for every agent in `marks` but `x`'s own to print, after its
/// mark and not before `since`, a `kind` line about node `x`; when each did (`None`: not in time).
fn wait_peers(
    lab: &mut Lab,
    marks: &BTreeMap<usize, usize>,
    [kind, x]: [&str; 2],
    since: Instant,
    secs: u64,
) -> BTreeMap<usize, Option<Instant>> {
    let about = |e: &Event| e.kind() == kind && e.v["node_id"] == x && e.at >= since;
    let mut out = BTreeMap::new();
    for (&i, &mark) in marks.iter().filter(|(i, _)| node_name(**i) != x) {
        let agent = lab.cluster.agent_mut(i);
        let e = agent.wait_for_since(mark, Duration::from_secs(secs), about);
        out.insert(i, e.ok().map(|e| e.at));
    }
    out
}

/// Polls ZooKeeper until `want(members)` (at most `timeout`); when it first held.
fn wait_members(lab: &Lab, timeout: Duration, want: impl Fn(&[String]) -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if lab.zk_members().is_ok_and(|m| want(&m)) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session owning each member znode (node id → session), from ZooKeeper's `dump`.
fn znode_sessions(lab: &Lab) -> BTreeMap<String, String> {
    let prefix = format!("{}/", meshprobe_harness::agent::HEARTBEAT_PATH);
    lab.cluster
        .zk()
        .ephemerals()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(s, p)| Some((p.strip_prefix(&prefix)?.to_string(), s)))
        .collect()
}

/// What the lab looked like before the fault, to check it is back to that.
struct Prior {
    agents: Vec<usize>,
    links: BTreeMap<(usize, usize), Shape>,
}

impl Prior {
    fn of(lab: &Lab) -> Prior {
        Prior {
            agents: lab.cluster.agents.keys().copied().collect(),
            links: lab.spec.links.clone(),
        }
    }

    /// Checks the lab is as it was: the same agents running, the same link shapes, no
    /// partition, ZooKeeper and the broker up, agents and delay elements alive.
    fn check_restored(&self, lab: &mut Lab, j: &mut Judge) {
        let mut wrong = Vec::new();
        let agents: Vec<usize> = lab.cluster.agents.keys().copied().collect();
        if agents != self.agents {
            wrong.push(format!("agents on {agents:?}, were {:?}", self.agents));
        }
        if lab.spec.links != self.links {
            wrong.push("link shapes differ from before".into());
        }
        if !lab.links.partitioned().is_empty() {
            wrong.push(format!("partitioned: {:?}", lab.links.partitioned()));
        }
        if let Some(zk) = lab.cluster.zk.as_mut()
            && !zk.is_running()
        {
            wrong.push("ZooKeeper is not running".into());
        }
        if let Some(k) = lab.cluster.kafka.as_mut()
            && !k.is_running()
        {
            wrong.push("the broker is not running".into());
        }
        if let Err(e) = lab.check() {
            wrong.push(format!("{e:#}"));
        }
        j.check(
            wrong.is_empty(),
            if wrong.is_empty() {
                format!(
                    "lab restored ({} agents running, links as before, no partition, services up)",
                    agents.len()
                )
            } else {
                format!("lab restored: {}", wrong.join("; "))
            },
        );
    }
}

/// Runs `exp` on `lab` (which must have every node's agent running and no partition), putting
/// the lab back as it was before returning. `log` gets progress lines. An `Err` means the
/// experiment could not be carried out (the lab broke, data could not be read); a hypothesis
/// that does not hold is an `Ok` verdict with `holds == false`.
///
/// Figures by experiment (pairs as `node0->node2`, `x` the node acted on):
/// - kill-agent: `removed_after_s.<peer>` and `.max`, `lost_towards_x.<peer>`,
///   `lost_after_removal`, `x_windows_missing`, `x_gaps_before_kill`, `registered_after_s`,
///   `recovered_windows.<pair>` and `.max`, `recovered_s.max`, `others_gaps`, `others_lost`,
///   `duplicates`.
/// - zk-outage: `outage_windows`, `gaps`, `windows_without_replies`, `lost`, `duplicates`,
///   `members_back_s`, `agents_ready_s`, `sessions_replaced`, `peer_removed_events`,
///   `peer_readded_max_s`.
/// - broker-outage: `buffered_windows`, `buffered_records`, `delivered_after_s`, `gaps`,
///   `duplicates`, `lost`, `windows_without_replies`, `kafka_dropped`.
/// - link-delay: `added_us`, `before_us.<pair>`, `during_us.<pair>`, `after_us.<pair>`,
///   `rise_err_pct.max`, `rise_window.max`, `others_max_shift_us`, `restored_max_shift_us`.
/// - link-loss: `loss_pct.<pair>`, `sigma_pct.<pair>`, `nft_dropped`, `lost_total`,
///   `others_lost`, `lost_after_restore`.
/// - partition: `removed_after_s.<peer>` and `.max`, `lost_towards_x.<peer>`,
///   `lost_after_removal`, `others_received_from_x_during`, `x_gaps`, `x_received_during`,
///   `x_delivered_after_s`, `registered_after_s`, `recovered_windows.<pair>` and `.max`,
///   `others_gaps`, `others_lost`, `duplicates`.
pub fn run(lab: &mut Lab, exp: &Experiment, log: &mut dyn FnMut(&str)) -> Result<Verdict> {
    let n = lab.spec.nodes;
    let node_ok = |i: usize| -> Result<()> {
        ensure!(i < n, "{} is not in this {n}-node lab", node_name(i));
        Ok(())
    };
    match *exp {
        Experiment::KillAgent { node } | Experiment::Partition { node, .. } => node_ok(node)?,
        Experiment::LinkDelay { a, b, .. } | Experiment::LinkLoss { a, b, .. } => {
            node_ok(a)?;
            node_ok(b)?;
            ensure!(a != b, "a link joins two different nodes");
        }
        Experiment::BrokerOutage { .. } => ensure!(
            lab.cluster.kafka().persistent(),
            "the broker runs with {} storage, which does not survive a restart: install tansu \
             with the libsql feature (cargo xtask setup)",
            lab.cluster.kafka().storage()
        ),
        _ => {}
    }
    if let Experiment::LinkDelay { a, b, rtt } = *exp {
        let old = lab.spec.shape(a, b).rtt;
        ensure!(
            old + rtt <= MAX_RTT,
            "{}–{} has {} already; +{} is over the {} the delay element can add",
            node_name(a),
            node_name(b),
            fmt_duration(old),
            fmt_duration(rtt),
            fmt_duration(MAX_RTT)
        );
    }
    let missing: Vec<usize> = (0..n)
        .filter(|i| !lab.cluster.agents.contains_key(i))
        .collect();
    ensure!(
        missing.is_empty(),
        "chaos needs every node's agent running; not running: {:?}",
        missing.iter().map(|&i| node_name(i)).collect::<Vec<_>>()
    );
    ensure!(
        lab.links.partitioned().is_empty(),
        "chaos needs an unpartitioned lab; partitioned: {:?}",
        lab.links.partitioned()
    );
    lab.check().context("the lab before the experiment")?;
    let t = Timing::of(lab);
    let hypothesis = exp.hypothesis_for(&t);
    log(&format!("chaos {exp}: {hypothesis}"));
    let prior = Prior::of(lab);
    let base = baseline(lab, log)?;
    let c = &mut Ctx(t, base, all_pairs(n), log, Judge::default());
    match *exp {
        Experiment::KillAgent { node } => kill_agent(lab, c, node)?,
        Experiment::ZkOutage { secs } => zk_outage(lab, c, secs)?,
        Experiment::BrokerOutage { secs } => broker_outage(lab, c, secs)?,
        Experiment::LinkDelay { a, b, rtt } => link_delay(lab, c, (a, b), rtt)?,
        Experiment::LinkLoss { a, b, pct } => link_loss(lab, c, (a, b), pct)?,
        Experiment::Partition { node, secs } => partition(lab, c, node, secs)?,
    }
    let Ctx(.., j) = c;
    prior.check_restored(lab, j);
    Ok(std::mem::take(j).verdict(exp, hypothesis))
}

/// What an experiment works with: the lab's timing, the clean baseline it starts from, every
/// pair, the log and the judge.
struct Ctx<'a>(
    Timing,
    RangeInclusive<u64>,
    Vec<Pair>,
    &'a mut dyn FnMut(&str),
    Judge,
);

// ---- kill-agent and partition: a node goes away and comes back ------------------------------

/// Node x away from the mesh: gone at `at` (in the middle of window `from`) by `words[0]` ("the
/// kill"), back at `back_at` (in window `back`) by `words[1]` ("the restart"); and what
/// ZooKeeper and the peers made of it.
struct Away {
    x: usize,
    xid: String,
    others: Vec<usize>,
    words: [&'static str; 2],
    clock: Clock,
    at: Instant,
    from: u64,
    back_at: Instant,
    back: u64,
    /// When x's znode was seen gone.
    gone_at: Option<Instant>,
    /// Each peer's peer_removed x while x was away, and peer_added x once it was back.
    removed: BTreeMap<usize, Option<Instant>>,
    added: BTreeMap<usize, Option<Instant>>,
    registered_at: Option<Instant>,
}

impl Away {
    /// x's znode, and each peer's loss towards x while x was away, which stops at its
    /// peer_removed: `lost_towards_x.<peer>`, `removed_after_s.<peer>` and `.max`,
    /// `lost_after_removal`. `extra` adds to a peer's finding.
    fn judge_peers(&self, j: &mut Judge, w: &Windows, t: &Timing, extra: impl Fn(&Pair) -> String) {
        let (xid, fault) = (&self.xid, self.words[0]);
        j.note(match self.gone_at {
            Some(g) => format!(
                "{xid}'s znode was deleted {:.1} s after {fault} (session timeout {:.0} s)",
                secs(g - self.at),
                secs(t.conn_timeout)
            ),
            None => format!("{xid}'s znode was not deleted while {xid} was away"),
        });
        let (mut max, mut lost_after, mut all) = (0f64, 0, true);
        for &i in &self.others {
            let p = pair(i, self.x);
            let (sent, lost) = w.loss(&p, self.from..=self.back);
            j.fig(format!("lost_towards_x.{}", p.0), lost as f64);
            let rows: Vec<String> = w
                .of(&p, self.from..=self.back)
                .iter()
                .map(|o| format!("{} {}/{}", o.seq, o.lost, o.sent))
                .collect();
            let head = format!(
                "{}: {lost} of {sent} probes lost in windows {}..={} (≈{:.1} s of probing; \
                 lost/sent by window, a loss counting in the window its {:.0} s timeout ends: {})",
                arrow(&p),
                self.from,
                self.back,
                lost as f64 * secs(t.interval),
                secs(t.probe_timeout),
                rows.join(" ")
            );
            let Some(r) = self.removed[&i] else {
                all = false;
                j.note(format!(
                    "{head}; never reported peer_removed {xid}{}",
                    extra(&p)
                ));
                continue;
            };
            let after = secs(r - self.at);
            max = max.max(after);
            j.fig(format!("removed_after_s.{}", p.0), after);
            let rw = self.clock.window_of(r);
            let later = rw + 1..=self.back;
            let (late_sent, late) = w.loss(&p, later.clone());
            lost_after += late;
            j.note(format!(
                "{head}; removed {xid} {after:.1} s after {fault} (window {rw}); windows {}..={}: \
                 {late_sent} probes sent, {late} lost, no summary in windows {}{}",
                rw + 1,
                self.back,
                ranges(&w.gaps(&p, later)),
                extra(&p)
            ));
        }
        let bound = removal_bound(t.conn_timeout);
        j.fig("removed_after_s.max", max);
        j.fig("removal_bound_s", secs(bound));
        j.fig("lost_after_removal", lost_after as f64);
        j.check(
            all && max <= secs(bound),
            format!(
                "every peer dropped {xid} within {max:.1} s of {fault} (bound {:.0} s)",
                secs(bound)
            ),
        );
        j.check(
            lost_after == 0,
            format!("{lost_after} probes to {xid} counted lost after peer_removed"),
        );
    }

    /// x back: registered again (`registered_after_s`), added by the peers, and every pair
    /// involving it measured again within [`RECOVERY_WINDOWS`] windows of the window in which
    /// it registered (`recovered_windows.<pair>` and `.max`: windows from that one to the
    /// pair's first with replies since `back`). Returns how long after `back_at` the last of
    /// those windows ended.
    fn judge_return(&self, j: &mut Judge, w: &Windows, pairs: &[Pair]) -> f64 {
        let bound = RECOVERY_WINDOWS;
        let (xid, undo) = (&self.xid, self.words[1]);
        let since = |i: Option<Instant>| i.map(|i| secs(i - self.back_at));
        match since(self.registered_at) {
            Some(s) => {
                j.fig("registered_after_s", s);
                j.note(format!(
                    "{xid} registered in ZooKeeper again {s:.1} s after {undo}"
                ));
            }
            None => j.note(format!("{xid} did not register again after {undo}")),
        }
        let adds: Vec<String> = self
            .others
            .iter()
            .map(|&i| match since(self.added[&i]) {
                Some(s) => format!("{} {s:.1} s", node_name(i)),
                None => format!("{} never", node_name(i)),
            })
            .collect();
        j.note(format!(
            "peer_added {xid} after {undo}: {}",
            adds.join(", ")
        ));
        // Windows are counted from the one in which x registered again (a pair x already
        // measured before that, such as x's own rows after a partition, counts as +0).
        let reg_w = self.registered_at.map(|r| self.clock.window_of(r));
        let from = reg_w.unwrap_or(self.back);
        let (mut max_k, mut last, mut rec, mut never) = (None, None, Vec::new(), Vec::new());
        for p in pairs.iter().filter(|p| involves(p, xid)) {
            match w.first_received(p, self.back) {
                Some(f) => {
                    let k = f.saturating_sub(from);
                    max_k = max_k.max(Some(k));
                    last = last.max(Some(f));
                    j.fig(format!("recovered_windows.{}", key(p)), k as f64);
                    rec.push(format!("{} window {f} (+{k})", arrow(p)));
                }
                None => never.push(arrow(p)),
            }
        }
        let max_s = last.map_or(0.0, |f| self.clock.secs_to_end_of(self.back_at, f));
        let max_k = max_k.unwrap_or(0);
        j.fig("recovered_windows.max", max_k as f64);
        j.note(format!(
            "{undo} in window {}, registered again in window {}; first window with replies \
             since {undo}: {}{}",
            self.back,
            reg_w.map_or("-".into(), |r| r.to_string()),
            rec.join(", "),
            listed(&never, |s| format!("; never: {s}"))
        ));
        j.check(
            self.registered_at.is_some() && never.is_empty() && max_k <= bound,
            format!(
                "every pair involving {xid} measured again by window +{max_k} after the one in \
                 which it registered again ({max_s:.1} s after {undo}; bound +{bound})"
            ),
        );
        max_s
    }
}

fn kill_agent(lab: &mut Lab, c: &mut Ctx, x: usize) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks = agent_marks(lab, others.iter().copied());

    let kill_w = at_mid_window(lab);
    let kill_at = Instant::now();
    lab.kill9_agent(x)?;
    log(&format!("SIGKILL {xid}'s agent in window {kill_w}"));

    // Its znode goes when the session expires; then every peer drops it.
    let gone_at = wait_members(lab, t.conn_timeout * 3 + Duration::from_secs(10), |m| {
        !m.contains(&xid)
    });
    let removed = wait_peers(lab, &marks, ["peer_removed", &xid], kill_at, 10);
    let last_removed = removed.values().flatten().max().copied();
    // Down for KILL_DOWN_WINDOWS, and with one whole window after the one in which the last
    // peer dropped it (their grace period is over by its end: the mesh without it is recorded,
    // and the restart is a new peer for them, not a resumed one): the middle of the window
    // after that.
    let len = lab.spec.window.as_nanos() as u64;
    let kill_tai = clock.tai_of(kill_at);
    let target = (kill_tai + KILL_DOWN_WINDOWS * len)
        .max(last_removed.map_or(0, |r| (clock.window_of(r) + 2) * len + len / 2));
    std::thread::sleep(Duration::from_nanos(target.saturating_sub(tai_now_ns())));

    let marks = agent_marks(lab, others.iter().copied());
    let restart_w = lab.window_now();
    let restart_at = Instant::now();
    log(&format!("restarting {xid}'s agent in window {restart_w}"));
    lab.start_agent(x)?;
    let ready_s = lab
        .cluster
        .agent(x)
        .ready_at()
        .map(|r| secs(r - restart_at));
    let registered_at = wait_members(lab, Duration::from_secs(30), |m| m.contains(&xid));
    let added = wait_peers(lab, &marks, ["peer_added", &xid], restart_at, 20);

    // Read up to the window the recovery is judged by (counted from the registration).
    let end =
        registered_at.map_or(restart_w, |r| clock.window_of(r).max(restart_w)) + RECOVERY_WINDOWS;
    let w = read_after(lab, end, |w| reached(w, pairs, end))?;
    let away = Away {
        x,
        xid: xid.clone(),
        others,
        words: ["the kill", "the restart"],
        clock,
        at: kill_at,
        from: kill_w,
        back_at: restart_at,
        back: restart_w,
        gone_at,
        removed,
        added,
        registered_at,
    };
    away.judge_peers(j, &w, t, |_| String::new());

    // The node's own rows: nothing already closed was lost; the windows it was dead are missing
    // (from the kill to its first window back, or to the end).
    let mut x_missing = BTreeSet::new();
    let mut x_gaps_before = 0;
    for &i in &away.others {
        let p = pair(x, i);
        x_gaps_before += w.gaps(&p, *base.start()..=kill_w - 1).len();
        let back = w.of(&p, kill_w..=u64::MAX).first().map(|o| o.seq);
        x_missing.extend(w.gaps(&p, kill_w..=back.map_or(end, |f| f - 1)));
    }
    let x_missing: Vec<u64> = x_missing.into_iter().collect();
    j.fig("x_windows_missing", x_missing.len() as f64);
    j.fig("x_gaps_before_kill", x_gaps_before as f64);
    j.note(format!(
        "{xid}'s own rows: windows {} never reported (the window in progress at the kill was \
         not flushed; the agent was down until window {restart_w}); {x_gaps_before} windows \
         before the kill missing",
        ranges(&x_missing)
    ));
    j.check(
        x_gaps_before == 0,
        format!("{x_gaps_before} windows of {xid} closed before the kill missing from Kafka"),
    );

    // Recovery.
    j.note(format!(
        "restarted in window {restart_w}: ready line after {}",
        ready_s.map_or("?".into(), |s| format!("{s:.1} s"))
    ));
    let max_s = away.judge_return(j, &w, pairs);
    j.fig("recovered_s.max", max_s);
    j.bystanders(&w, pairs, &xid, *base.start()..=end);
    Ok(())
}

fn partition(lab: &mut Lab, c: &mut Ctx, x: usize, secs_: u64) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks = agent_marks(lab, 0..n);

    let mut gone_at: Option<Instant> = None;
    let steps = [
        format!("{xid} partitioned for {secs_} s"),
        format!("{xid} reconnected"),
    ];
    let (span, ()) = fault(
        lab,
        steps.each_ref().map(String::as_str),
        log,
        |lab| lab.partition(x, true),
        |lab, _| {
            hold(lab, Duration::from_secs(secs_), |lab| {
                if gone_at.is_none() && lab.zk_members().is_ok_and(|m| !m.contains(&xid)) {
                    gone_at = Some(Instant::now());
                }
            })
        },
        |lab| lab.partition(x, false),
    )?;
    let (p_w, p_at, h_w, h_at) = (span.on, span.on_at, span.off, span.off_at);

    // Registration first, polled alone (it is judged against a bound; a read of Kafka takes a
    // while), then the buffered rows (their time is only reported, and includes that wait).
    let x_rows: Vec<Pair> = others.iter().map(|&i| pair(x, i)).collect();
    let registered_at = wait_members(lab, KAFKA_WAIT, |m| m.contains(&xid));
    let (_, delivered_at) = wait_kafka(lab, KAFKA_WAIT, |w| complete(w, &x_rows, p_w..=h_w - 1))?;
    let added = wait_peers(lab, &marks, ["peer_added", &xid], h_at, 20);
    // Read up to the window the recovery is judged by (counted from the registration).
    let end = registered_at.map_or(h_w, |r| clock.window_of(r).max(h_w)) + RECOVERY_WINDOWS;
    let w = read_after(lab, end, |w| reached(w, pairs, end))?;
    // The peers' peer_removed (printed by now), if it came before the healing.
    let mut removed = wait_peers(lab, &marks, ["peer_removed", &xid], p_at, 0);
    removed
        .values_mut()
        .for_each(|r| *r = r.filter(|&at| at < h_at));
    let away = Away {
        x,
        xid: xid.clone(),
        others,
        words: ["the cut", "healing"],
        clock,
        at: p_at,
        from: p_w,
        back_at: h_at,
        back: h_w,
        gone_at,
        removed,
        added,
        registered_at,
    };

    // The others towards x: no reply while it was wholly cut off.
    let inside = p_w + 1..=h_w - 1;
    let replies = |p: &Pair| -> u64 { w.of(p, inside.clone()).iter().map(|o| o.received).sum() };
    away.judge_peers(j, &w, t, |p| {
        format!("; {} replies in windows {inside:?}", replies(p),)
    });
    let others_received: u64 = away.others.iter().map(|&i| replies(&pair(i, x))).sum();
    j.fig("others_received_from_x_during", others_received as f64);
    j.check(
        others_received == 0,
        format!(
            "the others got {others_received} replies from {xid} in windows {inside:?}, while it \
             was cut off",
        ),
    );

    // x's own rows.
    let x_events: Vec<String> = lab
        .cluster
        .agent(x)
        .events_since(marks[&x])
        .iter()
        .filter(|e| e.kind().starts_with("peer_"))
        .map(|e| {
            format!(
                "{} {} at +{:.1} s",
                e.kind(),
                e.v["node_id"].as_str().unwrap_or("?"),
                secs(e.at.saturating_duration_since(p_at))
            )
        })
        .collect();
    let mut x_gaps = 0;
    let mut x_received = 0;
    let mut x_rows_text = Vec::new();
    for p in &x_rows {
        let g = w.gaps(p, *base.start()..=end);
        x_gaps += g.len();
        let got = replies(p);
        x_received += got;
        let (sent, lost) = w.loss(p, inside.clone());
        x_rows_text.push(format!(
            "{} sent {sent}, lost {lost}, {got} replies, missing windows {}",
            arrow(p),
            ranges(&g)
        ));
    }
    j.fig("x_gaps", x_gaps as f64);
    j.fig("x_received_during", x_received as f64);
    let delivered_s = delivered_at.map(|d| secs(d - h_at));
    j.fig("x_delivered_after_s", delivered_s.unwrap_or(f64::NAN));
    j.note(format!(
        "{xid}'s rows in windows {inside:?} (wholly cut off): {}; its summaries of windows \
         {p_w}..={} were on the topic {} after healing; its own membership events: {}",
        x_rows_text.join("; "),
        h_w - 1,
        delivered_s.map_or("never".into(), |s| format!("{s:.1} s")),
        if x_events.is_empty() {
            "none".into()
        } else {
            x_events.join(", ")
        }
    ));
    j.check(
        x_gaps == 0 && delivered_at.is_some(),
        format!(
            "{xid}'s rows complete across the partition (windows {}..={end}): {x_gaps} missing",
            base.start()
        ),
    );
    j.check(
        x_received == 0,
        format!("{xid} got {x_received} replies while cut off"),
    );

    // Recovery: registered again within the bound (ZooKeeper was out of x's reach as long as
    // the partition lasted), then measured.
    let bound = reregister_bound(t.conn_timeout);
    let reg_s = registered_at.map(|r| secs(r.saturating_duration_since(h_at)));
    j.fig("reregister_bound_s", secs(bound));
    j.check(
        reg_s.is_some_and(|s| s <= secs(bound)),
        format!(
            "{xid} registered again {} after healing (bound {:.0} s, BACKOFF_CAP + CONN_TIMEOUT)",
            reg_s.map_or("never".into(), |s| format!("{s:.1} s")),
            secs(bound)
        ),
    );
    away.judge_return(j, &w, pairs);
    j.bystanders(&w, pairs, &xid, *base.start()..=end);
    Ok(())
}

// ---- zk-outage -----------------------------------------------------------------------------

fn zk_outage(lab: &mut Lab, c: &mut Ctx, secs_: u64) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let marks = agent_marks(lab, 0..n);
    let mut sessions_before = BTreeMap::new();
    let stop = format!("ZooKeeper stopped for {secs_} s");
    let (span, ()) = fault(
        lab,
        [&stop, "ZooKeeper started again"],
        log,
        |lab| {
            sessions_before = znode_sessions(lab);
            lab.cluster.zk_mut().stop();
            Ok(())
        },
        |lab, _| hold(lab, Duration::from_secs(secs_), |_| {}),
        |lab| {
            let r = lab.cluster.zk_mut().start_again();
            r.context("starting ZooKeeper again")
        },
    )?;
    let (stop_w, end_w, back_at) = (span.on, span.off, span.off_at);

    // Per agent: when its /readyz says registered again. Membership: complete, and staying
    // complete for a session timeout (a session that is not resumed in time expires, and its
    // znode goes). Then whose session was resumed and who registered in a new one.
    let ids: Vec<String> = (0..n).map(node_name).collect();
    let settle = t.conn_timeout + Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut complete_since: Option<Instant> = None;
    let mut ready: BTreeMap<usize, Instant> = BTreeMap::new();
    loop {
        let now = Instant::now();
        match lab.zk_members() {
            Ok(m) if ids.iter().all(|i| m.contains(i)) => {
                complete_since.get_or_insert(now);
            }
            _ => complete_since = None,
        }
        for i in 0..n {
            if !ready.contains_key(&i)
                && lab
                    .cluster
                    .agent(i)
                    .http_get("/readyz")
                    .is_ok_and(|(s, _)| s == 200)
            {
                ready.insert(i, Instant::now());
            }
        }
        let settled = complete_since.is_some_and(|c| now - c >= settle);
        if (settled && ready.len() == n) || now >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sessions_after = znode_sessions(lab);
    let mut replaced = 0;
    let mut per_node = Vec::new();
    let mut ready_max: f64 = 0.0;
    for (i, id) in ids.iter().enumerate() {
        let r = ready
            .get(&i)
            .map(|r| secs(r.saturating_duration_since(back_at)));
        ready_max = ready_max.max(r.unwrap_or(f64::INFINITY));
        let how = match (sessions_before.get(id), sessions_after.get(id)) {
            (Some(b), Some(a)) if a == b => "session resumed".to_string(),
            (_, Some(_)) => {
                replaced += 1;
                "session expired, registered in a new one".to_string()
            }
            (_, None) => "not registered".to_string(),
        };
        per_node.push(format!(
            "{id} {how}, /readyz 200 {}",
            r.map_or("never".into(), |r| format!("at +{r:.1} s"))
        ));
    }
    let members_back = complete_since.map(|c| secs(c.saturating_duration_since(back_at)));
    let back = members_back.unwrap_or(f64::INFINITY).max(ready_max);
    j.fig("members_back_s", members_back.unwrap_or(f64::NAN));
    j.fig("agents_ready_s", ready_max);
    j.fig("sessions_replaced", replaced as f64);
    j.note(format!(
        "after ZooKeeper's return ({} s session timeout): {}; ZooKeeper listed all {n} znodes {}",
        secs(t.conn_timeout),
        per_node.join("; "),
        members_back.map_or("never for good".into(), |s| format!(
            "in every poll from +{s:.1} s on (every 0.2 s; a znode replaced between two polls \
             is not seen)"
        )),
    ));
    let bound = reregister_bound(t.conn_timeout);
    j.fig("reregister_bound_s", secs(bound));
    j.check(
        back <= secs(bound),
        format!(
            "all agents registered again {back:.1} s after ZooKeeper's return (bound {:.0} s, \
             BACKOFF_CAP + CONN_TIMEOUT)",
            secs(bound)
        ),
    );

    // What the agents made of it: a peer whose znode was replaced is removed and added back
    // (within the grace period the same probe session goes on).
    let mut events = Vec::new();
    let mut removed_events = 0;
    let mut max_readd: f64 = 0.0;
    let mut not_readded = Vec::new();
    for i in 0..n {
        let evs = lab.cluster.agent(i).events_since(marks[&i]);
        for (k, e) in evs.iter().enumerate() {
            if e.kind() != "peer_removed" {
                continue;
            }
            removed_events += 1;
            let y = e.v["node_id"].as_str().unwrap_or("?");
            match evs[k + 1..]
                .iter()
                .find(|f| f.kind() == "peer_added" && f.v["node_id"] == y)
            {
                Some(f) => {
                    let gap = secs(f.at - e.at);
                    max_readd = max_readd.max(gap);
                    events.push(format!(
                        "{} dropped {y} at +{:.1} s and added it back {:.0} ms later",
                        node_name(i),
                        secs(e.at.saturating_duration_since(back_at)),
                        gap * 1000.0
                    ));
                }
                None => not_readded.push(format!("{}: {y}", node_name(i))),
            }
        }
    }
    j.fig("peer_removed_events", removed_events as f64);
    j.fig("peer_readded_max_s", max_readd);
    j.note(if events.is_empty() {
        "no agent reported peer_removed during or after the outage".to_string()
    } else {
        format!(
            "membership events (times from ZooKeeper's return): {}",
            events.join(", ")
        )
    });
    j.check(
        not_readded.is_empty(),
        format!(
            "every peer dropped after the return was added back{}",
            listed(&not_readded, |s| format!(" (not: {s})"))
        ),
    );

    let last = end_w + 2;
    let range = *base.start()..=last;
    let w = read_complete(lab, pairs, range.clone())?;
    j.fig("outage_windows", (end_w - stop_w + 1) as f64);
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    j.health_figs(&h);
    j.note(format!(
        "outage windows {stop_w}..={end_w} (stopped in {stop_w}, back in {end_w})"
    ));
    j.note(h.describe(&format!("all {} pairs", pairs.len()), &range));
    j.check(
        h.gaps.is_empty() && h.silent.is_empty(),
        format!(
            "probing never paused: every pair has replies in each of windows {}..={last} \
             ({} missing, {} without replies)",
            base.start(),
            h.gap_count(),
            h.silent_count()
        ),
    );
    j.check(h.lost.is_empty(), format!("{} probes lost", h.lost_count()));
    j.check(
        h.dups.is_empty(),
        format!("{} windows summarised twice", h.dups.len()),
    );
    Ok(())
}

// ---- broker-outage -------------------------------------------------------------------------

fn broker_outage(lab: &mut Lab, c: &mut Ctx, secs_: u64) -> Result<()> {
    let Ctx(_, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    // Each agent's metric `name` (`None` where it cannot be read).
    let metric = |lab: &Lab, name: &str| -> Vec<Option<f64>> {
        (0..n)
            .map(|i| lab.cluster.agent(i).metric(name).ok().flatten())
            .collect()
    };
    let stop = format!("broker stopped for {secs_} s");
    let (span, buffered) = fault(
        lab,
        [&stop, "broker started again"],
        log,
        |lab| {
            lab.cluster.kafka_mut().stop();
            Ok(())
        },
        |lab, _| hold(lab, Duration::from_secs(secs_), |_| {}),
        |lab| {
            // What the agents hold just before the broker returns (unknown if one cannot say).
            let buffered: Option<f64> = metric(lab, "meshprobe_kafka_buffered").into_iter().sum();
            let r = lab.cluster.kafka_mut().start_again();
            r.context("starting the broker again").map(|()| buffered)
        },
    )?;
    let (stop_w, end_w, back_at) = (span.on, span.off, span.off_at);

    // Windows closed while the broker was away: stop_w ..= end_w - 1.
    let buffered_windows = end_w - stop_w;
    j.fig("buffered_windows", buffered_windows as f64);
    if let Some(b) = buffered {
        j.fig("buffered_records", b);
    }
    let (_, delivered) = wait_kafka(lab, KAFKA_WAIT, |w| {
        complete(w, pairs, *base.start()..=end_w - 1)
    })?;
    let delivered_s = delivered.map(|d| secs(d - back_at));
    j.fig("delivered_after_s", delivered_s.unwrap_or(f64::NAN));
    j.note(format!(
        "broker down from window {stop_w} to window {end_w}: windows {stop_w}..={} \
         ({buffered_windows} windows × {} pairs = {} summaries) closed meanwhile; the agents \
         held {} records just before the restart; all of them were on the topic {} after \
         the restart",
        end_w - 1,
        pairs.len(),
        buffered_windows * pairs.len() as u64,
        buffered.map_or("an unknown number of".into(), |b| format!("{b:.0}")),
        delivered_s.map_or(format!("not within {KAFKA_WAIT:?}"), |s| format!(
            "{s:.1} s"
        ))
    ));

    let last = end_w + 2;
    let range = *base.start()..=last;
    let w = read_complete(lab, pairs, range.clone())?;
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    j.health_figs(&h);
    let dropped: f64 = metric(lab, "meshprobe_kafka_dropped")
        .into_iter()
        .flatten()
        .sum();
    j.fig("kafka_dropped", dropped);
    j.note(h.describe(&format!("all {} pairs on the topic", pairs.len()), &range));
    j.check(
        delivered.is_some(),
        format!(
            "the buffered summaries reached Kafka {} after the restart",
            delivered_s.map_or("never".into(), |s| format!("{s:.1} s"))
        ),
    );
    j.summarised_once(&h, &range);
    j.check(
        h.silent.is_empty() && h.lost.is_empty(),
        format!(
            "probing unaffected: {} windows without replies, {} probes lost",
            h.silent_count(),
            h.lost_count()
        ),
    );
    j.check(
        dropped == 0.0,
        format!("{dropped:.0} records dropped by the producers"),
    );
    Ok(())
}

// ---- link-delay ----------------------------------------------------------------------------

/// Each window's p50 of `p` in `r` (ns), one run per window: a summary carries no spread of
/// its own, so the noise a [`Shift`] of these sees is the drift between windows.
fn window_runs(w: &Windows, p: &Pair, r: RangeInclusive<u64>) -> Vec<Vec<i64>> {
    w.of(p, r)
        .iter()
        .filter_map(|o| o.p50_ns)
        .map(|v| vec![v])
        .collect()
}

/// `|shift| − tolerance` in µs: above 0, the shift is outside the pair's own noise.
fn excess_us(s: &Shift) -> f64 {
    (s.added.abs() - s.tolerance()) as f64 / 1e3
}

fn link_delay(lab: &mut Lab, c: &mut Ctx, (a, b): (usize, usize), add: Duration) -> Result<()> {
    let Ctx(_, base, pairs, log, j) = c;
    let old = lab.spec.shape(a, b);
    let new = Shape {
        rtt: old.rtt + add,
        ..old
    };
    let what = format!(
        "{} → {} of added RTT",
        fmt_duration(old.rtt),
        fmt_duration(new.rtt)
    );
    let (s, ()) = change_link(lab, log, (a, b), [old, new], DELAY_WINDOWS, &what, |_| ())?;
    let (c0, c1, r0, r1) = (s.on, s.on1, s.off, s.off1);
    let phases = [base.clone(), c1 + 1..=c1 + DELAY_WINDOWS, r1 + 1..=r1 + 2];
    let range = *base.start()..=r1 + 2;
    let w = read_complete(lab, pairs, range.clone())?;

    let add_ns = add.as_nanos() as i64;
    let add_us = add_ns as f64 / 1e3;
    j.fig("added_us", add_us);
    // Median shift of `p` from the baseline to phase `k` (1 during, 2 after), against the noise
    // of those windows themselves.
    let shift = |p: &Pair, k: usize| -> Option<Shift> {
        let runs = |r: &RangeInclusive<u64>| window_runs(&w, p, r.clone());
        Shift::of(&runs(&phases[0]), &runs(&phases[k]))
    };
    // What a defect would do to a pair that should not move: the restored pair keeping the
    // added RTT; another pair getting a hold meant for this one, half the RTT (one way).
    let (if_kept, if_leaked) = (add_ns, add_ns / 2);
    let (pa, pb) = (pair(a, b), pair(b, a));
    let mut max_err: f64 = 0.0;
    let mut max_rise_w: f64 = 0.0;
    let mut max_restored: f64 = 0.0;
    let mut restored_excess = f64::NEG_INFINITY;
    let mut restored_bad = Vec::new();
    // The first window of `p` in `r` whose p50 (µs) passes `test`.
    let first = |p: &Pair, r: RangeInclusive<u64>, test: &dyn Fn(f64) -> bool| {
        w.of(p, r)
            .iter()
            .find(|o| o.p50_ns.is_some_and(|v| test(v as f64 / 1000.0)))
            .map(|o| o.seq)
    };
    for p in [&pa, &pb] {
        let (Some([before, dur, aft]), Some(rise), Some(back)) =
            (j.medians(&w, p, &phases), shift(p, 1), shift(p, 2))
        else {
            j.note(format!("{}: no p50 in some phase", arrow(p)));
            j.check(false, format!("{} measured in every phase", arrow(p)));
            continue;
        };
        let err = (rise.added - add_ns).abs() as f64 / add_ns as f64 * 100.0;
        max_err = max_err.max(err);
        // Risen: p50 shows at least half of the added RTT.
        let rose = first(p, c0..=*phases[1].end(), &|us| us - before >= add_us / 2.0);
        let fell = first(p, r0..=*phases[2].end(), &|us| us - before < add_us / 2.0);
        max_rise_w = max_rise_w.max(rose.map_or(f64::INFINITY, |f| f.saturating_sub(c0) as f64));
        max_restored = max_restored.max((aft - before).abs());
        restored_excess = restored_excess.max(excess_us(&back));
        j.fig(format!("rise_us.{}", key(p)), rise.added as f64 / 1e3);
        j.fig(
            format!("rise_tolerance_us.{}", key(p)),
            rise.tolerance() as f64 / 1e3,
        );
        j.note(format!(
            "{}: median p50 {before:.0} µs before, {dur:.0} µs during, {aft:.0} µs after; \
             during: {} ({err:.1} % off the {add_us:.0} µs added); after: {}; rose in window {} \
             (change in window {c0}), fell back in window {}",
            arrow(p),
            rise.report(),
            back.report(),
            rose.map_or("never".into(), |f| f.to_string()),
            fell.map_or("never".into(), |f| f.to_string())
        ));
        let timely = rose.is_some_and(|f| f <= c1 + 1);
        match rise.check(add_ns, &arrow(p)) {
            Ok(()) => j.check(
                timely,
                format!(
                    "{} rose by the added {} (measured +{:.0} µs, tolerance ±{:.0} µs) from \
                     window +{} after the change",
                    arrow(p),
                    fmt_duration(add),
                    rise.added as f64 / 1e3,
                    rise.tolerance() as f64 / 1e3,
                    rose.map_or("never".into(), |f| (f - c0).to_string())
                ),
            ),
            Err(e) => j.check(false, format!("{e:#}")),
        };
        if let Err(e) = back.check_unchanged(if_kept, &format!("{} after the restore", arrow(p))) {
            restored_bad.push(format!("{e:#}"));
        }
    }
    j.fig("rise_err_pct.max", max_err);
    j.fig("rise_window.max", max_rise_w);

    // Every other pair, during and after, against its own noise.
    let mut max_shift: f64 = 0.0;
    let mut max_after: f64 = 0.0;
    let mut others_excess = f64::NEG_INFINITY;
    let mut others_bad = Vec::new();
    let mut lines = Vec::new();
    for p in pairs.iter().filter(|p| **p != pa && **p != pb) {
        let (Some([before, dur, aft]), Some(during), Some(after)) =
            (j.medians(&w, p, &phases), shift(p, 1), shift(p, 2))
        else {
            others_bad.push(format!("{}: no p50 in some phase", arrow(p)));
            continue;
        };
        max_shift = max_shift.max((dur - before).abs());
        max_after = max_after.max((aft - before).abs());
        others_excess = others_excess.max(excess_us(&during));
        restored_excess = restored_excess.max(excess_us(&after));
        lines.push(format!(
            "{} {before:.0}/{dur:.0}/{aft:.0} (±{:.0}/±{:.0})",
            arrow(p),
            during.tolerance() as f64 / 1e3,
            after.tolerance() as f64 / 1e3
        ));
        if let Err(e) = during.check_unchanged(if_leaked, &format!("{} during", arrow(p))) {
            others_bad.push(format!("{e:#}"));
        }
        if let Err(e) = after.check_unchanged(if_leaked, &format!("{} after the restore", arrow(p)))
        {
            restored_bad.push(format!("{e:#}"));
        }
    }
    j.note(format!(
        "other pairs, median p50 µs before/during/after (tolerance during/after, {NOISE_K}× the \
         spread of their window p50s): {}",
        lines.join(", ")
    ));
    j.fig("others_max_shift_us", max_shift);
    j.fig("restored_max_shift_us", max_after.max(max_restored));
    j.fig("others_max_excess_us", others_excess);
    j.fig("restored_max_excess_us", restored_excess);
    j.check(
        others_bad.is_empty(),
        if others_bad.is_empty() {
            format!(
                "the {} other pairs stayed within their noise during the change (largest move \
                 {max_shift:.0} µs)",
                pairs.len() - 2
            )
        } else {
            others_bad.join("; ")
        },
    );
    j.check(
        restored_bad.is_empty(),
        if restored_bad.is_empty() {
            format!(
                "all pairs back within their noise after the restore (largest move \
                 {:.0} µs)",
                max_after.max(max_restored)
            )
        } else {
            restored_bad.join("; ")
        },
    );
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    if !h.clean() {
        j.note(h.describe(&format!("all {} pairs", pairs.len()), &range));
    }
    j.summarised_once(&h, &range);
    Ok(())
}

// ---- link-loss -----------------------------------------------------------------------------

fn link_loss(lab: &mut Lab, c: &mut Ctx, (a, b): (usize, usize), loss: f64) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let (lo, hi) = (a.min(b), a.max(b));
    let old = lab.spec.shape(lo, hi);
    let new = Shape {
        loss_pct: loss,
        ..old
    };
    let lossy = expected_loss(lab.spec.clone());
    let what = format!("dropping {loss} % {}→{}", node_name(lo), node_name(hi));
    // The rule stops dropping before its counter is read: the count is final.
    let read = |lab: &Lab| lab.links.stop_loss(lab.star(), lo, hi);
    let (s, dropped) = change_link(lab, log, (lo, hi), [old, new], LOSS_WINDOWS, &what, read)?;
    let (c0, c1, r0, r1) = (s.on, s.on1, s.off, s.off1);
    let dropped = dropped?.context("the nft loss rule has no counter")?;
    let last = r1 + 2;
    let w = read_complete(lab, pairs, *base.start()..=last)?;

    let full = c1 + 1..=r0 - 1;
    let p = loss / 100.0;
    let mut in_bound = true;
    let (req, rep) = (pair(lo, hi), pair(hi, lo));
    for (pr, crossing) in [(&req, "its requests"), (&rep, "its replies")] {
        let (sent, lost) = w.loss(pr, full.clone());
        let obs = pct(sent, lost);
        let sigma = if sent == 0 {
            f64::INFINITY
        } else {
            (p * (1.0 - p) / sent as f64).sqrt() * 100.0
        };
        in_bound &= sent > 0 && (obs - loss).abs() <= LOSS_SIGMAS * sigma;
        j.fig(format!("loss_pct.{}", key(pr)), obs);
        j.fig(format!("sigma_pct.{}", key(pr)), sigma);
        j.note(format!(
            "{}: {lost} of {sent} probes lost in windows {full:?} = {obs:.1} % (set {loss} %, \
             σ {sigma:.1} %, {:+.1} σ); {crossing} cross the rule",
            arrow(pr),
            (obs - loss) / sigma,
        ));
    }
    j.check(
        in_bound,
        format!("both directions lost {loss} % within {LOSS_SIGMAS:.0} σ over windows {full:?}"),
    );
    // Every packet the rule dropped is one lost probe (a dropped request or a dropped reply).
    let lost_both = |r: RangeInclusive<u64>| w.loss(&req, r.clone()).1 + w.loss(&rep, r).1;
    let around = c0..=r1 + 1;
    let lost_total = lost_both(around.clone());
    j.fig("nft_dropped", dropped as f64);
    j.fig("lost_total", lost_total as f64);
    j.note(format!(
        "the nft rule dropped {dropped} packets; the two directions counted {lost_total} lost \
         probes in windows {around:?} (probes time out after {:.0} s)",
        secs(t.probe_timeout)
    ));
    if old.loss_pct == 0.0 {
        // Only probe traffic is UDP between nodes, each probe crosses the rule once each way
        // (a dropped request or a dropped reply), and the count was read after the rule
        // stopped: one lost probe per dropped packet, exactly.
        j.check(
            lost_total == dropped,
            format!("every dropped packet is a lost probe: {lost_total} lost vs {dropped} dropped"),
        );
        let after_restore = lost_both(r1 + 2..=last);
        j.fig("lost_after_restore", after_restore as f64);
        j.check(
            after_restore == 0,
            format!(
                "{after_restore} probes lost in window(s) {}, a window after the restore",
                ranges(&(r1 + 2..=last).collect::<Vec<_>>())
            ),
        );
    }
    let rest: Vec<Pair> = pairs
        .iter()
        .filter(|p| **p != req && **p != rep)
        .cloned()
        .collect();
    let what = format!("the {} other pairs", rest.len());
    j.untouched(&w, &rest, *base.start()..=last, &lossy, &what);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_parse_with_defaults() {
        use Experiment::*;
        let delay = |a, b, us| LinkDelay {
            a,
            b,
            rtt: Duration::from_micros(us),
        };
        let loss = |a, b, pct| LinkLoss { a, b, pct };
        for (line, e) in [
            ("kill-agent node2", KillAgent { node: 2 }),
            ("zk-outage", ZkOutage { secs: 20 }),
            ("broker-outage", BrokerOutage { secs: 30 }),
            ("broker-outage 45s", BrokerOutage { secs: 45 }),
            ("link-delay node0 2", delay(0, 2, 2000)),
            ("link-delay 1 3 500us", delay(1, 3, 500)),
            ("link-loss node3 node1", loss(3, 1, 20.0)),
            ("partition node1", Partition { node: 1, secs: 15 }),
            ("partition 1 8", Partition { node: 1, secs: 8 }),
        ] {
            assert_eq!(line.parse::<Experiment>().unwrap(), e, "{line}");
        }
        // The other entry points.
        let kill3 = Experiment::parse("kill-agent", &["3"]).unwrap();
        assert_eq!(kill3, KillAgent { node: 3 });
        let zk = Experiment::parse::<&str>("zk-outage", &[]).unwrap();
        assert_eq!(zk, ZkOutage { secs: 20 });
        let e = Experiment::from_args(&["link-loss", "0", "1", "5%"]).unwrap();
        assert_eq!(e, loss(0, 1, 5.0));
        for e in NAMES {
            assert!(USAGE.contains(e));
        }
    }

    #[test]
    fn bad_command_lines_say_why() {
        let err = |s: &str| format!("{:#}", s.parse::<Experiment>().unwrap_err());
        assert!(err("kill-agent").contains("usage: kill-agent NODE"));
        assert!(err("kill-agent web1").contains("node2 or 2"));
        assert!(err("link-delay 0 0").contains("same node"));
        assert!(err("link-delay 0 1 1s").contains("at most 200ms"));
        assert!(err("link-delay 0 1 2").contains("2ms"));
        assert!(err("link-loss 0 1 150").contains("between 0% and 100%"));
        assert!(err("zk-outage 0").contains("between 1 and 600"));
        assert!(err("zk-outage 1.5s").contains("whole seconds"));
        assert!(err("partition 1 2 3").contains("3 argument"));
        assert!(err("reboot").contains("unknown chaos experiment"));
        assert!(format!("{:#}", Experiment::from_args::<&str>(&[]).unwrap_err()).contains("which"));
    }

    #[test]
    fn display_round_trips_and_hypotheses_have_numbers() {
        for s in [
            "kill-agent node2",
            "zk-outage 20s",
            "broker-outage 30s",
            "link-delay node0 node2 +2ms",
            "link-loss node0 node2 20%",
            "partition node1 15s",
        ] {
            let e: Experiment = s.replace('+', "").parse().unwrap();
            assert_eq!(e.to_string(), s);
            let h = e.hypothesis();
            assert!(h.chars().any(|c| c.is_ascii_digit()), "{h}");
        }
        assert!(
            Experiment::KillAgent { node: 2 }
                .hypothesis()
                .contains("CONN_TIMEOUT 4 s")
        );
        assert!(
            Experiment::LinkDelay {
                a: 0,
                b: 2,
                rtt: Duration::from_millis(2)
            }
            .hypothesis()
            .contains("by 2ms from the first full window")
        );
    }

    #[test]
    fn verdict_prints_findings_and_reason() {
        let mut j = Judge::default();
        j.note("node0→node1: 3 lost");
        j.fig("lost", 3.0);
        j.check(true, "a fine thing");
        j.check(false, "zero loss (3 lost)");
        let v = j.verdict(&Experiment::ZkOutage { secs: 20 }, "h".into());
        assert!(!v.holds);
        let s = v.to_string();
        assert!(s.contains("hypothesis: h"), "{s}");
        assert!(s.contains("  - node0→node1: 3 lost"), "{s}");
        assert!(s.contains("lost=3"), "{s}");
        assert!(
            s.ends_with("VERDICT: does not hold — NOT zero loss (3 lost)"),
            "{s}"
        );
        assert_eq!(v.figure("lost"), 3.0);
        assert!(v.figure("nothing").is_nan());
        let mut j = Judge::default();
        j.check(true, "a");
        j.check(true, "b");
        let v = j.verdict(&Experiment::ZkOutage { secs: 20 }, "h".into());
        assert!(v.holds);
        assert!(v.to_string().ends_with("VERDICT: holds — a; b"));
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), "3..=5, 9, 11..=12");
        assert_eq!(ranges(&[]), "none");
    }
}
