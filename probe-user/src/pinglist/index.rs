//! A membership prepared once for many pinglist computations: members by index, zone and
//! rack groups, the guard ring, and (lazily, per zone) the duty thresholds of the zone rule.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::score::{self, Key, Scorer, Top};
use super::{Params, Place, Topology};

/// The membership, indexed. Member indices follow the node id order of the [`Topology`].
pub struct Index<'t> {
    pub(super) params: Params,
    pub(super) ids: Vec<&'t str>,
    pub(super) places: Vec<&'t Place>,
    pub(super) zone_of: Vec<u32>,
    /// Index into `racks`; `u32::MAX` for a member without a rack label.
    pub(super) rack_of: Vec<u32>,
    pub(super) zones: Vec<Group<'t>>,
    /// Members of each labelled (zone, rack).
    pub(super) racks: Vec<Vec<u32>>,
    /// Members in ring order (position, then id).
    pub(super) ring: Vec<u32>,
    /// Each member's place in `ring`.
    pub(super) ring_at: Vec<u32>,
    /// Guard domain of each member (zone, else rack, else the member itself).
    pub(super) domain_of: Vec<u32>,
    /// Per zone A: per zone B, the lowest duty key of A's members on duty for B (`None`: all
    /// of A are). Filled on first use so one `select` pays only for its own zone.
    duty: Vec<OnceLock<Vec<Option<Key<'t>>>>>,
}

pub(super) struct Group<'t> {
    pub name: &'t str,
    pub members: Vec<u32>,
}

pub(super) const NO_RACK: u32 = u32::MAX;

impl<'t> Index<'t> {
    pub fn new(topology: &'t Topology, params: &Params) -> Index<'t> {
        let n = topology.len();
        let mut ids = Vec::with_capacity(n);
        let mut places = Vec::with_capacity(n);
        let mut zone_of = Vec::with_capacity(n);
        let mut rack_of = Vec::with_capacity(n);
        let mut zone_ix: BTreeMap<&str, u32> = BTreeMap::new();
        let mut rack_ix: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        let mut rack_names: BTreeMap<&str, ()> = BTreeMap::new();
        let mut zones: Vec<Group> = Vec::new();
        let mut racks: Vec<Vec<u32>> = Vec::new();
        for (i, (id, place)) in topology.iter().enumerate() {
            let i = i as u32;
            ids.push(id.as_str());
            places.push(place);
            let z = *zone_ix.entry(&place.zone).or_insert_with(|| {
                zones.push(Group {
                    name: &place.zone,
                    members: Vec::new(),
                });
                (zones.len() - 1) as u32
            });
            zones[z as usize].members.push(i);
            zone_of.push(z);
            rack_names.insert(&place.rack, ());
            if place.rack.is_empty() {
                rack_of.push(NO_RACK);
            } else {
                let r = *rack_ix
                    .entry((&place.zone, &place.rack))
                    .or_insert_with(|| {
                        racks.push(Vec::new());
                        (racks.len() - 1) as u32
                    });
                racks[r as usize].push(i);
                rack_of.push(r);
            }
        }
        let mut by_pos: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (score::ring(id), i as u32))
            .collect();
        // Ids are unique and sorted, so (position, index) orders as (position, id).
        by_pos.sort_unstable();
        let ring: Vec<u32> = by_pos.iter().map(|&(_, i)| i).collect();
        let mut ring_at = vec![0u32; n];
        for (pos, &i) in ring.iter().enumerate() {
            ring_at[i as usize] = pos as u32;
        }
        let domain_of = if zones.len() >= 2 {
            zone_of.clone()
        } else if rack_names.len() >= 2 {
            // One zone: racks (members without a label form one more domain).
            rack_of.clone()
        } else {
            (0..n as u32).collect()
        };
        let duty = (0..zones.len()).map(|_| OnceLock::new()).collect();
        Index {
            params: *params,
            ids,
            places,
            zone_of,
            rack_of,
            zones,
            racks,
            ring,
            ring_at,
            domain_of,
            duty,
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Member index of a node id.
    pub fn position(&self, id: &str) -> Option<u32> {
        self.ids.binary_search(&id).ok().map(|i| i as u32)
    }

    /// Node id of a member index.
    pub fn id(&self, i: u32) -> &'t str {
        self.ids[i as usize]
    }

    pub fn place(&self, i: u32) -> &'t Place {
        self.places[i as usize]
    }

    /// Number of distinct zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Zone number (0..zone_count) of a member.
    pub fn zone_of(&self, i: u32) -> u32 {
        self.zone_of[i as usize]
    }

    /// Duty thresholds of zone `a` towards every zone (see the module docs: the
    /// `s(A,B) = min(|A|, max(k, |B|))` highest duty scores of A for B are on duty).
    pub(super) fn duty(&self, a: u32) -> &[Option<Key<'t>>] {
        self.duty[a as usize].get_or_init(|| {
            let members = &self.zones[a as usize].members;
            let scorers: Vec<(Scorer, &str)> = members
                .iter()
                .map(|&i| (Scorer::duty(self.ids[i as usize]), self.ids[i as usize]))
                .collect();
            self.zones
                .iter()
                .enumerate()
                .map(|(b, zb)| {
                    let s = members
                        .len()
                        .min(self.params.zone_peers.max(zb.members.len()));
                    if b as u32 == a || s >= members.len() {
                        return None;
                    }
                    let mut top = Top::new(s);
                    for (sc, id) in &scorers {
                        top.push((sc.score(zb.name), id), 0);
                    }
                    top.into_vec().last().map(|k| k.0)
                })
                .collect()
        })
    }
}
