//! Doc rooms across the gateways of one cluster (servers sharing an in-memory store and
//! commit point): one owner runs the OT, the others forward their clients' op lists to it and
//! follow the log with a replica. Editors on every gateway converge on the state the log
//! replays to (also when the feed loses notifications); the owner cut off is replaced after its lease with nothing acked lost; a zombie
//! owner (its lease lapsed while it runs on) is fenced and its lists are acked once, by the
//! next owner.

use crate::support::*;
use concord_client::{Client, ClientConfig, Doc, DocOptions};
use concord_core::doc::state_hash;
use concord_core::RoomId;
use concord_server::cluster::MemoryCommitPoint;
use concord_server::Config;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The doc lease of these clusters: short, so a takeover happens within the test.
const LEASE: Duration = Duration::from_millis(600);

/// `n` servers (gateways `gw0`, `gw1`, …) sharing one store and commit point.
async fn cluster(n: usize) -> (Vec<TestServer>, Arc<MemoryCommitPoint>) {
    cluster_losing(n, 0).await
}

/// The same, with every `lose_every`-th notification lost (0: none).
async fn cluster_losing(n: usize, lose_every: u64) -> (Vec<TestServer>, Arc<MemoryCommitPoint>) {
    let config = Config {
        doc_lease: LEASE,
        doc_hash_every: 1,
        ..Config::default()
    };
    crate::cluster::cluster_configured(n, lose_every, config).await
}

/// One editor per server, `ed0` on `gw0` creating the room with its first list (so `gw0`
/// owns it).
async fn editors(servers: &[TestServer], room: &str) -> (Vec<Client>, Vec<Doc>) {
    let (mut clients, mut docs) = (Vec::new(), Vec::new());
    for (i, s) in servers.iter().enumerate() {
        let config = ClientConfig::new(s.url())
            .with_client_id(format!("ed{i}"))
            .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
        let c = Client::connect(config).await.unwrap();
        let d = c
            .join_doc(room, DocOptions { create: i == 0 })
            .await
            .unwrap();
        if i == 0 {
            d.edit_json(json!([
                {"op":"set","path":["body"],"value":"[]"},
                {"op":"set","path":["likes"],"value":0}
            ]))
            .unwrap();
            tokio::time::timeout(WAIT, d.flushed())
                .await
                .unwrap()
                .unwrap();
        }
        clients.push(c);
        docs.push(d);
    }
    (clients, docs)
}

/// One list of editor `k`: its marker at the start of the text (so that no marker splits
/// another), one like.
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

/// The room's state as the log replays it (read through `server`).
async fn logged(server: &TestServer, room: &str) -> (u64, Value) {
    let (status, body) = http(server, "GET", &format!("/v1/rooms/{room}"), None).await;
    assert_eq!(status, 200, "{body}");
    (body["seq"].as_u64().unwrap(), body["state"].clone())
}

/// Every doc reaches `seq` with exactly `state` (and its hash).
async fn converge(docs: &mut [Doc], seq: u64, state: &Value) {
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
}

/// Every marker of `edits` is in the text exactly once and the likes count them.
fn every_edit_once(state: &Value, edits: &[(usize, usize)]) {
    let body = state["body"].as_str().unwrap();
    for (k, i) in edits {
        let m = format!("<{k}.{i}>");
        assert_eq!(body.matches(&m).count(), 1, "{m} in {body}");
    }
    assert_eq!(state["likes"], edits.len(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_on_three_gateways_converge() {
    editors_converge(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_converge_when_notifications_are_lost() {
    editors_converge(3).await;
}

/// Three editors on three gateways (the feed losing every `lose_every`-th notification) end
/// with the state the log replays to, every list once, the room owned by `gw0` throughout.
async fn editors_converge(lose_every: u64) {
    let (servers, point) = cluster_losing(3, lose_every).await;
    let room = "doc:cluster";
    let (_clients, mut docs) = editors(&servers, room).await;
    let mut edits = Vec::new();
    for i in 0..30 {
        for (k, d) in docs.iter().enumerate() {
            edit(d, k, i);
            edits.push((k, i));
        }
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for d in &docs {
        flushed(d).await;
    }
    assert_eq!(
        point.owner_of(&RoomId::new(room).unwrap()).await.as_deref(),
        Some("gw0")
    );
    let (seq, state) = logged(&servers[1], room).await;
    converge(&mut docs, seq, &state).await;
    every_edit_once(&state, &edits);
    assert_eq!(point.fenced(), 0);
    // The owner's gauge and the forwarders' counters.
    let owned: Vec<f64> = servers
        .iter()
        .map(|s| s.metric("concord_doc_rooms_owned", &[]))
        .collect();
    assert_eq!(owned, [1.0, 0.0, 0.0], "only gw0 owns the room");
    assert_eq!(
        servers[0].metric("concord_cluster_forwards_total", &[]),
        0.0,
        "the owner's own editor is served in place"
    );
    for s in &servers[1..] {
        assert!(
            s.metric("concord_cluster_forwards_total", &[]) >= 1.0,
            "each other gateway forwarded its editor's lists to the owner"
        );
    }
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_over_when_the_owner_is_gone() {
    let (servers, point) = cluster(3).await;
    let room = "doc:takeover";
    let id = RoomId::new(room).unwrap();
    let (_clients, mut docs) = editors(&servers, room).await;
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
    assert_eq!(point.owner_of(&id).await.as_deref(), Some("gw0"));
    // The owner's process dies: its lease lapses, another gateway takes the room over and
    // the editors of the other gateways go on.
    point.cut_off("gw0").await;
    let mut live = docs.split_off(1);
    for i in 10..25 {
        for (k, d) in live.iter().enumerate() {
            edit(d, k + 1, i);
            edits.push((k + 1, i));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in &live {
        flushed(d).await;
    }
    let owner = point.owner_of(&id).await;
    assert!(
        matches!(owner.as_deref(), Some("gw1" | "gw2")),
        "owner {owner:?}"
    );
    let new_owner = if owner.as_deref() == Some("gw1") {
        1
    } else {
        2
    };
    assert_eq!(
        servers[new_owner].metric("concord_doc_rooms_owned", &[]),
        1.0,
        "the new owner counts the room"
    );
    let (seq, state) = logged(&servers[1], room).await;
    converge(&mut live, seq, &state).await;
    every_edit_once(&state, &edits);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_owner_is_fenced_and_its_lists_are_acked_once() {
    let (servers, point) = cluster(3).await;
    let room = "doc:zombie";
    let id = RoomId::new(room).unwrap();
    let (_clients, mut docs) = editors(&servers, room).await;
    assert_eq!(point.owner_of(&id).await.as_deref(), Some("gw0"));
    // gw0's renewals stop reaching the commit point while it believes they succeed: its
    // lease lapses and the next list of another gateway takes the room over.
    point.freeze_lease("gw0").await;
    let mut edits = Vec::new();
    let mut i = 0;
    let until = tokio::time::Instant::now() + WAIT;
    while matches!(point.owner_of(&id).await.as_deref(), None | Some("gw0")) {
        assert!(tokio::time::Instant::now() < until, "nobody took over");
        for (k, d) in docs.iter().enumerate().skip(1) {
            edit(d, k, i);
            edits.push((k, i));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for d in &docs {
        flushed(d).await;
    }
    // The zombie still serves its own clients: a list made against an old state is rebased
    // by it and committed with its old fence — refused; the list goes to the new owner and
    // is acked once.
    let fenced = point.fenced();
    let mut w = Ws::hello(&servers[0], "late").await;
    w.join(room, json!({"kind":"doc"})).await;
    w.send(json!({"type":"op","room":room,"id":"z1","base":1,"ops":[
        {"op":"add","path":["likes"],"value":1},
        {"op":"text","path":["body"],"pos":0,"insert":"<zombie>"}
    ]}))
    .await;
    let ack = loop {
        let m = w.recv().await;
        if m["type"] == "ack" || m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        point.fenced(),
        fenced + 1,
        "the zombie's commit was fenced once"
    );
    for (k, d) in docs.iter().enumerate() {
        edit(d, k, i);
        edits.push((k, i));
    }
    for d in &docs {
        flushed(d).await;
    }
    let (seq, state) = logged(&servers[2], room).await;
    assert!(ack["seq"].as_u64().unwrap() <= seq);
    converge(&mut docs, seq, &state).await;
    let body = state["body"].as_str().unwrap();
    assert_eq!(body.matches("<zombie>").count(), 1, "{body}");
    edits.push((usize::MAX, 0));
    assert_eq!(state["likes"], edits.len(), "{body}");
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_past_a_lagging_replica_reads_the_log_first() {
    let (servers, point) = cluster(2).await;
    let room = "doc:lag";
    let (_clients, docs) = editors(&servers, room).await;
    // gw1 follows the room, then hears of no more commits.
    point.deafen("gw1").await;
    for i in 0..5 {
        edit(&docs[0], 0, i);
        flushed(&docs[0]).await;
    }
    let (seq, state) = logged(&servers[0], room).await;
    assert!(seq >= 5);
    // A client at the head (say its gateway died) rejoins through gw1, whose replica is
    // behind its position: it gets the missing events from the log, never an older state.
    let mut w = Ws::hello(&servers[0], "mover").await;
    let joined = w.join(room, json!({"kind":"doc"})).await;
    assert_eq!(joined["seq"], seq);
    let since = json!({"epoch": joined["epoch"], "seq": seq - 2});
    let mut w = Ws::hello(&servers[1], "mover").await;
    w.send(json!({"type":"join","room":room,"kind":"doc","since":since}))
        .await;
    let answer = loop {
        let m = w.recv().await;
        if m["type"] == "joined" || m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["seq"], seq, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![seq - 1, seq]
    );
    // gw1's replica is at the head now: a fresh join serves the logged state.
    let mut f = Ws::hello(&servers[1], "fresh").await;
    let fresh = f.join(room, json!({"kind":"doc"})).await;
    assert_eq!((&fresh["seq"], &fresh["state"]), (&json!(seq), &state));
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_past_events_held_behind_a_list_in_flight_is_unavailable_not_a_reset() {
    let (servers, point) = cluster(2).await;
    let room = "doc:held";
    let (_clients, docs) = editors(&servers, room).await;
    // gw1's list commits, but the owner's answer never comes back: gw1 holds its event (and
    // every later one) until the list is acked.
    point.lose_answers("gw1", true).await;
    edit(&docs[1], 1, 0);
    for i in 0..3 {
        edit(&docs[0], 0, i);
        flushed(&docs[0]).await;
    }
    let (seq, _) = logged(&servers[0], room).await;
    assert!(seq >= 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A client at the head (its gateway died) rejoins through gw1: its replica has every
    // event but delivered none past gw1's own list. Not a reset to an older state: retry.
    let mut w = Ws::hello(&servers[0], "mover").await;
    let epoch = w.join(room, json!({"kind":"doc"})).await["epoch"].clone();
    let since = json!({"epoch": epoch, "seq": seq});
    let mut w = Ws::hello(&servers[1], "mover").await;
    let answer = rejoin_doc(&mut w, room, &since).await;
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{answer}"
    );
    // Once gw1's list is acked, the rejoin recovers.
    point.lose_answers("gw1", false).await;
    flushed(&docs[1]).await;
    let answer = rejoin_doc(&mut w, room, &since).await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(answer["recovered"], true, "{answer}");
    assert!(answer["seq"].as_u64().unwrap() >= seq, "{answer}");
    for s in servers {
        s.stop().await;
    }
}

/// Sends a doc `join` with `since`; returns the `joined` or the `error` that answers it.
async fn rejoin_doc(w: &mut Ws, room: &str, since: &Value) -> Value {
    w.send(json!({"type":"join","room":room,"kind":"doc","since":since}))
        .await;
    loop {
        let m = w.recv().await;
        if m["type"] == "joined" || m["type"] == "error" {
            break m;
        }
    }
}
