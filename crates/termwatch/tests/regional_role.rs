//! `termwatch run` as stage 2 (`stages.role = "regional"`) against
//! librdkafka's mock cluster: three stage-1 scorers, one per partition of
//! the telemetry topic, publish their partials and learn the lessons the
//! process publishes; the process's site and region alert events are one
//! process's, its `/metrics` say what it merged, and SIGTERM leaves a
//! snapshot and a commit that a restarted process reads on from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
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
    let mut cfg = SimConfig { terminals: 150, regions: 3, days: 2.0, seed: 43, ..SimConfig::default() };
    cfg.faults.scale_faults(4.0);
    cfg.faults.site_mains_per_1000_site_days *= 5.0;
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
/// from its standard output as they come.
struct StageTwo {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl StageTwo {
    /// Snapshots (and commits) every `interval_s` and on SIGTERM.
    fn start(brokers: &str, state: &std::path::Path, interval_s: &str) -> StageTwo {
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
        StageTwo { child, port, lines }
    }

    fn events(&self) -> Vec<AlertEvent> {
        self.lines.try_iter().map(|l| serde_json::from_str(&l).expect("alerts-v1 NDJSON")).collect()
    }

    /// Waits until `/metrics` satisfies `cond`; fails with what the process
    /// said if it does not within a minute.
    fn wait(&mut self, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(text) = scrape(self.port).filter(|t| cond(t)) {
                return text;
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!("{what}; /metrics: {:?}; termwatch said: {stderr}", scrape(self.port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let mut stderr = String::new();
        self.child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
        assert!(exit.success(), "{exit}: {stderr}");
        stderr
    }
}

/// Stage 1: one split scorer per partition, publishing what it has.
struct StageOne {
    names: Vec<String>,
    replicas: Vec<Scorer>,
    learners: Vec<LessonsReader>,
    partials: StagePublisher,
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

    /// Until nothing moves: stage 2 reads every record published (its
    /// `/metrics` say so), every replica learns every lesson it published
    /// since, and publishes what that lets it close.
    fn settle(&mut self, stage2: &mut StageTwo, ended: &[bool]) {
        loop {
            self.partials.flush(Duration::from_secs(30)).expect("delivered");
            let published = self.published as f64;
            let text = stage2.wait("every partial read", |t| {
                value(t, "termwatch_partials_records_total{outcome=\"read\"}") == Some(published)
            });
            let lessons = value(&text, "termwatch_lessons_published_total").expect("lessons") as u64;
            let mut moved = false;
            for (p, &end) in ended.iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(60);
                while self.learners[p].counts().0 < lessons {
                    assert!(
                        Instant::now() < deadline,
                        "replica {p} learnt {:?} of {lessons}",
                        self.learners[p].counts()
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

#[test]
fn a_regional_process_raises_one_processs_site_and_region_alerts_and_resumes_from_its_snapshot() {
    let lines = history();
    let models = models();
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
    let at_scope = |events: &[AlertEvent], scopes: &[Scope]| {
        let mut keys: Vec<String> = events.iter().filter(|e| scopes.contains(&e.scope)).map(key).collect();
        keys.sort();
        keys
    };
    let regional = at_scope(&expected, &[Scope::Site, Scope::Region]);
    let terminal = at_scope(&expected, &[Scope::Terminal]);
    assert!(regional.len() >= 4 && terminal.len() >= 2, "the fleet pages at every scope: {regional:#?}");

    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TELEMETRY, PARTITIONS as i32, 1).expect("topic");
    cluster.create_topic(PARTIALS, 1, 1).expect("topic");
    cluster.create_topic(LESSONS, 1, 1).expect("topic");
    let kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    let state = tempfile::tempdir().expect("tempdir");
    // Only SIGTERM snapshots it.
    let mut stage2 = StageTwo::start(&kafka.brokers, state.path(), "3600");
    stage2.wait("ready", |t| t.contains("termwatch_merged_windows_total"));

    let mut stage1 = StageOne {
        replicas: names.iter().map(|_| Scorer::new(models.clone()).expect("scorer").split()).collect(),
        learners: names.iter().map(|_| LessonsReader::new(&kafka, LESSONS, None).expect("reader")).collect(),
        names: names.clone(),
        partials: StagePublisher::new(&kafka, PARTIALS).expect("publisher"),
        published: 0,
        progress: vec![None; PARTITIONS],
        ended: vec![false; PARTITIONS],
        events: Vec::new(),
    };
    let started = Instant::now();
    let mine: Vec<Vec<&[u8]>> =
        (0..PARTITIONS).map(|p| lines.iter().filter(|(q, _)| *q == p).map(|(_, l)| l.as_slice()).collect()).collect();
    let mut at = [0usize; PARTITIONS];
    let mut ended = [false; PARTITIONS];
    loop {
        let behind = (0..PARTITIONS)
            .filter(|&p| at[p] < mine[p].len())
            .min_by_key(|&p| (stage1.replicas[p].engine().closed_through().unwrap_or(i64::MIN), p));
        let Some(p) = behind else { break };
        let end = (at[p] + 4_000).min(mine[p].len());
        let events = stage1.replicas[p].process_sourced(&batch(&mine[p][at[p]..end]), &[(&names[p], end - at[p])]);
        stage1.events.extend(events);
        at[p] = end;
        stage1.publish(p, false);
        stage1.settle(&mut stage2, &ended);
    }
    for (p, end) in ended.iter_mut().enumerate() {
        *end = true;
        let events = stage1.replicas[p].finish();
        stage1.events.extend(events);
        stage1.publish(p, true);
    }
    stage1.settle(&mut stage2, &ended);
    assert!(
        stage1.replicas.iter().all(|r| r.engine().open_windows() == 0 && r.held_windows() == (0, 0)),
        "every window closed, and every terminal scored with its window's lessons"
    );
    let published = stage1.published as f64;
    let text = stage2.wait("every partial read", |t| {
        value(t, "termwatch_partials_records_total{outcome=\"read\"}") == Some(published)
            && value(t, "termwatch_merging_open_windows") == Some(0.0)
    });
    println!("{:.1} s for {} partials records", started.elapsed().as_secs_f64(), stage1.published);

    // Every window merged from every source, nothing dropped.
    let windows = value(&text, "termwatch_merged_windows_total{completeness=\"complete\"}").expect("windows");
    assert!(windows >= 576.0, "two days of 5-minute windows: {windows}");
    assert_eq!(value(&text, "termwatch_merged_windows_total{completeness=\"incomplete\"}"), Some(0.0));
    for reason in ["duplicate", "late", "unknown_source", "late_scores"] {
        assert_eq!(value(&text, &format!("termwatch_partials_dropped_total{{reason=\"{reason}\"}}")), Some(0.0));
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

    let got = at_scope(&stage2.events(), &[Scope::Site, Scope::Region]);
    assert_eq!(got, regional, "stage 2's site and region alert events are one process's");
    assert_eq!(at_scope(&stage1.events, &[Scope::Terminal]), terminal, "stage 1's terminal alert events too");

    // SIGTERM: a snapshot, then a commit of what it covers; a new process
    // restores it and has nothing to read again.
    let merged_through = value(&text, "termwatch_merged_through_timestamp_seconds").expect("merged through");
    let snapshot = state.path().join("regional.snap");
    assert!(!snapshot.exists(), "not due before an hour");
    let said = stage2.sigterm();
    assert!(said.contains("stage 2 stopped"), "{said}");
    assert!(snapshot.exists());
    let mut again = StageTwo::start(&kafka.brokers, state.path(), "1");
    again.wait("restored", |t| value(t, "termwatch_merged_through_timestamp_seconds") == Some(merged_through));
    std::thread::sleep(Duration::from_secs(2));
    let text = scrape(again.port).expect("metrics");
    assert_eq!(
        value(&text, "termwatch_partials_records_total{outcome=\"read\"}"),
        Some(0.0),
        "read on from the commit"
    );
    assert!(
        value(&text, "termwatch_state_snapshot_last_success_timestamp_seconds").is_some_and(|t| t > 0.0),
        "snapshots every second: {text}"
    );
    assert!(again.events().is_empty(), "no alert event raised twice");
    let said = again.sigterm();
    assert!(said.contains("restored from its snapshot"), "{said}");
}
