//! Stalled HTTP readers: `GET …/events?limit=1000` on a room of big events, from sockets that
//! never read the body, pinned ~117 MB each (the whole page built in memory), never released.
//! Now a page is bounded by `max_page_bytes`, streamed from the store in small chunks, and the
//! write timeout closes the sockets of readers that stall.

use crate::probe;
use crate::support::{Report, Server};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// Open sockets of a process (the listener and its connections; not the database files).
fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

const EVENTS: usize = 300;
const EVENT_BYTES: usize = 60 * 1024;

#[tokio::test]
async fn readers_that_never_read_a_big_page_pin_bounded_memory_and_are_closed() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(
        report.data_dir(),
        &[
            "--write-timeout",
            "2s",
            // Only the write timeout may close them here (not the keep-alive timeout), and a
            // page (16 MiB) larger than the kernel's socket buffers, so writes really stall.
            "--http-header-timeout",
            "5m",
            "--max-page-bytes",
            "16777216",
            "--sqlite-sync",
            "normal",
        ],
        &log,
    )
    .await;
    let http = reqwest::Client::new();
    let blob = "x".repeat(EVENT_BYTES);
    let url = format!("http://{}/v1/rooms/big/events", server.addr);
    for i in 0..EVENTS {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(r#"{{"data":"{blob}","id":"e{i}"}}"#))
            .send()
            .await
            .expect("publish");
        assert!(r.status().is_success(), "publish {i}: {}", r.status());
    }
    drop(http);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = probe::rss_kib(server.pid);
    let sockets_before = socket_count(server.pid);
    let mut stalled = Vec::new();
    for _ in 0..10 {
        // A small receive buffer, so the server's writes stall soon.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let addr = server.addr.parse().expect("server addr");
        let mut tcp = socket.connect(addr).await.expect("connect");
        tcp.write_all(
            b"GET /v1/rooms/big/events?after=0&limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .expect("send request");
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_during = probe::rss_kib(server.pid);
    probe::assert_healthy(&server.addr, "10 stalled readers").await;
    probe::assert_serves_clients(&server.addr, "10 stalled readers").await;
    let grown_mib = rss_during.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "10 stalled readers grew the server by {grown_mib} MiB ({rss_before} → {rss_during} KiB)"
    );
    // The write timeout releases them, although the attacker keeps its sockets open.
    let released = probe::eventually(Duration::from_secs(10), || {
        socket_count(server.pid) <= sockets_before
    })
    .await;
    assert!(
        released,
        "stalled readers still hold sockets: {sockets_before} before, {} now",
        socket_count(server.pid)
    );
    probe::assert_healthy(&server.addr, "after stalled readers").await;
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let timeouts = crate::support::metric(
        &metrics,
        "concord_limit_hits_total",
        &[("limit", "write_timeout")],
    );
    assert!(
        timeouts >= 10.0,
        "{timeouts} write timeouts for 10 stalled readers"
    );
    drop(stalled);
}
