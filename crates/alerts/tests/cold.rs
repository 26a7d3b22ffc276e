//! Scoring with a cold store: terminals forgotten after a quiet spell come
//! back with what they had learnt, so the alerts are those of a scorer that
//! never forgot them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use termwatch_alerts::cold::ColdStore;
use termwatch_alerts::scoring::Scorer;
use termwatch_features::Limits;
use termwatch_models::artifact::ModelSet;
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::AlertEvent;
use termwatch_telemetry::{BatchBuilder, decode};

const HOUR: i64 = 3_600_000;

/// Two days of 40 terminals with faults; every fifth terminal (by id) is
/// silent from hour 10 to hour 20.
fn history() -> Vec<Vec<u8>> {
    let mut cfg = SimConfig { terminals: 40, regions: 2, days: 2.0, seed: 31, interval_s: 300, ..SimConfig::default() };
    cfg.faults.scale_faults(10.0);
    let mut sim = Simulator::new(cfg).expect("simulator");
    let (mut out, mut buf, mut start) = (Vec::new(), Vec::new(), None);
    while sim.next_record(&mut buf).is_some() {
        let Ok(record) = decode(&buf, i64::MAX / 2) else { continue };
        let start = *start.get_or_insert(record.ts_ms);
        let fifth = record.terminal_id.bytes().map(usize::from).sum::<usize>() % 5 == 1;
        if !(fifth && record.ts_ms >= start + 10 * HOUR && record.ts_ms < start + 20 * HOUR) {
            out.push(buf.clone());
        }
    }
    out
}

fn score(mut scorer: Scorer, lines: &[Vec<u8>]) -> (Vec<AlertEvent>, Scorer) {
    let mut events = Vec::new();
    for chunk in lines.chunks(200) {
        let mut b = BatchBuilder::with_capacity(chunk.len());
        for l in chunk {
            if let Ok(r) = decode(l, i64::MAX / 2) {
                b.append(&r).expect("append");
            }
        }
        events.extend(scorer.process_batch(&b.finish().expect("batch")));
    }
    events.extend(scorer.finish());
    (events, scorer)
}

#[test]
fn terminals_back_from_the_cold_store_raise_the_alerts_of_a_scorer_that_never_forgot_them() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let set = ModelSet::load(&models).expect("the shipped models");
    let lines = history();
    let (kept, _) = score(Scorer::new(set.clone()).expect("scorer"), &lines);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cold = Scorer::new(set.clone()).expect("scorer");
    cold.set_limits(Limits { idle_terminal_ms: 2 * HOUR, ..Limits::default() });
    cold.set_cold_store(ColdStore::open(dir.path(), set.features.clone(), 1000).expect("cold store"));
    let (events, cold) = score(cold, &lines);
    let (stats, held) = cold.cold_store().expect("a cold store");
    assert!(stats.stored >= 4 && stats.restored >= 4, "{stats:?}");
    assert_eq!(stats.failed, 0);
    assert!(held >= stats.restored as usize, "an entry stays until written over: {held}");
    assert!(!kept.is_empty(), "the faults raise alerts");
    assert_eq!(events, kept);
    // Forgotten without a store, they come back as new: other alerts.
    let mut forgetful = Scorer::new(set).expect("scorer");
    forgetful.set_limits(Limits { idle_terminal_ms: 2 * HOUR, ..Limits::default() });
    let (forgot, _) = score(forgetful, &lines);
    assert_ne!(forgot, kept);
}
