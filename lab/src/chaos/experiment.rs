//! An experiment as the command line names it, and its hypothesis in numbers.

use super::*;

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
pub(super) fn parse_secs(s: &str) -> Result<u64> {
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

    pub(super) fn hypothesis_for(&self, t: &Timing) -> String {
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
                     well below the change it judges; the rise may be up to {DELAY_SLACK_PCT} % \
                     of the added RTT longer (the delay element holds packets, and one that \
                     comes during another's hold waits for it), never shorter.",
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
pub(super) fn usage_of(name: &str) -> &'static str {
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
