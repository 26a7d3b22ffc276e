//! Stage 1 of docs/two-stages.md as a pipeline sink, for `termwatch run`
//! with `stages.role = "terminal"`. Each telemetry partition assigned gets
//! a stage-1 scorer of its own ([`Scorer::split`]) and a reader of the
//! lessons topic: the partition is a source of the merging stage, with its
//! own progress, and moves to another replica whole at a rebalance.
//!
//! After every batch, and every 50 ms while nothing arrives, the sink
//! learns the lessons that have come, publishes what its scorers closed
//! (partials, terminal scores, progress) and waits for their delivery. A
//! backlog is read at the pace of the stages' round trip: while every
//! partition it is reading holds more than `max_open_windows` windows open
//! (they wait for lessons), the sink waits for lessons before it takes the
//! next batch; after `lessons_wait` without any, or past four times the
//! bound, the windows close on their own lessons (counted), so what a
//! replica holds stays bounded when stage 2 is down. A stopping process
//! waits no more: its windows stay open in its snapshots.
//!
//! Per partition, `<topic>-<partition>.snap` in the state directory holds
//! the scorer and where it stands in both topics. It is written, and the
//! partition's offset committed, only once the partials topic holds every
//! record the scorer took out and the alerts topic every event: a replica
//! killed before then publishes them again from its snapshot, and the
//! merger takes a (window, source) partial once. Next to it,
//! `<topic>-<partition>.cold/` is the partition's cold store: the state of
//! its terminals forgotten as idle, given back when they report again
//! (made when the first one goes idle), which moves with the partition
//! where replicas share the state directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::record_batch::RecordBatch;
use termwatch_features::Limits;
use termwatch_features::wire::PartialsRecord;
use termwatch_models::artifact::ModelSet;
use termwatch_pipeline::{BatchSink, Checkpoint, KafkaConfig, Owners, PartitionKey, SinkError, Sources};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind, Scope};
use tracing::{info, warn};

use crate::cold::ColdStore;
use crate::metrics::{AlertMetrics, AlertView};
use crate::scoring::Scorer;
use crate::snapshot::{MAX_HELD_WINDOWS, StageOffsets};
use crate::stage_topics::{LessonsReader, StagePublisher};
use crate::topic::ServiceOutput;

/// What a stage-1 sink needs besides the models.
#[derive(Debug, Clone)]
pub struct StageOneConfig {
    pub kafka: KafkaConfig,
    pub partials_topic: String,
    pub lessons_topic: String,
    /// Where each partition's snapshot goes.
    pub dir: PathBuf,
    /// Wall-clock time between snapshots.
    pub every: Duration,
    /// Windows a partition's scorer holds open, waiting for lessons, before
    /// the sink waits for them rather than read on.
    pub max_open_windows: usize,
    /// How long the sink waits for lessons that do not come before it
    /// closes windows on their own.
    pub lessons_wait: Duration,
    /// The process's limits: `max_terminals` is shared evenly between the
    /// partitions it holds.
    pub limits: Limits,
    /// How long a delivery to the partials topic may take.
    pub timeout: Duration,
    /// Names the consumer group and topics in the snapshots, in words.
    pub source: String,
    /// Set when the process is stopping: the sink waits for no more
    /// lessons, so that it snapshots and commits within the shutdown grace
    /// (a restored partition waits for them again).
    pub stopping: Arc<AtomicBool>,
}

struct Member {
    scorer: Scorer,
    lessons: LessonsReader,
    /// Rows came since the partition last caught up.
    active: bool,
    /// The progress last published.
    published_through: Option<i64>,
}

pub struct StageOneSink {
    config: StageOneConfig,
    models: ModelSet,
    /// By source name (`topic-partition`).
    members: BTreeMap<String, Member>,
    publisher: StagePublisher,
    out: ServiceOutput,
    metrics: Option<AlertMetrics>,
    last_snapshot: Instant,
    /// Since when every partition read waits for lessons.
    waiting_since: Option<Instant>,
    /// Windows closed on their own lessons (the merging stage not answering).
    shed: u64,
    /// No lesson came within `lessons_wait` and none since: windows over
    /// the bound close at once rather than after another wait.
    silent: bool,
}

impl StageOneSink {
    pub fn new(
        config: StageOneConfig,
        models: ModelSet,
        out: ServiceOutput,
        metrics: Option<AlertMetrics>,
    ) -> anyhow::Result<StageOneSink> {
        if config.dir.is_file() {
            anyhow::bail!(
                "state.path {} is a file: stage 1 keeps a snapshot per partition in a directory",
                config.dir.display()
            );
        }
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("cannot create state directory {}", config.dir.display()))?;
        // Fails now, naming it, rather than at the first window.
        Scorer::new(models.clone()).context("models")?;
        let publisher = StagePublisher::new(&config.kafka, &config.partials_topic)?;
        if let Some(m) = &metrics {
            // The model is on /metrics before the first partition.
            m.update_standby(&models.version);
        }
        Ok(StageOneSink {
            config,
            models,
            members: BTreeMap::new(),
            publisher,
            out,
            metrics,
            last_snapshot: Instant::now(),
            waiting_since: None,
            shed: 0,
            silent: false,
        })
    }

    fn path(&self, key: &PartitionKey) -> PathBuf {
        self.config.dir.join(format!("{key}.snap"))
    }

    /// A scorer for a partition just assigned: from its snapshot, or cold.
    /// Returns it and the offset to resume the partition at (None: from
    /// the group's commit).
    fn member(&self, key: &PartitionKey) -> anyhow::Result<(Member, Option<i64>)> {
        let name = key.to_string();
        let fresh = || -> anyhow::Result<Scorer> {
            let mut s = Scorer::new(self.models.clone())?.split().keep_scores(self.metrics.is_some());
            s.set_limits(self.config.limits);
            Ok(s)
        };
        let mut scorer = fresh()?;
        let path = self.path(key);
        let restored = if path.exists() {
            match scorer.restore_stage_one(&path) {
                Ok((position, offsets)) => {
                    info!(partition = %name, snapshot = %path.display(), covers = %position,
                        telemetry = offsets.telemetry, lessons = offsets.lessons, "stage 1: partition restored");
                    Some(offsets)
                }
                Err(e) => {
                    warn!(partition = %name, error = %e, "stage 1: snapshot refused; the partition starts cold");
                    scorer = fresh()?;
                    None
                }
            }
        } else {
            info!(partition = %name, "stage 1: no snapshot yet; the partition starts cold");
            None
        };
        if restored.is_none() {
            scorer.register_source(&name);
        }
        // Bounded by the partition's share of the terminals, as its scorer.
        let cold = self.config.dir.join(format!("{key}.cold"));
        let features = scorer.engine().config().clone();
        match ColdStore::open(&cold, features, scorer.engine().limits().max_terminals) {
            Ok(store) => scorer.set_cold_store(store),
            Err(e) => warn!(partition = %name, dir = %cold.display(), error = %e,
                "stage 1: cannot open the cold store; the partition's idle terminals come back as new"),
        }
        // A cold scorer learns every lesson the topic still holds.
        let lessons = LessonsReader::new(&self.config.kafka, &self.config.lessons_topic, restored.map(|o| o.lessons))?;
        let published_through = scorer.engine().closed_through();
        let member = Member { scorer, lessons, active: false, published_through };
        Ok((member, restored.map(|o| o.telemetry)))
    }

    /// Gives each partition's scorer an even share of `limits.max_terminals`,
    /// so that the process holds at most that many terminals whatever it
    /// was assigned (terminals are spread over partitions by the hash of
    /// their id; regions are in every partition and are not shared out).
    fn share_limits(&mut self) {
        let n = self.members.len().max(1);
        let limits = Limits { max_terminals: (self.config.limits.max_terminals / n).max(1), ..self.config.limits };
        for m in self.members.values_mut() {
            m.scorer.set_limits(limits);
        }
    }

    /// Publishes what every scorer took out, then its progress, and waits
    /// for their delivery.
    fn publish(&mut self) -> Result<(), SinkError> {
        let mut any = false;
        for (name, m) in &mut self.members {
            let records = m.scorer.take_partials();
            for r in &records {
                self.publisher.publish_partials(name, r).map_err(|e| SinkError::Other(format!("{e:#}")))?;
            }
            any |= !records.is_empty();
            let through = m.scorer.engine().closed_through();
            if let Some(t) = through.filter(|_| through != m.published_through) {
                self.publisher
                    .publish_partials(name, &PartialsRecord::Progress(t))
                    .map_err(|e| SinkError::Other(format!("{e:#}")))?;
                m.published_through = through;
                any = true;
            }
        }
        if any {
            // Not delivered within the timeout: the process stops, and the
            // next owner publishes again from the last snapshot.
            self.publisher.flush(self.config.timeout).map_err(|e| SinkError::Other(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Learns the lessons that have come (waiting up to `wait` for the
    /// first), then publishes: the alert events, and whether any lesson
    /// was read.
    fn pump(&mut self, wait: Duration) -> Result<(Vec<AlertEvent>, bool), SinkError> {
        let mut events = Vec::new();
        let mut learnt = false;
        let mut wait = wait;
        for (name, m) in &mut self.members {
            let scorer = &mut m.scorer;
            let got = m.lessons.poll(1_000, wait, |v| scorer.learn(v));
            // The topic is one partition, read by every member: once one
            // has waited, the others find what came.
            wait = Duration::ZERO;
            learnt |= got.records > 0;
            events.extend(got.out);
            for u in &got.unreadable {
                warn!(partition = %name, record = %u, "lessons record not read");
            }
            if let Some(e) = got.error {
                warn!(partition = %name, error = %e, "lessons topic: consumer error (reading on)");
            }
            // Held windows stay within what a snapshot may hold.
            events.extend(m.scorer.shed(usize::MAX, MAX_HELD_WINDOWS));
        }
        self.silent &= !learnt;
        self.publish()?;
        Ok((events, learnt))
    }

    /// Waits for lessons while every partition being read holds more than
    /// the bound of windows open; closes them on their own after
    /// `lessons_wait` without a lesson, or past four times the bound.
    fn hold_back(&mut self) -> Result<Vec<AlertEvent>, SinkError> {
        let bound = self.config.max_open_windows;
        let mut events = Vec::new();
        loop {
            let open = |m: &Member| m.scorer.engine().open_windows();
            let mut reading = self.members.values().filter(|m| m.active).peekable();
            let waiting = reading.peek().is_some() && reading.all(|m| open(m) > bound);
            let runaway = self.members.values().any(|m| open(m) > bound.saturating_mul(4));
            if (!waiting && !runaway) || self.config.stopping.load(Ordering::Relaxed) {
                self.waiting_since = None;
                return Ok(events);
            }
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            if runaway || self.silent || since.elapsed() >= self.config.lessons_wait {
                let was_silent = self.silent;
                self.silent |= !runaway;
                let before = self.shed;
                for m in self.members.values_mut().filter(|m| open(m) > bound) {
                    let windows = open(m) - bound;
                    events.extend(m.scorer.shed(bound, MAX_HELD_WINDOWS));
                    self.shed += windows as u64;
                }
                // Said once per silence, not once per batch.
                if !was_silent {
                    warn!(windows = self.shed - before, waited = ?since.elapsed(), runaway,
                        "stage 1: no lessons from stage 2; windows closed on this replica's own (answers may differ from one process's) until lessons come");
                }
                self.waiting_since = None;
                self.publish()?;
                return Ok(events);
            }
            let (got, learnt) = self.pump(Duration::from_millis(20))?;
            events.extend(got);
            if learnt {
                self.waiting_since = Some(Instant::now());
            }
        }
    }

    fn emit(&mut self, events: &[AlertEvent]) {
        self.out.write(events, self.metrics.as_ref());
        let Some(metrics) = &self.metrics else { return };
        let mut scores: Vec<((AlertKind, Scope), Vec<f64>)> = Vec::new();
        for m in self.members.values_mut() {
            for (detector, values) in m.scorer.take_scores() {
                match scores.iter_mut().find(|(d, _)| *d == detector) {
                    Some((_, all)) => all.extend(values),
                    None => scores.push((detector, values)),
                }
            }
        }
        let alerts: Vec<_> = self.members.values().map(|m| m.scorer.alerts()).collect();
        let engines: Vec<_> = self.members.iter().map(|(name, m)| (name.as_str(), m.scorer.engine())).collect();
        metrics.observe(&AlertView {
            alerts: &alerts,
            // One engine per partition: each partition's watermark, drops
            // and limits, summed; the stage's watermark is the least.
            engines: &engines,
            events,
            scores: &scores,
            region_scores: &[],
            // Versions are judged by stage 2, on every partition's terminals.
            releases: &[],
            // The terminal detectors' thresholds are stage 2's to export.
            thresholds: &[],
            model_version: &self.models.version,
            now_ms: termwatch_telemetry::time::now_ms(),
        });
        let cold: Vec<_> = self.members.values().filter_map(|m| m.scorer.cold_store()).collect();
        metrics.export_cold(&cold);
    }
}

impl BatchSink for StageOneSink {
    fn name(&self) -> &str {
        "stage 1"
    }

    fn process_batch(&mut self, _: &RecordBatch) -> Result<(), SinkError> {
        Err(SinkError::Other("stage 1 scores Kafka partitions, not an input without a partition".into()))
    }

    fn process_sourced(&mut self, batch: &RecordBatch, sources: &Sources) -> Result<(), SinkError> {
        let mut events = Vec::new();
        let mut at = 0;
        for (name, rows) in sources.runs() {
            let Some(m) = self.members.get_mut(name) else {
                return Err(SinkError::Other(format!("rows of {name}, which is not assigned to this replica")));
            };
            events.extend(m.scorer.process_sourced(&batch.slice(at, rows), &[(name, rows)]));
            m.active = true;
            at += rows;
        }
        events.extend(self.pump(Duration::ZERO)?.0);
        events.extend(self.hold_back()?);
        self.emit(&events);
        Ok(())
    }

    fn end_of_source(&mut self, source: &str) -> Result<(), SinkError> {
        let Some(m) = self.members.get_mut(source) else { return Ok(()) };
        m.active = false;
        let mut events = m.scorer.end_of_source(source);
        events.extend(self.pump(Duration::ZERO)?.0);
        self.emit(&events);
        Ok(())
    }

    fn assign(&mut self, partitions: &[PartitionKey], _: &mut Owners) -> Vec<(PartitionKey, i64)> {
        let mut seeks = Vec::new();
        for key in partitions {
            match self.member(key) {
                Ok((member, resume)) => {
                    self.members.insert(key.to_string(), member);
                    if let Some(offset) = resume {
                        seeks.push((key.clone(), offset));
                    }
                }
                // Without its scorer the partition's rows fail the next
                // batch, which stops the process: said here first.
                Err(e) => warn!(partition = %key, error = format!("{e:#}"), "stage 1: cannot take the partition"),
            }
        }
        self.share_limits();
        // `/metrics` shows the partitions held from now, restored state and
        // all, not from their first record: a partition restored at its
        // end may have none to come.
        self.emit(&[]);
        seeks
    }

    fn keeps_state(&self) -> bool {
        true
    }

    fn checkpoint(&mut self, cp: &Checkpoint<'_>) -> Result<bool, SinkError> {
        // Also the tick while no telemetry comes: lessons still arrive.
        let (mut events, _) = self.pump(Duration::ZERO)?;
        events.extend(self.hold_back()?);
        if !events.is_empty() {
            self.emit(&events);
        }
        if !cp.force && self.last_snapshot.elapsed() < self.config.every {
            return Ok(false);
        }
        self.last_snapshot = Instant::now();
        // The partials topic holds what the scorers took out (publish
        // waits for it); the alerts topic must hold their events too.
        if !self.out.delivered(self.metrics.as_ref()) {
            return Ok(false);
        }
        let mut written = 0;
        for (key, &telemetry) in cp.positions {
            let Some(m) = self.members.get(&key.to_string()) else { continue };
            let offsets = StageOffsets { telemetry, lessons: m.lessons.next_offset() };
            let position = format!("{}, partition {key} at offset {telemetry}", self.config.source);
            match m.scorer.save_stage_one(&self.path(key), &position, offsets) {
                Ok(bytes) => written += bytes,
                Err(e) => {
                    // A full disk must not stop alerting: nothing is
                    // committed, and the next interval tries again.
                    warn!(partition = %key, error = %e, "stage 1 snapshot failed; consuming goes on, retrying");
                    if let Some(m) = &self.metrics {
                        m.snapshot_failed();
                    }
                    return Ok(false);
                }
            }
        }
        tracing::debug!(bytes = written, "stage 1 snapshots written");
        if let Some(m) = &self.metrics {
            m.snapshot_written();
        }
        Ok(true)
    }

    fn revoke(&mut self, partitions: &[PartitionKey], _: &Owners) {
        // (The forced checkpoint before this snapshotted them.)
        for key in partitions {
            self.members.remove(&key.to_string());
        }
        self.share_limits();
        self.emit(&[]);
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.publisher.flush(self.config.timeout).map_err(|e| SinkError::Other(format!("{e:#}")))?;
        let (held, untaught) = self.members.values().fold((0, 0), |(h, u), m| {
            let (held, untaught) = m.scorer.held_windows();
            (h + held, u + untaught)
        });
        info!(partitions = self.members.len(), held, untaught, shed = self.shed, "stage 1 flushed");
        Ok(())
    }
}
