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
use termwatch_alerts::metrics::AlertMetrics;
use termwatch_alerts::sink::{AlertFormat, AlertSink};
use termwatch_alerts::stage_one::{StageOneConfig, StageOneSink};
use termwatch_alerts::topic::{AlertTopic, ServiceOutput};
use termwatch_models::artifact::ModelSet;

/// A running service's handles, for `run` and for the demo.
pub struct Service {
    pub registry: Registry,
    pub kafka_metrics: KafkaMetrics,
    pub stop: Arc<AtomicBool>,
    pub metrics_addr: std::net::SocketAddr,
    /// `https` when the metrics endpoint serves TLS, else `http`.
    pub metrics_scheme: &'static str,
    consumer: tokio::task::JoinHandle<Result<Stats, termwatch_pipeline::KafkaSourceError>>,
}

impl Service {
    /// Starts the metrics endpoint and the consumer. `registry` is the one
    /// registry of the process: the sinks may have registered theirs in it.
    pub async fn start(config: &Config, registry: Registry, sinks: Vec<Box<dyn BatchSink>>) -> anyhow::Result<Service> {
        let pipeline_metrics = PipelineMetrics::register(&registry).context("registering metrics")?;
        let kafka_metrics = KafkaMetrics::register(&registry).context("registering metrics")?;
        // A web config that cannot be used stops the start: serving metrics
        // openly that were meant to be protected is not a fallback.
        let web = match &config.metrics.web_config_file {
            Some(path) => serve::WebConfig::load(path)?,
            None => serve::WebConfig::default(),
        };
        let (tls, auth) = (web.is_tls(), web.has_users());
        let listener = serve::bind(config.metrics.listen).await?;
        let metrics_addr = listener.local_addr()?;
        let dead_letters = KafkaDeadLetters::new(&config.kafka, kafka_metrics.clone())?;
        let pipeline = Pipeline::new(config.batch.config(), sinks, Box::new(dead_letters))
            .with_metrics(pipeline_metrics)
            .with_max_record_bytes(config.limits.max_record_bytes)
            .with_max_terminals(config.limits.max_terminals.saturating_mul(2));
        let source = KafkaSource::new(&config.kafka, pipeline, kafka_metrics.clone())?;
        // Ready once the brokers have answered, not merely once started: a
        // replica that cannot reach Kafka is not taken as serving.
        let endpoints = Endpoints { registry: registry.clone(), ready: source.ready(), web: Arc::new(web) };
        tokio::spawn(serve::serve(listener, endpoints));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let consumer = tokio::task::spawn_blocking(move || source.run(&flag));
        info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, topics = ?config.kafka.topics,
            metrics = %metrics_addr, metrics_tls = tls, metrics_basic_auth = auth, "termwatch consuming");
        let metrics_scheme = if tls { "https" } else { "http" };
        Ok(Service { registry, kafka_metrics, stop, metrics_addr, metrics_scheme, consumer })
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

pub fn run(config: Config, warm_up: &[std::path::PathBuf]) -> anyhow::Result<()> {
    if config.stages.role == termwatch_config::Role::Regional {
        if !warm_up.is_empty() {
            anyhow::bail!("--warm-up is for terminal state, which a regional stage (stages.role) does not hold");
        }
        return crate::regional::run(config);
    }
    if config.stages.role == termwatch_config::Role::Terminal && !warm_up.is_empty() {
        anyhow::bail!(
            "--warm-up is not yet for stage 1 (stages.role = \"terminal\"): replay the history into the telemetry \
             topic instead"
        );
    }
    // The directory lives until the live sink has loaded the snapshot.
    let warm = if warm_up.is_empty() { None } else { Some(warm_up_from(&config, warm_up)?) };
    let seed = warm.as_ref().map(|(_, path)| path.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let registry = Registry::new();
        // Stage 1 may be waiting for lessons when the signal comes.
        let stopping = Arc::new(AtomicBool::new(false));
        let sinks = match config.stages.role {
            termwatch_config::Role::Terminal => vec![stage_one_sink(&registry, &config, Arc::clone(&stopping))?],
            _ => scoring_sinks(&registry, &config, seed)?,
        };
        let service = Service::start(&config, registry, sinks).await?;
        let stop = Arc::clone(&service.stop);
        let grace = std::time::Duration::from_secs(config.kafka.shutdown_grace_s);
        tokio::select! {
            signal = shutdown_signal() => {
                info!(signal = signal?, grace = ?grace, "stopping: flushing and committing");
                stopping.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
            () = wait_finished(&service) => {}
        }
        match tokio::time::timeout(grace, service.wait()).await {
            Ok(stats) => {
                info!(stats = %stats?, "stopped");
                Ok(())
            }
            Err(_) => {
                // The consumer thread is stuck in librdkafka (a broker that
                // accepts connections but never answers): nothing can unblock
                // it, and the runtime would wait for it forever on the way
                // out. What was not committed is read again by the next
                // owner, from its snapshot and the last commit, as after a
                // kill -9.
                tracing::error!(grace = ?grace, "not stopped within the shutdown grace: exiting without the final commit");
                std::process::exit(1)
            }
        }
    })
}

/// Scores with the default model when its file exists (alert events to
/// standard output as alerts-v1 NDJSON, alert metrics in `registry`);
/// consumes without scoring otherwise.
fn scoring_sinks(
    registry: &Registry,
    config: &Config,
    seed: Option<std::path::PathBuf>,
) -> anyhow::Result<Vec<Box<dyn BatchSink>>> {
    let models = std::path::Path::new(crate::models_cmd::DEFAULT_MODELS);
    if !models.exists() {
        info!(models = %models.display(), "not scoring: no model file (scripts/train-default makes it)");
        return Ok(Vec::new());
    }
    let metrics = AlertMetrics::register(registry).context("registering alert metrics")?;
    let sink = AlertSink::with_metrics(
        models,
        "standard output".into(),
        Box::new(std::io::stdout()),
        AlertFormat::Ndjson,
        Some(metrics),
    )
    .with_context(|| format!("loading {}", models.display()))?
    .with_limits(config.limits.limits())
    .best_effort_output();
    info!(models = %models.display(), "scoring with the default model; alert events (alerts-v1) on standard output");
    let sink = match &config.kafka.alerts_topic {
        Some(topic) => {
            info!(topic = %topic, "alert events also go to Kafka");
            sink.with_topic(termwatch_alerts::topic::AlertTopic::new(&config.kafka, topic)?)
        }
        None => sink,
    };
    let sink = match &config.state.path {
        Some(path) => sink.with_state_dir(termwatch_alerts::sink::StateDir::new(
            path.clone(),
            std::time::Duration::from_secs_f64(config.state.interval_s),
            format!("group {} on {}", config.kafka.group_id, config.kafka.topics.join(",")),
        )?),
        None => sink,
    };
    let sink = match &seed {
        Some(path) => sink.with_seed(path)?,
        None => sink,
    };
    Ok(vec![Box::new(sink)])
}

/// Stage 1 of docs/two-stages.md: a split scorer per partition assigned,
/// publishing to the partials topic and learning from the lessons topic.
fn stage_one_sink(
    registry: &Registry,
    config: &Config,
    stopping: Arc<AtomicBool>,
) -> anyhow::Result<Box<dyn BatchSink>> {
    let path = std::path::Path::new(crate::models_cmd::DEFAULT_MODELS);
    let models = ModelSet::load(path).with_context(|| format!("loading {}", path.display()))?;
    let metrics = AlertMetrics::register(registry).context("registering alert metrics")?;
    let Some(dir) = config.state.path.clone() else {
        anyhow::bail!("stages.role = \"terminal\" needs state.path");
    };
    let stage = StageOneConfig {
        kafka: config.kafka.clone(),
        partials_topic: config.stages.partials_topic.clone(),
        lessons_topic: config.stages.lessons_topic.clone(),
        dir,
        every: std::time::Duration::from_secs_f64(config.state.interval_s),
        max_open_windows: config.stages.max_open_windows,
        lessons_wait: LESSONS_WAIT,
        limits: config.limits.limits(),
        timeout: std::time::Duration::from_secs(30),
        source: format!("group {} on {}", config.kafka.group_id, config.kafka.topics.join(",")),
        stopping,
    };
    let topic = match &config.kafka.alerts_topic {
        Some(name) => Some(AlertTopic::new(&config.kafka, name)?),
        None => None,
    };
    info!(partials = %stage.partials_topic, lessons = %stage.lessons_topic, models = %path.display(),
        "stage 1 (terminal): terminal alert events (alerts-v1) on standard output");
    Ok(Box::new(StageOneSink::new(stage, models, ServiceOutput::new(topic), Some(metrics))?))
}

/// How long stage 1 waits for lessons that do not come (stage 2 down, or
/// a partition of another replica silent) before it closes its windows on
/// their own: long enough for a stage-2 standby to take over (its group's
/// session timeout, 45 s by default, and a snapshot load).
const LESSONS_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Replays history through the scoring sink into a snapshot in a private
/// temporary directory (mode 0700, removed when dropped), which the live
/// sink then loads (see `AlertSink::with_seed`): learning happens on the one
/// code path, and going live continues exactly where the history ended. The
/// warm-up starts cold; its rejects go to the dead-letter topic.
fn warm_up_from(
    config: &Config,
    inputs: &[std::path::PathBuf],
) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf)> {
    let models = std::path::Path::new(crate::models_cmd::DEFAULT_MODELS);
    if !models.exists() {
        anyhow::bail!("--warm-up needs the model {} (scripts/train-default makes it)", models.display());
    }
    // Not a predictable name in a shared /tmp: another user could plant it.
    let dir = tempfile::Builder::new().prefix("termwatch-warm-up-").tempdir().context("warm-up directory")?;
    let state = dir.path().join("warm-up.snap");
    let position = format!(
        "the end of the warm-up history {}",
        inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let sink = AlertSink::with_metrics(
        models,
        "standard output".into(),
        Box::new(std::io::stdout()),
        AlertFormat::Ndjson,
        None,
    )?
    .with_limits(config.limits.limits())
    .with_state(termwatch_alerts::sink::StateFile::new(state.clone(), std::time::Duration::MAX, position));
    // Rejects go to the dead-letter topic as they come, named by file and
    // line (headers termwatch.source.file and termwatch.source.line), like
    // the live stream's: nothing is held until the end.
    let dead_letter_metrics =
        KafkaMetrics::register(&Registry::new()).context("registering the warm-up's dead-letter metrics")?;
    let dead_letters = KafkaDeadLetters::new(&config.kafka, dead_letter_metrics)?;
    let pipeline =
        termwatch_pipeline::Pipeline::new(config.batch.config(), vec![Box::new(sink)], Box::new(dead_letters))
            .with_max_record_bytes(config.limits.max_record_bytes)
            .with_max_terminals(config.limits.max_terminals.saturating_mul(2));
    let report = termwatch_pipeline::replay(inputs, pipeline);
    if let Some(e) = report.error {
        return Err(e).context("warm-up history");
    }
    info!(stats = %report.stats, "warm-up done; going live");
    Ok((dir, state))
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
