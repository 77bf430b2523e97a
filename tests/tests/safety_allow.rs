//! Issue 13, the agent reflects only for its known peers (plus MESHPROBE_REFLECT_ALLOW, empty
//! here): a peer's probes are answered, the same host probing from an address that is not a
//! peer's is not, and the refusal is counted on /metrics under reason="not_allowed".
//!
//! Before (main 265afe9): the agent answered every source.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Result, ensure};
use meshprobe_harness::agent::{Agent, AgentConfig};
use meshprobe_harness::safety::FAMILIES;
use meshprobe_harness::stamp::build_request;
use meshprobe_harness::{Family, STAMP_PORT, TestEnv, TwoHosts};

/// A's second address: no peer's, and never A's default source (IPv4 secondary, IPv6
/// deprecated).
fn stranger(f: Family) -> IpAddr {
    match f {
        Family::V4 => "198.18.0.41".parse().unwrap(),
        Family::V6 => "fd00::41".parse().unwrap(),
    }
}

#[test]
fn the_agent_answers_its_peers_only() -> Result<()> {
    let Some(env) = TestEnv::acquire("the_agent_answers_its_peers_only", &[])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    t.a.run(["ip", "addr", "add", "198.18.0.41/24", "dev", TwoHosts::A_IF])?;
    t.a.run([
        "ip",
        "-6",
        "addr",
        "add",
        "fd00::41/64",
        "dev",
        TwoHosts::A_IF,
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    let peers = format!("a={},a6={}", TwoHosts::A4, TwoHosts::A6);
    let cfg = AgentConfig::new()
        .env("MESHPROBE_PEERS", &peers)
        .env("MESHPROBE_INTERVAL", "1s")
        .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862");
    let agent = Agent::start(&env.mp.bin, &t.b, "b", &cfg)?;
    const STRAY: u32 = 3;
    for f in FAMILIES {
        let peer = t.b_addr(f).to_string();
        let run = env.mp.ping(
            &t.a,
            &[&peer, "-c", "5", "-i", "50ms", "-W", "500ms"],
            Duration::from_secs(20),
        )?;
        let received = run.summary()?.received;
        let sock =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(stranger(f), 40005)))??;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        for seq in 0..STRAY {
            sock.send_to(
                &build_request(seq, 0x1616, None),
                SocketAddr::new(t.b_addr(f), STAMP_PORT),
            )?;
        }
        let mut buf = [0u8; 256];
        let stray_replies = std::iter::from_fn(|| sock.recv_from(&mut buf).ok()).count();
        eprintln!(
            "{}: peer address answered {received}/5; {} (no peer's) answered {stray_replies}/{STRAY}",
            f.label(),
            stranger(f)
        );
        ensure!(
            received == 5,
            "{}: a peer got {received}/5 replies",
            f.label()
        );
        ensure!(
            stray_replies == 0,
            "{}: a source that is no peer got {stray_replies} replies",
            f.label()
        );
    }
    let text = agent.metrics()?;
    let not_allowed: Option<f64> = text
        .lines()
        .find(|l| {
            l.starts_with("meshprobe_reflector_refused_total{")
                && l.contains("reason=\"not_allowed\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok());
    eprintln!("meshprobe_reflector_refused_total{{reason=\"not_allowed\"}} {not_allowed:?}");
    ensure!(
        not_allowed == Some(f64::from(2 * STRAY)),
        "refusals not counted as not_allowed: {not_allowed:?}\n{}",
        text.lines()
            .filter(|l| l.contains("reflector"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
