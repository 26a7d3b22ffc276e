//! `termwatch export` and training from its Parquet, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use termwatch_features::{FeatureConfig, FeatureEngine, WindowRows, names};
use termwatch_pipeline::{BatchConfig, BatchSink, MemoryDeadLetters, Pipeline, SinkError};

/// Runs the binary without the caller's TERMWATCH_* variables (it refuses unknown ones).
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERMWATCH_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).output().expect("runs termwatch")
}

fn termwatch(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "termwatch {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn simulate(d: &Path) -> (PathBuf, PathBuf) {
    let (history, labels) = (d.join("h.ndjson"), d.join("h.labels.ndjson"));
    // Two staged firmware rollouts (0.35 a week, times the fault scale), one
    // of them a regression, so that every feature table and every detector
    // has rows of both kinds.
    let config = d.join("sim.json");
    std::fs::write(&config, r#"{"faults": {"staged_rollouts_per_week": 0.35, "regression_share": 0.5}}"#)
        .expect("config");
    termwatch(&[
        "simulate",
        "--config",
        s(&config),
        "--terminals",
        "60",
        "--regions",
        "3",
        "--days",
        "2",
        "--interval-s",
        "300",
        "--seed",
        "2",
        // At 60 terminals and 2 days, fewer faults leave some detector without a positive window.
        "--fault-scale",
        "20",
        "--out",
        s(&history),
        "--labels",
        s(&labels),
    ]);
    (history, labels)
}

fn train(d: &Path, name: &str, inputs: &[&Path], labels: &Path, extra: &[&str]) -> serde_json::Value {
    let out = d.join(name);
    let mut args = vec!["train"];
    for i in inputs {
        args.extend(["--input", s(i)]);
    }
    args.extend(["--labels", s(labels), "--out", s(&out)]);
    args.extend(extra);
    termwatch(&args);
    serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).expect("artifact")).expect("json")
}

/// Every Parquet file under `dir`, in path order, read into batches.
fn read_parquet(dir: &Path) -> Vec<RecordBatch> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).expect("open"))
                .expect("parquet")
                .build()
                .expect("reader")
                .map(|b| b.expect("batch"))
        })
        .collect()
}

#[test]
fn training_from_an_export_fits_the_same_detectors_as_from_ndjson() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (history, labels) = simulate(d);
    let export = d.join("export");
    termwatch(&["export", "--input", s(&history), "--out", s(&export)]);

    let from_ndjson = train(d, "m-ndjson", &[&history], &labels, &[]);
    let from_parquet = train(d, "m-parquet", &[&export], &labels, &[]);
    assert_eq!(from_ndjson["detectors"].as_array().map(Vec::len), Some(5));
    assert_eq!(from_parquet["detectors"], from_ndjson["detectors"], "parameters and thresholds");
    for key in ["terminal_days", "first_window_end", "last_window_end"] {
        assert_eq!(from_parquet["trained_on"][key], from_ndjson["trained_on"][key], "{key}");
    }
    assert_ne!(from_parquet["trained_on"]["fingerprint"], from_ndjson["trained_on"]["fingerprint"]);

    // A time range cuts both paths alike.
    let range = ["--from", "2026-09-01T06:00:00Z", "--to", "2026-09-02T18:00:00Z"];
    let cut_ndjson = train(d, "c-ndjson", &[&history], &labels, &range);
    let cut_parquet = train(d, "c-parquet", &[&export], &labels, &range);
    assert_eq!(cut_parquet["detectors"], cut_ndjson["detectors"]);
    assert_eq!(cut_parquet["trained_on"]["first_window_end"], "2026-09-01T06:05:00Z");
    assert_ne!(cut_parquet["detectors"], from_parquet["detectors"], "the range changed what was trained on");
}

/// Collects the rows the feature engine computes, as training does.
type EngineState = Option<(FeatureEngine, Vec<WindowRows>)>;

#[derive(Clone, Default)]
struct Engine(Arc<Mutex<EngineState>>);

impl BatchSink for Engine {
    fn name(&self) -> &str {
        "engine"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let mut g = self.0.lock().unwrap();
        let (e, rows) = g.get_or_insert_with(|| (FeatureEngine::new(FeatureConfig::default()), Vec::new()));
        rows.extend(e.process_batch(batch));
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), SinkError> {
        let mut g = self.0.lock().unwrap();
        let (e, rows) = g.as_mut().unwrap();
        rows.extend(e.finish());
        Ok(())
    }
}

fn f64s(batch: &RecordBatch, name: &str) -> Vec<f64> {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

fn strs(batch: &RecordBatch, name: &str) -> Vec<String> {
    let c = batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    let c = c.as_string::<i32>();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

/// Flattens an exported feature table to (window_end, ids, features, baselines) rows.
type Row = (i64, Vec<String>, Vec<f64>, Vec<f64>);

fn exported(dir: &Path, ids: &[&str], names: &[&str], baselines: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in read_parquet(dir) {
        let end = b.column_by_name("window_end").expect("window_end").as_primitive::<TimestampMillisecondType>();
        let ids: Vec<Vec<String>> = ids.iter().map(|i| strs(&b, i)).collect();
        let f: Vec<Vec<f64>> = names.iter().map(|n| f64s(&b, n)).collect();
        let base: Vec<Vec<f64>> =
            if baselines { names.iter().map(|n| f64s(&b, &format!("{n}_baseline"))).collect() } else { Vec::new() };
        for r in 0..b.num_rows() {
            rows.push((
                end.value(r),
                ids.iter().map(|c| c[r].clone()).collect(),
                f.iter().map(|c| c[r]).collect(),
                base.iter().map(|c| c[r]).collect(),
            ));
        }
    }
    rows
}

#[test]
fn exported_features_are_the_engine_s_row_for_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (history, _) = simulate(d);
    let export = d.join("export");
    let out = termwatch(&["export", "--input", s(&history), "--out", s(&export)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("export: ") && stderr.contains("records/s"), "{stderr}");

    let engine = Engine::default();
    let pipeline = Pipeline::new(
        BatchConfig { max_rows: 1000, max_age: Duration::from_secs(3600) },
        vec![Box::new(engine.clone())],
        Box::new(MemoryDeadLetters::default()),
    );
    let report = termwatch_pipeline::replay(std::slice::from_ref(&history), pipeline);
    assert!(report.error.is_none());
    let g = engine.0.lock().unwrap();
    let (e, windows) = g.as_ref().unwrap();

    let terminal = |t: u32| {
        vec![
            e.terminal_id(t).to_string(),
            e.site_id(e.terminal_site(t)).to_string(),
            e.region_name(e.terminal_region(t)).to_string(),
        ]
    };
    let mut want: [Vec<Row>; 5] = Default::default();
    for w in windows {
        for r in &w.terminal_voltage {
            want[0].push((w.end_ms, terminal(r.terminal), r.features.to_vec(), r.baselines.to_vec()));
        }
        for r in &w.site_voltage {
            let ids = vec![e.site_id(r.site).to_string(), e.region_name(e.site_region(r.site)).to_string()];
            want[1].push((w.end_ms, ids, r.features.to_vec(), Vec::new()));
        }
        for r in &w.network {
            want[2].push((w.end_ms, vec![e.region_name(r.region).to_string()], r.features.to_vec(), Vec::new()));
        }
        for r in &w.aging {
            want[3].push((w.end_ms, terminal(r.terminal), r.features.to_vec(), r.baselines.to_vec()));
        }
        for r in &w.firmware {
            want[4].push((w.end_ms, vec![r.entity.to_string()], r.features.to_vec(), r.baselines.to_vec()));
        }
    }
    let terminal_ids: &[&str] = &["terminal_id", "site_id", "region"];
    let got = [
        exported(&export.join("features/terminal_voltage"), terminal_ids, &names::TERMINAL_VOLTAGE, true),
        exported(&export.join("features/site_voltage"), &["site_id", "region"], &names::SITE_VOLTAGE, false),
        exported(&export.join("features/network"), &["region"], &names::NETWORK, false),
        exported(&export.join("features/aging"), terminal_ids, &names::AGING, true),
        exported(&export.join("features/firmware"), &["cohort"], &names::FIRMWARE, true),
    ];
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("_manifest.json")).expect("manifest")).expect("json");
    for (table, (got, want)) in
        ["terminal_voltage", "site_voltage", "network", "aging", "firmware"].iter().zip(got.iter().zip(&want))
    {
        assert!(!want.is_empty(), "{table}: the history has rows");
        assert_eq!(got.len(), want.len(), "{table}: rows");
        // Bit for bit: the export must not round or reorder what the engine computed.
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!((g.0, &g.1), (w.0, &w.1), "{table} row {i}");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!((bits(&g.2), bits(&g.3)), (bits(&w.2), bits(&w.3)), "{table} row {i}");
        }
        assert_eq!(manifest["tables"][format!("features/{table}")]["rows"], want.len() as u64, "{table}");
    }

    // Telemetry: every accepted report once, in a day partition of its ts.
    let telemetry = read_parquet(&export.join("telemetry"));
    let rows: usize = telemetry.iter().map(RecordBatch::num_rows).sum();
    let reached = report.stats.accepted - report.stats.duplicates - report.stats.too_old;
    assert_eq!(rows as u64, reached, "accepted reports less those dropped as duplicates");
    assert_eq!(manifest["records"]["accepted"], report.stats.accepted);
    assert_eq!(manifest["tables"]["telemetry"]["rows"], reached);
    for day in std::fs::read_dir(export.join("telemetry")).expect("list") {
        let day = day.expect("entry").path();
        let name = day.file_name().unwrap().to_string_lossy().into_owned();
        let date = name.strip_prefix("day=").expect("hive partition");
        for b in read_parquet(&day) {
            let ts = b.column_by_name("ts").unwrap().as_primitive::<TimestampMillisecondType>();
            assert!(ts.values().iter().all(|t| termwatch_telemetry::time::format_rfc3339_ms(*t).starts_with(date)));
        }
    }
}

#[test]
fn rejected_records_are_counted_and_dead_lettered_and_the_rest_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
    let valid = std::fs::read_to_string(contracts.join("telemetry-v1.valid.ndjson")).expect("valid");
    let bad = r#"{"terminal_id":"T-9","ts":"2026-11-24T10:01:00Z","region":"east-07","card_read_errors":-3}"#;
    let input = d.join("mixed.ndjson");
    std::fs::write(&input, format!("{valid}{bad}\n")).expect("write");
    let valid_n = valid.lines().filter(|l| !l.trim().is_empty()).count() as u64;

    let export = d.join("export");
    let dead = d.join("dead.ndjson");
    let out = termwatch(&["export", "--input", s(&input), "--out", s(&export), "--dead-letters", s(&dead)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 rejected (card_read_errors:out_of_range 1)"), "{stderr}");

    let dead: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).expect("dead").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["field"], "card_read_errors");
    assert_eq!(dead[0]["raw"], bad);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("_manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["records"]["rejected"], 1);
    assert_eq!(manifest["records"]["accepted"], valid_n);
    let telemetry = read_parquet(&export.join("telemetry"));
    assert_eq!(telemetry.iter().map(RecordBatch::num_rows).sum::<usize>() as u64, valid_n);
    assert!(telemetry.iter().all(|b| !strs(b, "terminal_id").contains(&"T-9".to_string())));

    // A second export into the same directory is refused...
    let again = run(&["export", "--input", s(&input), "--out", s(&export)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    // ...unless asked to overwrite it, and never over a directory that is not an export.
    termwatch(&["export", "--input", s(&input), "--out", s(&export), "--overwrite"]);
    std::fs::write(export.join("notes.txt"), "mine").expect("write");
    let foreign = run(&["export", "--input", s(&input), "--out", s(&export), "--overwrite"]);
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("notes.txt"));
    assert!(export.join("notes.txt").exists() && export.join("_manifest.json").exists());
}

#[test]
fn training_names_the_file_and_column_of_bad_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
    let export = d.join("export");
    termwatch(&["export", "--input", s(&contracts.join("telemetry-v1.valid.ndjson")), "--out", s(&export)]);
    let file = read_dir_files(&export.join("telemetry")).remove(0);
    // Rewrite the file without its region column.
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).expect("open"))
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect();
    let keep: Vec<usize> =
        (0..batches[0].num_columns()).filter(|&i| batches[0].schema().field(i).name() != "region").collect();
    let projected = batches[0].project(&keep).expect("project");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).expect("create"), projected.schema(), None)
            .expect("writer");
    w.write(&projected).expect("write");
    w.close().expect("close");
    let labels = d.join("labels.ndjson");
    std::fs::write(&labels, "").expect("write");
    let out = run(&["train", "--input", s(&export), "--labels", s(&labels), "--out", s(&d.join("m"))]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(s(&file)) && stderr.contains("column region is missing"), "{stderr}");
}

fn read_dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).expect("list") {
        for f in std::fs::read_dir(day.expect("entry").path()).expect("list") {
            out.push(f.expect("entry").path());
        }
    }
    out.sort();
    out
}
