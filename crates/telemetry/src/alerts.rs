//! Alert events and incident labels, as `shared/contracts/alerts-v1.md`
//! defines them. One shape for both, so one evaluator reads the detector's
//! output and the ground truth (simulator or analyst) alike.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::serde_rfc3339;

/// What was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    HardwareAging,
    VoltageInstability,
    NetworkDegradation,
    /// A firmware version that makes terminals crash, leak memory or reboot
    /// more than the version they ran before (cohort scope, 2026-12-03).
    FirmwareRegression,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::HardwareAging,
        AlertKind::VoltageInstability,
        AlertKind::NetworkDegradation,
        AlertKind::FirmwareRegression,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::HardwareAging => "hardware_aging",
            AlertKind::VoltageInstability => "voltage_instability",
            AlertKind::NetworkDegradation => "network_degradation",
            AlertKind::FirmwareRegression => "firmware_regression",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an alert or incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Terminal,
    Site,
    Region,
    /// A terminal model on one firmware version, entity `MODEL/FIRMWARE`,
    /// region `"*"` (it spans the fleet).
    Cohort,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Terminal => "terminal",
            Scope::Site => "site",
            Scope::Region => "region",
            Scope::Cohort => "cohort",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// One feature that drove a score, with the baseline it was compared to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub feature: String,
    pub value: f64,
    pub baseline: f64,
    /// At `cohort` scope, the `MODEL/FIRMWARE` the baseline is that of: the
    /// version the cohort's terminals ran before. An extra key, written only
    /// there: alerts-v1 readers that take `feature`, `value` and `baseline`
    /// are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<String>,
}

/// A change of alert state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Event time of the change (telemetry time, not wall clock), epoch ms.
    #[serde(with = "serde_rfc3339")]
    pub ts: i64,
    pub kind: AlertKind,
    pub scope: Scope,
    pub entity: String,
    pub region: String,
    pub state: AlertState,
    pub severity: Severity,
    /// Anomaly score, 0-1.
    pub score: f64,
    pub model_version: String,
    /// Most important first.
    pub reasons: Vec<Reason>,
}

/// An analyst's (or the simulator's) verdict on a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Incident,
    NotIncident,
}

impl Verdict {
    fn is_incident(&self) -> bool {
        *self == Verdict::Incident
    }
}

/// A ground-truth incident (or, with `verdict: not_incident`, a span where
/// alerts were false).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IncidentLabel {
    pub kind: AlertKind,
    pub scope: Scope,
    pub entity: String,
    pub region: String,
    /// When the fault began, epoch ms.
    #[serde(with = "serde_rfc3339")]
    pub start: i64,
    /// When it ended (for hardware aging: when the part failed), epoch ms.
    #[serde(with = "serde_rfc3339")]
    pub end: i64,
    /// Absent means `incident`; written only when it is not.
    #[serde(default, skip_serializing_if = "Verdict::is_incident")]
    pub verdict: Verdict,
    /// What failed, in a word (`card_reader`, `printer`, `battery`,
    /// `site_mains`, `power_supply`, `uplink`...). An extension of alerts-v1
    /// for analysts: readers that do not know it ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_in_contract_shape() {
        let line = r#"{"kind":"network_degradation","scope":"region","entity":"east-07","region":"east-07","start":"2026-11-24T10:00:00Z","end":"2026-11-24T12:30:00Z"}"#;
        let label: IncidentLabel = serde_json::from_str(line).expect("contract example parses");
        assert_eq!(label.verdict, Verdict::Incident);
        assert_eq!(serde_json::to_string(&label).expect("serialises"), line);
    }

    #[test]
    fn reads_the_firmware_regression_kind_and_cohort_scope() {
        let line = r#"{"kind":"firmware_regression","scope":"cohort","entity":"P200/6.0.0","region":"*","start":"2026-11-24T10:00:00Z","end":"2026-11-26T10:00:00Z"}"#;
        let label: IncidentLabel = serde_json::from_str(line).expect("contract example parses");
        assert_eq!((label.kind, label.scope), (AlertKind::FirmwareRegression, Scope::Cohort));
        assert_eq!(serde_json::to_string(&label).expect("serialises"), line);
    }

    #[test]
    fn not_incident_verdict_is_read() {
        let line = r#"{"kind":"hardware_aging","scope":"terminal","entity":"T-1","region":"r","start":"2026-11-24T10:00:00Z","end":"2026-11-25T10:00:00Z","verdict":"not_incident"}"#;
        let label: IncidentLabel = serde_json::from_str(line).expect("parses");
        assert_eq!(label.verdict, Verdict::NotIncident);
    }

    #[test]
    fn alert_event_serialises_per_contract() {
        let ev = AlertEvent {
            ts: 1_795_514_460_000,
            kind: AlertKind::VoltageInstability,
            scope: Scope::Site,
            entity: "S-0042".into(),
            region: "east-07".into(),
            state: AlertState::Firing,
            severity: Severity::Critical,
            score: 0.97,
            model_version: "voltage-2026.11.1".into(),
            reasons: vec![Reason {
                feature: "supply_v_std".into(),
                value: 0.71,
                baseline: 0.04,
                baseline_version: None,
            }],
        };
        let json = serde_json::to_value(&ev).expect("serialises");
        assert_eq!(json["ts"], "2026-11-24T10:01:00Z");
        assert_eq!(json["kind"], "voltage_instability");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["reasons"][0]["feature"], "supply_v_std");
    }
}
