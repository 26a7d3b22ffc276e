//! Stage 2's scoring (docs/two-stages.md): the site voltage and region
//! network detectors on the windows the merging stage closed, with the
//! alert state and fleet calibration of those two detectors. The same
//! per-row functions as one process's [`crate::scoring::Scorer`], so the
//! two give the same site and region alerts on the same rows.
//!
//! It also gives stage 1 what one process decides terminals with: each
//! window's sites judged bad (a site's alert holds back its terminals'
//! voltage alerts), and the thresholds of the terminal detectors, whose
//! fleet calibration it keeps from every source's scores
//! (docs/two-stages.md, "Couplings found in scoring").

use std::collections::BTreeMap;
use std::path::Path;

use termwatch_features::partial::{MergedWindow, RegionWindow, WindowMerger, WindowScores};
use termwatch_features::wire::WindowLessons;
use termwatch_models::artifact::{ModelError, ModelSet};
use termwatch_models::detector::CRITICAL_OFF;
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, Scope};

use crate::alerting::AlertTracker;
use crate::calibration::{FleetCalibration, FleetThreshold};
use crate::scoring::{ReleaseHealth, region_network, release_health, site_voltage};
use crate::snapshot::{RegionalSnapshot, RegionalSnapshotRef, SnapshotError};

/// Site and region scoring on merged windows: windows in, alert events out.
pub struct RegionalStage {
    models: ModelSet,
    alerts: AlertTracker,
    fleet: FleetCalibration,
    /// Scores since the last `take_scores`, for `/metrics`; kept only
    /// when asked for.
    kept: Option<Kept>,
    /// The latest release health of each version, for dashboards (as one
    /// process keeps it).
    releases: BTreeMap<Box<str>, ReleaseHealth>,
}

/// What [`RegionalStage::take_scores`] hands out.
#[derive(Debug, Default)]
pub struct Kept {
    /// Per detector, every score.
    pub scores: Vec<((AlertKind, Scope), Vec<f64>)>,
    /// Each region's latest network score, in the order scored.
    pub regions: Vec<(Box<str>, f64)>,
}

impl RegionalStage {
    pub fn new(models: ModelSet) -> Result<RegionalStage, ModelError> {
        let alerts = AlertTracker::new(&models.alerting)
            .map_err(|cause| ModelError::Alerting { path: models.version.clone(), cause })?;
        Ok(RegionalStage {
            fleet: FleetCalibration::new(&models),
            models,
            alerts,
            kept: None,
            releases: BTreeMap::new(),
        })
    }

    /// Keeps every score for [`RegionalStage::take_scores`] (metrics).
    pub fn keep_scores(mut self, keep: bool) -> Self {
        self.kept = keep.then(Kept::default);
        self
    }

    /// The scores since the last call (empty unless kept).
    pub fn take_scores(&mut self) -> Kept {
        self.kept.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn model_version(&self) -> &str {
        &self.models.version
    }

    pub fn alerts(&self) -> &AlertTracker {
        &self.alerts
    }

    /// The latest release health of each version with terminals in their
    /// first week on it.
    pub fn release_health(&self) -> impl Iterator<Item = &ReleaseHealth> {
        self.releases.values()
    }

    /// Writes the stage's state with `merger`'s (atomically: the old
    /// snapshot or the new one survives a crash): the bytes written.
    pub fn save_snapshot(&self, merger: &WindowMerger, path: &Path, position: &str) -> Result<u64, SnapshotError> {
        RegionalSnapshotRef {
            model_version: &self.models.version,
            merger,
            alerts: &self.alerts.snapshot(),
            fleet: &self.fleet,
            position,
        }
        .save(path)
    }

    /// Restores the state of a snapshot taken with the same model and the
    /// same `sources` (the telemetry topic's partitions), and returns its
    /// merger and position. A snapshot of another model or other sources,
    /// or one whose merger, alert state or calibration this code would
    /// never have written, is refused with nothing changed: the stage then
    /// starts cold.
    pub fn restore_snapshot(&mut self, path: &Path, sources: &[&str]) -> Result<(WindowMerger, String), SnapshotError> {
        let name = path.display().to_string();
        let snap = RegionalSnapshot::load(path)?;
        if snap.model_version != self.models.version {
            return Err(SnapshotError::Model {
                path: name,
                found: snap.model_version,
                expected: self.models.version.clone(),
            });
        }
        let mut expected = sources.to_vec();
        expected.sort_unstable();
        expected.dedup();
        let found: Vec<&str> = snap.merger.sources().collect();
        if found != expected {
            return Err(SnapshotError::Sources { path: name, found: found.join(", "), expected: expected.join(", ") });
        }
        let invalid = |cause: String| SnapshotError::Decode { path: name.clone(), cause };
        snap.merger.check().map_err(|e| invalid(format!("merger: {e}")))?;
        let mut fleet = self.fleet.clone();
        fleet.restore(snap.fleet).map_err(|e| invalid(format!("fleet calibration: {e}")))?;
        let mut alerts = AlertTracker::new(&self.models.alerting).map_err(|e| invalid(e.to_string()))?;
        alerts.restore(snap.alerts).map_err(|e| invalid(format!("alert state: {e}")))?;
        self.fleet = fleet;
        self.alerts = alerts;
        Ok((snap.merger, snap.position))
    }

    /// Adds every source's scores of the terminal detectors (oldest window
    /// first) to their fleet calibration. [`RegionalStage::score`] does it
    /// for the windows before each it closes; at the end of a history the
    /// last window's come with no window after it
    /// ([`WindowMerger::take_scores`]).
    pub fn observe_scores(&mut self, scores: &[WindowScores]) {
        for window in scores {
            for d in &window.detectors {
                self.fleet.observe_counts(d.kind, d.scope, window.end_ms, &d.bins);
                self.fleet.observe_peak_counts(d.kind, d.scope, window.end_ms, &d.peaks);
            }
        }
    }

    /// Each detector's thresholds in use, against the trained ones: those
    /// of the terminal detectors are what stage 1 is taught.
    pub fn thresholds(&self) -> impl Iterator<Item = FleetThreshold> + '_ {
        self.fleet.status().map(|t| t.held_by(&self.models))
    }

    /// Scores each window's sites and regions, oldest window first (as the
    /// merger closes them): the alert events, and what each window tells
    /// stage 1 ([`WindowLessons`]).
    pub fn score(&mut self, windows: Vec<MergedWindow>) -> (Vec<AlertEvent>, Vec<WindowLessons>) {
        let mut events = Vec::new();
        let mut lessons = Vec::with_capacity(windows.len());
        for w in windows {
            // Every source's terminal scores of the windows before this one
            // move the thresholds this one's terminals are judged at.
            self.observe_scores(&w.scores);
            let thresholds = self
                .models
                .detectors
                .iter()
                .filter(|d| d.scope == Scope::Terminal)
                .filter_map(|d| self.fleet.thresholds(d.kind, d.scope).map(|(t, c)| (d.kind, d.scope, t, c)))
                .collect();
            let fleet = &self.fleet;
            let limits = |kind, scope| fleet.thresholds(kind, scope).unwrap_or((f64::INFINITY, CRITICAL_OFF));
            let site_at = limits(AlertKind::VoltageInstability, Scope::Site);
            let network_at = limits(AlertKind::NetworkDegradation, Scope::Region);
            let mut site_scores = Vec::new();
            let mut site_days = Vec::new();
            let mut region_days = Vec::new();
            let mut bad_sites = Vec::new();
            for s in &w.sites {
                let judged =
                    site_voltage(&self.models, site_at, &mut self.alerts, w.end_ms, &s.site, &s.region, &s.features);
                if let Some((score, e)) = judged {
                    events.extend(e);
                    site_scores.push(score);
                    site_days.push((&*s.site, score));
                    // As one process judges a site for its terminals.
                    if score >= site_at.0
                        || self.alerts.firing_alert(AlertKind::VoltageInstability, Scope::Site, &s.site).is_some()
                    {
                        bad_sites.push(s.site.clone());
                    }
                }
            }
            let mut network_scores = Vec::new();
            let mut network_regions = Vec::new();
            for (region, row) in &w.regions {
                let RegionWindow::Features(f) = row else { continue };
                if let Some((score, e)) =
                    region_network(&self.models, network_at, &mut self.alerts, w.end_ms, region, f)
                {
                    events.extend(e);
                    network_scores.push(score);
                    region_days.push((&**region, score));
                    if self.kept.is_some() {
                        network_regions.push(region.clone());
                    }
                }
            }
            let firmware_scores = release_health(
                &self.models,
                &self.fleet,
                &mut self.alerts,
                &mut self.releases,
                w.end_ms,
                (&w.firmware, &w.firmware_retired),
                &mut events,
            );
            events.extend(self.alerts.expire(w.end_ms));
            self.fleet.observe(AlertKind::VoltageInstability, Scope::Site, w.end_ms, &site_scores);
            self.fleet.observe(AlertKind::NetworkDegradation, Scope::Region, w.end_ms, &network_scores);
            let window_ms = self.models.features.window_ms;
            self.fleet.observe_days(AlertKind::VoltageInstability, Scope::Site, w.end_ms, window_ms, &site_days);
            self.fleet.observe_days(AlertKind::NetworkDegradation, Scope::Region, w.end_ms, window_ms, &region_days);
            if let Some(kept) = self.kept.as_mut() {
                kept.keep(AlertKind::VoltageInstability, Scope::Site, &site_scores);
                kept.keep(AlertKind::NetworkDegradation, Scope::Region, &network_scores);
                kept.keep(AlertKind::FirmwareRegression, Scope::Cohort, &firmware_scores);
                kept.regions.extend(network_regions.into_iter().zip(network_scores.iter().copied()));
            }
            lessons.push(WindowLessons { end_ms: w.end_ms, cohorts: w.cohort_states, bad_sites, thresholds });
        }
        (events, lessons)
    }
}

impl Kept {
    fn keep(&mut self, kind: AlertKind, scope: Scope, scores: &[f64]) {
        if scores.is_empty() {
            return;
        }
        match self.scores.iter_mut().find(|(d, _)| *d == (kind, scope)) {
            Some((_, kept)) => kept.extend_from_slice(scores),
            None => self.scores.push(((kind, scope), scores.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> ModelSet {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
        ModelSet::load(&shipped).expect("models/default")
    }

    #[test]
    fn a_snapshot_of_another_model_or_a_damaged_one_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("regional.snap");
        let merger = WindowMerger::new(&["telemetry-0"], 0, 4);
        let stage = RegionalStage::new(models()).expect("stage");
        stage.save_snapshot(&merger, &path, "offset 7").expect("saved");
        let sources = ["telemetry-0"];
        let (back, position) =
            RegionalStage::new(models()).expect("stage").restore_snapshot(&path, &sources).expect("restored");
        assert_eq!((back, position.as_str()), (merger, "offset 7"));

        // The telemetry topic has gained a partition since.
        let err = RegionalStage::new(models())
            .expect("stage")
            .restore_snapshot(&path, &["telemetry-0", "telemetry-1"])
            .expect_err("other sources");
        assert_eq!(
            err.to_string(),
            format!(
                "snapshot {} merges the partials of telemetry-0, but the telemetry topic's partitions are \
                 telemetry-0, telemetry-1",
                path.display()
            )
        );

        let mut other = models();
        other.version = "another-model".into();
        let mut stage = RegionalStage::new(other).expect("stage");
        let err = stage.restore_snapshot(&path, &sources).expect_err("another model");
        assert!(matches!(err, SnapshotError::Model { .. }), "{err}");

        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        let err = RegionalStage::new(models()).expect("stage").restore_snapshot(&path, &sources).expect_err("damaged");
        assert!(matches!(err, SnapshotError::Checksum { .. } | SnapshotError::Decode { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}
