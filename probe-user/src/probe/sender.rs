//! Session-Sender: sends STAMP test packets to each peer on a schedule, matches replies, and
//! computes network RTT = (T4 − T1) − (T3 − T2) from kernel stamps.
use std::{net::SocketAddr, time::Duration};

use probe_common::port;
use serde::Serialize;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, warn};

use super::{
    StampSource, Stamping, fmt_ns,
    session::{
        FollowUpUse, Outcome, Rejection, Reply, ReplyEnv, Sample, Session, TxStamps, decode_reply,
        encode_probe,
    },
};
use crate::{
    clock,
    net::{BATCH, ProbeSocket, Received, RecvBatch},
    sink::json::emit_json,
    stats::SessionStats,
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
    /// STAMP authenticated mode of the requests and replies.
    pub auth: crate::auth::Auth,
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
    pub t2_source: StampSource,
    pub t3_source: StampSource,
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

/// Below this interval the timer cannot wake for every probe (tokio's timer has 1 ms
/// resolution, and a wake-up costs more than a probe): probes that fell due since the last
/// wake-up leave together, with one sendmmsg. At longer intervals every probe is sent on its
/// own wake-up and a late one is not made up (no bursts).
const BURST_BELOW: Duration = Duration::from_millis(1);

/// Behind schedule by more than this, a fast sender gives up the probes it missed.
const STALL: Duration = Duration::from_millis(50);

/// How many probes are due at `now` when the next one was due at `next`, at most `max`.
fn due_count(next: Instant, now: Instant, interval: Duration, max: u64) -> u64 {
    if now < next {
        return 0;
    }
    if interval < BURST_BELOW && !interval.is_zero() {
        let behind = (now - next).as_nanos() / interval.as_nanos();
        (behind as u64).saturating_add(1).min(max)
    } else {
        1.min(max)
    }
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
    let sock = ProbeSocket::connect(peer, st.sock_stamps()).map_err(sock_err)?;
    let lport = sock.local_addr().map_err(sock_err)?.port();
    let role = if opts.auth.mode.is_on() {
        port::SENDER | port::AUTH
    } else {
        port::SENDER
    };
    st.register_socket(&sock, role)
        .map_err(|source| SenderError::Register {
            port: lport,
            source,
        })?;
    let peer_s = peer.to_string();
    let ee = st.error_estimate();
    let mut stats = SessionStats::default();
    let mut session = Session::new(peer, ssid, opts.timeout, opts.interval);
    let mut tx_stamps = TxStamps::default();
    let mut next_send = Instant::now();
    let mut sent: u64 = 0;
    let mut batch = RecvBatch::new(crate::wire::MAX_PACKET_LEN + 1);
    let mut out: Vec<Vec<u8>> = Vec::new();
    // Validate the size once; the packet shape is the same for every probe.
    encode_probe(
        &opts.auth,
        kernel,
        0,
        ssid,
        0,
        ee,
        opts.size,
        st.probe_tag,
        &mut Vec::new(),
    )
    .map_err(SenderError::Size)?;
    let ctx = ReplyCtx {
        peer_s: &peer_s,
        ssid,
        lport,
        st: &st,
        opts: &opts,
    };

    loop {
        let left = if opts.count == 0 {
            u64::MAX
        } else {
            opts.count.saturating_sub(sent)
        };
        let more_to_send = left > 0;
        if !more_to_send && !session.in_flight() {
            break;
        }
        let next_deadline = session.next_deadline();
        tokio::select! {
            _ = tokio::time::sleep_until(next_send), if more_to_send => {
                let now = Instant::now();
                let n = due_count(next_send, now, opts.interval, left.min(BATCH as u64));
                if opts.interval < BURST_BELOW {
                    next_send += opts.interval * n as u32;
                    // Far behind (a stall, well beyond the timer's own lateness): start again
                    // from now rather than make up for it.
                    if next_send + STALL <= now {
                        next_send = now + opts.interval;
                    }
                } else {
                    // As MissedTickBehavior::Delay: the next probe one interval after this one.
                    next_send = now + opts.interval;
                }
                // Open kernel mode: T1 goes out as zero and the egress program fills it, so a
                // zero echo means the probe left through an interface without our program.
                // Authenticated mode: T1 is this stamp, signed (see `encode_probe`).
                let app_tx = clock::tai_now_ns();
                let deadline = Instant::now() + opts.timeout;
                let first = session.next_seq();
                for i in 0..n as usize {
                    if out.len() <= i {
                        out.push(Vec::with_capacity(opts.size));
                    }
                    let seq = session.sent(app_tx, tx_stamps.next_key(), deadline);
                    out[i].clear();
                    encode_probe(&opts.auth, kernel, seq, ssid, app_tx, ee, opts.size, st.probe_tag, &mut out[i]).map_err(SenderError::Size)?;
                    stats.sent += 1;
                    sent += 1;
                }
                let msgs: Vec<(&[u8], SocketAddr)> = out[..n as usize].iter().map(|b| (&b[..], peer)).collect();
                sock.send_batch(&msgs, |i, e| {
                    // Unreachable peer (ICMP error) or no route: the probe is lost.
                    debug!("send to {peer}: {e}");
                    let s = first.wrapping_add(i as u32);
                    if session.fail(s) {
                        stats.lost += 1;
                        ctx.seq_event("loss", s);
                    }
                }).await;
            }
            r = sock.recv_batch(&mut batch) => {
                let app_rx = clock::tai_now_ns();
                if let Err(e) = r {
                    // ECONNREFUSED from an earlier ICMP error: nothing listens there.
                    debug!("recv from {peer}: {e}");
                    continue;
                }
                tx_stamps.absorb(&sock);
                for (payload, rx) in batch.iter() {
                    ctx.on_reply(payload, rx, app_rx, &mut session, &mut tx_stamps, &mut stats);
                }
            }
            _ = sleep_until_opt(next_deadline), if next_deadline.is_some() => {
                let held = session.expire(Instant::now(), &mut tx_stamps, |l| {
                    stats.lost += 1;
                    if !opts.quiet && !opts.json {
                        println!("no reply from {peer}: seq={} (timeout {})", l.seq, fmt_ns(opts.timeout.as_nanos() as i64));
                    }
                    ctx.seq_event("loss", l.seq);
                });
                if let Some(s) = held {
                    ctx.on_sample(&s, &mut stats);
                }
            }
            _ = stop.changed() => break,
        }
    }
    if let Some(s) = session.drain() {
        ctx.on_sample(&s, &mut stats);
    }
    if let Err(e) = st.unregister_socket(&sock) {
        warn!("unregistering port {lport}: {e}");
    }
    Ok(SessionResult { peer, stats })
}

/// What handling a reply needs besides the session's mutable state.
struct ReplyCtx<'a> {
    peer_s: &'a str,
    ssid: u16,
    lport: u16,
    st: &'a Stamping,
    opts: &'a SenderOptions,
}

impl ReplyCtx<'_> {
    /// A JSON line for a loss, duplicate or reordered reply (with `--json`, unless quiet).
    fn seq_event(&self, kind: &'static str, seq: u32) {
        if self.opts.json && !self.opts.quiet {
            emit_json(&SeqEvent {
                kind,
                peer: self.peer_s,
                ssid: self.ssid,
                seq,
            });
        }
    }

    fn on_reply(
        &self,
        payload: &[u8],
        rx: Received,
        app_rx: u64,
        session: &mut Session,
        tx_stamps: &mut TxStamps,
        stats: &mut SessionStats,
    ) {
        let opts = self.opts;
        let rep = match decode_reply(&opts.auth, payload) {
            Ok(d) => {
                stats.unauthenticated += u64::from(d.unauthenticated);
                d.packet
            }
            Err(r) => {
                debug!("reply from {} rejected: {}", rx.from, r.label());
                stats.rejected.add(r);
                return;
            }
        };
        let reply = Reply::received(payload, &rx, app_rx);
        let mut env = ReplyEnv {
            st: self.st,
            lport: self.lport,
            t4_map: true,
            tx_stamps,
            signed_t1: opts.auth.mode.is_on(),
        };
        let (seq, reordered, released) = match session.reply(&reply, &rep, &mut env) {
            Err(r) => {
                debug!("reply from {} rejected: {}", rx.from, r.label());
                stats.rejected.add(r);
                return;
            }
            Ok(Outcome::Duplicate { seq }) => {
                stats.duplicates += 1;
                self.seq_event("duplicate", seq);
                return;
            }
            Ok(Outcome::Late { .. }) => {
                stats.late += 1;
                return;
            }
            Ok(Outcome::Sample {
                seq,
                reordered,
                t1_unrecorded,
                follow_up,
                released,
            }) => {
                stats.t1_unrecorded += u64::from(t1_unrecorded);
                stats.follow_up_applied += u64::from(follow_up == FollowUpUse::Applied);
                stats.follow_up_ignored += u64::from(follow_up == FollowUpUse::Ignored);
                (seq, reordered, released)
            }
        };
        if reordered {
            stats.reordered += 1;
            self.seq_event("reordered", seq);
        }
        for s in released {
            self.on_sample(&s, stats);
        }
    }

    /// A sample the session released (see `session`'s two-step): counted and printed once.
    fn on_sample(&self, s: &Sample, stats: &mut SessionStats) {
        let (opts, peer_s, m, seq) = (self.opts, self.peer_s, &s.m, s.seq);
        stats.sample(&m.figures());
        if opts.quiet {
            return;
        }
        let rec = ProbeRecord {
            kind: "probe",
            peer: peer_s.to_string(),
            ssid: self.ssid,
            seq,
            t1_ns: m.t1,
            t2_ns: m.t2,
            t3_ns: m.t3,
            t4_ns: m.t4,
            network_rtt_ns: m.network_rtt,
            turnaround_ns: m.turnaround,
            app_rtt_ns: m.app_rtt,
            stack_overhead_ns: m.stack_overhead,
            timestamping: self.st.label(),
            t1_source: m.t1_source,
            t2_source: m.t2_source,
            t3_source: m.t3_source,
            t4_source: m.t4_source,
            ttl: s.ttl,
            reordered: s.reordered,
        };
        if opts.json {
            emit_json(&rec);
        } else {
            println!(
                "{} bytes from {peer_s}: seq={seq} net={} app={} turnaround={} ttl={}{}",
                s.len,
                fmt_ns(m.network_rtt),
                fmt_ns(m.app_rtt),
                fmt_ns(m.turnaround),
                s.ttl,
                if s.reordered { " (reordered)" } else { "" },
            );
        }
    }
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
    let rec = res
        .stats
        .record(res.peer.to_string(), st.label(), st.kernel_clock(), &note);
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
    if s.rejected.total() > 0 {
        let by: Vec<String> = Rejection::ALL
            .iter()
            .filter(|&&r| s.rejected.get(r) > 0)
            .map(|&r| format!("{} {}", s.rejected.get(r), r.label()))
            .collect();
        println!("{} replies rejected: {}", s.rejected.total(), by.join(", "));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_due_burst_only_below_the_timer_resolution() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // Not yet due.
        assert_eq!(due_count(t0 + us(5), t0, us(20), 32), 0);
        // 20 µs interval, 100 µs late: this probe and the five that fell due since.
        assert_eq!(due_count(t0, t0 + us(100), us(20), 32), 6);
        assert_eq!(due_count(t0, t0 + us(100), us(20), 4), 4, "capped");
        assert_eq!(due_count(t0, t0 + us(19), us(20), 32), 1);
        // 10 ms interval, 35 ms late: one probe, no catching up.
        assert_eq!(due_count(t0, t0 + us(35_000), us(10_000), 32), 1);
        assert_eq!(
            due_count(t0, t0 + us(1), us(20), 0),
            0,
            "nothing left to send"
        );
    }
}
