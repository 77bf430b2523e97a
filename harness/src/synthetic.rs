//! Synthetic members at scale: a zone/rack topology of many members without agents, their
//! addresses, and one namespace that answers for all of those addresses.
//!
//! The addresses come from [`SYNTHETIC4`] (198.19.0.0/16, inside the harness's 198.18.0.0/15)
//! and [`SYNTHETIC6`] (fd00:5::/64). The reflector namespace takes the whole prefixes as
//! `local` routes (AnyIP): the kernel accepts packets to any address in them without one
//! address per member, and one `meshprobe reflect` listening on `::` answers them all (from
//! its own address; senders match replies by session). Agents reach the prefixes through the
//! reflector namespace (a route via its address), so they hold one neighbour entry for it,
//! not one per member: no neighbour-table limits (gc_thresh) come into play.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

use crate::netns::Netns;
use crate::topo::Family;
use crate::zkreg::SyntheticMember;

/// IPv4 prefix of the synthetic members.
pub const SYNTHETIC4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// IPv6 prefix of the synthetic members.
pub const SYNTHETIC6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 0), 64);
/// Most synthetic addresses of one family (the IPv4 prefix less its first and last address).
pub const MAX_MEMBERS: usize = (1 << 16) - 2;

/// Where synthetic members sit: `zones` zones of `racks` racks of `per_rack` members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub zones: usize,
    pub racks: usize,
    pub per_rack: usize,
}

impl Shape {
    /// 50 zones × 200 members in racks of 20: 10 000 members.
    pub const TEN_THOUSAND: Shape = Shape {
        zones: 50,
        racks: 10,
        per_rack: 20,
    };

    pub fn members(&self) -> usize {
        self.zones * self.racks * self.per_rack
    }
}

/// Zone label of zone `z`.
pub fn zone_name(z: usize) -> String {
    format!("zone-{z:02}")
}

/// Rack label of rack `r` of zone `z` (rack labels are unique cluster-wide).
pub fn rack_name(z: usize, r: usize) -> String {
    format!("zone-{z:02}-rack-{r:02}")
}

/// The address of synthetic member number `i` (0-based).
pub fn address(i: usize, family: Family) -> IpAddr {
    assert!(i < MAX_MEMBERS, "synthetic member {i} out of range");
    match family {
        Family::V4 => Ipv4Addr::from(u32::from(SYNTHETIC4.0) + 1 + i as u32).into(),
        Family::V6 => Ipv6Addr::from(u128::from(SYNTHETIC6.0) + 1 + i as u128).into(),
    }
}

/// Member `i` of a topology: `syn-<zone>-<rack>-<n>`, number `i` in the address range.
pub fn member(i: usize, z: usize, r: usize, n: usize, family: Family) -> SyntheticMember {
    SyntheticMember {
        node_id: format!("syn-{z:02}-{r:02}-{n:03}"),
        zone: zone_name(z),
        rack: rack_name(z, r),
        addr: address(i, family),
        port: crate::STAMP_PORT,
    }
}

/// Every member of `shape`, numbered zone by zone, rack by rack.
pub fn members(shape: Shape, family: Family) -> Vec<SyntheticMember> {
    let mut out = Vec::with_capacity(shape.members());
    for z in 0..shape.zones {
        for r in 0..shape.racks {
            for n in 0..shape.per_rack {
                out.push(member(out.len(), z, r, n, family));
            }
        }
    }
    out
}

fn prefix(family: Family) -> String {
    match family {
        Family::V4 => format!("{}/{}", SYNTHETIC4.0, SYNTHETIC4.1),
        Family::V6 => format!("{}/{}", SYNTHETIC6.0, SYNTHETIC6.1),
    }
}

/// Makes `ns` accept every synthetic address of `family` as its own (a `local` route on lo).
/// The namespace's routes go with it, so there is nothing to undo.
pub fn answer_all(ns: &Netns, family: Family) -> Result<()> {
    ns.run(["ip", "link", "set", "lo", "up"])?;
    let p = prefix(family);
    ns.run(["ip", "route", "add", "local", &p, "dev", "lo"])?;
    Ok(())
}

/// Routes the synthetic prefix of `via`'s family from `ns` through `via` (the reflector
/// namespace's address on a shared link).
pub fn route_via(ns: &Netns, via: IpAddr) -> Result<()> {
    let family = match via {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    };
    let p = prefix(family);
    let v = via.to_string();
    ns.run(["ip", "route", "add", &p, "via", &v])?;
    Ok(())
}

/// Checks that `shape` fits the address range.
pub fn check_shape(shape: Shape) -> Result<()> {
    if shape.members() > MAX_MEMBERS {
        bail!(
            "{} synthetic members: at most {MAX_MEMBERS} addresses",
            shape.members()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_range() {
        let ms = members(Shape::TEN_THOUSAND, Family::V4);
        assert_eq!(ms.len(), 10_000);
        let set: std::collections::BTreeSet<_> = ms.iter().map(|m| m.addr).collect();
        assert_eq!(set.len(), 10_000);
        assert_eq!(ms[0].addr, "198.19.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ms[9_999].addr, "198.19.39.16".parse::<IpAddr>().unwrap());
        let ids: std::collections::BTreeSet<_> = ms.iter().map(|m| &m.node_id).collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(
            address(0, Family::V6),
            "fd00:5::1".parse::<IpAddr>().unwrap()
        );
    }
}
