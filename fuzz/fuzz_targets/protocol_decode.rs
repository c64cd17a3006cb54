//! Fuzzes the protocol-v1 decoders with arbitrary frames.
//!
//! - `decode_client` must never panic. For every message it accepts, the validation the server
//!   applies (`RoomId::new`, `ClientId::new`, `OpId::new`, `RoomKind::parse`,
//!   `Sequencer::check_since`) must not panic either, and the frames the server answers with,
//!   built from the decoded fields by the `outbound` encoders, must decode back to the same
//!   values with `decode_server`. A refused frame's `error` reply must round-trip too.
//! - `decode_server` must never panic, and every server frame it accepts must re-encode with the
//!   `outbound` encoders and decode again to the same message (and re-encode to the same text).
//!
//! Patterns use `..` and wildcard arms so that the target still builds when the protocol gains
//! messages or fields; a message or field the target does not know fails the round trip, which
//! says that the target needs extending.
//!
//! serde_json's `float_roundtrip` feature is on in this crate only, so that a float printed and
//! parsed again is bit-identical and messages compare with `==`.

#![no_main]

use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq, Sequencer};
use concord_protocol::outbound::{self, EventMsg};
use concord_protocol::{decode_client, decode_server, ClientMsg, ErrorCode, ServerMsg};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // Frames are text: valid UTF-8 is taken as is, anything else lossily (so the decoders also
    // see U+FFFD where the bytes were invalid).
    let text = String::from_utf8_lossy(data);
    client_side(&text);
    server_side(&text);
});

const HLC: &str = "0001763812345678-000000-gw-1";

fn client_side(text: &str) {
    let msg = match decode_client(text) {
        Ok(m) => m,
        Err(e) => {
            // The server answers with these fields in an `error` frame.
            let frame = outbound::error(
                e.id.as_deref(),
                e.room.as_deref(),
                ErrorCode::BadRequest,
                &e.message,
                None,
            );
            match decode_server(&frame) {
                Ok(ServerMsg::Error {
                    id,
                    room,
                    code,
                    message,
                    retry_after_ms,
                    ..
                }) => {
                    assert_eq!(id, e.id);
                    assert_eq!(room, e.room);
                    assert_eq!(code, "bad_request");
                    assert_eq!(message, e.message);
                    assert_eq!(retry_after_ms, None);
                }
                other => panic!("error frame {frame:?} decoded to {other:?}"),
            }
            return;
        }
    };
    let _ = msg.type_name();
    match msg {
        ClientMsg::Hello { client_id, token } => {
            let _ = ClientId::new(&client_id);
            let _ = token.as_deref().map(ClientId::new);
            let frame = outbound::welcome(&client_id, "gw-1", 1_763_812_345_678);
            match decode_server(&frame) {
                Ok(ServerMsg::Welcome {
                    client_id: c,
                    node,
                    server_time,
                    ..
                }) => {
                    assert_eq!(c, client_id);
                    assert_eq!(node, "gw-1");
                    assert_eq!(server_time, 1_763_812_345_678);
                }
                other => panic!("welcome {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Join {
            room,
            kind,
            since,
            history,
        } => {
            let _ = RoomId::new(&room);
            let kind = match kind.as_deref().map(RoomKind::parse) {
                Some(Ok(k)) => k.as_str().to_string(),
                Some(Err(e)) => {
                    let _ = e.to_string();
                    kind.unwrap_or_default()
                }
                None => "stream".to_string(),
            };
            let history = history.unwrap_or(0);
            let (epoch, seq) = match &since {
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
            let ev = outbound::event(&room, seq, &epoch, &kind, None, &data);
            let frame = outbound::joined(
                &room,
                &kind,
                &epoch,
                seq,
                since.is_some(),
                [ev.as_str()],
                &[],
            );
            match decode_server(&frame) {
                Ok(ServerMsg::Joined {
                    room: r,
                    kind: k,
                    epoch: e,
                    seq: s,
                    recovered,
                    events,
                    state,
                    ..
                }) => {
                    assert_eq!(
                        (r, k, e, s),
                        (room.clone(), kind.clone(), epoch.clone(), seq)
                    );
                    assert_eq!(recovered, since.is_some());
                    assert_eq!(state, None);
                    assert_eq!(events.len(), 1);
                    check_event(&events[0], &room, seq, &epoch, &kind, None);
                    assert_eq!(events[0].data, serde_json::json!({"n": 1}));
                }
                other => panic!("joined {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Leave { room } => {
            let _ = RoomId::new(&room);
            let frame = outbound::left(&room);
            match decode_server(&frame) {
                Ok(ServerMsg::Left { room: r, .. }) => assert_eq!(r, room),
                other => panic!("left {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Publish { room, id, data } => {
            let _ = RoomId::new(&room);
            let _ = OpId::new(&id);
            let frame = outbound::ack(&room, &id, 58, HLC);
            match decode_server(&frame) {
                Ok(ServerMsg::Ack {
                    room: r,
                    id: i,
                    seq,
                    hlc,
                    ..
                }) => assert_eq!(
                    (r, i, seq, hlc.as_str()),
                    (room.clone(), id.clone(), 58, HLC)
                ),
                other => panic!("ack {frame:?} decoded to {other:?}"),
            }
            // `data` is relayed verbatim inside the `event` every member receives, and inside
            // the `joined` of later joiners.
            let Some(value) = data_value(&data) else {
                return;
            };
            let ev = outbound::event(&room, 58, HLC, "c-1", Some(&id), &data);
            match decode_server(&ev) {
                Ok(ServerMsg::Event(e)) => {
                    check_event(&e, &room, 58, HLC, "c-1", Some(&id));
                    assert_eq!(e.data, value);
                }
                other => panic!("event {ev:?} decoded to {other:?}"),
            }
            let frame = outbound::joined(&room, "stream", "e1", 58, true, [ev.as_str()], &[]);
            match decode_server(&frame) {
                Ok(ServerMsg::Joined { events, .. }) => {
                    assert_eq!(events.len(), 1);
                    check_event(&events[0], &room, 58, HLC, "c-1", Some(&id));
                    assert_eq!(events[0].data, value);
                }
                other => panic!("joined {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Presence { room, data } => {
            let _ = RoomId::new(&room);
            let Some(value) = data_value(&data) else {
                return;
            };
            let frame = outbound::presence(&room, "c-1", (!value.is_null()).then_some(&*data));
            match decode_server(&frame) {
                Ok(ServerMsg::Presence {
                    room: r,
                    client_id,
                    data,
                    ..
                }) => {
                    assert_eq!((r, client_id.as_str()), (room, "c-1"));
                    assert_eq!(data, value);
                }
                other => panic!("presence {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Auth { token } => {
            let frame = outbound::auth_ok(&token, Some(1_763_899_999));
            match decode_server(&frame) {
                Ok(ServerMsg::AuthOk { user, exp, .. }) => {
                    assert_eq!((user, exp), (token, Some(1_763_899_999)))
                }
                other => panic!("auth_ok {frame:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Op {
            room,
            id,
            base,
            ops,
        } => {
            let _ = RoomId::new(&room);
            let _ = OpId::new(&id);
            let frame = outbound::ack_dropped(&room, &id, base, HLC, &[0, 2]);
            match decode_server(&frame) {
                Ok(ServerMsg::Ack {
                    room: r,
                    id: i,
                    seq,
                    dropped,
                    ..
                }) => assert_eq!(
                    (r, i, seq, dropped),
                    (room.clone(), id.clone(), base, vec![0, 2])
                ),
                other => panic!("ack {frame:?} decoded to {other:?}"),
            }
            // The committed ops are relayed (transformed, but here as sent) in the `event`.
            let Some(value) = data_value(&ops) else {
                return;
            };
            let ev = outbound::op_event(&room, base, HLC, "c-1", Some(&id), &ops, Some("h1"));
            match decode_server(&ev) {
                Ok(ServerMsg::Event(e)) => {
                    check_event(&e, &room, base, HLC, "c-1", Some(&id));
                    assert_eq!(e.data, Value::Null);
                    assert_eq!(e.ops, (!value.is_null()).then_some(value));
                    assert_eq!(e.hash.as_deref(), Some("h1"));
                }
                other => panic!("op event {ev:?} decoded to {other:?}"),
            }
        }
        ClientMsg::Drift { room, seq, hash } => {
            let _ = RoomId::new(&room);
            let _ = (seq, hash.len());
        }
        // Messages added to the protocol after this target was written.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

fn check_event(e: &EventMsg, room: &str, seq: u64, hlc: &str, from: &str, id: Option<&str>) {
    assert_eq!(e.room, room);
    assert_eq!(e.seq, seq);
    assert_eq!(e.hlc, hlc);
    assert_eq!(e.from, from);
    assert_eq!(e.id.as_deref(), id);
}

/// The frame the server would send for `msg`, built with the `outbound` encoders; None for
/// messages without an encoder (unknown types and error codes).
fn encode(msg: &ServerMsg) -> Option<String> {
    Some(match msg {
        ServerMsg::Welcome {
            client_id,
            node,
            server_time,
            ..
        } => outbound::welcome(client_id, node, *server_time),
        ServerMsg::Joined {
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
            ..
        } => {
            let evs: Vec<String> = events.iter().map(encode_event).collect::<Option<_>>()?;
            let state = state.as_ref().map(to_json);
            let presence = to_json(presence);
            let members = to_json(members);
            let mut extra = vec![
                ("presence", presence.as_str()),
                ("members", members.as_str()),
            ];
            if let Some(s) = &state {
                extra.push(("state", s.as_str()));
            }
            let hash = hash.as_ref().map(to_json);
            if let Some(h) = &hash {
                extra.push(("hash", h.as_str()));
            }
            outbound::joined(
                room,
                kind,
                epoch,
                *seq,
                *recovered,
                evs.iter().map(|s| s.as_str()),
                &extra,
            )
        }
        ServerMsg::Left { room, .. } => outbound::left(room),
        ServerMsg::Presence {
            room,
            client_id,
            data,
            ..
        } => {
            let raw = serde_json::value::to_raw_value(data).expect("a Value serializes");
            outbound::presence(room, client_id, (!data.is_null()).then_some(&*raw))
        }
        ServerMsg::MemberJoined { room, member, .. } => {
            outbound::member("member_joined", room, member)
        }
        ServerMsg::MemberLeft { room, member, .. } => outbound::member("member_left", room, member),
        ServerMsg::AuthOk { user, exp, .. } => outbound::auth_ok(user, *exp),
        ServerMsg::Ack {
            room,
            id,
            seq,
            hlc,
            dropped,
            ..
        } => outbound::ack_dropped(room, id, *seq, hlc, dropped),
        ServerMsg::Event(e) => encode_event(e)?,
        ServerMsg::Error {
            id,
            room,
            code,
            message,
            retry_after_ms,
            ..
        } => {
            // Only the codes of protocol v1 have an encoder.
            let code = ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)?;
            outbound::error(
                id.as_deref(),
                room.as_deref(),
                code,
                message,
                *retry_after_ms,
            )
        }
        ServerMsg::Other(_) => return None,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn server_side(text: &str) {
    let Ok(msg) = decode_server(text) else {
        return;
    };
    let Some(frame) = encode(&msg) else {
        return;
    };
    let again = decode_server(&frame)
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded as {frame:?}, which fails to decode: {e}"));
    assert_eq!(again, msg, "round trip through {frame:?}");
    assert_eq!(encode(&again).as_deref(), Some(frame.as_str()));
}

/// `data` as a client decodes it.
///
/// Known bug (found by this target): `decode_client` accepts as `data` any JSON *text* that
/// `RawValue` accepts, which includes numbers out of f64 range (`1e400`), lone surrogate escapes
/// (`"\ud800"`) and nesting deeper than serde_json's recursion limit (128). The server relays
/// such data verbatim, and `decode_server` then fails on the `event` and on every `joined` that
/// replays it. With `CONCORD_FUZZ_ALLOW_KNOWN=1` in the environment this case is skipped, so that
/// fuzzing can go on past it; without it, it fails.
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

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("a decoded message serializes")
}

/// A stream event (`data`) or a doc event (`ops`, `hash`); None for a mix of both, which the
/// server never sends and no encoder builds.
fn encode_event(e: &EventMsg) -> Option<String> {
    let raw = |v: &Value| serde_json::value::to_raw_value(v).expect("a Value serializes");
    let id = e.id.as_deref();
    match &e.ops {
        Some(ops) if e.data.is_null() => Some(outbound::op_event(
            &e.room,
            e.seq,
            &e.hlc,
            &e.from,
            id,
            &raw(ops),
            e.hash.as_deref(),
        )),
        None if e.hash.is_none() => Some(outbound::event(
            &e.room,
            e.seq,
            &e.hlc,
            &e.from,
            id,
            &raw(&e.data),
        )),
        _ => None,
    }
}
