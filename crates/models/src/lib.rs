//! termwatch's detectors and their evaluation.

pub mod alerting;
pub mod eval;
