//! Client → server messages: one type per message, encoded by clients (`ClientMsg::encode`)
//! and decoded by the server (`decode_client`) with precise `bad_request` messages.
//!
//! Decoding takes two passes — the `type`, then the message itself — so that `data` and `ops`
//! stay borrowed raw JSON slices of the frame, never parsed into a tree nor copied here.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A client's position in a room's history, sent on (re)join.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// A client message. Field values are not validated here beyond their JSON types.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg<'a> {
    Hello(Hello<'a>),
    Join(Join<'a>),
    Leave(Leave<'a>),
    Publish(Publish<'a>),
    /// A doc op list made against the state at `base`.
    Op(Op<'a>),
    Presence(Presence<'a>),
    /// A client found that its doc state hash differs from the server's at `seq`.
    Drift(Drift<'a>),
    /// A fresh token for a connection whose token expires.
    Auth(Auth<'a>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello<'a> {
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub token: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Join<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leave<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// The client sends this publish again (it had no answer): the server then also looks its
    /// id up beyond its idempotency window where it can (distributed mode). Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub base: u64,
    #[serde(borrow)]
    pub ops: &'a RawValue,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Presence<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    pub seq: u64,
    #[serde(borrow)]
    pub hash: Cow<'a, str>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Auth<'a> {
    #[serde(borrow)]
    pub token: Cow<'a, str>,
}

// `RawValue` has no `PartialEq`: raw JSON compares by its text.
impl PartialEq for Publish<'_> {
    fn eq(&self, o: &Self) -> bool {
        (&self.room, &self.id, self.data.get()) == (&o.room, &o.id, o.data.get())
    }
}
impl PartialEq for Op<'_> {
    fn eq(&self, o: &Self) -> bool {
        (&self.room, &self.id, self.base, self.ops.get()) == (&o.room, &o.id, o.base, o.ops.get())
    }
}
impl PartialEq for Presence<'_> {
    fn eq(&self, o: &Self) -> bool {
        (&self.room, self.data.get()) == (&o.room, o.data.get())
    }
}

impl ClientMsg<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Hello(_) => "hello",
            ClientMsg::Join(_) => "join",
            ClientMsg::Leave(_) => "leave",
            ClientMsg::Publish(_) => "publish",
            ClientMsg::Op(_) => "op",
            ClientMsg::Drift(_) => "drift",
            ClientMsg::Presence(_) => "presence",
            ClientMsg::Auth(_) => "auth",
        }
    }

    /// The text frame of this message.
    pub fn encode(&self) -> String {
        // Strings, integers and raw JSON that is valid by construction: cannot fail.
        serde_json::to_string(self).expect("client messages always serialize")
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
pub fn decode_client(text: &str) -> Result<ClientMsg<'_>, DecodeError> {
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
        "hello" => ClientMsg::Hello(body(text, "hello")?),
        "join" => ClientMsg::Join(body(text, "join")?),
        "leave" => ClientMsg::Leave(body(text, "leave")?),
        "publish" => {
            let m: Publish = body(text, "publish")?;
            readable_data(text, "publish", m.data)?;
            ClientMsg::Publish(m)
        }
        "op" => ClientMsg::Op(body(text, "op")?),
        "drift" => ClientMsg::Drift(body(text, "drift")?),
        "presence" => {
            let m: Presence = body(text, "presence")?;
            readable_data(text, "presence", m.data)?;
            ClientMsg::Presence(m)
        }
        "auth" => ClientMsg::Auth(body(text, "auth")?),
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
        assert!(
            matches!(m, ClientMsg::Hello(Hello { client_id, token: None }) if client_id == "c1")
        );
        let m = decode_client(
            r#"{"type":"join","room":"r","kind":"stream","since":{"epoch":"e","seq":4}}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMsg::Join(Join {
                since: Some(Since { seq: 4, .. }),
                ..
            })
        ));
        let m =
            decode_client(r#"{"type":"publish","room":"r","id":"m1","data":{"a":[1,2]}}"#).unwrap();
        match m {
            ClientMsg::Publish(p) => assert_eq!(p.data.get(), r#"{"a":[1,2]}"#),
            _ => panic!("not a publish"),
        }
    }

    /// The server reads `data` (and names without escapes) in place: nothing is copied.
    #[test]
    fn decoding_borrows_from_the_frame() {
        let frame = r#"{"type":"publish","room":"r","id":"m\u0031","data":{"a":[1,2]}}"#;
        let ClientMsg::Publish(p) = decode_client(frame).unwrap() else {
            panic!("not a publish")
        };
        let inside = |s: &str| frame.as_bytes().as_ptr_range().contains(&s.as_ptr());
        assert!(matches!(p.room, Cow::Borrowed(_)));
        assert!(inside(&p.room));
        assert!(inside(p.data.get()));
        assert_eq!(p.id, "m1"); // an escape: decoded into an owned string
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
