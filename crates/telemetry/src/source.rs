//! The file source: NDJSON, plain or gzip, read line by line into a reused
//! buffer. It yields raw bytes with their position; decoding is the
//! pipeline's job, so a Kafka source can take this one's place. Here, with
//! the contract, so that what reads history files (the pipeline, the
//! evaluator) shares one reader without depending on the pipeline.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::MAX_RECORD_BYTES;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position<'a> {
    /// Line `line` (1-based) of a file, `offset` bytes into its decompressed content.
    File { path: &'a str, line: u64, offset: u64 },
    /// A Kafka message.
    Kafka { topic: &'a str, partition: i32, offset: i64 },
}

/// A source could not be read. Always names the file (or topic) and, where
/// known, how far reading got.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open input {path}: {cause}")]
    Open { path: String, cause: std::io::Error },
    #[error("input {path}: {what} after line {line} (byte {offset}{of}): {cause}",
        what = if *.gzip { "corrupt or truncated gzip data" } else { "read failed" },
        of = if *.gzip { " of the decompressed stream" } else { "" })]
    Read { path: String, line: u64, offset: u64, gzip: bool, cause: std::io::Error },
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const READ_BUFFER: usize = 256 * 1024;

/// One line of an input file, without its line terminator.
pub struct Line<'a> {
    pub bytes: &'a [u8],
    pub position: Position<'a>,
}

impl Line<'_> {
    /// Empty or whitespace-only: not a record at all.
    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

/// Reads an NDJSON file, recognising gzip by its magic bytes rather than by
/// the file name, and concatenated gzip members as one stream.
pub struct NdjsonFile {
    path: String,
    reader: Box<dyn BufRead + Send>,
    gzip: bool,
    line: u64,
    offset: u64,
    buf: Vec<u8>,
    /// A read error met after some whole lines of a block: those lines are
    /// returned first, the error on the next call.
    pending: Option<SourceError>,
    /// Of a longer line only a few bytes more than this are kept.
    max_record_bytes: usize,
}

/// Whole lines of an input read in one piece by [`NdjsonFile::next_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The 1-based number of the block's first line.
    pub first_line: u64,
    /// Where the block starts in the (decompressed) input.
    pub offset: u64,
}

impl NdjsonFile {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let name = path.display().to_string();
        let open_err = |cause| SourceError::Open { path: name.clone(), cause };
        let file = File::open(path).map_err(open_err)?;
        if file.metadata().map_err(open_err)?.is_dir() {
            return Err(open_err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory")));
        }
        let mut raw = BufReader::with_capacity(READ_BUFFER, file);
        let gzip = raw.fill_buf().map_err(open_err)?.starts_with(&GZIP_MAGIC);
        let reader: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(READ_BUFFER, MultiGzDecoder::new(raw)))
        } else {
            Box::new(raw)
        };
        Ok(NdjsonFile {
            path: name,
            reader,
            gzip,
            line: 0,
            offset: 0,
            buf: Vec::with_capacity(4096),
            pending: None,
            max_record_bytes: MAX_RECORD_BYTES,
        })
    }

    /// From any reader (stdin, a socket, a test buffer); `name` is what
    /// errors and dead letters call it.
    pub fn from_reader(name: impl Into<String>, reader: impl Read + Send + 'static) -> Self {
        NdjsonFile {
            path: name.into(),
            reader: Box::new(BufReader::with_capacity(READ_BUFFER, reader)),
            gzip: false,
            line: 0,
            offset: 0,
            buf: Vec::with_capacity(4096),
            pending: None,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }

    /// The longest record taken (default [`MAX_RECORD_BYTES`]): of a longer
    /// line only a few bytes past it are kept, so that decoding with the
    /// same limit rejects it as too large.
    pub fn with_max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    /// Bytes of (decompressed) input consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Reads whole lines, at least `target` bytes of them unless the input
    /// ends first, into `out` (replacing its content): the unit of work of a
    /// parallel replay, which splits lines on its decoding threads. One copy
    /// out of the read buffer, and each byte searched for a newline once.
    /// A line longer than the record limit is kept only up to two bytes
    /// past it (so that decoding rejects it as too large) and ends the
    /// block: the rest of it is skipped, and the positions of the lines
    /// after it stay right. `None` at the end of the input. Do not mix with
    /// [`Self::next_line`].
    pub fn next_block(&mut self, out: &mut Vec<u8>, target: usize) -> Result<Option<Block>, SourceError> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        out.clear();
        // The part line left over by the previous block comes first; it
        // holds no newline.
        out.append(&mut self.buf);
        let mut last_newline: Option<usize> = None;
        let (mut eof, mut skipped) = (false, 0u64);
        while out.len() < target || last_newline.is_none() {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(cause) if cause.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(cause) => {
                    let error = self.read_error(out, cause);
                    // Whole lines read before the damage are still delivered.
                    match last_newline {
                        Some(_) => {
                            self.pending = Some(error);
                            break;
                        }
                        None => return Err(error),
                    }
                }
            };
            if chunk.is_empty() {
                eof = true;
                break;
            }
            let (n, base) = (chunk.len(), out.len());
            out.extend_from_slice(chunk);
            self.reader.consume(n);
            if let Some(i) = memchr::memrchr(b'\n', &out[base..]) {
                last_newline = Some(base + i);
            }
            let line_start = last_newline.map_or(0, |i| i + 1);
            if out.len() - line_start > self.max_record_bytes {
                // Two bytes past: still too long once a final '\r' is taken off.
                let keep = line_start + self.max_record_bytes + 2;
                skipped = (out.len() - keep) as u64;
                out.truncate(keep);
                match self.skip_line() {
                    Ok((n, true)) => {
                        skipped += n;
                        out.push(b'\n');
                    }
                    Ok((n, false)) => {
                        skipped += n;
                        eof = true;
                    }
                    Err(cause) => self.pending = Some(self.read_error(out, cause)),
                }
                break;
            }
        }
        // Keep the part line after the last newline for the next block (the
        // whole rest at the end of the input is its last line).
        if !eof && let Some(last) = memchr::memrchr(b'\n', out) {
            self.buf.extend_from_slice(&out[last + 1..]);
            out.truncate(last + 1);
        }
        if out.is_empty() {
            return Ok(None);
        }
        let block = Block { first_line: self.line + 1, offset: self.offset };
        let newlines = memchr::memchr_iter(b'\n', out).count() as u64;
        self.line += newlines + u64::from(out.last() != Some(&b'\n'));
        self.offset += out.len() as u64 + skipped;
        Ok(Some(block))
    }

    /// Reads past the rest of a line without keeping it, newline included:
    /// the bytes skipped before the newline, and whether there was one (or
    /// the input ended first).
    fn skip_line(&mut self) -> std::io::Result<(u64, bool)> {
        let mut skipped = 0u64;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok((skipped, false));
            }
            if let Some(i) = memchr::memchr(b'\n', chunk) {
                self.reader.consume(i + 1);
                return Ok((skipped + i as u64, true));
            }
            let n = chunk.len();
            skipped += n as u64;
            self.reader.consume(n);
        }
    }

    /// A read error met while `out` held this block's bytes so far.
    fn read_error(&self, out: &[u8], cause: std::io::Error) -> SourceError {
        SourceError::Read {
            path: self.path.clone(),
            line: self.line + memchr::memchr_iter(b'\n', out).count() as u64,
            offset: self.offset + memchr::memrchr(b'\n', out).map_or(0, |i| i as u64 + 1),
            gzip: self.gzip,
            cause,
        }
    }

    /// The next line, or `None` at the end of the input. A read error
    /// (including a corrupt gzip stream) names the file and the last line
    /// read whole. Of a line longer than the record limit only the
    /// first bytes are kept (decoding rejects it as too large); the rest is
    /// read past, so memory stays bounded whatever the input.
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>, SourceError> {
        self.buf.clear();
        let mut consumed = 0u64;
        // Room for the longest line taken and its "\r\n": one byte more is
        // a line too long, whatever its end.
        let keep = self.max_record_bytes + 3;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(cause) if cause.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(cause) => {
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        line: self.line,
                        offset: self.offset,
                        gzip: self.gzip,
                        cause,
                    });
                }
            };
            if chunk.is_empty() {
                break;
            }
            let (take, whole) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = keep.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&chunk[..take.min(room)]);
            self.reader.consume(take);
            consumed += take as u64;
            if whole {
                break;
            }
        }
        if consumed == 0 {
            return Ok(None);
        }
        let start = self.offset;
        self.offset += consumed;
        self.line += 1;
        let mut bytes = &self.buf[..];
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        Ok(Some(Line { bytes, position: Position::File { path: &self.path, line: self.line, offset: start } }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn lines(src: &mut NdjsonFile) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        while let Some(l) = src.next_line().expect("readable") {
            let Position::File { line, offset, .. } = l.position else { panic!("file position") };
            out.push((String::from_utf8_lossy(l.bytes).into_owned(), line, offset));
        }
        out
    }

    #[test]
    fn reads_lines_with_positions_and_crlf() {
        let mut src = NdjsonFile::from_reader("mem", &b"a\r\nbb\n\nccc"[..]);
        assert_eq!(
            lines(&mut src),
            vec![("a".into(), 1, 0), ("bb".into(), 2, 3), ("".into(), 3, 6), ("ccc".into(), 4, 7)]
        );
    }

    #[test]
    fn detects_gzip_by_magic_and_reads_concatenated_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-gz-suffix");
        let mut file = File::create(&path).expect("create");
        for part in [&b"one\n"[..], b"two\n"] {
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(part).expect("compress");
            file.write_all(&gz.finish().expect("finish")).expect("write");
        }
        drop(file);
        let mut src = NdjsonFile::open(&path).expect("opens");
        assert!(src.is_gzip());
        let got: Vec<String> = lines(&mut src).into_iter().map(|l| l.0).collect();
        assert_eq!(got, ["one", "two"]);
    }

    #[test]
    fn corrupt_gzip_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken.ndjson.gz");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        for i in 0..2000 {
            writeln!(gz, "{{\"line\":{i}}}").expect("compress");
        }
        let mut bytes = gz.finish().expect("finish");
        let mid = bytes.len() / 2;
        bytes[mid..mid + 16].fill(0xAA);
        std::fs::write(&path, &bytes).expect("write");

        let mut src = NdjsonFile::open(&path).expect("opens");
        let err = loop {
            match src.next_line() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("corruption went unnoticed"),
                Err(e) => break e,
            }
        };
        let msg = err.to_string();
        assert!(msg.contains("broken.ndjson.gz") && msg.contains("gzip"), "{msg}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = NdjsonFile::open(Path::new("/nonexistent/telemetry.ndjson")).err().expect("fails");
        assert!(err.to_string().contains("/nonexistent/telemetry.ndjson"), "{err}");
    }
}
