//! File-descriptor exhaustion: under a 256-descriptor limit, 400 idle connections made accept
//! fail with "Too many open files" and `/healthz` stopped answering (the idle sockets were never
//! closed). Now the connection limit (derived from the open-file limit) keeps descriptors free
//! and the header timeout frees the slots the attacker holds.

use crate::probe;
use crate::support::Report;
use std::time::Duration;
use tokio::net::TcpStream;

const NOFILE: u64 = 256;

#[tokio::test]
async fn idle_connections_beyond_the_fd_limit_leave_the_server_serving() {
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = probe::start_with_nofile(
        report.data_dir(),
        &["--http-header-timeout", "1s"],
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
    // The attacker keeps every socket open; the server answers within a header timeout or two.
    let healthy = async {
        for _ in 0..20 {
            let ok = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(probe::RESPONSIVE)
                .build()
                .expect("client")
                .get(format!("http://{}/healthz", server.addr))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    };
    assert!(
        healthy.await,
        "/healthz never answered while 400 idle connections were held"
    );
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
