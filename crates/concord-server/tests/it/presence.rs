//! Presence: snapshot in `joined`, coalesced updates, `data:null` exactly once, membership notices.

use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Reads until a message of `ty` arrives, returning it and the durable messages skipped.
async fn until(w: &mut Ws, ty: &str) -> Value {
    loop {
        let m = w.recv().await;
        if m["type"] == ty {
            return m;
        }
    }
}

#[tokio::test]
async fn presence_snapshot_updates_and_departure() {
    let server = TestServer::memory(|c| c.presence_interval = Duration::from_millis(20)).await;
    let mut a = Ws::hello(&server, "a").await;
    let j = a.join("r", json!({})).await;
    assert_eq!(j["presence"], json!({}));
    assert_eq!(
        j["members"],
        json!([{"client_id":"a","user":"anonymous","meta":{}}])
    );
    a.send(json!({"type":"presence","room":"r","data":{"cursor":3}}))
        .await;
    let p = until(&mut a, "presence").await;
    assert_eq!(
        p,
        json!({"type":"presence","room":"r","client_id":"a","data":{"cursor":3}})
    );

    let mut b = Ws::hello(&server, "b").await;
    let j = b.join("r", json!({})).await;
    assert_eq!(
        j["presence"],
        json!({"a":{"cursor":3}}),
        "joining members get the current presence"
    );
    assert_eq!(j["members"].as_array().unwrap().len(), 2);
    let joined = until(&mut a, "member_joined").await;
    assert_eq!(joined["client_id"], "b");

    // b disconnects: a gets member_left and presence null for b only if b had presence.
    b.send(json!({"type":"presence","room":"r","data":{"cursor":9}}))
        .await;
    let p = until(&mut a, "presence").await;
    assert_eq!(
        (p["client_id"].as_str(), p["data"].clone()),
        (Some("b"), json!({"cursor":9}))
    );
    drop(b);
    let left = until(&mut a, "member_left").await;
    assert_eq!(left["client_id"], "b");
    let gone = until(&mut a, "presence").await;
    assert_eq!(
        gone,
        json!({"type":"presence","room":"r","client_id":"b","data":null})
    );
    // Exactly once: the next presence a sees is its own new update, not another null for b.
    a.send(json!({"type":"presence","room":"r","data":{"cursor":4}}))
        .await;
    let p = until(&mut a, "presence").await;
    assert_eq!(
        (p["client_id"].as_str(), p["data"].clone()),
        (Some("a"), json!({"cursor":4}))
    );
    let mut c = Ws::hello(&server, "c").await;
    let j = c.join("r", json!({})).await;
    assert_eq!(
        j["presence"],
        json!({"a":{"cursor":4}}),
        "b's presence is gone"
    );

    // A client clearing its own presence is announced once; leaving afterwards sends no second null.
    let mut d = Ws::hello(&server, "d").await;
    d.join("r", json!({})).await;
    d.send(json!({"type":"presence","room":"r","data":{"here":true}}))
        .await;
    let p = until(&mut c, "presence").await;
    assert_eq!(p["client_id"], "d");
    d.send(json!({"type":"presence","room":"r","data":null}))
        .await;
    let p = until(&mut c, "presence").await;
    assert_eq!(
        (p["client_id"].as_str(), p["data"].clone()),
        (Some("d"), Value::Null)
    );
    d.send(json!({"type":"leave","room":"r"})).await;
    let left = until(&mut c, "member_left").await;
    assert_eq!(left["client_id"], "d");
    // Leaving explicitly clears presence too (and is the next presence c sees: none for d).
    a.send(json!({"type":"leave","room":"r"})).await;
    let gone = until(&mut c, "presence").await;
    assert_eq!(
        gone,
        json!({"type":"presence","room":"r","client_id":"a","data":null})
    );
    server.stop().await;
}

#[tokio::test]
async fn bursts_are_coalesced_to_the_latest_value() {
    // The presence window follows the server's clock, which moves only when the test says so.
    let clock = TestClock::at_system_time();
    let server = TestServer::memory_at(&clock, |c| {
        c.presence_interval = Duration::from_millis(500);
        c.rate_presence_per_conn = concord_server::config::Rate::UNLIMITED;
    })
    .await;
    let mut a = Ws::hello(&server, "a").await;
    a.join("r", json!({})).await;
    let mut b = Ws::hello(&server, "b").await;
    b.join("r", json!({})).await;
    for i in 0..=50 {
        a.feed(json!({"type":"presence","room":"r","data":{"cursor":i}}))
            .await;
    }
    a.flush().await;
    // A durable event published after the burst is not held back by presence: it arrives while
    // the whole burst still waits in the window.
    let (ack, _) = a.publish("r", "after-burst", json!(1)).await;
    loop {
        let m = b.recv().await;
        assert_ne!(
            m["type"], "presence",
            "presence went out inside its window: {m}"
        );
        if m["type"] == "event" {
            assert_eq!(m["seq"], ack["seq"]);
            break;
        }
    }
    assert_eq!(server.metric("concord_presence_in_total", &[]), 51.0);
    assert_eq!(server.metric("concord_presence_coalesced_total", &[]), 50.0);
    // The window ends: one frame, the latest value.
    clock.advance(Duration::from_millis(500));
    let p = until(&mut b, "presence").await;
    assert_eq!(
        (p["client_id"].as_str(), p["data"].clone()),
        (Some("a"), json!({"cursor":50}))
    );
    server.stop().await;
}

#[tokio::test]
async fn presence_needs_membership_and_has_a_size_limit() {
    let server = TestServer::memory(|c| c.max_presence_bytes = 64).await;
    let mut a = Ws::hello(&server, "a").await;
    a.send(json!({"type":"presence","room":"r","data":1})).await;
    assert_eq!(a.recv().await["code"], "not_found");
    a.join("r", json!({})).await;
    a.send(json!({"type":"presence","room":"r","data":"x".repeat(100)}))
        .await;
    assert_eq!(a.recv_durable().await["code"], "too_large");
    server.stop().await;
}

#[tokio::test]
async fn joined_presence_is_under_the_catch_up_budget_and_the_rest_follows_as_presence_frames() {
    let server = TestServer::memory(|c| {
        c.presence_interval = Duration::from_millis(20);
        c.max_catch_up_bytes = 2048;
    })
    .await;
    let mut watcher = Ws::hello(&server, "watcher").await;
    watcher.join("r", json!({})).await;
    let mut setters = Vec::new();
    for i in 0..10 {
        let mut s = Ws::hello(&server, &format!("s{i}")).await;
        s.join("r", json!({})).await;
        s.send(json!({"type":"presence","room":"r","data":{"pad":"p".repeat(400),"i":i}}))
            .await;
        setters.push(s);
    }
    // Every presence is set in the room once the watcher saw all of them.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 10 {
        let p = until(&mut watcher, "presence").await;
        seen.insert(p["client_id"].as_str().unwrap().to_string());
    }
    let mut late = Ws::hello(&server, "late").await;
    late.send(json!({"type":"join","room":"r","kind":"stream"}))
        .await;
    let j = until(&mut late, "joined").await;
    assert!(
        j.to_string().len() < 2048 + 512,
        "joined is {} bytes",
        j.to_string().len()
    );
    let inline: Vec<String> = j["presence"].as_object().unwrap().keys().cloned().collect();
    assert!(
        !inline.is_empty() && inline.len() < 10,
        "presence trimmed to the budget: {inline:?}"
    );
    assert_eq!(j["members"].as_array().unwrap().len(), 12);
    // The others follow at once as ordinary presence frames.
    let mut all: std::collections::HashSet<String> = inline.into_iter().collect();
    while all.len() < 10 {
        let p = until(&mut late, "presence").await;
        assert_eq!(p["data"]["pad"].as_str().map(str::len), Some(400), "{p}");
        all.insert(p["client_id"].as_str().unwrap().to_string());
    }
    server.stop().await;
}

/// A cursor moved 200 times in a burst (beyond the default presence rate of 30/s, burst 60):
/// nothing is refused, the other member ends at the last position, in a handful of frames.
#[tokio::test]
async fn a_burst_beyond_the_presence_rate_ends_at_its_latest_value_everywhere() {
    // The server's clock stands still until the test moves it: the rate refills only then.
    let clock = TestClock::at_system_time();
    let server = TestServer::memory_at(&clock, |c| {
        c.presence_interval = Duration::from_millis(50);
    })
    .await;
    let mut a = Ws::hello(&server, "a").await;
    a.join("r", json!({})).await;
    let mut b = Ws::hello(&server, "b").await;
    b.join("r", json!({})).await;
    for i in 0..200 {
        a.feed(json!({"type":"presence","room":"r","data":{"cursor":i}}))
            .await;
    }
    a.flush().await;
    // The connection handles its frames in order: once the publish after the burst is acked,
    // every update of the burst was handled, and any refusal would have come first.
    a.publish("r", "after-burst", json!(1)).await;
    assert_eq!(server.metric("concord_presence_in_total", &[]), 200.0);
    assert_eq!(
        server.metric("concord_rate_limited_total", &[("scope", "presence")]),
        0.0
    );
    // Held beyond the burst of 60 (each replacing the one before but the first).
    assert_eq!(server.metric("concord_presence_held_total", &[]), 140.0);
    // Time moves in presence intervals until b sees a's last position.
    let mut frames = Vec::new();
    for _ in 0..200 {
        clock.advance(Duration::from_millis(50));
        // Reads what arrived; the short wait only paces the clock's steps.
        while let Ok(m) = tokio::time::timeout(Duration::from_millis(20), b.recv()).await {
            if m["type"] == "presence" && m["client_id"] == "a" {
                frames.push(m["data"]["cursor"].clone());
            }
        }
        if frames.last() == Some(&json!(199)) {
            break;
        }
    }
    assert_eq!(
        frames.last(),
        Some(&json!(199)),
        "b never saw a's last cursor: {frames:?}"
    );
    assert!(frames.len() <= 4, "presence frames to b: {frames:?}");
    server.stop().await;
}
