//! Per-peer statistics: HDR histograms of the four delay figures and the counts of what became
//! of each probe and reply (classified by `probe::session`).
pub mod hdr;
mod rejection;
pub mod window;
pub mod zone;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use rejection::{Rejection, RejectionCounts};

/// The figures of one answered probe that the statistics keep, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// (T4 − T1) − (T3 − T2).
    pub network_rtt: i64,
    /// T3 − T2.
    pub turnaround: i64,
    pub app_rtt: i64,
    pub stack_overhead: i64,
}

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
    /// Replies that did not count, by reason.
    pub rejected: RejectionCounts,
    /// Kernel mode: samples whose T1 is the reflector's echo (no record of ours was left).
    pub t1_unrecorded: u64,
    /// Two-step T3: corrections applied to a held sample, and follow-ups not used (malformed,
    /// or a correction that is not believable).
    pub follow_up_applied: u64,
    pub follow_up_ignored: u64,
    /// Authenticated mode `optional`: replies accepted without authentication (open mode).
    pub unauthenticated: u64,
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
    pub rejected: &'a RejectionCounts,
    pub t1_unrecorded: u64,
    pub follow_up_applied: u64,
    pub follow_up_ignored: u64,
    pub unauthenticated: u64,
    pub network_rtt_ns: DistSummary,
    pub turnaround_ns: DistSummary,
    pub app_rtt_ns: DistSummary,
    pub stack_overhead_ns: DistSummary,
    pub timestamping: &'a str,
    /// "tai" or "monotonic": the clock of the kernel stamps (absent with socket stamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_clock: Option<&'a str>,
    pub note: &'a str,
}

impl SessionStats {
    pub fn loss_pct(&self) -> f64 {
        loss_ratio(self.lost, self.received) * 100.0
    }

    /// Counts a sample and records its figures.
    pub fn sample(&mut self, m: &Figures) {
        self.received += 1;
        self.network_rtt.record(m.network_rtt);
        self.turnaround.record(m.turnaround);
        self.app_rtt.record(m.app_rtt);
        self.stack_overhead.record(m.stack_overhead);
    }

    pub fn record<'a>(
        &'a self,
        peer: String,
        timestamping: &'a str,
        kernel_clock: Option<&'a str>,
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
            rejected: &self.rejected,
            t1_unrecorded: self.t1_unrecorded,
            follow_up_applied: self.follow_up_applied,
            follow_up_ignored: self.follow_up_ignored,
            unauthenticated: self.unauthenticated,
            network_rtt_ns: self.network_rtt.summary(),
            turnaround_ns: self.turnaround.summary(),
            app_rtt_ns: self.app_rtt.summary(),
            stack_overhead_ns: self.stack_overhead.summary(),
            timestamping,
            kernel_clock,
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
