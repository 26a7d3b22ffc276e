//! `termwatch rules` through the binary: tuned on a small simulated fleet,
//! its alert events are alerts-v1 that `termwatch eval` accepts and scores
//! as the rules' own table says, and the written rules apply back to the
//! same alerts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn termwatch(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
    // The binary refuses unknown TERMWATCH_* variables, such as the test runner's.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERMWATCH_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).output().expect("runs termwatch");
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

/// The F1 column of the table row for `kind`.
fn table_f1(table: &str, kind: &str) -> f64 {
    let row = table.lines().find(|l| l.starts_with(&format!("| {kind} |"))).expect("row for kind");
    row.split('|').map(str::trim).nth(7).expect("F1 column").parse().expect("F1 number")
}

#[test]
fn tuned_rules_emit_alert_events_that_eval_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (telemetry, labels) = (d.join("fleet.ndjson"), d.join("labels.ndjson"));
    termwatch(&[
        "simulate",
        "--terminals",
        "80",
        "--regions",
        "2",
        "--days",
        "2",
        "--interval-s",
        "300",
        "--seed",
        "31",
        "--fault-scale",
        "20",
        "--out",
        s(&telemetry),
        "--labels",
        s(&labels),
    ]);
    let (alerts, rules) = (d.join("rules.alerts.ndjson"), d.join("rules.json"));
    let out = termwatch(&[
        "rules",
        "--tune",
        s(&telemetry),
        s(&labels),
        "--rules-out",
        s(&rules),
        "--telemetry",
        s(&telemetry),
        "--alerts",
        s(&alerts),
        "--labels",
        s(&labels),
    ]);
    let table = String::from_utf8(out.stdout).expect("utf8");
    assert!(table.contains("| voltage_instability | static rules |"), "{table}");

    let events = std::fs::read_to_string(&alerts).expect("alerts");
    assert!(events.lines().count() > 0, "the rules raised nothing on a fleet with faults:\n{table}");
    for line in events.lines() {
        let e: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(e["model_version"], "static-rules");
        assert!(e["state"] == "firing" || e["state"] == "resolved", "{line}");
    }

    let out =
        termwatch(&["eval", "--alerts", s(&alerts), "--labels", s(&labels), "--telemetry", s(&telemetry), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval json");
    for k in report["kinds"].as_array().expect("kinds") {
        let kind = k["kind"].as_str().expect("kind");
        assert_eq!(k["overlapping_firing"], 0, "{kind}: a second firing alert on an entity already firing");
        let f1 = k["f1"].as_f64().expect("f1");
        assert!(
            (f1 - table_f1(&table, kind)).abs() < 5e-4,
            "{kind}: eval says F1 {f1}, rules' table says otherwise:\n{table}"
        );
    }

    // The written rules, applied to the same history, raise the same events.
    let again = d.join("again.ndjson");
    termwatch(&["rules", "--rules", s(&rules), "--telemetry", s(&telemetry), "--alerts", s(&again)]);
    assert_eq!(std::fs::read_to_string(&again).expect("again"), events);
}

#[test]
fn refuses_a_rules_file_with_an_empty_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rules = d.join("rules.json");
    let text = r#"{"terminal_supply":{"v_std_above":{},"sags_at_least":null,"v_mean_ratio_below":null,"for_min":0,"keep_firing_min":0},
"site_supply":{"v_std_above":{},"terminals_at_least":null,"for_min":0,"keep_firing_min":0},
"region_network":{"loss_pct_above":null,"rtt_ms_above":null,"share_at_least":0.2,"min_terminals":5,"for_min":0,"keep_firing_min":0},
"terminal_aging":{"card_error_ratio_above":null,"card_window_min":0,"card_reads_at_least":1,"print_error_ratio_above":null,
"print_window_min":60,"print_jobs_at_least":1,"battery_health_drop_above":null,"battery_window_min":1440,"for_min":0,"keep_firing_min":0}}"#;
    std::fs::write(&rules, text).expect("write");
    let telemetry = d.join("t.ndjson");
    std::fs::write(&telemetry, "").expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_termwatch"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERMWATCH_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["rules", "--rules", s(&rules), "--telemetry", s(&telemetry), "--alerts", s(&d.join("a.ndjson"))])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("terminal_aging.card_window_min = 0"), "{err}");
}
