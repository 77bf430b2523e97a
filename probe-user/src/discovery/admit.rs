//! Which ZooKeeper members may be probed: the one rule every member passes before it enters the
//! peer map.
//!
//! Anyone who can write to ZooKeeper can register a member, and every agent then probes it: a
//! fake member is a way to aim the whole fleet at an address. So a member is probed only if
//! - its address is unicast and routable here: not unspecified, loopback, link-local,
//!   multicast, broadcast (limited or the directed broadcast of an allowed network), or a
//!   cloud metadata address;
//! - its address lies in the allowed networks (`MESHPROBE_PEER_NETWORKS`; default: the
//!   networks of this node's own addresses);
//! - its port is in the allowed ports (`MESHPROBE_PEER_PORTS`);
//! - its node id, zone and rack are short and made of label-safe characters (they become
//!   Prometheus label values and Kafka keys; the exposition escapes them anyway);
//! - fewer than `MESHPROBE_MAX_MEMBERS` members are known.
//!
//! Our own registration passes the same label rule before it is written ([`check_labels`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use crate::networks::{AddrKind, AllowList, Cidr};

/// Longest node id (a DNS name's limit: node ids are usually host names).
pub const MAX_NODE_ID_LEN: usize = 253;
/// Longest zone or rack (a Kubernetes label value's limit).
pub const MAX_LABEL_LEN: usize = 63;
/// Default member cap: twice the largest cluster meshprobe is built for.
pub const DEFAULT_MAX_MEMBERS: usize = 20_000;
/// Default ports: the STAMP port and the unprivileged range (a member cannot point the fleet
/// at DNS, SSH or another well-known service port).
pub const DEFAULT_PORTS: &str = "862,1024-65535";

/// Instance metadata services reachable at a routable address (the link-local ones, such as
/// 169.254.169.254, are refused as link-local): Azure's WireServer, Alibaba Cloud, AWS over
/// IPv6 (inside fd00::/8, which clusters use).
const METADATA: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Why a member is not probed; `label()` is the `reason` of
/// `meshprobe_zookeeper_members_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An index entry that does not parse (not written by a meshprobe agent).
    Malformed,
    /// Node id, zone or rack too long or with characters outside `A-Z a-z 0-9 . _ : -`.
    Label,
    /// Not a unicast address (unspecified, multicast, broadcast).
    NotUnicast,
    Loopback,
    LinkLocal,
    Metadata,
    /// Outside the allowed networks.
    Network,
    /// Outside the allowed ports.
    Port,
    /// A DNS name that does not resolve.
    Unresolved,
    /// More members than the cap.
    Cap,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Malformed,
        Reason::Label,
        Reason::NotUnicast,
        Reason::Loopback,
        Reason::LinkLocal,
        Reason::Metadata,
        Reason::Network,
        Reason::Port,
        Reason::Unresolved,
        Reason::Cap,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Label => "label",
            Reason::NotUnicast => "not_unicast",
            Reason::Loopback => "loopback",
            Reason::LinkLocal => "link_local",
            Reason::Metadata => "metadata",
            Reason::Network => "network",
            Reason::Port => "port",
            Reason::Unresolved => "unresolved",
            Reason::Cap => "cap",
        }
    }
}

/// A refusal and what exactly was wrong, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }

    pub fn malformed(why: impl Into<String>) -> Refusal {
        Refusal::new(Reason::Malformed, why)
    }

    pub fn unresolved(why: impl Into<String>) -> Refusal {
        Refusal::new(Reason::Unresolved, why)
    }

    pub fn cap(max: usize) -> Refusal {
        Refusal::new(
            Reason::Cap,
            format!("more than MESHPROBE_MAX_MEMBERS={max} members"),
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The admission settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPolicy {
    /// Members must be in one of these.
    pub networks: AllowList,
    /// Where `networks` came from, for the log ("MESHPROBE_PEER_NETWORKS" or "this node's
    /// networks").
    pub networks_from: String,
    pub ports: Ports,
    pub max_members: usize,
}

impl MemberPolicy {
    /// Everything a test network needs: any network, the default ports and cap.
    pub fn any_network() -> MemberPolicy {
        MemberPolicy {
            networks: AllowList::ANY,
            networks_from: "any network".into(),
            ports: DEFAULT_PORTS.parse().expect("the default ports parse"),
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }

    /// The address and port a member is probed at.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = addr.ip().to_canonical();
        let kind = AddrKind::of(ip);
        let reason = match kind {
            AddrKind::Unicast => None,
            AddrKind::Loopback => Some(Reason::Loopback),
            AddrKind::LinkLocal => Some(Reason::LinkLocal),
            AddrKind::Unspecified | AddrKind::Broadcast | AddrKind::Multicast => {
                Some(Reason::NotUnicast)
            }
        };
        if let Some(reason) = reason {
            return Err(Refusal::new(
                reason,
                format!("{ip} is a {} address", kind.as_str()),
            ));
        }
        if METADATA.contains(&ip) {
            return Err(Refusal::new(
                Reason::Metadata,
                format!("{ip} is a cloud metadata address"),
            ));
        }
        if !self.networks.allows(ip) {
            return Err(Refusal::new(
                Reason::Network,
                format!(
                    "{ip} is outside the allowed networks ({}: {}); set MESHPROBE_PEER_NETWORKS \
                     to the networks of your cluster's nodes",
                    self.networks_from, self.networks
                ),
            ));
        }
        if let Some(n) = self.networks.is_broadcast_of_a_network(ip) {
            return Err(Refusal::new(
                Reason::NotUnicast,
                format!("{ip} is the broadcast address of {n}"),
            ));
        }
        if !self.ports.contains(addr.port()) {
            return Err(Refusal::new(
                Reason::Port,
                format!(
                    "port {} is outside the allowed ports ({}; MESHPROBE_PEER_PORTS)",
                    addr.port(),
                    self.ports
                ),
            ));
        }
        Ok(())
    }
}

/// A member's node id, zone and rack: bounded, label-safe characters (`A-Z a-z 0-9 . _ : -`),
/// a non-empty node id.
pub fn check_labels(node_id: &str, zone: &str, rack: &str) -> Result<(), Refusal> {
    for (what, v, max, may_be_empty) in [
        ("node id", node_id, MAX_NODE_ID_LEN, false),
        ("zone", zone, MAX_LABEL_LEN, true),
        ("rack", rack, MAX_LABEL_LEN, true),
    ] {
        let bad = |why: String| Err(Refusal::new(Reason::Label, format!("{what} {why}")));
        if v.is_empty() && !may_be_empty {
            return bad("is empty".into());
        }
        if v.len() > max {
            return bad(format!("of {} bytes (at most {max})", v.len()));
        }
        if let Some(c) = v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return bad(format!(
                "{:?} has {c:?}: only A-Z a-z 0-9 . _ : - are allowed",
                v.escape_debug().to_string()
            ));
        }
    }
    Ok(())
}

/// `MESHPROBE_PEER_NETWORKS`: `any`, or comma-separated networks (`10.0.0.0/8,fd00::/8`; a
/// bare address is a host network).
pub fn parse_networks(s: &str) -> Result<AllowList, String> {
    let n = AllowList::parse(s).map_err(|e| e.to_string())?;
    if !n.is_any() && n.networks.is_empty() {
        return Err("no network given (use `any` to allow every network)".into());
    }
    Ok(n)
}

/// `MESHPROBE_PEER_PORTS`: comma-separated ports and ranges (`862,1024-65535`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(pub Vec<RangeInclusive<u16>>);

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }
}

impl std::str::FromStr for Ports {
    type Err = String;
    fn from_str(s: &str) -> Result<Ports, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let r = match part.split_once('-') {
                Some((a, b)) => port(a)?..=port(b)?,
                None => port(part)?..=port(part)?,
            };
            if r.is_empty() {
                return Err(format!("{part:?}: the range is empty"));
            }
            out.push(r);
        }
        if out.is_empty() {
            return Err("no port given".into());
        }
        Ok(Ports(out))
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

/// The networks of this node's own addresses (loopback and link-local left out).
pub fn own_networks(addrs: impl IntoIterator<Item = (IpAddr, u8)>) -> AllowList {
    let mut out = AllowList::default();
    for (ip, prefix) in addrs {
        if AddrKind::of(ip) != AddrKind::Unicast {
            continue;
        }
        if let Some(n) = Cidr::new(ip, prefix)
            && !out.networks.contains(&n)
        {
            out.networks.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(nets: &str) -> MemberPolicy {
        MemberPolicy {
            networks: parse_networks(nets).unwrap(),
            networks_from: "test".into(),
            ports: DEFAULT_PORTS.parse().unwrap(),
            max_members: 10,
        }
    }

    fn refused(p: &MemberPolicy, a: &str) -> Option<Reason> {
        p.check_addr(a.parse().unwrap()).err().map(|r| r.reason)
    }

    #[test]
    fn addresses() {
        let p = policy("198.18.0.0/15,10.1.2.0/24,fd00::/8");
        assert_eq!(refused(&p, "198.18.0.7:862"), None);
        assert_eq!(refused(&p, "[fd00::7]:20000"), None);
        assert_eq!(refused(&p, "[::ffff:198.18.0.7]:862"), None);
        for (a, r) in [
            ("0.0.0.0:862", Reason::NotUnicast),
            ("0.1.2.3:862", Reason::NotUnicast),
            ("255.255.255.255:862", Reason::NotUnicast),
            ("224.0.0.1:862", Reason::NotUnicast),
            ("10.1.2.255:862", Reason::NotUnicast),
            ("[ff02::1]:862", Reason::NotUnicast),
            ("[::]:862", Reason::NotUnicast),
            ("127.0.0.1:862", Reason::Loopback),
            ("[::1]:862", Reason::Loopback),
            ("[::ffff:127.0.0.1]:862", Reason::Loopback),
            ("169.254.169.254:80", Reason::LinkLocal),
            ("[fe80::1]:862", Reason::LinkLocal),
            ("[fd00:ec2::254]:862", Reason::Metadata),
            ("8.8.8.8:862", Reason::Network),
            ("[2001:db8::1]:862", Reason::Network),
            ("198.18.0.7:53", Reason::Port),
            ("198.18.0.7:1023", Reason::Port),
        ] {
            assert_eq!(refused(&p, a), Some(r), "{a}");
        }
        // The refusal says what to do.
        let e = p.check_addr("8.8.8.8:862".parse().unwrap()).unwrap_err();
        assert!(e.detail.contains("MESHPROBE_PEER_NETWORKS"), "{e}");
        // Metadata services at routable addresses, even inside an allowed network.
        let any = MemberPolicy::any_network();
        assert_eq!(refused(&any, "168.63.129.16:862"), Some(Reason::Metadata));
        assert_eq!(refused(&any, "100.100.100.200:862"), Some(Reason::Metadata));
        assert_eq!(refused(&any, "8.8.8.8:862"), None);
    }

    #[test]
    fn labels() {
        assert!(check_labels("node-1.example:a_b", "us-east-1a", "").is_ok());
        for (id, zone, rack) in [
            ("", "z", "r"),
            ("a\"b", "z", "r"),
            ("a b", "z", "r"),
            ("a\nb", "z", "r"),
            ("ä", "z", "r"),
            ("n", "z/1", "r"),
            ("n", "z", "r{x}"),
        ] {
            let e = check_labels(id, zone, rack).unwrap_err();
            assert_eq!(e.reason, Reason::Label, "{id:?} {zone:?} {rack:?}");
        }
        assert!(check_labels(&"n".repeat(MAX_NODE_ID_LEN), "", "").is_ok());
        assert!(check_labels(&"n".repeat(MAX_NODE_ID_LEN + 1), "", "").is_err());
        assert!(check_labels("n", &"z".repeat(MAX_LABEL_LEN + 1), "").is_err());
        // A control character is shown escaped, not written to the log as is.
        let e = check_labels("a\u{1b}[2Jb", "", "").unwrap_err();
        assert!(!e.detail.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn settings() {
        assert_eq!(
            parse_networks(" 10.1.2.3/16 , fd00::1/8,198.18.0.1")
                .unwrap()
                .to_string(),
            "10.1.0.0/16,fd00::/8,198.18.0.1/32"
        );
        assert!(parse_networks("any").unwrap().is_any());
        assert!(parse_networks("").is_err());
        assert!(parse_networks(" , ").is_err());
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("example.com").is_err());
        assert_eq!(
            DEFAULT_PORTS.parse::<Ports>().unwrap().to_string(),
            DEFAULT_PORTS
        );
        assert_eq!(
            "9000-9001,862".parse::<Ports>().unwrap(),
            Ports(vec![9000..=9001, 862..=862])
        );
        for bad in ["", "0", "70000", "9001-9000", "a-b", "1-"] {
            assert!(bad.parse::<Ports>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_networks_leave_out_loopback_and_link_local() {
        let n = own_networks([
            ("127.0.0.1".parse().unwrap(), 8),
            ("::1".parse().unwrap(), 128),
            ("fe80::1".parse().unwrap(), 64),
            ("198.18.0.5".parse().unwrap(), 24),
            ("198.18.0.6".parse().unwrap(), 24),
            ("fd00::5".parse().unwrap(), 64),
        ]);
        assert_eq!(n.to_string(), "198.18.0.0/24,fd00::/64");
    }
}
