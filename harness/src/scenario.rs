//! Measurement routines shared by several integration tests.

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::STAMP_PORT;
use crate::capture::Capture;
use crate::load::{CpuStat, ticks_ms};
use crate::meshprobe::{Meshprobe, PingRun, Probe};
use crate::reference::{Times, WireTc, capture_times, network_rtt, to_tai, trace_times, wire_tc};
use crate::stats::{percentile, us};
use crate::topo::{Family, TwoHosts};
use crate::trace::{Site, TraceResult};

/// Generous bound on a `ping -c COUNT -i INTERVAL -W TIMEOUT` run (a hang guard, not a
/// judged figure: stretched by `MESHPROBE_TEST_TIME_SCALE` on an emulated guest, where a
/// loaded 2-vCPU TCG machine cannot keep a 1 ms pace).
pub fn ping_timeout(count: u32, interval: Duration, timeout: Duration) -> Duration {
    crate::env::scaled(interval * count * 3 + timeout + Duration::from_secs(15))
}

/// meshprobe's per-probe network RTT against the capture reference.
#[derive(Debug)]
pub struct Agreement {
    pub sent: u64,
    pub probes: usize,
    /// Probes with a reference RTT from both captures.
    pub matched: usize,
    /// |meshprobe − reference| per matched probe, ns.
    pub abs_err: Vec<i64>,
    /// Signed (meshprobe − reference) per matched probe, ns.
    pub signed_err: Vec<i64>,
    /// |meshprobe − reference| per matched probe with the TC T1 and T3 its packets carried in
    /// place of driver hand-off stamps, ns (`abs_err` for a probe without them). The capture tap sits
    /// between TC and the hand-off and delays the hand-off by its own work (the clone, the
    /// reader's wake-up: measured 1.9 µs TC → hand-off without captures, 14 µs with them, p50,
    /// on this kind of machine), so against the capture it is the TC stamps that are judged;
    /// the hand-off stamps are judged by their order here and against the non-perturbing
    /// tracepoint reference.
    pub tc_abs_err: Vec<i64>,
    /// Signed (meshprobe's app RTT − reference) per matched probe, ns.
    pub app_signed_err: Vec<i64>,
    pub reference: Vec<i64>,
    pub capture_drops: u64,
    pub t4_sources: Vec<(String, usize)>,
    pub t1_sources: Vec<(String, usize)>,
    /// Per matched probe: its T1 is the driver hand-off time (`t1_source` "handoff"), taken
    /// after the capture tap; and (T1 − the TC T1 its request carried on the wire), ns, where
    /// the capture has the request's octets.
    pub handoff: Vec<(bool, Option<i64>)>,
    /// The same for T3: the reflector's hand-off time through the two-step (`t3_source`
    /// "handoff"), and (T3 − the TC T3 its reply carried on the wire).
    pub handoff_t3: Vec<(bool, Option<i64>)>,
    /// The reference is the tracepoint reference, whose egress point is the driver hand-off
    /// itself: a hand-off stamp and the reference's are taken by two programs on one
    /// tracepoint, in the order they were attached, so their order says nothing.
    pub at_handoff: bool,
    /// Per matched probe, capture time minus meshprobe's stamp at the same point, ns:
    /// `[A out − T1, B in − T2, B out − T3, A in − T4]` (captures converted to TAI).
    /// meshprobe − reference = leg0 + leg2 − leg1 − leg3.
    pub legs: Vec<[i64; 4]>,
    /// Per matched probe, its sequence number and T1 (TAI ns), for locating stalls.
    pub seq_t1: Vec<(u32, u64)>,
    /// meshprobe's app RTT (socket to socket) per matched probe, ns.
    pub app_rtt: Vec<i64>,
    /// CPU time the hypervisor took from this machine's vCPUs during the run (/proc/stat
    /// steal, all CPUs), ms; `None` where /proc/stat cannot be read.
    pub steal_ms: Option<u64>,
}

/// A matched probe whose egress leg (TC egress stamp → capture tap) took longer than the
/// median socket-to-socket round trip of the same run: no code between the hook and the tap
/// takes that long, so the sending CPU was taken away in between (a descheduled vCPU, an
/// interrupt storm). The error it causes is the reference's, not the stamp's.
#[derive(Clone, Debug)]
pub struct Stall {
    pub seq: u32,
    /// `"A out-T1"` or `"B out-T3"`.
    pub leg: &'static str,
    pub ns: i64,
    /// How late the next probe's T1 came after this probe's, ns.
    pub next_t1_gap: Option<i64>,
}

/// Share of probes the capture reference must match.
pub const MIN_MATCHED: f64 = 0.99;
/// Share of matched probes whose ingress legs must be exact. Not all: a probe whose reply came
/// without room for the in-band T4 takes T4 elsewhere (the t4 sources line says which).
pub const MIN_INGRESS_EXACT: f64 = 0.99;
/// meshprobe's network-RTT error against the socket-level error of the same probes: the p50 of
/// the first at most this fraction of the p50 of the second, and likewise at p99. The egress
/// legs (TC → tap) that make meshprobe's error are a few calls of the path the socket-level
/// error spans (syscalls, the UDP/IP stack, wake-ups, the reflector's turnaround), so the
/// ratio holds on a slow machine as on a fast one.
pub const MAX_ERROR_RATIO: f64 = 0.1;

impl Agreement {
    /// The kernel stamps agree with the capture reference, judged by what holds at any machine
    /// speed: at least `count` probes sent and (nearly) all matched; T2 and T4 the receive
    /// stamps the capture reports (ingress legs exact); TC stamps before the capture tap, a
    /// driver hand-off T1 after it and after the TC T1 its request carried
    /// ([`Agreement::egress_negative`]); meshprobe's error (with the TC T1 and T3, see
    /// [`Agreement::tc_abs_err`]) far below the socket-level error of the same
    /// probes ([`MAX_ERROR_RATIO`]).
    pub fn check_kernel_stamps(&self, label: &str, count: u32) -> Result<()> {
        let a = self;
        ensure!(a.sent >= count as u64, "{label}: sent {} < {count}", a.sent);
        ensure!(
            a.matched_frac() >= MIN_MATCHED,
            "{label}: only {} of {} probes matched a reference RTT ({} probe lines, capture \
             drops {})",
            a.matched,
            a.sent,
            a.probes,
            a.capture_drops
        );
        let exact = a.ingress_exact();
        ensure!(
            exact as f64 >= MIN_INGRESS_EXACT * a.matched as f64,
            "{label}: ingress legs exact for only {exact} of {} probes: {}",
            a.matched,
            a.legs_report()
        );
        ensure!(
            a.egress_negative() == 0,
            "{label}: {} probes with an egress stamp out of the kernel's order (TC, capture \
             tap, driver hand-off): {}",
            a.egress_negative(),
            a.legs_report()
        );
        let app = a.app_abs_err();
        for pct in [50.0, 99.0] {
            let net = a.p_tc(pct);
            let sock = percentile(&app, pct).unwrap_or(0);
            ensure!(
                net as f64 <= MAX_ERROR_RATIO * sock as f64,
                "{label}: p{pct} |error| (TC T1, T3) {} is not below {MAX_ERROR_RATIO} × the socket-level \
                 p{pct} |error| {} of the same probes: {}",
                us(net),
                us(sock),
                a.report(label)
            );
        }
        Ok(())
    }
}

impl Agreement {
    pub fn matched_frac(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.matched as f64 / self.sent as f64
        }
    }

    pub fn p(&self, pct: f64) -> i64 {
        percentile(&self.abs_err, pct).unwrap_or(i64::MAX)
    }

    /// [`Agreement::p`] of the error with the TC T1 and T3 ([`Agreement::tc_abs_err`]).
    pub fn p_tc(&self, pct: f64) -> i64 {
        percentile(&self.tc_abs_err, pct).unwrap_or(i64::MAX)
    }

    /// p50/p99 of each capture-minus-stamp leg, for diagnosing a disagreement.
    pub fn legs_report(&self) -> String {
        let names = ["A out-T1", "B in-T2", "B out-T3", "A in-T4"];
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v: Vec<i64> = self.legs.iter().map(|l| l[i]).collect();
                format!(
                    "{n} p50 {} p99 {}",
                    us(percentile(&v, 50.0).unwrap_or(0)),
                    us(percentile(&v, 99.0).unwrap_or(0))
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Signed error of the app RTT (socket level) of the same probes, ns.
    pub fn app_abs_err(&self) -> Vec<i64> {
        self.app_signed_err.iter().map(|e| e.abs()).collect()
    }

    /// Matched probes whose ingress legs are both exact (T2 and T4 are the receive stamps the
    /// capture reports).
    pub fn ingress_exact(&self) -> usize {
        self.legs.iter().filter(|l| l[1] == 0 && l[3] == 0).count()
    }

    /// Matched probes whose egress stamps are out of the kernel's egress order: TC, then the
    /// capture tap, then the driver hand-off. A TC stamp after the tap; a hand-off stamp
    /// before the tap, or before the TC stamp its packet carried. One rule for T1 and T3.
    pub fn egress_negative(&self) -> usize {
        let wrong = |leg: i64, (handoff, after_tc): (bool, Option<i64>)| {
            if handoff {
                (leg > 0 && !self.at_handoff) || after_tc.is_some_and(|d| d < 0)
            } else {
                leg < 0
            }
        };
        self.legs
            .iter()
            .zip(self.handoff.iter().zip(&self.handoff_t3))
            .filter(|(l, (t1, t3))| wrong(l[0], **t1) || wrong(l[2], **t3))
            .count()
    }

    /// Matched probes whose T1 is the driver hand-off time.
    pub fn handoff_t1(&self) -> usize {
        self.handoff.iter().filter(|(h, _)| *h).count()
    }

    /// Probes whose egress leg outlasted the run's median app RTT (see [`Stall`]).
    pub fn stalls(&self) -> Vec<Stall> {
        let Some(bound) = percentile(&self.app_rtt, 50.0) else {
            return Vec::new();
        };
        let mut next: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for &(seq, t1) in &self.seq_t1 {
            next.insert(seq, t1);
        }
        let mut out = Vec::new();
        for (l, &(seq, t1)) in self.legs.iter().zip(&self.seq_t1) {
            for (i, name) in [(0, "A out-T1"), (2, "B out-T3")] {
                if l[i] > bound {
                    out.push(Stall {
                        seq,
                        leg: name,
                        ns: l[i],
                        next_t1_gap: next.get(&(seq + 1)).map(|&n| n as i64 - t1 as i64),
                    });
                }
            }
        }
        out
    }

    /// One line per stall, and the steal time of the run.
    pub fn stalls_report(&self) -> String {
        let st = self.stalls();
        let steal = self
            .steal_ms
            .map_or_else(|| "unknown".to_string(), |m| format!("{m} ms"));
        let mut s = format!(
            "stalls (egress leg > median app RTT {}): {} of {} probes; vCPU steal during the run {steal}",
            us(percentile(&self.app_rtt, 50.0).unwrap_or(0)),
            st.len(),
            self.matched
        );
        for x in &st {
            s.push_str(&format!(
                "\n    seq {} {} {} (next probe's T1 {} later)",
                x.seq,
                x.leg,
                us(x.ns),
                x.next_t1_gap.map_or_else(|| "-".to_string(), us)
            ));
        }
        s
    }

    pub fn report(&self, label: &str) -> String {
        format!(
            "{label}: sent {} probes {} matched {} ({:.2}%), |error| p50 {} p99 {} max {}, \
             signed error p50 {}, with the TC T1/T3 |error| p50 {} p99 {}, app RTT |error| p50 {} p99 {}, reference RTT p50 {}, \
             t1 sources {:?}, T3 through the follow-up {} of {}, t4 sources {:?}, capture drops {}",
            self.sent,
            self.probes,
            self.matched,
            100.0 * self.matched_frac(),
            us(self.p(50.0)),
            us(self.p(99.0)),
            us(self.p(100.0)),
            us(percentile(&self.signed_err, 50.0).unwrap_or(0)),
            us(percentile(&self.tc_abs_err, 50.0).unwrap_or(0)),
            us(percentile(&self.tc_abs_err, 99.0).unwrap_or(0)),
            us(percentile(&self.app_abs_err(), 50.0).unwrap_or(0)),
            us(percentile(&self.app_abs_err(), 99.0).unwrap_or(0)),
            us(percentile(&self.reference, 50.0).unwrap_or(0)),
            self.t1_sources,
            self.handoff_t3.iter().filter(|(h, _)| *h).count(),
            self.matched,
            self.t4_sources,
            self.capture_drops
        )
    }
}

/// CLOCK_TAI − CLOCK_REALTIME, ns (whole seconds: the kernel's TAI offset).
pub fn tai_offset_ns() -> i64 {
    use nix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::CLOCK_TAI).expect("CLOCK_TAI");
    let r = clock_gettime(ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    let d = (t.tv_sec() - r.tv_sec()) * 1_000_000_000 + (t.tv_nsec() - r.tv_nsec());
    (d as f64 / 1e9).round() as i64 * 1_000_000_000
}

/// Pairs probes with the capture reference by (SSID, sequence).
pub fn compare(run: &PingRun, times: &Times, wire: &WireTc) -> Agreement {
    compare_on(run, times, wire, tai_offset_ns())
}

/// [`compare`] with a reference on CLOCK_TAI (the tracepoint reference's, or a capture's
/// through [`to_tai`]).
pub fn compare_tai(run: &PingRun, times: &Times, wire: &WireTc) -> Agreement {
    Agreement {
        at_handoff: true,
        ..compare_on(run, times, wire, 0)
    }
}

/// Pairs probes with a reference by (SSID, sequence); `tai` is CLOCK_TAI − the reference's
/// clock (meshprobe's stamps are TAI).
fn compare_on(run: &PingRun, times: &Times, wire: &WireTc, tai: i64) -> Agreement {
    let mut a = Agreement {
        sent: run.summaries.first().map(|s| s.sent).unwrap_or(0),
        probes: run.probes.len(),
        matched: 0,
        abs_err: Vec::new(),
        tc_abs_err: Vec::new(),
        signed_err: Vec::new(),
        app_signed_err: Vec::new(),
        reference: Vec::new(),
        capture_drops: 0,
        t4_sources: Vec::new(),
        t1_sources: Vec::new(),
        handoff: Vec::new(),
        handoff_t3: Vec::new(),
        at_handoff: false,
        legs: Vec::new(),
        seq_t1: Vec::new(),
        app_rtt: Vec::new(),
        steal_ms: None,
    };
    let mut seen = std::collections::HashSet::new();
    for p in &run.probes {
        let k = (p.ssid as u16, p.seq);
        if !seen.insert(k) {
            continue;
        }
        if let Some(&[a_out, b_in, b_out, a_in]) = times.get(&k) {
            let t = network_rtt([a_out, b_in, b_out, a_in]);
            let leg = |cap: u64, stamp: u64| cap as i64 + tai - stamp as i64;
            a.legs.push([
                leg(a_out, p.t1_ns),
                leg(b_in, p.t2_ns),
                leg(b_out, p.t3_ns),
                leg(a_in, p.t4_ns),
            ]);
            let on_wire = wire.get(&k).copied().unwrap_or_default();
            let handoff = p.t1_source.as_deref() == Some("handoff");
            let after_tc = on_wire[0].map(|w| p.t1_ns as i64 - w as i64);
            a.handoff.push((handoff, after_tc));
            let handoff3 = p.t3_source.as_deref() == Some("handoff");
            let after_tc3 = on_wire[1].map(|w| p.t3_ns as i64 - w as i64);
            a.handoff_t3.push((handoff3, after_tc3));
            // The RTT with the TC T1 and T3: longer by each (hand-off − TC).
            let to_tc = [(handoff, after_tc), (handoff3, after_tc3)]
                .iter()
                .filter(|(h, _)| *h)
                .map(|(_, d)| d.unwrap_or(0))
                .sum::<i64>();
            a.tc_abs_err.push((p.network_rtt_ns + to_tc - t).abs());
            a.matched += 1;
            a.signed_err.push(p.network_rtt_ns - t);
            a.abs_err.push((p.network_rtt_ns - t).abs());
            a.app_signed_err.push(p.app_rtt_ns - t);
            a.app_rtt.push(p.app_rtt_ns);
            a.seq_t1.push((p.seq, p.t1_ns));
            a.reference.push(t);
        }
    }
    let mut srcs: Vec<(String, usize)> = Vec::new();
    for p in &run.probes {
        match srcs.iter_mut().find(|(s, _)| *s == p.t4_source) {
            Some((_, n)) => *n += 1,
            None => srcs.push((p.t4_source.clone(), 1)),
        }
    }
    a.t4_sources = srcs;
    let mut srcs: Vec<(String, usize)> = Vec::new();
    for p in &run.probes {
        let s = p.t1_source.clone().unwrap_or_default();
        match srcs.iter_mut().find(|(x, _)| *x == s) {
            Some((_, n)) => *n += 1,
            None => srcs.push((s, 1)),
        }
    }
    a.t1_sources = srcs;
    a
}

/// Test 1 and 8: reflector in B, sender in A, tcpdump on both veth ends; per-probe comparison
/// of `network_rtt_ns` with the capture reference.
pub fn agreement(
    mp: &Meshprobe,
    t: &TwoHosts,
    f: Family,
    count: u32,
    interval: &str,
) -> Result<Agreement> {
    Ok(agreement_with(mp, t, f, count, interval, &[])?.agreement)
}

/// An [`agreement`] run with what meshprobe printed.
pub struct AgreementRun {
    pub agreement: Agreement,
    pub ping: PingRun,
    /// The reflector's ready line and its `reflector_summary`.
    pub reflector_ready: serde_json::Value,
    pub reflector_summary: serde_json::Value,
    /// With [`agreement_traced`]: the tracepoint reference of the same probes.
    pub traced: Option<Traced>,
}

/// The tracepoint reference run alongside the captures ([`agreement_traced`]).
#[derive(Debug)]
pub struct Traced {
    /// meshprobe against the tracepoint reference (legs: trace − stamp).
    pub agreement: Agreement,
    /// The two references on the probes both matched, CLOCK_TAI.
    pub both: ReferencePair,
    /// The tracer's events, counters and tracepoints.
    pub result: TraceResult,
}

/// Two references' instants of the same probes (both CLOCK_TAI): per probe the trace minus
/// the capture at each point, and each reference's RTT.
#[derive(Debug, Default)]
pub struct ReferencePair {
    /// Probes of the capture reference.
    pub captured: usize,
    /// Probes of the tracepoint reference.
    pub traced: usize,
    /// `[A out, B in, B out, A in]` trace − capture, ns, per probe in both.
    pub legs: Vec<[i64; 4]>,
    pub capture_rtt: Vec<i64>,
    pub trace_rtt: Vec<i64>,
}

/// Names of [`ReferencePair::legs`].
pub const LEG_NAMES: [&str; 4] = ["A out", "B in", "B out", "A in"];

impl ReferencePair {
    /// `trace` against `capture`, both CLOCK_TAI.
    pub fn of(trace: &Times, capture: &Times) -> ReferencePair {
        let mut p = ReferencePair {
            captured: capture.len(),
            traced: trace.len(),
            ..Default::default()
        };
        let mut keys: Vec<_> = trace.keys().filter(|k| capture.contains_key(k)).collect();
        keys.sort();
        for k in keys {
            let (t, c) = (trace[k], capture[k]);
            p.legs
                .push(std::array::from_fn(|i| t[i] as i64 - c[i] as i64));
            p.trace_rtt.push(network_rtt(t));
            p.capture_rtt.push(network_rtt(c));
        }
        p
    }

    /// One leg (index into [`LEG_NAMES`]) over the probes.
    pub fn leg(&self, i: usize) -> Vec<i64> {
        self.legs.iter().map(|l| l[i]).collect()
    }

    /// Trace RTT − capture RTT per probe.
    pub fn rtt_diff(&self) -> Vec<i64> {
        self.trace_rtt
            .iter()
            .zip(&self.capture_rtt)
            .map(|(t, c)| t - c)
            .collect()
    }

    /// p50/p99 of each trace − capture leg and of the RTT difference.
    pub fn report(&self) -> String {
        let pp = |v: &[i64]| {
            format!(
                "p50 {} p99 {}",
                us(percentile(v, 50.0).unwrap_or(0)),
                us(percentile(v, 99.0).unwrap_or(0))
            )
        };
        let mut s = format!(
            "trace − capture over {} probes (capture {}, trace {}):",
            self.legs.len(),
            self.captured,
            self.traced
        );
        for (i, n) in LEG_NAMES.iter().enumerate() {
            s.push_str(&format!(" {n} {};", pp(&self.leg(i))));
        }
        s.push_str(&format!(" RTT {}", pp(&self.rtt_diff())));
        s
    }
}

/// [`agreement`] with `args` given to both the reflector and the sender (e.g.
/// `--kernel-clock monotonic`).
pub fn agreement_with(
    mp: &Meshprobe,
    t: &TwoHosts,
    f: Family,
    count: u32,
    interval: &str,
    args: &[&str],
) -> Result<AgreementRun> {
    agreement_run(mp, t, f, count, interval, args, Refs::Capture)
}

/// The references of an [`agreement_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refs {
    /// tcpdump on both veth ends.
    Capture,
    /// The captures and the tracepoint reference.
    Both,
    /// The tracepoint reference alone: nothing clones the probes on their way (the run's
    /// capture agreement is empty).
    Trace,
}

/// [`agreement_with`], with the tracepoint reference (`meshprobe-tracer`) running alongside
/// the captures: [`AgreementRun::traced`].
pub fn agreement_traced(
    mp: &Meshprobe,
    t: &TwoHosts,
    f: Family,
    count: u32,
    interval: &str,
    args: &[&str],
) -> Result<AgreementRun> {
    agreement_run(mp, t, f, count, interval, args, Refs::Both)
}

/// An agreement run against the references `refs`.
pub fn agreement_run(
    mp: &Meshprobe,
    t: &TwoHosts,
    f: Family,
    count: u32,
    interval: &str,
    args: &[&str],
    refs: Refs,
) -> Result<AgreementRun> {
    let refl = mp.reflect(&t.b, args)?;
    let reflector_ready = refl.ready.clone();
    // The tracer after the reflector and before the sender: on the shared tracepoint its
    // program runs after the reflector's hand-off program and before the sender's, so its
    // run time delays T1 against the trace and the trace against T3, which cancel in the
    // RTT (BENCHMARKS.md, issue 18: run first, it delays both and the errors add).
    let tracer = (refs != Refs::Capture)
        .then(|| mp.tracer(&[STAMP_PORT]))
        .transpose()?;
    let capture = refs != Refs::Trace;
    let ca = capture
        .then(|| Capture::start(&t.a, TwoHosts::A_IF, STAMP_PORT))
        .transpose()?;
    let cb = capture
        .then(|| Capture::start(&t.b, TwoHosts::B_IF, STAMP_PORT))
        .transpose()?;
    let peer = t.b_addr(f).to_string();
    let iv: Duration = parse_dur(interval)?;
    let steal0 = CpuStat::now();
    let count_s = count.to_string();
    let mut ping_args = vec![peer.as_str(), "-c", &count_s, "-i", interval, "-W", "500ms"];
    ping_args.extend_from_slice(args);
    let run = mp.ping(
        &t.a,
        &ping_args,
        ping_timeout(count, iv, Duration::from_millis(500)),
    )?;
    let steal1 = CpuStat::now();
    let a = ca.map(Capture::stop).transpose()?;
    let b = cb.map(Capture::stop).transpose()?;
    let traced = tracer.map(|tr| tr.stop()).transpose()?;
    let reflector_summary = refl.stop()?;
    ensure!(
        run.summaries.len() == 1,
        "expected one summary, got {}; stderr:\n{}",
        run.summaries.len(),
        run.stderr
    );
    let (times, drops, wire) = match (&a, &b) {
        (Some(a), Some(b)) => (
            capture_times(&a.packets, &b.packets, STAMP_PORT),
            a.dropped_by_kernel + b.dropped_by_kernel,
            wire_tc(&a.packets, &b.packets, STAMP_PORT),
        ),
        _ => (Times::new(), 0, WireTc::new()),
    };
    let mut ag = compare(&run, &times, &wire);
    ag.capture_drops = drops;
    ag.steal_ms = steal0
        .zip(steal1)
        .map(|(s0, s1)| ticks_ms(s1.steal.saturating_sub(s0.steal)));
    let traced = match traced {
        None => None,
        Some(result) => {
            let (sa, sb) = (
                Site::of(&t.a, TwoHosts::A_IF)?,
                Site::of(&t.b, TwoHosts::B_IF)?,
            );
            let tt = trace_times(&result.events, sa, sb, STAMP_PORT);
            let mut agreement = compare_tai(&run, &tt, &wire);
            agreement.steal_ms = ag.steal_ms;
            agreement.capture_drops = result.dropped();
            Some(Traced {
                agreement,
                both: ReferencePair::of(&tt, &to_tai(&times, tai_offset_ns())),
                result,
            })
        }
    };
    Ok(AgreementRun {
        agreement: ag,
        ping: run,
        reflector_ready,
        reflector_summary,
        traced,
    })
}

/// A humantime-like duration: `1ms`, `500us`, `2s`, `250ns`.
pub fn parse_dur(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse()?;
    Ok(match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        _ => anyhow::bail!("bad duration {s}"),
    })
}

/// Median of a field over probes.
pub fn median_of(probes: &[Probe], f: impl Fn(&Probe) -> i64) -> Option<i64> {
    let v: Vec<i64> = probes.iter().map(f).collect();
    percentile(&v, 50.0)
}
