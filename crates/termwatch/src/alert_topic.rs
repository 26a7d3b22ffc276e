//! Alert events on a Kafka topic (alerts-v1 JSON, keyed by kind, scope and
//! entity so one entity's events stay in order on one partition), for
//! ticketing and other downstream tools.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
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

pub struct AlertTopic {
    producer: ThreadedProducer<Context>,
    topic: String,
    failures: Arc<Failures>,
    pending: usize,
}

impl AlertTopic {
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<AlertTopic> {
        let failures = Arc::new(Failures::default());
        let producer = config
            .producer_config()
            .create_with_context(Context(Arc::clone(&failures)))
            .with_context(|| format!("alert producer for {}", config.brokers))?;
        Ok(AlertTopic { producer, topic: topic.to_string(), failures, pending: 0 })
    }

    /// Queues one event; [`AlertTopic::flush`] waits for its delivery.
    pub fn send(&mut self, event: &AlertEvent) -> Result<(), String> {
        let payload = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let key = format!("{}/{}/{}", event.kind, event.scope, event.entity);
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic).key(&key).payload(&payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(format!("alert topic {}: {e}", self.topic)),
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Waits until every queued event is delivered; an error means some were
    /// not, and the batch that raised them must not be acknowledged.
    pub fn flush(&mut self) -> Result<(), String> {
        if self.pending == 0 {
            return Ok(());
        }
        self.producer.flush(Duration::from_secs(35)).map_err(|e| format!("alert topic {}: {e}", self.topic))?;
        if let Some(e) = self.failures.0.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Err(format!("alert topic {}: delivery failed: {e}", self.topic));
        }
        self.pending = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
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
            reasons: vec![Reason { feature: "share_sites_degraded".into(), value: 0.8, baseline: 0.02 }],
        };
        topic.send(&event).expect("queued");
        topic.flush().expect("delivered");

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "alerts-check")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&["alerts"]).expect("subscribe");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                assert_eq!(m.key(), Some(&b"network_degradation/region/east-07"[..]));
                let back: AlertEvent = serde_json::from_slice(m.payload().expect("payload")).expect("alerts-v1");
                assert_eq!(back, event);
                return;
            }
        }
        panic!("the alert event did not arrive");
    }
}
