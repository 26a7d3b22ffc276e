//! Stage 2's scoring (docs/two-stages.md): the site voltage and region
//! network detectors on the windows the merging stage closed, with the
//! alert state and fleet calibration of those two detectors. The same
//! per-row functions as one process's [`crate::scoring::Scorer`], so the
//! two give the same site and region alerts on the same rows.
//!
//! Not here yet: terminal voltage alerts, which a site's alert holds back
//! in the same window (one process decides both together), and fleet
//! calibration of the terminal detectors, which one process learns from
//! every terminal: both need what stage 2 knows back in stage 1, or their
//! rows in stage 2 (docs/two-stages.md, "Couplings found in scoring").

use termwatch_features::partial::{MergedWindow, RegionWindow};
use termwatch_models::artifact::{ModelError, ModelSet};
use termwatch_models::detector::CRITICAL_OFF;
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, Scope};

use crate::alerting::AlertTracker;
use crate::calibration::FleetCalibration;
use crate::scoring::{region_network, site_voltage};

/// Site and region scoring on merged windows: windows in, alert events out.
pub struct RegionalStage {
    models: ModelSet,
    alerts: AlertTracker,
    fleet: FleetCalibration,
}

impl RegionalStage {
    pub fn new(models: ModelSet) -> Result<RegionalStage, ModelError> {
        let alerts = AlertTracker::new(&models.alerting)
            .map_err(|cause| ModelError::Alerting { path: models.version.clone(), cause })?;
        Ok(RegionalStage { fleet: FleetCalibration::new(&models), models, alerts })
    }

    pub fn alerts(&self) -> &AlertTracker {
        &self.alerts
    }

    /// Scores each window's sites and regions, oldest window first (as the
    /// merger closes them).
    pub fn score(&mut self, windows: &[MergedWindow]) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for w in windows {
            let fleet = &self.fleet;
            let limits = |kind, scope| fleet.thresholds(kind, scope).unwrap_or((f64::INFINITY, CRITICAL_OFF));
            let site_at = limits(AlertKind::VoltageInstability, Scope::Site);
            let network_at = limits(AlertKind::NetworkDegradation, Scope::Region);
            let mut site_scores = Vec::new();
            for s in &w.sites {
                let judged =
                    site_voltage(&self.models, site_at, &mut self.alerts, w.end_ms, &s.site, &s.region, &s.features);
                if let Some((score, e)) = judged {
                    events.extend(e);
                    site_scores.push(score);
                }
            }
            let mut network_scores = Vec::new();
            for (region, row) in &w.regions {
                let RegionWindow::Features(f) = row else { continue };
                if let Some((score, e)) =
                    region_network(&self.models, network_at, &mut self.alerts, w.end_ms, region, f)
                {
                    events.extend(e);
                    network_scores.push(score);
                }
            }
            events.extend(self.alerts.expire(w.end_ms));
            self.fleet.observe(AlertKind::VoltageInstability, Scope::Site, w.end_ms, &site_scores);
            self.fleet.observe(AlertKind::NetworkDegradation, Scope::Region, w.end_ms, &network_scores);
        }
        events
    }
}
