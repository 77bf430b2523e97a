//! Pinglists: which members this agent probes.
//!
//! Every agent computes the same pure function of the membership, so no controller is needed
//! and any agent's list can be recomputed by anyone (tests, `meshprobe matrix`). The function:
//! - the full mesh while the cluster is small (`members - 1 <= full_mesh_max`);
//! - otherwise the union of
//!   - **rack**: the own rack (the own zone when the node has no rack label) as a full mesh,
//!     the `rack_peers` highest-scoring members when it is larger;
//!   - **zone**: `zone_peers` (k) members of the own zone's other racks (members with another
//!     rack label or none; only for a node with a rack label), and for every other zone B in
//!     which this node is one of the `s(A,B) = min(|A|, max(k, |B|))` members of its zone A
//!     with the highest duty score for B, the k highest-scoring members of B (so every ordered
//!     zone pair has at least k node pairs and a node of a small zone is not probed by
//!     everyone);
//!   - **guard**: on one hash ring of all members, each node is probed by the m
//!     (`min_probers`) nearest preceding members of another domain: the domain is the zone
//!     when there are 2 zones or more, else the rack when there are 2 rack labels or more
//!     (no label counts as one), else the node itself. Every node has m probers from outside
//!     its own domain (when the others have m members);
//!   - trimmed to `max_peers`: rack picks first, then zone picks, lowest score first; guard
//!     picks only when they alone exceed `max_peers` (a zone too small to guard the others),
//!     farthest first, so the cap always holds.
//!
//! Scores are rendezvous (highest-random-weight) hashes of the two node ids (a pick), of the
//! node id and the destination zone (duty), and of the node id alone (ring position), so a
//! join or a leave only changes the lists that must change. The hash is fixed (xxh3-64 over a
//! length-prefixed encoding, see [`score`]), not std's, so agents of different builds compute
//! the same lists. Ties (64-bit collisions) go to the larger node id.
//!
//! [`select`] computes one list; [`Index`] prepares a membership once for many lists
//! ([`select_in`], [`Index::picks`], the [`sim`]ulation).
use std::collections::BTreeMap;

mod index;
mod pick;
pub mod score;
pub mod sim;
#[cfg(test)]
mod tests;

pub use index::Index;
pub use pick::Picks;

/// Where a member sits: what the pinglist function needs of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub zone: String,
    /// Empty when unknown.
    pub rack: String,
}

/// The whole membership by node id, this agent included.
pub type Topology = BTreeMap<String, Place>;

/// Tuning of the pinglist function (`MESHPROBE_PINGLIST_*`, chart `pinglist.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Full mesh while `members - 1 <= full_mesh_max`.
    pub full_mesh_max: usize,
    /// Cap of the own rack's (or zone's) full mesh.
    pub rack_peers: usize,
    /// k: peers per other zone (and in the own zone's other racks).
    pub zone_peers: usize,
    /// m: probers from other zones that every node gets.
    pub min_probers: usize,
    /// Hard cap of the list.
    pub max_peers: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            full_mesh_max: 128,
            rack_peers: 20,
            zone_peers: 2,
            min_probers: 3,
            max_peers: 128,
        }
    }
}

/// A [`Params`] that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("MESHPROBE_PINGLIST_MAX_PEERS must be at least 1")]
    NoPeers,
    #[error("MESHPROBE_PINGLIST_ZONE_PEERS must be at least 1 (zone pairs would go unprobed)")]
    NoZonePeers,
    #[error("MESHPROBE_PINGLIST_MIN_PROBERS must be at least 1 (nodes could go unprobed)")]
    NoProbers,
    #[error(
        "MESHPROBE_PINGLIST_{name} ({value}) exceeds MESHPROBE_PINGLIST_MAX_PEERS ({max}); \
         raise the cap or lower it"
    )]
    AboveCap {
        name: &'static str,
        value: usize,
        max: usize,
    },
}

impl Params {
    /// Rejects settings the function cannot honour: an empty cap, no zone picks or probers,
    /// or a part (full mesh, rack mesh, zone picks, guards) larger than the cap.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.max_peers == 0 {
            return Err(ParamsError::NoPeers);
        }
        if self.zone_peers == 0 {
            return Err(ParamsError::NoZonePeers);
        }
        if self.min_probers == 0 {
            return Err(ParamsError::NoProbers);
        }
        for (name, value) in [
            ("FULL_MESH_MAX", self.full_mesh_max),
            ("RACK_PEERS", self.rack_peers),
            ("ZONE_PEERS", self.zone_peers),
            ("MIN_PROBERS", self.min_probers),
        ] {
            if value > self.max_peers {
                return Err(ParamsError::AboveCap {
                    name,
                    value,
                    max: self.max_peers,
                });
            }
        }
        Ok(())
    }
}

/// Why a peer is on the list (the first reason that applies, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The cluster is small: everyone.
    Full,
    /// Own rack (or own zone without racks).
    Rack,
    /// Zone-pair pick (another zone, or another rack of the own zone).
    Zone,
    /// Coverage: this node is one of the peer's m guards.
    Guard,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Reason::Full, Reason::Rack, Reason::Zone, Reason::Guard];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::Rack => "rack",
            Reason::Zone => "zone",
            Reason::Guard => "guard",
        }
    }
}

/// One agent's pinglist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinglist {
    /// Peers to probe, by node id.
    pub peers: BTreeMap<String, Reason>,
    /// Picks dropped by the `max_peers` cap.
    pub trimmed: usize,
}

/// The pinglist of `me` in `topology` (which should contain `me`; if it does not, `me` is
/// treated as a member at `me_place`).
pub fn select(topology: &Topology, me: &str, me_place: &Place, params: &Params) -> Pinglist {
    if topology.contains_key(me) {
        return select_in(&Index::new(topology, params), me).unwrap_or_default();
    }
    let mut with_me = topology.clone();
    with_me.insert(me.to_string(), me_place.clone());
    select_in(&Index::new(&with_me, params), me).unwrap_or_default()
}

/// The pinglist of member `me` of a prepared membership; `None` when `me` is not a member.
pub fn select_in(index: &Index, me: &str) -> Option<Pinglist> {
    let picks = index.picks(index.position(me)?);
    Some(Pinglist {
        peers: picks
            .peers
            .iter()
            .map(|&(i, reason)| (index.id(i).to_string(), reason))
            .collect(),
        trimmed: picks.trimmed,
    })
}
