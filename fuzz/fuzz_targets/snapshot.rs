//! The state snapshot reader on any bytes. It never panics; a snapshot it
//! accepts, written again, reads back the same (a field written in a form
//! that cannot be read back was once found only by the restart test); and
//! an engine restored from it goes on taking reports without panicking.
//!
//! The same for a cold store's entry (an idle terminal's state), which an
//! engine then takes back, and for the regional stage's snapshot, whose
//! merger, once it passes its check, goes on taking partials.
//!
//! The first byte picks how the rest is used: as a whole file (to fuzz the
//! header checks), or as the payload of a shared, partition, cold or
//! regional snapshot with a valid header (to reach the decoder past the
//! checksum).

#![no_main]

use libfuzzer_sys::fuzz_target;
use termwatch_alerts::snapshot::{ColdEntry, PartitionSnapshot, RegionalSnapshot, Snapshot, SnapshotKind, framed};
use termwatch_features::partial::{DetectorScores, SitePartial, WindowPartials, WindowScores};
use termwatch_features::{FeatureConfig, FeatureEngine};
use termwatch_telemetry::alerts::{AlertKind, Scope};
use termwatch_telemetry::{BatchBuilder, decode};

/// 2026-11-24T10:00:00Z, near the reports below.
const NOW: i64 = 1_795_514_400_000;

const REPORTS: [&[u8]; 3] = [
    br#"{"terminal_id":"T-1","ts":1795514100000,"region":"r1","site_id":"S-1","supply_v_mean":11.9,"app_crashes":1}"#,
    br#"{"terminal_id":"T-2","ts":1795514200000,"region":"r1","model":"M1","firmware":"1.0.0","txn_count":4}"#,
    br#"{"terminal_id":"T-9","ts":1795514390000,"region":"r2","net_rtt_ms":80.0}"#,
];

/// Reports for an engine restored from the input: new terminals and, when
/// the snapshot holds any, the ones it knows.
fn feed(engine: &mut FeatureEngine) {
    let mut builder = BatchBuilder::with_capacity(REPORTS.len());
    for line in REPORTS {
        let record = decode(line, NOW).expect("a valid report");
        builder.append(&record).expect("an accepted report fits the Arrow schema");
    }
    let batch = builder.finish().expect("a batch");
    engine.mark_restored();
    engine.process_batch(&batch);
}

/// A form to compare in: maps in key order (two decodings of the same
/// bytes iterate their hash maps in different orders), NaN as null (which
/// `==` would never match).
fn canonical<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let bytes = match how % 5 {
        0 => rest.to_vec(),
        1 => framed(SnapshotKind::Shared, rest),
        2 => framed(SnapshotKind::Partition, rest),
        3 => framed(SnapshotKind::Cold, rest),
        _ => framed(SnapshotKind::Regional, rest),
    };
    if let Ok(snap) = Snapshot::from_bytes(&bytes, "fuzz") {
        let again = snap.to_bytes().expect("a snapshot that was read can be written");
        let back = Snapshot::from_bytes(&again, "fuzz").expect("a snapshot written reads back");
        assert_eq!(canonical(&snap), canonical(&back), "a snapshot changed on its way back");
        // A stage-1 scorer's state is checked before it is used.
        if let Some(stage_one) = &snap.stage_one {
            let _ = stage_one.check(6, 8);
        }
        // Scoring restores a snapshot only into a model of the same feature
        // configuration, and only an engine that passes its check (both
        // before the engine is used: `Scorer::restore_snapshot`).
        if snap.engine.config() == &FeatureConfig::default() && snap.engine.check().is_ok() {
            let mut engine = snap.engine;
            feed(&mut engine);
        }
    }
    if let Ok(part) = PartitionSnapshot::from_bytes(&bytes, "fuzz") {
        let again = part.to_bytes().expect("a snapshot that was read can be written");
        let back = PartitionSnapshot::from_bytes(&again, "fuzz").expect("a snapshot written reads back");
        assert_eq!(canonical(&part), canonical(&back), "a partition snapshot changed on its way back");
        if part.features == FeatureConfig::default() {
            let mut engine = FeatureEngine::new(part.features.clone());
            engine.import_terminals(part.terminals);
            feed(&mut engine);
        }
    }
    if let Ok(regional) = RegionalSnapshot::from_bytes(&bytes, "fuzz") {
        let again = regional.to_bytes().expect("a snapshot that was read can be written");
        let back = RegionalSnapshot::from_bytes(&again, "fuzz").expect("a snapshot written reads back");
        assert_eq!(canonical(&regional), canonical(&back), "a regional snapshot changed on its way back");
        // The regional stage restores a merger only once it passes its check.
        let mut merger = regional.merger;
        if merger.check().is_ok() {
            let sources: Vec<Box<str>> = merger.sources().map(Box::from).collect();
            let mut site = SitePartial::default();
            site.add_terminal(&[1.0, 2.0, 0.5, 3.0, 0.0, 0.1], true);
            let scores = |end_ms| WindowScores {
                end_ms,
                detectors: vec![DetectorScores {
                    kind: AlertKind::VoltageInstability,
                    scope: Scope::Terminal,
                    bins: vec![(0, 1), (639, u32::MAX)],
                    peaks: vec![(7, 2), (639, u32::MAX)],
                }],
            };
            for (i, source) in sources.iter().enumerate() {
                let end_ms = NOW + 300_000 * i as i64;
                let window = WindowPartials { end_ms, sites: vec![("S-1".into(), site.clone())], ..Default::default() };
                merger.offer_scores(source, scores(end_ms - 300_000));
                merger.offer(source, window);
                merger.progress(source, end_ms);
                merger.offer_scores(source, scores(end_ms));
            }
            for source in &sources {
                merger.end_of_source(source);
            }
            merger.offer("unknown", WindowPartials::default());
            merger.take_scores();
            assert!(merger.check().is_ok(), "a merger that passed its check stays one that does");
        }
    }
    if let Ok(cold) = ColdEntry::from_bytes(&bytes, "fuzz") {
        let again = cold.to_bytes().expect("an entry that was read can be written");
        let back = ColdEntry::from_bytes(&again, "fuzz").expect("an entry written reads back");
        assert_eq!(canonical(&cold), canonical(&back), "a cold entry changed on its way back");
        if cold.features == FeatureConfig::default() {
            let mut engine = FeatureEngine::new(cold.features.clone());
            engine.welcome_back(vec![cold.terminal]);
            feed(&mut engine);
        }
    }
});
