//! Self-tests of the harness with plain tools and std sockets (no meshprobe needed).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshprobe_tests::capture::Capture;
use meshprobe_tests::craft::{Csum, UdpFrame, send_frames};
use meshprobe_tests::env::{missing_prerequisite, skip};
use meshprobe_tests::fake::{Action, FakeReflector};
use meshprobe_tests::netns::{Netns, list_namespaces};
use meshprobe_tests::nft::NftLoss;
use meshprobe_tests::reference::truth_rtts;
use meshprobe_tests::stamp::{build_request, reply_key};
use meshprobe_tests::stats::percentile;
use meshprobe_tests::topo::{Family, Routed, TwoHosts, mac_of};
use meshprobe_tests::{load, stats};

fn prereq(test: &str, tools: &[&str]) -> bool {
    match missing_prerequisite(tools) {
        Some(why) => {
            skip(test, &why);
            false
        }
        None => true,
    }
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn netns_is_deleted_on_drop_and_on_panic() -> Result<()> {
    if !prereq("netns_is_deleted_on_drop_and_on_panic", &[]) {
        return Ok(());
    }
    let name = {
        let ns = Netns::new("selftest")?;
        ensure!(list_namespaces()?.contains(&ns.name().to_string()));
        let lo = ns.run(["ip", "-j", "link", "show", "lo"])?;
        ensure!(
            lo.contains("\"UP\"") || lo.contains("LOWER_UP"),
            "lo not up: {lo}"
        );
        ns.name().to_string()
    };
    ensure!(!list_namespaces()?.contains(&name), "{name} left behind");

    let res = std::panic::catch_unwind(|| {
        let ns = Netns::new("panics").unwrap();
        let n = ns.name().to_string();
        std::fs::write(
            std::env::temp_dir().join(format!("mpt-panic-name-{}", std::process::id())),
            &n,
        )
        .unwrap();
        panic!("deliberate panic with {n} alive");
    });
    ensure!(res.is_err());
    let n = std::fs::read_to_string(
        std::env::temp_dir().join(format!("mpt-panic-name-{}", std::process::id())),
    )?;
    ensure!(!list_namespaces()?.contains(&n), "{n} survived a panic");
    Ok(())
}

#[test]
fn child_guard_terminates_and_kills() -> Result<()> {
    if !prereq("child_guard_terminates_and_kills", &[]) {
        return Ok(());
    }
    let ns = Netns::new("child")?;
    // Plain process: SIGTERM is enough.
    let pid = {
        let g = ns.spawn(["sleep", "30"])?;
        g.pid().unwrap()
    };
    ensure!(!pid_alive(pid), "sleep {pid} survived its guard");

    // A process that ignores SIGTERM is SIGKILLed after the grace period.
    let t0 = Instant::now();
    let pid = {
        let mut g = ns.spawn(["sh", "-c", "trap '' TERM; echo started; sleep 30"])?;
        ensure!(g.next_line(Duration::from_secs(5)).as_deref() == Some("started"));
        g.pid().unwrap()
    };
    let took = t0.elapsed();
    ensure!(!pid_alive(pid), "TERM-ignoring {pid} survived");
    ensure!(
        took >= Duration::from_millis(1900),
        "killed too early: {took:?}"
    );
    ensure!(took < Duration::from_secs(6), "kill took {took:?}");

    // JSON lines, waiting with timeouts, and graceful stop collecting the rest.
    let mut g = ns.spawn([
        "sh",
        "-c",
        "echo '{\"type\":\"ready\"}'; echo noise; echo '{\"type\":\"x\",\"n\":1}'; \
         trap 'echo \"{\\\"type\\\":\\\"bye\\\"}\"; exit 0' TERM; while :; do sleep 0.05; done",
    ])?;
    let r = g.wait_json(Duration::from_secs(5), |v| v["type"] == "ready")?;
    ensure!(r["type"] == "ready");
    let x = g
        .next_json(Duration::from_secs(5))?
        .context("second json")?;
    ensure!(x["n"] == 1, "{x}");
    std::thread::sleep(Duration::from_millis(100));
    let fin = g.stop()?;
    ensure!(fin.status.success(), "{:?}", fin.status);
    ensure!(
        fin.json_lines().iter().any(|v| v["type"] == "bye"),
        "{:?}",
        fin.stdout
    );
    Ok(())
}

#[test]
fn two_hosts_udp_via_enter_v4_v6() -> Result<()> {
    if !prereq("two_hosts_udp_via_enter_v4_v6", &["ping", "ethtool"]) {
        return Ok(());
    }
    let t = TwoHosts::new()?;
    t.set_tx_offload(false)?;
    t.set_tx_offload(true)?;
    for f in [Family::V4, Family::V6] {
        let dst = SocketAddr::new(t.b_addr(f), 9100);
        let server = t.b.enter(|| UdpSocket::bind(dst))??;
        server.set_read_timeout(Some(Duration::from_secs(2)))?;
        let client =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(f), 0)))??;
        client.send_to(b"hello", dst)?;
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf)?;
        ensure!(&buf[..n] == b"hello");
        ensure!(from.ip() == t.a_addr(f), "{from}");
    }
    Ok(())
}

#[test]
fn routed_forwards_and_decrements_ttl() -> Result<()> {
    if !prereq("routed_forwards_and_decrements_ttl", &["ping", "tcpdump"]) {
        return Ok(());
    }
    let t = Routed::new()?;
    for f in [Family::V4, Family::V6] {
        let cap = Capture::start(&t.b, Routed::B_IF, 9101)?;
        let dst = SocketAddr::new(t.b_addr(f), 9101);
        let server = t.b.enter(|| UdpSocket::bind(dst))??;
        server.set_read_timeout(Some(Duration::from_secs(2)))?;
        let client =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(f), 0)))??;
        client.send_to(b"via R", dst)?;
        let mut buf = [0u8; 16];
        let (n, _) = server.recv_from(&mut buf)?;
        ensure!(&buf[..n] == b"via R");
        let res = cap.stop()?;
        ensure!(res.packets.len() == 1, "{} packets", res.packets.len());
        ensure!(
            res.packets[0].ttl == 63,
            "{f:?}: ttl {} after one router",
            res.packets[0].ttl
        );
    }
    Ok(())
}

/// Sends `n` datagrams A->B from a std socket while capturing on both ends.
fn capture_std_udp(
    t: &TwoHosts,
    f: Family,
    port: u16,
    n: usize,
) -> Result<(Vec<meshprobe_tests::Packet>, Vec<meshprobe_tests::Packet>)> {
    let ca = Capture::start(&t.a, TwoHosts::A_IF, port)?;
    let cb = Capture::start(&t.b, TwoHosts::B_IF, port)?;
    let dst = SocketAddr::new(t.b_addr(f), port);
    let server = t.b.enter(|| UdpSocket::bind(dst))??;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    let client =
        t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(f), 0)))??;
    let mut buf = [0u8; 256];
    for i in 0..n {
        let payload: Vec<u8> = (0..61u8).map(|b| b.wrapping_add(i as u8)).collect();
        client.send_to(&payload, dst)?;
        let (m, _) = server.recv_from(&mut buf)?;
        ensure!(buf[..m] == payload[..]);
    }
    let a = ca.stop()?;
    let b = cb.stop()?;
    ensure!(a.dropped_by_kernel == 0 && b.dropped_by_kernel == 0);
    ensure!(
        a.packets.len() == n && b.packets.len() == n,
        "{} / {}",
        a.packets.len(),
        b.packets.len()
    );
    Ok((a.packets, b.packets))
}

#[test]
fn capture_timestamps_and_checksum_states() -> Result<()> {
    if !prereq(
        "capture_timestamps_and_checksum_states",
        &["ping", "tcpdump", "ethtool"],
    ) {
        return Ok(());
    }
    let t = TwoHosts::new()?;
    for f in [Family::V4, Family::V6] {
        // Offload off: the stack writes full checksums.
        t.set_tx_offload(false)?;
        let (a, b) = capture_std_udp(&t, f, 9102, 20)?;
        for (pa, pb) in a.iter().zip(&b) {
            ensure!(
                pa.checksum_ok(),
                "{f:?} offload off: bad checksum {:#06x}",
                pa.checksum
            );
            ensure!(pa.payload == pb.payload && pa.payload.len() == 61);
            ensure!(pb.ts_ns >= pa.ts_ns, "B saw it before A sent it");
            ensure!(
                pb.ts_ns - pa.ts_ns < 1_000_000,
                "one veth hop took {} ns",
                pb.ts_ns - pa.ts_ns
            );
        }
        // Offload on: locally generated UDP leaves CHECKSUM_PARTIAL on veth.
        t.set_tx_offload(true)?;
        let (a, _) = capture_std_udp(&t, f, 9103, 20)?;
        for p in &a {
            ensure!(
                p.checksum_is_partial() && !p.checksum_ok(),
                "{f:?} offload on: checksum {:#06x} is not the pseudo-header sum",
                p.checksum
            );
        }
    }
    Ok(())
}

#[test]
fn nft_loss_counter_matches_lost_datagrams() -> Result<()> {
    if !prereq("nft_loss_counter_matches_lost_datagrams", &["ping", "nft"]) {
        return Ok(());
    }
    let t = Routed::new()?;
    let nft = NftLoss::install(&t.r, "meta l4proto udp udp dport 9104", 10)?;
    let dst = SocketAddr::new(t.b_addr(Family::V4), 9104);
    let server = t.b.enter(|| UdpSocket::bind(dst))??;
    server.set_read_timeout(Some(Duration::from_millis(300)))?;
    let receiver = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = [0u8; 8];
        while server.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let client =
        t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(Family::V4), 0)))??;
    let n = 1000;
    for i in 0..n as u32 {
        client.send_to(&i.to_be_bytes(), dst)?;
        std::thread::sleep(Duration::from_micros(100));
    }
    let got = receiver.join().expect("receiver");
    let dropped = nft.dropped_packets()?;
    eprintln!("nft: sent {n}, received {got}, dropped {dropped}");
    ensure!(
        got + dropped == n,
        "received {got} + dropped {dropped} != {n}"
    );
    ensure!(
        (50..=150).contains(&dropped),
        "10% of {n} dropped {dropped}"
    );
    Ok(())
}

#[test]
fn crafted_frames_reach_a_socket_unless_malformed() -> Result<()> {
    if !prereq("crafted_frames_reach_a_socket_unless_malformed", &["ping"]) {
        return Ok(());
    }
    let t = TwoHosts::new()?;
    let a_mac = mac_of(&t.a, TwoHosts::A_IF)?;
    let b_mac = mac_of(&t.b, TwoHosts::B_IF)?;
    for f in [Family::V4, Family::V6] {
        let port = 9105;
        let server =
            t.b.enter(|| UdpSocket::bind(SocketAddr::new(t.b_addr(f), port)))??;
        server.set_read_timeout(Some(Duration::from_millis(300)))?;
        let base = UdpFrame::new(
            a_mac,
            b_mac,
            t.a_addr(f),
            t.b_addr(f),
            40000,
            port,
            b"good".to_vec(),
        );
        let mut frames = vec![base.build()?];
        let mut long = base.clone();
        long.payload = b"len-lies".to_vec();
        long.udp_len = Some(8 + 100);
        frames.push(long.build()?);
        let mut badsum = base.clone();
        badsum.payload = b"bad-csum".to_vec();
        badsum.csum = Csum::Raw(0x1234);
        frames.push(badsum.build()?);
        if f == Family::V4 {
            let mut zero = base.clone();
            zero.payload = b"zero-csum".to_vec();
            zero.csum = Csum::Zero;
            frames.push(zero.build()?);
        }
        send_frames(&t.a, TwoHosts::A_IF, &frames, Duration::from_millis(1))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            ensure!(from == SocketAddr::new(t.a_addr(f), 40000));
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let want: Vec<&str> = if f == Family::V4 {
            vec!["good", "zero-csum"]
        } else {
            vec!["good"]
        };
        ensure!(got == want, "{f:?}: received {got:?}, expected {want:?}");
    }
    Ok(())
}

#[test]
fn reference_rtt_through_fake_reflector() -> Result<()> {
    if !prereq("reference_rtt_through_fake_reflector", &["ping", "tcpdump"]) {
        return Ok(());
    }
    let t = TwoHosts::new()?;
    let port = 9106;
    for f in [Family::V4, Family::V6] {
        let ca = Capture::start(&t.a, TwoHosts::A_IF, port)?;
        let cb = Capture::start(&t.b, TwoHosts::B_IF, port)?;
        let fake = FakeReflector::start(&t.b, SocketAddr::new(t.b_addr(f), port), |seq| {
            match seq % 10 {
                3 => Action::Duplicate,
                6 => Action::Reorder,
                _ => Action::Reply,
            }
        })?;
        let client =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(f), 0)))??;
        client.set_read_timeout(Some(Duration::from_millis(300)))?;
        let n = 50u32;
        for seq in 0..n {
            client.send_to(
                &build_request(seq, 7, Some((24, 24))),
                SocketAddr::new(t.b_addr(f), port),
            )?;
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut seqs = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok((m, _)) = client.recv_from(&mut buf) {
            ensure!(m == 44 + 4 + 24, "reply of {m} octets");
            seqs.push(reply_key(&buf[..m]).unwrap().1);
        }
        let st = fake.stop()?;
        ensure!(
            st.requests == n as u64 && st.duplicated == 5 && st.reordered == 5,
            "{st:?}"
        );
        ensure!(seqs.len() == (n + 5) as usize, "got {} replies", seqs.len());
        let out_of_order = seqs.windows(2).filter(|w| w[1] < w[0]).count();
        ensure!(out_of_order == 5, "{out_of_order} out of order in {seqs:?}");

        let a = ca.stop()?.packets;
        let b = cb.stop()?.packets;
        let truth = truth_rtts(&a, &b, port);
        ensure!(truth.len() == n as usize, "{f:?}: {} matched", truth.len());
        let v: Vec<i64> = truth.values().copied().collect();
        let p50 = percentile(&v, 50.0).unwrap();
        let max = *v.iter().max().unwrap();
        eprintln!(
            "{f:?}: reference RTT p50 {} max {}",
            stats::us(p50),
            stats::us(max)
        );
        ensure!(
            v.iter().all(|&x| x > 0),
            "non-positive reference RTT: {v:?}"
        );
        // The held replies wait ~2 ms for the next request; everything else is one veth RTT.
        ensure!(p50 < 500_000, "p50 {p50} ns");
    }
    Ok(())
}

#[test]
fn cpu_stress_starts_and_stops() -> Result<()> {
    if !prereq("cpu_stress_starts_and_stops", &["stress-ng"]) {
        return Ok(());
    }
    let pid = {
        let mut g = load::cpu_stress(1, Duration::from_secs(20))?;
        ensure!(g.is_running());
        g.pid().unwrap()
    };
    ensure!(!pid_alive(pid), "stress-ng {pid} survived");
    Ok(())
}

#[test]
fn udp_checksum_helpers_agree_with_pnet() {
    // No root needed: compare our checksum with pnet's on a crafted frame.
    use pnet::packet::Packet as _;
    let src: IpAddr = "198.18.0.1".parse().unwrap();
    let dst: IpAddr = "198.18.0.2".parse().unwrap();
    let f = UdpFrame::new(
        [2; 6],
        [4; 6],
        src,
        dst,
        1234,
        862,
        build_request(1, 2, None),
    );
    let bytes = f.build().unwrap();
    let p = meshprobe_tests::capture::decode_frame(0, &bytes).unwrap();
    assert!(p.checksum_ok());
    let eth = pnet::packet::ethernet::EthernetPacket::new(&bytes).unwrap();
    let ip = pnet::packet::ipv4::Ipv4Packet::new(eth.payload()).unwrap();
    let udp = pnet::packet::udp::UdpPacket::new(ip.payload()).unwrap();
    let want = pnet::packet::udp::ipv4_checksum(&udp, &ip.get_source(), &ip.get_destination());
    assert_eq!(p.checksum, want);
}
