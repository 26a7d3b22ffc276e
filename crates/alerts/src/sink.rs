//! The alert stage as a pipeline sink: every batch scored, the alert events
//! written (a file, standard output, the alerts topic), alert metrics
//! updated, and the state snapshotted so a restart resumes where it was.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use arrow::record_batch::RecordBatch;
use termwatch_models::artifact::ModelSet;
use termwatch_pipeline::{BatchSink, Checkpoint, Owners, PartitionKey, SinkError, Sources};

use termwatch_telemetry::time::format_rfc3339_ms;

use crate::metrics::AlertMetrics;
use crate::scoring::Scorer;

/// How alert events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFormat {
    /// alerts-v1 JSON, one event per line.
    Ndjson,
    /// One readable line per event, for a terminal.
    Human,
}

/// Scores every batch and writes the alert events it causes.
pub struct AlertSink {
    scorer: Scorer,
    name: String,
    out: Box<dyn Write + Send>,
    format: AlertFormat,
    written: u64,
    /// Alert metrics, updated once per batch, when the service exports them.
    metrics: Option<AlertMetrics>,
    /// Where and how often to snapshot what scoring has learned.
    state: Option<StateFile>,
    /// Per-partition snapshots (`termwatch run`), instead of `state`.
    state_dir: Option<StateDir>,
    /// Alert events also go to this Kafka topic.
    #[cfg(feature = "kafka")]
    topic: Option<crate::topic::AlertTopic>,
    /// Standard output of a service: a write that fails is counted and
    /// logged, not fatal (the alerts topic and `/metrics` carry the events).
    best_effort_out: bool,
    /// When a failing output was last logged: once a minute is enough.
    last_warned: Option<std::time::Instant>,
}

/// A snapshot file and its schedule.
pub struct StateFile {
    pub path: PathBuf,
    /// Wall-clock time between snapshots while streaming; one is also taken
    /// on every durable flush (shutdown, end of a replay).
    pub every: Duration,
    pub position: String,
    last: std::time::Instant,
}

/// A snapshot directory (`termwatch run`): one file per Kafka partition
/// (`<topic>-<partition>.snap`, the state of its terminals and the offset it
/// covers) and `shared.snap` (site, region and cohort state, open windows,
/// alert state above terminal scope, terminals no partition holds), all
/// written at each checkpoint.
pub struct StateDir {
    pub dir: PathBuf,
    pub every: Duration,
    /// In words, for the shared snapshot: which group and topics.
    pub source: String,
    last: std::time::Instant,
}

impl StateDir {
    /// Refuses a path that is a file: the single snapshot of an older
    /// termwatch, which holds no offsets to resume partitions from.
    pub fn new(dir: PathBuf, every: Duration, source: String) -> anyhow::Result<StateDir> {
        if dir.is_file() {
            bail!(
                "state.path {} is a file (a single snapshot from an older termwatch); `termwatch run` keeps one \
                 snapshot per Kafka partition in a directory: point state.path at a directory (a new path, or \
                 remove the file to start cold)",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create state directory {}", dir.display()))?;
        Ok(StateDir { dir, every, source, last: std::time::Instant::now() })
    }

    pub fn shared_path(&self) -> PathBuf {
        self.dir.join("shared.snap")
    }

    pub fn partition_path(&self, key: &PartitionKey) -> PathBuf {
        self.dir.join(format!("{key}.snap"))
    }
}

impl StateFile {
    pub fn new(path: PathBuf, every: Duration, position: String) -> StateFile {
        StateFile { path, every, position, last: std::time::Instant::now() }
    }
}

impl AlertSink {
    /// Alert events as NDJSON into `path`.
    pub fn file(models: &Path, path: &Path) -> anyhow::Result<AlertSink> {
        let file = File::create(path).with_context(|| format!("cannot create alerts file {}", path.display()))?;
        Self::new(
            models,
            format!("alerts file {}", path.display()),
            Box::new(BufWriter::new(file)),
            AlertFormat::Ndjson,
        )
    }

    pub fn new(
        models: &Path,
        name: String,
        out: Box<dyn Write + Send>,
        format: AlertFormat,
    ) -> anyhow::Result<AlertSink> {
        Self::with_metrics(models, name, out, format, None)
    }

    /// As [`AlertSink::new`], and with `metrics` exports the alert state as
    /// Prometheus metrics, updated once per batch (the scorer then keeps its
    /// scores for the histograms, which only metrics need).
    pub fn with_metrics(
        models: &Path,
        name: String,
        out: Box<dyn Write + Send>,
        format: AlertFormat,
        metrics: Option<AlertMetrics>,
    ) -> anyhow::Result<AlertSink> {
        let set = ModelSet::load(models)?;
        let mut scorer = Scorer::new(set)?.keep_scores(metrics.is_some());
        if let Some(m) = &metrics {
            // The model version and the gauges are on /metrics before the first batch.
            m.update(&mut scorer, &[]);
        }
        Ok(AlertSink {
            scorer,
            name,
            out,
            format,
            written: 0,
            metrics,
            state: None,
            state_dir: None,
            #[cfg(feature = "kafka")]
            topic: None,
            best_effort_out: false,
            last_warned: None,
        })
    }

    /// Bounds what scoring holds in memory (see `termwatch_features::Limits`).
    pub fn with_limits(mut self, limits: termwatch_features::Limits) -> AlertSink {
        self.scorer.set_limits(limits);
        self
    }

    /// Sends every alert event to a Kafka topic too. With a state directory
    /// events that cannot be delivered wait and are sent again, and no
    /// snapshot is taken (so no offset committed) until they are: a restart
    /// meanwhile replays them. Without one, a batch whose events are not
    /// delivered fails, so its offsets are not committed.
    #[cfg(feature = "kafka")]
    pub fn with_topic(mut self, topic: crate::topic::AlertTopic) -> AlertSink {
        self.topic = Some(topic);
        self
    }

    /// The output is a service's standard output: a failed write is counted
    /// (`termwatch_alert_delivery_failures_total{output="stdout"}`) and
    /// logged once a minute, and scoring goes on.
    pub fn best_effort_output(mut self) -> AlertSink {
        self.best_effort_out = true;
        self
    }

    /// A write to the output that failed: fatal unless best effort.
    fn output_failed(&mut self, e: std::io::Error) -> Result<(), SinkError> {
        if !self.best_effort_out {
            return Err(SinkError::io(format!("cannot write {}", self.name), e));
        }
        if let Some(m) = &self.metrics {
            m.delivery_failed("stdout");
        }
        if self.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.last_warned = Some(std::time::Instant::now());
            tracing::warn!(output = %self.name, error = %e, "alert events cannot be written; scoring goes on");
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<(), SinkError> {
        match self.out.flush() {
            Ok(()) => Ok(()),
            Err(e) => self.output_failed(e),
        }
    }

    /// Whether the alerts topic holds no undelivered event (so a snapshot
    /// may cover everything consumed so far).
    fn delivered(&self) -> bool {
        #[cfg(feature = "kafka")]
        return self.topic.as_ref().is_none_or(crate::topic::AlertTopic::settled);
        #[cfg(not(feature = "kafka"))]
        true
    }

    /// Restores a snapshot if one is there, and snapshots to it from now on.
    /// A snapshot that cannot be used is refused with a message that says
    /// why, and scoring starts cold.
    pub fn with_state(mut self, state: StateFile) -> AlertSink {
        let mut cold = state.path.as_os_str().to_owned();
        cold.push(".cold");
        self.attach_cold_store(std::path::Path::new(&cold));
        if state.path.exists() {
            match self.scorer.restore_snapshot(&state.path) {
                Ok(position) => eprintln!("state: restored {} (it covers {position})", state.path.display()),
                Err(e) => eprintln!("state: {e}; starting cold"),
            }
        } else {
            eprintln!("state: no snapshot at {} yet; starting cold", state.path.display());
        }
        self.state = Some(state);
        self
    }

    /// Restores the shared snapshot of a state directory if there is one;
    /// partitions are restored as they are assigned. A snapshot that cannot
    /// be used is refused with a message naming it, and that part starts
    /// cold.
    pub fn with_state_dir(mut self, state: StateDir) -> AlertSink {
        self.attach_cold_store(&state.dir.join("cold"));
        let shared = state.shared_path();
        if shared.exists() {
            match self.scorer.restore_snapshot(&shared) {
                Ok(position) => eprintln!("state: restored {} ({position})", shared.display()),
                Err(e) => eprintln!("state: {e}; shared state starts cold"),
            }
        } else {
            eprintln!("state: no shared snapshot at {} yet; starting cold", shared.display());
        }
        self.state_dir = Some(state);
        self
    }

    /// Keeps idle terminals' state in `dir` (as many as the terminals
    /// held at most) and gives it back when they report again. A store that
    /// cannot be opened is said, and terminals that come back start as new.
    fn attach_cold_store(&mut self, dir: &std::path::Path) {
        let engine = self.scorer.engine();
        let (features, max) = (engine.config().clone(), engine.limits().max_terminals);
        match crate::cold::ColdStore::open(dir, features, max) {
            Ok(store) => {
                if !store.is_empty() {
                    eprintln!("state: {} idle terminals' state in {}", store.len(), dir.display());
                }
                self.scorer.set_cold_store(store);
            }
            Err(e) => {
                eprintln!("state: cannot open the cold store {}: {e}; idle terminals come back as new", dir.display())
            }
        }
    }

    /// Loads a warm-up's snapshot (then deletes it): everything it learned,
    /// replacing the shared state restored before. Its terminals belong to
    /// no partition until their records arrive; reports they already applied
    /// are skipped and counted. Partition snapshots restored on assignment
    /// replace them for their terminals.
    pub fn with_seed(mut self, seed: &Path) -> anyhow::Result<AlertSink> {
        let position = self.scorer.restore_snapshot(seed).context("the warm-up's state")?;
        eprintln!("state: restored {} (it covers {position})", seed.display());
        std::fs::remove_file(seed).with_context(|| format!("cannot remove {}", seed.display()))?;
        Ok(self)
    }

    fn save_state(&mut self) -> Result<(), SinkError> {
        let Some(st) = &mut self.state else { return Ok(()) };
        let bytes = self.scorer.save_snapshot(&st.path, &st.position).map_err(|e| SinkError::Other(e.to_string()))?;
        st.last = std::time::Instant::now();
        tracing::debug!(path = %st.path.display(), bytes, "state snapshot written");
        Ok(())
    }

    fn write(&mut self, events: Vec<termwatch_telemetry::alerts::AlertEvent>) -> Result<(), SinkError> {
        for e in events {
            let line = match self.format {
                AlertFormat::Ndjson => serde_json::to_string(&e).map_err(|e| SinkError::Other(e.to_string()))?,
                AlertFormat::Human => human(&e),
            };
            match writeln!(self.out, "{line}") {
                Ok(()) => self.written += 1,
                Err(e) => self.output_failed(e)?,
            }
            #[cfg(feature = "kafka")]
            if let Some(t) = &mut self.topic {
                t.send(&e).map_err(SinkError::Other)?;
            }
        }
        self.flush_topic()
    }

    #[cfg(not(feature = "kafka"))]
    fn flush_topic(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Waits (bounded) for the alerts topic to take the batch's events. With
    /// a state directory, events it cannot take yet hold snapshots and
    /// commits back instead of failing the batch.
    #[cfg(feature = "kafka")]
    fn flush_topic(&mut self) -> Result<(), SinkError> {
        let Some(t) = &mut self.topic else { return Ok(()) };
        use crate::topic::Delivery;
        let (pending, error) = match t.flush() {
            Delivery::Delivered => (0, None),
            Delivery::Pending { events, error } => (events, Some(error)),
            Delivery::Lost { error } => (t.pending_events(), Some(error)),
        };
        if let Some(m) = &self.metrics {
            m.topic_pending(pending);
        }
        let Some(error) = error else { return Ok(()) };
        if self.state_dir.is_none() {
            // Nothing would hold the offsets back: the batch fails instead.
            return Err(SinkError::Other(error));
        }
        if let Some(m) = &self.metrics {
            m.delivery_failed("kafka");
        }
        if self.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.last_warned = Some(std::time::Instant::now());
            tracing::warn!(%error, pending, "alert events wait for the alerts topic; no snapshot or commit until delivered");
        }
        Ok(())
    }
}

fn human(e: &termwatch_telemetry::alerts::AlertEvent) -> String {
    use termwatch_telemetry::alerts::AlertState;
    let reasons: Vec<String> = e
        .reasons
        .iter()
        .map(|r| match &r.baseline_version {
            Some(v) => format!("{} {} (baseline {} on {v})", r.feature, r.value, r.baseline),
            None => format!("{} {} (baseline {})", r.feature, r.value, r.baseline),
        })
        .collect();
    format!(
        "ALERT {} {} {:?} {} {} in {} at {} score {:.2}{}",
        match e.state {
            AlertState::Firing => "FIRING  ",
            AlertState::Resolved => "resolved",
        },
        e.kind,
        e.severity,
        e.scope,
        e.entity,
        e.region,
        format_rfc3339_ms(e.ts),
        e.score,
        if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join(", ")) }
    )
}

impl BatchSink for AlertSink {
    fn name(&self) -> &str {
        "alerts"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows();
        self.process_sourced(batch, &Sources::single(termwatch_features::DEFAULT_SOURCE, rows))
    }
    fn process_sourced(&mut self, batch: &RecordBatch, sources: &Sources) -> Result<(), SinkError> {
        let runs: Vec<(&str, usize)> = sources.runs().collect();
        let events = self.scorer.process_sourced(batch, &runs);
        if let Some(metrics) = &self.metrics {
            metrics.update(&mut self.scorer, &events);
        }
        self.write(events)?;
        self.flush_out()?;
        if self.state.as_ref().is_some_and(|st| st.last.elapsed() >= st.every) {
            // (With a state directory the source's checkpoints snapshot:
            // only they know the offsets the state covers.)
            self.save_state()?;
        }
        Ok(())
    }
    fn end_of_source(&mut self, source: &str) -> Result<(), SinkError> {
        let events = self.scorer.end_of_source(source);
        if let Some(metrics) = &self.metrics {
            metrics.update(&mut self.scorer, &events);
        }
        self.write(events)?;
        self.flush_out()
    }
    fn assign(&mut self, partitions: &[PartitionKey], owners: &mut Owners) -> Vec<(PartitionKey, i64)> {
        // Each partition holds windows open from now on, until it sends or
        // ends; a restored one carries its own progress.
        for key in partitions {
            self.scorer.register_source(&key.to_string());
        }
        let Some(st) = &self.state_dir else { return Vec::new() };
        let mut seeks = Vec::new();
        for key in partitions {
            let path = st.partition_path(key);
            if !path.exists() {
                eprintln!("state: no snapshot of partition {key} at {} yet; it starts cold", path.display());
                continue;
            }
            match self.scorer.restore_partition(&path, &key.topic, key.partition) {
                Ok((offset, terminals)) => {
                    for t in &terminals {
                        owners.claim(t, &key.topic, key.partition);
                    }
                    eprintln!(
                        "state: restored {} ({} terminals); partition {key} resumes at offset {offset}",
                        path.display(),
                        terminals.len()
                    );
                    seeks.push((key.clone(), offset));
                }
                Err(e) => eprintln!("state: {e}; partition {key} starts cold from its committed offset"),
            }
        }
        seeks
    }

    fn keeps_state(&self) -> bool {
        self.state_dir.is_some()
    }

    fn checkpoint(&mut self, cp: &Checkpoint<'_>) -> Result<bool, SinkError> {
        if !self.delivered() {
            // Retried here too, so a stream gone quiet still delivers them.
            self.write(Vec::new())?;
        }
        let delivered = self.delivered();
        let Some(st) = &mut self.state_dir else { return Ok(false) };
        if !cp.force && st.last.elapsed() < st.every {
            return Ok(false);
        }
        if !delivered {
            // A snapshot would cover events the alerts topic has not had:
            // the positions stay where the last snapshot left them, and a
            // restart replays those events (at least once).
            st.last = std::time::Instant::now();
            return Ok(false);
        }
        // Tried again after a whole interval, not on every tick, if it fails.
        st.last = std::time::Instant::now();
        let written = (|| {
            let mut bytes = 0;
            for (key, &offset) in cp.positions {
                let owned = |id: &str| cp.owners.owner(id) == Some(key);
                bytes +=
                    self.scorer.save_partition(&st.partition_path(key), &key.topic, key.partition, offset, owned)?;
            }
            let mut positions: Vec<String> = cp.positions.iter().map(|(k, o)| format!("{k}@{o}")).collect();
            positions.sort();
            let position = format!("{}, taken with partitions {}", st.source, positions.join(","));
            let unowned = |id: &str| cp.owners.owner(id).is_none_or(|k| !cp.positions.contains_key(k));
            bytes += self.scorer.save_shared(&st.shared_path(), &position, unowned)?;
            Ok::<_, crate::snapshot::SnapshotError>(bytes)
        })();
        match written {
            Ok(bytes) => {
                tracing::debug!(dir = %st.dir.display(), bytes, "state snapshots written");
                if let Some(m) = &self.metrics {
                    m.snapshot_written();
                }
                Ok(true)
            }
            // Degrade, don't die: a full disk must not stop alerting, nor
            // crash-loop the service. Offsets are then stored as if no
            // snapshot had been due (see `Checkpoint`): a partition never
            // snapshotted commits nothing, so a restart re-reads from its
            // last commit; one snapshotted before restarts from that older
            // snapshot and re-reads from the offset it covers.
            Err(e) => {
                tracing::warn!(error = %e, every = ?st.every, "state snapshot failed; consuming goes on, retrying");
                if let Some(m) = &self.metrics {
                    m.snapshot_failed();
                }
                Ok(false)
            }
        }
    }

    fn revoke(&mut self, partitions: &[PartitionKey], owners: &Owners) {
        for key in partitions {
            self.scorer.remove_source(&key.to_string());
        }
        if self.state_dir.is_none() {
            return;
        }
        let dropped = self.scorer.drop_terminals(|id| owners.owner(id).is_some_and(|k| partitions.contains(k)));
        tracing::info!(dropped, "terminals of revoked partitions forgotten");
    }

    fn end_of_input(&mut self) -> Result<(), SinkError> {
        // With a state file the history is the prefix of a stream that goes
        // on (a later replay, or `termwatch run`): its last windows stay
        // open in the snapshot instead of closing half full.
        if self.state.is_some() || self.state_dir.is_some() {
            return Ok(());
        }
        let events = self.scorer.finish();
        if let Some(metrics) = &self.metrics {
            metrics.update(&mut self.scorer, &events);
        }
        self.write(events)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        let name = self.name.clone();
        self.flush_out()?;
        self.save_state()?;
        let c = self.scorer.engine().counters();
        eprintln!(
            "alerts: {} events written to {name}; {} firing now; event time: {} of {} reports dropped as late, {} as clock ahead",
            self.written,
            self.scorer.alerts().firing_len(),
            c.late,
            c.reports,
            c.ahead,
        );
        let moved: Vec<String> = self
            .scorer
            .thresholds()
            .filter(|t| t.shift.is_some() || t.peak_shift.is_some())
            .map(|t| {
                let peaks = t.peak_shift.map(|p| format!(", daily peaks {p:+.2}")).unwrap_or_default();
                let windows = t.shift.map(|w| format!("fleet {w:+.2}")).unwrap_or_else(|| "fleet warming up".into());
                format!(
                    "{} {} {:.3} (trained {:.3}, {windows}{peaks} log-odds)",
                    t.kind, t.scope, t.threshold, t.trained
                )
            })
            .collect();
        if !moved.is_empty() {
            eprintln!("fleet calibration: {}", moved.join("; "));
        }
        let l = self.scorer.engine().limit_counts();
        if l != termwatch_features::LimitCounts::default() {
            eprintln!(
                "limits: {} terminals forgotten after {:.1} days silent, {} to make room; reports refused: {} \
                 (terminals at the limit), {} (regions past the limit)",
                l.evicted_idle,
                self.scorer.engine().limits().idle_terminal_ms as f64 / 86_400_000.0,
                l.evicted_capacity,
                l.refused_terminals,
                l.refused_regions,
            );
        }
        Ok(())
    }
}
