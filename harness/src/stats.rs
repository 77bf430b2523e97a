//! Small statistics helpers for measured values.

/// Nearest-rank percentile (`p` in 0..=100) of `v`; `None` when empty.
pub fn percentile<T: Copy + PartialOrd>(v: &[T], p: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// A value two samples can be averaged into (the median of an even count).
pub trait Midpoint: Copy + PartialOrd {
    fn midpoint_with(self, other: Self) -> Self;
}

macro_rules! midpoint {
    ($($t:ty),*) => {$(
        impl Midpoint for $t {
            fn midpoint_with(self, other: Self) -> Self {
                self.midpoint(other)
            }
        }
    )*};
}
midpoint!(i64, u64, u32, f64);

/// The median of `v`: the middle value, or the mean of the two middle values for an even count
/// (integers round toward negative infinity); `None` when empty. The one median of the tests,
/// the lab and the bench.
pub fn median<T: Midpoint>(v: &[T]) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        s[n / 2 - 1].midpoint_with(s[n / 2])
    })
}

/// `ns` as microseconds with two decimals, for messages.
pub fn us(ns: i64) -> String {
    format!("{:.2} µs", ns as f64 / 1000.0)
}

/// Interquartile range (p75 − p25) of `v`; `None` when empty.
pub fn iqr(v: &[i64]) -> Option<i64> {
    Some(percentile(v, 75.0)? - percentile(v, 25.0)?)
}

/// Half-width of the ~95 % confidence interval of the median of `v`: 1.57·IQR/√n (McGill,
/// Tukey and Larsen 1978, the notch of a box plot); `None` when empty.
pub fn median_ci(v: &[i64]) -> Option<i64> {
    Some((1.57 * iqr(v)? as f64 / (v.len() as f64).sqrt()).ceil() as i64)
}

/// How many times the run's own noise a measured shift may stray from the expected one. The
/// noise is measured in the same run (a median's confidence interval, the drift between repeated
/// runs of one condition), so a slower or noisier machine widens the bound with it; 4 noise
/// units is well past the 95 % interval a single unit already is.
pub const NOISE_K: i64 = 4;

/// Floor of the noise estimate: a run whose samples are all alike would otherwise demand a
/// shift exact to the nanosecond, finer than any delay a test can add.
pub const NOISE_FLOOR_NS: i64 = 1_000;

/// A shift of the median between baseline runs and treated runs measured in alternation
/// (A B B A, so linear drift cancels), with the noise of those same runs.
#[derive(Clone, Debug)]
pub struct Shift {
    /// Median of all baseline samples, ns.
    pub baseline: i64,
    /// Median of all treated samples, ns.
    pub treated: i64,
    /// `treated − baseline`, ns.
    pub added: i64,
    /// The largest of: each run's median confidence interval, the spread of the baseline runs'
    /// medians and that of the treated runs' medians (drift); at least [`NOISE_FLOOR_NS`].
    pub noise: i64,
}

impl Shift {
    /// `None` when a run is empty.
    pub fn of(baseline: &[Vec<i64>], treated: &[Vec<i64>]) -> Option<Shift> {
        let spread = |runs: &[Vec<i64>]| -> Option<i64> {
            let meds = runs.iter().map(|r| median(r)).collect::<Option<Vec<_>>>()?;
            Some(meds.iter().max()? - meds.iter().min()?)
        };
        let mut noise = NOISE_FLOOR_NS.max(spread(baseline)?).max(spread(treated)?);
        for r in baseline.iter().chain(treated) {
            noise = noise.max(median_ci(r)?);
        }
        let b = median(&baseline.concat())?;
        let t = median(&treated.concat())?;
        Some(Shift {
            baseline: b,
            treated: t,
            added: t - b,
            noise,
        })
    }

    /// [`NOISE_K`] × the noise.
    pub fn tolerance(&self) -> i64 {
        NOISE_K * self.noise
    }

    pub fn report(&self) -> String {
        format!(
            "median {} -> {}: added {} (noise {}, tolerance ±{})",
            us(self.baseline),
            us(self.treated),
            us(self.added),
            us(self.noise),
            us(self.tolerance())
        )
    }

    /// The tolerance is below half of `effect`, so a shift of that size would land outside it:
    /// a run too noisy to tell the effect from none fails rather than passes. `judged` names
    /// the effect in the message.
    fn resolves(&self, effect: i64, what: &str, judged: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            2 * self.tolerance() < effect.abs(),
            "{what}: too noisy to {judged} {}: {}",
            us(effect),
            self.report()
        );
        Ok(())
    }

    /// The shift is `expected` within the tolerance, and the run resolves `expected`.
    pub fn check(&self, expected: i64, what: &str) -> anyhow::Result<()> {
        self.resolves(expected, what, "judge a shift of")?;
        anyhow::ensure!(
            (self.added - expected).abs() <= self.tolerance(),
            "{what}: expected a shift of {}, measured {}",
            us(expected),
            self.report()
        );
        Ok(())
    }

    /// Like [`Shift::check`], for a delay added by a tool that can only hold packets longer than
    /// asked, never shorter: the shift may exceed `expected` by `slack_above` more than the
    /// tolerance.
    pub fn check_added(&self, expected: i64, slack_above: i64, what: &str) -> anyhow::Result<()> {
        self.resolves(expected, what, "judge a shift of")?;
        let over = self.added - expected;
        anyhow::ensure!(
            -self.tolerance() <= over && over <= self.tolerance() + slack_above,
            "{what}: expected a shift of {} (up to {} more), measured {}",
            us(expected),
            us(slack_above),
            self.report()
        );
        Ok(())
    }

    /// For the time a packet spends inside a hop that holds it: at least `asked` with the tool
    /// on (a hold is never shorter than asked), and the rise over the baseline at most
    /// `slack_above` beyond `asked` (within the tolerance). The lower bound is on the time
    /// itself, not the rise: the hold may overlap part of the hop's usual work (a capture's
    /// reader waking on the other CPU, a softirq), so the rise can be a little short of
    /// `asked` while every packet was still held `asked`.
    pub fn check_held(&self, asked: i64, slack_above: i64, what: &str) -> anyhow::Result<()> {
        self.resolves(asked, what, "judge a hold of")?;
        anyhow::ensure!(
            self.treated >= asked - self.tolerance()
                && self.added - asked <= self.tolerance() + slack_above,
            "{what}: expected at least {} inside the hop, rising by at most {} more than that, \
             measured {}",
            us(asked),
            us(slack_above),
            self.report()
        );
        Ok(())
    }

    /// No shift within the tolerance, and the run resolves `if_broken`, the shift a defect
    /// would cause.
    pub fn check_unchanged(&self, if_broken: i64, what: &str) -> anyhow::Result<()> {
        self.resolves(if_broken, what, "tell from none a shift of")?;
        anyhow::ensure!(
            self.added.abs() <= self.tolerance(),
            "{what}: expected no shift, measured {}",
            self.report()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(median(&[3i64, 1, 2]), Some(2));
        assert_eq!(median(&[4i64, 1, 2, 3]), Some(2));
        assert_eq!(median(&[4i64, 1, 2, 5]), Some(3));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median::<i64>(&[]), None);
        assert_eq!(percentile::<i64>(&[], 50.0), None);
    }

    #[test]
    fn shift_within_noise() {
        let a1: Vec<i64> = (0..100).map(|i| 10_000 + i * 10).collect();
        let b1: Vec<i64> = a1.iter().map(|x| x + 500_000).collect();
        let a2: Vec<i64> = a1.iter().map(|x| x + 2_000).collect();
        let b2: Vec<i64> = b1.iter().map(|x| x + 2_000).collect();
        let s = Shift::of(&[a1.clone(), a2.clone()], &[b1, b2]).unwrap();
        assert_eq!(s.added, 500_000);
        assert_eq!(s.noise, 2_000);
        assert!(s.check(500_000, "t").is_ok());
        assert!(s.check(520_000, "t").is_err());
        // Too noisy: the tolerance (8 µs) is not below half of a 10 µs effect.
        assert!(s.check(10_000, "t").is_err());
        let u = Shift::of(std::slice::from_ref(&a1), &[a2]).unwrap();
        assert!(u.check_unchanged(5_000_000, "t").is_ok());
        // Too noisy: the tolerance (4 µs) is not below half of a 6 µs defect.
        assert!(u.check_unchanged(6_000, "t").is_err());
        // A 2 µs shift is within the 4 µs tolerance, which is below half of a 10 µs defect.
        assert!(u.check_unchanged(10_000, "t").is_ok());
        assert!(Shift::of(&[a1], &[vec![]]).is_none());
    }

    #[test]
    fn a_hold_is_judged_by_the_time_inside_the_hop() {
        let s = |baseline: i64, treated: i64| Shift {
            baseline,
            treated,
            added: treated - baseline,
            noise: 2_000,
        };
        // Asked 2 ms: 24 µs baseline, 2012.85 µs held — the rise (1988.85 µs) is short of the
        // ask by part of the usual transit the hold overlapped, but every packet was inside
        // the hop at least 2 ms.
        assert!(
            s(24_000, 2_012_850)
                .check_held(2_000_000, 500_000, "t")
                .is_ok()
        );
        // Held less than asked: refused, whatever the rise.
        assert!(s(0, 1_980_000).check_held(2_000_000, 500_000, "t").is_err());
        // Held far longer than asked plus the slack: refused.
        assert!(
            s(24_000, 2_600_000)
                .check_held(2_000_000, 500_000, "t")
                .is_err()
        );
        // The ask must be resolvable against the noise.
        assert!(s(0, 10_000).check_held(10_000, 0, "t").is_err());
    }
}
