//! Crash test of the `concord` binary: after kill -9 under load, every acked publish is stored exactly once at its acked seq, and retries are idempotent.
//!
//! One data dir lives through several rounds. Each round starts the real binary, (after a
//! crash) verifies the whole history over HTTP (gap-free seqs, same epochs, no duplicates) and
//! retries acked and unacked ids over WebSocket, then lets 8 pipelining publishers (c0..c7)
//! write into two stream rooms and SIGKILLs the server after a seeded random delay.
//! `CONCORD_CRASH_SEED=<seed>` replays a seed's kill delays, sync modes and retry samples (the
//! interleaving of the publishers still depends on timing).

mod support;

use futures::stream::StreamExt;
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{next_json, within, Report, Server, Ws};
use tokio_tungstenite::tungstenite::Message;

/// The two stream rooms; publish `m-<n>` goes to `ROOMS[n % 2]`.
const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
/// Concurrent publishers, client ids `c0..c7`.
const CLIENTS: usize = 8;
/// Publishes each publisher keeps unacked in flight.
const WINDOW: usize = 32;
/// Kill points (rounds that end with kill -9); one more start verifies the last crash.
const KILLS: usize = 5;
/// Acked ids retried after each restart.
const RETRY_SAMPLE: usize = 48;
/// Kill delays are drawn from this range (ms), one from each of `KILLS` equal slices.
const DELAY_MS: (u64, u64) = (50, 600);
fn client_name(ci: usize) -> String {
    format!("c{ci}")
}

fn room_of(n: u64) -> usize {
    (n % 2) as usize
}

/// The data of publish `m-<n>` of client `ci`: deterministic, so a retry sends the same data.
fn data_of(ci: usize, n: u64) -> Value {
    json!({"client": client_name(ci), "n": n, "text": format!("message {n} from c{ci}")})
}

fn publish_frame(ci: usize, n: u64) -> Message {
    Message::text(
        json!({"type": "publish", "room": ROOMS[room_of(n)], "id": format!("m-{n}"), "data": data_of(ci, n)})
            .to_string(),
    )
}

/// What the clients know, shared by the publisher tasks.
#[derive(Default, Clone)]
struct Book {
    /// Every publish written (or attempted) to a socket: (client, n).
    sent: HashSet<(usize, u64)>,
    /// Every ack received: (client, n) → seq.
    acked: HashMap<(usize, u64), u64>,
    /// Protocol violations seen by the publishers.
    problems: Vec<String>,
}

/// One room as `joined` described it.
struct Joined {
    epoch: String,
    seq: u64,
}

/// Connects as client `ci`, says hello and joins both rooms (kind stream).
async fn connect(addr: &str, ci: usize) -> (Ws, [Joined; 2]) {
    let who = client_name(ci);
    let (ws, _) = within(
        format!("{who} connecting"),
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
    )
    .await
    .unwrap_or_else(|e| panic!("{who}: connecting to {addr}: {e}"));
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"type": "hello", "client_id": who}).to_string(),
    ))
    .await
    .expect("send hello");
    let welcome = next_json(&mut rx, "welcome").await;
    assert_eq!(
        welcome["type"], "welcome",
        "{who}: expected welcome, got {welcome}"
    );
    assert_eq!(
        welcome["client_id"],
        who.as_str(),
        "{who}: welcome for another client: {welcome}"
    );
    for room in ROOMS {
        tx.feed(Message::text(
            json!({"type": "join", "room": room, "kind": "stream"}).to_string(),
        ))
        .await
        .expect("send join");
    }
    tx.flush().await.expect("send joins");
    let mut joined: [Option<Joined>; 2] = [None, None];
    while joined.iter().any(Option::is_none) {
        let v = next_json(&mut rx, "joined").await;
        match v["type"].as_str() {
            Some("joined") => {
                let r = ROOMS
                    .iter()
                    .position(|r| v["room"] == *r)
                    .unwrap_or_else(|| panic!("joined unknown room: {v}"));
                assert_eq!(v["kind"], "stream", "{who}: {v}");
                joined[r] = Some(Joined {
                    epoch: v["epoch"].as_str().expect("joined.epoch").to_string(),
                    seq: v["seq"].as_u64().expect("joined.seq"),
                });
            }
            // Events, and the ephemeral membership / presence notices of the other publishers.
            Some("event" | "member_joined" | "member_left" | "presence") => {}
            _ => panic!("{who}: unexpected frame while joining: {v}"),
        }
    }
    let ws = tx.reunite(rx).expect("same socket");
    (ws, joined.map(|j| j.expect("joined")))
}

/// Publishes `m-<n>`, `m-<n+1>`, … with up to `WINDOW` unacked until the socket fails (the
/// server was killed). Records every send and ack in `book`; returns the next unused n.
async fn publish_until_dead(ws: Ws, ci: usize, mut n: u64, book: Arc<Mutex<Book>>) -> u64 {
    let who = client_name(ci);
    let (mut tx, mut rx) = ws.split();
    let mut inflight: HashSet<u64> = HashSet::new();
    loop {
        while inflight.len() < WINDOW {
            book.lock().unwrap().sent.insert((ci, n));
            inflight.insert(n);
            let frame = publish_frame(ci, n);
            n += 1;
            if tx.feed(frame).await.is_err() {
                return n;
            }
        }
        if tx.flush().await.is_err() {
            return n;
        }
        let text = match rx.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return n,
            Some(Ok(_)) => continue,
        };
        let v: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                book.lock()
                    .unwrap()
                    .problems
                    .push(format!("{who}: frame is not JSON ({e}): {text}"));
                continue;
            }
        };
        match v["type"].as_str() {
            Some("ack") => {
                let id = v["id"].as_str().unwrap_or("");
                let Some(m) = id.strip_prefix("m-").and_then(|s| s.parse::<u64>().ok()) else {
                    book.lock()
                        .unwrap()
                        .problems
                        .push(format!("{who}: ack for an id never sent: {v}"));
                    continue;
                };
                let mut b = book.lock().unwrap();
                if !inflight.remove(&m) {
                    b.problems
                        .push(format!("{who}: ack for an id not in flight: {v}"));
                    continue;
                }
                if v["room"] != ROOMS[room_of(m)] {
                    b.problems.push(format!(
                        "{who}: ack names the wrong room (m-{m} went to {}): {v}",
                        ROOMS[room_of(m)]
                    ));
                }
                match v["seq"].as_u64() {
                    Some(seq) if seq >= 1 => {
                        b.acked.insert((ci, m), seq);
                    }
                    _ => b
                        .problems
                        .push(format!("{who}: ack without a valid seq: {v}")),
                }
            }
            // Events, and the ephemeral membership / presence notices of the other publishers.
            Some("event" | "member_joined" | "member_left" | "presence") => {}
            _ => book
                .lock()
                .unwrap()
                .problems
                .push(format!("{who}: unexpected frame: {v}")),
        }
    }
}

/// On a new connection as client `ci`, publishes `ns` again (same ids, same data) and returns
/// n → acked seq. Also checks the epochs in `joined`.
async fn resend(addr: &str, ci: usize, ns: &[u64], epochs: &[String; 2]) -> HashMap<u64, u64> {
    let who = client_name(ci);
    let (ws, joined) = connect(addr, ci).await;
    for r in 0..2 {
        assert_eq!(
            joined[r].epoch, epochs[r],
            "{who}: epoch of {} changed across the restart",
            ROOMS[r]
        );
    }
    let (mut tx, mut rx) = ws.split();
    for &n in ns {
        tx.feed(publish_frame(ci, n)).await.expect("send retry");
    }
    tx.flush().await.expect("send retries");
    let wanted: HashSet<u64> = ns.iter().copied().collect();
    let mut acks = HashMap::new();
    while acks.len() < wanted.len() {
        let v = next_json(
            &mut rx,
            &format!("{who}: acks of {} retried publishes", ns.len()),
        )
        .await;
        match v["type"].as_str() {
            Some("ack") => {
                let m = v["id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("m-"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|m| wanted.contains(m))
                    .unwrap_or_else(|| panic!("{who}: ack for an id not retried: {v}"));
                assert_eq!(
                    v["room"],
                    ROOMS[room_of(m)],
                    "{who}: retry ack names the wrong room: {v}"
                );
                let seq = v["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{who}: ack without seq: {v}"));
                assert!(
                    acks.insert(m, seq).is_none(),
                    "{who}: m-{m} acked twice on one connection: {v}"
                );
            }
            // Events, and the ephemeral membership / presence notices of the other publishers.
            Some("event" | "member_joined" | "member_left" | "presence") => {}
            _ => panic!("{who}: retry got an unexpected frame: {v}"),
        }
    }
    acks
}

/// A room's whole history as read back over HTTP.
struct RoomLog {
    epoch: String,
    head: u64,
    /// (client, n) → seq of every event in the room.
    ops: HashMap<(usize, u64), u64>,
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    let resp = within(format!("GET {url}"), http.get(&url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = within(format!("body of GET {url}"), resp.text())
        .await
        .expect("read body");
    assert!(status.is_success(), "GET {url}: {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Reads the room's info and every event (paginated), checking on the way that seqs run 1..head
/// with no gap, that every event is one some client sent, with its data, in the right room, and
/// that no (client, id) appears twice.
async fn read_room(
    http: &reqwest::Client,
    addr: &str,
    r: usize,
    sent: &HashSet<(usize, u64)>,
    ctx: &str,
) -> RoomLog {
    let room = ROOMS[r];
    let info = get_json(http, format!("http://{addr}/v1/rooms/{room}")).await;
    assert_eq!(info["kind"], "stream", "{ctx}: {info}");
    let epoch = info["epoch"].as_str().expect("room epoch").to_string();
    let head = info["seq"].as_u64().expect("room seq");
    let mut ops = HashMap::new();
    let mut after = 0u64;
    loop {
        let page = get_json(
            http,
            format!("http://{addr}/v1/rooms/{room}/events?after={after}&limit=1000"),
        )
        .await;
        assert_eq!(
            page["epoch"].as_str(),
            Some(epoch.as_str()),
            "{ctx}: {room}: page epoch differs from the room's"
        );
        let events = page["events"].as_array().expect("events array");
        if events.is_empty() {
            break;
        }
        for e in events {
            let seq = e["seq"].as_u64().expect("event seq");
            assert_eq!(
                seq,
                after + 1,
                "{ctx}: {room}: gap or disorder in the log: seq {seq} follows {after}"
            );
            after = seq;
            let from = e["from"].as_str().unwrap_or("");
            let id = e["id"].as_str().unwrap_or("");
            let key = from
                .strip_prefix('c')
                .and_then(|c| c.parse::<usize>().ok())
                .zip(id.strip_prefix("m-").and_then(|m| m.parse::<u64>().ok()));
            let Some(key @ (ci, n)) = key.filter(|k| sent.contains(k)) else {
                panic!("{ctx}: {room}: event at seq {seq} was never sent by any client: {e}");
            };
            assert_eq!(
                room_of(n),
                r,
                "{ctx}: {room}: {from}/{id} was sent to the other room: {e}"
            );
            assert_eq!(
                e["data"],
                data_of(ci, n),
                "{ctx}: {room}: {from}/{id} has other data than was sent"
            );
            if let Some(first) = ops.insert(key, seq) {
                panic!("{ctx}: {room}: {from}/{id} appears twice, at seq {first} and {seq}");
            }
        }
    }
    assert_eq!(
        after, head,
        "{ctx}: {room}: the log ends at seq {after} but the room's head is {head}"
    );
    RoomLog { epoch, head, ops }
}

/// Step 4: the durable history agrees with every ack, has stable epochs, no gaps, no duplicates,
/// and each client's events in a room are in the order it sent them.
async fn verify(
    http: &reqwest::Client,
    addr: &str,
    book: &Book,
    epochs: &[String; 2],
    ctx: &str,
) -> [RoomLog; 2] {
    let a = read_room(http, addr, 0, &book.sent, ctx).await;
    let b = read_room(http, addr, 1, &book.sent, ctx).await;
    let logs = [a, b];
    for (r, log) in logs.iter().enumerate() {
        assert_eq!(
            log.epoch, epochs[r],
            "{ctx}: epoch of {} changed across the crash",
            ROOMS[r]
        );
        // Publishes from one connection to one room commit in the order they were sent; with
        // retries sent in id order, each client's ids rise with seq.
        let mut by_seq: Vec<(u64, usize, u64)> = log
            .ops
            .iter()
            .map(|(&(ci, n), &seq)| (seq, ci, n))
            .collect();
        by_seq.sort_unstable();
        let mut last: HashMap<usize, u64> = HashMap::new();
        for (seq, ci, n) in by_seq {
            if let Some(prev) = last.insert(ci, n) {
                assert!(
                    n > prev,
                    "{ctx}: {}: c{ci}/m-{n} (seq {seq}) committed after c{ci}/m-{prev}",
                    ROOMS[r]
                );
            }
        }
    }
    let mut lost = Vec::new();
    for (&(ci, n), &seq) in &book.acked {
        match logs[room_of(n)].ops.get(&(ci, n)) {
            Some(&stored) if stored == seq => {}
            Some(&stored) => {
                panic!("{ctx}: c{ci}/m-{n} was acked with seq {seq} but is stored at seq {stored}")
            }
            None => lost.push(format!("c{ci}/m-{n} (acked seq {seq})")),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{ctx}: {} acked publishes are missing after the crash, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    logs
}

async fn heads(http: &reqwest::Client, addr: &str) -> [u64; 2] {
    let mut out = [0; 2];
    for (r, room) in ROOMS.iter().enumerate() {
        out[r] = get_json(http, format!("http://{addr}/v1/rooms/{room}")).await["seq"]
            .as_u64()
            .expect("room seq");
    }
    out
}

fn by_client(keys: impl IntoIterator<Item = (usize, u64)>) -> BTreeMap<usize, Vec<u64>> {
    let mut out: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (ci, n) in keys {
        out.entry(ci).or_default().push(n);
    }
    for ns in out.values_mut() {
        ns.sort_unstable();
    }
    out
}

/// Step 5: retries after the restart. Returns (acked retried, unacked already committed,
/// unacked appended now) and leaves every retry's ack in `book`.
async fn retry_after_restart(
    http: &reqwest::Client,
    addr: &str,
    book: &mut Book,
    logs: &[RoomLog; 2],
    epochs: &[String; 2],
    rng: &mut StdRng,
    ctx: &str,
) -> (usize, usize, usize) {
    // (a) A sample of acked ids: the original seq comes back and nothing is appended.
    let mut acked: Vec<(usize, u64)> = book.acked.keys().copied().collect();
    acked.sort_unstable();
    acked.shuffle(rng);
    acked.truncate(RETRY_SAMPLE);
    let before = heads(http, addr).await;
    assert_eq!(
        before,
        [logs[0].head, logs[1].head],
        "{ctx}: heads moved with nobody publishing"
    );
    let groups = by_client(acked.iter().copied());
    let results =
        futures::future::join_all(groups.iter().map(|(&ci, ns)| resend(addr, ci, ns, epochs)))
            .await;
    for ((&ci, ns), acks) in groups.iter().zip(results) {
        for n in ns {
            let original = book.acked[&(ci, *n)];
            assert_eq!(
                acks[n], original,
                "{ctx}: retry of acked c{ci}/m-{n} got seq {} instead of its original {original}",
                acks[n]
            );
        }
    }
    let after = heads(http, addr).await;
    assert_eq!(
        after,
        before,
        "{ctx}: retrying {} acked publishes made the rooms grow",
        acked.len()
    );

    // (b) Every id sent but never acked: its stored seq if it committed before the kill, else
    // appended once now.
    let unacked: Vec<(usize, u64)> = book
        .sent
        .iter()
        .filter(|k| !book.acked.contains_key(k))
        .copied()
        .collect();
    let groups = by_client(unacked.iter().copied());
    let results =
        futures::future::join_all(groups.iter().map(|(&ci, ns)| resend(addr, ci, ns, epochs)))
            .await;
    let (mut committed, mut appended) = (0, [0u64; 2]);
    let mut new_seqs = HashSet::new();
    for ((&ci, ns), acks) in groups.iter().zip(results) {
        for &n in ns {
            let r = room_of(n);
            let seq = acks[&n];
            match logs[r].ops.get(&(ci, n)) {
                Some(&stored) => {
                    committed += 1;
                    assert_eq!(
                        seq, stored,
                        "{ctx}: unacked c{ci}/m-{n} is stored at seq {stored} but its retry was acked with seq {seq}"
                    );
                }
                None => {
                    appended[r] += 1;
                    assert!(
                        seq > logs[r].head,
                        "{ctx}: c{ci}/m-{n} was not stored, yet its retry was acked with old seq {seq} (head {})",
                        logs[r].head
                    );
                    assert!(
                        new_seqs.insert((r, seq)),
                        "{ctx}: two retries were acked with the same seq {seq} in {}",
                        ROOMS[r]
                    );
                }
            }
            book.acked.insert((ci, n), seq);
        }
    }
    let after = heads(http, addr).await;
    for r in 0..2 {
        assert_eq!(
            after[r],
            logs[r].head + appended[r],
            "{ctx}: {}: {} unacked publishes were missing, but the head went from {} to {}",
            ROOMS[r],
            appended[r],
            logs[r].head,
            after[r]
        );
    }
    (acked.len(), committed, (appended[0] + appended[1]) as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_publishes_survive_kill_9_exactly_once() {
    let started = Instant::now();
    let seed: u64 = match std::env::var("CONCORD_CRASH_SEED") {
        Ok(s) => s.parse().expect("CONCORD_CRASH_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("crash test seed {seed} (replay: CONCORD_CRASH_SEED={seed})");
    let mut report = Report::new(seed, "CONCORD_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut delays = support::kill_delays(&mut rng, DELAY_MS, KILLS).into_iter();
    let full_round = rng.random_range(0..KILLS);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");

    let book = Arc::new(Mutex::new(Book::default()));
    let mut next_n = [1u64; CLIENTS];
    let mut epochs: Option<[String; 2]> = None;
    let mut total = (0usize, 0usize, 0usize);
    for round in 0..=KILLS {
        let sync = if round == full_round {
            "full"
        } else {
            "normal"
        };
        let log = report.log_path(&format!("server-{round}.log"));
        let mut server = Server::start(report.data_dir(), &["--sqlite-sync", sync], &log).await;
        let addr = server.addr.clone();
        let ctx = format!("seed {seed}, server start {round}");
        let mut expected_heads = None;
        if round > 0 {
            let epochs = epochs.as_ref().expect("epochs of round 0");
            let mut b = book.lock().unwrap().clone();
            let logs = verify(&http, &addr, &b, epochs, &format!("{ctx}, after the crash")).await;
            let counts =
                retry_after_restart(&http, &addr, &mut b, &logs, epochs, &mut rng, &ctx).await;
            let logs = verify(
                &http,
                &addr,
                &b,
                epochs,
                &format!("{ctx}, after the retries"),
            )
            .await;
            println!(
                "  restart {round}: heads {}+{}, retried {} acked ids (same seqs, no growth); {} unacked ids had committed, {} appended once",
                logs[0].head, logs[1].head, counts.0, counts.1, counts.2
            );
            total = (total.0 + counts.0, total.1 + counts.1, total.2 + counts.2);
            expected_heads = Some([logs[0].head, logs[1].head]);
            *book.lock().unwrap() = b;
        }
        if round == KILLS {
            break;
        }

        // Step 2: the publishers connect and join, then pipeline until the server dies.
        let (round_sent, round_acked) = {
            let b = book.lock().unwrap();
            (b.sent.len(), b.acked.len())
        };
        let conns = futures::future::join_all((0..CLIENTS).map(|ci| connect(&addr, ci))).await;
        for (ci, (_, joined)) in conns.iter().enumerate() {
            let e =
                epochs.get_or_insert_with(|| [joined[0].epoch.clone(), joined[1].epoch.clone()]);
            for r in 0..2 {
                assert_eq!(
                    joined[r].epoch, e[r],
                    "{ctx}: c{ci} joined {} at another epoch",
                    ROOMS[r]
                );
                if let Some(h) = expected_heads {
                    assert_eq!(
                        joined[r].seq, h[r],
                        "{ctx}: c{ci} joined {} at another head than stored",
                        ROOMS[r]
                    );
                }
            }
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(ci, (ws, _))| tokio::spawn(publish_until_dead(ws, ci, next_n[ci], book.clone())))
            .collect();
        // Step 3: the kill point.
        let delay = delays.next().expect("one delay per kill");
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        for (ci, t) in tasks.into_iter().enumerate() {
            next_n[ci] = within(format!("c{ci} noticing the kill"), t)
                .await
                .expect("publisher task");
        }
        let b = book.lock().unwrap();
        assert!(
            b.problems.is_empty(),
            "{ctx}: the publishers saw protocol violations: {:#?}",
            b.problems
        );
        println!(
            "round {round}: sqlite-sync {sync}, kill -9 after {delay} ms: {} publishes sent this round, {} acked, {} unacked at the kill",
            b.sent.len() - round_sent,
            b.acked.len() - round_acked,
            b.sent.len() - b.acked.len()
        );
        drop(b);
        drop(server);
    }
    let b = book.lock().unwrap();
    assert!(
        total.0 > 0 && b.acked.len() > 200,
        "the test did too little to mean anything: {} acked",
        b.acked.len()
    );
    assert!(
        total.1 + total.2 > 0,
        "no publish was ever in flight at a kill"
    );
    println!(
        "crash test passed in {:.1} s: {} publishes acked over {KILLS} kills; {} acked retries, {} unacked-but-committed, {} appended on retry",
        started.elapsed().as_secs_f64(),
        b.acked.len(),
        total.0,
        total.1,
        total.2
    );
}
