//! `termwatch bench --smoke`: the benchmark runs end to end and reports
//! every measurement (its figures are not checked: CI machines vary; the
//! benchmark's own cross-checks, such as both replay paths raising the same
//! alerts, make it fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn smoke_run_reports_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
    // The binary refuses TERMWATCH_* variables it does not know.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TERMWATCH_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["bench", "--smoke", "--json"])
        .arg(&json)
        .arg("--models")
        .arg(&models)
        .arg("--scratch")
        .arg(dir.path())
        .output()
        .expect("runs termwatch");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench --smoke failed:\n{stdout}\n{stderr}");

    // Every measurement, by section and the start of its name, in the table...
    let expected = [
        ("machine", "load average (1 min) at the start"),
        ("replay", "history: records"),
        ("replay", "end to end, all cores: records/s"),
        ("replay", "end to end, all cores: MB/s"),
        ("replay", "end to end: CPU time per record"),
        ("replay", "one core: read + decode + validate + dedup + batch"),
        ("replay", "one core: features"),
        ("stages", "one process, one engine: features"),
        ("stages", "3 stage-1 engines + merging stage, one core: features"),
        ("stages", "features: two stages / one engine"),
        ("stages", "whole path, one core: two stages / one process"),
        ("stages", "partials: bytes per site per window"),
        ("stages", "lessons back: bytes per window"),
        ("replay", "one core: detectors + alert state"),
        ("replay", "one core: alert events out"),
        ("replay", "one core: end to end"),
        ("latency", "service path (1 decode+score thread): maximum sustained rate"),
        ("latency", "paced input rate"),
        ("latency", "arrival -> alert events out: p50"),
        ("latency", "arrival -> alert events out: p99"),
        ("memory", "feature state per terminal at 1,000"),
        ("memory", "RSS growth per terminal at 1,000"),
        ("memory", "feature state per terminal at 2,000"),
        ("memory", "RSS growth per terminal at 2,000"),
        ("scrape", "GET /metrics at 10,000 tracked terminals"),
        ("kafka", "skipped"),
        ("machine", "load average (1 min) at the end"),
    ];
    for (section, name) in expected {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("| {section} | {name}"))),
            "no row {section} / {name} in:\n{stdout}"
        );
    }
    // ...and in the JSON, each with a figure where it has one.
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json parses");
    let table_rows = stdout.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| section")).count();
    assert_eq!(rows.len(), table_rows, "every table row is in the JSON");
    for (section, name) in expected {
        let row = rows
            .iter()
            .find(|r| r["section"] == section && r["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .unwrap_or_else(|| panic!("no JSON row {section} / {name}"));
        if name != "skipped" {
            let v = row["value"].as_f64().unwrap_or_else(|| panic!("{section} / {name}: no figure: {row}"));
            assert!(v.is_finite() && v >= 0.0, "{section} / {name}: {v}");
        }
    }
    let rate = |name: &str| {
        rows.iter().find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(name))).unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert!(rate("end to end, all cores: records/s") > 0.0 && rate("history: records") > 1000.0);
    // Targets are stated, and judged.
    let p99 = rows.iter().find(|r| r["name"].as_str().is_some_and(|n| n.contains("p99"))).unwrap();
    assert_eq!(p99["target"]["op"], "<=");
    assert!(p99["met"].is_boolean());
    // The scratch history is removed.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("termwatch-bench-"))
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}
