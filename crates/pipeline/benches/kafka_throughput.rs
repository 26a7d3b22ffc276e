//! Does termwatch's consumer keep up with the broker? On one topic of a real
//! broker, in the same run: a bare rdkafka consumer that only counts
//! messages, and termwatch's consume + decode + validate + batch path.
//! Runs alternate, and medians are reported with their ratio.
//!
//! Needs a broker: `scripts/bench-kafka` starts tansu and runs
//! `cargo bench -p termwatch-pipeline --bench kafka_throughput`.
//! Environment: TERMWATCH_BENCH_KAFKA_BROKERS (required),
//! TERMWATCH_BENCH_RECORDS (default 1,000,000), TERMWATCH_BENCH_ROUNDS (3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use termwatch_pipeline::{
    BatchConfig, BatchSink, KafkaConfig, KafkaMetrics, KafkaSource, MemoryDeadLetters, Pipeline, SinkError,
};

const PARTITIONS: i32 = 12;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Fetch settings both consumers share: measured here, librdkafka's default
/// 500 ms fetch wait starves a consumer of a lightly loaded broker.
fn fetch_tuning(c: &mut ClientConfig) {
    c.set("fetch.wait.max.ms", "5").set("max.partition.fetch.bytes", "4194304").set("fetch.max.bytes", "67108864");
}

fn produce(brokers: &str, topic: &str, records: u64) -> u64 {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    for r in rt
        .block_on(
            admin.create_topics(&[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()),
        )
        .expect("create topic")
    {
        r.expect("topic created");
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut sim = termwatch_sim::Simulator::new(termwatch_sim::SimConfig {
        terminals: 5_000,
        days: records as f64 / (5_000.0 * 1440.0) * 1.6 + 0.01,
        damaged_share: 0.001,
        ..termwatch_sim::SimConfig::default()
    })
    .expect("simulator");
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let mut n = 0u64;
    while n < records {
        let Some(meta) = sim.next_record(&mut buf) else { break };
        let key = sim.terminal_id(meta.terminal).to_string();
        let mut rec = BaseRecord::<str, [u8]>::to(topic).key(&key).payload(&buf);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        bytes += buf.len() as u64;
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    eprintln!("produced {n} records, {:.0} bytes each on average", bytes as f64 / n as f64);
    n
}

fn bare(brokers: &str, topic: &str, group: &str, records: u64) -> f64 {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("group.id", group).set("auto.offset.reset", "earliest");
    fetch_tuning(&mut c);
    let consumer: BaseConsumer = c.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut n = 0u64;
    let mut started = None;
    while n < records {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    n as f64 / started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::NAN)
}

struct Count(Arc<AtomicU64>);

impl BatchSink for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.0.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn termwatch(brokers: &str, topic: &str, group: &str, records: u64) -> f64 {
    let mut config = KafkaConfig {
        brokers: brokers.into(),
        group_id: group.into(),
        topics: vec![topic.into()],
        dead_letter_topic: format!("{topic}-dlq"),
        ..KafkaConfig::default()
    };
    config.properties.insert("fetch.wait.max.ms".into(), "5".into());
    config.properties.insert("max.partition.fetch.bytes".into(), "4194304".into());
    config.properties.insert("fetch.max.bytes".into(), "67108864".into());
    let registry = prometheus::Registry::new();
    let metrics = KafkaMetrics::register(&registry).expect("metrics");
    let rows = Arc::new(AtomicU64::new(0));
    // Dead letters go to memory: this measures the consume path, and the
    // few damaged records would otherwise add a producer round trip.
    let pipeline = Pipeline::new(
        BatchConfig { max_rows: 8192, max_age: Duration::from_millis(200) },
        vec![Box::new(Count(Arc::clone(&rows)))],
        Box::new(MemoryDeadLetters::default()),
    );
    let source = KafkaSource::new(&config, pipeline, metrics.clone()).expect("source");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || source.run(&flag));
    // Time from the first batch to the last record: group join excluded, as for the bare consumer.
    let mut started = None;
    loop {
        let seen = metrics.messages_consumed.get();
        if seen > 0 {
            started.get_or_insert_with(Instant::now);
        }
        if seen >= records {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("thread").expect("clean stop");
    records as f64 / elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(brokers) = std::env::var("TERMWATCH_BENCH_KAFKA_BROKERS") else {
        eprintln!("kafka_throughput: set TERMWATCH_BENCH_KAFKA_BROKERS (scripts/bench-kafka starts a broker)");
        std::process::exit(2);
    };
    let records = env_or("TERMWATCH_BENCH_RECORDS", 1_000_000);
    let rounds = env_or("TERMWATCH_BENCH_ROUNDS", 3);
    let topic = format!("bench-{}", std::process::id());
    let records = produce(&brokers, &topic, records);
    let (mut bare_rates, mut tw_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let b = bare(&brokers, &topic, &format!("bare-{round}"), records);
        let t = termwatch(&brokers, &topic, &format!("termwatch-{round}"), records);
        eprintln!("round {round}: bare {b:.0} msg/s, termwatch {t:.0} msg/s, ratio {:.2}", t / b);
        bare_rates.push(b);
        tw_rates.push(t);
    }
    let (b, t) = (median(bare_rates), median(tw_rates));
    println!(
        "kafka_throughput: {records} records, {PARTITIONS} partitions, {rounds} rounds: bare consumer median {b:.0} msg/s, \
         termwatch consume+decode+batch median {t:.0} msg/s, ratio {:.2}",
        t / b
    );
}
