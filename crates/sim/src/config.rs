//! What to simulate: [`SimConfig`] and its fault rates, with validation that
//! names the bad parameter.

use serde::{Deserialize, Serialize};
use termwatch_telemetry::time::{self, MS_PER_DAY};

use crate::error::SimError;
use crate::fleet::MODELS;
use crate::rng::Rng;

/// A fleet simulation. Every field has a default, so `{}` is a valid
/// configuration (1,000 terminals, 8 regions, 7 days from 2026-09-01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random choice. Default 1.
    pub seed: u64,
    /// Number of terminals. Default 1000.
    pub terminals: u32,
    /// Number of network regions (at most `terminals`). Default 8.
    pub regions: u32,
    /// Length of the history in days (fractions allowed). Default 7.
    pub days: f64,
    /// First day of the history, `YYYY-MM-DD`, 00:00 UTC. Default `2026-09-01`.
    pub start: String,
    /// Reporting interval in seconds, 1-3600. Default 60.
    pub interval_s: u32,
    /// Mean number of terminals per site (merchant location), 1-50. Default 2.5.
    pub terminals_per_site: f64,
    /// Share of sites with opening hours whose terminals are switched off
    /// outside them (gaps in the data), 0-1. Default 0.35.
    pub night_off_share: f64,
    /// Share of records deliberately damaged (truncated, wrong type, negative
    /// counter, missing required field, out of range), 0-0.5. Default 0.001.
    pub damaged_share: f64,
    /// Share of records delivered minutes (1-15 min) late, 0-0.5. Default 0.003.
    pub late_share: f64,
    /// Share of records delivered hours (1-6 h) late, 0-0.5. Default 0.0002.
    pub very_late_share: f64,
    /// Reports per simulated day, fleet-wide, whose terminal's clock is
    /// 23 h 59 m fast for that one report (its `ts` says a day later; it
    /// arrives on time, in place of the right one), 0-1000. Default 0.
    pub clock_jumps_per_day: f64,
    /// Terminals reboot once a day at a quiet hour when they run round the
    /// clock (PCI PTS requires it). Default true.
    pub daily_reboot: bool,
    /// How often each fault and each unlabelled event occurs.
    pub faults: FaultRates,
    /// How noisy healthy terminals are and how a regional fault spreads:
    /// the knobs [`SimConfig::draw_physics`] draws per fleet.
    pub physics: Physics,
}

/// The physics of healthy terminals and the shape of regional faults. The
/// defaults are the simulator's own (every default fleet stays what it was);
/// other fleets, and fleets from other generators, differ, which is why
/// `termwatch simulate --physics-draw` exists (docs/simulator.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Physics {
    /// How much a healthy supply's per-report noise (`supply_v_std`)
    /// wanders around its model's level: sigma of a lognormal, 0-1.
    /// Default 0.12.
    pub supply_noise_sigma: f64,
    /// One terminal model (by name) whose supplies are noisier than its
    /// catalogue says, by `noisy_model_factor`; empty for none. Default "".
    pub noisy_model: String,
    /// 1-10. Default 1.
    pub noisy_model_factor: f64,
    /// Per-report wander of round-trip time: sigma of a lognormal, 0-1.
    /// Default 0.12.
    pub rtt_noise_sigma: f64,
    /// Per-report wander of packet loss: sigma of a lognormal, 0-2.
    /// Default 0.6.
    pub loss_noise_sigma: f64,
    /// Share of regional network degradations that reach the region's
    /// terminals one by one, across its sites (a carrier's trouble), where
    /// the others reach whole sites (an access network's), 0-1. Default 0.
    pub regional_by_terminal_share: f64,
}

impl Default for Physics {
    fn default() -> Self {
        Physics {
            supply_noise_sigma: 0.12,
            noisy_model: String::new(),
            noisy_model_factor: 1.0,
            rtt_noise_sigma: 0.12,
            loss_noise_sigma: 0.6,
            regional_by_terminal_share: 0.0,
        }
    }
}

/// Rates of the injected faults (labelled) and of the unlabelled events.
/// Counts are `rate × exposure`, rounded stochastically, so they scale with
/// the fleet and the number of days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRates {
    /// Hardware aging incidents (card reader, printer, battery) per 1,000
    /// terminal-days. Default 0.8.
    pub aging_per_1000_terminal_days: f64,
    /// Shortest time from aging onset to failure, days. Default 3.
    pub aging_min_days: f64,
    /// Longest time from aging onset to failure, days. Default 21.
    pub aging_max_days: f64,
    /// Site mains problems (voltage instability, site scope) per 1,000
    /// site-days. Default 2.0.
    pub site_mains_per_1000_site_days: f64,
    /// Failing power supplies (voltage instability, terminal scope) per 1,000
    /// terminal-days. Default 0.3.
    pub power_supply_per_1000_terminal_days: f64,
    /// Regional network degradations per region-day. Default 0.1.
    pub network_per_region_day: f64,
    /// Unlabelled: single-site uplink failures per 1,000 site-days. Default 3.0.
    pub uplink_failure_per_1000_site_days: f64,
    /// Unlabelled: firmware rollouts (one model, one region, with reboots)
    /// per region-week. Default 0.7.
    pub rollouts_per_region_week: f64,
    /// Staged firmware rollouts of one model, fleet-wide, per week: a few
    /// canary terminals, then a quarter of the model, then all of it.
    /// Default 0 (none: the default fleets stay what they were).
    pub staged_rollouts_per_week: f64,
    /// Share of staged rollouts whose version is a regression (crashes, a
    /// memory leak, a reboot loop or slower transactions; labelled
    /// `firmware_regression`, rolled back after 1.5-4 days); the others
    /// are benign (the reboot at update, a change of memory level).
    /// Default 0.6.
    pub regression_share: f64,
    /// Unlabelled: blips per terminal-day. Default 0.05.
    pub blips_per_terminal_day: f64,
    /// Longest blip, in reports: each lasts 1 to this many, uniformly
    /// (a sag blip sags in each). Default 1 (one-report blips); 1-12.
    pub blip_max_reports: u32,
    /// Unlabelled: share of days that are national holidays or sale days. Default 0.08.
    pub special_day_share: f64,
    /// Lowest severity of a labelled fault, 0-1 (0 subtle, 1 gross). Default 0.1.
    pub severity_min: f64,
    /// Highest severity of a labelled fault, 0-1. Default 1.0.
    pub severity_max: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            terminals: 1000,
            regions: 8,
            days: 7.0,
            start: "2026-09-01".to_string(),
            interval_s: 60,
            terminals_per_site: 2.5,
            night_off_share: 0.35,
            damaged_share: 0.001,
            late_share: 0.003,
            very_late_share: 0.0002,
            clock_jumps_per_day: 0.0,
            daily_reboot: true,
            faults: FaultRates::default(),
            physics: Physics::default(),
        }
    }
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates {
            aging_per_1000_terminal_days: 0.8,
            aging_min_days: 3.0,
            aging_max_days: 21.0,
            site_mains_per_1000_site_days: 2.0,
            power_supply_per_1000_terminal_days: 0.3,
            network_per_region_day: 0.1,
            uplink_failure_per_1000_site_days: 3.0,
            rollouts_per_region_week: 0.7,
            staged_rollouts_per_week: 0.0,
            regression_share: 0.6,
            blips_per_terminal_day: 0.05,
            blip_max_reports: 1,
            special_day_share: 0.08,
            severity_min: 0.1,
            severity_max: 1.0,
        }
    }
}

impl FaultRates {
    /// Multiplies every labelled-fault rate by `k` (the CLI's `--fault-scale`).
    pub fn scale_faults(&mut self, k: f64) {
        self.aging_per_1000_terminal_days *= k;
        self.site_mains_per_1000_site_days *= k;
        self.power_supply_per_1000_terminal_days *= k;
        self.network_per_region_day *= k;
        self.staged_rollouts_per_week *= k;
    }
}

/// Longest history, days: ten years.
const MAX_DAYS: f64 = 3660.0;
/// Most terminals.
const MAX_TERMINALS: u32 = 10_000_000;

fn check_share(param: &'static str, v: f64, max: f64) -> Result<(), SimError> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(())
    } else {
        Err(SimError::config(param, format!("{v} is not a share between 0 and {max}")))
    }
}

fn check_sigma(param: &'static str, v: f64, max: f64) -> Result<(), SimError> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(())
    } else {
        Err(SimError::config(param, format!("{v} is not a lognormal sigma between 0 and {max}")))
    }
}

fn check_rate(param: &'static str, v: f64) -> Result<(), SimError> {
    if v.is_finite() && (0.0..=1e6).contains(&v) {
        Ok(())
    } else {
        Err(SimError::config(param, format!("{v} is not a rate between 0 and 1e6")))
    }
}

impl SimConfig {
    /// Reads a configuration from JSON (every key optional, unknown keys
    /// refused) and validates it.
    pub fn from_json(text: &str) -> Result<SimConfig, SimError> {
        let cfg: SimConfig = serde_json::from_str(text).map_err(SimError::ConfigJson)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every parameter; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.terminals == 0 || self.terminals > MAX_TERMINALS {
            return Err(SimError::config("terminals", format!("{} is not in 1..={MAX_TERMINALS}", self.terminals)));
        }
        if self.regions == 0 || self.regions > self.terminals || self.regions > 9_999 {
            return Err(SimError::config(
                "regions",
                format!("{} is not in 1..=min(terminals, 9999) (terminals = {})", self.regions, self.terminals),
            ));
        }
        if !(self.days.is_finite() && self.days > 0.0 && self.days <= MAX_DAYS) {
            return Err(SimError::config("days", format!("{} is not in (0, {MAX_DAYS}]", self.days)));
        }
        self.start_ms()?;
        if !(1..=3600).contains(&self.interval_s) {
            return Err(SimError::config("interval_s", format!("{} is not in 1..=3600 seconds", self.interval_s)));
        }
        if self.ticks() == 0 {
            return Err(SimError::config(
                "days",
                format!("{} days is shorter than one reporting interval of {} s", self.days, self.interval_s),
            ));
        }
        let records = self.ticks() as f64 * f64::from(self.terminals);
        if records > 1e11 {
            return Err(SimError::config(
                "days",
                format!("{records:.0} records (terminals × days × reports per day) is more than 1e11"),
            ));
        }
        if !(self.terminals_per_site.is_finite() && (1.0..=50.0).contains(&self.terminals_per_site)) {
            return Err(SimError::config(
                "terminals_per_site",
                format!("{} is not in 1..=50", self.terminals_per_site),
            ));
        }
        check_share("night_off_share", self.night_off_share, 1.0)?;
        check_share("damaged_share", self.damaged_share, 0.5)?;
        check_share("late_share", self.late_share, 0.5)?;
        check_share("very_late_share", self.very_late_share, 0.5)?;
        if !(self.clock_jumps_per_day.is_finite() && (0.0..=1000.0).contains(&self.clock_jumps_per_day)) {
            return Err(SimError::config(
                "clock_jumps_per_day",
                format!("{} is not in 0..=1000", self.clock_jumps_per_day),
            ));
        }
        let f = &self.faults;
        check_rate("faults.aging_per_1000_terminal_days", f.aging_per_1000_terminal_days)?;
        check_rate("faults.site_mains_per_1000_site_days", f.site_mains_per_1000_site_days)?;
        check_rate("faults.power_supply_per_1000_terminal_days", f.power_supply_per_1000_terminal_days)?;
        check_rate("faults.network_per_region_day", f.network_per_region_day)?;
        check_rate("faults.uplink_failure_per_1000_site_days", f.uplink_failure_per_1000_site_days)?;
        check_rate("faults.rollouts_per_region_week", f.rollouts_per_region_week)?;
        check_rate("faults.blips_per_terminal_day", f.blips_per_terminal_day)?;
        check_rate("faults.staged_rollouts_per_week", f.staged_rollouts_per_week)?;
        check_share("faults.regression_share", f.regression_share, 1.0)?;
        check_share("faults.special_day_share", f.special_day_share, 1.0)?;
        if !(1..=12).contains(&f.blip_max_reports) {
            return Err(SimError::config(
                "faults.blip_max_reports",
                format!("{} is not in 1..=12", f.blip_max_reports),
            ));
        }
        if !(f.aging_min_days.is_finite() && f.aging_min_days >= 0.1) {
            return Err(SimError::config("faults.aging_min_days", format!("{} is below 0.1 days", f.aging_min_days)));
        }
        if !(f.aging_max_days.is_finite() && f.aging_max_days >= f.aging_min_days && f.aging_max_days <= 365.0) {
            return Err(SimError::config(
                "faults.aging_max_days",
                format!("{} is not in aging_min_days..=365 (aging_min_days = {})", f.aging_max_days, f.aging_min_days),
            ));
        }
        if !(f.severity_min.is_finite() && (0.0..=1.0).contains(&f.severity_min)) {
            return Err(SimError::config("faults.severity_min", format!("{} is not in 0..=1", f.severity_min)));
        }
        if !(f.severity_max.is_finite() && f.severity_max >= f.severity_min && f.severity_max <= 1.0) {
            return Err(SimError::config(
                "faults.severity_max",
                format!("{} is not in severity_min..=1 (severity_min = {})", f.severity_max, f.severity_min),
            ));
        }
        let p = &self.physics;
        check_sigma("physics.supply_noise_sigma", p.supply_noise_sigma, 1.0)?;
        check_sigma("physics.rtt_noise_sigma", p.rtt_noise_sigma, 1.0)?;
        check_sigma("physics.loss_noise_sigma", p.loss_noise_sigma, 2.0)?;
        check_share("physics.regional_by_terminal_share", p.regional_by_terminal_share, 1.0)?;
        if !(p.noisy_model_factor.is_finite() && (1.0..=10.0).contains(&p.noisy_model_factor)) {
            return Err(SimError::config(
                "physics.noisy_model_factor",
                format!("{} is not in 1..=10", p.noisy_model_factor),
            ));
        }
        if !p.noisy_model.is_empty() && !MODELS.iter().any(|m| m.name == p.noisy_model) {
            let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
            return Err(SimError::config(
                "physics.noisy_model",
                format!("{:?} is not a model of the catalogue ({})", p.noisy_model, names.join(", ")),
            ));
        }
        Ok(())
    }

    /// Draws the physics of one fleet from wide ranges (docs/simulator.md,
    /// "Physics drawn per fleet"): per-report noise of supply, round trip
    /// and loss, a model noisier than its catalogue, how regional faults
    /// spread, how many sites switch off at night, how late reports
    /// arrive, how often and how long unlabelled blips are, how many
    /// single-site uplinks fail, and how faint labelled faults can be.
    /// The same `draw` gives the same physics; the fleet's own `seed` is
    /// untouched, so one physics can be laid over several fleets.
    pub fn draw_physics(&mut self, draw: u64) {
        let mut rng = Rng::stream(draw, 0x9A75_01C5);
        let log_range = |rng: &mut Rng, lo: f64, hi: f64| rng.range(lo.ln(), hi.ln()).exp();
        let p = &mut self.physics;
        p.supply_noise_sigma = rng.range(0.08, 0.35);
        p.noisy_model = MODELS[rng.below(MODELS.len() as u64) as usize].name.to_string();
        p.noisy_model_factor = rng.range(1.0, 2.5);
        p.rtt_noise_sigma = rng.range(0.08, 0.35);
        p.loss_noise_sigma = rng.range(0.3, 1.2);
        p.regional_by_terminal_share = rng.unit();
        self.night_off_share = rng.range(0.1, 0.7);
        self.late_share = log_range(&mut rng, 0.0005, 0.03);
        let f = &mut self.faults;
        f.blips_per_terminal_day = log_range(&mut rng, 0.02, 2.0);
        f.blip_max_reports = 1 + rng.below(4) as u32;
        f.uplink_failure_per_1000_site_days = log_range(&mut rng, 1.0, 30.0);
        f.severity_min = rng.range(0.05, 0.3);
    }

    /// The start of the history, epoch ms.
    pub fn start_ms(&self) -> Result<i64, SimError> {
        let days = time::parse_date(&self.start)
            .map_err(|e| SimError::config("start", format!("{:?}: {e} (want YYYY-MM-DD)", self.start)))?;
        if !(0..=100_000).contains(&days) {
            return Err(SimError::config("start", format!("{:?} is not between 1970 and 2243", self.start)));
        }
        Ok(i64::from(days) * MS_PER_DAY)
    }

    /// Number of reporting intervals in the history.
    pub fn ticks(&self) -> u64 {
        let secs = self.days * 86_400.0;
        if !(secs.is_finite() && secs > 0.0) || self.interval_s == 0 {
            return 0;
        }
        (secs / f64::from(self.interval_s)).floor() as u64
    }

    /// End of the history, epoch ms (exclusive).
    pub(crate) fn end_ms(&self, start_ms: i64) -> i64 {
        start_ms + self.ticks() as i64 * i64::from(self.interval_s) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_param(cfg: &SimConfig) -> &'static str {
        match cfg.validate() {
            Err(SimError::InvalidConfig { param, .. }) => param,
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }

    #[test]
    fn default_is_valid() {
        SimConfig::default().validate().expect("default config is valid");
        let parsed: SimConfig = serde_json::from_str("{}").expect("empty object parses");
        assert_eq!(parsed, SimConfig::default());
    }

    #[test]
    fn rejects_zero_terminals() {
        assert_eq!(bad_param(&SimConfig { terminals: 0, ..SimConfig::default() }), "terminals");
    }

    #[test]
    fn rejects_more_regions_than_terminals() {
        assert_eq!(bad_param(&SimConfig { terminals: 3, regions: 4, ..SimConfig::default() }), "regions");
    }

    #[test]
    fn rejects_interval_out_of_contract_range() {
        assert_eq!(bad_param(&SimConfig { interval_s: 0, ..SimConfig::default() }), "interval_s");
        assert_eq!(bad_param(&SimConfig { interval_s: 3601, ..SimConfig::default() }), "interval_s");
    }

    #[test]
    fn rejects_bad_start_date() {
        assert_eq!(bad_param(&SimConfig { start: "2026-02-30".into(), ..SimConfig::default() }), "start");
        assert_eq!(bad_param(&SimConfig { start: "tomorrow".into(), ..SimConfig::default() }), "start");
    }

    #[test]
    fn rejects_non_positive_or_tiny_days() {
        assert_eq!(bad_param(&SimConfig { days: 0.0, ..SimConfig::default() }), "days");
        assert_eq!(bad_param(&SimConfig { days: f64::NAN, ..SimConfig::default() }), "days");
        assert_eq!(bad_param(&SimConfig { days: 0.0001, interval_s: 3600, ..SimConfig::default() }), "days");
    }

    #[test]
    fn rejects_share_out_of_range() {
        assert_eq!(bad_param(&SimConfig { damaged_share: 0.9, ..SimConfig::default() }), "damaged_share");
        assert_eq!(bad_param(&SimConfig { late_share: -0.1, ..SimConfig::default() }), "late_share");
    }

    #[test]
    fn rejects_inverted_severity_range() {
        let mut cfg = SimConfig::default();
        cfg.faults.severity_min = 0.8;
        cfg.faults.severity_max = 0.2;
        assert_eq!(bad_param(&cfg), "faults.severity_max");
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = SimConfig::from_json(r#"{"terminalz": 3}"#).expect_err("unknown key");
        assert!(err.to_string().contains("terminalz"), "{err}");
    }

    #[test]
    fn reads_partial_json() {
        let cfg =
            SimConfig::from_json(r#"{"terminals": 20, "faults": {"network_per_region_day": 2.0}}"#).expect("valid");
        assert_eq!(cfg.terminals, 20);
        assert_eq!(cfg.faults.network_per_region_day, 2.0);
        assert_eq!(cfg.faults.aging_min_days, FaultRates::default().aging_min_days);
    }
}
