//! The experiments' names, and the numbers their hypotheses are judged by.

use super::*;

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
/// link-delay: how much longer than asked the delay element may hold (one rule, the harness's).
pub use meshprobe_harness::meshprobe::DELAY_SLACK_PCT;
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
