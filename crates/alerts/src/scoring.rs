//! Scoring in service: telemetry batches go through the same feature engine
//! as training, each closed window's rows are scored by their detector, and
//! alert state with hysteresis turns scores into alert events.

use std::path::Path;

use std::collections::VecDeque;

use arrow::record_batch::RecordBatch;
use termwatch_features::partial::{DetectorScores, WindowPartials, WindowScores};
use termwatch_features::wire::{Lessons, PartialsRecord, WindowLessons, WireError};
use termwatch_features::{FeatureEngine, Limits, ReleaseRow, WindowRows};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, Scope};

use termwatch_models::artifact::{DETECTORS, ModelError, ModelSet, scored_at_site_scope};

use crate::alerting::{AlertTracker, Reasons, Scored};
use crate::calibration::{FleetCalibration, FleetThreshold, bin_counts};
use crate::cold::{ColdStats, ColdStore};
use crate::snapshot::{
    HeldRow, HeldWindow, MAX_HELD_WINDOWS, PartitionSnapshot, Snapshot, SnapshotError, SnapshotRef, StageOffsets,
    StageOne,
};
use termwatch_models::detector::{CRITICAL_OFF, Detector, is_critical};

/// Features, detectors and alert state together: batches in, alert events out.
pub struct Scorer {
    engine: FeatureEngine,
    models: ModelSet,
    alerts: AlertTracker,
    /// Each detector's thresholds, following the watched fleet.
    fleet: FleetCalibration,
    /// The latest network score of each region (region index -> score).
    region_scores: Vec<Option<f64>>,
    /// Scores since the last `take_scores`, per detector, for histograms;
    /// kept only when asked for, so a replay does not hoard them.
    scores: Vec<((AlertKind, Scope), Vec<f64>)>,
    keep_scores: bool,
    /// The latest release health of each firmware version with terminals
    /// in their first week on it, for dashboards; a day after its last
    /// window a version leaves. Bounded by the engine's version limit.
    releases: std::collections::BTreeMap<Box<str>, ReleaseHealth>,
    /// Where idle terminals' state goes, and comes back from.
    cold: Option<ColdStore>,
    /// As stage 1 of two ([`Scorer::split`]): what it holds for stage 2.
    split: Option<Split>,
}

/// What a stage-1 scorer keeps besides its engine (docs/two-stages.md):
/// what its snapshot keeps ([`StageOne`]), and a count.
#[derive(Debug, Default)]
struct Split {
    /// Closed windows' terminal rows, oldest first. The engine closes no
    /// window before the one before it is learnt, so this holds one or two.
    held: VecDeque<HeldWindow>,
    /// Records for the partials topic, in the order they must go.
    outbox: Vec<PartialsRecord>,
    /// The thresholds the latest lessons gave the terminal detectors.
    thresholds: Vec<(AlertKind, Scope, f64, f64)>,
    /// Held windows scored without lessons of their own.
    untaught: u64,
    /// Lessons of windows this engine has not closed yet, oldest first: a
    /// replica restored from a snapshot reads on the lessons its
    /// predecessor had learnt past it, and learns each window's only once
    /// it has closed that window again, as its predecessor did.
    /// Each with the bytes it came in.
    pending: VecDeque<(Lessons, usize)>,
}

/// Lessons records a stage-1 scorer keeps for windows it has not closed
/// (about what its predecessor got ahead of its last snapshot); past it,
/// the oldest is learnt whole, as if its windows had closed.
pub const MAX_PENDING_LESSONS: usize = 256;
/// The same bound in bytes, as the records came: a record is as large as
/// the lessons topic lets one be (`message.max.bytes`), and 256 of the
/// largest would be a quarter of a gigabyte per partition held.
pub const MAX_PENDING_LESSON_BYTES: usize = 32 << 20;

/// One firmware version's latest release health.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseHealth {
    /// `MODEL/FIRMWARE`.
    pub entity: Box<str>,
    /// Terminals in their first week on it that reported in its latest window.
    pub terminals: u32,
    pub crashes_per_terminal_day: f64,
    /// What the same terminals' own rates on their versions before expect.
    pub expected_crashes_per_terminal_day: f64,
    /// The firmware detector's latest score (None without one).
    pub score: Option<f64>,
    /// End of its latest window, epoch ms.
    pub end_ms: i64,
}

/// How long a version's release health stays after its last window.
const RELEASE_HEALTH_KEPT_MS: i64 = 86_400_000;

impl Scorer {
    pub fn new(models: ModelSet) -> Result<Scorer, ModelError> {
        let alerts = AlertTracker::new(&models.alerting)
            .map_err(|cause| ModelError::Alerting { path: models.version.clone(), cause })?;
        let scores = DETECTORS.iter().map(|d| (*d, Vec::new())).collect();
        Ok(Scorer {
            engine: FeatureEngine::new(models.features.clone()),
            fleet: FleetCalibration::new(&models),
            models,
            alerts,
            region_scores: Vec::new(),
            scores,
            keep_scores: false,
            releases: Default::default(),
            cold: None,
            split: None,
        })
    }

    /// Makes this scorer stage 1 of two (docs/two-stages.md): it holds
    /// some of the telemetry topic's partitions, and a merging stage scores
    /// sites and regions from every replica's partials. Each closed window
    /// becomes records for the partials topic ([`Scorer::take_partials`]);
    /// its terminals are scored once its lessons are read back
    /// ([`Scorer::learn`]), with its sites' verdicts and the fleet's
    /// thresholds, as one process scores them. Cohorts are learnt from
    /// the lessons too.
    pub fn split(mut self) -> Self {
        self.engine.emit_partials(true);
        self.engine.share_cohorts(true);
        self.split = Some(Split::default());
        self
    }

    /// The records for the partials topic since the last call, in the order
    /// they must be published (before the engine's progress).
    pub fn take_partials(&mut self) -> Vec<PartialsRecord> {
        self.split.as_mut().map(|s| std::mem::take(&mut s.outbox)).unwrap_or_default()
    }

    /// Windows whose terminals wait for their lessons, and windows scored
    /// without lessons of their own (stage 2 closed them without this
    /// replica's partials), as stage 1.
    pub fn held_windows(&self) -> (usize, u64) {
        self.split.as_ref().map_or((0, 0), |s| (s.held.len(), s.untaught))
    }

    /// As stage 1: learns one record of the lessons topic. Scores the held
    /// windows it covers, then the engine learns the cohorts and closes
    /// what it then can. Returns the alert events; a record that cannot be
    /// read changes nothing.
    pub fn learn(&mut self, value: &[u8]) -> Result<Vec<AlertEvent>, WireError> {
        let lessons = Lessons::decode(value)?;
        Ok(self.learn_lessons(lessons, value.len()))
    }

    fn learn_lessons(&mut self, lessons: Lessons, bytes: usize) -> Vec<AlertEvent> {
        let Some(split) = self.split.as_mut() else { return Vec::new() };
        split.pending.push_back((lessons, bytes));
        self.apply_lessons()
    }

    /// Lessons records kept for windows this stage-1 scorer has not closed
    /// yet, and their bytes as they came: at most [`MAX_PENDING_LESSONS`]
    /// and [`MAX_PENDING_LESSON_BYTES`].
    pub fn pending_lessons(&self) -> (usize, usize) {
        self.split.as_ref().map_or((0, 0), |s| (s.pending.len(), s.pending.iter().map(|p| p.1).sum()))
    }

    /// Learns the pending lessons of the windows this engine has closed,
    /// and so on as each lets the next window close. In steady state that
    /// is every record as it comes: stage 2 merges a window only once this
    /// replica has published it.
    fn apply_lessons(&mut self) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        loop {
            let closed = self.engine.closed_through();
            let Some(split) = self.split.as_mut() else { break };
            let over = split.pending.len() > MAX_PENDING_LESSONS
                || split.pending.iter().map(|p| p.1).sum::<usize>() > MAX_PENDING_LESSON_BYTES;
            let Some((front, _)) = split.pending.front_mut() else { break };
            let upto = match closed {
                _ if over => front.through_ms,
                Some(closed) => front.through_ms.min(closed),
                // No report yet: nothing closed, nothing to learn for.
                None => break,
            };
            let taken = front.windows.iter().take_while(|w| w.end_ms <= upto).count();
            let now: Vec<WindowLessons> = front.windows.drain(..taken).collect();
            let done = upto == front.through_ms;
            if done {
                split.pending.pop_front();
            }
            let learnt = self.engine.cohorts_learnt_through();
            if now.is_empty() && !done && learnt.is_some_and(|l| l >= upto) {
                // Nothing to learn until this engine closes another window.
                break;
            }
            for w in &now {
                self.score_held(Some(w), w.end_ms, &mut events);
            }
            // Held windows this record passes without their lessons: stage 2
            // closed them without this replica's partials (late).
            self.score_held(None, upto, &mut events);
            let windows = self.engine.learn_cohorts(upto, now.iter().map(|w| (w.end_ms, &w.cohorts)));
            events.extend(self.score(windows));
        }
        events
    }

    /// Scores the held windows ending at or before `through_ms`: the one
    /// ending there with `lessons`, any other without.
    fn score_held(&mut self, lessons: Option<&WindowLessons>, through_ms: i64, events: &mut Vec<AlertEvent>) {
        loop {
            let Some(split) = self.split.as_mut() else { return };
            let Some(held) = split.held.pop_front_if(|h| h.end_ms <= through_ms) else { return };
            let taught = lessons.filter(|l| l.end_ms == held.end_ms);
            // Thresholds that are not probabilities (a record stage 2 did
            // not write) leave the last ones taught in use.
            let probability =
                |t: &(AlertKind, Scope, f64, f64)| (0.0..=1.0).contains(&t.2) && (0.0..=1.0).contains(&t.3);
            match taught {
                Some(l) if !l.thresholds.is_empty() && l.thresholds.iter().all(probability) => {
                    split.thresholds.clone_from(&l.thresholds)
                }
                Some(_) => {}
                None => split.untaught += 1,
            }
            // In name order as stage 2 writes them; sorted if not.
            let mut bad_sites: std::borrow::Cow<'_, [Box<str>]> =
                taught.map_or(Default::default(), |l| (&l.bad_sites[..]).into());
            if !bad_sites.is_sorted() {
                bad_sites.to_mut().sort_unstable();
            }
            let thresholds = split.thresholds.clone();
            let version = self.models.version.clone();
            let fleet = &self.fleet;
            let limits = |kind, scope| {
                let taught = thresholds.iter().find(|t| (t.0, t.1) == (kind, scope)).map(|t| (t.2, t.3));
                taught.or_else(|| fleet.thresholds(kind, scope)).unwrap_or((f64::INFINITY, CRITICAL_OFF))
            };
            let mut detectors = Vec::new();
            let mut followed = Vec::new();
            let mut recorded = Vec::new();
            let terminal_detectors = [
                (AlertKind::VoltageInstability, &held.voltage, &bad_sites[..]),
                (AlertKind::HardwareAging, &held.aging, &[][..]),
            ];
            for (kind, rows, bad_sites) in terminal_detectors {
                let Some(d) = self.models.detector(kind, Scope::Terminal) else { continue };
                let at = limits(d.kind, d.scope);
                // What the detector scored itself, for the fleet's calibration.
                let mut own = Vec::new();
                let mut own_days = Vec::new();
                for r in rows {
                    let held_back = bad_sites.binary_search(&r.site).is_ok();
                    let (score, e) = judge_terminal(
                        d,
                        at,
                        &mut self.alerts,
                        &version,
                        held.end_ms,
                        &r.terminal,
                        &r.region,
                        held_back,
                        &r.features,
                        &r.baselines,
                    );
                    events.extend(e);
                    if !held_back {
                        own.push(score);
                        own_days.push((&*r.terminal, score));
                    }
                    recorded.push((d.kind, d.scope, score));
                }
                // Only a detector that follows the fleet needs the fleet's scores.
                if d.fleet.is_some() {
                    followed.push((d.kind, d.scope, own, own_days));
                }
            }
            let window_ms = self.engine.config().window_ms;
            for (kind, scope, own, own_days) in followed {
                // This replica's terminals' days; stage 2 keeps the histogram.
                let peaks = self.fleet.track_days(kind, scope, held.end_ms, window_ms, &own_days);
                detectors.push(DetectorScores { kind, scope, bins: bin_counts(&own), peaks });
            }
            events.extend(self.alerts.expire(held.end_ms));
            for (kind, scope, score) in recorded {
                self.record(kind, scope, score);
            }
            detectors.retain(|d| !d.bins.is_empty() || !d.peaks.is_empty());
            if let Some(split) = self.split.as_mut().filter(|_| !detectors.is_empty()) {
                split.outbox.push(PartialsRecord::Scores(WindowScores { end_ms: held.end_ms, detectors }));
            }
        }
    }

    /// As stage 1: a closed window's partials go out (release health with
    /// them: the merging stage judges versions), its terminals wait for
    /// its lessons.
    fn hold(&mut self, w: WindowRows) {
        let engine = &self.engine;
        let named = |t: u32| {
            let site = engine.site_id(engine.terminal_site(t));
            (
                Box::from(engine.terminal_id(t)),
                Box::from(site),
                Box::from(engine.region_name(engine.terminal_region(t))),
            )
        };
        let row = |t: u32, features: &[f64], baselines: &[f64]| {
            let (terminal, site, region) = named(t);
            HeldRow { terminal, site, region, features: features.into(), baselines: baselines.into() }
        };
        let voltage = w.terminal_voltage.iter().map(|r| row(r.terminal, &r.features, &r.baselines)).collect();
        let aging = w.aging.iter().map(|r| row(r.terminal, &r.features, &r.baselines)).collect();
        let partials = WindowPartials {
            end_ms: w.end_ms,
            sites: w.site_partials,
            regions: w.region_partials,
            cohorts: w.cohort_lessons,
            release: w.release_partial,
        };
        if let Some(split) = self.split.as_mut() {
            split.outbox.push(PartialsRecord::Window(partials));
            split.held.push_back(HeldWindow { end_ms: w.end_ms, voltage, aging });
        }
    }

    /// As stage 1 while the merging stage's lessons do not come (it is down,
    /// or another replica's partition is silent): closes the oldest windows
    /// on this scorer's own lessons until at most `max_open` are open, and
    /// scores the oldest held windows without lessons of their own until at
    /// most `max_held` wait. What a replica holds stays bounded; what it so
    /// closes is counted (`Counters::learnt_alone`, [`Scorer::held_windows`])
    /// and may differ from one process's answer.
    pub fn shed(&mut self, max_open: usize, max_held: usize) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let open = self.engine.open_windows();
        if let (Some(oldest), true) = (self.engine.oldest_open_window_end(), open > max_open) {
            let excess = (open - max_open) as i64;
            let through = oldest.saturating_add((excess - 1).saturating_mul(self.engine.config().window_ms));
            let windows = self.engine.close_alone(through);
            events.extend(self.score(windows));
        }
        let max_held = max_held.min(MAX_HELD_WINDOWS);
        let through =
            self.split.as_ref().and_then(|s| s.held.len().checked_sub(max_held + 1).map(|i| s.held[i].end_ms));
        if let Some(through) = through {
            self.score_held(None, through, &mut events);
        }
        events
    }

    /// Keeps the state of terminals forgotten as idle in `store`, and gives
    /// it back to them when they report again.
    pub fn set_cold_store(&mut self, store: ColdStore) {
        self.engine.keep_departed(true);
        self.cold = Some(store);
    }

    /// What the cold store did, and how many terminals it holds (None
    /// without one).
    pub fn cold_store(&self) -> Option<(ColdStats, usize)> {
        self.cold.as_ref().map(|c| (c.stats(), c.len()))
    }

    /// Bounds what the feature engine holds (kept across snapshot restores).
    pub fn set_limits(&mut self, limits: Limits) {
        self.engine.set_limits(limits);
        if let Some(cold) = &mut self.cold {
            cold.set_max_entries(limits.max_terminals);
        }
    }

    /// Keeps every score for [`Scorer::take_scores`] (metrics histograms).
    pub fn keep_scores(mut self, keep: bool) -> Self {
        self.keep_scores = keep;
        self
    }

    /// Saves what scoring has learned to `path` (atomically); `position`
    /// says, in words, what input the state covers.
    pub fn save_snapshot(&self, path: &Path, position: &str) -> Result<u64, SnapshotError> {
        self.save_with_offsets(path, position, None)
    }

    /// As stage 1 in `termwatch run`: saves with the positions in both
    /// topics the state covers, which [`Scorer::restore_stage_one`] reads
    /// on from.
    pub fn save_stage_one(&self, path: &Path, position: &str, offsets: StageOffsets) -> Result<u64, SnapshotError> {
        self.save_with_offsets(path, position, Some(offsets))
    }

    fn save_with_offsets(
        &self,
        path: &Path,
        position: &str,
        offsets: Option<StageOffsets>,
    ) -> Result<u64, SnapshotError> {
        let alerts = self.alerts.snapshot();
        let stage_one = self.stage_one(offsets);
        SnapshotRef {
            model_version: &self.models.version,
            engine: &self.engine,
            alerts: &alerts,
            fleet: &self.fleet,
            stage_one: stage_one.as_ref(),
            position,
        }
        .save(path)
    }

    /// Restores a snapshot taken with the same model and feature
    /// configuration; reports it already applied are then skipped and
    /// counted. On error nothing changes: scoring goes on cold.
    pub fn restore_snapshot(&mut self, path: &Path) -> Result<String, SnapshotError> {
        self.restore(path, false).map(|(position, _)| position)
    }

    /// As stage 1 in `termwatch run`: restores a stage-1 snapshot taken
    /// with [`Scorer::save_stage_one`], and returns where to read both
    /// topics on from. Its input resumes exactly after what the state
    /// covers, so no report is skipped, and its sources' progress is kept.
    /// On error nothing changes.
    pub fn restore_stage_one(&mut self, path: &Path) -> Result<(String, StageOffsets), SnapshotError> {
        let (position, offsets) = self.restore(path, true)?;
        // (Checked before anything changed.)
        Ok((position, offsets.unwrap_or_default()))
    }

    /// `exact`: the input resumes right after what the snapshot covers.
    fn restore(&mut self, path: &Path, exact: bool) -> Result<(String, Option<StageOffsets>), SnapshotError> {
        let snap = Snapshot::load(path)?;
        let p = path.display().to_string();
        if exact && snap.stage_one.as_ref().and_then(|s| s.offsets).is_none() {
            return Err(SnapshotError::Decode {
                path: p,
                cause: "not a stage-1 snapshot of termwatch run (no offsets)".into(),
            });
        }
        if snap.model_version != self.models.version {
            return Err(SnapshotError::Model {
                path: p,
                found: snap.model_version,
                expected: self.models.version.clone(),
            });
        }
        if snap.engine.config() != &self.models.features {
            return Err(SnapshotError::Features { path: p });
        }
        snap.engine.check().map_err(|cause| SnapshotError::Decode { path: p.clone(), cause })?;
        // A stage-1 scorer's held windows would be lost on one process.
        let stage_one = match (&self.split, snap.stage_one) {
            (None, Some(_)) => return Err(SnapshotError::StageOne { path: p }),
            (None, None) => None,
            // One process's state goes on as stage 1 (a deployment split).
            (Some(_), state) => Some(state.unwrap_or_default()),
        };
        if let Some(state) = &stage_one {
            let width = |kind, scope| {
                self.models.detector(kind, scope).map_or(0, |_| match kind {
                    AlertKind::HardwareAging => termwatch_features::names::AGING.len(),
                    _ => termwatch_features::names::TERMINAL_VOLTAGE.len(),
                })
            };
            let (voltage, aging) = (
                width(AlertKind::VoltageInstability, Scope::Terminal),
                width(AlertKind::HardwareAging, Scope::Terminal),
            );
            state.check(voltage, aging).map_err(|cause| SnapshotError::Decode { path: p.clone(), cause })?;
        }
        // Neither is changed when its part is refused.
        let mut fleet = self.fleet.clone();
        fleet.restore(snap.fleet).map_err(|cause| SnapshotError::Decode { path: p.clone(), cause })?;
        self.alerts.restore(snap.alerts).map_err(|e| SnapshotError::Decode { path: p, cause: e.to_string() })?;
        self.fleet = fleet;
        let limits = self.engine.limits();
        self.engine = snap.engine;
        self.engine.set_limits(limits);
        if !exact {
            self.engine.mark_restored();
        }
        self.engine.keep_departed(self.cold.is_some());
        let mut offsets = None;
        if let (Some(split), Some(state)) = (self.split.as_mut(), stage_one) {
            self.engine.emit_partials(true);
            self.engine.share_cohorts(true);
            offsets = state.offsets;
            *split = Split {
                held: state.held.into(),
                outbox: state.outbox,
                thresholds: state.thresholds,
                untaught: 0,
                // Sized as they would come again.
                pending: state
                    .pending
                    .into_iter()
                    .map(|l| {
                        let bytes = termwatch_features::wire::encode(&l).map_or(0, |v| v.len());
                        (l, bytes)
                    })
                    .collect(),
            };
        }
        Ok((snap.position, offsets))
    }

    /// Saves the shared part of what scoring has learned (site, region and
    /// cohort state, open windows, counters, alert state above terminal
    /// scope) with the terminals `unowned` selects: those no partition
    /// snapshot holds (learned in a warm-up, or not seen since).
    pub fn save_shared(
        &self,
        path: &Path,
        position: &str,
        mut unowned: impl FnMut(&str) -> bool,
    ) -> Result<u64, SnapshotError> {
        let engine = self.engine.clone_with_terminals(&mut unowned);
        let alerts = self.alerts.export(|scope, entity| scope != Scope::Terminal || unowned(entity));
        SnapshotRef {
            model_version: &self.models.version,
            engine: &engine,
            alerts: &alerts,
            fleet: &self.fleet,
            stage_one: self.stage_one(None).as_ref(),
            position,
        }
        .save(path)
    }

    /// A stage-1 scorer's own state, for its snapshot.
    fn stage_one(&self, offsets: Option<StageOffsets>) -> Option<StageOne> {
        self.split.as_ref().map(|s| StageOne {
            held: s.held.iter().cloned().collect(),
            outbox: s.outbox.clone(),
            thresholds: s.thresholds.clone(),
            pending: s.pending.iter().map(|(l, _)| l.clone()).collect(),
            offsets,
        })
    }

    /// Saves the state of the terminals `owned` selects (one partition's)
    /// with the offset it covers.
    pub fn save_partition(
        &self,
        path: &Path,
        topic: &str,
        partition: i32,
        next_offset: i64,
        mut owned: impl FnMut(&str) -> bool,
    ) -> Result<u64, SnapshotError> {
        PartitionSnapshot {
            model_version: self.models.version.clone(),
            features: self.models.features.clone(),
            topic: topic.to_string(),
            partition,
            next_offset,
            source: self.engine.source(&format!("{topic}-{partition}")),
            terminals: self.engine.export_terminals(&mut owned),
            alerts: self.alerts.export(|scope, entity| scope == Scope::Terminal && owned(entity)),
        }
        .save(path)
    }

    /// Restores one partition's terminals; returns the offset to resume
    /// from and the terminals restored. Reports after that offset were never
    /// applied, so none is skipped. On error nothing changes.
    pub fn restore_partition(
        &mut self,
        path: &Path,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, Vec<Box<str>>), SnapshotError> {
        let snap = PartitionSnapshot::load(path)?;
        let p = path.display().to_string();
        if snap.topic != topic || snap.partition != partition {
            return Err(SnapshotError::Partition {
                path: p,
                found: format!("{}-{}", snap.topic, snap.partition),
                expected: format!("{topic}-{partition}"),
            });
        }
        if snap.model_version != self.models.version {
            return Err(SnapshotError::Model {
                path: p,
                found: snap.model_version,
                expected: self.models.version.clone(),
            });
        }
        if snap.features != self.models.features {
            return Err(SnapshotError::Features { path: p });
        }
        self.alerts.import(snap.alerts).map_err(|e| SnapshotError::Decode { path: p, cause: e.to_string() })?;
        let ids = self.engine.import_terminals(snap.terminals);
        let name = format!("{topic}-{partition}");
        match snap.source {
            Some(progress) => self.engine.restore_source(&name, progress),
            None => self.engine.register_source(&name),
        }
        Ok((snap.next_offset, ids))
    }

    /// Forgets the terminals `drop` selects and their terminal-scope alert
    /// state (their partition went to another replica).
    pub fn drop_terminals(&mut self, mut drop: impl FnMut(&str) -> bool) -> usize {
        self.alerts.remove(|scope, entity| scope == Scope::Terminal && drop(entity));
        self.engine.remove_terminals(drop)
    }

    pub fn model_version(&self) -> &str {
        &self.models.version
    }

    /// The latest network-degradation score of every region seen: (region, score).
    pub fn region_scores(&self) -> impl Iterator<Item = (&str, f64)> {
        self.region_scores.iter().enumerate().filter_map(|(r, s)| s.map(|s| (self.engine.region_name(r as u32), s)))
    }

    /// Every score computed since the last call, per detector (for histograms;
    /// drained so each score is observed once).
    pub fn take_scores(&mut self) -> Vec<((AlertKind, Scope), Vec<f64>)> {
        self.scores.iter_mut().map(|(d, v)| (*d, std::mem::take(v))).collect()
    }

    fn record(&mut self, kind: AlertKind, scope: Scope, score: f64) {
        if !self.keep_scores {
            return;
        }
        if let Some((_, v)) = self.scores.iter_mut().find(|(d, _)| *d == (kind, scope)) {
            v.push(score);
        }
    }

    /// Release health of the versions being rolled out, by name.
    pub fn release_health(&self) -> impl Iterator<Item = &ReleaseHealth> {
        self.releases.values()
    }

    pub fn engine(&self) -> &FeatureEngine {
        &self.engine
    }

    pub fn alerts(&self) -> &AlertTracker {
        &self.alerts
    }

    /// Each detector's thresholds in use, against the trained ones.
    pub fn thresholds(&self) -> impl Iterator<Item = FleetThreshold> + '_ {
        self.fleet.status().map(|t| t.held_by(&self.models))
    }

    /// Applies a batch from one input; returns the alert events it caused,
    /// in event-time order.
    pub fn process_batch(&mut self, batch: &RecordBatch) -> Vec<AlertEvent> {
        self.process_sourced(batch, &[(termwatch_features::DEFAULT_SOURCE, batch.num_rows())])
    }

    /// Applies a batch whose rows come from several inputs, as runs
    /// `(input, rows)` (see [`FeatureEngine::process_sourced`]). Terminals
    /// the engine does not hold get their state back from the cold store,
    /// if it has it.
    pub fn process_sourced(&mut self, batch: &RecordBatch, runs: &[(&str, usize)]) -> Vec<AlertEvent> {
        let windows = match &mut self.cold {
            Some(cold) => self.engine.process_from_cold(batch, runs, |unknown| cold.take(&unknown)),
            None => self.engine.process_sourced(batch, runs),
        };
        self.store_departed();
        let mut events = self.score(windows);
        events.extend(self.apply_lessons());
        events
    }

    /// Hands the terminals the engine forgot as idle to the cold store.
    fn store_departed(&mut self) {
        let Some(cold) = &mut self.cold else { return };
        let gone = self.engine.take_departed();
        if !gone.is_empty() {
            cold.put(gone);
        }
    }

    /// An input that will feed scoring (a partition just assigned, without
    /// a snapshot): no window closes before it sends or ends.
    pub fn register_source(&mut self, name: &str) {
        self.engine.register_source(name);
    }

    /// An input has ended for now; scores the windows that could then close.
    pub fn end_of_source(&mut self, name: &str) -> Vec<AlertEvent> {
        let windows = self.engine.end_of_source(name);
        let mut events = self.score(windows);
        events.extend(self.apply_lessons());
        events
    }

    /// Forgets an input (its partition went to another replica); the windows
    /// it held open close with the next batch.
    pub fn remove_source(&mut self, name: &str) {
        self.engine.remove_source(name);
    }

    /// Closes every open window (end of a history) and scores it.
    pub fn finish(&mut self) -> Vec<AlertEvent> {
        let windows = self.engine.finish();
        let mut events = self.score(windows);
        events.extend(self.apply_lessons());
        events
    }

    fn score(&mut self, windows: Vec<WindowRows>) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let version = self.models.version.clone();
        for w in windows {
            if self.split.is_some() {
                self.hold(w);
                continue;
            }
            let mut bad_sites = std::collections::HashSet::new();
            let mut site_scores = Vec::new();
            let mut terminal_scores = Vec::new();
            let mut network_scores = Vec::new();
            let mut aging_scores = Vec::new();
            // Each detector's windows for fleet calibration: what it scored
            // itself (not a terminal held back by its site's alert).
            let mut own_terminal_scores = Vec::new();
            // And by entity, for their daily peaks.
            let mut site_days = Vec::new();
            let mut terminal_days = Vec::new();
            let fleet = &self.fleet;
            let limits = |kind, scope| fleet.thresholds(kind, scope).unwrap_or((f64::INFINITY, CRITICAL_OFF));
            let site_at = limits(AlertKind::VoltageInstability, Scope::Site);
            for r in &w.site_voltage {
                let site = self.engine.site_id(r.site);
                let region = self.engine.region_name(self.engine.site_region(r.site));
                let judged = site_voltage(&self.models, site_at, &mut self.alerts, w.end_ms, site, region, &r.features);
                let Some((score, event)) = judged else { continue };
                events.extend(event);
                site_scores.push(score);
                site_days.push((r.site, score));
                // Until the site's alert resolves, its terminals' supply
                // trouble is the site's mains, already paged.
                if score >= site_at.0
                    || self.alerts.firing_alert(AlertKind::VoltageInstability, Scope::Site, site).is_some()
                {
                    bad_sites.insert(r.site);
                }
            }
            if let Some(d) = self.models.detector(AlertKind::VoltageInstability, Scope::Terminal) {
                let at = limits(d.kind, d.scope);
                for r in &w.terminal_voltage {
                    let held_back = bad_sites.contains(&self.engine.terminal_site(r.terminal));
                    let term = self.engine.terminal_id(r.terminal);
                    let region = self.engine.region_name(self.engine.terminal_region(r.terminal));
                    let (score, e) = judge_terminal(
                        d,
                        at,
                        &mut self.alerts,
                        &version,
                        w.end_ms,
                        term,
                        region,
                        held_back,
                        &r.features,
                        &r.baselines,
                    );
                    events.extend(e);
                    if !held_back {
                        own_terminal_scores.push(score);
                        terminal_days.push((r.terminal, score));
                    }
                    terminal_scores.push(score);
                }
            }
            let network_at = limits(AlertKind::NetworkDegradation, Scope::Region);
            for r in &w.network {
                let region = self.engine.region_name(r.region);
                if let Some((score, e)) =
                    region_network(&self.models, network_at, &mut self.alerts, w.end_ms, region, &r.features)
                {
                    events.extend(e);
                    network_scores.push((r.region, score));
                }
            }
            if let Some(d) = self.models.detector(AlertKind::HardwareAging, Scope::Terminal) {
                let at = limits(d.kind, d.scope);
                for r in &w.aging {
                    let term = self.engine.terminal_id(r.terminal);
                    let region = self.engine.region_name(self.engine.terminal_region(r.terminal));
                    let (score, e) = judge_terminal(
                        d,
                        at,
                        &mut self.alerts,
                        &version,
                        w.end_ms,
                        term,
                        region,
                        false,
                        &r.features,
                        &r.baselines,
                    );
                    events.extend(e);
                    aging_scores.push(score);
                }
            }
            self.score_firmware(&w, &mut events);
            events.extend(self.alerts.expire(w.end_ms));
            // The thresholds move for the windows after this one.
            let network_only: Vec<f64> = network_scores.iter().map(|(_, s)| *s).collect();
            for (kind, scope, scores) in [
                (AlertKind::VoltageInstability, Scope::Site, &site_scores),
                (AlertKind::VoltageInstability, Scope::Terminal, &own_terminal_scores),
                (AlertKind::NetworkDegradation, Scope::Region, &network_only),
                (AlertKind::HardwareAging, Scope::Terminal, &aging_scores),
            ] {
                self.fleet.observe(kind, scope, w.end_ms, scores);
            }
            let engine = &self.engine;
            let window_ms = engine.config().window_ms;
            let sites: Vec<(&str, f64)> = site_days.iter().map(|&(i, s)| (engine.site_id(i), s)).collect();
            let terminals: Vec<(&str, f64)> = terminal_days.iter().map(|&(i, s)| (engine.terminal_id(i), s)).collect();
            let regions: Vec<(&str, f64)> = network_scores.iter().map(|&(i, s)| (engine.region_name(i), s)).collect();
            for (kind, scope, scored) in [
                (AlertKind::VoltageInstability, Scope::Site, &sites),
                (AlertKind::VoltageInstability, Scope::Terminal, &terminals),
                (AlertKind::NetworkDegradation, Scope::Region, &regions),
            ] {
                self.fleet.observe_days(kind, scope, w.end_ms, window_ms, scored);
            }
            for s in site_scores {
                self.record(AlertKind::VoltageInstability, Scope::Site, s);
            }
            for s in terminal_scores {
                self.record(AlertKind::VoltageInstability, Scope::Terminal, s);
            }
            for s in aging_scores {
                self.record(AlertKind::HardwareAging, Scope::Terminal, s);
            }
            for (r, s) in network_scores {
                self.record(AlertKind::NetworkDegradation, Scope::Region, s);
                if self.region_scores.len() <= r as usize {
                    self.region_scores.resize(r as usize + 1, None);
                }
                self.region_scores[r as usize] = Some(s);
            }
        }
        events
    }

    /// Scores a window's release health (the firmware detector) and keeps
    /// it for dashboards.
    fn score_firmware(&mut self, w: &WindowRows, events: &mut Vec<AlertEvent>) {
        let scores = release_health(
            &self.models,
            &self.fleet,
            &mut self.alerts,
            &mut self.releases,
            w.end_ms,
            (&w.firmware, &w.firmware_retired),
            events,
        );
        for s in scores {
            self.record(AlertKind::FirmwareRegression, Scope::Cohort, s);
        }
    }
}

/// Scores a window's release health with the firmware detector, `(rows,
/// retired versions)`, and keeps each version's for dashboards in
/// `releases`: the scores. One code path for one process and the merging
/// stage, which judges versions on every partition's terminals.
pub(crate) fn release_health(
    models: &ModelSet,
    fleet: &FleetCalibration,
    alerts: &mut AlertTracker,
    releases: &mut std::collections::BTreeMap<Box<str>, ReleaseHealth>,
    end_ms: i64,
    (firmware, retired): (&[ReleaseRow], &[Box<str>]),
    events: &mut Vec<AlertEvent>,
) -> Vec<f64> {
    let firmware_at =
        fleet.thresholds(AlertKind::FirmwareRegression, Scope::Cohort).unwrap_or((f64::INFINITY, CRITICAL_OFF));
    let detector = models.detector(AlertKind::FirmwareRegression, Scope::Cohort);
    let mut scores = Vec::new();
    for r in firmware {
        let score = detector.map(|d| d.score(&r.features));
        if let (Some(d), Some(score)) = (detector, score) {
            // A cohort spans the fleet: its region is "*" (alerts-v1).
            // Its reasons say which version it is compared with.
            let reasons = Reasons::Of {
                detector: d,
                features: &r.features,
                baselines: &r.baselines,
                baseline_version: r.baseline_version.as_deref(),
            };
            let scored = scored(d, firmware_at, end_ms, &r.entity, "*", score, &models.version, reasons);
            events.extend(alerts.observe(scored));
            scores.push(score);
        }
        let health = ReleaseHealth {
            entity: r.entity.clone(),
            terminals: r.terminals,
            crashes_per_terminal_day: r.crashes_per_terminal_day,
            expected_crashes_per_terminal_day: r.expected_crashes_per_terminal_day,
            score,
            end_ms,
        };
        releases.insert(r.entity.clone(), health);
    }
    for entity in retired {
        events.extend(alerts.retire(AlertKind::FirmwareRegression, Scope::Cohort, entity, end_ms));
        // Its release health leaves the dashboards with it.
        releases.remove(entity);
    }
    releases.retain(|_, h| h.end_ms > end_ms.saturating_sub(RELEASE_HEALTH_KEPT_MS));
    scores
}

/// A terminal detector's verdict on one terminal's window: its score (0
/// when `held_back`: its site's alert covers it, one page and not one per
/// terminal) and the alert event it makes. One code path for one process
/// and for stage 1.
#[allow(clippy::too_many_arguments)]
fn judge_terminal(
    d: &Detector,
    at: (f64, f64),
    alerts: &mut AlertTracker,
    version: &str,
    end_ms: i64,
    terminal: &str,
    region: &str,
    held_back: bool,
    features: &[f64],
    baselines: &[f64],
) -> (f64, Option<AlertEvent>) {
    let score = if held_back { 0.0 } else { d.score(features) };
    let reasons = Reasons::Of { detector: d, features, baselines, baseline_version: None };
    let scored = scored(d, at, end_ms, terminal, region, score, version, reasons);
    (score, alerts.observe(scored))
}

/// The site voltage detector's verdict on one site's window: its score and
/// the alert events it makes, or None for a row not scored at site scope
/// (or without the detector). One code path for one process and for the
/// merging stage.
pub(crate) fn site_voltage(
    models: &ModelSet,
    at: (f64, f64),
    alerts: &mut AlertTracker,
    end_ms: i64,
    site: &str,
    region: &str,
    features: &[f64],
) -> Option<(f64, Option<AlertEvent>)> {
    let d = models.detector(AlertKind::VoltageInstability, Scope::Site)?;
    if !scored_at_site_scope(features) {
        return None;
    }
    let score = d.score(features);
    let reasons = Reasons::Of { detector: d, features, baselines: &d.means, baseline_version: None };
    let scored = scored(d, at, end_ms, site, region, score, &models.version, reasons);
    Some((score, alerts.observe(scored)))
}

/// The network detector's verdict on one region's window, as
/// [`site_voltage`] gives a site's.
pub(crate) fn region_network(
    models: &ModelSet,
    at: (f64, f64),
    alerts: &mut AlertTracker,
    end_ms: i64,
    region: &str,
    features: &[f64],
) -> Option<(f64, Option<AlertEvent>)> {
    let d = models.detector(AlertKind::NetworkDegradation, Scope::Region)?;
    let score = d.score(features);
    let reasons = Reasons::Of { detector: d, features, baselines: &d.means, baseline_version: None };
    let scored = scored(d, at, end_ms, region, region, score, &models.version, reasons);
    Some((score, alerts.observe(scored)))
}

#[allow(clippy::too_many_arguments)]
fn scored<'a>(
    d: &Detector,
    (threshold, critical): (f64, f64),
    end_ms: i64,
    entity: &'a str,
    region: &'a str,
    score: f64,
    version: &'a str,
    reasons: Reasons<'a>,
) -> Scored<'a> {
    Scored {
        window_end_ms: end_ms,
        kind: d.kind,
        scope: d.scope,
        entity,
        region,
        score: (score * 1e4).round() / 1e4,
        bad: score >= threshold,
        critical: is_critical(score, critical),
        holds: score >= d.hold_threshold(threshold),
        model_version: version,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_whose_feature_configuration_cannot_run_is_refused_by_name() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
        let text = std::fs::read_to_string(&shipped).expect("models/default (scripts/train-default)");
        ModelSet::load(&shipped).expect("the shipped artifact loads");
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("window_ms", serde_json::json!(0)),
            ("lateness_ms", serde_json::json!(-1)),
            ("baseline_windows", serde_json::json!(0.0)),
        ];
        for (field, bad) in cases {
            let mut value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            value["features"][field] = bad;
            let path = dir.path().join(format!("{field}.json"));
            std::fs::write(&path, value.to_string()).expect("write");
            let err = ModelSet::load(&path).expect_err("refused").to_string();
            assert!(err.contains(field) && err.contains(&path.display().to_string()), "{err}");
        }
    }
}
