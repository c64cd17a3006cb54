//! Server → client messages: one type per message, encoded by the server
//! (`ServerMsg::encode`) and decoded by clients (`decode_server`).
//!
//! Strings are `Cow`s and payloads [`Json`]: the server encodes from borrowed fields (a room's
//! `event` frame is encoded once and shared by every member), clients decode owned messages
//! (`ServerMsg<'static>`). Fields the server holds already encoded are [`Part`]s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

use crate::json::{Json, Part};

/// A server message. Unknown types decode to `Other` (clients ignore them).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome(Welcome<'a>),
    AuthOk(AuthOk<'a>),
    Joined(Joined<'a>),
    Left(Left<'a>),
    Ack(Ack<'a>),
    Event(Event<'a>),
    Presence(Presence<'a>),
    MemberJoined(Member<'a>),
    MemberLeft(Member<'a>),
    Error(ErrorMsg<'a>),
    /// A type this crate does not know (from a newer server): only its `type` is kept.
    #[serde(untagged)]
    Other(Other),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    pub client_id: Cow<'a, str>,
    pub node: Cow<'a, str>,
    pub server_time: u64,
}

/// A refreshed token was accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthOk<'a> {
    pub user: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// The answer to `join`: the head, the events to replay, a doc's state, presence and members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined<'a> {
    pub room: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub epoch: Cow<'a, str>,
    pub seq: u64,
    pub recovered: bool,
    /// Complete `event` messages (`type` included); the server replays frames it already
    /// encoded.
    #[serde(default, serialize_with = "event_frames")]
    pub events: Vec<Part<'a, Event<'a>>>,
    /// Doc rooms, when `recovered` is false: the state at `seq`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub state: Option<Cow<'a, Value>>,
    /// Doc rooms: the hash of `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Cow<'a, str>>,
    /// client_id → presence data of the members present.
    #[serde(default)]
    pub presence: Part<'a, Map<String, Value>>,
    #[serde(default)]
    pub members: Part<'a, Vec<MemberInfo>>,
}

/// Writes each event of `joined` as the `event` message it is.
fn event_frames<S: serde::Serializer>(
    events: &[Part<'_, Event<'_>>],
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Frame<'b, 'a> {
        Event(&'b Event<'a>),
    }
    s.collect_seq(events.iter().map(|e| match e {
        Part::Encoded(text) => Part::Encoded(text),
        Part::Value(e) => Part::Value(Frame::Event(e)),
    }))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Left<'a> {
    pub room: Cow<'a, str>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack<'a> {
    pub room: Cow<'a, str>,
    pub id: Cow<'a, str>,
    pub seq: u64,
    pub hlc: Cow<'a, str>,
    /// Doc rooms: the indexes of ops that had no effect after transformation (their target was
    /// concurrently deleted); omitted when empty.
    #[serde(default, skip_serializing_if = "<[usize]>::is_empty")]
    pub dropped: Cow<'a, [usize]>,
}

/// An event of a room: `data` in stream rooms; `ops` (the committed, transformed list) and,
/// every few seqs, `hash` (the state hash after it) in doc rooms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<'a> {
    pub room: Cow<'a, str>,
    pub seq: u64,
    pub hlc: Cow<'a, str>,
    pub from: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    /// Stream rooms: the event's data (`null` included).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<Json<'a>>,
    /// Doc rooms: the committed ops.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ops: Option<Json<'a>>,
    /// Doc rooms: the state hash after this event, when included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Cow<'a, str>>,
}

/// A field that is present, `null` included (absent fields are `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A member's presence; `data` is `null` when it left or cleared its presence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence<'a> {
    pub room: Cow<'a, str>,
    pub client_id: Cow<'a, str>,
    pub data: Json<'a>,
}

/// A member as others see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemberInfo {
    pub client_id: String,
    pub user: String,
    #[serde(default)]
    pub meta: Map<String, Value>,
}

/// `member_joined` / `member_left`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member<'a> {
    pub room: Cow<'a, str>,
    #[serde(flatten)]
    pub member: Cow<'a, MemberInfo>,
}

/// An `error`: `code` is one of [`crate::ErrorCode`] (kept as text when decoding, so that a
/// newer server's codes still decode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<Cow<'a, str>>,
    pub code: Cow<'a, str>,
    #[serde(default)]
    pub message: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl<'a> ErrorMsg<'a> {
    pub fn new(code: crate::ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        ErrorMsg {
            id: None,
            room: None,
            code: Cow::Borrowed(code.as_str()),
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// A message of a type this crate does not know.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Other {
    #[serde(rename = "type")]
    pub ty: String,
}

impl ServerMsg<'_> {
    /// The `type` of this message.
    pub fn type_name(&self) -> &str {
        match self {
            ServerMsg::Welcome(_) => "welcome",
            ServerMsg::AuthOk(_) => "auth_ok",
            ServerMsg::Joined(_) => "joined",
            ServerMsg::Left(_) => "left",
            ServerMsg::Ack(_) => "ack",
            ServerMsg::Event(_) => "event",
            ServerMsg::Presence(_) => "presence",
            ServerMsg::MemberJoined(_) => "member_joined",
            ServerMsg::MemberLeft(_) => "member_left",
            ServerMsg::Error(_) => "error",
            ServerMsg::Other(o) => &o.ty,
        }
    }

    /// The text frame of this message.
    pub fn encode(&self) -> String {
        // Strings, integers, `Value`s and JSON text that is valid by construction: cannot fail.
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    ty: String,
}

/// Decodes a server frame (client side). Two passes, like `decode_client`: the `type`, then
/// the message (so that `data` and `ops` are read as raw text, never as a tree).
pub fn decode_server(text: &str) -> Result<ServerMsg<'static>, serde_json::Error> {
    let head: Head = serde_json::from_str(text)?;
    Ok(match head.ty.as_str() {
        "welcome" => ServerMsg::Welcome(serde_json::from_str(text)?),
        "auth_ok" => ServerMsg::AuthOk(serde_json::from_str(text)?),
        "joined" => ServerMsg::Joined(serde_json::from_str(text)?),
        "left" => ServerMsg::Left(serde_json::from_str(text)?),
        "ack" => ServerMsg::Ack(serde_json::from_str(text)?),
        "event" => ServerMsg::Event(serde_json::from_str(text)?),
        "presence" => ServerMsg::Presence(serde_json::from_str(text)?),
        "member_joined" => ServerMsg::MemberJoined(serde_json::from_str(text)?),
        "member_left" => ServerMsg::MemberLeft(serde_json::from_str(text)?),
        "error" => ServerMsg::Error(serde_json::from_str(text)?),
        _ => ServerMsg::Other(Other { ty: head.ty }),
    })
}
