//! The Kafka source against a real broker process (tansu, an Apache Kafka
//! compatible broker): the truth the mock cluster stands in for.
//! `scripts/test` starts one and sets `TERMWATCH_TEST_KAFKA_BROKERS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Collected, Harness, dlq_messages, record, wait_until};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

const NEEDS_BROKER: &str = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS";

fn brokers() -> String {
    std::env::var("TERMWATCH_TEST_KAFKA_BROKERS").unwrap_or_else(|_| panic!("{NEEDS_BROKER}"))
}

/// Creates topics with unique names, so reruns against one broker do not collide.
fn topics(brokers: &str, names: &[(&str, i32)]) -> Vec<String> {
    let suffix = std::process::id().to_string()
        + &format!("-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let owned: Vec<(String, i32)> = names.iter().map(|(n, p)| (format!("{n}-{suffix}"), *p)).collect();
    let new: Vec<NewTopic<'_>> = owned.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
    owned.into_iter().map(|(n, _)| n).collect()
}

#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn real_broker_consume_pipeline_and_dead_letter_end_to_end() {
    let brokers = brokers();
    let names = topics(&brokers, &[("e2e", 3), ("e2e-dlq", 1)]);
    let h = Harness::new(&brokers, &names[0], &names[1]);
    let mut expected = BTreeSet::new();
    for i in 0..300 {
        if i % 100 == 50 {
            h.produce(
                &names[0],
                "T-bad",
                br#"{"terminal_id":"T-1","ts":"2026-11-24T10:01:00Z","region":"r","net_loss_pct":140}"#,
            );
        }
        let (key, body) = record(i % 11, i);
        h.produce(&names[0], &key, body.as_bytes());
        expected.insert((key, i));
    }
    h.flush_producer();

    let collected = Collected::default();
    let consumer = h.start_consumer("g-real-e2e", collected.clone());
    assert!(wait_until(Duration::from_secs(60), || collected.unique().len() >= 300), "got {}", collected.len());
    let stats = consumer.stop().expect("clean stop");
    assert_eq!(collected.unique(), expected);
    assert_eq!(stats.rejected_total(), 3);

    let dead = dlq_messages(&brokers, &names[1], 3);
    assert_eq!(dead.len(), 3);
    for d in &dead {
        assert_eq!(d.header("termwatch.field"), Some("net_loss_pct"));
        assert_eq!(d.header("termwatch.problem"), Some("out_of_range"));
        assert_eq!(d.header("termwatch.source.topic"), Some(names[0].as_str()));
        assert!(d.header("termwatch.source.offset").is_some_and(|o| o.parse::<i64>().is_ok()));
    }
    let committed: i64 = h.committed("g-real-e2e", &names[0], 3).iter().sum();
    assert_eq!(committed, 303, "every partition committed to its end, poison messages included");
}

#[test]
#[ignore = "needs a real Kafka broker: scripts/test starts tansu and sets TERMWATCH_TEST_KAFKA_BROKERS"]
fn real_broker_two_consumers_split_partitions_and_process_everything() {
    let brokers = brokers();
    let names = topics(&brokers, &[("split", 4), ("split-dlq", 1)]);
    let h = Harness::new(&brokers, &names[0], &names[1]);
    for i in 0..200 {
        let (key, body) = record(i % 20, i);
        h.produce(&names[0], &key, body.as_bytes());
    }
    h.flush_producer();
    let (a_seen, b_seen) = (Collected::default(), Collected::default());
    let a = h.start_consumer("g-real-split", a_seen.clone());
    assert!(wait_until(Duration::from_secs(60), || a_seen.unique().len() >= 200), "got {}", a_seen.len());
    let b = h.start_consumer("g-real-split", b_seen.clone());
    assert!(wait_until(Duration::from_secs(60), || a.assigned() > 0 && b.assigned() > 0), "no split");
    assert_eq!(a.assigned() + b.assigned(), 4);
    for i in 200..600 {
        let (key, body) = record(i % 20, i);
        h.produce(&names[0], &key, body.as_bytes());
    }
    h.flush_producer();
    let all = || a_seen.unique().union(&b_seen.unique()).count();
    assert!(wait_until(Duration::from_secs(60), || all() >= 600), "got {}", all());
    assert!(b_seen.len() > 0, "the second member processed its share");
    a.stop().expect("clean stop");
    b.stop().expect("clean stop");
    assert_eq!(all(), 600);
}
