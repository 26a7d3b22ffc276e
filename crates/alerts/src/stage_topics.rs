//! The two topics between the stages (docs/two-stages.md). On the
//! **partials topic** stage-1 replicas publish, per source partition of the
//! telemetry topic, each closed window's site and region partials and their
//! progress ([`StagePublisher::publish_partials`]); the merging stage reads
//! them back and merges each window once every source has passed it
//! ([`PartialsReader`]). On the **lessons topic** the merging stage
//! publishes what its closed windows taught the cohorts
//! ([`StagePublisher::publish_lessons`]), and every stage-1 replica reads
//! all of it ([`LessonsReader`]) before it closes its next window.
//!
//! The partials topic has **one partition**. A window is merged from every
//! source's partials, so they must meet in one consumer; what crosses the
//! topic is a window's summary per source (about 120 bytes a terminal,
//! measured in docs/two-stages.md), not the reports, so one partition
//! carries a fleet of 100,000 terminals at about 12 MB per five-minute
//! window.
//! Stage-2 replicas share one consumer group: one reads, the others stand
//! by and take over at a rebalance, from the latest snapshot (see
//! [`PartialsReader::poll`]). Records are keyed by their source, and
//! the one partition keeps each source's records in the order they were
//! published, which is the order the merger relies on. The lessons topic
//! has one partition too, read whole by every stage-1 replica, outside any
//! consumer group.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use termwatch_features::partial::{MergedWindow, WindowMerger, WindowScores};
use termwatch_features::wire::{self, Lessons, PartialsRecord, WireError};
use termwatch_pipeline::KafkaConfig;

/// How long a record may wait in a full producer queue before it is an
/// error: a broker that takes nothing must not hold stage 1 for ever.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Failures(Mutex<Option<String>>);

struct Delivery(Arc<Failures>);

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut first = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Publishes to a topic between the stages: stage 1 its sources' partials,
/// stage 2 its lessons. Nothing is acknowledged until
/// [`StagePublisher::flush`] says it was delivered: a replica commits its
/// input offsets and snapshots only after that, so a replica killed before
/// then publishes again from its snapshot (the merger takes a (window,
/// source) partial once, an engine learns a window once).
pub struct StagePublisher {
    /// Not a `ThreadedProducer`: its thread serves delivery reports 100 ms
    /// at a time, and stage 1 waits for each window's delivery (measured:
    /// every flush took 100 ms); [`StagePublisher::flush`] serves them.
    producer: BaseProducer<Delivery>,
    topic: String,
    failures: Arc<Failures>,
    /// Records handed to librdkafka since it was built, and their bytes.
    records: u64,
    bytes: u64,
}

impl StagePublisher {
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<StagePublisher> {
        let failures = Arc::new(Failures::default());
        let mut c = config.producer_config();
        // One source's records must arrive in the order published: no retry
        // may overtake an earlier record.
        c.set("enable.idempotence", "true");
        if !config.properties.contains_key("linger.ms") {
            // A few records a window, each waited for by the other stage:
            // nothing to batch, and the wait is the stages' round trip.
            c.set("linger.ms", "0");
        }
        let producer = c
            .create_with_context(Delivery(Arc::clone(&failures)))
            .with_context(|| format!("producer for {topic} on {}", config.brokers))?;
        Ok(StagePublisher { producer, topic: topic.to_string(), failures, records: 0, bytes: 0 })
    }

    /// Queues one record of `source` on the partials topic. An error names
    /// the source and what could not be queued (a record larger than the
    /// producer's `message.max.bytes` among them);
    /// [`StagePublisher::flush`] reports what the broker refused.
    pub fn publish_partials(&mut self, source: &str, record: &PartialsRecord) -> anyhow::Result<()> {
        let value = wire::encode(record).with_context(|| format!("partials of {source}: encoding"))?;
        self.send(source, &value).with_context(|| format!("{source}'s record of {} bytes", value.len()))
    }

    /// Queues what the merging stage's closed windows taught, on the
    /// lessons topic.
    pub fn publish_lessons(&mut self, lessons: &Lessons) -> anyhow::Result<()> {
        let value = wire::encode(lessons).context("lessons: encoding")?;
        self.send("lessons", &value)
            .with_context(|| format!("lessons through {} of {} bytes", lessons.through_ms, value.len()))
    }

    fn send(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let mut r = BaseRecord::<str, [u8]>::to(&self.topic).key(key).payload(value);
        let deadline = Instant::now() + QUEUE_WAIT;
        loop {
            match self.producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    r = back;
                    self.producer.poll(Duration::from_millis(2));
                }
                Err((e, _)) => bail!("topic {}: {e}", self.topic),
            }
        }
        // Serves the delivery reports of earlier records.
        self.producer.poll(Duration::ZERO);
        self.records += 1;
        self.bytes += value.len() as u64;
        Ok(())
    }

    /// Waits up to `timeout` for every record queued to be delivered.
    pub fn flush(&mut self, timeout: Duration) -> anyhow::Result<()> {
        // Not `Producer::flush`, which polls for delivery reports 100 ms at
        // a time however soon they come (rdkafka 0.39): stage 1 waits for
        // each window's delivery, so the wait is its latency.
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                bail!(
                    "topic {}: {} records not delivered within {timeout:?}",
                    self.topic,
                    self.producer.in_flight_count()
                );
            }
            self.producer.poll(Duration::from_millis(1));
        }
        match self.failures.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(e) => bail!("topic {}: a record was not delivered: {e}", self.topic),
            None => Ok(()),
        }
    }

    /// Records and bytes published since it was built.
    pub fn published(&self) -> (u64, u64) {
        (self.records, self.bytes)
    }
}

/// A record of a topic between the stages that could not be read: where it
/// is and why. Counted and read past; it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {topic} partition {partition} offset {offset}: {error}")]
pub struct Unreadable {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: WireError,
}

/// What one [`PartialsReader::poll`] read.
#[derive(Debug, Default)]
pub struct Polled {
    /// Windows the merger closed, oldest first.
    pub merged: Vec<MergedWindow>,
    /// Records it could not read.
    pub unreadable: Vec<Unreadable>,
    /// Records read, those included.
    pub records: usize,
    /// The consumer error that ended the read, if one did (what was read
    /// before it is above). librdkafka reconnects by itself; the owner
    /// says so and reads on.
    pub error: Option<KafkaError>,
    /// The partition was assigned anew: see [`PartialsReader::poll`].
    pub reassigned: bool,
}

/// Counts the partials partition's assignments, and whether this member
/// holds it, as librdkafka's rebalance callbacks say.
#[derive(Default)]
pub struct Assignments {
    assignments: AtomicU64,
    holding: AtomicBool,
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) if tpl.count() > 0 => {
                self.holding.store(true, Ordering::Release);
                self.assignments.fetch_add(1, Ordering::AcqRel);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Revoke(tpl) if tpl.count() > 0 => self.holding.store(false, Ordering::Release),
            Rebalance::Revoke(_) | Rebalance::Error(_) => {}
        }
    }
}

/// The merging stage's side: reads the partials topic in its own consumer
/// group and hands each record to the merger. Offsets are stored as
/// records are applied and committed only by [`PartialsReader::commit`],
/// which the owner calls once what the merger closed (and the merger
/// itself) is safe: at least once, the merger taking a repeated partial
/// once.
pub struct PartialsReader {
    consumer: BaseConsumer<Assignments>,
    topic: String,
    merger: WindowMerger,
    /// The assignments of the partition its merger has been given since
    /// (see [`PartialsReader::poll`]).
    assignments_seen: u64,
    /// Records read and records that could not be read, since it was built.
    read: u64,
    unreadable: u64,
}

impl PartialsReader {
    /// Subscribes `group` to `topic`, which must exist and have one
    /// partition (see the module's documentation); waits up to `timeout`
    /// for the broker to say so.
    pub fn new(
        config: &KafkaConfig,
        topic: &str,
        group: &str,
        merger: WindowMerger,
        timeout: Duration,
    ) -> anyhow::Result<PartialsReader> {
        let mut c: ClientConfig = config.consumer_config();
        // The telemetry consumer's lag statistics are not wanted here, nor
        // rdkafka's logging of them every five seconds.
        c.set("statistics.interval.ms", "0");
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer<Assignments> = c
            .create_with_context(Assignments::default())
            .with_context(|| format!("partials consumer for {}", config.brokers))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("partials topic {topic}: metadata from {}", config.brokers))?;
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        if partitions != 1 {
            bail!(
                "partials topic {topic} has {partitions} partitions: it must have exactly one, since every \
                 source's partials of a window are merged in one place (create it with one partition)"
            );
        }
        consumer.subscribe(&[topic]).with_context(|| format!("partials topic {topic}: subscribe"))?;
        Ok(PartialsReader { consumer, topic: topic.to_string(), merger, assignments_seen: 0, read: 0, unreadable: 0 })
    }

    pub fn merger(&self) -> &WindowMerger {
        &self.merger
    }

    /// Records read and records that could not be read, since it was built.
    pub fn counts(&self) -> (u64, u64) {
        (self.read, self.unreadable)
    }

    /// Waits up to `max_wait` for a record, then reads what has arrived,
    /// up to `max_records` in all: the windows they close (a record that
    /// cannot be read is in [`Polled::unreadable`], a consumer error in
    /// [`Polled::error`]).
    ///
    /// A record that arrives after the partition was assigned anew ends the
    /// read untaken, with [`Polled::reassigned`]: another member of the
    /// group may have merged and committed meanwhile, so the merger held
    /// here may be older than the commit. The owner gives it the merger of
    /// the latest snapshot ([`PartialsReader::reload`]) and reads on from the
    /// commit. The first assignment counts too: a standby's merger is the
    /// one it loaded when it started.
    pub fn poll(&mut self, max_records: usize, max_wait: Duration) -> Polled {
        let merger = &mut self.merger;
        let assignments = &self.consumer.context().assignments;
        let seen = self.assignments_seen;
        let r = read(
            &self.consumer,
            max_records,
            max_wait,
            true,
            || assignments.load(Ordering::Acquire) != seen,
            |m| wire::apply(merger, m.key(), m.payload().unwrap_or_default()),
        );
        self.read += r.records as u64;
        self.unreadable += r.unreadable.len() as u64;
        Polled {
            merged: r.out,
            unreadable: r.unreadable,
            records: r.records,
            error: r.error,
            reassigned: r.interrupted,
        }
    }

    /// Takes `merger` (the latest snapshot's, or a new one) and reads on
    /// from the group's commit (the start of the topic without one).
    pub fn reload(&mut self, merger: WindowMerger, timeout: Duration) -> Result<(), KafkaError> {
        self.assignments_seen = self.consumer.context().assignments.load(Ordering::Acquire);
        self.merger = merger;
        let offset = self.committed(timeout)?.map_or(Offset::Beginning, Offset::Offset);
        self.consumer.seek(&self.topic, 0, offset, timeout)
    }

    /// Whether this member holds the partials topic's partition (the
    /// others stand by).
    pub fn assigned(&self) -> bool {
        self.consumer.context().holding.load(Ordering::Acquire)
    }

    /// Whether it holds the partition and its merger is the one it has
    /// merged into since the latest assignment: only then may its owner
    /// snapshot it, since a standby's (or a merger not yet reloaded) is
    /// older than what the member that merged last wrote.
    pub fn current(&self) -> bool {
        let context = self.consumer.context();
        context.holding.load(Ordering::Acquire) && context.assignments.load(Ordering::Acquire) == self.assignments_seen
    }

    /// Every source's scores still waiting for a next window (see
    /// [`WindowMerger::take_scores`]): at the end of a history.
    pub fn take_scores(&mut self) -> Vec<WindowScores> {
        self.merger.take_scores()
    }

    /// Commits the offsets of every record read so far.
    pub fn commit(&self) -> Result<(), KafkaError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing read since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other,
        }
    }

    /// The committed offset of the partials topic's partition for this
    /// group (tests and diagnostics).
    pub fn committed(&self, timeout: Duration) -> Result<Option<i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        Ok(committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    }
}

/// What one [`LessonsReader::poll`] read.
#[derive(Debug)]
pub struct Learnt<T> {
    /// What learning the records gave: the windows an engine could then
    /// close, or a stage-1 scorer's alert events.
    pub out: Vec<T>,
    /// Records it could not read.
    pub unreadable: Vec<Unreadable>,
    /// Records read, those included.
    pub records: usize,
    /// The consumer error that ended the read, if one did (see
    /// [`Polled::error`]).
    pub error: Option<KafkaError>,
}

/// A stage-1 replica's side of the lessons topic: reads every record, from
/// a given offset (the one after the last its snapshot learnt; the start
/// of the topic for a replica that has none), outside any consumer group.
pub struct LessonsReader {
    consumer: BaseConsumer<DefaultConsumerContext>,
    /// The offset after the last record read.
    next: i64,
    read: u64,
    unreadable: u64,
}

impl LessonsReader {
    /// Reads `topic`'s one partition from `from` (None: its start).
    pub fn new(config: &KafkaConfig, topic: &str, from: Option<i64>) -> anyhow::Result<LessonsReader> {
        let mut c: ClientConfig = config.consumer_config();
        // The telemetry consumer's lag statistics are not wanted here, nor
        // rdkafka's logging of them every five seconds.
        c.set("statistics.interval.ms", "0");
        // Assigned, not subscribed: the group id is only librdkafka's
        // requirement, and nothing is committed to it.
        c.set("group.id", format!("{}-lessons", config.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer<DefaultConsumerContext> =
            c.create().with_context(|| format!("lessons consumer for {}", config.brokers))?;
        let mut tpl = TopicPartitionList::new();
        let offset = from.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, 0, offset).with_context(|| format!("lessons topic {topic}"))?;
        consumer.assign(&tpl).with_context(|| format!("lessons topic {topic}: assign"))?;
        Ok(LessonsReader { consumer, next: from.unwrap_or(0), read: 0, unreadable: 0 })
    }

    /// The offset after the last record read: where a replica restored
    /// from a snapshot taken now reads on from.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// Records read and records that could not be read, since it was built.
    pub fn counts(&self) -> (u64, u64) {
        (self.read, self.unreadable)
    }

    /// Waits up to `max_wait` for a record, then reads what has arrived, up
    /// to `max_records` in all, and has `learn` learn each value
    /// ([`wire::learn`] for an engine, [`crate::scoring::Scorer::learn`]
    /// for stage 1): what it gave.
    pub fn poll<T>(
        &mut self,
        max_records: usize,
        max_wait: Duration,
        mut learn: impl FnMut(&[u8]) -> Result<Vec<T>, WireError>,
    ) -> Learnt<T> {
        let next = &mut self.next;
        let r = read(
            &self.consumer,
            max_records,
            max_wait,
            false,
            || false,
            |m| {
                *next = m.offset() + 1;
                learn(m.payload().unwrap_or_default())
            },
        );
        self.read += r.records as u64;
        self.unreadable += r.unreadable.len() as u64;
        Learnt { out: r.out, unreadable: r.unreadable, records: r.records, error: r.error }
    }
}

/// Waits up to `max_wait` for a record, then takes what has arrived, up to
/// `max_records` in all, each through `take`: what they gave, where and why
/// those it could not read, and how many were read. With `store`, each
/// record's offset is stored for the next commit once it has been taken.
/// A consumer error ends the read with what was taken before it kept: the
/// records taken changed their taker's state, and what that gave must not
/// be lost with the error.
fn read<C: ConsumerContext, T>(
    consumer: &BaseConsumer<C>,
    max_records: usize,
    max_wait: Duration,
    store: bool,
    interrupted: impl Fn() -> bool,
    mut take: impl FnMut(&BorrowedMessage<'_>) -> Result<Vec<T>, WireError>,
) -> Read<T> {
    let mut r = Read { out: Vec::new(), unreadable: Vec::new(), records: 0, error: None, interrupted: false };
    while r.records < max_records {
        let wait = if r.records == 0 { max_wait } else { Duration::ZERO };
        let m = match consumer.poll(wait) {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                r.error = Some(e);
                break;
            }
        };
        // Left untaken and its offset unstored: read again once the
        // owner has done what the interruption asks.
        if interrupted() {
            r.interrupted = true;
            break;
        }
        r.records += 1;
        match take(&m) {
            Ok(taken) => r.out.extend(taken),
            Err(error) => r.unreadable.push(Unreadable {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                error,
            }),
        }
        if store && let Err(e) = consumer.store_offset_from_message(&m) {
            // Taken but not to be committed: read again after a restart,
            // where the merger takes a (window, source) partial once.
            r.error = Some(e);
            break;
        }
    }
    r
}

struct Read<T> {
    out: Vec<T>,
    unreadable: Vec<Unreadable>,
    records: usize,
    error: Option<KafkaError>,
    interrupted: bool,
}
