//! The persistence worker end to end against the machine's Redis (a key prefix per test) and
//! PostgreSQL (a fresh database per test), workers running in this process.

mod common;

use std::time::Duration;

use common::*;
use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::worker::{Keys, Worker, WorkerMetrics};
use tokio::sync::oneshot;

/// Starts a worker task; returns its stop switch and its join handle.
fn spawn(
    config: concord_dist::worker::WorkerConfig,
    metrics: WorkerMetrics,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Worker::run_with(config, metrics, |_| {}, async {
            let _ = stopped.await;
        })
        .await
        .expect("worker failed");
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_persist_every_event_exactly_once() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let mut conn = redis().await;
    // 8 rooms over 4 partitions, 60 events each, interleaved.
    let rooms: Vec<(String, usize)> = (0..8).map(|i| (format!("room-{i}"), i % 4 * 3)).collect();
    for seq in 1..=60u64 {
        for (room, p) in &rooms {
            commit(&mut conn, &keys, &parts[*p], room, seq).await;
        }
    }
    let total = 8 * 60;
    let (m1, m2) = (WorkerMetrics::new(), WorkerMetrics::new());
    let (s1, t1) = spawn(config(&prefix, db.url(), "w1"), m1.clone());
    let (s2, t2) = spawn(config(&prefix, db.url(), "w2"), m2.clone());
    // More events while they run.
    for seq in 61..=80u64 {
        for (room, p) in &rooms {
            commit(&mut conn, &keys, &parts[*p], room, seq).await;
        }
    }
    let total = total + 8 * 20;
    let archive = PgArchive::connect(db.url()).await.unwrap();
    wait_until(Duration::from_secs(60), "every event in PostgreSQL", || {
        let a = archive.clone();
        async move { a.event_count().await.unwrap() == total as u64 }
    })
    .await;
    let work_keys: Vec<String> = [0usize, 3, 6, 9]
        .iter()
        .map(|p| keys.work(&parts[*p]))
        .collect();
    let mut c2 = conn.clone();
    let wk = work_keys.clone();
    wait_until(
        Duration::from_secs(30),
        "work streams drained and trimmed",
        || {
            let mut c = c2.clone();
            let wk = wk.clone();
            async move {
                for k in &wk {
                    if pending(&mut c, k).await != 0 || xlen(&mut c, k).await != 0 {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    for (room, p) in &rooms {
        let rows = archive.read_events(room, 0, 1000).await.unwrap();
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (1..=80).collect::<Vec<_>>(),
            "{room}: every seq exactly once, in order"
        );
        assert_eq!(rows[41].data, format!("{{\"room\":\"{room}\",\"seq\":42}}"));
        assert_eq!(
            archive.watermark(room).await.unwrap(),
            Some(("e1".into(), 80)),
            "{room}: PostgreSQL watermark = head"
        );
        let meta = keys.meta(&parts[*p], room);
        wait_until(Duration::from_secs(10), "Redis watermark = head", || {
            let mut c = c2.clone();
            let meta = meta.clone();
            async move { hget_u64(&mut c, &meta, "wm").await == 80 }
        })
        .await;
        // The room's log keeps log_keep events below the watermark (and the head).
        let log_len = xlen(&mut c2, &keys.log(&parts[*p], room)).await;
        assert_eq!(
            log_len, 6,
            "{room}: log trimmed below wm − keep (75..=80 stay)"
        );
        assert_eq!(hget_u64(&mut c2, &meta, "floor").await, 75);
    }
    // The 16 partitions end up split evenly (⌈16 / 2⌉ each).
    wait_until(Duration::from_secs(20), "8 partitions per worker", || {
        let (a, b) = (m1.partitions_owned.get(), m2.partitions_owned.get());
        async move { a == 8 && b == 8 }
    })
    .await;
    let _ = s1.send(());
    let _ = s2.send(());
    t1.await.unwrap();
    t2.await.unwrap();
    // A clean stop gives the leases back.
    for p in &parts {
        let owner: Option<String> = redis::cmd("GET")
            .arg(keys.owner(p))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            owner, None,
            "partition {} still leased after a clean stop",
            p.number
        );
    }
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_exactly() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let mut conn = redis().await;
    let p = &parts[5];
    let hlc1 = hlc(1);
    let full = |room: &'static str,
                seq: &'static [u8],
                data: &'static [u8],
                hlc: &str|
     -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("r", room.as_bytes().to_vec()),
            ("k", b"stream".to_vec()),
            ("e", b"e1".to_vec()),
            ("s", seq.to_vec()),
            ("h", hlc.as_bytes().to_vec()),
            ("f", b"c1".to_vec()),
            ("d", data.to_vec()),
        ]
    };
    // M = 4 poison entries among 90 good ones: a missing field, a seq that is not a number,
    // data that is not UTF-8, and data PostgreSQL refuses (a NUL byte in text).
    let poison: Vec<Vec<(&str, Vec<u8>)>> = vec![
        full("bad-a", b"1", b"{}", &hlc1)
            .into_iter()
            .filter(|(k, _)| *k != "h")
            .collect(),
        full("bad-b", b"one", b"{}", &hlc1),
        full("bad-c", b"1", b"\xff\xfe", &hlc1),
        full("bad-d", b"1", b"{\"a\":\"\0\"}", &hlc1),
    ];
    for seq in 1..=90u64 {
        commit(&mut conn, &keys, p, "good", seq).await;
        if seq % 20 == 0 {
            let fields = &poison[(seq / 20 - 1) as usize];
            let f: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            raw_entry(&mut conn, &keys, p, &f).await;
        }
    }
    let metrics = WorkerMetrics::new();
    let (stop, task) = spawn(config(&prefix, db.url(), "w1"), metrics.clone());
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let dead_key = keys.dead(p);
    let work_key = keys.work(p);
    let c = conn.clone();
    wait_until(
        Duration::from_secs(60),
        "4 dead letters and 90 events",
        || {
            let (a, mut c, dk, wk) = (
                archive.clone(),
                c.clone(),
                dead_key.clone(),
                work_key.clone(),
            );
            async move {
                a.event_count().await.unwrap() == 90
                    && xlen(&mut c, &dk).await == 4
                    && pending(&mut c, &wk).await == 0
                    && xlen(&mut c, &wk).await == 0
            }
        },
    )
    .await;
    // Stays so: nothing more is dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        xlen(&mut conn, &dead_key).await,
        4,
        "exactly the injected entries in the dead stream"
    );
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT fields, error, deliveries FROM dead_letters ORDER BY id")
            .fetch_all(archive.pool())
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        4,
        "exactly the injected entries in dead_letters: {rows:?}"
    );
    for (fields, error, deliveries) in &rows {
        assert!(
            *deliveries >= 3,
            "dead-lettered after {deliveries} deliveries (max 3): {fields}"
        );
        assert!(!error.is_empty());
    }
    assert!(
        rows.iter()
            .any(|(f, e, _)| f.contains("bad-d") && e.starts_with("refused")),
        "the NUL entry was refused by PostgreSQL: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(f, e, _)| f.contains("bad-a") && e.contains("field h missing")),
        "{rows:?}"
    );
    let seqs: Vec<u64> = archive
        .read_events("good", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=90).collect::<Vec<_>>());
    assert_eq!(metrics.dead_letters.get(), 4);
    let _ = stop.send(());
    task.await.unwrap();
    cleanup(&mut conn, &prefix).await;
}

/// A watermark Redis refused to take (the room's meta was unusable) after the events were
/// committed and acknowledged is raised later, although the room gets no more events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_watermark_update_is_retried_without_new_events() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let p = &parts[6];
    let mut conn = redis().await;
    for seq in 1..=10 {
        commit(&mut conn, &keys, p, "wm-room", seq).await;
    }
    // The meta becomes a string: the watermark call fails with WRONGTYPE.
    let meta = keys.meta(p, "wm-room");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&meta)
        .cmd("SET")
        .arg(&meta)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let metrics = WorkerMetrics::new();
    let (stop, task) = spawn(config(&prefix, db.url(), "w1"), metrics.clone());
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let work = keys.work(p);
    let c = conn.clone();
    wait_until(
        Duration::from_secs(30),
        "events persisted and acknowledged",
        || {
            let (a, mut c, w) = (archive.clone(), c.clone(), work.clone());
            async move { a.event_count().await.unwrap() == 10 && xlen(&mut c, &w).await == 0 }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the worker to see the failure",
        || {
            let m = metrics.clone();
            async move { m.errors.get() > 0 }
        },
    )
    .await;
    // Redis takes it again: the watermark follows with no new event.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&meta)
        .cmd("HSET")
        .arg(&meta)
        .arg("epoch")
        .arg("e1")
        .arg("head")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    let c = conn.clone();
    wait_until(Duration::from_secs(30), "the Redis watermark at 10", || {
        let (mut c, m) = (c.clone(), meta.clone());
        async move { hget_u64(&mut c, &m, "wm").await == 10 }
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// Doc rooms are snapshotted by the workers at every multiple of `snapshot_every`, by
/// replaying the persisted op lists on the previous snapshot; older snapshots beyond
/// `snapshots_kept` are deleted; stream rooms get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_rooms_are_snapshotted_by_replaying_their_ops() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let p = &parts[3];
    let mut conn = redis().await;
    // List k sets n = k and adds k to a counter; list 1 also creates the counter.
    let list = |k: u64| {
        let mut ops = vec![serde_json::json!({"op":"set","path":["n"],"value":k})];
        if k == 1 {
            ops.push(serde_json::json!({"op":"set","path":["sum"],"value":0}));
        }
        ops.push(serde_json::json!({"op":"add","path":["sum"],"value":k}));
        serde_json::Value::Array(ops).to_string()
    };
    for seq in 1..=16 {
        commit_as(&mut conn, &keys, p, ("doc-snap", "doc"), seq, &list(seq)).await;
        commit(&mut conn, &keys, p, "stream-snap", seq).await;
    }
    let mut config = config(&prefix, db.url(), "w1");
    config.snapshot_every = 5;
    config.snapshots_kept = 2;
    // Small batches: each multiple of 5 lands in a batch of its own (a batch snapshots only
    // the highest multiple it reached).
    config.batch_max_events = 4;
    let metrics = WorkerMetrics::new();
    let (stop, task) = spawn(config, metrics.clone());
    let archive = PgArchive::connect(db.url()).await.unwrap();
    wait_until(Duration::from_secs(30), "three snapshots", || {
        let m = metrics.clone();
        async move { m.snapshots.get() >= 3 }
    })
    .await;
    let state_at = |k: u64| serde_json::json!({"n": k, "sum": k * (k + 1) / 2});
    let (seq, text) = archive
        .load_snapshot("doc-snap", None)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(seq, 15);
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state, state_at(15));
    let (seq, text) = archive
        .load_snapshot("doc-snap", Some(14))
        .await
        .unwrap()
        .expect("the one before");
    assert_eq!(
        (
            seq,
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        ),
        (10, state_at(10))
    );
    assert_eq!(
        archive.load_snapshot("doc-snap", Some(9)).await.unwrap(),
        None,
        "the snapshot at 5 was deleted (2 kept)"
    );
    assert_eq!(
        archive.load_snapshot("stream-snap", None).await.unwrap(),
        None
    );
    assert_eq!(metrics.snapshot_errors.get(), 0);
    let _ = stop.send(());
    task.await.unwrap();
}
