//! The Rust client's doc rooms against the real server: two replicas edit one doc concurrently
//! (text inserts at one position, list ops, counters) across a server restart, and both end
//! with the server's state and hash, with no drift.

use crate::support::*;
use concord_client::{Client, ClientConfig, Doc, DocOptions};
use concord_core::doc::state_hash;
use concord_server::{Config, StoreConfig};
use serde_json::{json, Value};
use std::time::Duration;

/// A SQLite-backed server on `port` (each restart serves the same port, never released),
/// hashing every seq.
fn on_port(dir: &std::path::Path, port: &Port) -> TestServer {
    let mut config = Config::embedded(dir);
    if let StoreConfig::Sqlite { sync_full, .. } = &mut config.store {
        *sync_full = false;
    }
    config.doc_hash_every = 1;
    TestServer::with_listener(config, port.listener())
}

/// One round of concurrent edits: both insert text at position 5, edit the list and count.
fn edit_round(a: &Doc, b: &Doc, i: usize) {
    a.edit_json(json!([{"op":"text","path":["body"],"pos":5,"insert":format!("<a{i}>")}]))
        .unwrap();
    b.edit_json(json!([{"op":"text","path":["body"],"pos":5,"insert":format!("<b{i}>")}]))
        .unwrap();
    a.edit_json(json!([
        {"op":"ins","path":["items",0],"value":{"by":"a","i":i}},
        {"op":"add","path":["likes"],"value":1}
    ]))
    .unwrap();
    let len = b.with_state(|s| s["items"].as_array().map_or(0, Vec::len));
    let list_op = if i % 3 == 2 && len > 3 {
        json!({"op":"del","path":["items",len - 1]})
    } else {
        json!({"op":"move","path":["items",0],"to":len - 1})
    };
    b.edit_json(json!([list_op, {"op":"add","path":["likes"],"value":2}]))
        .unwrap();
}

async fn room(server: &TestServer, room: &str) -> Value {
    let (status, body) = http(server, "GET", &format!("/v1/rooms/{room}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until every local edit is committed and the doc has applied `seq`.
async fn settle(doc: &mut Doc, seq: u64) {
    tokio::time::timeout(WAIT, async {
        doc.flushed().await.unwrap();
        while doc.seq() < seq {
            doc.next().await.expect("doc ended");
        }
        doc.flushed().await.unwrap();
    })
    .await
    .unwrap_or_else(|_| panic!("{} stuck at seq {} (want {seq})", doc.name(), doc.seq()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_edit_one_doc_across_a_restart_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let port = Port::bind();
    let first = on_port(dir.path(), &port);
    let config = |id: &str| {
        ClientConfig::new(first.url())
            .with_client_id(id)
            .with_backoff(Duration::from_millis(10), Duration::from_millis(200))
    };
    let a = Client::connect(config("doc-a")).await.unwrap();
    let b = Client::connect(config("doc-b")).await.unwrap();
    let mut da = a
        .join_doc("doc:shared", DocOptions { create: true })
        .await
        .unwrap();
    da.edit_json(json!([
        {"op":"set","path":["body"],"value":"hello world"},
        {"op":"set","path":["items"],"value":[1,2,3]},
        {"op":"set","path":["likes"],"value":0}
    ]))
    .unwrap();
    settle(&mut da, 1).await;
    let mut db = b
        .join_doc("doc:shared", DocOptions::default())
        .await
        .unwrap();
    assert_eq!(db.snapshot(), da.snapshot());

    // Paced a little, so that many lists interleave (each waits for the previous one's ack).
    for i in 0..15 {
        edit_round(&da, &db, i);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Restart under a burst (lists in flight, more buffered); both keep editing while the
    // server is away.
    for i in 15..20 {
        edit_round(&da, &db, i);
    }
    tokio::task::yield_now().await;
    first.stop().await;
    for i in 20..30 {
        edit_round(&da, &db, i);
    }
    let second = on_port(dir.path(), &port);
    for i in 30..40 {
        edit_round(&da, &db, i);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    tokio::time::timeout(WAIT, da.flushed())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, db.flushed())
        .await
        .unwrap()
        .unwrap();
    let server = room(&second, "doc:shared").await;
    let seq = server["seq"].as_u64().unwrap();
    settle(&mut da, seq).await;
    settle(&mut db, seq).await;
    let state = server["state"].clone();
    assert_eq!(da.snapshot(), (seq, state.clone()));
    assert_eq!(db.snapshot(), (seq, state.clone()));
    assert_eq!(server["hash"], state_hash(&state));
    assert_eq!(state_hash(&da.state()), state_hash(&state));
    assert_eq!(state_hash(&db.state()), state_hash(&state));

    // Every edit is in, exactly once.
    assert_eq!(state["likes"], 40 * 3);
    let body = state["body"].as_str().unwrap();
    for i in 0..40 {
        assert_eq!(body.matches(&format!("<a{i}>")).count(), 1, "{body}");
        assert_eq!(body.matches(&format!("<b{i}>")).count(), 1, "{body}");
    }
    assert!(
        body.starts_with("hello") && body.ends_with(" world"),
        "{body}"
    );
    let items = state["items"].as_array().unwrap();
    for i in 0..40 {
        let n = items.iter().filter(|v| v["i"] == i).count();
        assert!(n <= 1, "item {i} twice: {items:?}");
    }

    for c in [&a, &b] {
        let stats = c.stats();
        assert!(stats.reconnects >= 1, "{stats:?}");
        assert_eq!(stats.drift, 0, "{stats:?}");
        assert_eq!(stats.protocol_violations, 0, "{stats:?}");
    }
    a.close().await;
    b.close().await;
    second.stop().await;
}
