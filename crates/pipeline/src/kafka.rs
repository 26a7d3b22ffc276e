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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tracing::{error, info, warn};

use crate::dead_letter::{DeadLetter, DeadLetterSink, Position};
use crate::error::{PipelineError, SinkError};
use crate::kafka_config::KafkaConfig;
use crate::metrics::KafkaMetrics;
use crate::partitions::PartitionKey;
use crate::pipeline::{Pipeline, Stats};

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
            // A partition that reached its end holds no window open for the
            // others until it sends again (event time per partition).
            .set("enable.partition.eof", "true")
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

/// How many messages the poll thread hands over at once, and the longest it
/// holds a partial chunk: small enough for latency, large enough that the
/// hand-over costs nothing per message.
const CHUNK_MESSAGES: usize = 1024;
const CHUNK_MAX_AGE: Duration = Duration::from_millis(20);
/// Chunks in flight between the threads; a full queue blocks polling, which
/// is the back-pressure that keeps memory bounded.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How long shutting down waits for the group to take the partitions back
/// before closing anyway (everything processed is committed by then).
const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages copied out of librdkafka's buffers, so the poll thread can keep
/// polling while the worker decodes.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    topics: Vec<String>,
    /// (topic index, partition, offset, payload end in `bytes`)
    entries: Vec<(u32, i32, i64, usize)>,
    started: Option<Instant>,
}

impl Chunk {
    fn add(&mut self, topic: &str, partition: i32, offset: i64, payload: &[u8]) {
        let t = match self.topics.iter().position(|t| t == topic) {
            Some(i) => i,
            None => {
                self.topics.push(topic.to_string());
                self.topics.len() - 1
            }
        };
        self.bytes.extend_from_slice(payload);
        self.entries.push((t as u32, partition, offset, self.bytes.len()));
        self.started.get_or_insert_with(Instant::now);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
        self.started = None;
    }
}

/// Next offsets to store, per topic and partition.
type Offsets = HashMap<String, HashMap<i32, i64>>;

enum Work {
    Chunk(Chunk),
    /// Flush everything received so far, then answer with [`Ack::Barrier`].
    Barrier,
    /// Partitions were assigned: restore their state, answer with
    /// [`Ack::Assigned`].
    Assign(Vec<PartitionKey>),
    /// Partitions are being revoked (after a barrier): snapshot, forget
    /// their state, answer with [`Ack::Revoked`].
    Revoke(Vec<PartitionKey>),
    /// A partition has delivered everything there is for now (or nothing
    /// for `partition_idle_s`): after the messages sent before this.
    Idle(PartitionKey),
}

enum Ack {
    /// A batch reached every sink: these offsets may be stored.
    Store(Offsets),
    /// The answer to [`Work::Barrier`]: the last offsets, or the failure.
    Barrier(Result<Offsets, String>),
    /// The pipeline failed: nothing after the last `Store` may be stored.
    Failed(String),
    /// The answer to [`Work::Assign`]: where to resume each restored partition.
    Assigned(Vec<(PartitionKey, i64)>),
    /// The answer to [`Work::Revoke`].
    Revoked(Result<(), String>),
}

/// The decode side: owns the pipeline, runs on its own thread.
struct Worker {
    pipeline: Pipeline,
    pending: Offsets,
    /// Next offset of every partition owned, as far as it reached every
    /// sink: what a state snapshot covers.
    positions: HashMap<PartitionKey, i64>,
    acks: Sender<Ack>,
    recycle: Sender<Chunk>,
    /// Partitions a state snapshot covers (written here, or restored): with
    /// per-partition state, a partition's offsets are stored only from its
    /// first snapshot on. A member killed before it would otherwise restart
    /// past records whose learning died with it.
    covered: HashSet<PartitionKey>,
}

impl Worker {
    fn run(mut self, work: Receiver<Work>) -> Stats {
        let stats = self.serve(work);
        // Sinks make what they hold durable (snapshots, files) on the way out.
        let durable = self
            .pipeline
            .flush()
            .and_then(|()| {
                self.settle();
                self.checkpoint(true)
            })
            .and_then(|()| self.pipeline.flush_sinks());
        if let Err(e) = durable {
            let _ = self.acks.send(Ack::Failed(e.to_string()));
        }
        stats
    }

    fn serve(&mut self, work: Receiver<Work>) -> Stats {
        loop {
            let item = match work.recv_timeout(Duration::from_millis(50)) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let result = match item {
                Some(Work::Chunk(chunk)) => self.process(chunk),
                Some(Work::Assign(partitions)) => {
                    let seeks = self.pipeline.assign(&partitions);
                    for (key, offset) in &seeks {
                        self.positions.insert(key.clone(), *offset);
                        self.covered.insert(key.clone());
                    }
                    let _ = self.acks.send(Ack::Assigned(seeks));
                    Ok(())
                }
                Some(Work::Revoke(partitions)) => {
                    // The barrier before this flushed everything.
                    let answer = self.checkpoint(true).map_err(|e| e.to_string());
                    self.pipeline.revoke(&partitions);
                    for key in &partitions {
                        self.positions.remove(key);
                        self.covered.remove(key);
                    }
                    let _ = self.acks.send(Ack::Revoked(answer));
                    Ok(())
                }
                Some(Work::Idle(key)) => self.pipeline.end_of_source(&key.to_string()),
                Some(Work::Barrier) => {
                    let answer = match self.pipeline.flush() {
                        Ok(()) => {
                            let offsets = self.settle();
                            Ok(self.storable(offsets))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    let failed = answer.is_err();
                    let _ = self.acks.send(Ack::Barrier(answer));
                    if failed {
                        break;
                    }
                    Ok(())
                }
                // Snapshots are due on a timer, also while nothing arrives:
                // everything flushed is what the positions cover.
                None => self.flush_if_old().and_then(|()| self.checkpoint(false)),
            };
            if let Err(e) = result {
                let _ = self.acks.send(Ack::Failed(e.to_string()));
                break;
            }
        }
        self.pipeline.stats().clone()
    }

    fn process(&mut self, mut chunk: Chunk) -> Result<(), PipelineError> {
        let mut start = 0;
        for &(t, partition, offset, end) in &chunk.entries {
            let topic = chunk.topics[t as usize].as_str();
            let flushed = self.pipeline.push(&chunk.bytes[start..end], Position::Kafka { topic, partition, offset })?;
            start = end;
            match self.pending.get_mut(topic) {
                Some(p) => {
                    p.insert(partition, offset + 1);
                }
                None => {
                    self.pending.insert(topic.to_string(), HashMap::from([(partition, offset + 1)]));
                }
            }
            if flushed {
                self.flushed()?;
            }
        }
        chunk.clear();
        let _ = self.recycle.send(chunk);
        self.flush_if_old()
    }

    fn flush_if_old(&mut self) -> Result<(), PipelineError> {
        if self.pipeline.poll_age(Instant::now())? {
            self.flushed()?;
        }
        Ok(())
    }

    /// After a flush: everything pushed has reached every sink. The offsets
    /// may be stored, and the sinks may snapshot what they learned with
    /// the positions it covers.
    fn flushed(&mut self) -> Result<(), PipelineError> {
        let offsets = self.settle();
        let storable = self.storable(offsets);
        let _ = self.acks.send(Ack::Store(storable));
        self.checkpoint(false)
    }

    /// The offsets that may be stored now: all of them, or with
    /// per-partition state those of partitions a snapshot covers.
    fn storable(&self, mut offsets: Offsets) -> Offsets {
        if self.pipeline.keeps_state() {
            for (topic, parts) in &mut offsets {
                parts.retain(|&partition, _| self.covered.contains(&PartitionKey { topic: topic.clone(), partition }));
            }
        }
        offsets
    }

    /// Snapshots when due (always when `force`). A snapshot covers every
    /// position: those withheld until now may be stored.
    fn checkpoint(&mut self, force: bool) -> Result<(), PipelineError> {
        if self.pipeline.checkpoint(&self.positions, force)? && self.pipeline.keeps_state() {
            let mut all = Offsets::new();
            for (key, &next) in &self.positions {
                self.covered.insert(key.clone());
                all.entry(key.topic.clone()).or_default().insert(key.partition, next);
            }
            let _ = self.acks.send(Ack::Store(all));
        }
        Ok(())
    }

    /// Takes the offsets pushed since the last flush, adding them to the
    /// positions.
    fn settle(&mut self) -> Offsets {
        let offsets = std::mem::take(&mut self.pending);
        for (topic, parts) in &offsets {
            for (&partition, &next) in parts {
                self.positions.insert(PartitionKey { topic: topic.clone(), partition }, next);
            }
        }
        offsets
    }
}

/// When a partition last delivered, to tell one that has nothing to send
/// from one that is merely behind.
struct Liveness {
    last: Instant,
    /// [`Feeder::blocked`] at `last`.
    blocked_at_last: Duration,
    /// Told to the worker as idle, and silent since.
    idle: bool,
}

/// How often the poll thread looks for partitions gone quiet.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The poll side's state, shared with the rebalance callback (which runs on
/// the poll thread, inside `poll`).
struct Feeder {
    chunk: Chunk,
    work: Option<SyncSender<Work>>,
    acks: Receiver<Ack>,
    recycled: Receiver<Chunk>,
    /// The first failure reported by the worker.
    failed: Option<String>,
    /// The topics subscribed: librdkafka names only the partition of an
    /// end-of-partition event.
    topics: Vec<String>,
    /// Every partition assigned, by topic and partition.
    partitions: HashMap<String, HashMap<i32, Liveness>>,
    /// Time spent waiting for the worker to take a chunk: a partition is not
    /// quiet while the consumer is not reading.
    blocked: Duration,
    idle_after: Duration,
    last_idle_check: Instant,
    /// `termwatch_kafka_messages_consumed_total`.
    consumed: prometheus::IntCounter,
}

impl Feeder {
    fn send_chunk(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        self.note_delivered();
        // Counted as handed over, whatever sends the chunk (a full chunk, an
        // end of partition, a barrier).
        self.consumed.inc_by(self.chunk.entries.len() as u64);
        let fresh = self.recycled.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.chunk, fresh);
        let waited = Instant::now();
        let delivered = self.work.as_ref().is_some_and(|w| w.send(Work::Chunk(full)).is_ok());
        self.blocked += waited.elapsed();
        if !delivered && self.failed.is_none() {
            self.failed = Some("the decode worker stopped".into());
        }
    }

    /// The partitions in the chunk about to go have delivered: they are not
    /// idle (the pipeline learns that from their rows).
    fn note_delivered(&mut self) {
        let (now, blocked) = (Instant::now(), self.blocked);
        let mut previous = None;
        for &(t, partition, _, _) in &self.chunk.entries {
            if previous == Some((t, partition)) {
                continue;
            }
            previous = Some((t, partition));
            let topic = self.chunk.topics.get(t as usize).map_or("", String::as_str);
            if let Some(live) = self.partitions.get_mut(topic).and_then(|p| p.get_mut(&partition)) {
                *live = Liveness { last: now, blocked_at_last: blocked, idle: false };
            }
        }
    }

    fn assigned(&mut self, keys: &[PartitionKey]) {
        let (now, blocked) = (Instant::now(), self.blocked);
        for key in keys {
            self.partitions
                .entry(key.topic.clone())
                .or_default()
                .insert(key.partition, Liveness { last: now, blocked_at_last: blocked, idle: false });
        }
    }

    fn revoked(&mut self, keys: &[PartitionKey]) {
        for key in keys {
            if let Some(p) = self.partitions.get_mut(&key.topic) {
                p.remove(&key.partition);
            }
        }
    }

    /// librdkafka reached the end of partition `partition`: tells the worker
    /// after the messages before it. With several topics the event does not
    /// say whose partition it is; their partitions go idle by silence.
    fn end_of_partition(&mut self, partition: i32) {
        let [topic] = self.topics.as_slice() else { return };
        let key = PartitionKey { topic: topic.clone(), partition };
        if let Some(live) = self.partitions.get_mut(topic).and_then(|p| p.get_mut(&partition))
            && !live.idle
        {
            live.idle = true;
            self.send_idle(key);
        }
    }

    /// Partitions that delivered nothing for `idle_after` of reading time
    /// go idle (checked once a second).
    fn check_quiet(&mut self) {
        if self.last_idle_check.elapsed() < IDLE_CHECK_EVERY {
            return;
        }
        self.last_idle_check = Instant::now();
        let mut quiet = Vec::new();
        for (topic, parts) in &mut self.partitions {
            for (&partition, live) in parts.iter_mut() {
                let reading = live.last.elapsed().saturating_sub(self.blocked.saturating_sub(live.blocked_at_last));
                if !live.idle && reading >= self.idle_after {
                    live.idle = true;
                    quiet.push(PartitionKey { topic: topic.clone(), partition });
                }
            }
        }
        quiet.sort();
        for key in quiet {
            warn!(partition = %key, after = ?self.idle_after, "partition delivered nothing and reported no end; it no longer holds windows open");
            self.send_idle(key);
        }
    }

    fn send_idle(&mut self, key: PartitionKey) {
        self.send_chunk();
        let sent = self.work.as_ref().is_some_and(|w| w.send(Work::Idle(key)).is_ok());
        if !sent && self.failed.is_none() && self.work.is_some() {
            self.failed = Some("the decode worker stopped".into());
        }
    }

    /// Stores what the worker acknowledged so far, without waiting.
    fn store_acked<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        while let Ok(ack) = self.acks.try_recv() {
            self.handle(ack, consumer);
        }
    }

    fn handle<C: ConsumerContext>(&mut self, ack: Ack, consumer: &BaseConsumer<C>) -> Option<Result<(), String>> {
        match ack {
            Ack::Store(offsets) => {
                if self.failed.is_none() {
                    store(consumer, &offsets);
                }
                None
            }
            Ack::Failed(e) => {
                self.failed.get_or_insert(e);
                None
            }
            Ack::Barrier(Ok(offsets)) => {
                if self.failed.is_none() {
                    store(consumer, &offsets);
                }
                Some(Ok(()))
            }
            Ack::Barrier(Err(e)) => {
                self.failed.get_or_insert(e.clone());
                Some(Err(e))
            }
            // Answers to requests; `request` takes them before `handle`.
            Ack::Assigned(_) | Ack::Revoked(_) => None,
        }
    }

    /// Sends a request to the worker and waits for its answer, storing the
    /// offsets acknowledged meanwhile. None: the worker is gone.
    fn request<C: ConsumerContext>(&mut self, work: Work, consumer: &BaseConsumer<C>) -> Option<Ack> {
        self.send_chunk();
        let sent = self.work.as_ref().is_some_and(|w| w.send(work).is_ok());
        if !sent {
            return None;
        }
        loop {
            match self.acks.recv() {
                Ok(ack @ (Ack::Assigned(_) | Ack::Revoked(_))) => return Some(ack),
                Ok(ack) => {
                    self.handle(ack, consumer);
                }
                Err(_) => return None,
            }
        }
    }

    /// Hands over the partial chunk, waits until the worker has flushed
    /// everything, and stores the offsets. Err: do not commit.
    fn barrier<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.work.is_none() {
            // Shutting down: the final barrier already flushed everything,
            // and the worker is gone. The revoke that closing the consumer
            // triggers has nothing left to flush.
            return Ok(());
        }
        self.send_chunk();
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let sent = self.work.as_ref().is_some_and(|w| w.send(Work::Barrier).is_ok());
        if !sent {
            return Err(self.failed.clone().unwrap_or_else(|| "the decode worker stopped".into()));
        }
        loop {
            match self.acks.recv() {
                Ok(ack) => {
                    if let Some(result) = self.handle(ack, consumer) {
                        return result;
                    }
                }
                Err(_) => return Err(self.failed.clone().unwrap_or_else(|| "the decode worker stopped".into())),
            }
        }
    }
}

fn store<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &Offsets) {
    if offsets.values().all(HashMap::is_empty) {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in offsets {
        for (&partition, &next) in parts {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next)) {
                warn!(error = %e, topic, partition, "cannot list an offset to store");
            }
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // The partition was revoked meanwhile: its new owner re-reads from
        // the last commit, which is the at-least-once promise.
        warn!(error = %e, "storing offsets failed");
    }
}

fn lock(feeder: &Mutex<Feeder>) -> MutexGuard<'_, Feeder> {
    // Storing happens only after the worker's flush succeeded, so a panic
    // elsewhere while holding the lock cannot store past unflushed data.
    feeder.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Context {
    feeder: Arc<Mutex<Feeder>>,
    metrics: KafkaMetrics,
    /// Partitions assigned now, counted from the rebalances.
    owned: AtomicI64,
    /// The brokers have answered: a group assignment (possibly empty), a
    /// message or a partition's end. `/readyz` until then says not ready.
    ready: Arc<AtomicBool>,
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

impl Context {
    /// Counts the partitions owned from the rebalances themselves. Asking
    /// librdkafka (`assignment()`) is a request to the group's thread, which
    /// during close can finish and never answer (seen with gdb).
    fn count_owned(&self, cooperative: bool, change: i64) {
        let owned = if cooperative {
            (self.owned.load(Ordering::Relaxed) + change).max(0)
        } else {
            // Eager: an assignment is the whole set, a revoke takes all.
            change.max(0)
        };
        self.owned.store(owned, Ordering::Relaxed);
        self.metrics.assigned_partitions.set(owned);
    }

    /// Asks the sinks to restore the assigned partitions' state, and points
    /// each restored partition at the offset its state covers, so that
    /// nothing is applied twice and nothing after the snapshot is skipped.
    /// Returns the offsets the restored partitions resume at.
    fn restore(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) -> Offsets {
        let partitions: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| PartitionKey { topic: e.topic().to_string(), partition: e.partition() })
            .collect();
        let mut feeder = lock(&self.feeder);
        let mut resumed = Offsets::new();
        if feeder.work.is_none() || feeder.failed.is_some() {
            return resumed;
        }
        feeder.assigned(&partitions);
        let Some(Ack::Assigned(seeks)) = feeder.request(Work::Assign(partitions), consumer) else {
            return resumed;
        };
        drop(feeder);
        for (key, offset) in seeks {
            match tpl.set_partition_offset(&key.topic, key.partition, Offset::Offset(offset)) {
                Ok(()) => {
                    info!(partition = %key, offset, "resuming the partition where its restored state ends");
                    resumed.entry(key.topic).or_default().insert(key.partition, offset);
                }
                Err(e) => warn!(error = %e, partition = %key, "cannot resume at the restored state's offset"),
            }
        }
        resumed
    }
}

impl ConsumerContext for Context {
    /// librdkafka's rebalance, as rdkafka's default does it (revoke: flush,
    /// commit, unassign; assign: assign), except that an assignment starts
    /// each partition whose state was restored at the offset that state
    /// covers instead of the committed one.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.ready.store(true, Ordering::Relaxed);
                let resumed = self.restore(consumer, tpl);
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match assigned {
                    Ok(()) => {
                        self.count_owned(cooperative, tpl.count() as i64);
                        // Everything before a restored state's offset was
                        // processed (its alerts written before the snapshot):
                        // committed too, or a partition restored at its end
                        // would never commit it (nothing more to consume).
                        store(consumer, &resumed);
                    }
                    Err(e) => error!(error = %e, "assigning partitions failed"),
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let unassigned = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                match unassigned {
                    Ok(()) => self.count_owned(cooperative, -(tpl.count() as i64)),
                    Err(e) => error!(error = %e, "unassigning partitions failed"),
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            _ => {
                let code: RDKafkaErrorCode = err.into();
                let rebalance = Rebalance::Error(KafkaError::Rebalance(code));
                self.pre_rebalance(consumer, &rebalance);
                let unassigned = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                match unassigned {
                    Ok(()) => self.count_owned(cooperative, -(tpl.count() as i64)),
                    Err(e) => error!(error = %e, "unassigning partitions after a rebalance error failed"),
                }
                self.post_rebalance(consumer, &rebalance);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        info!(event = "revoke", partitions = %describe(tpl), "partitions revoked; flushing and committing");
        let mut feeder = lock(&self.feeder);
        if feeder.work.is_none() {
            // Closing: `run` has flushed and committed synchronously already.
            // A synchronous commit from the revoke that closing triggers can
            // wait forever inside librdkafka, so there is none.
            return;
        }
        if let Err(e) = feeder.barrier(consumer) {
            error!(error = %e, "flush on revoke failed; not committing past the open batch");
            return;
        }
        let partitions: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| PartitionKey { topic: e.topic().to_string(), partition: e.partition() })
            .collect();
        feeder.revoked(&partitions);
        // Their state is snapshotted with the offsets just flushed, then
        // dropped: the next owner restores it and resumes where it ends.
        match feeder.request(Work::Revoke(partitions), consumer) {
            Some(Ack::Revoked(Ok(()))) => {}
            Some(Ack::Revoked(Err(e))) => error!(error = %e, "snapshot on revoke failed"),
            _ => error!("the decode worker stopped before the revoke was handled"),
        }
        drop(feeder);
        commit_sync(consumer, &self.metrics, "revoke");
        for e in tpl.elements() {
            let _ = self.metrics.consumer_lag.remove_label_values(&[e.topic(), &e.partition().to_string()]);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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

/// Commits what was stored. A commit can meet a rebalance started by another
/// member; it is retried briefly, and if it still fails the offsets stay
/// stored for the next commit: at worst a successor re-reads some records,
/// which at-least-once allows.
fn commit_sync<C: ConsumerContext>(consumer: &BaseConsumer<C>, metrics: &KafkaMetrics, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => return,
            Err(e)
                if Instant::now() < deadline
                    && e.rdkafka_error_code() == Some(RDKafkaErrorCode::RebalanceInProgress) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                metrics.commit_failures.inc();
                warn!(error = %e, when, "synchronous commit failed; stored offsets are committed later or re-read");
                return;
            }
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
    Pipeline(String),
}

impl From<PipelineError> for KafkaSourceError {
    fn from(e: PipelineError) -> Self {
        KafkaSourceError::Pipeline(e.to_string())
    }
}

/// A consumer-group member feeding a pipeline. Two threads: the caller's
/// polls librdkafka and copies messages into chunks; a worker decodes them
/// through the pipeline and reports which offsets have reached every sink,
/// which the polling thread then stores.
pub struct KafkaSource {
    consumer: BaseConsumer<Context>,
    feeder: Arc<Mutex<Feeder>>,
    worker: Option<(Worker, Receiver<Work>)>,
    metrics: KafkaMetrics,
    brokers: String,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Errors name the brokers.
    pub fn new(config: &KafkaConfig, pipeline: Pipeline, metrics: KafkaMetrics) -> Result<Self, KafkaSourceError> {
        let client_err = |cause| KafkaSourceError::Client { brokers: config.brokers.clone(), cause };
        let (work_tx, work_rx) = sync_channel(CHUNKS_IN_FLIGHT);
        let (ack_tx, ack_rx) = channel();
        let (recycle_tx, recycle_rx) = channel();
        let feeder = Arc::new(Mutex::new(Feeder {
            chunk: Chunk::default(),
            work: Some(work_tx),
            acks: ack_rx,
            recycled: recycle_rx,
            failed: None,
            topics: config.topics.clone(),
            partitions: HashMap::new(),
            blocked: Duration::ZERO,
            idle_after: Duration::from_secs(config.partition_idle_s.max(1)),
            last_idle_check: Instant::now(),
            consumed: metrics.messages_consumed.clone(),
        }));
        let worker = Worker {
            pipeline,
            pending: HashMap::new(),
            positions: HashMap::new(),
            acks: ack_tx,
            recycle: recycle_tx,
            covered: HashSet::new(),
        };
        let context = Context {
            feeder: Arc::clone(&feeder),
            metrics: metrics.clone(),
            owned: AtomicI64::new(0),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let consumer: BaseConsumer<Context> =
            config.consumer_config().create_with_context(context).map_err(client_err)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(client_err)?;
        Ok(KafkaSource { consumer, feeder, worker: Some((worker, work_rx)), metrics, brokers: config.brokers.clone() })
    }

    /// Becomes true once the brokers have answered (see `Context::ready`):
    /// for a readiness probe.
    pub fn ready(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.consumer.context().ready)
    }

    /// Consumes until `shutdown` is set, then flushes, commits synchronously
    /// and returns the pipeline's counts. Blocking: run it on its own thread.
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<Stats, KafkaSourceError> {
        let Some((worker, work_rx)) = self.worker.take() else {
            return Err(KafkaSourceError::Pipeline("the source already ran".into()));
        };
        let worker = std::thread::Builder::new()
            .name("termwatch-decode".into())
            .spawn(move || worker.run(work_rx))
            .map_err(|e| KafkaSourceError::Pipeline(format!("cannot start the decode thread: {e}")))?;
        let outcome = self.poll_loop(shutdown);
        // Dropping the sender ends the worker; it has flushed at the barrier.
        lock(&self.feeder).work = None;
        let joined = worker.join();
        // What its last snapshot covers, stored before the final commit.
        lock(&self.feeder).store_acked(&self.consumer);
        if outcome.is_ok() && joined.is_ok() {
            commit_sync(&self.consumer, &self.metrics, "shutdown");
        }
        self.leave_group();
        let stats = joined.map_err(|_| KafkaSourceError::Pipeline("the decode thread panicked".into()))?;
        outcome?;
        info!(brokers = %self.brokers, "consumer stopped");
        Ok(stats)
    }

    /// Hands the partitions back before the consumer is dropped. Closing a
    /// consumer that still owns partitions makes librdkafka raise a revoke
    /// from inside the close, and answering it can wait forever
    /// (librdkafka issues 4884 and 4527; about one close in ten here with
    /// two members). Unsubscribing first and answering that revoke while
    /// the group is still alive leaves the close nothing to revoke, the
    /// workaround librdkafka's maintainers give.
    fn leave_group(&self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + LEAVE_GROUP_TIMEOUT;
        while self.consumer.context().owned.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            // Messages still buffered are dropped unprocessed: their offsets
            // were not stored, so the next owner reads them.
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        if self.consumer.context().owned.load(Ordering::Relaxed) > 0 {
            warn!(timeout = ?LEAVE_GROUP_TIMEOUT, "the group did not take the partitions back in time; closing anyway");
        }
    }

    fn poll_loop(&self, shutdown: &AtomicBool) -> Result<(), KafkaSourceError> {
        while !shutdown.load(Ordering::Relaxed) {
            let polled = self.consumer.poll(Duration::from_millis(50));
            let mut feeder = lock(&self.feeder);
            feeder.store_acked(&self.consumer);
            if let Some(e) = &feeder.failed {
                return Err(KafkaSourceError::Pipeline(e.clone()));
            }
            let idle = polled.is_none();
            if matches!(polled, Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_)))) {
                self.consumer.context().ready.store(true, Ordering::Relaxed);
            }
            match polled {
                Some(Ok(msg)) => {
                    feeder.chunk.add(msg.topic(), msg.partition(), msg.offset(), msg.payload().unwrap_or_default());
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => feeder.end_of_partition(partition),
                Some(Err(e)) => {
                    self.metrics.consumer_errors.inc();
                    warn!(error = %e, "consumer error; librdkafka retries");
                }
                None => {}
            }
            feeder.check_quiet();
            let old = feeder.chunk.started.is_some_and(|t| t.elapsed() >= CHUNK_MAX_AGE);
            if feeder.chunk.entries.len() >= CHUNK_MESSAGES || (old || idle) && !feeder.chunk.is_empty() {
                // Blocks while the worker is behind: back-pressure.
                feeder.send_chunk();
            }
        }
        let mut feeder = lock(&self.feeder);
        feeder.barrier(&self.consumer).map_err(KafkaSourceError::Pipeline)
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
