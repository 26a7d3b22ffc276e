//! The `termwatch` binary as an operator uses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;

fn termwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_termwatch")).args(args).output().expect("runs termwatch")
}

fn contracts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An operator's mistake: one line naming the culprit, non-zero exit, no panic.
fn assert_operator_error(out: &Output, names: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(names), "{stderr}");
}

#[test]
fn replays_the_valid_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = dir.path().join("dead.ndjson");
    let input = contracts().join("telemetry-v1.valid.ndjson");
    let out =
        termwatch(&["replay", "--input", input.to_str().expect("utf8"), "--dead-letter", dl.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("replay: 3 read, 3 accepted, 0 rejected, 1 batches"), "{stdout}");
    assert!(stdout.contains("records/s"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&dl).expect("dead letters"), "");
}

#[derive(serde::Deserialize)]
struct InvalidExample {
    rejected_for: String,
    line: String,
}

#[test]
fn dead_letters_every_invalid_example_with_field_position_and_raw_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples: Vec<InvalidExample> = std::fs::read_to_string(contracts().join("telemetry-v1.invalid.ndjson"))
        .expect("examples")
        .lines()
        .map(|l| serde_json::from_str(l).expect("example"))
        .collect();
    // Valid records around the bad ones: the bad ones must not take them down.
    let valid = std::fs::read_to_string(contracts().join("telemetry-v1.valid.ndjson")).expect("valid");
    let valid = valid.lines().next().expect("a valid line");
    let input = dir.path().join("mixed.ndjson");
    let mut f = std::fs::File::create(&input).expect("create");
    for (i, e) in examples.iter().enumerate() {
        // Distinct terminals: the same report twice would be a duplicate.
        let valid = valid.replace("T-000123", &format!("T-{i:06}"));
        writeln!(f, "{valid}\n{}", e.line).expect("write");
    }
    drop(f);
    let dl = dir.path().join("dead.ndjson");
    let out =
        termwatch(&["replay", "--input", input.to_str().expect("utf8"), "--dead-letter", dl.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n = examples.len();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("replay: {} read, {n} accepted, {n} rejected (", 2 * n)), "{stdout}");

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dl)
        .expect("dead letters")
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead letter is JSON"))
        .collect();
    assert_eq!(dead.len(), n);
    for (i, (d, e)) in dead.iter().zip(&examples).enumerate() {
        assert_eq!(d["field"], e.rejected_for.as_str(), "{d}");
        assert_eq!(d["raw"], e.line.as_str(), "raw bytes kept");
        assert_eq!(d["line"], 2 * i as u64 + 2, "line number of the bad record");
        assert_eq!(d["file"], input.to_str().expect("utf8"));
        assert!(d["error"].as_str().is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn reads_gzip_and_several_inputs_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = std::fs::read(contracts().join("telemetry-v1.valid.ndjson")).expect("valid");
    let gz_path = dir.path().join("history.ndjson.gz");
    let mut gz = GzEncoder::new(std::fs::File::create(&gz_path).expect("create"), Compression::fast());
    gz.write_all(&valid).expect("compress");
    gz.finish().expect("finish");
    let plain = contracts().join("telemetry-v1.valid.ndjson");
    let dl = dir.path().join("dead.ndjson");
    let out = termwatch(&[
        "replay",
        "--input",
        gz_path.to_str().expect("utf8"),
        "--input",
        plain.to_str().expect("utf8"),
        "--dead-letter",
        dl.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The second input repeats the first: its reports are dropped as duplicates.
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("replay: 6 read, 6 accepted, 0 rejected"), "{stdout}");
    assert!(stdout.contains("3 duplicates dropped"), "{stdout}");
}

#[test]
fn missing_input_is_a_one_line_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = dir.path().join("dead.ndjson");
    let out =
        termwatch(&["replay", "--input", "/no/such/telemetry.ndjson", "--dead-letter", dl.to_str().expect("utf8")]);
    assert_operator_error(&out, "/no/such/telemetry.ndjson");
}

#[test]
fn unwritable_dead_letter_file_is_a_one_line_error_naming_it() {
    let input = contracts().join("telemetry-v1.valid.ndjson");
    let out =
        termwatch(&["replay", "--input", input.to_str().expect("utf8"), "--dead-letter", "/no/such/dir/dead.ndjson"]);
    assert_operator_error(&out, "/no/such/dir/dead.ndjson");
}

#[test]
fn a_full_disk_is_one_line_naming_the_file_and_saying_why_once() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("labels.ndjson");
    let out = termwatch(&[
        "simulate",
        "--terminals",
        "5",
        "--days",
        "1",
        "--out",
        "/dev/full",
        "--labels",
        labels.to_str().expect("utf8"),
    ]);
    assert_operator_error(&out, "/dev/full");
    // The cause once: it was in the message and again as its source.
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("No space left on device").count(), 1, "{stderr}");
}

#[test]
fn corrupt_gzip_stops_with_an_error_naming_the_file_after_keeping_what_was_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = std::fs::read_to_string(contracts().join("telemetry-v1.valid.ndjson")).expect("valid");
    let line = valid.lines().next().expect("line");
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for _ in 0..5000 {
        writeln!(gz, "{line}").expect("compress");
    }
    let mut bytes = gz.finish().expect("finish");
    let cut = bytes.len() * 3 / 4;
    bytes[cut..].fill(0x55);
    let path = dir.path().join("damaged.ndjson.gz");
    std::fs::write(&path, &bytes).expect("write");
    let dl = dir.path().join("dead.ndjson");
    let out =
        termwatch(&["replay", "--input", path.to_str().expect("utf8"), "--dead-letter", dl.to_str().expect("utf8")]);
    assert_operator_error(&out, "damaged.ndjson.gz");
    // The summary still reports what was read before the damage.
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("replay: ") && !stdout.starts_with("replay: 0 read"), "{stdout}");
}

#[test]
fn usage_errors_exit_non_zero_without_panicking() {
    let out = termwatch(&["replay", "--dead-letter", "/tmp/x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--input"), "{}", text(&out.stderr));
}

#[test]
fn a_kinds_own_calibration_target_must_name_a_kind_and_a_positive_rate() {
    for (arg, names) in [("bogus=0.1", "\"bogus\": not an alert kind"), ("firmware_regression=-1", "positive")] {
        let out = termwatch(&[
            "train",
            "--input",
            "x.ndjson",
            "--labels",
            "l.ndjson",
            "--out",
            "m",
            "--target-false-alerts-for",
            arg,
        ]);
        assert_operator_error(&out, names);
    }
}

#[test]
fn eval_scores_alerts_against_labels_as_a_table_and_as_json() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/data");
    let p = |name: &str| data.join(name).to_str().expect("utf8").to_string();
    let args = [
        "eval",
        "--alerts",
        &p("alerts.ndjson"),
        "--labels",
        &p("labels.ndjson"),
        "--telemetry",
        &p("telemetry-east.ndjson"),
        "--telemetry",
        &p("telemetry-west.ndjson.gz"),
    ];
    let out = termwatch(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("hardware_aging") && table.contains("precision"), "{table}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = termwatch(&json_args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("expected-report.json")).expect("golden"))
            .expect("golden JSON");
    assert_eq!(report["kinds"], expected["kinds"], "the CLI reports what the library's golden file says");
}

#[test]
fn eval_with_a_missing_labels_file_is_one_line_naming_it() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/data");
    let alerts = data.join("alerts.ndjson");
    let telemetry = data.join("telemetry-east.ndjson");
    let out = termwatch(&[
        "eval",
        "--alerts",
        alerts.to_str().expect("utf8"),
        "--labels",
        "/no/such/labels.ndjson",
        "--telemetry",
        telemetry.to_str().expect("utf8"),
    ]);
    assert_operator_error(&out, "/no/such/labels.ndjson");
}

/// `simulate --physics-draw N` prints the configuration it drew, which a
/// `--config` file reproduces byte for byte; an option given still wins.
#[test]
fn a_physics_draw_is_printed_and_reproduced_by_the_configuration_it_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let path = |name: &str| d.join(name).to_str().expect("utf8").to_string();
    let common = ["simulate", "--terminals", "20", "--regions", "2", "--days", "0.5", "--interval-s", "300"];
    let drawn = termwatch(
        &[&common[..], &["--physics-draw", "7", "--night-off-share", "0.2", "--out", &path("a.ndjson")]].concat(),
    );
    assert!(drawn.status.success(), "{}", text(&drawn.stderr));
    let stderr = text(&drawn.stderr);
    let line =
        stderr.lines().find_map(|l| l.strip_prefix("simulate: physics draw 7: ")).expect("the drawn configuration");
    let cfg: serde_json::Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(cfg["night_off_share"], 0.2, "the option wins over the draw");
    assert_ne!(cfg["physics"]["supply_noise_sigma"], 0.12, "drawn, not the default");
    std::fs::write(d.join("drawn.json"), line).expect("write");
    let again = termwatch(&[&common[..], &["--config", &path("drawn.json"), "--out", &path("b.ndjson")]].concat());
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(d.join("a.ndjson")).expect("a"), std::fs::read(d.join("b.ndjson")).expect("b"));
    let plain = termwatch(&[&common[..], &["--night-off-share", "0.2", "--out", &path("c.ndjson")]].concat());
    assert!(plain.status.success());
    assert_ne!(std::fs::read(d.join("a.ndjson")).expect("a"), std::fs::read(d.join("c.ndjson")).expect("c"));
}
