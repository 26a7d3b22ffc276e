//! `termwatch rules`: the static-threshold rules a NOC would otherwise write
//! in Prometheus, tuned on labelled history (or read from a file), emitting
//! alert events in the alerts-v1 shape so that `termwatch eval` scores them
//! exactly as it scores termwatch. docs/static-rules.md has the rules as
//! PromQL and the comparison.

mod cells;
mod engine;
mod tune;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use termwatch_models::eval::{Report, evaluate, format_duration, read_alerts, read_labels};
use termwatch_telemetry::alerts::{AlertEvent, AlertKind};

use cells::Cells;
use engine::RuleSet;

#[derive(clap::Args, Debug)]
pub struct RulesArgs {
    /// Tune the rules on this labelled history: a telemetry file (NDJSON, plain or gzip) and its incident labels.
    /// Repeat for several independent histories, pooled (grid search per kind, maximising F1, then delay or lead time).
    #[arg(long, num_args = 2, value_names = ["TELEMETRY", "LABELS"], required_unless_present = "rules")]
    pub tune: Vec<PathBuf>,
    /// Apply these rules (JSON, as --rules-out writes them) instead of tuning.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tune", "rules_out"])]
    pub rules: Option<PathBuf>,
    /// Where to write the tuned rules (JSON).
    #[arg(long, value_name = "FILE")]
    pub rules_out: Option<PathBuf>,
    /// The history to apply the rules to (telemetry-v1 NDJSON, plain or gzip); repeat for several files of one history.
    #[arg(long = "telemetry", value_name = "FILE", requires = "alerts")]
    pub telemetry: Vec<PathBuf>,
    /// Where to write the rules' alert events on that history (alerts-v1 NDJSON).
    #[arg(long, value_name = "FILE", requires = "telemetry")]
    pub alerts: Option<PathBuf>,
    /// Incident labels of that history: print the figures per kind as a Markdown table.
    #[arg(long, value_name = "FILE", requires = "telemetry")]
    pub labels: Option<PathBuf>,
    /// Other alert events on the same history, as NAME=FILE (e.g. termwatch=alerts.ndjson): rows before the rules' own.
    #[arg(long, value_name = "NAME=FILE", requires = "labels")]
    pub against: Vec<String>,
    /// The rules' row name in the table.
    #[arg(long, value_name = "NAME", default_value = "static rules")]
    pub name: String,
}

pub fn run(args: RulesArgs) -> anyhow::Result<()> {
    // Every small input first, so a mistyped path fails before minutes of reading.
    let labels = args.labels.as_deref().map(read_labels).transpose()?;
    let mut against = Vec::with_capacity(args.against.len());
    for spec in &args.against {
        let Some((name, path)) = spec.split_once('=') else {
            anyhow::bail!("--against {spec}: expected NAME=FILE");
        };
        against.push((name.to_owned(), read_alerts(std::path::Path::new(path))?));
    }
    let rules_in = args.rules.as_deref().map(read_rules).transpose()?;
    let pairs: Vec<(&PathBuf, &PathBuf)> = args.tune.chunks_exact(2).map(|p| (&p[0], &p[1])).collect();
    let tune_labels = pairs.iter().map(|(_, l)| read_labels(l)).collect::<Result<Vec<_>, _>>()?;

    let mut out = std::io::stdout().lock();
    let mut say = |line: String| -> anyhow::Result<()> {
        match writeln!(out, "{line}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing to stdout"),
        }
    };

    let (rules, mut histories) = match rules_in {
        Some(r) => (r, Vec::new()),
        None => {
            let mut histories = Vec::with_capacity(pairs.len());
            for ((telemetry, _), labels) in pairs.iter().zip(tune_labels) {
                let cells = read_cells(std::slice::from_ref(*telemetry), &mut say)?;
                histories.push(tune::History { cells, labels });
            }
            let started = std::time::Instant::now();
            let (rules, tuned) = tune::tune(&histories);
            for t in tuned {
                say(format!(
                    "tuned {}: F1 {:.3} over {} histories, {} candidate rule sets scored",
                    t.kind,
                    t.objective.f1,
                    histories.len(),
                    t.evaluations
                ))?;
            }
            say(format!("tuning took {:.1} s", started.elapsed().as_secs_f64()))?;
            (rules, histories)
        }
    };
    if let Some(path) = &args.rules_out {
        let json = serde_json::to_string_pretty(&rules).context("serialising the rules")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing rules file {}", path.display()))?;
        say(format!("rules written to {}", path.display()))?;
    }
    say(describe(&rules))?;

    let Some(alerts_path) = &args.alerts else { return Ok(()) };
    // The history tuned on is not read twice.
    let reuse = match args.telemetry.as_slice() {
        [one] => pairs.iter().position(|(t, _)| *t == one),
        _ => None,
    };
    let cells = match reuse {
        Some(i) => histories.swap_remove(i).cells,
        None => read_cells(&args.telemetry, &mut say)?,
    };
    let alerts = rules.alerts(&cells);
    write_alerts(alerts_path, &alerts)?;
    say(format!("{} alert events written to {}", alerts.len(), alerts_path.display()))?;
    if let Some(labels) = &labels {
        let mut rows: Vec<(String, Report)> =
            against.iter().map(|(name, a)| (name.clone(), evaluate(a, labels, &cells.fleet))).collect();
        rows.push((args.name.clone(), evaluate(&alerts, labels, &cells.fleet)));
        say(side_by_side(&rows))?;
    }
    Ok(())
}

fn read_rules(path: &std::path::Path) -> anyhow::Result<RuleSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("rules file {}", path.display()))?;
    let rules: RuleSet =
        serde_json::from_str(&text).with_context(|| format!("rules file {}: not a rule set", path.display()))?;
    rules.validate().map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))?;
    Ok(rules)
}

fn read_cells(paths: &[PathBuf], say: &mut impl FnMut(String) -> anyhow::Result<()>) -> anyhow::Result<Cells> {
    let started = std::time::Instant::now();
    let cells = Cells::read(paths)?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    say(format!(
        "{}: {} terminals, {} sites, {} regions, {} steps of 1 min; {} lines, {} rejected, {} duplicates dropped ({:.1} s)",
        names.join(", "),
        cells.terminals.len(),
        cells.sites.len(),
        cells.regions.len(),
        cells.steps,
        cells.stats.lines,
        cells.stats.rejected,
        cells.stats.duplicates,
        started.elapsed().as_secs_f64()
    ))?;
    Ok(cells)
}

fn write_alerts(path: &std::path::Path, alerts: &[AlertEvent]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating alerts file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for a in alerts {
        serde_json::to_writer(&mut w, a).context("serialising an alert event")?;
        w.write_all(b"\n").with_context(|| format!("writing alerts file {}", path.display()))?;
    }
    w.flush().with_context(|| format!("writing alerts file {}", path.display()))
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "off".to_owned(), |v| format!("{v}"))
}

fn per_model(m: &std::collections::BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "off".to_owned();
    }
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// The rules in words, with their numbers.
fn describe(r: &RuleSet) -> String {
    let t = &r.terminal_supply;
    let s = &r.site_supply;
    let n = &r.region_network;
    let a = &r.terminal_aging;
    let mut o = String::new();
    let _ = writeln!(o, "rules:");
    let _ = writeln!(
        o,
        "  voltage_instability terminal: max_over_time(supply_v_std[5m]) > V per model ({}) or increase(supply_sags[5m]) >= {} \
         or min supply_v_mean/nominal < {}; for {}m, keep_firing_for {}m",
        per_model(&t.v_std_above),
        t.sags_at_least.map_or_else(|| "off".to_owned(), |v| v.to_string()),
        opt(t.v_mean_ratio_below),
        t.for_min,
        t.keep_firing_min
    );
    let _ = writeln!(
        o,
        "  voltage_instability site: count of terminals with max_over_time(supply_v_std[5m]) > V per model ({}) >= {}; for {}m, keep_firing_for {}m",
        per_model(&s.v_std_above),
        s.terminals_at_least.map_or_else(|| "off".to_owned(), |v| v.to_string()),
        s.for_min,
        s.keep_firing_min
    );
    let _ = writeln!(
        o,
        "  network_degradation region: share of >= {} reporting terminals with avg loss > {} % or avg rtt > {} ms >= {}; for {}m, keep_firing_for {}m",
        n.min_terminals,
        opt(n.loss_pct_above),
        opt(n.rtt_ms_above),
        n.share_at_least,
        n.for_min,
        n.keep_firing_min
    );
    let _ = writeln!(
        o,
        "  hardware_aging terminal: card errors/reads over {}m > {} (reads >= {}) or print errors/jobs over {}m > {} (jobs >= {}) \
         or battery health drop over {}m > {}; for {}m, keep_firing_for {}m",
        a.card_window_min,
        opt(a.card_error_ratio_above),
        a.card_reads_at_least,
        a.print_window_min,
        opt(a.print_error_ratio_above),
        a.print_jobs_at_least,
        a.battery_window_min,
        opt(a.battery_health_drop_above),
        a.for_min,
        a.keep_firing_min
    );
    o
}

/// A Markdown table: per kind, one row per detector.
fn side_by_side(rows: &[(String, Report)]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| kind | detector | alerts (true) | incidents (detected) | precision | recall | F1 | false/1k td | median delay | median lead |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    let dur = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), format_duration);
    for kind in AlertKind::ALL {
        for (name, report) in rows {
            let Some(k) = report.kind(kind) else { continue };
            let _ = writeln!(
                o,
                "| {kind} | {name} | {} ({}) | {} ({}) | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                k.firing_alerts,
                k.true_alerts,
                k.incidents,
                k.detected_incidents,
                k.precision,
                k.recall,
                k.f1,
                k.false_alerts_per_1000_terminal_days.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                dur(k.median_delay_ms),
                if kind == AlertKind::HardwareAging { dur(k.median_lead_time_ms) } else { "-".to_owned() },
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use termwatch_telemetry::alerts::{IncidentLabel, Scope, Verdict};
    use termwatch_telemetry::{Measure, Telemetry};

    use super::cells::Cells;
    use super::tune::{History, tune};

    const T0: i64 = 1_788_220_800_000; // 2026-09-01T00:00:00Z

    const REPORT_MS: i64 = 300_000;

    /// Six terminals at two sites, one report every 5 minutes for two days; supply
    /// noise cycles through 0.020-0.039 V, except T-3's during its incident,
    /// where it is `planted` V.
    fn fleet(planted: f64, incident: (i64, i64)) -> Vec<Telemetry<'static>> {
        let mut out = Vec::new();
        for step in 0..576i64 {
            for t in 0..6 {
                let ts = T0 + step * REPORT_MS;
                let mut r = Telemetry::new(format!("T-{t}"), ts, "east-01");
                r.labels[termwatch_telemetry::Label::SiteId.index()] = Some(format!("S-{}", t / 3).into());
                r.labels[termwatch_telemetry::Label::Model.index()] = Some("P200".into());
                let normal = 0.020 + 0.001 * ((step * 7 + t * 3) % 20) as f64;
                let hit = t == 3 && ts > incident.0 && ts <= incident.1;
                r.measures[Measure::SupplyVStd.index()] = Some(if hit { planted } else { normal });
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn tuning_finds_a_planted_supply_threshold() {
        let incident = (T0 + 10 * 3_600_000, T0 + 12 * 3_600_000);
        let cells = Cells::from_records(fleet(0.08, incident)).expect("cells");
        let label = IncidentLabel {
            kind: termwatch_telemetry::alerts::AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            entity: "T-3".into(),
            region: "east-01".into(),
            start: incident.0,
            end: incident.1,
            verdict: Verdict::Incident,
            cause: None,
        };
        let history = History { cells, labels: vec![label.clone()] };
        let (rules, tuned) = tune(std::slice::from_ref(&history));
        let cells = history.cells;
        let v = tuned.iter().find(|t| t.kind == label.kind).expect("voltage tuned");
        assert_eq!(v.objective.f1, 1.0, "rules: {rules:?}");
        // Detected by the incident's first report, 5 minutes in, on the step it falls in.
        assert_eq!(v.objective.timing, REPORT_MS as f64);
        let th = rules.terminal_supply.v_std_above.get("P200").copied();
        assert!(th.is_some_and(|th| (0.039..0.08).contains(&th)), "threshold {th:?} does not separate 0.039 from 0.08");
        // The alert events the rules emit are what the objective scored.
        let alerts = rules.alerts(&cells);
        let firing: Vec<_> = alerts
            .iter()
            .filter(|a| a.state == termwatch_telemetry::alerts::AlertState::Firing && a.kind == label.kind)
            .collect();
        assert!(!firing.is_empty() && firing.iter().all(|a| a.ts > incident.0 && a.ts <= incident.1 + REPORT_MS));
    }
}
