//! The model artifact: every detector, the feature configuration they
//! need, the alert policy they were calibrated with, what they were trained
//! on and how they did; loaded and checked against what this build computes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use termwatch_features::{FeatureConfig, names};
use termwatch_telemetry::alerts::{AlertKind, Scope};

use crate::detector::Detector;
use crate::policy::{AlertingConfig, PolicyError};

/// The artifact format; a model set of another format is refused.
/// v2: `critical_threshold` is calibrated and fires an alert at once (v1's
/// was a hand-set severity level), so a v1 artifact must be retrained.
pub const FORMAT: &str = "termwatch-models-v2";

/// How one detector did on its training windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorFigures {
    pub kind: AlertKind,
    pub scope: Scope,
    pub positive_windows: usize,
    pub negative_windows: usize,
    pub excluded_windows: usize,
    /// Healthy windows inside an analyst's not_incident label (part of
    /// `negative_windows`, weighted in the fit).
    #[serde(default)]
    pub feedback_windows: usize,
    /// Share of positive windows at or above the threshold.
    pub window_recall: f64,
    /// Share of negative windows below it.
    pub window_specificity: f64,
    /// False alerts per 1,000 terminal-days on the healthy training windows,
    /// with the hysteresis of service and both tiers.
    pub calibrated_false_alerts_per_1000_terminal_days: f64,
    /// The part of those fired at once by one critical window.
    pub calibrated_critical_false_alerts_per_1000_terminal_days: f64,
    /// What calibration aimed at (None in artifacts from before it was
    /// recorded).
    #[serde(default)]
    pub target_false_alerts_per_1000_terminal_days: Option<f64>,
    /// What the two-tier policy does on the training incidents of this
    /// kind and scope, against the `k` rule alone (same threshold).
    pub incidents: IncidentFigures,
    /// How the resolve threshold was calibrated, when training was asked
    /// for one (`TrainConfig::resolve_targets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<ResolveFigures>,
}

/// The resolve threshold's calibration, and what it does on the training
/// incidents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveFigures {
    /// The target whose `k`-rule threshold is the resolve threshold.
    pub target_false_alerts_per_1000_terminal_days: f64,
    /// Training incidents whose alert resolved while they went on, with
    /// windows below the threshold counting towards resolving.
    pub early_at_threshold: usize,
    /// The same, held up by windows at or above the resolve threshold.
    pub early_at_resolve_threshold: usize,
}

/// Training incidents of one detector, replayed through the alert policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentFigures {
    /// Incident labels with at least one scored window of the entity.
    pub incidents: usize,
    /// Incidents the `k` rule alone detects (a firing event within the
    /// incident, as the evaluator counts it).
    pub k_only_detected: usize,
    /// Median delay of those detections, ms.
    pub k_only_median_delay_ms: Option<f64>,
    /// Incidents the calibrated two-tier policy detects.
    pub detected: usize,
    /// Median delay of those detections, ms.
    pub median_delay_ms: Option<f64>,
    /// Incidents whose detecting alert was fired at once by a critical window.
    pub first_caught_at_once: usize,
}

/// What a model set was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    /// The inputs as given, with their sizes in bytes.
    pub inputs: Vec<(String, u64)>,
    /// FNV-1a 64 of every input's bytes, in order: equal data, equal fingerprint.
    pub fingerprint: String,
    pub labels: Option<String>,
    pub first_window_end: String,
    pub last_window_end: String,
    pub terminal_days: u64,
    /// Inputs that trained one kind's detectors only (`termwatch train
    /// --input-for`), as given; they are among `inputs` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_for: Vec<(String, AlertKind)>,
    /// Kinds trained on more terminal-days than `terminal_days` (those
    /// inputs' too), with theirs: the exposure of their false-alert budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kind_terminal_days: Vec<(AlertKind, u64)>,
    pub incidents_by_kind: Vec<(AlertKind, usize)>,
    pub not_incident_labels: usize,
}

/// The artifact: every detector, the feature configuration they need, the
/// alerting hysteresis they were calibrated with, and what they were trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSet {
    pub format: String,
    pub version: String,
    pub features: FeatureConfig,
    pub alerting: AlertingConfig,
    pub detectors: Vec<Detector>,
    pub trained_on: TrainingData,
    pub figures: Vec<DetectorFigures>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model artifact {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("model artifact {path} is not a termwatch model set: {cause}")]
    Parse { path: String, cause: serde_json::Error },
    #[error("model artifact {path} has format {found:?}; this termwatch reads {FORMAT:?}")]
    Format { path: String, found: String },
    #[error(
        "model artifact {path}: detector {kind} {scope} was trained on features {found:?}, but this termwatch computes {expected:?}; retrain it"
    )]
    Features { path: String, kind: AlertKind, scope: Scope, found: Vec<String>, expected: Vec<String> },
    #[error("model artifact {path}: features: {cause}")]
    FeatureConfig { path: String, cause: String },
    #[error("model artifact {path} has no {kind} {scope} detector")]
    Missing { path: String, kind: AlertKind, scope: Scope },
    #[error("model artifact {path}: alerting configuration: {0}", .cause)]
    Alerting { path: String, cause: PolicyError },
}

/// The feature names each detector must have been trained on.
fn expected(kind: AlertKind, scope: Scope) -> &'static [&'static str] {
    match (kind, scope) {
        (AlertKind::VoltageInstability, Scope::Site) => &names::SITE_VOLTAGE,
        (AlertKind::VoltageInstability, _) => &names::TERMINAL_VOLTAGE,
        (AlertKind::NetworkDegradation, _) => &names::NETWORK,
        (AlertKind::HardwareAging, _) => &names::AGING,
        (AlertKind::FirmwareRegression, _) => &names::FIRMWARE,
    }
}

/// Every detector an artifact may hold, in scoring order.
pub const DETECTORS: [(AlertKind, Scope); 5] = [
    (AlertKind::VoltageInstability, Scope::Site),
    (AlertKind::VoltageInstability, Scope::Terminal),
    (AlertKind::NetworkDegradation, Scope::Region),
    (AlertKind::HardwareAging, Scope::Terminal),
    (AlertKind::FirmwareRegression, Scope::Cohort),
];

/// Detectors an artifact may lack: training leaves one out when its labels
/// hold no incident of its kind (a fleet that never rolled out firmware
/// under watch), and the service then scores nothing of that kind.
const OPTIONAL: [(AlertKind, Scope); 1] = [(AlertKind::FirmwareRegression, Scope::Cohort)];

impl ModelSet {
    /// Loads an artifact, refusing one whose format or feature set does not
    /// match what this build computes.
    pub fn load(path: &Path) -> Result<ModelSet, ModelError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ModelError::Read { path: p.clone(), cause })?;
        let set: ModelSet =
            serde_json::from_str(&text).map_err(|cause| ModelError::Parse { path: p.clone(), cause })?;
        set.check(&p)?;
        Ok(set)
    }

    fn check(&self, path: &str) -> Result<(), ModelError> {
        if self.format != FORMAT {
            return Err(ModelError::Format { path: path.into(), found: self.format.clone() });
        }
        self.features.check().map_err(|cause| ModelError::FeatureConfig { path: path.into(), cause })?;
        self.alerting.validate().map_err(|cause| ModelError::Alerting { path: path.into(), cause })?;
        for (kind, scope) in DETECTORS {
            let Some(d) = self.detector(kind, scope) else {
                if OPTIONAL.contains(&(kind, scope)) {
                    continue;
                }
                return Err(ModelError::Missing { path: path.into(), kind, scope });
            };
            let want = expected(kind, scope);
            if d.feature_names.iter().map(String::as_str).ne(want.iter().copied())
                || d.means.len() != want.len()
                || d.scales.len() != want.len()
                || d.weights.len() != want.len()
            {
                return Err(ModelError::Features {
                    path: path.into(),
                    kind,
                    scope,
                    found: d.feature_names.clone(),
                    expected: want.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        Ok(())
    }

    pub fn detector(&self, kind: AlertKind, scope: Scope) -> Option<&Detector> {
        self.detectors.iter().find(|d| d.kind == kind && d.scope == scope)
    }
}

/// Whether a site's voltage row is scored at site scope: a one-terminal site
/// is that terminal, and the terminal detector speaks for it. Training
/// leaves the same rows out.
pub fn scored_at_site_scope(features: &[f64]) -> bool {
    features.get(names::SITE_TERMINALS_REPORTING).is_some_and(|n| *n >= 2.0)
}
