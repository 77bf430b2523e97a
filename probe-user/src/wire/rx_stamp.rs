//! The in-band receive-stamp block (`probe_common::RxStamp`) that the ingress eBPF programs
//! write into probe packets: T2 into a request's MBZ octets, T4 into the start of a reply's
//! Extra Padding value.
//!
//! The eBPF side builds an `RxStamp` with every multi-byte field already big-endian
//! (`.to_be()`) and copies the struct's memory into the packet. This module reads those octets
//! back into an `RxStamp` at the struct's own field offsets (`offset_of!`), as the memory image
//! it is, and only then converts from big-endian, so both sides follow one definition.
//!
//! A block is trusted only when it carries this process's key (`probe_common::Config::
//! block_key`, a per-load secret that never leaves the host): the octets where a block goes
//! are the sender's (or the reflector's) in any packet the programs skipped (a fragment, a long
//! IPv6 extension chain), so a constant marker could be forged.

use core::mem::offset_of;

use probe_common::RxStamp;
use probe_common::wire::{REPLY_RX_STAMP, REQUEST_RX_STAMP, TLV_HEADER_LEN, TLV_START};

use super::{TLV_EXTRA_PADDING, Timestamp, WireError};

const NS_PER_SEC: u64 = 1_000_000_000;

const OFF_SECS: usize = offset_of!(RxStamp, secs);
const OFF_NSECS: usize = offset_of!(RxStamp, nsecs);
const OFF_HW_HI: usize = offset_of!(RxStamp, hw_hi);
const OFF_HW_LO: usize = offset_of!(RxStamp, hw_lo);
const OFF_KEY: usize = offset_of!(RxStamp, key);

// Every field lies inside the 20-octet block, which makes the fixed indexing below infallible.
const _: () = {
    assert!(core::mem::size_of::<RxStamp>() == RxStamp::LEN);
    assert!(OFF_SECS + 4 <= RxStamp::LEN);
    assert!(OFF_NSECS + 4 <= RxStamp::LEN);
    assert!(OFF_HW_HI + 4 <= RxStamp::LEN);
    assert!(OFF_HW_LO + 4 <= RxStamp::LEN);
    assert!(OFF_KEY + 4 <= RxStamp::LEN);
    // T4 sits at the start of the Extra Padding value that follows the base packet.
    assert!(REPLY_RX_STAMP == TLV_START + TLV_HEADER_LEN);
};

type Block = [u8; RxStamp::LEN];

fn field<const N: usize>(block: &Block, at: usize) -> [u8; N] {
    let mut bytes = [0; N];
    bytes.copy_from_slice(&block[at..at + N]);
    bytes
}

fn set_field<const N: usize>(block: &mut Block, at: usize, bytes: [u8; N]) {
    block[at..at + N].copy_from_slice(&bytes);
}

/// The struct whose memory image `block` is (fields still big-endian, as the eBPF side stores
/// them). Equivalent to reinterpreting the octets as an `RxStamp`, without `unsafe`.
fn rx_stamp_from_octets(block: &Block) -> RxStamp {
    RxStamp {
        secs: u32::from_ne_bytes(field(block, OFF_SECS)),
        nsecs: u32::from_ne_bytes(field(block, OFF_NSECS)),
        hw_hi: u32::from_ne_bytes(field(block, OFF_HW_HI)),
        hw_lo: u32::from_ne_bytes(field(block, OFF_HW_LO)),
        key: u32::from_ne_bytes(field(block, OFF_KEY)),
    }
}

/// The memory image of `raw`, as the eBPF side copies it into the packet.
fn block_from_rx_stamp(raw: &RxStamp) -> Block {
    let mut block = [0; RxStamp::LEN];
    set_field(&mut block, OFF_SECS, raw.secs.to_ne_bytes());
    set_field(&mut block, OFF_NSECS, raw.nsecs.to_ne_bytes());
    set_field(&mut block, OFF_HW_HI, raw.hw_hi.to_ne_bytes());
    set_field(&mut block, OFF_HW_LO, raw.hw_lo.to_ne_bytes());
    set_field(&mut block, OFF_KEY, raw.key.to_ne_bytes());
    block
}

/// A decoded receive-stamp block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RxStampInfo {
    /// Receive time, nanoseconds since 1970 TAI, with the seconds truncated to 32 bits as in
    /// the PTPv2 truncated format.
    pub tai_ns: u64,
    /// Raw NIC hardware receive stamp (the NIC's own clock, not TAI); 0 when there was none.
    pub hw_ns: u64,
    /// Where `tai_ns` came from: `RxStamp::SOURCE_TC_NOW` or `RxStamp::SOURCE_SKB_RX`.
    pub source: u8,
}

/// Why no trusted block was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoBlock {
    /// Nothing claims to be a block there: out of the packet, not where the programs write
    /// one, or a zero key (octets the programs did not stamp).
    Absent,
    /// A non-zero key that is not ours, or nanoseconds out of range: forged, or written by
    /// another process's programs. Never used; callers count it.
    Untrusted,
}

impl RxStampInfo {
    /// Decodes a block as the eBPF side stores it (in a packet or in the `T4_FALLBACK` map):
    /// big-endian fields. Trusted only with `key` (this process's `Config::block_key`, never
    /// 0) and nanoseconds below one second.
    pub fn from_rx_stamp(raw: &RxStamp, key: u32) -> Result<Self, NoBlock> {
        match u32::from_be(raw.key) {
            0 => return Err(NoBlock::Absent),
            k if k != key => return Err(NoBlock::Untrusted),
            _ => {}
        }
        if u64::from(u32::from_be(raw.nsecs) & RxStamp::NSECS_MASK) >= NS_PER_SEC {
            return Err(NoBlock::Untrusted);
        }
        Ok(rx_stamp_from_block(raw))
    }

    /// The block the eBPF side would write for this stamp with `key` (big-endian fields).
    pub fn to_rx_stamp(&self, key: u32) -> RxStamp {
        let ts = Timestamp::from_ptp_ns(self.tai_ns);
        RxStamp {
            secs: ts.secs.to_be(),
            nsecs: RxStamp::pack_nsecs(ts.frac, self.source).to_be(),
            hw_hi: ((self.hw_ns >> 32) as u32).to_be(),
            hw_lo: (self.hw_ns as u32).to_be(),
            key: key.to_be(),
        }
    }

    /// The receive time as a PTPv2 truncated timestamp.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from_ptp_ns(self.tai_ns)
    }
}

/// Decodes a block without checking its key or nanoseconds: for `RxStamp` values taken from
/// the kernel's `T4_FALLBACK` map, which only the eBPF program writes. Fields are big-endian as
/// stored. For octets from a packet use [`read_rx_stamp`] (or [`RxStampInfo::from_rx_stamp`]),
/// which validate.
pub fn rx_stamp_from_block(raw: &RxStamp) -> RxStampInfo {
    let secs = u64::from(u32::from_be(raw.secs));
    let packed = u32::from_be(raw.nsecs);
    let nsecs = u64::from(packed & RxStamp::NSECS_MASK);
    let hw = u64::from(u32::from_be(raw.hw_hi)) << 32 | u64::from(u32::from_be(raw.hw_lo));
    RxStampInfo {
        tai_ns: secs * NS_PER_SEC + nsecs,
        hw_ns: hw,
        source: (packed >> RxStamp::SOURCE_SHIFT) as u8,
    }
}

/// Decodes the `RxStamp` block at `payload[offset..offset + 20]`, trusted only with `key` (see
/// [`RxStampInfo::from_rx_stamp`]); [`NoBlock::Absent`] when it does not fit in `payload`.
pub fn read_rx_stamp(payload: &[u8], offset: usize, key: u32) -> Result<RxStampInfo, NoBlock> {
    let block = offset
        .checked_add(RxStamp::LEN)
        .and_then(|end| payload.get(offset..end))
        .and_then(|b| <&Block>::try_from(b).ok())
        .ok_or(NoBlock::Absent)?;
    RxStampInfo::from_rx_stamp(&rx_stamp_from_octets(block), key)
}

/// Writes `info` as an `RxStamp` block with `key` at `payload[offset..offset + 20]`, exactly as
/// the eBPF side does (for tests and for userspace fallbacks).
pub fn write_rx_stamp(
    payload: &mut [u8],
    offset: usize,
    info: &RxStampInfo,
    key: u32,
) -> Result<(), WireError> {
    let got = payload.len();
    let end = offset.saturating_add(RxStamp::LEN);
    let dst = payload
        .get_mut(offset..end)
        .ok_or(WireError::Truncated { need: end, got })?;
    dst.copy_from_slice(&block_from_rx_stamp(&info.to_rx_stamp(key)));
    Ok(())
}

/// T2 from a received request: the block the reflector-ingress program writes into the
/// request's MBZ octets (`REQUEST_RX_STAMP`).
pub fn request_rx_stamp(request: &[u8], key: u32) -> Result<RxStampInfo, NoBlock> {
    read_rx_stamp(request, REQUEST_RX_STAMP, key)
}

/// T4 from a received reply: the block the sender-ingress program writes at `REPLY_RX_STAMP`.
/// Read only where that program writes it: when the TLV at `TLV_START` is an Extra Padding
/// TLV whose value holds at least a whole block (the same check the program makes).
pub fn reply_rx_stamp(reply: &[u8], key: u32) -> Result<RxStampInfo, NoBlock> {
    let hdr = reply
        .get(TLV_START..)
        .and_then(|r| r.first_chunk::<TLV_HEADER_LEN>())
        .ok_or(NoBlock::Absent)?;
    let value_len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if hdr[1] != TLV_EXTRA_PADDING || value_len < RxStamp::LEN {
        return Err(NoBlock::Absent);
    }
    read_rx_stamp(reply, REPLY_RX_STAMP, key)
}
