//! Both stages of docs/two-stages.md in one process: one [`FeatureEngine`]
//! per source partition (stage 1, each holding that partition's terminals)
//! and one [`WindowMerger`] (stage 2), wired as the partials topic will wire
//! them. Each closed window's partials and cohort lessons go through their
//! wire form (postcard) to the merger, and every engine takes the states
//! the merger learnt of the cohorts, also through their wire form, before
//! it closes its next window. What the tests and
//! `termwatch bench` hold the split path to: the rows of one engine holding
//! every terminal, and its cost against that engine.

use arrow::record_batch::RecordBatch;

use crate::engine::{FeatureConfig, FeatureEngine, WindowRows};
use crate::partial::{CohortStates, MergedWindow, WindowMerger, WindowPartials};
use crate::wire::{self, PartialsRecord, WireError};

/// What stage 1 and stage 2 closed in one step.
#[derive(Debug, Default)]
pub struct StageRows {
    /// Each engine's closed windows (its terminal rows), by engine index.
    pub terminal: Vec<(usize, WindowRows)>,
    /// Windows the merger closed: every site's and region's row.
    pub merged: Vec<MergedWindow>,
}

/// What went over the wire from stage 1 to stage 2, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounts {
    /// (window, source) partials published.
    pub partials: u64,
    /// Their encoded size, bytes.
    pub bytes: u64,
    /// Site partials in them, and the bytes of the site partials alone
    /// (each site's name and partial; a window's list of them has a length
    /// prefix of a byte or two).
    pub site_partials: u64,
    pub site_bytes: u64,
    /// Merged windows' cohort states sent back to every engine, as the
    /// lessons topic carries them (encoded once, decoded by each engine),
    /// and their encoded size, bytes.
    pub lessons: u64,
    pub lessons_bytes: u64,
}

/// N stage-1 engines sharing their cohorts through one merging stage.
#[derive(Debug)]
pub struct LocalStages {
    sources: Vec<Box<str>>,
    engines: Vec<FeatureEngine>,
    merger: WindowMerger,
    finished: Vec<bool>,
    /// The most windows an engine holds open waiting for lessons: past it,
    /// its oldest due window closes on its own lessons (a silent source
    /// must not stop every engine, nor let their windows grow).
    max_open_windows: usize,
    wire: WireCounts,
}

/// A window's partials as stage 2 reads them from the topic: the record
/// [`wire::encode`] makes of them, read back by [`wire::decode`].
fn through_the_wire(partials: WindowPartials, wire: &mut WireCounts) -> Result<WindowPartials, StageError> {
    // Counted, not encoded twice: the sites go out within the record.
    let sites = if partials.sites.is_empty() {
        None
    } else {
        let size = postcard::serialize_with_flavor(&partials.sites, postcard::ser_flavors::Size::default())
            .map_err(|e| StageError::Wire(e.to_string()))?;
        Some((partials.sites.len(), size))
    };
    let bytes = wire::encode(&PartialsRecord::Window(partials)).map_err(|e| StageError::Wire(e.to_string()))?;
    wire.partials += 1;
    wire.bytes += bytes.len() as u64;
    if let Some((n, site_bytes)) = sites {
        wire.site_partials += n as u64;
        wire.site_bytes += site_bytes as u64;
    }
    match wire::decode::<PartialsRecord>(&bytes).map_err(|e| StageError::Wire(e.to_string()))? {
        PartialsRecord::Window(w) => Ok(w),
        other => Err(StageError::Wire(format!("a window's partials read back as {other:?}"))),
    }
}

impl LocalStages {
    /// One engine per source (a partition of the telemetry topic), each with
    /// `config`; the merger's allowed lateness and bound as
    /// [`WindowMerger::new`] takes them, the bound also that of the windows
    /// each engine holds open.
    pub fn new(
        config: &FeatureConfig,
        sources: &[&str],
        allowed_lateness_ms: i64,
        max_open_windows: usize,
    ) -> LocalStages {
        let engines = sources
            .iter()
            .map(|_| {
                let mut e = FeatureEngine::new(config.clone());
                e.emit_partials(true);
                e.share_cohorts(true);
                e
            })
            .collect();
        LocalStages {
            sources: sources.iter().map(|s| Box::from(*s)).collect(),
            engines,
            merger: WindowMerger::new(sources, allowed_lateness_ms, max_open_windows).teaching(config),
            finished: vec![false; sources.len()],
            max_open_windows: max_open_windows.max(1),
            wire: WireCounts::default(),
        }
    }

    pub fn engine(&self, source: usize) -> Option<&FeatureEngine> {
        self.engines.get(source)
    }

    pub fn merger(&self) -> &WindowMerger {
        &self.merger
    }

    pub fn wire(&self) -> WireCounts {
        self.wire
    }

    /// Feeds a batch of source `source`'s reports to its engine and lets
    /// both stages close what they can. A source out of range is an error
    /// of the caller's wiring, not of the data: nothing is read.
    pub fn process(&mut self, source: usize, batch: &RecordBatch) -> Result<StageRows, StageError> {
        let name = self.sources.get(source).ok_or(StageError::NoSuchSource(source))?.clone();
        let mut out = StageRows::default();
        self.finished[source] = false;
        let rows = self.engines[source].process_sourced(batch, &[(&*name, batch.num_rows())]);
        self.publish(source, rows, &mut out)?;
        self.settle(&mut out)?;
        // Lessons that have not come back by the bound will not come soon.
        let mut alone = false;
        for source in 0..self.engines.len() {
            let engine = &mut self.engines[source];
            let mut rows = Vec::new();
            while engine.open_windows() > self.max_open_windows {
                let Some(end) = engine.oldest_open_window_end() else { break };
                let closed = engine.close_alone(end);
                if closed.is_empty() {
                    // Not due yet: windows within the lateness.
                    break;
                }
                rows.extend(closed);
            }
            alone |= !rows.is_empty();
            self.publish(source, rows, &mut out)?;
        }
        if alone {
            self.settle(&mut out)?;
        }
        Ok(out)
    }

    /// Every source has ended (a history read to its end): closes every
    /// window of both stages.
    pub fn finish(&mut self) -> Result<StageRows, StageError> {
        let mut out = StageRows::default();
        for source in 0..self.engines.len() {
            self.finished[source] = true;
            let rows = self.engines[source].finish();
            self.publish(source, rows, &mut out)?;
        }
        self.settle(&mut out)?;
        Ok(out)
    }

    /// Which source is furthest behind in event time (the one to read next,
    /// as consumers of partitions with similar traffic keep level), among
    /// those `pending` says still have reports.
    pub fn furthest_behind(&self, mut pending: impl FnMut(usize) -> bool) -> Option<usize> {
        (0..self.engines.len())
            .filter(|&s| pending(s))
            .min_by_key(|&s| (self.engines[s].closed_through().unwrap_or(i64::MIN), s))
    }

    /// An engine's closed windows go to the merger, then its progress; an
    /// engine that has finished and closed everything ends its source.
    fn publish(&mut self, source: usize, rows: Vec<WindowRows>, out: &mut StageRows) -> Result<(), StageError> {
        let name = &*self.sources[source];
        for mut w in rows {
            let partials = WindowPartials {
                end_ms: w.end_ms,
                sites: std::mem::take(&mut w.site_partials),
                regions: std::mem::take(&mut w.region_partials),
                cohorts: std::mem::take(&mut w.cohort_lessons),
                release: std::mem::take(&mut w.release_partial),
            };
            let read = through_the_wire(partials, &mut self.wire)?;
            out.merged.extend(self.merger.offer(name, read));
            out.terminal.push((source, w));
        }
        let engine = &self.engines[source];
        if let Some(through) = engine.closed_through() {
            out.merged.extend(self.merger.progress(name, through));
        }
        if self.finished[source] && engine.open_windows() == 0 {
            out.merged.extend(self.merger.end_of_source(name));
        }
        Ok(())
    }

    /// Every engine learns what the merger has closed in this step, closes
    /// what that lets it and publishes it, until nothing moves: no lesson is
    /// kept between steps (an engine skips a window it has learnt).
    fn settle(&mut self, out: &mut StageRows) -> Result<(), StageError> {
        // How many of the step's merged windows each engine has been given.
        let mut learnt = vec![0; self.engines.len()];
        // Each merged window's cohort states as the lessons topic carries them.
        let mut sent: Vec<Vec<u8>> = Vec::new();
        loop {
            let Some(through) = self.merger.closed_through() else { return Ok(()) };
            let before = (out.merged.len(), through);
            for (source, given) in learnt.iter_mut().enumerate() {
                for m in &out.merged[sent.len()..] {
                    let bytes = wire::encode(&m.cohort_states).map_err(|e| StageError::Wire(e.to_string()))?;
                    self.wire.lessons += 1;
                    self.wire.lessons_bytes += bytes.len() as u64;
                    sent.push(bytes);
                }
                // Read again for each engine: the one before may have closed
                // windows past `through`, and what an engine is given it
                // is not given again.
                let through = self.merger.closed_through().unwrap_or(through);
                let read = out.merged[*given..]
                    .iter()
                    .zip(&sent[*given..])
                    .map(|(m, bytes)| {
                        let states = wire::decode::<CohortStates>(bytes)?;
                        states.check().map_err(WireError::Malformed)?;
                        Ok((m.end_ms, states))
                    })
                    .collect::<Result<Vec<_>, WireError>>()
                    .map_err(|e| StageError::Wire(e.to_string()))?;
                let rows = self.engines[source].learn_cohorts(through, read.iter().map(|(end, c)| (*end, c)));
                *given = out.merged.len();
                self.publish(source, rows, out)?;
            }
            let after = (out.merged.len(), self.merger.closed_through().unwrap_or(through));
            if after == before {
                return Ok(());
            }
        }
    }
}

/// A batch split by terminal as Kafka splits a topic keyed by `terminal_id`
/// (FNV-1a of the id, as the tests split it; which hash does not matter):
/// (partition, its rows), partitions without rows left out. What the
/// broker does for the stages; the benches split beforehand with it.
pub fn split_by_terminal(batch: &RecordBatch, partitions: u64) -> Result<Vec<(usize, RecordBatch)>, StageError> {
    use arrow::array::{AsArray, BooleanArray};
    use arrow::datatypes::Int32Type;
    let partitions = partitions.max(1);
    let ids = batch
        .column_by_name(termwatch_telemetry::batch::col::TERMINAL_ID)
        .and_then(|c| c.as_dictionary_opt::<Int32Type>())
        .ok_or_else(|| StageError::Split("the batch has no dictionary terminal_id column".into()))?;
    let names = ids
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| StageError::Split("terminal_id values are not strings".into()))?;
    let of_key: Vec<u64> =
        names.iter().map(|n| crate::fnv1a(crate::FNV_OFFSET, n.unwrap_or("").as_bytes()) % partitions).collect();
    let row_partition: Vec<u64> =
        ids.keys().iter().map(|k| k.and_then(|k| of_key.get(k as usize).copied()).unwrap_or(0)).collect();
    let mut out = Vec::new();
    for p in 0..partitions {
        let mask: BooleanArray = row_partition.iter().map(|&q| Some(q == p)).collect();
        let part = arrow::compute::filter_record_batch(batch, &mask).map_err(|e| StageError::Split(e.to_string()))?;
        if part.num_rows() > 0 {
            out.push((p as usize, part));
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("no source {0}: the stages were built with fewer")]
    NoSuchSource(usize),
    #[error("a window's partials did not survive their wire form: {0}")]
    Wire(String),
    #[error("cannot split the batch by terminal: {0}")]
    Split(String),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Schema;

    use super::*;

    #[test]
    fn a_source_out_of_range_is_an_error_and_nothing_is_read() {
        let mut stages = LocalStages::new(&FeatureConfig::default(), &["telemetry-0", "telemetry-1"], 0, 4);
        let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
        assert!(matches!(stages.process(2, &empty), Err(StageError::NoSuchSource(2))));
        let out = stages.finish().expect("nothing to close");
        assert!(out.terminal.is_empty() && out.merged.is_empty());
        assert_eq!(stages.wire(), WireCounts::default());
    }
}
