//! Smaller trust-boundary leaks of the HTTP API against the real binary: `/metrics` named rooms
//! to anyone, `/readyz` said ready while the store could not write (and put store error text
//! in its answer), `after` beyond i64::MAX answered 503, the `Bearer` scheme was case-sensitive,
//! and `concord listening on …` was printed before the store was open.

use crate::probe;
use crate::support::{Report, Server};
use std::process::{Command, Stdio};

fn secrets() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("secret dir");
    let jwt = dir.path().join("jwt.secret");
    std::fs::write(&jwt, "0123456789abcdef0123456789abcdef").expect("write secret");
    let admin = dir.path().join("admin.key");
    std::fs::write(&admin, "an-admin-key-for-tests").expect("write key");
    let (jwt, admin) = (jwt.display().to_string(), admin.display().to_string());
    (dir, jwt, admin)
}

#[tokio::test]
async fn metrics_need_the_admin_key_or_their_own_listener() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let (_dir, jwt, admin) = secrets();
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        &jwt,
        "--admin-key-file",
        &admin,
    ];
    let server = Server::start(report.data_dir(), &args, &log).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", server.addr);
    let anonymous = http.get(&url).send().await.expect("get");
    assert_eq!(anonymous.status().as_u16(), 401, "metrics open to anyone");
    // The scheme name is case-insensitive (RFC 7235).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = http
            .get(&url)
            .header("authorization", format!("{scheme} an-admin-key-for-tests"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "scheme {scheme}");
    }
    drop(server);

    let log = report.log_path("server-metrics.log");
    let mut args = args.to_vec();
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let server = Server::start(report.data_dir(), &args, &log).await;
    let main = http
        .get(format!("http://{}/metrics", server.addr))
        .header("authorization", "Bearer an-admin-key-for-tests")
        .send()
        .await
        .expect("get");
    assert_eq!(
        main.status().as_u16(),
        404,
        "metrics still on the main port"
    );
    let metrics_addr = server.metrics_addr.clone().expect("metrics listening line");
    let m = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(m.status().as_u16(), 200);
    let text = m.text().await.expect("body");
    // The scrape itself is an open TCP connection (of the metrics listener).
    assert!(crate::support::metric(&text, "concord_tcp_connections", &[]) >= 1.0);
}

#[tokio::test]
async fn readyz_checks_that_the_store_can_write_and_keeps_errors_private() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let data = report.data_dir().join("db");
    let server = Server::start(&data, &[], &log).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/readyz", server.addr);
    assert_eq!(
        http.get(&url).send().await.expect("get").status().as_u16(),
        200
    );
    // The database is gone from under the server: reads from open connections still work,
    // nothing can be written any more.
    std::fs::remove_dir_all(&data).expect("remove the data dir");
    let r = http.get(&url).send().await.expect("get");
    assert_eq!(
        r.status().as_u16(),
        503,
        "ready although the store cannot write"
    );
    let body = r.text().await.expect("body");
    assert_eq!(body, "store unavailable", "store details leaked: {body:?}");
}

#[tokio::test]
async fn a_position_beyond_i64_is_a_bad_request() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &[], &log).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/v1/rooms/r/events", server.addr))
        .header("content-type", "application/json")
        .body(r#"{"data":1}"#)
        .send()
        .await
        .expect("post");
    assert!(r.status().is_success());
    let r = http
        .get(format!(
            "http://{}/v1/rooms/r/events?after=9223372036854775808",
            server.addr
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], "bad_request", "{body}");
}

#[tokio::test]
async fn the_listening_line_waits_for_the_store() {
    let _serial = probe::serial().await;
    let report = Report::new(0, "-");
    // A data dir that cannot be created: the store cannot open.
    let not_a_dir = report.data_dir().join("file");
    std::fs::write(&not_a_dir, "x").expect("write file");
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(not_a_dir.join("data"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run concord");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("concord listening on"),
        "announced listening although the store never opened: {stdout:?}"
    );
}
