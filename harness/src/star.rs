//! A star of namespaces around a Linux bridge, for multi-agent tests.
//!
//! | namespace | interface | IPv4 | IPv6 |
//! |---|---|---|---|
//! | core | `br0` (bridge of every `veth-c<i>`) | 198.18.0.1/24 | fd00::1/64 |
//! | node i | `veth-n<i>` | 198.18.0.(10+i)/24 | fd00::(10+i)/64 |
//!
//! Services (ZooKeeper, the broker) listen in the core namespace. Node `i`'s link is the veth
//! pair `veth-n<i>` (in node i) / `veth-c<i>` (in core, a bridge port). Everything is in
//! namespaces named `mpt-<pid>-...`, deleted on drop (deleting a node namespace deletes its
//! veth pair).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::topo::{Family, add_addr, veth_pair, wait_reachable};

/// Most nodes a star can have (addresses .10 to .249).
pub const MAX_NODES: usize = 240;

pub struct Star {
    /// Declared before `core` so nodes go first on drop.
    nodes: Vec<Option<Netns>>,
    core: Netns,
}

impl Star {
    pub const BRIDGE: &'static str = "br0";
    /// Locally administered, fixed for the bridge's life.
    pub const BRIDGE_MAC: &'static str = "02:00:c6:12:00:01";
    pub const CORE4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const CORE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

    /// A core namespace with the bridge and `n` nodes, every node reachable from the core
    /// over IPv4 and IPv6.
    pub fn new(n: usize) -> Result<Star> {
        let core = Netns::new("core")?;
        no_dad(&core)?;
        core.run([
            "ip",
            "link",
            "add",
            Self::BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])
        .context("creating the star bridge")?;
        // A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and changes it
        // as nodes are added, and nodes that resolved the core earlier keep sending to a MAC
        // that is no longer the bridge's (their TCP connections to the core then fail).
        core.run([
            "ip",
            "link",
            "set",
            Self::BRIDGE,
            "address",
            Self::BRIDGE_MAC,
        ])?;
        core.run(["ip", "link", "set", Self::BRIDGE, "up"])?;
        add_addr(&core, Self::BRIDGE, Self::CORE4.into(), 24)?;
        add_addr(&core, Self::BRIDGE, Self::CORE6.into(), 64)?;
        let mut star = Star {
            nodes: Vec::new(),
            core,
        };
        for _ in 0..n {
            star.add_node()?;
        }
        Ok(star)
    }

    /// Adds a node (next index) and returns its index once it reaches the core.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        if i >= MAX_NODES {
            bail!("a star has at most {MAX_NODES} nodes");
        }
        let ns = Netns::new(&format!("n{i}"))?;
        no_dad(&ns)?;
        let nif = Self::node_if_name(i);
        let cif = Self::core_if_name(i);
        veth_pair(&ns, &nif, &self.core, &cif)?;
        self.core
            .run(["ip", "link", "set", &cif, "master", Self::BRIDGE])?;
        add_addr(&ns, &nif, Self::ip4_of(i).into(), 24)?;
        add_addr(&ns, &nif, Self::ip6_of(i).into(), 64)?;
        self.nodes.push(Some(ns));
        let ns = self.nodes[i].as_ref().expect("just added");
        wait_reachable(ns, Self::CORE4.into())
            .with_context(|| format!("star node {i} -> core (IPv4)"))?;
        wait_reachable(ns, Self::CORE6.into())
            .with_context(|| format!("star node {i} -> core (IPv6)"))?;
        Ok(i)
    }

    /// Deletes node `i`'s namespace (and its link). Its index is not reused.
    pub fn remove_node(&mut self, i: usize) {
        if let Some(slot) = self.nodes.get_mut(i) {
            *slot = None;
        }
    }

    /// Node `i`'s namespace. Panics if there is no such node (never added, or removed).
    pub fn node(&self, i: usize) -> &Netns {
        self.nodes
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("star has no node {i}"))
    }

    /// Indices of the nodes present.
    pub fn node_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    pub fn core(&self) -> &Netns {
        &self.core
    }

    fn node_if_name(i: usize) -> String {
        format!("veth-n{i}")
    }

    fn core_if_name(i: usize) -> String {
        format!("veth-c{i}")
    }

    fn ip4_of(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10 + i as u8)
    }

    fn ip6_of(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10 + i as u16)
    }

    /// Node `i`'s interface (in its namespace), `veth-n<i>`.
    pub fn node_if(&self, i: usize) -> String {
        Self::node_if_name(i)
    }

    /// The core-side end of node `i`'s link (a bridge port in the core namespace), `veth-c<i>`.
    /// Its egress carries everything sent *to* node `i`.
    pub fn core_if(&self, i: usize) -> String {
        Self::core_if_name(i)
    }

    pub fn node_ip4(&self, i: usize) -> Ipv4Addr {
        Self::ip4_of(i)
    }

    pub fn node_ip6(&self, i: usize) -> Ipv6Addr {
        Self::ip6_of(i)
    }

    pub fn node_ip(&self, i: usize, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::ip4_of(i).into(),
            Family::V6 => Self::ip6_of(i).into(),
        }
    }

    /// The core's address on the bridge (where services listen).
    pub fn core_ip(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => Self::CORE4.into(),
            Family::V6 => Self::CORE6.into(),
        }
    }
}

/// No duplicate address detection in `ns`: IPv6 addresses are usable at once.
fn no_dad(ns: &Netns) -> Result<()> {
    for conf in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
    }
    Ok(())
}
