//! Interoperability with other STAMP implementations, both ways, with packets built by hand
//! from the RFC 8762 / 8972 field layout (not with meshprobe's codec):
//! - an RFC 8762 Session-Sender (NTP timestamps, 44 octets, no SSID) and an RFC 8972 one (SSID,
//!   a TLV meshprobe does not know) get correct replies from `meshprobe reflect`;
//! - `meshprobe ping` reads the replies of an RFC 8762-only reflector that answers in NTP format
//!   with 44 octets (no TLV echo): T2/T3 are that reflector's, T4 comes from the kernel map.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use meshprobe_harness::stamp::{ptp_ns, tai_now_ns};
use meshprobe_harness::{Family, TestEnv, TwoHosts};
use probe_common::wire;

const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

fn ntp_bytes(unix_ns: u64) -> [u8; 8] {
    let secs = unix_ns / 1_000_000_000 + NTP_UNIX_OFFSET;
    let frac = ((unix_ns % 1_000_000_000) << 32) / 1_000_000_000;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    b[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    b
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An RFC 8762 sender's 44-octet test packet: NTP timestamp, Error Estimate S=0 Z=0
/// Scale 0 Multiplier 1, then MBZ (where RFC 8972 puts the SSID).
fn rfc8762_request(seq: u32, ts: [u8; 8], ssid: u16) -> Vec<u8> {
    let mut p = vec![0u8; wire::BASE_LEN];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[4..12].copy_from_slice(&ts);
    p[12..14].copy_from_slice(&0x0001u16.to_be_bytes());
    p[14..16].copy_from_slice(&ssid.to_be_bytes());
    p
}

#[test]
fn third_party_senders_get_correct_replies() -> Result<()> {
    let Some(env) = TestEnv::acquire("third_party_senders_get_correct_replies", &[])? else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let refl = env.mp.reflect(&t.b, &[])?;
    let b: SocketAddr = (t.b_addr(Family::V4), 862).into();
    let sock =
        t.a.enter(|| UdpSocket::bind("198.18.0.1:0"))?
            .context("sender socket")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;

    // 1. RFC 8762 sender: NTP timestamps, no SSID, 44 octets.
    let ts = ntp_bytes(unix_now_ns());
    let req = rfc8762_request(7, ts, 0);
    // The reflector's stamps are CLOCK_TAI like ours: they must fall between these two reads.
    let tai_sent = tai_now_ns();
    sock.send_to(&req, b)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .context("no reply to an RFC 8762 request")?;
    let r = &buf[..n];
    let tai = tai_now_ns();
    ensure!(from == b, "reply from {from}");
    ensure!(
        n == wire::BASE_LEN,
        "reply of {n} octets to a 44-octet request"
    );
    ensure!(
        r[0..4] == 7u32.to_be_bytes(),
        "stateless: sequence not copied"
    );
    let ee = u16::from_be_bytes([r[12], r[13]]);
    ensure!(
        ee & wire::EE_Z != 0,
        "reflector Error Estimate {ee:#06x} lacks Z (PTP)"
    );
    ensure!(ee & 0xff != 0, "Error Estimate multiplier is 0");
    ensure!(
        r[14..16] == [0, 0],
        "SSID of an RFC 8762 sender must come back as 0"
    );
    let (t3, t2) = (ptp_ns(&r[4..12]), ptp_ns(&r[16..24]));
    eprintln!(
        "RFC 8762 request: turnaround T3 - T2 {} ns within a {} ns exchange",
        t3 as i64 - t2 as i64,
        tai - tai_sent
    );
    ensure!(
        tai.abs_diff(t3) < 2_000_000_000,
        "T3 {t3} is not a current TAI time (now {tai})"
    );
    // Causal order on one clock: the request was sent, then received (T2), the reply sent
    // (T3), then received here.
    ensure!(
        tai_sent <= t2 && t2 <= t3 && t3 <= tai,
        "stamps out of order: sent {tai_sent}, T2 {t2}, T3 {t3}, reply in {tai}"
    );
    ensure!(
        r[24..28] == req[0..4],
        "Session-Sender Sequence Number not echoed"
    );
    ensure!(r[28..36] == ts, "Session-Sender Timestamp not echoed");
    ensure!(
        r[36..38] == req[12..14],
        "Session-Sender Error Estimate not echoed"
    );
    ensure!(
        r[40] == 64,
        "Ses-Sender TTL {} (sent with 64, one veth hop)",
        r[40]
    );
    ensure!(
        r[38..40] == [0, 0] && r[41..44] == [0, 0, 0],
        "MBZ octets not zero"
    );

    // 2. RFC 8972 sender: SSID and a TLV type meshprobe does not implement (0xEE, 8 octets).
    let mut req = rfc8762_request(8, ntp_bytes(unix_now_ns()), 0xBEEF);
    req.extend_from_slice(&[0x80, 0xEE, 0x00, 0x08]);
    req.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    sock.send_to(&req, b)?;
    let (n, _) = sock
        .recv_from(&mut buf)
        .context("no reply to an RFC 8972 request")?;
    let r = &buf[..n];
    ensure!(
        n == req.len(),
        "reply of {n} octets to a {}-octet request",
        req.len()
    );
    ensure!(r[14..16] == 0xBEEFu16.to_be_bytes(), "SSID not echoed");
    ensure!(
        r[45] == 0xEE && r[46..48] == [0, 8],
        "unknown TLV header not echoed: {:02x?}",
        &r[44..48]
    );
    ensure!(
        r[44] & 0x80 != 0,
        "unknown TLV must come back with the U flag: {:#04x}",
        r[44]
    );
    ensure!(
        r[48..56] == [1, 2, 3, 4, 5, 6, 7, 8],
        "unknown TLV value not echoed"
    );

    let sum = refl.stop()?;
    ensure!(sum["replies"] == 2, "reflector summary {sum}");
    Ok(())
}

/// What the fake RFC 8762 reflector puts between T2 and T3.
const FAKE_TURNAROUND_NS: u64 = 1_234_567;

#[test]
fn sender_reads_an_rfc8762_reflector_in_ntp_format() -> Result<()> {
    let Some(env) = TestEnv::acquire("sender_reads_an_rfc8762_reflector_in_ntp_format", &[])?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let sock =
        t.b.enter(|| UdpSocket::bind("0.0.0.0:862"))?
            .context("fake reflector socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // An RFC 8762-only reflector: 44-octet replies (no TLV echo), NTP timestamps, own sequence.
    let fake = std::thread::spawn(move || -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seq = 0u32;
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < wire::BASE_LEN {
                continue;
            }
            let t2 = unix_now_ns();
            let mut r = [0u8; wire::BASE_LEN];
            r[0..4].copy_from_slice(&seq.to_be_bytes());
            r[4..12].copy_from_slice(&ntp_bytes(t2 + FAKE_TURNAROUND_NS));
            r[12..14].copy_from_slice(&0x0001u16.to_be_bytes()); // Z = 0: NTP
            r[16..24].copy_from_slice(&ntp_bytes(t2));
            r[24..28].copy_from_slice(&buf[0..4]);
            r[28..36].copy_from_slice(&buf[4..12]);
            r[36..38].copy_from_slice(&buf[12..14]);
            r[40] = 64;
            // Honour the T3 it reports: send no earlier than that.
            while unix_now_ns() < t2 + FAKE_TURNAROUND_NS {
                std::hint::spin_loop();
            }
            sock.send_to(&r, from)?;
            seq += 1;
        }
        Ok(seq)
    });

    let peer = t.b_addr(Family::V4).to_string();
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", "20", "-i", "10ms"],
        Duration::from_secs(20),
    );
    stop.store(true, Ordering::SeqCst);
    let answered = fake
        .join()
        .map_err(|_| anyhow::anyhow!("fake panicked"))??;
    let run = run?;
    let s = run.summary()?;
    ensure!(
        answered == 20 && s.received == 20,
        "answered {answered}, received {s:?}"
    );
    for p in &run.probes {
        // NTP fractions are 2^-32 s: the difference survives to within 1 ns.
        ensure!(
            p.turnaround_ns.abs_diff(FAKE_TURNAROUND_NS as i64) <= 1,
            "seq {}: turnaround {} ns, the reflector reported {FAKE_TURNAROUND_NS}",
            p.seq,
            p.turnaround_ns
        );
        ensure!(
            p.t4_source == "map",
            "seq {}: T4 from {} (44-octet reply: map)",
            p.seq,
            p.t4_source
        );
        // The fake's stamps are userspace ones, so its stack stays in the figure; still it must
        // be a sane positive RTT below the app-level one.
        ensure!(
            p.network_rtt_ns > 0 && p.network_rtt_ns < p.app_rtt_ns,
            "seq {}: network {} app {}",
            p.seq,
            p.network_rtt_ns,
            p.app_rtt_ns
        );
    }
    Ok(())
}
