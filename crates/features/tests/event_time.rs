//! Event time per input: however the inputs of one history interleave (six
//! partitions read from a backlog at six speeds), the feature rows are those
//! of one ordered pass, and one terminal's wrong clock moves no one else's
//! windows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::{BatchBuilder, decode};

/// A window's rows with names instead of this engine's indices, so that two
/// engines that met the entities in another order compare equal.
type Named = (
    i64,
    Vec<(String, [f64; 6], [f64; 6])>,
    Vec<(String, [f64; 6])>,
    Vec<(String, [f64; 7])>,
    Vec<String>,
    Vec<String>,
);

fn named(e: &FeatureEngine, rows: &[WindowRows]) -> Vec<Named> {
    rows.iter()
        .map(|w| {
            (
                w.end_ms,
                w.terminal_voltage
                    .iter()
                    .map(|r| (e.terminal_id(r.terminal).to_string(), r.features, r.baselines))
                    .collect(),
                w.site_voltage.iter().map(|r| (e.site_id(r.site).to_string(), r.features)).collect(),
                w.network.iter().map(|r| (e.region_name(r.region).to_string(), r.features)).collect(),
                // Aging rows carry 8 features: compared through their bits.
                w.aging
                    .iter()
                    .map(|r| {
                        let bits: Vec<u64> = r.features.iter().chain(&r.baselines).map(|f| f.to_bits()).collect();
                        format!("{} {bits:?}", e.terminal_id(r.terminal))
                    })
                    .collect(),
                // Release health: the version's name is its own.
                w.firmware
                    .iter()
                    .map(|r| {
                        let bits: Vec<u64> = r.features.iter().chain(&r.baselines).map(|f| f.to_bits()).collect();
                        format!("{} {} {bits:?}", r.entity, r.terminals)
                    })
                    .chain(w.firmware_retired.iter().map(|v| format!("{v} retired")))
                    .collect(),
            )
        })
        .collect()
}

/// Two and a half simulated days of 40 terminals at 300 s, faults included
/// (a staged firmware rollout that regresses among them), with every
/// terminal's reports in order (no late deliveries): (terminal, line).
fn history() -> &'static [(String, Vec<u8>)] {
    static LINES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    LINES.get_or_init(|| {
        let mut cfg = SimConfig {
            terminals: 40,
            regions: 3,
            days: 2.5,
            seed: 17,
            interval_s: 300,
            damaged_share: 0.0,
            late_share: 0.0,
            very_late_share: 0.0,
            ..SimConfig::default()
        };
        cfg.faults.scale_faults(20.0);
        // One rollout in the history (its canary starts 12-36 h in).
        cfg.faults.staged_rollouts_per_week = 7.0 / 2.5;
        cfg.faults.regression_share = 1.0;
        let mut sim = Simulator::new(cfg).expect("simulator");
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        while sim.next_record(&mut buf).is_some() {
            let record = decode(&buf, i64::MAX / 2).expect("valid");
            out.push((record.terminal_id.to_string(), buf.clone()));
        }
        out
    })
}

fn batch(lines: &[&[u8]]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l, i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

fn one_ordered_pass() -> &'static [Named] {
    static ROWS: OnceLock<Vec<Named>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        let mut rows = Vec::new();
        let lines: Vec<&[u8]> = history().iter().map(|(_, l)| l.as_slice()).collect();
        for chunk in lines.chunks(8192) {
            rows.extend(e.process_batch(&batch(chunk)));
        }
        rows.extend(e.finish());
        assert_eq!(e.counters().late + e.counters().ahead, 0, "an ordered history has nothing late");
        assert!(rows.iter().any(|w| !w.firmware.is_empty()), "the rollout gives release-health rows");
        named(&e, &rows)
    })
}

/// A small deterministic generator for the interleaving.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Terminals are split over `inputs` partitions; the partitions are read
    /// in random chunks, in random order, several to a batch, and each ends
    /// (idle) once read. The rows are those of one ordered pass, bit for bit.
    #[test]
    fn any_interleaving_of_inputs_gives_the_rows_of_one_ordered_pass(
        seed in 1u64..u64::MAX,
        inputs in 1usize..8,
        max_chunk in 1usize..600,
        runs_per_batch in 1usize..5,
    ) {
        let mut rng = Rng(seed);
        let names: Vec<String> = (0..inputs).map(|i| format!("telemetry-{i}")).collect();
        let mut queues: Vec<Vec<&[u8]>> = vec![Vec::new(); inputs];
        for (terminal, line) in history() {
            let input = terminal.bytes().fold(7usize, |h, b| h.wrapping_mul(31) + usize::from(b)) % inputs;
            queues[input].push(line);
        }
        let mut next = vec![0usize; inputs];
        let mut e = FeatureEngine::new(FeatureConfig::default());
        for name in &names {
            e.register_source(name);
        }
        let mut rows = Vec::new();
        loop {
            let open: Vec<usize> = (0..inputs).filter(|&i| next[i] < queues[i].len()).collect();
            if open.is_empty() {
                break;
            }
            let (mut lines, mut runs): (Vec<&[u8]>, Vec<(&str, usize)>) = (Vec::new(), Vec::new());
            let mut ended = Vec::new();
            for _ in 0..runs_per_batch {
                let i = open[rng.below(open.len())];
                let take = (1 + rng.below(max_chunk)).min(queues[i].len() - next[i]);
                if take == 0 {
                    continue;
                }
                lines.extend(&queues[i][next[i]..next[i] + take]);
                runs.push((names[i].as_str(), take));
                next[i] += take;
                if next[i] == queues[i].len() {
                    ended.push(i);
                }
            }
            rows.extend(e.process_sourced(&batch(&lines), &runs));
            for i in ended {
                rows.extend(e.end_of_source(&names[i]));
            }
            // What a snapshot taken now would hold passes its restore check.
            prop_assert_eq!(e.check(), Ok(()));
        }
        rows.extend(e.finish());
        prop_assert_eq!(e.check(), Ok(()));
        prop_assert_eq!(e.counters().late + e.counters().ahead, 0);
        let got = named(&e, &rows);
        let want = one_ordered_pass();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert_eq!(g, w, "window ending {}", w.0);
        }
    }
}

fn line(terminal: &str, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"terminal_id":"{terminal}","ts":{ts},"region":"r1","site_id":"S-{terminal}","supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.04}}"#
    )
    .into_bytes()
}

const MIN: i64 = 60_000;
const T0: i64 = 1_795_514_400_000; // a window boundary

#[test]
fn a_clock_a_day_fast_for_one_report_is_dropped_as_ahead_and_moves_no_window() {
    let day = 24 * 60 * MIN - MIN;
    let mut with = FeatureEngine::new(FeatureConfig::default());
    let mut without = FeatureEngine::new(FeatureConfig::default());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for k in 0..60 {
        let ts = T0 + k * 5 * MIN;
        let mut lines: Vec<Vec<u8>> = (0..5).map(|t| line(&format!("T-{t}"), ts)).collect();
        lines.push(line("T-9", ts));
        if k == 20 {
            // T-9's clock runs 23 h 59 m fast for this report; then it is
            // right again. The other engine never gets the report.
            b.extend(without.process_batch(&batch(&lines[..5].iter().map(Vec::as_slice).collect::<Vec<_>>())));
            lines[5] = line("T-9", ts + day);
        } else {
            b.extend(without.process_batch(&batch(&lines.iter().map(Vec::as_slice).collect::<Vec<_>>())));
        }
        a.extend(with.process_batch(&batch(&lines.iter().map(Vec::as_slice).collect::<Vec<_>>())));
    }
    a.extend(with.finish());
    b.extend(without.finish());
    assert_eq!(with.counters().ahead, 1, "held until T-9's next report went back, then dropped");
    assert_eq!(with.counters().late, 0, "no one's report was left behind");
    // Every row is the same as if the report had never been sent (T-9 has
    // none in the window it replaced, and one window fewer of its own after).
    let (ra, rb) = (named(&with, &a), named(&without, &b));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.0, y.0);
        assert_eq!(x.1, y.1, "terminal rows of the window ending {}", x.0);
    }
    let jumped = T0 + 21 * 5 * MIN;
    let without_t9: Vec<i64> = ra.iter().filter(|r| !r.1.iter().any(|t| t.0 == "T-9")).map(|r| r.0).collect();
    assert_eq!(without_t9, [jumped], "T-9 is missing from the window its report was dropped from, and only there");
}

#[test]
fn an_input_that_has_sent_nothing_holds_every_window_until_it_sends_or_ends() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    e.register_source("telemetry-0");
    e.register_source("telemetry-1");
    let lines: Vec<Vec<u8>> = (0..40).map(|k| line(&format!("T-{}", k % 2), T0 + k * 5 * MIN)).collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let closed = e.process_sourced(&batch(&refs), &[("telemetry-0", refs.len())]);
    assert!(closed.is_empty(), "telemetry-1 has not reported: nothing may close");
    assert_eq!(e.watermark(), None);
    let closed = e.end_of_source("telemetry-1");
    assert!(closed.len() >= 30, "once telemetry-1 is idle the windows close: {}", closed.len());
    assert_eq!(e.counters().late, 0);
}

#[test]
fn a_report_its_own_input_left_behind_is_late_and_counted() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    let lines: Vec<Vec<u8>> =
        vec![line("T-1", T0 + 30 * MIN), line("T-2", T0 + 30 * MIN), line("T-3", T0 + MIN), line("T-3", T0 + 25 * MIN)];
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    e.process_sourced(&batch(&refs), &[("a", 4)]);
    assert_eq!(e.counters().late, 1, "29 minutes behind its input: more than window + lateness");
}

#[test]
fn a_partition_whose_terminals_slept_is_not_ahead_when_they_wake() {
    // telemetry-1 holds one terminal, switched off for ten hours; the
    // others report through the night on telemetry-0.
    let mut e = FeatureEngine::new(FeatureConfig::default());
    let night = 10 * 60 * MIN;
    let mut closed = Vec::new();
    for k in 0..(night / (5 * MIN) + 24) {
        let ts = T0 + k * 5 * MIN;
        let lines: Vec<Vec<u8>> = (0..3).map(|t| line(&format!("T-{t}"), ts)).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        closed.extend(e.process_sourced(&batch(&refs), &[("telemetry-0", refs.len())]));
        if ts < T0 + 30 * MIN || ts >= T0 + night {
            closed.extend(e.process_sourced(&batch(&[&line("T-9", ts)]), &[("telemetry-1", 1)]));
        }
    }
    assert_eq!(e.counters().ahead, 0, "waking up is not a clock jump");
    let t9 = closed.iter().flat_map(|w| &w.terminal_voltage).filter(|r| e.terminal_id(r.terminal) == "T-9").count();
    assert!(t9 >= 20, "T-9's morning reports count: {t9} rows");
}

#[test]
fn a_terminal_back_from_a_gap_keeps_its_reports_even_out_of_order() {
    let mut e = FeatureEngine::new(FeatureConfig::default());
    let mut closed = Vec::new();
    let mut feed = |e: &mut FeatureEngine, ts: i64, with_t9: Option<i64>| {
        let mut lines: Vec<Vec<u8>> = (0..3).map(|t| line(&format!("T-{t}"), ts)).collect();
        lines.extend(with_t9.map(|t9| line("T-9", t9)));
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        closed.extend(e.process_batch(&batch(&refs)));
    };
    for k in 0..60 {
        let ts = T0 + k * 5 * MIN;
        // T-9 is off from 00:30 to 03:00, and its first two reports back
        // arrive in the wrong order (02:10 before 02:05 would be a jump of
        // less than max_ahead back: an arrival out of order, not a clock).
        let t9 = match k {
            0..=5 => Some(ts),
            36 => Some(ts + 5 * MIN),
            37 => Some(ts - 5 * MIN),
            38.. => Some(ts),
            _ => None,
        };
        feed(&mut e, ts, t9);
    }
    closed.extend(e.finish());
    assert_eq!(e.counters().ahead, 0, "a gap, then reports out of order, is not a wrong clock");
    assert_eq!(e.counters().late, 0);
}

fn on(terminal: &str, ts: i64, firmware: &str) -> Vec<u8> {
    format!(
        r#"{{"terminal_id":"{terminal}","ts":{ts},"region":"r1","site_id":"S-{terminal}","model":"P1","firmware":"{firmware}","interval_s":300,"app_crashes":0,"txn_count":3}}"#
    )
    .into_bytes()
}

/// When a version is retired (no terminal runs it any more), in a history
/// where T-0 and T-1 take P1/2.0 at step 10 and go back to 1.0 at steps 30
/// and 34 (T-1 is switched off in between: the version has no rows, and
/// only T-1 still runs it), their input read `ahead` steps before T-2 and
/// T-3's.
fn retired_after_rollback(ahead: usize) -> Vec<(i64, Vec<Box<str>>)> {
    let steps = 60;
    let firmware = |t: usize, k: usize| match (t, k) {
        (1, 30..34) => None,
        (0, 10..30) | (1, 10..30) => Some("2.0"),
        _ => Some("1.0"),
    };
    let mut e = FeatureEngine::new(FeatureConfig::default());
    let names = ["rolled-back", "steady"];
    for n in names {
        e.register_source(n);
    }
    let mut rows = Vec::new();
    for k in 0..steps + ahead {
        let mut lines = Vec::new();
        let mut runs = Vec::new();
        for (input, terminals, step) in [(names[0], [0, 1], Some(k)), (names[1], [2, 3], k.checked_sub(ahead))] {
            let Some(step) = step.filter(|s| *s < steps) else { continue };
            let ts = T0 + step as i64 * 5 * MIN + 30_000;
            let before = lines.len();
            lines.extend(terminals.into_iter().filter_map(|t| Some(on(&format!("T-{t}"), ts, firmware(t, step)?))));
            runs.push((input, lines.len() - before));
        }
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        rows.extend(e.process_sourced(&batch(&refs), &runs));
    }
    rows.extend(e.finish());
    assert!(rows.iter().any(|w| w.firmware.iter().any(|r| &*r.entity == "P1/2.0")), "the canaries give it rows");
    rows.into_iter().filter(|w| !w.firmware_retired.is_empty()).map(|w| (w.end_ms, w.firmware_retired)).collect()
}

#[test]
fn a_version_is_retired_at_the_window_its_last_terminal_left_it_whatever_was_read_first() {
    let in_order = retired_after_rollback(0);
    assert_eq!(in_order, [(T0 + 35 * 5 * MIN, vec!["P1/2.0".into()])], "the window of T-1's rollback, once");
    // T-1's rollback read while the windows of T-0's are still open.
    assert_eq!(retired_after_rollback(8), in_order);
}
