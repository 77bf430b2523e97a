//! Prometheus metrics of the agent: self-metrics, eBPF counters read at scrape time, and
//! per-peer RTT and loss behind a cardinality bound.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
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

/// Label of the series that aggregates peers beyond the cardinality bound.
pub const OTHER_PEERS: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// `reason` of a rejected reply: one of `Rejection::ALL`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn rtt_histogram() -> Histogram {
    // 1 µs .. ~1 s in seconds, doubling.
    Histogram::new(exponential_buckets(1e-6, 2.0, 21))
}

/// Counters and per-peer series updated by the prober.
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
    pub send_errors: Counter,
    pub peers: Gauge,
    pub windows: Counter,
    peer_rtt: Family<PeerLabel, Histogram, fn() -> Histogram>,
    peer_sent: Family<PeerLabel, Counter>,
    peer_lost: Family<PeerLabel, Counter>,
    peer_received: Family<PeerLabel, Counter>,
    limit: usize,
    labelled: Mutex<HashSet<String>>,
}

impl ProbeMetrics {
    pub fn new(registry: &mut Registry, peer_limit: usize) -> Arc<Self> {
        let m = Arc::new(Self {
            sent: Counter::default(),
            received: Counter::default(),
            lost: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            unmatched: Counter::default(),
            rejected: Family::default(),
            t1_unrecorded: Counter::default(),
            send_errors: Counter::default(),
            peers: Gauge::default(),
            windows: Counter::default(),
            peer_rtt: Family::new_with_constructor(rtt_histogram),
            peer_sent: Family::default(),
            peer_lost: Family::default(),
            peer_received: Family::default(),
            limit: peer_limit,
            labelled: Mutex::new(HashSet::new()),
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
            "meshprobe_peer_network_rtt_seconds",
            "Network RTT (T4-T1)-(T3-T2) per peer, kernel stamps",
            m.peer_rtt.clone(),
        );
        r.register(
            "meshprobe_peer_probes_sent",
            "Probes sent per peer",
            m.peer_sent.clone(),
        );
        r.register(
            "meshprobe_peer_probes_received",
            "Replies per peer",
            m.peer_received.clone(),
        );
        r.register(
            "meshprobe_peer_probes_lost",
            "Lost probes per peer",
            m.peer_lost.clone(),
        );
        m
    }

    /// The label a peer's series use: its own name while under the bound, else `_other`.
    pub fn label_for(&self, node_id: &str) -> PeerLabel {
        let mut l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        let peer = if l.contains(node_id) {
            node_id.to_string()
        } else if l.len() < self.limit {
            l.insert(node_id.to_string());
            node_id.to_string()
        } else {
            OTHER_PEERS.to_string()
        };
        PeerLabel { peer }
    }

    /// Drops a departed peer's series and frees its slot.
    pub fn forget(&self, label: &PeerLabel) {
        if label.peer == OTHER_PEERS {
            return;
        }
        self.labelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&label.peer);
        self.peer_rtt.remove(label);
        self.peer_sent.remove(label);
        self.peer_received.remove(label);
        self.peer_lost.remove(label);
    }

    pub fn on_sent(&self, label: &PeerLabel) {
        self.sent.inc();
        self.peer_sent.get_or_create(label).inc();
    }

    pub fn on_reply(&self, label: &PeerLabel, network_rtt_ns: i64) {
        self.received.inc();
        self.peer_received.get_or_create(label).inc();
        self.peer_rtt
            .get_or_create(label)
            .observe(network_rtt_ns.max(0) as f64 / 1e9);
    }

    pub fn on_rejected(&self, r: Rejection) {
        self.unmatched.inc();
        self.rejected
            .get_or_create(&ReasonLabel { reason: r.label() })
            .inc();
    }

    pub fn on_lost(&self, label: &PeerLabel) {
        self.lost.inc();
        self.peer_lost.get_or_create(label).inc();
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

    #[test]
    fn peers_beyond_the_bound_share_one_series_and_slots_are_freed() {
        let mut r = Registry::default();
        let m = ProbeMetrics::new(&mut r, 2);
        let a = m.label_for("a");
        let b = m.label_for("b");
        let c = m.label_for("c");
        assert_eq!((a.peer.as_str(), b.peer.as_str()), ("a", "b"));
        assert_eq!(c.peer, OTHER_PEERS);
        assert_eq!(m.label_for("a").peer, "a", "stable for a known peer");
        m.on_reply(&a, 5_000);
        m.on_lost(&c);
        m.on_rejected(Rejection::WrongSource);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("meshprobe_peer_probes_lost_total{peer=\"_other\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("meshprobe_peer_network_rtt_seconds_count{peer=\"a\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("meshprobe_replies_rejected_total{reason=\"wrong_source\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("meshprobe_replies_rejected_total{reason=\"t1_mismatch\"} 0"),
            "{out}"
        );
        assert!(out.contains("meshprobe_replies_unmatched_total 1"), "{out}");
        m.forget(&a);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(!out.contains("peer=\"a\""), "{out}");
        assert_eq!(m.label_for("d").peer, "d", "a freed slot is reused");
    }
}
