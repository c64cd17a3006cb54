//! A work-stream entry as read from Redis, and its parsing into an archived event. Entry fields
//! (docs/distributed.md): `r` room, `k` kind, `e` epoch, `s` seq, `h` hlc, `f` from, `o` op id
//! (absent when none), `d` data.

use concord_core::{ClientId, HlcText, OpId, RoomId, RoomKind};
use redis::Value;

use crate::pg::ArchivedEvent;

/// One entry read from a work stream. `fields` is `None` for an entry still pending but no
/// longer in the stream (deleted): it only needs acknowledging.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    /// The entry's size in bytes (field names and values).
    pub fn size(&self) -> usize {
        self.fields
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    /// The fields as a JSON object (bytes as lossy UTF-8), for dead letters.
    pub fn fields_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .flatten()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .flatten()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Result<&str, String> {
        let raw = self
            .field(name)
            .ok_or_else(|| format!("field {name} missing"))?;
        std::str::from_utf8(raw).map_err(|_| format!("field {name} is not UTF-8"))
    }

    /// The archived event this entry describes, or why it is malformed.
    pub fn parse(&self, partition: u32) -> Result<ArchivedEvent, String> {
        let room = self.text("r")?;
        RoomId::new(room).map_err(|e| format!("r: {e}"))?;
        let kind = self.text("k")?;
        RoomKind::parse(kind).map_err(|e| format!("k: {e}"))?;
        let epoch = self.text("e")?;
        if epoch.is_empty() {
            return Err("e: empty epoch".into());
        }
        let seq: u64 = self
            .text("s")?
            .parse()
            .map_err(|_| "s: not a seq".to_string())?;
        if seq == 0 || seq > i64::MAX as u64 {
            return Err(format!("s: {seq} out of range"));
        }
        let hlc = self.text("h")?;
        HlcText::parse(hlc).ok_or_else(|| format!("h: {hlc:?} is not an hlc"))?;
        let from = self.text("f")?;
        ClientId::new(from).map_err(|e| format!("f: {e}"))?;
        let op_id = match self.field("o") {
            None => None,
            Some(_) => {
                let op = self.text("o")?;
                OpId::new(op).map_err(|e| format!("o: {e}"))?;
                Some(op.to_string())
            }
        };
        let data = self.text("d")?;
        Ok(ArchivedEvent {
            partition,
            room: room.to_string(),
            kind: kind.to_string(),
            epoch: epoch.to_string(),
            seq,
            hlc: hlc.to_string(),
            from: from.to_string(),
            op_id,
            data: data.to_string(),
        })
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// One `[id, [field, value, …] | nil]` element.
fn entry(v: &Value) -> Option<Entry> {
    let pair = list(v)?;
    let id = String::from_utf8(bytes(pair.first()?)?).ok()?;
    let fields = match pair.get(1) {
        None | Some(Value::Nil) => None,
        Some(f) => {
            let flat = list(f)?;
            Some(
                flat.chunks(2)
                    .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                    .collect(),
            )
        }
    };
    Some(Entry { id, fields })
}

/// The entries of a list of `[id, fields]` elements.
pub fn entries(v: &Value) -> Vec<Entry> {
    list(v).unwrap_or(&[]).iter().filter_map(entry).collect()
}

/// The entries of an XREADGROUP reply on one stream (`nil` when none).
pub fn from_xreadgroup(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| list(s).and_then(|kv| kv.get(1)))
            .flat_map(entries)
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// The claimed entries of an XAUTOCLAIM reply (`[next, entries, deleted ids]`).
pub fn from_xautoclaim(v: &Value) -> Vec<Entry> {
    list(v)
        .and_then(|parts| parts.get(1))
        .map(entries)
        .unwrap_or_default()
}

/// (id, deliveries) of an extended XPENDING reply.
pub fn from_xpending(v: &Value) -> Vec<(String, u64)> {
    list(v)
        .unwrap_or(&[])
        .iter()
        .filter_map(|row| {
            let row = list(row)?;
            let id = String::from_utf8(bytes(row.first()?)?).ok()?;
            let n = match row.get(3)? {
                Value::Int(n) => u64::try_from(*n).ok()?,
                _ => return None,
            };
            Some((id, n))
        })
        .collect()
}
