//! Authentication and permissions: JWT checks on hello, rights per room, token refresh, HTTP.

use crate::support::*;
use concord_server::auth::{AuthMode, JwtKeys, JwtVerifier};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &[u8] = b"integration-test-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_with(claims: Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn token(sub: &str, rooms: Value, ttl: i64) -> String {
    let exp = (now() as i64 + ttl) as u64;
    token_with(
        json!({"sub": sub, "exp": exp, "name": format!("{sub}'s name"), "rooms": rooms}),
        SECRET,
    )
}

/// The admin key of `jwt_server` (with auth on, `/metrics` needs it).
const ADMIN_KEY: &str = "test-admin-key-0123";

fn jwt_config(c: &mut concord_server::Config) {
    c.auth = AuthMode::Jwt(JwtVerifier::new(JwtKeys::Secret(SECRET.to_vec()), 0).unwrap());
    c.admin_key = Some(concord_server::auth::AdminKey::new(ADMIN_KEY).unwrap());
}

async fn jwt_server(tweak: impl FnOnce(&mut concord_server::Config)) -> TestServer {
    TestServer::memory(|c| {
        jwt_config(c);
        tweak(c)
    })
    .await
}

/// A JWT server whose clock is `clock` (token expiry follows it, not the wall clock).
async fn jwt_server_at(
    clock: &TestClock,
    tweak: impl FnOnce(&mut concord_server::Config),
) -> TestServer {
    TestServer::memory_at(clock, |c| {
        jwt_config(c);
        tweak(c)
    })
    .await
}

/// A token of `sub` for `rooms` that expires at `exp` (Unix seconds).
fn token_until(sub: &str, rooms: &Value, exp: u64) -> String {
    token_with(json!({"sub": sub, "exp": exp, "rooms": rooms}), SECRET)
}

/// `/metrics` with the admin key.
async fn metrics(server: &TestServer) -> String {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.addr))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

async fn hello_with(server: &TestServer, client: &str, token: &str) -> Ws {
    let mut w = Ws::connect(server).await;
    w.send(json!({"type":"hello","client_id":client,"token":token}))
        .await;
    w
}

#[tokio::test]
async fn bad_tokens_get_unauthorized_and_close_1008() {
    let server = jwt_server(|_| {}).await;
    let t = now();
    let cases = [
        (
            token_with(
                json!({"sub":"u","exp":t+60,"rooms":{}}),
                b"some-other-secret-of-enough-size",
            ),
            "bad token signature",
        ),
        (token("u", json!({}), -30), "token expired"),
        (
            token_with(json!({"sub":"u","exp":t+60,"nbf":t+30,"rooms":{}}), SECRET),
            "token not yet valid",
        ),
        (token_with(json!({"sub":"u","exp":t+60}), SECRET), "rooms"),
        (token_with(json!({"exp":t+60,"rooms":{}}), SECRET), "sub"),
        ("garbage".to_string(), "malformed"),
    ];
    for (tok, why) in cases {
        let mut w = hello_with(&server, "c", &tok).await;
        let e = w.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "{why}: {e}"
        );
        assert!(e["message"].as_str().unwrap().contains(why), "{why}: {e}");
        assert_eq!(w.closed().await, Some(1008), "{why}");
    }
    // An `aud` claim is carried, not refused.
    let with_aud = token_with(
        json!({"sub":"u","exp":t+60,"aud":"some-service","rooms":{}}),
        SECRET,
    );
    let mut w = hello_with(&server, "c", &with_aud).await;
    assert_eq!(w.recv().await["type"], "welcome");
    // No token at all.
    let mut w = Ws::connect(&server).await;
    w.send(json!({"type":"hello","client_id":"c"})).await;
    assert_eq!(w.recv().await["code"], "unauthorized");
    assert_eq!(w.closed().await, Some(1008));
    let m = metrics(&server).await;
    for (reason, n) in [
        ("bad_signature", 1.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("missing_claim", 2.0),
        ("malformed", 1.0),
        ("missing", 1.0),
    ] {
        let got = metric(&m, "concord_auth_failures_total", &[("reason", reason)]);
        assert_eq!(got, n, "{reason}\n{m}");
    }
    server.stop().await;
}

#[tokio::test]
async fn rights_are_checked_per_room_and_the_connection_stays_open() {
    let server = jwt_server(|_| {}).await;
    let writer = token("w", json!({"chat:*":["read","write","presence"]}), 300);
    let reader = token(
        "r",
        json!({"chat:*":["read"], "doc:team-42:*":["read"]}),
        300,
    );
    let presence_only = token("p", json!({"chat:*":["read","presence"]}), 300);

    let mut w = hello_with(&server, "cw", &writer).await;
    assert_eq!(w.recv().await["type"], "welcome");
    w.join("chat:lobby", json!({})).await;
    // Outside the grants.
    w.send(json!({"type":"join","room":"secret:x","kind":"stream"}))
        .await;
    let e = w.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("forbidden"), Some("secret:x"))
    );
    let (ack, _) = w.publish("chat:lobby", "m1", json!(1)).await;
    assert_eq!(ack["seq"], 1);

    let mut r = hello_with(&server, "cr", &reader).await;
    assert_eq!(r.recv().await["type"], "welcome");
    let j = r.join("chat:lobby", json!({"history": 5})).await;
    assert_eq!(seqs(j["events"].as_array().unwrap()), vec![1]);
    // Members carry the user and the token's optional claims.
    let members = j["members"].as_array().unwrap();
    assert!(
        members
            .iter()
            .any(|m| m["user"] == "w" && m["meta"]["name"] == "w's name"),
        "{members:?}"
    );
    r.send(json!({"type":"publish","room":"chat:lobby","id":"x","data":1}))
        .await;
    let e = r.recv_durable().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("x"))
    );
    r.send(json!({"type":"presence","room":"chat:lobby","data":{"cursor":1}}))
        .await;
    assert_eq!(r.recv_durable().await["code"], "forbidden");
    // Still usable after being refused.
    let (ack, _) = w.publish("chat:lobby", "m2", json!(2)).await;
    assert_eq!(r.events(1).await[0]["seq"], ack["seq"]);

    let mut p = hello_with(&server, "cp", &presence_only).await;
    assert_eq!(p.recv().await["type"], "welcome");
    p.join("chat:lobby", json!({})).await;
    p.send(json!({"type":"presence","room":"chat:lobby","data":{"typing":true}}))
        .await;
    p.send(json!({"type":"publish","room":"chat:lobby","id":"y","data":1}))
        .await;
    let e = p.recv_durable().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("y"))
    );
    // The presence went through: the writer sees it.
    loop {
        let m = w.recv().await;
        if m["type"] == "presence" && m["client_id"] == "cp" {
            assert_eq!(m["data"], json!({"typing": true}));
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_id_belongs_to_the_first_user_that_used_it() {
    let server = jwt_server(|_| {}).await;
    let rooms = json!({"chat:*":["read","write"]});
    let mut alice = hello_with(&server, "c-shared", &token("alice", rooms.clone(), 300)).await;
    assert_eq!(alice.recv().await["type"], "welcome");
    alice.join("chat:x", json!({})).await;
    // Another user cannot take the id (and so cannot pre-empt or replay alice's op ids).
    let mut mallory = hello_with(&server, "c-shared", &token("mallory", rooms.clone(), 300)).await;
    let e = mallory.recv().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(mallory.closed().await, Some(1008));
    // The owner can come back with it on a new connection.
    drop(alice);
    let mut again = hello_with(&server, "c-shared", &token("alice", rooms, 300)).await;
    assert_eq!(again.recv().await["type"], "welcome");
    let m = metrics(&server).await;
    let taken = metric(
        &m,
        "concord_auth_failures_total",
        &[("reason", "client_id_taken")],
    );
    assert_eq!(taken, 1.0, "{m}");
    server.stop().await;
}

#[tokio::test]
async fn token_from_the_upgrade_request_header_or_query() {
    let server = jwt_server(|_| {}).await;
    let t = token("u", json!({"*":["read"]}), 300);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        server.url(),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut w = Ws { ws };
    w.send(json!({"type":"hello","client_id":"h"})).await;
    assert_eq!(w.recv().await["type"], "welcome");
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={t}", server.url()))
        .await
        .unwrap();
    let mut w = Ws { ws };
    w.send(json!({"type":"hello","client_id":"q"})).await;
    assert_eq!(w.recv().await["type"], "welcome");
    server.stop().await;
}

#[tokio::test]
async fn expiring_token_is_refreshed_with_auth_or_the_connection_closes() {
    // The server's clock starts on a whole second and moves only when the test says so.
    const T0: u64 = 1_800_000_000;
    let clock = TestClock::new(T0 * 1000);
    let server = jwt_server_at(&clock, |c| c.auth_grace = Duration::from_millis(1500)).await;
    let rooms = json!({"chat:*":["read","write"]});
    let mut a = hello_with(&server, "a", &token_until("u1", &rooms, T0 + 1)).await;
    assert_eq!(a.recv().await["type"], "welcome");
    a.join("chat:a", json!({})).await;
    // At `exp` itself the token is still good (expired when now > exp): no notice, and a publish
    // goes through.
    clock.advance(Duration::from_secs(1));
    let (ack, events) = a.publish("chat:a", "m0", json!(0)).await;
    assert_eq!(ack["seq"], 1);
    if events.is_empty() {
        a.events(1).await;
    }
    // One millisecond later it is expired: the notice comes, naming the grace.
    clock.advance(Duration::from_millis(1));
    let e = a.recv().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("auth") && message.contains("1500 ms"),
        "{e}"
    );
    // While expired, requests are refused.
    a.send(json!({"type":"publish","room":"chat:a","id":"m","data":1}))
        .await;
    assert_eq!(a.recv().await["code"], "unauthorized");
    // Refresh: same user, new expiry; a room the new token does not grant is left.
    let chat_b = json!({"chat:b":["read","write"]});
    a.send(json!({"type":"auth","token": token_until("u1", &chat_b, T0 + 300)}))
        .await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("forbidden"), Some("chat:a"))
    );
    // `left` comes from the room, `auth_ok` from the connection: either order.
    let mut two = [a.recv().await, a.recv().await];
    two.sort_by_key(|m| m["type"].as_str().unwrap_or("").to_string());
    assert_eq!(
        (two[0]["type"].as_str(), two[0]["user"].as_str()),
        (Some("auth_ok"), Some("u1"))
    );
    assert_eq!(two[1], json!({"type":"left","room":"chat:a"}));
    // The grace timer is gone with the refresh: past its end, the connection works.
    clock.advance(Duration::from_secs(2));
    a.join("chat:b", json!({})).await;
    let (ack, _) = a.publish("chat:b", "m", json!(1)).await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(a.events(1).await[0]["seq"], 1);
    // A token for another user is refused and closes.
    a.send(json!({"type":"auth","token": token_until("u2", &rooms, T0 + 300)}))
        .await;
    assert_eq!(a.recv_durable().await["code"], "unauthorized");
    assert_eq!(a.closed().await, Some(1008));

    // Without a refresh the connection closes when the grace ends, not a millisecond earlier.
    let now_s = clock.now_ms() / 1000;
    let mut b = hello_with(&server, "b", &token_until("u3", &rooms, now_s + 1)).await;
    assert_eq!(b.recv().await["type"], "welcome");
    clock.set((now_s + 1) * 1000 + 1);
    assert_eq!(b.recv().await["code"], "unauthorized");
    clock.advance(Duration::from_millis(1499));
    // Still open: a request is answered (refused, as during any grace).
    b.send(json!({"type":"join","room":"chat:b"})).await;
    assert_eq!(b.recv().await["code"], "unauthorized");
    clock.advance(Duration::from_millis(1));
    assert_eq!(b.closed().await, Some(1008));
    server.stop().await;
}

#[tokio::test]
async fn http_requires_a_key_or_a_token_with_the_right() {
    let server = jwt_server(|c| {
        c.admin_key = Some(concord_server::auth::AdminKey::new("backend-admin-key").unwrap())
    })
    .await;
    let body = Some(json!({"data": {"n": 1}}));
    let (s, e) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:h/events",
        None,
        body.clone(),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
    let (s, _) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:h/events",
        Some("wrong-key"),
        body.clone(),
    )
    .await;
    assert_eq!(s, 401);
    let (s, r) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:h/events",
        Some("backend-admin-key"),
        body.clone(),
    )
    .await;
    assert_eq!((s, r["seq"].as_u64()), (200, Some(1)));
    let writer = token("w", json!({"chat:*":["read","write"]}), 300);
    let reader = token("r", json!({"chat:*":["read"]}), 300);
    let (s, r) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:h/events",
        Some(&writer),
        body.clone(),
    )
    .await;
    assert_eq!((s, r["seq"].as_u64()), (200, Some(2)));
    let (s, e) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:h/events",
        Some(&reader),
        body.clone(),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("forbidden")));
    let (s, page) = http_as(
        &server,
        "GET",
        "/v1/rooms/chat:h/events",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!((s, page["seq"].as_u64()), (200, Some(2)));
    let (s, _) = http_as(
        &server,
        "GET",
        "/v1/rooms/other/events",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = http_as(&server, "GET", "/v1/admin/stats", Some(&writer), None).await;
    assert_eq!(s, 403);
    let (s, stats) = http_as(
        &server,
        "GET",
        "/v1/admin/stats",
        Some("backend-admin-key"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(stats["rooms"][0]["room"], "chat:h");
    assert_eq!(stats["rooms"][0]["publishes"], 2);
    server.stop().await;
}

/// One HTTP request with an optional bearer token; the status and the JSON body.
async fn http_as(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(
        method.parse().unwrap(),
        format!("http://{}{}", server.addr, path),
    );
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_idempotency_keys_are_scoped_per_caller() {
    let server = jwt_server(|c| {
        c.admin_key = Some(concord_server::auth::AdminKey::new("backend-admin-key").unwrap())
    })
    .await;
    let rooms = json!({"jobs:*":["read","write"]});
    let bob = token("bob", rooms.clone(), 300);
    let alice = token("alice", rooms.clone(), 300);
    // A user whose name cannot be a client id as is: hashed into one.
    let odd = token("ünïcode user", rooms, 300);
    let post = |who: &str, n: u64| {
        let who = who.to_string();
        let server = &server;
        async move {
            http_as(
                server,
                "POST",
                "/v1/rooms/jobs:1/events",
                Some(&who),
                Some(json!({"data": {"n": n}, "id": "job-1"})),
            )
            .await
        }
    };
    let (s, b1) = post(&bob, 1).await;
    assert_eq!((s, b1["seq"].as_u64()), (200, Some(1)), "{b1}");
    // Alice uses the same id: her own event, her own ack.
    let (s, a1) = post(&alice, 2).await;
    assert_eq!((s, a1["seq"].as_u64()), (200, Some(2)), "{a1}");
    let (s, o1) = post(&odd, 3).await;
    assert_eq!((s, o1["seq"].as_u64()), (200, Some(3)), "{o1}");
    let (s, k1) = post("backend-admin-key", 4).await;
    assert_eq!((s, k1["seq"].as_u64()), (200, Some(4)), "{k1}");
    // Retries by the same caller get the original ack; nothing is appended.
    assert_eq!(post(&bob, 9).await, (200, b1));
    assert_eq!(post(&alice, 9).await, (200, a1));
    assert_eq!(post(&odd, 9).await, (200, o1));
    assert_eq!(post("backend-admin-key", 9).await, (200, k1));
    let (s, page) = http_as(
        &server,
        "GET",
        "/v1/rooms/jobs:1/events",
        Some("backend-admin-key"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let events = page["events"].as_array().unwrap();
    let from: Vec<&str> = events.iter().map(|e| e["from"].as_str().unwrap()).collect();
    assert_eq!(from.len(), 4, "{page}");
    assert_eq!(&from[..2], ["http:bob", "http:alice"]);
    assert!(
        from[2].starts_with("http:~") && from[2].len() == 6 + 32,
        "{from:?}"
    );
    assert_eq!(from[3], "http");
    let n: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(n, [1, 2, 3, 4]);
    // WebSocket clients cannot take an HTTP caller's scope.
    let ws_token = token("mallory", json!({"jobs:*":["read","write"]}), 300);
    for reserved in ["http", "http:bob"] {
        let mut w = hello_with(&server, reserved, &ws_token).await;
        let e = w.recv().await;
        assert_eq!(e["code"], "bad_request", "{reserved}: {e}");
    }
    server.stop().await;
}

#[tokio::test]
async fn only_a_writer_creates_a_room() {
    let server = jwt_server(|_| {}).await;
    let reader = token("r", json!({"chat:*":["read"]}), 300);
    let writer = token("w", json!({"chat:*":["read","write"]}), 300);
    let mut r = hello_with(&server, "reader", &reader).await;
    assert_eq!(r.recv().await["type"], "welcome");
    // A read-only token cannot create a room (nor fix its kind).
    for kind in ["doc", "stream"] {
        r.send(json!({"type":"join","room":"chat:announcements","kind":kind}))
            .await;
        let e = r.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{e}"
        );
    }
    let (s, e) = http_as(
        &server,
        "POST",
        "/v1/rooms/chat:announcements/events",
        Some(&reader),
        Some(json!({"data": 1})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("forbidden")));
    // The writer creates it; then the reader joins it.
    let mut w = hello_with(&server, "writer", &writer).await;
    assert_eq!(w.recv().await["type"], "welcome");
    let joined = w.join("chat:announcements", json!({})).await;
    assert_eq!(joined["kind"], "stream");
    let joined = r.join("chat:announcements", json!({})).await;
    assert_eq!(joined["kind"], "stream");
    server.stop().await;
}
