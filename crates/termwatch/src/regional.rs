//! `termwatch run` with `stages.role = "regional"`: stage 2 of
//! docs/two-stages.md as a service. It reads every stage-1 replica's
//! partials in its own consumer group, scores the sites and regions of the
//! windows every source has passed, writes their alert events (standard
//! output as alerts-v1 NDJSON, and the alerts topic when configured),
//! teaches stage 1 on the lessons topic, and serves its metrics. With
//! `[state] path`, it snapshots to `regional.snap` there every
//! `interval_s` and on shutdown, and commits what a snapshot covers only
//! once it is written and the alert events before it are delivered.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use termwatch_alerts::merging::{MergingConfig, MergingStage, Started, Stepped, telemetry_sources};
use termwatch_alerts::metrics::{AlertMetrics, Merging, MergingMetrics};
use termwatch_alerts::regional::Kept;
use termwatch_alerts::topic::{AlertTopic, ServiceOutput};
use termwatch_models::artifact::ModelSet;
use termwatch_telemetry::alerts::AlertEvent;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::serve::{self, Endpoints};

/// The snapshot's file name in `[state] path`.
pub const SNAPSHOT: &str = "regional.snap";
/// Records read in one step at most: a backlog is scored in bounded steps,
/// and a SIGTERM is seen between them.
const MAX_RECORDS: usize = 10_000;
/// How long one step waits for a first record.
const STEP_WAIT: Duration = Duration::from_millis(200);
/// How long a metadata request, a read or a lessons delivery may take.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(config: Config) -> anyhow::Result<()> {
    let path = Path::new(crate::models_cmd::DEFAULT_MODELS);
    let models = ModelSet::load(path).with_context(|| format!("loading {}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let registry = Registry::new();
        let metrics = AlertMetrics::register(&registry).context("registering alert metrics")?;
        let merging = MergingMetrics::register(&registry).context("registering stage 2 metrics")?;
        let web = match &config.metrics.web_config_file {
            Some(path) => serve::WebConfig::load(path)?,
            None => serve::WebConfig::default(),
        };
        let listener = serve::bind(config.metrics.listen).await?;
        let metrics_addr = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let endpoints = Endpoints { registry: registry.clone(), ready: Arc::clone(&ready), web: Arc::new(web) };
        tokio::spawn(serve::serve(listener, endpoints));
        let stop = Arc::new(AtomicBool::new(false));
        let grace = Duration::from_secs(config.kafka.shutdown_grace_s);
        let worker = {
            let (stop, config) = (Arc::clone(&stop), config.clone());
            tokio::task::spawn_blocking(move || stage_two(&config, models, &stop, &ready, &metrics, &merging))
        };
        info!(brokers = %config.kafka.brokers, group = %config.stages.group_id,
            partials = %config.stages.partials_topic, lessons = %config.stages.lessons_topic,
            metrics = %metrics_addr, "termwatch stage 2 (regional) starting");
        tokio::select! {
            signal = crate::run::shutdown_signal() => {
                info!(signal = signal?, grace = ?grace, "stopping: snapshot and commit");
                stop.store(true, Ordering::Relaxed);
            }
            () = async { while !worker.is_finished() { tokio::time::sleep(Duration::from_millis(200)).await } } => {}
        }
        match tokio::time::timeout(grace, worker).await {
            Ok(done) => done.context("stage 2 thread")?,
            Err(_) => {
                // Stuck in librdkafka (a broker that accepts connections
                // and never answers): the successor reads on from the last
                // commit and snapshot, as after a kill -9.
                error!(grace = ?grace, "not stopped within the shutdown grace: exiting without the final snapshot");
                std::process::exit(1)
            }
        }
    })
}

/// The stage's loop, on its own thread until `stop` is set.
fn stage_two(
    config: &Config,
    models: ModelSet,
    stop: &AtomicBool,
    ready: &AtomicBool,
    metrics: &AlertMetrics,
    merging: &MergingMetrics,
) -> anyhow::Result<()> {
    let sources = telemetry_sources(&config.kafka, &config.kafka.topics, TIMEOUT)?;
    let state = match &config.state.path {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("state directory {}", dir.display()))?;
            Some(dir.join(SNAPSHOT))
        }
        None => None,
    };
    let stage_config = MergingConfig {
        partials_topic: config.stages.partials_topic.clone(),
        lessons_topic: config.stages.lessons_topic.clone(),
        group: config.stages.group_id.clone(),
        sources,
        allowed_lateness_ms: config.stages.allowed_lateness_ms(),
        max_open_windows: config.stages.max_open_windows,
        state,
        timeout: TIMEOUT,
        keep_scores: true,
    };
    let (mut stage, started) = MergingStage::start(&config.kafka, &stage_config, models)?;
    match started {
        Started::Restored(position) => info!(position = %position, "stage 2 restored from its snapshot"),
        Started::Cold => info!(sources = stage_config.sources.len(), "stage 2 starting cold"),
        Started::Refused(why) => warn!(why = %why, "stage 2 snapshot refused: starting cold"),
    }
    let topic = match &config.kafka.alerts_topic {
        Some(name) => Some(AlertTopic::new(&config.kafka, name)?),
        None => None,
    };
    let mut out = ServiceOutput::new(topic);
    // What a restored stage had merged shows before the first step.
    observe(&stage, 0, merging);
    export(&stage, metrics, &Default::default(), &[]);
    ready.store(true, Ordering::Relaxed);
    let every = Duration::from_secs_f64(config.state.interval_s);
    let mut last_checkpoint = Instant::now();
    let mut windows = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            let stepped = stage.step(MAX_RECORDS, STEP_WAIT)?;
            windows += stepped.closed.len() as u64;
            emit(&stepped, &mut out, metrics);
            let kept = stage.take_scores();
            export(&stage, metrics, &kept, &stepped.events);
            observe(&stage, windows, merging);
        }
        if stopping || last_checkpoint.elapsed() >= every {
            checkpoint(&mut stage, &mut out, metrics);
            last_checkpoint = Instant::now();
        }
        if stopping {
            info!(windows, "stage 2 stopped");
            return Ok(());
        }
    }
}

/// The alert metrics of the member merging; a standby exports its model
/// and no alert (the state it loaded is the merging member's to export:
/// recording rules sum alerts over processes).
fn export(stage: &MergingStage, metrics: &AlertMetrics, kept: &Kept, events: &[AlertEvent]) {
    if stage.reader().current() {
        metrics.update_regional(stage.regional(), kept, events);
        let counts = stage.reader().merger().counts();
        metrics.set_unscored_region_windows(counts.thin_region_windows);
        metrics.set_release_versions_refused(counts.refused_releases);
    } else {
        metrics.update_standby(stage.regional().model_version());
    }
}

fn observe(stage: &MergingStage, windows: u64, metrics: &MergingMetrics) {
    let merger = stage.reader().merger();
    let (read, unreadable) = stage.reader().counts();
    metrics.observe(&Merging {
        read,
        unreadable,
        windows,
        counts: merger.counts(),
        open_windows: merger.open_windows(),
        closed_through: merger.closed_through(),
        lessons: stage.lessons_published().0,
        assigned: stage.reader().assigned(),
    });
}

/// Writes a step's alert events out, and says what it could not read.
fn emit(stepped: &Stepped, out: &mut ServiceOutput, metrics: &AlertMetrics) {
    for u in &stepped.unreadable {
        warn!(record = %u, "partials record not read");
    }
    if let Some(e) = &stepped.error {
        warn!(error = %e, "partials topic: consumer error (reading on)");
    }
    match &stepped.reloaded {
        Some(Started::Restored(position)) => {
            info!(position = %position, "partials partition assigned: reading on from the latest snapshot")
        }
        Some(Started::Cold) => info!("partials partition assigned: no snapshot yet, reading on from the commit"),
        Some(Started::Refused(why)) => warn!(why = %why, "partials partition assigned: snapshot refused, cold"),
        None => {}
    }
    out.write(&stepped.events, Some(metrics));
}

/// Snapshots and commits, once the alerts topic holds every event the
/// snapshot covers: a commit before then could lose them for good.
fn checkpoint(stage: &mut MergingStage, out: &mut ServiceOutput, metrics: &AlertMetrics) {
    if !out.delivered(Some(metrics)) {
        return;
    }
    match stage.checkpoint() {
        Ok(Some(bytes)) => {
            metrics.snapshot_written();
            tracing::debug!(bytes, "stage 2 snapshot written and committed");
        }
        Ok(None) => {}
        Err(e) => {
            metrics.snapshot_failed();
            warn!(error = format!("{e:#}"), "stage 2 snapshot or commit failed: retried next interval");
        }
    }
}
