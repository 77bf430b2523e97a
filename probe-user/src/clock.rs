//! Clocks. Kernel stamps are CLOCK_TAI (`bpf_ktime_get_tai_ns`, or before Linux 6.1
//! `bpf_ktime_get_ns` + [`mono_to_tai`]), so userspace uses TAI too; socket timestamps arrive
//! in CLOCK_REALTIME and are shifted by the kernel's TAI offset.
use nix::time::{ClockId, clock_gettime};

fn now(clock: ClockId) -> u64 {
    // CLOCK_TAI and CLOCK_REALTIME cannot fail on Linux ≥ 3.10.
    let ts = clock_gettime(clock).expect("clock_gettime");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Nanoseconds since the TAI epoch (PTP timescale).
pub fn tai_now_ns() -> u64 {
    now(ClockId::CLOCK_TAI)
}

pub fn realtime_now_ns() -> u64 {
    now(ClockId::CLOCK_REALTIME)
}

/// CLOCK_TAI − CLOCK_REALTIME in nanoseconds: the kernel's TAI offset (whole seconds; 0 where
/// nothing has set it, e.g. no PTP/NTP daemon), read from `adjtimex`.
pub fn tai_offset_ns() -> i64 {
    // SAFETY: adjtimex with modes = 0 only reads; timex is plain data.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        // Fall back to measuring the two clocks against each other, rounded to the second.
        let a = realtime_now_ns() as i64;
        let t = tai_now_ns() as i64;
        let b = realtime_now_ns() as i64;
        let d = t - (a + b) / 2;
        return (d as f64 / 1e9).round() as i64 * 1_000_000_000;
    }
    tx.tai as i64 * 1_000_000_000
}

/// One bracketed read: CLOCK_MONOTONIC, CLOCK_TAI, CLOCK_MONOTONIC, back to back (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bracket {
    pub mono_before: u64,
    pub tai: u64,
    pub mono_after: u64,
}

impl Bracket {
    pub fn read() -> Bracket {
        let mono_before = now(ClockId::CLOCK_MONOTONIC);
        let tai = now(ClockId::CLOCK_TAI);
        let mono_after = now(ClockId::CLOCK_MONOTONIC);
        Bracket {
            mono_before,
            tai,
            mono_after,
        }
    }
}

/// CLOCK_TAI − CLOCK_MONOTONIC and how well it is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonoToTai {
    pub offset_ns: i64,
    /// Half the width of the bracket it came from: the offset is within this of the truth.
    pub uncertainty_ns: i64,
}

impl MonoToTai {
    /// From the tightest of `reads` (the TAI read against the middle of its monotonic
    /// bracket); `None` without a read.
    pub fn from_brackets(reads: &[Bracket]) -> Option<MonoToTai> {
        let b = reads
            .iter()
            .min_by_key(|b| b.mono_after.saturating_sub(b.mono_before))?;
        let width = b.mono_after.saturating_sub(b.mono_before) as i64;
        let mid = b.mono_before as i64 + width / 2;
        Some(MonoToTai {
            offset_ns: b.tai as i64 - mid,
            uncertainty_ns: (width + 1) / 2,
        })
    }

    /// Whether `new` is another offset than `self` (a step of CLOCK_REALTIME/TAI), not the
    /// same one measured again: the two differ by more than their uncertainties allow.
    pub fn changed(&self, new: &MonoToTai) -> bool {
        (new.offset_ns - self.offset_ns).abs() > self.uncertainty_ns + new.uncertainty_ns
    }
}

/// Bracketed reads per measurement of [`mono_to_tai`].
const MONO_TO_TAI_READS: usize = 5;

/// CLOCK_TAI − CLOCK_MONOTONIC now: what the programs add to `bpf_ktime_get_ns` when the kernel
/// has no `bpf_ktime_get_tai_ns`. It changes when CLOCK_REALTIME or the TAI offset is stepped
/// (settimeofday, a leap second), not when NTP slews the clock (both clocks run at the slewed
/// rate), so a refresh about once a second keeps it.
pub fn mono_to_tai() -> MonoToTai {
    let reads: [Bracket; MONO_TO_TAI_READS] = std::array::from_fn(|_| Bracket::read());
    MonoToTai::from_brackets(&reads).expect("at least one read")
}

/// Converts a CLOCK_REALTIME instant to TAI.
pub fn realtime_to_tai(realtime_ns: u64, offset_ns: i64) -> u64 {
    (realtime_ns as i64 + offset_ns) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai_offset_matches_clock_difference() {
        let off = tai_offset_ns();
        let a = realtime_now_ns() as i64;
        let t = tai_now_ns() as i64;
        let b = realtime_now_ns() as i64;
        // TAI lies between the two REALTIME reads once shifted by the offset.
        assert!(
            t - off >= a && t - off <= b + 1_000_000,
            "off={off} a={a} t={t} b={b}"
        );
        assert_eq!(off % 1_000_000_000, 0);
    }

    fn br(mono_before: u64, tai: u64, mono_after: u64) -> Bracket {
        Bracket {
            mono_before,
            tai,
            mono_after,
        }
    }

    #[test]
    fn mono_to_tai_takes_the_tightest_bracket() {
        let reads = [
            // Preempted between the reads: 10 µs wide, a worse estimate.
            br(1_000, 5_000_007_000, 11_000),
            br(20_000, 5_000_020_050, 20_100),
            br(30_000, 5_000_030_100, 30_300),
        ];
        let m = MonoToTai::from_brackets(&reads).unwrap();
        assert_eq!(
            m,
            MonoToTai {
                offset_ns: 5_000_000_000,
                uncertainty_ns: 50
            }
        );
        assert_eq!(MonoToTai::from_brackets(&[]), None);
        // Odd widths round the uncertainty up.
        let m = MonoToTai::from_brackets(&[br(0, 1_000, 3)]).unwrap();
        assert_eq!((m.offset_ns, m.uncertainty_ns), (999, 2));
    }

    #[test]
    fn mono_to_tai_changes_only_beyond_its_uncertainty() {
        let a = MonoToTai {
            offset_ns: 1_000_000,
            uncertainty_ns: 40,
        };
        let same = MonoToTai {
            offset_ns: 1_000_070,
            uncertainty_ns: 40,
        };
        let stepped = MonoToTai {
            offset_ns: 1_000_000 + 1_000_000_000,
            uncertainty_ns: 40,
        };
        assert!(!a.changed(&same));
        assert!(a.changed(&stepped));
        assert!(stepped.changed(&a));
    }

    #[test]
    fn mono_to_tai_converts_monotonic_to_tai() {
        let m = mono_to_tai();
        assert!(
            m.uncertainty_ns >= 0 && m.uncertainty_ns < 1_000_000,
            "{m:?}"
        );
        let t0 = tai_now_ns() as i64;
        let mono = now(ClockId::CLOCK_MONOTONIC) as i64;
        let t1 = tai_now_ns() as i64;
        let tai = mono + m.offset_ns;
        let slack = m.uncertainty_ns + 1_000_000;
        assert!(
            tai >= t0 - slack && tai <= t1 + slack,
            "t0={t0} tai={tai} t1={t1} {m:?}"
        );
    }
}
