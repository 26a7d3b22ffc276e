//! `termwatch bench`: the end-to-end figures of issue 7, measured in one run
//! on this machine, each beside its target.
//!
//! - **replay**: a simulated history (written to a scratch file first) read,
//!   decoded, validated, deduplicated, batched, turned into features, scored
//!   by `models/default` and turned into alert events (alerts-v1 NDJSON,
//!   written to a null writer), on every core, as `termwatch replay --alerts`
//!   does it. The time per record by stage comes from the same history run
//!   stage by stage on one core.
//! - **stages**: the same reports split by terminal over three partitions,
//!   through three stage-1 engines and the merging stage in one process
//!   (partials through their wire form, cohorts shared), against one engine
//!   holding every terminal; and the partials' bytes per site per window.
//! - **kafka** (with `--brokers`): on one topic of a real broker, a bare
//!   rdkafka consumer that only counts messages versus termwatch end to end
//!   (consume, decode, batch, features, scoring, alert events).
//! - **memory**: for each fleet size, a child process holds that many
//!   terminals in its duplicate map, feature engine and alert tracker; its
//!   resident memory, and the feature state counted from the engine's data
//!   structures.
//! - **latency**: the service path (one thread decoding and scoring, as in
//!   `termwatch run`) fed from memory, first as fast as it goes (the maximum
//!   sustained rate), then paced at 80 % of it. A record *arrives* when the
//!   feeder hands it to the pipeline thread; its *alert event* is out when the
//!   scoring sink has returned from the batch that holds it (any event the
//!   record causes is written by then). Every record's latency counts, not only
//!   those that cause an event.
//! - **scrape**: `/metrics` over HTTP from the real endpoint, with 1,000,000
//!   tracked terminals and two million alert entities behind it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use termwatch_alerts::scoring::Scorer;
use termwatch_features::stages::{LocalStages, StageRows, WireCounts};
use termwatch_features::{FeatureEngine, WindowRows};
use termwatch_models::artifact::ModelSet;
use termwatch_pipeline::{BatchConfig, BatchSink, MemoryDeadLetters, Pipeline, SinkError};
use termwatch_telemetry::alerts::AlertEvent;

use crate::models_cmd::DEFAULT_MODELS;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Seconds instead of minutes: tiny sizes, each measurement once. Checks that everything runs;
    /// its figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Kafka bootstrap servers for the Kafka comparison (a broker you can write topics to, e.g. tansu
    /// on loopback: scripts/bench-kafka starts one); skipped without.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Also write every figure, with its target, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The model artifact to score with.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_MODELS)]
    models: PathBuf,
    /// Where the simulated history is written (and removed after); default: the system's temp directory.
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Internal: hold this many terminals in this process and print its memory as one JSON line.
    #[arg(long, hide = true, value_name = "TERMINALS")]
    memory_child: Option<u32>,
}

/// How big each measurement is.
struct Sizes {
    terminals: u32,
    days: f64,
    rounds: usize,
    latency_records: usize,
    memory: Vec<u32>,
    scrape_terminals: u32,
    kafka_records: u64,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                terminals: 40,
                days: 0.1,
                rounds: 1,
                latency_records: 5_000,
                memory: vec![1_000, 2_000],
                scrape_terminals: 10_000,
                kafka_records: 20_000,
            }
        } else {
            Sizes {
                terminals: 2_000,
                days: 0.5,
                rounds: 3,
                latency_records: 600_000,
                memory: vec![10_000, 100_000, 1_000_000],
                scrape_terminals: 1_000_000,
                kafka_records: 1_000_000,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "op", content = "value")]
enum Target {
    #[serde(rename = ">=")]
    AtLeast(f64),
    #[serde(rename = "<=")]
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }
}

/// One figure of the table.
#[derive(Debug, Clone, Serialize)]
struct Row {
    section: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<Target>,
    met: Option<bool>,
    note: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, section: &'static str, name: impl Into<String>, value: f64, unit: &'static str) -> &mut Row {
        self.rows.push(Row { section, name: name.into(), value, unit, target: None, met: None, note: String::new() });
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }

    fn skip(&mut self, section: &'static str, why: String) {
        self.rows.push(Row {
            section,
            name: "skipped".into(),
            value: f64::NAN,
            unit: "",
            target: None,
            met: None,
            note: why,
        });
    }

    fn print(&self) {
        println!("| section | measurement | figure | target | met | note |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            let target = match r.target {
                Some(Target::AtLeast(t)) => format!(">= {}", fmt_num(t)),
                Some(Target::AtMost(t)) => format!("<= {}", fmt_num(t)),
                None => String::new(),
            };
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "",
            };
            let value = if r.value.is_nan() { String::new() } else { format!("{} {}", fmt_num(r.value), r.unit) };
            println!("| {} | {} | {} | {} | {} | {} |", r.section, r.name, value.trim(), target, met, r.note);
        }
    }
}

impl Row {
    fn target(&mut self, t: Target) -> &mut Row {
        self.target = Some(t);
        self.met = Some(t.met(self.value));
        self
    }
    fn note(&mut self, n: impl Into<String>) -> &mut Row {
        self.note = n.into();
        self
    }
}

/// Numbers as a reader wants them: thousands separated, few decimals.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The value at quantile `q` (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// CPU time (user + system) this process has used, all threads, in seconds.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// A line of /proc/self/status in bytes (VmRSS, VmHWM).
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.memory_child {
        return memory_child(&args.models, n);
    }
    let sizes = Sizes::new(args.smoke);
    let models = ModelSet::load(&args.models)?;
    let scratch =
        args.scratch.clone().unwrap_or_else(std::env::temp_dir).join(format!("termwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create scratch directory {}", scratch.display()))?;
    let result = run_all(&args, &sizes, &models, &scratch);
    // The history is large: never leave it behind, whatever happened.
    let _ = std::fs::remove_dir_all(&scratch);
    let table = result?;
    table.print();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&table.rows).context("serialising the figures")?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The 1-minute load average: what else the machine was doing.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn run_all(args: &BenchArgs, sizes: &Sizes, models: &ModelSet, scratch: &Path) -> anyhow::Result<Table> {
    let mut table = Table::default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    table
        .add("machine", "load average (1 min) at the start", load_average(), "")
        .note(format!("{cores} cores; a load above 0 means other processes shared them"));
    let history = scratch.join("history.ndjson");
    eprintln!("bench: simulating {} terminals for {} days into {}", sizes.terminals, sizes.days, history.display());
    let sim = termwatch_sim::SimConfig {
        terminals: sizes.terminals,
        days: sizes.days,
        seed: 1,
        ..termwatch_sim::SimConfig::default()
    };
    let summary = termwatch_sim::write_files(sim, &history, None).context("simulating the history")?;
    let bytes_per_record = summary.bytes as f64 / summary.records.max(1) as f64;
    table
        .add("replay", "history: records", summary.records as f64, "records")
        .note(format!("{bytes_per_record:.0} bytes a record on average"));

    replay_section(&mut table, sizes, models, &history)?;
    latency_section(&mut table, sizes, models, &history)?;
    memory_section(&mut table, sizes, &args.models)?;
    scrape_section(&mut table, sizes.scrape_terminals)?;
    match &args.brokers {
        Some(brokers) => kafka_section(&mut table, sizes, models, brokers)?,
        None => table.skip("kafka", "no --brokers given (scripts/bench-kafka starts tansu and passes one)".into()),
    }
    table.add("machine", "load average (1 min) at the end", load_average(), "");
    Ok(table)
}

/// Scores every batch and serialises its alert events as `replay --alerts`
/// does, into a null writer; counts the events.
struct ScoringSink {
    scorer: Scorer,
    events: Arc<AtomicU64>,
}

impl ScoringSink {
    /// The sink and its count of alert events.
    fn new(models: &ModelSet) -> anyhow::Result<(ScoringSink, Arc<AtomicU64>)> {
        let events = Arc::new(AtomicU64::new(0));
        Ok((ScoringSink { scorer: Scorer::new(models.clone())?, events: Arc::clone(&events) }, events))
    }

    fn write(&self, events: &[AlertEvent]) -> Result<(), SinkError> {
        write_events(events).map_err(|e| SinkError::Other(e.to_string()))?;
        self.events.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Alert events to alerts-v1 NDJSON, as the alert sink writes them.
fn write_events(events: &[AlertEvent]) -> std::io::Result<()> {
    let mut out = std::io::sink();
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

impl BatchSink for ScoringSink {
    fn name(&self) -> &str {
        "bench-scoring"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let events = self.scorer.process_batch(batch);
        self.write(&events)
    }
    fn end_of_input(&mut self) -> Result<(), SinkError> {
        let events = self.scorer.finish();
        self.write(&events)
    }
}

/// Keeps every batch (for the stage-by-stage run).
struct Keep(Arc<Mutex<Vec<RecordBatch>>>);

impl BatchSink for Keep {
    fn name(&self) -> &str {
        "keep"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.0.lock().map_err(|_| SinkError::Other("lock poisoned".into()))?.push(batch.clone());
        Ok(())
    }
}

fn replay_config() -> BatchConfig {
    // A history is replayed as fast as it is read: batches close when full.
    BatchConfig { max_rows: 8192, max_age: Duration::from_secs(3600) }
}

fn replay_section(table: &mut Table, sizes: &Sizes, models: &ModelSet, history: &Path) -> anyhow::Result<()> {
    let inputs = [history.to_path_buf()];
    // Both cores, end to end, as `termwatch replay --alerts` runs.
    let (mut rates, mut mbs, mut cpu, mut events) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..sizes.rounds {
        let (sink, n_events) = ScoringSink::new(models)?;
        let pipeline = Pipeline::new(replay_config(), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default()));
        let cpu0 = cpu_seconds();
        let report = termwatch_pipeline::replay_parallel(&inputs, pipeline, crate::decoders());
        let cpu_used = cpu_seconds() - cpu0;
        if let Some(e) = report.error {
            return Err(e).context("end-to-end replay");
        }
        let secs = report.elapsed.as_secs_f64();
        let rate = report.stats.read as f64 / secs;
        eprintln!(
            "bench: replay round {round}: {} records in {secs:.2} s, {rate:.0} records/s, {:.2} CPU s",
            report.stats.read, cpu_used
        );
        rates.push(rate);
        mbs.push(report.input_bytes as f64 / secs / 1e6);
        cpu.push(cpu_used / report.stats.read.max(1) as f64 * 1e9);
        events = n_events.load(Ordering::Relaxed);
    }
    let threads = crate::decoders();
    table
        .add("replay", "end to end, all cores: records/s (median)", median(rates), "records/s")
        .target(Target::AtLeast(1_000_000.0))
        .note(format!("{} decoding threads + reader + scoring; {} rounds", threads, sizes.rounds));
    table.add("replay", "end to end, all cores: MB/s (median)", median(mbs), "MB/s");
    let cpu = median(cpu);
    table
        .add("replay", "end to end: CPU time per record (median)", cpu, "ns")
        .note("user + system time of every thread (10 ms resolution)");
    table
        .add(
            "replay",
            "end to end: cores / CPU time per record (a bound, not a measurement)",
            threads as f64 / cpu * 1e9,
            "records/s",
        )
        .note("the rate if every core did nothing else and no thread ever waited");

    // One core, stage by stage, on the same history.
    let kept = Arc::new(Mutex::new(Vec::new()));
    let pipeline =
        Pipeline::new(replay_config(), vec![Box::new(Keep(Arc::clone(&kept)))], Box::new(MemoryDeadLetters::default()));
    let report = termwatch_pipeline::replay(&inputs, pipeline);
    if let Some(e) = report.error {
        return Err(e).context("stage-by-stage replay");
    }
    let records = report.stats.read.max(1) as f64;
    let batches = std::mem::take(&mut *kept.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?);
    let decode_ns = report.elapsed.as_secs_f64() * 1e9 / records;

    let t = Instant::now();
    let mut engine = FeatureEngine::new(models.features.clone());
    let mut windows = 0;
    for b in &batches {
        windows += engine.process_batch(b).len();
    }
    windows += engine.finish().len();
    let features_ns = t.elapsed().as_secs_f64() * 1e9 / records;
    std::hint::black_box(windows);

    let mut scorer = Scorer::new(models.clone())?;
    let mut all_events = Vec::new();
    let t = Instant::now();
    for b in &batches {
        all_events.extend(scorer.process_batch(b));
    }
    all_events.extend(scorer.finish());
    let scoring_ns = t.elapsed().as_secs_f64() * 1e9 / records;
    let t = Instant::now();
    write_events(&all_events).context("serialising alert events")?;
    let alerting_ns = t.elapsed().as_secs_f64() * 1e9 / records;
    if all_events.len() as u64 != events {
        bail!(
            "the end-to-end replay raised {events} alert events, the one-core run {}: the paths disagree",
            all_events.len()
        );
    }
    let total = decode_ns + scoring_ns + alerting_ns;
    table
        .add("replay", "one core: read + decode + validate + dedup + batch", decode_ns, "ns/record")
        .note(format!("{:.0} % of the one-core total", decode_ns / total * 100.0));
    table.add("replay", "one core: features", features_ns, "ns/record");
    // A difference of two timings: on a busy machine it can come out below
    // zero, which says only that it is within this run's noise.
    let detectors_ns = scoring_ns - features_ns;
    table.add("replay", "one core: detectors + alert state (scoring)", detectors_ns.max(0.0), "ns/record").note(
        if detectors_ns >= 0.0 {
            "features + scoring run minus features alone".to_string()
        } else {
            format!("features + scoring run minus features alone: {detectors_ns:.0}, within this run's noise")
        },
    );
    table
        .add("replay", "one core: alert events out (alerts-v1 NDJSON)", alerting_ns, "ns/record")
        .note(format!("{} events", all_events.len()));
    table
        .add("replay", "one core: end to end", 1e9 / total, "records/s")
        .note(format!("{total:.0} ns a record, the sum of the stages"));
    // What both paths do alike: decoding, the detectors and alert state
    // (the same rows scored, terminals in stage 1, sites and regions in
    // stage 2), the events out.
    let alike_ns = decode_ns + detectors_ns.max(0.0) + alerting_ns;
    stages_section(table, sizes, models, &batches, records, alike_ns)
}

/// Partitions of the two-stage comparison: as `deploy/k8s` runs replicas.
const STAGE_PARTITIONS: u64 = 3;

/// One engine holding every terminal against `STAGE_PARTITIONS` stage-1
/// engines holding a partition each and the merging stage, sharing cohorts,
/// the partials in their wire form, in one process on one core, on the same
/// reports (split beforehand: that is the broker's work). Interleaved
/// rounds; the split path must close as many terminal, site and release
/// rows. The whole path adds `alike_ns` a record to both: what they do
/// alike.
fn stages_section(
    table: &mut Table,
    sizes: &Sizes,
    models: &ModelSet,
    batches: &[RecordBatch],
    records: f64,
    alike_ns: f64,
) -> anyhow::Result<()> {
    let split = batches
        .iter()
        .map(|b| termwatch_features::stages::split_by_terminal(b, STAGE_PARTITIONS))
        .collect::<Result<Vec<_>, _>>()
        .context("splitting the batches by terminal")?;
    let names: Vec<String> = (0..STAGE_PARTITIONS).map(|p| format!("telemetry-{p}")).collect();
    let sources: Vec<&str> = names.iter().map(String::as_str).collect();
    let (mut one_ns, mut two_ns, mut ratios, mut whole) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wire = WireCounts::default();
    let mut lessons = 0;
    for round in 0..sizes.rounds {
        let t = Instant::now();
        let mut engine = FeatureEngine::new(models.features.clone());
        let (mut terminal_rows, mut site_rows, mut release_rows) = (0, 0, 0);
        let mut count = |rows: Vec<WindowRows>| {
            for w in rows {
                terminal_rows += w.terminal_voltage.len();
                site_rows += w.site_voltage.len();
                release_rows += w.firmware.len();
            }
        };
        for b in batches {
            count(engine.process_batch(b));
        }
        count(engine.finish());
        let one = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut stages = LocalStages::new(&models.features, &sources, 3_600_000, 64);
        let (mut split_terminal_rows, mut split_site_rows, mut split_release_rows) = (0, 0, 0);
        lessons = 0;
        let mut count = |out: StageRows| {
            split_terminal_rows += out.terminal.iter().map(|(_, w)| w.terminal_voltage.len()).sum::<usize>();
            split_site_rows += out.merged.iter().map(|m| m.sites.len()).sum::<usize>();
            split_release_rows += out.merged.iter().map(|m| m.firmware.len()).sum::<usize>();
            lessons += out.merged.iter().map(|m| m.cohorts.len()).sum::<usize>();
        };
        for parts in &split {
            for (p, b) in parts {
                count(stages.process(*p, b)?);
            }
        }
        count(stages.finish()?);
        let two = t.elapsed().as_secs_f64();
        wire = stages.wire();
        if (terminal_rows, site_rows, release_rows) != (split_terminal_rows, split_site_rows, split_release_rows) {
            bail!(
                "one engine closed {terminal_rows} terminal, {site_rows} site and {release_rows} release rows, \
                 the two stages {split_terminal_rows}, {split_site_rows} and {split_release_rows}: the paths disagree"
            );
        }
        eprintln!("bench: stages round {round}: one engine {one:.3} s, two stages {two:.3} s");
        one_ns.push(one * 1e9 / records);
        two_ns.push(two * 1e9 / records);
        ratios.push(two / one);
        whole.push((alike_ns + two * 1e9 / records) / (alike_ns + one * 1e9 / records));
    }
    let partitions = STAGE_PARTITIONS;
    table.add("stages", "one process, one engine: features", median(one_ns), "ns/record");
    table
        .add(
            "stages",
            format!("{partitions} stage-1 engines + merging stage, one core: features"),
            median(two_ns),
            "ns/record",
        )
        .note("partials and the merged lessons back through postcard; no topic");
    table
        .add("stages", "features: two stages / one engine (median of rounds)", median(ratios), "x")
        .note(format!("{} interleaved rounds; the split's own cost, the whole path's is next", sizes.rounds));
    table
        .add("stages", "whole path, one core: two stages / one process (median of rounds)", median(whole), "x")
        .target(Target::AtMost(1.10))
        .note(format!(
            "each round's features, plus {alike_ns:.0} ns a record both do alike (replay section: decode, \
             detectors and alert state, events out); the partials topic's produce and consume not included"
        ));
    table
        .add(
            "stages",
            "partials: bytes per site per window",
            wire.site_bytes as f64 / wire.site_partials.max(1) as f64,
            "bytes",
        )
        .note(format!(
            "postcard; a source's window, sites, regions and cohort lessons: {:.0} bytes ({} records, {lessons} lessons)",
            wire.bytes as f64 / wire.partials.max(1) as f64,
            wire.partials
        ));
    table
        .add(
            "stages",
            "lessons back: bytes per window",
            wire.lessons_bytes as f64 / wire.lessons.max(1) as f64,
            "bytes",
        )
        .note(format!(
            "postcard; the states of the cohorts a merged window taught, which every stage-1 engine reads ({} windows)",
            wire.lessons
        ));
    Ok(())
}

/// The lines of the history's first `n` records, in one buffer.
fn load_lines(history: &Path, n: usize) -> anyhow::Result<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    let mut f = std::fs::File::open(history).with_context(|| format!("cannot open {}", history.display()))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).with_context(|| format!("cannot read {}", history.display()))?;
    let mut lines = Vec::with_capacity(n);
    let mut start = 0;
    while lines.len() < n && start < data.len() {
        let end = data[start..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| start + i);
        lines.push(start..end);
        start = end + 1;
    }
    data.truncate(start.min(data.len()));
    Ok((data, lines))
}

/// What one run of the service path measured.
struct ServiceRun {
    records: usize,
    elapsed: f64,
    /// Arrival to the end of its batch's scoring, per record, seconds, sorted.
    latencies: Vec<f64>,
    /// Per alert event: arrival of the oldest record of the batch that raised it to the event.
    event_latencies: Vec<f64>,
}

/// Feeds the records to the service path (one thread that decodes, batches
/// and scores, as `termwatch run` has behind its polling thread), at `rate`
/// records/s or as fast as it takes them.
fn service_run(
    models: &ModelSet,
    data: &[u8],
    lines: &[std::ops::Range<usize>],
    rate: Option<f64>,
) -> anyhow::Result<ServiceRun> {
    let (sink, events) = ScoringSink::new(models)?;
    // The service's batching: 8,192 rows or 200 ms.
    let mut pipeline =
        Pipeline::new(BatchConfig::default(), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default()));
    // Chunks of up to 1,024 records, as the Kafka source's polling thread hands them over.
    let (tx, rx) = mpsc::sync_channel::<(Instant, std::ops::Range<usize>)>(64);
    let started = Instant::now();
    let run = std::thread::scope(|scope| -> anyhow::Result<ServiceRun> {
        scope.spawn(move || {
            let mut sent = 0;
            while sent < lines.len() {
                let due = match rate {
                    Some(r) => ((started.elapsed().as_secs_f64() * r) as usize).min(lines.len()),
                    None => lines.len(),
                };
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                while sent < due {
                    let end = (sent + 1024).min(due);
                    if tx.send((Instant::now(), sent..end)).is_err() {
                        return;
                    }
                    sent = end;
                }
            }
        });
        // Arrival times of the records in the open batch, run-length encoded.
        let mut open: Vec<(Instant, usize)> = Vec::new();
        let mut latencies = Vec::with_capacity(lines.len());
        let mut event_latencies = Vec::new();
        let mut seen_events = 0;
        let mut close = |open: &mut Vec<(Instant, usize)>, latencies: &mut Vec<f64>, event_latencies: &mut Vec<f64>| {
            let now = Instant::now();
            for (arrived, n) in open.drain(..) {
                let l = now.duration_since(arrived).as_secs_f64();
                latencies.extend(std::iter::repeat_n(l, n));
            }
            let total = events.load(Ordering::Relaxed);
            if total > seen_events {
                let oldest = latencies.last().copied().unwrap_or(0.0);
                event_latencies.extend(std::iter::repeat_n(oldest, (total - seen_events) as usize));
                seen_events = total;
            }
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok((arrived, range)) => {
                    for (i, r) in lines[range.clone()].iter().enumerate() {
                        let pos = termwatch_pipeline::Position::File {
                            path: "bench",
                            line: (range.start + i) as u64 + 1,
                            offset: r.start as u64,
                        };
                        match open.last_mut() {
                            Some((t, n)) if *t == arrived => *n += 1,
                            _ => open.push((arrived, 1)),
                        }
                        if pipeline.push(&data[r.clone()], pos)? {
                            close(&mut open, &mut latencies, &mut event_latencies);
                        }
                    }
                    if pipeline.poll_age(Instant::now())? {
                        close(&mut open, &mut latencies, &mut event_latencies);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if pipeline.poll_age(Instant::now())? {
                        close(&mut open, &mut latencies, &mut event_latencies);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        pipeline.flush()?;
        close(&mut open, &mut latencies, &mut event_latencies);
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        Ok(ServiceRun { records: lines.len(), elapsed, latencies, event_latencies })
    })?;
    Ok(run)
}

fn latency_section(table: &mut Table, sizes: &Sizes, models: &ModelSet, history: &Path) -> anyhow::Result<()> {
    let (data, lines) = load_lines(history, sizes.latency_records)?;
    let max = service_run(models, &data, &lines, None)?;
    let max_rate = max.records as f64 / max.elapsed;
    let rate = 0.8 * max_rate;
    eprintln!("bench: service path maximum {max_rate:.0} records/s; pacing at {rate:.0}");
    let paced = service_run(models, &data, &lines, Some(rate))?;
    let achieved = paced.records as f64 / paced.elapsed;
    table
        .add("latency", "service path (1 decode+score thread): maximum sustained rate", max_rate, "records/s")
        .note(format!("{} records fed from memory as fast as taken", max.records));
    table.add("latency", "paced input rate (0.8 x maximum)", achieved, "records/s").note(format!("asked {rate:.0}"));
    table
        .add("latency", "arrival -> alert events out: p50", quantile(&paced.latencies, 0.5) * 1e3, "ms")
        .note("every record; batches close at 8,192 rows or 200 ms");
    table
        .add("latency", "arrival -> alert events out: p99", quantile(&paced.latencies, 0.99) * 1e3, "ms")
        .target(Target::AtMost(1000.0));
    let ev = paced.event_latencies.iter().copied().fold(f64::NAN, f64::max);
    table
        .add("latency", "alert events raised: worst latency", if ev.is_nan() { 0.0 } else { ev * 1e3 }, "ms")
        .note(format!("{} events; from the oldest record of the batch that raised each", paced.event_latencies.len()));
    Ok(())
}

/// Memory of a process holding `n` terminals: printed as one JSON line.
#[derive(Debug, Serialize, serde::Deserialize)]
struct MemoryFigures {
    terminals: u64,
    baseline_rss: u64,
    rss: u64,
    peak_rss: u64,
    feature_state_bytes_per_terminal: f64,
    alert_entities: u64,
    dedup_terminals: u64,
}

fn memory_child(models: &Path, n: u32) -> anyhow::Result<()> {
    use termwatch_telemetry::{BatchBuilder, Counter, Label, Measure, Telemetry};
    let set = ModelSet::load(models)?;
    let mut scorer = Scorer::new(set)?;
    let mut dedup = termwatch_pipeline::dedup::Dedup::new();
    let baseline_rss = status_bytes("VmRSS:").unwrap_or(0);
    // Identifiers are written into reused buffers, not held: the process
    // should hold only what termwatch keeps per terminal.
    let (mut id, mut site) = (String::new(), String::new());
    let regions: Vec<String> = (0..50).map(|r| format!("region-{r:02}")).collect();
    let mut b = BatchBuilder::with_capacity(8192);
    const T0: i64 = 1_790_000_000_000;
    // Five reports at 300 s: the first windows close (10 min lateness), so
    // every terminal has baselines and alert state as well as open windows.
    for step in 0..5i64 {
        for t in 0..n as usize {
            use std::fmt::Write as _;
            id.clear();
            site.clear();
            let _ = write!(id, "T-{t:07}");
            let _ = write!(site, "S-{:07}", t * 2 / 5);
            let ts = T0 + step * 300_000 + (t % 60) as i64 * 1000;
            if !matches!(dedup.check(&id, ts, 300), termwatch_pipeline::dedup::Seen::New) {
                continue;
            }
            let mut r = Telemetry::new(id.as_str(), ts, regions[t % regions.len()].as_str());
            r.interval_s = 300;
            r.labels[Label::SiteId.index()] = Some(site.as_str().into());
            r.labels[Label::Model.index()] = Some("P200".into());
            r.labels[Label::Firmware.index()] = Some("4.2.1".into());
            let wobble = (t % 7) as f64 * 0.01;
            for (m, v) in [
                (Measure::SupplyVMean, 12.0 + wobble),
                (Measure::SupplyVMin, 11.9),
                (Measure::SupplyVMax, 12.1 + wobble),
                (Measure::SupplyVStd, 0.02),
                (Measure::NetRttMs, 30.0 + wobble * 100.0),
                (Measure::NetLossPct, 0.1),
                (Measure::BatteryHealthPct, 90.0),
            ] {
                r.measures[m.index()] = Some(v);
            }
            for (c, v) in [
                (Counter::CardReads, 20),
                (Counter::CardReadErrors, 0),
                (Counter::PrintJobs, 10),
                (Counter::TxnCount, 20),
            ] {
                r.counters[c.index()] = Some(v);
            }
            b.append(&r)?;
            if b.len() == 8192 {
                scorer.process_batch(&b.finish()?);
            }
        }
    }
    scorer.process_batch(&b.finish()?);
    drop(b);
    let figures = MemoryFigures {
        terminals: scorer.engine().tracked_terminals() as u64,
        baseline_rss,
        rss: status_bytes("VmRSS:").unwrap_or(0),
        peak_rss: status_bytes("VmHWM:").unwrap_or(0),
        feature_state_bytes_per_terminal: scorer.engine().state_bytes_per_terminal(),
        alert_entities: scorer.alerts().len() as u64,
        dedup_terminals: dedup.len() as u64,
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// A child `termwatch`, without the TERMWATCH_* variables the binary would refuse.
fn child() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("cannot find this executable to start a child")?;
    let mut cmd = std::process::Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TERMWATCH_") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd)
}

fn memory_section(table: &mut Table, sizes: &Sizes, models: &Path) -> anyhow::Result<()> {
    for &n in &sizes.memory {
        let out = child()?
            .args(["bench", "--memory-child", &n.to_string(), "--models"])
            .arg(models)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running the memory child")?;
        if !out.status.success() {
            bail!("the memory child for {n} terminals failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        let m: MemoryFigures = serde_json::from_str(line).with_context(|| format!("memory child printed {line:?}"))?;
        let per = (m.rss.saturating_sub(m.baseline_rss)) as f64 / m.terminals.max(1) as f64;
        table
            .add(
                "memory",
                format!("feature state per terminal at {}", fmt_num(n as f64)),
                m.feature_state_bytes_per_terminal,
                "bytes",
            )
            .target(Target::AtMost(1024.0))
            .note("counted from the engine's data structures");
        table
            .add("memory", format!("RSS growth per terminal at {}", fmt_num(n as f64)), per, "bytes")
            .target(Target::AtMost(1024.0))
            .note(format!(
                "whole process: dedup map, feature engine, {} alert entities; RSS {:.0} MiB (peak {:.0}), {:.0} MiB before",
                m.alert_entities,
                m.rss as f64 / 1048576.0,
                m.peak_rss as f64 / 1048576.0,
                m.baseline_rss as f64 / 1048576.0
            ));
    }
    Ok(())
}

fn scrape_section(table: &mut Table, terminals: u32) -> anyhow::Result<()> {
    use termwatch_alerts::alerting::{AlertTracker, Scored};
    use termwatch_alerts::metrics::{AlertMetrics, AlertView};
    use termwatch_features::FeatureConfig;
    use termwatch_models::policy::AlertingConfig;
    use termwatch_telemetry::alerts::{AlertKind, Reason, Scope};
    use termwatch_telemetry::{BatchBuilder, Label, Telemetry};
    const REGIONS: u32 = 50;
    const T0: i64 = 1_790_000_000_000;
    const MIN5: i64 = 300_000;
    eprintln!("bench: building {terminals} tracked terminals for the scrape");
    // As crates/alerts/benches/alert_metrics.rs: one report per terminal,
    // voltage and aging state for every terminal, 5 % of them firing.
    let mut engine = FeatureEngine::new(FeatureConfig::default());
    let mut builder = BatchBuilder::with_capacity(8192);
    let ids: Vec<String> = (0..terminals).map(|t| format!("T-{t:07}")).collect();
    let sites: Vec<String> = (0..terminals / 2 + 1).map(|s| format!("S-{s:07}")).collect();
    let regions: Vec<String> = (0..REGIONS).map(|r| format!("region-{r:02}")).collect();
    for t in 0..terminals {
        let mut r = Telemetry::new(
            ids[t as usize].as_str(),
            T0 + i64::from(t % 60) * 1000,
            regions[(t % REGIONS) as usize].as_str(),
        );
        r.labels[Label::SiteId.index()] = Some(sites[(t * 2 / 5) as usize].as_str().into());
        builder.append(&r)?;
        if builder.len() == 8192 {
            engine.process_batch(&builder.finish()?);
        }
    }
    engine.process_batch(&builder.finish()?);
    let mut tracker = AlertTracker::new(&AlertingConfig::default())?;
    let reasons = vec![Reason { feature: "v_std_z".into(), value: 0.4, baseline: 0.01, baseline_version: None }];
    #[allow(clippy::too_many_arguments)]
    fn scored<'a>(
        kind: AlertKind,
        scope: Scope,
        entity: &'a str,
        region: &'a str,
        i: i64,
        bad: bool,
        score: f64,
        reasons: &[Reason],
    ) -> Scored<'a> {
        Scored {
            window_end_ms: T0 + i * MIN5,
            kind,
            scope,
            entity,
            region,
            score,
            bad,
            critical: score > 0.95,
            holds: bad,
            model_version: "bench-1",
            reasons: reasons.to_vec().into(),
        }
    }
    for i in 0..3 {
        for t in 0..terminals as usize {
            let region = regions[t % REGIONS as usize].as_str();
            let bad = t % 20 == 0;
            let score = if bad { 0.5 + (t % 1000) as f64 / 2000.0 } else { 0.01 };
            tracker.observe(scored(
                AlertKind::VoltageInstability,
                Scope::Terminal,
                &ids[t],
                region,
                i,
                bad,
                score,
                &reasons,
            ));
            tracker.observe(scored(
                AlertKind::HardwareAging,
                Scope::Terminal,
                &ids[t],
                region,
                i,
                false,
                0.02,
                &reasons,
            ));
        }
        for s in 0..(sites.len() / 7).min(2000) {
            let region = regions[s % REGIONS as usize].as_str();
            tracker.observe(scored(
                AlertKind::VoltageInstability,
                Scope::Site,
                &sites[s * 7],
                region,
                i,
                true,
                0.8,
                &reasons,
            ));
        }
        for (r, region) in regions.iter().enumerate() {
            tracker.observe(scored(
                AlertKind::NetworkDegradation,
                Scope::Region,
                region,
                region,
                i,
                r < 10,
                0.9,
                &reasons,
            ));
        }
    }
    let registry = prometheus::Registry::new();
    termwatch_pipeline::PipelineMetrics::register(&registry)?;
    termwatch_pipeline::KafkaMetrics::register(&registry)?;
    let metrics = AlertMetrics::register(&registry)?;
    let region_scores: Vec<(&str, f64)> = regions.iter().map(|r| (r.as_str(), 0.1)).collect();
    let scores = vec![
        (
            (AlertKind::VoltageInstability, Scope::Terminal),
            (0..terminals).map(|t| f64::from(t % 100) / 100.0).collect(),
        ),
        ((AlertKind::HardwareAging, Scope::Terminal), vec![0.02; terminals as usize]),
    ];
    metrics.observe(&AlertView {
        alerts: &[&tracker],
        engines: &[("", &engine)],
        events: &[],
        scores: &scores,
        region_scores: &region_scores,
        releases: &[],
        thresholds: &[],
        model_version: "bench-1",
        now_ms: T0 + 20 * MIN5,
    });
    let (entities, firing) = (tracker.len(), tracker.firing_len());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let listener = rt.block_on(crate::serve::bind("127.0.0.1:0".parse()?))?;
    let addr = listener.local_addr()?;
    let endpoints = crate::serve::Endpoints {
        registry,
        ready: Arc::new(AtomicBool::new(true)),
        web: Arc::new(crate::serve::WebConfig::default()),
    };
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::select! {
                () = crate::serve::serve(listener, endpoints) => {}
                () = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        })
    });
    let mut times = Vec::new();
    let mut body = Vec::new();
    for _ in 0..31 {
        body.clear();
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        s.read_to_end(&mut body)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(server); // detached: it ends with the process
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {:?}", text.lines().next());
    }
    let series = text.lines().filter(|l| l.starts_with("termwatch_")).count();
    let max = times.iter().copied().fold(0.0, f64::max);
    table
        .add(
            "scrape",
            format!("GET /metrics at {} tracked terminals (median of 31)", fmt_num(terminals as f64)),
            median(times),
            "ms",
        )
        .target(Target::AtMost(50.0))
        .note(format!(
            "max {max:.2} ms; {} bytes, {series} series; {entities} alert entities, {firing} firing",
            body.len()
        ));
    Ok(())
}

fn kafka_section(table: &mut Table, sizes: &Sizes, models: &ModelSet, brokers: &str) -> anyhow::Result<()> {
    let topic = format!("termwatch-bench-{}", std::process::id());
    let records = kafka::produce(brokers, &topic, sizes.kafka_records)?;
    let (mut bare, mut tw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        let b = kafka::bare(brokers, &topic, &format!("{topic}-bare-{round}"), records)?;
        let t = kafka::termwatch(brokers, &topic, &format!("{topic}-termwatch-{round}"), records, models)?;
        eprintln!("bench: kafka round {round}: bare {b:.0} msg/s, termwatch {t:.0} msg/s, ratio {:.2}", t / b);
        bare.push(b);
        tw.push(t);
        ratios.push(t / b);
    }
    table
        .add("kafka", "bare rdkafka consumer (median)", median(bare), "msg/s")
        .note(format!("{records} records, {} partitions", kafka::PARTITIONS));
    table.add(
        "kafka",
        "termwatch end to end: consume, decode, batch, features, scoring, alerts (median)",
        median(tw),
        "msg/s",
    );
    table
        .add("kafka", "termwatch / bare (median of the rounds' ratios)", median(ratios), "")
        .target(Target::AtLeast(0.70));
    Ok(())
}

mod kafka {
    //! The Kafka comparison, as crates/pipeline/benches/kafka_throughput.rs
    //! runs it, with scoring behind termwatch's consumer.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use termwatch_models::artifact::ModelSet;
    use termwatch_pipeline::{
        BatchConfig, KafkaConfig, KafkaMetrics, KafkaSource, MemoryDeadLetters, Pipeline, PipelineMetrics,
    };

    use super::ScoringSink;

    pub const PARTITIONS: i32 = 12;
    /// Both consumers: without it librdkafka's 500 ms fetch wait starves a consumer of a quiet broker.
    const FETCH: [(&str, &str); 3] =
        [("fetch.wait.max.ms", "5"), ("max.partition.fetch.bytes", "4194304"), ("fetch.max.bytes", "67108864")];
    /// A round that has not finished by then has stalled.
    const ROUND_LIMIT: Duration = Duration::from_secs(300);

    pub fn produce(brokers: &str, topic: &str, records: u64) -> anyhow::Result<u64> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().context("Kafka admin client")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let created = rt.block_on(
            admin.create_topics(&[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()),
        )?;
        for r in created {
            r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t} on {brokers}: {e}"))?;
        }
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("Kafka producer")?;
        let mut sim = termwatch_sim::Simulator::new(termwatch_sim::SimConfig {
            terminals: 5_000,
            days: records as f64 / (5_000.0 * 1440.0) * 1.6 + 0.01,
            ..termwatch_sim::SimConfig::default()
        })?;
        let mut buf = Vec::new();
        let mut n = 0u64;
        while n < records {
            let Some(meta) = sim.next_record(&mut buf) else { break };
            let key = sim.terminal_id(meta.terminal).to_string();
            let mut rec = BaseRecord::<str, [u8]>::to(topic).key(&key).payload(&buf);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            n += 1;
        }
        producer.flush(Duration::from_secs(120)).context("flushing the producer")?;
        Ok(n)
    }

    pub fn bare(brokers: &str, topic: &str, group: &str, records: u64) -> anyhow::Result<f64> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers).set("group.id", group).set("auto.offset.reset", "earliest");
        for (k, v) in FETCH {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create().context("bare consumer")?;
        consumer.subscribe(&[topic])?;
        let (mut n, mut started, limit) = (0u64, None, Instant::now() + ROUND_LIMIT);
        while n < records {
            if Instant::now() > limit {
                anyhow::bail!("the bare consumer read {n} of {records} messages in {ROUND_LIMIT:?}");
            }
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                started.get_or_insert_with(Instant::now);
                n += 1;
            }
        }
        Ok(n as f64 / started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64()))
    }

    pub fn termwatch(brokers: &str, topic: &str, group: &str, records: u64, models: &ModelSet) -> anyhow::Result<f64> {
        let mut config = KafkaConfig {
            brokers: brokers.into(),
            group_id: group.into(),
            topics: vec![topic.into()],
            dead_letter_topic: format!("{topic}-dlq"),
            ..KafkaConfig::default()
        };
        for (k, v) in FETCH {
            config.properties.insert(k.into(), v.into());
        }
        let registry = prometheus::Registry::new();
        let metrics = KafkaMetrics::register(&registry)?;
        let done = PipelineMetrics::register(&registry)?;
        let (sink, _) = ScoringSink::new(models)?;
        // Dead letters to memory: this measures the consume path, not a producer round trip for the few damaged records.
        let pipeline =
            Pipeline::new(BatchConfig::default(), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default()))
                .with_metrics(done.clone());
        let source = KafkaSource::new(&config, pipeline, metrics.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || source.run(&flag));
        // From the first message to the last record scored (counted when its
        // batch has left every sink): group join excluded, as for the bare consumer.
        let (mut started, limit) = (None, Instant::now() + ROUND_LIMIT);
        let result = loop {
            if metrics.messages_consumed.get() > 0 {
                started.get_or_insert_with(Instant::now);
            }
            let seen = done.records_read.get();
            if seen >= records {
                break Ok(records as f64 / started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64()));
            }
            if Instant::now() > limit {
                break Err(anyhow::anyhow!("termwatch consumed {seen} of {records} messages in {ROUND_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        stop.store(true, Ordering::Relaxed);
        match handle.join() {
            Ok(r) => {
                r.context("termwatch's Kafka source")?;
            }
            Err(_) => anyhow::bail!("termwatch's Kafka source panicked"),
        }
        result
    }
}
