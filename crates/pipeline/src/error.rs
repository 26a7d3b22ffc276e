//! Errors carry their cause in their message, so the one line an operator
//! sees names the file, the sink or the position and what went wrong there.

use thiserror::Error;

/// A sink could not take what it was given.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        SinkError::Io { context: context.into(), cause }
    }
}

/// Why the pipeline stopped.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("sink {sink}: {cause}")]
    Sink { sink: String, cause: SinkError },
    #[error("dead-letter output: {0}")]
    DeadLetter(SinkError),
    #[error("building an Arrow batch: {0}")]
    Arrow(arrow::error::ArrowError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the pipeline stopped after an earlier failure: {0}")]
    Stopped(String),
}

// The cause is in the message, and not also a `source()`: an error printed
// with its chain (`{:#}`) would say it twice.
impl From<arrow::error::ArrowError> for PipelineError {
    fn from(e: arrow::error::ArrowError) -> Self {
        PipelineError::Arrow(e)
    }
}

pub use termwatch_telemetry::source::SourceError;
