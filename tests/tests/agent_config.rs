//! Issue 3: bad configuration exits 2 with a message naming the setting, before anything is
//! attached; an unreachable ZooKeeper or Kafka at start is retried, not fatal, and never a
//! panic.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use meshprobe_harness::Netns;
use meshprobe_harness::agent::{
    Agent, AgentConfig, Cluster, HEARTBEAT_PATH, KAFKA_PORT, TEST_TOPIC, ZK_PORT, num, summary_key,
    window_now,
};
use meshprobe_harness::env::TestEnv;
use meshprobe_harness::services::{Tansu, ZooKeeper, tansu_missing, wait_until, zookeeper_missing};
use meshprobe_harness::topo::Family;

/// (what, settings as env, extra flags, names any of which the message must contain)
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
    Vec<&'static str>,
);

fn cases() -> Vec<Case> {
    vec![
        (
            "interval not a duration",
            vec![("MESHPROBE_INTERVAL", "abc")],
            vec![],
            vec!["MESHPROBE_INTERVAL", "--interval"],
        ),
        (
            "jitter out of range",
            vec![("MESHPROBE_JITTER", "90")],
            vec![],
            vec!["MESHPROBE_JITTER", "--jitter"],
        ),
        (
            "jitter out of range, as a flag",
            vec![],
            vec!["--jitter", "90"],
            vec!["MESHPROBE_JITTER", "--jitter"],
        ),
        (
            "listener port 0",
            vec![("REGISTER_LISTENER_PORT", "0")],
            vec![],
            vec!["REGISTER_LISTENER_PORT", "--register-listener-port"],
        ),
        (
            "timeout longer than the window",
            vec![("MESHPROBE_TIMEOUT", "5s"), ("MESHPROBE_WINDOW", "2s")],
            vec![],
            vec![
                "MESHPROBE_TIMEOUT",
                "--timeout",
                "MESHPROBE_WINDOW",
                "--window",
            ],
        ),
        (
            "malformed Kafka bootstrap servers",
            vec![("KAFKA_BOOTSTRAP_SERVERS", ":::")],
            vec![],
            vec!["KAFKA_BOOTSTRAP_SERVERS", "--kafka-bootstrap-servers"],
        ),
        (
            "malformed ZooKeeper connect string",
            vec![("SERVERS_ZK", "198.18.0.1:notaport")],
            vec![],
            vec!["SERVERS_ZK", "--servers-zk"],
        ),
        (
            "ZooKeeper SASL user without a password file",
            vec![
                ("SERVERS_ZK", "198.18.0.1:2181"),
                ("REGISTER_PUBLIC_DNS", "198.18.0.2"),
                ("ZK_SASL_USERNAME", "meshprobe"),
            ],
            vec![],
            vec!["ZK_SASL_PASSWORD_FILE"],
        ),
        (
            "ZooKeeper password file missing",
            vec![
                ("SERVERS_ZK", "198.18.0.1:2181"),
                ("REGISTER_PUBLIC_DNS", "198.18.0.2"),
                ("ZK_SASL_USERNAME", "meshprobe"),
                ("ZK_SASL_PASSWORD_FILE", "/nonexistent/meshprobe-zk.pw"),
            ],
            vec![],
            vec!["ZK_SASL_PASSWORD_FILE"],
        ),
        (
            "ZooKeeper SASL user with a colon",
            vec![
                ("SERVERS_ZK", "198.18.0.1:2181"),
                ("REGISTER_PUBLIC_DNS", "198.18.0.2"),
                ("ZK_SASL_USERNAME", "mesh:probe"),
                ("ZK_SASL_PASSWORD_FILE", "/proc/self/cmdline"),
            ],
            vec![],
            vec!["ZK_SASL_USERNAME"],
        ),
        (
            "probe size below the minimum",
            vec![("MESHPROBE_SIZES", "10")],
            vec![],
            vec!["MESHPROBE_SIZES", "--sizes"],
        ),
        (
            "too many worst peers on /metrics",
            vec![("MESHPROBE_METRICS_WORST_PEERS", "5000")],
            vec![],
            vec!["MESHPROBE_METRICS_WORST_PEERS", "--metrics-worst-peers"],
        ),
        (
            "the deprecated peer limit, read as the worst peers, too many",
            vec![("MESHPROBE_METRICS_PEER_LIMIT", "5000")],
            vec![],
            vec!["MESHPROBE_METRICS_PEER_LIMIT", "--metrics-peer-limit"],
        ),
    ]
}

#[test]
fn bad_settings_exit_2_naming_the_setting() -> Result<()> {
    let test = "bad_settings_exit_2_naming_the_setting";
    let Some(env) = TestEnv::acquire(test, &["tc"])? else {
        return Ok(());
    };
    let mut failures = Vec::new();
    let mut run_case = |what: &str, cfg: AgentConfig, names: &[&str]| -> Result<()> {
        let ns = Netns::new("cfg")?;
        let mut a = Agent::spawn(&env.mp.bin, &ns, "cfg", &cfg)?;
        let st = match a.wait_exit(Duration::from_secs(15)) {
            Ok(st) => st,
            Err(e) => {
                failures.push(format!("{what}: {e:#}"));
                return Ok(());
            }
        };
        let stderr = a.stderr_text();
        let qdisc = ns.run(["tc", "qdisc", "show", "dev", "lo"])?;
        eprintln!("{what}: exit {st}; stderr: {}", stderr.trim());
        if st.code() != Some(2) {
            failures.push(format!("{what}: exit {st}, want code 2; stderr: {stderr}"));
        }
        if !names.iter().any(|n| stderr.contains(n)) {
            failures.push(format!("{what}: stderr names none of {names:?}: {stderr}"));
        }
        if stderr.contains("panicked") {
            failures.push(format!("{what}: panic: {stderr}"));
        }
        if qdisc.contains("clsact") {
            failures.push(format!(
                "{what}: a clsact qdisc was attached before the error: {qdisc}"
            ));
        }
        if !a.summaries().is_empty() || a.ready.is_some() {
            failures.push(format!("{what}: the agent ran: {:?}", a.events()));
        }
        Ok(())
    };
    for (what, envs, flags, names) in cases() {
        let mut cfg = AgentConfig::new()
            .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862")
            .arg(flags);
        for (k, v) in envs {
            cfg = cfg.env(k, v);
        }
        run_case(what, cfg, &names)?;
    }
    // The same through the config file.
    let dir = meshprobe_harness::services::TempDir::new("agent-config")?;
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "MESHPROBE_INTERVAL = \"abc\"\n")?;
    run_case(
        "interval not a duration, in the config file",
        AgentConfig::new().env("MESHPROBE_CONFIG", file.display()),
        &["MESHPROBE_INTERVAL", "--interval", "interval"],
    )?;
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[test]
fn unreachable_zookeeper_at_start_agent_reflects_and_becomes_ready_later() -> Result<()> {
    let test = "unreachable_zookeeper_at_start_agent_reflects_and_becomes_ready_later";
    if let Some(why) = zookeeper_missing() {
        meshprobe_harness::env::skip(test, &why);
        return Ok(());
    }
    // A lab without services: nothing listens on the core's 2181.
    let Some(mut lab) = Cluster::acquire(test, 1, Family::V4, false, false)? else {
        return Ok(());
    };
    let core = lab.star.core_ip(Family::V4);
    let cfg = lab.config(0).env("SERVERS_ZK", format!("{core}:{ZK_PORT}"));
    let t0 = Instant::now();
    let a = Agent::spawn(lab.bin(), lab.star.node(0), &Cluster::node_id(0), &cfg)?;
    lab.agents.insert(0, a);

    // Up, healthy, not ready (naming ZooKeeper) for two session timeouts.
    let mut readyz = (0, String::new());
    let mut healthz = (0, String::new());
    while t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(500));
        let a = lab.agent_mut(0);
        if !a.is_running() {
            bail!(
                "the agent exited with ZooKeeper unreachable; stderr:\n{}",
                a.stderr_tail(40)
            );
        }
        if let Ok(r) = a.http_get("/readyz") {
            readyz = r;
        }
        if let Ok(h) = a.http_get("/healthz") {
            healthz = h;
        }
    }
    eprintln!("without ZooKeeper: /healthz {healthz:?}, /readyz {readyz:?}");
    ensure!(healthz.0 == 200, "/healthz {healthz:?}, want 200");
    ensure!(
        readyz.0 == 503 && readyz.1.to_lowercase().contains("zookeeper"),
        "/readyz {readyz:?}, want 503 naming ZooKeeper"
    );
    // It reflects meanwhile.
    let peer = lab.node_ip(0).to_string();
    let run = lab.env.mp.ping(
        lab.star.core(),
        &[peer.as_str(), "-c", "5", "-i", "100ms", "-W", "500ms"],
        Duration::from_secs(20),
    )?;
    let s = run.summary()?;
    ensure!(
        s.received == 5,
        "the agent did not reflect while ZooKeeper was unreachable: {s:?}"
    );

    // ZooKeeper appears: the agent registers and becomes ready.
    let zk = ZooKeeper::start(lab.star.core(), core, ZK_PORT)?;
    let started = Instant::now();
    let id = Cluster::node_id(0);
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        lab.agent(0)
            .http_get("/readyz")
            .is_ok_and(|(st, _)| st == 200)
    });
    ensure!(
        ok,
        "/readyz not 200 within 30 s of ZooKeeper starting: {:?}; stderr:\n{}",
        lab.agent(0).http_get("/readyz"),
        lab.agent(0).stderr_tail(30)
    );
    ensure!(
        zk.ls(HEARTBEAT_PATH)?.contains(&id),
        "/readyz is 200 but {id} is not under {HEARTBEAT_PATH}"
    );
    eprintln!("ready {:?} after ZooKeeper started", started.elapsed());
    let stderr = lab.agent(0).stderr_text();
    ensure!(!stderr.contains("panicked"), "panic: {stderr}");
    ensure!(
        lab.agent(0).ready.is_some() || lab.agent_mut(0).wait_ready(Duration::from_secs(5)).is_ok(),
        "no ready line"
    );
    Ok(())
}

#[test]
fn unreachable_kafka_at_start_agent_buffers_and_delivers_later() -> Result<()> {
    let test = "unreachable_kafka_at_start_agent_buffers_and_delivers_later";
    if let Some(why) = tansu_missing() {
        meshprobe_harness::env::skip(test, &why);
        return Ok(());
    }
    let Some(mut lab) = Cluster::acquire(test, 2, Family::V4, false, false)? else {
        return Ok(());
    };
    let core = lab.star.core_ip(Family::V4);
    let bootstrap = format!("{core}:{KAFKA_PORT}");
    for i in 0..2 {
        let other = 1 - i;
        let cfg = lab
            .config(i)
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_TOPIC", TEST_TOPIC)
            .env(
                "MESHPROBE_PEERS",
                format!("{}={}", Cluster::node_id(other), lab.node_ip(other)),
            );
        lab.start_agent_with(i, &cfg)?;
    }
    // Three windows without a broker.
    let s0 = window_now();
    lab.wait_pairs_measured(&[0, 1], s0 + 3, Duration::from_secs(20))?;
    for i in 0..2 {
        let a = lab.agent_mut(i);
        ensure!(
            a.is_running(),
            "{} exited; stderr:\n{}",
            a.label(),
            a.stderr_tail(40)
        );
        let b = a.metric_value("meshprobe_kafka_buffered")?;
        eprintln!("{}: {b} records buffered without a broker", a.node_id);
        ensure!(
            b > 0.0,
            "{}: meshprobe_kafka_buffered {b}, want > 0",
            a.node_id
        );
        let stderr = a.stderr_text();
        ensure!(!stderr.contains("panicked"), "panic: {stderr}");
    }

    // The broker appears: the buffers drain onto the topic.
    let t = Tansu::start(lab.star.core(), core, KAFKA_PORT)?;
    t.create_topic(TEST_TOPIC, 3)?;
    let t1 = Instant::now();
    for i in 0..2 {
        let ok = wait_until(Duration::from_secs(90), Duration::from_millis(250), || {
            lab.agent(i)
                .metric("meshprobe_kafka_buffered")
                .is_ok_and(|b| b == Some(0.0))
        });
        ensure!(
            ok,
            "{}: buffer not drained 90 s after the broker started: {:?}; stderr:\n{}",
            Cluster::node_id(i),
            lab.agent(i).metric("meshprobe_kafka_buffered"),
            lab.agent(i).stderr_tail(30)
        );
    }
    eprintln!("drained {:?} after the broker started", t1.elapsed());
    let printed: Vec<_> = lab.stdout_summaries().iter().map(summary_key).collect();
    let consumed = meshprobe_harness::agent::consume(
        lab.bin(),
        lab.star.core(),
        &t.bootstrap(),
        TEST_TOPIC,
        &["--kind", "summary"],
    )?;
    let got: std::collections::BTreeSet<_> = consumed.iter().map(summary_key).collect();
    let missing: Vec<_> = printed.iter().filter(|k| !got.contains(*k)).collect();
    ensure!(
        missing.is_empty(),
        "printed before the broker existed but not on the topic: {missing:?}"
    );
    let sent: u64 = consumed.iter().map(|v| num(v, "sent")).sum();
    eprintln!("{} summaries consumed ({sent} probes)", consumed.len());
    Ok(())
}
