//! An ambiguous commit (Redis stopped mid-call): the call answers `Unknown`; resubmitting the
//! same op ids once Redis answers again gets the original seqs as duplicates.

use crate::support::*;
use concord_core::{RoomKind, Seq};
use concord_dist::testing::redis::{Persistence, RedisServer};
use concord_dist::{CommitError, RedisLog};
use std::time::Duration;

#[tokio::test]
async fn a_timed_out_commit_is_unknown_and_its_resubmission_answers_the_original() {
    let server = RedisServer::start(Persistence::None);
    let mut cfg = config("amb");
    cfg.call_timeout = Duration::from_millis(300);
    let log = RedisLog::connect(&server.target(), cfg)
        .await
        .expect("connect");
    let r = room("ambiguous");
    create(&log, &r, RoomKind::Stream, "e1").await;
    log.commit(
        &r,
        &req(
            "e1",
            hlc(1_763_812_345_678, 0),
            vec![ev("c", Some("before"), "0")],
        ),
    )
    .await
    .expect("a first commit");

    let batch = vec![ev("c", Some("x1"), "1"), ev("c", Some("x2"), "2")];
    server.pause();
    let got = log
        .commit(&r, &req("e1", hlc(1_763_812_345_678, 0), batch.clone()))
        .await;
    server.resume();
    assert!(
        matches!(got, Err(CommitError::Unknown(_))),
        "a stopped Redis: {got:?}"
    );

    // The call was sent before the stop and runs on SIGCONT: the resubmission finds it.
    let again = log
        .commit(&r, &req("e1", hlc(1_763_812_345_678, 0), batch))
        .await
        .expect("the resubmission");
    assert_eq!(
        again
            .iter()
            .map(|c| (c.seq, c.duplicate))
            .collect::<Vec<_>>(),
        [(Seq(2), true), (Seq(3), true)],
        "the original seqs, as duplicates"
    );
    let logged = log.read_log(&r, Seq::ZERO, 10).await.expect("read");
    assert_eq!(logged.len(), 3, "each event once: {logged:?}");
    assert_eq!(logged[1].hlc, again[0].hlc, "the original hlc");
}

#[tokio::test]
async fn a_killed_redis_makes_calls_unknown_and_a_restart_with_aof_keeps_acked_commits() {
    let mut server = RedisServer::start(Persistence::AofAlways);
    let mut cfg = config("aof");
    cfg.call_timeout = Duration::from_secs(2);
    let log = RedisLog::connect(&server.target(), cfg)
        .await
        .expect("connect");
    let r = room("durable");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let acked = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(1_763_812_345_678, 0),
                vec![ev("c", Some("k1"), "1")],
            ),
        )
        .await
        .expect("acked");
    server.kill();
    let got = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(1_763_812_345_678, 0),
                vec![ev("c", Some("k2"), "2")],
            ),
        )
        .await;
    assert!(
        matches!(got, Err(CommitError::Unknown(_))),
        "Redis is down: {got:?}"
    );
    server.restart();
    // The connection manager reconnects; the function library came back with the AOF.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        match log
            .commit(
                &r,
                &req(
                    "e1",
                    hlc(1_763_812_345_678, 0),
                    vec![ev("c", Some("k1"), "1")],
                ),
            )
            .await
        {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("Redis never came back: {e}"),
        }
    };
    assert_eq!(
        again[0].seq, acked[0].seq,
        "the acked commit survived the kill"
    );
    assert!(again[0].duplicate);
}
