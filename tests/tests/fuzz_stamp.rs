//! Issue 13, fuzzed requests at the reflector: 20 000 seeded mutations of STAMP test packets
//! with and without TLVs (bytes changed, TLV lengths corrupted, cut short, extended, random).
//! The reflector must stay up, never answer with more octets than it was sent (no
//! amplification), answer each request at most once, and its counters must add up:
//! requests = replies + malformed + refused + send errors.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meshprobe_tests::safety::{FAMILIES, refused, refused_total};
use meshprobe_tests::stamp::build_request;
use meshprobe_tests::{STAMP_PORT, TestEnv, TwoHosts};
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
