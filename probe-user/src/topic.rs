//! Reading the records topic: every partition from the beginning, without consumer-group
//! offsets, decoded into [`pb::Record`]s. Shared by `meshprobe consume` and `meshprobe matrix`.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
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
    kafka_security::{Security, failure_hint},
    pb,
    sink::kafka::validate_bootstrap,
};

/// One metadata request of [`TopicReader::open`] waits at most this long.
const METADATA_TRY: Duration = Duration::from_secs(1);
/// Between two metadata requests: wait for queued events this long at most, and stop after
/// this many errors (each ends a poll).
const EVENT_WAIT: Duration = Duration::from_millis(50);
const MAX_ERRORS_PER_TRY: usize = 50;

/// librdkafka's own logs stay at debug: failures surface as our errors and warnings. What
/// they say is kept, to tell why a metadata request timed out (a TLS or SASL failure): a
/// consumer gets some client errors with their reason (`error`), others only as a code from
/// `poll`, with the reason in librdkafka's `FAIL` log line.
#[derive(Default)]
struct Quiet {
    /// From `error`: the reason with the settings to check.
    error: Mutex<String>,
    /// The last `FAIL` log line (a connection failure's reason).
    failure: Mutex<String>,
}

fn locked(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Quiet {
    /// Why the client cannot work, as far as it told; `code` is an error `poll` returned.
    fn why(&self, code: Option<RDKafkaErrorCode>) -> String {
        let e = locked(&self.error);
        if !e.is_empty() {
            return e.clone();
        }
        failure_hint(code, &locked(&self.failure))
    }
}

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, msg: &str) {
        debug!(target: "librdkafka", "{fac}: {msg}");
        if fac == "FAIL" {
            *locked(&self.failure) = msg.to_string();
        }
    }

    fn error(&self, err: KafkaError, reason: &str) {
        debug!(target: "librdkafka", "{err}: {reason}");
        // "All brokers down" says less than the failure before it.
        let code = err.rdkafka_error_code();
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            *locked(&self.error) = failure_hint(code, reason);
        }
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
    pub fn open(
        bootstrap: &str,
        topic: &str,
        timeout: Duration,
        security: &Security,
    ) -> anyhow::Result<TopicReader> {
        let bs = bootstrap;
        validate_bootstrap(bs)?;
        let timeout_ms = timeout.as_millis().clamp(1000, i32::MAX as u128);
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", bs)
            // librdkafka's assign() needs a group; nothing is ever committed to it.
            .set("group.id", "meshprobe-consume")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("socket.connection.setup.timeout.ms", timeout_ms.to_string())
            .set_log_level(RDKafkaLogLevel::Warning);
        security.apply(&mut cfg);
        if let Some(w) = security.warning() {
            tracing::warn!("{w}");
        }
        let consumer: BaseConsumer<Quiet> = cfg
            .create_with_context(Quiet::default())
            .context("creating the Kafka consumer")?;

        // Short requests with polls between them: a poll is what hands client errors (a TLS
        // or SASL failure) to the context, so a failure can say why.
        let deadline = Instant::now() + timeout;
        let mut code = None;
        let md = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match consumer.fetch_metadata(Some(topic), left.min(METADATA_TRY)) {
                Ok(md) => break md,
                Err(_) if !left.is_zero() => {
                    // Serve what is queued (librdkafka's logs, client errors): a poll returns
                    // at each error, and otherwise after a short wait with nothing left.
                    for _ in 0..MAX_ERRORS_PER_TRY {
                        match consumer.poll(EVENT_WAIT) {
                            None => break,
                            Some(Err(e)) => code = e.rdkafka_error_code().or(code),
                            // Nothing is assigned yet: no message can come.
                            Some(Ok(_)) => {}
                        }
                    }
                }
                Err(e) => {
                    let last = consumer.context().why(code);
                    let why = if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last})")
                    };
                    bail!("cannot reach Kafka at {bs}: {e}{why}");
                }
            }
        };
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
    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

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
    use super::*;
    use crate::pb::record::Kind;
    use crate::sink::tests::summary;

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
}
