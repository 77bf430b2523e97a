//! `meshprobe consume`: read the records topic from the beginning (every partition, no
//! consumer group offsets), decode and print them like the agent's stdout output. The reading
//! itself ([`TopicReader`]) is shared with `meshprobe matrix`; so are the coverage figures
//! (`--coverage`).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use prost::Message as _;
use rdkafka::{
    ClientConfig, ClientContext, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer as _, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    message::Message as _,
};
use tracing::debug;

use crate::{
    matrix::{Model, coverage::Coverage},
    pb::{self, record::Kind},
    sink::{OutputFormat, StdoutSink, kafka::validate_bootstrap},
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

/// librdkafka's own logs stay at debug: failures surface as our errors and warnings.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, msg: &str) {
        debug!(target: "librdkafka", "{fac}: {msg}");
    }

    fn error(&self, err: KafkaError, reason: &str) {
        debug!(target: "librdkafka", "{err}: {reason}");
    }
}

impl ConsumerContext for Quiet {}

/// One message value: a Record, `None` for a Record of a kind this version does not know (a
/// newer producer), or why it is no Record.
pub fn decode(payload: Option<&[u8]>) -> Result<Option<pb::Record>, String> {
    let payload = payload.ok_or("message without value")?;
    match pb::Record::decode(payload) {
        Ok(rec) if rec.kind.is_none() => Ok(None),
        Ok(rec) => Ok(Some(rec)),
        Err(e) => Err(format!("not a meshprobe Record: {e}")),
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    // librdkafka's consumer API blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || consume(&args))
        .await
        .context("consumer thread")?
}

fn consume(args: &ConsumeArgs) -> anyhow::Result<()> {
    let mut reader = TopicReader::open(
        &args.kafka_bootstrap_servers,
        &args.kafka_topic,
        args.timeout,
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
            serde_json::json!({"type": "offsets", "topic": reader.topic, "partitions": v})
        );
    } else {
        println!("{:>9} {:>9} {:>11}", "partition", "records", "next offset");
        for (p, o) in parts {
            println!("{p:>9} {:>9} {:>11}", o.records, o.next_offset);
        }
    }
}

/// What has been read of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionRead {
    /// Messages read (Records or not).
    pub records: u64,
    /// Offset after the last message read (0 when none was).
    pub next_offset: i64,
}

/// What one [`TopicReader::poll`] brought.
#[derive(Debug)]
pub enum Polled {
    Record(Box<pb::Record>),
    /// A message that is no Record, or a Kafka error not reported just before (once per
    /// change, so a broker outage is one line, not one per poll).
    Warning(String),
}

/// Reads every partition of a topic from the beginning, without consumer-group offsets; shared
/// by `consume` and `matrix`. Blocking: run it on a thread of its own.
pub struct TopicReader {
    consumer: BaseConsumer<Quiet>,
    bootstrap: String,
    topic: String,
    timeout: Duration,
    /// Partitions whose end (EOF) has not been reached yet.
    todo: BTreeSet<i32>,
    read: BTreeMap<i32, PartitionRead>,
    progress: Instant,
    last_err: String,
    /// Messages that were no Record.
    pub bad: u64,
    /// Records of a kind this version does not know (from a newer producer).
    pub unknown: u64,
}

impl TopicReader {
    /// Connects, checks the topic and assigns all its partitions from the beginning; `timeout`
    /// bounds the connection and, when not following, the wait for progress.
    pub fn open(bootstrap: &str, topic: &str, timeout: Duration) -> anyhow::Result<TopicReader> {
        let bs = bootstrap;
        validate_bootstrap(bs)?;
        let timeout_ms = timeout.as_millis().clamp(1000, i32::MAX as u128);
        let consumer: BaseConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", bs)
            // librdkafka's assign() needs a group; nothing is ever committed to it.
            .set("group.id", "meshprobe-consume")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("socket.connection.setup.timeout.ms", timeout_ms.to_string())
            .set_log_level(RDKafkaLogLevel::Warning)
            .create_with_context(Quiet)
            .context("creating the Kafka consumer")?;

        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {bs}: {e}"))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            bail!("topic {topic:?} not found at {bs}");
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                bail!("topic {topic:?} does not exist at {bs} (check --kafka-topic / KAFKA_TOPIC)")
            }
            Some(e) => bail!("topic {topic:?} at {bs}: {e}"),
        }
        if t.partitions().is_empty() {
            bail!("topic {topic:?} at {bs} has no partitions");
        }

        // The end of the topic is when librdkafka reports EOF for every partition. EOF is
        // judged against the high watermark of each fetch response; the start-time
        // watermarks (ListOffsets) are not used because some Kafka-compatible brokers (Tansu)
        // answer them per batch rather than per record.
        let mut todo = BTreeSet::new();
        let mut tpl = TopicPartitionList::new();
        let mut read = BTreeMap::new();
        for p in t.partitions() {
            todo.insert(p.id());
            read.insert(p.id(), PartitionRead::default());
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl).context("assigning partitions")?;
        Ok(TopicReader {
            consumer,
            bootstrap: bs.to_string(),
            topic: topic.to_string(),
            timeout,
            todo,
            read,
            progress: Instant::now(),
            last_err: String::new(),
            bad: 0,
            unknown: 0,
        })
    }

    /// Per partition: messages read so far and the next offset.
    pub fn partitions(&self) -> &BTreeMap<i32, PartitionRead> {
        &self.read
    }

    /// Every partition has been read to its end (at least once).
    pub fn at_end(&self) -> bool {
        self.todo.is_empty()
    }

    /// Waits up to 200 ms for the next record or warning. Without `follow`, no progress for
    /// the timeout before the end of every partition is an error.
    pub fn poll(&mut self, follow: bool) -> anyhow::Result<Option<Polled>> {
        let (bs, topic) = (&self.bootstrap, &self.topic);
        match self.consumer.poll(Duration::from_millis(200)) {
            None => {
                if !follow && !self.at_end() && self.progress.elapsed() > self.timeout {
                    bail!(
                        "no progress from Kafka at {bs} for {}; partitions not read to their end: \
                         {:?}{}",
                        humantime::format_duration(self.timeout),
                        self.todo,
                        if self.last_err.is_empty() {
                            String::new()
                        } else {
                            format!(" (last error: {})", self.last_err)
                        }
                    );
                }
                Ok(None)
            }
            Some(Ok(msg)) => {
                self.progress = Instant::now();
                let (p, off) = (msg.partition(), msg.offset());
                let r = self.read.entry(p).or_default();
                r.records += 1;
                r.next_offset = off + 1;
                match decode(msg.payload()) {
                    Ok(Some(rec)) => Ok(Some(Polled::Record(Box::new(rec)))),
                    Ok(None) => {
                        self.unknown += 1;
                        Ok(None)
                    }
                    Err(why) => {
                        self.bad += 1;
                        Ok(Some(Polled::Warning(format!(
                            "{topic} partition {p} offset {off}: {why}"
                        ))))
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                self.progress = Instant::now();
                self.todo.remove(&p);
                Ok(None)
            }
            Some(Err(e)) => {
                let e = e.to_string();
                if e == self.last_err {
                    return Ok(None);
                }
                self.last_err = e;
                Ok(Some(Polled::Warning(format!(
                    "Kafka at {bs}: {}",
                    self.last_err
                ))))
            }
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
    fn decoding() {
        let rec = pb::Record {
            kind: Some(Kind::Summary(summary("a", "b", 1))),
        };
        assert_eq!(decode(Some(&rec.encode_to_vec())), Ok(Some(rec.clone())));
        // An empty value decodes as a Record without kind (a kind added later).
        assert_eq!(decode(Some(b"")), Ok(None));
        assert!(decode(None).is_err());
        assert!(decode(Some(b"{\"a\":1}")).is_err());
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
