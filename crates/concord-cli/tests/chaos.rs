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

use concord_client::Client;
use concord_dist::testing::redis::Persistence;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::dist::{Cluster, LEASE_DURATION};
use support::load::{
    self, check_acks, check_client_logs, check_postgres, check_redis_drained, room_name,
    run_client, wait_caught_up, Acks, Control, Log,
};
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

/// The rooms client `c` joins and publishes into.
fn rooms_of(c: usize) -> [usize; 2] {
    load::rooms_of(c, ROOMS)
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
    let control = Control::new(ROOMS, each);
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
        let control = control.clone();
        tasks.push(tokio::spawn(async move {
            let client = run_client(c, urls, control, log, acks).await;
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
    control.done.store(true, Ordering::SeqCst);
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
    let heads = check_acks(&acks, ROOMS);

    // Every staying client catches up to the head of its rooms.
    let staying: Vec<usize> = stayers.iter().map(|(c, _)| *c).collect();
    wait_caught_up(&log, &staying, ROOMS, &heads).await;
    check_client_logs(&log.lock().unwrap(), &acks, &heads);
    check_no_ghosts(&cluster.gateways[0].addr, &stayers).await;
    check_postgres(cluster.db.url(), &acks, &heads).await;
    check_redis_drained(&cluster, ROOMS);
    for (_, client) in stayers {
        client.close().await;
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
