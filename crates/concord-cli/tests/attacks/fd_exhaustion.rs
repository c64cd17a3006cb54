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
