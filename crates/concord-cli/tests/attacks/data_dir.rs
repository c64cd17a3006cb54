//! Two servers on one data directory: the second must refuse to start (its writers would fail
//! and its members would silently miss the first one's events), and the first keeps serving.

use crate::probe;
use crate::support::{Report, Server};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("first.log");
    let first = Server::start(report.data_dir(), &[], &log).await;
    probe::assert_serves_clients(&first.addr, "before the second server").await;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(report.data_dir())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut second = cmd.spawn().expect("spawn the second concord");
    // A second server that started would never exit: after the deadline it is killed (by its
    // pid: the child handle) and the test fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match second.try_wait().expect("poll the second server") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = second.kill();
                let _ = second.wait();
                panic!("the second server on the same data directory kept running");
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = second.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        !status.success(),
        "the second server exited successfully: {stderr}"
    );
    let expected = format!(
        "data directory {} is in use by another concord process (pid {})",
        report.data_dir().display(),
        first.pid
    );
    assert!(
        stderr.contains(&expected),
        "the second server's error does not say {expected:?}: {stderr}"
    );

    probe::assert_healthy(&first.addr, "after the second server").await;
    probe::assert_serves_clients(&first.addr, "after the second server").await;
}
