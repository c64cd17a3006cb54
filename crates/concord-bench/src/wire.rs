//! The few bytes of the wire protocol the bench needs: a fast scan of server frames, and the
//! client frames it sends (as `concord_protocol::ClientMsg`s).
//!
//! Server frames are scanned, not decoded: the server writes `"type"` first and the bench only
//! needs `type`, `id`, `room`, `seq` and the `t` (scheduled send time) inside its own `data`.
//! Errors and anything unexpected go through `concord_protocol::decode_server`.

use concord_protocol::inbound::{Hello, Join, Op, Publish};
use concord_protocol::{ClientMsg, Json, ServerMsg};
use memchr::memmem::Finder;
use serde::Serialize;
use std::fmt::Write;
use std::sync::LazyLock;

/// The kinds of server frames the bench tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Joined,
    Ack,
    Event,
    Error,
    Other,
}

/// Searchers for the patterns scanned on every frame, built once.
struct Finders {
    type_: Finder<'static>,
    id: Finder<'static>,
    seq: Finder<'static>,
    room: Finder<'static>,
    data: Finder<'static>,
    t: Finder<'static>,
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
    type_: Finder::new(TYPE),
    id: Finder::new(r#""id":""#),
    seq: Finder::new(r#""seq":"#),
    room: Finder::new(r#""room":""#),
    data: Finder::new(r#""data":"#),
    t: Finder::new(r#""t":"#),
});

const TYPE: &str = r#""type":""#;

/// The text right after the first occurrence of the finder's pattern.
fn after<'a>(frame: &'a str, f: &Finder<'_>) -> Option<&'a str> {
    f.find(frame.as_bytes())
        .map(|i| &frame[i + f.needle().len()..])
}

/// The text up to the next `"`.
fn until_quote(s: &str) -> &str {
    match memchr::memchr(b'"', s.as_bytes()) {
        Some(end) => &s[..end],
        None => s,
    }
}

/// The frame's `type`.
pub fn kind(frame: &str) -> Kind {
    let rest = match frame.strip_prefix('{').and_then(|f| f.strip_prefix(TYPE)) {
        Some(r) => r,
        None => match after(frame, &FINDERS.type_) {
            Some(r) => r,
            None => return Kind::Other,
        },
    };
    match until_quote(rest) {
        "event" => Kind::Event,
        "ack" => Kind::Ack,
        "error" => Kind::Error,
        "welcome" => Kind::Welcome,
        "joined" => Kind::Joined,
        _ => Kind::Other,
    }
}

/// A string field without escapes (room names and ids never need any), e.g. `str_field(f, "id")`.
pub fn str_field<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let mut pat = String::with_capacity(key.len() + 4);
    let _ = write!(pat, "\"{key}\":\"");
    let i = memchr::memmem::find(frame.as_bytes(), pat.as_bytes())?;
    Some(until_quote(&frame[i + pat.len()..]))
}

fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

/// The `id` of an `ack` (or of an `event`), parsed as the bench's numeric message index.
pub fn id_u64(frame: &str) -> Option<u64> {
    leading_u64(after(frame, &FINDERS.id)?)
}

/// The `seq` of an `event` or `ack`.
pub fn seq(frame: &str) -> Option<u64> {
    leading_u64(after(frame, &FINDERS.seq)?)
}

/// The `room` of an `event` or `ack`.
pub fn room(frame: &str) -> Option<&str> {
    Some(until_quote(after(frame, &FINDERS.room)?))
}

/// The scheduled send time (unix µs) the bench put in `data.t`.
pub fn data_t(frame: &str) -> Option<u64> {
    let data = after(frame, &FINDERS.data)?;
    leading_u64(after(data, &FINDERS.t)?)
}

/// A readable one-line description of an `error` frame.
pub fn describe_error(frame: &str) -> String {
    match concord_protocol::decode_server(frame) {
        Ok(ServerMsg::Error(e)) => match e.room {
            Some(r) => format!("{} ({r}): {}", e.code, e.message),
            None => format!("{}: {}", e.code, e.message),
        },
        _ => frame.chars().take(200).collect(),
    }
}

/// Padding for `data` so that events carry roughly `bytes` more bytes (`,"p":"xxxx…"`).
pub fn padding(bytes: usize) -> String {
    if bytes == 0 {
        return String::new();
    }
    "x".repeat(bytes.saturating_sub(7).max(1))
}

/// The `data` of the bench's publishes: the scheduled send time and the padding.
#[derive(Serialize)]
struct Data<'a> {
    t: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    p: &'a str,
}

/// `{"type":"publish","room":…,"id":"<index>","data":{"t":<unix µs>,"p":<padding>}}`.
pub fn publish(room: &str, index: u64, t_unix_us: u64, padding: &str) -> String {
    let data = Json::encode(&Data {
        t: t_unix_us,
        p: padding,
    })
    .expect("an integer and a string serialize");
    ClientMsg::Publish(Publish {
        room: room.into(),
        id: index.to_string().into(),
        data: &data,
        resend: false,
    })
    .encode()
}

pub fn hello(client_id: &str) -> String {
    ClientMsg::Hello(Hello {
        client_id: client_id.into(),
        token: None,
    })
    .encode()
}

#[allow(dead_code)]
pub fn join(room: &str) -> String {
    join_kind(room, "stream")
}

pub fn join_kind(room: &str, kind: &str) -> String {
    ClientMsg::Join(Join {
        room: room.into(),
        kind: Some(kind.into()),
        since: None,
        history: None,
    })
    .encode()
}

/// `{"type":"op","room":…,"id":"<index>","base":B,"ops":<ops>}`.
pub fn op(room: &str, index: u64, base: u64, ops: &serde_json::Value) -> String {
    let ops = Json::encode(ops).expect("a value serializes");
    ClientMsg::Op(Op {
        room: room.into(),
        id: index.to_string().into(),
        base,
        ops: &ops,
    })
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::outbound::{Ack, ErrorMsg, Event, Welcome};
    use serde_json::value::RawValue;

    #[test]
    fn scans_what_the_server_encodes() {
        let p = publish("bench-1", 42, 1_700_000_000_123_456, &padding(20));
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["data"]["t"], 1_700_000_000_123_456u64);
        let data = RawValue::from_string(v["data"].to_string()).unwrap();
        assert_eq!(
            p,
            r#"{"type":"publish","room":"bench-1","id":"42","data":{"t":1700000000123456,"p":"xxxxxxxxxxxxx"}}"#
        );
        let ev = ServerMsg::Event(Event {
            room: "bench-1".into(),
            seq: 7,
            hlc: "1700000000000-0-n1".into(),
            from: "c-1".into(),
            id: Some("42".into()),
            data: Some(Json::from(&*data)),
            ops: None,
            hash: None,
        })
        .encode();
        assert_eq!(kind(&ev), Kind::Event);
        assert_eq!(seq(&ev), Some(7));
        assert_eq!(room(&ev), Some("bench-1"));
        assert_eq!(id_u64(&ev), Some(42));
        assert_eq!(data_t(&ev), Some(1_700_000_000_123_456));
        let ack = ServerMsg::Ack(Ack {
            room: "bench-1".into(),
            id: "42".into(),
            seq: 7,
            hlc: "h".into(),
            dropped: Default::default(),
        })
        .encode();
        assert_eq!(kind(&ack), Kind::Ack);
        assert_eq!(id_u64(&ack), Some(42));
        assert_eq!(str_field(&ack, "room"), Some("bench-1"));
        let err = ServerMsg::Error(ErrorMsg {
            id: Some("3".into()),
            room: Some("r".into()),
            ..ErrorMsg::new(concord_protocol::ErrorCode::NotFound, "nope")
        })
        .encode();
        assert_eq!(kind(&err), Kind::Error);
        assert_eq!(describe_error(&err), "not_found (r): nope");
        let welcome = ServerMsg::Welcome(Welcome {
            client_id: "c".into(),
            node: "n1".into(),
            server_time: 1,
        });
        assert_eq!(kind(&welcome.encode()), Kind::Welcome);
        assert_eq!(
            join_kind("r", "doc"),
            r#"{"type":"join","room":"r","kind":"doc"}"#
        );
        assert_eq!(hello("c-1"), r#"{"type":"hello","client_id":"c-1"}"#);
        let joined = r#"{"type":"joined","room":"r","kind":"stream","epoch":"e","seq":0,"recovered":false,"events":[]}"#;
        assert_eq!(kind(joined), Kind::Joined);
        assert_eq!(kind(r#"{"a":1,"type":"left"}"#), Kind::Other);
    }
}
