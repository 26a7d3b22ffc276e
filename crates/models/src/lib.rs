//! termwatch's detectors and their evaluation.

pub mod eval;
