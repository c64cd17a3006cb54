//! Rate limits and connection limits: refusals with `rate_limited` + `retry_after_ms`, never
//! affecting what was acked; a flooding client does not slow down the others.

use crate::support::*;
use concord_server::config::Rate;
use serde_json::json;
use std::time::Duration;

/// Answers to `n` pipelined publishes (events skipped): (acked seqs, refusals with their
/// `retry_after_ms`).
async fn answers(w: &mut Ws, n: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while acked.len() + refused.len() < n {
        let m = w.recv_durable().await;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("ack"), _) => acked.push(m["seq"].as_u64().unwrap()),
            (Some("error"), Some("rate_limited")) => {
                refused.push(m["retry_after_ms"].as_u64().unwrap())
            }
            (Some("event"), _) => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    (acked, refused)
}

#[tokio::test]
async fn publishes_beyond_the_connection_rate_are_refused_with_retry_after() {
    let clock = TestClock::at_system_time();
    let server = TestServer::memory_at(&clock, |c| c.rate_publish_per_conn = Rate::new(5, 5)).await;
    let mut a = Ws::hello(&server, "a").await;
    for n in 0..20 {
        a.feed(json!({"type":"publish","room":"r","id":format!("m{n}"),"data":n}))
            .await;
    }
    a.send(json!({"type":"join","room":"r","kind":"stream"}))
        .await;
    // The room does not exist yet: the burst's five publishes get not_found, the rest are refused.
    let (mut not_found, mut limited, mut seen) = (0, Vec::new(), 0);
    while seen < 21 {
        let m = a.recv().await;
        seen += 1;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("error"), Some("not_found")) => not_found += 1,
            (Some("error"), Some("rate_limited")) => {
                limited.push(m["retry_after_ms"].as_u64().unwrap())
            }
            (Some("joined"), _) => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert_eq!((not_found, limited.len()), (5, 15), "burst of 5 admitted");
    // 5 per second and the clock stands still: the next token is 200 ms away.
    assert!(limited.iter().all(|&ms| ms == 200), "{limited:?}");
    // Still no token without time passing.
    a.send(json!({"type":"publish","room":"r","id":"x","data":0}))
        .await;
    assert_eq!(answers(&mut a, 1).await, (vec![], vec![200]));
    // 199 ms later the token is 1 ms away; a second after the burst the bucket is full again
    // (never more than the burst).
    clock.advance(Duration::from_millis(199));
    a.send(json!({"type":"publish","room":"r","id":"y","data":0}))
        .await;
    assert_eq!(answers(&mut a, 1).await, (vec![], vec![1]));
    clock.advance(Duration::from_secs(10));
    for n in 0..20 {
        a.feed(json!({"type":"publish","room":"r","id":format!("n{n}"),"data":n}))
            .await;
    }
    a.flush().await;
    let (acked, refused) = answers(&mut a, 20).await;
    assert_eq!((acked.len(), refused.len()), (5, 15));
    // Whatever was acked is committed, gap-free; refusals appended nothing.
    assert_eq!(acked, (1..=5).collect::<Vec<_>>());
    let stored = all_events(&server, "r").await;
    assert_eq!(seqs(&stored), acked);
    assert_eq!(
        server.metric("concord_rate_limited_total", &[("scope", "connection")]),
        (15 + 1 + 1 + 15) as f64
    );
    server.stop().await;
}

#[tokio::test]
async fn room_rate_and_presence_rate_and_connection_limits() {
    // The clock stands still: no bucket refills during the test.
    let clock = TestClock::at_system_time();
    let server = TestServer::memory_at(&clock, |c| {
        c.rate_publish_per_room = Rate::new(3, 3);
        c.rate_presence_per_conn = Rate::new(1, 1);
        c.rate_presence_flood_per_conn = Rate::new(2, 2);
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
    // Presence flood rate (updates over the presence rate but under it are held, not refused).
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
/// rate-limited to exactly its rate, none of the normal clients is, and every normal publish is
/// acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_and_normal_clients_are_not() {
    let clock = TestClock::at_system_time();
    let server =
        TestServer::memory_at(&clock, |c| c.rate_publish_per_conn = Rate::new(100, 100)).await;
    let mut abuser = Ws::hello(&server, "abuser").await;
    abuser.join("shared", json!({})).await;
    let mut normals = Vec::new();
    for i in 0..50 {
        normals.push(Ws::hello(&server, &format!("normal{i}")).await);
    }
    let (mut abuser_acked, mut abuser_limited, mut normal_acked) = (0, 0, 0);
    // Ten rounds, 50 ms apart on the server's clock: the abuser sends 200 publishes a round
    // (4000 per second), each normal client one (20 per second).
    for round in 0..10 {
        if round > 0 {
            clock.advance(Duration::from_millis(50));
        }
        for n in 0..200 {
            let id = format!("x{round}-{n}");
            abuser
                .feed(json!({"type":"publish","room":"shared","id":id,"data":{"spam":n}}))
                .await;
        }
        abuser.flush().await;
        let (acked, refused) = answers(&mut abuser, 200).await;
        abuser_acked += acked.len();
        abuser_limited += refused.len();
        for (i, w) in normals.iter_mut().enumerate() {
            let (ack, _) = w
                .publish("shared", &format!("n{round}"), json!({"i": i}))
                .await;
            assert_eq!(ack["type"], "ack", "normal{i} refused: {ack}");
            normal_acked += 1;
        }
    }
    assert_eq!(normal_acked, 500);
    // The burst (100), then 5 tokens per 50 ms for nine rounds.
    assert_eq!(
        abuser_acked,
        100 + 9 * 5,
        "the abuser gets exactly its rate"
    );
    assert_eq!(abuser_limited, 2000 - abuser_acked);
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
    let waits = server.metric(
        "concord_limit_hits_total",
        &[("limit", "max_inflight_per_conn")],
    );
    assert!(waits >= 1.0, "reading never paused at the bound");
    server.stop().await;
}
