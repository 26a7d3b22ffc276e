//! Raw telemetry as a Prometheus server would hold it if every terminal were
//! exported as metrics: per terminal and per minute (Prometheus' usual rule
//! evaluation interval), the plain aggregates a PromQL expression can take
//! over `[5m]` (max, min, sum, average). No baselines, no learned state: only
//! what the terminal sent.
//!
//! Steps are aligned to the epoch: step `b` holds the reports whose `ts` is
//! in `(b·1m, (b+1)·1m]`, and a rule evaluated at `T = (b+1)·1m` sees the
//! range `(T−5m, T]`, the last [`RANGE_STEPS`] steps, as `x[5m]` does.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use termwatch_models::eval::FleetIndex;
use termwatch_pipeline::NdjsonFile;
use termwatch_pipeline::dedup::{self, Dedup};
use termwatch_telemetry::{Counter, Label, Measure, Telemetry, decode};

/// One evaluation step: Prometheus' usual rule evaluation interval.
pub const STEP_MS: i64 = 60_000;

/// Steps in the `[5m]` range that rules aggregate over.
pub const RANGE_STEPS: usize = 5;

/// The ingestion time given to history records: far enough ahead that no
/// recorded `ts` counts as "from the future" (as `termwatch eval` reads them).
const HISTORY_INGEST_MS: i64 = i64::MAX / 2;

/// Terminals × steps above this are refused: the grid is dense, twice ~64
/// bytes a cell, and this tool is for evaluation histories, not a year of a fleet.
const MAX_CELLS: usize = 40_000_000;

/// What one terminal reported within one step. Absent measurements leave the
/// neutral element (−∞ for a max, +∞ for a min, 0 for sums and counts), so a
/// threshold comparison on an absent series is false, as in PromQL.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub reports: u16,
    /// Max of `supply_v_std`, volts.
    pub v_std_max: f32,
    /// Min of `supply_v_mean / supply_v_nominal`.
    pub v_mean_ratio_min: f32,
    /// Sum of `supply_sags`.
    pub sags: u32,
    pub loss_sum: f32,
    pub loss_n: u16,
    pub rtt_sum: f32,
    pub rtt_n: u16,
    pub card_reads: u32,
    pub card_read_errors: u32,
    pub print_jobs: u32,
    pub print_errors: u32,
    /// Max of `battery_health_pct`.
    pub health_max: f32,
    /// The latest `battery_health_pct` in the step (NaN when none).
    pub health_last: f32,
    pub health_last_ts: i64,
}

impl Default for Cell {
    fn default() -> Self {
        Cell {
            reports: 0,
            v_std_max: f32::NEG_INFINITY,
            v_mean_ratio_min: f32::INFINITY,
            sags: 0,
            loss_sum: 0.0,
            loss_n: 0,
            rtt_sum: 0.0,
            rtt_n: 0,
            card_reads: 0,
            card_read_errors: 0,
            print_jobs: 0,
            print_errors: 0,
            health_max: f32::NEG_INFINITY,
            health_last: f32::NAN,
            health_last_ts: i64::MIN,
        }
    }
}

impl Cell {
    fn add(&mut self, t: &Telemetry<'_>) {
        self.reports = self.reports.saturating_add(1);
        if let Some(v) = t.measure(Measure::SupplyVStd) {
            self.v_std_max = self.v_std_max.max(v as f32);
        }
        if let Some(v) = t.measure(Measure::SupplyVMean)
            && t.supply_v_nominal > 0.0
        {
            self.v_mean_ratio_min = self.v_mean_ratio_min.min((v / t.supply_v_nominal) as f32);
        }
        let count = |c| t.counter(c).unwrap_or(0);
        self.sags = self.sags.saturating_add(count(Counter::SupplySags));
        if let Some(v) = t.measure(Measure::NetLossPct) {
            self.loss_sum += v as f32;
            self.loss_n = self.loss_n.saturating_add(1);
        }
        if let Some(v) = t.measure(Measure::NetRttMs) {
            self.rtt_sum += v as f32;
            self.rtt_n = self.rtt_n.saturating_add(1);
        }
        self.card_reads = self.card_reads.saturating_add(count(Counter::CardReads));
        self.card_read_errors = self.card_read_errors.saturating_add(count(Counter::CardReadErrors));
        self.print_jobs = self.print_jobs.saturating_add(count(Counter::PrintJobs));
        self.print_errors = self.print_errors.saturating_add(count(Counter::PrintErrors));
        if let Some(v) = t.measure(Measure::BatteryHealthPct) {
            self.health_max = self.health_max.max(v as f32);
            if t.ts_ms >= self.health_last_ts {
                self.health_last = v as f32;
                self.health_last_ts = t.ts_ms;
            }
        }
    }

    /// Adds a later step's cell: the aggregate over both.
    fn merge(&mut self, o: &Cell) {
        self.reports = self.reports.saturating_add(o.reports);
        self.v_std_max = self.v_std_max.max(o.v_std_max);
        self.v_mean_ratio_min = self.v_mean_ratio_min.min(o.v_mean_ratio_min);
        self.sags = self.sags.saturating_add(o.sags);
        self.loss_sum += o.loss_sum;
        self.loss_n = self.loss_n.saturating_add(o.loss_n);
        self.rtt_sum += o.rtt_sum;
        self.rtt_n = self.rtt_n.saturating_add(o.rtt_n);
        self.card_reads = self.card_reads.saturating_add(o.card_reads);
        self.card_read_errors = self.card_read_errors.saturating_add(o.card_read_errors);
        self.print_jobs = self.print_jobs.saturating_add(o.print_jobs);
        self.print_errors = self.print_errors.saturating_add(o.print_errors);
        self.health_max = self.health_max.max(o.health_max);
        if o.health_last_ts >= self.health_last_ts && !o.health_last.is_nan() {
            self.health_last = o.health_last;
            self.health_last_ts = o.health_last_ts;
        }
    }

    /// Mean `net_loss_pct`, NaN when not measured.
    pub fn loss_avg(&self) -> f32 {
        if self.loss_n == 0 { f32::NAN } else { self.loss_sum / f32::from(self.loss_n) }
    }

    /// Mean `net_rtt_ms`, NaN when not measured.
    pub fn rtt_avg(&self) -> f32 {
        if self.rtt_n == 0 { f32::NAN } else { self.rtt_sum / f32::from(self.rtt_n) }
    }
}

#[derive(Debug, Clone)]
pub struct Terminal {
    pub id: String,
    pub region: usize,
    /// Index into [`Cells::models`].
    pub model: usize,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub region: usize,
    pub terminals: Vec<usize>,
}

/// The whole history on a dense grid of terminals × steps, with the fleet's
/// structure (which site and region each terminal is in, its model label).
#[derive(Debug)]
pub struct Cells {
    /// Step index (epoch-aligned) of column 0.
    pub first_step: i64,
    pub steps: usize,
    pub terminals: Vec<Terminal>,
    pub sites: Vec<Site>,
    pub regions: Vec<String>,
    /// Model labels, sorted; a terminal without one has `-`.
    pub models: Vec<String>,
    cells: Vec<Cell>,
    /// Per step, the aggregate of the last [`RANGE_STEPS`] cells: what `x[5m]` sees.
    ranges: Vec<Cell>,
    /// What `termwatch eval` would build from the same files.
    pub fleet: FleetIndex,
    pub stats: ReadStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ReadStats {
    pub lines: u64,
    pub rejected: u64,
    /// Dropped as `termwatch replay` drops them: duplicates and reports too old to check.
    pub duplicates: u64,
}

/// The label of a terminal that reports no model.
pub const NO_MODEL: &str = "-";

impl Cells {
    /// The row of one terminal: one cell per step (1 minute).
    pub fn row(&self, terminal: usize) -> &[Cell] {
        &self.cells[terminal * self.steps..(terminal + 1) * self.steps]
    }

    /// The row of one terminal's `[5m]` ranges: at each step, the aggregate
    /// of that step and the four before it. A report stays visible in it for
    /// five evaluations, as a sample does in `max_over_time(x[5m])`.
    pub fn range_row(&self, terminal: usize) -> &[Cell] {
        &self.ranges[terminal * self.steps..(terminal + 1) * self.steps]
    }

    /// Event time at which a rule evaluated on step `s` speaks.
    pub fn step_end_ms(&self, s: usize) -> i64 {
        (self.first_step + s as i64 + 1) * STEP_MS
    }

    /// Reads telemetry files in order. Rejected records are skipped and
    /// counted, duplicates dropped as replay drops them; a missing or corrupt
    /// file fails the read, naming it.
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<Cells> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            files.push(NdjsonFile::open(p).with_context(|| format!("telemetry file {}", p.display()))?);
        }
        let mut b = Builder::default();
        for mut file in files {
            let name = file.path().to_owned();
            while let Some(line) = file.next_line().with_context(|| format!("telemetry file {name}"))? {
                if line.is_blank() {
                    continue;
                }
                b.stats.lines += 1;
                match decode(line.bytes, HISTORY_INGEST_MS) {
                    Ok(t) => b.add(&t),
                    Err(_) => b.stats.rejected += 1,
                }
            }
        }
        b.finish()
    }

    /// Builds the grid from decoded records.
    #[cfg(test)]
    pub fn from_records<'a>(records: impl IntoIterator<Item = Telemetry<'a>>) -> anyhow::Result<Cells> {
        let mut b = Builder::default();
        for t in records {
            b.stats.lines += 1;
            b.add(&t);
        }
        b.finish()
    }
}

/// One terminal while reading: its latest labels and its cells by step.
#[derive(Default)]
struct Seen {
    id: String,
    region: String,
    site: Option<String>,
    model: String,
    steps: HashMap<i64, Cell>,
}

#[derive(Default)]
struct Builder {
    ids: HashMap<String, usize>,
    terminals: Vec<Seen>,
    dedup: Dedup,
    fleet: FleetIndex,
    stats: ReadStats,
}

impl Builder {
    fn add(&mut self, t: &Telemetry<'_>) {
        let site = t.label(Label::SiteId);
        // Observed before deduplication, as `termwatch eval` reads the same file.
        self.fleet.observe(&t.terminal_id, site, &t.region, t.ts_ms);
        if self.dedup.check(&t.terminal_id, t.ts_ms, t.interval_s) != dedup::Seen::New {
            self.stats.duplicates += 1;
            return;
        }
        let idx = match self.ids.get(t.terminal_id.as_ref()) {
            Some(&i) => i,
            None => {
                let i = self.terminals.len();
                self.ids.insert(t.terminal_id.to_string(), i);
                self.terminals.push(Seen { id: t.terminal_id.to_string(), ..Seen::default() });
                i
            }
        };
        let entry = &mut self.terminals[idx];
        if entry.region != t.region {
            entry.region = t.region.to_string();
        }
        if entry.site.as_deref() != site {
            entry.site = site.map(str::to_owned);
        }
        let model = t.label(Label::Model).unwrap_or(NO_MODEL);
        if entry.model != model {
            entry.model = model.to_owned();
        }
        let step = (t.ts_ms - 1).div_euclid(STEP_MS);
        entry.steps.entry(step).or_default().add(t);
    }

    fn finish(self) -> anyhow::Result<Cells> {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for t in &self.terminals {
            for &s in t.steps.keys() {
                lo = lo.min(s);
                hi = hi.max(s);
            }
        }
        let steps = if lo > hi { 0 } else { usize::try_from(hi - lo + 1).unwrap_or(usize::MAX) };
        let n_cells = steps.saturating_mul(self.terminals.len());
        if n_cells > MAX_CELLS {
            anyhow::bail!(
                "telemetry spans {} steps of 1 min ({:.1} days) for {} terminals: more than {MAX_CELLS} terminal-steps, \
                 too large for rule evaluation (give a shorter history)",
                steps,
                steps as f64 * STEP_MS as f64 / 86_400_000.0,
                self.terminals.len()
            );
        }

        // Sorted identifiers, so output order does not depend on arrival order.
        let mut order: Vec<usize> = (0..self.terminals.len()).collect();
        order.sort_by(|&a, &b| self.terminals[a].id.cmp(&self.terminals[b].id));
        let mut regions: Vec<String> = self.terminals.iter().map(|t| t.region.clone()).collect();
        regions.sort();
        regions.dedup();
        let mut models: Vec<String> = self.terminals.iter().map(|t| t.model.clone()).collect();
        models.sort();
        models.dedup();
        let mut site_ids: Vec<(String, String)> =
            self.terminals.iter().filter_map(|t| t.site.clone().map(|s| (s, t.region.clone()))).collect();
        site_ids.sort();
        site_ids.dedup_by(|a, b| a.0 == b.0);
        let index_of = |list: &[String], v: &str| list.binary_search_by(|x| x.as_str().cmp(v)).unwrap_or(0);

        let mut sites: Vec<Site> = site_ids
            .iter()
            .map(|(id, region)| Site { id: id.clone(), region: index_of(&regions, region), terminals: Vec::new() })
            .collect();
        let mut terminals = Vec::with_capacity(order.len());
        let mut cells = vec![Cell::default(); n_cells];
        for (new, &old) in order.iter().enumerate() {
            let Seen { id, region, site, model, steps: by_step } = &self.terminals[old];
            let site = site.as_deref().and_then(|s| sites.binary_search_by(|x| x.id.as_str().cmp(s)).ok());
            if let Some(s) = site {
                sites[s].terminals.push(new);
            }
            terminals.push(Terminal {
                id: id.clone(),
                region: index_of(&regions, region),
                model: index_of(&models, model),
            });
            for (&s, cell) in by_step {
                // `s - lo` is in 0..steps by construction of lo and hi.
                let col = usize::try_from(s - lo).unwrap_or(0);
                cells[new * steps + col] = *cell;
            }
        }
        let mut ranges = vec![Cell::default(); n_cells];
        for t in 0..terminals.len() {
            let row = &cells[t * steps..(t + 1) * steps];
            for (s, out) in ranges[t * steps..(t + 1) * steps].iter_mut().enumerate() {
                for c in &row[s.saturating_sub(RANGE_STEPS - 1)..=s] {
                    out.merge(c);
                }
            }
        }
        Ok(Cells {
            first_step: if lo > hi { 0 } else { lo },
            steps,
            terminals,
            sites,
            regions,
            models,
            cells,
            ranges,
            fleet: self.fleet,
            stats: self.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_stays_in_the_five_minute_range_for_five_evaluations() {
        let t0 = 1_788_220_800_000; // 2026-09-01T00:00:00Z, a step boundary
        let mut a = Telemetry::new("T-1", t0 + 30_000, "east-01");
        a.measures[Measure::SupplyVStd.index()] = Some(0.5);
        let mut b = Telemetry::new("T-1", t0 + 9 * STEP_MS, "east-01");
        b.measures[Measure::SupplyVStd.index()] = Some(0.1);
        let cells = Cells::from_records([a, b]).expect("cells");
        // 00:09:00 is the end of step 8, (00:08, 00:09].
        assert_eq!(cells.steps, 9);
        assert_eq!(cells.step_end_ms(0), t0 + STEP_MS, "a report at 00:00:30 is seen at 00:01:00");
        let seen: Vec<f32> = cells.range_row(0).iter().map(|c| c.v_std_max).collect();
        let inf = f32::NEG_INFINITY;
        assert_eq!(seen, vec![0.5, 0.5, 0.5, 0.5, 0.5, inf, inf, inf, 0.1]);
    }
}
