//! STAMP TLVs (RFC 8972 §4): Flags(1) Type(1) Length(2, value octets) Value.

use probe_common::wire::{TLV_HEADER_LEN, TLV_TYPE_EXTRA_PADDING};

use super::WireError;

/// U (Unrecognized), the most significant flag bit. A Session-Sender MUST set it to 1; a
/// Session-Reflector sets it to 1 when it has not understood the TLV, else to 0
/// (RFC 8972 §4).
pub const TLV_FLAG_U: u8 = 0x80;
/// M (Malformed). A Session-Sender MUST set it to 0; a Session-Reflector sets it to 1 when the
/// TLV is malformed, else to 0 (RFC 8972 §4).
pub const TLV_FLAG_M: u8 = 0x40;
/// I (Integrity). A Session-Sender MUST set it to 0; a Session-Reflector sets it to 1 when the
/// TLVs failed HMAC verification (authenticated mode only, not implemented here).
pub const TLV_FLAG_I: u8 = 0x20;
/// The five reserved flag bits: zero on transmit, ignored on receipt.
pub const TLV_FLAGS_RESERVED: u8 = 0x1F;

/// Extra Padding TLV type (RFC 8972 §4.1).
pub const TLV_EXTRA_PADDING: u8 = TLV_TYPE_EXTRA_PADDING;

/// One STAMP TLV.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Tlv {
    /// STAMP TLV Flags octet: [`TLV_FLAG_U`], [`TLV_FLAG_M`], [`TLV_FLAG_I`].
    pub flags: u8,
    /// Type.
    pub kind: u8,
    /// Value; its length is the Length field, so at most `u16::MAX` octets.
    pub value: Vec<u8>,
}

impl Tlv {
    /// Same as [`TLV_FLAG_U`].
    pub const U: u8 = TLV_FLAG_U;
    /// Same as [`TLV_FLAG_M`].
    pub const M: u8 = TLV_FLAG_M;
    /// Same as [`TLV_FLAG_I`].
    pub const I: u8 = TLV_FLAG_I;

    /// A TLV as a Session-Sender sends it: U = 1, M = 0, I = 0, reserved bits 0
    /// (RFC 8972 §4).
    pub fn new(kind: u8, value: Vec<u8>) -> Self {
        Self {
            flags: TLV_FLAG_U,
            kind,
            value,
        }
    }

    /// A Session-Sender's Extra Padding TLV with `len` value octets, all zero (RFC 8972 §4.1
    /// allows zeros). The sender-ingress program writes the T4 block at the start of this value
    /// in the reply; zeros are never mistaken for a block (its key is never zero).
    pub fn extra_padding(len: usize) -> Self {
        Self::new(TLV_EXTRA_PADDING, vec![0; len])
    }

    /// Octets on the wire: header + value.
    pub fn encoded_len(&self) -> usize {
        TLV_HEADER_LEN + self.value.len()
    }

    pub fn is_extra_padding(&self) -> bool {
        self.kind == TLV_EXTRA_PADDING
    }

    /// U flag set.
    pub fn is_unrecognized(&self) -> bool {
        self.flags & TLV_FLAG_U != 0
    }

    /// M flag set.
    pub fn is_malformed(&self) -> bool {
        self.flags & TLV_FLAG_M != 0
    }

    /// I flag set.
    pub fn integrity_failed(&self) -> bool {
        self.flags & TLV_FLAG_I != 0
    }

    /// Appends the TLV's wire form. A value longer than `u16::MAX` is cut to `u16::MAX`
    /// octets so the output always decodes; [`Tlv::check`] reports it instead.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.value.len().min(usize::from(u16::MAX));
        out.push(self.flags);
        out.push(self.kind);
        // `len` fits in u16 by the `min` above.
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(self.value.get(..len).unwrap_or(&[]));
    }

    /// Errors if the value does not fit the 16-bit Length field.
    pub fn check(&self) -> Result<(), WireError> {
        if self.value.len() > usize::from(u16::MAX) {
            return Err(WireError::TlvTooLong {
                len: self.value.len(),
            });
        }
        Ok(())
    }
}

/// The malformed tail of a packet: from the first TLV that does not fit (its Length runs past
/// the end, or fewer than 4 octets are left for its header) to the end of the packet, as
/// received. RFC 8972 §4: the reflector stops processing TLVs there, copies the rest of the
/// packet into the reply and sets the M flag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MalformedTlv {
    /// Offset of the malformed TLV from the start of the packet.
    pub offset: usize,
    /// The raw octets from `offset` to the end of the packet (at least one). The first octet
    /// is the TLV's Flags field.
    pub bytes: Vec<u8>,
}

impl MalformedTlv {
    /// The Flags octet.
    pub fn flags(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// The Type octet, when present.
    pub fn kind(&self) -> Option<u8> {
        self.bytes.get(1).copied()
    }

    /// The Length the TLV declares, when its header is complete.
    pub fn declared_len(&self) -> Option<u16> {
        match self.bytes.get(2..TLV_HEADER_LEN) {
            Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    /// The strict decoders' error for this tail.
    pub fn error(&self) -> WireError {
        if self.bytes.len() < TLV_HEADER_LEN {
            WireError::TlvHeaderTruncated {
                offset: self.offset,
                got: self.bytes.len(),
            }
        } else {
            WireError::TlvOverrun {
                offset: self.offset,
            }
        }
    }

    /// The tail as a Session-Reflector returns it: the same octets with the M flag set in the
    /// Flags octet (RFC 8972 §4). Everything else, the Length included, is copied as received,
    /// so the reply stays as long as the request.
    pub fn reflected(&self) -> Self {
        let mut bytes = self.bytes.clone();
        if let Some(flags) = bytes.first_mut() {
            *flags |= TLV_FLAG_M;
        }
        Self {
            offset: self.offset,
            bytes,
        }
    }
}

/// Parses the TLVs in `buf[start..]`. Stops at the first malformed TLV and returns it as the
/// malformed tail (RFC 8972 §4: processing stops there).
pub(super) fn parse_tlvs(buf: &[u8], start: usize) -> (Vec<Tlv>, Option<MalformedTlv>) {
    let mut tlvs = Vec::new();
    let mut offset = start;
    while let Some(rest) = buf.get(offset..) {
        if rest.is_empty() {
            break;
        }
        let parsed = rest.first_chunk::<TLV_HEADER_LEN>().and_then(|hdr| {
            let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
            let value = rest.get(TLV_HEADER_LEN..TLV_HEADER_LEN + len)?;
            Some(Tlv {
                flags: hdr[0],
                kind: hdr[1],
                value: value.to_vec(),
            })
        });
        match parsed {
            Some(tlv) => {
                offset += tlv.encoded_len();
                tlvs.push(tlv);
            }
            None => {
                let malformed = MalformedTlv {
                    offset,
                    bytes: rest.to_vec(),
                };
                return (tlvs, Some(malformed));
            }
        }
    }
    (tlvs, None)
}
