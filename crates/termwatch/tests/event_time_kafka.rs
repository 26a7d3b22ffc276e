//! Backlog equals replay, on a real broker (tansu): a simulated history in a
//! topic of 6 or 12 partitions, consumed by `termwatch run` from the start
//! (partitions hours apart in event time), with a `kill -9` at about 40 %
//! and a restart, raises the alert events `termwatch replay` raises on the
//! same file: the same alerts, firing and resolving in the same windows.
//! `scripts/test` starts tansu and sets `TERMWATCH_TEST_KAFKA_BROKERS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::time::parse_rfc3339_ms;

const NEEDS_BROKER: &str = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS";
/// librdkafka's session timeout for the members under test: tansu 0.6 can
/// assign nothing to a member that joins while a killed member's session is
/// still open, so the restart waits this out (and a little more).
const SESSION_MS: u64 = 6000;

fn brokers() -> String {
    std::env::var("TERMWATCH_TEST_KAFKA_BROKERS").unwrap_or_else(|_| panic!("{NEEDS_BROKER}"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Three simulated days of 80 terminals at 300 s with frequent faults, late
/// and damaged lines included: (file, records, the latest ts).
fn history(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>, i64) {
    let mut cfg = SimConfig { terminals: 80, regions: 3, days: 3.0, seed: 29, interval_s: 300, ..SimConfig::default() };
    cfg.faults.scale_faults(25.0);
    let mut sim = Simulator::new(cfg).expect("simulator");
    let (mut lines, mut buf, mut file) = (Vec::new(), Vec::new(), Vec::new());
    let mut latest = i64::MIN;
    while sim.next_record(&mut buf).is_some() {
        let value: Option<serde_json::Value> = serde_json::from_slice(&buf).ok();
        let key = value.as_ref().and_then(|v| v["terminal_id"].as_str()).unwrap_or("").to_string();
        if let Some(ts) = value.as_ref().and_then(|v| ts_of(&v["ts"])) {
            latest = latest.max(ts);
        }
        file.extend_from_slice(&buf);
        file.push(b'\n');
        lines.push((key, buf.clone()));
    }
    let path = dir.join("history.ndjson");
    std::fs::write(&path, file).expect("write history");
    (path, lines, latest)
}

/// A `ts` as the contracts allow it: epoch ms or RFC 3339.
fn ts_of(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| parse_rfc3339_ms(s).ok()))
}

/// Distinct alert events (kind, scope, entity, state, ts) in alerts-v1
/// NDJSON, before `until` (event time): a live run has not closed its last
/// windows (it waits for more data), a replay closes them at the end of the
/// file. A restarted run repeats the events its lost state had emitted: a
/// set, so they count once.
fn events(text: &str, until: i64) -> BTreeSet<(String, String, String, String, i64)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let ts = ts_of(&e["ts"]).filter(|ts| *ts < until)?;
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            Some((s("kind"), s("scope"), s("entity"), s("state"), ts))
        })
        .collect()
}

fn replay_reference(input: &Path, dir: &Path) -> String {
    let alerts = dir.join("replay-alerts.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .current_dir(workspace())
        .args(["replay", "--input"])
        .arg(input)
        .arg("--dead-letter")
        .arg(dir.join("replay-dead.ndjson"))
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .expect("runs termwatch replay");
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(alerts).expect("replay alerts")
}

struct Topic {
    brokers: String,
    name: String,
    partitions: i32,
    /// Next offset after the last record produced, per partition.
    ends: Vec<i64>,
}

impl Topic {
    fn create(brokers: &str, base: &str, partitions: i32) -> Topic {
        let suffix = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        );
        let name = format!("{base}-{partitions}-{suffix}");
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dlq = format!("{name}-dlq");
        let topics = [
            NewTopic::new(&name, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let results = runtime
            .block_on(
                admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))),
            )
            .expect("create topics");
        for r in results {
            r.expect("topic created");
        }
        Topic { brokers: brokers.to_string(), name, partitions, ends: vec![0; partitions as usize] }
    }

    /// Produces every line keyed by its terminal, one record per batch: a
    /// consumer resuming inside a multi-record batch loses the rest of it on
    /// tansu 0.6 (the broker's fault, not the consumer's).
    fn produce(&mut self, lines: &[(String, Vec<u8>)]) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("max.in.flight.requests.per.connection", "1")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .expect("producer");
        for (i, (key, line)) in lines.iter().enumerate() {
            // Partitioned here (FNV-1a of the key), so the ends are known.
            let p =
                (key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
                    % self.partitions as u64) as i32;
            let mut record = BaseRecord::<str, [u8]>::to(&self.name).payload(line.as_slice()).partition(p);
            if !key.is_empty() {
                record = record.key(key.as_str());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            self.ends[p as usize] += 1;
            if i % 5000 == 0 {
                producer.flush(Duration::from_secs(60)).expect("flush");
            }
        }
        producer.flush(Duration::from_secs(120)).expect("flush");
    }

    fn committed(&self, group: &str) -> Vec<i64> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).set("group.id", group).create().expect("c");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.name, p);
        }
        match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(c) => c.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn start(&self, group: &str, state: &Path, port: u16, stdout: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_termwatch"))
            .current_dir(workspace())
            .arg("run")
            // Only the variables set here: termwatch refuses unknown TERMWATCH_* ones.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TERMWATCH_KAFKA_BROKERS", &self.brokers)
            .env("TERMWATCH_KAFKA_GROUP_ID", group)
            .env("TERMWATCH_KAFKA_TOPICS", &self.name)
            .env("TERMWATCH_KAFKA_DEAD_LETTER_TOPIC", format!("{}-dlq", self.name))
            .env("TERMWATCH_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("TERMWATCH_KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "10")
            .env("TERMWATCH_KAFKA_PROPERTY_SESSION_TIMEOUT_MS", SESSION_MS.to_string())
            // Fetches of a few dozen records: partitions are read in many
            // rounds, hours of event time apart, as a backlog is.
            .env("TERMWATCH_KAFKA_PROPERTY_MAX_PARTITION_FETCH_BYTES", "32768")
            .env("TERMWATCH_STATE_PATH", state)
            // The backlog is read in about a second: snapshots five times a second.
            .env("TERMWATCH_STATE_INTERVAL_S", "0.2")
            .env("TERMWATCH_LOG", std::env::var("EVENT_TIME_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::fs::File::create(stdout).expect("stdout file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts termwatch run")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn fail(child: &mut Child, what: &str) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}; termwatch said: {}", stderr_of(child));
}

/// SIGTERM; the exit must be clean and within 10 s.
fn stop(mut child: Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            fail(&mut child, "no exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !child.try_wait().expect("status").is_some_and(|s| s.success()) {
        fail(&mut child, "termwatch run failed");
    }
}

/// Consumes `topic` with `termwatch run` (killed with -9 once `kill_at` of
/// the records were consumed and snapshots exist, then restarted), until
/// the group has committed every partition's end.
/// Returns everything the runs wrote on standard output.
fn consume(topic: &Topic, dir: &Path, records: usize, kill_at: Option<f64>) -> String {
    let group = format!("g-{}", topic.name);
    let state = dir.join("state");
    let mut runs = Vec::new();
    if let Some(share) = kill_at {
        let (port, out) = (free_port(), dir.join("run1.out"));
        let mut first = topic.start(&group, &state, port, &out);
        // tansu serves a backlog partition by partition: at 40 % some have
        // snapshots, some have not been read yet.
        let snapshots = || {
            state.join("shared.snap").exists()
                && (0..topic.partitions).any(|p| state.join(format!("{}-{p}.snap", topic.name)).exists())
        };
        let reached = wait_for(Duration::from_secs(300), || {
            metric(port, "termwatch_kafka_messages_consumed_total").is_some_and(|n| n >= share * records as f64)
                && snapshots()
        });
        if !reached {
            fail(&mut first, "run 1 did not reach the kill point");
        }
        let consumed = metric(port, "termwatch_kafka_messages_consumed_total").unwrap_or(0.0);
        first.kill().expect("kill -9");
        first.wait().expect("reaped");
        assert!(consumed < 0.8 * records as f64, "the kill came mid-stream: {consumed} of {records} consumed");
        runs.push(out);
        std::thread::sleep(Duration::from_millis(SESSION_MS + 3000));
    }
    let (port, out) = (free_port(), dir.join("run2.out"));
    let mut last = topic.start(&group, &state, port, &out);
    if !wait_for(Duration::from_secs(600), || topic.committed(&group) == topic.ends) {
        fail(&mut last, &format!("committed {:?}, ends {:?}", topic.committed(&group), topic.ends));
    }
    // Idle partitions close the windows they held: let the last batch through.
    std::thread::sleep(Duration::from_secs(2));
    stop(last);
    runs.push(out);
    runs.iter().map(|p| std::fs::read_to_string(p).expect("run output")).collect::<Vec<_>>().join("\n")
}

fn backlog_equals_replay(partitions: i32, kill_at: Option<f64>) {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, lines, latest) = history(dir.path());
    let reference = replay_reference(&input, dir.path());
    let mut topic = Topic::create(&brokers, "backlog", partitions);
    topic.produce(&lines);
    let live = consume(&topic, dir.path(), lines.len(), kill_at);
    let until = latest - 30 * 60_000;
    let (want, got) = (events(&reference, until), events(&live, until));
    let firing = want.iter().filter(|e| e.3 == "firing").count();
    assert!(firing >= 10, "the history raises alerts to compare: {want:?}");
    let only_live: Vec<_> = got.difference(&want).take(10).collect();
    let only_replay: Vec<_> = want.difference(&got).take(10).collect();
    assert!(
        only_live.is_empty() && only_replay.is_empty(),
        "{partitions} partitions: {} alert events live, {} in replay; only live (first 10) {only_live:?}; only replay (first 10) {only_replay:?}",
        got.len(),
        want.len()
    );
}

#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn a_six_partition_backlog_with_a_kill_9_raises_the_alerts_replay_raises() {
    backlog_equals_replay(6, Some(0.4));
}

#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn a_twelve_partition_backlog_raises_the_alerts_replay_raises() {
    backlog_equals_replay(12, None);
}
