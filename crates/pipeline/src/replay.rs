//! Replaying history files through the pipeline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::PipelineError;
use crate::pipeline::{Pipeline, Stats};
use crate::source::NdjsonFile;

/// What a replay did, also when it stopped early.
#[derive(Debug)]
pub struct ReplayReport {
    pub stats: Stats,
    /// Whitespace-only lines: not records, so neither accepted nor rejected.
    pub blank_lines: u64,
    /// Bytes of (decompressed) input read.
    pub input_bytes: u64,
    pub elapsed: Duration,
    /// Why the replay stopped before the end of its inputs, if it did. What
    /// was read before the failure has still reached the sinks where the
    /// sinks allowed it.
    pub error: Option<PipelineError>,
}

/// How many lines to read between checks of the batch age: reading the clock
/// per line would cost more than the check is worth on a fast file.
const AGE_CHECK_EVERY: u64 = 1024;

/// Streams every input, in order, through `pipeline`, then flushes it.
pub fn replay(inputs: &[PathBuf], mut pipeline: Pipeline) -> ReplayReport {
    let started = Instant::now();
    let mut blank_lines = 0;
    let mut input_bytes = 0;
    let mut error = None;
    'inputs: for path in inputs {
        let mut source = match NdjsonFile::open(path) {
            Ok(s) => s,
            Err(e) => {
                error = Some(e.into());
                break;
            }
        };
        let mut n = 0u64;
        loop {
            let line = match source.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.into());
                    input_bytes += source.bytes_read();
                    break 'inputs;
                }
            };
            n += 1;
            if line.is_blank() {
                blank_lines += 1;
                continue;
            }
            if let Err(e) = pipeline.push(line.bytes, line.position) {
                error = Some(e);
                input_bytes += source.bytes_read();
                break 'inputs;
            }
            if n.is_multiple_of(AGE_CHECK_EVERY)
                && let Err(e) = pipeline.poll_age(Instant::now())
            {
                error = Some(e);
                input_bytes += source.bytes_read();
                break 'inputs;
            }
        }
        input_bytes += source.bytes_read();
    }
    // Flush what was read even after an input failed: it was valid, and the
    // operator fixes the broken file and replays only that one. Only a
    // history read to its end closes its last windows.
    if error.is_none()
        && let Err(e) = pipeline.end_of_input()
    {
        error = Some(e);
    }
    let stats = pipeline.stats().clone();
    let (stats, flush_error) = match pipeline.finish() {
        Ok(stats) => (stats, None),
        Err(e) => (stats, Some(e)),
    };
    ReplayReport { stats, blank_lines, input_bytes, elapsed: started.elapsed(), error: error.or(flush_error) }
}
