//! The canonical form of a doc state and its hash, identical on every replica.
//!
//! **Canonical JSON** (RFC 8785 "JCS", plus exact integers):
//! - no whitespace; `null`, `true`, `false` as usual;
//! - objects: members sorted by key, comparing keys as sequences of UTF-16 code units (what
//!   JavaScript's default `sort()` does); arrays in order;
//! - strings: `"` and `\` escaped as `\"` and `\\`; U+0008, U+0009, U+000A, U+000C, U+000D as
//!   `\b`, `\t`, `\n`, `\f`, `\r`; every other code point below U+0020 as `\u00xx` (lowercase
//!   hex); everything else as raw UTF-8 (this is `JSON.stringify`'s output);
//! - numbers: a JSON integer (held as i64/u64) is written as its exact decimal digits; any
//!   other number is the f64 written as ECMAScript `Number.prototype.toString` does: the
//!   shortest digits that round-trip, plain notation for 1e-7 < |x| < 1e21, otherwise
//!   `d.ddde±x`; `-0` is `0`. So `4`, `4.0` and `40e-1` are all `4`, and a JavaScript
//!   replica gets the same text from `JSON.stringify` with sorted keys, as long as its integers
//!   stay within ±2^53.
//!
//! **State hash**: SHA-256 of the canonical JSON's UTF-8 bytes; the first 16 bytes of the
//! digest as 32 lowercase hex characters.

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// Somewhere canonical JSON text is written to.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }
}

/// Counts the bytes of canonical JSON instead of keeping them.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, s: &str) {
        self.0 += s.len();
    }
}

/// The length in bytes of the canonical JSON text of `v`, without building it.
pub fn canonical_len(v: &Value) -> usize {
    let mut n = Counter(0);
    write_value(v, &mut n);
    n.0
}

/// The length in bytes of the canonical JSON string literal of `s` (quotes included).
pub fn canonical_str_len(s: &str) -> usize {
    let mut n = Counter(0);
    write_string(s, &mut n);
    n.0
}

/// The canonical JSON text of `v`.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(v, &mut out);
    out
}

/// The state hash of `v`: 32 lowercase hex characters.
pub fn state_hash(v: &Value) -> String {
    let mut hasher = Sha256::new();
    write_value(v, &mut hasher);
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_value(v: &Value, out: &mut impl Sink) {
    match v {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => out.put(&canonical_number(n)),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.put("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_value(item, out);
            }
            out.put("]");
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.put("{");
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_string(k, out);
                out.put(":");
                write_value(item, out);
            }
            out.put("}");
        }
    }
}

fn write_string(s: &str, out: &mut impl Sink) {
    out.put("\"");
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\t' => "\\t",
            '\n' => "\\n",
            '\u{c}' => "\\f",
            '\r' => "\\r",
            c if c < ' ' => "",
            _ => continue,
        };
        out.put(&s[start..i]);
        if escaped.is_empty() {
            out.put(&format!("\\u{:04x}", c as u32));
        } else {
            out.put(escaped);
        }
        start = i + c.len_utf8();
    }
    out.put(&s[start..]);
    out.put("\"");
}

/// The canonical text of a number (see the module doc).
pub fn canonical_number(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) => js_number(f),
        None => n.to_string(),
    }
}

/// ECMAScript `Number::toString(x)` for a finite f64.
fn js_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".into();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // Rust's `{:e}` prints the shortest round-tripping digits: "d.ddde<exp>".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e_sign = if e >= 0 { "+" } else { "-" };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{e_sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{e_sign}{}", e.abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_text() {
        let v = json!({"b":[1,2.5,{"z":null,"a":true}],"a":"x\"\\\n\u{1}é😀","\u{e000}":1,"😀":2});
        assert_eq!(
            canonical_json(&v),
            "{\"a\":\"x\\\"\\\\\\n\\u0001é😀\",\"b\":[1,2.5,{\"a\":true,\"z\":null}],\"😀\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn numbers_follow_ecmascript() {
        let cases: [(f64, &str); 14] = [
            (4.0, "4"),
            (-0.0, "0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789.125, "123456789.125"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-1234.5e30, "-1.2345e+33"),
        ];
        for (x, want) in cases {
            assert_eq!(js_number(x), want, "{x:e}");
        }
        assert_eq!(
            canonical_number(&Number::from(u64::MAX)),
            "18446744073709551615"
        );
        assert_eq!(canonical_number(&Number::from(-7i64)), "-7");
    }

    #[test]
    fn equal_states_hash_equal() {
        let a: Value = serde_json::from_str(r#"{"x":4.0,"y":[1,{"b":2,"a":1}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y": [1, {"a":1, "b":2}], "x": 4 }"#).unwrap();
        assert_eq!(state_hash(&a), state_hash(&b));
        assert_eq!(state_hash(&a).len(), 32);
        assert_ne!(state_hash(&a), state_hash(&json!({"x":5})));
        // sha256("null") = 74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b
        assert_eq!(state_hash(&Value::Null), "74234e98afe7498fb5daf1f36ac2d78a");
    }
}
