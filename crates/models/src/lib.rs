//! termwatch's detectors: the model artifact, the alert policy it was
//! calibrated with, training and calibration, and evaluation against labels.
//! Scoring in service, alert state and snapshots are the alert stage's
//! (`termwatch-alerts`).

pub mod artifact;
pub mod detector;
pub mod eval;
pub mod policy;
pub mod training;
