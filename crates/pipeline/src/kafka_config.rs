//! What the Kafka source is told: plain data, so that the configuration can
//! be read, checked and fuzzed without linking librdkafka (the `kafka`
//! feature builds the source itself, in `kafka.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where to consume from and how. Unknown keys are an error that names the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Default `localhost:9092`.
    pub brokers: String,
    /// Consumer group id; replicas with the same id split the partitions. Default `termwatch`.
    pub group_id: String,
    /// Topics to consume. Default `["telemetry"]`.
    pub topics: Vec<String>,
    /// Topic that receives rejected records with their reason in headers. Default `telemetry-dead-letters`.
    pub dead_letter_topic: String,
    /// Topic that also receives alert events (alerts-v1 JSON, keyed by
    /// kind/scope/entity). Default: none.
    pub alerts_topic: Option<String>,
    /// librdkafka properties passed through unchanged (security.protocol,
    /// sasl.*, ssl.*, fetch tuning, ...). They override termwatch's defaults.
    /// Default: none.
    pub properties: BTreeMap<String, String>,
    /// Seconds a partition may deliver nothing, without librdkafka saying it
    /// has reached its end, before it stops holding windows open for the
    /// others (a partition whose leader is unreachable would otherwise stop
    /// every alert). Time the consumer spends waiting for the pipeline does
    /// not count. Its reports, when they come, may then be late. Default 60.
    pub partition_idle_s: u64,
    /// Seconds `termwatch run` takes to stop after SIGTERM at most: flush,
    /// commit and leave the group within it, or exit without the final
    /// commit (a frozen broker must not hold a pod past Kubernetes' 30 s;
    /// the next owner re-reads from the last commit). Default 10.
    pub shutdown_grace_s: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "termwatch".into(),
            topics: vec!["telemetry".into()],
            dead_letter_topic: "telemetry-dead-letters".into(),
            alerts_topic: None,
            properties: BTreeMap::new(),
            partition_idle_s: 60,
            shutdown_grace_s: 10,
        }
    }
}
