//! Doc rooms on gateways over a real Redis: the gateway holding a room's lease runs its OT
//! and commits with its fence; the others forward op lists to it through their inboxes (Redis
//! pub/sub) and follow the log with a replica. Editors on three gateways converge on the state
//! the log replays to, also when the owner stops and another gateway takes the room over; an
//! owner whose lease was taken behind its back steps down (its next commit is fenced, or its
//! next renewal finds another fence) and its list is acked once; lists whose commits timed out
//! while Redis was stopped are resolved and acked once, never refused.

use crate::gateways::{serve_with, Gateway};
use crate::support::{config, connect, room as room_id};
use concord_client::{Client, ClientConfig, Doc, DocOptions};
use concord_core::doc::state_hash;
use concord_dist::gateway::GatewayOptions;
use concord_dist::testing::redis::{Persistence, RedisServer, TestPrefix};
use concord_dist::{LogConfig, RedisTarget};
use concord_server::Config;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

async fn doc_gateway(prefix: &str, node: &str) -> Gateway {
    doc_gateway_on(&TestPrefix::target(), config(prefix), node).await
}

async fn doc_gateway_on(target: &RedisTarget, log: LogConfig, node: &str) -> Gateway {
    let backend = concord_dist::gateway::connect(target, log, GatewayOptions::new(node))
        .await
        .expect("the gateway's backend connects");
    let config = Config {
        node_id: node.to_string(),
        doc_lease: Duration::from_secs(1),
        doc_hash_every: 1,
        ..Config::default()
    };
    serve_with(backend, config).await
}

/// Editor `ed{i}` on each gateway; `ed0` creates the room with its first list.
async fn editors(gws: &[Gateway], room: &str) -> (Vec<Client>, Vec<Doc>) {
    let (mut clients, mut docs) = (Vec::new(), Vec::new());
    for (i, g) in gws.iter().enumerate() {
        let config = ClientConfig::new(format!("ws://{}/v1/ws", g.addr))
            .with_client_id(format!("ed{i}"))
            .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
        let c = Client::connect(config).await.unwrap();
        let d = c
            .join_doc(room, DocOptions { create: i == 0 })
            .await
            .unwrap();
        if i == 0 {
            d.edit_json(json!([
                {"op":"set","path":["body"],"value":""},
                {"op":"set","path":["likes"],"value":0}
            ]))
            .unwrap();
            flushed(&d).await;
        }
        clients.push(c);
        docs.push(d);
    }
    (clients, docs)
}

fn edit(doc: &Doc, k: usize, i: usize) {
    doc.edit_json(json!([
        {"op":"text","path":["body"],"pos":0,"insert":format!("<{k}.{i}>")},
        {"op":"add","path":["likes"],"value":1}
    ]))
    .unwrap();
}

async fn flushed(doc: &Doc) {
    tokio::time::timeout(WAIT, doc.flushed())
        .await
        .unwrap_or_else(|_| panic!("{} did not get its acks", doc.name()))
        .unwrap();
}

/// The room's state as the log replays it (`GET /v1/rooms/{room}` through `g`).
async fn logged(g: &Gateway, room: &str) -> (u64, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let req = format!(
        "GET /v1/rooms/{room} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        g.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let body: Value = serde_json::from_str(body).expect("a room");
    (body["seq"].as_u64().unwrap(), body["state"].clone())
}

/// Every doc reaches `seq` with exactly `state`, and every edit is in it once.
async fn converged(docs: &mut [Doc], seq: u64, state: &Value, edits: &[(usize, usize)]) {
    for d in docs.iter_mut() {
        tokio::time::timeout(WAIT, async {
            while d.seq() < seq {
                d.next().await.expect("doc ended");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} stuck at seq {} (want {seq})", d.name(), d.seq()));
        assert_eq!(d.snapshot(), (seq, state.clone()), "{}", d.name());
        assert_eq!(state_hash(&d.state()), state_hash(state));
    }
    let body = state["body"].as_str().unwrap();
    for (k, i) in edits {
        let m = format!("<{k}.{i}>");
        assert_eq!(body.matches(&m).count(), 1, "{m} in {body}");
    }
    assert_eq!(state["likes"], edits.len(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_editors_on_three_gateways_converge() {
    let prefix = TestPrefix::new("gw-docs");
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(doc_gateway(prefix.prefix(), &format!("gw{i}")).await);
    }
    let room = "doc:redis";
    let (_clients, mut docs) = editors(&gws, room).await;
    let mut edits = Vec::new();
    for i in 0..20 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
    }
    for d in &docs {
        flushed(d).await;
    }
    let log = connect(&TestPrefix::target(), prefix.prefix()).await;
    let holder = log.lease_holder(&room_id(room)).await.unwrap().unwrap();
    assert!(holder.owner.starts_with("gw0-"), "{holder:?}");
    let (seq, state) = logged(&gws[2], room).await;
    converged(&mut docs, seq, &state, &edits).await;
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_gateway_takes_a_doc_over_when_its_owner_stops() {
    let prefix = TestPrefix::new("gw-docs-stop");
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(doc_gateway(prefix.prefix(), &format!("gw{i}")).await);
    }
    let room = "doc:redis-stop";
    let (_clients, mut docs) = editors(&gws, room).await;
    let mut edits = Vec::new();
    for i in 0..10 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
    }
    for d in &docs {
        flushed(d).await;
    }
    let log = connect(&TestPrefix::target(), prefix.prefix()).await;
    let holder = || async {
        let h = log.lease_holder(&room_id(room)).await.unwrap();
        h.map(|h| h.owner).unwrap_or_default()
    };
    assert!(holder().await.starts_with("gw0-"), "{}", holder().await);
    // gw0 (whose editor created the room, so it owns it) stops; the others go on editing.
    let owner = gws.remove(0);
    owner.stop().await;
    let mut live = docs.split_off(1);
    for i in 10..20 {
        for (k, d) in live.iter().enumerate() {
            edit(d, k + 1, i);
            edits.push((k + 1, i));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for d in &live {
        flushed(d).await;
    }
    let now = holder().await;
    assert!(now.starts_with("gw1-") || now.starts_with("gw2-"), "{now}");
    let (seq, state) = logged(&gws[0], room).await;
    converged(&mut live, seq, &state, &edits).await;
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_was_taken_steps_down_and_its_list_is_acked_once() {
    let prefix = TestPrefix::new("gw-docs-fence");
    let mut gws = Vec::new();
    for i in 0..2 {
        gws.push(doc_gateway(prefix.prefix(), &format!("gw{i}")).await);
    }
    let room = "doc:redis-fence";
    let id = room_id(room);
    let (_clients, docs) = editors(&gws, room).await;
    let mut edits = Vec::new();
    for (k, d) in docs.iter().enumerate() {
        edit(d, k, 0);
        edits.push((k, 0));
    }
    for d in &docs {
        flushed(d).await;
    }
    let log = connect(&TestPrefix::target(), prefix.prefix()).await;
    assert_eq!(log.room_meta(&id).await.unwrap().unwrap().fence, 1);
    // Another process takes the lease while gw0 still believes it holds it (as if gw0 had
    // been paused past its lease), then lets it go without committing anything.
    let mut del = redis::cmd("DEL");
    del.arg(log.keys().room(room).owner);
    let _: i64 = log.connection().query(&del).await.unwrap();
    assert_eq!(
        log.acquire_lease(&id, "intruder", WAIT).await.unwrap(),
        Some(2)
    );
    assert!(log.release_lease(&id, "intruder").await.unwrap());
    // gw0's next commit carries fence 1 and is refused (or its next renewal finds fence 2
    // gone): it steps down, the list is forwarded again, gw0 takes the free lease (fence 3),
    // reloads and commits it once.
    edit(&docs[0], 0, 1);
    edits.push((0, 1));
    flushed(&docs[0]).await;
    let meta = log.room_meta(&id).await.unwrap().unwrap();
    assert_eq!(
        meta.fence, 3,
        "the stale owner was fenced and the lease taken again"
    );
    let holder = log.lease_holder(&id).await.unwrap().unwrap();
    assert!(holder.owner.starts_with("gw0-"), "{holder:?}");
    edit(&docs[1], 1, 1);
    edits.push((1, 1));
    flushed(&docs[1]).await;
    let mut docs = docs;
    let (seq, state) = logged(&gws[1], room).await;
    assert_eq!(seq, 1 + edits.len() as u64, "every list committed once");
    converged(&mut docs, seq, &state, &edits).await;
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_lists_caught_in_a_redis_stop_are_acked_once() {
    let server = RedisServer::start(Persistence::None);
    let mut log = config("gw-docs-amb");
    log.call_timeout = Duration::from_millis(300);
    let mut gws = Vec::new();
    for i in 0..2 {
        gws.push(doc_gateway_on(&server.target(), log.clone(), &format!("gw{i}")).await);
    }
    let room = "doc:redis-stop-world";
    let (_clients, mut docs) = editors(&gws, room).await;
    let mut edits = Vec::new();
    for i in 0..5 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
    }
    // Lists in flight when Redis stops: commits, forwards and renewals time out (their
    // outcome unknown) until it runs again, past the doc lease.
    server.pause();
    for i in 5..10 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    server.resume();
    for i in 10..15 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
    }
    for d in &docs {
        flushed(d).await;
    }
    // (A client merges the edits it buffers into one list: lists are fewer than edits.)
    let (seq, state) = logged(&gws[1], room).await;
    converged(&mut docs, seq, &state, &edits).await;
    for g in gws {
        g.stop().await;
    }
}
