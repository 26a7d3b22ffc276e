//! A fast reader for the common shape of a telemetry record: one flat JSON
//! object of scalars, strings without escapes, plain decimal numbers.
//!
//! It is a serde `MapAccess`, so the record visitor of [`crate::decode`], and
//! with it every rule of the contract, is the same code whichever reader
//! feeds it. It only reads what it can read exactly as serde_json would, and
//! gives up (returns [`Unusual`]) on anything else: an escape, a nested
//! value, an exponent, a number with more digits than it can convert
//! exactly, a syntax error, or any rejection by the visitor. The caller then
//! decodes the record again with serde_json, which gives the precise
//! rejection or the value. Valid records almost never take that path.
//!
//! Numbers: serde_json turns `12.034` into `12034 / 10^3` in `f64` (one
//! division of two exactly representable values, so correctly rounded), and
//! so does this reader, only while the significand is below 2^53 and there
//! are at most 22 digits after the point; beyond that it gives up. Integers
//! are visited as `u64` (`i64` when negative), as serde_json visits them;
//! `-0`, which serde_json makes a float, is given up on.

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

/// This reader cannot read the record exactly as serde_json would.
#[derive(Debug)]
pub(crate) struct Unusual;

impl std::fmt::Display for Unusual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a plain flat record")
    }
}

impl std::error::Error for Unusual {}

impl de::Error for Unusual {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unusual
    }
}

/// The high bit of every byte of `w` that is a quote, a backslash or a
/// control character (and possibly of bytes above the first such one).
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// Powers of ten exactly representable in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

#[derive(Debug, Clone, Copy)]
enum Scalar<'de> {
    Null,
    Bool(bool),
    Str(&'de str),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A cursor over one record.
pub(crate) struct Flat<'de> {
    text: &'de str,
    pos: usize,
    /// No member read yet: `}` may follow at once.
    first: bool,
}

impl<'de> Flat<'de> {
    /// Positioned inside the object, after its `{`; `None` if the record
    /// does not start with one.
    pub(crate) fn open(text: &'de str) -> Option<Flat<'de>> {
        let mut f = Flat { text, pos: 0, first: true };
        f.skip_ws();
        (f.peek() == Some(b'{')).then(|| {
            f.pos += 1;
            f
        })
    }

    /// After the object: only whitespace may follow.
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Unusual> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Unusual)
        }
    }

    /// A string without escapes or control characters, after its opening quote.
    fn string(&mut self) -> Result<&'de str, Unusual> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut i = start;
        // Eight bytes at a time (as serde_json scans): strings are short, so
        // a search with set-up costs per call does not pay.
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let flagged = special(u64::from_le_bytes(word));
            if flagged != 0 {
                // The lowest flag is exact (a borrow only runs upwards).
                i += (flagged.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        while let Some(&b) = bytes.get(i) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            return Err(Unusual);
        }
        self.pos = i + 1;
        // A quote is ASCII, so both ends are character boundaries.
        self.text.get(start..i).ok_or(Unusual)
    }

    fn literal(&mut self, word: &str, value: Scalar<'de>) -> Result<Scalar<'de>, Unusual> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(Unusual)
        }
    }

    fn number(&mut self) -> Result<Scalar<'de>, Unusual> {
        let bytes = self.text.as_bytes();
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let (mut significand, mut digits) = (0u64, 0u32);
        let int_start = self.pos;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            significand = significand * 10 + u64::from(d - b'0');
            digits += 1;
            self.pos += 1;
            if digits > 18 {
                return Err(Unusual);
            }
        }
        let int_len = self.pos - int_start;
        // JSON: at least one digit, and no leading zero before another digit.
        if int_len == 0 || (int_len > 1 && bytes[int_start] == b'0') {
            return Err(Unusual);
        }
        let mut fraction = 0usize;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                significand = significand * 10 + u64::from(d - b'0');
                digits += 1;
                fraction += 1;
                self.pos += 1;
                if digits > 18 {
                    return Err(Unusual);
                }
            }
            if fraction == 0 {
                return Err(Unusual);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return Err(Unusual);
        }
        if fraction == 0 {
            return match (negative, significand) {
                (false, v) => Ok(Scalar::U64(v)),
                // serde_json reads `-0` as a float: leave it to serde_json.
                (true, 0) => Err(Unusual),
                (true, v) => i64::try_from(v).map(|v| Scalar::I64(-v)).map_err(|_| Unusual),
            };
        }
        if significand >= 1 << 53 || fraction >= POW10.len() {
            return Err(Unusual);
        }
        let f = significand as f64 / POW10[fraction];
        Ok(Scalar::F64(if negative { -f } else { f }))
    }

    fn scalar(&mut self) -> Result<Scalar<'de>, Unusual> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Scalar::Str)
            }
            Some(b'n') => self.literal("null", Scalar::Null),
            Some(b't') => self.literal("true", Scalar::Bool(true)),
            Some(b'f') => self.literal("false", Scalar::Bool(false)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Unusual),
        }
    }
}

impl<'de> MapAccess<'de> for &mut Flat<'de> {
    type Error = Unusual;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Unusual> {
        self.skip_ws();
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !self.first => {
                self.pos += 1;
                self.skip_ws();
            }
            Some(b'"') if self.first => {}
            _ => return Err(Unusual),
        }
        self.first = false;
        self.expect(b'"')?;
        let key = self.string()?;
        seed.deserialize(Value(Scalar::Str(key))).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unusual> {
        self.expect(b':')?;
        let v = self.scalar()?;
        seed.deserialize(Value(v))
    }
}

/// One scalar, handed to whatever the visitor asks for, as serde_json hands it.
struct Value<'de>(Scalar<'de>);

impl<'de> de::Deserializer<'de> for Value<'de> {
    type Error = Unusual;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unusual> {
        match self.0 {
            Scalar::Null => visitor.visit_unit(),
            Scalar::Bool(b) => visitor.visit_bool(b),
            Scalar::Str(s) => visitor.visit_borrowed_str(s),
            Scalar::U64(v) => visitor.visit_u64(v),
            Scalar::I64(v) => visitor.visit_i64(v),
            Scalar::F64(v) => visitor.visit_f64(v),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unusual> {
        match self.0 {
            Scalar::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(s: &str) -> Option<String> {
        let mut f = Flat { text: s, pos: 0, first: true };
        let v = f.scalar().ok()?;
        (f.pos == s.len()).then(|| format!("{v:?}"))
    }

    #[test]
    fn numbers_are_read_only_when_exact() {
        assert_eq!(scalar("12").as_deref(), Some("U64(12)"));
        assert_eq!(scalar("-72").as_deref(), Some("I64(-72)"));
        assert_eq!(scalar("12.5").as_deref(), Some("F64(12.5)"));
        assert_eq!(scalar("-0.25").as_deref(), Some("F64(-0.25)"));
        assert_eq!(scalar("0.1").as_deref(), Some(format!("F64({:?})", 0.1f64)).as_deref());
        // What serde_json reads differently, or not at all: given up on.
        for unusual in ["-0", "01", "1.", ".5", "1e3", "1E-2", "-", "1234567890123456789", "9007199254740993.0"] {
            assert_eq!(scalar(unusual), None, "{unusual}");
        }
    }

    #[test]
    fn strings_with_escapes_or_control_characters_are_given_up_on() {
        assert_eq!(scalar(r#""T-1""#).as_deref(), Some(r#"Str("T-1")"#));
        assert_eq!(scalar(r#""a\"b""#), None);
        assert_eq!(scalar("\"a\tb\""), None);
        assert_eq!(scalar(r#""unclosed"#), None);
        // Found wherever they sit in an eight-byte word, or after the last whole one.
        for n in 0..20 {
            let plain = "x".repeat(n);
            assert_eq!(scalar(&format!("\"{plain}\"")), Some(format!("Str({plain:?})")), "{n}");
            for bad in ['\\', '\u{1f}', '\n'] {
                assert_eq!(scalar(&format!("\"{plain}{bad}yy\"")), None, "{n} {bad:?}");
            }
        }
        assert_eq!(scalar("\"caf\u{e9} \u{1F600}\""), Some(format!("Str({:?})", "caf\u{e9} \u{1F600}")));
    }
}
