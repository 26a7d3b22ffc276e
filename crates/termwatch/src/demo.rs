//! `termwatch demo`: the main job on an embedded default. librdkafka's mock
//! cluster runs in-process (nothing to install), the simulator streams a
//! fleet with injected faults into it in accelerated time, and the real
//! service consumes it: the same consumer, pipeline and metrics endpoint as
//! `termwatch run`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use rdkafka::mocking::MockCluster;
use termwatch_pipeline::{BatchSink, KafkaConfig, SinkError};
use termwatch_sim::{SimConfig, Simulator};
use termwatch_telemetry::alerts::Scope;
use termwatch_telemetry::time::format_rfc3339_ms;

use crate::config::{BatchSettings, Config, MetricsSettings};
use crate::run::{Service, shutdown_signal};
use crate::stream::{Produced, produce};
use termwatch_alerts::metrics::AlertMetrics;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Terminals in the simulated fleet.
    #[arg(long, default_value_t = 200)]
    terminals: u32,
    /// Network regions.
    #[arg(long, default_value_t = 4)]
    regions: u32,
    /// Simulated days to stream. Two by default: worn parts need a day of
    /// use before their wear stands out from their cohort's.
    #[arg(long, default_value_t = 2.0)]
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
    /// TLS and basic auth of the metrics endpoint: a file in the format of
    /// Prometheus' exporter-toolkit web.config.file.
    #[arg(long, value_name = "FILE")]
    web_config_file: Option<std::path::PathBuf>,
    /// The model artifact that scores the stream; alerts print as they fire.
    #[arg(long, value_name = "FILE", default_value = crate::models_cmd::DEFAULT_MODELS)]
    models: std::path::PathBuf,
    /// Firing alerts exported one series each on /metrics, highest scores first; the rest are counted.
    #[arg(long, default_value_t = termwatch_alerts::metrics::DEFAULT_TOP_K)]
    top_k: usize,
    /// Keep serving /metrics this many seconds after the stream is consumed.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    linger_s: u64,
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
    if args.fault_scale > 0.0 {
        // One staged firmware rollout in the demo's days, a regression: the
        // demo shows every kind of alert, the release-health panel included.
        sim_config.faults.staged_rollouts_per_week = 7.0 / args.days.max(1.0);
        sim_config.faults.regression_share = 1.0;
    }
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
    let fleet = sim.fleet();
    for l in sim.labels() {
        // A terminal's site too: a site alert for it is a detection (alerts-v1 matching).
        let site = fleet
            .terminals
            .iter()
            .find(|t| l.scope == Scope::Terminal && t.id == l.entity)
            .map(|t| format!(" at {}", fleet.site_of(t).id))
            .unwrap_or_default();
        println!(
            "  {} {:<20} {:<8} {:<10} {} .. {}{}{site}",
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
        metrics: MetricsSettings { listen: args.metrics_listen, web_config_file: args.web_config_file.clone() },
        state: Default::default(),
        limits: Default::default(),
        stages: Default::default(),
    };

    let produced = Arc::new(Produced::default());
    let producer = {
        let produced = Arc::clone(&produced);
        let speed = args.speed;
        std::thread::Builder::new()
            .name("demo-producer".into())
            .spawn(move || produce(sim, &brokers, TOPIC, speed, &produced))
            .context("starting the producer thread")?
    };

    let view = ViewSink::default();
    let mut sinks: Vec<Box<dyn BatchSink>> = vec![Box::new(view.clone())];
    let registry = prometheus::Registry::new();
    let alert_metrics =
        AlertMetrics::register_with_top_k(&registry, args.top_k).context("registering alert metrics")?;
    match termwatch_alerts::sink::AlertSink::with_metrics(
        &args.models,
        "standard output".into(),
        Box::new(std::io::stdout()),
        termwatch_alerts::sink::AlertFormat::Human,
        Some(alert_metrics),
    ) {
        Ok(alerts) => {
            println!("scoring with {}", args.models.display());
            sinks.push(Box::new(alerts));
        }
        Err(e) => println!("not scoring: {e:#} (scripts/train-default makes the default model)"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let result = runtime.block_on(async {
        let service = Service::start(&config, registry, sinks).await?;
        println!("metrics: {}://{}/metrics", service.metrics_scheme, service.metrics_addr);
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
        if args.linger_s > 0 {
            // The consumer has stopped; the endpoint keeps serving the final
            // state (for a Prometheus that scrapes it in a test).
            println!("serving metrics for {} s more (--linger-s)", args.linger_s);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(args.linger_s)) => {}
                s = shutdown_signal() => println!("{}: stopping", s?),
            }
        }
        anyhow::Ok(())
    });
    produced.stop.store(true, Ordering::Relaxed);
    let produce_result = producer.join().map_err(|_| anyhow!("the producer thread panicked"))?;
    drop(cluster);
    result?;
    produce_result?;
    Ok(())
}

fn print_progress(view: &ViewSink, service: &Service, produced: &Produced, started: Instant) {
    let (rows, batches, terminals, latest) = match view.0.lock() {
        Ok(v) => (v.rows, v.batches, v.terminals.len(), v.latest_ms),
        Err(_) => return,
    };
    let families = service.registry.gather();
    let lag: i64 = families
        .iter()
        .filter(|f| f.name() == "termwatch_kafka_consumer_lag_messages")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().get_value() as i64))
        .sum();
    // Valid reports the feature engine dropped, by reason (late, ahead).
    let dropped = |reason: &str| -> u64 {
        families
            .iter()
            .filter(|f| f.name() == "termwatch_event_time_dropped_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "reason" && l.value() == reason))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };
    let sim_now = produced.sim_ms.load(Ordering::Relaxed);
    println!(
        "[{:>5.1}s] sim {} | produced {} ({} damaged) | consumed {} | in batches {} rows, {} batches, {} terminals, event time up to {} | dropped {} late, {} ahead | lag {}",
        started.elapsed().as_secs_f64(),
        if sim_now > 0 { format_rfc3339_ms(sim_now) } else { "-".into() },
        produced.records.load(Ordering::Relaxed),
        produced.damaged.load(Ordering::Relaxed),
        service.kafka_metrics.messages_consumed.get(),
        rows,
        batches,
        terminals,
        if latest > 0 { format_rfc3339_ms(latest) } else { "-".into() },
        dropped("late"),
        dropped("ahead"),
        lag,
    );
}
