//! A PostgreSQL outage without touching the shared server: the worker reaches PostgreSQL
//! through a TCP proxy this test stops (every connection cut, new ones refused) and starts
//! again. The worker retries; nothing is acknowledged before its COMMIT.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::worker::{Keys, Worker, WorkerMetrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to 127.0.0.1:5432 that can be taken down and brought back.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused while down
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {} // both sockets drop: the connection is cut
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn url(&self, db: &TestDb) -> String {
        db.url()
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_retried_and_nothing_is_acked_before_commit() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let parts = partitions();
    let p = &parts[2];
    let mut conn = redis().await;
    let archive = PgArchive::connect(db.url()).await.unwrap();
    let metrics = WorkerMetrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config(&prefix, &proxy.url(&db), "w1");
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        Worker::run_with(config, m, |_| {}, async {
            let _ = stopped.await;
        })
        .await
        .expect("worker failed");
    });
    for seq in 1..=50 {
        commit(&mut conn, &keys, p, "out", seq).await;
    }
    wait_until(Duration::from_secs(30), "the first 50 events", || {
        let a = archive.clone();
        async move { a.event_count().await.unwrap() == 50 }
    })
    .await;
    let work = keys.work(p);
    let meta = keys.meta(p, "out");
    let c = conn.clone();
    wait_until(Duration::from_secs(10), "the first 50 acknowledged", || {
        let (mut c, w) = (c.clone(), work.clone());
        async move { xlen(&mut c, &w).await == 0 }
    })
    .await;

    proxy.down();
    for seq in 51..=100 {
        commit(&mut conn, &keys, p, "out", seq).await;
    }
    // The worker keeps failing for a while: it must not acknowledge anything.
    let errors_before = metrics.errors.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        archive.event_count().await.unwrap(),
        50,
        "nothing can be written while PostgreSQL is unreachable"
    );
    assert_eq!(
        xlen(&mut conn, &work).await,
        50,
        "no entry acknowledged (and deleted) without its COMMIT"
    );
    assert_eq!(
        hget_u64(&mut conn, &meta, "wm").await,
        50,
        "the Redis watermark waits for PostgreSQL"
    );
    assert!(
        metrics.errors.get() > errors_before,
        "the worker saw the outage and retried"
    );
    assert_eq!(
        metrics.dead_letters.get(),
        0,
        "an outage never dead-letters"
    );

    proxy.up();
    wait_until(Duration::from_secs(60), "the rest after the outage", || {
        let (a, mut c, w) = (archive.clone(), conn.clone(), work.clone());
        async move {
            a.event_count().await.unwrap() == 100
                && xlen(&mut c, &w).await == 0
                && pending(&mut c, &w).await == 0
        }
    })
    .await;
    let seqs: Vec<u64> = archive
        .read_events("out", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let c = conn.clone();
    wait_until(
        Duration::from_secs(10),
        "the Redis watermark at 100",
        || {
            let (mut c, m) = (c.clone(), meta.clone());
            async move { hget_u64(&mut c, &m, "wm").await == 100 }
        },
    )
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    cleanup(&mut conn, &prefix).await;
}
