//! Shared pieces of the safety suites (safety_*.rs, fuzz_stamp.rs): crafted requests from a
//! chosen address and port, and the reflector's refusal counters.

use std::net::IpAddr;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::craft::UdpFrame;
use crate::netns::Netns;
use crate::topo::mac_of;
use crate::{Family, TwoHosts};

/// `refused.REASON` of a reflector summary (0 when absent, as in binaries without it).
pub fn refused(summary: &Value, reason: &str) -> u64 {
    summary["refused"][reason].as_u64().unwrap_or(0)
}

/// Every refusal of a reflector summary.
pub fn refused_total(summary: &Value) -> u64 {
    summary["refused"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// The MAC address an IP destination maps to on Ethernet: broadcast and multicast groups have
/// their own (RFC 1112 §6.4, RFC 2464 §7); anything else is B's interface.
pub fn dst_mac(t: &TwoHosts, dst: IpAddr) -> Result<[u8; 6]> {
    Ok(match dst {
        IpAddr::V4(a) if a.is_multicast() => {
            let o = a.octets();
            [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
        }
        IpAddr::V4(a) if a.is_broadcast() || a.octets()[3] == 255 => [0xff; 6],
        IpAddr::V6(a) if a.is_multicast() => {
            let o = a.octets();
            [0x33, 0x33, o[12], o[13], o[14], o[15]]
        }
        _ => mac_of(&t.b, TwoHosts::B_IF)?,
    })
}

/// A UDP frame from A's interface: `src:sport` (any address, spoofed or not) to `dst:dport`.
pub fn frame_from_a(
    t: &TwoHosts,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: Vec<u8>,
) -> Result<Vec<u8>> {
    UdpFrame::new(
        mac_of(&t.a, TwoHosts::A_IF)?,
        dst_mac(t, dst)?,
        src,
        dst,
        sport,
        dport,
        payload,
    )
    .build()
}

/// Both families, for suites that run each check twice.
pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// A UDP counter of `/proc/net/snmp` (`Udp` FIELD) and `/proc/net/snmp6` (`Udp6`FIELD) of a
/// namespace, added up: a datagram counts under its own family, whatever the socket's.
pub fn udp_counter(ns: &Netns, field: &str) -> Result<u64> {
    let v6 = format!("Udp6{field}");
    let text = ns.run(["cat", "/proc/net/snmp6"])?;
    let six: u64 = text
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == v6)
        .with_context(|| format!("no {v6} in /proc/net/snmp6"))?
        .1
        .trim()
        .parse()
        .with_context(|| format!("{v6} in /proc/net/snmp6"))?;
    Ok(ns.snmp_counter("Udp", field)? + six)
}
