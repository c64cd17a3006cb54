//! The gateway's Redis connection under callers that stop polling their calls: a room leaves
//! its pipelined commits unpolled while it waits for something else, and that must never stop
//! the connection for the other calls of the gateway.

use concord_dist::log::RedisConn;
use concord_dist::testing::redis::{TestPrefix, SHARED_REDIS_URL};
use concord_dist::RedisTarget;
use std::future::Future;
use std::task::Context;
use std::time::Duration;

#[tokio::test]
async fn calls_left_unpolled_by_their_callers_do_not_stop_the_connection() {
    let target = RedisTarget::Single(SHARED_REDIS_URL.to_string());
    let conn = RedisConn::connect(&target, Duration::from_secs(2))
        .await
        .expect("the shared Redis");
    // Far more calls than redis-rs queues on one connection (50), each polled once and then
    // held without being polled again.
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut parked = Vec::new();
    for _ in 0..200 {
        let c = conn.clone();
        let mut call = Box::pin(async move { c.query::<String>(&redis::cmd("PING")).await });
        assert!(call.as_mut().poll(&mut cx).is_pending(), "not answered yet");
        parked.push(call);
    }
    // Another caller's call is answered while those are held (the bound only turns a stopped
    // connection into a failure instead of a hang: an answer takes well under a millisecond).
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        conn.query::<String>(&redis::cmd("PING")),
    )
    .await;
    assert!(
        matches!(&answer, Ok(Ok(pong)) if pong == "PONG"),
        "a call behind 200 unpolled ones: {answer:?} (the connection stopped writing)"
    );
    // The held calls were driven all along: each is answered at its first poll after.
    for call in &mut parked {
        let answered = tokio::time::timeout(Duration::from_secs(10), call.as_mut()).await;
        assert!(
            matches!(&answered, Ok(Ok(pong)) if pong == "PONG"),
            "{answered:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_redis_in_the_order_of_their_first_polls() {
    let prefix = TestPrefix::new("conn-order");
    let key = format!("{}:order", prefix.prefix());
    let target = RedisTarget::Single(SHARED_REDIS_URL.to_string());
    let conn = RedisConn::connect(&target, Duration::from_secs(2))
        .await
        .expect("the shared Redis");
    // A room's pipelined commits: many calls in flight at once, more than redis-rs queues,
    // their answers taken in order; Redis must see them in the order they were made.
    const N: usize = 2000;
    let mut calls = futures::stream::FuturesOrdered::new();
    for i in 0..N {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(&key).arg(i);
        let c = conn.clone();
        calls.push_back(async move { c.query::<i64>(&cmd).await });
    }
    let lens: Vec<i64> = futures::StreamExt::collect::<Vec<_>>(calls)
        .await
        .into_iter()
        .map(|r| r.expect("RPUSH"))
        .collect();
    assert_eq!(
        lens,
        (1..=N as i64).collect::<Vec<_>>(),
        "each call saw the list its predecessors left"
    );
    let mut range = redis::cmd("LRANGE");
    range.arg(&key).arg(0).arg(-1);
    let items: Vec<usize> = conn.query(&range).await.expect("LRANGE");
    assert_eq!(
        items,
        (0..N).collect::<Vec<_>>(),
        "Redis got the calls in order"
    );
}
