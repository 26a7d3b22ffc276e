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
    ConfigJson(serde_json::Error),

    /// Writing the telemetry or the labels failed.
    #[error("cannot write {what} to {path}: {cause}")]
    Write { what: &'static str, path: PathBuf, cause: std::io::Error },

    /// Writing to a caller-supplied writer failed.
    #[error("cannot write telemetry: {0}")]
    Io(std::io::Error),

    /// A label could not be serialised (should not happen: labels are plain data).
    #[error("cannot serialise a label: {0}")]
    Label(serde_json::Error),
}

// Each cause is in its message, and not also a `source()`: an error printed
// with its chain (`{:#}`, as the binary does) said "No space left on device"
// twice.
impl From<std::io::Error> for SimError {
    fn from(e: std::io::Error) -> Self {
        SimError::Io(e)
    }
}

impl From<serde_json::Error> for SimError {
    fn from(e: serde_json::Error) -> Self {
        SimError::Label(e)
    }
}

impl SimError {
    pub(crate) fn config(param: &'static str, reason: impl Into<String>) -> Self {
        SimError::InvalidConfig { param, reason: reason.into() }
    }
}
