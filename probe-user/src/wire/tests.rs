//! Tests for the STAMP codec. Byte vectors are written out by hand from the RFC field layouts
//! (RFC 8762 §4.2.1 / §4.3.1, RFC 8972 §3 / §4, RFC 4656 §4.1.2), not produced by the encoder.

use probe_common::RxStamp;
use probe_common::wire::{
    BASE_LEN, MIN_PROBE_LEN, PROBE_TAG, PROBE_TAG_END, REPLY_RX_STAMP, REQUEST_RX_STAMP, TLV_START,
};
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Hand-made vectors
// ---------------------------------------------------------------------------------------------

/// Session-Sender packet, PTP timestamp, Z bit set, SSID 0xBEEF.
#[rustfmt::skip]
const SENDER_PTP: [u8; 44] = [
    0x01, 0x02, 0x03, 0x04,             // Sequence Number 0x01020304
    0x65, 0x53, 0xF1, 0x00,             // Timestamp seconds 1_700_000_000 (0x6553F100)
    0x07, 0x5B, 0xCD, 0x15,             // Timestamp nanoseconds 123_456_789 (0x075BCD15)
    0x43, 0x2A,                         // Error Estimate: S=0 Z=1 Scale=000011 Multiplier=0x2A
    0xBE, 0xEF,                         // SSID
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // MBZ (28 octets)
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0,
];

fn sender_ptp() -> SenderPacket {
    SenderPacket {
        seq: 0x0102_0304,
        timestamp: Timestamp {
            secs: 1_700_000_000,
            frac: 123_456_789,
        },
        error_estimate: ErrorEstimate {
            synchronized: false,
            ptp: true,
            scale: 3,
            multiplier: 42,
        },
        ssid: 0xBEEF,
        tlvs: vec![],
    }
}

/// Session-Reflector packet with every field distinct, plus one unrecognised TLV echoed with U.
#[rustfmt::skip]
const REFLECTOR: [u8; 50] = [
    0x11, 0x12, 0x13, 0x14,                         // Sequence Number
    0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // Timestamp (T3)
    0xC1, 0x33,                                     // Error Estimate: S=1 Z=1 Scale=1 Mult=0x33
    0x41, 0x42,                                     // SSID
    0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, // Receive Timestamp (T2)
    0x61, 0x62, 0x63, 0x64,                         // Session-Sender Sequence Number
    0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, // Session-Sender Timestamp (T1)
    0xBF, 0xFF,                                     // Sender Error Estimate: S=1 Z=0 Scale=63 Mult=255
    0x00, 0x00,                                     // MBZ
    0x3E,                                           // Ses-Sender TTL 62
    0x00, 0x00, 0x00,                               // MBZ
    0x80, 0xF0, 0x00, 0x02,                         // TLV: Flags U, Type 0xF0, Length 2
    0xAB, 0xCD,                                     // TLV value
];

fn reflector() -> ReflectorPacket {
    ReflectorPacket {
        seq: 0x1112_1314,
        timestamp: Timestamp::new(0x2122_2324, 0x2526_2728),
        error_estimate: ErrorEstimate {
            synchronized: true,
            ptp: true,
            scale: 1,
            multiplier: 0x33,
        },
        ssid: 0x4142,
        receive_timestamp: Timestamp::new(0x5152_5354, 0x5556_5758),
        sender_seq: 0x6162_6364,
        sender_timestamp: Timestamp::new(0x7172_7374, 0x7576_7778),
        sender_error_estimate: ErrorEstimate {
            synchronized: true,
            ptp: false,
            scale: 63,
            multiplier: 255,
        },
        sender_ttl: 0x3E,
        tlvs: vec![Tlv {
            flags: TLV_FLAG_U,
            kind: 0xF0,
            value: vec![0xAB, 0xCD],
        }],
    }
}

/// Session-Sender packet in NTP format: 2024-01-01T00:00:00.5Z, S set, Z clear.
#[rustfmt::skip]
const SENDER_NTP: [u8; 44] = [
    0x00, 0x00, 0x00, 0x2A,             // Sequence Number 42
    0xE9, 0x3C, 0x7F, 0x00,             // NTP seconds 3_913_056_000 = 1_704_067_200 + 2_208_988_800
    0x80, 0x00, 0x00, 0x00,             // NTP fraction 2^31 / 2^32 = 0.5 s
    0x80, 0x01,                         // Error Estimate: S=1 Z=0 Scale=0 Multiplier=1
    0x00, 0x00,                         // SSID unused
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // MBZ
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0,
];

fn encode_sender(p: &SenderPacket) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(&mut out);
    out
}

fn encode_reflector(p: &ReflectorPacket) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(&mut out);
    out
}

#[test]
fn sender_ptp_encode_matches_hand_vector() {
    assert_eq!(encode_sender(&sender_ptp()), SENDER_PTP);
}

#[test]
fn sender_ptp_decode_matches_hand_vector() {
    let p = SenderPacket::decode(&SENDER_PTP).unwrap();
    assert_eq!(p, sender_ptp());
    assert_eq!(p.error_estimate.format(), TimestampFormat::Ptp);
    assert_eq!(p.timestamp_ns(), 1_700_000_000_123_456_789);
    assert_eq!(
        Timestamp::from_ptp_ns(1_700_000_000_123_456_789),
        p.timestamp
    );
}

#[test]
fn sender_decode_ignores_mbz() {
    let mut buf = SENDER_PTP;
    buf[16..44].fill(0xA5);
    assert_eq!(SenderPacket::decode(&buf).unwrap(), sender_ptp());
}

#[test]
fn reflector_encode_matches_hand_vector() {
    assert_eq!(encode_reflector(&reflector()), REFLECTOR);
}

#[test]
fn reflector_decode_matches_hand_vector() {
    let p = ReflectorPacket::decode(&REFLECTOR).unwrap();
    assert_eq!(p, reflector());
    assert!(p.tlvs[0].is_unrecognized());
    assert!(!p.tlvs[0].is_malformed());
}

#[test]
fn reflector_decode_ignores_mbz() {
    let mut buf = REFLECTOR;
    buf[38] = 0xFF;
    buf[39] = 0xFF;
    buf[41..44].fill(0xFF);
    assert_eq!(ReflectorPacket::decode(&buf).unwrap(), reflector());
}

#[test]
fn ntp_vector() {
    let p = SenderPacket::decode(&SENDER_NTP).unwrap();
    assert_eq!(p.seq, 42);
    assert_eq!(p.timestamp, Timestamp::new(0xE93C_7F00, 0x8000_0000));
    assert_eq!(
        p.error_estimate,
        ErrorEstimate {
            synchronized: true,
            ptp: false,
            scale: 0,
            multiplier: 1
        }
    );
    assert_eq!(p.error_estimate.format(), TimestampFormat::Ntp);
    // 2024-01-01T00:00:00Z is Unix 1_704_067_200; plus half a second.
    assert_eq!(p.timestamp_ns(), 1_704_067_200_500_000_000);
    assert_eq!(
        Timestamp::from_ntp_unix_ns(1_704_067_200_500_000_000),
        p.timestamp
    );
    assert_eq!(encode_sender(&p), SENDER_NTP);
}

#[test]
fn ntp_epochs_eras_and_fractions() {
    // The Unix epoch is NTP second 2_208_988_800 = 0x83AA7E80.
    assert_eq!(
        Timestamp::new(0x83AA_7E80, 0).to_ns(TimestampFormat::Ntp),
        0
    );
    assert_eq!(
        Timestamp::from_ntp_unix_ns(0),
        Timestamp::new(0x83AA_7E80, 0)
    );
    // Before 1970: clamps to 0.
    assert_eq!(
        Timestamp::new(0x83AA_7E7F, 0xFFFF_FFFF).to_ns(TimestampFormat::Ntp),
        0
    );
    // Era 1 starts at 2036-02-07T06:28:16Z = Unix 2^32 - 2_208_988_800 = 2_085_978_496.
    assert_eq!(
        Timestamp::new(0, 0).to_ns(TimestampFormat::Ntp),
        2_085_978_496 * 1_000_000_000
    );
    assert_eq!(
        Timestamp::from_ntp_unix_ns(2_085_978_496 * 1_000_000_000),
        Timestamp::new(0, 0)
    );
    // Fraction: 1 unit = 0.23 ns rounds down to 0; all ones = 1 - 2^-32 s = 999_999_999.77 ns.
    let base = 2_208_988_800 + 10;
    assert_eq!(
        Timestamp::new(base, 1).to_ns(TimestampFormat::Ntp),
        10_000_000_000
    );
    assert_eq!(
        Timestamp::new(base, 0xFFFF_FFFF).to_ns(TimestampFormat::Ntp),
        10_999_999_999
    );
    // 1 ns = ceil(2^32 / 1e9) = 5 units (4.29 rounded up so it decodes back to 1 ns).
    assert_eq!(
        Timestamp::from_ntp_unix_ns(1),
        Timestamp::new(0x83AA_7E80, 5)
    );
}

#[test]
fn timestamp_bytes_and_zero() {
    let t = Timestamp::new(0x0102_0304, 0x0506_0708);
    assert_eq!(t.to_be_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(Timestamp::from_be_bytes([1, 2, 3, 4, 5, 6, 7, 8]), t);
    assert!(Timestamp::ZERO.is_zero());
    assert!(Timestamp::default().is_zero());
    assert!(!t.is_zero());
    assert!(!Timestamp::new(0, 1).is_zero());
}

#[test]
fn ptp_seconds_truncate_to_32_bits() {
    let ns = ((1u64 << 32) + 5) * 1_000_000_000 + 7;
    assert_eq!(Timestamp::from_ptp_ns(ns), Timestamp::new(5, 7));
}

#[test]
fn error_estimate_rfc4656_math() {
    // Scale 0, Multiplier 1: 1 × 2^-32 s = 0.232830643653869628906 ns.
    let one = ErrorEstimate::from_bits(0x0001);
    assert_eq!((one.scale, one.multiplier), (0, 1));
    assert!((one.error_ns() - 0.232_830_643_653_869_63).abs() < 1e-15);

    // 1 µs: scale 4 would need ⌈1e-6 × 2^28⌉ = 269 > 255, scale 5 needs
    // ⌈1e-6 × 2^27⌉ = ⌈134.2⌉ = 135 → 135 × 2^-27 s = 1005.828380584716796875 ns.
    let us = ErrorEstimate::for_error_ns(1_000.0, true, true);
    assert_eq!(
        us,
        ErrorEstimate {
            synchronized: true,
            ptp: true,
            scale: 5,
            multiplier: 135
        }
    );
    // S=1 Z=1 Scale=000101 → 0xC5, Multiplier 135 = 0x87.
    assert_eq!(us.to_bits(), 0xC587);
    assert_eq!(ErrorEstimate::from_bits(0xC587), us);
    assert!((us.error_ns() - 1_005.828_380_584_716_8).abs() < 1e-9);

    // 1 ns: ⌈1e-9 × 2^32⌉ = ⌈4.29⌉ = 5 at scale 0.
    assert_eq!(
        ErrorEstimate::for_error_ns(1.0, false, false).to_bits(),
        0x0005
    );

    // Largest: Scale 63, Multiplier 255 = 255 × 2^31 s.
    let max = ErrorEstimate::from_bits(0x3FFF);
    assert_eq!((max.scale, max.multiplier), (63, 255));
    assert_eq!(max.error_ns(), 255.0 * 2f64.powi(31) * 1e9);
    assert_eq!(ErrorEstimate::for_error_ns(f64::NAN, false, false), max);
    assert_eq!(
        ErrorEstimate::for_error_ns(f64::INFINITY, false, false),
        max
    );
    assert_eq!(ErrorEstimate::for_error_ns(1e30, false, false), max);

    // Zero, negative, tiny: the smallest valid estimate (Multiplier never 0).
    for ns in [0.0, -5.0, f64::NEG_INFINITY, 1e-300] {
        let ee = ErrorEstimate::for_error_ns(ns, false, false);
        assert_eq!((ee.scale, ee.multiplier), (0, 1), "{ns}");
    }
    assert!(!ErrorEstimate::from_bits(0x4000).is_valid());
    assert!(ErrorEstimate::default().is_valid());
}

#[test]
fn error_estimate_bits() {
    let ee = ErrorEstimate {
        synchronized: true,
        ptp: false,
        scale: 0x2A,
        multiplier: 0x5A,
    };
    // 1 0 101010 01011010
    assert_eq!(ee.to_bits(), 0b1010_1010_0101_1010);
    // Scale is 6 bits: higher bits cannot leak into S/Z.
    let wide = ErrorEstimate {
        scale: 0xFF,
        ..ErrorEstimate::default()
    };
    assert_eq!(wide.to_bits(), 0x3F01);
}

#[test]
fn tlv_flag_bits_follow_rfc8972() {
    // Flags octet, bit 0 (most significant) first: U M I R R R R R.
    assert_eq!(TLV_FLAG_U, 0b1000_0000);
    assert_eq!(TLV_FLAG_M, 0b0100_0000);
    assert_eq!(TLV_FLAG_I, 0b0010_0000);
    assert_eq!(TLV_FLAGS_RESERVED, 0b0001_1111);
    assert_eq!(TLV_EXTRA_PADDING, 1);
    // A Session-Sender sends U=1, M=0, I=0.
    assert_eq!(Tlv::new(7, vec![]).flags, TLV_FLAG_U);
    assert_eq!(Tlv::extra_padding(3).flags, TLV_FLAG_U);
}

#[test]
fn probe_with_padding_matches_hand_vector() {
    let p = SenderPacket::probe(
        7,
        1,
        Timestamp::new(0x0A0B_0C0D, 0x0102_0304),
        ErrorEstimate::from_bits(0x4001),
        52,
        0xA1B2_C3D4,
    )
    .unwrap();
    #[rustfmt::skip]
    let want: [u8; 52] = [
        0x00, 0x00, 0x00, 0x07,
        0x0A, 0x0B, 0x0C, 0x0D, 0x01, 0x02, 0x03, 0x04,
        0x40, 0x01,
        0x00, 0x01,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x80, 0x01, 0x00, 0x04, // Extra Padding: Flags U, Type 1, Length 4
        0xA1, 0xB2, 0xC3, 0xD4, // probe tag
    ];
    assert_eq!(encode_sender(&p), want);
    assert_eq!(SenderPacket::decode(&want).unwrap(), p);
}

#[test]
fn probe_lengths() {
    let ts = Timestamp::ZERO;
    let ee = ErrorEstimate::default();
    let base = SenderPacket::probe(1, 2, ts, ee, BASE_LEN, 0).unwrap();
    assert!(base.tlvs.is_empty());
    assert_eq!(encode_sender(&base).len(), BASE_LEN);
    for len in 45..=47 {
        assert_eq!(
            SenderPacket::probe(1, 2, ts, ee, len, 0),
            Err(WireError::BadLength { len })
        );
    }
    for len in [0, 1, 43] {
        assert_eq!(
            SenderPacket::probe(1, 2, ts, ee, len, 0),
            Err(WireError::BadLength { len })
        );
    }
    let min = SenderPacket::probe(1, 2, ts, ee, 48, 9).unwrap();
    assert_eq!(min.tlvs, vec![Tlv::extra_padding(0)]);
    // No room for the probe tag below PROBE_TAG_END: zero padding.
    let short = SenderPacket::probe(1, 2, ts, ee, PROBE_TAG_END - 1, 9).unwrap();
    assert_eq!(short.tlvs, vec![Tlv::extra_padding(3)]);
    let tagged = SenderPacket::probe(1, 2, ts, ee, MIN_PROBE_LEN, 9).unwrap();
    let buf = encode_sender(&tagged);
    assert_eq!(buf[PROBE_TAG..PROBE_TAG_END], 9u32.to_be_bytes());
    assert!(buf[PROBE_TAG_END..].iter().all(|&b| b == 0));
    let stamp = SenderPacket::probe(1, 2, ts, ee, MIN_PROBE_LEN, 0).unwrap();
    assert_eq!(stamp.tlvs[0].value.len(), RxStamp::LEN);
    assert_eq!(encode_sender(&stamp).len(), MIN_PROBE_LEN);
    let max = SenderPacket::probe(1, 2, ts, ee, MAX_PACKET_LEN, 0).unwrap();
    assert_eq!(encode_sender(&max).len(), MAX_PACKET_LEN);
    assert_eq!(
        SenderPacket::probe(1, 2, ts, ee, MAX_PACKET_LEN + 1, 0),
        Err(WireError::Oversize {
            max: MAX_PACKET_LEN,
            got: MAX_PACKET_LEN + 1
        })
    );
}

#[test]
fn truncated_and_oversize() {
    assert_eq!(
        SenderPacket::decode(&SENDER_PTP[..43]),
        Err(WireError::Truncated { need: 44, got: 43 })
    );
    assert_eq!(
        ReflectorPacket::decode(&[]),
        Err(WireError::Truncated { need: 44, got: 0 })
    );
    let big = vec![0u8; MAX_PACKET_LEN + 1];
    let over = WireError::Oversize {
        max: MAX_PACKET_LEN,
        got: MAX_PACKET_LEN + 1,
    };
    assert_eq!(SenderPacket::decode(&big), Err(over.clone()));
    assert_eq!(SenderPacket::decode_lenient(&big), Err(over.clone()));
    assert_eq!(ReflectorPacket::decode(&big), Err(over.clone()));
    assert_eq!(ReflectorPacket::decode_lenient(&big), Err(over));
    // Exactly MAX_PACKET_LEN zero octets: 44 + 8956 zeros = 2239 empty type-0 TLVs.
    let max = vec![0u8; MAX_PACKET_LEN];
    let p = SenderPacket::decode(&max).unwrap();
    assert_eq!(p.tlvs.len(), (MAX_PACKET_LEN - BASE_LEN) / 4);
}

/// The base packet of `SENDER_PTP` followed by `tail`.
fn with_tail(tail: &[u8]) -> Vec<u8> {
    let mut buf = SENDER_PTP.to_vec();
    buf.extend_from_slice(tail);
    buf
}

#[test]
fn tlv_overrun_strict_and_lenient() {
    #[rustfmt::skip]
    let buf = with_tail(&[
        0x80, 0x01, 0x00, 0x02, 0xAA, 0xBB, // well-formed Extra Padding, 2 octets
        0x80, 0xF0, 0x00, 0x10, 0xCC, 0xDD, // declares 16 value octets, has 2
    ]);
    assert_eq!(
        SenderPacket::decode(&buf),
        Err(WireError::TlvOverrun { offset: 50 })
    );

    let lenient = SenderPacket::decode_lenient(&buf).unwrap();
    assert_eq!(
        lenient.packet.tlvs,
        vec![Tlv {
            flags: 0x80,
            kind: 1,
            value: vec![0xAA, 0xBB]
        }]
    );
    let m = lenient.malformed.clone().unwrap();
    assert_eq!(m.offset, 50);
    assert_eq!(m.bytes, [0x80, 0xF0, 0x00, 0x10, 0xCC, 0xDD]);
    assert_eq!(
        (m.flags(), m.kind(), m.declared_len()),
        (Some(0x80), Some(0xF0), Some(16))
    );
    assert_eq!(m.error(), WireError::TlvOverrun { offset: 50 });
    assert!(!lenient.is_well_formed());
    assert_eq!(
        lenient.clone().into_strict(),
        Err(WireError::TlvOverrun { offset: 50 })
    );

    // Re-encoding the lenient decode gives the input back (its MBZ was zero already).
    let mut again = Vec::new();
    lenient.encode(&mut again);
    assert_eq!(again, buf);

    // The reflector answers: padding understood (flags 0), the malformed rest copied with M.
    let params = ReflectParams {
        timestamp: Timestamp::new(9, 9),
        error_estimate: ErrorEstimate::default(),
        receive_timestamp: Timestamp::new(8, 8),
        sender_ttl: 255,
    };
    let reply = reflect_lenient(&lenient, &params);
    let mut out = Vec::new();
    reply.encode(&mut out);
    assert_eq!(out.len(), buf.len());
    #[rustfmt::skip]
    let want_tail = [
        0x00, 0x01, 0x00, 0x02, 0xAA, 0xBB,
        0xC0, 0xF0, 0x00, 0x10, 0xCC, 0xDD, // U as received, M set, Length as received
    ];
    assert_eq!(out[44..], want_tail);
    assert_eq!(
        ReflectorPacket::decode(&out),
        Err(WireError::TlvOverrun { offset: 50 })
    );
    let back = ReflectorPacket::decode_lenient(&out).unwrap();
    assert_eq!(back.malformed.unwrap().flags(), Some(0xC0));
}

#[test]
fn tlv_header_truncated() {
    let buf = with_tail(&[0x80, 0x01]);
    assert_eq!(
        SenderPacket::decode(&buf),
        Err(WireError::TlvHeaderTruncated { offset: 44, got: 2 })
    );
    let lenient = SenderPacket::decode_lenient(&buf).unwrap();
    assert!(lenient.packet.tlvs.is_empty());
    let m = lenient.malformed.as_ref().unwrap();
    assert_eq!((m.kind(), m.declared_len()), (Some(1), None));
    let reply = reflect_lenient(&lenient, &ReflectParams::default());
    let mut out = Vec::new();
    reply.encode(&mut out);
    assert_eq!(out[44..], [0xC0, 0x01]);
}

#[test]
fn reflect_stateless() {
    let mut request = sender_ptp();
    request.tlvs = vec![
        Tlv::extra_padding(4),
        Tlv {
            flags: TLV_FLAG_U | TLV_FLAG_M | 0x1F, // junk a reflector must not copy
            kind: 0xF0,
            value: vec![1, 2, 3],
        },
        Tlv {
            flags: 0,
            kind: TLV_EXTRA_PADDING,
            value: vec![0xEE; 5],
        },
    ];
    let params = ReflectParams {
        timestamp: Timestamp::new(100, 200),
        error_estimate: ErrorEstimate::for_error_ns(50.0, true, true),
        receive_timestamp: Timestamp::new(100, 100),
        sender_ttl: 61,
    };
    let reply = reflect(&request, &params);
    assert_eq!(reply.seq, request.seq);
    assert_eq!(reply.ssid, 0xBEEF);
    assert_eq!(reply.timestamp, params.timestamp);
    assert_eq!(reply.error_estimate, params.error_estimate);
    assert_eq!(reply.receive_timestamp, params.receive_timestamp);
    assert_eq!(reply.sender_seq, 0x0102_0304);
    assert_eq!(reply.sender_timestamp, request.timestamp);
    assert_eq!(reply.sender_error_estimate, request.error_estimate);
    assert_eq!(reply.sender_ttl, 61);
    assert_eq!(
        reply.tlvs,
        vec![
            Tlv {
                flags: 0,
                kind: TLV_EXTRA_PADDING,
                value: vec![0; 4]
            },
            Tlv {
                flags: TLV_FLAG_U,
                kind: 0xF0,
                value: vec![1, 2, 3]
            },
            Tlv {
                flags: 0,
                kind: TLV_EXTRA_PADDING,
                value: vec![0xEE; 5]
            },
        ]
    );
    assert_eq!(reply.encoded_len(), request.encoded_len());
    assert_eq!(reply.sender_timestamp_ns(), 1_700_000_000_123_456_789);
    assert_eq!(reply.timestamp_ns(), 100_000_000_200);
    assert_eq!(reply.receive_timestamp_ns(), 100_000_000_100);
}

#[test]
fn try_encode_rejects_what_decode_would_reject() {
    let mut p = sender_ptp();
    p.tlvs = vec![Tlv::extra_padding(usize::from(u16::MAX) + 1)];
    let mut out = Vec::new();
    assert_eq!(
        p.try_encode(&mut out),
        Err(WireError::TlvTooLong { len: 65536 })
    );
    assert!(out.is_empty());
    // `encode` cuts the value so the Length field stays true.
    p.encode(&mut out);
    assert_eq!(out.len(), BASE_LEN + 4 + usize::from(u16::MAX));
    assert_eq!(out[46..48], [0xFF, 0xFF]);

    p.tlvs = vec![Tlv::extra_padding(MAX_PACKET_LEN - 48 + 1)];
    assert_eq!(
        p.try_encode(&mut Vec::new()),
        Err(WireError::Oversize {
            max: MAX_PACKET_LEN,
            got: MAX_PACKET_LEN + 1
        })
    );
    let mut r = reflector();
    r.tlvs[0].value = vec![0; 70_000];
    assert_eq!(
        r.try_encode(&mut Vec::new()),
        Err(WireError::TlvTooLong { len: 70_000 })
    );
}

#[test]
fn errors_display() {
    let e = WireError::BadLength { len: 46 };
    assert_eq!(
        e.to_string(),
        "bad STAMP probe length 46: must be 44 octets (no TLV) or 48..=9000 octets (with an \
         Extra Padding TLV)"
    );
    assert_eq!(
        WireError::Truncated { need: 44, got: 3 }.to_string(),
        "STAMP packet truncated: need at least 44 octets, got 3"
    );
}

// ---------------------------------------------------------------------------------------------
// In-band RxStamp block
// ---------------------------------------------------------------------------------------------

/// This process's block key in these tests, and the probe tag.
const KEY: u32 = 0x5EC2_E7A1;
const TAG: u32 = 0x7A67_0001;

/// The octets the eBPF side puts in the packet: it builds the struct with `.to_be()` fields and
/// copies its memory (`transmute_copy` into `[u32; 5]` in probe-ebpf).
fn ebpf_block_keyed(secs: u32, nsecs: u32, hw: u64, source: u8, key: u32) -> [u8; RxStamp::LEN] {
    let stamp = RxStamp {
        secs: secs.to_be(),
        nsecs: RxStamp::pack_nsecs(nsecs, source).to_be(),
        hw_hi: ((hw >> 32) as u32).to_be(),
        hw_lo: (hw as u32).to_be(),
        key: key.to_be(),
    };
    // SAFETY: RxStamp is repr(C), 20 octets of plain integers with no implicit padding
    // (probe-common asserts its size), so all 20 octets are initialised.
    unsafe { core::mem::transmute_copy(&stamp) }
}

fn ebpf_block(secs: u32, nsecs: u32, hw: u64, source: u8) -> [u8; RxStamp::LEN] {
    ebpf_block_keyed(secs, nsecs, hw, source, KEY)
}

#[test]
fn rx_stamp_agrees_with_ebpf_layout() {
    let block = ebpf_block(
        0x6553_F100,
        123_456_789,
        0x0102_0304_0506_0708,
        RxStamp::SOURCE_SKB_RX,
    );
    // The memory image is the big-endian wire layout, field by field.
    #[rustfmt::skip]
    let want: [u8; 20] = [
        0x65, 0x53, 0xF1, 0x00, // secs
        0x87, 0x5B, 0xCD, 0x15, // source 2 in the top 2 bits, nsecs 0x075BCD15
        0x01, 0x02, 0x03, 0x04, // hw_hi
        0x05, 0x06, 0x07, 0x08, // hw_lo
        0x5E, 0xC2, 0xE7, 0xA1, // key
    ];
    assert_eq!(block, want);

    let mut payload = vec![0xEE; 30];
    payload[7..27].copy_from_slice(&block);
    let info = read_rx_stamp(&payload, 7, KEY).unwrap();
    assert_eq!(
        info,
        RxStampInfo {
            tai_ns: 1_700_000_000_123_456_789,
            hw_ns: 0x0102_0304_0506_0708,
            source: RxStamp::SOURCE_SKB_RX,
        }
    );
    assert_eq!(info.timestamp(), Timestamp::new(1_700_000_000, 123_456_789));

    // Our writer produces the same octets as the eBPF side.
    let mut mine = vec![0xEE; 30];
    write_rx_stamp(&mut mine, 7, &info, KEY).unwrap();
    assert_eq!(mine, payload);
    // And the struct form (as read from the T4_FALLBACK map) agrees.
    assert_eq!(
        RxStampInfo::from_rx_stamp(&info.to_rx_stamp(KEY), KEY),
        Ok(info)
    );
    assert_eq!(rx_stamp_from_block(&info.to_rx_stamp(KEY)), info);
}

#[test]
fn rx_stamp_rejects_bad_blocks() {
    let block = ebpf_block(1, 2, 0, RxStamp::SOURCE_TC_NOW);
    // Any other key: forged (or another process's), told apart from "no block".
    let mut bad_key = block;
    bad_key[16] ^= 1;
    assert_eq!(read_rx_stamp(&bad_key, 0, KEY), Err(NoBlock::Untrusted));
    assert_eq!(read_rx_stamp(&block, 0, KEY ^ 1), Err(NoBlock::Untrusted));
    // The old constant marker ("MP", source, pad) is just another wrong key.
    let mut old_magic = block;
    old_magic[16..20].copy_from_slice(&[0x4D, 0x50, 0x01, 0x00]);
    assert_eq!(read_rx_stamp(&old_magic, 0, KEY), Err(NoBlock::Untrusted));
    // A zeroed block (what meshprobe's padding holds when no program wrote) is not a stamp,
    // nor is the probe tag alone.
    assert_eq!(read_rx_stamp(&[0; 20], 0, KEY), Err(NoBlock::Absent));
    let mut tag_only = [0u8; 20];
    tag_only[..4].copy_from_slice(&TAG.to_be_bytes());
    assert_eq!(read_rx_stamp(&tag_only, 0, KEY), Err(NoBlock::Absent));
    // Nanoseconds of a full second or more.
    let bad_ns = ebpf_block(1, 1_000_000_000, 0, RxStamp::SOURCE_TC_NOW);
    assert_eq!(read_rx_stamp(&bad_ns, 0, KEY), Err(NoBlock::Untrusted));
    // Out of range, overflowing offsets.
    assert_eq!(read_rx_stamp(&block, 1, KEY), Err(NoBlock::Absent));
    assert_eq!(read_rx_stamp(&block[..19], 0, KEY), Err(NoBlock::Absent));
    assert_eq!(read_rx_stamp(&block, usize::MAX, KEY), Err(NoBlock::Absent));
    assert_eq!(
        read_rx_stamp(&block, usize::MAX - 5, KEY),
        Err(NoBlock::Absent)
    );
    let info = read_rx_stamp(&block, 0, KEY).unwrap();
    assert_eq!(
        write_rx_stamp(&mut [0u8; 25], 6, &info, KEY),
        Err(WireError::Truncated { need: 26, got: 25 })
    );
    assert!(write_rx_stamp(&mut [0u8; 25], usize::MAX, &info, KEY).is_err());
}

#[test]
fn t2_in_request_mbz() {
    let probe = SenderPacket::probe(
        3,
        0xBEEF,
        Timestamp::new(10, 20),
        ErrorEstimate::from_bits(0x4001),
        MIN_PROBE_LEN,
        TAG,
    )
    .unwrap();
    let mut request = encode_sender(&probe);
    assert_eq!(request_rx_stamp(&request, KEY), Err(NoBlock::Absent));
    // What the reflector-ingress program does.
    request[REQUEST_RX_STAMP..REQUEST_RX_STAMP + 20].copy_from_slice(&ebpf_block(
        11,
        5,
        0,
        RxStamp::SOURCE_TC_NOW,
    ));
    // The request still decodes to the same probe (MBZ is ignored)...
    assert_eq!(SenderPacket::decode(&request).unwrap(), probe);
    // ...and T2 is there for the reflector.
    let t2 = request_rx_stamp(&request, KEY).unwrap();
    assert_eq!(t2.tai_ns, 11_000_000_005);
}

#[test]
fn t4_in_reply_padding() {
    let ee = ErrorEstimate::from_bits(0x4001);
    let probe =
        SenderPacket::probe(3, 0xBEEF, Timestamp::new(10, 20), ee, MIN_PROBE_LEN, TAG).unwrap();
    let params = ReflectParams {
        timestamp: Timestamp::new(12, 0),
        error_estimate: ee,
        receive_timestamp: Timestamp::new(11, 0),
        sender_ttl: 64,
    };
    let mut reply = encode_reflector(&reflect(&probe, &params));
    assert_eq!(reply.len(), MIN_PROBE_LEN);
    // The echoed tag and zero padding: no stamp.
    assert_eq!(reply[PROBE_TAG..PROBE_TAG_END], TAG.to_be_bytes());
    assert_eq!(reply_rx_stamp(&reply, KEY), Err(NoBlock::Absent));
    // What the sender-ingress program does.
    reply[REPLY_RX_STAMP..REPLY_RX_STAMP + 20].copy_from_slice(&ebpf_block(
        13,
        7,
        99,
        RxStamp::SOURCE_SKB_RX,
    ));
    let decoded = ReflectorPacket::decode(&reply).unwrap();
    assert_eq!(decoded.sender_seq, 3);
    assert_eq!(decoded.tlvs.len(), 1);
    let t4 = reply_rx_stamp(&reply, KEY).unwrap();
    assert_eq!((t4.tai_ns, t4.hw_ns, t4.source), (13_000_000_007, 99, 2));

    // Too short a padding value, or another TLV type first: not read (as in the program).
    let short = SenderPacket::probe(3, 1, Timestamp::ZERO, ee, MIN_PROBE_LEN - 1, TAG).unwrap();
    let mut reply = encode_reflector(&reflect(&short, &params));
    reply.extend_from_slice(&[0; 1]); // long enough to hold a block at 48, but value is 19
    reply[REPLY_RX_STAMP..REPLY_RX_STAMP + 20].copy_from_slice(&ebpf_block(
        13,
        7,
        99,
        RxStamp::SOURCE_SKB_RX,
    ));
    assert_eq!(reply_rx_stamp(&reply, KEY), Err(NoBlock::Absent));
    let mut other = encode_reflector(&reflect(&probe, &params));
    other[TLV_START + 1] = 0xF0;
    other[REPLY_RX_STAMP..REPLY_RX_STAMP + 20].copy_from_slice(&ebpf_block(
        13,
        7,
        99,
        RxStamp::SOURCE_SKB_RX,
    ));
    assert_eq!(reply_rx_stamp(&other, KEY), Err(NoBlock::Absent));
    assert_eq!(reply_rx_stamp(&other[..50], KEY), Err(NoBlock::Absent));
    assert_eq!(reply_rx_stamp(&[], KEY), Err(NoBlock::Absent));
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

fn arb_ts() -> impl Strategy<Value = Timestamp> {
    (any::<u32>(), any::<u32>()).prop_map(|(secs, frac)| Timestamp { secs, frac })
}

fn arb_ee() -> impl Strategy<Value = ErrorEstimate> {
    any::<u16>().prop_map(ErrorEstimate::from_bits)
}

fn arb_tlv() -> impl Strategy<Value = Tlv> {
    (
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(flags, kind, value)| Tlv { flags, kind, value })
}

fn arb_tlvs() -> impl Strategy<Value = Vec<Tlv>> {
    prop::collection::vec(arb_tlv(), 0..5)
}

fn arb_sender() -> impl Strategy<Value = SenderPacket> {
    (any::<u32>(), arb_ts(), arb_ee(), any::<u16>(), arb_tlvs()).prop_map(
        |(seq, timestamp, error_estimate, ssid, tlvs)| SenderPacket {
            seq,
            timestamp,
            error_estimate,
            ssid,
            tlvs,
        },
    )
}

fn arb_reflector() -> impl Strategy<Value = ReflectorPacket> {
    (
        (any::<u32>(), arb_ts(), arb_ee(), any::<u16>(), arb_ts()),
        (any::<u32>(), arb_ts(), arb_ee(), any::<u8>(), arb_tlvs()),
    )
        .prop_map(
            |(
                (seq, timestamp, error_estimate, ssid, receive_timestamp),
                (sender_seq, sender_timestamp, sender_error_estimate, sender_ttl, tlvs),
            )| ReflectorPacket {
                seq,
                timestamp,
                error_estimate,
                ssid,
                receive_timestamp,
                sender_seq,
                sender_timestamp,
                sender_error_estimate,
                sender_ttl,
                tlvs,
            },
        )
}

/// Exercises every decoder on `buf`; none may panic.
fn decode_everything(buf: &[u8]) {
    let _ = SenderPacket::decode(buf);
    let _ = ReflectorPacket::decode(buf);
    if let Ok(l) = SenderPacket::decode_lenient(buf) {
        let mut out = Vec::new();
        l.encode(&mut out);
        reflect_lenient(&l, &ReflectParams::default()).encode(&mut out);
    }
    if let Ok(l) = ReflectorPacket::decode_lenient(buf) {
        l.encode(&mut Vec::new());
    }
    let _ = request_rx_stamp(buf, KEY);
    let _ = reply_rx_stamp(buf, KEY);
    for off in [0, 1, 16, 48, buf.len(), usize::MAX] {
        let _ = read_rx_stamp(buf, off, KEY);
    }
}

/// Offsets at which TLVs start in an encoding of `tlvs` after the base packet, plus the end.
fn tlv_boundaries(tlvs: &[Tlv]) -> Vec<usize> {
    let mut at = BASE_LEN;
    let mut v = vec![at];
    for t in tlvs {
        at += t.encoded_len();
        v.push(at);
    }
    v
}

proptest! {
    #[test]
    fn sender_round_trip(p in arb_sender()) {
        let buf = encode_sender(&p);
        prop_assert_eq!(buf.len(), p.encoded_len());
        prop_assert_eq!(&buf[16..44], &[0u8; 28][..]);
        prop_assert_eq!(SenderPacket::decode(&buf), Ok(p.clone()));
        let lenient = SenderPacket::decode_lenient(&buf).unwrap();
        prop_assert!(lenient.is_well_formed());
        prop_assert_eq!(lenient.packet, p.clone());
        let mut checked = Vec::new();
        prop_assert_eq!(p.try_encode(&mut checked), Ok(()));
        prop_assert_eq!(checked, buf);
    }

    #[test]
    fn reflector_round_trip(p in arb_reflector()) {
        let buf = encode_reflector(&p);
        prop_assert_eq!(buf.len(), p.encoded_len());
        prop_assert_eq!(&buf[38..40], &[0u8; 2][..]);
        prop_assert_eq!(&buf[41..44], &[0u8; 3][..]);
        prop_assert_eq!(ReflectorPacket::decode(&buf), Ok(p.clone()));
        prop_assert_eq!(ReflectorPacket::decode_lenient(&buf).unwrap().into_strict(), Ok(p));
    }

    #[test]
    fn every_short_prefix_is_truncated(s in arb_sender(), r in arb_reflector()) {
        let sb = encode_sender(&s);
        let rb = encode_reflector(&r);
        for len in 0..BASE_LEN {
            let want = WireError::Truncated { need: BASE_LEN, got: len };
            prop_assert_eq!(SenderPacket::decode(&sb[..len]).err(), Some(want.clone()));
            prop_assert_eq!(SenderPacket::decode_lenient(&sb[..len]).err(), Some(want.clone()));
            prop_assert_eq!(ReflectorPacket::decode(&rb[..len]).err(), Some(want.clone()));
            prop_assert_eq!(ReflectorPacket::decode_lenient(&rb[..len]).err(), Some(want));
        }
    }

    #[test]
    fn prefixes_cutting_a_tlv_are_rejected(s in arb_sender()) {
        let buf = encode_sender(&s);
        let bounds = tlv_boundaries(&s.tlvs);
        for len in BASE_LEN..buf.len() {
            let got = SenderPacket::decode(&buf[..len]);
            match bounds.iter().position(|&b| b == len) {
                Some(n) => prop_assert_eq!(got.map(|p| p.tlvs), Ok(s.tlvs[..n].to_vec())),
                None => {
                    let rejected = matches!(
                        got,
                        Err(WireError::TlvOverrun { .. } | WireError::TlvHeaderTruncated { .. })
                    );
                    prop_assert!(rejected, "prefix of {} octets: {:?}", len, got);
                }
            }
            // The lenient decoder always keeps the base packet and the whole TLVs before the cut.
            let lenient = SenderPacket::decode_lenient(&buf[..len]).unwrap();
            prop_assert_eq!(lenient.packet.seq, s.seq);
            prop_assert_eq!(lenient.encoded_len(), len);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&buf);
    }

    #[test]
    fn arbitrary_tails_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..256),
        base in prop::collection::vec(any::<u8>(), BASE_LEN..=BASE_LEN),
    ) {
        let mut buf = base;
        buf.extend_from_slice(&tail);
        decode_everything(&buf);
    }

    #[test]
    fn lenient_answers_any_packet_with_same_length(
        buf in prop::collection::vec(any::<u8>(), BASE_LEN..300),
    ) {
        let req = SenderPacket::decode_lenient(&buf).unwrap();
        // Re-encodes to the input, MBZ zeroed.
        let mut again = Vec::new();
        req.encode(&mut again);
        prop_assert_eq!(again.len(), buf.len());
        prop_assert_eq!(&again[..16], &buf[..16]);
        prop_assert_eq!(&again[16..44], &[0u8; 28][..]);
        prop_assert_eq!(&again[44..], &buf[44..]);
        // Strict and lenient agree.
        match &req.malformed {
            None => prop_assert_eq!(SenderPacket::decode(&buf), Ok(req.packet.clone())),
            Some(m) => prop_assert_eq!(SenderPacket::decode(&buf), Err(m.error())),
        }
        // The reply has the request's length, and the malformed TLV (if any) has M set.
        let reply = reflect_lenient(&req, &ReflectParams::default());
        let mut out = Vec::new();
        reply.encode(&mut out);
        prop_assert_eq!(out.len(), buf.len());
        if let Some(m) = &req.malformed {
            prop_assert_eq!(out[m.offset] & TLV_FLAG_M, TLV_FLAG_M);
            prop_assert_eq!(&out[m.offset + 1..], &buf[m.offset + 1..]);
        }
        // Reflected well-formed TLVs: Extra Padding flags 0, others U only; values unchanged.
        for (q, r) in req.packet.tlvs.iter().zip(&reply.packet.tlvs) {
            prop_assert_eq!(&q.value, &r.value);
            prop_assert_eq!(q.kind, r.kind);
            prop_assert_eq!(r.flags, if q.kind == TLV_EXTRA_PADDING { 0 } else { TLV_FLAG_U });
        }
    }

    #[test]
    fn reflect_preserves_length(s in arb_sender(), ttl in any::<u8>(), t in arb_ts()) {
        let params = ReflectParams {
            timestamp: t,
            error_estimate: ErrorEstimate::default(),
            receive_timestamp: t,
            sender_ttl: ttl,
        };
        let r = reflect(&s, &params);
        prop_assert_eq!(encode_reflector(&r).len(), encode_sender(&s).len());
        prop_assert_eq!((r.seq, r.sender_seq, r.ssid), (s.seq, s.seq, s.ssid));
        prop_assert_eq!(r.sender_timestamp, s.timestamp);
        prop_assert_eq!(r.sender_error_estimate, s.error_estimate);
        prop_assert_eq!(r.sender_ttl, ttl);
    }

    #[test]
    fn oversize_is_rejected(extra in 1usize..64, fill in any::<u8>()) {
        let buf = vec![fill; MAX_PACKET_LEN + extra];
        let want = WireError::Oversize { max: MAX_PACKET_LEN, got: buf.len() };
        prop_assert_eq!(SenderPacket::decode(&buf), Err(want.clone()));
        prop_assert_eq!(SenderPacket::decode_lenient(&buf), Err(want.clone()));
        prop_assert_eq!(ReflectorPacket::decode(&buf), Err(want.clone()));
        prop_assert_eq!(ReflectorPacket::decode_lenient(&buf).err(), Some(want));
    }

    #[test]
    fn tlv_length_overrun_is_rejected(
        s in arb_sender(),
        flags in any::<u8>(),
        kind in any::<u8>(),
        present in prop::collection::vec(any::<u8>(), 0..16),
        excess in 1usize..1000,
    ) {
        let mut buf = encode_sender(&s);
        let offset = buf.len();
        let declared = present.len() + excess;
        prop_assume!(declared <= usize::from(u16::MAX));
        buf.push(flags);
        buf.push(kind);
        buf.extend_from_slice(&(declared as u16).to_be_bytes());
        buf.extend_from_slice(&present);

        prop_assert_eq!(SenderPacket::decode(&buf), Err(WireError::TlvOverrun { offset }));
        prop_assert_eq!(ReflectorPacket::decode(&buf).err(), Some(WireError::TlvOverrun { offset }));
        let lenient = SenderPacket::decode_lenient(&buf).unwrap();
        prop_assert_eq!(&lenient.packet, &s);
        let m = lenient.malformed.clone().unwrap();
        prop_assert_eq!(m.offset, offset);
        prop_assert_eq!(m.declared_len(), Some(declared as u16));
        let mut out = Vec::new();
        reflect_lenient(&lenient, &ReflectParams::default()).encode(&mut out);
        prop_assert_eq!(out.len(), buf.len());
        prop_assert_eq!(out[offset], flags | TLV_FLAG_M);
    }

    #[test]
    fn probe_has_exact_length(len in 48usize..=MAX_PACKET_LEN, seq in any::<u32>(), ssid in any::<u16>(), tag in any::<u32>()) {
        let p = SenderPacket::probe(seq, ssid, Timestamp::ZERO, ErrorEstimate::default(), len, tag).unwrap();
        let buf = encode_sender(&p);
        prop_assert_eq!(buf.len(), len);
        prop_assert_eq!(SenderPacket::decode(&buf), Ok(p));
    }

    #[test]
    fn ptp_ns_round_trip(ns in 0u64..(1u64 << 32) * 1_000_000_000) {
        let t = Timestamp::from_ptp_ns(ns);
        prop_assert!(t.frac < 1_000_000_000);
        prop_assert_eq!(t.to_ns(TimestampFormat::Ptp), ns);
        prop_assert_eq!(Timestamp::from_ns(ns, TimestampFormat::Ptp), t);
    }

    #[test]
    fn ntp_ns_round_trip(ns in 0u64..4_233_462_144u64 * 1_000_000_000) {
        // Unix 0 up to the end of NTP era 1's representable range under RFC 4330's rule (2104).
        let t = Timestamp::from_ntp_unix_ns(ns);
        prop_assert_eq!(t.to_ns(TimestampFormat::Ntp), ns);
        prop_assert_eq!(Timestamp::from_ns(ns, TimestampFormat::Ntp), t);
    }

    #[test]
    fn error_estimate_bits_round_trip(bits in any::<u16>()) {
        prop_assert_eq!(ErrorEstimate::from_bits(bits).to_bits(), bits);
    }

    #[test]
    fn error_estimate_covers_and_is_tight(ns in 1e-3f64..1e18, sync in any::<bool>(), ptp in any::<bool>()) {
        let ee = ErrorEstimate::for_error_ns(ns, sync, ptp);
        prop_assert!(ee.is_valid());
        prop_assert_eq!((ee.synchronized, ee.ptp), (sync, ptp));
        prop_assert!(ee.scale <= 63);
        // Never below the requested error...
        prop_assert!(ee.error_ns() >= ns * (1.0 - 1e-12), "{:?} {} < {}", ee, ee.error_ns(), ns);
        // ...and the smallest scale that can express it: one scale lower would need a
        // multiplier over 255.
        if ee.scale > 0 {
            let lower_unit_ns = 2f64.powi(i32::from(ee.scale) - 1 - 32) * 1e9;
            prop_assert!(ns > 255.0 * lower_unit_ns * (1.0 - 1e-12));
        }
        // Within one unit of the request.
        let unit_ns = 2f64.powi(i32::from(ee.scale) - 32) * 1e9;
        prop_assert!(ee.error_ns() < ns + unit_ns * (1.0 + 1e-9));
    }

    #[test]
    fn rx_stamp_matches_ebpf_block(
        secs in any::<u32>(),
        nsecs in 0u32..1_000_000_000,
        hw in any::<u64>(),
        source in 0u8..4,
        before in prop::collection::vec(any::<u8>(), 0..64),
        after in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut payload = before.clone();
        payload.extend_from_slice(&ebpf_block(secs, nsecs, hw, source));
        payload.extend_from_slice(&after);
        let info = read_rx_stamp(&payload, before.len(), KEY).unwrap();
        prop_assert_eq!(info.tai_ns, u64::from(secs) * 1_000_000_000 + u64::from(nsecs));
        prop_assert_eq!(info.hw_ns, hw);
        prop_assert_eq!(info.source, source);

        let mut mine = payload.clone();
        mine[before.len()..before.len() + RxStamp::LEN].fill(0);
        write_rx_stamp(&mut mine, before.len(), &info, KEY).unwrap();
        prop_assert_eq!(mine, payload);
    }

    #[test]
    fn read_rx_stamp_never_panics(buf in prop::collection::vec(any::<u8>(), 0..64), off in any::<usize>()) {
        let _ = read_rx_stamp(&buf, off, KEY);
        let _ = read_rx_stamp(&buf, off % 80, KEY);
        let mut b = buf.clone();
        let _ = write_rx_stamp(&mut b, off, &RxStampInfo { tai_ns: 1, hw_ns: 2, source: 3 }, KEY);
        let _ = write_rx_stamp(&mut b, off % 80, &RxStampInfo { tai_ns: 1, hw_ns: 2, source: 3 }, KEY);
    }
}

// ---------------------------------------------------------------------------------------------
// Authenticated mode (RFC 8762 §4.2.2 / §4.3.2 / §4.4, RFC 8972 §3 / §4.8)
// ---------------------------------------------------------------------------------------------

mod authenticated {
    use probe_common::auth_wire as aw;

    use super::*;
    use crate::wire::auth::{base_hmac_ok, hmac_128, hmac_128_ok, hmac_tlv_ok, reflect_auth_tlvs};

    /// Key 0x10..0x2f (32 octets).
    fn key() -> Vec<u8> {
        (0x10..0x30).collect()
    }

    /// The HMAC of `sender_auth_bytes()[..96]` under `key()`, computed independently with
    /// Python's stdlib: `hmac.new(key, pkt[:96], hashlib.sha256).hexdigest()[:32]`.
    const SENDER_HMAC: &str = "688c8e5c21fd81b1ad89c6e5ac0431c3";
    /// HMAC TLV value over Sequence Number 0x01020304 and the TLV 80 F0 00 02 AB CD, same key
    /// and tool.
    const TLV_HMAC: &str = "be6bbcf51bdb84d01fae7de792374cfe";

    /// The authenticated Session-Sender packet laid out by hand from RFC 8762 Figure 4 (SSID
    /// per RFC 8972 §3), without its HMAC.
    fn sender_auth_bytes() -> Vec<u8> {
        let mut p = vec![0u8; 112];
        p[0..4].copy_from_slice(&[0x01, 0x02, 0x03, 0x04]); // Sequence Number
        // 4..16 MBZ (12 octets)
        p[16..20].copy_from_slice(&1_700_000_000u32.to_be_bytes()); // Timestamp seconds
        p[20..24].copy_from_slice(&123_456_789u32.to_be_bytes()); // Timestamp fraction (ns)
        p[24..26].copy_from_slice(&[0x43, 0x2A]); // Error Estimate
        p[26..28].copy_from_slice(&[0xBE, 0xEF]); // SSID (first 2 of the 70 MBZ octets)
        // 28..96 MBZ, 96..112 HMAC
        p
    }

    #[test]
    fn hmac_primitive_matches_rfc_4231() {
        // RFC 4231 test case 2 (HMAC-SHA-256), first 128 bits.
        let t = hmac_128(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex::encode(t), "5bdcc146bf60754e6a042426089575c7");
        // RFC 4231 test case 5: truncation to 128 bits.
        let t = hmac_128(&[0x0c; 20], &[b"Test With Truncation"]);
        assert_eq!(hex::encode(t), "a3b6167473100ee06e0c796c2955552b");
        assert!(hmac_128_ok(&[0x0c; 20], &[b"Test With Truncation"], &t));
        assert!(!hmac_128_ok(
            &[0x0c; 20],
            &[b"Test With Truncation"],
            &t[..15]
        ));
    }

    #[test]
    fn offsets_follow_the_rfc_figures() {
        assert_eq!(aw::BASE_LEN, 112);
        assert_eq!(
            (aw::SEQ, aw::TIMESTAMP, aw::ERROR_ESTIMATE, aw::SSID),
            (0, 16, 24, 26)
        );
        assert_eq!((aw::RECEIVE_TIMESTAMP, aw::SENDER_SEQ), (32, 48));
        assert_eq!((aw::SENDER_TIMESTAMP, aw::SENDER_ERROR_ESTIMATE), (64, 72));
        assert_eq!((aw::SENDER_TTL, aw::HMAC), (80, 96));
    }

    #[test]
    fn sender_encodes_to_the_hand_made_layout_and_the_independent_hmac() {
        let p = sender_ptp();
        let mut out = Vec::new();
        p.encode_auth(&key(), &mut out);
        let mut want = sender_auth_bytes();
        want[96..112].copy_from_slice(&hex::decode(SENDER_HMAC).unwrap());
        assert_eq!(out, want);
        assert!(base_hmac_ok(&out, &key()));
        let back = SenderPacket::decode_auth(&out)
            .unwrap()
            .into_strict()
            .unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn tampering_any_covered_octet_fails_verification() {
        let mut out = Vec::new();
        sender_ptp().encode_auth(&key(), &mut out);
        for i in 0..out.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = out.clone();
                t[i] ^= bit;
                assert!(!base_hmac_ok(&t, &key()), "octet {i} bit {bit:#x}");
            }
        }
        // Another key, or a truncated packet.
        assert!(!base_hmac_ok(&out, &[0x11; 32]));
        assert!(!base_hmac_ok(&out[..111], &key()));
    }

    #[test]
    fn reflector_round_trips_and_lays_out_fields_per_figure_6() {
        let r = ReflectorPacket {
            tlvs: vec![],
            ..reflector()
        };
        let mut out = Vec::new();
        r.encode_auth(&key(), &mut out);
        assert_eq!(out.len(), 112);
        assert_eq!(&out[0..4], &[0x11, 0x12, 0x13, 0x14]);
        assert!(out[4..16].iter().all(|&b| b == 0));
        assert_eq!(
            &out[16..24],
            &[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
        );
        assert_eq!(&out[24..28], &[0xC1, 0x33, 0x41, 0x42]);
        assert!(out[28..32].iter().all(|&b| b == 0));
        assert_eq!(
            &out[32..40],
            &[0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58]
        );
        assert!(out[40..48].iter().all(|&b| b == 0));
        assert_eq!(&out[48..52], &[0x61, 0x62, 0x63, 0x64]);
        assert!(out[52..64].iter().all(|&b| b == 0));
        assert_eq!(
            &out[64..72],
            &[0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78]
        );
        assert_eq!(&out[72..74], &[0xBF, 0xFF]);
        assert!(out[74..80].iter().all(|&b| b == 0));
        assert_eq!(out[80], 0x3E);
        assert!(out[81..96].iter().all(|&b| b == 0));
        assert!(base_hmac_ok(&out, &key()));
        assert_eq!(ReflectorPacket::decode_auth(&out).unwrap(), r);
    }

    #[test]
    fn hmac_tlv_covers_the_sequence_number_and_the_tlvs_before_it() {
        let mut p = sender_ptp();
        p.tlvs = vec![
            Tlv {
                flags: 0x80,
                kind: 0xF0,
                value: vec![0xAB, 0xCD],
            },
            Tlv::new(aw::TLV_TYPE_HMAC, vec![0; 16]),
        ];
        let mut out = Vec::new();
        p.encode_auth(&key(), &mut out);
        assert_eq!(out.len(), 112 + 6 + 20);
        assert_eq!(hex::encode(&out[112 + 6 + 4..]), TLV_HMAC);
        assert_eq!(hmac_tlv_ok(&out, &key()), Some(true));
        assert!(base_hmac_ok(&out, &key()));
        // A TLV octet is not covered by the base HMAC, but is by the HMAC TLV.
        let mut t = out.clone();
        t[112 + 4] ^= 1;
        assert!(base_hmac_ok(&t, &key()));
        assert_eq!(hmac_tlv_ok(&t, &key()), Some(false));
        // No HMAC TLV: nothing to say.
        let mut plain = Vec::new();
        sender_ptp().encode_auth(&key(), &mut plain);
        assert_eq!(hmac_tlv_ok(&plain, &key()), None);
    }

    #[test]
    fn a_reflected_hmac_tlv_is_understood_and_i_flags_follow_a_failure() {
        let req = SenderPacket {
            tlvs: vec![
                Tlv::new(0xF0, vec![1]),
                Tlv::new(aw::TLV_TYPE_HMAC, vec![0; 16]),
            ],
            ..sender_ptp()
        };
        let mut r = reflect(&req, &ReflectParams::default());
        reflect_auth_tlvs(&mut r, Some(true));
        assert_eq!(r.tlvs[0].flags, TLV_FLAG_U);
        assert_eq!(r.tlvs[1].flags, 0);
        let mut out = Vec::new();
        r.encode_auth(&key(), &mut out);
        assert_eq!(hmac_tlv_ok(&out, &key()), Some(true));
        let mut bad = reflect(&req, &ReflectParams::default());
        reflect_auth_tlvs(&mut bad, Some(false));
        assert!(bad.tlvs.iter().all(|t| t.flags & TLV_FLAG_I != 0));
    }

    #[test]
    fn probe_auth_sizes() {
        let ee = ErrorEstimate::default();
        let t = Timestamp::default();
        let p = SenderPacket::probe_auth(1, 2, t, ee, 68, 7).unwrap();
        assert_eq!(p.encoded_len_auth(), 112);
        let p = SenderPacket::probe_auth(1, 2, t, ee, 140, 0xA1B2_C3D4).unwrap();
        assert_eq!(p.encoded_len_auth(), 140);
        let mut out = Vec::new();
        p.encode_auth(&key(), &mut out);
        assert_eq!(
            &out[aw::PROBE_TAG..aw::PROBE_TAG_END],
            &[0xA1, 0xB2, 0xC3, 0xD4]
        );
        assert!(matches!(
            SenderPacket::probe_auth(1, 2, t, ee, 114, 7),
            Err(WireError::BadLength { .. })
        ));
    }

    proptest! {
        #[test]
        fn auth_round_trip(seq: u32, ssid: u16, secs: u32, frac: u32, ttl: u8, pad in 0usize..64) {
            let req = SenderPacket {
                seq,
                ssid,
                timestamp: Timestamp::new(secs, frac),
                error_estimate: ErrorEstimate::for_error_ns(1000.0, false, true),
                tlvs: if pad == 0 { vec![] } else { vec![Tlv::extra_padding(pad)] },
            };
            let mut out = Vec::new();
            req.encode_auth(&key(), &mut out);
            prop_assert!(base_hmac_ok(&out, &key()));
            let back = SenderPacket::decode_auth(&out).unwrap().into_strict().unwrap();
            prop_assert_eq!(&back, &req);
            let rep = reflect(&back, &ReflectParams { sender_ttl: ttl, ..Default::default() });
            let mut r = Vec::new();
            rep.encode_auth(&key(), &mut r);
            prop_assert_eq!(r.len(), out.len());
            prop_assert!(base_hmac_ok(&r, &key()));
            prop_assert_eq!(ReflectorPacket::decode_auth(&r).unwrap(), rep);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Follow-up TLV (two-step T3)
// ---------------------------------------------------------------------------------------------

mod follow_up_tlv {
    use super::*;
    use crate::wire::follow_up::{FollowUpError, t2_source, t3_source};

    fn ts() -> (Timestamp, ErrorEstimate) {
        (Timestamp::new(10, 20), ErrorEstimate::default())
    }

    #[test]
    fn the_type_is_private_use_and_the_value_matches_a_hand_vector() {
        // RFC 8972 §5.1: 252..=254 Private Use.
        assert!((252..=254).contains(&TLV_FOLLOW_UP));
        let v = FollowUpValue {
            prev_sender_seq: 0x0102_0304,
            correction_ns: 700,
            prev_t3_source: t3_source::HANDOFF,
            t2_source: t2_source::SKB_RX,
        };
        #[rustfmt::skip]
        let hand = [
            0x01, 0x02, 0x03, 0x04, // previous reply's Session-Sender seq
            0x00, 0x00, 0x02, 0xBC, // correction 700 ns
            0x01,                   // its T3: hand-off
            0x02,                   // this T2: skb RX stamp
            0x00, 0x00,             // MBZ
        ];
        assert_eq!(v.to_bytes(), hand);
        assert_eq!(FollowUpValue::decode(&hand), Ok(v));
    }

    #[test]
    fn malformed_values_are_errors() {
        let ok = FollowUpValue::default().to_bytes();
        for len in [0, 11, 13, 16] {
            let v = vec![0; len];
            assert_eq!(
                FollowUpValue::decode(&v),
                Err(FollowUpError::Length { got: len })
            );
        }
        let mut mbz = ok;
        mbz[11] = 1;
        assert_eq!(FollowUpValue::decode(&mbz), Err(FollowUpError::Mbz));
        let mut t3 = ok;
        t3[8] = t3_source::MAX + 1;
        assert!(matches!(
            FollowUpValue::decode(&t3),
            Err(FollowUpError::Source { .. })
        ));
        let mut t2 = ok;
        t2[9] = t2_source::MAX + 1;
        assert!(matches!(
            FollowUpValue::decode(&t2),
            Err(FollowUpError::Source { .. })
        ));
    }

    #[test]
    fn probes_carry_it_after_the_padding_when_the_t4_block_still_fits() {
        let (t, ee) = ts();
        // Too small: the padding alone (68 keeps room for the T4 block and nothing more).
        for len in [MIN_PROBE_LEN, MIN_FOLLOW_UP_PROBE_LEN - 1] {
            let p = SenderPacket::probe(1, 2, t, ee, len, 9).unwrap();
            assert_eq!(p.tlvs.len(), 1, "{len}");
            assert_eq!(encode_sender(&p).len(), len);
        }
        for len in [MIN_FOLLOW_UP_PROBE_LEN, 128, MAX_PACKET_LEN] {
            let p = SenderPacket::probe(1, 2, t, ee, len, 9).unwrap();
            let buf = encode_sender(&p);
            assert_eq!(buf.len(), len);
            // The padding's value start (tag, then the T4 block) does not move.
            assert_eq!(buf[TLV_START + 1], TLV_EXTRA_PADDING);
            assert_eq!(buf[PROBE_TAG..PROBE_TAG_END], 9u32.to_be_bytes());
            let pad_len = usize::from(u16::from_be_bytes([buf[TLV_START + 2], buf[TLV_START + 3]]));
            assert!(pad_len >= RxStamp::LEN, "{len}");
            assert!(REPLY_RX_STAMP + RxStamp::LEN <= TLV_START + 4 + pad_len);
            // Then ours: U set, the rest zero.
            let f = len - FOLLOW_UP_TLV_LEN;
            #[rustfmt::skip]
            let want = [
                0x80, TLV_FOLLOW_UP, 0, 12,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            assert_eq!(buf[f..], want, "{len}");
            assert_eq!(SenderPacket::decode(&buf).unwrap(), p);
        }
    }

    #[test]
    fn our_reflector_understands_it_and_never_echoes_its_contents() {
        let (t, ee) = ts();
        let mut req = SenderPacket::probe(1, 2, t, ee, 128, 9).unwrap();
        // A sender that put something there: not echoed.
        req.tlvs[1].value = vec![0xFF; 12];
        let mut rep = reflect(&req, &ReflectParams::default());
        let f = &rep.tlvs[1];
        assert_eq!(
            (f.flags, f.kind, &f.value[..]),
            (0, TLV_FOLLOW_UP, &[0u8; 12][..])
        );
        assert!(rep.wants_follow_up());
        let v = FollowUpValue {
            prev_sender_seq: 0,
            correction_ns: 5,
            prev_t3_source: t3_source::HANDOFF,
            t2_source: t2_source::TC,
        };
        assert!(rep.set_follow_up(&v));
        let buf = encode_reflector(&rep);
        assert_eq!(buf.len(), 128, "the reply is as long as the request");
        let back = ReflectorPacket::decode(&buf).unwrap();
        assert_eq!(FollowUpSeen::of(&back.tlvs), FollowUpSeen::Ours(v));
    }

    #[test]
    fn a_wrong_length_is_malformed_and_echoed() {
        let (t, ee) = ts();
        let mut req = SenderPacket::probe(1, 2, t, ee, 128, 9).unwrap();
        req.tlvs[1].value = vec![7; 8];
        let mut rep = reflect(&req, &ReflectParams::default());
        let f = &rep.tlvs[1];
        assert_eq!((f.flags, &f.value[..]), (Tlv::M, &[7u8; 8][..]));
        assert!(!rep.wants_follow_up());
        assert!(!rep.set_follow_up(&FollowUpValue::default()));
        assert_eq!(FollowUpSeen::of(&rep.tlvs), FollowUpSeen::Malformed);
    }

    #[test]
    fn what_the_sender_reads_in_a_reply() {
        let value = FollowUpValue::default().to_bytes().to_vec();
        let tlv = |flags, value: Vec<u8>| Tlv {
            flags,
            kind: TLV_FOLLOW_UP,
            value,
        };
        let pad = Tlv::extra_padding(20);
        assert_eq!(
            FollowUpSeen::of(std::slice::from_ref(&pad)),
            FollowUpSeen::Absent
        );
        assert_eq!(FollowUpSeen::of(&[]), FollowUpSeen::Absent);
        // A third-party reflector echoes it with U set (RFC 8972 §4), whatever the value.
        assert_eq!(
            FollowUpSeen::of(&[pad.clone(), tlv(Tlv::U, value.clone())]),
            FollowUpSeen::Unrecognized
        );
        assert_eq!(
            FollowUpSeen::of(&[tlv(Tlv::U | Tlv::M, vec![1; 3])]),
            FollowUpSeen::Unrecognized
        );
        // Understood but flagged, or a value ours never writes: malformed.
        for bad in [
            tlv(Tlv::M, value.clone()),
            tlv(Tlv::I, value.clone()),
            tlv(0, vec![0; 11]),
            tlv(0, vec![0xFF; 12]),
        ] {
            assert_eq!(
                FollowUpSeen::of(std::slice::from_ref(&bad)),
                FollowUpSeen::Malformed,
                "{bad:?}"
            );
        }
        assert_eq!(
            FollowUpSeen::of(&[pad, tlv(0, value)]),
            FollowUpSeen::Ours(FollowUpValue::default())
        );
    }

    #[test]
    fn a_third_party_echo_round_trips() {
        // What an RFC 8972 reflector that does not know type 252 sends back: our zeroed TLV
        // with U still set (it copies it), the padding with U clear.
        let (t, ee) = ts();
        let req = SenderPacket::probe(1, 2, t, ee, 100, 9).unwrap();
        let mut buf = encode_sender(&req);
        let reply_base = ReflectorPacket {
            sender_seq: 1,
            ssid: 2,
            ..Default::default()
        };
        let mut reply = encode_reflector(&reply_base);
        reply.extend_from_slice(&buf.split_off(TLV_START));
        reply[TLV_START] = 0; // padding understood
        let back = ReflectorPacket::decode(&reply).unwrap();
        assert_eq!(FollowUpSeen::of(&back.tlvs), FollowUpSeen::Unrecognized);
    }
}
