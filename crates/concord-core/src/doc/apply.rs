//! Applying op lists to a JSON state: validated, atomic (all or nothing), never panicking.
//!
//! Each op is checked against the state it meets (the state after the ops before it in its
//! list). When one fails, the ops already applied are undone with their inverses, so the
//! state is exactly as before and the error names the failing op's index.
//!
//! `add` arithmetic: when both the current value and the operand are JSON integers, the sum
//! is computed exactly and stays an integer (stored as i64, or u64 above `i64::MAX`); a sum
//! outside `i64::MIN..=u64::MAX` is an error ("integer overflow"), never a wrap or a silent
//! switch to floating point. Otherwise both are taken as f64 and the f64 sum is stored; a
//! non-finite result is an error. Integer adds commute exactly; f64 adds commute only up to
//! rounding, which is why replicas apply committed ops in seq order.

use super::ops::{Op, TextEdit};
use super::path::{DisplayPath, PathSeg};
use serde_json::{Number, Value};
use std::fmt;

/// Why an op list does not apply. Displays as `op 2: index 5 out of range at ["items"] (len 3)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApplyError {
    /// Index of the failing op in its list.
    pub index: usize,
    pub message: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}: {}", self.index, self.message)
    }
}

/// Applies `ops` to a copy of `state` and returns it; `state` is untouched either way.
pub fn apply(state: &Value, ops: &[Op]) -> Result<Value, ApplyError> {
    let mut next = state.clone();
    apply_in_place(&mut next, ops)?;
    Ok(next)
}

/// Applies `ops` to `state` atomically: on error `state` is left exactly as it was.
pub fn apply_in_place(state: &mut Value, ops: &[Op]) -> Result<(), ApplyError> {
    apply_with_inverse(state, ops).map(drop)
}

/// Like [`apply_in_place`], and returns the inverse op list: applying it to the new state
/// gives the old state back (useful for undo and for restoring versions).
pub fn apply_with_inverse(state: &mut Value, ops: &[Op]) -> Result<Vec<Op>, ApplyError> {
    let mut undo = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        match apply_op(state, op) {
            Ok(inverse) => undo.push(inverse),
            Err(message) => {
                for inverse in undo.iter().rev() {
                    let restored = apply_op(state, inverse);
                    debug_assert!(restored.is_ok(), "inverse op failed: {restored:?}");
                }
                return Err(ApplyError { index, message });
            }
        }
    }
    undo.reverse();
    Ok(undo)
}

/// Applies one op; returns its inverse.
fn apply_op(state: &mut Value, op: &Op) -> Result<Op, String> {
    match op {
        Op::Set { path, value } => set(state, path, value.clone()),
        Op::Del { path } => del(state, path),
        Op::Ins { path, value } => {
            let (list, i) = parent_list(state, path)?;
            if i > list.len() {
                return Err(out_of_range(path, i, list.len()));
            }
            list.insert(i, value.clone());
            Ok(Op::Del { path: path.clone() })
        }
        Op::Move { path, to } => {
            let (list, i) = parent_list(state, path)?;
            let len = list.len();
            if i >= len {
                return Err(out_of_range(path, i, len));
            }
            if *to >= len {
                return Err(format!(
                    "move target {to} out of range at {} (len {len})",
                    DisplayPath(&path[..path.len() - 1])
                ));
            }
            let v = list.remove(i);
            list.insert(*to, v);
            let mut back = path[..path.len() - 1].to_vec();
            back.push(PathSeg::Index(*to));
            Ok(Op::Move { path: back, to: i })
        }
        Op::Text { path, pos, edit } => text(state, path, *pos, edit),
        Op::Add { path, value } => {
            let target = walk(state, path)?;
            let Value::Number(old) = target else {
                return Err(format!(
                    "add on {} which is {}, not a number",
                    DisplayPath(path),
                    type_name(target)
                ));
            };
            let sum = add_numbers(old, value)?;
            let old = std::mem::replace(old, sum);
            Ok(Op::Set {
                path: path.clone(),
                value: Value::Number(old),
            })
        }
    }
}

fn set(state: &mut Value, path: &[PathSeg], value: Value) -> Result<Op, String> {
    let Some((last, parent_path)) = path.split_last() else {
        let old = std::mem::replace(state, value);
        return Ok(Op::Set {
            path: Vec::new(),
            value: old,
        });
    };
    let parent = walk(state, parent_path)?;
    match (parent, last) {
        (Value::Object(map), PathSeg::Key(k)) => Ok(match map.insert(k.clone(), value) {
            Some(old) => Op::Set {
                path: path.to_vec(),
                value: old,
            },
            None => Op::Del {
                path: path.to_vec(),
            },
        }),
        (Value::Array(list), PathSeg::Index(i)) => {
            let len = list.len();
            let slot = list
                .get_mut(*i)
                .ok_or_else(|| out_of_range(path, *i, len))?;
            Ok(Op::Set {
                path: path.to_vec(),
                value: std::mem::replace(slot, value),
            })
        }
        (parent, seg) => Err(wrong_container(parent_path, parent, seg)),
    }
}

fn del(state: &mut Value, path: &[PathSeg]) -> Result<Op, String> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err("cannot delete the document root".into());
    };
    let parent = walk(state, parent_path)?;
    match (parent, last) {
        (Value::Object(map), PathSeg::Key(k)) => match map.remove(k) {
            Some(old) => Ok(Op::Set {
                path: path.to_vec(),
                value: old,
            }),
            None => Err(format!("{} has no key {k:?}", DisplayPath(parent_path))),
        },
        (Value::Array(list), PathSeg::Index(i)) => {
            if *i >= list.len() {
                return Err(out_of_range(path, *i, list.len()));
            }
            Ok(Op::Ins {
                path: path.to_vec(),
                value: list.remove(*i),
            })
        }
        (parent, seg) => Err(wrong_container(parent_path, parent, seg)),
    }
}

fn text(state: &mut Value, path: &[PathSeg], pos: usize, edit: &TextEdit) -> Result<Op, String> {
    let target = walk(state, path)?;
    let Value::String(s) = target else {
        return Err(format!(
            "text op on {} which is {}, not a string",
            DisplayPath(path),
            type_name(target)
        ));
    };
    let len = s.chars().count();
    if pos > len {
        return Err(format!(
            "text position {pos} out of range at {} (length {len})",
            DisplayPath(path)
        ));
    }
    let start = byte_offset(s, pos);
    let inverse = match edit {
        TextEdit::Insert(ins) => {
            s.insert_str(start, ins);
            TextEdit::Delete(ins.chars().count())
        }
        TextEdit::Delete(n) => {
            if *n > len - pos {
                return Err(format!(
                    "text delete of {n} at {pos} out of range at {} (length {len})",
                    DisplayPath(path)
                ));
            }
            let end = start + byte_offset(&s[start..], *n);
            TextEdit::Insert(s.drain(start..end).collect())
        }
    };
    Ok(Op::Text {
        path: path.to_vec(),
        pos,
        edit: inverse,
    })
}

/// Byte offset of code point `n` in `s` (`s.len()` when `n` is the length).
fn byte_offset(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(b, _)| b)
}

/// `a + b` under the rules in the module doc.
pub fn add_numbers(a: &Number, b: &Number) -> Result<Number, String> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        let sum = x + y;
        return i64::try_from(sum)
            .map(Number::from)
            .or_else(|_| u64::try_from(sum).map(Number::from))
            .map_err(|_| format!("integer overflow adding {b} to {a}"));
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Err(format!("cannot add {b} to {a}"));
    };
    Number::from_f64(x + y).ok_or_else(|| "the sum is not a finite number".to_string())
}

/// The value at `path`, with an error naming the first step that fails.
fn walk<'a>(root: &'a mut Value, path: &[PathSeg]) -> Result<&'a mut Value, String> {
    let mut cur = root;
    for (depth, seg) in path.iter().enumerate() {
        let here = &path[..depth];
        cur = match (cur, seg) {
            (Value::Object(map), PathSeg::Key(k)) => map
                .get_mut(k)
                .ok_or_else(|| format!("{} has no key {k:?}", DisplayPath(here)))?,
            (Value::Array(list), PathSeg::Index(i)) => {
                let len = list.len();
                list.get_mut(*i)
                    .ok_or_else(|| out_of_range(&path[..=depth], *i, len))?
            }
            (other, seg) => return Err(wrong_container(here, other, seg)),
        };
    }
    Ok(cur)
}

/// The list holding `path`'s last step, and that step's index.
fn parent_list<'a>(
    state: &'a mut Value,
    path: &[PathSeg],
) -> Result<(&'a mut Vec<Value>, usize), String> {
    let Some((PathSeg::Index(i), parent_path)) = path.split_last() else {
        return Err("path must end with a list index".into());
    };
    match walk(state, parent_path)? {
        Value::Array(list) => Ok((list, *i)),
        other => Err(format!(
            "{} is {}, not a list",
            DisplayPath(parent_path),
            type_name(other)
        )),
    }
}

fn out_of_range(path: &[PathSeg], i: usize, len: usize) -> String {
    format!(
        "index {i} out of range at {} (len {len})",
        DisplayPath(&path[..path.len().saturating_sub(1)])
    )
}

fn wrong_container(at: &[PathSeg], v: &Value, seg: &PathSeg) -> String {
    let want = match seg {
        PathSeg::Key(_) => "an object",
        PathSeg::Index(_) => "a list",
    };
    format!(
        "{} is {}, not {want} (path step {seg})",
        DisplayPath(at),
        type_name(v)
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
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

    fn run(state: Value, list: Value) -> Result<Value, String> {
        apply(&state, &ops(list)).map_err(|e| e.to_string())
    }

    #[test]
    fn applies_every_kind() {
        let s = json!({"title":"x","tags":["a","b","c"],"items":[1,2,3,4],"body":"héllo wörld","likes":1});
        let out = run(
            s,
            json!([
                {"op":"set","path":["title"],"value":"y"},
                {"op":"set","path":["new"],"value":{}},
                {"op":"set","path":["tags",0],"value":"A"},
                {"op":"del","path":["tags",1]},
                {"op":"ins","path":["items",4],"value":5},
                {"op":"move","path":["items",0],"to":4},
                {"op":"text","path":["body"],"pos":5,"insert":"!"},
                {"op":"text","path":["body"],"pos":1,"delete":2},
                {"op":"add","path":["likes"],"value":2},
                {"op":"del","path":["title"]}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"new":{},"tags":["A","c"],"items":[2,3,4,5,1],"body":"hlo! wörld","likes":3})
        );
    }

    #[test]
    fn root_set_replaces_the_document() {
        assert_eq!(
            run(json!({"a":1}), json!([{"op":"set","path":[],"value":[1]}])).unwrap(),
            json!([1])
        );
    }

    #[test]
    fn text_counts_code_points() {
        let out = run(
            json!({"t":"a😀b"}),
            json!([{"op":"text","path":["t"],"pos":2,"insert":"é"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"t":"a😀éb"}));
        let out = run(
            json!({"t":"a😀b"}),
            json!([{"op":"text","path":["t"],"pos":1,"delete":1}]),
        )
        .unwrap();
        assert_eq!(out, json!({"t":"ab"}));
    }

    #[test]
    fn errors_name_the_op_and_leave_state_untouched() {
        let s = json!({"a":{"b":[1,2]},"s":"abc","n":1,"big":9223372036854775807i64});
        let cases = [
            (
                json!([{"op":"set","path":["s","x"],"value":1}]),
                "op 0: [\"s\"] is a string, not an object (path step \"x\")",
            ),
            (
                json!([{"op":"del","path":["zz"]}]),
                "op 0: [] has no key \"zz\"",
            ),
            (
                json!([{"op":"set","path":["a","b",2],"value":1}]),
                "op 0: index 2 out of range at [\"a\",\"b\"] (len 2)",
            ),
            (
                json!([{"op":"ins","path":["a","b",3],"value":1}]),
                "op 0: index 3 out of range at [\"a\",\"b\"] (len 2)",
            ),
            (
                json!([{"op":"move","path":["a","b",0],"to":2}]),
                "op 0: move target 2 out of range at [\"a\",\"b\"] (len 2)",
            ),
            (
                json!([{"op":"text","path":["n"],"pos":0,"insert":"x"}]),
                "op 0: text op on [\"n\"] which is a number, not a string",
            ),
            (
                json!([{"op":"text","path":["s"],"pos":4,"insert":"x"}]),
                "op 0: text position 4 out of range at [\"s\"] (length 3)",
            ),
            (
                json!([{"op":"text","path":["s"],"pos":1,"delete":3}]),
                "op 0: text delete of 3 at 1 out of range at [\"s\"] (length 3)",
            ),
            (
                json!([{"op":"add","path":["s"],"value":1}]),
                "op 0: add on [\"s\"] which is a string, not a number",
            ),
            (
                json!([{"op":"add","path":["big"],"value":-9223372036854775807i64},{"op":"add","path":["big"],"value":-9223372036854775807i64},{"op":"add","path":["big"],"value":-2}]),
                "op 2: integer overflow adding -2 to -9223372036854775807",
            ),
            (
                json!([{"op":"add","path":["n"],"value":1.7e308},{"op":"add","path":["n"],"value":1.7e308}]),
                "op 1: the sum is not a finite number",
            ),
            (
                json!([{"op":"set","path":["a","b",0],"value":9},{"op":"del","path":["a","b",5]}]),
                "op 1: index 5 out of range at [\"a\",\"b\"] (len 2)",
            ),
            (
                json!([{"op":"move","path":["a",0],"to":0}]),
                "op 0: [\"a\"] is an object, not a list",
            ),
        ];
        for (list, want) in cases {
            let mut state = s.clone();
            let err = apply_in_place(&mut state, &ops(list)).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert_eq!(state, s, "state changed by a failed list");
        }
    }

    #[test]
    fn add_keeps_integers_integral() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert_eq!(
            add_numbers(&n(json!(2)), &n(json!(3))).unwrap(),
            n(json!(5))
        );
        assert!(add_numbers(&n(json!(2)), &n(json!(3))).unwrap().is_i64());
        assert_eq!(
            add_numbers(&n(json!(i64::MAX)), &n(json!(1))).unwrap(),
            n(json!(9223372036854775808u64))
        );
        assert!(add_numbers(&n(json!(u64::MAX)), &n(json!(1))).is_err());
        assert!(add_numbers(&n(json!(i64::MIN)), &n(json!(-1))).is_err());
        assert_eq!(
            add_numbers(&n(json!(2)), &n(json!(0.5))).unwrap(),
            n(json!(2.5))
        );
        assert!(add_numbers(&n(json!(2.5)), &n(json!(0.5)))
            .unwrap()
            .is_f64());
    }

    #[test]
    fn inverse_restores_the_state() {
        let s = json!({"a":{"b":[1,2,3]},"s":"héllo","n":1});
        let list = ops(json!([
            {"op":"set","path":["a","c"],"value":1},
            {"op":"set","path":["a","b",1],"value":"x"},
            {"op":"del","path":["a","b",0]},
            {"op":"ins","path":["a","b",0],"value":7},
            {"op":"move","path":["a","b",0],"to":2},
            {"op":"text","path":["s"],"pos":1,"delete":3},
            {"op":"text","path":["s"],"pos":0,"insert":"ü"},
            {"op":"add","path":["n"],"value":0.5},
            {"op":"del","path":["s"]},
            {"op":"set","path":[],"value":{"z":[s.clone()]}}
        ]));
        let mut state = s.clone();
        let inverse = apply_with_inverse(&mut state, &list).unwrap();
        assert_eq!(state, json!({"z":[s.clone()]}));
        apply_in_place(&mut state, &inverse).unwrap();
        assert_eq!(state, s);
    }
}
