//! Train on one simulated fleet, score another, evaluate: the detectors'
//! loop end to end through the binary, on small fleets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn termwatch(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch")).args(args).output().expect("runs termwatch");
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

fn simulate(dir: &Path, name: &str, seed: &str, interval: &str) {
    let out = dir.join(format!("{name}.ndjson"));
    let labels = dir.join(format!("{name}.labels.ndjson"));
    termwatch(&[
        "simulate",
        "--terminals",
        "150",
        "--regions",
        "4",
        "--days",
        "3",
        "--interval-s",
        interval,
        "--seed",
        seed,
        "--fault-scale",
        "12",
        "--out",
        s(&out),
        "--labels",
        s(&labels),
    ]);
}

#[test]
fn trains_scores_and_evaluates_and_refuses_a_mismatched_artifact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    simulate(d, "train", "21", "60");
    simulate(d, "test", "22", "60");
    let model_dir = d.join("model");
    termwatch(&[
        "train",
        "--input",
        s(&d.join("train.ndjson")),
        "--labels",
        s(&d.join("train.labels.ndjson")),
        "--out",
        s(&model_dir),
        "--version",
        "test-1",
    ]);
    let model = model_dir.join("model.json");
    let artifact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).expect("artifact")).expect("json");
    assert_eq!(artifact["format"], "termwatch-models-v1");
    assert_eq!(artifact["detectors"].as_array().map(Vec::len), Some(4));
    assert!(artifact["trained_on"]["fingerprint"].as_str().is_some_and(|f| f.starts_with("fnv1a64:")));
    assert!(std::fs::read_to_string(model_dir.join("MODEL_CARD.md")).expect("card").contains("## Detectors"));

    let alerts = d.join("alerts.ndjson");
    termwatch(&[
        "replay",
        "--input",
        s(&d.join("test.ndjson")),
        "--dead-letter",
        s(&d.join("dl.ndjson")),
        "--alerts",
        s(&alerts),
        "--models",
        s(&model),
    ]);
    // Every line is an alerts-v1 event, and firing/resolved alternate per entity.
    let mut open = std::collections::HashSet::new();
    for line in std::fs::read_to_string(&alerts).expect("alerts").lines() {
        let e: termwatch_telemetry::alerts::AlertEvent = serde_json::from_str(line).expect("alerts-v1 event");
        assert_eq!(e.model_version, "test-1");
        let key = (e.kind, e.scope, e.entity.clone());
        match e.state {
            termwatch_telemetry::alerts::AlertState::Firing => assert!(open.insert(key), "two firing alerts at once"),
            termwatch_telemetry::alerts::AlertState::Resolved => assert!(open.remove(&key), "resolved before firing"),
        }
    }
    let out = termwatch(&[
        "eval",
        "--alerts",
        s(&alerts),
        "--labels",
        s(&d.join("test.labels.ndjson")),
        "--telemetry",
        s(&d.join("test.ndjson")),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let network = report["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|k| k["kind"] == "network_degradation")
        .expect("network");
    // An unseen fleet: regional incidents are found (the acceptance figures
    // come from larger fleets, see the README).
    assert!(network["recall"].as_f64().expect("recall") >= 0.5, "{network}");

    // An artifact whose feature set differs from this build's is refused.
    let tampered = d.join("tampered.json");
    std::fs::write(
        &tampered,
        std::fs::read_to_string(&model).expect("artifact").replace("share_sites_degraded", "share_of_sites"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args([
            "replay",
            "--input",
            s(&d.join("test.ndjson")),
            "--dead-letter",
            s(&d.join("dl2.ndjson")),
            "--alerts",
            s(&d.join("a2.ndjson")),
            "--models",
            s(&tampered),
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trained on features") && stderr.contains("retrain"), "{stderr}");
}
