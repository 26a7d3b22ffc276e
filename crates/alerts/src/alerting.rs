//! Alert state with hysteresis: turns the detectors' per-window verdicts into
//! alert events exactly as `contracts/alerts-v1.md` defines them.
//!
//! For every `(kind, scope, entity)` the [`AlertTracker`] keeps two counters,
//! never a history of windows:
//!
//! - while quiet, the run of consecutive bad windows: the `k`-th
//!   ([`HysteresisConfig::fire_after_bad_windows`]) emits a `firing` event
//!   of severity `warning`, and so does any *critical* window at once, with
//!   severity `critical` (the two-tier policy);
//! - while firing, the run of consecutive good windows: the `m`-th
//!   ([`HysteresisConfig::resolve_after_good_windows`]) emits a `resolved` one.
//!   A window below the threshold that still holds the alert up (at or above
//!   the detector's resolve threshold, [`Scored::holds`]) is not good: it
//!   breaks the run without changing the alert's reasons.
//!
//! So an entity has at most one firing alert of a kind at a time, and its
//! events alternate `firing`, `resolved`, `firing`... as the contract requires.
//!
//! Runs count *reported* windows, not wall time: a window in which an entity
//! sent nothing (a terminal switched off for the night) is neither bad nor
//! good, and the detectors simply do not report it. An alert whose entity
//! stops reporting altogether is closed by [`AlertTracker::expire`] once it
//! has been silent for [`HysteresisConfig::stale_after_ms`] of event time.
//!
//! A critical window is one at or above the detector's critical threshold,
//! which training calibrates with the ordinary threshold so that the two
//! tiers together stay within the false-alert target (or sets to 1.0, the
//! tier off, when firing at once does not help on the training incidents).
//! So `critical` means "so far out that one window was enough": it needs no
//! second window of evidence, and it pages.
//!
//! Severity is decided once, by the window that fires the alert. The contract
//! knows only two transitions (firing, resolved), so a warning that later sees
//! a critical window emits nothing new: re-firing would break "at most one
//! firing alert", and a third state would break every reader of the contract.
//! The highest severity seen while firing is kept in the state
//! ([`FiringAlert::peak_severity`]) and is what [`AlertTracker::firing_counts`]
//! groups by, so dashboards and Prometheus rules see the escalation.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use termwatch_models::detector::Detector;
use termwatch_models::policy::{AlertingConfig, HysteresisConfig, PolicyError, Transition, hysteresis};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, AlertState, Reason, Scope, Severity};
use thiserror::Error;

/// Why an alert state snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AlertingError {
    /// A snapshot names the same `(kind, scope, entity)` twice: it is corrupt.
    #[error("alert state snapshot holds {kind} {scope} {entity:?} twice")]
    DuplicateSnapshotEntry { kind: AlertKind, scope: Scope, entity: String },
}

/// One detector's verdict on one closed event-time window of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'a> {
    /// End of the window, event time, epoch ms.
    pub window_end_ms: i64,
    pub kind: AlertKind,
    pub scope: Scope,
    /// The `terminal_id`, `site_id` or region at that scope.
    pub entity: &'a str,
    /// The region the entity is in.
    pub region: &'a str,
    /// Anomaly score, 0-1. A non-finite score is ignored and counted.
    pub score: f64,
    /// The score is above the detector's calibrated threshold.
    pub bad: bool,
    /// The score is at or above the detector's critical threshold (implies
    /// `bad`): a quiet entity fires at once, with severity critical.
    pub critical: bool,
    /// The score is at or above the detector's resolve threshold (implied
    /// by `bad`): while the entity's alert fires, the window holds it up
    /// and does not count towards resolving it.
    pub holds: bool,
    pub model_version: &'a str,
    /// The features that drove the score, most important first.
    pub reasons: Reasons<'a>,
}

/// A window's reasons, worked out only when an event or a firing alert
/// needs them: most windows are of quiet entities that stay quiet, and
/// naming their reasons cost an allocation and three copied feature names
/// each.
#[derive(Debug, Clone, PartialEq)]
pub enum Reasons<'a> {
    Given(Vec<Reason>),
    /// [`Detector::reasons`] of these features, each naming the version its
    /// baseline is (firmware compares a version with the one before).
    Of {
        detector: &'a Detector,
        features: &'a [f64],
        baselines: &'a [f64],
        baseline_version: Option<&'a str>,
    },
}

impl Reasons<'_> {
    /// The three features that pushed the score up most.
    pub fn to_vec(&self) -> Vec<Reason> {
        match self {
            Reasons::Given(r) => r.clone(),
            Reasons::Of { detector, features, baselines, baseline_version } => {
                let mut reasons = detector.reasons(features, baselines, 3);
                if let Some(v) = baseline_version {
                    for r in &mut reasons {
                        r.baseline_version = Some((*v).to_owned());
                    }
                }
                reasons
            }
        }
    }
}

impl From<Vec<Reason>> for Reasons<'_> {
    fn from(r: Vec<Reason>) -> Self {
        Reasons::Given(r)
    }
}

/// Windows and alerts the tracker dropped or closed on its own, since it was
/// built (not part of a snapshot: these are process counters for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertingStats {
    /// Windows older than the last one seen for their entity: ignored.
    pub out_of_order_windows: u64,
    /// Windows with the same end as the last one seen for their entity (a
    /// replay after a crash): ignored, so no window counts twice.
    pub repeated_windows: u64,
    /// Windows whose score was NaN or infinite: ignored.
    pub invalid_scores: u64,
    /// Firing alerts resolved by [`AlertTracker::expire`].
    pub expired_alerts: u64,
    /// Firing alerts resolved by [`AlertTracker::retire`].
    pub retired_alerts: u64,
    /// Quiet entities dropped by [`AlertTracker::expire`].
    pub forgotten_entities: u64,
}

/// A currently firing alert, as dashboards and metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringAlert<'a> {
    pub kind: AlertKind,
    pub scope: Scope,
    pub entity: &'a str,
    pub region: &'a str,
    /// The severity the `firing` event announced (and the `resolved` event
    /// will repeat).
    pub severity: Severity,
    /// The highest severity of any bad window since the alert fired.
    pub peak_severity: Severity,
    /// Event time of the `firing` event, epoch ms.
    pub since_ms: i64,
    /// End of the latest window scored for the entity, epoch ms.
    pub last_window_end_ms: i64,
    /// Score of the latest window (good or bad).
    pub last_score: f64,
    /// Model that scored the latest window.
    pub model_version: &'a str,
    /// Reasons of the latest *bad* window: why the entity is flagged.
    pub reasons: &'a [Reason],
}

/// How many alerts fire now for one `(kind, scope, severity, region)`, with
/// `severity` the peak severity. Groups that fired once stay listed at 0, so
/// a gauge goes back to 0 instead of vanishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiringCount<'a> {
    pub kind: AlertKind,
    pub scope: Scope,
    pub severity: Severity,
    pub region: &'a str,
    pub count: u32,
}

/// State of one tracked `(kind, scope, entity)`: two counters, a timestamp,
/// the region, and the firing alert if there is one. Kept small on purpose
/// (40 bytes plus the region string): a quiet entity costs no more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    region: Box<str>,
    last_window_end_ms: i64,
    /// Consecutive bad windows while quiet (0 while firing).
    bad_run: u32,
    firing: Option<Box<Firing>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Firing {
    since_ms: i64,
    severity: Severity,
    peak_severity: Severity,
    /// Consecutive good windows since the last bad one.
    good_run: u32,
    last_score: f64,
    model_version: Box<str>,
    #[serde(with = "snapshot_reasons")]
    reasons: Vec<Reason>,
}

/// Reasons in a snapshot: every field written, whatever it holds. alerts-v1
/// JSON leaves `baseline_version` out when there is none, which a format
/// without field names (postcard) cannot read back.
mod snapshot_reasons {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use termwatch_telemetry::alerts::Reason;

    type Fields = (String, f64, f64, Option<String>);

    pub fn serialize<S: Serializer>(reasons: &[Reason], s: S) -> Result<S::Ok, S::Error> {
        let fields: Vec<Fields> =
            reasons.iter().map(|r| (r.feature.clone(), r.value, r.baseline, r.baseline_version.clone())).collect();
        fields.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reason>, D::Error> {
        let fields = Vec::<Fields>::deserialize(d)?;
        Ok(fields
            .into_iter()
            .map(|(feature, value, baseline, baseline_version)| Reason { feature, value, baseline, baseline_version })
            .collect())
    }
}

/// The serialised alert state: one entry per tracked `(kind, scope, entity)`,
/// sorted, so equal states serialise to equal bytes. Opaque: take it with
/// [`AlertTracker::snapshot`], give it back with [`AlertTracker::restore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSnapshot {
    entries: Vec<SnapshotEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotEntry {
    kind: AlertKind,
    scope: Scope,
    entity: Box<str>,
    state: Entry,
}

const SCOPES: [Scope; 4] = [Scope::Terminal, Scope::Site, Scope::Region, Scope::Cohort];
const SLOTS: usize = AlertKind::ALL.len() * SCOPES.len();
const SEVERITIES: [Severity; 2] = [Severity::Warning, Severity::Critical];

fn kind_index(kind: AlertKind) -> usize {
    match kind {
        AlertKind::HardwareAging => 0,
        AlertKind::VoltageInstability => 1,
        AlertKind::NetworkDegradation => 2,
        AlertKind::FirmwareRegression => 3,
    }
}

fn slot(kind: AlertKind, scope: Scope) -> usize {
    let scope = match scope {
        Scope::Terminal => 0,
        Scope::Site => 1,
        Scope::Region => 2,
        Scope::Cohort => 3,
    };
    kind_index(kind) * SCOPES.len() + scope
}

fn slot_key(slot: usize) -> (AlertKind, Scope) {
    (AlertKind::ALL[slot / SCOPES.len()], SCOPES[slot % SCOPES.len()])
}

fn severity_index(severity: Severity) -> usize {
    match severity {
        Severity::Warning => 0,
        Severity::Critical => 1,
    }
}

/// Firing alerts per region, indexed by `slot * 2 + severity`; `None` for a
/// group that never fired in that region.
type Counts = HashMap<Box<str>, [Option<u32>; SLOTS * 2]>;

fn count_add(counts: &mut Counts, slot: usize, severity: Severity, region: &str) {
    let groups = match counts.get_mut(region) {
        Some(groups) => groups,
        None => counts.entry(region.into()).or_insert([None; SLOTS * 2]),
    };
    let n = &mut groups[slot * 2 + severity_index(severity)];
    *n = Some(n.unwrap_or(0).saturating_add(1));
}

fn count_remove(counts: &mut Counts, slot: usize, severity: Severity, region: &str) {
    if let Some(groups) = counts.get_mut(region)
        && let Some(n) = &mut groups[slot * 2 + severity_index(severity)]
    {
        *n = n.saturating_sub(1);
    }
}

/// The `resolved` event of an alert taken off `entry` without a window to
/// say so (it went stale, or what it is about is gone): at `ts`, with its
/// last score and no reasons. Windows of the entity up to `ts` are then
/// ignored as out of order, so its events stay in time order.
fn resolve_unscored(
    slot: usize,
    entity: &str,
    entry: &mut Entry,
    firing: Firing,
    ts: i64,
    counts: &mut Counts,
) -> AlertEvent {
    let (kind, scope) = slot_key(slot);
    count_remove(counts, slot, firing.peak_severity, &entry.region);
    entry.last_window_end_ms = ts;
    entry.bad_run = 0;
    AlertEvent {
        ts,
        kind,
        scope,
        entity: entity.to_string(),
        region: entry.region.to_string(),
        state: AlertState::Resolved,
        severity: firing.severity,
        score: firing.last_score,
        model_version: firing.model_version.into_string(),
        reasons: Vec::new(),
    }
}

/// The alert state of every tracked `(kind, scope, entity)`. Built by
/// [`AlertTracker::new`]; fed by [`AlertTracker::observe`] once per
/// closed window per scored entity, and by [`AlertTracker::expire`] as
/// event time advances.
#[derive(Debug, Clone)]
pub struct AlertTracker {
    params: [HysteresisConfig; AlertKind::ALL.len()],
    /// One map per `(kind, scope)`, so a lookup by `&str` allocates nothing.
    entities: [HashMap<Box<str>, Entry>; SLOTS],
    counts: Counts,
    /// No entry can be stale before this event time: `expire` scans nothing
    /// until then.
    next_expiry_ms: i64,
    stats: AlertingStats,
}

impl AlertTracker {
    /// An empty tracker with the model's hysteresis, refused when a
    /// parameter is out of range.
    pub fn new(config: &AlertingConfig) -> Result<AlertTracker, PolicyError> {
        config.validate()?;
        Ok(AlertTracker {
            params: AlertKind::ALL.map(|kind| *config.for_kind(kind)),
            entities: Default::default(),
            counts: HashMap::new(),
            next_expiry_ms: i64::MAX,
            stats: AlertingStats::default(),
        })
    }

    /// Applies one window's verdict; returns the alert event it causes, if
    /// any. Windows not newer than the last one seen for the entity, and
    /// windows with a non-finite score, are ignored and counted in
    /// [`AlertTracker::stats`].
    pub fn observe(&mut self, scored: Scored<'_>) -> Option<AlertEvent> {
        if !scored.score.is_finite() {
            self.stats.invalid_scores += 1;
            return None;
        }
        let slot = slot(scored.kind, scored.scope);
        let params = self.params[kind_index(scored.kind)];
        let map = &mut self.entities[slot];
        if let Some(entry) = map.get_mut(scored.entity) {
            if scored.window_end_ms < entry.last_window_end_ms {
                self.stats.out_of_order_windows += 1;
                return None;
            }
            if scored.window_end_ms == entry.last_window_end_ms {
                self.stats.repeated_windows += 1;
                return None;
            }
            return step(entry, scored, &params, slot, &mut self.counts);
        }
        let mut entry =
            Entry { region: scored.region.into(), last_window_end_ms: scored.window_end_ms, bad_run: 0, firing: None };
        self.next_expiry_ms = self.next_expiry_ms.min(scored.window_end_ms.saturating_add(params.stale_after_ms));
        let entity: Box<str> = scored.entity.into();
        let event = step(&mut entry, scored, &params, slot, &mut self.counts);
        map.insert(entity, entry);
        event
    }

    /// Resolves every firing alert whose entity has not been scored for its
    /// kind's `stale_after_ms` at event time `now_event_ms` (the watermark),
    /// with `ts = now_event_ms`, the last score and no reasons; and forgets
    /// quiet entities silent that long (their partial bad run with them).
    ///
    /// An expired entity is remembered as seen at `now_event_ms`, so a window
    /// that ends before the `resolved` event is ignored as out of order and
    /// the entity's events stay in time order. Cheap to call once per batch:
    /// it scans only when some entry may have become stale.
    pub fn expire(&mut self, now_event_ms: i64) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        if now_event_ms < self.next_expiry_ms {
            return events;
        }
        let mut next_expiry_ms = i64::MAX;
        let (counts, stats) = (&mut self.counts, &mut self.stats);
        for (slot, map) in self.entities.iter_mut().enumerate() {
            let (kind, _) = slot_key(slot);
            let stale_after_ms = self.params[kind_index(kind)].stale_after_ms;
            map.retain(|entity, entry| {
                let deadline = entry.last_window_end_ms.saturating_add(stale_after_ms);
                if now_event_ms < deadline {
                    next_expiry_ms = next_expiry_ms.min(deadline);
                    return true;
                }
                let Some(firing) = entry.firing.take() else {
                    stats.forgotten_entities += 1;
                    return false;
                };
                stats.expired_alerts += 1;
                events.push(resolve_unscored(slot, entity, entry, *firing, now_event_ms, counts));
                next_expiry_ms = next_expiry_ms.min(now_event_ms.saturating_add(stale_after_ms));
                true
            });
        }
        self.next_expiry_ms = next_expiry_ms;
        events
    }

    /// Resolves the firing alert of `(kind, scope, entity)`, if there is
    /// one, at the end of the window `window_end_ms`: what it is about is
    /// gone (a firmware version no terminal runs any more, its rollback
    /// done), so there is nothing left to wait a day of silence for. With
    /// the last score and no reasons, as a stale alert; a window of the
    /// entity ending at or before it is then ignored as out of order.
    pub fn retire(&mut self, kind: AlertKind, scope: Scope, entity: &str, window_end_ms: i64) -> Option<AlertEvent> {
        let slot = slot(kind, scope);
        let entry = self.entities[slot].get_mut(entity)?;
        if window_end_ms <= entry.last_window_end_ms {
            return None;
        }
        let firing = entry.firing.take()?;
        self.stats.retired_alerts += 1;
        Some(resolve_unscored(slot, entity, entry, *firing, window_end_ms, &mut self.counts))
    }

    /// Every currently firing alert, in no particular order.
    pub fn firing(&self) -> impl Iterator<Item = FiringAlert<'_>> + '_ {
        self.entities.iter().enumerate().flat_map(|(slot, map)| {
            let (kind, scope) = slot_key(slot);
            map.iter().filter_map(move |(entity, entry)| firing_view(kind, scope, entity, entry))
        })
    }

    /// The firing alert of one `(kind, scope, entity)`, if it has one.
    pub fn firing_alert(&self, kind: AlertKind, scope: Scope, entity: &str) -> Option<FiringAlert<'_>> {
        let (entity, entry) = self.entities[slot(kind, scope)].get_key_value(entity)?;
        firing_view(kind, scope, entity, entry)
    }

    /// Number of firing alerts.
    pub fn firing_len(&self) -> usize {
        self.entities.iter().flat_map(HashMap::values).filter(|e| e.firing.is_some()).count()
    }

    /// Firing alerts per `(kind, scope, peak severity, region)`, including
    /// groups back at 0 (see [`FiringCount`]). Kept up to date as alerts
    /// change, so this costs the number of groups, not of entities.
    pub fn firing_counts(&self) -> impl Iterator<Item = FiringCount<'_>> + '_ {
        self.counts.iter().flat_map(|(region, groups)| {
            groups.iter().enumerate().filter_map(move |(i, n)| {
                let count = (*n)?;
                let (kind, scope) = slot_key(i / 2);
                Some(FiringCount { kind, scope, severity: SEVERITIES[i % 2], region, count })
            })
        })
    }

    /// Number of tracked `(kind, scope, entity)`, firing or not.
    pub fn len(&self) -> usize {
        self.entities.iter().map(HashMap::len).sum()
    }

    /// Whether no entity is tracked.
    pub fn is_empty(&self) -> bool {
        self.entities.iter().all(HashMap::is_empty)
    }

    /// Ignored windows and expired alerts since the tracker was built.
    pub fn stats(&self) -> AlertingStats {
        self.stats
    }

    /// The whole alert state, sorted by `(kind, scope, entity)`.
    pub fn snapshot(&self) -> AlertSnapshot {
        let mut entries: Vec<SnapshotEntry> = self
            .entities
            .iter()
            .enumerate()
            .flat_map(|(slot, map)| {
                let (kind, scope) = slot_key(slot);
                map.iter().map(move |(entity, state)| SnapshotEntry {
                    kind,
                    scope,
                    entity: entity.clone(),
                    state: state.clone(),
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.kind, a.scope, &a.entity).cmp(&(b.kind, b.scope, &b.entity)));
        AlertSnapshot { entries }
    }

    /// The state of the entries `keep` selects, sorted (for a per-partition
    /// snapshot: the terminal-scope entries of that partition's terminals).
    pub fn export(&self, mut keep: impl FnMut(Scope, &str) -> bool) -> AlertSnapshot {
        let mut entries = Vec::new();
        for (slot, map) in self.entities.iter().enumerate() {
            let (kind, scope) = slot_key(slot);
            for (entity, state) in map {
                if keep(scope, entity) {
                    entries.push(SnapshotEntry { kind, scope, entity: entity.clone(), state: state.clone() });
                }
            }
        }
        entries.sort_by(|a, b| (a.kind, a.scope, &a.entity).cmp(&(b.kind, b.scope, &b.entity)));
        AlertSnapshot { entries }
    }

    /// Forgets the entries `remove` selects; returns how many.
    pub fn remove(&mut self, mut remove: impl FnMut(Scope, &str) -> bool) -> usize {
        let mut removed = 0;
        for (slot, map) in self.entities.iter_mut().enumerate() {
            let (_, scope) = slot_key(slot);
            let counts = &mut self.counts;
            map.retain(|entity, state| {
                if !remove(scope, entity) {
                    return true;
                }
                if let Some(firing) = &state.firing {
                    count_remove(counts, slot, firing.peak_severity, &state.region);
                }
                removed += 1;
                false
            });
        }
        removed
    }

    /// Adds a snapshot's entries to the state, replacing entries of the same
    /// `(kind, scope, entity)`. On error the tracker is left unchanged.
    pub fn import(&mut self, snapshot: AlertSnapshot) -> Result<(), AlertingError> {
        let mut seen = std::collections::HashSet::new();
        for e in &snapshot.entries {
            if !seen.insert((e.kind, e.scope, &e.entity)) {
                return Err(AlertingError::DuplicateSnapshotEntry {
                    kind: e.kind,
                    scope: e.scope,
                    entity: e.entity.to_string(),
                });
            }
        }
        for SnapshotEntry { kind, scope, entity, state } in snapshot.entries {
            let slot = slot(kind, scope);
            if let Some(firing) = &state.firing {
                count_add(&mut self.counts, slot, firing.peak_severity, &state.region);
            }
            if let Some(old) = self.entities[slot].insert(entity, state)
                && let Some(firing) = &old.firing
            {
                count_remove(&mut self.counts, slot, firing.peak_severity, &old.region);
            }
        }
        self.next_expiry_ms = i64::MIN;
        Ok(())
    }

    /// Replaces the state with a snapshot's. The configuration stays this
    /// tracker's: runs are compared with the current `k` and `m`, so a
    /// smaller `k` fires on the next bad window. The stats are not restored.
    /// On error the tracker is left unchanged.
    pub fn restore(&mut self, snapshot: AlertSnapshot) -> Result<(), AlertingError> {
        let mut entities: [HashMap<Box<str>, Entry>; SLOTS] = Default::default();
        let mut counts = Counts::new();
        for SnapshotEntry { kind, scope, entity, state } in snapshot.entries {
            let slot = slot(kind, scope);
            if let Some(firing) = &state.firing {
                count_add(&mut counts, slot, firing.peak_severity, &state.region);
            }
            if entities[slot].contains_key(&entity) {
                return Err(AlertingError::DuplicateSnapshotEntry { kind, scope, entity: entity.into_string() });
            }
            entities[slot].insert(entity, state);
        }
        self.entities = entities;
        self.counts = counts;
        // Restored entries may already be stale: let the next `expire` look.
        self.next_expiry_ms = i64::MIN;
        Ok(())
    }
}

fn firing_view<'a>(kind: AlertKind, scope: Scope, entity: &'a str, entry: &'a Entry) -> Option<FiringAlert<'a>> {
    let firing = entry.firing.as_deref()?;
    Some(FiringAlert {
        kind,
        scope,
        entity,
        region: &entry.region,
        severity: firing.severity,
        peak_severity: firing.peak_severity,
        since_ms: firing.since_ms,
        last_window_end_ms: entry.last_window_end_ms,
        last_score: firing.last_score,
        model_version: &firing.model_version,
        reasons: &firing.reasons,
    })
}

/// Applies a window already known to be newer than the entry's last one.
fn step(
    entry: &mut Entry,
    scored: Scored<'_>,
    params: &HysteresisConfig,
    slot: usize,
    counts: &mut Counts,
) -> Option<AlertEvent> {
    entry.last_window_end_ms = scored.window_end_ms;
    let bad = scored.bad || scored.critical;
    let severity = if scored.critical { Severity::Critical } else { Severity::Warning };
    let event = |state, severity, region: &str, reasons| AlertEvent {
        ts: scored.window_end_ms,
        kind: scored.kind,
        scope: scored.scope,
        entity: scored.entity.to_string(),
        region: region.to_string(),
        state,
        severity,
        score: scored.score,
        model_version: scored.model_version.to_string(),
        reasons,
    };
    let (k, m) = (params.fire_after_bad_windows, params.resolve_after(scored.scope));
    let Some(firing) = entry.firing.as_deref_mut() else {
        // Quiet. The region follows the entity; while firing it stays the
        // one the `firing` event named, so the `resolved` event matches it.
        if *entry.region != *scored.region {
            entry.region = scored.region.into();
        }
        if hysteresis(false, &mut entry.bad_run, bad, scored.holds, scored.critical, k, m) == Transition::Stay {
            return None;
        }
        let reasons = scored.reasons.to_vec();
        entry.firing = Some(Box::new(Firing {
            since_ms: scored.window_end_ms,
            severity,
            peak_severity: severity,
            good_run: 0,
            last_score: scored.score,
            model_version: scored.model_version.into(),
            reasons: reasons.clone(),
        }));
        count_add(counts, slot, severity, &entry.region);
        return Some(event(AlertState::Firing, severity, &entry.region, reasons));
    };
    firing.last_score = scored.score;
    if *firing.model_version != *scored.model_version {
        firing.model_version = scored.model_version.into();
    }
    let transition = hysteresis(true, &mut firing.good_run, bad, scored.holds, scored.critical, k, m);
    if bad {
        if severity > firing.peak_severity {
            count_remove(counts, slot, firing.peak_severity, &entry.region);
            count_add(counts, slot, severity, &entry.region);
            firing.peak_severity = severity;
        }
        firing.reasons = scored.reasons.to_vec();
        return None;
    }
    if transition != Transition::Resolve {
        return None;
    }
    let (announced, peak) = (firing.severity, firing.peak_severity);
    entry.firing = None;
    count_remove(counts, slot, peak, &entry.region);
    Some(event(AlertState::Resolved, announced, &entry.region, scored.reasons.to_vec()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use termwatch_telemetry::time::MS_PER_HOUR;

    use super::*;

    const MIN5: i64 = 5 * 60 * 1000;
    const T0: i64 = 1_795_514_400_000;

    fn reason(value: f64) -> Reason {
        Reason { feature: "supply_v_std".into(), value, baseline: 0.04, baseline_version: None }
    }

    /// Window `i` (5-minute windows from `T0`) of terminal T-1's voltage.
    fn win(i: i64, bad: bool) -> Scored<'static> {
        scored("T-1", i, bad, false)
    }

    fn scored(entity: &'static str, i: i64, bad: bool, critical: bool) -> Scored<'static> {
        let score = if critical {
            0.99
        } else if bad {
            0.9
        } else {
            0.1
        };
        Scored {
            window_end_ms: T0 + i * MIN5,
            kind: AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            entity,
            region: "east-07",
            score,
            bad,
            critical,
            holds: bad,
            model_version: "voltage-test",
            reasons: if bad { vec![reason(score)] } else { Vec::new() }.into(),
        }
    }

    fn tracker(k: u32, m: u32) -> AlertTracker {
        let h = HysteresisConfig {
            fire_after_bad_windows: k,
            resolve_after_good_windows: m,
            terminal_resolve_after_good_windows: None,
            stale_after_ms: 6 * MS_PER_HOUR,
        };
        AlertTracker::new(&AlertingConfig {
            hardware_aging: h,
            voltage_instability: h,
            network_degradation: h,
            firmware_regression: h,
        })
        .expect("valid config")
    }

    /// Feeds windows, returning `(window index, state)` of each event.
    fn feed(t: &mut AlertTracker, windows: impl IntoIterator<Item = Scored<'static>>) -> Vec<(i64, AlertState)> {
        windows.into_iter().filter_map(|w| t.observe(w)).map(|e| ((e.ts - T0) / MIN5, e.state)).collect()
    }

    #[test]
    fn terminal_alerts_can_resolve_after_more_good_windows_than_site_alerts() {
        let h = HysteresisConfig {
            fire_after_bad_windows: 1,
            resolve_after_good_windows: 2,
            terminal_resolve_after_good_windows: Some(4),
            stale_after_ms: 6 * MS_PER_HOUR,
        };
        let mut t = AlertTracker::new(&AlertingConfig {
            hardware_aging: h,
            voltage_instability: h,
            network_degradation: h,
            firmware_regression: h,
        })
        .expect("valid config");
        let site = |i, bad| Scored { scope: Scope::Site, entity: "S-1", ..win(i, bad) };
        let windows = (0..6).flat_map(|i| [win(i, i == 0), site(i, i == 0)]);
        let events: Vec<_> =
            windows.filter_map(|w| t.observe(w)).map(|e| (e.scope, (e.ts - T0) / MIN5, e.state)).collect();
        assert_eq!(
            events,
            [
                (Scope::Terminal, 0, AlertState::Firing),
                (Scope::Site, 0, AlertState::Firing),
                (Scope::Site, 2, AlertState::Resolved),
                (Scope::Terminal, 4, AlertState::Resolved),
            ]
        );
        let zero = HysteresisConfig { terminal_resolve_after_good_windows: Some(0), ..h };
        let err =
            AlertTracker::new(&AlertingConfig { voltage_instability: zero, ..AlertingConfig::default() }).map(|_| ());
        assert!(
            matches!(err, Err(PolicyError::InvalidParameter { field: "terminal_resolve_after_good_windows", .. })),
            "{err:?}"
        );
    }

    #[test]
    fn fires_after_k_consecutive_bad_windows() {
        let mut t = tracker(3, 3);
        assert_eq!(t.observe(win(0, true)), None);
        assert_eq!(t.observe(win(1, true)), None);
        let ev = t.observe(win(2, true)).expect("third bad window fires");
        assert_eq!(ev.state, AlertState::Firing);
        assert_eq!(ev.ts, T0 + 2 * MIN5);
        assert_eq!(
            (ev.kind, ev.scope, ev.entity.as_str(), ev.region.as_str()),
            (AlertKind::VoltageInstability, Scope::Terminal, "T-1", "east-07")
        );
        assert_eq!(ev.severity, Severity::Warning);
        assert_eq!(ev.score, 0.9);
        assert_eq!(ev.model_version, "voltage-test");
        assert_eq!(ev.reasons, vec![reason(0.9)]);
        let alert = t.firing_alert(AlertKind::VoltageInstability, Scope::Terminal, "T-1").expect("firing");
        assert_eq!(alert.since_ms, ev.ts);
    }

    #[test]
    fn a_good_window_resets_the_bad_count() {
        let mut t = tracker(2, 3);
        assert_eq!(feed(&mut t, [win(0, true), win(1, false), win(2, true)]), vec![]);
        assert_eq!(feed(&mut t, [win(3, true)]), vec![(3, AlertState::Firing)]);
    }

    #[test]
    fn resolves_after_m_good_windows() {
        let mut t = tracker(2, 3);
        assert_eq!(feed(&mut t, [win(0, true), win(1, true)]), vec![(1, AlertState::Firing)]);
        assert_eq!(feed(&mut t, [win(2, false), win(3, false)]), vec![]);
        let ev = t.observe(win(4, false)).expect("third good window resolves");
        assert_eq!(ev.state, AlertState::Resolved);
        assert_eq!(ev.ts, T0 + 4 * MIN5);
        assert_eq!(ev.score, 0.1);
        assert_eq!(ev.severity, Severity::Warning);
        assert!(ev.reasons.is_empty());
        assert_eq!(t.firing_len(), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_bad_window_resets_the_good_count() {
        let mut t = tracker(2, 3);
        let windows =
            [win(0, true), win(1, true), win(2, false), win(3, false), win(4, true), win(5, false), win(6, false)];
        assert_eq!(feed(&mut t, windows), vec![(1, AlertState::Firing)]);
        assert_eq!(feed(&mut t, [win(7, false)]), vec![(7, AlertState::Resolved)]);
    }

    #[test]
    fn a_window_that_holds_the_alert_breaks_the_good_run_and_keeps_the_reasons() {
        let mut t = tracker(2, 3);
        // Below the threshold, at or above the resolve threshold.
        let held = |i| Scored { score: 0.5, holds: true, ..win(i, false) };
        assert_eq!(
            feed(&mut t, [win(0, true), win(1, true), win(2, false), win(3, false)]),
            vec![(1, AlertState::Firing)]
        );
        assert_eq!(feed(&mut t, [held(4), win(5, false), win(6, false)]), vec![], "the held window restarts the run");
        let alert = t.firing_alert(AlertKind::VoltageInstability, Scope::Terminal, "T-1").expect("still firing");
        assert_eq!(alert.reasons, [reason(0.9)], "a held window is no new evidence");
        assert_eq!(feed(&mut t, [win(7, false)]), vec![(7, AlertState::Resolved)]);
        // Quiet, a window that would hold is not bad: it fires nothing.
        assert_eq!(feed(&mut t, (8..12).map(held)), vec![]);
    }

    #[test]
    fn a_retired_entitys_alert_resolves_at_once_and_only_if_firing() {
        let mut t = tracker(2, 72);
        assert_eq!(feed(&mut t, (1..=3).map(|i| win(i, true))), [(2, AlertState::Firing)]);
        let (kind, scope) = (AlertKind::VoltageInstability, Scope::Terminal);
        let at = |i: i64| T0 + i * MIN5;
        assert_eq!(t.retire(kind, scope, "T-2", at(4)), None, "nothing tracked under that name");
        assert_eq!(t.retire(kind, scope, "T-1", at(3)), None, "not at or before its last window");
        let resolved = t.retire(kind, scope, "T-1", at(4)).expect("resolved");
        assert_eq!((resolved.ts, resolved.state), (at(4), AlertState::Resolved));
        assert_eq!(t.firing_len(), 0);
        assert_eq!(t.stats().retired_alerts, 1);
        assert_eq!(t.retire(kind, scope, "T-1", at(5)), None, "resolved once");
        assert!(feed(&mut t, [win(4, true)]).is_empty(), "a window up to the retirement is out of order");
    }

    #[test]
    fn never_two_firing_alerts_for_one_entity() {
        let mut t = tracker(2, 3);
        let events = feed(&mut t, (0..50).map(|i| win(i, true)));
        assert_eq!(events, vec![(1, AlertState::Firing)]);
        assert_eq!(t.firing_len(), 1);
        // Another entity fires on its own.
        assert_eq!(
            feed(&mut t, [scored("T-2", 0, true, false), scored("T-2", 1, true, false)]),
            vec![(1, AlertState::Firing)]
        );
        assert_eq!(t.firing_len(), 2);
    }

    #[test]
    fn gaps_do_not_count_as_good() {
        let mut t = tracker(2, 3);
        // Two bad windows two hours apart (switched off between) are consecutive.
        assert_eq!(feed(&mut t, [win(0, true), win(24, true)]), vec![(24, AlertState::Firing)]);
        // One good window, then the terminal is off for four hours: still firing.
        assert_eq!(feed(&mut t, [win(25, false)]), vec![]);
        assert_eq!(t.expire(T0 + 73 * MIN5), vec![]);
        assert_eq!(t.firing_len(), 1);
        // Back on: two more good windows (three in all) resolve it.
        assert_eq!(feed(&mut t, [win(74, false), win(75, false)]), vec![(75, AlertState::Resolved)]);
    }

    #[test]
    fn stale_alerts_expire() {
        let mut t = tracker(2, 3);
        feed(&mut t, [win(0, true), win(1, true), scored("T-2", 1, true, false)]);
        let last = T0 + MIN5;
        let stale = 6 * MS_PER_HOUR;
        assert_eq!(t.expire(last + stale - 1), vec![]);
        let events = t.expire(last + stale);
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        assert_eq!((ev.state, ev.entity.as_str(), ev.ts), (AlertState::Resolved, "T-1", last + stale));
        assert_eq!((ev.severity, ev.score, ev.model_version.as_str()), (Severity::Warning, 0.9, "voltage-test"));
        assert!(ev.reasons.is_empty());
        assert_eq!(t.firing_len(), 0);
        assert_eq!(t.stats().expired_alerts, 1);
        // A late window from before the resolution is ignored: events stay in time order.
        assert_eq!(t.observe(win(2, true)), None);
        assert_eq!(t.stats().out_of_order_windows, 1);
        // The quiet T-2 (one bad window) is forgotten; T-1 after another stale period.
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(last + 2 * stale), vec![]);
        assert!(t.is_empty());
        assert_eq!(t.stats().forgotten_entities, 2);
    }

    #[test]
    fn out_of_order_windows_are_ignored_and_counted() {
        let mut t = tracker(2, 3);
        assert_eq!(feed(&mut t, [win(5, true), win(3, true), win(4, true), win(5, true)]), vec![]);
        assert_eq!(t.stats().out_of_order_windows, 2);
        assert_eq!(t.stats().repeated_windows, 1);
        // The ignored bad windows did not count towards k.
        assert_eq!(feed(&mut t, [win(6, true)]), vec![(6, AlertState::Firing)]);
    }

    #[test]
    fn invalid_scores_are_ignored_and_counted() {
        let mut t = tracker(1, 1);
        assert_eq!(t.observe(Scored { score: f64::NAN, ..win(0, true) }), None);
        assert_eq!(t.stats().invalid_scores, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn one_critical_window_fires_at_once() {
        let mut t = tracker(3, 3);
        let ev = t.observe(scored("T-1", 0, true, true)).expect("a critical window fires on its own");
        assert_eq!((ev.state, ev.ts, ev.severity, ev.score), (AlertState::Firing, T0, Severity::Critical, 0.99));
        assert_eq!(ev.reasons, vec![reason(0.99)]);
        // After one or two warning windows too: the critical one does not wait for k.
        assert_eq!(feed(&mut t, [win(0, false)]), vec![]);
        assert_eq!(
            feed(&mut t, [scored("T-2", 0, true, false), scored("T-2", 1, true, true)]),
            vec![(1, AlertState::Firing)]
        );
        let alert = t.firing_alert(AlertKind::VoltageInstability, Scope::Terminal, "T-2").expect("firing");
        assert_eq!(alert.severity, Severity::Critical);
    }

    #[test]
    fn one_warning_window_does_not_fire() {
        let mut t = tracker(2, 3);
        assert_eq!(feed(&mut t, [win(0, true), win(1, false), win(2, true), win(3, false)]), vec![]);
        assert_eq!(t.firing_len(), 0);
    }

    #[test]
    fn critical_windows_keep_one_alert_per_entity() {
        let mut t = tracker(2, 3);
        // Critical windows while firing, or right after a resolution's good
        // windows start, add no second alert.
        let windows = [
            scored("T-1", 0, true, true),
            scored("T-1", 1, true, true),
            win(2, false),
            scored("T-1", 3, true, true),
            win(4, true),
        ];
        assert_eq!(feed(&mut t, windows), vec![(0, AlertState::Firing)]);
        assert_eq!(t.firing_len(), 1);
        // Resolved after m good windows, the next critical window fires anew.
        assert_eq!(feed(&mut t, (5..8).map(|i| win(i, false))), vec![(7, AlertState::Resolved)]);
        assert_eq!(feed(&mut t, [scored("T-1", 8, true, true)]), vec![(8, AlertState::Firing)]);
    }

    #[test]
    fn severity_is_critical_when_the_firing_window_is() {
        let mut t = tracker(2, 3);
        t.observe(scored("T-1", 0, true, false));
        let ev = t.observe(scored("T-1", 1, true, true)).expect("fires");
        assert_eq!((ev.severity, ev.score), (Severity::Critical, 0.99));
        // A warning window that completes the k-run fires a warning.
        t.observe(scored("T-2", 0, true, false));
        let ev = t.observe(scored("T-2", 1, true, false)).expect("fires");
        assert_eq!(ev.severity, Severity::Warning);
    }

    #[test]
    fn escalation_emits_nothing_but_raises_the_peak_severity() {
        let mut t = tracker(2, 3);
        feed(&mut t, [win(0, true), win(1, true)]);
        assert_eq!(t.observe(scored("T-1", 2, true, true)), None);
        let alert = t.firing_alert(AlertKind::VoltageInstability, Scope::Terminal, "T-1").expect("firing");
        assert_eq!(
            (alert.severity, alert.peak_severity, alert.last_score),
            (Severity::Warning, Severity::Critical, 0.99)
        );
        let counts: Vec<_> = t.firing_counts().map(|c| (c.severity, c.count)).collect();
        assert_eq!(counts.len(), 2);
        assert!(counts.contains(&(Severity::Warning, 0)) && counts.contains(&(Severity::Critical, 1)));
        // The resolved event repeats the severity the firing event announced.
        let events: Vec<_> = (3..6).filter_map(|i| t.observe(win(i, false))).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].severity, Severity::Warning);
    }

    #[test]
    fn firing_counts_group_by_kind_scope_severity_and_region() {
        let mut t = tracker(1, 1);
        t.observe(win(0, true));
        t.observe(scored("T-2", 0, true, false));
        t.observe(Scored { region: "west-01", ..scored("T-3", 0, true, true) });
        t.observe(Scored {
            kind: AlertKind::NetworkDegradation,
            scope: Scope::Region,
            entity: "west-01",
            ..win(0, true)
        });
        let mut counts: Vec<_> =
            t.firing_counts().map(|c| (c.kind, c.scope, c.severity, c.region.to_string(), c.count)).collect();
        counts.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
        use AlertKind::*;
        assert_eq!(
            counts,
            vec![
                (VoltageInstability, Scope::Terminal, Severity::Warning, "east-07".into(), 2),
                (VoltageInstability, Scope::Terminal, Severity::Critical, "west-01".into(), 1),
                (NetworkDegradation, Scope::Region, Severity::Warning, "east-07".into(), 1),
            ]
        );
        // Resolving leaves the group at 0.
        t.observe(win(1, false));
        assert!(t.firing_counts().any(|c| c.region == "east-07" && c.kind == VoltageInstability && c.count == 1));
        assert_eq!(t.firing().count(), 3);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut t = tracker(2, 3);
        feed(&mut t, [win(0, true), win(1, true), win(2, true), win(3, false)]);
        feed(&mut t, [scored("T-2", 0, true, false)]);
        feed(&mut t, [scored("T-3", 0, true, true), scored("T-3", 1, true, true)]);
        let json = serde_json::to_string(&t.snapshot()).expect("serialises");
        let snapshot: AlertSnapshot = serde_json::from_str(&json).expect("parses");
        assert_eq!(snapshot, t.snapshot());
        // And in the snapshot files' format, which has no field names: a
        // reason without a baseline version must read back too.
        let bytes = postcard::to_stdvec(&t.snapshot()).expect("encodes");
        let decoded: AlertSnapshot = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, t.snapshot());
        let mut restored = tracker(2, 3);
        restored.restore(snapshot).expect("restores");
        assert_eq!(restored.len(), t.len());
        let sorted = |t: &AlertTracker| {
            let mut v: Vec<_> = t.firing().map(|a| format!("{a:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&restored), sorted(&t));
        let counts = |t: &AlertTracker| {
            let mut v: Vec<_> = t.firing_counts().map(|c| format!("{c:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(counts(&restored), counts(&t));
        // Both continue identically: T-1 resolves after two more good windows, T-2 fires.
        let next = [win(4, false), win(5, false), scored("T-2", 1, true, false), win(5, true)];
        assert_eq!(feed(&mut restored, next.clone()), feed(&mut t, next));
        assert_eq!(restored.snapshot(), t.snapshot());
    }

    #[test]
    fn snapshot_with_a_duplicate_entity_is_refused() {
        let mut t = tracker(2, 3);
        t.observe(win(0, true));
        let mut snapshot = t.snapshot();
        snapshot.entries.push(snapshot.entries[0].clone());
        let err = t.restore(snapshot).expect_err("duplicate refused");
        assert!(matches!(err, AlertingError::DuplicateSnapshotEntry { .. }), "{err}");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tracked_entry_is_small() {
        assert!(size_of::<Entry>() <= 40, "{}", size_of::<Entry>());
    }

    /// One step of a random history: a window of one of a few entities, or an expiry.
    #[derive(Debug, Clone)]
    enum Op {
        Window { entity: usize, kind: usize, advance: i64, back: bool, bad: bool, critical: bool },
        Expire { advance: i64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..4usize, 0..3usize, 0..4i64, prop::bool::weighted(0.05), prop::bool::weighted(0.5), prop::bool::weighted(0.2))
                .prop_map(|(entity, kind, advance, back, bad, critical)| Op::Window { entity, kind, advance, back, bad, critical }),
            1 => (0..200i64).prop_map(|advance| Op::Expire { advance }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The contract rule: per `(kind, scope, entity)` the events alternate
        /// firing, resolved, firing..., starting with firing, in time order;
        /// the tracker's view of what fires agrees with the events, and the
        /// counts kept as alerts change equal counts made from scratch.
        #[test]
        fn events_alternate_per_entity_starting_with_firing(k in 1..4u32, m in 1..4u32, ops in prop::collection::vec(op(), 0..300)) {
            const ENTITIES: [&str; 4] = ["T-1", "T-2", "S-1", "east-07"];
            let h = HysteresisConfig {
                fire_after_bad_windows: k,
                resolve_after_good_windows: m,
                terminal_resolve_after_good_windows: None,
                stale_after_ms: 60 * MIN5,
            };
            let mut t = AlertTracker::new(&AlertingConfig { hardware_aging: h, voltage_instability: h, network_degradation: h, firmware_regression: h }).expect("valid");
            let mut clock = [T0; 4];
            let mut watermark = T0;
            let mut last: BTreeMap<(AlertKind, String), (AlertState, i64)> = BTreeMap::new();
            for op in ops {
                let events = match op {
                    Op::Window { entity, kind, advance, back, bad, critical } => {
                        let end = if back { clock[entity] - advance * MIN5 } else { clock[entity] + advance * MIN5 };
                        clock[entity] = clock[entity].max(end);
                        watermark = watermark.max(end);
                        let kind = AlertKind::ALL[kind];
                        let w = Scored { window_end_ms: end, kind, entity: ENTITIES[entity], ..scored("x", 0, bad, critical) };
                        t.observe(w).into_iter().collect()
                    }
                    Op::Expire { advance } => {
                        watermark += advance * MIN5;
                        let events = t.expire(watermark);
                        for c in &mut clock { *c = (*c).max(watermark); }
                        events
                    }
                };
                for ev in events {
                    let key = (ev.kind, ev.entity.clone());
                    let expected = match last.get(&key) {
                        None | Some((AlertState::Resolved, _)) => AlertState::Firing,
                        Some((AlertState::Firing, _)) => AlertState::Resolved,
                    };
                    prop_assert_eq!(ev.state, expected, "{:?}", ev);
                    if let Some((_, ts)) = last.get(&key) {
                        prop_assert!(ev.ts >= *ts, "event before its predecessor: {:?}", ev);
                    }
                    last.insert(key, (ev.state, ev.ts));
                }
                for kind in AlertKind::ALL {
                    for entity in ENTITIES {
                        let firing = t.firing_alert(kind, Scope::Terminal, entity).is_some();
                        let by_events = matches!(last.get(&(kind, entity.to_string())), Some((AlertState::Firing, _)));
                        prop_assert_eq!(firing, by_events);
                    }
                }
                let mut from_scratch: BTreeMap<(AlertKind, Severity), u32> = BTreeMap::new();
                for a in t.firing() {
                    *from_scratch.entry((a.kind, a.peak_severity)).or_default() += 1;
                }
                let kept: BTreeMap<(AlertKind, Severity), u32> =
                    t.firing_counts().filter(|c| c.count > 0).map(|c| ((c.kind, c.severity), c.count)).collect();
                prop_assert_eq!(kept, from_scratch);
            }
        }
    }
}
