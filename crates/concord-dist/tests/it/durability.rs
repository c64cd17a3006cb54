//! What each ack level survives, against a private Redis the tests restart empty (no
//! persistence), the real worker in-process and a fresh PostgreSQL database: at the level
//! `durable` an ack (and an event) is never sent before its row is in PostgreSQL and survives
//! an empty Redis; a room Redis lost is rebuilt from PostgreSQL in its epoch when no acked
//! event is gone, in a new epoch (seqs above, PostgreSQL untouched, `recovered: false`) when
//! some are; a lost tail is rebuilt in the same epoch.

use crate::gateways::{serve, Gateway, Ws, WAIT};
use crate::support::config;
use concord_dist::gateway::{AckLevel, GatewayOptions};
use concord_dist::pg::{PgArchive, StoredRow};
use concord_dist::testing::pg::TestDb;
use concord_dist::testing::redis::{Persistence, RedisServer};
use concord_dist::worker::{all_partitions, Worker, WorkerConfig};
use concord_dist::Partitions;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::oneshot;

/// A private Redis, a database, the archive, and the worker of one room's partition.
struct Setup {
    redis: RedisServer,
    db: TestDb,
    archive: PgArchive,
    prefix: String,
    room: String,
    worker: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Setup {
    async fn new(prefix: &str, room: &str) -> Setup {
        let redis = RedisServer::start(Persistence::None);
        let db = TestDb::migrated().await;
        let archive = PgArchive::connect(db.url()).await.expect("the archive");
        let mut s = Setup {
            redis,
            db,
            archive,
            prefix: prefix.to_string(),
            room: room.to_string(),
            worker: None,
        };
        s.start_worker();
        s
    }

    fn start_worker(&mut self) {
        let number = Partitions::new(1024).unwrap().of(&self.room).number();
        let parts = all_partitions(1024)
            .into_iter()
            .filter(|p| p.number == number)
            .collect();
        let mut wc = WorkerConfig::new(&self.redis.url(), self.db.url(), parts, 1024);
        wc.redis_prefix = self.prefix.clone();
        wc.lease = Duration::from_secs(3);
        wc.retry_delay = Duration::from_millis(100);
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            Worker::run(wc, async move {
                let _ = stopped.await;
            })
            .await
            .expect("the worker stops cleanly");
        });
        self.worker = Some((stop, join));
    }

    async fn stop_worker(&mut self) {
        if let Some((stop, join)) = self.worker.take() {
            let _ = stop.send(());
            join.await.unwrap();
        }
    }

    async fn gateway(&self, node: &str, ack: AckLevel) -> Gateway {
        let options = GatewayOptions {
            ack,
            archive: Some(self.archive.clone()),
            ..GatewayOptions::new(node)
        };
        let backend =
            concord_dist::gateway::connect(&self.redis.target(), config(&self.prefix), options)
                .await
                .expect("the gateway's backend connects");
        serve(backend, node).await
    }

    /// The archived rows of the room.
    async fn rows(&self) -> Vec<StoredRow> {
        self.archive
            .read_events(&self.room, 0, 10_000)
            .await
            .expect("an archive read")
    }

    async fn archived(&self, seq: u64) -> bool {
        self.rows().await.iter().any(|r| r.seq == seq)
    }

    /// Waits for PostgreSQL's watermark of the room to reach `seq`.
    async fn persisted(&self, seq: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let wm = self.archive.watermark(&self.room).await.expect("a read");
            if wm.as_ref().is_some_and(|w| w.1 >= seq) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker did not persist seq {seq}: {wm:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self, gws: Vec<Gateway>) {
        for g in gws {
            g.stop().await;
        }
        self.stop_worker().await;
    }
}

/// Publishes until acked: `unavailable` (the room reloading after Redis lost it) is answered
/// by sending the same publish again, as clients do. Returns the ack.
async fn publish_until_acked(w: &mut Ws, room: &str, id: &str, data: Value) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        w.send(json!({"type":"publish","room":room,"id":id,"data":data}))
            .await;
        loop {
            let m = w.recv().await;
            match m["type"].as_str() {
                Some("ack") if m["id"] == id => return m,
                Some("error") if m["code"] == "unavailable" => break,
                Some("event") => {}
                _ => panic!("unexpected {m}"),
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins `room` with `since`.
async fn rejoin(w: &mut Ws, room: &str, epoch: &Value, seq: u64) -> Value {
    w.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":seq}}))
        .await;
    let j = w.recv().await;
    assert_eq!(j["type"], "joined", "{j}");
    j
}

fn seqs(j: &Value) -> Vec<u64> {
    j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// At the level `durable`, each ack and each delivered event arrive only once the event's row
/// is in PostgreSQL (checked the moment each arrives), and what was acked survives a Redis
/// restarted empty: the room is rebuilt in its epoch and seqs continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_follow_postgres_and_survive_an_empty_redis() {
    let mut s = Setup::new("dur-ack", "chat:durable").await;
    let room = s.room.clone();
    let g = s.gateway("gwd1", AckLevel::Durable).await;
    let mut obs = Ws::hello(&g, "obs").await;
    let epoch = obs.join(&room).await["epoch"].clone();
    let mut w = Ws::hello(&g, "writer").await;
    w.join(&room).await;
    for n in 1..=8u64 {
        let ack = w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
        assert_eq!(ack["seq"], n, "{ack}");
        assert!(s.archived(n).await, "ack {n} arrived before its row");
        let e = obs.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["seq"].as_u64()),
            (Some("event"), Some(n))
        );
        assert!(s.archived(n).await, "event {n} arrived before its row");
    }
    s.redis.restart();
    let ack = publish_until_acked(&mut w, &room, "m9", json!({"n": 9})).await;
    assert_eq!(ack["seq"], 9, "seqs continue after the rebuild: {ack}");
    assert!(s.archived(9).await, "ack 9 arrived before its row");
    let rows = s.rows().await;
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(
        rows.iter().all(|r| Value::String(r.epoch.clone()) == epoch),
        "one epoch throughout"
    );
    let mut late = Ws::hello(&g, "late").await;
    let j = rejoin(&mut late, &room, &epoch, 3).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(seqs(&j), (4..=9).collect::<Vec<_>>());
    s.stop(vec![g]).await;
}

/// At the level `memory`, Redis restarted empty after the workers caught up: the room is
/// rebuilt in its epoch (whatever a client's `since` claimed), a member keeps receiving, a
/// rejoin recovers, seqs continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_redis_after_the_workers_caught_up_keeps_the_epoch() {
    let mut s = Setup::new("dur-same", "chat:same").await;
    let room = s.room.clone();
    let g = s.gateway("gws1", AckLevel::Memory).await;
    let mut obs = Ws::hello(&g, "obs").await;
    let epoch = obs.join(&room).await["epoch"].clone();
    let mut w = Ws::hello(&g, "writer").await;
    w.join(&room).await;
    for n in 1..=5u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    assert_eq!(obs.events(5).await.len(), 5);
    s.persisted(5).await;
    // A client claiming to have seen far more cannot make the rebuild believe events are lost.
    let mut hostile = Ws::hello(&g, "hostile").await;
    let j = rejoin(&mut hostile, &room, &epoch, 1_000_000).await;
    assert_eq!(j["recovered"], false, "{j}");
    s.redis.restart();
    let ack = publish_until_acked(&mut w, &room, "m6", json!({"n": 6})).await;
    assert_eq!(ack["seq"], 6, "{ack}");
    let e = obs.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64()),
        (Some("event"), Some(6)),
        "{e}"
    );
    let mut late = Ws::hello(&g, "late").await;
    let j = rejoin(&mut late, &room, &epoch, 2).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"], epoch);
    assert_eq!(seqs(&j), (3..=6).collect::<Vec<_>>());
    s.stop(vec![g]).await;
}

/// At the level `memory`, Redis restarted empty while acked events were not yet in
/// PostgreSQL (the workers stopped): they are gone, so the room starts a new epoch whose seqs
/// resume above them; members are told to join again and get `recovered: false`; the rows
/// PostgreSQL had are untouched, and the new events are archived above them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_lost_with_redis_start_a_new_epoch() {
    let mut s = Setup::new("dur-new", "chat:lost").await;
    let room = s.room.clone();
    let g = s.gateway("gwn1", AckLevel::Memory).await;
    let mut obs = Ws::hello(&g, "obs").await;
    let epoch = obs.join(&room).await["epoch"].clone();
    let mut w = Ws::hello(&g, "writer").await;
    w.join(&room).await;
    for n in 1..=3u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    s.persisted(3).await;
    s.stop_worker().await;
    let before = s.rows().await;
    for n in 4..=7u64 {
        let ack = w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
        assert_eq!(ack["seq"], n);
    }
    assert_eq!(obs.events(7).await.len(), 7);
    s.redis.restart();
    let ack = publish_until_acked(&mut w, &room, "m8", json!({"n": 8})).await;
    assert_eq!(ack["seq"], 8, "seqs resume above the lost ones: {ack}");
    // The member is told to join again; its rejoin is a reset.
    let m = obs.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{m}"
    );
    let j = rejoin(&mut obs, &room, &epoch, 7).await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_ne!(j["epoch"], epoch, "a new epoch");
    let new_epoch = j["epoch"].clone();
    s.start_worker();
    s.persisted(8).await;
    let rows = s.rows().await;
    assert_eq!(rows[..3], before[..], "PostgreSQL's rows are untouched");
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 8]
    );
    assert_eq!(Value::String(rows[3].epoch.clone()), new_epoch);
    s.stop(vec![g]).await;
}

/// Redis lost the tail of a room (its head below PostgreSQL's watermark, as after a failover
/// to a replica that lagged): a gateway loading the room rebuilds it at the watermark in the
/// same epoch, and seqs continue above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_is_rebuilt_in_the_same_epoch() {
    let s = Setup::new("dur-tail", "chat:tail").await;
    let room = s.room.clone();
    let g1 = s.gateway("gwt1", AckLevel::Memory).await;
    let mut w = Ws::hello(&g1, "writer").await;
    let epoch = w.join(&room).await["epoch"].clone();
    for n in 1..=6u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    s.persisted(6).await;
    drop(w);
    g1.stop().await;
    // The replica's state: head 3, its log up to 3.
    let keys = concord_dist::Keys::new(&s.prefix, Partitions::new(1024).unwrap())
        .unwrap()
        .room(&room);
    let mut c = s.redis.client();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("head")
        .arg(3)
        .arg("wm")
        .arg(3)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("XDEL")
        .arg(&keys.log)
        .arg("4-0")
        .arg("5-0")
        .arg("6-0")
        .query(&mut c)
        .unwrap();
    let g2 = s.gateway("gwt2", AckLevel::Memory).await;
    let mut w = Ws::hello(&g2, "writer2").await;
    let j = rejoin(&mut w, &room, &epoch, 2).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(seqs(&j), (3..=6).collect::<Vec<_>>());
    let ack = w.publish(&room, "m7", json!({"n": 7})).await;
    assert_eq!(ack["seq"], 7, "{ack}");
    s.persisted(7).await;
    assert_eq!(
        s.rows().await.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    s.stop(vec![g2]).await;
}

/// A load reads Redis's meta, then PostgreSQL's watermark: commits that followed the first
/// read may have been persisted before the second, so the meta looks like a lost tail. The
/// check reads Redis again before it decides anything: nothing was lost, so no epoch is
/// drawn, nothing is rebuilt, and the load gets Redis's current meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_decided_on_an_earlier_read_reads_redis_again() {
    let mut s = Setup::new("dur-stale", "chat:stale").await;
    let room = s.room.clone();
    let id = concord_core::RoomId::new(&room).unwrap();
    let g = s.gateway("gws1", AckLevel::Memory).await;
    let mut w = Ws::hello(&g, "writer").await;
    w.join(&room).await;
    for n in 1..=3u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    s.persisted(3).await;
    let log = concord_dist::RedisLog::connect(&s.redis.target(), config(&s.prefix))
        .await
        .expect("the log");
    let earlier = log.room_meta(&id).await.unwrap().expect("the room");
    assert_eq!(earlier.head.0, 3);
    for n in 4..=6u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    s.persisted(6).await;
    s.stop_worker().await;
    w.publish(&room, "m7", json!({"n": 7})).await;
    // This gateway delivered seq 7, above the watermark.
    let seen = concord_dist::gateway::Seen::default();
    seen.note(&id, &earlier.epoch, concord_core::Seq(7));
    let drawn = std::sync::atomic::AtomicBool::new(false);
    let mut meta = Some(earlier.clone());
    let outcome =
        concord_dist::gateway::check_rebuild(&log, &s.archive, &seen, &id, &mut meta, || {
            drawn.store(true, std::sync::atomic::Ordering::SeqCst);
            concord_core::Epoch("never".into())
        })
        .await
        .expect("the check");
    assert_eq!(outcome, concord_dist::gateway::Rebuilt::Kept);
    assert!(
        !drawn.load(std::sync::atomic::Ordering::SeqCst),
        "a new epoch was drawn for events that were never lost"
    );
    let now = log.room_meta(&id).await.unwrap().expect("the room");
    assert_eq!((&now.epoch, now.head.0), (&earlier.epoch, 7));
    assert_eq!(meta, Some(now), "the load gets Redis's current meta");
    s.stop(vec![g]).await;
}

/// A publish the client flags as a resend, whose key Redis no longer has (older than its
/// idempotency window), is looked up in PostgreSQL and answered with its original ack: it is
/// not committed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_flagged_resend_gets_its_original_ack_from_postgres() {
    let s = Setup::new("dur-resend", "chat:resend").await;
    let room = s.room.clone();
    let g1 = s.gateway("gwr1", AckLevel::Memory).await;
    let mut w = Ws::hello(&g1, "writer").await;
    w.join(&room).await;
    for n in 1..=3u64 {
        w.publish(&room, &format!("m{n}"), json!({"n": n})).await;
    }
    s.persisted(3).await;
    drop(w);
    // The keys' buckets expire (the window passed), and the workers trimmed the log (so a
    // gateway loading the room reads no recent keys from it).
    let mut c = s.redis.client();
    let keys = concord_dist::Keys::new(&s.prefix, Partitions::new(1024).unwrap())
        .unwrap()
        .room(&room);
    let _: () = redis::cmd("DEL").arg(&keys.log).query(&mut c).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("floor")
        .arg(4)
        .query(&mut c)
        .unwrap();
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*:i:{room}:*", s.prefix))
        .query(&mut c)
        .unwrap();
    assert!(!buckets.is_empty(), "the commits recorded their keys");
    let _: () = redis::cmd("DEL").arg(&buckets).query(&mut c).unwrap();
    // Another gateway, which never had the room loaded (no key in its memory).
    let g2 = s.gateway("gwr2", AckLevel::Memory).await;
    let mut w = Ws::hello(&g2, "writer").await;
    w.join(&room).await;
    w.send(json!({"type":"publish","room":room,"id":"m2","data":{"n":2},"resend":true}))
        .await;
    let ack = w.recv().await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(2)),
        "{ack}"
    );
    let ack = w.publish(&room, "m4", json!({"n": 4})).await;
    assert_eq!(ack["seq"], 4, "the resend took no seq: {ack}");
    s.persisted(4).await;
    let rows = s.rows().await;
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.op_id.as_deref() == Some("m2"))
            .count(),
        1
    );
    g1.stop().await;
    s.stop(vec![g2]).await;
}
