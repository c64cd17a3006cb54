//! The doc op model and its wire form: decoding with precise, indexed errors; serde both ways.
//!
//! Wire shapes (protocol v1, "Doc operations"):
//!
//! ```text
//! {"op":"set","path":[...],"value":<json>}      set a map key / replace a list element / [] = whole doc
//! {"op":"del","path":[...]}                     delete a map key or a list element
//! {"op":"ins","path":[...,i],"value":<json>}    insert into a list at i (i = len appends)
//! {"op":"move","path":[...,i],"to":j}           move element i so that it ends at index j
//! {"op":"text","path":[...],"pos":p,"insert":s} insert s into a string at code point p
//! {"op":"text","path":[...],"pos":p,"delete":n} delete n code points at p
//! {"op":"add","path":[...],"value":<number>}    add to a number
//! ```
//!
//! Unknown fields are ignored, like everywhere in the protocol.

use super::path::{Path, PathSeg};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use std::fmt;

/// One doc operation. Paths are relative to the state the op applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Sets a map key (creating it) or replaces a list element; the empty path replaces the doc.
    Set { path: Path, value: Value },
    /// Deletes a map key or a list element.
    Del { path: Path },
    /// Inserts into the list at `path[..len-1]` at index `path[len-1]` (= len appends).
    Ins { path: Path, value: Value },
    /// Moves list element `path[len-1]` so that it ends at index `to` (remove, then insert).
    Move { path: Path, to: usize },
    /// Edits the string at `path` at code point `pos`.
    Text {
        path: Path,
        pos: usize,
        edit: TextEdit,
    },
    /// Adds `value` to the number at `path`.
    Add { path: Path, value: Number },
}

/// The edit of a `text` op; positions and lengths count Unicode code points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextEdit {
    Insert(String),
    Delete(usize),
}

/// The kind of an op, without its operands (for tests, metrics and messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Set,
    Del,
    Ins,
    Move,
    TextInsert,
    TextDelete,
    Add,
}

impl OpKind {
    /// Every kind, in a fixed order.
    pub const ALL: [OpKind; 7] = [
        OpKind::Set,
        OpKind::Del,
        OpKind::Ins,
        OpKind::Move,
        OpKind::TextInsert,
        OpKind::TextDelete,
        OpKind::Add,
    ];
}

impl Op {
    pub fn path(&self) -> &[PathSeg] {
        match self {
            Op::Set { path, .. }
            | Op::Del { path }
            | Op::Ins { path, .. }
            | Op::Move { path, .. }
            | Op::Text { path, .. }
            | Op::Add { path, .. } => path,
        }
    }

    pub fn path_mut(&mut self) -> &mut Path {
        match self {
            Op::Set { path, .. }
            | Op::Del { path }
            | Op::Ins { path, .. }
            | Op::Move { path, .. }
            | Op::Text { path, .. }
            | Op::Add { path, .. } => path,
        }
    }

    pub fn kind(&self) -> OpKind {
        match self {
            Op::Set { .. } => OpKind::Set,
            Op::Del { .. } => OpKind::Del,
            Op::Ins { .. } => OpKind::Ins,
            Op::Move { .. } => OpKind::Move,
            Op::Text {
                edit: TextEdit::Insert(_),
                ..
            } => OpKind::TextInsert,
            Op::Text {
                edit: TextEdit::Delete(_),
                ..
            } => OpKind::TextDelete,
            Op::Add { .. } => OpKind::Add,
        }
    }

    /// The wire name: `set`, `del`, `ins`, `move`, `text` or `add`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Set { .. } => "set",
            Op::Del { .. } => "del",
            Op::Ins { .. } => "ins",
            Op::Move { .. } => "move",
            Op::Text { .. } => "text",
            Op::Add { .. } => "add",
        }
    }

    /// The wire form of this op.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Bounds applied while decoding an op list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most ops in one op list.
    pub max_ops: usize,
    /// Most segments in one path.
    pub max_path_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ops: 1000,
            max_path_depth: 64,
        }
    }
}

/// Why an op list could not be decoded. Displays as `op 2: unknown op "frob"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// Index of the offending op in its list, if the error is about one op.
    pub index: Option<usize>,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "op {i}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Decodes the `ops` field of an `op` message.
pub fn decode_ops(v: &Value, limits: &Limits) -> Result<Vec<Op>, DecodeError> {
    let list = v.as_array().ok_or_else(|| DecodeError {
        index: None,
        message: "ops must be an array".into(),
    })?;
    if list.len() > limits.max_ops {
        return Err(DecodeError {
            index: None,
            message: format!("too many ops ({} > {})", list.len(), limits.max_ops),
        });
    }
    list.iter()
        .enumerate()
        .map(|(i, op)| {
            decode_one(op, limits).map_err(|message| DecodeError {
                index: Some(i),
                message,
            })
        })
        .collect()
}

/// Decodes one op (errors carry no index).
pub fn decode_op(v: &Value, limits: &Limits) -> Result<Op, DecodeError> {
    decode_one(v, limits).map_err(|message| DecodeError {
        index: None,
        message,
    })
}

/// The wire form of an op list.
pub fn encode_ops(ops: &[Op]) -> Value {
    Value::Array(ops.iter().map(Op::to_json).collect())
}

fn decode_one(v: &Value, limits: &Limits) -> Result<Op, String> {
    let obj = v.as_object().ok_or("op must be an object")?;
    let name = match obj.get("op") {
        None => return Err("missing \"op\"".into()),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("\"op\" must be a string".into()),
    };
    if !matches!(name, "set" | "del" | "ins" | "move" | "text" | "add") {
        return Err(format!("unknown op {name:?}"));
    }
    let path = decode_path(obj, limits)?;
    let ends_in_index = matches!(path.last(), Some(PathSeg::Index(_)));
    match name {
        "set" => Ok(Op::Set {
            path,
            value: field(obj, "value")?.clone(),
        }),
        "del" if path.is_empty() => Err("del path must not be empty".into()),
        "del" => Ok(Op::Del { path }),
        "ins" if !ends_in_index => Err("ins path must end with a list index".into()),
        "ins" => Ok(Op::Ins {
            path,
            value: field(obj, "value")?.clone(),
        }),
        "move" if !ends_in_index => Err("move path must end with a list index".into()),
        "move" => Ok(Op::Move {
            path,
            to: count(obj, "to")?,
        }),
        "text" => {
            let pos = count(obj, "pos")?;
            let edit = match (obj.get("insert"), obj.get("delete")) {
                (Some(_), Some(_)) => {
                    return Err("text op takes \"insert\" or \"delete\", not both".into())
                }
                (Some(Value::String(s)), None) => TextEdit::Insert(s.clone()),
                (Some(_), None) => return Err("\"insert\" must be a string".into()),
                (None, Some(_)) => TextEdit::Delete(count(obj, "delete")?),
                (None, None) => return Err("text op needs \"insert\" or \"delete\"".into()),
            };
            Ok(Op::Text { path, pos, edit })
        }
        _ => match field(obj, "value")? {
            Value::Number(n) => Ok(Op::Add {
                path,
                value: n.clone(),
            }),
            _ => Err("add value must be a number".into()),
        },
    }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    obj.get(name).ok_or_else(|| format!("missing {name:?}"))
}

fn count(obj: &Map<String, Value>, name: &str) -> Result<usize, String> {
    field(obj, name)?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{name:?} must be a non-negative integer"))
}

fn decode_path(obj: &Map<String, Value>, limits: &Limits) -> Result<Path, String> {
    let segs = field(obj, "path")?
        .as_array()
        .ok_or("path must be an array")?;
    if segs.len() > limits.max_path_depth {
        return Err(format!(
            "path too deep ({} > {})",
            segs.len(),
            limits.max_path_depth
        ));
    }
    segs.iter()
        .enumerate()
        .map(|(i, seg)| match seg {
            Value::String(k) => Ok(PathSeg::Key(k.clone())),
            other => other
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(PathSeg::Index)
                .ok_or_else(|| format!("path[{i}] must be a string or a non-negative integer")),
        })
        .collect()
}

struct SerPath<'a>(&'a [PathSeg]);

impl Serialize for SerPath<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for seg in self.0 {
            match seg {
                PathSeg::Key(k) => seq.serialize_element(k)?,
                PathSeg::Index(i) => seq.serialize_element(i)?,
            }
        }
        seq.end()
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("op", self.name())?;
        m.serialize_entry("path", &SerPath(self.path()))?;
        match self {
            Op::Set { value, .. } | Op::Ins { value, .. } => m.serialize_entry("value", value)?,
            Op::Del { .. } => {}
            Op::Move { to, .. } => m.serialize_entry("to", to)?,
            Op::Text { pos, edit, .. } => {
                m.serialize_entry("pos", pos)?;
                match edit {
                    TextEdit::Insert(s) => m.serialize_entry("insert", s)?,
                    TextEdit::Delete(n) => m.serialize_entry("delete", n)?,
                }
            }
            Op::Add { value, .. } => m.serialize_entry("value", value)?,
        }
        m.end()
    }
}

/// Deserializes with [`Limits::default`]; use [`decode_ops`] for indexed errors and other limits.
impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        decode_one(&v, &Limits::default()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        decode_ops(&v, &Limits::default()).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_every_kind() {
        let wire = json!([
            {"op":"set","path":["title"],"value":{"a":[1,2]}},
            {"op":"del","path":["tags",2]},
            {"op":"ins","path":["items",3],"value":"x"},
            {"op":"move","path":["items",3],"to":0},
            {"op":"text","path":["body"],"pos":5,"insert":"abc"},
            {"op":"text","path":["body"],"pos":5,"delete":3},
            {"op":"add","path":["likes"],"value":-1.5},
            {"op":"set","path":[],"value":null}
        ]);
        let ops = decode_ops(&wire, &Limits::default()).unwrap();
        assert_eq!(ops.len(), 8);
        assert_eq!(ops[1].kind(), OpKind::Del);
        assert_eq!(encode_ops(&ops), wire);
        let via_serde: Vec<Op> = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(via_serde, ops);
        assert_eq!(serde_json::to_value(&via_serde).unwrap(), wire);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let ops = decode_ops(
            &json!([{"op":"del","path":["a"],"extra":1}]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![Op::Del {
                path: vec!["a".into()]
            }]
        );
    }

    #[test]
    fn errors_name_the_op() {
        assert_eq!(err(json!({})), "ops must be an array");
        assert_eq!(
            err(
                json!([{"op":"del","path":["a"]},{"op":"del","path":["b"]},{"op":"frob","path":[]}])
            ),
            "op 2: unknown op \"frob\""
        );
        assert_eq!(
            err(json!([{"op":"set","path":"a","value":1}])),
            "op 0: path must be an array"
        );
        assert_eq!(err(json!([1])), "op 0: op must be an object");
        assert_eq!(err(json!([{"path":[]}])), "op 0: missing \"op\"");
        assert_eq!(
            err(json!([{"op":"set","path":["a"]}])),
            "op 0: missing \"value\""
        );
        assert_eq!(
            err(json!([{"op":"set","path":["a",-1],"value":1}])),
            "op 0: path[1] must be a string or a non-negative integer"
        );
        assert_eq!(
            err(json!([{"op":"set","path":[1.5],"value":1}])),
            "op 0: path[0] must be a string or a non-negative integer"
        );
        assert_eq!(
            err(json!([{"op":"del","path":[]}])),
            "op 0: del path must not be empty"
        );
        assert_eq!(
            err(json!([{"op":"ins","path":["a"],"value":1}])),
            "op 0: ins path must end with a list index"
        );
        assert_eq!(
            err(json!([{"op":"move","path":["a",0],"to":-1}])),
            "op 0: \"to\" must be a non-negative integer"
        );
        assert_eq!(
            err(json!([{"op":"text","path":["a"],"pos":0}])),
            "op 0: text op needs \"insert\" or \"delete\""
        );
        assert_eq!(
            err(json!([{"op":"text","path":["a"],"pos":0,"insert":"x","delete":1}])),
            "op 0: text op takes \"insert\" or \"delete\", not both"
        );
        assert_eq!(
            err(json!([{"op":"text","path":["a"],"pos":0,"insert":3}])),
            "op 0: \"insert\" must be a string"
        );
        assert_eq!(
            err(json!([{"op":"add","path":["a"],"value":"1"}])),
            "op 0: add value must be a number"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_ops: 2,
            max_path_depth: 3,
        };
        let three =
            json!([{"op":"del","path":["a"]},{"op":"del","path":["a"]},{"op":"del","path":["a"]}]);
        assert_eq!(
            decode_ops(&three, &limits).unwrap_err().to_string(),
            "too many ops (3 > 2)"
        );
        let deep = json!([{"op":"del","path":["a","b","c","d"]}]);
        assert_eq!(
            decode_ops(&deep, &limits).unwrap_err().to_string(),
            "op 0: path too deep (4 > 3)"
        );
    }
}
