//! What happens when: labelled faults (incidents), unlabelled events, and
//! the spans through which they reach each terminal's reports.
//!
//! Everything is drawn up front from its own random stream, so the schedule
//! of a seed does not depend on how records are generated.

use std::collections::HashMap;

use termwatch_telemetry::alerts::{AlertKind, IncidentLabel, Scope, Verdict};
use termwatch_telemetry::time::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE};

use crate::config::SimConfig;
use crate::fleet::{Fleet, MODELS, weekday};
use crate::rng::Rng;

/// A part that wears out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    CardReader,
    Printer,
    Battery,
}

impl Part {
    pub fn cause(self) -> &'static str {
        match self {
            Part::CardReader => "card_reader",
            Part::Printer => "printer",
            Part::Battery => "battery",
        }
    }
}

/// A short anomaly (unlabelled): one report, or a few with
/// `blip_max_reports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blip {
    /// One supply sag with its dip in `supply_v_min`.
    Sag,
    /// Round-trip time ×3-10 and some loss.
    RttSpike,
    /// p95 host latency ×3.
    LatencySpike,
    /// 2-4 card read errors.
    CardErrors,
    /// CPU near 100 %, memory up.
    CpuSpike,
    /// One paper jam.
    PrintJam,
    /// One payment application crash.
    AppCrash,
}

const BLIPS: [Blip; 7] =
    [Blip::Sag, Blip::RttSpike, Blip::LatencySpike, Blip::CardErrors, Blip::CpuSpike, Blip::PrintJam, Blip::AppCrash];

/// What an effect does, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum EffectKind {
    /// A part degrades from `start` (onset) to `failure` with
    /// `curve = progress^shape`, is broken until `replaced`, then swapped.
    Aging {
        part: Part,
        failure: i64,
        replaced: i64,
        shape: f64,
        peak: f64,
    },
    /// A site's mains problem (labelled, site scope).
    SiteMains {
        severity: f64,
    },
    /// A terminal's failing power supply: intermittent, worsening (labelled, terminal scope).
    PowerSupply {
        severity: f64,
    },
    /// Regional network degradation (labelled, region scope), ramping in and out.
    Network {
        severity: f64,
        ramp_in: i64,
        ramp_out: i64,
    },
    /// One site's uplink failing (unlabelled): degraded, or down with
    /// reports held and sent when it returns.
    Uplink {
        down: bool,
        loss_pct: f64,
        rtt_mult: f64,
        reconnects_per_min: f64,
    },
    /// A firmware rollout to one model in one region (unlabelled).
    Rollout {
        seq: u32,
        firmware: [u16; 3],
    },
    /// A staged rollout of `firmware` to one model (seq numbers its rollout):
    /// a terminal takes it, with a reboot, at its first report in its span.
    Staged {
        seq: u32,
        model: u8,
        firmware: [u16; 3],
        regression: Option<Regression>,
    },
    /// The rollback of a staged `firmware`: a terminal still on it returns
    /// to the version it ran before, with a reboot.
    Rollback {
        firmware: [u16; 3],
    },
    Blip(Blip),
}

/// What a regressed firmware version does to a terminal running it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regression {
    pub shape: RegressionShape,
    /// 0 subtle - 1 gross.
    pub severity: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegressionShape {
    /// The payment application crashes several times as often.
    Crashes,
    /// Memory climbs from boot until the application crashes and the
    /// terminal reboots.
    MemoryLeak,
    /// The terminal reboots several times a day.
    RebootLoop,
    /// Transactions take longer and more of them fail.
    SlowTransactions,
}

impl RegressionShape {
    pub const ALL: [RegressionShape; 4] = [
        RegressionShape::Crashes,
        RegressionShape::MemoryLeak,
        RegressionShape::RebootLoop,
        RegressionShape::SlowTransactions,
    ];

    pub fn cause(self) -> &'static str {
        match self {
            RegressionShape::Crashes => "crashes",
            RegressionShape::MemoryLeak => "memory_leak",
            RegressionShape::RebootLoop => "reboot_loop",
            RegressionShape::SlowTransactions => "slow_transactions",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub kind: EffectKind,
    pub start: i64,
    pub end: i64,
    /// Index of the label it produced, if any.
    pub label: Option<usize>,
}

/// An effect's reach into one terminal's reports: active for report times
/// in `[start, end)`, with a per-terminal strength `weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub effect: u32,
    pub weight: f32,
}

/// The whole plan of a run.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub effects: Vec<Effect>,
    /// Per terminal, sorted by start.
    pub spans: Vec<Vec<Span>>,
    pub labels: Vec<IncidentLabel>,
    /// Per label, the severity it was drawn with (0 subtle - 1 gross).
    pub severities: Vec<f64>,
}

/// Number of events for an expected count: the whole part, plus one more
/// with the probability of the fraction.
fn count(rng: &mut Rng, expected: f64) -> usize {
    let whole = expected.floor();
    whole as usize + usize::from(rng.chance(expected - whole))
}

/// Busy intervals per key, to keep incidents of a kind on an entity apart.
#[derive(Default)]
struct Occupancy(HashMap<(u8, u32), Vec<(i64, i64)>>);

impl Occupancy {
    fn free(&self, key: (u8, u32), start: i64, end: i64, margin: i64) -> bool {
        self.0.get(&key).is_none_or(|v| v.iter().all(|&(s, e)| end + margin <= s || start >= e + margin))
    }

    fn take(&mut self, key: (u8, u32), start: i64, end: i64) {
        self.0.entry(key).or_default().push((start, end));
    }
}

const KEY_AGING: u8 = 0;
const KEY_VOLTAGE_SITE: u8 = 1;
const KEY_NETWORK: u8 = 2;
const KEY_UPLINK: u8 = 3;

struct Builder<'a> {
    cfg: &'a SimConfig,
    fleet: &'a Fleet,
    start: i64,
    end: i64,
    interval: i64,
    out: Schedule,
    occ: Occupancy,
}

impl<'a> Builder<'a> {
    fn severity(&self, rng: &mut Rng) -> f64 {
        rng.range(self.cfg.faults.severity_min, self.cfg.faults.severity_max.max(self.cfg.faults.severity_min + 1e-9))
    }

    fn push(&mut self, kind: EffectKind, start: i64, end: i64, label: Option<IncidentLabel>, severity: f64) -> u32 {
        let label = label.map(|l| {
            self.out.labels.push(l);
            self.out.severities.push(severity);
            self.out.labels.len() - 1
        });
        self.out.effects.push(Effect { kind, start, end, label });
        (self.out.effects.len() - 1) as u32
    }

    fn span(&mut self, terminal: u32, start: i64, end: i64, effect: u32, weight: f64) {
        self.out.spans[terminal as usize].push(Span { start, end, effect, weight: weight as f32 });
    }

    fn label(
        &self,
        kind: AlertKind,
        scope: Scope,
        entity: &str,
        region: u32,
        (start, end): (i64, i64),
        cause: &str,
    ) -> IncidentLabel {
        IncidentLabel {
            kind,
            scope,
            entity: entity.to_string(),
            region: self.fleet.regions[region as usize].name.clone(),
            // Whole seconds, widened: floor the start, ceil the end.
            start: start - start.rem_euclid(1000),
            end: end + (1000 - end.rem_euclid(1000)) % 1000,
            verdict: Verdict::Incident,
            cause: Some(cause.to_string()),
        }
    }

    /// A time of day when the site trades, on the local day of `near` or
    /// up to a week before: parts fail while in use.
    fn business_time(&self, site: u32, near: i64, rng: &mut Rng) -> Option<i64> {
        let s = &self.fleet.sites[site as usize];
        let (day, _) = self.fleet.local(s.region, near);
        let offset = self.fleet.regions[s.region as usize].utc_offset_ms;
        for back in 0..8 {
            let d = day - back;
            let (open, close) = if s.round_the_clock() { (8 * 60, 20 * 60) } else { (s.open_min, s.close_min) };
            if !s.open_on(weekday(d)) || close < open + 90 {
                continue;
            }
            let m = rng.range(f64::from(open + 30), f64::from(close - 45));
            let t = d * MS_PER_DAY + (m * MS_PER_MINUTE as f64) as i64 - offset;
            if t <= near {
                return Some(t);
            }
        }
        None
    }

    fn aging(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        if span_days < 0.5 {
            return;
        }
        let n = count(rng, f.aging_per_1000_terminal_days * self.fleet.terminals.len() as f64 * span_days / 1000.0);
        for _ in 0..n {
            for _attempt in 0..20 {
                let ti = rng.below(self.fleet.terminals.len() as u64) as u32;
                let t = &self.fleet.terminals[ti as usize];
                let spec = t.spec();
                let mut parts = vec![(Part::CardReader, 0.45)];
                if spec.printer {
                    parts.push((Part::Printer, 0.35));
                }
                if spec.battery {
                    parts.push((Part::Battery, 0.6));
                }
                let weights: Vec<f64> = parts.iter().map(|p| p.1).collect();
                let part = parts[rng.weighted(&weights)].0;
                let mut days = rng.range(f.aging_min_days, f.aging_max_days);
                if days > 0.85 * span_days {
                    // Short histories compress aging so that it still ends in failure.
                    days = rng.range(0.4, 0.85) * span_days;
                }
                let dur = (days * MS_PER_DAY as f64) as i64;
                let latest_failure = self.end - 2 * MS_PER_HOUR;
                let earliest_failure = self.start + dur;
                if latest_failure <= earliest_failure {
                    continue;
                }
                let target = rng.range(earliest_failure as f64, latest_failure as f64) as i64;
                let Some(failure) = self.business_time(t.site, target, rng) else { continue };
                let onset = failure - dur;
                if onset < self.start || failure - onset < 2 * self.interval {
                    continue;
                }
                let replaced = failure + (rng.range(15.0, 45.0) * MS_PER_MINUTE as f64) as i64;
                let key = (KEY_AGING, ti);
                if !self.occ.free(key, onset, replaced, MS_PER_DAY) {
                    continue;
                }
                self.occ.take(key, onset, replaced);
                let shape = rng.range(1.6, 3.5);
                let peak = match part {
                    Part::CardReader => rng.range(0.18, 0.55),
                    Part::Printer => rng.range(0.12, 0.45),
                    Part::Battery => rng.range(18.0, 40.0),
                };
                let label = self.label(
                    AlertKind::HardwareAging,
                    Scope::Terminal,
                    &t.id,
                    t.region,
                    (onset, failure),
                    part.cause(),
                );
                let sev = (shape - 1.6) / 1.9;
                let e = self.push(
                    EffectKind::Aging { part, failure, replaced, shape, peak },
                    onset,
                    replaced,
                    Some(label),
                    1.0 - sev,
                );
                // One more interval after the swap, so the swap itself is seen.
                self.span(ti, onset, replaced + self.interval, e, 1.0);
                break;
            }
        }
    }

    /// A window for a site-level event: inside opening hours when the site's
    /// terminals are off at night, anywhere otherwise.
    fn site_window(&self, site: u32, dur: i64, rng: &mut Rng) -> Option<(i64, i64)> {
        let s = &self.fleet.sites[site as usize];
        if self.end - self.start <= dur + self.interval {
            return None;
        }
        let start = rng.range(self.start as f64, (self.end - dur) as f64) as i64;
        if !s.night_off {
            return Some((start, start + dur));
        }
        let (day, _) = self.fleet.local(s.region, start);
        if !s.open_on(weekday(day)) || self.fleet.day_kind(day) != crate::fleet::DayKind::Normal {
            return None;
        }
        let offset = self.fleet.regions[s.region as usize].utc_offset_ms;
        let open = day * MS_PER_DAY + i64::from(s.open_min) * MS_PER_MINUTE - offset;
        let close = day * MS_PER_DAY + i64::from(s.close_min) * MS_PER_MINUTE - offset;
        let dur = dur.min(close - open - 30 * MS_PER_MINUTE);
        if dur < 20 * MS_PER_MINUTE {
            return None;
        }
        let st = rng.range(open as f64, (close - dur) as f64) as i64;
        (st >= self.start && st + dur < self.end).then_some((st, st + dur))
    }

    fn site_mains(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        let n = count(rng, f.site_mains_per_1000_site_days * self.fleet.sites.len() as f64 * span_days / 1000.0);
        for _ in 0..n {
            for _attempt in 0..20 {
                let si = rng.below(self.fleet.sites.len() as u64) as u32;
                let hours = rng.range(0.5f64.ln(), 10.0f64.ln()).exp();
                let Some((start, end)) = self.site_window(si, (hours * MS_PER_HOUR as f64) as i64, rng) else {
                    continue;
                };
                let key = (KEY_VOLTAGE_SITE, si);
                if !self.occ.free(key, start, end, 6 * MS_PER_HOUR) {
                    continue;
                }
                self.occ.take(key, start, end);
                let severity = self.severity(rng);
                let s = &self.fleet.sites[si as usize];
                let label =
                    self.label(AlertKind::VoltageInstability, Scope::Site, &s.id, s.region, (start, end), "site_mains");
                let terms = s.terminals.clone();
                let e = self.push(EffectKind::SiteMains { severity }, start, end, Some(label), severity);
                for ti in terms {
                    self.span(ti, start, end, e, 1.0);
                }
                break;
            }
        }
    }

    fn power_supply(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        let n =
            count(rng, f.power_supply_per_1000_terminal_days * self.fleet.terminals.len() as f64 * span_days / 1000.0);
        for _ in 0..n {
            for _attempt in 0..20 {
                let ti = rng.below(self.fleet.terminals.len() as u64) as u32;
                let mut days = rng.range(1.0, 6.0);
                if days > 0.85 * span_days {
                    days = rng.range(0.3, 0.85) * span_days;
                }
                let dur = (days * MS_PER_DAY as f64) as i64;
                if dur < 2 * MS_PER_HOUR || self.end - self.start <= dur {
                    continue;
                }
                let start = rng.range(self.start as f64, (self.end - dur) as f64) as i64;
                let end = start + dur;
                let t = &self.fleet.terminals[ti as usize];
                let key = (KEY_VOLTAGE_SITE, t.site);
                if !self.occ.free(key, start, end, 6 * MS_PER_HOUR) {
                    continue;
                }
                self.occ.take(key, start, end);
                let severity = self.severity(rng);
                let label = self.label(
                    AlertKind::VoltageInstability,
                    Scope::Terminal,
                    &t.id,
                    t.region,
                    (start, end),
                    "power_supply",
                );
                let e = self.push(EffectKind::PowerSupply { severity }, start, end, Some(label), severity);
                self.span(ti, start, end, e, 1.0);
                break;
            }
        }
    }

    fn network(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        let n = count(rng, f.network_per_region_day * self.fleet.regions.len() as f64 * span_days);
        for _ in 0..n {
            for _attempt in 0..20 {
                let ri = rng.below(self.fleet.regions.len() as u64) as u32;
                let hours = rng.range(0.33f64.ln(), 6.0f64.ln()).exp();
                let dur = (hours * MS_PER_HOUR as f64) as i64;
                if self.end - self.start <= dur + self.interval {
                    continue;
                }
                let mut start = rng.range(self.start as f64, (self.end - dur) as f64) as i64;
                if rng.chance(0.7) {
                    // Most degradations are noticed in the daytime: move into 08:00-20:00 local.
                    let (day, _) = self.fleet.local(ri, start);
                    let offset = self.fleet.regions[ri as usize].utc_offset_ms;
                    let t = day * MS_PER_DAY + (rng.range(8.0, 20.0) * MS_PER_HOUR as f64) as i64 - offset;
                    if t >= self.start && t + dur < self.end {
                        start = t;
                    }
                }
                let end = start + dur;
                let key = (KEY_NETWORK, ri);
                if !self.occ.free(key, start, end, 3 * MS_PER_HOUR) {
                    continue;
                }
                self.occ.take(key, start, end);
                let severity = self.severity(rng);
                let ramp_in = ((rng.range(3.0, 30.0) * MS_PER_MINUTE as f64) as i64).min(dur / 3);
                let ramp_out = ((rng.range(5.0, 20.0) * MS_PER_MINUTE as f64) as i64).min(dur / 3);
                let r = &self.fleet.regions[ri as usize];
                let name = r.name.clone();
                let (sites, n_terms) = (r.sites.clone(), r.terminals.len());
                let label = self.label(
                    AlertKind::NetworkDegradation,
                    Scope::Region,
                    &name,
                    ri,
                    (start, end),
                    "regional_network",
                );
                let e =
                    self.push(EffectKind::Network { severity, ramp_in, ramp_out }, start, end, Some(label), severity);
                // A share of the region's sites (and so terminals), whole sites at a time;
                // or, for a carrier's trouble, that share of its terminals one by one,
                // across its sites. (No draw when every fault is by site, so the
                // default fleets stay what they were.)
                let by_terminal = self.cfg.physics.regional_by_terminal_share > 0.0
                    && rng.chance(self.cfg.physics.regional_by_terminal_share);
                let share = rng.range(0.3, 0.8);
                if by_terminal {
                    let mut order: Vec<u32> = self.fleet.regions[ri as usize].terminals.clone().collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    let k = (share * n_terms as f64).ceil() as usize;
                    for ti in order.into_iter().take(k) {
                        let w = rng.range(0.6, 1.2);
                        self.span(ti, start, end, e, w);
                    }
                    break;
                }
                let mut order: Vec<u32> = sites.collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut hit = 0usize;
                for si in order {
                    if hit as f64 >= share * n_terms as f64 {
                        break;
                    }
                    let w = rng.range(0.6, 1.2);
                    let terms = self.fleet.sites[si as usize].terminals.clone();
                    hit += terms.len();
                    for ti in terms {
                        self.span(ti, start, end, e, w);
                    }
                }
                break;
            }
        }
    }

    fn uplinks(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        let n = count(rng, f.uplink_failure_per_1000_site_days * self.fleet.sites.len() as f64 * span_days / 1000.0);
        for _ in 0..n {
            for _attempt in 0..10 {
                let si = rng.below(self.fleet.sites.len() as u64) as u32;
                let hours = rng.range((10.0f64 / 60.0).ln(), 4.0f64.ln()).exp();
                let Some((start, end)) = self.site_window(si, (hours * MS_PER_HOUR as f64) as i64, rng) else {
                    continue;
                };
                let key = (KEY_UPLINK, si);
                if !self.occ.free(key, start, end, MS_PER_HOUR) {
                    continue;
                }
                self.occ.take(key, start, end);
                let kind = EffectKind::Uplink {
                    down: rng.chance(0.4),
                    loss_pct: rng.range(15.0, 60.0),
                    rtt_mult: rng.range(3.0, 10.0),
                    reconnects_per_min: rng.range(0.5, 3.0),
                };
                let e = self.push(kind, start, end, None, 0.0);
                for ti in self.fleet.sites[si as usize].terminals.clone() {
                    self.span(ti, start, end, e, 1.0);
                }
                break;
            }
        }
    }

    fn rollouts(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let weeks = (self.end - self.start) as f64 / (7 * MS_PER_DAY) as f64;
        let mut seq = 0u32;
        for ri in 0..self.fleet.regions.len() as u32 {
            let r = &self.fleet.regions[ri as usize];
            let terms = r.terminals.clone();
            let offset = r.utc_offset_ms;
            let n = count(rng, f.rollouts_per_region_week * weeks);
            // Times first, then versions in time order.
            let mut plans: Vec<(i64, u8)> = (0..n)
                .filter_map(|_| {
                    let model = terms
                        .clone()
                        .nth(rng.below(terms.len().max(1) as u64) as usize)
                        .map(|ti| self.fleet.terminals[ti as usize].model)?;
                    let at = rng.range(self.start as f64, self.end as f64) as i64;
                    let (day, _) = self.fleet.local(ri, at);
                    let t = day * MS_PER_DAY + (rng.range(1.5, 3.0) * MS_PER_HOUR as f64) as i64 - offset;
                    (t >= self.start && t < self.end).then_some((t, model))
                })
                .collect();
            plans.sort_by_key(|p| p.0);
            let mut versions: HashMap<u8, [u16; 3]> = HashMap::new();
            for (at, model) in plans {
                let v = versions.entry(model).or_insert(MODELS[usize::from(model)].firmware);
                *v = if rng.chance(0.3) { [v[0], v[1] + 1, 0] } else { [v[0], v[1], v[2] + 1] };
                let firmware = *v;
                let window = (rng.range(45.0, 150.0) * MS_PER_MINUTE as f64) as i64;
                let e = self.push(EffectKind::Rollout { seq, firmware }, at, at + window, None, 0.0);
                seq += 1;
                for ti in terms.clone() {
                    if self.fleet.terminals[ti as usize].model == model {
                        let when = at + rng.below(window as u64) as i64;
                        // Terminals switched off pick it up when next switched on.
                        self.span(ti, when, when + 2 * MS_PER_DAY, e, 1.0);
                    }
                }
            }
        }
    }

    /// Staged rollouts, fleet-wide per model: canary terminals (3-8 % of
    /// the model, at least one), a quarter of it 18-42 h later, all of it
    /// 18-42 h after that. A regression is rolled back 1.5-4 days after the
    /// canary; terminals whose turn had not come never take it.
    fn staged_rollouts(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let weeks = (self.end - self.start) as f64 / (7 * MS_PER_DAY) as f64;
        let n = count(rng, f.staged_rollouts_per_week * weeks);
        let regression_share = f.regression_share;
        let mut next_major: HashMap<u8, u16> = HashMap::new();
        let latest = self.end - MS_PER_DAY;
        let earliest = self.start + MS_PER_DAY / 2;
        if latest <= earliest {
            return;
        }
        // Times first; a model's rollouts one after another (a rollout
        // starting while the last is under way waits until it is done).
        let mut plans: Vec<(i64, u8)> = (0..n)
            .filter_map(|_| {
                let t = self.fleet.terminals.get(rng.below(self.fleet.terminals.len() as u64) as usize)?;
                Some((rng.range(earliest as f64, latest as f64) as i64, t.model))
            })
            .collect();
        plans.sort_unstable();
        let mut busy_until: HashMap<u8, i64> = HashMap::new();
        for (seq, (at, model)) in plans.into_iter().enumerate() {
            let seq = seq as u32;
            let at = at.max(busy_until.get(&model).copied().unwrap_or(i64::MIN));
            if at >= latest {
                continue;
            }
            let spec = &MODELS[usize::from(model)];
            let major = next_major.entry(model).or_insert(spec.firmware[0] + 1);
            let firmware = [*major, 0, 0];
            *major += 1;
            let mut terms: Vec<u32> = (0..self.fleet.terminals.len() as u32)
                .filter(|&ti| self.fleet.terminals[ti as usize].model == model)
                .collect();
            for i in (1..terms.len()).rev() {
                terms.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let total = terms.len();
            let canary = ((total as f64 * rng.range(0.03, 0.08)).round() as usize).max(1);
            let quarter = total.div_ceil(4).max(canary + 1);
            let stage1 = at + (rng.range(18.0, 42.0) * MS_PER_HOUR as f64) as i64;
            let stage2 = stage1 + (rng.range(18.0, 42.0) * MS_PER_HOUR as f64) as i64;
            let regression = rng.chance(regression_share).then(|| Regression {
                shape: RegressionShape::ALL[rng.below(RegressionShape::ALL.len() as u64) as usize],
                severity: self.severity(rng),
            });
            let rollback = match regression {
                Some(_) => (at + (rng.range(1.5, 4.0) * MS_PER_DAY as f64) as i64).min(self.end),
                None => self.end,
            };
            let whens: Vec<(u32, i64)> = terms
                .iter()
                .enumerate()
                .map(|(i, &ti)| {
                    let stage = if i < canary {
                        at
                    } else if i < quarter {
                        stage1
                    } else {
                        stage2
                    };
                    (ti, stage + rng.below(2 * MS_PER_HOUR as u64) as i64)
                })
                .filter(|&(_, when)| when < rollback)
                .collect();
            let Some(first_at) = whens.iter().map(|w| w.1).min() else { continue };
            let last_at = whens.iter().map(|w| w.1).max().unwrap_or(first_at);
            busy_until.insert(model, rollback.min(last_at + 2 * MS_PER_DAY) + 12 * MS_PER_HOUR);
            let name = format!("{}/{}.{}.{}", spec.name, firmware[0], firmware[1], firmware[2]);
            let label = regression.map(|r| IncidentLabel {
                kind: AlertKind::FirmwareRegression,
                scope: Scope::Cohort,
                entity: name.clone(),
                region: "*".to_string(),
                start: first_at - first_at.rem_euclid(1000),
                end: rollback + (1000 - rollback.rem_euclid(1000)) % 1000,
                verdict: Verdict::Incident,
                cause: Some(r.shape.cause().to_string()),
            });
            let severity = regression.map_or(0.0, |r| r.severity);
            let e = self.push(EffectKind::Staged { seq, model, firmware, regression }, at, rollback, label, severity);
            let back = (rollback < self.end)
                .then(|| self.push(EffectKind::Rollback { firmware }, rollback, self.end, None, 0.0));
            for (ti, when) in whens {
                self.span(ti, when, rollback, e, 1.0);
                if let Some(b) = back {
                    self.span(ti, rollback, self.end, b, 1.0);
                }
            }
        }
    }

    fn blips(&mut self, rng: &mut Rng) {
        let f = &self.cfg.faults;
        let span_days = (self.end - self.start) as f64 / MS_PER_DAY as f64;
        let n = count(rng, f.blips_per_terminal_day * self.fleet.terminals.len() as f64 * span_days);
        // One effect per blip kind; spans carry the time.
        let ids: Vec<u32> =
            BLIPS.iter().map(|b| self.push(EffectKind::Blip(*b), self.start, self.end, None, 0.0)).collect();
        for _ in 0..n {
            let ti = rng.below(self.fleet.terminals.len() as u64) as u32;
            let at = rng.range(self.start as f64, self.end as f64) as i64;
            let k = rng.below(BLIPS.len() as u64) as usize;
            // Drawn only when blips can be longer, so that the default
            // fleets stay byte for byte what they were.
            let reports = if f.blip_max_reports > 1 { 1 + rng.below(u64::from(f.blip_max_reports)) as i64 } else { 1 };
            self.span(ti, at, at + self.interval * reports, ids[k], 1.0);
        }
    }
}

impl Schedule {
    pub fn build(cfg: &SimConfig, fleet: &Fleet, start: i64, end: i64) -> Schedule {
        let mut b = Builder {
            cfg,
            fleet,
            start,
            end,
            interval: i64::from(cfg.interval_s) * 1000,
            out: Schedule { spans: vec![Vec::new(); fleet.terminals.len()], ..Schedule::default() },
            occ: Occupancy::default(),
        };
        // One stream per family, so that changing one rate leaves the others' draws alone.
        b.aging(&mut Rng::stream(cfg.seed, 10));
        b.site_mains(&mut Rng::stream(cfg.seed, 11));
        b.power_supply(&mut Rng::stream(cfg.seed, 12));
        b.network(&mut Rng::stream(cfg.seed, 13));
        b.uplinks(&mut Rng::stream(cfg.seed, 14));
        b.rollouts(&mut Rng::stream(cfg.seed, 15));
        b.blips(&mut Rng::stream(cfg.seed, 16));
        b.staged_rollouts(&mut Rng::stream(cfg.seed, 17));
        let mut out = b.out;
        for s in &mut out.spans {
            s.sort_by_key(|sp| (sp.start, sp.effect));
        }
        // Labels sorted by start; effects keep pointing at the right ones.
        let mut order: Vec<usize> = (0..out.labels.len()).collect();
        order.sort_by(|&a, &b| {
            let (la, lb) = (&out.labels[a], &out.labels[b]);
            (la.start, la.kind, &la.entity).cmp(&(lb.start, lb.kind, &lb.entity))
        });
        let mut new_index = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        out.labels = order.iter().map(|&i| out.labels[i].clone()).collect();
        out.severities = order.iter().map(|&i| out.severities[i]).collect();
        for e in &mut out.effects {
            e.label = e.label.map(|l| new_index[l]);
        }
        out
    }
}
