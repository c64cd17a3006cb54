//! Loading a big room must not read its bodies: one POST to a room of 3,000 × 60 KB events used
//! to read up to 32,768 full events (idempotency keys) and keep 1,024 of them in memory
//! (8.6 → 437 MB). Keys now load without bodies and the window is bounded in bytes.

use crate::probe;
use crate::support::{within, Report, Server};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

const EVENTS: usize = 3_000;
const BODY: usize = 60_000;

async fn post(client: &reqwest::Client, addr: &str, room: &str, body: &Value) -> Value {
    let res = client
        .post(format!("http://{addr}/v1/rooms/{room}/events"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = res.status();
    let v: Value = res.json().await.expect("JSON answer");
    assert!(status.is_success(), "POST answered {status}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_a_room_of_big_events_keeps_memory_bounded() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let args = ["--sqlite-sync", "normal", "--max-data-bytes", "65536"];
    let log = report.log_path("fill.log");
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let client = reqwest::Client::new();
    let filler = "x".repeat(BODY);
    within(
        "writing 3,000 events of 60 KB",
        stream::iter(0..EVENTS)
            .map(|n| {
                let body = json!({"data": {"n": n, "pad": filler}, "id": format!("e-{n}")});
                let (client, addr) = (&client, &server.addr);
                async move { post(client, addr, "big:room", &body).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>(),
    )
    .await;
    server.kill9();

    let log = report.log_path("load.log");
    let server = Server::start(report.data_dir(), &args, &log).await;
    probe::assert_serves_clients(&server.addr, "before loading the big room").await;
    let before = probe::rss_kib(server.pid);
    // One POST loads the room (and a retry of an old id must still find its original seq).
    let first = post(&client, &server.addr, "big:room", &json!({"data": 1})).await;
    assert_eq!(first["seq"], EVENTS as u64 + 1, "{first}");
    let retry = post(
        &client,
        &server.addr,
        "big:room",
        &json!({"data": 2, "id": "e-2999"}),
    )
    .await;
    assert!(retry["seq"].as_u64().unwrap() <= EVENTS as u64, "{retry}");
    let after = probe::rss_kib(server.pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 100,
        "loading the room grew the server by {grown_mib} MiB ({before} → {after} KiB)"
    );
    probe::assert_healthy(&server.addr, "after loading the big room").await;
    probe::assert_serves_clients(&server.addr, "after loading the big room").await;
}
