use std::collections::{BTreeMap, BTreeSet};

use super::sim::{self, CHURN_GOAL};
use super::*;

fn p() -> Params {
    Params::default()
}

fn at(t: &Topology, id: &str) -> Pinglist {
    select(t, id, &t[id], &p())
}

fn peers(l: &Pinglist) -> BTreeSet<&str> {
    l.peers.keys().map(String::as_str).collect()
}

/// Every member's list, by id.
fn all(t: &Topology, params: &Params) -> BTreeMap<String, Pinglist> {
    let index = Index::new(t, params);
    t.keys()
        .map(|id| (id.clone(), select_in(&index, id).unwrap()))
        .collect()
}

fn probers<'a>(lists: &'a BTreeMap<String, Pinglist>, of: &str) -> Vec<&'a str> {
    lists
        .iter()
        .filter(|(_, l)| l.peers.contains_key(of))
        .map(|(id, _)| id.as_str())
        .collect()
}

#[test]
fn deterministic_and_select_in_agrees() {
    let t = sim::even(10, 30, 10);
    let index = Index::new(&t, &p());
    for id in t.keys().take(20) {
        let a = at(&t, id);
        assert_eq!(a, at(&t, id));
        assert_eq!(Some(a), select_in(&index, id));
    }
    assert_eq!(select_in(&index, "not-a-member"), None);
}

#[test]
fn absent_me_is_placed_as_given() {
    let t = sim::even(10, 30, 0);
    let me = Place {
        zone: "zone-003".into(),
        rack: String::new(),
    };
    let mut with_me = t.clone();
    with_me.insert("newcomer".into(), me.clone());
    assert_eq!(
        select(&t, "newcomer", &me, &p()),
        select(&with_me, "newcomer", &me, &p())
    );
}

#[test]
fn full_mesh_up_to_the_threshold() {
    let t = sim::even(4, 32, 0); // 128 members: 127 others
    let l = at(&t, "node-000000");
    assert_eq!(l.peers.len(), 127);
    assert!(l.peers.values().all(|r| *r == Reason::Full));
    let t = sim::even(3, 43, 0); // 129 members: 128 others, still the full mesh
    assert_eq!(at(&t, "node-000000").peers.len(), 128);
    let t = sim::even(5, 26, 0); // 130 members: pinglists
    let l = at(&t, "node-000000");
    assert!(l.peers.values().all(|r| *r != Reason::Full));
    assert!(l.peers.len() < 129);
    // An (invalid) full mesh above the cap is still capped.
    let q = Params {
        full_mesh_max: 200,
        max_peers: 50,
        ..p()
    };
    let l = select(&t, "node-000000", &t["node-000000"], &q);
    assert_eq!((l.peers.len(), l.trimmed), (50, 79));
}

#[test]
fn rack_mesh_capped_by_score() {
    // One zone, racks of 50: 20 rack picks out of the 49 others of the rack.
    let t = sim::even(1, 500, 50);
    let me = "node-000000";
    let l = at(&t, me);
    let rack: Vec<&String> = l
        .peers
        .iter()
        .filter(|(_, r)| **r == Reason::Rack)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rack.len(), 20);
    assert!(rack.iter().all(|id| t[*id].rack == t[me].rack));
    // The 20 highest pick scores of the rack.
    let s = score::Scorer::pick(me);
    let mut scored: Vec<(u64, &String)> = t
        .iter()
        .filter(|(id, pl)| pl.rack == t[me].rack && id.as_str() != me)
        .map(|(id, _)| (s.score(id), id))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    let want: BTreeSet<&String> = scored[..20].iter().map(|x| x.1).collect();
    assert_eq!(rack.into_iter().collect::<BTreeSet<_>>(), want);
    // A small rack is a full mesh: racks of 10 give 9 rack peers.
    let t = sim::even(1, 500, 10);
    let l = at(&t, me);
    assert_eq!(l.peers.values().filter(|r| **r == Reason::Rack).count(), 9);
    // k picks in the own zone's other racks.
    assert!(
        l.peers
            .iter()
            .filter(|(id, _)| t[*id].rack != t[me].rack)
            .count()
            >= p().zone_peers
    );
}

#[test]
fn guards_from_another_zone_for_every_node() {
    let params = p();
    for t in [
        sim::even(20, 30, 0),
        sim::sized(&sim::zipf_sizes(600, 15), 0),
    ] {
        let index = Index::new(&t, &params);
        let mut guards = vec![Vec::new(); index.len()];
        for me in 0..index.len() as u32 {
            index.guard_walk(me, |x, _| guards[x as usize].push(me));
        }
        for (x, g) in guards.iter().enumerate() {
            assert_eq!(
                g.len(),
                params.min_probers,
                "guards of {}",
                index.id(x as u32)
            );
            assert!(
                g.iter()
                    .all(|&p| index.zone_of(p) != index.zone_of(x as u32))
            );
        }
        // And they stay on the lists.
        let lists = all(&t, &params);
        for (x, g) in guards.iter().enumerate() {
            for &pr in g {
                assert!(lists[index.id(pr)].peers.contains_key(index.id(x as u32)));
            }
        }
    }
}

#[test]
fn zone_pairs_covered_and_small_zones_not_probed_by_everyone() {
    // Zones of 2 to 200: every ordered zone pair has at least k node pairs.
    let t = sim::sized(&[200, 150, 100, 40, 10, 3, 2], 0);
    let params = p();
    let lists = all(&t, &params);
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (src, l) in &lists {
        for dst in l.peers.keys() {
            *pairs.entry((&t[src].zone, &t[dst].zone)).or_default() += 1;
        }
    }
    let zones: BTreeSet<&str> = t.values().map(|pl| pl.zone.as_str()).collect();
    for a in &zones {
        for b in &zones {
            if a != b {
                let c = pairs.get(&(*a, *b)).copied().unwrap_or(0);
                assert!(c >= params.zone_peers, "{a} -> {b}: {c} pairs");
            }
        }
    }
    // A member of the 3-member zone is probed from the 200-member zone by about
    // s·k/|B| = 3·2/3 = 2 nodes, not by 200.
    let small = t.iter().find(|(_, pl)| pl.zone == "zone-005").unwrap().0;
    let from_big = probers(&lists, small)
        .into_iter()
        .filter(|pr| t[*pr].zone == "zone-000")
        .count();
    assert!(
        from_big <= 2 * params.zone_peers + params.min_probers,
        "{from_big}"
    );
}

#[test]
fn max_peers_respected_guards_kept() {
    let params = Params {
        max_peers: 40,
        full_mesh_max: 40,
        ..p()
    };
    params.validate().unwrap();
    let t = sim::even(50, 20, 0);
    let index = Index::new(&t, &params);
    let mut trimmed = 0;
    for me in 0..index.len() as u32 {
        let l = index.picks(me);
        assert!(l.peers.len() <= 40);
        trimmed += l.trimmed;
        let mut guarded = Vec::new();
        index.guard_walk(me, |x, _| guarded.push(x));
        for g in guarded {
            assert!(l.peers.iter().any(|&(i, _)| i == g), "guard trimmed");
        }
    }
    assert!(
        trimmed > 0,
        "the cap was never reached: the test tests nothing"
    );
}

#[test]
fn cap_holds_when_one_zone_must_guard_all() {
    // One member in its own zone is the nearest other-zone member of everyone.
    let mut t = sim::even(1, 400, 0);
    t.insert(
        "lonely".into(),
        Place {
            zone: "elsewhere".into(),
            rack: String::new(),
        },
    );
    let l = at(&t, "lonely");
    assert_eq!(l.peers.len(), p().max_peers);
    assert!(l.trimmed > 0);
}

#[test]
fn join_changes_few_entries() {
    let t = sim::even(20, 30, 0);
    let params = p();
    let before = all(&t, &params);
    let total: usize = before.values().map(|l| l.peers.len()).sum();
    let mut joined = t.clone();
    joined.insert("joiner".into(), t["node-000100"].clone());
    let after = all(&joined, &params);
    let mut changed = after["joiner"].peers.len();
    for (id, l) in &before {
        let a = peers(l);
        let b = peers(&after[id]);
        changed += a.symmetric_difference(&b).count();
    }
    // The joiner's own list plus a few hundred others, out of ~50 000 entries.
    assert!(changed < total / 50, "{changed} of {total}");
    assert!(changed >= after["joiner"].peers.len());
}

#[test]
fn one_zone_and_no_labels() {
    let params = p();
    for (t, rack_domain) in [(sim::even(1, 400, 20), true), (sim::unlabelled(400), false)] {
        let index = Index::new(&t, &params);
        let lists = all(&t, &params);
        for (id, l) in &lists {
            assert!(l.peers.len() <= params.max_peers);
            assert!(!l.peers.contains_key(id));
            let pr = probers(&lists, id);
            assert!(pr.len() >= params.min_probers, "{id}: {pr:?}");
        }
        // Guards come from another rack when there are racks.
        for me in 0..index.len() as u32 {
            index.guard_walk(me, |x, _| {
                assert!(x != me);
                if rack_domain {
                    assert_ne!(index.place(x).rack, index.place(me).rack);
                }
            });
        }
        if !rack_domain {
            // Without labels: 20 rack (zone) picks plus the guard picks.
            let n = lists["node-000000"].peers.len();
            assert!((20..=20 + params.min_probers).contains(&n), "{n}");
        }
    }
}

#[test]
fn validate_rejects_nonsense() {
    assert_eq!(p().validate(), Ok(()));
    let bad = |f: fn(&mut Params)| {
        let mut q = p();
        f(&mut q);
        q.validate().unwrap_err().to_string()
    };
    assert!(bad(|q| q.max_peers = 0).contains("MAX_PEERS"));
    assert!(bad(|q| q.zone_peers = 0).contains("ZONE_PEERS"));
    assert!(bad(|q| q.min_probers = 0).contains("MIN_PROBERS"));
    assert!(bad(|q| q.zone_peers = 129).contains("ZONE_PEERS (129) exceeds"));
    assert!(bad(|q| q.full_mesh_max = 500).contains("FULL_MESH_MAX"));
    assert!(bad(|q| q.rack_peers = 200).contains("RACK_PEERS"));
}

fn assert_guarantees(n: usize) {
    let params = p();
    for c in sim::clusters(n) {
        let f = sim::simulate(&c.topology, &params, 2);
        let v = f.violations(&params);
        assert!(v.is_empty(), "{} at {n}: {v:?}\n{f:#?}", c.name);
        // violations() covers these; spelled out so a regression names the figure.
        assert!(f.out_max <= 128 && f.in_min >= 3, "{}: {f:#?}", c.name);
        assert!(f.join.max <= CHURN_GOAL && f.leave.max <= CHURN_GOAL);
        assert_eq!(f.members, n);
    }
}

/// The guarantees over the standard topologies at 1 000 members (debug-friendly).
#[test]
fn guarantees_at_1000() {
    assert_guarantees(1_000);
}

/// The same at 10 000 members: release only (`cargo test --release -p probe-user --lib
/// pinglist`), a debug build takes minutes.
#[test]
#[cfg_attr(debug_assertions, ignore = "release only: cargo test --release")]
fn guarantees_at_10000() {
    assert_guarantees(10_000);
}
