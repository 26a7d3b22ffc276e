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
//!
//! That share of windows holds a fleet's incidents, not its false alerts
//! (a few windows in 100,000). So each detector with a peak reference
//! ([`termwatch_models::detector::PeakReference`]) compares its entities'
//! daily peaks too: per entity and UTC day, the highest score two
//! consecutive windows both reach, which is what an alert needs and where
//! a healthy day that pages stands out. The
//! peaks go into a second histogram, decayed alike, used once its tail at
//! the reference's share holds [`MIN_PEAK_TAIL`] entity-days; the
//! threshold rises by the larger of the two shifts, the peaks' bounded by
//! the reference's `max_shift` (most of the training incidents' days still
//! peak above it). An entity's day is published with the first window of
//! the next day, so a fleet's peaks move the thresholds once a day
//! (docs/model-history.md, `termwatch-default-53`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use termwatch_models::artifact::ModelSet;
use termwatch_models::detector::{CRITICAL_OFF, DAY_MS, FleetReference, day_of, logit, sigmoid};
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

/// Entity-days (decayed) above the peak reference's share before the
/// fleet's peaks are used. Fewer than for windows: a fleet of 150
/// terminals has about 42 site-days a day, and at a share of 3 % would
/// take a month to show 20 (docs/model-history.md says what 5 costs).
pub const MIN_PEAK_TAIL: f64 = 5.0;
/// Entities per detector whose day is tracked for its peak: past it, an
/// entity first seen that day is not tracked (counted), so a flood of
/// identifiers costs a bounded map (about 12 MB at the limit).
pub const MAX_TRACKED_ENTITIES: usize = 1 << 18;

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
    /// Decayed entity-days per log-odds bin of their daily peaks; empty
    /// without a peak reference.
    peaks: Vec<f64>,
    peaks_decayed_to_ms: Option<i64>,
    /// The fleet's daily peaks at the peak reference's share, once warm.
    peak_logit: Option<f64>,
    /// The entities' day so far.
    days: DailyPeaks,
}

/// Each entity's day so far: its latest window and its highest pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DailyPeaks {
    /// The UTC day tracked ([`day_of`] its windows' ends).
    day: Option<i64>,
    /// By a 64-bit hash of the entity's name ([`entity_key`]), not the
    /// name: 47 bytes a terminal in all at 100,000 terminals, where keyed
    /// by name it took 133 (BENCHMARKS.md), beside its 1 KiB of feature
    /// state. Two names of one hash (about one chance in 10^9 at 10^5
    /// entities) would share a day's pairs.
    entities: BTreeMap<u64, Track>,
    /// Scores of entities not tracked for want of room
    /// ([`MAX_TRACKED_ENTITIES`]), one per entity and window.
    untracked: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Track {
    /// The entity's latest window's end and its log-odds (the histogram's
    /// bins are 0.05 wide: single precision is plenty).
    end_ms: i64,
    logit: f32,
    /// The highest log-odds two consecutive windows of the day both reach;
    /// [`NO_PAIR`] before the day has one.
    best: f32,
}

const NO_PAIR: f32 = f32::NEG_INFINITY;

/// FNV-1a, 64 bits: stable across builds and platforms, so a snapshot's
/// keys mean the same entities after an upgrade.
fn entity_key(name: &str) -> u64 {
    termwatch_features::fnv1a(termwatch_features::FNV_OFFSET, name.as_bytes())
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
    /// How much higher the fleet's daily peaks are at the peak reference's
    /// share than the training's, in log-odds, before the bound; None
    /// while warming up or without a peak reference.
    pub peak_shift: Option<f64>,
    /// Entity-days in the peaks' histogram (decayed).
    pub days: f64,
    /// Scores of entities whose day was not tracked for want of room (one
    /// per entity and window).
    pub untracked: u64,
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
                peaks: if d.fleet.and_then(|f| f.peaks).is_some() { vec![0.0; BINS] } else { Vec::new() },
                peaks_decayed_to_ms: None,
                peak_logit: None,
                days: DailyPeaks::default(),
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
        add_counts(&mut d.counts, bins);
        d.settle();
    }

    /// One window's scores of a detector by entity (the window ending at
    /// `end_ms`, windows `window_ms` long) for its daily peaks: the first
    /// window of a day adds every entity's peak of the day before, and
    /// moves the thresholds for the windows after it.
    pub fn observe_days(&mut self, kind: AlertKind, scope: Scope, end_ms: i64, window_ms: i64, scored: &[(&str, f64)]) {
        let bins = self.track_days(kind, scope, end_ms, window_ms, scored);
        self.observe_peak_counts(kind, scope, end_ms, &bins);
    }

    /// As [`FleetCalibration::observe_days`], but the peaks of a day that
    /// ended are returned as counts per bin ([`bin_counts`] of log-odds),
    /// not added: what a stage-1 replica publishes of its terminals for
    /// [`FleetCalibration::observe_peak_counts`], the same histogram bit
    /// for bit.
    pub fn track_days(
        &mut self,
        kind: AlertKind,
        scope: Scope,
        end_ms: i64,
        window_ms: i64,
        scored: &[(&str, f64)],
    ) -> Vec<(u16, u32)> {
        let Some(d) = self.detectors.iter_mut().find(|d| d.kind == kind && d.scope == scope) else { return Vec::new() };
        if d.reference.and_then(|r| r.peaks).is_none() {
            return Vec::new();
        }
        let ended = d.days.observe(end_ms, window_ms, scored);
        let mut counts = BTreeMap::<u16, u32>::new();
        for z in ended {
            *counts.entry(bin(z) as u16).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Adds entity-days' peaks of a detector given as counts per bin, every
    /// source's summed, that the window ending at `end_ms` ended. They are
    /// dated at the start of that window's day, not at the window's end:
    /// a stage-1 replica without terminals in a day's first window ends
    /// its day with a later window, and the histogram is the same.
    pub fn observe_peak_counts(&mut self, kind: AlertKind, scope: Scope, end_ms: i64, bins: &[(u16, u32)]) {
        let Some(d) = self.detectors.iter_mut().find(|d| d.kind == kind && d.scope == scope) else { return };
        if d.peaks.is_empty() || bins.iter().all(|(_, n)| *n == 0) {
            return;
        }
        decay(&mut d.peaks, &mut d.peaks_decayed_to_ms, day_of(end_ms).saturating_mul(DAY_MS));
        add_counts(&mut d.peaks, bins);
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
            peak_shift: d.peak_logit.zip(d.reference.and_then(|r| r.peaks)).map(|(f, r)| f - r.logit),
            days: d.peaks.iter().sum(),
            untracked: d.days.untracked,
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
            let peak_bins = if theirs.reference.and_then(|r| r.peaks).is_some() { BINS } else { 0 };
            let histogram = |h: &[f64], len: usize| h.len() == len && h.iter().all(|c| c.is_finite() && *c >= 0.0);
            if !histogram(&theirs.counts, bins) || !histogram(&theirs.peaks, peak_bins) {
                return Err(format!("fleet calibration of {} {}: a histogram that is not one", mine.kind, mine.scope));
            }
            if theirs.days.entities.len() > MAX_TRACKED_ENTITIES
                || theirs
                    .days
                    .entities
                    .values()
                    .any(|t| !t.logit.is_finite() || !(t.best.is_finite() || t.best == NO_PAIR))
            {
                return Err(format!(
                    "fleet calibration of {} {}: daily peaks that are not ones",
                    mine.kind, mine.scope
                ));
            }
        }
        for (mine, theirs) in self.detectors.iter_mut().zip(snapshot.detectors) {
            mine.counts = theirs.counts;
            mine.decayed_to_ms = theirs.decayed_to_ms;
            mine.peaks = theirs.peaks;
            mine.peaks_decayed_to_ms = theirs.peaks_decayed_to_ms;
            mine.days = theirs.days;
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
        decay(&mut self.counts, &mut self.decayed_to_ms, end_ms);
    }

    /// Works the thresholds out from the histograms.
    fn settle(&mut self) {
        self.fleet_logit = self.reference.and_then(|r| tail_logit(&self.counts, r.share, MIN_TAIL));
        let peaks = self.reference.and_then(|r| r.peaks);
        self.peak_logit = peaks.and_then(|p| tail_logit(&self.peaks, p.share, MIN_PEAK_TAIL));
        let body = match (self.fleet_logit, self.reference) {
            (Some(f), Some(r)) => (f - r.logit).max(0.0),
            _ => 0.0,
        };
        let peak = match (self.peak_logit, peaks) {
            (Some(f), Some(p)) => (f - p.logit).clamp(0.0, p.max_shift.max(0.0)),
            _ => 0.0,
        };
        let shift = body.max(peak);
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

impl DailyPeaks {
    /// Tracks one window's scores; returns the peaks of the entities' day
    /// when this window is the first of a later day (log-odds, in no
    /// particular order). A window of a day already ended (windows close
    /// in order: none in service) is left out.
    fn observe(&mut self, end_ms: i64, window_ms: i64, scored: &[(&str, f64)]) -> Vec<f64> {
        let day = day_of(end_ms);
        let mut ended = Vec::new();
        match self.day {
            Some(d) if day < d => return ended,
            Some(d) if day > d => {
                for t in self.entities.values_mut() {
                    if t.best != NO_PAIR {
                        ended.push(f64::from(t.best));
                        t.best = NO_PAIR;
                    }
                }
                // Only an entity in the window before this one can pair with it.
                self.entities.retain(|_, t| t.end_ms.saturating_add(window_ms) >= end_ms);
                self.day = Some(day);
            }
            Some(_) => {}
            None => self.day = Some(day),
        }
        for &(entity, score) in scored {
            if score.is_nan() {
                continue;
            }
            // Log-odds are within ±28 (scores held 1e-12 from 0 and 1).
            let z = logit(score) as f32;
            let key = entity_key(entity);
            if let Some(t) = self.entities.get_mut(&key) {
                if t.end_ms.saturating_add(window_ms) == end_ms {
                    t.best = t.best.max(z.min(t.logit));
                }
                if end_ms > t.end_ms {
                    (t.end_ms, t.logit) = (end_ms, z);
                }
            } else if self.entities.len() < MAX_TRACKED_ENTITIES {
                self.entities.insert(key, Track { end_ms, logit: z, best: NO_PAIR });
            } else {
                self.untracked += 1;
            }
        }
        ended
    }
}

/// Decays a histogram to `end_ms` (never back).
fn decay(counts: &mut [f64], decayed_to_ms: &mut Option<i64>, end_ms: i64) {
    match *decayed_to_ms {
        Some(t) if end_ms > t => {
            let k = (-((end_ms - t) as f64) / MEMORY_MS).exp();
            for c in counts {
                *c *= k;
            }
            *decayed_to_ms = Some(end_ms);
        }
        // Windows close in event-time order; an equal end is the same window.
        Some(_) => {}
        None => *decayed_to_ms = Some(end_ms),
    }
}

/// Adds counts per bin to a histogram.
fn add_counts(counts: &mut [f64], bins: &[(u16, u32)]) {
    // Exact only one at a time (a decayed count plus 2.0 is not always
    // the count plus 1.0 twice). Past any fleet's terminals in a window
    // the counts go in whole, so a record of absurd counts costs no
    // more than the largest fleet's.
    let exact = bins.iter().map(|(_, n)| u64::from(*n)).sum::<u64>() <= MAX_EXACT_WINDOWS;
    for &(b, n) in bins {
        let Some(c) = counts.get_mut(usize::from(b)) else { continue };
        if exact {
            for _ in 0..n {
                *c += 1.0;
            }
        } else {
            *c += f64::from(n);
        }
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

/// The log-odds (a bin's middle) that `share` of the histogram reaches,
/// once at least `min_tail` are that far up.
fn tail_logit(counts: &[f64], share: f64, min_tail: f64) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    let want = share * total;
    if want < min_tail {
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
    use termwatch_features::partial::{DetectorScores, WindowScores};

    fn reference(share: f64, at: f64, max_threshold: f64) -> FleetReference {
        FleetReference { share, logit: logit(at), max_threshold, peaks: None }
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
                peaks: if r.peaks.is_some() { vec![0.0; BINS] } else { Vec::new() },
                peaks_decayed_to_ms: None,
                peak_logit: None,
                days: DailyPeaks::default(),
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
        // Daily peaks, and a day in progress, come back too.
        let mut c = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        let fleet = names(100);
        a_day(&mut c, 20_000, &fleet);
        a_day(&mut c, 20_001, &fleet);
        assert!(!c.detectors[0].days.entities.is_empty());
        let bytes = postcard::to_stdvec(&c).expect("encode");
        let mut back = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        back.restore(postcard::from_bytes(&bytes).expect("decode")).expect("same model");
        assert_eq!(back, c);
        let err = calibration(0.6, 0.9, with_peaks(0.05, -2.5, 1.5)).restore(c.clone()).expect_err("other peaks");
        assert!(err.contains("another detector"), "{err}");
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

    fn with_peaks(share: f64, at: f64, max_shift: f64) -> FleetReference {
        // Windows compared at 1 % above log-odds -2.
        FleetReference {
            peaks: Some(termwatch_models::detector::PeakReference { share, logit: at, max_shift }),
            ..reference(0.01, sigmoid(-2.0), 0.99)
        }
    }

    const W: i64 = 300_000;
    const DAY: i64 = 86_400_000;

    /// One day (288 windows from `day`'s midnight) of `entities`, every
    /// window at log-odds -8 but two in a row at the entity's own peak,
    /// spread over [-3, 0); into the windows' histogram and the peaks'.
    fn a_day(c: &mut FleetCalibration, day: i64, entities: &[String]) {
        for i in 1..=288 {
            let end = day * DAY + i * W;
            let scored: Vec<(&str, f64)> = entities
                .iter()
                .enumerate()
                .map(|(e, name)| {
                    let peak = -3.0 + 3.0 * e as f64 / entities.len() as f64;
                    (name.as_str(), sigmoid(if i == 100 || i == 101 { peak } else { -8.0 }))
                })
                .collect();
            let scores: Vec<f64> = scored.iter().map(|s| s.1).collect();
            c.observe(KIND.0, KIND.1, end, &scores);
            c.observe_days(KIND.0, KIND.1, end, W, &scored);
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("T-{i:06}")).collect()
    }

    #[test]
    fn a_fleet_whose_healthy_days_peak_higher_lifts_the_threshold_within_the_peaks_bound() {
        // Training's daily peaks: 5 % of entity-days above log-odds -2.
        let mut c = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        let fleet = names(100);
        a_day(&mut c, 20_000, &fleet);
        // Two windows in 288 are high: the windows' 1 % is the fleet's
        // usual -8, and the day has not ended.
        let s = c.status().next().expect("one");
        assert!(s.shift.expect("warm") < -5.0, "{s:?}");
        assert_eq!((s.peak_shift, s.days, s.threshold), (None, 0.0, 0.6), "{s:?}");
        // The next day's first window ends the first: 100 entity-days, the
        // top 5 % peaking near -0.15, 1.85 above training's, bound at 1.5.
        a_day(&mut c, 20_001, &fleet);
        let s = c.status().next().expect("one");
        let shift = s.peak_shift.expect("warm after a day");
        assert!((shift - 1.85).abs() < 0.1, "{s:?}");
        assert!((logit(s.threshold) - logit(0.6) - 1.5).abs() < 1e-9, "bound at 1.5: {s:?}");
        let (_, critical) = c.thresholds(KIND.0, KIND.1).expect("known");
        assert!((logit(critical) - logit(0.9) - 1.5).abs() < 1e-9, "the critical tier moves alike: {critical}");
        // A fleet that peaks like training keeps the trained threshold.
        let mut c = calibration(0.6, 0.9, with_peaks(0.05, 0.5, 1.5));
        a_day(&mut c, 20_000, &fleet);
        a_day(&mut c, 20_001, &fleet);
        let s = c.status().next().expect("one");
        assert!(s.peak_shift.expect("warm") < 0.0, "{s:?}");
        assert_eq!(s.threshold, 0.6);
    }

    #[test]
    fn a_daily_peak_is_what_two_consecutive_windows_of_one_entity_both_reach() {
        let mut c = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        let day = 20_000 * DAY;
        // High every other window, and once again after a missing window:
        // never two in a row. Another entity's high window in between
        // does not pair with it either.
        for (i, z) in [(1, 4.0), (2, -6.0), (3, 4.0), (4, -5.0), (5, 4.0), (7, 4.0)] {
            c.track_days(KIND.0, KIND.1, day + i * W, W, &[("T-1", sigmoid(z)), ("T-2", sigmoid(-z))]);
        }
        let ended = c.track_days(KIND.0, KIND.1, day + DAY + W, W, &[("T-1", sigmoid(0.0))]);
        // T-1's best pair is (-5, 4): -5; T-2's (6, -4) and (-4, 5): -4.
        assert_eq!(ended, [(bin(-5.0) as u16, 1), (bin(-4.0) as u16, 1)]);
        // Tracking alone adds nothing to the histogram (stage 2 does).
        assert_eq!(c.status().next().map(|s| s.days), Some(0.0));
        // The day after: T-1 had one window, no pair; T-2 none.
        assert!(c.track_days(KIND.0, KIND.1, day + 2 * DAY + W, W, &[]).is_empty());
    }

    #[test]
    fn peaks_tracked_in_parts_give_the_histogram_of_one_process_bit_for_bit() {
        let r = with_peaks(0.05, -2.0, 1.5);
        let (mut whole, mut merging) = (calibration(0.6, 0.9, r), calibration(0.6, 0.9, r));
        let mut replicas = [calibration(0.6, 0.9, r), calibration(0.6, 0.9, r)];
        let fleet = names(90);
        for day in 20_000..20_003 {
            for i in 1..=288 {
                let end = day * DAY + i * W;
                // The second replica's terminals do not report in a day's
                // first window: it has no window then, and ends its
                // day with the next.
                let scored: Vec<(&str, f64)> = fleet
                    .iter()
                    .enumerate()
                    .filter(|(e, _)| i > 1 || e % 2 == 0)
                    .map(|(e, n)| (n.as_str(), sigmoid(((e * 7 + i as usize * 13) % 97) as f64 / 10.0 - 8.0)))
                    .collect();
                whole.observe_days(KIND.0, KIND.1, end, W, &scored);
                let mut sum = WindowScores { end_ms: end, detectors: Vec::new() };
                for (k, replica) in replicas.iter_mut().enumerate() {
                    if k == 1 && i == 1 {
                        continue;
                    }
                    let mine: Vec<(&str, f64)> = scored
                        .iter()
                        .copied()
                        .filter(|(n, _)| fleet.iter().position(|f| f == n).is_some_and(|e| e % 2 == k))
                        .collect();
                    let peaks = replica.track_days(KIND.0, KIND.1, end, W, &mine);
                    sum.merge(&WindowScores {
                        end_ms: end,
                        detectors: vec![DetectorScores { kind: KIND.0, scope: KIND.1, bins: Vec::new(), peaks }],
                    });
                }
                for d in &sum.detectors {
                    merging.observe_peak_counts(d.kind, d.scope, end, &d.peaks);
                }
            }
        }
        let days = |c: &FleetCalibration| c.detectors[0].peaks.clone();
        assert_eq!(days(&whole), days(&merging));
        assert_eq!(whole.status().next().map(|s| s.days), Some(90.0 * (-(DAY as f64) / MEMORY_MS).exp() + 90.0));
        assert!(whole.status().next().and_then(|s| s.peak_shift).is_some(), "warm: the test compares thresholds");
        assert_eq!(whole.thresholds(KIND.0, KIND.1), merging.thresholds(KIND.0, KIND.1));
    }

    #[test]
    fn a_flood_of_entities_is_tracked_up_to_the_bound_and_the_rest_counted() {
        let mut c = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        let flood = names(MAX_TRACKED_ENTITIES + 10);
        let scored: Vec<(&str, f64)> = flood.iter().map(|n| (n.as_str(), 0.5)).collect();
        c.observe_days(KIND.0, KIND.1, 20_000 * DAY + W, W, &scored);
        assert_eq!(c.detectors[0].days.entities.len(), MAX_TRACKED_ENTITIES);
        assert_eq!(c.status().next().map(|s| s.untracked), Some(10));
        // A day later only the entities of the window before it may pair:
        // the map is cleared of the others.
        c.observe_days(KIND.0, KIND.1, 20_001 * DAY + 2 * W, W, &[("T-new", 0.5)]);
        assert_eq!(c.detectors[0].days.entities.len(), 1);
        // A snapshot of more than the bound is refused.
        let mut broken = c.clone();
        let fresh = calibration(0.6, 0.9, with_peaks(0.05, -2.0, 1.5));
        broken.detectors[0].days.entities =
            (0..=MAX_TRACKED_ENTITIES).map(|i| (i as u64, Track { end_ms: 0, logit: 0.0, best: NO_PAIR })).collect();
        assert!(fresh.clone().restore(broken).is_err());
    }

    #[test]
    fn an_entitys_key_is_the_same_in_every_build() {
        // FNV-1a's published test vectors: a snapshot's keys outlive a build.
        assert_eq!(entity_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(entity_key("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(entity_key("foobar"), 0x8594_4171_f739_67e8);
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
/// A measurement, not a check (BENCHMARKS.md): `cargo test --release -p
/// termwatch-alerts --lib daily_peaks_of_100000_terminals -- --ignored --nocapture`.
#[cfg(test)]
mod memory {
    use super::*;

    /// Resident bytes of this process (Linux).
    fn resident() -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        Some(statm.split_whitespace().nth(1)?.parse::<usize>().ok()? * 4096)
    }

    #[test]
    #[ignore]
    fn daily_peaks_of_100000_terminals() {
        let names: Vec<String> = (0..100_000).map(|i| format!("T-{i:06}")).collect();
        let scored: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 0.3)).collect();
        let before = resident().expect("/proc/self/statm");
        let mut days = DailyPeaks::default();
        for w in 1..=3 {
            days.observe(1_790_000_000_000 + w * 300_000, 300_000, &scored);
        }
        let after = resident().expect("/proc/self/statm");
        assert_eq!(days.entities.len(), 100_000);
        eprintln!("daily peaks: {:.1} bytes a terminal", (after - before) as f64 / 100_000.0);
    }
}
