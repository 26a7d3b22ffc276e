//! `termwatch demo`: the main job on an embedded default. librdkafka's mock
//! cluster runs in-process (nothing to install), the simulator streams a
//! fleet with injected faults into it in accelerated time, and the real
//! service consumes it: the same consumer, pipeline and metrics endpoint as
//! `termwatch run`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use termwatch_pipeline::{BatchSink, KafkaConfig, SinkError};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::time::format_rfc3339_ms;

use crate::config::{BatchSettings, Config, MetricsSettings};
use crate::run::{Service, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Terminals in the simulated fleet.
    #[arg(long, default_value_t = 200)]
    terminals: u32,
    /// Network regions.
    #[arg(long, default_value_t = 4)]
    regions: u32,
    /// Simulated days to stream.
    #[arg(long, default_value_t = 1.0)]
    days: f64,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 2880.0)]
    speed: f64,
    /// Partitions of the demo topic: the mock cluster fetches slowly per
    /// partition (about 100 messages/s with one, 15,000/s with twelve).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Multiplies the simulator's fault rates so that a short demo shows some.
    #[arg(long, default_value_t = 12.0)]
    fault_scale: f64,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
}

const TOPIC: &str = "telemetry";
const DEAD_LETTERS: &str = "telemetry-dead-letters";

/// What the pipeline has seen, for the progress lines.
#[derive(Default)]
struct View {
    rows: u64,
    batches: u64,
    terminals: std::collections::HashSet<String>,
    latest_ms: i64,
}

#[derive(Clone, Default)]
struct ViewSink(Arc<Mutex<View>>);

impl BatchSink for ViewSink {
    fn name(&self) -> &str {
        "demo-view"
    }

    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let mut v = self.0.lock().map_err(|_| SinkError::Other("demo view lock poisoned".into()))?;
        v.rows += batch.num_rows() as u64;
        v.batches += 1;
        let ids = batch.column(0).as_dictionary::<Int32Type>().values().as_string::<i32>();
        for id in ids.iter().flatten() {
            if !v.terminals.contains(id) {
                v.terminals.insert(id.to_string());
            }
        }
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        if let Some(max) = ts.values().iter().max() {
            v.latest_ms = v.latest_ms.max(*max);
        }
        Ok(())
    }
}

/// Progress of the producer thread.
#[derive(Default)]
struct Produced {
    records: AtomicU64,
    damaged: AtomicU64,
    sim_ms: AtomicI64,
    /// The producer has sent everything.
    finished: AtomicBool,
    /// The demo is stopping: the producer should give up.
    stop: AtomicBool,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed must be a positive number, not {}", args.speed);
    }
    let mut sim_config = SimConfig {
        seed: args.seed,
        terminals: args.terminals,
        regions: args.regions,
        days: args.days,
        ..SimConfig::default()
    };
    sim_config.faults.scale_faults(args.fault_scale);
    let sim = Simulator::new(sim_config).context("simulator")?;

    let cluster = MockCluster::new(1).map_err(|e| anyhow!("starting the embedded Kafka mock cluster: {e}"))?;
    cluster.create_topic(TOPIC, args.partitions, 1).map_err(|e| anyhow!("creating topic {TOPIC}: {e}"))?;
    cluster.create_topic(DEAD_LETTERS, 1, 1).map_err(|e| anyhow!("creating topic {DEAD_LETTERS}: {e}"))?;
    let brokers = cluster.bootstrap_servers();

    println!(
        "termwatch demo: {} terminals in {} regions, {} simulated day(s) at {}x, into an embedded Kafka ({brokers}, topic {TOPIC}, {} partitions)",
        args.terminals, args.regions, args.days, args.speed, args.partitions
    );
    println!("faults injected (ground truth):");
    for l in sim.labels() {
        println!(
            "  {} {:<20} {:<8} {:<10} {} .. {}{}",
            l.region,
            l.kind.as_str(),
            l.scope.as_str(),
            l.entity,
            format_rfc3339_ms(l.start),
            format_rfc3339_ms(l.end),
            l.cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        );
    }

    let mut kafka = KafkaConfig {
        brokers: brokers.clone(),
        group_id: "termwatch-demo".into(),
        topics: vec![TOPIC.into()],
        dead_letter_topic: DEAD_LETTERS.into(),
        ..KafkaConfig::default()
    };
    kafka.properties.insert("fetch.wait.max.ms".into(), "5".into());
    let config = Config {
        kafka,
        batch: BatchSettings { max_rows: 4096, max_ms: 200 },
        metrics: MetricsSettings { listen: args.metrics_listen },
    };

    let produced = Arc::new(Produced::default());
    let producer = {
        let produced = Arc::clone(&produced);
        let speed = args.speed;
        std::thread::Builder::new()
            .name("demo-producer".into())
            .spawn(move || produce(sim, &brokers, speed, &produced))
            .context("starting the producer thread")?
    };

    let view = ViewSink::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let result = runtime.block_on(async {
        let service = Service::start(&config, vec![Box::new(view.clone())]).await?;
        println!("metrics: http://{}/metrics", service.metrics_addr);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                s = &mut signal => {
                    println!("{}: stopping", s?);
                    break;
                }
            }
            let consumed = service.kafka_metrics.messages_consumed.get();
            let sent = produced.records.load(Ordering::Relaxed);
            print_progress(&view, &service, &produced, started);
            if produced.finished.load(Ordering::Relaxed) && consumed >= sent {
                break;
            }
            if service.is_finished() {
                break;
            }
        }
        let stats = service.stop().await?;
        println!("pipeline: {stats}");
        anyhow::Ok(())
    });
    produced.stop.store(true, Ordering::Relaxed);
    let produce_result = producer.join().map_err(|_| anyhow!("the producer thread panicked"))?;
    drop(cluster);
    result?;
    produce_result?;
    println!(
        "scoring (hardware aging, voltage instability, network degradation) arrives with the detectors; \
         today the demo shows the stream, validation and dead letters"
    );
    Ok(())
}

fn print_progress(view: &ViewSink, service: &Service, produced: &Produced, started: Instant) {
    let (rows, batches, terminals, latest) = match view.0.lock() {
        Ok(v) => (v.rows, v.batches, v.terminals.len(), v.latest_ms),
        Err(_) => return,
    };
    let lag: i64 = service
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "termwatch_kafka_consumer_lag_messages")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().get_value() as i64))
        .sum();
    let sim_now = produced.sim_ms.load(Ordering::Relaxed);
    println!(
        "[{:>5.1}s] sim {} | produced {} ({} damaged) | consumed {} | in batches {} rows, {} batches, {} terminals, event time up to {} | lag {}",
        started.elapsed().as_secs_f64(),
        if sim_now > 0 { format_rfc3339_ms(sim_now) } else { "-".into() },
        produced.records.load(Ordering::Relaxed),
        produced.damaged.load(Ordering::Relaxed),
        service.kafka_metrics.messages_consumed.get(),
        rows,
        batches,
        terminals,
        if latest > 0 { format_rfc3339_ms(latest) } else { "-".into() },
        lag,
    );
}

/// Streams the simulation into the topic, pacing arrival times by `speed`.
fn produce(mut sim: Simulator, brokers: &str, speed: f64, produced: &Produced) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("demo producer")?;
    let start_ms = sim.start_ms();
    let wall0 = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    while let Some(meta) = sim.next_record(&mut buf) {
        if produced.stop.load(Ordering::Relaxed) {
            break;
        }
        let due = Duration::from_secs_f64(((meta.arrival_ms - start_ms).max(0) as f64 / 1000.0) / speed);
        if let Some(wait) = due.checked_sub(wall0.elapsed()) {
            std::thread::sleep(wait);
        }
        let key = sim.terminal_id(meta.terminal).to_string();
        let mut record = BaseRecord::<str, [u8]>::to(TOPIC).key(&key).payload(&buf);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(anyhow!("producing to the demo topic: {e}")),
            }
        }
        produced.records.fetch_add(1, Ordering::Relaxed);
        if meta.damage.is_some() {
            produced.damaged.fetch_add(1, Ordering::Relaxed);
        }
        produced.sim_ms.store(meta.arrival_ms, Ordering::Relaxed);
    }
    producer.flush(Duration::from_secs(30)).context("flushing the demo producer")?;
    produced.finished.store(true, Ordering::Relaxed);
    Ok(())
}
