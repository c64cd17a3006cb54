//! Server → client messages: borrowed encoders used by the server, and an owned decoder for clients.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::codes::ErrorCode;

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("protocol messages always serialize")
}

#[derive(Serialize)]
struct WelcomeOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    client_id: &'a str,
    node: &'a str,
    server_time: u64,
}

pub fn welcome(client_id: &str, node: &str, server_time: u64) -> String {
    to_json(&WelcomeOut {
        ty: "welcome",
        client_id,
        node,
        server_time,
    })
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    hlc: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    data: &'a RawValue,
}

/// An `event` frame. Encoded once per event and shared by every member of the room.
pub fn event(
    room: &str,
    seq: u64,
    hlc: &str,
    from: &str,
    id: Option<&str>,
    data: &RawValue,
) -> String {
    to_json(&EventOut {
        ty: "event",
        room,
        seq,
        hlc,
        from,
        id,
        data,
    })
}

#[derive(Serialize)]
struct JoinedHead<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    kind: &'a str,
    epoch: &'a str,
    seq: u64,
    recovered: bool,
}

/// A `joined` frame whose `events` are already-encoded `event` frames; `extra` are more
/// fields as (name, raw JSON) pairs (e.g. `presence`, `members`).
pub fn joined<'a>(
    room: &str,
    kind: &str,
    epoch: &str,
    seq: u64,
    recovered: bool,
    events: impl IntoIterator<Item = &'a str>,
    extra: &[(&str, &str)],
) -> String {
    let mut out = to_json(&JoinedHead {
        ty: "joined",
        room,
        kind,
        epoch,
        seq,
        recovered,
    });
    out.pop(); // the closing brace
    out.push_str(",\"events\":[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
    out.push(']');
    for (name, raw) in extra {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(raw);
    }
    out.push('}');
    out
}

/// A `presence` frame; `data` None is `null` (the client left).
pub fn presence(room: &str, client_id: &str, data: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct PresenceOut<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        room: &'a str,
        client_id: &'a str,
        data: Option<&'a RawValue>,
    }
    to_json(&PresenceOut {
        ty: "presence",
        room,
        client_id,
        data,
    })
}

/// A member as others see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemberInfo {
    pub client_id: String,
    pub user: String,
    #[serde(default)]
    pub meta: serde_json::Map<String, Value>,
}

/// `member_joined` / `member_left`.
pub fn member(ty: &'static str, room: &str, m: &MemberInfo) -> String {
    #[derive(Serialize)]
    struct MemberOut<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        room: &'a str,
        #[serde(flatten)]
        member: &'a MemberInfo,
    }
    to_json(&MemberOut {
        ty,
        room,
        member: m,
    })
}

/// `auth_ok`: a refreshed token was accepted.
pub fn auth_ok(user: &str, exp: Option<u64>) -> String {
    #[derive(Serialize)]
    struct AuthOk<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
    }
    to_json(&AuthOk {
        ty: "auth_ok",
        user,
        exp,
    })
}

#[derive(Serialize)]
struct OpEventOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    hlc: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    ops: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a str>,
}

/// An `event` frame of a doc room: the committed (transformed) `ops`, and the state hash after
/// them when the server includes one.
pub fn op_event(
    room: &str,
    seq: u64,
    hlc: &str,
    from: &str,
    id: Option<&str>,
    ops: &RawValue,
    hash: Option<&str>,
) -> String {
    to_json(&OpEventOut {
        ty: "event",
        room,
        seq,
        hlc,
        from,
        id,
        ops,
        hash,
    })
}

pub fn left(room: &str) -> String {
    #[derive(Serialize)]
    struct LeftOut<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        room: &'a str,
    }
    to_json(&LeftOut { ty: "left", room })
}

pub fn ack(room: &str, id: &str, seq: u64, hlc: &str) -> String {
    ack_dropped(room, id, seq, hlc, &[])
}

/// An `ack` of a doc op list; `dropped` lists the indexes of ops that had no effect after
/// transformation (their target was concurrently deleted), omitted when empty.
pub fn ack_dropped(room: &str, id: &str, seq: u64, hlc: &str, dropped: &[usize]) -> String {
    #[derive(Serialize)]
    struct AckOut<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        room: &'a str,
        id: &'a str,
        seq: u64,
        hlc: &'a str,
        #[serde(skip_serializing_if = "<[usize]>::is_empty")]
        dropped: &'a [usize],
    }
    to_json(&AckOut {
        ty: "ack",
        room,
        id,
        seq,
        hlc,
        dropped,
    })
}

pub fn error(
    id: Option<&str>,
    room: Option<&str>,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> String {
    #[derive(Serialize)]
    struct ErrorOut<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    to_json(&ErrorOut {
        ty: "error",
        id,
        room,
        code,
        message,
        retry_after_ms,
    })
}

/// An event as a client sees it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct EventMsg {
    pub room: String,
    pub seq: u64,
    pub hlc: String,
    pub from: String,
    #[serde(default)]
    pub id: Option<String>,
    /// Stream rooms: the event's data (`null` for doc events).
    #[serde(default)]
    pub data: Value,
    /// Doc rooms: the committed ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Value>,
    /// Doc rooms: the state hash after this event, when included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A server message as a client decodes it. Unknown types decode to `Other` (clients ignore them).
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMsg {
    Welcome {
        client_id: String,
        node: String,
        server_time: u64,
    },
    Joined {
        room: String,
        kind: String,
        epoch: String,
        seq: u64,
        recovered: bool,
        events: Vec<EventMsg>,
        state: Option<Value>,
        /// Doc rooms: the hash of `state`.
        hash: Option<String>,
        /// client_id → presence data of the members present.
        presence: serde_json::Map<String, Value>,
        members: Vec<MemberInfo>,
    },
    Left {
        room: String,
    },
    Presence {
        room: String,
        client_id: String,
        data: Value,
    },
    MemberJoined {
        room: String,
        member: MemberInfo,
    },
    MemberLeft {
        room: String,
        member: MemberInfo,
    },
    AuthOk {
        user: String,
        exp: Option<u64>,
    },
    Ack {
        room: String,
        id: String,
        seq: u64,
        hlc: String,
        dropped: Vec<usize>,
    },
    Event(EventMsg),
    Error {
        id: Option<String>,
        room: Option<String>,
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    Other(String),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Tagged {
    Welcome {
        client_id: String,
        node: String,
        server_time: u64,
    },
    Joined {
        room: String,
        kind: String,
        epoch: String,
        seq: u64,
        recovered: bool,
        #[serde(default)]
        events: Vec<EventMsg>,
        #[serde(default)]
        state: Option<Value>,
        #[serde(default)]
        hash: Option<String>,
        #[serde(default)]
        presence: serde_json::Map<String, Value>,
        #[serde(default)]
        members: Vec<MemberInfo>,
    },
    Left {
        room: String,
    },
    Presence {
        room: String,
        client_id: String,
        data: Value,
    },
    MemberJoined {
        room: String,
        #[serde(flatten)]
        member: MemberInfo,
    },
    MemberLeft {
        room: String,
        #[serde(flatten)]
        member: MemberInfo,
    },
    AuthOk {
        user: String,
        #[serde(default)]
        exp: Option<u64>,
    },
    Ack {
        room: String,
        id: String,
        seq: u64,
        hlc: String,
        #[serde(default)]
        dropped: Vec<usize>,
    },
    Event(EventMsg),
    Error {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        room: Option<String>,
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
}

/// Decodes a server frame (client side).
pub fn decode_server(text: &str) -> Result<ServerMsg, serde_json::Error> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        ty: String,
    }
    let head: Head = serde_json::from_str(text)?;
    if !matches!(
        head.ty.as_str(),
        "welcome"
            | "joined"
            | "left"
            | "ack"
            | "event"
            | "error"
            | "presence"
            | "member_joined"
            | "member_left"
            | "auth_ok"
    ) {
        return Ok(ServerMsg::Other(head.ty));
    }
    Ok(match serde_json::from_str::<Tagged>(text)? {
        Tagged::Welcome {
            client_id,
            node,
            server_time,
        } => ServerMsg::Welcome {
            client_id,
            node,
            server_time,
        },
        Tagged::Joined {
            room,
            kind,
            epoch,
            seq,
            recovered,
            events,
            state,
            hash,
            presence,
            members,
        } => ServerMsg::Joined {
            room,
            kind,
            epoch,
            seq,
            recovered,
            events,
            state,
            hash,
            presence,
            members,
        },
        Tagged::Left { room } => ServerMsg::Left { room },
        Tagged::Presence {
            room,
            client_id,
            data,
        } => ServerMsg::Presence {
            room,
            client_id,
            data,
        },
        Tagged::MemberJoined { room, member } => ServerMsg::MemberJoined { room, member },
        Tagged::MemberLeft { room, member } => ServerMsg::MemberLeft { room, member },
        Tagged::AuthOk { user, exp } => ServerMsg::AuthOk { user, exp },
        Tagged::Ack {
            room,
            id,
            seq,
            hlc,
            dropped,
        } => ServerMsg::Ack {
            room,
            id,
            seq,
            hlc,
            dropped,
        },
        Tagged::Event(e) => ServerMsg::Event(e),
        Tagged::Error {
            id,
            room,
            code,
            message,
            retry_after_ms,
        } => ServerMsg::Error {
            id,
            room,
            code,
            message,
            retry_after_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_round_trip_through_the_client_decoder() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let ev = event("chat:lobby", 58, "h", "c-1", Some("m-1"), &data);
        let j = joined(
            "chat:lobby",
            "stream",
            "e1",
            58,
            true,
            [ev.as_str()],
            &[("presence", r#"{"c-1":{"cursor":3}}"#)],
        );
        match decode_server(&j).unwrap() {
            ServerMsg::Joined {
                events,
                seq,
                recovered,
                ..
            } => {
                assert_eq!(seq, 58);
                assert!(recovered);
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].data["text"], "hi");
                assert_eq!(events[0].id.as_deref(), Some("m-1"));
            }
            other => panic!("{other:?}"),
        }
        let e = error(Some("m-1"), None, ErrorCode::TooLarge, "big", None);
        assert_eq!(
            e,
            r#"{"type":"error","id":"m-1","code":"too_large","message":"big"}"#
        );
        assert!(
            matches!(decode_server(r#"{"type":"future_thing"}"#), Ok(ServerMsg::Other(t)) if t == "future_thing")
        );
        let empty = joined("r", "stream", "e", 0, false, std::iter::empty(), &[]);
        let m = MemberInfo {
            client_id: "c".into(),
            user: "u".into(),
            meta: Default::default(),
        };
        assert!(matches!(
            decode_server(&member("member_left", "r", &m)),
            Ok(ServerMsg::MemberLeft { member, .. }) if member == m
        ));
        let p = presence("r", "c", None);
        assert_eq!(
            p,
            r#"{"type":"presence","room":"r","client_id":"c","data":null}"#
        );
        assert!(
            matches!(decode_server(&empty), Ok(ServerMsg::Joined { events, .. }) if events.is_empty())
        );
    }
}
