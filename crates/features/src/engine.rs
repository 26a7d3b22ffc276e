use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, DictionaryArray, Float64Array, UInt32Array, UInt64Array};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use termwatch_telemetry::fields::DEFAULT_INTERVAL_S;
use termwatch_telemetry::{Counter, Label, Measure};

use crate::partial::{
    CohortLessons, CohortStates, Lesson, RegionPartial, RegionTerminal, RegionWindow, SitePartial, VoltageLesson,
};
use crate::release::{self, Peers, ReleasePartial, ReleaseRow, Releases, TerminalRelease, WindowCounts};
use crate::stats::{Ewma, Spread, learn_within, poisson_surprise};

/// How features are computed. Part of a model artifact: a model is only
/// valid with the configuration its features were computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Window length, ms. Default 300000 (5 min): at 300 s reporting a
    /// terminal has one report per window, and two windows fit the
    /// 15-minute detection budget for network degradation.
    pub window_ms: i64,
    /// How long after its end a window waits for late reports, ms. Default
    /// 600000 (10 min). Delay is judged in event time, so lateness costs
    /// wall-clock latency only.
    pub lateness_ms: i64,
    /// Memory of a terminal's baselines, in windows. Default 2016 (7 days).
    pub baseline_windows: f64,
    /// Windows a terminal's own baseline needs before it replaces its
    /// cohort's (model and firmware). Default 24 (2 h).
    pub warmup_windows: f32,
    /// Short memory of the wear counters (hardware aging), in windows. Default 144 (12 h).
    pub aging_short_windows: f64,
    /// Long memory of the wear counters, in windows. Default 4032 (14 days).
    pub aging_long_windows: f64,
    /// Memory of the wear evidence, in active windows (windows in which the
    /// part was used). Default 288: about two trading days, so evidence builds
    /// over days of use and fades within days of a part being swapped.
    pub aging_evidence_windows: f64,
    /// A report more than this far past its terminal's latest is held until
    /// the terminal's next report: kept if that one carries on from it
    /// (the terminal was switched off, or its clock moved for good), dropped
    /// and counted as `ahead` if the clock went back by more than this (one
    /// report from a clock that was wrong), ms. Default 3600000 (1 h).
    pub max_ahead_ms: i64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            window_ms: 300_000,
            lateness_ms: 600_000,
            baseline_windows: 2016.0,
            warmup_windows: 24.0,
            aging_short_windows: 144.0,
            aging_long_windows: 4032.0,
            aging_evidence_windows: 288.0,
            max_ahead_ms: 3_600_000,
        }
    }
}

impl FeatureConfig {
    /// Refuses a configuration the engine cannot run with (a window of no
    /// length divides by zero; a memory of no windows learns nothing),
    /// naming the field. A model artifact is checked with it when loaded.
    pub fn check(&self) -> Result<(), String> {
        const DAY_MS: i64 = 86_400_000;
        let ms = |name: &str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) { Ok(()) } else { Err(format!("{name} must be {lo}..={hi} ms, not {v}")) }
        };
        let windows = |name: &str, v: f64, lo: f64| {
            if v.is_finite() && v >= lo && v <= 1e7 {
                Ok(())
            } else {
                Err(format!("{name} must be a number of windows, {lo}..=1e7, not {v}"))
            }
        };
        ms("window_ms", self.window_ms, 1_000, DAY_MS)?;
        ms("lateness_ms", self.lateness_ms, 0, 7 * DAY_MS)?;
        ms("max_ahead_ms", self.max_ahead_ms, 1, 7 * DAY_MS)?;
        windows("baseline_windows", self.baseline_windows, 1.0)?;
        windows("warmup_windows", f64::from(self.warmup_windows), 0.0)?;
        windows("aging_short_windows", self.aging_short_windows, 1.0)?;
        windows("aging_long_windows", self.aging_long_windows, 1.0)?;
        windows("aging_evidence_windows", self.aging_evidence_windows, 1.0)
    }
}

/// What the engine has counted. Restored from snapshots, so counted with
/// saturating adds: a counter read back near its maximum must not overflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub reports: u64,
    /// Reports for a window that had already closed, or that their own
    /// source's progress had left behind by more than the lateness: dropped.
    pub late: u64,
    /// Reports far ahead of their source and their terminal (a clock that
    /// is wrong): dropped, see [`FeatureConfig::max_ahead_ms`].
    pub ahead: u64,
    pub windows_closed: u64,
    /// Region windows not scored for network degradation because fewer
    /// than [`MIN_REGION_TERMINALS`] terminals with a baseline reported.
    pub thin_region_windows: u64,
    /// Reports at or before their terminal's latest event time when a
    /// snapshot was taken, seen again after a restore: skipped, so that no
    /// report is applied twice.
    pub replayed: u64,
    /// With shared cohorts: windows closed on this engine's own lessons
    /// ([`FeatureEngine::close_alone`]: every engine's were not coming in
    /// time). The rows of the windows after them may differ from one
    /// engine's.
    pub learnt_alone: u64,
}

/// Bounds on what the engine holds, whatever it is fed. Not part of a model
/// and not of a snapshot: the process's configuration sets them (see
/// [`FeatureEngine::set_limits`]). They change features only for a terminal
/// that comes back after being forgotten: it learns again, from its
/// cohort's baseline, as a new terminal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most terminals held. A new terminal beyond it first makes room
    /// by forgetting the longest-silent sixteenth of those with no window
    /// open; if none can go, its reports are refused and counted.
    /// Default 500,000 (about 450 MB at the 896 B per terminal BENCHMARKS.md measures there).
    pub max_terminals: usize,
    /// A terminal whose latest report is this far behind the windows
    /// already closed is forgotten, ms. Default 14 days: longer than a
    /// shop's holiday, shorter than a terminal's life in a drawer.
    pub idle_terminal_ms: i64,
    /// The most regions. Reports from a terminal in a region beyond it are
    /// refused and counted (regions are few; thousands mean invented ones).
    /// Default 10,000.
    pub max_regions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_terminals: 500_000, idle_terminal_ms: 14 * 86_400_000, max_regions: 10_000 }
    }
}

/// What the limits did, since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts {
    /// Terminals forgotten after `idle_terminal_ms` without a report.
    pub evicted_idle: u64,
    /// Terminals forgotten to make room for new ones.
    pub evicted_capacity: u64,
    /// Reports refused because their terminal could not be held.
    pub refused_terminals: u64,
    /// Reports refused because their region could not be held.
    pub refused_regions: u64,
    /// Firmware versions not tracked for release health, beyond
    /// [`crate::MAX_RELEASES`].
    pub refused_releases: u64,
}

/// How many of each entity an engine holds state for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub terminals: usize,
    pub sites: usize,
    pub regions: usize,
    pub cohorts: usize,
    /// Firmware versions tracked for release health.
    pub releases: usize,
}

/// Event time between two sweeps for idle terminals: each costs a pass over
/// every terminal.
const IDLE_SWEEP_EVERY_MS: i64 = 3_600_000;

/// One terminal's voltage features in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TerminalVoltageRow {
    pub terminal: u32,
    pub features: [f64; 6],
    /// The baselines the features were measured against, for alert reasons.
    pub baselines: [f64; 6],
}

/// One site's voltage features in one window (its reporting terminals).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteVoltageRow {
    pub site: u32,
    pub features: [f64; 6],
}

/// One region's network features in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkRow {
    pub region: u32,
    pub features: [f64; 7],
}

/// One terminal's wear features, as of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgingRow {
    pub terminal: u32,
    pub features: [f64; 8],
    pub baselines: [f64; 8],
}

/// Everything one closed window produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowRows {
    /// The window's end, epoch ms: the event time of its rows.
    pub end_ms: i64,
    pub terminal_voltage: Vec<TerminalVoltageRow>,
    pub site_voltage: Vec<SiteVoltageRow>,
    pub network: Vec<NetworkRow>,
    pub aging: Vec<AgingRow>,
    /// Release health, one row per firmware version with terminals in
    /// their first week on it.
    pub firmware: Vec<ReleaseRow>,
    /// `MODEL/FIRMWARE` of the versions with a row in the last day that no
    /// terminal ran at the window's end: their rollback is done.
    pub firmware_retired: Vec<Box<str>>,
    /// With [`FeatureEngine::emit_partials`]: what this engine's terminals
    /// contribute to each site's and region's row, by `site_id` and region,
    /// in name order (regions without a terminal with network baselines
    /// left out), for a stage that merges those of several engines.
    pub site_partials: Vec<(Box<str>, SitePartial)>,
    pub region_partials: Vec<(Box<str>, RegionPartial)>,
    /// With [`FeatureEngine::share_cohorts`]: what the window taught the
    /// cohorts, for the stage that merges every engine's.
    pub cohort_lessons: CohortLessons,
    /// With [`FeatureEngine::emit_partials`]: what release health is
    /// judged on, for the stage that merges every engine's.
    pub release_partial: ReleasePartial,
}

/// Sums over one terminal's reports in one window. Most of a terminal's
/// memory (two to four of these are open): counts of reports are 16 bits
/// (a window stops taking reports at 65,535, which no honest terminal
/// sends in one window), sums other than the supply's are single precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Acc {
    window: i64,
    n: u16,
    v_n: u16,
    v_mean_sum: f64,
    v_std_sum: f64,
    v_min: f64,
    v_max: f64,
    /// Minutes the reports' counters cover (their `interval_s`): counters
    /// become rates per minute, the same whatever the reporting interval.
    minutes: f32,
    sags: u32,
    reboots: u32,
    rtt_log_sum: f32,
    rtt_n: u16,
    loss_sum: f32,
    loss_n: u16,
    reconnects: u32,
    timeouts: u32,
    txn: u32,
    card_reads: u32,
    card_errors: u32,
    print_jobs: u32,
    print_errors: u32,
    health_sum: f32,
    health_n: u16,
    /// Release health's counts, saturating.
    crashes: u16,
    failed: u16,
    /// Reboots less an update's own.
    release_reboots: u16,
    p95_n: u16,
    p95_log_sum: f32,
    /// Memory points gained within one boot, and over how many hours.
    mem_rise: f32,
    mem_hours: f32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Baseline {
    /// ln of the supply's deviation, as a share of nominal.
    v_std: Spread,
    /// The supply's mean, as a share of nominal.
    v_mean: Spread,
    /// ln of the supply's range (highest less lowest), as a share of nominal.
    v_range: Spread,
    /// How far the lowest reading falls below the mean, as a share of nominal.
    v_gap: Spread,
    /// Sags and reboots per minute.
    sags: Ewma,
    reboots: Ewma,
    /// ln of the round-trip time in ms.
    rtt_log: Spread,
    /// Packet loss, percent.
    loss: Spread,
    /// Reconnects per minute.
    reconnects: Ewma,
    /// Timeouts per transaction.
    timeouts: Ewma,
}

impl Baseline {
    /// Learns a quiet window's voltage: the one code path of a terminal's
    /// baseline and of its cohort's.
    fn learn_voltage(&mut self, v: &VoltageLesson, alpha: f64) {
        self.v_std.learn(v.std_log, alpha, LOG_SD_FLOOR);
        self.v_mean.learn(v.v_mean, alpha, V_MEAN_SD_FLOOR);
        self.v_range.learn(v.range_log, alpha, LOG_SD_FLOOR);
        self.v_gap.learn(v.gap, alpha, V_SD_FLOOR);
        self.sags.update(v.sags, alpha);
        self.reboots.update(v.reboots, alpha);
    }
}

/// What one terminal's window teaches its cohort (by index), applied once
/// the window has closed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CohortLesson {
    terminal: u32,
    cohort: u32,
    lesson: Lesson,
}

/// What a cohort's young terminals are shrunk towards, beyond its baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct CohortPrior {
    /// Pooled wear: decayed (errors, attempts) over its terminals' windows
    /// without evidence of wear.
    reader: (f64, f64),
    printer: (f64, f64),
    /// Its terminals' own spread of `v_std`, `v_mean`, `v_range` and `v_gap`
    /// (mean squared deviation from each terminal's own level), pooled: the
    /// cohort's baseline spread is this plus how far their levels lie apart.
    v_within: [Ewma; 4],
}

/// How fast cohorts learn: the one place training, one engine and the
/// merging stage take it from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct CohortRates {
    /// Of baselines (1 / `baseline_windows`).
    pub(crate) alpha: f64,
    /// Of wear (1 / `aging_long_windows`).
    pub(crate) long: f64,
}

impl CohortRates {
    pub(crate) fn of(config: &FeatureConfig) -> CohortRates {
        CohortRates { alpha: 1.0 / config.baseline_windows, long: 1.0 / config.aging_long_windows }
    }
}

/// A cohort's learnt state (`MODEL|FIRMWARE`): what the merging stage
/// sends back to every stage-1 engine instead of every terminal's lessons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortState {
    base: Baseline,
    prior: CohortPrior,
}

impl CohortState {
    pub(crate) fn learn(&mut self, lesson: &Lesson, rates: CohortRates) {
        teach(&mut self.base, &mut self.prior, lesson, rates);
    }

    /// Whether learning could have left this state: every level, spread
    /// and rate finite, none of the spreads, rates or counts below zero. A
    /// state that is not would put NaN in its young terminals' features,
    /// and a NaN scores no alert.
    pub(crate) fn is_sound(&self) -> bool {
        let b = &self.base;
        let p = &self.prior;
        let counts = |(errors, attempts): (f64, f64)| {
            errors.is_finite() && attempts.is_finite() && errors >= 0.0 && attempts >= 0.0
        };
        [b.v_std, b.v_mean, b.v_range, b.v_gap, b.rtt_log, b.loss].iter().all(Spread::is_sound)
            && [b.sags, b.reboots, b.reconnects, b.timeouts]
                .iter()
                .chain(&p.v_within)
                .all(|e| e.is_sound() && e.mean >= 0.0)
            && counts(p.reader)
            && counts(p.printer)
    }

    /// A state no learning could reach, for the tests of what refuses it.
    #[cfg(test)]
    pub(crate) fn unsound() -> CohortState {
        let mut state = CohortState::default();
        state.base.sags.mean = f32::NAN;
        state
    }
}

/// One terminal's lesson learnt by its cohort: the one code path of one
/// engine and of the merging stage.
fn teach(base: &mut Baseline, prior: &mut CohortPrior, lesson: &Lesson, rates: CohortRates) {
    let CohortRates { alpha, long } = rates;
    match *lesson {
        Lesson::Voltage(ref v) => {
            base.learn_voltage(v, alpha);
            let floors = [LOG_SD_FLOOR, V_MEAN_SD_FLOOR, LOG_SD_FLOOR, V_SD_FLOOR];
            for ((within, d), floor) in prior.v_within.iter_mut().zip(v.within).zip(floors) {
                if let Some(d) = d {
                    learn_within(within, d, alpha, floor);
                }
            }
        }
        Lesson::Reader { errors, attempts } => decay_add(&mut prior.reader, errors, attempts, long),
        Lesson::Printer { errors, attempts } => decay_add(&mut prior.printer, errors, attempts, long),
    }
}

/// Decayed sums of wear counters: rates weighted by how much was attempted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Wear {
    reader_short: (f64, f64),
    reader_long: (f64, f64),
    printer_short: (f64, f64),
    printer_long: (f64, f64),
    health_short: Ewma,
    health_long: Ewma,
    /// Leaky CUSUM of the log-likelihood ratio "the error rate has doubled"
    /// against "it is at its baseline", in nats, per part.
    reader_evidence: f32,
    printer_evidence: f32,
    /// The same for "the rate is four times the cohort's" against "twice
    /// it": a part far worse than its peers shows from its first reports,
    /// before its own baseline is warm (or while a part that was already
    /// wearing when tracking began would teach its own baseline).
    reader_vs_cohort: f32,
    printer_vs_cohort: f32,
    /// Evidence (nats) each of the four sums above has taken from the run
    /// of windows with errors the part is in (0 once a window with use had
    /// none): a burst spanning windows is one event and adds at most what
    /// one window can.
    runs: [f32; 4],
    /// The battery's health as it should be now: the highest level seen,
    /// lowered at a normal battery's pace. A battery swap raises it.
    health_peak: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Terminal {
    id: Box<str>,
    /// Latest event time applied.
    max_ts: i64,
    /// A report far ahead of `max_ts`, waiting for the next one to say
    /// whether the clock was wrong.
    held: Option<Box<Report>>,
    /// Reports at or before this were applied before the snapshot this
    /// state was restored from.
    skip_until: i64,
    site: u32,
    region: u32,
    cohort: u32,
    /// Share of its recent reports dropped as late or ahead (an exponential
    /// mean over about `1 / DROP_ALPHA` reports): a clock or a link an
    /// operator should look at.
    dropped: f32,
    /// Sums of the windows still open for this terminal, oldest first:
    /// usually two or three; more while its source runs ahead of others.
    open: Vec<Acc>,
    base: Baseline,
    wear: Wear,
    release: TerminalRelease,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Names {
    index: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    /// Keeps the names `used` marks, in order; returns each old index's new
    /// one (`u32::MAX` for a name dropped).
    fn retain(&mut self, used: &[bool]) -> Vec<u32> {
        let mut remap = vec![u32::MAX; self.names.len()];
        let mut kept = Vec::new();
        for (i, name) in std::mem::take(&mut self.names).into_iter().enumerate() {
            if used.get(i).copied().unwrap_or(false) {
                remap[i] = kept.len() as u32;
                kept.push(name);
            }
        }
        self.index = kept.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
        self.names = kept;
        remap
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.into());
        self.index.insert(s.into(), i);
        i
    }
}

/// One terminal's state with the names of its site, region and cohort
/// (indices are this process's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TerminalState {
    site: Box<str>,
    region: Box<str>,
    cohort: Box<str>,
    state: Terminal,
}

/// The state of a set of terminals (those of one Kafka partition), for a
/// per-partition snapshot; see [`FeatureEngine::export_terminals`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TerminalStates {
    entries: Vec<TerminalState>,
}

impl TerminalStates {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A terminal forgotten as idle, for a cold store: its state, and what its
/// cohort had learnt then (a cohort no held terminal belongs to is
/// forgotten with it, and given back with it if it is still unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Departed {
    state: TerminalState,
    cohort_base: Baseline,
    cohort_prior: CohortPrior,
}

impl Departed {
    pub fn id(&self) -> &str {
        &self.state.state.id
    }
}

/// Event-time progress of one input: a Kafka partition or a history file.
///
/// Its watermark is how far its recent reports have come, robustly: the
/// lower median of the event times of its last 8 reports, in the order they
/// arrived, and never less than before. One terminal whose clock is wrong
/// (even for good) is a minority of what arrives and moves nothing, and a
/// terminal reporting alone at night still moves time on, a few reports
/// behind itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// Event times of the last reports, a ring; `i64::MIN` where empty.
    recent: [i64; RECENT],
    next: u8,
    watermark: i64,
    /// The input has ended for now (a file read to its end, a partition
    /// caught up): it holds no window open until it sends again.
    idle: bool,
}

/// Reports a source's watermark looks back over.
const RECENT: usize = 8;

impl Default for SourceProgress {
    fn default() -> Self {
        SourceProgress { recent: [i64::MIN; RECENT], next: 0, watermark: i64::MIN, idle: false }
    }
}

impl SourceProgress {
    /// Event time up to which this input has delivered; `None` before its
    /// first report.
    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    fn observe(&mut self, ts: i64) {
        self.recent[self.next as usize % RECENT] = ts;
        self.next = ((self.next as usize + 1) % RECENT) as u8;
        let mut seen = self.recent;
        seen.sort_unstable();
        let filled = seen.iter().filter(|t| **t != i64::MIN).count();
        // The lower median of what is there (the ring fills from empty).
        let median = seen[RECENT - filled + (filled - 1) / 2];
        self.watermark = self.watermark.max(median);
    }
}

/// Per-terminal, per-site and per-region state; see the crate docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureEngine {
    config: FeatureConfig,
    terminals: Vec<Terminal>,
    terminal_index: HashMap<Box<str>, u32>,
    sites: Names,
    regions: Names,
    cohorts: Names,
    /// Region of each site (that of its first terminal seen).
    site_regions: Vec<u32>,
    cohort_base: Vec<Baseline>,
    /// Pooled wear rates per cohort: the prior a terminal's own rates are
    /// shrunk towards.
    cohort_prior: Vec<CohortPrior>,
    /// Release health per firmware version.
    releases: Releases,
    /// Terminals with reports in each open window.
    members: BTreeMap<i64, Vec<u32>>,
    /// The latest event time applied, for display: windows close on the
    /// sources' progress, not on this.
    latest: i64,
    /// Every input feeding the engine, by name: windows close once all of
    /// them have passed (see [`FeatureEngine::watermark`]).
    sources: BTreeMap<Box<str>, SourceProgress>,
    /// Per region (by index): reports, and of them dropped as late and as
    /// ahead, since this process started (counters for metrics).
    #[serde(skip)]
    region_counts: Vec<RegionCounts>,
    /// Every window below this index has closed.
    next_to_close: Option<i64>,
    counters: Counters,
    #[serde(skip)]
    limits: Limits,
    #[serde(skip)]
    limit_counts: LimitCounts,
    /// Event time (closed windows' end) at or after which idle terminals are
    /// next looked for.
    #[serde(skip)]
    next_idle_sweep_ms: Option<i64>,
    /// A sweep for room found too little while windows up to this index were
    /// open: the next waits until one more has closed, so a flood of new
    /// terminals costs one pass per window, not one per terminal.
    #[serde(skip)]
    room_swept_at: Option<Option<i64>>,
    /// Whether terminals forgotten as idle are kept, for
    /// [`FeatureEngine::take_departed`] (a cold store takes them).
    #[serde(skip)]
    keep_departed: bool,
    #[serde(skip)]
    departed: Vec<Departed>,
    /// Whether closed windows also carry their site and region partials.
    #[serde(skip)]
    emit_partials: bool,
    /// Whether cohorts learn only what [`FeatureEngine::learn_cohorts`]
    /// gives (every engine's lessons merged), windows handing theirs out.
    #[serde(skip)]
    share_cohorts: bool,
    /// With shared cohorts: every window up to this index has been learnt.
    /// Kept in a snapshot: a stage-1 engine restored at its lessons offset
    /// closes windows as the one that took it would have.
    cohorts_learnt: Option<i64>,
    /// With shared cohorts, [`FeatureEngine::finish`] was called: every
    /// window may close, as learning allows, until the next report.
    #[serde(skip)]
    finishing: bool,
}

/// Reports a region's terminals sent, and of them dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionCounts {
    pub reports: u64,
    pub late: u64,
    pub ahead: u64,
}

/// Weight of each report in a terminal's dropped share: about the last 32.
const DROP_ALPHA: f32 = 1.0 / 32.0;

/// The input of [`FeatureEngine::process_batch`]: one history, in order.
pub const DEFAULT_SOURCE: &str = "input";

/// Sites without a `site_id` are keyed by their terminal: one terminal, one site.
const NO_SITE_PREFIX: &str = "terminal:";
const EPS_V: f64 = 0.002;
/// Least standard deviations a spread is taken to have, whatever it
/// learnt: about what a reading's rounding and a window's few reports leave
/// even on a perfectly steady terminal, so that one cannot be infinitely
/// surprised. In ln units (5 %) for deviations, ranges and round trips.
pub(crate) const LOG_SD_FLOOR: f64 = 0.05;
/// For the supply's lowest reading's gap: 0.2 % of nominal.
const V_SD_FLOOR: f64 = 0.002;
/// For the supply's mean: 0.08 % of nominal, 10 mV on a 12 V supply and 4
/// mV on a 5 V one, just above what rounding a reading to the centivolt
/// leaves (about 3 mV). A floor well above a supply's own spread would
/// measure its mean in fractions of its deviations: at 0.2 % most of a
/// fleet's supplies were floored, their healthy means moved by half a unit
/// where a noisier fleet's moved by one, and the site detector learnt that
/// one unit at two terminals was rare.
const V_MEAN_SD_FLOOR: f64 = 0.0008;
/// For packet loss: 0.1 percentage points.
const LOSS_SD_FLOOR: f64 = 0.1;
/// Least rate assumed of sags, reboots and reconnects: one a day. A
/// terminal that has never sagged is not infinitely surprised by one sag.
const RATE_FLOOR_PER_MINUTE: f64 = 1.0 / 1440.0;
/// Least timeout rate assumed: one transaction in a thousand.
const TIMEOUT_RATE_FLOOR: f64 = 0.001;
/// Features in units of an entity's own spread are capped here, so that the
/// standardisation fitted in training is not made by a few absurd readings.
pub(crate) const Z_CAP: f64 = 50.0;
/// A window this many of its own standard deviations out, or this
/// surprising (nats, about 1 in 400), is not learnt into the baseline it is
/// measured against: a fault is not absorbed into its own reference.
const QUIET_Z: f64 = 3.0;
const QUIET_SURPRISE: f64 = 6.0;
/// A region with fewer terminals than this reporting (with a baseline) in a
/// window is not scored: its share and median are a few terminals' noise.
pub const MIN_REGION_TERMINALS: u32 = 3;
/// Card reads and print jobs a terminal's long wear memory needs before its
/// rates are a baseline.
const MIN_WEAR_ATTEMPTS: f64 = 500.0;
/// Error rates below this are treated as this when testing for a doubling:
/// a spotless part's baseline would make a single error look like wear.
const MIN_BASE_RATE: f64 = 0.001;
/// Above this much evidence (nats) the long wear memory learns at
/// `SLOW_LEARNING` of its pace.
const LEARN_BELOW_NATS: f32 = 3.0;
const SLOW_LEARNING: f64 = 0.125;
/// Weight of the cohort's rate in a terminal's wear baseline, in attempts:
/// a few days of use, so the terminal's own rate dominates within a week
/// and a young baseline is not all noise.
const PRIOR_ATTEMPTS: f64 = 1000.0;
/// Attempts a cohort's pooled rate needs before it is a reference.
const MIN_COHORT_ATTEMPTS: f64 = 5000.0;
/// A healthy battery loses about 4.5 points of health a year; the peak is
/// lowered somewhat faster so that normal wear never builds a deficit.
const NORMAL_HEALTH_LOSS_PER_WINDOW: f64 = 0.05 / 288.0;

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    batch.column_by_name(name).map(|c| c.as_ref())
}

impl FeatureEngine {
    pub fn new(config: FeatureConfig) -> Self {
        FeatureEngine {
            config,
            terminals: Vec::new(),
            terminal_index: HashMap::new(),
            sites: Names::default(),
            regions: Names::default(),
            cohorts: Names::default(),
            site_regions: Vec::new(),
            cohort_base: Vec::new(),
            cohort_prior: Vec::new(),
            releases: Releases::default(),
            members: BTreeMap::new(),
            latest: i64::MIN,
            sources: BTreeMap::new(),
            region_counts: Vec::new(),
            next_to_close: None,
            counters: Counters::default(),
            limits: Limits::default(),
            limit_counts: LimitCounts::default(),
            next_idle_sweep_ms: None,
            room_swept_at: None,
            keep_departed: false,
            departed: Vec::new(),
            emit_partials: false,
            share_cohorts: false,
            cohorts_learnt: None,
            finishing: false,
        }
    }

    /// Closed windows also carry what this engine's terminals contribute to
    /// each site's and region's features ([`WindowRows::site_partials`]):
    /// merged with those of the engines holding a site's or region's other
    /// terminals, they give its row as one engine holding all of them would.
    /// They carry no site or region rows then, nor count thin regions:
    /// those are the merging stage's, of every engine's terminals.
    pub fn emit_partials(&mut self, emit: bool) {
        self.emit_partials = emit;
    }

    /// Cohorts learn only what [`FeatureEngine::learn_cohorts`] gives, and
    /// each closed window hands out what it taught them
    /// ([`WindowRows::cohort_lessons`]): for engines holding a part of the
    /// fleet each, whose lessons a stage merges and gives back to all of
    /// them, so that each judges a young terminal against the cohort one
    /// engine holding every terminal would have learnt. A window then
    /// closes only once every window before it has been learnt.
    pub fn share_cohorts(&mut self, share: bool) {
        self.share_cohorts = share;
    }

    /// With shared cohorts: takes the cohorts' states the merging stage
    /// learnt from every engine's lessons of closed windows (by their end,
    /// epoch ms, oldest first), and that every window ending
    /// at or before `through_ms` has been given (those with no lessons
    /// too). A window this engine has learnt is skipped (the point learnt
    /// is kept in its snapshot).
    /// Returns the windows that can then close. An engine that does not
    /// share its cohorts has learnt its own and ignores the call.
    pub fn learn_cohorts<'a>(
        &mut self,
        through_ms: i64,
        windows: impl IntoIterator<Item = (i64, &'a CohortStates)>,
    ) -> Vec<WindowRows> {
        if !self.share_cohorts {
            return Vec::new();
        }
        let window_ms = self.config.window_ms;
        let index = |end_ms: i64| end_ms.div_euclid(window_ms).saturating_sub(1);
        for (end_ms, lessons) in windows {
            let w = index(end_ms);
            if end_ms > through_ms || self.cohorts_learnt.is_some_and(|learnt| w <= learnt) {
                continue;
            }
            for (cohort, state) in lessons.iter() {
                let c = self.cohorts.intern(cohort) as usize;
                if self.cohort_base.len() <= c {
                    self.cohort_base.resize(c + 1, Baseline::default());
                    self.cohort_prior.resize(c + 1, CohortPrior::default());
                }
                self.cohort_base[c] = state.base;
                self.cohort_prior[c] = state.prior;
            }
            self.releases.learn_lessons(w, &lessons.release);
            self.cohorts_learnt = Some(w);
        }
        self.cohorts_learnt = self.cohorts_learnt.max(Some(index(through_ms)));
        let mut closed = Vec::new();
        self.close_ready(&mut closed);
        closed
    }

    fn learn_cohort(&mut self, c: u32, lesson: &Lesson) {
        let rates = CohortRates::of(&self.config);
        if let (Some(base), Some(prior)) = (self.cohort_base.get_mut(c as usize), self.cohort_prior.get_mut(c as usize))
        {
            teach(base, prior, lesson, rates);
        }
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// Sets the bounds on what is held (a restored engine has the defaults).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.room_swept_at = None;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the limits did since this process started.
    pub fn limit_counts(&self) -> LimitCounts {
        LimitCounts { refused_releases: self.releases.refused, ..self.limit_counts }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn terminal_id(&self, t: u32) -> &str {
        self.terminals.get(t as usize).map(|t| &*t.id).unwrap_or("")
    }

    /// The index of a terminal by its id, if it has reported.
    pub fn terminal_index(&self, id: &str) -> Option<u32> {
        self.terminal_index.get(id).copied()
    }

    /// The `site_id` of a terminal by its id, if it has reported.
    pub fn site_of_terminal(&self, id: &str) -> Option<&str> {
        self.terminal_index(id).map(|t| self.site_id(self.terminal_site(t)))
    }

    pub fn terminal_site(&self, t: u32) -> u32 {
        self.terminals.get(t as usize).map(|t| t.site).unwrap_or(0)
    }

    pub fn terminal_region(&self, t: u32) -> u32 {
        self.terminals.get(t as usize).map(|t| t.region).unwrap_or(0)
    }

    /// The site's `site_id` (or `terminal:<id>` for a terminal without one).
    pub fn site_id(&self, s: u32) -> &str {
        self.sites.names.get(s as usize).map(|s| &**s).unwrap_or("")
    }

    pub fn region_name(&self, r: u32) -> &str {
        self.regions.names.get(r as usize).map(|s| &**s).unwrap_or("")
    }

    /// The region a site is in (that of its first terminal seen).
    pub fn site_region(&self, s: u32) -> u32 {
        self.site_regions.get(s as usize).copied().unwrap_or(0)
    }

    /// Room for `more` terminals. A fleet's vector of terminals is most of
    /// the engine's memory: doubling it leaves up to half of it unused (a
    /// third at 100,000 terminals), so past a few thousand it grows by an
    /// eighth (or by what comes, if more), and never past the limit on
    /// terminals held unless what comes needs it.
    fn reserve_terminals(&mut self, more: usize) {
        let (len, cap) = (self.terminals.len(), self.terminals.capacity());
        let needed = len.saturating_add(more);
        if needed <= cap {
            return;
        }
        if len < 4096 {
            self.terminals.reserve(more);
        } else {
            let room = self.limits.max_terminals.saturating_sub(len);
            self.terminals.reserve_exact((len / 8).min(room).max(more));
        }
    }

    /// Bytes of per-terminal state (state, open windows, id, index entry),
    /// counted from the data structures' sizes and capacities: the figure
    /// that must stay under 1 KiB per tracked terminal.
    pub fn state_bytes_per_terminal(&self) -> f64 {
        let n = self.terminals.len().max(1);
        let fixed = self.terminals.capacity() * std::mem::size_of::<Terminal>();
        let rings: usize = self.terminals.iter().map(|t| t.open.capacity() * std::mem::size_of::<Acc>()).sum();
        let ids: usize = self.terminals.iter().map(|t| t.id.len()).sum::<usize>() * 2; // state and index keys
        // A hashbrown entry: the key (a boxed str), the value, one control byte; 7/8 load.
        let index = self.terminal_index.capacity() * (std::mem::size_of::<(Box<str>, u32)>() + 1) * 8 / 7;
        (fixed + rings + ids + index) as f64 / n as f64
    }

    /// The latest event time applied, epoch ms (None before the first report).
    pub fn latest(&self) -> Option<i64> {
        (self.latest != i64::MIN).then_some(self.latest)
    }

    /// Event time up to which every input has delivered, epoch ms: the
    /// lowest watermark among the inputs that are not idle (the highest of
    /// all when every input is idle). `None` while an input that has not
    /// sent anything yet holds the windows open. A window closes once this
    /// has passed its end by the lateness.
    pub fn watermark(&self) -> Option<i64> {
        let mut lowest: Option<i64> = None;
        let mut highest: Option<i64> = None;
        let mut active = false;
        for p in self.sources.values() {
            let wm = p.watermark();
            highest = highest.max(wm);
            if !p.idle {
                let wm = wm?;
                active = true;
                lowest = Some(lowest.map_or(wm, |l| l.min(wm)));
            }
        }
        if active { lowest } else { highest }
    }

    /// Every window ending at or before this has closed, epoch ms (None
    /// before the first closed): what a stage merging this engine's
    /// partials with other engines' may take as this engine's progress.
    /// With shared cohorts: the end (epoch ms) of the last window whose
    /// lessons have been learnt.
    pub fn cohorts_learnt_through(&self) -> Option<i64> {
        self.cohorts_learnt.map(|w| w.saturating_add(1).saturating_mul(self.config.window_ms))
    }

    pub fn closed_through(&self) -> Option<i64> {
        self.next_to_close.map(|w| w.saturating_mul(self.config.window_ms))
    }

    /// Per region: reports seen since this process started, and of them
    /// dropped as late or ahead.
    pub fn region_counts(&self) -> impl Iterator<Item = (&str, RegionCounts)> {
        self.region_counts.iter().enumerate().map(|(r, c)| (self.region_name(r as u32), *c))
    }

    /// Terminals whose recent reports were dropped (as late or ahead) for at
    /// least `min_share` of them: (terminal index, share).
    pub fn dropping_terminals(&self, min_share: f32) -> Vec<(u32, f32)> {
        self.terminals
            .iter()
            .enumerate()
            .filter(|(_, t)| t.dropped >= min_share)
            .map(|(i, t)| (i as u32, t.dropped))
            .collect()
    }

    /// Each input by name: its watermark, and whether it is idle.
    pub fn sources(&self) -> impl Iterator<Item = (&str, Option<i64>, bool)> {
        self.sources.iter().map(|(n, p)| (&**n, p.watermark(), p.idle))
    }

    /// An input that will feed the engine (a Kafka partition just
    /// assigned): until it sends its first report or ends, no window closes.
    pub fn register_source(&mut self, name: &str) {
        if !self.sources.contains_key(name) {
            self.sources.insert(name.into(), SourceProgress::default());
        }
    }

    /// Restores an input's progress (from its partition's snapshot).
    pub fn restore_source(&mut self, name: &str, progress: SourceProgress) {
        self.sources.insert(name.into(), SourceProgress { idle: false, ..progress });
    }

    /// An input's progress, for its partition's snapshot.
    pub fn source(&self, name: &str) -> Option<SourceProgress> {
        self.sources.get(name).copied()
    }

    /// Forgets an input (its partition went to another replica): it no
    /// longer holds windows open; they close with the next batch.
    pub fn remove_source(&mut self, name: &str) -> Option<SourceProgress> {
        self.sources.remove(name)
    }

    /// An input has ended for now: it holds no window open until it sends
    /// again. Returns the windows that could then close.
    pub fn end_of_source(&mut self, name: &str) -> Vec<WindowRows> {
        let mut closed = Vec::new();
        if let Some(p) = self.sources.get_mut(name) {
            p.idle = true;
            self.close_ready(&mut closed);
        }
        closed
    }

    pub fn tracked_terminals(&self) -> usize {
        self.terminals.len()
    }

    /// Windows with reports that have not closed yet.
    pub fn open_windows(&self) -> usize {
        self.members.len()
    }

    /// The end (epoch ms) of the oldest window with reports that has not
    /// closed yet.
    pub fn oldest_open_window_end(&self) -> Option<i64> {
        let first = *self.members.keys().next()?;
        Some(first.saturating_add(1).saturating_mul(self.config.window_ms))
    }

    /// How many of each entity the engine holds state for.
    pub fn held(&self) -> Held {
        Held {
            terminals: self.terminals.len(),
            sites: self.sites.names.len(),
            regions: self.regions.names.len(),
            cohorts: self.cohorts.names.len(),
            releases: self.releases.len(),
        }
    }

    fn window_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.config.window_ms)
    }

    /// Applies a telemetry batch from one input, [`DEFAULT_SOURCE`];
    /// returns the windows it closed, oldest first.
    pub fn process_batch(&mut self, batch: &RecordBatch) -> Vec<WindowRows> {
        self.process_sourced(batch, &[(DEFAULT_SOURCE, batch.num_rows())])
    }

    /// Applies a telemetry batch whose rows come from several inputs, given
    /// as runs of consecutive rows `(input, rows)` in row order; returns the
    /// windows it closed, oldest first. Rows beyond the runs are ignored.
    pub fn process_sourced(&mut self, batch: &RecordBatch, runs: &[(&str, usize)]) -> Vec<WindowRows> {
        self.process_from_cold(batch, runs, |_| Vec::new())
    }

    /// As [`FeatureEngine::process_sourced`], and while idle terminals are
    /// kept ([`FeatureEngine::keep_departed`]) `cold` is asked for those of
    /// the batch's terminals this engine does not hold, once idle ones have
    /// been forgotten (so one given back is not forgotten again at once):
    /// what it gives back is taken as [`FeatureEngine::welcome_back`] does.
    pub fn process_from_cold(
        &mut self,
        batch: &RecordBatch,
        runs: &[(&str, usize)],
        cold: impl FnOnce(Vec<String>) -> Vec<Departed>,
    ) -> Vec<WindowRows> {
        self.finishing = false;
        // Here, not as windows close: the rows returned last time have been
        // read (their indices resolved) by now, and forgetting renumbers.
        self.forget_idle();
        if self.keep_departed {
            let mut unknown = self.unknown_terminals(batch);
            if !unknown.is_empty() {
                // Forgotten at this very sweep and reporting in this batch:
                // the state just let go is the newest, not the store's.
                let (mut back, kept): (Vec<Departed>, Vec<Departed>) = std::mem::take(&mut self.departed)
                    .into_iter()
                    .partition(|d| unknown.binary_search_by(|u| u.as_str().cmp(d.id())).is_ok());
                self.departed = kept;
                unknown.retain(|u| !back.iter().any(|d| d.id() == u));
                if !unknown.is_empty() {
                    back.extend(cold(unknown));
                }
                if !back.is_empty() {
                    self.welcome_back(back);
                }
            }
        }
        let mut closed = Vec::new();
        let Some(ids) = column(batch, "terminal_id").and_then(|c| c.as_dictionary_opt::<Int32Type>()) else {
            return closed;
        };
        let Some(ts) = column(batch, "ts").and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>()) else {
            return closed;
        };
        let dict = |name: &str| column(batch, name).and_then(|c| c.as_dictionary_opt::<Int32Type>());
        let (regions, sites, models, firmwares) =
            (dict("region"), dict(Label::SiteId.name()), dict(Label::Model.name()), dict(Label::Firmware.name()));
        let f64col = |m: Measure| column(batch, m.name()).and_then(|c| c.as_primitive_opt::<Float64Type>());
        let u32col = |c: Counter| column(batch, c.name()).and_then(|c| c.as_primitive_opt::<UInt32Type>());
        let nominal = column(batch, "supply_v_nominal").and_then(|c| c.as_primitive_opt::<Float64Type>());
        let cols = Cols {
            v_mean: f64col(Measure::SupplyVMean),
            v_std: f64col(Measure::SupplyVStd),
            v_min: f64col(Measure::SupplyVMin),
            v_max: f64col(Measure::SupplyVMax),
            rtt: f64col(Measure::NetRttMs),
            loss: f64col(Measure::NetLossPct),
            health: f64col(Measure::BatteryHealthPct),
            nominal,
            interval: column(batch, "interval_s").and_then(|c| c.as_primitive_opt::<UInt32Type>()),
            sags: u32col(Counter::SupplySags),
            swells: u32col(Counter::SupplySwells),
            reboots: u32col(Counter::Reboots),
            reconnects: u32col(Counter::NetReconnects),
            timeouts: u32col(Counter::TxnTimeouts),
            txn: u32col(Counter::TxnCount),
            card_reads: u32col(Counter::CardReads),
            card_errors: u32col(Counter::CardReadErrors),
            print_jobs: u32col(Counter::PrintJobs),
            print_errors: u32col(Counter::PrintErrors),
            crashes: u32col(Counter::AppCrashes),
            failed: u32col(Counter::TxnFailed),
            p95: f64col(Measure::TxnLatencyP95Ms),
            mem: f64col(Measure::MemUsedPct),
            uptime: column(batch, "uptime_s").and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            model_keys: dictionary_keys(models),
            firmware_keys: dictionary_keys(firmwares),
            models,
            firmwares,
        };
        // Dictionary value -> terminal index, resolved once per batch.
        let mut local: Vec<Option<u32>> = vec![None; ids.values().len()];
        let mut start = 0;
        for &(name, len) in runs {
            let end = (start + len).min(batch.num_rows());
            let mut source = self.source_entry(name);
            for row in start..end {
                if ids.is_null(row) || ts.is_null(row) {
                    continue;
                }
                let key = ids.keys().value(row) as usize;
                let t = match local.get(key).copied().flatten() {
                    Some(t) => t,
                    None => {
                        let id = ids.values().as_string::<i32>().value(key);
                        let (t, reindexed) = self.terminal(
                            id,
                            dict_value(regions, row).unwrap_or(""),
                            dict_value(sites, row),
                            dict_value(models, row).unwrap_or("?"),
                            dict_value(firmwares, row).unwrap_or("?"),
                        );
                        if reindexed {
                            // Terminals were forgotten to make room: indices moved.
                            local.fill(None);
                        }
                        // A refused terminal is not remembered: its next row tries
                        // again. Its report still says how far its input has come:
                        // were a flood of new terminals not to move time, the
                        // windows that hold every terminal in place would never
                        // close, and no room would ever be made.
                        let Some(t) = t else {
                            source.observe(ts.value(row));
                            continue;
                        };
                        if let Some(slot) = local.get_mut(key) {
                            *slot = Some(t);
                        }
                        t
                    }
                };
                self.apply(t, &mut source, ts.value(row), &cols, row);
            }
            self.sources.insert(name.into(), source);
            start = end;
        }
        self.close_ready(&mut closed);
        closed
    }

    /// An input's progress, taken out while its rows are applied (and put
    /// back after): it is no longer idle, since it sends.
    fn source_entry(&mut self, name: &str) -> SourceProgress {
        let progress = self.sources.remove(name).unwrap_or_default();
        SourceProgress { idle: false, ..progress }
    }

    /// Checks what a decoded snapshot cannot promise by its checksum alone:
    /// that every index points at something held, and that every open
    /// window of a terminal will close for it. A state that fails is refused
    /// (an out-of-range index would be read as nothing, and a window left
    /// out of `members` would keep its terminal from ever producing a row
    /// again), with the first inconsistency found.
    pub fn check(&self) -> Result<(), String> {
        for (what, names) in [("site", &self.sites), ("region", &self.regions), ("cohort", &self.cohorts)] {
            if names.index.len() != names.names.len()
                || names.names.iter().enumerate().any(|(i, n)| names.index.get(n) != Some(&(i as u32)))
            {
                return Err(format!("the {what} names and their index disagree"));
            }
        }
        let (sites, regions, cohorts) = (self.sites.names.len(), self.regions.names.len(), self.cohorts.names.len());
        if self.site_regions.len() < sites || self.site_regions.iter().any(|r| *r as usize >= regions.max(1)) {
            return Err("a site's region is not held".into());
        }
        if self.cohort_base.len() < cohorts || self.cohort_prior.len() < cohorts {
            return Err(format!("{cohorts} cohorts but fewer baselines"));
        }
        if self.terminal_index.len() != self.terminals.len() {
            return Err(format!("{} terminals but {} in the index", self.terminals.len(), self.terminal_index.len()));
        }
        let listed: std::collections::HashSet<(i64, u32)> =
            self.members.iter().flat_map(|(w, ts)| ts.iter().map(move |t| (*w, *t))).collect();
        for (i, t) in self.terminals.iter().enumerate() {
            if self.terminal_index.get(&t.id) != Some(&(i as u32)) {
                return Err(format!("terminal {:?} is not where the index says", t.id));
            }
            if t.site as usize >= sites || t.region as usize >= regions || t.cohort as usize >= cohorts {
                return Err(format!("terminal {:?} names a site, region or cohort not held", t.id));
            }
            if t.open.windows(2).any(|w| w[0].window >= w[1].window) {
                return Err(format!("terminal {:?} has its open windows out of order", t.id));
            }
            for acc in &t.open {
                if !listed.contains(&(acc.window, i as u32)) || self.next_to_close.is_some_and(|next| acc.window < next)
                {
                    return Err(format!(
                        "terminal {:?} has window {} open, which will not close for it",
                        t.id, acc.window
                    ));
                }
            }
        }
        if self.members.values().flatten().any(|t| *t as usize >= self.terminals.len()) {
            return Err("an open window lists a terminal not held".into());
        }
        Ok(())
    }

    /// Marks every terminal's reports up to its latest applied event time as
    /// applied: call after restoring a snapshot, so that records replayed
    /// from before it are skipped and counted rather than applied twice.
    /// The inputs are forgotten: whoever feeds the engine now registers its
    /// own (a partition restores its progress with its terminals).
    pub fn mark_restored(&mut self) {
        for t in &mut self.terminals {
            t.skip_until = t.max_ts;
        }
        self.sources.clear();
    }

    /// Copies the state of the terminals `keep` selects (their open windows
    /// included), in terminal order, for a per-partition snapshot.
    pub fn export_terminals(&self, mut keep: impl FnMut(&str) -> bool) -> TerminalStates {
        self.export_where(|t| keep(&t.id))
    }

    fn export_where(&self, mut keep: impl FnMut(&Terminal) -> bool) -> TerminalStates {
        let name = |n: &Names, i: u32| n.names.get(i as usize).cloned().unwrap_or_default();
        let entries = self
            .terminals
            .iter()
            .filter(|t| keep(t))
            .map(|t| TerminalState {
                site: name(&self.sites, t.site),
                region: name(&self.regions, t.region),
                cohort: name(&self.cohorts, t.cohort),
                state: t.clone(),
            })
            .collect();
        TerminalStates { entries }
    }

    /// Keeps the state of terminals forgotten as idle from now on, until
    /// [`FeatureEngine::take_departed`] takes it: for a cold store, which
    /// gives it back ([`FeatureEngine::process_from_cold`]) when the terminal
    /// reports again, so it comes back with its baselines instead of as new.
    pub fn keep_departed(&mut self, keep: bool) {
        self.keep_departed = keep;
        if !keep {
            self.departed = Vec::new();
        }
    }

    /// The terminals forgotten as idle since the last call.
    pub fn take_departed(&mut self) -> Vec<Departed> {
        std::mem::take(&mut self.departed)
    }

    /// Takes back terminals forgotten as idle (as a per-partition snapshot's
    /// are taken, see [`FeatureEngine::import_terminals`]), with what their
    /// cohort had learnt when no terminal held here belongs to it any more.
    /// The limits hold as for new terminals: one that finds no room, or
    /// whose region is past the cap, is not taken back (its report then
    /// goes the way of a new terminal's). Returns how many were taken.
    pub fn welcome_back(&mut self, back: Vec<Departed>) -> usize {
        let mut taken = Vec::with_capacity(back.len());
        for mut d in back {
            if self.terminals.len() + taken.len() >= self.limits.max_terminals {
                self.make_room();
                if self.terminals.len() + taken.len() >= self.limits.max_terminals {
                    break;
                }
            }
            if !self.regions.index.contains_key(&d.state.region) {
                if self.regions.names.len() >= self.limits.max_regions {
                    continue;
                }
                self.regions.intern(&d.state.region);
            }
            // Every report up to its latest was applied to this state: as
            // after a restore, one at or before it is not applied again (a
            // store written after the snapshot this process started from
            // holds such states).
            let t = &mut d.state.state;
            t.skip_until = t.skip_until.max(t.max_ts);
            taken.push(d);
        }
        // After any room was made (which forgets cohorts no one holds).
        let mut entries = Vec::with_capacity(taken.len());
        for d in taken {
            if !self.cohorts.index.contains_key(&d.state.cohort) {
                let c = self.cohorts.intern(&d.state.cohort) as usize;
                if self.cohort_base.len() <= c {
                    self.cohort_base.resize(c + 1, Baseline::default());
                    self.cohort_prior.resize(c + 1, CohortPrior::default());
                }
                self.cohort_base[c] = d.cohort_base;
                self.cohort_prior[c] = d.cohort_prior;
            }
            entries.push(d.state);
        }
        let n = entries.len();
        self.import_terminals(TerminalStates { entries });
        n
    }

    /// The terminal ids of `batch` this engine holds no state for, once
    /// each: those a cold store may know.
    pub fn unknown_terminals(&self, batch: &RecordBatch) -> Vec<String> {
        let Some(ids) = column(batch, "terminal_id").and_then(|c| c.as_dictionary_opt::<Int32Type>()) else {
            return Vec::new();
        };
        let Some(values) = ids.values().as_string_opt::<i32>() else { return Vec::new() };
        let mut unknown: Vec<String> =
            values.iter().flatten().filter(|id| !self.terminal_index.contains_key(*id)).map(str::to_owned).collect();
        unknown.sort_unstable();
        unknown.dedup();
        unknown
    }

    /// Forgets the terminals `remove` selects (their partition went to
    /// another replica), open windows included. Site, region and cohort
    /// state stays: it is shared. Returns how many were removed.
    pub fn remove_terminals(&mut self, mut remove: impl FnMut(&str) -> bool) -> usize {
        self.remove_where(|_, t| remove(&t.id))
    }

    /// Forgets the terminals `remove` selects by index and state; the
    /// others are renumbered in order.
    fn remove_where(&mut self, mut remove: impl FnMut(usize, &Terminal) -> bool) -> usize {
        let before = self.terminals.len();
        let mut remap: Vec<Option<u32>> = Vec::with_capacity(before);
        let mut kept = Vec::with_capacity(before);
        for (i, t) in std::mem::take(&mut self.terminals).into_iter().enumerate() {
            if remove(i, &t) {
                remap.push(None);
            } else {
                remap.push(Some(kept.len() as u32));
                kept.push(t);
            }
        }
        let removed = before - kept.len();
        self.terminals = kept;
        if removed == 0 {
            return 0;
        }
        self.terminal_index = self.terminals.iter().enumerate().map(|(i, t)| (t.id.clone(), i as u32)).collect();
        for members in self.members.values_mut() {
            members.retain_mut(|t| match remap.get(*t as usize).copied().flatten() {
                Some(new) => {
                    *t = new;
                    true
                }
                None => false,
            });
        }
        self.members.retain(|_, m| !m.is_empty());
        removed
    }

    /// Adds terminals from a per-partition snapshot, replacing any tracked
    /// under the same id. Their open windows rejoin the windows still open
    /// here; a window this engine has closed meanwhile is gone for them.
    /// Returns the ids added.
    pub fn import_terminals(&mut self, states: TerminalStates) -> Vec<Box<str>> {
        // Replaced if held already; looked up first, since removing walks
        // and rebuilds every terminal held, and the cold store gives
        // terminals back a few at a time.
        if states.entries.iter().any(|e| self.terminal_index.contains_key(&*e.state.id)) {
            let incoming: std::collections::HashSet<&str> = states.entries.iter().map(|e| &*e.state.id).collect();
            self.remove_terminals(|id| incoming.contains(id));
        }
        // Room for all that come at once: a restore brings every terminal,
        // the cold store a few at a time.
        self.reserve_terminals(states.entries.len());
        let mut ids = Vec::with_capacity(states.entries.len());
        for TerminalState { site, region, cohort, mut state } in states.entries {
            state.region = self.regions.intern(&region);
            state.site = self.sites.intern(&site);
            if self.site_regions.len() <= state.site as usize {
                self.site_regions.resize(state.site as usize + 1, state.region);
            }
            state.cohort = self.cohorts.intern(&cohort);
            if self.cohort_base.len() <= state.cohort as usize {
                self.cohort_base.resize(state.cohort as usize + 1, Baseline::default());
                self.cohort_prior.resize(state.cohort as usize + 1, CohortPrior::default());
            }
            let t = self.terminals.len() as u32;
            let next = self.next_to_close;
            state.open.retain(|acc| acc.n > 0 && next.is_none_or(|next| acc.window >= next));
            state.open.sort_by_key(|acc| acc.window);
            state.open.dedup_by_key(|acc| acc.window);
            for acc in &state.open {
                self.members.entry(acc.window).or_default().push(t);
            }
            ids.push(state.id.clone());
            self.terminal_index.insert(state.id.clone(), t);
            self.terminals.push(state);
        }
        ids
    }

    /// A copy with only the terminals `keep` selects: the shared part of the
    /// state (sites, regions, cohorts, windows, counters) plus those.
    pub fn clone_with_terminals(&self, keep: impl FnMut(&str) -> bool) -> FeatureEngine {
        let mut e = FeatureEngine {
            config: self.config.clone(),
            terminals: Vec::new(),
            terminal_index: HashMap::new(),
            sites: self.sites.clone(),
            regions: self.regions.clone(),
            cohorts: self.cohorts.clone(),
            site_regions: self.site_regions.clone(),
            cohort_base: self.cohort_base.clone(),
            cohort_prior: self.cohort_prior.clone(),
            releases: self.releases.clone(),
            members: BTreeMap::new(),
            latest: self.latest,
            sources: self.sources.clone(),
            region_counts: Vec::new(),
            next_to_close: self.next_to_close,
            counters: self.counters,
            limits: self.limits,
            limit_counts: LimitCounts::default(),
            next_idle_sweep_ms: None,
            room_swept_at: None,
            keep_departed: false,
            departed: Vec::new(),
            emit_partials: self.emit_partials,
            share_cohorts: self.share_cohorts,
            cohorts_learnt: self.cohorts_learnt,
            finishing: false,
        };
        e.import_terminals(self.export_terminals(keep));
        e
    }

    /// Closes every open window (end of a history), returning their rows.
    /// Reports after this for a window it closed are late. With shared
    /// cohorts, only the windows whose cohorts have learnt every window
    /// before them close now; the others as [`FeatureEngine::learn_cohorts`]
    /// lets them, until the next report.
    pub fn finish(&mut self) -> Vec<WindowRows> {
        let mut out = Vec::new();
        if self.share_cohorts {
            self.finishing = true;
            self.close_ready(&mut out);
            return out;
        }
        while let Some((&w, _)) = self.members.iter().next() {
            out.push(self.close(w));
            self.next_to_close = Some(w + 1);
        }
        out
    }

    /// The index of a terminal, added if new and the limits allow; and
    /// whether terminals were forgotten to make room (indices moved).
    fn terminal(
        &mut self,
        id: &str,
        region: &str,
        site: Option<&str>,
        model: &str,
        firmware: &str,
    ) -> (Option<u32>, bool) {
        if let Some(&t) = self.terminal_index.get(id) {
            return (Some(t), false);
        }
        if !self.regions.index.contains_key(region) && self.regions.names.len() >= self.limits.max_regions {
            self.limit_counts.refused_regions += 1;
            return (None, false);
        }
        let mut reindexed = false;
        if self.terminals.len() >= self.limits.max_terminals {
            reindexed = self.make_room();
            if self.terminals.len() >= self.limits.max_terminals {
                self.limit_counts.refused_terminals += 1;
                return (None, reindexed);
            }
        }
        let region = self.regions.intern(region);
        let site = match site {
            Some(s) => self.sites.intern(s),
            None => self.sites.intern(&format!("{NO_SITE_PREFIX}{id}")),
        };
        if self.site_regions.len() <= site as usize {
            self.site_regions.resize(site as usize + 1, region);
        }
        let cohort = self.cohorts.intern(&format!("{model}|{firmware}"));
        if self.cohort_base.len() <= cohort as usize {
            self.cohort_base.resize(cohort as usize + 1, Baseline::default());
            self.cohort_prior.resize(cohort as usize + 1, CohortPrior::default());
        }
        let t = self.terminals.len() as u32;
        self.reserve_terminals(1);
        self.terminals.push(Terminal {
            id: id.into(),
            max_ts: i64::MIN,
            held: None,
            skip_until: i64::MIN,
            site,
            region,
            cohort,
            dropped: 0.0,
            open: Vec::new(),
            base: Baseline::default(),
            wear: Wear::default(),
            release: TerminalRelease::default(),
        });
        self.terminal_index.insert(id.into(), t);
        (Some(t), reindexed)
    }

    /// Forgets terminals whose latest report is `idle_terminal_ms` behind the
    /// windows closed, at most once per `IDLE_SWEEP_EVERY_MS` of event time.
    fn forget_idle(&mut self) {
        let Some(next) = self.next_to_close else { return };
        let now = next.saturating_mul(self.config.window_ms);
        if self.next_idle_sweep_ms.is_some_and(|at| now < at) {
            return;
        }
        self.next_idle_sweep_ms = Some(now.saturating_add(IDLE_SWEEP_EVERY_MS));
        let cutoff = now.saturating_sub(self.limits.idle_terminal_ms);
        let idle = |t: &Terminal| t.max_ts < cutoff && t.open.is_empty() && t.held.is_none();
        if self.keep_departed {
            for state in self.export_where(idle).entries {
                let c = self.cohorts.index.get(&state.cohort).map(|c| *c as usize);
                self.departed.push(Departed {
                    cohort_base: c.and_then(|c| self.cohort_base.get(c)).copied().unwrap_or_default(),
                    cohort_prior: c.and_then(|c| self.cohort_prior.get(c)).copied().unwrap_or_default(),
                    state,
                });
            }
        }
        let n = self.remove_where(|_, t| idle(t));
        if n > 0 {
            self.limit_counts.evicted_idle += n as u64;
            self.forget_unused_names();
        }
    }

    /// At `max_terminals`: forgets the longest-silent sixteenth of the
    /// terminals with no window open and no report held. Returns whether any
    /// was forgotten. When it cannot free that many, it is not tried again
    /// until another window has closed.
    fn make_room(&mut self) -> bool {
        if self.room_swept_at == Some(self.next_to_close) {
            return false;
        }
        let want = (self.limits.max_terminals / 16).max(1);
        let mut quiet: Vec<(i64, usize)> = self
            .terminals
            .iter()
            .enumerate()
            .filter(|(_, t)| t.open.is_empty() && t.held.is_none())
            .map(|(i, t)| (t.max_ts, i))
            .collect();
        if quiet.len() > want {
            quiet.select_nth_unstable(want);
            quiet.truncate(want);
        }
        self.room_swept_at = (quiet.len() < want).then_some(self.next_to_close);
        if quiet.is_empty() {
            return false;
        }
        let mut forget = vec![false; self.terminals.len()];
        for &(_, i) in &quiet {
            forget[i] = true;
        }
        let n = self.remove_where(|i, _| forget[i]);
        self.limit_counts.evicted_capacity += n as u64;
        self.forget_unused_names();
        n > 0
    }

    /// Drops sites and cohorts no terminal refers to any more (a site of a
    /// terminal without `site_id` is its own, so one-off terminals would
    /// otherwise leave one each). Regions stay: they are capped, and their
    /// counters outlive their terminals.
    fn forget_unused_names(&mut self) {
        let mut sites = vec![false; self.sites.names.len()];
        let mut cohorts = vec![false; self.cohorts.names.len()];
        for t in &self.terminals {
            if let Some(u) = sites.get_mut(t.site as usize) {
                *u = true;
            }
            if let Some(u) = cohorts.get_mut(t.cohort as usize) {
                *u = true;
            }
        }
        if self.share_cohorts && cohorts.len() <= self.limits.max_terminals {
            // Shared cohorts learn from every engine's terminals: one with
            // none of its own here still learns, as it would in one engine
            // holding them all, for a terminal of it that comes here. Held
            // while there are no more of them than terminals allowed.
            cohorts.fill(true);
        }
        let site_map = self.sites.retain(&sites);
        let cohort_map = self.cohorts.retain(&cohorts);
        self.site_regions = keep_used(std::mem::take(&mut self.site_regions), &sites);
        self.cohort_base = keep_used(std::mem::take(&mut self.cohort_base), &cohorts);
        self.cohort_prior = keep_used(std::mem::take(&mut self.cohort_prior), &cohorts);
        for t in &mut self.terminals {
            t.site = site_map.get(t.site as usize).copied().unwrap_or(t.site);
            t.cohort = cohort_map.get(t.cohort as usize).copied().unwrap_or(t.cohort);
        }
    }

    /// Applies one report from `source`. Whether it is late is judged
    /// against its own source's progress, whether it is ahead against its own
    /// terminal's reports, never against other inputs: so the order in which
    /// inputs interleave (which partition a consumer happens to read first)
    /// changes nothing.
    fn apply(&mut self, t: u32, source: &mut SourceProgress, ts: i64, c: &Cols<'_>, row: usize) {
        self.counters.reports = self.counters.reports.saturating_add(1);
        let max_ahead_ms = self.config.max_ahead_ms;
        let Some(term) = self.terminals.get_mut(t as usize) else { return };
        let region = term.region as usize;
        if self.region_counts.len() <= region {
            self.region_counts.resize(region + 1, RegionCounts::default());
        }
        self.region_counts[region].reports += 1;
        if ts <= term.skip_until {
            self.counters.replayed = self.counters.replayed.saturating_add(1);
            return;
        }
        let report = Report::read(c, row, ts);
        // A version a tracked terminal switches to (not the one it was
        // first seen on: that has nothing before it to be judged against).
        let name = || {
            let m = dict_value(c.models, row).unwrap_or("?");
            let f = dict_value(c.firmwares, row).unwrap_or("?");
            format!("{m}/{f}")
        };
        let current = term.release.now.current;
        if report.release != 0 && current != 0 && report.release != current {
            self.releases.switched(report.release, name, ts.div_euclid(self.config.window_ms));
        } else if report.release != 0 && current == 0 {
            // The version it was first seen on: named by its alert, should
            // its terminals take another.
            self.releases.remember(report.release, name);
        }
        // A report held for being far ahead is settled by the terminal's
        // next one: kept if that one carries on from it (or arrived a little
        // out of order), dropped if the clock went back by more than
        // max_ahead (it was wrong for one report).
        if let Some(held) = term.held.take() {
            if ts >= held.ts.saturating_sub(max_ahead_ms) {
                self.admit(t, source, &held);
            } else {
                self.drop_report(t, Drop::Ahead);
            }
        }
        let Some(term) = self.terminals.get_mut(t as usize) else { return };
        if term.max_ts != i64::MIN && ts > term.max_ts.saturating_add(max_ahead_ms) {
            term.held = Some(Box::new(report));
            return;
        }
        self.admit(t, source, &report);
    }

    /// Counts a report dropped, in its terminal's share and its region's.
    fn drop_report(&mut self, t: u32, why: Drop) {
        let Some(term) = self.terminals.get_mut(t as usize) else { return };
        term.dropped += DROP_ALPHA * (1.0 - term.dropped);
        let counts = self.region_counts.get_mut(term.region as usize);
        match why {
            Drop::Late => {
                self.counters.late = self.counters.late.saturating_add(1);
                if let Some(c) = counts {
                    c.late += 1;
                }
            }
            Drop::Ahead => {
                self.counters.ahead = self.counters.ahead.saturating_add(1);
                if let Some(c) = counts {
                    c.ahead += 1;
                }
            }
        }
    }

    /// Adds a report to its terminal's window, unless its own source has
    /// left that window behind (or it has closed): then it is late.
    fn admit(&mut self, t: u32, source: &mut SourceProgress, r: &Report) {
        let (window_ms, lateness_ms) = (self.config.window_ms, self.config.lateness_ms);
        let w = self.window_of(r.ts);
        let late = source
            .watermark()
            .is_some_and(|p| w.saturating_add(1).saturating_mul(window_ms).saturating_add(lateness_ms) <= p)
            || self.next_to_close.is_some_and(|next| w < next);
        if late {
            self.drop_report(t, Drop::Late);
            return;
        }
        let Some(term) = self.terminals.get_mut(t as usize) else { return };
        term.dropped -= DROP_ALPHA * term.dropped;
        let (mut mem_rise, mut mem_hours) = (0.0, 0.0);
        let rel = &mut term.release;
        if r.ts > term.max_ts {
            // The newest report says which version the terminal runs now.
            if r.release != rel.now.current {
                let rollback = r.release == rel.now.before;
                let tracked = rel.now.current != 0 && r.release != 0 && !rollback && self.releases.knows(r.release);
                rel.switch(r.ts, r.release, if tracked { r.ts } else { i64::MIN });
                rel.model = r.model;
                rel.last_mem = release::NO_MEM;
            }
            if let (Some(mem), Some(up)) = (r.mem, r.uptime_s) {
                if let Some((rise, hours)) = release::climb(
                    (rel.last_mem, rel.last_uptime_s, term.max_ts),
                    (mem, up, r.ts),
                    r.reboots,
                    r.crashes,
                ) {
                    (mem_rise, mem_hours) = (rise, hours);
                }
                rel.last_mem = mem as f32;
                rel.last_uptime_s = up.min(u64::from(u32::MAX)) as u32;
            } else {
                rel.last_mem = release::NO_MEM;
            }
        }
        let since = rel.now.since;
        let update_reboot = since != i64::MIN && r.ts.saturating_sub(since) < release::UPDATE_GRACE_MS;
        term.max_ts = term.max_ts.max(r.ts);
        source.observe(r.ts);
        self.latest = self.latest.max(r.ts);
        let at = term.open.iter().rposition(|a| a.window <= w);
        let acc = match at {
            Some(i) if term.open[i].window == w => &mut term.open[i],
            _ => {
                let i = at.map_or(0, |i| i + 1);
                let fresh = Acc { window: w, v_min: f64::INFINITY, v_max: f64::NEG_INFINITY, ..Acc::default() };
                if term.open.len() == term.open.capacity() {
                    // One more, not double: a terminal usually has two or
                    // three windows open, and this is most of its memory.
                    term.open.reserve_exact(1);
                }
                term.open.insert(i, fresh);
                self.members.entry(w).or_default().push(t);
                &mut term.open[i]
            }
        };
        acc.add(r);
        if !update_reboot {
            acc.release_reboots = acc.release_reboots.saturating_add(u16::try_from(r.reboots).unwrap_or(u16::MAX));
        }
        acc.mem_rise += mem_rise as f32;
        acc.mem_hours += mem_hours as f32;
    }

    /// Closes every window the inputs' common watermark has left behind by
    /// the lateness: window w closes once (w + 1) * window_ms + lateness_ms
    /// <= watermark. Closing once per batch rather than per report closes
    /// the same windows with the same reports: a report that per-report
    /// closing would have found closed is left behind by its own source.
    fn close_ready(&mut self, closed: &mut Vec<WindowRows>) {
        let by_time = self
            .watermark()
            .map(|watermark| (watermark.saturating_sub(self.config.lateness_ms)).div_euclid(self.config.window_ms));
        // At the end of a history every window held may close; with none
        // held and nothing read, nothing moves (a limit taken from no time
        // at all would leave every later report late).
        let held = self.finishing.then(|| self.members.keys().next_back().map(|last| last.saturating_add(1))).flatten();
        let Some(mut limit) = by_time.max(held) else { return };
        if self.share_cohorts {
            // A window closes once its cohorts have learnt every window
            // before it. Before the first lessons this engine cannot know
            // whether another has windows before its own: it closes none,
            // its progress passing the windows it has no terminal in.
            let gate = match self.cohorts_learnt {
                Some(learnt) => learnt.saturating_add(2),
                None => self.members.keys().next().copied().unwrap_or(limit),
            };
            limit = limit.min(gate);
        }
        while let Some((&first, _)) = self.members.iter().next() {
            if first >= limit {
                break;
            }
            closed.push(self.close(first));
        }
        if self.next_to_close.is_none_or(|next| next < limit) {
            self.next_to_close = Some(limit);
        }
    }

    /// With shared cohorts, when every engine's lessons will not come in
    /// time (a partition or the merging stage stuck, or the windows held
    /// open at their bound): closes the windows held that end at or before
    /// `through_ms` and are due, each on this engine's own lessons,
    /// counted in [`Counters::learnt_alone`]; the merged lessons of those
    /// windows are then skipped. Returns them, and any window that lets
    /// close.
    pub fn close_alone(&mut self, through_ms: i64) -> Vec<WindowRows> {
        let mut closed = Vec::new();
        if !self.share_cohorts {
            return closed;
        }
        let Some(due) = self.watermark().map(|w| w.saturating_sub(self.config.lateness_ms)) else {
            return closed;
        };
        let last = through_ms.min(due).div_euclid(self.config.window_ms);
        while let Some((&first, _)) = self.members.iter().next() {
            if first >= last {
                break;
            }
            let rows = self.close(first);
            self.learn_alone(first, &rows.cohort_lessons);
            closed.push(rows);
        }
        self.close_ready(&mut closed);
        closed
    }

    /// Learns a window's own lessons without waiting for every engine's.
    fn learn_alone(&mut self, w: i64, lessons: &CohortLessons) {
        for (cohort, lesson) in lessons.iter() {
            if let Some(&c) = self.cohorts.index.get(cohort) {
                self.learn_cohort(c, lesson);
            }
        }
        self.releases.learn_lessons(w, &lessons.release);
        self.cohorts_learnt = self.cohorts_learnt.max(Some(w));
        self.counters.learnt_alone = self.counters.learnt_alone.saturating_add(1);
    }

    fn close(&mut self, w: i64) -> WindowRows {
        self.counters.windows_closed = self.counters.windows_closed.saturating_add(1);
        let mut members = self.members.remove(&w).unwrap_or_default();
        // In the order of terminal ids, not of arrival: cohort baselines
        // learn, and sums over a site or a region add up, in the same order
        // whichever input's records came first and whether or not the
        // terminals were restored from snapshots.
        let terminals = &self.terminals;
        let id = |t: &u32| terminals.get(*t as usize).map(|t| &*t.id);
        members.sort_unstable_by(|a, b| id(a).cmp(&id(b)));
        // Saturating: a window index comes from a snapshot too, and a
        // corrupt one must not overflow (found by fuzz/fuzz_targets/snapshot.rs).
        let end_ms = w.saturating_add(1).saturating_mul(self.config.window_ms);
        let mut rows = WindowRows { end_ms, ..WindowRows::default() };
        let cfg = self.config.clone();
        let alpha = 1.0 / cfg.baseline_windows;
        let mut site_acc: HashMap<u32, SitePartial> = HashMap::new();
        let mut region_acc: HashMap<u32, RegionPartial> = HashMap::new();
        let mut peers: HashMap<u32, Peers> = HashMap::new();
        let mut probation: Vec<(u32, u32, WindowCounts, release::Judged)> = Vec::new();
        // What the window teaches every engine's release health: the
        // switches its reports brought, and the pools.
        let mut taught = self.releases.take_switched();
        let mut lessons: Vec<CohortLesson> = Vec::new();
        for t in members {
            let Some(term) = self.terminals.get_mut(t as usize) else { continue };
            // Every earlier window has closed, so this one is the oldest open.
            if term.open.first().is_none_or(|a| a.window != w) {
                continue;
            }
            let acc = term.open.remove(0);
            if term.open.capacity() > 8 && term.open.len() * 4 < term.open.capacity() {
                // A backlog made it long; it is short again.
                term.open.shrink_to(term.open.len() * 2);
            }
            if acc.n == 0 {
                continue;
            }
            // The cohort as the windows before this one left it: what this
            // window teaches it is applied once the window has closed, so a
            // terminal is not judged by what a terminal with a smaller id
            // taught its cohort in the same window, and a stage that owns
            // cohorts can merge a window's lessons from every replica.
            let Some(cohort) = self.cohort_base.get(term.cohort as usize) else { continue };
            let minutes = f64::from(acc.minutes).max(1.0 / 60.0);
            let site = site_acc.entry(term.site).or_default();
            let region = region_acc.entry(term.region).or_default();

            // Voltage, against the terminal's own level and spread or, while
            // young, what its own first windows and its cohort's say together.
            if acc.v_n > 0 {
                let vn = f64::from(acc.v_n);
                let (v_mean, v_std, v_range) = (acc.v_mean_sum / vn, acc.v_std_sum / vn, acc.v_max - acc.v_min);
                let (std_log, range_log, gap) = ((v_std + EPS_V).ln(), (v_range + EPS_V).ln(), v_mean - acc.v_min);
                let young = term.base.v_std.level.weight < cfg.warmup_windows;
                let warm = cfg.warmup_windows;
                let within = self.cohort_prior.get(term.cohort as usize).map_or([Ewma::default(); 4], |c| c.v_within);
                let b = &term.base;
                let expected = |i: usize, own: &Spread, pooled: &Spread, floor: f64| {
                    if young { own.expected_young(pooled, &within[i], floor, warm) } else { own.expected(floor, warm) }
                };
                let observed = [
                    (std_log, expected(0, &b.v_std, &cohort.v_std, LOG_SD_FLOOR)),
                    (v_mean, expected(1, &b.v_mean, &cohort.v_mean, V_MEAN_SD_FLOOR)),
                    (range_log, expected(2, &b.v_range, &cohort.v_range, LOG_SD_FLOOR)),
                    (gap, expected(3, &b.v_gap, &cohort.v_gap, V_SD_FLOOR)),
                ];
                let [z_std, z_mean, z_range, z_gap] =
                    observed.map(|(x, e)| e.map_or(0.0, |(level, sd)| ((x - level) / sd).clamp(-Z_CAP, Z_CAP)));
                let [l_std, l_mean, l_range, l_gap] = observed.map(|(_, e)| e.map_or(0.0, |(level, _)| level));
                let rate = |own: &Ewma, pooled: &Ewma| own.or(pooled.or(0.0, warm), warm).max(RATE_FLOOR_PER_MINUTE);
                let (sag_rate, reboot_rate) =
                    (rate(&term.base.sags, &cohort.sags), rate(&term.base.reboots, &cohort.reboots));
                let features = [
                    z_std,
                    -z_mean,
                    z_range,
                    poisson_surprise(acc.sags, sag_rate * minutes),
                    poisson_surprise(acc.reboots, reboot_rate * minutes),
                    z_gap,
                ];
                let baselines = [l_std.exp() - EPS_V, l_mean, l_range.exp() - EPS_V, sag_rate, reboot_rate, l_gap];
                rows.terminal_voltage.push(TerminalVoltageRow { terminal: t, features, baselines });
                // Learn only from quiet windows, so a fault is not absorbed
                // into the baseline it is measured against.
                let unstable = features[0] > QUIET_Z
                    || features[1] > QUIET_Z
                    || features[2] > QUIET_Z
                    || features[5] > QUIET_Z
                    || features[3] > QUIET_SURPRISE
                    || features[4] > QUIET_SURPRISE;
                if !unstable {
                    let b = &term.base;
                    let lesson = VoltageLesson {
                        std_log,
                        v_mean,
                        range_log,
                        gap,
                        sags: f64::from(acc.sags) / minutes,
                        reboots: f64::from(acc.reboots) / minutes,
                        within: [
                            b.v_std.within_deviation(std_log),
                            b.v_mean.within_deviation(v_mean),
                            b.v_range.within_deviation(range_log),
                            b.v_gap.within_deviation(gap),
                        ],
                    };
                    term.base.learn_voltage(&lesson, alpha);
                    lessons.push(CohortLesson { terminal: t, cohort: term.cohort, lesson: Lesson::Voltage(lesson) });
                }
                site.add_terminal(&features, unstable);
            }

            // Network, against the terminal's own level and spread once it has them.
            let mut network_trouble = false;
            if acc.rtt_n > 0 || acc.loss_n > 0 {
                let rtt_log =
                    if acc.rtt_n > 0 { Some(f64::from(acc.rtt_log_sum) / f64::from(acc.rtt_n)) } else { None };
                let loss = if acc.loss_n > 0 { Some(f64::from(acc.loss_sum) / f64::from(acc.loss_n)) } else { None };
                let b = &mut term.base;
                let warm = b.rtt_log.level.weight >= cfg.warmup_windows;
                let z = |s: &Spread, x: Option<f64>, floor: f64| {
                    x.and_then(|x| s.z(x, floor, cfg.warmup_windows)).map_or(0.0, |z| z.clamp(-Z_CAP, Z_CAP))
                };
                let rtt_z = z(&b.rtt_log, rtt_log, LOG_SD_FLOOR);
                let loss_z = z(&b.loss, loss, LOSS_SD_FLOOR);
                let reconnect_rate = b.reconnects.or(0.0, cfg.warmup_windows).max(RATE_FLOOR_PER_MINUTE);
                let timeout_rate = b.timeouts.or(0.0, cfg.warmup_windows).max(TIMEOUT_RATE_FLOOR);
                let reconnects = poisson_surprise(acc.reconnects, reconnect_rate * minutes);
                let timeouts = poisson_surprise(acc.timeouts, timeout_rate * f64::from(acc.txn));
                let degraded = rtt_z > QUIET_Z || loss_z > QUIET_Z;
                network_trouble = degraded || reconnects > QUIET_SURPRISE;
                if !degraded && reconnects <= QUIET_SURPRISE && timeouts <= QUIET_SURPRISE {
                    if let Some(x) = rtt_log {
                        b.rtt_log.learn(x, alpha, LOG_SD_FLOOR);
                    }
                    if let Some(x) = loss {
                        b.loss.learn(x, alpha, LOSS_SD_FLOOR);
                    }
                    b.reconnects.update(f64::from(acc.reconnects) / minutes, alpha);
                    if acc.txn > 0 {
                        b.timeouts.update(f64::from(acc.timeouts) / f64::from(acc.txn), alpha);
                    }
                }
                if warm {
                    region.add_terminal(RegionTerminal {
                        terminal: CompactString::from(&*term.id),
                        site: self
                            .sites
                            .names
                            .get(term.site as usize)
                            .map(|s| CompactString::from(&**s))
                            .unwrap_or_default(),
                        degraded,
                        rtt_z,
                        loss_z,
                        reconnects,
                        timeouts,
                    });
                }
            }

            // A card reader failing in this window fails its payments: those
            // are the reader's (hardware aging's), not the firmware's. Judged
            // against the reader's own rate before this window teaches it.
            let reader_trouble = acc.card_errors > 0 && {
                let prior = self.cohort_prior.get(term.cohort as usize).map_or((0.0, 0.0), |c| c.reader);
                let base = shrunk_rate(term.wear.reader_long, prior);
                poisson_surprise(acc.card_errors, base * f64::from(acc.card_reads)) > QUIET_SURPRISE
            };

            // Release health: evidence for a new version, or the terminal's
            // own rates on the version it has run for a while.
            let crashed = acc.crashes > 0;
            let counts = WindowCounts {
                minutes,
                crashes: u32::from(acc.crashes),
                crash_run_starts: crashed && !term.release.crashing,
                reboots: u32::from(acc.release_reboots),
                failed: u32::from(acc.failed),
                txn: acc.txn,
                mem_rise: f64::from(acc.mem_rise),
                mem_hours: f64::from(acc.mem_hours),
                p95_log: (acc.p95_n > 0).then(|| f64::from(acc.p95_log_sum) / f64::from(acc.p95_n)),
                trouble: network_trouble || reader_trouble,
            };
            term.release.crashing = crashed;
            // The version the window ran, not the newest report's.
            let judged = term.release.at(end_ms);
            term.release.settle(end_ms);
            if self.releases.is_evidence(&judged, end_ms) {
                // Judged once the region's peers in this window are known.
                probation.push((t, term.region, counts, judged));
            } else {
                // Peers are only a reference for versions being judged: a
                // fleet with no rollout under way pays nothing for them.
                if !self.releases.is_empty() {
                    let expected = self.releases.expectation(&term.release, &counts, cfg.warmup_windows);
                    peers.entry(term.region).or_default().add(&counts, &expected);
                }
                Releases::learn(&mut term.release, &counts, &mut taught);
            }

            // Wear: decayed sums, so a rate is weighted by how much was tried.
            let (short, long) = (1.0 / cfg.aging_short_windows, 1.0 / cfg.aging_long_windows);
            let leak = 1.0 / cfg.aging_evidence_windows;
            let wear = &mut term.wear;
            decay_add(&mut wear.reader_short, acc.card_errors, acc.card_reads, short);
            decay_add(&mut wear.printer_short, acc.print_errors, acc.print_jobs, short);
            let reader_warm = wear.reader_long.1 >= MIN_WEAR_ATTEMPTS;
            let printer_warm = wear.printer_long.1 >= MIN_WEAR_ATTEMPTS;
            let prior = self.cohort_prior.get(term.cohort as usize).copied().unwrap_or_default();
            let reader_base = shrunk_rate(wear.reader_long, prior.reader);
            let printer_base = shrunk_rate(wear.printer_long, prior.printer);
            // Evidence accumulates only against a baseline worth the name; a
            // young one would call its own noise a change.
            let (card, print) = ((acc.card_errors, acc.card_reads), (acc.print_errors, acc.print_jobs));
            if reader_warm && acc.card_reads > 0 {
                wear.reader_evidence = accumulate(wear.reader_evidence, card, reader_base, leak, &mut wear.runs[0]);
            }
            if printer_warm && acc.print_jobs > 0 {
                wear.printer_evidence = accumulate(wear.printer_evidence, print, printer_base, leak, &mut wear.runs[1]);
            }
            if let Some(c) = cohort_rate(prior.reader) {
                wear.reader_vs_cohort = accumulate(wear.reader_vs_cohort, card, 2.0 * c, leak, &mut wear.runs[2]);
            }
            if let Some(c) = cohort_rate(prior.printer) {
                wear.printer_vs_cohort = accumulate(wear.printer_vs_cohort, print, 2.0 * c, leak, &mut wear.runs[3]);
            }
            // With evidence of a change the long memory learns at a fraction
            // of its pace, so a part wearing out over weeks does not become
            // its own baseline, yet a baseline that started out wrong still
            // converges instead of locking in.
            let reader_long = if wear.reader_evidence < LEARN_BELOW_NATS { long } else { long * SLOW_LEARNING };
            let printer_long = if wear.printer_evidence < LEARN_BELOW_NATS { long } else { long * SLOW_LEARNING };
            decay_add(&mut wear.reader_long, acc.card_errors, acc.card_reads, reader_long);
            decay_add(&mut wear.printer_long, acc.print_errors, acc.print_jobs, printer_long);
            // Only windows with use: a cohort's memory is counted in its
            // terminals' windows, and idle ones would wash it out.
            if acc.card_reads > 0 && wear.reader_evidence.max(wear.reader_vs_cohort) < LEARN_BELOW_NATS {
                lessons.push(CohortLesson {
                    terminal: t,
                    cohort: term.cohort,
                    lesson: Lesson::Reader { errors: acc.card_errors, attempts: acc.card_reads },
                });
            }
            if acc.print_jobs > 0 && wear.printer_evidence.max(wear.printer_vs_cohort) < LEARN_BELOW_NATS {
                lessons.push(CohortLesson {
                    terminal: t,
                    cohort: term.cohort,
                    lesson: Lesson::Printer { errors: acc.print_errors, attempts: acc.print_jobs },
                });
            }
            if acc.health_n > 0 {
                let h = f64::from(acc.health_sum) / f64::from(acc.health_n);
                wear.health_short.update(h, short);
                wear.health_long.update(h, long * 4.0);
                if let Some(now) = wear.health_short.get() {
                    let lowered = wear.health_peak.map_or(now, |p| f64::from(p) - NORMAL_HEALTH_LOSS_PER_WINDOW);
                    wear.health_peak = Some(lowered.max(now) as f32);
                }
            }
            // A row only for a window with activity, once there is a reference
            // (the terminal's own long memory, its cohort's pooled rates, or a
            // battery history): a quiet night repeats yesterday's evidence.
            // The cohort-relative evidence also leaks in windows in which only
            // the battery was seen; it forgets a little faster, no more.
            let active = acc.card_reads + acc.print_jobs > 0 || acc.health_n > 0;
            let cohort_warm = cohort_rate(prior.reader).is_some() || cohort_rate(prior.printer).is_some();
            let warm = cohort_warm || reader_warm || printer_warm || wear.health_long.weight > 144.0;
            if active && warm {
                // Short and long EWMAs lag by half their memories; their
                // difference over that lag is a drop per day.
                let lag_days = (cfg.aging_long_windows / 4.0 - cfg.aging_short_windows) / 2.0 * cfg.window_ms as f64
                    / 86_400_000.0;
                let health_drop = match (wear.health_long.get(), wear.health_short.get()) {
                    (Some(l), Some(s)) if wear.health_long.weight > 12.0 => (l - s) / lag_days.max(0.1),
                    _ => 0.0,
                };
                let health_now = wear.health_short.get();
                let health_deficit = match (wear.health_peak, health_now) {
                    (Some(p), Some(s)) => (f64::from(p) - s).max(0.0),
                    _ => 0.0,
                };
                let reader_now = rate(wear.reader_short);
                let printer_now = rate(wear.printer_short);
                // Each part's figure beyond what the terminal's other part
                // shows too: an old or busy terminal errs more on every part,
                // a worn one on one.
                let (reader_evidence, printer_evidence) =
                    beyond_shared(f64::from(wear.reader_evidence), f64::from(wear.printer_evidence));
                let (reader_vs_cohort, printer_vs_cohort) =
                    beyond_shared(f64::from(wear.reader_vs_cohort), f64::from(wear.printer_vs_cohort));
                let (reader_ratio, printer_ratio) = beyond_shared(
                    if reader_warm { ((reader_now + 0.002) / (reader_base + 0.002)).ln() } else { 0.0 },
                    if printer_warm { ((printer_now + 0.002) / (printer_base + 0.002)).ln() } else { 0.0 },
                );
                let features = [
                    reader_evidence.ln_1p(),
                    printer_evidence.ln_1p(),
                    reader_vs_cohort.ln_1p(),
                    printer_vs_cohort.ln_1p(),
                    health_deficit,
                    reader_ratio,
                    printer_ratio,
                    health_drop,
                ];
                let peak = wear.health_peak.map_or(0.0, f64::from);
                let reader_cohort = 2.0 * cohort_rate(prior.reader).unwrap_or(0.0);
                let printer_cohort = 2.0 * cohort_rate(prior.printer).unwrap_or(0.0);
                let baselines =
                    [reader_base, printer_base, reader_cohort, printer_cohort, peak, reader_base, printer_base, 0.0];
                rows.aging.push(AgingRow { terminal: t, features, baselines });
            }
        }

        // What the window taught the cohorts, in terminal-id order as the
        // members were: learnt now, or, with cohorts shared between
        // engines, handed out and learnt once merged with the others'.
        if self.share_cohorts {
            let (terminals, cohorts) = (&self.terminals, &self.cohorts);
            rows.cohort_lessons = CohortLessons::from_sorted(lessons.iter().filter_map(|l| {
                let id = CompactString::from(&*terminals.get(l.terminal as usize)?.id);
                Some((id, CompactString::from(&**cohorts.names.get(l.cohort as usize)?), l.lesson))
            }));
        } else {
            for l in &lessons {
                self.learn_cohort(l.cohort, &l.lesson);
            }
        }

        if self.emit_partials {
            // Stage 1 of two: its sites' and regions' rows are the merging
            // stage's, from every engine's partials; built here they would
            // be of this engine's terminals only, and nobody reads them.
            let (sites, regions) = (&self.sites, &self.regions);
            let name = |n: &Names, i: u32| n.names.get(i as usize).cloned().unwrap_or_default();
            let site_regions = &self.site_regions;
            rows.site_partials = site_acc
                .into_iter()
                .map(|(s, mut p)| {
                    p.region = name(regions, site_regions.get(s as usize).copied().unwrap_or(0));
                    (name(sites, s), p)
                })
                .collect();
            rows.region_partials = region_acc
                .into_iter()
                .filter(|(_, p)| !p.terminals.is_empty())
                .map(|(r, p)| (name(regions, r), p))
                .collect();
            rows.site_partials.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            rows.region_partials.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        } else {
            for (s, partial) in site_acc {
                if let Some(features) = partial.features() {
                    rows.site_voltage.push(SiteVoltageRow { site: s, features });
                }
            }
            for (r, mut partial) in region_acc {
                match partial.features() {
                    RegionWindow::Empty => {}
                    RegionWindow::Thin => {
                        self.counters.thin_region_windows = self.counters.thin_region_windows.saturating_add(1);
                    }
                    RegionWindow::Features(features) => rows.network.push(NetworkRow { region: r, features }),
                }
            }
        }
        // Rows in a fixed order, whatever the hash maps did or the order in
        // which entities were first seen: the training and serving paths
        // must agree row for row. Terminal rows are in id order already.
        let (sites, regions) = (&self.sites, &self.regions);
        let name = |n: &Names, i: u32| n.names.get(i as usize).cloned();
        rows.site_voltage.sort_by_cached_key(|r| name(sites, r.site));
        rows.network.sort_by_cached_key(|r| name(regions, r.region));
        // The versions tracked that terminals ran as of the window's end,
        // not as of their newest reports: the same whichever arrived first.
        // Where versions are judged, one no terminal runs is retired.
        let tracked = self.releases.tracked();
        let mut running = vec![false; tracked.len()];
        if !tracked.is_empty() {
            for term in &self.terminals {
                if let Ok(i) = tracked.binary_search(&term.release.at(end_ms).current) {
                    running[i] = true;
                }
            }
        }
        let running = tracked.into_iter().zip(running).filter(|(_, r)| *r).map(|(k, _)| k).collect();
        let mut partial = self.releases.partial(w, running);
        let region_name = |r: u32| self.regions.names.get(r as usize).map_or("", |n| &**n);
        for (r, p) in &peers {
            Releases::add_peers(&mut partial, region_name(*r), *p);
        }
        // In terminal-id order, as the members were: a version's sums add up
        // in the same order whatever the arrival order was.
        for (t, region, counts, judged) in probation {
            let Some(term) = self.terminals.get(t as usize) else { continue };
            let expected = self.releases.expectation(&term.release, &counts, cfg.warmup_windows);
            self.releases.note_evidence(judged.current, w);
            Releases::add_probation(&mut partial, &term.id, region_name(region), judged, counts, expected);
        }
        if self.emit_partials {
            // Stage 1 of two: a version's terminals and their peers are in
            // every partition; the merging stage judges it.
            rows.release_partial = partial;
            self.releases.keep(w);
        } else {
            (rows.firmware, rows.firmware_retired) = self.releases.judge(&taught, partial);
        }
        // The pools learn once the window is judged, as engines that share
        // their cohorts learn them from the merged lessons before they
        // close the next window.
        if !self.share_cohorts {
            self.releases.learn_lessons(w, &taught);
        }
        if self.share_cohorts || self.emit_partials {
            // The judge learns the switches from them.
            rows.cohort_lessons.release = taught;
        }
        rows
    }
}

/// Two parts' figures, each less what both show: the larger of zero and the
/// smaller of the two. What the reader and the printer both show is the
/// terminal's (its age, its shop's use), and a part that is wearing out
/// stands out from the other; a terminal with one part, or one part quiet,
/// keeps its figures whole.
fn beyond_shared(a: f64, b: f64) -> (f64, f64) {
    let shared = a.min(b).max(0.0);
    (a - shared, b - shared)
}

/// Why a report was dropped.
#[derive(Clone, Copy)]
enum Drop {
    Late,
    Ahead,
}

/// One report's values, as a window takes them (and as a held report waits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Report {
    ts: i64,
    /// Mean, deviation, lowest and highest supply voltage, as shares of nominal.
    supply: Option<[f64; 4]>,
    interval_s: u32,
    sags: u32,
    reboots: u32,
    rtt: Option<f64>,
    loss: Option<f64>,
    reconnects: u32,
    timeouts: u32,
    txn: u32,
    card_reads: u32,
    card_errors: u32,
    print_jobs: u32,
    print_errors: u32,
    health: Option<f64>,
    crashes: u32,
    failed: u32,
    p95: Option<f64>,
    mem: Option<f64>,
    uptime_s: Option<u64>,
    /// Keys of its model ([`release::model_key`]) and of its model and
    /// firmware ([`release::version_key`]); 0 when unnamed.
    model: u32,
    release: u64,
}

impl Report {
    fn read(c: &Cols<'_>, row: usize, ts: i64) -> Report {
        let f = |a: Option<&Float64Array>| a.filter(|a| a.is_valid(row)).map(|a| a.value(row));
        let u = |a: Option<&UInt32Array>| a.filter(|a| a.is_valid(row)).map(|a| a.value(row)).unwrap_or(0);
        let nominal = f(c.nominal).unwrap_or(12.0).max(0.1);
        let (model, firmware) =
            (dictionary_key(c.models, &c.model_keys, row), dictionary_key(c.firmwares, &c.firmware_keys, row));
        let supply = match (f(c.v_mean), f(c.v_std)) {
            (Some(mean), Some(std)) => Some([
                mean / nominal,
                std / nominal,
                f(c.v_min).unwrap_or(mean) / nominal,
                f(c.v_max).unwrap_or(mean) / nominal,
            ]),
            _ => None,
        };
        Report {
            ts,
            supply,
            interval_s: c.interval.filter(|a| a.is_valid(row)).map_or(DEFAULT_INTERVAL_S, |a| a.value(row)),
            // A supply that swings across both lines within one report is
            // one disturbance: each counter is at least one whenever its
            // line is crossed, and their sum would count it twice.
            sags: u(c.sags).max(u(c.swells)),
            reboots: u(c.reboots),
            rtt: f(c.rtt),
            loss: f(c.loss),
            reconnects: u(c.reconnects),
            timeouts: u(c.timeouts),
            txn: u(c.txn),
            card_reads: u(c.card_reads),
            card_errors: u(c.card_errors),
            print_jobs: u(c.print_jobs),
            print_errors: u(c.print_errors),
            health: f(c.health),
            crashes: u(c.crashes),
            failed: u(c.failed),
            p95: f(c.p95),
            mem: f(c.mem),
            uptime_s: c.uptime.filter(|a| a.is_valid(row)).map(|a| a.value(row)),
            model: model.map_or(0, release::model_key),
            release: match (model, firmware) {
                (Some(m), Some(f)) => release::version_key(m, f),
                _ => 0,
            },
        }
    }
}

impl Acc {
    fn add(&mut self, r: &Report) {
        if self.n == u16::MAX {
            return;
        }
        self.n += 1;
        if let Some([mean, std, min, max]) = r.supply {
            self.v_n += 1;
            self.v_mean_sum += mean;
            self.v_std_sum += std;
            self.v_min = self.v_min.min(min);
            self.v_max = self.v_max.max(max);
        }
        self.minutes += (f64::from(r.interval_s.max(1)) / 60.0) as f32;
        self.sags += r.sags;
        self.reboots += r.reboots;
        if let Some(rtt) = r.rtt {
            self.rtt_log_sum += (rtt.max(0.0) + 1.0).ln() as f32;
            self.rtt_n += 1;
        }
        if let Some(loss) = r.loss {
            self.loss_sum += loss as f32;
            self.loss_n += 1;
        }
        self.reconnects += r.reconnects;
        self.timeouts += r.timeouts;
        self.txn += r.txn;
        self.card_reads += r.card_reads;
        self.card_errors += r.card_errors;
        self.print_jobs += r.print_jobs;
        self.print_errors += r.print_errors;
        if let Some(h) = r.health {
            self.health_sum += h as f32;
            self.health_n += 1;
        }
        let small = |x: u32| u16::try_from(x).unwrap_or(u16::MAX);
        self.crashes = self.crashes.saturating_add(small(r.crashes));
        self.failed = self.failed.saturating_add(small(r.failed));
        if let Some(p) = r.p95.filter(|p| *p > 0.0 && p.is_finite()) {
            self.p95_log_sum += p.ln() as f32;
            self.p95_n += 1;
        }
    }
}

struct Cols<'a> {
    v_mean: Option<&'a Float64Array>,
    v_std: Option<&'a Float64Array>,
    v_min: Option<&'a Float64Array>,
    v_max: Option<&'a Float64Array>,
    rtt: Option<&'a Float64Array>,
    loss: Option<&'a Float64Array>,
    health: Option<&'a Float64Array>,
    nominal: Option<&'a Float64Array>,
    interval: Option<&'a UInt32Array>,
    sags: Option<&'a UInt32Array>,
    swells: Option<&'a UInt32Array>,
    reboots: Option<&'a UInt32Array>,
    reconnects: Option<&'a UInt32Array>,
    timeouts: Option<&'a UInt32Array>,
    txn: Option<&'a UInt32Array>,
    card_reads: Option<&'a UInt32Array>,
    card_errors: Option<&'a UInt32Array>,
    print_jobs: Option<&'a UInt32Array>,
    print_errors: Option<&'a UInt32Array>,
    crashes: Option<&'a UInt32Array>,
    failed: Option<&'a UInt32Array>,
    p95: Option<&'a Float64Array>,
    mem: Option<&'a Float64Array>,
    uptime: Option<&'a UInt64Array>,
    models: Option<&'a DictionaryArray<Int32Type>>,
    firmwares: Option<&'a DictionaryArray<Int32Type>>,
    /// [`release::key`] of each dictionary value of `models` and `firmwares`.
    model_keys: Vec<u64>,
    firmware_keys: Vec<u64>,
}

/// The items `used` marks, in order (an item past its end is dropped).
fn keep_used<T>(items: Vec<T>, used: &[bool]) -> Vec<T> {
    items.into_iter().enumerate().filter(|(i, _)| used.get(*i).copied().unwrap_or(false)).map(|(_, x)| x).collect()
}

/// [`release::key`] of each value of a dictionary, once per batch.
fn dictionary_keys(d: Option<&DictionaryArray<Int32Type>>) -> Vec<u64> {
    d.and_then(|d| d.values().as_string_opt::<i32>())
        .map(|v| v.iter().map(|s| s.map_or(0, release::key)).collect())
        .unwrap_or_default()
}

/// The precomputed key of a dictionary column's value in `row`.
fn dictionary_key(d: Option<&DictionaryArray<Int32Type>>, keys: &[u64], row: usize) -> Option<u64> {
    let d = d.filter(|d| d.is_valid(row))?;
    keys.get(d.keys().value(row) as usize).copied().filter(|k| *k != 0)
}

fn dict_value(d: Option<&DictionaryArray<Int32Type>>, row: usize) -> Option<&str> {
    let d = d?;
    if d.is_null(row) {
        return None;
    }
    let values = d.values().as_string_opt::<i32>()?;
    Some(values.value(d.keys().value(row) as usize))
}

fn decay_add(sum: &mut (f64, f64), errors: u32, attempts: u32, alpha: f64) {
    sum.0 = sum.0 * (1.0 - alpha) + f64::from(errors);
    sum.1 = sum.1 * (1.0 - alpha) + f64::from(attempts);
}

/// Bounds on the wear evidence. A broken part (most reads failing for the
/// half hour before it is swapped) would otherwise pile up so much evidence
/// that the new part would look worn for days. The step bound holds for a
/// run of windows with errors as a whole: a paper jam or a burst of failed
/// reads lasting several windows is one event, while wear makes such runs
/// start more often.
const MAX_STEP_NATS: f64 = 1.0;
const MAX_EVIDENCE_NATS: f64 = 20.0;

/// One step of a leaky CUSUM for "the error rate is twice `base`": the log-
/// likelihood ratio of `errors` in `attempts` under 2·base against base,
/// added to evidence that leaks at `leak` per step and never goes below 0.
/// It is the sequential test for a rate change, weighted by how much the
/// part was used, so a busy terminal's wear shows sooner than a quiet one's.
/// `run` is what the run of windows with errors this window may continue
/// has added so far: a window without errors ends it, one without use
/// leaves it open.
fn accumulate(evidence: f32, (errors, attempts): (u32, u32), base: f64, leak: f64, run: &mut f32) -> f32 {
    let p0 = base.min(0.4);
    let p1 = 2.0 * p0;
    let e = f64::from(errors.min(attempts));
    let n = f64::from(attempts);
    let llr = e * (p1 / p0).ln() + (n - e) * ((1.0 - p1) / (1.0 - p0)).ln();
    let step = if errors > 0 {
        let step = llr.min(MAX_STEP_NATS - f64::from(*run));
        *run += step.max(0.0) as f32;
        step
    } else {
        if attempts > 0 {
            *run = 0.0;
        }
        llr
    };
    (f64::from(evidence) * (1.0 - leak) + step).clamp(0.0, MAX_EVIDENCE_NATS) as f32
}

/// A cohort's pooled error rate, once it rests on enough attempts, never
/// below `MIN_BASE_RATE`.
fn cohort_rate(pooled: (f64, f64)) -> Option<f64> {
    (pooled.1 >= MIN_COHORT_ATTEMPTS).then(|| (pooled.0 / pooled.1).max(MIN_BASE_RATE))
}

/// A terminal's error rate shrunk towards its cohort's, never below
/// `MIN_BASE_RATE`.
fn shrunk_rate(own: (f64, f64), cohort: (f64, f64)) -> f64 {
    let prior = if cohort.1 > 0.0 { cohort.0 / cohort.1 } else { rate(own) };
    ((own.0 + PRIOR_ATTEMPTS * prior) / (own.1 + PRIOR_ATTEMPTS)).max(MIN_BASE_RATE)
}

fn rate(sum: (f64, f64)) -> f64 {
    if sum.1 > 0.0 { sum.0 / sum.1 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use termwatch_telemetry::{BatchBuilder, decode};

    use super::*;
    use crate::names;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_795_514_400_000; // a window boundary

    fn batch(lines: &[String]) -> RecordBatch {
        let mut b = BatchBuilder::with_capacity(lines.len());
        for l in lines {
            b.append(&decode(l.as_bytes(), i64::MAX / 2).expect("valid")).expect("append");
        }
        b.finish().expect("batch")
    }

    fn report(t: &str, site: &str, ts: i64, v_std: f64) -> String {
        format!(
            r#"{{"terminal_id":"{t}","ts":{ts},"region":"r1","site_id":"{site}","supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":{v_std},"net_rtt_ms":40,"net_loss_pct":0.1}}"#
        )
    }

    #[test]
    fn counters_are_judged_per_minute_whatever_the_reporting_interval() {
        // The same supply, 2 sags and 1 reconnect a minute, reported every
        // 60 s by T-1 and every 300 s by T-2, in the window [T0, T0+5m).
        let line = |t: &str, ts: i64, interval: u32| {
            let m = interval / 60;
            format!(
                r#"{{"terminal_id":"{t}","ts":{ts},"region":"r1","site_id":"S-{t}","interval_s":{interval},"supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.04,"supply_sags":{},"net_reconnects":{m}}}"#,
                2 * m
            )
        };
        let mut lines: Vec<String> = (0..5).map(|i| line("T-1", T0 + i * MIN, 60)).collect();
        lines.push(line("T-2", T0 + 4 * MIN, 300));
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.process_batch(&batch(&lines));
        let rows = e.finish();
        let w = rows.iter().find(|w| w.end_ms == T0 + 5 * MIN).expect("the window closed");
        // Ten sags in five minutes against the same expected rate: the same
        // surprise from five reports as from one.
        let sags = names::TERMINAL_VOLTAGE.iter().position(|n| *n == "sag_surprise").expect("feature");
        let per_terminal: Vec<f64> = w.terminal_voltage.iter().map(|r| r.features[sags]).collect();
        let expected = crate::stats::poisson_surprise(10, 5.0 * RATE_FLOOR_PER_MINUTE);
        assert!(expected > 20.0, "{expected}");
        assert_eq!(per_terminal, [expected, expected]);
    }

    #[test]
    fn the_vector_of_terminals_grows_by_an_eighth_and_never_past_the_limit() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.set_limits(Limits { max_terminals: 30_000, ..Limits::default() });
        let mut worst_slack = 0.0f64;
        for i in 0..40_000 {
            let (t, _) = e.terminal(&format!("T-{i}"), "r1", None, "P200", "4.2.1");
            let (len, cap) = (e.terminals.len(), e.terminals.capacity());
            if i < 30_000 {
                assert_eq!(t, Some(i as u32));
            }
            assert!(cap <= 30_000, "room for {cap} terminals, past the limit of 30,000");
            if len > 4096 {
                worst_slack = worst_slack.max(cap as f64 / len as f64);
            }
        }
        // Doubling would leave room for up to twice the terminals held.
        assert!(worst_slack > 1.1 && worst_slack <= 1.126, "room for {worst_slack} times the terminals held");
    }

    #[test]
    fn terminals_back_one_at_a_time_grow_the_vector_as_new_ones_do() {
        let mut from = FeatureEngine::new(FeatureConfig::default());
        for i in 0..6_000 {
            from.terminal(&format!("T-{i}"), "r1", None, "P200", "4.2.1");
        }
        let mut to = FeatureEngine::new(FeatureConfig::default());
        let mut moves = 0;
        for entry in from.export_terminals(|_| true).entries {
            let cap = to.terminals.capacity();
            assert_eq!(to.import_terminals(TerminalStates { entries: vec![entry] }).len(), 1);
            moves += usize::from(to.terminals.capacity() != cap);
        }
        assert_eq!(to.tracked_terminals(), 6_000);
        // Doubling to 4,096, then by eighths: a handful of moves, not one
        // per terminal (a cold store gives terminals back a few at a time).
        assert!(moves <= 16, "the vector moved {moves} times for 6,000 terminals");
    }

    #[test]
    fn check_refuses_indices_that_point_at_nothing_and_windows_that_would_never_close() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.process_batch(&batch(&[report("T-1", "S-1", T0 + MIN, 0.04), report("T-2", "S-2", T0 + 2 * MIN, 0.04)]));
        assert_eq!(e.check(), Ok(()));
        let mut bad = e.clone();
        bad.terminals[0].site = 99;
        assert!(bad.check().is_err_and(|e| e.contains("T-1")));
        let mut bad = e.clone();
        bad.members.clear();
        assert!(bad.check().is_err_and(|e| e.contains("will not close")));
        let mut bad = e.clone();
        bad.next_to_close = Some(i64::MAX);
        assert!(bad.check().is_err_and(|e| e.contains("will not close")));
        let mut bad = e.clone();
        bad.terminal_index.insert("T-1".into(), 1);
        assert!(bad.check().is_err());
        let mut bad = e.clone();
        bad.cohort_base.clear();
        assert!(bad.check().is_err());
        let mut bad = e.clone();
        bad.members.entry(T0 / (5 * MIN)).or_default().push(7);
        assert!(bad.check().is_err_and(|e| e.contains("not held")));
        let mut bad = e.clone();
        bad.sites.index.clear();
        assert!(bad.check().is_err_and(|e| e.contains("site names")));
    }

    #[test]
    fn a_window_closes_once_its_input_has_passed_its_end_plus_lateness() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let minute =
            |m: i64| batch(&(1..=4).map(|t| report(&format!("T-{t}"), "S-1", T0 + m * MIN, 0.04)).collect::<Vec<_>>());
        // Window [T0, T0+5m) closes once the input has passed T0+15m.
        for m in 0..=14 {
            assert!(e.process_batch(&minute(m)).is_empty(), "minute {m}");
        }
        // One terminal's report from far on does not move everyone's time there.
        assert!(e.process_batch(&batch(&[report("T-1", "S-1", T0 + 50 * MIN, 0.04)])).is_empty());
        assert_eq!(e.watermark(), Some(T0 + 14 * MIN));
        // The input's recent reports, half of them at or past T0+15m, do.
        let closed = e.process_batch(&minute(15));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].end_ms, T0 + 5 * MIN);
        assert_eq!(closed[0].terminal_voltage.len(), 4);
    }

    #[test]
    fn late_reports_within_lateness_count_and_later_ones_are_dropped() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let both = |ts: i64| vec![report("T-1", "S-1", ts, 0.04), report("T-4", "S-1", ts, 0.04)];
        e.process_batch(&batch(&[both(T0 + MIN), both(T0 + 12 * MIN)].concat()));
        // 11 minutes late but its window (ends T0+5m) is still open until T0+15m.
        e.process_batch(&batch(&[report("T-2", "S-1", T0 + 2 * MIN, 0.04)]));
        let closed = e.process_batch(&batch(&[both(T0 + 16 * MIN), both(T0 + 17 * MIN), both(T0 + 18 * MIN)].concat()));
        assert_eq!(closed[0].terminal_voltage.len(), 3, "the late report made it");
        e.process_batch(&batch(&[report("T-3", "S-1", T0 + 3 * MIN, 0.04)]));
        assert_eq!(e.counters().late, 1, "a report for a closed window is late");
    }

    #[test]
    fn gaps_produce_no_rows() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.process_batch(&batch(&[report("T-1", "S-1", T0 + MIN, 0.04)]));
        // T-1 is switched off for hours; only T-2 reports, alone: its time
        // still moves the windows on, max_ahead_ms behind it.
        let mut closed = Vec::new();
        for k in 1..40 {
            closed.extend(e.process_batch(&batch(&[report("T-2", "S-2", T0 + k * 5 * MIN + MIN, 0.04)])));
        }
        let t1_rows: usize =
            closed.iter().flat_map(|w| &w.terminal_voltage).filter(|r| e.terminal_id(r.terminal) == "T-1").count();
        assert_eq!(t1_rows, 1, "one window with a report, no rows for the gap");
        assert!(closed.len() >= 30, "windows closed while T-2 reported alone: {}", closed.len());
    }

    #[test]
    fn a_report_whose_supply_swings_across_both_lines_is_one_disturbance() {
        // T-1's supply crosses the sag line in a report of every four for
        // two days; then one report crosses both lines (each counter is at
        // least one when its line is crossed). It is as surprising as one
        // sag, not as two.
        let line = |ts: i64, sags: u32, swells: u32| {
            format!(
                r#"{{"terminal_id":"T-1","ts":{ts},"region":"r1","site_id":"S-1","interval_s":300,"supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.04,"supply_sags":{sags},"supply_swells":{swells}}}"#
            )
        };
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let mut closed = Vec::new();
        for k in 0..600 {
            let (sags, swells) = match k {
                596 => (1, 0),
                598 => (1, 1),
                _ if k % 4 == 0 => (1, 0),
                _ => (0, 0),
            };
            closed.extend(e.process_batch(&batch(&[line(T0 + k * 5 * MIN + MIN, sags, swells)])));
        }
        closed.extend(e.finish());
        let sag = names::TERMINAL_VOLTAGE.iter().position(|n| *n == "sag_surprise").expect("feature");
        let at = |k: usize| closed[k].terminal_voltage[0].features[sag];
        assert!(at(596) > 0.5, "a sag at its own rate: {}", at(596));
        assert!((at(598) - at(596)).abs() < 0.05, "both lines {} against one sag {}", at(598), at(596));
    }

    #[test]
    fn a_supplys_mean_is_measured_in_its_own_spread_down_to_a_centivolts_rounding() {
        // A 12 V supply whose mean wanders by about 11 mV (0.09 % of
        // nominal) from report to report, as many healthy supplies do: its
        // quiet windows are about one of its own deviations out, not a
        // fraction of one (a floor above its spread would make them so, and
        // the same wander on a noisier supply would read twice as large).
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let mut closed = Vec::new();
        let wander = [0.0, 0.012, -0.012, 0.017, -0.017, 0.006, -0.006, 0.0];
        for k in 0..2000 {
            let v_mean = 12.0 + wander[(k * 5 % 8) as usize];
            let line = format!(
                r#"{{"terminal_id":"T-1","ts":{},"region":"r1","site_id":"S-1","supply_v_mean":{v_mean:.3},"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.04}}"#,
                T0 + k * 5 * MIN
            );
            closed.extend(e.process_batch(&batch(&[line])));
        }
        let drop = names::TERMINAL_VOLTAGE.iter().position(|n| *n == "v_mean_drop_z").expect("feature");
        let z: Vec<f64> = closed[1000..].iter().flat_map(|w| &w.terminal_voltage).map(|r| r.features[drop]).collect();
        let rms = (z.iter().map(|z| z * z).sum::<f64>() / z.len() as f64).sqrt();
        assert!(z.len() > 900 && (0.8..1.25).contains(&rms), "{} windows, rms {rms}", z.len());
    }

    #[test]
    fn voltage_features_are_in_units_of_the_terminals_own_spread() {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let mut closed = Vec::new();
        // Two days of quiet reports build the baselines, then the noise
        // triples on both: T-1's is steady, T-2's wanders by +-30 % (ln
        // 1.3: about 0.17 once the 0.002-of-nominal floor is added).
        for k in 0..600 {
            let wander = if k % 2 == 0 { 1.3 } else { 1.0 / 1.3 };
            let (one, two) = if k < 576 { (0.04, 0.04 * wander) } else { (0.12, 0.12) };
            let lines = [report("T-1", "S-1", T0 + k * 5 * MIN, one), report("T-2", "S-2", T0 + k * 5 * MIN, two)];
            closed.extend(e.process_batch(&batch(&lines)));
        }
        closed.extend(e.finish());
        let z = |i: usize, t: usize| closed[i].terminal_voltage[t].features[0];
        assert!(z(500, 0).abs() < 0.05, "steady and quiet: {}", z(500, 0));
        assert!(z(500, 1).abs() < 2.0 && z(501, 1).abs() < 2.0, "wandering and quiet: {} {}", z(500, 1), z(501, 1));
        // A steady supply's spread is the floor (5 % in ln units), so
        // tripling is ln((0.12/12 + eps) / (0.04/12 + eps)) / 0.05 of it.
        let ratio = ((0.12 / 12.0 + EPS_V) / (0.04 / 12.0 + EPS_V)).ln();
        assert!((z(590, 0) - ratio / LOG_SD_FLOOR).abs() < 1e-3, "{} vs {}", z(590, 0), ratio / LOG_SD_FLOOR);
        // The same change on a supply that wanders is fewer of its own
        // deviations, yet still far out.
        assert!(z(590, 1) > 3.0 && z(590, 1) < z(590, 0) / 2.0, "{} {}", z(590, 1), z(590, 0));
        assert!(
            (closed[590].terminal_voltage[0].baselines[0] - 0.04 / 12.0).abs() < 1e-4,
            "the baseline did not absorb the fault"
        );
    }

    #[test]
    fn a_rollback_read_before_the_canarys_last_windows_close_leaves_them_its_version() {
        // Four terminals on M1/1.0.0; after a day two take 2.0.0 and crash
        // often, and three hours later go back. Read all at once (a replay
        // reads hours past the windows it closes, so the rollback arrives
        // before the canary's last windows close), or window by window (as
        // live): the same release rows, up to the rollback.
        let switch_at = 288;
        let back_at = switch_at + 36;
        let line = |t: u32, k: i64| {
            let on_new = t <= 2 && (switch_at..back_at).contains(&k);
            let (fw, crashes) = if on_new { ("2.0.0", u32::from(k % 3 == 0)) } else { ("1.0.0", 0) };
            format!(
                r#"{{"terminal_id":"T-{t}","ts":{},"region":"r1","model":"M1","firmware":"{fw}","txn_count":20,"app_crashes":{crashes}}}"#,
                T0 + k * 5 * MIN + 1000
            )
        };
        let rows = |per_batch: usize| {
            let lines: Vec<String> = (0..back_at + 48).flat_map(|k| (1..=4).map(move |t| line(t, k))).collect();
            let mut e = FeatureEngine::new(FeatureConfig::default());
            let mut out = Vec::new();
            for chunk in lines.chunks(per_batch) {
                for w in e.process_batch(&batch(chunk)) {
                    out.extend(w.firmware.into_iter().map(|r| (w.end_ms, r)));
                }
            }
            out
        };
        let (live, replay) = (rows(4), rows(100_000));
        let last = live.iter().filter(|(_, r)| &*r.entity == "M1/2.0.0").map(|(end, _)| *end).max();
        assert_eq!(last, Some(T0 + back_at * 5 * MIN), "judged up to the rollback's window");
        assert_eq!(live.len(), replay.len(), "as many rows whatever the batches");
        assert!(live == replay, "the same rows whatever the batches");
    }

    #[test]
    fn one_terminals_burst_of_timeouts_is_not_its_regions() {
        // Five terminals of one region at five sites, a day of quiet
        // windows, then a window in which one (or four) time out on most
        // transactions.
        let line = |t: u32, ts: i64, timeouts: u32| {
            format!(
                r#"{{"terminal_id":"T-{t}","ts":{ts},"region":"r1","site_id":"S-{t}","net_rtt_ms":40,"net_loss_pct":0.1,"txn_count":40,"txn_timeouts":{timeouts}}}"#
            )
        };
        let feature = |bursting: u32| {
            let mut e = FeatureEngine::new(FeatureConfig::default());
            let mut closed = Vec::new();
            for k in 0..300 {
                let timeouts = |t: u32| if k == 290 && t <= bursting { 30 } else { 0 };
                let lines: Vec<String> = (1..=5).map(|t| line(t, T0 + k * 5 * MIN, timeouts(t))).collect();
                closed.extend(e.process_batch(&batch(&lines)));
            }
            let at = names::NETWORK.iter().position(|n| *n == "timeout_surprise_trimmed_mean").expect("feature");
            let w = closed.iter().find(|w| w.end_ms == T0 + 291 * 5 * MIN).expect("the window closed");
            w.network.first().expect("the region's row").features[at]
        };
        assert_eq!(feature(0), 0.0);
        assert_eq!(feature(1), 0.0, "one terminal's burst is its own");
        assert!(feature(4) > 20.0, "four of five are the region's: {}", feature(4));
    }

    #[test]
    fn a_burst_of_errors_is_one_event_of_wear_evidence() {
        // One printer, 20 jobs a window, a day of clean windows, then four
        // errors: in four windows in a row (a paper jam), in the first of
        // those only, or in four windows apart (a part failing more often).
        let line = |ts: i64, errors: u32| {
            format!(
                r#"{{"terminal_id":"T-1","ts":{ts},"region":"r1","site_id":"S-1","print_jobs":20,"print_errors":{errors}}}"#
            )
        };
        let evidence = |errors_at: &[i64]| {
            let mut e = FeatureEngine::new(FeatureConfig::default());
            let mut closed = Vec::new();
            for k in 0..320 {
                let errors = u32::from(errors_at.contains(&k));
                closed.extend(e.process_batch(&batch(&[line(T0 + k * 5 * MIN + MIN, errors)])));
            }
            let w = closed.iter().find(|w| w.end_ms == T0 + 307 * 5 * MIN).expect("the window closed");
            let row = w.aging.first().expect("the terminal's aging row");
            // printer_wear_evidence and printer_wear_vs_cohort, in nats.
            (row.features[1].exp_m1(), row.features[3].exp_m1())
        };
        let jam = evidence(&[300, 301, 302, 303]);
        let first = evidence(&[300]);
        let apart = evidence(&[300, 302, 304, 306]);
        for (jam, first, apart) in [(jam.0, first.0, apart.0), (jam.1, first.1, apart.1)] {
            assert!(first > 0.1, "one error is evidence: {first}");
            // The jam as a whole adds what one window may (1 nat), where the
            // same errors apart add one window's each.
            assert!(jam > first && jam <= MAX_STEP_NATS, "a jam weighs at most one window's bound: {jam}");
            assert!(apart > 2.0 * jam, "errors apart weigh more than a jam: {apart} against {jam}");
        }
    }

    #[test]
    fn what_both_parts_of_a_terminal_show_is_the_terminals_not_a_worn_parts() {
        // Twelve terminals of one cohort err on 0.5 % of their card reads
        // and 0.25 % of their print jobs. T-A errs eight times as often on
        // both parts (an old terminal in a busy shop), T-B on its reader
        // alone. Errors come in most windows of the worse parts, not in
        // every one: a run of windows with errors is one event.
        let line = |t: &str, ts: i64, card_errors: bool, print_errors: bool| {
            format!(
                r#"{{"terminal_id":"{t}","ts":{ts},"region":"r1","site_id":"S-{t}","model":"M1","firmware":"1.0","card_reads":20,"card_read_errors":{},"print_jobs":20,"print_errors":{}}}"#,
                u32::from(card_errors),
                u32::from(print_errors)
            )
        };
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let mut closed = Vec::new();
        for k in 0..600i64 {
            let ts = T0 + k * 5 * MIN + MIN;
            let mut lines: Vec<String> =
                (0..12).map(|i| line(&format!("T-{i:02}"), ts, (k + i) % 10 == 0, (k + i) % 20 == 0)).collect();
            lines.push(line("T-A", ts, k % 5 != 0, k % 5 == 1 || k % 5 == 3));
            lines.push(line("T-B", ts, k % 5 != 0, k % 20 == 7));
            closed.extend(e.process_batch(&batch(&lines)));
        }
        let last = closed.iter().rev().find(|w| !w.aging.is_empty()).expect("aging rows");
        let row = |id: &str| {
            let r = last.aging.iter().find(|r| e.terminal_id(r.terminal) == id).expect("the terminal's row");
            r.features
        };
        let (a, b) = (row("T-A"), row("T-B"));
        // reader_wear_vs_cohort and printer_wear_vs_cohort.
        assert!(b[2] > 1.0, "a reader erring eight times its cohort's rate is evidence: {}", b[2]);
        assert!(b[3] < 0.1, "its printer is like its cohort's: {}", b[3]);
        assert!(
            a[2].max(a[3]) < 0.25 * b[2],
            "what both parts show is not a part's: reader {}, printer {}, against {}",
            a[2],
            a[3],
            b[2]
        );
    }

    #[test]
    fn terminals_move_out_and_back_in_without_changing_what_is_learned() {
        // One engine sees everything; the other hands T-2 (one partition's
        // terminal) away mid-window and takes it back: the rows must agree.
        let lines = |k: i64| vec![report("T-1", "S-1", T0 + k * MIN, 0.04), report("T-2", "S-1", T0 + k * MIN, 0.05)];
        let mut whole = FeatureEngine::new(FeatureConfig::default());
        let mut moved = FeatureEngine::new(FeatureConfig::default());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for k in 0..200 {
            a.extend(whole.process_batch(&batch(&lines(k))));
            b.extend(moved.process_batch(&batch(&lines(k))));
            if k == 101 {
                let part = moved.export_terminals(|id| id == "T-2");
                assert_eq!(part.len(), 1);
                assert_eq!(moved.remove_terminals(|id| id == "T-2"), 1);
                assert_eq!(moved.tracked_terminals(), 1);
                assert_eq!(moved.import_terminals(part).len(), 1);
            }
        }
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.end_ms, y.end_ms);
            let ids = |e: &FeatureEngine, w: &WindowRows| {
                w.terminal_voltage
                    .iter()
                    .map(|r| (e.terminal_id(r.terminal).to_string(), r.features))
                    .collect::<Vec<_>>()
            };
            let (mut xa, mut yb) = (ids(&whole, x), ids(&moved, y));
            xa.sort_by(|p, q| p.0.cmp(&q.0));
            yb.sort_by(|p, q| p.0.cmp(&q.0));
            assert_eq!(xa, yb, "window ending {}", x.end_ms);
            assert_eq!(x.site_voltage.len(), y.site_voltage.len());
        }
        assert_eq!(whole.export_terminals(|id| id == "T-2"), moved.export_terminals(|id| id == "T-2"));
    }
}
