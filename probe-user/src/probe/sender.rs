//! Session-Sender: sends STAMP test packets to each peer on a schedule, matches replies, and
//! computes network RTT = (T4 − T1) − (T3 − T2) from kernel stamps.
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use probe_common::port;
use serde::Serialize;
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, warn};

use super::{ReplyContext, StampSource, Stamping, emit_json, fmt_ns, measure};
use crate::{
    clock,
    net::{ProbeSocket, SockStamps},
    stats::{ReplyKind, SeqTracker, SessionStats},
    wire::{ReflectorPacket, SenderPacket, Timestamp},
};

#[derive(Clone, Debug)]
pub struct SenderOptions {
    /// Probes per peer; 0 = until stopped.
    pub count: u64,
    pub interval: Duration,
    /// UDP payload octets.
    pub size: usize,
    pub timeout: Duration,
    pub json: bool,
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("socket for {peer}: {source}")]
    Socket {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering port {port} with the TC programs: {source}")]
    Register {
        port: u16,
        source: crate::ebpf::EbpfError,
    },
    #[error("probe size: {0}")]
    Size(crate::wire::WireError),
}

/// One measured probe.
#[derive(Debug, Serialize)]
pub struct ProbeRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub peer: String,
    pub ssid: u16,
    pub seq: u32,
    pub t1_ns: u64,
    pub t2_ns: u64,
    pub t3_ns: u64,
    pub t4_ns: u64,
    pub network_rtt_ns: i64,
    pub turnaround_ns: i64,
    pub app_rtt_ns: i64,
    pub stack_overhead_ns: i64,
    pub timestamping: &'static str,
    pub t1_source: StampSource,
    pub t4_source: StampSource,
    pub ttl: u8,
    pub reordered: bool,
}

#[derive(Serialize)]
struct SeqEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    peer: &'a str,
    ssid: u16,
    seq: u32,
}

struct Pending {
    app_tx_tai: u64,
    deadline: Instant,
    /// SO_TIMESTAMPING OPT_ID key of the send (socket mode).
    tx_key: u32,
}

/// Result of one peer's session.
pub struct SessionResult {
    pub peer: SocketAddr,
    pub stats: SessionStats,
}

/// Runs one session against `peer` until `count` probes are resolved or `stop` fires.
pub async fn run_session(
    peer: SocketAddr,
    ssid: u16,
    opts: SenderOptions,
    st: Stamping,
    mut stop: watch::Receiver<bool>,
) -> Result<SessionResult, SenderError> {
    let sock_err = |source| SenderError::Socket { peer, source };
    let kernel = st.is_kernel();
    // Socket mode takes T1 from the TX software stamp (error queue); kernel mode from TC.
    let sock = ProbeSocket::connect(
        peer,
        // Kernel mode: T1 from TC egress, T4 in-band or from the map; no socket stamps.
        SockStamps {
            tx: !kernel,
            rx: !kernel,
        },
    )
    .map_err(sock_err)?;
    let lport = sock.local_addr().map_err(sock_err)?.port();
    st.set_port(lport, port::SENDER)
        .map_err(|source| SenderError::Register {
            port: lport,
            source,
        })?;
    let peer_s = peer.to_string();
    let ee = st.error_estimate();
    let mut stats = SessionStats::default();
    let mut tracker = SeqTracker::default();
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut tx_stamps: HashMap<u32, u64> = HashMap::new();
    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: u32 = 0;
    let mut tx_key: u32 = 0;
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(opts.size);
    // Validate the size once; the packet shape is the same for every probe.
    SenderPacket::probe(0, ssid, Timestamp::default(), ee, opts.size).map_err(SenderError::Size)?;

    loop {
        let more_to_send = opts.count == 0 || (seq as u64) < opts.count;
        if !more_to_send && pending.is_empty() {
            break;
        }
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            _ = ticker.tick(), if more_to_send => {
                let app_tx = clock::tai_now_ns();
                // Kernel mode: T1 goes out as zero and the egress program fills it, so a zero
                // echo means the probe left through an interface without our program.
                let t1 = if kernel { Timestamp::default() } else { Timestamp::from_ptp_ns(app_tx) };
                let pkt = SenderPacket::probe(seq, ssid, t1, ee, opts.size).map_err(SenderError::Size)?;
                out.clear();
                pkt.encode(&mut out);
                match sock.send(&out).await {
                    Ok(_) => {
                        tracker.sent(seq);
                        stats.sent += 1;
                        pending.insert(seq, Pending {
                            app_tx_tai: app_tx,
                            deadline: Instant::now() + opts.timeout,
                            tx_key,
                        });
                        tx_key = tx_key.wrapping_add(1);
                    }
                    Err(e) => {
                        // Unreachable peer (ICMP error) or no route: the probe is lost.
                        debug!("send to {peer}: {e}");
                        stats.sent += 1;
                        stats.lost += 1;
                        if opts.json && !opts.quiet {
                            emit_json(&SeqEvent { kind: "loss", peer: &peer_s, ssid, seq });
                        }
                    }
                }
                seq = seq.wrapping_add(1);
            }
            r = sock.recv(&mut buf) => {
                let app_rx = clock::tai_now_ns();
                let rx = match r {
                    Ok(rx) => rx,
                    Err(e) => {
                        // ECONNREFUSED from an earlier ICMP error: nothing listens there.
                        debug!("recv from {peer}: {e}");
                        continue;
                    }
                };
                let payload = &buf[..rx.len];
                let Ok(rep) = ReflectorPacket::decode(payload) else {
                    stats.unknown += 1;
                    continue;
                };
                // RFC 8762-only reflectors leave the SSID octets zero.
                if rep.ssid != ssid && rep.ssid != 0 {
                    stats.unknown += 1;
                    continue;
                }
                let rseq = rep.sender_seq;
                let kind = tracker.reply(rseq);
                match kind {
                    ReplyKind::Duplicate => {
                        stats.duplicates += 1;
                        if opts.json && !opts.quiet {
                            emit_json(&SeqEvent { kind: "duplicate", peer: &peer_s, ssid, seq: rseq });
                        }
                        continue;
                    }
                    ReplyKind::Late => { stats.late += 1; continue; }
                    ReplyKind::Unknown => { stats.unknown += 1; continue; }
                    ReplyKind::Reordered => {
                        stats.reordered += 1;
                        if opts.json && !opts.quiet {
                            emit_json(&SeqEvent { kind: "reordered", peer: &peer_s, ssid, seq: rseq });
                        }
                    }
                    ReplyKind::InOrder => {}
                }
                let Some(p) = pending.remove(&rseq) else { continue };
                for (k, t) in sock.drain_tx_stamps() {
                    tx_stamps.insert(k, t);
                }
                let m = measure(&st, &rep, &ReplyContext {
                    payload,
                    rx_sw_realtime_ns: rx.rx_sw_realtime_ns,
                    app_tx_tai: p.app_tx_tai,
                    app_rx_tai: app_rx,
                    tx_sw_realtime_ns: tx_stamps.remove(&p.tx_key),
                    t4_map_key: Some((lport, rseq)),
                });
                let (t1, t2, t3, t4) = (m.t1, m.t2, m.t3, m.t4);
                let (t1_source, t4_source) = (m.t1_source, m.t4_source);
                let (network, turnaround, app_rtt, overhead) =
                    (m.network_rtt, m.turnaround, m.app_rtt, m.stack_overhead);
                stats.received += 1;
                stats.network_rtt.record(network);
                stats.turnaround.record(turnaround);
                stats.app_rtt.record(app_rtt);
                stats.stack_overhead.record(overhead);
                if !opts.quiet {
                    let rec = ProbeRecord {
                        kind: "probe",
                        peer: peer_s.clone(),
                        ssid,
                        seq: rseq,
                        t1_ns: t1,
                        t2_ns: t2,
                        t3_ns: t3,
                        t4_ns: t4,
                        network_rtt_ns: network,
                        turnaround_ns: turnaround,
                        app_rtt_ns: app_rtt,
                        stack_overhead_ns: overhead,
                        timestamping: st.label(),
                        t1_source,
                        t4_source,
                        ttl: rep.sender_ttl,
                        reordered: kind == ReplyKind::Reordered,
                    };
                    if opts.json {
                        emit_json(&rec);
                    } else {
                        println!(
                            "{} bytes from {peer}: seq={rseq} net={} app={} turnaround={} ttl={}{}",
                            rx.len,
                            fmt_ns(network),
                            fmt_ns(app_rtt),
                            fmt_ns(turnaround),
                            rep.sender_ttl,
                            if kind == ReplyKind::Reordered { " (reordered)" } else { "" },
                        );
                    }
                }
            }
            _ = sleep_until_opt(next_deadline), if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<u32> =
                    pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
                for s in expired {
                    if let Some(p) = pending.remove(&s) {
                        tx_stamps.remove(&p.tx_key);
                    }
                    if tracker.time_out(s) {
                        stats.lost += 1;
                        if !opts.quiet {
                            if opts.json {
                                emit_json(&SeqEvent { kind: "loss", peer: &peer_s, ssid, seq: s });
                            } else {
                                println!("no reply from {peer}: seq={s} (timeout {})", fmt_ns(opts.timeout.as_nanos() as i64));
                            }
                        }
                    }
                }
                // TX stamps of lost probes must not accumulate.
                if tx_stamps.len() > 4096 {
                    tx_stamps.clear();
                }
            }
            _ = stop.changed() => break,
        }
    }
    if let Err(e) = st.set_port(lport, 0) {
        warn!("unregistering port {lport}: {e}");
    }
    Ok(SessionResult { peer, stats })
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Prints a session summary, human or JSON.
pub fn print_summary(res: &SessionResult, st: &Stamping, json: bool) {
    let note = st.note();
    let rec = res.stats.record(res.peer.to_string(), st.label(), &note);
    if json {
        emit_json(&rec);
        return;
    }
    let s = &res.stats;
    println!("--- {} meshprobe statistics ---", res.peer);
    println!("timestamps: {note}");
    println!(
        "{} sent, {} received, {:.1}% loss, {} duplicates, {} reordered, {} late",
        s.sent,
        s.received,
        s.loss_pct(),
        s.duplicates,
        s.reordered,
        s.late
    );
    let line = |name: &str, d: &crate::stats::DistSummary| {
        println!(
            "{name:<15} min/p50/p90/p99/max = {} / {} / {} / {} / {}",
            fmt_ns(d.min as i64),
            fmt_ns(d.p50 as i64),
            fmt_ns(d.p90 as i64),
            fmt_ns(d.p99 as i64),
            fmt_ns(d.max as i64)
        );
    };
    if s.received > 0 {
        line("network RTT", &rec.network_rtt_ns);
        line("turnaround", &rec.turnaround_ns);
        line("app RTT", &rec.app_rtt_ns);
        line("stack overhead", &rec.stack_overhead_ns);
    }
}
