//! The evaluator end to end: files in, report out. Golden files live in
//! `tests/data/`; after an intended change of output, rewrite them with
//! `TERMWATCH_BLESS=1 cargo test -p termwatch-models --test eval` and review
//! the diff.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use termwatch_models::eval::{EvalError, FleetIndex, Report, evaluate, read_alerts, read_labels};
use termwatch_telemetry::alerts::AlertKind;

/// Relative to the package root, the working directory of tests, so that
/// paths in the report do not depend on where the repository is checked out.
const DATA: &str = "tests/data";

fn data(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn golden_report() -> Report {
    let alerts = read_alerts(&data("alerts.ndjson")).expect("alerts read");
    let labels = read_labels(&data("labels.ndjson")).expect("labels read");
    let fleet = FleetIndex::from_telemetry(&[data("telemetry-east.ndjson"), data("telemetry-west.ndjson.gz")])
        .expect("telemetry read");
    evaluate(&alerts, &labels, &fleet)
}

fn check_golden(name: &str, actual: &str) {
    let path = data(name);
    if std::env::var_os("TERMWATCH_BLESS").is_some() {
        std::fs::write(&path, actual).expect("golden file written");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists (TERMWATCH_BLESS=1 writes it)");
    assert!(
        expected == actual,
        "{} differs from the output; if the change is intended, rerun with TERMWATCH_BLESS=1 and review the diff.\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn golden_report_matches_json() {
    let json = golden_report().to_json().expect("serialises");
    check_golden("expected-report.json", &format!("{json}\n"));
}

#[test]
fn golden_report_matches_table() {
    check_golden("expected-table.txt", &golden_report().to_table(10));
}

/// The figures of the golden data, worked out by hand in docs/evaluation.md,
/// asserted here so that blessing a golden file cannot quietly change them.
#[test]
fn golden_figures_are_the_hand_computed_ones() {
    let r = golden_report();
    const MIN: f64 = 60_000.0;
    const HOUR: f64 = 60.0 * MIN;
    const DAY: f64 = 24.0 * HOUR;

    assert_eq!(r.fleet.terminals, 4);
    assert_eq!(r.fleet.sites, 3);
    assert_eq!(r.fleet.regions, 2);
    assert_eq!(r.fleet.terminal_days, 10);
    assert_eq!(r.fleet.reports, 12);
    assert_eq!(r.fleet.rejected_lines, 1);
    assert_eq!(r.fleet.blank_lines, 1);
    assert_eq!((r.inputs.alert_events, r.inputs.firing_events, r.inputs.resolved_events), (16, 12, 4));
    assert_eq!((r.inputs.labels, r.inputs.incident_labels, r.inputs.not_incident_labels), (7, 6, 1));

    let aging = r.kind(AlertKind::HardwareAging).expect("aging");
    assert_eq!(
        (aging.firing_alerts, aging.true_alerts, aging.false_alerts, aging.incidents, aging.detected_incidents),
        (4, 3, 1, 2, 1)
    );
    assert_eq!((aging.precision, aging.recall), (0.75, 0.5));
    assert!((aging.f1 - 0.6).abs() < 1e-12);
    assert_eq!(aging.false_alerts_per_1000_terminal_days, Some(100.0));
    assert_eq!(aging.median_delay_ms, Some(4.0 * DAY + 6.0 * HOUR));
    assert_eq!(aging.median_lead_time_ms, Some(12.0 * DAY + 6.0 * HOUR));
    assert_eq!(aging.missed_incidents[0].entity, "T-3");
    assert_eq!(aging.false_alert_events[0].entity, "T-2");

    let voltage = r.kind(AlertKind::VoltageInstability).expect("voltage");
    assert_eq!(
        (
            voltage.firing_alerts,
            voltage.true_alerts,
            voltage.false_alerts,
            voltage.incidents,
            voltage.detected_incidents
        ),
        (4, 3, 1, 3, 2)
    );
    assert!((voltage.f1 - 12.0 / 17.0).abs() < 1e-12);
    assert_eq!(voltage.median_delay_ms, Some(12.5 * MIN));
    assert_eq!(voltage.median_lead_time_ms, None);
    assert_eq!(voltage.overlapping_firing, 1);
    assert_eq!(voltage.missed_incidents[0].entity, "T-4");
    assert_eq!(voltage.false_alert_events[0].entity, "S-1");

    let network = r.kind(AlertKind::NetworkDegradation).expect("network");
    assert_eq!(
        (
            network.firing_alerts,
            network.true_alerts,
            network.false_alerts,
            network.incidents,
            network.detected_incidents
        ),
        (4, 2, 2, 1, 1)
    );
    assert_eq!((network.precision, network.recall), (0.5, 1.0));
    assert_eq!(network.false_alerts_per_1000_terminal_days, Some(200.0));
    assert_eq!(network.median_delay_ms, Some(20.0 * MIN));
    let false_entities: Vec<&str> = network.false_alert_events.iter().map(|a| a.entity.as_str()).collect();
    assert_eq!(false_entities, ["T-1", "east-07"]);
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, body).expect("written");
    path
}

const GOOD_LABEL: &str = r#"{"kind":"network_degradation","scope":"region","entity":"r","region":"r","start":"2026-11-24T10:00:00Z","end":"2026-11-24T12:00:00Z"}"#;

#[test]
fn malformed_alert_line_fails_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = std::fs::read_to_string(data("alerts.ndjson")).expect("read");
    let first = first.lines().next().expect("a line");
    let path =
        write(&dir, "alerts.ndjson", &format!("{first}\n\n{{\"ts\":\"2026-11-24T10:00:00Z\",\"kind\":\"fire\"}}\n"));
    let err = read_alerts(&path).expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, EvalError::Malformed { line: 3, .. }), "{err:?}");
    assert!(msg.contains("alerts.ndjson line 3") && msg.contains("fire"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn malformed_label_line_fails_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "labels.ndjson", &format!("{GOOD_LABEL}\n{}\n", &GOOD_LABEL[..40]));
    let msg = read_labels(&path).expect_err("refused").to_string();
    assert!(msg.starts_with("labels file ") && msg.contains("labels.ndjson line 2"), "{msg}");
}

#[test]
fn label_ending_before_it_starts_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backwards = GOOD_LABEL.replace("12:00:00Z", "09:00:00Z");
    let path = write(&dir, "labels.ndjson", &format!("{GOOD_LABEL}\n{backwards}\n"));
    let err = read_labels(&path).expect_err("refused");
    assert!(matches!(err, EvalError::Invalid { line: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("before start"), "{err}");
}

#[test]
fn missing_file_is_one_line_naming_it() {
    for err in [
        read_alerts(Path::new("/nonexistent/alerts.ndjson")).expect_err("missing"),
        read_labels(Path::new("/nonexistent/labels.ndjson")).expect_err("missing"),
        FleetIndex::from_telemetry(&[data("telemetry-east.ndjson"), PathBuf::from("/nonexistent/t.ndjson")])
            .expect_err("missing"),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/") && !msg.contains('\n'), "{msg}");
    }
}

#[test]
fn empty_inputs_give_a_report_of_conventions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(&dir, "empty.ndjson", "");
    let r = evaluate(
        &read_alerts(&empty).expect("empty is fine"),
        &read_labels(&empty).expect("empty is fine"),
        &FleetIndex::from_telemetry(&[&empty]).expect("empty is fine"),
    );
    for k in &r.kinds {
        assert_eq!((k.precision, k.recall, k.f1), (1.0, 1.0, 1.0), "{}", k.kind);
        assert_eq!(k.false_alerts_per_1000_terminal_days, None);
    }
    assert!(r.to_table(10).contains("hardware_aging"));
}
