//! JSON lines for records: `{"type":"summary", <WindowSummary fields>}`,
//! `{"type":"zone", <ZoneSummary fields>}` and `{"type":"probe", <ProbeResult fields>}`, proto
//! field names, enums as their proto names, bytes as base64 (standard alphabet, padded: the
//! proto3 JSON mapping's choice).
//! The `serialize_with` helpers are referenced from the generated `pb` code (build.rs).
use serde::{Serialize, Serializer};

use crate::pb::{self, StampSource, Timestamping, record::Kind};

/// `Timestamping` field (an i32 in prost) as its proto name; an unknown value stays a number
/// so a newer producer's records still print.
pub fn timestamping<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    match Timestamping::try_from(*v) {
        Ok(t) => s.serialize_str(t.as_str_name()),
        Err(_) => s.serialize_i32(*v),
    }
}

/// `StampSource` field as its proto name (see [`timestamping`]).
pub fn stamp_source<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    match StampSource::try_from(*v) {
        Ok(t) => s.serialize_str(t.as_str_name()),
        Err(_) => s.serialize_i32(*v),
    }
}

/// A bytes field (ZoneSummary.network_rtt_hdr) as base64, not as an array of numbers.
pub fn base64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

/// Reads back what [`base64`] writes (readers of our JSON lines, e.g. `meshprobe matrix`).
pub fn from_base64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    let s = <String as serde::Deserialize>::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(serde::de::Error::custom)
}

/// Prints one JSON object per line on stdout (the lock held for the line): every JSON line
/// of every subcommand, records and events alike.
pub fn emit_json<T: Serialize>(v: &T) {
    use std::io::Write as _;
    let line = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One JSON line: the type tag followed by the record's own fields.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    rec: &'a T,
}

/// The JSON line (without newline) for a record; `None` for a record without a kind.
pub fn line(rec: &pb::Record) -> Option<String> {
    let r = match rec.kind.as_ref()? {
        Kind::Summary(s) => serde_json::to_string(&Line {
            kind: "summary",
            rec: s,
        }),
        Kind::Probe(p) => serde_json::to_string(&Line {
            kind: "probe",
            rec: p,
        }),
        Kind::Zone(z) => serde_json::to_string(&Line {
            kind: "zone",
            rec: z,
        }),
    };
    // Plain structs of numbers and strings: serialization cannot fail.
    r.ok()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::sink::tests::{probe, summary};

    fn parse(rec: pb::Record) -> Value {
        serde_json::from_str(&line(&rec).expect("line")).expect("valid JSON")
    }

    #[test]
    fn summary_line_has_type_tag_proto_names_and_enum_names() {
        let v = parse(pb::Record {
            kind: Some(Kind::Summary(summary("a", "b", 7))),
        });
        assert_eq!(v["type"], "summary");
        assert_eq!(v["src"], "a");
        assert_eq!(v["dst"], "b");
        assert_eq!(v["window_seq"], 7);
        assert_eq!(v["timestamping"], "TIMESTAMPING_KERNEL");
        assert_eq!(v["network_rtt_ns"]["p50"], 45_300);
        assert_eq!(v["network_rtt_ns"]["p999"], 12_500_000);
        assert_eq!(v["loss_ratio"], 0.1);
        assert_eq!(v["peer_left"], false);
        assert!(v["turnaround_ns"].is_object());
        // Every proto field is present, nothing else but the tag.
        assert_eq!(v.as_object().unwrap().len(), 22 + 1);
    }

    #[test]
    fn zone_line_has_type_tag_base64_histogram_and_enum_names() {
        use base64::Engine as _;
        let z = crate::sink::tests::zone("a", "", 7);
        let v = parse(pb::Record {
            kind: Some(Kind::Zone(z.clone())),
        });
        assert_eq!(v["type"], "zone");
        assert_eq!(v["src"], "a");
        assert_eq!(v["dst_zone"], "");
        assert_eq!(
            (v["pairs"].as_u64(), v["dst_zone_members"].as_u64()),
            (Some(3), Some(5))
        );
        assert_eq!(v["timestamping"], "TIMESTAMPING_KERNEL");
        assert_eq!(v["pair_p50_ns"]["p50"], 40_000);
        let hdr = v["network_rtt_hdr"]
            .as_str()
            .expect("a string, not a number array");
        let back = base64::engine::general_purpose::STANDARD
            .decode(hdr)
            .unwrap();
        assert_eq!(back, z.network_rtt_hdr);
        assert_eq!(v.as_object().unwrap().len(), 17 + 1);
    }

    #[test]
    fn probe_line_has_enum_names() {
        let v = parse(pb::Record {
            kind: Some(Kind::Probe(probe("a", "b", 3))),
        });
        assert_eq!(v["type"], "probe");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["t1_source"], "STAMP_SOURCE_TC");
        assert_eq!(v["t2_source"], "STAMP_SOURCE_SKB_RX");
        assert_eq!(v["t3_source"], "STAMP_SOURCE_HANDOFF");
        assert_eq!(v["t4_source"], "STAMP_SOURCE_SKB_RX");
        assert_eq!(v["timestamping"], "TIMESTAMPING_KERNEL");
        assert_eq!(v["network_rtt_ns"], 45_300);
        assert_eq!(v.as_object().unwrap().len(), 22 + 1);
    }

    #[test]
    fn unknown_enum_value_stays_a_number() {
        let mut p = probe("a", "b", 1);
        p.t4_source = 99;
        let v = parse(pb::Record {
            kind: Some(Kind::Probe(p)),
        });
        assert_eq!(v["t4_source"], 99);
    }

    #[test]
    fn record_without_kind_has_no_line() {
        assert!(line(&pb::Record { kind: None }).is_none());
    }
}
