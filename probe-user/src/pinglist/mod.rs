//! Pinglists: which members this agent probes.
//!
//! Every agent computes the same pure function of the membership, so no controller is needed
//! and any agent's list can be recomputed by anyone (tests, `meshprobe matrix`). The function:
//! - the full mesh while the cluster is small (`members - 1 <= full_mesh_max`);
//! - otherwise the union of
//!   - **rack**: the own rack (the own zone when the node has no rack label) as a full mesh,
//!     the `rack_peers` highest-scoring members when it is larger;
//!   - **zone**: `zone_peers` (k) members of the own zone's other racks, and for every other
//!     zone B in which this node is one of the `s(A,B) = min(|A|, max(k, |B|))` highest-scoring
//!     members of its zone A for B, the k highest-scoring members of B (so every ordered zone
//!     pair has at least k node pairs and a node of a small zone is not probed by everyone);
//!   - **guard**: on one hash ring of all members, each node is probed by the m
//!     (`min_probers`) nearest preceding members of another zone (another rack in a one-zone
//!     cluster, any other node in a flat one): every node has m probers from outside its own
//!     zone;
//!   - trimmed to `max_peers` (rack picks first, lowest score first; guard picks never).
//!
//! Scores are rendezvous (highest-random-weight) hashes of the two node ids, so a join or a
//! leave only changes the lists that must change. The hash is fixed (xxh3-64 of the ids), not
//! std's, so agents of different builds compute the same lists.
use std::collections::BTreeMap;

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
    // Contract stub: full mesh. Replaced by the real function (see the module docs).
    let _ = (me_place, params);
    Pinglist {
        peers: topology
            .keys()
            .filter(|id| id.as_str() != me)
            .map(|id| (id.clone(), Reason::Full))
            .collect(),
        trimmed: 0,
    }
}
