//! The telemetry v1 contract in code: the record type, decoding and
//! validation with rejections that name the field, the Arrow schema and the
//! batch builder; and the alert event and incident label types of alerts v1.

pub mod alerts;
pub mod batch;
pub mod decode;
pub mod fields;
mod flat;
pub mod source;
pub mod time;

pub use batch::{BatchBuilder, telemetry_schema};
pub use decode::{MAX_RECORD_BYTES, Problem, Rejection, Telemetry, decode, decode_limited};
pub use fields::{Counter, Field, Label, Measure, NetType};
