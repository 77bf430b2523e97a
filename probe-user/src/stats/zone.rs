//! Per destination zone and window: the aggregate of the pairs one agent probes in that zone
//! (the `ZoneSummary` record), so a zone × zone view exists however few pairs are probed.
use std::collections::BTreeMap;

use super::window::{WindowDist, WindowStats};
use crate::pb;

/// Members per zone (`zone -> count`, the empty label is a zone too): what a `ZoneSummary`'s
/// `dst_zone_members` is read from.
pub type ZoneSizes = BTreeMap<String, u32>;

/// Counts the members of each zone, from their zone labels.
pub fn zone_sizes<'a>(zones: impl IntoIterator<Item = &'a str>) -> ZoneSizes {
    let mut m = ZoneSizes::new();
    for z in zones {
        *m.entry(z.to_string()).or_default() += 1;
    }
    m
}

/// Everything counted towards one zone in one window; allocations are kept across windows.
#[derive(Default)]
pub struct ZoneWindow {
    pairs: u32,
    sent: u64,
    received: u64,
    lost: u64,
    /// Every sample of every pair.
    network_rtt: WindowDist,
    /// One value per pair with a sample: its p50.
    pair_p50: WindowDist,
}

impl ZoneWindow {
    /// Adds one pair's window. Call it before the pair's window is drained.
    pub fn add_pair(&mut self, w: &mut WindowStats) {
        self.pairs += 1;
        self.sent += w.sent;
        self.received += w.received;
        self.lost += w.lost;
        self.network_rtt.absorb(&w.network_rtt);
        if w.network_rtt.count() > 0 {
            self.pair_p50.record(w.network_rtt.quantiles().p50);
        }
    }

    /// Pairs added since the last drain.
    pub fn pairs(&self) -> u32 {
        self.pairs
    }

    /// Fills the counting and distribution fields of a zone summary, then resets the window.
    pub fn drain_into(&mut self, z: &mut pb::ZoneSummary) {
        z.pairs = self.pairs;
        z.sent = self.sent;
        z.received = self.received;
        z.lost = self.lost;
        z.loss_ratio = super::loss_ratio(self.lost, self.received);
        z.network_rtt_ns = Some(self.network_rtt.quantiles());
        z.network_rtt_hdr = self.network_rtt.hdr_v2_deflate();
        z.pair_p50_ns = Some(self.pair_p50.quantiles());
        (self.pairs, self.sent, self.received, self.lost) = (0, 0, 0, 0);
        self.network_rtt.reset();
        self.pair_p50.reset();
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::{
        Histogram,
        serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
    };

    use super::*;
    use crate::stats::Figures;

    fn pair(sent: u64, lost: u64, rtts: impl IntoIterator<Item = i64>) -> WindowStats {
        let mut w = WindowStats {
            sent,
            lost,
            ..Default::default()
        };
        for r in rtts {
            w.sample(&Figures {
                network_rtt: r,
                ..Default::default()
            });
        }
        w
    }

    fn decode(bytes: &[u8]) -> Histogram<u64> {
        Deserializer::new()
            .deserialize(&mut &bytes[..])
            .expect("a V2 deflate histogram")
    }

    #[test]
    fn zone_sizes_count_every_label_the_empty_one_too() {
        let m = zone_sizes(["a", "b", "a", ""]);
        assert_eq!(
            m,
            ZoneSizes::from([("".into(), 1), ("a".into(), 2), ("b".into(), 1)])
        );
    }

    #[test]
    fn zone_counts_pairs_and_loss_over_all_pairs() {
        let mut z = ZoneWindow::default();
        let mut a = pair(10, 0, (1..=10).map(|i| i * 1_000));
        let mut b = pair(10, 5, (1..=5).map(|i| i * 100_000));
        let mut c = pair(4, 4, []);
        for w in [&mut a, &mut b, &mut c] {
            z.add_pair(w);
        }
        assert_eq!(z.pairs(), 3);
        let mut s = pb::ZoneSummary::default();
        z.drain_into(&mut s);
        assert_eq!((s.pairs, s.sent, s.received, s.lost), (3, 24, 15, 9));
        assert!(
            (s.loss_ratio - 9.0 / 24.0).abs() < 1e-12,
            "{}",
            s.loss_ratio
        );
        let q = s.network_rtt_ns.unwrap();
        assert_eq!((q.count, q.min, q.max), (15, 1_000, 500_000));
        // Pairs with samples only: a's p50 (5 µs) and b's (300 µs).
        let p = s.pair_p50_ns.unwrap();
        assert_eq!((p.count, p.min, p.max), (2, 5_000, 300_000));
        // Drained: the next window starts empty.
        assert_eq!(z.pairs(), 0);
        let mut next = pb::ZoneSummary::default();
        z.drain_into(&mut next);
        assert_eq!((next.sent, next.network_rtt_ns.unwrap().count), (0, 0));
        assert!(next.network_rtt_hdr.is_empty(), "no sample, no histogram");
    }

    /// The zone's histogram is the histogram of every sample of its pairs, whether the pairs
    /// kept raw samples or spilled into their own histograms.
    #[test]
    fn merged_histogram_equals_the_histogram_of_all_samples() {
        let small: Vec<i64> = (0..40).map(|i| 20_000 + i * 37).collect();
        let big: Vec<i64> = (0..3_000).map(|i| 50_000 + (i * 7_919) % 900_000).collect();
        let odd = vec![-3, 1, 12_345_678];
        let mut all = Histogram::<u64>::new(3).unwrap();
        for &v in small.iter().chain(&big).chain(&odd) {
            all.record(v.max(0) as u64).unwrap();
        }
        let mut z = ZoneWindow::default();
        for rtts in [&small, &big, &odd] {
            z.add_pair(&mut pair(rtts.len() as u64, 0, rtts.iter().copied()));
        }
        let mut s = pb::ZoneSummary::default();
        z.drain_into(&mut s);
        let merged = decode(&s.network_rtt_hdr);
        assert_eq!(merged, all);
        let q = s.network_rtt_ns.unwrap();
        assert_eq!(q.count, all.len());
        assert_eq!((q.min, q.max), (-3, 12_345_678), "exact extremes");
        for (got, p) in [(q.p50, 0.5), (q.p90, 0.9), (q.p99, 0.99)] {
            assert_eq!(got as u64, all.value_at_quantile(p), "p{p}");
        }
        // What a consumer does with two agents' records: add the decoded histograms.
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&all, &mut bytes)
            .unwrap();
        let mut twice = decode(&bytes);
        twice.add(&merged).unwrap();
        assert_eq!(twice.len(), 2 * all.len());
    }

    #[test]
    fn a_zone_of_few_samples_keeps_exact_quantiles() {
        let mut z = ZoneWindow::default();
        z.add_pair(&mut pair(3, 0, [30, 10, 20]));
        z.add_pair(&mut pair(2, 0, [50, 40]));
        let mut s = pb::ZoneSummary::default();
        z.drain_into(&mut s);
        let q = s.network_rtt_ns.unwrap();
        assert_eq!((q.count, q.p50, q.p90, q.mean), (5, 30, 50, 30.0));
        assert_eq!(decode(&s.network_rtt_hdr).len(), 5);
    }
}
