//! Doc rooms over real WebSockets: concurrent edits converge, stale bases are rebased, old
//! bases get `conflict`, atomic rejection, schema validation, restore, `?at=`, snapshots.

use crate::support::*;
use concord_core::doc::state_hash;
use serde_json::{json, Value};
use std::time::Duration;

async fn join_doc(w: &mut Ws, room: &str) -> Value {
    w.send(json!({"type":"join","room":room,"kind":"doc"}))
        .await;
    let j = w.recv_durable().await;
    assert_eq!(j["type"], "joined", "{j}");
    j
}

/// Sends an op list and returns its ack (or error), skipping events.
async fn op(w: &mut Ws, room: &str, id: &str, base: u64, ops: Value) -> Value {
    w.send(json!({"type":"op","room":room,"id":id,"base":base,"ops":ops}))
        .await;
    loop {
        let m = w.recv_durable().await;
        if m["id"] == id && (m["type"] == "ack" || m["type"] == "error") {
            return m;
        }
        assert_eq!(m["type"], "event", "{m}");
    }
}

/// The next `n` events, skipping acks (which may come before or after the events).
async fn doc_events(w: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = w.recv_durable().await;
        match m["type"].as_str() {
            Some("event") => out.push(m),
            Some("ack") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    out
}

/// Reads until the event with `seq`.
async fn event_at(w: &mut Ws, seq: u64) -> Value {
    loop {
        let m = w.recv_durable().await;
        if m["type"] == "event" && m["seq"] == seq {
            return m;
        }
    }
}

async fn room_state(server: &TestServer, room: &str, at: Option<u64>) -> Value {
    let path = match at {
        Some(a) => format!("/v1/rooms/{room}?at={a}"),
        None => format!("/v1/rooms/{room}"),
    };
    let (s, r) = http(server, "GET", &path, None).await;
    assert_eq!(s, 200, "{r}");
    r
}

#[tokio::test]
async fn concurrent_inserts_at_one_position_converge_and_hashes_agree() {
    let server = TestServer::memory(|c| c.doc_hash_every = 1).await;
    let mut a = Ws::hello(&server, "a").await;
    let mut b = Ws::hello(&server, "b").await;
    let j = join_doc(&mut a, "doc:1").await;
    assert_eq!(
        (j["state"].clone(), j["seq"].clone()),
        (json!({}), json!(0))
    );
    assert_eq!(j["hash"], state_hash(&json!({})));
    join_doc(&mut b, "doc:1").await;
    let ack = op(
        &mut a,
        "doc:1",
        "a1",
        0,
        json!([{"op":"set","path":["body"],"value":"hello"}]),
    )
    .await;
    assert_eq!(ack["seq"], 1);
    // Both insert at position 5 against base 1, without seeing each other.
    a.send(json!({"type":"op","room":"doc:1","id":"a2","base":1,"ops":[{"op":"text","path":["body"],"pos":5,"insert":" A"}]})).await;
    b.send(json!({"type":"op","room":"doc:1","id":"b1","base":1,"ops":[{"op":"text","path":["body"],"pos":5,"insert":" B"}]})).await;
    let evs = doc_events(&mut a, 3).await;
    let evs_b = doc_events(&mut b, 3).await;
    assert_eq!(
        evs, evs_b,
        "both members see the same committed ops in the same order"
    );
    let doc = room_state(&server, "doc:1", None).await;
    let body = doc["state"]["body"].as_str().unwrap().to_string();
    assert!(body == "hello A B" || body == "hello B A", "{body}");
    // The later insert was shifted past the earlier one.
    assert_eq!(evs[2]["ops"][0]["pos"], 7, "{}", evs[2]);
    assert_eq!(doc["hash"], state_hash(&doc["state"]));
    assert_eq!(
        evs[2]["hash"], doc["hash"],
        "the last event's hash is the state's hash"
    );
    server.stop().await;
}

#[tokio::test]
async fn stale_bases_are_rebased_old_ones_conflict_and_dropped_ops_are_reported() {
    let server = TestServer::memory(|c| c.doc_window = 5).await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "d").await;
    op(&mut a, "d", "init", 0, json!([{"op":"set","path":["items"],"value":["x","y"]},{"op":"set","path":["tmp"],"value":{"k":1}}])).await;
    // Insert at the front at seq 2; a stale edit of "y" (index 1 at base 1) follows it to index 2.
    op(
        &mut a,
        "d",
        "front",
        1,
        json!([{"op":"ins","path":["items",0],"value":"w"}]),
    )
    .await;
    let ack = op(
        &mut a,
        "d",
        "stale",
        1,
        json!([{"op":"set","path":["items",1],"value":"Y"}]),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        room_state(&server, "d", None).await["state"]["items"],
        json!(["w", "x", "Y"])
    );
    // An edit under a key deleted concurrently is dropped and reported.
    op(&mut a, "d", "del", 3, json!([{"op":"del","path":["tmp"]}])).await;
    let ack = op(&mut a, "d", "under", 3, json!([{"op":"set","path":["tmp","k"],"value":2},{"op":"set","path":["kept"],"value":true}])).await;
    assert_eq!(ack["dropped"], json!([0]), "{ack}");
    let state = room_state(&server, "d", None).await["state"].clone();
    assert_eq!(state.get("tmp"), None);
    assert_eq!(state["kept"], true);
    let ack = op(
        &mut a,
        "d",
        "counter",
        5,
        json!([{"op":"set","path":["count"],"value":0}]),
    )
    .await;
    assert_eq!(ack["seq"], 6);
    for n in 0..6 {
        let ack = op(
            &mut a,
            "d",
            &format!("n{n}"),
            6 + n,
            json!([{"op":"add","path":["count"],"value":1}]),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    assert_eq!(room_state(&server, "d", None).await["state"]["count"], 6);
    // Base 1 is older than the 5-op window.
    let e = op(
        &mut a,
        "d",
        "old",
        1,
        json!([{"op":"set","path":["z"],"value":1}]),
    )
    .await;
    assert_eq!(e["code"], "conflict", "{e}");
    let e = op(
        &mut a,
        "d",
        "future",
        999,
        json!([{"op":"set","path":["z"],"value":1}]),
    )
    .await;
    assert_eq!(e["code"], "conflict", "{e}");
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_op_rejects_the_whole_list_and_the_schema_is_enforced() {
    let schema = json!({"type":"object","properties":{"title":{"type":"string"}}});
    let validator = jsonschema::validator_for(&schema).unwrap();
    let server = TestServer::memory(|c| {
        c.doc_schemas = vec![std::sync::Arc::new(concord_server::room::doc::DocSchema {
            pattern: "doc:strict:*".into(),
            validator,
        })]
    })
    .await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "doc:strict:1").await;
    op(
        &mut a,
        "doc:strict:1",
        "t",
        0,
        json!([{"op":"set","path":["title"],"value":"ok"},{"op":"set","path":["n"],"value":1}]),
    )
    .await;
    let e = op(&mut a, "doc:strict:1", "bad", 1, json!([{"op":"set","path":["m"],"value":1},{"op":"text","path":["n"],"pos":0,"insert":"x"}])).await;
    assert_eq!(e["code"], "invalid_op");
    assert!(e["message"].as_str().unwrap().contains("op 1"), "{e}");
    let e = op(
        &mut a,
        "doc:strict:1",
        "schema",
        1,
        json!([{"op":"set","path":["title"],"value":7}]),
    )
    .await;
    assert_eq!(e["code"], "rejected", "{e}");
    let e = op(
        &mut a,
        "doc:strict:1",
        "unknown",
        1,
        json!([{"op":"frob","path":["x"]}]),
    )
    .await;
    assert_eq!(e["code"], "invalid_op");
    assert!(e["message"].as_str().unwrap().contains("op 0"), "{e}");
    let doc = room_state(&server, "doc:strict:1", None).await;
    assert_eq!(
        (doc["seq"].clone(), doc["state"].clone()),
        (json!(1), json!({"title":"ok","n":1}))
    );
    // Publish into a doc room and op into a stream room are kind mismatches.
    a.send(json!({"type":"publish","room":"doc:strict:1","id":"p","data":1}))
        .await;
    assert_eq!(a.recv_durable().await["code"], "kind_mismatch");
    server.stop().await;
}

#[tokio::test]
async fn restore_commits_the_old_state_as_new_ops_and_at_reads_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path(), |c| c.doc_snapshot_every = 2).await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "d").await;
    for (n, title) in ["v1", "v2", "v3"].iter().enumerate() {
        let ops = json!([{"op":"set","path":["title"],"value":title},{"op":"add","path":["edits"],"value":1}]);
        let ops = if n == 0 {
            json!([{"op":"set","path":["title"],"value":title},{"op":"set","path":["edits"],"value":1}])
        } else {
            ops
        };
        op(&mut a, "d", &format!("e{n}"), n as u64, ops).await;
    }
    assert_eq!(
        room_state(&server, "d", Some(1)).await["state"],
        json!({"title":"v1","edits":1})
    );
    assert_eq!(
        room_state(&server, "d", Some(2)).await["state"],
        json!({"title":"v2","edits":2})
    );
    assert_eq!(room_state(&server, "d", Some(0)).await["state"], json!({}));
    let (s, e) = http(&server, "GET", "/v1/rooms/d?at=9", None).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
    let (s, r) = http(
        &server,
        "POST",
        "/v1/rooms/d/restore",
        Some(json!({"seq":1})),
    )
    .await;
    assert_eq!((s, r["seq"].as_u64()), (200, Some(4)), "{r}");
    let ev = event_at(&mut a, 4).await;
    assert_eq!(ev["from"], "http");
    let now = room_state(&server, "d", None).await;
    assert_eq!(
        (now["seq"].clone(), now["state"].clone()),
        (json!(4), json!({"title":"v1","edits":1}))
    );
    // History is kept: seq 3 still reads v3.
    assert_eq!(
        room_state(&server, "d", Some(3)).await["state"]["title"],
        "v3"
    );
    drop(a);
    server.stop().await;
    // After a restart the document loads from its snapshot and the ops after it.
    let server = TestServer::sqlite(dir.path(), |_| {}).await;
    let mut b = Ws::hello(&server, "b").await;
    let j = join_doc(&mut b, "d").await;
    assert_eq!(
        (j["seq"].clone(), j["state"].clone()),
        (json!(4), json!({"title":"v1","edits":1}))
    );
    assert_eq!(j["hash"], state_hash(&j["state"]));
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/d/restore",
        Some(json!({"seq":99})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
    server.stop().await;
}

#[tokio::test]
async fn rejoin_recovers_doc_events_or_gets_the_state() {
    let server = TestServer::memory(|c| {
        c.recovery_window = 3;
        c.room_idle_unload = Duration::from_millis(50);
    })
    .await;
    let mut a = Ws::hello(&server, "a").await;
    let j = join_doc(&mut a, "d").await;
    let epoch = j["epoch"].as_str().unwrap().to_string();
    for n in 0..5u64 {
        op(
            &mut a,
            "d",
            &format!("n{n}"),
            n,
            json!([{"op":"set","path":[format!("k{n}")],"value":n}]),
        )
        .await;
    }
    let mut b = Ws::hello(&server, "b").await;
    b.send(json!({"type":"join","room":"d","since":{"epoch":epoch,"seq":3}}))
        .await;
    let j = b.recv_durable().await;
    assert_eq!(j["recovered"], true);
    assert_eq!(seqs(j["events"].as_array().unwrap()), vec![4, 5]);
    assert!(j.get("state").is_none(), "recovered by events: no state");
    assert_eq!(
        j["events"][0]["ops"],
        json!([{"op":"set","path":["k3"],"value":3}])
    );
    b.send(json!({"type":"join","room":"d","since":{"epoch":epoch,"seq":0}}))
        .await;
    let j = b.recv_durable().await;
    assert_eq!(j["recovered"], false);
    assert_eq!(j["state"], json!({"k0":0,"k1":1,"k2":2,"k3":3,"k4":4}));
    // Retried op ids get their original ack.
    let again = op(
        &mut a,
        "d",
        "n2",
        0,
        json!([{"op":"set","path":["dup"],"value":1}]),
    )
    .await;
    assert_eq!(again["seq"], 3);
    assert_eq!(room_state(&server, "d", None).await["seq"], 5);
    server.stop().await;
}

#[tokio::test]
async fn at_reads_every_seq_with_only_the_newest_snapshots_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut concord_server::Config| {
        c.doc_snapshot_every = 2;
        c.doc_snapshots_kept = 2;
    };
    let server = TestServer::sqlite(dir.path(), tweak).await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "doc:kept").await;
    let state = |i: u64| {
        if i == 0 {
            json!({})
        } else {
            json!({"n": i, "first": 1})
        }
    };
    for i in 0..11u64 {
        let ops = if i == 0 {
            json!([{"op":"set","path":["first"],"value":1},{"op":"set","path":["n"],"value":1}])
        } else {
            json!([{"op":"add","path":["n"],"value":1}])
        };
        let ack = op(&mut a, "doc:kept", &format!("k{i}"), i, ops).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let db = dir.path().join("concord.db");
    let snapshots = || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT COUNT(*), MIN(seq) FROM snapshots", [], |r| {
            Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?))
        })
        .unwrap()
    };
    let mut kept = (0, 0);
    for _ in 0..100 {
        kept = snapshots();
        if kept == (2, 8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kept, (2, 8), "only the snapshots at 8 and 10 are kept");
    for at in 0..=11 {
        let r = room_state(&server, "doc:kept", Some(at)).await;
        assert_eq!(r["state"], state(at), "at={at}");
    }
    server.stop().await;
    let server = TestServer::sqlite(dir.path(), tweak).await;
    for at in [0, 3, 7, 9, 11] {
        let r = room_state(&server, "doc:kept", Some(at)).await;
        assert_eq!(r["state"], state(at), "after a restart, at={at}");
    }
    let mut b = Ws::hello(&server, "b").await;
    assert_eq!(join_doc(&mut b, "doc:kept").await["state"], state(11));
    server.stop().await;
}

#[tokio::test]
async fn rebase_work_beyond_the_limit_is_a_conflict() {
    let server = TestServer::memory(|c| c.doc_max_rebase_work = 10).await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "doc:work").await;
    for i in 0..5u64 {
        let ack = op(
            &mut a,
            "doc:work",
            &format!("w{i}"),
            i,
            json!([{"op":"set","path":[format!("k{i}")],"value":i}]),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let two = json!([{"op":"set","path":["x"],"value":1},{"op":"set","path":["y"],"value":1}]);
    let ack = op(&mut a, "doc:work", "two", 0, two).await;
    assert_eq!(
        ack["type"], "ack",
        "2 ops × 5 committed = 10 is allowed: {ack}"
    );
    let three = json!([{"op":"set","path":["x"],"value":2},{"op":"set","path":["y"],"value":2},{"op":"set","path":["z"],"value":2}]);
    let refused = op(&mut a, "doc:work", "three", 0, three.clone()).await;
    assert_eq!(refused["code"], "conflict", "{refused}");
    let ack = op(&mut a, "doc:work", "three", 6, three).await;
    assert_eq!(ack["type"], "ack", "with a current base it commits: {ack}");
    server.stop().await;
}

#[tokio::test]
async fn depth_and_size_of_the_document_are_limited() {
    let server = TestServer::memory(|c| {
        c.doc_max_depth = 3;
        c.doc_max_bytes = 100;
    })
    .await;
    let mut a = Ws::hello(&server, "a").await;
    join_doc(&mut a, "doc:small").await;
    let ok = op(
        &mut a,
        "doc:small",
        "d1",
        0,
        json!([{"op":"set","path":["a"],"value":{"b":{}}}]),
    )
    .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let deep =
        json!([{"op":"set","path":["z"],"value":1},{"op":"set","path":["a","b","c"],"value":{}}]);
    let refused = op(&mut a, "doc:small", "d2", 1, deep).await;
    assert_eq!(refused["code"], "rejected", "{refused}");
    let big = json!([{"op":"set","path":["s"],"value":"x".repeat(90)}]);
    let refused = op(&mut a, "doc:small", "d3", 1, big).await;
    assert_eq!(refused["code"], "rejected", "{refused}");
    let fits = json!([{"op":"set","path":["s"],"value":"x".repeat(70)}]);
    assert_eq!(op(&mut a, "doc:small", "d4", 1, fits).await["type"], "ack");
    let (_, r) = http(&server, "GET", "/v1/rooms/doc:small", None).await;
    assert_eq!(
        r["state"]["a"],
        json!({"b":{}}),
        "nothing of a refused list applied"
    );
    assert!(r["state"].get("z").is_none(), "{r}");
    server.stop().await;
}
