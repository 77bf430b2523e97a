//! What the scale test and the `scale` bench's member registrar share with the product: how a
//! member is registered (the product's own layout) and the pinglist the product's function
//! gives. Included by `tests/scale_pinglist.rs`, `tests/discovery_zk*.rs` and
//! `examples/scale_members.rs` (the harness library cannot link the product; see
//! `meshprobe_harness::zkreg`).
#![allow(dead_code)]

use std::collections::BTreeMap;

use meshprobe::discovery::layout;
use meshprobe::pb::NodeInfo;
use meshprobe::pinglist::{self, Params, Place, Topology};
use meshprobe_harness::zkreg::{MemberCodec, SyntheticMember, Znode};

/// The product's registration layout under one member directory (`/<root>/<heartbeat>`).
pub struct ProductLayout {
    pub member_parent: String,
}

impl ProductLayout {
    /// The default directory (ROOT_PATH_ZK=meshprobe, HEART_BEAT_NODE_PATH=heartbeat).
    pub fn default_paths() -> ProductLayout {
        ProductLayout {
            member_parent: meshprobe_harness::agent::HEARTBEAT_PATH.to_string(),
        }
    }

    /// The NodeInfo an agent at `m` would register.
    pub fn node_info(m: &SyntheticMember) -> NodeInfo {
        NodeInfo {
            node_id: m.node_id.clone(),
            public_address: m.addr.to_string(),
            public_port: u32::from(m.port),
            zone: m.zone.clone(),
            rack: m.rack.clone(),
            version: "synthetic".into(),
            capabilities: vec!["stamp-reflector".into()],
            started_tai_ns: 0,
        }
    }

    /// What `m` registers, by the product's rule (`layout::registration`).
    pub fn registration(&self, m: &SyntheticMember) -> layout::Registration {
        layout::registration(&self.member_parent, &Self::node_info(m))
    }

    /// The topology index entry's path of `m`.
    pub fn entry_path(&self, m: &SyntheticMember) -> String {
        self.registration(m).entry
    }

    /// The path of zone `zone`'s directory in the topology index.
    pub fn zone_path(&self, zone: &str) -> String {
        layout::zone_path(&layout::topology_root(&self.member_parent), zone)
    }

    /// The name of `m`'s entry in its zone directory.
    pub fn entry_name(m: &SyntheticMember) -> String {
        layout::entry_name(&layout::entry_of(&Self::node_info(m)))
    }
}

impl MemberCodec for ProductLayout {
    /// As the agent registers: its member znode (NodeInfo) and its topology index entry.
    fn znodes(&self, m: &SyntheticMember) -> Vec<Znode> {
        let r = self.registration(m);
        vec![(r.path, r.data), (r.entry, Vec::new())]
    }
}

/// The membership as the pinglist function takes it.
pub fn topology<'a>(members: impl IntoIterator<Item = &'a SyntheticMember>) -> Topology {
    members
        .into_iter()
        .map(|m| {
            (
                m.node_id.clone(),
                Place {
                    zone: m.zone.clone(),
                    rack: m.rack.clone(),
                },
            )
        })
        .collect()
}

/// `me`'s pinglist in `topo` with `params`: peer id -> reason, as `GET /pinglist` names them.
pub fn expected(
    topo: &Topology,
    me: &SyntheticMember,
    params: &Params,
) -> BTreeMap<String, String> {
    let place = Place {
        zone: me.zone.clone(),
        rack: me.rack.clone(),
    };
    pinglist::select(topo, &me.node_id, &place, params)
        .peers
        .into_iter()
        .map(|(id, r)| (id, r.as_str().to_string()))
        .collect()
}
