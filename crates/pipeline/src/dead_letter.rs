//! Dead letters: every rejected record, with its raw bytes, why it was
//! rejected and where it came from, so that nothing is dropped silently and
//! an operator can fix the sender and replay.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;
use termwatch_telemetry::{Problem, Rejection};

pub use termwatch_telemetry::source::Position;

use crate::error::SinkError;

/// A rejected record on its way to the dead-letter output.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub raw: &'a [u8],
    pub position: Position<'a>,
    pub rejection: &'a Rejection,
}

/// Of a record rejected as too large, its dead letter keeps the first this
/// many bytes: enough to tell what sent it, small enough for a Kafka
/// message and for a dead-letter file an operator can open.
pub const TOO_LARGE_KEPT: usize = 4096;

impl<'a> DeadLetter<'a> {
    pub fn new(raw: &'a [u8], position: Position<'a>, rejection: &'a Rejection) -> Self {
        let raw = match rejection.problem {
            Problem::TooLarge => &raw[..raw.len().min(TOO_LARGE_KEPT)],
            _ => raw,
        };
        DeadLetter { raw, position, rejection }
    }
}

/// Receives rejected records. An error means the dead letter was not kept:
/// the caller must not acknowledge the record's position past it.
pub trait DeadLetterSink: Send {
    fn send(&mut self, dead: &DeadLetter<'_>) -> Result<(), SinkError>;
    /// Makes everything sent so far durable (written through to the OS).
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// One line of the dead-letter NDJSON file.
#[derive(Serialize)]
struct Line<'a> {
    /// The field the rejection names, or `(record)`.
    field: &'static str,
    problem: &'static str,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    byte_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    /// The record as it arrived, when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    /// ...and base64 of its bytes when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

impl<'a> Line<'a> {
    fn new(d: &DeadLetter<'a>) -> Self {
        let (raw, raw_base64) = match std::str::from_utf8(d.raw) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(d.raw))),
        };
        let mut line = Line {
            field: d.rejection.field.name(),
            problem: d.rejection.problem.as_str(),
            error: d.rejection.to_string(),
            file: None,
            line: None,
            byte_offset: None,
            topic: None,
            partition: None,
            offset: None,
            raw,
            raw_base64,
        };
        match d.position {
            Position::File { path, line: n, offset } => {
                line.file = Some(path);
                line.line = Some(n);
                line.byte_offset = Some(offset);
            }
            Position::Kafka { topic, partition, offset } => {
                line.topic = Some(topic);
                line.partition = Some(partition);
                line.offset = Some(offset);
            }
        }
        line
    }
}

/// Writes dead letters as NDJSON, one object per rejected record.
pub struct FileDeadLetters {
    path: PathBuf,
    out: BufWriter<File>,
}

impl FileDeadLetters {
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let file = File::create(path)
            .map_err(|e| SinkError::io(format!("cannot create dead-letter file {}", path.display()), e))?;
        Ok(FileDeadLetters { path: path.to_path_buf(), out: BufWriter::new(file) })
    }
}

impl DeadLetterSink for FileDeadLetters {
    fn send(&mut self, dead: &DeadLetter<'_>) -> Result<(), SinkError> {
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            serde_json::to_writer(&mut *out, &Line::new(dead))?;
            out.write_all(b"\n")
        };
        write(&mut self.out)
            .map_err(|e| SinkError::io(format!("cannot write dead-letter file {}", self.path.display()), e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(format!("cannot write dead-letter file {}", self.path.display()), e))
    }
}

/// Keeps no dead letter: the pipeline's statistics still count each by
/// reason. For runs whose rejects are not kept (an export without
/// `--dead-letter`, a warm-up), in constant memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountOnlyDeadLetters;

impl DeadLetterSink for CountOnlyDeadLetters {
    fn send(&mut self, _dead: &DeadLetter<'_>) -> Result<(), SinkError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Keeps dead letters in memory; for tests and the demo.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    /// Each dead letter as the NDJSON line the file sink would write.
    pub lines: Vec<String>,
}

impl DeadLetterSink for MemoryDeadLetters {
    fn send(&mut self, dead: &DeadLetter<'_>) -> Result<(), SinkError> {
        let line = serde_json::to_string(&Line::new(dead)).map_err(|e| SinkError::Other(e.to_string()))?;
        self.lines.push(line);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use termwatch_telemetry::decode;

    use super::*;

    #[test]
    fn non_utf8_raw_bytes_are_kept_as_base64() {
        let raw = b"{\"terminal_id\":\"\xff\"}";
        let rejection = decode(raw, 0).expect_err("not UTF-8");
        let mut sink = MemoryDeadLetters::default();
        sink.send(&DeadLetter {
            raw,
            position: Position::File { path: "in.ndjson", line: 3, offset: 99 },
            rejection: &rejection,
        })
        .expect("memory sink");
        let v: serde_json::Value = serde_json::from_str(&sink.lines[0]).expect("json");
        assert_eq!(v["field"], "(record)");
        assert_eq!(v["problem"], "not_utf8");
        assert_eq!(v["line"], 3);
        assert_eq!(v["byte_offset"], 99);
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["raw_base64"].as_str().expect("base64 string"))
            .expect("decodes");
        assert_eq!(back, raw);
    }

    #[test]
    fn kafka_positions_are_named() {
        let raw = b"[1]";
        let rejection = decode(raw, 0).expect_err("not an object");
        let mut sink = MemoryDeadLetters::default();
        sink.send(&DeadLetter {
            raw,
            position: Position::Kafka { topic: "telemetry", partition: 7, offset: 42 },
            rejection: &rejection,
        })
        .expect("memory sink");
        let v: serde_json::Value = serde_json::from_str(&sink.lines[0]).expect("json");
        assert_eq!(
            (v["topic"].as_str(), v["partition"].as_i64(), v["offset"].as_i64()),
            (Some("telemetry"), Some(7), Some(42))
        );
        assert_eq!(v["raw"], "[1]");
    }
}
