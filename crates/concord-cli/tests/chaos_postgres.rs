//! Chaos test of the distributed mode's PostgreSQL side with real processes: 3 `concord serve`
//! gateways at `--ack-level durable` and 2 `concord worker`s over a private Redis and a
//! private PostgreSQL 15 (`PgServer`), which a seeded schedule crashes (immediate stop: no
//! checkpoint, crash recovery at the next start) and starts again twice while clients publish
//! into shared stream rooms.
//!
//! The checks:
//! - no ack arrives while PostgreSQL is down (a durable ack waits for the row), and acks flow
//!   again after each restart;
//! - each acked publish has one seq and each (room, seq) one publish, seqs exactly 1..=head;
//!   every client's log gap-free, without reset, equal to the acks and to every other
//!   client's; hlcs increasing;
//! - PostgreSQL holds every event exactly once at its seq and hlc, in one epoch, the watermark
//!   at the head; the per-room watermark, sampled by the test throughout (in PostgreSQL and
//!   in Redis's meta), never moved back;
//! - the work streams' pending lists are drained, nothing was dead-lettered (an outage is not
//!   a refusal);
//! - every gateway and worker process lived through both outages: none was restarted.
//!
//! `CONCORD_PG_CHAOS_SEED=<seed>` replays a schedule.

mod support;

use concord_dist::pg::PgArchive;
use concord_dist::testing::pg_server::{PgServer, StopMode};
use concord_dist::testing::redis::Persistence;
use concord_dist::{Keys, Partitions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::dist::{Cluster, Db};
use support::load::{
    check_acks, check_client_logs, check_no_dead_letter_rows, check_postgres, check_redis_drained,
    room_name, spawn_clients, wait_caught_up, Control,
};
use support::Report;

const GATEWAYS: usize = 3;
const WORKERS: usize = 2;
const ROOMS: usize = 4;
const CLIENTS: usize = 24;
/// Publishes each client sends after the outages.
const EACH_AFTER: usize = 10;
const OUTAGES: usize = 2;
/// Acks of rows committed before PostgreSQL stopped may still arrive this long after it did
/// (the worker acknowledges, raises the watermark; the gateway releases the ack).
const ACK_GRACE: Duration = Duration::from_millis(700);

/// Every watermark sample of a room, in order: (where, seq), where = "pg" or "redis".
type Samples = Arc<Mutex<BTreeMap<usize, Vec<(&'static str, u64)>>>>;

/// Samples every room's watermark in PostgreSQL and in Redis's meta every 50 ms until `stop`
/// (a read that fails — PostgreSQL down — is skipped).
fn sample_watermarks(
    db_url: String,
    redis_url: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    samples: Samples,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let archive = PgArchive::connect(&db_url).await.expect("the archive");
        let keys =
            Keys::new(&prefix, Partitions::new(support::dist::PARTITIONS).unwrap()).expect("keys");
        let client = redis::Client::open(redis_url).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        while !stop.load(Ordering::SeqCst) {
            for r in 0..ROOMS {
                let room = room_name(r);
                let pg = tokio::time::timeout(Duration::from_millis(500), archive.watermark(&room))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .map(|w| w.1);
                let rd: Option<u64> = redis::cmd("HGET")
                    .arg(keys.room(&room).meta)
                    .arg("wm")
                    .query_async(&mut conn)
                    .await
                    .ok()
                    .flatten();
                let mut samples = samples.lock().unwrap();
                let s = samples.entry(r).or_default();
                s.extend(pg.map(|w| ("pg", w)));
                s.extend(rd.map(|w| ("redis", w)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        archive.close().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_publishes_survive_postgres_crashes_at_the_durable_level() {
    let seed = std::env::var("CONCORD_PG_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let report = Report::new(seed, "CONCORD_PG_CHAOS_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pg = tokio::task::block_in_place(PgServer::start);
    let db_url = pg.url();
    concord_dist::pg::migrate(&db_url)
        .await
        .expect("migrate the private server's database");
    let cluster = Cluster::start_on(
        report,
        format!("pgchaos{seed}"),
        Persistence::None,
        (GATEWAYS, WORKERS),
        &["--ack-level", "durable"],
        Db::Url(db_url.clone()),
    )
    .await;
    let urls = cluster.urls();

    let samples: Samples = Arc::default();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_watermarks(
        db_url.clone(),
        cluster.redis.url(),
        cluster.prefix.clone(),
        stop_sampling.clone(),
        samples.clone(),
    );

    let control = Control::new(ROOMS, EACH_AFTER);
    let (log, acks, tasks) = spawn_clients(CLIENTS, &urls, &control);
    // (stopped, starting again), since the control's start.
    let mut outages = Vec::new();
    for _ in 0..OUTAGES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2500))).await;
        let down = Duration::from_millis(rng.random_range(1500..2500));
        eprintln!(
            "pg chaos: PostgreSQL crashed for {down:?} ({} publishes acked so far)",
            acks.lock().unwrap().len()
        );
        tokio::task::block_in_place(|| pg.stop(StopMode::Immediate));
        // From here to the restart every backend is gone (the stop waited for the postmaster).
        let stopped = control.start.elapsed();
        tokio::time::sleep(down).await;
        let restarting = control.start.elapsed();
        tokio::task::block_in_place(|| pg.start_again());
        outages.push((stopped, restarting));
    }
    control.done.store(true, Ordering::SeqCst);
    let mut clients = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        let client = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap_or_else(|_| panic!("client-{c} did not get its acks in time"))
            .expect("the client task");
        clients.push(client);
    }
    let end = control.start.elapsed();

    // Acks stop while PostgreSQL is down and flow again after each restart.
    for (k, (stopped, started)) in outages.iter().enumerate() {
        let during = control.acks_between(*stopped + ACK_GRACE, *started);
        assert_eq!(
            during, 0,
            "outage {k}: {during} durable acks arrived while PostgreSQL was down"
        );
        let next = outages.get(k + 1).map_or(end, |o| o.0);
        let after = control.acks_between(*started, next);
        assert!(after > 0, "outage {k}: no ack after PostgreSQL came back");
    }

    let acks = acks.lock().unwrap().clone();
    let heads = check_acks(&acks, ROOMS);
    wait_caught_up(&log, &(0..CLIENTS).collect::<Vec<_>>(), ROOMS, &heads).await;
    check_client_logs(&log.lock().unwrap(), &acks, &heads);
    check_postgres(&db_url, &acks, &heads).await;
    check_redis_drained(&cluster, ROOMS);
    check_no_dead_letter_rows(&db_url).await;
    cluster.assert_running();

    stop_sampling.store(true, Ordering::SeqCst);
    sampler.await.expect("the sampler");
    let samples = samples.lock().unwrap().clone();
    for (r, head) in heads.iter().enumerate() {
        for place in ["pg", "redis"] {
            let seen: Vec<u64> = samples
                .get(&r)
                .into_iter()
                .flatten()
                .filter(|s| s.0 == place)
                .map(|s| s.1)
                .collect();
            assert!(
                seen.len() > 10,
                "room {r}: too few samples of the watermark in {place}"
            );
            assert!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "room {r}: the watermark in {place} moved back: {seen:?}"
            );
            assert!(
                seen.iter().all(|w| w <= head),
                "room {r}: a watermark in {place} above the head {head}"
            );
        }
    }
    for client in clients {
        client.close().await;
    }
}
