//! Session-Reflector (RFC 8762 stateless mode, RFC 8972 SSID and TLVs): answers every
//! well-formed test packet the policy admits (`policy.rs`) with T2 from the ingress stamp and
//! T3 stamped at egress, from the address the request was sent to.
//!
//! Authenticated mode (`PolicyConfig::auth` not off): the programs write nothing on the port
//! (`port::AUTH`; the HMACs cover the stamps), for open requests too. T2 is the socket's
//! software RX stamp (the same `skb->tstamp` the ingress program would have copied), T3 the
//! userspace clock read right before the reply is signed.
//!
//! A request with our follow-up TLV (`wire::follow_up`) gets it back filled: the T2 source of
//! this reply, and the hand-off correction of the session's previous reply that the tracing
//! program left in `FOLLOW_UP` (taken once; open mode only).
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use probe_common::{FollowUp, FollowUpKey, port};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info};

use super::{
    StampSource, Stamping,
    nic_tx::NicTxStamps,
    policy::{self, Framing, PolicyConfig, ReflectPolicy, Refusal, RefusedCounts},
    rx_time,
};
use crate::{
    clock,
    discovery::PeerMap,
    net::{ProbeSocket, Received, RecvBatch, SockStamps, Source, canonical},
    sink::json::emit_json,
    wire::{self, FollowUpValue, SenderPacket, Timestamp, follow_up},
};

#[derive(Clone, Debug)]
pub struct ReflectorOptions {
    pub listen: SocketAddr,
    /// Test aid: wait this long between receiving and answering.
    pub think_time: Option<Duration>,
    /// Counters that scrapes read while the reflector runs (the agent's /metrics).
    pub live: Option<LiveCounters>,
    /// Who is answered, and how often.
    pub policy: PolicyConfig,
    /// The agent's membership: its peers are answered besides `policy.allow`, and their
    /// reflector ports are refused as source ports. Read again whenever it changes.
    pub peers: Option<watch::Receiver<PeerMap>>,
    /// Bind even inside net.ipv4.ip_local_port_range (see `policy::check_reflector_port`).
    pub allow_ephemeral_port: bool,
}

/// Batches read back to back before the reflector yields to other tasks: a flood at the
/// reflector port must not starve the prober, discovery or the admin server.
const BATCHES_PER_WAKE: u32 = 8;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    reason: &'static str,
}

/// Prometheus counters mirroring `ReflectorStats` as it changes.
#[derive(Clone, Default, Debug)]
pub struct LiveCounters {
    pub requests: Counter,
    pub replies: Counter,
    pub malformed: Counter,
    pub send_errors: Counter,
    /// By `Refusal` reason: a fixed label set, never per peer.
    pub refused: Family<RefusedLabel, Counter>,
}

impl LiveCounters {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "meshprobe_reflector_requests",
            "STAMP requests received",
            self.requests.clone(),
        );
        r.register(
            "meshprobe_reflector_replies",
            "STAMP replies sent",
            self.replies.clone(),
        );
        r.register(
            "meshprobe_reflector_malformed",
            "Requests not answered: too short or not STAMP",
            self.malformed.clone(),
        );
        r.register(
            "meshprobe_reflector_send_errors",
            "Replies the kernel refused to send",
            self.send_errors.clone(),
        );
        // Every reason exported from the start, at 0.
        for r in Refusal::ALL {
            drop(
                self.refused
                    .get_or_create(&RefusedLabel { reason: r.as_str() }),
            );
        }
        r.register(
            "meshprobe_reflector_refused",
            "Requests not answered by policy, by reason",
            self.refused.clone(),
        );
    }
}

/// requests = refused (sum) + malformed + replies + send_errors.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ReflectorStats {
    pub requests: u64,
    pub replies: u64,
    /// Too short, or not a STAMP test packet: no reply.
    pub malformed: u64,
    /// Answered, but with a malformed TLV (RFC 8972: reflected with the M flag).
    pub malformed_tlv: u64,
    pub send_errors: u64,
    /// Not answered by policy, by reason (every reason, zeros too).
    pub refused: RefusedCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    #[error(transparent)]
    Port(#[from] policy::PolicyError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering port {port} with the TC programs: {source}")]
    Register {
        port: u16,
        source: crate::ebpf::EbpfError,
    },
}

/// Binds the reflector socket and registers its port (before `ready` is announced).
pub fn bind(opts: &ReflectorOptions, st: &Stamping) -> Result<ProbeSocket, ReflectorError> {
    policy::check_reflector_port(opts.listen.port(), opts.allow_ephemeral_port)?;
    // The reflector's T3 comes from TC (kernel mode) or is the send time (socket mode, and
    // authenticated mode). Authenticated mode: T2 is always the socket's RX stamp.
    let auth = opts.policy.auth.mode.is_on();
    let base = st.sock_stamps();
    let stamps = SockStamps {
        tx: false,
        rx: base.rx || auth,
        ..base
    };
    let sock = ProbeSocket::bind(opts.listen, stamps).map_err(|source| ReflectorError::Bind {
        addr: opts.listen,
        source,
    })?;
    let role = if auth {
        port::REFLECTOR | port::AUTH
    } else {
        port::REFLECTOR
    };
    st.register_socket(&sock, role)
        .map_err(|source| ReflectorError::Register {
            port: opts.listen.port(),
            source,
        })?;
    Ok(sock)
}

/// Answers requests until `stop` fires. Requests are read and answered in batches
/// (recvmmsg/sendmmsg): one wake-up and two system calls for all that are waiting.
pub async fn run(
    sock: ProbeSocket,
    opts: ReflectorOptions,
    st: Stamping,
    mut stop: watch::Receiver<bool>,
) -> ReflectorStats {
    let mut stats = ReflectorStats::default();
    // One octet over the largest valid packet: a longer datagram still reads as too long.
    let mut batch = RecvBatch::new(wire::MAX_PACKET_LEN + 1);
    let mut replies: Vec<(Vec<u8>, SocketAddr, Option<Source>)> = Vec::new();
    let ee = st.error_estimate();
    let mut policy = ReflectPolicy::new(
        &opts.policy,
        &[opts.listen.port()],
        std::time::Instant::now(),
    );
    let mut peers = opts.peers.clone();
    if let Some(p) = &mut peers {
        policy.set_peers(p.borrow_and_update().values().map(|p| p.addr));
    }
    let mut full_batches = 0u32;
    // NIC TX stamps ride on the hand-off program's record of each reply (its TC T3).
    let mut nic = (st.hw_tx_stamps && st.is_kernel()).then(NicTxStamps::default);
    // The follow-up session of each reply of the batch (for its NIC TX stamp).
    let mut sessions: Vec<Option<Session>> = Vec::new();
    loop {
        let r = tokio::select! {
            r = sock.recv_batch(&mut batch) => r,
            _ = stop.changed() => break,
        };
        let app_rx = clock::tai_now_ns();
        let now = std::time::Instant::now();
        if let Err(e) = r {
            debug!("recv: {e}");
            continue;
        }
        if let Some(n) = &mut nic {
            n.absorb(sock.drain_tx_stamps().into_iter().map(|(k, p)| (k, p.hw)));
        }
        if let Some(p) = &mut peers
            && p.has_changed().unwrap_or(false)
        {
            policy.set_peers(p.borrow_and_update().values().map(|p| p.addr));
        }
        let mut n_out = 0;
        sessions.clear();
        for (payload, rx) in batch.iter() {
            let Some((mut reply, framing, ask)) = answer(
                &sock,
                &st,
                ee,
                payload,
                rx,
                app_rx,
                &mut stats,
                &opts,
                &mut policy,
                now,
            ) else {
                continue;
            };
            if let Some(ask) = &ask {
                // The follow-up reports the session's previous reply as handed off: one of this
                // batch leaves first, or the lookup would find the reply before it.
                if sessions.iter().flatten().any(|(k, _)| *k == ask.key) {
                    flush(
                        &sock,
                        &replies[..n_out],
                        &mut stats,
                        &opts,
                        nic.as_mut(),
                        &mut sessions,
                    )
                    .await;
                    n_out = 0;
                }
                reply
                    .packet
                    .set_follow_up(&fill_follow_up(&st, ask, nic.as_mut()));
            }
            sessions.push(ask.map(|a| (a.key, a.seq)));
            if let Some(d) = opts.think_time {
                tokio::time::sleep(d).await;
            }
            if replies.len() <= n_out {
                replies.push((Vec::with_capacity(2048), rx.from, None));
            }
            let slot = &mut replies[n_out];
            slot.1 = rx.from;
            // From exactly the address the request was sent to (multi-homed hosts).
            slot.2 = rx.reply_source();
            slot.0.clear();
            // T3: overwritten by the egress program in open kernel mode; our best guess
            // otherwise. Authenticated mode: signed with the reply, so read as late as we can.
            reply.packet.timestamp = Timestamp::from_ptp_ns(clock::tai_now_ns());
            match (framing, opts.policy.auth.ring()) {
                (Framing::Authenticated { .. }, Some(ring)) => {
                    ring.sign(|key| reply.encode_auth(key, &mut slot.0));
                }
                _ => reply.encode(&mut slot.0),
            }
            n_out += 1;
            if opts.think_time.is_some() {
                // Test aid: each reply leaves after its own wait.
                flush(
                    &sock,
                    &replies[..n_out],
                    &mut stats,
                    &opts,
                    nic.as_mut(),
                    &mut sessions,
                )
                .await;
                n_out = 0;
            }
        }
        flush(
            &sock,
            &replies[..n_out],
            &mut stats,
            &opts,
            nic.as_mut(),
            &mut sessions,
        )
        .await;
        // A full batch means more are waiting: after a few, let the other tasks run.
        if batch.len() >= crate::net::BATCH {
            full_batches += 1;
            if full_batches >= BATCHES_PER_WAKE {
                full_batches = 0;
                tokio::task::yield_now().await;
            }
        } else {
            full_batches = 0;
        }
    }
    if let Err(e) = st.unregister_socket(&sock) {
        debug!("unregistering port: {e}");
    }
    stats
}

/// Decodes one request and builds its reply (T3 still to be set), counting what it sees.
#[allow(clippy::too_many_arguments)]
fn answer(
    sock: &ProbeSocket,
    st: &Stamping,
    ee: wire::ErrorEstimate,
    payload: &[u8],
    rx: Received,
    app_rx: u64,
    stats: &mut ReflectorStats,
    opts: &ReflectorOptions,
    policy: &mut ReflectPolicy,
    now: std::time::Instant,
) -> Option<(
    wire::Lenient<wire::ReflectorPacket>,
    Framing,
    Option<FollowUpAsk>,
)> {
    stats.requests += 1;
    if let Some(l) = &opts.live {
        l.requests.inc();
    }
    // Before decoding: a refused flood costs only these checks.
    let framing = match policy.admit(&rx, payload, now) {
        Ok(f) => f,
        Err(r) => {
            debug!("request from {} to {:?} refused: {r}", rx.from, rx.dst);
            stats.refused.add(r);
            if let Some(l) = &opts.live {
                l.refused
                    .get_or_create(&RefusedLabel { reason: r.as_str() })
                    .inc();
            }
            return None;
        }
    };
    let decoded = match framing {
        Framing::Authenticated { .. } => SenderPacket::decode_auth(payload),
        Framing::Open => SenderPacket::decode_lenient(payload),
    };
    let req = match decoded {
        Ok(r) => r,
        Err(e) => {
            debug!("malformed request from {}: {e}", rx.from);
            stats.malformed += 1;
            if let Some(l) = &opts.live {
                l.malformed.inc();
            }
            return None;
        }
    };
    if !req.is_well_formed() {
        stats.malformed_tlv += 1;
    }
    // Authenticated mode: the ingress program wrote no block (the socket has RX stamps).
    let auth_port = opts.policy.auth.mode.is_on();
    let block = if auth_port {
        None
    } else {
        st.request_rx_stamp(payload)
    };
    if block.is_none() && !auth_port && st.is_kernel() && sock.ensure_rx_stamps() {
        // Arrived on an interface without our ingress program: take the kernel's RX stamp.
        info!(
            "request from {} without the ingress stamp: RX software timestamps turned on",
            rx.from
        );
    }
    let (t2, t2_source) = rx_time(st, block, rx.rx_sw_realtime_ns, app_rx);
    // RFC 8972: echo known TLVs, flag unknown (U) and malformed (M) ones; same length.
    let mut reply = wire::reflect_lenient(
        &req,
        &wire::ReflectParams {
            timestamp: Timestamp::default(),
            error_estimate: ee,
            receive_timestamp: Timestamp::from_ptp_ns(t2),
            sender_ttl: rx.ttl.unwrap_or(255),
        },
    );
    if let Framing::Authenticated { tlvs_ok } = framing {
        wire::auth::reflect_auth_tlvs(&mut reply.packet, tlvs_ok);
    }
    // Our follow-up TLV (two-step T3): only for the requests that carry it, since the lookup
    // is a system call. Not on an authenticated port: its T3 is the userspace stamp it signs.
    let ask =
        (matches!(framing, Framing::Open) && reply.packet.wants_follow_up()).then(|| FollowUpAsk {
            key: follow_up_key(rx.from, opts.listen.port(), req.packet.ssid),
            seq: req.packet.seq,
            t2_source,
            lookup: !auth_port,
        });
    Some((reply, framing, ask))
}

/// A reply whose request carries our follow-up TLV: filled by [`fill_follow_up`] once the
/// session's earlier replies have left.
struct FollowUpAsk {
    key: FollowUpKey,
    seq: u32,
    t2_source: StampSource,
    /// Take the hand-off record of the session's previous reply (not on an authenticated port).
    lookup: bool,
}

/// The follow-up value of an asking reply: takes the session's hand-off record.
fn fill_follow_up(
    st: &Stamping,
    ask: &FollowUpAsk,
    nic: Option<&mut NicTxStamps>,
) -> FollowUpValue {
    let prev = if ask.lookup {
        st.take_follow_up(&ask.key)
    } else {
        None
    };
    let nic_correction = match (nic, &prev) {
        (Some(n), Some(p)) => n.correction(&ask.key, p),
        _ => None,
    };
    follow_up_value(ask.seq, prev, nic_correction, ask.t2_source)
}

/// Sends the batch's replies so far and numbers them for their NIC TX stamps.
async fn flush(
    sock: &ProbeSocket,
    replies: &[(Vec<u8>, SocketAddr, Option<Source>)],
    stats: &mut ReflectorStats,
    opts: &ReflectorOptions,
    nic: Option<&mut NicTxStamps>,
    sessions: &mut Vec<Option<Session>>,
) {
    let failed = send_all(sock, replies, stats, opts).await;
    number_sent(nic, sessions, &failed);
    sessions.clear();
}

/// A reply's follow-up session and the sender sequence number it answers.
type Session = (FollowUpKey, u32);

/// Numbers the replies the kernel accepted, in send order, as it numbers their TX stamps.
fn number_sent(nic: Option<&mut NicTxStamps>, sessions: &[Option<Session>], failed: &[usize]) {
    if let Some(n) = nic {
        for (i, s) in sessions.iter().enumerate() {
            if !failed.contains(&i) {
                n.sent(*s);
            }
        }
    }
}

/// How far back (in the session's sequence numbers) the previous reply a follow-up reports on
/// may lie: beyond that, the entry is stale (another run of the session, a wrapped counter).
pub const FOLLOW_UP_MAX_GAP: u32 = 1024;

/// The `FOLLOW_UP` key of the session a request belongs to, as the tracing program saw its
/// reply: to the request's source, from our port, with its SSID.
fn follow_up_key(from: SocketAddr, local_port: u16, ssid: u16) -> FollowUpKey {
    let addr = match canonical(from).ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    FollowUpKey {
        addr,
        port: from.port(),
        local_port,
        ssid,
        _pad: 0,
    }
}

/// The follow-up value of the reply to request `seq`: this reply's T2 source, and the
/// correction of the session's previous reply when `prev` is one (an earlier sequence number
/// within `FOLLOW_UP_MAX_GAP`, a correction within bounds): the NIC's (`nic`, from
/// [`NicTxStamps::correction`]) when it stamped that reply, else the hand-off's.
fn follow_up_value(
    seq: u32,
    prev: Option<FollowUp>,
    nic: Option<u32>,
    t2: StampSource,
) -> FollowUpValue {
    let mut v = FollowUpValue {
        t2_source: t2.follow_up_t2_code(),
        ..FollowUpValue::default()
    };
    if let Some(f) = prev
        && (1..=FOLLOW_UP_MAX_GAP).contains(&seq.wrapping_sub(f.sender_seq))
        && f.correction_ns <= FollowUp::MAX_CORRECTION_NS
    {
        v.prev_sender_seq = f.sender_seq;
        (v.correction_ns, v.prev_t3_source) = match nic {
            Some(c) => (c, follow_up::t3_source::HW_TX),
            None => (f.correction_ns, follow_up::t3_source::HANDOFF),
        };
    }
    v
}

async fn send_all(
    sock: &ProbeSocket,
    replies: &[(Vec<u8>, SocketAddr, Option<Source>)],
    stats: &mut ReflectorStats,
    opts: &ReflectorOptions,
) -> Vec<usize> {
    let mut refused = Vec::new();
    if replies.is_empty() {
        return refused;
    }
    let msgs: Vec<(&[u8], SocketAddr, Option<Source>)> =
        replies.iter().map(|(b, a, s)| (&b[..], *a, *s)).collect();
    sock.send_batch_from(&msgs, |i, e| {
        debug!("reply to {}: {e}", msgs[i].1);
        refused.push(i);
    })
    .await;
    let failed = refused.len() as u64;
    let sent = msgs.len() as u64 - failed;
    stats.replies += sent;
    stats.send_errors += failed;
    if let Some(l) = &opts.live {
        l.replies.inc_by(sent);
        l.send_errors.inc_by(failed);
    }
    refused
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    stats: ReflectorStats,
    timestamping: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_clock: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: Option<&'static str>,
    note: &'a str,
    ebpf_counters: std::collections::BTreeMap<&'static str, u64>,
}

pub fn print_summary(stats: &ReflectorStats, st: &Stamping, json: bool) {
    let counters = st.counters();
    let note = st.note();
    if json {
        emit_json(&SummaryLine {
            kind: "reflector_summary",
            stats: *stats,
            timestamping: st.label(),
            kernel_clock: st.kernel_clock(),
            handoff: st.handoff(),
            note: &note,
            ebpf_counters: counters,
        });
        return;
    }
    println!("--- meshprobe reflector ---");
    println!("timestamps: {note}");
    println!(
        "{} requests, {} replies, {} malformed (no reply), {} with malformed TLVs (M flag), \
         {} send errors, {} refused by policy",
        stats.requests,
        stats.replies,
        stats.malformed,
        stats.malformed_tlv,
        stats.send_errors,
        stats.refused.total()
    );
    let refused: Vec<String> = Refusal::ALL
        .iter()
        .filter(|r| stats.refused.get(**r) > 0)
        .map(|r| format!("{r}={}", stats.refused.get(*r)))
        .collect();
    if !refused.is_empty() {
        println!("refused: {}", refused.join(" "));
    }
    let nonzero: Vec<String> = counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !nonzero.is_empty() {
        println!("eBPF counters: {}", nonzero.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_is_exported_from_the_start_and_counted() {
        let live = LiveCounters::default();
        let mut reg = prometheus_client::registry::Registry::default();
        live.register(&mut reg);
        live.refused
            .get_or_create(&RefusedLabel {
                reason: Refusal::Reflected.as_str(),
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for r in Refusal::ALL {
            let n = u64::from(r == Refusal::Reflected);
            let line = format!("meshprobe_reflector_refused_total{{reason=\"{r}\"}} {n}");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn the_follow_up_key_is_the_reply_s_session() {
        let v4: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let k = follow_up_key(v4, 862, 7);
        assert_eq!(
            k.addr,
            std::net::Ipv4Addr::new(198, 18, 0, 1)
                .to_ipv6_mapped()
                .octets()
        );
        assert_eq!((k.port, k.local_port, k.ssid, k._pad), (40000, 862, 7, 0));
        // A dual-stack socket's view of the same sender: the same key.
        let mapped: SocketAddr = "[::ffff:198.18.0.1]:40000".parse().unwrap();
        assert_eq!(follow_up_key(mapped, 862, 7), k);
        let v6: SocketAddr = "[fd00::1]:40000".parse().unwrap();
        assert_eq!(
            follow_up_key(v6, 862, 7).addr,
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn a_follow_up_reports_only_an_earlier_reply_of_the_session_within_bounds() {
        use wire::follow_up::{t2_source, t3_source};
        let entry = |sender_seq, correction_ns| {
            Some(FollowUp {
                t3: 1,
                sender_seq,
                correction_ns,
            })
        };
        let v = follow_up_value(10, entry(9, 700), None, StampSource::SkbRx);
        assert_eq!(
            v,
            FollowUpValue {
                prev_sender_seq: 9,
                correction_ns: 700,
                prev_t3_source: t3_source::HANDOFF,
                t2_source: t2_source::SKB_RX,
            }
        );
        // Across the wrap, and at the bound.
        assert_eq!(
            follow_up_value(1, entry(u32::MAX, 1), None, StampSource::Tc).prev_sender_seq,
            u32::MAX
        );
        let far = 10u32.wrapping_sub(FOLLOW_UP_MAX_GAP);
        assert_eq!(
            follow_up_value(10, entry(far, 1), None, StampSource::Tc).prev_t3_source,
            t3_source::HANDOFF
        );
        // Not earlier (the same, later, or too far back), a correction out of bounds, no entry
        // (socket mode): nothing reported, only this reply's T2 source.
        let none = |t2| FollowUpValue {
            t2_source: t2,
            ..FollowUpValue::default()
        };
        for prev in [
            entry(10, 700),
            entry(11, 700),
            entry(far.wrapping_sub(1), 700),
            entry(9, FollowUp::MAX_CORRECTION_NS + 1),
            None,
        ] {
            assert_eq!(
                follow_up_value(10, prev, None, StampSource::Socket),
                none(t2_source::SOCKET),
                "{prev:?}"
            );
        }
        assert_eq!(
            follow_up_value(10, None, None, StampSource::App),
            none(t2_source::UNKNOWN)
        );
        // The NIC's correction of that reply, when it has one, replaces the hand-off's; it
        // comes only with the hand-off record (whose T3 it is measured from), and obeys the
        // same rules.
        let v = follow_up_value(10, entry(9, 700), Some(1_900), StampSource::SkbRx);
        assert_eq!(
            (v.correction_ns, v.prev_t3_source),
            (1_900, t3_source::HW_TX)
        );
        assert_eq!(
            follow_up_value(10, entry(11, 700), Some(1_900), StampSource::Socket),
            none(t2_source::SOCKET)
        );
    }

    #[test]
    fn the_summary_counts_refusals_by_reason() {
        let mut s = ReflectorStats::default();
        s.refused.add(Refusal::SourcePort);
        s.refused.add(Refusal::SourcePort);
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v["refused"]["source_port"], 2);
        assert_eq!(v["refused"]["total_budget"], 0);
        assert_eq!(v["refused"].as_object().unwrap().len(), Refusal::ALL.len());
    }
}
