//! Small statistics over a scenario's samples (the median is the harness's).

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Median (mean of the two middle values for even lengths).
/// The harness's median; NaN when empty (a table cell, not a decision).
pub fn median(v: &[f64]) -> f64 {
    meshprobe_harness::stats::median(v).unwrap_or(f64::NAN)
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A duration in milliseconds, 0.1 ms resolution.
pub fn fmt_ms(ms: f64) -> String {
    format!("{ms:.1} ms")
}

pub fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        return "—".into();
    }
    // Thin grouping of thousands.
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert!(median(&[]).is_nan());
        assert_eq!(min(&[2.0, 1.0]), 1.0);
        assert_eq!(max(&[2.0, 1.0]), 2.0);
    }
}
