//! The telemetry decoder on any bytes: it never panics, its fast reader
//! gives exactly what serde_json gives (the record, or the same rejection),
//! and every record it accepts goes into an Arrow batch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use termwatch_telemetry::decode::decode_reference;
use termwatch_telemetry::{BatchBuilder, decode};

/// 2026-11-24T10:00:00Z, so that `ts` values near it are in range.
const NOW: i64 = 1_795_514_400_000;

fuzz_target!(|data: &[u8]| {
    let fast = decode(data, NOW);
    let reference = decode_reference(data, NOW);
    // Debug shows every bit of a float (and -0.0).
    assert_eq!(format!("{fast:?}"), format!("{reference:?}"), "the fast reader disagrees with serde_json");
    if let Ok(record) = fast {
        let mut builder = BatchBuilder::with_capacity(1);
        builder.append(&record).expect("an accepted record fits the Arrow schema");
        builder.finish().expect("a batch of one accepted record");
    }
});
