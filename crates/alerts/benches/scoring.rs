//! Scoring cost per record, amortised, and feature state per terminal:
//! simulated telemetry (built outside the timed loop) through the feature
//! engine, the four detectors and alert state; and the feature engine split
//! over three stage-1 engines and the merging stage.
//!
//! cargo bench -p termwatch-alerts --bench scoring

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use arrow::record_batch::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use termwatch_alerts::scoring::Scorer;
use termwatch_features::stages::{LocalStages, split_by_terminal};
use termwatch_features::{FeatureConfig, FeatureEngine};
use termwatch_models::artifact::ModelSet;
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::{BatchBuilder, decode};

fn make_batches(terminals: u32, days: f64) -> (Vec<RecordBatch>, u64) {
    let mut sim = Simulator::new(SimConfig { terminals, days, seed: 9, ..SimConfig::default() }).expect("sim");
    let mut buf = Vec::new();
    let mut b = BatchBuilder::with_capacity(8192);
    let mut out = Vec::new();
    let mut n = 0;
    while sim.next_record(&mut buf).is_some() {
        if let Ok(r) = decode(&buf, i64::MAX / 2) {
            b.append(&r).expect("append");
            n += 1;
            if b.len() == 8192 {
                out.push(b.finish().expect("batch"));
            }
        }
    }
    out.push(b.finish().expect("batch"));
    (out, n)
}

fn scoring(c: &mut Criterion) {
    let models = ModelSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json"))
        .expect("models/default/model.json (scripts/train-default)");
    let (batches, records) = make_batches(2_000, 0.5);
    let mut g = c.benchmark_group("score");
    g.sample_size(10);
    g.throughput(Throughput::Elements(records));
    g.bench_with_input(BenchmarkId::new("features_only", records), &batches, |b, batches| {
        b.iter(|| {
            let mut e = FeatureEngine::new(FeatureConfig::default());
            let mut n = 0;
            for batch in batches {
                n += e.process_batch(batch).len();
            }
            black_box(n + e.finish().len())
        })
    });
    // With fleet calibration (the shipped model), and without it (no
    // detector has a fleet reference, so no histogram is kept): what
    // following the fleet costs.
    let mut trained_only = models.clone();
    for d in &mut trained_only.detectors {
        d.fleet = None;
    }
    for (name, set) in
        [("features_detectors_alerts", &models), ("features_detectors_alerts_trained_thresholds", &trained_only)]
    {
        g.bench_with_input(BenchmarkId::new(name, records), &batches, |b, batches| {
            b.iter(|| {
                let mut s = Scorer::new(set.clone()).expect("scorer");
                let mut n = 0;
                for batch in batches {
                    n += s.process_batch(batch).len();
                }
                black_box(n + s.finish().len())
            })
        });
    }
    // The split path of docs/two-stages.md in one process: three stage-1
    // engines (the batches split by terminal beforehand, the broker's
    // work) and the merging stage, partials through their wire form.
    let split: Vec<Vec<(usize, RecordBatch)>> =
        batches.iter().map(|b| split_by_terminal(b, 3).expect("split")).collect();
    g.bench_with_input(BenchmarkId::new("features_two_stages", records), &split, |b, split| {
        b.iter(|| {
            let mut stages =
                LocalStages::new(&models.features, &["telemetry-0", "telemetry-1", "telemetry-2"], 3_600_000, 64);
            let mut n = 0;
            for parts in split {
                for (p, batch) in parts {
                    n += stages.process(*p, batch).expect("stages").merged.len();
                }
            }
            black_box(n + stages.finish().expect("stages").merged.len())
        })
    });
    g.finish();

    for terminals in [10_000u32, 100_000] {
        let (batches, _) = make_batches(terminals, 0.02);
        let mut e = FeatureEngine::new(FeatureConfig::default());
        for batch in &batches {
            e.process_batch(batch);
        }
        eprintln!(
            "feature state: {terminals} terminals tracked, {:.0} bytes per terminal",
            e.state_bytes_per_terminal()
        );
    }
}

criterion_group!(benches, scoring);
criterion_main!(benches);
