//! Every message type, in both directions, encodes and decodes back to itself, and encodes to
//! the frames that the protocol documents show (field names, order, omitted optional fields).

use concord_protocol::inbound::{self, Since};
use concord_protocol::outbound::{self, MemberInfo, Other};
use concord_protocol::{decode_client, decode_server, ClientMsg, ErrorCode, Json, Part, ServerMsg};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// Generators

/// Strings with the characters that need escaping in JSON, and non-ASCII ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9:_-]{0,12}", r#"[a-z"\\/\u{0}-\u{1f}é€😀 ]{0,8}"#,]
}

fn cow() -> impl Strategy<Value = Cow<'static, str>> {
    text().prop_map(Cow::Owned)
}

fn opt_cow() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(cow())
}

/// JSON values whose text survives a print-and-parse unchanged (no floats).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(text(), value(), 0..3).prop_map(|m| m.into_iter().collect())
}

/// Raw JSON as a client sends it: `'static` by leaking (a few bytes per case, in a test).
fn raw() -> impl Strategy<Value = &'static RawValue> {
    value().prop_map(|v| &*Box::leak(serde_json::value::to_raw_value(&v).unwrap()))
}

fn json() -> impl Strategy<Value = Json<'static>> {
    value().prop_map(|v| Json::encode(&v).unwrap())
}

fn client_msg() -> impl Strategy<Value = ClientMsg<'static>> {
    prop_oneof![
        (cow(), opt_cow())
            .prop_map(|(client_id, token)| ClientMsg::Hello(inbound::Hello { client_id, token })),
        (
            cow(),
            opt_cow(),
            proptest::option::of((text(), any::<u64>())),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(room, kind, since, history)| ClientMsg::Join(inbound::Join {
                    room,
                    kind,
                    since: since.map(|(epoch, seq)| Since { epoch, seq }),
                    history,
                })
            ),
        cow().prop_map(|room| ClientMsg::Leave(inbound::Leave { room })),
        (cow(), cow(), raw(), any::<bool>()).prop_map(|(room, id, data, resend)| {
            ClientMsg::Publish(inbound::Publish {
                room,
                id,
                data,
                resend,
            })
        }),
        (cow(), cow(), any::<u64>(), raw()).prop_map(|(room, id, base, ops)| ClientMsg::Op(
            inbound::Op {
                room,
                id,
                base,
                ops
            }
        )),
        (cow(), raw())
            .prop_map(|(room, data)| ClientMsg::Presence(inbound::Presence { room, data })),
        (cow(), any::<u64>(), cow())
            .prop_map(|(room, seq, hash)| ClientMsg::Drift(inbound::Drift { room, seq, hash })),
        cow().prop_map(|token| ClientMsg::Auth(inbound::Auth { token })),
    ]
}

fn event() -> impl Strategy<Value = outbound::Event<'static>> {
    (
        (cow(), any::<u64>(), cow(), cow(), opt_cow()),
        // A stream event (`data`, `null` included), or a doc event (`ops`, maybe `hash`).
        prop_oneof![
            json().prop_map(|d| (Some(d), None, None)),
            (json(), opt_cow()).prop_map(|(o, h)| (None, Some(o), h)),
        ],
    )
        .prop_map(
            |((room, seq, hlc, from, id), (data, ops, hash))| outbound::Event {
                room,
                seq,
                hlc,
                from,
                id,
                data,
                ops,
                hash,
            },
        )
}

fn member() -> impl Strategy<Value = MemberInfo> {
    (text(), text(), object()).prop_map(|(client_id, user, meta)| MemberInfo {
        client_id,
        user,
        meta,
    })
}

fn server_msg() -> impl Strategy<Value = ServerMsg<'static>> {
    prop_oneof![
        (cow(), cow(), any::<u64>()).prop_map(|(client_id, node, server_time)| {
            ServerMsg::Welcome(outbound::Welcome {
                client_id,
                node,
                server_time,
            })
        }),
        (cow(), proptest::option::of(any::<u64>()))
            .prop_map(|(user, exp)| ServerMsg::AuthOk(outbound::AuthOk { user, exp })),
        (
            (cow(), cow(), cow(), any::<u64>(), any::<bool>()),
            proptest::collection::vec(event(), 0..3),
            proptest::option::of((value(), opt_cow())),
            object(),
            proptest::collection::vec(member(), 0..3),
        )
            .prop_map(
                |((room, kind, epoch, seq, recovered), events, doc, presence, members)| {
                    let (state, hash) = match doc {
                        Some((s, h)) => (Some(Cow::Owned(s)), h),
                        None => (None, None),
                    };
                    ServerMsg::Joined(outbound::Joined {
                        room,
                        kind,
                        epoch,
                        seq,
                        recovered,
                        events: events.into_iter().map(Part::Value).collect(),
                        state,
                        hash,
                        presence: Part::Value(presence),
                        members: Part::Value(members),
                    })
                }
            ),
        cow().prop_map(|room| ServerMsg::Left(outbound::Left { room })),
        (
            cow(),
            cow(),
            any::<u64>(),
            cow(),
            proptest::collection::vec(0..100usize, 0..4)
        )
            .prop_map(
                |(room, id, seq, hlc, dropped)| ServerMsg::Ack(outbound::Ack {
                    room,
                    id,
                    seq,
                    hlc,
                    dropped: dropped.into(),
                })
            ),
        event().prop_map(ServerMsg::Event),
        (cow(), cow(), json()).prop_map(|(room, client_id, data)| ServerMsg::Presence(
            outbound::Presence {
                room,
                client_id,
                data
            }
        )),
        (cow(), member(), any::<bool>()).prop_map(|(room, m, joined)| {
            let m = outbound::Member {
                room,
                member: Cow::Owned(m),
            };
            if joined {
                ServerMsg::MemberJoined(m)
            } else {
                ServerMsg::MemberLeft(m)
            }
        }),
        (
            opt_cow(),
            opt_cow(),
            cow(),
            cow(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(id, room, code, message, retry_after_ms)| {
                ServerMsg::Error(outbound::ErrorMsg {
                    id,
                    room,
                    code,
                    message,
                    retry_after_ms,
                })
            }),
        "[a-z_]{1,12}"
            .prop_filter("a known type", |t| !KNOWN_SERVER_TYPES
                .contains(&t.as_str()))
            .prop_map(|ty| ServerMsg::Other(Other { ty })),
    ]
}

const KNOWN_SERVER_TYPES: [&str; 10] = [
    "welcome",
    "auth_ok",
    "joined",
    "left",
    "ack",
    "event",
    "presence",
    "member_joined",
    "member_left",
    "error",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        let frame = msg.encode();
        let back = decode_client(&frame)
            .unwrap_or_else(|e| panic!("{frame} does not decode: {}", e.message));
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(back.encode(), frame);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        let frame = msg.encode();
        let back = decode_server(&frame)
            .unwrap_or_else(|e| panic!("{frame} does not decode: {e}"));
        prop_assert_eq!(back.type_name(), msg.type_name());
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(back.encode(), frame);
    }

    /// The server's `joined` embeds already-encoded event frames, presence and members: the
    /// same text as encoding their values.
    #[test]
    fn encoded_parts_encode_like_their_values(
        events in proptest::collection::vec(event(), 0..4),
        presence in object(),
        members in proptest::collection::vec(member(), 0..3),
    ) {
        let frames: Vec<String> =
            events.iter().map(|e| ServerMsg::Event(e.clone()).encode()).collect();
        let presence_text = serde_json::to_string(&presence).unwrap();
        let members_text = serde_json::to_string(&members).unwrap();
        let joined = |events, presence, members| {
            ServerMsg::Joined(outbound::Joined {
                room: "r".into(),
                kind: "stream".into(),
                epoch: "e".into(),
                seq: 9,
                recovered: true,
                events,
                state: None,
                hash: None,
                presence,
                members,
            })
        };
        let spliced = joined(
            frames.iter().map(|f| Part::Encoded(f.as_str())).collect(),
            Part::Encoded(&presence_text),
            Part::Encoded(&members_text),
        );
        let typed = joined(
            events.into_iter().map(Part::Value).collect(),
            Part::Value(presence),
            Part::Value(members),
        );
        prop_assert_eq!(spliced.encode(), typed.encode());
        prop_assert_eq!(decode_server(&spliced.encode()).unwrap(), typed);
    }
}

// ---------------------------------------------------------------------------------------------
// The documents' examples

/// Examples of the normative core (shared protocol-v1.md), verbatim where they are complete.
const CORE_CLIENT: &[&str] = &[
    r#"{"type":"hello","client_id":"c-7f3a…","token":"<jwt, optional in dev mode>"}"#,
    r#"{"type":"join","room":"chat:lobby","kind":"stream","since":{"epoch":"e1","seq":41}}"#,
    r#"{"type":"leave","room":"chat:lobby"}"#,
    r#"{"type":"publish","room":"chat:lobby","id":"m-1","data":{"text":"hi"}}"#,
    r#"{"type":"presence","room":"chat:lobby","data":{"cursor":12}}"#,
];
const CORE_SERVER: &[&str] = &[
    r#"{"type":"welcome","client_id":"c-7f3a…","node":"gw-1","server_time":1763812345678}"#,
    r#"{"type":"left","room":"chat:lobby"}"#,
    r#"{"type":"ack","room":"chat:lobby","id":"m-1","seq":58,"hlc":"…"}"#,
    r#"{"type":"event","room":"chat:lobby","seq":58,"hlc":"…","from":"c-7f3a…","id":"m-1","data":{"text":"hi"}}"#,
    r#"{"type":"presence","room":"chat:lobby","client_id":"c-7f3a…","data":{"cursor":12}}"#,
    r#"{"type":"error","id":"m-1","room":"chat:lobby","code":"rate_limited","message":"…","retry_after_ms":250}"#,
];

#[test]
fn core_examples_decode_and_encode_to_the_same_text() {
    for frame in CORE_CLIENT {
        let msg = decode_client(frame).unwrap_or_else(|e| panic!("{frame}: {}", e.message));
        assert_eq!(&msg.encode(), frame);
    }
    for frame in CORE_SERVER {
        let msg = decode_server(frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert_eq!(&msg.encode(), frame);
    }
}

/// The frames the server builds, from borrowed fields as it holds them, are the core's
/// examples.
#[test]
fn server_frames_built_like_the_server_match_the_core() {
    let data: Box<RawValue> = serde_json::from_str(r#"{"text":"hi"}"#).unwrap();
    let event = ServerMsg::Event(outbound::Event {
        room: "chat:lobby".into(),
        seq: 58,
        hlc: "…".into(),
        from: "c-7f3a…".into(),
        id: Some("m-1".into()),
        data: Some(Json::from(&*data)),
        ops: None,
        hash: None,
    })
    .encode();
    assert_eq!(event, CORE_SERVER[3]);
    let ack = ServerMsg::Ack(outbound::Ack {
        room: "chat:lobby".into(),
        id: "m-1".into(),
        seq: 58,
        hlc: "…".into(),
        dropped: Cow::Borrowed(&[]),
    });
    assert_eq!(ack.encode(), CORE_SERVER[2]);
    let error = ServerMsg::Error(outbound::ErrorMsg {
        id: Some("m-1".into()),
        room: Some("chat:lobby".into()),
        retry_after_ms: Some(250),
        ..outbound::ErrorMsg::new(ErrorCode::RateLimited, "…")
    });
    assert_eq!(error.encode(), CORE_SERVER[5]);
    let left = ServerMsg::Presence(outbound::Presence {
        room: "chat:lobby".into(),
        client_id: "c-7f3a…".into(),
        data: Json::null(),
    });
    assert_eq!(
        left.encode(),
        r#"{"type":"presence","room":"chat:lobby","client_id":"c-7f3a…","data":null}"#
    );
    let joined = ServerMsg::Joined(outbound::Joined {
        room: "chat:lobby".into(),
        kind: "stream".into(),
        epoch: "e1".into(),
        seq: 58,
        recovered: true,
        events: vec![Part::Encoded(&event)],
        state: None,
        hash: None,
        presence: Part::Encoded(r#"{"c-1":{"cursor":3}}"#),
        members: Part::Encoded("[]"),
    })
    .encode();
    assert_eq!(
        joined,
        format!(
            r#"{{"type":"joined","room":"chat:lobby","kind":"stream","epoch":"e1","seq":58,"recovered":true,"events":[{event}],"presence":{{"c-1":{{"cursor":3}}}},"members":[]}}"#
        )
    );
    let doc = json!({"title": "Plan"});
    let doc_joined = ServerMsg::Joined(outbound::Joined {
        room: "d".into(),
        kind: "doc".into(),
        epoch: "e1".into(),
        seq: 3,
        recovered: false,
        events: vec![],
        state: Some(Cow::Borrowed(&doc)),
        hash: Some("h".into()),
        presence: Part::default(),
        members: Part::default(),
    });
    assert_eq!(
        doc_joined.encode(),
        r#"{"type":"joined","room":"d","kind":"doc","epoch":"e1","seq":3,"recovered":false,"events":[],"state":{"title":"Plan"},"hash":"h","presence":{},"members":[]}"#
    );
}

/// Every complete example frame of docs/protocol.md (`→` client, `←` server) decodes and
/// encodes back to the same text; every `bad_request` the document shows for a frame that
/// decoding refuses is the error `decode_client` gives.
#[test]
fn protocol_doc_examples_decode_and_encode_to_the_same_text() {
    let doc = include_str!("../../../docs/protocol.md");
    let examples = doc_examples(doc);
    let (mut client, mut server, mut refusals) = (0, 0, 0);
    for (i, (dir, frame)) in examples.iter().enumerate() {
        match dir {
            Dir::Client => match decode_client(frame) {
                Ok(msg) => {
                    assert_eq!(&msg.encode(), frame, "client example");
                    client += 1;
                }
                Err(e) => {
                    // The server's answer follows; elided frames (`…` outside strings) are not
                    // what the document's error describes.
                    let Some((Dir::Server, answer)) = examples.get(i + 1) else {
                        continue;
                    };
                    let Ok(ServerMsg::Error(err)) = decode_server(answer) else {
                        continue;
                    };
                    if frame.contains('…') || err.code != "bad_request" {
                        continue;
                    }
                    assert_eq!(err.message, e.message, "the error for {frame}");
                    assert_eq!(err.id.as_deref(), e.id.as_deref(), "the id for {frame}");
                    assert_eq!(err.room.as_deref(), e.room.as_deref(), "room for {frame}");
                    refusals += 1;
                }
            },
            Dir::Server => {
                let msg = decode_server(frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
                assert!(
                    !matches!(msg, ServerMsg::Other(_)),
                    "unknown type in the document: {frame}"
                );
                assert_eq!(&msg.encode(), frame, "server example");
                server += 1;
            }
        }
    }
    // The document has many examples of each: a parser that finds none must not pass.
    assert!(client >= 50, "only {client} client examples");
    assert!(server >= 70, "only {server} server examples");
    assert!(refusals >= 5, "only {refusals} refused frames");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dir {
    Client,
    Server,
}

/// The example frames of a document: lines starting with `→ {` or `← {` (a frame may continue
/// on the next lines), without what follows the object on the line (comments). Lines that are
/// not valid JSON (elided with `…`) are kept only when they are client frames, whose refusal
/// the test skips.
fn doc_examples(doc: &str) -> Vec<(Dir, String)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        i += 1;
        let (dir, rest) = if let Some(r) = line.strip_prefix("→ ") {
            (Dir::Client, r)
        } else if let Some(r) = line.strip_prefix("← ") {
            (Dir::Server, r)
        } else {
            continue;
        };
        if !rest.starts_with('{') {
            continue;
        }
        let mut text = rest.to_string();
        let mut extra = 0;
        loop {
            let mut values = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
            match values.next() {
                Some(Ok(_)) => {
                    let end = values.byte_offset();
                    text.truncate(end);
                    out.push((dir, text));
                    break;
                }
                Some(Err(e)) if e.is_eof() && extra < 12 && i < lines.len() => {
                    text.push_str(lines[i].trim());
                    i += 1;
                    extra += 1;
                }
                _ => {
                    if dir == Dir::Client {
                        out.push((dir, rest.to_string()));
                    }
                    break;
                }
            }
        }
    }
    out
}
