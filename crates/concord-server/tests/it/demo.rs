//! The web demo at `/` (`Config::demo`): served with auth off by default, never with `off`, not
//! with JWT auth unless asked; the page, script and style carry their types and a strict CSP.

use crate::support::*;
use concord_server::auth::{AuthMode, JwtKeys, JwtVerifier};
use concord_server::config::Demo;

async fn get(server: &TestServer, path: &str) -> (u16, String, String, String) {
    let resp = reqwest::get(format!("http://{}{}", server.addr, path))
        .await
        .expect("GET");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (ctype, csp) = (header("content-type"), header("content-security-policy"));
    let status = resp.status().as_u16();
    (status, ctype, csp, resp.text().await.expect("body"))
}

fn jwt(c: &mut concord_server::Config) {
    c.auth = AuthMode::Jwt(
        JwtVerifier::new(JwtKeys::Secret(b"0123456789abcdef0123".to_vec()), 0).expect("verifier"),
    );
}

#[tokio::test]
async fn the_demo_is_served_at_the_root_when_auth_is_off() {
    let server = TestServer::memory(|_| {}).await;
    let (status, ctype, csp, body) = get(&server, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(
        body.contains("/demo/app.js") && body.contains("Shared notes"),
        "the page: {body}"
    );
    assert!(
        csp.contains("connect-src 'self' ws: wss:"),
        "a CSP limits the page: {csp}"
    );
    let (status, ctype, _, js) = get(&server, "/demo/app.js").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/javascript"), "{ctype}");
    assert!(
        js.contains("/v1/ws"),
        "the script talks to the WebSocket endpoint"
    );
    let (status, ctype, _, _) = get(&server, "/demo/app.css").await;
    assert_eq!((status, ctype.starts_with("text/css")), (200, true));
    server.stop().await;
}

#[tokio::test]
async fn the_demo_can_be_switched_off() {
    let server = TestServer::memory(|c| c.demo = Demo::Off).await;
    for path in ["/", "/demo/app.js", "/demo/app.css"] {
        let (status, _, _, body) = get(&server, path).await;
        assert_eq!(status, 404, "{path} with the demo off: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn with_jwt_auth_the_demo_is_off_unless_asked() {
    let server = TestServer::memory(jwt).await;
    assert_eq!(get(&server, "/").await.0, 404, "auto: no demo with auth on");
    server.stop().await;
    let server = TestServer::memory(|c| {
        jwt(c);
        c.demo = Demo::On;
    })
    .await;
    assert_eq!(
        get(&server, "/").await.0,
        200,
        "on: served with auth on too"
    );
    server.stop().await;
}
