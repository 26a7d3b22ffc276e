//! Bounded state under hostile input: a flood of one-off terminals, of
//! invented regions, and terminals that go quiet for good. What the limits
//! forget or refuse is counted, and forgetting some terminals changes no
//! other terminal's features.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use termwatch_features::{DEFAULT_SOURCE, Departed, FeatureConfig, FeatureEngine, Limits, WindowRows};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::{BatchBuilder, decode};

const MIN: i64 = 60_000;

fn batch(lines: &[Vec<u8>]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l, i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

/// A report from a terminal seen once: no site, a firmware of its own, so
/// that it brings a site and a cohort of its own too.
fn one_off(n: u64, region: &str, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"terminal_id":"X-{n}","ts":{ts},"region":"{region}","model":"M-flood","firmware":"f-{n}","supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.02,"net_rtt_ms":40,"net_loss_pct":0.1}}"#
    )
    .into_bytes()
}

fn steady(t: &str, region: &str, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"terminal_id":"{t}","ts":{ts},"region":"{region}","site_id":"S-{t}","supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.02,"net_rtt_ms":40,"net_loss_pct":0.1}}"#
    )
    .into_bytes()
}

/// A simulated day and a half of 40 terminals, all reporting every 300 s
/// (none switched off at night), faults included: (ts, line).
fn simulated() -> Vec<(i64, Vec<u8>)> {
    let mut cfg = SimConfig {
        terminals: 40,
        regions: 3,
        days: 1.5,
        seed: 23,
        interval_s: 300,
        night_off_share: 0.0,
        damaged_share: 0.0,
        late_share: 0.0,
        very_late_share: 0.0,
        ..SimConfig::default()
    };
    cfg.faults.scale_faults(20.0);
    let mut sim = Simulator::new(cfg).expect("simulator");
    let (mut out, mut buf) = (Vec::new(), Vec::new());
    while sim.next_record(&mut buf).is_some() {
        let record = decode(&buf, i64::MAX / 2).expect("valid");
        out.push((record.ts_ms, buf.clone()));
    }
    out
}

/// The rows of the simulated terminals, sites and regions, by name.
fn simulated_rows(e: &FeatureEngine, rows: &[WindowRows], out: &mut Vec<String>) {
    for w in rows {
        for r in &w.terminal_voltage {
            let id = e.terminal_id(r.terminal);
            if !id.starts_with("X-") {
                out.push(format!("{} v {id} {:?} {:?}", w.end_ms, r.features, r.baselines));
            }
        }
        for r in &w.aging {
            let id = e.terminal_id(r.terminal);
            if !id.starts_with("X-") {
                out.push(format!("{} a {id} {:?} {:?}", w.end_ms, r.features, r.baselines));
            }
        }
        for r in &w.site_voltage {
            let site = e.site_id(r.site);
            if !site.starts_with("terminal:X-") {
                out.push(format!("{} s {site} {:?}", w.end_ms, r.features));
            }
        }
        for r in &w.network {
            let region = e.region_name(r.region);
            if region != "flood" {
                out.push(format!("{} n {region} {:?}", w.end_ms, r.features));
            }
        }
    }
}

#[test]
fn forgetting_one_off_terminals_changes_no_one_elses_features() {
    let sim = simulated();
    let start = sim.first().expect("reports").0;
    // One-off terminals: 100 before the fleet's first report (so that the
    // fleet's sites and cohorts are numbered after theirs, and move when
    // they are forgotten), then 150 every 20 minutes. A burst's windows
    // close within 15 minutes, so with a cap of 300 there is always room
    // for the fleet: the longest silent are the earlier bursts'.
    let mut lines: Vec<(i64, Vec<u8>)> =
        (0..100).map(|n| (start - 10 * MIN, one_off(n, "flood", start - 10 * MIN))).collect();
    let end = sim.last().expect("reports").0;
    let mut n = 100;
    let mut ts = start;
    while ts < end {
        for _ in 0..150 {
            lines.push((ts, one_off(n, "flood", ts)));
            n += 1;
        }
        ts += 20 * MIN;
    }
    let flood = n;
    lines.extend(sim);
    lines.sort_by_key(|(ts, _)| *ts);

    let run = |limits: Limits| {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.set_limits(limits);
        let mut out = Vec::new();
        let mut most = 0;
        for chunk in lines.chunks(500) {
            let chunk: Vec<Vec<u8>> = chunk.iter().map(|(_, l)| l.clone()).collect();
            let rows = e.process_batch(&batch(&chunk));
            simulated_rows(&e, &rows, &mut out);
            most = most.max(e.tracked_terminals());
        }
        let rows = e.finish();
        simulated_rows(&e, &rows, &mut out);
        (out, most, e)
    };
    let (unbounded, most_unbounded, e) = run(Limits::default());
    assert_eq!(most_unbounded as u64, flood + 40, "the default limits are far above this fleet");
    assert_eq!(e.limit_counts().evicted_capacity, 0);

    let cap = 300;
    let (bounded, most, e) = run(Limits { max_terminals: cap, ..Limits::default() });
    assert!(most <= cap, "held {most} terminals with a cap of {cap}");
    let held = e.held();
    assert!(held.sites <= cap && held.cohorts <= cap, "names outlive their terminals: {held:?}");
    let c = e.limit_counts();
    assert!(c.evicted_capacity > 1000, "{c:?}");
    // Every one-off terminal is held, was forgotten, or had its one report refused.
    assert_eq!(c.evicted_capacity + c.refused_terminals + (held.terminals as u64 - 40), flood, "{c:?} {held:?}");
    assert!(!bounded.is_empty());
    assert_eq!(bounded.len(), unbounded.len());
    for (a, b) in unbounded.iter().zip(&bounded) {
        assert_eq!(a, b, "a row of the fleet changed when one-off terminals were forgotten");
    }
}

#[test]
fn new_terminals_are_refused_and_counted_while_every_held_one_has_a_window_open() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { max_terminals: 100, ..Limits::default() });
    let t0 = 1_795_514_400_000;
    // 150 terminals in one window: none of the first 100 can be forgotten yet.
    let first: Vec<Vec<u8>> = (0..150).map(|n| one_off(n, "r1", t0 + MIN)).collect();
    e.process_batch(&batch(&first));
    assert_eq!(e.tracked_terminals(), 100);
    assert_eq!(e.limit_counts().refused_terminals, 50);
    assert_eq!(e.limit_counts().evicted_capacity, 0);
    // Once their window has closed, the oldest make room for new ones.
    let later: Vec<Vec<u8>> = (150..170).map(|n| one_off(n, "r1", t0 + 30 * MIN)).collect();
    e.process_batch(&batch(&later));
    e.process_batch(&batch(&[one_off(170, "r1", t0 + 31 * MIN)]));
    let c = e.limit_counts();
    assert!(c.evicted_capacity >= 6, "{c:?}");
    assert!(e.tracked_terminals() <= 100);
    assert!(e.terminal_index("X-170").is_some(), "a new terminal found room");
}

#[test]
fn regions_past_the_cap_are_refused_and_counted() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { max_regions: 3, ..Limits::default() });
    let t0 = 1_795_514_400_000;
    let lines: Vec<Vec<u8>> = (0..6).map(|r| steady(&format!("T-{r}"), &format!("R-{r}"), t0)).collect();
    e.process_batch(&batch(&lines));
    // And again: a refused terminal is refused each time, and counted each time.
    let lines: Vec<Vec<u8>> = (0..6).map(|r| steady(&format!("T-{r}"), &format!("R-{r}"), t0 + 5 * MIN)).collect();
    e.process_batch(&batch(&lines));
    assert_eq!(e.held().regions, 3);
    assert_eq!(e.tracked_terminals(), 3);
    assert_eq!(e.limit_counts().refused_regions, 6);
    // A new terminal in a region already held is welcome.
    e.process_batch(&batch(&[steady("T-new", "R-0", t0 + 6 * MIN)]));
    assert!(e.terminal_index("T-new").is_some());
}

#[test]
fn a_terminal_silent_past_the_idle_time_is_forgotten_and_comes_back_as_new() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { idle_terminal_ms: 24 * 60 * MIN, ..Limits::default() });
    let t0 = 1_795_514_400_000;
    // T-quiet reports for an hour and stops; T-busy goes on for two days.
    let mut ts = t0;
    while ts < t0 + 2 * 24 * 60 * MIN {
        let mut lines = vec![steady("T-busy", "r1", ts)];
        if ts < t0 + 60 * MIN {
            lines.push(steady("T-quiet", "r1", ts));
        }
        e.process_batch(&batch(&lines));
        ts += 5 * MIN;
    }
    assert!(e.terminal_index("T-quiet").is_none(), "forgotten after a day of silence");
    assert!(e.terminal_index("T-busy").is_some());
    assert_eq!(e.limit_counts().evicted_idle, 1);
    assert_eq!(e.held().sites, 1, "its site went with it");
    // It comes back: held again, learning from scratch like a new terminal.
    e.process_batch(&batch(&[steady("T-quiet", "r1", ts)]));
    assert!(e.terminal_index("T-quiet").is_some());
    assert_eq!(e.held().sites, 2);
}

/// A cold store as the scorer keeps one: what the engine lets go as idle,
/// given back when the terminal reports again.
#[derive(Default)]
struct Cold {
    kept: HashMap<String, Departed>,
    came_back: usize,
}

impl Cold {
    fn process(&mut self, e: &mut FeatureEngine, b: &RecordBatch) -> Vec<WindowRows> {
        let closed = e.process_from_cold(b, &[(DEFAULT_SOURCE, b.num_rows())], |unknown| {
            let back: Vec<Departed> = unknown.iter().filter_map(|id| self.kept.remove(id)).collect();
            self.came_back += back.len();
            back
        });
        for d in e.take_departed() {
            self.kept.insert(d.id().to_string(), d);
        }
        closed
    }
}

/// The simulated fleet with every tenth terminal (by id) silent from hour 8
/// to hour 12, through an engine whose terminals are forgotten after
/// `idle_ms` of silence, with or without a cold store (kept here as the
/// scorer keeps it: what the engine let go, given back when it reports
/// again). Returns every row by name, and how many terminals came back.
fn with_a_quiet_spell(idle_ms: i64, cold: bool) -> (Vec<String>, usize) {
    let sim = simulated();
    let start = sim.first().expect("reports").0;
    let quiet = |line: &[u8], ts: i64| {
        let record = decode(line, i64::MAX / 2).expect("valid");
        let every_tenth = record.terminal_id.bytes().map(usize::from).sum::<usize>() % 10 == 3;
        every_tenth && ts >= start + 8 * 60 * MIN && ts < start + 12 * 60 * MIN
    };
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { idle_terminal_ms: idle_ms, ..Limits::default() });
    e.keep_departed(cold);
    let (mut store, mut rows) = (Cold::default(), Vec::new());
    let lines: Vec<Vec<u8>> = sim.into_iter().filter(|(ts, l)| !quiet(l, *ts)).map(|(_, l)| l).collect();
    for chunk in lines.chunks(40) {
        let b = batch(chunk);
        let closed = store.process(&mut e, &b);
        simulated_rows(&e, &closed, &mut rows);
        assert_eq!(e.check(), Ok(()), "consistent after forgetting and taking back");
    }
    let closed = e.finish();
    simulated_rows(&e, &closed, &mut rows);
    (rows, store.came_back)
}

#[test]
fn a_terminal_forgotten_as_idle_comes_back_from_a_cold_store_as_it_was() {
    let (kept, _) = with_a_quiet_spell(Limits::default().idle_terminal_ms, false);
    let (cold, came_back) = with_a_quiet_spell(2 * 60 * MIN, true);
    assert!(came_back >= 2, "terminals were forgotten and came back: {came_back}");
    assert_eq!(cold.len(), kept.len());
    for (a, b) in cold.iter().zip(&kept) {
        assert_eq!(a, b, "a row differs from the run that never forgot");
    }
    // Without the store they come back as new: their rows are not the same.
    let (forgot, _) = with_a_quiet_spell(2 * 60 * MIN, false);
    assert_ne!(forgot, kept);
}

#[test]
fn a_terminal_alone_in_its_cohort_gets_its_cohorts_baseline_back_too() {
    // T-alone is the only terminal of its model: when it is forgotten its
    // cohort is too. It reports for an hour (young: judged by its cohort),
    // is silent for four, and comes back still young.
    let t0 = 1_795_514_400_000;
    let alone = |ts: i64, k: i64| {
        let v = 12.0 + 0.01 * (k % 3) as f64;
        format!(
            r#"{{"terminal_id":"T-alone","ts":{ts},"region":"r1","model":"M-alone","firmware":"1","supply_v_mean":{v},"supply_v_min":{},"supply_v_max":{},"supply_v_std":0.02}}"#,
            v - 0.1,
            v + 0.1
        )
        .into_bytes()
    };
    let run = |idle_ms: i64, cold: bool| {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.set_limits(Limits { idle_terminal_ms: idle_ms, ..Limits::default() });
        e.keep_departed(cold);
        let mut store = Cold::default();
        let mut rows = Vec::new();
        for k in 0..7 * 12 {
            let ts = t0 + k * 5 * MIN + 30_000;
            let mut lines = vec![steady("T-busy", "r1", ts)];
            if !(12..60).contains(&k) {
                lines.push(alone(ts, k));
            }
            let b = batch(&lines);
            let closed = store.process(&mut e, &b);
            simulated_rows(&e, &closed, &mut rows);
        }
        (rows, e.limit_counts().evicted_idle)
    };
    let (kept, _) = run(Limits::default().idle_terminal_ms, false);
    let (cold, evicted) = run(2 * 60 * MIN, true);
    assert_eq!(evicted, 1);
    assert_eq!(cold, kept);
    let (forgot, _) = run(2 * 60 * MIN, false);
    assert_ne!(forgot, kept, "back as new, its cohort new too, it is judged otherwise");
}

fn varying(t: &str, ts: i64, k: i64) -> Vec<u8> {
    let v = 12.0 + 0.02 * (k % 5) as f64;
    format!(
        r#"{{"terminal_id":"{t}","ts":{ts},"region":"r1","site_id":"S-{t}","model":"P1","firmware":"1","supply_v_mean":{v},"supply_v_min":{},"supply_v_max":{},"supply_v_std":0.03,"net_rtt_ms":40,"net_loss_pct":0.1}}"#,
        v - 0.1,
        v + 0.1
    )
    .into_bytes()
}

/// T-busy and T-on report every 5 minutes for six hours, one step a batch;
/// T-x for the first hour, then from step `back_at`. Terminals are
/// forgotten after `idle_ms`; with `cold`, kept and given back.
fn x_returns(idle_ms: i64, back_at: i64, cold: bool) -> (Vec<String>, u64) {
    let t0 = 1_795_514_400_000;
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { idle_terminal_ms: idle_ms, ..Limits::default() });
    e.keep_departed(cold);
    let mut store = Cold::default();
    let mut rows = Vec::new();
    for k in 0..72 {
        let ts = t0 + k * 5 * MIN + 30_000;
        let mut lines = vec![varying("T-busy", ts, k), varying("T-on", ts, k + 2)];
        if k < 12 || k >= back_at {
            lines.push(varying("T-x", ts, k + 1));
        }
        let b = batch(&lines);
        let closed = store.process(&mut e, &b);
        simulated_rows(&e, &closed, &mut rows);
    }
    let closed = e.finish();
    simulated_rows(&e, &closed, &mut rows);
    (rows, e.limit_counts().evicted_idle)
}

#[test]
fn a_terminal_forgotten_at_the_sweep_of_the_batch_it_comes_back_in_keeps_its_state() {
    // Idle terminals are looked for once an hour of event time; whichever
    // batch T-x comes back in, it is the terminal that never left.
    let mut forgotten = 0;
    for back_at in 24..60 {
        let (kept, _) = x_returns(Limits::default().idle_terminal_ms, back_at, false);
        let (cold, evicted) = x_returns(60 * MIN, back_at, true);
        forgotten += evicted;
        assert_eq!(cold, kept, "back at step {back_at}");
    }
    assert!(forgotten > 0, "T-x was forgotten in some of the runs");
}

#[test]
fn a_state_back_from_the_cold_store_does_not_take_its_own_reports_again() {
    // The store may hold a state newer than the snapshot a process started
    // from (the last one was killed after writing to the store): the
    // reports it already holds are skipped, as after a restore.
    let t0 = 1_795_514_400_000;
    let history: Vec<Vec<Vec<u8>>> = (0..48)
        .map(|k| {
            let ts = t0 + k * 5 * MIN + 30_000;
            let mut lines = vec![varying("T-busy", ts, k)];
            if k < 12 {
                lines.push(varying("T-x", ts, k));
            }
            lines
        })
        .collect();
    let mut first = FeatureEngine::new(FeatureConfig::default());
    first.set_limits(Limits { idle_terminal_ms: 60 * MIN, ..Limits::default() });
    first.keep_departed(true);
    let mut store: Vec<Departed> = Vec::new();
    for lines in &history {
        first.process_batch(&batch(lines));
        store.extend(first.take_departed());
    }
    assert_eq!(store.len(), 1, "T-x went to the store");
    // The same history again, from nothing, with that store.
    let mut again = FeatureEngine::new(FeatureConfig::default());
    again.keep_departed(true);
    for lines in &history[..12] {
        let b = batch(lines);
        again.process_from_cold(&b, &[(DEFAULT_SOURCE, b.num_rows())], |_| std::mem::take(&mut store));
    }
    assert_eq!(again.counters().replayed, 12, "T-x's twelve reports were in its state already");
}

#[test]
fn terminals_come_back_from_the_cold_store_only_within_the_limits() {
    let t0 = 1_795_514_400_000;
    let mut first = FeatureEngine::new(FeatureConfig::default());
    first.set_limits(Limits { idle_terminal_ms: 60 * MIN, ..Limits::default() });
    first.keep_departed(true);
    let mut gone = Vec::new();
    for k in 0..48 {
        let ts = t0 + k * 5 * MIN + 30_000;
        let mut lines = vec![varying("T-busy", ts, k)];
        if k < 12 {
            lines.push(varying("T-x", ts, k));
        }
        first.process_batch(&batch(&lines));
        gone.extend(first.take_departed());
    }
    assert_eq!(gone.len(), 1);
    // An engine holding two reporting terminals, its limit.
    let mut full = FeatureEngine::new(FeatureConfig::default());
    full.set_limits(Limits { max_terminals: 2, ..Limits::default() });
    full.keep_departed(true);
    full.process_batch(&batch(&[varying("T-a", t0, 0), varying("T-b", t0, 1)]));
    assert_eq!(full.welcome_back(gone), 0, "no room: not taken back");
    assert_eq!(full.held().terminals, 2);
    assert_eq!(full.check(), Ok(()));
}
