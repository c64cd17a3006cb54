//! Room floods: one connection used to create 5,000 rooms in 1.2 s (join needs only `read`, no
//! rate), and a read-only token could create `chat:announcements` as a doc room so that the
//! backend's publishes got `kind_mismatch` forever. Creation is now rate-limited per connection
//! and per user, bounded by a room quota, and needs the `write` right. Joins refused by that rate
//! still loaded a room each: with a leave after every join, one connection kept thousands of
//! room loads waiting (35-60 MiB, kept by the allocator afterwards). A join now holds one of the
//! connection's in-flight slots until it is answered.

use crate::probe;
use crate::support::{next_json, within, Report, Server};
use futures::stream::{self, StreamExt};
use futures::SinkExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const FLOOD: usize = 5_000;

async fn get_status(client: &reqwest::Client, url: String) -> u16 {
    client.get(url).send().await.expect("GET").status().as_u16()
}

/// What one flood did: rooms created, joins refused with `rate_limited`, seconds it took.
struct Flooded {
    joined: usize,
    limited: usize,
    elapsed: f64,
}

/// One connection joins and leaves `FLOOD` rooms named `{prefix}:{n}` as fast as it can, while a
/// well-behaved client and `/healthz` must keep being served.
async fn flood(addr: &str, prefix: &str) -> Flooded {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let hello = json!({"type":"hello","client_id": format!("flooder-{prefix}")});
    tx.send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    assert_eq!(next_json(&mut rx, "welcome").await["type"], "welcome");
    let start = Instant::now();
    // Join and leave at once, so the per-connection room limit never stops the flood.
    let send = async {
        for n in 0..FLOOD {
            let room = format!("{prefix}:{n}");
            tx.feed(Message::text(
                json!({"type":"join","room":room,"kind":"stream"}).to_string(),
            ))
            .await
            .expect("join");
            tx.feed(Message::text(
                json!({"type":"leave","room":room}).to_string(),
            ))
            .await
            .expect("leave");
        }
        tx.flush().await.expect("flush");
    };
    let (mut joined, mut limited) = (0usize, 0usize);
    let count = async {
        // Every join gets `joined` or an error.
        while joined + limited < FLOOD {
            let m: Value = next_json(&mut rx, "flood answers").await;
            match (m["type"].as_str(), m["code"].as_str()) {
                (Some("joined"), _) => joined += 1,
                (Some("error"), Some("rate_limited")) => limited += 1,
                (Some("error"), Some("not_found")) => {} // the leave of a refused join
                (Some("left"), _) => {}
                _ => panic!("unexpected answer during the flood: {m}"),
            }
        }
    };
    let probes = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        probe::assert_healthy(addr, "a room flood").await;
        probe::assert_serves_clients(addr, "a room flood").await;
    };
    within("the flood", async { tokio::join!(send, count, probes) }).await;
    let elapsed = start.elapsed().as_secs_f64();
    // The default is 10 rooms/s with bursts of 20 per connection.
    let bound = 20 + (10.0 * elapsed).ceil() as usize + 5;
    assert!(
        joined <= bound,
        "one connection created {joined} rooms in {elapsed:.1} s (bound {bound}); {limited} refused"
    );
    assert!(limited >= FLOOD - bound, "{limited} rate_limited answers");
    Flooded {
        joined,
        limited,
        elapsed,
    }
}

/// How many of the rooms `{prefix}:0..FLOOD` exist, asked over HTTP.
async fn stored_rooms(addr: &str, prefix: &str) -> usize {
    let client = reqwest::Client::new();
    within(
        "counting stored rooms",
        stream::iter(0..FLOOD)
            .map(|n| get_status(&client, format!("http://{addr}/v1/rooms/{prefix}:{n}")))
            .buffer_unordered(32)
            .filter(|s| std::future::ready(*s == 200))
            .count(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_create_thousands_of_rooms() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &["--sqlite-sync", "normal"], &log).await;
    // A first flood warms what any busy server grows once (the store's reader threads and their
    // page caches, the allocator's per-thread arenas); the second one must not grow the server
    // much further. Joins waiting without bound (28-40 MiB per flood here) or rooms kept would.
    let warm = flood(&server.addr, "warm").await;
    let (rss_before, fds_before) = (probe::anon_kib(server.pid), probe::fd_count(server.pid));
    let Flooded {
        joined,
        limited,
        elapsed,
    } = flood(&server.addr, "flood").await;
    let grown_mib = probe::anon_kib(server.pid).saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 16,
        "the second flood ({joined} rooms created, {limited} refused in {elapsed:.1} s) grew the \
         server's anonymous memory by {grown_mib} MiB"
    );
    let fds = probe::fd_count(server.pid);
    assert!(fds < fds_before + 50, "descriptors: {fds_before} → {fds}");

    // What is stored is what was created: count the flood rooms that exist.
    for (prefix, joined) in [("warm", warm.joined), ("flood", joined)] {
        let stored = stored_rooms(&server.addr, prefix).await;
        assert_eq!(
            stored, joined,
            "stored {prefix} rooms differ from the joined answers"
        );
    }
    probe::assert_healthy(&server.addr, "after a room flood").await;
    probe::assert_serves_clients(&server.addr, "after a room flood").await;
}

fn token(secret: &[u8], sub: &str, rights: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "rooms": {"chat:*": rights}}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("token")
}

async fn first_answer(addr: &str, token: &str, frame: Value) -> Value {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let hello =
        json!({"type":"hello","client_id": format!("c-{}", rand::random::<u32>()), "token": token});
    tx.send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    assert_eq!(next_json(&mut rx, "welcome").await["type"], "welcome");
    tx.send(Message::text(frame.to_string()))
        .await
        .expect("send");
    next_json(&mut rx, "answer").await
}

#[tokio::test]
async fn a_read_only_token_cannot_create_or_fix_the_kind_of_a_room() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let secret = b"room-floods-attack-test-secret-0123456789";
    let secret_file = report.data_dir().join("secret");
    std::fs::write(&secret_file, secret).expect("write secret");
    let log = report.log_path("server.log");
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let server = Server::start(&report.data_dir().join("data"), &args, &log).await;
    let reader = token(secret, "reader", &["read"]);
    let writer = token(secret, "backend", &["read", "write"]);
    let join_doc = json!({"type":"join","room":"chat:announcements","kind":"doc"});
    let e = first_answer(&server.addr, &reader, join_doc).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{e}"
    );
    // The backend's publishes still create (and find) a stream room.
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/rooms/chat:announcements/events",
            server.addr
        ))
        .bearer_auth(&writer)
        .header("content-type", "application/json")
        .body(json!({"data": {"text": "hello"}}).to_string())
        .send()
        .await
        .expect("POST");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(
        (status.as_u16(), body["seq"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let joined = first_answer(
        &server.addr,
        &reader,
        json!({"type":"join","room":"chat:announcements"}),
    )
    .await;
    assert_eq!(
        (joined["type"].as_str(), joined["kind"].as_str()),
        (Some("joined"), Some("stream")),
        "{joined}"
    );
    probe::assert_healthy(&server.addr, "after read-only joins").await;
}
