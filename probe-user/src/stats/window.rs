//! Per-peer, per-window statistics with memory that does not grow with uptime or probe count.
//!
//! At the default 1 probe/s and 10 s windows a window holds about ten samples per figure, so
//! an HDR histogram per figure and peer (tens of KiB each) would dominate the agent's memory
//! with 1000 peers. A window keeps its raw samples up to `SPILL` and moves them into an HDR
//! histogram (3 significant digits) only when there are more; both are reused across windows.
use hdrhistogram::Histogram;

use crate::pb;

/// Samples kept raw before a window switches to an HDR histogram.
const SPILL: usize = 256;

fn new_histogram() -> Histogram<u32> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

fn record_clamped(h: &mut Histogram<u32>, ns: i64) {
    // Auto-resizing histogram: recording a u64 cannot fail.
    let _ = h.record(ns.max(0) as u64);
}

/// One figure (e.g. network RTT) over one window, in nanoseconds.
#[derive(Default)]
pub struct WindowDist {
    raw: Vec<i64>,
    hist: Option<Histogram<u32>>,
    count: u64,
    min: i64,
    max: i64,
    sum: i128,
    /// The samples moved into `hist`. Negative values (a third-party reflector's clock
    /// disagreeing with ours) are recorded there as 0; min keeps the true value.
    spilled: bool,
}

impl WindowDist {
    pub fn record(&mut self, ns: i64) {
        if self.count == 0 {
            self.min = ns;
            self.max = ns;
        } else {
            self.min = self.min.min(ns);
            self.max = self.max.max(ns);
        }
        self.count += 1;
        self.sum += ns as i128;
        if !self.spilled && self.raw.len() < SPILL {
            self.raw.push(ns);
            return;
        }
        record_clamped(self.spill(), ns);
    }

    /// Moves the raw samples into the HDR histogram (once per window) and returns it.
    fn spill(&mut self) -> &mut Histogram<u32> {
        let h = self.hist.get_or_insert_with(new_histogram);
        if !self.spilled {
            self.spilled = true;
            for v in self.raw.drain(..) {
                record_clamped(h, v);
            }
        }
        h
    }

    /// Adds every sample of `other` (e.g. one pair's window into its zone's): the result is
    /// the distribution of both sample sets, as if each sample had been recorded here.
    pub fn absorb(&mut self, other: &WindowDist) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
        if !self.spilled && !other.spilled && self.raw.len() + other.raw.len() <= SPILL {
            self.raw.extend_from_slice(&other.raw);
            return;
        }
        let h = self.spill();
        match other.hist.as_ref().filter(|_| other.spilled) {
            // Auto-resizing histograms of the same precision: adding cannot fail.
            Some(o) => {
                let _ = h.add(o);
            }
            None => {
                for &v in &other.raw {
                    record_clamped(h, v);
                }
            }
        }
    }

    /// The samples as an HdrHistogram, V2 serialization with deflate (the format every
    /// HdrHistogram implementation reads); empty when the window has no sample. Negative
    /// values are recorded as 0, as in the quantiles.
    pub fn hdr_v2_deflate(&self) -> Vec<u8> {
        if self.count == 0 {
            return Vec::new();
        }
        let mut tmp;
        let h = match self.hist.as_ref().filter(|_| self.spilled) {
            Some(h) => h,
            None => {
                tmp = new_histogram();
                for &v in &self.raw {
                    record_clamped(&mut tmp, v);
                }
                &tmp
            }
        };
        // Into a Vec: serializing cannot fail.
        super::hdr::encode(h).unwrap_or_default()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Quantiles of the window: nearest-rank over the raw samples, or the HDR histogram's
    /// value at the quantile once it spilled. min and max are exact either way.
    pub fn quantiles(&mut self) -> pb::Quantiles {
        if self.count == 0 {
            return pb::Quantiles::default();
        }
        if !self.spilled {
            self.raw.sort_unstable();
        }
        let q = |p: f64| -> i64 {
            if self.spilled {
                let h = self.hist.as_ref().expect("spilled implies a histogram");
                h.value_at_quantile(p) as i64
            } else {
                // raw is sorted (above).
                let n = self.raw.len();
                let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
                self.raw[rank - 1]
            }
        };
        let clamp = |v: i64| v.clamp(self.min, self.max);
        pb::Quantiles {
            count: self.count,
            min: self.min,
            p50: clamp(q(0.50)),
            p90: clamp(q(0.90)),
            p99: clamp(q(0.99)),
            p999: clamp(q(0.999)),
            max: self.max,
            mean: self.sum as f64 / self.count as f64,
        }
    }

    /// Empties the window, keeping its allocations.
    pub fn reset(&mut self) {
        self.raw.clear();
        if let Some(h) = self.hist.as_mut() {
            h.reset();
        }
        self.spilled = false;
        self.count = 0;
        self.sum = 0;
    }
}

/// Everything counted towards one peer in one window.
#[derive(Default)]
pub struct WindowStats {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub network_rtt: WindowDist,
    pub turnaround: WindowDist,
    pub app_rtt: WindowDist,
    pub stack_overhead: WindowDist,
}

impl WindowStats {
    pub fn is_empty(&self) -> bool {
        self.sent == 0 && self.received == 0 && self.lost == 0 && self.duplicates == 0
    }

    /// Counts a sample and records its figures.
    pub fn sample(&mut self, m: &super::Figures) {
        self.received += 1;
        self.network_rtt.record(m.network_rtt);
        self.turnaround.record(m.turnaround);
        self.app_rtt.record(m.app_rtt);
        self.stack_overhead.record(m.stack_overhead);
    }

    pub fn loss_ratio(&self) -> f64 {
        super::loss_ratio(self.lost, self.received)
    }

    /// Fills the counting and distribution fields of a summary, then resets the window.
    pub fn drain_into(&mut self, s: &mut pb::WindowSummary) {
        s.sent = self.sent;
        s.received = self.received;
        s.lost = self.lost;
        s.duplicates = self.duplicates;
        s.reordered = self.reordered;
        s.late = self.late;
        s.loss_ratio = self.loss_ratio();
        s.network_rtt_ns = Some(self.network_rtt.quantiles());
        s.turnaround_ns = Some(self.turnaround.quantiles());
        s.app_rtt_ns = Some(self.app_rtt.quantiles());
        s.stack_overhead_ns = Some(self.stack_overhead.quantiles());
        self.sent = 0;
        self.received = 0;
        self.lost = 0;
        self.duplicates = 0;
        self.reordered = 0;
        self.late = 0;
        self.network_rtt.reset();
        self.turnaround.reset();
        self.app_rtt.reset();
        self.stack_overhead.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_quantiles_are_nearest_rank() {
        let mut d = WindowDist::default();
        for v in [50, 10, 40, 20, 30] {
            d.record(v);
        }
        let q = d.quantiles();
        assert_eq!((q.count, q.min, q.max), (5, 10, 50));
        assert_eq!(q.p50, 30);
        assert_eq!(q.p90, 50);
        assert_eq!(q.mean, 30.0);
    }

    #[test]
    fn spilled_window_matches_raw_within_hdr_precision() {
        let mut d = WindowDist::default();
        for v in 1..=10_000i64 {
            d.record(v * 1_000);
        }
        let q = d.quantiles();
        assert_eq!(q.count, 10_000);
        assert_eq!((q.min, q.max), (1_000, 10_000_000));
        for (got, want) in [
            (q.p50, 5_000_000i64),
            (q.p99, 9_900_000),
            (q.p999, 9_990_000),
        ] {
            assert!((got - want).abs() <= want / 1000 + 1, "{got} vs {want}");
        }
    }

    #[test]
    fn reset_keeps_allocations_and_forgets_values() {
        let mut d = WindowDist::default();
        for v in 0..1000 {
            d.record(v);
        }
        d.reset();
        assert_eq!(d.quantiles().count, 0);
        d.record(7);
        let q = d.quantiles();
        assert_eq!((q.count, q.min, q.p50, q.max), (1, 7, 7, 7));
        assert!(
            d.hist.is_some(),
            "the histogram stays allocated for the next busy window"
        );
    }

    #[test]
    fn negative_values_are_kept_in_min() {
        let mut d = WindowDist::default();
        d.record(-5);
        d.record(10);
        let q = d.quantiles();
        assert_eq!(q.min, -5);
        assert_eq!(q.p50, -5);
    }

    #[test]
    fn drain_resets_counts() {
        let mut w = WindowStats {
            sent: 10,
            received: 9,
            lost: 1,
            ..Default::default()
        };
        w.network_rtt.record(5_000);
        let mut s = pb::WindowSummary::default();
        w.drain_into(&mut s);
        assert_eq!((s.sent, s.received, s.lost), (10, 9, 1));
        assert!((s.loss_ratio - 0.1).abs() < 1e-9);
        assert_eq!(s.network_rtt_ns.unwrap().p50, 5_000);
        assert!(w.is_empty());
        assert_eq!(w.network_rtt.count(), 0);
    }
}
