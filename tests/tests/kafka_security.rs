//! Kafka with TLS and SASL against a real broker (Tansu) in a harness namespace.
//!
//! Tansu 0.6 serves plain TCP only (its `--cert`/`--key` are never used), so TLS ends at a
//! harness proxy in front of it ([`TlsProxy`], with a certificate of a fresh test CA) and Tansu
//! advertises the proxy's port: every connection of the clients, bootstrap and after, is TLS.
//! SASL is Tansu's own (`--authentication`, SCRAM-SHA-256/512 users).
//!
//! The producer is the agent's (`KafkaSink`), run in this process on a thread that joined the
//! namespace; records are read back with `meshprobe consume`, through TLS (and SASL) as well.
//!
//! Not tested here (Tansu 0.6 cannot): SASL PLAIN (its handshake fails: the broker offers no
//! PLAIN), client certificates (no TLS listener, so no client-certificate check).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe::kafka_security::{Mechanism, Protocol, Security, SecurityArgs};
use meshprobe::pb::{self, Timestamping};
use meshprobe::sink::{KafkaOptions, KafkaSink, key};
use meshprobe_harness::agent::remove_agent_env;
use meshprobe_harness::child::{parse_json_line, run_with_timeout};
use meshprobe_harness::services::{Tansu, tansu_missing, wait_until};
use meshprobe_harness::tls::{TestPki, TlsProxy};
use meshprobe_harness::topo::add_addr;
use meshprobe_harness::{Netns, TestEnv};
use prometheus_client::registry::Registry;
use serde_json::Value;

const BROKER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 78, 1));
/// Tansu, plain TCP.
const PORT: u16 = 9092;
/// The TLS proxy in front of it (the port Tansu advertises).
const TLS_PORT: u16 = 9093;
const TOPIC: &str = "kafka-security-test";
/// Records each producer sends.
const RECORDS: u64 = 20;
/// How long a refused client is given to show its failure (a bound, not a speed figure: the
/// failure is logged on the first attempt).
const REFUSAL_WAIT: Duration = Duration::from_secs(30);

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

/// A namespace with the broker address on its loopback, a test CA and a certificate for the
/// address, Tansu advertising the TLS port, the topic, and the TLS proxy.
struct Setup {
    ns: Netns,
    pki: TestPki,
    tansu: Tansu,
}

impl Setup {
    fn new() -> Result<Setup> {
        let ns = Netns::new("kafkasec")?;
        add_addr(&ns, "lo", BROKER, 32)?;
        let pki = TestPki::new(BROKER)?;
        let tansu = Tansu::start_advertising(&ns, BROKER, PORT, TLS_PORT)?;
        tansu.create_topic(TOPIC, 1)?;
        Ok(Setup { ns, pki, tansu })
    }

    fn proxy(&self) -> Result<TlsProxy> {
        TlsProxy::start(
            &self.ns,
            SocketAddr::new(BROKER, TLS_PORT),
            SocketAddr::new(BROKER, PORT),
            &self.pki,
        )
    }

    /// A file in the PKI's directory (a password file).
    fn file(&self, name: &str, text: &str) -> Result<String> {
        let p = self.pki.dir().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    }
}

/// The agent's producer options with `security`.
fn opts(security: Security) -> KafkaOptions {
    KafkaOptions {
        brokers: format!("{BROKER}:{TLS_PORT}"),
        topic: TOPIC.into(),
        client_id: "meshprobe-test".into(),
        compression: "zstd".into(),
        buffer_messages: 1000,
        conn_timeout: Duration::from_secs(5),
        security,
    }
}

/// Checked settings, as the agent reads them (no KAFKA_PROPERTY_* variables).
fn security(a: SecurityArgs) -> Result<Security> {
    Ok(Security::from_args(&a, [])?)
}

fn tls_args(ca: Option<&Path>) -> SecurityArgs {
    SecurityArgs {
        kafka_security_protocol: Protocol::Ssl,
        kafka_ssl_ca_file: ca.map(Path::to_path_buf),
        ..Default::default()
    }
}

fn scram_args(ca: &Path, mechanism: Mechanism, user: &str, password_file: &str) -> SecurityArgs {
    SecurityArgs {
        kafka_security_protocol: Protocol::SaslSsl,
        kafka_ssl_ca_file: Some(ca.to_path_buf()),
        kafka_sasl_mechanism: Some(mechanism),
        kafka_sasl_username: Some(user.into()),
        kafka_sasl_password_file: Some(password_file.into()),
        ..Default::default()
    }
}

/// Queues [`RECORDS`] summaries from `src`.
fn send(sink: &KafkaSink, src: &str) -> usize {
    for w in 0..RECORDS {
        let rec = pb::Record {
            kind: Some(pb::record::Kind::Summary(pb::WindowSummary {
                src: src.into(),
                dst: "n2".into(),
                dst_address: "198.18.0.2:862".into(),
                window_seq: w,
                window_length_ns: 10_000_000_000,
                sent: 10,
                received: 10,
                timestamping: Timestamping::Kernel as i32,
                ..Default::default()
            })),
        };
        sink.send(&key(src, "n2"), &rec);
    }
    RECORDS as usize
}

/// The value of one sample in the registry's text exposition.
fn metric(reg: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// What this process logged (the producer logs from librdkafka's threads): one global
/// subscriber writing into a buffer.
fn logs() -> String {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(b.clone()))
            .try_init();
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Echoed: the test's output shows what an operator would see.
        eprint!("{}", String::from_utf8_lossy(b));
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `meshprobe consume --json` in the namespace with `args`: exit success, JSON lines, stderr.
fn consume(env: &TestEnv, ns: &Netns, bootstrap: &str, args: &[&str]) -> Result<Consumed> {
    let mut cmd = ns.command([env.mp.bin.as_os_str()]);
    cmd.args([
        "consume",
        "--json",
        "--kafka-bootstrap-servers",
        bootstrap,
        "--kafka-topic",
        TOPIC,
        "--timeout",
        "10s",
    ]);
    cmd.args(args);
    // The caller's shell must not add settings (a KAFKA_SSL_CA_FILE would trust the CA).
    remove_agent_env(&mut cmd);
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(Consumed {
        ok: out.status.success(),
        lines: stdout.lines().filter_map(parse_json_line).collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

struct Consumed {
    ok: bool,
    lines: Vec<Value>,
    stderr: String,
}

/// Summaries read per `src`.
fn count_from(lines: &[Value], src: &str) -> usize {
    lines.iter().filter(|v| v["src"] == src).count()
}

#[test]
fn tls_delivers_with_the_ca_and_refuses_clients_without_it() -> Result<()> {
    let test = "tls_delivers_with_the_ca_and_refuses_clients_without_it";
    let Some(env) = acquire(test)? else {
        return Ok(());
    };
    let _ = logs();
    let s = Setup::new()?;
    let proxy = s.proxy()?;
    let ca = s.pki.ca_file();
    let tls = format!("{BROKER}:{TLS_PORT}");

    // With the CA: everything delivered, through TLS.
    let (sent, undelivered, reg) = s.ns.enter(|| -> Result<_> {
        let mut reg = Registry::default();
        let sink = KafkaSink::new(&opts(security(tls_args(Some(&ca)))?), &mut reg)?;
        let sent = send(&sink, "trusted");
        let undelivered = sink.flush(Duration::from_secs(60));
        Ok((sent, undelivered, reg))
    })??;
    ensure!(
        undelivered == 0,
        "{undelivered} records undelivered over TLS; tansu:\n{}",
        s.tansu.stderr_text()
    );
    assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), sent as f64);
    assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 1.0);
    ensure!(
        proxy.handshakes() > 0,
        "the producer never went through TLS"
    );

    // Without the CA (the system's CAs do not know the test CA): refused at the handshake,
    // logged with OpenSSL's reason, nothing delivered, the records stay buffered, no crash.
    // (librdkafka reports it as a TLS error, with the settings to check, or at first as a
    // transport failure: the reason is the part both carry.)
    let failed_before = proxy.failed_handshakes();
    s.ns.enter(|| -> Result<()> {
        let mut reg = Registry::default();
        let sink = KafkaSink::new(&opts(security(tls_args(None))?), &mut reg)?;
        let sent = send(&sink, "untrusted");
        let refused = wait_until(REFUSAL_WAIT, Duration::from_millis(100), || {
            proxy.failed_handshakes() > failed_before
                && logs().contains("certificate verify failed")
        });
        let log = logs();
        ensure!(
            refused,
            "no refused handshake or no TLS error logged:\n{log}"
        );
        assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), 0.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_failed_total"), 0.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 0.0);
        assert_eq!(sink.buffered(), sent, "records stay buffered");
        // At shutdown they are given up, counted (the broker never had them).
        assert_eq!(sink.flush(Duration::from_millis(500)), sent);
        Ok(())
    })??;

    // The consumer without the CA: an error with OpenSSL's reason.
    let c = consume(&env, &s.ns, &tls, &["--kafka-security-protocol", "ssl"])?;
    ensure!(
        !c.ok && c.lines.is_empty(),
        "consume without the CA read something"
    );
    ensure!(
        c.stderr.contains("certificate verify failed"),
        "consume without the CA:\n{}",
        c.stderr
    );
    // Plain Kafka to the TLS port: refused as well.
    let c = consume(&env, &s.ns, &tls, &[])?;
    ensure!(
        !c.ok && c.lines.is_empty(),
        "plaintext to the TLS port read something"
    );
    // librdkafka reports this one as a bare transport failure (no TLS error to name).
    eprintln!("plaintext to the TLS port: {}", c.stderr.trim());

    // With the CA: exactly the trusted producer's records, read through TLS.
    let ca_s = ca.display().to_string();
    let c = consume(
        &env,
        &s.ns,
        &tls,
        &[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-file",
            &ca_s,
        ],
    )?;
    ensure!(c.ok, "consume over TLS failed: {}", c.stderr);
    assert_eq!(count_from(&c.lines, "trusted"), sent);
    assert_eq!(count_from(&c.lines, "untrusted"), 0);
    assert_eq!(c.lines.len(), sent);
    Ok(())
}

#[test]
fn scram_over_tls_right_password_delivers_wrong_is_refused() -> Result<()> {
    let test = "scram_over_tls_right_password_delivers_wrong_is_refused";
    let Some(env) = acquire(test)? else {
        return Ok(());
    };
    let _ = logs();
    let mut s = Setup::new()?;
    s.tansu.create_user("agent", "agent-pw-1", "scram512")?;
    s.tansu.create_user("reader", "reader-pw-1", "scram256")?;
    s.tansu.require_authentication()?;
    let proxy = s.proxy()?;
    let ca = s.pki.ca_file();
    let ca_s = ca.display().to_string();
    let tls = format!("{BROKER}:{TLS_PORT}");
    // As `echo` writes it: the trailing newline is no part of the password.
    let agent_pw = s.file("agent-password", "agent-pw-1\n")?;
    let wrong_pw = s.file("wrong-password", "agent-pw-2")?;
    let reader_pw = s.file("reader-password", "reader-pw-1")?;

    // The right password (SCRAM-SHA-512 over TLS): everything delivered.
    let (sent, undelivered, reg) = s.ns.enter(|| -> Result<_> {
        let mut reg = Registry::default();
        let sec = security(scram_args(&ca, Mechanism::ScramSha512, "agent", &agent_pw))?;
        let sink = KafkaSink::new(&opts(sec), &mut reg)?;
        let sent = send(&sink, "right");
        let undelivered = sink.flush(Duration::from_secs(60));
        Ok((sent, undelivered, reg))
    })??;
    ensure!(
        undelivered == 0,
        "{undelivered} records undelivered with SCRAM; tansu:\n{}",
        s.tansu.stderr_text()
    );
    assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), sent as f64);
    ensure!(
        proxy.handshakes() > 0,
        "the producer never went through TLS"
    );

    // A wrong password: refused, logged with the settings to check, nothing delivered, the
    // records stay buffered, no crash; the password is in no log line.
    s.ns.enter(|| -> Result<()> {
        let mut reg = Registry::default();
        let sec = security(scram_args(&ca, Mechanism::ScramSha512, "agent", &wrong_pw))?;
        let sink = KafkaSink::new(&opts(sec), &mut reg)?;
        let sent = send(&sink, "wrong");
        let refused = wait_until(REFUSAL_WAIT, Duration::from_millis(100), || {
            logs().contains("Kafka authentication failed")
        });
        let log = logs();
        ensure!(refused, "no authentication failure logged:\n{log}");
        ensure!(
            log.contains("KAFKA_SASL_PASSWORD_FILE"),
            "the log names what to check:\n{log}"
        );
        ensure!(!log.contains("agent-pw-"), "a password was logged:\n{log}");
        assert_eq!(metric(&reg, "meshprobe_kafka_delivered_total"), 0.0);
        assert_eq!(metric(&reg, "meshprobe_kafka_connected"), 0.0);
        assert_eq!(sink.buffered(), sent, "records stay buffered");
        assert_eq!(sink.flush(Duration::from_millis(500)), sent);
        Ok(())
    })??;

    // Without SASL, straight to the broker: refused (authentication is really required).
    let c = consume(&env, &s.ns, &format!("{BROKER}:{PORT}"), &[])?;
    ensure!(
        !c.ok && c.lines.is_empty(),
        "a client without SASL read something"
    );
    // The consumer with a wrong password: an error naming authentication and the settings.
    let sasl = |mechanism: &'static str, user: &'static str, pw: &str| {
        [
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-ssl-ca-file",
            &ca_s,
            "--kafka-sasl-mechanism",
            mechanism,
            "--kafka-sasl-username",
            user,
            "--kafka-sasl-password-file",
            pw,
        ]
        .map(str::to_string)
    };
    let a = sasl("SCRAM-SHA-256", "reader", &wrong_pw);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let c = consume(&env, &s.ns, &tls, &a)?;
    ensure!(
        !c.ok && c.lines.is_empty(),
        "a wrong password read something"
    );
    ensure!(
        c.stderr.contains("authentication failed") && c.stderr.contains("KAFKA_SASL_PASSWORD_FILE"),
        "consume with a wrong password:\n{}",
        c.stderr
    );
    // The reader (SCRAM-SHA-256 over TLS): exactly the right producer's records.
    let a = sasl("SCRAM-SHA-256", "reader", &reader_pw);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let c = consume(&env, &s.ns, &tls, &a)?;
    ensure!(c.ok, "consume with SCRAM-SHA-256 failed: {}", c.stderr);
    assert_eq!(count_from(&c.lines, "right"), sent);
    assert_eq!(count_from(&c.lines, "wrong"), 0);
    assert_eq!(c.lines.len(), sent);
    Ok(())
}
