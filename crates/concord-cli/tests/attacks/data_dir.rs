//! Two servers on one data directory: the second must refuse to start (its writers would fail
//! and its members would silently miss the first one's events), and the first keeps serving.

use crate::probe;
use crate::support::{within, Report, Server};
use std::process::{Command, Stdio};

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
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
    let second = cmd.spawn().expect("spawn the second concord");
    let second_pid = second.id();
    // A second server that started would never exit: the timeout fails the test (the child is
    // killed by its pid below).
    let out = within(
        "the second server to exit",
        tokio::task::spawn_blocking(move || second.wait_with_output()),
    )
    .await;
    let out = match out {
        Ok(Ok(out)) => out,
        other => {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(second_pid.to_string())
                .status();
            panic!("waiting for the second server failed: {other:?}");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
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
