//! Clocks. Kernel stamps are CLOCK_TAI (`bpf_ktime_get_tai_ns`), so userspace uses TAI too;
//! socket timestamps arrive in CLOCK_REALTIME and are shifted by the kernel's TAI offset.
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
}
