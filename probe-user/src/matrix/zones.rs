//! The zone × zone matrix: per (src zone, dst zone), what the agents of the src zone measured
//! towards the dst zone in their current windows, merged.
//!
//! Per agent and dst zone the contribution is its latest current zone summary (counts summed,
//! `network_rtt_hdr` histograms merged, so the quantiles are those of the union of the
//! samples); an agent without one (zone summaries not written, or an older agent) contributes
//! its current pair summaries towards that zone instead. A contribution without a usable
//! histogram (pair summaries carry quantiles only) is rebuilt from its quantiles, and the
//! cell's quantiles are then approximate.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use hdrhistogram::Histogram;

use super::Model;
use crate::{
    pb,
    stats::{self, hdr},
};

/// How the samples behind a summary's quantiles are rebuilt, per thousand: at p50, p90, p99,
/// p99.9 and max. One summary rebuilt this way gives back its own p50, p90, p99 and p99.9.
const REBUILD: [u64; 5] = [500, 400, 90, 9, 1];
const REBUILD_SCALE: u64 = 1000;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneCell {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Agents merged and the node pairs behind them.
    pub agents: usize,
    pub pairs: u64,
    /// Network RTT quantiles (ns) over the merged samples; `None` without samples.
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    /// Every contribution with samples carried its histogram: the quantiles are exact.
    pub exact: bool,
}

impl ZoneCell {
    /// lost / resolved; `None` when nothing was resolved.
    pub fn loss_ratio(&self) -> Option<f64> {
        (self.received + self.lost > 0).then(|| stats::loss_ratio(self.lost, self.received))
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneMatrix {
    /// Zones, sorted; "" stands for nodes without a zone label.
    pub zones: Vec<String>,
    /// Members per zone: nodes seen there, or as many as an agent says it knew of.
    pub members: BTreeMap<String, u64>,
    /// Cells with at least one contribution, by (src zone, dst zone).
    pub cells: BTreeMap<(String, String), ZoneCell>,
    /// Zones with an agent reporting: their empty cells are not probed, rather than missing.
    pub reporting: BTreeSet<String>,
    /// Ordered zone pairs that can hold a node pair (a zone of one node has none to itself).
    pub possible: usize,
    /// Histograms that could not be used (bad bytes, or a count disagreeing with the
    /// quantiles'); their quantiles were used instead.
    pub bad_histograms: u64,
}

impl ZoneMatrix {
    pub fn build(m: &Model) -> ZoneMatrix {
        let zone_of = |n: &str| m.zone(n).unwrap_or_default().to_string();
        let mut accs: BTreeMap<(String, String), Acc> = BTreeMap::new();
        let mut bad_histograms = 0;
        let mut from_zone_summaries: HashSet<(&str, &str)> = HashSet::new();
        let mut size: BTreeMap<String, u64> = BTreeMap::new();
        for n in m.nodes() {
            *size.entry(zone_of(n)).or_default() += 1;
        }
        for z in m.zone_summaries() {
            let s = size.entry(z.dst_zone.clone()).or_default();
            *s = (*s).max(u64::from(z.dst_zone_members));
            if !m.is_current(z.window_start_tai_ns, z.window_length_ns) {
                continue;
            }
            from_zone_summaries.insert((&z.src, &z.dst_zone));
            let acc = accs
                .entry((zone_of(&z.src), z.dst_zone.clone()))
                .or_default();
            acc.counts(&z.src, z.sent, z.received, z.lost, u64::from(z.pairs));
            bad_histograms += acc.samples(&z.network_rtt_hdr, z.network_rtt_ns.as_ref());
        }
        for s in m.pair_summaries() {
            let dst_zone = zone_of(&s.dst);
            if !m.is_current(s.window_start_tai_ns, s.window_length_ns)
                || from_zone_summaries.contains(&(s.src.as_str(), dst_zone.as_str()))
            {
                continue;
            }
            let acc = accs.entry((zone_of(&s.src), dst_zone)).or_default();
            acc.counts(&s.src, s.sent, s.received, s.lost, 1);
            acc.samples(&[], s.network_rtt_ns.as_ref());
        }
        let possible = size
            .keys()
            .flat_map(|a| size.keys().map(move |b| (a, b)))
            .filter(|(a, b)| a != b || size[*a] >= 2)
            .count();
        ZoneMatrix {
            reporting: m.nodes().filter(|n| m.reporting(n)).map(zone_of).collect(),
            zones: size.keys().cloned().collect(),
            members: size,
            cells: accs.into_iter().map(|(k, a)| (k, a.finish())).collect(),
            possible,
            bad_histograms,
        }
    }

    /// A zone with room for a node pair inside it.
    pub fn pairs_inside(&self, zone: &str) -> bool {
        self.members.get(zone).is_some_and(|&n| n >= 2)
    }

    /// Zone pairs with at least one measured node pair.
    pub fn covered(&self) -> usize {
        self.cells.len()
    }

    /// Some node carries a zone label.
    pub fn has_zones(&self) -> bool {
        self.zones.iter().any(|z| !z.is_empty())
    }
}

/// One cell being merged.
#[derive(Default)]
struct Acc {
    srcs: BTreeSet<String>,
    sent: u64,
    received: u64,
    lost: u64,
    pairs: u64,
    /// The contributions' own histograms, merged.
    hist: Option<Histogram<u64>>,
    /// (value, weight) of the contributions rebuilt from quantiles, weights × REBUILD_SCALE.
    rebuilt: Vec<(u64, u64)>,
}

impl Acc {
    fn counts(&mut self, src: &str, sent: u64, received: u64, lost: u64, pairs: u64) {
        if !self.srcs.contains(src) {
            self.srcs.insert(src.to_string());
        }
        self.sent = self.sent.saturating_add(sent);
        self.received = self.received.saturating_add(received);
        self.lost = self.lost.saturating_add(lost);
        self.pairs = self.pairs.saturating_add(pairs);
    }

    /// Adds a contribution's samples: its histogram when usable, else its quantiles rebuilt.
    /// Returns 1 when it had a histogram that could not be used.
    fn samples(&mut self, hdr_bytes: &[u8], q: Option<&pb::Quantiles>) -> u64 {
        let q = q.filter(|q| q.count > 0);
        let mut bad = 0;
        if !hdr_bytes.is_empty() {
            match hdr::decode(hdr_bytes) {
                // The histogram and the quantiles describe the same samples.
                Ok(h) if q.is_none_or(|q| q.count == h.len()) => {
                    let added = match &mut self.hist {
                        None => {
                            self.hist = Some(h);
                            true
                        }
                        Some(all) => all.add(&h).is_ok(),
                    };
                    if added {
                        return 0;
                    }
                    bad = 1;
                }
                _ => bad = 1,
            }
        }
        if let Some(q) = q {
            let n = q.count.min(hdr::MAX_COUNT);
            for (v, w) in [q.p50, q.p90, q.p99, q.p999, q.max]
                .into_iter()
                .zip(REBUILD)
            {
                self.rebuilt.push((v.max(0) as u64, n * w));
            }
        }
        bad
    }

    fn finish(self) -> ZoneCell {
        let exact = self.rebuilt.is_empty();
        let hist = if exact {
            self.hist
        } else {
            // Exact samples and rebuilt ones on one scale.
            let mut all: Histogram<u64> = Histogram::new(3).expect("3 significant digits");
            all.auto(true);
            for v in self.hist.iter().flat_map(|h| h.iter_recorded()) {
                let _ = all.record_n(
                    v.value_iterated_to(),
                    v.count_at_value().saturating_mul(REBUILD_SCALE),
                );
            }
            for (v, w) in self.rebuilt {
                let _ = all.record_n(v, w);
            }
            Some(all)
        };
        let hist = hist.filter(|h| !h.is_empty());
        ZoneCell {
            sent: self.sent,
            received: self.received,
            lost: self.lost,
            agents: self.srcs.len(),
            pairs: self.pairs,
            p50: hist.as_ref().map(|h| h.value_at_quantile(0.50)),
            p99: hist.as_ref().map(|h| h.value_at_quantile(0.99)),
            exact,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matrix::model::tests::{LEN, at};

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new(3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// A zone summary of window `seq` from `src` (in `src_zone`) towards `dst_zone`, carrying
    /// `samples` as its histogram and quantiles.
    pub(crate) fn zone_at(
        src: &str,
        src_zone: &str,
        dst_zone: &str,
        seq: u64,
        samples: &[u64],
        lost: u64,
    ) -> pb::ZoneSummary {
        let h = hist(samples.iter().copied());
        let received = samples.len() as u64;
        pb::ZoneSummary {
            src: src.into(),
            src_zone: src_zone.into(),
            dst_zone: dst_zone.into(),
            window_seq: seq,
            window_start_tai_ns: seq * LEN,
            window_length_ns: LEN,
            pairs: 2,
            dst_zone_members: 2,
            sent: received + lost,
            received,
            lost,
            loss_ratio: stats::loss_ratio(lost, received),
            network_rtt_ns: Some(pb::Quantiles {
                count: h.len(),
                p50: h.value_at_quantile(0.5) as i64,
                p99: h.value_at_quantile(0.99) as i64,
                ..Default::default()
            }),
            network_rtt_hdr: hdr::encode(&h).unwrap(),
            ..Default::default()
        }
    }

    fn zoned(src: &str, sz: &str, dst: &str, dz: &str, seq: u64, p50: i64) -> pb::WindowSummary {
        let mut s = at(src, dst, seq, p50);
        s.src_zone = sz.into();
        s.dst_zone = dz.into();
        s
    }

    #[test]
    fn zone_summaries_merge_counts_and_histograms_exactly() {
        let a: Vec<u64> = (1..=300).map(|i| 40_000 + i * 97).collect();
        let b: Vec<u64> = (1..=50).map(|i| 900_000 + i * 1_013).collect();
        let mut m = Model::default();
        m.ingest(zone_at("a1", "za", "zb", 5, &a, 3)).unwrap();
        m.ingest(zone_at("a2", "za", "zb", 5, &b, 1)).unwrap();
        // a1's pair summaries towards zb are in its zone summary already: not counted twice.
        m.ingest(zoned("a1", "za", "b1", "zb", 5, 1)).unwrap();
        let zm = ZoneMatrix::build(&m);
        let c = &zm.cells[&("za".to_string(), "zb".to_string())];
        assert_eq!((c.received, c.lost, c.sent), (350, 4, 354));
        assert_eq!((c.agents, c.pairs), (2, 4));
        assert!(c.exact);
        let union = hist(a.iter().chain(&b).copied());
        assert_eq!(c.p50, Some(union.value_at_quantile(0.5)));
        assert_eq!(c.p99, Some(union.value_at_quantile(0.99)));
        assert_eq!(c.loss_ratio(), Some(4.0 / 354.0));
        assert_eq!(zm.bad_histograms, 0);
        assert_eq!(zm.covered(), 1);
        // za (a1, a2) and zb (b1): za->zb, zb->za, za->za (two nodes); zb->zb has one node,
        // but the agents say zb has 2 members.
        assert_eq!(zm.possible, 4);
        assert!(zm.reporting.contains("za") && !zm.reporting.contains("zb"));
    }

    #[test]
    fn without_zone_summaries_pairs_are_merged_approximately() {
        let mut m = Model::default();
        m.ingest(zoned("a1", "za", "b1", "zb", 5, 100_000)).unwrap();
        m.ingest(zoned("a1", "za", "b2", "zb", 5, 300_000)).unwrap();
        m.ingest(zoned("b1", "zb", "a1", "za", 5, 200_000)).unwrap();
        // Not current (more than 3 windows behind): left out.
        m.ingest(zoned("a2", "za", "b1", "zb", 1, 9_000_000))
            .unwrap();
        let zm = ZoneMatrix::build(&m);
        let c = &zm.cells[&("za".to_string(), "zb".to_string())];
        assert!(!c.exact);
        assert_eq!((c.agents, c.pairs, c.received, c.lost), (1, 2, 18, 2));
        let p50 = c.p50.unwrap();
        assert!((100_000..=300_000).contains(&p50), "{p50}");
        // One pair alone gives back its own quantiles (within the histogram's precision).
        let back = &zm.cells[&("zb".to_string(), "za".to_string())];
        assert!(back.p50.unwrap().abs_diff(200_000) <= 200, "{back:?}");
        assert!(back.p99.unwrap().abs_diff(400_000) <= 400, "{back:?}");
        assert_eq!(zm.zones, ["za", "zb"]);
    }

    #[test]
    fn a_bad_histogram_falls_back_to_its_quantiles() {
        let mut m = Model::default();
        let mut z = zone_at("a1", "za", "zb", 5, &[50_000, 60_000], 0);
        z.network_rtt_hdr.truncate(10);
        m.ingest(z).unwrap();
        let mut z = zone_at("a2", "za", "zb", 5, &[70_000], 0);
        // A histogram of other samples than its quantiles say.
        z.network_rtt_hdr = hdr::encode(&hist([1, 2, 3])).unwrap();
        m.ingest(z).unwrap();
        let zm = ZoneMatrix::build(&m);
        assert_eq!(zm.bad_histograms, 2);
        let c = &zm.cells[&("za".to_string(), "zb".to_string())];
        assert!(!c.exact);
        assert_eq!(c.received, 3);
        assert!(c.p50.is_some());
    }
}
