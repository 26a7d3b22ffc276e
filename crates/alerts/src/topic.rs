//! Alert events on a Kafka topic (alerts-v1 JSON, keyed by kind, scope and
//! entity so one entity's events stay in order on one partition), for
//! ticketing and other downstream tools.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use termwatch_pipeline::KafkaConfig;
use termwatch_telemetry::alerts::AlertEvent;

#[derive(Default)]
struct Failures(Mutex<Option<String>>);

struct Context(Arc<Failures>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut first = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Events kept for sending again while the topic cannot be reached: about
/// 5 MB. Past it they are let go, and only a replay from the last snapshot
/// brings them back (see [`Delivery::Lost`]).
const MAX_OUTBOX: usize = 10_000;
/// While delivery fails, it is tried again this often, not on every batch:
/// the events wait in the outbox and consuming goes on meanwhile.
const RETRY: Duration = Duration::from_secs(10);
/// How long a retry waits for the broker to confirm.
const RETRY_WAIT: Duration = Duration::from_secs(5);

pub struct AlertTopic {
    producer: ThreadedProducer<Context>,
    topic: String,
    failures: Arc<Failures>,
    /// Events sent since delivery was last confirmed whole, (key, payload),
    /// to send again after a failure. At least once: an event may then
    /// arrive twice, never not at all.
    outbox: Vec<(String, Vec<u8>)>,
    /// The outbox overflowed: some events are only in the input since the
    /// last snapshot.
    lost: bool,
    /// Delivery failed at this time and has not succeeded since.
    failing_since: Option<Instant>,
    last_try: Instant,
    retry: Duration,
    max_outbox: usize,
}

/// Where the events sent so far stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every event was delivered.
    Delivered,
    /// Some wait in the outbox, to be tried again: no snapshot may cover them.
    Pending { events: usize, error: String },
    /// The outbox overflowed while the topic was unreachable: the events it
    /// let go come back only from a replay of the input since the last
    /// snapshot, so none may be taken until the process restarts.
    Lost { error: String },
}

impl AlertTopic {
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<AlertTopic> {
        let failures = Arc::new(Failures::default());
        let producer = config
            .producer_config()
            .create_with_context(Context(Arc::clone(&failures)))
            .with_context(|| format!("alert producer for {}", config.brokers))?;
        Ok(AlertTopic {
            producer,
            topic: topic.to_string(),
            failures,
            outbox: Vec::new(),
            lost: false,
            failing_since: None,
            last_try: Instant::now(),
            retry: RETRY,
            max_outbox: MAX_OUTBOX,
        })
    }

    /// Other retry interval and outbox size (tests).
    #[cfg(test)]
    fn with_bounds(mut self, retry: Duration, max_outbox: usize) -> Self {
        self.retry = retry;
        self.max_outbox = max_outbox;
        self
    }

    /// Queues one event; [`AlertTopic::flush`] waits for its delivery. An
    /// error only for an event that cannot be serialised.
    pub fn send(&mut self, event: &AlertEvent) -> Result<(), String> {
        let payload = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let key = format!("{}/{}/{}", event.kind, event.scope, event.entity);
        if self.outbox.len() >= self.max_outbox {
            self.outbox.clear();
            self.lost = true;
        }
        // While failing, events only wait: the next retry sends them all.
        if self.failing_since.is_none() {
            self.produce(&key, &payload);
        }
        self.outbox.push((key, payload));
        Ok(())
    }

    /// Hands one event to librdkafka; one it refuses outright is reported
    /// by the flush that follows.
    fn produce(&self, key: &str, payload: &[u8]) {
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic).key(key).payload(payload);
        let deadline = Instant::now() + RETRY_WAIT;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if Instant::now() < deadline => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    let mut first = self.failures.0.lock().unwrap_or_else(PoisonError::into_inner);
                    first.get_or_insert_with(|| e.to_string());
                    return;
                }
            }
        }
    }

    /// Waits until every event sent is delivered (up to 35 s; a retry after
    /// a failure waits 5 s, at most every 10 s). Events not delivered stay
    /// in the outbox for the next try.
    pub fn flush(&mut self) -> Delivery {
        let delivery = self.deliver();
        if !self.lost {
            return delivery;
        }
        // Delivery goes on for what is in the outbox; what it let go does not.
        Delivery::Lost {
            error: format!(
                "alert topic {}: more than {} events could not be delivered; the rest come back with a replay \
                 from the last snapshot",
                self.topic, self.max_outbox
            ),
        }
    }

    fn deliver(&mut self) -> Delivery {
        if self.outbox.is_empty() {
            return Delivery::Delivered;
        }
        let wait = match self.failing_since {
            Some(_) if self.last_try.elapsed() < self.retry => return self.pending("waiting to retry".into()),
            Some(_) => {
                // Whatever an earlier try left queued is sent again with the rest.
                self.producer.purge(PurgeConfig::default().queue().inflight());
                let _ = self.producer.flush(Duration::from_millis(100));
                *self.failures.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
                for (key, payload) in &self.outbox {
                    self.produce(key, payload);
                }
                RETRY_WAIT
            }
            None => Duration::from_secs(35),
        };
        self.last_try = Instant::now();
        let flushed = self.producer.flush(wait).map_err(|e| e.to_string());
        let failed = self.failures.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match (flushed, failed) {
            (Ok(()), None) => {
                self.outbox.clear();
                self.failing_since = None;
                Delivery::Delivered
            }
            (Err(e), _) | (Ok(()), Some(e)) => {
                self.failing_since.get_or_insert_with(Instant::now);
                self.pending(e)
            }
        }
    }

    fn pending(&self, error: String) -> Delivery {
        Delivery::Pending { events: self.outbox.len(), error: format!("alert topic {}: {error}", self.topic) }
    }

    /// Every event sent has been delivered, and none was let go.
    pub fn settled(&self) -> bool {
        self.outbox.is_empty() && !self.lost
    }

    /// Events waiting in the outbox.
    pub fn pending_events(&self) -> usize {
        self.outbox.len()
    }
}

/// Where a stage of `termwatch run` writes its alert events: standard
/// output (alerts-v1 NDJSON, best effort: a closed pipe must not stop
/// scoring; counted, and said once per outage) and the alerts topic when
/// one is configured.
pub struct ServiceOutput {
    pub topic: Option<AlertTopic>,
    stdout_failing: bool,
}

impl ServiceOutput {
    pub fn new(topic: Option<AlertTopic>) -> ServiceOutput {
        ServiceOutput { topic, stdout_failing: false }
    }

    pub fn write(&mut self, events: &[AlertEvent], metrics: Option<&crate::metrics::AlertMetrics>) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for e in events {
            let written = serde_json::to_string(e)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(out, "{line}"))
                .and_then(|()| out.flush());
            match written {
                Ok(()) => self.stdout_failing = false,
                Err(err) => {
                    if let Some(m) = metrics {
                        m.delivery_failed("stdout");
                    }
                    if !std::mem::replace(&mut self.stdout_failing, true) {
                        tracing::warn!(error = %err, "alert events not written to standard output");
                    }
                }
            }
        }
        if let Some(topic) = &mut self.topic {
            for e in events {
                if let Err(err) = topic.send(e) {
                    tracing::warn!(error = %err, "alert event not sent");
                }
            }
        }
    }

    /// Waits (bounded) for the alerts topic to hold every event written:
    /// whether it does, so that a snapshot, and a commit, may cover them.
    /// Said and counted when not.
    pub fn delivered(&mut self, metrics: Option<&crate::metrics::AlertMetrics>) -> bool {
        let Some(topic) = &mut self.topic else { return true };
        let delivery = topic.flush();
        if let Some(m) = metrics {
            m.topic_pending(topic.pending_events());
        }
        let failed = |m: Option<&crate::metrics::AlertMetrics>| {
            if let Some(m) = m {
                m.delivery_failed("kafka");
            }
        };
        match delivery {
            Delivery::Delivered => true,
            Delivery::Pending { events, error } => {
                failed(metrics);
                tracing::warn!(events, error = %error, "alert events not delivered yet: no snapshot or commit until they are");
                false
            }
            Delivery::Lost { error } => {
                failed(metrics);
                tracing::error!(error = %error, "alert events lost from the outbox: no snapshot or commit until a restart");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use termwatch_telemetry::alerts::{AlertKind, AlertState, Reason, Scope, Severity};

    use super::*;

    #[test]
    fn delivers_alert_events_keyed_by_entity() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("alerts", 2, 1).expect("topic");
        let config = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
        let mut topic = AlertTopic::new(&config, "alerts").expect("producer");
        let event = AlertEvent {
            ts: 1_795_514_460_000,
            kind: AlertKind::NetworkDegradation,
            scope: Scope::Region,
            entity: "east-07".into(),
            region: "east-07".into(),
            state: AlertState::Firing,
            severity: Severity::Critical,
            score: 0.97,
            model_version: "m-1".into(),
            reasons: vec![Reason {
                feature: "share_sites_degraded_trimmed".into(),
                value: 0.8,
                baseline: 0.02,
                baseline_version: None,
            }],
        };
        topic.send(&event).expect("queued");
        assert_eq!(topic.flush(), Delivery::Delivered);

        let got = received(&cluster, "alerts", 1);
        assert_eq!(got.len(), 1, "the alert event did not arrive");
        assert_eq!(got[0].0.as_deref(), Some(&b"network_degradation/region/east-07"[..]));
        assert_eq!(got[0].1, event);
    }

    /// Up to `n` alert events of `topic` with their keys, read from the
    /// start within 30 s.
    fn received(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        topic: &str,
        n: usize,
    ) -> Vec<(Option<Vec<u8>>, AlertEvent)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "alerts-check")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let back: AlertEvent = serde_json::from_slice(m.payload().expect("payload")).expect("alerts-v1");
                got.push((m.key().map(<[u8]>::to_vec), back));
            }
        }
        got
    }

    fn event(entity: &str) -> AlertEvent {
        AlertEvent {
            ts: 1_795_514_460_000,
            kind: AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            entity: entity.into(),
            region: "r".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            score: 0.9,
            model_version: "m-1".into(),
            reasons: Vec::new(),
        }
    }

    /// A topic that cannot be written: events wait in the outbox (consuming
    /// goes on), are sent again once it can, and arrive; an outbox that
    /// overflows says so for good.
    #[test]
    fn undelivered_events_wait_and_are_sent_again_once_the_topic_is_back() {
        use rdkafka::types::RDKafkaRespErr;
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("alerts", 1, 1).expect("topic");
        let mut config = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
        config.properties.insert("message.timeout.ms".into(), "1000".into());
        let mut topic =
            AlertTopic::new(&config, "alerts").expect("producer").with_bounds(Duration::from_millis(300), 50);
        cluster.topic_error("alerts", RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("inject");
        topic.send(&event("T-1")).expect("queued");
        let first = topic.flush();
        assert!(matches!(first, Delivery::Pending { events: 1, .. }), "{first:?}");
        // Meanwhile more events only wait, and a flush before the retry is due costs nothing.
        topic.send(&event("T-2")).expect("queued");
        let t = Instant::now();
        assert!(matches!(topic.flush(), Delivery::Pending { events: 2, .. }));
        assert!(t.elapsed() < Duration::from_millis(200), "no wait before the retry is due");
        cluster.topic_error("alerts", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).expect("clear");
        let delivered = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(300));
            topic.flush() == Delivery::Delivered
        });
        assert!(delivered, "the outbox was not delivered once the topic was back");
        assert_eq!(topic.pending_events(), 0);

        let seen: std::collections::BTreeSet<String> =
            received(&cluster, "alerts", 2).into_iter().map(|(_, e)| e.entity).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["T-1", "T-2"], "both events arrived");

        // An outage longer than the outbox (of another topic, refused from
        // the start): the overflow is reported for good.
        cluster.create_topic("alerts-2", 1, 1).expect("topic");
        cluster.topic_error("alerts-2", RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("inject");
        let mut topic =
            AlertTopic::new(&config, "alerts-2").expect("producer").with_bounds(Duration::from_millis(300), 50);
        topic.send(&event("T-3")).expect("queued");
        let first = topic.flush();
        assert!(matches!(first, Delivery::Pending { .. }), "{first:?}");
        for i in 0..60 {
            topic.send(&event(&format!("T-x{i}"))).expect("queued");
        }
        assert!(matches!(topic.flush(), Delivery::Lost { .. }));
        cluster.topic_error("alerts-2", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).expect("clear");
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(topic.flush(), Delivery::Lost { .. }), "lost stays lost until a restart");
    }
}
