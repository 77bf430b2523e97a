//! Issue 13, item 5: probing and `/healthz` survive a flood at the reflector port and a crowd of
//! idle admin connections.
//!
//! Three agents on the bridge mesh (with ZooKeeper when it is installed): A (node0) probes B
//! (node1) and C (node2) every 20 ms without jitter, in 2 s windows. Phases, each aligned to
//! window boundaries so every judged window lies inside one phase:
//!
//! 1. baseline, 3 windows;
//! 2. flood, 5 windows: one thread in B's namespace sends 64-octet, well-formed STAMP requests
//!    (base packet + Extra Padding TLV) from B's address, port 40000, to A's reflector with
//!    sendmmsg, as fast as it can. B is a known peer and the source port an ordinary one, so
//!    the reflector has to work on every request: the worst case for A;
//! 3. idle admin connections, 5 windows: 1 000 TCP connections from B's address to A's admin
//!    port, opened and left silent.
//!
//! Throughout, a client in A's namespace asks `GET /healthz` over loopback (another source
//! address than the idle connections) every 100 ms with a 1 s deadline.
//!
//! Judged against the same run's baseline, never a speed figure: in every window of phases 2
//! and 3, towards each peer, A resolved at least 90 % of the probes the baseline gives (the
//! lower of the configured rate and the baseline's median count) and at least 90 % of those
//! were answered; `/healthz` answered 200 within 1 s for at least 99 % of the polls of each
//! phase; A's ZooKeeper session (when there is one) is the same before and after. The flood
//! must really have happened: fewer than 50 000 datagrams/s arriving on A's interface fails as
//! "flood too weak to judge". Everything measured is printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use meshprobe_harness::agent::{
    Cluster, HEARTBEAT_PATH, metric_sum, num, tai_now_ns, window_now_of,
};
use meshprobe_harness::load::{CpuStat, ticks_ms};
use meshprobe_harness::netns::Netns;
use meshprobe_harness::safety::udp_counter;
use meshprobe_harness::services::zookeeper_missing;
use meshprobe_harness::stamp::build_request;
use meshprobe_harness::topo::Family;
use serde_json::Value;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const PEERS: [usize; 2] = [B, C];

const WINDOW: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: &str = "500ms";
const BASELINE_WINDOWS: u64 = 3;
const FLOOD_WINDOWS: u64 = 5;
const IDLE_WINDOWS: u64 = 5;
/// Start each phase this long after its window boundary (clock reads, thread start-up).
const PHASE_OFFSET: Duration = Duration::from_millis(30);

/// UDP payload of each flood datagram (the 64 octets): 44-octet base packet plus an
/// Extra Padding TLV of 16 octets.
const FLOOD_PAYLOAD: usize = 64;
const FLOOD_SRC_PORT: u16 = 40_000;
/// Datagrams per sendmmsg call.
const FLOOD_BATCH: usize = 64;
/// Below this many datagrams/s arriving at A the run cannot say anything.
const FLOOD_MIN_PPS: f64 = 50_000.0;

const IDLE_CONNECTIONS: usize = 1000;
const ADMIN_PORT: u16 = 9862;

const POLL_EVERY: Duration = Duration::from_millis(100);
const POLL_DEADLINE: Duration = Duration::from_secs(1);

const MIN_SENT_SHARE: f64 = 0.90;
const MIN_ANSWERED_SHARE: f64 = 0.90;
const MIN_HEALTHZ_SHARE: f64 = 0.99;

#[test]
fn flood_and_idle_admin_connections_leave_probing_and_healthz_up_ipv4() -> Result<()> {
    run(
        "flood_and_idle_admin_connections_leave_probing_and_healthz_up_ipv4",
        Family::V4,
    )
}

#[test]
fn flood_and_idle_admin_connections_leave_probing_and_healthz_up_ipv6() -> Result<()> {
    run(
        "flood_and_idle_admin_connections_leave_probing_and_healthz_up_ipv6",
        Family::V6,
    )
}

fn run(test: &str, family: Family) -> Result<()> {
    let with_zk = match zookeeper_missing() {
        None => true,
        Some(why) => {
            eprintln!("note: without ZooKeeper ({why}): static peers only");
            false
        }
    };
    let Some(mut lab) = Cluster::acquire(test, 3, family, with_zk, false)? else {
        return Ok(());
    };
    let window_s = humantime::format_duration(WINDOW).to_string();
    let admin_any = match family {
        Family::V4 => format!("0.0.0.0:{ADMIN_PORT}"),
        Family::V6 => format!("[::]:{ADMIN_PORT}"),
    };
    let peers = PEERS
        .iter()
        .map(|&i| format!("{}={}", Cluster::node_id(i), lab.node_ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let cfg = lab
        .config(A)
        .env("MESHPROBE_PEERS", peers)
        .env("MESHPROBE_INTERVAL", humantime::format_duration(INTERVAL))
        .env("MESHPROBE_JITTER", 0)
        .env("MESHPROBE_TIMEOUT", PROBE_TIMEOUT)
        .env("MESHPROBE_WINDOW", &window_s)
        // Reachable from B's address for phase 3; polled over loopback.
        .env("MESHPROBE_ADMIN_LISTEN", &admin_any);
    lab.start_agent_with(A, &cfg)?;
    for i in PEERS {
        let cfg = lab.config(i).env("MESHPROBE_WINDOW", &window_s);
        lab.start_agent_with(i, &cfg)?;
    }
    let a_ip = lab.node_ip(A);
    let b_ip = lab.node_ip(B);
    let a_if = lab.star.node_if(A);
    let a_pid = lab.agent(A).pid().context("agent A has no pid")?;
    let admin = lab.agent(A).admin_addr()?;

    // A measured both peers in a full window.
    let first = window_now_of(WINDOW) + 1;
    wait_measured(&mut lab, first, Duration::from_secs(20)).with_context(|| lab.diagnostics())?;
    let znode = format!("{HEARTBEAT_PATH}/{}", Cluster::node_id(A));
    let session_before = with_zk.then(|| lab.zk().session_of(&znode)).flatten();
    if with_zk && session_before.is_none() {
        bail!(
            "{znode} is no ephemeral znode before the test\n{}",
            lab.diagnostics()
        );
    }

    // /healthz from A's own namespace over loopback, for the whole run.
    let stop_polls = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop_polls.clone();
        lab.star
            .node(A)
            .spawn_thread(move || poll_healthz(admin, &stop))
    };

    // Phase 1: baseline.
    let (w_base, base_start) = wait_boundary();
    // Counters before the flood, read in the baseline's last window.
    wait_boundary_at(w_base + BASELINE_WINDOWS - 1);
    let before = Counters::read(&lab, &a_if)?;

    // Phase 2: flood, from just after its first boundary to its last.
    let (w_flood, flood_start) = wait_boundary_at(w_base + BASELINE_WINDOWS);
    let flood_end = flood_start + WINDOW * FLOOD_WINDOWS as u32 - PHASE_OFFSET;
    let cpu_flood0 = CpuStat::now();
    let threads_before = thread_cpu(a_pid);
    let flood = {
        let (src, dst) = (
            SocketAddr::new(b_ip, FLOOD_SRC_PORT),
            SocketAddr::new(a_ip, meshprobe_harness::STAMP_PORT),
        );
        lab.star
            .node(B)
            .spawn_thread(move || flood_until(src, dst, flood_end))
    };
    let flood_stats = join(flood, "flood")??;
    let flood_secs = flood_stats.elapsed.as_secs_f64();
    let threads_after = thread_cpu(a_pid);
    let cpu_flood1 = CpuStat::now();
    let after = Counters::read(&lab, &a_if)?;

    // Phase 3: idle admin connections from B's address.
    let (w_idle, idle_start) = wait_boundary_at(w_flood + FLOOD_WINDOWS);
    let idle_end = idle_start + WINDOW * IDLE_WINDOWS as u32 - PHASE_OFFSET;
    let idle = {
        let target = SocketAddr::new(a_ip, ADMIN_PORT);
        lab.star
            .node(B)
            .spawn_thread(move || hold_idle(target, IDLE_CONNECTIONS, idle_end))
    };
    let idle_stats = join(idle, "idle connections")??;
    let (w_end, _) = wait_boundary_at(w_idle + IDLE_WINDOWS);
    stop_polls.store(true, Ordering::Relaxed);
    let polls = join(poller, "healthz poller")?;
    wait_measured(&mut lab, w_end - 1, Duration::from_secs(10))
        .with_context(|| lab.diagnostics())?;
    let end = Counters::read(&lab, &a_if)?;

    // ---- report ----
    let mut failures = Vec::new();
    eprintln!("== {test} ({}) ==", family.label());
    let arrived = after.rx_packets.saturating_sub(before.rx_packets);
    let arrived_pps = arrived as f64 / flood_secs;
    let sent_pps = flood_stats.sent as f64 / flood_secs;
    eprintln!(
        "flood: {} datagrams of {FLOOD_PAYLOAD} octets sent in {flood_secs:.2} s ({sent_pps:.0}/s, \
         {} sendmmsg calls, {} errors{}); on A's {a_if}: {arrived} received ({arrived_pps:.0}/s), \
         {} dropped; A's UDP: {} datagrams delivered, {} receive-buffer errors; A's reflector: \
         {} requests, {} replies",
        flood_stats.sent,
        flood_stats.calls,
        flood_stats.errors,
        flood_stats
            .first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        after.rx_dropped.saturating_sub(before.rx_dropped),
        after.udp_in.saturating_sub(before.udp_in),
        after
            .udp_rcvbuf_errors
            .saturating_sub(before.udp_rcvbuf_errors),
        delta(after.requests, before.requests),
        delta(after.replies, before.replies),
    );
    if let (Some(c0), Some(c1)) = (cpu_flood0, cpu_flood1) {
        let total = (c1.total - c0.total).max(1) as f64;
        eprintln!(
            "machine CPU during the flood: busy {:.0} %, irq+softirq {:.0} %, steal {:.0} % \
             (of all CPUs)",
            100.0 * (c1.busy - c0.busy) as f64 / total,
            100.0 * (c1.irq - c0.irq) as f64 / total,
            100.0 * (c1.steal - c0.steal) as f64 / total,
        );
    }
    eprintln!("agent A's threads, CPU time during the flood:");
    for (name, t1) in &threads_after {
        let t0 = threads_before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, t)| *t);
        eprintln!("  {name:<16} {:>6} ms", ticks_ms(t1.saturating_sub(t0)));
    }
    if arrived_pps < FLOOD_MIN_PPS {
        failures.push(format!(
            "flood too weak to judge: {arrived_pps:.0} datagrams/s arrived at A \
             ({sent_pps:.0}/s sent), want at least {FLOOD_MIN_PPS:.0}/s"
        ));
    }
    eprintln!(
        "idle admin connections from {b_ip}: {} opened, {} failed to open{}, {} closed by A \
         before the end, held {:.1} s; A refused: {}",
        idle_stats.opened,
        idle_stats.failed,
        idle_stats
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        idle_stats.closed_by_peer,
        idle_stats.held.as_secs_f64(),
        end.refused_text(&before),
    );

    // Probing, per window.
    let sums = lab.agent(A).summaries();
    let row = |dst: usize, w: u64| -> Option<(u64, u64)> {
        let id = Cluster::node_id(dst);
        sums.iter()
            .find(|s| s["dst"] == id.as_str() && num(s, "window_seq") == w)
            .map(|s| (num(s, "sent"), num(s, "received")))
    };
    let configured = (WINDOW.as_nanos() / INTERVAL.as_nanos()) as u64;
    let phases = [
        ("baseline", w_base, BASELINE_WINDOWS),
        ("flood", w_flood, FLOOD_WINDOWS),
        ("idle admin connections", w_idle, IDLE_WINDOWS),
    ];
    for &dst in &PEERS {
        let base: Vec<u64> = (w_base..w_base + BASELINE_WINDOWS)
            .map(|w| row(dst, w).map_or(0, |r| r.0))
            .collect();
        let mut sorted = base.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let expected = median.min(configured);
        let min_sent = (MIN_SENT_SHARE * expected as f64).ceil() as u64;
        eprintln!(
            "A -> {}: configured {configured} probes per window, baseline median {median}: \
             every judged window needs >= {min_sent} resolved, >= {:.0} % of them answered",
            Cluster::node_id(dst),
            MIN_ANSWERED_SHARE * 100.0
        );
        if median * 2 < configured {
            failures.push(format!(
                "A -> {}: baseline resolved only {base:?} probes per window (configured \
                 {configured}): the machine is too busy to judge",
                Cluster::node_id(dst)
            ));
        }
        for (phase, w0, n) in phases {
            let cells: Vec<String> = (w0..w0 + n)
                .map(|w| match row(dst, w) {
                    Some((s, r)) => format!("{s}/{r}"),
                    None => "none".into(),
                })
                .collect();
            eprintln!(
                "  {phase:<24} sent/received per window: {}",
                cells.join("  ")
            );
            if phase == "baseline" {
                continue;
            }
            for w in w0..w0 + n {
                let (s, r) = row(dst, w).unwrap_or((0, 0));
                if s < min_sent {
                    failures.push(format!(
                        "{phase}: window {w}: A resolved {s} probes to {}, want >= {min_sent} \
                         (90 % of {expected})",
                        Cluster::node_id(dst)
                    ));
                }
                if (r as f64) < MIN_ANSWERED_SHARE * s as f64 {
                    failures.push(format!(
                        "{phase}: window {w}: {r} of {s} probes to {} answered, want >= 90 %",
                        Cluster::node_id(dst)
                    ));
                }
            }
        }
    }

    // /healthz, per phase.
    let phase_of = |at: Instant| {
        if at < base_start {
            None
        } else if at < flood_start {
            Some(0)
        } else if at < flood_end {
            Some(1)
        } else if at < idle_start {
            None
        } else if at < idle_end {
            Some(2)
        } else {
            None
        }
    };
    for (k, (phase, _, _)) in phases.iter().enumerate() {
        let mine: Vec<&Poll> = polls.iter().filter(|p| phase_of(p.at) == Some(k)).collect();
        let ok: Vec<Duration> = mine.iter().filter_map(|p| p.outcome.clone().ok()).collect();
        let failed: Vec<String> = mine
            .iter()
            .filter_map(|p| p.outcome.clone().err())
            .collect();
        let worst = ok.iter().max().copied().unwrap_or_default();
        eprintln!(
            "/healthz during {phase}: {} polls, {} answered within {POLL_DEADLINE:?} (slowest \
             {worst:?}), {} not{}",
            mine.len(),
            ok.len(),
            failed.len(),
            failed
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        if k > 0 && (ok.len() as f64) < MIN_HEALTHZ_SHARE * mine.len() as f64 {
            failures.push(format!(
                "/healthz during {phase}: {} of {} polls answered within {POLL_DEADLINE:?}, \
                 want >= 99 %",
                ok.len(),
                mine.len()
            ));
        }
        if k > 0 && mine.len() < 20 {
            failures.push(format!(
                "/healthz during {phase}: only {} polls",
                mine.len()
            ));
        }
    }

    // ZooKeeper.
    if with_zk {
        let session_after = lab.zk().session_of(&znode);
        let ready = lab.agent(A).http_get("/readyz");
        eprintln!(
            "ZooKeeper: A's session {session_before:?} before, {session_after:?} after; \
             /readyz {ready:?}; meshprobe_zookeeper_state {:?}",
            end.zk_state
        );
        if session_after != session_before {
            failures.push(format!(
                "A's ZooKeeper session changed: {session_before:?} before, {session_after:?} \
                 after (expired under load)"
            ));
        }
        if end.zk_state != Some(2.0) {
            failures.push(format!(
                "meshprobe_zookeeper_state {:?} at the end, not 2 (registered)",
                end.zk_state
            ));
        }
        // Ready includes "registered in ZooKeeper".
        if !matches!(&ready, Ok((200, _))) {
            failures.push(format!("/readyz after the test: {ready:?}, want 200"));
        }
    }
    if !lab.agent_mut(A).is_running() {
        failures.push("agent A exited".into());
    }
    if !failures.is_empty() {
        bail!(
            "{} failure(s):\n{}\n--- agent A stderr (tail)\n{}",
            failures.len(),
            failures.join("\n"),
            lab.agent(A).stderr_tail(20)
        );
    }
    Ok(())
}

/// Waits until A printed a summary with `received > 0` towards every peer in a window
/// `>= min_seq`.
fn wait_measured(lab: &mut Cluster, min_seq: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let sums = lab.agent(A).summaries();
        let missing: Vec<String> = PEERS
            .iter()
            .map(|&i| Cluster::node_id(i))
            .filter(|id| {
                !sums.iter().any(|s| {
                    s["dst"] == id.as_str()
                        && num(s, "window_seq") >= min_seq
                        && num(s, "received") > 0
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !lab.agent_mut(A).is_running() {
            bail!("agent A exited:\n{}", lab.agent(A).stderr_tail(30));
        }
        if Instant::now() >= deadline {
            bail!("A printed no summary with replies from {missing:?} in a window >= {min_seq}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sleeps until [`PHASE_OFFSET`] after the start of window `w`: (w, that instant).
fn wait_boundary_at(w: u64) -> (u64, Instant) {
    let len = WINDOW.as_nanos() as u64;
    let target_tai = w * len + PHASE_OFFSET.as_nanos() as u64;
    let (now, now_tai) = (Instant::now(), tai_now_ns());
    let at = if target_tai >= now_tai {
        now + Duration::from_nanos(target_tai - now_tai)
    } else {
        now - Duration::from_nanos(now_tai - target_tai)
    };
    thread::sleep(at.saturating_duration_since(Instant::now()));
    (w, at)
}

/// [`wait_boundary_at`] the next window.
fn wait_boundary() -> (u64, Instant) {
    wait_boundary_at(window_now_of(WINDOW) + 1)
}

/// The result of a thread from [`Netns::spawn_thread`]: a panic or a failed setns as an error.
fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join().map_err(|_| anyhow!("{what} thread panicked"))?
}

fn delta(after: Option<f64>, before: Option<f64>) -> String {
    match (after, before) {
        (Some(a), Some(b)) => format!("{}", (a - b) as i64),
        _ => "n/a".into(),
    }
}

/// Counters of A read from outside the agent (interface, UDP) and from its /metrics.
struct Counters {
    rx_packets: u64,
    rx_dropped: u64,
    udp_in: u64,
    udp_rcvbuf_errors: u64,
    requests: Option<f64>,
    replies: Option<f64>,
    refused: Option<String>,
    zk_state: Option<f64>,
}

impl Counters {
    fn read(lab: &Cluster, ifname: &str) -> Result<Counters> {
        let ns: &Netns = lab.star.node(A);
        let link: Value =
            serde_json::from_str(&ns.run(["ip", "-j", "-s", "link", "show", "dev", ifname])?)?;
        let rx = &link[0]["stats64"]["rx"];
        let metrics = lab.agent(A).metrics()?;
        let refused: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("meshprobe_admin_connections_refused"))
            .map(str::to_string)
            .collect();
        let metric = |name: &str| {
            metric_sum(&metrics, name).or_else(|| metric_sum(&metrics, &format!("{name}_total")))
        };
        Ok(Counters {
            rx_packets: rx["packets"].as_u64().unwrap_or(0),
            rx_dropped: rx["dropped"].as_u64().unwrap_or(0),
            udp_in: udp_counter(ns, "InDatagrams")?,
            udp_rcvbuf_errors: udp_counter(ns, "RcvbufErrors")?,
            requests: metric("meshprobe_reflector_requests"),
            replies: metric("meshprobe_reflector_replies"),
            refused: (!refused.is_empty()).then(|| refused.join("; ")),
            zk_state: metric_sum(&metrics, "meshprobe_zookeeper_state"),
        })
    }

    fn refused_text(&self, before: &Counters) -> String {
        match (&before.refused, &self.refused) {
            (_, None) => "no meshprobe_admin_connections_refused metric".into(),
            (b, Some(a)) => format!("before the test {b:?}, at the end {a}"),
        }
    }
}

/// What one flood sender achieved.
struct FloodStats {
    sent: u64,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Sends [`FLOOD_PAYLOAD`]-octet STAMP requests from `src` to `dst` with sendmmsg until `end`
/// (runs in the sender's namespace).
fn flood_until(src: SocketAddr, dst: SocketAddr, end: Instant) -> Result<FloodStats> {
    let sock = UdpSocket::bind(src).with_context(|| format!("binding {src}"))?;
    sock.connect(dst)?;
    // The reflector's answers come back here; nobody reads them.
    let small: libc::c_int = 4096;
    // SAFETY: a valid socket and an int option of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut payload = build_request(1, 0x5eed, Some((16, 16)));
    if payload.len() != FLOOD_PAYLOAD {
        bail!(
            "flood payload is {} octets, want {FLOOD_PAYLOAD}",
            payload.len()
        );
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..FLOOD_BATCH)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut st = FloodStats {
        sent: 0,
        calls: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let t0 = Instant::now();
    // Bounded by time, and by count as a second guard.
    while Instant::now() < end && st.calls < 10_000_000 {
        // SAFETY: `msgs` points at `iov` and `payload`, both alive for the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        st.calls += 1;
        if n < 0 {
            st.errors += 1;
            if st.first_error.is_none() {
                st.first_error = Some(std::io::Error::last_os_error().to_string());
            }
            continue;
        }
        st.sent += n as u64;
    }
    st.elapsed = t0.elapsed();
    Ok(st)
}

/// What the idle connections saw.
struct IdleStats {
    opened: usize,
    failed: usize,
    first_error: Option<String>,
    closed_by_peer: usize,
    held: Duration,
}

/// Opens `n` TCP connections to `target`, sends nothing, and holds them until `end`; then
/// counts how many the server had closed (runs in the client's namespace).
fn hold_idle(target: SocketAddr, n: usize, end: Instant) -> Result<IdleStats> {
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut st = IdleStats {
        opened: 0,
        failed: 0,
        first_error: None,
        closed_by_peer: 0,
        held: Duration::ZERO,
    };
    for _ in 0..n {
        if Instant::now() >= end {
            break;
        }
        match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(s) => conns.push(s),
            Err(e) => {
                st.failed += 1;
                if st.first_error.is_none() {
                    st.first_error = Some(e.to_string());
                }
            }
        }
    }
    st.opened = conns.len();
    thread::sleep(end.saturating_duration_since(Instant::now()));
    st.held = t0.elapsed();
    let mut buf = [0u8; 64];
    for c in &mut conns {
        c.set_nonblocking(true)?;
        match c.read(&mut buf) {
            Ok(0) => st.closed_by_peer += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(_) | Err(_) => st.closed_by_peer += 1,
        }
    }
    Ok(st)
}

/// One /healthz poll: when it started, and its time to a 200 or why it failed.
struct Poll {
    at: Instant,
    outcome: Result<Duration, String>,
}

/// `GET /healthz` every [`POLL_EVERY`] until `stop` (at most 10 minutes' worth).
fn poll_healthz(admin: SocketAddr, stop: &AtomicBool) -> Vec<Poll> {
    let mut out = Vec::new();
    let mut next = Instant::now();
    let max_polls = (600_000 / POLL_EVERY.as_millis()) as usize;
    while !stop.load(Ordering::Relaxed) && out.len() < max_polls {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let at = Instant::now();
        out.push(Poll {
            at,
            outcome: healthz_once(admin, at + POLL_DEADLINE).map(|()| at.elapsed()),
        });
        next += POLL_EVERY;
        if next < Instant::now() {
            // A slow poll: the next starts now, not in a burst of the missed ones.
            next = Instant::now();
        }
    }
    out
}

fn healthz_once(admin: SocketAddr, deadline: Instant) -> Result<(), String> {
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err("deadline passed".to_string())
        } else {
            Ok(d)
        }
    };
    let mut s = TcpStream::connect_timeout(&admin, left()?).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if raw.len() > 64 * 1024 {
            return Err("answer too long".into());
        }
    }
    left()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("status {status:?}"));
    }
    Ok(())
}

/// CPU time (utime + stime, USER_HZ ticks) of each thread of `pid`, summed by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ...": comm may hold spaces; fields after ')' start at state (3).
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after state.
        let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match out.iter_mut().find(|(n, _)| *n == comm) {
            Some((_, v)) => *v += t,
            None => out.push((comm, t)),
        }
    }
    out.sort();
    out
}
