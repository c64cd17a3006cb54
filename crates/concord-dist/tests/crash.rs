//! Crashes of real worker processes: this test binary re-runs itself as a worker
//! (`child_worker`, configured by environment variables) and the tests SIGKILL it between
//! COMMIT and XACK and mid-batch (failpoints, feature `fault-injection`), or SIGSTOP it past
//! its lease; another worker process then finishes: nothing lost, nothing doubled.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::worker::{Keys, Partition, Worker, WorkerMetrics};

/// The worker process: runs only when spawned by a test (CONCORD_CHILD_WORKER set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process spawned by the crash tests"]
async fn child_worker() {
    let Ok(id) = std::env::var("CONCORD_CHILD_WORKER") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let mut config = config(&var("CHILD_PREFIX"), &var("CHILD_PG"), &id);
    config.concurrency = var("CHILD_CONCURRENCY").parse().unwrap();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    config.migrate = false;
    Worker::run_with(
        config,
        WorkerMetrics::new(),
        |addr| println!("READY {}", addr.expect("metrics address")),
        std::future::pending::<()>(),
    )
    .await
    .expect("worker failed");
}

struct Proc {
    child: Child,
    metrics: String,
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.metrics)
            .await
            .expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a worker process; with `failpoint`, returns as soon as it started (it will kill
/// itself), else once it serves.
fn start(prefix: &str, pg: &str, id: &str, failpoint: Option<&str>, concurrency: usize) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_worker",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CONCORD_CHILD_WORKER", id)
    .env("CHILD_PREFIX", prefix)
    .env("CHILD_PG", pg)
    .env("CHILD_CONCURRENCY", concurrency.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    match failpoint {
        Some(f) => cmd.env("CONCORD_WORKER_FAILPOINT", f),
        None => cmd.env_remove("CONCORD_WORKER_FAILPOINT"),
    };
    let mut child = cmd.spawn().expect("spawn the worker process");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let metrics = loop {
        let line = lines
            .next()
            .expect("the worker process ended before it was ready")
            .unwrap();
        // The harness prints "test child_worker ... " on the same line first.
        if let Some(i) = line.find("READY ") {
            break line[i + 6..].trim().to_string();
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Proc { child, metrics }
}

/// Each room's events in PostgreSQL are exactly 1..=head, and its watermark is head.
async fn check_exact(archive: &PgArchive, rooms: &[(String, u64)]) {
    for (room, head) in rooms {
        let seqs: Vec<u64> = archive
            .read_events(room, 0, 100_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=*head).collect::<Vec<_>>(),
            "{room}: lost or doubled events"
        );
        assert_eq!(
            archive.watermark(room).await.unwrap(),
            Some(("e1".into(), *head)),
            "{room}: watermark"
        );
    }
}

async fn drained(
    conn: &redis::aio::MultiplexedConnection,
    keys: &Keys,
    parts: &[Partition],
) -> bool {
    let mut c = conn.clone();
    for p in parts {
        if pending(&mut c, &keys.work(p)).await != 0 || xlen(&mut c, &keys.work(p)).await != 0 {
            return false;
        }
    }
    true
}

async fn crash_at(failpoint: &str) {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let used: Vec<Partition> = vec![parts[1].clone(), parts[7].clone()];
    let mut conn = redis().await;
    let rooms: Vec<(String, u64)> = (0..4).map(|i| (format!("crash-{i}"), 150)).collect();
    for seq in 1..=150u64 {
        for (i, (room, _)) in rooms.iter().enumerate() {
            commit(&mut conn, &keys, &used[i % 2], room, seq).await;
        }
    }
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let mut first = start(&prefix, db.url(), "crashing", Some(failpoint), 1);
    let status = tokio::task::spawn_blocking(move || first.child.wait().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{failpoint}: the worker must die by SIGKILL at the failpoint"
    );
    let at_kill = archive.event_count().await.unwrap();
    let mut c = conn.clone();
    let pending_at_kill =
        pending(&mut c, &keys.work(&used[0])).await + pending(&mut c, &keys.work(&used[1])).await;
    assert!(
        pending_at_kill >= 1,
        "{failpoint}: the batch in flight is still pending"
    );
    match failpoint {
        // One batch committed (50 events), none acknowledged.
        "after-commit" => assert_eq!(
            at_kill, 50,
            "after-commit: the committed batch is in PostgreSQL"
        ),
        // Killed inside the first transaction: it rolled back.
        _ => assert_eq!(at_kill, 0, "mid-batch: the open transaction rolled back"),
    }
    let second = start(&prefix, db.url(), "successor", None, 2);
    wait_until(
        Duration::from_secs(60),
        "the successor persisted everything",
        || {
            let a = archive.clone();
            let c = conn.clone();
            let (k, u) = (keys.clone(), used.clone());
            async move { a.event_count().await.unwrap() == 600 && drained(&c, &k, &u).await }
        },
    )
    .await;
    check_exact(&archive, &rooms).await;
    // The killed worker's consumer (nothing pending any more) is forgotten by the successor.
    for p in &used {
        let (c, key) = (conn.clone(), keys.work(p));
        wait_until(
            Duration::from_secs(20),
            "only the successor's consumer left",
            || {
                let (mut c, key) = (c.clone(), key.clone());
                async move { consumers(&mut c, &key).await == ["successor"] }
            },
        )
        .await;
    }
    let text = second.metrics().await;
    let redelivered = metric(&text, "concord_worker_redeliveries_total").unwrap_or(0.0);
    assert!(
        redelivered >= 50.0,
        "{failpoint}: the successor counts the entries of the killed batch as redeliveries (got {redelivered})"
    );
    drop(second);
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_commit_and_xack_loses_and_doubles_nothing() {
    crash_at("after-commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_and_doubles_nothing() {
    crash_at("mid-batch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_lease_then_sigcont_regresses_nothing() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let mut conn = redis().await;
    let rooms: Vec<(String, usize)> = (0..8).map(|i| (format!("stop-{i}"), i * 2)).collect();
    let used: Vec<Partition> = rooms.iter().map(|(_, p)| parts[*p].clone()).collect();
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let a = start(&prefix, db.url(), "wa", None, 2);
    let b = start(&prefix, db.url(), "wb", None, 2);
    // Watch for regressions of any watermark (PostgreSQL and Redis) the whole time.
    let (watch_stop, mut watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let (archive, c, keys, rooms, parts) = (
            archive.clone(),
            conn.clone(),
            keys.clone(),
            rooms.clone(),
            parts.clone(),
        );
        tokio::spawn(async move {
            let mut last = vec![(0u64, 0u64); rooms.len()];
            loop {
                for (i, (room, p)) in rooms.iter().enumerate() {
                    let pg = archive
                        .watermark(room)
                        .await
                        .unwrap()
                        .map(|w| w.1)
                        .unwrap_or(0);
                    let rd = hget_u64(&mut c.clone(), &keys.meta(&parts[*p], room), "wm").await;
                    assert!(
                        pg >= last[i].0,
                        "{room}: PostgreSQL watermark went back {} → {pg}",
                        last[i].0
                    );
                    assert!(
                        rd >= last[i].1,
                        "{room}: Redis watermark went back {} → {rd}",
                        last[i].1
                    );
                    last[i] = (pg, rd);
                }
                if watch_stopped.try_recv().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut seq = 0u64;
    let mut write = |n: u64| {
        let (mut c, keys, rooms, parts) =
            (conn.clone(), keys.clone(), rooms.clone(), parts.clone());
        let from = seq + 1;
        seq += n;
        async move {
            for s in from..from + n {
                for (room, p) in &rooms {
                    commit(&mut c, &keys, &parts[*p], room, s).await;
                }
            }
        }
    };
    write(40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("-STOP");
    // Past the lease (1 s) and the claim idle time, while events keep coming.
    for _ in 0..6 {
        write(10).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    a.signal("-CONT");
    for _ in 0..4 {
        write(10).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let head = seq;
    let total = head * rooms.len() as u64;
    wait_until(
        Duration::from_secs(60),
        "every event persisted after SIGCONT",
        || {
            let a = archive.clone();
            let c = conn.clone();
            let (k, u) = (keys.clone(), used.clone());
            async move { a.event_count().await.unwrap() == total && drained(&c, &k, &u).await }
        },
    )
    .await;
    let expected: Vec<(String, u64)> = rooms.iter().map(|(r, _)| (r.clone(), head)).collect();
    check_exact(&archive, &expected).await;
    for (room, p) in &rooms {
        let meta = keys.meta(&parts[*p], room);
        let c = conn.clone();
        wait_until(Duration::from_secs(10), "Redis watermarks = heads", || {
            let (mut c, meta) = (c.clone(), meta.clone());
            async move { hget_u64(&mut c, &meta, "wm").await == head }
        })
        .await;
    }
    let _ = watch_stop.send(());
    watcher.await.expect("a watermark went back");
    drop((a, b));
    cleanup(&mut conn, &prefix).await;
}

/// A worker stopped (SIGSTOP) inside its open transaction (row locks held) past its lease:
/// PostgreSQL ends that session (idle_in_transaction_session_timeout = lease), so the other
/// worker persists everything; after SIGCONT the zombie's COMMIT fails and nothing is doubled
/// or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_inside_a_transaction_does_not_stall_the_next_owner() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let used: Vec<Partition> = vec![parts[3].clone(), parts[11].clone()];
    let mut conn = redis().await;
    let rooms: Vec<(String, u64)> = (0..4).map(|i| (format!("zombie-{i}"), 100)).collect();
    for seq in 1..=100u64 {
        for (i, (room, _)) in rooms.iter().enumerate() {
            commit(&mut conn, &keys, &used[i % 2], room, seq).await;
        }
    }
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let zombie = start(&prefix, db.url(), "zombie", Some("hold-mid-batch"), 1);
    // Its first transaction is open (the failpoint holds it there): stop the process.
    wait_until(
        Duration::from_secs(30),
        "the worker's transaction to be open",
        || {
            let a = archive.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state = 'idle in transaction'",
                )
                .fetch_one(a.pool())
                .await
                .unwrap();
                n == 1
            }
        },
    )
    .await;
    zombie.signal("-STOP");
    assert_eq!(
        archive.event_count().await.unwrap(),
        0,
        "nothing committed yet"
    );
    let other = start(&prefix, db.url(), "other", None, 2);
    wait_until(
        Duration::from_secs(60),
        "the other worker persisted everything",
        || {
            let a = archive.clone();
            let c = conn.clone();
            let (k, u) = (keys.clone(), used.clone());
            async move { a.event_count().await.unwrap() == 400 && drained(&c, &k, &u).await }
        },
    )
    .await;
    zombie.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    check_exact(&archive, &rooms).await;
    assert!(
        drained(&conn, &keys, &used).await,
        "nothing left pending after the zombie woke up"
    );
    drop((zombie, other));
    cleanup(&mut conn, &prefix).await;
}
