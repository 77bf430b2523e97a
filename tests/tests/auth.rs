//! STAMP authenticated mode (RFC 8762 §4.2.2 / §4.3.2 / §4.4, RFC 8972 §3), end to end:
//! - `ping --auth required` against `reflect --auth required` with one key, IPv4 and IPv6,
//!   measures with
//!   kernel stamps (T1 from the egress program's record, T4 from its map, T2 from the socket's
//!   RX stamp), and the programs write nothing into the signed packets;
//! - a wrong key: every request refused (`auth`) and counted, no sample; a reflector that
//!   answers in open mode is rejected by a `required` sender (`auth`);
//! - an `optional` reflector answers both modes; an `optional` sender accepts open replies and
//!   counts them;
//! - key rotation: reflector current=A next=B, the sender's key file switches from A to B
//!   mid-run: nothing lost or refused; a rewritten reflector key file is picked up without a
//!   restart;
//! - interoperability both ways with packets laid out by hand from the RFC figures and HMACs
//!   computed here with the `hmac` crate, independently of meshprobe's codec;
//! - socket-timestamp mode (`--no-ebpf`) works the same way.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hmac::{Hmac, Mac};
use meshprobe_harness::meshprobe::ebpf_counter;
use meshprobe_harness::stamp::{ptp_ns, tai_now_ns};
use meshprobe_harness::{Family, TestEnv, TwoHosts};
use sha2::Sha256;

const KEY_A: &str = "00112233445566778899aabbccddeeff";
const KEY_B: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
/// Longer than the key files' poll period (2 s).
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Key files in a directory of their own, removed on drop.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(test: &str) -> Result<Keys> {
        let dir =
            std::env::temp_dir().join(format!("meshprobe-auth-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Keys { dir })
    }

    /// Writes `hex` to `name` by rename (a new inode, as a Secret volume swaps files).
    fn set(&self, name: &str, hex: &str) -> Result<String> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("{hex}\n"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path.to_str().context("path")?.to_string())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// HMAC-SHA-256 truncated to 16 octets, with the `hmac` crate directly.
fn hmac16(k: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).unwrap();
    m.update(data);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn ptp_bytes(ns: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&((ns / 1_000_000_000) as u32).to_be_bytes());
    b[4..].copy_from_slice(&((ns % 1_000_000_000) as u32).to_be_bytes());
    b
}

/// RFC 8762 Figure 4 (SSID per RFC 8972 §3): Sequence Number 0..4, MBZ 4..16, Timestamp
/// 16..24, Error Estimate 24..26, SSID 26..28, MBZ 28..96, HMAC 96..112 over 0..96.
fn auth_request(k: &[u8], seq: u32, ssid: u16, t1: u64) -> Vec<u8> {
    let mut p = vec![0u8; 112];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[16..24].copy_from_slice(&ptp_bytes(t1));
    p[24..26].copy_from_slice(&0x4001u16.to_be_bytes()); // Z=1 (PTP), multiplier 1
    p[26..28].copy_from_slice(&ssid.to_be_bytes());
    let mac = hmac16(k, &p[..96]);
    p[96..112].copy_from_slice(&mac);
    p
}

fn verifies(k: &[u8], p: &[u8]) -> bool {
    p.len() >= 112 && hmac16(k, &p[..96]) == p[96..112]
}

fn ping_args<'a>(peer: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![peer];
    v.extend_from_slice(extra);
    v
}

#[test]
fn authenticated_ping_and_reflect_measure_with_kernel_stamps() -> Result<()> {
    let name = "authenticated_ping_and_reflect_measure_with_kernel_stamps";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let keys = Keys::new("kernel")?;
    let ka = keys.set("a", KEY_A)?;
    let t = TwoHosts::new()?;
    let refl = env
        .mp
        .reflect(&t.b, &["--auth", "required", "--key-file", &ka])?;
    let mut runs = Vec::new();
    for family in [Family::V4, Family::V6] {
        let peer = t.b_addr(family).to_string();
        let args = [
            "-c",
            "30",
            "-i",
            "10ms",
            "--auth",
            "required",
            "--key-file",
            &ka,
        ];
        runs.push(
            env.mp
                .ping(&t.a, &ping_args(&peer, &args), Duration::from_secs(30))?,
        );
    }
    let rsum = refl.stop()?;
    eprintln!("reflector {rsum}");
    for run in &runs {
        let s = run.summary()?;
        eprintln!("summary {s:?}");
        ensure!(s.received == 30 && s.lost == 0, "received {s:?}");
        ensure!(
            s.rejected.values().all(|&n| n == 0),
            "rejected {:?}",
            s.rejected
        );
        for p in &run.probes {
            ensure!(
                p.t1_source.as_deref() == Some(run.kernel_t1_source()) && p.t4_source == "map",
                "{}: seq {}: T1 from {:?}, T4 from {} (kernel: {}, map)",
                s.peer,
                p.seq,
                p.t1_source,
                p.t4_source,
                run.kernel_t1_source()
            );
            ensure!(
                p.turnaround_ns > 0 && p.network_rtt_ns > 0 && p.network_rtt_ns < p.app_rtt_ns,
                "seq {}: turnaround {} network {} app {}",
                p.seq,
                p.turnaround_ns,
                p.network_rtt_ns,
                p.app_rtt_ns
            );
        }
        // Nothing written into the signed packets: the sender's programs recorded T1 and T4
        // in their maps.
        let st = run.stamping.as_ref().context("sender stamping summary")?;
        ensure!(
            ebpf_counter(st, "t1_stamped") >= 30 && ebpf_counter(st, "t4_to_map") >= 30,
            "sender counters {st}"
        );
        ensure!(ebpf_counter(st, "skip_auth") >= 60, "sender counters {st}");
    }
    // The reflector's programs stamped nothing.
    ensure!(
        ebpf_counter(&rsum, "t2_stamped") == 0 && ebpf_counter(&rsum, "t3_stamped") == 0,
        "reflector wrote stamps into authenticated packets: {rsum}"
    );
    ensure!(ebpf_counter(&rsum, "skip_auth") >= 120, "reflector {rsum}");
    ensure!(rsum["replies"] == 60, "reflector {rsum}");
    Ok(())
}

#[test]
fn wrong_keys_are_refused_and_counted() -> Result<()> {
    let Some(env) = TestEnv::acquire("wrong_keys_are_refused_and_counted", &[])? else {
        return Ok(());
    };
    let keys = Keys::new("wrong")?;
    let (ka, kb) = (keys.set("a", KEY_A)?, keys.set("b", KEY_B)?);
    let t = TwoHosts::new()?;
    let peer = t.b_addr(Family::V4).to_string();

    // A required reflector refuses requests signed with another key.
    let refl = env
        .mp
        .reflect(&t.b, &["--auth", "required", "--key-file", &ka])?;
    let run = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "10",
                "-i",
                "10ms",
                "-W",
                "200ms",
                "--auth",
                "required",
                "--key-file",
                &kb,
            ],
        ),
        Duration::from_secs(30),
    )?;
    let s = run.summary()?;
    let rsum = refl.stop()?;
    ensure!(
        s.received == 0 && run.probes.is_empty(),
        "samples with a wrong key: {s:?}"
    );
    ensure!(
        rsum["refused"]["auth"] == 10 && rsum["replies"] == 0,
        "reflector {rsum}"
    );

    // An optional reflector with another key answers in open mode; a required sender rejects it.
    let refl = env
        .mp
        .reflect(&t.b, &["--auth", "optional", "--key-file", &kb])?;
    let run = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "10",
                "-i",
                "10ms",
                "-W",
                "200ms",
                "--auth",
                "required",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    )?;
    let s = run.summary()?;
    let rsum = refl.stop()?;
    ensure!(rsum["replies"] == 10, "reflector {rsum}");
    ensure!(
        s.received == 0,
        "open replies accepted by a required sender: {s:?}"
    );
    ensure!(
        s.rejected.get("auth") == Some(&10),
        "rejected {:?}",
        s.rejected
    );
    Ok(())
}

#[test]
fn optional_modes_interwork_with_open_mode() -> Result<()> {
    let Some(env) = TestEnv::acquire("optional_modes_interwork_with_open_mode", &[])? else {
        return Ok(());
    };
    let keys = Keys::new("optional")?;
    let ka = keys.set("a", KEY_A)?;
    let t = TwoHosts::new()?;
    let peer = t.b_addr(Family::V4).to_string();
    let refl = env
        .mp
        .reflect(&t.b, &["--auth", "optional", "--key-file", &ka])?;
    // An open sender and an authenticated one, same optional reflector.
    let open = env.mp.ping(
        &t.a,
        &ping_args(&peer, &["-c", "10", "-i", "10ms"]),
        Duration::from_secs(30),
    )?;
    let auth = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "10",
                "-i",
                "10ms",
                "--auth",
                "required",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    )?;
    let rsum = refl.stop()?;
    let (so, sa) = (open.summary()?, auth.summary()?);
    ensure!(
        so.received == 10 && sa.received == 10,
        "open {so:?}\nauth {sa:?}"
    );
    ensure!(
        rsum["replies"] == 20 && rsum["refused"]["auth"] == 0,
        "reflector {rsum}"
    );
    // An optional port is never written to, in either mode.
    ensure!(ebpf_counter(&rsum, "t2_stamped") == 0, "reflector {rsum}");
    for p in open.probes.iter().chain(&auth.probes) {
        ensure!(
            p.network_rtt_ns > 0 && p.network_rtt_ns < p.app_rtt_ns,
            "probe {p:?}"
        );
    }

    // An optional sender against an open reflector: accepted, counted as unauthenticated.
    let refl = env.mp.reflect(&t.b, &[])?;
    let run = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "10",
                "-i",
                "10ms",
                "--auth",
                "optional",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    )?;
    refl.stop()?;
    let s = run.summary()?;
    ensure!(s.received == 10 && s.unauthenticated == 10, "summary {s:?}");
    Ok(())
}

#[test]
fn keys_rotate_without_a_gap_and_without_a_restart() -> Result<()> {
    let name = "keys_rotate_without_a_gap_and_without_a_restart";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let keys = Keys::new("rotate")?;
    let r_cur = keys.set("reflector-current", KEY_A)?;
    let r_next = keys.set("reflector-next", KEY_B)?;
    let s_cur = keys.set("sender-current", KEY_A)?;
    let s_next = keys.set("sender-next", KEY_B)?;
    let t = TwoHosts::new()?;
    let peer = t.b_addr(Family::V4).to_string();
    // Step 1 of the procedure (B added as next everywhere) is done.
    let refl = env.mp.reflect(
        &t.b,
        &[
            "--auth",
            "required",
            "--key-file",
            &r_cur,
            "--next-key-file",
            &r_next,
        ],
    )?;
    // Step 2 at the sender, mid-run: B current, A next. The reflector still signs with A.
    let switch = std::thread::spawn({
        let (cur, next, dir) = (
            keys.path("sender-current"),
            keys.path("sender-next"),
            keys.dir.clone(),
        );
        move || -> Result<()> {
            std::thread::sleep(Duration::from_secs(3));
            // Next first: every state in between verifies both ways.
            for (path, hex) in [(&next, KEY_A), (&cur, KEY_B)] {
                let tmp = dir.join(".switch.tmp");
                std::fs::write(&tmp, format!("{hex}\n"))?;
                std::fs::rename(&tmp, Path::new(path))?;
            }
            Ok(())
        }
    });
    let run = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "400",
                "-i",
                "20ms",
                "--auth",
                "required",
                "--key-file",
                &s_cur,
                "--next-key-file",
                &s_next,
            ],
        ),
        Duration::from_secs(60),
    );
    switch
        .join()
        .map_err(|_| anyhow::anyhow!("switch panicked"))??;
    let run = run?;
    let s = run.summary()?;
    ensure!(
        s.received == 400 && s.lost == 0,
        "gap during rotation: {s:?}"
    );
    ensure!(
        s.rejected.values().all(|&n| n == 0),
        "rejected {:?}",
        s.rejected
    );

    // Step 2 and 3 at the reflector, without a restart: B current, A dropped.
    keys.set("reflector-current", KEY_B)?;
    keys.set("reflector-next", KEY_B)?;
    std::thread::sleep(RELOAD_WAIT);
    let ka = keys.set("old", KEY_A)?;
    let old = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "5",
                "-i",
                "10ms",
                "-W",
                "200ms",
                "--auth",
                "required",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    )?;
    let kb = keys.set("new", KEY_B)?;
    let new = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "5",
                "-i",
                "10ms",
                "--auth",
                "required",
                "--key-file",
                &kb,
            ],
        ),
        Duration::from_secs(30),
    )?;
    let rsum = refl.stop()?;
    ensure!(
        old.summary()?.received == 0,
        "dropped key still accepted: {:?}",
        old.summary()?
    );
    ensure!(
        new.summary()?.received == 5,
        "current key refused: {:?}",
        new.summary()?
    );
    ensure!(rsum["refused"]["auth"] == 5, "reflector {rsum}");
    Ok(())
}

#[test]
fn independent_authenticated_sender_gets_verifiable_replies() -> Result<()> {
    let name = "independent_authenticated_sender_gets_verifiable_replies";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let keys = Keys::new("indep-sender")?;
    let ka = keys.set("a", KEY_A)?;
    let k = key(KEY_A);
    let t = TwoHosts::new()?;
    let refl = env
        .mp
        .reflect(&t.b, &["--auth", "required", "--key-file", &ka])?;
    let b: SocketAddr = (t.b_addr(Family::V4), 862).into();
    let sock =
        t.a.enter(|| UdpSocket::bind("198.18.0.1:0"))?
            .context("sender socket")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    for seq in 0..5u32 {
        let t1 = tai_now_ns();
        let req = auth_request(&k, seq + 100, 0xBEEF, t1);
        sock.send_to(&req, b)?;
        let (n, from) = sock.recv_from(&mut buf).context("no authenticated reply")?;
        let tai = tai_now_ns();
        let r = &buf[..n];
        ensure!(from == b && n == 112, "reply of {n} octets from {from}");
        ensure!(
            verifies(&k, r),
            "reply HMAC does not verify: {:02x?}",
            &r[96..112]
        );
        // RFC 8762 Figure 6 (SSID per RFC 8972 §3).
        ensure!(r[0..4] == req[0..4], "sequence not copied (stateless)");
        ensure!(r[4..16].iter().all(|&o| o == 0), "MBZ 4..16");
        ensure!(r[26..28] == [0xBE, 0xEF], "SSID not echoed");
        ensure!(
            r[28..32].iter().all(|&o| o == 0) && r[40..48].iter().all(|&o| o == 0),
            "MBZ"
        );
        ensure!(r[48..52] == req[0..4], "Session-Sender Sequence Number");
        ensure!(r[64..72] == req[16..24], "Session-Sender Timestamp");
        ensure!(r[72..74] == req[24..26], "Session-Sender Error Estimate");
        ensure!(r[80] == 64, "Ses-Sender TTL {}", r[80]);
        ensure!(r[81..96].iter().all(|&o| o == 0), "MBZ 81..96");
        let ee = u16::from_be_bytes([r[24], r[25]]);
        ensure!(ee & 0x4000 != 0, "Z bit (PTP) not set: {ee:#06x}");
        let (t3, t2) = (ptp_ns(&r[16..24]), ptp_ns(&r[32..40]));
        ensure!(
            t1 <= t2 && t2 <= t3 && t3 <= tai,
            "stamps: T1 {t1} T2 {t2} T3 {t3} now {tai}"
        );
    }
    // A request whose HMAC does not verify gets no reply.
    let mut bad = auth_request(&k, 1, 0xBEEF, tai_now_ns());
    bad[20] ^= 1;
    sock.send_to(&bad, b)?;
    ensure!(
        sock.recv_from(&mut buf).is_err(),
        "a forged request was answered"
    );
    let rsum = refl.stop()?;
    ensure!(
        rsum["replies"] == 5 && rsum["refused"]["auth"] == 1,
        "reflector {rsum}"
    );
    Ok(())
}

#[test]
fn ping_verifies_an_independent_authenticated_reflector() -> Result<()> {
    let name = "ping_verifies_an_independent_authenticated_reflector";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let keys = Keys::new("indep-reflector")?;
    let ka = keys.set("a", KEY_A)?;
    let k = key(KEY_A);
    let t = TwoHosts::new()?;
    let sock =
        t.b.enter(|| UdpSocket::bind("0.0.0.0:862"))?
            .context("independent reflector socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // An authenticated reflector written from RFC 8762 Figure 6: verifies each request, answers
    // with its own userspace stamps, signs the reply.
    let fake = std::thread::spawn(move || -> Result<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut answered, mut bad) = (0u32, 0u32);
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let t2 = tai_now_ns();
            let q = &buf[..n];
            if !verifies(&k, q) {
                bad += 1;
                continue;
            }
            let mut r = vec![0u8; n];
            r[0..4].copy_from_slice(&q[0..4]);
            r[24..26].copy_from_slice(&0x4001u16.to_be_bytes());
            r[26..28].copy_from_slice(&q[26..28]);
            r[32..40].copy_from_slice(&ptp_bytes(t2));
            r[48..52].copy_from_slice(&q[0..4]);
            r[64..72].copy_from_slice(&q[16..24]);
            r[72..74].copy_from_slice(&q[24..26]);
            r[80] = 64;
            r[112..].copy_from_slice(&q[112..]); // echoed padding, uncovered
            r[16..24].copy_from_slice(&ptp_bytes(tai_now_ns()));
            let mac = hmac16(&k, &r[..96]);
            r[96..112].copy_from_slice(&mac);
            sock.send_to(&r, from)?;
            answered += 1;
        }
        Ok((answered, bad))
    });
    let peer = t.b_addr(Family::V4).to_string();
    let run = env.mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "20",
                "-i",
                "10ms",
                "--size",
                "140",
                "--auth",
                "required",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    );
    stop.store(true, Ordering::SeqCst);
    let (answered, bad) = fake
        .join()
        .map_err(|_| anyhow::anyhow!("fake panicked"))??;
    let run = run?;
    let s = run.summary()?;
    ensure!(
        bad == 0,
        "{bad} requests from meshprobe did not verify independently"
    );
    ensure!(
        answered == 20 && s.received == 20,
        "answered {answered}, {s:?}"
    );
    for p in &run.probes {
        ensure!(
            p.t1_source.as_deref() == Some(run.kernel_t1_source()) && p.t4_source == "map",
            "seq {}: T1 {:?} T4 {}",
            p.seq,
            p.t1_source,
            p.t4_source
        );
        ensure!(
            p.network_rtt_ns > 0 && p.network_rtt_ns < p.app_rtt_ns,
            "probe {p:?}"
        );
    }
    Ok(())
}

#[test]
fn authenticated_mode_works_with_socket_timestamps() -> Result<()> {
    let name = "authenticated_mode_works_with_socket_timestamps";
    let Some(env) = TestEnv::acquire(name, &[])? else {
        return Ok(());
    };
    let keys = Keys::new("socket")?;
    let ka = keys.set("a", KEY_A)?;
    let t = TwoHosts::new()?;
    // Socket timestamps on purpose here.
    let mp = meshprobe_harness::Meshprobe {
        require_kernel: false,
        ..env.mp.clone()
    };
    let refl = mp.reflect(
        &t.b,
        &["--no-ebpf", "--auth", "required", "--key-file", &ka],
    )?;
    let peer = t.b_addr(Family::V4).to_string();
    let run = mp.ping(
        &t.a,
        &ping_args(
            &peer,
            &[
                "-c",
                "10",
                "-i",
                "10ms",
                "--no-ebpf",
                "--auth",
                "required",
                "--key-file",
                &ka,
            ],
        ),
        Duration::from_secs(30),
    )?;
    refl.stop()?;
    // The same sender in open mode against an open reflector: its stamp sources are the
    // reference (veth may or may not give TX software stamps).
    let refl = mp.reflect(&t.b, &["--no-ebpf"])?;
    let open = mp.ping(
        &t.a,
        &ping_args(&peer, &["-c", "10", "-i", "10ms", "--no-ebpf"]),
        Duration::from_secs(30),
    )?;
    refl.stop()?;
    let s = run.summary()?;
    ensure!(
        s.received == 10 && s.timestamping == "socket",
        "summary {s:?}"
    );
    let sources =
        |r: &meshprobe_harness::PingRun| -> std::collections::BTreeSet<(Option<String>, String)> {
            r.probes
                .iter()
                .map(|p| (p.t1_source.clone(), p.t4_source.clone()))
                .collect()
        };
    ensure!(
        sources(&run) == sources(&open),
        "stamp sources: authenticated {:?}, open {:?}",
        sources(&run),
        sources(&open)
    );
    for p in &run.probes {
        ensure!(p.t4_source == "socket", "seq {}: T4 {}", p.seq, p.t4_source);
        ensure!(
            p.network_rtt_ns > 0 && p.network_rtt_ns < p.app_rtt_ns,
            "probe {p:?}"
        );
    }
    Ok(())
}
