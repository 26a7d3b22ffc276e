//! `termwatch export`: telemetry history and the features the one feature
//! code path computes from it, as Hive-partitioned Parquet for analysts.
//!
//! ```text
//! DIR/_manifest.json                                   written last: an export without it is incomplete
//! DIR/telemetry/day=YYYY-MM-DD/part-NNNNN.parquet      one row per accepted report
//! DIR/features/<table>/day=YYYY-MM-DD/part-NNNNN.parquet
//! ```
//!
//! Records go through the same pipeline as `termwatch replay` (decode,
//! validation, dead letters, duplicate removal), and the features through
//! the same [`FeatureEngine`] as training and scoring. Days are UTC days of
//! event time: a report's `ts`, a feature row's `window_end`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows, names};
use termwatch_pipeline::{BatchConfig, BatchSink, DeadLetterSink, FileDeadLetters, Pipeline, SinkError};
use termwatch_telemetry::telemetry_schema;
use termwatch_telemetry::time::format_rfc3339_ms;

/// The column that keeps the order in which the pipeline accepted the
/// reports (0-based over the whole export). Not a contract field: event time
/// does not say it, and the feature engine's results depend on it (a report
/// that arrives after its window has closed is late and dropped, exactly as
/// in service), so training from an export replays the reports in this order.
pub const SEQ_COLUMN: &str = "ingest_seq";

/// Format of `_manifest.json`.
pub const MANIFEST_FORMAT: &str = "termwatch-export-v1";
pub const MANIFEST: &str = "_manifest.json";
pub const TELEMETRY_DIR: &str = "telemetry";
pub const FEATURES_DIR: &str = "features";

/// Rows per Parquet row group: small enough that a reader filtering on
/// `ingest_seq` or `ts` skips most of a day by the row groups' statistics.
const ROW_GROUP_ROWS: usize = 131_072;
const DAY_MS: i64 = 86_400_000;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Telemetry NDJSON file, plain or gzip (recognised by content); repeat for several, read in order as
    /// consecutive parts of one history.
    #[arg(long = "input", required = true, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Directory to write to; it must be empty or absent unless --overwrite.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Where rejected records go (as with `termwatch replay`); without it they are only counted.
    #[arg(long = "dead-letter", alias = "dead-letters", value_name = "FILE")]
    dead_letter: Option<PathBuf>,
    /// Replace an earlier export in DIR (only the export's own files; anything else there is refused).
    #[arg(long)]
    overwrite: bool,
}

/// The schema of `telemetry/`: the contract's columns in the batch order,
/// identifiers as plain strings (what pandas and polars read without
/// categorical surprises; Parquet dictionary-encodes them on disk anyway),
/// then [`SEQ_COLUMN`].
pub fn telemetry_export_schema() -> SchemaRef {
    let source = telemetry_schema();
    let mut fields: Vec<Field> = source
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, _) => Field::new(f.name(), DataType::Utf8, f.is_nullable()),
            _ => f.as_ref().clone(),
        })
        .collect();
    fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new_with_metadata(fields, source.metadata().clone()))
}

fn day_string(day: i64) -> String {
    let mut s = format_rfc3339_ms(day * DAY_MS);
    s.truncate(10);
    s
}

/// One table's Parquet files, one open writer per day that may still get rows.
struct DayWriters {
    root: PathBuf,
    schema: SchemaRef,
    open: BTreeMap<i64, ArrowWriter<BufWriter<File>>>,
    /// Next part number per day: a day reopened after its writer was closed gets a new part.
    next_part: BTreeMap<i64, u32>,
    rows_per_day: BTreeMap<i64, u64>,
    files: Vec<String>,
}

impl DayWriters {
    fn new(root: PathBuf, schema: SchemaRef) -> Self {
        DayWriters {
            root,
            schema,
            open: BTreeMap::new(),
            next_part: BTreeMap::new(),
            rows_per_day: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    fn write(&mut self, day: i64, batch: &RecordBatch) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let writer = match self.open.entry(day) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let dir = self.root.join(format!("day={}", day_string(day)));
                std::fs::create_dir_all(&dir)
                    .map_err(|err| SinkError::io(format!("cannot create {}", dir.display()), err))?;
                let part = self.next_part.entry(day).or_insert(0);
                let path = dir.join(format!("part-{part:05}.parquet"));
                *part += 1;
                let file = File::create(&path)
                    .map_err(|err| SinkError::io(format!("cannot create {}", path.display()), err))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .set_created_by(format!("termwatch {}", env!("CARGO_PKG_VERSION")))
                    .build();
                let writer = ArrowWriter::try_new(BufWriter::new(file), self.schema.clone(), Some(props))
                    .map_err(|err| SinkError::Other(format!("cannot start {}: {err}", path.display())))?;
                self.files.push(path.display().to_string());
                e.insert(writer)
            }
        };
        writer.write(batch).map_err(|err| SinkError::Other(format!("cannot write {}: {err}", self.root.display())))?;
        *self.rows_per_day.entry(day).or_default() += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the writers of days before `day`.
    fn close_before(&mut self, day: i64) -> Result<(), SinkError> {
        let keep = self.open.split_off(&day);
        let done = std::mem::replace(&mut self.open, keep);
        for (d, w) in done {
            w.close().map_err(|err| {
                SinkError::Other(format!("cannot finish {}/day={}: {err}", self.root.display(), day_string(d)))
            })?;
        }
        Ok(())
    }

    fn close_all(&mut self) -> Result<(), SinkError> {
        self.close_before(i64::MAX)
    }

    fn summary(&self) -> TableSummary {
        TableSummary {
            rows: self.rows_per_day.values().sum(),
            days: self.rows_per_day.iter().map(|(d, n)| (day_string(*d), *n)).collect(),
            files: self.files.len(),
        }
    }
}

/// Column builders for one feature table. `N` is the length of the table's
/// feature array, taken from `names::*` so a change of the feature set
/// changes the columns with it (and a mismatch does not compile).
struct FeatureTable<const N: usize> {
    ids: &'static [&'static str],
    with_baselines: bool,
    writers: DayWriters,
}

/// Rows of one table in one window, resolved to strings.
struct FeatureBatch<const N: usize> {
    window_end: TimestampMillisecondBuilder,
    ids: Vec<StringBuilder>,
    features: [Float64Builder; N],
    baselines: [Float64Builder; N],
    len: usize,
}

impl<const N: usize> FeatureTable<N> {
    fn new(root: &Path, table: &str, names: [&'static str; N], ids: &'static [&'static str], baselines: bool) -> Self {
        let mut fields =
            vec![Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false)];
        fields.extend(ids.iter().map(|id| Field::new(*id, DataType::Utf8, false)));
        fields.extend(names.iter().map(|n| Field::new(*n, DataType::Float64, false)));
        if baselines {
            fields.extend(names.iter().map(|n| Field::new(format!("{n}_baseline"), DataType::Float64, false)));
        }
        let schema = Arc::new(Schema::new(fields));
        FeatureTable { ids, with_baselines: baselines, writers: DayWriters::new(root.join(table), schema) }
    }

    fn batch(&self) -> FeatureBatch<N> {
        FeatureBatch {
            window_end: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            ids: self.ids.iter().map(|_| StringBuilder::new()).collect(),
            features: std::array::from_fn(|_| Float64Builder::new()),
            baselines: std::array::from_fn(|_| Float64Builder::new()),
            len: 0,
        }
    }

    fn write(&mut self, day: i64, mut b: FeatureBatch<N>) -> Result<(), SinkError> {
        if b.len == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(b.window_end.finish())];
        columns.extend(b.ids.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef));
        columns.extend(b.features.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef));
        if self.with_baselines {
            columns.extend(b.baselines.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef));
        }
        let batch = RecordBatch::try_new(self.writers.schema.clone(), columns)
            .map_err(|e| SinkError::Other(format!("feature table {}: {e}", self.writers.root.display())))?;
        self.writers.write(day, &batch)
    }
}

impl<const N: usize> FeatureBatch<N> {
    fn push(&mut self, end_ms: i64, ids: &[&str], features: &[f64; N], baselines: Option<&[f64; N]>) {
        self.window_end.append_value(end_ms);
        for (b, id) in self.ids.iter_mut().zip(ids) {
            b.append_value(id);
        }
        for (b, v) in self.features.iter_mut().zip(features) {
            b.append_value(*v);
        }
        if let Some(baselines) = baselines {
            for (b, v) in self.baselines.iter_mut().zip(baselines) {
                b.append_value(*v);
            }
        }
        self.len += 1;
    }
}

const TERMINAL_IDS: &[&str] = &["terminal_id", "site_id", "region"];
const SITE_IDS: &[&str] = &["site_id", "region"];
const REGION_IDS: &[&str] = &["region"];
/// `MODEL/FIRMWARE`, as alerts-v1 names a cohort.
const COHORT_IDS: &[&str] = &["cohort"];

/// The export's state: the feature engine and the open files.
struct Exporter {
    engine: FeatureEngine,
    telemetry: DayWriters,
    terminal_voltage: FeatureTable<{ names::TERMINAL_VOLTAGE.len() }>,
    site_voltage: FeatureTable<{ names::SITE_VOLTAGE.len() }>,
    network: FeatureTable<{ names::NETWORK.len() }>,
    aging: FeatureTable<{ names::AGING.len() }>,
    firmware: FeatureTable<{ names::FIRMWARE.len() }>,
    seq: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    /// Latest UTC day of a report: reports are rarely more than a day late,
    /// so writers of older days are closed (a later straggler opens a new part).
    max_day: i64,
}

impl Exporter {
    fn new(dir: &Path, features: FeatureConfig) -> Self {
        let f = dir.join(FEATURES_DIR);
        Exporter {
            engine: FeatureEngine::new(features),
            telemetry: DayWriters::new(dir.join(TELEMETRY_DIR), telemetry_export_schema()),
            terminal_voltage: FeatureTable::new(&f, "terminal_voltage", names::TERMINAL_VOLTAGE, TERMINAL_IDS, true),
            site_voltage: FeatureTable::new(&f, "site_voltage", names::SITE_VOLTAGE, SITE_IDS, false),
            network: FeatureTable::new(&f, "network", names::NETWORK, REGION_IDS, false),
            aging: FeatureTable::new(&f, "aging", names::AGING, TERMINAL_IDS, true),
            firmware: FeatureTable::new(&f, "firmware", names::FIRMWARE, COHORT_IDS, true),
            seq: 0,
            first_ts: None,
            last_ts: None,
            max_day: i64::MIN,
        }
    }

    fn telemetry_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let err = |e: arrow::error::ArrowError| SinkError::Other(format!("telemetry batch for Parquet: {e}"));
        let n = batch.num_rows();
        let schema = self.telemetry.schema.clone();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (col, field) in batch.columns().iter().zip(schema.fields()) {
            columns.push(if col.data_type() == field.data_type() {
                col.clone()
            } else {
                cast(col, field.data_type()).map_err(err)?
            });
        }
        columns.push(Arc::new(UInt64Array::from_iter_values(self.seq..self.seq + n as u64)));
        self.seq += n as u64;
        let out = RecordBatch::try_new(schema, columns).map_err(err)?;

        let ts = batch
            .column_by_name("ts")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| SinkError::Other("telemetry batch without a ts column".into()))?;
        let days: Vec<i64> = ts.values().iter().map(|t| t.div_euclid(DAY_MS)).collect();
        if let (Some(lo), Some(hi)) = (ts.values().iter().min(), ts.values().iter().max()) {
            self.first_ts = Some(self.first_ts.map_or(*lo, |f| f.min(*lo)));
            self.last_ts = Some(self.last_ts.map_or(*hi, |l| l.max(*hi)));
        }
        let mut distinct = days.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if let [day] = distinct[..] {
            self.telemetry.write(day, &out)?;
        } else {
            for day in &distinct {
                let mask = arrow::array::BooleanArray::from_iter(days.iter().map(|d| Some(d == day)));
                self.telemetry.write(*day, &filter_record_batch(&out, &mask).map_err(err)?)?;
            }
        }
        if let Some(&last) = distinct.last()
            && last > self.max_day
        {
            self.max_day = last;
            self.telemetry.close_before(last - 1)?;
        }
        Ok(())
    }

    fn feature_rows(&mut self, windows: &[WindowRows]) -> Result<(), SinkError> {
        // Windows close in time order: a run of windows of one day becomes
        // one batch per table.
        let mut i = 0;
        while i < windows.len() {
            let day = windows[i].end_ms.div_euclid(DAY_MS);
            let run_end =
                windows[i..].iter().position(|w| w.end_ms.div_euclid(DAY_MS) != day).map_or(windows.len(), |k| i + k);
            let run = &windows[i..run_end];
            let e = &self.engine;
            let mut tv = self.terminal_voltage.batch();
            let mut sv = self.site_voltage.batch();
            let mut net = self.network.batch();
            let mut ag = self.aging.batch();
            let mut fw = self.firmware.batch();
            for w in run {
                for r in &w.terminal_voltage {
                    let ids = [
                        e.terminal_id(r.terminal),
                        e.site_id(e.terminal_site(r.terminal)),
                        e.region_name(e.terminal_region(r.terminal)),
                    ];
                    tv.push(w.end_ms, &ids, &r.features, Some(&r.baselines));
                }
                for r in &w.site_voltage {
                    sv.push(w.end_ms, &[e.site_id(r.site), e.region_name(e.site_region(r.site))], &r.features, None);
                }
                for r in &w.network {
                    net.push(w.end_ms, &[e.region_name(r.region)], &r.features, None);
                }
                for r in &w.aging {
                    let ids = [
                        e.terminal_id(r.terminal),
                        e.site_id(e.terminal_site(r.terminal)),
                        e.region_name(e.terminal_region(r.terminal)),
                    ];
                    ag.push(w.end_ms, &ids, &r.features, Some(&r.baselines));
                }
                for r in &w.firmware {
                    fw.push(w.end_ms, &[&r.entity], &r.features, Some(&r.baselines));
                }
            }
            self.terminal_voltage.write(day, tv)?;
            self.site_voltage.write(day, sv)?;
            self.network.write(day, net)?;
            self.aging.write(day, ag)?;
            self.firmware.write(day, fw)?;
            self.terminal_voltage.writers.close_before(day)?;
            self.site_voltage.writers.close_before(day)?;
            self.network.writers.close_before(day)?;
            self.aging.writers.close_before(day)?;
            self.firmware.writers.close_before(day)?;
            i = run_end;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.telemetry.close_all()?;
        self.terminal_voltage.writers.close_all()?;
        self.site_voltage.writers.close_all()?;
        self.network.writers.close_all()?;
        self.aging.writers.close_all()?;
        self.firmware.writers.close_all()
    }
}

#[derive(Clone)]
struct ExportSink(Arc<Mutex<Exporter>>);

impl ExportSink {
    fn with<T>(&self, f: impl FnOnce(&mut Exporter) -> Result<T, SinkError>) -> Result<T, SinkError> {
        let mut g = self.0.lock().map_err(|_| SinkError::Other("export lock poisoned".into()))?;
        f(&mut g)
    }
}

impl BatchSink for ExportSink {
    fn name(&self) -> &str {
        "parquet-export"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.with(|x| {
            x.telemetry_batch(batch)?;
            let windows = x.engine.process_batch(batch);
            x.feature_rows(&windows)
        })
    }
    fn end_of_input(&mut self) -> Result<(), SinkError> {
        self.with(|x| {
            let windows = x.engine.finish();
            x.feature_rows(&windows)?;
            x.close()
        })
    }
}

#[derive(Serialize)]
struct TableSummary {
    rows: u64,
    /// Rows per UTC day.
    days: BTreeMap<String, u64>,
    files: usize,
}

#[derive(Serialize)]
struct Records {
    read: u64,
    accepted: u64,
    rejected: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    duplicates_dropped: u64,
    too_old_dropped: u64,
    blank_lines: u64,
    /// Accepted reports the feature engine dropped because their window had closed.
    late_for_features: u64,
}

#[derive(Serialize)]
struct Input {
    path: String,
    bytes: u64,
}

#[derive(Serialize)]
struct Manifest {
    format: &'static str,
    termwatch_version: &'static str,
    created_at: String,
    inputs: Vec<Input>,
    dead_letters: Option<String>,
    records: Records,
    first_ts: Option<String>,
    last_ts: Option<String>,
    /// The order column of `telemetry/` (see the README).
    order_column: &'static str,
    feature_config: FeatureConfig,
    feature_names: BTreeMap<&'static str, Vec<&'static str>>,
    tables: BTreeMap<String, TableSummary>,
}

/// Checks `dir` can take an export: absent, empty, or (with `overwrite`)
/// holding only an earlier export, which is removed.
fn prepare_dir(dir: &Path, overwrite: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        return std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()));
    }
    let entries: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!("{} is not empty; use --overwrite to replace an earlier export there", dir.display());
    }
    let ours = [TELEMETRY_DIR, FEATURES_DIR, MANIFEST];
    if let Some(other) = entries.iter().find(|e| !ours.iter().any(|o| e.as_os_str() == *o)) {
        bail!(
            "{} holds {}, which an export does not write: refusing to overwrite a directory that is not an export",
            dir.display(),
            other.to_string_lossy()
        );
    }
    // The manifest goes first: a half-removed export must not look complete.
    for name in [MANIFEST, TELEMETRY_DIR, FEATURES_DIR] {
        let p = dir.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut inputs = Vec::new();
    for input in &args.inputs {
        termwatch_pipeline::NdjsonFile::open(input)?;
        let bytes = std::fs::metadata(input).with_context(|| format!("cannot read {}", input.display()))?.len();
        inputs.push(Input { path: input.display().to_string(), bytes });
    }
    prepare_dir(&args.out, args.overwrite)?;
    let features = FeatureConfig::default();
    let sink = ExportSink(Arc::new(Mutex::new(Exporter::new(&args.out, features.clone()))));
    let dead_letters: Box<dyn DeadLetterSink> = match &args.dead_letter {
        Some(p) => Box::new(FileDeadLetters::create(p)?),
        None => Box::new(termwatch_pipeline::CountOnlyDeadLetters),
    };
    let started = Instant::now();
    let pipeline = Pipeline::new(
        // Feature rows do not depend on batch boundaries; large batches write fewer, larger pages.
        BatchConfig { max_rows: 8192, max_age: Duration::from_secs(3600) },
        vec![Box::new(sink.clone())],
        dead_letters,
    );
    let report = termwatch_pipeline::replay(&args.inputs, pipeline);
    if let Some(e) = report.error {
        return Err(e).context(format!("export stopped; {} is incomplete (no {MANIFEST})", args.out.display()));
    }
    let x = sink.0.lock().map_err(|_| anyhow::anyhow!("export lock poisoned"))?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let stats = &report.stats;
    let mut tables = BTreeMap::new();
    tables.insert(TELEMETRY_DIR.to_string(), x.telemetry.summary());
    tables.insert(format!("{FEATURES_DIR}/terminal_voltage"), x.terminal_voltage.writers.summary());
    tables.insert(format!("{FEATURES_DIR}/site_voltage"), x.site_voltage.writers.summary());
    tables.insert(format!("{FEATURES_DIR}/network"), x.network.writers.summary());
    tables.insert(format!("{FEATURES_DIR}/aging"), x.aging.writers.summary());
    tables.insert(format!("{FEATURES_DIR}/firmware"), x.firmware.writers.summary());
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        termwatch_version: env!("CARGO_PKG_VERSION"),
        created_at: format_rfc3339_ms(termwatch_telemetry::time::now_ms()),
        inputs,
        dead_letters: args.dead_letter.as_ref().map(|p| p.display().to_string()),
        records: Records {
            read: stats.read,
            accepted: stats.accepted,
            rejected: stats.rejected_total(),
            rejected_by_reason: stats.rejected.iter().map(|((f, p), n)| (format!("{f}:{p}"), *n)).collect(),
            duplicates_dropped: stats.duplicates,
            too_old_dropped: stats.too_old,
            blank_lines: report.blank_lines,
            late_for_features: x.engine.counters().late,
        },
        first_ts: x.first_ts.map(format_rfc3339_ms),
        last_ts: x.last_ts.map(format_rfc3339_ms),
        order_column: SEQ_COLUMN,
        feature_config: features,
        feature_names: [
            ("terminal_voltage", names::TERMINAL_VOLTAGE.to_vec()),
            ("site_voltage", names::SITE_VOLTAGE.to_vec()),
            ("network", names::NETWORK.to_vec()),
            ("aging", names::AGING.to_vec()),
            ("firmware", names::FIRMWARE.to_vec()),
        ]
        .into(),
        tables,
    };
    let path = args.out.join(MANIFEST);
    let json = serde_json::to_string_pretty(&manifest).context("serialising the manifest")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    let rows = |t: &str| manifest.tables.get(t).map_or(0, |s| s.rows);
    eprintln!(
        "export: {stats}, {} batches, {secs:.2} s, {:.0} records/s; telemetry {} rows over {} days; features: terminal_voltage {}, site_voltage {}, network {}, aging {}, firmware {}",
        stats.batches,
        stats.read as f64 / secs,
        rows(TELEMETRY_DIR),
        manifest.tables.get(TELEMETRY_DIR).map_or(0, |s| s.days.len()),
        rows("features/terminal_voltage"),
        rows("features/site_voltage"),
        rows("features/network"),
        rows("features/aging"),
        rows("features/firmware"),
    );
    println!("wrote {}", args.out.display());
    Ok(())
}
