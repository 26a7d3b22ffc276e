//! Streaming a simulated fleet into Kafka in accelerated time: used by
//! `termwatch simulate --kafka` and by the demo.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use termwatch_sim::Simulator;

/// Progress of the producer thread.
#[derive(Default)]
pub struct Produced {
    pub records: AtomicU64,
    pub damaged: AtomicU64,
    pub sim_ms: AtomicI64,
    /// The producer has sent everything.
    pub finished: AtomicBool,
    /// The demo is stopping: the producer should give up.
    pub stop: AtomicBool,
}

/// Streams the simulation into the topic, pacing arrival times by `speed`.
pub fn produce(mut sim: Simulator, brokers: &str, topic: &str, speed: f64, produced: &Produced) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("Kafka producer")?;
    let start_ms = sim.start_ms();
    let wall0 = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    while let Some(meta) = sim.next_record(&mut buf) {
        if produced.stop.load(Ordering::Relaxed) {
            break;
        }
        // speed 0: as fast as the broker takes it.
        if speed > 0.0 {
            let due = Duration::from_secs_f64(((meta.arrival_ms - start_ms).max(0) as f64 / 1000.0) / speed);
            if let Some(wait) = due.checked_sub(wall0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let key = sim.terminal_id(meta.terminal).to_string();
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(&key).payload(&buf);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(anyhow!("producing to topic {topic}: {e}")),
            }
        }
        produced.records.fetch_add(1, Ordering::Relaxed);
        if meta.damage.is_some() {
            produced.damaged.fetch_add(1, Ordering::Relaxed);
        }
        produced.sim_ms.store(meta.arrival_ms, Ordering::Relaxed);
    }
    producer.flush(Duration::from_secs(30)).context("flushing the Kafka producer")?;
    produced.finished.store(true, Ordering::Relaxed);
    Ok(())
}
