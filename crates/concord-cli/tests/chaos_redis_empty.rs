//! Chaos tests of a Redis lost whole, with real processes: 3 `concord serve` gateways at
//! `--ack-level memory` and 2 `concord worker`s over a private Redis WITHOUT persistence and
//! a fresh PostgreSQL database; clients publish into shared stream rooms and Redis is killed
//! and started again empty (docs/distributed.md, "Rebuilding a room Redis lost").
//!
//! - After the workers caught up (every acked event in PostgreSQL): every room is rebuilt from
//!   PostgreSQL in its epoch. No client gets a reset, every client's log is one gap-free order
//!   equal to the acks, seqs exactly 1..=head each acked once, PostgreSQL holds every event
//!   once at its seq in one epoch.
//! - While acked events are only in Redis (both workers SIGSTOPped, Redis restarted empty in
//!   the middle of the load): every room gets a new epoch. Every client of a room gets one
//!   reset to that epoch; the new epoch's seqs start above PostgreSQL's and above what the
//!   rebuilding gateway acked or delivered (at least what every member saw), and are each acked
//!   once, in one gap-free order every client saw after its reset; the rows
//!   PostgreSQL had before the restart are unchanged; every publish acked in the new epoch is
//!   in PostgreSQL once at its seq; pending lists drained, no dead letter; both workers work
//!   again after SIGCONT (heartbeat and partition leases in the new Redis) without a restart.
//!   Once with some events of every room in PostgreSQL, once with none (the workers stopped
//!   from the start: PostgreSQL never had the rooms).
//!
//! `CONCORD_REDIS_EMPTY_SEED=<seed>` replays a schedule.

mod support;

use concord_dist::pg::{PgArchive, StoredRow};
use concord_dist::testing::redis::Persistence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::dist::Cluster;
use support::load::{
    check_acks, check_client_logs, check_events, check_no_dead_letter_rows, check_postgres,
    check_redis_drained, room_name, rooms_of, spawn_clients, wait_caught_up, wait_persisted, Acks,
    Control, Log, SeenEvent,
};
use support::Report;

const GATEWAYS: usize = 3;
const WORKERS: usize = 2;
const ROOMS: usize = 3;
const CLIENTS: usize = 18;
/// Publishes each client sends after the restart's phase.
const EACH_AFTER: usize = 10;

fn seed() -> u64 {
    std::env::var("CONCORD_REDIS_EMPTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>)
}

/// The cluster and its clients, publishing. `stopped`: the workers are SIGSTOPped before the
/// first publish (PostgreSQL never gets an event).
async fn start(
    seed: u64,
    name: &str,
    stopped: bool,
) -> (Cluster, Arc<Control>, Log, Acks, Vec<JoinClient>) {
    let report = Report::new(seed, "CONCORD_REDIS_EMPTY_SEED");
    let cluster = Cluster::start(
        report,
        format!("{name}{seed}"),
        Persistence::None,
        (GATEWAYS, WORKERS),
        &["--ack-level", "memory"],
    )
    .await;
    if stopped {
        for w in &cluster.workers {
            w.signal("-STOP");
        }
    }
    let urls = cluster.urls();
    let control = Control::new(ROOMS, EACH_AFTER);
    let (log, acks, tasks) = spawn_clients(CLIENTS, &urls, &control);
    (cluster, control, log, acks, tasks)
}

/// Nothing pending, nothing dead-lettered, both workers working (heartbeat and leases in the
/// Redis they now talk to), every process still running.
async fn check_settled(cluster: &Cluster) {
    check_redis_drained(cluster, ROOMS);
    check_no_dead_letter_rows(cluster.db.url()).await;
    cluster.wait_workers_working(Duration::from_secs(10)).await;
    cluster.assert_running();
}

type JoinClient = tokio::task::JoinHandle<concord_client::Client>;

/// Lets the clients finish their last publishes; returns them.
async fn finish(control: &Control, tasks: Vec<JoinClient>) -> Vec<concord_client::Client> {
    control.done.store(true, Ordering::SeqCst);
    let mut clients = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        let client = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "client-{c} did not get its acks in time ({} publishes without an ack)",
                    control.inflight.load(Ordering::SeqCst)
                )
            })
            .expect("the client task");
        clients.push(client);
    }
    clients
}

/// Waits until PostgreSQL has a watermark for every room.
async fn wait_persisted_some(archive: &PgArchive) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for r in 0..ROOMS {
        while archive.watermark(&room_name(r)).await.unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {r}: nothing persisted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn restart_redis(cluster: &mut Cluster) {
    let redis = &mut cluster.redis;
    tokio::task::block_in_place(|| redis.restart());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_redis_after_the_workers_caught_up_keeps_every_epoch() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cluster, control, log, acks, tasks) = start(seed, "rsame", false).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
    // Every acked event in PostgreSQL, then Redis lost.
    control.quiesce(Duration::from_secs(20)).await;
    let heads = check_acks(&acks.lock().unwrap(), ROOMS);
    let archive = PgArchive::connect(cluster.db.url()).await.expect("archive");
    wait_persisted(&archive, &heads).await;
    eprintln!("redis empty: restart at the heads {heads:?}");
    restart_redis(&mut cluster);
    control.resume();
    tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
    let clients = finish(&control, tasks).await;

    let acks = acks.lock().unwrap().clone();
    let heads = check_acks(&acks, ROOMS);
    wait_caught_up(&log, &(0..CLIENTS).collect::<Vec<_>>(), ROOMS, &heads).await;
    check_client_logs(&log.lock().unwrap(), &acks, &heads);
    check_postgres(cluster.db.url(), &acks, &heads).await;
    check_settled(&cluster).await;
    archive.close().await;
    for client in clients {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_events_only_in_redis_lost_with_it_start_a_new_epoch_everywhere() {
    lost_with_redis("rnew", true).await;
}

/// The same when PostgreSQL never had an event of the rooms (the workers stopped from the
/// start): the gateways remember what they acked and delivered, so the rooms are not taken
/// for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_postgres_never_had_lost_with_redis_start_a_new_epoch_everywhere() {
    lost_with_redis("rnone", false).await;
}

/// Acked events only in Redis (the workers SIGSTOPped), Redis restarted empty mid-load.
/// `persisted_first`: the workers persist some events of every room first.
async fn lost_with_redis(name: &str, persisted_first: bool) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cluster, control, log, acks, tasks) = start(seed, name, !persisted_first).await;
    let archive = PgArchive::connect(cluster.db.url()).await.expect("archive");
    if persisted_first {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        wait_persisted_some(&archive).await;
        for w in &cluster.workers {
            w.signal("-STOP");
        }
    }
    // Past the workers' lease: a transaction a worker had open is rolled back by PostgreSQL
    // (idle in transaction), so what PostgreSQL holds no longer changes.
    tokio::time::sleep(support::dist::LEASE_DURATION + Duration::from_millis(500)).await;
    let mut before: Vec<Vec<StoredRow>> = Vec::new();
    for r in 0..ROOMS {
        before.push(
            archive
                .read_events(&room_name(r), 0, 100_000)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
    eprintln!(
        "redis empty: restart mid-load ({} publishes acked so far; PostgreSQL's rows {:?})",
        acks.lock().unwrap().len(),
        before.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let acks_before = acks.lock().unwrap().clone();
    restart_redis(&mut cluster);
    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
    for w in &cluster.workers {
        w.signal("-CONT");
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    let clients = finish(&control, tasks).await;
    let acks = acks.lock().unwrap().clone();
    // The new epoch runs for seconds after the restart: the highest ack of a room is its head.
    let acked_heads: Vec<u64> = (0..ROOMS)
        .map(|r| {
            acks.iter()
                .filter(|((room, ..), _)| *room == r)
                .map(|(_, a)| a.0)
                .max()
                .unwrap_or(0)
        })
        .collect();
    wait_caught_up(&log, &(0..CLIENTS).collect::<Vec<_>>(), ROOMS, &acked_heads).await;

    // What the members saw: (new epoch, the least any member saw of the old one, the most,
    // the events seen after the resets).
    type Views = Vec<(String, u64, u64, Vec<SeenEvent>)>;
    let views: Views = {
        let log = log.lock().unwrap();
        let mut views = Vec::new();
        for r in 0..ROOMS {
            let members: Vec<usize> = (0..CLIENTS)
                .filter(|c| rooms_of(*c, ROOMS).contains(&r))
                .collect();
            let mut epochs = BTreeSet::new();
            let mut old_seen: HashMap<u64, &SeenEvent> = HashMap::new();
            let mut new_seen: HashMap<u64, &SeenEvent> = HashMap::new();
            let mut least_seen = u64::MAX;
            for c in &members {
                let seen = &log[&(*c, r)];
                assert_eq!(
                    seen.resets.len(),
                    1,
                    "client-{c} room {r}: one reset, got {:?}",
                    seen.resets
                );
                let (at, epoch, _) = &seen.resets[0];
                epochs.insert(epoch.clone());
                let (old, new) = seen.events.split_at(*at);
                check_events(&format!("client-{c} room {r} before its reset"), old);
                check_events(&format!("client-{c} room {r} after its reset"), new);
                least_seen = least_seen.min(old.last().map_or(0, |e| e.0));
                for (part, map) in [(old, &mut old_seen), (new, &mut new_seen)] {
                    for e in part {
                        let prev = map.insert(e.0, e);
                        assert!(
                            prev.is_none_or(|p| p == e),
                            "room {r} seq {}: clients saw different events",
                            e.0
                        );
                    }
                }
            }
            assert_eq!(epochs.len(), 1, "room {r}: resets to several epochs");
            let most_seen = old_seen.keys().copied().max().unwrap_or(0);
            let new_events = new_seen.into_values().cloned().collect();
            views.push((
                epochs.pop_first().unwrap(),
                least_seen,
                most_seen,
                new_events,
            ));
        }
        views
    };

    // PostgreSQL: the rows from before unchanged; the new epoch's rows one gap-free run, each
    // an acked publish at its acked seq, once.
    wait_persisted(&archive, &acked_heads).await;
    for (r, (epoch, least_seen, most_seen, new_events)) in views.iter().enumerate() {
        let rows = archive
            .read_events(&room_name(r), 0, 100_000)
            .await
            .unwrap();
        let by_seq: BTreeMap<u64, &StoredRow> = rows.iter().map(|row| (row.seq, row)).collect();
        assert_eq!(by_seq.len(), rows.len(), "room {r}: a seq twice");
        let old_epoch = before[r].first().map(|row| &row.epoch);
        assert_eq!(
            old_epoch.is_some(),
            persisted_first,
            "room {r}: rows before the restart"
        );
        assert_ne!(Some(epoch), old_epoch, "room {r}: a new epoch");
        for old in &before[r] {
            assert_eq!(
                by_seq.get(&old.seq),
                Some(&old),
                "room {r}: a row written before the restart changed"
            );
        }
        let new_rows: Vec<&StoredRow> = rows.iter().filter(|row| &row.epoch == epoch).collect();
        let first_new = new_rows.first().expect("the new epoch archived").seq;
        assert_eq!(
            new_rows.iter().map(|row| row.seq).collect::<Vec<_>>(),
            (first_new..=acked_heads[r]).collect::<Vec<_>>(),
            "room {r}: the new epoch's rows are not one run up to the head"
        );
        // The rebuilding gateway resumes above what PostgreSQL had and what it acked or
        // delivered itself: at least what the least advanced member saw. (Another gateway's
        // acks its feed had not delivered yet when Redis died are not known to it: the new
        // epoch may reuse those seqs — docs/distributed.md, "Known limits".)
        let archived = before[r].iter().map(|row| row.seq).max().unwrap_or(0);
        assert!(
            first_new > archived.max(*least_seen),
            "room {r}: the new epoch starts at {first_new}, not above PostgreSQL's {archived} \
             and what every member saw ({least_seen})"
        );
        let mut new_ids = BTreeSet::new();
        for row in &new_rows {
            let op = row.op_id.clone().expect("every publish has an id");
            let ack = acks.get(&(r, row.from.clone(), op.clone()));
            assert_eq!(
                ack,
                Some(&(row.seq, row.hlc.clone())),
                "room {r} seq {}: PostgreSQL's row is not an acked publish at its seq",
                row.seq
            );
            assert!(
                new_ids.insert((row.from.clone(), op)),
                "room {r}: a publish twice in the new epoch"
            );
        }
        for e in new_events {
            let row = by_seq.get(&e.0).expect("a delivered event is archived");
            assert_eq!(
                (&row.epoch, &row.from, row.op_id.as_ref(), &row.hlc),
                (epoch, &e.1, e.2.as_ref(), &e.4),
                "room {r} seq {}: the members saw another event than PostgreSQL has",
                e.0
            );
        }
        // Every other ack is of the old epoch: acked before the restart, or answered in the
        // moment Redis died (at most every client's window in flight above the old head).
        let old_top = acks_before
            .iter()
            .filter(|((room, ..), _)| *room == r)
            .map(|(_, a)| a.0)
            .max()
            .unwrap_or(0)
            .max(*most_seen);
        for ((room, c, id), (seq, _)) in &acks {
            if *room != r || new_ids.contains(&(c.clone(), id.clone())) {
                continue;
            }
            assert!(
                acks_before.contains_key(&(r, c.clone(), id.clone()))
                    || *seq <= old_top + (CLIENTS * 8) as u64,
                "room {r}: {c} {id} acked at {seq} after the restart, not in the new epoch"
            );
        }
        assert!(
            rows.iter()
                .all(|row| &row.epoch == epoch || row.seq < first_new),
            "room {r}: a row of the old epoch at a seq of the new one"
        );
        eprintln!(
            "room {r}: old epoch seen up to {most_seen}, new epoch {first_new}..={}",
            acked_heads[r]
        );
    }
    check_settled(&cluster).await;
    archive.close().await;
    for client in clients {
        client.close().await;
    }
}
