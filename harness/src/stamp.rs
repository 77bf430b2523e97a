//! STAMP packets built by hand from `probe_common::wire`, for fake peers and malformed input.

use anyhow::{Result, bail};
use nix::time::{ClockId, clock_gettime};
use probe_common::wire;

/// CLOCK_TAI now, in nanoseconds.
pub fn tai_now_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_TAI).expect("CLOCK_TAI");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// PTPv2 truncated timestamp (32-bit seconds, 32-bit nanoseconds), big-endian.
pub fn ptp_bytes(ns: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&((ns / 1_000_000_000) as u32).to_be_bytes());
    b[4..].copy_from_slice(&((ns % 1_000_000_000) as u32).to_be_bytes());
    b
}

/// Inverse of [`ptp_bytes`] (seconds taken modulo 2^32).
pub fn ptp_ns(b: &[u8]) -> u64 {
    let s = u32::from_be_bytes(b[..4].try_into().unwrap()) as u64;
    let n = u32::from_be_bytes(b[4..8].try_into().unwrap()) as u64;
    s * 1_000_000_000 + n
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(b[off..off + 2].try_into().unwrap())
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

/// (SSID, sequence) of a Session-Sender packet.
pub fn request_key(payload: &[u8]) -> Option<(u16, u32)> {
    (payload.len() >= wire::BASE_LEN).then(|| (be16(payload, wire::SSID), be32(payload, wire::SEQ)))
}

/// (SSID, Session-Sender sequence) of a Session-Reflector packet.
pub fn reply_key(payload: &[u8]) -> Option<(u16, u32)> {
    (payload.len() >= wire::BASE_LEN)
        .then(|| (be16(payload, wire::SSID), be32(payload, wire::SENDER_SEQ)))
}

/// (SSID, sequence) of an authenticated Session-Sender packet (RFC 8762 §4.2.2).
pub fn request_key_auth(payload: &[u8]) -> Option<(u16, u32)> {
    use probe_common::auth_wire as aw;
    (payload.len() >= aw::BASE_LEN).then(|| (be16(payload, aw::SSID), be32(payload, aw::SEQ)))
}

/// (SSID, Session-Sender sequence) of an authenticated Session-Reflector packet (§4.3.2).
pub fn reply_key_auth(payload: &[u8]) -> Option<(u16, u32)> {
    use probe_common::auth_wire as aw;
    (payload.len() >= aw::BASE_LEN)
        .then(|| (be16(payload, aw::SSID), be32(payload, aw::SENDER_SEQ)))
}

/// A Session-Sender test packet: base 44 octets, optionally followed by an Extra Padding TLV
/// whose header claims `tlv_claim` value octets while `tlv_value` octets are present.
pub fn build_request(seq: u32, ssid: u16, tlv: Option<(u16, usize)>) -> Vec<u8> {
    let mut p = vec![0u8; wire::BASE_LEN];
    p[wire::SEQ..wire::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    p[wire::TIMESTAMP..wire::TIMESTAMP + 8].copy_from_slice(&ptp_bytes(tai_now_ns()));
    p[wire::ERROR_ESTIMATE..wire::ERROR_ESTIMATE + 2]
        .copy_from_slice(&(wire::EE_Z | 0x0001).to_be_bytes());
    p[wire::SSID..wire::SSID + 2].copy_from_slice(&ssid.to_be_bytes());
    if let Some((claim, present)) = tlv {
        p.push(0); // flags
        p.push(wire::TLV_TYPE_EXTRA_PADDING);
        p.extend_from_slice(&claim.to_be_bytes());
        p.extend(std::iter::repeat_n(0u8, present));
    }
    p
}

/// A Session-Reflector test packet answering `req` (stateless-style): same size as the request,
/// the request's octets after the base packet (its TLVs) echoed unchanged, T2 = `t2_ns`,
/// T3 = `t3_ns`, reflector sequence `refl_seq`, Ses-Sender TTL `ttl`.
pub fn build_reply(req: &[u8], refl_seq: u32, t2_ns: u64, t3_ns: u64, ttl: u8) -> Result<Vec<u8>> {
    if req.len() < wire::BASE_LEN {
        bail!(
            "request of {} octets is shorter than the base packet",
            req.len()
        );
    }
    let mut p = req.to_vec();
    p[..wire::BASE_LEN].fill(0);
    p[wire::SEQ..wire::SEQ + 4].copy_from_slice(&refl_seq.to_be_bytes());
    p[wire::TIMESTAMP..wire::TIMESTAMP + 8].copy_from_slice(&ptp_bytes(t3_ns));
    p[wire::ERROR_ESTIMATE..wire::ERROR_ESTIMATE + 2]
        .copy_from_slice(&(wire::EE_Z | 0x0001).to_be_bytes());
    p[wire::SSID..wire::SSID + 2].copy_from_slice(&req[wire::SSID..wire::SSID + 2]);
    p[wire::RECEIVE_TIMESTAMP..wire::RECEIVE_TIMESTAMP + 8].copy_from_slice(&ptp_bytes(t2_ns));
    p[wire::SENDER_SEQ..wire::SENDER_SEQ + 4].copy_from_slice(&req[wire::SEQ..wire::SEQ + 4]);
    p[wire::SENDER_TIMESTAMP..wire::SENDER_TIMESTAMP + 8]
        .copy_from_slice(&req[wire::TIMESTAMP..wire::TIMESTAMP + 8]);
    p[wire::SENDER_ERROR_ESTIMATE..wire::SENDER_ERROR_ESTIMATE + 2]
        .copy_from_slice(&req[wire::ERROR_ESTIMATE..wire::ERROR_ESTIMATE + 2]);
    p[wire::SENDER_TTL] = ttl;
    Ok(p)
}
