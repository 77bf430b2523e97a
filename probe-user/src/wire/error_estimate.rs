//! The 16-bit Error Estimate field (RFC 4656 §4.1.2, Z bit from RFC 8186 §2.3 / RFC 8762).
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |S|Z|   Scale   |   Multiplier  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! error = Multiplier × 2^-32 × 2^Scale seconds. Multiplier must not be zero.

use probe_common::wire::{EE_S, EE_Z};

use super::TimestampFormat;

const SCALE_MASK: u16 = 0x3F00;
const SCALE_SHIFT: u32 = 8;
const MULTIPLIER_MASK: u16 = 0x00FF;
/// Largest value of the 6-bit Scale.
const SCALE_MAX: u8 = 0x3F;

/// A decoded Error Estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorEstimate {
    /// S: the clock that made the timestamp is synchronised to UTC from an external source.
    pub synchronized: bool,
    /// Z: the timestamp this estimate goes with is in PTPv2 truncated format (else NTP).
    pub ptp: bool,
    /// Scale, 6 bits (0..=63; higher bits are dropped on encode).
    pub scale: u8,
    /// Multiplier; RFC 4656 forbids zero.
    pub multiplier: u8,
}

impl Default for ErrorEstimate {
    /// Unsynchronised, NTP format, the smallest valid estimate (2^-32 s).
    fn default() -> Self {
        Self {
            synchronized: false,
            ptp: false,
            scale: 0,
            multiplier: 1,
        }
    }
}

impl ErrorEstimate {
    /// The 16 wire bits.
    pub const fn to_bits(&self) -> u16 {
        let mut bits = ((self.scale & SCALE_MAX) as u16) << SCALE_SHIFT | self.multiplier as u16;
        if self.synchronized {
            bits |= EE_S;
        }
        if self.ptp {
            bits |= EE_Z;
        }
        bits
    }

    /// From the 16 wire bits. Accepts a zero multiplier (see [`ErrorEstimate::is_valid`]).
    pub const fn from_bits(bits: u16) -> Self {
        Self {
            synchronized: bits & EE_S != 0,
            ptp: bits & EE_Z != 0,
            scale: ((bits & SCALE_MASK) >> SCALE_SHIFT) as u8,
            multiplier: (bits & MULTIPLIER_MASK) as u8,
        }
    }

    /// The format of the timestamp this estimate goes with (Z bit).
    pub const fn format(&self) -> TimestampFormat {
        TimestampFormat::from_z_bit(self.ptp)
    }

    /// False when Multiplier is zero, which RFC 4656 §4.1.2 forbids ("the packet SHOULD be
    /// considered corrupt"). The decoders do not reject it: that is the caller's policy.
    pub const fn is_valid(&self) -> bool {
        self.multiplier != 0
    }

    /// The estimated error in nanoseconds: Multiplier × 2^(Scale−32) s × 1e9.
    pub fn error_ns(&self) -> f64 {
        let scale = i32::from(self.scale & SCALE_MAX);
        f64::from(self.multiplier) * 2f64.powi(scale - 32) * 1e9
    }

    /// The estimate that covers an error of `ns` nanoseconds as tightly as the format allows:
    /// the smallest Scale whose Multiplier = ⌈ns / (2^(Scale−32) s)⌉ fits in 8 bits, so the
    /// encoded estimate is never below `ns`. Multiplier is at least 1 (RFC 4656). Errors of
    /// zero or less give the smallest estimate (2^-32 s); errors beyond the largest estimate
    /// (255 × 2^31 s), infinity and NaN give the largest.
    pub fn for_error_ns(ns: f64, synchronized: bool, ptp: bool) -> Self {
        let (scale, multiplier) = Self::scale_multiplier(ns);
        Self {
            synchronized,
            ptp,
            scale,
            multiplier,
        }
    }

    fn scale_multiplier(ns: f64) -> (u8, u8) {
        const LARGEST: (u8, u8) = (SCALE_MAX, u8::MAX);
        if ns.is_nan() {
            return LARGEST;
        }
        if ns <= 0.0 {
            return (0, 1);
        }
        let secs = ns / 1e9;
        for scale in 0..=SCALE_MAX {
            // Units of this scale in `secs`: secs / 2^(scale-32).
            let m = (secs * 2f64.powi(32 - i32::from(scale))).ceil();
            if m <= f64::from(u8::MAX) {
                // m >= 1 because secs > 0; the cast is exact for 1..=255.
                return (scale, m.max(1.0) as u8);
            }
        }
        LARGEST
    }
}
