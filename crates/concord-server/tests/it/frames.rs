//! Property test: arbitrary frames never panic the gateway and never harm other clients.
//!
//! Each case opens one connection, says `hello` (one case in ten sends its frames first), sends a
//! few generated frames (arbitrary text, JSON-ish objects built from the protocol's field names,
//! valid frames with one field mutated, a member's life in a stream or doc room, binary frames),
//! then a sentinel publish to a known room, and reads until the sentinel's ack and every reply.
//! Every text or binary frame must be answered by a normal reply or an `error` with a
//! protocol-v1 code (`presence` and `drift` may have no direct reply), every server message must
//! be JSON of a known type, and the connection must stay open — except that a frame larger than
//! `max_frame_bytes` closes it with 1009, as documented. After each case a well-behaved client of
//! the same server publishes and receives its own event, and `/healthz` answers. A panic on any
//! server thread fails the test even if the server survives it.
//!
//! proptest drives the cases with its own `TestRunner`; a tokio runtime built once runs the
//! server, and each case is `block_on`. `CONCORD_FRAMES_CASES=N` runs N cases (default 96, or 1,000
//! with `CONCORD_HEAVY=1`).

use crate::support::*;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The room of the sentinel publishes and of the well-behaved client.
const SENTINEL_ROOM: &str = "sentinel";
const MAX_FRAME: usize = 32 * 1024;
const MAX_DATA: usize = 8 * 1024;
/// How long one expected message may take here (short, so that a failing case shrinks quickly).
const STEP: Duration = Duration::from_secs(5);

const CODES: [&str; 12] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "kind_mismatch",
    "too_large",
    "rate_limited",
    "invalid_op",
    "rejected",
    "conflict",
    "unavailable",
    "internal",
];
/// Server messages that answer one client message.
const REPLIES: [&str; 6] = ["welcome", "joined", "left", "ack", "error", "auth_ok"];
/// Server messages sent to members of a room, not in answer to this connection's frames.
const BROADCASTS: [&str; 4] = ["event", "presence", "member_joined", "member_left"];

/// The field names of client messages (the first nine are those of the stream protocol).
const FIELDS: [&str; 13] = [
    "type",
    "room",
    "id",
    "data",
    "since",
    "history",
    "kind",
    "client_id",
    "token",
    "base",
    "ops",
    "seq",
    "hash",
];
const TYPES: [&str; 10] = [
    "hello", "join", "leave", "publish", "presence", "auth", "op", "drift", "welcome", "",
];
/// Client messages that may have no direct reply.
const MAYBE_SILENT: [&str; 2] = ["presence", "drift"];

#[derive(Clone, Debug)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }
    fn message(&self) -> Message {
        match self {
            Frame::Text(t) => Message::text(t.clone()),
            Frame::Binary(b) => Message::binary(b.clone()),
        }
    }
    /// Whether the frame may be a valid `presence`, the one message with no direct reply.
    /// Conservative: anything that is not plainly JSON of another type counts.
    fn may_be_silent(&self) -> bool {
        match self {
            Frame::Binary(_) => false,
            Frame::Text(t) => match serde_json::from_str::<Value>(t) {
                Ok(v) => v
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| MAYBE_SILENT.contains(&t)),
                Err(_) => MAYBE_SILENT.iter().any(|m| t.contains(m)) || t.contains('\\'),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    /// Whether the connection says `hello` before the frames (else the frames come first).
    hello_first: bool,
    frames: Vec<Frame>,
}

// ---- strategies ---------------------------------------------------------------------------

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn select_str(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(items)
}

/// Strings as JSON text: unicode, control characters, room-like, huge.
fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => any::<String>().prop_map(|s| quote(&s)),
        2 => "[\\x00-\\x1f\\x7f]{0,8}".prop_map(|s| quote(&s)),
        3 => "[A-Za-z0-9._:-]{1,12}".prop_map(|s| quote(&s)),
        2 => select_str(&["sentinel", "fz-a", "fz-b", "stream", "doc", "m-1", "", " ", "é", "http"])
            .prop_map(quote),
        1 => "[!-~]{129,140}".prop_map(|s| quote(&s)),
        1 => (prop::sample::select(vec![5_000usize, MAX_DATA + 100, MAX_FRAME + 1_000]), any::<char>())
            .prop_map(|(n, c)| quote(&c.to_string().repeat(n / c.len_utf8()))),
    ]
    .boxed()
}

/// Numbers as JSON text: negative, huge, floats.
fn json_number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f).to_string()),
        select_str(&[
            "0",
            "-1",
            "1",
            "1000",
            "1001",
            "-0",
            "0.5",
            "1e3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// Any JSON value as text, possibly with values that a decoder must refuse cleanly: numbers out
/// of range, lone surrogates, nesting past serde_json's recursion limit, and broken JSON.
fn json_any() -> BoxedStrategy<String> {
    prop_oneof![
        8 => json_data(),
        1 => select_str(&[
            "1e400",
            "-1e400",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\u0000\"",
            "\"\\x\"",
            "01",
            "+1",
            "NaN",
            "[1,]",
            "{\"a\"}",
            "tru",
        ])
        .prop_map(String::from),
        1 => (1usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
    ]
    .boxed()
}

/// A `data` value: mostly JSON that clients can parse, nested a few levels; sometimes a value no
/// serde_json-based client can read back (a number out of f64 range or a lone surrogate, alone or
/// inside a structure, or nesting deeper than the protocol's limit), which the server must refuse
/// with `bad_request` and never relay: a relayed one would break the members' decoding, and with
/// it the sentinel client of the case (see also `data_no_json_client_can_parse_is_refused`).
fn json_data() -> BoxedStrategy<String> {
    let hostile_leaf = select_str(&["1e400", "-1e400", "\"\\ud800\"", "\"a\\udc00\""]);
    prop_oneof![
        12 => json_data_tree(json_leaf()),
        1 => json_data_tree(prop_oneof![3 => json_leaf(), 1 => hostile_leaf.prop_map(String::from)].boxed()),
        1 => (128usize..300).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<String> {
    prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        json_number(),
        json_string(),
    ]
    .boxed()
}

fn json_data_tree(leaf: BoxedStrategy<String>) -> BoxedStrategy<String> {
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((json_key(), inner), 0..5).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select_str(&FIELDS).prop_map(quote),
        1 => any::<String>().prop_map(|s| quote(&s)),
    ]
    .boxed()
}

fn room_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select_str(&[SENTINEL_ROOM, "fz-a", "fz-b", "chat:lobby"]).prop_map(quote),
        2 => "[A-Za-z0-9._:-]{1,16}".prop_map(|s| quote(&s)),
        1 => json_string(),
        1 => json_any(),
    ]
    .boxed()
}

/// A value fitting the field name most of the time.
fn value_for(key: &str) -> BoxedStrategy<String> {
    match key {
        "type" => prop_oneof![
            4 => select_str(&TYPES).prop_map(quote),
            1 => json_any(),
        ]
        .boxed(),
        "data" => json_data(),
        "room" => room_value(),
        "kind" => prop_oneof![
            3 => select_str(&["stream", "doc", "yjs", "STREAM"]).prop_map(quote),
            1 => json_any(),
        ]
        .boxed(),
        "id" | "client_id" | "token" => prop_oneof![
            3 => "[!-~]{1,16}".prop_map(|s| quote(&s)),
            2 => json_string(),
            1 => json_any(),
        ]
        .boxed(),
        "since" => prop_oneof![
            2 => (json_string(), json_number())
                .prop_map(|(e, s)| format!("{{\"epoch\":{e},\"seq\":{s}}}")),
            1 => json_any(),
        ]
        .boxed(),
        "history" | "base" | "seq" => prop_oneof![3 => json_number(), 1 => json_any()].boxed(),
        "ops" => prop_oneof![3 => doc_ops(), 1 => json_data()].boxed(),
        "hash" => {
            prop_oneof![3 => "[0-9a-f]{0,16}".prop_map(|s| quote(&s)), 1 => json_any()].boxed()
        }
        _ => json_any(),
    }
}

fn field() -> BoxedStrategy<(String, String)> {
    prop_oneof![
        4 => select_str(&FIELDS).prop_flat_map(|k| (Just(k.to_string()), value_for(k))),
        1 => (any::<String>(), json_any()),
    ]
    .boxed()
}

fn object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", quote(k), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON object with protocol field names and random values.
fn soup() -> BoxedStrategy<String> {
    prop::collection::vec(field(), 0..7)
        .prop_map(|f| object(&f))
        .boxed()
}

fn kv(k: &str, v: String) -> (String, String) {
    (k.to_string(), v)
}

/// A doc op list: plausible ops with random paths and values (most invalid against any state).
fn doc_ops() -> BoxedStrategy<String> {
    let path = prop::collection::vec(
        prop_oneof![
            "[a-z]{1,6}".prop_map(|s| quote(&s)),
            (0u64..5).prop_map(|n| n.to_string()),
            json_number(),
        ],
        0..3,
    )
    .prop_map(|p| format!("[{}]", p.join(",")));
    let op = (
        select_str(&["set", "del", "ins", "move", "text", "add", "frob"]),
        path,
        json_data(),
        json_number(),
    )
        .prop_map(|(op, path, value, n)| match op {
            "move" => format!(r#"{{"op":"move","path":{path},"to":{n}}}"#),
            "text" => {
                format!(r#"{{"op":"text","path":{path},"pos":{n},"insert":"ab","delete":1}}"#)
            }
            "del" => format!(r#"{{"op":"del","path":{path}}}"#),
            _ => format!(r#"{{"op":{},"path":{path},"value":{value}}}"#, quote(op)),
        });
    prop::collection::vec(op, 0..4)
        .prop_map(|ops| format!("[{}]", ops.join(",")))
        .boxed()
}

/// A valid client message as (field, JSON text) pairs.
fn valid() -> BoxedStrategy<Vec<(String, String)>> {
    let room = || {
        prop_oneof![
            3 => select_str(&[SENTINEL_ROOM, "fz-a", "fz-b", "fz-doc"]).prop_map(quote),
            1 => "[A-Za-z0-9._:-]{1,16}".prop_map(|s| quote(&s)),
        ]
    };
    let id = || "[!-~]{1,16}".prop_map(|s| quote(&s));
    prop_oneof![
        id().prop_map(|c| vec![kv("type", quote("hello")), kv("client_id", c)]),
        (
            room(),
            prop::option::weighted(0.8, select_str(&["stream", "stream", "doc"])),
            prop::option::of((json_string(), 0u64..50)),
            prop::option::of(0u64..1_200),
        )
            .prop_map(|(r, kind, since, history)| {
                let mut f = vec![kv("type", quote("join")), kv("room", r)];
                if let Some(k) = kind {
                    f.push(kv("kind", quote(k)));
                }
                if let Some((e, s)) = since {
                    f.push(kv("since", format!("{{\"epoch\":{e},\"seq\":{s}}}")));
                }
                if let Some(h) = history {
                    f.push(kv("history", h.to_string()));
                }
                f
            }),
        room().prop_map(|r| vec![kv("type", quote("leave")), kv("room", r)]),
        (room(), id(), json_data()).prop_map(|(r, i, d)| vec![
            kv("type", quote("publish")),
            kv("room", r),
            kv("id", i),
            kv("data", d)
        ]),
        (room(), json_data()).prop_map(|(r, d)| vec![
            kv("type", quote("presence")),
            kv("room", r),
            kv("data", d)
        ]),
        id().prop_map(|t| vec![kv("type", quote("auth")), kv("token", t)]),
        (select_str(&["fz-doc", "fz-a"]), id(), 0u64..20, doc_ops()).prop_map(
            |(r, i, base, ops)| vec![
                kv("type", quote("op")),
                kv("room", quote(r)),
                kv("id", i),
                kv("base", base.to_string()),
                kv("ops", ops)
            ]
        ),
        (room(), 0u64..20, "[0-9a-f]{0,16}").prop_map(|(r, seq, h)| vec![
            kv("type", quote("drift")),
            kv("room", r),
            kv("seq", seq.to_string()),
            kv("hash", quote(&h))
        ]),
    ]
    .boxed()
}

/// A valid message with one field removed, replaced, added or duplicated, or its type changed.
fn mutated() -> BoxedStrategy<String> {
    (valid(), 0usize..5, any::<prop::sample::Index>(), field())
        .prop_flat_map(|(fields, how, at, extra)| {
            let i = at.index(fields.len());
            let key = fields[i].0.clone();
            (Just((fields, how, i, extra)), value_for(&key))
        })
        .prop_map(|((mut fields, how, i, extra), replacement)| {
            match how {
                0 => {
                    fields.remove(i);
                }
                1 => fields[i].1 = replacement,
                2 => fields.insert(i, extra),
                3 => {
                    let dup = (fields[i].0.clone(), replacement);
                    fields.push(dup);
                }
                _ => fields[0].1 = replacement_type(i),
            }
            object(&fields)
        })
        .boxed()
}

fn replacement_type(i: usize) -> String {
    quote(TYPES[i % TYPES.len()])
}

fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x7f]{0,64}",
        r#"[{}\[\]":,0-9a-z\\ ]{0,64}"#,
        Just(String::new()),
        select_str(&[
            "null",
            "[]",
            "{}",
            "\"hello\"",
            "[\"leave\"]",
            "{\"type\":null}"
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        2 => any_text().prop_map(Frame::Text),
        3 => soup().prop_map(Frame::Text),
        5 => mutated().prop_map(Frame::Text),
        5 => valid().prop_map(|f| Frame::Text(object(&f))),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Binary),
    ]
    .boxed()
}

/// A member's life in one room (join, publishes, presence, leave), with random frames between.
fn scripted() -> BoxedStrategy<Vec<Frame>> {
    (
        select_str(&[SENTINEL_ROOM, "fz-a", "fz-b", "fz-c"]),
        prop::collection::vec(("[!-~]{1,8}", json_data()), 1..3),
        json_data(),
        prop::collection::vec(frame(), 0..4),
    )
        .prop_map(|(room, publishes, presence, noise)| {
            let text = |v: Value| Frame::Text(v.to_string());
            let mut frames = vec![text(json!({"type":"join","room":room,"kind":"stream"}))];
            for (id, data) in publishes {
                frames.push(Frame::Text(format!(
                    r#"{{"type":"publish","room":"{room}","id":{},"data":{data}}}"#,
                    quote(&id)
                )));
            }
            frames.push(Frame::Text(format!(
                r#"{{"type":"presence","room":"{room}","data":{presence}}}"#
            )));
            frames.extend(noise);
            frames.push(text(json!({"type":"leave","room":room})));
            frames
        })
        .boxed()
}

/// A member's life in a doc room (join, ops, drift, leave), with random frames between.
fn scripted_doc() -> BoxedStrategy<Vec<Frame>> {
    (
        prop::collection::vec(("[!-~]{1,8}", 0u64..4, doc_ops()), 1..3),
        prop::collection::vec(frame(), 0..3),
    )
        .prop_map(|(ops, noise)| {
            let room = "fz-doc";
            let text = |v: Value| Frame::Text(v.to_string());
            let mut frames = vec![text(json!({"type":"join","room":room,"kind":"doc"}))];
            for (id, base, ops) in ops {
                frames.push(Frame::Text(format!(
                    r#"{{"type":"op","room":"{room}","id":{},"base":{base},"ops":{ops}}}"#,
                    quote(&id)
                )));
            }
            frames.push(text(
                json!({"type":"drift","room":room,"seq":1,"hash":"00"}),
            ));
            frames.extend(noise);
            frames.push(text(json!({"type":"leave","room":room})));
            frames
        })
        .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    let frames = prop_oneof![
        6 => prop::collection::vec(frame(), 1..8),
        2 => scripted(),
        1 => scripted_doc(),
    ];
    (prop::bool::weighted(0.9), frames).prop_map(|(hello_first, frames)| Case {
        hello_first,
        frames,
    })
}

// ---- running a case -----------------------------------------------------------------------

enum Got {
    Text(String),
    Closed(Option<u16>),
}

async fn next(w: &mut Ws, wait: Duration) -> Result<Option<Got>, String> {
    loop {
        let m = match tokio::time::timeout(wait, w.ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Ok(Some(Got::Closed(None))),
            Ok(Some(Err(e))) => return Err(format!("socket error: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        match m {
            Message::Text(t) => return Ok(Some(Got::Text(t.to_string()))),
            Message::Close(f) => return Ok(Some(Got::Closed(f.map(|f| u16::from(f.code))))),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return Err(format!("unexpected frame {other:?}")),
        }
    }
}

/// Checks one server message; returns its type.
fn check_message(text: &str) -> Result<String, String> {
    let m: Value =
        serde_json::from_str(text).map_err(|e| format!("server sent non-JSON {text:?}: {e}"))?;
    let ty = m["type"]
        .as_str()
        .ok_or_else(|| format!("server message without type: {m}"))?
        .to_string();
    if ty == "error" {
        let code = m["code"].as_str().unwrap_or_default();
        if !CODES.contains(&code) {
            return Err(format!("error with a code outside protocol v1: {m}"));
        }
        if m["message"].as_str().is_none_or(str::is_empty) {
            return Err(format!("error without a message: {m}"));
        }
    } else if !REPLIES.contains(&ty.as_str()) && !BROADCASTS.contains(&ty.as_str()) {
        return Err(format!("unknown server message type: {m}"));
    }
    Ok(ty)
}

static CASES: AtomicU64 = AtomicU64::new(0);
const SERVER_THREADS: &str = "frames-server";
static SERVER_PANICS: AtomicU64 = AtomicU64::new(0);
/// What the cases got, by message type and error code (printed at the end).
static SEEN: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn seen(what: String) {
    *SEEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(what)
        .or_default() += 1;
}

async fn run_case(server: &TestServer, good: &mut Ws, case: &Case) -> Result<(), String> {
    let n = CASES.fetch_add(1, Ordering::Relaxed);
    let client = format!("fz-{n}");
    let mut w = match tokio_tungstenite::connect_async(server.url()).await {
        Ok((ws, _)) => Ws { ws },
        Err(e) => return Err(format!("cannot connect: {e}")),
    };
    let hello = Frame::Text(json!({"type":"hello","client_id":client}).to_string());
    let sentinel_id = format!("~sentinel~{n}");
    let sentinel = Frame::Text(
        json!({"type":"publish","room":SENTINEL_ROOM,"id":sentinel_id,"data":n}).to_string(),
    );
    // What to send: hello, the frames (up to and including one too big for the server), and the
    // sentinel (preceded by hello if the frames came first).
    let mut frames = Vec::new();
    if case.hello_first {
        frames.push(hello.clone());
    }
    let mut too_big = false;
    for f in &case.frames {
        frames.push(f.clone());
        if f.len() > MAX_FRAME {
            too_big = true;
            break;
        }
    }
    if !too_big {
        if !case.hello_first {
            frames.push(hello);
        }
        frames.push(sentinel);
    }
    let expected_max = frames.len();
    let expected_min = expected_max - frames.iter().filter(|f| f.may_be_silent()).count();
    for f in &frames {
        if let Err(e) = w.ws.send(f.message()).await {
            if too_big {
                break; // the server may already have closed
            }
            return Err(format!("sending {f:?} failed: {e}"));
        }
    }

    let mut replies = 0usize;
    let mut sentinel_acked = false;
    let mut log = Vec::new();
    loop {
        // After the sentinel's ack, the replies of other rooms may still be on their way; once
        // the least possible count has arrived, wait a little for the rest.
        let done = sentinel_acked && replies >= expected_min;
        let wait = if done {
            Duration::from_millis(if replies < expected_max { 100 } else { 20 })
        } else {
            STEP
        };
        let got = next(&mut w, wait)
            .await
            .map_err(|e| format!("{e}; got {log:?}"))?;
        match got {
            None if done => break,
            None => {
                return Err(format!(
                    "timed out after {replies} replies (expected {expected_min}..={expected_max}); got {log:?}"
                ))
            }
            Some(Got::Closed(code)) if too_big => {
                if code != Some(1009) {
                    return Err(format!("closed with {code:?} after a frame too big, not 1009"));
                }
                seen("close:1009".to_string());
                break;
            }
            Some(Got::Closed(code)) => {
                return Err(format!("connection closed ({code:?}); got {log:?}"))
            }
            Some(Got::Text(t)) => {
                let ty = check_message(&t)?;
                seen(match ty.as_str() {
                    "error" => format!("error:{}", serde_json::from_str::<Value>(&t).unwrap()["code"]),
                    _ => ty.clone(),
                });
                if REPLIES.contains(&ty.as_str()) {
                    replies += 1;
                }
                if ty == "ack" && t.contains(&quote(&sentinel_id)) {
                    sentinel_acked = true;
                }
                log.push(t.chars().take(300).collect::<String>());
            }
        }
    }
    if !too_big && !(expected_min..=expected_max).contains(&replies) {
        return Err(format!(
            "{replies} replies to {expected_max} frames (at least {expected_min} expected): {log:?}"
        ));
    }
    drop(w);

    // A well-behaved client of the same server is unaffected.
    let id = format!("good-{n}");
    good.send(json!({"type":"publish","room":SENTINEL_ROOM,"id":id,"data":{"n":n}}))
        .await;
    let mut seq = None;
    loop {
        let m = good.recv().await;
        match m["type"].as_str() {
            Some("ack") if m["id"] == id.as_str() => seq = Some(m["seq"].clone()),
            Some("event") if m["id"] == id.as_str() && m["from"] == "good" => {
                if seq.as_ref() != Some(&m["seq"]) || m["data"] != json!({"n": n}) {
                    return Err(format!("good client: event {m} does not match ack {seq:?}"));
                }
                break;
            }
            Some("event") => {}
            _ if is_ephemeral(&m) => {}
            _ => return Err(format!("good client got {m}")),
        }
    }
    let (status, body) = http(server, "GET", "/healthz", None).await;
    if status != 200 {
        return Err(format!("/healthz answered {status} {body}"));
    }
    Ok(())
}

#[test]
fn arbitrary_frames_never_break_the_gateway_or_other_clients() {
    let started = Instant::now();
    // Any panic on the server's threads fails the test, even one the server survives.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(SERVER_THREADS) {
            SERVER_PANICS.fetch_add(1, Ordering::Relaxed);
        }
        previous(info)
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let (server, good) = rt.block_on(async {
        let server = TestServer::memory(|c| {
            c.max_frame_bytes = MAX_FRAME;
            c.max_data_bytes = MAX_DATA;
        })
        .await;
        let mut good = Ws::hello(&server, "good").await;
        good.join(SENTINEL_ROOM, json!({})).await;
        (server, good)
    });
    let good = std::sync::Mutex::new(good);
    let heavy = std::env::var("CONCORD_HEAVY").is_ok_and(|v| v == "1");
    let cases = std::env::var("CONCORD_FRAMES_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if heavy { 1_000 } else { 96 });
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        max_shrink_time: 60_000,
        ..PtConfig::default()
    });
    let result = runner.run(&case(), |case| {
        let mut good = good.lock().unwrap_or_else(|p| p.into_inner());
        rt.block_on(run_case(&server, &mut good, &case))
            .map_err(TestCaseError::fail)
    });
    rt.block_on(server.stop());
    eprintln!(
        "frames: {} cases in {:.1?}; got {:?}",
        CASES.load(Ordering::Relaxed),
        started.elapsed(),
        SEEN.lock().unwrap_or_else(|p| p.into_inner())
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let panics = SERVER_PANICS.load(Ordering::Relaxed);
    assert_eq!(
        panics, 0,
        "{panics} panics on the server's threads (see above)"
    );
}

/// Found by fuzzing `concord-protocol` (fuzz/README.md): data that is valid JSON text but that
/// no serde_json-based client can read back (numbers out of f64 range, lone surrogate escapes,
/// nesting deeper than the protocol's limit) is refused, never committed and relayed.
#[tokio::test]
async fn data_no_json_client_can_parse_is_refused() {
    let server = TestServer::memory(|_| {}).await;
    let mut other = Ws::hello(&server, "other").await;
    other.join("r", json!({})).await;
    let mut w = Ws::hello(&server, "w").await;
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    for (i, data) in ["1e400", "\"\\ud800\"", deep.as_str()].iter().enumerate() {
        let frame = format!(r#"{{"type":"publish","room":"r","id":"p{i}","data":{data}}}"#);
        w.send_raw(Message::text(frame)).await;
        let m = w.recv().await;
        assert_eq!(m["code"], "bad_request", "{m}");
    }
    let (ack, _) = other.publish("r", "fine", json!(1)).await;
    assert_eq!(ack["seq"], 1);
    server.stop().await;
}

/// Found by fuzzing: a frame must be a JSON object; the sequence form of a struct (`["leave"]`)
/// is refused with `bad_request`.
#[tokio::test]
async fn a_json_array_is_not_a_message() {
    let server = TestServer::memory(|_| {}).await;
    let mut w = Ws::hello(&server, "w").await;
    w.join("leave", json!({})).await;
    w.send_raw(Message::text(r#"["leave"]"#)).await;
    let m = w.recv().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "bad_request", "{m}");
    server.stop().await;
}
