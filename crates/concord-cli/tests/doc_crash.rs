//! Crash test of a doc room in the `concord` binary: after kill -9 under load, the stored op
//! lists rebuild exactly the served state, every acked op list is stored once at its acked seq,
//! no `add` is lost or doubled, and retries are idempotent.
//!
//! One data dir lives through `KILLS` rounds. Round 0 creates `doc:crash` with
//! `{"counter":0,"list":[],"keys":{}}`. Each round, 4 raw WebSocket editors (`e0..e3`) join it and
//! pipeline op lists (up to `WINDOW` unacked each, `base` = the latest seq seen): every list
//! adds 1 to `counter`, and some also `set` the editor's own key and `ins` at the head of the
//! shared list. The server (`--sqlite-sync normal`, snapshots every few dozen lists) is
//! SIGKILLed after a seeded random delay and restarted on the same dir. Then, over HTTP
//! (`GET /v1/rooms/doc:crash` and its paginated `events`): seqs run 1..head with no gap, every
//! event is a list some editor sent (with its ops), no (client, id) appears twice, every ack
//! names the seq its list is stored at, the state equals `{}` with every stored op list applied
//! in order (`concord_core::doc::apply`) and its hash, a join serves that same state, and the
//! counter equals the number of stored editor lists (= acked + unacked-but-stored adds).
//! Retrying acked ids returns their original seqs and appends nothing; retrying unacked ids
//! returns their stored seq, or appends them once.
//!
//! `CONCORD_DOC_CRASH_SEED=<seed>` replays a seed's kill delays, snapshot intervals and retry
//! samples (the interleaving of the editors still depends on timing).

mod support;

use concord_core::doc::{self, Limits};
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

const ROOM: &str = "doc:crash";
/// Concurrent editors, client ids `e0..e3`.
const EDITORS: usize = 4;
/// Op lists each editor keeps unacked in flight.
const WINDOW: usize = 4;
/// Kill points (rounds that end with kill -9); one more start verifies the last crash.
const KILLS: usize = 3;
/// Acked ids retried after each restart.
const RETRY_SAMPLE: usize = 24;
/// Kill delays are drawn from this range (ms), one from each of `KILLS` equal slices.
const DELAY_MS: (u64, u64) = (150, 900);
fn editor_name(ci: usize) -> String {
    format!("e{ci}")
}

/// The ops of list `l-<n>` of editor `ci`: deterministic, so a retry sends the same list. Each
/// list adds exactly 1 to the counter; every op is valid against any state of the room.
fn ops_of(ci: usize, n: u64) -> Vec<Value> {
    let mut ops = vec![json!({"op": "add", "path": ["counter"], "value": 1})];
    if n % 3 != 1 {
        ops.push(json!({"op": "set", "path": ["keys", editor_name(ci)], "value": n}));
    }
    if n.is_multiple_of(2) {
        ops.push(json!({"op": "ins", "path": ["list", 0], "value": format!("e{ci}-{n}")}));
    }
    ops
}

fn op_frame(ci: usize, n: u64, base: u64) -> Message {
    Message::text(
        json!({"type": "op", "room": ROOM, "id": format!("l-{n}"), "base": base, "ops": ops_of(ci, n)})
            .to_string(),
    )
}

/// What the editors know, shared by their tasks.
#[derive(Default, Clone)]
struct Book {
    /// Every list written (or attempted) to a socket: (editor, n).
    sent: HashSet<(usize, u64)>,
    /// Every ack received: (editor, n) → seq.
    acked: HashMap<(usize, u64), u64>,
    /// Protocol violations seen by the editors.
    problems: Vec<String>,
}

/// Connects as `who`, says hello and joins the doc room; returns the socket and `joined`.
async fn connect(addr: &str, who: &str) -> (Ws, Value) {
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
    tx.send(Message::text(
        json!({"type": "join", "room": ROOM, "kind": "doc"}).to_string(),
    ))
    .await
    .expect("send join");
    let joined = loop {
        let v = next_json(&mut rx, "joined").await;
        match v["type"].as_str() {
            Some("joined") => break v,
            Some("member_joined" | "member_left" | "presence") => {}
            _ => panic!("{who}: unexpected frame while joining: {v}"),
        }
    };
    assert_eq!(joined["kind"], "doc", "{who}: {joined}");
    assert!(
        joined["seq"].is_u64(),
        "{who}: joined without seq: {joined}"
    );
    (tx.reunite(rx).expect("same socket"), joined)
}

/// Sends `l-<n>`, `l-<n+1>`, … with up to `WINDOW` unacked, each with `base` = the latest seq
/// seen, until the socket fails (the server was killed). Records every send and ack in
/// `book`; returns the next unused n.
async fn edit_until_dead(
    ws: Ws,
    ci: usize,
    mut n: u64,
    mut seen: u64,
    book: Arc<Mutex<Book>>,
) -> u64 {
    let who = editor_name(ci);
    let (mut tx, mut rx) = ws.split();
    let mut inflight: HashSet<u64> = HashSet::new();
    let problem = |p: String| book.lock().unwrap().problems.push(p);
    loop {
        while inflight.len() < WINDOW {
            book.lock().unwrap().sent.insert((ci, n));
            inflight.insert(n);
            let frame = op_frame(ci, n, seen);
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
                problem(format!("{who}: frame is not JSON ({e}): {text}"));
                continue;
            }
        };
        match v["type"].as_str() {
            Some("ack") => {
                let m = v["id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("l-"))
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(m) = m.filter(|m| inflight.remove(m)) else {
                    problem(format!("{who}: ack for an id not in flight: {v}"));
                    continue;
                };
                if v.get("dropped").is_some() {
                    problem(format!("{who}: ops of l-{m} were dropped: {v}"));
                }
                match v["seq"].as_u64() {
                    Some(seq) if seq >= 1 => {
                        seen = seen.max(seq);
                        book.lock().unwrap().acked.insert((ci, m), seq);
                    }
                    _ => problem(format!("{who}: ack without a valid seq: {v}")),
                }
            }
            Some("event") => match v["seq"].as_u64() {
                Some(seq) if seq == seen + 1 || seq <= seen => seen = seen.max(seq),
                _ => problem(format!("{who}: event out of order (seen {seen}): {v}")),
            },
            // The ephemeral membership / presence notices of the other editors.
            Some("member_joined" | "member_left" | "presence") => {}
            _ => problem(format!("{who}: unexpected frame: {v}")),
        }
    }
}

/// On a new connection as editor `ci`, sends the lists `ns` again (same ids, same ops, base =
/// the seq it joined at) and returns n → acked seq, and the `joined` frame.
async fn resend(addr: &str, ci: usize, ns: &[u64]) -> (HashMap<u64, u64>, Value) {
    let who = editor_name(ci);
    let (ws, joined) = connect(addr, &who).await;
    let base = joined["seq"].as_u64().expect("joined.seq");
    let (mut tx, mut rx) = ws.split();
    for &n in ns {
        tx.feed(op_frame(ci, n, base)).await.expect("send retry");
    }
    tx.flush().await.expect("send retries");
    let wanted: HashSet<u64> = ns.iter().copied().collect();
    let mut acks = HashMap::new();
    while acks.len() < wanted.len() {
        let v = next_json(
            &mut rx,
            &format!("{who}: acks of {} retried lists", ns.len()),
        )
        .await;
        match v["type"].as_str() {
            Some("ack") => {
                let m = v["id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("l-"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|m| wanted.contains(m))
                    .unwrap_or_else(|| panic!("{who}: ack for an id not retried: {v}"));
                let seq = v["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{who}: ack without seq: {v}"));
                assert!(
                    acks.insert(m, seq).is_none(),
                    "{who}: l-{m} acked twice on one connection: {v}"
                );
            }
            Some("event" | "member_joined" | "member_left" | "presence") => {}
            _ => panic!("{who}: retry got an unexpected frame: {v}"),
        }
    }
    (acks, joined)
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

/// The room as read back over HTTP, checked.
struct DocLog {
    head: u64,
    /// The state the server serves (and that replaying the stored ops gives).
    state: Value,
    /// (editor, n) → seq of every editor list in the room.
    lists: HashMap<(usize, u64), u64>,
}

/// Reads the room and every event (paginated) and checks them: seqs run 1..head with no gap;
/// seq 1 is the setup list, every later event a list some editor sent, with its ops (none
/// dropped), once; replaying all stored ops from `{}` gives the served state and hash; the
/// counter is the number of editor lists; every ack in `book` names its list's stored seq.
async fn verify(http: &reqwest::Client, addr: &str, book: &Book, ctx: &str) -> DocLog {
    let info = get_json(http, format!("http://{addr}/v1/rooms/{ROOM}")).await;
    assert_eq!(info["kind"], "doc", "{ctx}: {info}");
    let head = info["seq"].as_u64().expect("room seq");
    let mut state = json!({});
    let mut lists = HashMap::new();
    let mut adds = 0i64;
    let mut after = 0u64;
    loop {
        let page = get_json(
            http,
            format!("http://{addr}/v1/rooms/{ROOM}/events?after={after}&limit=1000"),
        )
        .await;
        let events = page["events"].as_array().expect("events array");
        if events.is_empty() {
            break;
        }
        for e in events {
            let seq = e["seq"].as_u64().expect("event seq");
            assert_eq!(
                seq,
                after + 1,
                "{ctx}: gap or disorder in the log: seq {seq} follows {after}"
            );
            after = seq;
            let ops = doc::decode_ops(&e["ops"], &Limits::default())
                .unwrap_or_else(|err| panic!("{ctx}: ops at seq {seq} do not decode: {err}: {e}"));
            state = doc::apply(&state, &ops)
                .unwrap_or_else(|err| panic!("{ctx}: ops at seq {seq} do not apply: {err}: {e}"));
            let from = e["from"].as_str().unwrap_or("");
            let id = e["id"].as_str().unwrap_or("");
            if seq == 1 {
                assert_eq!(
                    (from, id),
                    ("setup", "init"),
                    "{ctx}: seq 1 is not the setup list: {e}"
                );
                continue;
            }
            let key = from
                .strip_prefix('e')
                .and_then(|c| c.parse::<usize>().ok())
                .zip(id.strip_prefix("l-").and_then(|m| m.parse::<u64>().ok()));
            let Some(key @ (ci, n)) = key.filter(|k| book.sent.contains(k)) else {
                panic!("{ctx}: event at seq {seq} was never sent by any editor: {e}");
            };
            // Rebasing moves an `ins` past concurrent ones; nothing else changes or drops.
            let sent = ops_of(ci, n);
            let same = e["ops"].as_array().is_some_and(|got| {
                got.len() == sent.len()
                    && got.iter().zip(&sent).all(|(g, s)| {
                        g["op"] == s["op"]
                            && g["value"] == s["value"]
                            && g["path"][0] == s["path"][0]
                    })
            });
            assert!(
                same,
                "{ctx}: {from}/{id} committed other ops than were sent: {e}"
            );
            adds += 1;
            if let Some(first) = lists.insert(key, seq) {
                panic!("{ctx}: {from}/{id} appears twice, at seq {first} and {seq}");
            }
        }
    }
    assert_eq!(
        after, head,
        "{ctx}: the log ends at seq {after} but the room's head is {head}"
    );
    assert_eq!(
        info["state"], state,
        "{ctx}: the served state differs from the stored ops replayed from {{}}"
    );
    assert_eq!(
        info["hash"].as_str(),
        Some(doc::state_hash(&state).as_str()),
        "{ctx}: the served hash is not the hash of the state"
    );
    let mut lost = Vec::new();
    for (&(ci, n), &seq) in &book.acked {
        match lists.get(&(ci, n)) {
            Some(&stored) if stored == seq => {}
            Some(&stored) => {
                panic!("{ctx}: e{ci}/l-{n} was acked with seq {seq} but is stored at seq {stored}")
            }
            None => lost.push(format!("e{ci}/l-{n} (acked seq {seq})")),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{ctx}: {} acked op lists are missing after the crash, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let acked = book.acked.len() as i64;
    let unacked_stored = lists.keys().filter(|k| !book.acked.contains_key(k)).count() as i64;
    assert_eq!(
        state["counter"].as_i64(),
        Some(acked + unacked_stored),
        "{ctx}: the counter is not acked ({acked}) + unacked-but-stored ({unacked_stored}) adds"
    );
    assert_eq!(adds, acked + unacked_stored);
    DocLog { head, state, lists }
}

async fn head(http: &reqwest::Client, addr: &str) -> u64 {
    get_json(http, format!("http://{addr}/v1/rooms/{ROOM}")).await["seq"]
        .as_u64()
        .expect("room seq")
}

fn by_editor(keys: impl IntoIterator<Item = (usize, u64)>) -> BTreeMap<usize, Vec<u64>> {
    let mut out: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (ci, n) in keys {
        out.entry(ci).or_default().push(n);
    }
    for ns in out.values_mut() {
        ns.sort_unstable();
    }
    out
}

/// Retries after the restart. Returns (acked retried, unacked already stored, unacked appended
/// now) and leaves every retry's ack in `book`.
async fn retry_after_restart(
    http: &reqwest::Client,
    addr: &str,
    book: &mut Book,
    log: &DocLog,
    rng: &mut StdRng,
    ctx: &str,
) -> (usize, usize, usize) {
    // (a) A sample of acked ids: the original seq comes back and nothing is appended; the
    // reloaded room serves, on join, the state the stored ops give.
    let mut acked: Vec<(usize, u64)> = book.acked.keys().copied().collect();
    acked.sort_unstable();
    acked.shuffle(rng);
    acked.truncate(RETRY_SAMPLE);
    let groups = by_editor(acked.iter().copied());
    let results =
        futures::future::join_all(groups.iter().map(|(&ci, ns)| resend(addr, ci, ns))).await;
    for ((&ci, ns), (acks, joined)) in groups.iter().zip(results) {
        assert_eq!(
            joined["seq"].as_u64(),
            Some(log.head),
            "{ctx}: e{ci} joined at another head than stored: {joined}"
        );
        assert_eq!(
            joined["state"], log.state,
            "{ctx}: the reloaded room serves another state than the stored ops give"
        );
        for n in ns {
            let original = book.acked[&(ci, *n)];
            assert_eq!(
                acks[n], original,
                "{ctx}: retry of acked e{ci}/l-{n} got seq {} instead of its original {original}",
                acks[n]
            );
        }
    }
    assert_eq!(
        head(http, addr).await,
        log.head,
        "{ctx}: retrying {} acked op lists made the room grow",
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
    let groups = by_editor(unacked.iter().copied());
    let results =
        futures::future::join_all(groups.iter().map(|(&ci, ns)| resend(addr, ci, ns))).await;
    let (mut stored, mut appended) = (0, 0u64);
    let mut new_seqs = HashSet::new();
    for ((&ci, ns), (acks, _)) in groups.iter().zip(results) {
        for &n in ns {
            let seq = acks[&n];
            match log.lists.get(&(ci, n)) {
                Some(&at) => {
                    stored += 1;
                    assert_eq!(
                        seq, at,
                        "{ctx}: unacked e{ci}/l-{n} is stored at seq {at} but its retry was acked with seq {seq}"
                    );
                }
                None => {
                    appended += 1;
                    assert!(
                        seq > log.head && new_seqs.insert(seq),
                        "{ctx}: e{ci}/l-{n} was not stored, yet its retry was acked with seq {seq} (head {})",
                        log.head
                    );
                }
            }
            book.acked.insert((ci, n), seq);
        }
    }
    assert_eq!(
        head(http, addr).await,
        log.head + appended,
        "{ctx}: {appended} unacked op lists were missing, but the head moved otherwise"
    );
    (acked.len(), stored, appended as usize)
}

/// Round 0: creates the room with the shape every editor's ops rely on (seq 1).
async fn setup(addr: &str) {
    let (ws, joined) = connect(addr, "setup").await;
    assert_eq!(
        joined["seq"], 0,
        "a fresh data dir has an empty room: {joined}"
    );
    let (mut tx, mut rx) = ws.split();
    let ops = json!([
        {"op": "set", "path": ["counter"], "value": 0},
        {"op": "set", "path": ["list"], "value": []},
        {"op": "set", "path": ["keys"], "value": {}}
    ]);
    tx.send(Message::text(
        json!({"type": "op", "room": ROOM, "id": "init", "base": 0, "ops": ops}).to_string(),
    ))
    .await
    .expect("send setup");
    loop {
        let v = next_json(&mut rx, "ack of the setup list").await;
        match v["type"].as_str() {
            Some("ack") => {
                assert_eq!(v["seq"], 1, "setup: {v}");
                break;
            }
            Some("event" | "member_joined" | "member_left" | "presence") => {}
            _ => panic!("setup: unexpected frame: {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doc_room_survives_kill_9() {
    let started = Instant::now();
    let seed: u64 = match std::env::var("CONCORD_DOC_CRASH_SEED") {
        Ok(s) => s.parse().expect("CONCORD_DOC_CRASH_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("doc crash test seed {seed} (replay: CONCORD_DOC_CRASH_SEED={seed})");
    let mut report = Report::new(seed, "CONCORD_DOC_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut delays = support::kill_delays(&mut rng, DELAY_MS, KILLS).into_iter();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");

    let book = Arc::new(Mutex::new(Book::default()));
    let mut next_n = [1u64; EDITORS];
    let mut total = (0usize, 0usize, 0usize);
    for round in 0..=KILLS {
        let snapshot_every = rng.random_range(10..60);
        let log = report.log_path(&format!("server-{round}.log"));
        let mut server = Server::start(
            report.data_dir(),
            &[
                "--sqlite-sync",
                "normal",
                "--doc-snapshot-every",
                &snapshot_every.to_string(),
            ],
            &log,
        )
        .await;
        let addr = server.addr.clone();
        let ctx = format!("seed {seed}, server start {round}");
        if round == 0 {
            setup(&addr).await;
        } else {
            let mut b = book.lock().unwrap().clone();
            let log = verify(&http, &addr, &b, &format!("{ctx}, after the crash")).await;
            let counts = retry_after_restart(&http, &addr, &mut b, &log, &mut rng, &ctx).await;
            let log = verify(&http, &addr, &b, &format!("{ctx}, after the retries")).await;
            println!(
                "  restart {round}: head {}, counter {}; retried {} acked ids (same seqs, no growth); {} unacked ids had committed, {} appended once",
                log.head, log.state["counter"], counts.0, counts.1, counts.2
            );
            total = (total.0 + counts.0, total.1 + counts.1, total.2 + counts.2);
            *book.lock().unwrap() = b;
        }
        if round == KILLS {
            break;
        }

        // The editors connect and join, then pipeline op lists until the server dies.
        let (round_sent, round_acked) = {
            let b = book.lock().unwrap();
            (b.sent.len(), b.acked.len())
        };
        let conns = futures::future::join_all((0..EDITORS).map(|ci| {
            let addr = addr.clone();
            async move { connect(&addr, &editor_name(ci)).await }
        }))
        .await;
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(ci, (ws, joined))| {
                let seen = joined["seq"].as_u64().expect("joined.seq");
                tokio::spawn(edit_until_dead(ws, ci, next_n[ci], seen, book.clone()))
            })
            .collect();
        let delay = delays.next().expect("one delay per kill");
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        for (ci, t) in tasks.into_iter().enumerate() {
            next_n[ci] = within(format!("e{ci} noticing the kill"), t)
                .await
                .expect("editor task");
        }
        let b = book.lock().unwrap();
        assert!(
            b.problems.is_empty(),
            "{ctx}: the editors saw protocol violations: {:#?}",
            b.problems
        );
        println!(
            "round {round}: snapshots every {snapshot_every}, kill -9 after {delay} ms: {} op lists sent this round, {} acked, {} unacked at the kill",
            b.sent.len() - round_sent,
            b.acked.len() - round_acked,
            b.sent.len() - b.acked.len()
        );
        drop(b);
        drop(server);
    }
    let b = book.lock().unwrap();
    assert!(
        total.0 > 0 && b.acked.len() > 100,
        "the test did too little to mean anything: {} acked",
        b.acked.len()
    );
    assert!(
        total.1 + total.2 > 0,
        "no op list was ever in flight at a kill"
    );
    println!(
        "doc crash test passed in {:.1} s: {} op lists acked over {KILLS} kills; {} acked retries, {} unacked-but-committed, {} appended on retry",
        started.elapsed().as_secs_f64(),
        b.acked.len(),
        total.0,
        total.1,
        total.2
    );
}
