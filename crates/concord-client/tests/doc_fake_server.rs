//! Doc rooms through the whole client (task, WebSocket, reconnects) against an in-process fake
//! server that speaks protocol v1 for doc rooms on top of `concord_core::doc::sim::SimServer`,
//! with knobs to tamper with hashes, refuse lists, swallow answers and drop connections.

use concord_client::{
    Client, ClientConfig, ClientError, Doc, DocOptions, DocUpdate, JoinOptions, ResyncReason,
};
use concord_core::doc::sim::SimServer;
use concord_core::doc::{decode_ops, encode_ops, state_hash, Limits};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct DocRoom {
    epoch: String,
    sim: SimServer,
    /// (client, id) of each seq.
    ids: Vec<(String, String)>,
    hashes: Vec<String>,
    dedupe: HashMap<(String, String), u64>,
}

impl DocRoom {
    fn new(epoch: &str, state: Value) -> Self {
        DocRoom {
            epoch: epoch.into(),
            sim: SimServer::new(state),
            ids: Vec::new(),
            hashes: Vec::new(),
            dedupe: HashMap::new(),
        }
    }

    fn event(&self, room: &str, seq: u64, tamper: bool) -> Value {
        let i = (seq - 1) as usize;
        let (from, id) = &self.ids[i];
        let hash = if tamper {
            "0".repeat(32)
        } else {
            self.hashes[i].clone()
        };
        json!({"type":"event","room":room,"seq":seq,"hlc":format!("h{seq}"),"from":from,"id":id,
               "ops":encode_ops(&self.sim.log[i].ops),"hash":hash})
    }
}

/// What the next op list gets instead of a commit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trap {
    /// An `error` with this code; nothing committed.
    Refuse(&'static str),
    /// Committed, but nobody hears of it (ack and events lost with the connection).
    CommitSilently,
    /// Lost on the wire.
    Drop,
}

#[derive(Default)]
struct State {
    docs: HashMap<String, DocRoom>,
    streams: HashSet<String>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Send the ack before the event (alternates per commit).
    ack_first: bool,
    tamper_next_hash: bool,
    trap: Option<Trap>,
    /// (room, seq, hash) of the `drift` reports received.
    drifts: Vec<(String, u64, String)>,
    /// Op lists received: (client, id, base).
    ops_received: Vec<(String, String, u64)>,
    /// Joins received: (room, had `since`).
    joins: Vec<(String, bool)>,
}

struct Conn {
    client: String,
    rooms: HashSet<String>,
    tx: mpsc::UnboundedSender<String>,
}

struct FakeServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    kill: watch::Sender<u64>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (kill, _) = watch::channel(0u64);
        let server = FakeServer {
            addr,
            state: state.clone(),
            kill: kill.clone(),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                let kill = kill.subscribe();
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        serve(ws, state, kill).await;
                    }
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Drops every connection without a close handshake.
    fn kill_connections(&self) {
        self.kill.send_modify(|n| *n += 1);
    }

    /// Tells every member of `room` `unavailable` (no op id: the room itself) and forgets
    /// their membership, as a gateway does when it drops a room its members must join again.
    fn evict(&self, room: &str) {
        self.with(|s| {
            let frame = json!({"type":"error","room":room,"code":"unavailable",
                               "message":"the room was reloaded: join again"});
            for conn in s.conns.values_mut() {
                if conn.rooms.remove(room) {
                    let _ = conn.tx.send(frame.to_string());
                }
            }
        });
    }

    fn doc(&self, room: &str) -> (u64, Value) {
        self.with(|s| {
            let d = &s.docs[room];
            (d.sim.seq(), d.sim.state.clone())
        })
    }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    state: Arc<Mutex<State>>,
    mut kill: watch::Receiver<u64>,
) {
    kill.mark_unchanged();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut id = None;
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else { break };
                let msg: Value = serde_json::from_str(&text).unwrap();
                let out = {
                    let mut s = state.lock().unwrap();
                    handle(&mut s, &mut id, &tx, &msg)
                };
                for (conn, frame) in out {
                    let s = state.lock().unwrap();
                    if let Some(c) = s.conns.get(&conn) {
                        let _ = c.tx.send(frame.to_string());
                    }
                }
            }
            Some(frame) = rx.recv() => {
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
            _ = kill.changed() => break,
        }
    }
    if let Some(id) = id {
        state.lock().unwrap().conns.remove(&id);
    }
}

/// Handles one client frame; returns the frames to send, by connection.
fn handle(
    s: &mut State,
    me: &mut Option<u64>,
    tx: &mpsc::UnboundedSender<String>,
    msg: &Value,
) -> Vec<(u64, Value)> {
    let ty = msg["type"].as_str().unwrap_or_default();
    if ty == "hello" {
        let id = s.next_conn;
        s.next_conn += 1;
        s.conns.insert(
            id,
            Conn {
                client: msg["client_id"].as_str().unwrap().into(),
                rooms: HashSet::new(),
                tx: tx.clone(),
            },
        );
        *me = Some(id);
        let welcome =
            json!({"type":"welcome","client_id":msg["client_id"],"node":"fake","server_time":1});
        return vec![(id, welcome)];
    }
    let me = me.expect("hello first");
    let room = msg["room"].as_str().unwrap_or_default().to_string();
    match ty {
        "join" => {
            let kind = msg["kind"].as_str();
            s.joins.push((room.clone(), msg.get("since").is_some()));
            if !s.docs.contains_key(&room) && !s.streams.contains(&room) {
                match kind {
                    Some("doc") => {
                        s.docs.insert(room.clone(), DocRoom::new("e1", json!({})));
                    }
                    Some("stream") => {
                        s.streams.insert(room.clone());
                    }
                    _ => {
                        return vec![(
                            me,
                            json!({"type":"error","room":room,"code":"not_found","message":"no such room"}),
                        )]
                    }
                }
            }
            s.conns.get_mut(&me).unwrap().rooms.insert(room.clone());
            if s.streams.contains(&room) {
                let joined = json!({"type":"joined","room":room,"kind":"stream","epoch":"e1","seq":0,"recovered":true,"events":[]});
                return vec![(me, joined)];
            }
            let d = &s.docs[&room];
            let seq = d.sim.seq();
            let since = msg.get("since").filter(|since| {
                since["epoch"] == d.epoch.as_str() && since["seq"].as_u64().unwrap() <= seq
            });
            let joined = match since {
                Some(since) => {
                    let from = since["seq"].as_u64().unwrap();
                    let events: Vec<Value> =
                        (from + 1..=seq).map(|q| d.event(&room, q, false)).collect();
                    json!({"type":"joined","room":room,"kind":"doc","epoch":d.epoch,"seq":seq,"recovered":true,"events":events})
                }
                None => {
                    json!({"type":"joined","room":room,"kind":"doc","epoch":d.epoch,"seq":seq,
                           "recovered":false,"events":[],"state":d.sim.state,"hash":state_hash(&d.sim.state)})
                }
            };
            vec![(me, joined)]
        }
        "leave" => {
            s.conns.get_mut(&me).unwrap().rooms.remove(&room);
            vec![(me, json!({"type":"left","room":room}))]
        }
        "drift" => {
            s.drifts.push((
                room,
                msg["seq"].as_u64().unwrap(),
                msg["hash"].as_str().unwrap().into(),
            ));
            Vec::new()
        }
        "op" => {
            let client = s.conns[&me].client.clone();
            let id = msg["id"].as_str().unwrap().to_string();
            let base = msg["base"].as_u64().unwrap();
            s.ops_received.push((client.clone(), id.clone(), base));
            let error = |code: &str| {
                vec![(
                    me,
                    json!({"type":"error","id":id,"room":room,"code":code,"message":format!("{code} by the fake")}),
                )]
            };
            let trap = s.trap.take();
            match trap {
                Some(Trap::Refuse(code)) => return error(code),
                Some(Trap::Drop) => return Vec::new(),
                _ => {}
            }
            let d = s.docs.get_mut(&room).unwrap();
            let key = (client.clone(), id.clone());
            if let Some(&seq) = d.dedupe.get(&key) {
                return vec![(
                    me,
                    json!({"type":"ack","room":room,"id":id,"seq":seq,"hlc":"h"}),
                )];
            }
            let ops = decode_ops(&msg["ops"], &Limits::default()).unwrap();
            let (seq, rebased) = match d.sim.submit(0, base, &ops) {
                Ok(out) => out,
                Err(e) => {
                    return vec![(
                        me,
                        json!({"type":"error","id":id,"room":room,"code":"invalid_op","message":e.to_string()}),
                    )]
                }
            };
            d.ids.push(key.clone());
            d.hashes.push(state_hash(&d.sim.state));
            d.dedupe.insert(key, seq);
            if trap == Some(Trap::CommitSilently) {
                return Vec::new();
            }
            let tamper = std::mem::take(&mut s.tamper_next_hash);
            s.ack_first = !s.ack_first;
            let d = &s.docs[&room];
            let event = d.event(&room, seq, tamper);
            let mut ack = json!({"type":"ack","room":room,"id":id,"seq":seq,"hlc":"h"});
            if !rebased.dropped.is_empty() {
                ack["dropped"] = json!(rebased.dropped);
            }
            let mut out = Vec::new();
            if s.ack_first {
                out.push((me, ack.clone()));
            }
            for (&c, conn) in &s.conns {
                if conn.rooms.contains(&room) {
                    out.push((c, event.clone()));
                }
            }
            if !s.ack_first {
                out.push((me, ack));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Waits until the server has received `n` op lists.
async fn wait_received(server: &FakeServer, n: usize) {
    tokio::time::timeout(WAIT, async {
        while server.with(|s| s.ops_received.len()) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("op lists not received");
}

async fn client(server: &FakeServer, id: &str) -> Client {
    let config = ClientConfig::new(server.url())
        .with_client_id(id)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50));
    Client::connect(config).await.unwrap()
}

/// Reads updates until the doc has applied `seq`; returns them.
async fn until_seq(doc: &mut Doc, seq: u64) -> Vec<DocUpdate> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while doc.seq() < seq {
            seen.push(doc.next().await.expect("doc ended"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("doc at seq {} never reached {seq}: {seen:?}", doc.seq()));
    while let Some(u) = doc.try_next() {
        seen.push(u);
    }
    seen
}

async fn flushed(doc: &Doc) {
    tokio::time::timeout(WAIT, doc.flushed())
        .await
        .expect("not flushed in time")
        .unwrap();
}

/// Both replicas and the server agree on seq, state and hash.
async fn assert_converged(server: &FakeServer, room: &str, docs: &mut [&mut Doc]) {
    for doc in docs.iter() {
        flushed(doc).await;
    }
    let (seq, state) = server.doc(room);
    for doc in docs.iter_mut() {
        until_seq(doc, seq).await;
        flushed(doc).await;
        assert_eq!(doc.snapshot(), (seq, state.clone()), "{}", doc.name());
        assert_eq!(state_hash(&doc.state()), state_hash(&state));
    }
}

#[tokio::test]
async fn two_clients_edit_one_doc_concurrently_and_converge() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let b = client(&server, "c-b").await;
    let mut da = a
        .join_doc("doc:1", DocOptions { create: true })
        .await
        .unwrap();
    da.edit_json(json!([
        {"op":"set","path":["body"],"value":"hello"},
        {"op":"set","path":["items"],"value":[1,2,3]},
        {"op":"set","path":["likes"],"value":0}
    ]))
    .unwrap();
    flushed(&da).await;
    let mut db = b.join_doc("doc:1", DocOptions::default()).await.unwrap();
    assert_eq!(db.seq(), 1);
    assert_eq!(db.state(), da.state());
    for i in 0..30 {
        da.edit_json(json!([{"op":"text","path":["body"],"pos":5,"insert":"a"}]))
            .unwrap();
        db.edit_json(json!([{"op":"text","path":["body"],"pos":5,"insert":"b"}]))
            .unwrap();
        da.edit_json(json!([{"op":"add","path":["likes"],"value":1}]))
            .unwrap();
        db.edit_json(json!([{"op":"add","path":["likes"],"value":2}]))
            .unwrap();
        da.edit_json(json!([{"op":"ins","path":["items",0],"value":format!("a{i}")}]))
            .unwrap();
        db.edit_json(json!([{"op":"move","path":["items",0],"to":1}]))
            .unwrap();
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_converged(&server, "doc:1", &mut [&mut da, &mut db]).await;
    let state = da.state();
    assert_eq!(state["likes"], 90);
    assert_eq!(state["body"].as_str().unwrap().chars().count(), 65);
    assert_eq!(state["items"].as_array().unwrap().len(), 33);
    // Batching: fewer lists than edits, each id committed once.
    let received = server.with(|s| s.ops_received.len());
    let (seq, _) = server.doc("doc:1");
    assert!(
        received as u64 == seq && seq < 181,
        "{received} lists, seq {seq}"
    );
    assert_eq!(a.stats().drift, 0);
}

#[tokio::test]
async fn updates_report_each_seq_once_in_order_with_their_origin() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let b = client(&server, "c-b").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    let mut db = b.join_doc("d", DocOptions::create()).await.unwrap();
    for n in 0..6 {
        let doc = if n % 2 == 0 { &da } else { &db };
        doc.edit_json(json!([{"op":"set","path":[format!("k{n}")],"value":n}]))
            .unwrap();
        flushed(doc).await;
    }
    let ups = until_seq(&mut da, 6).await;
    let want: Vec<DocUpdate> = (1..=6)
        .map(|seq| DocUpdate::Changed {
            seq,
            from_self: seq % 2 == 1,
        })
        .collect();
    assert_eq!(ups, want);
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;
}

#[tokio::test]
async fn a_tampered_hash_is_reported_as_drift_and_resynced() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let b = client(&server, "c-b").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    let mut db = b.join_doc("d", DocOptions::create()).await.unwrap();
    server.with(|s| s.tamper_next_hash = true);
    db.edit_json(json!([{"op":"set","path":["x"],"value":1}]))
        .unwrap();
    let ups = until_seq(&mut da, 1).await;
    // a (and b) saw a hash that is not theirs: reported, counted, resynced.
    let resynced = tokio::time::timeout(WAIT, async {
        let mut ups = ups;
        loop {
            if let Some(DocUpdate::Resynced { seq, reason }) = ups.last() {
                return (*seq, *reason);
            }
            ups.push(da.next().await.unwrap());
        }
    })
    .await
    .unwrap();
    assert_eq!(resynced, (1, ResyncReason::Drift));
    assert_eq!(a.stats().drift, 1);
    assert!(a
        .stats()
        .to_prometheus()
        .contains("concord_client_drift_total 1\n"));
    let drifts = server.with(|s| s.drifts.clone());
    let ours = state_hash(&json!({"x":1}));
    assert!(
        drifts.contains(&("d".to_string(), 1, ours.clone())),
        "{drifts:?}"
    );
    // The resync was a join without since.
    assert!(
        server.with(|s| s
            .joins
            .iter()
            .filter(|(r, since)| r == "d" && !since)
            .count())
            >= 3
    );
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;
    assert_eq!(da.state(), json!({"x":1}));
}

#[tokio::test]
async fn a_refused_list_is_rejected_and_rolled_back() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    da.edit_json(json!([{"op":"set","path":["keep"],"value":1}]))
        .unwrap();
    flushed(&da).await;
    until_seq(&mut da, 1).await;
    server.with(|s| s.trap = Some(Trap::Refuse("rejected")));
    da.edit_json(json!([{"op":"set","path":["bad"],"value":1}]))
        .unwrap();
    assert_eq!(da.state(), json!({"keep":1,"bad":1}));
    let first = tokio::time::timeout(WAIT, da.next())
        .await
        .unwrap()
        .unwrap();
    match first {
        DocUpdate::Rejected { id, code, message } => {
            assert!(id.starts_with("d-"), "{id}");
            assert_eq!(code, "rejected");
            assert!(message.contains("fake"));
        }
        other => panic!("{other:?}"),
    }
    let second = tokio::time::timeout(WAIT, da.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second,
        DocUpdate::Resynced {
            seq: 1,
            reason: ResyncReason::Rejected
        }
    );
    assert_eq!(da.state(), json!({"keep":1}));
    flushed(&da).await;
    // Editing goes on normally.
    da.edit_json(json!([{"op":"set","path":["after"],"value":2}]))
        .unwrap();
    assert_converged(&server, "d", &mut [&mut da]).await;
    assert_eq!(da.state(), json!({"keep":1,"after":2}));
}

#[tokio::test]
async fn unavailable_is_retried_and_conflict_resyncs() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    server.with(|s| s.trap = Some(Trap::Refuse("unavailable")));
    da.edit_json(json!([{"op":"set","path":["k"],"value":1}]))
        .unwrap();
    flushed(&da).await;
    let ids: Vec<String> = server.with(|s| s.ops_received.iter().map(|o| o.1.clone()).collect());
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "resent with the same id");
    assert_eq!(until_seq(&mut da, 1).await.len(), 1);

    server.with(|s| s.trap = Some(Trap::Refuse("conflict")));
    da.edit_json(json!([{"op":"set","path":["k"],"value":2}]))
        .unwrap();
    let up = tokio::time::timeout(WAIT, da.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        up,
        DocUpdate::Resynced {
            seq: 1,
            reason: ResyncReason::Conflict
        }
    );
    assert_eq!(da.state(), json!({"k":1}));
}

#[tokio::test]
async fn reconnects_resend_lost_lists_once_and_recover_committed_ones() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let b = client(&server, "c-b").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    let mut db = b.join_doc("d", DocOptions::create()).await.unwrap();
    da.edit_json(
        json!([{"op":"set","path":["t"],"value":"abc"},{"op":"set","path":["n"],"value":0}]),
    )
    .unwrap();
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;

    // a's list is committed but its ack and event are lost with the connection.
    server.with(|s| s.trap = Some(Trap::CommitSilently));
    da.edit_json(json!([{"op":"text","path":["t"],"pos":3,"insert":"!"}]))
        .unwrap();
    wait_received(&server, 2).await;
    // b's list is lost on the wire.
    server.with(|s| s.trap = Some(Trap::Drop));
    db.edit_json(json!([{"op":"text","path":["t"],"pos":0,"insert":">"}]))
        .unwrap();
    wait_received(&server, 3).await;
    da.edit_json(json!([{"op":"add","path":["n"],"value":1}]))
        .unwrap(); // buffered behind the silent one
    server.kill_connections();
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;
    assert_eq!(da.state(), json!({"t":">abc!","n":1}));
    // Every list committed once: seq 1 (setup), 2 (silent), then b's and a's buffer.
    let (seq, _) = server.doc("d");
    assert_eq!(seq, 4);
    let received = server.with(|s| s.ops_received.clone());
    let a_ids: Vec<&String> = received
        .iter()
        .filter(|o| o.0 == "c-a")
        .map(|o| &o.1)
        .collect();
    let unique: HashSet<&&String> = a_ids.iter().collect();
    assert_eq!(
        a_ids.len(),
        unique.len(),
        "a resent a committed list: {received:?}"
    );
    assert!(a.stats().reconnects >= 1 && b.stats().reconnects >= 1);
    // Recovery used `since`.
    assert!(server.with(|s| s.joins.iter().any(|(r, since)| r == "d" && *since)));
}

#[tokio::test]
async fn unavailable_for_a_room_without_an_id_rejoins_it() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let b = client(&server, "c-b").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    let mut db = b.join_doc("d", DocOptions::create()).await.unwrap();
    da.edit_json(json!([{"op":"set","path":["n"],"value":0}]))
        .unwrap();
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;
    let joins = server.with(|s| s.joins.len());

    // The room drops its members: each must join it again (from where it is) to hear more.
    server.evict("d");
    tokio::time::timeout(WAIT, async {
        while server.with(|s| s.joins.len()) < joins + 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("both clients join the room again");
    assert!(server.with(|s| s.joins[joins..].iter().all(|(r, since)| r == "d" && *since)));
    da.edit_json(json!([{"op":"add","path":["n"],"value":1}]))
        .unwrap();
    db.edit_json(json!([{"op":"add","path":["n"],"value":2}]))
        .unwrap();
    assert_converged(&server, "d", &mut [&mut da, &mut db]).await;
    assert_eq!(da.state(), json!({"n":3}));
    for d in [&mut da, &mut db] {
        while let Some(u) = d.try_next() {
            assert!(matches!(u, DocUpdate::Changed { .. }), "{u:?}");
        }
        assert!(d.end_reason().is_none());
    }
    assert_eq!(a.stats().reconnects + b.stats().reconnects, 0);
}

#[tokio::test]
async fn edits_made_offline_are_sent_after_the_reconnect() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    server.with(|s| s.trap = Some(Trap::Drop));
    da.edit_json(json!([{"op":"set","path":["a"],"value":1}]))
        .unwrap();
    wait_received(&server, 1).await;
    server.kill_connections();
    for n in 0..5 {
        da.edit_json(json!([{"op":"set","path":[format!("k{n}")],"value":n}]))
            .unwrap();
    }
    assert_converged(&server, "d", &mut [&mut da]).await;
    assert_eq!(da.state()["k4"], 4);
    assert_eq!(da.state()["a"], 1);
}

#[tokio::test]
async fn an_epoch_reset_while_away_drops_pending_edits() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    da.edit_json(json!([{"op":"set","path":["old"],"value":1}]))
        .unwrap();
    flushed(&da).await;
    until_seq(&mut da, 1).await;
    server.with(|s| {
        s.trap = Some(Trap::Drop);
        // Restored elsewhere: a new epoch with another state.
        s.docs
            .insert("d".into(), DocRoom::new("e2", json!({"restored":true})));
    });
    da.edit_json(json!([{"op":"set","path":["lost"],"value":1}]))
        .unwrap();
    wait_received(&server, 2).await;
    server.kill_connections();
    let up = tokio::time::timeout(WAIT, da.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        up,
        DocUpdate::Resynced {
            seq: 0,
            reason: ResyncReason::Reset
        }
    );
    flushed(&da).await;
    assert_eq!(da.snapshot(), (0, json!({"restored":true})));
    assert_eq!(da.epoch(), "e2");
}

#[tokio::test]
async fn local_refusals_kinds_and_leaving() {
    let server = FakeServer::start().await;
    let a = client(&server, "c-a").await;
    let mut da = a.join_doc("d", DocOptions::create()).await.unwrap();
    let err = da
        .edit_json(json!([{"op":"set","path":["a"],"value":1},{"op":"del","path":["nope"]}]))
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Apply(e) if e.index == 1),
        "{err:?}"
    );
    assert_eq!(da.state(), json!({}));
    let err = da.edit_json(json!([{"op":"frob","path":[]}])).unwrap_err();
    assert!(matches!(err, ClientError::InvalidOps(_)), "{err:?}");
    assert!(!da.has_pending());

    assert_eq!(
        a.join_doc("d", DocOptions::create()).await.unwrap_err(),
        ClientError::AlreadyJoined("d".into())
    );
    assert_eq!(
        a.join("d", JoinOptions::default()).await.unwrap_err(),
        ClientError::AlreadyJoined("d".into())
    );
    let b = client(&server, "c-b").await;
    assert_eq!(
        b.join("d", JoinOptions::default()).await.unwrap_err(),
        ClientError::UnsupportedKind("doc".into())
    );
    let _stream = a.join("s", JoinOptions::stream()).await.unwrap();
    assert_eq!(
        b.join_doc("s", DocOptions::default()).await.unwrap_err(),
        ClientError::UnsupportedKind("stream".into())
    );
    assert_eq!(
        b.join_doc("missing", DocOptions::default())
            .await
            .unwrap_err()
            .code(),
        Some("not_found")
    );

    a.leave("d").await.unwrap();
    assert_eq!(da.next().await, None);
    assert_eq!(da.end_reason(), None);
    assert_eq!(
        da.edit_json(json!([{"op":"set","path":["a"],"value":1}])),
        Err(ClientError::NotJoined("d".into()))
    );
    // Joined again: the state is the server's.
    let again = a.join_doc("d", DocOptions::default()).await.unwrap();
    assert_eq!(again.snapshot(), (0, json!({})));

    a.close().await;
    assert_eq!(
        again.edit_json(json!([{"op":"set","path":["a"],"value":1}])),
        Err(ClientError::Closed)
    );
}
