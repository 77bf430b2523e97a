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

/// The tracepoint reference's times of each probe at the four points, keyed by (SSID, sender
/// sequence), as [`capture_times`] but CLOCK_TAI ns: the sender's events are those of the
/// interface `sender` (its request's hand-off, its reply's receive), the reflector's those of
/// `reflector`. Out is the first hand-off of the key in its direction; in is the earliest
/// receive event (a packet may pass several receive tracepoints: `netif_rx`, then
/// `netif_receive_skb` on veth). Probes missing at any point are left out.
pub fn trace_times(events: &[Event], sender: Site, reflector: Site, port: u16) -> Times {
    let index = |site: Site, out_kind: bool| {
        let mut m: HashMap<(u16, u32), HostTimes> = HashMap::new();
        for e in events.iter().filter(|e| e.site() == site) {
            let ours = if e.is_request() {
                e.dport == port
            } else {
                e.sport == port
            };
            // This host sends the requests (sender) or the replies (reflector).
            if !ours || e.is_xmit() != (e.is_request() == out_kind) {
                continue;
            }
            let t = m.entry((e.ssid, e.seq)).or_default();
            let slot = if e.is_request() {
                &mut t.request
            } else {
                &mut t.reply
            };
            match slot {
                // Out: the first hand-off; in: the earliest receive point.
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
