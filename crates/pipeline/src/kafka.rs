//! The Kafka source: a consumer-group member that feeds the pipeline with
//! at-least-once delivery, and a dead-letter sink that writes to a topic.
//!
//! At-least-once works like this. Offsets are never stored automatically
//! (`enable.auto.offset.store=false`); after a batch has reached every sink
//! and the dead letters are durable, the consumer stores the next offset of
//! every partition it pushed from, and librdkafka's auto-commit commits what
//! was stored. On revoke the open batch is flushed and the offsets committed
//! synchronously before the partitions go; on shutdown likewise. A crash
//! loses nothing: what was not committed is consumed again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::dead_letter::{DeadLetter, DeadLetterSink, Position};
use crate::error::{PipelineError, SinkError};
use crate::metrics::KafkaMetrics;
use crate::pipeline::{Pipeline, Stats};

/// Where to consume from and how. Unknown keys are an error that names the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Default `localhost:9092`.
    pub brokers: String,
    /// Consumer group id; replicas with the same id split the partitions. Default `termwatch`.
    pub group_id: String,
    /// Topics to consume. Default `["telemetry"]`.
    pub topics: Vec<String>,
    /// Topic that receives rejected records with their reason in headers. Default `telemetry-dead-letters`.
    pub dead_letter_topic: String,
    /// librdkafka properties passed through unchanged (security.protocol,
    /// sasl.*, ssl.*, fetch tuning, ...). They override termwatch's defaults.
    /// Default: none.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "termwatch".into(),
            topics: vec!["telemetry".into()],
            dead_letter_topic: "telemetry-dead-letters".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The consumer's librdkafka configuration: termwatch's defaults, then
    /// the pass-through properties.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by hand, only once a batch reached every sink.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Lag per partition arrives through the statistics callback.
            .set("statistics.interval.ms", "5000")
            // Measured here: with the default 500 ms wait, consumption from a
            // lightly loaded broker crawls; 10 ms keeps batches flowing.
            .set("fetch.wait.max.ms", "10");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The dead-letter producer's configuration: the same brokers and
    /// pass-through properties that apply to producers.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            // A dead letter that cannot be written within this long fails the
            // batch: the consumer stops without committing past it.
            .set("message.timeout.ms", "30000");
        for (k, v) in &self.properties {
            if !is_consumer_only(k) {
                c.set(k, v);
            }
        }
        c
    }
}

/// Consumer properties that a producer would refuse or warn about.
fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto")
        || key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("max.poll")
        || key.starts_with("partition.assignment")
        || key.starts_with("max.partition.fetch")
        || key == "isolation.level"
        || key == "enable.partition.eof"
        || key == "check.crcs"
        || key == "queued.min.messages"
        || key == "queued.max.messages.kbytes"
}

/// What the consumer loop and the rebalance callback share.
struct Shared {
    pipeline: Pipeline,
    /// Next offset to store, per topic and partition, for everything pushed
    /// since the last store.
    pending: HashMap<String, HashMap<i32, i64>>,
    /// Set when a flush failed inside a rebalance callback: the loop stops.
    failed: Option<PipelineError>,
}

impl Shared {
    fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.pending.get_mut(topic) {
            Some(p) => {
                p.insert(partition, offset + 1);
            }
            None => {
                self.pending.insert(topic.to_string(), HashMap::from([(partition, offset + 1)]));
            }
        }
    }

    /// Stores the pending offsets. Called only after a successful flush.
    fn store<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> KafkaResult<()> {
        if self.pending.values().all(HashMap::is_empty) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &self.pending {
            for (&partition, &next) in parts {
                tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
            }
        }
        self.pending.clear();
        consumer.store_offsets(&tpl)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave offsets stored past
    // unflushed data (storing happens last), so the state stays usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Context {
    shared: Arc<Mutex<Shared>>,
    metrics: KafkaMetrics,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue;
                // a lag of -1 means "not known yet".
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        info!(event = "revoke", partitions = %describe(tpl), "partitions revoked; flushing and committing");
        let mut shared = lock(&self.shared);
        if let Err(e) = shared.pipeline.flush() {
            error!(error = %e, "flush on revoke failed; not committing past the open batch");
            shared.failed = Some(e);
            return;
        }
        if let Err(e) = shared.store(consumer) {
            warn!(error = %e, "storing offsets on revoke failed");
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is not an error worth a count.
            if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                self.metrics.commit_failures.inc();
                warn!(error = %e, "synchronous commit on revoke failed");
            }
        }
        for e in tpl.elements() {
            let _ = self.metrics.consumer_lag.remove_label_values(&[e.topic(), &e.partition().to_string()]);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                info!(event = "assign", partitions = %describe(tpl), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                warn!(error = %e, "rebalance error");
            }
        }
        let owned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.metrics.assigned_partitions.set(owned as i64);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result
            && e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset)
        {
            self.metrics.commit_failures.inc();
            warn!(error = %e, "offset commit failed; the next commit covers it");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let mut parts: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    parts.sort();
    parts.join(",")
}

/// Why the consumer stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka consumer for {brokers}: {cause}")]
    Client { brokers: String, cause: KafkaError },
    #[error("pipeline stopped; offsets were not committed past the failed batch: {0}")]
    Pipeline(#[from] PipelineError),
}

/// How many messages to take between checks of the batch age.
const AGE_CHECK_EVERY: u64 = 512;

/// A consumer-group member feeding a pipeline.
pub struct KafkaSource {
    consumer: BaseConsumer<Context>,
    shared: Arc<Mutex<Shared>>,
    metrics: KafkaMetrics,
    brokers: String,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Errors name the brokers.
    pub fn new(config: &KafkaConfig, pipeline: Pipeline, metrics: KafkaMetrics) -> Result<Self, KafkaSourceError> {
        let client_err = |cause| KafkaSourceError::Client { brokers: config.brokers.clone(), cause };
        let shared = Arc::new(Mutex::new(Shared { pipeline, pending: HashMap::new(), failed: None }));
        let context = Context { shared: Arc::clone(&shared), metrics: metrics.clone() };
        let consumer: BaseConsumer<Context> =
            config.consumer_config().create_with_context(context).map_err(client_err)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(client_err)?;
        Ok(KafkaSource { consumer, shared, metrics, brokers: config.brokers.clone() })
    }

    /// Consumes until `shutdown` is set, then flushes, commits synchronously
    /// and returns the pipeline's counts. Blocking: run it on its own thread.
    pub fn run(self, shutdown: &AtomicBool) -> Result<Stats, KafkaSourceError> {
        let mut since_age_check = 0u64;
        let mut consumed = 0u64;
        while !shutdown.load(Ordering::Relaxed) {
            let Some(polled) = self.consumer.poll(Duration::from_millis(100)) else {
                self.metrics.messages_consumed.inc_by(std::mem::take(&mut consumed));
                self.flush_if_old()?;
                continue;
            };
            let msg = match polled {
                Ok(msg) => msg,
                Err(e) => {
                    self.metrics.consumer_errors.inc();
                    warn!(error = %e, "consumer error; librdkafka retries");
                    continue;
                }
            };
            consumed += 1;
            let mut shared = lock(&self.shared);
            if let Some(e) = shared.failed.take() {
                return Err(e.into());
            }
            let position = Position::Kafka { topic: msg.topic(), partition: msg.partition(), offset: msg.offset() };
            let flushed = shared.pipeline.push(msg.payload().unwrap_or_default(), position)?;
            shared.note(msg.topic(), msg.partition(), msg.offset());
            if flushed {
                self.metrics.messages_consumed.inc_by(std::mem::take(&mut consumed));
                self.store(&mut shared);
            }
            drop(shared);
            since_age_check += 1;
            if since_age_check >= AGE_CHECK_EVERY {
                since_age_check = 0;
                self.flush_if_old()?;
            }
        }
        self.metrics.messages_consumed.inc_by(consumed);
        self.shutdown()
    }

    fn flush_if_old(&self) -> Result<(), KafkaSourceError> {
        let mut shared = lock(&self.shared);
        if let Some(e) = shared.failed.take() {
            return Err(e.into());
        }
        if shared.pipeline.poll_age(Instant::now())? {
            self.store(&mut shared);
        }
        Ok(())
    }

    fn store(&self, shared: &mut Shared) {
        if let Err(e) = shared.store(&self.consumer) {
            // The partition was revoked meanwhile: its new owner re-reads
            // from the last commit, which is the at-least-once promise.
            warn!(error = %e, "storing offsets failed");
        }
    }

    fn shutdown(self) -> Result<Stats, KafkaSourceError> {
        let stats = {
            let mut shared = lock(&self.shared);
            shared.pipeline.flush()?;
            self.store(&mut shared);
            shared.pipeline.stats().clone()
        };
        // A commit can meet a rebalance started by another member leaving;
        // retry briefly. If it still fails, the offsets stay stored and the
        // consumer's close commits them; at worst a successor re-reads some
        // records, which at-least-once allows: not a reason to fail the exit.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => break,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => break,
                Err(e) if Instant::now() < deadline => {
                    info!(error = %e, "commit at shutdown failed; retrying");
                    let _ = self.consumer.poll(Duration::from_millis(100));
                }
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    warn!(error = %e, "commit at shutdown failed; offsets will be committed on close or re-read");
                    break;
                }
            }
        }
        info!(brokers = %self.brokers, "consumer stopped");
        Ok(stats)
    }
}

/// Tracks dead-letter deliveries: librdkafka reports them on its own thread.
#[derive(Default)]
struct DeliveryState {
    failed: Mutex<Option<String>>,
    delivered: std::sync::atomic::AtomicU64,
}

struct DeliveryContext(Arc<DeliveryState>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, msg)) => {
                let mut failed = self.0.failed.lock().unwrap_or_else(PoisonError::into_inner);
                if failed.is_none() {
                    *failed = Some(format!("{} partition {} : {e}", msg.topic(), msg.partition()));
                }
            }
        }
    }
}

/// Writes rejected records to a dead-letter topic: the raw bytes as the
/// payload, the reason and the source position as headers.
pub struct KafkaDeadLetters {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    state: Arc<DeliveryState>,
    metrics: KafkaMetrics,
    reported: u64,
}

/// Header names of a dead letter.
pub mod headers {
    pub const FIELD: &str = "termwatch.field";
    pub const PROBLEM: &str = "termwatch.problem";
    pub const ERROR: &str = "termwatch.error";
    pub const SOURCE_TOPIC: &str = "termwatch.source.topic";
    pub const SOURCE_PARTITION: &str = "termwatch.source.partition";
    pub const SOURCE_OFFSET: &str = "termwatch.source.offset";
    pub const SOURCE_FILE: &str = "termwatch.source.file";
    pub const SOURCE_LINE: &str = "termwatch.source.line";
}

impl KafkaDeadLetters {
    pub fn new(config: &KafkaConfig, metrics: KafkaMetrics) -> Result<Self, KafkaSourceError> {
        let state = Arc::new(DeliveryState::default());
        let producer = config
            .producer_config()
            .create_with_context(DeliveryContext(Arc::clone(&state)))
            .map_err(|cause| KafkaSourceError::Client { brokers: config.brokers.clone(), cause })?;
        Ok(KafkaDeadLetters { producer, topic: config.dead_letter_topic.clone(), state, metrics, reported: 0 })
    }

    fn failure(&self) -> Option<String> {
        self.state.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn send(&mut self, dead: &DeadLetter<'_>) -> Result<(), SinkError> {
        if let Some(f) = self.failure() {
            return Err(SinkError::Other(format!("dead-letter topic {}: delivery failed: {f}", self.topic)));
        }
        let error = dead.rejection.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header { key: headers::FIELD, value: Some(dead.rejection.field.name()) })
            .insert(Header { key: headers::PROBLEM, value: Some(dead.rejection.problem.as_str()) })
            .insert(Header { key: headers::ERROR, value: Some(error.as_str()) });
        match dead.position {
            Position::Kafka { topic, partition, offset } => {
                h = h
                    .insert(Header { key: headers::SOURCE_TOPIC, value: Some(topic) })
                    .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&partition.to_string()) })
                    .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&offset.to_string()) });
            }
            Position::File { path, line, .. } => {
                h = h
                    .insert(Header { key: headers::SOURCE_FILE, value: Some(path) })
                    .insert(Header { key: headers::SOURCE_LINE, value: Some(&line.to_string()) });
            }
        }
        let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&self.topic).payload(dead.raw).headers(h);
        // The local queue is bounded; a full queue drains in milliseconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if Instant::now() < deadline => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(SinkError::Other(format!("dead-letter topic {}: {e}", self.topic))),
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.producer
            .flush(Duration::from_secs(35))
            .map_err(|e| SinkError::Other(format!("dead-letter topic {}: flush: {e}", self.topic)))?;
        if let Some(f) = self.failure() {
            return Err(SinkError::Other(format!("dead-letter topic {}: delivery failed: {f}", self.topic)));
        }
        let delivered = self.state.delivered.load(Ordering::Relaxed);
        self.metrics.dead_letters.inc_by(delivered - self.reported);
        self.reported = delivered;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys_by_name() {
        let err = serde_json::from_str::<KafkaConfig>(r#"{"brokers":"b:9092","gruop_id":"x"}"#).expect_err("typo");
        assert!(err.to_string().contains("gruop_id"), "{err}");
    }

    #[test]
    fn pass_through_properties_override_defaults_and_skip_the_producer_when_consumer_only() {
        let mut config = KafkaConfig::default();
        config.properties.insert("fetch.wait.max.ms".into(), "5".into());
        config.properties.insert("security.protocol".into(), "SASL_SSL".into());
        let consumer = config.consumer_config();
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        let producer = config.producer_config();
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
    }
}
