//! Membership: static peers, ZooKeeper (where, under which paths, what we register), and the
//! connection timeout ZooKeeper and Kafka share.
use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    time::Duration,
};

use probe_common::STAMP_DEFAULT_PORT;
use tracing::{info, warn};

use super::{AgentArgs, node::Node};
use crate::{
    cli::error::ConfigError,
    discovery::{
        self, PeerMap, ZkOptions,
        admit::{self, MemberPolicy},
    },
    net, pb,
};

/// The membership settings, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub static_peers: PeerMap,
    /// None: static peers only.
    pub zk: Option<ZkOptions>,
}

/// MESHPROBE_PEERS and MESHPROBE_PEERS_FILE, parsed.
pub(super) fn static_peers(a: &AgentArgs) -> Result<PeerMap, ConfigError> {
    if a.peers.is_empty() && a.peers_file.is_none() {
        return Ok(PeerMap::new());
    }
    discovery::parse_static(&a.peers, a.peers_file.as_deref(), STAMP_DEFAULT_PORT)
        .map_err(ConfigError::named)
}

impl Settings {
    /// `listen_ip`: the reflector's; registered when REGISTER_PUBLIC_DNS is unset and it is
    /// not the unspecified address.
    pub(super) fn from_args(
        a: &AgentArgs,
        node: &Node,
        listen_ip: IpAddr,
        static_peers: PeerMap,
    ) -> Result<Settings, ConfigError> {
        let zk = match &a.servers_zk {
            None => None,
            Some(servers) => Some(zk_options(a, node, listen_ip, servers)?),
        };
        if zk.is_none() && a.register_public_dns.is_some() {
            // Harmless (templates often set it everywhere), but worth knowing.
            info!("REGISTER_PUBLIC_DNS is set but SERVERS_ZK is not: it is not used");
        }
        if zk.is_none() && static_peers.is_empty() {
            warn!("no SERVERS_ZK and no static peers: this agent only reflects");
        }
        Ok(Settings { static_peers, zk })
    }
}

fn zk_options(
    a: &AgentArgs,
    node: &Node,
    listen_ip: IpAddr,
    servers: &str,
) -> Result<ZkOptions, ConfigError> {
    // Syntax first: a bad connect string must be named as such, not as a failure to derive
    // our address from it.
    let servers = discovery::normalize_servers(servers).map_err(ConfigError::named)?;
    let public = public_address(a.register_public_dns.as_deref(), listen_ip, &servers)?;
    let auth = zk_auth(a)?;
    let mut opts = ZkOptions {
        servers: servers.trim().to_string(),
        root_path: a.root_path_zk.clone(),
        heartbeat_path: a.heart_beat_node_path.clone(),
        session_timeout: a.conn_timeout,
        me: pb::NodeInfo {
            node_id: node.id.clone(),
            public_address: public,
            public_port: u32::from(a.register_public_port.unwrap_or(a.register_listener_port)),
            zone: node.zone.clone(),
            rack: node.rack.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec!["stamp-reflector".into(), "rfc8972-tlv".into()],
            started_tai_ns: crate::clock::tai_now_ns(),
        },
        default_port: STAMP_DEFAULT_PORT,
        // Set below, once the other settings are known to be valid.
        policy: MemberPolicy::any_network(),
        metrics: discovery::ZkMetrics::default(),
        auth,
    };
    discovery::validate_zk(&opts).map_err(ConfigError::named)?;
    // Last: it reads this node's addresses, so every setting's own error comes first.
    opts.policy = member_policy(a)?;
    Ok(opts)
}

/// ZK_SASL_USERNAME and ZK_SASL_PASSWORD_FILE: both or neither. (What they hold is checked
/// with the other ZooKeeper settings.)
fn zk_auth(a: &AgentArgs) -> Result<Option<discovery::ZkAuth>, ConfigError> {
    match (&a.zk_sasl_username, &a.zk_sasl_password_file) {
        (Some(username), Some(file)) => Ok(Some(discovery::ZkAuth {
            username: username.clone(),
            password_file: file.clone(),
            world_read: a.zk_world_read,
        })),
        (None, None) => {
            if a.zk_world_read {
                info!(
                    "ZK_WORLD_READ is set without ZK_SASL_USERNAME: unauthenticated znodes are world-writable anyway"
                );
            }
            Ok(None)
        }
        (Some(_), None) => Err(ConfigError::new(
            "ZK_SASL_PASSWORD_FILE (--zk-sasl-password-file)",
            "unset while ZK_SASL_USERNAME is set",
            "give the file holding the ZooKeeper password (a mounted Secret), or unset ZK_SASL_USERNAME",
        )),
        (None, Some(f)) => Err(ConfigError::new(
            "ZK_SASL_USERNAME (--zk-sasl-username)",
            format!("unset while ZK_SASL_PASSWORD_FILE is set ({})", f.display()),
            "give the SASL user every agent shares, or unset ZK_SASL_PASSWORD_FILE",
        )),
    }
}

/// Which members may be probed: MESHPROBE_PEER_NETWORKS (else the networks of our own
/// addresses), MESHPROBE_PEER_PORTS, MESHPROBE_MAX_MEMBERS.
fn member_policy(a: &AgentArgs) -> Result<MemberPolicy, ConfigError> {
    let (networks, networks_from) = match &a.peer_networks {
        Some(n) => (n.clone(), "MESHPROBE_PEER_NETWORKS".to_string()),
        None => {
            let addrs = net::local_addresses().map_err(|e| {
                ConfigError::new(
                    "MESHPROBE_PEER_NETWORKS",
                    format!("unset, and this node's addresses cannot be read: {e}"),
                    "set MESHPROBE_PEER_NETWORKS to the networks of your cluster's nodes",
                )
            })?;
            let own = admit::own_networks(addrs);
            if own.networks.is_empty() {
                return Err(ConfigError::new(
                    "MESHPROBE_PEER_NETWORKS",
                    "unset, and this node has no address outside loopback and link-local",
                    "set MESHPROBE_PEER_NETWORKS to the networks of your cluster's nodes",
                ));
            }
            info!(
                "MESHPROBE_PEER_NETWORKS unset: probing ZooKeeper members in this node's \
                 networks only ({own})"
            );
            (own, "this node's networks".to_string())
        }
    };
    Ok(MemberPolicy {
        networks,
        networks_from,
        ports: a.peer_ports.clone(),
        max_members: a.max_members,
    })
}

/// The address we register: REGISTER_PUBLIC_DNS, else the reflector's own address, else our
/// source address towards the first ZooKeeper server.
fn public_address(
    given: Option<&str>,
    listen_ip: IpAddr,
    servers: &str,
) -> Result<String, ConfigError> {
    if let Some(p) = given {
        return Ok(p.to_string());
    }
    if !listen_ip.is_unspecified() {
        return Ok(listen_ip.to_string());
    }
    let first = servers.split(',').next().unwrap_or_default().trim();
    let ip = source_address_towards(first).map_err(|e| {
        ConfigError::new(
            "REGISTER_PUBLIC_DNS",
            format!("unset, and no source address towards {first}: {e}"),
            "set REGISTER_PUBLIC_DNS to the address peers should probe",
        )
    })?;
    info!("REGISTER_PUBLIC_DNS unset: registering {ip}, our address towards {first}");
    Ok(ip.to_string())
}

/// Our source address towards `server` (`host:port`): the address peers most likely reach.
fn source_address_towards(server: &str) -> std::io::Result<IpAddr> {
    let target = server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let sock = match target {
        SocketAddr::V4(_) => UdpSocket::bind(("0.0.0.0", 0))?,
        SocketAddr::V6(_) => UdpSocket::bind(("::", 0))?,
    };
    sock.connect(target)?;
    Ok(sock.local_addr()?.ip())
}

/// The ZooKeeper connection: a usable timeout and a non-empty connect string.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    if a.conn_timeout < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "CONN_TIMEOUT (--conn-timeout)",
            "must be at least 1 second",
            "e.g. 10",
        ));
    }
    if a.servers_zk.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Err(ConfigError::new(
            "SERVERS_ZK (--servers-zk)",
            "empty",
            "give host:port[,host:port], or unset it for static peers",
        ));
    }
    Ok(())
}
