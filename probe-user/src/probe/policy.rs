//! Which requests the Session-Reflector answers: the one place that decides.
//!
//! A reflector on every node of a cluster must not become a weapon. It never answers:
//! - a privileged source port, or a reflector's (ours, or a known peer's): two reflectors
//!   must never talk to each other (the "Loop DoS" pattern, CVE-2024-2169);
//! - a source that is not a unicast address (multicast, broadcast, unspecified): no reply could
//!   be meant for it;
//! - a request not addressed to a local unicast address (subnet or limited broadcast,
//!   multicast): one spoofed packet must not draw an answer from every node of a segment;
//! - a packet shaped like a reply (see [`looks_reflected`]), so no two reflectors loop on
//!   any ports;
//! - a source outside the allow-list;
//! - authenticated mode `required`: a request whose HMAC verifies under neither key (after the
//!   cheap checks above, so a spoofed flood from refused sources costs no HMAC; before the
//!   budgets, so forged requests never spend the tokens of real senders);
//! - beyond its per-source or the global reply budget (token buckets, checked before the
//!   request is decoded, so a flood costs little).
//!
//! A reply is never longer than its request (RFC 8762 §4.3, RFC 8972), so there is nothing to
//! amplify; the budgets bound what is reflected.
use std::{collections::HashMap, fmt, net::IpAddr, str::FromStr, time::Instant};

use probe_common::{auth_wire as auth_off, policy::refused_src_port, wire as off};
use serde::Serialize;

pub use crate::networks::{AllowList, Cidr};
use crate::{
    auth::{Auth, Mode as AuthMode, Verified},
    net::Received,
    networks::is_unicast,
};

/// Why a request was not answered. The set is fixed: it labels a Prometheus family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Privileged source port, or one of our or our peers' reflector ports.
    SourcePort,
    /// Source address not unicast (multicast, broadcast, unspecified).
    SourceAddress,
    /// Not addressed to a local unicast address (broadcast, multicast), or the kernel did not
    /// say where it was addressed.
    Destination,
    /// Shaped like a reflected packet (non-zero octets 36..44), or arrived with TTL 0 so our
    /// reply would not be recognisable as one.
    Reflected,
    /// Source not in the allow-list.
    NotAllowed,
    /// Over the per-source reply budget.
    SourceBudget,
    /// Over the global reply budget.
    TotalBudget,
    /// Authenticated mode `required`: the HMAC verifies under neither key (or the request is
    /// too short to carry one).
    Auth,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::SourcePort,
        Refusal::SourceAddress,
        Refusal::Destination,
        Refusal::Reflected,
        Refusal::NotAllowed,
        Refusal::SourceBudget,
        Refusal::TotalBudget,
        Refusal::Auth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourcePort => "source_port",
            Refusal::SourceAddress => "source_address",
            Refusal::Destination => "destination",
            Refusal::Reflected => "reflected",
            Refusal::NotAllowed => "not_allowed",
            Refusal::SourceBudget => "source_budget",
            Refusal::TotalBudget => "total_budget",
            Refusal::Auth => "auth",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusals counted by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefusedCounts([u64; Refusal::ALL.len()]);

impl RefusedCounts {
    pub fn add(&mut self, r: Refusal) {
        self.0[r.index()] += 1;
    }

    pub fn get(&self, r: Refusal) -> u64 {
        self.0[r.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for RefusedCounts {
    /// A map of every reason (zeros too), so readers need not know which appeared.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(Refusal::ALL.len()))?;
        for r in Refusal::ALL {
            m.serialize_entry(r.as_str(), &self.get(r))?;
        }
        m.end()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("`{0}` is not a rate: expected N/s (e.g. 1000/s), N, or off")]
    BadRate(String),
    #[error(
        "reflector port {port} is inside net.ipv4.ip_local_port_range {lo}-{hi}: senders' and \
         tunnels' source ports are drawn from that range, so a foreign datagram could share \
         the port; choose a port outside it (default 862), or allow it explicitly \
         (reflect --allow-ephemeral-port, agent MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT)"
    )]
    EphemeralPort { port: u16, lo: u16, hi: u16 },
}

/// A budget setting: a rate, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub Option<Rate>);

impl FromStr for Budget {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s).map(Budget)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{}/s", r.per_sec),
            None => f.write_str("off"),
        }
    }
}

impl Budget {
    pub const DEFAULT_PER_SOURCE: Budget = Budget(Some(Rate {
        per_sec: DEFAULT_PER_SOURCE,
    }));
    pub const DEFAULT_TOTAL: Budget = Budget(Some(Rate {
        per_sec: DEFAULT_TOTAL,
    }));
}

/// A reply budget: `per_sec` on average, up to one second's worth at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
}

impl Rate {
    /// `N/s` or `N` (N ≥ 1); `off` (or `unlimited`) is `None`: no budget.
    pub fn parse(s: &str) -> Result<Option<Rate>, PolicyError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("unlimited") {
            return Ok(None);
        }
        let n = t.strip_suffix("/s").unwrap_or(t).trim();
        match n.parse::<u32>() {
            Ok(per_sec) if per_sec > 0 => Ok(Some(Rate { per_sec })),
            _ => Err(PolicyError::BadRate(s.to_string())),
        }
    }
}

/// A token bucket of `Rate`: starts full (one second's worth).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.per_sec),
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        let cap = f64::from(rate.per_sec);
        self.tokens = (self.tokens + dt * cap).min(cap);
        self.last = now;
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sources with their own bucket at most; beyond it the least recently seen are forgotten.
pub const SOURCE_TABLE: usize = 4096;

/// Per-source buckets in a bounded table. A forgotten source starts again with a full bucket,
/// which is what an idle one would have anyway; a flood from many spoofed sources is bounded
/// by the global budget instead.
#[derive(Debug)]
struct SourceBuckets {
    rate: Rate,
    cap: usize,
    map: HashMap<IpAddr, Bucket>,
}

impl SourceBuckets {
    fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.map.contains_key(&ip) && self.map.len() >= self.cap {
            self.evict(now);
        }
        let rate = self.rate;
        self.map
            .entry(ip)
            .or_insert_with(|| Bucket::new(rate, now))
            .take(rate, now)
    }

    /// Frees at least an eighth of the table (amortised O(1) per new source): the sources
    /// whose bucket has refilled (as good as new), else the least recently seen.
    fn evict(&mut self, now: Instant) {
        let rate = self.rate;
        let full = f64::from(rate.per_sec);
        self.map.retain(|_, b| {
            b.refill(rate, now);
            b.tokens < full
        });
        let want = self.cap - self.cap / 8;
        if self.map.len() > want {
            let mut seen: Vec<Instant> = self.map.values().map(|b| b.last).collect();
            let k = self.map.len() - want;
            let (_, cut, _) = seen.select_nth_unstable(k - 1);
            let cut = *cut;
            self.map.retain(|_, b| b.last > cut);
        }
    }
}

/// What the reflector answers (configuration).
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub allow: AllowList,
    pub per_source: Option<Rate>,
    pub total: Option<Rate>,
    /// STAMP authenticated mode of the reflector, and its keys.
    pub auth: Auth,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allow: AllowList::ANY,
            per_source: Some(Rate {
                per_sec: DEFAULT_PER_SOURCE,
            }),
            total: Some(Rate {
                per_sec: DEFAULT_TOTAL,
            }),
            auth: Auth::OFF,
        }
    }
}

/// Default per-source budget: a sender probing every half millisecond (or an agent probing
/// a thousand addresses of one host every second, as the footprint bench does) is still
/// answered in full; an agent's peer sends about one a second.
pub const DEFAULT_PER_SOURCE: u32 = 2000;
/// Default global budget.
pub const DEFAULT_TOTAL: u32 = 20_000;

/// The admission decision, with the state it needs (buckets, the current peers).
#[derive(Debug)]
pub struct ReflectPolicy {
    allow: AllowList,
    /// Known peers' addresses, answered besides `allow` (the agent's membership).
    peers: Vec<IpAddr>,
    /// Our reflector ports and known peers' (a request from one is never answered).
    reflector_ports: Vec<u16>,
    own_ports: Vec<u16>,
    per_source: Option<SourceBuckets>,
    total: Option<(Rate, Bucket)>,
    auth: Auth,
}

/// How an admitted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Open (unauthenticated) mode.
    Open,
    /// Authenticated mode: the request's HMAC verified. `tlvs_ok`: its RFC 8972 HMAC TLV's
    /// verdict, when it carries one (a failure sets the I flag in the reply).
    Authenticated { tlvs_ok: Option<bool> },
}

impl ReflectPolicy {
    pub fn new(cfg: &PolicyConfig, own_ports: &[u16], now: Instant) -> ReflectPolicy {
        ReflectPolicy {
            allow: cfg.allow.clone(),
            peers: Vec::new(),
            reflector_ports: own_ports.to_vec(),
            own_ports: own_ports.to_vec(),
            per_source: cfg.per_source.map(|rate| SourceBuckets {
                rate,
                cap: SOURCE_TABLE,
                map: HashMap::new(),
            }),
            total: cfg.total.map(|r| (r, Bucket::new(r, now))),
            auth: cfg.auth.clone(),
        }
    }

    /// The current peers' reflector addresses: they are answered (besides the allow-list),
    /// and their reflector ports are refused as source ports.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = std::net::SocketAddr>) {
        self.peers.clear();
        self.reflector_ports.clone_from(&self.own_ports);
        for p in peers {
            self.peers.push(p.ip().to_canonical());
            self.reflector_ports.push(p.port());
        }
        self.peers.sort_unstable();
        self.peers.dedup();
        self.reflector_ports.sort_unstable();
        self.reflector_ports.dedup();
    }

    /// Whether the request `payload` received as `rx` may be answered, and in which mode.
    /// Cheap checks first, then the HMAC (authenticated mode), the budgets last (only a request
    /// that passes everything else spends a token); the request is decoded only after this.
    pub fn admit(
        &mut self,
        rx: &Received,
        payload: &[u8],
        now: Instant,
    ) -> Result<Framing, Refusal> {
        let sport = rx.from.port();
        if refused_src_port(sport, self.reflector_ports.contains(&sport)) {
            return Err(Refusal::SourcePort);
        }
        let src = rx.from.ip().to_canonical();
        if !is_unicast(src) {
            return Err(Refusal::SourceAddress);
        }
        if !addressed_to_local_unicast(rx) {
            return Err(Refusal::Destination);
        }
        if looks_reflected(payload) || rx.ttl == Some(0) {
            return Err(Refusal::Reflected);
        }
        if !self.allow.allows(src) && self.peers.binary_search(&src).is_err() {
            return Err(Refusal::NotAllowed);
        }
        let framing = self.framing(payload)?;
        if matches!(framing, Framing::Authenticated { .. }) && looks_reflected_auth(payload) {
            return Err(Refusal::Reflected);
        }
        if let Some(b) = &mut self.per_source
            && !b.take(src, now)
        {
            return Err(Refusal::SourceBudget);
        }
        if let Some((rate, b)) = &mut self.total
            && !b.take(*rate, now)
        {
            return Err(Refusal::TotalBudget);
        }
        Ok(framing)
    }

    /// Authenticated mode: `required` answers only a request that verifies (current key, then
    /// next); `optional` answers one that verifies in authenticated mode and anything else in
    /// open mode (there is no mode flag on the wire: an open request simply does not verify).
    fn framing(&self, payload: &[u8]) -> Result<Framing, Refusal> {
        let Some(ring) = self.auth.ring() else {
            return Ok(Framing::Open);
        };
        match (ring.verify(payload), self.auth.mode) {
            (Verified::Ok { tlvs_ok }, _) => Ok(Framing::Authenticated { tlvs_ok }),
            (Verified::Bad, AuthMode::Required) => Err(Refusal::Auth),
            (Verified::Bad, _) => Ok(Framing::Open),
        }
    }
}

/// A request's octets 36..44 are MBZ, and our ingress program writes only 16..36 (the RX
/// stamp); every real reply carries the Sender TTL at octet 40, which is never 0 in a reply
/// to a request we answer (we refuse TTL 0), and usually the Sender Error Estimate at 36..38.
/// So a non-zero octet there means a reflected packet, or garbage: refuse it.
///
/// Deviation from RFC 8762 §4.2.1, which says MBZ fields are ignored on receipt: answering
/// them would let two reflectors (on any ports, of any implementation whose replies carry a
/// TTL) answer each other for ever.
pub fn looks_reflected(payload: &[u8]) -> bool {
    payload
        .get(off::SENDER_ERROR_ESTIMATE..off::BASE_LEN)
        .is_some_and(|b| b.iter().any(|&o| o != 0))
}

/// [`looks_reflected`] for authenticated mode, where it matters more: a reply signed with the
/// key we share verifies as a request too (the HMAC covers octets 0..96 of both). A request's
/// octets after its SSID up to the HMAC are MBZ; every reply carries its Receive Timestamp,
/// Session-Sender fields and the sender TTL (never 0 in a reply to a request we answer) there.
pub fn looks_reflected_auth(payload: &[u8]) -> bool {
    payload
        .get(auth_off::REQ_MBZ..auth_off::HMAC)
        .is_some_and(|b| b.iter().any(|&o| o != 0))
}

/// The request's IP destination is a unicast address of this host. For IPv4 the kernel's
/// `ipi_spec_dst` equals the header's destination only for a packet to a local unicast
/// address (it is the interface's address for a subnet or limited broadcast or multicast).
fn addressed_to_local_unicast(rx: &Received) -> bool {
    let Some(dst) = rx.dst else {
        return false;
    };
    if !is_unicast(dst) {
        return false;
    }
    match dst {
        IpAddr::V4(d) => rx.spec_dst == Some(d),
        // IPv6 has no broadcast; multicast is excluded above.
        IpAddr::V6(_) => true,
    }
}

/// Refuses a reflector port inside `net.ipv4.ip_local_port_range` (which also bounds IPv6
/// ephemeral ports): tunnels hash their UDP source ports into it, and our own senders'
/// sockets get theirs from it, so a datagram that is not a request could share the port.
pub fn check_reflector_port(port: u16, allow_ephemeral: bool) -> Result<(), PolicyError> {
    if allow_ephemeral {
        return Ok(());
    }
    let Some((lo, hi)) = local_port_range() else {
        return Ok(());
    };
    if (lo..=hi).contains(&port) {
        return Err(PolicyError::EphemeralPort { port, lo, hi });
    }
    Ok(())
}

/// `net.ipv4.ip_local_port_range` of this network namespace.
pub fn local_port_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
fn test_received(from: std::net::SocketAddr, dst: IpAddr) -> Received {
    Received {
        len: off::BASE_LEN,
        from,
        rx_sw_realtime_ns: None,
        rx_hw_ns: None,
        ttl: Some(64),
        dst: Some(dst),
        spec_dst: match dst {
            IpAddr::V4(d) => Some(d),
            IpAddr::V6(_) => None,
        },
        ifindex: Some(1),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr, SocketAddr},
        time::Duration,
    };

    use super::*;

    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

    fn from(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    fn open(now: Instant) -> ReflectPolicy {
        ReflectPolicy::new(
            &PolicyConfig {
                allow: AllowList::ANY,
                per_source: None,
                total: None,
                auth: Auth::OFF,
            },
            &[8620],
            now,
        )
    }

    #[test]
    fn refuses_privileged_and_reflector_source_ports() {
        let now = Instant::now();
        let mut p = open(now);
        let req = [0u8; 44];
        for port in [0, 7, 19, 53, 123, 862, 1023, 8620] {
            let rx = test_received(from("198.18.0.1", port), B);
            assert_eq!(p.admit(&rx, &req, now), Err(Refusal::SourcePort), "{port}");
        }
        let rx = test_received(from("198.18.0.1", 40000), B);
        assert_eq!(p.admit(&rx, &req, now), Ok(Framing::Open));
        // A peer's reflector port is refused once the peer is known.
        p.set_peers([from("198.18.0.7", 40000)]);
        assert_eq!(p.admit(&rx, &req, now), Err(Refusal::SourcePort));
        p.set_peers([]);
        assert_eq!(p.admit(&rx, &req, now), Ok(Framing::Open));
    }

    #[test]
    fn refuses_non_unicast_sources_and_destinations() {
        let now = Instant::now();
        let mut p = open(now);
        let req = [0u8; 44];
        for src in ["224.0.0.1", "255.255.255.255", "0.0.0.0", "ff02::1", "::"] {
            let dst = if src.contains(':') {
                "fd00::2".parse().unwrap()
            } else {
                B
            };
            let rx = test_received(from(src, 40000), dst);
            assert_eq!(
                p.admit(&rx, &req, now),
                Err(Refusal::SourceAddress),
                "{src}"
            );
        }
        for dst in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
            let rx = test_received(from("198.18.0.1", 40000), dst.parse().unwrap());
            assert_eq!(p.admit(&rx, &req, now), Err(Refusal::Destination), "{dst}");
        }
        // Subnet broadcast: the kernel's spec_dst is the interface's address, not the header's.
        let mut rx = test_received(from("198.18.0.1", 40000), "198.18.0.255".parse().unwrap());
        rx.spec_dst = Some(Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.admit(&rx, &req, now), Err(Refusal::Destination));
        rx.dst = None;
        assert_eq!(p.admit(&rx, &req, now), Err(Refusal::Destination));
        let rx = test_received(from("fd00::1", 40000), "fd00::2".parse().unwrap());
        assert_eq!(p.admit(&rx, &req, now), Ok(Framing::Open));
    }

    #[test]
    fn refuses_reply_shaped_packets_and_ttl_zero() {
        let now = Instant::now();
        let mut p = open(now);
        let rx = test_received(from("198.18.0.1", 40000), B);
        let mut req = vec![0u8; 68];
        // Our ingress program's RX stamp (16..36) and TLVs (44..) are not a reply's shape.
        req[16..36].fill(0xab);
        req[44..].fill(0xcd);
        assert_eq!(p.admit(&rx, &req, now), Ok(Framing::Open));
        for i in 36..44 {
            let mut r = req.clone();
            r[i] = 1;
            assert_eq!(p.admit(&rx, &r, now), Err(Refusal::Reflected), "octet {i}");
        }
        let mut rx0 = rx;
        rx0.ttl = Some(0);
        assert_eq!(p.admit(&rx0, &req, now), Err(Refusal::Reflected));
        // Too short to tell: left to the decoder (malformed).
        assert_eq!(p.admit(&rx, &[1u8; 20], now), Ok(Framing::Open));
    }

    #[test]
    fn allow_list_and_peers() {
        let now = Instant::now();
        let mut p = ReflectPolicy::new(
            &PolicyConfig {
                allow: AllowList::parse("198.18.4.0/24, fd00:1::/32").unwrap(),
                per_source: None,
                total: None,
                auth: Auth::OFF,
            },
            &[862],
            now,
        );
        let req = [0u8; 44];
        let ok = |p: &mut ReflectPolicy, src: &str, dst: &str| {
            p.admit(
                &test_received(from(src, 40000), dst.parse().unwrap()),
                &req,
                now,
            )
        };
        assert_eq!(ok(&mut p, "198.18.4.9", "198.18.0.2"), Ok(Framing::Open));
        assert_eq!(
            ok(&mut p, "::ffff:198.18.4.9", "198.18.0.2"),
            Ok(Framing::Open)
        );
        assert_eq!(ok(&mut p, "fd00:1::9", "fd00::2"), Ok(Framing::Open));
        assert_eq!(
            ok(&mut p, "198.18.5.9", "198.18.0.2"),
            Err(Refusal::NotAllowed)
        );
        p.set_peers([from("198.18.5.9", 862)]);
        assert_eq!(ok(&mut p, "198.18.5.9", "198.18.0.2"), Ok(Framing::Open));
        assert_eq!(ok(&mut p, "fd00:2::1", "fd00::2"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn budgets_per_source_and_total() {
        let t0 = Instant::now();
        let mut p = ReflectPolicy::new(
            &PolicyConfig {
                allow: AllowList::ANY,
                per_source: Some(Rate { per_sec: 10 }),
                total: Some(Rate { per_sec: 25 }),
                auth: Auth::OFF,
            },
            &[862],
            t0,
        );
        let req = [0u8; 44];
        let rx = |i: u8| test_received(from(&format!("198.18.0.{i}"), 40000), B);
        let n = (0..100)
            .filter(|_| p.admit(&rx(1), &req, t0).is_ok())
            .count();
        assert_eq!(n, 10, "one second's worth at once");
        assert_eq!(p.admit(&rx(1), &req, t0), Err(Refusal::SourceBudget));
        // Another source is answered while the first is held back.
        assert_eq!(p.admit(&rx(3), &req, t0), Ok(Framing::Open));
        // 0.5 s later: half a second's worth more.
        let t1 = t0 + Duration::from_millis(500);
        let n = (0..100)
            .filter(|_| p.admit(&rx(1), &req, t1).is_ok())
            .count();
        assert_eq!(n, 5);
        // The global budget: 25 at once, 10 + 1 + 5 spent.
        let mut total = 0;
        for i in 10..20 {
            for _ in 0..10 {
                match p.admit(&rx(i), &req, t1) {
                    Ok(_) => total += 1,
                    Err(Refusal::TotalBudget) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        // 25 - 11 at t0, refilled to the cap of 25 by t1, 5 spent: 20 left.
        assert_eq!(total, 20);
    }

    #[test]
    fn the_source_table_stays_bounded() {
        let t0 = Instant::now();
        let mut p = ReflectPolicy::new(
            &PolicyConfig {
                allow: AllowList::ANY,
                per_source: Some(Rate { per_sec: 2 }),
                total: None,
                auth: Auth::OFF,
            },
            &[862],
            t0,
        );
        let req = [0u8; 44];
        for i in 0..3 * SOURCE_TABLE as u32 {
            let ip = Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 | u128::from(i));
            let rx = test_received(
                SocketAddr::new(ip.into(), 40000),
                "fd00::2".parse().unwrap(),
            );
            let now = t0 + Duration::from_micros(u64::from(i));
            assert_eq!(p.admit(&rx, &req, now), Ok(Framing::Open));
            assert!(p.per_source.as_ref().unwrap().map.len() <= SOURCE_TABLE);
        }
    }

    #[test]
    fn parses_settings_and_names_bad_ones() {
        assert_eq!(Rate::parse("1000/s"), Ok(Some(Rate { per_sec: 1000 })));
        assert_eq!(Rate::parse("7"), Ok(Some(Rate { per_sec: 7 })));
        assert_eq!(Rate::parse("off"), Ok(None));
        for bad in ["0/s", "-1", "10/m", "", "x"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    fn ring() -> std::sync::Arc<crate::auth::KeyRing> {
        let key = |b: u8| {
            crate::auth::Key::parse(
                &format!("{b:02x}").repeat(16),
                "K",
                std::path::Path::new("k"),
            )
            .unwrap()
        };
        crate::auth::KeyRing::fixed(crate::auth::Keys {
            current: key(1),
            next: None,
        })
    }

    fn with_auth(mode: AuthMode, now: Instant) -> ReflectPolicy {
        ReflectPolicy::new(
            &PolicyConfig {
                allow: AllowList::ANY,
                per_source: Some(Rate { per_sec: 2 }),
                total: None,
                auth: Auth {
                    mode,
                    keys: Some(ring()),
                },
            },
            &[862],
            now,
        )
    }

    /// An authenticated request signed with `key_byte` repeated.
    fn signed(key_byte: u8) -> Vec<u8> {
        let p = crate::wire::SenderPacket::probe_auth(
            1,
            2,
            crate::wire::Timestamp::new(3, 4),
            crate::wire::ErrorEstimate::default(),
            112,
            0,
        )
        .unwrap();
        let mut out = Vec::new();
        p.encode_auth(&[key_byte; 16], &mut out);
        out
    }

    #[test]
    fn required_refuses_what_does_not_verify_before_it_spends_a_token() {
        let now = Instant::now();
        let mut p = with_auth(AuthMode::Required, now);
        let rx = test_received(from("198.18.0.1", 40000), B);
        // Forged requests are refused for authentication and leave the budget (2/s) intact.
        for _ in 0..10 {
            assert_eq!(p.admit(&rx, &signed(9), now), Err(Refusal::Auth));
            assert_eq!(p.admit(&rx, &[0u8; 44], now), Err(Refusal::Auth));
        }
        let ok = Framing::Authenticated { tlvs_ok: None };
        assert_eq!(p.admit(&rx, &signed(1), now), Ok(ok));
        assert_eq!(p.admit(&rx, &signed(1), now), Ok(ok));
        assert_eq!(p.admit(&rx, &signed(1), now), Err(Refusal::SourceBudget));
        // The cheap checks come first: no HMAC for a refused source port.
        let low = test_received(from("198.18.0.1", 53), B);
        assert_eq!(p.admit(&low, &signed(9), now), Err(Refusal::SourcePort));
    }

    #[test]
    fn optional_answers_open_requests_in_open_mode() {
        let now = Instant::now();
        let mut p = with_auth(AuthMode::Optional, now);
        let rx = test_received(from("198.18.0.1", 40000), B);
        assert_eq!(p.admit(&rx, &[0u8; 44], now), Ok(Framing::Open));
        assert_eq!(
            p.admit(&rx, &signed(1), now),
            Ok(Framing::Authenticated { tlvs_ok: None })
        );
    }

    #[test]
    fn a_signed_reply_is_never_answered_as_a_request() {
        // The reply's HMAC covers the same octets as a request's: it verifies as one.
        let req = crate::wire::SenderPacket::decode_auth(&signed(1)).unwrap();
        let rep = crate::wire::reflect_lenient(
            &req,
            &crate::wire::ReflectParams {
                sender_ttl: 64,
                ..Default::default()
            },
        );
        let mut bytes = Vec::new();
        rep.encode_auth(&[1u8; 16], &mut bytes);
        let now = Instant::now();
        let mut p = with_auth(AuthMode::Required, now);
        let rx = test_received(from("198.18.0.1", 40000), B);
        assert_eq!(p.admit(&rx, &bytes, now), Err(Refusal::Reflected));
        assert!(!looks_reflected_auth(&signed(1)));
    }
}
