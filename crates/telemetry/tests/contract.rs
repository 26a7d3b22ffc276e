//! The contract's own examples, and properties the decoder must keep on any
//! input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use termwatch_telemetry::{BatchBuilder, Field, decode, time};

fn contracts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
}

fn read(name: &str) -> String {
    let path = contracts_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn accepts_every_valid_example() {
    let now = time::now_ms();
    let text = read("telemetry-v1.valid.ndjson");
    let mut builder = BatchBuilder::with_capacity(8);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        match decode(line.as_bytes(), now) {
            Ok(r) => builder.append(&r).expect("append"),
            Err(e) => panic!("valid example line {} rejected: {e}", i + 1),
        }
        n += 1;
    }
    assert!(n >= 3, "the valid examples were read");
    assert_eq!(builder.finish().expect("batch").num_rows(), n);
}

#[derive(serde::Deserialize)]
struct InvalidExample {
    rejected_for: String,
    line: String,
}

#[test]
fn rejects_every_invalid_example_for_the_field_it_names() {
    let now = time::now_ms();
    let text = read("telemetry-v1.invalid.ndjson");
    let mut n = 0;
    for (i, example) in text.lines().enumerate() {
        let example: InvalidExample = serde_json::from_str(example).expect("example file is JSON");
        match decode(example.line.as_bytes(), now) {
            Ok(r) => panic!("invalid example line {} accepted: {r:?}", i + 1),
            Err(e) => assert_eq!(e.field.name(), example.rejected_for, "example line {}: {e}", i + 1),
        }
        n += 1;
    }
    assert!(n >= 13, "the invalid examples were read");
}

#[test]
fn the_valid_example_with_an_offset_is_normalised_to_utc() {
    let text = read("telemetry-v1.valid.ndjson");
    let line = text.lines().find(|l| l.contains("+08:00")).expect("example with an offset");
    let r = decode(line.as_bytes(), time::now_ms()).expect("valid");
    assert_eq!(time::format_rfc3339_ms(r.ts_ms), "2026-11-24T10:01:00Z");
    assert_eq!(r.measure(termwatch_telemetry::Measure::NetRttMs), None, "null is not measured");
}

/// The repository carries a copy of the fixed contracts; where the shared
/// originals sit beside the checkout, the copy must not have drifted.
#[test]
fn vendored_contracts_match_the_shared_originals() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/contracts");
    if !shared.is_dir() {
        eprintln!("no shared/contracts beside the checkout; nothing to compare");
        return;
    }
    for name in [
        "telemetry-v1.md",
        "telemetry-v1.schema.json",
        "telemetry-v1.valid.ndjson",
        "telemetry-v1.invalid.ndjson",
        "alerts-v1.md",
    ] {
        let ours = std::fs::read(contracts_dir().join(name)).expect("vendored copy");
        let theirs = std::fs::read(shared.join(name)).expect("shared original");
        assert!(ours == theirs, "contracts/{name} differs from shared/contracts/{name}");
    }
}

fn valid_line() -> impl Strategy<Value = String> {
    (0u32..1000, 0i64..2_000_000_000_000, -10.0f64..70.0, 0u32..5, prop::bool::ANY).prop_map(|(t, ts, v, c, s)| {
        let ts = if s { ts.to_string() } else { format!("\"{}\"", time::format_rfc3339_ms(ts)) };
        format!(
            r#"{{"terminal_id":"T-{t}","ts":{ts},"region":"r-{c}","supply_v_mean":{v},"card_reads":{c},"site_id":"S-{c}"}}"#
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the decoder; a rejection always names a field.
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode(&bytes, 0) {
            prop_assert!(!e.detail.is_empty());
        }
    }

    /// Mutations of a plausible record (a byte flipped, the line cut short)
    /// never panic, and whatever is accepted can be batched.
    #[test]
    fn never_panics_on_damaged_records(line in valid_line(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in prop::bool::ANY) {
        let mut bytes = line.into_bytes();
        let i = at.index(bytes.len());
        if cut { bytes.truncate(i) } else { bytes[i] = byte }
        if let Ok(r) = decode(&bytes, i64::MAX / 2) {
            let mut b = BatchBuilder::with_capacity(1);
            prop_assert!(b.append(&r).is_ok());
            prop_assert!(b.finish().is_ok());
        }
    }

    /// Voltage outside 0..=60 is rejected for that field; inside, accepted.
    #[test]
    fn voltage_range_is_enforced(line in valid_line()) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("generated JSON");
        let volts = v["supply_v_mean"].as_f64().expect("number");
        match decode(line.as_bytes(), i64::MAX / 2) {
            Ok(_) => prop_assert!((0.0..=60.0).contains(&volts)),
            Err(e) => {
                prop_assert!(!(0.0..=60.0).contains(&volts));
                prop_assert_eq!(e.field, Field::Measure(termwatch_telemetry::Measure::SupplyVMean));
            }
        }
    }
}
