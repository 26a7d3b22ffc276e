use serde::{Deserialize, Serialize};

/// An exponentially weighted mean that knows how much it has seen, so a
/// young baseline can defer to its cohort's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub mean: f32,
    /// Effective number of observations, saturating at `1 / alpha`.
    pub weight: f32,
}

impl Ewma {
    pub fn update(&mut self, x: f64, alpha: f64) {
        if !x.is_finite() {
            return;
        }
        let w = f64::from(self.weight);
        // Until it has seen 1/alpha values it is a plain mean: no bias
        // towards the zero it started from.
        let a = (1.0 / (w + 1.0)).max(alpha);
        self.mean = (f64::from(self.mean) + a * (x - f64::from(self.mean))) as f32;
        self.weight = (w + 1.0).min(1.0 / alpha) as f32;
    }

    /// The mean, or `fallback` while fewer than `min_weight` values were seen.
    pub fn or(&self, fallback: f64, min_weight: f32) -> f64 {
        if self.weight >= min_weight { f64::from(self.mean) } else { fallback }
    }

    pub fn get(&self) -> Option<f64> {
        (self.weight > 0.0).then_some(f64::from(self.mean))
    }
}

/// Median of a small slice (sorted in place); `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_as_a_plain_mean_then_forgets() {
        let mut e = Ewma::default();
        e.update(10.0, 0.1);
        e.update(20.0, 0.1);
        assert!((e.mean - 15.0).abs() < 1e-5);
        for _ in 0..200 {
            e.update(100.0, 0.1);
        }
        assert!((e.mean - 100.0).abs() < 1e-3);
        assert_eq!(e.weight, 10.0);
    }

    #[test]
    fn ewma_ignores_non_finite_values() {
        let mut e = Ewma::default();
        e.update(f64::NAN, 0.1);
        assert_eq!(e.get(), None);
        assert_eq!(e.or(3.0, 1.0), 3.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
