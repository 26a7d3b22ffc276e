//! termwatch's pipeline: sources push raw records in; the pipeline decodes
//! and validates them, micro-batches the valid ones into Arrow record
//! batches for its sinks, and sends the rest to the dead-letter output.

pub mod dead_letter;
pub mod dedup;
pub mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kafka_config;
pub mod metrics;
pub mod partitions;
pub mod pipeline;
pub mod replay;
/// The file source lives with the contract (so the evaluator reads history
/// without the pipeline); re-exported where it always was.
pub use termwatch_telemetry::source;

pub use dead_letter::{CountOnlyDeadLetters, DeadLetter, DeadLetterSink, FileDeadLetters, MemoryDeadLetters, Position};
pub use error::{PipelineError, SinkError, SourceError};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaDeadLetters, KafkaSource, KafkaSourceError};
pub use kafka_config::KafkaConfig;
pub use metrics::{KafkaMetrics, PipelineMetrics};
pub use partitions::{Checkpoint, Owners, PartitionKey};
pub use pipeline::{BatchConfig, BatchSink, Pipeline, Sources, Stats, source_name};
pub use replay::{ReplayReport, replay, replay_parallel};
pub use source::NdjsonFile;
