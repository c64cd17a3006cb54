//! Worker throughput benchmark (ignored by default; docs/benchmarks.md records its numbers):
//! `cargo test --release -p concord-dist --test bench_worker -- --ignored --nocapture`
//! Fills the work streams of 64 partitions with CONCORD_BENCH_EVENTS (100000) events over 1000
//! rooms, then runs 1 and then 2 workers in this process and prints events/s persisted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::worker::{all_partitions, Keys, Worker, WorkerMetrics};

async fn fill(prefix: &str, n: usize) {
    let keys = Keys::new(prefix);
    let parts = all_partitions(64);
    let mut conn = redis().await;
    let mut pipe = redis::pipe();
    for i in 0..n {
        let room = i % 1000;
        let p = &parts[room % 64];
        let seq = (i / 1000 + 1).to_string();
        pipe.cmd("XADD")
            .arg(keys.work(p))
            .arg("*")
            .arg(&[
                "r",
                &format!("bench-{room}"),
                "k",
                "stream",
                "e",
                "e1",
                "s",
                &seq,
            ])
            .arg(&[
                "h",
                &hlc(i as u64),
                "f",
                "client-1",
                "o",
                &format!("op-{i}"),
            ])
            .arg("d")
            .arg(format!(
                "{{\"text\":\"message number {i} with some payload\",\"n\":{i}}}"
            ))
            .ignore();
        if i % 5000 == 4999 {
            let _: () = pipe.query_async(&mut conn).await.unwrap();
            pipe = redis::pipe();
        }
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand (docs/benchmarks.md)"]
async fn bench_workers() {
    let n: usize = std::env::var("CONCORD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for workers in [1usize, 2] {
        let db = TestDb::migrated().await;
        let prefix = prefix();
        fill(&prefix, n).await;
        let archive = PgArchive::connect(db.url()).await.unwrap();
        let started = Instant::now();
        let mut stops = Vec::new();
        for w in 0..workers {
            let mut c = config(&prefix, db.url(), &format!("bench-w{w}"));
            c.partitions = all_partitions(64);
            c.total_partitions = 64;
            c.batch_max_events = 2000;
            c.lease = Duration::from_secs(5);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(Worker::run_with(c, WorkerMetrics::new(), |_| {}, async {
                let _ = stopped.await;
            }));
            stops.push(stop);
        }
        while archive.event_count().await.unwrap() < n as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{workers} worker(s): {:.0} events/s persisted ({n} events, 64 partitions, 1000 rooms)",
            n as f64 / secs
        );
        for s in stops {
            let _ = s.send(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        cleanup(&mut redis().await, &prefix).await;
    }
}
