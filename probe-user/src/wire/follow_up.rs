//! meshprobe's follow-up TLV: the two-step T3 (as PTP's Follow_Up message). The hand-off stamp
//! of a reply is taken by a tracing program after the reply was written, so it cannot be in
//! that reply; the reflector carries the correction of reply N in reply N+1.
//!
//! Type [`TLV_FOLLOW_UP`] = 252, from the Private Use range (252–254) of the IANA "STAMP TLV
//! Types" registry (RFC 8972 §5.1: 1–175 IETF Review, 176–239 First Come First Served,
//! 240–251 Experimental Use, 252–254 Private Use). Private Use (RFC 8126 §4.1) is for use
//! among cooperating hosts with no claim to interoperability: our senders and our reflectors.
//! A third-party reflector echoes it with U set (RFC 8972 §4); one that gave 252 another
//! meaning is caught by the strict value check and the sequence match.
//!
//! Value, 12 octets, big-endian:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Session-Sender Sequence Number of the previous reply      |  0
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Correction (ns): its T3 at hand-off − its T3 at TC     |  4
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | prev T3 source| this T2 source|              MBZ              |  8
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A Session-Sender sends it zeroed with U = 1; our reflector fills it and clears U. Open mode
//! only: in authenticated mode T3 is the userspace clock read before signing, and nothing
//! corrects it.

use super::Tlv;

/// Our follow-up TLV type (Private Use, see the module documentation).
pub const TLV_FOLLOW_UP: u8 = 252;

/// Octets of the TLV on the wire: header + value.
pub const FOLLOW_UP_TLV_LEN: usize = probe_common::wire::TLV_HEADER_LEN + FollowUpValue::LEN;

/// Where the previous reply's T3 came from (value octet 8).
pub mod t3_source {
    /// No correction: `correction_ns` is meaningless.
    pub const NONE: u8 = 0;
    /// Driver hand-off (`net_dev_start_xmit`).
    pub const HANDOFF: u8 = 1;
    /// The NIC's hardware TX stamp.
    pub const HW_TX: u8 = 2;
    pub const MAX: u8 = HW_TX;
}

/// Where this reply's T2 came from (value octet 9).
pub mod t2_source {
    pub const UNKNOWN: u8 = 0;
    /// The TC program's clock read.
    pub const TC: u8 = 1;
    /// The kernel's software RX stamp (`skb->tstamp`).
    pub const SKB_RX: u8 = 2;
    /// The NIC's hardware RX stamp.
    pub const HW: u8 = 3;
    /// The socket's SO_TIMESTAMPING software RX stamp.
    pub const SOCKET: u8 = 4;
    pub const MAX: u8 = SOCKET;
}

/// Why a follow-up value is not one our reflector writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FollowUpError {
    #[error("follow-up TLV value of {got} octets, expected {}", FollowUpValue::LEN)]
    Length { got: usize },
    #[error("follow-up TLV MBZ octets not zero")]
    Mbz,
    #[error("follow-up TLV source out of range (T3 {t3}, T2 {t2})")]
    Source { t3: u8, t2: u8 },
}

/// The follow-up TLV's value (one layout definition: these offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FollowUpValue {
    /// Session-Sender Sequence Number the previous reply of the session answered.
    pub prev_sender_seq: u32,
    /// That reply's T3 at hand-off (or NIC) − its T3 at TC, ns.
    pub correction_ns: u32,
    /// One of [`t3_source`].
    pub prev_t3_source: u8,
    /// One of [`t2_source`]: this reply's T2.
    pub t2_source: u8,
}

impl FollowUpValue {
    pub const LEN: usize = 12;
    const SEQ: usize = 0;
    const CORRECTION: usize = 4;
    const T3_SOURCE: usize = 8;
    const T2_SOURCE: usize = 9;
    const MBZ: usize = 10;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[Self::SEQ..Self::CORRECTION].copy_from_slice(&self.prev_sender_seq.to_be_bytes());
        b[Self::CORRECTION..Self::T3_SOURCE].copy_from_slice(&self.correction_ns.to_be_bytes());
        b[Self::T3_SOURCE] = self.prev_t3_source;
        b[Self::T2_SOURCE] = self.t2_source;
        b
    }

    /// Strict: exactly [`Self::LEN`] octets, MBZ zero, known sources.
    pub fn decode(value: &[u8]) -> Result<Self, FollowUpError> {
        let b: &[u8; Self::LEN] = value
            .try_into()
            .map_err(|_| FollowUpError::Length { got: value.len() })?;
        if b[Self::MBZ..] != [0, 0] {
            return Err(FollowUpError::Mbz);
        }
        let (t3, t2) = (b[Self::T3_SOURCE], b[Self::T2_SOURCE]);
        if t3 > t3_source::MAX || t2 > t2_source::MAX {
            return Err(FollowUpError::Source { t3, t2 });
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Self {
            prev_sender_seq: u32_at(Self::SEQ),
            correction_ns: u32_at(Self::CORRECTION),
            prev_t3_source: t3,
            t2_source: t2,
        })
    }
}

impl Tlv {
    /// A Session-Sender's follow-up TLV: zeroed, U = 1.
    pub fn follow_up_request() -> Self {
        Self::new(TLV_FOLLOW_UP, vec![0; FollowUpValue::LEN])
    }

    pub fn is_follow_up(&self) -> bool {
        self.kind == TLV_FOLLOW_UP
    }
}

/// What a reply says in its follow-up TLV (the first of that type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUpSeen {
    /// No follow-up TLV: our request had none (no room, authenticated mode), or the reflector
    /// dropped it.
    Absent,
    /// Echoed with U set: a reflector that does not know it (third party, RFC 8972 §4).
    Unrecognized,
    /// M set, or a value our reflector does not write: ignored.
    Malformed,
    /// Our reflector's, understood and filled.
    Ours(FollowUpValue),
}

impl FollowUpSeen {
    pub fn of(tlvs: &[Tlv]) -> Self {
        let Some(t) = tlvs.iter().find(|t| t.is_follow_up()) else {
            return Self::Absent;
        };
        if t.is_unrecognized() {
            return Self::Unrecognized;
        }
        if t.is_malformed() || t.integrity_failed() {
            return Self::Malformed;
        }
        FollowUpValue::decode(&t.value).map_or(Self::Malformed, Self::Ours)
    }
}
