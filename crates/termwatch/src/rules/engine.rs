//! Static-threshold alert rules, the kind a NOC writes in Prometheus, and
//! their evaluation into alert events (alerts-v1).
//!
//! Every threshold is an absolute number on a raw aggregate of telemetry:
//! no per-terminal baseline, nothing learned from a terminal's history. Per
//! model label thresholds are allowed where a NOC would write one rule per
//! `model` (supply noise differs fourfold between models). Each kind is one
//! alerting rule per scope whose expression is the `or` of its conditions,
//! so an entity has at most one firing alert per kind, with Prometheus'
//! `for:` (pending for that long before firing) and `keep_firing_for:`
//! (stays firing that long after the expression stops returning it).

use std::collections::BTreeMap;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, AlertState, Reason, Scope, Severity};

use super::cells::{Cell, Cells, STEP_MS};

/// `model_version` of the events the rules emit.
pub const RULES_VERSION: &str = "static-rules";

const STEP_MIN: u32 = (STEP_MS / 60_000) as u32;

/// One alerting rule per kind and scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub terminal_supply: TerminalSupply,
    pub site_supply: SiteSupply,
    pub region_network: RegionNetwork,
    pub terminal_aging: TerminalAging,
}

/// `voltage_instability` at terminal scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSupply {
    /// `max_over_time(supply_v_std{model="M"}[5m]) > V`, volts, one rule per model; a model without an entry has none.
    pub v_std_above: BTreeMap<String, f64>,
    /// `increase(supply_sags[5m]) >= N`.
    pub sags_at_least: Option<u32>,
    /// `min_over_time(supply_v_mean[5m]) / supply_v_nominal < R`.
    pub v_mean_ratio_below: Option<f64>,
    pub for_min: u32,
    pub keep_firing_min: u32,
}

/// `voltage_instability` at site scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSupply {
    /// Per model, as [`TerminalSupply::v_std_above`], counted per site.
    pub v_std_above: BTreeMap<String, f64>,
    /// `count by (site_id) (...) >= K`; absent: no site rule.
    pub terminals_at_least: Option<u32>,
    pub for_min: u32,
    pub keep_firing_min: u32,
}

/// `network_degradation` at region scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionNetwork {
    /// Share of the region's reporting terminals with `avg_over_time(net_loss_pct[5m]) > L`...
    pub loss_pct_above: Option<f64>,
    /// ... or with `avg_over_time(net_rtt_ms[5m]) > R` ...
    pub rtt_ms_above: Option<f64>,
    /// ... at least this share (0-1) ...
    pub share_at_least: f64,
    /// ... of at least this many reporting terminals.
    pub min_terminals: u32,
    pub for_min: u32,
    pub keep_firing_min: u32,
}

/// `hardware_aging` at terminal scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalAging {
    /// `increase(card_read_errors[W]) / increase(card_reads[W]) > X` ...
    pub card_error_ratio_above: Option<f64>,
    pub card_window_min: u32,
    /// ... `and increase(card_reads[W]) >= N`.
    pub card_reads_at_least: u32,
    /// `increase(print_errors[W]) / increase(print_jobs[W]) > X` ...
    pub print_error_ratio_above: Option<f64>,
    pub print_window_min: u32,
    /// ... `and increase(print_jobs[W]) >= N`.
    pub print_jobs_at_least: u32,
    /// `max_over_time(battery_health_pct[W]) - battery_health_pct > D`, points.
    pub battery_health_drop_above: Option<f64>,
    pub battery_window_min: u32,
    pub for_min: u32,
    pub keep_firing_min: u32,
}

/// Minutes as whole evaluation steps; a duration that is not a whole number
/// of steps is refused naming the field.
fn steps(field: &str, minutes: u32) -> Result<usize, String> {
    if !minutes.is_multiple_of(STEP_MIN) {
        return Err(format!("{field} = {minutes}: not a multiple of {STEP_MIN} minutes (the evaluation step)"));
    }
    Ok((minutes / STEP_MIN) as usize)
}

fn window_steps(field: &str, minutes: u32) -> Result<usize, String> {
    match steps(field, minutes)? {
        0 => Err(format!("{field} = 0: a window needs at least one step ({STEP_MIN} minutes)")),
        n => Ok(n),
    }
}

impl RuleSet {
    /// Checks what JSON cannot: durations in whole steps, shares in 0-1.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.terminal_supply;
        steps("terminal_supply.for_min", t.for_min)?;
        steps("terminal_supply.keep_firing_min", t.keep_firing_min)?;
        let s = &self.site_supply;
        steps("site_supply.for_min", s.for_min)?;
        steps("site_supply.keep_firing_min", s.keep_firing_min)?;
        let n = &self.region_network;
        steps("region_network.for_min", n.for_min)?;
        steps("region_network.keep_firing_min", n.keep_firing_min)?;
        if !(0.0..=1.0).contains(&n.share_at_least) {
            return Err(format!("region_network.share_at_least = {}: not in 0-1", n.share_at_least));
        }
        let a = &self.terminal_aging;
        window_steps("terminal_aging.card_window_min", a.card_window_min)?;
        window_steps("terminal_aging.print_window_min", a.print_window_min)?;
        window_steps("terminal_aging.battery_window_min", a.battery_window_min)?;
        steps("terminal_aging.for_min", a.for_min)?;
        steps("terminal_aging.keep_firing_min", a.keep_firing_min)?;
        Ok(())
    }

    /// Every alert event the rules raise on the history, ordered by time.
    pub fn alerts(&self, cells: &Cells) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        self.terminal_supply.alerts(cells, &mut out);
        self.site_supply.alerts(cells, &mut out);
        self.region_network.alerts(cells, &mut out);
        self.terminal_aging.alerts(cells, &mut out);
        sort_events(&mut out);
        out
    }
}

/// By time, then kind, scope and entity: a stable file for a given input.
pub fn sort_events(events: &mut [AlertEvent]) {
    events.sort_by(|a, b| {
        (a.ts, a.kind, a.scope, &a.entity, a.state == AlertState::Firing).cmp(&(
            b.ts,
            b.kind,
            b.scope,
            &b.entity,
            b.state == AlertState::Firing,
        ))
    });
}

/// Per-model thresholds as a vector indexed like [`Cells::models`]; +∞ (no rule) where absent.
fn per_model(map: &BTreeMap<String, f64>, cells: &Cells) -> Vec<f32> {
    cells.models.iter().map(|m| map.get(m).map_or(f32::INFINITY, |&v| v as f32)).collect()
}

fn above(v: Option<f64>) -> f32 {
    v.map_or(f32::INFINITY, |v| v as f32)
}

/// Prometheus' alert state for one entity: pending for `for_steps` steps of
/// the expression holding without a break, then firing until it has not
/// held for more than `keep_steps` steps.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    for_steps: usize,
    keep_steps: usize,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Inactive,
    Pending { since: usize },
    Firing { last_true: usize },
}

impl Machine {
    pub fn new(for_steps: usize, keep_steps: usize) -> Machine {
        Machine { for_steps, keep_steps, state: State::Inactive }
    }

    /// The expression's result at step `s` (steps are fed in order, none
    /// skipped); returns the state change, if any.
    pub fn step(&mut self, s: usize, holds: bool) -> Option<AlertState> {
        match (self.state, holds) {
            (State::Inactive, true) if self.for_steps == 0 => {
                self.state = State::Firing { last_true: s };
                Some(AlertState::Firing)
            }
            (State::Inactive, true) => {
                self.state = State::Pending { since: s };
                None
            }
            (State::Pending { since }, true) if s - since >= self.for_steps => {
                self.state = State::Firing { last_true: s };
                Some(AlertState::Firing)
            }
            (State::Pending { .. }, false) => {
                self.state = State::Inactive;
                None
            }
            (State::Firing { .. }, true) => {
                self.state = State::Firing { last_true: s };
                None
            }
            (State::Firing { last_true }, false) if s - last_true > self.keep_steps => {
                self.state = State::Inactive;
                Some(AlertState::Resolved)
            }
            _ => None,
        }
    }
}

/// Who an alert is about.
struct Target<'a> {
    kind: AlertKind,
    scope: Scope,
    entity: &'a str,
    region: &'a str,
}

/// Runs one entity's machine over every step and appends its events.
fn run(
    cells: &Cells,
    target: Target<'_>,
    mut machine: Machine,
    mut holds: impl FnMut(usize) -> bool,
    reasons: impl Fn(usize) -> Vec<Reason>,
    out: &mut Vec<AlertEvent>,
) {
    for s in 0..cells.steps {
        if let Some(state) = machine.step(s, holds(s)) {
            let firing = state == AlertState::Firing;
            out.push(AlertEvent {
                ts: cells.step_end_ms(s),
                kind: target.kind,
                scope: target.scope,
                entity: target.entity.to_owned(),
                region: target.region.to_owned(),
                state,
                severity: Severity::Warning,
                score: if firing { 1.0 } else { 0.0 },
                model_version: RULES_VERSION.to_owned(),
                reasons: if firing { reasons(s) } else { Vec::new() },
            });
        }
    }
}

fn reason(feature: &str, value: f32, threshold: f32) -> Reason {
    Reason {
        feature: feature.to_owned(),
        value: round4(f64::from(value)),
        baseline: round4(f64::from(threshold)),
        baseline_version: None,
    }
}

fn round4(v: f64) -> f64 {
    if v.is_finite() { (v * 1e4).round() / 1e4 } else { 0.0 }
}

impl TerminalSupply {
    pub fn alerts(&self, cells: &Cells, out: &mut Vec<AlertEvent>) {
        let std_above = per_model(&self.v_std_above, cells);
        let sags = self.sags_at_least.unwrap_or(u32::MAX);
        let ratio_below = self.v_mean_ratio_below.map_or(f32::NEG_INFINITY, |v| v as f32);
        let (f, k) = (self.for_min as usize / STEP_MIN as usize, self.keep_firing_min as usize / STEP_MIN as usize);
        for (i, t) in cells.terminals.iter().enumerate() {
            let row = cells.range_row(i);
            let th = std_above[t.model];
            let breach =
                |c: &Cell| c.v_std_max > th || (c.reports > 0 && c.sags >= sags) || c.v_mean_ratio_min < ratio_below;
            let reasons = |s: usize| {
                let c = &row[s];
                let mut r = Vec::new();
                if c.v_std_max > th {
                    r.push(reason("max_over_time(supply_v_std[5m])", c.v_std_max, th));
                }
                if c.reports > 0 && c.sags >= sags {
                    r.push(reason("increase(supply_sags[5m])", c.sags as f32, sags as f32));
                }
                if c.v_mean_ratio_min < ratio_below {
                    r.push(reason(
                        "min_over_time(supply_v_mean[5m]) / supply_v_nominal",
                        c.v_mean_ratio_min,
                        ratio_below,
                    ));
                }
                r
            };
            let target = Target {
                kind: AlertKind::VoltageInstability,
                scope: Scope::Terminal,
                entity: &t.id,
                region: &cells.regions[t.region],
            };
            run(cells, target, Machine::new(f, k), |s| breach(&row[s]), reasons, out);
        }
    }
}

impl SiteSupply {
    pub fn alerts(&self, cells: &Cells, out: &mut Vec<AlertEvent>) {
        let Some(k_min) = self.terminals_at_least else { return };
        let std_above = per_model(&self.v_std_above, cells);
        let (f, k) = (self.for_min as usize / STEP_MIN as usize, self.keep_firing_min as usize / STEP_MIN as usize);
        for site in &cells.sites {
            if site.terminals.len() < k_min as usize {
                continue;
            }
            let count = |s: usize| {
                site.terminals
                    .iter()
                    .filter(|&&t| cells.row(t)[s].v_std_max > std_above[cells.terminals[t].model])
                    .count()
            };
            let reasons = |s: usize| {
                vec![reason(
                    "count by (site_id) (max_over_time(supply_v_std[5m]) > per-model V)",
                    count(s) as f32,
                    k_min as f32,
                )]
            };
            let target = Target {
                kind: AlertKind::VoltageInstability,
                scope: Scope::Site,
                entity: &site.id,
                region: &cells.regions[site.region],
            };
            run(cells, target, Machine::new(f, k), |s| count(s) >= k_min as usize, reasons, out);
        }
    }
}

impl RegionNetwork {
    pub fn alerts(&self, cells: &Cells, out: &mut Vec<AlertEvent>) {
        if self.loss_pct_above.is_none() && self.rtt_ms_above.is_none() {
            return;
        }
        let (loss_th, rtt_th) = (above(self.loss_pct_above), above(self.rtt_ms_above));
        let (f, k) = (self.for_min as usize / STEP_MIN as usize, self.keep_firing_min as usize / STEP_MIN as usize);
        for (r, region) in cells.regions.iter().enumerate() {
            let members: Vec<usize> = (0..cells.terminals.len()).filter(|&t| cells.terminals[t].region == r).collect();
            // (reporting, lossy, slow) per step, computed once per region.
            let counts: Vec<(u32, u32, u32)> = (0..cells.steps)
                .map(|s| {
                    let mut c = (0, 0, 0);
                    for &t in &members {
                        let cell = &cells.range_row(t)[s];
                        if cell.reports == 0 {
                            continue;
                        }
                        c.0 += 1;
                        c.1 += u32::from(cell.loss_avg() > loss_th);
                        c.2 += u32::from(cell.rtt_avg() > rtt_th);
                    }
                    c
                })
                .collect();
            let share = |n: u32, of: u32| if of == 0 { 0.0 } else { f64::from(n) / f64::from(of) };
            let holds = |s: usize| {
                let (n, lossy, slow) = counts[s];
                n >= self.min_terminals
                    && n > 0
                    && (share(lossy, n) >= self.share_at_least || share(slow, n) >= self.share_at_least)
            };
            let reasons = |s: usize| {
                let (n, lossy, slow) = counts[s];
                let th = self.share_at_least as f32;
                let mut r = Vec::new();
                if self.loss_pct_above.is_some() {
                    r.push(reason(
                        "share of terminals with avg_over_time(net_loss_pct[5m]) above threshold",
                        share(lossy, n) as f32,
                        th,
                    ));
                }
                if self.rtt_ms_above.is_some() {
                    r.push(reason(
                        "share of terminals with avg_over_time(net_rtt_ms[5m]) above threshold",
                        share(slow, n) as f32,
                        th,
                    ));
                }
                r.sort_by(|a, b| b.value.total_cmp(&a.value));
                r
            };
            let target = Target { kind: AlertKind::NetworkDegradation, scope: Scope::Region, entity: region, region };
            run(cells, target, Machine::new(f, k), holds, reasons, out);
        }
    }
}

/// Sums over the last `w` steps ending at each step (`increase(x[w])`).
fn window_sums(row: &[Cell], w: usize, field: impl Fn(&Cell) -> u32) -> Vec<u64> {
    let mut out = Vec::with_capacity(row.len());
    let mut sum = 0u64;
    for (s, c) in row.iter().enumerate() {
        sum += u64::from(field(c));
        if s >= w {
            sum -= u64::from(field(&row[s - w]));
        }
        out.push(sum);
    }
    out
}

/// `max_over_time(battery_health_pct[w])` at each step, −∞ where the window holds none.
fn window_max(row: &[Cell], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len());
    let mut q: VecDeque<usize> = VecDeque::new();
    for (s, c) in row.iter().enumerate() {
        while q.back().is_some_and(|&b| row[b].health_max <= c.health_max) {
            q.pop_back();
        }
        q.push_back(s);
        while q.front().is_some_and(|&f| f + w <= s) {
            q.pop_front();
        }
        out.push(q.front().map_or(f32::NEG_INFINITY, |&f| row[f].health_max));
    }
    out
}

impl TerminalAging {
    pub fn alerts(&self, cells: &Cells, out: &mut Vec<AlertEvent>) {
        let step = STEP_MIN as usize;
        let (cw, pw, bw) = (
            (self.card_window_min as usize / step).max(1),
            (self.print_window_min as usize / step).max(1),
            (self.battery_window_min as usize / step).max(1),
        );
        let (card_th, print_th, drop_th) = (
            above(self.card_error_ratio_above),
            above(self.print_error_ratio_above),
            above(self.battery_health_drop_above),
        );
        let (f, k) = (self.for_min as usize / step, self.keep_firing_min as usize / step);
        let empty = Vec::new;
        for (i, t) in cells.terminals.iter().enumerate() {
            let row = cells.row(i);
            // An instant vector looks back 5 minutes for the latest sample.
            let now = cells.range_row(i);
            let ratio = |th: f32, w: usize, num: fn(&Cell) -> u32, den: fn(&Cell) -> u32| {
                if th.is_finite() { (window_sums(row, w, num), window_sums(row, w, den)) } else { (empty(), empty()) }
            };
            let (card_err, card_reads) = ratio(card_th, cw, |c| c.card_read_errors, |c| c.card_reads);
            let (print_err, print_jobs) = ratio(print_th, pw, |c| c.print_errors, |c| c.print_jobs);
            let health_max = if drop_th.is_finite() { window_max(row, bw) } else { Vec::new() };
            let card = |s: usize| -> Option<f32> {
                let reads = *card_reads.get(s)?;
                (reads > 0 && reads >= u64::from(self.card_reads_at_least))
                    .then(|| card_err[s] as f32 / reads as f32)
                    .filter(|&r| r > card_th)
            };
            let print = |s: usize| -> Option<f32> {
                let jobs = *print_jobs.get(s)?;
                (jobs > 0 && jobs >= u64::from(self.print_jobs_at_least))
                    .then(|| print_err[s] as f32 / jobs as f32)
                    .filter(|&r| r > print_th)
            };
            let battery = |s: usize| -> Option<f32> {
                let drop = *health_max.get(s)? - now[s].health_last;
                (drop > drop_th).then_some(drop)
            };
            let holds = |s: usize| card(s).is_some() || print(s).is_some() || battery(s).is_some();
            let reasons = |s: usize| {
                let mut r = Vec::new();
                if let Some(v) = card(s) {
                    r.push(reason("increase(card_read_errors[W]) / increase(card_reads[W])", v, card_th));
                }
                if let Some(v) = print(s) {
                    r.push(reason("increase(print_errors[W]) / increase(print_jobs[W])", v, print_th));
                }
                if let Some(v) = battery(s) {
                    r.push(reason("max_over_time(battery_health_pct[W]) - battery_health_pct", v, drop_th));
                }
                r
            };
            let target = Target {
                kind: AlertKind::HardwareAging,
                scope: Scope::Terminal,
                entity: &t.id,
                region: &cells.regions[t.region],
            };
            run(cells, target, Machine::new(f, k), holds, reasons, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_fires_after_for_and_resolves_after_keep_firing_for() {
        let mut m = Machine::new(2, 1);
        let seq = [true, true, false, true, true, true, false, true, false, false, true];
        let got: Vec<Option<AlertState>> = seq.iter().enumerate().map(|(s, &h)| m.step(s, h)).collect();
        use AlertState::{Firing as F, Resolved as R};
        // Pending resets on the break at 2; fires at 5 (3 steps holding); the
        // single miss at 6 is within keep; resolves at 9, two misses after 7.
        assert_eq!(got, vec![None, None, None, None, None, Some(F), None, None, None, Some(R), None]);
    }

    #[test]
    fn machine_without_for_fires_on_the_first_breach() {
        let mut m = Machine::new(0, 0);
        assert_eq!(m.step(0, true), Some(AlertState::Firing));
        assert_eq!(m.step(1, true), None);
        assert_eq!(m.step(2, false), Some(AlertState::Resolved));
    }

    #[test]
    fn window_max_forgets_values_older_than_the_window() {
        let row: Vec<Cell> =
            [90.0, 80.0, 85.0, 70.0].iter().map(|&h| Cell { health_max: h, ..Cell::default() }).collect();
        assert_eq!(window_max(&row, 2), vec![90.0, 90.0, 85.0, 85.0]);
        let sums = window_sums(&row, 2, |c| c.health_max as u32);
        assert_eq!(sums, vec![90, 170, 165, 155]);
    }

    #[test]
    fn refuses_an_empty_window() {
        assert_eq!(steps("x.for_min", 15), Ok(15));
        assert!(window_steps("w.card_window_min", 0).is_err_and(|e| e.contains("w.card_window_min = 0")));
        assert_eq!(window_steps("w", 60), Ok(60));
    }
}
