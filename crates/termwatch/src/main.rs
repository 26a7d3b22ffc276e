//! termwatch: watches a fleet of payment terminals through their telemetry.

mod bench;
mod demo;
mod eval_cmd;
mod export;
mod models_cmd;
mod regional;
mod rules;
mod run;
mod serve;
mod simulate;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use termwatch_config as config;
use termwatch_pipeline::{BatchConfig, FileDeadLetters, NdjsonFile, Pipeline, ReplayReport};

#[derive(Parser, Debug)]
#[command(name = "termwatch", version, about = "Watches a fleet of payment terminals through their telemetry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measures replay throughput, Kafka versus a bare consumer, memory per terminal, detection latency and
    /// the /metrics scrape on this machine, each against its target (BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Streams a simulated fleet through an embedded Kafka into the real service: the main job, nothing to install.
    Demo(demo::DemoArgs),
    /// Scores alert events against incident labels per kind: precision, recall, F1, false alerts per 1,000 terminal-days, delay, lead time.
    Eval(eval_cmd::EvalArgs),
    /// Writes telemetry history and its features (the one feature code path) as day-partitioned Parquet.
    Export(export::ExportArgs),
    /// Consumes telemetry from Kafka as a consumer-group member: the service.
    Run(RunArgs),
    /// Static-threshold rules (what a NOC would write in Prometheus), tuned on labels or read from a file: alert events to compare with.
    Rules(rules::RulesArgs),
    /// Replays telemetry history (NDJSON, plain or gzip) through the pipeline.
    Replay(ReplayArgs),
    /// Writes a simulated fleet's telemetry history and its ground-truth labels.
    Simulate(simulate::SimulateArgs),
    /// Fits the detectors on a labelled history and writes a model artifact.
    Train(models_cmd::TrainArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML configuration; every key has a default, and TERMWATCH_* environment variables override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Before consuming, replay this history (NDJSON, plain or gzip; repeat for several) so baselines are
    /// learned before going live. Needs the default model; continues from and into the state snapshot.
    #[arg(long = "warm-up", value_name = "FILE")]
    warm_up: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// Telemetry NDJSON file, plain or gzip (recognised by content); repeat for several, read in order.
    #[arg(long = "input", required = true, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Where rejected records go, one JSON object per line with the reason, the position and the raw record.
    #[arg(long, value_name = "FILE")]
    dead_letter: PathBuf,
    /// Score the history and write alert events (alerts-v1) here, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    alerts: Option<PathBuf>,
    /// The model artifact to score with (with --alerts).
    #[arg(long, value_name = "FILE", default_value = models_cmd::DEFAULT_MODELS)]
    models: PathBuf,
    /// Snapshot of what scoring has learned (with --alerts): restored at the start when present,
    /// written at the end, so a later replay or `termwatch run` continues from it.
    #[arg(long, value_name = "FILE", requires = "alerts")]
    state: Option<PathBuf>,
    /// Records longer than this many bytes are rejected as (record):too_large, read past in bounded memory.
    #[arg(long, default_value_t = termwatch_telemetry::MAX_RECORD_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(256..=16_777_216))]
    max_record_bytes: u64,
    #[command(flatten)]
    batch: BatchArgs,
}

#[derive(clap::Args, Debug, Clone, Copy)]
struct BatchArgs {
    /// A batch closes at this many rows...
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    batch_rows: u32,
    /// ...or this many milliseconds after its first record, whichever comes first.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    batch_ms: u64,
}

impl BatchArgs {
    fn config(self) -> BatchConfig {
        BatchConfig { max_rows: self.batch_rows as usize, max_age: Duration::from_millis(self.batch_ms) }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERMWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::demo(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Export(args) => export::run(args),
        Command::Run(args) => {
            config::Config::load(args.config.as_deref(), std::env::vars()).and_then(|c| run::run(c, &args.warm_up))
        }
        Command::Replay(args) => replay(args),
        Command::Rules(args) => rules::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Train(args) => models_cmd::train(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    // A mistyped path should fail now, not after an hour of the other inputs.
    for input in &args.inputs {
        NdjsonFile::open(input)?;
    }
    let mut sinks: Vec<Box<dyn termwatch_pipeline::BatchSink>> = Vec::new();
    if let Some(alerts) = &args.alerts {
        let mut sink = termwatch_alerts::sink::AlertSink::file(&args.models, alerts)?;
        if let Some(state) = &args.state {
            let inputs: Vec<String> = args.inputs.iter().map(|p| p.display().to_string()).collect();
            let position = format!("the end of {}", inputs.join(", "));
            sink = sink.with_state(termwatch_alerts::sink::StateFile::new(state.clone(), Duration::MAX, position));
        }
        sinks.push(Box::new(sink));
    }
    let dead_letters = FileDeadLetters::create(&args.dead_letter)?;
    let pipeline = Pipeline::new(args.batch.config(), sinks, Box::new(dead_letters))
        .with_max_record_bytes(args.max_record_bytes as usize);
    let report = termwatch_pipeline::replay_parallel(&args.inputs, pipeline, decoders());
    println!("{}", summary(&report));
    match report.error {
        Some(e) => Err(e).context("replay stopped before the end of its inputs"),
        None => Ok(()),
    }
}

/// Threads that decode a replayed history: one per core. The reading
/// thread and the one running the sinks share the cores with them; they
/// are light by comparison (see BENCHMARKS.md).
pub(crate) fn decoders() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The one-line summary of a replay.
fn summary(r: &ReplayReport) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut s = format!(
        "replay: {}, {} batches, {:.2} s, {:.0} records/s, {:.1} MB/s",
        r.stats,
        r.stats.batches,
        secs,
        r.stats.read as f64 / secs,
        r.input_bytes as f64 / secs / 1e6,
    );
    if r.blank_lines > 0 {
        s.push_str(&format!(", {} blank lines skipped", r.blank_lines));
    }
    s
}
