//! `termwatch run` as a process against librdkafka's mock cluster: the
//! signals an orchestrator sends, and a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TOPIC: &str = "telemetry";
const PARTITIONS: i32 = 4;

struct Fixture {
    cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
}

impl Fixture {
    fn new(records: usize) -> Fixture {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
        cluster.create_topic("telemetry-dead-letters", 1, 1).expect("dlq");
        let brokers = cluster.bootstrap_servers();
        let f = Fixture { cluster, brokers };
        f.produce(0..records);
        f
    }

    /// Records number `range` of the fixture's stream, 25 terminals a minute apart.
    fn produce(&self, range: std::ops::Range<usize>) {
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).create().expect("producer");
        for i in range {
            let id = format!("T-{:03}", i % 25);
            let body = format!(
                r#"{{"terminal_id":"{id}","ts":{},"region":"r","cpu_pct":5}}"#,
                1_795_514_460_000i64 + i as i64 * 60_000
            );
            producer.send(BaseRecord::<str, str>::to(TOPIC).key(&id).payload(&body)).expect("queue");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }

    fn start(&self, group: &str, port: u16, extra: &[(&str, &str)]) -> Child {
        self.command(group, port, extra).spawn().expect("starts termwatch run")
    }

    /// Started from the workspace, where `models/default` is: scoring, and
    /// with a state directory, snapshots.
    fn start_scoring(&self, group: &str, port: u16, extra: &[(&str, &str)]) -> Child {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        self.command(group, port, extra).current_dir(workspace).spawn().expect("starts termwatch run")
    }

    fn command(&self, group: &str, port: u16, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
        cmd.arg("run");
        self.configure(cmd, group, port, extra)
    }

    fn configure(&self, mut cmd: Command, group: &str, port: u16, extra: &[(&str, &str)]) -> Command {
        // termwatch refuses unknown TERMWATCH_* variables, such as the test
        // harness's own: hand it only the ones set here.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERMWATCH_")) {
            cmd.env_remove(k);
        }
        cmd.env("TERMWATCH_KAFKA_BROKERS", &self.brokers)
            .env("TERMWATCH_KAFKA_GROUP_ID", group)
            .env("TERMWATCH_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("TERMWATCH_KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "5")
            .env("TERMWATCH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    fn committed(&self, group: &str) -> i64 {
        self.committed_on(group, TOPIC, PARTITIONS)
    }

    fn committed_on(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
        c.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

/// A consumer of `topic` from its start, in a group of its own.
fn reader(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A counter's value from `/metrics`, or None while the endpoint is not up.
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

/// Waits for the accepted-records counter to satisfy `cond`; if it does not,
/// kills the child and fails with what it printed.
fn wait_for_accepted(child: &mut Child, port: u16, what: &str, mut cond: impl FnMut(f64) -> bool) {
    let ok = wait_for(Duration::from_secs(60), || {
        metric(port, "termwatch_records_accepted_total").is_some_and(&mut cond)
            || child.try_wait().ok().flatten().is_some()
    }) && child.try_wait().ok().flatten().is_none();
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        panic!("{what}: last value {:?}; termwatch said: {stderr}", metric(port, "termwatch_records_accepted_total"));
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn sigterm_flushes_commits_and_exits_zero_within_seconds() {
    let f = Fixture::new(100);
    let port = free_port();
    // A long batch age: only the shutdown flush can deliver the tail.
    let mut child =
        f.start("g-term", port, &[("TERMWATCH_BATCH_MAX_MS", "600000"), ("TERMWATCH_BATCH_MAX_ROWS", "64")]);
    assert!(
        wait_for(Duration::from_secs(60), || metric(port, "termwatch_records_accepted_total")
            .is_some_and(|v| v >= 64.0)),
        "the first batch was not delivered"
    );
    // The consumer has read all 100 by now or soon; give it a moment, then stop.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(status.success(), "exit status {status:?}: {stderr}");
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert_eq!(f.committed("g-term"), 100, "the tail batch was flushed and committed on SIGTERM");
}

/// A broker that keeps its connections but stops answering (as a frozen
/// or partitioned one does): SIGTERM still ends the process within the
/// shutdown grace, without the final commit, and a successor reads what
/// was not committed.
#[test]
fn sigterm_with_a_frozen_broker_exits_within_the_grace() {
    let f = Fixture::new(100);
    let port = free_port();
    let mut child = f.start(
        "g-frozen",
        port,
        &[
            ("TERMWATCH_BATCH_MAX_MS", "600000"),
            ("TERMWATCH_BATCH_MAX_ROWS", "64"),
            ("TERMWATCH_KAFKA_SHUTDOWN_GRACE_S", "3"),
        ],
    );
    wait_for_accepted(&mut child, port, "the first batch was not delivered", |v| v >= 64.0);
    std::thread::sleep(Duration::from_secs(2));
    // Every request now waits an hour for its answer.
    f.cluster.broker_round_trip_time(1, Duration::from_secs(3600)).expect("freeze the broker");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let took = asked.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    let status = status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM: {stderr}"));
    eprintln!("exit {status:?} {took:?} after SIGTERM with the broker frozen");
    assert!(took < Duration::from_secs(3 + 5), "the grace is 3 s; took {took:?}: {stderr}");
    // The broker answers again: a successor reads what was not committed.
    f.cluster.broker_round_trip_time(1, Duration::ZERO).expect("thaw the broker");
    // (The mock broker may have applied the last commit and only delayed
    // its answer: then there is nothing left to read.)
    let committed = f.committed("g-frozen");
    let port = free_port();
    let mut next = f.start("g-frozen", port, &[("TERMWATCH_BATCH_MAX_ROWS", "8"), ("TERMWATCH_BATCH_MAX_MS", "50")]);
    wait_for_accepted(&mut next, port, "the successor reads what was not committed", |v| v >= (100 - committed) as f64);
    signal(&next, "-TERM");
    assert!(wait_exit(&mut next, Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert_eq!(f.committed("g-frozen"), 100);
}

/// Snapshots that cannot be written (here every snapshot path is taken by
/// a directory, which even root cannot rename a file over; a full disk
/// fails the same way) are counted and retried while consuming goes on;
/// once the disk is writable again they are written and commits resume.
#[test]
fn a_state_directory_that_cannot_be_written_does_not_stop_the_service() {
    let f = Fixture::new(200);
    let state = tempfile::tempdir().expect("tempdir");
    let blocked: Vec<std::path::PathBuf> = (0..PARTITIONS)
        .map(|p| state.path().join(format!("{TOPIC}-{p}.snap")))
        .chain([state.path().join("shared.snap")])
        .collect();
    for b in &blocked {
        std::fs::create_dir_all(b.join("in-the-way")).expect("block the snapshot path");
    }
    let port = free_port();
    let dir = state.path().to_str().expect("utf-8 path");
    let mut child = f.start_scoring(
        "g-full",
        port,
        &[("TERMWATCH_STATE_PATH", dir), ("TERMWATCH_STATE_INTERVAL_S", "0.2"), ("TERMWATCH_BATCH_MAX_MS", "20")],
    );
    wait_for_accepted(&mut child, port, "consuming stopped", |v| v >= 200.0);
    let failures = || metric(port, "termwatch_state_snapshot_failures_total").unwrap_or(0.0);
    assert!(wait_for(Duration::from_secs(30), || failures() >= 3.0), "failures counted: {}", failures());
    assert!(child.try_wait().expect("try_wait").is_none(), "the service is still running");
    assert_eq!(f.committed("g-full"), 0, "nothing committed that no snapshot covers");
    // The disk is writable again.
    for b in &blocked {
        std::fs::remove_dir_all(b).expect("unblock");
    }
    let written = wait_for(Duration::from_secs(30), || {
        metric(port, "termwatch_state_snapshot_last_success_timestamp_seconds").is_some_and(|t| t > 0.0)
            && f.committed("g-full") == 200
    });
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(written, "snapshots and commits did not resume: committed {}; {stderr}", f.committed("g-full"));
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {stderr}");
    assert!(blocked.iter().all(|b| b.is_file()), "every snapshot was written");
    let leftovers: Vec<_> = std::fs::read_dir(state.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

/// A thousand idle connections to the metrics port of a process allowed 256
/// file descriptors: the endpoint takes at most 32 of them from the kernel's
/// queue at a time (each closed after the read timeout), so snapshots and
/// Kafka keep theirs, and the service goes on consuming, snapshotting and
/// committing. (Before the connection limit, 400 such connections exhausted
/// the descriptors, a snapshot failed with EMFILE and the process exited.)
#[test]
fn a_thousand_idle_metrics_connections_under_a_low_descriptor_limit_leave_the_service_consuming() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let own: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files");
    assert!(own >= 1100, "this test opens 1,000 connections itself and may open {own} descriptors: raise ulimit -n");
    let f = Fixture::new(0);
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 256 && exec \"$0\" run", env!("CARGO_BIN_EXE_termwatch")]).current_dir(workspace);
    let dir = state.path().to_str().expect("utf-8 path");
    let mut child = f
        .configure(
            cmd,
            "g-flood",
            port,
            &[("TERMWATCH_STATE_PATH", dir), ("TERMWATCH_STATE_INTERVAL_S", "0.2"), ("TERMWATCH_BATCH_MAX_MS", "20")],
        )
        .spawn()
        .expect("starts termwatch run");
    assert!(wait_for(Duration::from_secs(30), || status_of(port, "/healthz").is_some()), "the endpoint did not start");
    let idle: Vec<TcpStream> = (0..1000)
        .map(|i| TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // Produced while the connections are held: consumed, snapshotted, committed.
    f.produce(0..300);
    let done = wait_for(Duration::from_secs(60), || {
        f.committed("g-flood") == 300 || child.try_wait().ok().flatten().is_some()
    });
    let running = child.try_wait().expect("try_wait").is_none();
    let snapshots = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap")))
        .count();
    drop(idle);
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(running && done, "committed {} of 300, running {running}: {stderr}", f.committed("g-flood"));
    assert!(snapshots >= 2, "{snapshots} snapshots written: {stderr}");
    assert!(!stderr.contains("snapshot failed"), "{stderr}");
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {stderr}");
}

/// An alerts topic that refuses every event does not stop the service: the
/// events wait and are sent again, consuming goes on, and no snapshot (so no
/// commit) covers them until they are delivered; once the topic is back,
/// they arrive and commits reach the end. Before, the first undelivered
/// event failed the batch and the process exited.
#[test]
fn an_unreachable_alerts_topic_holds_commits_back_until_its_events_are_delivered() {
    use rdkafka::types::RDKafkaRespErr;
    let f = Fixture::new(0);
    // Twelve partitions: the mock cluster serves each one slowly.
    let (topic, partitions) = ("telemetry-12", 12);
    f.cluster.create_topic(topic, partitions, 1).expect("topic");
    f.cluster.create_topic("alerts", 1, 1).expect("alerts topic");
    f.cluster.topic_error("alerts", RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("inject");
    // A simulated day with many faults: a dozen alert events to deliver.
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args(["simulate", "--terminals", "100", "--regions", "4", "--days", "1", "--seed", "7"])
        .args(["--interval-s", "300", "--fault-scale", "12", "--kafka", &f.brokers, "--topic", topic])
        .output()
        .expect("simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: f64 = stderr
        .split_whitespace()
        .skip_while(|w| *w != "simulate:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stderr}"));
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let dir = state.path().to_str().expect("utf-8 path");
    let mut child = f.start_scoring(
        "g-alerts",
        port,
        &[
            ("TERMWATCH_STATE_PATH", dir),
            ("TERMWATCH_STATE_INTERVAL_S", "0.2"),
            ("TERMWATCH_KAFKA_TOPICS", topic),
            ("TERMWATCH_KAFKA_ALERTS_TOPIC", "alerts"),
            ("TERMWATCH_KAFKA_PROPERTY_MESSAGE_TIMEOUT_MS", "2000"),
        ],
    );
    let committed = || f.committed_on("g-alerts", topic, partitions);
    let failures = || metric(port, "termwatch_alert_delivery_failures_total{output=\"kafka\"}").unwrap_or(0.0);
    let pending = || metric(port, "termwatch_alert_topic_pending_events").unwrap_or(0.0);
    // Consumed to the end (records with damage rejected) while the topic refuses.
    let read = wait_for(Duration::from_secs(120), || {
        metric(port, "termwatch_records_read_total").is_some_and(|v| v >= sent)
            || child.try_wait().ok().flatten().is_some()
    });
    assert!(
        read && child.try_wait().expect("try_wait").is_none(),
        "consuming stopped: read {:?} of {sent}",
        metric(port, "termwatch_records_read_total")
    );
    assert!(failures() > 0.0 && pending() > 0.0, "failures {} pending {}", failures(), pending());
    let held = committed();
    assert!((held as f64) < sent, "committed {held} of {sent} while events were undelivered");
    // The topic is back: the events go, snapshots and commits resume.
    f.cluster.topic_error("alerts", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).expect("clear");
    let caught_up = wait_for(Duration::from_secs(60), || pending() == 0.0 && committed() as f64 >= sent);
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(caught_up, "pending {} committed {} of {sent}: {stderr}", pending(), committed());
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {stderr}");
    assert!(stderr.contains("alert events wait for the alerts topic"), "{stderr}");
    let consumer = reader(&f.brokers, "alerts-reader", "alerts");
    let mut events = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && events < 1 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let _: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("alerts-v1 JSON");
            events += 1;
        }
    }
    assert!(events > 0, "no alert event reached the topic");
}

/// The status line of a GET, or None while the endpoint is not up.
fn status_of(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().next().map(str::to_string)
}

/// `/readyz` says ready only once the brokers have answered: a replica that
/// cannot reach Kafka is alive (`/healthz`) but not ready.
#[test]
fn readyz_waits_for_the_brokers_to_answer() {
    // Nothing listens on this port.
    let dead = free_port();
    let port = free_port();
    let mut child = Fixture { cluster: MockCluster::new(1).expect("mock"), brokers: format!("127.0.0.1:{dead}") }
        .start("g-ready", port, &[]);
    assert!(wait_for(Duration::from_secs(30), || status_of(port, "/healthz").is_some()), "endpoint up");
    std::thread::sleep(Duration::from_secs(3));
    let (health, ready) = (status_of(port, "/healthz"), status_of(port, "/readyz"));
    signal(&child, "-TERM");
    let _ = wait_exit(&mut child, Duration::from_secs(20));
    let _ = child.kill();
    assert!(health.as_deref().is_some_and(|s| s.contains(" 200")), "{health:?}");
    assert!(ready.as_deref().is_some_and(|s| s.contains(" 503")), "no broker has answered: {ready:?}");

    let f = Fixture::new(10);
    let port = free_port();
    let mut child = f.start("g-ready", port, &[]);
    let ready = wait_for(Duration::from_secs(30), || status_of(port, "/readyz").is_some_and(|s| s.contains(" 200")));
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert!(ready, "ready once the group answered");
}

#[test]
fn kill_9_replays_from_the_last_commit_and_loses_nothing() {
    let f = Fixture::new(200);
    let port = free_port();
    let mut first =
        f.start("g-kill", port, &[("TERMWATCH_BATCH_MAX_ROWS", "32"), ("TERMWATCH_BATCH_MAX_MS", "600000")]);
    assert!(
        wait_for(Duration::from_secs(60), || metric(port, "termwatch_records_accepted_total")
            .is_some_and(|v| v >= 96.0)),
        "batches were not delivered"
    );
    // Let the auto-commit (1 s) catch up with what was stored, then crash.
    std::thread::sleep(Duration::from_secs(2));
    signal(&first, "-KILL");
    first.wait().expect("reaped");
    let committed = f.committed("g-kill");
    assert!(committed < 200, "a tail must be uncommitted for this test to mean anything ({committed})");

    let port = free_port();
    let mut second = f.start("g-kill", port, &[("TERMWATCH_BATCH_MAX_MS", "100")]);
    let expected = (200 - committed) as f64;
    wait_for_accepted(&mut second, port, "the successor should replay exactly the uncommitted records", |v| {
        v == expected
    });
    signal(&second, "-TERM");
    assert!(wait_exit(&mut second, Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert_eq!(f.committed("g-kill"), 200);
}

#[test]
fn config_file_typo_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("termwatch.toml");
    std::fs::write(&path, "[kafka]\ngroup = \"x\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args(["run", "--config", path.to_str().expect("utf8")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("group") && stderr.contains("termwatch.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn simulate_streams_to_kafka_keyed_by_terminal() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("sim", 3, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("labels.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args(["simulate", "--terminals", "20", "--regions", "2", "--days", "0.05", "--seed", "3", "--kafka", &brokers])
        .args(["--topic", "sim", "--labels", labels.to_str().expect("utf8")])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: u64 = stderr
        .split_whitespace()
        .skip_while(|w| *w != "simulate:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stderr}"));
    assert!(sent > 100, "{stderr}");
    assert!(labels.exists());

    let consumer = reader(&brokers, "sim-check", "sim");
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < sent && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            // Damaged records may have lost their terminal_id; intact ones carry their key.
            if let Some(id) = body.get("terminal_id").and_then(|v| v.as_str()) {
                assert_eq!(id, key);
            }
            got += 1;
        }
    }
    assert_eq!(got, sent, "every simulated record reached the topic");
}

#[test]
fn run_warms_up_from_history_then_goes_live_with_what_it_learned() {
    let f = Fixture::new(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args(["simulate", "--terminals", "30", "--regions", "2", "--days", "0.2", "--seed", "8"])
        .args(["--out", history.to_str().expect("utf8")])
        .output()
        .expect("simulate");
    assert!(out.status.success());
    // Three records the warm-up must reject, at the end of the history.
    let bad = ["{not json", r#"{"terminal_id":"T-bad","region":"r"}"#, r#"{"terminal_id":"","ts":1}"#];
    let mut text = std::fs::read_to_string(&history).expect("history");
    let first_bad_line = text.lines().count() + 1;
    for b in bad {
        text.push_str(b);
        text.push('\n');
    }
    std::fs::write(&history, text).expect("write history");
    let state = dir.path().join("state.snap");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["run", "--warm-up", history.to_str().expect("utf8")])
        // Only the variables set here: termwatch refuses unknown TERMWATCH_* ones.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERMWATCH_KAFKA_BROKERS", &f.brokers)
        .env("TERMWATCH_KAFKA_GROUP_ID", "g-warm")
        .env("TERMWATCH_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("TERMWATCH_STATE_PATH", &state)
        .env("TERMWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_for_accepted(&mut child, port, "the live stream was not consumed", |v| v >= 20.0);
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(stderr.contains("warm-up done"), "{stderr}");
    assert!(stderr.contains("state: restored"), "the live sink continued from the warm-up: {stderr}");
    assert!(state.exists(), "the state was written on shutdown");
    // The warm-up's rejects went to the dead-letter topic as they came, named
    // by file and line (not held in memory until the end).
    let consumer = reader(&f.brokers, "dlq-reader", "telemetry-dead-letters");
    let mut from_history = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while from_history.len() < bad.len() && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if header("termwatch.source.file").as_deref() == history.to_str() {
            let line: usize = header("termwatch.source.line").and_then(|l| l.parse().ok()).expect("line header");
            if line >= first_bad_line {
                from_history.push((line, String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()));
            }
        }
    }
    let want: Vec<(usize, String)> = bad.iter().enumerate().map(|(i, b)| (first_bad_line + i, b.to_string())).collect();
    assert_eq!(from_history, want, "the warm-up's dead letters on the dead-letter topic");
}
