//! Insert-method benchmark (ignored by default; docs/benchmarks.md records its numbers):
//! `cargo test --release -p concord-dist --test bench_insert -- --ignored --nocapture`
//! Writes the same events with each method into a fresh database, in batches of
//! CONCORD_BENCH_BATCH (2000) events over 1000 rooms, CONCORD_BENCH_EVENTS (200000) in all,
//! from CONCORD_BENCH_TASKS (4) concurrent writers; prints events/s.

use std::time::Instant;

use concord_dist::pg::{ArchivedEvent, InsertMethod, PgArchive, PgOptions};
use concord_dist::testing::pg::TestDb;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(n: usize) -> Vec<ArchivedEvent> {
    let rooms = 1000;
    (0..n)
        .map(|i| {
            let room = i % rooms;
            ArchivedEvent {
                partition: (room as u32 * 7919) % 1024,
                room: format!("bench-room-{room}"),
                kind: "stream".into(),
                epoch: "18c0a1b2c3d4e5f6".into(),
                seq: (i / rooms + 1) as u64,
                hlc: format!("{:013}-{:06}-node-1", 1_800_000_000_000u64 + i as u64, 0),
                from: format!("client-{}", i % 97),
                op_id: Some(format!("op-{i}")),
                data: format!("{{\"text\":\"message number {i} with some payload\",\"n\":{i}}}"),
            }
        })
        .collect()
}

async fn run(method: InsertMethod, all: &[ArchivedEvent], batch: usize, tasks: usize) -> f64 {
    let db = TestDb::migrated().await;
    let archive = PgArchive::connect_with(
        db.url(),
        PgOptions {
            max_connections: tasks as u32,
            method,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Each writer takes every tasks-th batch (as workers own disjoint partitions, rooms of a
    // batch here overlap across writers only in the rooms table).
    let batches: Vec<Vec<ArchivedEvent>> = all.chunks(batch).map(|c| c.to_vec()).collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mine: Vec<Vec<ArchivedEvent>> =
            batches.iter().skip(t).step_by(tasks).cloned().collect();
        let a = archive.clone();
        handles.push(tokio::spawn(async move {
            for b in mine {
                a.insert_batch(&b).await.expect("insert");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(archive.event_count().await.unwrap(), all.len() as u64);
    all.len() as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand (docs/benchmarks.md)"]
async fn bench_insert_methods() {
    let n = env("CONCORD_BENCH_EVENTS", 200_000);
    let batch = env("CONCORD_BENCH_BATCH", 2000);
    let tasks = env("CONCORD_BENCH_TASKS", 4);
    let all = events(n);
    for round in 0..2 {
        for method in [InsertMethod::Unnest, InsertMethod::Copy] {
            let rate = run(method, &all, batch, tasks).await;
            println!("round {round} {method:?}: {rate:.0} events/s ({n} events, batches of {batch}, {tasks} writers)");
        }
    }
}
