//! Issue test 6: programs attached on both sides leave other traffic alone, and probes carry
//! valid checksums on the wire (tx checksum offload off) or consistent CHECKSUM_PARTIAL ones
//! (offload on) that the kernel accepts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::capture::Capture;
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::{Family, STAMP_PORT, TestEnv, TwoHosts};
use rand::RngCore;

const STREAM_BYTES: usize = 4 << 20;

/// `-W` of the runs that expect every reply: a reply later than this counts as lost. Generous,
/// so a stalled vCPU cannot turn a slow reply into a loss; it costs nothing while replies come
/// (the sender exits once the last one is in).
const REPLY_WAIT: Duration = Duration::from_secs(5);

#[test]
fn non_probe_traffic_is_untouched() -> Result<()> {
    let Some(env) = TestEnv::acquire("non_probe_traffic_is_untouched", &["ping"])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let peer = t.b_addr(Family::V4).to_string();
    // Probes until stopped (-c 0): they must keep running through every check below,
    // however long those take here.
    let mut sender = env.mp.ping_spawn(
        &t.a,
        &["--json", &peer, "-c", "0", "-i", "1ms", "-W", "500ms"],
    )?;
    let ready = sender.wait_json(Duration::from_secs(15), |v| v["type"] == "ready")?;
    env.mp
        .check_timestamping("meshprobe ping", &ready, &sender.stderr_text())?;
    // Wait for the first probe so both sides' programs are known to be attached and working.
    sender.wait_json(Duration::from_secs(5), |v| v["type"] == "probe")?;

    for f in [Family::V4, Family::V6] {
        let dst = t.b_addr(f).to_string();
        let out =
            t.a.output(["ping", "-n", "-c", "5", "-i", "0.1", "-W", "1", &dst])?;
        ensure!(
            out.status.success(),
            "ICMP ping {dst} failed with probes running: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let mut data = vec![0u8; STREAM_BYTES];
    rand::rng().fill_bytes(&mut data);
    let listen = SocketAddr::new(t.b_addr(Family::V4), 5001);
    let listener = t.b.enter(|| TcpListener::bind(listen))??;
    let server = std::thread::spawn(move || -> Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::with_capacity(STREAM_BYTES);
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let sent = data.clone();
    t.a.enter(move || -> Result<()> {
        let mut c = TcpStream::connect_timeout(&listen, Duration::from_secs(5))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(&sent)?;
        c.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })??;
    let got = server
        .join()
        .expect("server thread")
        .context("TCP server")?;
    ensure!(
        got.len() == data.len(),
        "received {} of {} bytes",
        got.len(),
        data.len()
    );
    ensure!(got == data, "4 MiB TCP stream corrupted in transit");
    eprintln!("ICMP v4/v6 ok, {} byte TCP stream bit-identical", got.len());

    ensure!(
        sender.is_running(),
        "meshprobe ping exited before the traffic checks finished"
    );
    let fin = sender.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(5))?;
    let summary = fin
        .json_lines()
        .into_iter()
        .find(|v| v["type"] == "summary");
    eprintln!("sender summary after SIGINT: {summary:?}");
    refl.stop()?;
    Ok(())
}

/// Captures probes on both veth ends for one family and offload setting; checks every probe
/// packet's checksum and that every probe got its reply.
fn checksums(env: &TestEnv, t: &TwoHosts, f: Family, offload: bool) -> Result<()> {
    t.set_tx_offload(offload)?;
    let err0 =
        t.a.snmp_counter("Udp", "InCsumErrors")? + t.b.snmp_counter("Udp", "InCsumErrors")?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let ca = Capture::start(&t.a, TwoHosts::A_IF, STAMP_PORT)?;
    let cb = Capture::start(&t.b, TwoHosts::B_IF, STAMP_PORT)?;
    let peer = t.b_addr(f).to_string();
    let n = 200u32;
    let wait = humantime::format_duration(REPLY_WAIT).to_string();
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", &n.to_string(), "-i", "2ms", "-W", &wait],
        ping_timeout(n, Duration::from_millis(2), REPLY_WAIT),
    )?;
    let pa = ca.stop()?.packets;
    let pb = cb.stop()?.packets;
    refl.stop()?;
    let err1 =
        t.a.snmp_counter("Udp", "InCsumErrors")? + t.b.snmp_counter("Udp", "InCsumErrors")?;
    let s = run.summary()?;
    let all: Vec<_> = pa.iter().chain(&pb).collect();
    let ok = all.iter().filter(|p| p.checksum_ok()).count();
    let partial = all
        .iter()
        .filter(|p| !p.checksum_ok() && p.checksum_is_partial())
        .count();
    let absent = all.iter().filter(|p| p.checksum_absent()).count();
    let bad: Vec<_> = all
        .iter()
        .filter(|p| !p.checksum_ok() && !p.checksum_is_partial())
        .collect();
    eprintln!(
        "{} offload {}: {} probe packets captured: {ok} verify ({absent} of them IPv4 zero), \
         {partial} CHECKSUM_PARTIAL, {} bad; sent {} received {}; UDP InCsumErrors +{}",
        f.label(),
        if offload { "on" } else { "off" },
        all.len(),
        bad.len(),
        s.sent,
        s.received,
        err1 - err0
    );
    // Each probe's request and reply, seen on both veth ends. Capture::stop waits until
    // tcpdump has read everything its socket took in, so a slow tcpdump cannot cut this short.
    ensure!(
        all.len() as u64 >= 4 * s.sent,
        "captured {} packets for {} probes",
        all.len(),
        s.sent
    );
    ensure!(all.iter().all(|p| p.complete), "truncated captures");
    if let Some(p) = bad.first() {
        anyhow::bail!(
            "{} offload {offload}: {} packets with a bad checksum, first {} -> {} field {:#06x}",
            f.label(),
            bad.len(),
            p.src,
            p.dst,
            p.checksum
        );
    }
    if !offload {
        ensure!(
            partial == 0,
            "offload off but {partial} packets carry only the pseudo-header sum"
        );
    }
    if f == Family::V6 {
        ensure!(absent == 0, "IPv6 probes with a zero checksum");
    }
    ensure!(
        s.sent == n as u64 && s.received == s.sent,
        "not every probe got a reply: {s:?}"
    );
    ensure!(err1 == err0, "UDP InCsumErrors grew by {}", err1 - err0);
    Ok(())
}

#[test]
fn probe_checksums_on_the_wire() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "probe_checksums_on_the_wire",
        &["ping", "tcpdump", "ethtool"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    for f in [Family::V4, Family::V6] {
        for offload in [false, true] {
            checksums(&env, &t, f, offload)?;
        }
    }
    Ok(())
}

/// IPv4 UDP checksum 0 ("none") in both directions: the in-place rewrites must leave it 0
/// (BPF_F_MARK_MANGLED_0) rather than turn it into a wrong checksum that the kernel drops.
#[test]
fn zero_udp_checksums_survive_the_rewrites() -> Result<()> {
    use meshprobe_harness::craft::{Csum, UdpFrame, send_frames};
    use meshprobe_harness::fake::{Action, FakeReflector};
    use meshprobe_harness::stamp::{build_request, reply_key};
    use meshprobe_harness::topo::mac_of;
    use std::net::UdpSocket;

    let Some(env) = TestEnv::acquire(
        "zero_udp_checksums_survive_the_rewrites",
        &["ping", "tcpdump", "ethtool"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    t.set_tx_offload(false)?;
    let (a, b) = (t.a_addr(Family::V4), t.b_addr(Family::V4));

    // Requests with checksum 0 into meshprobe's reflector (its ingress program writes T2).
    let refl = env.mp.reflect(&t.b, &[])?;
    let cb = Capture::start(&t.b, TwoHosts::B_IF, STAMP_PORT)?;
    let sport = 40002;
    let sock = t.a.enter(|| UdpSocket::bind(SocketAddr::new(a, sport)))??;
    // Only how often the loop below looks at its deadline: it ends once every request is
    // answered, not after a silence.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let (a_mac, b_mac) = (mac_of(&t.a, TwoHosts::A_IF)?, mac_of(&t.b, TwoHosts::B_IF)?);
    let n = 20u32;
    let wait = humantime::format_duration(REPLY_WAIT).to_string();
    let frames = (0..n)
        .map(|seq| {
            let mut f = UdpFrame::new(
                a_mac,
                b_mac,
                a,
                b,
                sport,
                STAMP_PORT,
                build_request(seq, 0x0c0c, Some((20, 20))),
            );
            f.csum = Csum::Zero;
            f.build()
        })
        .collect::<Result<Vec<_>>>()?;
    send_frames(&t.a, TwoHosts::A_IF, &frames, Duration::from_millis(2))?;
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + REPLY_WAIT;
    while answered.len() < n as usize && std::time::Instant::now() < deadline {
        if let Ok((m, _)) = sock.recv_from(&mut buf)
            && let Some((_, seq)) = reply_key(&buf[..m])
        {
            answered.insert(seq);
        }
    }
    let reqs = cb.stop()?.packets;
    let zero_in = reqs
        .iter()
        .filter(|p| p.dst.port() == STAMP_PORT && p.checksum == 0)
        .count();
    let sum = refl.stop()?;
    eprintln!(
        "checksum-0 requests: {zero_in} captured at B with checksum 0, {} answered; reflector t2_stamped {}",
        answered.len(),
        sum["ebpf_counters"]["t2_stamped"]
    );
    ensure!(
        zero_in == n as usize,
        "{zero_in} of {n} requests reached B with checksum 0"
    );
    ensure!(
        answered.len() == n as usize,
        "only {} of {n} checksum-0 requests answered",
        answered.len()
    );

    // Replies with checksum 0 into meshprobe's sender (its ingress program writes T4).
    let fake = FakeReflector::start_with(
        &t.b,
        SocketAddr::new(b, STAMP_PORT),
        |_| Action::Reply,
        true,
    )?;
    let ca = Capture::start(&t.a, TwoHosts::A_IF, STAMP_PORT)?;
    let run = env.mp.ping(
        &t.a,
        &[
            &b.to_string(),
            "-c",
            &n.to_string(),
            "-i",
            "5ms",
            "-W",
            &wait,
        ],
        ping_timeout(n, Duration::from_millis(5), REPLY_WAIT),
    )?;
    let caps = ca.stop()?.packets;
    fake.stop()?;
    let zero_replies = caps
        .iter()
        .filter(|p| p.src.port() == STAMP_PORT && p.checksum == 0)
        .count();
    let s = run.summary()?;
    eprintln!(
        "checksum-0 replies: {zero_replies} captured at A, sent {} received {}",
        s.sent, s.received
    );
    ensure!(
        zero_replies == n as usize,
        "{zero_replies} of {n} fake replies carried checksum 0"
    );
    ensure!(
        s.received == n as u64,
        "only {} of {n} checksum-0 replies accepted",
        s.received
    );
    ensure!(
        run.probes.iter().all(|p| p.t4_source != "socket"),
        "T4 not from the kernel program"
    );
    Ok(())
}
