//! The simulator's own pseudo-random numbers.
//!
//! Written here rather than taken from `rand` so that the bytes a seed
//! produces never change with a third-party crate's version.
//!
//! - [`SplitMix64`] (Steele, Lea and Flood 2014) expands a 64-bit seed into
//!   well-mixed words; it seeds the main generator and serves as a stateless
//!   hash ([`mix`]) for values that must be the same wherever they are asked
//!   for (the activity of a site's mains problem at a tick, seen alike by
//!   every terminal of the site).
//! - [`Rng`] is xoshiro256** (Blackman and Vigna 2018): fast, 256 bits of
//!   state, passes BigCrush; seeded with four SplitMix64 outputs.
//!
//! Samplers: uniform, normal (Marsaglia's polar method, caching the spare),
//! exponential (inversion), Poisson (Knuth's product method below a mean of
//! 30, a rounded normal above) and binomial (Bernoulli trials up to 40
//! trials, a rounded normal beyond). `ln`, `sqrt` and `exp` come from the
//! platform's libm: output is byte-identical for a seed with the same build on
//! the same platform.

/// SplitMix64: a 64-bit counter passed through a strong finaliser.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalise(self.0)
    }
}

fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stateless hash of a few words, for randomness that must not depend on
/// the order in which it is asked for.
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    let h = finalise(a.wrapping_add(0x9E37_79B9_7F4A_7C15));
    let h = finalise(h ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    finalise(h ^ c.wrapping_mul(0xA076_1D64_78BD_642F))
}

/// [`mix`] as a uniform number in `[0, 1)`.
pub fn mix_unit(a: u64, b: u64, c: u64) -> f64 {
    to_unit(mix(a, b, c))
}

fn to_unit(x: u64) -> f64 {
    // The top 53 bits, exactly representable.
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// xoshiro256** with the samplers the simulator needs.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

impl Rng {
    /// Seeds the state with four SplitMix64 outputs (never all zero).
    pub fn new(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Rng { s, spare_normal: None }
    }

    /// An independent stream for a named purpose, so that adding draws to
    /// one part of the simulator does not shift every other part.
    pub fn stream(seed: u64, purpose: u64) -> Self {
        Rng::new(mix(seed, purpose, 0x5EED))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        to_unit(self.next_u64())
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift
    /// (the bias is below 2^-32 for the small `n` used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal, by Marsaglia's polar method.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.unit() - 1.0;
            let v = 2.0 * self.unit() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare_normal = Some(v * f);
                return u * f;
            }
        }
    }

    /// Normal with the given mean and standard deviation.
    pub fn gauss(&mut self, mean: f64, sd: f64) -> f64 {
        mean + sd * self.normal()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        // 1 - unit() lies in (0, 1], so the logarithm is finite.
        -mean * (1.0 - self.unit()).ln()
    }

    /// Poisson with mean `lambda` (0 when `lambda <= 0`).
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 || !lambda.is_finite() {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut k = 0u32;
            let mut p = self.unit();
            while p > limit {
                k += 1;
                p *= self.unit();
            }
            k
        } else {
            let x = self.gauss(lambda, lambda.sqrt()).round();
            x.clamp(0.0, f64::from(u32::MAX)) as u32
        }
    }

    /// Binomial: successes in `n` trials of probability `p`.
    pub fn binomial(&mut self, n: u32, p: f64) -> u32 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if n <= 40 {
            (0..n).filter(|_| self.unit() < p).count() as u32
        } else {
            let mean = f64::from(n) * p;
            let sd = (mean * (1.0 - p)).sqrt();
            self.gauss(mean, sd).round().clamp(0.0, f64::from(n)) as u32
        }
    }

    /// Picks an index with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn xoshiro_reference_output() {
        // First outputs of xoshiro256** from state {1, 2, 3, 4} (reference C code).
        let mut r = Rng { s: [1, 2, 3, 4], spare_normal: None };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1509978240);
        assert_eq!(r.next_u64(), 1215971899390074240);
    }

    #[test]
    fn splitmix_reference_output() {
        // SplitMix64 seeded with 1234567 (reference C code).
        let mut s = SplitMix64::new(1234567);
        assert_eq!(s.next_u64(), 6457827717110365317);
        assert_eq!(s.next_u64(), 3203168211198807973);
    }

    #[test]
    fn samplers_have_the_right_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut sum, mut sq) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            sum += z;
            sq += z * z;
        }
        let mean = sum / f64::from(n);
        assert!(mean.abs() < 0.01, "normal mean {mean}");
        assert!((sq / f64::from(n) - 1.0).abs() < 0.02);

        let e: f64 = (0..n).map(|_| r.exponential(3.0)).sum::<f64>() / f64::from(n);
        assert!((e - 3.0).abs() < 0.05, "exponential mean {e}");

        for lambda in [0.3, 4.0, 55.0] {
            let p: f64 = (0..n).map(|_| f64::from(r.poisson(lambda))).sum::<f64>() / f64::from(n);
            assert!((p - lambda).abs() < 0.03 * lambda.max(1.0), "poisson {lambda}: {p}");
        }
        for (trials, prob) in [(10u32, 0.2), (500, 0.05)] {
            let b: f64 = (0..n).map(|_| f64::from(r.binomial(trials, prob))).sum::<f64>() / f64::from(n);
            let want = f64::from(trials) * prob;
            assert!((b - want).abs() < 0.03 * want, "binomial {trials} {prob}: {b}");
        }
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
        }
        let u = mix_unit(1, 2, 3);
        assert!((0.0..1.0).contains(&u));
        assert_eq!(mix(1, 2, 3), mix(1, 2, 3));
        assert_ne!(mix(1, 2, 3), mix(1, 2, 4));
    }
}
