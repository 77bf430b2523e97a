//! Authenticated-mode STAMP test packets (RFC 8762 §4.2.2 / §4.3.2, SSID per RFC 8972 §3), the
//! HMAC of the base packet (RFC 8762 §4.4) and the RFC 8972 §4.8 HMAC TLV.
//!
//! The fields are those of [`SenderPacket`] / [`ReflectorPacket`]; only their places differ
//! (`probe_common::auth_wire`, one definition shared with the eBPF side). The HMAC is
//! HMAC-SHA-256 truncated to its first 16 octets:
//! - base packet: over octets `0..96`, written at `96..112`;
//! - HMAC TLV (type 8, 16-octet value): over the base packet's Sequence Number and every TLV
//!   before it. Extra Padding may follow it, uncovered (RFC 8972 §4.8).
//!
//! Signing and verifying take the key as octets; which keys are tried (current, then next)
//! is `crate::auth`'s business. Verification is constant-time (`verify_truncated_left`).

use hmac::{Hmac, Mac};
use probe_common::auth_wire::{
    BASE_LEN, ERROR_ESTIMATE, HMAC, HMAC_LEN, RECEIVE_TIMESTAMP, SENDER_ERROR_ESTIMATE, SENDER_SEQ,
    SENDER_TIMESTAMP, SENDER_TTL, SEQ, SSID, TIMESTAMP, TLV_START, TLV_TYPE_HMAC,
};
use sha2::Sha256;

use super::tlv::{TLV_FLAG_I, Tlv, parse_tlvs};
use super::{
    ErrorEstimate, Lenient, MAX_PACKET_LEN, ReflectorPacket, SenderPacket, Timestamp, WireError,
};

type HmacSha256 = Hmac<Sha256>;

/// The 112-octet authenticated base packet.
type Base = [u8; BASE_LEN];

const _: () = {
    assert!(SEQ + 4 <= TIMESTAMP);
    assert!(TIMESTAMP + 8 <= ERROR_ESTIMATE);
    assert!(ERROR_ESTIMATE + 2 == SSID);
    assert!(SSID + 2 <= RECEIVE_TIMESTAMP);
    assert!(RECEIVE_TIMESTAMP + 8 <= SENDER_SEQ);
    assert!(SENDER_SEQ + 4 <= SENDER_TIMESTAMP);
    assert!(SENDER_TIMESTAMP + 8 <= SENDER_ERROR_ESTIMATE);
    assert!(SENDER_ERROR_ESTIMATE + 2 <= SENDER_TTL);
    assert!(SENDER_TTL < HMAC);
    assert!(HMAC + HMAC_LEN == BASE_LEN && TLV_START == BASE_LEN);
};

/// HMAC-SHA-256 of `parts` (concatenated) under `key`, truncated to 128 bits.
pub fn hmac_128(key: &[u8], parts: &[&[u8]]) -> [u8; HMAC_LEN] {
    let mut mac = mac(key);
    for p in parts {
        mac.update(p);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0; HMAC_LEN];
    out.copy_from_slice(&full[..HMAC_LEN]);
    out
}

/// Constant-time check of a truncated HMAC-SHA-256 of `parts` under `key`.
pub fn hmac_128_ok(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    if tag.len() != HMAC_LEN {
        return false;
    }
    let mut mac = mac(key);
    for p in parts {
        mac.update(p);
    }
    mac.verify_truncated_left(tag).is_ok()
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The base packet's HMAC in `packet` verifies under `key`. False for a packet shorter than
/// the authenticated base.
pub fn base_hmac_ok(packet: &[u8], key: &[u8]) -> bool {
    match (packet.get(..HMAC), packet.get(HMAC..BASE_LEN)) {
        (Some(covered), Some(tag)) => hmac_128_ok(key, &[covered], tag),
        _ => false,
    }
}

/// Where the HMAC TLV of `packet` is, if it has one: (offset of the TLV, offset of its value).
fn hmac_tlv_at(packet: &[u8]) -> Option<(usize, usize)> {
    let (tlvs, _) = parse_tlvs(packet, TLV_START);
    let mut at = TLV_START;
    for t in &tlvs {
        if t.kind == TLV_TYPE_HMAC && t.value.len() == HMAC_LEN {
            return Some((at, at + super::TLV_HEADER_LEN));
        }
        at += t.encoded_len();
    }
    None
}

/// RFC 8972 §4.8: `Some(ok)` when `packet` carries an HMAC TLV (over the Sequence Number and
/// the TLVs before it), `None` when it carries none.
pub fn hmac_tlv_ok(packet: &[u8], key: &[u8]) -> Option<bool> {
    let (tlv, value) = hmac_tlv_at(packet)?;
    let seq = packet.get(SEQ..SEQ + 4)?;
    let before = packet.get(TLV_START..tlv)?;
    Some(hmac_128_ok(
        key,
        &[seq, before],
        packet.get(value..value + HMAC_LEN)?,
    ))
}

/// Signs an encoded authenticated packet in place: the HMAC TLV's value (if there is one),
/// then the base packet's HMAC.
fn sign(out: &mut [u8], key: &[u8]) {
    if let Some((tlv, value)) = hmac_tlv_at(out) {
        let tag = hmac_128(key, &[&out[SEQ..SEQ + 4], &out[TLV_START..tlv]]);
        out[value..value + HMAC_LEN].copy_from_slice(&tag);
    }
    let tag = hmac_128(key, &[&out[..HMAC]]);
    out[HMAC..BASE_LEN].copy_from_slice(&tag);
}

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

fn split(buf: &[u8]) -> Result<(&Base, Vec<Tlv>, Option<super::MalformedTlv>), WireError> {
    if buf.len() > MAX_PACKET_LEN {
        return Err(WireError::Oversize {
            max: MAX_PACKET_LEN,
            got: buf.len(),
        });
    }
    let base = buf.first_chunk::<BASE_LEN>().ok_or(WireError::Truncated {
        need: BASE_LEN,
        got: buf.len(),
    })?;
    let (tlvs, malformed) = parse_tlvs(buf, TLV_START);
    Ok((base, tlvs, malformed))
}

fn finish(out: &mut Vec<u8>, start: usize, base: &Base, tlvs: &[Tlv], tail: &[u8], key: &[u8]) {
    out.extend_from_slice(base);
    for t in tlvs {
        t.encode(out);
    }
    out.extend_from_slice(tail);
    sign(&mut out[start..], key);
}

impl SenderPacket {
    /// meshprobe's authenticated probe, exactly `total_len` octets: the 112-octet base, and
    /// above that one Extra Padding TLV (its value starts with `tag`, as in open mode). The
    /// padding needs no HMAC TLV: RFC 8972 §4.8 leaves Extra Padding uncovered.
    pub fn probe_auth(
        seq: u32,
        ssid: u16,
        timestamp: Timestamp,
        error_estimate: ErrorEstimate,
        total_len: usize,
        tag: u32,
    ) -> Result<Self, WireError> {
        let len = total_len.max(BASE_LEN);
        if len > MAX_PACKET_LEN {
            return Err(WireError::Oversize {
                max: MAX_PACKET_LEN,
                got: len,
            });
        }
        let tlvs = if len == BASE_LEN {
            Vec::new()
        } else {
            let value_len = len
                .checked_sub(TLV_START + super::TLV_HEADER_LEN)
                .ok_or(WireError::BadLength { len })?;
            let mut pad = Tlv::extra_padding(value_len);
            if let Some(t) = pad.value.first_chunk_mut::<4>() {
                *t = tag.to_be_bytes();
            }
            vec![pad]
        };
        Ok(Self {
            seq,
            timestamp,
            error_estimate,
            ssid,
            tlvs,
        })
    }

    /// Octets [`SenderPacket::encode_auth`] writes.
    pub fn encoded_len_auth(&self) -> usize {
        BASE_LEN + self.tlvs.iter().map(Tlv::encoded_len).sum::<usize>()
    }

    /// Appends the authenticated packet signed with `key`: the base HMAC, and the value of an
    /// HMAC TLV among `tlvs` (a 16-octet type-8 TLV, whose value is overwritten).
    pub fn encode_auth(&self, key: &[u8], out: &mut Vec<u8>) {
        let mut base: Base = [0; BASE_LEN];
        put(&mut base, SEQ, self.seq.to_be_bytes());
        put(&mut base, TIMESTAMP, self.timestamp.to_be_bytes());
        put(
            &mut base,
            ERROR_ESTIMATE,
            self.error_estimate.to_bits().to_be_bytes(),
        );
        put(&mut base, SSID, self.ssid.to_be_bytes());
        let start = out.len();
        out.reserve(self.encoded_len_auth());
        finish(out, start, &base, &self.tlvs, &[], key);
    }

    /// Decodes the fields of an authenticated request (MBZ and HMAC octets are not looked at:
    /// verify with [`base_hmac_ok`] first). Lenient as [`SenderPacket::decode_lenient`].
    pub fn decode_auth(buf: &[u8]) -> Result<Lenient<Self>, WireError> {
        let (base, tlvs, malformed) = split(buf)?;
        Ok(Lenient {
            packet: Self {
                seq: get_u32(base, SEQ),
                timestamp: get_ts(base, TIMESTAMP),
                error_estimate: ErrorEstimate::from_bits(get_u16(base, ERROR_ESTIMATE)),
                ssid: get_u16(base, SSID),
                tlvs,
            },
            malformed,
        })
    }
}

impl ReflectorPacket {
    /// Octets [`ReflectorPacket::encode_auth`] writes.
    pub fn encoded_len_auth(&self) -> usize {
        BASE_LEN + self.tlvs.iter().map(Tlv::encoded_len).sum::<usize>()
    }

    /// Appends the authenticated reply signed with `key` (see [`SenderPacket::encode_auth`]).
    pub fn encode_auth(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        finish(out, start, &self.auth_base(), &self.tlvs, &[], key);
    }

    fn auth_base(&self) -> Base {
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
        base
    }

    /// Strict decode of an authenticated reply's fields (verify with [`base_hmac_ok`] first).
    pub fn decode_auth(buf: &[u8]) -> Result<Self, WireError> {
        let (base, tlvs, malformed) = split(buf)?;
        if let Some(m) = malformed {
            return Err(m.error());
        }
        let [sender_ttl] = get(base, SENDER_TTL);
        Ok(Self {
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
        })
    }
}

impl Lenient<ReflectorPacket> {
    /// Octets [`Lenient::encode_auth`] writes.
    pub fn encoded_len_auth(&self) -> usize {
        self.packet.encoded_len_auth() + self.malformed.as_ref().map_or(0, |m| m.bytes.len())
    }

    /// The authenticated reply signed with `key`, then the malformed tail as stored.
    pub fn encode_auth(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let tail = self.malformed.as_ref().map_or(&[][..], |m| &m.bytes[..]);
        finish(
            out,
            start,
            &self.packet.auth_base(),
            &self.packet.tlvs,
            tail,
            key,
        );
    }
}

/// The reflector's side of RFC 8972 §4.8 on a reply built by [`super::reflect_lenient`]: the
/// HMAC TLV is understood (U cleared; its value is recomputed when the reply is signed), and
/// when the request's HMAC TLV did not verify (`request_tlvs_ok == Some(false)`) every TLV
/// gets the I flag.
pub fn reflect_auth_tlvs(reply: &mut ReflectorPacket, request_tlvs_ok: Option<bool>) {
    for t in &mut reply.tlvs {
        if t.kind == TLV_TYPE_HMAC {
            t.flags &= !super::TLV_FLAG_U;
        }
        if request_tlvs_ok == Some(false) {
            t.flags |= TLV_FLAG_I;
        }
    }
}
