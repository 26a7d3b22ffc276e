//! Site and region partials: terminals split over engines as Kafka splits
//! them over partitions (by `terminal_id`), each engine's partials merged per
//! window, give the site and region rows of one engine holding every
//! terminal. Regions bit for bit; sites bit for bit except where a young
//! terminal is judged against its cohort's baselines, which each engine
//! learns from its own terminals of the cohort, unless the engines share
//! their cohorts through the merging stage: then every terminal, site and
//! region row is one engine's (docs/two-stages.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use termwatch_features::partial::{
    MergedWindow, MergerCounts, RegionPartial, RegionWindow, SitePartial, WindowMerger, WindowPartials,
};
use termwatch_features::stages::{LocalStages, StageRows};
use termwatch_features::{FNV_OFFSET, FeatureConfig, FeatureEngine, WindowRows, fnv1a};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::{BatchBuilder, decode};

fn batch(lines: &[&[u8]]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l, i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

/// The simulated history's valid reports (the simulator injects a few
/// malformed ones): (terminal_id, line), in the simulator's order.
fn history(cfg: SimConfig) -> Vec<(String, Vec<u8>)> {
    let mut sim = Simulator::new(cfg).expect("simulator");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while sim.next_record(&mut buf).is_some() {
        if let Ok(t) = decode(&buf, i64::MAX / 2) {
            out.push((t.terminal_id.to_string(), buf.clone()));
        }
    }
    out
}

/// Every closed window of an engine fed `(partition, line)` in batches of
/// 500, each report from its partition's source: event time is kept per
/// partition (a report is late by its own partition's watermark), as a
/// consumer of those partitions keeps it. With `partials`, the windows
/// carry the partials a replica publishes instead of site and region rows.
fn windows(config: &FeatureConfig, lines: &[(String, &[u8])], partials: bool) -> (Vec<WindowRows>, FeatureEngine) {
    let mut engine = FeatureEngine::new(config.clone());
    engine.emit_partials(partials);
    let mut rows = Vec::new();
    for chunk in lines.chunks(500) {
        let mut runs: Vec<(&str, usize)> = Vec::new();
        for (source, _) in chunk {
            match runs.last_mut() {
                Some((s, n)) if *s == source.as_str() => *n += 1,
                _ => runs.push((source, 1)),
            }
        }
        let lines: Vec<&[u8]> = chunk.iter().map(|(_, l)| *l).collect();
        rows.extend(engine.process_sourced(&batch(&lines), &runs));
    }
    rows.extend(engine.finish());
    (rows, engine)
}

/// Kafka's partition of a terminal's reports, as a name.
fn partition(terminal: &str, partitions: u64) -> String {
    format!("telemetry-{}", fnv1a(FNV_OFFSET, terminal.as_bytes()) % partitions)
}

type Merged = BTreeMap<i64, (BTreeMap<Box<str>, SitePartial>, BTreeMap<Box<str>, RegionPartial>)>;

fn merge_into(merged: &mut Merged, rows: &[WindowRows]) {
    for w in rows {
        let (sites, regions) = merged.entry(w.end_ms).or_default();
        for (s, p) in &w.site_partials {
            sites.entry(s.clone()).or_default().merge(p);
        }
        for (r, p) in &w.region_partials {
            regions.entry(r.clone()).or_default().merge(p);
        }
    }
}

fn bits(f: &[f64]) -> Vec<u64> {
    f.iter().map(|x| x.to_bits()).collect()
}

/// Site rows compared, of them different; region rows compared, and thin.
#[derive(Debug, Default)]
struct Compared {
    sites: u64,
    sites_differ: u64,
    regions: u64,
    thin: u64,
}

/// One engine consuming every partition against one engine per partition,
/// their partials merged per window. Region rows must be equal bit for bit
/// (asserted here); site rows are counted.
fn compare(config: &FeatureConfig, lines: &[(String, Vec<u8>)], partitions: u64) -> Compared {
    let all: Vec<(String, &[u8])> = lines.iter().map(|(t, l)| (partition(t, partitions), l.as_slice())).collect();
    let (whole, engine) = windows(config, &all, false);
    let mut merged = Merged::new();
    for p in 0..partitions {
        let name = format!("telemetry-{p}");
        let mine: Vec<(String, &[u8])> = all.iter().filter(|(s, _)| *s == name).cloned().collect();
        let (rows, _) = windows(config, &mine, true);
        merge_into(&mut merged, &rows);
    }
    let mut c = Compared::default();
    for w in &whole {
        let (site_parts, region_parts) = merged.get_mut(&w.end_ms).expect("every window closed in some engine");
        let mut expected: BTreeMap<&str, Vec<u64>> =
            w.network.iter().map(|r| (engine.region_name(r.region), bits(&r.features))).collect();
        for (name, p) in region_parts.iter_mut() {
            match p.features() {
                RegionWindow::Features(f) => {
                    assert_eq!(expected.remove(&**name), Some(bits(&f)), "region {name} at {}", w.end_ms);
                    c.regions += 1;
                }
                RegionWindow::Thin => c.thin += 1,
                RegionWindow::Empty => {}
            }
        }
        assert!(expected.is_empty(), "rows without partials at {}: {expected:?}", w.end_ms);
        let expected: BTreeMap<&str, Vec<u64>> =
            w.site_voltage.iter().map(|r| (engine.site_id(r.site), bits(&r.features))).collect();
        let got: BTreeMap<&str, Vec<u64>> =
            site_parts.iter().filter_map(|(s, p)| Some((&**s, bits(&p.features()?)))).collect();
        assert_eq!(expected.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "sites at {}", w.end_ms);
        for (s, f) in &expected {
            c.sites += 1;
            c.sites_differ += u64::from(got[s] != *f);
        }
    }
    assert_eq!(c.thin, engine.counters().thin_region_windows, "thin region windows");
    println!("{partitions} partitions: {c:?}");
    c
}

fn fleet() -> Vec<(String, Vec<u8>)> {
    history(SimConfig { terminals: 150, regions: 3, days: 1.5, seed: 41, ..SimConfig::default() })
}

#[test]
fn partials_of_terminals_split_over_partitions_merge_into_one_engines_rows_bit_for_bit() {
    // Without a warm-up no terminal is judged against its cohort, so
    // nothing one engine computes depends on terminals another holds.
    let config = FeatureConfig { warmup_windows: 0.0, ..FeatureConfig::default() };
    let lines = fleet();
    for partitions in [2, 3, 6] {
        let c = compare(&config, &lines, partitions);
        assert!(c.regions > 1000 && c.sites > 10_000, "{c:?}");
        assert_eq!(c.sites_differ, 0, "{c:?}");
    }
}

#[test]
fn young_terminals_judged_against_their_cohort_make_split_engines_differ_at_sites() {
    // The shipped warm-up: a terminal with fewer than 24 windows of its own
    // (and one whose faults keep it from learning) is judged against its
    // cohort's baselines, which an engine that does not share its cohorts
    // learns from its own part of the cohort. Regions do not use them
    // (equal, asserted in `compare`); sites do. Engines that share their
    // cohorts through the merging stage agree: the test after next.
    let lines = fleet();
    let c = compare(&FeatureConfig::default(), &lines, 3);
    assert!(c.regions > 1000 && c.sites > 10_000, "{c:?}");
    assert!(c.sites_differ > 0, "no site row differs any more: update docs/two-stages.md and this test ({c:?})");
}

#[test]
fn a_partials_size_per_site_and_region_window() {
    let cfg = SimConfig { terminals: 300, regions: 3, days: 0.5, seed: 43, ..SimConfig::default() };
    let lines = history(cfg);
    let all: Vec<(String, &[u8])> = lines.iter().map(|(_, l)| ("telemetry-0".to_string(), l.as_slice())).collect();
    let (rows, _) = windows(&FeatureConfig::default(), &all, true);
    let (mut site_bytes, mut site_n, mut region_bytes, mut region_n, mut region_terminals) = (0, 0, 0, 0, 0);
    for w in &rows {
        for (s, p) in &w.site_partials {
            site_bytes += postcard::to_stdvec(&(s, p)).expect("encode").len();
            site_n += 1;
        }
        for (r, p) in &w.region_partials {
            region_bytes += postcard::to_stdvec(&(r, p)).expect("encode").len();
            region_n += 1;
            region_terminals += p.terminals.len();
        }
    }
    let per_site = site_bytes as f64 / site_n as f64;
    let per_region_terminal = region_bytes as f64 / region_terminals as f64;
    println!(
        "postcard: {per_site:.1} bytes per site per window ({site_n} site windows), {:.0} bytes per region window, \
         {per_region_terminal:.1} per terminal in it ({region_n} region windows)",
        region_bytes as f64 / region_n as f64
    );
    // Two counts and eight doubles with the site's name; a region's
    // terminals with their names and four doubles.
    assert!((70.0..120.0).contains(&per_site), "{per_site}");
    assert!((40.0..90.0).contains(&per_region_terminal), "{per_region_terminal}");
}

/// Asserts that the merged windows give one engine's site and region rows
/// bit for bit, every window complete; returns the rows compared.
fn same_site_and_region_rows(whole: &[WindowRows], engine: &FeatureEngine, merged: &[MergedWindow]) -> (usize, usize) {
    let by_end: BTreeMap<i64, &MergedWindow> = merged.iter().map(|m| (m.end_ms, m)).collect();
    let (mut sites, mut regions) = (0, 0);
    for w in whole {
        let m = by_end[&w.end_ms];
        assert!(m.missing.is_empty(), "{m:?}");
        let expected: Vec<(&str, Vec<u64>)> =
            w.site_voltage.iter().map(|r| (engine.site_id(r.site), bits(&r.features))).collect();
        let got: Vec<(&str, Vec<u64>)> = m.sites.iter().map(|s| (&*s.site, bits(&s.features))).collect();
        assert_eq!(got, expected, "sites at {}", w.end_ms);
        sites += got.len();
        let expected: Vec<(&str, Vec<u64>)> =
            w.network.iter().map(|r| (engine.region_name(r.region), bits(&r.features))).collect();
        let got: Vec<(&str, Vec<u64>)> = m
            .regions
            .iter()
            .filter_map(|(r, f)| match f {
                RegionWindow::Features(f) => Some((&**r, bits(&f[..]))),
                _ => None,
            })
            .collect();
        assert_eq!(got, expected, "regions at {}", w.end_ms);
        regions += got.len();
    }
    (sites, regions)
}

#[test]
fn a_merging_stage_fed_as_replicas_publish_gives_one_engines_rows() {
    // Three engines read their partitions in batches of different sizes, as
    // three replicas would, publishing each closed window's partials and
    // their progress; the merger closes each window once all three are past
    // it.
    let config = FeatureConfig { warmup_windows: 0.0, ..FeatureConfig::default() };
    let lines = fleet();
    let partitions = 3;
    let all: Vec<(String, &[u8])> = lines.iter().map(|(t, l)| (partition(t, partitions), l.as_slice())).collect();
    let (whole, engine) = windows(&config, &all, false);

    let names: Vec<String> = (0..partitions).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut merger = WindowMerger::new(&sources, 3_600_000, 64);
    let mut engines: Vec<FeatureEngine> = (0..partitions)
        .map(|_| {
            let mut e = FeatureEngine::new(config.clone());
            e.emit_partials(true);
            e
        })
        .collect();
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| all.iter().filter(|(s, _)| s == n).map(|(_, l)| *l).collect()).collect();
    // Batches of unequal size, so the replicas drift apart in event time.
    let sizes = [400, 700, 250];
    let mut at = [0usize; 3];
    let mut merged = Vec::new();
    let publish = |merger: &mut WindowMerger, source: &str, rows: Vec<WindowRows>, e: &FeatureEngine| {
        let mut closed = Vec::new();
        for w in rows {
            let p = WindowPartials {
                end_ms: w.end_ms,
                sites: w.site_partials,
                regions: w.region_partials,
                cohorts: w.cohort_lessons,
                release: w.release_partial,
            };
            closed.extend(merger.offer(source, p));
        }
        if let Some(through) = e.closed_through() {
            closed.extend(merger.progress(source, through));
        }
        closed
    };
    // The replica furthest behind in event time reads next, as consumers
    // of partitions with similar traffic keep within a batch of each other.
    loop {
        let behind = (0..3)
            .filter(|&p| at[p] < mine[p].len())
            .min_by_key(|&p| (engines[p].closed_through().unwrap_or(i64::MIN), p));
        let Some(p) = behind else { break };
        let end = (at[p] + sizes[p]).min(mine[p].len());
        let rows = engines[p].process_sourced(&batch(&mine[p][at[p]..end]), &[(sources[p], end - at[p])]);
        at[p] = end;
        merged.extend(publish(&mut merger, sources[p], rows, &engines[p]));
        assert!(merger.open_windows() <= 64);
    }
    for p in 0..3 {
        let rows = engines[p].finish();
        merged.extend(publish(&mut merger, sources[p], rows, &engines[p]));
        merged.extend(merger.end_of_source(sources[p]));
    }
    assert_eq!(merger.open_windows(), 0);
    assert_eq!(
        merger.counts(),
        MergerCounts { thin_region_windows: engine.counters().thin_region_windows, ..Default::default() },
        "nothing late, repeated or incomplete; as many thin regions as one engine"
    );

    let (sites, regions) = same_site_and_region_rows(&whole, &engine, &merged);
    assert!(sites + regions > 10_000, "{sites} {regions}");
}

/// Terminal and site features of one window, by terminal id and `site_id`,
/// as bits.
type Features = BTreeMap<i64, BTreeMap<String, Vec<u64>>>;

fn terminal_features(into: &mut Features, rows: &[WindowRows], engine: &FeatureEngine) {
    for w in rows {
        let at = into.entry(w.end_ms).or_default();
        for r in &w.terminal_voltage {
            at.insert(format!("voltage {}", engine.terminal_id(r.terminal)), bits(&r.features));
        }
        for r in &w.aging {
            at.insert(format!("aging {}", engine.terminal_id(r.terminal)), bits(&r.features));
        }
    }
}

#[test]
fn engines_sharing_their_cohorts_through_the_merging_stage_give_one_engines_rows_with_the_warm_up() {
    // The shipped warm-up, so young terminals are judged against their
    // cohorts. Three engines hand out what each window taught the cohorts;
    // the merger merges every engine's lessons with the window, and every
    // engine learns them before it closes the next window. Every terminal
    // row (voltage and aging), site row and region row is then one engine's,
    // bit for bit, where engines that keep their cohorts to themselves
    // differ (the test before).
    let config = FeatureConfig::default();
    let lines = fleet();
    let partitions = 3;
    let all: Vec<(String, &[u8])> = lines.iter().map(|(t, l)| (partition(t, partitions), l.as_slice())).collect();
    let (whole, engine) = windows(&config, &all, false);

    let names: Vec<String> = (0..partitions).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stages = LocalStages::new(&config, &sources, 3_600_000, 64);
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| all.iter().filter(|(s, _)| s == n).map(|(_, l)| *l).collect()).collect();
    let sizes = [400, 700, 250];
    let mut at = [0usize; 3];
    let mut merged: Vec<MergedWindow> = Vec::new();
    let mut split = Features::new();
    let mut take = |out: StageRows, stages: &LocalStages| {
        for (p, w) in &out.terminal {
            terminal_features(&mut split, std::slice::from_ref(w), stages.engine(*p).unwrap());
        }
        merged.extend(out.merged);
        assert!(stages.merger().open_windows() <= 64);
    };
    // The replica furthest behind in event time reads next.
    while let Some(p) = stages.furthest_behind(|p| at[p] < mine[p].len()) {
        let end = (at[p] + sizes[p]).min(mine[p].len());
        let out = stages.process(p, &batch(&mine[p][at[p]..end])).unwrap();
        at[p] = end;
        take(out, &stages);
    }
    let out = stages.finish().unwrap();
    take(out, &stages);
    assert!((0..3).all(|p| stages.engine(p).unwrap().open_windows() == 0), "every window closed");
    assert_eq!(stages.merger().open_windows(), 0);
    assert_eq!(
        stages.merger().counts(),
        MergerCounts { thin_region_windows: engine.counters().thin_region_windows, ..Default::default() },
        "nothing late, repeated or incomplete; as many thin regions as one engine"
    );

    let mut one = Features::new();
    terminal_features(&mut one, &whole, &engine);
    let rows: usize = one.values().map(BTreeMap::len).sum();
    assert!(rows > 50_000, "{rows} terminal rows");
    assert_eq!(one.len(), split.len(), "windows with terminal rows");
    for (end, expected) in &one {
        assert_eq!(split.get(end), Some(expected), "terminal rows at {end}");
    }
    let (sites, regions) = same_site_and_region_rows(&whole, &engine, &merged);
    println!("shared cohorts, 3 engines: {rows} terminal rows, {sites} site rows, {regions} region rows bit for bit");
    let wire = stages.wire();
    println!(
        "partials through postcard: {:.0} bytes per source window, {:.1} bytes per site partial",
        wire.bytes as f64 / wire.partials as f64,
        wire.site_bytes as f64 / wire.site_partials as f64
    );
    // What the lessons add to the partials topic (postcard, as the partials).
    let lessons: usize = merged.iter().map(|m| m.cohorts.len()).sum();
    let bytes: usize = merged.iter().map(|m| postcard::to_stdvec(&m.cohorts).expect("encode").len()).sum();
    let per_lesson = bytes as f64 / lessons as f64;
    println!(
        "cohort lessons, postcard: {per_lesson:.1} bytes per lesson, {:.0} per window ({lessons} lessons, {} windows)",
        bytes as f64 / merged.len() as f64,
        merged.len()
    );
    // A terminal's and a cohort's names, and six doubles or two counts.
    assert!((20.0..90.0).contains(&per_lesson), "{per_lesson}");
    assert!(sites > 10_000 && regions > 1000, "{sites} {regions}");
}

/// A report of one of a cohort's terminals, whose supplies differ a little
/// from terminal to terminal and window to window.
fn cohort_report(t: u32, k: i64) -> Vec<u8> {
    let ts = 1_795_514_400_000 + k * 300_000;
    let mean = 12.0 + 0.01 * f64::from(t % 7) + 0.003 * ((i64::from(t) * 31 + k * 17) % 11) as f64;
    format!(
        r#"{{"terminal_id":"T-{t:03}","ts":{ts},"region":"r1","site_id":"S-{t}","model":"M1","firmware":"1.0","supply_v_mean":{mean},"supply_v_min":{},"supply_v_max":{},"supply_v_std":0.04}}"#,
        mean - 0.1,
        mean + 0.1
    )
    .into_bytes()
}

#[test]
fn a_sharing_engine_closes_a_window_once_the_one_before_is_learnt_and_learns_each_window_once() {
    // Thirty young terminals of one cohort for six hours: from the second
    // window on, each is judged against what the cohort learnt from all of
    // them, so a window learnt twice or out of turn changes its features.
    let lines: Vec<Vec<u8>> = (0..72).flat_map(|k| (0..30).map(move |t| cohort_report(t, k))).collect();
    let all = batch(&lines.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut one = FeatureEngine::new(FeatureConfig::default());
    let mut expected = one.process_batch(&all);
    expected.extend(one.finish());
    assert_eq!(expected.len(), 72);

    let mut shared = FeatureEngine::new(FeatureConfig::default());
    shared.share_cohorts(true);
    assert!(shared.process_batch(&all).is_empty(), "nothing closes before the first lessons");
    assert!(shared.finish().is_empty());
    // Its progress passes the windows before its first, which it has no terminal in.
    assert_eq!(shared.closed_through(), Some(1_795_514_400_000));
    // What the merging stage would send back of this engine's lessons alone.
    let mut teacher = termwatch_features::partial::CohortTeacher::new(&FeatureConfig::default());
    let mut learnt: Vec<(i64, termwatch_features::partial::CohortStates)> = Vec::new();
    let mut got = Vec::new();
    loop {
        let through = shared.closed_through().expect("progress");
        // Every window learnt so far is given again each time, as a merging
        // stage read back from its topic would: each is learnt once.
        let closed = shared.learn_cohorts(through, learnt.iter().map(|(end, l)| (*end, l)));
        assert!(shared.learn_cohorts(through, learnt.iter().map(|(end, l)| (*end, l))).is_empty());
        if closed.is_empty() {
            break;
        }
        assert_eq!(closed.len(), 1, "one window for each window learnt");
        for w in closed {
            assert!(!w.cohort_lessons.is_empty(), "quiet terminals teach their cohort");
            learnt.push((w.end_ms, teacher.learn(w.end_ms, &w.cohort_lessons)));
            got.push(w);
        }
    }
    assert_eq!(shared.open_windows(), 0);
    assert_eq!(got.len(), expected.len());
    let mut judged = 0;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.end_ms, e.end_ms);
        let features = |w: &WindowRows| w.terminal_voltage.iter().map(|r| bits(&r.features)).collect::<Vec<_>>();
        assert_eq!(features(g), features(e), "window ending {}", e.end_ms);
        judged += e.terminal_voltage.iter().filter(|r| r.features[0] != 0.0).count();
    }
    assert!(judged > 1000, "the cohort's baseline is used: {judged} rows with a voltage z-score");
}

#[test]
fn a_silent_partition_neither_stops_the_engines_sharing_cohorts_nor_grows_their_windows() {
    // Partition 2 never reports (its replica is down, or it has no
    // terminal): no window can be merged complete, and the lessons of every
    // window come back late or not at all. Each engine holds at most the
    // bound of windows open, closing its oldest due one on its own lessons
    // (counted), so terminal rows keep coming.
    let config = FeatureConfig::default();
    let lines = fleet();
    let all: Vec<(String, &[u8])> = lines.iter().map(|(t, l)| (partition(t, 3), l.as_slice())).collect();
    let names: Vec<String> = (0..3).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = names.iter().map(String::as_str).collect();
    let bound = 16;
    let mut stages = LocalStages::new(&config, &sources, 3_600_000, bound);
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| all.iter().filter(|(s, _)| s == n).map(|(_, l)| *l).collect()).collect();
    let mut at = [0usize; 3];
    let (mut terminal_windows, mut merged, mut most_open) = (0, 0, 0);
    let due = usize::try_from(config.lateness_ms / config.window_ms).unwrap() + 2;
    while let Some(p) = stages.furthest_behind(|p| p < 2 && at[p] < mine[p].len()) {
        let end = (at[p] + 300).min(mine[p].len());
        let out = stages.process(p, &batch(&mine[p][at[p]..end])).unwrap();
        at[p] = end;
        terminal_windows += out.terminal.len();
        merged += out.merged.len();
        for e in 0..2 {
            let open = stages.engine(e).unwrap().open_windows();
            most_open = most_open.max(open);
            assert!(open <= bound + due, "engine {e} holds {open} windows open, bound {bound}");
        }
    }
    let out = stages.finish().unwrap();
    terminal_windows += out.terminal.len();
    merged += out.merged.len();
    let alone: Vec<u64> = (0..2).map(|e| stages.engine(e).unwrap().counters().learnt_alone).collect();
    println!(
        "silent partition: {terminal_windows} terminal windows, {merged} merged, at most {most_open} open, \
         learnt alone {alone:?}, {:?}",
        stages.merger().counts()
    );
    assert!(most_open >= bound, "the bound was reached: {most_open}");
    assert!(alone.iter().all(|&n| n > 100), "{alone:?}");
    assert!(terminal_windows > 800, "both engines closed their windows: {terminal_windows}");
    assert!(stages.merger().counts().incomplete_windows > 100, "{:?}", stages.merger().counts());
    assert!((0..3).all(|e| stages.engine(e).unwrap().open_windows() == 0));
    assert_eq!(stages.merger().open_windows(), 0);
}

#[test]
fn a_sharing_engine_finished_before_any_report_takes_the_reports_after() {
    let mut shared = FeatureEngine::new(FeatureConfig::default());
    shared.share_cohorts(true);
    assert!(shared.finish().is_empty());
    assert_eq!(shared.closed_through(), None, "no time has passed");
    let lines: Vec<Vec<u8>> = (0..4).flat_map(|k| (0..5).map(move |t| cohort_report(t, k))).collect();
    shared.process_batch(&batch(&lines.iter().map(Vec::as_slice).collect::<Vec<_>>()));
    assert_eq!(shared.counters().late, 0);
    assert_eq!(shared.counters().reports, 20);
}

/// A release row's figures, rounded to what a sum of floats in another
/// order keeps: a region's peers add every engine's sums, one engine adds
/// its terminals one by one.
fn close_to(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-6)
}

#[test]
fn versions_judged_by_the_merging_stage_on_every_partitions_terminals_are_one_engines() {
    // Staged rollouts, one a day, over a fleet split over three engines: a
    // version's canaries, and the peers of its region they are measured
    // against, are in every partition. The merging stage judges each
    // version on every engine's partials, as one engine holding every
    // terminal judges it; the models' pools every engine judges its
    // terminals' expectations with are learnt from every engine's.
    let mut cfg = SimConfig { terminals: 150, regions: 3, days: 6.0, seed: 43, ..SimConfig::default() };
    cfg.faults.staged_rollouts_per_week = 7.0;
    let lines = history(cfg);
    let config = FeatureConfig::default();
    let partitions = 3;
    let all: Vec<(String, &[u8])> = lines.iter().map(|(t, l)| (partition(t, partitions), l.as_slice())).collect();
    let (whole, _) = windows(&config, &all, false);

    let names: Vec<String> = (0..partitions).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stages = LocalStages::new(&config, &sources, 3_600_000, 64);
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| all.iter().filter(|(s, _)| s == n).map(|(_, l)| *l).collect()).collect();
    let sizes = [400, 700, 250];
    let mut at = [0usize; 3];
    let mut merged: Vec<MergedWindow> = Vec::new();
    while let Some(p) = stages.furthest_behind(|p| at[p] < mine[p].len()) {
        let end = (at[p] + sizes[p]).min(mine[p].len());
        let out = stages.process(p, &batch(&mine[p][at[p]..end])).unwrap();
        at[p] = end;
        assert!(out.terminal.iter().all(|(_, w)| w.firmware.is_empty()), "stage 1 judges no version");
        merged.extend(out.merged);
    }
    merged.extend(stages.finish().unwrap().merged);

    let by_end: BTreeMap<i64, &MergedWindow> = merged.iter().map(|m| (m.end_ms, m)).collect();
    let (mut rows, mut exact, mut retired, mut entities) = (0, 0, 0, std::collections::BTreeSet::new());
    for w in &whole {
        let m = by_end[&w.end_ms];
        assert_eq!(m.firmware_retired, w.firmware_retired, "retired at {}", w.end_ms);
        retired += w.firmware_retired.len();
        assert_eq!(m.firmware.len(), w.firmware.len(), "versions at {}: {:?}", w.end_ms, m.firmware);
        for (got, want) in m.firmware.iter().zip(&w.firmware) {
            assert_eq!(
                (&got.entity, got.terminals, &got.baseline_version),
                (&want.entity, want.terminals, &want.baseline_version),
                "at {}",
                w.end_ms
            );
            let figures = |r: &termwatch_features::ReleaseRow| {
                let mut f = r.features.to_vec();
                f.extend(r.baselines);
                f.extend([r.crashes_per_terminal_day, r.expected_crashes_per_terminal_day]);
                f
            };
            let (g, e) = (figures(got), figures(want));
            assert!(g.iter().zip(&e).all(|(a, b)| close_to(*a, *b)), "{} at {}: {g:?} {e:?}", got.entity, w.end_ms);
            exact += usize::from(bits(&g) == bits(&e));
            rows += 1;
            entities.insert(got.entity.clone());
        }
    }
    println!("{rows} release rows of {} versions ({exact} bit for bit), {retired} retirements", entities.len());
    assert!(rows > 200 && entities.len() >= 3 && retired > 0, "{rows} rows of {entities:?}, {retired} retired");
}
