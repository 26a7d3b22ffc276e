//! Tuning the static rules on labelled data: per kind, a coordinate search
//! over every threshold, window and duration of that kind's rules, each
//! candidate scored by the same evaluator as `termwatch eval`. The objective
//! is F1; ties go to the shorter median delay (the longer median lead time
//! for aging), then to fewer alerts.
//!
//! Threshold candidates are quantiles of the aggregate itself on the data
//! being scored, rounded to three significant digits: the grid adapts to each
//! model's scale, and tuning on the evaluation data is what makes this the
//! rules' best case.

use std::collections::{BTreeMap, HashMap};

use termwatch_models::eval::{evaluate, f1, median};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, IncidentLabel};

use super::cells::{Cell, Cells, STEP_MS};
use super::engine::{RegionNetwork, RuleSet, SiteSupply, TerminalAging, TerminalSupply, sort_events};

/// Upper quantiles for "above" thresholds on per-terminal aggregates.
const Q_HIGH: [f64; 12] = [0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99999];
/// Quantiles for thresholds counted across many terminals (site, region).
const Q_SHARED: [f64; 10] = [0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995];
/// Coordinate rounds per start; the search stops earlier when a round changes nothing.
const MAX_ROUNDS: usize = 5;

/// How good one candidate is; compared lexicographically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub f1: f64,
    /// Median delay in ms, or minus the median lead time for aging; +∞ when nothing was detected.
    pub timing: f64,
    pub firing: usize,
}

impl Objective {
    pub fn better_than(&self, other: &Objective) -> bool {
        if (self.f1 - other.f1).abs() > 1e-9 {
            return self.f1 > other.f1;
        }
        if self.timing != other.timing {
            return self.timing < other.timing;
        }
        self.firing < other.firing
    }
}

/// One tunable parameter and its candidate values (±∞ switches a condition off).
#[derive(Debug, Clone)]
pub struct Knob {
    pub name: String,
    pub values: Vec<f64>,
}

impl Knob {
    fn new(name: impl Into<String>, values: Vec<f64>) -> Knob {
        Knob { name: name.into(), values }
    }
}

/// Coordinate search from each start in turn; evaluations are memoised, so
/// revisiting a point costs nothing. Returns the best point's values.
pub fn search(
    knobs: &[Knob],
    starts: &[Vec<usize>],
    mut score: impl FnMut(&[f64]) -> Objective,
) -> (Vec<f64>, Objective, usize) {
    let mut memo: HashMap<Vec<usize>, Objective> = HashMap::new();
    let mut eval = |at: &[usize]| -> Objective {
        if let Some(o) = memo.get(at) {
            return *o;
        }
        let values: Vec<f64> = at.iter().zip(knobs).map(|(&i, k)| k.values[i]).collect();
        let o = score(&values);
        memo.insert(at.to_vec(), o);
        o
    };
    let mut best: Option<(Vec<usize>, Objective)> = None;
    for start in starts {
        let mut at = start.clone();
        let mut here = eval(&at);
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            for k in 0..knobs.len() {
                for c in 0..knobs[k].values.len() {
                    if c == at[k] {
                        continue;
                    }
                    let mut cand = at.clone();
                    cand[k] = c;
                    let o = eval(&cand);
                    if o.better_than(&here) {
                        here = o;
                        at = cand;
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        if best.as_ref().is_none_or(|(_, b)| here.better_than(b)) {
            best = Some((at, here));
        }
    }
    let evaluations = memo.len();
    match best {
        Some((at, o)) => (at.iter().zip(knobs).map(|(&i, k)| k.values[i]).collect(), o, evaluations),
        None => {
            (knobs.iter().map(|k| k.values[0]).collect(), Objective { f1: 0.0, timing: f64::INFINITY, firing: 0 }, 0)
        }
    }
}

/// Three significant digits: thresholds a person would type.
fn round3(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * mag).round() / mag
}

/// Quantiles of `values` (finite ones), rounded and deduplicated, ascending.
fn quantiles(mut values: Vec<f32>, qs: &[f64]) -> Vec<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f32::total_cmp);
    let mut out: Vec<f64> = if values.is_empty() {
        Vec::new()
    } else {
        qs.iter()
            .map(|q| {
                let i = ((values.len() - 1) as f64 * q).round() as usize;
                round3(f64::from(values[i.min(values.len() - 1)]))
            })
            .collect()
    };
    out.sort_by(f64::total_cmp);
    out.dedup();
    out
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn minutes(steps: f64) -> u32 {
    (steps.max(0.0) as u32) * (STEP_MS / 60_000) as u32
}

/// Model labels over every history, sorted.
fn models(histories: &[History]) -> Vec<String> {
    let mut out: Vec<String> = histories.iter().flat_map(|h| h.cells.models.iter().cloned()).collect();
    out.sort();
    out.dedup();
    out
}

/// One aggregate over every cell with reports of terminals of model `model`, in every history.
fn model_values(histories: &[History], model: &str, f: impl Fn(&Cell) -> f32) -> Vec<f32> {
    let mut out = Vec::new();
    for h in histories {
        let cells = &h.cells;
        for (i, t) in cells.terminals.iter().enumerate() {
            if cells.models[t.model] == model {
                out.extend(cells.range_row(i).iter().filter(|c| c.reports > 0).map(&f));
            }
        }
    }
    out
}

/// One aggregate over every cell of every history.
fn all_values(histories: &[History], f: impl Fn(&Cell) -> f32) -> Vec<f32> {
    let mut out = Vec::new();
    for h in histories {
        out.extend((0..h.cells.terminals.len()).flat_map(|i| h.cells.range_row(i).iter().map(&f)));
    }
    out
}

fn index_of(values: &[f64], v: f64) -> usize {
    values.iter().position(|&x| x == v).unwrap_or(0)
}

/// A labelled history to tune on.
pub struct History {
    pub cells: Cells,
    pub labels: Vec<IncidentLabel>,
}

/// Scores one kind's alerts on every history with the evaluator, pooling
/// the counts (precision and recall over all alerts and incidents) and the
/// delays or lead times (one median over every detection).
fn objective(
    kind: AlertKind,
    histories: &[History],
    mut alerts_of: impl FnMut(&Cells) -> Vec<AlertEvent>,
) -> Objective {
    let (mut firing, mut true_alerts, mut incidents, mut detected) = (0, 0, 0, 0);
    let mut timings = Vec::new();
    for h in histories {
        let mut alerts = alerts_of(&h.cells);
        sort_events(&mut alerts);
        let labels: Vec<IncidentLabel> = h.labels.iter().filter(|l| l.kind == kind).cloned().collect();
        let report = evaluate(&alerts, &labels, &h.cells.fleet);
        let Some(r) = report.kind(kind) else { continue };
        firing += r.firing_alerts;
        true_alerts += r.true_alerts;
        incidents += r.incidents;
        detected += r.detected_incidents;
        timings.extend(
            r.detections.iter().map(|d| if kind == AlertKind::HardwareAging { -d.lead_time_ms } else { d.delay_ms }),
        );
    }
    let ratio = |n: usize, d: usize| if d == 0 { 1.0 } else { n as f64 / d as f64 };
    Objective {
        f1: f1(ratio(true_alerts, firing), ratio(detected, incidents)),
        timing: median(timings).unwrap_or(f64::INFINITY),
        firing,
    }
}

/// What tuning found for one kind.
#[derive(Debug, Clone)]
pub struct Tuned {
    pub kind: AlertKind,
    pub objective: Objective,
    pub evaluations: usize,
}

/// Tunes every rule on the labelled histories, pooled.
pub fn tune(histories: &[History]) -> (RuleSet, Vec<Tuned>) {
    let (terminal_supply, site_supply, v) = tune_voltage(histories);
    let (region_network, n) = tune_network(histories);
    let (terminal_aging, a) = tune_aging(histories);
    (RuleSet { terminal_supply, site_supply, region_network, terminal_aging }, vec![a, v, n])
}

/// `for` candidates, in 1-minute steps: 0 to 1 h.
const FOR_STEPS: [f64; 12] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 60.0];
/// `keep_firing_for` candidates: 0 to 1 h.
const KEEP_STEPS: [f64; 8] = [0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0];

fn tune_voltage(histories: &[History]) -> (TerminalSupply, SiteSupply, Tuned) {
    let models = models(histories);
    let std_by_model: Vec<Vec<f32>> = models.iter().map(|m| model_values(histories, m, |c| c.v_std_max)).collect();
    let mut knobs = Vec::new();
    for (m, name) in models.iter().enumerate() {
        let mut v = quantiles(std_by_model[m].clone(), &Q_HIGH);
        v.push(f64::INFINITY);
        knobs.push(Knob::new(format!("terminal v_std_above[{name}]"), v));
    }
    let nm = models.len();
    knobs.push(Knob::new("terminal sags_at_least", vec![1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, f64::INFINITY]));
    let mut r = quantiles(all_values(histories, |c| c.v_mean_ratio_min), &Q_HIGH.map(|q| 1.0 - q));
    r.insert(0, f64::NEG_INFINITY);
    knobs.push(Knob::new("terminal v_mean_ratio_below", r));
    knobs.push(Knob::new("terminal for (steps)", FOR_STEPS.to_vec()));
    knobs.push(Knob::new("terminal keep_firing_for (steps)", KEEP_STEPS.to_vec()));
    for (m, name) in models.iter().enumerate() {
        let mut v = quantiles(std_by_model[m].clone(), &Q_SHARED);
        v.push(f64::INFINITY);
        knobs.push(Knob::new(format!("site v_std_above[{name}]"), v));
    }
    knobs.push(Knob::new("site terminals_at_least", vec![2.0, 3.0, 4.0, 6.0, f64::INFINITY]));
    knobs.push(Knob::new("site for (steps)", FOR_STEPS.to_vec()));
    knobs.push(Knob::new("site keep_firing_for (steps)", KEEP_STEPS.to_vec()));

    let build = |v: &[f64]| {
        let std_map = |off: usize| -> BTreeMap<String, f64> {
            models.iter().enumerate().filter_map(|(m, name)| finite(v[off + m]).map(|x| (name.clone(), x))).collect()
        };
        let t = TerminalSupply {
            v_std_above: std_map(0),
            sags_at_least: finite(v[nm]).map(|x| x as u32),
            v_mean_ratio_below: finite(v[nm + 1]),
            for_min: minutes(v[nm + 2]),
            keep_firing_min: minutes(v[nm + 3]),
        };
        let s = SiteSupply {
            v_std_above: std_map(nm + 4),
            terminals_at_least: finite(v[2 * nm + 4]).map(|x| x as u32),
            for_min: minutes(v[2 * nm + 5]),
            keep_firing_min: minutes(v[2 * nm + 6]),
        };
        (t, s)
    };
    // Start with every condition off; one start per `for`, so a rule that
    // needs persistence is not hidden behind a noisy first step.
    let starts: Vec<Vec<usize>> = [0.0, 10.0, 30.0]
        .iter()
        .map(|&f| {
            knobs
                .iter()
                .enumerate()
                .map(|(i, k)| match i {
                    i if i == nm + 2 => index_of(&k.values, f),
                    i if i == nm + 1 => 0,
                    i if i == 2 * nm + 5 => index_of(&k.values, 10.0),
                    _ if k.name.contains("keep") => 0,
                    _ => k.values.len() - 1,
                })
                .collect()
        })
        .collect();
    let (best, objective, evaluations) = search(&knobs, &starts, |v| {
        let (t, s) = build(v);
        objective(AlertKind::VoltageInstability, histories, |cells| {
            let mut alerts = Vec::new();
            t.alerts(cells, &mut alerts);
            s.alerts(cells, &mut alerts);
            alerts
        })
    });
    let (t, s) = build(&best);
    (t, s, Tuned { kind: AlertKind::VoltageInstability, objective, evaluations })
}

fn tune_network(histories: &[History]) -> (RegionNetwork, Tuned) {
    let mut loss = quantiles(all_values(histories, Cell::loss_avg), &Q_SHARED);
    loss.push(f64::INFINITY);
    let mut rtt = quantiles(all_values(histories, Cell::rtt_avg), &Q_SHARED);
    rtt.push(f64::INFINITY);
    let knobs = vec![
        Knob::new("region loss_pct_above", loss),
        Knob::new("region rtt_ms_above", rtt),
        Knob::new("region share_at_least", vec![0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7]),
        Knob::new("region min_terminals", vec![1.0, 3.0, 5.0, 10.0, 20.0]),
        Knob::new("region for (steps)", FOR_STEPS.to_vec()),
        Knob::new("region keep_firing_for (steps)", KEEP_STEPS.to_vec()),
    ];
    let build = |v: &[f64]| RegionNetwork {
        loss_pct_above: finite(v[0]),
        rtt_ms_above: finite(v[1]),
        share_at_least: v[2],
        min_terminals: v[3] as u32,
        for_min: minutes(v[4]),
        keep_firing_min: minutes(v[5]),
    };
    let starts: Vec<Vec<usize>> = [0.0, 10.0, 30.0]
        .iter()
        .map(|&f| {
            vec![
                knobs[0].values.len() - 1,
                knobs[1].values.len() - 1,
                index_of(&knobs[2].values, 0.2),
                index_of(&knobs[3].values, 5.0),
                index_of(&knobs[4].values, f),
                0,
            ]
        })
        .collect();
    let (best, objective, evaluations) = search(&knobs, &starts, |v| {
        let rule = build(v);
        objective(AlertKind::NetworkDegradation, histories, |cells| {
            let mut alerts = Vec::new();
            rule.alerts(cells, &mut alerts);
            alerts
        })
    });
    (build(&best), Tuned { kind: AlertKind::NetworkDegradation, objective, evaluations })
}

fn tune_aging(histories: &[History]) -> (TerminalAging, Tuned) {
    let ratios = vec![0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, f64::INFINITY];
    // 1 h, 3 h, 6 h, 12 h, 1 d, 2 d, 3 d, in 1-minute steps.
    let windows = vec![60.0, 180.0, 360.0, 720.0, 1440.0, 2880.0, 4320.0];
    let volumes = vec![1.0, 10.0, 20.0, 50.0, 100.0, 200.0];
    let knobs = vec![
        Knob::new("card_error_ratio_above", ratios.clone()),
        Knob::new("card window (steps)", windows.clone()),
        Knob::new("card_reads_at_least", volumes.clone()),
        Knob::new("print_error_ratio_above", ratios),
        Knob::new("print window (steps)", windows),
        Knob::new("print_jobs_at_least", volumes),
        Knob::new("battery_health_drop_above", vec![0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, f64::INFINITY]),
        Knob::new("battery window (steps)", vec![1440.0, 2880.0, 4320.0]),
        // 0 to 12 h.
        Knob::new("aging for (steps)", vec![0.0, 5.0, 15.0, 30.0, 60.0, 120.0, 240.0, 360.0, 720.0]),
        // 0, 1 h, 6 h, 1 d.
        Knob::new("aging keep_firing_for (steps)", vec![0.0, 60.0, 360.0, 1440.0]),
    ];
    let build = |v: &[f64]| TerminalAging {
        card_error_ratio_above: finite(v[0]),
        card_window_min: minutes(v[1]),
        card_reads_at_least: v[2] as u32,
        print_error_ratio_above: finite(v[3]),
        print_window_min: minutes(v[4]),
        print_jobs_at_least: v[5] as u32,
        battery_health_drop_above: finite(v[6]),
        battery_window_min: minutes(v[7]),
        for_min: minutes(v[8]),
        keep_firing_min: minutes(v[9]),
    };
    let starts: Vec<Vec<usize>> = [0.0, 60.0]
        .iter()
        .map(|&f| {
            vec![
                knobs[0].values.len() - 1,
                index_of(&knobs[1].values, 1440.0),
                index_of(&knobs[2].values, 20.0),
                knobs[3].values.len() - 1,
                index_of(&knobs[4].values, 1440.0),
                index_of(&knobs[5].values, 20.0),
                knobs[6].values.len() - 1,
                0,
                index_of(&knobs[8].values, f),
                index_of(&knobs[9].values, 360.0),
            ]
        })
        .collect();
    let (best, objective, evaluations) = search(&knobs, &starts, |v| {
        let rule = build(v);
        objective(AlertKind::HardwareAging, histories, |cells| {
            let mut alerts = Vec::new();
            rule.alerts(cells, &mut alerts);
            alerts
        })
    });
    (build(&best), Tuned { kind: AlertKind::HardwareAging, objective, evaluations })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(f1: f64, timing: f64, firing: usize) -> Objective {
        Objective { f1, timing, firing }
    }

    #[test]
    fn objective_prefers_f1_then_timing_then_fewer_alerts() {
        assert!(obj(0.9, 1e9, 10).better_than(&obj(0.8, 1.0, 1)));
        assert!(obj(0.9, 5.0, 10).better_than(&obj(0.9, 6.0, 1)));
        assert!(obj(0.9, 5.0, 3).better_than(&obj(0.9, 5.0, 4)));
        assert!(!obj(0.9, 5.0, 4).better_than(&obj(0.9, 5.0, 4)));
    }

    #[test]
    fn search_finds_the_optimum_of_a_separable_objective() {
        let knobs =
            vec![Knob::new("a", (0..10).map(f64::from).collect()), Knob::new("b", (0..10).map(f64::from).collect())];
        // F1 peaks at a = 7, b = 3; nothing else distinguishes points.
        let (best, o, _) =
            search(&knobs, &[vec![0, 0]], |v| obj(1.0 / (1.0 + (v[0] - 7.0).abs() + (v[1] - 3.0).abs()), 0.0, 0));
        assert_eq!(best, vec![7.0, 3.0]);
        assert_eq!(o.f1, 1.0);
    }

    #[test]
    fn rounds_to_three_significant_digits() {
        assert_eq!(round3(0.0123456), 0.0123);
        assert_eq!(round3(123456.0), 123000.0);
        assert_eq!(quantiles(vec![3.0, 1.0, f32::NAN, 2.0], &[0.0, 0.5, 1.0]), vec![1.0, 2.0, 3.0]);
    }
}
