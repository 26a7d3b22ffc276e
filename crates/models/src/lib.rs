//! termwatch's detectors and their evaluation.

pub mod alerting;
pub mod cold;
pub mod detector;
pub mod eval;
pub mod scoring;
pub mod snapshot;
pub mod training;
