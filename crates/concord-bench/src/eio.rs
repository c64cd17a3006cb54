//! The few bytes of Socket.IO (v5, over Engine.IO v4 on a WebSocket) the bench needs to drive a
//! Socket.IO server with the same schedule as a Concord server: packets scanned, not decoded.
//!
//! One WebSocket text frame is one Engine.IO packet: `0{…}` open, `1` close, `2` ping (the
//! client answers `3`, pong), `4…` a message, which carries one Socket.IO packet: `40` connect
//! (answered `40{"sid":…}`), `44{…}` connect error, `41` disconnect, `42[<id>]["name",args…]`
//! an event (with an ack id when the sender wants an ack), `43<id>[args…]` an ack. A namespace
//! other than `/` would follow the type as `/nsp,`; the bench uses the default one.
//!
//! The bench's events: `join` (room) and `publish` (room, `{"t":<scheduled unix µs>,"p":…}`),
//! both with an ack id (a publish's id is its message index, as Concord's publish ids are); the
//! server emits `event` (room, data) to the room.

use std::fmt::Write;

/// One Engine.IO / Socket.IO packet, borrowed from its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{…}`: the Engine.IO handshake (sid, ping interval).
    Open,
    /// `1`: the server closes the Engine.IO session.
    Close,
    /// `2…`: the server's heartbeat; answer `PONG`.
    Ping,
    /// `3…`.
    Pong,
    /// `40…`: connected to the namespace.
    Connected,
    /// `41`: disconnected from the namespace.
    Disconnect,
    /// `44{…}`: the namespace refused the connection (the JSON text).
    ConnectError(&'a str),
    /// `42[<id>][…]`: an event; `args` is the JSON array, name first.
    Event { id: Option<u64>, args: &'a str },
    /// `43<id>[…]`: the answer to the event sent with ack id `id`.
    Ack { id: u64, args: &'a str },
    /// Anything else (upgrade, noop, binary packets, malformed frames).
    Other,
}

/// The client's answer to a ping.
pub const PONG: &str = "3";
/// The client's connect to the default namespace.
pub const CONNECT: &str = "40";

/// Splits a leading decimal number off `s`.
fn leading_u64(s: &str) -> (Option<u64>, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    (s[..digits].parse().ok(), &s[digits..])
}

/// Drops a namespace (`/nsp,`) in front of a Socket.IO packet's id and data.
fn skip_namespace(s: &str) -> &str {
    if s.starts_with('/') {
        match s.find(',') {
            Some(i) => &s[i + 1..],
            None => "",
        }
    } else {
        s
    }
}

/// Classifies one WebSocket text frame.
pub fn parse(frame: &str) -> Packet<'_> {
    let mut chars = frame.chars();
    match chars.next() {
        Some('0') => Packet::Open,
        Some('1') => Packet::Close,
        Some('2') => Packet::Ping,
        Some('3') => Packet::Pong,
        Some('4') => {
            let Some(kind) = chars.next() else {
                return Packet::Other;
            };
            let rest = skip_namespace(&frame[2..]);
            match kind {
                '0' => Packet::Connected,
                '1' => Packet::Disconnect,
                '4' => Packet::ConnectError(rest),
                '2' => match leading_u64(rest) {
                    (id, args) if args.starts_with('[') => Packet::Event { id, args },
                    _ => Packet::Other,
                },
                '3' => match leading_u64(rest) {
                    (Some(id), args) => Packet::Ack { id, args },
                    _ => Packet::Other,
                },
                _ => Packet::Other,
            }
        }
        _ => Packet::Other,
    }
}

/// The name of an event (the first element of its arguments), if it is a plain string.
pub fn event_name(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("[\"")?;
    rest.find('"').map(|end| &rest[..end])
}

/// The second argument of an event when it is a string without escapes (the bench's room).
pub fn event_room(args: &str) -> Option<&str> {
    let name = event_name(args)?;
    let rest = args[2 + name.len()..].strip_prefix("\",\"")?;
    rest.find('"').map(|end| &rest[..end])
}

/// The scheduled send time (unix µs) the bench put in the data of a publish (`"t":…`).
pub fn data_t(args: &str) -> Option<u64> {
    let i = memchr::memmem::find(args.as_bytes(), br#""t":"#)?;
    leading_u64(&args[i + 4..]).0
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `42<id>["join","<room>"]`.
pub fn join(room: &str, id: u64) -> String {
    format!("42{id}[\"join\",{}]", quoted(room))
}

/// `42<index>["publish","<room>",{"t":<unix µs>,"p":"<padding>"}]` (no `p` without padding).
pub fn publish(room: &str, index: u64, t_unix_us: u64, padding: &str) -> String {
    let mut out = String::with_capacity(48 + room.len() + padding.len());
    let _ = write!(
        out,
        "42{index}[\"publish\",{},{{\"t\":{t_unix_us}",
        quoted(room)
    );
    if !padding.is_empty() {
        let _ = write!(out, ",\"p\":{}", quoted(padding));
    }
    out.push_str("}]");
    out
}

/// The Socket.IO endpoint of a server URL: `ws://host:port` (or any URL without
/// `/socket.io/`) becomes `ws://host:port/socket.io/?EIO=4&transport=websocket`.
pub fn endpoint(url: &str) -> String {
    if url.contains("/socket.io/") {
        return url.to_string();
    }
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = url[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(url.len());
    format!("{}/socket.io/?EIO=4&transport=websocket", &url[..host_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_and_socket_io_packets() {
        assert_eq!(
            parse(r#"0{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#),
            Packet::Open
        );
        assert_eq!(parse("1"), Packet::Close);
        assert_eq!(parse("2"), Packet::Ping);
        assert_eq!(parse("2probe"), Packet::Ping);
        assert_eq!(parse("3"), Packet::Pong);
        assert_eq!(parse(r#"40{"sid":"x"}"#), Packet::Connected);
        assert_eq!(parse("41"), Packet::Disconnect);
        assert_eq!(
            parse(r#"44{"message":"no"}"#),
            Packet::ConnectError(r#"{"message":"no"}"#)
        );
        assert_eq!(
            parse(r#"42["event","r1",{"t":5}]"#),
            Packet::Event {
                id: None,
                args: r#"["event","r1",{"t":5}]"#
            }
        );
        assert_eq!(
            parse(r#"4217["join","r"]"#),
            Packet::Event {
                id: Some(17),
                args: r#"["join","r"]"#
            }
        );
        assert_eq!(
            parse("43123[]"),
            Packet::Ack {
                id: 123,
                args: "[]"
            }
        );
        assert_eq!(
            parse("43/admin,9[true]"),
            Packet::Ack {
                id: 9,
                args: "[true]"
            }
        );
        assert_eq!(parse("43[]"), Packet::Other, "an ack needs an id");
        assert_eq!(parse("42"), Packet::Other);
        assert_eq!(parse("4"), Packet::Other);
        assert_eq!(parse("6"), Packet::Other);
        assert_eq!(parse(""), Packet::Other);
    }

    #[test]
    fn event_fields() {
        let args = r#"["event","bench-r7",{"t":1700000000123456,"p":"xx"}]"#;
        assert_eq!(event_name(args), Some("event"));
        assert_eq!(event_room(args), Some("bench-r7"));
        assert_eq!(data_t(args), Some(1_700_000_000_123_456));
        assert_eq!(event_room(r#"["event",{"t":1}]"#), None);
        assert_eq!(data_t(r#"["event","r",{}]"#), None);
        assert_eq!(event_name("[1]"), None);
    }

    #[test]
    fn client_frames_round_trip() {
        assert_eq!(join("r\"1", 3), r#"423["join","r\"1"]"#);
        let p = publish("bench-1", 42, 1_700_000_000_123_456, "xxx");
        assert_eq!(
            p,
            r#"4242["publish","bench-1",{"t":1700000000123456,"p":"xxx"}]"#
        );
        match parse(&p) {
            Packet::Event { id, args } => {
                assert_eq!(id, Some(42));
                assert_eq!(event_name(args), Some("publish"));
                assert_eq!(event_room(args), Some("bench-1"));
                assert_eq!(data_t(args), Some(1_700_000_000_123_456));
                let v: serde_json::Value = serde_json::from_str(args).unwrap();
                assert_eq!(v[2]["p"], "xxx");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(publish("r", 0, 1, ""), r#"420["publish","r",{"t":1}]"#);
    }

    #[test]
    fn endpoints() {
        let want = "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket";
        assert_eq!(endpoint("ws://127.0.0.1:3000"), want);
        assert_eq!(endpoint("ws://127.0.0.1:3000/"), want);
        assert_eq!(endpoint("ws://127.0.0.1:3000/v1/ws"), want);
        assert_eq!(endpoint(want), want);
    }
}
