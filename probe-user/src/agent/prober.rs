//! The agent's Session-Sender for every peer at once: one UDP socket (one port registered
//! with the TC programs), one task, a timer heap. Memory per peer is fixed (sequence ring,
//! bounded in-flight queue, window statistics), so it stays flat with uptime.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use probe_common::port;
use rand::Rng as _;
use serde::Serialize;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::metrics::{PeerWindow, ProbeMetrics, ZonePairLabel};
use crate::{
    clock,
    discovery::{Peer, PeerMap},
    net::{ProbeSocket, RecvBatch, SockStamps, canonical},
    pb,
    probe::{
        StampSource, Stamping,
        session::{
            self, FollowUpUse, Outcome, Rejection, Reply, ReplyEnv, Sample, Session, TxStamps,
            decode_reply, encode_probe,
        },
    },
    sink::{Sinks, json::emit_json},
    stats::{
        window::WindowStats,
        zone::{ZoneSizes, ZoneWindow, zone_sizes},
    },
};

#[derive(Clone, Debug)]
pub struct ProberOptions {
    pub node_id: String,
    pub zone: String,
    pub interval: Duration,
    /// ± percent of the interval, so agents do not synchronise.
    pub jitter_pct: u8,
    pub timeout: Duration,
    /// UDP payload sizes, used in turn.
    pub sizes: Vec<usize>,
    pub window: Duration,
    /// How long a departed peer's state is kept.
    pub grace: Duration,
    /// Random id of this process run.
    pub instance: String,
    /// Print peer_added/peer_removed events as JSON lines.
    pub json_events: bool,
    /// STAMP authenticated mode of the sender (`MESHPROBE_STAMP_AUTH_SENDER`).
    pub auth: crate::auth::Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("sender socket: {0}")]
    Socket(std::io::Error),
    #[error("registering sender port {port} with the TC programs: {source}")]
    Register {
        port: u16,
        source: crate::ebpf::EbpfError,
    },
}

struct PeerState {
    peer: Peer,
    /// Sequence numbers, probes in flight and reply validation.
    session: Session,
    win: WindowStats,
    label: ZonePairLabel,
    /// Left the membership at this instant: no new probes, no loss counted.
    leaving: Option<Instant>,
    /// Invalidates queued send events when the schedule restarts.
    send_gen: u32,
    left_reported: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Send { generation: u32 },
    Timeout,
}

#[derive(Serialize)]
struct PeerEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    node_id: &'a str,
    address: String,
    zone: &'a str,
}

pub struct Prober {
    opts: ProberOptions,
    st: Stamping,
    sinks: Arc<Sinks>,
    metrics: Arc<ProbeMetrics>,
    peers: HashMap<u64, PeerState>,
    by_node: HashMap<String, u64>,
    by_ssid: HashMap<u16, u64>,
    /// By canonical address: replies of reflectors that zero the SSID.
    by_addr: HashMap<SocketAddr, u64>,
    heap: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    next_id: u64,
    tx_stamps: TxStamps,
    /// The sender socket's port, once bound.
    lport: u16,
    ee: crate::wire::ErrorEstimate,
    /// Probes built by one `run_due`, sent together (sendmmsg); buffers are reused.
    out: Vec<(Vec<u8>, SocketAddr)>,
    n_out: usize,
    window_seq: u64,
    /// The window's aggregate per destination zone (`ZoneSummary`).
    zones: BTreeMap<String, ZoneWindow>,
    /// Members per zone of the whole membership, for `dst_zone_members`; None: counted
    /// among the probed peers.
    zone_sizes: Option<watch::Receiver<ZoneSizes>>,
}

/// How late a timer event may be handled so that events close together share one wake-up:
/// 5 % of the probe interval, at most 50 ms. A wake-up costs far more than the probe it
/// sends (on the bench's 2-vCPU guest about 100 µs against about 20 µs), so the prober wakes
/// at most 20 times a second, whatever its peers: 128 peers at 1 probe/s leave in batches of
/// about six and their replies come back together. Nothing is handled early: probes leave at
/// most this late (the schedule does not drift; the ± jitter is wider), timeouts expire at
/// most this late (a reply is judged by its stamps, not by when it is read).
fn coalesce(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_millis(50))
}

/// Binds the sender socket: dual stack when the host has IPv6, else IPv4 only.
fn bind_sender(stamps: SockStamps) -> std::io::Result<ProbeSocket> {
    ProbeSocket::bind(
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        stamps,
    )
    .or_else(|_| {
        ProbeSocket::bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            stamps,
        )
    })
}

fn window_index(tai_ns: u64, window: Duration) -> u64 {
    tai_ns / window.as_nanos() as u64
}

impl Prober {
    pub fn new(
        opts: ProberOptions,
        st: Stamping,
        sinks: Arc<Sinks>,
        metrics: Arc<ProbeMetrics>,
    ) -> Self {
        let ee = st.error_estimate();
        Self {
            window_seq: window_index(clock::tai_now_ns(), opts.window),
            opts,
            st,
            sinks,
            metrics,
            peers: HashMap::new(),
            by_node: HashMap::new(),
            by_ssid: HashMap::new(),
            by_addr: HashMap::new(),
            heap: BinaryHeap::new(),
            next_id: 0,
            tx_stamps: TxStamps::default(),
            lport: 0,
            ee,
            out: Vec::new(),
            n_out: 0,
            zones: BTreeMap::new(),
            zone_sizes: None,
        }
    }

    /// Members per zone of the whole membership (not only the probed peers), read at each
    /// window close for `ZoneSummary.dst_zone_members`; build it with
    /// [`zone_sizes`](crate::stats::zone::zone_sizes). Without it, the probed peers' zones
    /// are counted (right for a full mesh).
    #[must_use]
    pub fn with_zone_sizes(mut self, sizes: watch::Receiver<ZoneSizes>) -> Self {
        self.zone_sizes = Some(sizes);
        self
    }

    /// Probes the peers in `members` until `stop`; then waits for replies in flight (at most
    /// one timeout) and emits the last, partial window.
    pub async fn run(
        mut self,
        mut members: watch::Receiver<PeerMap>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProberError> {
        let sock = bind_sender(self.st.sock_stamps()).map_err(ProberError::Socket)?;
        let lport = sock.local_addr().map_err(ProberError::Socket)?.port();
        self.lport = lport;
        let role = if self.opts.auth.mode.is_on() {
            port::SENDER | port::AUTH
        } else {
            port::SENDER
        };
        self.st
            .register_socket(&sock, role)
            .map_err(|source| ProberError::Register {
                port: lport,
                source,
            })?;
        let mut batch = RecvBatch::new(crate::wire::MAX_PACKET_LEN + 1);
        let tick = coalesce(self.opts.interval);
        let mut last_due = Instant::now();
        let initial = members.borrow_and_update().clone();
        self.apply_members(&initial);
        let mut window_end = self.window_deadline();
        let mut stopping: Option<Instant> = None;
        // A static peer list never changes: its sender is gone, so stop polling it.
        let mut members_open = true;
        loop {
            let next_ev = self
                .heap
                .peek()
                .map(|Reverse((t, _, _))| (*t).max(last_due + tick));
            if let Some(until) = stopping {
                let in_flight = self.peers.values().any(|p| p.session.in_flight());
                if !in_flight || Instant::now() >= until {
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed(), if stopping.is_none() => {
                    // No new probes; give the ones in flight their timeout.
                    stopping = Some(Instant::now() + self.opts.timeout);
                    for p in self.peers.values_mut() {
                        p.send_gen = p.send_gen.wrapping_add(1);
                    }
                }
                r = sock.recv_batch(&mut batch) => {
                    let app_rx = clock::tai_now_ns();
                    match r {
                        Ok(_) => {
                            for (payload, rx) in batch.iter() {
                                self.on_reply(&sock, payload, rx, app_rx);
                            }
                        }
                        Err(e) => debug!("sender socket: {e}"),
                    }
                }
                r = members.changed(), if members_open && stopping.is_none() => {
                    if r.is_ok() {
                        let m = members.borrow_and_update().clone();
                        self.apply_members(&m);
                    } else {
                        members_open = false;
                    }
                }
                _ = tokio::time::sleep_until(window_end) => {
                    // Monotonic and TAI clocks may disagree by a hair: close only once the
                    // TAI clock is past the boundary.
                    if clock::tai_now_ns() >= self.window_end_tai() {
                        self.close_window();
                    }
                    window_end = self.window_deadline();
                }
                _ = sleep_until_opt(next_ev), if next_ev.is_some() => {
                    last_due = Instant::now();
                    self.run_due(&sock, stopping.is_some()).await;
                }
                _ = sleep_until_opt(stopping), if stopping.is_some() => {}
            }
        }
        // Samples held for a follow-up, then the last, partial window: nothing measured is left
        // unreported.
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.peers.get_mut(&id)
                && let Some(s) = p.session.drain()
            {
                Self::on_sample(&self.opts, &self.st, &self.sinks, &self.metrics, p, &s);
            }
        }
        self.close_window();
        if let Err(e) = self.st.unregister_socket(&sock) {
            warn!("unregistering sender port {lport}: {e}");
        }
        Ok(())
    }

    /// TAI time at which the window being filled ends.
    fn window_end_tai(&self) -> u64 {
        (self.window_seq + 1) * self.opts.window.as_nanos() as u64
    }

    /// The monotonic instant of that end.
    fn window_deadline(&self) -> Instant {
        let now = clock::tai_now_ns();
        Instant::now() + Duration::from_nanos(self.window_end_tai().saturating_sub(now))
    }

    fn jittered(&self, base: Duration) -> Duration {
        let j = f64::from(self.opts.jitter_pct) / 100.0;
        if j == 0.0 {
            return base;
        }
        base.mul_f64(1.0 + rand::rng().random_range(-j..=j))
    }

    fn event(&self, kind: &'static str, p: &Peer) {
        peer_span(&p.node_id)
            .in_scope(|| info!("{}: {} at {}", kind.replace('_', " "), p.node_id, p.addr));
        if self.opts.json_events {
            emit_json(&PeerEvent {
                kind,
                node_id: &p.node_id,
                address: p.addr.to_string(),
                zone: &p.zone,
            });
        }
    }

    fn apply_members(&mut self, m: &PeerMap) {
        let now = Instant::now();
        // Departures (and address changes, which start a new session).
        let gone: Vec<u64> = self
            .by_node
            .iter()
            .filter(|(node, id)| match m.get(*node) {
                None => self.peers[*id].leaving.is_none(),
                Some(p) => p.addr != self.peers[*id].peer.addr,
            })
            .map(|(_, id)| *id)
            .collect();
        for id in gone {
            let moved = self.peers[&id].peer.node_id.clone();
            let p = self.peers.get_mut(&id).expect("listed above");
            p.leaving = Some(now);
            p.send_gen = p.send_gen.wrapping_add(1);
            let peer = p.peer.clone();
            self.event("peer_removed", &peer);
            if m.contains_key(&moved) {
                // Address change: the old session is finished; the new one starts below.
                self.by_node.remove(&moved);
            }
        }
        for (node, peer) in m {
            if peer.node_id == self.opts.node_id {
                continue;
            }
            if let Some(&id) = self.by_node.get(node) {
                let p = self.peers.get_mut(&id).expect("indexed peer exists");
                if p.leaving.take().is_some() {
                    // Back within the grace period: the same session goes on.
                    p.send_gen = p.send_gen.wrapping_add(1);
                    let generation = p.send_gen;
                    let peer = p.peer.clone();
                    self.heap.push(Reverse((now, id, Ev::Send { generation })));
                    self.event("peer_added", &peer);
                }
                continue;
            }
            let Some(ssid) = session::alloc_ssid(|s| self.by_ssid.contains_key(&s)) else {
                peer_span(&peer.node_id)
                    .in_scope(|| warn!("not probing {}: every SSID is in use", peer.node_id));
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            let label = self.metrics.zone_label(&peer.zone);
            self.by_node.insert(node.clone(), id);
            self.by_ssid.insert(ssid, id);
            self.by_addr.insert(canonical(peer.addr), id);
            self.peers.insert(
                id,
                PeerState {
                    peer: peer.clone(),
                    session: Session::new(peer.addr, ssid, self.opts.timeout, self.opts.interval),
                    win: WindowStats::default(),
                    label,
                    leaving: None,
                    send_gen: 0,
                    left_reported: false,
                },
            );
            // First probe soon (a new peer is measured within a fraction of a second), spread
            // so that many new peers at once do not burst.
            let first = Duration::from_millis(200).min(self.opts.interval);
            let first = first.mul_f64(rand::rng().random_range(0.0..1.0));
            self.heap
                .push(Reverse((now + first, id, Ev::Send { generation: 0 })));
            self.event("peer_added", peer);
        }
        self.metrics
            .peers
            .set(self.peers.values().filter(|p| p.leaving.is_none()).count() as i64);
    }

    /// Handles every event that is due, then sends the probes it built with one sendmmsg.
    async fn run_due(&mut self, sock: &ProbeSocket, stopping: bool) {
        let now = Instant::now();
        self.n_out = 0;
        while let Some(Reverse((t, id, ev))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            match ev {
                Ev::Send { generation } => {
                    if !stopping {
                        self.build_probe(id, generation, t);
                    }
                }
                Ev::Timeout => self.expire(id, now),
            }
        }
        if self.n_out == 0 {
            return;
        }
        let msgs: Vec<(&[u8], SocketAddr)> = self.out[..self.n_out]
            .iter()
            .map(|(b, a)| (&b[..], *a))
            .collect();
        let metrics = &self.metrics;
        sock.send_batch(&msgs, |i, e| {
            // No route / unreachable: the probe is lost (its timeout will count it).
            metrics.send_errors.inc();
            debug!("probe to {}: {e}", msgs[i].1);
        })
        .await;
    }

    /// Builds the next probe to `id` into the send batch and schedules its timeout and the
    /// next probe.
    fn build_probe(&mut self, id: u64, generation: u32, due: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.send_gen != generation || p.leaving.is_some() {
            return;
        }
        let seq = p.session.next_seq();
        let size = self.opts.sizes[seq as usize % self.opts.sizes.len()];
        let app_tx = clock::tai_now_ns();
        if self.out.len() <= self.n_out {
            self.out.push((Vec::with_capacity(2048), p.peer.addr));
        }
        let (buf, to) = &mut self.out[self.n_out];
        *to = p.peer.addr;
        buf.clear();
        let kernel = self.st.is_kernel();
        let (ssid, tag) = (p.session.ssid(), self.st.probe_tag);
        if let Err(e) = encode_probe(
            &self.opts.auth,
            kernel,
            seq,
            ssid,
            app_tx,
            self.ee,
            size,
            tag,
            buf,
        ) {
            // Sizes are validated with the configuration; this cannot happen.
            warn!("probe of {size} octets: {e}");
            return;
        }
        self.n_out += 1;
        let deadline = Instant::now() + self.opts.timeout;
        p.session.sent(app_tx, self.tx_stamps.next_key(), deadline);
        p.win.sent += 1;
        self.metrics.on_sent(&p.label);
        self.heap.push(Reverse((deadline, id, Ev::Timeout)));
        // Next probe from the scheduled time, not from now: no drift under load.
        let next = due + self.jittered(self.opts.interval);
        let next = next.max(Instant::now());
        self.heap.push(Reverse((next, id, Ev::Send { generation })));
    }

    /// Resolves in-flight probes whose timeout passed.
    fn expire(&mut self, id: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let (opts, st, sinks, metrics) = (&self.opts, &self.st, &self.sinks, &self.metrics);
        let leaving = p.leaving.is_some();
        let (session, win) = (&mut p.session, &mut p.win);
        let (peer, label, ssid) = (&p.peer, &p.label, session.ssid());
        let held = session.expire(now, &mut self.tx_stamps, |l| {
            // A departing peer's unanswered probes are not loss: it is leaving.
            if leaving {
                return;
            }
            win.lost += 1;
            metrics.on_lost(label);
            if sinks.kafka_probes {
                sinks.probe(pb::ProbeResult {
                    lost: true,
                    ..probe_record(opts, peer, ssid, st, l.seq, l.app_tx_tai)
                });
            }
        });
        if let Some(s) = held {
            Self::on_sample(opts, st, sinks, metrics, p, &s);
        }
    }

    /// Counts a reply that does not count (no per-peer label: the set stays bounded).
    fn reject(metrics: &ProbeMetrics, from: SocketAddr, r: Rejection) {
        debug!("reply from {from} rejected: {}", r.label());
        metrics.on_rejected(r);
    }

    fn on_reply(
        &mut self,
        sock: &ProbeSocket,
        payload: &[u8],
        rx: crate::net::Received,
        app_rx: u64,
    ) {
        let rep = match decode_reply(&self.opts.auth, payload) {
            Ok(d) => {
                if d.unauthenticated {
                    self.metrics.unauthenticated.inc();
                }
                d.packet
            }
            Err(r) => {
                Self::reject(&self.metrics, rx.from, r);
                return;
            }
        };
        // Our reflectors echo the SSID; RFC 8762-only ones leave it zero: found by address,
        // which the session checks either way.
        let id = if rep.ssid != 0 {
            self.by_ssid.get(&rep.ssid)
        } else {
            self.by_addr.get(&canonical(rx.from))
        };
        let Some(p) = id.copied().and_then(|id| self.peers.get_mut(&id)) else {
            Self::reject(&self.metrics, rx.from, Rejection::UnknownSession);
            return;
        };
        if !self.st.is_kernel() {
            self.tx_stamps.absorb(sock);
        }
        let reply = Reply::received(payload, &rx, app_rx);
        let mut env = ReplyEnv {
            st: &self.st,
            lport: self.lport,
            // Authenticated replies are never written to: without the socket's RX stamps
            // (`--no-sw-rx-stamps`), T4 is in the programs' map.
            t4_map: self.opts.auth.mode.is_on() && !self.st.sw_rx_stamps,
            tx_stamps: &mut self.tx_stamps,
            signed_t1: self.opts.auth.mode.is_on(),
        };
        let outcome = p.session.reply(&reply, &rep, &mut env);
        let (reordered, released) = match outcome {
            Err(r) => {
                Self::reject(&self.metrics, rx.from, r);
                return;
            }
            Ok(Outcome::Duplicate { .. }) => {
                p.win.duplicates += 1;
                self.metrics.duplicates.inc();
                return;
            }
            Ok(Outcome::Late { .. }) => {
                p.win.late += 1;
                self.metrics.late.inc();
                return;
            }
            Ok(Outcome::Sample {
                reordered,
                t1_unrecorded,
                follow_up,
                released,
                ..
            }) => {
                if t1_unrecorded {
                    self.metrics.t1_unrecorded.inc();
                }
                match follow_up {
                    FollowUpUse::Applied => self.metrics.follow_up_applied.inc(),
                    FollowUpUse::Ignored => self.metrics.follow_up_ignored.inc(),
                    FollowUpUse::None => 0,
                };
                (reordered, released)
            }
        };
        // Authenticated replies never carry T4 in-band: their T4 is the socket's RX stamp, or
        // the programs' map with `--no-sw-rx-stamps` (no host-wide stamping turned on for it).
        if self.st.is_kernel()
            && !self.opts.auth.mode.is_on()
            && crate::wire::reply_rx_stamp(payload, self.st.block_key).is_err()
            && sock.ensure_rx_stamps()
        {
            // A reply without room for the in-band T4 (a reflector that does not echo our
            // padding TLV): the socket's RX stamp is the kernel stamp left for it.
            peer_span(&p.peer.node_id).in_scope(|| {
                info!(
                    "reply from {} has no room for the in-band T4: RX software timestamps turned \
                     on",
                    rx.from
                )
            });
        }
        if reordered {
            p.win.reordered += 1;
        }
        for smp in released {
            Self::on_sample(&self.opts, &self.st, &self.sinks, &self.metrics, p, &smp);
        }
    }

    /// A sample the session released (see `session`'s two-step): into the window, the
    /// metrics and the probe sink, once.
    fn on_sample(
        opts: &ProberOptions,
        st: &Stamping,
        sinks: &Sinks,
        metrics: &ProbeMetrics,
        p: &mut PeerState,
        s: &Sample,
    ) {
        let m = &s.m;
        p.win.sample(&m.figures());
        metrics.on_reply(&p.label, m.network_rtt);
        if sinks.kafka_probes {
            sinks.probe(pb::ProbeResult {
                t1_ns: m.t1,
                t2_ns: m.t2,
                t3_ns: m.t3,
                t4_ns: m.t4,
                network_rtt_ns: m.network_rtt,
                turnaround_ns: m.turnaround,
                app_rtt_ns: m.app_rtt,
                stack_overhead_ns: m.stack_overhead,
                t1_source: stamp_source(m.t1_source) as i32,
                t2_source: stamp_source(m.t2_source) as i32,
                t3_source: stamp_source(m.t3_source) as i32,
                t4_source: stamp_source(m.t4_source) as i32,
                ttl: u32::from(s.ttl),
                reordered: s.reordered,
                ..probe_record(opts, &p.peer, p.session.ssid(), st, s.seq, s.app_tx_tai)
            });
        }
    }

    /// Emits one summary per peer for the window being filled (at shutdown: partial), then
    /// one per destination zone of those peers, updates the worst-peer metrics and drops
    /// peers whose grace period is over.
    fn close_window(&mut self) {
        let seq = self.window_seq;
        // After a stall (suspend) longer than a window, continue with the current one.
        let now_idx = window_index(clock::tai_now_ns(), self.opts.window);
        self.window_seq = (seq + 1).max(now_idx);
        let w = self.opts.window.as_nanos() as u64;
        let ts = timestamping(&self.st) as i32;
        let now = Instant::now();
        let mut drop_ids = Vec::new();
        let mut worst = Vec::new();
        let mut ids: Vec<u64> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let p = self.peers.get_mut(&id).expect("listed above");
            let leaving = p.leaving.is_some();
            let dropping = p.leaving.is_some_and(|t| now >= t + self.opts.grace);
            // Its last window: a sample still held for a follow-up goes into it.
            if dropping && let Some(s) = p.session.drain() {
                Self::on_sample(&self.opts, &self.st, &self.sinks, &self.metrics, p, &s);
            }
            if !(leaving && p.win.is_empty()) {
                let mut s = pb::WindowSummary {
                    src: self.opts.node_id.clone(),
                    dst: p.peer.node_id.clone(),
                    dst_address: p.peer.addr.to_string(),
                    window_seq: seq,
                    window_start_tai_ns: seq * w,
                    window_length_ns: w,
                    timestamping: ts,
                    src_zone: self.opts.zone.clone(),
                    dst_zone: p.peer.zone.clone(),
                    peer_left: leaving && !p.left_reported,
                    agent_instance: self.opts.instance.clone(),
                    ..Default::default()
                };
                p.left_reported |= leaving;
                self.zones
                    .entry(p.peer.zone.clone())
                    .or_default()
                    .add_pair(&mut p.win);
                p.win.drain_into(&mut s);
                if s.received + s.lost > 0 {
                    worst.push(PeerWindow {
                        peer: s.dst.clone(),
                        zone: s.dst_zone.clone(),
                        loss_ratio: s.loss_ratio,
                        rtt_p99_ns: s.network_rtt_ns.filter(|q| q.count > 0).map(|q| q.p99),
                    });
                }
                self.metrics.windows.inc();
                self.sinks.summary(s);
            }
            if dropping {
                drop_ids.push(id);
            }
        }
        self.close_zones(seq, ts);
        self.metrics.set_worst(worst);
        for id in drop_ids {
            if let Some(p) = self.peers.remove(&id) {
                if self.by_node.get(&p.peer.node_id) == Some(&id) {
                    self.by_node.remove(&p.peer.node_id);
                }
                self.by_ssid.remove(&p.session.ssid());
                let addr = canonical(p.peer.addr);
                if self.by_addr.get(&addr) == Some(&id) {
                    self.by_addr.remove(&addr);
                }
                self.metrics.forget(&p.label);
                peer_span(&p.peer.node_id)
                    .in_scope(|| debug!("dropped state of departed peer {}", p.peer.node_id));
            }
        }
    }

    /// Emits one `ZoneSummary` per zone that had a pair summary in window `seq`; forgets
    /// zones without one.
    fn close_zones(&mut self, seq: u64, timestamping: i32) {
        self.zones.retain(|_, z| z.pairs() > 0);
        if self.zones.is_empty() {
            return;
        }
        let members = match &self.zone_sizes {
            Some(rx) => rx.borrow().clone(),
            None => zone_sizes(
                self.peers
                    .values()
                    .filter(|p| p.leaving.is_none())
                    .map(|p| p.peer.zone.as_str()),
            ),
        };
        let w = self.opts.window.as_nanos() as u64;
        for (zone, agg) in &mut self.zones {
            let mut z = pb::ZoneSummary {
                src: self.opts.node_id.clone(),
                src_zone: self.opts.zone.clone(),
                dst_zone: zone.clone(),
                window_seq: seq,
                window_start_tai_ns: seq * w,
                window_length_ns: w,
                timestamping,
                agent_instance: self.opts.instance.clone(),
                ..Default::default()
            };
            agg.drain_into(&mut z);
            // A peer that left during the window is still one of its pairs: never report
            // more pairs than members.
            z.dst_zone_members = members.get(zone).copied().unwrap_or(0).max(z.pairs);
            self.metrics.zone_windows.inc();
            self.sinks.zone(z);
        }
    }
}

/// The fields every probe record towards `p` shares, answered or lost.
fn probe_record(
    opts: &ProberOptions,
    peer: &Peer,
    ssid: u16,
    st: &Stamping,
    seq: u32,
    sent_tai_ns: u64,
) -> pb::ProbeResult {
    pb::ProbeResult {
        src: opts.node_id.clone(),
        dst: peer.node_id.clone(),
        dst_address: peer.addr.to_string(),
        ssid: u32::from(ssid),
        seq,
        timestamping: timestamping(st) as i32,
        sent_tai_ns,
        ..Default::default()
    }
}

/// The span of one peer's events: its lines carry the peer id as a field. Peer events are
/// rare (joins, leaves, a one-time switch), so the hot path builds no span.
fn peer_span(node_id: &str) -> tracing::Span {
    tracing::info_span!("peer", id = %node_id)
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

pub fn timestamping(st: &Stamping) -> pb::Timestamping {
    if st.is_kernel() {
        pb::Timestamping::Kernel
    } else {
        pb::Timestamping::Socket
    }
}

pub fn stamp_source(s: StampSource) -> pb::StampSource {
    match s {
        StampSource::SkbRx => pb::StampSource::SkbRx,
        StampSource::Tc => pb::StampSource::Tc,
        StampSource::Map => pb::StampSource::Map,
        StampSource::Socket => pb::StampSource::Socket,
        StampSource::TxSoftware => pb::StampSource::TxSoftware,
        StampSource::App => pb::StampSource::App,
        StampSource::Hw => pb::StampSource::Hw,
        StampSource::Handoff => pb::StampSource::Handoff,
        StampSource::HwTx => pb::StampSource::HwTx,
        StampSource::Unspecified => pb::StampSource::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_tai_clock() {
        let w = Duration::from_secs(10);
        assert_eq!(window_index(0, w), 0);
        assert_eq!(window_index(9_999_999_999, w), 0);
        assert_eq!(window_index(10_000_000_000, w), 1);
    }

    #[test]
    fn timer_events_coalesce_by_five_percent_of_the_interval_up_to_50ms() {
        assert_eq!(coalesce(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(coalesce(Duration::from_secs(5)), Duration::from_millis(50));
        assert_eq!(
            coalesce(Duration::from_millis(100)),
            Duration::from_millis(5)
        );
        assert_eq!(
            coalesce(Duration::from_millis(10)),
            Duration::from_micros(500)
        );
    }
}
