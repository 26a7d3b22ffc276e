//! Hand-written JSON for the hot path: numbers held as fixed-point integers
//! are written digit by digit into a reused buffer, with no allocation and
//! no float formatting. Also the damage done to the few records that are
//! deliberately broken.

use termwatch_telemetry::time::{MS_PER_DAY, civil_from_days};

const DIGITS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends `v / 10^decimals` with exactly `decimals` digits after the point
/// (`decimals` 1-3), e.g. `(1202, 2)` → `12.02`, `(-5, 1)` → `-0.5`.
pub fn push_fixed(out: &mut Vec<u8>, v: i64, decimals: u32) {
    if v < 0 {
        out.push(b'-');
    }
    let a = v.unsigned_abs();
    let scale = 10u64.pow(decimals);
    push_u64(out, a / scale);
    out.push(b'.');
    let mut frac = a % scale;
    let mut div = scale / 10;
    while div > 0 {
        out.push(b'0' + (frac / div) as u8);
        frac %= div;
        div /= 10;
    }
}

fn push2(out: &mut Vec<u8>, v: u32) {
    let d = (v % 100) as usize * 2;
    out.extend_from_slice(&DIGITS[d..d + 2]);
}

/// Appends `"YYYY-MM-DDTHH:MM:SS[.mmm]Z"` (with the quotes).
pub fn push_rfc3339(out: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days as i32);
    let secs = (in_day / 1000) as u32;
    let milli = (in_day % 1000) as u32;
    out.push(b'"');
    push2(out, (y / 100) as u32);
    push2(out, (y % 100) as u32);
    out.push(b'-');
    push2(out, mo);
    out.push(b'-');
    push2(out, d);
    out.push(b'T');
    push2(out, secs / 3600);
    out.push(b':');
    push2(out, secs / 60 % 60);
    out.push(b':');
    push2(out, secs % 60);
    if milli != 0 {
        out.push(b'.');
        out.push(b'0' + (milli / 100) as u8);
        push2(out, milli % 100);
    }
    out.extend_from_slice(b"Z\"");
}

/// Where a field's value lies in a flat JSON object we wrote:
/// (start of `"key":` including a leading comma if any, start of value, end of value).
fn find_field(buf: &[u8], key: &str) -> Option<(usize, usize, usize)> {
    let mut pat = Vec::with_capacity(key.len() + 3);
    pat.push(b'"');
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(b"\":");
    let at = buf.windows(pat.len()).position(|w| w == pat.as_slice())?;
    let value = at + pat.len();
    let end = if buf.get(value) == Some(&b'"') {
        // Our strings carry no escapes.
        value + 1 + buf[value + 1..].iter().position(|&c| c == b'"')? + 1
    } else {
        value + buf[value..].iter().position(|&c| c == b',' || c == b'}')?
    };
    let field_start = if at > 0 && buf[at - 1] == b',' { at - 1 } else { at };
    Some((field_start, value, end))
}

/// Replaces a field's value; false when the field is absent.
pub fn replace_value(buf: &mut Vec<u8>, key: &str, value: &[u8]) -> bool {
    match find_field(buf, key) {
        Some((_, v, e)) => {
            buf.splice(v..e, value.iter().copied());
            true
        }
        None => false,
    }
}

/// Puts a field's value in quotes (a number sent as a string); false when
/// the field is absent or already a string.
pub fn quote_value(buf: &mut Vec<u8>, key: &str) -> bool {
    match find_field(buf, key) {
        Some((_, v, e)) if buf.get(v) != Some(&b'"') && buf.get(v) != Some(&b'n') => {
            buf.insert(e, b'"');
            buf.insert(v, b'"');
            true
        }
        _ => false,
    }
}

/// Removes a field with its separating comma; false when absent.
pub fn remove_field(buf: &mut Vec<u8>, key: &str) -> bool {
    match find_field(buf, key) {
        Some((s, _, e)) => {
            if buf[s] == b',' {
                buf.drain(s..e);
            } else if buf.get(e) == Some(&b',') {
                buf.drain(s..=e);
            } else {
                buf.drain(s..e);
            }
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn integers() {
        for v in [0u64, 7, 10, 99, 100, 101, 12345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(s(|b| push_u64(b, v)), v.to_string());
        }
        assert_eq!(s(|b| push_i64(b, -42)), "-42");
    }

    #[test]
    fn fixed_point() {
        assert_eq!(s(|b| push_fixed(b, 1202, 2)), "12.02");
        assert_eq!(s(|b| push_fixed(b, 5, 3)), "0.005");
        assert_eq!(s(|b| push_fixed(b, -875, 1)), "-87.5");
        assert_eq!(s(|b| push_fixed(b, -5, 1)), "-0.5");
        assert_eq!(s(|b| push_fixed(b, 0, 1)), "0.0");
        assert_eq!(s(|b| push_fixed(b, 100000, 2)), "1000.00");
    }

    #[test]
    fn timestamps_match_the_contract_formatter() {
        for ms in [0i64, 1_795_514_460_000, 1_795_514_460_007, 1_788_220_799_999, 4_102_444_800_000] {
            let want = format!("\"{}\"", termwatch_telemetry::time::format_rfc3339_ms(ms));
            assert_eq!(s(|b| push_rfc3339(b, ms)), want);
        }
    }

    #[test]
    fn field_surgery() {
        let mut b = br#"{"terminal_id":"T-1","ts":"2026-09-01T00:00:00Z","card_reads":7,"x":null}"#.to_vec();
        assert!(replace_value(&mut b, "card_reads", b"-3"));
        assert!(quote_value(&mut b, "card_reads"));
        assert!(!quote_value(&mut b, "x"));
        assert!(remove_field(&mut b, "terminal_id"));
        assert!(remove_field(&mut b, "x"));
        assert!(!remove_field(&mut b, "absent"));
        assert_eq!(String::from_utf8(b).expect("ascii"), r#"{"ts":"2026-09-01T00:00:00Z","card_reads":"-3"}"#);
    }
}
