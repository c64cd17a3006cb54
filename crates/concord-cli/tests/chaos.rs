//! Chaos test of the distributed mode with real processes: 3 `concord serve` gateways and 2
//! `concord worker`s over a private Redis (`appendfsync always`, gateways at `--ack-level
//! redis`) and a fresh PostgreSQL database. Clients (the Rust client, each given every gateway
//! as a fallback URL) publish into shared stream rooms while a seeded schedule SIGKILLs and
//! restarts gateways, workers and Redis, and SIGSTOPs a worker past its lease. Some clients
//! leave for good along the way.
//!
//! A history checker then reads every client's log, every ack, PostgreSQL and Redis:
//! - each acked publish has one seq, and each (room, seq) one publish (lost 0, duplicates 0);
//! - the seqs of a room are exactly 1..=head, every one of them acked (gaps 0);
//! - every client saw one gap-free order from its first event on, equal to everyone else's and
//!   to the acks, with no reset (nothing acked was lost, so no epoch changed);
//! - hlcs strictly increase with the seq in every room;
//! - PostgreSQL holds every event exactly once at its seq, equal to what the clients saw, the
//!   watermark reached the head, the work streams' pending lists are drained, no dead letter;
//! - a member who left (some through a gateway that was killed) is not listed by any gateway
//!   a lease later: no ghost members.
//!
//! Clients publish (paced, up to 8 in flight) for as long as the fault schedule runs, then a
//! fixed number more each. `CONCORD_CHAOS_SEED=<seed>` replays a schedule; `CONCORD_HEAVY=1`
//! runs the full size (200 clients, 250 publishes each after the faults, 8 faults).

mod support;

use concord_client::{Client, ClientConfig, JoinOptions, RoomUpdate};
use concord_dist::pg::PgArchive;
use concord_dist::testing::redis::Persistence;
use concord_dist::worker::{all_partitions, Keys};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::dist::{Cluster, LEASE_DURATION, PARTITIONS};
use support::{next_json, Report};
use tokio_tungstenite::tungstenite::Message;

const GATEWAYS: usize = 3;
const WORKERS: usize = 2;
const ROOMS: usize = 6;
/// How long the whole load may take, faults included.
const LOAD_DEADLINE: Duration = Duration::from_secs(240);

/// Clients, publishes each after the faults, faults.
fn sizes() -> (usize, usize, usize) {
    if std::env::var_os("CONCORD_HEAVY").is_some() {
        (200, 250, 8)
    } else {
        (45, 20, 4)
    }
}

fn room_name(r: usize) -> String {
    format!("chaos:{r}")
}

/// The rooms client `c` joins and publishes into.
fn rooms_of(c: usize) -> [usize; 2] {
    [c % ROOMS, (c + 1) % ROOMS]
}

/// Client `c` leaves for good after its publishes (its gateway may be killed meanwhile).
fn leaves(c: usize) -> bool {
    c % 9 == 4
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillGateway(usize),
    KillWorker(usize),
    StopWorker(usize),
    KillRedis,
}

/// `n` faults, each kind once in every four (in a random order), each after a random delay.
fn schedule(rng: &mut StdRng, n: usize) -> Vec<(u64, Fault)> {
    let mut kinds: Vec<usize> = Vec::new();
    while kinds.len() < n {
        let mut four = [0, 1, 2, 3];
        four.shuffle(rng);
        kinds.extend(four);
    }
    kinds[..n]
        .iter()
        .map(|kind| {
            let fault = match kind {
                0 => Fault::KillGateway(rng.random_range(0..GATEWAYS)),
                1 => Fault::KillWorker(rng.random_range(0..WORKERS)),
                2 => Fault::StopWorker(rng.random_range(0..WORKERS)),
                _ => Fault::KillRedis,
            };
            (rng.random_range(300..1500), fault)
        })
        .collect()
}

/// What one client saw of one room: every update, in order.
#[derive(Default)]
struct Seen {
    events: Vec<(u64, String, Option<String>, String, String)>,
    resets: usize,
}

type Log = Arc<Mutex<HashMap<(usize, usize), Seen>>>;
/// (room, client, id) → (seq, hlc) of every ack.
type Acks = Arc<Mutex<BTreeMap<(usize, String, String), (u64, String)>>>;

async fn run_client(
    c: usize,
    urls: Vec<String>,
    (each, faults_done): (usize, Arc<AtomicBool>),
    log: Log,
    acks: Acks,
) -> Client {
    let config = ClientConfig::new(urls[c % urls.len()].clone())
        .with_client_id(format!("client-{c}"))
        .with_fallback_urls(
            (1..urls.len())
                .map(|k| urls[(c + k) % urls.len()].clone())
                .collect::<Vec<_>>(),
        )
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let client = Client::connect(config).await.expect("a first connection");
    for r in rooms_of(c) {
        // A join refused for a passing reason (Redis restarting) is tried again.
        let mut room = loop {
            match client.join(&room_name(r), JoinOptions::stream()).await {
                Ok(room) => break room,
                Err(e) if e.code() == Some("unavailable") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("client-{c} joining room {r}: {e}"),
            }
        };
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(update) = room.next().await {
                let mut log = log.lock().unwrap();
                let seen = log.entry((c, r)).or_default();
                match update {
                    RoomUpdate::Event(e) => seen.events.push((
                        e.seq,
                        e.from.to_string(),
                        e.id.map(|i| i.to_string()),
                        e.data.map(|d| d.get().to_string()).unwrap_or_default(),
                        e.hlc.to_string(),
                    )),
                    RoomUpdate::Reset { .. } => seen.resets += 1,
                    _ => {}
                }
            }
        });
    }
    // Up to 8 publishes in flight; a publish refused for a passing reason is sent again with
    // the same id (answered with its original ack if it had committed).
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut after = 0;
    for n in 0.. {
        if faults_done.load(Ordering::SeqCst) {
            if after == each {
                break;
            }
            after += 1;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        let r = rooms_of(c)[n % 2];
        let id = format!("m{n}");
        let client = &client;
        inflight.push(async move {
            let data = json!({"c": c, "n": n});
            loop {
                match client
                    .publish_with_id(&room_name(r), id.clone(), data.clone())
                    .await
                {
                    Ok(ack) => return (r, id, ack.seq, ack.hlc),
                    Err(e) => {
                        assert_eq!(
                            e.code(),
                            Some("unavailable"),
                            "client-{c} {id}: only a passing refusal is acceptable: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        if inflight.len() >= 8 {
            let (r, id, seq, hlc) = inflight.next().await.unwrap();
            acks.lock()
                .unwrap()
                .insert((r, format!("client-{c}"), id), (seq, hlc));
        }
    }
    while let Some((r, id, seq, hlc)) = inflight.next().await {
        acks.lock()
            .unwrap()
            .insert((r, format!("client-{c}"), id), (seq, hlc));
    }
    drop(inflight);
    client
}

/// Injects one fault into the cluster.
async fn inject(cluster: &mut Cluster, fault: Fault) {
    match fault {
        Fault::KillGateway(g) => cluster.restart_gateway(g).await,
        Fault::KillWorker(w) => cluster.restart_worker(w).await,
        Fault::StopWorker(w) => {
            // Past its lease: the other worker takes its partitions; on SIGCONT it finds its
            // leases gone.
            cluster.workers[w].signal("-STOP");
            tokio::time::sleep(LEASE_DURATION + Duration::from_millis(500)).await;
            cluster.workers[w].signal("-CONT");
        }
        Fault::KillRedis => {
            let redis = &mut cluster.redis;
            tokio::task::block_in_place(|| redis.restart());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_publishes_survive_killed_gateways_workers_and_redis() {
    let seed = std::env::var("CONCORD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let report = Report::new(seed, "CONCORD_CHAOS_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let (clients, each, fault_count) = sizes();
    let faults_done = Arc::new(AtomicBool::new(false));
    let mut cluster = Cluster::start(
        report,
        format!("chaos{seed}"),
        Persistence::AofAlways,
        (GATEWAYS, WORKERS),
        &["--ack-level", "redis"],
    )
    .await;
    let urls = cluster.urls();

    let log: Log = Arc::default();
    let acks: Acks = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (urls, log, acks) = (urls.clone(), log.clone(), acks.clone());
        let load = (each, faults_done.clone());
        tasks.push(tokio::spawn(async move {
            let client = run_client(c, urls, load, log, acks).await;
            if leaves(c) {
                client.close().await;
                None
            } else {
                Some(client)
            }
        }));
    }
    for (delay, fault) in schedule(&mut rng, fault_count) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        eprintln!(
            "chaos: {fault:?} ({} publishes acked so far)",
            acks.lock().unwrap().len()
        );
        inject(&mut cluster, fault).await;
    }
    faults_done.store(true, Ordering::SeqCst);
    let mut stayers = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        let client = tokio::time::timeout(LOAD_DEADLINE, t)
            .await
            .unwrap_or_else(|_| panic!("client-{c} did not get its acks in time"))
            .expect("the client task");
        if let Some(client) = client {
            stayers.push((c, client));
        }
    }

    // Heads: every seq of a room was acked to someone.
    let acks = acks.lock().unwrap().clone();
    let heads = check_acks(&acks);

    // Every staying client catches up to the head of its rooms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = {
            let log = log.lock().unwrap();
            stayers.iter().all(|(c, _)| {
                rooms_of(*c).iter().all(|r| {
                    log.get(&(*c, *r))
                        .and_then(|s| s.events.last())
                        .is_some_and(|e| e.0 == heads[*r])
                })
            })
        };
        if caught_up {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = log.lock().unwrap();
            let behind: Vec<String> = stayers
                .iter()
                .flat_map(|(c, _)| rooms_of(*c).map(|r| (*c, r)))
                .filter_map(|(c, r)| {
                    let last = log.get(&(c, r)).and_then(|s| s.events.last()).map(|e| e.0);
                    (last != Some(heads[r]))
                        .then(|| format!("client-{c} room {r}: at {last:?} of {}", heads[r]))
                })
                .collect();
            panic!("staying clients never received their rooms' heads: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_client_logs(&log.lock().unwrap(), &acks, &heads);
    check_no_ghosts(&cluster.gateways[0].addr, &stayers).await;
    check_postgres(&cluster, &acks, &heads).await;
    check_redis_drained(&cluster);
    for (_, client) in stayers {
        client.close().await;
    }
}

/// Per room: seq ↔ (client, id) one to one, seqs exactly 1..=head. Returns the heads.
fn check_acks(acks: &BTreeMap<(usize, String, String), (u64, String)>) -> Vec<u64> {
    let mut heads = Vec::with_capacity(ROOMS);
    for r in 0..ROOMS {
        let seqs: BTreeSet<u64> = acks
            .iter()
            .filter(|((room, ..), _)| *room == r)
            .map(|(_, (seq, _))| *seq)
            .collect();
        let count = acks.keys().filter(|(room, ..)| *room == r).count();
        assert_eq!(
            seqs.len(),
            count,
            "room {r}: two publishes were acked with one seq"
        );
        assert_eq!(
            seqs,
            (1..=count as u64).collect(),
            "room {r}: the acked seqs are not exactly 1..=head (a gap or an event nobody acked)"
        );
        heads.push(count as u64);
    }
    heads
}

/// Every client's log: gap-free from its first event, no reset, each event equal to its ack,
/// hlcs increasing; all clients agree per (room, seq).
fn check_client_logs(
    log: &HashMap<(usize, usize), Seen>,
    acks: &BTreeMap<(usize, String, String), (u64, String)>,
    heads: &[u64],
) {
    let by_seq: HashMap<(usize, u64), (&str, &str, &str)> = acks
        .iter()
        .map(|((r, c, id), (seq, hlc))| ((*r, *seq), (c.as_str(), id.as_str(), hlc.as_str())))
        .collect();
    let mut agreed: HashMap<(usize, u64), &str> = HashMap::new();
    for ((c, r), seen) in log {
        assert_eq!(
            seen.resets, 0,
            "client-{c} room {r}: a reset (acked events lost?)"
        );
        let seqs: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
        if let Some(first) = seqs.first() {
            let want: Vec<u64> = (*first..=*first + seqs.len() as u64 - 1).collect();
            assert_eq!(seqs, want, "client-{c} room {r}: a gap or a repeat");
            assert!(*seqs.last().unwrap() <= heads[*r]);
        }
        for (seq, from, id, data, hlc) in &seen.events {
            let (ac, aid, ahlc) = by_seq[&(*r, *seq)];
            assert_eq!(
                (from.as_str(), id.as_deref(), hlc.as_str()),
                (ac, Some(aid), ahlc),
                "client-{c} room {r} seq {seq}: not the acked publish"
            );
            let prev = agreed.insert((*r, *seq), data);
            assert!(
                prev.is_none_or(|p| p == data),
                "room {r} seq {seq}: clients saw different data"
            );
        }
        let hlcs: Vec<&str> = seen.events.iter().map(|e| e.4.as_str()).collect();
        assert!(
            hlcs.windows(2).all(|w| w[0] < w[1]),
            "client-{c} room {r}: hlcs do not increase with seqs"
        );
    }
}

/// An observer joining each room lists exactly the staying members (leavers gone everywhere,
/// including those whose gateway was killed), once the gateways' leases had time to lapse.
async fn check_no_ghosts(addr: &str, stayers: &[(usize, Client)]) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect the observer");
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"type":"hello","client_id":"observer"}).to_string(),
    ))
    .await
    .unwrap();
    next_json(&mut rx, "welcome").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for r in 0..ROOMS {
        let want: BTreeSet<String> = stayers
            .iter()
            .filter(|(c, _)| rooms_of(*c).contains(&r))
            .map(|(c, _)| format!("client-{c}"))
            .chain(["observer".to_string()])
            .collect();
        loop {
            tx.send(Message::text(
                json!({"type":"join","room":room_name(r)}).to_string(),
            ))
            .await
            .unwrap();
            let joined = loop {
                let m = next_json(&mut rx, "joined").await;
                if m["type"] == "joined" {
                    break m;
                }
            };
            let got: BTreeSet<String> = joined["members"]
                .as_array()
                .expect("joined.members")
                .iter()
                .map(|m| m["client_id"].as_str().unwrap_or_default().to_string())
                .collect();
            if got == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {r}: members {got:?}, want {want:?} (a ghost, or a member missing)"
            );
            tx.send(Message::text(
                json!({"type":"leave","room":room_name(r)}).to_string(),
            ))
            .await
            .unwrap();
            loop {
                if next_json(&mut rx, "left").await["type"] == "left" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// PostgreSQL: every event once at its seq, as acked, watermark at the head.
async fn check_postgres(
    cluster: &Cluster,
    acks: &BTreeMap<(usize, String, String), (u64, String)>,
    heads: &[u64],
) {
    let archive = PgArchive::connect(cluster.db.url())
        .await
        .expect("the archive");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (r, head) in heads.iter().enumerate() {
        let room = room_name(r);
        while archive.watermark(&room).await.unwrap().map(|w| w.1) != Some(*head) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {r}: the watermark never reached the head {head}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rows = archive
            .read_events(&room, 0, *head as usize + 10)
            .await
            .unwrap();
        let seqs: Vec<u64> = rows.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=*head).collect::<Vec<_>>(),
            "room {r}: PostgreSQL lost, doubled or reordered an event"
        );
        let epochs: BTreeSet<&str> = rows.iter().map(|e| e.epoch.as_str()).collect();
        assert_eq!(epochs.len(), 1, "room {r}: one epoch in PostgreSQL");
        for row in &rows {
            let op = row.op_id.clone().expect("every publish had an id");
            let (seq, hlc) = &acks[&(r, row.from.clone(), op)];
            assert_eq!(
                (*seq, hlc.as_str()),
                (row.seq, row.hlc.as_str()),
                "room {r}: PostgreSQL's row differs from the ack"
            );
        }
    }
}

/// Redis: nothing pending in the rooms' work streams, no dead letter.
fn check_redis_drained(cluster: &Cluster) {
    let keys = Keys::new(&cluster.prefix);
    let parts = all_partitions(PARTITIONS);
    let mut conn = cluster.redis.client();
    for r in 0..ROOMS {
        let p = concord_dist::partition::fnv1a_64(room_name(r).as_bytes()) % u64::from(PARTITIONS);
        let part = &parts[p as usize];
        // XPENDING's summary: [count, smallest id, greatest id, consumers].
        let summary: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(keys.work(part))
            .arg("persist")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("XPENDING of room {r}'s work stream: {e}"));
        let count = match summary.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING answered {other:?}"),
        };
        assert_eq!(
            count, 0,
            "room {r}: entries still pending in its work stream"
        );
        let dead: i64 = redis::cmd("XLEN")
            .arg(keys.dead(part))
            .query(&mut conn)
            .unwrap();
        assert_eq!(dead, 0, "room {r}: an entry was dead-lettered");
    }
}
