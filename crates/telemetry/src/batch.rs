//! The Arrow schema of telemetry v1 and the builder that turns decoded
//! records into `RecordBatch`es.
//!
//! Identifiers are dictionary-encoded: a batch stores each distinct terminal,
//! site, region, model... once, and the rows hold 32-bit keys. Appending an
//! identifier hashes a borrowed string and allocates only for a value the
//! batch has not seen yet.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Date32Builder, DictionaryArray, Float64Builder, Int8Builder, StringArray, StringDictionaryBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field as ArrowField, Int8Type, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::decode::Telemetry;
use crate::fields::{Counter, Label, Measure, NetType};

/// Column names that are not in the per-kind tables of [`crate::fields`].
pub mod col {
    pub const TERMINAL_ID: &str = "terminal_id";
    pub const TS: &str = "ts";
    pub const REGION: &str = "region";
    pub const INSTALLED_ON: &str = "installed_on";
    pub const INTERVAL_S: &str = "interval_s";
    pub const SUPPLY_V_NOMINAL: &str = "supply_v_nominal";
    pub const UPTIME_S: &str = "uptime_s";
    pub const NET_TYPE: &str = "net_type";
}

/// Schema metadata key naming the contract version a batch follows.
pub const SCHEMA_VERSION_KEY: &str = "termwatch.schema";
pub const SCHEMA_VERSION: &str = "telemetry-v1";

fn dict(key: DataType) -> DataType {
    DataType::Dictionary(Box::new(key), Box::new(DataType::Utf8))
}

/// The fixed Arrow schema of a telemetry batch. Column order: identity
/// (`terminal_id`, `ts`, `region`, the optional labels, `installed_on`,
/// `interval_s`, `supply_v_nominal`), then the measurements in
/// [`Measure::ALL`] order, the counters in [`Counter::ALL`] order, then
/// `uptime_s` and `net_type`.
pub fn telemetry_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                ArrowField::new(col::TERMINAL_ID, dict(DataType::Int32), false),
                ArrowField::new(col::TS, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
                ArrowField::new(col::REGION, dict(DataType::Int32), false),
            ];
            fields.extend(Label::ALL.map(|l| ArrowField::new(l.name(), dict(DataType::Int32), true)));
            fields.push(ArrowField::new(col::INSTALLED_ON, DataType::Date32, true));
            fields.push(ArrowField::new(col::INTERVAL_S, DataType::UInt32, false));
            fields.push(ArrowField::new(col::SUPPLY_V_NOMINAL, DataType::Float64, false));
            fields.extend(Measure::ALL.map(|m| ArrowField::new(m.name(), DataType::Float64, true)));
            fields.extend(Counter::ALL.map(|c| ArrowField::new(c.name(), DataType::UInt32, true)));
            fields.push(ArrowField::new(col::UPTIME_S, DataType::UInt64, true));
            fields.push(ArrowField::new(col::NET_TYPE, dict(DataType::Int8), true));
            let metadata: std::collections::HashMap<String, String> =
                [(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())].into();
            Arc::new(Schema::new_with_metadata(fields, metadata))
        })
        .clone()
}

/// Accumulates decoded records column by column.
pub struct BatchBuilder {
    terminal_id: StringDictionaryBuilder<Int32Type>,
    ts: TimestampMillisecondBuilder,
    region: StringDictionaryBuilder<Int32Type>,
    labels: [StringDictionaryBuilder<Int32Type>; Label::COUNT],
    installed_on: Date32Builder,
    interval_s: UInt32Builder,
    supply_v_nominal: Float64Builder,
    measures: [Float64Builder; Measure::COUNT],
    counters: [UInt32Builder; Counter::COUNT],
    uptime_s: UInt64Builder,
    net_type: Int8Builder,
    len: usize,
    capacity: usize,
}

impl BatchBuilder {
    /// A builder sized for `capacity` rows (it grows past that if asked).
    pub fn with_capacity(capacity: usize) -> Self {
        BatchBuilder {
            terminal_id: StringDictionaryBuilder::with_capacity(capacity, capacity, capacity * 16),
            ts: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            region: StringDictionaryBuilder::new(),
            labels: std::array::from_fn(|_| StringDictionaryBuilder::new()),
            installed_on: Date32Builder::with_capacity(capacity),
            interval_s: UInt32Builder::with_capacity(capacity),
            supply_v_nominal: Float64Builder::with_capacity(capacity),
            measures: std::array::from_fn(|_| Float64Builder::with_capacity(capacity)),
            counters: std::array::from_fn(|_| UInt32Builder::with_capacity(capacity)),
            uptime_s: UInt64Builder::with_capacity(capacity),
            net_type: Int8Builder::with_capacity(capacity),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one record. Fails only if a dictionary overflows its 32-bit
    /// keys, which a batch of fewer than 2^31 rows cannot do.
    pub fn append(&mut self, r: &Telemetry<'_>) -> Result<(), ArrowError> {
        self.terminal_id.append(&*r.terminal_id)?;
        self.ts.append_value(r.ts_ms);
        self.region.append(&*r.region)?;
        for (b, v) in self.labels.iter_mut().zip(&r.labels) {
            match v {
                Some(s) => {
                    b.append(&**s)?;
                }
                None => b.append_null(),
            }
        }
        self.installed_on.append_option(r.installed_on);
        self.interval_s.append_value(r.interval_s);
        self.supply_v_nominal.append_value(r.supply_v_nominal);
        for (b, v) in self.measures.iter_mut().zip(r.measures) {
            b.append_option(v);
        }
        for (b, v) in self.counters.iter_mut().zip(r.counters) {
            b.append_option(v);
        }
        self.uptime_s.append_option(r.uptime_s);
        self.net_type.append_option(r.net_type.map(|t| t as i8));
        self.len += 1;
        Ok(())
    }

    /// Takes the rows appended so far as a batch and starts an empty one.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        // Arrow's builders restart from zero capacity after `finish`, and the
        // next batch then regrows every column by doubling (about ten
        // reallocations and copies per column per batch): start the next
        // batch with its full capacity instead.
        let mut full = BatchBuilder::with_capacity(self.capacity);
        std::mem::swap(self, &mut full);
        full.take_batch()
    }

    fn take_batch(mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(telemetry_schema().fields().len());
        columns.push(Arc::new(self.terminal_id.finish()));
        columns.push(Arc::new(self.ts.finish()));
        columns.push(Arc::new(self.region.finish()));
        columns.extend(self.labels.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.installed_on.finish()));
        columns.push(Arc::new(self.interval_s.finish()));
        columns.push(Arc::new(self.supply_v_nominal.finish()));
        columns.extend(self.measures.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(self.counters.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.uptime_s.finish()));
        let net_values = Arc::new(StringArray::from_iter_values(NetType::ALL.map(NetType::as_str)));
        columns.push(Arc::new(DictionaryArray::<Int8Type>::try_new(self.net_type.finish(), net_values)?));
        RecordBatch::try_new(telemetry_schema(), columns)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};

    use super::*;
    use crate::decode::decode;

    const NOW: i64 = 1_795_514_460_000;

    #[test]
    fn builds_batch_with_the_documented_schema() {
        let lines = [
            r#"{"terminal_id":"T-1","ts":"2026-11-24T10:01:00Z","region":"east","site_id":"S-1","supply_v_mean":12.0,"card_reads":7,"net_type":"wifi"}"#,
            r#"{"terminal_id":"T-2","ts":1795514400000,"region":"east","card_reads":null}"#,
            r#"{"terminal_id":"T-1","ts":"2026-11-24T10:02:00Z","region":"east","site_id":"S-1","uptime_s":99}"#,
        ];
        let mut b = BatchBuilder::with_capacity(4);
        for l in lines {
            b.append(&decode(l.as_bytes(), NOW).expect("valid")).expect("append");
        }
        assert_eq!(b.len(), 3);
        let batch = b.finish().expect("batch");
        assert!(b.is_empty());
        assert_eq!(batch.schema(), telemetry_schema());
        assert_eq!(batch.num_rows(), 3);

        let ids = batch.column_by_name("terminal_id").expect("column").as_dictionary::<Int32Type>();
        // Two distinct terminals: the dictionary holds each once.
        assert_eq!(ids.values().len(), 2);
        assert_eq!(ids.keys().values(), &[0, 1, 0]);

        let ts = batch.column_by_name("ts").expect("column").as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values(), &[NOW, 1_795_514_400_000, NOW + 60_000]);

        let v = batch.column_by_name("supply_v_mean").expect("column").as_primitive::<Float64Type>();
        assert_eq!(v.value(0), 12.0);
        assert!(v.is_null(1), "absent means null, never 0");

        let reads = batch.column_by_name("card_reads").expect("column").as_primitive::<UInt32Type>();
        assert_eq!((reads.value(0), reads.is_null(1), reads.is_null(2)), (7, true, true));

        let net = batch.column_by_name("net_type").expect("column").as_dictionary::<Int8Type>();
        let net_values = net.values().as_string::<i32>();
        assert_eq!(net_values.value(net.keys().value(0) as usize), "wifi");
        assert!(net.is_null(1));

        let interval = batch.column_by_name("interval_s").expect("column").as_primitive::<UInt32Type>();
        assert_eq!(interval.values(), &[60, 60, 60]);
    }

    #[test]
    fn consecutive_batches_have_independent_dictionaries() {
        let mut b = BatchBuilder::with_capacity(2);
        let a = decode(br#"{"terminal_id":"A","ts":0,"region":"r"}"#, NOW).expect("valid");
        let z = decode(br#"{"terminal_id":"Z","ts":0,"region":"r"}"#, NOW).expect("valid");
        b.append(&a).expect("append");
        let first = b.finish().expect("batch");
        b.append(&z).expect("append");
        let second = b.finish().expect("batch");
        let ids = |batch: &RecordBatch| {
            let d = batch.column(0).as_dictionary::<Int32Type>();
            d.values().as_string::<i32>().value(d.keys().value(0) as usize).to_string()
        };
        assert_eq!((ids(&first), ids(&second)), ("A".to_string(), "Z".to_string()));
    }

    #[test]
    fn schema_names_every_contract_field_once() {
        let schema = telemetry_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut expected: Vec<&str> = crate::fields::Field::all().map(|f| f.name()).collect();
        let mut got = names.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
    }
}
