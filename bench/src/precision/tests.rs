//! Unit tests of the pure parts: parsing, matching, alignment, formats.

use super::parse::*;
use super::report::*;

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
