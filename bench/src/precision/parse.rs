//! The pure parts: parsing the contenders' output and the captured frames, matching them.

use std::collections::HashMap;
use std::hash::Hash;

use meshprobe_harness::stats::percentile;

// ---- pure parts: parsing and matching -------------------------------------------------------

/// `"0.052"` (a decimal number of `unit_ns` units) to integer nanoseconds, exactly (no float
/// rounding); `None` if it is not a plain decimal.
pub(super) fn decimal_ns(s: &str, unit_ns: i64) -> Option<i64> {
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
pub(super) fn parse_ping(text: &str) -> Vec<(u16, i64)> {
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
pub(super) fn ping_transmitted(text: &str) -> Option<u64> {
    let l = text.lines().find(|l| l.contains("packets transmitted"))?;
    l.split_whitespace().next()?.parse().ok()
}

/// The rows of a `sockperf --full-log` file (`packet, txTime(sec), rxTime(sec), ...`):
/// (tx, rx) in ns of sockperf's own clock, in order.
pub(super) fn parse_full_log(text: &str) -> Vec<(i64, i64)> {
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
pub(super) struct Echo {
    pub(super) ts: u64,
    pub(super) reply: bool,
    pub(super) id: u16,
    pub(super) seq: u16,
}

/// Decodes an Ethernet frame holding an IPv4 ICMP echo request (type 8) or reply (type 0).
pub(super) fn decode_echo(ts: u64, frame: &[u8]) -> Option<Echo> {
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
pub(super) fn sockperf_seq(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// One probe's capture times on one host: its request and its reply (first capture of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Side {
    pub(super) request: Option<u64>,
    pub(super) reply: Option<u64>,
}

/// Indexes (key, is_reply, capture time) by key, keeping the first capture of each direction.
pub(super) fn index<K: Hash + Eq>(
    items: impl IntoIterator<Item = (K, bool, u64)>,
) -> HashMap<K, Side> {
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
pub(super) fn truth(a: &Side, b: &Side) -> Option<i64> {
    let (a_out, a_in) = (a.request?, a.reply?);
    let (b_in, b_out) = (b.request?, b.reply?);
    Some((a_in as i64 - a_out as i64) - (b_out as i64 - b_in as i64))
}

pub(super) fn pearson(x: &[f64], y: &[f64]) -> f64 {
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
pub(super) fn align(rows: &[(i64, i64)], captured: &[(i64, i64)]) -> Option<(usize, f64, f64)> {
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
pub(super) fn abs_pct(v: &[i64], p: f64) -> Option<i64> {
    let a: Vec<i64> = v.iter().map(|e| e.abs()).collect();
    percentile(&a, p)
}
