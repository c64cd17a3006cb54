//! Crash test of the distributed mode: two `concord serve --redis` gateways (real processes) on
//! one Redis; publishers on both write one stream room; one gateway is SIGKILLed mid-load. Its
//! publishers reconnect to the other gateway, rejoin and resend every publish they have no ack
//! for, with the same ids. An observer on the surviving gateway must see every publish exactly
//! once, in one gap-free order, at the seq its ack named (the first ack, or the one the resend
//! got: they must agree).
//!
//! `CONCORD_GW_CRASH_SEED=<seed>` replays the kill point (the share of publishes acked).

mod support;

use concord_dist::testing::redis::TestPrefix;
use futures::stream::StreamExt;
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{next_json, within, Report, Server, Ws};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "gw-crash";
/// Publishers per gateway.
const PER_GATEWAY: usize = 3;
/// Publishes each publisher must get acked.
const EACH: u64 = 150;
/// Publishes each publisher keeps in flight.
const WINDOW: usize = 16;

async fn gateway(report: &mut Report, prefix: &str, node: &str) -> Server {
    gateway_with(report, prefix, node, &[]).await
}

async fn gateway_with(report: &mut Report, prefix: &str, node: &str, extra: &[&str]) -> Server {
    let log = report.log_path(node);
    let dir = report.data_dir().join(node);
    std::fs::create_dir_all(&dir).expect("a data dir");
    let args = [
        "--redis",
        "redis://127.0.0.1:6379",
        "--redis-prefix",
        prefix,
        "--node-id",
        node,
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    Server::start(&dir, &args, &log).await
}

async fn connect(addr: &str, client: &str) -> Option<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .ok()?;
    ws.send(Message::text(
        json!({"type":"hello","client_id":client}).to_string(),
    ))
    .await
    .ok()?;
    ws.send(Message::text(
        json!({"type":"join","room":ROOM,"kind":"stream"}).to_string(),
    ))
    .await
    .ok()?;
    Some(ws)
}

/// Acks a publisher got: id → seq (the first one; a later ack of the same id must agree).
type Acks = Arc<Mutex<BTreeMap<String, u64>>>;

/// One publisher: keeps `WINDOW` publishes in flight on `addrs[0]`; when the connection dies it
/// moves to the next address and resends everything unacked, until `EACH` are acked. Returns
/// how many publishes it sent again.
async fn publisher(client: String, addrs: Vec<String>, acks: Acks) -> usize {
    let mut resent = 0;
    let mut at = 0;
    let mut next = 0u64;
    let mut unacked: BTreeMap<u64, ()> = BTreeMap::new();
    'connections: loop {
        let addr = &addrs[at.min(addrs.len() - 1)];
        let Some(ws) = connect(addr, &client).await else {
            at += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        let send = |n: u64| {
            Message::text(
                json!({"type":"publish","room":ROOM,"id":format!("{client}-{n}"),"data":{"n":n}})
                    .to_string(),
            )
        };
        // Everything sent before and not acked goes again, with its id.
        for n in unacked.keys().copied().collect::<Vec<_>>() {
            resent += 1;
            if tx.send(send(n)).await.is_err() {
                at += 1;
                continue 'connections;
            }
        }
        loop {
            while unacked.len() < WINDOW && next < EACH {
                if tx.send(send(next)).await.is_err() {
                    at += 1;
                    continue 'connections;
                }
                unacked.insert(next, ());
                next += 1;
            }
            if unacked.is_empty() {
                return resent;
            }
            let msg = match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => {
                    at += 1;
                    continue 'connections;
                }
                Err(_) => panic!("{client}: no message for 30 s on {addr}"),
            };
            let v: Value = serde_json::from_str(&msg).expect("JSON");
            match v["type"].as_str() {
                Some("ack") => {
                    let id = v["id"].as_str().expect("an ack id").to_string();
                    let seq = v["seq"].as_u64().expect("an ack seq");
                    let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
                    unacked.remove(&n);
                    let mut all = acks.lock().unwrap();
                    let first = *all.entry(id.clone()).or_insert(seq);
                    assert_eq!(first, seq, "{id} acked at {first} and again at {seq}");
                }
                Some("error") => panic!("{client}: {v}"),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_nothing_acked_and_doubles_nothing() {
    let seed = std::env::var("CONCORD_GW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut report = Report::new(seed, "CONCORD_GW_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let prefix = TestPrefix::new("gw-crash");
    let mut doomed = gateway(&mut report, prefix.prefix(), "gw-a").await;
    let survivor = gateway(&mut report, prefix.prefix(), "gw-b").await;

    // The observer, on the gateway that survives.
    let (ows, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", survivor.addr))
        .await
        .expect("observer connects");
    let (mut otx, mut orx) = ows.split();
    otx.send(Message::text(
        json!({"type":"hello","client_id":"observer"}).to_string(),
    ))
    .await
    .unwrap();
    otx.send(Message::text(
        json!({"type":"join","room":ROOM,"kind":"stream"}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let m = next_json(&mut orx, "the observer's joined").await;
        if m["type"] == "joined" {
            break;
        }
    }

    let acks: Acks = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..2 * PER_GATEWAY {
        let addrs = if i < PER_GATEWAY {
            vec![doomed.addr.clone(), survivor.addr.clone()]
        } else {
            vec![survivor.addr.clone()]
        };
        tasks.push(tokio::spawn(publisher(
            format!("p{i}"),
            addrs,
            acks.clone(),
        )));
    }
    // Kill when a seeded share of the publishes is acked: mid-load, whatever the machine's speed.
    let total = (2 * PER_GATEWAY) as u64 * EACH;
    let kill_at = rng.random_range(total / 5..total / 2) as usize;
    within("the load to reach the kill point", async {
        while acks.lock().unwrap().len() < kill_at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    doomed.kill9();
    let acked_before = acks.lock().unwrap().len();
    assert!(
        (acked_before as u64) < total,
        "the gateway was killed after the load ended: the test proved nothing"
    );
    let mut resent = 0;
    for t in tasks {
        resent += within("the publishers finish", t)
            .await
            .expect("a publisher");
    }
    assert!(
        resent > 0,
        "no publish was in flight at the kill: the test proved nothing"
    );
    let acks = acks.lock().unwrap().clone();
    assert_eq!(acks.len() as u64, total, "every publish acked");

    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut last = 0;
    while last < total {
        let m = next_json(&mut orx, "the observer's events").await;
        if m["type"] != "event" {
            continue;
        }
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "the observer saw {seq} after {last}");
        last = seq;
        let id = m["id"].as_str().unwrap().to_string();
        assert!(
            seen.insert(id.clone(), seq).is_none(),
            "{id} was written twice (again at {seq})"
        );
        assert_eq!(
            acks.get(&id),
            Some(&seq),
            "{id} is at {seq}, its ack said otherwise"
        );
    }
    eprintln!(
        "seed {seed}: gateway killed with {acked_before} of {total} publishes acked, {resent} \
         resent; each once"
    );
    drop(report);
}

/// Connects, says hello and joins `room`; returns the socket after `joined`.
async fn member(addr: &str, client: &str, room: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    for m in [
        json!({"type":"hello","client_id":client}),
        json!({"type":"join","room":room,"kind":"stream"}),
    ] {
        ws.send(Message::text(m.to_string())).await.unwrap();
    }
    ws
}

/// The next membership or presence notice, skipping everything else.
async fn notice(rx: &mut futures::stream::SplitStream<Ws>) -> Value {
    loop {
        let m = next_json(rx, "a membership or presence notice").await;
        if matches!(
            m["type"].as_str(),
            Some("member_joined" | "member_left" | "presence")
        ) {
            return m;
        }
    }
}

/// A gateway SIGKILLed with a member in a room: once its heartbeat lapses, the member is gone
/// for the other gateways' members — presence `null` and `member_left`, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_members_leave_everywhere_once() {
    let mut report = Report::new(0, "CONCORD_GW_CRASH_SEED");
    let prefix = TestPrefix::new("gw-roster");
    let lease = ["--gateway-lease", "1s"];
    let mut doomed = gateway_with(&mut report, prefix.prefix(), "gw-a", &lease).await;
    let survivor = gateway_with(&mut report, prefix.prefix(), "gw-b", &lease).await;
    let room = "roster";
    let (_atx, mut arx) = member(&survivor.addr, "alice", room).await.split();
    loop {
        if next_json(&mut arx, "alice's joined").await["type"] == "joined" {
            break;
        }
    }
    let (mut dtx, mut drx) = member(&doomed.addr, "dave", room).await.split();
    loop {
        if next_json(&mut drx, "dave's joined").await["type"] == "joined" {
            break;
        }
    }
    dtx.send(Message::text(
        json!({"type":"presence","room":room,"data":{"at":1}}).to_string(),
    ))
    .await
    .unwrap();
    let m = notice(&mut arx).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_joined"), Some("dave"))
    );
    let m = notice(&mut arx).await;
    assert_eq!(
        (m["type"].as_str(), &m["data"]),
        (Some("presence"), &json!({"at":1}))
    );
    doomed.kill9();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = notice(&mut arx).await;
        seen.push((m["type"].as_str().unwrap().to_string(), m["data"].clone()));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("member_left".to_string(), Value::Null),
            ("presence".to_string(), Value::Null)
        ],
        "dave leaves once, his presence cleared once"
    );
    // Nothing more about dave follows.
    let quiet = tokio::time::timeout(Duration::from_secs(3), notice(&mut arx)).await;
    assert!(quiet.is_err(), "a second notice: {:?}", quiet.ok());
    drop(report);
}
