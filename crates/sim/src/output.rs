//! Writing a whole history: NDJSON (optionally gzip), labels, and the summary.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use termwatch_telemetry::alerts::AlertKind;

use crate::config::SimConfig;
use crate::engine::Simulator;
use crate::error::SimError;

/// What a run wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Records written, damaged ones included.
    pub records: u64,
    /// Deliberately damaged records (the contract rejects them).
    pub damaged: u64,
    /// Records that arrived more than a minute after their event time.
    pub late: u64,
    /// Uncompressed bytes of NDJSON.
    pub bytes: u64,
    /// Labels by kind, in the order of [`AlertKind::ALL`].
    pub labels: [usize; 4],
    pub terminals: usize,
    pub sites: usize,
    pub regions: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records ({} damaged, {} late) from {} terminals at {} sites in {} regions; labels:",
            self.records, self.damaged, self.late, self.terminals, self.sites, self.regions
        )?;
        for (k, n) in AlertKind::ALL.iter().zip(self.labels) {
            write!(f, " {k} {n}")?;
        }
        write!(f, "; {:.2} s, {:.0} records/s", self.elapsed.as_secs_f64(), self.records_per_s())
    }
}

/// Size of the chunks handed to the writer.
const CHUNK: usize = 1 << 18;

impl Simulator {
    /// Writes every remaining record, one per line, in arrival order.
    pub fn write_ndjson<W: Write>(&mut self, mut out: W) -> Result<Summary, SimError> {
        let summary = self.drive(|chunk| out.write_all(chunk))?;
        out.flush()?;
        Ok(summary)
    }

    /// Writes the labels, one JSON object per line, sorted by start.
    pub fn write_labels<W: Write>(&self, mut out: W) -> Result<(), SimError> {
        for l in self.labels() {
            serde_json::to_writer(&mut out, l)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    fn label_counts(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for l in self.labels() {
            if let Some(i) = AlertKind::ALL.iter().position(|k| *k == l.kind) {
                n[i] += 1;
            }
        }
        n
    }

    /// Generates every remaining record into chunks of about [`CHUNK`] bytes.
    fn drive(&mut self, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> Result<Summary, SimError> {
        let started = Instant::now();
        let mut s = Summary {
            labels: self.label_counts(),
            terminals: self.fleet().terminals.len(),
            sites: self.fleet().sites.len(),
            regions: self.fleet().regions.len(),
            ..Summary::default()
        };
        let mut line = Vec::with_capacity(1024);
        let mut chunk = Vec::with_capacity(CHUNK + 2048);
        while let Some(meta) = self.next_record(&mut line) {
            s.records += 1;
            s.damaged += u64::from(meta.damage.is_some());
            s.late += u64::from(meta.arrival_ms - meta.event_ms > 60_000);
            chunk.extend_from_slice(&line);
            chunk.push(b'\n');
            if chunk.len() >= CHUNK {
                s.bytes += chunk.len() as u64;
                sink(&chunk)?;
                chunk.clear();
            }
        }
        s.bytes += chunk.len() as u64;
        sink(&chunk)?;
        s.elapsed = started.elapsed();
        Ok(s)
    }

    /// Writes gzip through a second thread, so that compression overlaps
    /// generation. The bytes do not depend on the threading: the compressor
    /// sees the same chunks in the same order.
    fn write_gzip(&mut self, file: File) -> Result<Summary, io::Error> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> io::Result<()> {
                let mut gz = GzEncoder::new(BufWriter::with_capacity(1 << 20, file), Compression::fast());
                for chunk in rx {
                    gz.write_all(&chunk)?;
                    let _ = back_tx.send(chunk);
                }
                gz.finish()?.flush()
            });
            let result = self.drive(|chunk| {
                let mut buf = back_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK + 2048));
                buf.clear();
                buf.extend_from_slice(chunk);
                tx.send(buf).map_err(|_| io::Error::other("the gzip writer stopped"))
            });
            drop(tx);
            let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("the gzip writer panicked")));
            match (result, written) {
                // The writer's own error says more than "it stopped".
                (_, Err(e)) => Err(e),
                (Err(SimError::Io(e)), Ok(())) => Err(e),
                (Err(e), Ok(())) => Err(io::Error::other(e.to_string())),
                (Ok(s), Ok(())) => Ok(s),
            }
        })
    }
}

/// Runs a whole simulation into files: telemetry to `out` (gzip when it ends
/// in `.gz`), and the labels to `labels` when given.
pub fn write_files(cfg: SimConfig, out: &Path, labels: Option<&Path>) -> Result<Summary, SimError> {
    let started = Instant::now();
    let mut sim = Simulator::new(cfg)?;
    if let Some(path) = labels {
        let write = |cause| SimError::Write { what: "labels", path: path.to_path_buf(), cause };
        let f = File::create(path).map_err(write)?;
        sim.write_labels(BufWriter::new(f)).map_err(|e| match e {
            SimError::Io(source) => write(source),
            other => other,
        })?;
    }
    let write = |cause| SimError::Write { what: "telemetry", path: out.to_path_buf(), cause };
    let file = File::create(out).map_err(write)?;
    let mut summary = if out.extension().is_some_and(|e| e == "gz") {
        sim.write_gzip(file).map_err(write)?
    } else {
        sim.write_ndjson(BufWriter::with_capacity(1 << 20, file)).map_err(|e| match e {
            SimError::Io(source) => write(source),
            other => other,
        })?
    };
    summary.elapsed = started.elapsed();
    Ok(summary)
}
