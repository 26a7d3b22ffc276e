//! Shared by the Kafka tests: a producer, a consumer running the real
//! `KafkaSource` on its own thread, and a sink that remembers what reached it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use termwatch_pipeline::{
    BatchConfig, BatchSink, KafkaConfig, KafkaDeadLetters, KafkaMetrics, KafkaSource, KafkaSourceError, Pipeline,
    SinkError, Stats,
};

pub const START_MS: i64 = 1_795_514_460_000; // 2026-11-24T10:01:00Z

/// A valid record of terminal `t` at minute `i`: (terminal_id, json).
pub fn record(t: usize, i: usize) -> (String, String) {
    let id = format!("T-{t:03}");
    let ts = START_MS + i as i64 * 60_000;
    let body = format!(r#"{{"terminal_id":"{id}","ts":{ts},"region":"r-{}","supply_v_mean":12.0}}"#, t % 3);
    (id, body)
}

/// Every (terminal_id, minute) that reached the sink, duplicates included.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<(String, usize)>>>);

impl Collected {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn unique(&self) -> BTreeSet<(String, usize)> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

impl BatchSink for Collected {
    fn name(&self) -> &str {
        "collect"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let ids = batch.column(0).as_dictionary::<Int32Type>();
        let names = ids.values().as_string::<i32>();
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        let mut out = self.0.lock().unwrap();
        for row in 0..batch.num_rows() {
            let id = names.value(ids.keys().value(row) as usize).to_string();
            out.push((id, ((ts.value(row) - START_MS) / 60_000) as usize));
        }
        Ok(())
    }
}

struct Failing;

impl BatchSink for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn process_batch(&mut self, _: &RecordBatch) -> Result<(), SinkError> {
        Err(SinkError::Other("refused on purpose".into()))
    }
}

pub struct Running {
    handle: JoinHandle<Result<Stats, KafkaSourceError>>,
    stop: Arc<AtomicBool>,
    metrics: KafkaMetrics,
}

impl Running {
    pub fn stop(self) -> Result<Stats, KafkaSourceError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
    pub fn join(self) -> Result<Stats, KafkaSourceError> {
        self.handle.join().expect("consumer thread")
    }
    pub fn assigned(&self) -> i64 {
        self.metrics.assigned_partitions.get()
    }
}

pub struct Harness {
    pub brokers: String,
    topic: String,
    dlq: String,
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Harness {
    pub fn new(brokers: &str, topic: &str, dlq: &str) -> Self {
        let producer =
            ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "1").create().expect("producer");
        Harness { brokers: brokers.to_string(), topic: topic.to_string(), dlq: dlq.to_string(), producer }
    }

    pub fn produce(&self, topic: &str, key: &str, payload: &[u8]) {
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    pub fn flush_producer(&self) {
        self.producer.flush(Duration::from_secs(30)).expect("test producer flush");
    }

    pub fn config(&self, group: &str) -> KafkaConfig {
        let mut config = KafkaConfig {
            brokers: self.brokers.clone(),
            group_id: group.to_string(),
            topics: vec![self.topic.clone()],
            dead_letter_topic: self.dlq.clone(),
            ..KafkaConfig::default()
        };
        // Fail fast in tests: a dead letter undeliverable for 3 s fails its batch.
        config.properties.insert("message.timeout.ms".into(), "3000".into());
        config.properties.insert("session.timeout.ms".into(), "6000".into());
        config.properties.insert("heartbeat.interval.ms".into(), "500".into());
        config
    }

    fn start(&self, group: &str, sink: Box<dyn BatchSink>, stop: Arc<AtomicBool>, max_rows: usize) -> Running {
        let config = self.config(group);
        let registry = prometheus::Registry::new();
        let metrics = KafkaMetrics::register(&registry).expect("metrics");
        let dlq = KafkaDeadLetters::new(&config, metrics.clone()).expect("dead-letter producer");
        let batch = BatchConfig { max_rows, max_age: Duration::from_millis(100) };
        let pipeline = Pipeline::new(batch, vec![sink], Box::new(dlq));
        let source = KafkaSource::new(&config, pipeline, metrics.clone()).expect("consumer");
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || source.run(&flag));
        Running { handle, stop, metrics }
    }

    pub fn start_consumer(&self, group: &str, sink: Collected) -> Running {
        self.start(group, Box::new(sink), Arc::new(AtomicBool::new(false)), 64)
    }

    pub fn start_consumer_with(&self, group: &str, sink: Collected, stop: Arc<AtomicBool>, max_rows: usize) -> Running {
        self.start(group, Box::new(sink), stop, max_rows)
    }

    pub fn start_failing_consumer(&self, group: &str) -> Running {
        self.start(group, Box::new(Failing), Arc::new(AtomicBool::new(false)), 64)
    }

    /// The group's committed offsets for partitions 0..n (negative: none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }
}

pub struct Dead {
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Dead {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Reads `expected` messages from the dead-letter topic.
pub fn dlq_messages(brokers: &str, topic: &str, expected: usize) -> Vec<Dead> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Dead { payload: m.payload().unwrap_or_default().to_vec(), headers });
        }
    }
    out
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}
