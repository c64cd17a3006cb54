//! The store role contracts of concord-server (`store::suite`) run against the parts of the
//! distributed mode that play each role: `CommitLog` — `RedisCommitLog` on the shared Redis
//! (a key prefix per test), read back through `RedisStore`; `History` — `RedisStore` over
//! events committed through Redis, some archived to PostgreSQL and trimmed out of the Redis
//! stream; `Archive` and `ClientRegistry` — `PgArchive` (a fresh database per test). Then what
//! only Redis answers: a stale fence, and `Unknown` for an append in flight while Redis is
//! stopped, which lands once when handed over again.

use crate::support::*;
use async_trait::async_trait;
use concord_core::{Epoch, RoomId, RoomKind, Seq};
use concord_dist::gateway::RedisStore;
use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::testing::redis::{Persistence, RedisServer, TestPrefix};
use concord_dist::{RedisCommitLog, RedisLog};
use concord_server::store::suite::{self, ev, put, Seeder};
use concord_server::store::{
    Append, Archive, ClientRegistry, CommitLog, Durability, History, StoreError, StoredEvent,
};
use std::sync::Arc;
use std::time::Duration;

/// A commit log on the shared Redis, the history that reads it, what it promises, its prefix.
async fn redis_log() -> (Arc<dyn CommitLog>, Arc<dyn History>, Durability, TestPrefix) {
    let (prefix, log) = shared("roles-log").await;
    let log = Arc::new(log);
    (
        Arc::new(RedisCommitLog::new(log.clone(), Durability::Memory)),
        Arc::new(RedisStore::new(log, None)),
        Durability::Memory,
        prefix,
    )
}

concord_server::commit_log_suite!(redis_commit_log, redis_log().await);

/// Commits through Redis; retires by archiving to PostgreSQL (as a worker does) and trimming
/// the Redis stream below the watermark (`concord_persisted`).
struct RedisPgSeeder {
    log: Arc<RedisLog>,
    commit: RedisCommitLog,
    archive: PgArchive,
    history: Arc<RedisStore>,
}

#[async_trait]
impl Seeder for RedisPgSeeder {
    fn history(&self) -> Arc<dyn History> {
        self.history.clone()
    }

    async fn seed(&self, room: &RoomId, kind: RoomKind, events: Vec<StoredEvent>) {
        self.commit
            .create_room(room, kind, &suite::epoch())
            .await
            .unwrap();
        for e in events {
            put(&self.commit, room, vec![e]).await.unwrap();
        }
    }

    async fn retire(&self, room: &RoomId, before: Seq) -> Seq {
        let meta = self.log.room_meta(room).await.unwrap().unwrap();
        let upto = (before.0 - 1).min(meta.head.0);
        let from = Seq(meta.floor.0.saturating_sub(1));
        let logged = self.log.read_log(room, from, 10_000).await.unwrap();
        let events: Vec<StoredEvent> = logged
            .into_iter()
            .filter(|e| e.seq.0 <= upto)
            .map(|e| StoredEvent {
                seq: e.seq,
                hlc: e.hlc,
                from: e.from,
                op_id: e.op_id,
                data: serde_json::value::RawValue::from_string(e.data).unwrap(),
            })
            .collect();
        self.archive
            .upsert(room, meta.kind, &meta.epoch, events)
            .await
            .unwrap();
        if upto > 0 {
            self.log
                .persisted(room, &meta.epoch, Seq(upto), 0)
                .await
                .unwrap();
            // The events below the watermark left the Redis stream: reads of them cross into
            // PostgreSQL.
            let floor = self.log.room_meta(room).await.unwrap().unwrap().floor;
            assert!(
                floor.0 >= upto,
                "floor {floor:?} below the watermark {upto}"
            );
            let below = self.log.read_log(room, Seq(0), 1).await.unwrap();
            assert!(below.first().is_none_or(|e| e.seq.0 >= upto), "{below:?}");
        }
        // Everything stays readable: below the stream's floor from PostgreSQL.
        Seq(1)
    }
}

async fn redis_pg() -> (Arc<dyn Seeder>, (TestPrefix, TestDb)) {
    let db = TestDb::migrated().await;
    let archive = PgArchive::connect(db.url()).await.expect("the archive");
    archive.ensure_partitions(1024).await.unwrap();
    let (prefix, log) = shared("roles-history").await;
    let log = Arc::new(log);
    let seeder = RedisPgSeeder {
        commit: RedisCommitLog::new(log.clone(), Durability::Memory),
        history: Arc::new(RedisStore::new(log.clone(), Some(archive.clone()))),
        log,
        archive,
    };
    (Arc::new(seeder), (prefix, db))
}

concord_server::history_suite!(redis_pg_history, redis_pg().await);

async fn pg_archive() -> (Arc<dyn Archive>, Arc<dyn History>, TestDb) {
    let db = TestDb::migrated().await;
    let archive = PgArchive::connect(db.url()).await.expect("the archive");
    archive.ensure_partitions(1024).await.unwrap();
    let archive = Arc::new(archive);
    (archive.clone(), archive, db)
}

concord_server::archive_suite!(pg_archive_roles, pg_archive().await);

async fn pg_registry() -> (Arc<dyn ClientRegistry>, TestDb) {
    let db = TestDb::migrated().await;
    let archive = PgArchive::connect(db.url()).await.expect("the archive");
    (Arc::new(archive), db)
}

concord_server::registry_suite!(pg_registry_roles, pg_registry().await);

/// A writer whose fence is stale (another owner acquired the doc room since) is `Fenced`,
/// with the room's fence; nothing of its append lands; the new owner's fence commits.
#[tokio::test]
async fn an_append_under_a_stale_fence_is_fenced() {
    let (_prefix, log) = shared("roles-fence").await;
    let log = Arc::new(log);
    let commit = RedisCommitLog::new(log.clone(), Durability::Memory);
    let history = RedisStore::new(log.clone(), None);
    let r = room("doc:fenced");
    commit
        .create_room(&r, RoomKind::Doc, &suite::epoch())
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let first = log.acquire_lease(&r, "a", lease).await.unwrap().unwrap();
    let fenced = |fence: u64, events: Vec<StoredEvent>| {
        let mut append = Append::new(suite::epoch(), events);
        append.fence = Some(fence);
        append
    };
    let got = commit
        .append(&r, fenced(first, vec![ev(1, "a", Some("a1"))]))
        .await;
    assert_eq!(got.unwrap(), Durability::Memory);
    assert!(log.release_lease(&r, "a").await.unwrap());
    let second = log.acquire_lease(&r, "b", lease).await.unwrap().unwrap();
    assert!(second > first);
    let stale = commit
        .append(&r, fenced(first, vec![ev(2, "a", Some("a2"))]))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Fenced { current, .. }) if current == second),
        "{stale:?}"
    );
    assert_eq!(history.load_room(&r).await.unwrap().unwrap().head, Seq(1));
    commit
        .append(&r, fenced(second, vec![ev(2, "b", Some("b2"))]))
        .await
        .unwrap();
    let all = history.read_events(&r, Seq(0), 10).await.unwrap();
    let froms: Vec<&str> = all.iter().map(|e| e.from.as_str()).collect();
    assert_eq!(froms, ["a", "b"]);
}

/// An append in flight while Redis is stopped (SIGSTOP) is `Unknown`; once Redis runs again,
/// the same append handed over again is answered as landed, and the log holds its events once
/// (head, events, op ids; an event without an op id is recognised by its proposed hlc). A
/// third hand-over changes nothing either.
#[tokio::test]
async fn an_append_in_flight_while_redis_is_stopped_is_unknown_and_lands_once() {
    let server = RedisServer::start(Persistence::None);
    let mut cfg = config("roles-unknown");
    cfg.call_timeout = Duration::from_millis(300);
    let log = Arc::new(
        RedisLog::connect(&server.target(), cfg)
            .await
            .expect("connect"),
    );
    let commit = RedisCommitLog::new(log.clone(), Durability::Memory);
    let history = RedisStore::new(log.clone(), None);
    let r = room("unknown");
    commit
        .create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    put(&commit, &r, vec![ev(1, "c", Some("u1"))])
        .await
        .unwrap();
    let batch = vec![
        ev(2, "c", Some("u2")),
        ev(3, "c", None),
        ev(4, "d", Some("u4")),
    ];
    server.pause();
    let got = put(&commit, &r, batch.clone()).await;
    server.resume();
    assert!(
        matches!(got, Err(StoreError::Unknown(_))),
        "an append to a stopped Redis: {got:?}"
    );
    for round in 0..2 {
        let again = put(&commit, &r, batch.clone()).await;
        assert_eq!(again.unwrap(), Durability::Memory, "hand-over {round}");
        let all = history.read_events(&r, Seq(0), 100).await.unwrap();
        let got: Vec<(u64, &str, Option<&str>)> = all
            .iter()
            .map(|e| {
                (
                    e.seq.0,
                    e.from.as_str(),
                    e.op_id.as_ref().map(|o| o.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "c", Some("u1")),
                (2, "c", Some("u2")),
                (3, "c", None),
                (4, "d", Some("u4"))
            ],
            "each event once (hand-over {round})"
        );
        let rec = history.load_room(&r).await.unwrap().unwrap();
        assert_eq!(rec.head, Seq(4));
        assert_eq!(rec.head_hlc.as_ref(), Some(&all[3].hlc));
    }
    // The log goes on from there.
    put(&commit, &r, vec![ev(5, "c", Some("u5"))])
        .await
        .unwrap();
    assert_eq!(history.load_room(&r).await.unwrap().unwrap().head, Seq(5));
}
