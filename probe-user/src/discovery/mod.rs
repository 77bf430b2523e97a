//! Peer discovery: who this agent probes.
//!
//! Two sources, both ending in a [`PeerMap`] keyed by node id:
//! - static peers ([`parse_static`]): `MESHPROBE_PEERS` / `MESHPROBE_PEERS_FILE`;
//! - ZooKeeper membership ([`run_zk`]): every agent registers an ephemeral znode
//!   `/<ROOT_PATH_ZK>/<HEART_BEAT_NODE_PATH>/<node_id>` holding its [`NodeInfo`](crate::pb::NodeInfo)
//!   and, in the same transaction, its entry in the topology index ([`layout`]), which everybody
//!   follows with one watch.

pub mod admit;
pub mod layout;
mod static_peers;
mod syntax;
mod zk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::pb::NodeInfo;

pub use static_peers::parse_static;
pub use syntax::{member_parent_path, normalize_root_path, normalize_servers};
/// Timing constants of the ZooKeeper membership, for tests and labs that derive their bounds
/// from them.
pub use zk::{
    BACKOFF_CAP, CONFLICT_RETRY, RESYNC_JITTER_MAX, RejectedLabel, STOP_BUDGET, ZkAuth, ZkMetrics,
    run_zk,
};

/// One peer to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub addr: SocketAddr,
    pub zone: String,
    pub rack: String,
}

/// Peers by node id.
pub type PeerMap = BTreeMap<String, Peer>;

/// Why discovery could not be set up. Runtime trouble with ZooKeeper (unreachable servers,
/// expired sessions, bad peer data) is logged and retried, never returned.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A static peer entry that cannot be used; `setting` is MESHPROBE_PEERS or
    /// MESHPROBE_PEERS_FILE, `location` names the file line when there is one.
    #[error("{setting}: bad peer {entry:?}{location}: {reason}")]
    BadPeer {
        setting: &'static str,
        location: String,
        entry: String,
        reason: String,
    },
    /// The same node id twice among the static peers.
    #[error("{setting}: duplicate peer id {id:?}{location} (give one of them an explicit id=)")]
    DuplicatePeer {
        setting: &'static str,
        location: String,
        id: String,
    },
    #[error("MESHPROBE_PEERS_FILE: cannot read {path}: {source}")]
    PeersFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A ZooKeeper setting that cannot work, named by its environment variable.
    #[error("{setting}: {reason} (got {value:?})")]
    Setting {
        setting: &'static str,
        value: String,
        reason: String,
    },
}

/// ZooKeeper membership settings.
#[derive(Clone, Debug)]
pub struct ZkOptions {
    /// SERVERS_ZK: `host:port[,host:port]`.
    pub servers: String,
    /// ROOT_PATH_ZK, e.g. `meshprobe` or `/meshprobe`.
    pub root_path: String,
    /// HEART_BEAT_NODE_PATH, e.g. `heartbeat`.
    pub heartbeat_path: String,
    /// CONN_TIMEOUT: the ZooKeeper session timeout we ask for.
    pub session_timeout: Duration,
    /// Our registration (node_id is the znode name).
    pub me: NodeInfo,
    /// Port for peers that registered port 0.
    pub default_port: u16,
    /// Which members may be probed.
    pub policy: admit::MemberPolicy,
    /// Membership gauges (register them with [`ZkMetrics::register`] to export them).
    pub metrics: ZkMetrics,
    /// SASL credentials; `None`: unauthenticated, our znodes world-writable (tests, demos).
    pub auth: Option<ZkAuth>,
}

/// Checks the ZooKeeper settings before anything starts: the connect string parses, the paths
/// are valid ZooKeeper paths, the node id is a valid znode name and the credentials (if any)
/// are readable.
pub fn validate_zk(opts: &ZkOptions) -> Result<(), DiscoveryError> {
    normalize_servers(&opts.servers)?;
    member_parent_path(&opts.root_path, &opts.heartbeat_path)?;
    syntax::check_node_name(&opts.me.node_id)?;
    if let Some(auth) = &opts.auth {
        zk::validate_auth(auth)?;
    }
    if opts.me.public_address.trim().is_empty() {
        return Err(DiscoveryError::Setting {
            setting: "REGISTER_PUBLIC_DNS",
            value: opts.me.public_address.clone(),
            reason: "the address peers probe must not be empty".into(),
        });
    }
    if opts.me.public_port > u32::from(u16::MAX) {
        return Err(DiscoveryError::Setting {
            setting: "REGISTER_PUBLIC_PORT",
            value: opts.me.public_port.to_string(),
            reason: "not a UDP port".into(),
        });
    }
    // Other agents refuse members whose labels break their rule: ours must pass it.
    admit::check_labels(&opts.me.node_id, &opts.me.zone, &opts.me.rack).map_err(|r| {
        DiscoveryError::Setting {
            setting: "MESHPROBE_NODE_ID/MESHPROBE_ZONE/MESHPROBE_RACK",
            value: format!("{} / {} / {}", opts.me.node_id, opts.me.zone, opts.me.rack),
            reason: format!("{r}; other agents would not probe this node"),
        }
    })?;
    // Other agents refuse longer names (untrusted input is bounded): ours must pass.
    let entry = layout::entry_name(&layout::entry_of(&opts.me));
    let zone_dir = layout::zone_dir_name(&opts.me.zone);
    if entry.len() > layout::MAX_NAME_LEN || zone_dir.len() > layout::MAX_NAME_LEN {
        return Err(DiscoveryError::Setting {
            setting: "MESHPROBE_NODE_ID/MESHPROBE_ZONE/MESHPROBE_RACK/REGISTER_PUBLIC_DNS",
            value: format!("{} / {}", opts.me.node_id, opts.me.zone),
            reason: format!(
                "the topology index entry ({} bytes) or zone directory ({} bytes) name would \
                 exceed {} bytes once percent-encoded; use shorter labels",
                entry.len(),
                zone_dir.len(),
                layout::MAX_NAME_LEN
            ),
        });
    }
    // ZooKeeper carries the timeout as i32 milliseconds; zero would silently mean 6 s.
    let ms = opts.session_timeout.as_millis();
    if ms == 0 || ms > i32::MAX as u128 {
        return Err(DiscoveryError::Setting {
            setting: "CONN_TIMEOUT",
            value: format!("{:?}", opts.session_timeout),
            reason: "the ZooKeeper session timeout must be positive and below 24 days".into(),
        });
    }
    Ok(())
}

/// Where the ZooKeeper membership stands, for logs, `/readyz` and a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkState {
    /// No session yet (ZooKeeper unreachable), or connected but not registered (node-id
    /// conflict).
    Connecting,
    /// Our znode exists in our session.
    Registered,
    /// The session lost its connection; the client is reconnecting (the last peer map stays).
    Disconnected,
    /// The session expired; a new one is being created (the last peer map stays).
    Expired,
    /// `run_zk` finished.
    Stopped,
}

impl ZkState {
    /// Value for a gauge: 0 connecting, 1 registered, 2 disconnected, 3 expired, 4 stopped.
    /// The `meshprobe_zookeeper_state` value (0 is "not configured", the gauge's default; the
    /// dashboard and the help text use these numbers).
    pub fn as_i64(self) -> i64 {
        match self {
            ZkState::Connecting => 1,
            ZkState::Registered => 2,
            ZkState::Disconnected => 3,
            ZkState::Expired => 4,
            ZkState::Stopped => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ZkState::Connecting => "connecting",
            ZkState::Registered => "registered",
            ZkState::Disconnected => "disconnected",
            ZkState::Expired => "expired",
            ZkState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ZkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ZkOptions {
        ZkOptions {
            servers: "198.18.0.1:2181".into(),
            root_path: "meshprobe".into(),
            heartbeat_path: "heartbeat".into(),
            session_timeout: Duration::from_secs(10),
            me: NodeInfo {
                node_id: "node-a".into(),
                public_address: "198.18.0.1".into(),
                public_port: 862,
                ..Default::default()
            },
            default_port: 862,
            policy: admit::MemberPolicy::any_network(),
            metrics: ZkMetrics::default(),
            auth: None,
        }
    }

    fn setting_of(e: DiscoveryError) -> &'static str {
        match e {
            DiscoveryError::Setting { setting, .. } => setting,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn validate_accepts_defaults() {
        validate_zk(&opts()).unwrap();
        let mut o = opts();
        o.servers = " zk1:2181, [fd00::1]:2181 ,zk3".into();
        o.root_path = "/a/b/".into();
        validate_zk(&o).unwrap();
    }

    #[test]
    fn validate_names_the_setting() {
        let mut o = opts();
        o.servers = "".into();
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "SERVERS_ZK");
        o.servers = "zk1:99999".into();
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "SERVERS_ZK");
        o.servers = "zk1:2181/chroot".into();
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "SERVERS_ZK");

        let mut o = opts();
        o.root_path = "a/../b".into();
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "ROOT_PATH_ZK");
        o.root_path = "zookeeper".into();
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "ROOT_PATH_ZK");

        let mut o = opts();
        o.heartbeat_path = "beat\u{1}".into();
        assert_eq!(
            setting_of(validate_zk(&o).unwrap_err()),
            "HEART_BEAT_NODE_PATH"
        );

        let mut o = opts();
        o.me.node_id = "a/b".into();
        let e = validate_zk(&o).unwrap_err();
        assert!(e.to_string().contains("'/'"), "{e}");
        assert_eq!(setting_of(e), "MESHPROBE_NODE_ID");
        o.me.node_id = "".into();
        assert_eq!(
            setting_of(validate_zk(&o).unwrap_err()),
            "MESHPROBE_NODE_ID"
        );
        o.me.node_id = "..".into();
        assert_eq!(
            setting_of(validate_zk(&o).unwrap_err()),
            "MESHPROBE_NODE_ID"
        );

        let mut o = opts();
        o.me.public_address = " ".into();
        assert_eq!(
            setting_of(validate_zk(&o).unwrap_err()),
            "REGISTER_PUBLIC_DNS"
        );

        let mut o = opts();
        o.me.rack = "r".repeat(layout::MAX_NAME_LEN);
        assert!(
            setting_of(validate_zk(&o).unwrap_err()).contains("MESHPROBE_RACK"),
            "an index entry others would refuse"
        );

        let mut o = opts();
        o.session_timeout = Duration::ZERO;
        assert_eq!(setting_of(validate_zk(&o).unwrap_err()), "CONN_TIMEOUT");
    }

    #[test]
    fn state_labels() {
        let all = [
            ZkState::Connecting,
            ZkState::Registered,
            ZkState::Disconnected,
            ZkState::Expired,
            ZkState::Stopped,
        ];
        let nums: Vec<_> = all.iter().map(|s| s.as_i64()).collect();
        assert_eq!(nums, [1, 2, 3, 4, 5], "0 is 'not configured'");
        assert_eq!(ZkState::Registered.to_string(), "registered");
    }
}
