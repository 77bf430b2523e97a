//! Session-Sender and Session-Reflector test packets (RFC 8762 §4.2.1 / §4.3.1, unauthenticated
//! mode, SSID per RFC 8972 §3) and the stateless reflection of one into the other.

use probe_common::wire::{
    BASE_LEN, ERROR_ESTIMATE, RECEIVE_TIMESTAMP, REPLY_MBZ1, REPLY_MBZ2, REQ_MBZ,
    SENDER_ERROR_ESTIMATE, SENDER_SEQ, SENDER_TIMESTAMP, SENDER_TTL, SEQ, SSID, TIMESTAMP,
    TLV_HEADER_LEN, TLV_START,
};

use super::follow_up::{FOLLOW_UP_TLV_LEN, FollowUpValue};
use super::tlv::{MalformedTlv, TLV_FLAG_M, TLV_FLAG_U, Tlv, parse_tlvs};
use super::{
    ErrorEstimate, MAX_PACKET_LEN, MIN_FOLLOW_UP_PROBE_LEN, Timestamp, WireError, check_len,
};

/// The 44-octet base packet.
type Base = [u8; BASE_LEN];

// The shared offsets describe the RFC layout: every field inside the base packet, MBZ runs
// right after the fields they follow, TLVs right after the base packet. Checked at compile time,
// which is also what makes the fixed-offset indexing below infallible.
const _: () = {
    assert!(SEQ + 4 <= TIMESTAMP);
    assert!(TIMESTAMP + 8 <= ERROR_ESTIMATE);
    assert!(ERROR_ESTIMATE + 2 <= SSID);
    assert!(SSID + 2 == REQ_MBZ);
    assert!(SSID + 2 <= RECEIVE_TIMESTAMP);
    assert!(RECEIVE_TIMESTAMP + 8 <= SENDER_SEQ);
    assert!(SENDER_SEQ + 4 <= SENDER_TIMESTAMP);
    assert!(SENDER_TIMESTAMP + 8 <= SENDER_ERROR_ESTIMATE);
    assert!(SENDER_ERROR_ESTIMATE + 2 == REPLY_MBZ1);
    assert!(REPLY_MBZ1 + 2 == SENDER_TTL);
    assert!(SENDER_TTL + 1 == REPLY_MBZ2);
    assert!(REPLY_MBZ2 + 3 == BASE_LEN);
    assert!(TLV_START == BASE_LEN);
};

fn put<const N: usize>(base: &mut Base, at: usize, bytes: [u8; N]) {
    base[at..at + N].copy_from_slice(&bytes);
}

fn get<const N: usize>(base: &Base, at: usize) -> [u8; N] {
    let mut bytes = [0; N];
    bytes.copy_from_slice(&base[at..at + N]);
    bytes
}

fn get_u32(base: &Base, at: usize) -> u32 {
    u32::from_be_bytes(get(base, at))
}

fn get_u16(base: &Base, at: usize) -> u16 {
    u16::from_be_bytes(get(base, at))
}

fn get_ts(base: &Base, at: usize) -> Timestamp {
    Timestamp::from_be_bytes(get(base, at))
}

/// Length checks, then the base packet and the TLV parse.
fn split(buf: &[u8]) -> Result<(&Base, Vec<Tlv>, Option<MalformedTlv>), WireError> {
    check_len(buf)?;
    let base = buf.first_chunk::<BASE_LEN>().ok_or(WireError::Truncated {
        need: BASE_LEN,
        got: buf.len(),
    })?;
    let (tlvs, malformed) = parse_tlvs(buf, TLV_START);
    Ok((base, tlvs, malformed))
}

fn tlvs_len(tlvs: &[Tlv]) -> usize {
    tlvs.iter().map(Tlv::encoded_len).sum()
}

fn check_tlvs(tlvs: &[Tlv], total: usize) -> Result<(), WireError> {
    tlvs.iter().try_for_each(Tlv::check)?;
    if total > MAX_PACKET_LEN {
        return Err(WireError::Oversize {
            max: MAX_PACKET_LEN,
            got: total,
        });
    }
    Ok(())
}

fn encode_tlvs(tlvs: &[Tlv], out: &mut Vec<u8>) {
    for tlv in tlvs {
        tlv.encode(out);
    }
}

/// Strict decode shared by both packet kinds: every octet after the base must be a TLV.
fn decode_strict<P>(buf: &[u8], from_base: fn(&Base, Vec<Tlv>) -> P) -> Result<P, WireError> {
    let (base, tlvs, malformed) = split(buf)?;
    match malformed {
        Some(m) => Err(m.error()),
        None => Ok(from_base(base, tlvs)),
    }
}

/// Lenient decode shared by both packet kinds (RFC 8972 §4: keep what precedes a malformed TLV).
fn decode_lenient_as<P>(
    buf: &[u8],
    from_base: fn(&Base, Vec<Tlv>) -> P,
) -> Result<Lenient<P>, WireError> {
    let (base, tlvs, malformed) = split(buf)?;
    Ok(Lenient {
        packet: from_base(base, tlvs),
        malformed,
    })
}

/// A Session-Sender test packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SenderPacket {
    pub seq: u32,
    /// T1, in the format of `error_estimate` (Z bit).
    pub timestamp: Timestamp,
    pub error_estimate: ErrorEstimate,
    /// STAMP Session Identifier (RFC 8972 §3); 0 means unused.
    pub ssid: u16,
    pub tlvs: Vec<Tlv>,
}

impl SenderPacket {
    /// meshprobe's probe, exactly `total_len` octets long:
    /// - `total_len == 44`: the base packet, no TLV;
    /// - `48 <= total_len <= MAX_PACKET_LEN`: the base packet and one zero-filled Extra Padding
    ///   TLV of `total_len - 48` value octets. The reply carries the T4 block in-band only when
    ///   `total_len >= probe_common::wire::MIN_PROBE_LEN` (68); shorter probes get T4 through
    ///   the kernel's fallback map. From [`MIN_FOLLOW_UP_PROBE_LEN`] (84) on, our follow-up
    ///   TLV ([`super::follow_up`], zeroed, U = 1) follows the padding, which is 16 octets
    ///   shorter: its value still starts where the tag and the T4 block go.
    ///
    /// The padding value starts with `tag` (`probe_common::wire::PROBE_TAG`, big-endian) when
    /// it has room for it: the programs stamp only requests (and in-band replies) that carry
    /// their probe tag. The rest of the value is zero.
    ///
    /// 45..=47 cannot be built (no room for a TLV header, and the octets after the base packet
    /// must be TLVs): [`WireError::BadLength`]. Above [`MAX_PACKET_LEN`]:
    /// [`WireError::Oversize`].
    pub fn probe(
        seq: u32,
        ssid: u16,
        timestamp: Timestamp,
        error_estimate: ErrorEstimate,
        total_len: usize,
        tag: u32,
    ) -> Result<Self, WireError> {
        if total_len > MAX_PACKET_LEN {
            return Err(WireError::Oversize {
                max: MAX_PACKET_LEN,
                got: total_len,
            });
        }
        let tlvs = if total_len == BASE_LEN {
            Vec::new()
        } else {
            let value_len = total_len
                .checked_sub(TLV_START + TLV_HEADER_LEN)
                .ok_or(WireError::BadLength { len: total_len })?;
            // The follow-up TLV after the padding, when the padding keeps room for the T4
            // block: the padding's value start (tag, T4) never moves.
            let follow_up = total_len >= MIN_FOLLOW_UP_PROBE_LEN;
            let value_len = value_len - if follow_up { FOLLOW_UP_TLV_LEN } else { 0 };
            let mut pad = Tlv::extra_padding(value_len);
            if let Some(t) = pad.value.first_chunk_mut::<4>() {
                *t = tag.to_be_bytes();
            }
            let mut tlvs = vec![pad];
            if follow_up {
                tlvs.push(Tlv::follow_up_request());
            }
            tlvs
        };
        Ok(Self {
            seq,
            timestamp,
            error_estimate,
            ssid,
            tlvs,
        })
    }

    /// T1 in nanoseconds on its own clock ([`Timestamp::to_ns`] in the Z-bit format).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp.to_ns(self.error_estimate.format())
    }

    /// Octets [`SenderPacket::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        BASE_LEN + tlvs_len(&self.tlvs)
    }

    /// Appends the packet: the 44-octet base with zeroed MBZ, then the TLVs as they are (flags
    /// included). Never fails; see [`SenderPacket::try_encode`] for the checked version.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut base: Base = [0; BASE_LEN];
        put(&mut base, SEQ, self.seq.to_be_bytes());
        put(&mut base, TIMESTAMP, self.timestamp.to_be_bytes());
        put(
            &mut base,
            ERROR_ESTIMATE,
            self.error_estimate.to_bits().to_be_bytes(),
        );
        put(&mut base, SSID, self.ssid.to_be_bytes());
        out.reserve(self.encoded_len());
        out.extend_from_slice(&base);
        encode_tlvs(&self.tlvs, out);
    }

    /// [`SenderPacket::encode`], but errors instead of writing a packet that a decoder would
    /// reject: a TLV value over 65535 octets, or more than [`MAX_PACKET_LEN`] in all.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        check_tlvs(&self.tlvs, self.encoded_len())?;
        self.encode(out);
        Ok(())
    }

    /// The encoded packet in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Strict decode: every octet after the base packet must belong to a well-formed TLV.
    /// MBZ octets are ignored (meshprobe's reflector-ingress program writes T2 there).
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        decode_strict(buf, Self::from_base)
    }

    /// Reflector-side decode: the base packet and the TLVs up to the first malformed one, which
    /// is returned with the rest of the packet in [`Lenient::malformed`] (RFC 8972 §4). Errors
    /// only when there is no base packet to answer ([`WireError::Truncated`]) or the input is
    /// over [`MAX_PACKET_LEN`].
    pub fn decode_lenient(buf: &[u8]) -> Result<Lenient<Self>, WireError> {
        decode_lenient_as(buf, Self::from_base)
    }

    fn from_base(base: &Base, tlvs: Vec<Tlv>) -> Self {
        Self {
            seq: get_u32(base, SEQ),
            timestamp: get_ts(base, TIMESTAMP),
            error_estimate: ErrorEstimate::from_bits(get_u16(base, ERROR_ESTIMATE)),
            ssid: get_u16(base, SSID),
            tlvs,
        }
    }
}

/// A Session-Reflector test packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ReflectorPacket {
    /// The reflector's sequence number (a copy of `sender_seq` in stateless mode).
    pub seq: u32,
    /// T3, in the format of `error_estimate` (Z bit).
    pub timestamp: Timestamp,
    pub error_estimate: ErrorEstimate,
    /// Copied from the request (RFC 8972 §3).
    pub ssid: u16,
    /// T2, in the format of `error_estimate` (Z bit).
    pub receive_timestamp: Timestamp,
    pub sender_seq: u32,
    /// T1 as received, in the format of `sender_error_estimate`.
    pub sender_timestamp: Timestamp,
    pub sender_error_estimate: ErrorEstimate,
    /// TTL (IPv4) or Hop Limit (IPv6) of the request as received.
    pub sender_ttl: u8,
    pub tlvs: Vec<Tlv>,
}

impl ReflectorPacket {
    /// T3 in nanoseconds on the reflector's clock.
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp.to_ns(self.error_estimate.format())
    }

    /// T2 in nanoseconds on the reflector's clock (same Z bit as T3, RFC 8762 §4.3.1).
    pub fn receive_timestamp_ns(&self) -> u64 {
        self.receive_timestamp.to_ns(self.error_estimate.format())
    }

    /// T1 in nanoseconds on the sender's clock.
    pub fn sender_timestamp_ns(&self) -> u64 {
        self.sender_timestamp
            .to_ns(self.sender_error_estimate.format())
    }

    /// Octets [`ReflectorPacket::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        BASE_LEN + tlvs_len(&self.tlvs)
    }

    /// Appends the packet: the 44-octet base with zeroed MBZ, then the TLVs as they are.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut base: Base = [0; BASE_LEN];
        put(&mut base, SEQ, self.seq.to_be_bytes());
        put(&mut base, TIMESTAMP, self.timestamp.to_be_bytes());
        put(
            &mut base,
            ERROR_ESTIMATE,
            self.error_estimate.to_bits().to_be_bytes(),
        );
        put(&mut base, SSID, self.ssid.to_be_bytes());
        put(
            &mut base,
            RECEIVE_TIMESTAMP,
            self.receive_timestamp.to_be_bytes(),
        );
        put(&mut base, SENDER_SEQ, self.sender_seq.to_be_bytes());
        put(
            &mut base,
            SENDER_TIMESTAMP,
            self.sender_timestamp.to_be_bytes(),
        );
        put(
            &mut base,
            SENDER_ERROR_ESTIMATE,
            self.sender_error_estimate.to_bits().to_be_bytes(),
        );
        put(&mut base, SENDER_TTL, [self.sender_ttl]);
        out.reserve(self.encoded_len());
        out.extend_from_slice(&base);
        encode_tlvs(&self.tlvs, out);
    }

    /// [`ReflectorPacket::encode`], but errors on a TLV value over 65535 octets or more than
    /// [`MAX_PACKET_LEN`] in all.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        check_tlvs(&self.tlvs, self.encoded_len())?;
        self.encode(out);
        Ok(())
    }

    /// The encoded packet in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Strict decode; MBZ octets are ignored. The Extra Padding value may hold meshprobe's T4
    /// block: read it with [`super::reply_rx_stamp`] on the same buffer.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        decode_strict(buf, Self::from_base)
    }

    /// Decode that keeps the base packet and the TLVs before a malformed one (see
    /// [`SenderPacket::decode_lenient`]).
    pub fn decode_lenient(buf: &[u8]) -> Result<Lenient<Self>, WireError> {
        decode_lenient_as(buf, Self::from_base)
    }

    fn from_base(base: &Base, tlvs: Vec<Tlv>) -> Self {
        let [sender_ttl] = get(base, SENDER_TTL);
        Self {
            seq: get_u32(base, SEQ),
            timestamp: get_ts(base, TIMESTAMP),
            error_estimate: ErrorEstimate::from_bits(get_u16(base, ERROR_ESTIMATE)),
            ssid: get_u16(base, SSID),
            receive_timestamp: get_ts(base, RECEIVE_TIMESTAMP),
            sender_seq: get_u32(base, SENDER_SEQ),
            sender_timestamp: get_ts(base, SENDER_TIMESTAMP),
            sender_error_estimate: ErrorEstimate::from_bits(get_u16(base, SENDER_ERROR_ESTIMATE)),
            sender_ttl,
            tlvs,
        }
    }
}

/// A packet decoded leniently: the base packet and the well-formed TLVs, plus the malformed
/// tail when there was one. Encoding writes the packet, then the tail's octets as stored, so a
/// lenient decode re-encodes to the same length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lenient<P> {
    pub packet: P,
    /// From the first malformed TLV to the end of the packet; `None` when every TLV was
    /// well-formed.
    pub malformed: Option<MalformedTlv>,
}

impl<P> Lenient<P> {
    /// No malformed TLV.
    pub fn is_well_formed(&self) -> bool {
        self.malformed.is_none()
    }

    /// The packet if every TLV was well-formed, else the strict decoder's error.
    pub fn into_strict(self) -> Result<P, WireError> {
        match self.malformed {
            Some(m) => Err(m.error()),
            None => Ok(self.packet),
        }
    }

    fn tail(&self) -> &[u8] {
        self.malformed.as_ref().map_or(&[], |m| m.bytes.as_slice())
    }
}

impl Lenient<SenderPacket> {
    /// Octets [`Lenient::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.packet.encoded_len() + self.tail().len()
    }

    /// The packet, then the malformed tail as stored.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.packet.encode(out);
        out.extend_from_slice(self.tail());
    }
}

impl Lenient<ReflectorPacket> {
    /// Octets [`Lenient::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.packet.encoded_len() + self.tail().len()
    }

    /// The packet, then the malformed tail as stored.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.packet.encode(out);
        out.extend_from_slice(self.tail());
    }
}

/// What the Session-Reflector adds to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReflectParams {
    /// T3 (the reflector's transmit time; meshprobe's egress program overwrites it in-kernel).
    pub timestamp: Timestamp,
    /// The reflector's own Error Estimate; its Z bit gives the format of T2 and T3.
    pub error_estimate: ErrorEstimate,
    /// T2, the request's receive time.
    pub receive_timestamp: Timestamp,
    /// TTL / Hop Limit of the request as received.
    pub sender_ttl: u8,
}

/// The stateless Session-Reflector reply to `request` (RFC 8762 §4.3.1, RFC 8972):
/// - Sequence Number and SSID copied from the request (stateless mode; a stateful reflector
///   overwrites `seq` with its own count afterwards);
/// - the request's Sequence Number, Timestamp and Error Estimate echoed, TTL from `params`;
/// - every TLV copied in order with its value unchanged, flags as a reflector sets them:
///   Extra Padding (which this codec implements) with U = M = I = 0; our follow-up TLV with
///   U = 0 and its value zeroed (for [`ReflectorPacket::set_follow_up`]), or M = 1 and echoed
///   when its length is wrong; any other type with U = 1 (not understood, value echoed
///   untouched) and M = I = 0; reserved bits zero.
///
/// The reply is exactly as long as the request.
pub fn reflect(request: &SenderPacket, params: &ReflectParams) -> ReflectorPacket {
    ReflectorPacket {
        seq: request.seq,
        timestamp: params.timestamp,
        error_estimate: params.error_estimate,
        ssid: request.ssid,
        receive_timestamp: params.receive_timestamp,
        sender_seq: request.seq,
        sender_timestamp: request.timestamp,
        sender_error_estimate: request.error_estimate,
        sender_ttl: params.sender_ttl,
        tlvs: request.tlvs.iter().map(reflect_tlv).collect(),
    }
}

/// [`reflect`] for a leniently decoded request: the well-formed TLVs are reflected as by
/// [`reflect`], and a malformed tail is copied into the reply with its M flag set
/// (RFC 8972 §4), so the reply is still exactly as long as the request.
pub fn reflect_lenient(
    request: &Lenient<SenderPacket>,
    params: &ReflectParams,
) -> Lenient<ReflectorPacket> {
    Lenient {
        packet: reflect(&request.packet, params),
        malformed: request.malformed.as_ref().map(MalformedTlv::reflected),
    }
}

fn reflect_tlv(tlv: &Tlv) -> Tlv {
    if tlv.is_follow_up() {
        // Understood: a value of the right length is ours to write (zeroed here: nothing the
        // request put there is echoed), any other length is malformed (M, echoed).
        return if tlv.value.len() == FollowUpValue::LEN {
            Tlv {
                flags: 0,
                kind: tlv.kind,
                value: vec![0; FollowUpValue::LEN],
            }
        } else {
            Tlv {
                flags: TLV_FLAG_M,
                kind: tlv.kind,
                value: tlv.value.clone(),
            }
        };
    }
    let flags = if tlv.is_extra_padding() {
        0
    } else {
        TLV_FLAG_U
    };
    Tlv {
        flags,
        kind: tlv.kind,
        value: tlv.value.clone(),
    }
}

impl ReflectorPacket {
    /// Writes `v` into the reply's follow-up TLV as [`reflect`] left it (understood, right
    /// length); false when the reply has none (the request carried none, or a malformed one).
    pub fn set_follow_up(&mut self, v: &FollowUpValue) -> bool {
        let Some(t) = self.tlvs.iter_mut().find(|t| fillable_follow_up(t)) else {
            return false;
        };
        t.value.copy_from_slice(&v.to_bytes());
        true
    }

    /// Whether a reply built by [`reflect`] has a follow-up TLV to fill (see
    /// [`ReflectorPacket::set_follow_up`]).
    pub fn wants_follow_up(&self) -> bool {
        self.tlvs.iter().any(fillable_follow_up)
    }
}

/// A follow-up TLV as [`reflect`] leaves one it understood.
fn fillable_follow_up(t: &Tlv) -> bool {
    t.is_follow_up()
        && t.flags & (TLV_FLAG_U | TLV_FLAG_M) == 0
        && t.value.len() == FollowUpValue::LEN
}
