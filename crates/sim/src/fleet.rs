//! The fleet: regions, sites (merchant locations sharing mains and uplink)
//! and terminals, with everything about them that does not change during a
//! run: model, age, uplink, opening hours, traffic level.

use std::ops::Range;

use termwatch_telemetry::time::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, civil_from_days};

use crate::config::SimConfig;
use crate::rng::Rng;

/// A hardware model: what it is powered by, how noisy its supply readings
/// are, and which sensors it has.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    /// Rated supply voltage, volts.
    pub nominal_v: f64,
    /// Standard deviation of the supply samples in normal service, volts.
    pub v_noise: f64,
    /// Reports `battery_pct` and `battery_health_pct`.
    pub battery: bool,
    /// Has a receipt printer (`print_jobs`, `print_errors`).
    pub printer: bool,
    /// Reports `temperature_c`.
    pub temp_sensor: bool,
    /// Sends `ts` as integer epoch milliseconds instead of RFC 3339.
    pub epoch_ts: bool,
    /// Firmware version current at the start of the history.
    pub firmware: [u16; 3],
    /// Memory in use just after boot, percent.
    pub mem_base: f64,
    /// Board temperature above ambient when idle, °C.
    pub heat_c: f64,
}

/// The catalogue. `V3` is the budget pin pad whose supply readings are four
/// times noisier than the others' in normal service.
pub const MODELS: [ModelSpec; 4] = [
    ModelSpec {
        name: "P200",
        nominal_v: 12.0,
        v_noise: 0.035,
        battery: false,
        printer: true,
        temp_sensor: true,
        epoch_ts: false,
        firmware: [5, 2, 1],
        mem_base: 52.0,
        heat_c: 11.0,
    },
    ModelSpec {
        name: "P400",
        nominal_v: 24.0,
        v_noise: 0.06,
        battery: false,
        printer: true,
        temp_sensor: true,
        epoch_ts: false,
        firmware: [3, 8, 4],
        mem_base: 44.0,
        heat_c: 14.0,
    },
    ModelSpec {
        name: "M10",
        nominal_v: 5.0,
        v_noise: 0.018,
        battery: true,
        printer: true,
        temp_sensor: true,
        epoch_ts: false,
        firmware: [7, 1, 0],
        mem_base: 61.0,
        heat_c: 7.0,
    },
    ModelSpec {
        name: "V3",
        nominal_v: 12.0,
        v_noise: 0.14,
        battery: false,
        printer: false,
        temp_sensor: false,
        epoch_ts: true,
        firmware: [2, 4, 7],
        mem_base: 36.0,
        heat_c: 9.0,
    },
];

pub const P400: u8 = 1;
pub const M10: u8 = 2;

/// What kind of business a site is: sets opening hours and traffic shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MerchantKind {
    Retail,
    Restaurant,
    Grocery,
    Cafe,
    /// Fuel station: open round the clock, unattended terminals outdoors.
    Fuel,
}

impl MerchantKind {
    const ALL: [MerchantKind; 5] =
        [MerchantKind::Retail, MerchantKind::Restaurant, MerchantKind::Grocery, MerchantKind::Cafe, MerchantKind::Fuel];
    const WEIGHTS: [f64; 5] = [0.35, 0.25, 0.15, 0.15, 0.10];

    /// Relative traffic by local hour (0-23), peak 1.
    fn hourly(self) -> &'static [f64; 24] {
        match self {
            MerchantKind::Retail => &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.8, 0.8, 0.9, 1.0, 1.0, 0.8, 0.5,
                0.3, 0.1, 0.0, 0.0,
            ],
            MerchantKind::Restaurant => &[
                0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.3, 0.9, 1.0, 0.5, 0.2, 0.2, 0.4, 0.7, 1.0,
                0.9, 0.6, 0.3, 0.1,
            ],
            MerchantKind::Grocery => &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.6, 0.5, 0.6, 0.8, 1.0, 1.0, 0.8,
                0.5, 0.3, 0.1, 0.0,
            ],
            MerchantKind::Cafe => &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.9, 1.0, 0.7, 0.5, 0.6, 0.8, 0.6, 0.4, 0.4, 0.3, 0.2, 0.1, 0.0,
                0.0, 0.0, 0.0, 0.0,
            ],
            MerchantKind::Fuel => &[
                0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.9, 0.9, 0.6, 0.6, 0.6, 0.7, 0.6, 0.6, 0.7, 0.9, 1.0, 1.0, 0.8,
                0.5, 0.4, 0.3, 0.2,
            ],
        }
    }

    /// Relative traffic by weekday, Monday first.
    fn weekly(self) -> &'static [f64; 7] {
        match self {
            MerchantKind::Retail => &[0.8, 0.85, 0.9, 0.95, 1.1, 1.4, 0.6],
            MerchantKind::Restaurant => &[0.7, 0.75, 0.85, 0.95, 1.25, 1.4, 1.1],
            MerchantKind::Grocery => &[0.9, 0.9, 0.9, 0.95, 1.1, 1.3, 0.7],
            MerchantKind::Cafe => &[1.0, 1.0, 1.0, 1.0, 1.05, 0.9, 0.6],
            MerchantKind::Fuel => &[1.0, 1.0, 1.0, 1.0, 1.1, 0.9, 0.8],
        }
    }

    /// Median transactions per terminal per hour at the daily peak.
    fn peak_per_hour(self) -> f64 {
        match self {
            MerchantKind::Retail => 22.0,
            MerchantKind::Restaurant => 18.0,
            MerchantKind::Grocery => 55.0,
            MerchantKind::Cafe => 40.0,
            MerchantKind::Fuel => 28.0,
        }
    }

    /// Traffic multiplier on a holiday (0: closed) and on a sale day.
    fn special_factor(self, day: DayKind) -> f64 {
        match (day, self) {
            (DayKind::Normal, _) => 1.0,
            (DayKind::Holiday, MerchantKind::Retail | MerchantKind::Cafe) => 0.0,
            (DayKind::Holiday, MerchantKind::Grocery) => 0.5,
            (DayKind::Holiday, MerchantKind::Restaurant) => 1.5,
            (DayKind::Holiday, MerchantKind::Fuel) => 1.3,
            (DayKind::SaleDay, MerchantKind::Retail) => 2.4,
            (DayKind::SaleDay, MerchantKind::Grocery) => 1.6,
            (DayKind::SaleDay, _) => 1.15,
        }
    }
}

/// A calendar day, fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayKind {
    Normal,
    /// A public holiday: shops closed, restaurants and fuel busier.
    Holiday,
    /// A sale day (black Friday): retail traffic more than doubles.
    SaleDay,
}

/// How a site reaches the acquirer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// Fixed broadband: terminals on ethernet, handhelds on the site's wifi.
    Broadband,
    /// Each terminal's own cellular modem.
    Cellular,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Eth,
    Wifi,
    Cellular,
}

impl Net {
    pub fn as_str(self) -> &'static str {
        match self {
            Net::Eth => "eth",
            Net::Wifi => "wifi",
            Net::Cellular => "cellular",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    /// Local time minus UTC, ms.
    pub utc_offset_ms: i64,
    /// Mean outdoor temperature, °C, and half its daily swing.
    pub ambient_c: f64,
    pub ambient_swing_c: f64,
    /// Acquirer (host) processing time seen from this region, ms.
    pub host_ms: f64,
    /// Round-trip time to the acquirer over a good wired line, ms.
    pub base_rtt_ms: f64,
    pub sites: Range<u32>,
    pub terminals: Range<u32>,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub merchant: String,
    pub region: u32,
    pub kind: MerchantKind,
    /// Opening and closing time, local minutes after midnight (close may be 1440).
    pub open_min: u32,
    pub close_min: u32,
    /// Bit `d` set: closed on weekday `d` (Monday = 0).
    pub closed_days: u8,
    /// Terminals switched off outside opening hours.
    pub night_off: bool,
    pub uplink: Uplink,
    /// Radio signal at the site (wifi or cellular), dBm.
    pub signal_dbm: f64,
    /// Extra round-trip time of this site's line, ms.
    pub line_rtt_ms: f64,
    /// Baseline packet loss of this site's line, percent.
    pub line_loss_pct: f64,
    /// Mains level relative to nominal (adapter and wiring), fraction.
    pub mains_offset: f64,
    pub indoor: bool,
    pub terminals: Range<u32>,
}

impl Site {
    pub fn open_on(&self, weekday: u32) -> bool {
        self.closed_days & (1 << weekday) == 0
    }

    pub fn round_the_clock(&self) -> bool {
        self.open_min == 0 && self.close_min >= 1440
    }
}

#[derive(Debug, Clone)]
pub struct Terminal {
    pub id: String,
    pub site: u32,
    pub region: u32,
    pub model: u8,
    pub net: Net,
    /// Days since the epoch it entered service.
    pub installed_day: i32,
    /// Offset of its report times within the interval, ms.
    pub phase_ms: i64,
    /// Local time of day of its daily maintenance reboot, ms.
    pub reboot_tod_ms: i64,
    /// Minutes before opening it is switched on, after closing it is switched off.
    pub on_lead_min: f64,
    pub off_lag_min: f64,
    /// Transactions per hour at the site's daily peak.
    pub peak_per_hour: f64,
    /// Share of transactions that print a receipt.
    pub print_share: f64,
    /// Card read error rate of its reader in normal service.
    pub reader_err: f64,
    /// Print error rate of its printer in normal service.
    pub printer_err: f64,
    /// Battery health at the start, percent (when it has one).
    pub battery_health0: f64,
    /// Its own power adapter's offset from nominal, fraction.
    pub adapter_offset: f64,
    pub signal_offset_db: f64,
    /// Firmware version at the start of the history.
    pub firmware0: [u16; 3],
    /// A handheld taken off its dock to the tables while the site is open
    /// (battery powered, no supply readings), docked to charge when closed.
    pub mobile: bool,
    /// Static JSON: `{"terminal_id":"…","ts":` then, from `mid`, the fields
    /// from `region` to the opening quote of `firmware`, then from `tail`
    /// the closing quote of firmware up to `supply_v_nominal`.
    pub json: Vec<u8>,
    pub json_mid: usize,
    pub json_tail: usize,
}

impl Terminal {
    pub fn spec(&self) -> &'static ModelSpec {
        &MODELS[usize::from(self.model)]
    }
}

/// The whole fleet and its calendar.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub regions: Vec<Region>,
    pub sites: Vec<Site>,
    pub terminals: Vec<Terminal>,
    /// First local calendar day covered by `day_kind` and `day_factor`, days since the epoch.
    pub first_day: i64,
    pub day_kind: Vec<DayKind>,
    /// `[region][day]`: regional traffic factor of the day (weather, local events).
    pub day_factor: Vec<Vec<f64>>,
}

const REGION_PREFIXES: [&str; 8] = ["north", "south", "east", "west", "central", "harbour", "valley", "airport"];

/// Weekday of a day count since the epoch, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(day: i64) -> u32 {
    (day + 3).rem_euclid(7) as u32
}

impl Fleet {
    pub fn build(cfg: &SimConfig, start_ms: i64, end_ms: i64) -> Fleet {
        let mut rng = Rng::stream(cfg.seed, 1);
        let n_regions = cfg.regions as usize;
        let n_terms = cfg.terminals;

        // Site sizes: 1 + geometric-like, mean `terminals_per_site`.
        let mut sizes = Vec::new();
        let mut total = 0u32;
        while total < n_terms {
            let extra = if cfg.terminals_per_site > 1.0 {
                rng.exponential(cfg.terminals_per_site - 1.0).round() as u32
            } else {
                0
            };
            let size = (1 + extra).min(40).min(n_terms - total);
            sizes.push(size);
            total += size;
        }
        // Need at least one site per region: split the largest sites if short.
        while sizes.len() < n_regions {
            if let Some(i) = (0..sizes.len()).filter(|&i| sizes[i] > 1).max_by_key(|&i| sizes[i]) {
                sizes[i] -= 1;
                sizes.push(1);
            } else {
                break;
            }
        }
        // Regions of different sizes: the first `n_regions` sites seed one
        // region each, the rest go by weight.
        let weights: Vec<f64> = (0..n_regions).map(|_| rng.range(0.4, 1.6)).collect();
        let mut site_region: Vec<u32> =
            (0..sizes.len()).map(|i| if i < n_regions { i as u32 } else { rng.weighted(&weights) as u32 }).collect();
        // Group sites by region (stable), so that ids and index ranges follow regions.
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| site_region[i]);
        let sizes: Vec<u32> = order.iter().map(|&i| sizes[i]).collect();
        site_region = order.iter().map(|&i| site_region[i]).collect();

        let mut regions: Vec<Region> = (0..n_regions)
            .map(|i| Region {
                name: format!("{}-{:02}", REGION_PREFIXES[i % REGION_PREFIXES.len()], i / REGION_PREFIXES.len() + 1),
                utc_offset_ms: [0, 1, 1, 2, 2, 3][rng.below(6) as usize] * MS_PER_HOUR,
                ambient_c: rng.range(8.0, 26.0),
                ambient_swing_c: rng.range(3.0, 7.0),
                host_ms: rng.range(220.0, 420.0),
                base_rtt_ms: rng.range(12.0, 45.0),
                sites: 0..0,
                terminals: 0..0,
            })
            .collect();

        let first_day = start_ms.div_euclid(MS_PER_DAY) - 1;
        let n_days = ((end_ms - start_ms).div_euclid(MS_PER_DAY) + 3) as usize;

        let mut sites = Vec::with_capacity(sizes.len());
        let mut terminals = Vec::with_capacity(n_terms as usize);
        let mut merchant_seq = 0u32;
        let mut last_merchant: Option<(u32, String, MerchantKind)> = None;
        for (si, (&size, &region)) in sizes.iter().zip(&site_region).enumerate() {
            let si = si as u32;
            // Chains: a fifth of sites belong to the previous site's merchant
            // (same kind of business) when in the same region.
            let (merchant, kind) = match &last_merchant {
                Some((r, m, k)) if *r == region && rng.chance(0.2) => (m.clone(), *k),
                _ => {
                    merchant_seq += 1;
                    let kind = MerchantKind::ALL[rng.weighted(&MerchantKind::WEIGHTS)];
                    (format!("M-{merchant_seq:05}"), kind)
                }
            };
            last_merchant = Some((region, merchant.clone(), kind));
            let (open_min, close_min, closed_days) = opening_hours(kind, &mut rng);
            let round_the_clock = open_min == 0 && close_min >= 1440;
            let night_off = !round_the_clock && rng.chance(cfg.night_off_share);
            let uplink =
                if kind == MerchantKind::Fuel || rng.chance(0.75) { Uplink::Broadband } else { Uplink::Cellular };
            let signal_dbm = match uplink {
                Uplink::Broadband => rng.range(-72.0, -42.0),
                Uplink::Cellular => rng.range(-108.0, -68.0),
            };
            let (line_rtt_ms, line_loss_pct) = match uplink {
                Uplink::Broadband => (rng.range(2.0, 18.0), rng.range(0.0, 0.08)),
                Uplink::Cellular => (rng.range(35.0, 90.0) + (-signal_dbm - 68.0) * 1.2, rng.range(0.05, 0.5)),
            };
            let first_term = terminals.len() as u32;
            let site_model = site_model(kind, &mut rng);
            let site_id = format!("S-{:05}", si + 1);
            let peak_site = kind.peak_per_hour() * (rng.normal() * 0.45).exp();
            for _ in 0..size {
                let ti = terminals.len() as u32;
                let model = if rng.chance(0.8) { site_model } else { site_model_any(&mut rng) };
                let spec = &MODELS[usize::from(model)];
                let net = match uplink {
                    Uplink::Cellular => Net::Cellular,
                    Uplink::Broadband if model == M10 || rng.chance(0.2) => Net::Wifi,
                    Uplink::Broadband => Net::Eth,
                };
                let age_days = rng.range(20.0, 6.0 * 365.0) as i32;
                let installed_day = (start_ms.div_euclid(MS_PER_DAY)) as i32 - age_days;
                let age_years = f64::from(age_days) / 365.0;
                let interval_ms = i64::from(cfg.interval_s) * 1000;
                let id = format!("T-{:06}", ti + 1);
                // A fifth of terminals run the previous patch release.
                let mut firmware0 = spec.firmware;
                if rng.chance(0.2) && firmware0[2] > 0 {
                    firmware0[2] -= 1;
                }
                let mut t = Terminal {
                    id,
                    site: si,
                    region,
                    model,
                    net,
                    installed_day,
                    phase_ms: rng.below((interval_ms / 1000) as u64) as i64 * 1000,
                    reboot_tod_ms: (rng.range(2.0, 5.0) * MS_PER_HOUR as f64) as i64,
                    on_lead_min: rng.range(5.0, 40.0),
                    off_lag_min: rng.range(5.0, 45.0),
                    peak_per_hour: peak_site * rng.range(0.6, 1.4),
                    print_share: if spec.printer { rng.range(0.45, 0.95) } else { 0.0 },
                    reader_err: 0.003 + 0.0012 * age_years + rng.range(0.0, 0.004),
                    printer_err: 0.001 + 0.0006 * age_years + rng.range(0.0, 0.002),
                    battery_health0: (100.0 - 4.5 * age_years - rng.range(0.0, 6.0)).max(62.0),
                    adapter_offset: rng.gauss(0.0, 0.008),
                    signal_offset_db: rng.gauss(0.0, 3.0),
                    firmware0,
                    mobile: spec.battery
                        && matches!(kind, MerchantKind::Restaurant | MerchantKind::Cafe)
                        && rng.chance(0.7),
                    json: Vec::new(),
                    json_mid: 0,
                    json_tail: 0,
                };
                build_static_json(&mut t, &regions[region as usize].name, &site_id, &merchant, cfg.interval_s);
                terminals.push(t);
            }
            sites.push(Site {
                id: site_id,
                merchant,
                region,
                kind,
                open_min,
                close_min,
                closed_days,
                night_off,
                uplink,
                signal_dbm,
                line_rtt_ms,
                line_loss_pct,
                mains_offset: rng.gauss(0.0, 0.006),
                indoor: kind != MerchantKind::Fuel,
                terminals: first_term..terminals.len() as u32,
            });
        }
        for (ri, r) in regions.iter_mut().enumerate() {
            let ri = ri as u32;
            let s0 = sites.iter().position(|s| s.region == ri).unwrap_or(0) as u32;
            let s1 = sites.iter().rposition(|s| s.region == ri).map_or(0, |i| i as u32 + 1);
            r.sites = s0..s1;
            let t0 = sites.get(s0 as usize).map_or(0, |s| s.terminals.start);
            let t1 = if s1 > 0 { sites[s1 as usize - 1].terminals.end } else { 0 };
            r.terminals = t0..t1;
        }

        // Calendar: national special days, and a regional factor per day.
        let mut cal = Rng::stream(cfg.seed, 2);
        let day_kind = (0..n_days)
            .map(|_| {
                if cal.chance(cfg.faults.special_day_share) {
                    if cal.chance(0.6) { DayKind::Holiday } else { DayKind::SaleDay }
                } else {
                    DayKind::Normal
                }
            })
            .collect();
        let day_factor = (0..n_regions)
            .map(|_| {
                (0..n_days)
                    .map(|_| {
                        let local_event = if cal.chance(0.03) { cal.range(1.3, 1.8) } else { 1.0 };
                        (cal.normal() * 0.1).exp() * local_event
                    })
                    .collect()
            })
            .collect();

        Fleet { regions, sites, terminals, first_day, day_kind, day_factor }
    }

    pub fn site_of(&self, t: &Terminal) -> &Site {
        &self.sites[t.site as usize]
    }

    /// The fleet-wide kind of a local calendar day.
    pub fn day_kind(&self, local_day: i64) -> DayKind {
        usize::try_from(local_day - self.first_day)
            .ok()
            .and_then(|i| self.day_kind.get(i))
            .copied()
            .unwrap_or(DayKind::Normal)
    }

    fn day_factor(&self, region: u32, local_day: i64) -> f64 {
        usize::try_from(local_day - self.first_day)
            .ok()
            .and_then(|i| self.day_factor[region as usize].get(i))
            .copied()
            .unwrap_or(1.0)
    }

    /// Local time of an instant in a region: (day since epoch, ms into the day).
    pub fn local(&self, region: u32, ts_ms: i64) -> (i64, i64) {
        let local = ts_ms + self.regions[region as usize].utc_offset_ms;
        (local.div_euclid(MS_PER_DAY), local.rem_euclid(MS_PER_DAY))
    }

    /// Whether the site is open (trading) at a local day and time.
    pub fn site_open(&self, site: &Site, day: i64, tod_ms: i64) -> bool {
        if !site.open_on(weekday(day)) || site.kind.special_factor(self.day_kind(day)) == 0.0 {
            return false;
        }
        let m = (tod_ms / MS_PER_MINUTE) as u32;
        m >= site.open_min && m < site.close_min
    }

    /// Whether a terminal is switched on: always, unless its site switches
    /// off outside opening hours.
    pub fn powered(&self, t: &Terminal, site: &Site, day: i64, tod_ms: i64, jitter_min: f64) -> bool {
        if !site.night_off {
            return true;
        }
        if !site.open_on(weekday(day)) || site.kind.special_factor(self.day_kind(day)) == 0.0 {
            return false;
        }
        let m = tod_ms as f64 / MS_PER_MINUTE as f64;
        m >= f64::from(site.open_min) - t.on_lead_min - jitter_min
            && m < f64::from(site.close_min) + t.off_lag_min + jitter_min
    }

    /// Expected transactions per hour at a terminal at this local time.
    pub fn traffic_per_hour(&self, t: &Terminal, site: &Site, day: i64, tod_ms: i64) -> f64 {
        if !self.site_open(site, day, tod_ms) {
            return 0.0;
        }
        let h = tod_ms as f64 / MS_PER_HOUR as f64;
        let hi = (h as usize).min(23);
        let frac = h - hi as f64;
        let prof = site.kind.hourly();
        let shape = prof[hi] * (1.0 - frac) + prof[(hi + 1) % 24] * frac;
        // Open but in a "zero" hour of the profile (early opening): a trickle.
        let shape = shape.max(0.03);
        shape
            * t.peak_per_hour
            * site.kind.weekly()[weekday(day) as usize]
            * site.kind.special_factor(self.day_kind(day))
            * self.day_factor(t.region, day)
    }

    /// Outdoor temperature in a region at a local time: coldest at 03:00,
    /// warmest at 15:00.
    pub fn outdoor_c(&self, region: u32, tod_ms: i64) -> f64 {
        let r = &self.regions[region as usize];
        let h = tod_ms as f64 / MS_PER_HOUR as f64;
        // Cosine with its peak at 15:00.
        r.ambient_c + r.ambient_swing_c * ((h - 15.0) / 24.0 * std::f64::consts::TAU).cos()
    }
}

fn opening_hours(kind: MerchantKind, rng: &mut Rng) -> (u32, u32, u8) {
    let quarter = |rng: &mut Rng, lo: u32, hi: u32| lo + rng.below(u64::from((hi - lo) / 15 + 1)) as u32 * 15;
    match kind {
        MerchantKind::Retail => {
            let closed = if rng.chance(0.7) { 1 << 6 } else { 0 };
            (quarter(rng, 9 * 60, 10 * 60), quarter(rng, 18 * 60, 20 * 60), closed)
        }
        MerchantKind::Restaurant => {
            let closed = if rng.chance(0.4) { 1 << 0 } else { 0 };
            (quarter(rng, 11 * 60, 12 * 60), quarter(rng, 22 * 60, 23 * 60 + 30), closed)
        }
        MerchantKind::Grocery => (quarter(rng, 7 * 60, 8 * 60), quarter(rng, 20 * 60, 22 * 60), 0),
        MerchantKind::Cafe => {
            let closed = if rng.chance(0.3) { 1 << 6 } else { 0 };
            (quarter(rng, 6 * 60 + 30, 8 * 60), quarter(rng, 15 * 60, 18 * 60), closed)
        }
        MerchantKind::Fuel => (0, 1440, 0),
    }
}

fn site_model(kind: MerchantKind, rng: &mut Rng) -> u8 {
    match kind {
        MerchantKind::Fuel if rng.chance(0.75) => P400,
        MerchantKind::Restaurant if rng.chance(0.7) => M10,
        _ => site_model_any(rng),
    }
}

fn site_model_any(rng: &mut Rng) -> u8 {
    // P200, P400, M10, V3
    rng.weighted(&[0.45, 0.08, 0.27, 0.20]) as u8
}

fn push_date(out: &mut Vec<u8>, days: i32) {
    let (y, m, d) = civil_from_days(days);
    let s = format!("{y:04}-{m:02}-{d:02}");
    out.extend_from_slice(s.as_bytes());
}

fn build_static_json(t: &mut Terminal, region: &str, site: &str, merchant: &str, interval_s: u32) {
    let spec = t.spec();
    let mut j = Vec::with_capacity(256);
    j.extend_from_slice(b"{\"terminal_id\":\"");
    j.extend_from_slice(t.id.as_bytes());
    j.extend_from_slice(b"\",\"ts\":");
    t.json_mid = j.len();
    j.extend_from_slice(b",\"region\":\"");
    j.extend_from_slice(region.as_bytes());
    j.extend_from_slice(b"\",\"site_id\":\"");
    j.extend_from_slice(site.as_bytes());
    j.extend_from_slice(b"\",\"merchant_id\":\"");
    j.extend_from_slice(merchant.as_bytes());
    j.extend_from_slice(b"\",\"model\":\"");
    j.extend_from_slice(spec.name.as_bytes());
    j.extend_from_slice(b"\",\"firmware\":\"");
    t.json_tail = j.len();
    j.extend_from_slice(b"\",\"installed_on\":\"");
    push_date(&mut j, t.installed_day);
    j.extend_from_slice(
        format!("\",\"interval_s\":{interval_s},\"supply_v_nominal\":{:.1}", spec.nominal_v).as_bytes(),
    );
    t.json = j;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(terminals: u32, regions: u32) -> Fleet {
        let cfg = SimConfig { terminals, regions, ..SimConfig::default() };
        let start = cfg.start_ms().expect("valid start");
        Fleet::build(&cfg, start, cfg.end_ms(start))
    }

    #[test]
    fn every_region_has_sites_and_terminals_in_order() {
        let f = fleet(300, 7);
        assert_eq!(f.terminals.len(), 300);
        let mut next = 0;
        for r in &f.regions {
            assert!(!r.sites.is_empty(), "{} has no site", r.name);
            assert_eq!(r.terminals.start, next);
            next = r.terminals.end;
        }
        assert_eq!(next, 300);
        for (i, s) in f.sites.iter().enumerate() {
            for t in s.terminals.clone() {
                assert_eq!(f.terminals[t as usize].site, i as u32);
                assert_eq!(f.terminals[t as usize].region, s.region);
            }
        }
    }

    #[test]
    fn one_terminal_per_region_works() {
        let f = fleet(3, 3);
        assert!(f.regions.iter().all(|r| r.terminals.len() == 1));
    }

    #[test]
    fn fleet_mixes_models_uplinks_and_night_off() {
        let f = fleet(1000, 8);
        for m in 0..MODELS.len() as u8 {
            assert!(f.terminals.iter().any(|t| t.model == m), "no {}", MODELS[m as usize].name);
        }
        for n in [Net::Eth, Net::Wifi, Net::Cellular] {
            assert!(f.terminals.iter().any(|t| t.net == n));
        }
        let off = f.sites.iter().filter(|s| s.night_off).count();
        assert!(off > 0 && off < f.sites.len());
        assert!(f.sites.iter().any(|s| s.round_the_clock()));
    }

    #[test]
    fn weekday_of_known_dates() {
        // 2026-09-01 is a Tuesday.
        let d = i64::from(termwatch_telemetry::time::days_from_civil(2026, 9, 1));
        assert_eq!(weekday(d), 1);
    }
}
