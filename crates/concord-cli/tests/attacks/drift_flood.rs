//! A flood of `drift` reports with 1 MB hashes: before, every report was logged in full at WARN
//! (no right, no membership, no rate: 105 MB of log in 0.6 s). Now a report needs membership,
//! is rate-limited per connection, and its log line is capped.

use crate::probe;
use crate::support::{within, Report, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_drift_reports_is_refused_and_logs_little() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &[], &log).await;
    let addr = server.addr.clone();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    for m in [
        json!({"type":"hello","client_id":"drifter"}),
        json!({"type":"join","room":"doc:d","kind":"doc"}),
    ] {
        tx.send(Message::text(m.to_string())).await.expect("send");
    }
    loop {
        let v = crate::support::next_json(&mut rx, "joining").await;
        if v["type"] == "joined" {
            break;
        }
    }
    let log_before = std::fs::metadata(&log).expect("log").len();

    let report_of = |room: &str, hash: &str| {
        Message::text(json!({"type":"drift","room":room,"seq":0,"hash":hash}).to_string())
    };
    // 50 reports of ~1 MB each, as fast as the socket takes them.
    let hash = "f".repeat(1_000_000);
    const REPORTS: usize = 50;
    within("sending the flood", async {
        for _ in 0..REPORTS {
            tx.feed(report_of("doc:d", &hash)).await.expect("feed");
        }
        tx.flush().await.expect("flush");
    })
    .await;
    probe::assert_healthy(&addr, "a drift flood").await;
    probe::assert_serves_clients(&addr, "a drift flood").await;

    // Every report beyond the burst (5) is answered `rate_limited` with a retry time.
    let mut limited = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while limited < REPORTS - 10 && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(2), rx.next()).await;
        let Ok(Some(Ok(Message::Text(t)))) = next else {
            break;
        };
        let v: Value = serde_json::from_str(t.as_str()).expect("json");
        if v["code"] == "rate_limited" {
            assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
            limited += 1;
        }
    }
    // Let the logger catch up, then measure what the flood wrote.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = std::fs::metadata(&log).expect("log").len() - log_before;
    assert!(
        logged < 64 * 1024,
        "{logged} bytes of log for {REPORTS} drift reports"
    );
    assert!(
        limited >= REPORTS - 10,
        "only {limited} of {REPORTS} reports were rate-limited"
    );

    // Not a member: refused like presence.
    within(
        "sending a drift report",
        tx.send(report_of("doc:other", "abc")),
    )
    .await
    .expect("send");
    // One bound for the whole wait (pings would restart the step timeout of `next_json`).
    let what = "an answer to drift from a non-member";
    let v = within(what, async {
        loop {
            // Skip what is left of the answers to the flood.
            let v = crate::support::next_json(&mut rx, what).await;
            if v["room"] == "doc:other" {
                return v;
            }
        }
    })
    .await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{v}"
    );
}
