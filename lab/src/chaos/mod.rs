//! Chaos experiments on a [`Lab`]: each states a hypothesis with numbers, waits for a clean
//! baseline, applies one fault, keeps it for its time, puts the lab back exactly as it was, waits
//! for recovery, and decides from what the mesh itself recorded (window summaries read back
//! from Kafka, ZooKeeper membership, the agents' peer_added/peer_removed lines) whether the
//! hypothesis holds. Nothing in a [`Verdict`] is assumed: every number comes from that data.
//!
//! From the command line (`cargo xtask mesh chaos ...`) an experiment is named as
//! [`USAGE`] says; nodes are `node2` or `2`.
//!
//! One file per experiment (away: kill-agent and partition); the shared parts (timing, judge,
//! waits, health, baseline) each in their own.

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

mod away;
mod baseline;
mod broker_outage;
mod experiment;
mod health;
mod judge;
mod limits;
mod link_delay;
mod link_loss;
mod pairs;
mod verdict;
mod wait;
mod zk_outage;

#[cfg(test)]
mod tests;

use away::*;
use baseline::*;
use broker_outage::*;
pub use experiment::*;
use health::*;
use judge::*;
pub use limits::*;
use link_delay::*;
use link_loss::*;
use pairs::*;
pub use verdict::*;
use wait::*;
use zk_outage::*;

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
pub(super) struct Ctx<'a>(
    Timing,
    RangeInclusive<u64>,
    Vec<Pair>,
    &'a mut dyn FnMut(&str),
    Judge,
);
