//! Client → server messages and their decoding, with precise `bad_request` messages.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A client's position in a room's history, sent on (re)join.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// A decoded client message. Field values are not validated here beyond their JSON types.
#[derive(Debug)]
pub enum ClientMsg {
    Hello {
        client_id: String,
        token: Option<String>,
    },
    Join {
        room: String,
        kind: Option<String>,
        since: Option<Since>,
        history: Option<u64>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        id: String,
        data: Box<RawValue>,
    },
    /// A doc op list made against the state at `base`.
    Op {
        room: String,
        id: String,
        base: u64,
        ops: Box<RawValue>,
    },
    Presence {
        room: String,
        data: Box<RawValue>,
    },
    /// A client found that its doc state hash differs from the server's at `seq`.
    Drift {
        room: String,
        seq: u64,
        hash: String,
    },
    /// A fresh token for a connection whose token expires.
    Auth {
        token: String,
    },
}

impl ClientMsg {
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Join { .. } => "join",
            ClientMsg::Leave { .. } => "leave",
            ClientMsg::Publish { .. } => "publish",
            ClientMsg::Op { .. } => "op",
            ClientMsg::Drift { .. } => "drift",
            ClientMsg::Presence { .. } => "presence",
            ClientMsg::Auth { .. } => "auth",
        }
    }
}

/// Why a frame could not be decoded; always answered with `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
    /// The frame's `id`, if one could be read, to correlate the error.
    pub id: Option<String>,
    /// The frame's `room`, if one could be read.
    pub room: Option<String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Loose {
    id: Option<serde_json::Value>,
    room: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct HelloBody {
    client_id: String,
    token: Option<String>,
}
#[derive(Deserialize)]
struct JoinBody {
    room: String,
    kind: Option<String>,
    since: Option<Since>,
    history: Option<u64>,
}
#[derive(Deserialize)]
struct LeaveBody {
    room: String,
}
#[derive(Deserialize)]
struct PublishBody {
    room: String,
    id: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct OpBody {
    room: String,
    id: String,
    base: u64,
    ops: Box<RawValue>,
}
#[derive(Deserialize)]
struct DriftBody {
    room: String,
    seq: u64,
    hash: String,
}
#[derive(Deserialize)]
struct PresenceBody {
    room: String,
    data: Box<RawValue>,
}
#[derive(Deserialize)]
struct AuthBody {
    token: String,
}

fn fail(text: &str, message: String) -> DecodeError {
    let loose: Option<Loose> = serde_json::from_str(text).ok();
    let as_string = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if s.len() <= 256 => Some(s),
        _ => None,
    };
    let (id, room) = match loose {
        Some(l) => (as_string(l.id), as_string(l.room)),
        None => (None, None),
    };
    DecodeError { message, id, room }
}

fn body<'a, T: Deserialize<'a>>(text: &'a str, ty: &str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| fail(text, format!("invalid {ty} message: {e}")))
}

/// Deepest nesting of arrays and objects accepted in `data` (and in op values): deep enough for
/// any document, shallow enough that every frame carrying it stays readable by JSON parsers
/// with the common 128-level limit.
pub const MAX_DATA_DEPTH: usize = 64;

/// Parses a raw JSON value and checks that every client can read it back: numbers within f64
/// range, no lone surrogate escapes, at most `max_depth` levels of nesting.
pub fn check_readable(raw: &str, max_depth: usize) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("unreadable JSON: {e}"))?;
    let mut stack = vec![(&v, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match node {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > max_depth {
            return Err(format!("nested deeper than {max_depth} levels"));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(v)
}

fn readable_data(text: &str, ty: &str, data: &RawValue) -> Result<(), DecodeError> {
    check_readable(data.get(), MAX_DATA_DEPTH)
        .map(|_| ())
        .map_err(|e| fail(text, format!("invalid {ty} message: data: {e}")))
}

/// Decodes one text frame.
pub fn decode_client(text: &str) -> Result<ClientMsg, DecodeError> {
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError {
            message: "expected a JSON object with a \"type\" field".to_string(),
            id: None,
            room: None,
        });
    }
    let head: Head = serde_json::from_str(text).map_err(|e| DecodeError {
        message: if e.is_data() {
            "expected a JSON object with a \"type\" field".to_string()
        } else {
            format!("malformed JSON: {e}")
        },
        id: None,
        room: None,
    })?;
    let ty = head
        .ty
        .ok_or_else(|| fail(text, "missing \"type\" field".to_string()))?;
    Ok(match &*ty {
        "hello" => {
            let b: HelloBody = body(text, "hello")?;
            ClientMsg::Hello {
                client_id: b.client_id,
                token: b.token,
            }
        }
        "join" => {
            let b: JoinBody = body(text, "join")?;
            ClientMsg::Join {
                room: b.room,
                kind: b.kind,
                since: b.since,
                history: b.history,
            }
        }
        "leave" => {
            let b: LeaveBody = body(text, "leave")?;
            ClientMsg::Leave { room: b.room }
        }
        "publish" => {
            let b: PublishBody = body(text, "publish")?;
            readable_data(text, "publish", &b.data)?;
            ClientMsg::Publish {
                room: b.room,
                id: b.id,
                data: b.data,
            }
        }
        "op" => {
            let b: OpBody = body(text, "op")?;
            ClientMsg::Op {
                room: b.room,
                id: b.id,
                base: b.base,
                ops: b.ops,
            }
        }
        "drift" => {
            let b: DriftBody = body(text, "drift")?;
            ClientMsg::Drift {
                room: b.room,
                seq: b.seq,
                hash: b.hash,
            }
        }
        "presence" => {
            let b: PresenceBody = body(text, "presence")?;
            readable_data(text, "presence", &b.data)?;
            ClientMsg::Presence {
                room: b.room,
                data: b.data,
            }
        }
        "auth" => {
            let b: AuthBody = body(text, "auth")?;
            ClientMsg::Auth { token: b.token }
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(fail(text, format!("unknown message type {shown:?}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_every_type() {
        let m = decode_client(r#"{"type":"hello","client_id":"c1","extra":1}"#).unwrap();
        assert!(matches!(m, ClientMsg::Hello { client_id, token: None } if client_id == "c1"));
        let m = decode_client(
            r#"{"type":"join","room":"r","kind":"stream","since":{"epoch":"e","seq":4}}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMsg::Join {
                since: Some(Since { seq: 4, .. }),
                ..
            }
        ));
        let m =
            decode_client(r#"{"type":"publish","room":"r","id":"m1","data":{"a":[1,2]}}"#).unwrap();
        match m {
            ClientMsg::Publish { data, .. } => assert_eq!(data.get(), r#"{"a":[1,2]}"#),
            _ => panic!("not a publish"),
        }
    }

    #[test]
    fn errors_are_specific_and_carry_id() {
        let e = decode_client("{not json").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = decode_client("[1,2]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = decode_client(r#"["leave"]"#).unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        for data in [
            "1e400",
            r#""\ud800""#,
            &format!("{}1{}", "[".repeat(65), "]".repeat(65)),
        ] {
            let frame = format!(r#"{{"type":"publish","room":"r","id":"m","data":{data}}}"#);
            let e = decode_client(&frame).unwrap_err();
            assert!(e.message.contains("data:"), "{}", e.message);
            assert_eq!(e.id.as_deref(), Some("m"));
        }
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        let frame = format!(r#"{{"type":"publish","room":"r","id":"m","data":{ok}}}"#);
        assert!(decode_client(&frame).is_ok());
        let e = decode_client(r#"{"room":"r"}"#).unwrap_err();
        assert_eq!(e.message, "missing \"type\" field");
        let e = decode_client(r#"{"type":"frobnicate","id":"x9"}"#).unwrap_err();
        assert!(e.message.contains("unknown message type"));
        assert_eq!(e.id.as_deref(), Some("x9"));
        let e = decode_client(r#"{"type":"publish","room":"r","id":"m2"}"#).unwrap_err();
        assert!(e.message.contains("missing field `data`"), "{}", e.message);
        assert_eq!(e.id.as_deref(), Some("m2"));
        assert_eq!(e.room.as_deref(), Some("r"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = decode_client(&s);
        }
        #[test]
        fn never_panics_on_json_like_text(s in r#"\{("(type|room|id|data|since|client_id)":("(hello|join|publish|leave)"|[0-9]{1,3}|\{\}|null|"x"),?){0,6}\}"#) {
            let _ = decode_client(&s);
        }
    }
}
