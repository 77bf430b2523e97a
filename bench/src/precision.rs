//! Scenario 1: how close each prober's RTT is to the truth, idle and under load.
//!
//! Two namespaces on a bare veth. tcpdump (AF_PACKET, nanosecond stamps) on both veth ends
//! records every probe packet for the whole of a condition; a probe's true network RTT is
//! (A: reply in − request out) − (B: reply out − request in), the wire as each kernel's tap
//! sees it, without the reflector's turnaround. Four contenders are judged against it, each on
//! its own packets, in the same run, in short bursts whose order rotates from round to round:
//! meshprobe's network RTT (kernel stamps) and app RTT (its socket's view of the same probes),
//! iputils `ping` (ICMP echo, answered by B's kernel) and `sockperf ping-pong` (UDP, a
//! userspace server). Conditions: idle, `stress-ng --cpu N` on every core, and one CPU hog
//! pinned to the CPU the reflectors are pinned to (a noisy neighbour).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use meshprobe_harness::capture::{Capture, Frames, Packet, decode_frame};
use meshprobe_harness::load::{WakeLatency, cpu_stress, online_cpus};
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::reference::capture_times;
use meshprobe_harness::scenario::compare;
use meshprobe_harness::services::TempDir;
use meshprobe_harness::stats::percentile;
use meshprobe_harness::{
    ChildGuard, Meshprobe, PingRun, Reflector, STAMP_PORT, TwoHosts, interrupt,
};
use serde_json::json;

use super::{Ctx, ScenarioReport, Table, pause, progress};

const SOCKPERF_PORT: u16 = 11111;
/// Every contender probes once per millisecond.
const INTERVAL_MS: u64 = 1;
/// meshprobe's goals, ns: (p50, p99) of |error|.
const GOAL_IDLE: (i64, i64) = (1_000, 3_000);
const GOAL_STRESS: (i64, i64) = (2_000, 5_000);
/// sockperf's p99 |error| over meshprobe's, under stress.
const GOAL_RATIO: f64 = 100.0;
/// A sockperf burst whose logged RTTs correlate less than this with the captured ones at the
/// best offset is not matched (its rows could not be told apart from their neighbours).
const MIN_ALIGN_SCORE: f64 = 0.5;
/// Capture filter on both veth ends: every contender's packets.
const FILTER: &str = "udp port 862 or udp port 11111 or icmp";

// ---- the contenders ---------------------------------------------------------------------------

const MP_NET: usize = 0;
const MP_APP: usize = 1;
const PING: usize = 2;
const SOCKPERF: usize = 3;
const CONTENDERS: [&str; 4] = [
    "meshprobe network RTT (kernel stamps)",
    "meshprobe app RTT (its socket)",
    "iputils ping",
    "sockperf ping-pong (UDP)",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Idle,
    AllCores,
    Neighbour,
}

impl Load {
    const ALL: [Load; 3] = [Load::Idle, Load::AllCores, Load::Neighbour];

    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::AllCores => "stress",
            Load::Neighbour => "neighbour",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::AllCores => "stress-ng on every core",
            Load::Neighbour => "noisy neighbour on the reflector's CPU",
        }
    }

    fn goal(self) -> (i64, i64) {
        if self == Load::Idle {
            GOAL_IDLE
        } else {
            GOAL_STRESS
        }
    }
}

// ---- pure parts: parsing and matching -------------------------------------------------------

/// `"0.052"` (a decimal number of `unit_ns` units) to integer nanoseconds, exactly (no float
/// rounding); `None` if it is not a plain decimal.
fn decimal_ns(s: &str, unit_ns: i64) -> Option<i64> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = unit_ns.ilog10() as usize;
    let mut v: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    v = v.checked_mul(unit_ns)?;
    let mut f = frac.to_string();
    f.truncate(digits);
    while f.len() < digits {
        f.push('0');
    }
    if !f.is_empty() {
        v += f.parse::<i64>().ok()?;
    }
    Some(if neg { -v } else { v })
}

/// iputils `ping -D` reply lines (`[1795269608.348763] 64 bytes from 198.18.0.2: icmp_seq=1
/// ttl=64 time=0.052 ms`): (icmp_seq, reported RTT in ns), in order.
fn parse_ping(text: &str) -> Vec<(u16, i64)> {
    let mut out = Vec::new();
    for l in text.lines() {
        let field = |k: &str| -> Option<&str> {
            let rest = &l[l.find(k)? + k.len()..];
            Some(rest.split_whitespace().next().unwrap_or(""))
        };
        let (Some(seq), Some(time)) = (field("icmp_seq="), field("time=")) else {
            continue;
        };
        let ms = l.contains(" ms");
        if let (Ok(seq), Some(ns), true) = (seq.parse::<u16>(), decimal_ns(time, 1_000_000), ms) {
            out.push((seq, ns));
        }
    }
    out
}

/// `N packets transmitted` of ping's statistics.
fn ping_transmitted(text: &str) -> Option<u64> {
    let l = text.lines().find(|l| l.contains("packets transmitted"))?;
    l.split_whitespace().next()?.parse().ok()
}

/// The rows of a `sockperf --full-log` file (`packet, txTime(sec), rxTime(sec), ...`):
/// (tx, rx) in ns of sockperf's own clock, in order.
fn parse_full_log(text: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut in_rows = false;
    for l in text.lines() {
        if l.starts_with("packet, txTime") {
            in_rows = true;
            continue;
        }
        if !in_rows {
            continue;
        }
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() < 3 {
            if l.starts_with("---") {
                in_rows = false;
            }
            continue;
        }
        if let (Some(tx), Some(rx)) = (
            decimal_ns(f[1], 1_000_000_000),
            decimal_ns(f[2], 1_000_000_000),
        ) {
            out.push((tx, rx));
        }
    }
    out
}

/// An ICMP echo request or reply (IPv4) seen by a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Echo {
    ts: u64,
    reply: bool,
    id: u16,
    seq: u16,
}

/// Decodes an Ethernet frame holding an IPv4 ICMP echo request (type 8) or reply (type 0).
fn decode_echo(ts: u64, frame: &[u8]) -> Option<Echo> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 1 || ip.len() < ihl + 8 {
        return None;
    }
    // Not a later fragment.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let icmp = &ip[ihl..];
    let reply = match icmp[0] {
        8 => false,
        0 => true,
        _ => return None,
    };
    Some(Echo {
        ts,
        reply,
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

/// sockperf's message sequence number: the first 8 payload octets, big-endian.
fn sockperf_seq(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// One probe's capture times on one host: its request and its reply (first capture of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Side {
    request: Option<u64>,
    reply: Option<u64>,
}

/// Indexes (key, is_reply, capture time) by key, keeping the first capture of each direction.
fn index<K: Hash + Eq>(items: impl IntoIterator<Item = (K, bool, u64)>) -> HashMap<K, Side> {
    let mut m: HashMap<K, Side> = HashMap::new();
    for (k, reply, ts) in items {
        let s = m.entry(k).or_default();
        if reply {
            s.reply.get_or_insert(ts);
        } else {
            s.request.get_or_insert(ts);
        }
    }
    m
}

/// The capture truth: (A reply in − A request out) − (B reply out − B request in), ns.
fn truth(a: &Side, b: &Side) -> Option<i64> {
    let (a_out, a_in) = (a.request?, a.reply?);
    let (b_in, b_out) = (b.request?, b.reply?);
    Some((a_in as i64 - a_out as i64) - (b_out as i64 - b_in as i64))
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Where sockperf's full-log rows sit among the captured messages. The rows are consecutive
/// messages (sockperf logs its valid window: it skips the first 400 ms and the last 50 ms, and
/// messages without a reply), `captured` the A-side capture times (request out, reply in) of
/// the captured messages with a reply, in sequence order. Each candidate offset is scored by
/// two fingerprints the messages carry in both records: the variation of their RTTs (logged
/// rx − tx against captured in − out: the reflector's wake-ups, seen by both) and of the gaps
/// between sends (logged tx against captured out: a sender held up by load sends late in both
/// records). The score is the sum of the two Pearson correlations; returned: the best offset,
/// its score and the best score at any other offset. Send timing alone cannot place the rows
/// (sockperf paces to within a microsecond, so every offset looks alike), and neither
/// fingerprint alone holds in every condition (idle: regular sends; every core loaded: the
/// sender's own delays swamp the reflector's).
fn align(rows: &[(i64, i64)], captured: &[(i64, i64)]) -> Option<(usize, f64, f64)> {
    let n = rows.len();
    if n < 3 || captured.len() < n {
        return None;
    }
    let logged_rtt: Vec<f64> = rows.iter().map(|(tx, rx)| (rx - tx) as f64).collect();
    let logged_gap: Vec<f64> = rows.windows(2).map(|w| (w[1].0 - w[0].0) as f64).collect();
    let cap_rtt: Vec<f64> = captured.iter().map(|(o, i)| (i - o) as f64).collect();
    let cap_gap: Vec<f64> = captured
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) as f64)
        .collect();
    let zero_nan = |r: f64| if r.is_nan() { 0.0 } else { r };
    let mut best: Option<(usize, f64)> = None;
    let mut second = f64::NEG_INFINITY;
    for s in 0..=captured.len() - n {
        let score = zero_nan(pearson(&logged_rtt, &cap_rtt[s..s + n]))
            + zero_nan(pearson(&logged_gap, &cap_gap[s..s + n - 1]));
        match best {
            Some((_, b)) if score <= b => second = second.max(score),
            _ => {
                if let Some((_, b)) = best {
                    second = second.max(b);
                }
                best = Some((s, score));
            }
        }
    }
    best.map(|(s, r)| (s, r, second))
}

/// Nearest-rank percentile of |v|.
fn abs_pct(v: &[i64], p: f64) -> Option<i64> {
    let a: Vec<i64> = v.iter().map(|e| e.abs()).collect();
    percentile(&a, p)
}

/// Microseconds, with fewer decimals as the number grows.
fn us(ns: i64) -> String {
    let u = ns as f64 / 1000.0;
    if u.abs() < 10.0 {
        format!("{u:.2}")
    } else if u.abs() < 1000.0 {
        format!("{u:.1}")
    } else {
        format!("{u:.0}")
    }
}

/// p50 / p99 of |v|, µs.
fn p50_p99(v: &[i64]) -> String {
    pair_us(abs_pct(v, 50.0), abs_pct(v, 99.0))
}

/// p50 / p99 of `v` itself (signed), µs.
fn signed_p50_p99(v: &[i64]) -> String {
    pair_us(percentile(v, 50.0), percentile(v, 99.0))
}

fn pair_us(p50: Option<i64>, p99: Option<i64>) -> String {
    match (p50, p99) {
        (Some(a), Some(b)) => format!("{} / {} µs", us(a), us(b)),
        _ => "—".into(),
    }
}

// ---- running the bursts ---------------------------------------------------------------------

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One burst's time span (CLOCK_REALTIME ns, the captures' clock): its packets are the ones
/// captured inside it.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn has(&self, ts: u64) -> bool {
        ts >= self.start && ts <= self.end
    }
}

enum Burst {
    Meshprobe {
        w: Window,
        run: PingRun,
    },
    Ping {
        w: Window,
        id: u16,
        sent: u64,
        replies: Vec<(u16, i64)>,
    },
    Sockperf {
        w: Window,
        rows: Vec<(i64, i64)>,
    },
}

struct Plan {
    rounds: usize,
    /// Probes per meshprobe and ping burst.
    count: u32,
    /// `sockperf ping-pong -t` (whole seconds: it reads the number as an integer; its log
    /// covers all but the first 400 and the last 50 ms).
    sockperf_secs: &'static str,
    sender_cpu: String,
    reflector_cpu: String,
}

/// `meshprobe reflect` in B, pinned to the reflector CPU, its programs on B's veth.
fn reflector(mp: &Meshprobe, t: &TwoHosts, cpu: &str) -> Result<Reflector> {
    let bin = mp.bin.to_string_lossy().into_owned();
    let mut child = t.b.spawn([
        "taskset",
        "-c",
        cpu,
        &bin,
        "reflect",
        "--json",
        "-I",
        TwoHosts::B_IF,
    ])?;
    let ready = child
        .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
        .context("meshprobe reflect ready line")?;
    mp.check_timestamping("meshprobe reflect", &ready, &child.stderr_text())?;
    Ok(Reflector { child, ready })
}

fn sockperf_server(t: &TwoHosts, cpu: &str) -> Result<ChildGuard> {
    let b4 = TwoHosts::B4.to_string();
    let port = SOCKPERF_PORT.to_string();
    let mut g = t.b.spawn([
        "taskset", "-c", cpu, "sockperf", "server", "-i", &b4, "-p", &port,
    ])?;
    pause(Duration::from_millis(700))?;
    if !g.is_running() {
        bail!("sockperf server exited: {}", g.stderr_text());
    }
    Ok(g)
}

fn run_meshprobe(mp: &Meshprobe, t: &TwoHosts, plan: &Plan) -> Result<Burst> {
    let b4 = TwoHosts::B4.to_string();
    let count = plan.count.to_string();
    let interval = format!("{INTERVAL_MS}ms");
    let start = now_ns();
    let run = mp.ping_under(
        &t.a,
        &["taskset", "-c", &plan.sender_cpu],
        &[
            "-c",
            &count,
            "-i",
            &interval,
            "-W",
            "500ms",
            "-I",
            TwoHosts::A_IF,
            &b4,
        ],
        Duration::from_secs(60),
    )?;
    let end = now_ns();
    Ok(Burst::Meshprobe {
        w: Window { start, end },
        run,
    })
}

/// Runs `cmd` in A pinned to the sender's CPU; returns the span it ran in and its output.
fn run_pinned(t: &TwoHosts, plan: &Plan, cmd: &[&str]) -> Result<(Window, std::process::Output)> {
    let mut argv = vec!["taskset", "-c", plan.sender_cpu.as_str()];
    argv.extend_from_slice(cmd);
    let start = now_ns();
    let out = t.a.output(&argv)?;
    let end = now_ns();
    Ok((Window { start, end }, out))
}

fn run_ping(t: &TwoHosts, plan: &Plan, id: u16) -> Result<Burst> {
    let b4 = TwoHosts::B4.to_string();
    let count = plan.count.to_string();
    let interval = format!("{:.3}", INTERVAL_MS as f64 / 1000.0);
    let ids = id.to_string();
    let (w, out) = run_pinned(
        t,
        plan,
        &[
            "ping", "-D", "-n", "-i", &interval, "-c", &count, "-e", &ids, "-W", "1", &b4,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies = parse_ping(&text);
    if replies.is_empty() {
        bail!(
            "ping printed no replies ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Burst::Ping {
        w,
        id,
        sent: ping_transmitted(&text).unwrap_or(0),
        replies,
    })
}

fn run_sockperf(t: &TwoHosts, plan: &Plan, dir: &TempDir, n: usize) -> Result<Burst> {
    let b4 = TwoHosts::B4.to_string();
    let port = SOCKPERF_PORT.to_string();
    let mps = (1000 / INTERVAL_MS).to_string();
    let log = dir.path().join(format!("sockperf-{n}.csv"));
    let logs = log.to_string_lossy().into_owned();
    let (w, out) = run_pinned(
        t,
        plan,
        &[
            "sockperf",
            "ping-pong",
            "-i",
            &b4,
            "-p",
            &port,
            "--mps",
            &mps,
            "-t",
            plan.sockperf_secs,
            "--full-log",
            &logs,
        ],
    )?;
    if !out.status.success() {
        bail!(
            "sockperf ping-pong failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {logs}"))?;
    let _ = std::fs::remove_file(&log);
    let rows = parse_full_log(&text);
    if rows.is_empty() {
        bail!("sockperf full log without rows:\n{text}");
    }
    Ok(Burst::Sockperf { w, rows })
}

/// The load of a condition, stopped on drop.
fn start_load(load: Load, reflector_cpu: &str, secs: u64) -> Result<Option<ChildGuard>> {
    match load {
        Load::Idle => Ok(None),
        Load::AllCores => Ok(Some(cpu_stress(online_cpus(), Duration::from_secs(secs))?)),
        Load::Neighbour => {
            let mut cmd = Command::new("stress-ng");
            cmd.args([
                "--cpu",
                "1",
                "--taskset",
                reflector_cpu,
                "--cpu-method",
                "matrixprod",
                "--timeout",
                &format!("{secs}s"),
            ]);
            let mut g = ChildGuard::spawn(cmd, "stress-ng --cpu 1 --taskset")?;
            let _ = g.wait_stderr("dispatching", Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(300));
            if !g.is_running() {
                bail!("stress-ng exited early: {}", g.stderr_text());
            }
            Ok(Some(g))
        }
    }
}

// ---- judging one condition ------------------------------------------------------------------

#[derive(Debug, Default)]
struct Judged {
    /// RTTs the contender reported.
    reported: usize,
    /// Of those, matched to a capture truth.
    matched: usize,
    /// Contender − truth per matched probe, ns.
    err: Vec<i64>,
}

#[derive(Debug)]
struct CondResult {
    load: Load,
    c: [Judged; 4],
    /// Capture truth RTT of meshprobe's probes, ns.
    truth: Vec<i64>,
    /// meshprobe's capture-minus-stamp legs per matched probe.
    legs: Vec<[i64; 4]>,
    t4_sources: BTreeMap<String, usize>,
    capture_drops: u64,
    /// meshprobe probes whose egress leg outlasted the burst's median app RTT: the CPU was
    /// taken away between the TC hook and the tap (see `meshprobe_harness::scenario::Stall`).
    stalls: usize,
    /// Per sockperf burst: (rows, best correlation, second best).
    align: Vec<(usize, f64, f64)>,
    mp_sent: u64,
    ping_sent: u64,
    seconds: f64,
}

fn judge(load: Load, bursts: &[Burst], a: &Frames, b: &Frames, seconds: f64) -> CondResult {
    let (ua, ub) = (a.decode(decode_frame), b.decode(decode_frame));
    let (ea, eb) = (a.decode(decode_echo), b.decode(decode_echo));
    let mut r = CondResult {
        load,
        c: Default::default(),
        truth: Vec::new(),
        legs: Vec::new(),
        t4_sources: BTreeMap::new(),
        capture_drops: a.dropped_by_kernel + b.dropped_by_kernel,
        stalls: 0,
        align: Vec::new(),
        mp_sent: 0,
        ping_sent: 0,
        seconds,
    };
    let in_w = |v: &[Packet], w: &Window, port: u16| -> Vec<Packet> {
        v.iter()
            .filter(|p| w.has(p.ts_ns) && (p.src.port() == port || p.dst.port() == port))
            .cloned()
            .collect()
    };
    for burst in bursts {
        match burst {
            Burst::Meshprobe { w, run } => {
                let pa = in_w(&ua, w, STAMP_PORT);
                let pb = in_w(&ub, w, STAMP_PORT);
                let times = capture_times(&pa, &pb, STAMP_PORT);
                let ag = compare(run, &times);
                r.mp_sent += ag.sent;
                r.c[MP_NET].reported += run.probes.len();
                r.c[MP_NET].matched += ag.matched;
                r.c[MP_NET].err.extend(&ag.signed_err);
                r.legs.extend(&ag.legs);
                r.stalls += ag.stalls().len();
                r.truth.extend(&ag.reference);
                r.c[MP_APP].reported += run.probes.len();
                r.c[MP_APP].matched += ag.matched;
                r.c[MP_APP].err.extend(&ag.app_signed_err);
                for (src, n) in ag.t4_sources {
                    *r.t4_sources.entry(src).or_default() += n;
                }
            }
            Burst::Ping {
                w,
                id,
                sent,
                replies,
            } => {
                r.ping_sent += sent;
                let side = |v: &[Echo]| {
                    index(
                        v.iter()
                            .filter(|e| w.has(e.ts) && e.id == *id)
                            .map(|e| (e.seq, e.reply, e.ts)),
                    )
                };
                let (sa, sb) = (side(&ea), side(&eb));
                let j = &mut r.c[PING];
                j.reported += replies.len();
                for (seq, rtt) in replies {
                    if let (Some(x), Some(y)) = (sa.get(seq), sb.get(seq))
                        && let Some(t) = truth(x, y)
                    {
                        j.matched += 1;
                        j.err.push(rtt - t);
                    }
                }
            }
            Burst::Sockperf { w, rows } => {
                let side = |v: &[Packet]| {
                    index(in_w(v, w, SOCKPERF_PORT).iter().filter_map(|p| {
                        let seq = sockperf_seq(&p.payload)?;
                        if p.dst.port() == SOCKPERF_PORT {
                            Some(((p.src.port(), seq), false, p.ts_ns))
                        } else {
                            Some(((p.dst.port(), seq), true, p.ts_ns))
                        }
                    }))
                };
                let (sa, sb) = (side(&ua), side(&ub));
                // The messages A saw answered, in (client port, sequence) order.
                let mut msgs: Vec<((u16, u64), Side)> = sa
                    .iter()
                    .filter(|(_, s)| s.request.is_some() && s.reply.is_some())
                    .map(|(k, s)| (*k, *s))
                    .collect();
                msgs.sort_by_key(|(k, _)| *k);
                let raw: Vec<(i64, i64)> = msgs
                    .iter()
                    .map(|(_, s)| (s.request.unwrap_or(0) as i64, s.reply.unwrap_or(0) as i64))
                    .collect();
                let j = &mut r.c[SOCKPERF];
                j.reported += rows.len();
                let Some((off, corr, second)) = align(rows, &raw) else {
                    r.align.push((rows.len(), f64::NAN, f64::NAN));
                    continue;
                };
                r.align.push((rows.len(), corr, second));
                if corr < MIN_ALIGN_SCORE {
                    continue;
                }
                for (i, (tx, rx)) in rows.iter().enumerate() {
                    let (k, sa_k) = &msgs[off + i];
                    if let Some(t) = sb.get(k).and_then(|y| truth(sa_k, y)) {
                        j.matched += 1;
                        j.err.push((rx - tx) - t);
                    }
                }
            }
        }
    }
    r
}

// ---- the scenario ---------------------------------------------------------------------------

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let asked = std::time::Instant::now();
    let env = match ctx.env(
        "bench precision",
        &["tcpdump", "stress-ng", "sockperf", "ping", "taskset"],
    )? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let lock_wait = asked.elapsed().as_secs_f64();
    progress(format!(
        "precision: machine lock held (waited {lock_wait:.0} s for other runs)"
    ));
    let cpus = online_cpus();
    if cpus < 2 {
        rep.skip("needs at least 2 CPUs (senders and reflectors on separate CPUs)");
        return Ok(());
    }
    let plan = Plan {
        rounds: ctx.pick(2, 5),
        count: ctx.pick(400, 1000),
        sockperf_secs: ctx.pick("1", "2"),
        sender_cpu: "0".into(),
        reflector_cpu: (cpus - 1).to_string(),
    };
    let (s_cpu, r_cpu) = (plan.sender_cpu.clone(), plan.reflector_cpu.clone());
    rep.method(format!(
        "A ⟷ B on a bare veth (no added delay). In B, pinned to CPU {r_cpu} with taskset: \
         `meshprobe reflect -I veth-b` and `sockperf server` (ping's echo replies come from B's \
         kernel). In A, pinned to CPU {s_cpu}: the senders"
    ));
    rep.method(format!(
        "truth: tcpdump (AF_PACKET taps, nanosecond stamps, `{FILTER}`) on veth-a in A and \
         veth-b in B for the whole condition; per probe (A reply in − A request out) − \
         (B reply out − B request in): the network RTT without the reflector's turnaround; \
         error = the contender's RTT − truth, for each of its own probes"
    ));
    rep.method(format!(
        "per condition {} rounds, each one burst per contender (order rotated every round), \
         all at one probe per {INTERVAL_MS} ms: `meshprobe ping -c {} -i {INTERVAL_MS}ms -I \
         veth-a` (network RTT and app RTT of the same probes, matched by SSID and sequence); \
         `ping -D -i 0.001 -c {} -e ID` (a fresh ICMP id per burst, matched by id and \
         icmp_seq; ping prints sub-ms RTTs to 1 µs); `sockperf ping-pong --mps 1000 -t {} \
         --full-log F` (its rows cover its valid window only; they are matched to the captured \
         messages in order, at the offset where both agree best: the sum of the correlations of \
         their RTTs and of their send gaps, at most 2; a burst scoring below \
         {MIN_ALIGN_SCORE} is left unmatched); each burst's packets are the ones captured \
         within its own time span",
        plan.rounds, plan.count, plan.count, plan.sockperf_secs
    ));
    rep.method(format!(
        "conditions: idle; `stress-ng --cpu {cpus}` (every core); a noisy neighbour \
         `stress-ng --cpu 1 --taskset {r_cpu}` on the reflectors' CPU. PM QoS \
         cpu_dma_latency 0 held throughout (idle CPUs poll instead of halting, as cyclictest \
         does and as the correctness test measures)"
    ));
    rep.method(
        "p50 / p99 are nearest-rank percentiles of |error| over the matched probes of all \
         bursts of a condition",
    );

    let wake = WakeLatency::zero();
    let t = TwoHosts::new()?;
    let mp = &env.mp;
    let mut refl = reflector(mp, &t, &r_cpu)?;
    let mut server = sockperf_server(&t, &r_cpu)?;
    let dir = TempDir::new("precision")?;
    let mut results = Vec::new();
    let mut ping_id: u16 = 0x4d50;
    let mut sp_n = 0usize;
    for load in Load::ALL {
        let started = std::time::Instant::now();
        progress(format!("precision: {} ...", load.label()));
        let load_guard = start_load(load, &r_cpu, 300)?;
        let ca = Capture::start_buffered(&t.a, TwoHosts::A_IF, FILTER, 32768)?;
        let cb = Capture::start_buffered(&t.b, TwoHosts::B_IF, FILTER, 32768)?;
        let mut bursts = Vec::new();
        for round in 0..plan.rounds {
            progress(format!(
                "precision: {}, round {}/{}",
                load.name(),
                round + 1,
                plan.rounds
            ));
            for k in 0..3 {
                if interrupt::interrupted() {
                    bail!("interrupted");
                }
                match (k + round) % 3 {
                    0 => bursts.push(run_meshprobe(mp, &t, &plan)?),
                    1 => {
                        ping_id = ping_id.wrapping_add(1);
                        bursts.push(run_ping(&t, &plan, ping_id)?);
                    }
                    _ => {
                        sp_n += 1;
                        bursts.push(run_sockperf(&t, &plan, &dir, sp_n)?);
                    }
                }
            }
        }
        let fa = ca.stop_frames()?;
        let fb = cb.stop_frames()?;
        drop(load_guard);
        if !refl.is_running() {
            bail!("meshprobe reflect exited: {}", refl.child.stderr_text());
        }
        if !server.is_running() {
            bail!("sockperf server exited: {}", server.stderr_text());
        }
        let res = judge(load, &bursts, &fa, &fb, started.elapsed().as_secs_f64());
        progress(format!(
            "precision: {}: meshprobe {}, app {}, ping {}, sockperf {}",
            load.name(),
            p50_p99(&res.c[MP_NET].err),
            p50_p99(&res.c[MP_APP].err),
            p50_p99(&res.c[PING].err),
            p50_p99(&res.c[SOCKPERF].err)
        ));
        results.push(res);
    }
    let refl_sum = refl.stop()?;
    drop(server);
    drop(wake);
    report(rep, &plan, &results, &refl_sum);
    rep.data["lock_wait_seconds"] = json!(lock_wait);
    if lock_wait >= 1.0 {
        rep.note(format!(
            "The scenario waited {lock_wait:.0} s for the harness's machine lock (another \
             run held it) before it started; that wait is inside its time."
        ));
    }
    Ok(())
}

/// Describes meshprobe's legs in one condition (capture − stamp at each point).
fn legs_cause(r: &CondResult) -> String {
    const NAMES: [&str; 4] = ["A out − T1", "B in − T2", "B out − T3", "A in − T4"];
    let mut parts = Vec::new();
    let mut widest: Option<(usize, i64)> = None;
    for (i, n) in NAMES.iter().enumerate() {
        let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
        let (Some(p1), Some(p50), Some(p99)) = (
            percentile(&v, 1.0),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
        ) else {
            continue;
        };
        if p1 == 0 && p99 == 0 {
            parts.push(format!("{n} 0 (the same kernel receive stamp)"));
        } else {
            parts.push(format!("{n} {} / {} µs", us(p50), us(p99)));
        }
        if widest.is_none_or(|(_, w)| p99 - p1 > w) {
            widest = Some((i, p99 - p1));
        }
    }
    let signed = percentile(&r.c[MP_NET].err, 50.0).unwrap_or(0);
    let mut s = format!(
        "meshprobe − truth = (A out − T1) + (B out − T3) − (B in − T2) − (A in − T4), each \
         leg the kernel path between meshprobe's TC stamp and the capture tap on the same \
         packet; legs p50 / p99: {}; signed error p50 {} µs. On egress the tap stamps its \
         clone of the packet in dev_queue_xmit_nit, when the device is handed the packet, \
         after the TC egress hook where T1 and T3 are taken: that stretch of both egress paths \
         (the tap's own skb_clone included) counts as network in meshprobe's RTT and as host \
         time in the capture truth",
        parts.join(", "),
        us(signed)
    );
    if let Some((i, w)) = widest {
        s.push_str(&format!(
            "; the widest leg is {} (p1–p99 spread {} µs)",
            NAMES[i],
            us(w)
        ));
    }
    s.push_str(&format!(
        "; {} of {} probes had an egress leg longer than the median socket round trip (the CPU \
         taken away between hook and tap, e.g. a descheduled vCPU)",
        r.stalls, r.c[MP_NET].matched
    ));
    s
}

/// A row of a per-condition table: `label`, then `cell` of each condition.
fn cond_row(
    t: &mut Table,
    label: &str,
    results: &[CondResult],
    cell: impl Fn(&CondResult) -> String,
) {
    t.row(std::iter::once(label.to_string()).chain(results.iter().map(cell)));
}

/// One row per contender: its name, then `cell` of its judgement in each condition.
fn contender_rows(t: &mut Table, results: &[CondResult], cell: impl Fn(&Judged) -> String) {
    for (i, name) in CONTENDERS.iter().enumerate() {
        cond_row(t, name, results, |r| cell(&r.c[i]));
    }
}

/// Contender `c`'s p99 |error| over meshprobe's network RTT's, `decimals` after the point.
fn p99_ratio(r: &CondResult, c: usize, decimals: usize) -> String {
    match (abs_pct(&r.c[c].err, 99.0), abs_pct(&r.c[MP_NET].err, 99.0)) {
        (Some(s), Some(m)) if m > 0 => format!("{:.decimals$}×", s as f64 / m as f64),
        _ => "—".into(),
    }
}

/// Judges each condition of `conds` with `judge` (met, how it read): whether all met, and
/// the readings joined by "; ".
fn each_cond<'a>(
    conds: impl IntoIterator<Item = &'a CondResult>,
    judge: impl Fn(&CondResult) -> (bool, String),
) -> (bool, String) {
    let mut met = true;
    let mut parts = Vec::new();
    for r in conds {
        let (ok, part) = judge(r);
        met &= ok;
        parts.push(part);
    }
    (met, parts.join("; "))
}

fn report(rep: &mut ScenarioReport, plan: &Plan, results: &[CondResult], refl: &serde_json::Value) {
    let header: Vec<String> = std::iter::once("contender".to_string())
        .chain(results.iter().map(|r| r.load.label().to_string()))
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();

    let mut t = Table::new(
        "|error| against the capture truth, p50 / p99 (error = contender's RTT − truth):",
        &header_refs,
    );
    contender_rows(&mut t, results, |j| p50_p99(&j.err));
    cond_row(&mut t, "goal for meshprobe's network RTT", results, |r| {
        format!("≤ {} / ≤ {} µs", us(r.load.goal().0), us(r.load.goal().1))
    });
    cond_row(&mut t, "sockperf p99 / meshprobe p99", results, |r| {
        p99_ratio(r, SOCKPERF, 0)
    });
    cond_row(&mut t, "ping p99 / meshprobe p99", results, |r| {
        p99_ratio(r, PING, 1)
    });
    rep.tables.push(t);

    let mut t = Table::new(
        "Probes matched to the capture truth (matched / RTTs the contender reported):",
        &header_refs,
    );
    contender_rows(&mut t, results, |j| {
        format!(
            "{} / {} ({:.1} %)",
            j.matched,
            j.reported,
            if j.reported == 0 {
                0.0
            } else {
                100.0 * j.matched as f64 / j.reported as f64
            }
        )
    });
    rep.tables.push(t);

    let mut t = Table::new(
        "Bias (signed error p50; + reads longer than the truth) and the truth itself:",
        &header_refs,
    );
    contender_rows(&mut t, results, |j| {
        percentile(&j.err, 50.0)
            .map(|v| format!("{} µs", us(v)))
            .unwrap_or("—".into())
    });
    cond_row(
        &mut t,
        "meshprobe network RTT, |error − its p50| p50 / p99 (spread around the bias)",
        results,
        |r| {
            let e = &r.c[MP_NET].err;
            match percentile(e, 50.0) {
                Some(m) => {
                    let c: Vec<i64> = e.iter().map(|v| v - m).collect();
                    p50_p99(&c)
                }
                None => "—".into(),
            }
        },
    );
    cond_row(
        &mut t,
        "capture truth RTT of meshprobe's probes, p50 / p99",
        results,
        |r| signed_p50_p99(&r.truth),
    );
    rep.tables.push(t);

    let mut t = Table::new(
        "meshprobe's legs, capture − stamp at each point, p50 / p99 (its error = leg 1 + leg 3 \
         − leg 2 − leg 4):",
        &header_refs,
    );
    for (i, n) in ["A out − T1", "B in − T2", "B out − T3", "A in − T4"]
        .iter()
        .enumerate()
    {
        cond_row(&mut t, n, results, |r| {
            let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
    }
    rep.tables.push(t);

    // Goals.
    for r in results {
        let e = &r.c[MP_NET].err;
        let (g50, g99) = r.load.goal();
        let (Some(p50), Some(p99)) = (abs_pct(e, 50.0), abs_pct(e, 99.0)) else {
            rep.goal(
                &format!("meshprobe, {}", r.load.label()),
                &format!("|error| p50 ≤ {} µs, p99 ≤ {} µs", us(g50), us(g99)),
                "no probe matched",
                false,
                Some("no meshprobe probe could be matched to the captures".into()),
            );
            continue;
        };
        let met = p50 <= g50 && p99 <= g99;
        rep.goal(
            &format!("meshprobe, {}", r.load.label()),
            &format!("|error| p50 ≤ {} µs, p99 ≤ {} µs", us(g50), us(g99)),
            format!("p50 {} µs, p99 {} µs", us(p50), us(p99)),
            met,
            Some(legs_cause(r)),
        );
    }
    let stressed: Vec<&CondResult> = results.iter().filter(|r| r.load != Load::Idle).collect();
    let (all_met, ratios) = each_cond(stressed.iter().copied(), |r| {
        match (
            abs_pct(&r.c[SOCKPERF].err, 99.0),
            abs_pct(&r.c[MP_NET].err, 99.0),
        ) {
            (Some(s), Some(m)) => {
                let ratio = s as f64 / m.max(1) as f64;
                (
                    ratio >= GOAL_RATIO,
                    format!(
                        "{ratio:.0}× ({}: sockperf {} µs, meshprobe {} µs)",
                        r.load.name(),
                        us(s),
                        us(m)
                    ),
                )
            }
            _ => (false, format!("— ({}: no matched probes)", r.load.name())),
        }
    });
    rep.goal(
        "vs sockperf at p99 under stress",
        "≥ 100× smaller |error|",
        ratios.clone(),
        all_met && !stressed.is_empty(),
        Some(format!("ratio below {GOAL_RATIO:.0}×: {ratios}")),
    );
    let (ping_met, ping_parts) = each_cond(results, |r| {
        let m = (
            abs_pct(&r.c[MP_NET].err, 50.0),
            abs_pct(&r.c[MP_NET].err, 99.0),
        );
        let p = (abs_pct(&r.c[PING].err, 50.0), abs_pct(&r.c[PING].err, 99.0));
        if let ((Some(m50), Some(m99)), (Some(p50), Some(p99))) = (m, p) {
            let better = m50 < p50 && m99 < p99;
            (
                better,
                format!(
                    "{}: meshprobe {} / {} µs vs ping {} / {} µs{}",
                    r.load.name(),
                    us(m50),
                    us(m99),
                    us(p50),
                    us(p99),
                    if better { "" } else { " (not better)" }
                ),
            )
        } else {
            (false, format!("{}: no matched probes", r.load.name()))
        }
    });
    rep.goal(
        "better than ping",
        "p50 and p99 of |error| below ping's, every condition",
        ping_parts.clone(),
        ping_met,
        Some(ping_parts),
    );

    // Notes.
    for r in results {
        let t4: Vec<String> = r
            .t4_sources
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let al: Vec<String> = r
            .align
            .iter()
            .map(|(n, c, s)| format!("{n} rows score {c:.2} (next best {s:.2})"))
            .collect();
        rep.note(format!(
            "{} ({:.0} s): meshprobe sent {} probes (t4_source: {}); ping sent {}; sockperf \
             bursts aligned at {}; capture drops {}.",
            r.load.label(),
            r.seconds,
            r.mp_sent,
            t4.join(", "),
            r.ping_sent,
            al.join(", "),
            r.capture_drops
        ));
    }
    rep.note(
        "Every contender is judged against the network RTT: ping's and sockperf's RTTs and \
         meshprobe's app RTT include the reflector's turnaround (B's kernel for ping, the \
         sockperf server's and meshprobe reflector's wake-up and socket path) and the sender's \
         own path between its clock read and the wire; meshprobe's network RTT subtracts the \
         turnaround it stamped (T3 − T2)."
            .to_string(),
    );

    let cond_json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let contenders: Vec<serde_json::Value> = CONTENDERS
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let j = &r.c[i];
                    json!({
                        "contender": n, "reported": j.reported, "matched": j.matched,
                        "abs_error_p50_ns": abs_pct(&j.err, 50.0),
                        "abs_error_p99_ns": abs_pct(&j.err, 99.0),
                        "abs_error_max_ns": abs_pct(&j.err, 100.0),
                        "signed_error_p50_ns": percentile(&j.err, 50.0),
                    })
                })
                .collect();
            let legs: Vec<serde_json::Value> = (0..4)
                .map(|i| {
                    let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
                    json!({"p1_ns": percentile(&v, 1.0), "p50_ns": percentile(&v, 50.0),
                           "p99_ns": percentile(&v, 99.0)})
                })
                .collect();
            json!({
                "condition": r.load.name(), "seconds": r.seconds,
                "contenders": contenders,
                "truth_p50_ns": percentile(&r.truth, 50.0),
                "truth_p99_ns": percentile(&r.truth, 99.0),
                "meshprobe_legs": legs, "t4_sources": r.t4_sources,
                "sockperf_alignment": r.align.iter()
                    .map(|(n, c, s)| json!({"rows": n, "r": c, "next_r": s})).collect::<Vec<_>>(),
                "capture_drops": r.capture_drops,
                "stalls": r.stalls,
                "meshprobe_sent": r.mp_sent, "ping_sent": r.ping_sent,
            })
        })
        .collect();
    rep.data = json!({
        "rounds": plan.rounds, "probes_per_burst": plan.count,
        "sockperf_seconds": plan.sockperf_secs, "interval_ms": INTERVAL_MS,
        "sender_cpu": plan.sender_cpu, "reflector_cpu": plan.reflector_cpu,
        "conditions": cond_json,
        "reflector_summary": refl,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal_ns("0.052", 1_000_000), Some(52_000));
        assert_eq!(decimal_ns("1.25", 1_000_000), Some(1_250_000));
        assert_eq!(decimal_ns("12", 1_000_000), Some(12_000_000));
        assert_eq!(
            decimal_ns("2.404198768", 1_000_000_000),
            Some(2_404_198_768)
        );
        assert_eq!(
            decimal_ns("2.4041987689", 1_000_000_000),
            Some(2_404_198_768)
        );
        assert_eq!(decimal_ns("-0.5", 1000), Some(-500));
        assert_eq!(decimal_ns("x1", 1000), None);
        assert_eq!(decimal_ns("", 1000), None);
    }

    #[test]
    fn ping_lines() {
        let t = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\
                 [1795269608.348763] 64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=0.052 ms\n\
                 [1795269608.349824] 64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=1.07 ms\n\
                 [1795269608.350737] From 198.18.0.1 icmp_seq=3 Destination Host Unreachable\n\
                 \n--- 198.18.0.2 ping statistics ---\n\
                 3 packets transmitted, 2 received, 33% packet loss, time 4ms\n\
                 rtt min/avg/max/mdev = 0.006/0.028/0.067/0.026 ms\n";
        assert_eq!(parse_ping(t), vec![(1, 52_000), (2, 1_070_000)]);
        assert_eq!(ping_transmitted(t), Some(3));
    }

    #[test]
    fn sockperf_log() {
        let t = "------------------------------\n\
                 sockperf: [Valid Duration] RunTime=0.548 sec; SentMessages=549\n\
                 ------------------------------\n\
                 packet, txTime(sec), rxTime(sec), latency(usec)\n\
                 0, 2.404198768, 2.404352832, 77.032\n\
                 1, 2.405198640, 2.405290600, 45.980\n\
                 ------------------------------\n\
                 trailing, 1.0, 2.0\n";
        assert_eq!(
            parse_full_log(t),
            vec![
                (2_404_198_768, 2_404_352_832),
                (2_405_198_640, 2_405_290_600)
            ]
        );
        assert!(parse_full_log("nothing here").is_empty());
    }

    fn echo_frame(kind: u8, id: u16, seq: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[9] = 1;
        f.extend(ip);
        f.extend([kind, 0, 0, 0]);
        f.extend(id.to_be_bytes());
        f.extend(seq.to_be_bytes());
        f.extend([0u8; 56]);
        f
    }

    #[test]
    fn icmp_echo() {
        assert_eq!(
            decode_echo(5, &echo_frame(8, 0x4d51, 7)),
            Some(Echo {
                ts: 5,
                reply: false,
                id: 0x4d51,
                seq: 7
            })
        );
        assert!(decode_echo(5, &echo_frame(0, 1, 2)).unwrap().reply);
        assert_eq!(decode_echo(5, &echo_frame(3, 1, 2)), None);
        let mut udp = echo_frame(8, 1, 2);
        udp[14 + 9] = 17;
        assert_eq!(decode_echo(5, &udp), None);
        assert_eq!(decode_echo(5, &udp[..20]), None);
    }

    #[test]
    fn truth_from_both_sides() {
        // A: request out at 100, reply in at 200; B: request in at 130, reply out at 160.
        let a = index([(1u32, false, 100), (1, true, 200), (1, false, 999)]);
        let b = index([(1u32, true, 160), (1, false, 130)]);
        assert_eq!(a[&1].request, Some(100));
        assert_eq!(truth(&a[&1], &b[&1]), Some(70));
        let lone = index([(2u32, false, 5)]);
        assert_eq!(truth(&lone[&2], &b[&1]), None);
    }

    #[test]
    fn sockperf_alignment() {
        // Captured messages, one per ms, with irregular RTTs; sockperf logged messages 5..15,
        // each RTT 20 µs longer than captured (its own overhead) plus a little noise, on a
        // clock of its own.
        let mut x: u64 = 12345;
        let mut rnd = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as i64
        };
        let captured: Vec<(i64, i64)> = (0..30)
            .map(|i| {
                let out = 1_000_000_000 + i * 1_000_000 + rnd() % 500;
                (out, out + 40_000 + rnd() % 50_000)
            })
            .collect();
        let rows: Vec<(i64, i64)> = (5..15)
            .map(|i| {
                let (o, a) = captured[i];
                let tx = o - 999_000_000 - 300;
                (tx, tx + (a - o) + 20_000 + (i as i64 % 2) * 200)
            })
            .collect();
        let (off, r, next) = align(&rows, &captured).unwrap();
        assert_eq!(off, 5);
        assert!(r > 1.5 && next < r, "r {r} next {next}");
        assert!(align(&rows, &captured[..5]).is_none());
        // Regular RTTs, but a sender held up by load: the send gaps place the rows.
        let captured: Vec<(i64, i64)> = (0..30)
            .map(|i| {
                let out = i * 1_000_000 + if rnd() % 4 == 0 { rnd() % 400_000 } else { 0 };
                (out, out + 30_000)
            })
            .collect();
        let rows: Vec<(i64, i64)> = captured[12..22]
            .iter()
            .map(|(o, _)| (o + 5_000, o + 5_000 + 30_000 + rnd() % 30_000))
            .collect();
        assert_eq!(align(&rows, &captured).unwrap().0, 12);
        assert_eq!(sockperf_seq(&[0, 0, 0, 0, 0, 0, 1, 2, 0, 3]), Some(258));
    }

    #[test]
    fn percentiles_and_format() {
        assert_eq!(abs_pct(&[-5, 1, 2, -3], 50.0), Some(2));
        assert_eq!(abs_pct(&[-5, 1, 2, -3], 99.0), Some(5));
        assert_eq!(abs_pct(&[], 50.0), None);
        assert_eq!(us(1_234), "1.23");
        assert_eq!(us(123_456), "123.5");
        assert_eq!(us(1_234_567), "1235");
        assert_eq!(p50_p99(&[-1000, 2000]), "1.00 / 2.00 µs");
    }
}
