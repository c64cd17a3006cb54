//! The probes themselves, with no attack: a fresh server is healthy, serves a client, and its
//! memory and descriptors are readable (the baseline every attack test compares against).

use crate::probe;
use crate::support::{Report, Server};

#[tokio::test]
async fn a_fresh_server_is_healthy_and_serves_clients() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &[], &log).await;
    probe::assert_healthy(&server.addr, "no attack").await;
    probe::assert_serves_clients(&server.addr, "no attack").await;
    assert!(probe::rss_kib(server.pid) > 0);
    assert!(probe::fd_count(server.pid) > 3);
}
