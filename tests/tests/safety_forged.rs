//! Issue 13, forged replies: a dead peer must not look alive.
//!
//! A, B and a third host F share one segment: a bridge without MAC learning, so every frame
//! reaches every port and F sees A's requests to B (as a host on a hub, or one that poisoned the
//! switch, would). An agent on A probes B (static peer) and `meshprobe ping` on A runs across
//! the attack. While B's reflector answers, F records its genuine replies. Then B's reflector is
//! stopped and F answers every request it sees with:
//! - a reply from its own address (198.18.7.77 / fd00::7:77) with the request's SSID and
//!   sequence number and a T1 five seconds old;
//! - the same, spoofed from B's address and port;
//! - spoofed from B with a guessed SSID, and with a guessed sequence number;
//! - a replay of one of B's genuine replies recorded before (to the same port).
//!
//! Pass, for IPv4 and IPv6: no sample for any probe sent after the kill (the agent's windows
//! after it have no sample and 100 % loss, no duplicate or late reply; `ping` prints no probe
//! line for those probes and a loss line for each), no network RTT of a second or more anywhere,
//! and the rejections counted by reason (agent: `meshprobe_replies_rejected_total{reason}`,
//! ping: the summary's `rejected` map).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use meshprobe_harness::agent::{Agent, AgentConfig, num, num2};
use meshprobe_harness::capture::decode_frame;
use meshprobe_harness::craft::UdpFrame;
use meshprobe_harness::stamp::{build_reply, ptp_bytes, request_key, tai_now_ns};
use meshprobe_harness::topo::{add_addr, mac_of, veth_pair, wait_reachable};
use meshprobe_harness::{Family, Netns, PingRun, STAMP_PORT, TestEnv};
use pnet::datalink::{self, Channel, Config};
use probe_common::wire;

const A_IF: &str = "veth-a";
const B_IF: &str = "veth-b";
const F_IF: &str = "veth-f";
const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const F4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 77);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const F6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, 0x77);

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(1);
const ADMIN_PORT: u16 = 9871;
/// The forged T1: five seconds before the request was seen.
const OLD_T1: u64 = 5_000_000_000;
/// ping: probes, interval; the attack starts after `PING_GENUINE`.
const PING_COUNT: u32 = 80;
const PING_INTERVAL: &str = "50ms";
const PING_GENUINE: Duration = Duration::from_millis(1500);
/// Full agent windows measured under attack.
const ATTACK_WINDOWS: u64 = 3;
/// A network RTT this long on a veth is forged.
const FORGED_RTT_NS: i64 = 1_000_000_000;

/// A, B and F on one hub (a bridge that learns no MAC address, in namespace `sw`).
struct Segment {
    a: Netns,
    b: Netns,
    f: Netns,
    _sw: Netns,
}

impl Segment {
    fn new() -> Result<Segment> {
        let sw = Netns::new("sw")?;
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        let f = Netns::new("f")?;
        sw.run(["ip", "link", "add", "br0", "type", "bridge"])?;
        for (ns, ifname, port) in [(&a, A_IF, "sw-a"), (&b, B_IF, "sw-b"), (&f, F_IF, "sw-f")] {
            veth_pair(&sw, port, ns, ifname)?;
            sw.run(["ip", "link", "set", port, "master", "br0"])?;
            // No learning: unicast to B is flooded to F as well.
            sw.run([
                "ip",
                "link",
                "set",
                "dev",
                port,
                "type",
                "bridge_slave",
                "learning",
                "off",
            ])?;
        }
        sw.run(["ip", "link", "set", "br0", "up"])?;
        add_addr(&a, A_IF, A4.into(), 24)?;
        add_addr(&b, B_IF, B4.into(), 24)?;
        add_addr(&f, F_IF, F4.into(), 24)?;
        add_addr(&a, A_IF, A6.into(), 64)?;
        add_addr(&b, B_IF, B6.into(), 64)?;
        add_addr(&f, F_IF, F6.into(), 64)?;
        // F's IPv4 address is on the same wire, in another prefix: A routes it there (so a
        // strict reverse-path filter would not be what drops its replies).
        a.run(["ip", "route", "add", "198.18.7.0/24", "dev", A_IF])?;
        f.run(["ip", "route", "add", "198.18.0.0/24", "dev", F_IF])?;
        let s = Segment { a, b, f, _sw: sw };
        for dst in [IpAddr::from(B4), B6.into(), F4.into(), F6.into()] {
            wait_reachable(&s.a, dst)?;
        }
        Ok(s)
    }
}

fn addrs(f: Family) -> (IpAddr, IpAddr, IpAddr) {
    match f {
        Family::V4 => (A4.into(), B4.into(), F4.into()),
        Family::V6 => (A6.into(), B6.into(), F6.into()),
    }
}

const RECORD: u8 = 0;
const FORGE: u8 = 1;

/// What F saw and sent.
#[derive(Debug, Default)]
struct ForgerLog {
    /// Requests (source port, SSID, sequence) seen while B answered, and under attack.
    before: HashSet<(u16, u16, u32)>,
    after: HashSet<(u16, u16, u32)>,
    genuine_recorded: usize,
    forged: u64,
    replayed: u64,
}

/// The attacker on F: records B's genuine replies, then (in FORGE) answers each request.
struct Forger {
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Result<ForgerLog>>>>,
}

impl Forger {
    fn start(seg: &Segment, fam: Family) -> Result<Forger> {
        let a_mac = mac_of(&seg.a, A_IF)?;
        let f_mac = mac_of(&seg.f, F_IF)?;
        let (a, b, f) = addrs(fam);
        let mode = Arc::new(AtomicU8::new(RECORD));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        let handle = seg
            .f
            .spawn_thread(move || forge(a_mac, f_mac, (a, b, f), &m, &s));
        Ok(Forger {
            mode,
            stop,
            handle: Some(handle),
        })
    }

    fn attack(&self) {
        self.mode.store(FORGE, Ordering::SeqCst);
    }

    fn stop(mut self) -> Result<ForgerLog> {
        self.stop.store(true, Ordering::SeqCst);
        let h = self.handle.take().expect("running");
        h.join().map_err(|_| anyhow!("forger panicked"))??
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The forger's loop (in F's namespace), bounded by `FORGER_MAX_LIFE`.
fn forge(
    a_mac: [u8; 6],
    f_mac: [u8; 6],
    (a, b, f): (IpAddr, IpAddr, IpAddr),
    mode: &AtomicU8,
    stop: &AtomicBool,
) -> Result<ForgerLog> {
    const FORGER_MAX_LIFE: Duration = Duration::from_secs(120);
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == F_IF)
        .context("no veth-f")?;
    let cfg = Config {
        read_timeout: Some(Duration::from_millis(20)),
        promiscuous: true,
        ..Config::default()
    };
    let (mut tx, mut rx) = match datalink::channel(&iface, cfg).context("datalink channel")? {
        Channel::Ethernet(tx, rx) => (tx, rx),
        _ => bail!("unexpected channel type"),
    };
    let b_stamp = SocketAddr::new(b, STAMP_PORT);
    let mut log = ForgerLog::default();
    // B's genuine replies: (A's port, payload).
    let mut genuine: Vec<(u16, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + FORGER_MAX_LIFE;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok(frame) = rx.next() else { continue };
        let Some(p) = decode_frame(0, frame) else {
            continue;
        };
        let attacking = mode.load(Ordering::SeqCst) == FORGE;
        if p.src == b_stamp && p.dst.ip() == a && !attacking {
            if genuine.len() < 1000 {
                genuine.push((p.dst.port(), p.payload.clone()));
                log.genuine_recorded += 1;
            }
            continue;
        }
        if p.dst != b_stamp || p.src.ip() != a {
            continue;
        }
        let Some((ssid, seq)) = request_key(&p.payload) else {
            continue;
        };
        let key = (p.src.port(), ssid, seq);
        if !attacking {
            log.before.insert(key);
            continue;
        }
        log.after.insert(key);
        let now = tai_now_ns();
        let reply = |ssid: u16, seq: u32| -> Result<Vec<u8>> {
            let mut r = build_reply(&p.payload, seq, now, now + 20_000, 64)?;
            r[wire::SSID..wire::SSID + 2].copy_from_slice(&ssid.to_be_bytes());
            r[wire::SENDER_SEQ..wire::SENDER_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            r[wire::SENDER_TIMESTAMP..wire::SENDER_TIMESTAMP + 8]
                .copy_from_slice(&ptp_bytes(now - OLD_T1));
            Ok(r)
        };
        let to = p.src;
        let mut frames = vec![
            // From F's own address, right SSID and sequence.
            (f, reply(ssid, seq)?),
            // Spoofed from B: right SSID and sequence, guessed SSID, guessed sequence.
            (b, reply(ssid, seq)?),
            (b, reply(ssid.wrapping_add(1).max(1), seq)?),
            (b, reply(ssid, seq.wrapping_sub(1000))?),
        ];
        log.forged += frames.len() as u64;
        // A genuine reply of B's, recorded earlier, to the same port.
        let same_port: Vec<&Vec<u8>> = genuine
            .iter()
            .filter(|(port, _)| *port == to.port())
            .map(|(_, pl)| pl)
            .collect();
        if !same_port.is_empty() {
            let pl = same_port[log.replayed as usize % same_port.len()].clone();
            frames.push((b, pl));
            log.replayed += 1;
        }
        for (src, payload) in frames {
            let frame =
                UdpFrame::new(f_mac, a_mac, src, a, STAMP_PORT, to.port(), payload).build()?;
            match tx.send_to(&frame, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("forger send: {e}"),
                None => bail!("forger send: no result"),
            }
        }
    }
    Ok(log)
}

/// The agent's rejection counter for `reason` (whatever other labels the series carries).
fn rejected(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|m| m.starts_with("meshprobe_replies_rejected_total{") && m.contains(&label))
        .filter_map(|m| m.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn forged_and_replayed_replies_never_count() -> Result<()> {
    let Some(env) = TestEnv::acquire("forged_and_replayed_replies_never_count", &["ping"])? else {
        return Ok(());
    };
    let seg = Segment::new()?;
    let mut failures = Vec::new();
    for fam in [Family::V4, Family::V6] {
        if let Err(e) = run(&env, &seg, fam) {
            eprintln!("{}: FAIL: {e:#}", fam.label());
            failures.push(format!("{}: {e:#}", fam.label()));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn run(env: &TestEnv, seg: &Segment, fam: Family) -> Result<()> {
    let l = fam.label();
    let (_, b, _) = addrs(fam);
    let refl = env.mp.reflect(&seg.b, &[])?;
    let forger = Forger::start(seg, fam)?;
    let cfg = AgentConfig::new()
        .env("MESHPROBE_PEERS", format!("b={b}"))
        .env("MESHPROBE_INTERVAL", humantime::format_duration(INTERVAL))
        .env("MESHPROBE_TIMEOUT", humantime::format_duration(TIMEOUT))
        .env("MESHPROBE_WINDOW", humantime::format_duration(WINDOW))
        .env("MESHPROBE_SHUTDOWN_GRACE", "1s")
        .env("MESHPROBE_ADMIN_LISTEN", format!("[::]:{ADMIN_PORT}"));
    let mut agent = Agent::start(&env.mp.bin, &seg.a, "a", &cfg)?;
    // Genuine phase: the agent has measured B.
    agent
        .wait_for(Duration::from_secs(10), |e| {
            e.kind() == "summary" && e.v["dst"] == "b" && num(&e.v, "received") > 0
        })
        .with_context(|| format!("{l}: the agent never measured B"))?;
    let peer = b.to_string();
    let count = PING_COUNT.to_string();
    let mut ping = env.mp.ping_spawn(
        &seg.a,
        &[
            "--json",
            &peer,
            "-c",
            &count,
            "-i",
            PING_INTERVAL,
            "-W",
            &humantime::format_duration(TIMEOUT).to_string(),
        ],
    )?;
    std::thread::sleep(PING_GENUINE);

    // B's reflector dies; F takes over.
    refl.stop()
        .with_context(|| format!("{l}: stopping B's reflector"))?;
    forger.attack();
    let attack_tai = tai_now_ns();
    let fin = ping.wait_exit(Duration::from_secs(30))?;
    let run = PingRun::parse(&fin)?;
    // Windows wholly after the attack began and its probes in flight timed out.
    let first_attacked =
        (attack_tai + TIMEOUT.as_nanos() as u64).div_ceil(WINDOW.as_nanos() as u64);
    agent
        .wait_for(Duration::from_secs(15), |e| {
            e.kind() == "summary" && num(&e.v, "window_seq") >= first_attacked + ATTACK_WINDOWS
        })
        .with_context(|| format!("{l}: agent windows under attack"))?;
    let metrics = agent.metrics()?;
    let summaries = agent.summaries();
    drop(agent);
    let log = forger.stop()?;

    // The attack happened: F saw requests of both senders and answered them.
    let ping_sum = run.summary()?;
    let ping_ssid = run
        .probes
        .first()
        .map(|p| p.ssid as u16)
        .context("ping measured nothing before the attack")?;
    let ping_after: HashSet<u32> = log
        .after
        .iter()
        .filter(|k| k.1 == ping_ssid)
        .map(|k| k.2)
        .collect();
    eprintln!(
        "{l}: forger recorded {} genuine replies, saw {} requests before and {} under attack \
         ({} of ping's), sent {} forged replies and {} replays",
        log.genuine_recorded,
        log.before.len(),
        log.after.len(),
        ping_after.len(),
        log.forged,
        log.replayed
    );
    ensure!(
        log.genuine_recorded > 0 && log.replayed > 0 && !ping_after.is_empty(),
        "{l}: the attack did not happen: {log:?}"
    );
    ensure!(
        log.after.len() > ping_after.len(),
        "{l}: F saw no agent request under attack"
    );

    // Agent: windows under attack.
    let mut errors = Vec::new();
    let attacked: Vec<_> = summaries
        .iter()
        .filter(|w| w["dst"] == "b" && num(w, "window_seq") >= first_attacked)
        .collect();
    let total = |k: &str| attacked.iter().map(|w| num(w, k)).sum::<u64>();
    let agent_max_rtt = summaries
        .iter()
        .filter_map(|w| num2(w, "network_rtt_ns", "max"))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{l}: agent, {} windows under attack: sent {} received {} lost {} duplicates {} late {}; \
         max network RTT of any window {:.3} ms",
        attacked.len(),
        total("sent"),
        total("received"),
        total("lost"),
        total("duplicates"),
        total("late"),
        agent_max_rtt as f64 / 1e6
    );
    if (attacked.len() as u64) < ATTACK_WINDOWS || total("sent") == 0 {
        errors.push(format!("agent: {} windows under attack", attacked.len()));
    }
    for w in &attacked {
        let (sent, received, lost) = (num(w, "sent"), num(w, "received"), num(w, "lost"));
        let rtt_count = num2(w, "network_rtt_ns", "count").unwrap_or(0);
        if received != 0
            || rtt_count != 0
            || lost == 0
            || num(w, "duplicates") + num(w, "late") != 0
        {
            errors.push(format!(
                "agent: window {} under attack: sent {sent} received {received} lost {lost} \
                 duplicates {} late {} samples {rtt_count} (want no sample, 100 % loss)",
                num(w, "window_seq"),
                num(w, "duplicates"),
                num(w, "late"),
            ));
        }
    }
    if agent_max_rtt >= FORGED_RTT_NS {
        errors.push(format!("agent: forged network RTT {agent_max_rtt} ns"));
    }
    let reasons = [
        "wrong_source",
        "unknown_session",
        "not_in_flight",
        "replayed",
        "t1_mismatch",
        "t1_implausible",
        "bad_stamps",
        "malformed",
    ];
    let agent_rej: Vec<(&str, u64)> = reasons
        .iter()
        .map(|r| (*r, rejected(&metrics, r)))
        .collect();
    eprintln!("{l}: agent rejected {agent_rej:?}");
    if agent_rej.iter().all(|(_, n)| *n == 0) {
        let replies: Vec<&str> = metrics.lines().filter(|m| m.contains("replies")).collect();
        eprintln!("{l}: agent /metrics on replies:\n{}", replies.join("\n"));
    }
    errors.extend(check_reasons("agent", &|r| rejected(&metrics, r), true));

    // ping.
    let forged_probes: Vec<_> = run
        .probes
        .iter()
        .filter(|p| p.ssid as u16 == ping_ssid && ping_after.contains(&p.seq))
        .collect();
    let lost_after = run
        .losses
        .iter()
        .filter(|v| v["ssid"].as_u64() == Some(u64::from(ping_ssid)))
        .filter_map(|v| v["seq"].as_u64())
        .filter(|s| ping_after.contains(&(*s as u32)))
        .count();
    let max_rtt = run.network_rtts().into_iter().max().unwrap_or(0);
    eprintln!(
        "{l}: ping: sent {} received {} lost {} dup {} late {}; {} probe lines for the {} probes \
         under attack, {} of them lost; max network RTT {:.3} ms; rejected {:?}",
        ping_sum.sent,
        ping_sum.received,
        ping_sum.lost,
        ping_sum.duplicates,
        ping_sum.late,
        forged_probes.len(),
        ping_after.len(),
        lost_after,
        max_rtt as f64 / 1e6,
        ping_sum.rejected
    );
    if !forged_probes.is_empty() {
        errors.push(format!(
            "ping: {} samples of probes sent under attack (first: {:?})",
            forged_probes.len(),
            forged_probes[0]
        ));
    }
    if lost_after != ping_after.len() {
        errors.push(format!(
            "ping: {lost_after} of {} probes under attack lost",
            ping_after.len()
        ));
    }
    if max_rtt >= FORGED_RTT_NS {
        errors.push(format!("ping: forged network RTT {max_rtt} ns"));
    }
    let ping_rej = |r: &str| ping_sum.rejected.get(r).copied().unwrap_or(0);
    // ping's socket is connected: the kernel drops F's own-address replies before it.
    errors.extend(check_reasons("ping", &ping_rej, false));
    ensure!(errors.is_empty(), "{l}:\n  {}", errors.join("\n  "));
    Ok(())
}

/// Every kind of forgery was rejected, by its reason. `from_elsewhere`: F's own-address
/// replies reach this sender (an unconnected socket).
fn check_reasons(who: &str, count: &dyn Fn(&str) -> u64, from_elsewhere: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let mut want = |what: &str, n: u64| {
        if n == 0 {
            errors.push(format!("{who}: no rejection counted for {what}"));
        }
    };
    if from_elsewhere {
        want(
            "replies from F's own address (wrong_source)",
            count("wrong_source"),
        );
    }
    want(
        "spoofed replies with a 5 s old T1 (t1_mismatch / t1_implausible)",
        count("t1_mismatch") + count("t1_implausible"),
    );
    want("guessed SSIDs (unknown_session)", count("unknown_session"));
    want(
        "guessed sequence numbers and replays (not_in_flight / replayed)",
        count("not_in_flight") + count("replayed"),
    );
    errors
}
