//! The kernel reference: per-probe RTT from tcpdump captures on both hosts.

use std::collections::HashMap;

use crate::capture::Packet;
use crate::stamp::{reply_key, reply_key_auth, request_key, request_key_auth};

/// Reads (SSID, sender sequence) out of a payload.
type KeyOf = fn(&[u8]) -> Option<(u16, u32)>;

/// Capture times of one probe's request and reply on one host.
#[derive(Clone, Copy, Debug, Default)]
struct Times {
    request: Option<u64>,
    reply: Option<u64>,
}

/// Indexes probe packets by (SSID, sender sequence): requests are packets to `port`
/// (key at offsets 14 and 0), replies packets from `port` (key at offsets 14 and 24).
/// A key seen twice in one direction keeps its first capture.
fn index(packets: &[Packet], port: u16, keys: (KeyOf, KeyOf)) -> HashMap<(u16, u32), Times> {
    let (request_key, reply_key) = keys;
    let mut m: HashMap<(u16, u32), Times> = HashMap::new();
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
pub fn capture_times(
    sender: &[Packet],
    reflector: &[Packet],
    port: u16,
) -> HashMap<(u16, u32), [u64; 4]> {
    times_by(sender, reflector, port, (request_key, reply_key))
}

/// [`capture_times`] of authenticated-mode probes (RFC 8762 §4.2.2 / §4.3.2 layouts).
pub fn capture_times_auth(
    sender: &[Packet],
    reflector: &[Packet],
    port: u16,
) -> HashMap<(u16, u32), [u64; 4]> {
    times_by(sender, reflector, port, (request_key_auth, reply_key_auth))
}

fn times_by(
    sender: &[Packet],
    reflector: &[Packet],
    port: u16,
    keys: (KeyOf, KeyOf),
) -> HashMap<(u16, u32), [u64; 4]> {
    let a = index(sender, port, keys);
    let b = index(reflector, port, keys);
    let mut out = HashMap::new();
    for (k, ta) in &a {
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

/// The T1 each open-mode request carried on the wire (the TC egress stamp), TAI ns, keyed
/// by (SSID, sequence), from the sender's capture: with driver hand-off stamps, the probe's
/// own T1 is a later stamp than this one. A key seen twice keeps its first capture.
pub fn wire_t1s(sender: &[Packet], port: u16) -> HashMap<(u16, u32), u64> {
    let mut out = HashMap::new();
    for p in sender.iter().filter(|p| p.dst.port() == port) {
        if let (Some(k), Some(ts)) = (
            request_key(&p.payload),
            p.payload
                .get(probe_common::wire::TIMESTAMP..probe_common::wire::TIMESTAMP + 8),
        ) {
            out.entry(k).or_insert_with(|| crate::stamp::ptp_ns(ts));
        }
    }
    out
}

/// Truth network RTT per probe, keyed by (SSID, sender sequence):
/// (t_A reply in − t_A request out) − (t_B reply out − t_B request in).
/// `sender` is the capture on the sender's interface, `reflector` on the reflector's.
pub fn truth_rtts(sender: &[Packet], reflector: &[Packet], port: u16) -> HashMap<(u16, u32), i64> {
    capture_times(sender, reflector, port)
        .into_iter()
        .map(|(k, [a_out, b_in, b_out, a_in])| {
            (
                k,
                (a_in as i64 - a_out as i64) - (b_out as i64 - b_in as i64),
            )
        })
        .collect()
}
