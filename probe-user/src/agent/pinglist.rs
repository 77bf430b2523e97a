//! The agent's pinglist: follows the membership and keeps the set of peers the prober probes.
//!
//! Membership changes come in bursts (a rolling restart, a ZooKeeper re-sync), so the list is
//! recomputed at most once per [`SETTLE`] after a change: the prober sees one new list, not a
//! hundred.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{Instrument as _, debug, info};

use crate::discovery::PeerMap;
use crate::pinglist::{self, Params, Place, Reason, Topology};
use crate::stats::zone::{ZoneSizes, zone_sizes};

/// Quiet time after a membership change before the list is recomputed.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What `GET /pinglist` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PinglistView {
    pub node_id: String,
    pub zone: String,
    pub rack: String,
    /// Members known, this agent included.
    pub members: usize,
    pub trimmed: usize,
    pub params: ParamsView,
    pub peers: Vec<PeerEntry>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ParamsView {
    pub full_mesh_max: usize,
    pub rack_peers: usize,
    pub zone_peers: usize,
    pub min_probers: usize,
    pub max_peers: usize,
}

impl From<&Params> for ParamsView {
    fn from(p: &Params) -> Self {
        ParamsView {
            full_mesh_max: p.full_mesh_max,
            rack_peers: p.rack_peers,
            zone_peers: p.zone_peers,
            min_probers: p.min_probers,
            max_peers: p.max_peers,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerEntry {
    pub node_id: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `meshprobe_pinglist_peers{reason}`, `meshprobe_pinglist_members`,
/// `meshprobe_pinglist_trimmed`: a handful of series whatever the cluster size.
#[derive(Clone, Default)]
pub struct PinglistMetrics {
    peers: Family<ReasonLabel, Gauge>,
    members: Gauge,
    trimmed: Gauge,
}

impl PinglistMetrics {
    pub fn register(r: &mut Registry) -> PinglistMetrics {
        let m = PinglistMetrics::default();
        r.register(
            "meshprobe_pinglist_peers",
            "Peers on this agent's pinglist, by the reason they are on it",
            m.peers.clone(),
        );
        r.register(
            "meshprobe_pinglist_members",
            "Members the pinglist was computed from, this agent included",
            m.members.clone(),
        );
        r.register(
            "meshprobe_pinglist_trimmed",
            "Picks dropped by MESHPROBE_PINGLIST_MAX_PEERS (above 0: coverage may be short)",
            m.trimmed.clone(),
        );
        m
    }

    pub fn observe(&self, v: &PinglistView) {
        for reason in Reason::ALL {
            let n = v
                .peers
                .iter()
                .filter(|p| p.reason == reason.as_str())
                .count();
            self.peers
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(n as i64);
        }
        self.members.set(v.members as i64);
        self.trimmed.set(v.trimmed as i64);
    }
}

/// Who this agent is, for the function.
#[derive(Clone, Debug)]
pub struct Me {
    pub node_id: String,
    pub place: Place,
}

/// The membership as the function sees it: every member's place, ourselves included.
pub fn topology_of(me: &Me, members: &PeerMap) -> Topology {
    let mut t: Topology = members
        .values()
        .map(|p| {
            (
                p.node_id.clone(),
                Place {
                    zone: p.zone.clone(),
                    rack: p.rack.clone(),
                },
            )
        })
        .collect();
    t.insert(me.node_id.clone(), me.place.clone());
    t
}

/// What one membership gives: the probed peers, the view, the members of every zone (this
/// agent excluded).
pub struct Computed {
    pub probed: PeerMap,
    pub view: PinglistView,
    pub zone_sizes: ZoneSizes,
}

/// Computes the probed peers and the view of one membership.
pub fn compute(me: &Me, params: &Params, members: &PeerMap) -> Computed {
    let topology = topology_of(me, members);
    // The peers it could probe per zone: itself excluded.
    let sizes = zone_sizes(members.values().map(|p| p.zone.as_str()));
    let list = pinglist::select(&topology, &me.node_id, &me.place, params);
    let probed: PeerMap = list
        .peers
        .keys()
        .filter_map(|id| members.get(id).map(|p| (id.clone(), p.clone())))
        .collect();
    let view = PinglistView {
        node_id: me.node_id.clone(),
        zone: me.place.zone.clone(),
        rack: me.place.rack.clone(),
        members: topology.len(),
        trimmed: list.trimmed,
        params: params.into(),
        peers: list
            .peers
            .iter()
            .map(|(id, r)| PeerEntry {
                node_id: id.clone(),
                reason: r.as_str(),
            })
            .collect(),
    };
    Computed {
        probed,
        view,
        zone_sizes: sizes,
    }
}

/// The channels the pinglist task feeds.
pub struct Outputs {
    /// Peers to probe.
    pub probed: watch::Receiver<PeerMap>,
    pub view: watch::Receiver<Arc<PinglistView>>,
    /// Members per zone (the whole membership, this agent excluded), for the zone summaries.
    pub zone_sizes: watch::Receiver<ZoneSizes>,
}

/// Follows `members` until its sender is gone. The first list is computed at once;
/// `on_change` is called for each later one.
pub fn spawn(
    me: Me,
    params: Params,
    mut members: watch::Receiver<PeerMap>,
    on_change: impl Fn(&PinglistView) + Send + 'static,
) -> Outputs {
    let first = compute(&me, &params, &members.borrow_and_update());
    let (probed_tx, probed) = watch::channel(first.probed);
    let (view_tx, view) = watch::channel(Arc::new(first.view));
    let (sizes_tx, zone_sizes) = watch::channel(first.zone_sizes);
    let follow = async move {
        while members.changed().await.is_ok() {
            // Let a burst of changes settle; a change meanwhile restarts nothing, it is read
            // with the rest.
            tokio::time::sleep(SETTLE).await;
            let Computed {
                probed: list,
                view: v,
                zone_sizes: sizes,
            } = compute(&me, &params, &members.borrow_and_update());
            sizes_tx.send_if_modified(|cur| {
                let changed = *cur != sizes;
                *cur = sizes;
                changed
            });
            let changed = probed_tx.send_if_modified(|cur| {
                if *cur == list {
                    return false;
                }
                *cur = list;
                true
            });
            if changed {
                info!(
                    members = v.members,
                    peers = v.peers.len(),
                    trimmed = v.trimmed,
                    "pinglist changed"
                );
                on_change(&v);
            } else {
                debug!(members = v.members, "membership changed, pinglist did not");
            }
            let _ = view_tx.send(Arc::new(v));
            release_freed_memory();
        }
    };
    tokio::spawn(follow.instrument(tracing::info_span!("pinglist")));
    Outputs {
        probed,
        view,
        zone_sizes,
    }
}

/// Hands the heap's free pages back to the kernel. A membership change builds and drops a
/// topology of every member (about 3 MB at 10 000); glibc keeps such freed pages resident
/// in the arena of the thread that used them, so without this the agent's RSS holds the peak
/// of every recomputation (measured in BENCHMARKS.md, scenario 8).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Peer;

    fn peer(id: &str, zone: &str) -> Peer {
        Peer {
            node_id: id.into(),
            addr: "198.18.0.1:862".parse().unwrap(),
            zone: zone.into(),
            rack: String::new(),
        }
    }

    #[test]
    fn probed_peers_follow_the_function() {
        let me = Me {
            node_id: "a".into(),
            place: Place {
                zone: "z1".into(),
                rack: String::new(),
            },
        };
        let members: PeerMap = ["b", "c"]
            .iter()
            .map(|id| (id.to_string(), peer(id, "z2")))
            .collect();
        let Computed {
            probed,
            view,
            zone_sizes,
        } = compute(&me, &Params::default(), &members);
        assert_eq!(zone_sizes.get("z1"), None, "itself excluded");
        assert_eq!(zone_sizes.get("z2"), Some(&2));
        let topo = topology_of(&me, &members);
        let want = pinglist::select(&topo, "a", &me.place, &Params::default());
        assert_eq!(
            probed.keys().collect::<Vec<_>>(),
            want.peers.keys().collect::<Vec<_>>()
        );
        assert_eq!(view.members, 3);
        assert_eq!(view.peers.len(), want.peers.len());
        assert!(!probed.contains_key("a"));
    }

    #[test]
    fn metrics_count_peers_by_reason() {
        let mut r = Registry::default();
        let m = PinglistMetrics::register(&mut r);
        let entry = |id: &str, reason| PeerEntry {
            node_id: id.into(),
            reason,
        };
        m.observe(&PinglistView {
            members: 9,
            trimmed: 2,
            peers: vec![entry("b", "rack"), entry("c", "rack"), entry("d", "guard")],
            ..Default::default()
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "meshprobe_pinglist_peers{reason=\"rack\"} 2",
            "meshprobe_pinglist_peers{reason=\"guard\"} 1",
            "meshprobe_pinglist_peers{reason=\"zone\"} 0",
            "meshprobe_pinglist_members 9",
            "meshprobe_pinglist_trimmed 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
