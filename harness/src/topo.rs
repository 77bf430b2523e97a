//! Test topologies built from namespaces and veth pairs.
//!
//! Only 198.18.0.0/15 and fd00::/8 are used, and only inside namespaces this harness created.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::Netns;

/// Address family of a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, both up.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.run([
        "ip",
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("veth {a_if}<->{b_if}"))?;
    a.run(["ip", "link", "set", a_if, "up"])?;
    b.run(["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// Adds `addr/prefix` to `ifname`; IPv6 addresses get `nodad` so they are usable at once.
pub fn add_addr(ns: &Netns, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    let cidr = format!("{addr}/{prefix}");
    match addr {
        IpAddr::V4(_) => ns.run(["ip", "addr", "add", &cidr, "dev", ifname])?,
        IpAddr::V6(_) => ns.run(["ip", "-6", "addr", "add", &cidr, "dev", ifname, "nodad"])?,
    };
    Ok(())
}

/// `ethtool -K IF tx on|off` (tx checksum offload) in `ns`.
pub fn set_tx_offload(ns: &Netns, ifname: &str, on: bool) -> Result<()> {
    ns.run(["ethtool", "-K", ifname, "tx", if on { "on" } else { "off" }])?;
    Ok(())
}

/// The interface's MAC address.
pub fn mac_of(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.run(["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)?;
    let s = v[0]["address"]
        .as_str()
        .context("no address in ip -j link")?;
    let mut mac = [0u8; 6];
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

/// `ping` from `ns` to `dst` until one reply arrives (bounded: 50 tries of 1 packet / 100 ms).
pub fn wait_reachable(ns: &Netns, dst: IpAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let d = dst.to_string();
    for _ in 0..50 {
        let out = ns.output(["ping", "-n", "-q", "-c", "1", "-W", "1", "-i", "0.1", &d])?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{d} not reachable from {}", ns.name())
}

/// A <-veth-> B.
///
/// | host | interface | IPv4 | IPv6 |
/// |---|---|---|---|
/// | A | `veth-a` | 198.18.0.1/24 | fd00::1/64 |
/// | B | `veth-b` | 198.18.0.2/24 | fd00::2/64 |
pub struct TwoHosts {
    pub a: Netns,
    pub b: Netns,
}

impl TwoHosts {
    pub const A_IF: &'static str = "veth-a";
    pub const B_IF: &'static str = "veth-b";
    pub const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    pub fn new() -> Result<TwoHosts> {
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        veth_pair(&a, Self::A_IF, &b, Self::B_IF)?;
        add_addr(&a, Self::A_IF, Self::A4.into(), 24)?;
        add_addr(&b, Self::B_IF, Self::B4.into(), 24)?;
        add_addr(&a, Self::A_IF, Self::A6.into(), 64)?;
        add_addr(&b, Self::B_IF, Self::B6.into(), 64)?;
        let t = TwoHosts { a, b };
        wait_reachable(&t.a, Self::B4.into())?;
        wait_reachable(&t.a, Self::B6.into())?;
        Ok(t)
    }

    pub fn a_addr(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::A4.into(),
            Family::V6 => Self::A6.into(),
        }
    }

    pub fn b_addr(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::B4.into(),
            Family::V6 => Self::B6.into(),
        }
    }

    /// tx checksum offload on both veth ends.
    pub fn set_tx_offload(&self, on: bool) -> Result<()> {
        set_tx_offload(&self.a, Self::A_IF, on)?;
        set_tx_offload(&self.b, Self::B_IF, on)
    }
}

/// A <-> R <-> B, R forwarding IPv4 and IPv6.
///
/// | host | interface | IPv4 | IPv6 |
/// |---|---|---|---|
/// | A | `veth-a` | 198.18.0.1/24, default via .254 | fd00::1/64, default via fd00::fe |
/// | R | `veth-ra` (to A) | 198.18.0.254/24 | fd00::fe/64 |
/// | R | `veth-rb` (to B) | 198.18.1.254/24 | fd00:1::fe/64 |
/// | B | `veth-b` | 198.18.1.2/24, default via .254 | fd00:1::2/64, default via fd00:1::fe |
pub struct Routed {
    pub a: Netns,
    pub r: Netns,
    pub b: Netns,
}

impl Routed {
    pub const A_IF: &'static str = "veth-a";
    pub const RA_IF: &'static str = "veth-ra";
    pub const RB_IF: &'static str = "veth-rb";
    pub const B_IF: &'static str = "veth-b";
    pub const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const RA4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    pub const RB4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
    pub const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const RA6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);
    pub const RB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0xfe);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);

    pub fn new() -> Result<Routed> {
        let a = Netns::new("a")?;
        let r = Netns::new("r")?;
        let b = Netns::new("b")?;
        veth_pair(&a, Self::A_IF, &r, Self::RA_IF)?;
        veth_pair(&r, Self::RB_IF, &b, Self::B_IF)?;
        add_addr(&a, Self::A_IF, Self::A4.into(), 24)?;
        add_addr(&r, Self::RA_IF, Self::RA4.into(), 24)?;
        add_addr(&r, Self::RB_IF, Self::RB4.into(), 24)?;
        add_addr(&b, Self::B_IF, Self::B4.into(), 24)?;
        add_addr(&a, Self::A_IF, Self::A6.into(), 64)?;
        add_addr(&r, Self::RA_IF, Self::RA6.into(), 64)?;
        add_addr(&r, Self::RB_IF, Self::RB6.into(), 64)?;
        add_addr(&b, Self::B_IF, Self::B6.into(), 64)?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        a.run([
            "ip",
            "route",
            "add",
            "default",
            "via",
            &Self::RA4.to_string(),
        ])?;
        b.run([
            "ip",
            "route",
            "add",
            "default",
            "via",
            &Self::RB4.to_string(),
        ])?;
        a.run([
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &Self::RA6.to_string(),
        ])?;
        b.run([
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &Self::RB6.to_string(),
        ])?;
        let t = Routed { a, r, b };
        wait_reachable(&t.a, Self::B4.into())?;
        wait_reachable(&t.a, Self::B6.into())?;
        Ok(t)
    }

    pub fn a_addr(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::A4.into(),
            Family::V6 => Self::A6.into(),
        }
    }

    pub fn b_addr(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::B4.into(),
            Family::V6 => Self::B6.into(),
        }
    }
}
