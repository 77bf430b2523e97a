//! Issue 13, fuzzed STAMP packets at both roles (bytes changed, TLV lengths corrupted, cut
//! short, extended, random):
//! - at the reflector, 20 000 seeded mutations of test packets with and without TLVs: it must
//!   stay up, never answer with more octets than it was sent (no amplification), answer each
//!   request at most once, and its counters must add up: requests = replies + malformed +
//!   refused + send errors;
//! - at the sender, a fake reflector follows each genuine reply with seeded mutated copies of
//!   it (about 20 000 in all): every sample must be the genuine reply, and every copy must be
//!   counted as a duplicate, a late reply or a rejection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meshprobe_harness::fake::FakeReflector;
use meshprobe_harness::safety::{FAMILIES, refused, refused_total, udp_counter};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::stamp::build_request;
use meshprobe_harness::{STAMP_PORT, TestEnv, TwoHosts};
use probe_common::wire;
use rand::{Rng, SeedableRng, rngs::StdRng};

const CASES: u32 = 20_000;
const SPORT: u16 = 40004;
/// Largest datagram sent: no fragmentation on a 1500-octet link, either family.
const MAX_LEN: usize = 1400;

/// One mutated request whose first four octets (the sequence number) are `seq`, unless cut
/// shorter than that.
fn mutate(rng: &mut StdRng, seq: u32) -> Vec<u8> {
    let mut p = match rng.random_range(0..4) {
        0 => build_request(seq, rng.random(), None),
        // Extra Padding TLV, its length right or wrong.
        1 => {
            let present = rng.random_range(0..200);
            let claim = if rng.random_bool(0.7) {
                present as u16
            } else {
                rng.random()
            };
            build_request(seq, rng.random(), Some((claim, present)))
        }
        // Several TLVs of any type.
        2 => {
            let mut p = build_request(seq, rng.random(), None);
            for _ in 0..rng.random_range(1..5) {
                let len: u16 = rng.random_range(0..64);
                p.push(rng.random::<u8>() & 0xc0);
                p.push(rng.random());
                p.extend_from_slice(&len.to_be_bytes());
                p.extend((0..len).map(|_| rng.random::<u8>()));
            }
            p
        }
        // Random octets.
        _ => {
            let n = rng.random_range(4..MAX_LEN);
            let mut p: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            p[..4].copy_from_slice(&seq.to_be_bytes());
            p
        }
    };
    for _ in 0..rng.random_range(0..4) {
        if p.len() > 4 {
            let i = rng.random_range(4..p.len());
            p[i] = rng.random();
        }
    }
    if rng.random_bool(0.15) && p.len() > wire::TLV_START + 4 {
        let l: u16 = rng.random();
        p[wire::TLV_START + 2..wire::TLV_START + 4].copy_from_slice(&l.to_be_bytes());
    }
    if rng.random_bool(0.15) {
        p.truncate(rng.random_range(0..=p.len()));
    }
    if rng.random_bool(0.1) {
        let extra = rng.random_range(1..64);
        p.extend((0..extra).map(|_| rng.random::<u8>()));
    }
    p.truncate(MAX_LEN);
    p
}

#[test]
fn fuzzed_requests_never_amplify_or_crash_the_reflector() -> Result<()> {
    let Some(env) = TestEnv::acquire("fuzzed_requests_never_amplify_or_crash_the_reflector", &[])?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    for (i, f) in FAMILIES.into_iter().enumerate() {
        let mut refl = env.mp.reflect(
            &t.b,
            &["--budget-per-source", "off", "--budget-total", "off"],
        )?;
        let sock =
            t.a.enter(|| UdpSocket::bind(SocketAddr::new(t.a_addr(f), SPORT)))??;
        let rx = sock.try_clone()?;
        let receiver = std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
            rx.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = rx.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            Ok(got)
        });
        let to = SocketAddr::new(t.b_addr(f), STAMP_PORT);
        let mut rng = StdRng::seed_from_u64(0x1313 + i as u64);
        let mut sent: HashMap<u32, usize> = HashMap::new();
        let start = Instant::now();
        for seq in 0..CASES {
            let p = mutate(&mut rng, seq);
            if p.len() >= 4 {
                sent.insert(seq, p.len());
            }
            sock.send_to(&p, to)?;
            // Paced so that nothing is lost to a full socket buffer: counters must add up.
            if seq % 200 == 199 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let replies = receiver.join().expect("receiver thread")?;
        ensure!(
            refl.is_running(),
            "{}: the reflector died under fuzzed input: {}",
            f.label(),
            refl.child.stderr_text()
        );
        let check = env.mp.ping(
            &t.a,
            &[&t.b_addr(f).to_string(), "-c", "3", "-i", "50ms"],
            Duration::from_secs(20),
        )?;
        let after = check.summary()?.received;
        let sum = refl.stop()?;
        let mut answered: HashMap<u32, usize> = HashMap::new();
        for r in &replies {
            ensure!(
                r.len() >= wire::BASE_LEN,
                "{}: a reply of {} octets",
                f.label(),
                r.len()
            );
            let seq = u32::from_be_bytes(r[wire::SENDER_SEQ..wire::SENDER_SEQ + 4].try_into()?);
            let req_len = sent.get(&seq).copied();
            ensure!(
                req_len == Some(r.len()),
                "{}: a reply of {} octets to request {seq} of {req_len:?} octets",
                f.label(),
                r.len()
            );
            *answered.entry(seq).or_default() += 1;
        }
        let twice = answered.values().filter(|n| **n > 1).count();
        let n = |k: &str| sum[k].as_u64().unwrap_or(0);
        eprintln!(
            "{}: {CASES} fuzzed requests in {:.1} s: {} replies (all the length of their \
             request), ping after: {after}/3; reflector requests {} replies {} malformed {} \
             malformed_tlv {} send_errors {} refused {}",
            f.label(),
            start.elapsed().as_secs_f64(),
            replies.len(),
            n("requests"),
            n("replies"),
            n("malformed"),
            n("malformed_tlv"),
            n("send_errors"),
            sum["refused"]
        );
        ensure!(twice == 0, "{}: {twice} requests answered twice", f.label());
        ensure!(
            after == 3,
            "{}: {after}/3 pings answered after the fuzzing",
            f.label()
        );
        ensure!(
            n("requests") == u64::from(CASES) + 3
                && n("replies") == replies.len() as u64 + 3
                && n("requests")
                    == n("replies") + n("malformed") + n("send_errors") + refused_total(&sum),
            "{}: counters do not add up ({CASES} sent, {} replies received, 3 pings): {sum}",
            f.label(),
            replies.len()
        );
        // The mutations reach every outcome: answered, malformed, and refused by shape.
        ensure!(
            replies.len() > 1000 && n("malformed") > 1000 && refused(&sum, "reflected") > 1000,
            "{}: the fuzzing did not exercise every outcome: {sum}",
            f.label()
        );
    }
    Ok(())
}

/// Probes per family at the sender.
const PROBES: u32 = 300;
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Mutated copies after each genuine reply (none after the last: ping exits on its genuine
/// reply, and copies still queued then would be read by nobody). About 2 × 300 × 33 = 20 000.
const COPIES: Range<usize> = 20..47;
/// What the fake reflector puts between T2 and T3 (PTP format: exact to the nanosecond).
const FAKE_TURNAROUND_NS: u64 = 1_234_567;

/// Regions of a reply (offsets into the payload) that the byte mutations aim at.
const REGIONS: [(&str, Range<usize>); 11] = [
    ("refl_seq", wire::SEQ..wire::SEQ + 4),
    ("t3", wire::TIMESTAMP..wire::TIMESTAMP + 8),
    (
        "error_estimate",
        wire::ERROR_ESTIMATE..wire::ERROR_ESTIMATE + 2,
    ),
    ("ssid", wire::SSID..wire::SSID + 2),
    ("t2", wire::RECEIVE_TIMESTAMP..wire::RECEIVE_TIMESTAMP + 8),
    ("sender_seq", wire::SENDER_SEQ..wire::SENDER_SEQ + 4),
    (
        "sender_t1",
        wire::SENDER_TIMESTAMP..wire::SENDER_TIMESTAMP + 8,
    ),
    (
        "sender_ee",
        wire::SENDER_ERROR_ESTIMATE..wire::SENDER_ERROR_ESTIMATE + 2,
    ),
    ("mbz_ttl", wire::REPLY_MBZ1..wire::BASE_LEN),
    ("tlv_header", wire::TLV_START..wire::TLV_START + 4),
    ("tlv_value", wire::TLV_START + 4..usize::MAX),
];

/// One mutated copy of the genuine reply `g`, and the name of its mutation.
fn mutate_reply(rng: &mut StdRng, g: &[u8]) -> (Vec<u8>, &'static str) {
    let mut p = g.to_vec();
    let kind = match rng.random_range(0..10) {
        // Octets of one region: replaced, or one bit flipped (near-valid values, e.g. a
        // timestamp off by one nanosecond).
        0..=5 => {
            let (name, r) = &REGIONS[rng.random_range(0..REGIONS.len())];
            let r = r.start.min(p.len())..r.end.min(p.len());
            for _ in 0..rng.random_range(1..4) {
                if r.is_empty() {
                    break;
                }
                let i = rng.random_range(r.clone());
                if rng.random_bool(0.5) {
                    p[i] = rng.random();
                } else {
                    p[i] ^= 1 << rng.random_range(0..8);
                }
            }
            *name
        }
        // TLV length: anything, or off by a little.
        6 => {
            let l = u16::from_be_bytes([p[wire::TLV_START + 2], p[wire::TLV_START + 3]]);
            let l = if rng.random_bool(0.5) {
                rng.random()
            } else {
                l.wrapping_add_signed(rng.random_range(-4..=4))
            };
            p[wire::TLV_START + 2..wire::TLV_START + 4].copy_from_slice(&l.to_be_bytes());
            "tlv_length"
        }
        // More TLVs of any type, their lengths right or not.
        7 => {
            for _ in 0..rng.random_range(1..4) {
                let len: u16 = rng.random_range(0..64);
                let claim = if rng.random_bool(0.7) {
                    len
                } else {
                    rng.random()
                };
                p.push(rng.random::<u8>() & 0xc0);
                p.push(rng.random());
                p.extend_from_slice(&claim.to_be_bytes());
                p.extend((0..len).map(|_| rng.random::<u8>()));
            }
            "extra_tlvs"
        }
        // Cut short anywhere, the base packet included.
        8 => {
            p.truncate(rng.random_range(0..p.len()));
            "truncated"
        }
        // Random octets; half of them with the genuine SSID and sequence number in place.
        _ => {
            let n = rng.random_range(0..MAX_LEN);
            p = (0..n).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && n >= wire::BASE_LEN {
                p[wire::SSID..wire::SSID + 2].copy_from_slice(&g[wire::SSID..wire::SSID + 2]);
                p[wire::SENDER_SEQ..wire::SENDER_SEQ + 4]
                    .copy_from_slice(&g[wire::SENDER_SEQ..wire::SENDER_SEQ + 4]);
            }
            "random"
        }
    };
    // On top of that, sometimes: cut short, or extended with random octets.
    if rng.random_bool(0.1) {
        p.truncate(rng.random_range(0..=p.len()));
    }
    if rng.random_bool(0.1) {
        let extra = rng.random_range(1..64);
        p.extend((0..extra).map(|_| rng.random::<u8>()));
    }
    p.truncate(MAX_LEN);
    (p, kind)
}

#[test]
fn fuzzed_replies_never_become_samples_at_the_sender() -> Result<()> {
    let Some(env) = TestEnv::acquire("fuzzed_replies_never_become_samples_at_the_sender", &[])?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    for (i, f) in FAMILIES.into_iter().enumerate() {
        let kinds: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
        let kinds2 = kinds.clone();
        let mut rng = StdRng::seed_from_u64(0x1314 + i as u64);
        let fake = FakeReflector::start_followed(
            &t.b,
            SocketAddr::new(t.b_addr(f), STAMP_PORT),
            FAKE_TURNAROUND_NS,
            move |n, reply| {
                if n + 1 >= u64::from(PROBES) {
                    return Vec::new();
                }
                let mut kinds = kinds2.lock().expect("kinds");
                (0..rng.random_range(COPIES))
                    .map(|_| {
                        let (p, kind) = mutate_reply(&mut rng, reply);
                        *kinds.entry(kind).or_default() += 1;
                        p
                    })
                    .collect()
            },
        )?;
        // What ping's socket read, and what the kernel dropped before it (A runs nothing else
        // on UDP).
        let in_before = udp_counter(&t.a, "InDatagrams")?;
        let err_before = udp_counter(&t.a, "InErrors")?;
        let start = Instant::now();
        let run = env.mp.ping(
            &t.a,
            &[
                &t.b_addr(f).to_string(),
                "-c",
                &PROBES.to_string(),
                "-i",
                "10ms",
                "-W",
                "1s",
            ],
            ping_timeout(PROBES, PROBE_INTERVAL, PROBE_TIMEOUT),
        );
        let st = fake.stop()?;
        let run = run?;
        let read = udp_counter(&t.a, "InDatagrams")? - in_before;
        let dropped = udp_counter(&t.a, "InErrors")? - err_before;
        let s = run.summary()?;
        let copies = st.datagrams_sent - st.answered;
        let rejected: u64 = s.rejected.values().sum();
        let counted = s.duplicates + s.late + rejected;
        eprintln!(
            "{}: {PROBES} probes in {:.1} s; fake: {} requests, {} genuine replies, {copies} \
             mutated copies {:?}; ping's socket read {read} datagrams, kernel UDP drops \
             {dropped}; ping: sent {} received {} lost {} duplicates {} late {} reordered {} \
             rejected {rejected} {:?}; {} probe lines",
            f.label(),
            start.elapsed().as_secs_f64(),
            st.requests,
            st.answered,
            kinds.lock().expect("kinds"),
            s.sent,
            s.received,
            s.lost,
            s.duplicates,
            s.late,
            s.reordered,
            s.rejected,
            run.probes.len()
        );
        let p = u64::from(PROBES);
        ensure!(
            st.requests == p && st.answered == p && s.sent == p,
            "{}: {} probes sent, the fake saw {} requests and answered {}",
            f.label(),
            s.sent,
            st.requests,
            st.answered
        );
        let seqs: HashSet<u32> = run.probes.iter().map(|p| p.seq).collect();
        ensure!(
            run.probes.len() == PROBES as usize
                && seqs.len() == PROBES as usize
                && s.received == p
                && s.lost == 0,
            "{}: {} probe lines for {} sequence numbers, received {} lost {}: every probe must \
             be answered once",
            f.label(),
            run.probes.len(),
            seqs.len(),
            s.received,
            s.lost
        );
        for pr in &run.probes {
            ensure!(
                pr.turnaround_ns == FAKE_TURNAROUND_NS as i64
                    && (0..=pr.app_rtt_ns).contains(&pr.network_rtt_ns),
                "{}: seq {}: turnaround {} ns (the fake's is {FAKE_TURNAROUND_NS}), network \
                 RTT {} app RTT {}: a mutated copy became a sample",
                f.label(),
                pr.seq,
                pr.turnaround_ns,
                pr.network_rtt_ns,
                pr.app_rtt_ns
            );
        }
        // Every datagram the fake sent was read by ping or dropped by the kernel with a
        // counter, and every copy ping read is counted once.
        ensure!(
            read + dropped == st.datagrams_sent,
            "{}: the fake sent {} datagrams, ping's socket read {read}, the kernel dropped \
             {dropped}",
            f.label(),
            st.datagrams_sent
        );
        ensure!(
            counted == read - p,
            "{}: duplicates {} + late {} + rejected {rejected} = {counted}, but {} mutated \
             copies reached ping's socket ({copies} sent, {dropped} dropped)",
            f.label(),
            s.duplicates,
            s.late,
            read - p
        );
        // The mutations reach every outcome.
        let r = |k: &str| s.rejected.get(k).copied().unwrap_or(0);
        ensure!(
            copies > 8000
                && s.duplicates > 0
                && [
                    "malformed",
                    "unknown_session",
                    "not_in_flight",
                    "t1_mismatch",
                    "bad_stamps"
                ]
                .iter()
                .all(|k| r(k) > 0),
            "{}: the fuzzing did not exercise every outcome: {copies} copies, duplicates {}, \
             rejected {:?}",
            f.label(),
            s.duplicates,
            s.rejected
        );
    }
    Ok(())
}
