//! Fuzzes the protocol-v1 decoders with arbitrary frames.
//!
//! - `decode_client` must never panic. For every message it accepts, the validation the server
//!   applies (`RoomId::new`, `ClientId::new`, `OpId::new`, `RoomKind::parse`,
//!   `Sequencer::check_since`) must not panic either, the message must encode and decode back to
//!   itself, and the frames the server answers with, built from the decoded fields as
//!   `ServerMsg`s, must decode back to the same values with `decode_server`. A refused frame's
//!   `error` reply must round-trip too.
//! - `decode_server` must never panic, and every server frame it accepts must encode, decode
//!   again to the same message and encode again to the same text.
//!
//! Patterns use `..` and wildcard arms so that the target still builds when the protocol gains
//! messages or fields; a message or field the target does not know fails the round trip, which
//! says that the target needs extending.
//!
//! serde_json's `float_roundtrip` feature is on in this crate only, so that a float printed and
//! parsed again is bit-identical and messages compare with `==`.

#![no_main]

use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq, Sequencer};
use concord_protocol::outbound::{Ack, AuthOk, ErrorMsg, Event, Joined, Left, Presence, Welcome};
use concord_protocol::{decode_client, decode_server, ClientMsg, ErrorCode, Json, Part, ServerMsg};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    // Frames are text: valid UTF-8 is taken as is, anything else lossily (so the decoders also
    // see U+FFFD where the bytes were invalid).
    let text = String::from_utf8_lossy(data);
    client_side(&text);
    server_side(&text);
});

const HLC: &str = "0001763812345678-000000-gw-1";

/// Encodes `msg`, decodes the frame and hands the result to `check`.
fn reply(msg: ServerMsg<'_>, check: impl FnOnce(ServerMsg<'static>)) {
    let frame = msg.encode();
    match decode_server(&frame) {
        Ok(back) => check(back),
        Err(e) => panic!("{frame:?} does not decode: {e}"),
    }
}

fn event<'a>(
    room: &'a str,
    seq: u64,
    hlc: &'a str,
    from: &'a str,
    id: Option<&'a str>,
) -> Event<'a> {
    Event {
        room: room.into(),
        seq,
        hlc: hlc.into(),
        from: from.into(),
        id: id.map(Into::into),
        data: None,
        ops: None,
        hash: None,
    }
}

fn client_side(text: &str) {
    let msg = match decode_client(text) {
        Ok(m) => m,
        Err(e) => {
            // The server answers with these fields in an `error` frame.
            let error = ServerMsg::Error(ErrorMsg {
                id: e.id.as_deref().map(Into::into),
                room: e.room.as_deref().map(Into::into),
                ..ErrorMsg::new(ErrorCode::BadRequest, e.message.as_str())
            });
            reply(error, |back| match back {
                ServerMsg::Error(err) => {
                    assert_eq!(err.id.as_deref(), e.id.as_deref());
                    assert_eq!(err.room.as_deref(), e.room.as_deref());
                    assert_eq!(err.code, "bad_request");
                    assert_eq!(err.message, e.message);
                    assert_eq!(err.retry_after_ms, None);
                }
                other => panic!("error decoded to {other:?}"),
            });
            return;
        }
    };
    let _ = msg.type_name();
    // The message itself round-trips.
    let frame = msg.encode();
    match decode_client(&frame) {
        Ok(back) => assert_eq!(back, msg, "round trip through {frame:?}"),
        Err(e) => panic!(
            "{msg:?} encoded as {frame:?}, which fails to decode: {}",
            e.message
        ),
    }
    match &msg {
        ClientMsg::Hello(h) => {
            let _ = ClientId::new(&h.client_id);
            let _ = h.token.as_deref().map(ClientId::new);
            let welcome = ServerMsg::Welcome(Welcome {
                client_id: Cow::Borrowed(&h.client_id),
                node: "gw-1".into(),
                server_time: 1_763_812_345_678,
            });
            reply(welcome, |back| match back {
                ServerMsg::Welcome(w) => {
                    assert_eq!(w.client_id, h.client_id);
                    assert_eq!(w.node, "gw-1");
                    assert_eq!(w.server_time, 1_763_812_345_678);
                }
                other => panic!("welcome decoded to {other:?}"),
            });
        }
        ClientMsg::Join(j) => {
            let room = &*j.room;
            let _ = RoomId::new(room);
            let kind = match j.kind.as_deref().map(RoomKind::parse) {
                Some(Ok(k)) => k.as_str().to_string(),
                Some(Err(e)) => {
                    let _ = e.to_string();
                    j.kind.as_deref().unwrap_or_default().to_string()
                }
                None => "stream".to_string(),
            };
            let history = j.history.unwrap_or(0);
            let (epoch, seq) = match &j.since {
                Some(s) => {
                    // The room actor's decision, for a few room heads around `since`.
                    for head in [
                        0,
                        1,
                        s.seq.saturating_sub(1),
                        s.seq,
                        s.seq.saturating_add(1),
                        u64::MAX,
                    ] {
                        let seqr = Sequencer::new(Epoch(s.epoch.clone()), Seq(head));
                        let _ = seqr.check_since(&s.epoch, Seq(s.seq), 10_000);
                        let _ = seqr.check_since("e-other", Seq(s.seq), history);
                    }
                    (s.epoch.clone(), s.seq)
                }
                None => (String::new(), history),
            };
            let data = RawValue::from_string("{\"n\":1}".to_string()).unwrap();
            // Strings of the request end up in the reply: room, kind, epoch (here also as hlc
            // and sender of the replayed event).
            let ev = ServerMsg::Event(Event {
                data: Some(Json::from(&*data)),
                ..event(room, seq, &epoch, &kind, None)
            })
            .encode();
            let joined = ServerMsg::Joined(Joined {
                room: room.into(),
                kind: kind.as_str().into(),
                epoch: epoch.as_str().into(),
                seq,
                recovered: j.since.is_some(),
                events: vec![Part::Encoded(&ev)],
                state: None,
                hash: None,
                presence: Part::default(),
                members: Part::default(),
            });
            reply(joined, |back| match back {
                ServerMsg::Joined(b) => {
                    assert_eq!(
                        (&*b.room, &*b.kind, &*b.epoch, b.seq),
                        (room, kind.as_str(), epoch.as_str(), seq)
                    );
                    assert_eq!(b.recovered, j.since.is_some());
                    assert_eq!(b.state, None);
                    assert_eq!(b.events.len(), 1);
                    let e = b.events.into_iter().next().unwrap().into_value().unwrap();
                    check_event(&e, room, seq, &epoch, &kind, None);
                    assert_eq!(e.data.unwrap().get(), "{\"n\":1}");
                }
                other => panic!("joined decoded to {other:?}"),
            });
        }
        ClientMsg::Leave(l) => {
            let _ = RoomId::new(&l.room);
            reply(
                ServerMsg::Left(Left {
                    room: Cow::Borrowed(&l.room),
                }),
                |back| match back {
                    ServerMsg::Left(b) => assert_eq!(b.room, l.room),
                    other => panic!("left decoded to {other:?}"),
                },
            );
        }
        ClientMsg::Publish(p) => {
            let _ = RoomId::new(&p.room);
            let _ = OpId::new(&p.id);
            let ack = ServerMsg::Ack(Ack {
                room: Cow::Borrowed(&p.room),
                id: Cow::Borrowed(&p.id),
                seq: 58,
                hlc: HLC.into(),
                dropped: Cow::Borrowed(&[]),
            });
            reply(ack, |back| match back {
                ServerMsg::Ack(a) => {
                    assert_eq!((&a.room, &a.id, a.seq, &*a.hlc), (&p.room, &p.id, 58, HLC))
                }
                other => panic!("ack decoded to {other:?}"),
            });
            // `data` is relayed verbatim inside the `event` every member receives, and inside
            // the `joined` of later joiners.
            let Some(value) = data_value(p.data) else {
                return;
            };
            let ev = Event {
                data: Some(Json::from(p.data)),
                ..event(&p.room, 58, HLC, "c-1", Some(&p.id))
            };
            let frame = ServerMsg::Event(ev.clone()).encode();
            let check = |e: &Event| {
                check_event(e, &p.room, 58, HLC, "c-1", Some(&p.id));
                assert_eq!(e.data.as_ref().unwrap().parse::<Value>().unwrap(), value);
            };
            reply(ServerMsg::Event(ev), |back| match back {
                ServerMsg::Event(e) => check(&e),
                other => panic!("event decoded to {other:?}"),
            });
            let joined = ServerMsg::Joined(Joined {
                room: Cow::Borrowed(&p.room),
                kind: "stream".into(),
                epoch: "e1".into(),
                seq: 58,
                recovered: true,
                events: vec![Part::Encoded(&frame)],
                state: None,
                hash: None,
                presence: Part::default(),
                members: Part::default(),
            });
            reply(joined, |back| match back {
                ServerMsg::Joined(j) => {
                    assert_eq!(j.events.len(), 1);
                    check(&j.events.into_iter().next().unwrap().into_value().unwrap());
                }
                other => panic!("joined decoded to {other:?}"),
            });
        }
        ClientMsg::Presence(p) => {
            let _ = RoomId::new(&p.room);
            let Some(value) = data_value(p.data) else {
                return;
            };
            let presence = ServerMsg::Presence(Presence {
                room: Cow::Borrowed(&p.room),
                client_id: "c-1".into(),
                data: Json::from(p.data),
            });
            reply(presence, |back| match back {
                ServerMsg::Presence(b) => {
                    assert_eq!((&b.room, &*b.client_id), (&p.room, "c-1"));
                    assert_eq!(b.data.parse::<Value>().unwrap(), value);
                }
                other => panic!("presence decoded to {other:?}"),
            });
        }
        ClientMsg::Auth(a) => {
            let ok = ServerMsg::AuthOk(AuthOk {
                user: Cow::Borrowed(&a.token),
                exp: Some(1_763_899_999),
            });
            reply(ok, |back| match back {
                ServerMsg::AuthOk(b) => {
                    assert_eq!((&b.user, b.exp), (&a.token, Some(1_763_899_999)))
                }
                other => panic!("auth_ok decoded to {other:?}"),
            });
        }
        ClientMsg::Op(op) => {
            let _ = RoomId::new(&op.room);
            let _ = OpId::new(&op.id);
            let ack = ServerMsg::Ack(Ack {
                room: Cow::Borrowed(&op.room),
                id: Cow::Borrowed(&op.id),
                seq: op.base,
                hlc: HLC.into(),
                dropped: Cow::Borrowed(&[0, 2]),
            });
            reply(ack, |back| match back {
                ServerMsg::Ack(a) => assert_eq!(
                    (&a.room, &a.id, a.seq, &*a.dropped),
                    (&op.room, &op.id, op.base, &[0usize, 2][..])
                ),
                other => panic!("ack decoded to {other:?}"),
            });
            // The committed ops are relayed (transformed, but here as sent) in the `event`.
            let Some(value) = data_value(op.ops) else {
                return;
            };
            let ev = ServerMsg::Event(Event {
                ops: Some(Json::from(op.ops)),
                hash: Some("h1".into()),
                ..event(&op.room, op.base, HLC, "c-1", Some(&op.id))
            });
            reply(ev, |back| match back {
                ServerMsg::Event(e) => {
                    check_event(&e, &op.room, op.base, HLC, "c-1", Some(&op.id));
                    assert_eq!(e.data, None);
                    assert_eq!(e.ops.unwrap().parse::<Value>().unwrap(), value);
                    assert_eq!(e.hash.as_deref(), Some("h1"));
                }
                other => panic!("op event decoded to {other:?}"),
            });
        }
        ClientMsg::Drift(d) => {
            let _ = RoomId::new(&d.room);
            let _ = (d.seq, d.hash.len());
        }
        // Messages added to the protocol after this target was written.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

fn check_event(e: &Event, room: &str, seq: u64, hlc: &str, from: &str, id: Option<&str>) {
    assert_eq!(e.room, room);
    assert_eq!(e.seq, seq);
    assert_eq!(e.hlc, hlc);
    assert_eq!(e.from, from);
    assert_eq!(e.id.as_deref(), id);
}

fn server_side(text: &str) {
    let Ok(msg) = decode_server(text) else {
        return;
    };
    let frame = msg.encode();
    let again = decode_server(&frame)
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded as {frame:?}, which fails to decode: {e}"));
    assert_eq!(again, msg, "round trip through {frame:?}");
    assert_eq!(again.encode(), frame);
}

/// `data` as a client reads it.
///
/// Known bug (found by this target, fixed since): `decode_client` accepted as `data` any JSON
/// *text* that `RawValue` accepts, which includes numbers out of f64 range (`1e400`), lone
/// surrogate escapes (`"\ud800"`) and nesting deeper than serde_json's recursion limit (128).
/// The server relayed such data verbatim, and clients then failed to read it. With
/// `CONCORD_FUZZ_ALLOW_KNOWN=1` in the environment this case is skipped; without it, it fails.
fn data_value(data: &RawValue) -> Option<Value> {
    static ALLOW_KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match serde_json::from_str(data.get()) {
        Ok(v) => Some(v),
        Err(_)
            if *ALLOW_KNOWN
                .get_or_init(|| std::env::var_os("CONCORD_FUZZ_ALLOW_KNOWN").is_some()) =>
        {
            None
        }
        Err(e) => panic!(
            "data {:?} was accepted but no client can decode it: {e}",
            data.get()
        ),
    }
}
