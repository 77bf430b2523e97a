//! The Kafka sink against a real broker (Tansu) in a harness namespace: records arrive exactly
//! once and in order per key (read back with `meshprobe consume --json`), records wait in the
//! buffer while the broker is away, and a full buffer drops exactly the excess, counted.
//!
//! The producer runs in this process, on a thread that joined the namespace: librdkafka's
//! threads are created from it and inherit the namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe::pb::{self, Timestamping};
use meshprobe::sink::{KafkaOptions, KafkaSink, key};
use meshprobe_harness::child::{parse_json_line, run_with_timeout};
use meshprobe_harness::services::{Tansu, tansu_missing};
use meshprobe_harness::topo::add_addr;
use meshprobe_harness::{Netns, TestEnv};
use prometheus_client::registry::Registry;
use serde_json::Value;

const BROKER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 77, 1));
const PORT: u16 = 9092;
const TOPIC: &str = "kafka-sink-test";
const PAIRS: [(&str, &str); 4] = [("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n2")];

/// A namespace with the broker address on its loopback.
fn broker_ns() -> Result<Netns> {
    let ns = Netns::new("kafka")?;
    add_addr(&ns, "lo", BROKER, 32)?;
    Ok(ns)
}

/// `None` (after printing why) when the test cannot run here.
fn acquire(test: &str) -> Result<Option<TestEnv>> {
    let Some(env) = TestEnv::acquire(test, &[])? else {
        return Ok(None);
    };
    if let Some(why) = tansu_missing() {
        meshprobe_harness::env::skip(test, &why);
        return Ok(None);
    }
    Ok(Some(env))
}

fn opts(buffer_messages: usize) -> KafkaOptions {
    KafkaOptions {
        brokers: format!("{BROKER}:{PORT}"),
        topic: TOPIC.into(),
        client_id: "meshprobe-test".into(),
        compression: "zstd".into(),
        buffer_messages,
        conn_timeout: Duration::from_secs(5),
        security: Default::default(),
    }
}

fn summary(src: &str, dst: &str, window_seq: u64) -> pb::WindowSummary {
    pb::WindowSummary {
        src: src.into(),
        dst: dst.into(),
        dst_address: "198.18.0.2:862".into(),
        window_seq,
        window_start_tai_ns: window_seq * 10_000_000_000,
        window_length_ns: 10_000_000_000,
        sent: 10,
        received: 10,
        timestamping: Timestamping::Kernel as i32,
        ..Default::default()
    }
}

fn send_summaries(sink: &KafkaSink, windows: std::ops::Range<u64>) -> usize {
    let mut n = 0;
    for w in windows {
        for (src, dst) in PAIRS {
            let rec = pb::Record {
                kind: Some(pb::record::Kind::Summary(summary(src, dst, w))),
            };
            sink.send(&key(src, dst), &rec);
            n += 1;
        }
    }
    n
}

/// The value of one sample in the registry's text exposition.
fn metric(reg: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// `meshprobe consume --json` in the namespace; the JSON lines it printed.
fn consume(env: &TestEnv, ns: &Netns) -> Result<Vec<Value>> {
    let mut cmd = ns.command([env.mp.bin.as_os_str()]);
    cmd.args([
        "consume",
        "--json",
        "--kafka-bootstrap-servers",
        &format!("{BROKER}:{PORT}"),
        "--kafka-topic",
        TOPIC,
        "--timeout",
        "10s",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "consume failed ({}): {stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    let json: Vec<Value> = lines.iter().filter_map(|l| parse_json_line(l)).collect();
    ensure!(
        json.len() == lines.len(),
        "consume --json printed non-JSON lines:\n{stdout}"
    );
    Ok(json)
}

/// Every (pair, window) of `windows` exactly once, and in window order per pair.
fn check_exactly_once_in_order(lines: &[Value], windows: std::ops::Range<u64>) -> Result<()> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in lines {
        ensure!(v["type"] == "summary", "not a summary: {v}");
        ensure!(v["timestamping"] == "TIMESTAMPING_KERNEL", "enum name: {v}");
        let k = format!(
            "{}->{}",
            v["src"].as_str().unwrap(),
            v["dst"].as_str().unwrap()
        );
        per_key
            .entry(k)
            .or_default()
            .push(v["window_seq"].as_u64().context("window_seq")?);
    }
    let want: Vec<u64> = windows.collect();
    ensure!(per_key.len() == PAIRS.len(), "keys: {:?}", per_key.keys());
    for (k, seqs) in &per_key {
        ensure!(
            *seqs == want,
            "{k}: got window_seq {seqs:?}, want {want:?} (exactly once, in order)"
        );
    }
    Ok(())
}

#[test]
fn summaries_arrive_exactly_once_in_order_per_key() -> Result<()> {
    let test = "summaries_arrive_exactly_once_in_order_per_key";
    let Some(env) = acquire(test)? else {
        return Ok(());
    };
    let ns = broker_ns()?;
    let tansu = Tansu::start(&ns, BROKER, PORT)?;
    // Several partitions: order is only promised per key (one key, one partition).
    tansu.create_topic(TOPIC, 3)?;

    let (sent, undelivered, reg) = ns.enter(|| -> Result<_> {
        let mut reg = Registry::default();
        let sink = KafkaSink::new(&opts(1000), &mut reg)?;
        let sent = send_summaries(&sink, 0..50);
        // A safety limit: flush returns as soon as everything is acknowledged.
        let undelivered = sink.flush(Duration::from_secs(30));
        Ok((sent, undelivered, reg))
    })??;
    ensure!(
        undelivered == 0,
        "{undelivered} records undelivered; tansu:\n{}",
        tansu.stderr_text()
    );
    assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), sent as f64);
    assert_eq!(metric(&reg, "meshprobe_kafka_failed_total"), 0.0);
    assert_eq!(metric(&reg, "meshprobe_kafka_dropped_total"), 0.0);
    assert_eq!(metric(&reg, "meshprobe_kafka_buffered"), 0.0);
    assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 1.0);

    let lines = consume(&env, &ns)?;
    ensure!(lines.len() == sent, "consumed {} of {sent}", lines.len());
    check_exactly_once_in_order(&lines, 0..50)
}

#[test]
fn records_wait_for_a_late_broker() -> Result<()> {
    let test = "records_wait_for_a_late_broker";
    let Some(env) = acquire(test)? else {
        return Ok(());
    };
    let ns = broker_ns()?;
    let mut reg = Registry::default();
    // The producer starts while nothing listens: records must wait, not expire or fail.
    let sink = ns.enter(|| KafkaSink::new(&opts(1000), &mut reg))??;
    let sent = send_summaries(&sink, 0..5);
    // A negative check, not a speed figure: with nothing listening (connections are refused
    // at once) records can only stay buffered, whatever the machine's speed; the wait gives a
    // defect (expiry, failure on a refused connection) time to show.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.buffered(), sent);
    assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 0.0);

    let tansu = Tansu::start(&ns, BROKER, PORT)?;
    tansu.create_topic(TOPIC, 3)?;
    // A safety limit: flush returns as soon as everything is acknowledged.
    let undelivered = sink.flush(Duration::from_secs(60));
    ensure!(
        undelivered == 0,
        "{undelivered} records undelivered after the broker came up; tansu:\n{}",
        tansu.stderr_text()
    );
    assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), sent as f64);
    assert_eq!(metric(&reg, "meshprobe_kafka_failed_total"), 0.0);
    assert_eq!(metric(&reg, "meshprobe_kafka_dropped_total"), 0.0);
    assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 1.0);
    drop(sink);

    let lines = consume(&env, &ns)?;
    ensure!(lines.len() == sent, "consumed {} of {sent}", lines.len());
    check_exactly_once_in_order(&lines, 0..5)
}

#[test]
fn full_buffer_drops_exactly_the_excess() -> Result<()> {
    let test = "full_buffer_drops_exactly_the_excess";
    // Needs no broker, only a namespace where nothing listens.
    let Some(_env) = TestEnv::acquire(test, &[])? else {
        return Ok(());
    };
    let ns = broker_ns()?;
    ns.enter(|| -> Result<()> {
        let mut reg = Registry::default();
        let sink = KafkaSink::new(&opts(10), &mut reg)?;
        for seq in 0..15 {
            let rec = pb::Record {
                kind: Some(pb::record::Kind::Summary(summary("n1", "n2", seq))),
            };
            sink.send("n1->n2", &rec);
        }
        assert_eq!(metric(&reg, "meshprobe_kafka_dropped_total"), 5.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_failed_total"), 0.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_buffered"), 10.0);
        assert_eq!(sink.buffered(), 10);
        // At shutdown the 10 buffered records are given up: counted as dropped too. Nothing
        // listens, so no flush timeout could see one delivered: the 500 ms is no speed figure.
        assert_eq!(sink.flush(Duration::from_millis(500)), 10);
        assert_eq!(metric(&reg, "meshprobe_kafka_dropped_total"), 15.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_buffered"), 0.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), 0.0);
        Ok(())
    })?
}
