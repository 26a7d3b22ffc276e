//! termwatch's alert stage: what runs in service after the feature engine.
//! Each closed window is scored by its detector ([`scoring::Scorer`]), alert
//! state with hysteresis turns scores into alert events ([`alerting`]) at
//! thresholds that follow the watched fleet ([`calibration`]), the
//! state is snapshotted per Kafka partition and idle terminals are kept in a
//! cold store ([`snapshot`], [`cold`]), and the events go out through the
//! pipeline sink ([`sink::AlertSink`]) to files, the alerts topic
//! ([`topic`]) and `/metrics` ([`metrics`]). Between the two stages of
//! docs/two-stages.md, the partials topic carries each closed window's site
//! and region partials to the merging stage, which scores sites and
//! regions ([`regional`]), and the lessons topic carries what it merged
//! back ([`stage_topics`]); [`merging`] runs that stage as a loop, and
//! [`stage_one`] the first stage as a pipeline sink.

pub mod alerting;
pub mod calibration;
pub mod cold;
#[cfg(feature = "kafka")]
pub mod merging;
pub mod metrics;
pub mod regional;
pub mod scoring;
pub mod sink;
pub mod snapshot;
#[cfg(feature = "kafka")]
pub mod stage_one;
#[cfg(feature = "kafka")]
pub mod stage_topics;
#[cfg(feature = "kafka")]
pub mod topic;
