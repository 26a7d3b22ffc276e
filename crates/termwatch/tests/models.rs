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
    simulate_with(dir, name, seed, interval, &[]);
}

/// [`simulate`] with more `termwatch simulate` options.
fn simulate_with(dir: &Path, name: &str, seed: &str, interval: &str, more: &[&str]) {
    let out = dir.join(format!("{name}.ndjson"));
    let labels = dir.join(format!("{name}.labels.ndjson"));
    let mut args = vec![
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
    ];
    args.extend_from_slice(more);
    termwatch(&args);
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
    assert_eq!(artifact["format"], "termwatch-models-v2");
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
        std::fs::read_to_string(&model).expect("artifact").replace("share_sites_degraded_trimmed", "share_of_sites"),
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

#[test]
fn a_restart_from_a_snapshot_continues_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    termwatch(&[
        "simulate",
        "--terminals",
        "60",
        "--regions",
        "2",
        "--days",
        "1",
        "--seed",
        "31",
        "--fault-scale",
        "20",
        "--out",
        s(&d.join("h.ndjson")),
        "--labels",
        s(&d.join("h.labels.ndjson")),
    ]);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let text = std::fs::read_to_string(d.join("h.ndjson")).expect("history");
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    std::fs::write(d.join("first.ndjson"), first.join("\n") + "\n").expect("write");
    std::fs::write(d.join("second.ndjson"), second.join("\n") + "\n").expect("write");
    let replay = |inputs: &[&str], state: &Path, alerts: &Path| {
        let mut args = vec!["replay"];
        for i in inputs {
            args.extend(["--input", i]);
        }
        let dead = d.join("dead.ndjson");
        args.extend(["--dead-letter", s(&dead), "--alerts", s(alerts), "--models", s(&models), "--state", s(state)]);
        termwatch(&args)
    };
    // One process over the whole history...
    replay(&[s(&d.join("h.ndjson"))], &d.join("whole.state"), &d.join("whole.alerts"));
    // ...and two, the second restoring what the first learned.
    replay(&[s(&d.join("first.ndjson"))], &d.join("split.state"), &d.join("a1.alerts"));
    let out = replay(&[s(&d.join("second.ndjson"))], &d.join("split.state"), &d.join("a2.alerts"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state: restored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = std::fs::read_to_string(d.join("whole.alerts")).expect("alerts");
    let split = std::fs::read_to_string(d.join("a1.alerts")).expect("alerts")
        + &std::fs::read_to_string(d.join("a2.alerts")).expect("alerts");
    assert!(!whole.is_empty(), "the history raised alerts");
    assert_eq!(split, whole, "the restarted run raised exactly the alerts of the continuous one");

    // Replaying the second half again over the final state applies nothing twice.
    let again = replay(&[s(&d.join("second.ndjson"))], &d.join("split.state"), &d.join("a3.alerts"));
    assert_eq!(
        std::fs::read_to_string(d.join("a3.alerts")).expect("alerts"),
        "",
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A corrupt snapshot is refused, and scoring starts cold.
    std::fs::write(d.join("split.state"), b"TWSNAP garbage").expect("write");
    let cold = replay(&[s(&d.join("second.ndjson"))], &d.join("split.state"), &d.join("a4.alerts"));
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert!(stderr.contains("starting cold"), "{stderr}");
}

/// The shipped models page a site for its mains and a terminal for its own
/// power supply. The evaluator credits a site alert on one of the site's
/// terminals' incidents (alerts-v1), so F1 cannot show this; the test does.
#[test]
fn the_default_models_page_the_site_for_mains_and_the_terminal_for_its_supply() {
    use std::collections::HashMap;
    use termwatch_telemetry::alerts::{AlertEvent, AlertKind, AlertState, IncidentLabel, Scope};

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Seeds 1-6 made the training and evaluation fleets; 23 is unseen.
    termwatch(&[
        "simulate",
        "--terminals",
        "300",
        "--regions",
        "3",
        "--days",
        "3",
        "--interval-s",
        "300",
        "--seed",
        "23",
        "--fault-scale",
        "30",
        "--out",
        s(&d.join("h.ndjson")),
        "--labels",
        s(&d.join("h.labels.ndjson")),
    ]);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let alerts = d.join("alerts.ndjson");
    termwatch(&[
        "replay",
        "--input",
        s(&d.join("h.ndjson")),
        "--dead-letter",
        s(&d.join("dl.ndjson")),
        "--alerts",
        s(&alerts),
        "--models",
        s(&models),
    ]);

    let mut site_of = HashMap::new();
    for line in std::fs::read_to_string(d.join("h.ndjson")).expect("history").lines() {
        // The simulator damages a few lines on purpose; replay rejected them too.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(t), Some(site)) = (v["terminal_id"].as_str(), v["site_id"].as_str()) {
            site_of.entry(t.to_string()).or_insert_with(|| site.to_string());
        }
    }
    let labels: Vec<IncidentLabel> = std::fs::read_to_string(d.join("h.labels.ndjson"))
        .expect("labels")
        .lines()
        .map(|l| serde_json::from_str(l).expect("label"))
        .filter(|l: &IncidentLabel| l.kind == AlertKind::VoltageInstability)
        .collect();
    let fired: Vec<AlertEvent> = std::fs::read_to_string(&alerts)
        .expect("alerts")
        .lines()
        .map(|l| serde_json::from_str(l).expect("alert"))
        .filter(|e: &AlertEvent| e.kind == AlertKind::VoltageInstability && e.state == AlertState::Firing)
        .collect();
    // The site an incident or alert is about.
    let site = |scope: Scope, entity: &str| -> Option<String> {
        match scope {
            Scope::Site => Some(entity.to_string()),
            _ => site_of.get(entity).cloned(),
        }
    };
    const HOUR: i64 = 3_600_000;
    let during = |e: &AlertEvent, l: &IncidentLabel| e.ts >= l.start && e.ts <= l.end + HOUR;

    let mains: Vec<&IncidentLabel> = labels.iter().filter(|l| l.scope == Scope::Site).collect();
    let supplies: Vec<&IncidentLabel> = labels.iter().filter(|l| l.scope == Scope::Terminal).collect();
    assert!(mains.len() >= 3 && supplies.len() >= 3, "{} mains, {} supply faults", mains.len(), supplies.len());

    // A site alert is for a mains fault at that site.
    let site_alerts: Vec<&AlertEvent> = fired.iter().filter(|e| e.scope == Scope::Site).collect();
    let wrong: Vec<&&AlertEvent> = site_alerts
        .iter()
        .filter(|e| !mains.iter().any(|l| l.entity == e.entity && during(e, l)))
        .filter(|e| supplies.iter().any(|l| site(l.scope, &l.entity).as_deref() == Some(&e.entity) && during(e, l)))
        .collect();
    assert!(!site_alerts.is_empty(), "no site alert fired on {} mains faults", mains.len());
    assert!(wrong.is_empty(), "site alerts on one terminal's supply fault: {wrong:#?}");

    // Most supply faults raise their terminal's alert (the rest are too
    // faint for any detector: see the recall in the README).
    let by_terminal = supplies
        .iter()
        .filter(|l| fired.iter().any(|e| e.scope == Scope::Terminal && e.entity == l.entity && during(e, l)))
        .count();
    eprintln!(
        "{} mains faults, {} site alerts ({} on a supply fault); {by_terminal} of {} supply faults raised a terminal alert",
        mains.len(),
        site_alerts.len(),
        wrong.len(),
        supplies.len()
    );
    assert!(
        2 * by_terminal >= supplies.len(),
        "{by_terminal} of {} supply faults raised a terminal alert",
        supplies.len()
    );
}

/// `termwatch train --input-for KIND=PATH`: a history that trains one
/// kind's detectors alone (a fleet labelled for that kind only). The other
/// detectors come out byte for byte as without it, the kind's own learns
/// from its windows, and the kind's budget counts its terminal-days.
#[test]
fn a_history_for_one_kind_trains_that_kind_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    simulate(d, "train", "21", "300");
    // Another fleet a month later, so that its labels match none of the first's windows.
    simulate_with(d, "net", "23", "300", &["--start", "2026-10-01"]);
    let (net, net_labels) = (d.join("net.ndjson"), d.join("net.labels.ndjson"));
    let mut labels = std::fs::read_to_string(d.join("train.labels.ndjson")).expect("labels");
    for line in std::fs::read_to_string(&net_labels).expect("labels").lines() {
        if line.contains("\"kind\":\"network_degradation\"") {
            labels.push_str(line);
            labels.push('\n');
        }
    }
    let labels_path = d.join("both.labels.ndjson");
    std::fs::write(&labels_path, labels).expect("write labels");
    let history = d.join("train.ndjson");
    let train = |name: &str, extra: &[&str]| -> (serde_json::Value, String) {
        let out = d.join(name);
        let mut args = vec!["train", "--input", s(&history), "--labels", s(&labels_path)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", s(&out), "--version", name]);
        termwatch(&args);
        let artifact = std::fs::read_to_string(out.join("model.json")).expect("artifact");
        let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).expect("card");
        (serde_json::from_str(&artifact).expect("json"), card)
    };
    let (alone, _) = train("alone", &[]);
    let input_for = format!("network_degradation={}", s(&net));
    let (with, card) = train("with", &["--input-for", &input_for]);

    let detectors = |a: &serde_json::Value| a["detectors"].as_array().expect("detectors").clone();
    let (before, after) = (detectors(&alone), detectors(&with));
    assert_eq!(before.len(), after.len());
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if a["kind"] == "network_degradation" {
            assert_ne!(b, a, "network learns from the history given for it");
            let positives = |m: &serde_json::Value| m["figures"][i]["positive_windows"].as_u64().expect("count");
            assert!(positives(&with) > positives(&alone), "its incidents' windows are network's too");
        } else {
            assert_eq!(b, a, "{} {} does not see a network-only history", a["kind"], a["scope"]);
        }
    }
    let (trained_on, before_on) = (&with["trained_on"], &alone["trained_on"]);
    assert_eq!(trained_on["terminal_days"], before_on["terminal_days"]);
    let days = trained_on["terminal_days"].as_u64().expect("days");
    let network_days = &trained_on["kind_terminal_days"][0];
    assert_eq!(network_days[0], "network_degradation");
    assert!(network_days[1].as_u64().is_some_and(|n| n > days), "{network_days} against {days}");
    assert_eq!(trained_on["inputs_for"][0][0], s(&net));
    assert_eq!(trained_on["inputs_for"][0][1], "network_degradation");
    assert!(before_on.get("inputs_for").is_none(), "an artifact trained without it reads as before");
    assert!(card.contains("network_degradation only"), "{card}");

    // A kind that is not one is refused by name.
    let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
        .args(["train", "--input", s(&net), "--labels", s(&labels_path), "--out", s(&d.join("x"))])
        .args(["--input-for", &format!("network={}", s(&net))])
        .output()
        .expect("runs termwatch");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"network\": not an alert kind"), "{out:?}");
}

/// Independent training histories are told apart by time: two fleets that
/// name their terminals and regions alike over the same days would be read
/// as one, and a label of one would mark both. `termwatch train` refuses
/// them, naming the history, the entity and the days; a history for one
/// kind is checked on the rows it trains (a network-only fleet, by its
/// regions).
#[test]
fn independent_histories_that_name_an_entity_alike_at_the_same_time_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    simulate(d, "a", "31", "300");
    simulate(d, "b", "32", "300");
    let labels = d.join("a.labels.ndjson");
    let refused = |extra: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_termwatch"))
            .args(["train", "--input", s(&d.join("a.ndjson")), "--labels", s(&labels), "--out", s(&d.join("x"))])
            .args(extra)
            .output()
            .expect("runs termwatch");
        assert!(!out.status.success(), "refused: {out:?}");
        assert!(!d.join("x/model.json").exists(), "no artifact is written");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["--independent", "--input", s(&d.join("b.ndjson"))]);
    assert!(
        err.contains("b.ndjson: terminal T-") && err.contains("a.ndjson too"),
        "names the history and the terminal: {err}"
    );
    let err = refused(&["--input-for", &format!("network_degradation={}", s(&d.join("b.ndjson")))]);
    assert!(err.contains("b.ndjson: region ") && err.contains("would be read as one region"), "{err}");
}

/// The shipped models on a fleet from a generator that is not ours
/// (`tests/fleets/external-1`, a customer's sample, never used to fit a
/// threshold or a feature): every incident of the kinds termwatch detects
/// is found, and every kind keeps issue 15's budget, 0.5 false alerts per
/// 1,000 terminal-days (none on this fleet's 885; network since
/// `termwatch-default-47`, before which it was held to a guard of 1.7).
/// Site-scope voltage incidents page within the 10-minute target (median);
/// terminal-scope ones are not held to it yet.
#[test]
fn the_shipped_models_find_every_incident_of_a_foreign_fleet_within_the_false_alert_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fleet = root.join("tests/fleets/external-1");
    let telemetry = fleet.join("telemetry.ndjson.gz");
    let labels = fleet.join("labels.ndjson");
    let models = root.join("models/default/model.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = dir.path().join("alerts.ndjson");
    let dead = dir.path().join("dead.ndjson");
    termwatch(&[
        "replay",
        "--input",
        s(&telemetry),
        "--dead-letter",
        s(&dead),
        "--alerts",
        s(&alerts),
        "--models",
        s(&models),
    ]);
    let report =
        termwatch(&["eval", "--alerts", s(&alerts), "--labels", s(&labels), "--telemetry", s(&telemetry), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON report");
    let kinds = report["kinds"].as_array().expect("kinds");
    // False alerts per 1,000 terminal-days at most, per kind.
    let budget = 0.5;
    for kind in ["voltage_instability", "network_degradation", "hardware_aging", "firmware_regression"] {
        let k = kinds.iter().find(|k| k["kind"] == kind).expect("kind in the report");
        let (incidents, detected) = (k["incidents"].as_u64().expect("n"), k["detected_incidents"].as_u64().expect("n"));
        let false_rate = k["false_alerts_per_1000_terminal_days"].as_f64().expect("rate");
        eprintln!("{kind}: {detected} of {incidents} incidents, {false_rate:.2} false alerts per 1,000 terminal-days");
        assert!(incidents > 0, "{kind}: the fleet has incidents of this kind");
        assert_eq!(detected, incidents, "{kind}: every incident is detected");
        assert!(false_rate <= budget, "{kind}: {false_rate:.2} false alerts per 1,000 terminal-days, budget {budget}");
    }
    // A site's mains fault pages within issue 15's 10 minutes at 300 s
    // reporting (one terminal's supply does not yet: README, Detectors).
    let voltage = kinds.iter().find(|k| k["kind"] == "voltage_instability").expect("voltage in the report");
    let site = voltage["scopes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["scope"] == "site"))
        .expect("site-scope voltage incidents on this fleet");
    let site_delay = site["median_delay_ms"].as_f64().expect("site incidents detected");
    eprintln!("voltage_instability site: median delay {:.1} min", site_delay / 60_000.0);
    assert!(site_delay <= 600_000.0, "site voltage median delay {site_delay} ms, at most 10 minutes");
    // A regressed rollout is worth halting while few terminals have it:
    // issue 17's bar is a median exposure of at most a quarter of the model.
    let firmware = kinds.iter().find(|k| k["kind"] == "firmware_regression").expect("firmware in the report");
    let exposure = firmware["median_exposure"].as_f64().expect("an exposure for detected regressions");
    eprintln!("firmware_regression: median exposure {:.0} %", exposure * 100.0);
    assert!(exposure <= 0.25, "firmware_regression: median exposure {exposure:.2}, at most 0.25");
    // Each firmware alert names the version its terminals ran before, of
    // the same model: what an on-call engineer rolls back to.
    let mut firmware_alerts = 0;
    let mut resolved = Vec::new();
    for line in std::fs::read_to_string(&alerts).expect("alerts").lines() {
        let e: termwatch_telemetry::alerts::AlertEvent = serde_json::from_str(line).expect("alerts-v1 event");
        if e.kind != termwatch_telemetry::alerts::AlertKind::FirmwareRegression {
            continue;
        }
        firmware_alerts += 1;
        if e.state == termwatch_telemetry::alerts::AlertState::Resolved {
            resolved.push((e.entity.clone(), e.ts));
        }
        let model = e.entity.split('/').next().expect("MODEL/FIRMWARE");
        for r in &e.reasons {
            let before = r.baseline_version.as_deref().unwrap_or_default();
            assert!(before.starts_with(&format!("{model}/")) && before != e.entity, "{e:?}");
        }
    }
    assert!(firmware_alerts > 0);
    // Rolled back, a regression's alert resolves once no terminal runs the
    // version, not after a day of silence (here every terminal that had it
    // was reporting at the rollback).
    for line in std::fs::read_to_string(&labels).expect("labels").lines() {
        let l: termwatch_telemetry::alerts::IncidentLabel = serde_json::from_str(line).expect("a label");
        if l.kind != termwatch_telemetry::alerts::AlertKind::FirmwareRegression {
            continue;
        }
        let after =
            resolved.iter().find(|(entity, ts)| *entity == l.entity && *ts >= l.start).map(|(_, ts)| ts - l.end);
        eprintln!("firmware_regression {}: resolved {:?} s after the rollback", l.entity, after.map(|ms| ms / 1000));
        assert!(after.is_some_and(|ms| (0..=3_600_000).contains(&ms)), "{}: resolved {after:?} ms after", l.entity);
    }
}

/// `replay --state FILE` keeps the state of terminals forgotten as idle in
/// `FILE.cold`, and the next run finds it there.
#[test]
fn a_terminal_forgotten_as_idle_is_kept_beside_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut lines =
        vec![r#"{"terminal_id":"T-quiet","ts":"2026-11-01T10:00:00Z","region":"r1","supply_v_mean":11.9}"#.to_string()];
    // T-on reports fifteen days later (past the idle time of 14), often
    // enough for event time to move on.
    for k in 0..24 {
        lines.push(format!(
            r#"{{"terminal_id":"T-on","ts":"2026-11-16T{:02}:{:02}:00Z","region":"r1","supply_v_mean":12.0}}"#,
            10 + k / 12,
            (k % 12) * 5
        ));
    }
    std::fs::write(d.join("h.ndjson"), lines.join("\n") + "\n").expect("write");
    let state = d.join("s.snap");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.json");
    let replay = || {
        termwatch(&[
            "replay",
            "--models",
            s(&models),
            "--input",
            s(&d.join("h.ndjson")),
            "--dead-letter",
            s(&d.join("dead.ndjson")),
            "--alerts",
            s(&d.join("alerts.ndjson")),
            "--state",
            s(&state),
            "--batch-rows",
            "1",
        ])
    };
    replay();
    let kept: Vec<_> = std::fs::read_dir(d.join("s.snap.cold")).expect("the cold store").collect();
    assert_eq!(kept.len(), 1, "T-quiet's state");
    let again = replay();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("state: 1 idle terminals' state in"), "{stderr}");
}

/// A fleet noisier than any the models were trained on (five unlabelled
/// blips per terminal-day, up to three reports long, against at most one
/// of two in training): fleet calibration lifts the voltage thresholds and
/// finds the same incidents with fewer false alerts than the trained
/// thresholds (the same artifact without its fleet references).
#[test]
fn fleet_calibration_pages_less_on_a_noisier_fleet_and_misses_nothing_more() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shipped = root.join("models/default/model.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let config = d.join("blips.json");
    std::fs::write(&config, r#"{"faults": {"blips_per_terminal_day": 5.0, "blip_max_reports": 3}}"#).expect("write");
    let (telemetry, labels) = (d.join("noisy.ndjson"), d.join("noisy.labels.ndjson"));
    termwatch(&[
        "simulate",
        "--config",
        s(&config),
        "--terminals",
        "300",
        "--regions",
        "8",
        "--days",
        "14",
        "--interval-s",
        "300",
        "--seed",
        "21",
        "--start",
        "2026-07-01",
        "--out",
        s(&telemetry),
        "--labels",
        s(&labels),
    ]);
    // The trained thresholds alone: the artifact without fleet references.
    let mut fixed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).expect("models/default")).expect("JSON");
    let mut references = Vec::new();
    for det in fixed["detectors"].as_array_mut().expect("detectors") {
        let det = det.as_object_mut().expect("detector");
        if det.remove("fleet").is_some() {
            references.push(format!("{} {}", det["kind"], det["scope"]).replace('"', ""));
        }
    }
    assert_eq!(
        references,
        ["voltage_instability site", "voltage_instability terminal", "network_degradation region"],
        "the detectors calibrated to the fleet"
    );
    let fixed_path = d.join("fixed.json");
    std::fs::write(&fixed_path, fixed.to_string()).expect("write");
    let run = |models: &Path, name: &str| {
        let alerts = d.join(format!("{name}.alerts.ndjson"));
        let out = termwatch(&[
            "replay",
            "--input",
            s(&telemetry),
            "--dead-letter",
            s(&d.join("dead.ndjson")),
            "--alerts",
            s(&alerts),
            "--models",
            s(models),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = termwatch(&[
            "eval",
            "--alerts",
            s(&alerts),
            "--labels",
            s(&labels),
            "--telemetry",
            s(&telemetry),
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON report");
        let per_kind: Vec<(String, u64, u64)> = report["kinds"]
            .as_array()
            .expect("kinds")
            .iter()
            .map(|k| {
                (
                    k["kind"].as_str().expect("kind").to_owned(),
                    k["detected_incidents"].as_u64().expect("n"),
                    k["false_alerts"].as_u64().expect("n"),
                )
            })
            .collect();
        (per_kind, stderr)
    };
    let (trained, _) = run(&fixed_path, "trained");
    let (calibrated, stderr) = run(&shipped, "calibrated");
    eprintln!("trained thresholds: {trained:?}\nfleet calibration: {calibrated:?}\n{stderr}");
    assert!(stderr.contains("fleet calibration: voltage_instability"), "the replay says where the thresholds went");
    for ((kind, detected, _), (_, detected_calibrated, _)) in trained.iter().zip(&calibrated) {
        assert_eq!(detected_calibrated, detected, "{kind}: the same incidents found");
    }
    let voltage = |v: &[(String, u64, u64)]| v.iter().find(|k| k.0 == "voltage_instability").map_or(0, |k| k.2);
    assert!(
        voltage(&trained) >= 6 && 3 * voltage(&calibrated) <= 2 * voltage(&trained),
        "voltage: at most two thirds of the false alerts: {} with fleet calibration, {} without",
        voltage(&calibrated),
        voltage(&trained)
    );
}
