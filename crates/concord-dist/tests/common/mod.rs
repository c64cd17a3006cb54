//! Helpers shared by the worker tests: work entries written as the commit function writes
//! them, Redis state read back, a key prefix per test, waiting on conditions.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use concord_dist::testing::redis::TestPrefix;
use concord_dist::worker::{all_partitions, Keys, Partition, WorkerConfig};
use redis::aio::MultiplexedConnection;

pub const REDIS: &str = "redis://127.0.0.1:6379";
/// P of the test clusters (tags are computed for it).
pub const P: u32 = 16;

pub fn partitions() -> Vec<Partition> {
    all_partitions(P)
}

/// A key prefix of its own (each test's keys are apart); its keys are deleted when it drops,
/// a failed test's included.
pub fn prefix() -> TestPrefix {
    TestPrefix::new("worker")
}

pub async fn redis() -> MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("the machine's Redis at 127.0.0.1:6379")
}

/// A worker config for tests: short lease, small batches, quick polling.
pub fn config(prefix: &str, pg_url: &str, id: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(REDIS, pg_url, partitions(), P);
    c.redis_prefix = prefix.to_string();
    c.worker_id = id.to_string();
    c.lease = Duration::from_millis(1000);
    c.batch_max_events = 50;
    c.batch_max_wait = Duration::from_millis(10);
    c.idle_poll_max = Duration::from_millis(50);
    c.retry_delay = Duration::from_millis(100);
    c.max_deliveries = 3;
    c.log_keep = 5;
    c.consumer_idle_max = Duration::from_secs(2);
    c.postgres.acquire_timeout = Duration::from_secs(1);
    c
}

pub fn hlc(seq: u64) -> String {
    format!("{:013}-{:06}-n1", 1_800_000_000_000u64 + seq, 0)
}

/// Appends event `seq` of `room` as the commit function does: the room's meta (epoch, head),
/// its log stream (id seq-0) and the partition's work stream.
pub async fn commit(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    p: &Partition,
    room: &str,
    seq: u64,
) {
    let data = format!("{{\"room\":\"{room}\",\"seq\":{seq}}}");
    commit_as(conn, keys, p, (room, "stream"), seq, &data).await;
}

/// Like [`commit`], for a room of `kind` with event data `data` (a doc room's op list).
pub async fn commit_as(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    p: &Partition,
    (room, kind): (&str, &str),
    seq: u64,
    data: &str,
) {
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(keys.meta(p, room))
        .arg("kind")
        .arg(kind)
        .arg("epoch")
        .arg("e1")
        .arg("head")
        .arg(seq)
        .ignore()
        .cmd("XADD")
        .arg(keys.log(p, room))
        .arg(format!("{seq}-0"))
        .arg("d")
        .arg(data)
        .ignore()
        .cmd("XADD")
        .arg(keys.work(p))
        .arg("*")
        .arg("r")
        .arg(room)
        .arg("k")
        .arg(kind)
        .arg("e")
        .arg("e1")
        .arg("s")
        .arg(seq)
        .arg("h")
        .arg(hlc(seq))
        .arg("f")
        .arg("c1")
        .arg("o")
        .arg(format!("{room}-op{seq}"))
        .arg("d")
        .arg(data)
        .ignore()
        .query_async(conn)
        .await
        .expect("commit to Redis");
}

/// Adds a raw work entry (for poison tests).
pub async fn raw_entry(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    p: &Partition,
    fields: &[(&str, &[u8])],
) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys.work(p)).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(conn).await.expect("XADD");
}

pub async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Entries pending in the `persist` group (0 when the group does not exist).
pub async fn pending(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    let v: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(key)
        .arg("persist")
        .query_async(conn)
        .await;
    match v {
        Ok(redis::Value::Array(a)) => match a.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

pub async fn hget_u64(conn: &mut MultiplexedConnection, key: &str, field: &str) -> u64 {
    let v: Option<u64> = redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .expect("HGET");
    v.unwrap_or(0)
}

/// Deletes every key of the prefix.
pub async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(conn)
                .await
                .expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one sample of a metric from a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// The consumer names of a work stream's `persist` group.
pub async fn consumers(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    let v: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg("persist")
        .query_async(conn)
        .await
        .expect("XINFO CONSUMERS");
    let mut names = Vec::new();
    if let redis::Value::Array(list) = v {
        for c in list {
            if let redis::Value::Array(kv) = c {
                if let Some(redis::Value::BulkString(name)) = kv.get(1) {
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
    }
    names.sort();
    names
}
