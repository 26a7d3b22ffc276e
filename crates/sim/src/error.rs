//! The simulator's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration parameter is out of range; `param` is its name as in
    /// [`crate::SimConfig`] (and, with dashes, the CLI flag).
    #[error("invalid simulator parameter `{param}`: {reason}")]
    InvalidConfig { param: &'static str, reason: String },

    /// A JSON configuration could not be read (syntax, unknown key, wrong type).
    #[error("invalid simulator configuration: {0}")]
    ConfigJson(#[source] serde_json::Error),

    /// Writing the telemetry or the labels failed.
    #[error("cannot write {what} to {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing to a caller-supplied writer failed.
    #[error("cannot write telemetry: {0}")]
    Io(#[from] std::io::Error),

    /// A label could not be serialised (should not happen: labels are plain data).
    #[error("cannot serialise a label: {0}")]
    Label(#[from] serde_json::Error),
}

impl SimError {
    pub(crate) fn config(param: &'static str, reason: impl Into<String>) -> Self {
        SimError::InvalidConfig { param, reason: reason.into() }
    }
}
