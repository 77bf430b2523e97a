//! Judging one condition: every contender's RTTs against the capture truth.

use std::collections::BTreeMap;

use meshprobe_harness::capture::{Frames, Packet, decode_frame};
use meshprobe_harness::reference::{capture_times, capture_times_auth, wire_t1s};
use meshprobe_harness::scenario::compare;
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
    pub(super) mp_sent: u64,
    pub(super) ping_sent: u64,
    pub(super) seconds: f64,
}

pub(super) fn judge(
    load: Load,
    bursts: &[Burst],
    a: &Frames,
    b: &Frames,
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
        mp_sent: 0,
        ping_sent: 0,
        seconds,
    };
    for burst in bursts {
        match burst {
            Burst::Meshprobe { w, run } => r.add_meshprobe(w, run, &ua, &ub),
            Burst::MeshprobeAuth { w, run } => r.add_meshprobe_auth(w, run, &ua, &ub),
            Burst::Ping {
                w,
                id,
                sent,
                replies,
            } => r.add_ping(w, *id, *sent, replies, &ea, &eb),
            Burst::Sockperf { w, rows } => r.add_sockperf(w, rows, &ua, &ub),
        }
    }
    r
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
        let ag = compare(run, &times, &wire_t1s(&pa, STAMP_PORT));
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
    /// against A's and B's captures.
    fn add_sockperf(&mut self, w: &Window, rows: &[(i64, i64)], ua: &[Packet], ub: &[Packet]) {
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
                j.matched += 1;
                j.err.push((rx - tx) - t);
            }
        }
    }
}
