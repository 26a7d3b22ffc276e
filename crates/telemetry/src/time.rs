//! Civil-time arithmetic and RFC 3339 parsing/formatting.
//!
//! Hand-written rather than taken from chrono because the decoder parses one
//! timestamp per record on the hot path and needs to say precisely what was
//! wrong with a bad one; the algorithms are Howard Hinnant's `days_from_civil`
//! and `civil_from_days`, exact for the proleptic Gregorian calendar.

use std::fmt;

pub const MS_PER_SECOND: i64 = 1_000;
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
pub const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Days since 1970-01-01 of a proleptic Gregorian date. `month` is 1-12.
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy as i32;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
pub fn civil_from_days(days: i32) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i32::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Why a date or timestamp string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    Syntax,
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeError::Syntax => f.write_str("not an RFC 3339 date-time"),
            TimeError::OutOfRange => f.write_str("a date or time component is out of range"),
        }
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, TimeError> {
    let part = b.get(at..at + n).ok_or(TimeError::Syntax)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return Err(TimeError::Syntax);
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimeError> {
    if b.get(at) == Some(&c) { Ok(()) } else { Err(TimeError::Syntax) }
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(s: &str) -> Result<i32, TimeError> {
    let b = s.as_bytes();
    if b.len() != 10 {
        return Err(TimeError::Syntax);
    }
    parse_date_prefix(b)
}

fn parse_date_prefix(b: &[u8]) -> Result<i32, TimeError> {
    let year = digits(b, 0, 4)? as i32;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(TimeError::OutOfRange);
    }
    Ok(days_from_civil(year, month, day))
}

/// Parses an RFC 3339 date-time (`2026-11-24T10:01:00Z`,
/// `2026-11-24T18:01:00.250+08:00`) into milliseconds since the epoch, UTC.
/// Fractions finer than a millisecond are truncated; a leap second (`:60`)
/// is read as the last millisecond of its minute's 59th second, since Unix
/// time has no slot for it.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    let b = s.as_bytes();
    let days = parse_date_prefix(b)?;
    match b.get(10) {
        Some(b'T' | b't' | b' ') => {}
        _ => return Err(TimeError::Syntax),
    }
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b':')?;
    let second = digits(b, 17, 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err(TimeError::OutOfRange);
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while let Some(c) = b.get(at).filter(|c| c.is_ascii_digit()) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(c - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return Err(TimeError::Syntax);
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 => {
            let oh = digits(b, at + 1, 2)?;
            expect(b, at + 3, b':')?;
            let om = digits(b, at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimeError::OutOfRange);
            }
            let m = i64::from(oh * 60 + om);
            if sign == b'+' { m } else { -m }
        }
        _ => return Err(TimeError::Syntax),
    };
    let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
    let secs = i64::from(days) * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second)
        - offset_min * 60;
    Ok(secs * MS_PER_SECOND + millis)
}

/// Formats epoch milliseconds as RFC 3339 in UTC: `2026-11-24T10:01:00Z`,
/// with `.mmm` only when the milliseconds are not zero.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, ms);
    out
}

/// As [`format_rfc3339_ms`], appending to `out` (no allocation when it has room).
pub fn write_rfc3339_ms(out: &mut String, ms: i64) {
    use std::fmt::Write;
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days as i32);
    let (h, mi, s, milli) =
        (in_day / MS_PER_HOUR, in_day / MS_PER_MINUTE % 60, in_day / MS_PER_SECOND % 60, in_day % MS_PER_SECOND);
    // Writing to a String cannot fail.
    let _ = write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if milli != 0 {
        let _ = write!(out, ".{milli:03}");
    }
    out.push('Z');
}

/// Formats days since the epoch as `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Milliseconds since the epoch, now, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Serde adapters: an `i64` of epoch milliseconds as an RFC 3339 string.
pub mod serde_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::parse_rfc3339_ms(&s).map_err(|e| D::Error::custom(format!("{e}: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_over_four_centuries() {
        for days in -146_097..146_097 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339_ms("2026-11-24T10:01:00Z"), Ok(1_795_514_460_000));
        // Same instant written with a +08:00 offset.
        assert_eq!(parse_rfc3339_ms("2026-11-24T18:01:00+08:00"), Ok(1_795_514_460_000));
        assert_eq!(parse_rfc3339_ms("2026-11-24T05:01:00-05:00"), Ok(1_795_514_460_000));
        assert_eq!(parse_rfc3339_ms("2026-11-24t10:01:00.5z"), Ok(1_795_514_460_500));
        assert_eq!(parse_rfc3339_ms("2026-11-24T10:01:00.123456Z"), Ok(1_795_514_460_123));
    }

    #[test]
    fn leap_second_maps_to_end_of_minute() {
        assert_eq!(parse_rfc3339_ms("2016-12-31T23:59:60Z"), parse_rfc3339_ms("2016-12-31T23:59:59.999Z"));
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "yesterday",
            "",
            "2026-11-24",
            "2026-11-24T10:01:00",
            "2026-11-24T10:01Z",
            "2026-11-24T10:01:00.Z",
            "2026-11-24T10:01:00+0800",
            "2026-11-24T10:01:00Zjunk",
            "2026-1-24T10:01:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), Err(TimeError::Syntax), "{bad}");
        }
        for bad in ["2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:61:00Z"] {
            assert_eq!(parse_rfc3339_ms(bad), Err(TimeError::OutOfRange), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0, 1_795_514_460_000, 1_795_514_460_007, -1, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }
        assert_eq!(format_rfc3339_ms(1_795_514_460_000), "2026-11-24T10:01:00Z");
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2024-02-29").map(format_date).as_deref(), Ok("2024-02-29"));
        assert_eq!(parse_date("2023-02-29"), Err(TimeError::OutOfRange));
        assert_eq!(parse_date("2023-2-28"), Err(TimeError::Syntax));
    }
}
