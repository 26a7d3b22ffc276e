//! Integration tests of the simulator: determinism, the contract, and that
//! every fault and every look-alike really shows in the data.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use termwatch_sim::{Damage, SimConfig, Simulator};
use termwatch_telemetry::alerts::{AlertKind, IncidentLabel, Scope};
use termwatch_telemetry::{Counter, Label, Measure, decode};

/// One decoded report, reduced to what the tests look at.
#[derive(Debug, Clone)]
struct Row {
    terminal: String,
    site: String,
    region: String,
    model: String,
    firmware: String,
    ts: i64,
    arrival: i64,
    nominal: f64,
    v_std: Option<f64>,
    sags: u32,
    card_reads: u32,
    card_errors: u32,
    print_jobs: Option<u32>,
    print_errors: Option<u32>,
    battery_pct: Option<f64>,
    battery_health: Option<f64>,
    txn: u32,
    timeouts: u32,
    rtt: Option<f64>,
    loss: f64,
    reconnects: u32,
    uptime: u64,
    reboots: u32,
    temperature: Option<f64>,
}

struct Run {
    rows: Vec<Row>,
    damaged: Vec<(Damage, Vec<u8>)>,
    arrivals: Vec<i64>,
    labels: Vec<IncidentLabel>,
    sim: Simulator,
}

fn run(cfg: SimConfig) -> Run {
    let mut sim = Simulator::new(cfg).expect("valid config");
    let mut buf = Vec::new();
    let (mut rows, mut damaged, mut arrivals) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(meta) = sim.next_record(&mut buf) {
        arrivals.push(meta.arrival_ms);
        assert!(meta.arrival_ms >= meta.event_ms, "arrives before it happened");
        if let Some(d) = meta.damage {
            damaged.push((d, buf.clone()));
            continue;
        }
        let r = match decode(&buf, meta.arrival_ms) {
            Ok(r) => r,
            Err(e) => panic!("valid record rejected: {e}\n{}", String::from_utf8_lossy(&buf)),
        };
        assert_eq!(r.ts_ms, meta.event_ms);
        assert_eq!(r.terminal_id, sim.terminal_id(meta.terminal));
        let c = |k: Counter| r.counter(k).expect("counter present");
        rows.push(Row {
            terminal: r.terminal_id.to_string(),
            site: r.label(Label::SiteId).unwrap_or_default().to_string(),
            region: r.region.to_string(),
            model: r.label(Label::Model).unwrap_or_default().to_string(),
            firmware: r.label(Label::Firmware).unwrap_or_default().to_string(),
            ts: r.ts_ms,
            arrival: meta.arrival_ms,
            nominal: r.supply_v_nominal,
            v_std: r.measure(Measure::SupplyVStd),
            sags: r.counter(Counter::SupplySags).unwrap_or(0),
            card_reads: c(Counter::CardReads),
            card_errors: c(Counter::CardReadErrors),
            print_jobs: r.counter(Counter::PrintJobs),
            print_errors: r.counter(Counter::PrintErrors),
            battery_pct: r.measure(Measure::BatteryPct),
            battery_health: r.measure(Measure::BatteryHealthPct),
            txn: c(Counter::TxnCount),
            timeouts: c(Counter::TxnTimeouts),
            rtt: r.measure(Measure::NetRttMs),
            loss: r.measure(Measure::NetLossPct).expect("loss"),
            reconnects: c(Counter::NetReconnects),
            uptime: r.uptime_s.expect("uptime"),
            reboots: c(Counter::Reboots),
            temperature: r.measure(Measure::TemperatureC),
        });
    }
    let labels = sim.labels().to_vec();
    Run { rows, damaged, arrivals, labels, sim }
}

/// A small fleet with every fault turned up, shared by the tests.
fn faulty() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut cfg = SimConfig {
            seed: 7,
            terminals: 60,
            regions: 3,
            days: 3.0,
            damaged_share: 0.01,
            late_share: 0.01,
            very_late_share: 0.002,
            ..SimConfig::default()
        };
        cfg.faults.aging_per_1000_terminal_days = 40.0;
        cfg.faults.aging_min_days = 1.0;
        cfg.faults.aging_max_days = 3.0;
        cfg.faults.site_mains_per_1000_site_days = 80.0;
        cfg.faults.power_supply_per_1000_terminal_days = 20.0;
        cfg.faults.network_per_region_day = 0.7;
        cfg.faults.uplink_failure_per_1000_site_days = 60.0;
        cfg.faults.rollouts_per_region_week = 4.0;
        cfg.faults.severity_min = 0.5;
        run(cfg)
    })
}

fn small(seed: u64, interval_s: u32) -> SimConfig {
    SimConfig { seed, terminals: 30, regions: 2, days: 1.0, interval_s, ..SimConfig::default() }
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

#[test]
fn same_seed_gives_identical_bytes_and_gzip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, name) in ["a.ndjson", "b.ndjson", "c.ndjson.gz", "d.ndjson.gz"].iter().enumerate() {
        let out = dir.path().join(name);
        let labels = dir.path().join(format!("{i}.labels"));
        let s = termwatch_sim::write_files(small(5, 60), &out, Some(&labels)).expect("writes");
        assert!(s.records > 0);
        files.push((std::fs::read(&out).expect("read"), std::fs::read(&labels).expect("read")));
    }
    assert!(files[0] == files[1], "plain output differs between runs");
    assert!(files[2] == files[3], "gzip output differs between runs");
    assert_eq!(files[0].1, files[2].1);
    // The gzip holds the same bytes as the plain file.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(files[2].0.as_slice()), &mut plain).expect("gunzip");
    assert!(plain == files[0].0, "gzip content differs from plain output");

    let other = dir.path().join("e.ndjson");
    termwatch_sim::write_files(small(6, 60), &other, None).expect("writes");
    assert!(std::fs::read(&other).expect("read") != files[0].0, "another seed gave the same output");
}

#[test]
fn pull_api_matches_write_ndjson() {
    let mut sim = Simulator::new(small(9, 60)).expect("valid");
    let mut pulled = Vec::new();
    let mut buf = Vec::new();
    while sim.next_record(&mut buf).is_some() {
        pulled.extend_from_slice(&buf);
        pulled.push(b'\n');
    }
    let mut written = Vec::new();
    let summary = Simulator::new(small(9, 60)).expect("valid").write_ndjson(&mut written).expect("writes");
    assert!(pulled == written);
    assert_eq!(summary.bytes as usize, written.len());
    assert_eq!(summary.records as usize, written.iter().filter(|&&b| b == b'\n').count());
}

#[test]
fn every_valid_record_is_accepted_and_every_damaged_one_rejected() {
    let run = faulty();
    assert!(run.rows.len() > 50_000);
    let kinds: HashSet<Damage> = run.damaged.iter().map(|d| d.0).collect();
    assert_eq!(kinds.len(), 5, "every kind of damage occurs: {kinds:?}");
    for (d, bytes) in &run.damaged {
        assert!(decode(bytes, i64::MAX / 2).is_err(), "{d:?} record accepted: {}", String::from_utf8_lossy(bytes));
    }
    let share = run.damaged.len() as f64 / (run.rows.len() + run.damaged.len()) as f64;
    assert!((0.007..0.013).contains(&share), "damaged share {share}");
}

#[test]
fn output_is_in_arrival_order_with_late_records() {
    let run = faulty();
    assert!(run.arrivals.windows(2).all(|w| w[0] <= w[1]), "not in arrival order");
    let late_min = run.rows.iter().filter(|r| r.arrival - r.ts > 60_000 && r.arrival - r.ts < 3_600_000).count();
    let late_hours = run.rows.iter().filter(|r| r.arrival - r.ts >= 3_600_000).count();
    assert!(late_min > 100, "{late_min} minutes-late records");
    assert!(late_hours > 10, "{late_hours} hours-late records");
    // Out of order by event time.
    let inversions = run.rows.windows(2).filter(|w| w[1].ts + 60_000 < w[0].ts).count();
    assert!(inversions > 100);
}

#[test]
fn labels_are_well_formed_and_apart() {
    let run = faulty();
    let fleet = run.sim.fleet();
    let terminals: HashMap<&str, &str> =
        fleet.terminals.iter().map(|t| (t.id.as_str(), fleet.regions[t.region as usize].name.as_str())).collect();
    let sites: HashMap<&str, &str> =
        fleet.sites.iter().map(|s| (s.id.as_str(), fleet.regions[s.region as usize].name.as_str())).collect();
    let regions: HashSet<&str> = fleet.regions.iter().map(|r| r.name.as_str()).collect();
    // Firmware regressions are not simulated yet.
    for kind in [AlertKind::HardwareAging, AlertKind::VoltageInstability, AlertKind::NetworkDegradation] {
        assert!(run.labels.iter().filter(|l| l.kind == kind).count() >= 2, "too few {kind} labels");
    }
    assert!(run.labels.windows(2).all(|w| w[0].start <= w[1].start), "labels not sorted by start");
    for l in &run.labels {
        assert!(l.start < l.end, "{l:?}");
        assert!(l.start >= run.sim.start_ms() && l.end <= run.sim.end_ms(), "{l:?} outside the history");
        let region = match l.scope {
            Scope::Terminal => terminals.get(l.entity.as_str()).copied(),
            Scope::Site => sites.get(l.entity.as_str()).copied(),
            Scope::Region => regions.get(l.entity.as_str()).copied(),
            Scope::Cohort => Some("*"),
        };
        assert_eq!(region, Some(l.region.as_str()), "{l:?}: entity unknown or in another region");
        let want_scope = match l.kind {
            AlertKind::HardwareAging => &[Scope::Terminal][..],
            AlertKind::VoltageInstability => &[Scope::Terminal, Scope::Site][..],
            AlertKind::NetworkDegradation => &[Scope::Region][..],
            AlertKind::FirmwareRegression => &[Scope::Cohort][..],
        };
        assert!(want_scope.contains(&l.scope), "{l:?}");
        assert!(l.cause.is_some());
        // Round-trips through the contract's own type.
        let line = serde_json::to_string(l).expect("serialises");
        assert_eq!(&serde_json::from_str::<IncidentLabel>(&line).expect("parses"), l);
    }
    for (i, a) in run.labels.iter().enumerate() {
        for b in &run.labels[i + 1..] {
            if a.kind == b.kind && a.entity == b.entity {
                assert!(a.end <= b.start || b.end <= a.start, "overlapping incidents {a:?} {b:?}");
            }
        }
    }
    let causes: HashSet<&str> = run.labels.iter().filter_map(|l| l.cause.as_deref()).collect();
    for c in ["card_reader", "site_mains", "power_supply", "regional_network"] {
        assert!(causes.contains(c), "no {c} incident");
    }
}

fn rows_of<'a>(run: &'a Run, f: impl Fn(&Row) -> bool + 'a) -> impl Iterator<Item = &'a Row> + 'a {
    run.rows.iter().filter(move |r| f(r))
}

#[test]
fn site_mains_problem_raises_supply_noise_at_every_terminal_of_the_site() {
    let run = faulty();
    let mut checked = 0;
    for l in run.labels.iter().filter(|l| l.scope == Scope::Site) {
        let during: Vec<f64> = rows_of(run, |r| r.site == l.entity && r.ts >= l.start && r.ts < l.end)
            .filter_map(|r| r.v_std.map(|s| s / r.nominal))
            .collect();
        let before: Vec<f64> =
            rows_of(run, |r| r.site == l.entity && r.ts < l.start - 3_600_000 && r.ts > l.start - 86_400_000)
                .filter_map(|r| r.v_std.map(|s| s / r.nominal))
                .collect();
        if during.len() < 20 || before.len() < 20 {
            continue;
        }
        let (d, b) = (mean(during), mean(before));
        let sags = |f: &dyn Fn(&Row) -> bool| rows_of(run, |r| r.site == l.entity && f(r)).map(|r| r.sags).sum::<u32>();
        let sags_during = sags(&|r| r.ts >= l.start && r.ts < l.end);
        let sags_before = sags(&|r| r.ts < l.start - 3_600_000 && r.ts > l.start - 86_400_000);
        assert!(d > 1.3 * b, "{}: std/nominal {d:.4} during vs {b:.4} before", l.entity);
        assert!(sags_during > sags_before, "{}: {sags_during} sags during vs {sags_before} before", l.entity);
        let terminals: HashSet<&str> = rows_of(run, |r| r.site == l.entity && r.ts >= l.start && r.ts < l.end)
            .map(|r| r.terminal.as_str())
            .collect();
        let site = run.sim.fleet().sites.iter().find(|s| s.id == l.entity).expect("site exists");
        assert!(terminals.len() == site.terminals.len() || terminals.len() > 1 || site.terminals.len() == 1);
        checked += 1;
    }
    assert!(checked >= 1, "no site mains incident had data before and during");
}

#[test]
fn failing_power_supply_worsens_at_its_terminal() {
    let run = faulty();
    let mut checked = 0;
    for l in run.labels.iter().filter(|l| l.cause.as_deref() == Some("power_supply")) {
        let late_start = l.end - (l.end - l.start) / 3;
        let late: Vec<&Row> = rows_of(run, |r| r.terminal == l.entity && r.ts >= late_start && r.ts < l.end).collect();
        let before: Vec<&Row> = rows_of(run, |r| r.terminal == l.entity && r.ts < l.start).collect();
        if late.len() < 30 || before.len() < 30 {
            continue;
        }
        let d = mean(late.iter().filter_map(|r| r.v_std.map(|s| s / r.nominal)));
        let b = mean(before.iter().filter_map(|r| r.v_std.map(|s| s / r.nominal)));
        let sags = late.iter().map(|r| r.sags).sum::<u32>();
        assert!(d > 1.3 * b || sags > 5, "{}: std/nominal {d:.4} vs {b:.4}, {sags} sags", l.entity);
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn hardware_aging_moves_its_part_and_ends_in_failure() {
    let run = faulty();
    let mut checked = 0;
    for l in run.labels.iter().filter(|l| l.kind == AlertKind::HardwareAging) {
        let dur = l.end - l.start;
        let last = |r: &Row| r.terminal == l.entity && r.ts >= l.end - dur / 5 && r.ts < l.end;
        let first = |r: &Row| r.terminal == l.entity && r.ts >= l.start && r.ts < l.start + dur / 5;
        match l.cause.as_deref() {
            Some("card_reader") => {
                let ratio = |f: &dyn Fn(&Row) -> bool| {
                    let (e, n) = run
                        .rows
                        .iter()
                        .filter(|r| f(r))
                        .fold((0, 0), |(e, n), r| (e + r.card_errors, n + r.card_reads));
                    (e as f64 / n.max(1) as f64, n)
                };
                let ((late, n_late), (early, _)) = (ratio(&last), ratio(&first));
                if n_late < 30 {
                    continue;
                }
                assert!(late > 2.0 * early && late > 0.03, "{}: read error ratio {late:.3} vs {early:.3}", l.entity);
                checked += 1;
            }
            Some("printer") => {
                let ratio = |f: &dyn Fn(&Row) -> bool| {
                    let (e, n) = run
                        .rows
                        .iter()
                        .filter(|r| f(r))
                        .fold((0, 0), |(e, n), r| (e + r.print_errors.unwrap_or(0), n + r.print_jobs.unwrap_or(0)));
                    (e as f64 / n.max(1) as f64, n)
                };
                let ((late, n_late), (early, _)) = (ratio(&last), ratio(&first));
                if n_late < 30 {
                    continue;
                }
                assert!(late > 2.0 * early && late > 0.03, "{}: print error ratio {late:.3} vs {early:.3}", l.entity);
                checked += 1;
            }
            Some("battery") => {
                let h =
                    |f: &dyn Fn(&Row) -> bool| mean(run.rows.iter().filter(|r| f(r)).filter_map(|r| r.battery_health));
                let (late, early) = (h(&last), h(&first));
                if late.is_nan() || early.is_nan() {
                    continue;
                }
                assert!(late < early - 3.0, "{}: battery health {late:.1} vs {early:.1}", l.entity);
                checked += 1;
            }
            other => panic!("unexpected cause {other:?}"),
        }
    }
    assert!(checked >= 2, "only {checked} aging incidents checked");
}

#[test]
fn network_degradation_hits_part_of_the_region() {
    let run = faulty();
    let mut checked = 0;
    for l in run.labels.iter().filter(|l| l.kind == AlertKind::NetworkDegradation) {
        // The middle half of the window: past the ramp.
        let q = (l.end - l.start) / 4;
        let in_region: Vec<&Row> = rows_of(run, |r| r.region == l.region).collect();
        let mut per_term: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for r in &in_region {
            let Some(rtt) = r.rtt else { continue };
            let e = per_term.entry(r.terminal.as_str()).or_default();
            if r.ts >= l.start + q && r.ts < l.end - q {
                e.0.push(rtt);
            } else if r.ts < l.start - 3_600_000 && r.ts > l.start - 86_400_000 {
                e.1.push(rtt);
            }
        }
        let comparable: Vec<(f64, f64)> = per_term
            .values()
            .filter(|(d, b)| d.len() >= 3 && b.len() >= 3)
            .map(|(d, b)| (mean(d.iter().copied()), mean(b.iter().copied())))
            .collect();
        if comparable.len() < 5 {
            continue;
        }
        let hit = comparable.iter().filter(|(d, b)| d > &(1.2 * b)).count();
        let share = hit as f64 / comparable.len() as f64;
        assert!((0.15..=0.95).contains(&share), "{}: {hit} of {} terminals degraded", l.entity, comparable.len());
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn some_terminals_are_switched_off_at_night_and_others_never() {
    let run = faulty();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut gap: HashMap<&str, i64> = HashMap::new();
    let mut by_ts: Vec<&Row> = run.rows.iter().collect();
    by_ts.sort_by_key(|r| (r.terminal.as_str(), r.ts));
    for r in by_ts {
        if let Some(prev) = last.insert(r.terminal.as_str(), r.ts) {
            let g = gap.entry(r.terminal.as_str()).or_default();
            *g = (*g).max(r.ts - prev);
        }
    }
    let long_gaps = gap.values().filter(|&&g| g > 4 * 3_600_000).count();
    let no_gaps = gap.values().filter(|&&g| g <= 120_000).count();
    assert!(long_gaps >= 5, "{long_gaps} terminals with night gaps");
    assert!(no_gaps >= 10, "{no_gaps} terminals reporting round the clock");
}

#[test]
fn uptime_grows_and_resets_on_reboot() {
    let run = faulty();
    let mut by_term: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &run.rows {
        by_term.entry(r.terminal.as_str()).or_default().push(r);
    }
    let (mut grew, mut resets) = (0, 0);
    for rows in by_term.values_mut() {
        rows.sort_by_key(|r| r.ts);
        for w in rows.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.ts - a.ts != 60_000 {
                continue;
            }
            if b.reboots == 0 {
                assert_eq!(b.uptime, a.uptime + 60, "{} at {}: uptime must grow by the interval", b.terminal, b.ts);
                grew += 1;
            } else {
                assert!(b.uptime < 60, "{}: uptime {} after a reboot", b.terminal, b.uptime);
                resets += 1;
            }
        }
    }
    assert!(grew > 50_000 && resets > 50, "{grew} grew, {resets} reset");
}

#[test]
fn firmware_rollouts_change_versions_with_reboots() {
    let run = faulty();
    let mut by_term: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &run.rows {
        by_term.entry(r.terminal.as_str()).or_default().push(r);
    }
    let mut changes = 0;
    for rows in by_term.values_mut() {
        rows.sort_by_key(|r| r.ts);
        for w in rows.windows(2) {
            if w[0].firmware != w[1].firmware {
                assert!(w[1].reboots >= 1 || w[1].uptime < 3_600, "firmware changed without a reboot");
                changes += 1;
            }
        }
    }
    assert!(changes >= 5, "{changes} firmware changes");
}

#[test]
fn fields_have_realistic_values() {
    let run = faulty();
    let models: HashSet<&str> = run.rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(models.len(), 4);
    // The noisy model is noisier in normal service (outside any label).
    let std_of =
        |m: &str| mean(rows_of(run, |r| r.model == m && r.sags == 0).filter_map(|r| r.v_std.map(|s| s / r.nominal)));
    assert!(std_of("V3") > 2.5 * std_of("P200"));
    // Battery fields only on the model that has one.
    assert!(run.rows.iter().all(|r| r.battery_pct.is_some() == (r.model == "M10")));
    assert!(run.rows.iter().all(|r| r.temperature.is_some() == (r.model != "V3")));
    assert!(run.rows.iter().all(|r| r.print_jobs.is_some() == (r.model != "V3")));
    // Handhelds off their dock: no supply readings, the battery drains through the day.
    assert!(run.rows.iter().any(|r| r.model == "M10" && r.v_std.is_none()));
    assert!(run.rows.iter().all(|r| r.model == "M10" || r.v_std.is_some()));
    assert!(run.rows.iter().filter_map(|r| r.battery_pct).any(|b| b < 80.0));
    let temps: Vec<f64> = run.rows.iter().filter_map(|r| r.temperature).collect();
    let (lo, hi) = temps.iter().fold((f64::MAX, f64::MIN), |(l, h), &t| (l.min(t), h.max(t)));
    assert!(lo > -10.0 && hi < 80.0, "temperatures {lo}..{hi}");
    assert!(run.rows.iter().all(|r| r.card_reads >= r.card_errors && r.txn >= r.timeouts));
    let reconnects: u32 = run.rows.iter().map(|r| r.reconnects).sum();
    assert!(reconnects > 0);
    let nulls = run.rows.iter().filter(|r| r.rtt.is_none()).count();
    assert!(nulls > 0, "an uplink that is down reports no round-trip time");
    assert!(run.rows.iter().any(|r| r.loss >= 99.0));
}

#[test]
fn interval_300_scales_counters() {
    let a = run(small(3, 60));
    let b = run(small(3, 300));
    let per_day = |r: &Run| r.rows.iter().map(|x| f64::from(x.txn)).sum::<f64>();
    let (ta, tb) = (per_day(&a), per_day(&b));
    assert!(b.rows.len() * 4 < a.rows.len());
    assert!((tb / ta - 1.0).abs() < 0.25, "transactions per day {ta} at 60 s vs {tb} at 300 s");
    assert!(b.rows.iter().all(|r| (r.ts - b.sim.start_ms()) % 1000 == 0));
}

#[test]
fn odd_intervals_work() {
    for interval in [1, 7, 3600] {
        let cfg = SimConfig {
            terminals: 5,
            regions: 1,
            days: if interval == 1 { 0.02 } else { 1.0 },
            interval_s: interval,
            ..SimConfig::default()
        };
        let r = run(cfg);
        assert!(!r.rows.is_empty(), "interval {interval}");
    }
}

#[test]
fn invalid_config_names_the_parameter() {
    let err = Simulator::new(SimConfig { interval_s: 0, ..SimConfig::default() }).expect_err("invalid");
    assert!(err.to_string().contains("interval_s"), "{err}");
}

#[test]
fn longer_blips_sag_in_consecutive_reports() {
    // Blips only, many of them: with one report each, a sag report is
    // almost never followed by another; with up to three, often.
    let consecutive = |max_reports: u32| {
        let mut cfg =
            SimConfig { seed: 3, terminals: 30, regions: 2, days: 2.0, interval_s: 300, ..SimConfig::default() };
        cfg.faults.scale_faults(0.0);
        cfg.faults.uplink_failure_per_1000_site_days = 0.0;
        cfg.faults.rollouts_per_region_week = 0.0;
        cfg.faults.blips_per_terminal_day = 20.0;
        cfg.faults.blip_max_reports = max_reports;
        let mut rows = run(cfg).rows;
        rows.sort_by(|a, b| (&a.terminal, a.ts).cmp(&(&b.terminal, b.ts)));
        rows.windows(2).filter(|w| w[0].terminal == w[1].terminal && w[0].sags > 0 && w[1].sags > 0).count()
    };
    let (one, three) = (consecutive(1), consecutive(3));
    assert!(three > 5 * one + 10, "consecutive sag reports: {one} with one-report blips, {three} with up to three");
}

#[test]
fn blip_length_is_validated() {
    let mut cfg = SimConfig::default();
    cfg.faults.blip_max_reports = 0;
    let Err(err) = Simulator::new(cfg) else { panic!("blip_max_reports 0 was accepted") };
    assert!(err.to_string().contains("faults.blip_max_reports"), "{err}");
}

#[test]
fn staged_rollouts_reach_a_few_terminals_first_and_regressions_are_labelled_by_cohort() {
    let mut cfg =
        SimConfig { seed: 5, terminals: 200, regions: 4, days: 10.0, interval_s: 300, ..SimConfig::default() };
    cfg.faults.scale_faults(0.0);
    cfg.faults.rollouts_per_region_week = 0.0;
    cfg.faults.staged_rollouts_per_week = 3.0;
    cfg.faults.regression_share = 1.0;
    let run = run(cfg);
    let regressions: Vec<&IncidentLabel> =
        run.labels.iter().filter(|l| l.kind == AlertKind::FirmwareRegression).collect();
    assert!(!regressions.is_empty(), "no regression labelled");
    for l in &regressions {
        assert_eq!((l.scope, l.region.as_str()), (Scope::Cohort, "*"), "{l:?}");
        let (model, firmware) = l.entity.split_once('/').expect("MODEL/FIRMWARE");
        let of_model: HashSet<&str> =
            run.rows.iter().filter(|r| r.model == model).map(|r| r.terminal.as_str()).collect();
        let on = |until: i64| -> HashSet<&str> {
            run.rows
                .iter()
                .filter(|r| r.model == model && r.firmware == firmware && r.ts <= until)
                .map(|r| r.terminal.as_str())
                .collect()
        };
        // The canary: a few terminals for the first hours, not the model.
        let canary = on(l.start + 3 * 3_600_000);
        assert!(!canary.is_empty() && canary.len() * 10 <= of_model.len().max(10), "{l:?}: canary {canary:?}");
        // Nothing runs it after the rollback (reports up to an interval late).
        assert!(
            run.rows.iter().all(|r| !(r.model == model && r.firmware == firmware && r.ts > l.end + 600_000)),
            "{l:?} still runs after its rollback"
        );
    }
}

#[test]
fn without_staged_rollouts_the_default_fleet_is_unchanged() {
    // The staged rollouts draw from their own stream and only while one
    // runs: a fleet with the rate at 0 is the fleet it was before.
    let cfg = SimConfig { terminals: 40, regions: 2, days: 1.0, ..SimConfig::default() };
    let explicit = {
        let mut c = cfg.clone();
        c.faults.staged_rollouts_per_week = 0.0;
        c.faults.regression_share = 0.3;
        c
    };
    let (mut a, mut b) = (Simulator::new(cfg).expect("valid"), Simulator::new(explicit).expect("valid"));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    loop {
        match (a.next_record(&mut x), b.next_record(&mut y)) {
            (Some(_), Some(_)) => assert_eq!(x, y),
            (None, None) => break,
            other => panic!("different lengths: {other:?}"),
        }
    }
}

#[test]
fn drawn_physics_are_reproducible_valid_and_differ_from_draw_to_draw() {
    let base = SimConfig { seed: 5, terminals: 100, regions: 10, ..SimConfig::default() };
    let drawn = |n: u64| {
        let mut cfg = base.clone();
        cfg.draw_physics(n);
        cfg
    };
    let mut seen = HashSet::new();
    for n in 0..200 {
        let cfg = drawn(n);
        cfg.validate().unwrap_or_else(|e| panic!("draw {n}: {e}"));
        assert_eq!(cfg, drawn(n), "draw {n} again");
        assert_eq!((cfg.seed, cfg.terminals, cfg.regions), (5, 100, 10), "the fleet itself is not drawn");
        let p = &cfg.physics;
        assert!((0.08..0.35).contains(&p.supply_noise_sigma), "{p:?}");
        assert!((0.08..0.35).contains(&p.rtt_noise_sigma), "{p:?}");
        assert!((1.0..2.5).contains(&p.noisy_model_factor), "{p:?}");
        assert!((1..=4).contains(&cfg.faults.blip_max_reports));
        // Labelled fault rates are the fleet's, not the draw's.
        assert_eq!(cfg.faults.network_per_region_day, base.faults.network_per_region_day);
        seen.insert(serde_json::to_string(&cfg).expect("json"));
    }
    assert_eq!(seen.len(), 200, "every draw is its own physics");
    // The defaults are the simulator's own: no draw, no change.
    assert_eq!(SimConfig::default().physics, termwatch_sim::Physics::default());
}

#[test]
fn a_drawn_supply_noise_and_a_noisier_model_show_in_the_data() {
    let fleet = |sigma: f64, factor: f64| {
        let mut cfg =
            SimConfig { seed: 3, terminals: 40, regions: 2, days: 1.0, interval_s: 300, ..SimConfig::default() };
        cfg.faults = termwatch_sim::FaultRates {
            aging_per_1000_terminal_days: 0.0,
            site_mains_per_1000_site_days: 0.0,
            power_supply_per_1000_terminal_days: 0.0,
            blips_per_terminal_day: 0.0,
            ..cfg.faults
        };
        cfg.physics.supply_noise_sigma = sigma;
        cfg.physics.noisy_model = "P200".into();
        cfg.physics.noisy_model_factor = factor;
        run(cfg)
    };
    // Per terminal, the spread of ln(supply_v_std) around its own median.
    let wander = |run: &Run| {
        let mut per: HashMap<&str, Vec<f64>> = HashMap::new();
        for r in &run.rows {
            if let Some(v) = r.v_std.filter(|v| *v > 0.0) {
                per.entry(&r.terminal).or_default().push(v.ln());
            }
        }
        let sds: Vec<f64> = per
            .values()
            .filter(|v| v.len() > 100)
            .map(|v| {
                let m = mean(v.iter().copied());
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            })
            .collect();
        mean(sds)
    };
    let (quiet, noisy) = (fleet(0.08, 1.0), fleet(0.35, 1.0));
    let (q, n) = (wander(&quiet), wander(&noisy));
    assert!(n > 2.0 * q, "per-report wander of supply noise: {q:.3} at sigma 0.08, {n:.3} at 0.35");
    let level = |run: &Run, model: &str| {
        let mut v: Vec<f64> = run.rows.iter().filter(|r| r.model == model).filter_map(|r| r.v_std).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let doubled = fleet(0.08, 2.0);
    let ratio = level(&doubled, "P200") / level(&quiet, "P200");
    assert!((1.7..2.3).contains(&ratio), "P200 at twice its noise: median supply_v_std x{ratio:.2}");
    let other = level(&doubled, "P400") / level(&quiet, "P400");
    assert!((0.9..1.1).contains(&other), "P400 untouched: x{other:.2}");
}

#[test]
fn a_carriers_regional_fault_reaches_terminals_across_sites_where_an_access_networks_reaches_whole_sites() {
    // Per regional fault, how many of the sites it touches it touches only in part.
    let partial_sites = |by_terminal: f64| {
        let mut cfg =
            SimConfig { seed: 9, terminals: 200, regions: 4, days: 7.0, interval_s: 300, ..SimConfig::default() };
        cfg.faults.network_per_region_day = 1.0;
        cfg.physics.regional_by_terminal_share = by_terminal;
        let sim = Simulator::new(cfg).expect("valid");
        let (fleet, schedule) = (sim.fleet(), sim.schedule());
        let mut counts = Vec::new();
        for (e, effect) in schedule.effects.iter().enumerate() {
            let Some(l) = effect.label else { continue };
            if schedule.labels[l].kind != AlertKind::NetworkDegradation {
                continue;
            }
            let mut per_site: HashMap<u32, usize> = HashMap::new();
            for (ti, spans) in schedule.spans.iter().enumerate() {
                if spans.iter().any(|s| s.effect as usize == e) {
                    *per_site.entry(fleet.terminals[ti].site).or_default() += 1;
                }
            }
            let partial = per_site.iter().filter(|(s, n)| fleet.sites[**s as usize].terminals.len() != **n).count();
            counts.push((partial, per_site.len()));
        }
        counts
    };
    let by_site = partial_sites(0.0);
    assert!(by_site.len() >= 10, "{} regional faults", by_site.len());
    assert!(by_site.iter().all(|(partial, _)| *partial == 0), "whole sites: {by_site:?}");
    let by_terminal = partial_sites(1.0);
    let split: usize = by_terminal.iter().map(|(p, _)| p).sum();
    let touched: usize = by_terminal.iter().map(|(_, n)| n).sum();
    assert!(split * 3 > touched, "a carrier's trouble splits sites: {split} of {touched} sites touched in part");
}
