//! Fleet calibration: each detector's threshold follows the fleet it
//! watches, upwards only and within what the training incidents allow.
//!
//! A detector's threshold is calibrated on the training fleets' healthy
//! windows to a false-alert budget. A fleet whose healthy measurements are
//! noisier than any the detector was trained on scores higher everywhere,
//! and at the trained threshold it would page far past its budget. The
//! budget's own tail (a few windows in 100,000) is too thin to watch on one
//! fleet in days, so calibration compares a thicker part of it: the score
//! a fleet's windows pass at a share of 1 % or more, against the training
//! windows' score at the same share (the artifact's [`FleetReference`];
//! both include their incidents' windows, the training fleets about four
//! times a real fleet's). Where the fleet's is higher by `d` in log-odds,
//! the threshold (and the critical one) rises by `d` in log-odds too, as if
//! the fleet's scores were the training's shifted by `d`; never above the
//! reference's `max_threshold`, the highest threshold at which the training
//! incidents are still caught (so an incident in progress, whose windows
//! are in the fleet's tail too, cannot lift the threshold past what it must
//! catch), and never below the trained threshold (a quieter fleet keeps
//! the trained sensitivity: a lower threshold is a bet on a tail it has not
//! seen).
//!
//! Each detector keeps a histogram of its windows' log-odds, decayed with
//! a 7-day memory in event time (so the answer is the same live, from a
//! backlog or in a replay), and uses it once its tail at the reference's
//! share holds [`MIN_TAIL`] windows. Firmware has no reference: its windows
//! are those of versions being rolled out, not a fleet's usual state.

use serde::{Deserialize, Serialize};
use termwatch_models::artifact::ModelSet;
use termwatch_models::detector::{CRITICAL_OFF, FleetReference, logit, sigmoid};
use termwatch_telemetry::alerts::{AlertKind, Scope};

/// Histogram bins of log-odds: [-16, 16) in steps of 0.05; a score beyond
/// either end counts in the end bin.
const LOW: f64 = -16.0;
const WIDTH: f64 = 0.05;
pub const BINS: usize = 640;
/// How long a window weighs in the histogram: its weight is
/// `exp(-age / MEMORY_MS)` in event time.
pub const MEMORY_MS: f64 = 7.0 * 86_400_000.0;
/// Windows (decayed) above the reference's share before the fleet's
/// quantile is used: fewer say too little about a tail.
pub const MIN_TAIL: f64 = 20.0;

/// Scores of one window (every terminal's) that
/// [`FleetCalibration::observe_counts`] adds one at a time, as
/// [`FleetCalibration::observe`] does: far more terminals than a fleet has.
pub const MAX_EXACT_WINDOWS: u64 = 1 << 24;

/// Every detector's calibration to the watched fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetCalibration {
    detectors: Vec<DetectorCalibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DetectorCalibration {
    kind: AlertKind,
    scope: Scope,
    trained: f64,
    trained_critical: f64,
    reference: Option<FleetReference>,
    /// Decayed windows per log-odds bin.
    counts: Vec<f64>,
    /// The event time the counts are decayed to (the latest window's end).
    decayed_to_ms: Option<i64>,
    /// The fleet's log-odds at the reference's share, once its tail is
    /// thick enough.
    fleet_logit: Option<f64>,
    threshold: f64,
    critical: f64,
}

/// One detector's thresholds and what moved them, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetThreshold {
    pub kind: AlertKind,
    pub scope: Scope,
    pub trained: f64,
    /// The threshold in use.
    pub threshold: f64,
    /// How much higher the fleet's scores are at the reference's share than
    /// the healthy training windows', in log-odds (negative: quieter); None
    /// while warming up or without a reference.
    pub shift: Option<f64>,
    /// Windows in the histogram (decayed).
    pub windows: f64,
    /// The level that holds a firing alert up, in use: the detector's
    /// resolve threshold, never above the threshold in use; None without
    /// one (the threshold itself). Set by [`FleetThreshold::held_by`].
    pub resolve: Option<f64>,
}

impl FleetThreshold {
    /// With the resolve threshold of `models`' detector, which fleet
    /// calibration does not keep (it never moves, and a snapshot need not
    /// carry what the model says).
    pub fn held_by(mut self, models: &ModelSet) -> FleetThreshold {
        self.resolve = models
            .detector(self.kind, self.scope)
            .and_then(|d| d.resolve_threshold.is_some().then(|| d.hold_threshold(self.threshold)));
        self
    }
}

impl FleetCalibration {
    /// Every detector of `models` at its trained thresholds, with an empty
    /// histogram.
    pub fn new(models: &ModelSet) -> FleetCalibration {
        let detectors = models
            .detectors
            .iter()
            .map(|d| DetectorCalibration {
                kind: d.kind,
                scope: d.scope,
                trained: d.threshold,
                trained_critical: d.critical_threshold,
                reference: d.fleet,
                // A detector that never moves keeps no histogram.
                counts: if d.fleet.is_some() { vec![0.0; BINS] } else { Vec::new() },
                decayed_to_ms: None,
                fleet_logit: None,
                threshold: d.threshold,
                critical: d.critical_threshold,
            })
            .collect();
        FleetCalibration { detectors }
    }

    /// The thresholds in use for a detector: `(threshold, critical)`; None
    /// for a detector the model does not have.
    pub fn thresholds(&self, kind: AlertKind, scope: Scope) -> Option<(f64, f64)> {
        self.get(kind, scope).map(|d| (d.threshold, d.critical))
    }

    /// Adds one window's scores of a detector (the window ending at
    /// `end_ms`) and moves its thresholds for the windows after it.
    pub fn observe(&mut self, kind: AlertKind, scope: Scope, end_ms: i64, scores: &[f64]) {
        let Some(d) = self.detectors.iter_mut().find(|d| d.kind == kind && d.scope == scope) else { return };
        if d.reference.is_none() || scores.is_empty() {
            return;
        }
        d.decay_to(end_ms);
        for &s in scores {
            d.counts[bin(logit(s))] += 1.0;
        }
        d.settle();
    }

    /// Adds one window's scores of a detector given as counts per bin
    /// ([`bin_counts`]), every source's summed: the same histogram, bit for
    /// bit, as [`FleetCalibration::observe`] of all those scores, since each
    /// bin adds its windows one at a time as that does.
    pub fn observe_counts(&mut self, kind: AlertKind, scope: Scope, end_ms: i64, bins: &[(u16, u32)]) {
        let Some(d) = self.detectors.iter_mut().find(|d| d.kind == kind && d.scope == scope) else { return };
        if d.reference.is_none() || bins.iter().all(|(_, n)| *n == 0) {
            return;
        }
        d.decay_to(end_ms);
        // Exact only one at a time (a decayed count plus 2.0 is not always
        // the count plus 1.0 twice). Past any fleet's terminals in a window
        // the counts go in whole, so a record of absurd counts costs no
        // more than the largest fleet's.
        let exact = bins.iter().map(|(_, n)| u64::from(*n)).sum::<u64>() <= MAX_EXACT_WINDOWS;
        for &(b, n) in bins {
            let Some(c) = d.counts.get_mut(usize::from(b)) else { continue };
            if exact {
                for _ in 0..n {
                    *c += 1.0;
                }
            } else {
                *c += f64::from(n);
            }
        }
        d.settle();
    }

    /// What each detector's thresholds are and why.
    pub fn status(&self) -> impl Iterator<Item = FleetThreshold> + '_ {
        self.detectors.iter().map(|d| FleetThreshold {
            kind: d.kind,
            scope: d.scope,
            trained: d.trained,
            threshold: d.threshold,
            shift: d.fleet_logit.zip(d.reference).map(|(f, r)| f - r.logit),
            windows: d.counts.iter().sum(),
            resolve: None,
        })
    }

    /// Takes the histograms of a snapshot taken with the same model; the
    /// thresholds are worked out again from them. Refused, with nothing
    /// changed, when the detectors or their training differ or a histogram
    /// is not one this code would have built.
    pub fn restore(&mut self, snapshot: FleetCalibration) -> Result<(), String> {
        if snapshot.detectors.len() != self.detectors.len() {
            return Err(format!(
                "fleet calibration of {} detectors, the model has {}",
                snapshot.detectors.len(),
                self.detectors.len()
            ));
        }
        for (mine, theirs) in self.detectors.iter().zip(&snapshot.detectors) {
            if (mine.kind, mine.scope, mine.trained, mine.trained_critical, mine.reference)
                != (theirs.kind, theirs.scope, theirs.trained, theirs.trained_critical, theirs.reference)
            {
                return Err(format!(
                    "fleet calibration of {} {} was taken with another detector",
                    mine.kind, mine.scope
                ));
            }
            let bins = if theirs.reference.is_some() { BINS } else { 0 };
            if theirs.counts.len() != bins || theirs.counts.iter().any(|c| !c.is_finite() || *c < 0.0) {
                return Err(format!("fleet calibration of {} {}: a histogram that is not one", mine.kind, mine.scope));
            }
        }
        for (mine, theirs) in self.detectors.iter_mut().zip(snapshot.detectors) {
            mine.counts = theirs.counts;
            mine.decayed_to_ms = theirs.decayed_to_ms;
            mine.settle();
        }
        Ok(())
    }

    fn get(&self, kind: AlertKind, scope: Scope) -> Option<&DetectorCalibration> {
        self.detectors.iter().find(|d| d.kind == kind && d.scope == scope)
    }
}

impl DetectorCalibration {
    fn decay_to(&mut self, end_ms: i64) {
        match self.decayed_to_ms {
            Some(t) if end_ms > t => {
                let k = (-((end_ms - t) as f64) / MEMORY_MS).exp();
                for c in &mut self.counts {
                    *c *= k;
                }
                self.decayed_to_ms = Some(end_ms);
            }
            // Windows close in event-time order; an equal end is the same window.
            Some(_) => {}
            None => self.decayed_to_ms = Some(end_ms),
        }
    }

    /// Works the thresholds out from the histogram.
    fn settle(&mut self) {
        self.fleet_logit = self.reference.and_then(|r| tail_logit(&self.counts, r.share));
        let shift = match (self.fleet_logit, self.reference) {
            (Some(f), Some(r)) => (f - r.logit).max(0.0),
            _ => 0.0,
        };
        if shift == 0.0 {
            // Exactly as trained, not as rounded through the log-odds.
            (self.threshold, self.critical) = (self.trained, self.trained_critical);
            return;
        }
        let ceiling = self.reference.map_or(self.trained, |r| r.max_threshold.max(self.trained));
        self.threshold = sigmoid(logit(self.trained) + shift).clamp(self.trained, ceiling);
        // The critical tier moves by the shift the threshold took.
        self.critical = if self.trained_critical < CRITICAL_OFF {
            let taken = logit(self.threshold) - logit(self.trained);
            sigmoid(logit(self.trained_critical) + taken).max(self.threshold).min(CRITICAL_OFF)
        } else {
            CRITICAL_OFF
        };
    }
}

/// A window's scores as counts per histogram bin, bins ascending: what a
/// stage-1 replica publishes for [`FleetCalibration::observe_counts`].
pub fn bin_counts(scores: &[f64]) -> Vec<(u16, u32)> {
    let mut counts = std::collections::BTreeMap::<u16, u32>::new();
    for &s in scores {
        // BINS is 640: a bin fits in 16 bits.
        *counts.entry(bin(logit(s)) as u16).or_default() += 1;
    }
    counts.into_iter().collect()
}

fn bin(z: f64) -> usize {
    if z.is_nan() {
        return 0;
    }
    (((z - LOW) / WIDTH).floor().max(0.0) as usize).min(BINS - 1)
}

/// The log-odds (a bin's middle) that `share` of the windows reach, once
/// at least [`MIN_TAIL`] windows are that far up.
fn tail_logit(counts: &[f64], share: f64) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    let want = share * total;
    if want < MIN_TAIL {
        return None;
    }
    let mut above = 0.0;
    for (i, c) in counts.iter().enumerate().rev() {
        above += c;
        if above >= want {
            return Some(LOW + (i as f64 + 0.5) * WIDTH);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(share: f64, at: f64, max_threshold: f64) -> FleetReference {
        FleetReference { share, logit: logit(at), max_threshold }
    }

    fn calibration(trained: f64, critical: f64, r: FleetReference) -> FleetCalibration {
        FleetCalibration {
            detectors: vec![DetectorCalibration {
                kind: AlertKind::VoltageInstability,
                scope: Scope::Terminal,
                trained,
                trained_critical: critical,
                reference: Some(r),
                counts: vec![0.0; BINS],
                decayed_to_ms: None,
                fleet_logit: None,
                threshold: trained,
                critical,
            }],
        }
    }

    const KIND: (AlertKind, Scope) = (AlertKind::VoltageInstability, Scope::Terminal);

    /// `n` scores whose log-odds are spread evenly over [lo, hi).
    fn spread(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|i| sigmoid(lo + (hi - lo) * (i as f64 + 0.5) / n as f64)).collect()
    }

    #[test]
    fn a_fleet_like_the_training_keeps_the_trained_threshold() {
        // The reference: 1 % of healthy windows above log-odds -2.
        let mut c = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.9));
        // Log-odds uniform on [-12, -1.9]: the top 1 % starts near -2.
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -12.0, -1.9));
        let s = c.status().next().expect("one");
        assert!(s.shift.expect("warmed up").abs() < 0.1, "{s:?}");
        assert!((s.threshold - 0.6).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn a_noisier_fleet_lifts_the_threshold_by_its_shift_within_the_ceiling() {
        let mut c = calibration(0.6, 0.9, reference(0.01, sigmoid(-2.0), 0.95));
        // The same shape, a log-odds higher.
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -11.0, -0.9));
        let (t, crit) = c.thresholds(KIND.0, KIND.1).expect("known");
        let shift = logit(t) - logit(0.6);
        assert!((shift - 1.0).abs() < 0.1, "threshold {t}, shift {shift}");
        assert!((logit(crit) - logit(0.9) - shift).abs() < 1e-9, "critical {crit} moves with it");
        // Far noisier: held at the ceiling, whatever the tail says.
        let mut c = calibration(0.6, 0.9, reference(0.01, sigmoid(-2.0), 0.8));
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -4.0, 8.0));
        let (t, crit) = c.thresholds(KIND.0, KIND.1).expect("known");
        assert!((t - 0.8).abs() < 1e-12, "ceiling, got {t}");
        assert!(crit >= t && crit < 1.0, "{crit}");
    }

    #[test]
    fn a_quieter_fleet_and_a_thin_tail_keep_the_trained_threshold() {
        let mut c = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.9));
        // Too few windows for 20 above the 1 % share: still warming up.
        c.observe(KIND.0, KIND.1, 300_000, &spread(1_500, 0.0, 5.0));
        assert_eq!(c.thresholds(KIND.0, KIND.1), Some((0.6, CRITICAL_OFF)));
        assert_eq!(c.status().next().map(|s| s.shift), Some(None));
        let mut c = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.9));
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -14.0, -5.0));
        assert_eq!(c.thresholds(KIND.0, KIND.1), Some((0.6, CRITICAL_OFF)));
        assert!(c.status().next().and_then(|s| s.shift).expect("warmed up") < -2.0);
    }

    #[test]
    fn old_windows_weigh_less_and_a_week_of_quiet_brings_the_threshold_back() {
        let mut c = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.95));
        c.observe(KIND.0, KIND.1, 0, &spread(10_000, -11.0, 1.0));
        let lifted = c.thresholds(KIND.0, KIND.1).expect("known").0;
        assert!(lifted > 0.7, "{lifted}");
        // Four weeks of a fleet like the training, a window every 5 minutes.
        let per_window = spread(10_000, -12.0, -1.9);
        for w in 1..=(4 * 7 * 288usize) {
            let i = w % 100;
            c.observe(KIND.0, KIND.1, w as i64 * 300_000, &per_window[i * 100..(i + 1) * 100]);
        }
        let now = c.thresholds(KIND.0, KIND.1).expect("known").0;
        assert!(now < 0.62, "back near the trained 0.6: {now}");
    }

    #[test]
    fn a_snapshot_restores_the_thresholds_and_one_of_another_model_is_refused() {
        let mut c = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.95));
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -11.0, -0.9));
        let bytes = postcard::to_stdvec(&c).expect("encode");
        let mut back = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.95));
        back.restore(postcard::from_bytes(&bytes).expect("decode")).expect("same model");
        assert_eq!(back, c);
        let mut other = calibration(0.5, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.95));
        let err = other.restore(c.clone()).expect_err("another detector");
        assert!(err.contains("voltage_instability terminal"), "{err}");
        let mut broken = c.clone();
        broken.detectors[0].counts[3] = f64::NAN;
        let mut fresh = calibration(0.6, CRITICAL_OFF, reference(0.01, sigmoid(-2.0), 0.95));
        assert!(fresh.restore(broken).is_err());
        assert_eq!(fresh.thresholds(KIND.0, KIND.1), Some((0.6, CRITICAL_OFF)));
    }

    #[test]
    fn scores_counted_per_bin_in_parts_give_the_histogram_of_all_of_them_bit_for_bit() {
        let r = reference(0.01, sigmoid(-2.0), 0.95);
        let (mut whole, mut parts) = (calibration(0.6, 0.9, r), calibration(0.6, 0.9, r));
        for w in 0..50i64 {
            let scores = spread(300 + w as usize, -11.0 + w as f64 * 0.05, 1.0);
            whole.observe(KIND.0, KIND.1, w * 300_000, &scores);
            // Three sources' counts, summed bin by bin as the merger does.
            let mut sum = std::collections::BTreeMap::<u16, u32>::new();
            for part in scores.chunks(scores.len() / 3 + 1) {
                for (b, n) in bin_counts(part) {
                    *sum.entry(b).or_default() += n;
                }
            }
            parts.observe_counts(KIND.0, KIND.1, w * 300_000, &sum.into_iter().collect::<Vec<_>>());
        }
        assert_eq!(whole, parts);
        assert!(whole.status().next().and_then(|s| s.shift).is_some(), "warmed up: the test compares thresholds");
        // Nothing to count moves nothing, not even the decay.
        let before = parts.clone();
        parts.observe_counts(KIND.0, KIND.1, 1 << 40, &[(3, 0)]);
        assert_eq!(parts, before);
        // Absurd counts (a record no stage 1 wrote) go in whole, and a bin
        // that is not one is ignored.
        let mut absurd = calibration(0.6, 0.9, r);
        absurd.observe_counts(KIND.0, KIND.1, 300_000, &[(0, u32::MAX), (639, u32::MAX), (u16::MAX, 7)]);
        let windows = absurd.status().next().map(|s| s.windows);
        assert_eq!(windows, Some(2.0 * f64::from(u32::MAX)));
    }

    #[test]
    fn a_detector_without_a_reference_never_moves() {
        let mut c = calibration(0.6, 0.9, reference(0.01, 0.1, 0.9));
        c.detectors[0].reference = None;
        c.observe(KIND.0, KIND.1, 300_000, &spread(10_000, -4.0, 8.0));
        assert_eq!(c.thresholds(KIND.0, KIND.1), Some((0.6, 0.9)));
        assert_eq!(c.status().next().map(|s| s.windows), Some(0.0));
    }
}
