//! `meshprobe consume`: read the records topic from the beginning (every partition, no
//! consumer group offsets), decode and print them like the agent's stdout output. The reading
//! itself ([`TopicReader`], in [`crate::topic`]) is shared with `meshprobe matrix`; so are the coverage figures
//! (`--coverage`).
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{
    cli::error::ConfigError,
    kafka_security::{Security, SecurityArgs},
    matrix::{Model, coverage::Coverage},
    pb::{self, record::Kind},
    sink::{OutputFormat, StdoutSink},
    topic::{Polled, TopicReader},
};

/// Which record kinds to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KindFilter {
    /// Window summaries of node pairs.
    Summary,
    Probe,
    /// Zone summaries (one agent towards one zone).
    Zone,
    #[default]
    All,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Kafka brokers, `host:port[,host:port]`.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: String,
    /// Topic the agents write to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "distributedTrace")]
    pub kafka_topic: String,
    /// Keep printing new records instead of exiting at the end of the topic.
    #[arg(long)]
    pub follow: bool,
    /// JSON lines, exactly as the agent's `--output json`.
    #[arg(long)]
    pub json: bool,
    /// Only records measured by this node (the agent, for zone summaries too).
    #[arg(long)]
    pub src: Option<String>,
    /// Only records towards this node; zone summaries: towards this zone.
    #[arg(long)]
    pub dst: Option<String>,
    /// Record kinds to print.
    #[arg(long, value_enum, default_value_t = KindFilter::All)]
    pub kind: KindFilter,
    /// How long to wait for Kafka (connecting, and without `--follow` for progress).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Print, per partition, the records read and the next offset (at the end of the topic)
    /// instead of the records.
    #[arg(long, conflicts_with = "follow")]
    pub offsets: bool,
    /// Print, at the end of the topic, the coverage of the latest windows (pairs probed of
    /// those possible, nodes probed and by how few agents, zone pairs covered: the figures of
    /// `meshprobe matrix`) instead of the records.
    #[arg(long, conflicts_with_all = ["follow", "offsets", "src", "dst", "kind"])]
    pub coverage: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

impl ConsumeArgs {
    fn wants(&self, rec: &pb::Record) -> bool {
        let (kind, src, dst) = match &rec.kind {
            Some(Kind::Summary(s)) => (KindFilter::Summary, &s.src, &s.dst),
            Some(Kind::Probe(p)) => (KindFilter::Probe, &p.src, &p.dst),
            Some(Kind::Zone(z)) => (KindFilter::Zone, &z.src, &z.dst_zone),
            None => return false,
        };
        (self.kind == KindFilter::All || self.kind == kind)
            && self.src.as_ref().is_none_or(|s| s == src)
            && self.dst.as_ref().is_none_or(|d| d == dst)
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    // librdkafka's consumer API blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || consume(&args))
        .await
        .context("consumer thread")?
}

fn consume(args: &ConsumeArgs) -> anyhow::Result<()> {
    let security =
        Security::from_args(&args.security, std::env::vars_os()).map_err(ConfigError::named)?;
    let mut reader = TopicReader::open(
        &args.kafka_bootstrap_servers,
        &args.kafka_topic,
        args.timeout,
        &security,
    )?;
    let out = StdoutSink {
        format: if args.json {
            OutputFormat::Json
        } else {
            OutputFormat::Table
        },
    };
    let mut model = Model::default();
    while args.follow || !reader.at_end() {
        match reader.poll(args.follow)? {
            Some(Polled::Record(_)) if args.offsets => {}
            Some(Polled::Record(rec)) if args.coverage => take(&mut model, *rec),
            Some(Polled::Record(rec)) if args.wants(&rec) => out.send(&rec),
            Some(Polled::Warning(w)) => eprintln!("warning: {w}"),
            Some(Polled::Record(_)) | None => {}
        }
    }
    if args.offsets {
        print_offsets(&reader, args.json);
    }
    if args.coverage {
        println!("{}", coverage_line(&Coverage::of_model(&model), args.json));
    }
    if reader.unknown > 0 {
        eprintln!(
            "note: skipped {} record(s) of a kind this version does not know",
            reader.unknown
        );
    }
    if reader.bad > 0 {
        bail!(
            "{} message(s) in {} could not be decoded",
            reader.bad,
            args.kafka_topic
        );
    }
    Ok(())
}

/// Feeds a summary to the coverage model (probe records have no part in it).
fn take(model: &mut Model, rec: pb::Record) {
    let r = match rec.kind {
        Some(Kind::Summary(s)) => model.ingest(s),
        Some(Kind::Zone(z)) => model.ingest(z),
        _ => return,
    };
    if let Err(e) = r {
        eprintln!("warning: {e}");
    }
}

/// `coverage: pairs probed …` (see [`Coverage::text`]), or `{"type":"coverage",
/// "pairs_probed":N,"pairs_possible":N,"nodes_probed":N,"nodes":N,"min_probers":N,
/// "zone_pairs_covered":N|null,"zone_pairs_possible":N|null}`.
fn coverage_line(c: &Coverage, json: bool) -> String {
    let n = c.nodes.unwrap_or_default();
    if json {
        let (covered, possible) = c.zone_pairs.unzip();
        return serde_json::json!({
            "type": "coverage",
            "pairs_probed": n.probed,
            "pairs_possible": n.possible,
            "nodes_probed": n.nodes_probed,
            "nodes": n.nodes,
            "min_probers": n.min_probers,
            "zone_pairs_covered": covered,
            "zone_pairs_possible": possible,
        })
        .to_string();
    }
    match c.text() {
        t if t.is_empty() => "coverage: no window summaries".into(),
        t => t,
    }
}

/// `{"type":"offsets","topic":..,"partitions":[{"partition":0,"records":N,"next_offset":M}]}`
/// or a table.
fn print_offsets(reader: &TopicReader, json: bool) {
    let parts = reader.partitions();
    if json {
        let v: Vec<_> = parts
            .iter()
            .map(|(p, o)| serde_json::json!({"partition": p, "records": o.records, "next_offset": o.next_offset}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"type": "offsets", "topic": reader.topic(), "partitions": v})
        );
    } else {
        println!("{:>9} {:>9} {:>11}", "partition", "records", "next offset");
        for (p, o) in parts {
            println!("{p:>9} {:>9} {:>11}", o.records, o.next_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::sink::tests::{probe, summary};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("consume").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&["--kafka-bootstrap-servers", "k:9092"]).unwrap();
        assert_eq!(a.kafka_topic, "distributedTrace");
        assert_eq!(a.kind, KindFilter::All);
        assert_eq!(a.timeout, Duration::from_secs(10));
        assert!(!a.follow && !a.json && !a.offsets && !a.coverage);
        for other in ["--follow", "--offsets", "--src=a", "--dst=b", "--kind=zone"] {
            assert!(
                parse(&["--kafka-bootstrap-servers", "k:9092", "--coverage", other]).is_err(),
                "--coverage with {other}"
            );
        }
        assert!(
            parse(&[
                "--kafka-bootstrap-servers",
                "k:9092",
                "--coverage",
                "--json"
            ])
            .is_ok()
        );
        assert!(
            parse(&[
                "--kafka-bootstrap-servers",
                "k:9092",
                "--offsets",
                "--follow"
            ])
            .is_err()
        );
        let a = parse(&[
            "--kafka-bootstrap-servers",
            "k:9092",
            "--kafka-topic",
            "t",
            "--follow",
            "--json",
            "--src",
            "a",
            "--dst",
            "b",
            "--kind",
            "probe",
            "--timeout",
            "2s",
        ])
        .unwrap();
        assert!(a.follow && a.json);
        assert_eq!(a.kind, KindFilter::Probe);
        assert_eq!(a.timeout, Duration::from_secs(2));
    }

    #[test]
    fn filters() {
        let mut a = parse(&["--kafka-bootstrap-servers", "k:9092"]).unwrap();
        let s = pb::Record {
            kind: Some(Kind::Summary(summary("a", "b", 1))),
        };
        let p = pb::Record {
            kind: Some(Kind::Probe(probe("a", "c", 1))),
        };
        assert!(a.wants(&s) && a.wants(&p));
        a.kind = KindFilter::Summary;
        assert!(a.wants(&s) && !a.wants(&p));
        a.kind = KindFilter::All;
        a.dst = Some("c".into());
        assert!(!a.wants(&s) && a.wants(&p));
        a.src = Some("x".into());
        assert!(!a.wants(&p));
    }

    #[test]
    fn zone_filters_mean_the_agent_and_the_dst_zone() {
        let mut a = parse(&["--kafka-bootstrap-servers", "k:9092", "--kind", "zone"]).unwrap();
        let z = pb::Record {
            kind: Some(Kind::Zone(pb::ZoneSummary {
                src: "a".into(),
                src_zone: "z1".into(),
                dst_zone: "z2".into(),
                ..Default::default()
            })),
        };
        let s = pb::Record {
            kind: Some(Kind::Summary(summary("a", "b", 1))),
        };
        assert!(a.wants(&z) && !a.wants(&s));
        a.src = Some("a".into());
        a.dst = Some("z2".into());
        assert!(a.wants(&z));
        a.dst = Some("z1".into());
        assert!(!a.wants(&z), "--dst is the dst zone, not the src zone");
        a.kind = KindFilter::All;
        a.dst = None;
        assert!(a.wants(&z) && a.wants(&s));
        a.kind = KindFilter::Summary;
        assert!(!a.wants(&z));
    }

    #[test]
    fn coverage_of_the_records_read() {
        use crate::matrix::model::tests::at;
        let mut m = Model::default();
        for (src, dst) in [("a", "b"), ("b", "a"), ("c", "a")] {
            take(
                &mut m,
                pb::Record {
                    kind: Some(Kind::Summary(at(src, dst, 1, 40_000))),
                },
            );
        }
        take(
            &mut m,
            pb::Record {
                kind: Some(Kind::Probe(probe("a", "c", 1))),
            },
        );
        let c = Coverage::of_model(&m);
        assert_eq!(
            coverage_line(&c, false),
            "coverage: pairs probed 3/6 (50%), nodes probed 2/3 (fewest probers 0)"
        );
        let v: serde_json::Value = serde_json::from_str(&coverage_line(&c, true)).unwrap();
        assert_eq!(v["type"], "coverage");
        assert_eq!(
            (v["pairs_probed"].as_u64(), v["pairs_possible"].as_u64()),
            (Some(3), Some(6))
        );
        assert_eq!(v["min_probers"], 0);
        assert!(v["zone_pairs_covered"].is_null());
        assert_eq!(
            coverage_line(&Coverage::of_model(&Model::default()), false),
            "coverage: no window summaries"
        );
    }
}
