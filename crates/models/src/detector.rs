//! A detector: a logistic regression (linfa) over one scope's window
//! features, with the standardisation it was fitted with and thresholds
//! calibrated on healthy windows to a target false-alert rate.
//!
//! Why logistic regression: the simulator (and an analyst's labels) give
//! labelled windows, the features are already relative to each entity's
//! baseline, and a linear model's per-feature contributions are the alert's
//! reasons, which an on-call engineer can check against the dashboard.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use termwatch_telemetry::alerts::{AlertKind, Reason, Scope};

/// Standardised features are clipped to this many standard deviations, so
/// one absurd reading cannot dominate a score.
const CLIP: f64 = 8.0;

/// The critical threshold that switches the at-once tier off.
pub const CRITICAL_OFF: f64 = 1.0;

/// Whether `score` is critical under `critical_threshold`; never when the
/// tier is off.
pub fn is_critical(score: f64, critical_threshold: f64) -> bool {
    critical_threshold < CRITICAL_OFF && score >= critical_threshold
}

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("{kind} {scope}: {what}")]
    Training { kind: AlertKind, scope: Scope, what: String },
}

/// A fitted detector, plain data: what is saved in a model artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detector {
    pub kind: AlertKind,
    pub scope: Scope,
    pub feature_names: Vec<String>,
    /// Standardisation: z = (x - mean) / scale.
    pub means: Vec<f64>,
    pub scales: Vec<f64>,
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// A window scoring at or above this is bad; `k` bad windows in a row
    /// fire a warning.
    pub threshold: f64,
    /// A window scoring at or above this is critical: it fires an alert at
    /// once, severity critical. Calibrated with `threshold` against one
    /// false-alert budget; 1.0 switches the tier off (a logistic score can
    /// round to exactly 1.0, so 1.0 is tested as "off", not as a level).
    pub critical_threshold: f64,
    /// While an alert of this detector fires, a window holds it up when it
    /// scores at or above this (at most `threshold`), and only a run of
    /// windows below it resolves the alert. None: `threshold` itself, as in
    /// artifacts from before `termwatch-default-45`. Training sets it for
    /// the kinds given a resolve target (`TrainConfig::resolve_targets`):
    /// `models/default`'s firmware, whose strict threshold a regression's
    /// overnight ebb falls below (`policy::AlertingConfig` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_threshold: Option<f64>,
    /// What the fleet being watched is compared with before the service
    /// moves `threshold` (`termwatch_alerts::calibration`); None in
    /// artifacts from before `termwatch-default-12`, and for the detectors
    /// training leaves out (firmware and aging: `training::fit_one` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReference>,
}

/// The training fleets' scores at one upper quantile, and how far a
/// fleet's may lift the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetReference {
    /// The share of windows above the quantile compared (0.01 to 0.5).
    pub share: f64,
    /// The log-odds of the training windows' score at that share (every
    /// window the detector scored, incidents included, as a fleet's are).
    pub logit: f64,
    /// The highest threshold at which the `k` rule alone still catches
    /// `RECALL_KEPT` of the training incidents the trained threshold
    /// catches: what a fleet's scores may never lift it past.
    pub max_threshold: f64,
    /// The same comparison on entities' daily peaks, where a fleet's false
    /// alerts are; None in artifacts from before `termwatch-default-53`.
    /// (Always written: state snapshots keep the reference in postcard,
    /// which cannot skip a field.)
    #[serde(default)]
    pub peaks: Option<PeakReference>,
}

/// The training fleets' daily peaks at one upper quantile. An entity's
/// daily peak is the highest score two of its consecutive windows both
/// reach in a UTC day (what an alert needs), in log-odds: the statistic a
/// fleet whose healthy days page is told apart by, where the share of
/// windows [`FleetReference`] compares holds no false alert.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakReference {
    /// The share of entity-days above the quantile compared (0.02 to 0.5).
    pub share: f64,
    /// The log-odds of the training fleets' daily peaks at that share.
    pub logit: f64,
    /// The most the daily peaks may lift the threshold, in log-odds: from
    /// the trained threshold to the 5th percentile of the daily peaks of
    /// the training incidents' days that the trained threshold catches.
    pub max_shift: f64,
}

/// A UTC day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since the epoch) whose daily peak a window ending at
/// `end_ms` counts in: a window ending at midnight is the day before's.
pub fn day_of(end_ms: i64) -> i64 {
    (end_ms - 1).div_euclid(DAY_MS)
}

/// Log-odds of a score; scores of 0 and 1 are held within 1e-12 of them.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    (p / (1.0 - p)).ln()
}

/// The score of a log-odds.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Detector {
    /// Fits on rows of features (`x`, one row per window) with labels `y`
    /// (true: inside an incident of this kind and scope).
    pub fn fit(
        kind: AlertKind,
        scope: Scope,
        feature_names: &[&str],
        x: &[Vec<f64>],
        y: &[bool],
        l2: f64,
    ) -> Result<Detector, DetectorError> {
        let err = |what: String| DetectorError::Training { kind, scope, what };
        let d = feature_names.len();
        if x.is_empty() || x.len() != y.len() {
            return Err(err(format!("{} rows and {} labels", x.len(), y.len())));
        }
        let positives = y.iter().filter(|&&v| v).count();
        if positives == 0 || positives == y.len() {
            return Err(err(format!("needs both classes; {positives} positive of {} windows", y.len())));
        }
        let n = x.len() as f64;
        let mut means = vec![0.0; d];
        let mut scales = vec![0.0; d];
        for row in x {
            for (m, v) in means.iter_mut().zip(row) {
                *m += v / n;
            }
        }
        for row in x {
            for ((s, v), m) in scales.iter_mut().zip(row).zip(&means) {
                *s += (v - m).powi(2) / n;
            }
        }
        for s in &mut scales {
            *s = s.sqrt().max(1e-9);
        }
        let mut records = Array2::<f64>::zeros((x.len(), d));
        for (i, row) in x.iter().enumerate() {
            for j in 0..d {
                records[[i, j]] = standardise(row[j], means[j], scales[j]);
            }
        }
        let targets = Array1::from_vec(y.to_vec());
        let dataset = Dataset::new(records, targets);
        let fitted = LogisticRegression::default()
            .alpha(l2)
            .max_iterations(300)
            .fit(&dataset)
            .map_err(|e| err(format!("fitting failed: {e}")))?;
        // linfa-logistic models the probability of whichever class had more
        // samples: turn it around when that is the healthy class.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        Ok(Detector {
            kind,
            scope,
            feature_names: feature_names.iter().map(|s| s.to_string()).collect(),
            means,
            scales,
            weights: fitted.params().iter().map(|w| sign * w).collect(),
            intercept: sign * fitted.intercept(),
            threshold: 0.5,
            critical_threshold: CRITICAL_OFF,
            resolve_threshold: None,
            fleet: None,
        })
    }

    /// Whether a window with this score is critical (fires at once).
    pub fn is_critical(&self, score: f64) -> bool {
        is_critical(score, self.critical_threshold)
    }

    /// The level a window must reach to hold a firing alert up while the
    /// detector's threshold in use is `threshold`: the resolve threshold,
    /// never above the threshold (fleet calibration may have lowered
    /// neither, but an artifact's may be inconsistent).
    pub fn hold_threshold(&self, threshold: f64) -> f64 {
        self.resolve_threshold.map_or(threshold, |r| r.min(threshold))
    }

    /// The probability that this window is inside an incident, 0-1.
    pub fn score(&self, x: &[f64]) -> f64 {
        let z = self.intercept
            + self
                .weights
                .iter()
                .zip(x)
                .zip(self.means.iter().zip(&self.scales))
                .map(|((w, v), (m, s))| w * standardise(*v, *m, *s))
                .sum::<f64>();
        let p = 1.0 / (1.0 + (-z).exp());
        if p.is_finite() { p } else { 0.0 }
    }

    /// The features that pushed the score up most, most important first,
    /// each with the baseline it was measured against.
    pub fn reasons(&self, x: &[f64], baselines: &[f64], most: usize) -> Vec<Reason> {
        let mut c: Vec<(f64, usize)> = (0..self.weights.len().min(x.len()))
            .map(|j| (self.weights[j] * standardise(x[j], self.means[j], self.scales[j]), j))
            .filter(|(v, _)| *v > 0.0)
            .collect();
        c.sort_by(|a, b| b.0.total_cmp(&a.0));
        c.into_iter()
            .take(most)
            .map(|(_, j)| Reason {
                feature: self.feature_names[j].clone(),
                value: round(x[j]),
                baseline: round(baselines.get(j).copied().unwrap_or(self.means[j])),
                baseline_version: None,
            })
            .collect()
    }
}

fn standardise(v: f64, mean: f64, scale: f64) -> f64 {
    let z = (v - mean) / scale;
    if z.is_finite() { z.clamp(-CLIP, CLIP) } else { 0.0 }
}

fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_separable_signal_and_explains_it() {
        // Feature 0 carries the signal, feature 1 is noise.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let pos = i % 10 == 0;
            let noise = ((i * 7919) % 100) as f64 / 100.0;
            x.push(vec![if pos { 3.0 + noise } else { noise }, noise]);
            y.push(pos);
        }
        let d = Detector::fit(AlertKind::NetworkDegradation, Scope::Region, &["signal", "noise"], &x, &y, 0.1)
            .expect("fits");
        assert!(d.score(&[3.5, 0.5]) > 0.9, "{}", d.score(&[3.5, 0.5]));
        assert!(d.score(&[0.5, 0.5]) < 0.1, "{}", d.score(&[0.5, 0.5]));
        let reasons = d.reasons(&[3.5, 0.5], &[0.4, 0.5], 2);
        assert_eq!(reasons[0].feature, "signal");
        assert_eq!(reasons[0].baseline, 0.4);
    }

    #[test]
    fn refuses_one_class_training_data() {
        let x = vec![vec![1.0], vec![2.0]];
        let err = Detector::fit(AlertKind::HardwareAging, Scope::Terminal, &["a"], &x, &[false, false], 1.0)
            .expect_err("one class");
        assert!(err.to_string().contains("both classes"), "{err}");
    }

    #[test]
    fn the_hold_threshold_is_the_resolve_threshold_never_above_the_threshold_in_use() {
        let mut d = Detector::fit(
            AlertKind::FirmwareRegression,
            Scope::Cohort,
            &["a"],
            &[vec![0.0], vec![5.0]],
            &[false, true],
            0.1,
        )
        .expect("fits");
        assert_eq!(d.hold_threshold(0.87), 0.87, "none: the threshold itself");
        d.resolve_threshold = Some(0.535);
        assert_eq!(d.hold_threshold(0.87), 0.535);
        assert_eq!(d.hold_threshold(0.4), 0.4, "a threshold in use below it wins");
        let json = serde_json::to_string(&d).expect("serialises");
        assert!(json.contains("\"resolve_threshold\":0.535"), "{json}");
        d.resolve_threshold = None;
        assert!(
            !serde_json::to_string(&d).expect("serialises").contains("resolve_threshold"),
            "older artifacts read alike"
        );
    }

    #[test]
    fn non_finite_features_do_not_poison_a_score() {
        let x = vec![vec![0.0], vec![1.0], vec![5.0], vec![6.0]];
        let d = Detector::fit(AlertKind::HardwareAging, Scope::Terminal, &["a"], &x, &[false, false, true, true], 0.1)
            .expect("fits");
        let s = d.score(&[f64::NAN]);
        assert!((0.0..=1.0).contains(&s));
    }
}
