//! Pipeline and consumer health as Prometheus metrics. One registry is built
//! at start-up and passed down; every label value comes from a small closed
//! set (outcome, field, problem, topic, partition), never from a terminal.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics the pipeline updates once per batch, not once per record.
#[derive(Clone)]
pub struct PipelineMetrics {
    /// Raw records pushed in, valid or not.
    pub records_read: IntCounter,
    pub records_accepted: IntCounter,
    /// By `field` (or `(record)`) and `problem`.
    pub records_rejected: IntCounterVec,
    /// Valid records dropped before batching, by `reason` (`duplicate`, `too_old`).
    pub records_dropped: IntCounterVec,
    /// Terminals the duplicate check and the partition map forgot at their limit.
    pub terminals_forgotten: IntCounter,
    pub batches: IntCounter,
    /// From a batch's first record to the batch having reached every sink.
    pub batch_latency: Histogram,
    pub batch_rows: Histogram,
}

/// Metrics of the Kafka consumer.
#[derive(Clone)]
pub struct KafkaMetrics {
    /// Messages received from the broker (before decoding).
    pub messages_consumed: IntCounter,
    /// Messages the broker holds beyond the consumer's position, by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Partitions this consumer owns now.
    pub assigned_partitions: IntGauge,
    /// Rebalance events, by `event` (`assign`, `revoke`, `error`).
    pub rebalances: IntCounterVec,
    pub commit_failures: IntCounter,
    /// Consumer errors reported by librdkafka (broker down, ...), recovered from by retrying.
    pub consumer_errors: IntCounter,
    /// Dead letters written to the dead-letter topic.
    pub dead_letters: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl PipelineMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(PipelineMetrics {
            records_read: counter(
                registry,
                "termwatch_records_read_total",
                "Raw telemetry records read, valid or not.",
            )?,
            records_accepted: counter(
                registry,
                "termwatch_records_accepted_total",
                "Telemetry records that passed validation and joined a batch.",
            )?,
            records_rejected: counter_vec(
                registry,
                "termwatch_records_rejected_total",
                "Telemetry records rejected and sent to the dead-letter output, by the field named and the problem.",
                &["field", "problem"],
            )?,
            records_dropped: counter_vec(
                registry,
                "termwatch_records_dropped_total",
                "Valid records dropped before batching: seen before (duplicate) or too far behind their terminal to check (too_old).",
                &["reason"],
            )?,
            terminals_forgotten: counter(
                registry,
                "termwatch_pipeline_terminals_forgotten_total",
                "Terminals the duplicate check and the map of Kafka partitions forgot at their limit (twice \
                 [limits] max_terminals), longest silent first: a flood of terminal ids.",
            )?,
            batches: counter(registry, "termwatch_batches_total", "Arrow record batches delivered to every sink.")?,
            batch_latency: histogram(
                registry,
                "termwatch_batch_latency_seconds",
                "Time from a batch's first record until it has reached every sink.",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0],
            )?,
            batch_rows: histogram(
                registry,
                "termwatch_batch_rows",
                "Rows per delivered batch.",
                vec![1.0, 16.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0],
            )?,
        })
    }
}

impl KafkaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "termwatch_kafka_consumer_lag_messages",
                "Messages in the partition beyond this consumer's position, as librdkafka last reported.",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let assigned_partitions =
            IntGauge::new("termwatch_kafka_assigned_partitions", "Partitions assigned to this consumer now.")?;
        registry.register(Box::new(assigned_partitions.clone()))?;
        Ok(KafkaMetrics {
            messages_consumed: counter(
                registry,
                "termwatch_kafka_messages_consumed_total",
                "Messages received from Kafka, before decoding.",
            )?,
            consumer_lag,
            assigned_partitions,
            rebalances: counter_vec(
                registry,
                "termwatch_kafka_rebalances_total",
                "Consumer group rebalance events, by event (assign, revoke, error).",
                &["event"],
            )?,
            commit_failures: counter(
                registry,
                "termwatch_kafka_commit_failures_total",
                "Offset commits that failed (the next commit covers them).",
            )?,
            consumer_errors: counter(
                registry,
                "termwatch_kafka_consumer_errors_total",
                "Errors reported by the Kafka client while consuming; it retries.",
            )?,
            dead_letters: counter(
                registry,
                "termwatch_kafka_dead_letters_total",
                "Rejected records delivered to the dead-letter topic.",
            )?,
        })
    }
}
