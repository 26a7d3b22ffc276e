//! Alert state as Prometheus metrics, with cardinality bounded whatever the
//! fleet size.
//!
//! Every label value comes from a small closed set (kind, scope, severity,
//! state, region, model version) except on one family,
//! `termwatch_alert_entity_score`, which names entities: it holds only the
//! currently firing alerts, at most the top K of them by score, and the number
//! left out is exported as `termwatch_alert_entities_cut_off`. So with N
//! regions the alert metrics are about `18·2·N` firing counts, N region scores,
//! 4 score histograms, K entity series and a handful of gauges, whether the
//! fleet has a thousand terminals or a million.
//!
//! [`AlertMetrics::update`] runs once per batch, on the pipeline's thread. The
//! top K is recomputed only when the batch closed windows or changed alerts
//! (scores and alert state change at window boundaries only), so a batch that
//! only fills open windows costs a few gauge writes.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::alerting::{AlertTracker, FiringAlert};
use crate::calibration::FleetThreshold;
use crate::cold::ColdStats;
use crate::regional::{Kept, RegionalStage};
use crate::scoring::{ReleaseHealth, Scorer};
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use termwatch_features::FeatureEngine;
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, AlertState, Scope, Severity};

/// Per-entity series exported unless told otherwise.
pub const DEFAULT_TOP_K: usize = 200;
/// Regions exported by name (a fleet has tens to hundreds).
pub const DEFAULT_REGION_CAP: usize = 500;
/// The region label of everything past the region cap.
pub const OTHER_REGIONS: &str = "(other)";

/// Buckets of the score histograms: scores are probabilities, and what
/// matters is the upper tail, where the thresholds sit.
pub const SCORE_BUCKETS: [f64; 14] = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99];

/// Labels of `termwatch_alert_entity_score`, in order.
pub const ENTITY_LABELS: [&str; 7] = ["kind", "scope", "entity", "site", "region", "severity", "top_reason"];

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn state_str(s: AlertState) -> &'static str {
    match s {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

type EntityLabels = [String; 7];

/// What the metrics remember between updates.
#[derive(Default)]
struct State {
    /// Label sets of the entity series exported now, to remove those that leave.
    exported: HashSet<EntityLabels>,
    /// Site of each terminal in the top K (looked up in the feature engine).
    sites: HashMap<String, String>,
    model_version: Option<String>,
    /// The top K has been computed at least once.
    primed: bool,
    /// Per region seen, per engine (by its name in the view): its
    /// (reports, late, ahead) told to the counters so far. Bounded by the
    /// engines' regions (`limits.max_regions`) and the partitions.
    region_counts: HashMap<String, HashMap<String, [u64; 3]>>,
    /// Regions exported under their own name: the first `region_cap` seen.
    /// The others are summed under [`OTHER_REGIONS`], so that invented
    /// region names cannot multiply the series.
    named_regions: HashSet<String>,
    /// The engine's late + ahead count at the last look for dropping terminals.
    dropped_seen: u64,
    last_drop_scan: Option<std::time::Instant>,
    /// Label sets of the dropping-terminal series exported now.
    dropping: HashSet<[String; 3]>,
    /// Inputs whose series are exported now.
    sources: HashSet<String>,
    /// Per engine (by its name in the view): its limit counts told to the
    /// counters so far.
    limit_counts: HashMap<String, [u64; 4]>,
    /// (model, firmware) of the release-health series exported now.
    releases: HashSet<[String; 2]>,
}

impl State {
    /// `region` if it is exported under its own name: it already is, or
    /// fewer than `cap` are. Once named, a region stays named.
    fn region_label<'a>(&mut self, region: &'a str, cap: usize) -> Option<&'a str> {
        if self.named_regions.contains(region) {
            return Some(region);
        }
        if self.named_regions.len() < cap {
            self.named_regions.insert(region.to_string());
            return Some(region);
        }
        None
    }
}

/// Terminals exported by `termwatch_terminal_reports_dropped_ratio` at most,
/// worst first: enough to name a bad clock or a broken link, bounded whatever
/// the fleet does.
pub const DROPPING_TOP_K: usize = 20;
/// A terminal is named once this share of its recent reports was dropped.
const DROPPING_MIN_SHARE: f32 = 0.05;
/// Firmware versions exported by the release-health series at most, the
/// highest-scoring (then most exposed) first: a rollout or two at a time is
/// usual, and invented firmware strings must not multiply the series.
pub const RELEASE_TOP_K: usize = 20;

/// The alert metrics; cheap to clone (the handles are shared).
#[derive(Clone)]
pub struct AlertMetrics {
    top_k: usize,
    region_cap: usize,
    firing: IntGaugeVec,
    events: IntCounterVec,
    region_score: GaugeVec,
    scores: HistogramVec,
    entity_score: GaugeVec,
    entities_cut_off: IntGauge,
    model_info: IntGaugeVec,
    event_time_lag: Gauge,
    watermark: Gauge,
    tracked_terminals: IntGauge,
    tracked_alert_entities: IntGauge,
    dropped: IntCounterVec,
    thin_region_windows: IntCounter,
    learnt_alone: IntCounter,
    releases_refused: IntCounter,
    region_reports: IntCounterVec,
    region_dropped: IntCounterVec,
    terminal_dropped: GaugeVec,
    source_watermark: GaugeVec,
    source_idle: IntGaugeVec,
    snapshot_failures: IntCounter,
    snapshot_success: Gauge,
    regions_cut_off: IntGauge,
    forgotten: IntCounterVec,
    cold_terminals: IntGauge,
    cold_store: IntCounterVec,
    refused: IntCounterVec,
    terminals_limit: IntGauge,
    delivery_failures: IntCounterVec,
    topic_pending: IntGauge,
    release_terminals: IntGaugeVec,
    release_crashes: GaugeVec,
    release_expected_crashes: GaugeVec,
    release_score: GaugeVec,
    threshold: GaugeVec,
    fleet_shift: GaugeVec,
    fleet_peak_shift: GaugeVec,
    peaks_untracked: IntGaugeVec,
    state: Arc<Mutex<State>>,
}

/// Stage 2's own metrics (docs/two-stages.md): what it read of the
/// partials topic, the windows it merged, what it dropped and why, and
/// how far it has closed. A handful of series whatever the fleet.
#[derive(Clone)]
pub struct MergingMetrics {
    records: IntCounterVec,
    windows: IntCounterVec,
    dropped: IntCounterVec,
    open_windows: IntGauge,
    closed_through: Gauge,
    lessons: IntCounter,
    assigned: IntGauge,
}

/// What stage 2 has done since it started, for [`MergingMetrics::observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Merging {
    /// Partials records read, and those that could not be read.
    pub read: u64,
    pub unreadable: u64,
    /// Windows closed.
    pub windows: u64,
    pub counts: termwatch_features::partial::MergerCounts,
    pub open_windows: usize,
    /// Every window ending at or before this has closed, epoch ms.
    pub closed_through: Option<i64>,
    /// Lessons records published.
    pub lessons: u64,
    /// Whether this member holds the partials partition.
    pub assigned: bool,
}

impl MergingMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = MergingMetrics {
            records: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_partials_records_total",
                        "Records of the partials topic stage 2 read: outcome read, or unreadable (named in the \
                         log by partition and offset, read past, changing nothing).",
                    ),
                    &["outcome"],
                )?,
            )?,
            windows: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_merged_windows_total",
                        "Windows stage 2 merged and scored: complete (every source had passed them) or incomplete \
                         (closed by stages.allowed_lateness_s or stages.max_open_windows without some sources).",
                    ),
                    &["completeness"],
                )?,
            )?,
            dropped: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_partials_dropped_total",
                        "Partials stage 2 did not merge: duplicate (a stage-1 replica republishing after a \
                         restart), late (for a window already closed), unknown_source (not a partition of the \
                         telemetry topics), late_scores (terminal scores past their window).",
                    ),
                    &["reason"],
                )?,
            )?,
            open_windows: register(
                registry,
                IntGauge::new("termwatch_merging_open_windows", "Windows stage 2 holds open, waiting for sources.")?,
            )?,
            closed_through: register(
                registry,
                Gauge::new(
                    "termwatch_merged_through_timestamp_seconds",
                    "Every window ending at or before this (event time) has been merged and scored by stage 2.",
                )?,
            )?,
            lessons: register(
                registry,
                IntCounter::new("termwatch_lessons_published_total", "Lessons records stage 2 published for stage 1.")?,
            )?,
            assigned: register(
                registry,
                IntGauge::new(
                    "termwatch_partials_assigned",
                    "1 on the stage-2 member that holds the partials partition (merging), 0 on a standby.",
                )?,
            )?,
        };
        for outcome in ["read", "unreadable"] {
            m.records.with_label_values(&[outcome]);
        }
        for completeness in ["complete", "incomplete"] {
            m.windows.with_label_values(&[completeness]);
        }
        for reason in ["duplicate", "late", "unknown_source", "late_scores"] {
            m.dropped.with_label_values(&[reason]);
        }
        Ok(m)
    }

    /// Sets every series from what stage 2 has done since it started.
    pub fn observe(&self, now: &Merging) {
        let set = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        set(&self.records.with_label_values(&["read"]), now.read - now.unreadable.min(now.read));
        set(&self.records.with_label_values(&["unreadable"]), now.unreadable);
        let incomplete = now.counts.incomplete_windows.min(now.windows);
        set(&self.windows.with_label_values(&["complete"]), now.windows - incomplete);
        set(&self.windows.with_label_values(&["incomplete"]), incomplete);
        let c = &now.counts;
        for (reason, total) in [
            ("duplicate", c.duplicate_partials),
            ("late", c.late_partials),
            ("unknown_source", c.unknown_source),
            ("late_scores", c.late_scores),
        ] {
            set(&self.dropped.with_label_values(&[reason]), total);
        }
        set(&self.lessons, now.lessons);
        self.open_windows.set(now.open_windows as i64);
        self.assigned.set(i64::from(now.assigned));
        if let Some(t) = now.closed_through {
            self.closed_through.set(t as f64 / 1000.0);
        }
    }
}

/// The parts of a [`Scorer`] one update reads; built by [`AlertMetrics::update`],
/// or by hand in tests and benchmarks.
pub struct AlertView<'a> {
    /// Alert state: one tracker, or one per scorer (stage 1 in `termwatch
    /// run` keeps one per partition).
    pub alerts: &'a [&'a AlertTracker],
    /// The feature engines, each by a name that stays with it while it is
    /// held: one (named "") where one process holds every terminal, one per
    /// partition in stage 1 (named by its partition), none in stage 2 (its
    /// terminals are stage 1's). Their counts are summed, their watermark
    /// is the least.
    pub engines: &'a [(&'a str, &'a FeatureEngine)],
    /// The alert events the batch caused.
    pub events: &'a [AlertEvent],
    /// Scores computed by the batch, per detector.
    pub scores: &'a [((AlertKind, Scope), Vec<f64>)],
    /// Latest network score of every region seen.
    pub region_scores: &'a [(&'a str, f64)],
    /// Release health of the firmware versions being rolled out.
    pub releases: &'a [ReleaseHealth],
    /// Each detector's thresholds, trained and in use.
    pub thresholds: &'a [FleetThreshold],
    pub model_version: &'a str,
    /// Wall clock, epoch ms.
    pub now_ms: i64,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> prometheus::Result<T> {
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

impl AlertMetrics {
    /// Registers every alert metric in `registry`, with the default top K.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Self::register_with_top_k(registry, DEFAULT_TOP_K)
    }

    /// Registers every alert metric, exporting at most `top_k` entity series.
    pub fn register_with_top_k(registry: &Registry, top_k: usize) -> prometheus::Result<Self> {
        Self::register_with_caps(registry, top_k, DEFAULT_REGION_CAP)
    }

    /// Registers every alert metric, exporting at most `top_k` entity series
    /// and `region_cap` regions by name.
    pub fn register_with_caps(registry: &Registry, top_k: usize, region_cap: usize) -> prometheus::Result<Self> {
        Ok(AlertMetrics {
            top_k,
            region_cap,
            firing: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "termwatch_alerts_firing",
                        "Alerts firing now, by kind, scope, peak severity and region. Groups that fired once stay at 0.",
                    ),
                    &["kind", "scope", "severity", "region"],
                )?,
            )?,
            events: register(
                registry,
                IntCounterVec::new(
                    Opts::new("termwatch_alert_events_total", "Alert events (alerts-v1), by kind, scope and state."),
                    &["kind", "scope", "state"],
                )?,
            )?,
            region_score: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_region_network_score",
                        "Latest network-degradation score of each region, 0-1.",
                    ),
                    &["region"],
                )?,
            )?,
            scores: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "termwatch_anomaly_score",
                        "Anomaly scores (0-1) of every scored window, by kind and scope of the detector.",
                    )
                    .buckets(SCORE_BUCKETS.to_vec()),
                    &["kind", "scope"],
                )?,
            )?,
            entity_score: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_alert_entity_score",
                        "Latest score of each currently firing alert, for the top K by score only (see termwatch_alert_entities_cut_off). \
                         severity is the peak severity; top_reason the feature that drove the latest bad window.",
                    ),
                    &ENTITY_LABELS,
                )?,
            )?,
            entities_cut_off: register(
                registry,
                IntGauge::new(
                    "termwatch_alert_entities_cut_off",
                    "Firing alerts left out of termwatch_alert_entity_score by the top-K cap.",
                )?,
            )?,
            model_info: register(
                registry,
                IntGaugeVec::new(
                    Opts::new("termwatch_model_info", "The model version in service (value 1)."),
                    &["version"],
                )?,
            )?,
            event_time_lag: register(
                registry,
                Gauge::new(
                    "termwatch_event_time_lag_seconds",
                    "Wall clock minus the feature engine's event-time watermark, at the last batch.",
                )?,
            )?,
            watermark: register(
                registry,
                Gauge::new(
                    "termwatch_event_time_watermark_timestamp_seconds",
                    "Event time up to which every input that is not idle has delivered (a window closes once this \
                     passes its end by the lateness), Unix seconds.",
                )?,
            )?,
            dropped: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_event_time_dropped_total",
                        "Valid reports the feature engine dropped: reason late (its own input had left its window \
                         behind by more than the lateness) or ahead (more than max_ahead past its input and its \
                         terminal: a wrong clock).",
                    ),
                    &["reason"],
                )?,
            )?,
            region_reports: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_region_reports_total",
                        "Valid reports that reached the feature engine, by the terminal's region.",
                    ),
                    &["region"],
                )?,
            )?,
            region_dropped: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_region_reports_dropped_total",
                        "Of termwatch_region_reports_total, those dropped as late or ahead, by region and reason.",
                    ),
                    &["region", "reason"],
                )?,
            )?,
            terminal_dropped: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_terminal_reports_dropped_ratio",
                        "Share of a terminal's recent reports (about its last 32) dropped as late or ahead, for the \
                         worst 20 terminals above 5 %: a clock or a link to look at.",
                    ),
                    &["terminal", "site", "region"],
                )?,
            )?,
            source_watermark: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_source_watermark_timestamp_seconds",
                        "Event time up to which each input (Kafka topic-partition or file) has delivered, Unix seconds.",
                    ),
                    &["source"],
                )?,
            )?,
            source_idle: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "termwatch_source_idle",
                        "1 while an input has nothing more to send for now and holds no window open.",
                    ),
                    &["source"],
                )?,
            )?,
            thin_region_windows: register(
                registry,
                IntCounter::new(
                    "termwatch_region_windows_unscored_total",
                    "Region windows not scored for network degradation because fewer than three terminals with a \
                     baseline reported in them (a region asleep at night): its median would be a few terminals' \
                     noise.",
                )?,
            )?,
            learnt_alone: register(
                registry,
                IntCounter::new(
                    "termwatch_stage_windows_learnt_alone_total",
                    "Stage 1: windows a partition closed on its own terminals' cohort lessons, every \
                     partition's not coming back from stage 2 within two minutes (stage 2 down, stuck or far \
                     behind), or the partition four times stages.max_open_windows ahead. Meanwhile young terminals are judged against what their partition \
                     saw of their cohort. Always 0 in one process.",
                )?,
            )?,
            releases_refused: register(
                registry,
                IntCounter::new(
                    "termwatch_release_versions_refused_total",
                    "Switches to a firmware version that release health did not track because it already \
                     tracked its most versions (10,000): that version is neither judged nor exported. Above \
                     zero, something is inventing version strings.",
                )?,
            )?,
            threshold: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_detector_threshold",
                        "A detector's threshold: source trained (the model's) or in_use (after fleet calibration, \
                         which lifts it when the watched fleet scores higher than the training fleets, up to what \
                         still catches the training incidents; voltage and network only); source resolve for a \
                         detector with a resolve threshold (firmware): while its alert fires, windows at or above \
                         it hold the alert up.",
                    ),
                    &["kind", "scope", "source"],
                )?,
            )?,
            fleet_shift: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_detector_fleet_shift",
                        "How much higher the watched fleet's scores are than the training windows' (incidents \
                         included) at the share fleet calibration compares (log-odds; negative: quieter). Absent while the \
                         detector warms up (fewer than 20 windows, decayed over 7 days, in that share).",
                    ),
                    &["kind", "scope"],
                )?,
            )?,
            fleet_peak_shift: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_detector_fleet_peak_shift",
                        "How much higher the watched fleet's daily peaks (per entity and UTC day, the highest score \
                         two consecutive windows both reach) are than the training's at the share fleet calibration \
                         compares (log-odds, before its bound; negative: quieter). The threshold rises by the larger \
                         of this and termwatch_detector_fleet_shift. Absent while the detector warms up (fewer than \
                         5 entity-days, decayed over 7 days, in that share) and for detectors without it.",
                    ),
                    &["kind", "scope"],
                )?,
            )?,
            peaks_untracked: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "termwatch_detector_peak_entities_untracked",
                        "Windows of entities whose daily peak fleet calibration did not track for want of room \
                         (past 262,144 entities a day per detector), one per entity and window, since the service \
                         started.",
                    ),
                    &["kind", "scope"],
                )?,
            )?,
            tracked_terminals: register(
                registry,
                IntGauge::new("termwatch_tracked_terminals", "Terminals the feature engine holds state for.")?,
            )?,
            tracked_alert_entities: register(
                registry,
                IntGauge::new(
                    "termwatch_tracked_alert_entities",
                    "(kind, scope, entity) the alert tracker holds state for, firing or not.",
                )?,
            )?,
            snapshot_failures: register(
                registry,
                IntCounter::new(
                    "termwatch_state_snapshot_failures_total",
                    "State snapshots that could not be written (full or read-only disk, too many open files); \
                     consuming goes on, retried every state.interval_s.",
                )?,
            )?,
            snapshot_success: register(
                registry,
                Gauge::new(
                    "termwatch_state_snapshot_last_success_timestamp_seconds",
                    "When the state snapshots were last written whole (0: not since start).",
                )?,
            )?,
            release_terminals: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "termwatch_release_terminals",
                        "Terminals in their first week on a firmware version that reported in its latest window \
                         (release health; the 20 versions with the highest firmware-regression score).",
                    ),
                    &["model", "firmware"],
                )?,
            )?,
            release_crashes: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_release_crashes_per_terminal_day",
                        "App crashes per terminal-day on a firmware version, over its terminals in their first week \
                         on it (a day's exponentially decayed sums).",
                    ),
                    &["model", "firmware"],
                )?,
            )?,
            release_expected_crashes: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_release_expected_crashes_per_terminal_day",
                        "What the same terminals' own crash rates on the versions they ran before expect, per \
                         terminal-day: the baseline of termwatch_release_crashes_per_terminal_day.",
                    ),
                    &["model", "firmware"],
                )?,
            )?,
            release_score: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "termwatch_release_score",
                        "Latest firmware-regression score of a firmware version being rolled out, 0-1.",
                    ),
                    &["model", "firmware"],
                )?,
            )?,
            regions_cut_off: register(
                registry,
                IntGauge::new(
                    "termwatch_regions_cut_off",
                    "Regions beyond the first 500 seen: counted under region=\"(other)\" and given no network \
                     score series. Regions are a closed set; a rising value means invented region names.",
                )?,
            )?,
            forgotten: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_terminals_forgotten_total",
                        "Terminals whose state scoring let go: reason idle (silent for limits.idle_terminal_days) \
                         or capacity (the longest silent, to make room under limits.max_terminals). One that comes \
                         back learns again from its cohort, unless the cold store gives it back its state (idle, \
                         with state.path).",
                    ),
                    &["reason"],
                )?,
            )?,
            cold_terminals: register(
                registry,
                IntGauge::new(
                    "termwatch_cold_terminals",
                    "Terminals forgotten as idle whose state the cold store (state.path/cold) keeps for their return.",
                )?,
            )?,
            cold_store: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_cold_store_total",
                        "What the cold store did: stored (an idle terminal's state), restored (given back when it \
                         reported again), swept (the oldest deleted, to stay within limits.max_terminals), failed \
                         (not written or not readable: that terminal comes back as new).",
                    ),
                    &["event"],
                )?,
            )?,
            refused: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_reports_refused_total",
                        "Valid reports not scored because their terminal could not be held: limit terminals (at \
                         limits.max_terminals with every terminal reporting) or regions (a region beyond \
                         limits.max_regions).",
                    ),
                    &["limit"],
                )?,
            )?,
            terminals_limit: register(
                registry,
                IntGauge::new("termwatch_terminals_limit", "limits.max_terminals: the most terminals held.")?,
            )?,
            delivery_failures: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "termwatch_alert_delivery_failures_total",
                        "Alert event outputs found failing: output stdout (each failed write; those events are \
                         not written there, scoring goes on) or kafka (each batch or checkpoint that found events \
                         waiting for the alerts topic; they are sent again every 10 s, and no snapshot or commit \
                         is taken until they are delivered).",
                    ),
                    &["output"],
                )?,
            )?,
            topic_pending: register(
                registry,
                IntGauge::new(
                    "termwatch_alert_topic_pending_events",
                    "Alert events waiting for the alerts topic (kafka.alerts_topic) to take them.",
                )?,
            )?,
            state: Arc::new(Mutex::new(State::default())),
        })
        .inspect(|m: &AlertMetrics| {
            for output in ["stdout", "kafka"] {
                m.delivery_failures.with_label_values(&[output]);
            }
            // Zero from the start, so that rate() and increase() see the first one.
            for reason in ["idle", "capacity"] {
                m.forgotten.with_label_values(&[reason]);
            }
            for event in ["stored", "restored", "swept", "failed"] {
                m.cold_store.with_label_values(&[event]);
            }
            for limit in ["terminals", "regions"] {
                m.refused.with_label_values(&[limit]);
            }
        })
    }

    /// An alert event output that failed (`stdout` or `kafka`).
    pub fn delivery_failed(&self, output: &str) {
        self.delivery_failures.with_label_values(&[output]).inc();
    }

    /// Alert events waiting for the alerts topic.
    pub fn topic_pending(&self, events: usize) {
        self.topic_pending.set(events as i64);
    }

    /// A snapshot round that failed.
    pub fn snapshot_failed(&self) {
        self.snapshot_failures.inc();
    }

    /// A snapshot round written whole, now.
    pub fn snapshot_written(&self) {
        self.snapshot_success.set(wall_ms() as f64 / 1000.0);
    }

    /// Updates every alert metric after a batch: `events` are the alert events
    /// the batch caused. Drains the scorer's kept scores into the histograms.
    pub fn update(&self, scorer: &mut Scorer, events: &[AlertEvent]) {
        let scores = scorer.take_scores();
        let region_scores: Vec<(&str, f64)> = scorer.region_scores().collect();
        let releases: Vec<ReleaseHealth> = scorer.release_health().cloned().collect();
        let thresholds: Vec<FleetThreshold> = scorer.thresholds().collect();
        let view = AlertView {
            thresholds: &thresholds,
            alerts: &[scorer.alerts()],
            engines: &[("", scorer.engine())],
            events,
            scores: &scores,
            region_scores: &region_scores,
            releases: &releases,
            model_version: scorer.model_version(),
            now_ms: wall_ms(),
        };
        self.observe(&view);
        self.export_cold(scorer.cold_store().as_slice());
    }

    /// [`AlertMetrics::update`] for stage 2, which holds no terminals: its
    /// alerts, release health, the scores `kept` since the last update, and the thresholds
    /// of every detector (those of the terminal detectors are the ones it
    /// teaches stage 1).
    pub fn update_regional(&self, stage: &RegionalStage, kept: &Kept, events: &[AlertEvent]) {
        let region_scores: Vec<(&str, f64)> = kept.regions.iter().map(|(r, s)| (&**r, *s)).collect();
        let thresholds: Vec<FleetThreshold> = stage.thresholds().collect();
        let releases: Vec<ReleaseHealth> = stage.release_health().cloned().collect();
        self.observe(&AlertView {
            alerts: &[stage.alerts()],
            engines: &[],
            events,
            scores: &kept.scores,
            region_scores: &region_scores,
            releases: &releases,
            thresholds: &thresholds,
            model_version: stage.model_version(),
            now_ms: wall_ms(),
        });
    }

    /// Region windows left unscored for too few terminals, where no engine
    /// counts them (stage 2 merges the regions; its merger counts them).
    pub fn set_unscored_region_windows(&self, total: u64) {
        raise(&self.thin_region_windows, total);
    }

    /// Version switches stage 2's release health could not track, where
    /// no engine counts them (its merger judges the versions).
    pub fn set_release_versions_refused(&self, total: u64) {
        raise(&self.releases_refused, total);
    }

    /// A process that owns no alert (a stage-2 standby): its model only.
    pub fn update_standby(&self, model_version: &str) {
        {
            let mut state = self.lock_state();
            // A member that merged until a rebalance took the partition
            // away exports none of the alert state it held: the new owner
            // exports it now, and recording rules sum alerts over processes.
            self.firing.reset();
            self.region_score.reset();
            self.entity_score.reset();
            self.entities_cut_off.set(0);
            state.exported.clear();
            state.sites.clear();
        }
        self.observe(&AlertView {
            alerts: &[],
            engines: &[],
            events: &[],
            scores: &[],
            region_scores: &[],
            releases: &[],
            thresholds: &[],
            model_version,
            now_ms: wall_ms(),
        });
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding the lock leaves nothing half-done
            // that the next full update does not overwrite.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// [`AlertMetrics::update`] on an explicit view.
    pub fn observe(&self, view: &AlertView<'_>) {
        let mut state = self.lock_state();
        for e in view.events {
            self.events.with_label_values(&[e.kind.as_str(), e.scope.as_str(), state_str(e.state)]).inc();
        }
        let mut scored = false;
        for ((kind, scope), values) in view.scores {
            if values.is_empty() {
                continue;
            }
            scored = true;
            let h = self.scores.with_label_values(&[kind.as_str(), scope.as_str()]);
            for v in values {
                h.observe(*v);
            }
        }
        for (region, score) in view.region_scores {
            if let Some(region) = state.region_label(region, self.region_cap) {
                self.region_score.with_label_values(&[region]).set(*score);
            }
        }
        let mut firing: HashMap<(AlertKind, Scope, &str, &str), i64> = HashMap::new();
        for c in view.alerts.iter().flat_map(|a| a.firing_counts()) {
            let region = state.region_label(c.region, self.region_cap).unwrap_or(OTHER_REGIONS);
            *firing.entry((c.kind, c.scope, severity_str(c.severity), region)).or_default() += i64::from(c.count);
        }
        for ((kind, scope, severity, region), count) in firing {
            self.firing.with_label_values(&[kind.as_str(), scope.as_str(), severity, region]).set(count);
        }
        if state.model_version.as_deref() != Some(view.model_version) {
            if let Some(old) = state.model_version.take() {
                // Gone from service: the series goes, it does not stay at 1.
                let _ = self.model_info.remove_label_values(&[&old]);
            }
            self.model_info.with_label_values(&[view.model_version]).set(1);
            state.model_version = Some(view.model_version.to_string());
        }
        if !view.engines.is_empty() {
            if let Some(wm) = view.engines.iter().filter_map(|(_, e)| e.watermark()).min() {
                self.watermark.set(wm as f64 / 1000.0);
                self.event_time_lag.set((view.now_ms - wm) as f64 / 1000.0);
            }
            self.export_event_time(&mut state, view.engines);
            self.tracked_terminals.set(view.engines.iter().map(|(_, e)| e.tracked_terminals()).sum::<usize>() as i64);
            self.export_limits(&mut state, view.engines);
        }
        self.export_releases(&mut state, view.releases);
        self.export_thresholds(view.thresholds);
        self.tracked_alert_entities.set(view.alerts.iter().map(|a| a.len()).sum::<usize>() as i64);
        if scored || !view.events.is_empty() || !state.primed {
            self.export_top_k(&mut state, view);
            state.primed = true;
        }
    }

    /// Each detector's thresholds (a handful of series: one per detector).
    fn export_thresholds(&self, thresholds: &[FleetThreshold]) {
        for t in thresholds {
            let (kind, scope) = (t.kind.as_str(), t.scope.as_str());
            self.threshold.with_label_values(&[kind, scope, "trained"]).set(t.trained);
            self.threshold.with_label_values(&[kind, scope, "in_use"]).set(t.threshold);
            match t.resolve {
                Some(resolve) => self.threshold.with_label_values(&[kind, scope, "resolve"]).set(resolve),
                None => {
                    let _ = self.threshold.remove_label_values(&[kind, scope, "resolve"]);
                }
            }
            match t.shift {
                Some(shift) => self.fleet_shift.with_label_values(&[kind, scope]).set(shift),
                None => {
                    let _ = self.fleet_shift.remove_label_values(&[kind, scope]);
                }
            }
            match t.peak_shift {
                Some(shift) => self.fleet_peak_shift.with_label_values(&[kind, scope]).set(shift),
                None => {
                    let _ = self.fleet_peak_shift.remove_label_values(&[kind, scope]);
                }
            }
            if t.untracked > 0 {
                self.peaks_untracked.with_label_values(&[kind, scope]).set(t.untracked.min(i64::MAX as u64) as i64);
            }
        }
    }

    /// Release health of the top versions; series of versions that left go.
    fn export_releases(&self, state: &mut State, releases: &[ReleaseHealth]) {
        let mut top: Vec<&ReleaseHealth> = releases.iter().collect();
        top.sort_by(|a, b| {
            let score = |r: &ReleaseHealth| r.score.unwrap_or(0.0);
            score(b).total_cmp(&score(a)).then(b.terminals.cmp(&a.terminals)).then(a.entity.cmp(&b.entity))
        });
        top.truncate(RELEASE_TOP_K);
        let mut now = HashSet::new();
        for r in top {
            let (model, firmware) = r.entity.split_once('/').unwrap_or((&r.entity, ""));
            let labels = [model, firmware];
            self.release_terminals.with_label_values(&labels).set(i64::from(r.terminals));
            self.release_crashes.with_label_values(&labels).set(r.crashes_per_terminal_day);
            self.release_expected_crashes.with_label_values(&labels).set(r.expected_crashes_per_terminal_day);
            match r.score {
                Some(score) => self.release_score.with_label_values(&labels).set(score),
                None => {
                    let _ = self.release_score.remove_label_values(&labels);
                }
            }
            now.insert([model.to_string(), firmware.to_string()]);
        }
        for gone in state.releases.difference(&now) {
            let labels = [gone[0].as_str(), gone[1].as_str()];
            let _ = self.release_terminals.remove_label_values(&labels);
            let _ = self.release_crashes.remove_label_values(&labels);
            let _ = self.release_expected_crashes.remove_label_values(&labels);
            let _ = self.release_score.remove_label_values(&labels);
        }
        state.releases = now;
    }

    /// What the cold stores hold and did, summed: the one store of one
    /// process (which lives as long as the process), or those of the
    /// partitions stage 1 holds (a store leaves with its partition: the
    /// counts hold until the stores' total passes them, as the engines'
    /// do).
    pub(crate) fn export_cold(&self, stores: &[(ColdStats, usize)]) {
        self.cold_terminals.set(stores.iter().map(|(_, held)| *held as i64).sum());
        let sum = |f: fn(&ColdStats) -> u64| stores.iter().map(|(s, _)| f(s)).sum::<u64>();
        for (event, now) in [
            ("stored", sum(|s| s.stored)),
            ("restored", sum(|s| s.restored)),
            ("swept", sum(|s| s.swept)),
            ("failed", sum(|s| s.failed)),
        ] {
            raise(&self.cold_store.with_label_values(&[event]), now);
        }
    }

    /// What the engines' limits forgot and refused.
    fn export_limits(&self, state: &mut State, engines: &[(&str, &FeatureEngine)]) {
        self.terminals_limit.set(engines.iter().map(|(_, e)| e.limits().max_terminals as i64).sum());
        let mut delta = [0u64; 4];
        for (name, e) in engines {
            let c = e.limit_counts();
            let now = [c.evicted_idle, c.evicted_capacity, c.refused_terminals, c.refused_regions];
            let was = state.limit_counts.insert(name.to_string(), now).unwrap_or_default();
            for ((d, now), was) in delta.iter_mut().zip(now).zip(was) {
                *d = d.saturating_add(since(now, was));
            }
        }
        self.forgotten.with_label_values(&["idle"]).inc_by(delta[0]);
        self.forgotten.with_label_values(&["capacity"]).inc_by(delta[1]);
        self.refused.with_label_values(&["terminals"]).inc_by(delta[2]);
        self.refused.with_label_values(&["regions"]).inc_by(delta[3]);
        // Kept in the engines' snapshots, as late drops are.
        raise(&self.releases_refused, engines.iter().map(|(_, e)| e.limit_counts().refused_releases).sum());
    }

    /// Drops by reason and region, each input's progress, and the terminals
    /// whose reports are being dropped.
    fn export_event_time(&self, state: &mut State, engines: &[(&str, &FeatureEngine)]) {
        let (mut late, mut ahead, mut thin, mut alone) = (0u64, 0u64, 0u64, 0u64);
        let mut labelled: HashMap<&str, [u64; 3]> = HashMap::new();
        for (name, e) in engines {
            let c = e.counters();
            late = late.saturating_add(c.late);
            ahead = ahead.saturating_add(c.ahead);
            thin = thin.saturating_add(c.thin_region_windows);
            alone = alone.saturating_add(c.learnt_alone);
            for (region, counts) in e.region_counts() {
                let now = [counts.reports, counts.late, counts.ahead];
                let by_engine = state.region_counts.entry(region.to_string()).or_default();
                let was = by_engine.insert(name.to_string(), now).unwrap_or_default();
                if was == now {
                    continue;
                }
                let label = state.region_label(region, self.region_cap).unwrap_or(OTHER_REGIONS);
                let sum = labelled.entry(label).or_default();
                for ((s, now), was) in sum.iter_mut().zip(now).zip(was) {
                    *s = s.saturating_add(since(now, was));
                }
            }
        }
        // Kept in the engines' snapshots: a partition that comes back
        // brings the counts exported before it left.
        raise(&self.dropped.with_label_values(&["late"]), late);
        raise(&self.dropped.with_label_values(&["ahead"]), ahead);
        raise(&self.thin_region_windows, thin);
        raise(&self.learnt_alone, alone);
        for (label, [reports, late, ahead]) in labelled {
            self.region_reports.with_label_values(&[label]).inc_by(reports);
            self.region_dropped.with_label_values(&[label, "late"]).inc_by(late);
            self.region_dropped.with_label_values(&[label, "ahead"]).inc_by(ahead);
        }
        self.regions_cut_off.set(state.region_counts.len().saturating_sub(state.named_regions.len()) as i64);
        let mut sources = HashSet::new();
        for (name, watermark, idle) in engines.iter().flat_map(|(_, e)| e.sources()) {
            if let Some(wm) = watermark {
                self.source_watermark.with_label_values(&[name]).set(wm as f64 / 1000.0);
            }
            self.source_idle.with_label_values(&[name]).set(i64::from(idle));
            sources.insert(name.to_string());
        }
        for gone in state.sources.difference(&sources) {
            let _ = self.source_watermark.remove_label_values(&[gone]);
            let _ = self.source_idle.remove_label_values(&[gone]);
        }
        state.sources = sources;

        // Looked for when something was dropped, and now and then while
        // terminals are named (their shares fall as they report again).
        let dropped = late.saturating_add(ahead);
        let due = state.last_drop_scan.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10));
        if dropped == state.dropped_seen && (state.dropping.is_empty() || !due) {
            return;
        }
        state.dropped_seen = dropped;
        state.last_drop_scan = Some(std::time::Instant::now());
        let mut worst: Vec<(&FeatureEngine, u32, f32)> = engines
            .iter()
            .flat_map(|(_, e)| {
                e.dropping_terminals(DROPPING_MIN_SHARE).into_iter().map(move |(t, share)| (*e, t, share))
            })
            .collect();
        worst.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.terminal_id(a.1).cmp(b.0.terminal_id(b.1))));
        worst.truncate(DROPPING_TOP_K);
        let mut exported = HashSet::with_capacity(worst.len());
        for (engine, t, share) in worst {
            let site = engine.site_id(engine.terminal_site(t));
            let region = engine.region_name(engine.terminal_region(t));
            let labels = [engine.terminal_id(t).to_string(), site.to_string(), region.to_string()];
            self.terminal_dropped.with_label_values(&[&labels[0], &labels[1], &labels[2]]).set(f64::from(share));
            exported.insert(labels);
        }
        for gone in state.dropping.difference(&exported) {
            let _ = self.terminal_dropped.remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
        }
        state.dropping = exported;
    }

    /// Replaces the entity series with the current top K firing alerts.
    fn export_top_k(&self, state: &mut State, view: &AlertView<'_>) {
        let mut firing: Vec<FiringAlert<'_>> = view.alerts.iter().flat_map(|a| a.firing()).collect();
        let total = firing.len();
        if total > self.top_k {
            if self.top_k > 0 {
                firing.select_nth_unstable_by(self.top_k - 1, rank);
            }
            firing.truncate(self.top_k);
        }
        self.entities_cut_off.set((total - firing.len()) as i64);

        // Sites of the terminals in the top K, looked up by id for those not known yet.
        for a in firing.iter().filter(|a| a.scope == Scope::Terminal) {
            if !state.sites.contains_key(a.entity)
                && let Some(site) = view.engines.iter().find_map(|(_, e)| e.site_of_terminal(a.entity))
            {
                state.sites.insert(a.entity.to_string(), site.to_string());
            }
        }
        let terminals: HashSet<&str> = firing.iter().filter(|a| a.scope == Scope::Terminal).map(|a| a.entity).collect();
        state.sites.retain(|t, _| terminals.contains(t.as_str()));

        let mut exported = HashSet::with_capacity(firing.len());
        for a in &firing {
            let site = match a.scope {
                Scope::Terminal => state.sites.get(a.entity).map(String::as_str).unwrap_or(""),
                Scope::Site => a.entity,
                Scope::Region | Scope::Cohort => "",
            };
            let labels: EntityLabels = [
                a.kind.as_str().to_string(),
                a.scope.as_str().to_string(),
                a.entity.to_string(),
                site.to_string(),
                a.region.to_string(),
                severity_str(a.peak_severity).to_string(),
                a.reasons.first().map(|r| r.feature.clone()).unwrap_or_default(),
            ];
            self.entity_score.with_label_values(&label_refs(&labels)).set(a.last_score);
            exported.insert(labels);
        }
        for old in state.exported.difference(&exported) {
            let _ = self.entity_score.remove_label_values(&label_refs(old));
        }
        state.exported = exported;
    }
}

/// Raises a counter to a total counted elsewhere and kept in snapshots
/// (an engine's), never lowering it: an engine replaced by an older
/// snapshot, or a partition gone to another replica, holds the counter
/// until its total passes what was exported, rather than count anything
/// twice.
fn raise(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// What an engine's count not kept in its snapshot added since it was
/// `was`: all of it when it went down (the engine was replaced, and counts
/// again from nothing).
fn since(now: u64, was: u64) -> u64 {
    if now >= was { now - was } else { now }
}

fn label_refs(labels: &EntityLabels) -> [&str; 7] {
    [&labels[0], &labels[1], &labels[2], &labels[3], &labels[4], &labels[5], &labels[6]]
}

/// Highest score first; ties by kind, scope and entity, so the cut is stable.
fn rank(a: &FiringAlert<'_>, b: &FiringAlert<'_>) -> Ordering {
    b.last_score.total_cmp(&a.last_score).then_with(|| (a.kind, a.scope, a.entity).cmp(&(b.kind, b.scope, b.entity)))
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::Scored;
    use termwatch_features::FeatureConfig;
    use termwatch_models::artifact::ModelSet;
    use termwatch_models::policy::AlertingConfig;
    use termwatch_telemetry::alerts::Reason;

    /// Every metric family this module exports (a test checks each is emitted).
    const METRIC_NAMES: [&str; 32] = [
        "termwatch_alerts_firing",
        "termwatch_detector_threshold",
        "termwatch_detector_fleet_shift",
        "termwatch_alert_events_total",
        "termwatch_region_network_score",
        "termwatch_anomaly_score",
        "termwatch_alert_entity_score",
        "termwatch_alert_entities_cut_off",
        "termwatch_model_info",
        "termwatch_event_time_lag_seconds",
        "termwatch_event_time_watermark_timestamp_seconds",
        "termwatch_tracked_terminals",
        "termwatch_tracked_alert_entities",
        "termwatch_event_time_dropped_total",
        "termwatch_region_windows_unscored_total",
        "termwatch_stage_windows_learnt_alone_total",
        "termwatch_region_reports_total",
        "termwatch_region_reports_dropped_total",
        "termwatch_terminal_reports_dropped_ratio",
        "termwatch_source_watermark_timestamp_seconds",
        "termwatch_source_idle",
        "termwatch_state_snapshot_failures_total",
        "termwatch_state_snapshot_last_success_timestamp_seconds",
        "termwatch_regions_cut_off",
        "termwatch_terminals_forgotten_total",
        "termwatch_cold_terminals",
        "termwatch_cold_store_total",
        "termwatch_reports_refused_total",
        "termwatch_release_versions_refused_total",
        "termwatch_terminals_limit",
        "termwatch_alert_delivery_failures_total",
        "termwatch_alert_topic_pending_events",
    ];

    const T0: i64 = 1_790_000_000_000;
    const MIN5: i64 = 300_000;

    fn gathered(registry: &Registry) -> HashMap<String, usize> {
        registry.gather().iter().map(|f| (f.name().to_string(), f.get_metric().len())).collect()
    }

    /// What the engines alone say, at `now_ms`: no alert, score or event.
    fn engines_view<'a>(engines: &'a [(&'a str, &'a FeatureEngine)], now_ms: i64) -> AlertView<'a> {
        AlertView {
            alerts: &[],
            engines,
            events: &[],
            scores: &[],
            region_scores: &[],
            releases: &[],
            thresholds: &[],
            model_version: "m",
            now_ms,
        }
    }

    fn window<'a>(entity: &'a str, i: i64, score: f64) -> Scored<'a> {
        Scored {
            window_end_ms: T0 + i * MIN5,
            kind: AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            entity,
            region: "east-07",
            score,
            bad: true,
            critical: score > 0.99,
            holds: true,
            model_version: "test-1",
            reasons: vec![Reason { feature: "v_min_drop_z".into(), value: 1.0, baseline: 0.0, baseline_version: None }]
                .into(),
        }
    }

    #[test]
    fn caps_entity_series_at_top_k_and_exports_the_cut_off() {
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        let mut tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        let ids: Vec<String> = (0..1000).map(|i| format!("T-{i:04}")).collect();
        for (n, id) in ids.iter().enumerate() {
            // Distinct scores: T-0999 scores highest.
            let score = 0.5 + n as f64 / 2000.0;
            tracker.observe(window(id, 0, score));
            tracker.observe(window(id, 1, score));
        }
        assert_eq!(tracker.firing().count(), 1000);
        let engine = FeatureEngine::new(FeatureConfig::default());
        let view = AlertView {
            alerts: &[&tracker],
            engines: &[("", &engine)],
            events: &[],
            scores: &[],
            region_scores: &[],
            releases: &[],
            thresholds: &[],
            model_version: "test-1",
            now_ms: T0,
        };
        metrics.observe(&view);
        let families = registry.gather();
        let entity = families.iter().find(|f| f.name() == "termwatch_alert_entity_score").expect("entity series");
        assert_eq!(entity.get_metric().len(), DEFAULT_TOP_K);
        assert_eq!(metrics.entities_cut_off.get(), 800);
        // The kept ones are the highest scores: T-0800 .. T-0999.
        let min_kept = entity.get_metric().iter().map(|m| m.get_gauge().get_value()).fold(f64::INFINITY, f64::min);
        assert_eq!(min_kept, 0.5 + 800.0 / 2000.0);
        let total: usize = families.iter().map(|f| f.get_metric().len()).sum();
        assert!(total <= DEFAULT_TOP_K + 50, "{total} series");

        // Resolving alerts removes their series instead of leaving them stale.
        let mut tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        tracker.observe(window("T-0001", 0, 0.9));
        tracker.observe(window("T-0001", 1, 0.9));
        let view = AlertView { alerts: &[&tracker], ..view };
        // A batch that closed no window and changed no alert leaves the top K as it was...
        metrics.observe(&AlertView { events: &[], ..view });
        let entity = registry.gather().into_iter().find(|f| f.name() == "termwatch_alert_entity_score");
        let event = AlertEvent {
            ts: T0,
            kind: AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            entity: "T-0001".into(),
            region: "east-07".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            score: 0.9,
            model_version: "test-1".into(),
            reasons: Vec::new(),
        };
        assert_eq!(entity.map(|f| f.get_metric().len()), Some(DEFAULT_TOP_K));
        // ...and one with an alert event recomputes it.
        metrics.observe(&AlertView { events: std::slice::from_ref(&event), ..view });
        let entity = registry.gather().into_iter().find(|f| f.name() == "termwatch_alert_entity_score");
        assert_eq!(entity.map(|f| f.get_metric().len()), Some(1));
        assert_eq!(metrics.entities_cut_off.get(), 0);
    }

    #[test]
    fn top_k_of_zero_exports_only_the_count() {
        let registry = Registry::new();
        let metrics = AlertMetrics::register_with_top_k(&registry, 0).expect("register");
        let mut tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        tracker.observe(window("T-1", 0, 0.9));
        tracker.observe(window("T-1", 1, 0.9));
        let engine = FeatureEngine::new(FeatureConfig::default());
        metrics.observe(&AlertView { alerts: &[&tracker], ..engines_view(&[("", &engine)], T0) });
        assert_eq!(gathered(&registry).get("termwatch_alert_entity_score"), None);
        assert_eq!(metrics.entities_cut_off.get(), 1);
    }

    /// Invented region names cannot multiply the series: past the cap, a
    /// region gets no score series and its reports are summed under
    /// "(other)", so the totals stay right.
    #[test]
    fn regions_past_the_cap_are_summed_under_other() {
        use termwatch_telemetry::{BatchBuilder, decode};
        let registry = Registry::new();
        let metrics = AlertMetrics::register_with_caps(&registry, 200, 3).expect("register");
        let tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        let mut engine = FeatureEngine::new(FeatureConfig::default());
        let mut builder = BatchBuilder::with_capacity(64);
        for k in 0..4 {
            for r in 0..6 {
                let line = format!(r#"{{"terminal_id":"T-{r}","ts":{},"region":"r-{r}"}}"#, T0 + k * 60_000);
                builder.append(&decode(line.as_bytes(), T0 + 86_400_000).expect("valid")).expect("append");
            }
        }
        engine.process_batch(&builder.finish().expect("batch"));
        let names: Vec<String> = (0..6).map(|r| format!("r-{r}")).collect();
        let scores: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 0.1)).collect();
        let view = AlertView {
            alerts: &[&tracker],
            engines: &[("", &engine)],
            events: &[],
            scores: &[],
            region_scores: &scores,
            releases: &[],
            thresholds: &[],
            model_version: "m",
            now_ms: T0,
        };
        metrics.observe(&view);
        metrics.observe(&view);
        let families = gathered(&registry);
        assert_eq!(families.get("termwatch_region_network_score"), Some(&3));
        assert_eq!(families.get("termwatch_region_reports_total"), Some(&4), "three regions and (other)");
        assert_eq!(metrics.region_reports.with_label_values(&[OTHER_REGIONS]).get(), 12, "three regions of 4 reports");
        let total: u64 = (0..3).map(|r| metrics.region_reports.with_label_values(&[&format!("r-{r}")]).get()).sum();
        assert_eq!(total + 12, 24, "every report counted once");
        assert_eq!(metrics.regions_cut_off.get(), 3);
    }

    #[test]
    fn release_health_exports_the_top_versions_and_drops_those_that_leave() {
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        let tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        let engine = FeatureEngine::new(FeatureConfig::default());
        let health = |i: usize, score: f64| ReleaseHealth {
            entity: format!("P200/{i}.0.0").into(),
            terminals: 3,
            crashes_per_terminal_day: 4.0,
            expected_crashes_per_terminal_day: 0.5,
            score: Some(score),
            end_ms: T0,
        };
        // A flood of versions: the highest-scoring RELEASE_TOP_K are named.
        let many: Vec<ReleaseHealth> = (0..RELEASE_TOP_K + 30).map(|i| health(i, i as f64 / 100.0)).collect();
        let view = AlertView {
            alerts: &[&tracker],
            engines: &[("", &engine)],
            events: &[],
            scores: &[],
            region_scores: &[],
            releases: &many,
            thresholds: &[],
            model_version: "m",
            now_ms: T0,
        };
        metrics.observe(&view);
        let families = gathered(&registry);
        for name in [
            "termwatch_release_terminals",
            "termwatch_release_crashes_per_terminal_day",
            "termwatch_release_expected_crashes_per_terminal_day",
            "termwatch_release_score",
        ] {
            assert_eq!(families.get(name), Some(&RELEASE_TOP_K), "{name}");
        }
        let top = format!("{}.0.0", RELEASE_TOP_K + 29);
        assert_eq!(metrics.release_score.with_label_values(&["P200", &top]).get(), (RELEASE_TOP_K + 29) as f64 / 100.0);
        assert_eq!(metrics.release_crashes.with_label_values(&["P200", &top]).get(), 4.0);
        // The rollout is over: its series go.
        let one = [health(1, 0.2)];
        metrics.observe(&AlertView { releases: &one, ..view });
        let families = gathered(&registry);
        assert_eq!(families.get("termwatch_release_terminals"), Some(&1));
        metrics.observe(&AlertView { releases: &[], ..view });
        assert_eq!(gathered(&registry).get("termwatch_release_terminals"), None);
    }

    #[test]
    fn what_the_limits_forget_and_refuse_is_counted() {
        use termwatch_features::Limits;
        use termwatch_telemetry::{BatchBuilder, decode};
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        let tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        let mut engine = FeatureEngine::new(FeatureConfig::default());
        engine.set_limits(Limits { max_terminals: 2, max_regions: 1, ..Limits::default() });
        let mut builder = BatchBuilder::with_capacity(8);
        for (t, region) in [("T-0", "r-0"), ("T-1", "r-0"), ("T-2", "r-0"), ("T-3", "r-0"), ("T-4", "r-1")] {
            let line = format!(r#"{{"terminal_id":"{t}","ts":{T0},"region":"{region}"}}"#);
            builder.append(&decode(line.as_bytes(), T0).expect("valid")).expect("append");
        }
        engine.process_batch(&builder.finish().expect("batch"));
        let view = AlertView {
            alerts: &[&tracker],
            engines: &[("", &engine)],
            events: &[],
            scores: &[],
            region_scores: &[],
            releases: &[],
            thresholds: &[],
            model_version: "m",
            now_ms: T0,
        };
        metrics.observe(&view);
        metrics.observe(&view);
        assert_eq!(metrics.refused.with_label_values(&["terminals"]).get(), 2);
        assert_eq!(metrics.refused.with_label_values(&["regions"]).get(), 1);
        assert_eq!(metrics.forgotten.with_label_values(&["capacity"]).get(), 0, "both held have a window open");
        assert_eq!(metrics.terminals_limit.get(), 2);
        assert_eq!(metrics.tracked_terminals.get(), 2);
    }

    #[test]
    fn a_member_turned_standby_exports_none_of_the_alert_state_it_held() {
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        let mut tracker = AlertTracker::new(&AlertingConfig::default()).expect("tracker");
        let events: Vec<AlertEvent> = (0..4).filter_map(|i| tracker.observe(window("T-1", i, 0.9))).collect();
        assert_eq!(tracker.firing().count(), 1, "the terminal fires");
        let view = |alerts| AlertView {
            alerts,
            engines: &[],
            events: &events,
            scores: &[],
            region_scores: &[("east-07", 0.9)],
            releases: &[],
            thresholds: &[],
            model_version: "m",
            now_ms: T0,
        };
        metrics.observe(&view(&[&tracker]));
        let series = ["termwatch_alerts_firing", "termwatch_region_network_score", "termwatch_alert_entity_score"];
        let merging = gathered(&registry);
        for name in series {
            assert!(merging.get(name).is_some_and(|n| *n > 0), "{name} while merging: {merging:?}");
        }
        metrics.update_standby("m");
        let standby = gathered(&registry);
        for name in series {
            assert_eq!(standby.get(name), None, "{name} on a standby");
        }
        assert_eq!(standby.get("termwatch_model_info"), Some(&1));
    }

    #[test]
    fn engines_of_several_partitions_are_exported_as_one_process() {
        use termwatch_telemetry::{BatchBuilder, decode};
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        // Two partitions' engines, as stage 1 holds them: each with its
        // source, its terminals, a report far too late for it.
        let engine = |p: usize| {
            let mut e = FeatureEngine::new(FeatureConfig::default());
            let source = format!("telemetry-{p}");
            let mut builder = BatchBuilder::with_capacity(8);
            for (t, ts) in [(0, T0), (1, T0 + 3_600_000), (2, T0 + 7_200_000), (0, T0 - 86_400_000)] {
                let line = format!(r#"{{"terminal_id":"T-{p}{t}","ts":{ts},"region":"r-{p}"}}"#);
                builder.append(&decode(line.as_bytes(), T0 + 86_400_000).expect("valid")).expect("append");
            }
            e.process_sourced(&builder.finish().expect("batch"), &[(&source, 4)]);
            e
        };
        let (a, b) = (engine(0), engine(1));
        assert_eq!(a.counters().late, 1, "the day-old report");
        let view = |engines| engines_view(engines, T0 + 7_200_000);
        let (both, one) = ([("telemetry-0", &a), ("telemetry-1", &b)], [("telemetry-0", &a)]);
        metrics.observe(&view(&both));
        assert_eq!(metrics.dropped.with_label_values(&["late"]).get(), 2);
        assert_eq!(metrics.tracked_terminals.get(), 6);
        for p in ["telemetry-0", "telemetry-1"] {
            assert!(metrics.source_watermark.get_metric_with_label_values(&[p]).is_ok_and(|g| g.get() > 0.0), "{p}");
        }
        assert_eq!(metrics.region_reports.with_label_values(&["r-0"]).get(), 4, "every report, the late one too");
        assert_eq!(metrics.region_reports.with_label_values(&["r-1"]).get(), 4);
        // The second partition goes to another replica: its counts are not
        // taken back, and nothing is counted twice when it returns.
        metrics.observe(&view(&one));
        assert_eq!(metrics.dropped.with_label_values(&["late"]).get(), 2);
        assert_eq!(metrics.tracked_terminals.get(), 3);
        let watermarks = gathered(&registry).get("termwatch_source_watermark_timestamp_seconds").copied();
        assert_eq!(watermarks, Some(1), "the gone partition's series go");
        metrics.observe(&view(&both));
        assert_eq!(metrics.dropped.with_label_values(&["late"]).get(), 2);
        assert_eq!(metrics.region_reports.with_label_values(&["r-1"]).get(), 4);
    }

    #[test]
    fn version_switches_release_health_could_not_track_are_counted() {
        use termwatch_features::MAX_RELEASES;
        use termwatch_telemetry::{BatchBuilder, decode};
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        // A terminal whose firmware string changes at every report, a
        // minute apart: a switch each, three more than are tracked.
        let mut engine = FeatureEngine::new(FeatureConfig::default());
        let n = MAX_RELEASES as i64 + 4;
        let now = T0 + n * 60_000;
        let mut builder = BatchBuilder::with_capacity(n as usize);
        for i in 0..n {
            let ts = T0 + i * 60_000;
            let line = format!(
                r#"{{"terminal_id":"T-1","ts":{ts},"region":"r1","model":"P1","firmware":"9.{i}","interval_s":60}}"#
            );
            builder.append(&decode(line.as_bytes(), now).expect("valid")).expect("append");
        }
        engine.process_batch(&builder.finish().expect("batch"));
        let refused = engine.limit_counts().refused_releases;
        assert_eq!(refused, 3, "the first version is seen, not switched to; the next 10,000 are tracked");
        let engines = [("", &engine)];
        let view = engines_view(&engines, now);
        metrics.observe(&view);
        assert_eq!(metrics.releases_refused.get(), 3);
        metrics.observe(&view);
        assert_eq!(metrics.releases_refused.get(), 3, "counted once");
        // Stage 2 sets its merger's total: never lowered.
        metrics.set_release_versions_refused(1);
        assert_eq!(metrics.releases_refused.get(), 3);
        metrics.set_release_versions_refused(8);
        assert_eq!(metrics.releases_refused.get(), 8);
    }

    #[test]
    fn windows_a_partition_closed_on_its_own_lessons_are_counted() {
        use termwatch_telemetry::{BatchBuilder, decode};
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        // A stage-1 engine with two hours of reports, waiting for lessons
        // that do not come.
        let mut engine = FeatureEngine::new(FeatureConfig::default());
        engine.share_cohorts(true);
        let mut builder = BatchBuilder::with_capacity(24);
        for k in 0..24 {
            let ts = T0 + k * MIN5;
            let line = format!(
                r#"{{"terminal_id":"T-1","ts":{ts},"region":"r1","model":"P1","firmware":"1","supply_v_mean":12.0}}"#
            );
            builder.append(&decode(line.as_bytes(), T0 + 86_400_000).expect("valid")).expect("append");
        }
        engine.process_sourced(&builder.finish().expect("batch"), &[("telemetry-0", 24)]);
        let end = engine.oldest_open_window_end().expect("a window waits for its lessons");
        assert!(!engine.close_alone(end).is_empty(), "due, closed on its own");
        let alone = engine.counters().learnt_alone;
        assert!(alone >= 1, "{alone}");
        let engines = [("telemetry-0", &engine)];
        let view = engines_view(&engines, T0 + 86_400_000);
        metrics.observe(&view);
        metrics.observe(&view);
        assert_eq!(metrics.learnt_alone.get(), alone, "counted once");
    }

    #[test]
    fn stage_two_counts_the_thin_region_windows_its_merger_counted() {
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        metrics.set_unscored_region_windows(5);
        // A standby taking over starts its counts again: the series stays
        // a counter, and goes on once past what it showed.
        metrics.set_unscored_region_windows(2);
        assert_eq!(metrics.thin_region_windows.get(), 5);
        metrics.set_unscored_region_windows(7);
        assert_eq!(metrics.thin_region_windows.get(), 7);
    }

    /// Streams a small simulated fleet with faults through the default model
    /// and the metrics, as the service does; fails when any alert metric
    /// stops being emitted, and checks the site label of terminal alerts.
    #[test]
    fn emits_every_alert_metric_on_a_simulated_fleet() {
        use termwatch_sim::{SimConfig, Simulator};
        use termwatch_telemetry::{BatchBuilder, decode};

        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
        let set = ModelSet::load(&models).expect("models/default (scripts/train-default)");
        // The detectors a resolve threshold holds up, checked on /metrics below.
        let held: Vec<(AlertKind, Scope)> =
            set.detectors.iter().filter(|d| d.resolve_threshold.is_some()).map(|d| (d.kind, d.scope)).collect();
        let mut scorer = Scorer::new(set).expect("scorer").keep_scores(true);
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).expect("register");
        let mut config = SimConfig { seed: 7, terminals: 200, regions: 4, days: 1.0, ..SimConfig::default() };
        config.faults.scale_faults(12.0);
        let mut sim = Simulator::new(config).expect("simulator");
        let mut buf = Vec::new();
        let mut builder = BatchBuilder::with_capacity(4096);
        let mut events_seen = 0;
        let mut feed = |builder: &mut BatchBuilder, scorer: &mut Scorer| {
            let batch = builder.finish().expect("batch");
            let events = scorer.process_batch(&batch);
            events_seen += events.len();
            metrics.update(scorer, &events);
        };
        let mut latest = 0;
        while let Some(meta) = sim.next_record(&mut buf) {
            if let Ok(r) = decode(&buf, meta.arrival_ms) {
                latest = latest.max(r.ts_ms);
                builder.append(&r).expect("append");
            }
            if builder.len() >= 4096 {
                feed(&mut builder, &mut scorer);
            }
        }
        // A terminal whose clock is 23 h 59 m fast on every other report:
        // each of those is held, then dropped as ahead when the terminal's
        // next report goes back. (A clock that is off by the same amount on
        // every report is self-consistent: its reports are kept, see
        // FeatureConfig::max_ahead_ms.)
        for i in 0..40 {
            let now = latest + (i + 1) * 60_000;
            for ts in [now, now + 86_340_000] {
                let line = format!(r#"{{"terminal_id":"T-CLOCK","ts":{ts},"region":"r1"}}"#);
                builder.append(&decode(line.as_bytes(), now).expect("valid")).expect("append");
            }
        }
        feed(&mut builder, &mut scorer);
        assert!(events_seen > 0, "the simulated faults raised no alert");
        assert!(
            metrics.terminal_dropped.with_label_values(&["T-CLOCK", "terminal:T-CLOCK", "r1"]).get() > 0.2,
            "the terminal with the wrong clock is named"
        );

        let families = gathered(&registry);
        let missing: Vec<&str> = METRIC_NAMES.iter().copied().filter(|n| !families.contains_key(*n)).collect();
        assert!(missing.is_empty(), "not emitted: {missing:?}");
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out).expect("encode");
            String::from_utf8(out).expect("utf-8")
        };
        assert!(text.contains(&format!("termwatch_model_info{{version=\"{}\"}} 1", scorer.model_version())), "{text}");
        // The resolve thresholds of the detectors that have one (firmware's
        // and network's), each below its threshold in use; the others have none.
        let threshold = |kind: &str, scope: &str, source: &str| {
            let prefix =
                format!("termwatch_detector_threshold{{kind=\"{kind}\",scope=\"{scope}\",source=\"{source}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(held.len(), 2, "firmware and network are held up by a resolve threshold");
        for (kind, scope) in &held {
            let (kind, scope) = (kind.as_str(), scope.as_str());
            let (resolve, in_use) = (threshold(kind, scope, "resolve"), threshold(kind, scope, "in_use"));
            assert!(resolve.zip(in_use).is_some_and(|(r, t)| r < t), "{kind} {scope}: {resolve:?} {in_use:?}");
        }
        assert_eq!(text.matches("source=\"resolve\"").count(), held.len(), "{text}");
        // Every terminal alert carries the site of its terminal.
        for line in text.lines().filter(|l| l.starts_with("termwatch_alert_entity_score{")) {
            if line.contains("scope=\"terminal\"") {
                assert!(!line.contains("site=\"\""), "terminal alert without a site: {line}");
            }
        }
        assert!(metrics.tracked_terminals.get() > 150);
    }
}
