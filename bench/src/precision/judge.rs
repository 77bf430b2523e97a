//! Judging one condition: every contender's RTTs against the capture truth.

use std::collections::BTreeMap;

use meshprobe_harness::STAMP_PORT;
use meshprobe_harness::capture::{Frames, Packet, decode_frame};
use meshprobe_harness::reference::capture_times;
use meshprobe_harness::scenario::compare;

use super::bursts::{Burst, Window};
use super::parse::{Echo, Side, align, decode_echo, index, sockperf_seq, truth};
use super::{Load, MIN_ALIGN_SCORE, MP_APP, MP_NET, PING, SOCKPERF, SOCKPERF_PORT};

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
    pub(super) c: [Judged; 4],
    /// Capture truth RTT of meshprobe's probes, ns.
    pub(super) truth: Vec<i64>,
    /// meshprobe's capture-minus-stamp legs per matched probe.
    pub(super) legs: Vec<[i64; 4]>,
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
        t4_sources: BTreeMap::new(),
        capture_drops: a.dropped_by_kernel + b.dropped_by_kernel,
        stalls: 0,
        align: Vec::new(),
        mp_sent: 0,
        ping_sent: 0,
        seconds,
    };
    let in_w = |v: &[Packet], w: &Window, port: u16| -> Vec<Packet> {
        v.iter()
            .filter(|p| w.has(p.ts_ns) && (p.src.port() == port || p.dst.port() == port))
            .cloned()
            .collect()
    };
    for burst in bursts {
        match burst {
            Burst::Meshprobe { w, run } => {
                let pa = in_w(&ua, w, STAMP_PORT);
                let pb = in_w(&ub, w, STAMP_PORT);
                let times = capture_times(&pa, &pb, STAMP_PORT);
                let ag = compare(run, &times);
                r.mp_sent += ag.sent;
                r.c[MP_NET].reported += run.probes.len();
                r.c[MP_NET].matched += ag.matched;
                r.c[MP_NET].err.extend(&ag.signed_err);
                r.legs.extend(&ag.legs);
                r.stalls += ag.stalls().len();
                r.truth.extend(&ag.reference);
                r.c[MP_APP].reported += run.probes.len();
                r.c[MP_APP].matched += ag.matched;
                r.c[MP_APP].err.extend(&ag.app_signed_err);
                for (src, n) in ag.t4_sources {
                    *r.t4_sources.entry(src).or_default() += n;
                }
            }
            Burst::Ping {
                w,
                id,
                sent,
                replies,
            } => {
                r.ping_sent += sent;
                let side = |v: &[Echo]| {
                    index(
                        v.iter()
                            .filter(|e| w.has(e.ts) && e.id == *id)
                            .map(|e| (e.seq, e.reply, e.ts)),
                    )
                };
                let (sa, sb) = (side(&ea), side(&eb));
                let j = &mut r.c[PING];
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
            Burst::Sockperf { w, rows } => {
                let side = |v: &[Packet]| {
                    index(in_w(v, w, SOCKPERF_PORT).iter().filter_map(|p| {
                        let seq = sockperf_seq(&p.payload)?;
                        if p.dst.port() == SOCKPERF_PORT {
                            Some(((p.src.port(), seq), false, p.ts_ns))
                        } else {
                            Some(((p.dst.port(), seq), true, p.ts_ns))
                        }
                    }))
                };
                let (sa, sb) = (side(&ua), side(&ub));
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
                let j = &mut r.c[SOCKPERF];
                j.reported += rows.len();
                let Some((off, corr, second)) = align(rows, &raw) else {
                    r.align.push((rows.len(), f64::NAN, f64::NAN));
                    continue;
                };
                r.align.push((rows.len(), corr, second));
                if corr < MIN_ALIGN_SCORE {
                    continue;
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
    }
    r
}
