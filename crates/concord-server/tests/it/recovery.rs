//! Recovery on rejoin: `since` → exactly the missed events, or `recovered:false` with a reset.

use crate::support::*;
use serde_json::json;

async fn fill(server: &TestServer, room: &str, from: u64, to: u64) {
    let mut p = Ws::hello(server, "filler").await;
    for n in from..=to {
        let (ack, _) = p.publish(room, &format!("f{n}"), json!({"n": n})).await;
        assert_eq!(ack["seq"], n);
    }
}

#[tokio::test]
async fn rejoin_with_since_gets_exactly_the_missed_events_from_memory_and_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // A small window forces older catch-ups through the store.
    let server = TestServer::sqlite(dir.path(), |c| c.room_window = 4).await;
    let mut a = Ws::hello(&server, "a").await;
    let j = a.join("r", json!({})).await;
    let epoch = j["epoch"].as_str().unwrap().to_string();
    fill(&server, "r", 1, 5).await;
    assert_eq!(seqs(&a.events(5).await), vec![1, 2, 3, 4, 5]);
    drop(a);
    fill(&server, "r", 6, 8).await;
    // Within the in-memory window.
    let mut a = Ws::hello(&server, "a").await;
    let j = a.join("r", json!({"since":{"epoch":epoch,"seq":5}})).await;
    assert_eq!(j["recovered"], true);
    assert_eq!(j["seq"], 8);
    assert_eq!(seqs(j["events"].as_array().unwrap()), vec![6, 7, 8]);
    assert_eq!(j["events"][0]["data"], json!({"n":6}));
    drop(a);
    fill(&server, "r", 9, 20).await;
    // Older than the window: read from the store, still exact.
    let mut a = Ws::hello(&server, "a").await;
    let j = a.join("r", json!({"since":{"epoch":epoch,"seq":8}})).await;
    assert_eq!(j["recovered"], true);
    assert_eq!(
        seqs(j["events"].as_array().unwrap()),
        (9..=20).collect::<Vec<_>>()
    );
    // And live events continue right after.
    fill(&server, "r", 21, 21).await;
    assert_eq!(a.events(1).await[0]["seq"], 21);
    // Up to date: nothing missed.
    let mut b = Ws::hello(&server, "b").await;
    let j = b.join("r", json!({"since":{"epoch":epoch,"seq":21}})).await;
    assert_eq!(
        (
            j["recovered"].clone(),
            j["events"].as_array().unwrap().len()
        ),
        (json!(true), 0)
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_epoch_old_or_future_since_gets_recovered_false_with_history() {
    let server = TestServer::memory(|c| c.recovery_window = 5).await;
    let mut a = Ws::hello(&server, "a").await;
    let j = a.join("r", json!({})).await;
    assert_eq!(j["recovered"], false, "a fresh join has nothing to recover");
    let epoch = j["epoch"].as_str().unwrap().to_string();
    fill(&server, "r", 1, 12).await;
    let cases = [
        (
            json!({"since":{"epoch":"not-the-epoch","seq":3}}),
            "unknown epoch",
        ),
        (
            json!({"since":{"epoch":epoch,"seq":2}}),
            "older than the recovery window",
        ),
        (
            json!({"since":{"epoch":epoch,"seq":99}}),
            "ahead of the room",
        ),
    ];
    for (extra, why) in cases {
        let mut b = Ws::hello(&server, "b").await;
        let mut extra = extra;
        extra["history"] = json!(3);
        let j = b.join("r", extra).await;
        assert_eq!(j["recovered"], false, "{why}");
        assert_eq!(j["epoch"], epoch.as_str());
        assert_eq!(j["seq"], 12);
        assert_eq!(
            seqs(j["events"].as_array().unwrap()),
            vec![10, 11, 12],
            "{why}: last `history` events"
        );
    }
    // Within the window: recovered.
    let mut c = Ws::hello(&server, "c").await;
    let j = c.join("r", json!({"since":{"epoch":epoch,"seq":7}})).await;
    assert_eq!(j["recovered"], true);
    assert_eq!(
        seqs(j["events"].as_array().unwrap()),
        vec![8, 9, 10, 11, 12]
    );
    // history without since
    let j = c.join("r2", json!({"history": 5})).await;
    assert_eq!(j["events"].as_array().unwrap().len(), 0);
    server.stop().await;
}
