//! concord_commit: gap-free seqs under concurrent committers, strictly increasing hlcs,
//! duplicates answered with their original seq and hlc, every refusal before any write.

use crate::support::*;
use concord_core::{ManualClock, RoomKind, Seq};
use concord_dist::{CommitError, Committed, RedisLog};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const BASE_MS: u64 = 1_763_812_345_678;

fn seed() -> u64 {
    std::env::var("CONCORD_DIST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_203)
}

/// 8 committers × 500 events on their own connections into two rooms, with resubmitted
/// batches and proposed hlcs that jump backwards: each room's log and work stream hold seqs
/// 1..=N exactly once and in order, hlcs strictly increase with the seq, every op key has one
/// seq, and every answer (duplicates included) matches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_committers_get_gap_free_seqs_and_increasing_hlcs() {
    let (prefix, log) = shared("concurrent").await;
    println!("CONCORD_DIST_SEED={} reproduces this run", seed());
    let rooms = [room("busy-a"), room("busy-b")];
    for r in &rooms {
        create(&log, r, RoomKind::Stream, "e1").await;
    }
    let seed = seed();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let prefix = prefix.prefix().to_string();
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            let log = RedisLog::connect(
                &concord_dist::testing::redis::TestPrefix::target(),
                config(&prefix),
            )
            .await
            .expect("a connection per committer");
            let mut rng = StdRng::seed_from_u64(seed ^ (t * 0x9E37_79B9));
            let from = format!("c{t}");
            let mut answers: Vec<(usize, String, Committed)> = Vec::new();
            let mut sent = 0;
            let mut previous: Option<(usize, Vec<String>)> = None;
            while sent < 500 {
                // Now and then resubmit the previous batch: every answer must be a duplicate.
                if let Some((ri, ops)) = previous.take().filter(|_| rng.random_bool(0.1)) {
                    let events = ops
                        .iter()
                        .map(|o| ev(&from, Some(o), "{\"again\":true}"))
                        .collect();
                    let proposed = hlc(BASE_MS - 5_000, 0);
                    let got = log
                        .commit(&rooms[ri], &req("e1", proposed, events))
                        .await
                        .expect("a resubmitted batch");
                    for (o, c) in ops.iter().zip(got) {
                        assert!(c.duplicate, "resubmitted {o} was committed again as {c:?}");
                        answers.push((ri, o.clone(), c));
                    }
                    continue;
                }
                let ri = rng.random_range(0..rooms.len());
                let n = rng.random_range(1..=8).min(500 - sent);
                let ops: Vec<String> = (sent..sent + n).map(|i| format!("op{i}")).collect();
                sent += n;
                let events = ops
                    .iter()
                    .map(|o| ev(&from, Some(o), &format!("{{\"t\":{t},\"op\":\"{o}\"}}")))
                    .collect();
                // Proposed hlcs wander ±2 s around a base, often behind the room's last one.
                let wall = BASE_MS - 2_000 + rng.random_range(0..4_000);
                let logical = if rng.random_bool(0.1) {
                    999_999
                } else {
                    rng.random_range(0..10)
                };
                let got = log
                    .commit(&rooms[ri], &req("e1", hlc(wall, logical), events))
                    .await
                    .expect("a commit");
                for (o, c) in ops.iter().zip(got) {
                    assert!(
                        !c.duplicate,
                        "a first commit of {o} was answered as a duplicate"
                    );
                    answers.push((ri, o.clone(), c));
                }
                previous = Some((ri, ops));
            }
            (from, answers)
        }));
    }
    let mut by_key: HashMap<(usize, String, String), Committed> = HashMap::new();
    for task in tasks {
        let (from, answers) = task.await.expect("a committer");
        for (ri, op, c) in answers {
            match by_key.get(&(ri, from.clone(), op.clone())) {
                Some(first) => assert_eq!(
                    (first.seq, &first.hlc),
                    (c.seq, &c.hlc),
                    "op {from}/{op} answered two different seqs/hlcs"
                ),
                None => {
                    by_key.insert((ri, from.clone(), op), c);
                }
            }
        }
    }
    assert_eq!(by_key.len(), 8 * 500, "every op answered");
    for (ri, r) in rooms.iter().enumerate() {
        let logged = log
            .read_log(r, Seq::ZERO, 10_000)
            .await
            .expect("read the log");
        let meta = log
            .room_meta(r)
            .await
            .expect("meta")
            .expect("the room exists");
        assert_eq!(
            meta.head,
            Seq(logged.len() as u64),
            "head = number of events of {r}"
        );
        let mut prev_hlc: Option<String> = None;
        let mut ops_seen = HashSet::new();
        for (i, e) in logged.iter().enumerate() {
            assert_eq!(
                e.seq,
                Seq(i as u64 + 1),
                "{r}: seqs are 1..=N, in order, no gap"
            );
            if let Some(p) = &prev_hlc {
                assert!(
                    e.hlc.as_str()[..20] > *p.as_str(),
                    "{r}: hlc of seq {} ({}) does not follow {p}",
                    e.seq.0,
                    e.hlc
                );
            }
            prev_hlc = Some(e.hlc.as_str()[..20].to_string());
            assert!(
                e.hlc.as_str().ends_with("-gw1"),
                "the node part is the caller's"
            );
            let key = (
                e.from.to_string(),
                e.op_id.clone().expect("op id").to_string(),
            );
            assert!(ops_seen.insert(key.clone()), "{r}: op {key:?} logged twice");
            let answer = &by_key[&(ri, key.0.clone(), key.1.clone())];
            assert_eq!(
                (answer.seq, &answer.hlc),
                (e.seq, &e.hlc),
                "{r}: answer matches the log"
            );
        }
        assert_eq!(
            meta.hlc.as_ref(),
            logged.last().map(|e| &e.hlc),
            "meta hlc = head's hlc"
        );
        // The work stream (shared by the partition) holds each of the room's seqs once, in order.
        let rk = log.keys().room(r.as_str());
        let work: Vec<_> = work_entries(&log, &rk)
            .await
            .into_iter()
            .filter(|f| f["r"] == r.as_str())
            .collect();
        let seqs: Vec<u64> = work.iter().map(|f| f["s"].parse().expect("seq")).collect();
        assert_eq!(
            seqs,
            (1..=logged.len() as u64).collect::<Vec<_>>(),
            "{r}: work stream holds every seq once, in order"
        );
        for (w, e) in work.iter().zip(&logged) {
            assert_eq!(w["h"], e.hlc.as_str());
            assert_eq!(w["f"], e.from.as_str());
            assert_eq!(w["d"], e.data);
            assert_eq!(w["e"], "e1");
            assert_eq!(w["k"], "stream");
        }
    }
    let total: usize = rooms.len();
    assert_eq!(total, 2);
}

#[tokio::test]
async fn hlc_is_max_of_proposed_and_last_plus_one_with_logical_overflow() {
    let (_p, log) = shared("hlc").await;
    let r = room("clock");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let one = |op: &str| vec![ev("c", Some(op), "1")];
    let a = log
        .commit(&r, &req("e1", hlc(BASE_MS, 999_998), one("a")))
        .await
        .expect("a");
    assert_eq!(
        a[0].hlc.as_str(),
        format!("{BASE_MS}-999998-gw1"),
        "proposed ahead: taken"
    );
    // Proposed behind: last + 1; then the logical counter overflows into the next ms.
    let b = log
        .commit(
            &r,
            &req("e1", hlc(BASE_MS - 10, 0), [one("b"), one("c")].concat()),
        )
        .await
        .expect("b");
    assert_eq!(b[0].hlc.as_str(), format!("{BASE_MS}-999999-gw1"));
    assert_eq!(
        b[1].hlc.as_str(),
        format!("{}-000000-gw1", BASE_MS + 1),
        "overflow"
    );
    let c = log
        .commit(&r, &req("e1", hlc(BASE_MS + 1, 0), one("d")))
        .await
        .expect("d");
    assert_eq!(
        c[0].hlc.as_str(),
        format!("{}-000001-gw1", BASE_MS + 1),
        "equal: last + 1"
    );
    let d = log
        .commit(&r, &req("e1", hlc(BASE_MS + 50, 7), one("e")))
        .await
        .expect("e");
    assert_eq!(d[0].hlc.as_str(), format!("{}-000007-gw1", BASE_MS + 50));
}

#[tokio::test]
async fn duplicates_answer_the_original_and_write_nothing() {
    let clock = ManualClock::new(BASE_MS);
    let bucket = Duration::from_secs(60);
    let (_p, log) = shared_with("dups", |c| {
        c.clock = Arc::new(clock.clone());
        c.idem_bucket = bucket;
        c.idem_window = bucket * 10;
        c.recent_buckets = 2;
    })
    .await;
    let r = room("dups");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let rk = log.keys().room(r.as_str());
    let first = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(BASE_MS, 0),
                vec![
                    ev("alice", Some("m1"), "{\"n\":1}"),
                    ev("alice", Some("m1"), "{\"n\":1}"),
                    ev("bob", Some("m1"), "{\"n\":2}"),
                    ev("alice", None, "{\"n\":3}"),
                ],
            ),
        )
        .await
        .expect("first commit");
    let seqs: Vec<(u64, bool)> = first.iter().map(|c| (c.seq.0, c.duplicate)).collect();
    assert_eq!(
        seqs,
        [(1, false), (1, true), (2, false), (3, false)],
        "within a call the second alice/m1 is a duplicate; bob/m1 is another key"
    );
    assert_eq!(first[1].hlc, first[0].hlc);

    // Across calls, in the same bucket and one bucket later: the original answer, no write.
    for advance in [Duration::ZERO, bucket] {
        clock.advance(advance.as_millis() as u64);
        let buckets = log.config().buckets(concord_core::Clock::now_ms(&clock));
        let before = snapshot(&log, &rk, &buckets).await;
        let again = log
            .commit(
                &r,
                &req(
                    "e1",
                    hlc(BASE_MS + 99_999, 0),
                    vec![ev("alice", Some("m1"), "{\"n\":1}")],
                ),
            )
            .await
            .expect("resubmission");
        assert_eq!(
            again,
            vec![Committed {
                duplicate: true,
                ..first[0].clone()
            }]
        );
        assert_eq!(
            before,
            snapshot(&log, &rk, &buckets).await,
            "a duplicate writes nothing"
        );
    }

    // Five buckets later the key is outside the recent buckets: only a resend finds it.
    clock.advance(5 * bucket.as_millis() as u64);
    let mut resend = ev("bob", Some("m1"), "{\"n\":2}");
    resend.resend = true;
    let found = log
        .commit(&r, &req("e1", hlc(BASE_MS, 0), vec![resend]))
        .await
        .expect("a resend");
    assert_eq!(
        found,
        vec![Committed {
            duplicate: true,
            ..first[2].clone()
        }],
        "found in an old bucket"
    );
    let fresh = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(BASE_MS, 0),
                vec![ev("bob", Some("m1"), "{\"n\":2}")],
            ),
        )
        .await
        .expect("not a resend");
    assert_eq!(
        (fresh[0].seq, fresh[0].duplicate),
        (Seq(4), false),
        "a key older than the recent buckets is only looked up for resends (documented)"
    );
}

#[tokio::test]
async fn refused_commits_leave_every_key_unchanged() {
    let (_p, log) = shared("refusals").await;
    let r = room("doc-1");
    create(&log, &r, RoomKind::Doc, "e1").await;
    let fence = log
        .acquire_lease(&r, "gw-a", Duration::from_secs(30))
        .await
        .expect("lease")
        .expect("free");
    let rk = log.keys().room(r.as_str());
    let mut ok = req("e1", hlc(BASE_MS, 0), vec![ev("c", Some("o1"), "1")]);
    ok.fence = Some(fence);
    ok.expected_head = Some(Seq(0));
    log.commit(&r, &ok).await.expect("the owner commits");

    let buckets = log
        .config()
        .buckets(concord_core::Clock::now_ms(&concord_core::hlc::SystemClock));
    let before = snapshot(&log, &rk, &buckets).await;
    let new_events = vec![ev("c", Some("o2"), "2"), ev("c", Some("o3"), "3")];
    let mut stale = req("e1", hlc(BASE_MS, 0), new_events.clone());
    stale.fence = Some(fence + 1);
    stale.expected_head = Some(Seq(1));
    let got = log.commit(&r, &stale).await;
    assert!(
        matches!(got, Err(CommitError::Fenced { current }) if current == fence),
        "{got:?}"
    );

    let mut wrong_epoch = req("e0", hlc(BASE_MS, 0), new_events.clone());
    wrong_epoch.fence = Some(fence);
    let got = log.commit(&r, &wrong_epoch).await;
    assert!(
        matches!(&got, Err(CommitError::EpochChanged { current }) if current.as_str() == "e1"),
        "{got:?}"
    );

    let mut behind = req("e1", hlc(BASE_MS, 0), new_events.clone());
    behind.fence = Some(fence);
    behind.expected_head = Some(Seq(0));
    let got = log.commit(&r, &behind).await;
    assert!(
        matches!(got, Err(CommitError::HeadMoved { head: Seq(1) })),
        "{got:?}"
    );
    assert_eq!(
        before,
        snapshot(&log, &rk, &buckets).await,
        "refusals wrote nothing"
    );

    let got = log
        .commit(&room("never-made"), &req("e1", hlc(BASE_MS, 0), new_events))
        .await;
    assert!(matches!(got, Err(CommitError::NoRoom)), "{got:?}");

    // A resubmission of a committed list with its old expected head is answered as duplicates.
    let got = log.commit(&r, &ok).await.expect("a resubmitted list");
    assert!(got[0].duplicate && got[0].seq == Seq(1), "{got:?}");
}

#[tokio::test]
async fn create_answers_the_existing_room_and_refuses_another_kind() {
    let (_p, log) = shared("create").await;
    let r = room("kinds");
    let made = log
        .create_room(&r, RoomKind::Stream, &epoch("e1"))
        .await
        .expect("create");
    assert_eq!(
        (made.head, made.hlc.clone(), made.epoch.as_str()),
        (Seq(0), None, "e1")
    );
    log.commit(
        &r,
        &req("e1", hlc(BASE_MS, 0), vec![ev("c", Some("x"), "1")]),
    )
    .await
    .expect("commit");
    let again = log
        .create_room(&r, RoomKind::Stream, &epoch("e9"))
        .await
        .expect("again");
    assert_eq!(
        (again.head, again.epoch.as_str()),
        (Seq(1), "e1"),
        "the existing room"
    );
    let other = log.create_room(&r, RoomKind::Doc, &epoch("e1")).await;
    assert!(
        matches!(&other, Err(CommitError::Exists { kind }) if kind == "stream"),
        "{other:?}"
    );
}

#[tokio::test]
async fn rebuild_recreates_only_a_missing_room() {
    let (_p, log) = shared("rebuild").await;
    let r = room("lost");
    let h = hlc(BASE_MS, 3);
    let before_ms = concord_core::Clock::now_ms(&concord_core::hlc::SystemClock);
    let made = log
        .rebuild(&r, RoomKind::Doc, &epoch("e7"), Seq(42), Some(&h))
        .await
        .expect("rebuild");
    assert!(made.rebuilt);
    let meta = log.room_meta(&r).await.expect("meta").expect("exists");
    assert_eq!(
        (meta.head, meta.wm, meta.floor),
        (Seq(42), Seq(42), Seq(43))
    );
    assert!(
        meta.fence >= before_ms,
        "the fence restarts at the rebuild's time ({} < {before_ms}): above any fence before the loss",
        meta.fence
    );
    assert_eq!(meta.hlc, Some(h.clone()));
    // A zombie owner from before the loss (fence 1) is fenced; the new owner is not.
    let mut zombie = req("e7", hlc(BASE_MS, 0), vec![ev("z", Some("z"), "0")]);
    zombie.fence = Some(1);
    let got = log.commit(&r, &zombie).await;
    assert!(matches!(got, Err(CommitError::Fenced { .. })), "{got:?}");
    let owner = log
        .acquire_lease(&r, "gw-new", Duration::from_secs(30))
        .await
        .expect("lease")
        .expect("free");
    assert_eq!(owner, meta.fence + 1);
    let next = log
        .commit(&r, &{
            let mut c = req("e7", hlc(BASE_MS - 1, 0), vec![ev("c", Some("n"), "1")]);
            c.fence = Some(owner);
            c
        })
        .await
        .expect("commit after a rebuild");
    assert_eq!(next[0].seq, Seq(43), "seqs resume after the rebuilt head");
    assert!(
        next[0].hlc.as_str()[..20] > h.as_str()[..20],
        "hlc resumes after the rebuilt one"
    );
    let again = log
        .rebuild(&r, RoomKind::Doc, &epoch("e8"), Seq(1), None)
        .await
        .expect("rebuild of an existing room");
    assert!(!again.rebuilt);
    assert_eq!(
        (again.head.head, again.head.epoch.as_str()),
        (Seq(43), "e7"),
        "left unchanged"
    );
}

/// A lost tail: a room whose meta is still exactly where the rebuilding gateway read it (epoch,
/// head below PostgreSQL's watermark) is rebuilt at the watermark, its log emptied; a meta
/// that moved meanwhile (another gateway rebuilt, or committed) is left as it is.
#[tokio::test]
async fn rebuild_over_a_lost_tail_only_from_what_was_read() {
    let (_p, log) = shared("rebuild-tail").await;
    let r = room("tail");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let events = (0..3)
        .map(|n| ev("a", Some(&format!("m{n}")), "1"))
        .collect();
    log.commit(&r, &req("e1", hlc(BASE_MS, 0), events))
        .await
        .expect("commit");
    let e1 = epoch("e1");
    let h = hlc(BASE_MS, 9);
    // Read at another head: nothing happens.
    let stale = log
        .rebuild_over(
            &r,
            RoomKind::Stream,
            &e1,
            Seq(6),
            Some(&h),
            Some((&e1, Seq(2))),
        )
        .await
        .expect("rebuild_over");
    assert!(!stale.rebuilt);
    assert_eq!(stale.head.head, Seq(3));
    let done = log
        .rebuild_over(
            &r,
            RoomKind::Stream,
            &e1,
            Seq(6),
            Some(&h),
            Some((&e1, Seq(3))),
        )
        .await
        .expect("rebuild_over");
    assert!(done.rebuilt);
    let meta = log.room_meta(&r).await.expect("meta").expect("exists");
    assert_eq!((meta.head, meta.wm, meta.floor), (Seq(6), Seq(6), Seq(7)));
    assert!(log.read_log(&r, Seq(0), 10).await.expect("log").is_empty());
    let next = log
        .commit(
            &r,
            &req("e1", hlc(BASE_MS, 0), vec![ev("a", Some("m9"), "1")]),
        )
        .await
        .expect("commit");
    assert_eq!(next[0].seq, Seq(7), "seqs continue above the rebuilt head");
    // The same call again: the meta moved, it is left as it is.
    let again = log
        .rebuild_over(
            &r,
            RoomKind::Stream,
            &e1,
            Seq(6),
            Some(&h),
            Some((&e1, Seq(3))),
        )
        .await
        .expect("rebuild_over");
    assert!(!again.rebuilt);
    assert_eq!(again.head.head, Seq(7));
}

#[tokio::test]
async fn oversized_batches_are_refused_before_calling_redis() {
    let (_p, log) = shared_with("limits", |c| c.max_commit_events = 2).await;
    let r = room("limits");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let events = (0..3)
        .map(|i| ev("c", Some(&format!("o{i}")), "1"))
        .collect();
    let got = log.commit(&r, &req("e1", hlc(BASE_MS, 0), events)).await;
    assert!(
        matches!(got, Err(CommitError::BatchTooLarge { len: 3, max: 2 })),
        "{got:?}"
    );
    assert_eq!(
        log.room_meta(&r).await.expect("meta").expect("room").head,
        Seq(0)
    );
}

/// A model of the rule over random proposals, batch sizes and overflows: each assigned hlc is
/// max(proposed, previous + 1) on (wall ms, logical), with logical 999999 + 1 → next ms, 0.
#[tokio::test]
async fn assigned_hlcs_follow_the_rule_for_random_proposals() {
    let (_p, log) = shared("hlc-model").await;
    let r = room("hlc-model");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let seed = seed();
    println!("CONCORD_DIST_SEED={seed} reproduces this run");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last: (u64, u32) = (0, 0);
    let mut n = 0;
    for call in 0..150 {
        let wall = BASE_MS + rng.random_range(0..20);
        let logical = match rng.random_range(0..4) {
            0 => 999_999,
            1 => 999_998,
            _ => rng.random_range(0..5),
        };
        let size = rng.random_range(1..=4);
        let events = (0..size)
            .map(|_| {
                n += 1;
                ev("m", Some(&format!("o{n}")), "0")
            })
            .collect();
        let got = log
            .commit(&r, &req("e1", hlc(wall, logical), events))
            .await
            .expect("commit");
        for c in got {
            let next = if last.1 >= 999_999 {
                (last.0 + 1, 0)
            } else {
                (last.0, last.1 + 1)
            };
            let want = next.max((wall, logical));
            assert_eq!(
                c.hlc.as_str(),
                format!("{:013}-{:06}-gw1", want.0, want.1),
                "call {call}: proposed {wall}/{logical} after {last:?} (seed {seed})"
            );
            last = want;
        }
    }
}

#[tokio::test]
async fn read_log_pages_after_a_seq() {
    let (_p, log) = shared("pages").await;
    let r = room("pages");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let events = (1..=7)
        .map(|i| {
            ev(
                "c",
                if i % 2 == 0 { None } else { Some("x") },
                &format!("[{i}]"),
            )
        })
        .collect();
    let got = log
        .commit(&r, &req("e1", hlc(BASE_MS, 0), events))
        .await
        .expect("commit");
    // Odd events share one op key: the later ones are duplicates of seq 1.
    let seqs: Vec<u64> = got.iter().map(|c| c.seq.0).collect();
    assert_eq!(seqs, [1, 2, 1, 3, 1, 4, 1]);
    let page = log.read_log(&r, Seq(1), 2).await.expect("page");
    assert_eq!(page.iter().map(|e| e.seq.0).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(page[0].op_id, None, "no op id: none read back");
    assert_eq!(page[0].data, "[2]");
    assert_eq!(page[1].data, "[4]");
    assert!(log
        .read_log(&r, Seq(4), 10)
        .await
        .expect("past the head")
        .is_empty());
    assert!(log
        .read_log(&room("nowhere"), Seq(0), 10)
        .await
        .expect("no room")
        .is_empty());
    // Redis 7.0 answers XRANGE … COUNT 0 with nil: a page of none is empty, not an error (a
    // room loading with no keys to read asked for one).
    assert!(log
        .read_log(&r, Seq(0), 0)
        .await
        .expect("a page of none")
        .is_empty());
}

/// A write without an op id carries a key (the gateway's proposed hlc): a call handed over
/// again answers it as a duplicate and writes nothing; the same key from another client, or a
/// keyless write without a key, is a new event; an op id equal to a key text is another key.
#[tokio::test]
async fn a_key_makes_a_write_without_an_op_id_land_once() {
    let (_p, log) = shared("keyed").await;
    let r = room("keyed");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let keyed = |from: &str, key: &str| concord_dist::NewEvent {
        key: Some(key.to_string()),
        ..ev(from, None, "{\"k\":1}")
    };
    let batch = vec![
        keyed("alice", "0000000000001-000000-gw"),
        ev("alice", None, "{\"plain\":1}"),
    ];
    let first = log
        .commit(&r, &req("e1", hlc(BASE_MS, 0), batch.clone()))
        .await
        .expect("first commit");
    let again = log
        .commit(&r, &req("e1", hlc(BASE_MS, 1), batch))
        .await
        .expect("handed over again");
    assert_eq!(
        again[0],
        Committed {
            duplicate: true,
            ..first[0].clone()
        },
        "the keyed write is answered with its original seq"
    );
    assert!(
        !again[1].duplicate && again[1].seq.0 == 3,
        "a write with neither op id nor key is new each time: {again:?}"
    );
    let others = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(BASE_MS, 2),
                vec![
                    keyed("bob", "0000000000001-000000-gw"),
                    ev("alice", Some("0000000000001-000000-gw"), "{\"op\":1}"),
                ],
            ),
        )
        .await
        .expect("other keys");
    assert!(
        others.iter().all(|c| !c.duplicate),
        "another client's key and an op id that spells a key are new: {others:?}"
    );
    let logged = log.read_log(&r, Seq::ZERO, 100).await.expect("the log");
    assert_eq!(logged.len(), 5, "{logged:?}");
    assert!(
        logged.iter().all(|e| e.op_id.is_none() || e.seq.0 == 5),
        "a key is not an op id: it is not stored as one"
    );
}
