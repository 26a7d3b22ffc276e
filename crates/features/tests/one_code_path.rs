//! The same history, batched as a live stream would batch it and as a
//! training run would, must give the same features, row for row.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows, names};
use termwatch_pipeline::{BatchConfig, BatchSink, MemoryDeadLetters, Pipeline, Position, SinkError};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::{AlertKind, Scope};

/// Feeds every batch to a feature engine and keeps the rows.
#[derive(Clone)]
struct Features(Arc<Mutex<(FeatureEngine, Vec<WindowRows>)>>);

impl Features {
    fn new() -> Self {
        Features(Arc::new(Mutex::new((FeatureEngine::new(FeatureConfig::default()), Vec::new()))))
    }
}

impl BatchSink for Features {
    fn name(&self) -> &str {
        "features"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let mut g = self.0.lock().unwrap();
        let rows = g.0.process_batch(batch);
        g.1.extend(rows);
        Ok(())
    }
}

fn history(cfg: SimConfig) -> (Vec<Vec<u8>>, Simulator) {
    let mut sim = Simulator::new(cfg).expect("simulator");
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    while sim.next_record(&mut buf).is_some() {
        lines.push(buf.clone());
    }
    (lines, sim)
}

fn run(lines: &[Vec<u8>], max_rows: usize) -> (Vec<WindowRows>, FeatureEngine) {
    let features = Features::new();
    let mut p = Pipeline::new(
        BatchConfig { max_rows, max_age: Duration::from_secs(3600) },
        vec![Box::new(features.clone())],
        Box::new(MemoryDeadLetters::default()),
    );
    for (i, l) in lines.iter().enumerate() {
        p.push(l, Position::File { path: "sim", line: i as u64 + 1, offset: 0 }).expect("push");
    }
    p.finish().expect("finish");
    let Ok(shared) = Arc::try_unwrap(features.0) else { panic!("the pipeline still holds the sink") };
    let (mut engine, mut rows) = shared.into_inner().unwrap();
    rows.extend(engine.finish());
    (rows, engine)
}

#[test]
fn streaming_and_training_batches_give_identical_features() {
    let (lines, _) = history(SimConfig { terminals: 60, regions: 3, days: 0.5, seed: 11, ..SimConfig::default() });
    let (stream, _) = run(&lines, 7);
    let (training, engine) = run(&lines, 100_000);
    assert!(stream.len() > 100, "windows closed: {}", stream.len());
    assert_eq!(stream, training);
    let c = engine.counters();
    assert!(c.reports > 10_000 && c.windows_closed > 100, "{c:?}");
}

#[test]
fn release_health_is_the_same_in_small_and_large_batches_and_a_regression_shows() {
    let mut cfg = SimConfig { terminals: 80, regions: 2, days: 3.0, seed: 23, interval_s: 300, ..SimConfig::default() };
    cfg.faults.scale_faults(0.0);
    cfg.faults.staged_rollouts_per_week = 7.0 / 3.0;
    cfg.faults.regression_share = 1.0;
    let (lines, sim) = history(cfg);
    let (stream, _) = run(&lines, 7);
    let (training, _) = run(&lines, 100_000);
    assert_eq!(stream, training);
    let regression = sim.labels().iter().find(|l| l.kind == AlertKind::FirmwareRegression).expect("a regression");
    let rows: Vec<_> = training
        .iter()
        .flat_map(|w| w.firmware.iter().map(move |r| (w.end_ms, r)))
        .filter(|(_, r)| *r.entity == regression.entity)
        .collect();
    assert!(!rows.is_empty(), "no release-health row for {}", regression.entity);
    // By the end of its canary day, some evidence stands out against the
    // terminals' own rates (which signal depends on the regression's shape).
    let strongest = rows
        .iter()
        .filter(|(t, _)| *t <= regression.end)
        .map(|(_, r)| r.features[0].max(r.features[1]).max(r.features[2]).max(r.features[4]).max(r.features[3]))
        .fold(0.0f64, f64::max);
    assert!(strongest > 3.0, "{}: strongest evidence {strongest}", regression.entity);
}

#[test]
fn injected_faults_move_their_features() {
    let mut cfg = SimConfig { terminals: 250, regions: 3, days: 2.0, seed: 5, ..SimConfig::default() };
    cfg.faults.scale_faults(12.0);
    let (lines, sim) = history(cfg);
    let (rows, engine) = run(&lines, 8192);
    let labels = sim.labels().to_vec();

    // Network: the share of degraded sites in a region, inside versus outside its incidents.
    let net: Vec<_> = labels.iter().filter(|l| l.kind == AlertKind::NetworkDegradation).collect();
    assert!(!net.is_empty(), "the simulation injected network incidents");
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for w in &rows {
        for r in &w.network {
            let region = engine.region_name(r.region);
            let hit = net.iter().any(|l| l.entity == region && w.end_ms > l.start + 600_000 && w.end_ms <= l.end);
            if hit { inside.push(r.features[0]) } else { outside.push(r.features[0]) }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    assert!(mean(&inside) > 3.0 * mean(&outside) + 0.05, "inside {} outside {}", mean(&inside), mean(&outside));

    // Voltage at site scope: the site's (second-worst terminal's) v_std_z
    // inside versus outside (standard deviations of each terminal's own noise).
    let mains: Vec<_> =
        labels.iter().filter(|l| l.kind == AlertKind::VoltageInstability && l.scope == Scope::Site).collect();
    assert!(!mains.is_empty(), "the simulation injected site mains problems");
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for w in &rows {
        for r in &w.site_voltage {
            let site = engine.site_id(r.site);
            let hit = mains.iter().any(|l| l.entity == site && w.end_ms > l.start + 600_000 && w.end_ms <= l.end);
            if hit { inside.push(r.features[0]) } else { outside.push(r.features[0]) }
        }
    }
    assert!(mean(&inside) > mean(&outside) + 3.0, "inside {} outside {}", mean(&inside), mean(&outside));
    let mains_inside = mean(&inside);

    // One terminal's failing supply, at a site with other terminals
    // reporting and no mains problem: the terminal's own feature rises, the
    // site's (its second-worst terminal's) does not.
    let psu: Vec<_> =
        labels.iter().filter(|l| l.kind == AlertKind::VoltageInstability && l.scope == Scope::Terminal).collect();
    let (mut terminal, mut site) = (Vec::new(), Vec::new());
    for w in &rows {
        for r in &w.terminal_voltage {
            let id = engine.terminal_id(r.terminal);
            if !psu.iter().any(|l| l.entity == id && w.end_ms > l.start + 600_000 && w.end_ms <= l.end) {
                continue;
            }
            let s = engine.terminal_site(r.terminal);
            let site_id = engine.site_id(s);
            if mains.iter().any(|l| l.entity == site_id && w.end_ms > l.start && w.end_ms <= l.end + 3_600_000) {
                continue;
            }
            if let Some(row) =
                w.site_voltage.iter().find(|x| x.site == s && x.features[names::SITE_TERMINALS_REPORTING] >= 2.0)
            {
                terminal.push(r.features[0]);
                site.push(row.features[0]);
            }
        }
    }
    assert!(terminal.len() > 20, "windows of supply faults at multi-terminal sites: {}", terminal.len());
    eprintln!(
        "v_std_z: supply fault {} its site {} healthy sites {} mains {}",
        mean(&terminal),
        mean(&site),
        mean(&outside),
        mains_inside
    );
    assert!(mean(&terminal) > mean(&outside) + 3.0, "terminal {} outside {}", mean(&terminal), mean(&outside));
    // One supply moves its site's feature by less than one of its noise's
    // standard deviations, and by under a tenth of what it moves its own.
    let (rise_site, rise_terminal) = (mean(&site) - mean(&outside), mean(&terminal) - mean(&outside));
    assert!(rise_site < 1.0 && rise_site < rise_terminal / 10.0, "site {} outside {}", mean(&site), mean(&outside));
}
