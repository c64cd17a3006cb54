//! Measuring documents without serialising them: nesting depth, the depth an op list can give
//! a document, and an atomic apply that also returns the change in canonical JSON bytes.
//!
//! **Depth** counts nested containers: a scalar is 0, `{}` and `[]` are 1, `{"a":[1]}` is 2 —
//! the same count as the protocol's "at most 64 levels" of a value. The only ops that add
//! structure are `set` and `ins`, and they put their value at a fixed depth (`move` stays in its
//! list), so a document whose every `set`/`ins` had `path.len() + depth(value) ≤ D` is never
//! deeper than `D`: checking each op ([`op_list_depth`]) bounds the resulting document.
//!
//! **Size** is the length of the canonical JSON text ([`canonical_len`]). [`apply_measured`]
//! computes the exact change from each op, its inverse and the container it touched, so a
//! caller keeps the size of a document up to date in O(size of the ops), not of the document.

use super::apply::{apply_with_inverse, ApplyError};
use super::hash::{canonical_len, canonical_number, canonical_str_len};
use super::ops::{Op, TextEdit};
use super::path::PathSeg;
use serde_json::Value;

/// Nesting depth of `v` (see the module doc); iterative, so any depth is measured safely.
pub fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((node, above)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match node {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(above + 1);
        stack.extend(children.map(|c| (c, above + 1)));
    }
    deepest
}

/// The depth of the document part an op writes: `path.len() + depth(value)` for `set` and
/// `ins`, 0 for ops that add no structure.
pub fn op_depth(op: &Op) -> usize {
    match op {
        Op::Set { path, value } | Op::Ins { path, value } => path.len() + depth(value),
        _ => 0,
    }
}

/// The deepest [`op_depth`] of a list: a document that was within a depth limit stays within it
/// after the list unless this exceeds the limit.
pub fn op_list_depth(ops: &[Op]) -> usize {
    ops.iter().map(op_depth).max().unwrap_or(0)
}

/// Bytes of the strings that the `text` ops of a list edit, measured on `state` before the list:
/// applying a text op scans its string (positions count code points), so this is what a list
/// of text ops costs to apply, apart from a small constant per op.
pub fn text_scan_bytes(state: &Value, ops: &[Op]) -> u64 {
    ops.iter()
        .filter_map(|op| match op {
            Op::Text { path, .. } => match get(state, path) {
                Some(Value::String(s)) => Some(s.len() as u64),
                _ => None,
            },
            _ => None,
        })
        .fold(0u64, u64::saturating_add)
}

/// Like [`apply_with_inverse`](super::apply_with_inverse) (atomic: on error `state` is left as
/// it was), and also returns how many bytes the canonical JSON of `state` grew (negative:
/// shrank).
pub fn apply_measured(state: &mut Value, ops: &[Op]) -> Result<(Vec<Op>, i64), ApplyError> {
    let mut undo: Vec<Op> = Vec::with_capacity(ops.len());
    let mut delta = 0i64;
    for (index, op) in ops.iter().enumerate() {
        match apply_with_inverse(state, std::slice::from_ref(op)) {
            Ok(mut inverse) => {
                let inverse = inverse.pop().expect("one inverse per op");
                delta += size_change(state, op, &inverse);
                undo.push(inverse);
            }
            Err(e) => {
                for inverse in undo.iter().rev() {
                    let restored = apply_with_inverse(state, std::slice::from_ref(inverse));
                    debug_assert!(restored.is_ok(), "inverse op failed: {restored:?}");
                }
                return Err(ApplyError {
                    index,
                    message: e.message,
                });
            }
        }
    }
    undo.reverse();
    Ok((undo, delta))
}

fn len(v: &Value) -> i64 {
    canonical_len(v) as i64
}

/// The value at `path`, if there is one.
fn get<'a>(state: &'a Value, path: &[PathSeg]) -> Option<&'a Value> {
    path.iter().try_fold(state, |cur, seg| match (cur, seg) {
        (Value::Object(m), PathSeg::Key(k)) => m.get(k),
        (Value::Array(l), PathSeg::Index(i)) => l.get(*i),
        _ => None,
    })
}

/// Entries of the container holding `path`'s last step, after the op.
fn siblings(state: &Value, path: &[PathSeg]) -> usize {
    match path.split_last().and_then(|(_, parent)| get(state, parent)) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(l)) => l.len(),
        _ => 0,
    }
}

/// Bytes of a key or list-element entry besides its value: `"key":` and the separating comma
/// (when the container has another entry).
fn entry_overhead(last: Option<&PathSeg>, others: bool) -> i64 {
    let comma = i64::from(others);
    match last {
        Some(PathSeg::Key(k)) => canonical_str_len(k) as i64 + 1 + comma,
        _ => comma,
    }
}

/// The change in canonical bytes made by one applied op (`state` is after it).
fn size_change(state: &Value, op: &Op, inverse: &Op) -> i64 {
    match (op, inverse) {
        // Replaced a value (key, list element or the root).
        (Op::Set { value, .. }, Op::Set { value: old, .. }) => len(value) - len(old),
        // Created a key.
        (Op::Set { path, value }, _) => {
            len(value) + entry_overhead(path.last(), siblings(state, path) > 1)
        }
        (Op::Del { path }, Op::Set { value: old, .. } | Op::Ins { value: old, .. }) => {
            -(len(old) + entry_overhead(path.last(), siblings(state, path) > 0))
        }
        (Op::Ins { path, value }, _) => {
            len(value) + entry_overhead(None, siblings(state, path) > 1)
        }
        (
            Op::Text {
                edit: TextEdit::Insert(s),
                ..
            },
            _,
        ) => canonical_str_len(s) as i64 - 2,
        (
            Op::Text { .. },
            Op::Text {
                edit: TextEdit::Insert(removed),
                ..
            },
        ) => 2 - canonical_str_len(removed) as i64,
        (Op::Add { path, .. }, Op::Set { value: old, .. }) => match get(state, path) {
            Some(Value::Number(new)) => canonical_number(new).len() as i64 - len(old),
            _ => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::ops::{decode_ops, Limits};
    use serde_json::json;

    fn ops(v: Value) -> Vec<Op> {
        decode_ops(&v, &Limits::default()).unwrap()
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a":[1,{"b":[]}],"c":2})), 4);
        let list = ops(json!([
            {"op":"set","path":["a"],"value":{"b":{}}},
            {"op":"ins","path":["l",0],"value":1},
            {"op":"del","path":["x","y","z"]}
        ]));
        assert_eq!(op_list_depth(&list), 3);
        let text = ops(json!([
            {"op":"text","path":["s"],"pos":0,"insert":"x"},
            {"op":"text","path":["s"],"pos":0,"delete":1},
            {"op":"text","path":["missing"],"pos":0,"insert":"x"}
        ]));
        assert_eq!(text_scan_bytes(&json!({"s":"héllo"}), &text), 12);
    }

    #[test]
    fn measured_size_is_exact() {
        let mut s = json!({"t":"a\"b","l":[1,2],"n":9});
        let cases = [
            json!([{"op":"set","path":["k"],"value":{"x":[1,"é\n"]}}]),
            json!([{"op":"set","path":["k"],"value":true},{"op":"del","path":["t"]}]),
            json!([{"op":"ins","path":["l",0],"value":"z"},{"op":"del","path":["l",2]}]),
            json!([{"op":"del","path":["l",0]},{"op":"del","path":["l",0]}]),
            json!([{"op":"ins","path":["l",0],"value":[]},{"op":"move","path":["l",0],"to":0}]),
            json!([{"op":"set","path":["s"],"value":"ab"},{"op":"text","path":["s"],"pos":1,"insert":"\"\u{1}x"}]),
            json!([{"op":"text","path":["s"],"pos":0,"delete":3}]),
            json!([{"op":"add","path":["n"],"value":1000},{"op":"add","path":["n"],"value":0.5}]),
            json!([{"op":"set","path":["l",0],"value":{"deep":{"er":1}}}]),
            json!([{"op":"set","path":[],"value":[1]}]),
            json!([{"op":"set","path":[],"value":{}},{"op":"set","path":["only"],"value":1},{"op":"del","path":["only"]}]),
        ];
        for case in cases {
            let before = canonical_len(&s) as i64;
            let (inverse, delta) = apply_measured(&mut s, &ops(case.clone())).unwrap();
            assert_eq!(before + delta, canonical_len(&s) as i64, "{case}");
            let (_, back) = apply_measured(&mut s, &inverse).unwrap();
            assert_eq!(delta + back, 0, "inverse of {case}");
            apply_measured(&mut s, &ops(case)).unwrap();
        }
    }

    #[test]
    fn a_failing_list_changes_nothing() {
        let mut s = json!({"a":1});
        let list = ops(json!([{"op":"set","path":["b"],"value":2},{"op":"del","path":["zz"]}]));
        let err = apply_measured(&mut s, &list).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(s, json!({"a":1}));
    }
}
