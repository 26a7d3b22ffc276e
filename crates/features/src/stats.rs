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

    /// What learning can leave: a finite mean, of a weight at least zero.
    pub fn is_sound(&self) -> bool {
        self.mean.is_finite() && self.weight.is_finite() && self.weight >= 0.0
    }
}

/// A level and its spread, learnt together: an exponentially weighted mean
/// and mean squared deviation from it. Evidence is measured in units of the
/// entity's own spread, so a fleet whose healthy readings wander by 20 % is
/// judged against 20 %, and one that wanders by 1 % against 1 %: a ratio to
/// a baseline mean would carry one fleet's noise level into the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub level: Ewma,
    /// Mean squared deviation from `level`.
    pub var: Ewma,
}

/// A deviation counts at most this many standard deviations towards the
/// spread: one wild reading cannot widen it by much, yet a spread that
/// started too narrow still grows (each step can multiply it by up to this).
const SPREAD_CLIP: f64 = 4.0;

impl Spread {
    /// What learning can leave: a finite level, and a finite mean square
    /// deviation of at least zero.
    pub fn is_sound(&self) -> bool {
        self.level.is_sound() && self.var.is_sound() && self.var.mean >= 0.0
    }

    /// The standard deviation, at least `floor`.
    pub fn sd(&self, floor: f64) -> f64 {
        f64::from(self.var.mean).max(0.0).sqrt().max(floor)
    }

    /// How many of its own standard deviations `x` lies above the level,
    /// once `min_weight` values were learnt.
    pub fn z(&self, x: f64, floor: f64, min_weight: f32) -> Option<f64> {
        if self.level.weight < min_weight || !x.is_finite() {
            return None;
        }
        Some((x - f64::from(self.level.mean)) / self.sd(floor))
    }

    /// The level and standard deviation its next value is expected at,
    /// once `min_weight` values were learnt.
    pub fn expected(&self, floor: f64, min_weight: f32) -> Option<(f64, f64)> {
        (self.level.weight >= min_weight).then(|| (f64::from(self.level.mean), self.sd(floor)))
    }

    /// The level and standard deviation a young entity's next value is
    /// expected at, once its cohort has `min_weight` values of both its
    /// spread and its members' own (`within`): its own values so far,
    /// shrunk towards the cohort's level by how far members' levels lie
    /// apart, and the spread of one value about a level known that well.
    /// With none of its own it is the cohort's (a young terminal at a
    /// cohort's extreme is unusual); after a few it is mostly its own (a
    /// site whose supply is always a little low has not dropped).
    pub fn expected_young(&self, cohort: &Spread, within: &Ewma, floor: f64, min_weight: f32) -> Option<(f64, f64)> {
        if cohort.level.weight < min_weight || within.weight < min_weight {
            return None;
        }
        let floor_var = floor * floor;
        let within = f64::from(within.mean).max(floor_var);
        // The cohort's spread is that of members' values about its level:
        // its members' own spread plus how far their levels lie apart.
        let between = (f64::from(cohort.var.mean) - within).max(floor_var);
        let cohort_level = f64::from(cohort.level.mean);
        let n = f64::from(self.level.weight);
        let (level, level_var) = if n > 0.0 {
            let precision = 1.0 / between + n / within;
            ((cohort_level / between + n * f64::from(self.level.mean) / within) / precision, 1.0 / precision)
        } else {
            (cohort_level, between)
        };
        Some((level, (within + level_var).sqrt()))
    }

    /// How far `x` lies from this entity's own level, scaled to the spread
    /// of one value about the level (a value's deviation from the mean of
    /// n earlier ones has variance (1 + 1/n) times the spread), before `x`
    /// is learnt: what its cohort's pooled spread of members about their
    /// own levels ([`learn_within`]) learns from.
    pub fn within_deviation(&self, x: f64) -> Option<f64> {
        let level = self.level.get()?;
        let n = f64::from(self.level.weight);
        x.is_finite().then(|| (x - level) * (n / (n + 1.0)).sqrt())
    }

    pub fn learn(&mut self, x: f64, alpha: f64, floor: f64) {
        if !x.is_finite() {
            return;
        }
        if let Some(level) = self.level.get() {
            let limit = SPREAD_CLIP * self.sd(floor);
            let d = (x - level).clamp(-limit, limit);
            self.var.update(d * d, alpha);
        }
        self.level.update(x, alpha);
    }
}

/// Learns one member's [`Spread::within_deviation`] into its cohort's
/// pooled spread of members about their own levels (a mean square), clipped
/// as [`Spread::learn`] clips.
pub fn learn_within(within: &mut Ewma, deviation: f64, alpha: f64, floor: f64) {
    let limit = within.get().map_or(f64::INFINITY, |w| SPREAD_CLIP * w.max(0.0).sqrt().max(floor));
    let d = deviation.clamp(-limit, limit);
    within.update(d * d, alpha);
}

/// FNV-1a 64-bit, for fingerprints and stable keys (not security).
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = hash;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Surprise is capped here (nats): beyond it, more is not more informative.
pub const MAX_SURPRISE: f64 = 30.0;

/// How surprising `k` or more events are when `mu` are expected (Poisson):
/// `-ln P(X >= k)`, in nats; 0 for none. Counters (sags, reboots,
/// reconnects) are judged against the entity's own rate this way, so a
/// fleet whose healthy supplies blip now and then learns that they do.
pub fn poisson_surprise(k: u32, mu: f64) -> f64 {
    if k == 0 || !mu.is_finite() {
        return 0.0;
    }
    let mu = mu.max(1e-9);
    let kf = f64::from(k);
    if kf <= mu {
        // At least as likely as not: no evidence worth the name.
        return 0.0;
    }
    // The first term of the tail, e^-mu mu^k / k!, in logs; then the tail's
    // sum relative to it, whose terms fall since k > mu.
    let ln_first = -mu + kf * mu.ln() - ln_factorial(k);
    let (mut sum, mut term, mut i) = (1.0f64, 1.0f64, kf);
    for _ in 0..1000 {
        i += 1.0;
        term *= mu / i;
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    (-(ln_first + sum.ln())).clamp(0.0, MAX_SURPRISE)
}

fn ln_factorial(k: u32) -> f64 {
    if k < 32 {
        (2..=k).map(|i| f64::from(i).ln()).sum()
    } else {
        // Stirling, with its first correction: exact to 1e-7 from 32 on.
        let n = f64::from(k);
        n * n.ln() - n + 0.5 * (2.0 * std::f64::consts::PI * n).ln() + 1.0 / (12.0 * n)
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

    /// A cohort of 40 members whose levels lie 0.1 apart (standard
    /// deviation) and whose own values wander 0.01 about them, read
    /// interleaved as a fleet's windows are.
    fn cohort_of_members() -> (Spread, Ewma) {
        let (mut cohort, mut within) = (Spread::default(), Ewma::default());
        let mut members = [Spread::default(); 40];
        let alpha = 1.0 / 2000.0;
        for step in 0..300 {
            for (m, own) in members.iter_mut().enumerate() {
                // Levels spread evenly over +-1.7 sd, noise alternating +-0.01.
                let level = 12.0 + 0.1 * 1.7 * (m as f64 / 19.5 - 1.0);
                let x = level + if (step + m) % 2 == 0 { 0.01 } else { -0.01 };
                if let Some(d) = own.within_deviation(x) {
                    learn_within(&mut within, d, alpha, 0.002);
                }
                own.learn(x, alpha, 0.002);
                cohort.learn(x, alpha, 0.002);
            }
        }
        (cohort, within)
    }

    #[test]
    fn the_pooled_within_spread_is_the_members_own_not_how_far_apart_they_are() {
        let (cohort, within) = cohort_of_members();
        let own_sd = within.get().unwrap_or_default().sqrt();
        assert!((own_sd - 0.01).abs() < 0.002, "{own_sd}");
        assert!(cohort.sd(0.002) > 0.08, "{}", cohort.sd(0.002));
    }

    #[test]
    fn a_young_member_is_judged_by_its_cohort_at_first_then_by_its_own_level() {
        let (cohort, within) = cohort_of_members();
        // A new member whose level is steadily 0.25 below the cohort's
        // (about 2.5 of the cohort's deviations): unusual, not a drop.
        let low = 12.0 - 0.25;
        let mut young = Spread::default();
        let z = |s: &Spread, x: f64| s.expected_young(&cohort, &within, 0.002, 24.0).map(|(l, sd)| (x - l) / sd);
        let first = z(&young, low).unwrap_or_default();
        assert!(first < -2.0, "with none of its own it is the cohort's outlier: {first}");
        for i in 0..3 {
            young.learn(low + if i % 2 == 0 { 0.01 } else { -0.01 }, 1.0 / 2000.0, 0.002);
        }
        let later = z(&young, low).unwrap_or_default();
        assert!(later.abs() < 0.5, "after three windows its own level rules: {later}");
        // A real drop from that level still stands out.
        let dropped = z(&young, low - 0.1).unwrap_or_default();
        assert!(dropped < -5.0, "{dropped}");
        // Nothing is said before the cohort knows its members' spread.
        assert_eq!(young.expected_young(&cohort, &Ewma::default(), 0.002, 24.0), None);
    }

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
    fn poisson_surprise_is_minus_the_log_of_the_tail() {
        assert_eq!(poisson_surprise(0, 0.1), 0.0);
        // P(X >= 1) = 1 - e^-mu.
        let mu: f64 = 0.05;
        assert!((poisson_surprise(1, mu) + (1.0 - (-mu).exp()).ln()).abs() < 1e-9);
        // P(X >= 2) at mu = 0.5: 1 - e^-0.5 (1 + 0.5).
        let p: f64 = 1.0 - (-0.5f64).exp() * 1.5;
        assert!((poisson_surprise(2, 0.5) + p.ln()).abs() < 1e-9);
        // More events are more surprising; a higher own rate makes them less so.
        assert!(poisson_surprise(5, 0.05) > poisson_surprise(2, 0.05));
        assert!(poisson_surprise(2, 0.5) < poisson_surprise(2, 0.05));
        assert_eq!(poisson_surprise(3, 4.0), 0.0);
        assert_eq!(poisson_surprise(10_000, 1e-9), MAX_SURPRISE);
        assert!(poisson_surprise(40, 10.0).is_finite());
    }

    #[test]
    fn spread_learns_its_own_scale_and_an_outlier_barely_widens_it() {
        let mut s = Spread::default();
        assert_eq!(s.z(1.0, 0.01, 1.0), None);
        // Alternating +-0.2 around 1: a standard deviation of 0.2.
        for i in 0..2000 {
            s.learn(if i % 2 == 0 { 1.2 } else { 0.8 }, 1.0 / 500.0, 0.01);
        }
        assert!((s.sd(0.01) - 0.2).abs() < 0.02, "{}", s.sd(0.01));
        let z = s.z(1.6, 0.01, 1.0).unwrap_or_default();
        assert!((z - 3.0).abs() < 0.4, "{z}");
        let before = s.sd(0.01);
        s.learn(1000.0, 1.0 / 500.0, 0.01);
        assert!(s.sd(0.01) < before * 1.05, "{} {before}", s.sd(0.01));
        // The floor bounds it from below.
        let flat = {
            let mut f = Spread::default();
            for _ in 0..100 {
                f.learn(1.0, 0.01, 0.05);
            }
            f
        };
        assert_eq!(flat.sd(0.05), 0.05);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
