//! Training: feature rows from the one feature code path, joined with
//! incident labels, fitted per detector, thresholds calibrated on healthy
//! windows to a target false-alert rate, saved as one artifact.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows, names};
use termwatch_telemetry::alerts::{AlertKind, IncidentLabel, Scope, Verdict};

use crate::artifact::{
    DetectorFigures, FORMAT, IncidentFigures, ModelSet, ResolveFigures, TrainingData, scored_at_site_scope,
};
use crate::detector::{
    CRITICAL_OFF, DAY_MS, Detector, DetectorError, FleetReference, PeakReference, day_of, is_critical, logit,
};
use crate::policy::{AlertingConfig, Transition, hysteresis};

/// Feature rows of a history, with entity names resolved, in window order.
#[derive(Debug, Default, Clone)]
pub struct TrainingRows {
    /// (window end, terminal, site, region, features)
    pub terminal_voltage: Vec<(i64, String, String, String, Vec<f64>)>,
    /// (window end, site, region, features)
    pub site_voltage: Vec<(i64, String, String, Vec<f64>)>,
    /// (window end, region, features)
    pub network: Vec<(i64, String, Vec<f64>)>,
    /// (window end, terminal, site, region, features)
    pub aging: Vec<(i64, String, String, String, Vec<f64>)>,
    /// (window end, MODEL/FIRMWARE, features)
    #[doc(alias = "release")]
    pub firmware: Vec<(i64, String, Vec<f64>)>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Distinct (terminal, UTC day) pairs with a report: the exposure.
    pub terminal_days: u64,
    /// The last UTC day counted per terminal: windows come in time order,
    /// so a terminal's days only move forward.
    last_day: HashMap<String, i64>,
    /// Terminal-days of histories that train one kind only
    /// ([`TrainingRows::merge_for`]): they count in that kind's budget alone.
    kind_terminal_days: Vec<(AlertKind, u64)>,
}

/// Each entity of one training history (by scope and name) with its first
/// and last window end ([`TrainingRows::spans`]).
#[derive(Debug, Clone, Default)]
pub struct EntitySpans(BTreeMap<(Scope, String), (i64, i64)>);

impl EntitySpans {
    /// The first entity (by scope, then name) that both histories have
    /// windows of at the same time, with the period they share. Training
    /// tells independent histories apart by time alone: an entity's windows
    /// are replayed as one sequence and labels are matched by name and time,
    /// so two fleets that name a terminal, site, region or cohort alike over
    /// the same days would be read as one, and a label of one would mark
    /// both. Compared history by history: the span of several merged would
    /// cover the gaps between them.
    pub fn shared_with(&self, other: &EntitySpans) -> Option<SharedEntity> {
        other.0.iter().find_map(|(key, &(from, to))| {
            let &(f, t) = self.0.get(key)?;
            (f <= to && from <= t).then(|| SharedEntity {
                scope: key.0,
                entity: key.1.clone(),
                from_ms: f.max(from),
                to_ms: t.min(to),
            })
        })
    }
}

/// The first of `earlier` histories that shares an entity with `new` at
/// the same time ([`EntitySpans::shared_with`]), by its index.
pub fn first_shared<'a>(
    earlier: impl IntoIterator<Item = &'a EntitySpans>,
    new: &EntitySpans,
) -> Option<(usize, SharedEntity)> {
    earlier.into_iter().enumerate().find_map(|(i, e)| e.shared_with(new).map(|s| (i, s)))
}

/// An entity two training histories both have windows of at the same time
/// ([`EntitySpans::shared_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntity {
    pub scope: Scope,
    pub entity: String,
    /// The period both have its windows in (window ends, epoch ms).
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TrainingRows {
    fn count_day(&mut self, terminal: &str, day: i64) {
        match self.last_day.get_mut(terminal) {
            Some(last) if *last >= day => {}
            Some(last) => {
                *last = day;
                self.terminal_days += 1;
            }
            None => {
                self.last_day.insert(terminal.to_string(), day);
                self.terminal_days += 1;
            }
        }
    }

    /// Appends the rows of another, independent history (another fleet, or
    /// another period computed by its own feature engine).
    pub fn merge(&mut self, other: TrainingRows) {
        self.terminal_voltage.extend(other.terminal_voltage);
        self.site_voltage.extend(other.site_voltage);
        self.network.extend(other.network);
        self.aging.extend(other.aging);
        self.firmware.extend(other.firmware);
        self.first_ms = match (self.first_ms, other.first_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ms = match (self.last_ms, other.last_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.terminal_days += other.terminal_days;
        for (kind, days) in other.kind_terminal_days {
            self.add_kind_terminal_days(kind, days);
        }
    }

    /// Appends the rows of another, independent history that trains one
    /// kind's detectors only: a fleet whose labels cover that kind alone,
    /// since its other kinds' faults, unlabelled, would teach the other
    /// detectors that they are healthy. Its terminal-days count in that
    /// kind's false-alert budget only.
    pub fn merge_for(&mut self, kind: AlertKind, mut other: TrainingRows) {
        other.keep_only(kind);
        let days = other.terminal_days_for(kind);
        other.terminal_days = 0;
        other.kind_terminal_days.clear();
        self.merge(other);
        self.add_kind_terminal_days(kind, days);
    }

    /// Drops every row that does not train `kind`'s detectors.
    pub fn keep_only(&mut self, kind: AlertKind) {
        use AlertKind::{FirmwareRegression, HardwareAging, NetworkDegradation, VoltageInstability};
        if kind != VoltageInstability {
            self.terminal_voltage.clear();
            self.site_voltage.clear();
        }
        if kind != NetworkDegradation {
            self.network.clear();
        }
        if kind != HardwareAging {
            self.aging.clear();
        }
        if kind != FirmwareRegression {
            self.firmware.clear();
        }
    }

    /// Each entity's first and last window end in this history: what
    /// [`EntitySpans::shared_with`] compares between independent histories.
    pub fn spans(&self) -> EntitySpans {
        // Keyed by borrowed names while the rows are walked (millions of
        // them), owned once per entity at the end.
        let mut spans: BTreeMap<(Scope, &str), (i64, i64)> = BTreeMap::new();
        let windows = self.terminal_voltage.iter().map(|r| (Scope::Terminal, r.0, r.1.as_str()));
        let windows = windows.chain(self.aging.iter().map(|r| (Scope::Terminal, r.0, r.1.as_str())));
        let windows = windows.chain(self.site_voltage.iter().map(|r| (Scope::Site, r.0, r.1.as_str())));
        let windows = windows.chain(self.network.iter().map(|r| (Scope::Region, r.0, r.1.as_str())));
        for (scope, ts, entity) in windows.chain(self.firmware.iter().map(|r| (Scope::Cohort, r.0, r.1.as_str()))) {
            let span = spans.entry((scope, entity)).or_insert((ts, ts));
            *span = (span.0.min(ts), span.1.max(ts));
        }
        EntitySpans(spans.into_iter().map(|((scope, entity), span)| ((scope, entity.to_owned()), span)).collect())
    }

    fn add_kind_terminal_days(&mut self, kind: AlertKind, days: u64) {
        match self.kind_terminal_days.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, d)) => *d += days,
            None => self.kind_terminal_days.push((kind, days)),
        }
    }

    /// The terminal-days whose windows train `kind`: the exposure its
    /// false-alert budget is counted against.
    pub fn terminal_days_for(&self, kind: AlertKind) -> u64 {
        self.terminal_days + self.kind_terminal_days.iter().filter(|(k, _)| *k == kind).map(|(_, d)| d).sum::<u64>()
    }

    /// Kinds trained on more terminal-days than [`TrainingRows::terminal_days`],
    /// with theirs.
    pub fn kind_terminal_days(&self) -> Vec<(AlertKind, u64)> {
        self.kind_terminal_days.iter().map(|(k, _)| (*k, self.terminal_days_for(*k))).collect()
    }

    /// Adds the rows of closed windows, resolving names through `engine`.
    pub fn add(&mut self, engine: &FeatureEngine, windows: &[WindowRows]) {
        for w in windows {
            self.first_ms = Some(self.first_ms.map_or(w.end_ms, |f| f.min(w.end_ms)));
            self.last_ms = Some(self.last_ms.map_or(w.end_ms, |l| l.max(w.end_ms)));
            let day = w.end_ms.div_euclid(86_400_000);
            for r in &w.terminal_voltage {
                let t = engine.terminal_id(r.terminal).to_string();
                self.count_day(&t, day);
                self.terminal_voltage.push((
                    w.end_ms,
                    t,
                    engine.site_id(engine.terminal_site(r.terminal)).to_string(),
                    engine.region_name(engine.terminal_region(r.terminal)).to_string(),
                    r.features.to_vec(),
                ));
            }
            for r in &w.site_voltage {
                self.site_voltage.push((
                    w.end_ms,
                    engine.site_id(r.site).to_string(),
                    engine.region_name(engine.site_region(r.site)).to_string(),
                    r.features.to_vec(),
                ));
            }
            for r in &w.network {
                self.network.push((w.end_ms, engine.region_name(r.region).to_string(), r.features.to_vec()));
            }
            for r in &w.firmware {
                self.firmware.push((w.end_ms, r.entity.to_string(), r.features.to_vec()));
            }
            for r in &w.aging {
                let t = engine.terminal_id(r.terminal).to_string();
                self.count_day(&t, day);
                self.aging.push((
                    w.end_ms,
                    t,
                    engine.site_id(engine.terminal_site(r.terminal)).to_string(),
                    engine.region_name(engine.terminal_region(r.terminal)).to_string(),
                    r.features.to_vec(),
                ));
            }
        }
    }
}

/// Training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// False alerts per 1,000 terminal-days that calibration aims at, per
    /// alert kind, on the healthy windows of the training data; a kind with
    /// detectors at two scopes (voltage: site and terminal) splits it
    /// evenly between them, since an on-call engineer counts false pages per
    /// kind. Default 0.2 (the acceptance bar is 0.5 on unseen data).
    pub target_false_alerts_per_1000_terminal_days: f64,
    /// Kinds calibrated to another target than that one: a kind whose
    /// alert reaches further (a firmware alert halts a rollout fleet-wide)
    /// may be held to a stricter budget. Default none.
    pub kind_targets: Vec<(AlertKind, f64)>,
    /// Kinds whose firing alerts are held up by windows at or above the
    /// threshold this target would calibrate, when that is below the one
    /// their own target does ([`Detector::resolve_threshold`]): a kind held
    /// to a strict target fires on strict evidence and resolves only when
    /// its windows look ordinary again. Default none.
    pub resolve_targets: Vec<(AlertKind, f64)>,
    /// L2 penalty of the logistic regressions. Default 1.0.
    pub l2: f64,
    /// Most healthy windows used to fit one detector (all are used to
    /// calibrate). Default 200000.
    pub max_fit_negatives: usize,
    /// How many times each window of an analyst's not_incident label counts
    /// in the fit, against one for an unlabelled healthy window. Default 20:
    /// a reviewed false alarm is worth more than a window nobody looked at,
    /// and it is rare, so without weight the fit would barely see it.
    pub feedback_weight: usize,
    /// Calibration keeps within the target the upper bound, at this
    /// confidence, of the false-alert rate the training windows show, not
    /// the rate itself: the training fleets spend a budget of 0.2 per 1,000
    /// terminal-days in a handful of alerts, and a threshold set where a
    /// handful just fits is optimistic on a fleet it has not seen. Where
    /// the training data are too few to show the target at this confidence
    /// even with no alert, it keeps to none. Default none (the rate itself).
    pub false_alert_confidence: Option<f64>,
}

impl TrainConfig {
    /// The calibration target of `kind`, per 1,000 terminal-days.
    pub fn target_for(&self, kind: AlertKind) -> f64 {
        self.kind_targets
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map_or(self.target_false_alerts_per_1000_terminal_days, |(_, t)| *t)
    }

    /// The target whose threshold holds `kind`'s firing alerts, if any.
    pub fn resolve_target_for(&self, kind: AlertKind) -> Option<f64> {
        self.resolve_targets.iter().rev().find(|(k, _)| *k == kind).map(|(_, t)| *t)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            target_false_alerts_per_1000_terminal_days: 0.2,
            kind_targets: Vec::new(),
            resolve_targets: Vec::new(),
            l2: 1.0,
            max_fit_negatives: 200_000,
            feedback_weight: 20,
            false_alert_confidence: None,
        }
    }
}

/// The label state of one window: inside an incident, clear of every
/// incident, inside a span an analyst marked not_incident (healthy, and
/// surely so), or too close to an incident to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Positive,
    Negative,
    Feedback,
    Excluded,
}

impl Truth {
    fn healthy(self) -> bool {
        matches!(self, Truth::Negative | Truth::Feedback)
    }
}

/// Label spans (start, end, verdict) by (kind, scope, entity).
type Spans = HashMap<(AlertKind, Scope, String), Vec<(i64, i64, Verdict)>>;

struct LabelIndex {
    spans: Spans,
}

impl LabelIndex {
    fn new(labels: &[IncidentLabel]) -> Self {
        let mut spans: HashMap<_, Vec<_>> = HashMap::new();
        for l in labels {
            spans.entry((l.kind, l.scope, l.entity.clone())).or_default().push((l.start, l.end, l.verdict));
        }
        LabelIndex { spans }
    }

    /// Positive when an incident is active at `t` (past its first `skip_ms`),
    /// excluded within `margin_ms` around it, negative otherwise. Inside a
    /// not_incident label it is feedback: a firm negative, even within an
    /// incident's margin (the analyst looked), though not inside an incident
    /// (the incident label is the more specific claim).
    fn truth(&self, kind: AlertKind, scope: Scope, entity: &str, t: i64, skip_ms: i64, margin_ms: i64) -> Truth {
        let Some(spans) = self.spans.get(&(kind, scope, entity.to_string())) else { return Truth::Negative };
        let (mut truth, mut feedback) = (Truth::Negative, false);
        for &(start, end, verdict) in spans {
            if verdict == Verdict::NotIncident {
                feedback |= t >= start && t <= end;
                continue;
            }
            if t >= start + skip_ms && t <= end {
                return Truth::Positive;
            }
            if t >= start - margin_ms && t <= end + margin_ms {
                truth = Truth::Excluded;
            }
        }
        if feedback { Truth::Feedback } else { truth }
    }

    fn active(&self, kind: AlertKind, scope: Scope, entity: &str, t: i64, margin_ms: i64) -> bool {
        self.spans.get(&(kind, scope, entity.to_string())).is_some_and(|s| {
            s.iter().any(|&(a, b, v)| v == Verdict::Incident && t >= a - margin_ms && t <= b + margin_ms)
        })
    }
}

const MIN: i64 = 60_000;

/// Fits every detector and calibrates its thresholds.
pub fn train(
    rows: &TrainingRows,
    labels: &[IncidentLabel],
    features: FeatureConfig,
    config: &TrainConfig,
    trained_on: TrainingData,
    version: String,
) -> Result<ModelSet, DetectorError> {
    let index = LabelIndex::new(labels);
    let alerting = AlertingConfig::default();
    let window = features.window_ms;
    let margin = 30 * MIN;
    use AlertKind::{FirmwareRegression, HardwareAging, NetworkDegradation, VoltageInstability};

    // Site voltage: mains problems. One terminal's failing supply is a
    // healthy window for the site: its features are the second-worst
    // terminal's, and the terminal detector speaks for that supply. A
    // one-terminal site is that terminal and is not scored at site scope.
    let site: Vec<Labelled<'_>> = rows
        .site_voltage
        .iter()
        .map(|(t, site, _, f)| {
            let truth = if !scored_at_site_scope(f) {
                Truth::Excluded
            } else {
                index.truth(VoltageInstability, Scope::Site, site, *t, window, margin)
            };
            (*t, site.as_str(), f.as_slice(), truth)
        })
        .collect();
    // Terminal voltage: failing power supplies; terminals of a site with a
    // mains problem are left out (the site alert covers them).
    let terminal: Vec<Labelled<'_>> = rows
        .terminal_voltage
        .iter()
        .map(|(t, term, site, _, f)| {
            let mut truth = index.truth(VoltageInstability, Scope::Terminal, term, *t, 0, margin);
            if truth != Truth::Feedback && index.active(VoltageInstability, Scope::Site, site, *t, margin) {
                truth = Truth::Excluded;
            }
            (*t, term.as_str(), f.as_slice(), truth)
        })
        .collect();
    // Network: regional incidents, past their first window (the ramp-in).
    let network: Vec<Labelled<'_>> = rows
        .network
        .iter()
        .map(|(t, region, f)| {
            (
                *t,
                region.as_str(),
                f.as_slice(),
                index.truth(NetworkDegradation, Scope::Region, region, *t, window, margin),
            )
        })
        .collect();
    // Aging: from onset to failure; the days after a failure (broken, then
    // swapped, baselines relearning) are left out.
    let aging: Vec<Labelled<'_>> = rows
        .aging
        .iter()
        .map(|(t, term, _, _, f)| {
            (
                *t,
                term.as_str(),
                f.as_slice(),
                index.truth(HardwareAging, Scope::Terminal, term, *t, 0, 2 * 24 * 60 * MIN),
            )
        })
        .collect();

    // Firmware: a regressed version from its first report to its rollback;
    // the first hour is left out (a canary has barely run), and so is the
    // day after the rollback, while the decayed evidence fades.
    let firmware: Vec<Labelled<'_>> = rows
        .firmware
        .iter()
        .map(|(t, cohort, f)| {
            let truth = index.truth(FirmwareRegression, Scope::Cohort, cohort, *t, 60 * MIN, 24 * 60 * MIN);
            (*t, cohort.as_str(), f.as_slice(), truth)
        })
        .collect();
    // A firmware detector needs windows of a regressed version and of
    // healthy ones; a history without either trains none (the service then
    // scores no firmware, and `termwatch train` says so).
    let has_firmware_incidents =
        firmware.iter().any(|r| r.3 == Truth::Positive) && firmware.iter().any(|r| r.3.healthy());

    let plan: [(AlertKind, Scope, &[&str], &[Labelled<'_>]); 5] = [
        (VoltageInstability, Scope::Site, &names::SITE_VOLTAGE, &site),
        (VoltageInstability, Scope::Terminal, &names::TERMINAL_VOLTAGE, &terminal),
        (NetworkDegradation, Scope::Region, &names::NETWORK, &network),
        (HardwareAging, Scope::Terminal, &names::AGING, &aging),
        (FirmwareRegression, Scope::Cohort, &names::FIRMWARE, &firmware),
    ];
    let plan_kinds = plan.map(|p| p.0);
    let mut detectors = Vec::new();
    let mut figures = Vec::new();
    for (kind, scope, feature_names, truths) in plan {
        if kind == FirmwareRegression && !has_firmware_incidents {
            continue;
        }
        let h = alerting.for_kind(kind);
        let (k, m) = (h.fire_after_bad_windows as usize, h.resolve_after(scope) as usize);
        let incidents: Incidents<'_> = labels
            .iter()
            .filter(|l| l.kind == kind && l.scope == scope && l.verdict == Verdict::Incident)
            .fold(HashMap::new(), |mut m, l| {
                m.entry(l.entity.as_str()).or_default().push((l.start, l.end));
                m
            });
        let scopes = plan_kinds.iter().filter(|k| **k == kind).count().max(1);
        let config = TrainConfig {
            target_false_alerts_per_1000_terminal_days: config.target_for(kind) / scopes as f64,
            resolve_targets: config
                .resolve_target_for(kind)
                .map(|t| vec![(kind, t / scopes as f64)])
                .unwrap_or_default(),
            ..config.clone()
        };
        let terminal_days = rows.terminal_days_for(kind);
        let (d, f) = fit_one(kind, scope, feature_names, truths, &incidents, terminal_days, (k, m), window, &config)?;
        detectors.push(d);
        figures.push(f);
    }

    let incidents_by_kind = AlertKind::ALL
        .iter()
        .map(|k| (*k, labels.iter().filter(|l| l.kind == *k && l.verdict == Verdict::Incident).count()))
        .collect();
    Ok(ModelSet {
        format: FORMAT.to_string(),
        version,
        features,
        alerting,
        detectors,
        trained_on: TrainingData {
            incidents_by_kind,
            not_incident_labels: labels.iter().filter(|l| l.verdict == Verdict::NotIncident).count(),
            kind_terminal_days: rows.kind_terminal_days(),
            ..trained_on
        },
        figures,
    })
}

/// A feature row with its time, entity and label state.
type Labelled<'a> = (i64, &'a str, &'a [f64], Truth);

/// Incident spans `(start, end)` by entity, for one kind and scope.
type Incidents<'a> = HashMap<&'a str, Vec<(i64, i64)>>;

/// One entity's windows `(end, score)` in time order, and its incident spans.
type Replay = (Vec<(i64, f64)>, Vec<(i64, i64)>);

/// Thresholds of the `k` rule tried by calibration, lowest first.
fn threshold_candidates() -> Vec<f64> {
    let mut candidates: Vec<f64> = (1..200).map(|i| i as f64 / 200.0).collect();
    candidates.extend([0.999, 0.9999, 0.99999]);
    candidates
}

/// Critical thresholds tried by calibration, highest (the tier off) first.
/// Coarse on purpose: each costs passes over every healthy window, and a
/// logistic score far out of the healthy range sits near 1 anyway.
const CRITICAL_CANDIDATES: [f64; 24] = [
    CRITICAL_OFF,
    0.9999,
    0.9995,
    0.999,
    0.998,
    0.995,
    0.99,
    0.98,
    0.97,
    0.95,
    0.9,
    0.85,
    0.8,
    0.75,
    0.7,
    0.65,
    0.6,
    0.55,
    0.5,
    0.45,
    0.4,
    0.35,
    0.3,
    0.25,
];

#[allow(clippy::too_many_arguments)]
fn fit_one(
    kind: AlertKind,
    scope: Scope,
    feature_names: &[&str],
    rows: &[Labelled<'_>],
    incidents: &Incidents<'_>,
    terminal_days: u64,
    (k, m): (usize, usize),
    window_ms: i64,
    config: &TrainConfig,
) -> Result<(Detector, DetectorFigures), DetectorError> {
    let positives: Vec<&Labelled<'_>> = rows.iter().filter(|r| r.3 == Truth::Positive).collect();
    let negatives: Vec<&Labelled<'_>> = rows.iter().filter(|r| r.3.healthy()).collect();
    let feedback: Vec<&Labelled<'_>> = rows.iter().filter(|r| r.3 == Truth::Feedback).collect();
    let excluded = rows.len() - positives.len() - negatives.len();
    // Every n-th healthy window, deterministically, to bound the fit's cost;
    // then every feedback window, weighted by repetition.
    let step = negatives.len().div_ceil(config.max_fit_negatives.max(1)).max(1);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for p in &positives {
        x.push(p.2.to_vec());
        y.push(true);
    }
    for n in negatives.iter().step_by(step) {
        x.push(n.2.to_vec());
        y.push(false);
    }
    for f in &feedback {
        for _ in 0..config.feedback_weight {
            x.push(f.2.to_vec());
            y.push(false);
        }
    }
    let mut d = Detector::fit(kind, scope, feature_names, &x, &y, config.l2)?;

    // Healthy windows, in time order per entity, for the false alerts; every
    // window of an entity that had an incident, for the detections.
    let mut healthy: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
    let mut around: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
    for r in rows {
        let incident = incidents.contains_key(r.1);
        if !r.3.healthy() && !incident {
            continue;
        }
        let score = d.score(r.2);
        if r.3.healthy() {
            healthy.entry(r.1).or_default().push((r.0, score));
        }
        if incident {
            around.entry(r.1).or_default().push((r.0, score));
        }
    }
    for v in healthy.values_mut().chain(around.values_mut()) {
        v.sort_by_key(|e| e.0);
    }
    let healthy: Vec<Vec<(i64, f64)>> = sorted_values(healthy);
    let around: Vec<Replay> = sorted_values(
        incidents.iter().filter_map(|(e, spans)| Some((*e, (around.remove(e)?, spans.clone())))).collect(),
    );
    let policy = Policy {
        healthy: &healthy,
        around: &around,
        k,
        m,
        per_1000: 1000.0 / terminal_days.max(1) as f64,
        target: config.target_false_alerts_per_1000_terminal_days,
        confidence: config.false_alert_confidence,
    };
    let calibration = policy.calibrate(&threshold_candidates(), &CRITICAL_CANDIDATES);
    let (threshold, critical) = (calibration.threshold, calibration.critical_threshold);
    d.threshold = threshold;
    d.critical_threshold = critical;
    let recall = positives.iter().filter(|p| d.score(p.2) >= threshold).count() as f64 / positives.len().max(1) as f64;
    let specificity =
        negatives.iter().filter(|n| d.score(n.2) < threshold).count() as f64 / negatives.len().max(1) as f64;
    let resolve_target = config.resolve_target_for(kind);
    if let Some(target) = resolve_target {
        let hold = Policy { target, ..policy }.k_rule_threshold(&threshold_candidates());
        d.resolve_threshold = (hold < threshold).then_some(hold);
    }
    let hold = d.hold_threshold(threshold);
    let (warnings, criticals) = policy.false_alerts_held(threshold, critical, hold);
    // Firmware's windows are versions being rolled out, not a fleet's usual
    // state. Aging's evidence is already against each part's own rate, and
    // a wave of wearing parts (a fleet bought in one year) lifts its tail:
    // calibrated, it lost 18 hours of median lead on the 42-day fleet
    // (docs/model-history.md, termwatch-default-12).
    if !matches!(kind, AlertKind::FirmwareRegression | AlertKind::HardwareAging) {
        // The windows service scores: a one-terminal site is not scored at site scope.
        let scored: Vec<(i64, &str, f64)> = rows
            .iter()
            .filter(|r| scope != Scope::Site || scored_at_site_scope(r.2))
            .map(|r| (r.0, r.1, d.score(r.2)))
            .collect();
        let scores: Vec<f64> = scored.iter().map(|r| r.2).collect();
        d.fleet = fleet_reference(&scores, positives.len(), &policy, threshold, &calibration.k_only)
            .map(|f| FleetReference { peaks: peak_reference(&scored, incidents, window_ms, threshold), ..f });
    }
    let figures = DetectorFigures {
        kind,
        scope,
        positive_windows: positives.len(),
        negative_windows: negatives.len(),
        excluded_windows: excluded,
        feedback_windows: feedback.len(),
        window_recall: recall,
        window_specificity: specificity,
        calibrated_false_alerts_per_1000_terminal_days: (warnings + criticals) as f64 * policy.per_1000,
        calibrated_critical_false_alerts_per_1000_terminal_days: criticals as f64 * policy.per_1000,
        target_false_alerts_per_1000_terminal_days: Some(policy.target),
        incidents: IncidentFigures {
            incidents: calibration.chosen.incidents,
            k_only_detected: calibration.k_only.delays.len(),
            k_only_median_delay_ms: median(calibration.k_only.delays.clone()),
            detected: calibration.chosen.delays.len(),
            median_delay_ms: median(calibration.chosen.delays.clone()),
            first_caught_at_once: calibration.chosen.at_once,
        },
        resolve: resolve_target.map(|target| ResolveFigures {
            target_false_alerts_per_1000_terminal_days: target,
            early_at_threshold: policy.early_resolves(threshold, critical, threshold),
            early_at_resolve_threshold: policy.early_resolves(threshold, critical, hold),
        }),
    };
    Ok((d, figures))
}

/// The share of the training incidents caught at the trained threshold that
/// a threshold lifted by fleet calibration must still catch.
pub const RECALL_KEPT: f64 = 0.95;

/// What fleet calibration compares a watched fleet with: the training
/// windows' score at an upper quantile, and the highest threshold at which
/// the `k` rule alone still catches [`RECALL_KEPT`] of the training
/// incidents the trained threshold catches.
///
/// A watched fleet's windows are not labelled, so its quantile includes
/// its incidents; so does the reference: every training window the
/// detector scored, incidents and all. The training fleets have about four
/// times a real fleet's incidents (`--fault-scale 4`), so a fleet like them
/// in noise scores lower than the reference, and the threshold stays; only
/// a fleet noisier than the training fleets *with* their incidents lifts
/// it. The quantile is taken at four times the training windows' share
/// inside incidents (at least 1 %, at most half), where healthy windows are
/// still most of the tail. None without windows (nothing to compare with).
fn fleet_reference(
    scores: &[f64],
    positives: usize,
    policy: &Policy<'_>,
    threshold: f64,
    caught: &Detections,
) -> Option<FleetReference> {
    if scores.is_empty() {
        return None;
    }
    let share = (4.0 * positives as f64 / scores.len() as f64).clamp(0.01, 0.5);
    let mut logits: Vec<f64> = scores.iter().map(|&s| logit(s)).collect();
    let above = ((share * logits.len() as f64).ceil() as usize).clamp(1, logits.len());
    let at = logits.len() - above;
    let (_, &mut value, _) = logits.select_nth_unstable_by(at, f64::total_cmp);
    let must = (RECALL_KEPT * caught.delays.len() as f64).ceil() as usize;
    let max_threshold = threshold_candidates()
        .into_iter()
        .filter(|&t| t >= threshold)
        .take_while(|&t| policy.detections(t, CRITICAL_OFF).delays.len() >= must)
        .last()
        .unwrap_or(threshold);
    Some(FleetReference { share, logit: value, max_threshold, peaks: None })
}

/// What fleet calibration compares a watched fleet's daily peaks with
/// ([`PeakReference`]): the training entities' daily peaks (every window
/// scored, incidents and all, as a fleet's are) at four times the share of
/// entity-days with an incident (at least 2 %), and the most they may lift
/// the threshold: up to the 5th percentile of the peaks of the incident
/// days that the trained threshold catches, so that a fleet's incidents,
/// which are in its peaks' tail too, cannot lift it past most of what it
/// must catch. None without a single pair of consecutive windows, and
/// None where that share would pass half: where an eighth of the
/// entity-days have an incident (network's regions), the upper half of
/// the peaks is the incidents', not a tail of healthy days, and a fleet's
/// incidents would lift the threshold over its own (tried: network lost
/// one to three incidents a fleet, docs/model-history.md).
///
/// `scored` is `(window end, entity, score)`; a day is a UTC day of window
/// ends, a window ending at midnight the day before's (as the service
/// counts them).
fn peak_reference(
    scored: &[(i64, &str, f64)],
    incidents: &Incidents<'_>,
    window_ms: i64,
    threshold: f64,
) -> Option<PeakReference> {
    let mut by_entity: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
    for &(end, entity, score) in scored {
        by_entity.entry(entity).or_default().push((end, logit(score)));
    }
    let mut peaks = Vec::new();
    let mut incident_peaks = Vec::new();
    for (entity, mut windows) in by_entity {
        windows.sort_by_key(|w| w.0);
        let mut days: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
        for pair in windows.windows(2) {
            let [(before, a), (end, b)] = [pair[0], pair[1]];
            if end - before != window_ms {
                continue;
            }
            let peak = days.entry(day_of(end)).or_insert(f64::NEG_INFINITY);
            *peak = peak.max(a.min(b));
        }
        let spans = incidents.get(entity).map(Vec::as_slice).unwrap_or_default();
        for (day, peak) in days {
            let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
            if spans.iter().any(|&(start, end)| start < to && end > from) {
                incident_peaks.push(peak);
            }
            peaks.push(peak);
        }
    }
    if peaks.is_empty() {
        return None;
    }
    let share = (4.0 * incident_peaks.len() as f64 / peaks.len() as f64).max(0.02);
    if share > 0.5 {
        return None;
    }
    peaks.sort_by(f64::total_cmp);
    let above = ((share * peaks.len() as f64).ceil() as usize).clamp(1, peaks.len());
    let logit_at = peaks[peaks.len() - above];
    let trained = logit(threshold);
    let mut caught: Vec<f64> = incident_peaks.into_iter().filter(|&p| p >= trained).collect();
    caught.sort_by(f64::total_cmp);
    let max_shift = caught.get(caught.len().saturating_sub(1) / 20).map_or(0.0, |p5| (p5 - trained).max(0.0));
    Some(PeakReference { share, logit: logit_at, max_shift })
}

/// The map's values in the order of their keys, so that sums and searches
/// over them do not depend on hashing.
fn sorted_values<V>(map: HashMap<&str, V>) -> Vec<V> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, v)| v).collect()
}

/// The training windows that calibration replays through the alert policy.
struct Policy<'a> {
    /// Healthy windows `(end, score)`, per entity, in time order.
    healthy: &'a [Vec<(i64, f64)>],
    /// Every window of an entity with incidents, and its incident spans.
    around: &'a [Replay],
    k: usize,
    m: usize,
    /// False alerts per 1,000 terminal-days per false alert.
    per_1000: f64,
    target: f64,
    /// [`TrainConfig::false_alert_confidence`].
    confidence: Option<f64>,
}

/// How one `(threshold, critical threshold)` pair does on the incidents.
#[derive(Debug, Clone, PartialEq)]
struct Detections {
    incidents: usize,
    /// Delay of each detected incident, ms.
    delays: Vec<i64>,
    /// Detections whose alert a critical window fired.
    at_once: usize,
}

impl Detections {
    /// Lower is better: the median delay, then the mean (a tie on the median
    /// is common with 5-minute windows), in ms.
    fn delay_key(&self) -> (f64, f64) {
        let mean = self.delays.iter().map(|&d| d as f64).sum::<f64>() / self.delays.len().max(1) as f64;
        (median(self.delays.clone()).unwrap_or(f64::INFINITY), mean)
    }
}

/// The outcome of calibration: the pair chosen, and the `k` rule alone (at
/// the same threshold) for comparison.
#[derive(Debug, Clone, PartialEq)]
struct Calibration {
    threshold: f64,
    critical_threshold: f64,
    chosen: Detections,
    k_only: Detections,
}

impl Policy<'_> {
    /// False alerts `(warning, critical)` on the healthy windows.
    fn false_alerts(&self, threshold: f64, critical: f64) -> (usize, usize) {
        self.false_alerts_held(threshold, critical, threshold)
    }

    /// The same with a firing alert held up by windows at or above `hold`.
    fn false_alerts_held(&self, threshold: f64, critical: f64, hold: f64) -> (usize, usize) {
        self.healthy.iter().fold((0, 0), |(w, c), seq| {
            let (dw, dc) = false_alerts(seq, threshold, critical, hold, self.k, self.m);
            (w + dw, c + dc)
        })
    }

    /// Training incidents whose alert resolves before the incident ends,
    /// with firing alerts held up by windows at or above `hold`.
    fn early_resolves(&self, threshold: f64, critical: f64, hold: f64) -> usize {
        let mut early = 0;
        for (seq, spans) in self.around {
            let (firings, resolves) = alert_events(seq, threshold, critical, hold, self.k, self.m);
            for &(start, end) in spans {
                let Some(&(fired, _)) = firings.iter().find(|f| f.0 >= start && f.0 <= end) else { continue };
                early += usize::from(resolves.iter().any(|&r| r > fired && r < end));
            }
        }
        early
    }

    /// The lowest threshold at which the `k` rule alone keeps the false
    /// alerts within the target (the highest candidate when none does).
    fn k_rule_threshold(&self, thresholds: &[f64]) -> f64 {
        thresholds
            .iter()
            .copied()
            .find(|&t| self.admissible(t, CRITICAL_OFF))
            .unwrap_or_else(|| thresholds.last().copied().unwrap_or(0.99999))
    }

    fn admissible(&self, threshold: f64, critical: f64) -> bool {
        let (w, c) = self.false_alerts(threshold, critical);
        let Some(confidence) = self.confidence else {
            return (w + c) as f64 * self.per_1000 <= self.target;
        };
        // The false alerts the target allows on the training windows.
        let allowed = self.target / self.per_1000;
        if poisson_upper_bound(0, confidence) > allowed {
            return w + c == 0;
        }
        // The bound is above the count itself: no need to compute it for
        // the thousands of alerts of the lowest thresholds.
        (w + c) as f64 <= allowed && poisson_upper_bound(w + c, confidence) <= allowed
    }

    fn detections(&self, threshold: f64, critical: f64) -> Detections {
        let mut d = Detections { incidents: 0, delays: Vec::new(), at_once: 0 };
        for (seq, spans) in self.around {
            let firings = firings(seq, threshold, critical, threshold, self.k, self.m);
            for &(start, end) in spans {
                if seq.iter().all(|w| w.0 < start || w.0 > end) {
                    continue;
                }
                d.incidents += 1;
                if let Some(&(ts, at_once)) = firings.iter().find(|f| f.0 >= start && f.0 <= end) {
                    d.delays.push(ts - start);
                    d.at_once += usize::from(at_once);
                }
            }
        }
        d
    }

    /// Picks `(threshold, critical threshold)`. First the `k` rule alone:
    /// the lowest threshold within the false-alert target, as before the
    /// critical tier existed. Then each critical threshold, from high to low,
    /// while both tiers together stay within the target at that threshold.
    /// Among those that detect at least as many training incidents as the
    /// `k` rule alone, the one with the shortest median delay, then mean
    /// delay, wins; ties keep the higher critical threshold, so the tier
    /// stays off unless it makes detection faster.
    ///
    /// The threshold itself does not move to make room for the tier. Raising
    /// it was tried (searching, per critical threshold, the lowest threshold
    /// within the target): on the training fleets it bought seconds of
    /// median delay with a site threshold 2.6 times higher, and that less
    /// sensitive `k` rule missed a 30-minute mains incident on an unseen
    /// fleet. So the tier only spends what the `k` rule leaves of the budget.
    fn calibrate(&self, thresholds: &[f64], criticals: &[f64]) -> Calibration {
        let threshold = self.k_rule_threshold(thresholds);
        let k_only = self.detections(threshold, CRITICAL_OFF);
        let mut best = (threshold, CRITICAL_OFF, k_only.clone());
        for &critical in criticals.iter().filter(|&&c| c < CRITICAL_OFF && c > threshold) {
            if !self.admissible(threshold, critical) {
                // A lower critical threshold only adds at-once alerts.
                break;
            }
            let found = self.detections(threshold, critical);
            if found.delays.len() >= k_only.delays.len() && found.delay_key() < best.2.delay_key() {
                best = (threshold, critical, found);
            }
        }
        let (threshold, critical_threshold, chosen) = best;
        Calibration { threshold, critical_threshold, chosen, k_only }
    }
}

/// Firing events `(window end, fired at once)` and the ends of the windows
/// that resolved them, of the alert policy of service on one entity's
/// windows (its hysteresis, the same function), a firing alert held up by
/// windows at or above `hold`.
fn alert_events(
    seq: &[(i64, f64)],
    threshold: f64,
    critical: f64,
    hold: f64,
    k: usize,
    m: usize,
) -> (Vec<(i64, bool)>, Vec<i64>) {
    let (k, m) = (u32::try_from(k).unwrap_or(u32::MAX), u32::try_from(m).unwrap_or(u32::MAX));
    let (mut run, mut firing) = (0u32, false);
    let (mut fired, mut resolved) = (Vec::new(), Vec::new());
    for &(t, s) in seq {
        match hysteresis(firing, &mut run, s >= threshold, s >= hold, is_critical(s, critical), k, m) {
            Transition::Fire { by_run } => {
                fired.push((t, !by_run));
                firing = true;
            }
            Transition::Resolve => {
                resolved.push(t);
                firing = false;
            }
            Transition::Stay => {}
        }
    }
    (fired, resolved)
}

/// Firing events `(window end, fired at once)`, as [`alert_events`].
fn firings(seq: &[(i64, f64)], threshold: f64, critical: f64, hold: f64, k: usize, m: usize) -> Vec<(i64, bool)> {
    alert_events(seq, threshold, critical, hold, k, m).0
}

/// Alerts `(fired by k bad windows, fired at once by a critical window)`
/// that the alert policy of service would fire on one entity's healthy
/// windows.
fn false_alerts(seq: &[(i64, f64)], threshold: f64, critical: f64, hold: f64, k: usize, m: usize) -> (usize, usize) {
    firings(seq, threshold, critical, hold, k, m)
        .iter()
        .fold((0, 0), |(w, c), f| if f.1 { (w, c + 1) } else { (w + 1, c) })
}

fn median(values: Vec<i64>) -> Option<f64> {
    crate::eval::median(values)
}

/// The upper bound, at `confidence`, of a Poisson mean of which `n` events
/// were seen: the mean at which seeing `n` or fewer has probability
/// `1 - confidence` (for `n = 0`, `-ln(1 - confidence)`).
fn poisson_upper_bound(n: usize, confidence: f64) -> f64 {
    let tail = (1.0 - confidence).clamp(1e-12, 1.0 - 1e-12);
    // P(X <= n) at mean `mu`, summed in order so that no term overflows.
    let cdf = |mu: f64| {
        let (mut term, mut sum) = ((-mu).exp(), 0.0);
        for i in 0..=n {
            if i > 0 {
                term *= mu / i as f64;
            }
            sum += term;
        }
        sum
    };
    // The cdf falls as the mean grows: bisect between n and a mean far past it.
    let (mut lo, mut hi) = (n as f64, n as f64 + 10.0 + 10.0 * (n as f64).sqrt() - tail.ln());
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) > tail { lo = mid } else { hi = mid }
    }
    hi
}

/// FNV-1a 64-bit, for fingerprints of training data (the feature crate's,
/// which keys firmware versions with it).
pub use termwatch_features::{FNV_OFFSET, fnv1a};

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 entities over 10 days of 5-minute windows, each day quiet at
    /// log-odds -6 but for two windows in a row at its own peak, spread
    /// over [-4, 0); the first `with_incidents` entities have an hour at
    /// +3 on each of `days` days from day 3, labelled.
    type Spans = Vec<(String, (i64, i64))>;

    fn peak_fleet(with_incidents: usize, days: i64) -> (Vec<(i64, String, f64)>, Spans) {
        const W: i64 = 300_000;
        let mut scored = Vec::new();
        let mut spans = Vec::new();
        for e in 0..100usize {
            for d in 0..10i64 {
                let day = (20_000 + d) * DAY_MS;
                let peak = -4.0 + 4.0 * (e as f64 * 10.0 + d as f64) / 1000.0;
                let incident = e < with_incidents && (3..3 + days).contains(&d);
                for i in 1..=288i64 {
                    let z = match i {
                        100 | 101 => peak,
                        120..132 if incident => 3.0,
                        _ => -6.0,
                    };
                    scored.push((day + i * W, format!("T-{e}"), crate::detector::sigmoid(z)));
                }
                if incident {
                    spans.push((format!("T-{e}"), (day + 119 * W, day + 132 * W)));
                }
            }
        }
        (scored, spans)
    }

    fn reference_of(with_incidents: usize, days: i64) -> Option<PeakReference> {
        let (scored, spans) = peak_fleet(with_incidents, days);
        let scored: Vec<(i64, &str, f64)> = scored.iter().map(|(t, e, s)| (*t, e.as_str(), *s)).collect();
        let mut incidents: Incidents<'_> = HashMap::new();
        for (e, span) in &spans {
            incidents.entry(e.as_str()).or_default().push(*span);
        }
        peak_reference(&scored, &incidents, 300_000, 0.5)
    }

    #[test]
    fn the_peak_reference_is_the_training_days_peaks_at_four_times_their_incidents_share() {
        let r = reference_of(10, 1).expect("a reference");
        // 10 incident days of 1,000: 4 %, the top 40 peaks: the incidents'
        // 10 at +3, then the healthy days' top 30 (near -0.12).
        assert!((r.share - 0.04).abs() < 1e-12, "{r:?}");
        assert!(r.logit > -0.2 && r.logit < -0.08, "{r:?}");
        // Every caught incident day peaks at +3, 3 above the threshold's 0.
        assert!((r.max_shift - 3.0).abs() < 1e-9, "{r:?}");
        // Fewer incidents: the share's floor, 2 %.
        assert_eq!(reference_of(2, 1).map(|r| r.share), Some(0.02));
        assert_eq!(reference_of(0, 1).map(|r| r.max_shift), Some(0.0), "none caught: the peaks lift nothing");
        // An incident on more than an eighth of the days (140 of 1,000):
        // the upper half of the peaks is incidents, no tail to compare.
        assert_eq!(reference_of(20, 7), None);
        assert!(reference_of(20, 6).is_some(), "120 of 1,000: 48 %");
    }

    #[test]
    fn false_alerts_need_k_consecutive_bad_windows() {
        let seq: Vec<(i64, f64)> =
            [0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.9, 0.9].iter().enumerate().map(|(i, s)| (i as i64, *s)).collect();
        assert_eq!(false_alerts(&seq, 0.5, CRITICAL_OFF, 0.5, 2, 1), (2, 0));
        assert_eq!(false_alerts(&seq, 0.5, CRITICAL_OFF, 0.5, 3, 1), (1, 0));
        assert_eq!(false_alerts(&seq, 0.95, CRITICAL_OFF, 0.95, 1, 1), (0, 0));
        // Resolving takes two good windows: the single good window between
        // the runs does not, so the second run is the same alert.
        assert_eq!(false_alerts(&seq, 0.5, CRITICAL_OFF, 0.5, 2, 2), (1, 0));
    }

    fn seq(scores: &[f64]) -> Vec<(i64, f64)> {
        scores.iter().enumerate().map(|(i, s)| (i as i64, *s)).collect()
    }

    #[test]
    fn false_alerts_of_the_at_once_tier() {
        let s = seq(&[0.97, 0.1, 0.6, 0.6, 0.1, 0.6, 0.97, 0.97, 0.1, 1.0]);
        // Tier off: only the run of two (0.6, 0.6) and the run 0.6, 0.97, 0.97 fire.
        assert_eq!(false_alerts(&s, 0.5, CRITICAL_OFF, 0.5, 2, 1), (2, 0));
        // At 0.95 the lone 0.97 fires at once; the run 0.6, 0.97 fires on its
        // second window, which the k rule would have done too: a warning.
        // A score of exactly 1.0 is critical when the tier is on...
        assert_eq!(false_alerts(&s, 0.5, 0.95, 0.5, 2, 1), (2, 2));
        // ...and never when it is off (a logistic score can round to 1.0).
        assert_eq!(false_alerts(&seq(&[1.0, 0.1, 1.0]), 0.5, CRITICAL_OFF, 0.5, 2, 1), (0, 0));
        // One alert per entity: critical windows while firing add none.
        assert_eq!(false_alerts(&seq(&[0.99, 0.99, 0.99, 0.99]), 0.5, 0.95, 0.5, 2, 3), (0, 1));
        // Resolution counts good windows as before; the next critical window fires again.
        assert_eq!(false_alerts(&seq(&[0.99, 0.1, 0.1, 0.99]), 0.5, 0.95, 0.5, 2, 2), (0, 2));
        assert_eq!(false_alerts(&seq(&[0.99, 0.1, 0.99]), 0.5, 0.95, 0.5, 2, 2), (0, 1));
    }

    /// A policy over synthetic windows: `healthy` entities' scores, and one
    /// incident entity per `(scores, incident start index)`, 5-minute windows.
    fn calibrate(healthy: &[Vec<f64>], incidents: &[(Vec<f64>, i64)], terminal_days: u64) -> Calibration {
        const W: i64 = 300_000;
        let timed = |v: &[f64]| -> Vec<(i64, f64)> { v.iter().enumerate().map(|(i, s)| (i as i64 * W, *s)).collect() };
        let healthy: Vec<_> = healthy.iter().map(|v| timed(v)).collect();
        let around: Vec<_> =
            incidents.iter().map(|(v, start)| (timed(v), vec![(start * W - W / 2, v.len() as i64 * W)])).collect();
        let policy = Policy {
            healthy: &healthy,
            around: &around,
            k: 2,
            m: 3,
            per_1000: 1000.0 / terminal_days as f64,
            target: 0.2,
            confidence: None,
        };
        policy.calibrate(&threshold_candidates(), &CRITICAL_CANDIDATES)
    }

    #[test]
    fn an_alert_held_at_a_looser_targets_threshold_outlasts_its_incidents_ebb() {
        const W: i64 = 300_000;
        let timed = |v: &[f64]| -> Vec<(i64, f64)> { v.iter().enumerate().map(|(i, s)| (i as i64 * W, *s)).collect() };
        // An incident that fires at 0.9, ebbs to 0.6 for five windows (a
        // night: m = 3 resolves it) and comes back before it ends.
        let mut ebbing = vec![0.1; 4];
        ebbing.extend([0.9, 0.9, 0.9, 0.6, 0.6, 0.6, 0.6, 0.6, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]);
        let around = vec![(timed(&ebbing), vec![(4 * W, 13 * W)])];
        // Healthy entities: one reaches 0.9 twice with 0.2 between, one
        // sits at 0.55 for a while, one reaches 0.3 three times.
        let healthy = vec![
            timed(&[0.0, 0.9, 0.9, 0.2, 0.2, 0.2, 0.9, 0.9, 0.0, 0.0, 0.0]),
            timed(&[0.0, 0.55, 0.55, 0.55, 0.0, 0.0, 0.0]),
            timed(&[0.3, 0.3, 0.0, 0.0, 0.0, 0.3, 0.3, 0.0, 0.0, 0.0, 0.3, 0.3, 0.0, 0.0, 0.0]),
        ];
        // 1,000 terminal-days: a target of 2 allows two false alerts, 1 one.
        let policy =
            Policy { healthy: &healthy, around: &around, k: 2, m: 3, per_1000: 1.0, target: 1.0, confidence: None };
        let strict = policy.k_rule_threshold(&threshold_candidates());
        assert_eq!(strict, 0.905, "above both pairs of 0.9: no false alert");
        let hold = Policy { target: 2.0, ..policy }.k_rule_threshold(&threshold_candidates());
        assert_eq!(hold, 0.555, "two false alerts allowed: the 0.55s stay quiet");
        // Fired at 0.85, the incident's ebb resolves its alert at the
        // threshold but not held at 0.555; its end still resolves it.
        let threshold = 0.85;
        assert_eq!(policy.early_resolves(threshold, CRITICAL_OFF, threshold), 1);
        assert_eq!(policy.early_resolves(threshold, CRITICAL_OFF, hold), 0);
        assert_eq!(alert_events(&around[0].0, threshold, CRITICAL_OFF, hold, 2, 3).1, [16 * W]);
        // Held, a healthy entity's alert still resolves when its windows
        // fall below the hold; held as low as its 0.2s, its two would be one.
        assert_eq!(policy.false_alerts_held(threshold, CRITICAL_OFF, threshold), (2, 0));
        assert_eq!(policy.false_alerts_held(threshold, CRITICAL_OFF, hold), (2, 0));
        assert_eq!(policy.false_alerts_held(threshold, CRITICAL_OFF, 0.2), (1, 0));
    }

    /// Healthy entities whose scores return to 0.3 in pairs every six
    /// windows: below 0.3 the k rule fires again and again, above it never.
    fn healthy_fleet(n: usize) -> Vec<Vec<f64>> {
        (0..n).map(|_| [0.1, 0.1, 0.1, 0.1, 0.3, 0.3].repeat(80)).collect()
    }

    #[test]
    fn calibration_switches_the_at_once_tier_on_when_it_is_admissible_and_faster() {
        // 10,000 terminal-days allow 2 false alerts. One healthy entity has a
        // pair of 0.5s (one k-rule false alert above 0.3) and one lone 0.92
        // (a false alert only for an at-once tier at or below it).
        let mut healthy = healthy_fleet(3);
        healthy[0][100] = 0.5;
        healthy[0][101] = 0.5;
        healthy[0][300] = 0.92;
        // Incidents open with one window far out, then stay bad.
        let incident = (vec![0.1, 0.1, 0.93, 0.8, 0.8, 0.8, 0.1], 2);
        let c = calibrate(&healthy, &[incident.clone(), incident], 10_000);
        assert_eq!(c.k_only.delays, vec![W5 / 2 + W5; 2]);
        // Catching the 0.93 at once needs a critical threshold at or below
        // it; the first candidate, 0.9, also fires on the lone 0.92, which
        // the budget allows next to the k rule's one false alert. The k
        // rule's threshold stays where the k rule alone put it.
        assert_eq!((c.threshold, c.critical_threshold), (0.305, 0.9), "{c:?}");
        assert_eq!((c.chosen.delays.clone(), c.chosen.at_once), (vec![W5 / 2; 2], 2));
        let timed: Vec<Vec<(i64, f64)>> =
            healthy.iter().map(|v| v.iter().enumerate().map(|(i, s)| (i as i64, *s)).collect()).collect();
        let (warnings, criticals) = timed.iter().fold((0, 0), |(w, c), seq| {
            let (dw, dc) = false_alerts(seq, 0.305, 0.9, 0.305, 2, 3);
            (w + dw, c + dc)
        });
        assert_eq!((warnings, criticals), (1, 1));
    }

    #[test]
    fn poisson_upper_bounds() {
        // Standard values: -ln(0.1), and half the chi-square quantiles.
        for (n, bound) in [(0, std::f64::consts::LN_10), (1, 3.889_720), (3, 6.680_783), (7, 11.770_914)] {
            assert!((poisson_upper_bound(n, 0.9) - bound).abs() < 1e-5, "{n}: {}", poisson_upper_bound(n, 0.9));
        }
        assert!((poisson_upper_bound(0, 0.5) - std::f64::consts::LN_2).abs() < 1e-9);
        assert!(poisson_upper_bound(400, 0.9) > 425.0 && poisson_upper_bound(400, 0.9) < 427.0);
    }

    #[test]
    fn with_a_confidence_calibration_keeps_the_bound_of_the_false_alerts_within_the_target() {
        // Healthy entities each with one pair of windows at 0.5 + i/100:
        // at a threshold of t, the pairs above t are false alerts.
        let healthy: Vec<Vec<(i64, f64)>> = (0..10)
            .map(|i| {
                let mut v = vec![0.1; 40];
                v[20] = 0.5 + f64::from(i) / 100.0;
                v[21] = v[20];
                v.into_iter().enumerate().map(|(t, s)| (t as i64, s)).collect()
            })
            .collect();
        let policy = |confidence| Policy {
            healthy: &healthy,
            around: &[],
            k: 2,
            m: 3,
            // 39,000 terminal-days and 0.2 per 1,000 allow 7.8 false alerts.
            per_1000: 1000.0 / 39_000.0,
            target: 0.2,
            confidence,
        };
        let lowest = |p: &Policy<'_>| threshold_candidates().into_iter().find(|&t| p.admissible(t, CRITICAL_OFF));
        let alerts = |t: f64| healthy.iter().filter(|v| v[20].1 >= t).count();
        // The count itself: 7 of the 10 pairs fire.
        assert_eq!(lowest(&policy(None)).map(alerts), Some(7));
        // Its 90 % upper bound: at most 3 (3 gives 6.68, 4 gives 7.99).
        assert_eq!(lowest(&policy(Some(0.9))).map(alerts), Some(3));
        // Too little data to show the target even with none: none.
        let few = Policy { per_1000: 1000.0 / 5_000.0, ..policy(Some(0.9)) };
        assert_eq!(lowest(&few).map(alerts), Some(0));
    }

    #[test]
    fn calibration_keeps_the_at_once_tier_off_when_it_costs_too_many_false_alerts_or_does_not_help() {
        // Lone healthy windows as far out as the incidents' first window:
        // any tier that would catch them at once spends the budget.
        let mut healthy = healthy_fleet(3);
        for i in (0..480).step_by(50) {
            healthy[0][i] = 0.995;
        }
        let incident = (vec![0.1, 0.1, 0.99, 0.8, 0.8, 0.8, 0.1], 2);
        let c = calibrate(&healthy, &[incident.clone(), incident], 10_000);
        assert_eq!(c.critical_threshold, CRITICAL_OFF, "{c:?}");
        assert_eq!((c.threshold, c.chosen.clone()), (0.305, c.k_only.clone()));
        assert_eq!(c.k_only.delays.len(), 2);
        // A tier that would fire on the window before the incident's start
        // detects nothing (the alert predates the incident, as the evaluator
        // judges it), so it loses recall against the k rule: off again.
        let early = (vec![0.1, 0.1, 0.8, 0.8, 0.8, 0.1], 3);
        let c = calibrate(&healthy_fleet(3), &[early.clone(), early], 10_000);
        assert_eq!(c.k_only.delays, vec![W5 / 2; 2]);
        assert_eq!(c.critical_threshold, CRITICAL_OFF, "{c:?}");
        assert_eq!((c.chosen.at_once, c.chosen.delays.len()), (0, 2));
    }

    const W5: i64 = 300_000;

    fn label(start: i64, end: i64, verdict: Verdict) -> IncidentLabel {
        IncidentLabel {
            kind: AlertKind::HardwareAging,
            scope: Scope::Terminal,
            entity: "T-1".into(),
            region: "r".into(),
            start,
            end,
            verdict,
            cause: None,
        }
    }

    #[test]
    fn not_incident_labels_are_firm_negatives() {
        let index = LabelIndex::new(&[label(1000, 2000, Verdict::Incident), label(2100, 3000, Verdict::NotIncident)]);
        let truth = |t| index.truth(AlertKind::HardwareAging, Scope::Terminal, "T-1", t, 0, 500);
        assert_eq!(truth(1500), Truth::Positive);
        // Inside the incident's margin, but an analyst looked: feedback.
        assert_eq!(truth(2200), Truth::Feedback);
        // Inside the margin without feedback: left out.
        assert_eq!(truth(2050), Truth::Excluded);
        assert_eq!(truth(2900), Truth::Feedback);
        assert_eq!(truth(3600), Truth::Negative);
        let other = index.truth(AlertKind::HardwareAging, Scope::Terminal, "T-2", 2200, 0, 500);
        assert_eq!(other, Truth::Negative);
    }

    #[test]
    fn feedback_lowers_the_score_of_what_it_marks() {
        // One feature: incidents near 3, healthy windows near 0, and a few
        // healthy look-alikes near 2 that an analyst may mark not_incident.
        let names = ["x"];
        let feats: Vec<[f64; 1]> = (0..3000).map(|i| [f64::from(i % 7) * 0.05]).collect();
        let build = |look_alike: Truth| -> Vec<Labelled<'_>> {
            let mut rows = Vec::new();
            for (i, f) in feats.iter().enumerate() {
                let t = i as i64;
                let (entity, truth, x): (&str, Truth, &[f64]) = match i % 10 {
                    0 => ("pos", Truth::Positive, &POS),
                    1 if i < 300 => ("alike", look_alike, &ALIKE),
                    _ => ("neg", Truth::Negative, f.as_slice()),
                };
                rows.push((t, entity, x, truth));
            }
            rows
        };
        let config = TrainConfig::default();
        let fit = |look_alike| {
            let rows = build(look_alike);
            let (d, f) = fit_one(
                AlertKind::HardwareAging,
                Scope::Terminal,
                &names,
                &rows,
                &HashMap::new(),
                1000,
                (1, 1),
                300_000,
                &config,
            )
            .expect("fits");
            (d.score(&ALIKE), f.feedback_windows)
        };
        let (plain, none) = fit(Truth::Negative);
        let (reviewed, marked) = fit(Truth::Feedback);
        assert_eq!((none, marked), (0, 30));
        assert!(reviewed < plain * 0.5, "feedback should lower the look-alikes' score: {plain} -> {reviewed}");
    }

    #[test]
    fn a_kind_held_to_its_own_target_is_calibrated_to_it() {
        let strict =
            TrainConfig { kind_targets: vec![(AlertKind::FirmwareRegression, 0.05)], ..TrainConfig::default() };
        assert_eq!(strict.target_for(AlertKind::FirmwareRegression), 0.05);
        assert_eq!(strict.target_for(AlertKind::HardwareAging), 0.2);
        // Healthy windows that wander most of the way to the incidents: a
        // looser budget buys a lower threshold, and the card says which.
        let names = ["x"];
        let feats: Vec<[f64; 1]> = (0..3000).map(|i| [f64::from(i % 7) * 0.45]).collect();
        let rows: Vec<Labelled<'_>> = feats
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (entity, truth, x): (&str, Truth, &[f64]) =
                    if i % 10 == 0 { ("pos", Truth::Positive, &POS) } else { ("neg", Truth::Negative, f.as_slice()) };
                (i as i64, entity, x, truth)
            })
            .collect();
        let fit = |target: f64| {
            let config = TrainConfig { target_false_alerts_per_1000_terminal_days: target, ..TrainConfig::default() };
            let kind = AlertKind::FirmwareRegression;
            fit_one(kind, Scope::Cohort, &names, &rows, &HashMap::new(), 1000, (1, 1), 300_000, &config).expect("fits")
        };
        let ((tight, tight_figures), (loose, loose_figures)) = (fit(0.05), fit(500.0));
        assert!(tight.threshold > loose.threshold, "{} against {}", tight.threshold, loose.threshold);
        assert_eq!(tight_figures.target_false_alerts_per_1000_terminal_days, Some(0.05));
        assert_eq!(loose_figures.target_false_alerts_per_1000_terminal_days, Some(500.0));
    }

    #[test]
    fn a_history_for_one_kind_trains_that_kind_alone_and_counts_in_its_budget_alone() {
        // One window of every kind, over `days` terminal-days.
        let fleet = |days: u64| TrainingRows {
            terminal_voltage: vec![(0, "T-1".into(), "S-1".into(), "r".into(), vec![0.0])],
            site_voltage: vec![(0, "S-1".into(), "r".into(), vec![0.0])],
            network: vec![(0, "r".into(), vec![0.0])],
            aging: vec![(0, "T-1".into(), "S-1".into(), "r".into(), vec![0.0])],
            firmware: vec![(0, "M/1.0.0".into(), vec![0.0])],
            first_ms: Some(0),
            last_ms: Some(days as i64 * 86_400_000),
            terminal_days: days,
            ..TrainingRows::default()
        };
        let mut rows = fleet(100);
        rows.merge(fleet(10));
        rows.merge_for(AlertKind::NetworkDegradation, fleet(7));
        rows.merge_for(AlertKind::NetworkDegradation, fleet(3));
        assert_eq!(rows.network.len(), 4);
        for n in [rows.terminal_voltage.len(), rows.site_voltage.len(), rows.aging.len(), rows.firmware.len()] {
            assert_eq!(n, 2, "only the network rows of a network-only history are kept");
        }
        assert_eq!(rows.terminal_days, 110);
        assert_eq!(rows.terminal_days_for(AlertKind::NetworkDegradation), 120);
        for kind in [AlertKind::VoltageInstability, AlertKind::HardwareAging, AlertKind::FirmwareRegression] {
            assert_eq!(rows.terminal_days_for(kind), 110, "{kind}");
        }
        assert_eq!(rows.kind_terminal_days(), vec![(AlertKind::NetworkDegradation, 120)]);
        assert_eq!(rows.last_ms, Some(100 * 86_400_000));
        // Merged as a whole, a history that had one kind's extra days keeps them for that kind.
        let mut outer = fleet(1);
        outer.merge(rows);
        assert_eq!(outer.terminal_days_for(AlertKind::NetworkDegradation), 121);
        assert_eq!(outer.terminal_days_for(AlertKind::HardwareAging), 111);
    }

    /// Two histories that name an entity alike over the same days are
    /// found, at the scope and over the period they share; the same names a
    /// day apart, or in rows a kind-only history drops, are not.
    #[test]
    fn histories_that_name_an_entity_alike_at_the_same_time_are_found() {
        const DAY: i64 = 86_400_000;
        let fleet = |from: i64, to: i64, region: &str| TrainingRows {
            terminal_voltage: vec![
                (from, "T-1".into(), "S-1".into(), region.into(), vec![0.0]),
                (to, "T-1".into(), "S-1".into(), region.into(), vec![0.0]),
            ],
            network: vec![(from, region.into(), vec![0.0]), (to, region.into(), vec![0.0])],
            ..TrainingRows::default()
        };
        let a = fleet(0, 10 * DAY, "north");
        assert_eq!(a.spans().shared_with(&fleet(11 * DAY, 20 * DAY, "north").spans()), None, "a day apart");
        assert_eq!(
            a.spans().shared_with(&fleet(5 * DAY, 20 * DAY, "south").spans()),
            Some(SharedEntity { scope: Scope::Terminal, entity: "T-1".into(), from_ms: 5 * DAY, to_ms: 10 * DAY })
        );
        let mut network_only = fleet(5 * DAY, 20 * DAY, "south");
        network_only.keep_only(AlertKind::NetworkDegradation);
        assert_eq!(a.spans().shared_with(&network_only.spans()), None, "its terminals train nothing");
        // Between two earlier histories, in the gap they leave: apart from
        // each, though the two merged span it.
        let later = fleet(20 * DAY, 30 * DAY, "north");
        let between = fleet(12 * DAY, 18 * DAY, "north").spans();
        assert_eq!(first_shared(&[a.spans(), later.spans()], &between), None);
        let mut merged = a.clone();
        merged.merge(later.clone());
        assert!(merged.spans().shared_with(&between).is_some(), "merged, their spans cover the gap");
        let overlapping = fleet(25 * DAY, 40 * DAY, "north").spans();
        assert_eq!(
            first_shared(&[a.spans(), later.spans()], &overlapping).map(|(i, s)| (i, s.from_ms)),
            Some((1, 25 * DAY))
        );
        let mut same_region = fleet(10 * DAY, 20 * DAY, "north");
        same_region.keep_only(AlertKind::NetworkDegradation);
        assert_eq!(
            a.spans().shared_with(&same_region.spans()),
            Some(SharedEntity { scope: Scope::Region, entity: "north".into(), from_ms: 10 * DAY, to_ms: 10 * DAY })
        );
    }

    const POS: [f64; 1] = [3.0];
    const ALIKE: [f64; 1] = [2.0];

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
