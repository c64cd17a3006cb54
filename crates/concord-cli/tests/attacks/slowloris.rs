//! Slowloris and idle sockets: connections that send nothing, headers one byte at a time, or a
//! body that never arrives. Before the fix none of them was ever closed (file descriptors ran out,
//! SIGTERM hung); now the header and body timeouts close them while `/healthz` keeps answering.

use crate::probe;
use crate::support::{Report, Server};
use std::time::{Duration, Instant};

// Servers here run with `--sqlite-sync normal`: the probes measure the server's responsiveness,
// not the disk's fsync latency (other suites may be fsyncing on the same machine).
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (EOF or reset) or `limit` passes; returns what
/// was read and whether it closed.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_after_the_header_timeout() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(
        report.data_dir(),
        &["--http-header-timeout", "1s", "--sqlite-sync", "normal"],
        &log,
    )
    .await;
    let fds_before = probe::fd_count(server.pid);
    // 40 idle sockets and 40 that send a request line one byte every 100 ms (forever).
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let mut tricklers = Vec::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
        tricklers.push(tokio::spawn(async move {
            let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ";
            let started = Instant::now();
            for i in 0.. {
                let byte = request.get(i).copied().unwrap_or(b'a');
                if tcp.write_all(&[byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > Duration::from_secs(15) {
                    return None;
                }
            }
            None
        }));
    }
    probe::assert_healthy(&server.addr, "a slowloris attack").await;
    probe::assert_serves_clients(&server.addr, "a slowloris attack").await;
    // Every idle socket is closed by the server, well before the attacker would give up.
    for tcp in &mut idle {
        let (_, closed) = read_until_closed(tcp, Duration::from_secs(5)).await;
        assert!(
            closed,
            "an idle connection was still open 5 s after a 1 s header timeout"
        );
    }
    for t in tricklers {
        let cut = t.await.expect("trickler task");
        assert!(
            cut.is_some_and(|d| d < Duration::from_secs(8)),
            "a trickling request was not cut by the 1 s header timeout: {cut:?}"
        );
    }
    let settled = probe::eventually(Duration::from_secs(5), || {
        probe::fd_count(server.pid) <= fds_before + 2
    })
    .await;
    assert!(
        settled,
        "descriptors not released: {} before, {} after",
        fds_before,
        probe::fd_count(server.pid)
    );
    probe::assert_healthy(&server.addr, "after a slowloris attack").await;
}

#[tokio::test]
async fn a_body_that_never_arrives_is_cut_after_the_body_timeout() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(
        report.data_dir(),
        &["--http-body-timeout", "1s", "--sqlite-sync", "normal"],
        &log,
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
        let head = "POST /v1/rooms/slow/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                    Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"data\":";
        tcp.write_all(head.as_bytes()).await.expect("send head");
        stalled.push(tcp);
    }
    probe::assert_healthy(&server.addr, "stalled request bodies").await;
    probe::assert_serves_clients(&server.addr, "stalled request bodies").await;
    for tcp in &mut stalled {
        let (answer, closed) = read_until_closed(tcp, Duration::from_secs(6)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            closed,
            "a request whose body never came was still open 6 s after a 1 s body timeout"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "expected 408 or a close, got {answer:?}"
        );
    }
    probe::assert_healthy(&server.addr, "after stalled request bodies").await;
}
