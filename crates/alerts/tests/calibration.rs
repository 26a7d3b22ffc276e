//! Fleet calibration through a restart: a scorer restored from a snapshot
//! taken halfway has the thresholds, and raises the alerts, of one that was
//! never stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use termwatch_alerts::scoring::Scorer;
use termwatch_models::artifact::ModelSet;
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::AlertEvent;
use termwatch_telemetry::{BatchBuilder, decode};

/// Two days of 120 terminals with five blips per terminal-day: a fleet
/// noisier than the training fleets, so the thresholds move.
fn history() -> Vec<Vec<u8>> {
    let mut cfg =
        SimConfig { terminals: 120, regions: 3, days: 2.0, seed: 41, interval_s: 300, ..SimConfig::default() };
    cfg.faults.blips_per_terminal_day = 5.0;
    cfg.faults.blip_max_reports = 3;
    let mut sim = Simulator::new(cfg).expect("simulator");
    let (mut out, mut buf) = (Vec::new(), Vec::new());
    while sim.next_record(&mut buf).is_some() {
        out.push(buf.clone());
    }
    out
}

fn score(scorer: &mut Scorer, lines: &[Vec<u8>]) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    for chunk in lines.chunks(500) {
        let mut b = BatchBuilder::with_capacity(chunk.len());
        for l in chunk {
            if let Ok(r) = decode(l, i64::MAX / 2) {
                b.append(&r).expect("append");
            }
        }
        events.extend(scorer.process_batch(&b.finish().expect("batch")));
    }
    events
}

fn thresholds(s: &Scorer) -> Vec<(String, f64, Option<f64>)> {
    s.thresholds().map(|t| (format!("{} {}", t.kind, t.scope), t.threshold, t.shift)).collect()
}

#[test]
fn a_restored_scorer_has_the_thresholds_and_alerts_of_one_never_stopped() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let set = ModelSet::load(&models).expect("the shipped models");
    let lines = history();
    let half = lines.len() / 2;

    let mut whole = Scorer::new(set.clone()).expect("scorer");
    let mut expected = score(&mut whole, &lines[..half]);
    let at_half = thresholds(&whole);
    expected.extend(score(&mut whole, &lines[half..]));
    expected.extend(whole.finish());

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.snap");
    let mut first = Scorer::new(set.clone()).expect("scorer");
    let mut got = score(&mut first, &lines[..half]);
    first.save_snapshot(&path, "half").expect("save");
    let mut second = Scorer::new(set).expect("scorer");
    second.restore_snapshot(&path).expect("restore");
    assert_eq!(thresholds(&second), at_half, "the thresholds come back with the snapshot");
    got.extend(score(&mut second, &lines[half..]));
    got.extend(second.finish());

    let trained: Vec<f64> = whole.thresholds().map(|t| t.trained).collect();
    let moved = thresholds(&whole).iter().zip(&trained).filter(|((_, now, _), trained)| now > *trained).count();
    eprintln!("thresholds at the end: {:?}", thresholds(&whole));
    assert!(moved > 0, "the fleet is noisy enough to move a threshold: {:?}", thresholds(&whole));
    assert_eq!(thresholds(&second), thresholds(&whole));
    assert_eq!(got, expected, "the same alert events");
}
