//! The HTTP API: publish with idempotency keys, paginated history, room info, health, metrics.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn publish_read_and_inspect_over_http() {
    let server = TestServer::memory(|c| {
        c.max_data_bytes = 100;
        c.max_page = 50
    })
    .await;
    let mut member = Ws::hello(&server, "m").await;
    // Publishing over HTTP creates a stream room on first use.
    let (s, r) = http(
        &server,
        "POST",
        "/v1/rooms/feed:1/events",
        Some(json!({"data":{"n":0},"id":"k0"})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["seq"], 1);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    assert!(r["hlc"].as_str().unwrap().len() > 20);
    member.join("feed:1", json!({})).await;
    // Same idempotency key: the original answer, nothing appended.
    let (s, again) = http(
        &server,
        "POST",
        "/v1/rooms/feed:1/events",
        Some(json!({"data":{"n":"dup"},"id":"k0"})),
    )
    .await;
    assert_eq!((s, again.clone()), (200, r.clone()));
    for n in 1..=120 {
        let (s, r) = http(
            &server,
            "POST",
            "/v1/rooms/feed:1/events",
            Some(json!({"data":{"n":n}})),
        )
        .await;
        assert_eq!((s, r["seq"].as_u64()), (200, Some(n + 1)));
    }
    // Members receive HTTP-published events.
    let evs = member.events(120).await;
    assert_eq!(evs[0]["from"], "http");
    assert_eq!(evs[0]["seq"], 2);
    // Pagination.
    let (s, page) = http(
        &server,
        "GET",
        "/v1/rooms/feed:1/events?after=10&limit=50",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page["room"], "feed:1");
    assert_eq!(page["epoch"], epoch.as_str());
    assert_eq!(page["seq"], 121);
    assert_eq!(
        seqs(page["events"].as_array().unwrap()),
        (11..=60).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&all_events(&server, "feed:1").await),
        (1..=121).collect::<Vec<_>>()
    );
    let (s, room) = http(&server, "GET", "/v1/rooms/feed:1", None).await;
    assert_eq!(
        (s, room),
        (
            200,
            json!({"room":"feed:1","kind":"stream","epoch":epoch,"seq":121})
        )
    );

    // Errors.
    let (s, e) = http(&server, "GET", "/v1/rooms/nope", None).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
    let (s, e) = http(&server, "GET", "/v1/rooms/feed:1/events?limit=51", None).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/feed:1/events",
        Some(json!({"data":"x".repeat(200)})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (413, Some("too_large")));
    // Counted like the same refusal over WebSocket.
    assert_eq!(
        server.metric("concord_limit_hits_total", &[("limit", "max_data_bytes")]),
        1.0,
        "an HTTP publish over max_data_bytes counts the limit"
    );
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/feed:1/events",
        Some(json!({"nodata":1})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
    let (s, e) = http(
        &server,
        "POST",
        "/v1/rooms/bad%20room/events",
        Some(json!({"data":1})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));

    // Operations endpoints.
    assert_eq!(http(&server, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(&server, "GET", "/readyz", None).await.0, 200);
    let (s, m) = http(&server, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap();
    // Exported (an unknown name fails; the memory store records no commit timings), and the
    // values this test produced.
    for name in [
        "concord_connections",
        "concord_rooms_active",
        "concord_ack_latency_seconds_count",
        "concord_store_commit_seconds_count",
        "concord_store_batch_events_count",
    ] {
        metric(m, name, &[]);
    }
    assert_eq!(metric(m, "concord_events_committed_total", &[]), 121.0);
    let not_found = metric(m, "concord_errors_total", &[("code", "not_found")]);
    assert_eq!(not_found, 1.0);
    assert_eq!(metric(m, "concord_duplicate_ops_total", &[]), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn http_errors_are_json_with_retry_hints() {
    let server =
        TestServer::memory(|c| c.rate_publish_per_room = concord_server::config::Rate::new(1, 1))
            .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/rooms/busy/events", server.addr);
    let first = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let limited = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"data":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    let retry_header: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_header >= 1);
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert!(body["retry_after_ms"].as_u64().unwrap() >= 1, "{body}");
    let wrong = client.delete(&url).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 405);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    let missing = client
        .get(format!("http://{}/v2/nothing", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_page_stops_at_the_byte_budget_with_at_least_one_event() {
    let server = TestServer::memory(|c| c.max_page_bytes = 1_000).await;
    let small = "s".repeat(200);
    let big = "b".repeat(3_000);
    for data in [&small, &small, &small, &small, &small, &big, &small] {
        let (s, r) = http(
            &server,
            "POST",
            "/v1/rooms/budget/events",
            Some(json!({ "data": data })),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    let page = |after: u64| {
        let server = &server;
        async move {
            let path = format!("/v1/rooms/budget/events?after={after}&limit=1000");
            let (s, page) = http(server, "GET", &path, None).await;
            assert_eq!(s, 200, "{page}");
            page
        }
    };
    // ~250 bytes per small event: three fit in 1000 bytes, the fourth would not.
    let first = page(0).await;
    assert_eq!(seqs(first["events"].as_array().unwrap()), vec![1, 2, 3]);
    assert_eq!(
        (first["next_after"].as_u64(), first["more"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(first["seq"], 7);
    let second = page(3).await;
    assert_eq!(seqs(second["events"].as_array().unwrap()), vec![4, 5]);
    // An event larger than the whole budget still comes, alone.
    let third = page(5).await;
    assert_eq!(seqs(third["events"].as_array().unwrap()), vec![6]);
    let last = page(6).await;
    assert_eq!(seqs(last["events"].as_array().unwrap()), vec![7]);
    assert_eq!(
        (last["next_after"].as_u64(), last["more"].as_bool()),
        (Some(7), Some(false))
    );
    let past = page(7).await;
    assert!(past["events"].as_array().unwrap().is_empty());
    assert_eq!(
        (past["next_after"].as_u64(), past["more"].as_bool()),
        (Some(7), Some(false))
    );
    // Every event, following next_after, exactly once.
    assert_eq!(
        seqs(&all_events(&server, "budget").await),
        (1..=7).collect::<Vec<_>>()
    );
    server.stop().await;
}
