//! Room creation: kinds fixed by pattern, the per-connection creation rate, the room quota.

use crate::support::*;
use concord_core::RoomKind;
use concord_server::config::Rate;
use serde_json::json;

#[tokio::test]
async fn room_kinds_fix_the_kind_of_matching_rooms() {
    let server = TestServer::memory(|c| {
        c.room_kinds = vec![
            ("chat:*".into(), RoomKind::Stream),
            ("doc:*".into(), RoomKind::Doc),
        ]
    })
    .await;
    let mut w = Ws::hello(&server, "c").await;
    w.send(json!({"type":"join","room":"chat:announcements","kind":"doc"}))
        .await;
    let e = w.recv().await;
    assert_eq!(e["code"], "kind_mismatch", "{e}");
    // Without a kind, a mapped room is created with its kind; an unmapped one is not.
    w.send(json!({"type":"join","room":"doc:spec"})).await;
    let joined = w.recv().await;
    assert_eq!(
        (joined["type"].as_str(), joined["kind"].as_str()),
        (Some("joined"), Some("doc")),
        "{joined}"
    );
    w.send(json!({"type":"join","room":"other"})).await;
    assert_eq!(w.recv().await["code"], "not_found");
    // HTTP publishes never create a room mapped to doc.
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/doc:fresh/events",
        Some(json!({"data": 1})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("kind_mismatch")), "{e}");
    let (s, r) = http(
        &server,
        "POST",
        "/v1/rooms/chat:fresh/events",
        Some(json!({"data": 1})),
    )
    .await;
    assert_eq!((s, r["seq"].as_u64()), (200, Some(1)), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn creating_rooms_is_rate_limited_per_connection_but_joining_is_not() {
    let server = TestServer::memory(|c| c.rate_room_create_per_conn = Rate::new(1, 3)).await;
    let mut w = Ws::hello(&server, "c").await;
    for n in 0..3 {
        w.join(&format!("r{n}"), json!({})).await;
    }
    w.send(json!({"type":"join","room":"r3","kind":"stream"}))
        .await;
    let e = w.recv().await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(e["retry_after_ms"].as_u64().unwrap() >= 1, "{e}");
    // Another connection joins the existing rooms freely, and has its own creation bucket.
    let mut other = Ws::hello(&server, "d").await;
    for n in 0..3 {
        other.join(&format!("r{n}"), json!({})).await;
    }
    other.join("r3", json!({})).await;
    server.stop().await;
}

#[tokio::test]
async fn the_room_quota_bounds_stored_rooms() {
    let server = TestServer::memory(|c| c.max_rooms = 2).await;
    let mut w = Ws::hello(&server, "c").await;
    w.join("a", json!({})).await;
    w.join("b", json!({})).await;
    w.send(json!({"type":"join","room":"c","kind":"stream"}))
        .await;
    let e = w.recv().await;
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("maximum number of rooms"),
        "{e}"
    );
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/d/events",
        Some(json!({"data": 1})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (503, Some("unavailable")), "{e}");
    // Existing rooms still take joins and publishes.
    w.publish("a", "p1", json!(1)).await;
    server.stop().await;
}

#[tokio::test]
async fn retention_trims_old_events_and_recovery_becomes_a_reset() {
    let server = TestServer::memory(|c| {
        c.retention = vec![concord_server::config::RetentionPolicy {
            pattern: "chat:*".into(),
            max_events: Some(10),
            max_age: None,
        }];
        c.retention_interval = std::time::Duration::from_millis(50);
        // Catch-ups beyond 4 events read the store.
        c.room_window = 4;
    })
    .await;
    let mut w = Ws::hello(&server, "c").await;
    let joined = w.join("chat:log", json!({})).await;
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    for n in 1..=30 {
        w.publish("chat:log", &format!("p{n}"), json!(n)).await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let first = all_events(&server, "chat:log").await;
        if seqs(&first) == (21..=30).collect::<Vec<_>>() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not trimmed: {:?}",
            seqs(&first)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut r = Ws::hello(&server, "r").await;
    // A position before the retained floor cannot be recovered event by event.
    let j = r
        .join(
            "chat:log",
            json!({"since": {"epoch": epoch, "seq": 5}, "history": 20}),
        )
        .await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(
        seqs(j["events"].as_array().unwrap()),
        (21..=30).collect::<Vec<_>>()
    );
    r.send(json!({"type":"leave","room":"chat:log"})).await;
    assert_eq!(r.recv().await["type"], "left");
    // A position after it still is.
    let j = r
        .join("chat:log", json!({"since": {"epoch": epoch, "seq": 22}}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(
        seqs(j["events"].as_array().unwrap()),
        (23..=30).collect::<Vec<_>>()
    );
    // Seqs go on from the head.
    let (ack, _) = w.publish("chat:log", "p31", json!(31)).await;
    assert_eq!(ack["seq"], 31);
    server.stop().await;
}

fn doc_retention(c: &mut concord_server::Config) {
    c.retention = vec![concord_server::config::RetentionPolicy {
        pattern: "doc:*".into(),
        max_events: Some(1),
        max_age: None,
    }];
    c.retention_interval = std::time::Duration::from_millis(50);
    c.doc_snapshot_every = 5;
    c.doc_window = 3;
}

/// Sends an op list and returns its ack (or error), skipping events.
async fn op_ack(w: &mut Ws, id: &str, base: u64, n: u64) -> serde_json::Value {
    let ops = json!([{"op":"set","path":["n"],"value":n}]);
    w.send(json!({"type":"op","room":"doc:log","id":id,"base":base,"ops":ops}))
        .await;
    loop {
        let m = w.recv_durable().await;
        if m["id"] == id && (m["type"] == "ack" || m["type"] == "error") {
            return m;
        }
    }
}

#[tokio::test]
async fn retention_compacts_doc_rooms_which_still_load_and_rebase() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path(), doc_retention).await;
    let mut w = Ws::hello(&server, "c").await;
    w.join("doc:log", json!({"kind":"doc"})).await;
    for n in 1..=20 {
        let ack = op_ack(&mut w, &format!("o{n}"), n - 1, n).await;
        assert_eq!(ack["seq"], n, "{ack}");
    }
    // Head 20, rebase window 3 (the cut stops at 18), snapshots every 5 ops: ops up to the
    // snapshot at 15 go.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let evs = all_events(&server, "doc:log").await;
        if seqs(&evs) == (16..=20).collect::<Vec<_>>() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted: {:?}",
            seqs(&evs)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, e) = http(&server, "GET", "/v1/rooms/doc:log?at=3", None).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")), "{e}");
    let (s, r) = http(&server, "GET", "/v1/rooms/doc:log?at=17", None).await;
    assert_eq!((s, r["state"].clone()), (200, json!({"n":17})), "{r}");
    // A stale base inside the rebase window is still rebased.
    let ack = op_ack(&mut w, "late", 17, 99).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    drop(w);
    server.stop().await;
    // After a restart the document loads from its snapshot and the retained ops.
    let server = TestServer::sqlite(dir.path(), doc_retention).await;
    let mut w = Ws::hello(&server, "d").await;
    let j = w.join("doc:log", json!({"kind":"doc"})).await;
    assert_eq!(
        (j["seq"].clone(), j["state"].clone()),
        (json!(21), json!({"n":99})),
        "{j}"
    );
    let ack = op_ack(&mut w, "after", 19, 7).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    server.stop().await;
}
