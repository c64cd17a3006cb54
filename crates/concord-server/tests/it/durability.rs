//! Idempotent retries (same connection, new connection, after restart, beyond the memory cache)
//! and graceful shutdown with a SQLite store.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn retry_on_a_new_connection_returns_the_original_ack() {
    let server = TestServer::memory(|_| {}).await;
    let mut a = Ws::hello(&server, "c1").await;
    a.join("r", json!({})).await;
    let (ack, _) = a.publish("r", "m1", json!({"v":1})).await;
    a.events(1).await;
    // Same connection, same id: original ack, no event.
    let (again, evs) = a.publish("r", "m1", json!({"v":"other"})).await;
    assert_eq!(
        (again["seq"].clone(), again["hlc"].clone()),
        (ack["seq"].clone(), ack["hlc"].clone())
    );
    assert!(evs.is_empty());
    drop(a);
    let mut b = Ws::hello(&server, "c1").await;
    b.join("r", json!({})).await;
    let (again, _) = b.publish("r", "m1", json!({"v":2})).await;
    assert_eq!(again["seq"], ack["seq"]);
    // The same id from another client is another op.
    let mut c = Ws::hello(&server, "c2").await;
    let (other, _) = c.publish("r", "m1", json!({"v":3})).await;
    assert_eq!(other["seq"], 2);
    // Nothing was appended twice: the next event is seq 2 (c2's) for b.
    let evs = b.events(1).await;
    assert_eq!(
        (evs[0]["seq"].as_u64(), evs[0]["from"].as_str()),
        (Some(2), Some("c2"))
    );
    let (_, room) = http(&server, "GET", "/v1/rooms/r", None).await;
    assert_eq!(room["seq"], 2);
    server.stop().await;
}

#[tokio::test]
async fn retry_after_restart_and_beyond_the_cache_returns_the_original_ack() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path(), |c| c.idempotency_cache = 3).await;
    let mut a = Ws::hello(&server, "c1").await;
    a.join("r", json!({})).await;
    let mut acks = Vec::new();
    for n in 0..10 {
        let (ack, _) = a.publish("r", &format!("m{n}"), json!(n)).await;
        acks.push(ack);
    }
    let (_, before) = http(&server, "GET", "/v1/rooms/r", None).await;
    // m0 is no longer in the in-memory table (capacity 3): the store answers.
    let (again, _) = a.publish("r", "m0", json!("x")).await;
    assert_eq!(again["seq"], acks[0]["seq"]);
    drop(a);
    server.stop().await;

    let server = TestServer::sqlite(dir.path(), |c| c.idempotency_cache = 3).await;
    let mut b = Ws::hello(&server, "c1").await;
    for n in [0usize, 5, 9] {
        let (again, _) = b.publish("r", &format!("m{n}"), json!("retry")).await;
        assert_eq!(again["seq"], acks[n]["seq"], "m{n}");
        assert_eq!(again["hlc"], acks[n]["hlc"], "m{n}");
    }
    let (_, after) = http(&server, "GET", "/v1/rooms/r", None).await;
    assert_eq!(after["seq"], 10);
    assert_eq!(
        after["epoch"], before["epoch"],
        "restart must keep the epoch"
    );
    let (next, _) = b.publish("r", "m10", json!(10)).await;
    assert_eq!(next["seq"], 11);
    let events = all_events(&server, "r").await;
    assert_eq!(seqs(&events), (1..=11).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_with_1001_and_keeps_acked_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path(), |_| {}).await;
    let mut a = Ws::hello(&server, "c1").await;
    a.join("r", json!({})).await;
    for n in 0..5 {
        a.publish("r", &format!("m{n}"), json!(n)).await;
    }
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(a.closed().await, Some(1001));
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    let server = TestServer::sqlite(dir.path(), |_| {}).await;
    assert_eq!(seqs(&all_events(&server, "r").await), vec![1, 2, 3, 4, 5]);
    server.stop().await;
}
