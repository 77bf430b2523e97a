//! One member's picks (the rules of the module docs) and the `max_peers` trim.
use std::collections::HashMap;

use super::Reason;
use super::index::{Index, NO_RACK};
use super::score::{Scorer, Top};

/// One member's pinglist by member index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Picks {
    /// Peers by member index, ascending (that is, by node id), with the first reason.
    pub peers: Vec<(u32, Reason)>,
    /// Peers dropped by the `max_peers` cap.
    pub trimmed: usize,
}

/// A pick before the trim.
struct Pick {
    peer: u32,
    reason: Reason,
    /// Pick score (trim order of rack and zone picks: lowest first).
    score: u64,
    /// Walk order of a guard pick (`u32::MAX`: not a guard); guards go last, farthest first.
    guard: u32,
}

impl Index<'_> {
    /// The pinglist of member `me`.
    pub fn picks(&self, me: u32) -> Picks {
        let p = &self.params;
        let n = self.len();
        let me_id = self.id(me);
        let scorer = Scorer::pick(me_id);
        let mut out: Vec<Pick> = Vec::new();
        // The `k` highest-scoring of `members` (not `me`) join `out` for `reason`.
        let best = |out: &mut Vec<Pick>, members: &mut dyn Iterator<Item = u32>, k, reason| {
            let mut top = Top::new(k);
            for i in members.filter(|&i| i != me) {
                top.push((scorer.score(self.id(i)), self.id(i)), i);
            }
            out.extend(top.into_vec().into_iter().map(|((score, _), peer)| Pick {
                peer,
                reason,
                score,
                guard: u32::MAX,
            }));
        };

        if n.saturating_sub(1) <= p.full_mesh_max {
            if n.saturating_sub(1) <= p.max_peers {
                // Nothing to trim: no scores needed.
                let peers = (0..n as u32).filter(|&i| i != me);
                return Picks {
                    peers: peers.map(|i| (i, Reason::Full)).collect(),
                    trimmed: 0,
                };
            }
            best(&mut out, &mut (0..n as u32), n, Reason::Full);
            return trim(out, p.max_peers);
        }

        // Rack: the own rack, or the own zone without a rack label.
        let zone = self.zone_of(me);
        let rack = self.rack_of[me as usize];
        let group = if rack == NO_RACK {
            &self.zones[zone as usize].members
        } else {
            &self.racks[rack as usize]
        };
        best(
            &mut out,
            &mut group.iter().copied(),
            p.rack_peers,
            Reason::Rack,
        );

        // Zone: k in the own zone's other racks.
        if rack != NO_RACK {
            let mut others = self.zones[zone as usize]
                .members
                .iter()
                .copied()
                .filter(|&i| self.rack_of[i as usize] != rack);
            best(&mut out, &mut others, p.zone_peers, Reason::Zone);
        }

        // Zone: k in every other zone this member is on duty for.
        let duty = self.duty(zone);
        let mine = Scorer::duty(me_id);
        for (b, threshold) in duty.iter().enumerate() {
            if b as u32 == zone {
                continue;
            }
            let zb = &self.zones[b];
            if threshold.is_none_or(|t| (mine.score(zb.name), me_id) >= t) {
                best(
                    &mut out,
                    &mut zb.members.iter().copied(),
                    p.zone_peers,
                    Reason::Zone,
                );
            }
        }

        // Guard: the members that have `me` among their m nearest preceding members of
        // another domain on the ring.
        self.guard_walk(me, |peer, order| {
            out.push(Pick {
                peer,
                reason: Reason::Guard,
                score: 0,
                guard: order,
            })
        });

        trim(out, p.max_peers)
    }

    /// Walks the ring forward from `me`; `guard(x, order)` for each member x that `me`
    /// guards. Member x of domain d is guarded by `me` when fewer than m members not of
    /// domain d lie between `me` and x; the walk stops once that holds for no domain but
    /// `me`'s own.
    pub(super) fn guard_walk(&self, me: u32, mut guard: impl FnMut(u32, u32)) {
        let m = self.params.min_probers as u32;
        let n = self.len();
        let mine = self.domain_of[me as usize];
        let start = self.ring_at[me as usize] as usize;
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let (mut total, mut most_other, mut order) = (0u32, 0u32, 0u32);
        for step in 1..n {
            if total - most_other >= m {
                break;
            }
            let x = self.ring[(start + step) % n];
            let d = self.domain_of[x as usize];
            let c = seen.entry(d).or_insert(0);
            if d != mine && total - *c < m {
                guard(x, order);
                order += 1;
            }
            *c += 1;
            total += 1;
            if d != mine {
                most_other = most_other.max(*c);
            }
        }
    }
}

/// Merges duplicate picks (first reason wins) and drops picks beyond `max`: rack (and full)
/// picks first, then zone picks, lowest score first; guard picks only when they alone exceed
/// `max` (a domain too small to guard the others), farthest first.
fn trim(mut picks: Vec<Pick>, max: usize) -> Picks {
    picks.sort_unstable_by_key(|p| (p.peer, p.reason, p.guard));
    let mut merged: Vec<Pick> = Vec::with_capacity(picks.len());
    for p in picks {
        match merged.last_mut() {
            Some(last) if last.peer == p.peer => {
                // Sorted by reason: `last` holds the first; a guard pick marks it a guard.
                last.guard = last.guard.min(p.guard);
            }
            _ => merged.push(p),
        }
    }
    let trimmed = merged.len().saturating_sub(max);
    if trimmed > 0 {
        // Drop order: non-guards by (reason, score), then guards farthest first.
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_unstable_by_key(|&i| {
            let p = &merged[i];
            if p.guard == u32::MAX {
                (0, p.reason, p.score, 0)
            } else {
                (1, Reason::Guard, 0, u32::MAX - p.guard)
            }
        });
        let mut drop = vec![false; merged.len()];
        for &i in &order[..trimmed] {
            drop[i] = true;
        }
        let mut i = 0;
        merged.retain(|_| {
            let keep = !drop[i];
            i += 1;
            keep
        });
    }
    Picks {
        peers: merged.into_iter().map(|p| (p.peer, p.reason)).collect(),
        trimmed,
    }
}
