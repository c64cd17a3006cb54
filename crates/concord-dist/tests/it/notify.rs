//! One notification per commit call on the room's channel, with the documented payload; a
//! raised watermark is published there too.

use crate::support::*;
use concord_core::{RoomKind, Seq};
use concord_dist::testing::redis::SHARED_REDIS_URL;
use futures::StreamExt;
use std::time::Duration;

#[tokio::test]
async fn each_commit_publishes_its_events_once() {
    let (_p, log) = shared("notify").await;
    let r = room("news");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let rk = log.keys().room(r.as_str());
    let client = redis::Client::open(SHARED_REDIS_URL).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&rk.channel).await.expect("subscribe");
    let mut messages = pubsub.into_on_message();

    let data = r#"{"text":"h\u00e9\u0000llo","n":[1,2.5,null]}"#;
    let first = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(1_763_812_345_678, 0),
                vec![ev("alice", Some("m1"), data), ev("bob", None, "\"x\"")],
            ),
        )
        .await
        .expect("commit");
    // A call that only repeats committed events publishes nothing; the next one publishes.
    log.commit(
        &r,
        &req("e1", hlc(0, 0), vec![ev("alice", Some("m1"), data)]),
    )
    .await
    .expect("duplicate");
    log.commit(&r, &req("e1", hlc(0, 0), vec![ev("carol", Some("z"), "3")]))
        .await
        .expect("third");

    async fn next(m: &mut (impl futures::Stream<Item = redis::Msg> + Unpin)) -> serde_json::Value {
        let msg = tokio::time::timeout(Duration::from_secs(10), m.next())
            .await
            .expect("a notification within 10 s")
            .expect("the subscription is open");
        let text: String = msg.get_payload().expect("text payload");
        serde_json::from_str::<serde_json::Value>(&text).expect("the payload is JSON")
    }
    let n1 = next(&mut messages).await;
    let expected = serde_json::json!({
        "room": "news",
        "epoch": "e1",
        "events": [
            {"seq": 1, "hlc": first[0].hlc.as_str(), "from": "alice", "op_id": "m1",
             "data": serde_json::from_str::<serde_json::Value>(data).expect("JSON")},
            {"seq": 2, "hlc": first[1].hlc.as_str(), "from": "bob", "op_id": null, "data": "x"},
        ]
    });
    assert_eq!(n1, expected, "the first commit's notification");
    let n2 = next(&mut messages).await;
    assert_eq!(
        n2["events"][0]["seq"], 3,
        "the duplicate-only call published nothing: {n2}"
    );
    assert_eq!(n2["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        log.room_meta(&r).await.expect("meta").expect("room").head,
        Seq(3)
    );
}

/// `concord_persisted` publishes a raised watermark (`{"epoch","wm"}`), and nothing when the
/// watermark does not move.
#[tokio::test]
async fn a_raised_watermark_is_published() {
    let (_p, log) = shared("notify-wm").await;
    let r = room("marks");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let rk = log.keys().room(r.as_str());
    let client = redis::Client::open(SHARED_REDIS_URL).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&rk.channel).await.expect("subscribe");
    let mut messages = pubsub.into_on_message();
    let events = (0..3)
        .map(|n| ev("alice", Some(&format!("m{n}")), "1"))
        .collect();
    log.commit(&r, &req("e1", hlc(1, 0), events))
        .await
        .expect("commit");
    let e1 = epoch("e1");
    log.persisted(&r, &e1, Seq(2), 100)
        .await
        .expect("persisted");
    log.persisted(&r, &e1, Seq(1), 100)
        .await
        .expect("not raised");
    log.persisted(&r, &e1, Seq(3), 100)
        .await
        .expect("persisted");
    let mut notes = Vec::new();
    while notes.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a message within 10 s")
            .expect("the subscription is open");
        let text: String = msg.get_payload().expect("text payload");
        notes.push(serde_json::from_str::<serde_json::Value>(&text).expect("JSON"));
    }
    assert!(
        notes[0]["events"].is_array(),
        "the commit first: {}",
        notes[0]
    );
    assert_eq!(notes[1], serde_json::json!({"epoch": "e1", "wm": 2}));
    assert_eq!(
        notes[2],
        serde_json::json!({"epoch": "e1", "wm": 3}),
        "nothing for 1"
    );
}
