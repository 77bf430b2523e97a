//! Simulation of the pinglist function over whole clusters: every member's list computed,
//! then degree, coverage and the churn of one join and one leave measured cluster-wide. Used
//! by the unit tests (which assert [`Figures::violations`] is empty) and by
//! `cargo xtask bench --scenario pinglist` (through `examples/pinglist_sim.rs`).
use std::time::Instant;

use serde::Serialize;

use super::{Index, Params, Place, Topology};

/// The goal for one join or one leave: pinglist entries changed cluster-wide.
pub const CHURN_GOAL: usize = 2_000;

/// A named generated membership.
pub struct Cluster {
    pub name: String,
    pub topology: Topology,
}

fn place(zone: String, rack: String) -> Place {
    Place { zone, rack }
}

fn id(i: usize) -> String {
    format!("node-{i:06}")
}

/// `zones` zones of `per_zone` members; racks of `rack_size` members (0: no rack labels).
pub fn even(zones: usize, per_zone: usize, rack_size: usize) -> Topology {
    sized(&vec![per_zone; zones], rack_size)
}

/// Zones of the given sizes, racks of `rack_size` members inside each (0: no rack labels).
pub fn sized(sizes: &[usize], rack_size: usize) -> Topology {
    let mut t = Topology::new();
    for (z, &size) in sizes.iter().enumerate() {
        for j in 0..size {
            let rack = j
                .checked_div(rack_size)
                .map_or_else(String::new, |r| format!("rack-{z:03}-{r:03}"));
            t.insert(id(t.len()), place(format!("zone-{z:03}"), rack));
        }
    }
    t
}

/// Zipf-like zone sizes: `n` members over `zones` zones, sizes ∝ 1/rank, at least 2 each
/// (largest remainder rounding; the largest zone pays for the minimum).
pub fn zipf_sizes(n: usize, zones: usize) -> Vec<usize> {
    let w: Vec<f64> = (1..=zones).map(|r| 1.0 / r as f64).collect();
    let total: f64 = w.iter().sum();
    let raw: Vec<f64> = w.iter().map(|x| x / total * n as f64).collect();
    let mut sizes: Vec<usize> = raw.iter().map(|x| x.floor() as usize).collect();
    let mut by_frac: Vec<usize> = (0..zones).collect();
    by_frac.sort_by(|&a, &b| (raw[b] - raw[b].floor()).total_cmp(&(raw[a] - raw[a].floor())));
    let short = n - sizes.iter().sum::<usize>();
    for &z in by_frac.iter().take(short) {
        sizes[z] += 1;
    }
    for z in 1..zones {
        if sizes[z] < 2 {
            sizes[0] -= 2 - sizes[z];
            sizes[z] = 2;
        }
    }
    sizes
}

/// `n` members without zone or rack labels.
pub fn unlabelled(n: usize) -> Topology {
    (0..n).map(|i| (id(i), Place::default())).collect()
}

/// The standard set at `n` members (n a multiple of 50 is exact; others round down).
pub fn clusters(n: usize) -> Vec<Cluster> {
    let per = n / 50;
    // Racks of 20, smaller when a zone would hold fewer than 4 racks.
    let rack = (per / 4).clamp(2, 20);
    vec![
        Cluster {
            name: format!("50 zones × {per}"),
            topology: even(50, per, 0),
        },
        Cluster {
            name: format!("50 zones × {per}, racks of {rack}"),
            topology: even(50, per, rack),
        },
        Cluster {
            name: "30 zones, Zipf sizes (∝ 1/rank)".into(),
            topology: sized(&zipf_sizes(n, 30), 0),
        },
        Cluster {
            name: "one zone, racks of 20".into(),
            topology: even(1, n, 20),
        },
        Cluster {
            name: "no labels".into(),
            topology: unlabelled(n),
        },
    ]
}

/// Changes of one membership event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Churn {
    /// Events simulated.
    pub events: usize,
    /// Entries added plus removed over all agents (the joiner's whole list counts as added,
    /// the leaver's as removed): the worst event and the mean.
    pub max: usize,
    pub mean: f64,
}

/// What [`simulate`] measures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub members: usize,
    pub zones: usize,
    /// Out-degree (list length).
    pub out_max: usize,
    pub out_mean: f64,
    /// In-degree (probers of a node).
    pub in_min: usize,
    pub in_mean: f64,
    /// Nodes with fewer than `min_probers` probers.
    pub under_min_probers: usize,
    /// Nodes probed from fewer than 2 zones (counted when there are 2 zones or more).
    pub probed_from_one_zone: usize,
    /// Ordered pairs of distinct zones, and those probed by fewer than `zone_peers` node
    /// pairs.
    pub zone_pairs: usize,
    pub zone_pairs_under_k: usize,
    /// Lists that lost picks to `max_peers`, and the picks lost.
    pub trimmed_lists: usize,
    pub trimmed_picks: usize,
    pub join: Churn,
    pub leave: Churn,
    /// Mean CPU time of one list on a prepared [`Index`].
    pub select_us: f64,
    /// One [`super::select`] from scratch (the Index built for it), wall time, best of 3.
    pub select_one_ms: f64,
    /// Wall time of all the lists of the membership once (up to 8 threads).
    pub all_lists_s: f64,
}

impl Figures {
    /// The guarantees the function promises that these figures break (empty: all held).
    pub fn violations(&self, p: &Params) -> Vec<String> {
        let mut v = Vec::new();
        if self.out_max > p.max_peers {
            v.push(format!(
                "a list has {} peers > {}",
                self.out_max, p.max_peers
            ));
        }
        if self.members > p.min_probers && self.under_min_probers > 0 {
            v.push(format!(
                "{} nodes have fewer than {} probers",
                self.under_min_probers, p.min_probers
            ));
        }
        if self.probed_from_one_zone > 0 {
            v.push(format!(
                "{} nodes are probed from fewer than 2 zones",
                self.probed_from_one_zone
            ));
        }
        if self.zone_pairs_under_k > 0 {
            v.push(format!(
                "{} of {} zone pairs have fewer than {} probed node pairs",
                self.zone_pairs_under_k, self.zone_pairs, p.zone_peers
            ));
        }
        for (what, c) in [("join", &self.join), ("leave", &self.leave)] {
            if c.max > CHURN_GOAL {
                v.push(format!(
                    "one {what} changed {} entries > {CHURN_GOAL}",
                    c.max
                ));
            }
        }
        v
    }
}

/// CPU time of the calling thread (the figures must not count time lost to other
/// processes on a busy machine).
fn thread_cpu_s() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// Every member's list (peer indices ascending) and the CPU time of the computations.
fn all_lists(index: &Index) -> (Vec<Vec<u32>>, Vec<usize>, f64) {
    let n = index.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .clamp(1, 8);
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<(Vec<Vec<u32>>, Vec<usize>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|from| {
                s.spawn(move || {
                    let mut lists = Vec::new();
                    let mut trimmed = Vec::new();
                    let cpu = thread_cpu_s();
                    for i in from..(from + chunk).min(n) {
                        let picks = index.picks(i as u32);
                        lists.push(picks.peers.iter().map(|&(p, _)| p).collect());
                        trimmed.push(picks.trimmed);
                    }
                    (lists, trimmed, thread_cpu_s() - cpu)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pinglist thread"))
            .collect()
    });
    let mut lists = Vec::with_capacity(n);
    let mut trimmed = Vec::with_capacity(n);
    let mut secs = 0.0;
    for (l, t, s) in parts {
        lists.extend(l);
        trimmed.extend(t);
        secs += s;
    }
    (lists, trimmed, secs)
}

/// Entries added plus removed between two clusters' lists (`before`, `after` computed on
/// `a`, `b`): lists are compared by node id.
fn churn(a: &Index, before: &[Vec<u32>], b: &Index, after: &[Vec<u32>]) -> usize {
    let mut changed = 0;
    let mut seen = vec![false; a.len()];
    for (j, list) in after.iter().enumerate() {
        let Some(i) = a.position(b.id(j as u32)) else {
            changed += list.len();
            continue;
        };
        seen[i as usize] = true;
        // Both sorted by id; count the symmetric difference.
        let (old, new) = (&before[i as usize], list);
        let (mut x, mut y, mut common) = (0, 0, 0);
        while x < old.len() && y < new.len() {
            match a.id(old[x]).cmp(b.id(new[y])) {
                std::cmp::Ordering::Less => x += 1,
                std::cmp::Ordering::Greater => y += 1,
                std::cmp::Ordering::Equal => {
                    common += 1;
                    x += 1;
                    y += 1;
                }
            }
        }
        changed += old.len() + new.len() - 2 * common;
    }
    changed
        + seen
            .iter()
            .zip(before)
            .filter(|(s, _)| !**s)
            .map(|(_, l)| l.len())
            .sum::<usize>()
}

/// Simulates `topology` under `params`: all lists, their coverage, and `events` joins and
/// `events` leaves (each a full recomputation of every list).
pub fn simulate(topology: &Topology, params: &Params, events: usize) -> Figures {
    let index = Index::new(topology, params);
    let n = index.len();
    let started = Instant::now();
    let (lists, trimmed, secs) = all_lists(&index);
    let all_lists_s = started.elapsed().as_secs_f64();

    let z = index.zone_count();
    let mut probers = vec![0usize; n];
    // First prober zone of each node, and whether a second one was seen.
    let mut first_zone = vec![u32::MAX; n];
    let mut two_zones = vec![false; n];
    let mut pairs = vec![0usize; z * z];
    for (src, list) in lists.iter().enumerate() {
        let sz = index.zone_of(src as u32);
        for &dst in list {
            let d = dst as usize;
            probers[d] += 1;
            if first_zone[d] == u32::MAX {
                first_zone[d] = sz;
            } else if first_zone[d] != sz {
                two_zones[d] = true;
            }
            pairs[sz as usize * z + index.zone_of(dst) as usize] += 1;
        }
    }
    let out_total: usize = lists.iter().map(Vec::len).sum();
    let zone_pairs_under_k = (0..z)
        .flat_map(|a| (0..z).map(move |b| (a, b)))
        .filter(|&(a, b)| a != b && pairs[a * z + b] < params.zone_peers)
        .count();

    let mut select_one_ms = f64::INFINITY;
    if let Some((me, place)) = topology.iter().next() {
        for _ in 0..3 {
            let t = Instant::now();
            std::hint::black_box(super::select(topology, me, place, params));
            select_one_ms = select_one_ms.min(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    let mut join = Vec::new();
    let mut leave = Vec::new();
    for e in 0..events {
        // Spread the events over the membership (ids are not ordered by zone in general).
        let at = index.id(((2 * e + 1) * n / (2 * events)) as u32);
        let mut joined = topology.clone();
        joined.insert(format!("joiner-{e}"), topology[at].clone());
        let b = Index::new(&joined, params);
        join.push(churn(&index, &lists, &b, &all_lists(&b).0));
        let mut left = topology.clone();
        left.remove(at);
        let b = Index::new(&left, params);
        leave.push(churn(&index, &lists, &b, &all_lists(&b).0));
    }
    let summary = |v: Vec<usize>| Churn {
        events: v.len(),
        max: v.iter().copied().max().unwrap_or(0),
        mean: v.iter().sum::<usize>() as f64 / v.len().max(1) as f64,
    };

    Figures {
        members: n,
        zones: z,
        out_max: lists.iter().map(Vec::len).max().unwrap_or(0),
        out_mean: out_total as f64 / n.max(1) as f64,
        in_min: probers.iter().copied().min().unwrap_or(0),
        in_mean: out_total as f64 / n.max(1) as f64,
        under_min_probers: probers.iter().filter(|&&c| c < params.min_probers).count(),
        probed_from_one_zone: if z >= 2 {
            two_zones.iter().filter(|t| !**t).count()
        } else {
            0
        },
        zone_pairs: z * z.saturating_sub(1),
        zone_pairs_under_k,
        trimmed_lists: trimmed.iter().filter(|&&t| t > 0).count(),
        trimmed_picks: trimmed.iter().sum(),
        join: summary(join),
        leave: summary(leave),
        select_us: secs / n.max(1) as f64 * 1e6,
        select_one_ms: if select_one_ms.is_finite() {
            select_one_ms
        } else {
            0.0
        },
        all_lists_s,
    }
}
