//! The engine: each terminal's state stepped one reporting interval at a
//! time, reports held in a pending queue until their arrival time is due,
//! and written out as JSON in arrival order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use termwatch_telemetry::alerts::IncidentLabel;
use termwatch_telemetry::time::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE};

use crate::config::SimConfig;
use crate::error::SimError;
use crate::fleet::{Fleet, Net};
use crate::json;
use crate::rng::{Rng, mix_unit};
use crate::schedule::{Blip, EffectKind, Part, Regression, RegressionShape, Schedule};

/// "Not measured" for the fixed-point fields of [`Rec`].
const NONE: i32 = i32::MIN;
/// How far a jumping clock is off: 23 h 59 m, just inside the contract's
/// 24 h limit on `ts` after ingestion.
const CLOCK_JUMP_MS: i64 = 24 * MS_PER_HOUR - MS_PER_MINUTE;

/// How a damaged record was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Damage {
    /// Cut short mid-record (a lost packet, a full buffer).
    Truncated,
    /// A number sent as a string, or a string as a number.
    WrongType,
    /// A counter below zero (a firmware subtraction bug).
    NegativeCounter,
    /// `terminal_id`, `ts` or `region` missing.
    MissingField,
    /// A value outside its range (a raw 0xFFFF sensor reading).
    OutOfRange,
}

impl Damage {
    const ALL: [Damage; 5] =
        [Damage::Truncated, Damage::WrongType, Damage::NegativeCounter, Damage::MissingField, Damage::OutOfRange];
    const WEIGHTS: [f64; 5] = [0.3, 0.2, 0.2, 0.15, 0.15];
}

/// What the pull API says about the record it just wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// When the record reaches the collector (Kafka, file), epoch ms. Records
    /// come out in this order.
    pub arrival_ms: i64,
    /// The record's `ts`: end of its reporting interval, epoch ms.
    pub event_ms: i64,
    /// Index of the terminal in the fleet; [`Simulator::terminal_id`] gives
    /// its id, the Kafka key.
    pub terminal: u32,
    /// `Some` for a deliberately damaged record, which the contract rejects.
    pub damage: Option<Damage>,
}

/// One report, in fixed point, waiting for its arrival time.
#[derive(Debug, Clone, Copy, Default)]
struct Rec {
    ts: i64,
    /// Added to `ts` as written: a clock that is wrong for this report.
    clock_error_ms: i64,
    arrival: i64,
    uptime_s: u64,
    term: u32,
    damage: Option<Damage>,
    damage_param: u32,
    fw: [u16; 3],
    /// Centivolts.
    v_mean: i32,
    v_min: i32,
    v_max: i32,
    /// Millivolts.
    v_std: i32,
    sags: u32,
    swells: u32,
    /// Tenths of a percent, or NONE.
    battery_pct: i32,
    battery_health: i32,
    /// Tenths of a degree, or NONE.
    temp: i32,
    card_reads: u32,
    card_errors: u32,
    print_jobs: u32,
    print_errors: u32,
    txn: u32,
    txn_failed: u32,
    txn_timeouts: u32,
    /// Tenths of a millisecond, or NONE.
    p50: i32,
    p95: i32,
    /// Tenths of a millisecond, or NONE (written as null).
    rtt: i32,
    /// Hundredths of a percent.
    loss: i32,
    /// Tenths of a dBm, or NONE.
    signal: i32,
    reconnects: u32,
    reboots: u32,
    crashes: u32,
    /// Tenths of a percent.
    mem: i32,
    cpu: i32,
}

/// What changes in a terminal from one report to the next.
#[derive(Debug, Clone)]
struct TermState {
    /// None before the first report.
    on: Option<bool>,
    boot_ms: i64,
    fw: [u16; 3],
    /// Sequence number + 1 of the last rollout applied.
    rollout_done: u32,
    /// Sequence number + 1 of the last staged rollout applied, and the
    /// version it replaced (what a rollback returns to).
    staged_done: u32,
    fw_before: [u16; 3],
    /// NaN until the first report.
    temp_c: f64,
    charge: f64,
    health_base: f64,
    health_base_ts: i64,
    reader_factor: f64,
    printer_factor: f64,
    psu_bad: bool,
    /// First span that may still be active.
    cursor: usize,
    /// Effect id + 1 of the last part swap done.
    swapped: u32,
    /// Local day on which a flat handheld was put back on its dock.
    docked_day: i64,
    /// Event time of its last report.
    last_ts: i64,
}

/// What the active effects do to one report.
#[derive(Debug, Clone, Copy)]
struct Mods {
    reader_err: Option<f64>,
    printer_err: Option<f64>,
    /// (health lost to aging, load factor, failed)
    battery: Option<(f64, f64, bool)>,
    swap: Option<(Part, u32)>,
    /// Fractions of nominal.
    v_std_add: f64,
    v_mean_shift: f64,
    sag_lambda: f64,
    swell_lambda: f64,
    sag_depth: f64,
    reboot: bool,
    temp_add: f64,
    on_battery: bool,
    rtt_mult: f64,
    rtt_add: f64,
    loss_add: f64,
    reconnects_per_min: f64,
    down_until: Option<i64>,
    rollout: Option<(u32, [u16; 3])>,
    staged: Option<(u32, [u16; 3])>,
    rollback: bool,
    blip: Option<Blip>,
}

impl Default for Mods {
    fn default() -> Self {
        Mods {
            reader_err: None,
            printer_err: None,
            battery: None,
            swap: None,
            v_std_add: 0.0,
            v_mean_shift: 0.0,
            sag_lambda: 0.0,
            swell_lambda: 0.0,
            sag_depth: 0.0,
            reboot: false,
            temp_add: 0.0,
            on_battery: false,
            rtt_mult: 1.0,
            rtt_add: 0.0,
            loss_add: 0.0,
            reconnects_per_min: 0.0,
            down_until: None,
            rollout: None,
            staged: None,
            rollback: false,
            blip: None,
        }
    }
}

/// A fleet simulation: pull records one at a time in arrival order with
/// [`Simulator::next_record`], or write them all with
/// [`Simulator::write_ndjson`](crate::Simulator::write_ndjson).
#[derive(Debug)]
pub struct Simulator {
    cfg: SimConfig,
    start_ms: i64,
    end_ms: i64,
    interval_ms: i64,
    fleet: Fleet,
    schedule: Schedule,
    states: Vec<TermState>,
    rng: Rng,
    /// Regressed versions: (model, version, what it does).
    regressions: Vec<(u8, [u16; 3], Regression)>,
    /// Next tick to generate.
    tick: u64,
    ticks: u64,
    slab: Vec<Rec>,
    free: Vec<u32>,
    /// (arrival, sequence, slot)
    pending: BinaryHeap<Reverse<(i64, u64, u32)>>,
    seq: u64,
}

fn hypot(a: f64, b: f64) -> f64 {
    (a * a + b * b).sqrt()
}

fn fixed(v: f64, scale: f64) -> i32 {
    (v * scale).round() as i32
}

impl Simulator {
    /// Validates the configuration, builds the fleet and the schedule of
    /// faults and events. Records are generated lazily as they are pulled.
    pub fn new(cfg: SimConfig) -> Result<Simulator, SimError> {
        cfg.validate()?;
        let start_ms = cfg.start_ms()?;
        let end_ms = cfg.end_ms(start_ms);
        let fleet = Fleet::build(&cfg, start_ms, end_ms);
        let schedule = Schedule::build(&cfg, &fleet, start_ms, end_ms);
        let mut init = Rng::stream(cfg.seed, 3);
        let states = fleet
            .terminals
            .iter()
            .map(|t| {
                let site = fleet.site_of(t);
                let boot_ms = if cfg.daily_reboot {
                    let (day, _) = fleet.local(t.region, start_ms);
                    let offset = fleet.regions[t.region as usize].utc_offset_ms;
                    let r = day * MS_PER_DAY + t.reboot_tod_ms - offset + 40_000;
                    if r <= start_ms { r } else { r - MS_PER_DAY }
                } else {
                    start_ms - (init.range(1.0, 40.0) * MS_PER_DAY as f64) as i64
                };
                TermState {
                    on: if site.night_off { None } else { Some(true) },
                    boot_ms,
                    fw: t.firmware0,
                    rollout_done: 0,
                    staged_done: 0,
                    fw_before: t.firmware0,
                    temp_c: f64::NAN,
                    charge: init.range(80.0, 100.0),
                    health_base: t.battery_health0,
                    health_base_ts: start_ms,
                    reader_factor: 1.0,
                    printer_factor: 1.0,
                    psu_bad: false,
                    cursor: 0,
                    swapped: 0,
                    docked_day: i64::MIN,
                    last_ts: start_ms,
                }
            })
            .collect();
        let ticks = cfg.ticks();
        let n = fleet.terminals.len();
        let regressions = schedule
            .effects
            .iter()
            .filter_map(|e| match e.kind {
                EffectKind::Staged { model, firmware, regression: Some(r), .. } => Some((model, firmware, r)),
                _ => None,
            })
            .collect();
        Ok(Simulator {
            regressions,
            rng: Rng::stream(cfg.seed, 4),
            interval_ms: i64::from(cfg.interval_s) * 1000,
            start_ms,
            end_ms,
            fleet,
            schedule,
            states,
            tick: 0,
            ticks,
            slab: Vec::with_capacity(n * 2),
            free: Vec::new(),
            pending: BinaryHeap::with_capacity(n * 2),
            seq: 0,
            cfg,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The simulated fleet (regions, sites, terminals), read only.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Ground truth: every injected fault, sorted by start.
    pub fn labels(&self) -> &[IncidentLabel] {
        &self.schedule.labels
    }

    /// The severity (0 subtle - 1 gross) each label was drawn with, in the
    /// order of [`Simulator::labels`].
    pub fn label_severities(&self) -> &[f64] {
        &self.schedule.severities
    }

    /// The schedule: every effect, labelled or not, and its spans.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The id of a terminal (the Kafka key of its records).
    pub fn terminal_id(&self, terminal: u32) -> &str {
        self.fleet.terminals.get(terminal as usize).map_or("", |t| t.id.as_str())
    }

    /// First event time of the history, epoch ms.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// End of the history (exclusive), epoch ms.
    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }

    /// Records if every terminal reported at every interval (an upper bound
    /// on what will be written), for progress reporting.
    pub fn max_records(&self) -> u64 {
        self.ticks * self.fleet.terminals.len() as u64
    }

    /// Writes the next record, in arrival order, into `buf` (cleared first;
    /// no trailing newline) and returns what it is; `None` when the history
    /// is exhausted. Does not allocate once the buffers have grown.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Option<RecordMeta> {
        loop {
            // Records of tick k have ts >= start + k·interval and arrive no
            // earlier than their ts: anything due before that is final.
            let watermark = self.start_ms + self.tick as i64 * self.interval_ms;
            if let Some(&Reverse((arrival, _, slot))) = self.pending.peek()
                && (arrival < watermark || self.tick >= self.ticks)
            {
                self.pending.pop();
                let rec = self.slab[slot as usize];
                self.free.push(slot);
                self.write_record(&rec, buf);
                return Some(RecordMeta {
                    arrival_ms: rec.arrival,
                    event_ms: rec.ts,
                    terminal: rec.term,
                    damage: rec.damage,
                });
            }
            if self.tick >= self.ticks {
                return None;
            }
            self.generate_tick();
        }
    }

    fn generate_tick(&mut self) {
        let tick = self.tick;
        self.tick += 1;
        for ti in 0..self.fleet.terminals.len() {
            let ts = self.start_ms + tick as i64 * self.interval_ms + self.fleet.terminals[ti].phase_ms;
            if let Some(rec) = self.step(ti, tick, ts) {
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.slab[s as usize] = rec;
                        s
                    }
                    None => {
                        self.slab.push(rec);
                        (self.slab.len() - 1) as u32
                    }
                };
                self.pending.push(Reverse((rec.arrival, self.seq, slot)));
                self.seq += 1;
            }
        }
    }

    /// Collects what the active effects do to terminal `ti` at `ts`.
    fn mods(&mut self, ti: usize, tick: u64, ts: i64) -> Mods {
        let mut m = Mods::default();
        let spans = &self.schedule.spans[ti];
        let st = &mut self.states[ti];
        while st.cursor < spans.len() && spans[st.cursor].end <= ts {
            st.cursor += 1;
        }
        let per_min = self.interval_ms as f64 / MS_PER_MINUTE as f64;
        let seed = self.cfg.seed;
        let mut psu = false;
        for sp in &spans[st.cursor..] {
            if sp.start > ts {
                break;
            }
            if ts >= sp.end {
                continue;
            }
            let effect = &self.schedule.effects[sp.effect as usize];
            let (start, end) = (effect.start, effect.end);
            match effect.kind {
                EffectKind::Aging { part, failure, replaced, shape, peak } => {
                    if ts >= replaced {
                        if st.swapped != sp.effect + 1 {
                            m.swap = Some((part, sp.effect + 1));
                        }
                        continue;
                    }
                    let broken = ts >= failure;
                    let x = ((ts - sp.start) as f64 / (failure - sp.start) as f64).clamp(0.0, 1.0);
                    let curve = x.powf(shape);
                    let t = &self.fleet.terminals[ti];
                    match part {
                        Part::CardReader => {
                            let base = t.reader_err * st.reader_factor;
                            m.reader_err = Some(if broken { 0.92 } else { base + (peak - base) * curve });
                        }
                        Part::Printer => {
                            let base = t.printer_err * st.printer_factor;
                            m.printer_err = Some(if broken { 0.95 } else { base + (peak - base) * curve });
                        }
                        Part::Battery => {
                            m.battery = Some(if broken {
                                (peak + 4.0, 40.0, true)
                            } else {
                                (peak * curve, 1.0 + 25.0 * curve, false)
                            });
                        }
                    }
                }
                EffectKind::SiteMains { severity: s } => {
                    let key = seed ^ u64::from(sp.effect).wrapping_mul(0x9E37_79B9);
                    let ramp = ((ts - start) as f64 / (5 * MS_PER_MINUTE) as f64).clamp(0.0, 1.0);
                    let active = mix_unit(key, tick, 0) < 0.45 + 0.5 * s;
                    let level = ramp * if active { 1.0 } else { 0.25 };
                    m.v_std_add = hypot(m.v_std_add, level * (0.003 + 0.05 * s * s));
                    m.v_mean_shift -= level * (0.004 + 0.04 * s) * mix_unit(key, tick, 1);
                    m.sag_lambda += level * 4.0 * s * s * per_min;
                    m.swell_lambda += level * 1.5 * s * s * per_min;
                    m.sag_depth = m.sag_depth.max(0.05 + 0.3 * s);
                    if mix_unit(key, tick, 2) < s * s * s * 0.02 * per_min {
                        m.reboot = true;
                        m.sag_lambda += 1.0;
                    }
                    m.on_battery |= active && s > 0.5;
                }
                EffectKind::PowerSupply { severity: s } => {
                    psu = true;
                    let x = ((ts - start) as f64 / (end - start) as f64).clamp(0.0, 1.0);
                    let enter = 1.0 - (1.0 - (0.01 + 0.2 * x.powf(1.5) * (0.5 + s)).min(0.9)).powf(per_min);
                    let stay = (0.6 + 0.3 * x).powf(per_min);
                    st.psu_bad = if st.psu_bad { self.rng.chance(stay) } else { self.rng.chance(enter) };
                    if st.psu_bad {
                        let level = 0.4 + 0.6 * x;
                        m.v_mean_shift -= level * (0.02 + 0.10 * s);
                        m.v_std_add = hypot(m.v_std_add, level * (0.004 + 0.05 * s));
                        m.sag_lambda += (0.2 + 5.0 * s) * x * per_min;
                        m.sag_depth = m.sag_depth.max(0.1 + 0.35 * s);
                        if self.rng.chance((s * x) * (s * x) * 0.06 * per_min) {
                            m.reboot = true;
                        }
                        m.temp_add += 2.0 + 4.0 * s;
                        m.on_battery = true;
                    } else {
                        m.v_std_add = hypot(m.v_std_add, 0.002 * s * x);
                    }
                }
                EffectKind::Network { severity: s, ramp_in, ramp_out } => {
                    let up = (ts - start) as f64 / ramp_in.max(1) as f64;
                    let down = (end - ts) as f64 / ramp_out.max(1) as f64;
                    let i = s * f64::from(sp.weight) * up.min(down).clamp(0.0, 1.0);
                    m.rtt_mult *= 1.0 + 3.0 * i + 2.0 * i * i;
                    m.rtt_add += i * 40.0;
                    m.loss_add += i * (4.0 + 18.0 * i);
                    m.reconnects_per_min += i * (0.05 + 0.6 * i);
                }
                EffectKind::Uplink { down, loss_pct, rtt_mult, reconnects_per_min } => {
                    if down {
                        m.down_until = Some(end);
                        m.reconnects_per_min += 2.0;
                    } else {
                        m.loss_add += loss_pct;
                        m.rtt_mult *= rtt_mult;
                        m.reconnects_per_min += reconnects_per_min;
                    }
                }
                EffectKind::Rollout { seq, firmware } => {
                    if st.rollout_done <= seq {
                        m.rollout = Some((seq, firmware));
                    }
                }
                EffectKind::Staged { seq, firmware, .. } => {
                    if st.staged_done <= seq {
                        m.staged = Some((seq, firmware));
                    }
                }
                EffectKind::Rollback { firmware } => m.rollback |= st.fw == firmware,
                EffectKind::Blip(b) => m.blip = Some(b),
            }
        }
        if !psu {
            st.psu_bad = false;
        }
        m
    }

    /// One report of terminal `ti` at `ts`, or None when it is switched off
    /// (or its report is lost while its uplink is down).
    fn step(&mut self, ti: usize, tick: u64, ts: i64) -> Option<Rec> {
        let interval = self.interval_ms;
        let per_min = interval as f64 / MS_PER_MINUTE as f64;
        let fleet = &self.fleet;
        let t = &fleet.terminals[ti];
        let site = fleet.site_of(t);
        let (day, tod) = fleet.local(t.region, ts);
        let jitter = (mix_unit(self.cfg.seed, ti as u64, day as u64) - 0.5) * 20.0;
        if !fleet.powered(t, site, day, tod, jitter) {
            self.states[ti].on = Some(false);
            return None;
        }
        let m = self.mods(ti, tick, ts);
        let fleet = &self.fleet;
        let t = &fleet.terminals[ti];
        let site = fleet.site_of(t);
        let spec = t.spec();
        let region = &fleet.regions[t.region as usize];
        let physics = &self.cfg.physics;
        let rng = &mut self.rng;
        let st = &mut self.states[ti];

        // Power and boots.
        let mut reboots = 0u32;
        let mut fresh_boot = false;
        match st.on {
            Some(true) => {}
            Some(false) => {
                // Switched on during the interval (not counted as a reboot).
                st.boot_ms = ts - (rng.range(0.1, 0.9) * interval as f64) as i64;
                st.temp_c = f64::NAN;
                fresh_boot = true;
                // Switched off on its dock, it went on charging.
                st.charge = (st.charge + 1.5 * (ts - st.last_ts) as f64 / MS_PER_MINUTE as f64).min(100.0);
            }
            None => {
                // Already on when the history starts: on since the morning.
                st.boot_ms = ts - (rng.range(0.3, 6.0) * MS_PER_HOUR as f64) as i64;
            }
        }
        st.on = Some(true);
        st.last_ts = ts;
        if self.cfg.daily_reboot && !site.night_off {
            for d in [day, day - 1] {
                let r = d * MS_PER_DAY + t.reboot_tod_ms - region.utc_offset_ms;
                if r > ts - interval && r <= ts {
                    reboots += 1;
                    st.boot_ms = (r + 40_000).min(ts);
                }
            }
        }
        let mut other_reboot = m.reboot || rng.chance(0.01 * interval as f64 / MS_PER_DAY as f64);
        if let Some((seq, fw)) = m.rollout {
            st.rollout_done = seq + 1;
            st.fw = fw;
            other_reboot = true;
        }
        if let Some((seq, fw)) = m.staged {
            st.staged_done = seq + 1;
            st.fw_before = st.fw;
            st.fw = fw;
            other_reboot = true;
        } else if m.rollback {
            st.fw = st.fw_before;
            other_reboot = true;
        }
        // A regressed version: draws only while one runs, so fleets without
        // staged rollouts stay what they were.
        let regression = self.regressions.iter().find(|r| r.0 == t.model && r.1 == st.fw).map(|r| r.2);
        let mut extra_crashes = 0;
        let mut leak_per_hour = 0.0;
        if let Some(Regression { shape, severity: s }) = regression {
            match shape {
                RegressionShape::Crashes => {
                    extra_crashes = rng.poisson(0.0004 * (4.0 + 30.0 * s) * per_min);
                    other_reboot |= extra_crashes > 0 && rng.chance(0.4);
                }
                RegressionShape::MemoryLeak => {
                    leak_per_hour = 1.0 + 8.0 * s;
                    let hours = (ts - st.boot_ms).max(0) as f64 / MS_PER_HOUR as f64;
                    if spec.mem_base + leak_per_hour * hours > 96.0 {
                        // Out of memory: the application dies, the terminal restarts.
                        extra_crashes = 1;
                        other_reboot = true;
                    }
                }
                RegressionShape::RebootLoop => {
                    if rng.chance(((2.0 + 20.0 * s) / 1440.0 * per_min).min(1.0)) {
                        other_reboot = true;
                        extra_crashes = u32::from(rng.chance(0.3));
                    }
                }
                RegressionShape::SlowTransactions => {}
            }
        }
        if let Some((part, id)) = m.swap {
            st.swapped = id;
            match part {
                Part::CardReader => st.reader_factor = 0.5,
                Part::Printer => st.printer_factor = 0.5,
                Part::Battery => {
                    st.health_base = rng.range(98.0, 100.0);
                    st.health_base_ts = ts;
                    st.charge = rng.range(60.0, 90.0);
                }
            }
            other_reboot = true;
        }
        if other_reboot {
            reboots += 1;
            st.boot_ms = ts - (rng.range(0.05, 0.95) * (interval.min(120_000)) as f64) as i64;
        }
        let uptime_s = ((ts - st.boot_ms).max(0) / 1000) as u64;
        let just_booted = fresh_boot || uptime_s < 120;

        // Traffic.
        let lambda = fleet.traffic_per_hour(t, site, day, tod) * interval as f64 / MS_PER_HOUR as f64;
        let mut txn = rng.poisson(lambda);
        if m.down_until.is_some() {
            // Offline: most customers pay another way.
            txn = rng.binomial(txn, 0.3);
        }

        // Card reader: failed reads are retried, up to three times.
        let p_read = m.reader_err.unwrap_or(t.reader_err * st.reader_factor).clamp(0.0, 0.95);
        let mut card_errors =
            if txn > 0 { rng.poisson(f64::from(txn) * p_read / (1.0 - p_read)).min(3 * txn + 2) } else { 0 };
        let abandoned = rng.binomial(txn, p_read * p_read * p_read);
        if m.blip == Some(Blip::CardErrors) {
            card_errors += 2 + rng.below(3) as u32;
        }
        let card_reads = txn + card_errors;

        // Printer.
        let (mut print_jobs, mut print_errors) = (0, 0);
        if spec.printer {
            print_jobs = rng.binomial(txn - abandoned, t.print_share);
            let p = m.printer_err.unwrap_or(t.printer_err * st.printer_factor);
            print_errors = rng.binomial(print_jobs, p);
            if m.blip == Some(Blip::PrintJam) {
                print_jobs = print_jobs.max(1);
                print_errors = (print_errors + 1).min(print_jobs);
            }
        }

        // Network.
        let (signal, signal_loss) = match t.net {
            Net::Eth => (None, 0.0),
            Net::Wifi | Net::Cellular => {
                let s = (site.signal_dbm + t.signal_offset_db + rng.gauss(0.0, 1.5)).clamp(-125.0, -30.0);
                let weak =
                    if t.net == Net::Cellular { (-98.0 - s).max(0.0) * 0.08 } else { (-75.0 - s).max(0.0) * 0.1 };
                (Some(s), weak)
            }
        };
        let spike = if rng.chance(0.004) || m.blip == Some(Blip::RttSpike) { rng.range(3.0, 10.0) } else { 1.0 };
        let wifi = if t.net == Net::Wifi { 4.0 } else { 0.0 };
        let rtt_ms = ((region.base_rtt_ms + site.line_rtt_ms + wifi)
            * (rng.normal() * physics.rtt_noise_sigma).exp()
            * m.rtt_mult
            * spike
            + m.rtt_add * rng.range(0.5, 1.5))
        .min(30_000.0);
        let mut loss = site.line_loss_pct * (rng.normal() * physics.loss_noise_sigma).exp()
            + signal_loss
            + m.loss_add * rng.range(0.8, 1.2);
        if m.blip == Some(Blip::RttSpike) {
            loss += rng.range(1.0, 8.0);
        }
        let down = m.down_until.is_some();
        if down {
            loss = 100.0;
        }
        let loss = loss.clamp(0.0, 100.0);
        let base_reconnect = match t.net {
            Net::Eth => 0.0003,
            Net::Wifi => 0.001,
            Net::Cellular => 0.002 + signal_loss * 0.01,
        };
        let reconnects = rng.poisson((base_reconnect + m.reconnects_per_min) * per_min);

        // Host: timeouts and latency.
        let loss_frac = loss / 100.0;
        let p_timeout = if down {
            1.0
        } else {
            (0.0008 + 1.6 * loss_frac.powf(1.2) + ((rtt_ms - 600.0) / 4000.0).max(0.0)).min(0.95)
        };
        let txn_timeouts = rng.binomial(txn - abandoned, p_timeout);
        let mut crashes = rng.poisson(0.0004 * per_min) + extra_crashes;
        if m.blip == Some(Blip::AppCrash) {
            crashes += 1;
        }
        let slow = match regression {
            Some(Regression { shape: RegressionShape::SlowTransactions, severity: s }) => Some(s),
            _ => None,
        };
        let mut other_failed = rng.binomial(txn - abandoned - txn_timeouts, 0.002);
        if let Some(s) = slow {
            other_failed += rng.binomial(txn - abandoned - txn_timeouts - other_failed, 0.01 + 0.04 * s);
        }
        let txn_failed = (abandoned + txn_timeouts + other_failed + crashes.min(1) * u32::from(txn > 0)).min(txn);
        let (p50, p95) = if txn > 0 && !down {
            let mut p50 = region.host_ms * rng.gauss(1.0, 0.06).max(0.5) + 2.2 * rtt_ms + loss_frac * 2500.0;
            let mut p95 = p50 * rng.range(1.5, 2.1) + loss_frac * 6000.0;
            if let Some(s) = slow {
                p50 *= 1.1 + 0.3 * s;
                p95 *= 1.3 + 1.2 * s;
            }
            if f64::from(txn_timeouts) >= 0.05 * f64::from(txn) && txn_timeouts > 0 {
                p95 = p95.max(30_000.0);
            }
            if m.blip == Some(Blip::LatencySpike) {
                p95 *= 3.0;
            }
            (fixed(p50, 10.0), fixed(p95.max(p50), 10.0))
        } else {
            (NONE, NONE)
        };

        // A handheld off its dock runs on its battery and measures no supply.
        let undocked = t.mobile && st.docked_day != day && fleet.site_open(site, day, tod);

        // Supply.
        let v = spec.nominal_v;
        let noisier = if physics.noisy_model == spec.name { physics.noisy_model_factor } else { 1.0 };
        let sd_model = spec.v_noise * noisier * (rng.normal() * physics.supply_noise_sigma).exp();
        let sd = hypot(sd_model, v * m.v_std_add);
        let printing = print_jobs > 0;
        let mean = v * (1.0 + site.mains_offset + t.adapter_offset + m.v_mean_shift) + rng.gauss(0.0, sd_model * 0.15)
            - if printing { v * 0.002 } else { 0.0 };
        let mut vmin = mean - sd * rng.range(2.0, 3.2) - if printing { v * rng.range(0.008, 0.025) } else { 0.0 };
        let mut vmax = mean + sd * rng.range(2.0, 3.2);
        let mut sags = rng.poisson(m.sag_lambda);
        let mut swells = rng.poisson(m.swell_lambda);
        if m.blip == Some(Blip::Sag) {
            sags += 1;
        }
        if sags > 0 {
            vmin = vmin.min(v * (0.9 - rng.range(0.005, m.sag_depth.max(0.03))));
        }
        if swells > 0 {
            vmax = vmax.max(v * (1.1 + rng.range(0.005, 0.04 + 0.5 * m.sag_depth)));
        }
        let vmin = vmin.max(0.0);
        if vmin < 0.9 * v {
            sags = sags.max(1);
        }
        if vmax > 1.1 * v {
            swells = swells.max(1);
        }
        let v_mean = fixed(mean, 100.0);
        let v_min = fixed(vmin, 100.0).min(v_mean);
        let v_max = fixed(vmax, 100.0).max(v_mean).min(6000);
        let v_mean = v_mean.min(v_max);
        let v_std = fixed(sd, 1000.0);
        let (v_mean, v_min, v_max, v_std) =
            if undocked { (NONE, NONE, NONE, NONE) } else { (v_mean, v_min, v_max, v_std) };

        // Battery.
        let (battery_pct, battery_health) = if spec.battery {
            let days = (ts - st.health_base_ts) as f64 / MS_PER_DAY as f64;
            let (lost, load, failed) = m.battery.unwrap_or((0.0, 1.0, false));
            let health = (st.health_base - 0.012 * days - lost).clamp(5.0, 100.0);
            if failed {
                st.charge = rng.range(0.0, 4.0);
            } else {
                // An aged battery holds less: every draw takes a larger share of it.
                let wear = 100.0 / health;
                if undocked {
                    st.charge -= 0.04 * per_min * wear;
                } else if m.on_battery {
                    st.charge -= 0.3 * per_min * wear;
                } else {
                    st.charge += 1.2 * per_min * health / 100.0;
                }
                st.charge -= (f64::from(txn) * 0.05 + f64::from(print_jobs) * 0.1) * load * wear;
                st.charge = st.charge.clamp(0.0, 100.0);
                if undocked && st.charge < 3.0 {
                    // Flat: the merchant puts it back on the dock for the day.
                    st.docked_day = day;
                }
            }
            let dip = if printing { 0.3 * load * rng.range(0.5, 1.5) } else { 0.0 };
            let pct = (st.charge - dip).clamp(0.0, 100.0);
            (fixed(pct, 10.0), fixed(health + rng.gauss(0.0, 0.1), 10.0).clamp(0, 1000))
        } else {
            (NONE, NONE)
        };

        // CPU, memory, temperature.
        let txn_per_min = f64::from(txn) / per_min;
        let mut cpu =
            3.5 + 5.0 * txn_per_min.min(12.0) + 1.5 * f64::from(print_jobs) / per_min + rng.gauss(0.0, 1.2).abs();
        if just_booted || reboots > 0 {
            cpu = cpu.max(rng.range(35.0, 75.0));
        }
        if m.blip == Some(Blip::CpuSpike) {
            cpu = rng.range(95.0, 100.0);
        }
        let cpu = cpu.clamp(0.3, 100.0);
        let fw_mem = f64::from((st.fw[1] * 7 + st.fw[2] * 3) % 9) * 0.6 - 2.4;
        let mut mem = spec.mem_base
            + fw_mem
            + 0.3 * uptime_s as f64 / 86_400.0
            + if txn > 0 { 2.0 } else { 0.0 }
            + rng.gauss(0.0, 0.35);
        if m.blip == Some(Blip::CpuSpike) {
            mem += 10.0;
        }
        mem += leak_per_hour * uptime_s as f64 / 3600.0;
        let mem = mem.clamp(5.0, 99.5);
        let outdoor = fleet.outdoor_c(t.region, tod);
        let ambient = if site.indoor { 21.5 + 0.25 * (outdoor - 21.5) } else { outdoor };
        let target = ambient + spec.heat_c * (0.75 + 0.005 * cpu) + m.temp_add;
        if st.temp_c.is_nan() {
            st.temp_c = if fresh_boot { ambient } else { target };
        }
        st.temp_c += (target - st.temp_c) * (1.0 - (-(interval as f64) / 1_200_000.0).exp());
        let temp = if spec.temp_sensor { fixed(st.temp_c + rng.gauss(0.0, 0.2), 10.0) } else { NONE };

        // Arrival.
        let mut delay = 150.0 + rng.exponential(600.0);
        if t.net == Net::Cellular {
            delay += 300.0 + rng.exponential(500.0);
        }
        if rng.chance(self.cfg.very_late_share) {
            delay += rng.range(1.0, 6.0) * MS_PER_HOUR as f64;
        } else if rng.chance(self.cfg.late_share) {
            delay += rng.range(1.0, 15.0) * MS_PER_MINUTE as f64;
        }
        let mut arrival = ts + delay as i64;
        if let Some(until) = m.down_until {
            // Held in the terminal's buffer (two hours' worth) and sent when
            // the uplink returns; older reports are lost.
            if ts < until - 2 * MS_PER_HOUR {
                return None;
            }
            arrival = arrival.max(until + (rng.range(2.0, 120.0) * 1000.0) as i64);
        }
        let damage =
            if rng.chance(self.cfg.damaged_share) { Some(Damage::ALL[rng.weighted(&Damage::WEIGHTS)]) } else { None };
        let damage_param = rng.next_u64() as u32;
        // A hash, not the generator: the same fleet with and without clock
        // jumps differs in those reports' ts only.
        let reports_per_day = f64::from(self.fleet.terminals.len() as u32) * 86_400_000.0 / interval as f64;
        let clock_error_ms = if self.cfg.clock_jumps_per_day > 0.0
            && mix_unit(self.cfg.seed ^ 0xC10C_C10C, ti as u64, ts as u64)
                < self.cfg.clock_jumps_per_day / reports_per_day.max(1.0)
        {
            CLOCK_JUMP_MS
        } else {
            0
        };

        Some(Rec {
            ts,
            clock_error_ms,
            arrival,
            uptime_s,
            term: ti as u32,
            damage,
            damage_param,
            fw: st.fw,
            v_mean,
            v_min,
            v_max,
            v_std,
            sags,
            swells,
            battery_pct,
            battery_health,
            temp,
            card_reads,
            card_errors,
            print_jobs,
            print_errors,
            txn,
            txn_failed,
            txn_timeouts,
            p50,
            p95,
            rtt: if down { NONE } else { fixed(rtt_ms, 10.0) },
            loss: fixed(loss, 100.0),
            signal: signal.map_or(NONE, |s| fixed(s, 10.0)),
            reconnects,
            reboots,
            crashes,
            mem: fixed(mem, 10.0),
            cpu: fixed(cpu, 10.0),
        })
    }

    fn write_record(&self, r: &Rec, out: &mut Vec<u8>) {
        let t = &self.fleet.terminals[r.term as usize];
        let spec = t.spec();
        out.clear();
        out.extend_from_slice(&t.json[..t.json_mid]);
        if spec.epoch_ts {
            json::push_i64(out, r.ts + r.clock_error_ms);
        } else {
            json::push_rfc3339(out, r.ts + r.clock_error_ms);
        }
        out.extend_from_slice(&t.json[t.json_mid..t.json_tail]);
        json::push_u64(out, u64::from(r.fw[0]));
        out.push(b'.');
        json::push_u64(out, u64::from(r.fw[1]));
        out.push(b'.');
        json::push_u64(out, u64::from(r.fw[2]));
        out.extend_from_slice(&t.json[t.json_tail..]);

        let fixed = |out: &mut Vec<u8>, key: &[u8], v: i32, decimals: u32| {
            out.extend_from_slice(key);
            json::push_fixed(out, i64::from(v), decimals);
        };
        let count = |out: &mut Vec<u8>, key: &[u8], v: u32| {
            out.extend_from_slice(key);
            json::push_u64(out, u64::from(v));
        };
        if r.v_mean != NONE {
            fixed(out, b",\"supply_v_mean\":", r.v_mean, 2);
            fixed(out, b",\"supply_v_min\":", r.v_min, 2);
            fixed(out, b",\"supply_v_max\":", r.v_max, 2);
            fixed(out, b",\"supply_v_std\":", r.v_std, 3);
            count(out, b",\"supply_sags\":", r.sags);
            count(out, b",\"supply_swells\":", r.swells);
        }
        if r.battery_pct != NONE {
            fixed(out, b",\"battery_pct\":", r.battery_pct, 1);
            fixed(out, b",\"battery_health_pct\":", r.battery_health, 1);
        }
        if r.temp != NONE {
            fixed(out, b",\"temperature_c\":", r.temp, 1);
        }
        count(out, b",\"card_reads\":", r.card_reads);
        count(out, b",\"card_read_errors\":", r.card_errors);
        if spec.printer {
            count(out, b",\"print_jobs\":", r.print_jobs);
            count(out, b",\"print_errors\":", r.print_errors);
        }
        count(out, b",\"txn_count\":", r.txn);
        count(out, b",\"txn_failed\":", r.txn_failed);
        count(out, b",\"txn_timeouts\":", r.txn_timeouts);
        if r.p50 != NONE {
            fixed(out, b",\"txn_latency_p50_ms\":", r.p50, 1);
            fixed(out, b",\"txn_latency_p95_ms\":", r.p95, 1);
        }
        out.extend_from_slice(b",\"net_type\":\"");
        out.extend_from_slice(t.net.as_str().as_bytes());
        out.push(b'"');
        if r.rtt != NONE {
            fixed(out, b",\"net_rtt_ms\":", r.rtt, 1);
        } else {
            out.extend_from_slice(b",\"net_rtt_ms\":null");
        }
        fixed(out, b",\"net_loss_pct\":", r.loss, 2);
        if r.signal != NONE {
            fixed(out, b",\"net_signal_dbm\":", r.signal, 1);
        }
        count(out, b",\"net_reconnects\":", r.reconnects);
        out.extend_from_slice(b",\"uptime_s\":");
        json::push_u64(out, r.uptime_s);
        count(out, b",\"reboots\":", r.reboots);
        count(out, b",\"app_crashes\":", r.crashes);
        fixed(out, b",\"mem_used_pct\":", r.mem, 1);
        fixed(out, b",\"cpu_pct\":", r.cpu, 1);
        out.push(b'}');

        if let Some(d) = r.damage {
            damage(out, d, r.damage_param);
        }
    }
}

/// Breaks a well-formed record so that the contract rejects it.
fn damage(out: &mut Vec<u8>, d: Damage, p: u32) {
    let pick = |n: u32| (p % n) as usize;
    match d {
        Damage::Truncated => {
            let cut = 1 + (p as usize) % (out.len() - 1);
            out.truncate(cut);
        }
        Damage::WrongType => {
            let done = match pick(3) {
                0 => json::quote_value(out, "supply_v_mean"),
                1 => json::quote_value(out, "txn_count"),
                _ => false,
            };
            if !done {
                json::replace_value(out, "region", b"7");
            }
        }
        Damage::NegativeCounter => {
            let key = ["card_reads", "txn_count", "net_reconnects", "app_crashes"][pick(4)];
            let v = [b"-1".as_slice(), b"-2", b"-3", b"-4294967295"][(p / 7 % 4) as usize];
            json::replace_value(out, key, v);
        }
        Damage::MissingField => {
            json::remove_field(out, ["terminal_id", "ts", "region"][pick(3)]);
        }
        Damage::OutOfRange => {
            let done = match pick(3) {
                0 => json::replace_value(out, "temperature_c", b"327.67"),
                1 => json::replace_value(out, "cpu_pct", b"102.4"),
                _ => false,
            };
            if !done {
                json::replace_value(out, "net_loss_pct", b"655.35");
            }
        }
    }
}
