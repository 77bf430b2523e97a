//! Issue 13: the programs act only on meshprobe's own packets. Foreign datagrams that share a
//! probe port (the sender's port or 862, as source or destination), a VXLAN tunnel whose outer
//! source port is pinned to the sender's port, and traffic routed through a host running the
//! programs to a "pod" behind it all arrive byte for byte as sent; the stamp counters count
//! only meshprobe's probes and the skip counters say why the rest was left alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshprobe_harness::capture::Capture;
use meshprobe_harness::craft::{UdpFrame, send_frames};
use meshprobe_harness::meshprobe::ebpf_counter;
use meshprobe_harness::topo::{add_addr, mac_of};
use meshprobe_harness::{
    ChildGuard, Family, Netns, PingRun, Routed, STAMP_PORT, TestEnv, TwoHosts,
};
use serde_json::Value;

/// The sender's port: the only ephemeral port of the namespace that runs `meshprobe ping`.
const P: u16 = 47000;
/// Datagrams per foreign exchange.
const N: usize = 10;

fn pin_ephemeral_port(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{P} {P}"))
}

/// A datagram shaped like a STAMP request and reply with room for every in-band stamp (what
/// port-only matching would rewrite): base packet, then an Extra Padding TLV header.
fn foreign_payload(i: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..96)
        .map(|k| (k as u8).wrapping_mul(37) ^ i as u8)
        .collect();
    p[44..48].copy_from_slice(&[0x80, 0x01, 0x00, 48]);
    p
}

/// What one foreign exchange delivered.
#[derive(Debug)]
struct Delivered {
    what: String,
    sent: usize,
    identical: usize,
    altered: usize,
}

impl Delivered {
    fn ok(&self) -> bool {
        self.identical == self.sent && self.altered == 0
    }
}

/// Receives up to `n` datagrams on `rx` (bounded in time) and compares each with `expect(i)`,
/// `i` read from the datagram's position in the sequence (octet 0 ^ its pattern).
fn collect(rx: &UdpSocket, n: usize, what: String) -> Result<Delivered> {
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut identical, mut altered) = (0, 0);
    let mut buf = [0u8; 2048];
    while identical + altered < n && Instant::now() < deadline {
        let Ok((len, _)) = rx.recv_from(&mut buf) else {
            continue;
        };
        let i = buf[0] as usize; // octet 0 of foreign_payload(i) is i
        if len == 96 && buf[..len] == foreign_payload(i)[..] {
            identical += 1;
        } else {
            altered += 1;
        }
    }
    Ok(Delivered {
        what,
        sent: n,
        identical,
        altered,
    })
}

/// `N` datagrams from a socket bound to `from` in `a` to one bound to `to` in `b`.
fn exchange(a: &Netns, from: SocketAddr, b: &Netns, to: SocketAddr) -> Result<Delivered> {
    let rx = b
        .enter(|| UdpSocket::bind(to))?
        .with_context(|| format!("bind {to}"))?;
    let tx = a
        .enter(|| UdpSocket::bind(from))?
        .with_context(|| format!("bind {from}"))?;
    for i in 0..N {
        tx.send_to(&foreign_payload(i), to)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    collect(&rx, N, format!("{from} -> {to}"))
}

/// Waits for a ping started with `--json` to finish and parses it.
fn finish(mut ping: ChildGuard) -> Result<PingRun> {
    let fin = ping.wait_exit(Duration::from_secs(60))?;
    let run = PingRun::parse(&fin)?;
    ensure!(run.exit_ok, "meshprobe ping failed: {}", run.stderr);
    Ok(run)
}

fn counters(run: &PingRun) -> Value {
    run.stamping.clone().unwrap_or_default()
}

fn sum_sent(runs: &[PingRun]) -> (u64, u64) {
    runs.iter().fold((0, 0), |(s, r), run| {
        run.summaries
            .iter()
            .fold((s, r), |(s, r), x| (s + x.sent, r + x.received))
    })
}

fn report(all: &[Delivered]) -> Result<()> {
    for d in all {
        eprintln!(
            "  {}: sent {}, identical {}, altered {}",
            d.what, d.sent, d.identical, d.altered
        );
    }
    let bad: Vec<&Delivered> = all.iter().filter(|d| !d.ok()).collect();
    ensure!(
        bad.is_empty(),
        "foreign datagrams not delivered intact: {bad:?}"
    );
    Ok(())
}

fn a2(f: Family) -> IpAddr {
    match f {
        Family::V4 => Ipv4Addr::new(198, 18, 0, 11).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x11).into(),
    }
}

/// Adds `a2(f)` to A's interface as an address the host never picks as a source (IPv4
/// secondary, IPv6 deprecated), so the sender's socket keeps A's first address and another
/// socket can bind the sender's port on this one.
fn add_a2(ns: &Netns, ifname: &str) -> Result<()> {
    add_addr(ns, ifname, a2(Family::V4), 24)?;
    ns.run([
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/64", a2(Family::V6)),
        "dev",
        ifname,
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    Ok(())
}

/// Counter `name` of a summary, printed.
fn c(v: &Value, name: &str) -> u64 {
    ebpf_counter(v, name)
}

#[test]
fn foreign_datagrams_on_probe_ports_are_untouched() -> Result<()> {
    let Some(env) = TestEnv::acquire("foreign_datagrams_on_probe_ports_are_untouched", &[])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    pin_ephemeral_port(&t.a)?;
    add_a2(&t.a, TwoHosts::A_IF)?;
    let (mac_a, mac_b) = (mac_of(&t.a, TwoHosts::A_IF)?, mac_of(&t.b, TwoHosts::B_IF)?);
    let refl = env.mp.reflect(&t.b, &[])?;
    let mut all = Vec::new();
    let mut runs = Vec::new();
    for f in [Family::V4, Family::V6] {
        let peer = t.b_addr(f).to_string();
        let mut ping = env.mp.ping_spawn(
            &t.a,
            &["--json", &peer, "-c", "150", "-i", "20ms", "-W", "2s"],
        )?;
        ping.wait_json(Duration::from_secs(15), |v| v["type"] == "probe")?;
        // From and to the sender's port, another socket of the same host.
        all.push(exchange(
            &t.a,
            SocketAddr::new(a2(f), P),
            &t.b,
            SocketAddr::new(t.b_addr(f), 9000),
        )?);
        all.push(exchange(
            &t.b,
            SocketAddr::new(t.b_addr(f), 9001),
            &t.a,
            SocketAddr::new(a2(f), P),
        )?);
        // From 862 on the reflector's host: a raw frame (AF_PACKET socket) through its egress.
        let rx =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(a2(f), 9002)))??;
        let frames = (0..N)
            .map(|i| {
                UdpFrame::new(
                    mac_b,
                    mac_a,
                    t.b_addr(f),
                    a2(f),
                    STAMP_PORT,
                    9002,
                    foreign_payload(i),
                )
                .build()
            })
            .collect::<Result<Vec<_>>>()?;
        send_frames(&t.b, TwoHosts::B_IF, &frames, Duration::from_millis(2))?;
        all.push(collect(
            &rx,
            N,
            format!("raw {}:{STAMP_PORT} -> {}:9002", t.b_addr(f), a2(f)),
        )?);
        // To 862 from ports the reflector never answers (a loop or amplification source).
        for sport in [53, STAMP_PORT] {
            let tx =
                t.a.enter(|| UdpSocket::bind(SocketAddr::new(a2(f), sport)))??;
            for i in 0..N {
                tx.send_to(
                    &foreign_payload(i),
                    SocketAddr::new(t.b_addr(f), STAMP_PORT),
                )?;
            }
        }
        runs.push(finish(ping)?);
    }
    let summary = refl.stop()?;
    report(&all)?;
    let (sent, received) = sum_sent(&runs);
    for (i, run) in runs.iter().enumerate() {
        let v = counters(run);
        eprintln!(
            "ping {i}: t1_stamped {} t4_stamped {} skip_not_our_socket {} skip_no_tag {} \
             handoff_t1 {} handoff_skip_not_our_socket {} (summaries {:?})",
            c(&v, "t1_stamped"),
            c(&v, "t4_stamped"),
            c(&v, "skip_not_our_socket"),
            c(&v, "skip_no_tag"),
            c(&v, "handoff_t1"),
            c(&v, "handoff_skip_not_our_socket"),
            run.summaries
                .iter()
                .map(|s| (s.sent, s.received))
                .collect::<Vec<_>>()
        );
        let s = run.summary()?;
        ensure!(
            c(&v, "t1_stamped") == s.sent && c(&v, "t4_stamped") == s.received,
            "sender stamped other datagrams than its {} requests / {} replies: {v}",
            s.sent,
            s.received
        );
        ensure!(
            c(&v, "skip_not_our_socket") >= N as u64 && c(&v, "skip_no_tag") >= N as u64,
            "sender skips not counted: {v}"
        );
        // The driver hand-off program: the same socket rule, its own counters (when on).
        if v["handoff"] == "on" {
            ensure!(
                c(&v, "handoff_t1") <= s.sent && c(&v, "handoff_skip_not_our_socket") >= N as u64,
                "sender hand-off: stamped other datagrams than its {} requests, or the \
                 foreign socket's not counted: {v}",
                s.sent
            );
        } else {
            eprintln!("SKIPPED hand-off checks: the sender's hand-off program is off: {v}");
        }
    }
    let replies = summary["replies"].as_u64().unwrap_or(0);
    eprintln!(
        "reflector: t2_stamped {} t3_stamped {} replies {replies} skip_not_our_socket {} \
         skip_src_port {}; probes sent {sent} received {received}",
        c(&summary, "t2_stamped"),
        c(&summary, "t3_stamped"),
        c(&summary, "skip_not_our_socket"),
        c(&summary, "skip_src_port"),
    );
    ensure!(
        c(&summary, "t2_stamped") == sent,
        "reflector stamped T2 into other datagrams than the {sent} probes"
    );
    ensure!(
        c(&summary, "t3_stamped") == replies,
        "reflector stamped T3 into other datagrams than its {replies} replies"
    );
    ensure!(
        c(&summary, "skip_not_our_socket") >= 2 * N as u64
            && c(&summary, "skip_src_port") >= 4 * N as u64,
        "reflector skips not counted: {summary}"
    );
    if summary["handoff"] == "on" {
        ensure!(
            c(&summary, "handoff_follow_up") <= replies,
            "reflector hand-off: follow-ups for other datagrams than its {replies} replies"
        );
    } else {
        eprintln!("SKIPPED hand-off checks: the reflector's hand-off program is off: {summary}");
    }
    Ok(())
}

/// VXLAN underlay of one family between A and B, VNI `vni`, its outer source port pinned to
/// the sender's port `P`; inner addresses 198.19.`vni`.x/24 and fd00:`vni`::x/64.
fn vxlan(t: &TwoHosts, underlay: Family, vni: u16) -> Result<()> {
    let name = format!("vx{vni}");
    let dstport = (4789 + vni).to_string();
    for (ns, ifname, local, remote, host) in [
        (
            &t.a,
            TwoHosts::A_IF,
            t.a_addr(underlay),
            t.b_addr(underlay),
            1u8,
        ),
        (
            &t.b,
            TwoHosts::B_IF,
            t.b_addr(underlay),
            t.a_addr(underlay),
            2u8,
        ),
    ] {
        ns.run([
            "ip",
            "link",
            "add",
            &name,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "local",
            &local.to_string(),
            "remote",
            &remote.to_string(),
            "dstport",
            &dstport,
            "srcport",
            &P.to_string(),
            &(P + 1).to_string(),
            "dev",
            ifname,
        ])?;
        ns.run(["ip", "link", "set", &name, "up"])?;
        add_addr(ns, &name, inner(vni, Family::V4, host), 24)?;
        add_addr(ns, &name, inner(vni, Family::V6, host), 64)?;
    }
    Ok(())
}

fn inner(vni: u16, f: Family, host: u8) -> IpAddr {
    match f {
        Family::V4 => Ipv4Addr::new(198, 19, vni as u8, host).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, vni, 0, 0, 0, 0, 0, host.into()).into(),
    }
}

#[test]
fn tunnel_packets_on_the_sender_port_are_untouched() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "tunnel_packets_on_the_sender_port_are_untouched",
        &["tcpdump"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    pin_ephemeral_port(&t.a)?;
    let tunnels = [(Family::V4, 42u16), (Family::V6, 66u16)];
    for (u, vni) in tunnels {
        vxlan(&t, u, vni)?;
    }
    let refl = env.mp.reflect(&t.b, &[])?;
    let cap = Capture::start_filter(&t.b, TwoHosts::B_IF, "udp port 4831 or udp port 4855")?;
    let mut all = Vec::new();
    let mut runs = Vec::new();
    for (_, vni) in tunnels {
        for f in [Family::V4, Family::V6] {
            // Our own probes through the tunnel: the inner request is stamped on the tunnel
            // device, the outer packet (same socket, source port P) must not be.
            let peer = inner(vni, f, 2).to_string();
            let vx = format!("vx{vni}");
            let mut ping = env.mp.ping_spawn(
                &t.a,
                &[
                    "--json",
                    "-I",
                    TwoHosts::A_IF,
                    "-I",
                    &vx,
                    &peer,
                    "-c",
                    "50",
                    "-i",
                    "20ms",
                    "-W",
                    "2s",
                ],
            )?;
            ping.wait_json(Duration::from_secs(15), |v| v["type"] == "ready")?;
            std::thread::sleep(Duration::from_millis(300));
            // Foreign traffic through the tunnel meanwhile: outer source port P too.
            all.push(exchange(
                &t.a,
                SocketAddr::new(inner(vni, f, 1), 9100),
                &t.b,
                SocketAddr::new(inner(vni, f, 2), 9101),
            )?);
            runs.push((format!("vx{vni} {}", f.label()), finish(ping)?));
        }
    }
    let outer = cap.stop()?.packets;
    refl.stop()?;
    report(&all)?;
    let bad_vni = outer
        .iter()
        .filter(|p| {
            let vni = p.dst.port() - 4789;
            p.payload.get(..8) != Some(&[0x08, 0, 0, 0, 0, 0, vni as u8, 0][..])
        })
        .count();
    eprintln!(
        "outer packets on B: {}, VXLAN header altered: {bad_vni}",
        outer.len()
    );
    for (label, run) in &runs {
        let v = counters(run);
        let s = run.summary()?;
        eprintln!(
            "{label}: sent {} received {}, t1_stamped {} skip_no_tag {} skip_not_our_socket {}",
            s.sent,
            s.received,
            c(&v, "t1_stamped"),
            c(&v, "skip_no_tag"),
            c(&v, "skip_not_our_socket")
        );
        ensure!(
            s.received == s.sent,
            "{label}: probes through the tunnel lost"
        );
        ensure!(
            c(&v, "t1_stamped") == s.sent && c(&v, "skip_no_tag") >= s.sent,
            "{label}: the outer packets of our probes were stamped or not counted: {v}"
        );
        ensure!(
            c(&v, "skip_not_our_socket") >= N as u64,
            "{label}: foreign tunnel packets not counted: {v}"
        );
    }
    ensure!(!outer.is_empty(), "no tunnel packet captured");
    ensure!(
        bad_vni == 0,
        "{bad_vni} outer packets with an altered VXLAN header"
    );
    Ok(())
}

#[test]
fn routed_traffic_to_a_pod_is_untouched() -> Result<()> {
    let Some(env) = TestEnv::acquire("routed_traffic_to_a_pod_is_untouched", &[])? else {
        return Ok(());
    };
    // A — R — B: R runs a reflector and a sender (on both its interfaces); B is the "pod".
    let t = Routed::new()?;
    pin_ephemeral_port(&t.r)?;
    // A's reflector (for R's sender) on another port: A's own sockets use 862 below.
    let refl_a = env.mp.reflect(&t.a, &["--port", "4862"])?;
    let refl_r = env.mp.reflect(&t.r, &[])?;
    let mut all = Vec::new();
    let mut runs = Vec::new();
    for f in [Family::V4, Family::V6] {
        let peer = t.a_addr(f).to_string();
        let mut ping = env.mp.ping_spawn(
            &t.r,
            &[
                "--json",
                "-I",
                Routed::RA_IF,
                "-I",
                Routed::RB_IF,
                &peer,
                "--port",
                "4862",
                "-c",
                "100",
                "-i",
                "20ms",
                "-W",
                "2s",
            ],
        )?;
        ping.wait_json(Duration::from_secs(15), |v| v["type"] == "probe")?;
        let (a, b) = (t.a_addr(f), t.b_addr(f));
        for (from, to) in [
            (SocketAddr::new(a, P), SocketAddr::new(b, STAMP_PORT)),
            (SocketAddr::new(a, STAMP_PORT), SocketAddr::new(b, P)),
        ] {
            all.push(exchange(&t.a, from, &t.b, to)?);
            all.push(exchange(&t.b, to, &t.a, from)?);
        }
        runs.push(finish(ping)?);
    }
    let sr = refl_r.stop()?;
    refl_a.stop()?;
    report(&all)?;
    eprintln!(
        "R reflector: t2_stamped {} t3_stamped {} skip_not_local {} skip_not_our_socket {}",
        c(&sr, "t2_stamped"),
        c(&sr, "t3_stamped"),
        c(&sr, "skip_not_local"),
        c(&sr, "skip_not_our_socket")
    );
    // Nobody probes R's reflector: whatever it stamped was someone else's.
    ensure!(
        c(&sr, "t2_stamped") == 0 && c(&sr, "t3_stamped") == 0,
        "R's reflector stamped forwarded datagrams: {sr}"
    );
    ensure!(
        c(&sr, "skip_not_local") >= 4 * N as u64 && c(&sr, "skip_not_our_socket") >= 4 * N as u64,
        "R's reflector skips not counted: {sr}"
    );
    for run in &runs {
        let v = counters(run);
        let s = run.summary()?;
        eprintln!(
            "R sender: sent {} received {}, t1_stamped {} t4_stamped {} skip_not_local {} \
             skip_not_our_socket {}",
            s.sent,
            s.received,
            c(&v, "t1_stamped"),
            c(&v, "t4_stamped"),
            c(&v, "skip_not_local"),
            c(&v, "skip_not_our_socket")
        );
        ensure!(
            c(&v, "t1_stamped") == s.sent && c(&v, "t4_stamped") == s.received,
            "R's sender stamped forwarded datagrams: {v}"
        );
        ensure!(
            c(&v, "skip_not_local") >= 2 * N as u64 && c(&v, "skip_not_our_socket") >= 2 * N as u64,
            "R's sender skips not counted: {v}"
        );
    }
    Ok(())
}
