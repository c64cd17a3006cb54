//! A minimal doc-room client for the attack tests: hello, join, op lists and their answers,
//! reading frames at any nesting depth (a deep document must not break the test's own parser).

use crate::support::{within, Ws};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct DocConn {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
}

impl DocConn {
    /// Connects and says hello as `client`.
    pub async fn connect(addr: &str, client: &str) -> DocConn {
        let url = format!("ws://{addr}/v1/ws");
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket upgrade");
        let (tx, rx) = ws.split();
        let mut c = DocConn { tx, rx };
        c.send(json!({"type":"hello","client_id": client})).await;
        let welcome = c.next("welcome").await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }

    pub async fn send(&mut self, frame: Value) {
        within("send", self.tx.send(Message::text(frame.to_string())))
            .await
            .expect("send");
    }

    /// The next text frame, parsed with no recursion limit.
    pub async fn next(&mut self, what: &str) -> Value {
        loop {
            match within(what, self.rx.next()).await {
                Some(Ok(Message::Text(t))) => {
                    return concord_core::doc::read_stored(t.as_str()).expect("server frame");
                }
                Some(Ok(Message::Close(c))) => panic!("{what}: server closed the socket: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{what}: socket failed: {e}"),
                None => panic!("{what}: socket ended"),
            }
        }
    }

    /// Joins a doc room (creating it); returns `joined` or the `error`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type":"join","room":room,"kind":"doc"}))
            .await;
        loop {
            let f = self.next("joined").await;
            if f["type"] == "joined" || (f["type"] == "error" && f["room"] == room) {
                return f;
            }
        }
    }

    /// Sends an op list; returns its `ack` or `error` (events and other frames are skipped).
    pub async fn op(&mut self, room: &str, id: &str, base: u64, ops: Value) -> Value {
        self.send(json!({"type":"op","room":room,"id":id,"base":base,"ops":ops}))
            .await;
        self.answer(id).await
    }

    /// The `ack` or `error` of op `id`.
    pub async fn answer(&mut self, id: &str) -> Value {
        loop {
            let f = self.next(&format!("the answer to {id}")).await;
            if (f["type"] == "ack" || f["type"] == "error") && f["id"] == id {
                return f;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.tx.send(Message::Close(None)).await;
    }
}

/// `levels` nested objects: `{"k":{"k":…{}}}`.
pub fn nested(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "k": v });
    }
    v
}

/// `GET url` → (status, body parsed with no recursion limit, or Null).
pub async fn get(url: &str) -> (u16, Value) {
    let res = within(url, reqwest::get(url)).await.expect("GET");
    let status = res.status().as_u16();
    let text = within(url, res.text()).await.expect("body");
    (
        status,
        concord_core::doc::read_stored(&text).unwrap_or(Value::Null),
    )
}
