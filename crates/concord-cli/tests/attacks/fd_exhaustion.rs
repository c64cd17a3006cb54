//! File-descriptor exhaustion: under a 256-descriptor limit, 400 idle connections made accept
//! fail with "Too many open files" and `/healthz` stopped answering (the idle sockets were never
//! closed). Now the connection limit (derived from the open-file limit) keeps descriptors free,
//! and at the limit the longest-idle connection is closed to make room for a new one.

use crate::probe;
use crate::support::Report;
use std::time::Duration;
use tokio::net::TcpStream;

const NOFILE: u64 = 256;

#[tokio::test]
async fn idle_connections_beyond_the_fd_limit_leave_the_server_serving() {
    let _serial = probe::serial().await;
    // The attacker's 400 sockets must not hit this test process's own soft limit.
    let _ = concord_bench::raise_nofile_limit();
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    // The default header timeout (10 s): the server must not need it to serve others. (No
    // fsync per commit: the probes measure the server, not the disk.)
    let server = probe::start_with_nofile(
        report.data_dir(),
        &["--sqlite-sync", "normal"],
        &log,
        NOFILE,
    )
    .await;
    probe::assert_healthy(&server.addr, "no attack yet").await;
    let mut held = Vec::new();
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&server.addr)).await {
            Ok(Ok(tcp)) => held.push(tcp),
            _ => break,
        }
    }
    assert!(
        held.len() >= 300,
        "only {} connects went through",
        held.len()
    );
    let fds = probe::fd_count(server.pid);
    assert!(
        fds < NOFILE as usize - 16,
        "the server holds {fds} of its {NOFILE} descriptors"
    );
    // The attacker keeps every socket open; others are served at once all the same.
    for _ in 0..5 {
        probe::assert_healthy(&server.addr, "400 idle connections held").await;
    }
    probe::assert_serves_clients(&server.addr, "400 idle connections held").await;
    let fds = probe::fd_count(server.pid);
    assert!(fds < NOFILE as usize - 16, "descriptors not bounded: {fds}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log_text.contains("Too many open files"),
        "the server ran out of descriptors"
    );
    drop(held);
}

/// The per-IP limit counted only WebSocket upgrades: one address could hold any number of plain
/// HTTP connections. Now every TCP connection counts.
#[tokio::test]
async fn idle_http_connections_count_against_the_per_ip_limit() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = crate::support::Server::start(
        report.data_dir(),
        &["--max-conns-per-ip", "8", "--sqlite-sync", "normal"],
        &log,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    // Let the server accept them all before the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(probe::RESPONSIVE)
        .build()
        .expect("client");
    let url = format!("http://{}/healthz", server.addr);
    let r = client.get(&url).send().await.expect("request");
    assert_eq!(
        r.status().as_u16(),
        429,
        "a 9th connection from one address"
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], "rate_limited", "{body}");
    drop(held);
    let freed = async {
        for _ in 0..40 {
            let r = client.get(&url).send().await.expect("request");
            if r.status().is_success() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(freed.await, "slots not released when the sockets closed");
}
