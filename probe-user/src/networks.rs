//! Addresses and networks: what kind of address an IP is, and lists of networks given in
//! settings (`MESHPROBE_REFLECT_ALLOW`, `MESHPROBE_PEER_NETWORKS`). IPv4-mapped IPv6
//! addresses count as IPv4 throughout.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworksError {
    #[error("`{0}` is not a network: expected ADDR/PREFIX (198.18.0.0/15, fd00::/8), ADDR, or any")]
    BadCidr(String),
}

/// What an address is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrKind {
    /// 0.0.0.0/8 ("this network") or `::`.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    Multicast,
    Loopback,
    LinkLocal,
    /// Anything else.
    Unicast,
}

impl AddrKind {
    pub fn of(ip: IpAddr) -> AddrKind {
        match ip.to_canonical() {
            IpAddr::V4(a) if a.octets()[0] == 0 => AddrKind::Unspecified,
            IpAddr::V4(a) if a.is_broadcast() => AddrKind::Broadcast,
            IpAddr::V4(a) if a.is_multicast() => AddrKind::Multicast,
            IpAddr::V4(a) if a.is_loopback() => AddrKind::Loopback,
            IpAddr::V4(a) if a.is_link_local() => AddrKind::LinkLocal,
            IpAddr::V6(a) if a.is_unspecified() => AddrKind::Unspecified,
            IpAddr::V6(a) if a.is_multicast() => AddrKind::Multicast,
            IpAddr::V6(a) if a.is_loopback() => AddrKind::Loopback,
            IpAddr::V6(a) if a.is_unicast_link_local() => AddrKind::LinkLocal,
            _ => AddrKind::Unicast,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddrKind::Unspecified => "unspecified",
            AddrKind::Broadcast => "broadcast",
            AddrKind::Multicast => "multicast",
            AddrKind::Loopback => "loopback",
            AddrKind::LinkLocal => "link-local",
            AddrKind::Unicast => "unicast",
        }
    }
}

/// Unicast: one host's address (loopback and link-local included), not unspecified,
/// broadcast or multicast.
pub fn is_unicast(ip: IpAddr) -> bool {
    !matches!(
        AddrKind::of(ip),
        AddrKind::Unspecified | AddrKind::Broadcast | AddrKind::Multicast
    )
}

/// An IP network: its address (host bits cleared) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `ip`/`prefix`; `None` for a prefix longer than the address.
    pub fn new(ip: IpAddr, prefix: u8) -> Option<Cidr> {
        let ip = ip.to_canonical();
        let addr = match ip {
            IpAddr::V4(a) if prefix <= 32 => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) if prefix <= 128 => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(n) == u32::from(a) & mask32(self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(n) == u128::from(a) & mask128(self.prefix),
            _ => false,
        }
    }

    /// The directed broadcast address of an IPv4 network that has one (prefix below 31).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(n) if self.prefix < 31 => Some((u32::from(n) | !mask32(self.prefix)).into()),
            _ => None,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = NetworksError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetworksError::BadCidr(s.to_string());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr = a.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Networks a setting allows: `any`, or a list of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub any: bool,
    pub networks: Vec<Cidr>,
}

impl AllowList {
    pub const ANY: AllowList = AllowList {
        any: true,
        networks: Vec::new(),
    };

    /// `any`, or networks separated by commas (empty items ignored).
    pub fn parse(s: &str) -> Result<AllowList, NetworksError> {
        let mut out = AllowList::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item.eq_ignore_ascii_case("any") {
                out.any = true;
            } else {
                out.networks.push(item.parse()?);
            }
        }
        Ok(out)
    }

    pub fn is_any(&self) -> bool {
        self.any
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.any || self.networks.iter().any(|n| n.contains(ip))
    }

    /// Whether `ip` is the directed broadcast address of one of the networks.
    pub fn is_broadcast_of_a_network(&self, ip: IpAddr) -> Option<Cidr> {
        let IpAddr::V4(v4) = ip.to_canonical() else {
            return None;
        };
        self.networks
            .iter()
            .find(|n| n.broadcast() == Some(v4))
            .copied()
    }
}

impl FromStr for AllowList {
    type Err = NetworksError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AllowList::parse(s)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = self.networks.iter().map(ToString::to_string).collect();
        if self.any {
            items.insert(0, "any".into());
        }
        if items.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists() {
        let a = AllowList::parse("any").unwrap();
        assert!(a.allows("203.0.113.1".parse().unwrap()));
        let a = AllowList::parse("198.18.0.0/15,fd00::/8,10.1.2.3").unwrap();
        assert!(a.allows("198.19.255.255".parse().unwrap()));
        assert!(!a.allows("198.20.0.0".parse().unwrap()));
        assert!(a.allows("10.1.2.3".parse().unwrap()));
        assert!(!a.allows("10.1.2.4".parse().unwrap()));
        assert!(a.allows("fd12::1".parse().unwrap()));
        assert!(a.allows("::ffff:198.18.1.1".parse().unwrap()));
        for bad in [
            "198.18.0.0/33",
            "fd00::/129",
            "nope",
            "198.18.0.0/",
            "::ffff:1.2.3.4/64",
        ] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Cidr::from_str("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        // Host bits are cleared: one network, one spelling.
        let a = AllowList::parse(" 10.1.2.3/16 , fd00::1/8").unwrap();
        assert_eq!(a.to_string(), "10.1.0.0/16,fd00::/8");
        assert_eq!(
            a.networks[0].broadcast(),
            Some("10.1.255.255".parse().unwrap())
        );
        assert_eq!(Cidr::from_str("10.0.0.1/31").unwrap().broadcast(), None);
        assert_eq!(
            a.is_broadcast_of_a_network("10.1.255.255".parse().unwrap()),
            Some(a.networks[0])
        );
    }

    #[test]
    fn address_kinds() {
        for (ip, k) in [
            ("0.0.0.0", AddrKind::Unspecified),
            ("0.1.2.3", AddrKind::Unspecified),
            ("::", AddrKind::Unspecified),
            ("255.255.255.255", AddrKind::Broadcast),
            ("224.0.0.1", AddrKind::Multicast),
            ("ff02::1", AddrKind::Multicast),
            ("127.0.0.1", AddrKind::Loopback),
            ("::1", AddrKind::Loopback),
            ("::ffff:127.0.0.1", AddrKind::Loopback),
            ("169.254.169.254", AddrKind::LinkLocal),
            ("fe80::1", AddrKind::LinkLocal),
            ("198.18.0.1", AddrKind::Unicast),
            ("fd00::1", AddrKind::Unicast),
        ] {
            assert_eq!(AddrKind::of(ip.parse().unwrap()), k, "{ip}");
        }
        assert!(is_unicast("127.0.0.1".parse().unwrap()));
        assert!(!is_unicast("0.0.0.0".parse().unwrap()));
    }
}
