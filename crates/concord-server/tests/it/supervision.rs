//! Supervision: a room actor that panics leaves no dead registry entry behind; everyone waiting
//! on it gets an answer, and the next message reloads the room from the store.

use crate::support::*;
use concord_server::fault::Point;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a waiter of the failed actor may wait for its answer.
const ANSWER: Duration = Duration::from_secs(5);

/// The next message within `ANSWER`; `None` on silence.
async fn answer(ws: &mut Ws) -> Option<Value> {
    tokio::time::timeout(ANSWER, ws.recv()).await.ok()
}

/// Panics after a batch: the publishes it sequenced are in flight (handed to the store, not
/// committed), what came after them waits in the mailbox.
#[tokio::test]
async fn an_actor_panicking_after_a_batch_is_replaced_and_nothing_acked_is_lost() {
    panic_and_recover("supervision-after-batch", Point::AfterBatch).await;
}

/// Panics in the middle of a batch: a publish is sequenced but not handed to the store, the rest
/// of the batch is not handled yet.
#[tokio::test]
async fn an_actor_panicking_mid_batch_is_replaced_and_nothing_acked_is_lost() {
    panic_and_recover("supervision-mid-batch", Point::MidBatch).await;
}

async fn panic_and_recover(room: &str, point: Point) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path(), |_| {}).await;
    let mut a = Ws::hello(&server, "writer").await;
    let joined = a.join(room, json!({})).await;
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for n in 1..=3 {
        let id = format!("p{n}");
        let (ack, _) = a.publish(room, &id, json!({"n": n})).await;
        acked.insert(id, ack["seq"].as_u64().unwrap());
    }
    let mut watcher = Ws::hello(&server, "watcher").await;
    watcher.join(room, json!({})).await;

    concord_server::fault::panic_next(room, point);
    let pending = ["p4", "p5", "p6", "p7"];
    for (n, id) in pending.iter().enumerate() {
        a.feed(json!({"type":"publish","room":room,"id":id,"data":{"n": n + 4}}))
            .await;
    }
    a.flush().await;
    // An HTTP publish right behind them: queued for the failing actor, or served by the next.
    let events = format!("/v1/rooms/{room}/events");
    let http_publish = http(
        &server,
        "POST",
        &events,
        Some(json!({"data":{"n":9},"id":"h9"})),
    );

    // Every publish gets an answer (its ack if it was committed, else `unavailable`); never
    // silence. A member also hears that the room failed.
    let mut failed = Vec::new();
    let mut told = false;
    let mut open: BTreeSet<&str> = pending.iter().copied().collect();
    let ws_answers = async {
        while !open.is_empty() {
            let Some(m) = answer(&mut a).await else {
                panic!(
                    "no answer for {open:?} within {ANSWER:?} (told: {told}, failed: {failed:?})"
                );
            };
            match (m["type"].as_str(), m["id"].as_str()) {
                (Some("ack"), Some(id)) if open.remove(id) => {
                    acked.insert(id.to_string(), m["seq"].as_u64().unwrap());
                }
                (Some("error"), Some(id)) if open.remove(id) => {
                    assert_eq!(m["code"], "unavailable", "{m}");
                    failed.push(id.to_string());
                }
                (Some("error"), None) => {
                    assert_eq!(m["code"], "unavailable", "{m}");
                    assert_eq!(m["room"], room, "{m}");
                    told = true;
                }
                (Some("event"), _) => {}
                _ if is_ephemeral(&m) => {}
                _ => panic!("unexpected {m}"),
            }
        }
    };
    let ((status, body), ()) = tokio::join!(http_publish, ws_answers);
    match status {
        200 => {
            acked.insert("h9".into(), body["seq"].as_u64().unwrap());
        }
        503 => {
            assert_eq!(body["code"], "unavailable", "{body}");
            let (status, body) = http(
                &server,
                "POST",
                &events,
                Some(json!({"data":{"n":9},"id":"h9"})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            acked.insert("h9".into(), body["seq"].as_u64().unwrap());
        }
        _ => panic!("http publish: {status} {body}"),
    }
    assert!(!failed.is_empty(), "the panic came before any commit");
    while !told {
        let m = answer(&mut a).await.expect("the writer, a member, is told");
        if m["type"] == "error" {
            assert_eq!(m["code"], "unavailable", "{m}");
            assert!(m.get("id").is_none(), "{m}");
            told = true;
        }
    }
    let notice = loop {
        let m = answer(&mut watcher).await.expect("the watcher is told");
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(notice["code"], "unavailable", "{notice}");
    assert_eq!(notice["room"], room, "{notice}");

    assert_eq!(server.metric("concord_room_actor_panics_total", &[]), 1.0);

    // The room works again (a new actor, reloaded from the store): the failed publishes are
    // retried with their ids, then a new one follows; seqs stay gap-free, without duplicates.
    a.join(room, json!({})).await;
    for id in &failed {
        let n: u64 = id[1..].parse().unwrap();
        let (ack, _) = a.publish(room, id, json!({"n": n})).await;
        acked.insert(id.clone(), ack["seq"].as_u64().unwrap());
    }
    let (ack, _) = a.publish(room, "p8", json!({"n": 8})).await;
    acked.insert("p8".into(), ack["seq"].as_u64().unwrap());
    let last = *acked.values().max().unwrap();
    let seqs_acked: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(seqs_acked.len(), acked.len(), "duplicate seqs: {acked:?}");
    assert_eq!(seqs_acked, (1..=last).collect(), "gap: {acked:?}");
    assert_eq!(last, 9, "{acked:?}");

    let stored = all_events(&server, room).await;
    assert_eq!(seqs(&stored), (1..=9).collect::<Vec<_>>());
    for (id, seq) in &acked {
        let n: u64 = id[1..].parse().unwrap();
        assert_eq!(stored[*seq as usize - 1]["data"], json!({"n": n}), "{id}");
    }

    // A member of the failed actor rejoins with `since` and recovers every event it missed.
    watcher
        .send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":3}}))
        .await;
    let j = watcher.recv_durable().await;
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(j["recovered"], true, "{j}");
    let missed = seqs(j["events"].as_array().unwrap());
    let live = watcher.events(9 - 3 - missed.len()).await;
    let mut all = missed;
    all.extend(seqs(&live));
    assert_eq!(all, (4..=9).collect::<Vec<_>>());

    assert_eq!(server.metric("concord_rooms_active", &[]), 1.0);
    assert_eq!(server.metric("concord_room_actor_panics_total", &[]), 1.0);
    server.stop().await;
}
