//! The Kafka source against librdkafka's mock cluster: the real protocol on
//! loopback, in-process, with fault injection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Collected, Harness, dlq_messages, record, wait_until};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "telemetry";
const DLQ: &str = "telemetry-dead-letters";

fn cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, partitions, 1).expect("topic");
    cluster.create_topic(DLQ, 1, 1).expect("dead-letter topic");
    cluster
}

#[test]
fn advances_offset_past_poison_message_and_dead_letters_it() {
    let cluster = cluster(1);
    let h = Harness::new(&cluster.bootstrap_servers(), TOPIC, DLQ);
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        if i == 17 {
            h.produce(TOPIC, "T-poison", b"{\"terminal_id\":\"T-1\",\"ts\":");
        }
        let (key, body) = record(i % 5, i);
        h.produce(TOPIC, &key, body.as_bytes());
        expected.insert((key, i));
    }
    h.flush_producer();

    let collected = Collected::default();
    let consumer = h.start_consumer("g-poison", collected.clone());
    assert!(wait_until(Duration::from_secs(60), || collected.len() >= 40), "got {}", collected.len());
    let stats = consumer.stop().expect("clean stop");
    assert_eq!(collected.unique(), expected);
    assert_eq!((stats.read, stats.accepted, stats.rejected_total()), (41, 40, 1));

    let dead = dlq_messages(&h.brokers, DLQ, 1);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.payload, b"{\"terminal_id\":\"T-1\",\"ts\":");
    assert_eq!(d.header("termwatch.field"), Some("(record)"));
    assert_eq!(d.header("termwatch.problem"), Some("malformed"));
    assert_eq!(d.header("termwatch.source.topic"), Some(TOPIC));
    assert_eq!(d.header("termwatch.source.partition"), Some("0"));
    assert_eq!(d.header("termwatch.source.offset"), Some("17"));
    // The poison message did not block the partition: it is committed past the end.
    assert_eq!(h.committed("g-poison", TOPIC, 1), vec![41]);
}

#[test]
fn loses_nothing_when_the_broker_is_down_for_a_while() {
    let cluster = cluster(2);
    let h = Harness::new(&cluster.bootstrap_servers(), TOPIC, DLQ);
    for i in 0..30 {
        let (key, body) = record(i % 7, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();
    let collected = Collected::default();
    let consumer = h.start_consumer("g-outage", collected.clone());
    assert!(wait_until(Duration::from_secs(60), || collected.len() >= 30), "got {}", collected.len());

    cluster.broker_down(-1).expect("down");
    std::thread::sleep(Duration::from_secs(3));
    cluster.broker_up(-1).expect("up");
    for i in 30..60 {
        let (key, body) = record(i % 7, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();
    assert!(wait_until(Duration::from_secs(60), || collected.unique().len() >= 60), "got {}", collected.len());
    consumer.stop().expect("clean stop");
    assert_eq!(collected.unique().len(), 60);
}

#[test]
fn a_consumer_that_fails_without_committing_is_replayed_by_its_successor() {
    let cluster = cluster(3);
    let h = Harness::new(&cluster.bootstrap_servers(), TOPIC, DLQ);
    for i in 0..45 {
        let (key, body) = record(i % 9, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();

    // The first member's only sink fails on its first batch: it must stop
    // without storing, so nothing is committed.
    let failing = h.start_failing_consumer("g-restart");
    let err = failing.join().expect_err("the sink failure stops the consumer");
    assert!(err.to_string().contains("not committed"), "{err}");
    assert!(h.committed("g-restart", TOPIC, 3).iter().all(|&o| o < 0), "nothing was committed");

    let collected = Collected::default();
    let successor = h.start_consumer("g-restart", collected.clone());
    assert!(wait_until(Duration::from_secs(60), || collected.unique().len() >= 45), "got {}", collected.len());
    successor.stop().expect("clean stop");
    assert_eq!(collected.unique().len(), 45, "every record processed at least once");
}

#[test]
fn two_consumers_split_the_partitions_and_process_everything_across_a_rebalance() {
    let cluster = cluster(4);
    let h = Harness::new(&cluster.bootstrap_servers(), TOPIC, DLQ);
    for i in 0..40 {
        let (key, body) = record(i % 16, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();
    let (a_seen, b_seen) = (Collected::default(), Collected::default());
    let a = h.start_consumer("g-split", a_seen.clone());
    assert!(wait_until(Duration::from_secs(60), || a_seen.len() >= 40), "got {}", a_seen.len());

    // The second member joins: the group rebalances and splits the partitions.
    let b = h.start_consumer("g-split", b_seen.clone());
    assert!(wait_until(Duration::from_secs(60), || b.assigned() > 0 && a.assigned() > 0), "no split");
    assert_eq!(a.assigned() + b.assigned(), 4);
    for i in 40..120 {
        let (key, body) = record(i % 16, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();
    let all = || a_seen.unique().union(&b_seen.unique()).count();
    assert!(wait_until(Duration::from_secs(60), || all() >= 120), "got {}", all());
    assert!(b_seen.len() > 0, "the second member processed its share");
    a.stop().expect("clean stop");
    b.stop().expect("clean stop");
    assert_eq!(all(), 120);
}

#[test]
fn does_not_commit_past_a_record_whose_dead_letter_cannot_be_written() {
    let cluster = cluster(1);
    let h = Harness::new(&cluster.bootstrap_servers(), TOPIC, DLQ);
    for i in 0..10 {
        let (key, body) = record(1, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.produce(TOPIC, "T-1", b"not json");
    for i in 10..20 {
        let (key, body) = record(1, i);
        h.produce(TOPIC, &key, body.as_bytes());
    }
    h.flush_producer();
    // From now on every produce request fails, so the dead letter cannot be written.
    let refused = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64];
    cluster.request_errors(RDKafkaApiKey::Produce, &refused);

    let stop = Arc::new(AtomicBool::new(false));
    let consumer = h.start_consumer_with("g-dlq-down", Collected::default(), Arc::clone(&stop), 4);
    let err = consumer.join().expect_err("an unwritable dead-letter topic stops the consumer");
    assert!(err.to_string().contains("dead-letter"), "{err}");
    stop.store(true, Ordering::Relaxed);
    let committed = h.committed("g-dlq-down", TOPIC, 1);
    assert!(committed[0] <= 10, "committed {committed:?}: past the undeliverable dead letter at offset 10");
}
