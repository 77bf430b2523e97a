//! Prometheus metrics of the agent: self-metrics, eBPF counters read at scrape time, probe
//! counts and RTT per (src_zone, dst_zone), and the worst K peers of the last window. Series
//! stay bounded at any cluster size: never one per peer for every peer.
use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::probe::{Stamping, session::Rejection};

/// Longest label value, in bytes: node ids and zones come from the network (ZooKeeper).
pub const MAX_LABEL_LEN: usize = 128;

/// `s` cut to [`MAX_LABEL_LEN`] bytes at a character boundary.
pub fn label_value(s: &str) -> String {
    let mut end = s.len().min(MAX_LABEL_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The series of one zone pair: this agent's zone to a peer's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZonePairLabel {
    pub src_zone: String,
    pub dst_zone: String,
}

/// A peer among the worst K.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorstPeerLabel {
    pub peer: String,
    pub zone: String,
}

/// `reason` of a rejected reply: one of `Rejection::ALL`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One peer's last window, as the worst-K ranking sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerWindow {
    pub peer: String,
    pub zone: String,
    pub loss_ratio: f64,
    /// None without an answered probe.
    pub rtt_p99_ns: Option<i64>,
}

/// The `k` worst peers, worst first: highest loss ratio, then highest p99 RTT (a peer without
/// an answered probe ranks below one with), then node id so the choice is deterministic.
pub fn worst_peers(mut cands: Vec<PeerWindow>, k: usize) -> Vec<PeerWindow> {
    cands.sort_by(|a, b| {
        b.loss_ratio
            .partial_cmp(&a.loss_ratio)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b.rtt_p99_ns.cmp(&a.rtt_p99_ns))
            .then_with(|| a.peer.cmp(&b.peer))
    });
    cands.truncate(k);
    cands
}

fn rtt_histogram() -> Histogram {
    // 1 µs .. ~1 s in seconds, doubling.
    Histogram::new(exponential_buckets(1e-6, 2.0, 21))
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// Counters and the bounded per-zone-pair and worst-peer series updated by the prober.
pub struct ProbeMetrics {
    pub sent: Counter,
    pub received: Counter,
    pub lost: Counter,
    pub duplicates: Counter,
    pub late: Counter,
    pub unmatched: Counter,
    rejected: Family<ReasonLabel, Counter>,
    /// Samples whose T1 is the reflector's echo (kernel mode, no record of ours left).
    pub t1_unrecorded: Counter,
    /// Two-step T3: follow-up corrections applied, and follow-ups not used (malformed, or a
    /// correction that is not believable).
    pub follow_up_applied: Counter,
    pub follow_up_ignored: Counter,
    /// Authenticated mode `optional`: replies accepted without authentication.
    pub unauthenticated: Counter,
    pub send_errors: Counter,
    pub peers: Gauge,
    pub windows: Counter,
    pub zone_windows: Counter,
    zone_rtt: Family<ZonePairLabel, Histogram, fn() -> Histogram>,
    zone_sent: Family<ZonePairLabel, Counter>,
    zone_lost: Family<ZonePairLabel, Counter>,
    zone_received: Family<ZonePairLabel, Counter>,
    /// Our zone (bounded), the src_zone of every zone pair.
    src_zone: String,
    /// Peers per dst zone: a zone's series go when its last peer does.
    zone_refs: Mutex<HashMap<String, usize>>,
    worst_k: usize,
    worst_loss: Family<WorstPeerLabel, GaugeF64>,
    worst_p99: Family<WorstPeerLabel, GaugeF64>,
    /// The labels exported by the last window close.
    worst: Mutex<HashSet<WorstPeerLabel>>,
}

impl ProbeMetrics {
    /// `src_zone`: this agent's zone; `worst_k`: peers exported by name (0: none).
    pub fn new(registry: &mut Registry, src_zone: &str, worst_k: usize) -> Arc<Self> {
        let m = Arc::new(Self {
            sent: Counter::default(),
            received: Counter::default(),
            lost: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            unmatched: Counter::default(),
            rejected: Family::default(),
            t1_unrecorded: Counter::default(),
            follow_up_applied: Counter::default(),
            follow_up_ignored: Counter::default(),
            unauthenticated: Counter::default(),
            send_errors: Counter::default(),
            peers: Gauge::default(),
            windows: Counter::default(),
            zone_windows: Counter::default(),
            zone_rtt: Family::new_with_constructor(rtt_histogram),
            zone_sent: Family::default(),
            zone_lost: Family::default(),
            zone_received: Family::default(),
            src_zone: label_value(src_zone),
            zone_refs: Mutex::new(HashMap::new()),
            worst_k,
            worst_loss: Family::default(),
            worst_p99: Family::default(),
            worst: Mutex::new(HashSet::new()),
        });
        let r = registry;
        r.register("meshprobe_probes_sent", "Probes sent", m.sent.clone());
        r.register(
            "meshprobe_probes_received",
            "Replies matched to a probe",
            m.received.clone(),
        );
        r.register(
            "meshprobe_probes_lost",
            "Probes without a reply before the timeout",
            m.lost.clone(),
        );
        r.register(
            "meshprobe_probes_duplicate",
            "Duplicate replies",
            m.duplicates.clone(),
        );
        r.register(
            "meshprobe_probes_late",
            "Replies after their timeout",
            m.late.clone(),
        );
        r.register(
            "meshprobe_replies_unmatched",
            "Packets on the sender socket that did not count (sum of replies_rejected)",
            m.unmatched.clone(),
        );
        r.register(
            "meshprobe_replies_rejected",
            "Packets on the sender socket that did not count, by reason",
            m.rejected.clone(),
        );
        // Every reason is exported from the start, so a rate over it needs no first event.
        for reason in Rejection::ALL {
            let _ = m.rejected.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        r.register(
            "meshprobe_replies_t1_unrecorded",
            "Samples whose T1 is the reflector's echo: no record of our own egress stamp was left",
            m.t1_unrecorded.clone(),
        );
        r.register(
            "meshprobe_replies_follow_up_applied",
            "Samples whose T3 a follow-up corrected to the reflector's driver hand-off (or NIC)",
            m.follow_up_applied.clone(),
        );
        r.register(
            "meshprobe_replies_follow_up_ignored",
            "Follow-ups not used: malformed, or a correction beyond bounds or below the wire",
            m.follow_up_ignored.clone(),
        );
        r.register(
            "meshprobe_replies_unauthenticated",
            "Replies accepted without STAMP authentication (MESHPROBE_STAMP_AUTH_SENDER=optional)",
            m.unauthenticated.clone(),
        );
        r.register(
            "meshprobe_send_errors",
            "Probes the kernel refused to send (no route, ...)",
            m.send_errors.clone(),
        );
        r.register("meshprobe_peers", "Peers being probed", m.peers.clone());
        r.register(
            "meshprobe_window_summaries",
            "Window summaries produced",
            m.windows.clone(),
        );
        r.register(
            "meshprobe_zone_summaries",
            "Zone summaries produced (one per destination zone and window)",
            m.zone_windows.clone(),
        );
        r.register(
            "meshprobe_zone_network_rtt_seconds",
            "Network RTT (T4-T1)-(T3-T2) of the probed peers, per zone pair",
            m.zone_rtt.clone(),
        );
        r.register(
            "meshprobe_zone_probes_sent",
            "Probes sent per zone pair",
            m.zone_sent.clone(),
        );
        r.register(
            "meshprobe_zone_probes_received",
            "Replies per zone pair",
            m.zone_received.clone(),
        );
        r.register(
            "meshprobe_zone_probes_lost",
            "Lost probes per zone pair",
            m.zone_lost.clone(),
        );
        r.register(
            "meshprobe_worst_peer_loss_ratio",
            "Loss ratio over the last window of the worst MESHPROBE_METRICS_WORST_PEERS peers",
            m.worst_loss.clone(),
        );
        r.register(
            "meshprobe_worst_peer_network_rtt_p99_seconds",
            "p99 network RTT over the last window of the worst peers (absent without a reply)",
            m.worst_p99.clone(),
        );
        m
    }

    /// The series of a peer in `dst_zone`; give it back with [`forget`](Self::forget).
    pub fn zone_label(&self, dst_zone: &str) -> ZonePairLabel {
        let dst_zone = label_value(dst_zone);
        let mut refs = self.zone_refs.lock().unwrap_or_else(|p| p.into_inner());
        *refs.entry(dst_zone.clone()).or_default() += 1;
        ZonePairLabel {
            src_zone: self.src_zone.clone(),
            dst_zone,
        }
    }

    /// A departed peer's share of its zone's series: they go with the zone's last peer.
    pub fn forget(&self, label: &ZonePairLabel) {
        let mut refs = self.zone_refs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(n) = refs.get_mut(&label.dst_zone) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            refs.remove(&label.dst_zone);
            self.zone_rtt.remove(label);
            self.zone_sent.remove(label);
            self.zone_received.remove(label);
            self.zone_lost.remove(label);
        }
    }

    pub fn on_sent(&self, label: &ZonePairLabel) {
        self.sent.inc();
        self.zone_sent.get_or_create(label).inc();
    }

    pub fn on_reply(&self, label: &ZonePairLabel, network_rtt_ns: i64) {
        self.received.inc();
        self.zone_received.get_or_create(label).inc();
        self.zone_rtt
            .get_or_create(label)
            .observe(network_rtt_ns.max(0) as f64 / 1e9);
    }

    pub fn on_rejected(&self, r: Rejection) {
        self.unmatched.inc();
        self.rejected
            .get_or_create(&ReasonLabel { reason: r.label() })
            .inc();
    }

    pub fn on_lost(&self, label: &ZonePairLabel) {
        self.lost.inc();
        self.zone_lost.get_or_create(label).inc();
    }

    /// At a window close: exports the worst K of `windows` (the peers with resolved probes in
    /// the window just closed) and removes the series of peers no longer among them.
    pub fn set_worst(&self, windows: Vec<PeerWindow>) {
        let worst = worst_peers(windows, self.worst_k);
        let mut now = HashSet::with_capacity(worst.len());
        for w in worst {
            let label = WorstPeerLabel {
                peer: label_value(&w.peer),
                zone: label_value(&w.zone),
            };
            self.worst_loss.get_or_create(&label).set(w.loss_ratio);
            match w.rtt_p99_ns {
                Some(ns) => {
                    self.worst_p99.get_or_create(&label).set(ns as f64 / 1e9);
                }
                None => {
                    self.worst_p99.remove(&label);
                }
            }
            now.insert(label);
        }
        let mut last = self.worst.lock().unwrap_or_else(|p| p.into_inner());
        for gone in last.difference(&now) {
            self.worst_loss.remove(gone);
            self.worst_p99.remove(gone);
        }
        *last = now;
    }
}

/// The eBPF programs' per-CPU counters, summed at scrape time.
#[derive(Debug)]
pub struct EbpfCollector {
    st: StampingHandle,
}

/// `Stamping` is not Debug; this wrapper is.
struct StampingHandle(Stamping);

impl std::fmt::Debug for StampingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stamping")
    }
}

impl EbpfCollector {
    pub fn register(st: Stamping, r: &mut Registry) {
        r.register_collector(Box::new(Self {
            st: StampingHandle(st),
        }));
    }
}

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = self.st.0.is_kernel();
        let mut m = encoder.encode_descriptor(
            "meshprobe_kernel_timestamps",
            "1 when the eBPF TC programs stamp probes, 0 when socket timestamps are used",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from(kernel)).encode(m)?;
        if !kernel {
            return Ok(());
        }
        if let Some(clock) = self.st.0.kernel_clock() {
            let mut m = encoder.encode_descriptor(
                "meshprobe_kernel_clock",
                "1 for the clock the eBPF programs stamp with: tai (bpf_ktime_get_tai_ns) or \
                 monotonic (bpf_ktime_get_ns + the offset to TAI userspace keeps; kernels < 6.1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = vec![("clock".to_string(), clock.to_string())];
            prometheus_client::metrics::gauge::ConstGauge::new(1i64)
                .encode(m.encode_family(&labels)?)?;
        }
        if let Some(state) = self.st.0.handoff() {
            let mut m = encoder.encode_descriptor(
                "meshprobe_handoff",
                "1 for where the egress stamps are taken: on (the driver hand-off, tp_btf \
                 net_dev_start_xmit) or off (TC egress; the start-up log says why)",
                None,
                MetricType::Gauge,
            )?;
            let labels = vec![("state".to_string(), state.to_string())];
            prometheus_client::metrics::gauge::ConstGauge::new(1i64)
                .encode(m.encode_family(&labels)?)?;
        }
        let counters = self.st.0.counters();
        m = encoder.encode_descriptor(
            "meshprobe_ebpf_events",
            "eBPF program events by kind (probe_common::counter::NAMES), all CPUs",
            None,
            MetricType::Counter,
        )?;
        for (name, v) in counters {
            let labels = vec![("event".to_string(), name.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    fn pw(peer: &str, loss_ratio: f64, p99: Option<i64>) -> PeerWindow {
        PeerWindow {
            peer: peer.into(),
            zone: "z2".into(),
            loss_ratio,
            rtt_p99_ns: p99,
        }
    }

    #[test]
    fn series_are_per_zone_pair_and_go_with_the_zone_s_last_peer() {
        let mut r = Registry::default();
        let m = ProbeMetrics::new(&mut r, "z1", 10);
        let a = m.zone_label("z2");
        let b = m.zone_label("z2");
        let c = m.zone_label("");
        assert_eq!(a, b);
        m.on_sent(&a);
        m.on_sent(&b);
        m.on_reply(&a, 5_000);
        m.on_lost(&c);
        m.on_rejected(Rejection::WrongSource);
        let out = text(&r);
        for want in [
            "meshprobe_zone_probes_sent_total{src_zone=\"z1\",dst_zone=\"z2\"} 2",
            "meshprobe_zone_network_rtt_seconds_count{src_zone=\"z1\",dst_zone=\"z2\"} 1",
            "meshprobe_zone_probes_lost_total{src_zone=\"z1\",dst_zone=\"\"} 1",
            "meshprobe_probes_sent_total 2",
            "meshprobe_replies_rejected_total{reason=\"wrong_source\"} 1",
            "meshprobe_replies_rejected_total{reason=\"t1_mismatch\"} 0",
            "meshprobe_replies_unmatched_total 1",
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
        assert!(!out.contains("peer=\""), "no per-peer series: {out}");
        m.forget(&a);
        assert!(text(&r).contains("dst_zone=\"z2\""), "b still probes z2");
        m.forget(&b);
        m.forget(&b); // once too often: harmless
        assert!(!text(&r).contains("dst_zone=\"z2\""));
        assert!(text(&r).contains("dst_zone=\"\""));
    }

    #[test]
    fn labels_from_the_network_are_bounded() {
        let long = "é".repeat(100); // 200 bytes
        let v = label_value(&long);
        assert!(
            v.len() <= MAX_LABEL_LEN && v.len() >= MAX_LABEL_LEN - 1,
            "{}",
            v.len()
        );
        assert!(long.starts_with(&v));
        assert_eq!(label_value("short"), "short");
        let mut r = Registry::default();
        let m = ProbeMetrics::new(&mut r, &long, 1);
        assert_eq!(m.zone_label(&long).src_zone, v);
    }

    #[test]
    fn worst_peers_rank_by_loss_then_p99_then_name() {
        let w = worst_peers(
            vec![
                pw("fast", 0.0, Some(10)),
                pw("slow", 0.0, Some(900)),
                pw("lossy", 0.5, Some(20)),
                pw("dead", 1.0, None),
                pw("lossy-slow", 0.5, Some(800)),
                pw("b-tie", 0.0, Some(900)),
            ],
            5,
        );
        let names: Vec<_> = w.iter().map(|p| p.peer.as_str()).collect();
        assert_eq!(names, ["dead", "lossy-slow", "lossy", "b-tie", "slow"]);
        assert!(worst_peers(vec![pw("a", 1.0, None)], 0).is_empty());
    }

    #[test]
    fn worst_set_is_recomputed_each_window_and_leavers_lose_their_series() {
        let mut r = Registry::default();
        let m = ProbeMetrics::new(&mut r, "z1", 2);
        m.set_worst(vec![
            pw("a", 0.2, Some(2_000_000)),
            pw("b", 0.1, None),
            pw("c", 0.0, Some(1_000)),
        ]);
        let out = text(&r);
        assert!(
            out.contains("meshprobe_worst_peer_loss_ratio{peer=\"a\",zone=\"z2\"} 0.2"),
            "{out}"
        );
        assert!(
            out.contains(
                "meshprobe_worst_peer_network_rtt_p99_seconds{peer=\"a\",zone=\"z2\"} 0.002"
            ),
            "{out}"
        );
        assert!(
            out.contains("meshprobe_worst_peer_loss_ratio{peer=\"b\""),
            "{out}"
        );
        assert!(
            !out.contains("p99_seconds{peer=\"b\""),
            "no reply, no p99: {out}"
        );
        assert!(!out.contains("peer=\"c\""), "only the worst 2: {out}");
        // Next window: c got worse, a left (not in the candidates any more).
        m.set_worst(vec![pw("b", 0.1, Some(5_000)), pw("c", 0.9, None)]);
        let out = text(&r);
        assert!(!out.contains("peer=\"a\""), "a's series are removed: {out}");
        assert!(
            out.contains("loss_ratio{peer=\"c\",zone=\"z2\"} 0.9"),
            "{out}"
        );
        assert!(
            out.contains("p99_seconds{peer=\"b\",zone=\"z2\"} 0.000005"),
            "{out}"
        );
        // K = 0: nothing by name, ever.
        let mut r0 = Registry::default();
        let m0 = ProbeMetrics::new(&mut r0, "z1", 0);
        m0.set_worst(vec![pw("a", 1.0, None)]);
        assert!(!text(&r0).contains("peer=\""));
    }
}
