//! Chaos experiments on a [`MeshLab`]: each states a hypothesis with numbers, waits for a clean
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

use super::MeshLab;
use super::data::{Pair, Windows, pct};
use super::spec::{MAX_RTT, Shape, fmt_duration, node_name, parse_loss};
use crate::agent::{Event, tai_now_ns};

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
/// this many windows after the restart / the healing. Agent start (the ready line, about one
/// window on this machine), registration, discovery by the others (within 2 s, see
/// agent_join_leave) and the first probe (within 200 ms) fit in two windows; the third is the
/// one that reports it.
pub const RECOVERY_WINDOWS: u64 = 3;
/// partition: the node has to notice ZooKeeper is back (the client's reconnect backoff is at
/// most 5 s, BACKOFF_CAP in discovery/zk.rs), find its session expired and register again
/// before the others can add it: that is up to 3 windows more than [`RECOVERY_WINDOWS`] needs.
pub const PARTITION_RECOVERY_WINDOWS: u64 = 5;
/// zk-outage: every agent is registered again this long after ZooKeeper serves again: the
/// reconnect backoff is at most 5 s, and a session that expired meanwhile is replaced at once.
pub const ZK_REREGISTER_BOUND: Duration = Duration::from_secs(10);
/// Peers notice a dead or cut-off node this long after its ZooKeeper session timeout: the
/// server checks expiry every tick (500 ms in the lab), then the watch fires and the agent acts.
pub const REMOVAL_SLACK: Duration = Duration::from_secs(2);
/// link-delay: windows the added delay is held for.
pub const DELAY_WINDOWS: u64 = 4;
/// link-delay: the affected pairs' median p50 rises by the added RTT within this fraction. The
/// delay element holds each packet to within a few µs, and a pair's per-window p50 moves by a
/// few µs between windows; 15 % (300 µs of 2 ms) leaves room for a busy 2-core machine.
pub const DELAY_TOLERANCE: f64 = 0.15;
/// link-delay: every other pair's median p50 stays within this many µs (its own window-to-window
/// spread is about 5 µs; a delay element restarted for the change briefly holds nothing).
pub const OTHER_SHIFT_US: f64 = 50.0;
/// link-loss: windows the loss is held for (about 100 probes per direction at 10/s).
pub const LOSS_WINDOWS: u64 = 5;
/// link-loss: observed loss is within this many binomial standard deviations of the setting
/// (a false alarm once in about 15 000 runs).
pub const LOSS_SIGMAS: f64 = 4.0;
/// link-loss: lost probes of the pair minus packets the nft rule dropped, at most: the counter
/// is read just before the rule goes, a probe or two may still be dropped in between.
pub const LOSS_COUNTER_SLACK: u64 = 3;
/// Longest time a chaos experiment waits for data to reach Kafka.
pub const KAFKA_WAIT: Duration = Duration::from_secs(90);

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
        let arity = |min: usize, max: usize| -> Result<()> {
            if args.len() < min || args.len() > max {
                bail!(
                    "{name}: {} argument(s) given; usage: {}",
                    args.len(),
                    usage_of(name)
                );
            }
            Ok(())
        };
        let e = match name {
            "kill-agent" => {
                arity(1, 1)?;
                Experiment::KillAgent {
                    node: parse_node(args[0])?,
                }
            }
            "zk-outage" => {
                arity(0, 1)?;
                Experiment::ZkOutage {
                    secs: args
                        .first()
                        .map(|s| parse_secs(s))
                        .transpose()?
                        .unwrap_or(20),
                }
            }
            "broker-outage" => {
                arity(0, 1)?;
                Experiment::BrokerOutage {
                    secs: args
                        .first()
                        .map(|s| parse_secs(s))
                        .transpose()?
                        .unwrap_or(30),
                }
            }
            "link-delay" => {
                arity(2, 3)?;
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
                Experiment::LinkDelay {
                    a: parse_node(args[0])?,
                    b: parse_node(args[1])?,
                    rtt,
                }
            }
            "link-loss" => {
                arity(2, 3)?;
                let pct = match args.get(2) {
                    Some(s) => parse_loss(s)?,
                    None => 20.0,
                };
                if pct <= 0.0 {
                    bail!("link-loss PCT must be more than 0%");
                }
                Experiment::LinkLoss {
                    a: parse_node(args[0])?,
                    b: parse_node(args[1])?,
                    pct,
                }
            }
            "partition" => {
                arity(1, 2)?;
                Experiment::Partition {
                    node: parse_node(args[0])?,
                    secs: args
                        .get(1)
                        .map(|s| parse_secs(s))
                        .transpose()?
                        .unwrap_or(15),
                }
            }
            other => bail!("unknown chaos experiment {other:?}; one of: {USAGE}"),
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
            window: crate::agent::TEST_WINDOW_DURATION,
            interval: Duration::from_millis(100),
            conn_timeout: Duration::from_secs(crate::agent::TEST_CONN_TIMEOUT_S),
            probe_timeout: Duration::from_secs(1),
        })
    }

    fn hypothesis_for(&self, t: &Timing) -> String {
        let w = t.window.as_secs_f64();
        let conn = t.conn_timeout.as_secs_f64();
        let removal = (t.conn_timeout + REMOVAL_SLACK).as_secs_f64();
        match *self {
            Experiment::KillAgent { node } => {
                let x = node_name(node);
                format!(
                    "After SIGKILL of {x}'s agent the other agents count loss towards {x} only \
                     until its ZooKeeper session expires (CONN_TIMEOUT {conn:.0} s: peer_removed \
                     within {removal:.0} s, no loss counted after it), and pairs not involving {x} \
                     miss no window and lose no probe. Restarted once the peers had a whole window \
                     without it (at least {KILL_DOWN_WINDOWS} windows), {x} registers again and every pair involving it is measured again within \
                     {RECOVERY_WINDOWS} windows ({:.0} s).",
                    RECOVERY_WINDOWS as f64 * w
                )
            }
            Experiment::ZkOutage { secs } => format!(
                "With ZooKeeper down for {secs} s the agents keep probing the peers they know: \
                 every pair has exactly one summary with replies and no loss in every window \
                 of the outage ({:.0} windows), and all agents are registered again within \
                 {:.0} s of ZooKeeper's return.",
                secs as f64 / w,
                ZK_REREGISTER_BOUND.as_secs_f64()
            ),
            Experiment::BrokerOutage { secs } => format!(
                "With the broker down for {secs} s the agents keep probing and buffer their \
                 summaries (about {:.0} windows per pair); once the broker is back they \
                 deliver them, so every pair has exactly one summary in every window from \
                 before the outage to after it: no gap, no duplicate, no loss.",
                secs as f64 / w
            ),
            Experiment::LinkDelay { a, b, rtt } => {
                let (a, b) = (node_name(a), node_name(b));
                format!(
                    "Adding {} of RTT to {a}–{b} raises the median network-RTT p50 of {a}→{b} \
                     and {b}→{a} by {} ±{:.0} % from the first full window after the change, \
                     while every other pair's median stays within ±{OTHER_SHIFT_US:.0} µs; \
                     after the restore both are back within ±{OTHER_SHIFT_US:.0} µs.",
                    fmt_duration(rtt),
                    fmt_duration(rtt),
                    DELAY_TOLERANCE * 100.0
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
                     counting. Pairs not involving {x} are untouched. Within \
                     {PARTITION_RECOVERY_WINDOWS} windows ({:.0} s) of healing {x} is \
                     registered again and every pair involving it is measured again.",
                    PARTITION_RECOVERY_WINDOWS as f64 * w
                )
            }
        }
    }
}

fn usage_of(name: &str) -> &'static str {
    match name {
        "kill-agent" => "kill-agent NODE",
        "zk-outage" => "zk-outage [SECS=20]",
        "broker-outage" => "broker-outage [SECS=30]",
        "link-delay" => "link-delay A B [RTT=2ms]",
        "link-loss" => "link-loss A B [PCT=20]",
        "partition" => "partition NODE [SECS=15]",
        _ => USAGE,
    }
}

impl fmt::Display for Experiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Experiment::KillAgent { node } => write!(f, "kill-agent {}", node_name(node)),
            Experiment::ZkOutage { secs } => write!(f, "zk-outage {secs}s"),
            Experiment::BrokerOutage { secs } => write!(f, "broker-outage {secs}s"),
            Experiment::LinkDelay { a, b, rtt } => write!(
                f,
                "link-delay {} {} +{}",
                node_name(a),
                node_name(b),
                fmt_duration(rtt)
            ),
            Experiment::LinkLoss { a, b, pct } => {
                write!(f, "link-loss {} {} {pct}%", node_name(a), node_name(b))
            }
            Experiment::Partition { node, secs } => {
                write!(f, "partition {} {secs}s", node_name(node))
            }
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
    fn of(lab: &MeshLab) -> Timing {
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
        } else if holds {
            self.checks
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            self.checks
                .iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, s)| format!("NOT {s}"))
                .collect::<Vec<_>>()
                .join("; ")
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
    let mut v = Vec::new();
    for a in 0..n {
        for b in 0..n {
            if a != b {
                v.push(pair(a, b));
            }
        }
    }
    v
}

/// `node2` → 2.
fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")?.parse().ok()
}

fn involves(p: &Pair, x: &str) -> bool {
    p.0 == x || p.1 == x
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
fn at_mid_window(lab: &MeshLab) -> u64 {
    let len = lab.spec.window.as_nanos() as u64;
    let now = tai_now_ns();
    let w = now / len;
    let mid = w * len + len / 2;
    let target = if now <= mid { mid } else { mid + len };
    std::thread::sleep(Duration::from_nanos(target.saturating_sub(tai_now_ns())));
    lab.window_now()
}

/// Sleeps `d`, checking every 250 ms that the agents still run; `each` runs at every check.
fn hold(lab: &mut MeshLab, d: Duration, mut each: impl FnMut(&mut MeshLab)) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(250)));
        for (i, a) in &mut lab.lab.agents {
            if !a.is_running() {
                bail!("{}'s agent exited:\n{}", node_name(*i), a.stderr_tail(30));
            }
        }
        each(lab);
    }
}

/// Reads the topic until `done` holds (at most `timeout`); returns the last read and when
/// `done` first held. Errors only if no read succeeded at all.
fn wait_kafka(
    lab: &MeshLab,
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

/// Every pair of `pairs` has a summary in every window of `range`.
fn complete(w: &Windows, pairs: &[Pair], range: RangeInclusive<u64>) -> bool {
    pairs.iter().all(|p| w.gaps(p, range.clone()).is_empty())
}

/// Every pair has a summary at window `seq` or later (the topic is read up to there).
fn reached(w: &Windows, pairs: &[Pair], seq: u64) -> bool {
    pairs.iter().all(|p| {
        w.by_pair
            .get(p)
            .and_then(|m| m.keys().next_back())
            .is_some_and(|&s| s >= seq)
    })
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
            if let Some(m) = w.by_pair.get(p) {
                for (s, v) in m.range(range.clone()) {
                    if v.len() > 1 {
                        h.dups.push((p.clone(), *s, v.len()));
                    }
                }
            }
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
                "{what}: one summary with replies in each of windows {}..={} ({} windows), \
                 0 of {} probes lost",
                range.start(),
                range.end(),
                self.windows,
                self.sent
            )
        } else {
            format!(
                "{what}, windows {}..={}: {}",
                range.start(),
                range.end(),
                self.problems().join("; ")
            )
        }
    }
}

/// Waits for [`BASELINE_WINDOWS`] consecutive windows in which every pair has one summary with
/// replies and no loss (unless its link has loss set), read from Kafka; returns them.
fn baseline(lab: &MeshLab, log: &mut dyn FnMut(&str)) -> Result<RangeInclusive<u64>> {
    let pairs = all_pairs(lab.spec.nodes);
    let spec = lab.spec.clone();
    let lossy = move |p: &Pair| {
        let a = node_index(&p.0);
        let b = node_index(&p.1);
        matches!((a, b), (Some(a), Some(b)) if spec.shape(a, b).loss_pct > 0.0)
    };
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

/// The first event of `i`'s agent after `mark` that is a `kind` line about node `x`.
fn event_about(lab: &MeshLab, i: usize, mark: usize, kind: &str, x: &str) -> Option<Event> {
    lab.lab
        .agent(i)
        .events_since(mark)
        .into_iter()
        .find(|e| e.kind() == kind && e.v["node_id"] == x)
}

/// Waits (at most `timeout`) for such an event; `None` if there is none.
fn wait_event_about(
    lab: &mut MeshLab,
    i: usize,
    mark: usize,
    kind: &str,
    x: &str,
    timeout: Duration,
) -> Option<Event> {
    lab.lab
        .agent_mut(i)
        .wait_for_since(mark, timeout, |e| e.kind() == kind && e.v["node_id"] == x)
        .ok()
}

/// Polls ZooKeeper until `want(members)` (at most `timeout`); when it first held.
fn wait_members(
    lab: &MeshLab,
    timeout: Duration,
    want: impl Fn(&[String]) -> bool,
) -> Option<Instant> {
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
fn znode_sessions(lab: &MeshLab) -> BTreeMap<String, String> {
    let prefix = format!("{}/", crate::agent::HEARTBEAT_PATH);
    lab.lab
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
    fn of(lab: &MeshLab) -> Prior {
        Prior {
            agents: lab.lab.agents.keys().copied().collect(),
            links: lab.spec.links.clone(),
        }
    }

    /// Checks the lab is as it was: the same agents running, the same link shapes, no
    /// partition, ZooKeeper and the broker up, agents and delay elements alive.
    fn check_restored(&self, lab: &mut MeshLab, j: &mut Judge) {
        let mut wrong = Vec::new();
        let agents: Vec<usize> = lab.lab.agents.keys().copied().collect();
        if agents != self.agents {
            wrong.push(format!("agents on {agents:?}, were {:?}", self.agents));
        }
        if lab.spec.links != self.links {
            wrong.push("link shapes differ from before".into());
        }
        if !lab.links.partitioned().is_empty() {
            wrong.push(format!("partitioned: {:?}", lab.links.partitioned()));
        }
        if let Some(zk) = lab.lab.zk.as_mut()
            && !zk.is_running()
        {
            wrong.push("ZooKeeper is not running".into());
        }
        if let Some(k) = lab.lab.kafka.as_mut()
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
pub fn run(lab: &mut MeshLab, exp: &Experiment, log: &mut dyn FnMut(&str)) -> Result<Verdict> {
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
        _ => {}
    }
    let missing: Vec<usize> = (0..n).filter(|i| !lab.lab.agents.contains_key(i)).collect();
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
    let mut j = Judge::default();
    match *exp {
        Experiment::KillAgent { node } => kill_agent(lab, node, &t, log, &mut j)?,
        Experiment::ZkOutage { secs } => zk_outage(lab, secs, &t, log, &mut j)?,
        Experiment::BrokerOutage { secs } => broker_outage(lab, secs, log, &mut j)?,
        Experiment::LinkDelay { a, b, rtt } => link_delay(lab, a, b, rtt, log, &mut j)?,
        Experiment::LinkLoss { a, b, pct } => link_loss(lab, a, b, pct, &t, log, &mut j)?,
        Experiment::Partition { node, secs } => partition(lab, node, secs, &t, log, &mut j)?,
    }
    prior.check_restored(lab, &mut j);
    Ok(j.verdict(exp, hypothesis))
}

// ---- kill-agent ----------------------------------------------------------------------------

fn kill_agent(
    lab: &mut MeshLab,
    x: usize,
    t: &Timing,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let base = baseline(lab, log)?;
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks: BTreeMap<usize, usize> = others
        .iter()
        .map(|&i| (i, lab.lab.agent(i).mark()))
        .collect();

    let kill_w = at_mid_window(lab);
    let kill_at = Instant::now();
    lab.kill9_agent(x)?;
    log(&format!("SIGKILL {xid}'s agent in window {kill_w}"));

    // Its znode goes when the session expires; then every peer drops it.
    let gone_at = wait_members(lab, t.conn_timeout * 3 + Duration::from_secs(10), |m| {
        !m.contains(&xid)
    });
    let mut removed: BTreeMap<usize, Option<Instant>> = BTreeMap::new();
    for &i in &others {
        let ev = wait_event_about(
            lab,
            i,
            marks[&i],
            "peer_removed",
            &xid,
            Duration::from_secs(10),
        );
        removed.insert(i, ev.map(|e| e.at));
    }
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

    let marks2: BTreeMap<usize, usize> = others
        .iter()
        .map(|&i| (i, lab.lab.agent(i).mark()))
        .collect();
    let restart_w = lab.window_now();
    let restart_at = Instant::now();
    log(&format!("restarting {xid}'s agent in window {restart_w}"));
    lab.start_agent(x)?;
    let ready_s = lab.lab.agent(x).ready_at().map(|r| secs(r - restart_at));
    let registered_at = wait_members(lab, Duration::from_secs(30), |m| m.contains(&xid));
    let mut added: BTreeMap<usize, Option<Instant>> = BTreeMap::new();
    for &i in &others {
        let ev = wait_event_about(
            lab,
            i,
            marks2[&i],
            "peer_added",
            &xid,
            Duration::from_secs(20),
        );
        added.insert(i, ev.map(|e| e.at));
    }

    let end = restart_w + RECOVERY_WINDOWS;
    lab.wait_window(end + 1);
    let pairs = all_pairs(n);
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| reached(w, &pairs, end))?;

    // The node's ZooKeeper session and the peers' reaction.
    match gone_at {
        Some(g) => j.note(format!(
            "{xid}'s znode was deleted {:.1} s after the kill (session timeout {:.0} s)",
            secs(g - kill_at),
            secs(t.conn_timeout)
        )),
        None => j.note(format!("{xid}'s znode was never deleted")),
    }
    let bound = t.conn_timeout + REMOVAL_SLACK;
    let mut max_removed: f64 = 0.0;
    let mut lost_after_removal = 0;
    let mut all_removed = true;
    for &i in &others {
        let p = pair(i, x);
        let (_, lost) = w.loss(&p, kill_w..=restart_w);
        j.fig(format!("lost_towards_x.{}", node_name(i)), lost as f64);
        let lost_windows: Vec<u64> = w
            .of(&p, kill_w..=restart_w)
            .iter()
            .filter(|o| o.lost > 0)
            .map(|o| o.seq)
            .collect();
        let Some(r) = removed[&i] else {
            all_removed = false;
            j.note(format!(
                "{}: never reported peer_removed {xid}; {lost} probes counted lost in windows {}",
                node_name(i),
                ranges(&lost_windows)
            ));
            continue;
        };
        let after = secs(r - kill_at);
        max_removed = max_removed.max(after);
        j.fig(format!("removed_after_s.{}", node_name(i)), after);
        let rw = clock.window_of(r);
        let late_loss: u64 = w.loss(&p, rw + 1..=restart_w).1;
        lost_after_removal += late_loss;
        let silent: Vec<u64> = w.gaps(&p, rw + 1..=restart_w);
        let (later_sent, _) = w.loss(&p, rw + 1..=restart_w);
        j.note(format!(
            "{}: counted {lost} probes to {xid} lost (windows {}, ≈{:.1} s of probing), \
             removed it {after:.1} s after the kill (window {rw}); windows {}..={restart_w} \
             (to the restart): {later_sent} probes sent, {late_loss} lost, windows without a \
             summary: {}",
            arrow(&p),
            ranges(&lost_windows),
            lost as f64 * secs(t.interval),
            rw + 1,
            ranges(&silent)
        ));
    }
    j.fig("removed_after_s.max", max_removed);
    j.fig("lost_after_removal", lost_after_removal as f64);
    j.check(
        all_removed && max_removed <= secs(bound),
        format!(
            "every peer dropped {xid} within {max_removed:.1} s of the kill (bound {:.0} s)",
            secs(bound)
        ),
    );
    j.check(
        lost_after_removal == 0,
        format!("{lost_after_removal} probes to {xid} counted lost after peer_removed"),
    );

    // The node's own rows: nothing already closed was lost; the windows it was dead are missing.
    let mut x_missing = BTreeSet::new();
    let mut x_gaps_before = 0;
    for &i in &others {
        let p = pair(x, i);
        x_gaps_before += w.gaps(&p, *base.start()..=kill_w - 1).len();
        let first_back = w
            .by_pair
            .get(&p)
            .and_then(|m| m.range(kill_w..).next().map(|(s, _)| *s));
        for s in w.gaps(&p, kill_w..=first_back.unwrap_or(end)) {
            if first_back.is_none_or(|f| s < f) {
                x_missing.insert(s);
            }
        }
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
    match registered_at {
        Some(r) => {
            j.fig("registered_after_s", secs(r - restart_at));
            j.note(format!(
                "restarted in window {restart_w}: ready line after {}, registered in ZooKeeper \
                 by {:.1} s after the restart",
                ready_s.map_or("?".into(), |s| format!("{s:.1} s")),
                secs(r - restart_at)
            ));
        }
        None => j.note(format!("{xid} did not register again within 30 s")),
    }
    let adds: Vec<String> = others
        .iter()
        .map(|&i| match added[&i] {
            Some(a) => format!("{} {:.1} s", node_name(i), secs(a - restart_at)),
            None => format!("{} never", node_name(i)),
        })
        .collect();
    j.note(format!(
        "peer_added {xid} after the restart: {}",
        adds.join(", ")
    ));
    let mut max_k = 0;
    let mut max_s: f64 = 0.0;
    let mut unrecovered = Vec::new();
    let mut rec = Vec::new();
    for p in pairs.iter().filter(|p| involves(p, &xid)) {
        match w.first_received(p, restart_w) {
            Some(f) => {
                let k = f - restart_w;
                max_k = max_k.max(k);
                let s = clock.secs_to_end_of(restart_at, f);
                max_s = max_s.max(s);
                j.fig(format!("recovered_windows.{}", key(p)), k as f64);
                rec.push(format!("{} window {f} (+{k})", arrow(p)));
            }
            None => unrecovered.push(arrow(p)),
        }
    }
    j.fig("recovered_windows.max", max_k as f64);
    j.fig("recovered_s.max", max_s);
    j.note(format!(
        "measured again (first window with replies): {}{}",
        rec.join(", "),
        if unrecovered.is_empty() {
            String::new()
        } else {
            format!("; never: {}", unrecovered.join(", "))
        }
    ));
    j.check(
        registered_at.is_some() && unrecovered.is_empty() && max_k <= RECOVERY_WINDOWS,
        format!(
            "every pair involving {xid} measured again by window +{max_k} after the restart \
             (≤ {max_s:.1} s; bound {RECOVERY_WINDOWS} windows)"
        ),
    );

    // Everybody else.
    let rest: Vec<Pair> = pairs
        .iter()
        .filter(|p| !involves(p, &xid))
        .cloned()
        .collect();
    let range = *base.start()..=end;
    let h = Health::of(&w, &rest, range.clone(), &|_| false);
    j.fig("others_gaps", h.gap_count() as f64);
    j.fig("others_lost", h.lost_count() as f64);
    j.note(h.describe(
        &format!("the {} pairs not involving {xid}", rest.len()),
        &range,
    ));
    j.check(
        h.clean(),
        format!(
            "the {} pairs not involving {xid}: {} missing windows, {} lost probes",
            rest.len(),
            h.gap_count(),
            h.lost_count()
        ),
    );
    let dups = w.duplicates();
    j.fig("duplicates", dups.len() as f64);
    j.check(
        dups.is_empty(),
        format!("{} windows summarised twice on the topic", dups.len()),
    );
    Ok(())
}

// ---- zk-outage -----------------------------------------------------------------------------

fn zk_outage(
    lab: &mut MeshLab,
    secs_: u64,
    t: &Timing,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    let n = lab.spec.nodes;
    let base = baseline(lab, log)?;
    let marks: BTreeMap<usize, usize> = (0..n).map(|i| (i, lab.lab.agent(i).mark())).collect();
    let stop_w = at_mid_window(lab);
    let sessions_before = znode_sessions(lab);
    lab.lab.zk_mut().stop();
    log(&format!(
        "ZooKeeper stopped in window {stop_w} for {secs_} s"
    ));
    let held = hold(lab, Duration::from_secs(secs_), |_| {});
    let end_w = lab.window_now();
    let restarted = lab.lab.zk_mut().start_again();
    let back_at = Instant::now();
    log(&format!("ZooKeeper started again in window {end_w}"));
    held?;
    restarted.context("starting ZooKeeper again")?;

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
                    .lab
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
    j.check(
        back <= secs(ZK_REREGISTER_BOUND),
        format!(
            "all agents registered again {back:.1} s after ZooKeeper's return (bound {:.0} s)",
            secs(ZK_REREGISTER_BOUND)
        ),
    );

    // What the agents made of it: a peer whose znode was replaced is removed and added back
    // (within the grace period the same probe session goes on).
    let mut events = Vec::new();
    let mut removed_events = 0;
    let mut max_readd: f64 = 0.0;
    let mut not_readded = Vec::new();
    for i in 0..n {
        let evs = lab.lab.agent(i).events_since(marks[&i]);
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
            if not_readded.is_empty() {
                String::new()
            } else {
                format!(" (not: {})", not_readded.join(", "))
            }
        ),
    );

    let last = end_w + 2;
    lab.wait_window(last + 1);
    let pairs = all_pairs(n);
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| {
        complete(w, &pairs, *base.start()..=last)
    })?;
    let outage = stop_w..=end_w;
    j.fig("outage_windows", (end_w - stop_w + 1) as f64);
    let range = *base.start()..=last;
    let h = Health::of(&w, &pairs, range.clone(), &|_| false);
    j.fig("gaps", h.gap_count() as f64);
    j.fig("windows_without_replies", h.silent_count() as f64);
    j.fig("lost", h.lost_count() as f64);
    j.fig("duplicates", h.dups.len() as f64);
    j.note(format!(
        "outage windows {}..={} (stopped in {stop_w}, back in {end_w})",
        outage.start(),
        outage.end()
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

fn broker_outage(
    lab: &mut MeshLab,
    secs_: u64,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    ensure!(
        lab.lab.kafka().persistent(),
        "the broker runs with {} storage, which does not survive a restart: install tansu \
         with the libsql feature (cargo xtask setup)",
        lab.lab.kafka().storage()
    );
    let n = lab.spec.nodes;
    let pairs = all_pairs(n);
    let base = baseline(lab, log)?;
    let stop_w = at_mid_window(lab);
    lab.lab.kafka_mut().stop();
    log(&format!("broker stopped in window {stop_w} for {secs_} s"));
    let held = hold(lab, Duration::from_secs(secs_), |_| {});
    let mut buffered = 0.0;
    let mut buffered_known = true;
    for i in 0..n {
        match lab.lab.agent(i).metric("meshprobe_kafka_buffered") {
            Ok(Some(b)) => buffered += b,
            _ => buffered_known = false,
        }
    }
    let end_w = lab.window_now();
    let restarted = lab.lab.kafka_mut().start_again();
    let back_at = Instant::now();
    log(&format!("broker started again in window {end_w}"));
    held?;
    restarted.context("starting the broker again")?;

    // Windows closed while the broker was away: stop_w ..= end_w - 1.
    let buffered_windows = end_w - stop_w;
    j.fig("buffered_windows", buffered_windows as f64);
    if buffered_known {
        j.fig("buffered_records", buffered);
    }
    let (_, delivered) = wait_kafka(lab, KAFKA_WAIT, |w| {
        complete(w, &pairs, *base.start()..=end_w - 1)
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
        if buffered_known {
            format!("{buffered:.0}")
        } else {
            "an unknown number of".into()
        },
        delivered_s.map_or(format!("not within {KAFKA_WAIT:?}"), |s| format!(
            "{s:.1} s"
        ))
    ));

    let last = end_w + 2;
    lab.wait_window(last + 1);
    let range = *base.start()..=last;
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| {
        complete(w, &pairs, range.clone())
    })?;
    let h = Health::of(&w, &pairs, range.clone(), &|_| false);
    j.fig("gaps", h.gap_count() as f64);
    j.fig("duplicates", h.dups.len() as f64);
    j.fig("lost", h.lost_count() as f64);
    j.fig("windows_without_replies", h.silent_count() as f64);
    let mut dropped = 0.0;
    for i in 0..n {
        dropped += lab
            .lab
            .agent(i)
            .metric("meshprobe_kafka_dropped")
            .ok()
            .flatten()
            .unwrap_or(0.0);
    }
    j.fig("kafka_dropped", dropped);
    j.note(h.describe(&format!("all {} pairs on the topic", pairs.len()), &range));
    j.check(
        delivered.is_some(),
        format!(
            "the buffered summaries reached Kafka {} after the restart",
            delivered_s.map_or("never".into(), |s| format!("{s:.1} s"))
        ),
    );
    j.check(
        h.gaps.is_empty() && h.dups.is_empty(),
        format!(
            "exactly one summary per pair and window {}..={last}: {} missing, {} duplicated",
            base.start(),
            h.gap_count(),
            h.dups.len()
        ),
    );
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

fn link_delay(
    lab: &mut MeshLab,
    a: usize,
    b: usize,
    add: Duration,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    let n = lab.spec.nodes;
    let old = lab.spec.shape(a, b);
    let new = Shape {
        rtt: old.rtt + add,
        ..old
    };
    ensure!(
        new.rtt <= MAX_RTT,
        "{}–{} has {} already; +{} is over the {} the delay element can add",
        node_name(a),
        node_name(b),
        fmt_duration(old.rtt),
        fmt_duration(add),
        fmt_duration(MAX_RTT)
    );
    let pairs = all_pairs(n);
    let base = baseline(lab, log)?;
    let c0 = at_mid_window(lab);
    lab.set_link(a, b, new)?;
    let c1 = lab.window_now();
    log(&format!(
        "{}–{}: {} → {} of added RTT in window {c0}",
        node_name(a),
        node_name(b),
        fmt_duration(old.rtt),
        fmt_duration(new.rtt)
    ));
    let during = c1 + 1..=c1 + DELAY_WINDOWS;
    lab.wait_window(c1 + DELAY_WINDOWS + 1);
    let held = lab.check();
    let r0 = at_mid_window(lab);
    let restored = lab.set_link(a, b, old);
    let r1 = lab.window_now();
    log(&format!(
        "{}–{}: restored in window {r0}",
        node_name(a),
        node_name(b)
    ));
    held?;
    restored?;
    let after = r1 + 1..=r1 + 2;
    lab.wait_window(r1 + 3);
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| {
        complete(w, &pairs, *base.start()..=*after.end())
    })?;

    let add_us = add.as_secs_f64() * 1e6;
    j.fig("added_us", add_us);
    let (pa, pb) = (pair(a, b), pair(b, a));
    let mut max_err: f64 = 0.0;
    let mut max_rise_w = 0;
    let mut ok_affected = true;
    let mut max_restored: f64 = 0.0;
    for p in [&pa, &pb] {
        let (Some(before), Some(dur), Some(aft)) = (
            w.median_p50_us(p, base.clone()),
            w.median_p50_us(p, during.clone()),
            w.median_p50_us(p, after.clone()),
        ) else {
            ok_affected = false;
            j.note(format!("{}: no p50 in some phase", arrow(p)));
            continue;
        };
        let rise = dur - before;
        let err = (rise - add_us).abs() / add_us * 100.0;
        max_err = max_err.max(err);
        // First window from the change on whose p50 shows at least half of the added RTT.
        let first = w
            .of(p, c0..=*during.end())
            .iter()
            .find(|o| {
                o.p50_ns
                    .is_some_and(|v| v as f64 / 1000.0 - before >= add_us / 2.0)
            })
            .map(|o| o.seq);
        let k = first.map_or(u64::MAX, |f| f.saturating_sub(c0));
        max_rise_w = max_rise_w.max(k);
        let fell = w
            .of(p, r0..=*after.end())
            .iter()
            .find(|o| {
                o.p50_ns
                    .is_some_and(|v| v as f64 / 1000.0 - before < add_us / 2.0)
            })
            .map(|o| o.seq);
        max_restored = max_restored.max((aft - before).abs());
        j.fig(format!("before_us.{}", key(p)), before);
        j.fig(format!("during_us.{}", key(p)), dur);
        j.fig(format!("after_us.{}", key(p)), aft);
        j.note(format!(
            "{}: median p50 {before:.0} µs before, {dur:.0} µs during (+{rise:.0} µs for \
             +{add_us:.0} µs added, {err:.1} % off), {aft:.0} µs after; rose in window {} \
             (change in window {c0}), fell back in window {}",
            arrow(p),
            first.map_or("never".into(), |f| f.to_string()),
            fell.map_or("never".into(), |f| f.to_string())
        ));
        if first.is_none_or(|f| f > c1 + 1) {
            ok_affected = false;
        }
    }
    j.fig("rise_err_pct.max", max_err);
    j.fig(
        "rise_window.max",
        if max_rise_w == u64::MAX {
            f64::INFINITY
        } else {
            max_rise_w as f64
        },
    );
    j.check(
        ok_affected && max_err <= DELAY_TOLERANCE * 100.0,
        format!(
            "{}↔{} rose by the added {} within {max_err:.1} % (bound {:.0} %) from window \
             +{} after the change",
            node_name(a),
            node_name(b),
            fmt_duration(add),
            DELAY_TOLERANCE * 100.0,
            if max_rise_w == u64::MAX {
                "never".into()
            } else {
                max_rise_w.to_string()
            }
        ),
    );
    j.check(
        max_restored <= OTHER_SHIFT_US,
        format!(
            "{}↔{} back within {max_restored:.0} µs of the baseline after the restore \
             (bound {OTHER_SHIFT_US:.0} µs)",
            node_name(a),
            node_name(b)
        ),
    );

    let mut max_shift: f64 = 0.0;
    let mut max_after: f64 = 0.0;
    let mut missing = Vec::new();
    let mut lines = Vec::new();
    for p in pairs.iter().filter(|p| **p != pa && **p != pb) {
        let (Some(before), Some(dur), Some(aft)) = (
            w.median_p50_us(p, base.clone()),
            w.median_p50_us(p, during.clone()),
            w.median_p50_us(p, after.clone()),
        ) else {
            missing.push(arrow(p));
            continue;
        };
        max_shift = max_shift.max((dur - before).abs());
        max_after = max_after.max((aft - before).abs());
        j.fig(format!("before_us.{}", key(p)), before);
        j.fig(format!("during_us.{}", key(p)), dur);
        j.fig(format!("after_us.{}", key(p)), aft);
        lines.push(format!("{} {before:.0}/{dur:.0}/{aft:.0}", arrow(p)));
    }
    j.note(format!(
        "other pairs, median p50 µs before/during/after: {}",
        lines.join(", ")
    ));
    j.fig("others_max_shift_us", max_shift);
    j.fig("restored_max_shift_us", max_after.max(max_restored));
    j.check(
        missing.is_empty() && max_shift <= OTHER_SHIFT_US && max_after <= OTHER_SHIFT_US,
        format!(
            "the {} other pairs moved at most {max_shift:.0} µs during and {max_after:.0} µs \
             after (bound {OTHER_SHIFT_US:.0} µs){}",
            pairs.len() - 2,
            if missing.is_empty() {
                String::new()
            } else {
                format!("; no data for {}", missing.join(", "))
            }
        ),
    );
    let range = *base.start()..=*after.end();
    let h = Health::of(&w, &pairs, range.clone(), &|_| false);
    if !h.clean() {
        j.note(format!(
            "windows {}..={}: {}",
            range.start(),
            range.end(),
            h.problems().join("; ")
        ));
    }
    j.check(
        h.gaps.is_empty() && h.dups.is_empty(),
        format!(
            "every pair summarised once in each of windows {}..={} ({} missing, {} duplicated)",
            range.start(),
            range.end(),
            h.gap_count(),
            h.dups.len()
        ),
    );
    Ok(())
}

// ---- link-loss -----------------------------------------------------------------------------

fn link_loss(
    lab: &mut MeshLab,
    a: usize,
    b: usize,
    loss: f64,
    t: &Timing,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    let n = lab.spec.nodes;
    let (lo, hi) = (a.min(b), a.max(b));
    let old = lab.spec.shape(lo, hi);
    let new = Shape {
        loss_pct: loss,
        ..old
    };
    let pairs = all_pairs(n);
    let spec = lab.spec.clone();
    let base = baseline(lab, log)?;
    let c0 = at_mid_window(lab);
    lab.set_link(lo, hi, new)?;
    let c1 = lab.window_now();
    log(&format!(
        "{}→{}: dropping {loss} % from window {c0}",
        node_name(lo),
        node_name(hi)
    ));
    lab.wait_window(c1 + LOSS_WINDOWS + 1);
    let held = lab.check();
    let r0 = at_mid_window(lab);
    let dropped = lab.links.loss_dropped(lab.mesh(), lo, hi);
    let restored = lab.set_link(lo, hi, old);
    let r1 = lab.window_now();
    log(&format!(
        "{}→{}: restored in window {r0}",
        node_name(lo),
        node_name(hi)
    ));
    held?;
    restored?;
    let dropped = dropped?.context("the nft loss rule has no counter")?;
    let last = r1 + 2;
    lab.wait_window(last + 1);
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| {
        complete(w, &pairs, *base.start()..=last)
    })?;

    let full = c1 + 1..=r0 - 1;
    let p = loss / 100.0;
    let mut in_bound = true;
    for pr in [pair(lo, hi), pair(hi, lo)] {
        let (sent, lost) = w.loss(&pr, full.clone());
        let obs = pct(sent, lost);
        let sigma = if sent == 0 {
            f64::INFINITY
        } else {
            (p * (1.0 - p) / sent as f64).sqrt() * 100.0
        };
        let ok = sent > 0 && (obs - loss).abs() <= LOSS_SIGMAS * sigma;
        in_bound &= ok;
        j.fig(format!("loss_pct.{}", key(&pr)), obs);
        j.fig(format!("sigma_pct.{}", key(&pr)), sigma);
        j.note(format!(
            "{}: {lost} of {sent} probes lost in windows {}..={} = {obs:.1} % (set {loss} %, \
             σ {sigma:.1} %, {:+.1} σ); {}",
            arrow(&pr),
            full.start(),
            full.end(),
            (obs - loss) / sigma,
            if pr.0 == node_name(lo) {
                "its requests cross the rule"
            } else {
                "its replies cross the rule"
            }
        ));
    }
    j.check(
        in_bound,
        format!(
            "both directions lost {loss} % within {LOSS_SIGMAS:.0} σ over windows {}..={}",
            full.start(),
            full.end()
        ),
    );
    // Every packet the rule dropped is one lost probe (a dropped request or a dropped reply).
    let around = c0..=r1 + 1;
    let lost_total =
        w.loss(&pair(lo, hi), around.clone()).1 + w.loss(&pair(hi, lo), around.clone()).1;
    j.fig("nft_dropped", dropped as f64);
    j.fig("lost_total", lost_total as f64);
    j.note(format!(
        "the nft rule dropped {dropped} packets; the two directions counted {lost_total} lost \
         probes in windows {}..={} (probes time out after {:.0} s)",
        around.start(),
        around.end(),
        secs(t.probe_timeout)
    ));
    if old.loss_pct == 0.0 {
        j.check(
            lost_total >= dropped && lost_total - dropped <= LOSS_COUNTER_SLACK,
            format!(
                "every dropped packet is a lost probe: {lost_total} lost vs {dropped} dropped \
                 (≤ {LOSS_COUNTER_SLACK} more lost allowed: drops between reading the counter \
                 and removing the rule)"
            ),
        );
        let after_restore: u64 =
            w.loss(&pair(lo, hi), r1 + 2..=last).1 + w.loss(&pair(hi, lo), r1 + 2..=last).1;
        j.fig("lost_after_restore", after_restore as f64);
        j.check(
            after_restore == 0,
            format!(
                "{after_restore} probes lost in window(s) {}, a window after the restore",
                ranges(&(r1 + 2..=last).collect::<Vec<_>>())
            ),
        );
    }
    let link = (lo, hi);
    let spec2 = spec.clone();
    let lossy = move |p: &Pair| {
        let (Some(x), Some(y)) = (node_index(&p.0), node_index(&p.1)) else {
            return false;
        };
        (x.min(y), x.max(y)) == link || spec2.shape(x, y).loss_pct > 0.0
    };
    let rest: Vec<Pair> = pairs
        .iter()
        .filter(|p| *p != &pair(lo, hi) && *p != &pair(hi, lo))
        .cloned()
        .collect();
    let range = *base.start()..=last;
    let h = Health::of(&w, &rest, range.clone(), &lossy);
    j.fig("others_lost", h.lost_count() as f64);
    j.note(h.describe(&format!("the {} other pairs", rest.len()), &range));
    j.check(
        h.clean(),
        format!(
            "the {} other pairs lost {} probes and missed {} windows",
            rest.len(),
            h.lost_count(),
            h.gap_count()
        ),
    );
    Ok(())
}

// ---- partition -----------------------------------------------------------------------------

fn partition(
    lab: &mut MeshLab,
    x: usize,
    secs_: u64,
    t: &Timing,
    log: &mut dyn FnMut(&str),
    j: &mut Judge,
) -> Result<()> {
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let pairs = all_pairs(n);
    let base = baseline(lab, log)?;
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks: BTreeMap<usize, usize> = (0..n).map(|i| (i, lab.lab.agent(i).mark())).collect();

    let p_w = at_mid_window(lab);
    let p_at = Instant::now();
    lab.partition(x, true)?;
    log(&format!("{xid} partitioned in window {p_w} for {secs_} s"));
    let mut gone_at: Option<Instant> = None;
    let held = hold(lab, Duration::from_secs(secs_), |lab| {
        if gone_at.is_none() && lab.zk_members().is_ok_and(|m| !m.contains(&xid)) {
            gone_at = Some(Instant::now());
        }
    });
    let h_w = lab.window_now();
    let healed = lab.partition(x, false);
    let h_at = Instant::now();
    log(&format!("{xid} reconnected in window {h_w}"));
    held?;
    healed?;

    // Registration and the buffered rows, watched together (each read takes a while).
    let x_rows: Vec<Pair> = others.iter().map(|&i| pair(x, i)).collect();
    let mut registered_at = None;
    let mut delivered_at = None;
    let deadline = Instant::now() + KAFKA_WAIT;
    while (registered_at.is_none() || delivered_at.is_none()) && Instant::now() < deadline {
        if registered_at.is_none() && lab.zk_members().is_ok_and(|m| m.contains(&xid)) {
            registered_at = Some(Instant::now());
        }
        if delivered_at.is_none()
            && lab
                .kafka_windows()
                .is_ok_and(|w| complete(&w, &x_rows, p_w..=h_w - 1))
        {
            delivered_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut added: BTreeMap<usize, Option<Instant>> = BTreeMap::new();
    for &i in &others {
        let ev = lab
            .lab
            .agent_mut(i)
            .wait_for_since(marks[&i], Duration::from_secs(20), |e| {
                e.kind() == "peer_added" && e.v["node_id"] == xid.as_str() && e.at >= h_at
            })
            .ok();
        added.insert(i, ev.map(|e| e.at));
    }
    let end = h_w + PARTITION_RECOVERY_WINDOWS;
    lab.wait_window(end + 1);
    let (w, _) = wait_kafka(lab, Duration::from_secs(30), |w| reached(w, &pairs, end))?;

    match gone_at {
        Some(g) => j.note(format!(
            "{xid}'s znode was deleted {:.1} s into the partition (session timeout {:.0} s)",
            secs(g - p_at),
            secs(t.conn_timeout)
        )),
        None => j.note(format!("{xid}'s znode stayed for the whole partition")),
    }

    // The others towards x.
    let inside = p_w + 1..=h_w - 1;
    let mut others_received = 0;
    let bound = t.conn_timeout + REMOVAL_SLACK;
    let mut max_removed: f64 = 0.0;
    let mut all_removed = true;
    let mut lost_after_removal = 0;
    for &i in &others {
        let p = pair(i, x);
        let removed = event_about(lab, i, marks[&i], "peer_removed", &xid).filter(|e| e.at < h_at);
        let (sent, lost) = w.loss(&p, p_w..=h_w);
        j.fig(format!("lost_towards_x.{}", node_name(i)), lost as f64);
        let got: u64 = w.of(&p, inside.clone()).iter().map(|o| o.received).sum();
        others_received += got;
        let rows: Vec<String> = w
            .of(&p, p_w..=h_w)
            .iter()
            .map(|o| format!("{} {}/{}", o.seq, o.lost, o.sent))
            .collect();
        let Some(r) = removed else {
            all_removed = false;
            j.note(format!(
                "{}: never reported peer_removed {xid} during the partition; lost/sent by \
                 window {}",
                arrow(&p),
                rows.join(" ")
            ));
            continue;
        };
        let after = secs(r.at - p_at);
        max_removed = max_removed.max(after);
        j.fig(format!("removed_after_s.{}", node_name(i)), after);
        let rw = clock.window_of(r.at);
        let late = w.loss(&p, rw + 1..=h_w).1;
        lost_after_removal += late;
        let silent = w.gaps(&p, rw + 1..=h_w);
        let back = added[&i].map(|a| secs(a - h_at));
        j.note(format!(
            "{}: {lost} of {sent} probes lost in windows {p_w}..={h_w} (lost/sent by window, \
             a loss counting in the window its {:.0} s timeout ends: {}); {got} replies in \
             windows {}..={}; removed {xid} {after:.1} s into the partition (window {rw}); no summary in \
             windows {}; peer_added again {} after healing",
            arrow(&p),
            secs(t.probe_timeout),
            rows.join(" "),
            inside.start(),
            inside.end(),
            ranges(&silent),
            back.map_or("never".into(), |s| format!("{s:.1} s"))
        ));
    }
    j.fig("removed_after_s.max", max_removed);
    j.fig("lost_after_removal", lost_after_removal as f64);
    j.check(
        all_removed && max_removed <= secs(bound),
        format!(
            "every peer dropped {xid} within {max_removed:.1} s of the cut (bound {:.0} s)",
            secs(bound)
        ),
    );
    j.check(
        lost_after_removal == 0,
        format!("{lost_after_removal} probes to {xid} counted lost after peer_removed"),
    );
    j.fig("others_received_from_x_during", others_received as f64);
    j.check(
        others_received == 0,
        format!(
            "the others got {others_received} replies from {xid} in windows {}..={}, while it \
             was cut off",
            inside.start(),
            inside.end()
        ),
    );

    // x's own rows.
    let x_events: Vec<String> = lab
        .lab
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
        let got: u64 = w.of(p, inside.clone()).iter().map(|o| o.received).sum();
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
        "{xid}'s rows in windows {}..={} (wholly cut off): {}; its summaries of windows \
         {p_w}..={} were on the topic {} after healing; its own membership events: {}",
        inside.start(),
        inside.end(),
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

    // Recovery.
    match registered_at {
        Some(r) => {
            j.fig("registered_after_s", secs(r - h_at));
            j.note(format!(
                "{xid} registered in ZooKeeper again by {:.1} s after healing",
                secs(r - h_at)
            ));
        }
        None => j.note(format!(
            "{xid} did not register again within {KAFKA_WAIT:?}"
        )),
    }
    let mut max_k = 0;
    let mut rec = Vec::new();
    let mut unrecovered = Vec::new();
    for p in pairs.iter().filter(|p| involves(p, &xid)) {
        match w.first_received(p, h_w) {
            Some(f) => {
                let k = f - h_w;
                max_k = max_k.max(k);
                j.fig(format!("recovered_windows.{}", key(p)), k as f64);
                rec.push(format!("{} window {f} (+{k})", arrow(p)));
            }
            None => unrecovered.push(arrow(p)),
        }
    }
    j.fig("recovered_windows.max", max_k as f64);
    j.note(format!(
        "measured again after healing in window {h_w}: {}{}",
        rec.join(", "),
        if unrecovered.is_empty() {
            String::new()
        } else {
            format!("; never: {}", unrecovered.join(", "))
        }
    ));
    j.check(
        registered_at.is_some() && unrecovered.is_empty() && max_k <= PARTITION_RECOVERY_WINDOWS,
        format!(
            "every pair involving {xid} measured again by window +{max_k} after healing \
             (bound {PARTITION_RECOVERY_WINDOWS})"
        ),
    );

    let rest: Vec<Pair> = pairs
        .iter()
        .filter(|p| !involves(p, &xid))
        .cloned()
        .collect();
    let range = *base.start()..=end;
    let h = Health::of(&w, &rest, range.clone(), &|_| false);
    j.fig("others_gaps", h.gap_count() as f64);
    j.fig("others_lost", h.lost_count() as f64);
    j.note(h.describe(
        &format!("the {} pairs not involving {xid}", rest.len()),
        &range,
    ));
    j.check(
        h.clean(),
        format!(
            "the {} pairs not involving {xid}: {} missing windows, {} lost probes",
            rest.len(),
            h.gap_count(),
            h.lost_count()
        ),
    );
    let dups = w.duplicates();
    j.fig("duplicates", dups.len() as f64);
    j.check(
        dups.is_empty(),
        format!("{} windows summarised twice on the topic", dups.len()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_parse_with_defaults() {
        assert_eq!(
            "kill-agent node2".parse::<Experiment>().unwrap(),
            Experiment::KillAgent { node: 2 }
        );
        assert_eq!(
            Experiment::parse("kill-agent", &["3"]).unwrap(),
            Experiment::KillAgent { node: 3 }
        );
        assert_eq!(
            Experiment::parse::<&str>("zk-outage", &[]).unwrap(),
            Experiment::ZkOutage { secs: 20 }
        );
        assert_eq!(
            "broker-outage".parse::<Experiment>().unwrap(),
            Experiment::BrokerOutage { secs: 30 }
        );
        assert_eq!(
            "broker-outage 45s".parse::<Experiment>().unwrap(),
            Experiment::BrokerOutage { secs: 45 }
        );
        assert_eq!(
            "link-delay node0 2".parse::<Experiment>().unwrap(),
            Experiment::LinkDelay {
                a: 0,
                b: 2,
                rtt: Duration::from_millis(2)
            }
        );
        assert_eq!(
            "link-delay 1 3 500us".parse::<Experiment>().unwrap(),
            Experiment::LinkDelay {
                a: 1,
                b: 3,
                rtt: Duration::from_micros(500)
            }
        );
        assert_eq!(
            "link-loss node3 node1".parse::<Experiment>().unwrap(),
            Experiment::LinkLoss {
                a: 3,
                b: 1,
                pct: 20.0
            }
        );
        assert_eq!(
            Experiment::from_args(&["link-loss", "0", "1", "5%"]).unwrap(),
            Experiment::LinkLoss {
                a: 0,
                b: 1,
                pct: 5.0
            }
        );
        assert_eq!(
            "partition node1".parse::<Experiment>().unwrap(),
            Experiment::Partition { node: 1, secs: 15 }
        );
        assert_eq!(
            "partition 1 8".parse::<Experiment>().unwrap(),
            Experiment::Partition { node: 1, secs: 8 }
        );
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
            .contains("by 2ms ±15 %")
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
