//! Per-room total order: concurrent publishers, identical gap-free order at every member.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_every_member_sees_one_gap_free_order() {
    let server = TestServer::memory(|_| {}).await;
    const PUBLISHERS: usize = 24;
    const EACH: usize = 40;
    let room = "chat:order";
    let mut observers = Vec::new();
    for i in 0..3 {
        let mut w = Ws::hello(&server, &format!("obs{i}")).await;
        let j = w.join(room, json!({})).await;
        assert_eq!(j["seq"], 0);
        observers.push(w);
    }
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let w = Ws::hello(&server, &format!("pub{p}")).await;
        // Pipeline every publish, then collect acks: ack order must follow send order.
        tasks.push(tokio::spawn(pipelined_publishes(
            w,
            room.to_string(),
            p,
            EACH,
        )));
    }
    let mut acked: HashMap<(String, String), (u64, Value)> = HashMap::new();
    for (p, t) in tasks.into_iter().enumerate() {
        for m in t.await.unwrap() {
            assert_eq!(m["room"], room);
            let id = m["id"].as_str().unwrap().to_string();
            acked.insert(
                (format!("pub{p}"), id),
                (m["seq"].as_u64().unwrap(), m["hlc"].clone()),
            );
        }
    }
    let total = PUBLISHERS * EACH;
    let mut orders = Vec::new();
    for o in &mut observers {
        let evs = o.events(total).await;
        assert_eq!(
            seqs(&evs),
            (1..=total as u64).collect::<Vec<_>>(),
            "gap or reorder"
        );
        let order: Vec<(String, String)> = evs
            .iter()
            .map(|e| {
                (
                    e["from"].as_str().unwrap().to_string(),
                    e["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (e, key) in evs.iter().zip(&order) {
            let (seq, hlc) = &acked[key];
            assert_eq!(
                e["seq"].as_u64().unwrap(),
                *seq,
                "ack seq differs from event seq"
            );
            assert_eq!(&e["hlc"], hlc, "ack hlc differs from event hlc");
        }
        let hlcs: Vec<&str> = evs.iter().map(|e| e["hlc"].as_str().unwrap()).collect();
        assert!(
            hlcs.windows(2).all(|w| w[0] < w[1]),
            "hlc must increase with seq"
        );
        orders.push(order);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "members saw different orders"
    );
    server.stop().await;
}

#[tokio::test]
async fn sender_receives_its_own_event_and_non_members_get_acks_only() {
    let server = TestServer::memory(|_| {}).await;
    let mut member = Ws::hello(&server, "a").await;
    member.join("r1", json!({})).await;
    let (ack, _) = member.publish("r1", "x", json!({"text":"hi"})).await;
    assert_eq!(ack["seq"], 1);
    let ev = member.events(1).await.remove(0);
    assert_eq!(
        ev,
        json!({"type":"event","room":"r1","seq":1,"hlc":ack["hlc"],"from":"a","id":"x","data":{"text":"hi"}})
    );
    // Publishing without joining is allowed; only members receive the event.
    let mut outsider = Ws::hello(&server, "b").await;
    let (ack, evs) = outsider.publish("r1", "y", json!(2)).await;
    assert_eq!(ack["seq"], 2);
    assert!(evs.is_empty());
    assert_eq!(member.events(1).await[0]["id"], "y");
    // Leave: no more events after `left`.
    member.send(json!({"type":"leave","room":"r1"})).await;
    assert_eq!(member.recv().await, json!({"type":"left","room":"r1"}));
    outsider.publish("r1", "z", json!(3)).await;
    let (ack, evs) = member.publish("r1", "w", json!(4)).await;
    assert_eq!(ack["seq"], 4);
    assert!(evs.is_empty(), "a member that left got {evs:?}");
    server.stop().await;
}
