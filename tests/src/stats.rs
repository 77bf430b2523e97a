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

/// Median (lower middle for even lengths) of `v`.
pub fn median<T: Copy + PartialOrd>(v: &[T]) -> Option<T> {
    percentile(v, 50.0)
}

/// `ns` as microseconds with two decimals, for messages.
pub fn us(ns: i64) -> String {
    format!("{:.2} µs", ns as f64 / 1000.0)
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
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(percentile::<i64>(&[], 50.0), None);
    }
}
