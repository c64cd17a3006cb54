//! Rate limits and connection limits: refusals with `rate_limited` + `retry_after_ms`, never
//! affecting what was acked; a flooding client does not slow down the others.

use crate::support::*;
use concord_server::config::Rate;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn publishes_beyond_the_connection_rate_are_refused_with_retry_after() {
    let server = TestServer::memory(|c| c.rate_publish_per_conn = Rate::new(5, 5)).await;
    let mut a = Ws::hello(&server, "a").await;
    for n in 0..20 {
        a.feed(json!({"type":"publish","room":"r","id":format!("m{n}"),"data":n}))
            .await;
    }
    a.send(json!({"type":"join","room":"r","kind":"stream"}))
        .await;
    // The room does not exist yet: create it first, then flood.
    let mut acked = BTreeSet::new();
    let mut limited = 0;
    let mut seen = 0;
    while seen < 21 {
        let m = a.recv().await;
        seen += 1;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("error"), Some("not_found")) => {}
            (Some("error"), Some("rate_limited")) => {
                assert!(m["retry_after_ms"].as_u64().unwrap() >= 1, "{m}");
                limited += 1;
            }
            (Some("joined"), _) => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert_eq!(limited, 15, "burst of 5 admitted, 15 refused");
    for n in 0..20 {
        a.feed(json!({"type":"publish","room":"r","id":format!("n{n}"),"data":n}))
            .await;
    }
    a.flush().await;
    let mut refused = 0;
    while acked.len() + refused < 20 {
        let m = a.recv().await;
        match m["type"].as_str() {
            Some("ack") => {
                acked.insert(m["seq"].as_u64().unwrap());
            }
            Some("error") => {
                assert_eq!(m["code"], "rate_limited");
                refused += 1;
            }
            _ => {}
        }
    }
    // Whatever was acked is committed, gap-free; refusals appended nothing.
    let stored = all_events(&server, "r").await;
    assert_eq!(seqs(&stored), acked.iter().copied().collect::<Vec<_>>());
    assert_eq!(
        acked.iter().copied().collect::<Vec<_>>(),
        (1..=acked.len() as u64).collect::<Vec<_>>()
    );
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    assert!(m
        .as_str()
        .unwrap()
        .contains("concord_rate_limited_total{scope=\"connection\"}"));
    server.stop().await;
}

#[tokio::test]
async fn room_rate_and_presence_rate_and_connection_limits() {
    let server = TestServer::memory(|c| {
        c.rate_publish_per_room = Rate::new(3, 3);
        c.rate_presence_per_conn = Rate::new(2, 2);
        c.max_members_per_room = 2;
        c.max_rooms_per_conn = 2;
        c.max_conns_per_ip = 6;
    })
    .await;
    // Room rate: three publishers share three tokens.
    let mut ws = Vec::new();
    for i in 0..3 {
        ws.push(Ws::hello(&server, &format!("p{i}")).await);
    }
    ws[0].join("room", json!({})).await;
    let mut outcomes = Vec::new();
    for (i, w) in ws.iter_mut().enumerate() {
        for n in 0..2 {
            w.send(json!({"type":"publish","room":"room","id":format!("{i}-{n}"),"data":1}))
                .await;
            let m = w.recv_durable().await;
            let m = if m["type"] == "event" {
                w.recv_durable().await
            } else {
                m
            };
            outcomes.push(
                m["type"].as_str().unwrap().to_string() + ":" + m["code"].as_str().unwrap_or(""),
            );
        }
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.as_str() == "ack:").count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.as_str() == "error:rate_limited")
            .count(),
        3,
        "{outcomes:?}"
    );
    // Presence rate.
    for n in 0..4 {
        ws[0]
            .send(json!({"type":"presence","room":"room","data":n}))
            .await;
    }
    let mut limited = 0;
    while limited < 2 {
        let m = ws[0].recv().await;
        if m["code"] == "rate_limited" {
            limited += 1;
        }
    }
    // Members per room: the third member is refused.
    ws[1].join("room", json!({})).await;
    ws[2].send(json!({"type":"join","room":"room"})).await;
    let e = ws[2].recv_durable().await;
    assert_eq!(e["code"], "unavailable", "{e}");
    // Rooms per connection.
    ws[2].join("a", json!({})).await;
    ws[2].join("b", json!({})).await;
    ws[2]
        .send(json!({"type":"join","room":"c","kind":"stream"}))
        .await;
    assert_eq!(ws[2].recv_durable().await["code"], "bad_request");
    // Connections per IP: 3 open, 3 more fit, the 7th is refused at the upgrade.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(Ws::connect(&server).await);
    }
    let err = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {other:?}"),
    }
    drop(more);
    server.stop().await;
}

/// One client publishing as fast as it can and fifty publishing at a normal pace: the abuser is
/// rate-limited, none of the normal clients is, and every normal publish is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_and_normal_clients_are_not() {
    let server = TestServer::memory(|c| c.rate_publish_per_conn = Rate::new(100, 100)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut abuser = Ws::hello(&server, "abuser").await;
    abuser.join("shared", json!({})).await;
    let stop2 = stop.clone();
    let abuse = tokio::spawn(async move {
        let (mut limited, mut acked, mut n) = (0u64, 0u64, 0u64);
        while !stop2.is_cancelled() {
            for _ in 0..200 {
                abuser.feed(json!({"type":"publish","room":"shared","id":format!("x{n}"),"data":{"spam":n}})).await;
                n += 1;
            }
            abuser.flush().await;
            // Read what is there without waiting for all of it.
            while let Ok(Some(Ok(m))) = tokio::time::timeout(
                Duration::from_millis(1),
                futures::StreamExt::next(&mut abuser.ws),
            )
            .await
            {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    match (v["type"].as_str(), v["code"].as_str()) {
                        (Some("error"), Some("rate_limited")) => limited += 1,
                        (Some("ack"), _) => acked += 1,
                        _ => {}
                    }
                }
            }
        }
        (limited, acked)
    });
    let mut normals = Vec::new();
    for i in 0..50 {
        let mut w = Ws::hello(&server, &format!("normal{i}")).await;
        normals.push(tokio::spawn(async move {
            let mut acks = 0;
            for n in 0..10 {
                // A normal pace: 20 publishes per second.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (ack, _) = w
                    .publish("shared", &format!("n{n}"), json!({"i": i, "n": n}))
                    .await;
                assert_eq!(ack["type"], "ack");
                acks += 1;
            }
            acks
        }));
    }
    let mut total = 0;
    for n in normals {
        total += n.await.expect("a normal client was refused");
    }
    stop.cancel();
    let (limited, acked) = abuse.await.unwrap();
    assert_eq!(total, 500);
    assert!(limited > 0, "the abuser was never limited");
    assert!(acked > 0, "the abuser still gets its fair share");
    server.stop().await;
}

#[tokio::test]
async fn publishes_beyond_the_in_flight_bound_wait_instead_of_failing() {
    let server = TestServer::memory(|c| c.max_inflight_per_conn = 2).await;
    let mut a = Ws::hello(&server, "a").await;
    a.join("r", json!({})).await;
    for n in 0..50 {
        a.feed(json!({"type":"publish","room":"r","id":format!("m{n}"),"data":n}))
            .await;
    }
    a.flush().await;
    let mut acks = Vec::new();
    while acks.len() < 50 {
        let m = a.recv_durable().await;
        match m["type"].as_str() {
            Some("ack") => acks.push(m["seq"].as_u64().unwrap()),
            Some("event") => {}
            _ => panic!("a publish was refused instead of waiting: {m}"),
        }
    }
    assert_eq!(acks, (1..=50).collect::<Vec<_>>());
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    assert!(m
        .as_str()
        .unwrap()
        .contains("concord_limit_hits_total{limit=\"max_inflight_per_conn\"}"));
    server.stop().await;
}
