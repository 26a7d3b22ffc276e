//! Stage 2 as a service loop (docs/two-stages.md): reads the partials
//! topic in its consumer group, merges and scores each window once every
//! source has passed it ([`RegionalStage`]), hands each closed window's
//! lessons back on the lessons topic, and snapshots before it commits.
//! The owner writes the alert events out and decides when to checkpoint.
//!
//! At least once: lessons are delivered before [`MergingStage::step`]
//! returns, and offsets are committed only by [`MergingStage::checkpoint`],
//! after a snapshot that covers them. A successor restored from that
//! snapshot reads on from the commit: it closes again the windows closed
//! after it, raises their events again, and publishes their lessons again
//! (an engine learns a window once).
//!
//! Members of the group beyond the first stand by. Whenever the partials
//! partition is assigned to a member, it takes the latest snapshot (on a
//! volume the members share) before it merges the next record, and reads
//! on from the commit: a standby that takes over goes on from where the
//! member before it last checkpointed, never from the state it started
//! with. Only the member holding the partition, with a merger taken since
//! its assignment, writes the snapshot.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use termwatch_features::partial::WindowMerger;
use termwatch_features::wire::Lessons;
use termwatch_models::artifact::ModelSet;
use termwatch_pipeline::KafkaConfig;
use termwatch_telemetry::alerts::AlertEvent;

use crate::regional::RegionalStage;
use crate::stage_topics::{PartialsReader, StagePublisher, Unreadable};

/// Where stage 2 reads and writes, and how it merges.
#[derive(Debug, Clone)]
pub struct MergingConfig {
    pub partials_topic: String,
    pub lessons_topic: String,
    /// Stage 2's consumer group: one member reads, the others stand by.
    pub group: String,
    /// The telemetry topic's partitions, as sources (`telemetry-3`).
    pub sources: Vec<String>,
    /// How long after the newest source passes a window it closes without
    /// the sources still missing (counted).
    pub allowed_lateness_ms: i64,
    /// Open windows at most; the oldest closes first, counted.
    pub max_open_windows: usize,
    /// The snapshot file, if the stage keeps one.
    pub state: Option<PathBuf>,
    /// How long a read or a delivery may take before it is an error.
    pub timeout: Duration,
    /// Keep the scores for `/metrics` ([`MergingStage::take_scores`]).
    pub keep_scores: bool,
}

/// The sources stage 1 publishes as: every partition of the telemetry
/// `topics`, named `topic-partition`. A topic the brokers do not know
/// (or know without partitions) is an error that names it: stage 2 would
/// otherwise wait for sources that never come, or close every window
/// without some.
pub fn telemetry_sources(kafka: &KafkaConfig, topics: &[String], timeout: Duration) -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = kafka
        .consumer_config()
        .set("statistics.interval.ms", "0")
        .create()
        .with_context(|| format!("metadata client for {}", kafka.brokers))?;
    let mut sources = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("telemetry topic {topic}: metadata from {}", kafka.brokers))?;
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            anyhow::bail!(
                "telemetry topic {topic} has no partitions on {}: stage 2 merges its partitions' partials",
                kafka.brokers
            );
        }
        sources.extend((0..partitions).map(|p| format!("{topic}-{p}")));
    }
    Ok(sources)
}

/// How a [`MergingStage`] started: from its snapshot (with the position it
/// covers), cold, or cold because its snapshot was refused (why).
#[derive(Debug)]
pub enum Started {
    Restored(String),
    Cold,
    Refused(String),
}

/// What one [`MergingStage::step`] did.
#[derive(Debug, Default)]
pub struct Stepped {
    pub events: Vec<AlertEvent>,
    /// The ends of the windows it closed, oldest first.
    pub closed: Vec<i64>,
    /// Lessons records it published (one a window closed, or one to say
    /// how far it has closed when none did).
    pub taught: u64,
    pub unreadable: Vec<Unreadable>,
    /// Records read, those it could not read included.
    pub records: usize,
    /// The consumer error that ended the read, if one did: what was read
    /// before it is scored above, and the next step reads on.
    pub error: Option<rdkafka::error::KafkaError>,
    /// The partials partition was assigned to this member anew, and the
    /// stage took the latest snapshot's state (or started cold: which).
    pub reloaded: Option<Started>,
}

/// Stage 2: the partials reader, the regional stage and the lessons
/// publisher, in the order the protocol needs.
pub struct MergingStage {
    reader: PartialsReader,
    stage: RegionalStage,
    lessons: StagePublisher,
    /// Where the merger had closed through when lessons last went out.
    taught_through: Option<i64>,
    config: MergingConfig,
    models: ModelSet,
    position: String,
}

/// The stage and merger of `config`'s snapshot when there is a usable one,
/// new ones otherwise, and which it was.
fn load(config: &MergingConfig, models: &ModelSet) -> anyhow::Result<(RegionalStage, WindowMerger, Started)> {
    let sources: Vec<&str> = config.sources.iter().map(String::as_str).collect();
    let mut stage = RegionalStage::new(models.clone()).context("regional stage")?.keep_scores(config.keep_scores);
    let (merger, started) = match config.state.as_deref().filter(|p| p.exists()) {
        None => (None, Started::Cold),
        Some(path) => match stage.restore_snapshot(path, &sources) {
            Ok((merger, position)) => (Some(merger), Started::Restored(position)),
            Err(e) => (None, Started::Refused(e.to_string())),
        },
    };
    let merger = merger
        .unwrap_or_else(|| WindowMerger::new(&sources, config.allowed_lateness_ms, config.max_open_windows))
        .teaching(&models.features);
    Ok((stage, merger, started))
}

impl MergingStage {
    /// Joins the group, from the snapshot when there is a usable one. A
    /// snapshot of another model or other sources, or a damaged one, is
    /// refused (said in [`Started::Refused`]) and the stage starts cold;
    /// what the topic still holds after the group's commit is read again.
    pub fn start(
        kafka: &KafkaConfig,
        config: &MergingConfig,
        models: ModelSet,
    ) -> anyhow::Result<(MergingStage, Started)> {
        let (stage, merger, started) = load(config, &models)?;
        let taught_through = merger.closed_through();
        let reader = PartialsReader::new(kafka, &config.partials_topic, &config.group, merger, config.timeout)?;
        let lessons = StagePublisher::new(kafka, &config.lessons_topic)?;
        let position = format!("group {} on {}", config.group, config.partials_topic);
        let me = MergingStage { reader, stage, lessons, taught_through, config: config.clone(), models, position };
        Ok((me, started))
    }

    /// Reads what has arrived (waiting up to `max_wait` for the first
    /// record, up to `max_records`), scores the windows that closes, and
    /// publishes their lessons, delivered before it returns.
    pub fn step(&mut self, max_records: usize, max_wait: Duration) -> anyhow::Result<Stepped> {
        let polled = self.reader.poll(max_records, max_wait);
        let closed = polled.merged.iter().map(|w| w.end_ms).collect();
        let (events, windows) = self.stage.score(polled.merged);
        let through = self.reader.merger().closed_through();
        let mut taught = 0;
        if let Some(through_ms) = through.filter(|_| through != self.taught_through) {
            // A record a window: a window's lessons grow with the fleet,
            // and a backlog closes many windows in one step.
            if windows.is_empty() {
                self.lessons.publish_lessons(&Lessons { through_ms, windows: Vec::new() })?;
                taught = 1;
            }
            let mut windows = windows.into_iter().peekable();
            while let Some(w) = windows.next() {
                let through_ms = if windows.peek().is_some() { w.end_ms } else { through_ms };
                self.lessons.publish_lessons(&Lessons { through_ms, windows: vec![w] })?;
                taught += 1;
            }
            self.lessons.flush(self.config.timeout)?;
            self.taught_through = through;
        }
        // What was read before the assignment was read under the one
        // before: merged and taught above. The rest from the commit, on the
        // latest snapshot's state.
        let reloaded = if polled.reassigned { Some(self.reload()?) } else { None };
        Ok(Stepped {
            events,
            closed,
            taught,
            unreadable: polled.unreadable,
            records: polled.records,
            error: polled.error,
            reloaded,
        })
    }

    /// The partition was assigned anew: the state of the latest snapshot
    /// (another member's, on a shared volume, or this one's), and the
    /// topic from the group's commit, which that snapshot covers.
    fn reload(&mut self) -> anyhow::Result<Started> {
        let (stage, merger, started) = load(&self.config, &self.models)?;
        self.stage = stage;
        self.taught_through = merger.closed_through();
        self.reader.reload(merger, self.config.timeout).context("partials topic: reading on from the commit")?;
        Ok(started)
    }

    /// Writes the snapshot, then commits what it covers: the bytes written
    /// (None without a snapshot file, when nothing is committed either: a
    /// commit without a snapshot would lose the merger's open windows; and
    /// None, nothing written, while this member does not hold the partials
    /// partition with a merger taken since its assignment).
    pub fn checkpoint(&mut self) -> anyhow::Result<Option<u64>> {
        let Some(path) = &self.config.state else { return Ok(None) };
        if !self.reader.current() {
            // A standby, or a member given the partition that has not yet
            // taken the latest snapshot: its state must not overwrite it.
            return Ok(None);
        }
        let bytes = self.stage.save_snapshot(self.reader.merger(), path, &self.position)?;
        self.reader.commit().context("partials topic: commit")?;
        Ok(Some(bytes))
    }

    /// At the end of a history: the last window's terminal scores, which
    /// no later window takes out, go into the fleet calibration.
    /// Returns the windows whose scores those were.
    pub fn end_of_history(&mut self) -> usize {
        let last = self.reader.take_scores();
        self.stage.observe_scores(&last);
        last.len()
    }

    pub fn regional(&self) -> &RegionalStage {
        &self.stage
    }

    /// The site and region scores since the last call, when kept.
    pub fn take_scores(&mut self) -> crate::regional::Kept {
        self.stage.take_scores()
    }

    pub fn reader(&self) -> &PartialsReader {
        &self.reader
    }

    /// Lessons records and bytes published since it started.
    pub fn lessons_published(&self) -> (u64, u64) {
        self.lessons.published()
    }
}
