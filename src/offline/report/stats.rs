//! Proportions and their confidence intervals. Undefined values (a zero denominator) are `None`,
//! never NaN, so every renderer prints "n/a" for them.

use serde::Serialize;

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.96;

/// `num / den`, or `None` when `den` is 0.
pub fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// The Wilson score interval for `hits` successes in `n` trials at `z`; `None` when `n` is 0.
/// Unlike the normal approximation it stays within [0, 1] and behaves at 0 and `n` hits.
pub fn wilson(hits: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    wilson_at(hits as f64 / n as f64, n as f64, z)
}

/// The Wilson score interval around a share `p` over `n` trials, `n` possibly fractional (an
/// effective sample size); `None` when `n` is not positive.
pub fn wilson_at(p: f64, n: f64, z: f64) -> Option<(f64, f64)> {
    if n.is_nan() || n <= 0.0 {
        return None;
    }
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// A proportion with the count behind it and its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub hits: u64,
    /// The denominator: how many cases the proportion is over.
    pub n: u64,
    pub value: Option<f64>,
    pub ci95: Option<(f64, f64)>,
}

impl Estimate {
    pub fn new(hits: u64, n: u64) -> Estimate {
        Estimate { hits, n, value: ratio(hits, n), ci95: wilson(hits, n, Z95) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    #[test]
    fn wilson_matches_hand_computed_intervals() {
        // 8/10: p = 0.8, z^2/n = 0.38416, centre 0.99208/1.38416 = 0.71674,
        // half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22658.
        let (lo, hi) = wilson(8, 10, Z95).unwrap();
        assert!(close(lo, 0.490) && close(hi, 0.943), "{lo} {hi}");
        // 0/10: [0, z^2/(n + z^2)] = [0, 3.8416/13.8416] = [0, 0.2775].
        let (lo, hi) = wilson(0, 10, Z95).unwrap();
        assert!(lo == 0.0 && close(hi, 0.2775), "{lo} {hi}");
        // 10/10 mirrors it.
        let (lo, hi) = wilson(10, 10, Z95).unwrap();
        assert!(close(lo, 0.7225) && hi == 1.0, "{lo} {hi}");
        // 50/100: centre 0.5, half-width 1.96 * sqrt(0.0025 + 0.00009604) / 1.038416 = 0.09617.
        let (lo, hi) = wilson(50, 100, Z95).unwrap();
        assert!(close(lo, 0.4038) && close(hi, 0.5962), "{lo} {hi}");
    }

    #[test]
    fn a_zero_denominator_is_undefined_not_nan() {
        assert_eq!(wilson(0, 0, Z95), None);
        assert_eq!(ratio(3, 0), None);
        let e = Estimate::new(0, 0);
        assert_eq!((e.value, e.ci95), (None, None));
        assert_eq!(Estimate::new(3, 4).value, Some(0.75));
    }
}
