//! Where records go: Kafka (protobuf, keyed `src->dst`, zone records `src->zone:dst_zone`) and
//! stdout (table or JSON lines).
use std::time::Duration;

use crate::pb::{self, record::Kind};

pub mod json;
pub mod kafka;
pub mod stdout;

pub use kafka::{KafkaOptions, KafkaSink, validate};
pub use stdout::{OutputFormat, StdoutSink};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A setting that cannot work; `fix` says what would.
    #[error("{setting}={value:?}: {fix}")]
    Invalid {
        setting: &'static str,
        value: String,
        fix: String,
    },
    #[error("creating the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
}

/// The Kafka message key of a pair: one pair stays ordered in one partition.
pub fn key(src: &str, dst: &str) -> String {
    format!("{src}->{dst}")
}

/// The Kafka message key of a zone summary: one agent's view of one zone stays ordered in one
/// partition. (A node id may look like `zone:x`: the key only partitions, the record's kind
/// says what it is.)
pub fn zone_key(src: &str, dst_zone: &str) -> String {
    format!("{src}->zone:{dst_zone}")
}

/// Every destination of the agent's records.
pub struct Sinks {
    pub stdout: StdoutSink,
    pub kafka: Option<KafkaSink>,
    /// Also send per-probe records to Kafka (MESHPROBE_KAFKA_PROBES).
    pub kafka_probes: bool,
}

impl Sinks {
    pub fn summary(&self, s: pb::WindowSummary) {
        let key = key(&s.src, &s.dst);
        let rec = pb::Record {
            kind: Some(Kind::Summary(s)),
        };
        self.stdout.send(&rec);
        if let Some(k) = &self.kafka {
            k.send(&key, &rec);
        }
    }

    pub fn zone(&self, z: pb::ZoneSummary) {
        let key = zone_key(&z.src, &z.dst_zone);
        let rec = pb::Record {
            kind: Some(Kind::Zone(z)),
        };
        self.stdout.send(&rec);
        if let Some(k) = &self.kafka {
            k.send(&key, &rec);
        }
    }

    /// Probe records go to stdout (as its format says) and to Kafka only with `kafka_probes`.
    pub fn probe(&self, p: pb::ProbeResult) {
        let to_kafka = self.kafka.as_ref().filter(|_| self.kafka_probes);
        if self.stdout.format == OutputFormat::None && to_kafka.is_none() {
            return;
        }
        let key = key(&p.src, &p.dst);
        let rec = pb::Record {
            kind: Some(Kind::Probe(p)),
        };
        self.stdout.send(&rec);
        if let Some(k) = to_kafka {
            k.send(&key, &rec);
        }
    }

    /// Waits up to `timeout` for Kafka to acknowledge everything; returns how many records
    /// were still undelivered (now counted as dropped and logged).
    pub fn flush(&self, timeout: Duration) -> usize {
        self.kafka.as_ref().map_or(0, |k| k.flush(timeout))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb::{StampSource, Timestamping};

    /// 1_700_000_037 s TAI (22:13:20 UTC with a 37 s offset).
    const T0: u64 = 1_700_000_037_000_000_000;

    fn quantiles(p50: i64, p99: i64, max: i64) -> Option<pb::Quantiles> {
        Some(pb::Quantiles {
            count: 9,
            min: p50 / 2,
            p50,
            p90: p99,
            p99,
            p999: max,
            max,
            mean: p50 as f64,
        })
    }

    pub(crate) fn summary(src: &str, dst: &str, window_seq: u64) -> pb::WindowSummary {
        pb::WindowSummary {
            src: src.into(),
            dst: dst.into(),
            dst_address: "198.18.0.2:862".into(),
            window_seq,
            window_start_tai_ns: T0,
            window_length_ns: 10_000_000_000,
            sent: 10,
            received: 9,
            lost: 1,
            loss_ratio: 0.1,
            network_rtt_ns: quantiles(45_300, 90_000, 12_500_000),
            turnaround_ns: quantiles(12_000, 20_000, 30_000),
            stack_overhead_ns: quantiles(30_000, 40_000, 50_000),
            app_rtt_ns: quantiles(80_100, 100_000, 150_000),
            timestamping: Timestamping::Kernel as i32,
            agent_instance: "i-1".into(),
            ..Default::default()
        }
    }

    pub(crate) fn zone(src: &str, dst_zone: &str, window_seq: u64) -> pb::ZoneSummary {
        pb::ZoneSummary {
            src: src.into(),
            src_zone: "z1".into(),
            dst_zone: dst_zone.into(),
            window_seq,
            window_start_tai_ns: T0,
            window_length_ns: 10_000_000_000,
            pairs: 3,
            dst_zone_members: 5,
            sent: 30,
            received: 27,
            lost: 3,
            loss_ratio: 0.1,
            network_rtt_ns: quantiles(45_300, 90_000, 12_500_000),
            network_rtt_hdr: vec![0x1c, 0x84, 0x93, 0x14, 0xff, 0x00],
            pair_p50_ns: quantiles(40_000, 52_000, 52_000),
            timestamping: Timestamping::Kernel as i32,
            agent_instance: "i-1".into(),
        }
    }

    pub(crate) fn probe(src: &str, dst: &str, seq: u32) -> pb::ProbeResult {
        pb::ProbeResult {
            src: src.into(),
            dst: dst.into(),
            dst_address: "198.18.0.2:862".into(),
            ssid: 1,
            seq,
            t1_ns: T0,
            t2_ns: T0 + 20_000,
            t3_ns: T0 + 32_000,
            t4_ns: T0 + 57_300,
            network_rtt_ns: 45_300,
            turnaround_ns: 12_000,
            app_rtt_ns: 80_100,
            stack_overhead_ns: 22_800,
            t1_source: StampSource::Tc as i32,
            t2_source: StampSource::SkbRx as i32,
            t3_source: StampSource::Handoff as i32,
            t4_source: StampSource::SkbRx as i32,
            timestamping: Timestamping::Kernel as i32,
            ttl: 64,
            sent_tai_ns: T0 + 250_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn record_round_trips_through_protobuf() {
        for rec in [
            pb::Record {
                kind: Some(Kind::Summary(summary("a", "b", 42))),
            },
            pb::Record {
                kind: Some(Kind::Probe(probe("a", "b", 7))),
            },
            pb::Record {
                kind: Some(Kind::Zone(zone("a", "", 42))),
            },
        ] {
            let bytes = rec.encode_to_vec();
            assert_eq!(pb::Record::decode(bytes.as_slice()).unwrap(), rec);
        }
        assert!(pb::Record::decode(&b"\xff\xff\xff"[..]).is_err());
    }

    #[test]
    fn key_is_src_arrow_dst() {
        assert_eq!(key("node-a", "node-b"), "node-a->node-b");
    }

    #[test]
    fn zone_key_names_the_zone() {
        assert_eq!(zone_key("node-a", "eu-1"), "node-a->zone:eu-1");
        assert_eq!(zone_key("node-a", ""), "node-a->zone:");
    }
}
