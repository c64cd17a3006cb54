//! A publish flood from one connection: before, the server read, parsed and answered every frame
//! (one `rate_limited` error each), so a connection sending 20,000 publishes/s cost the server
//! 20,000 frames/s of work whatever its limit, and it stayed open forever. Now each frame takes
//! a token of the connection's frame rate before it is parsed; without one the server stops
//! reading that socket (TCP pushes back on the sender), tells it once a second, and closes it
//! with 1008 once it has been held back for `--flood-close-after`.

use crate::probe;
use crate::support::{Report, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Publishes the flooding connection sends, back to back.
const FLOOD: usize = 20_000;
/// The server's frame rate for the test: 200 frames/s (the burst is at least the rate).
const FRAMES_PER_SEC: f64 = 200.0;
const FRAMES_BURST: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_is_read_at_the_frame_rate_then_closed() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let args = [
        "--rate-frames-per-conn",
        "200:200",
        "--rate-publish-per-conn",
        "100:50",
        "--flood-close-after",
        "2s",
    ];
    let server = Server::start(report.data_dir(), &args, &log).await;
    let addr = server.addr.clone();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    // The flood goes out from its own task: once the server stops reading, the socket's buffers
    // fill and the sender blocks (that is the push-back).
    let sender = tokio::spawn(async move {
        for m in [
            json!({"type":"hello","client_id":"flooder"}),
            json!({"type":"join","room":"flood:r","kind":"stream"}),
        ] {
            tx.feed(Message::text(m.to_string())).await.ok()?;
        }
        for n in 0..FLOOD {
            let m = json!({"type":"publish","room":"flood:r","id":format!("f{n}"),"data":n});
            tx.feed(Message::text(m.to_string())).await.ok()?;
        }
        tx.flush().await.ok()
    });
    let probes = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        probe::assert_healthy(&addr, "a publish flood").await;
        probe::assert_serves_clients(&addr, "a publish flood").await;
    };
    // Every answer until the server closes the socket.
    let read = async {
        let (mut answers, mut notices, mut close) = (0usize, 0usize, None);
        // Long past the close the server owes (2 s of flooding after the burst).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rx.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    let m: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    match (m["type"].as_str(), m["id"].is_string()) {
                        (Some("ack"), _) | (Some("error"), true) => answers += 1,
                        (Some("error"), false) => {
                            assert_eq!(m["code"], "rate_limited", "{m}");
                            assert!(m["retry_after_ms"].as_u64().is_some(), "{m}");
                            notices += 1;
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (answers, notices, close)
    };
    let ((answers, notices, close), ()) = tokio::join!(read, probes);
    let elapsed = start.elapsed().as_secs_f64();
    sender.abort();
    assert_eq!(
        close,
        Some(1008),
        "the flooding connection was not closed with 1008 ({answers} publishes answered)"
    );
    // The server can have read no more than the burst and the rate over the time it was open
    // (hello and join included).
    let bound = FRAMES_BURST + (FRAMES_PER_SEC * elapsed).ceil() as usize;
    assert!(
        answers + 2 <= bound,
        "{answers} of {FLOOD} publishes answered in {elapsed:.1} s: more than the frame rate \
         reads ({bound})"
    );
    // Told about once a second while held back (2 s before the close), not once a frame.
    assert!(
        (1..=4).contains(&notices),
        "{notices} frame-rate notices in {elapsed:.1} s"
    );
    probe::assert_serves_clients(&addr, "after a publish flood").await;
}
