//! `termwatch eval`: scores alert events against incident labels, per kind,
//! as contracts/alerts-v1.md defines it (docs/evaluation.md has the figures).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use termwatch_models::eval::{FleetIndex, evaluate, read_alerts, read_labels};

/// How many missed incidents and false alerts the table lists per kind; `--json` has all.
const MAX_LISTED: usize = 10;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Alert events (alerts-v1), NDJSON plain or gzip, as `termwatch replay --alerts` writes them.
    #[arg(long, value_name = "FILE")]
    pub alerts: PathBuf,
    /// Incident labels (alerts-v1), NDJSON plain or gzip; `not_incident` labels are counted, not scored.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// Telemetry history the alerts came from (which site holds which terminal, terminal-days observed);
    /// repeat for several files. Rejected records are skipped and counted.
    #[arg(long = "telemetry", required = true, value_name = "FILE")]
    pub telemetry: Vec<PathBuf>,
    /// Print the whole report as JSON (every detection, missed incident and false alert) instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let alerts = read_alerts(&args.alerts)?;
    let labels = read_labels(&args.labels)?;
    let fleet = FleetIndex::from_telemetry(&args.telemetry)?;
    let report = evaluate(&alerts, &labels, &fleet);
    let text = if args.json {
        report.to_json().context("serialising the report")? + "\n"
    } else {
        report.to_table(MAX_LISTED)
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `termwatch eval ... | head` is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report to stdout"),
    }
}
