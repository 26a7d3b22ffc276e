//! A gzip of a few megabytes that expands to one line of 2 GB: rejected as
//! too large, with the lines around it read, in bounded memory. Its own test
//! binary, so that the process's peak memory is this test's alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use termwatch_pipeline::{BatchConfig, BatchSink, Pipeline, SinkError, replay_parallel};

#[derive(Clone, Default)]
struct Count(Arc<Mutex<usize>>);

impl BatchSink for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        *self.0.lock().map_err(|_| SinkError::Other("poisoned".into()))? += batch.num_rows();
        Ok(())
    }
}

/// Peak resident memory of this process so far, bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).expect("value").parse().expect("number");
    kib * 1024
}

const TS: i64 = 1_795_514_400_000;

#[test]
fn a_two_gigabyte_line_in_a_small_gzip_is_rejected_in_bounded_memory() {
    const LINE: u64 = 2 << 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bomb.ndjson.gz");
    let ts = TS;
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        writeln!(gz, r#"{{"terminal_id":"T-1","ts":{ts},"region":"r"}}"#).expect("write");
        gz.write_all(br#"{"terminal_id":"T-2","pad":""#).expect("write");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..LINE >> 20 {
            gz.write_all(&chunk).expect("write");
        }
        gz.write_all(b"\"}\n").expect("write");
        writeln!(gz, r#"{{"terminal_id":"T-3","ts":{ts},"region":"r"}}"#).expect("write");
        gz.finish().expect("finish").flush().expect("flush");
    }
    let compressed = std::fs::metadata(&path).expect("metadata").len();
    let before = peak_rss();
    let rows = Count::default();
    let pipeline = Pipeline::new(
        BatchConfig { max_rows: 8192, max_age: Duration::from_secs(3600) },
        vec![Box::new(rows.clone())],
        Box::new(termwatch_pipeline::CountOnlyDeadLetters),
    )
    .with_ingest_clock(|| TS);
    let started = Instant::now();
    let report = replay_parallel(&[path], pipeline, 2);
    let elapsed = started.elapsed();
    let peak = peak_rss();
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.stats.read, 3);
    assert_eq!(*rows.0.lock().expect("lock"), 2, "the lines on either side are read");
    let too_large: u64 =
        report.stats.rejected.iter().filter(|((_, p), _)| p.as_str() == "too_large").map(|(_, n)| *n).sum();
    assert_eq!(too_large, 1, "{}", report.stats);
    assert!(report.input_bytes > LINE, "the whole line was read past: {}", report.input_bytes);
    eprintln!(
        "{compressed} bytes of gzip, {} bytes expanded: {elapsed:.1?}, peak memory {} MB (before {} MB)",
        report.input_bytes,
        peak >> 20,
        before >> 20
    );
    assert!(peak < 100 << 20, "peak resident memory {} MB", peak >> 20);
}
