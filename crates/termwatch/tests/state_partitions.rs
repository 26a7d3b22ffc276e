//! `termwatch run` keeps its state per Kafka partition: after a kill -9 it
//! resumes each partition where that partition's snapshot ends, learning
//! what the crash lost exactly once. Against librdkafka's mock cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use termwatch_alerts::snapshot::{PartitionSnapshot, Snapshot};

const TERMINALS: usize = 20;
const MINUTES: usize = 240;
const T0: i64 = 1_795_514_400_000;

struct Fixture {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    topic: &'static str,
    partitions: i32,
    producer: ThreadedProducer<DefaultProducerContext>,
}

/// Record `i` of the history: terminal `i % TERMINALS` at minute `i / TERMINALS`,
/// on partition `terminal * partitions / TERMINALS` (a terminal stays on one).
fn record(i: usize) -> (usize, String) {
    let (t, minute) = (i % TERMINALS, (i / TERMINALS) as i64);
    // Some terminals get noisier halfway: there is something to learn and alert on.
    let std = if t % 4 == 0 && minute > 150 { 0.2 } else { 0.04 + 0.001 * (minute % 7) as f64 };
    let body = format!(
        r#"{{"terminal_id":"T-{t:02}","ts":{},"region":"r{}","site_id":"S-{}","model":"m","firmware":"f","supply_v_mean":12.0,"supply_v_min":11.8,"supply_v_max":12.2,"supply_v_std":{std},"net_rtt_ms":{},"net_loss_pct":0.1,"card_reads":20,"card_read_errors":{}}}"#,
        T0 + minute * 60_000,
        t % 2,
        t / 2,
        40 + minute % 5,
        minute % 3
    );
    (t, body)
}

impl Fixture {
    fn new(topic: &'static str, partitions: i32) -> Fixture {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(topic, partitions, 1).expect("topic");
        cluster.create_topic("telemetry-dead-letters", 1, 1).expect("dlq");
        let brokers = cluster.bootstrap_servers();
        let producer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("producer");
        Fixture { _cluster: cluster, brokers, topic, partitions, producer }
    }

    fn produce(&self, range: std::ops::Range<usize>) {
        for i in range {
            let (t, body) = record(i);
            let id = format!("T-{t:02}");
            let p = (t as i32 * self.partitions) / TERMINALS as i32;
            self.producer
                .send(BaseRecord::<str, str>::to(self.topic).key(&id).payload(&body).partition(p))
                .expect("queue");
        }
        self.producer.flush(Duration::from_secs(30)).expect("flush");
    }

    fn start(&self, group: &str, state: &Path, port: u16) -> Child {
        // No snapshot but at shutdown: what the kill -9 loses is known.
        self.start_snapshotting(group, state, port, "3600")
    }

    fn start_snapshotting(&self, group: &str, state: &Path, port: u16, interval_s: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_termwatch"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .arg("run")
            // Only the variables set here: termwatch refuses unknown TERMWATCH_* ones.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TERMWATCH_KAFKA_BROKERS", &self.brokers)
            .env("TERMWATCH_KAFKA_GROUP_ID", group)
            .env("TERMWATCH_KAFKA_TOPICS", self.topic)
            .env("TERMWATCH_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("TERMWATCH_KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "5")
            .env("TERMWATCH_STATE_PATH", state)
            .env("TERMWATCH_STATE_INTERVAL_S", interval_s)
            .env("TERMWATCH_BATCH_MAX_MS", "50")
            // The mock cluster elects a leader only when its join timer
            // (the session timeout less 1 s) runs out, and completes a sync
            // as soon as the leader's SyncGroup arrives: a member whose own
            // SyncGroup comes later gets nothing and must join again. Under
            // load it can lose round after round; at the 45 s default, two
            // losses used up the rebalance test's two minutes (CI, stop 40).
            // Shorter rounds give it many tries, each still long enough for
            // the member that owned everything to revoke (flush, snapshot, a
            // commit retried for 3 s) and join again before the election.
            .env("TERMWATCH_KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "10000")
            .env("TERMWATCH_KAFKA_PROPERTY_HEARTBEAT_INTERVAL_MS", "1000")
            .env("TERMWATCH_LOG", std::env::var("STATE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts termwatch run")
    }

    fn committed(&self, group: &str) -> i64 {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).set("group.id", group).create().expect("c");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(self.topic, p);
        }
        let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
        c.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
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

/// Waits until exactly `n` records were accepted and nothing more arrives.
fn settle_at(child: &mut Child, port: u16, n: f64, what: &str) {
    let reached = wait_for(Duration::from_secs(60), || metric(port, "termwatch_records_accepted_total") == Some(n));
    std::thread::sleep(Duration::from_secs(2));
    let now = metric(port, "termwatch_records_accepted_total");
    if !reached || now != Some(n) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: expected {n} accepted, have {now:?}; termwatch said: {}", stderr_of(child));
    }
}

fn stop(mut child: Child) -> String {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = child.try_wait().expect("status").is_some_and(|s| s.success());
    let stderr = stderr_of(&mut child);
    assert!(ok, "termwatch failed: {stderr}");
    stderr
}

fn kill_9(mut child: Child) {
    let status = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    child.wait().expect("reaped");
}

/// Runs the history in two halves with a crash in between: half one, stop
/// (snapshot); half two, kill -9 after its offsets were committed (its
/// learning is lost); then a restart. Returns the restart's stderr.
fn crash_after_commit(f: &Fixture, group: &str, state: &Path, before_restart: impl FnOnce()) -> (Child, u16) {
    let half = TERMINALS * MINUTES / 2;
    f.produce(0..half);
    let port = free_port();
    let mut a = f.start(group, state, port);
    settle_at(&mut a, port, half as f64, "first half");
    stop(a);
    f.produce(half..2 * half);
    let port = free_port();
    let mut b = f.start(group, state, port);
    settle_at(&mut b, port, half as f64, "second half");
    assert!(wait_for(Duration::from_secs(20), || f.committed(group) == 2 * half as i64), "second half committed");
    kill_9(b);
    before_restart();
    let port = free_port();
    (f.start(group, state, port), port)
}

#[test]
fn kill_9_after_a_snapshot_relearns_the_lost_records_exactly_once() {
    let f = Fixture::new("tele-one", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let (crashed, uninterrupted) = (dir.path().join("crashed"), dir.path().join("uninterrupted"));
    let half = TERMINALS * MINUTES / 2;

    let (mut c, port) = crash_after_commit(&f, "g-crash", &crashed, || {});
    // The offsets say everything was consumed; the snapshot says half was
    // learned: the restart must consume the second half again, once.
    settle_at(&mut c, port, half as f64, "the restart re-learns the second half");
    let said = stop(c);
    assert!(said.contains("partition tele-one-0 resumes at offset 2400"), "{said}");

    let port = free_port();
    let mut u = f.start("g-whole", &uninterrupted, port);
    settle_at(&mut u, port, (2 * half) as f64, "uninterrupted run");
    stop(u);

    let part = |d: &Path| PartitionSnapshot::load(&d.join("tele-one-0.snap")).expect("partition snapshot");
    let (pc, pu) = (part(&crashed), part(&uninterrupted));
    assert_eq!(pc.next_offset, 2 * half as i64);
    assert_eq!(pc.terminals.len(), TERMINALS);
    assert_eq!(pc, pu, "per-terminal feature and alert state equal those of a run that never stopped");
    let shared = |d: &Path| Snapshot::load(&d.join("shared.snap")).expect("shared snapshot");
    let (sc, su) = (shared(&crashed), shared(&uninterrupted));
    assert_eq!(sc.engine.counters(), su.engine.counters(), "every report applied exactly once");
    assert_eq!(sc.engine.counters().reports, 2 * half as u64);
    assert_eq!(sc.engine.counters().replayed, 0, "resuming at the snapshot's offset replays nothing");
    assert_eq!(sc.alerts, su.alerts);
}

#[test]
fn a_corrupt_partition_snapshot_starts_that_partition_cold_and_the_other_restores() {
    let f = Fixture::new("tele-two", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let half = TERMINALS * MINUTES / 2;
    let corrupt = state.join("tele-two-0.snap");
    let (mut c, port) = crash_after_commit(&f, "g-corrupt", &state, || {
        let mut bytes = std::fs::read(&corrupt).expect("snapshot of partition 0");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&corrupt, bytes).expect("corrupt it");
    });
    // Partition 1 resumes at its snapshot (half of the second half again);
    // partition 0 starts from its committed offset, the end: nothing.
    settle_at(&mut c, port, (half / 2) as f64, "only the restored partition re-learns");
    let said = stop(c);
    assert!(said.contains("tele-two-0.snap is corrupt: checksum mismatch; partition tele-two-0 starts cold"), "{said}");
    assert!(said.contains("tele-two-1.snap (10 terminals); partition tele-two-1 resumes at offset 1200"), "{said}");
}

#[test]
fn a_rebalance_moves_a_partitions_state_to_its_new_owner() {
    let f = Fixture::new("tele-move", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    // Replicas share the state directory (a shared volume): what one
    // snapshots on revoke, the next owner restores.
    let state = dir.path().join("state");
    let half = TERMINALS * MINUTES / 2;
    f.produce(0..half);
    let pa = free_port();
    let mut a = f.start("g-move", &state, pa);
    settle_at(&mut a, pa, half as f64, "one replica alone consumes the first half");
    let pb = free_port();
    let mut b = f.start("g-move", &state, pb);
    let owned = |port| metric(port, "termwatch_kafka_assigned_partitions");
    if !wait_for(Duration::from_secs(120), || owned(pa) == Some(1.0) && owned(pb) == Some(1.0)) {
        let _ = (a.kill(), b.kill(), a.wait(), b.wait());
        panic!("no rebalance: {} / {}", stderr_of(&mut a), stderr_of(&mut b));
    }
    f.produce(half..2 * half);
    settle_at(&mut a, pa, (half + half / 2) as f64, "the first replica consumes its partition's second half");
    settle_at(&mut b, pb, (half / 2) as f64, "the second replica consumes only its partition's second half");
    let (said_a, said_b) = (stop(a), stop(b));
    // The partition moved with its learned state, and resumed where that ended.
    assert!(said_b.contains(".snap (10 terminals); partition tele-move-"), "{said_b}");
    assert!(said_b.contains("resumes at offset 1200"), "{said_b}");
    // The replica that kept a partition restored it after the eager revoke.
    assert!(said_a.contains(".snap (10 terminals); partition tele-move-"), "{said_a}");
    for p in 0..2 {
        let snap = PartitionSnapshot::load(&state.join(format!("tele-move-{p}.snap"))).expect("partition snapshot");
        assert_eq!(snap.next_offset, half as i64, "partition {p}");
        assert_eq!(snap.terminals.len(), TERMINALS / 2, "partition {p} holds its terminals only");
    }
}

#[test]
fn snapshots_are_taken_on_the_timer_while_nothing_arrives() {
    let f = Fixture::new("tele-timer", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let half = TERMINALS * MINUTES / 2;
    f.produce(0..half);
    let port = free_port();
    let mut c = f.start_snapshotting("g-timer", &state, port, "2");
    settle_at(&mut c, port, half as f64, "the stream is consumed");
    // Consumed, then silence: the next snapshots come from the timer alone.
    let covers_all = || {
        (0..2).all(|p| {
            PartitionSnapshot::load(&state.join(format!("tele-timer-{p}.snap")))
                .is_ok_and(|s| s.next_offset == (half / 2) as i64)
        })
    };
    if !wait_for(Duration::from_secs(10), covers_all) {
        let _ = c.kill();
        let _ = c.wait();
        panic!("no snapshot covering the whole stream while idle: {}", stderr_of(&mut c));
    }
    // They cover what was consumed, so the offsets are committed too.
    assert!(wait_for(Duration::from_secs(10), || f.committed("g-timer") == half as i64), "committed");
    kill_9(c);
}
