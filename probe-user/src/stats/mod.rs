//! Per-peer statistics: HDR histograms of the four delay figures, and loss, duplicate and
//! reordering accounting by sequence number.
pub mod window;

use std::collections::{BTreeMap, HashSet};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Quantile summary of one figure, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DistSummary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

/// A distribution of nanosecond values (3 significant digits; negatives clamp to 0 and are
/// counted, since clock steps or a third-party reflector's clock can produce them).
pub struct Dist {
    hist: Histogram<u64>,
    pub negative: u64,
}

impl Default for Dist {
    fn default() -> Self {
        Self {
            hist: Histogram::new(3).expect("3 significant digits is valid"),
            negative: 0,
        }
    }
}

impl Dist {
    pub fn record(&mut self, ns: i64) {
        if ns < 0 {
            self.negative += 1;
        }
        // auto-resizing histogram: record cannot fail for u64 values.
        let _ = self.hist.record(ns.max(0) as u64);
    }

    pub fn summary(&self) -> DistSummary {
        if self.hist.is_empty() {
            return DistSummary::default();
        }
        DistSummary {
            count: self.hist.len(),
            min: self.hist.min(),
            p50: self.hist.value_at_quantile(0.50),
            p90: self.hist.value_at_quantile(0.90),
            p99: self.hist.value_at_quantile(0.99),
            max: self.hist.max(),
            mean: self.hist.mean(),
        }
    }
}

/// What became of a reply, by its sender sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// First reply for an outstanding probe, in order.
    InOrder,
    /// First reply for an outstanding probe, after a reply to a later probe.
    Reordered,
    /// A second (or later) reply for the same probe: counted, never a sample.
    Duplicate,
    /// A reply for a probe already declared lost (after its timeout), or never sent.
    Late,
    Unknown,
}

/// Sequence bookkeeping of one session.
#[derive(Default)]
pub struct SeqTracker {
    /// seq -> still waiting.
    outstanding: BTreeMap<u32, ()>,
    answered: HashSet<u32>,
    timed_out: HashSet<u32>,
    highest_answered: Option<u32>,
    next_seq: u32,
}

/// How many answered/timed-out sequence numbers are remembered for duplicate detection.
const SEQ_MEMORY: u32 = 1 << 16;

impl SeqTracker {
    pub fn sent(&mut self, seq: u32) {
        self.outstanding.insert(seq, ());
        self.next_seq = seq.wrapping_add(1);
        // Forget what is too old to matter: memory stays flat with uptime.
        if seq >= SEQ_MEMORY && seq.is_multiple_of(1024) {
            let floor = seq - SEQ_MEMORY;
            self.answered.retain(|&s| s >= floor);
            self.timed_out.retain(|&s| s >= floor);
        }
    }

    pub fn reply(&mut self, seq: u32) -> ReplyKind {
        if self.outstanding.remove(&seq).is_some() {
            self.answered.insert(seq);
            let reordered = self.highest_answered.is_some_and(|h| seq < h);
            if !reordered {
                self.highest_answered = Some(seq);
            }
            if reordered {
                ReplyKind::Reordered
            } else {
                ReplyKind::InOrder
            }
        } else if self.answered.contains(&seq) {
            ReplyKind::Duplicate
        } else if self.timed_out.contains(&seq) {
            ReplyKind::Late
        } else {
            ReplyKind::Unknown
        }
    }

    pub fn time_out(&mut self, seq: u32) -> bool {
        if self.outstanding.remove(&seq).is_some() {
            self.timed_out.insert(seq);
            true
        } else {
            false
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// lost / (received + lost): the share of resolved probes that got no reply; 0 when none is
/// resolved yet.
pub fn loss_ratio(lost: u64, received: u64) -> f64 {
    let done = received + lost;
    if done == 0 {
        0.0
    } else {
        lost as f64 / done as f64
    }
}

/// Everything reported for one peer.
#[derive(Default)]
pub struct SessionStats {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub unknown: u64,
    pub network_rtt: Dist,
    pub turnaround: Dist,
    pub app_rtt: Dist,
    pub stack_overhead: Dist,
}

#[derive(Debug, Serialize)]
pub struct SummaryRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub peer: String,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub network_rtt_ns: DistSummary,
    pub turnaround_ns: DistSummary,
    pub app_rtt_ns: DistSummary,
    pub stack_overhead_ns: DistSummary,
    pub timestamping: &'a str,
    pub note: &'a str,
}

impl SessionStats {
    pub fn loss_pct(&self) -> f64 {
        loss_ratio(self.lost, self.received) * 100.0
    }

    pub fn record<'a>(
        &self,
        peer: String,
        timestamping: &'a str,
        note: &'a str,
    ) -> SummaryRecord<'a> {
        SummaryRecord {
            kind: "summary",
            peer,
            sent: self.sent,
            received: self.received,
            lost: self.lost,
            loss_pct: self.loss_pct(),
            duplicates: self.duplicates,
            reordered: self.reordered,
            late: self.late,
            network_rtt_ns: self.network_rtt.summary(),
            turnaround_ns: self.turnaround.summary(),
            app_rtt_ns: self.app_rtt.summary(),
            stack_overhead_ns: self.stack_overhead.summary(),
            timestamping,
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_reorders_and_late_replies_are_classified() {
        let mut t = SeqTracker::default();
        for s in 0..5 {
            t.sent(s);
        }
        assert_eq!(t.reply(0), ReplyKind::InOrder);
        assert_eq!(t.reply(2), ReplyKind::InOrder);
        assert_eq!(t.reply(1), ReplyKind::Reordered);
        assert_eq!(t.reply(1), ReplyKind::Duplicate);
        assert_eq!(t.reply(2), ReplyKind::Duplicate);
        assert!(t.time_out(3));
        assert!(!t.time_out(3));
        assert_eq!(t.reply(3), ReplyKind::Late);
        assert_eq!(t.reply(99), ReplyKind::Unknown);
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn quantiles_from_known_values() {
        let mut d = Dist::default();
        for v in 1..=1000 {
            d.record(v * 1000);
        }
        d.record(-5);
        let s = d.summary();
        assert_eq!(s.count, 1001);
        assert_eq!(s.min, 0);
        assert_eq!(d.negative, 1);
        // 3 significant digits: within 0.1 %.
        assert!((s.p50 as i64 - 500_000).abs() <= 500, "{s:?}");
        assert!((s.p99 as i64 - 990_000).abs() <= 1000, "{s:?}");
        assert!((s.max as i64 - 1_000_000).abs() <= 1000, "{s:?}");
    }

    #[test]
    fn memory_stays_bounded() {
        let mut t = SeqTracker::default();
        for s in 0..300_000u32 {
            t.sent(s);
            t.reply(s);
        }
        assert!(
            t.answered.len() <= (SEQ_MEMORY + 1024) as usize,
            "{}",
            t.answered.len()
        );
    }
}
