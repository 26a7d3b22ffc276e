//! `termwatch train` and its model card.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use arrow::record_batch::RecordBatch;
use termwatch_features::{FeatureConfig, FeatureEngine};
use termwatch_models::artifact::{ModelSet, TrainingData};
use termwatch_models::detector::CRITICAL_OFF;
use termwatch_models::eval::format_duration;
use termwatch_models::training::{self, EntitySpans, FNV_OFFSET, TrainConfig, TrainingRows};
use termwatch_pipeline::{BatchConfig, BatchSink, CountOnlyDeadLetters, Pipeline, SinkError, Sources};
use termwatch_telemetry::alerts::{AlertKind, Scope};
use termwatch_telemetry::time::format_rfc3339_ms;

/// Where `replay --alerts` finds its models unless told otherwise.
pub const DEFAULT_MODELS: &str = "models/default/model.json";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Telemetry history: NDJSON (plain or gzip), a directory written by `termwatch export` (its
    /// telemetry/), or a .parquet file; repeat for several, read in order.
    #[arg(long = "input", required = true, value_name = "PATH")]
    inputs: Vec<PathBuf>,
    /// Train only on reports at or after this time (RFC 3339, or YYYY-MM-DD for 00:00 UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: Option<i64>,
    /// Train only on reports before this time (RFC 3339, or YYYY-MM-DD for 00:00 UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: Option<i64>,
    /// Incident labels (alerts-v1): ground truth, and analysts' not_incident feedback.
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// Directory to write the artifact to (model.json and MODEL_CARD.md).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Version recorded in the artifact and in every alert it raises.
    #[arg(long, default_value = "termwatch-default-1")]
    version: String,
    /// Calibration target: false alerts per 1,000 terminal-days on healthy training windows, per alert kind
    /// (voltage splits it between its site and terminal detectors).
    #[arg(long, default_value_t = 0.2)]
    target_false_alerts: f64,
    /// Another calibration target for one kind, as KIND=RATE (e.g. firmware_regression=0.05); repeatable.
    #[arg(long = "target-false-alerts-for", value_name = "KIND=RATE", value_parser = parse_kind_target)]
    kind_targets: Vec<(AlertKind, f64)>,
    /// Hold a firing alert of one kind up while its windows score at or above the threshold this target
    /// would calibrate, as KIND=RATE (e.g. firmware_regression=0.05 with a stricter
    /// --target-false-alerts-for): it fires on strict evidence and resolves when its windows look ordinary.
    #[arg(long = "resolve-at-target-for", value_name = "KIND=RATE", value_parser = parse_kind_target)]
    resolve_targets: Vec<(AlertKind, f64)>,
    /// Keep the upper bound of the training windows' false-alert rate, at this confidence (e.g. 0.9),
    /// within the target, not the rate itself: a budget shown by a handful of alerts is uncertain.
    #[arg(long, value_name = "CONFIDENCE", value_parser = parse_confidence)]
    false_alert_confidence: Option<f64>,
    /// Each --input is a history of its own (another fleet or period, e.g. one simulated at 60 s and one
    /// at 300 s), with its own feature state; without it, the inputs are consecutive parts of one history.
    #[arg(long)]
    independent: bool,
    /// A history that trains one kind's detectors only, as KIND=PATH (e.g. a fleet labelled for
    /// network_degradation alone, whose other kinds' faults would otherwise be taught as healthy); a
    /// history of its own, with its own feature state, counted in that kind's false-alert budget only;
    /// repeatable. Its labels are in --labels.
    #[arg(long = "input-for", value_name = "KIND=PATH", value_parser = parse_kind_path)]
    inputs_for: Vec<(AlertKind, PathBuf)>,
}

fn parse_confidence(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if c > 0.0 && c < 1.0 => Ok(c),
        _ => Err(format!("{s:?}: expected a confidence between 0 and 1, e.g. 0.9")),
    }
}

fn parse_kind(kind: &str) -> Result<AlertKind, String> {
    AlertKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| format!("{kind:?}: not an alert kind (one of {:?})", AlertKind::ALL.map(|k| k.as_str())))
}

fn parse_kind_path(s: &str) -> Result<(AlertKind, PathBuf), String> {
    let (kind, path) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KIND=PATH"))?;
    if path.is_empty() {
        return Err(format!("{s:?}: expected a path after {kind}="));
    }
    Ok((parse_kind(kind)?, PathBuf::from(path)))
}

fn parse_kind_target(s: &str) -> Result<(AlertKind, f64), String> {
    let (kind, rate) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KIND=RATE"))?;
    let kind = parse_kind(kind)?;
    match rate.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok((kind, r)),
        _ => Err(format!("{rate:?}: expected a positive number of false alerts per 1,000 terminal-days")),
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    use termwatch_telemetry::time::{parse_date, parse_rfc3339_ms};
    if s.len() == 10 {
        return parse_date(s).map(|d| i64::from(d) * 86_400_000).map_err(|e| e.to_string());
    }
    parse_rfc3339_ms(s).map_err(|e| e.to_string())
}

/// Event-time range of the reports training uses, epoch ms, `[from, to)`.
#[derive(Debug, Clone, Copy, Default)]
struct Range {
    from: Option<i64>,
    to: Option<i64>,
}

impl Range {
    fn is_all(self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    /// The rows of `batch` in range.
    fn filter(self, batch: &RecordBatch) -> Result<RecordBatch, SinkError> {
        use arrow::array::{AsArray, BooleanArray};
        use arrow::datatypes::TimestampMillisecondType;
        let ts = batch
            .column_by_name("ts")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| SinkError::Other("telemetry batch without a ts column".into()))?;
        let keep = BooleanArray::from_iter(
            ts.values().iter().map(|t| Some(self.from.is_none_or(|f| *t >= f) && self.to.is_none_or(|e| *t < e))),
        );
        arrow::compute::filter_record_batch(batch, &keep).map_err(|e| SinkError::Other(e.to_string()))
    }
}

/// Feeds batches to a feature engine and keeps the rows for training.
#[derive(Clone)]
struct Collect(Arc<Mutex<(FeatureEngine, TrainingRows)>>, Range);

impl BatchSink for Collect {
    fn name(&self) -> &str {
        "training-features"
    }
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows();
        self.process_sourced(batch, &Sources::single(termwatch_features::DEFAULT_SOURCE, rows))
    }
    fn process_sourced(&mut self, batch: &RecordBatch, sources: &Sources) -> Result<(), SinkError> {
        let mut g = self.0.lock().map_err(|_| SinkError::Other("training lock poisoned".into()))?;
        let (engine, rows) = &mut *g;
        let windows = if self.1.is_all() {
            let runs: Vec<(&str, usize)> = sources.runs().collect();
            engine.process_sourced(batch, &runs)
        } else {
            // Rows out of range are left out, so the runs no longer line up:
            // training reads one history in order, as one input.
            let kept = self.1.filter(batch)?;
            engine.process_sourced(&kept, &[(termwatch_features::DEFAULT_SOURCE, kept.num_rows())])
        };
        rows.add(engine, &windows);
        Ok(())
    }
    fn end_of_source(&mut self, source: &str) -> Result<(), SinkError> {
        let mut g = self.0.lock().map_err(|_| SinkError::Other("training lock poisoned".into()))?;
        let (engine, rows) = &mut *g;
        let windows = engine.end_of_source(source);
        rows.add(engine, &windows);
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), SinkError> {
        let mut g = self.0.lock().map_err(|_| SinkError::Other("training lock poisoned".into()))?;
        let (engine, rows) = &mut *g;
        let windows = engine.finish();
        rows.add(engine, &windows);
        Ok(())
    }
}

/// Runs one history through the pipeline and the feature engine: the same
/// path as the service, so training sees the features scoring will.
fn collect_rows(inputs: &[PathBuf], features: &FeatureConfig, range: Range) -> anyhow::Result<TrainingRows> {
    let collect = Collect(Arc::new(Mutex::new((FeatureEngine::new(features.clone()), TrainingRows::default()))), range);
    let pipeline = Pipeline::new(
        BatchConfig { max_rows: 8192, max_age: Duration::from_secs(3600) },
        vec![Box::new(collect.clone())],
        Box::new(CountOnlyDeadLetters),
    );
    let report = termwatch_pipeline::replay(inputs, pipeline);
    if let Some(e) = report.error {
        return Err(e).context("reading the training history");
    }
    eprintln!("train: history {}", report.stats);
    let inner = Arc::try_unwrap(collect.0)
        .map_err(|_| anyhow::anyhow!("the training sink is still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("training lock poisoned"))?;
    Ok(inner.1)
}

/// The same, for Parquet: polars loads and prepares the history
/// (`termwatch-history`), and its batches go through the same feature engine.
/// Each input (an export, a file) is loaded in its own order, one after the other.
fn collect_parquet_rows(
    inputs: &[Vec<PathBuf>],
    features: &FeatureConfig,
    range: Range,
) -> anyhow::Result<TrainingRows> {
    let mut engine = FeatureEngine::new(features.clone());
    let mut rows = TrainingRows::default();
    let opts = termwatch_history::LoadOptions { from_ms: range.from, to_ms: range.to, ..Default::default() };
    for files in inputs {
        let report = termwatch_history::load(files, &opts, |batch| {
            let windows = engine.process_batch(batch);
            rows.add(&engine, &windows);
        })
        .context("loading the Parquet training history")?;
        eprintln!(
            "train: history {} rows from {} Parquet files, replayed in {} order; polars {:.2} s, copy to Arrow {:.2} s",
            report.rows,
            report.files,
            report.order,
            report.polars.as_secs_f64(),
            report.convert.as_secs_f64(),
        );
    }
    let windows = engine.finish();
    rows.add(&engine, &windows);
    let c = engine.counters();
    eprintln!("train: {} reports late for their window and {} with a clock far ahead, dropped", c.late, c.ahead);
    Ok(rows)
}

/// One history's inputs: NDJSON files, or the Parquet files of exports and .parquet files.
enum History {
    Ndjson(Vec<PathBuf>),
    /// The Parquet files of each input.
    Parquet(Vec<Vec<PathBuf>>),
}

fn history(inputs: &[PathBuf]) -> anyhow::Result<History> {
    let parquet: Vec<bool> = inputs.iter().map(|p| termwatch_history::is_parquet(p)).collect();
    if parquet.iter().all(|p| !p) {
        return Ok(History::Ndjson(inputs.to_vec()));
    }
    if let Some(i) = parquet.iter().position(|p| !p) {
        bail!(
            "{} is NDJSON but other inputs of the same history are Parquet: export it with `termwatch export`, \
             or pass --independent if it is another history",
            inputs[i].display()
        );
    }
    let files = inputs.iter().map(|p| termwatch_history::parquet_files(p)).collect::<Result<_, _>>()?;
    Ok(History::Parquet(files))
}

/// The files whose bytes make up the inputs: NDJSON files as given, a
/// Parquet directory's files in sorted path order.
fn input_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            files.extend(termwatch_history::parquet_files(p)?);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn fingerprint(inputs: &[PathBuf]) -> anyhow::Result<(String, Vec<(String, u64)>)> {
    let mut h = FNV_OFFSET;
    let mut sizes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in &input_files(inputs)? {
        let mut f = File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf).with_context(|| format!("cannot read input {}", p.display()))?;
            if k == 0 {
                break;
            }
            h = training::fnv1a(h, &buf[..k]);
            n += k as u64;
        }
        sizes.push((p.display().to_string(), n));
    }
    Ok((format!("fnv1a64:{h:016x}"), sizes))
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let all_inputs: Vec<PathBuf> = args.inputs.iter().chain(args.inputs_for.iter().map(|(_, p)| p)).cloned().collect();
    let (fingerprint, inputs) = fingerprint(&all_inputs)?;
    let labels = termwatch_models::eval::read_labels(&args.labels)?;
    let features = FeatureConfig::default();
    let groups: Vec<Vec<PathBuf>> = if args.independent {
        args.inputs.iter().map(|p| vec![p.clone()]).collect()
    } else {
        vec![args.inputs.clone()]
    };
    let range = Range { from: args.from, to: args.to };
    if let (Some(from), Some(to)) = (range.from, range.to)
        && from >= to
    {
        bail!("--from {} is not before --to {}", format_rfc3339_ms(from), format_rfc3339_ms(to));
    }
    let rows_of = |inputs: &[PathBuf]| match history(inputs)? {
        History::Ndjson(files) => collect_rows(&files, &features, range),
        History::Parquet(files) => collect_parquet_rows(&files, &features, range),
    };
    // Independent histories are told apart by time alone (an entity's
    // windows are one sequence, labels match by name and time): two that
    // name an entity alike over the same days are refused, not blended.
    let mut earlier: Vec<(String, EntitySpans)> = Vec::new();
    let mut apart = |history: &TrainingRows, inputs: &[PathBuf]| -> anyhow::Result<()> {
        let name = inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let spans = history.spans();
        if let Some((i, shared)) = training::first_shared(earlier.iter().map(|(_, s)| s), &spans) {
            bail!(
                "{name}: {} {} has windows from {} to {} in {} too: independent training histories are told \
                 apart by time, so the two would be read as one {} and a label of one would mark both; give the \
                 fleets distinct names, or histories of different periods",
                shared.scope,
                shared.entity,
                format_rfc3339_ms(shared.from_ms),
                format_rfc3339_ms(shared.to_ms),
                earlier[i].0,
                shared.scope,
            );
        }
        earlier.push((name, spans));
        Ok(())
    };
    let mut rows = TrainingRows::default();
    for group in &groups {
        let history = rows_of(group)?;
        apart(&history, group)?;
        rows.merge(history);
    }
    for (kind, path) in &args.inputs_for {
        let mut history = rows_of(std::slice::from_ref(path))?;
        history.keep_only(*kind);
        apart(&history, std::slice::from_ref(path))?;
        rows.merge_for(*kind, history);
    }
    let (Some(first), Some(last)) = (rows.first_ms, rows.last_ms) else {
        bail!("the training history closed no feature window: is it empty?");
    };
    let data = TrainingData {
        inputs,
        fingerprint,
        labels: Some(args.labels.display().to_string()),
        first_window_end: format_rfc3339_ms(first),
        last_window_end: format_rfc3339_ms(last),
        terminal_days: rows.terminal_days,
        inputs_for: args.inputs_for.iter().map(|(k, p)| (p.display().to_string(), *k)).collect(),
        kind_terminal_days: Vec::new(),
        incidents_by_kind: Vec::new(),
        not_incident_labels: 0,
    };
    let config = TrainConfig {
        target_false_alerts_per_1000_terminal_days: args.target_false_alerts,
        kind_targets: args.kind_targets.clone(),
        resolve_targets: args.resolve_targets.clone(),
        false_alert_confidence: args.false_alert_confidence,
        ..TrainConfig::default()
    };
    let set = training::train(&rows, &labels, features, &config, data, args.version.clone())?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let path = args.out.join("model.json");
    let json = serde_json::to_string_pretty(&set).context("serialising the model set")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    let card = args.out.join("MODEL_CARD.md");
    std::fs::write(&card, model_card(&set)).with_context(|| format!("cannot write {}", card.display()))?;
    for f in &set.figures {
        eprintln!(
            "train: {} {}: {} positive / {} healthy windows, threshold {:.3}, critical {}, window recall {:.3}, specificity {:.5}, calibrated false alerts {:.3} per 1,000 terminal-days ({:.3} at once); training incidents {} detected {} (k rule alone {}), {} first caught at once, median delay {} (k rule alone {})",
            f.kind,
            f.scope,
            f.positive_windows,
            f.negative_windows,
            set.detector(f.kind, f.scope).map(|d| d.threshold).unwrap_or(f64::NAN),
            set.detector(f.kind, f.scope).map_or_else(|| "-".to_owned(), |d| critical_text(d.critical_threshold)),
            f.window_recall,
            f.window_specificity,
            f.calibrated_false_alerts_per_1000_terminal_days,
            f.calibrated_critical_false_alerts_per_1000_terminal_days,
            f.incidents.incidents,
            f.incidents.detected,
            f.incidents.k_only_detected,
            f.incidents.first_caught_at_once,
            delay_text(f.incidents.median_delay_ms),
            delay_text(f.incidents.k_only_median_delay_ms),
        );
    }
    for (d, f) in set.detectors.iter().zip(&set.figures) {
        if let Some(r) = f.resolve {
            eprintln!(
                "train: {} {}: resolve threshold {} (that of a target of {} per 1,000 terminal-days); training \
                 incidents resolved before they ended: {} at the threshold, {} held",
                d.kind,
                d.scope,
                d.resolve_threshold.map_or_else(|| "none: not below the threshold".to_owned(), |h| format!("{h:.3}")),
                r.target_false_alerts_per_1000_terminal_days,
                r.early_at_threshold,
                r.early_at_resolve_threshold,
            );
        }
    }
    if set.detector(AlertKind::FirmwareRegression, Scope::Cohort).is_none() {
        eprintln!(
            "train: no firmware_regression detector: the history has no window of a labelled firmware regression \
             and of a healthy version both; the artifact scores no firmware"
        );
    }
    println!("wrote {} and {}", path.display(), card.display());
    Ok(())
}

/// The training terminal-days, and those of kinds that also had inputs of their own.
fn terminal_days_text(data: &TrainingData) -> String {
    let mut s = data.terminal_days.to_string();
    for (kind, days) in &data.kind_terminal_days {
        s.push_str(&format!("; {kind}: {days}, with its own inputs"));
    }
    s
}

fn critical_text(critical_threshold: f64) -> String {
    if critical_threshold >= CRITICAL_OFF { "off".to_owned() } else { format!("{critical_threshold:.4}") }
}

fn delay_text(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), format_duration)
}

fn model_card(set: &ModelSet) -> String {
    let mut s = format!(
        "# Model card: {}\n\nFormat `{}`. {} detectors, each a logistic regression (linfa) over window features\n\
         computed by `termwatch-features` (windows of {} s, lateness {} s), standardised with the\n\
         training data's means and deviations.\n\n\
         Each detector alerts in two tiers: `k` consecutive windows at or above its threshold fire a\n\
         warning, and one window at or above its critical threshold fires a critical alert at once\n\
         (still one alert per entity; it resolves after `m` windows below the threshold). Both\n\
         thresholds were calibrated on the training data with the alerting hysteresis of service:\n\
         the threshold is the lowest at which the `k` rule alone keeps false alerts on the healthy\n\
         windows at or below the target per 1,000 terminal-days; the critical threshold is tried from\n\
         high to low on a coarse grid while both tiers together stay within the same target, and the\n\
         training incidents choose (replayed per entity: an alert detects an incident when it fires\n\
         within it, as `termwatch eval` judges, without its site-terminal matching): the candidate that\n\
         detects at least as many incidents as the `k` rule alone with the shortest median (then mean)\n\
         delay. The tier only spends the part of the budget the `k` rule leaves. When no candidate is\n\
         faster, the critical tier is off (critical threshold 1.0, shown as \"off\") and the detector\n\
         never raises a critical alert. The firmware-regression detector (when the training labels hold\n\
         firmware regressions) scores one row per firmware version with terminals in their first week on\n\
         it, its windows labelled from the version's first report to its rollback, the first hour and a\n\
         day around each regression left out.\n\n## Trained on\n\n- inputs: {}\n- fingerprint: `{}`\n- windows: {} .. {}\n\
         - terminal-days: {}\n- incidents: {}\n- not_incident labels: {}\n\n## Detectors\n\n\
         | kind | scope | features | threshold | critical | positive windows | healthy windows | window recall | specificity | false alerts / 1,000 terminal-days (training, healthy) | target | of which at once |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        set.version,
        set.format,
        set.detectors.len(),
        set.features.window_ms / 1000,
        set.features.lateness_ms / 1000,
        set.trained_on
            .inputs
            .iter()
            .map(|(p, n)| match set.trained_on.inputs_for.iter().find(|(q, _)| Path::new(p).starts_with(q)) {
                Some((_, kind)) => format!("{p} ({n} bytes; {kind} only)"),
                None => format!("{p} ({n} bytes)"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        set.trained_on.fingerprint,
        set.trained_on.first_window_end,
        set.trained_on.last_window_end,
        terminal_days_text(&set.trained_on),
        set.trained_on.incidents_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
        set.trained_on.not_incident_labels,
    );
    for (d, f) in set.detectors.iter().zip(&set.figures) {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} | {} | {} | {:.3} | {:.5} | {:.3} | {} | {:.3} |\n",
            d.kind,
            d.scope,
            d.feature_names.join(", "),
            d.threshold,
            critical_text(d.critical_threshold),
            f.positive_windows,
            f.negative_windows,
            f.window_recall,
            f.window_specificity,
            f.calibrated_false_alerts_per_1000_terminal_days,
            f.target_false_alerts_per_1000_terminal_days.map_or_else(|| "-".to_owned(), |t| format!("{t:.3}")),
            f.calibrated_critical_false_alerts_per_1000_terminal_days,
        ));
    }
    s.push_str(
        "\n## The critical tier on the training incidents\n\n\
         Incidents of the detector's kind and scope, replayed through the alert policy. \"k rule alone\" is\n\
         the policy without the critical tier, at the same threshold; \"first caught at once\"\n\
         counts detections whose alert a single critical window fired before `k` bad windows could.\n\n\
         | kind | scope | incidents | detected, k rule alone | median delay, k rule alone | detected, two tiers | median delay, two tiers | first caught at once |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for f in &set.figures {
        let i = &f.incidents;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.kind,
            f.scope,
            i.incidents,
            i.k_only_detected,
            delay_text(i.k_only_median_delay_ms),
            i.detected,
            delay_text(i.median_delay_ms),
            i.first_caught_at_once,
        ));
    }
    for (d, f) in set.detectors.iter().zip(&set.figures) {
        let (Some(hold), Some(r)) = (d.resolve_threshold, f.resolve) else { continue };
        s.push_str(&format!(
            "\n## Resolving {kind} alerts\n\n\
             The {kind} detector fires on strict evidence (its target above) and resolves on ordinary\n\
             evidence: while its alert fires, a window at or above the resolve threshold, {hold:.3} (the\n\
             threshold is {threshold:.3}), holds it up, and only `m` windows in a row below it resolve it.\n\
             The resolve threshold is calibrated as the threshold is, to a target of {target} false alerts\n\
             per 1,000 terminal-days. Of the training incidents detected, {at} saw their alert resolve while\n\
             they went on with the threshold alone, {held} with the resolve threshold.\n",
            kind = d.kind,
            threshold = d.threshold,
            target = r.target_false_alerts_per_1000_terminal_days,
            at = r.early_at_threshold,
            held = r.early_at_resolve_threshold,
        ));
    }
    s.push_str(&format!(
        "\n## Fleet calibration\n\n\
         In service the threshold of each detector calibrated here follows the fleet it watches\n\
         (`termwatch_alerts::calibration`, README \"Detectors\"): once the fleet has enough windows, where its\n\
         scores at the share below lie higher than these training windows' (every window scored, incidents\n\
         included, in log-odds), the threshold and the critical one rise by the difference, up to the\n\
         ceiling: the highest threshold at which the `k` rule alone still catches {:.0} % of the training\n\
         incidents the trained threshold catches. Never lower than trained.\n\n\
         | kind | scope | share compared | training score at that share | threshold | ceiling |\n\
         |---|---|---|---|---|---|\n",
        termwatch_models::training::RECALL_KEPT * 100.0
    ));
    for d in &set.detectors {
        match d.fleet {
            Some(r) => s.push_str(&format!(
                "| {} | {} | {:.4} | {:.5} | {:.3} | {:.5} |\n",
                d.kind,
                d.scope,
                r.share,
                termwatch_models::detector::sigmoid(r.logit),
                d.threshold,
                r.max_threshold,
            )),
            None => s.push_str(&format!(
                "| {} | {} | not calibrated to the fleet | | {:.3} | |\n",
                d.kind, d.scope, d.threshold
            )),
        }
    }
    let peaks: Vec<_> = set.detectors.iter().filter_map(|d| Some((d, d.fleet?.peaks?))).collect();
    if !peaks.is_empty() {
        s.push_str(
            "\nThe threshold also follows the fleet's daily peaks (per entity and UTC day, the highest score two\n\
             consecutive windows both reach): where the fleet's lie higher at the share below than these\n\
             training entity-days' (incidents included), the threshold rises by the difference in log-odds, at\n\
             most by the bound (to the 5th percentile of the training incident days' own peaks), if that is\n\
             more than the windows give.\n\n\
             | kind | scope | share of entity-days compared | training peak at that share | most it lifts (log-odds) |\n\
             |---|---|---|---|---|\n",
        );
        for (d, p) in peaks {
            s.push_str(&format!(
                "| {} | {} | {:.4} | {:.5} | {:+.2} |\n",
                d.kind,
                d.scope,
                p.share,
                termwatch_models::detector::sigmoid(p.logit),
                p.max_shift
            ));
        }
    }
    s.push_str(
        "\n## Limits\n\nTrained and calibrated on simulated fleets (docs/simulator.md). Figures above are on the\n\
         training data; figures on unseen histories come from `termwatch eval` (see the README).\n",
    );
    s
}
