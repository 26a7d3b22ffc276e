//! The topics between the stages on the Kafka protocol (librdkafka's mock
//! cluster): three stage-1 engines, one per partition of the telemetry
//! topic, publish their closed windows' partials and progress; the merging
//! stage reads them back in its own consumer group and gives the site and
//! region rows of one engine holding every terminal, bit for bit, past
//! records it cannot read and a window republished by a restarted replica.
//! With three stage-1 scorers, the lessons topic and a regional stage, the
//! alert events and fleet calibration of one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use termwatch_alerts::calibration::FleetThreshold;
use termwatch_alerts::merging::{MergingConfig, MergingStage, Started};
use termwatch_alerts::scoring::{MAX_PENDING_LESSON_BYTES, MAX_PENDING_LESSONS, Scorer};
use termwatch_alerts::stage_topics::{LessonsReader, PartialsReader, StagePublisher};
use termwatch_features::partial::{CohortTeacher, MergedWindow, RegionWindow, WindowMerger, WindowPartials};
use termwatch_features::wire::{self, Lessons, PartialsRecord, WindowLessons, WireError};
use termwatch_features::{FNV_OFFSET, FeatureConfig, FeatureEngine, WindowRows, fnv1a};
use termwatch_models::artifact::ModelSet;
use termwatch_models::detector::CRITICAL_OFF;
use termwatch_pipeline::KafkaConfig;
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, Scope};
use termwatch_telemetry::{BatchBuilder, decode};

const TOPIC: &str = "termwatch-partials";
const LESSONS: &str = "termwatch-lessons";
const PARTITIONS: u64 = 3;

fn batch(lines: &[&[u8]]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l, i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

/// A simulated history's valid reports, each with its partition's name
/// (Kafka's split by `terminal_id`), in the simulator's order.
fn simulated(cfg: SimConfig) -> Vec<(String, Vec<u8>)> {
    let mut sim = Simulator::new(cfg).expect("simulator");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while sim.next_record(&mut buf).is_some() {
        if let Ok(t) = decode(&buf, i64::MAX / 2) {
            let p = fnv1a(FNV_OFFSET, t.terminal_id.as_bytes()) % PARTITIONS;
            out.push((format!("telemetry-{p}"), buf.clone()));
        }
    }
    out
}

fn history() -> Vec<(String, Vec<u8>)> {
    simulated(SimConfig { terminals: 150, regions: 3, days: 1.0, seed: 41, ..SimConfig::default() })
}

fn bits(f: &[f64]) -> Vec<u64> {
    f.iter().map(|x| x.to_bits()).collect()
}

fn config() -> FeatureConfig {
    // Without the warm-up no terminal is judged against its cohort, which
    // split engines learn apart unless they share it (a later step).
    FeatureConfig { warmup_windows: 0.0, ..FeatureConfig::default() }
}

/// Feeds `(partition, line)` to one process reading every partition, in
/// batches of 500, each report from its partition's source.
fn one_process(lines: &[(String, Vec<u8>)], mut feed: impl FnMut(&RecordBatch, &[(&str, usize)])) {
    for chunk in lines.chunks(500) {
        let mut runs: Vec<(&str, usize)> = Vec::new();
        for (source, _) in chunk {
            match runs.last_mut() {
                Some((s, n)) if *s == source.as_str() => *n += 1,
                _ => runs.push((source, 1)),
            }
        }
        let lines: Vec<&[u8]> = chunk.iter().map(|(_, l)| l.as_slice()).collect();
        feed(&batch(&lines), &runs);
    }
}

/// One engine reading every partition: the rows the stages must give, or,
/// with `partials`, the partials one replica would publish.
fn one_engine(lines: &[(String, Vec<u8>)], partials: bool) -> (Vec<WindowRows>, FeatureEngine) {
    let mut engine = FeatureEngine::new(config());
    engine.emit_partials(partials);
    let mut rows = Vec::new();
    one_process(lines, |batch, runs| rows.extend(engine.process_sourced(batch, runs)));
    rows.extend(engine.finish());
    (rows, engine)
}

fn window_record(w: &mut WindowRows) -> PartialsRecord {
    PartialsRecord::Window(WindowPartials {
        end_ms: w.end_ms,
        sites: std::mem::take(&mut w.site_partials),
        regions: std::mem::take(&mut w.region_partials),
        cohorts: std::mem::take(&mut w.cohort_lessons),
        release: std::mem::take(&mut w.release_partial),
    })
}

/// Three engines, one per partition, read their reports in batches of
/// different sizes (the one furthest behind reads next) and publish each
/// closed window and their progress; the first window source 0 publishes
/// is published again after its progress, as a replica restarted from an
/// older snapshot would. Returns the records published.
fn publish_three_replicas(lines: &[(String, Vec<u8>)], config: &FeatureConfig, publisher: &mut StagePublisher) -> u64 {
    let names: Vec<String> = (0..PARTITIONS).map(|p| format!("telemetry-{p}")).collect();
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| lines.iter().filter(|(s, _)| s == n).map(|(_, l)| l.as_slice()).collect()).collect();
    let mut engines: Vec<FeatureEngine> = names
        .iter()
        .map(|_| {
            let mut e = FeatureEngine::new(config.clone());
            e.emit_partials(true);
            e
        })
        .collect();
    let sizes = [400, 700, 250];
    let mut at = [0usize; PARTITIONS as usize];
    let mut published = 0;
    let mut first: Option<PartialsRecord> = None;
    let mut replayed = false;
    let mut publish = |p: usize, rows: Vec<WindowRows>, engine: &FeatureEngine, end: bool| {
        for mut w in rows {
            let record = window_record(&mut w);
            publisher.publish_partials(&names[p], &record).expect("queued");
            published += 1;
            if p == 0 && first.is_none() {
                first = Some(record);
            }
        }
        if let Some(through) = engine.closed_through() {
            publisher.publish_partials(&names[p], &PartialsRecord::Progress(through)).expect("queued");
            published += 1;
            if let Some(again) = first.as_ref().filter(|_| p == 0 && !replayed) {
                publisher.publish_partials(&names[p], again).expect("queued");
                published += 1;
                replayed = true;
            }
        }
        if end {
            publisher.publish_partials(&names[p], &PartialsRecord::End).expect("queued");
            published += 1;
        }
    };
    loop {
        let behind = (0..PARTITIONS as usize)
            .filter(|&p| at[p] < mine[p].len())
            .min_by_key(|&p| (engines[p].closed_through().unwrap_or(i64::MIN), p));
        let Some(p) = behind else { break };
        let end = (at[p] + sizes[p]).min(mine[p].len());
        let rows = engines[p].process_sourced(&batch(&mine[p][at[p]..end]), &[(&names[p], end - at[p])]);
        at[p] = end;
        publish(p, rows, &engines[p], false);
    }
    for (p, engine) in engines.iter_mut().enumerate() {
        let rows = engine.finish();
        publish(p, rows, engine, true);
    }
    publisher.flush(Duration::from_secs(30)).expect("delivered");
    published
}

/// Asserts that the merged windows give one engine's site and region rows
/// bit for bit, every window complete; returns the rows compared.
fn same_site_and_region_rows(whole: &[WindowRows], engine: &FeatureEngine, merged: &[MergedWindow]) -> (usize, usize) {
    let by_end: BTreeMap<i64, &MergedWindow> = merged.iter().map(|m| (m.end_ms, m)).collect();
    assert_eq!(by_end.len(), merged.len(), "each window merged once");
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
fn three_replicas_partials_through_the_topic_give_one_engines_site_and_region_rows() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };

    // Two records no stage 1 wrote, first on the topic: read past, counted,
    // named by their offsets.
    let raw: BaseProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    raw.send(BaseRecord::<str, [u8]>::to(TOPIC).key("telemetry-1").payload(b"not a partials record")).expect("queued");
    raw.send(BaseRecord::<(), [u8]>::to(TOPIC).payload(&[1, 2, 3])).expect("queued");
    raw.flush(Duration::from_secs(10)).expect("flushed");

    let lines = history();
    let (whole, engine) = one_engine(&lines, false);
    let mut publisher = StagePublisher::new(&kafka, TOPIC).expect("publisher");
    let published = publish_three_replicas(&lines, &config(), &mut publisher);
    let (records, bytes) = publisher.published();
    assert_eq!(records, published);
    println!("{published} records, {bytes} bytes published");

    let sources: Vec<String> = (0..PARTITIONS).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let merger = WindowMerger::new(&sources, 3_600_000, 64);
    let mut reader =
        PartialsReader::new(&kafka, TOPIC, "termwatch-regional", merger, Duration::from_secs(10)).expect("reader");
    let mut merged = Vec::new();
    let mut unreadable = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.counts().0 < published + 2 {
        assert!(Instant::now() < deadline, "read {:?} of {} records", reader.counts(), published + 2);
        let polled = reader.poll(1_000, Duration::from_millis(200));
        assert!(polled.error.is_none(), "{:?}", polled.error);
        assert!(polled.records <= 1_000);
        if polled.reassigned {
            // Alone in its group, with no snapshot: its own merger.
            let merger = reader.merger().clone();
            reader.reload(merger, Duration::from_secs(10)).expect("reads on");
        }
        merged.extend(polled.merged);
        unreadable.extend(polled.unreadable);
    }
    assert_eq!(reader.counts(), (published + 2, 2));
    let why: Vec<(i64, &WireError)> = unreadable.iter().map(|u| (u.offset, &u.error)).collect();
    assert!(matches!(why[..], [(0, WireError::Format(b'n')), (1, WireError::NoKey)]), "{unreadable:?}");
    assert!(unreadable[0].to_string().starts_with("topic termwatch-partials partition 0 offset 0: (value) format"));

    let counts = reader.merger().counts();
    assert_eq!(counts.duplicate_partials, 1, "the republished window is taken once: {counts:?}");
    assert_eq!(
        (counts.late_partials, counts.late_scores, counts.unknown_source, counts.incomplete_windows),
        (0, 0, 0, 0),
        "{counts:?}"
    );
    assert_eq!(reader.merger().open_windows(), 0);
    let (sites, regions) = same_site_and_region_rows(&whole, &engine, &merged);
    println!("{} windows: {sites} site rows and {regions} region rows, one engine's bit for bit", merged.len());
    assert!(sites > 5_000 && regions > 500, "{sites} {regions}");

    // What was read is committed once the owner says so, not before.
    assert_eq!(reader.committed(Duration::from_secs(10)).expect("committed"), None);
    reader.commit().expect("commit");
    assert_eq!(reader.committed(Duration::from_secs(10)).expect("committed"), Some((published + 2) as i64));
}

#[test]
fn a_partials_topic_of_several_partitions_is_refused_by_name() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    let kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    let merger = WindowMerger::new(&["telemetry-0"], 0, 4);
    let err = PartialsReader::new(&kafka, TOPIC, "termwatch-regional", merger, Duration::from_secs(10))
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("partials topic termwatch-partials has 3 partitions") && msg.contains("exactly one"), "{msg}");
}

#[test]
fn a_record_over_the_producers_limit_is_an_error_naming_its_source_and_size() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let mut kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    kafka.properties.insert("message.max.bytes".into(), "1000".into());
    let mut publisher = StagePublisher::new(&kafka, TOPIC).expect("publisher");
    let lines = history();
    let (mut rows, _) = one_engine(&lines[..3_000], true);
    let big =
        rows.iter_mut().map(window_record).max_by_key(|r| termwatch_features::wire::encode(r).map_or(0, |v| v.len()));
    let err = publisher.publish_partials("telemetry-2", &big.expect("a window")).expect_err("too large");
    let msg = format!("{err:#}");
    assert!(msg.starts_with("telemetry-2's record of ") && msg.contains(" bytes: topic termwatch-partials: "), "{msg}");
    // A record that fits still goes.
    publisher.publish_partials("telemetry-2", &PartialsRecord::Progress(300_000)).expect("queued");
    publisher.flush(Duration::from_secs(10)).expect("delivered");
}

/// A fleet with regional degradations four times as often as the default
/// and site mains faults twenty times, and the shipped models.
fn faulty_history_and_models() -> (Vec<(String, Vec<u8>)>, ModelSet) {
    let mut cfg = SimConfig { terminals: 150, regions: 3, days: 2.0, seed: 43, ..SimConfig::default() };
    cfg.faults.scale_faults(4.0);
    cfg.faults.site_mains_per_1000_site_days *= 5.0;
    // Staged rollouts too, a day apart: their versions are judged by
    // stage 2 on every partition's terminals.
    cfg.faults.staged_rollouts_per_week = 7.0;
    let lines = simulated(cfg);
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    (lines, ModelSet::load(&shipped).expect("models/default"))
}

/// An alert event as compared: all of it (the order of events within a
/// window aside).
fn key(e: &AlertEvent) -> String {
    serde_json::to_string(e).expect("JSON")
}

/// Stage 1 and stage 2 of docs/two-stages.md with both topics between
/// them: three stage-1 scorers, one per partition, publish what they close
/// on the partials topic; stage 2 reads it, merges, scores, and publishes
/// what the closed windows taught on the lessons topic; each stage-1
/// scorer reads every lesson, scores its terminals of the windows it
/// covers, learns it, and publishes their scores and what that lets it
/// close.
struct TwoStages {
    names: Vec<String>,
    replicas: Vec<Scorer>,
    partials: StagePublisher,
    published: u64,
    /// Records of terminal scores published, and their bytes.
    scores: (u64, usize),
    stage2: MergingStage,
    lessons_published: u64,
    learners: Vec<LessonsReader>,
    /// Windows closed by stage 2 (again after a restore), and their ends.
    merged: usize,
    merged_ends: std::collections::BTreeSet<i64>,
    events: Vec<AlertEvent>,
    /// Records of the partials topic before the current reader's first.
    read_before: u64,
    restart: Option<Restart>,
}

/// When stage 2 snapshots (and commits): once it has merged `snapshot_at`
/// windows and an alert is firing; and when it is killed and restored from
/// that snapshot: `kill_after` windows later.
struct Restart {
    kafka: KafkaConfig,
    config: MergingConfig,
    models: ModelSet,
    snapshot_at: usize,
    kill_after: usize,
    /// Windows merged when the snapshot was taken.
    snapshot_merged: usize,
    committed: Option<u64>,
    killed: bool,
}

impl TwoStages {
    /// Snapshots and commits stage 2, then drops it (what it did since the
    /// snapshot is lost with it) and restores a new one from the snapshot,
    /// which reads the partials topic on from the commit ([`Restart`]).
    fn restart(&mut self) {
        let Some(r) = self.restart.as_mut() else { return };
        // While an alert is firing, so that its state must survive.
        if r.committed.is_none() && self.merged >= r.snapshot_at && self.stage2.regional().alerts().firing_len() > 0 {
            self.stage2.checkpoint().expect("snapshot and commit").expect("a snapshot file");
            r.committed = Some(self.read_before + self.stage2.reader().counts().0);
            r.snapshot_merged = self.merged;
        } else if let (Some(committed), false) = (r.committed, r.killed) {
            if self.merged < r.snapshot_merged + r.kill_after {
                return;
            }
            r.killed = true;
            // The old consumer leaves the group as it is dropped.
            let (stage2, started) = MergingStage::start(&r.kafka, &r.config, r.models.clone()).expect("stage 2");
            assert!(matches!(started, Started::Restored(_)), "{started:?}");
            self.stage2 = stage2;
            self.read_before = committed;
            assert!(self.published > committed, "records after the commit to read again");
        }
    }

    /// Publishes what replica `p` has for the partials topic, then its
    /// progress, and, at the end of its history once it holds nothing, that
    /// it has ended: whether it had anything.
    fn publish(&mut self, p: usize, end: bool) -> bool {
        let records = self.replicas[p].take_partials();
        let any = !records.is_empty();
        for r in &records {
            self.partials.publish_partials(&self.names[p], r).expect("queued");
            self.published += 1;
            if matches!(r, PartialsRecord::Scores(_)) {
                self.scores.0 += 1;
                self.scores.1 += termwatch_features::wire::encode(r).expect("encode").len();
            }
        }
        if let Some(through) = self.replicas[p].engine().closed_through() {
            self.partials.publish_partials(&self.names[p], &PartialsRecord::Progress(through)).expect("queued");
            self.published += 1;
        }
        if end && self.replicas[p].engine().open_windows() == 0 && self.replicas[p].held_windows().0 == 0 {
            self.partials.publish_partials(&self.names[p], &PartialsRecord::End).expect("queued");
            self.published += 1;
        }
        any
    }

    /// Stage 2 reads the partials topic up to what was published, scores
    /// what it merges and publishes its lessons; every engine reads them
    /// and publishes what it closes; until nothing moves.
    fn settle(&mut self, ended: &[bool]) {
        loop {
            self.partials.flush(Duration::from_secs(30)).expect("delivered");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut merged_any = false;
            while self.read_before + self.stage2.reader().counts().0 < self.published {
                assert!(Instant::now() < deadline, "read {:?} of {}", self.stage2.reader().counts(), self.published);
                let stepped = self.stage2.step(1_000, Duration::from_millis(100)).expect("stage 2");
                assert!(stepped.unreadable.is_empty(), "{:?}", stepped.unreadable);
                self.events.extend(stepped.events);
                self.merged += stepped.closed.len();
                merged_any |= !stepped.closed.is_empty();
                self.merged_ends.extend(stepped.closed);
                self.lessons_published += stepped.taught;
            }
            self.restart();
            let mut moved = false;
            for (p, &end) in ended.iter().enumerate() {
                while self.learners[p].counts().0 < self.lessons_published {
                    assert!(Instant::now() < deadline, "replica {p} learnt {:?}", self.learners[p].counts());
                    let replica = &mut self.replicas[p];
                    let learnt = self.learners[p].poll(100, Duration::from_millis(100), |v| replica.learn(v));
                    assert!(learnt.error.is_none(), "{:?}", learnt.error);
                    for u in &learnt.unreadable {
                        assert!(u.offset == 0 && matches!(u.error, WireError::Malformed(_)), "{u}");
                    }
                    self.events.extend(learnt.out);
                }
                moved |= self.publish(p, end);
            }
            if !moved && !merged_any {
                return;
            }
        }
    }
}

#[test]
fn three_replicas_and_a_merging_stage_on_the_topic_raise_one_processs_alerts() {
    two_stages_against_one_process(false);
}

#[test]
fn a_merging_stage_killed_and_restored_from_its_snapshot_raises_the_same_alerts() {
    two_stages_against_one_process(true);
}

/// Three replicas, both topics and one regional stage (killed halfway and
/// restored from its snapshot, with `restart`) against one process: the
/// same terminal, site, region and cohort alert events.
fn two_stages_against_one_process(restart: bool) {
    let (lines, models) = faulty_history_and_models();
    // One process: one scorer reading every partition.
    let mut one = Scorer::new(models.clone()).expect("scorer");
    let mut expected = Vec::new();
    one_process(&lines, |batch, runs| expected.extend(one.process_sourced(batch, runs)));
    expected.extend(one.finish());
    let mut expected: Vec<String> = expected.iter().map(key).collect();
    expected.sort();
    let count = |events: &[String], what: &str| events.iter().filter(|e| e.contains(what)).count();
    let (sites, regions) = (count(&expected, "\"scope\":\"site\""), count(&expected, "\"scope\":\"region\""));
    let terminals = count(&expected, "\"scope\":\"terminal\"");
    let cohorts = count(&expected, "\"scope\":\"cohort\"");
    // (Aging takes weeks to page: its rows are scored, and calibrated, all the same.)
    assert!(
        sites >= 2 && regions >= 2 && terminals >= 2 && cohorts >= 1,
        "the fleet pages at every scope: {expected:#?}"
    );

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster.create_topic(LESSONS, 1, 1).expect("topic");
    let mut kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    // A killed stage 2 does not leave its group: its successor is given the
    // partition once the group's session times out (45 s by default).
    kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    // A record on the lessons topic that stage 2 did not write: every
    // engine reads past it, and names it.
    let raw: BaseProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    raw.send(BaseRecord::<str, [u8]>::to(LESSONS).key("lessons").payload(&[wire::FORMAT, 0xff])).expect("queued");
    raw.flush(Duration::from_secs(10)).expect("flushed");
    let names: Vec<String> = (0..PARTITIONS).map(|p| format!("telemetry-{p}")).collect();
    let state = tempfile::tempdir().expect("tempdir");
    let config = MergingConfig {
        partials_topic: TOPIC.into(),
        lessons_topic: LESSONS.into(),
        group: "termwatch-regional".into(),
        sources: names.clone(),
        allowed_lateness_ms: 3_600_000,
        max_open_windows: 64,
        state: restart.then(|| state.path().join("regional.snap")),
        timeout: Duration::from_secs(10),
        keep_scores: false,
    };
    let (stage2, started) = MergingStage::start(&kafka, &config, models.clone()).expect("stage 2");
    assert!(matches!(started, Started::Cold), "{started:?}");
    let mut stages = TwoStages {
        replicas: names.iter().map(|_| Scorer::new(models.clone()).expect("scorer").split()).collect(),
        names: names.clone(),
        partials: StagePublisher::new(&kafka, TOPIC).expect("publisher"),
        published: 0,
        scores: (0, 0),
        stage2,
        // The one above.
        lessons_published: 1,
        learners: names.iter().map(|_| LessonsReader::new(&kafka, LESSONS, None).expect("reader")).collect(),
        merged: 0,
        merged_ends: Default::default(),
        events: Vec::new(),
        read_before: 0,
        restart: restart.then(|| Restart {
            kafka: kafka.clone(),
            config,
            models,
            snapshot_at: 100,
            kill_after: 60,
            snapshot_merged: 0,
            committed: None,
            killed: false,
        }),
    };
    let started = Instant::now();
    let mine: Vec<Vec<&[u8]>> =
        names.iter().map(|n| lines.iter().filter(|(s, _)| s == n).map(|(_, l)| l.as_slice()).collect()).collect();
    let sizes = [400, 700, 250];
    let mut at = [0usize; PARTITIONS as usize];
    let mut ended = [false; PARTITIONS as usize];
    loop {
        let behind = (0..PARTITIONS as usize)
            .filter(|&p| at[p] < mine[p].len())
            .min_by_key(|&p| (stages.replicas[p].engine().closed_through().unwrap_or(i64::MIN), p));
        let Some(p) = behind else { break };
        let end = (at[p] + sizes[p]).min(mine[p].len());
        let events = stages.replicas[p].process_sourced(&batch(&mine[p][at[p]..end]), &[(&names[p], end - at[p])]);
        stages.events.extend(events);
        at[p] = end;
        stages.publish(p, false);
        stages.settle(&ended);
    }
    for (p, end) in ended.iter_mut().enumerate() {
        *end = true;
        let events = stages.replicas[p].finish();
        stages.events.extend(events);
        stages.publish(p, true);
    }
    stages.settle(&ended);
    // The last window's terminal scores have no window after them to go
    // out with: the history is over.
    assert_eq!(stages.stage2.end_of_history(), 1, "the last window's scores wait");
    // Stage 2's calibration took every terminal's scores, as one process's
    // did: the same histograms, so the same thresholds, bit for bit.
    let calibrated =
        |t: &FleetThreshold| (t.kind, t.scope, t.threshold.to_bits(), t.shift.map(f64::to_bits), t.windows.to_bits());
    let ours: Vec<_> = stages.stage2.regional().thresholds().map(|t| calibrated(&t)).collect();
    let theirs: Vec<_> = one.thresholds().map(|t| calibrated(&t)).collect();
    println!("thresholds: {:?}", one.thresholds().collect::<Vec<_>>());
    assert_eq!(ours, theirs);
    assert!(
        stages.replicas.iter().all(|r| r.engine().open_windows() == 0 && r.held_windows() == (0, 0)),
        "every window closed, and every terminal scored with its window's lessons"
    );
    assert_eq!(stages.stage2.reader().merger().open_windows(), 0);
    let counts = stages.stage2.reader().merger().counts();
    assert_eq!(
        (counts.late_partials, counts.late_scores, counts.unknown_source, counts.incomplete_windows),
        (0, 0, 0, 0),
        "{counts:?}"
    );
    // The snapshot and the commit were taken at the same record: nothing
    // read after the restore had been merged before by the stage restored.
    assert_eq!(counts.duplicate_partials, 0, "{counts:?}");
    let again = stages.merged - stages.merged_ends.len();
    match &stages.restart {
        Some(r) => assert!(r.killed && again > 0, "windows closed again after the restore: {again}"),
        None => assert_eq!(again, 0),
    }

    // A restored stage 2 raises again the events of the windows it closed
    // after its snapshot (at least once); each is one of one process's.
    let mut got: Vec<String> = stages.events.iter().map(key).collect();
    got.sort();
    let raised = got.len();
    got.dedup();
    println!("{again} windows closed and {} events raised again after the restart", raised - got.len());
    assert_eq!(stages.learners.iter().map(|l| l.counts()).collect::<Vec<_>>(), vec![(stages.lessons_published, 1); 3]);
    let (_, bytes) = stages.partials.published();
    println!(
        "partials topic: {bytes} bytes; of them terminal scores {} bytes in {} records ({:.1} bytes a record)",
        stages.scores.1,
        stages.scores.0,
        stages.scores.1 as f64 / stages.scores.0.max(1) as f64
    );
    println!(
        "{:.1} s; {} lessons records; {} windows merged; {} terminal, {} site, {} region and {} cohort alert \
         events, one process's: {terminals}, {sites}, {regions} and {cohorts}",
        started.elapsed().as_secs_f64(),
        stages.lessons_published,
        stages.merged,
        count(&got, "\"scope\":\"terminal\""),
        count(&got, "\"scope\":\"site\""),
        count(&got, "\"scope\":\"region\""),
        count(&got, "\"scope\":\"cohort\"")
    );
    assert_eq!(got, expected);
}

/// A window of a stage-1 scorer that stage 2 closed without its partials
/// (late) gets no lessons of its own: once lessons pass it, its terminals
/// are scored at the latest thresholds taught, with no site holding them
/// back, and it is counted. A record that cannot be read changes nothing.
#[test]
fn a_held_window_passed_by_lessons_without_its_own_is_scored_and_counted() {
    let (lines, models) = faulty_history_and_models();
    let mut stage1 = Scorer::new(models).expect("scorer").split();
    let mine: Vec<&[u8]> =
        lines.iter().filter(|(s, _)| s == "telemetry-0").take(2_000).map(|(_, l)| l.as_slice()).collect();
    assert!(stage1.process_sourced(&batch(&mine), &[("telemetry-0", mine.len())]).is_empty(), "nothing scored yet");
    // Before the first lessons, it closes nothing (another replica may
    // have earlier windows); lessons up to its progress let it close one.
    // Then that window waits: its partials go out, its terminals and the
    // windows after it wait for its lessons.
    assert!(stage1.take_partials().is_empty());
    let through_ms = stage1.engine().closed_through().expect("progress");
    let first = Lessons { through_ms, windows: Vec::new() };
    stage1.learn(&termwatch_features::wire::encode(&first).expect("encode")).expect("read");
    let records = stage1.take_partials();
    assert!(matches!(records.as_slice(), [PartialsRecord::Window(_)]), "{records:?}");
    assert_eq!(stage1.held_windows(), (1, 0));
    let PartialsRecord::Window(w) = &records[0] else { unreachable!() };
    let before = stage1.engine().closed_through();
    assert!(stage1.learn(&[wire::FORMAT, 0xff]).is_err());
    assert_eq!((stage1.held_windows(), stage1.engine().closed_through()), ((1, 0), before));
    let lessons = Lessons { through_ms: w.end_ms, windows: Vec::new() };
    stage1.learn(&termwatch_features::wire::encode(&lessons).expect("encode")).expect("read");
    assert_eq!(stage1.held_windows().1, 1, "scored without its lessons, counted");
    // Its terminals' scores go out, and the windows the engine then closed.
    let records = stage1.take_partials();
    assert!(matches!(records.first(), Some(PartialsRecord::Scores(s)) if s.end_ms == w.end_ms), "{records:?}");
    assert!(records[1..].iter().all(|r| matches!(r, PartialsRecord::Window(_))), "{records:?}");
}

/// Lessons a stage-1 scorer reads ahead of its own windows (a replica
/// restored behind the merging stage) wait for it, within bounds both in
/// records and in bytes as they came: past either, the oldest is learnt
/// whole, as if its windows had closed.
#[test]
fn a_stage_one_scorer_keeps_lessons_ahead_of_it_within_its_bounds() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let models = ModelSet::load(&shipped).expect("models/default");
    // One window each, far ahead of a scorer that has read no telemetry,
    // made as large as wanted with the names of bad sites (64 bytes each).
    let record = |i: i64, sites: usize| {
        let end_ms = 1_800_000_000_000 + i * 300_000;
        let bad_sites = (0..sites).map(|s| format!("S-{i:06}-{s:055}").into_boxed_str()).collect();
        let window = WindowLessons { end_ms, cohorts: Default::default(), bad_sites, thresholds: Vec::new() };
        wire::encode(&Lessons { through_ms: end_ms, windows: vec![window] }).expect("encode")
    };
    // Small records: the count binds.
    let mut s = Scorer::new(models.clone()).expect("scorer").split();
    for i in 0..300 {
        s.learn(&record(i, 1)).expect("read");
        assert!(s.pending_lessons().0 <= MAX_PENDING_LESSONS, "{:?} after {i}", s.pending_lessons());
    }
    assert_eq!(s.pending_lessons().0, MAX_PENDING_LESSONS);
    // Records of a megabyte, the size of the largest a topic takes by
    // default: the bytes bind, long before the count.
    let big = record(0, 16_000).len();
    assert!(big > 1_000_000, "{big} bytes");
    let mut s = Scorer::new(models).expect("scorer").split();
    for i in 0..60 {
        s.learn(&record(i, 16_000)).expect("read");
        assert!(s.pending_lessons().1 <= MAX_PENDING_LESSON_BYTES, "{:?} after {i}", s.pending_lessons());
    }
    let (records, bytes) = s.pending_lessons();
    assert_eq!(records, MAX_PENDING_LESSON_BYTES / big, "{records} records of {bytes} bytes");
    assert_eq!(bytes, records * big);
}

/// Stage 2 as one stage-1 scorer alone sees it: the windows it has taught
/// through, and the cohorts it has learnt of this partition's lessons. It
/// is kept from call to call as the merging stage keeps it: a teacher
/// started afresh at each call would teach the same window differently
/// depending on how many windows the call found closed.
#[derive(Clone)]
struct Stage2Alone {
    taught: Option<i64>,
    teacher: CohortTeacher,
}

impl Stage2Alone {
    fn new(s: &Scorer) -> Self {
        Stage2Alone { taught: None, teacher: CohortTeacher::new(s.engine().config()) }
    }
}

/// Plays stage 2 for one stage-1 scorer alone: teaches each window it
/// publishes, with its first site judged bad and a terminal voltage
/// threshold low enough that terminals page, then its progress; until it
/// publishes nothing more. Returns the alert events; the records go to
/// `published`.
fn teach_alone(s: &mut Scorer, stage2: &mut Stage2Alone, published: &mut Vec<PartialsRecord>) -> Vec<AlertEvent> {
    teach_logged(s, stage2, published, &mut Vec::new())
}

/// [`teach_alone`], keeping each lessons record taught in `sent`.
fn teach_logged(
    s: &mut Scorer,
    stage2: &mut Stage2Alone,
    published: &mut Vec<PartialsRecord>,
    sent: &mut Vec<Vec<u8>>,
) -> Vec<AlertEvent> {
    let Stage2Alone { taught, teacher } = stage2;
    teach_as(s, taught, published, sent, |w| WindowLessons {
        end_ms: w.end_ms,
        cohorts: teacher.learn(w.end_ms, &w.cohorts),
        bad_sites: w.sites.first().map(|(site, _)| site.clone()).into_iter().collect(),
        thresholds: vec![(AlertKind::VoltageInstability, Scope::Terminal, 0.05, CRITICAL_OFF)],
    })
}

/// [`teach_alone`] with each window's lessons from `lessons`.
fn teach_as(
    s: &mut Scorer,
    taught: &mut Option<i64>,
    published: &mut Vec<PartialsRecord>,
    sent: &mut Vec<Vec<u8>>,
    mut lessons: impl FnMut(&WindowPartials) -> WindowLessons,
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    loop {
        let records = s.take_partials();
        let windows: Vec<WindowLessons> = records
            .iter()
            .filter_map(|r| match r {
                PartialsRecord::Window(w) => Some(lessons(w)),
                _ => None,
            })
            .collect();
        published.extend(records);
        let lessons = match windows.last() {
            Some(last) => Lessons { through_ms: last.end_ms, windows },
            None => match s.engine().closed_through() {
                Some(through_ms) if Some(through_ms) > *taught => Lessons { through_ms, windows },
                _ => return events,
            },
        };
        *taught = Some(lessons.through_ms);
        let record = termwatch_features::wire::encode(&lessons).expect("encode");
        events.extend(s.learn(&record).expect("read"));
        sent.push(record);
    }
}

/// A stage-1 scorer restored from a snapshot taken while a window waits for
/// its lessons (and an alert fires) goes on as if never stopped: the same
/// alert events and the same records for the partials topic (those its
/// owner had not taken first). A one-process scorer refuses its snapshot,
/// which would lose the window.
#[test]
fn a_stage_one_scorer_restored_while_a_window_waits_goes_on_as_if_never_stopped() {
    let (lines, models) = faulty_history_and_models();
    let mut mine: Vec<&[u8]> = lines.iter().filter(|(s, _)| s == "telemetry-0").map(|(_, l)| l.as_slice()).collect();
    // In event-time order: a restored engine takes a report older than its
    // terminal's latest for one replayed from before the snapshot (and
    // skips it), which is the restore's contract, not this test's subject.
    mine.sort_by_key(|l| decode(l, i64::MAX / 2).map_or(0, |r| r.ts_ms));
    let mut running = Scorer::new(models.clone()).expect("scorer").split();
    let mut stage2 = Stage2Alone::new(&running);
    // The restored scorer, and its stage 2 as it was at the snapshot.
    let mut restored: Option<(Scorer, Stage2Alone)> = None;
    let (mut published, mut published_restored) = (Vec::new(), Vec::new());
    let (mut events, mut events_restored) = (Vec::new(), Vec::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stage-one.snap");
    for chunk in mine.chunks(300) {
        let b = batch(chunk);
        events.extend(running.process_sourced(&b, &[("telemetry-0", chunk.len())]));
        if let Some((r, _)) = restored.as_mut() {
            events_restored.extend(r.process_sourced(&b, &[("telemetry-0", chunk.len())]));
        } else if running.held_windows().0 > 0 && running.alerts().firing_len() > 0 {
            running.save_snapshot(&path, "test").expect("snapshot");
            let mut r = Scorer::new(models.clone()).expect("scorer").split();
            r.restore_snapshot(&path).expect("restored");
            assert_eq!(r.held_windows(), running.held_windows());
            restored = Some((r, stage2.clone()));
            // What it publishes from now on, the running one too.
            published.clear();
            events.clear();
        }
        events.extend(teach_alone(&mut running, &mut stage2, &mut published));
        if let Some((r, stage2_restored)) = restored.as_mut() {
            events_restored.extend(teach_alone(r, stage2_restored, &mut published_restored));
        }
    }
    assert!(restored.is_some(), "a window waited while an alert fired");
    assert!(!events.is_empty(), "terminals page after the restore");
    assert_eq!(events.iter().map(key).collect::<Vec<_>>(), events_restored.iter().map(key).collect::<Vec<_>>());
    // Compared as encoded: a NaN in a partial is not equal to itself.
    let encoded = |r: &[PartialsRecord]| -> Vec<Vec<u8>> {
        r.iter().map(|r| termwatch_features::wire::encode(r).expect("encode")).collect()
    };
    assert_eq!(encoded(&published), encoded(&published_restored));
    assert!(published.iter().any(|r| matches!(r, PartialsRecord::Scores(_))));
    let refused = Scorer::new(models).expect("scorer").restore_snapshot(&path).expect_err("one process refuses it");
    assert!(refused.to_string().contains("stage-1") && refused.to_string().contains("stage-one.snap"), "{refused}");
}

/// Lessons no stage 2 would write: sites judged bad out of name order, and
/// thresholds that are not probabilities every other window. The sites
/// are taken whatever their order, and the thresholds taught last stay in
/// use: the same alert events as from the lessons stage 2 writes.
#[test]
fn lessons_out_of_order_or_with_thresholds_that_are_not_probabilities_change_nothing() {
    let (lines, models) = faulty_history_and_models();
    let mut mine: Vec<&[u8]> = lines.iter().filter(|(s, _)| s == "telemetry-1").map(|(_, l)| l.as_slice()).collect();
    mine.sort_by_key(|l| decode(l, i64::MAX / 2).map_or(0, |r| r.ts_ms));
    let lessons = |hostile: bool| {
        let mut n = 0;
        let mut teacher = CohortTeacher::new(&models.features);
        move |w: &WindowPartials| {
            n += 1;
            // Every other site, in name order from stage 2.
            let mut bad_sites: Vec<Box<str>> = w.sites.iter().step_by(2).map(|(s, _)| s.clone()).collect();
            let mut threshold = 0.05;
            if hostile {
                bad_sites.reverse();
                if n % 2 == 0 {
                    threshold = f64::NAN;
                }
            }
            WindowLessons {
                end_ms: w.end_ms,
                cohorts: teacher.learn(w.end_ms, &w.cohorts),
                bad_sites,
                thresholds: vec![(AlertKind::VoltageInstability, Scope::Terminal, threshold, CRITICAL_OFF)],
            }
        }
    };
    let run = |hostile: bool| {
        let mut s = Scorer::new(models.clone()).expect("scorer").split();
        let (mut taught, mut published, mut events) = (None, Vec::new(), Vec::new());
        let mut teach = lessons(hostile);
        for chunk in mine.chunks(500) {
            events.extend(s.process_sourced(&batch(chunk), &[("telemetry-1", chunk.len())]));
            events.extend(teach_as(&mut s, &mut taught, &mut published, &mut Vec::new(), &mut teach));
        }
        events.iter().map(key).collect::<Vec<_>>()
    };
    let (good, hostile) = (run(false), run(true));
    assert!(!good.is_empty(), "terminals page at that threshold");
    assert_eq!(good, hostile);
}

/// A stage-1 scorer restored from a snapshot its predecessor had gone on
/// past (a replica killed some windows after its last snapshot) reads the
/// lessons its predecessor learnt since then before the reports it must
/// score again: it learns each window's only once it has closed that
/// window again, so it gives the predecessor's alert events and records
/// for the partials topic. Learnt as they came, the lessons would let it
/// close those windows all at once, and score their terminals without
/// their sites' verdicts.
#[test]
fn a_stage_one_scorer_restored_behind_its_lessons_learns_them_as_it_catches_up() {
    let (lines, models) = faulty_history_and_models();
    let mut mine: Vec<&[u8]> = lines.iter().filter(|(s, _)| s == "telemetry-2").map(|(_, l)| l.as_slice()).collect();
    mine.sort_by_key(|l| decode(l, i64::MAX / 2).map_or(0, |r| r.ts_ms));
    let mut running = Scorer::new(models.clone()).expect("scorer").split();
    let mut stage2 = Stage2Alone::new(&running);
    let (mut published, mut events, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stage-one.snap");
    let chunks: Vec<&[&[u8]]> = mine.chunks(200).collect();
    let mut after = None;
    for (i, chunk) in chunks.iter().enumerate() {
        events.extend(running.process_sourced(&batch(chunk), &[("telemetry-2", chunk.len())]));
        if after.is_none() && running.held_windows().0 > 0 && running.alerts().firing_len() > 0 {
            running.save_snapshot(&path, "test").expect("snapshot");
            after = Some(i + 1);
            // What it does from now on.
            published.clear();
            events.clear();
            sent.clear();
        }
        events.extend(teach_logged(&mut running, &mut stage2, &mut published, &mut sent));
        if after.is_some_and(|a| i >= a + 150) {
            break;
        }
    }
    let after = after.expect("a window waited while an alert fired");
    assert!(sent.len() >= 10, "lessons of many windows past the snapshot: {}", sent.len());
    let mut restored = Scorer::new(models).expect("scorer").split();
    restored.restore_snapshot(&path).expect("restored");
    let mut again = Vec::new();
    for record in &sent {
        again.extend(restored.learn(record).expect("read"));
    }
    for chunk in &chunks[after..=after + 150] {
        again.extend(restored.process_sourced(&batch(chunk), &[("telemetry-2", chunk.len())]));
    }
    let encoded = |r: &[PartialsRecord]| -> Vec<Vec<u8>> {
        r.iter().map(|r| termwatch_features::wire::encode(r).expect("encode")).collect()
    };
    assert_eq!(restored.held_windows(), running.held_windows());
    assert_eq!(encoded(&restored.take_partials()), encoded(&published));
    let sorted = |e: &[AlertEvent]| {
        let mut k: Vec<String> = e.iter().map(key).collect();
        k.sort();
        k
    };
    assert!(!events.is_empty(), "terminals page after the snapshot");
    assert_eq!(sorted(&again), sorted(&events));
}

/// With no lessons coming (stage 2 down), a stage-1 scorer holds its
/// windows open; `Scorer::shed` bounds them: the oldest close on the
/// scorer's own lessons, and held windows past the bound are scored
/// without lessons of their own, counted.
#[test]
fn a_stage_one_scorer_without_lessons_sheds_to_its_bounds() {
    let (lines, models) = faulty_history_and_models();
    let mut mine: Vec<&[u8]> = lines.iter().filter(|(s, _)| s == "telemetry-0").map(|(_, l)| l.as_slice()).collect();
    mine.sort_by_key(|l| decode(l, i64::MAX / 2).map_or(0, |r| r.ts_ms));
    let mut s = Scorer::new(models).expect("scorer").split();
    let (mut most_open, mut most_held) = (0, 0);
    for chunk in mine.chunks(2_000) {
        s.process_sourced(&batch(chunk), &[("telemetry-0", chunk.len())]);
        most_open = most_open.max(s.engine().open_windows());
        s.shed(8, 4);
        assert!(s.engine().open_windows() <= 8, "{} open", s.engine().open_windows());
        assert!(s.held_windows().0 <= 4, "{:?} held", s.held_windows());
        most_held = most_held.max(s.held_windows().0);
    }
    assert!(most_open > 8, "without lessons the windows pile up: {most_open}");
    assert_eq!(most_held, 4);
    assert!(s.held_windows().1 > 0, "held windows scored without lessons are counted");
    assert!(s.engine().counters().learnt_alone > 0);
    assert!(s.take_partials().iter().any(|r| matches!(r, PartialsRecord::Window(_))), "what it closed goes out");
}
