//! The kernel references: per-probe instants at the four points of a probe's round trip, from
//! tcpdump captures on both hosts ([`capture_times`], CLOCK_REALTIME) or from the tracepoint
//! reference's events ([`trace_times`], CLOCK_TAI; see [`crate::trace`]). The clocks differ by
//! the kernel's TAI offset (whole seconds, one timekeeper): [`to_tai`] puts a capture's times
//! on the tracer's clock.

use std::collections::HashMap;

use crate::capture::Packet;
use crate::stamp::{reply_key, reply_key_auth, request_key, request_key_auth};
use crate::trace::{Event, Site};

/// Per probe, keyed by (SSID, sender sequence): `[sender request out, reflector request in,
/// reflector reply out, sender reply in]`, ns of the reference's clock.
pub type Times = HashMap<(u16, u32), [u64; 4]>;

/// Reads (SSID, sender sequence) out of a payload.
type KeyOf = fn(&[u8]) -> Option<(u16, u32)>;

/// Times of one probe's request and reply on one host.
#[derive(Clone, Copy, Debug, Default)]
struct HostTimes {
    request: Option<u64>,
    reply: Option<u64>,
}

/// Indexes probe packets by (SSID, sender sequence): requests are packets to `port`
/// (key at offsets 14 and 0), replies packets from `port` (key at offsets 14 and 24).
/// A key seen twice in one direction keeps its first capture.
fn index(packets: &[Packet], port: u16, keys: (KeyOf, KeyOf)) -> HashMap<(u16, u32), HostTimes> {
    let (request_key, reply_key) = keys;
    let mut m: HashMap<(u16, u32), HostTimes> = HashMap::new();
    for p in packets {
        if p.dst.port() == port {
            if let Some(k) = request_key(&p.payload) {
                m.entry(k).or_default().request.get_or_insert(p.ts_ns);
            }
        } else if p.src.port() == port
            && let Some(k) = reply_key(&p.payload)
        {
            m.entry(k).or_default().reply.get_or_insert(p.ts_ns);
        }
    }
    m
}

/// Capture times of each probe at the four points, keyed by (SSID, sender sequence):
/// `[sender request out, reflector request in, reflector reply out, sender reply in]`
/// (CLOCK_REALTIME ns). Probes missing at any point are left out.
pub fn capture_times(sender: &[Packet], reflector: &[Packet], port: u16) -> Times {
    times_by(sender, reflector, port, (request_key, reply_key))
}

/// [`capture_times`] of authenticated-mode probes (RFC 8762 §4.2.2 / §4.3.2 layouts).
pub fn capture_times_auth(sender: &[Packet], reflector: &[Packet], port: u16) -> Times {
    times_by(sender, reflector, port, (request_key_auth, reply_key_auth))
}

fn times_by(sender: &[Packet], reflector: &[Packet], port: u16, keys: (KeyOf, KeyOf)) -> Times {
    join(&index(sender, port, keys), &index(reflector, port, keys))
}

/// The probes seen at all four points: the sender's request out and reply in, the
/// reflector's request in and reply out.
fn join(a: &HashMap<(u16, u32), HostTimes>, b: &HashMap<(u16, u32), HostTimes>) -> Times {
    let mut out = HashMap::new();
    for (k, ta) in a {
        let (Some(a_out), Some(a_in)) = (ta.request, ta.reply) else {
            continue;
        };
        let Some(tb) = b.get(k) else { continue };
        let (Some(b_in), Some(b_out)) = (tb.request, tb.reply) else {
            continue;
        };
        out.insert(*k, [a_out, b_in, b_out, a_in]);
    }
    out
}

/// The TC egress stamps each open-mode probe carried on the wire, TAI ns, keyed by (SSID,
/// sender sequence): `[T1 of the request (sender's capture), T3 of the reply (reflector's
/// capture)]`. With driver hand-off stamps, the probe's own T1 and (two-step) T3 are later
/// stamps than these. A key seen twice in one direction keeps its first capture.
pub fn wire_tc(sender: &[Packet], reflector: &[Packet], port: u16) -> WireTc {
    let ts = |p: &Packet| {
        p.payload
            .get(probe_common::wire::TIMESTAMP..probe_common::wire::TIMESTAMP + 8)
            .map(crate::stamp::ptp_ns)
    };
    let mut out = WireTc::new();
    for p in sender.iter().filter(|p| p.dst.port() == port) {
        if let (Some(k), Some(t)) = (request_key(&p.payload), ts(p)) {
            out.entry(k).or_default()[0].get_or_insert(t);
        }
    }
    for p in reflector.iter().filter(|p| p.src.port() == port) {
        if let (Some(k), Some(t)) = (reply_key(&p.payload), ts(p)) {
            out.entry(k).or_default()[1].get_or_insert(t);
        }
    }
    out
}

/// [`wire_tc`]'s map.
pub type WireTc = HashMap<(u16, u32), [Option<u64>; 2]>;

/// The tracepoint reference's times of each probe at the four points, keyed by (SSID, sender
/// sequence), as [`capture_times`] but CLOCK_TAI ns: the sender's events are those of the
/// interface `sender` (its request's hand-off, its reply's receive), the reflector's those of
/// `reflector`. Probes missing at any point are left out.
pub fn trace_times(events: &[Event], sender: Site, reflector: Site, port: u16) -> Times {
    trace_times_by(events, sender, reflector, |e| {
        let ours = match e.kind.as_str() {
            "request" => e.dport == port,
            "reply" => e.sport == port,
            _ => false,
        };
        ours.then_some(((e.ssid, e.seq), e.kind == "request"))
    })
}

/// [`trace_times`] of the events `key` gives a probe key and direction (`true`: the request)
/// for, e.g. ICMP echoes by (identifier, sequence). Out is the first hand-off of a key in its
/// direction; in is the earliest receive event (a packet may pass several receive
/// tracepoints: `netif_rx`, then `netif_receive_skb` on veth).
pub fn trace_times_by(
    events: &[Event],
    sender: Site,
    reflector: Site,
    key: impl Fn(&Event) -> Option<((u16, u32), bool)>,
) -> Times {
    let index = |site: Site, sends_requests: bool| {
        let mut m: HashMap<(u16, u32), HostTimes> = HashMap::new();
        for e in events.iter().filter(|e| e.site() == site) {
            let Some((k, request)) = key(e) else {
                continue;
            };
            // The sender hands requests out and receives replies; the reflector the reverse.
            if e.is_xmit() != (request == sends_requests) {
                continue;
            }
            let t = m.entry(k).or_default();
            let slot = if request {
                &mut t.request
            } else {
                &mut t.reply
            };
            match slot {
                Some(v) if e.is_xmit() || *v <= e.tai_ns => {}
                _ => *slot = Some(e.tai_ns),
            }
        }
        m
    };
    join(&index(sender, true), &index(reflector, false))
}

/// `times` (CLOCK_REALTIME, a capture's) on CLOCK_TAI: `tai_offset_ns` is CLOCK_TAI −
/// CLOCK_REALTIME ([`crate::scenario::tai_offset_ns`]).
pub fn to_tai(times: &Times, tai_offset_ns: i64) -> Times {
    times
        .iter()
        .map(|(k, t)| (*k, t.map(|v| (v as i64 + tai_offset_ns) as u64)))
        .collect()
}

/// Network RTT of one probe's four instants: (sender in − sender out) − (reflector out −
/// reflector in), ns.
pub fn network_rtt([a_out, b_in, b_out, a_in]: [u64; 4]) -> i64 {
    (a_in as i64 - a_out as i64) - (b_out as i64 - b_in as i64)
}

/// Truth network RTT per probe, keyed by (SSID, sender sequence):
/// (t_A reply in − t_A request out) − (t_B reply out − t_B request in).
/// `sender` is the capture on the sender's interface, `reflector` on the reflector's.
pub fn truth_rtts(sender: &[Packet], reflector: &[Packet], port: u16) -> HashMap<(u16, u32), i64> {
    capture_times(sender, reflector, port)
        .into_iter()
        .map(|(k, t)| (k, network_rtt(t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Site = Site {
        netns: 1,
        ifindex: 2,
    };
    const B: Site = Site {
        netns: 3,
        ifindex: 2,
    };
    /// A forwarding hop's interface: never one of the two hosts.
    const R: Site = Site {
        netns: 5,
        ifindex: 7,
    };

    fn ev(site: Site, point: &str, kind: &str, t: u64, seq: u32) -> Event {
        let (sport, dport) = if kind == "request" {
            (40000, 862)
        } else {
            (862, 40000)
        };
        Event {
            tai_ns: t,
            point: point.into(),
            kind: kind.into(),
            netns: site.netns,
            ifindex: site.ifindex,
            sport,
            dport,
            ssid: 9,
            seq,
        }
    }

    #[test]
    fn trace_times_takes_each_point_from_its_host() {
        let events = vec![
            ev(A, "xmit", "request", 100, 1),
            ev(R, "netif_rx", "request", 105, 1),
            // B: the later receive point of the same packet, printed first.
            ev(B, "netif_receive_skb", "request", 130, 1),
            ev(B, "netif_rx", "request", 110, 1),
            ev(B, "xmit", "reply", 200, 1),
            ev(A, "netif_rx", "reply", 220, 1),
            ev(A, "netif_receive_skb", "reply", 240, 1),
            // A second hand-off of the same key keeps the first.
            ev(A, "xmit", "request", 300, 1),
            // Probe 2 never came back: left out.
            ev(A, "xmit", "request", 400, 2),
            ev(B, "netif_rx", "request", 410, 2),
        ];
        let t = trace_times(&events, A, B, 862);
        assert_eq!(t.len(), 1);
        let four = t[&(9, 1)];
        assert_eq!(four, [100, 110, 200, 220]);
        assert_eq!(network_rtt(four), 120 - 90);
        // Another port: nothing.
        assert!(trace_times(&events, A, B, 863).is_empty());
        // The hosts swapped: A's events are not a reflector's.
        assert!(trace_times(&events, B, A, 862).is_empty());
    }

    #[test]
    fn to_tai_shifts_every_point() {
        let mut t = Times::new();
        t.insert((1, 2), [10, 20, 30, 40]);
        assert_eq!(to_tai(&t, 37)[&(1, 2)], [47, 57, 67, 77]);
    }
}
