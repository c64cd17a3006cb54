//! Slow consumers: a member that stops reading is closed with 4008 and recovers every event
//! by rejoining with `since`; other members are unaffected.

use crate::support::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_gets_4008_then_recovers_everything() {
    let server = TestServer::memory(|c| {
        c.max_queue_bytes = 1024 * 1024;
        c.recovery_window = 100_000;
    })
    .await;
    let room = "busy";
    let mut slow = Ws::hello(&server, "slow").await;
    let epoch = slow.join(room, json!({})).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let mut fast = Ws::hello(&server, "fast").await;
    fast.join(room, json!({})).await;
    // Publish until the member that never reads has filled the socket buffers and then its
    // server-side queue, then two batches more. The publisher moves in lockstep with the fast
    // member, so the fast member is never more than one batch (400 KiB) behind.
    const BATCH: usize = 50;
    let payload = "z".repeat(8 * 1024);
    let (batch_tx, mut batches) = tokio::sync::mpsc::unbounded_channel();
    let fast_reader = tokio::spawn(async move {
        loop {
            let evs = fast.events(BATCH).await;
            if batch_tx.send(seqs(&evs)).is_err() {
                return;
            }
        }
    });
    let mut publisher = Ws::hello(&server, "pub").await;
    let mut fast_seen = Vec::new();
    let mut batches_after_cut = None;
    let mut n = 0u64;
    while batches_after_cut != Some(2) {
        for _ in 0..BATCH {
            publisher
                .feed(
                    json!({"type":"publish","room":room,"id":format!("m{n}"),"data":{"s":payload}}),
                )
                .await;
            n += 1;
        }
        publisher.flush().await;
        for _ in 0..BATCH {
            let m = publisher.recv().await;
            assert_eq!(m["type"], "ack", "{m}");
        }
        fast_seen.extend(batches.recv().await.unwrap());
        assert!(n < 100_000, "the member that never reads was never cut off");
        if batches_after_cut.is_some() {
            batches_after_cut = batches_after_cut.map(|k| k + 1);
        } else {
            let cut = [("limit", "max_queue_bytes")];
            if server.metric("concord_limit_hits_total", &cut) == 1.0 {
                batches_after_cut = Some(0);
            }
        }
    }
    fast_reader.abort();
    assert_eq!(
        fast_seen,
        (1..=n).collect::<Vec<_>>(),
        "the fast member must see everything"
    );
    // The slow member now reads: a gap-free prefix, then close 4008.
    let mut got = Vec::new();
    let code = loop {
        match tokio::time::timeout(WAIT, slow.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if !is_ephemeral(&v) {
                    got.push(v["seq"].as_u64().unwrap());
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(4008));
    assert!((got.len() as u64) < n, "the slow member was never cut off");
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "prefix must be gap-free"
    );
    // Recover from the last seq seen: exactly the rest.
    let last = *got.last().unwrap_or(&0);
    let mut again = Ws::hello(&server, "slow").await;
    again
        .send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":last}}))
        .await;
    let j = again.recv().await;
    assert_eq!(j["recovered"], true);
    assert_eq!(
        seqs(j["events"].as_array().unwrap()),
        (last + 1..=n).collect::<Vec<_>>()
    );
    let lagging = [("close_code", "4008")];
    assert_eq!(server.metric("concord_disconnects_total", &lagging), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn a_catch_up_larger_than_the_byte_budget_is_a_reset_never_a_partial_recovery() {
    let server = TestServer::memory(|c| c.max_catch_up_bytes = 4096).await;
    let mut a = Ws::hello(&server, "a").await;
    let epoch = a.join("r", json!({})).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 0..20 {
        a.publish("r", &format!("m{n}"), json!({"pad": "p".repeat(500)}))
            .await;
    }
    let mut b = Ws::hello(&server, "b").await;
    let j = b
        .join("r", json!({"since":{"epoch":epoch,"seq":1},"history":20}))
        .await;
    assert_eq!(j["recovered"], false);
    let evs = seqs(j["events"].as_array().unwrap());
    assert!(
        !evs.is_empty() && evs.len() < 20,
        "history trimmed to the budget: {evs:?}"
    );
    assert_eq!(*evs.last().unwrap(), 20, "the newest events are kept");
    assert_eq!(evs, (21 - evs.len() as u64..=20).collect::<Vec<_>>());
    let j = b.join("r", json!({"since":{"epoch":epoch,"seq":18}})).await;
    assert_eq!(
        (
            j["recovered"].clone(),
            seqs(j["events"].as_array().unwrap())
        ),
        (json!(true), vec![19, 20])
    );
    server.stop().await;
}
