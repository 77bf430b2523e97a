//! Self-tests of the agent-test harness: the bridge mesh, ZooKeeper and Tansu in a namespace
//! (no meshprobe needed).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshprobe_harness::env::{missing_prerequisite, skip};
use meshprobe_harness::netns::list_namespaces;
use meshprobe_harness::services::{
    Tansu, ZooKeeper, tansu_missing, tcp_open, wait_until, zookeeper_missing,
};
use meshprobe_harness::star::Star;
use meshprobe_harness::topo::{Family, wait_reachable};

fn prereq(test: &str, extra: Option<String>) -> bool {
    match missing_prerequisite(&["ping"]).or(extra) {
        Some(why) => {
            skip(test, &why);
            false
        }
        None => true,
    }
}

#[test]
fn mesh_nodes_reach_each_other_and_clean_up() -> Result<()> {
    if !prereq("mesh_nodes_reach_each_other_and_clean_up", None) {
        return Ok(());
    }
    let names;
    {
        let mut m = Star::new(3)?;
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    wait_reachable(m.node(i), m.node_ip(j, Family::V4))?;
                    wait_reachable(m.node(i), m.node_ip(j, Family::V6))?;
                }
            }
        }
        let k = m.add_node()?;
        ensure!(k == 3);
        wait_reachable(m.node(0), m.node_ip(3, Family::V6))?;
        let n1 = m.node(1).name().to_string();
        m.remove_node(1);
        ensure!(!list_namespaces()?.contains(&n1), "node 1 not deleted");
        ensure!(m.node_indices() == vec![0, 2, 3]);
        names = [m.core().name().to_string(), m.node(0).name().to_string()];
    }
    let left = list_namespaces()?;
    for n in names {
        ensure!(!left.contains(&n), "{n} left behind");
    }
    Ok(())
}

#[test]
fn zookeeper_starts_lists_and_restarts_with_its_data() -> Result<()> {
    let test = "zookeeper_starts_lists_and_restarts_with_its_data";
    if !prereq(test, zookeeper_missing()) {
        return Ok(());
    }
    let m = Star::new(1)?;
    let t0 = Instant::now();
    let mut zk = ZooKeeper::start(m.core(), m.core_ip(Family::V4), 2181)?;
    eprintln!("ZooKeeper serving after {:?}", t0.elapsed());
    ensure!(zk.ls("/")?.contains(&"zookeeper".to_string()));
    ensure!(zk.ls("/does/not/exist")?.is_empty());
    // Reachable from a node.
    ensure!(tcp_open(
        m.node(0),
        m.core_ip(Family::V4),
        2181,
        Duration::from_secs(2)
    ));
    ensure!(zk.four_letter("ruok")?.trim() == "imok");
    // A persistent znode survives stop/start_again (same data dir).
    zk.create_persistent("/harness-selftest", b"x")?;
    zk.stop();
    ensure!(!tcp_open(
        m.node(0),
        m.core_ip(Family::V4),
        2181,
        Duration::from_millis(500)
    ));
    let t0 = Instant::now();
    zk.start_again()?;
    eprintln!("ZooKeeper serving again after {:?}", t0.elapsed());
    ensure!(
        zk.ls("/")?.contains(&"harness-selftest".to_string()),
        "data lost across restart: {:?}",
        zk.ls("/")?
    );
    ensure!(zk.get("/harness-selftest")?.as_deref() == Some(&b"x"[..]));
    Ok(())
}

#[test]
fn zookeeper_listens_on_ipv6() -> Result<()> {
    if !prereq("zookeeper_listens_on_ipv6", zookeeper_missing()) {
        return Ok(());
    }
    let m = Star::new(1)?;
    let zk = ZooKeeper::start(m.core(), m.core_ip(Family::V6), 2181)?;
    ensure!(zk.connect_string() == "[fd00::1]:2181");
    ensure!(zk.ls("/")?.contains(&"zookeeper".to_string()));
    ensure!(tcp_open(
        m.node(0),
        m.core_ip(Family::V6),
        2181,
        Duration::from_secs(2)
    ));
    Ok(())
}

#[test]
fn tansu_starts_creates_topics_and_restarts() -> Result<()> {
    let test = "tansu_starts_creates_topics_and_restarts";
    if !prereq(test, tansu_missing()) {
        return Ok(());
    }
    let m = Star::new(1)?;
    let t0 = Instant::now();
    let mut b = Tansu::start(m.core(), m.core_ip(Family::V4), 9092)?;
    eprintln!(
        "tansu ({}) listening after {:?}; persistent: {}",
        b.storage(),
        t0.elapsed(),
        b.persistent()
    );
    b.create_topic("selftest", 3)
        .with_context(|| b.stderr_text())?;
    ensure!(tcp_open(
        m.node(0),
        m.core_ip(Family::V4),
        9092,
        Duration::from_secs(2)
    ));
    b.stop();
    ensure!(!tcp_open(
        m.node(0),
        m.core_ip(Family::V4),
        9092,
        Duration::from_millis(500)
    ));
    b.start_again()?;
    ensure!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || tcp_open(
            m.node(0),
            m.core_ip(Family::V4),
            9092,
            Duration::from_millis(500)
        )
    ));
    if b.persistent() {
        // Creating it again must fail: the topic survived the restart.
        ensure!(
            b.create_topic("selftest", 3).is_err(),
            "topic 'selftest' was lost across the broker restart ({})",
            b.storage()
        );
    }
    Ok(())
}

/// The delay placement of agent_mesh: `meshprobe-delay --udp-port 862` on the core-side ends
/// of both links holds the request (towards the reflector) and the reply (towards the
/// sender), so the added RTT is d_sender + d_reflector. Runs without and with the delays
/// alternate (A B B A) so drift cancels; the shift must be the sum within the runs' own noise.
#[test]
fn mesh_core_side_delays_add_up_per_pair() -> Result<()> {
    use meshprobe_harness::stats::{Shift, median, us};
    const SENDER_DELAY: Duration = Duration::from_micros(100);
    const REFLECTOR_DELAY: Duration = Duration::from_micros(200);
    const PROBES: u64 = 100;
    let test = "mesh_core_side_delays_add_up_per_pair";
    let Some(env) = meshprobe_harness::TestEnv::acquire(test, &["ping"])? else {
        return Ok(());
    };
    let m = Star::new(2)?;
    let _refl = env.mp.reflect(m.node(1), &[])?;
    let peer = m.node_ip(1, Family::V4).to_string();
    let count = PROBES.to_string();
    let args = [peer.as_str(), "-c", &count, "-i", "5ms", "-W", "200ms"];
    let arg = |d: Duration| humantime::format_duration(d).to_string();
    let mut without = Vec::new();
    let mut with = Vec::new();
    for delayed in [false, true, true, false] {
        let _delays = if delayed {
            Some((
                env.mp.delay(
                    m.core(),
                    &m.core_if(0),
                    &arg(SENDER_DELAY),
                    &["--udp-port", "862"],
                )?,
                env.mp.delay(
                    m.core(),
                    &m.core_if(1),
                    &arg(REFLECTOR_DELAY),
                    &["--udp-port", "862"],
                )?,
            ))
        } else {
            None
        };
        let run = env.mp.ping(m.node(0), &args, Duration::from_secs(30))?;
        let s = run.summary()?;
        ensure!(s.received == PROBES, "delayed={delayed}: {s:?}");
        let rtts = run.network_rtts();
        eprintln!(
            "delayed {delayed}: median network RTT {}",
            us(median(&rtts).unwrap_or(0))
        );
        if delayed {
            with.push(rtts);
        } else {
            without.push(rtts);
        }
    }
    let injected = (SENDER_DELAY + REFLECTOR_DELAY).as_nanos() as i64;
    let shift = Shift::of(&without, &with).context("a run without probes")?;
    eprintln!("{} (injected {})", shift.report(), us(injected));
    shift.check(injected, "added RTT of both core-side delays")
}
