//! Reading what a lab's agents measured: window summaries (from Kafka, as JSON lines of
//! `meshprobe consume --json --kind summary`), indexed by pair and window, and the figures
//! the lab's checks and chaos verdicts are made of.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde_json::Value;

use meshprobe_harness::agent::{num, num2};

/// One window summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Obs {
    pub src: String,
    pub dst: String,
    pub seq: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub p50_ns: Option<i64>,
    pub p99_ns: Option<i64>,
    pub peer_left: bool,
}

impl Obs {
    pub fn from_json(v: &Value) -> Option<Obs> {
        if v["type"] != "summary" {
            return None;
        }
        Some(Obs {
            src: v["src"].as_str()?.to_string(),
            dst: v["dst"].as_str()?.to_string(),
            seq: num(v, "window_seq"),
            sent: num(v, "sent"),
            received: num(v, "received"),
            lost: num(v, "lost"),
            p50_ns: num2(v, "network_rtt_ns", "p50").filter(|_| num(v, "received") > 0),
            p99_ns: num2(v, "network_rtt_ns", "p99").filter(|_| num(v, "received") > 0),
            peer_left: v["peer_left"].as_bool().unwrap_or(false),
        })
    }
}

pub type Pair = (String, String);

/// Summaries by pair, then by window (a window may hold more than one: duplicates).
#[derive(Clone, Debug, Default)]
pub struct Windows {
    pub by_pair: BTreeMap<Pair, BTreeMap<u64, Vec<Obs>>>,
}

impl Windows {
    pub fn from_json(lines: &[Value]) -> Windows {
        let mut w = Windows::default();
        for o in lines.iter().filter_map(Obs::from_json) {
            w.by_pair
                .entry((o.src.clone(), o.dst.clone()))
                .or_default()
                .entry(o.seq)
                .or_default()
                .push(o);
        }
        w
    }

    pub fn pairs(&self) -> Vec<Pair> {
        self.by_pair.keys().cloned().collect()
    }

    /// Summaries of `pair` in windows `range`, one per window (the first of duplicates).
    pub fn of(&self, pair: &Pair, range: RangeInclusive<u64>) -> Vec<&Obs> {
        // BTreeMap::range panics on start > end; an empty range simply has no windows.
        if range.is_empty() {
            return Vec::new();
        }
        self.by_pair
            .get(pair)
            .map(|m| m.range(range).filter_map(|(_, v)| v.first()).collect())
            .unwrap_or_default()
    }

    /// Windows in `range` with no summary for `pair`.
    pub fn gaps(&self, pair: &Pair, range: RangeInclusive<u64>) -> Vec<u64> {
        let m = self.by_pair.get(pair);
        range
            .filter(|s| m.is_none_or(|m| !m.contains_key(s)))
            .collect()
    }

    /// `(pair, window, copies)` of every window summarised more than once.
    pub fn duplicates(&self) -> Vec<(Pair, u64, usize)> {
        let mut out = Vec::new();
        for (p, m) in &self.by_pair {
            for (s, v) in m {
                if v.len() > 1 {
                    out.push((p.clone(), *s, v.len()));
                }
            }
        }
        out
    }

    /// Median over windows of the per-window network RTT p50, in µs.
    pub fn median_p50_us(&self, pair: &Pair, range: RangeInclusive<u64>) -> Option<f64> {
        let mut v: Vec<i64> = self
            .of(pair, range)
            .into_iter()
            .filter_map(|o| o.p50_ns)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[v.len() / 2] as f64 / 1000.0)
    }

    /// (sent, lost) summed over windows `range`.
    pub fn loss(&self, pair: &Pair, range: RangeInclusive<u64>) -> (u64, u64) {
        self.of(pair, range)
            .into_iter()
            .fold((0, 0), |(s, l), o| (s + o.sent, l + o.lost))
    }

    /// Highest window seen for any pair.
    pub fn max_seq(&self) -> Option<u64> {
        self.by_pair
            .values()
            .filter_map(|m| m.keys().next_back().copied())
            .max()
    }

    /// The first window of `pair` at or after `from` with `received > 0`.
    pub fn first_received(&self, pair: &Pair, from: u64) -> Option<u64> {
        self.by_pair.get(pair).and_then(|m| {
            m.range(from..)
                .find(|(_, v)| v.iter().any(|o| o.received > 0))
                .map(|(s, _)| *s)
        })
    }
}

/// Loss ratio as a percentage (0 when nothing was sent).
pub fn pct(sent: u64, lost: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        100.0 * lost as f64 / sent as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(src: &str, dst: &str, seq: u64, sent: u64, lost: u64, p50: i64) -> Value {
        json!({"type":"summary","src":src,"dst":dst,"window_seq":seq.to_string(),
               "sent":sent,"received":sent-lost,"lost":lost,
               "network_rtt_ns":{"p50":p50,"p99":p50*2}})
    }

    #[test]
    fn gaps_duplicates_medians_and_loss() {
        let lines = vec![
            s("a", "b", 10, 20, 0, 100_000),
            s("a", "b", 11, 20, 5, 300_000),
            s("a", "b", 11, 20, 5, 300_000),
            s("a", "b", 13, 20, 0, 200_000),
            json!({"type":"probe","src":"a","dst":"b"}),
        ];
        let w = Windows::from_json(&lines);
        let ab = ("a".to_string(), "b".to_string());
        assert_eq!(w.gaps(&ab, 10..=14), vec![12, 14]);
        assert_eq!(w.duplicates(), vec![(ab.clone(), 11, 2)]);
        assert_eq!(w.median_p50_us(&ab, 10..=13), Some(200.0));
        assert_eq!(w.loss(&ab, 10..=13), (60, 5));
        assert_eq!(w.max_seq(), Some(13));
        assert_eq!(pct(60, 5), 100.0 * 5.0 / 60.0);
        let ba = ("b".to_string(), "a".to_string());
        assert_eq!(w.gaps(&ba, 1..=2), vec![1, 2]);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 13..=10;
        assert_eq!(w.median_p50_us(&ab, empty.clone()), None);
        assert_eq!(w.loss(&ab, empty), (0, 0));
    }
}
