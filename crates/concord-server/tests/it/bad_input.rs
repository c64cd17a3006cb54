//! Bad input gets a clear error code, never a panic, and the connection stays usable.

use crate::support::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(w: &mut Ws, code: &str) -> Value {
    let m = w.recv().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], code, "{m}");
    assert!(!m["message"].as_str().unwrap().is_empty());
    m
}

#[tokio::test]
async fn every_bad_frame_gets_an_error_and_the_connection_stays_usable() {
    let server = TestServer::memory(|c| c.max_data_bytes = 1000).await;
    let mut w = Ws::connect(&server).await;
    // Before hello.
    w.send(json!({"type":"join","room":"r","kind":"stream"}))
        .await;
    let e = expect_error(&mut w, "bad_request").await;
    assert!(e["message"].as_str().unwrap().contains("hello"), "{e}");
    w.send(json!({"type":"hello","client_id":"bad id with spaces"}))
        .await;
    expect_error(&mut w, "bad_request").await;
    w.send(json!({"type":"hello","client_id":"c1"})).await;
    assert_eq!(w.recv().await["type"], "welcome");
    w.send(json!({"type":"hello","client_id":"c1"})).await;
    expect_error(&mut w, "bad_request").await;
    w.join("ok", json!({})).await;

    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("{not json"), "bad_request", None),
        (Message::text("[1,2,3]"), "bad_request", None),
        (Message::text(r#"{"room":"ok"}"#), "bad_request", None),
        (
            Message::text(r#"{"type":"frobnicate","id":"f1"}"#),
            "bad_request",
            Some("f1"),
        ),
        (
            Message::text(r#"{"type":"publish","room":"ok","id":"p1"}"#),
            "bad_request",
            Some("p1"),
        ),
        (
            Message::text(r#"{"type":"publish","room":"ok","id":7,"data":1}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"type":"publish","room":"bad room!","id":"p2","data":1}"#),
            "bad_request",
            Some("p2"),
        ),
        (
            Message::text(r#"{"type":"join","room":""}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"type":"join","room":"ok","kind":"yjs"}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"type":"join","room":"ok","history":100000}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"type":"leave","room":"never-joined"}"#),
            "not_found",
            None,
        ),
        (
            Message::text(r#"{"type":"join","room":"missing"}"#),
            "not_found",
            None,
        ),
        (
            Message::text(r#"{"type":"join","room":"ok","kind":"doc"}"#),
            "kind_mismatch",
            None,
        ),
        (
            Message::text(r#"{"type":"publish","room":"missing","id":"p3","data":1}"#),
            "not_found",
            Some("p3"),
        ),
        (
            Message::text(format!(
                r#"{{"type":"publish","room":"ok","id":"big","data":"{}"}}"#,
                "x".repeat(2000)
            )),
            "too_large",
            Some("big"),
        ),
        (Message::binary(vec![1u8, 2, 3]), "bad_request", None),
    ];
    for (frame, code, id) in cases {
        let shown = format!("{frame:?}");
        w.send_raw(frame).await;
        let e = expect_error(&mut w, code).await;
        if let Some(id) = id {
            assert_eq!(e["id"], id, "{shown}");
        }
    }
    // Still usable, and nothing bad was committed.
    let (ack, evs) = w.publish("ok", "good", json!({"fine":true})).await;
    assert_eq!(ack["seq"], 1, "{evs:?}");
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_other_clients_are_unaffected() {
    let server = TestServer::memory(|c| c.max_frame_bytes = 16 * 1024).await;
    let mut other = Ws::hello(&server, "other").await;
    other.join("r", json!({})).await;
    let mut w = Ws::hello(&server, "big").await;
    let huge = format!(
        r#"{{"type":"publish","room":"r","id":"x","data":"{}"}}"#,
        "y".repeat(20 * 1024)
    );
    w.send_raw(Message::text(huge)).await;
    assert_eq!(w.closed().await, Some(1009));
    let (ack, _) = other.publish("r", "fine", json!(1)).await;
    assert_eq!(ack["seq"], 1);
    let limit = [("limit", "max_frame_bytes")];
    assert_eq!(server.metric("concord_limit_hits_total", &limit), 1.0);
    let close = |code| server.metric("concord_disconnects_total", &[("close_code", code)]);
    assert_eq!(close("1009"), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn no_hello_within_the_handshake_timeout_closes_with_1008() {
    let server =
        TestServer::memory(|c| c.handshake_timeout = std::time::Duration::from_millis(300)).await;
    let mut w = Ws::connect(&server).await;
    assert_eq!(w.closed().await, Some(1008));
    server.stop().await;
}

/// A frame the client library would never send: raw bytes with any opcode.
fn raw_frame(
    payload: &[u8],
    opcode: tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode,
) -> Message {
    Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            payload.to_vec(),
            opcode,
            true,
        ),
    )
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_protocol_violations_with_1002() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::memory(|_| {}).await;
    // A text frame that is not UTF-8.
    let mut w = Ws::hello(&server, "utf8").await;
    w.send_raw(raw_frame(
        b"{\"type\":\"\xff\xfe\"}",
        OpCode::Data(Data::Text),
    ))
    .await;
    assert_eq!(w.closed().await, Some(1007));
    // A reserved data opcode.
    let mut w = Ws::hello(&server, "opcode").await;
    w.send_raw(raw_frame(b"x", OpCode::Data(Data::Reserved(3))))
        .await;
    assert_eq!(w.closed().await, Some(1002));
    // A continuation frame with nothing to continue.
    let mut w = Ws::connect(&server).await;
    w.send_raw(raw_frame(b"x", OpCode::Data(Data::Continue)))
        .await;
    assert_eq!(w.closed().await, Some(1002));
    let close = |code| server.metric("concord_disconnects_total", &[("close_code", code)]);
    assert_eq!((close("1007"), close("1002")), (1.0, 2.0));
    server.stop().await;
}
