//! `termwatch run` as stage 2 (`stages.role = "regional"`) against
//! librdkafka's mock cluster: three stage-1 scorers, one per partition of
//! the telemetry topic, publish their partials and learn the lessons the
//! process publishes; the process's site, region and cohort alert events are one
//! process's, its `/metrics` say what it merged, and SIGTERM leaves a
//! snapshot and a commit that a restarted process reads on from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use termwatch_alerts::scoring::Scorer;
use termwatch_alerts::stage_topics::{LessonsReader, StagePublisher};
use termwatch_features::wire::PartialsRecord;
use termwatch_features::{FNV_OFFSET, fnv1a};
use termwatch_models::artifact::ModelSet;
use termwatch_pipeline::KafkaConfig;
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::{AlertEvent, Scope};
use termwatch_telemetry::{BatchBuilder, decode};

const TELEMETRY: &str = "telemetry";
const PARTIALS: &str = "termwatch-partials";
const LESSONS: &str = "termwatch-lessons";
const PARTITIONS: usize = 3;

fn batch(lines: &[&[u8]]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&decode(l, i64::MAX / 2).expect("valid")).expect("append");
    }
    b.finish().expect("batch")
}

/// A fleet with regional degradations and site mains faults more often
/// than the default, each report with the partition Kafka's keying by
/// `terminal_id` gives it.
fn history() -> Vec<(usize, Vec<u8>)> {
    history_every(SimConfig::default().interval_s)
}

/// [`history`] with a report every `interval_s`.
fn history_every(interval_s: u32) -> Vec<(usize, Vec<u8>)> {
    let mut cfg = SimConfig { terminals: 150, regions: 3, days: 2.0, seed: 43, interval_s, ..SimConfig::default() };
    cfg.faults.scale_faults(4.0);
    cfg.faults.site_mains_per_1000_site_days *= 5.0;
    // Staged rollouts, a day apart: stage 2 judges their versions on every
    // partition's terminals.
    cfg.faults.staged_rollouts_per_week = 7.0;
    let mut sim = Simulator::new(cfg).expect("simulator");
    let (mut out, mut buf) = (Vec::new(), Vec::new());
    while sim.next_record(&mut buf).is_some() {
        if let Ok(t) = decode(&buf, i64::MAX / 2) {
            let p = fnv1a(FNV_OFFSET, t.terminal_id.as_bytes()) % PARTITIONS as u64;
            out.push((p as usize, buf.clone()));
        }
    }
    out
}

fn models() -> ModelSet {
    ModelSet::load(&workspace().join("models/default/model.json")).expect("models/default")
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn key(e: &AlertEvent) -> String {
    serde_json::to_string(e).expect("JSON")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `/metrics` as text, or None while the endpoint is not up.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the series `series` (name and labels, as exported).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// Stage 2: `termwatch run` with the regional role, its alert events read
/// from its standard output as they come, and what it logs kept.
struct StageTwo {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    said: Arc<Mutex<String>>,
}

/// A test that fails leaves no process behind.
impl Drop for StageTwo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StageTwo {
    /// Snapshots (and commits) every `interval_s` and on SIGTERM.
    fn start(brokers: &str, state: &std::path::Path, interval_s: &str, extra: &[(&str, &str)]) -> StageTwo {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
        cmd.arg("run").current_dir(workspace());
        // termwatch refuses TERMWATCH_* variables it does not know.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERMWATCH_")) {
            cmd.env_remove(k);
        }
        cmd.env("TERMWATCH_STAGES_ROLE", "regional")
            .env("TERMWATCH_KAFKA_BROKERS", brokers)
            .env("TERMWATCH_KAFKA_TOPICS", TELEMETRY)
            .env("TERMWATCH_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("TERMWATCH_STATE_PATH", state)
            .env("TERMWATCH_STATE_INTERVAL_S", interval_s)
            .env("TERMWATCH_KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "5")
            .env("TERMWATCH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starts termwatch run");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Read as it comes, so that a full pipe never blocks the process.
        let said = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let keep = Arc::clone(&said);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut said = keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                said.push_str(&line);
                said.push('\n');
            }
        });
        StageTwo { child, port, lines, said }
    }

    fn said(&self) -> String {
        self.said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The alert events written since the last call (all of them once the
    /// process has ended).
    fn events(&self) -> Vec<AlertEvent> {
        self.lines.try_iter().map(|l| serde_json::from_str(&l).expect("alerts-v1 NDJSON")).collect()
    }

    /// Waits until `/metrics` satisfies `cond`; fails with what the process
    /// said if it does not within a minute.
    fn wait(&mut self, what: &str, cond: impl FnMut(&str) -> bool) -> String {
        self.wait_for(Duration::from_secs(60), what, cond)
    }

    /// [`StageTwo::wait`], up to `timeout`.
    fn wait_for(&mut self, timeout: Duration, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(text) = scrape(self.port).filter(|t| cond(t)) {
                return text;
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what}; /metrics: {:?}; termwatch said: {}", scrape(self.port), self.said());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it holds the partials partition, by its `/metrics`.
    fn holding(&self) -> bool {
        scrape(self.port).is_some_and(|t| value(&t, "termwatch_partials_assigned") == Some(1.0))
    }

    fn sigterm(mut self) -> String {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                break exit;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread has the rest once the pipe closes.
        std::thread::sleep(Duration::from_millis(200));
        let said = self.said();
        assert!(exit.success(), "{exit}: {said}");
        said
    }
}

/// Stage 1: one split scorer per partition, publishing what it has.
struct StageOne {
    names: Vec<String>,
    replicas: Vec<Scorer>,
    learners: Vec<LessonsReader>,
    partials: StagePublisher,
    /// Reads the lessons topic's end.
    watermarks: BaseConsumer,
    /// Records published, and each replica's progress last published.
    published: u64,
    progress: Vec<Option<i64>>,
    /// Whether each replica has published its end.
    ended: Vec<bool>,
    events: Vec<AlertEvent>,
}

impl StageOne {
    /// Publishes replica `p`'s records, its progress when it moved, and at
    /// the end of its history once it holds nothing, that it has ended:
    /// whether it had anything.
    fn publish(&mut self, p: usize, end: bool) -> bool {
        let records = self.replicas[p].take_partials();
        for r in &records {
            self.partials.publish_partials(&self.names[p], r).expect("queued");
        }
        let mut sent = records.len() as u64;
        let through = self.replicas[p].engine().closed_through();
        if let Some(t) = through.filter(|_| through != self.progress[p]) {
            self.partials.publish_partials(&self.names[p], &PartialsRecord::Progress(t)).expect("queued");
            self.progress[p] = through;
            sent += 1;
        }
        let done = self.replicas[p].engine().open_windows() == 0 && self.replicas[p].held_windows().0 == 0;
        if end && done && !self.ended[p] {
            self.partials.publish_partials(&self.names[p], &PartialsRecord::End).expect("queued");
            self.ended[p] = true;
            sent += 1;
        }
        self.published += sent;
        sent > 0
    }

    /// Until nothing moves: the stage 2 holding the partials partition has
    /// merged every window all replicas have passed (its `/metrics` say
    /// so), every replica learns every lesson on the topic, and publishes
    /// what that lets it close.
    fn settle(&mut self, stage2: &mut [StageTwo], ended: &[bool]) {
        loop {
            self.partials.flush(Duration::from_secs(30)).expect("delivered");
            let passed = self.progress.iter().copied().min().flatten();
            let all_ended = self.ended.iter().all(|e| *e);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let merged = stage2.iter().filter_map(|s| scrape(s.port)).find(|t| {
                    value(t, "termwatch_partials_assigned") == Some(1.0)
                        && match passed {
                            None => true,
                            Some(ms) if all_ended => {
                                value(t, "termwatch_merging_open_windows") == Some(0.0)
                                    && value(t, "termwatch_merged_through_timestamp_seconds")
                                        .is_some_and(|s| s * 1000.0 >= ms as f64)
                            }
                            Some(ms) => value(t, "termwatch_merged_through_timestamp_seconds")
                                .is_some_and(|s| s * 1000.0 >= ms as f64),
                        }
                });
                if merged.is_some() {
                    break;
                }
                let said: Vec<String> = stage2.iter().map(StageTwo::said).collect();
                assert!(Instant::now() < deadline, "stage 2 merged through {passed:?}: it said {said:#?}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let (_, lessons) =
                self.watermarks.fetch_watermarks(LESSONS, 0, Duration::from_secs(10)).expect("watermarks");
            let mut moved = false;
            for (p, &end) in ended.iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(60);
                while self.learners[p].next_offset() < lessons {
                    assert!(
                        Instant::now() < deadline,
                        "replica {p} learnt to {} of {lessons}",
                        self.learners[p].next_offset()
                    );
                    let replica = &mut self.replicas[p];
                    let learnt = self.learners[p].poll(100, Duration::from_millis(100), |v| replica.learn(v));
                    assert!(learnt.unreadable.is_empty() && learnt.error.is_none(), "{learnt:?}");
                    self.events.extend(learnt.out);
                }
                moved |= self.publish(p, end);
            }
            if !moved {
                return;
            }
        }
    }
}

/// One process's site, region and cohort alert events, and its terminal ones, on
/// the history; and the history by partition.
fn one_process(lines: &[(usize, Vec<u8>)], models: &ModelSet) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut one = Scorer::new(models.clone()).expect("scorer");
    let names: Vec<String> = (0..PARTITIONS).map(|p| format!("{TELEMETRY}-{p}")).collect();
    let mut expected = Vec::new();
    for chunk in lines.chunks(500) {
        let mut runs: Vec<(&str, usize)> = Vec::new();
        for (p, _) in chunk {
            match runs.last_mut() {
                Some((name, n)) if *name == names[*p] => *n += 1,
                _ => runs.push((&names[*p], 1)),
            }
        }
        let lines: Vec<&[u8]> = chunk.iter().map(|(_, l)| l.as_slice()).collect();
        expected.extend(one.process_sourced(&batch(&lines), &runs));
    }
    expected.extend(one.finish());
    let regional = at_scope(&expected, &[Scope::Site, Scope::Region, Scope::Cohort]);
    let terminal = at_scope(&expected, &[Scope::Terminal]);
    assert!(regional.len() >= 4 && terminal.len() >= 2, "the fleet pages at every scope: {regional:#?}");
    println!("one process: {} cohort alert events", at_scope(&expected, &[Scope::Cohort]).len());
    // The site and region detectors' thresholds in use, as `/metrics`
    // shows them: the fleet calibration stage 2 keeps from its own scores.
    let thresholds = one
        .thresholds()
        .filter(|t| t.scope != Scope::Terminal && t.scope != Scope::Cohort)
        .map(|t| {
            format!(
                "termwatch_detector_threshold{{kind=\"{}\",scope=\"{}\",source=\"in_use\"}} {}",
                t.kind, t.scope, t.threshold
            )
        })
        .collect();
    (regional, terminal, thresholds)
}

/// Whether `/metrics` shows every one of `thresholds`, bit for bit.
fn calibrated_as(text: &str, thresholds: &[String]) -> bool {
    thresholds.iter().all(|t| {
        let (series, v) = t.rsplit_once(' ').expect("series and value");
        value(text, series).map(f64::to_bits) == v.parse::<f64>().ok().map(f64::to_bits)
    })
}

/// The events at `scopes`, each once, in order.
fn at_scope(events: &[AlertEvent], scopes: &[Scope]) -> Vec<String> {
    let mut keys: Vec<String> = events.iter().filter(|e| scopes.contains(&e.scope)).map(key).collect();
    keys.sort();
    keys.dedup();
    keys
}

struct Cluster {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    kafka: KafkaConfig,
}

fn cluster() -> Cluster {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TELEMETRY, PARTITIONS as i32, 1).expect("topic");
    cluster.create_topic(PARTIALS, 1, 1).expect("topic");
    cluster.create_topic(LESSONS, 1, 1).expect("topic");
    let kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    Cluster { _cluster: cluster, kafka }
}

impl StageOne {
    fn new(kafka: &KafkaConfig, models: &ModelSet) -> StageOne {
        let names: Vec<String> = (0..PARTITIONS).map(|p| format!("{TELEMETRY}-{p}")).collect();
        StageOne {
            replicas: names.iter().map(|_| Scorer::new(models.clone()).expect("scorer").split()).collect(),
            learners: names.iter().map(|_| LessonsReader::new(kafka, LESSONS, None).expect("reader")).collect(),
            names,
            partials: StagePublisher::new(kafka, PARTIALS).expect("publisher"),
            watermarks: ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("client"),
            published: 0,
            progress: vec![None; PARTITIONS],
            ended: vec![false; PARTITIONS],
            events: Vec::new(),
        }
    }

    /// Feeds each replica its partition's reports, the one furthest behind
    /// first, settling after each batch; `between` runs after each.
    fn run(
        &mut self,
        lines: &[(usize, Vec<u8>)],
        stage2: &mut Vec<StageTwo>,
        mut between: impl FnMut(usize, &mut Vec<StageTwo>),
    ) {
        let mine: Vec<Vec<&[u8]>> = (0..PARTITIONS)
            .map(|p| lines.iter().filter(|(q, _)| *q == p).map(|(_, l)| l.as_slice()).collect())
            .collect();
        let mut at = [0usize; PARTITIONS];
        let mut ended = [false; PARTITIONS];
        let mut batches = 0;
        loop {
            let behind = (0..PARTITIONS)
                .filter(|&p| at[p] < mine[p].len())
                .min_by_key(|&p| (self.replicas[p].engine().closed_through().unwrap_or(i64::MIN), p));
            let Some(p) = behind else { break };
            let end = (at[p] + 4_000).min(mine[p].len());
            let name = self.names[p].clone();
            let events = self.replicas[p].process_sourced(&batch(&mine[p][at[p]..end]), &[(&name, end - at[p])]);
            self.events.extend(events);
            at[p] = end;
            self.publish(p, false);
            self.settle(stage2, &ended);
            batches += 1;
            between(batches, stage2);
        }
        for (p, end) in ended.iter_mut().enumerate() {
            *end = true;
            let events = self.replicas[p].finish();
            self.events.extend(events);
            self.publish(p, true);
        }
        self.settle(stage2, &ended);
        assert!(
            self.replicas.iter().all(|r| r.engine().open_windows() == 0 && r.held_windows() == (0, 0)),
            "every window closed, and every terminal scored with its window's lessons"
        );
    }
}

#[test]
fn a_regional_process_raises_one_processs_site_and_region_alerts_and_resumes_from_its_snapshot() {
    let lines = history();
    let models = models();
    let (regional, terminal, thresholds) = one_process(&lines, &models);
    let c = cluster();
    let state = tempfile::tempdir().expect("tempdir");
    // Only SIGTERM snapshots it.
    let mut stage2 = vec![StageTwo::start(&c.kafka.brokers, state.path(), "3600", &[])];
    stage2[0].wait("holding the partials partition", |t| value(t, "termwatch_partials_assigned") == Some(1.0));

    let mut stage1 = StageOne::new(&c.kafka, &models);
    let started = Instant::now();
    stage1.run(&lines, &mut stage2, |_, _| {});
    let mut stage2 = stage2.pop().expect("stage 2");
    let published = stage1.published as f64;
    let text = stage2.wait("every partial read", |t| {
        value(t, "termwatch_partials_records_total{outcome=\"read\"}") == Some(published)
    });
    println!("{:.1} s for {} partials records", started.elapsed().as_secs_f64(), stage1.published);

    // Every window merged from every source, nothing dropped.
    let windows = value(&text, "termwatch_merged_windows_total{completeness=\"complete\"}").expect("windows");
    assert!(windows >= 576.0, "two days of 5-minute windows: {windows}");
    assert_eq!(value(&text, "termwatch_merged_windows_total{completeness=\"incomplete\"}"), Some(0.0));
    for reason in ["duplicate", "late", "unknown_source", "late_scores"] {
        assert_eq!(
            value(&text, &format!("termwatch_partials_dropped_total{{reason=\"{reason}\"}}")),
            Some(0.0),
            "{reason}"
        );
    }
    assert_eq!(value(&text, "termwatch_partials_records_total{outcome=\"unreadable\"}"), Some(0.0));
    assert!(value(&text, "termwatch_lessons_published_total").is_some_and(|n| n >= windows.min(576.0) / 2.0));
    // Stage 2 keeps the fleet calibration of the terminal detectors it
    // teaches stage 1, and exports it.
    assert!(
        text.contains(
            "termwatch_detector_threshold{kind=\"voltage_instability\",scope=\"terminal\",source=\"in_use\"}"
        ),
        "{text}"
    );
    // Its own: site and region scores, no terminal state.
    assert!(text.contains("termwatch_anomaly_score_count{kind=\"network_degradation\",scope=\"region\"}"), "{text}");
    assert_eq!(value(&text, "termwatch_tracked_terminals"), Some(0.0), "stage 2 holds no terminals");
    assert!(calibrated_as(&text, &thresholds), "one process's site and region calibration: {thresholds:#?} {text}");

    let mut raised = stage2.events();
    let got = at_scope(&raised, &[Scope::Site, Scope::Region, Scope::Cohort]);
    assert_eq!(got, regional, "stage 2's site, region and cohort alert events are one process's");
    assert_eq!(at_scope(&stage1.events, &[Scope::Terminal]), terminal, "stage 1's terminal alert events too");

    // SIGTERM: a snapshot, then a commit of what it covers; a new process
    // restores it and has nothing to read again.
    let merged_through = value(&text, "termwatch_merged_through_timestamp_seconds").expect("merged through");
    let snapshot = state.path().join("regional.snap");
    assert!(!snapshot.exists(), "not due before an hour");
    let said = stage2.sigterm();
    assert!(said.contains("stage 2 stopped"), "{said}");
    assert!(snapshot.exists());
    let mut again = StageTwo::start(&c.kafka.brokers, state.path(), "1", &[]);
    again.wait("restored", |t| value(t, "termwatch_merged_through_timestamp_seconds") == Some(merged_through));
    std::thread::sleep(Duration::from_secs(2));
    let text = scrape(again.port).expect("metrics");
    assert_eq!(
        value(&text, "termwatch_partials_records_total{outcome=\"read\"}"),
        Some(0.0),
        "read on from the commit"
    );
    raised.extend(again.events());
    assert_eq!(raised.len(), stage2_events_len(&raised), "no alert event raised twice");
    let said = again.sigterm();
    assert!(said.contains("restored from its snapshot"), "{said}");
}

/// How many distinct events `events` holds.
fn stage2_events_len(events: &[AlertEvent]) -> usize {
    let mut keys: Vec<String> = events.iter().map(key).collect();
    keys.sort();
    keys.dedup();
    keys.len()
}

/// Two stage-2 processes on one state directory: one merges, the other
/// stands by. The one merging is killed with `kill -9` halfway; the other
/// is given the partials partition once the group's session times out,
/// takes the snapshot the killed one last wrote, and reads on from its
/// commit: together they raise one process's site and region alerts, each
/// at least once, and every window is merged from every source.
#[test]
fn a_standby_regional_process_takes_over_from_a_killed_one_where_it_last_checkpointed() {
    let lines = history();
    let models = models();
    let (regional, terminal, thresholds) = one_process(&lines, &models);
    let c = cluster();
    let state = tempfile::tempdir().expect("tempdir");
    // A killed member leaves no group: its partition moves once its session
    // times out (45 s by default).
    let session = [
        ("TERMWATCH_KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000"),
        ("TERMWATCH_KAFKA_PROPERTY_HEARTBEAT_INTERVAL_MS", "500"),
    ];
    let mut stage2 = vec![StageTwo::start(&c.kafka.brokers, state.path(), "1", &session)];
    stage2[0].wait("holding the partials partition", |t| value(t, "termwatch_partials_assigned") == Some(1.0));
    stage2.push(StageTwo::start(&c.kafka.brokers, state.path(), "1", &session));
    stage2[1].wait("up", |t| t.contains("termwatch_partials_assigned"));
    // The group rebalances as the second joins: one of the two merges.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stage2.iter().filter(|s| s.holding()).count() != 1 {
        assert!(Instant::now() < deadline, "neither or both hold the partition");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut stage1 = StageOne::new(&c.kafka, &models);
    let mut killed: Option<StageTwo> = None;
    stage1.run(&lines, &mut stage2, |_, stage2| {
        let Some(active) = stage2.iter().position(StageTwo::holding) else { return };
        let merged = scrape(stage2[active].port)
            .and_then(|t| value(&t, "termwatch_merged_windows_total{completeness=\"complete\"}"))
            .unwrap_or(0.0);
        // Halfway through the history, once it has snapshotted what it merged.
        if merged >= 250.0 && killed.is_none() {
            std::thread::sleep(Duration::from_millis(1_500));
            let mut victim = stage2.remove(active);
            let t = scrape(victim.port).expect("metrics");
            println!(
                "killed after {:?} records and {:?} windows",
                value(&t, "termwatch_partials_records_total{outcome=\"read\"}"),
                value(&t, "termwatch_merged_windows_total{completeness=\"complete\"}")
            );
            victim.child.kill().expect("kill -9");
            victim.child.wait().expect("reaped");
            killed = Some(victim);
        }
    });
    let killed = killed.expect("killed halfway");
    let survivor = &mut stage2[0];
    let text = survivor.wait("every window merged", |t| value(t, "termwatch_merging_open_windows") == Some(0.0));
    assert_eq!(value(&text, "termwatch_merged_windows_total{completeness=\"incomplete\"}"), Some(0.0), "{text}");
    // It went on with the killed one's fleet calibration: cold, it would
    // have half the windows.
    assert!(calibrated_as(&text, &thresholds), "one process's site and region calibration: {thresholds:#?} {text}");

    println!(
        "the survivor read {:?} of {} partials records published, {:?} duplicates",
        value(&text, "termwatch_partials_records_total{outcome=\"read\"}"),
        stage1.published,
        value(&text, "termwatch_partials_dropped_total{reason=\"duplicate\"}")
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut raised = killed.events();
    raised.extend(survivor.events());
    let distinct = stage2_events_len(&raised);
    println!("{} site, region and cohort events raised, {distinct} distinct", raised.len());
    assert_eq!(
        at_scope(&raised, &[Scope::Site, Scope::Region, Scope::Cohort]),
        regional,
        "one process's, each at least once"
    );
    assert_eq!(at_scope(&stage1.events, &[Scope::Terminal]), terminal, "stage 1's terminal alert events too");
    let said = survivor.said();
    assert!(said.contains("reading on from the latest snapshot"), "took the killed one's snapshot: {said}");
}

/// Writes the history to `topic`, each report on its partition, keyed by
/// its terminal as terminals do, one record per request; with `pacing`,
/// at most an hour of event time ahead of what stage 2 (on that port) has
/// merged, as a live fleet sends (librdkafka's mock cluster keeps only the
/// last 5 MB of a partition). `then` runs after each thousand records.
fn produce(
    kafka: &KafkaConfig,
    topic: &str,
    lines: &[(usize, Vec<u8>)],
    pacing: Option<u16>,
    mut then: impl FnMut(usize),
) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");
    let ts = |l: &[u8]| decode(l, i64::MAX / 2).expect("valid").ts_ms;
    let first = lines.iter().map(|(_, l)| ts(l)).min().expect("reports");
    for (n, block) in lines.chunks(1_000).enumerate() {
        let newest = block.iter().map(|(_, l)| ts(l)).max().expect("reports");
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(port) = pacing {
            let merged = scrape(port)
                .and_then(|t| value(&t, "termwatch_merged_through_timestamp_seconds"))
                .map_or(first, |s| (s * 1000.0) as i64)
                .max(first);
            if newest <= merged + 3_600_000 {
                break;
            }
            assert!(Instant::now() < deadline, "stage 2 merged through {merged}, the history is at {newest}");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (p, line) in block {
            let id = decode(line, i64::MAX / 2).expect("valid").terminal_id;
            let mut r = BaseRecord::<str, [u8]>::to(topic).partition(*p as i32).key(&*id).payload(line);
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        r = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flushed");
        then(n + 1);
    }
}

#[test]
fn two_terminal_processes_and_a_regional_one_raise_one_processs_alerts() {
    two_stages_in_processes(&Broker::mock(), 2, false);
}

/// The same with the first stage-1 process killed with `kill -9` two
/// thirds of the way: its partitions move to the other, which reads on
/// from their last snapshots; together they raise one process's alert
/// events, each at least once, and stage 2 takes each (window, partition)
/// partial once.
#[test]
fn a_terminal_process_killed_halfway_changes_no_alert() {
    two_stages_in_processes(&Broker::mock(), 2, true);
}

/// A stage-1 process reading a backlog with no stage 2 to teach it waits
/// for lessons (two minutes before it closes windows on its own); SIGTERM
/// in that wait stops it cleanly within the shutdown grace, with nothing
/// closed on its own lessons, and its snapshots keep the open windows.
#[test]
fn a_terminal_process_waiting_for_lessons_stops_on_sigterm_within_the_grace() {
    let broker = Broker::mock();
    let lines = history();
    // About 25 five-minute windows of the whole fleet.
    produce(&broker.kafka, broker.telemetry(), &lines[..20_000], None, |_| {});
    let state = tempfile::tempdir().expect("tempdir");
    let env = broker.env(&[
        ("TERMWATCH_STAGES_ROLE", "terminal"),
        ("TERMWATCH_STAGES_MAX_OPEN_WINDOWS", "4"),
        ("TERMWATCH_KAFKA_SHUTDOWN_GRACE_S", "10"),
        ("TERMWATCH_KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000"),
        ("TERMWATCH_KAFKA_PROPERTY_HEARTBEAT_INTERVAL_MS", "500"),
    ]);
    let mut stage1 = StageTwo::start(&broker.kafka.brokers, state.path(), "3600", &env);
    // The first batch, 8,192 reports, is about eleven windows of every
    // partition (not four times the bound, when windows would close at
    // once): past it, the sink waits.
    stage1.wait("assigned", |t| value(t, "termwatch_kafka_assigned_partitions") == Some(PARTITIONS as f64));
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    let said = stage1.sigterm();
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}: {said}");
    assert!(said.contains("stage 1 flushed") && !said.contains("not stopped within"), "{said}");
    assert!(!said.contains("closed on this replica's own"), "{said}");
    let snapshots = std::fs::read_dir(state.path()).expect("state").filter_map(Result::ok).count();
    assert_eq!(snapshots, PARTITIONS, "a snapshot per partition: {said}");
    // The next process takes every partition from its snapshot, windows
    // open past the bound and all.
    let again = StageTwo::start(&broker.kafka.brokers, state.path(), "3600", &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while again.said().matches("stage 1: partition restored").count() < PARTITIONS {
        assert!(Instant::now() < deadline, "{}", again.said());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!again.said().contains("snapshot refused"), "{}", again.said());
}

/// A terminal silent past `limits.idle_terminal_days` is forgotten by its
/// partition's scorer into the partition's cold store, next to its
/// snapshot, and gets its state back when it reports again, as in one
/// process; partitions whose terminals never go idle make no store.
#[test]
fn a_terminal_process_keeps_an_idle_terminals_state_in_its_partitions_cold_store() {
    let broker = Broker::mock();
    const MIN5: i64 = 300_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let t0 = (now - 2 * 86_400_000).div_euclid(3_600_000) * 3_600_000;
    let report = |id: &str, k: i64| {
        let line = format!(
            r#"{{"terminal_id":"{id}","ts":{},"region":"r1","site_id":"S-{id}","model":"P200","firmware":"5.2.1","interval_s":300,"supply_v_mean":12.0,"supply_v_min":11.9,"supply_v_max":12.1,"supply_v_std":0.02,"net_rtt_ms":40,"net_loss_pct":0.1}}"#,
            t0 + k * MIN5
        );
        line.into_bytes()
    };
    // Ten hours of a terminal per partition; T-quiet, on partition 0,
    // reports in the first hour and the last three quarters of an hour,
    // silent for eight and a quarter hours in between (idle after six).
    let fleet = |ks: std::ops::Range<i64>, quiet: bool| {
        let mut lines = Vec::new();
        for k in ks {
            for p in 0..PARTITIONS {
                lines.push((p, report(&format!("T-on-{p}"), k)));
            }
            if quiet && !(12..111).contains(&k) {
                lines.push((0, report("T-quiet", k)));
            }
        }
        lines
    };
    let state1 = tempfile::tempdir().expect("tempdir");
    let state2 = tempfile::tempdir().expect("tempdir");
    let mut stage2 = StageTwo::start(&broker.kafka.brokers, state2.path(), "3600", &broker.env(&[]));
    stage2.wait("holding the partials partition", |t| value(t, "termwatch_partials_assigned") == Some(1.0));
    let env = broker.env(&[("TERMWATCH_STAGES_ROLE", "terminal"), ("TERMWATCH_LIMITS_IDLE_TERMINAL_DAYS", "0.25")]);
    let mut stage1 = StageTwo::start(&broker.kafka.brokers, state1.path(), "3600", &env);
    stage1.wait("up", |t| t.contains("termwatch_model_info"));
    produce(&broker.kafka, broker.telemetry(), &fleet(0..110, true), None, |_| {});
    // Idle terminals are looked for as a batch starts, against the windows
    // closed: once the stages have closed eight hours, the next batch
    // (the other terminals alone) finds T-quiet idle.
    let eight_hours = (t0 + 8 * 3_600_000) as f64 / 1000.0;
    stage2.wait("eight hours merged", |t| {
        value(t, "termwatch_merged_through_timestamp_seconds").is_some_and(|s| s >= eight_hours)
    });
    produce(&broker.kafka, broker.telemetry(), &fleet(110..111, true), None, |_| {});
    // A scrape is not one instant: the registry reads its metrics one by
    // one while the sink updates them, so one scrape can hold the counter
    // after a store and the gauge from before it (seen once, under load).
    // Waited for together, then checked for exactly one.
    let reached = |t: &str, name: &str| value(t, name).is_some_and(|n| n >= 1.0);
    let text = stage1.wait("T-quiet stored and held", |t| {
        reached(t, "termwatch_cold_store_total{event=\"stored\"}")
            && reached(t, "termwatch_cold_terminals")
            && reached(t, "termwatch_terminals_forgotten_total{reason=\"idle\"}")
    });
    assert_eq!(value(&text, "termwatch_cold_store_total{event=\"stored\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "termwatch_cold_terminals"), Some(1.0), "{text}");
    assert_eq!(value(&text, "termwatch_terminals_forgotten_total{reason=\"idle\"}"), Some(1.0), "{text}");
    produce(&broker.kafka, broker.telemetry(), &fleet(111..120, true), None, |_| {});
    let text = stage1.wait("T-quiet given back its state", |t| {
        value(t, "termwatch_cold_store_total{event=\"restored\"}").is_some_and(|n| n >= 1.0)
    });
    assert_eq!(value(&text, "termwatch_cold_store_total{event=\"stored\"}"), Some(1.0), "T-quiet alone: {text}");
    assert_eq!(value(&text, "termwatch_cold_store_total{event=\"failed\"}"), Some(0.0), "{text}");
    let stores: Vec<String> = std::fs::read_dir(state1.path())
        .expect("state")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cold"))
        .collect();
    assert_eq!(stores, [format!("{}-0.cold", broker.telemetry())], "{}", stage1.said());
    let entries = std::fs::read_dir(state1.path().join(&stores[0])).expect("store").count();
    assert_eq!(entries, 1, "kept after it came back: the latest state until its next snapshot");
}

/// Both on a real broker (tansu, started by `scripts/test`), the history a
/// backlog in the telemetry topic before any process starts.
#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn on_a_real_broker_two_terminal_processes_one_killed_and_a_regional_one_raise_one_processs_alerts() {
    let brokers = std::env::var("TERMWATCH_TEST_KAFKA_BROKERS")
        .expect("needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS");
    two_stages_in_processes(&Broker::real(&brokers), 2, true);
}

/// Three stage-1 processes, one partition each, on the real broker.
#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn on_a_real_broker_three_terminal_processes_and_a_regional_one_raise_one_processs_alerts() {
    let brokers = std::env::var("TERMWATCH_TEST_KAFKA_BROKERS")
        .expect("needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS");
    two_stages_in_processes(&Broker::real(&brokers), 3, false);
}

/// Where the topics live: librdkafka's mock cluster, which keeps only the
/// last 5 MB of a partition (the history is streamed, at most an hour of
/// event time ahead of stage 2), or a real broker, on topics of this test's
/// own (the history is a backlog, produced first).
struct Broker {
    mock: Option<Cluster>,
    kafka: KafkaConfig,
    /// Topic and group names, as `TERMWATCH_*` variables for every process.
    names: Vec<(&'static str, String)>,
}

impl Broker {
    fn mock() -> Broker {
        let c = cluster();
        Broker { kafka: c.kafka.clone(), mock: Some(c), names: Vec::new() }
    }

    fn real(brokers: &str) -> Broker {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        // Tests run in parallel and may start in the same millisecond.
        static BROKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let suffix = format!(
            "{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis(),
            BROKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let name = |base: &str| format!("{base}-{suffix}");
        let names = vec![
            ("TERMWATCH_KAFKA_TOPICS", name(TELEMETRY)),
            ("TERMWATCH_KAFKA_DEAD_LETTER_TOPIC", name("dead-letters")),
            ("TERMWATCH_STAGES_PARTIALS_TOPIC", name(PARTIALS)),
            ("TERMWATCH_STAGES_LESSONS_TOPIC", name(LESSONS)),
            ("TERMWATCH_KAFKA_GROUP_ID", name("termwatch")),
            ("TERMWATCH_STAGES_GROUP_ID", name("termwatch-regional")),
        ];
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let topics = [
            NewTopic::new(&names[0].1, PARTITIONS as i32, TopicReplication::Fixed(1)),
            NewTopic::new(&names[1].1, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&names[2].1, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&names[3].1, 1, TopicReplication::Fixed(1)),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in runtime.block_on(admin.create_topics(&topics, &options)).expect("create topics") {
            r.expect("topic created");
        }
        let kafka = KafkaConfig { brokers: brokers.to_string(), ..KafkaConfig::default() };
        Broker { mock: None, kafka, names }
    }

    fn telemetry(&self) -> &str {
        self.names.first().map_or(TELEMETRY, |(_, n)| n.as_str())
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        self.names.iter().map(|(k, v)| (*k, v.as_str())).chain(extra.iter().copied()).collect()
    }
}

/// `replicas` stage-1 processes (the first alone until a third of the way)
/// and one stage 2; with `kill`, the first killed two thirds of the way.
fn two_stages_in_processes(broker: &Broker, replicas: usize, kill: bool) {
    // Records one by one on a real broker (tansu 0.6 loses the rest of a
    // batch a consumer resumes inside): a report every five minutes.
    let lines = if broker.mock.is_some() { history() } else { history_every(300) };
    let models = models();
    let (regional, terminal, _) = one_process(&lines, &models);
    let brokers = broker.kafka.brokers.clone();
    let (state2, state1) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let mut stage2 = StageTwo::start(&brokers, state2.path(), "3600", &broker.env(&[]));
    stage2.wait("holding the partials partition", |t| value(t, "termwatch_partials_assigned") == Some(1.0));
    let terminal_role = broker.env(&[
        ("TERMWATCH_STAGES_ROLE", "terminal"),
        ("TERMWATCH_KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000"),
        ("TERMWATCH_KAFKA_PROPERTY_HEARTBEAT_INTERVAL_MS", "500"),
        ("TERMWATCH_KAFKA_PARTITION_IDLE_S", "3"),
    ]);
    let started = Instant::now();
    let mut stage1 = vec![StageTwo::start(&brokers, state1.path(), "2", &terminal_role)];
    stage1[0].wait("up", |t| t.contains("termwatch_model_info"));
    // The others join while the first reads; with `kill`, the first is
    // killed with `kill -9` two thirds of the way, and its partitions move
    // to the others once its session times out.
    let mut killed = None;
    let mut at = |third: usize, stage1: &mut Vec<StageTwo>| {
        if third == 1 {
            for _ in 1..replicas {
                stage1.push(StageTwo::start(&brokers, state1.path(), "2", &terminal_role));
            }
        }
        if kill && third == 2 {
            let mut victim = stage1.remove(0);
            victim.child.kill().expect("kill -9");
            victim.child.wait().expect("reaped");
            killed = Some(victim);
        }
    };
    if broker.mock.is_some() {
        let blocks = lines.len().div_ceil(1_000);
        produce(&broker.kafka, broker.telemetry(), &lines, Some(stage2.port), |n| {
            if n % (blocks / 3) == 0 {
                at(n / (blocks / 3), &mut stage1);
            }
        });
    } else {
        produce(&broker.kafka, broker.telemetry(), &lines, None, |_| {});
        for third in 1..=2 {
            let windows = 576.0 * third as f64 / 3.0;
            stage2.wait_for(Duration::from_secs(300), "merging a third of the windows", |t| {
                value(t, "termwatch_merged_windows_total{completeness=\"complete\"}").is_some_and(|w| w >= windows)
            });
            at(third, &mut stage1);
        }
    }
    // Every window merged complete up to where a live stream closes them:
    // the partitions idle, their watermark a lateness past the window.
    let last_ts =
        lines.iter().filter_map(|(_, l)| decode(l, i64::MAX / 2).ok()).map(|r| r.ts_ms).max().expect("reports");
    let f = &models.features;
    let closes_through = last_ts - f.lateness_ms - 2 * f.window_ms;
    let deadline = Instant::now() + Duration::from_secs(300);
    let text = loop {
        let text = scrape(stage2.port).unwrap_or_default();
        let through = value(&text, "termwatch_merged_through_timestamp_seconds").unwrap_or(0.0) * 1000.0;
        if through >= closes_through as f64 && value(&text, "termwatch_merging_open_windows") == Some(0.0) {
            break text;
        }
        let said: Vec<String> = stage1.iter().map(StageTwo::said).collect();
        assert!(
            Instant::now() < deadline,
            "merged through {through}, not {closes_through}: {text}\nstage 1 said {said:#?}\nstage 2 said {}",
            stage2.said()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let through = (value(&text, "termwatch_merged_through_timestamp_seconds").expect("merged through") * 1000.0) as i64;
    // One process's events of the windows merged (its last ones close only
    // at the end of its history).
    let merged = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter().filter(|k| serde_json::from_str::<AlertEvent>(k).expect("event").ts <= through).collect()
    };
    let (regional, terminal) = (merged(regional), merged(terminal));
    println!(
        "{:.1} s to merge every window; {:?} partials read, {:?} taken once before (duplicates)",
        started.elapsed().as_secs_f64(),
        value(&text, "termwatch_partials_records_total{outcome=\"read\"}"),
        value(&text, "termwatch_partials_dropped_total{reason=\"duplicate\"}")
    );
    assert_eq!(value(&text, "termwatch_merged_windows_total{completeness=\"incomplete\"}"), Some(0.0), "{text}");
    for reason in ["late", "unknown_source", "late_scores"] {
        assert_eq!(
            value(&text, &format!("termwatch_partials_dropped_total{{reason=\"{reason}\"}}")),
            Some(0.0),
            "{reason}: stage 2 said {}\nstage 1 said {:#?}",
            stage2.said(),
            stage1.iter().chain(&killed).map(StageTwo::said).collect::<Vec<_>>()
        );
    }
    // Each stage-1 process holding partitions exports their event time, as
    // one process exports its inputs', from the moment it holds them (a
    // partition restored at its end may have no record to come: seen on
    // tansu, a joiner given partitions the first process had read to the
    // end). One given none exports none, as a group of three on tansu may
    // leave one. A rebalance may be under way as the history ends: it is
    // waited for.
    let holds = |t: &String| value(t, "termwatch_kafka_assigned_partitions").is_some_and(|n| n > 0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let scrapes = loop {
        let scrapes: Vec<String> = stage1.iter().map(|s| scrape(s.port).expect("stage 1 metrics")).collect();
        if scrapes.iter().any(holds) || Instant::now() >= deadline {
            break scrapes;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut holding = 0;
    for t in scrapes.iter().filter(|t| holds(t)) {
        holding += 1;
        assert!(
            t.contains(&format!("termwatch_source_watermark_timestamp_seconds{{source=\"{}-", broker.telemetry())),
            "{t}"
        );
        assert!(value(t, "termwatch_event_time_watermark_timestamp_seconds").is_some_and(|w| w > 0.0), "{t}");
        assert!(value(t, "termwatch_tracked_terminals").is_some_and(|n| n > 0.0), "{t}");
        // Its partitions share limits.max_terminals (500,000 by default).
        let limit = value(t, "termwatch_terminals_limit").expect("the limit");
        assert!((499_990.0..=500_000.0).contains(&limit), "{limit}: {t}");
    }
    assert!(
        holding > 0,
        "no stage-1 process holds a partition after a minute: {:#?}",
        stage1.iter().zip(&scrapes).map(|(s, t)| (t, s.said())).collect::<Vec<_>>()
    );
    println!("{holding} of {} stage-1 processes hold partitions at the end", stage1.len());
    std::thread::sleep(Duration::from_secs(1));
    let mut raised = stage2.events();
    let mut terminals = Vec::new();
    for s in stage1.iter().chain(&killed) {
        terminals.extend(s.events());
    }
    let said1: Vec<String> = stage1.into_iter().map(StageTwo::sigterm).collect();
    assert!(said1.iter().all(|s| !s.contains("closed on this replica's own")), "{said1:#?}");
    raised.extend(stage2.events());
    stage2.sigterm();
    println!(
        "merged through {through}: {} site, region and cohort, {} terminal alert events, one process's: {} and {}",
        at_scope(&raised, &[Scope::Site, Scope::Region, Scope::Cohort]).len(),
        at_scope(&terminals, &[Scope::Terminal]).len(),
        regional.len(),
        terminal.len()
    );
    assert!(regional.len() >= 4 && terminal.len() >= 2, "the windows merged page at every scope");
    assert_eq!(
        at_scope(&raised, &[Scope::Site, Scope::Region, Scope::Cohort]),
        regional,
        "stage 2's site, region and cohort alert events"
    );
    assert_eq!(at_scope(&terminals, &[Scope::Terminal]), terminal, "stage 1's terminal alert events: {said1:#?}");
    assert!(said1.iter().any(|s| s.contains("partition restored")), "a partition moved with its snapshot: {said1:#?}");
}
