//! 64-bit STAMP timestamps: NTP (RFC 5905) or PTPv2 truncated (IEEE 1588, RFC 8186 §2.3).

/// Seconds from the NTP epoch (1900-01-01T00:00:00Z) to the Unix epoch (1970-01-01T00:00:00Z).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Which format a 64-bit STAMP timestamp is in: the Z bit of the Error Estimate that goes with
/// it (RFC 8762 §4.2.1, RFC 8186 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimestampFormat {
    /// Z = 0, the STAMP default: 32-bit seconds since 1900-01-01 UTC, 32-bit binary fraction
    /// of a second (units of 2^-32 s).
    #[default]
    Ntp,
    /// Z = 1: PTPv2 truncated format, the low 32 bits of the seconds since the PTP epoch
    /// (1970-01-01 TAI) and 32-bit nanoseconds. meshprobe's eBPF programs stamp in this format
    /// from `CLOCK_TAI`.
    Ptp,
}

impl TimestampFormat {
    /// The format an Error Estimate's Z bit selects.
    pub const fn from_z_bit(z: bool) -> Self {
        if z { Self::Ptp } else { Self::Ntp }
    }

    /// The Z bit for this format.
    pub const fn z_bit(self) -> bool {
        matches!(self, Self::Ptp)
    }
}

/// A raw 64-bit STAMP timestamp as on the wire. What `frac` means depends on the
/// [`TimestampFormat`]: nanoseconds (PTP) or a 2^-32 s fraction (NTP). The all-zero value is
/// what an unset field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Timestamp {
    /// Seconds: since 1900 UTC (NTP) or the low 32 bits of seconds since 1970 TAI (PTP).
    pub secs: u32,
    /// NTP: fraction of a second in units of 2^-32 s. PTP: nanoseconds (0..1_000_000_000).
    pub frac: u32,
}

impl Timestamp {
    /// The all-zero (unset) timestamp.
    pub const ZERO: Self = Self { secs: 0, frac: 0 };

    pub const fn new(secs: u32, frac: u32) -> Self {
        Self { secs, frac }
    }

    /// PTPv2 truncated timestamp from nanoseconds since the PTP epoch (`CLOCK_TAI`). The
    /// seconds keep their low 32 bits (they wrap in 2106), as the truncated format does and as
    /// the eBPF programs do.
    pub const fn from_ptp_ns(tai_ns: u64) -> Self {
        Self {
            secs: (tai_ns / NS_PER_SEC) as u32,
            frac: (tai_ns % NS_PER_SEC) as u32,
        }
    }

    /// NTP timestamp from nanoseconds since the Unix epoch (`CLOCK_REALTIME`, UTC). The
    /// seconds wrap into the next NTP era in 2036 (RFC 5905 §6); [`Timestamp::to_ns`] maps
    /// them back. The fraction is rounded up, so that `to_ns` gives back exactly `unix_ns`.
    pub const fn from_ntp_unix_ns(unix_ns: u64) -> Self {
        let secs = (unix_ns / NS_PER_SEC).wrapping_add(NTP_UNIX_OFFSET_SECS) as u32;
        let rem = unix_ns % NS_PER_SEC;
        // ceil(rem * 2^32 / 1e9) < 2^32 for rem < 1e9, so this fits in u32.
        let frac = (rem << 32).div_ceil(NS_PER_SEC);
        Self {
            secs,
            frac: frac as u32,
        }
    }

    /// Timestamp in `fmt` from nanoseconds on that format's clock: TAI nanoseconds since 1970
    /// for PTP ([`Timestamp::from_ptp_ns`]), Unix UTC nanoseconds for NTP
    /// ([`Timestamp::from_ntp_unix_ns`]).
    pub const fn from_ns(ns: u64, fmt: TimestampFormat) -> Self {
        match fmt {
            TimestampFormat::Ptp => Self::from_ptp_ns(ns),
            TimestampFormat::Ntp => Self::from_ntp_unix_ns(ns),
        }
    }

    /// Nanoseconds since 1970 on the timestamp's own clock.
    ///
    /// - PTP: `secs * 1e9 + frac` (TAI; seconds as truncated on the wire). A `frac` of 1e9 or
    ///   more is not a valid PTP timestamp but is added as is.
    /// - NTP: converted from the 1900 epoch to the Unix epoch, fraction to nanoseconds (rounded
    ///   down). Eras per RFC 4330 §3: seconds with the top bit set are 1968–2036 (era 0), the
    ///   rest 2036–2104 (era 1). Instants before 1970 give 0. Note that the all-zero "unset"
    ///   value therefore maps to 2036-02-07: check [`Timestamp::is_zero`] first.
    pub const fn to_ns(&self, fmt: TimestampFormat) -> u64 {
        match fmt {
            TimestampFormat::Ptp => self.secs as u64 * NS_PER_SEC + self.frac as u64,
            TimestampFormat::Ntp => {
                let secs = self.secs as u64;
                let unix_secs = if secs & 0x8000_0000 == 0 {
                    secs + (1 << 32) - NTP_UNIX_OFFSET_SECS
                } else if secs >= NTP_UNIX_OFFSET_SECS {
                    secs - NTP_UNIX_OFFSET_SECS
                } else {
                    return 0;
                };
                unix_secs * NS_PER_SEC + ((self.frac as u64 * NS_PER_SEC) >> 32)
            }
        }
    }

    /// True for the all-zero (unset) value.
    pub const fn is_zero(&self) -> bool {
        self.secs == 0 && self.frac == 0
    }

    /// The 8 wire octets.
    pub const fn to_be_bytes(&self) -> [u8; 8] {
        let s = self.secs.to_be_bytes();
        let f = self.frac.to_be_bytes();
        [s[0], s[1], s[2], s[3], f[0], f[1], f[2], f[3]]
    }

    /// From the 8 wire octets.
    pub const fn from_be_bytes(b: [u8; 8]) -> Self {
        Self {
            secs: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            frac: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}
