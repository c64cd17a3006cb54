//! Cross-origin pages and DNS rebinding against the default (no-auth, loopback) mode: any web
//! page could open the WebSocket and append events with a `text/plain` POST, and a page whose
//! name was rebound to 127.0.0.1 could use the API. Now the WebSocket checks `Origin`, POSTs
//! need a JSON content type, and without authentication only loopback `Host`s are served.

use crate::probe;
use crate::support::{Report, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn upgrade_with_origin(addr: &str, origin: &str) -> Result<u16, u16> {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", HeaderValue::from_str(origin).expect("origin"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => Ok(resp.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn foreign_pages_and_rebound_names_are_refused() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &["--sqlite-sync", "normal"], &log).await;
    let addr = server.addr.clone();
    // The WebSocket: a foreign page is refused, the server's own page and non-browsers are not.
    assert_eq!(
        upgrade_with_origin(&addr, "http://evil.example").await,
        Err(403)
    );
    assert_eq!(upgrade_with_origin(&addr, "null").await, Err(403));
    assert_eq!(
        upgrade_with_origin(&addr, &format!("http://{addr}")).await,
        Ok(101)
    );
    probe::assert_serves_clients(&addr, "cross-origin upgrades").await;
    // A "simple" cross-origin POST (no preflight) is refused before it reaches the room.
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/rooms/csrf/events");
    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .body(r#"{"data":"forged"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 415);
    let body: serde_json::Value = r.json().await.expect("json error body");
    assert_eq!(body["code"], "bad_request", "{body}");
    let r = http
        .get(format!("{url}?after=0"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404, "the forged POST created the room");
    // DNS rebinding: the page's own name in Host.
    for (method, path) in [
        ("GET", "/v1/rooms/csrf/events"),
        ("POST", "/v1/rooms/csrf/events"),
    ] {
        let r = http
            .request(
                method.parse().expect("method"),
                format!("http://{addr}{path}"),
            )
            .header("host", "evil.example:7400")
            .header("content-type", "application/json")
            .body(r#"{"data":1}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status().as_u16(),
            421,
            "{method} {path} with a foreign Host"
        );
    }
    let r = http
        .get(format!("http://{addr}/healthz"))
        .header("host", "localhost:7400")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "loopback names are served");
}

#[tokio::test]
async fn allowed_origins_open_the_websocket_and_their_hosts() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(
        report.data_dir(),
        &["--allowed-origins", "https://app.example"],
        &log,
    )
    .await;
    let addr = server.addr.clone();
    assert_eq!(
        upgrade_with_origin(&addr, "https://app.example").await,
        Ok(101)
    );
    assert_eq!(
        upgrade_with_origin(&addr, "https://other.example").await,
        Err(403)
    );
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .header("host", "app.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
}
