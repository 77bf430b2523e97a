//! Kafka producer for records: protobuf values keyed `src->dst`, idempotent, buffered while
//! the broker is away, and never losing a record silently (every drop and failure is counted
//! in Prometheus and logged with its key).
use std::{
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use prost::Message as _;
use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
    message::DeliveryResult,
    producer::{BaseRecord, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer},
};
use tracing::{debug, error, info, warn};

use super::SinkError;
use crate::{
    kafka_security::{Security, failure_hint},
    pb::{self, record::Kind},
};

/// Values of MESHPROBE_KAFKA_COMPRESSION (librdkafka's `compression.type`).
pub const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Upper bound of librdkafka's `queue.buffering.max.messages`.
const MAX_BUFFER: usize = i32::MAX as usize;

/// Producer queue byte cap: room for this much per record (summaries are ~300 bytes), so the
/// message count is the limit that bites.
const BYTES_PER_RECORD: usize = 2048;

/// How often librdkafka reports broker states (used to notice the broker is back).
const STATS_INTERVAL_MS: u32 = 5000;

/// The same client error is logged at most once per this interval.
const ERROR_REPEAT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `host:port[,host:port]` (KAFKA_BOOTSTRAP_SERVERS).
    pub brokers: String,
    pub topic: String,
    /// Producer `client.id` (KAFKA_PRODUCER_GROUP).
    pub client_id: String,
    /// One of [`COMPRESSIONS`].
    pub compression: String,
    /// Records buffered while the broker is away; beyond that, sends are dropped.
    pub buffer_messages: usize,
    /// Socket connect and request timeout (CONN_TIMEOUT).
    pub conn_timeout: Duration,
    /// TLS, SASL and passed-through properties, checked.
    pub security: Security,
}

fn invalid(setting: &'static str, value: &str, fix: impl Into<String>) -> SinkError {
    SinkError::Invalid {
        setting,
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// Checks every Kafka setting without touching the network, so a bad configuration is reported
/// before anything is attached.
pub fn validate(opts: &KafkaOptions) -> Result<(), SinkError> {
    validate_bootstrap(&opts.brokers)?;
    let t = &opts.topic;
    if t.is_empty()
        || t.len() > 249
        || t == "."
        || t == ".."
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "KAFKA_TOPIC",
            t,
            "a topic name is 1 to 249 characters of a-z A-Z 0-9 . _ -",
        ));
    }
    if !COMPRESSIONS.contains(&opts.compression.as_str()) {
        return Err(invalid(
            "MESHPROBE_KAFKA_COMPRESSION",
            &opts.compression,
            format!("use one of {}", COMPRESSIONS.join(", ")),
        ));
    }
    if opts.buffer_messages == 0 || opts.buffer_messages > MAX_BUFFER {
        return Err(invalid(
            "MESHPROBE_KAFKA_BUFFER_MESSAGES",
            &opts.buffer_messages.to_string(),
            format!("use a number of records from 1 to {MAX_BUFFER}"),
        ));
    }
    if opts.client_id.trim().is_empty() {
        return Err(invalid(
            "KAFKA_PRODUCER_GROUP",
            &opts.client_id,
            "must not be empty (it is the producer's client.id)",
        ));
    }
    if opts.conn_timeout.is_zero() {
        return Err(invalid("CONN_TIMEOUT", "0", "use at least 1 second"));
    }
    Ok(())
}

/// Checks a bootstrap list: `host:port[,host:port]`, IPv6 hosts in brackets.
pub fn validate_bootstrap(list: &str) -> Result<(), SinkError> {
    let bad = |why: String| {
        invalid(
            "KAFKA_BOOTSTRAP_SERVERS",
            list,
            format!("{why}; expected host:port[,host:port], e.g. kafka-0:9092,[fd00::1]:9092"),
        )
    };
    if list.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    for entry in list.split(',').map(str::trim) {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(bad(format!("{entry:?} has no port")));
        };
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(bad(format!("{entry:?}: bad port {port:?}")));
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            // A name or an IPv4 address; an unbracketed IPv6 address has more colons.
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !host_ok {
            return Err(bad(format!("{entry:?}: bad host {host:?}")));
        }
    }
    Ok(())
}

/// What a delivery report or a drop log needs to name the record.
struct Meta {
    key: String,
    kind: &'static str,
    /// `window_seq` of a summary, `seq` of a probe.
    seq: u64,
}

impl Meta {
    fn of(key: &str, rec: &pb::Record) -> Meta {
        let (kind, seq) = match &rec.kind {
            Some(Kind::Summary(s)) => ("summary", s.window_seq),
            Some(Kind::Probe(p)) => ("probe", u64::from(p.seq)),
            Some(Kind::Zone(z)) => ("zone", z.window_seq),
            None => ("empty", 0),
        };
        Meta {
            key: key.to_string(),
            kind,
            seq,
        }
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = if self.kind != "probe" {
            "window_seq"
        } else {
            "seq"
        };
        write!(f, "key {} {} {seq} {}", self.key, self.kind, self.seq)
    }
}

#[derive(Clone, Default)]
struct Metrics {
    delivered: Counter,
    failed: Counter,
    dropped: Counter,
    /// Records handed to librdkafka and not yet reported back.
    buffered: Gauge,
    connected: Gauge,
}

const LINK_UNKNOWN: u8 = 0;
const LINK_UP: u8 = 1;
const LINK_DOWN: u8 = 2;

/// Callbacks of the producer (run on its polling thread).
struct Ctx {
    brokers: String,
    buffer_messages: usize,
    m: Metrics,
    link: AtomicU8,
    /// Last connection error of a broker: the reason shown when all of them are down.
    last_transport: Mutex<String>,
    /// Last other client error and when it was logged (deduplication).
    last_error: Mutex<Option<(String, Instant)>>,
}

impl Ctx {
    fn mark_up(&self) {
        if self.link.swap(LINK_UP, Ordering::Relaxed) == LINK_DOWN {
            info!(brokers = %self.brokers, "Kafka reachable again; sending buffered records");
        }
        self.m.connected.set(1);
    }

    fn mark_down(&self, reason: &str) {
        self.m.connected.set(0);
        if self.link.swap(LINK_DOWN, Ordering::Relaxed) != LINK_DOWN {
            let last = self
                .last_transport
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let why = if last.is_empty() { reason } else { &last };
            warn!(
                brokers = %self.brokers,
                "Kafka unreachable ({why}); buffering up to {} records until it is back",
                self.buffer_messages
            );
        }
    }

    /// Whether `msg` was not logged within [`ERROR_REPEAT`] (and remembers it).
    fn first_in_a_while(&self, msg: &str) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((m, at)) = last.as_ref()
            && m == msg
            && now.duration_since(*at) < ERROR_REPEAT
        {
            return false;
        }
        *last = Some((msg.to_string(), now));
        true
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        // Connection failures also arrive through `error`, which reports them once per outage.
        if fac == "FAIL" {
            debug!(target: "librdkafka", "{fac}: {msg}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac}: {msg}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }

    fn error(&self, err: KafkaError, reason: &str) {
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.mark_down(reason),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                debug!(target: "librdkafka", "{reason}");
                *self
                    .last_transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = reason.to_string();
            }
            Some(code @ (RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)) => {
                // Not a passing outage: nothing is delivered until the settings or the broker
                // change. Logged once a minute (the reason varies between retries).
                let msg = failure_hint(Some(code), reason);
                *self
                    .last_transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = msg.clone();
                if self.first_in_a_while(&format!("{code:?}")) {
                    error!(
                        brokers = %self.brokers,
                        "Kafka {msg}; records stay buffered (up to {})",
                        self.buffer_messages
                    );
                }
            }
            Some(RDKafkaErrorCode::Fatal) => {
                error!(brokers = %self.brokers, "Kafka producer fatal error: {reason}")
            }
            _ => {
                let msg = format!("{err}: {reason}");
                if self.first_in_a_while(&msg) {
                    warn!(brokers = %self.brokers, "Kafka client error: {msg}");
                }
            }
        }
    }

    fn stats_raw(&self, json: &[u8]) {
        // Only the broker states matter: any broker UP means we are connected. Not being UP is
        // no outage (idle connections close); outages come from `error`.
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let up = v["brokers"]
            .as_object()
            .is_some_and(|b| b.values().any(|b| b["state"] == "UP"));
        if up {
            self.mark_up();
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Meta>;

    fn delivery(&self, result: &DeliveryResult<'_>, meta: Box<Meta>) {
        self.m.buffered.dec();
        match result {
            Ok(_) => {
                self.m.delivered.inc();
                self.mark_up();
            }
            Err((e, _))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) =>
            {
                // Purged by `flush` after its timeout: never sent (or never acknowledged).
                self.m.dropped.inc();
                warn!(record = %meta, "Kafka record dropped: undelivered at shutdown");
            }
            Err((e, _)) => {
                self.m.failed.inc();
                warn!(record = %meta, error = %e, "Kafka delivery failed");
            }
        }
    }
}

/// The Kafka side of [`super::Sinks`].
pub struct KafkaSink {
    producer: ThreadedProducer<Ctx>,
    topic: String,
}

impl KafkaSink {
    /// Validates `opts`, creates the producer (it connects in the background: an absent broker
    /// is no error here) and registers the `meshprobe_kafka_*` metrics.
    pub fn new(opts: &KafkaOptions, registry: &mut Registry) -> Result<KafkaSink, SinkError> {
        validate(opts)?;
        let m = Metrics::default();
        registry.register(
            "meshprobe_kafka_delivered",
            "Records acknowledged by Kafka",
            m.delivered.clone(),
        );
        registry.register(
            "meshprobe_kafka_failed",
            "Records Kafka or the producer rejected (each is logged)",
            m.failed.clone(),
        );
        registry.register(
            "meshprobe_kafka_dropped",
            "Records dropped because the buffer was full or at shutdown (each is logged)",
            m.dropped.clone(),
        );
        registry.register(
            "meshprobe_kafka_buffered",
            "Records waiting in the producer queue",
            m.buffered.clone(),
        );
        registry.register(
            "meshprobe_kafka_connected",
            "1 while a Kafka broker is reachable (best effort)",
            m.connected.clone(),
        );
        let conn_ms = opts.conn_timeout.as_millis().min(i32::MAX as u128) as u64;
        let kbytes = (opts.buffer_messages.saturating_mul(BYTES_PER_RECORD) / 1024)
            .clamp(16 * 1024, i32::MAX as usize);
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &opts.brokers)
            .set("client.id", &opts.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &opts.compression)
            // Infinite: while the broker is away records wait in the queue, bounded by the
            // queue limits below, instead of expiring.
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                opts.buffer_messages.to_string(),
            )
            .set("queue.buffering.max.kbytes", kbytes.to_string())
            .set("linger.ms", "50")
            .set(
                "socket.connection.setup.timeout.ms",
                conn_ms.max(1000).to_string(),
            )
            .set("socket.timeout.ms", conn_ms.clamp(10, 300_000).to_string())
            .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
            .set_log_level(RDKafkaLogLevel::Warning);
        opts.security.apply(&mut cfg);
        info!(brokers = %opts.brokers, "Kafka producer: {}", opts.security.describe());
        if let Some(w) = opts.security.warning() {
            warn!("{w}");
        }
        let ctx = Ctx {
            brokers: opts.brokers.clone(),
            buffer_messages: opts.buffer_messages,
            m,
            link: AtomicU8::new(LINK_UNKNOWN),
            last_transport: Mutex::new(String::new()),
            last_error: Mutex::new(None),
        };
        let producer = cfg.create_with_context(ctx).map_err(SinkError::Producer)?;
        Ok(KafkaSink {
            producer,
            topic: opts.topic.clone(),
        })
    }

    /// Queues one record (protobuf value, `key` = `src->dst`). Never blocks: when the buffer is
    /// full the record is dropped, counted and logged.
    pub fn send(&self, key: &str, rec: &pb::Record) {
        let payload = rec.encode_to_vec();
        let m = &self.producer.context().m;
        // Counted before the send so a fast delivery report cannot take the gauge below zero.
        m.buffered.inc();
        let r = BaseRecord::with_opaque_to(&self.topic, Box::new(Meta::of(key, rec)))
            .key(key)
            .payload(&payload);
        if let Err((e, r)) = self.producer.send(r) {
            m.buffered.dec();
            let meta = r.delivery_opaque;
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                m.dropped.inc();
                warn!(
                    record = %meta,
                    "Kafka record dropped: buffer full ({} records)",
                    self.producer.context().buffer_messages
                );
            } else {
                m.failed.inc();
                warn!(record = %meta, error = %e, "Kafka record not queued");
            }
        }
    }

    /// Waits up to `timeout` for every buffered record to be acknowledged. Records still
    /// undelivered then are purged, counted as dropped and logged one by one; returns how many.
    pub fn flush(&self, timeout: Duration) -> usize {
        if self.producer.flush(timeout).is_ok() {
            return 0;
        }
        let m = &self.producer.context().m;
        let before = m.dropped.get();
        // Purged records come back through `delivery`, which counts and logs them.
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let _ = self.producer.flush(Duration::from_secs(1));
        let purged = m.dropped.get().saturating_sub(before) as usize;
        purged + self.buffered()
    }

    /// Records in the producer queue (not yet acknowledged or reported failed).
    pub fn buffered(&self) -> usize {
        self.producer.context().m.buffered.get().max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> KafkaOptions {
        KafkaOptions {
            brokers: "kafka-0:9092,198.18.0.1:9092,[fd00::1]:9093".into(),
            topic: "distributedTrace".into(),
            client_id: "meshprobe".into(),
            compression: "zstd".into(),
            buffer_messages: 100_000,
            conn_timeout: Duration::from_secs(10),
            security: Security::default(),
        }
    }

    fn setting_of(o: &KafkaOptions) -> &'static str {
        match validate(o) {
            Err(SinkError::Invalid { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn valid_options_pass() {
        validate(&opts()).unwrap();
        for c in COMPRESSIONS {
            validate(&KafkaOptions {
                compression: c.into(),
                ..opts()
            })
            .unwrap();
        }
    }

    #[test]
    fn each_bad_setting_is_named() {
        for b in [
            "",
            "kafka",
            "kafka:",
            "kafka:0",
            "kafka:99999",
            ":9092",
            "fd00::1:9092",
            "[fd00::zz]:9092",
            "a:9092,,b:9092",
            "tcp://kafka:9092",
        ] {
            let o = KafkaOptions {
                brokers: b.into(),
                ..opts()
            };
            assert_eq!(setting_of(&o), "KAFKA_BOOTSTRAP_SERVERS", "{b:?}");
        }
        for t in ["", "a b", "x/y", ".."] {
            let o = KafkaOptions {
                topic: t.into(),
                ..opts()
            };
            assert_eq!(setting_of(&o), "KAFKA_TOPIC", "{t:?}");
        }
        let o = KafkaOptions {
            compression: "brotli".into(),
            ..opts()
        };
        assert_eq!(setting_of(&o), "MESHPROBE_KAFKA_COMPRESSION");
        let o = KafkaOptions {
            buffer_messages: 0,
            ..opts()
        };
        assert_eq!(setting_of(&o), "MESHPROBE_KAFKA_BUFFER_MESSAGES");
    }

    #[test]
    fn error_message_names_setting_value_and_fix() {
        let o = KafkaOptions {
            compression: "brotli".into(),
            ..opts()
        };
        let msg = validate(&o).unwrap_err().to_string();
        assert_eq!(
            msg,
            "MESHPROBE_KAFKA_COMPRESSION=\"brotli\": use one of none, gzip, snappy, lz4, zstd"
        );
    }

    #[test]
    fn metrics_are_registered_with_their_names() {
        let mut reg = Registry::default();
        // No broker needed: the producer connects in the background.
        let sink = KafkaSink::new(
            &KafkaOptions {
                brokers: "127.0.0.1:1".into(),
                ..opts()
            },
            &mut reg,
        )
        .unwrap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for name in [
            "meshprobe_kafka_delivered_total",
            "meshprobe_kafka_failed_total",
            "meshprobe_kafka_dropped_total",
            "meshprobe_kafka_buffered",
            "meshprobe_kafka_connected",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in\n{text}");
        }
        assert_eq!(sink.buffered(), 0);
    }

    #[test]
    fn meta_names_the_record() {
        let rec = pb::Record {
            kind: Some(Kind::Summary(crate::sink::tests::summary("a", "b", 9))),
        };
        assert_eq!(
            Meta::of("a->b", &rec).to_string(),
            "key a->b summary window_seq 9"
        );
        let z = crate::sink::tests::zone("a", "eu-1", 9);
        let key = crate::sink::zone_key(&z.src, &z.dst_zone);
        let rec = pb::Record {
            kind: Some(Kind::Zone(z)),
        };
        assert_eq!(
            Meta::of(&key, &rec).to_string(),
            "key a->zone:eu-1 zone window_seq 9"
        );
    }
}
