//! Reading back JSON the server wrote (snapshots, stored op lists) at any nesting depth.
//!
//! serde_json refuses input nested deeper than 128 levels by default, which is right for
//! untrusted input but turned a document that had grown deep into a room that could never be
//! loaded again. What the server wrote itself is read with the recursion limit off, after an
//! iterative scan has checked that the nesting stays below [`MAX_STORED_DEPTH`] (so the
//! recursive parser cannot exhaust the stack).

use serde::Deserialize;
use serde_json::Value;

/// Deepest nesting read back from the store. Far above anything the server ever wrote (a path
/// of 64 steps holding a value of 64 levels) and far below what the stack of a worker thread
/// holds.
pub const MAX_STORED_DEPTH: usize = 1024;

/// Why stored JSON could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

/// Nesting depth of JSON text (brackets outside strings), without parsing it.
pub fn text_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses stored JSON at any depth up to [`MAX_STORED_DEPTH`].
pub fn read_stored(text: &str) -> Result<Value, ReadError> {
    let depth = text_depth(text);
    if depth > MAX_STORED_DEPTH {
        return Err(ReadError(format!(
            "nested {depth} levels deep (more than {MAX_STORED_DEPTH})"
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de).map_err(|e| ReadError(e.to_string()))?;
    de.end().map_err(|e| ReadError(e.to_string()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!(
            "{}\"x\\\"]\"{}",
            "{\"a\":[".repeat(levels / 2),
            "]}".repeat(levels / 2)
        )
    }

    #[test]
    fn reads_what_the_default_parser_refuses() {
        let text = nested(300);
        assert!(serde_json::from_str::<Value>(&text).is_err());
        assert_eq!(text_depth(&text), 300);
        let v = read_stored(&text).unwrap();
        assert_eq!(crate::doc::measure::depth(&v), 300);
    }

    #[test]
    fn refuses_absurd_depth_and_garbage() {
        assert!(read_stored(&nested(MAX_STORED_DEPTH + 2)).is_err());
        assert!(read_stored("{\"a\":").is_err());
        assert!(read_stored("{} x").is_err());
    }
}
