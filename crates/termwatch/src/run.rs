//! `termwatch run`: the service. A Kafka consumer-group member feeds the
//! pipeline on its own thread; tokio serves the metrics endpoint and waits
//! for SIGTERM or SIGINT, on which the consumer flushes, commits and stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus::Registry;
use termwatch_pipeline::{BatchSink, KafkaDeadLetters, KafkaMetrics, KafkaSource, Pipeline, PipelineMetrics, Stats};
use tracing::info;

use crate::config::Config;
use crate::serve::{self, Endpoints};

/// A running service's handles, for `run` and for the demo.
pub struct Service {
    pub registry: Registry,
    pub kafka_metrics: KafkaMetrics,
    pub stop: Arc<AtomicBool>,
    pub metrics_addr: std::net::SocketAddr,
    consumer: tokio::task::JoinHandle<Result<Stats, termwatch_pipeline::KafkaSourceError>>,
}

impl Service {
    /// Starts the metrics endpoint and the consumer.
    pub async fn start(config: &Config, sinks: Vec<Box<dyn BatchSink>>) -> anyhow::Result<Service> {
        let registry = Registry::new();
        let pipeline_metrics = PipelineMetrics::register(&registry).context("registering metrics")?;
        let kafka_metrics = KafkaMetrics::register(&registry).context("registering metrics")?;
        let listener = serve::bind(config.metrics.listen).await?;
        let metrics_addr = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve::serve(listener, Endpoints { registry: registry.clone(), ready: Arc::clone(&ready) }));

        let dead_letters = KafkaDeadLetters::new(&config.kafka, kafka_metrics.clone())?;
        let pipeline =
            Pipeline::new(config.batch.config(), sinks, Box::new(dead_letters)).with_metrics(pipeline_metrics);
        let source = KafkaSource::new(&config.kafka, pipeline, kafka_metrics.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let consumer = tokio::task::spawn_blocking(move || source.run(&flag));
        ready.store(true, Ordering::Relaxed);
        info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, topics = ?config.kafka.topics,
            metrics = %metrics_addr, "termwatch consuming");
        Ok(Service { registry, kafka_metrics, stop, metrics_addr, consumer })
    }

    /// Asks the consumer to stop and waits for it to flush and commit.
    pub async fn stop(self) -> anyhow::Result<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        self.wait().await
    }

    /// Waits for the consumer to end (it ends by itself only on failure).
    pub async fn wait(self) -> anyhow::Result<Stats> {
        Ok(self.consumer.await.context("consumer thread")??)
    }

    pub fn is_finished(&self) -> bool {
        self.consumer.is_finished()
    }
}

pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let service = Service::start(&config, Vec::new()).await?;
        let stop = Arc::clone(&service.stop);
        tokio::select! {
            signal = shutdown_signal() => {
                info!(signal = signal?, "stopping: flushing and committing");
                stop.store(true, Ordering::Relaxed);
            }
            () = wait_finished(&service) => {}
        }
        let stats = service.wait().await?;
        info!(%stats, "stopped");
        Ok(())
    })
}

async fn wait_finished(service: &Service) {
    while !service.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Resolves on SIGTERM or SIGINT, naming which.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
