//! A young terminal's voltage: judged by its cohort until it has values of
//! its own, then mostly by them. A new site whose supply is steadily a
//! little low (a long cable, a weak transformer) is unusual for its cohort,
//! not a drop; a drop at that site, once it has a level, still is one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arrow::record_batch::RecordBatch;
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows};
use termwatch_telemetry::{BatchBuilder, decode};

const MIN: i64 = 60_000;
const T0: i64 = 1_795_514_400_000; // a window boundary
/// Of a site's voltage row.
const DROP_SECOND_WORST: usize = 1;

fn batch(lines: &[String]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l.as_bytes(), i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

fn report(terminal: &str, site: &str, ts: i64, level: f64, k: i64) -> String {
    // Each terminal's mean wanders 0.01 V about its own level.
    let mean = level + if k % 2 == 0 { 0.01 } else { -0.01 };
    format!(
        r#"{{"terminal_id":"{terminal}","ts":{ts},"region":"r1","site_id":"{site}","model":"P1","firmware":"1.0","interval_s":300,"supply_v_nominal":12.0,"supply_v_mean":{mean:.3},"supply_v_min":{:.3},"supply_v_max":{:.3},"supply_v_std":0.03}}"#,
        mean - 0.08,
        mean + 0.08
    )
}

/// The drop feature of site `S-new` in each window it has a row, after a
/// cohort of 15 two-terminal sites whose levels lie about 0.1 V apart has
/// run for four hours. `S-new` joins at `level`, and from window `drop_at`
/// of its own on its supply is 0.3 V lower.
fn new_site_drops(level: f64, drop_at: i64) -> Vec<f64> {
    let mut engine = FeatureEngine::new(FeatureConfig::default());
    let mut rows: Vec<WindowRows> = Vec::new();
    let joins = 48;
    for k in 0..joins + 16 {
        let ts = T0 + k * 5 * MIN + 30_000;
        let mut lines = Vec::new();
        for s in 0..15 {
            let site_level = 12.0 + 0.17 * (f64::from(s) / 7.0 - 1.0);
            for t in 0..2 {
                lines.push(report(&format!("T-{s}-{t}"), &format!("S-{s}"), ts, site_level, k + t));
            }
        }
        if k >= joins {
            let own = k - joins;
            let at = if own >= drop_at { level - 0.3 } else { level };
            for t in 0..2 {
                lines.push(report(&format!("T-new-{t}"), "S-new", ts, at, k + t));
            }
        }
        rows.extend(engine.process_batch(&batch(&lines)));
    }
    rows.extend(engine.finish());
    rows.iter()
        .flat_map(|w| w.site_voltage.iter().filter(|r| engine.site_id(r.site) == "S-new").map(|r| r.features))
        .map(|f| f[DROP_SECOND_WORST])
        .collect()
}

#[test]
fn a_new_site_whose_supply_is_steadily_low_has_not_dropped() {
    // 0.3 V below the cohort's middle: about three of its deviations.
    let drops = new_site_drops(11.7, i64::MAX);
    assert_eq!(drops.len(), 16);
    assert!(drops[0] > 2.0, "with nothing of its own it is the cohort's outlier: {drops:?}");
    // Its terminals' means wander by about one of their own deviations
    // (0.01 V, just above the floor): within one and a half, it has not moved.
    assert!(drops[3..].iter().all(|d| d.abs() < 1.5), "after a few windows it is its own level: {drops:?}");
}

#[test]
fn a_young_site_that_drops_from_its_own_level_has_dropped() {
    let drops = new_site_drops(11.7, 8);
    assert!(drops[..8].iter().skip(3).all(|d| d.abs() < 1.5), "{drops:?}");
    assert!(drops[8] > 5.0, "0.3 V below its own level of eight windows: {drops:?}");
}
