//! `termwatch run` configuration: a TOML file, then environment overrides.
//! A crate of its own so that the reader can be fuzzed without linking the
//! binary (fuzz/fuzz_targets/config.rs).
//! Unknown keys, in the file or as `TERMWATCH_*` variables, are errors that
//! name the key: a typo must not silently fall back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use termwatch_pipeline::{BatchConfig, KafkaConfig};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Kafka consumer (see `KafkaConfig` for each key's default).
    pub kafka: KafkaConfig,
    /// Micro-batching.
    pub batch: BatchSettings,
    /// The HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
    pub metrics: MetricsSettings,
    /// Snapshots of what scoring has learned.
    pub state: StateSettings,
    /// Bounds on what scoring holds in memory, whatever the input.
    pub limits: LimitSettings,
    /// Which stage of docs/two-stages.md this process runs.
    pub stages: StageSettings,
}

/// What a `termwatch run` process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Both stages in one process, on the partitions it is assigned: every
    /// alert from what it reads (one replica: one process's answer).
    #[default]
    Both,
    /// Stage 1 only: terminal state and terminal alerts of the partitions
    /// it is assigned; publishes their partials for stage 2 and learns
    /// its lessons. Needs `state.path` (a snapshot per partition).
    Terminal,
    /// Stage 2 only: merges every stage-1 replica's partials (the partials
    /// topic), scores sites and regions, teaches stage 1 (the lessons topic).
    Regional,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageSettings {
    /// `both` (default), `terminal` or `regional`.
    pub role: Role,
    /// The topic stage 1 publishes partials on; one partition. Default
    /// `termwatch-partials`.
    pub partials_topic: String,
    /// The topic stage 2 publishes lessons on. Default `termwatch-lessons`.
    pub lessons_topic: String,
    /// Stage 2's consumer group on the partials topic. Default
    /// `termwatch-regional`.
    pub group_id: String,
    /// A window closes this long (event time) after the newest source passed
    /// it, without the sources still missing (counted). Default 3600.
    pub allowed_lateness_s: f64,
    /// Windows stage 2 holds open at most; beyond, the oldest closes
    /// (counted). Stage 1 waits for lessons while each partition it reads
    /// holds more than this many open. Default 64.
    pub max_open_windows: usize,
}

impl Default for StageSettings {
    fn default() -> Self {
        StageSettings {
            role: Role::Both,
            partials_topic: "termwatch-partials".into(),
            lessons_topic: "termwatch-lessons".into(),
            group_id: "termwatch-regional".into(),
            allowed_lateness_s: 3600.0,
            max_open_windows: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// The most terminals held. A new one beyond it makes room by
    /// forgetting the longest-silent terminals; if all are reporting, its
    /// reports are refused and counted. Default 500000 (about 450 MB of feature state).
    pub max_terminals: usize,
    /// A terminal silent this long (in event time) is forgotten. With
    /// snapshots (`state.path`) its state is kept on disk and given back
    /// when it reports again; without, it learns again from its cohort, as
    /// a new terminal does. Default 14.
    pub idle_terminal_days: f64,
    /// The most regions; reports from further regions are refused and
    /// counted. Default 10000.
    pub max_regions: usize,
    /// Records longer than this many bytes are rejected as
    /// `(record):too_large` (to the dead-letter topic, the start of them).
    /// Default 1048576 (1 MiB); 256 to 16777216.
    pub max_record_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let d = termwatch_features::Limits::default();
        LimitSettings {
            max_terminals: d.max_terminals,
            idle_terminal_days: d.idle_terminal_ms as f64 / 86_400_000.0,
            max_regions: d.max_regions,
            max_record_bytes: termwatch_telemetry::MAX_RECORD_BYTES,
        }
    }
}

impl LimitSettings {
    pub fn limits(&self) -> termwatch_features::Limits {
        termwatch_features::Limits {
            max_terminals: self.max_terminals,
            idle_terminal_ms: (self.idle_terminal_days * 86_400_000.0) as i64,
            max_regions: self.max_regions,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// Snapshot file: restored at start-up when present, written every
    /// `interval_s` and on shutdown. Default: none (no snapshots).
    pub path: Option<std::path::PathBuf>,
    /// Seconds between snapshots (fractions allowed), taken whether or not
    /// records arrive meanwhile. Default 300.
    pub interval_s: f64,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings { path: None, interval_s: 300.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// A batch closes at this many rows. Default 8192.
    pub max_rows: usize,
    /// ...or this many milliseconds after its first record. Default 200.
    pub max_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings { max_rows: 8192, max_ms: 200 }
    }
}

impl BatchSettings {
    pub fn config(&self) -> BatchConfig {
        BatchConfig { max_rows: self.max_rows, max_age: Duration::from_millis(self.max_ms) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Listen address. Default `0.0.0.0:9464`.
    pub listen: SocketAddr,
    /// TLS and basic auth, in the format of Prometheus' exporter-toolkit
    /// `web.config.file` (`tls_server_config`, `basic_auth_users` with
    /// bcrypt hashes). Default: none (plain HTTP, no authentication).
    pub web_config_file: Option<std::path::PathBuf>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { listen: SocketAddr::from(([0, 0, 0, 0], 9464)), web_config_file: None }
    }
}

/// Environment variables that override the file. `TERMWATCH_KAFKA_PROPERTY_X_Y`
/// sets the librdkafka property `x.y`.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("TERMWATCH_KAFKA_BROKERS", "kafka.brokers"),
    ("TERMWATCH_KAFKA_GROUP_ID", "kafka.group_id"),
    ("TERMWATCH_KAFKA_TOPICS", "kafka.topics (comma-separated)"),
    ("TERMWATCH_KAFKA_DEAD_LETTER_TOPIC", "kafka.dead_letter_topic"),
    ("TERMWATCH_KAFKA_ALERTS_TOPIC", "kafka.alerts_topic"),
    ("TERMWATCH_KAFKA_PARTITION_IDLE_S", "kafka.partition_idle_s"),
    ("TERMWATCH_KAFKA_SHUTDOWN_GRACE_S", "kafka.shutdown_grace_s"),
    ("TERMWATCH_BATCH_MAX_ROWS", "batch.max_rows"),
    ("TERMWATCH_BATCH_MAX_MS", "batch.max_ms"),
    ("TERMWATCH_METRICS_LISTEN", "metrics.listen"),
    ("TERMWATCH_METRICS_WEB_CONFIG_FILE", "metrics.web_config_file"),
    ("TERMWATCH_STATE_PATH", "state.path"),
    ("TERMWATCH_STATE_INTERVAL_S", "state.interval_s"),
    ("TERMWATCH_LIMITS_MAX_TERMINALS", "limits.max_terminals"),
    ("TERMWATCH_LIMITS_IDLE_TERMINAL_DAYS", "limits.idle_terminal_days"),
    ("TERMWATCH_LIMITS_MAX_REGIONS", "limits.max_regions"),
    ("TERMWATCH_LIMITS_MAX_RECORD_BYTES", "limits.max_record_bytes"),
    ("TERMWATCH_STAGES_ROLE", "stages.role (both, terminal or regional)"),
    ("TERMWATCH_STAGES_PARTIALS_TOPIC", "stages.partials_topic"),
    ("TERMWATCH_STAGES_LESSONS_TOPIC", "stages.lessons_topic"),
    ("TERMWATCH_STAGES_GROUP_ID", "stages.group_id"),
    ("TERMWATCH_STAGES_ALLOWED_LATENESS_S", "stages.allowed_lateness_s"),
    ("TERMWATCH_STAGES_MAX_OPEN_WINDOWS", "stages.max_open_windows"),
];
const PROPERTY_PREFIX: &str = "TERMWATCH_KAFKA_PROPERTY_";
/// Variables that are not configuration (logging).
const NOT_CONFIG: &[&str] = &["TERMWATCH_LOG"];

impl Config {
    /// Reads `path` (if given), then applies the environment.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => {
                Some(std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?)
            }
            None => None,
        };
        Config::from_text(path.zip(text.as_deref()), env)
    }

    /// What [`Config::load`] does once the file is read: `file` is its name
    /// (for errors) and its text.
    pub fn from_text(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut config = match file {
            Some((p, text)) => toml::from_str(text).map_err(|e| anyhow::anyhow!(file_error(p, text, &e)))?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<()> {
        let vars: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("TERMWATCH_")).collect();
        for (key, value) in vars {
            // The key only: a value may be a secret, and error output ends
            // up in logs that more people read than the configuration.
            let parse_err = || format!("environment variable {key}");
            match key.as_str() {
                "TERMWATCH_KAFKA_BROKERS" => self.kafka.brokers = value,
                "TERMWATCH_KAFKA_GROUP_ID" => self.kafka.group_id = value,
                "TERMWATCH_KAFKA_TOPICS" => {
                    self.kafka.topics =
                        value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
                }
                "TERMWATCH_KAFKA_DEAD_LETTER_TOPIC" => self.kafka.dead_letter_topic = value,
                "TERMWATCH_KAFKA_ALERTS_TOPIC" => self.kafka.alerts_topic = Some(value),
                "TERMWATCH_KAFKA_PARTITION_IDLE_S" => {
                    self.kafka.partition_idle_s = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_KAFKA_SHUTDOWN_GRACE_S" => {
                    self.kafka.shutdown_grace_s = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_BATCH_MAX_ROWS" => self.batch.max_rows = value.parse().with_context(parse_err)?,
                "TERMWATCH_BATCH_MAX_MS" => self.batch.max_ms = value.parse().with_context(parse_err)?,
                "TERMWATCH_METRICS_LISTEN" => self.metrics.listen = value.parse().with_context(parse_err)?,
                "TERMWATCH_METRICS_WEB_CONFIG_FILE" => self.metrics.web_config_file = Some(value.into()),
                "TERMWATCH_STATE_PATH" => self.state.path = Some(value.into()),
                "TERMWATCH_STATE_INTERVAL_S" => self.state.interval_s = value.parse().with_context(parse_err)?,
                "TERMWATCH_LIMITS_MAX_TERMINALS" => {
                    self.limits.max_terminals = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_LIMITS_IDLE_TERMINAL_DAYS" => {
                    self.limits.idle_terminal_days = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_LIMITS_MAX_REGIONS" => self.limits.max_regions = value.parse().with_context(parse_err)?,
                "TERMWATCH_LIMITS_MAX_RECORD_BYTES" => {
                    self.limits.max_record_bytes = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_STAGES_ROLE" => {
                    self.stages.role = match value.as_str() {
                        "both" => Role::Both,
                        "terminal" => Role::Terminal,
                        "regional" => Role::Regional,
                        _ => bail!("environment variable {key}: not a role (both, terminal or regional)"),
                    }
                }
                "TERMWATCH_STAGES_PARTIALS_TOPIC" => self.stages.partials_topic = value,
                "TERMWATCH_STAGES_LESSONS_TOPIC" => self.stages.lessons_topic = value,
                "TERMWATCH_STAGES_GROUP_ID" => self.stages.group_id = value,
                "TERMWATCH_STAGES_ALLOWED_LATENESS_S" => {
                    self.stages.allowed_lateness_s = value.parse().with_context(parse_err)?
                }
                "TERMWATCH_STAGES_MAX_OPEN_WINDOWS" => {
                    self.stages.max_open_windows = value.parse().with_context(parse_err)?
                }
                k if k.starts_with(PROPERTY_PREFIX) && k.len() > PROPERTY_PREFIX.len() => {
                    let property = k[PROPERTY_PREFIX.len()..].to_ascii_lowercase().replace('_', ".");
                    self.kafka.properties.insert(property, value);
                }
                k if NOT_CONFIG.contains(&k) => {}
                k => {
                    let known: Vec<&str> = ENV_VARS.iter().map(|(v, _)| *v).collect();
                    bail!(
                        "unknown environment variable {k}: termwatch reads {}, and {PROPERTY_PREFIX}<NAME>",
                        known.join(", ")
                    )
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.kafka.topics.is_empty() {
            bail!("kafka.topics is empty: name at least one topic to consume");
        }
        if self.kafka.brokers.trim().is_empty() {
            bail!("kafka.brokers is empty");
        }
        if !(1..=1_048_576).contains(&self.batch.max_rows) {
            bail!("batch.max_rows must be 1..=1048576, not {}", self.batch.max_rows);
        }
        if !(1..=3_600_000).contains(&self.batch.max_ms) {
            bail!("batch.max_ms must be 1..=3600000, not {}", self.batch.max_ms);
        }
        if !(self.state.interval_s.is_finite() && self.state.interval_s >= 0.01) {
            bail!("state.interval_s must be a number of seconds, at least 0.01, not {}", self.state.interval_s);
        }
        if !(1..=86_400).contains(&self.kafka.partition_idle_s) {
            bail!("kafka.partition_idle_s must be 1..=86400, not {}", self.kafka.partition_idle_s);
        }
        if !(1..=3600).contains(&self.kafka.shutdown_grace_s) {
            bail!("kafka.shutdown_grace_s must be 1..=3600, not {}", self.kafka.shutdown_grace_s);
        }
        if !(1..=100_000_000).contains(&self.limits.max_terminals) {
            bail!("limits.max_terminals must be 1..=100000000, not {}", self.limits.max_terminals);
        }
        let days = self.limits.idle_terminal_days;
        if !(days.is_finite() && (1.0 / 24.0..=3650.0).contains(&days)) {
            bail!("limits.idle_terminal_days must be a number of days, 1/24..=3650, not {days}");
        }
        if !(256..=16_777_216).contains(&self.limits.max_record_bytes) {
            bail!("limits.max_record_bytes must be 256..=16777216, not {}", self.limits.max_record_bytes);
        }
        if !(1..=10_000_000).contains(&self.limits.max_regions) {
            bail!("limits.max_regions must be 1..=10000000, not {}", self.limits.max_regions);
        }
        if self.kafka.topics.contains(&self.kafka.dead_letter_topic) {
            bail!("kafka.dead_letter_topic {:?} is also consumed: rejects would loop", self.kafka.dead_letter_topic);
        }
        if self.stages.role == Role::Terminal && self.state.path.is_none() {
            bail!(
                "stages.role = \"terminal\" needs state.path: a stage-1 replica restarted without its snapshots would \
                 publish again windows stage 2 has closed"
            );
        }
        if self.stages.role != Role::Both && self.stages.group_id == self.kafka.group_id {
            bail!(
                "stages.group_id and kafka.group_id are both {:?}: the stages read in groups of their own",
                self.kafka.group_id
            );
        }
        self.stages.validate(&self.kafka.topics)
    }
}

impl StageSettings {
    pub fn allowed_lateness_ms(&self) -> i64 {
        (self.allowed_lateness_s * 1000.0) as i64
    }

    fn validate(&self, telemetry: &[String]) -> anyhow::Result<()> {
        let lateness = self.allowed_lateness_s;
        if !(lateness.is_finite() && (0.0..=7.0 * 86_400.0).contains(&lateness)) {
            bail!("stages.allowed_lateness_s must be a number of seconds, 0..=604800, not {lateness}");
        }
        if !(1..=10_000).contains(&self.max_open_windows) {
            bail!("stages.max_open_windows must be 1..=10000, not {}", self.max_open_windows);
        }
        for (key, topic) in [("partials_topic", &self.partials_topic), ("lessons_topic", &self.lessons_topic)] {
            if topic.trim().is_empty() {
                bail!("stages.{key} is empty");
            }
            if telemetry.contains(topic) {
                bail!("stages.{key} {topic:?} is also a telemetry topic (kafka.topics)");
            }
        }
        if self.partials_topic == self.lessons_topic {
            bail!("stages.partials_topic and stages.lessons_topic are both {:?}", self.partials_topic);
        }
        if self.group_id.trim().is_empty() {
            bail!("stages.group_id is empty");
        }
        Ok(())
    }
}

/// A config file error that names the file, the line and the key, never the
/// value: toml's own message quotes the offending line (`sasl.password`
/// included) and serde's quotes the value it could not take.
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let mut at = format!("config file {}", path.display());
    if let Some(span) = e.span() {
        let start = span.start.min(text.len());
        let line = text.as_bytes()[..start].iter().filter(|b| **b == b'\n').count() + 1;
        at.push_str(&format!(", line {line}"));
        // Just after a newline, or 0: a char boundary, whatever `start` is.
        let line_start = text.as_bytes()[..start].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let source_line = text[line_start..].lines().next().unwrap_or("");
        // Only a line that starts outside a string holds a key: inside a
        // multi-line string, the text before a `=` is part of the value (a
        // password with `=` and a stray backslash; see fuzz/fuzz_targets/config.rs). The
        // text before the line parses on its own exactly when no string is
        // left open there.
        let outside_strings = text[..line_start].parse::<toml::Table>().is_ok();
        if let Some((key, _)) = source_line.split_once('=').filter(|_| outside_strings) {
            let key = key.trim();
            if !key.is_empty() && !key.starts_with('[') {
                at.push_str(&format!(", key {key}"));
            }
        }
    }
    format!("{at}: {}", without_values(e.message()))
}

/// serde's "invalid type: string \"hunter2\", expected u64", without the
/// value; other messages name keys and types only and are kept.
pub fn without_values(message: &str) -> String {
    let message = message.lines().next().unwrap_or("").trim();
    for kind in ["invalid type", "invalid value", "invalid length", "unknown variant"] {
        if message.starts_with(kind) {
            let expected = message.find(", expected ").map_or("", |i| &message[i..]);
            return format!("{kind} (value not shown){expected}");
        }
    }
    if message.contains('"') || message.contains('\'') {
        // A syntax error that quotes the text it stopped at.
        return "not valid TOML here (text not shown)".to_string();
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(c.kafka.brokers, "localhost:9092");
        assert_eq!(c.kafka.topics, ["telemetry"]);
        assert_eq!(c.batch.max_rows, 8192);
        assert_eq!(c.metrics.listen.port(), 9464);
    }

    #[test]
    fn reads_file_then_env_overrides() {
        let f = write(
            r#"
[kafka]
brokers = "k1:9092,k2:9092"
group_id = "noc"
[kafka.properties]
"security.protocol" = "SASL_SSL"
[batch]
max_ms = 50
[state]
interval_s = 30
"#,
        );
        let c = Config::load(
            Some(f.path()),
            env(&[
                ("TERMWATCH_KAFKA_GROUP_ID", "noc-2"),
                ("TERMWATCH_KAFKA_PROPERTY_SASL_PASSWORD", "s3cret"),
                ("TERMWATCH_KAFKA_PARTITION_IDLE_S", "15"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("valid");
        assert_eq!((c.kafka.partition_idle_s, c.state.interval_s), (15, 30.0), "an integer TOML value is seconds too");
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.group_id, "noc-2");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret");
        assert_eq!((c.batch.max_ms, c.batch.max_rows), (50, 8192));
    }

    #[test]
    fn unknown_file_key_is_named() {
        let f = write("[kafka]\nbrokerz = \"x\"\n");
        let err = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("unknown key"));
        assert!(err.contains("brokerz"), "{err}");
    }

    #[test]
    fn unknown_env_var_is_named() {
        let err = format!("{:#}", Config::load(None, env(&[("TERMWATCH_KAFKA_BROKER", "x")])).expect_err("typo"));
        assert!(err.contains("TERMWATCH_KAFKA_BROKER"), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = format!("{:#}", Config::load(None, env(&[("TERMWATCH_BATCH_MAX_ROWS", "lots")])).expect_err("bad"));
        assert!(err.contains("TERMWATCH_BATCH_MAX_ROWS"), "{err}");
    }

    #[test]
    fn errors_name_the_key_and_line_but_never_the_value() {
        let cases = [
            // A type error: serde quotes the value it could not take.
            ("[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\n\"sasl.password\" = 12345678\n", "12345678", 4),
            ("[batch]\nmax_rows = \"hunter2\"\n", "hunter2", 2),
            // A syntax error: toml quotes the whole line.
            ("[kafka.properties]\n\"sasl.password\" = \"hunter2\n", "hunter2", 2),
            ("[kafka.properties]\n\"sasl.password\" = hunter2\n", "hunter2", 2),
            // A multi-line string whose line holds a `=`: not a key.
            ("[kafka.properties]\n\"sasl.password\" = \"\"\"\nhunter2=c2VjcmV0", "hunter2", 3),
            ("[kafka]\nbrokers = \"\"\"\nhunter2=c2V\\jcmV0\"\"\"\n", "hunter2", 3),
            // Found by fuzz/fuzz_targets/config.rs: the line after a
            // string left open in an array.
            (
                "[ka?fka]\nbrokers = \"k(:9092,k2:9092\"\ntopics = [\"\"\"\"a\",[\"a\"\u{0}b\"]\n[kafka.properties]\n\
                 \"sasl.password\" = \"\"\"\nhunter2=c2VjcmV0\n\"\"\"\n",
                "hunter2",
                6,
            ),
        ];
        for (text, secret, line) in cases {
            let f = write(text);
            let err = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("invalid"));
            assert!(!err.contains(secret), "the value is echoed: {err}");
            assert!(err.contains(&format!("line {line}")), "the line is not named: {err}");
            assert!(err.contains(&f.path().display().to_string()), "the file is not named: {err}");
        }
        let err =
            format!("{:#}", Config::load(None, env(&[("TERMWATCH_STATE_INTERVAL_S", "hunter2")])).expect_err("bad"));
        assert!(err.contains("TERMWATCH_STATE_INTERVAL_S") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn limits_from_file_and_env_and_out_of_range() {
        let f = write("[limits]\nmax_terminals = 1000\nidle_terminal_days = 2\nmax_record_bytes = 4096\n");
        let c = Config::load(Some(f.path()), env(&[("TERMWATCH_LIMITS_MAX_REGIONS", "50")])).expect("valid");
        let l = c.limits.limits();
        assert_eq!((l.max_terminals, l.idle_terminal_ms, l.max_regions), (1000, 2 * 86_400_000, 50));
        assert_eq!(c.limits.max_record_bytes, 4096);
        assert_eq!(
            Config::load(None, env(&[])).expect("defaults").limits.limits(),
            termwatch_features::Limits::default()
        );
        for (var, value) in [
            ("TERMWATCH_LIMITS_MAX_TERMINALS", "0"),
            ("TERMWATCH_LIMITS_IDLE_TERMINAL_DAYS", "NaN"),
            ("TERMWATCH_LIMITS_IDLE_TERMINAL_DAYS", "0"),
            ("TERMWATCH_LIMITS_MAX_REGIONS", "0"),
            ("TERMWATCH_LIMITS_MAX_RECORD_BYTES", "100"),
        ] {
            let err = format!("{:#}", Config::load(None, env(&[(var, value)])).expect_err("out of range"));
            assert!(err.contains("limits."), "{var}={value}: {err}");
        }
    }

    #[test]
    fn stages_from_file_and_env_and_out_of_range() {
        let c = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(c.stages, StageSettings::default());
        assert_eq!(c.stages.role, Role::Both);
        let f = write("[stages]\nrole = \"regional\"\nallowed_lateness_s = 600\n");
        let c = Config::load(Some(f.path()), env(&[("TERMWATCH_STAGES_MAX_OPEN_WINDOWS", "8")])).expect("valid");
        assert_eq!(
            (c.stages.role, c.stages.allowed_lateness_ms(), c.stages.max_open_windows),
            (Role::Regional, 600_000, 8)
        );
        let c = Config::load(Some(f.path()), env(&[("TERMWATCH_STAGES_ROLE", "both")])).expect("valid");
        assert_eq!(c.stages.role, Role::Both, "the environment overrides the file");

        let f = write("[stages]\nrole = \"terminals\"\n");
        let err = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("no such role"));
        assert!(err.contains("line 2") && err.contains("key role") && err.contains("both"), "{err}");
        for (var, value) in [
            ("TERMWATCH_STAGES_ROLE", "stage-2"),
            ("TERMWATCH_STAGES_ALLOWED_LATENESS_S", "-1"),
            ("TERMWATCH_STAGES_ALLOWED_LATENESS_S", "inf"),
            ("TERMWATCH_STAGES_MAX_OPEN_WINDOWS", "0"),
            ("TERMWATCH_STAGES_PARTIALS_TOPIC", "telemetry"),
            ("TERMWATCH_STAGES_LESSONS_TOPIC", "termwatch-partials"),
            ("TERMWATCH_STAGES_GROUP_ID", " "),
        ] {
            let err = format!("{:#}", Config::load(None, env(&[(var, value)])).expect_err("refused"));
            assert!(err.contains("stages.") || err.contains(var), "{var}={value}: {err}");
        }
    }

    /// The README's configuration block is a configuration this reads,
    /// and says every section's defaults.
    #[test]
    fn the_readmes_example_is_read_as_documented() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("README.md");
        let start = readme.find("```toml\n[kafka]").expect("the README's configuration block") + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").expect("its end")];
        let c = Config::from_text(Some((Path::new("README.md"), text)), env(&[])).expect("the README's example");
        let defaults = Config::default();
        assert_eq!(
            (&c.stages, &c.state, &c.limits, &c.batch, &c.metrics),
            (&defaults.stages, &defaults.state, &defaults.limits, &defaults.batch, &defaults.metrics),
            "the README shows the defaults"
        );
    }

    #[test]
    fn consuming_the_dead_letter_topic_is_refused() {
        let err = Config::load(None, env(&[("TERMWATCH_KAFKA_TOPICS", "telemetry,telemetry-dead-letters")]))
            .expect_err("loop");
        assert!(err.to_string().contains("loop"), "{err}");
    }
}
