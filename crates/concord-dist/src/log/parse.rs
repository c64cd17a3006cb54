//! Reading the function library's and Redis's replies into the log's types (a reply that does
//! not have the documented shape is a `Reply` error, never a panic).

use super::{LogError, LoggedEvent, Rebuilt, RoomHead, RoomMeta};
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomKind, Seq};
use redis::Value;
use std::collections::HashMap;

fn bad(what: &str, v: &impl std::fmt::Debug) -> LogError {
    LogError::Reply(format!("{what}: {v:?}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn hlc_or_none(s: &str) -> Result<Option<HlcText>, LogError> {
    if s.is_empty() {
        return Ok(None);
    }
    HlcText::parse(s).map(Some).ok_or_else(|| bad("hlc", &s))
}

fn kind(s: &str) -> Result<RoomKind, LogError> {
    RoomKind::parse(s).map_err(|_| bad("kind", &s))
}

fn head_of(items: &[Value]) -> Result<RoomHead, LogError> {
    let [k, e, h, hlc] = items else {
        return Err(bad("room head", &items));
    };
    Ok(RoomHead {
        kind: kind(&text(k).ok_or_else(|| bad("kind", k))?)?,
        epoch: Epoch(text(e).ok_or_else(|| bad("epoch", e))?),
        head: Seq(int(h).ok_or_else(|| bad("head", h))?),
        hlc: hlc_or_none(&text(hlc).unwrap_or_default())?,
    })
}

/// `[kind, epoch, head, hlc]`.
pub(super) fn room_head(v: Value) -> Result<RoomHead, LogError> {
    match &v {
        Value::Array(items) => head_of(items),
        _ => Err(bad("room head", &v)),
    }
}

/// `[rebuilt, kind, epoch, head, hlc]`.
pub(super) fn rebuilt(v: Value) -> Result<Rebuilt, LogError> {
    match &v {
        Value::Array(items) if items.len() == 5 => Ok(Rebuilt {
            rebuilt: int(&items[0]) == Some(1),
            head: head_of(&items[1..])?,
        }),
        _ => Err(bad("rebuild", &v)),
    }
}

/// The meta hash.
pub(super) fn room_meta(map: &HashMap<String, String>) -> Result<RoomMeta, LogError> {
    let get = |f: &str| map.get(f).map(String::as_str).unwrap_or("");
    let num = |f: &str| -> Result<u64, LogError> {
        match get(f) {
            "" => Ok(0),
            s => s.parse().map_err(|_| bad(f, &s)),
        }
    };
    Ok(RoomMeta {
        kind: kind(get("kind"))?,
        epoch: Epoch(get("epoch").to_string()),
        head: Seq(num("head")?),
        hlc: hlc_or_none(get("hlc"))?,
        fence: num("fence")?,
        wm: Seq(num("wm")?),
        floor: Seq(num("floor")?),
    })
}

/// An XRANGE reply of a log stream.
pub(super) fn log_entries(v: Value) -> Result<Vec<LoggedEvent>, LogError> {
    let Value::Array(entries) = v else {
        return Err(bad("XRANGE", &v));
    };
    entries.iter().map(log_entry).collect()
}

fn log_entry(v: &Value) -> Result<LoggedEvent, LogError> {
    let Value::Array(pair) = v else {
        return Err(bad("log entry", v));
    };
    let [id, Value::Array(fields)] = pair.as_slice() else {
        return Err(bad("log entry", v));
    };
    let id = text(id).ok_or_else(|| bad("entry id", id))?;
    let seq = id
        .strip_suffix("-0")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("entry id", &id))?;
    let mut f: HashMap<String, String> = HashMap::new();
    for kv in fields.chunks(2) {
        if let [k, val] = kv {
            if let (Some(k), Some(val)) = (text(k), text(val)) {
                f.insert(k, val);
            }
        }
    }
    let field = |name: &str| f.get(name).ok_or_else(|| bad("log entry field", &name));
    Ok(LoggedEvent {
        seq: Seq(seq),
        hlc: HlcText::parse(field("h")?).ok_or_else(|| bad("hlc", &f))?,
        from: ClientId::new(field("f")?).map_err(|_| bad("from", &f))?,
        op_id: match f.get("o") {
            Some(o) => Some(OpId::new(o).map_err(|_| bad("op id", o))?),
            None => None,
        },
        data: field("d")?.clone(),
    })
}
