//! Per-pair state: the latest window summary of every (src, dst), the latest zone summary of
//! every (src, dst zone), which sources report and which pairs are stale.
//!
//! Time is the data's own: "now" is the newest window seen, so staleness means the same on a
//! recorded file as on a live topic.
use std::{
    cell::OnceCell,
    collections::{BTreeMap, BTreeSet, HashSet},
};

use super::{MatrixError, zones::ZoneMatrix};
use crate::pb;

/// A pair whose latest window is more than this many of its window lengths behind the newest
/// window is stale (its agent, or the path, stopped reporting).
pub const STALE_WINDOWS: u64 = 3;

/// How current a pair's latest summary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// No new window for more than [`STALE_WINDOWS`] window lengths.
    Stale,
    /// The peer deregistered: this was its last summary.
    Left,
}

/// What one [`Model::ingest`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// The summary starts a window newer than any seen before.
    NewWindow,
    /// The pair's latest summary was replaced (same or newer window).
    Updated,
    /// Older than the pair's latest summary (a replay, or out of order): ignored.
    Old,
}

/// A record the matrix reads: one pair's window, or one agent's window towards a zone.
#[derive(Clone, Debug, PartialEq)]
pub enum Summary {
    Pair(pb::WindowSummary),
    Zone(pb::ZoneSummary),
}

impl From<pb::WindowSummary> for Summary {
    fn from(s: pb::WindowSummary) -> Self {
        Summary::Pair(s)
    }
}

impl From<pb::ZoneSummary> for Summary {
    fn from(z: pb::ZoneSummary) -> Self {
        Summary::Zone(z)
    }
}

impl Summary {
    pub fn window_start_tai_ns(&self) -> u64 {
        match self {
            Summary::Pair(s) => s.window_start_tai_ns,
            Summary::Zone(z) => z.window_start_tai_ns,
        }
    }
}

#[derive(Debug, Default)]
pub struct Model {
    pairs: BTreeMap<(String, String), pb::WindowSummary>,
    /// The latest zone summary per (src node, dst zone).
    zone_pairs: BTreeMap<(String, String), pb::ZoneSummary>,
    nodes: BTreeSet<String>,
    zones: BTreeMap<String, String>,
    /// Start and length of each source's newest record of either kind: whether it reports.
    reported: BTreeMap<String, (u64, u64)>,
    /// Start times of every window seen (distinct windows, for the status line).
    starts: HashSet<u64>,
    /// Start (TAI ns) and length of the newest window.
    newest: Option<(u64, u64)>,
    /// Pair summaries ingested (not counting ignored ones).
    pub summaries: u64,
    /// Zone summaries ingested (not counting ignored ones).
    pub zone_summaries: u64,
    /// The zone matrix of the current state, built when first asked for.
    zone_matrix: OnceCell<ZoneMatrix>,
}

impl Model {
    pub fn ingest(&mut self, s: impl Into<Summary>) -> Result<Ingested, MatrixError> {
        match s.into() {
            Summary::Pair(s) => self.ingest_pair(s),
            Summary::Zone(z) => self.ingest_zone(z),
        }
    }

    fn ingest_pair(&mut self, s: pb::WindowSummary) -> Result<Ingested, MatrixError> {
        let bad = |problem| MatrixError::BadSummary {
            src: s.src.clone(),
            dst: s.dst.clone(),
            problem,
        };
        if s.src.is_empty() || s.dst.is_empty() {
            return Err(bad("empty node id"));
        }
        if s.src == s.dst {
            return Err(bad("a node measuring itself"));
        }
        if s.window_length_ns == 0 {
            return Err(bad("window_length_ns is 0"));
        }
        let key = (s.src.clone(), s.dst.clone());
        if self
            .pairs
            .get(&key)
            .is_some_and(|old| old.window_start_tai_ns > s.window_start_tai_ns)
        {
            return Ok(Ingested::Old);
        }
        for (node, zone) in [(&s.src, &s.src_zone), (&s.dst, &s.dst_zone)] {
            self.note_node(node, zone);
        }
        let r = self.note_window(&s.src, s.window_start_tai_ns, s.window_length_ns);
        self.summaries += 1;
        self.pairs.insert(key, s);
        Ok(r)
    }

    fn ingest_zone(&mut self, z: pb::ZoneSummary) -> Result<Ingested, MatrixError> {
        let bad = |problem| MatrixError::BadSummary {
            src: z.src.clone(),
            dst: format!("zone {:?}", z.dst_zone),
            problem,
        };
        if z.src.is_empty() {
            return Err(bad("empty node id"));
        }
        if z.window_length_ns == 0 {
            return Err(bad("window_length_ns is 0"));
        }
        let key = (z.src.clone(), z.dst_zone.clone());
        if self
            .zone_pairs
            .get(&key)
            .is_some_and(|old| old.window_start_tai_ns > z.window_start_tai_ns)
        {
            return Ok(Ingested::Old);
        }
        self.note_node(&z.src, &z.src_zone);
        let r = self.note_window(&z.src, z.window_start_tai_ns, z.window_length_ns);
        self.zone_summaries += 1;
        self.zone_pairs.insert(key, z);
        Ok(r)
    }

    fn note_node(&mut self, node: &str, zone: &str) {
        if !self.nodes.contains(node) {
            self.nodes.insert(node.to_string());
        }
        if !zone.is_empty() && self.zone(node) != Some(zone) {
            self.zones.insert(node.to_string(), zone.to_string());
        }
    }

    /// Records a window `src` reported; whether it is the newest seen.
    fn note_window(&mut self, src: &str, start: u64, len: u64) -> Ingested {
        self.zone_matrix = OnceCell::new();
        self.starts.insert(start);
        let r = self.reported.entry(src.to_string()).or_insert((start, len));
        if start > r.0 {
            *r = (start, len);
        }
        if self.newest.is_none_or(|(newest, _)| start > newest) {
            self.newest = Some((start, len));
            Ingested::NewWindow
        } else {
            Ingested::Updated
        }
    }

    /// A node known from elsewhere (the expected file): it gets a row and a column, so a node
    /// that never reports shows up as missing data.
    pub fn add_node(&mut self, id: &str) {
        self.zone_matrix = OnceCell::new();
        self.nodes.insert(id.to_string());
    }

    /// Node ids, sorted.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    pub fn zone(&self, node: &str) -> Option<&str> {
        self.zones.get(node).map(String::as_str)
    }

    pub fn get(&self, src: &str, dst: &str) -> Option<&pb::WindowSummary> {
        self.pairs.get(&(src.to_string(), dst.to_string()))
    }

    /// The latest summary of every pair.
    pub fn pair_summaries(&self) -> impl Iterator<Item = &pb::WindowSummary> {
        self.pairs.values()
    }

    /// The latest zone summary of every (src node, dst zone).
    pub fn zone_summaries(&self) -> impl Iterator<Item = &pb::ZoneSummary> {
        self.zone_pairs.values()
    }

    /// The zone matrix of the current state (built once per state).
    pub fn zone_matrix(&self) -> &ZoneMatrix {
        self.zone_matrix
            .get_or_init(|| super::zones::ZoneMatrix::build(self))
    }

    /// Start (TAI ns) and length (ns) of the newest window seen.
    pub fn newest(&self) -> Option<(u64, u64)> {
        self.newest
    }

    pub fn windows_seen(&self) -> usize {
        self.starts.len()
    }

    /// A window starting at `start` is at most [`STALE_WINDOWS`] of its lengths behind the
    /// newest window.
    pub fn is_current(&self, start: u64, len: u64) -> bool {
        let newest = self.newest.map_or(0, |(start, _)| start);
        newest.saturating_sub(start) <= STALE_WINDOWS.saturating_mul(len)
    }

    pub fn freshness(&self, s: &pb::WindowSummary) -> Freshness {
        if s.peer_left {
            Freshness::Left
        } else if self.is_current(s.window_start_tai_ns, s.window_length_ns) {
            Freshness::Fresh
        } else {
            Freshness::Stale
        }
    }

    /// `src` reports: its newest record (a pair's or a zone's) is current. Its pairs without a
    /// current summary are then not probed (an agent reports every peer of its pinglist every
    /// window, lost or not), rather than missing.
    pub fn reporting(&self, src: &str) -> bool {
        self.reported
            .get(src)
            .is_some_and(|&(start, len)| self.is_current(start, len))
    }

    /// Every pair (and zone pair) that reported the window before the newest one has reported
    /// the newest one too, so the newest window can be shown as complete without waiting for
    /// the next. Never for the first window seen: who will report is not known yet.
    pub fn newest_complete(&self) -> bool {
        let Some((start, _)) = self.newest else {
            return false;
        };
        let previous = |s: u64, len: u64| s.saturating_add(len) == start;
        self.starts.len() >= 2
            && !self
                .pairs
                .values()
                .any(|s| !s.peer_left && previous(s.window_start_tai_ns, s.window_length_ns))
            && !self
                .zone_pairs
                .values()
                .any(|z| previous(z.window_start_tai_ns, z.window_length_ns))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sink::tests::summary;

    pub(crate) const LEN: u64 = 10_000_000_000;

    /// A real summary of window `seq` (aligned windows of 10 s, as the agent makes them).
    pub(crate) fn at(src: &str, dst: &str, seq: u64, p50_ns: i64) -> pb::WindowSummary {
        let mut s = summary(src, dst, seq);
        s.window_start_tai_ns = seq * LEN;
        s.window_length_ns = LEN;
        let q = s.network_rtt_ns.as_mut().unwrap();
        q.p50 = p50_ns;
        q.p99 = p50_ns * 2;
        s
    }

    #[test]
    fn keeps_the_latest_window_per_pair() {
        let mut m = Model::default();
        assert_eq!(
            m.ingest(at("a", "b", 100, 40_000)).unwrap(),
            Ingested::NewWindow
        );
        assert_eq!(
            m.ingest(at("b", "a", 100, 41_000)).unwrap(),
            Ingested::Updated
        );
        assert_eq!(
            m.ingest(at("a", "b", 101, 50_000)).unwrap(),
            Ingested::NewWindow
        );
        // An older window of a pair never replaces a newer one.
        assert_eq!(m.ingest(at("a", "b", 99, 1)).unwrap(), Ingested::Old);
        let p50 = |m: &Model, s, d| m.get(s, d).unwrap().network_rtt_ns.unwrap().p50;
        assert_eq!(p50(&m, "a", "b"), 50_000);
        assert_eq!(p50(&m, "b", "a"), 41_000);
        assert_eq!(m.newest(), Some((101 * LEN, LEN)));
        assert_eq!(m.windows_seen(), 2);
        assert_eq!(m.summaries, 3);
        assert_eq!(m.nodes().collect::<Vec<_>>(), ["a", "b"]);
        // Same window again (a duplicate delivery): the later copy wins.
        assert_eq!(
            m.ingest(at("a", "b", 101, 52_000)).unwrap(),
            Ingested::Updated
        );
        assert_eq!(p50(&m, "a", "b"), 52_000);
    }

    #[test]
    fn stale_after_three_windows_behind_the_newest() {
        let mut m = Model::default();
        m.ingest(at("a", "b", 10, 1)).unwrap();
        m.ingest(at("b", "a", 10, 1)).unwrap();
        m.ingest(at("a", "c", 13, 1)).unwrap();
        let ab = m.get("a", "b").unwrap().clone();
        // Exactly three window lengths behind: still fresh.
        assert_eq!(m.freshness(&ab), Freshness::Fresh);
        m.ingest(at("a", "c", 14, 1)).unwrap();
        assert_eq!(m.freshness(&ab), Freshness::Stale);
        assert_eq!(m.freshness(m.get("a", "c").unwrap()), Freshness::Fresh);
        // A new window makes the pair fresh again.
        m.ingest(at("a", "b", 14, 1)).unwrap();
        assert_eq!(m.freshness(m.get("a", "b").unwrap()), Freshness::Fresh);
        // peer_left is final whatever its age.
        let mut left = at("c", "a", 14, 1);
        left.peer_left = true;
        m.ingest(left).unwrap();
        assert_eq!(m.freshness(m.get("c", "a").unwrap()), Freshness::Left);
    }

    #[test]
    fn zones_and_extra_nodes() {
        let mut m = Model::default();
        let mut s = at("b", "a", 1, 1);
        s.src_zone = "eu-1b".into();
        s.dst_zone = "eu-1a".into();
        m.ingest(s).unwrap();
        m.add_node("c");
        assert_eq!(m.nodes().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.zone("a"), Some("eu-1a"));
        assert_eq!(m.zone("b"), Some("eu-1b"));
        assert_eq!(m.zone("c"), None);
    }

    #[test]
    fn rejects_unusable_summaries() {
        let mut m = Model::default();
        let mut s = at("a", "b", 1, 1);
        s.window_length_ns = 0;
        assert!(
            m.ingest(s)
                .unwrap_err()
                .to_string()
                .contains("window_length_ns")
        );
        assert!(m.ingest(at("a", "a", 1, 1)).is_err());
        assert!(m.ingest(at("", "a", 1, 1)).is_err());
        assert_eq!(m.summaries, 0);
        assert!(m.newest().is_none());
    }

    #[test]
    fn zone_summaries_make_their_source_report() {
        use crate::matrix::zones::tests::zone_at;
        let mut m = Model::default();
        m.ingest(at("a", "b", 1, 1)).unwrap();
        assert!(m.reporting("a") && !m.reporting("b"));
        // b writes only zone summaries: it reports too, and gets its zone.
        assert_eq!(
            m.ingest(zone_at("b", "z2", "z1", 2, &[10], 0)).unwrap(),
            Ingested::NewWindow
        );
        assert!(m.reporting("b"));
        assert_eq!(m.zone("b"), Some("z2"));
        assert_eq!((m.summaries, m.zone_summaries), (1, 1));
        assert_eq!(
            m.ingest(zone_at("b", "z2", "z1", 1, &[10], 0)).unwrap(),
            Ingested::Old
        );
        // Three windows behind the newest is still current; four is not.
        m.ingest(zone_at("c", "z1", "z2", 4, &[10], 0)).unwrap();
        assert!(m.reporting("a"));
        m.ingest(zone_at("c", "z1", "z2", 5, &[10], 0)).unwrap();
        assert!(!m.reporting("a") && m.reporting("b") && m.reporting("c"));
        let mut bad = zone_at("", "z1", "z2", 5, &[10], 0);
        assert!(m.ingest(bad.clone()).is_err());
        bad.src = "d".into();
        bad.window_length_ns = 0;
        assert!(m.ingest(bad).is_err());
    }

    #[test]
    fn newest_window_complete_when_every_reporting_pair_is_in() {
        let mut m = Model::default();
        m.ingest(at("a", "b", 1, 1)).unwrap();
        m.ingest(at("b", "a", 1, 1)).unwrap();
        // The first window: unknown who else reports.
        assert!(!m.newest_complete());
        m.ingest(at("a", "b", 2, 1)).unwrap();
        assert!(!m.newest_complete(), "b->a has not reported window 2 yet");
        m.ingest(at("b", "a", 2, 1)).unwrap();
        assert!(m.newest_complete());
        // A pair whose peer left is not waited for.
        let mut left = at("a", "b", 3, 1);
        left.peer_left = true;
        m.ingest(left).unwrap();
        m.ingest(at("b", "a", 3, 1)).unwrap();
        m.ingest(at("b", "a", 4, 1)).unwrap();
        assert!(m.newest_complete());
        // Zone summaries are waited for like pairs.
        let z = |seq| crate::matrix::zones::tests::zone_at("b", "", "z", seq, &[1], 0);
        m.ingest(z(4)).unwrap();
        m.ingest(at("b", "a", 5, 1)).unwrap();
        assert!(
            !m.newest_complete(),
            "b's zone summary of window 5 is not in"
        );
        m.ingest(z(5)).unwrap();
        assert!(m.newest_complete());
    }
}
