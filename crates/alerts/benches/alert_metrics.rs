//! Cardinality and scrape cost of /metrics with a million tracked terminals.
//!
//! ```sh
//! cargo bench -p termwatch-alerts --bench alert_metrics
//! ```
//!
//! Builds, outside the timed part: a feature engine holding 1,000,000
//! terminals (2.5 per site, 50 regions, one report each), and an alert
//! tracker holding voltage and aging state for every one of them, of which
//! 50,000 terminal alerts, 2,000 site alerts and 10 regional alerts fire;
//! the pipeline and Kafka metrics with realistic label sets. Then times the
//! alert metrics' update (the top K recomputed) and a scrape (gather and
//! text encoding of the whole registry, as /metrics does), and counts the
//! series exported. Targets (issue 6): at most 5,000 series, a scrape in at
//! most 50 ms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use prometheus::{Encoder, Registry, TextEncoder};
use termwatch_alerts::alerting::{AlertTracker, Scored};
use termwatch_alerts::metrics::{AlertMetrics, AlertView};
use termwatch_features::{FeatureConfig, FeatureEngine};
use termwatch_models::policy::AlertingConfig;
use termwatch_pipeline::{KafkaMetrics, PipelineMetrics};
use termwatch_telemetry::alerts::{AlertKind, Reason, Scope};
use termwatch_telemetry::{BatchBuilder, Label, Telemetry};

const TERMINALS: u32 = 1_000_000;
const REGIONS: u32 = 50;
const T0: i64 = 1_790_000_000_000;
const MIN5: i64 = 300_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let setup = Instant::now();
    let mut engine = FeatureEngine::new(FeatureConfig::default());
    let mut builder = BatchBuilder::with_capacity(8192);
    let ids: Vec<String> = (0..TERMINALS).map(|t| format!("T-{t:07}")).collect();
    let sites: Vec<String> = (0..TERMINALS / 2 + 1).map(|s| format!("S-{s:07}")).collect();
    let regions: Vec<String> = (0..REGIONS).map(|r| format!("region-{r:02}")).collect();
    for t in 0..TERMINALS {
        let mut r = Telemetry::new(
            ids[t as usize].as_str(),
            T0 + i64::from(t % 60) * 1000,
            regions[(t % REGIONS) as usize].as_str(),
        );
        r.labels[Label::SiteId.index()] = Some(sites[(t * 2 / 5) as usize].as_str().into());
        builder.append(&r).unwrap();
        if builder.len() == 8192 {
            engine.process_batch(&builder.finish().unwrap());
        }
    }
    engine.process_batch(&builder.finish().unwrap());
    assert_eq!(engine.tracked_terminals(), TERMINALS as usize);

    let mut tracker = AlertTracker::new(&AlertingConfig::default()).unwrap();
    let reasons = vec![Reason { feature: "v_std_z".into(), value: 0.4, baseline: 0.01, baseline_version: None }];
    let scored = |kind, scope, entity: &'static str, region: &'static str, i: i64, bad: bool, score: f64| Scored {
        window_end_ms: T0 + i * MIN5,
        kind,
        scope,
        entity,
        region,
        score,
        bad,
        critical: score > 0.95,
        holds: bad,
        model_version: "bench-1",
        reasons: reasons.clone().into(),
    };
    // 'static strs for the tracker's borrowed inputs: leak the (setup-only) names.
    let ids: &'static [String] = ids.leak();
    let sites: &'static [String] = sites.leak();
    let regions: &'static [String] = regions.leak();
    for i in 0..3 {
        for t in 0..TERMINALS as usize {
            let region = regions[t % REGIONS as usize].as_str();
            let bad = t % 20 == 0; // 50,000 voltage alerts
            let score = if bad { 0.5 + (t % 1000) as f64 / 2000.0 } else { 0.01 };
            tracker.observe(scored(AlertKind::VoltageInstability, Scope::Terminal, &ids[t], region, i, bad, score));
            tracker.observe(scored(AlertKind::HardwareAging, Scope::Terminal, &ids[t], region, i, false, 0.02));
        }
        for s in 0..2000usize {
            let region = regions[s % REGIONS as usize].as_str();
            tracker.observe(scored(AlertKind::VoltageInstability, Scope::Site, &sites[s * 7], region, i, true, 0.8));
        }
        for (r, region) in regions.iter().enumerate() {
            let (region, bad) = (region.as_str(), r < 10);
            tracker.observe(scored(AlertKind::NetworkDegradation, Scope::Region, region, region, i, bad, 0.9));
        }
    }
    let firing = tracker.firing().count();

    let registry = Registry::new();
    let pipeline = PipelineMetrics::register(&registry).unwrap();
    let kafka = KafkaMetrics::register(&registry).unwrap();
    let metrics = AlertMetrics::register(&registry).unwrap();
    for (field, problem) in [
        ("(record)", "malformed"),
        ("ts", "missing"),
        ("region", "missing"),
        ("ts", "invalid"),
        ("cpu_pct", "out_of_range"),
    ] {
        pipeline.records_rejected.with_label_values(&[field, problem]).inc_by(3);
    }
    pipeline.records_dropped.with_label_values(&["duplicate"]).inc();
    pipeline.batch_latency.observe(0.02);
    for p in 0..12 {
        kafka.consumer_lag.with_label_values(&["telemetry", &p.to_string()]).set(100);
    }
    kafka.rebalances.with_label_values(&["assign"]).inc();
    let region_scores: Vec<(&str, f64)> = regions.iter().map(|r| (r.as_str(), 0.1)).collect();
    let scores: Vec<((AlertKind, Scope), Vec<f64>)> = vec![
        (
            (AlertKind::VoltageInstability, Scope::Terminal),
            (0..TERMINALS).map(|t| f64::from(t % 100) / 100.0).collect(),
        ),
        ((AlertKind::VoltageInstability, Scope::Site), vec![0.1; 2000]),
        ((AlertKind::NetworkDegradation, Scope::Region), vec![0.2; REGIONS as usize]),
        ((AlertKind::HardwareAging, Scope::Terminal), vec![0.02; TERMINALS as usize]),
    ];
    let view = AlertView {
        alerts: &[&tracker],
        engines: &[("", &engine)],
        events: &[],
        scores: &scores,
        region_scores: &region_scores,
        releases: &[],
        thresholds: &[],
        model_version: "bench-1",
        now_ms: T0 + 20 * MIN5,
    };
    println!(
        "setup: {} terminals tracked, {} alert entities, {} firing, in {:.1} s",
        engine.tracked_terminals(),
        tracker.len(),
        firing,
        setup.elapsed().as_secs_f64()
    );

    // The first update also looks up the sites of the top-K terminals.
    let mut updates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        metrics.observe(&view);
        updates.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let first_update = updates[0];
    let encoder = TextEncoder::new();
    let mut scrapes = Vec::new();
    let mut body = Vec::new();
    for _ in 0..31 {
        body.clear();
        let t = Instant::now();
        encoder.encode(&registry.gather(), &mut body).unwrap();
        scrapes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let text = String::from_utf8(body).unwrap();
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    let entity_series = text.lines().filter(|l| l.starts_with("termwatch_alert_entity_score{")).count();
    println!(
        "update with 1,000,000 scores per detector and the top K recomputed: first {first_update:.1} ms (site lookup included), median of the next 6 {:.1} ms",
        median(updates[1..].to_vec())
    );
    println!(
        "scrape (gather + text encoding): median {:.2} ms, max {:.2} ms over 31; {} bytes",
        median(scrapes.clone()),
        scrapes.iter().copied().fold(0.0, f64::max),
        text.len()
    );
    println!("series exported: {series} (termwatch_alert_entity_score: {entity_series}), target <= 5000");
    assert!(series <= 5000, "{series} series");
    assert!(median(scrapes) <= 50.0, "scrape over 50 ms");
}
