//! Telemetry histories from Parquet, loaded and prepared with polars, handed
//! to termwatch as arrow-rs record batches in
//! [`termwatch_telemetry::telemetry_schema`], so they go through the same
//! feature engine as NDJSON.
//!
//! polars keeps its own Arrow implementation (polars-arrow), and `unsafe` is
//! forbidden here, so batches cross over by copying values into arrow-rs
//! builders, not through the C data interface.
//!
//! Order matters to the feature engine: a report whose window has closed is
//! late and dropped, exactly as in service. An export by `termwatch export`
//! carries [`SEQ_COLUMN`], the order the pipeline accepted its reports in, and
//! is replayed in that order, so training from it computes the same features
//! as training from the NDJSON it came from. Parquet without that column is
//! replayed in event-time order (ties in file order).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Date32Builder, DictionaryArray, Float64Builder, Int8Builder, StringArray, StringDictionaryBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType as ArrowType, Int8Type, Int32Type};
use arrow::record_batch::RecordBatch;
use polars::prelude::*;
use termwatch_telemetry::batch::col as tcol;
use termwatch_telemetry::{NetType, telemetry_schema};

/// The column `termwatch export` writes to keep the order of acceptance.
pub const SEQ_COLUMN: &str = "ingest_seq";
/// Where an export keeps its telemetry.
pub const TELEMETRY_DIR: &str = "telemetry";
/// Rows per polars query when the order is `ingest_seq`: bounds the memory of
/// a long history (a row is a few hundred bytes in polars and again in Arrow).
const SEQ_CHUNK: i64 = 1 << 18;
/// Event time per polars query when the order is `ts`, ms.
const TS_CHUNK_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: no .parquet files in it")]
    Empty { path: String },
    #[error("cannot list {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{file}: column {column} is missing (telemetry-v1 Parquet needs every contract column)")]
    MissingColumn { file: String, column: String },
    #[error("{file}: column {column} has type {found}, expected {expected}")]
    WrongType { file: String, column: String, found: String, expected: &'static str },
    #[error("{file}: column {column} has {count} nulls; it is required")]
    Null { file: String, column: String, count: u64 },
    #[error("{file}: column {column} holds {value:?}, {why}")]
    BadValue { file: String, column: String, value: String, why: &'static str },
    #[error("{file}: column {column} cannot be read as {expected}: {cause}")]
    Cast { file: String, column: String, expected: &'static str, cause: PolarsError },
    #[error("{context}: {cause}")]
    Polars { context: String, cause: PolarsError },
    #[error("building an Arrow batch: {0}")]
    Arrow(arrow::error::ArrowError),
}

// The cause is in each message, and not also a `source()`: an error printed
// with its chain (`{:#}`) would say it twice.
impl From<arrow::error::ArrowError> for HistoryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        HistoryError::Arrow(e)
    }
}

/// Whether `path` holds Parquet: a directory (an export, or any tree of
/// .parquet files), or a file that starts with Parquet's magic bytes.
pub fn is_parquet(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"PAR1"
}

/// The Parquet files of one input, sorted by path (for an export, its
/// `telemetry/` part, so days come in order).
pub fn parquet_files(input: &Path) -> Result<Vec<PathBuf>, HistoryError> {
    if !input.exists() {
        return Err(HistoryError::NotFound { path: input.display().to_string() });
    }
    if !input.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    let root = if input.join(TELEMETRY_DIR).is_dir() { input.join(TELEMETRY_DIR) } else { input.to_path_buf() };
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let io = |cause| HistoryError::Io { path: dir.display().to_string(), cause };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return Err(HistoryError::Empty { path: root.display().to_string() });
    }
    files.sort();
    Ok(files)
}

/// What to load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Only reports with `ts >= from_ms`.
    pub from_ms: Option<i64>,
    /// Only reports with `ts < to_ms`.
    pub to_ms: Option<i64>,
    /// Rows per Arrow batch handed on.
    pub batch_rows: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { from_ms: None, to_ms: None, batch_rows: 65_536 }
    }
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub files: usize,
    pub rows: u64,
    /// The order the rows were handed on in: `ingest_seq` or `ts`.
    pub order: &'static str,
    /// Time in polars (scan, filter, cast, sort).
    pub polars: Duration,
    /// Time copying into Arrow batches (not counting the sink's).
    pub convert: Duration,
}

/// How one contract column is read and converted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    NetType,
    Ts,
    Date,
    U32,
    U64,
    F64,
}

impl Kind {
    fn of(t: &ArrowType) -> Option<Kind> {
        Some(match t {
            ArrowType::Dictionary(k, _) if **k == ArrowType::Int8 => Kind::NetType,
            ArrowType::Dictionary(_, _) | ArrowType::Utf8 => Kind::Str,
            ArrowType::Timestamp(_, _) => Kind::Ts,
            ArrowType::Date32 => Kind::Date,
            ArrowType::UInt32 => Kind::U32,
            ArrowType::UInt64 => Kind::U64,
            ArrowType::Float64 => Kind::F64,
            _ => return None,
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str | Kind::NetType => "a string",
            Kind::Ts => "a timestamp (UTC or without time zone)",
            Kind::Date => "a date",
            Kind::U32 | Kind::U64 => "an integer",
            Kind::F64 => "a number",
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        match self {
            Kind::Str | Kind::NetType => matches!(t, DataType::String),
            Kind::Ts => match t {
                DataType::Datetime(_, None) => true,
                DataType::Datetime(_, Some(tz)) => tz.as_str() == "UTC",
                _ => false,
            },
            Kind::Date => matches!(t, DataType::Date),
            Kind::U32 | Kind::U64 => t.is_integer(),
            Kind::F64 => t.is_primitive_numeric(),
        }
    }

    /// The polars type the column is cast to before conversion.
    fn target(self) -> DataType {
        match self {
            Kind::Str | Kind::NetType => DataType::String,
            Kind::Ts => DataType::Int64,
            Kind::Date => DataType::Int32,
            Kind::U32 => DataType::UInt32,
            Kind::U64 => DataType::UInt64,
            Kind::F64 => DataType::Float64,
        }
    }
}

/// A contract column, with what the contract says when it is absent.
struct Column {
    name: String,
    kind: Kind,
    /// No nulls allowed (and no default).
    required: bool,
    default: Option<Expr>,
}

fn columns() -> Vec<Column> {
    telemetry_schema()
        .fields()
        .iter()
        .filter_map(|f| {
            let kind = Kind::of(f.data_type())?;
            let default = match f.name().as_str() {
                tcol::INTERVAL_S => Some(lit(60u32)),
                tcol::SUPPLY_V_NOMINAL => Some(lit(12.0f64)),
                _ => None,
            };
            Some(Column { name: f.name().clone(), kind, required: !f.is_nullable() && default.is_none(), default })
        })
        .collect()
}

fn polars_err(context: impl Into<String>) -> impl FnOnce(PolarsError) -> HistoryError {
    let context = context.into();
    move |cause| HistoryError::Polars { context, cause }
}

/// One checked file: its raw scan, the expressions that select and cast the
/// contract columns, and the types its filters compare against.
struct Prepared {
    file: String,
    scan: LazyFrame,
    exprs: Vec<Expr>,
    ts_type: DataType,
    seq_type: Option<DataType>,
}

impl Prepared {
    /// `ms` as a literal of the file's `ts` type (unit and time zone: a
    /// comparison across time zones is refused).
    fn ts_lit(&self, ms: i64) -> Expr {
        match &self.ts_type {
            DataType::Datetime(unit, tz) => {
                let v = match unit {
                    TimeUnit::Nanoseconds => ms.saturating_mul(1_000_000),
                    TimeUnit::Microseconds => ms.saturating_mul(1_000),
                    TimeUnit::Milliseconds => ms,
                };
                lit(Scalar::new_datetime(v, *unit, tz.clone()))
            }
            // An all-null ts column: its nulls are refused before any row is read.
            _ => lit(ms),
        }
    }

    /// The rows in the time range (and with the order key in `key`), cast.
    /// The filters compare raw columns with literals of their own type, so
    /// the scan can skip row groups by their statistics.
    fn frame(&self, opts: &LoadOptions, key: Option<(i64, i64)>) -> LazyFrame {
        let mut keep = lit(true);
        if let Some(from) = opts.from_ms {
            keep = keep.and(col(tcol::TS).gt_eq(self.ts_lit(from)));
        }
        if let Some(to) = opts.to_ms {
            keep = keep.and(col(tcol::TS).lt(self.ts_lit(to)));
        }
        if let Some((lo, hi)) = key {
            keep = keep.and(match &self.seq_type {
                Some(t) => col(SEQ_COLUMN)
                    .gt_eq(lit(lo).strict_cast(t.clone()))
                    .and(col(SEQ_COLUMN).lt(lit(hi).strict_cast(t.clone()))),
                None => col(tcol::TS).gt_eq(self.ts_lit(lo)).and(col(tcol::TS).lt(self.ts_lit(hi))),
            });
        }
        self.scan.clone().filter(keep).select(self.exprs.clone())
    }
}

fn scan(file: &Path) -> Result<LazyFrame, HistoryError> {
    let path = PlRefPath::try_from_path(file).map_err(polars_err(file.display().to_string()))?;
    let args = ScanArgsParquet {
        // Files are listed here, not globbed, so a day=... directory is
        // only a place: every row carries its own ts.
        hive_options: HiveOptions { enabled: Some(false), ..HiveOptions::default() },
        glob: false,
        ..ScanArgsParquet::default()
    };
    LazyFrame::scan_parquet(path, args).map_err(polars_err(format!("cannot scan {}", file.display())))
}

/// Checks a file's schema and nulls, and prepares its scan.
fn prepare(file: &Path, cols: &[Column], with_seq: bool) -> Result<Prepared, HistoryError> {
    let name = file.display().to_string();
    let mut lf = scan(file)?;
    let schema = lf.collect_schema().map_err(polars_err(format!("cannot read the schema of {name}")))?;
    let mut exprs = Vec::with_capacity(cols.len() + 1);
    for c in cols {
        let Some(t) = schema.get(c.name.as_str()) else {
            return Err(HistoryError::MissingColumn { file: name, column: c.name.clone() });
        };
        if !c.kind.accepts(t) && !matches!(t, DataType::Null) {
            return Err(HistoryError::WrongType {
                file: name,
                column: c.name.clone(),
                found: t.to_string(),
                expected: c.kind.expected(),
            });
        }
        let mut e = col(c.name.as_str());
        if c.kind == Kind::Ts {
            let tz = match t {
                DataType::Datetime(_, tz) => tz.clone(),
                _ => None,
            };
            e = e.strict_cast(DataType::Datetime(TimeUnit::Milliseconds, tz));
        }
        e = e.strict_cast(c.kind.target());
        if let Some(d) = &c.default {
            e = e.fill_null(d.clone());
        }
        exprs.push(e.alias(c.name.as_str()));
    }
    let mut seq_type = None;
    if with_seq {
        match schema.get(SEQ_COLUMN) {
            Some(t) if t.is_integer() => seq_type = Some(t.clone()),
            found => {
                return Err(HistoryError::WrongType {
                    file: name,
                    column: SEQ_COLUMN.to_string(),
                    found: found.map_or_else(|| "nothing".to_string(), |t| t.to_string()),
                    expected: "an integer",
                });
            }
        }
        exprs.push(col(SEQ_COLUMN).strict_cast(DataType::Int64));
    }
    let ts_type = schema.get(tcol::TS).cloned().unwrap_or(DataType::Null);
    let required: Vec<Expr> = cols.iter().filter(|c| c.required).map(|c| col(c.name.as_str()).null_count()).collect();
    let nulls = lf.clone().select(required).collect().map_err(polars_err(format!("cannot read {name}")))?;
    for c in nulls.columns() {
        let n = c.cast(&DataType::UInt64).ok().and_then(|s| s.u64().ok().and_then(|ca| ca.get(0))).unwrap_or(0);
        if n > 0 {
            return Err(HistoryError::Null { file: name, column: c.name().to_string(), count: n });
        }
    }
    Ok(Prepared { file: name, scan: lf, exprs, ts_type, seq_type })
}

/// Whether every file has [`SEQ_COLUMN`].
fn all_have_seq(files: &[PathBuf]) -> Result<bool, HistoryError> {
    for f in files {
        let schema =
            scan(f)?.collect_schema().map_err(polars_err(format!("cannot read the schema of {}", f.display())))?;
        if !schema.contains(SEQ_COLUMN) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Loads the history in `files` (consecutive parts of one history, in
/// order), hands it to `sink` in Arrow batches of the telemetry schema.
pub fn load(
    files: &[PathBuf],
    opts: &LoadOptions,
    mut sink: impl FnMut(&RecordBatch),
) -> Result<LoadReport, HistoryError> {
    let started = Instant::now();
    let cols = columns();
    let with_seq = all_have_seq(files)?;
    let key = if with_seq { SEQ_COLUMN } else { tcol::TS };
    let prepared: Vec<Prepared> = files.iter().map(|f| prepare(f, &cols, with_seq)).collect::<Result<_, _>>()?;
    let mut report = LoadReport { files: files.len(), order: key, ..LoadReport::default() };
    let frames: Vec<LazyFrame> = prepared.iter().map(|p| p.frame(opts, None)).collect();
    let all = concat(frames, UnionArgs::default()).map_err(polars_err("cannot combine the Parquet files"))?;
    let bounds = all
        .clone()
        .select([col(key).min().alias("lo"), col(key).max().alias("hi")])
        .collect()
        .map_err(polars_err(format!("cannot read the range of {key}")))?;
    let bound =
        |name: &str| -> Option<i64> { bounds.column(name).ok()?.cast(&DataType::Int64).ok()?.i64().ok()?.get(0) };
    let (Some(lo), Some(hi)) = (bound("lo"), bound("hi")) else {
        report.polars = started.elapsed();
        return Ok(report);
    };
    let step = if with_seq { SEQ_CHUNK } else { TS_CHUNK_MS };
    let mut polars_time = started.elapsed();
    let mut start = lo;
    while start <= hi {
        let end = start.saturating_add(step);
        let t = Instant::now();
        let frames: Vec<LazyFrame> = prepared.iter().map(|p| p.frame(opts, Some((start, end)))).collect();
        let df = concat(frames, UnionArgs::default())
            .map_err(polars_err("cannot combine the Parquet files"))?
            .sort([key], SortMultipleOptions::default().with_maintain_order(true))
            .collect()
            .map_err(|e| cast_error(e, &prepared, &cols, opts))?;
        polars_time += t.elapsed();
        let t = Instant::now();
        let mut in_sink = Duration::ZERO;
        let mut offset = 0;
        while offset < df.height() {
            let len = opts.batch_rows.max(1).min(df.height() - offset);
            let batch = to_batch(&df.slice(offset as i64, len), &cols, &prepared)?;
            report.rows += batch.num_rows() as u64;
            let s = Instant::now();
            sink(&batch);
            in_sink += s.elapsed();
            offset += len;
        }
        report.convert += t.elapsed().saturating_sub(in_sink);
        start = end;
    }
    report.polars = polars_time;
    Ok(report)
}

/// A failed cast (a counter of -1, a number too large) names its column and
/// file: the query is re-run per file and column to find them.
fn cast_error(err: PolarsError, prepared: &[Prepared], cols: &[Column], opts: &LoadOptions) -> HistoryError {
    for p in prepared {
        for c in cols {
            if let Err(cause) = p.frame(opts, None).select([col(c.name.as_str())]).collect() {
                return HistoryError::Cast {
                    file: p.file.clone(),
                    column: c.name.clone(),
                    expected: c.kind.expected(),
                    cause,
                };
            }
        }
    }
    HistoryError::Polars { context: "reading the history".into(), cause: err }
}

/// Names the first file whose `column` holds `value`.
fn file_with(prepared: &[Prepared], column: &str, value: &str) -> String {
    prepared
        .iter()
        .find(|p| {
            p.frame(&LoadOptions::default(), None)
                .filter(col(column).eq(lit(value)))
                .select([len()])
                .collect()
                .ok()
                .and_then(|df| df.columns().first().and_then(|c| c.cast(&DataType::UInt64).ok()))
                .and_then(|c| c.u64().ok().and_then(|ca| ca.get(0)))
                .is_some_and(|n| n > 0)
        })
        .map_or_else(|| "the history".to_string(), |p| p.file.clone())
}

fn polars_column<'a>(df: &'a DataFrame, name: &str) -> Result<&'a polars::prelude::Column, HistoryError> {
    df.column(name).map_err(polars_err(format!("column {name}")))
}

/// Copies one polars frame (the contract columns, cast) into an Arrow batch.
fn to_batch(df: &DataFrame, cols: &[Column], prepared: &[Prepared]) -> Result<RecordBatch, HistoryError> {
    let n = df.height();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    let ctx = |name: &str| polars_err(format!("column {name}"));
    for c in cols {
        let column = polars_column(df, &c.name)?;
        let array: ArrayRef = match c.kind {
            Kind::Str => {
                let ca = column.str().map_err(ctx(&c.name))?;
                let mut b = StringDictionaryBuilder::<Int32Type>::with_capacity(n, 256, 4096);
                for v in ca.iter() {
                    match v {
                        Some(s) => {
                            b.append(s)?;
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::NetType => {
                let ca = column.str().map_err(ctx(&c.name))?;
                let mut keys = Int8Builder::with_capacity(n);
                for v in ca.iter() {
                    match v {
                        None => keys.append_null(),
                        Some(s) => match NetType::parse(s) {
                            Some(t) => keys.append_value(t as i8),
                            None => {
                                return Err(HistoryError::BadValue {
                                    file: file_with(prepared, &c.name, s),
                                    column: c.name.clone(),
                                    value: s.to_string(),
                                    why: "not one of eth, wifi, cellular",
                                });
                            }
                        },
                    }
                }
                let values = Arc::new(StringArray::from_iter_values(NetType::ALL.map(NetType::as_str)));
                Arc::new(DictionaryArray::<Int8Type>::try_new(keys.finish(), values)?)
            }
            Kind::Ts => {
                let ca = column.i64().map_err(ctx(&c.name))?;
                let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
                match ca.cont_slice() {
                    Ok(s) => b.append_slice(s),
                    Err(_) => ca.iter().for_each(|v| b.append_option(v)),
                }
                Arc::new(b.finish())
            }
            Kind::Date => {
                let ca = column.i32().map_err(ctx(&c.name))?;
                let mut b = Date32Builder::with_capacity(n);
                ca.iter().for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            }
            Kind::U32 => {
                let ca = column.u32().map_err(ctx(&c.name))?;
                let mut b = UInt32Builder::with_capacity(n);
                match ca.cont_slice() {
                    Ok(s) => b.append_slice(s),
                    Err(_) => ca.iter().for_each(|v| b.append_option(v)),
                }
                Arc::new(b.finish())
            }
            Kind::U64 => {
                let ca = column.u64().map_err(ctx(&c.name))?;
                let mut b = UInt64Builder::with_capacity(n);
                ca.iter().for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            }
            Kind::F64 => {
                let ca = column.f64().map_err(ctx(&c.name))?;
                let mut b = Float64Builder::with_capacity(n);
                match ca.cont_slice() {
                    Ok(s) => b.append_slice(s),
                    Err(_) => ca.iter().for_each(|v| b.append_option(v)),
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(telemetry_schema(), arrays)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use arrow::array::{Array, Int64Array, UInt64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    const NOW: i64 = 1_795_514_460_000;

    /// The contract's valid examples as a telemetry batch.
    fn examples() -> RecordBatch {
        let text = include_str!("../../../contracts/telemetry-v1.valid.ndjson");
        let mut b = termwatch_telemetry::BatchBuilder::with_capacity(8);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            b.append(&termwatch_telemetry::decode(line.as_bytes(), NOW).expect("valid")).expect("append");
        }
        b.finish().expect("batch")
    }

    /// Writes `batch` as an export would (strings plain), with `extra` columns and `drop` left out.
    fn write(path: &Path, batch: &RecordBatch, drop: &str, extra: Vec<(Field, ArrayRef)>) {
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for (f, a) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() == drop {
                continue;
            }
            let (t, a) = match f.data_type() {
                ArrowType::Dictionary(_, _) => (ArrowType::Utf8, arrow::compute::cast(a, &ArrowType::Utf8).unwrap()),
                t => (t.clone(), a.clone()),
            };
            fields.push(Field::new(f.name(), t, true));
            arrays.push(a);
        }
        for (f, a) in extra {
            fields.push(f);
            arrays.push(a);
        }
        let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), out.schema(), None).unwrap();
        w.write(&out).unwrap();
        w.close().unwrap();
    }

    fn load_all(files: &[PathBuf], opts: &LoadOptions) -> Result<(Vec<RecordBatch>, LoadReport), HistoryError> {
        let mut batches = Vec::new();
        let report = load(files, opts, |b| batches.push(b.clone()))?;
        Ok((batches, report))
    }

    #[test]
    fn round_trips_a_telemetry_batch_in_the_order_it_was_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let n = batch.num_rows();
        assert!(n >= 3);
        // Accepted in reverse file order: the load must follow ingest_seq, not the file.
        let seq: ArrayRef = Arc::new(UInt64Array::from_iter_values((0..n as u64).rev()));
        let path = dir.path().join("a.parquet");
        write(&path, &batch, "", vec![(Field::new(SEQ_COLUMN, ArrowType::UInt64, false), seq)]);
        let (got, report) = load_all(&[path], &LoadOptions::default()).unwrap();
        assert_eq!((report.rows, report.order), (n as u64, SEQ_COLUMN));
        let got = arrow::compute::concat_batches(&telemetry_schema(), &got).unwrap();
        let reversed: Vec<usize> = (0..n).rev().collect();
        let indices = arrow::array::UInt32Array::from_iter_values(reversed.iter().map(|&i| i as u32));
        let want_cols: Vec<ArrayRef> =
            batch.columns().iter().map(|c| arrow::compute::take(c, &indices, None).unwrap()).collect();
        for (i, f) in telemetry_schema().fields().iter().enumerate() {
            let (g, w) = (got.column(i), &want_cols[i]);
            // Dictionaries may be laid out differently; compare values.
            let (g, w) = match f.data_type() {
                ArrowType::Dictionary(_, _) => (
                    arrow::compute::cast(g, &ArrowType::Utf8).unwrap(),
                    arrow::compute::cast(w, &ArrowType::Utf8).unwrap(),
                ),
                _ => (g.clone(), w.clone()),
            };
            assert_eq!(g.to_data(), w.to_data(), "column {}", f.name());
        }
    }

    #[test]
    fn without_ingest_seq_reports_come_in_event_time_order_and_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let path = dir.path().join("a.parquet");
        write(&path, &batch, "", Vec::new());
        let (got, report) = load_all(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
        assert_eq!(report.order, "ts");
        let ts: Vec<i64> = got
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::TimestampMillisecondArray>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(ts.is_sorted() && ts.len() == batch.num_rows());
        let (lo, hi) = (ts[0], ts[ts.len() - 1]);
        assert!(lo < hi, "the examples span some time");
        let opts = LoadOptions { from_ms: Some(lo + 1), to_ms: Some(hi), ..LoadOptions::default() };
        let (cut, _) = load_all(&[path], &opts).unwrap();
        let kept: usize = cut.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(kept, ts.iter().filter(|t| **t > lo && **t < hi).count());
    }

    #[test]
    fn reads_timestamps_of_another_unit_without_a_time_zone_as_utc() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let ms = batch.column(1).as_any().downcast_ref::<arrow::array::TimestampMillisecondArray>().unwrap();
        let ns: ArrayRef = Arc::new(arrow::array::TimestampNanosecondArray::from_iter_values(
            ms.values().iter().map(|v| v * 1_000_000),
        ));
        let path = dir.path().join("ns.parquet");
        let ns_type = ArrowType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None);
        write(&path, &batch, "ts", vec![(Field::new("ts", ns_type, false), ns)]);
        let lo = *ms.values().iter().min().unwrap();
        let opts = LoadOptions { from_ms: Some(lo + 1), ..LoadOptions::default() };
        let (got, _) = load_all(std::slice::from_ref(&path), &opts).unwrap();
        let mut got: Vec<i64> = got
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::TimestampMillisecondArray>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        let mut want: Vec<i64> = ms.values().iter().copied().filter(|t| *t > lo).collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn a_missing_column_names_the_file_and_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-region.parquet");
        write(&path, &examples(), "region", Vec::new());
        let err = load_all(std::slice::from_ref(&path), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("column region is missing"), "{err}");
    }

    #[test]
    fn a_column_of_the_wrong_type_names_the_file_and_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let path = dir.path().join("text-reads.parquet");
        let text: ArrayRef = Arc::new(StringArray::from_iter_values((0..batch.num_rows()).map(|_| "7")));
        write(&path, &batch, "card_reads", vec![(Field::new("card_reads", ArrowType::Utf8, true), text)]);
        let err = load_all(std::slice::from_ref(&path), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("column card_reads has type"), "{err}");
    }

    #[test]
    fn a_negative_counter_names_the_file_and_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let path = dir.path().join("negative.parquet");
        let neg: ArrayRef = Arc::new(Int64Array::from_iter_values((0..batch.num_rows() as i64).map(|i| i - 1)));
        write(&path, &batch, "print_jobs", vec![(Field::new("print_jobs", ArrowType::Int64, true), neg)]);
        let err = load_all(std::slice::from_ref(&path), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("column print_jobs"), "{err}");
    }

    #[test]
    fn a_null_in_a_required_column_names_the_file_and_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let batch = examples();
        let path = dir.path().join("null-id.parquet");
        let ids: ArrayRef = Arc::new(StringArray::from_iter((0..batch.num_rows()).map(|i| (i > 0).then_some("T-1"))));
        write(&path, &batch, "terminal_id", vec![(Field::new("terminal_id", ArrowType::Utf8, true), ids)]);
        let err = load_all(std::slice::from_ref(&path), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("column terminal_id has 1 nulls"), "{err}");
    }
}
