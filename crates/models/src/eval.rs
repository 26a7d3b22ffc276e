//! Evaluation of alert events against incident labels, exactly as
//! `contracts/alerts-v1.md` ("How detection is judged") defines it.
//!
//! [`evaluate`] is a pure function of the alert events, the labels and a
//! [`FleetIndex`] (which terminal a site holds, and how many terminal-days
//! the fleet was observed for); the readers around it turn files into those
//! inputs. `docs/evaluation.md` gives every definition with a worked example.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use termwatch_features::MIN_REGION_TERMINALS;
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, AlertState, IncidentLabel, Scope, Severity, Verdict};
use termwatch_telemetry::source::{NdjsonFile, SourceError};
use termwatch_telemetry::time::{MS_PER_DAY, MS_PER_HOUR, format_rfc3339_ms, serde_rfc3339};
use termwatch_telemetry::{Label, decode};
use thiserror::Error;

/// How long after an incident's end a firing alert still counts as true
/// (but no longer as a detection).
pub const FALSE_ALERT_GRACE_MS: i64 = MS_PER_HOUR;

/// The ingestion time given to history records: far enough ahead that no
/// recorded `ts` counts as "from the future".
const HISTORY_INGEST_MS: i64 = i64::MAX / 2;

/// Why an evaluation input could not be read. Every variant names the file;
/// a bad record also names its line.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The file is missing, unreadable, or a corrupt gzip stream.
    #[error("{what} file: {cause}")]
    Source { what: &'static str, cause: SourceError },
    /// A line is not a JSON object of the expected shape.
    #[error("{what} file {path} line {line}: {detail}")]
    Malformed { what: &'static str, path: String, line: u64, detail: String },
    /// A line parses but cannot be scored (an incident that ends before it starts).
    #[error("{what} file {path} line {line}: {detail}")]
    Invalid { what: &'static str, path: String, line: u64, detail: String },
}

// ---------------------------------------------------------------------------
// Reading inputs

/// Reads alert events (alerts-v1), one JSON object per line, plain or gzip.
/// Blank lines are skipped; any other line that is not an alert event fails
/// the whole read: these files come from tools, not terminals.
pub fn read_alerts(path: &Path) -> Result<Vec<AlertEvent>, EvalError> {
    read_records(path, "alerts", "alert event", |_: &AlertEvent| Ok(()))
}

/// Reads incident labels (alerts-v1), as [`read_alerts`]; a label whose
/// `end` is before its `start` is refused too.
pub fn read_labels(path: &Path) -> Result<Vec<IncidentLabel>, EvalError> {
    read_records(path, "labels", "incident label", |l: &IncidentLabel| {
        if l.end < l.start {
            Err(format!("end {} is before start {}", format_rfc3339_ms(l.end), format_rfc3339_ms(l.start)))
        } else {
            Ok(())
        }
    })
}

fn read_records<T: DeserializeOwned>(
    path: &Path,
    what: &'static str,
    record: &str,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<Vec<T>, EvalError> {
    let source_err = |cause| EvalError::Source { what, cause };
    let mut file = NdjsonFile::open(path).map_err(source_err)?;
    let name = file.path().to_owned();
    let mut out = Vec::new();
    let mut line_no = 0u64;
    while let Some(line) = file.next_line().map_err(source_err)? {
        line_no += 1;
        if line.is_blank() {
            continue;
        }
        let value: T = serde_json::from_slice(line.bytes).map_err(|e| EvalError::Malformed {
            what,
            path: name.clone(),
            line: line_no,
            detail: format!("not an {record}: {}", json_error(&e)),
        })?;
        check(&value).map_err(|detail| EvalError::Invalid { what, path: name.clone(), line: line_no, detail })?;
        out.push(value);
    }
    Ok(out)
}

/// serde_json's message without its "at line 1 column N" (every record is
/// one line), with the column kept where it helps.
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&suffix) {
        Some(m) if e.column() > 0 => format!("{m} (column {})", e.column()),
        Some(m) => m.to_owned(),
        None => msg,
    }
}

// ---------------------------------------------------------------------------
// The fleet, as telemetry shows it

/// What telemetry says about the fleet: which sites hold which terminals
/// (for terminal↔site matching), and how long each terminal was observed
/// (the denominator of the false-alert rate).
#[derive(Debug, Clone, Default)]
pub struct FleetIndex {
    terminals: HashMap<String, TerminalSeen>,
    site_terminals: HashMap<String, BTreeSet<String>>,
    /// Every terminal that reported from each region.
    region_terminals: HashMap<String, HashSet<String>>,
    /// Every `MODEL/FIRMWARE` reported, with each terminal's first report
    /// of it (the exposure of `firmware_regression`).
    cohorts: HashMap<String, HashMap<String, i64>>,
    /// Every terminal of each model.
    model_terminals: HashMap<String, HashSet<String>>,
    reports: u64,
    rejected: u64,
    blank_lines: u64,
    first_rejection: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct TerminalSeen {
    /// Every site the terminal reported from (more than one if it moved).
    sites: BTreeSet<String>,
    /// Distinct UTC days (since the epoch) with at least one valid report.
    days: HashSet<i64>,
    last_day: Option<i64>,
}

impl FleetIndex {
    /// Reads telemetry history files in order. Rejected records are skipped
    /// and counted; a missing or corrupt file fails the read. Every file is
    /// opened before any is read, so a mistyped path fails at once.
    pub fn from_telemetry<P: AsRef<Path>>(paths: &[P]) -> Result<Self, EvalError> {
        let source_err = |cause| EvalError::Source { what: "telemetry", cause };
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            files.push(NdjsonFile::open(p.as_ref()).map_err(source_err)?);
        }
        let mut fleet = FleetIndex::default();
        for mut file in files {
            fleet.read(&mut file)?;
        }
        Ok(fleet)
    }

    /// Adds one telemetry source, read to its end.
    pub fn read(&mut self, file: &mut NdjsonFile) -> Result<(), EvalError> {
        let name = file.path().to_owned();
        let mut line_no = 0u64;
        while let Some(line) = file.next_line().map_err(|cause| EvalError::Source { what: "telemetry", cause })? {
            line_no += 1;
            if line.is_blank() {
                self.blank_lines += 1;
                continue;
            }
            match decode(line.bytes, HISTORY_INGEST_MS) {
                Ok(t) => {
                    self.observe(&t.terminal_id, t.label(Label::SiteId), &t.region, t.ts_ms);
                    if let (Some(model), Some(firmware)) = (t.label(Label::Model), t.label(Label::Firmware)) {
                        self.observe_version(&t.terminal_id, model, firmware, t.ts_ms);
                    }
                }
                Err(rejection) => {
                    self.rejected += 1;
                    if self.first_rejection.is_none() {
                        self.first_rejection = Some(format!("{name} line {line_no}: {rejection}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Records that `terminal`, of `model`, reported on `firmware` at
    /// `ts_ms`: the cohort `MODEL/FIRMWARE` exists, and the terminal is
    /// exposed to it from its first such report on.
    pub fn observe_version(&mut self, terminal: &str, model: &str, firmware: &str, ts_ms: i64) {
        let cohort = format!("{model}/{firmware}");
        let first = self.cohorts.entry(cohort).or_default();
        match first.get_mut(terminal) {
            Some(t) => *t = (*t).min(ts_ms),
            None => {
                first.insert(terminal.to_owned(), ts_ms);
            }
        }
        let terminals = self.model_terminals.entry(model.to_owned()).or_default();
        if !terminals.contains(terminal) {
            terminals.insert(terminal.to_owned());
        }
    }

    /// The share of `MODEL`'s terminals that had reported the version of
    /// `cohort` (`MODEL/FIRMWARE`) by `ts_ms`; `None` for an unknown cohort.
    pub fn exposure(&self, cohort: &str, ts_ms: i64) -> Option<f64> {
        let (model, _) = cohort.split_once('/')?;
        let total = self.model_terminals.get(model)?.len();
        let exposed = self.cohorts.get(cohort)?.values().filter(|&&first| first <= ts_ms).count();
        (total > 0).then(|| exposed as f64 / total as f64)
    }

    /// Records one valid report.
    pub fn observe(&mut self, terminal_id: &str, site_id: Option<&str>, region: &str, ts_ms: i64) {
        self.reports += 1;
        if !self.terminals.contains_key(terminal_id) {
            self.terminals.insert(terminal_id.to_owned(), TerminalSeen::default());
        }
        let Some(t) = self.terminals.get_mut(terminal_id) else { return };
        let day = ts_ms.div_euclid(MS_PER_DAY);
        if t.last_day != Some(day) {
            t.days.insert(day);
            t.last_day = Some(day);
        }
        if let Some(site) = site_id
            && !t.sites.contains(site)
        {
            t.sites.insert(site.to_owned());
            self.site_terminals.entry(site.to_owned()).or_default().insert(terminal_id.to_owned());
        }
        let terminals = match self.region_terminals.get_mut(region) {
            Some(terminals) => terminals,
            None => self.region_terminals.entry(region.to_owned()).or_default(),
        };
        if !terminals.contains(terminal_id) {
            terminals.insert(terminal_id.to_owned());
        }
    }

    /// Terminals that ever reported from `region`.
    pub fn terminals_in_region(&self, region: &str) -> usize {
        self.region_terminals.get(region).map_or(0, HashSet::len)
    }

    /// Whether termwatch can never score `region`: fewer terminals than
    /// [`MIN_REGION_TERMINALS`] ever reported from it, so no window of it
    /// has that many.
    pub fn below_region_floor(&self, region: &str) -> bool {
        self.terminals_in_region(region) < MIN_REGION_TERMINALS as usize
    }

    /// Whether `site` holds `terminal` (the terminal ever reported from it).
    pub fn holds(&self, site: &str, terminal: &str) -> bool {
        self.terminals.get(terminal).is_some_and(|t| t.sites.contains(site))
    }

    /// Whether telemetry mentions this entity at all.
    pub fn knows(&self, scope: Scope, entity: &str) -> bool {
        match scope {
            Scope::Terminal => self.terminals.contains_key(entity),
            Scope::Site => self.site_terminals.contains_key(entity),
            Scope::Region => self.region_terminals.contains_key(entity),
            Scope::Cohort => self.cohorts.contains_key(entity),
        }
    }

    /// Sum over terminals of the distinct UTC days with at least one valid report.
    pub fn terminal_days(&self) -> u64 {
        self.terminals.values().map(|t| t.days.len() as u64).sum()
    }

    fn sites_of(&self, terminal: &str) -> impl Iterator<Item = &str> {
        self.terminals.get(terminal).into_iter().flat_map(|t| t.sites.iter().map(String::as_str))
    }

    fn terminals_at(&self, site: &str) -> impl Iterator<Item = &str> {
        self.site_terminals.get(site).into_iter().flat_map(|ts| ts.iter().map(String::as_str))
    }

    fn summary(&self) -> FleetSummary {
        FleetSummary {
            terminals: self.terminals.len(),
            sites: self.site_terminals.len(),
            regions: self.region_terminals.len(),
            terminal_days: self.terminal_days(),
            reports: self.reports,
            rejected_lines: self.rejected,
            blank_lines: self.blank_lines,
            first_rejection: self.first_rejection.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The report

/// The figures of one evaluation, per kind, with what an analyst needs to
/// look at: missed incidents and false alerts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub inputs: InputSummary,
    pub fleet: FleetSummary,
    /// One per [`AlertKind::ALL`], in that order, even when a kind has
    /// neither alerts nor incidents.
    pub kinds: Vec<KindReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputSummary {
    pub alert_events: usize,
    pub firing_events: usize,
    pub resolved_events: usize,
    pub labels: usize,
    pub incident_labels: usize,
    pub not_incident_labels: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSummary {
    pub terminals: usize,
    pub sites: usize,
    pub regions: usize,
    /// Sum over terminals of distinct UTC days with at least one valid report.
    pub terminal_days: u64,
    /// Valid telemetry reports read.
    pub reports: u64,
    /// Telemetry lines rejected by telemetry-v1 validation, skipped.
    pub rejected_lines: u64,
    pub blank_lines: u64,
    /// Where and why the first rejection happened, if any.
    pub first_rejection: Option<String>,
}

/// The figures of one kind. Ratios with an empty denominator follow fixed
/// conventions, stated on each field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    pub kind: AlertKind,
    /// `firing` events of this kind: each one is an alert.
    pub firing_alerts: usize,
    /// Firing alerts matching an incident whose `[start, end + 1 h]` holds their `ts`.
    pub true_alerts: usize,
    /// `firing_alerts - true_alerts`.
    pub false_alerts: usize,
    /// Labels of this kind with verdict `incident`.
    pub incidents: usize,
    /// Incidents matched by a firing alert within `[start, end]`.
    pub detected_incidents: usize,
    /// Labels of this kind with verdict `not_incident`: counted, never scored.
    pub not_incident_labels: usize,
    /// `true_alerts / firing_alerts`; 1 when there are no firing alerts.
    pub precision: f64,
    /// `detected_incidents / incidents`; 1 when there are no incidents.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// `false_alerts * 1000 / terminal_days`; `None` without terminal-days.
    pub false_alerts_per_1000_terminal_days: Option<f64>,
    /// Median of [`Detection::delay_ms`]; `None` when nothing was detected.
    pub median_delay_ms: Option<f64>,
    /// Median of [`Detection::lead_time_ms`], for `hardware_aging` only.
    pub median_lead_time_ms: Option<f64>,
    /// Median of [`Detection::exposure`], for `firmware_regression` only.
    pub median_exposure: Option<f64>,
    /// Firing events for a `(kind, scope, entity)` that was already firing:
    /// a breach of the contract, counted rather than refused.
    pub overlapping_firing: usize,
    /// Distinct terminals and sites named by this kind's firing alerts or
    /// incidents that telemetry never mentions: terminal↔site matching cannot
    /// see them.
    pub entities_not_in_telemetry: usize,
    /// The figures again for each scope with an incident or a false alert,
    /// in the order terminal, site, region, cohort: a site's mains and one
    /// terminal's supply are different detectors, paged on differently.
    pub scopes: Vec<ScopeReport>,
    /// Detected incidents with their first matching alert, by incident start.
    pub detections: Vec<Detection>,
    /// Undetected incidents, by start.
    pub missed_incidents: Vec<IncidentLabel>,
    /// Of those, region incidents in a region fewer than
    /// [`MIN_REGION_TERMINALS`] terminals ever reported from: termwatch
    /// never scores such a region (its one or two terminals' trouble and
    /// the region's look alike), so no model could have found them.
    pub missed_below_region_floor: usize,
    /// The terminals of each region below the floor that a missed incident
    /// names, for the table.
    #[serde(skip)]
    small_regions: BTreeMap<String, usize>,
    /// False alerts, by time.
    pub false_alert_events: Vec<AlertEvent>,
}

/// One scope's share of a kind's figures: incidents of that scope (found by
/// an alert of any scope that matches them, as for the kind), and false
/// alerts raised at that scope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeReport {
    pub scope: Scope,
    pub incidents: usize,
    pub detected_incidents: usize,
    pub false_alerts: usize,
    /// As [`KindReport::false_alerts_per_1000_terminal_days`], over the whole fleet.
    pub false_alerts_per_1000_terminal_days: Option<f64>,
    /// Median delay of this scope's detected incidents.
    pub median_delay_ms: Option<f64>,
}

/// A detected incident and the first firing alert that matched it within
/// `[start, end]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub incident: IncidentLabel,
    #[serde(with = "serde_rfc3339")]
    pub first_alert_ts: i64,
    /// `first_alert_ts - start`.
    pub delay_ms: i64,
    /// `end - first_alert_ts`.
    pub lead_time_ms: i64,
    /// For `firmware_regression`: the share of the model's terminals that
    /// had reported the version by `first_alert_ts` (alerts-v1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<f64>,
}

impl Report {
    /// The report as pretty-printed JSON, for notebooks.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// A table of the figures per kind, then up to `max_listed` missed
    /// incidents and false alerts per kind.
    pub fn to_table(&self, max_listed: usize) -> String {
        render_table(self, max_listed)
    }

    pub fn kind(&self, kind: AlertKind) -> Option<&KindReport> {
        self.kinds.iter().find(|k| k.kind == kind)
    }
}

// ---------------------------------------------------------------------------
// Matching and scoring

/// Whether `alert` matches `incident` (alerts-v1): same kind, and the same
/// entity at the same scope, or a terminal and the site that holds it either
/// way round. Region-scope alerts match only region-scope incidents. Times
/// and verdicts are not looked at here.
pub fn matches(alert: &AlertEvent, incident: &IncidentLabel, fleet: &FleetIndex) -> bool {
    if alert.kind != incident.kind {
        return false;
    }
    match (alert.scope, incident.scope) {
        (a, i) if a == i => alert.entity == incident.entity,
        (Scope::Terminal, Scope::Site) => fleet.holds(&incident.entity, &alert.entity),
        (Scope::Site, Scope::Terminal) => fleet.holds(&alert.entity, &incident.entity),
        _ => false,
    }
}

/// Scores alert events against labels, per kind. Pure: same inputs, same report.
pub fn evaluate(alerts: &[AlertEvent], labels: &[IncidentLabel], fleet: &FleetIndex) -> Report {
    let firing_events = alerts.iter().filter(|a| a.state == AlertState::Firing).count();
    let not_incident_labels = labels.iter().filter(|l| l.verdict == Verdict::NotIncident).count();
    Report {
        inputs: InputSummary {
            alert_events: alerts.len(),
            firing_events,
            resolved_events: alerts.len() - firing_events,
            labels: labels.len(),
            incident_labels: labels.len() - not_incident_labels,
            not_incident_labels,
        },
        fleet: fleet.summary(),
        kinds: AlertKind::ALL.iter().map(|&kind| evaluate_kind(kind, alerts, labels, fleet)).collect(),
    }
}

fn evaluate_kind(kind: AlertKind, alerts: &[AlertEvent], labels: &[IncidentLabel], fleet: &FleetIndex) -> KindReport {
    let incidents: Vec<&IncidentLabel> =
        labels.iter().filter(|l| l.kind == kind && l.verdict == Verdict::Incident).collect();
    let not_incident_labels = labels.iter().filter(|l| l.kind == kind && l.verdict == Verdict::NotIncident).count();
    let mut by_entity: HashMap<(Scope, &str), Vec<usize>> = HashMap::new();
    for (i, inc) in incidents.iter().enumerate() {
        by_entity.entry((inc.scope, inc.entity.as_str())).or_default().push(i);
    }

    // Sorted by time, ties in file order, so "first" means earliest.
    let mut firing: Vec<&AlertEvent> =
        alerts.iter().filter(|a| a.kind == kind && a.state == AlertState::Firing).collect();
    firing.sort_by_key(|a| a.ts);

    let mut first_alert: Vec<Option<i64>> = vec![None; incidents.len()];
    let mut false_alert_events = Vec::new();
    let mut candidates = Vec::new();
    for alert in &firing {
        candidates.clear();
        let mut add = |scope: Scope, entity: &str| {
            if let Some(v) = by_entity.get(&(scope, entity)) {
                candidates.extend_from_slice(v);
            }
        };
        add(alert.scope, &alert.entity);
        match alert.scope {
            Scope::Terminal => fleet.sites_of(&alert.entity).for_each(|s| add(Scope::Site, s)),
            Scope::Site => fleet.terminals_at(&alert.entity).for_each(|t| add(Scope::Terminal, t)),
            Scope::Region | Scope::Cohort => {}
        }
        let mut is_true = false;
        for &i in &candidates {
            let inc = incidents[i];
            // The index only narrows the search; `matches` is the rule.
            if !matches(alert, inc, fleet) || alert.ts < inc.start {
                continue;
            }
            if alert.ts <= inc.end.saturating_add(FALSE_ALERT_GRACE_MS) {
                is_true = true;
            }
            if alert.ts <= inc.end && first_alert[i].is_none() {
                first_alert[i] = Some(alert.ts);
            }
        }
        if !is_true {
            false_alert_events.push((*alert).clone());
        }
    }

    let mut detections = Vec::new();
    let mut missed_incidents = Vec::new();
    for (inc, first) in incidents.iter().zip(&first_alert) {
        match *first {
            Some(ts) => detections.push(Detection {
                incident: (*inc).clone(),
                first_alert_ts: ts,
                delay_ms: ts - inc.start,
                lead_time_ms: inc.end - ts,
                exposure: (kind == AlertKind::FirmwareRegression).then(|| fleet.exposure(&inc.entity, ts)).flatten(),
            }),
            None => missed_incidents.push((*inc).clone()),
        }
    }
    detections.sort_by_key(|d| d.incident.start);
    missed_incidents.sort_by_key(|i| i.start);
    let below_floor: Vec<&IncidentLabel> =
        missed_incidents.iter().filter(|i| i.scope == Scope::Region && fleet.below_region_floor(&i.entity)).collect();
    let missed_below_region_floor = below_floor.len();
    let small_regions = below_floor.iter().map(|i| (i.entity.clone(), fleet.terminals_in_region(&i.entity))).collect();

    let firing_alerts = firing.len();
    let false_alerts = false_alert_events.len();
    let true_alerts = firing_alerts - false_alerts;
    let precision = ratio_or_one(true_alerts, firing_alerts);
    let recall = ratio_or_one(detections.len(), incidents.len());
    let terminal_days = fleet.terminal_days();
    let median_lead_time_ms = if kind == AlertKind::HardwareAging {
        median(detections.iter().map(|d| d.lead_time_ms).collect())
    } else {
        None
    };

    let per_1000 = |n: usize| (terminal_days > 0).then(|| n as f64 * 1000.0 / terminal_days as f64);
    let scopes = [Scope::Terminal, Scope::Site, Scope::Region, Scope::Cohort]
        .into_iter()
        .filter_map(|scope| {
            let incidents = incidents.iter().filter(|i| i.scope == scope).count();
            let false_alerts = false_alert_events.iter().filter(|a| a.scope == scope).count();
            let delays: Vec<i64> =
                detections.iter().filter(|d| d.incident.scope == scope).map(|d| d.delay_ms).collect();
            (incidents > 0 || false_alerts > 0).then(|| ScopeReport {
                scope,
                incidents,
                detected_incidents: delays.len(),
                false_alerts,
                false_alerts_per_1000_terminal_days: per_1000(false_alerts),
                median_delay_ms: median(delays),
            })
        })
        .collect();

    let median_exposure = if kind == AlertKind::FirmwareRegression {
        median_f64(detections.iter().filter_map(|d| d.exposure).collect())
    } else {
        None
    };
    KindReport {
        kind,
        median_exposure,
        firing_alerts,
        true_alerts,
        false_alerts,
        incidents: incidents.len(),
        detected_incidents: detections.len(),
        not_incident_labels,
        precision,
        recall,
        f1: f1(precision, recall),
        false_alerts_per_1000_terminal_days: per_1000(false_alerts),
        median_delay_ms: median(detections.iter().map(|d| d.delay_ms).collect()),
        median_lead_time_ms,
        overlapping_firing: overlapping_firing(kind, alerts),
        entities_not_in_telemetry: entities_not_in_telemetry(&firing, &incidents, fleet),
        scopes,
        detections,
        missed_incidents,
        missed_below_region_floor,
        small_regions,
        false_alert_events,
    }
}

/// `num / den`, or 1 when `den` is 0 (nothing to get wrong).
fn ratio_or_one(num: usize, den: usize) -> f64 {
    if den == 0 { 1.0 } else { num as f64 / den as f64 }
}

/// Harmonic mean; 0 when both are 0.
pub fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) }
}

/// The median: the middle value of an odd count, the mean of the two middle
/// values of an even count, `None` of none.
pub fn median(mut values: Vec<i64>) -> Option<f64> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2] as f64),
        _ => Some((i128::from(values[n / 2 - 1]) + i128::from(values[n / 2])) as f64 / 2.0),
    }
}

/// The median of shares, as [`median`].
fn median_f64(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Firing events for a `(kind, scope, entity)` already firing (no `resolved`
/// in between), in event time; ties keep file order.
fn overlapping_firing(kind: AlertKind, alerts: &[AlertEvent]) -> usize {
    let mut events: Vec<&AlertEvent> = alerts.iter().filter(|a| a.kind == kind).collect();
    events.sort_by_key(|a| a.ts);
    let mut firing: HashMap<(Scope, &str), bool> = HashMap::new();
    let mut overlaps = 0;
    for a in events {
        let now_firing = a.state == AlertState::Firing;
        let was_firing = firing.insert((a.scope, a.entity.as_str()), now_firing).unwrap_or(false);
        if now_firing && was_firing {
            overlaps += 1;
        }
    }
    overlaps
}

fn entities_not_in_telemetry(firing: &[&AlertEvent], incidents: &[&IncidentLabel], fleet: &FleetIndex) -> usize {
    let named = firing
        .iter()
        .map(|a| (a.scope, a.entity.as_str()))
        .chain(incidents.iter().map(|i| (i.scope, i.entity.as_str())));
    named.filter(|&(scope, entity)| scope != Scope::Region && !fleet.knows(scope, entity)).collect::<HashSet<_>>().len()
}

// ---------------------------------------------------------------------------
// Text output

/// A duration for people: `45s`, `12m 30s`, `3h 05m`, `12d 06h`.
pub fn format_duration(ms: f64) -> String {
    let secs = (ms / 1000.0).round() as i64;
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.abs();
    match s {
        _ if s < 60 => format!("{sign}{s}s"),
        _ if s < 3_600 => format!("{sign}{}m {:02}s", s / 60, s % 60),
        _ if s < 86_400 => format!("{sign}{}h {:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{sign}{}d {:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_table(r: &Report, max_listed: usize) -> String {
    let mut out = String::new();
    let i = &r.inputs;
    let f = &r.fleet;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "alerts: {} ({} firing, {} resolved); labels: {} ({}, {} not_incident)",
        plural(i.alert_events as u64, "event", "events"),
        i.firing_events,
        i.resolved_events,
        i.labels,
        plural(i.incident_labels as u64, "incident", "incidents"),
        i.not_incident_labels,
    );
    let _ = writeln!(
        out,
        "telemetry: {} at {} in {}, {} from {} ({} rejected, {} blank)",
        plural(f.terminals as u64, "terminal", "terminals"),
        plural(f.sites as u64, "site", "sites"),
        plural(f.regions as u64, "region", "regions"),
        plural(f.terminal_days, "terminal-day", "terminal-days"),
        plural(f.reports, "report", "reports"),
        plural(f.rejected_lines, "line", "lines"),
        f.blank_lines,
    );
    if let Some(first) = &f.first_rejection {
        let _ = writeln!(out, "  first rejected: {first}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<20} {:>6} {:>5} {:>6} {:>9} {:>8} {:>9} {:>6} {:>6} {:>11} {:>12} {:>12} {:>8}",
        "kind",
        "firing",
        "true",
        "false",
        "incidents",
        "detected",
        "precision",
        "recall",
        "F1",
        "false/1k td",
        "median delay",
        "median lead",
        "exposure"
    );
    for k in &r.kinds {
        let rate = k.false_alerts_per_1000_terminal_days.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let delay = k.median_delay_ms.map_or_else(|| "-".to_owned(), format_duration);
        let lead = k.median_lead_time_ms.map_or_else(|| "-".to_owned(), format_duration);
        let exposure = k.median_exposure.map_or_else(|| "-".to_owned(), |e| format!("{:.0} %", e * 100.0));
        let _ = writeln!(
            out,
            "{:<20} {:>6} {:>5} {:>6} {:>9} {:>8} {:>9.3} {:>6.3} {:>6.3} {:>11} {:>12} {:>12} {:>8}",
            k.kind.as_str(),
            k.firing_alerts,
            k.true_alerts,
            k.false_alerts,
            k.incidents,
            k.detected_incidents,
            k.precision,
            k.recall,
            k.f1,
            rate,
            delay,
            lead,
            exposure
        );
    }
    let _ = writeln!(
        out,
        "precision = true/firing (1 with no alerts), recall = detected/incidents (1 with no incidents),\n\
         false/1k td = false alerts per 1,000 terminal-days, median lead for hardware_aging only,\n\
         exposure (median share of the model's terminals on the version at detection) for firmware_regression only: docs/evaluation.md"
    );
    // Kinds scored at more than one scope, scope by scope.
    let split: Vec<&KindReport> = r.kinds.iter().filter(|k| k.scopes.len() > 1).collect();
    if !split.is_empty() {
        let _ =
            writeln!(out, "\nby scope (incidents of the scope, by an alert of any scope; false alerts raised at it):");
        for k in split {
            for s in &k.scopes {
                let rate = s.false_alerts_per_1000_terminal_days.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
                let found = match (s.incidents, s.median_delay_ms) {
                    (0, _) => "no incidents".to_owned(),
                    (n, Some(delay)) => format!(
                        "{} of {} detected, median delay {}",
                        s.detected_incidents,
                        plural(n as u64, "incident", "incidents"),
                        format_duration(delay)
                    ),
                    (n, None) => format!("0 of {} detected", plural(n as u64, "incident", "incidents")),
                };
                let _ = writeln!(
                    out,
                    "  {:<20} {:<8} {found}; {} ({rate} per 1,000 terminal-days)",
                    k.kind.as_str(),
                    s.scope.to_string(),
                    plural(s.false_alerts as u64, "false alert", "false alerts"),
                );
            }
        }
    }

    for k in &r.kinds {
        if k.missed_incidents.is_empty()
            && k.false_alert_events.is_empty()
            && k.overlapping_firing == 0
            && k.entities_not_in_telemetry == 0
        {
            continue;
        }
        let floor = match k.missed_below_region_floor {
            0 => String::new(),
            n => format!(
                " ({n} in regions of fewer than {MIN_REGION_TERMINALS} terminals, which termwatch does not score)"
            ),
        };
        let _ = writeln!(
            out,
            "\n{}: {} missed{floor}, {}",
            k.kind,
            plural(k.missed_incidents.len() as u64, "incident", "incidents"),
            plural(k.false_alert_events.len() as u64, "false alert", "false alerts")
        );
        for inc in k.missed_incidents.iter().take(max_listed) {
            let small = match k.small_regions.get(&inc.entity) {
                Some(&n) if inc.scope == Scope::Region => {
                    format!(" (a region of {}: not scored)", plural(n as u64, "terminal", "terminals"))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  missed  {} {} ({}) {} .. {}{}{small}",
                inc.scope,
                inc.entity,
                inc.region,
                format_rfc3339_ms(inc.start),
                format_rfc3339_ms(inc.end),
                inc.cause.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
            );
        }
        more(&mut out, k.missed_incidents.len(), max_listed, "missed incidents");
        for a in k.false_alert_events.iter().take(max_listed) {
            let _ = writeln!(
                out,
                "  false   {} {} ({}) at {}, {} score {:.2}{}",
                a.scope,
                a.entity,
                a.region,
                format_rfc3339_ms(a.ts),
                match a.severity {
                    Severity::Warning => "warning",
                    Severity::Critical => "critical",
                },
                a.score,
                a.reasons.first().map(|r| format!(", top reason {}", r.feature)).unwrap_or_default()
            );
        }
        more(&mut out, k.false_alert_events.len(), max_listed, "false alerts");
        if k.overlapping_firing > 0 {
            let _ = writeln!(
                out,
                "  contract: {} for an entity already firing (no resolved in between)",
                plural(k.overlapping_firing as u64, "firing event", "firing events")
            );
        }
        if k.entities_not_in_telemetry > 0 {
            let _ = writeln!(
                out,
                "  warning: {} named by alerts or incidents never appear in the telemetry: \
                 terminal-site matching cannot see them",
                plural(k.entities_not_in_telemetry as u64, "terminal or site", "terminals or sites")
            );
        }
    }
    out
}

fn more(out: &mut String, total: usize, listed: usize, what: &str) {
    if total > listed {
        let _ = writeln!(out, "  ... and {} more {what} (all of them in --json)", total - listed);
    }
}

#[cfg(test)]
mod tests {
    use termwatch_telemetry::alerts::Reason;

    use super::*;

    const T0: i64 = 1_795_478_400_000; // 2026-11-24T00:00:00Z
    const MIN: i64 = 60_000;
    const HOUR: i64 = MS_PER_HOUR;
    const DAY: i64 = MS_PER_DAY;

    fn alert(kind: AlertKind, scope: Scope, entity: &str, ts: i64) -> AlertEvent {
        AlertEvent {
            ts,
            kind,
            scope,
            entity: entity.into(),
            region: "east-07".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            score: 0.9,
            model_version: "test".into(),
            reasons: vec![Reason { feature: "f".into(), value: 1.0, baseline: 0.0, baseline_version: None }],
        }
    }

    fn resolved(kind: AlertKind, scope: Scope, entity: &str, ts: i64) -> AlertEvent {
        AlertEvent { state: AlertState::Resolved, ..alert(kind, scope, entity, ts) }
    }

    fn incident(kind: AlertKind, scope: Scope, entity: &str, start: i64, end: i64) -> IncidentLabel {
        IncidentLabel {
            kind,
            scope,
            entity: entity.into(),
            region: "east-07".into(),
            start,
            end,
            verdict: Verdict::Incident,
            cause: None,
        }
    }

    /// Site S-1 holds T-1 and T-2, site S-2 holds T-3; one day each.
    fn fleet() -> FleetIndex {
        let mut f = FleetIndex::default();
        f.observe("T-1", Some("S-1"), "east-07", T0);
        f.observe("T-2", Some("S-1"), "east-07", T0);
        f.observe("T-3", Some("S-2"), "east-07", T0);
        f
    }

    use AlertKind::{HardwareAging as Aging, NetworkDegradation as Network, VoltageInstability as Voltage};

    fn score(alerts: &[AlertEvent], labels: &[IncidentLabel], kind: AlertKind) -> KindReport {
        let report = evaluate(alerts, labels, &fleet());
        report.kind(kind).cloned().unwrap_or_else(|| panic!("{kind} reported"))
    }

    #[test]
    fn terminal_alert_matches_incident_on_its_site() {
        let k = score(
            &[alert(Voltage, Scope::Terminal, "T-2", T0 + 5 * MIN)],
            &[incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR)],
            Voltage,
        );
        assert_eq!((k.true_alerts, k.detected_incidents), (1, 1));
    }

    #[test]
    fn site_alert_matches_incident_on_a_terminal_it_holds() {
        let k = score(
            &[alert(Voltage, Scope::Site, "S-2", T0 + 5 * MIN)],
            &[incident(Voltage, Scope::Terminal, "T-3", T0, T0 + HOUR)],
            Voltage,
        );
        assert_eq!((k.true_alerts, k.detected_incidents), (1, 1));
    }

    #[test]
    fn site_does_not_match_terminal_it_does_not_hold() {
        let f = fleet();
        assert!(!matches(
            &alert(Voltage, Scope::Site, "S-1", T0),
            &incident(Voltage, Scope::Terminal, "T-3", T0, T0 + HOUR),
            &f
        ));
        assert!(!matches(
            &alert(Voltage, Scope::Terminal, "T-3", T0),
            &incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR),
            &f
        ));
    }

    #[test]
    fn terminal_matches_site_only_through_telemetry() {
        let empty = FleetIndex::default();
        assert!(!matches(
            &alert(Voltage, Scope::Terminal, "T-1", T0),
            &incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR),
            &empty
        ));
    }

    #[test]
    fn same_entity_different_kind_does_not_match() {
        assert!(!matches(
            &alert(Aging, Scope::Terminal, "T-1", T0),
            &incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR),
            &fleet()
        ));
    }

    #[test]
    fn region_alert_matches_only_region_incident() {
        let mut f = fleet();
        // A site that happens to share the region's name does not blur scopes.
        f.observe("T-9", Some("east-07"), "east-07", T0);
        let region_alert = alert(Network, Scope::Region, "east-07", T0 + MIN);
        assert!(matches(&region_alert, &incident(Network, Scope::Region, "east-07", T0, T0 + HOUR), &f));
        assert!(!matches(&region_alert, &incident(Network, Scope::Site, "east-07", T0, T0 + HOUR), &f));
        assert!(!matches(&region_alert, &incident(Network, Scope::Terminal, "T-9", T0, T0 + HOUR), &f));
        let terminal_alert = alert(Network, Scope::Terminal, "T-9", T0 + MIN);
        assert!(!matches(&terminal_alert, &incident(Network, Scope::Region, "east-07", T0, T0 + HOUR), &f));
    }

    /// A missed regional incident in a region fewer than three terminals
    /// report from is told apart (termwatch never scores such a region);
    /// one in a region of three is an ordinary miss. Both count in recall.
    #[test]
    fn missed_incidents_of_regions_below_the_scoring_floor_are_told_apart() {
        let mut f = fleet();
        f.observe("T-4", Some("S-3"), "west-02", T0);
        f.observe("T-5", Some("S-3"), "west-02", T0);
        f.observe("T-5", Some("S-3"), "west-02", T0 + DAY);
        let labels = [
            incident(Network, Scope::Region, "east-07", T0, T0 + HOUR),
            incident(Network, Scope::Region, "west-02", T0, T0 + HOUR),
            incident(Network, Scope::Region, "west-02", T0 + DAY, T0 + DAY + HOUR),
        ];
        let k = evaluate_kind(Network, &[], &labels, &f);
        assert_eq!((k.incidents, k.detected_incidents, k.missed_below_region_floor), (3, 0, 2));
        assert_eq!(k.recall, 0.0);
        assert_eq!(f.terminals_in_region("west-02"), 2);
        let table = render_table(
            &Report {
                inputs: InputSummary {
                    alert_events: 0,
                    firing_events: 0,
                    resolved_events: 0,
                    labels: 3,
                    incident_labels: 3,
                    not_incident_labels: 0,
                },
                fleet: f.summary(),
                kinds: vec![k],
            },
            10,
        );
        assert!(
            table.contains(
                "3 incidents missed (2 in regions of fewer than 3 terminals, which termwatch does not score)"
            ),
            "{table}"
        );
        assert_eq!(table.matches("(a region of 2 terminals: not scored)").count(), 2, "{table}");
        assert!(table.contains("region east-07 (east-07)"), "{table}");
        // A third terminal lifts west-02 to the floor: its misses are the model's.
        f.observe("T-6", Some("S-4"), "west-02", T0);
        assert_eq!(evaluate_kind(Network, &[], &labels, &f).missed_below_region_floor, 0);
    }

    #[test]
    fn alert_within_an_hour_after_end_is_true_but_does_not_detect() {
        let end = T0 + HOUR;
        let k = score(
            &[alert(Aging, Scope::Terminal, "T-1", end + HOUR)],
            &[incident(Aging, Scope::Terminal, "T-1", T0, end)],
            Aging,
        );
        assert_eq!((k.true_alerts, k.false_alerts, k.detected_incidents), (1, 0, 0));
        assert_eq!(k.missed_incidents.len(), 1);
    }

    #[test]
    fn alert_past_the_grace_or_before_start_is_false() {
        let end = T0 + HOUR;
        let k = score(
            &[alert(Aging, Scope::Terminal, "T-1", T0 - 1), alert(Aging, Scope::Terminal, "T-1", end + HOUR + 1)],
            &[incident(Aging, Scope::Terminal, "T-1", T0, end)],
            Aging,
        );
        assert_eq!((k.true_alerts, k.false_alerts, k.detected_incidents), (0, 2, 0));
    }

    #[test]
    fn detection_bounds_are_inclusive() {
        let end = T0 + HOUR;
        let labels = [incident(Aging, Scope::Terminal, "T-1", T0, end)];
        for ts in [T0, end] {
            let k = score(&[alert(Aging, Scope::Terminal, "T-1", ts)], &labels, Aging);
            assert_eq!(k.detected_incidents, 1, "alert at start + {} ms", ts - T0);
        }
    }

    #[test]
    fn delay_and_lead_time_come_from_the_first_matching_alert() {
        let (start, end) = (T0, T0 + 20 * DAY);
        let k = score(
            &[
                alert(Aging, Scope::Terminal, "T-1", start + 6 * DAY + 3 * HOUR),
                alert(Aging, Scope::Terminal, "T-1", start + 2 * DAY),
            ],
            &[incident(Aging, Scope::Terminal, "T-1", start, end)],
            Aging,
        );
        let d = &k.detections[0];
        assert_eq!(d.first_alert_ts, start + 2 * DAY);
        assert_eq!(d.delay_ms, 2 * DAY);
        assert_eq!(d.lead_time_ms, 18 * DAY);
        assert_eq!(k.median_delay_ms, Some((2 * DAY) as f64));
        assert_eq!(k.median_lead_time_ms, Some((18 * DAY) as f64));
    }

    #[test]
    fn exposure_is_the_share_of_the_model_on_the_version_at_the_first_alert() {
        let mut fleet = FleetIndex::default();
        for i in 0..8 {
            fleet.observe_version(&format!("P-{i}"), "P200", "5.2.1", T0);
        }
        fleet.observe_version("M-1", "M50", "6.0.0", T0);
        // Two canaries an hour in, two more a day later.
        fleet.observe_version("P-0", "P200", "6.0.0", T0 + HOUR);
        fleet.observe_version("P-1", "P200", "6.0.0", T0 + 2 * HOUR);
        fleet.observe_version("P-2", "P200", "6.0.0", T0 + DAY);
        fleet.observe_version("P-3", "P200", "6.0.0", T0 + DAY);
        assert_eq!(fleet.exposure("P200/6.0.0", T0 + 3 * HOUR), Some(0.25));
        assert_eq!(fleet.exposure("P200/6.0.0", T0 + 2 * DAY), Some(0.5));
        assert_eq!(fleet.exposure("P200/6.0.0", T0), Some(0.0));
        assert_eq!(fleet.exposure("P200/9.9.9", T0), None);
        let report = evaluate(
            &[alert(AlertKind::FirmwareRegression, Scope::Cohort, "P200/6.0.0", T0 + 3 * HOUR)],
            &[incident(AlertKind::FirmwareRegression, Scope::Cohort, "P200/6.0.0", T0 + HOUR, T0 + 3 * DAY)],
            &fleet,
        );
        let k = report.kind(AlertKind::FirmwareRegression).expect("reported");
        assert_eq!((k.detected_incidents, k.median_exposure), (1, Some(0.25)));
        assert_eq!(k.detections[0].exposure, Some(0.25));
        // Not a figure of the other kinds.
        assert_eq!(report.kind(Voltage).and_then(|k| k.median_exposure), None);
    }

    #[test]
    fn each_scope_of_a_kind_has_its_own_figures() {
        let k = score(
            &[
                // The site's mains, found by its own alert 5 minutes in.
                alert(Voltage, Scope::Site, "S-1", T0 + 5 * MIN),
                // One terminal's supply, found an hour in; another never.
                alert(Voltage, Scope::Terminal, "T-3", T0 + HOUR),
                // A terminal alert that matches nothing.
                alert(Voltage, Scope::Terminal, "T-9", T0),
            ],
            &[
                incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR),
                incident(Voltage, Scope::Terminal, "T-3", T0, T0 + 2 * HOUR),
                incident(Voltage, Scope::Terminal, "T-4", T0, T0 + 2 * HOUR),
            ],
            Voltage,
        );
        let figures: Vec<_> = k
            .scopes
            .iter()
            .map(|s| (s.scope, s.incidents, s.detected_incidents, s.false_alerts, s.median_delay_ms))
            .collect();
        assert_eq!(
            figures,
            [(Scope::Terminal, 2, 1, 1, Some(HOUR as f64)), (Scope::Site, 1, 1, 0, Some((5 * MIN) as f64)),]
        );
        // The kind's figures are the scopes' together.
        assert_eq!((k.incidents, k.detected_incidents, k.false_alerts), (3, 2, 1));
        // A scope with neither incidents nor false alerts is left out.
        assert!(k.scopes.iter().all(|s| s.scope != Scope::Region));
    }

    #[test]
    fn lead_time_is_reported_for_aging_only() {
        let k = score(
            &[alert(Voltage, Scope::Terminal, "T-1", T0 + MIN)],
            &[incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR)],
            Voltage,
        );
        assert_eq!(k.median_delay_ms, Some(MIN as f64));
        assert_eq!(k.median_lead_time_ms, None);
    }

    #[test]
    fn median_of_even_count_is_mean_of_middle_two() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![7]), Some(7.0));
        assert_eq!(median(vec![30, 10, 20]), Some(20.0));
        assert_eq!(median(vec![40, 5, 20, 10]), Some(15.0));
        assert_eq!(median(vec![1, 2]), Some(1.5));
    }

    #[test]
    fn not_incident_label_is_neither_an_incident_nor_an_excuse() {
        let mut feedback = incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR);
        feedback.verdict = Verdict::NotIncident;
        let k = score(&[alert(Voltage, Scope::Terminal, "T-1", T0 + MIN)], &[feedback], Voltage);
        assert_eq!((k.incidents, k.not_incident_labels, k.false_alerts), (0, 1, 1));
        assert_eq!(k.recall, 1.0);
        assert_eq!(k.precision, 0.0);
    }

    #[test]
    fn alert_in_not_incident_span_that_matches_a_real_incident_is_true() {
        let mut feedback = incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR);
        feedback.verdict = Verdict::NotIncident;
        let real = incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR);
        let k = score(&[alert(Voltage, Scope::Terminal, "T-1", T0 + MIN)], &[feedback, real], Voltage);
        assert_eq!((k.incidents, k.true_alerts, k.detected_incidents), (1, 1, 1));
    }

    #[test]
    fn no_alerts_and_no_incidents_scores_one() {
        let k = score(&[], &[], Network);
        assert_eq!((k.precision, k.recall, k.f1), (1.0, 1.0, 1.0));
        assert_eq!(k.false_alerts_per_1000_terminal_days, Some(0.0));
        assert_eq!(k.median_delay_ms, None);
    }

    #[test]
    fn no_alerts_with_incidents_scores_zero_f1() {
        let k = score(&[], &[incident(Network, Scope::Region, "east-07", T0, T0 + HOUR)], Network);
        assert_eq!((k.precision, k.recall, k.f1), (1.0, 0.0, 0.0));
    }

    #[test]
    fn alerts_with_no_incidents_scores_zero_precision() {
        let k = score(&[alert(Network, Scope::Region, "east-07", T0)], &[], Network);
        assert_eq!((k.precision, k.recall, k.f1), (0.0, 1.0, 0.0));
    }

    #[test]
    fn false_alert_rate_without_terminal_days_is_undefined() {
        let report = evaluate(&[alert(Network, Scope::Region, "east-07", T0)], &[], &FleetIndex::default());
        let k = report.kind(Network).cloned().unwrap_or_else(|| panic!("reported"));
        assert_eq!(k.false_alerts_per_1000_terminal_days, None);
    }

    #[test]
    fn several_alerts_on_one_incident_count_once_for_recall_each_for_precision() {
        let labels = [incident(Voltage, Scope::Site, "S-1", T0, T0 + HOUR)];
        let alerts = [
            alert(Voltage, Scope::Site, "S-1", T0 + MIN),
            alert(Voltage, Scope::Terminal, "T-1", T0 + 2 * MIN),
            alert(Voltage, Scope::Terminal, "T-2", T0 + 3 * MIN),
            alert(Voltage, Scope::Terminal, "T-3", T0 + 4 * MIN),
        ];
        let k = score(&alerts, &labels, Voltage);
        assert_eq!((k.firing_alerts, k.true_alerts, k.false_alerts), (4, 3, 1));
        assert_eq!((k.incidents, k.detected_incidents), (1, 1));
        assert_eq!(k.precision, 0.75);
        assert_eq!(k.recall, 1.0);
        assert!((k.f1 - 2.0 * 0.75 / 1.75).abs() < 1e-12);
    }

    #[test]
    fn one_site_alert_can_detect_incidents_on_several_terminals() {
        let labels = [
            incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR),
            incident(Voltage, Scope::Terminal, "T-2", T0 + MIN, T0 + HOUR),
        ];
        let k = score(&[alert(Voltage, Scope::Site, "S-1", T0 + 10 * MIN)], &labels, Voltage);
        assert_eq!((k.true_alerts, k.detected_incidents), (1, 2));
        assert_eq!(k.median_delay_ms, Some(9.5 * MIN as f64));
    }

    #[test]
    fn resolved_events_are_not_alerts() {
        let k = score(
            &[resolved(Voltage, Scope::Terminal, "T-1", T0 + MIN)],
            &[incident(Voltage, Scope::Terminal, "T-1", T0, T0 + HOUR)],
            Voltage,
        );
        assert_eq!((k.firing_alerts, k.detected_incidents), (0, 0));
    }

    #[test]
    fn counts_firing_again_without_resolving() {
        let alerts = [
            alert(Voltage, Scope::Terminal, "T-1", T0),
            alert(Voltage, Scope::Terminal, "T-1", T0 + MIN), // overlaps
            resolved(Voltage, Scope::Terminal, "T-1", T0 + 2 * MIN),
            alert(Voltage, Scope::Terminal, "T-1", T0 + 3 * MIN), // fine
            alert(Voltage, Scope::Terminal, "T-2", T0 + 3 * MIN), // other entity, fine
            alert(Aging, Scope::Terminal, "T-1", T0 + 3 * MIN),   // other kind, fine
        ];
        assert_eq!(score(&alerts, &[], Voltage).overlapping_firing, 1);
        assert_eq!(score(&alerts, &[], Aging).overlapping_firing, 0);
    }

    #[test]
    fn terminal_days_count_distinct_utc_days_per_terminal() {
        let mut f = FleetIndex::default();
        f.observe("T-1", None, "r", T0 - 1); // 23:59:59.999 the day before
        f.observe("T-1", None, "r", T0);
        f.observe("T-1", None, "r", T0 + 5 * HOUR);
        f.observe("T-2", None, "r", T0 + 5 * HOUR);
        f.observe("T-1", None, "r", T0 + 3 * DAY);
        assert_eq!(f.terminal_days(), 4);
    }

    #[test]
    fn counts_entities_unknown_to_telemetry() {
        let k = score(
            &[alert(Voltage, Scope::Terminal, "T-404", T0)],
            &[incident(Voltage, Scope::Site, "S-404", T0, T0 + HOUR), incident(Voltage, Scope::Site, "S-1", T0, T0)],
            Voltage,
        );
        assert_eq!(k.entities_not_in_telemetry, 2);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(45_000.0), "45s");
        assert_eq!(format_duration(750_000.0), "12m 30s");
        assert_eq!(format_duration((3 * HOUR + 5 * MIN) as f64), "3h 05m");
        assert_eq!(format_duration((12 * DAY + 6 * HOUR) as f64), "12d 06h");
    }
}
