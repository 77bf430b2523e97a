//! The plan of a step and its judgement: sessions × interval for an offered rate, which
//! probes are incomplete, whether a step holds, and which step gives the capacity.

use super::{MAX_MISSING, MIN_INTERVAL_NS};

/// Sessions and per-session interval that offer `rate` probes/s.
pub(super) fn plan_step(rate: u64) -> (u64, u64) {
    let per_session_max = 1_000_000_000 / MIN_INTERVAL_NS;
    let sessions = rate.div_ceil(per_session_max).max(1);
    (sessions, sessions * 1_000_000_000 / rate)
}

/// Probes of a step that lack at least one of the four stamps or the reply: `sent` less the
/// smallest of the stamp counts and the replies received. Exact when the gaps are nested (a
/// probe that lacks an earlier stamp lacks the later ones, as a lost request or reply does);
/// a lower bound otherwise (the stamp gaps are also listed one by one).
pub(super) fn missing(sent: u64, received: u64, stamps: [u64; 4]) -> u64 {
    let complete = stamps.iter().copied().fold(received, u64::min);
    sent.saturating_sub(complete)
}

/// Does a step hold: probes sent and at most [`MAX_MISSING`] of them incomplete?
pub(super) fn holds(sent: u64, missing: u64) -> bool {
    sent > 0 && missing as f64 <= sent as f64 * MAX_MISSING
}

/// The step that gives the capacity: the highest achieved rate among those that hold.
pub(super) fn pick_capacity(steps: &[(bool, f64)]) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, (ok, rate))| *ok && rate.is_finite() && *rate > 0.0)
        .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_plans() {
        assert_eq!(plan_step(10_000), (1, 100_000));
        assert_eq!(plan_step(50_000), (1, 20_000));
        assert_eq!(plan_step(100_000), (2, 20_000));
        assert_eq!(plan_step(400_000), (8, 20_000));
        assert_eq!(plan_step(70_000), (2, 28_571));
    }

    #[test]
    fn incomplete_probes() {
        // All stamped and answered.
        assert_eq!(missing(1000, 1000, [1000; 4]), 0);
        // A lost request: no t2, t3, t4, no reply.
        assert_eq!(missing(1000, 999, [1000, 999, 999, 999]), 1);
        // A reply dropped at the sender's socket after T4 was stamped.
        assert_eq!(missing(1000, 998, [1000, 1000, 1000, 1000]), 2);
        // A stamp failed on a packet that went on.
        assert_eq!(missing(1000, 1000, [1000, 1000, 997, 1000]), 3);
        // Never negative.
        assert_eq!(missing(10, 12, [12; 4]), 0);
        assert!(holds(1000, 1));
        assert!(!holds(1000, 2));
        assert!(holds(100_000, 100));
        assert!(!holds(0, 0));
    }

    #[test]
    fn capacity_pick() {
        assert_eq!(pick_capacity(&[]), None);
        assert_eq!(pick_capacity(&[(false, 1.0)]), None);
        // The highest achieved rate that held, not the last step that held.
        let s = [
            (true, 10_000.0),
            (true, 50_000.0),
            (false, 90_000.0),
            (true, 80_000.0),
            (true, f64::NAN),
        ];
        assert_eq!(pick_capacity(&s), Some(3));
    }
}
