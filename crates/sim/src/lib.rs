//! Fleet simulator (issue 3): plausible payment-terminal telemetry with
//! injected faults and their ground-truth labels.
//!
//! A fleet of regions, sites (merchant locations sharing mains power and
//! uplink) and terminals reports once per interval. Labelled faults
//! (hardware aging, voltage instability, regional network degradation) and
//! unlabelled look-alikes (a site's uplink failing, firmware rollouts,
//! one-report blips, busy days and holidays, a noisy model, late and damaged
//! records) are drawn up front from the seed; records are generated lazily
//! and come out in arrival order. `docs/simulator.md` describes every model.
//!
//! ```no_run
//! use termwatch_sim::{SimConfig, Simulator};
//!
//! let mut sim = Simulator::new(SimConfig { terminals: 50, days: 1.0, ..SimConfig::default() })?;
//! let mut buf = Vec::new();
//! while let Some(meta) = sim.next_record(&mut buf) {
//!     // A Kafka producer would wait until `meta.arrival_ms` (scaled), then
//!     // send `buf` keyed by `sim.terminal_id(meta.terminal)`.
//!     let _ = (meta.arrival_ms, sim.terminal_id(meta.terminal), &buf);
//! }
//! for label in sim.labels() {
//!     println!("{}", serde_json::to_string(label)?);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same configuration gives byte-identical output (same build, same
//! platform): randomness comes from the crate's own [`rng`], never from a
//! third-party crate whose streams could change between versions.

mod config;
mod engine;
mod error;
pub mod fleet;
mod json;
mod output;
pub mod rng;
pub mod schedule;

pub use config::{FaultRates, Physics, SimConfig};
pub use engine::{Damage, RecordMeta, Simulator};
pub use error::SimError;
pub use output::{Summary, write_files};
