//! A million one-off terminals (a flood of invented `terminal_id`s) stay
//! within the configured bound. Alone in its test binary, so that the
//! process's peak memory is this test's.
//!
//! `cargo test --release -p termwatch-features --test flood -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use termwatch_features::{FeatureConfig, FeatureEngine, Limits};
use termwatch_telemetry::{BatchBuilder, decode};

const TERMINALS: u64 = 1_000_000;
const PER_BATCH: u64 = 10_000;
const CAP: usize = 100_000;
/// What the process may reach: the capped state (about 1 KiB a terminal,
/// with its site and cohort) plus a batch being built, with room to spare.
/// Without a cap a million one-off terminals took 1.61 GB.
const PEAK_BOUND_BYTES: u64 = 300 << 20;

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_million_one_off_terminals_stay_within_the_configured_bound() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.set_limits(Limits { max_terminals: CAP, ..Limits::default() });
    let t0 = 1_795_514_400_000_i64;
    let mut line = String::new();
    for b in 0..TERMINALS / PER_BATCH {
        // A batch every 5 minutes of event time, so windows keep closing.
        let ts = t0 + b as i64 * 300_000;
        let mut builder = BatchBuilder::with_capacity(PER_BATCH as usize);
        for i in 0..PER_BATCH {
            let n = b * PER_BATCH + i;
            line.clear();
            line.push_str(&format!(
                r#"{{"terminal_id":"X-{n:08}","ts":{ts},"region":"r{}","model":"M","firmware":"f-{n}","supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.02,"net_rtt_ms":40,"net_loss_pct":0.1}}"#,
                n % 7
            ));
            builder.append(&decode(line.as_bytes(), i64::MAX / 2).expect("valid")).expect("append");
        }
        e.process_batch(&builder.finish().expect("batch"));
        assert!(e.tracked_terminals() <= CAP, "{} terminals held after batch {b}", e.tracked_terminals());
    }
    let held = e.held();
    let c = e.limit_counts();
    let peak = peak_rss_bytes().expect("/proc/self/status");
    println!(
        "{TERMINALS} one-off terminals, cap {CAP}: held {held:?}, forgotten {}, refused {} reports, \
         state {:.0} B per terminal, peak RSS {:.0} MB",
        c.evicted_capacity,
        c.refused_terminals,
        e.state_bytes_per_terminal(),
        peak as f64 / 1048576.0,
    );
    assert!(held.sites <= CAP && held.cohorts <= CAP, "{held:?}");
    assert_eq!(c.evicted_capacity + c.refused_terminals + held.terminals as u64, TERMINALS);
    assert!(peak < PEAK_BOUND_BYTES, "peak RSS {peak} B over the bound {PEAK_BOUND_BYTES} B");
}
