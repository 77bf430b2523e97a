//! Node pairs, windows and the agents' TAI clock, as the experiments name them.

use super::*;

/// Maps harness instants to the agents' TAI clock (windows are TAI-aligned).
pub(super) struct Clock {
    pub(super) at: Instant,
    pub(super) tai: u64,
    pub(super) len: u64,
}

impl Clock {
    pub(super) fn new(window: Duration) -> Clock {
        Clock {
            at: Instant::now(),
            tai: tai_now_ns(),
            len: window.as_nanos() as u64,
        }
    }

    pub(super) fn tai_of(&self, i: Instant) -> u64 {
        if i >= self.at {
            self.tai + (i - self.at).as_nanos() as u64
        } else {
            self.tai.saturating_sub((self.at - i).as_nanos() as u64)
        }
    }

    pub(super) fn window_of(&self, i: Instant) -> u64 {
        self.tai_of(i) / self.len
    }

    /// Seconds from `i` to the end of window `w` (when its summary is due).
    pub(super) fn secs_to_end_of(&self, i: Instant, w: u64) -> f64 {
        ((w + 1) * self.len) as f64 / 1e9 - self.tai_of(i) as f64 / 1e9
    }
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(super) fn arrow(p: &Pair) -> String {
    format!("{}→{}", p.0, p.1)
}

pub(super) fn key(p: &Pair) -> String {
    format!("{}->{}", p.0, p.1)
}

pub(super) fn pair(a: usize, b: usize) -> Pair {
    (node_name(a), node_name(b))
}

pub(super) fn all_pairs(n: usize) -> Vec<Pair> {
    let others = move |a| (0..n).filter(move |&b| b != a).map(move |b| pair(a, b));
    (0..n).flat_map(others).collect()
}

/// `node2` → 2.
pub(super) fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")?.parse().ok()
}

pub(super) fn involves(p: &Pair, x: &str) -> bool {
    p.0 == x || p.1 == x
}

/// `v` joined by commas into `f`, or nothing for an empty `v`.
pub(super) fn listed(v: &[String], f: impl Fn(String) -> String) -> String {
    if v.is_empty() {
        String::new()
    } else {
        f(v.join(", "))
    }
}

/// `[3, 4, 5, 9]` as `3..=5, 9`.
pub(super) fn ranges(v: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..={}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}
