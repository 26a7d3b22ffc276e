//! Decoding and validation of one telemetry v1 record.
//!
//! A record is decoded in one pass with a hand-written serde visitor instead
//! of a derived struct: a derived struct's errors do not name the field that
//! failed, and the contract requires every rejection to name it. Strings are
//! borrowed from the input where they carry no escapes, so identifiers cost no
//! heap allocation.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::fields::{
    Counter, DEFAULT_INTERVAL_S, DEFAULT_SUPPLY_V_NOMINAL, Field, Label, MAX_FUTURE_MS, MAX_ID_CHARS, Measure, NetType,
};
use crate::time;

/// One valid report of one terminal. Strings borrow from the input bytes
/// where they can.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry<'a> {
    pub terminal_id: Cow<'a, str>,
    /// End of the reporting interval, epoch milliseconds, UTC.
    pub ts_ms: i64,
    pub region: Cow<'a, str>,
    /// Indexed by [`Label::index`].
    pub labels: [Option<Cow<'a, str>>; Label::COUNT],
    /// Days since 1970-01-01.
    pub installed_on: Option<i32>,
    /// Defaulted to 60 when absent.
    pub interval_s: u32,
    /// Defaulted to 12.0 when absent.
    pub supply_v_nominal: f64,
    /// Indexed by [`Measure::index`]; `None` is "not measured".
    pub measures: [Option<f64>; Measure::COUNT],
    /// Indexed by [`Counter::index`]; `None` is "not measured".
    pub counters: [Option<u32>; Counter::COUNT],
    pub uptime_s: Option<u64>,
    pub net_type: Option<NetType>,
}

impl<'a> Telemetry<'a> {
    /// An otherwise empty record: what a terminal that measures nothing sends.
    pub fn new(terminal_id: impl Into<Cow<'a, str>>, ts_ms: i64, region: impl Into<Cow<'a, str>>) -> Self {
        Telemetry {
            terminal_id: terminal_id.into(),
            ts_ms,
            region: region.into(),
            labels: Default::default(),
            installed_on: None,
            interval_s: DEFAULT_INTERVAL_S,
            supply_v_nominal: DEFAULT_SUPPLY_V_NOMINAL,
            measures: [None; Measure::COUNT],
            counters: [None; Counter::COUNT],
            uptime_s: None,
            net_type: None,
        }
    }

    pub fn label(&self, l: Label) -> Option<&str> {
        self.labels[l.index()].as_deref()
    }

    pub fn measure(&self, m: Measure) -> Option<f64> {
        self.measures[m.index()]
    }

    pub fn counter(&self, c: Counter) -> Option<u32> {
        self.counters[c.index()]
    }
}

/// What was wrong, in a closed set so that rejections can be counted by
/// reason without unbounded label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// Not JSON, truncated, or trailing bytes after the object.
    Malformed,
    /// Valid JSON, but not an object.
    NotObject,
    /// Not UTF-8.
    NotUtf8,
    /// A required field is absent.
    Missing,
    /// A string field is empty.
    Empty,
    /// The JSON type is wrong (a string where a number belongs, ...).
    WrongType,
    /// A number is outside the contract's range, or a string too long.
    OutOfRange,
    /// A string does not have the required form (pattern, date, enum).
    Invalid,
    /// `ts` lies more than 24 h after ingestion.
    Future,
    /// `supply_v_min > supply_v_mean` or `supply_v_mean > supply_v_max`.
    Inconsistent,
    /// The same field appears twice in one object.
    Duplicate,
    /// The record is longer than the limit ([`MAX_RECORD_BYTES`] by default).
    TooLarge,
}

impl Problem {
    pub const ALL: [Problem; 12] = [
        Problem::Malformed,
        Problem::NotObject,
        Problem::NotUtf8,
        Problem::Missing,
        Problem::Empty,
        Problem::WrongType,
        Problem::OutOfRange,
        Problem::Invalid,
        Problem::Future,
        Problem::Inconsistent,
        Problem::Duplicate,
        Problem::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Malformed => "malformed",
            Problem::NotObject => "not_object",
            Problem::NotUtf8 => "not_utf8",
            Problem::Missing => "missing",
            Problem::Empty => "empty",
            Problem::WrongType => "wrong_type",
            Problem::OutOfRange => "out_of_range",
            Problem::Invalid => "invalid",
            Problem::Future => "future",
            Problem::Inconsistent => "inconsistent",
            Problem::Duplicate => "duplicate",
            Problem::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record was rejected: the field (or the record as a whole), the
/// kind of problem, and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub field: Field,
    pub problem: Problem,
    pub detail: String,
}

impl Rejection {
    fn new(field: Field, problem: Problem, detail: impl Into<String>) -> Self {
        Rejection { field, problem, detail: detail.into() }
    }

    /// The counting key, e.g. `ts:future`.
    pub fn reason(&self) -> (Field, Problem) {
        (self.field, self.problem)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.field, self.problem, self.detail)
    }
}

impl std::error::Error for Rejection {}

/// The longest record taken by default, in bytes (`[limits]
/// max_record_bytes` sets another). A report is a few hundred bytes:
/// anything near this is not one, and reading it whole (a line of 2 GB)
/// would cost memory and time for nothing. Sources keep at most a few bytes
/// more of a longer line (so that it is still too long here) and skip the
/// rest.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Decodes and validates one record of at most [`MAX_RECORD_BYTES`].
/// `ingest_ms` is the time of ingestion, against which a `ts` more than 24 h
/// ahead is refused; callers refresh it per batch rather than per record.
pub fn decode(bytes: &[u8], ingest_ms: i64) -> Result<Telemetry<'_>, Rejection> {
    decode_limited(bytes, ingest_ms, MAX_RECORD_BYTES)
}

/// [`decode`], refusing records longer than `max_record_bytes` as
/// `(record):too_large`.
pub fn decode_limited(bytes: &[u8], ingest_ms: i64, max_record_bytes: usize) -> Result<Telemetry<'_>, Rejection> {
    let text = record_text(bytes, max_record_bytes)?;
    // The fast reader takes the usual record; anything else, rejections
    // included, is read again by serde_json, which names the problem.
    if let Some(mut flat) = crate::flat::Flat::open(text) {
        let mut state = State { current: None, rejection: None };
        let visitor = RecordVisitor { state: &mut state };
        if let Ok(record) = visitor.visit_map(&mut flat)
            && flat.at_end()
        {
            check_record(&record, ingest_ms)?;
            return Ok(record);
        }
    }
    decode_serde(text, ingest_ms)
}

/// [`decode`] without its fast reader: every record through serde_json.
/// The fuzzer (`fuzz/`) checks that both give the same answer on any input.
#[doc(hidden)]
pub fn decode_reference(bytes: &[u8], ingest_ms: i64) -> Result<Telemetry<'_>, Rejection> {
    decode_serde(record_text(bytes, MAX_RECORD_BYTES)?, ingest_ms)
}

/// The checks on the record as a whole, before any parsing: its size, and
/// UTF-8. One check of the whole record up front (vectorised, fast on
/// ASCII) costs far less than serde_json's check of every string and key
/// one by one, which parsing from a `str` skips. It also rejects a record
/// whose invalid bytes sit in an ignored field, which the contract asks for.
fn record_text(bytes: &[u8], max_record_bytes: usize) -> Result<&str, Rejection> {
    if bytes.len() > max_record_bytes {
        return Err(Rejection::new(
            Field::Record,
            Problem::TooLarge,
            format!("the record is longer than {max_record_bytes} bytes"),
        ));
    }
    std::str::from_utf8(bytes)
        .map_err(|_| Rejection::new(Field::Record, Problem::NotUtf8, "the record is not valid UTF-8"))
}

/// Every record through serde_json: what the fast reader must agree with.
fn decode_serde(text: &str, ingest_ms: i64) -> Result<Telemetry<'_>, Rejection> {
    let mut state = State { current: None, rejection: None };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de.deserialize_map(RecordVisitor { state: &mut state }).and_then(|r| de.end().map(|()| r));
    let record = match parsed {
        Ok(r) => r,
        Err(e) => return Err(classify(e, state)),
    };
    check_record(&record, ingest_ms)?;
    Ok(record)
}

/// Cross-field rules, applied after every field was read.
fn check_record(r: &Telemetry<'_>, ingest_ms: i64) -> Result<(), Rejection> {
    if r.ts_ms > ingest_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(Rejection::new(
            Field::Ts,
            Problem::Future,
            format!(
                "{} is more than 24 h after ingestion at {}",
                time::format_rfc3339_ms(r.ts_ms),
                time::format_rfc3339_ms(ingest_ms)
            ),
        ));
    }
    let (min, mean, max) =
        (r.measure(Measure::SupplyVMin), r.measure(Measure::SupplyVMean), r.measure(Measure::SupplyVMax));
    if let (Some(min), Some(mean)) = (min, mean)
        && min > mean
    {
        return Err(Rejection::new(
            Field::Measure(Measure::SupplyVMin),
            Problem::Inconsistent,
            format!("supply_v_min {min} is above supply_v_mean {mean}"),
        ));
    }
    if let (Some(mean), Some(max)) = (mean, max)
        && mean > max
    {
        return Err(Rejection::new(
            Field::Measure(Measure::SupplyVMean),
            Problem::Inconsistent,
            format!("supply_v_mean {mean} is above supply_v_max {max}"),
        ));
    }
    Ok(())
}

/// Turns a parse failure into a rejection that names the field when the
/// failure was about one field's value.
fn classify(e: serde_json::Error, state: State) -> Rejection {
    if let Some(r) = state.rejection {
        return r;
    }
    use serde_json::error::Category;
    match (e.classify(), state.current) {
        (Category::Data, Some(field)) => Rejection::new(field, Problem::WrongType, strip_position(&e)),
        (Category::Data, None) => Rejection::new(Field::Record, Problem::NotObject, strip_position(&e)),
        _ => Rejection::new(Field::Record, Problem::Malformed, format!("not a JSON object: {e}")),
    }
}

/// serde_json appends "at line 1 column N" to data errors; for a one-line
/// record the field name says more than the column.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

struct State {
    /// The field whose value is being read, for naming it in type errors.
    current: Option<Field>,
    /// A precise rejection set by the visitor before it aborts the parse.
    rejection: Option<Rejection>,
}

struct RecordVisitor<'s> {
    state: &'s mut State,
}

impl RecordVisitor<'_> {
    fn reject<E: de::Error>(&mut self, field: Field, problem: Problem, detail: impl Into<String>) -> E {
        self.state.rejection = Some(Rejection::new(field, problem, detail));
        E::custom("rejected")
    }
}

fn bit(f: Field) -> u64 {
    let i = match f {
        Field::Record => 63,
        Field::TerminalId => 0,
        Field::Ts => 1,
        Field::Region => 2,
        Field::Label(l) => 3 + l.index(),
        Field::InstalledOn => 7,
        Field::IntervalS => 8,
        Field::SupplyVNominal => 9,
        Field::Measure(m) => 10 + m.index(),
        Field::Counter(c) => 24 + c.index(),
        Field::UptimeS => 36,
        Field::NetType => 37,
    };
    1 << i
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = Telemetry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a telemetry object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut terminal_id: Option<Cow<'de, str>> = None;
        let mut ts_ms: Option<i64> = None;
        let mut region: Option<Cow<'de, str>> = None;
        let mut r = Telemetry::new("", 0, "");
        let mut seen = 0u64;

        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let Some(field) = Field::from_key(&key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen & bit(field) != 0 {
                return Err(self.reject(field, Problem::Duplicate, "appears twice in one record"));
            }
            seen |= bit(field);
            self.state.current = Some(field);
            match field {
                Field::TerminalId => {
                    let v = map.next_value::<Option<Text<'de>>>()?;
                    let v = self.required_text(field, v)?;
                    if v.len() > MAX_ID_CHARS {
                        return Err(self.reject(field, Problem::OutOfRange, "longer than 64 characters"));
                    }
                    if let Some(c) = v.chars().find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c))) {
                        return Err(self.reject(
                            field,
                            Problem::Invalid,
                            format!("{c:?} is not one of [A-Za-z0-9._:-]"),
                        ));
                    }
                    terminal_id = Some(v);
                }
                Field::Region => {
                    let v = map.next_value::<Option<Text<'de>>>()?;
                    let v = self.required_text(field, v)?;
                    region = Some(self.check_len(field, v)?);
                }
                Field::Label(l) => {
                    if let Some(Text(v)) = map.next_value::<Option<Text<'de>>>()? {
                        if v.is_empty() {
                            return Err(self.reject(field, Problem::Empty, "is an empty string"));
                        }
                        r.labels[l.index()] = Some(self.check_len(field, v)?);
                    }
                }
                Field::Ts => match map.next_value::<Option<TsValue<'de>>>()? {
                    None => return Err(self.reject(field, Problem::Missing, "is null")),
                    Some(TsValue::Millis(ms)) => ts_ms = Some(ms),
                    Some(TsValue::Text(s)) => match time::parse_rfc3339_ms(&s) {
                        Ok(ms) => ts_ms = Some(ms),
                        Err(e) => return Err(self.reject(field, Problem::Invalid, format!("{s:?}: {e}"))),
                    },
                    Some(TsValue::Negative(v)) => {
                        return Err(self.reject(field, Problem::OutOfRange, format!("{v} is before 1970")));
                    }
                },
                Field::InstalledOn => {
                    if let Some(Text(s)) = map.next_value::<Option<Text<'de>>>()? {
                        match time::parse_date(&s) {
                            Ok(d) => r.installed_on = Some(d),
                            Err(e) => {
                                return Err(self.reject(
                                    field,
                                    Problem::Invalid,
                                    format!("{s:?} is not a YYYY-MM-DD date ({e})"),
                                ));
                            }
                        }
                    }
                }
                Field::IntervalS => {
                    if let Some(v) = self.integer(&mut map, field, 1, 3600)? {
                        r.interval_s = v as u32;
                    }
                }
                Field::UptimeS => r.uptime_s = self.integer(&mut map, field, 0, u64::MAX)?,
                Field::Counter(c) => {
                    r.counters[c.index()] = self.integer(&mut map, field, 0, u64::from(u32::MAX))?.map(|v| v as u32)
                }
                Field::SupplyVNominal => {
                    if let Some(v) = self.number(&mut map, field, (0.0, 60.0))? {
                        r.supply_v_nominal = v;
                    }
                }
                Field::Measure(m) => r.measures[m.index()] = self.number(&mut map, field, m.range())?,
                Field::NetType => {
                    if let Some(Text(s)) = map.next_value::<Option<Text<'de>>>()? {
                        match NetType::parse(&s) {
                            Some(t) => r.net_type = Some(t),
                            None => {
                                return Err(self.reject(
                                    field,
                                    Problem::Invalid,
                                    format!("{s:?} is not one of \"eth\", \"wifi\", \"cellular\""),
                                ));
                            }
                        }
                    }
                }
                Field::Record => {}
            }
            self.state.current = None;
        }

        r.terminal_id = match terminal_id {
            Some(v) => v,
            None => return Err(self.reject(Field::TerminalId, Problem::Missing, "is required")),
        };
        r.ts_ms = match ts_ms {
            Some(v) => v,
            None => return Err(self.reject(Field::Ts, Problem::Missing, "is required")),
        };
        r.region = match region {
            Some(v) => v,
            None => return Err(self.reject(Field::Region, Problem::Missing, "is required")),
        };
        Ok(r)
    }
}

impl RecordVisitor<'_> {
    fn required_text<'de, E: de::Error>(&mut self, field: Field, v: Option<Text<'de>>) -> Result<Cow<'de, str>, E> {
        match v {
            None => Err(self.reject(field, Problem::Missing, "is null")),
            Some(Text(s)) if s.is_empty() => Err(self.reject(field, Problem::Empty, "is an empty string")),
            Some(Text(s)) => Ok(s),
        }
    }

    fn check_len<'de, E: de::Error>(&mut self, field: Field, v: Cow<'de, str>) -> Result<Cow<'de, str>, E> {
        // Byte length bounds the character count from above: count only when needed.
        if v.len() > MAX_ID_CHARS && v.chars().count() > MAX_ID_CHARS {
            return Err(self.reject(field, Problem::OutOfRange, "longer than 64 characters"));
        }
        Ok(v)
    }

    fn number<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: Field,
        (min, max): (f64, f64),
    ) -> Result<Option<f64>, A::Error> {
        match map.next_value::<Option<f64>>()? {
            Some(v) if !v.is_finite() => Err(self.reject(field, Problem::OutOfRange, "is not a finite number")),
            Some(v) if v < min || v > max => Err(self.reject(
                field,
                Problem::OutOfRange,
                if max == f64::MAX { format!("{v} is below {min}") } else { format!("{v} is outside {min}..={max}") },
            )),
            v => Ok(v),
        }
    }

    fn integer<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: Field,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, A::Error> {
        match map.next_value::<Option<IntValue>>()? {
            None => Ok(None),
            Some(IntValue::Unsigned(v)) if v >= min && v <= max => Ok(Some(v)),
            Some(IntValue::Unsigned(v)) => {
                Err(self.reject(field, Problem::OutOfRange, format!("{v} is outside {min}..={max}")))
            }
            Some(IntValue::Negative(v)) => Err(self.reject(field, Problem::OutOfRange, format!("{v} is negative"))),
            Some(IntValue::Fraction(v)) => {
                Err(self.reject(field, Problem::WrongType, format!("{v} is not an integer")))
            }
        }
    }
}

/// A string that borrows from the input unless it had escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON integer, told apart from a number with a fraction so each gets the
/// right rejection. Integral floats (`3.0`) are integers, as in JSON Schema.
enum IntValue {
    Unsigned(u64),
    Negative(i64),
    Fraction(f64),
}

impl<'de> de::Deserialize<'de> for IntValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IntValue::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(if v >= 0 { IntValue::Unsigned(v as u64) } else { IntValue::Negative(v) })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 {
                    IntValue::Unsigned(v as u64)
                } else if v.fract() == 0.0 && v < 0.0 && v >= i64::MIN as f64 {
                    IntValue::Negative(v as i64)
                } else {
                    IntValue::Fraction(v)
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `ts`: an RFC 3339 string or integer epoch milliseconds.
enum TsValue<'de> {
    Text(Cow<'de, str>),
    Millis(i64),
    Negative(i64),
}

impl<'de> de::Deserialize<'de> for TsValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TsValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TsValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TsValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v).map(TsValue::Millis).map_err(|_| E::custom("epoch milliseconds too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(if v >= 0 { TsValue::Millis(v) } else { TsValue::Negative(v) })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_514_460_000; // 2026-11-24T10:01:00Z

    fn reject(line: &str) -> Rejection {
        match decode(line.as_bytes(), NOW) {
            Ok(r) => panic!("accepted {:.200}: {r:?}", line),
            Err(e) => e,
        }
    }

    fn rec(extra: &str) -> String {
        format!(r#"{{"terminal_id":"T-1","ts":"2026-11-24T10:01:00Z","region":"east-07"{extra}}}"#)
    }

    #[test]
    fn accepts_minimal_record_with_defaults() {
        let line = rec("");
        let r = decode(line.as_bytes(), NOW).expect("valid");
        assert_eq!(r.terminal_id, "T-1");
        assert_eq!(r.ts_ms, NOW);
        assert_eq!(r.interval_s, 60);
        assert_eq!(r.supply_v_nominal, 12.0);
        assert!(r.measures.iter().all(Option::is_none));
        assert!(r.counters.iter().all(Option::is_none));
    }

    #[test]
    fn borrows_identifiers_without_escapes() {
        let line = rec(r#","site_id":"S-1""#);
        let r = decode(line.as_bytes(), NOW).expect("valid");
        assert!(matches!(r.terminal_id, Cow::Borrowed(_)));
        assert!(matches!(r.labels[Label::SiteId.index()], Some(Cow::Borrowed(_))));
    }

    #[test]
    fn escaped_identifiers_are_decoded() {
        let r = decode(br#"{"terminal_id":"T\u002d1","ts":0,"region":"r"}"#, NOW).expect("valid");
        assert_eq!(r.terminal_id, "T-1");
    }

    #[test]
    fn null_means_not_measured() {
        let line = rec(r#","net_rtt_ms":null,"card_reads":null,"interval_s":null"#);
        let r = decode(line.as_bytes(), NOW).expect("valid");
        assert_eq!(r.measure(Measure::NetRttMs), None);
        assert_eq!(r.counter(Counter::CardReads), None);
        assert_eq!(r.interval_s, 60);
    }

    #[test]
    fn ignores_unknown_fields_of_any_shape() {
        decode(rec(r#","firmware_channel":"beta","x":{"y":[1,2,{"z":null}]}"#).as_bytes(), NOW).expect("valid");
    }

    #[test]
    fn accepts_epoch_millis_and_integral_float_counters() {
        let r =
            decode(br#"{"terminal_id":"T-1","ts":1795514460000,"region":"r","card_reads":7.0}"#, NOW).expect("valid");
        assert_eq!(r.ts_ms, NOW);
        assert_eq!(r.counter(Counter::CardReads), Some(7));
    }

    #[test]
    fn rejects_missing_terminal_id() {
        let e = reject(r#"{"ts":"2026-11-24T10:01:00Z","region":"east-07"}"#);
        assert_eq!(e.reason(), (Field::TerminalId, Problem::Missing));
    }

    #[test]
    fn rejects_terminal_id_outside_pattern() {
        let e = reject(r#"{"terminal_id":"T 1/2","ts":0,"region":"r"}"#);
        assert_eq!(e.reason(), (Field::TerminalId, Problem::Invalid));
        let long = "x".repeat(65);
        let e = reject(&format!(r#"{{"terminal_id":"{long}","ts":0,"region":"r"}}"#));
        assert_eq!(e.reason(), (Field::TerminalId, Problem::OutOfRange));
    }

    #[test]
    fn rejects_empty_optional_identifier() {
        assert_eq!(reject(&rec(r#","site_id":"""#)).reason(), (Field::Label(Label::SiteId), Problem::Empty));
    }

    #[test]
    fn counts_characters_not_bytes_for_length() {
        // 64 two-byte characters: 128 bytes, still valid.
        let region = "é".repeat(64);
        decode(format!(r#"{{"terminal_id":"T","ts":0,"region":"{region}"}}"#).as_bytes(), NOW).expect("valid");
        let region = "é".repeat(65);
        let e = reject(&format!(r#"{{"terminal_id":"T","ts":0,"region":"{region}"}}"#));
        assert_eq!(e.reason(), (Field::Region, Problem::OutOfRange));
    }

    #[test]
    fn rejects_negative_counter() {
        let e = reject(&rec(r#","card_read_errors":-3"#));
        assert_eq!(e.reason(), (Field::Counter(Counter::CardReadErrors), Problem::OutOfRange));
    }

    #[test]
    fn rejects_counter_of_two_to_the_32() {
        let e = reject(&rec(r#","txn_count":4294967296"#));
        assert_eq!(e.reason(), (Field::Counter(Counter::TxnCount), Problem::OutOfRange));
        decode(rec(r#","txn_count":4294967295"#).as_bytes(), NOW).expect("2^32-1 is valid");
    }

    #[test]
    fn rejects_fractional_counter() {
        let e = reject(&rec(r#","reboots":1.5"#));
        assert_eq!(e.reason(), (Field::Counter(Counter::Reboots), Problem::WrongType));
    }

    #[test]
    fn rejects_number_given_as_string() {
        let e = reject(&rec(r#","supply_v_mean":"12.0""#));
        assert_eq!(e.reason(), (Field::Measure(Measure::SupplyVMean), Problem::WrongType));
        assert!(e.detail.contains("string"), "{}", e.detail);
    }

    #[test]
    fn rejects_percentage_over_100() {
        let e = reject(&rec(r#","net_loss_pct":140"#));
        assert_eq!(e.reason(), (Field::Measure(Measure::NetLossPct), Problem::OutOfRange));
    }

    #[test]
    fn rejects_voltage_above_60() {
        let e = reject(&rec(r#","supply_v_max":61"#));
        assert_eq!(e.reason(), (Field::Measure(Measure::SupplyVMax), Problem::OutOfRange));
    }

    #[test]
    fn rejects_overflowing_number() {
        let e = reject(&rec(r#","net_rtt_ms":1e999"#));
        // serde_json refuses infinities while parsing; either way the field is named or the record is.
        assert!(matches!(e.field, Field::Measure(Measure::NetRttMs) | Field::Record), "{e}");
    }

    #[test]
    fn rejects_interval_outside_1_to_3600() {
        assert_eq!(reject(&rec(r#","interval_s":0"#)).reason(), (Field::IntervalS, Problem::OutOfRange));
        assert_eq!(reject(&rec(r#","interval_s":3601"#)).reason(), (Field::IntervalS, Problem::OutOfRange));
    }

    #[test]
    fn rejects_min_above_mean_and_mean_above_max() {
        let e = reject(&rec(r#","supply_v_min":12.5,"supply_v_mean":12.0,"supply_v_max":12.6"#));
        assert_eq!(e.reason(), (Field::Measure(Measure::SupplyVMin), Problem::Inconsistent));
        let e = reject(&rec(r#","supply_v_min":11.5,"supply_v_mean":12.7,"supply_v_max":12.6"#));
        assert_eq!(e.reason(), (Field::Measure(Measure::SupplyVMean), Problem::Inconsistent));
    }

    #[test]
    fn rejects_unparseable_ts() {
        let e = reject(r#"{"terminal_id":"T-1","ts":"yesterday","region":"r"}"#);
        assert_eq!(e.reason(), (Field::Ts, Problem::Invalid));
        let e = reject(r#"{"terminal_id":"T-1","ts":true,"region":"r"}"#);
        assert_eq!(e.reason(), (Field::Ts, Problem::WrongType));
        let e = reject(r#"{"terminal_id":"T-1","ts":-5,"region":"r"}"#);
        assert_eq!(e.reason(), (Field::Ts, Problem::OutOfRange));
    }

    #[test]
    fn rejects_ts_more_than_a_day_ahead() {
        let ahead = NOW + MAX_FUTURE_MS + 1;
        let e = reject(&format!(r#"{{"terminal_id":"T-1","ts":{ahead},"region":"r"}}"#));
        assert_eq!(e.reason(), (Field::Ts, Problem::Future));
        let edge = NOW + MAX_FUTURE_MS;
        decode(format!(r#"{{"terminal_id":"T-1","ts":{edge},"region":"r"}}"#).as_bytes(), NOW)
            .expect("exactly 24 h ahead is allowed");
    }

    #[test]
    fn rejects_bad_installed_on() {
        let e = reject(&rec(r#","installed_on":"2023-02-30""#));
        assert_eq!(e.reason(), (Field::InstalledOn, Problem::Invalid));
    }

    #[test]
    fn rejects_unknown_net_type() {
        let e = reject(&rec(r#","net_type":"carrier-pigeon""#));
        assert_eq!(e.reason(), (Field::NetType, Problem::Invalid));
    }

    #[test]
    fn rejects_duplicate_field() {
        let e = reject(&rec(r#","cpu_pct":1,"cpu_pct":2"#));
        assert_eq!(e.reason(), (Field::Measure(Measure::CpuPct), Problem::Duplicate));
    }

    #[test]
    fn rejects_non_objects_and_broken_json_as_record() {
        assert_eq!(reject("[1,2,3]").reason(), (Field::Record, Problem::NotObject));
        assert_eq!(reject("\"x\"").reason(), (Field::Record, Problem::NotObject));
        assert_eq!(reject("not json at all").reason(), (Field::Record, Problem::Malformed));
        assert_eq!(reject(r#"{"terminal_id":"T-1","ts":"#).reason(), (Field::Record, Problem::Malformed));
        assert_eq!(reject(&format!("{} trailing", rec(""))).reason(), (Field::Record, Problem::Malformed));
        assert_eq!(reject("").reason(), (Field::Record, Problem::Malformed));
    }

    #[test]
    fn rejects_invalid_utf8_as_record() {
        let mut bytes = rec(r#","model":"P2"#).into_bytes();
        bytes.truncate(bytes.len() - 1);
        bytes.extend_from_slice(b"\xff\"}");
        let e = decode(&bytes, NOW).expect_err("invalid UTF-8");
        assert_eq!(e.reason(), (Field::Record, Problem::NotUtf8));
        // Also where the field would be ignored: the record as a whole is not UTF-8.
        let mut unknown = rec(r#","x_vendor":"ok"#).into_bytes();
        unknown.truncate(unknown.len() - 1);
        unknown.extend_from_slice(b"\xc3\"}");
        let e = decode(&unknown, NOW).expect_err("invalid UTF-8 in an unknown field");
        assert_eq!(e.reason(), (Field::Record, Problem::NotUtf8));
    }

    #[test]
    fn deep_nesting_in_unknown_field_is_skipped_without_overflow() {
        // serde_json skips ignored values iteratively: no stack overflow, and
        // unknown fields are ignored whatever their shape.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(rec(&format!(r#","x":{deep}"#)).as_bytes(), NOW).is_ok());
        let unclosed = "[".repeat(100_000);
        assert_eq!(reject(&rec(&format!(r#","x":{unclosed}"#))).field, Field::Record);
    }

    mod fast_reader_agrees_with_serde_json {
        use proptest::prelude::*;

        use super::super::{decode, decode_serde};

        /// Same result, to the bit (Debug shows -0.0 and every digit).
        fn agree(line: &str) -> Result<(), TestCaseError> {
            let fast = format!("{:?}", decode(line.as_bytes(), super::NOW));
            let slow = format!("{:?}", decode_serde(line, super::NOW));
            prop_assert_eq!(fast, slow, "{}", line);
            Ok(())
        }

        const KEYS: [&str; 22] = [
            "terminal_id",
            "ts",
            "region",
            "site_id",
            "model",
            "installed_on",
            "interval_s",
            "supply_v_nominal",
            "supply_v_mean",
            "supply_v_min",
            "supply_v_max",
            "supply_v_std",
            "net_signal_dbm",
            "temperature_c",
            "card_reads",
            "txn_count",
            "uptime_s",
            "net_type",
            "battery_pct",
            "x_vendor",
            "cpu_pct",
            "reboots",
        ];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<u64>().prop_map(|v| v.to_string()),
                (0u64..100_000).prop_map(|v| v.to_string()),
                any::<i64>().prop_map(|v| v.to_string()),
                (-100i64..100).prop_map(|v| v.to_string()),
                (any::<f64>(), 0usize..25).prop_map(|(v, p)| format!("{v:.p$}")),
                (-120.0f64..120.0, 0usize..8).prop_map(|(v, p)| format!("{v:.p$}")),
                (0u64..1 << 54, 0u32..24).prop_map(|(m, e)| format!("{}.{}", m / 10u64.pow(e.min(15)), m % 1000)),
                any::<f64>().prop_map(|v| format!("{v:e}")),
                Just("-0".to_string()),
                Just("-0.0".to_string()),
                Just("007".to_string()),
                Just("1.".to_string()),
                Just("null".to_string()),
                Just("true".to_string()),
                Just("false".to_string()),
                Just("[1,2]".to_string()),
                Just("{\"a\":1}".to_string()),
                "[A-Za-z0-9._:-]{0,70}".prop_map(|s| format!("\"{s}\"")),
                "[ -~]{0,12}".prop_map(|s| format!("\"{s}\"")),
                Just("\"2026-11-24T10:01:00Z\"".to_string()),
                Just("\"2026-11-24T10:01:00.5+08:00\"".to_string()),
                Just("\"2020-02-30\"".to_string()),
                Just("\"wifi\"".to_string()),
                Just("\"a\\u0041b\"".to_string()),
                Just("\"tab\there\"".to_string()),
            ]
        }

        fn record() -> impl Strategy<Value = String> {
            let member = (0usize..KEYS.len(), value(), "[ \t]{0,2}");
            (prop::collection::vec(member, 0..24), any::<bool>(), "[ \t\r\n]{0,2}").prop_map(|(members, base, ws)| {
                let mut parts: Vec<String> = Vec::new();
                if base {
                    parts.push(r#""terminal_id":"T-1","ts":"2026-11-24T10:01:00Z","region":"east-07""#.to_string());
                }
                for (k, v, sp) in members {
                    parts.push(format!("{sp}\"{}\"{sp}:{sp}{v}", KEYS[k]));
                }
                format!("{ws}{{{}}}{ws}", parts.join(","))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn on_generated_records(line in record()) {
                agree(&line)?;
            }

            #[test]
            fn on_damaged_records(line in record(), at in any::<prop::sample::Index>(), byte in 0x20u8..0x7f, cut in any::<bool>()) {
                let mut bytes = line.into_bytes();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    if cut { bytes.truncate(i) } else { bytes[i] = byte }
                }
                agree(&String::from_utf8(bytes).expect("ASCII"))?;
            }
        }

        #[test]
        fn on_the_contract_examples() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
            for name in ["telemetry-v1.valid.ndjson", "telemetry-v1.invalid.ndjson"] {
                let text = std::fs::read_to_string(dir.join(name)).expect("contract examples");
                for line in text.lines() {
                    // Each invalid example is an object holding the record under "line".
                    let record = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("line").and_then(|l| l.as_str()).map(str::to_string))
                        .unwrap_or_else(|| line.to_string());
                    agree(&record).expect("agree");
                    agree(line).expect("agree");
                }
            }
        }
    }
}
