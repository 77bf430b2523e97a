//! Judging one condition: every contender's RTTs against the capture truth, and against the
//! tracepoint reference of the same packets.

use std::collections::BTreeMap;

use meshprobe_harness::capture::{Frames, Packet, decode_frame};
use meshprobe_harness::reference::{
    Times, capture_times, capture_times_auth, network_rtt, to_tai, trace_times, trace_times_by,
    wire_tc,
};
use meshprobe_harness::scenario::{ReferencePair, compare, compare_tai, tai_offset_ns};
use meshprobe_harness::trace::{Event, Site, TraceResult};
use meshprobe_harness::{PingRun, STAMP_PORT};

use super::bursts::{Burst, Window};
use super::parse::{Echo, Side, align, decode_echo, index, sockperf_seq, truth};
use super::{
    AUTH_PORT, CONTENDERS, Load, MIN_ALIGN_SCORE, MP_APP, MP_AUTH, MP_NET, PING, SOCKPERF,
    SOCKPERF_PORT,
};

// ---- judging one condition ------------------------------------------------------------------

#[derive(Debug, Default)]
pub(super) struct Judged {
    /// RTTs the contender reported.
    pub(super) reported: usize,
    /// Of those, matched to a capture truth.
    pub(super) matched: usize,
    /// Contender − truth per matched probe, ns.
    pub(super) err: Vec<i64>,
}

#[derive(Debug)]
pub(super) struct CondResult {
    pub(super) load: Load,
    pub(super) c: [Judged; CONTENDERS.len()],
    /// Capture truth RTT of meshprobe's probes, ns.
    pub(super) truth: Vec<i64>,
    /// meshprobe's capture-minus-stamp legs per matched probe.
    pub(super) legs: Vec<[i64; 4]>,
    /// The same, of meshprobe's authenticated-mode probes.
    pub(super) auth_legs: Vec<[i64; 4]>,
    pub(super) t4_sources: BTreeMap<String, usize>,
    pub(super) capture_drops: u64,
    /// meshprobe probes whose egress leg outlasted the burst's median app RTT: the CPU was
    /// taken away between the TC hook and the tap (see `meshprobe_harness::scenario::Stall`).
    pub(super) stalls: usize,
    /// Per sockperf burst: (rows, best correlation, second best).
    pub(super) align: Vec<(usize, f64, f64)>,
    /// Each contender against the tracepoint reference (`meshprobe-tracer`, run alongside
    /// the captures): driver hand-off and receive entry.
    pub(super) t: TraceJudged,
    /// The same contenders (not sockperf) in rounds of their own under the tracepoint
    /// reference alone, no capture: nothing clones their packets.
    pub(super) alone: TraceJudged,
    /// The two references on meshprobe's probes: trace − capture at each point, ns.
    pub(super) ref_legs: Vec<[i64; 4]>,
    pub(super) mp_sent: u64,
    pub(super) ping_sent: u64,
    pub(super) seconds: f64,
}

/// Contenders judged against the tracepoint reference.
#[derive(Debug, Default)]
pub(super) struct TraceJudged {
    pub(super) c: [Judged; CONTENDERS.len()],
    /// meshprobe's trace-minus-stamp legs per probe the trace matched.
    pub(super) legs: Vec<[i64; 4]>,
    /// Events the tracer printed, and lost to its full ring buffer.
    pub(super) events: usize,
    pub(super) lost: u64,
}

/// The tracepoint reference of a condition: its events and the two interfaces' sites.
pub(super) struct Traced<'a> {
    pub(super) result: &'a TraceResult,
    pub(super) a: Site,
    pub(super) b: Site,
}

pub(super) fn judge(
    load: Load,
    bursts: &[Burst],
    a: &Frames,
    b: &Frames,
    tr: &Traced,
    seconds: f64,
) -> CondResult {
    let (ua, ub) = (a.decode(decode_frame), b.decode(decode_frame));
    let (ea, eb) = (a.decode(decode_echo), b.decode(decode_echo));
    let mut r = CondResult {
        load,
        c: Default::default(),
        truth: Vec::new(),
        legs: Vec::new(),
        auth_legs: Vec::new(),
        t4_sources: BTreeMap::new(),
        capture_drops: a.dropped_by_kernel + b.dropped_by_kernel,
        stalls: 0,
        align: Vec::new(),
        t: TraceJudged::of(tr),
        alone: TraceJudged::default(),
        ref_legs: Vec::new(),
        mp_sent: 0,
        ping_sent: 0,
        seconds,
    };
    let tai = tai_offset_ns();
    for burst in bursts {
        match burst {
            Burst::Meshprobe { w, run } => {
                r.add_meshprobe(w, run, &ua, &ub);
                if let Some(tt) = r.t.add(burst, tr, tai) {
                    let pa = in_window(&ua, w, STAMP_PORT);
                    let pb = in_window(&ub, w, STAMP_PORT);
                    let captured = to_tai(&capture_times(&pa, &pb, STAMP_PORT), tai);
                    r.ref_legs.extend(ReferencePair::of(&tt, &captured).legs);
                }
            }
            Burst::MeshprobeAuth { w, run } => {
                r.add_meshprobe_auth(w, run, &ua, &ub);
                r.t.add(burst, tr, tai);
            }
            Burst::Ping {
                w,
                id,
                sent,
                replies,
            } => {
                r.add_ping(w, *id, *sent, replies, &ea, &eb);
                r.t.add(burst, tr, tai);
            }
            Burst::Sockperf { w, rows } => {
                let ev = in_window_traced(tr, w, tai);
                // (client port, low 32 bits of the sequence), as the tracer keys sockperf.
                let tt = trace_times_by(&ev, tr.a, tr.b, |e| match e.kind.as_str() {
                    "request" if e.dport == SOCKPERF_PORT => Some(((e.sport, e.seq), true)),
                    "reply" if e.sport == SOCKPERF_PORT => Some(((e.dport, e.seq), false)),
                    _ => None,
                });
                r.add_sockperf(w, rows, &ua, &ub, &tt);
            }
        }
    }
    r
}

impl TraceJudged {
    fn of(tr: &Traced) -> TraceJudged {
        TraceJudged {
            events: tr.result.events.len(),
            lost: tr.result.dropped(),
            ..Default::default()
        }
    }

    /// The bursts of rounds run under the tracepoint reference alone (not sockperf's: its
    /// rows are matched through the captures).
    pub(super) fn alone(bursts: &[Burst], tr: &Traced) -> TraceJudged {
        let mut j = TraceJudged::of(tr);
        let tai = tai_offset_ns();
        for b in bursts {
            j.add(b, tr, tai);
        }
        j
    }

    /// Judges a meshprobe, authenticated or ping burst against the tracer's events in its
    /// span; returns a meshprobe burst's trace times.
    fn add(&mut self, burst: &Burst, tr: &Traced, tai: i64) -> Option<Times> {
        match burst {
            Burst::Meshprobe { w, run } => {
                let ev = in_window_traced(tr, w, tai);
                let tt = trace_times(&ev, tr.a, tr.b, STAMP_PORT);
                let ag = compare_tai(run, &tt, &Default::default());
                self.c[MP_NET].add(run.probes.len(), ag.matched, &ag.signed_err);
                self.c[MP_APP].add(run.probes.len(), ag.matched, &ag.app_signed_err);
                self.legs.extend(&ag.legs);
                Some(tt)
            }
            Burst::MeshprobeAuth { w, run } => {
                let ev = in_window_traced(tr, w, tai);
                let ag = compare_tai(
                    run,
                    &trace_times(&ev, tr.a, tr.b, AUTH_PORT),
                    &Default::default(),
                );
                self.c[MP_AUTH].add(run.probes.len(), ag.matched, &ag.signed_err);
                None
            }
            Burst::Ping { w, id, replies, .. } => {
                let ev = in_window_traced(tr, w, tai);
                let tt = trace_times_by(&ev, tr.a, tr.b, |e| {
                    let request = e.kind == "echo_request";
                    ((request || e.kind == "echo_reply") && e.ssid == *id)
                        .then_some(((e.ssid, e.seq), request))
                });
                let err: Vec<i64> = replies
                    .iter()
                    .filter_map(|(seq, rtt)| Some(rtt - network_rtt(*tt.get(&(*id, *seq as u32))?)))
                    .collect();
                self.c[PING].add(replies.len(), err.len(), &err);
                None
            }
            Burst::Sockperf { .. } => None,
        }
    }
}

/// The tracer's events inside `w` (a CLOCK_REALTIME span; the events are CLOCK_TAI, `tai`
/// ahead).
fn in_window_traced(tr: &Traced, w: &Window, tai: i64) -> Vec<Event> {
    tr.result
        .events
        .iter()
        .filter(|e| w.has((e.tai_ns as i64 - tai) as u64))
        .cloned()
        .collect()
}

impl Judged {
    fn add(&mut self, reported: usize, matched: usize, err: &[i64]) {
        self.reported += reported;
        self.matched += matched;
        self.err.extend(err);
    }
}

/// The packets of `v` inside `w` to or from `port`.
fn in_window(v: &[Packet], w: &Window, port: u16) -> Vec<Packet> {
    v.iter()
        .filter(|p| w.has(p.ts_ns) && (p.src.port() == port || p.dst.port() == port))
        .cloned()
        .collect()
}

impl CondResult {
    /// A meshprobe burst: its network and app RTTs against the captures of A (`ua`) and B
    /// (`ub`), with its legs.
    fn add_meshprobe(&mut self, w: &Window, run: &PingRun, ua: &[Packet], ub: &[Packet]) {
        let pa = in_window(ua, w, STAMP_PORT);
        let pb = in_window(ub, w, STAMP_PORT);
        let times = capture_times(&pa, &pb, STAMP_PORT);
        let ag = compare(run, &times, &wire_tc(&pa, &pb, STAMP_PORT));
        self.mp_sent += ag.sent;
        self.c[MP_NET].reported += run.probes.len();
        self.c[MP_NET].matched += ag.matched;
        self.c[MP_NET].err.extend(&ag.signed_err);
        self.legs.extend(&ag.legs);
        self.stalls += ag.stalls().len();
        self.truth.extend(&ag.reference);
        self.c[MP_APP].reported += run.probes.len();
        self.c[MP_APP].matched += ag.matched;
        self.c[MP_APP].err.extend(&ag.app_signed_err);
        for (src, n) in ag.t4_sources {
            *self.t4_sources.entry(src).or_default() += n;
        }
    }

    /// An authenticated-mode burst: its network RTTs and legs against the same captures
    /// (its own port, the authenticated layout's offsets).
    fn add_meshprobe_auth(&mut self, w: &Window, run: &PingRun, ua: &[Packet], ub: &[Packet]) {
        let pa = in_window(ua, w, AUTH_PORT);
        let pb = in_window(ub, w, AUTH_PORT);
        let times = capture_times_auth(&pa, &pb, AUTH_PORT);
        // The authenticated request carries the userspace T1 it was signed with: no TC T1.
        let ag = compare(run, &times, &Default::default());
        let j = &mut self.c[MP_AUTH];
        j.reported += run.probes.len();
        j.matched += ag.matched;
        j.err.extend(&ag.signed_err);
        self.auth_legs.extend(&ag.legs);
    }

    /// A ping burst (ICMP id `id`): its replies against the echoes captured in A and B.
    fn add_ping(
        &mut self,
        w: &Window,
        id: u16,
        sent: u64,
        replies: &[(u16, i64)],
        ea: &[Echo],
        eb: &[Echo],
    ) {
        self.ping_sent += sent;
        let side = |v: &[Echo]| {
            index(
                v.iter()
                    .filter(|e| w.has(e.ts) && e.id == id)
                    .map(|e| (e.seq, e.reply, e.ts)),
            )
        };
        let (sa, sb) = (side(ea), side(eb));
        let j = &mut self.c[PING];
        j.reported += replies.len();
        for (seq, rtt) in replies {
            if let (Some(x), Some(y)) = (sa.get(seq), sb.get(seq))
                && let Some(t) = truth(x, y)
            {
                j.matched += 1;
                j.err.push(rtt - t);
            }
        }
    }

    /// A sockperf burst: its logged rows aligned with the messages captured in A, judged
    /// against A's and B's captures, and the same rows against the tracepoint reference `tt`
    /// (keyed by client port and the sequence's low 32 bits).
    fn add_sockperf(
        &mut self,
        w: &Window,
        rows: &[(i64, i64)],
        ua: &[Packet],
        ub: &[Packet],
        tt: &Times,
    ) {
        let side = |v: &[Packet]| {
            index(in_window(v, w, SOCKPERF_PORT).iter().filter_map(|p| {
                let seq = sockperf_seq(&p.payload)?;
                if p.dst.port() == SOCKPERF_PORT {
                    Some(((p.src.port(), seq), false, p.ts_ns))
                } else {
                    Some(((p.dst.port(), seq), true, p.ts_ns))
                }
            }))
        };
        let (sa, sb) = (side(ua), side(ub));
        // The messages A saw answered, in (client port, sequence) order.
        let mut msgs: Vec<((u16, u64), Side)> = sa
            .iter()
            .filter(|(_, s)| s.request.is_some() && s.reply.is_some())
            .map(|(k, s)| (*k, *s))
            .collect();
        msgs.sort_by_key(|(k, _)| *k);
        let raw: Vec<(i64, i64)> = msgs
            .iter()
            .map(|(_, s)| (s.request.unwrap_or(0) as i64, s.reply.unwrap_or(0) as i64))
            .collect();
        let j = &mut self.c[SOCKPERF];
        j.reported += rows.len();
        self.t.c[SOCKPERF].reported += rows.len();
        let Some((off, corr, second)) = align(rows, &raw) else {
            self.align.push((rows.len(), f64::NAN, f64::NAN));
            return;
        };
        self.align.push((rows.len(), corr, second));
        if corr < MIN_ALIGN_SCORE {
            return;
        }
        for (i, (tx, rx)) in rows.iter().enumerate() {
            let (k, sa_k) = &msgs[off + i];
            if let Some(t) = sb.get(k).and_then(|y| truth(sa_k, y)) {
                self.c[SOCKPERF].matched += 1;
                self.c[SOCKPERF].err.push((rx - tx) - t);
            }
            if let Some(&t) = tt.get(&(k.0, k.1 as u32)) {
                self.t.c[SOCKPERF].matched += 1;
                self.t.c[SOCKPERF].err.push((rx - tx) - network_rtt(t));
            }
        }
    }
}
