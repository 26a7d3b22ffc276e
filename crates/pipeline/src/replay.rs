//! Replaying history files through the pipeline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::dead_letter::{DeadLetter, Position};
use crate::error::PipelineError;
use crate::pipeline::{Pipeline, Stats};
use crate::source::{Block, NdjsonFile};

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
            Ok(s) => s.with_max_record_bytes(pipeline.max_record_bytes()),
            Err(e) => {
                error = Some(e.into());
                break;
            }
        };
        let mut n = 0u64;
        loop {
            let line = match source.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    // Read to its end: it holds no window open for the next input.
                    if let Err(e) = pipeline.end_of_source(source.path()) {
                        error = Some(e);
                        input_bytes += source.bytes_read();
                        break 'inputs;
                    }
                    break;
                }
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
    conclude(pipeline, error, blank_lines, input_bytes, started)
}

/// Ends a replay. What was read is flushed even after an input failed: it
/// was valid, and the operator fixes the broken file and replays only that
/// one. Only a history read to its end closes its last windows.
fn conclude(
    mut pipeline: Pipeline,
    mut error: Option<PipelineError>,
    blank_lines: u64,
    input_bytes: u64,
    started: Instant,
) -> ReplayReport {
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

/// Bytes of input per block handed to a decoding thread: large enough that
/// the hand-over costs nothing per record, small enough that a block of the
/// last input does not keep a core idle long.
const BLOCK_BYTES: usize = 4 << 20;

/// A block of whole lines on its way to a decoding thread.
struct RawBlock {
    input: usize,
    block: Block,
    data: Vec<u8>,
}

/// What a decoding thread made of a block.
struct Decoded {
    raw: RawBlock,
    /// Non-blank lines: records read.
    read: u64,
    blank: u64,
    /// Rejected records: their line's range in `raw.data`, its index in the
    /// block, and why.
    rejected: Vec<(std::ops::Range<usize>, u64, termwatch_telemetry::Rejection)>,
    /// Valid records, in input order, before duplicate detection.
    batches: Result<Vec<RecordBatch>, arrow::error::ArrowError>,
}

/// As [`replay`], with the same result (records, rejections, duplicates,
/// dead letters and what reaches the sinks, in the same order), using
/// `decoders` threads to decode and validate: one thread reads the inputs in
/// blocks of whole lines, `decoders` threads split, decode and batch them,
/// and the calling thread drops duplicates and runs the sinks, taking the
/// blocks back in input order. Batches close at the pipeline's `max_rows`
/// or at the end of a block, whichever comes first; `max_age` does not
/// apply (a history is replayed as fast as it can be read).
pub fn replay_parallel(inputs: &[PathBuf], pipeline: Pipeline, decoders: usize) -> ReplayReport {
    replay_blocks(inputs, pipeline, decoders, BLOCK_BYTES)
}

fn replay_blocks(inputs: &[PathBuf], mut pipeline: Pipeline, decoders: usize, block_bytes: usize) -> ReplayReport {
    let started = Instant::now();
    let decoders = decoders.max(1);
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let (max_rows, clock, max_record) = (pipeline.max_rows(), pipeline.ingest_clock(), pipeline.max_record_bytes());
    // Bounds the blocks in flight (queued, decoding, waiting to be taken
    // back in order): memory stays at a few blocks per thread.
    let in_flight = decoders * 3;
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(in_flight);
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, RawBlock)>(decoders);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Decoded)>(in_flight);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();

    let (read_result, sequenced) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_blocks(inputs, block_bytes, max_record, credit_tx, work_tx, recycle_rx));
        for _ in 0..decoders {
            let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
            scope.spawn(move || decode_blocks(&work_rx, &done_tx, max_rows, max_record, clock));
        }
        drop((work_rx, done_tx));
        let sequenced = sequence(&mut pipeline, &names, done_rx, credit_rx, recycle_tx);
        // The reader ends on its own once the sequencer has hung up.
        let read_result =
            reader.join().unwrap_or_else(|_| (0, Some(PipelineError::Stopped("the reader panicked".into()))));
        (read_result, sequenced)
    });
    let (input_bytes, read_error) = read_result;
    let (blank_lines, sequence_error) = sequenced;
    // An input failure is what stopped the run unless a sink failed first.
    conclude(pipeline, sequence_error.or(read_error), blank_lines, input_bytes, started)
}

/// The reading thread: every input in order, in blocks of whole lines.
/// Returns the bytes read and the input error that stopped it, if any.
fn read_blocks(
    inputs: &[PathBuf],
    block_bytes: usize,
    max_record_bytes: usize,
    credit: mpsc::SyncSender<()>,
    work: mpsc::SyncSender<(u64, RawBlock)>,
    recycle: mpsc::Receiver<Vec<u8>>,
) -> (u64, Option<PipelineError>) {
    let (mut bytes, mut seq) = (0u64, 0u64);
    for (input, path) in inputs.iter().enumerate() {
        let mut source = match NdjsonFile::open(path) {
            Ok(s) => s.with_max_record_bytes(max_record_bytes),
            Err(e) => return (bytes, Some(e.into())),
        };
        loop {
            let mut data = recycle.try_recv().unwrap_or_default();
            let block = match source.next_block(&mut data, block_bytes) {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return (bytes + source.bytes_read(), Some(e.into())),
            };
            // A send fails only when the other side has stopped: so do we.
            if credit.send(()).is_err() || work.send((seq, RawBlock { input, block, data })).is_err() {
                return (bytes + source.bytes_read(), None);
            }
            seq += 1;
        }
        bytes += source.bytes_read();
    }
    (bytes, None)
}

/// A decoding thread: splits blocks into lines, decodes and validates each,
/// and batches the valid ones.
fn decode_blocks(
    work: &Mutex<mpsc::Receiver<(u64, RawBlock)>>,
    done: &mpsc::SyncSender<(u64, Decoded)>,
    max_rows: usize,
    max_record_bytes: usize,
    clock: fn() -> i64,
) {
    let mut builder = termwatch_telemetry::BatchBuilder::with_capacity(max_rows);
    loop {
        // The lock is held only while waiting for the next block.
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, raw)) = next else { return };
        let decoded = decode_block(raw, &mut builder, max_rows, max_record_bytes, clock());
        if done.send((seq, decoded)).is_err() {
            return;
        }
    }
}

fn decode_block(
    raw: RawBlock,
    builder: &mut termwatch_telemetry::BatchBuilder,
    max_rows: usize,
    max_record_bytes: usize,
    ingest_ms: i64,
) -> Decoded {
    let (mut read, mut blank, mut rejected, mut batches) = (0, 0, Vec::new(), Ok(Vec::new()));
    let data = &raw.data[..];
    let mut start = 0;
    let mut index = 0u64;
    while start < data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
        let mut line = &data[start..end];
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            blank += 1;
        } else {
            read += 1;
            match termwatch_telemetry::decode_limited(line, ingest_ms, max_record_bytes) {
                Ok(record) => {
                    if let Ok(out) = &mut batches {
                        let appended = builder.append(&record).and_then(|()| {
                            if builder.len() >= max_rows { builder.finish().map(|b| out.push(b)) } else { Ok(()) }
                        });
                        if let Err(e) = appended {
                            batches = Err(e);
                        }
                    }
                }
                Err(rejection) => rejected.push((start..start + line.len(), index, rejection)),
            }
        }
        index += 1;
        start = end + 1;
    }
    if let Ok(out) = &mut batches
        && !builder.is_empty()
    {
        match builder.finish() {
            Ok(b) => out.push(b),
            Err(e) => batches = Err(e),
        }
    }
    Decoded { raw, read, blank, rejected, batches }
}

/// The calling thread: takes decoded blocks back in input order, sends
/// rejections to the dead-letter output and batches (duplicates dropped) to
/// the sinks. Returns the blank lines seen and the failure that stopped it.
fn sequence(
    pipeline: &mut Pipeline,
    names: &[String],
    done: mpsc::Receiver<(u64, Decoded)>,
    credit: mpsc::Receiver<()>,
    recycle: mpsc::Sender<Vec<u8>>,
) -> (u64, Option<PipelineError>) {
    let mut waiting = std::collections::BTreeMap::new();
    let (mut next, mut blank) = (0u64, 0u64);
    let mut input = None;
    for (seq, decoded) in done {
        waiting.insert(seq, decoded);
        while let Some(d) = waiting.remove(&next) {
            next += 1;
            blank += d.blank;
            // A block of the next input: the one before was read to its end.
            if let Some(ended) = input.filter(|i| *i != d.raw.input)
                && let Err(e) = pipeline.end_of_source(names.get(ended).map_or("", String::as_str))
            {
                return (blank, Some(e));
            }
            input = Some(d.raw.input);
            if let Err(e) = take_block(pipeline, names, d, &recycle) {
                return (blank, Some(e));
            }
            // A block fewer in flight: the reader may read another.
            let _ = credit.recv();
        }
    }
    (blank, None)
}

fn take_block(
    pipeline: &mut Pipeline,
    names: &[String],
    d: Decoded,
    recycle: &mpsc::Sender<Vec<u8>>,
) -> Result<(), PipelineError> {
    let Decoded { raw, read, rejected, batches, .. } = d;
    pipeline.count_read(read);
    let path = names.get(raw.input).map_or("", String::as_str);
    for (range, index, rejection) in &rejected {
        // The offset of a line is that of its first byte, as `NdjsonFile::next_line` gives it.
        let position =
            Position::File { path, line: raw.block.first_line + index, offset: raw.block.offset + range.start as u64 };
        let bytes = raw.data.get(range.clone()).unwrap_or_default();
        pipeline.reject(&DeadLetter::new(bytes, position, rejection))?;
    }
    for batch in batches? {
        pipeline.push_batch(batch, path)?;
    }
    // Only a memory saving: if the reader has gone, the buffer is freed.
    let _ = recycle.send(raw.data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, TimestampMillisecondType};

    use super::*;
    use crate::dead_letter::{DeadLetterSink, MemoryDeadLetters};
    use crate::error::SinkError;
    use crate::pipeline::{BatchConfig, BatchSink};

    type Row = (String, i64, Option<f64>);

    /// Every row that reaches the sink: terminal, ts and one measurement.
    #[derive(Clone, Default)]
    struct Rows(Arc<Mutex<Vec<Row>>>);

    impl BatchSink for Rows {
        fn name(&self) -> &str {
            "rows"
        }
        fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
            let ids = batch.column(0).as_dictionary::<Int32Type>();
            let names = ids.values().as_string::<i32>();
            let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
            let v = batch.column_by_name("supply_v_mean").expect("column").as_primitive::<Float64Type>();
            let mut rows = self.0.lock().expect("lock");
            for r in 0..batch.num_rows() {
                let id = names.value(ids.keys().value(r) as usize).to_string();
                rows.push((id, ts.value(r), v.is_valid(r).then(|| v.value(r))));
            }
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Dead(Arc<Mutex<MemoryDeadLetters>>);

    impl DeadLetterSink for Dead {
        fn send(&mut self, dead: &DeadLetter<'_>) -> Result<(), SinkError> {
            self.0.lock().expect("lock").send(dead)
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    const NOW: i64 = 1_795_514_460_000;

    fn run(
        inputs: &[PathBuf],
        parallel: Option<(usize, usize)>,
        max_rows: usize,
    ) -> (ReplayReport, Vec<Row>, Vec<String>) {
        run_limited(inputs, parallel, max_rows, termwatch_telemetry::MAX_RECORD_BYTES)
    }

    fn run_limited(
        inputs: &[PathBuf],
        parallel: Option<(usize, usize)>,
        max_rows: usize,
        max_record_bytes: usize,
    ) -> (ReplayReport, Vec<Row>, Vec<String>) {
        let (rows, dead) = (Rows::default(), Dead::default());
        let config = BatchConfig { max_rows, max_age: Duration::from_secs(3600) };
        let pipeline = Pipeline::new(config, vec![Box::new(rows.clone())], Box::new(dead.clone()))
            .with_ingest_clock(|| NOW)
            .with_max_record_bytes(max_record_bytes);
        let report = match parallel {
            None => replay(inputs, pipeline),
            Some((decoders, block)) => replay_blocks(inputs, pipeline, decoders, block),
        };
        let rows = rows.0.lock().expect("lock").clone();
        let dead = dead.0.lock().expect("lock").lines.clone();
        (report, rows, dead)
    }

    /// A simulated history (damaged and late records included) with
    /// duplicates, blank lines, CRLF and no final newline added.
    fn history(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut sim = termwatch_sim::Simulator::new(termwatch_sim::SimConfig {
            terminals: 30,
            days: 0.1,
            damaged_share: 0.02,
            ..termwatch_sim::SimConfig::default()
        })
        .expect("simulator");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        let mut n = 0;
        while sim.next_record(&mut buf).is_some() {
            let out = if n % 2 == 0 { &mut a } else { &mut b };
            out.extend_from_slice(&buf);
            out.extend_from_slice(if n % 97 == 0 { b"\r\n" } else { b"\n" });
            if n % 50 == 0 {
                // A resent report, and a blank line.
                out.extend_from_slice(&buf);
                out.extend_from_slice(b"\n   \n");
            }
            n += 1;
        }
        a.extend_from_slice(b"{\"terminal_id\":\"last\",\"ts\":1795514400000,\"region\":\"r\"}");
        let (pa, pb) = (dir.join("a.ndjson"), dir.join("b.ndjson.gz"));
        std::fs::write(&pa, &a).expect("write");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b).expect("compress");
        std::fs::write(&pb, gz.finish().expect("finish")).expect("write");
        vec![pa, pb]
    }

    #[test]
    fn parallel_replay_gives_what_the_sequential_one_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs = history(dir.path());
        let (want, want_rows, want_dead) = run(&inputs, None, 8192);
        assert!(want.error.is_none(), "{:?}", want.error);
        assert!(want.stats.duplicates > 0 && want.stats.rejected_total() > 0 && want.blank_lines > 0);
        // Blocks far smaller than a record, a few records, and many: lines
        // straddle blocks, batches close inside and at the end of blocks.
        for (decoders, block, max_rows) in [(2, 1, 8192), (3, 700, 5), (2, 64 << 10, 8192), (1, 4 << 20, 100)] {
            let (got, rows, dead) = run(&inputs, Some((decoders, block)), max_rows);
            let case = format!("{decoders} decoders, blocks of {block} bytes, batches of {max_rows}");
            assert!(got.error.is_none(), "{case}: {:?}", got.error);
            assert_eq!(got.stats.read, want.stats.read, "{case}");
            assert_eq!(got.stats.accepted, want.stats.accepted, "{case}");
            assert_eq!(got.stats.rejected, want.stats.rejected, "{case}");
            assert_eq!(
                (got.stats.duplicates, got.stats.too_old),
                (want.stats.duplicates, want.stats.too_old),
                "{case}"
            );
            assert_eq!((got.blank_lines, got.input_bytes), (want.blank_lines, want.input_bytes), "{case}");
            assert_eq!(rows, want_rows, "{case}");
            // Dead letters name the same file, line and byte offset.
            assert_eq!(dead, want_dead, "{case}");
        }
    }

    #[test]
    fn parallel_replay_delivers_what_precedes_a_corrupt_gzip_and_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken.ndjson.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..20_000 {
            writeln!(gz, r#"{{"terminal_id":"T-{i}","ts":1795514400000,"region":"r"}}"#).expect("compress");
        }
        let mut bytes = gz.finish().expect("finish");
        let mid = bytes.len() / 2;
        bytes[mid..mid + 16].fill(0xAA);
        std::fs::write(&path, &bytes).expect("write");
        let inputs = [path];
        let (want, want_rows, _) = run(&inputs, None, 8192);
        let (got, rows, _) = run(&inputs, Some((2, 4096)), 8192);
        let (want_err, got_err) = (want.error.expect("fails").to_string(), got.error.expect("fails").to_string());
        assert!(got_err.contains("broken.ndjson.gz") && got_err.contains("gzip"), "{got_err}");
        assert_eq!(got_err, want_err);
        assert!(!rows.is_empty());
        assert_eq!(rows, want_rows, "what was read before the damage reaches the sinks");
    }

    /// `[limits] max_record_bytes` (here 300): what both readers keep and
    /// what decoding refuses move together.
    #[test]
    fn a_configured_record_limit_applies_to_both_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = |t: &str| format!(r#"{{"terminal_id":"{t}","ts":{},"region":"r"}}"#, NOW - 60_000);
        let padded = |n: usize| {
            let head = format!(r#"{{"terminal_id":"T-p","ts":{},"region":"r","pad":""#, NOW - 60_000);
            format!("{head}{}\"}}", "x".repeat(n - head.len() - 2))
        };
        assert_eq!(padded(300).len(), 300);
        let lines = [ok("T-1"), padded(300), padded(301), ok("T-2"), padded(100_000)];
        let path = dir.path().join("limited.ndjson");
        std::fs::write(&path, lines.join("\n")).expect("write");
        let inputs = [path];
        for parallel in [None, Some((2, 64)), Some((1, 1 << 20))] {
            let (got, rows, dead) = run_limited(&inputs, parallel, 8192, 300);
            let case = format!("{parallel:?}");
            assert!(got.error.is_none(), "{case}: {:?}", got.error);
            let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            assert_eq!(names, ["T-1", "T-p", "T-2"], "{case}: a record of exactly the limit is taken");
            let too_large: Vec<u64> = dead
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
                .filter(|d| d["problem"] == "too_large")
                .map(|d| d["line"].as_u64().expect("line"))
                .collect();
            assert_eq!(too_large, [3, 5], "{case}");
        }
        // The default limit refuses none of them (the padded ones are one
        // record, repeated: kept once).
        let (got, _, dead) = run(&inputs, None, 8192);
        assert_eq!(got.stats.read, 5);
        assert!(got.stats.rejected.is_empty() && dead.is_empty(), "{dead:?}");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_rejected_as_too_large_in_place() {
        use termwatch_telemetry::MAX_RECORD_BYTES;
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = |t: &str| format!(r#"{{"terminal_id":"{t}","ts":{},"region":"r"}}"#, NOW - 60_000);
        let long = |n: usize| format!(r#"{{"terminal_id":"T-x","pad":"{}"}}"#, "x".repeat(n - 30));
        assert_eq!(long(100).len(), 100);
        // The limit itself, with CRLF, is not too large; one byte more is,
        // whatever the line's end; a line of many reads is skipped whole.
        let lines = [
            ok("T-1"),
            long(MAX_RECORD_BYTES) + "\r",
            long(MAX_RECORD_BYTES + 1),
            ok("T-2"),
            long(MAX_RECORD_BYTES + 1) + "\r",
            long(3 * MAX_RECORD_BYTES + 12_345),
            ok("T-3"),
            long(5 * MAX_RECORD_BYTES),
        ];
        let text = lines.join("\n");
        let path = dir.path().join("long.ndjson");
        std::fs::write(&path, &text).expect("write");
        let inputs = [path];
        let offsets: Vec<u64> =
            lines.iter().scan(0u64, |at, l| Some(std::mem::replace(at, *at + l.len() as u64 + 1))).collect();
        let (want, want_rows, want_dead) = run(&inputs, None, 8192);
        assert!(want.error.is_none(), "{:?}", want.error);
        assert_eq!(want.stats.read, 8);
        assert_eq!(want.input_bytes, text.len() as u64, "every byte is read past");
        let names: Vec<&str> = want_rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["T-1", "T-2", "T-3"]);
        let dead: Vec<serde_json::Value> =
            want_dead.iter().map(|l| serde_json::from_str(l).expect("dead letter json")).collect();
        let too_large: Vec<(u64, u64)> = dead
            .iter()
            .filter(|d| d["problem"] == "too_large")
            .map(|d| (d["line"].as_u64().expect("line"), d["byte_offset"].as_u64().expect("offset")))
            .collect();
        let want_too_large: Vec<(u64, u64)> = [3usize, 5, 6, 8].iter().map(|&l| (l as u64, offsets[l - 1])).collect();
        assert_eq!(too_large, want_too_large, "named by line and byte offset");
        for d in dead.iter().filter(|d| d["problem"] == "too_large") {
            assert_eq!(d["field"], "(record)");
            let kept = d["raw"].as_str().expect("raw").len();
            assert_eq!(kept, crate::dead_letter::TOO_LARGE_KEPT, "the dead letter keeps the start of the record");
        }
        assert!(
            dead.iter().all(|d| d["line"] != 2 || d["problem"] != "too_large"),
            "a line of exactly the limit is read, not refused for its size"
        );
        for (decoders, block) in [(2, 1), (2, 700), (1, 64 << 10), (2, 4 << 20)] {
            let (got, rows, dead) = run(&inputs, Some((decoders, block)), 8192);
            let case = format!("{decoders} decoders, blocks of {block} bytes");
            assert!(got.error.is_none(), "{case}: {:?}", got.error);
            assert_eq!((got.stats.read, got.input_bytes), (want.stats.read, want.input_bytes), "{case}");
            assert_eq!(got.stats.rejected, want.stats.rejected, "{case}");
            assert_eq!(rows, want_rows, "{case}");
            assert_eq!(dead, want_dead, "{case}");
        }
    }

    #[test]
    fn parallel_replay_names_a_missing_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (got, _, _) = run(&[dir.path().join("missing.ndjson")], Some((2, 1024)), 8192);
        assert!(got.error.expect("fails").to_string().contains("missing.ndjson"));
    }
}
