//! The path from raw records to sinks: decode and validate, micro-batch into
//! Arrow, hand each batch to every sink, and send rejections to the
//! dead-letter output. Sources (file now, Kafka later) push raw bytes in and
//! decide when to acknowledge: everything pushed before a successful
//! [`Pipeline::flush`] has reached every sink.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use arrow::array::BooleanArray;
use arrow::record_batch::RecordBatch;
use termwatch_telemetry::batch::col;
use termwatch_telemetry::{BatchBuilder, Field, Problem, decode_limited, time};

use crate::dead_letter::{DeadLetter, DeadLetterSink, Position};
use crate::dedup::{Dedup, Seen};
use crate::error::{PipelineError, SinkError};
use crate::metrics::PipelineMetrics;
use crate::partitions::{Checkpoint, Owners, PartitionKey};

/// When a batch closes: at `max_rows` rows or `max_age` after its first
/// record, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_rows: usize,
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_rows: 8192, max_age: Duration::from_millis(200) }
    }
}

/// Which input each row of a batch came from (a Kafka partition, named
/// `topic-partition`, or a file, named by its path), as runs of consecutive
/// rows in row order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    names: Vec<String>,
    /// (index in `names`, rows)
    runs: Vec<(usize, usize)>,
}

impl Sources {
    /// Every row from one input.
    pub fn single(name: &str, rows: usize) -> Sources {
        Sources { names: vec![name.to_string()], runs: vec![(0, rows)] }
    }

    /// The runs, `(input, rows)`, in row order.
    pub fn runs(&self) -> impl Iterator<Item = (&str, usize)> {
        self.runs.iter().map(|&(i, n)| (self.names.get(i).map_or("", String::as_str), n))
    }

    /// Whether a row of this input is in the batch.
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// One more row, from the input of the last run when `same` says so.
    fn push(&mut self, same: bool, name: impl FnOnce() -> String) {
        match self.runs.last_mut() {
            Some(last) if same => last.1 += 1,
            _ => {
                let name = name();
                let i = match self.names.iter().position(|n| *n == name) {
                    Some(i) => i,
                    None => {
                        self.names.push(name);
                        self.names.len() - 1
                    }
                };
                self.runs.push((i, 1));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// The input a record came from, as [`Sources`] names it.
pub fn source_name(position: &Position<'_>) -> String {
    match position {
        Position::Kafka { topic, partition, .. } => format!("{topic}-{partition}"),
        Position::File { path, .. } => (*path).to_string(),
    }
}

/// Receives every closed batch. An error stops the pipeline: the records of
/// that batch must not be acknowledged.
pub trait BatchSink: Send {
    /// Names the sink in errors and logs.
    fn name(&self) -> &str;
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError>;
    /// As [`BatchSink::process_batch`], knowing which input each row came
    /// from: what a sink that keeps event time per input needs.
    fn process_sourced(&mut self, batch: &RecordBatch, sources: &Sources) -> Result<(), SinkError> {
        let _ = sources;
        self.process_batch(batch)
    }
    /// An input has ended for now (a file read to its end, a Kafka partition
    /// caught up): every row it sent before has been processed.
    fn end_of_source(&mut self, source: &str) -> Result<(), SinkError> {
        let _ = source;
        Ok(())
    }
    /// Makes everything processed so far durable.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// The input has ended for good (the end of a history file, not a pause
    /// in a stream): close whatever waits for more data.
    fn end_of_input(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Kafka partitions were assigned: restore what the sink kept of them.
    /// `owners` learns which terminals were restored for which partition.
    /// Returns, per partition restored, the offset its state covers: the
    /// consumer resumes there rather than at the committed offset.
    fn assign(&mut self, partitions: &[PartitionKey], owners: &mut Owners) -> Vec<(PartitionKey, i64)> {
        let _ = (partitions, owners);
        Vec::new()
    }
    /// Everything consumed so far has reached the sink: snapshot per
    /// partition if due (always when `checkpoint.force`). Returns whether it
    /// did: with [`BatchSink::keeps_state`], the positions are then committed.
    fn checkpoint(&mut self, checkpoint: &Checkpoint<'_>) -> Result<bool, SinkError> {
        let _ = checkpoint;
        Ok(false)
    }
    /// The sink keeps what it learned in snapshots per partition: a Kafka
    /// source then commits only what its last snapshot covers, so that a
    /// restarted member never starts past state it has lost.
    fn keeps_state(&self) -> bool {
        false
    }
    /// Partitions were revoked, after a forced checkpoint: forget their
    /// terminals (another replica owns them now).
    fn revoke(&mut self, partitions: &[PartitionKey], owners: &Owners) {
        let _ = (partitions, owners);
    }
}

/// A record's input, owned: the key of the open run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedSource {
    Partition(String, i32),
    File(String),
}

impl OwnedSource {
    fn of(position: &Position<'_>) -> OwnedSource {
        match position {
            Position::Kafka { topic, partition, .. } => OwnedSource::Partition((*topic).to_string(), *partition),
            Position::File { path, .. } => OwnedSource::File((*path).to_string()),
        }
    }

    fn is(&self, position: &Position<'_>) -> bool {
        match (self, position) {
            (OwnedSource::Partition(t, p), Position::Kafka { topic, partition, .. }) => p == partition && t == topic,
            (OwnedSource::File(f), Position::File { path, .. }) => f == path,
            _ => false,
        }
    }
}

/// Counts of what the pipeline saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub read: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<(Field, Problem), u64>,
    pub batches: u64,
    /// Valid reports seen before (same terminal and `ts`): dropped.
    pub duplicates: u64,
    /// Valid reports too far behind their terminal's latest to check for
    /// duplicates: dropped (see [`crate::dedup`]).
    pub too_old: u64,
    /// Terminals the duplicate check and the partition map forgot at their
    /// limit, longest silent first (see [`Pipeline::with_max_terminals`]).
    pub forgotten_terminals: u64,
}

impl Stats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl fmt::Display for Stats {
    /// `1000 read, 990 accepted, 10 rejected (ts:invalid 4, (record):malformed 6)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} read, {} accepted, {} rejected", self.read, self.accepted, self.rejected_total())?;
        if !self.rejected.is_empty() {
            f.write_str(" (")?;
            for (i, ((field, problem), n)) in self.rejected.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{field}:{problem} {n}")?;
            }
            f.write_str(")")?;
        }
        if self.duplicates > 0 {
            write!(f, ", {} duplicates dropped", self.duplicates)?;
        }
        if self.too_old > 0 {
            write!(f, ", {} too old to deduplicate dropped", self.too_old)?;
        }
        if self.forgotten_terminals > 0 {
            write!(f, ", {} terminals forgotten at the limit", self.forgotten_terminals)?;
        }
        Ok(())
    }
}

pub struct Pipeline {
    config: BatchConfig,
    builder: BatchBuilder,
    /// The input of each row in `builder`.
    sources: Sources,
    /// Where the last row in `builder` came from, as an owned key, to
    /// extend its run without naming the input again.
    last_source: Option<OwnedSource>,
    /// Inputs that ended while their rows were still in `builder`: told to
    /// the sinks right after those rows.
    ended: Vec<String>,
    dedup: Dedup,
    sinks: Vec<Box<dyn BatchSink>>,
    dead_letters: Box<dyn DeadLetterSink>,
    stats: Stats,
    /// When the open batch received its first record.
    opened: Option<Instant>,
    /// Ingestion time for the future-`ts` check, refreshed as each batch opens.
    ingest_ms: i64,
    clock: fn() -> i64,
    metrics: Option<PipelineMetrics>,
    /// What the metrics have been told so far, to report deltas per batch.
    reported: Stats,
    /// The partition of every terminal seen from Kafka.
    owners: Owners,
    /// Set by the first sink or dead-letter failure. From then on every call
    /// fails: the failed batch's rows are gone from the builder, so a later
    /// "successful" flush must never let a source acknowledge them.
    failed: Option<String>,
    max_record_bytes: usize,
    /// Most terminals the duplicate check and the partition map hold.
    max_terminals: usize,
}

/// Default of [`Pipeline::with_max_terminals`]: twice the feature engine's
/// default limit, so that the engine, which forgets its longest-silent
/// terminals first too, has always let a terminal go before this does.
pub const DEFAULT_MAX_TERMINALS: usize = 1_000_000;

impl Pipeline {
    pub fn new(config: BatchConfig, sinks: Vec<Box<dyn BatchSink>>, dead_letters: Box<dyn DeadLetterSink>) -> Self {
        Pipeline {
            builder: BatchBuilder::with_capacity(config.max_rows),
            sources: Sources::default(),
            last_source: None,
            ended: Vec::new(),
            dedup: Dedup::new(),
            config,
            sinks,
            dead_letters,
            stats: Stats::default(),
            opened: None,
            ingest_ms: 0,
            clock: time::now_ms,
            metrics: None,
            reported: Stats::default(),
            failed: None,
            owners: Owners::default(),
            max_record_bytes: termwatch_telemetry::MAX_RECORD_BYTES,
            max_terminals: DEFAULT_MAX_TERMINALS,
        }
    }

    /// Bounds the per-terminal maps of the duplicate check and of the
    /// partition each terminal arrives on: past `max` terminals, the
    /// longest-silent sixteenth is forgotten (counted in
    /// [`Stats::forgotten_terminals`]). Give it at least the feature
    /// engine's limit (twice is the default), so that a terminal the engine
    /// still holds keeps its partition.
    pub fn with_max_terminals(mut self, max: usize) -> Self {
        self.max_terminals = max.max(16);
        self
    }

    /// Terminals the duplicate check holds, and those whose partition is known.
    pub fn tracked_terminals(&self) -> (usize, usize) {
        (self.dedup.len(), self.owners.len())
    }

    /// Keeps the per-terminal maps within their limit; called after a new
    /// terminal may have joined. Sweeps a sixteenth at a time, so the cost
    /// is a constant per new terminal, not a scan per report.
    fn bound_terminals(&mut self) {
        if self.dedup.len() <= self.max_terminals {
            return;
        }
        let gone = self.dedup.forget_longest_silent(self.max_terminals / 16 + 1);
        self.stats.forgotten_terminals += gone.len() as u64;
        for t in &gone {
            self.owners.forget(t);
        }
    }

    /// Reports counts and batch latency to Prometheus, once per batch.
    pub fn with_metrics(mut self, metrics: PipelineMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Refuses records longer than this as `(record):too_large` (default
    /// `termwatch_telemetry::MAX_RECORD_BYTES`, 1 MiB).
    pub fn with_max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Replaces the wall clock used as ingestion time (tests).
    pub fn with_ingest_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Decodes one raw record. A valid one joins the open batch, which is
    /// flushed when full; a rejected one goes to the dead-letter output.
    /// Returns `true` when the push closed a batch: everything pushed so far,
    /// this record included, has then reached every sink. An error means a
    /// sink or the dead-letter output failed: stop, and do not acknowledge
    /// this record.
    pub fn push(&mut self, raw: &[u8], position: Position<'_>) -> Result<bool, PipelineError> {
        self.check_failed()?;
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
            self.ingest_ms = (self.clock)();
        }
        self.stats.read += 1;
        match decode_limited(raw, self.ingest_ms, self.max_record_bytes) {
            Ok(record) => {
                self.stats.accepted += 1;
                match self.dedup.check(&record.terminal_id, record.ts_ms, record.interval_s) {
                    Seen::New => {}
                    Seen::Duplicate => {
                        self.stats.duplicates += 1;
                        return Ok(false);
                    }
                    Seen::TooOld => {
                        self.stats.too_old += 1;
                        return Ok(false);
                    }
                }
                if let Position::Kafka { topic, partition, .. } = position {
                    self.owners.claim(&record.terminal_id, topic, partition);
                }
                self.bound_terminals();
                self.builder.append(&record)?;
                let same = self.last_source.as_ref().is_some_and(|l| l.is(&position));
                self.sources.push(same, || source_name(&position));
                if !same {
                    self.last_source = Some(OwnedSource::of(&position));
                }
                if !self.ended.is_empty() {
                    // It sends again: it has not ended after all.
                    let name = source_name(&position);
                    self.ended.retain(|e| *e != name);
                }
                if self.builder.len() >= self.config.max_rows {
                    self.flush()?;
                    return Ok(true);
                }
            }
            Err(rejection) => {
                let sent = self.dead_letters.send(&DeadLetter::new(raw, position, &rejection));
                self.fail_on(sent.map_err(PipelineError::DeadLetter))?;
                *self.stats.rejected.entry(rejection.reason()).or_default() += 1;
            }
        }
        Ok(false)
    }

    /// The clock that gives ingestion time (for the future-`ts` check), for
    /// records decoded off this thread.
    pub(crate) fn ingest_clock(&self) -> fn() -> i64 {
        self.clock
    }

    /// The rows per batch this pipeline was configured with.
    pub(crate) fn max_rows(&self) -> usize {
        self.config.max_rows
    }

    /// Counts `n` records read whose outcome comes separately (decoded off
    /// this thread): see [`Self::reject`] and [`Self::push_batch`].
    pub(crate) fn count_read(&mut self, n: u64) {
        self.stats.read += n;
    }

    /// A record rejected by a decoder off this thread: to the dead-letter
    /// output, counted by reason.
    pub(crate) fn reject(&mut self, dead: &DeadLetter<'_>) -> Result<(), PipelineError> {
        self.check_failed()?;
        let sent = self.dead_letters.send(dead);
        self.fail_on(sent.map_err(PipelineError::DeadLetter))?;
        *self.stats.rejected.entry(dead.rejection.reason()).or_default() += 1;
        Ok(())
    }

    /// A batch of valid records decoded off this thread, in input order:
    /// duplicates are dropped exactly as [`Self::push`] would (the same
    /// per-terminal state, row by row), then the batch goes to every sink.
    /// Anything pushed record by record before is flushed first, so order
    /// is kept.
    pub(crate) fn push_batch(&mut self, batch: RecordBatch, source: &str) -> Result<(), PipelineError> {
        if !self.builder.is_empty() {
            self.flush()?;
        }
        self.check_failed()?;
        let rows = batch.num_rows();
        self.stats.accepted += rows as u64;
        let keep = self.dedup_batch(&batch)?;
        let batch = match keep {
            None => batch,
            Some(keep) => arrow::compute::filter_record_batch(&batch, &keep)?,
        };
        let result = self.send_batch(&batch, &Sources::single(source, batch.num_rows()));
        self.fail_on(result)
    }

    /// Runs every row through the duplicate check; `None` when all are new.
    fn dedup_batch(&mut self, batch: &RecordBatch) -> Result<Option<BooleanArray>, PipelineError> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int32Type, TimestampMillisecondType, UInt32Type};
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("a telemetry batch without its {name} column"))
            })
        };
        let ids = column(col::TERMINAL_ID)?.as_dictionary::<Int32Type>();
        let names = ids.values().as_string::<i32>();
        let ts = column(col::TS)?.as_primitive::<TimestampMillisecondType>();
        let interval = column(col::INTERVAL_S)?.as_primitive::<UInt32Type>();
        let mut keep: Option<Vec<bool>> = None;
        for (row, key) in ids.keys().values().iter().enumerate() {
            let seen = self.dedup.check(names.value(*key as usize), ts.value(row), interval.value(row));
            let dropped = match seen {
                Seen::New => false,
                Seen::Duplicate => {
                    self.stats.duplicates += 1;
                    true
                }
                Seen::TooOld => {
                    self.stats.too_old += 1;
                    true
                }
            };
            if dropped {
                keep.get_or_insert_with(|| vec![true; batch.num_rows()])[row] = false;
            }
            self.bound_terminals();
        }
        Ok(keep.map(BooleanArray::from))
    }

    /// Closes the open batch if it is older than `max_age`. Call it from a
    /// ticker (or every few records of a fast source). Returns whether a
    /// batch was flushed.
    pub fn poll_age(&mut self, now: Instant) -> Result<bool, PipelineError> {
        match self.opened {
            Some(t) if now.duration_since(t) >= self.config.max_age => {
                self.flush()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Sends the open batch (if any rows) to every sink and makes the
    /// dead-letter output durable. When it returns `Ok`, everything pushed so
    /// far has reached every sink and may be acknowledged.
    pub fn flush(&mut self) -> Result<(), PipelineError> {
        self.check_failed()?;
        let result = self.flush_inner();
        self.fail_on(result)
    }

    fn check_failed(&self) -> Result<(), PipelineError> {
        match &self.failed {
            Some(first) => Err(PipelineError::Stopped(first.clone())),
            None => Ok(()),
        }
    }

    fn fail_on<T>(&mut self, result: Result<T, PipelineError>) -> Result<T, PipelineError> {
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn flush_inner(&mut self) -> Result<(), PipelineError> {
        let opened = self.opened.take();
        if self.builder.is_empty() {
            self.dead_letters.flush().map_err(PipelineError::DeadLetter)?;
            self.report_counts();
            return self.tell_ended();
        }
        let batch = self.builder.finish()?;
        let sources = std::mem::take(&mut self.sources);
        self.last_source = None;
        self.send_batch(&batch, &sources)?;
        if let (Some(m), Some(opened)) = (&self.metrics, opened) {
            m.batch_latency.observe(opened.elapsed().as_secs_f64());
        }
        self.tell_ended()
    }

    /// Tells the sinks which inputs ended, now that their rows are through.
    fn tell_ended(&mut self) -> Result<(), PipelineError> {
        for name in std::mem::take(&mut self.ended) {
            for sink in &mut self.sinks {
                sink.end_of_source(&name)
                    .map_err(|cause| PipelineError::Sink { sink: sink.name().to_string(), cause })?;
            }
        }
        Ok(())
    }

    /// An input has ended for now (a file read to its end, a partition caught
    /// up). The sinks hear it right after the rows it sent, which may still
    /// wait in the open batch: with the next flush, or now if there are none.
    /// A row of the input pushed meanwhile cancels it.
    pub fn end_of_source(&mut self, name: &str) -> Result<(), PipelineError> {
        self.check_failed()?;
        if !self.ended.iter().any(|e| e == name) {
            self.ended.push(name.to_string());
        }
        if self.sources.is_empty() {
            let result = self.tell_ended();
            return self.fail_on(result);
        }
        Ok(())
    }

    /// Makes the dead letters durable, then hands a closed batch to every sink.
    fn send_batch(&mut self, batch: &RecordBatch, sources: &Sources) -> Result<(), PipelineError> {
        self.dead_letters.flush().map_err(PipelineError::DeadLetter)?;
        if batch.num_rows() > 0 {
            for sink in &mut self.sinks {
                sink.process_sourced(batch, sources)
                    .map_err(|cause| PipelineError::Sink { sink: sink.name().to_string(), cause })?;
            }
            self.stats.batches += 1;
            if let Some(m) = &self.metrics {
                m.batch_rows.observe(batch.num_rows() as f64);
            }
        }
        self.report_counts();
        Ok(())
    }

    fn report_counts(&mut self) {
        let Some(m) = &self.metrics else { return };
        let (now, was) = (&self.stats, &mut self.reported);
        m.records_read.inc_by(now.read - was.read);
        m.records_accepted.inc_by(now.accepted - was.accepted);
        m.batches.inc_by(now.batches - was.batches);
        m.records_dropped.with_label_values(&["duplicate"]).inc_by(now.duplicates - was.duplicates);
        m.records_dropped.with_label_values(&["too_old"]).inc_by(now.too_old - was.too_old);
        m.terminals_forgotten.inc_by(now.forgotten_terminals - was.forgotten_terminals);
        for (&(field, problem), &n) in &now.rejected {
            let before = was.rejected.get(&(field, problem)).copied().unwrap_or(0);
            if n > before {
                m.records_rejected.with_label_values(&[field.name(), problem.as_str()]).inc_by(n - before);
            }
        }
        *was = now.clone();
    }

    /// Flushes the last batch and tells every sink the input has ended (a
    /// history replayed to its end; never called on a live stream).
    pub fn end_of_input(&mut self) -> Result<(), PipelineError> {
        self.flush()?;
        let mut ended = Ok(());
        for sink in &mut self.sinks {
            ended = sink.end_of_input().map_err(|cause| PipelineError::Sink { sink: sink.name().to_string(), cause });
            if ended.is_err() {
                break;
            }
        }
        self.fail_on(ended)
    }

    /// Tells every sink partitions were assigned; returns the offsets to
    /// resume them from (see [`BatchSink::assign`]).
    pub fn assign(&mut self, partitions: &[PartitionKey]) -> Vec<(PartitionKey, i64)> {
        let mut seeks = Vec::new();
        for sink in &mut self.sinks {
            seeks.extend(sink.assign(partitions, &mut self.owners));
        }
        seeks
    }

    /// Tells every sink how far each partition has been consumed. Call it
    /// only right after a successful flush: the positions must cover
    /// exactly what reached the sinks.
    /// Returns whether a sink snapshotted.
    pub fn checkpoint(&mut self, positions: &HashMap<PartitionKey, i64>, force: bool) -> Result<bool, PipelineError> {
        self.check_failed()?;
        let cp = Checkpoint { positions, owners: &self.owners, force };
        let mut result = Ok(false);
        for sink in &mut self.sinks {
            let taken =
                sink.checkpoint(&cp).map_err(|cause| PipelineError::Sink { sink: sink.name().to_string(), cause });
            result = result.and_then(|any| taken.map(|t| any || t));
            if result.is_err() {
                break;
            }
        }
        self.fail_on(result)
    }

    /// Whether a sink keeps per-partition state (see [`BatchSink::keeps_state`]).
    pub fn keeps_state(&self) -> bool {
        self.sinks.iter().any(|s| s.keeps_state())
    }

    /// Partitions were revoked (after a flush and a forced checkpoint):
    /// every sink, and the duplicate check, forget their terminals.
    pub fn revoke(&mut self, partitions: &[PartitionKey]) {
        for sink in &mut self.sinks {
            sink.revoke(partitions, &self.owners);
        }
        for key in partitions {
            for terminal in self.owners.release(key) {
                self.dedup.remove(&terminal);
            }
        }
    }

    /// Flushes the last batch and every sink, and returns the counts.
    pub fn finish(mut self) -> Result<Stats, PipelineError> {
        self.flush_sinks()?;
        Ok(self.stats)
    }

    /// Flushes the last batch, then asks every sink to make what it holds durable.
    pub fn flush_sinks(&mut self) -> Result<(), PipelineError> {
        self.flush()?;
        for sink in &mut self.sinks {
            sink.flush().map_err(|cause| PipelineError::Sink { sink: sink.name().to_string(), cause })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::dead_letter::MemoryDeadLetters;

    const NOW: i64 = 1_795_514_460_000; // 2026-11-24T10:01:00Z

    /// Records the row count of every batch it sees.
    #[derive(Clone, Default)]
    struct Rows(Arc<Mutex<Vec<usize>>>);

    impl BatchSink for Rows {
        fn name(&self) -> &str {
            "rows"
        }
        fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
            self.0.lock().map_err(|e| SinkError::Other(e.to_string()))?.push(batch.num_rows());
            Ok(())
        }
    }

    struct Failing;
    impl BatchSink for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        fn process_batch(&mut self, _: &RecordBatch) -> Result<(), SinkError> {
            Err(SinkError::Other("disk full".into()))
        }
    }

    fn pos(line: u64) -> Position<'static> {
        Position::File { path: "t", line, offset: 0 }
    }

    fn record(i: usize) -> String {
        format!(r#"{{"terminal_id":"T-{i}","ts":"2026-11-24T10:01:00Z","region":"r"}}"#)
    }

    #[test]
    fn closes_batches_at_max_rows() {
        let rows = Rows::default();
        let config = BatchConfig { max_rows: 3, max_age: Duration::from_secs(3600) };
        let mut p = Pipeline::new(config, vec![Box::new(rows.clone())], Box::new(MemoryDeadLetters::default()))
            .with_ingest_clock(|| NOW);
        for i in 0..7 {
            p.push(record(i).as_bytes(), pos(i as u64)).expect("push");
        }
        assert_eq!(*rows.0.lock().expect("lock"), vec![3, 3]);
        let stats = p.finish().expect("finish");
        assert_eq!(*rows.0.lock().expect("lock"), vec![3, 3, 1]);
        assert_eq!((stats.read, stats.accepted, stats.batches), (7, 7, 3));
    }

    #[test]
    fn a_flood_of_one_off_terminals_keeps_the_per_terminal_maps_bounded() {
        let rows = Rows::default();
        let metrics = crate::metrics::PipelineMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let mut p =
            Pipeline::new(BatchConfig::default(), vec![Box::new(rows.clone())], Box::new(MemoryDeadLetters::default()))
                .with_ingest_clock(|| NOW)
                .with_max_terminals(1000)
                .with_metrics(metrics.clone());
        // A minute apart, in the past: 20,000 terminals that report once,
        // and one that reports every 50 minutes throughout.
        let at = |i: i64| NOW - 15 * 86_400_000 + i * 60_000;
        let line = |t: &str, ts: i64| format!(r#"{{"terminal_id":"{t}","ts":{ts},"region":"r"}}"#);
        let kafka = |o: i64| Position::Kafka { topic: "telemetry", partition: (o % 6) as i32, offset: o };
        let mut regular = 0;
        for i in 0..20_000i64 {
            p.push(line(&format!("X-{i}"), at(i)).as_bytes(), kafka(i)).expect("push");
            if i % 50 == 0 {
                regular = at(i);
                p.push(line("REGULAR", regular).as_bytes(), kafka(i)).expect("push");
            }
            let (dedup, owners) = p.tracked_terminals();
            assert!(dedup <= 1000 && owners <= 1000, "{dedup} and {owners} terminals after {i}");
        }
        // The terminal that kept reporting was never forgotten: its last
        // report, sent again, is still caught as a duplicate.
        p.push(line("REGULAR", regular).as_bytes(), kafka(0)).expect("push");
        let stats = p.finish().expect("finish");
        assert_eq!(stats.duplicates, 1);
        assert!(stats.forgotten_terminals >= 19_000, "{stats}");
        assert!(stats.to_string().contains("terminals forgotten at the limit"), "{stats}");
        assert_eq!(metrics.terminals_forgotten.get(), stats.forgotten_terminals);
    }

    #[test]
    fn closes_batches_at_max_age() {
        let rows = Rows::default();
        let config = BatchConfig { max_rows: 1000, max_age: Duration::from_millis(50) };
        let mut p = Pipeline::new(config, vec![Box::new(rows.clone())], Box::new(MemoryDeadLetters::default()))
            .with_ingest_clock(|| NOW);
        p.push(record(0).as_bytes(), pos(1)).expect("push");
        assert!(!p.poll_age(Instant::now()).expect("poll"), "too young to close");
        assert!(p.poll_age(Instant::now() + Duration::from_millis(60)).expect("poll"));
        assert_eq!(*rows.0.lock().expect("lock"), vec![1]);
    }

    #[test]
    fn rejections_are_counted_by_reason_and_never_stop_the_run() {
        let rows = Rows::default();
        let mut p =
            Pipeline::new(BatchConfig::default(), vec![Box::new(rows.clone())], Box::new(MemoryDeadLetters::default()))
                .with_ingest_clock(|| NOW);
        p.push(b"garbage", pos(1)).expect("push");
        p.push(record(1).as_bytes(), pos(2)).expect("push");
        p.push(br#"{"terminal_id":"T","ts":"soon","region":"r"}"#, pos(3)).expect("push");
        p.push(b"garbage again", pos(4)).expect("push");
        let stats = p.finish().expect("finish");
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.rejected[&(Field::Record, Problem::Malformed)], 2);
        assert_eq!(stats.rejected[&(Field::Ts, Problem::Invalid)], 1);
        assert_eq!(stats.to_string(), "4 read, 1 accepted, 3 rejected ((record):malformed 2, ts:invalid 1)");
    }

    #[test]
    fn a_failing_sink_stops_the_pipeline_with_its_name() {
        let config = BatchConfig { max_rows: 1, max_age: Duration::from_secs(1) };
        let mut p = Pipeline::new(config, vec![Box::new(Failing)], Box::new(MemoryDeadLetters::default()))
            .with_ingest_clock(|| NOW);
        let err = p.push(record(0).as_bytes(), pos(1)).expect_err("sink fails");
        assert_eq!(err.to_string(), "sink failing: disk full");
        // The failed batch is gone from the builder: a later flush must not
        // report success, or a source would acknowledge the lost rows.
        let again = p.flush().expect_err("stays failed");
        assert!(again.to_string().contains("disk full"), "{again}");
        assert!(p.push(record(1).as_bytes(), pos(2)).is_err());
    }

    #[test]
    fn reports_counts_and_latency_to_prometheus_per_batch() {
        let registry = prometheus::Registry::new();
        let metrics = PipelineMetrics::register(&registry).expect("register");
        let config = BatchConfig { max_rows: 2, max_age: Duration::from_secs(60) };
        let mut p = Pipeline::new(config, vec![], Box::new(MemoryDeadLetters::default()))
            .with_ingest_clock(|| NOW)
            .with_metrics(metrics.clone());
        assert!(!p.push(record(0).as_bytes(), pos(1)).expect("push"));
        assert!(!p.push(b"{", pos(2)).expect("push"));
        assert_eq!(metrics.records_read.get(), 0, "nothing is reported before a batch closes");
        assert!(p.push(record(1).as_bytes(), pos(3)).expect("push"), "the second valid record closes the batch");
        assert_eq!((metrics.records_read.get(), metrics.records_accepted.get(), metrics.batches.get()), (3, 2, 1));
        assert_eq!(metrics.records_rejected.with_label_values(&["(record)", "malformed"]).get(), 1);
        assert_eq!(metrics.batch_latency.get_sample_count(), 1);
        p.push(b"{", pos(4)).expect("push");
        p.finish().expect("finish");
        assert_eq!(metrics.records_rejected.with_label_values(&["(record)", "malformed"]).get(), 2);
        assert_eq!(metrics.batches.get(), 1, "an empty flush is not a batch");
    }

    #[test]
    fn replayed_reports_reach_the_sinks_once() {
        let rows = Rows::default();
        let mut p =
            Pipeline::new(BatchConfig::default(), vec![Box::new(rows.clone())], Box::new(MemoryDeadLetters::default()))
                .with_ingest_clock(|| NOW);
        for _ in 0..3 {
            for i in 0..5 {
                p.push(record(i).as_bytes(), pos(i as u64)).expect("push");
            }
        }
        let stats = p.finish().expect("finish");
        assert_eq!(*rows.0.lock().expect("lock"), vec![5]);
        assert_eq!((stats.read, stats.accepted, stats.duplicates), (15, 15, 10));
        assert!(stats.to_string().ends_with(", 10 duplicates dropped"), "{stats}");
    }
}
