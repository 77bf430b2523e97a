//! STAMP wire codec: RFC 8762 test packets (unauthenticated mode; authenticated mode in
//! [`auth`]) with the RFC 8972 extensions
//! meshprobe uses (SSID, TLVs, Extra Padding), plus the in-band receive-stamp block that the
//! eBPF ingress programs write into packets (`probe_common::RxStamp`).
//!
//! Everything here is pure: no sockets, no clocks, no global state. Decoders never panic on any
//! input; they return a [`WireError`] instead.
//!
//! # Layout
//!
//! Byte offsets come from [`probe_common::wire`] (one definition shared with the eBPF side);
//! this module never restates them. All multi-byte fields are big-endian (network order).
//!
//! Session-Sender test packet (RFC 8762 §4.2.1, SSID from RFC 8972 §3), 44 octets + TLVs:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |  0
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Timestamp (T1)                       |  4
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Error Estimate        |             SSID              | 12
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        MBZ (28 octets)                        | 16
//! ~                                                               ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                             TLVs                              ~ 44
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Session-Reflector test packet (RFC 8762 §4.3.1), 44 octets + TLVs:
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |  0
//! |                          Timestamp (T3)                       |  4
//! |         Error Estimate        |             SSID              | 12
//! |                     Receive Timestamp (T2)                    | 16
//! |                 Session-Sender Sequence Number                | 24
//! |                  Session-Sender Timestamp (T1)                | 28
//! | Session-Sender Error Estimate |              MBZ              | 36
//! |Ses-Sender TTL |                      MBZ                      | 40
//! ~                             TLVs                              ~ 44
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! MBZ octets are written as zero and ignored on receipt (RFC 8762): meshprobe's reflector
//! ingress program writes its T2 block into the request's MBZ octets, and decoding a request
//! does not look at them (read the block with [`request_rx_stamp`]).
//!
//! # TLVs (RFC 8972 §4)
//!
//! Flags(1) Type(1) Length(2) Value(Length). Flags are `U M I R R R R R`:
//! - U ([`TLV_FLAG_U`]): a Session-Sender sets it to 1; a Session-Reflector sets it to 1 when it
//!   did not understand the TLV and to 0 otherwise.
//! - M ([`TLV_FLAG_M`]): a Session-Sender sets it to 0; a Session-Reflector sets it to 1 when the
//!   TLV is malformed (its Length does not fit the rest of the packet, or is invalid for the
//!   type), stops processing TLVs there and copies the rest of the packet into the reply.
//! - I ([`TLV_FLAG_I`]): HMAC verification failed; always 0 here (no authenticated mode).
//! - R: reserved, zero on transmit, ignored on receipt.
//!
//! meshprobe's own follow-up TLV (type 252, Private Use: the two-step T3) is in [`follow_up`];
//! [`reflect`] understands it (U cleared, value zeroed for the reflector to fill; M on a wrong
//! length).
//!
//! [`SenderPacket::decode`] is strict (a malformed TLV is an error);
//! [`SenderPacket::decode_lenient`] keeps the base packet and the well-formed TLVs and returns
//! the malformed rest as a [`MalformedTlv`] so a reflector can still answer
//! ([`reflect_lenient`]).
//!
//! # Example
//!
//! ```
//! use meshprobe::wire::*;
//!
//! // Session-Sender: a 68-octet probe (room for the T4 block in the reply's Extra Padding).
//! let ee = ErrorEstimate::for_error_ns(1_000.0, false, true);
//! let probe = SenderPacket::probe(1, 0xBEEF, Timestamp::from_ptp_ns(1_000_000_007), ee, 68, 7)?;
//! let mut request = Vec::new();
//! probe.encode(&mut request);
//! assert_eq!(request.len(), 68);
//!
//! // Session-Reflector: decode leniently and answer with a reply of the same length.
//! let req = SenderPacket::decode_lenient(&request)?;
//! let params = ReflectParams {
//!     timestamp: Timestamp::from_ptp_ns(2_000_000_000),
//!     error_estimate: ee,
//!     receive_timestamp: Timestamp::from_ptp_ns(1_500_000_000),
//!     sender_ttl: 64,
//! };
//! let mut reply = Vec::new();
//! reflect_lenient(&req, &params).encode(&mut reply);
//! assert_eq!(reply.len(), request.len());
//!
//! // Session-Sender again.
//! let back = ReflectorPacket::decode(&reply)?;
//! assert_eq!((back.sender_seq, back.ssid), (1, 0xBEEF));
//! assert_eq!(back.sender_timestamp_ns(), 1_000_000_007);
//! # Ok::<(), WireError>(())
//! ```

pub mod auth;
mod error_estimate;
pub mod follow_up;
mod packet;
mod rx_stamp;
mod timestamp;
mod tlv;

#[cfg(test)]
mod tests;

pub use error_estimate::ErrorEstimate;
pub use follow_up::{FOLLOW_UP_TLV_LEN, FollowUpSeen, FollowUpValue, TLV_FOLLOW_UP};
pub use packet::{Lenient, ReflectParams, ReflectorPacket, SenderPacket, reflect, reflect_lenient};
pub use rx_stamp::{
    NoBlock, RxStampInfo, read_rx_stamp, reply_rx_stamp, request_rx_stamp, rx_stamp_from_block,
    write_rx_stamp,
};
pub use timestamp::{NTP_UNIX_OFFSET_SECS, Timestamp, TimestampFormat};
pub use tlv::{
    MalformedTlv, TLV_EXTRA_PADDING, TLV_FLAG_I, TLV_FLAG_M, TLV_FLAG_U, TLV_FLAGS_RESERVED, Tlv,
};

use probe_common::wire::{BASE_LEN, TLV_HEADER_LEN, TLV_START};

/// Smallest open-mode probe that carries the follow-up TLV ([`follow_up`]): after an Extra
/// Padding TLV that still holds the T4 block (`probe_common::wire::MIN_PROBE_LEN`). Smaller
/// probes go without it, and their replies without the two-step T3.
pub const MIN_FOLLOW_UP_PROBE_LEN: usize =
    probe_common::wire::MIN_PROBE_LEN + follow_up::FOLLOW_UP_TLV_LEN;

/// Largest STAMP packet (UDP payload) this codec accepts or produces, in octets. Larger input
/// is rejected with [`WireError::Oversize`].
pub const MAX_PACKET_LEN: usize = 9000;

/// Why a STAMP packet could not be decoded or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 44-octet base packet (or than a field being read).
    #[error("STAMP packet truncated: need at least {need} octets, got {got}")]
    Truncated { need: usize, got: usize },

    /// Longer than [`MAX_PACKET_LEN`].
    #[error("STAMP packet too large: at most {max} octets, got {got}")]
    Oversize { max: usize, got: usize },

    /// The TLV that starts at `offset` (from the start of the packet) declares a Length that
    /// runs past the end of the packet (RFC 8972 §4: malformed).
    #[error("STAMP TLV at offset {offset} runs past the end of the packet")]
    TlvOverrun { offset: usize },

    /// Only 1 to 3 octets are left at `offset`, fewer than a TLV header (RFC 8972 §4:
    /// malformed).
    #[error(
        "STAMP TLV at offset {offset}: {got} octet(s) left, fewer than the {hdr}-octet TLV header",
        hdr = TLV_HEADER_LEN
    )]
    TlvHeaderTruncated { offset: usize, got: usize },

    /// A TLV value longer than its 16-bit Length field can describe.
    #[error("STAMP TLV value of {len} octets does not fit the 16-bit Length field")]
    TlvTooLong { len: usize },

    /// A probe length meshprobe cannot build: exactly the base packet (no TLV), or room for at
    /// least an Extra Padding TLV header, up to [`MAX_PACKET_LEN`].
    #[error(
        "bad STAMP probe length {len}: must be {base} octets (no TLV) or {min_tlv}..={max} \
         octets (with an Extra Padding TLV)",
        base = BASE_LEN,
        min_tlv = TLV_START + TLV_HEADER_LEN,
        max = MAX_PACKET_LEN
    )]
    BadLength { len: usize },
}

/// Rejects input outside `BASE_LEN..=MAX_PACKET_LEN`.
fn check_len(buf: &[u8]) -> Result<(), WireError> {
    if buf.len() > MAX_PACKET_LEN {
        return Err(WireError::Oversize {
            max: MAX_PACKET_LEN,
            got: buf.len(),
        });
    }
    if buf.len() < BASE_LEN {
        return Err(WireError::Truncated {
            need: BASE_LEN,
            got: buf.len(),
        });
    }
    Ok(())
}
