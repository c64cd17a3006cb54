//! Shutdown under attack: a half-sent request made SIGTERM hang forever and a second SIGTERM was
//! ignored. Now the shutdown deadline bounds the drain and a second signal exits at once.

use crate::probe;
use crate::support::{Report, Server};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A request whose head and body never finish (long timeouts, so only the deadline helps).
async fn half_sent_requests(addr: &str) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let mut head = TcpStream::connect(addr).await.expect("connect");
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0")
        .await
        .expect("send");
    held.push(head);
    let mut body = TcpStream::connect(addr).await.expect("connect");
    body.write_all(
        b"POST /v1/rooms/r/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("send");
    held.push(body);
    held
}

const SLOW: [&str; 4] = ["--http-header-timeout", "5m", "--http-body-timeout", "5m"];

#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_within_the_deadline() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let mut args = SLOW.to_vec();
    args.extend(["--shutdown-timeout", "2s"]);
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let _held = half_sent_requests(&server.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some(),
        "concord still running 10 s after SIGTERM with a 2 s shutdown deadline"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let mut args = SLOW.to_vec();
    args.extend(["--shutdown-timeout", "5m"]);
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let _held = half_sent_requests(&server.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.terminate();
    // The first signal drains: the half-sent requests keep it waiting.
    assert!(
        server.wait_exit(Duration::from_millis(500)).await.is_none(),
        "concord exited although requests were still in flight"
    );
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("concord still running 5 s after a second SIGTERM");
    assert!(
        !status.success(),
        "a forced exit must not look clean: {status}"
    );
}
