//! The [`CommitLog`] contracts: appends continue the expected head exactly, all or nothing,
//! in the room's epoch; racing and stale writers are refused with `HeadMoved`; an append
//! handed over twice lands once. What landed is read back through the [`History`] the log's
//! events are read from (its own, embedded; Redis's, distributed), by `load_room`,
//! `read_events` and `recent_keys` only. Hlcs are compared with what is read back, not with
//! the proposed ones: a log may assign them (Redis keeps a proposed hlc only when it is later
//! than the room's last).

use super::*;

/// Creating a room is idempotent and keeps the first epoch; a new room is empty.
pub async fn create_and_load(log: Arc<dyn CommitLog>, h: Arc<dyn History>, _: Durability) {
    let r = room("a");
    assert_eq!(h.load_room(&r).await.unwrap(), None);
    log.create_room(&r, RoomKind::Stream, &Epoch("e1".into()))
        .await
        .unwrap();
    // creating again is a no-op and keeps the first epoch
    log.create_room(&r, RoomKind::Stream, &Epoch("e2".into()))
        .await
        .unwrap();
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.kind, RoomKind::Stream);
    assert_eq!(rec.epoch, Epoch("e1".into()));
    assert_eq!(rec.head, Seq(0));
    assert_eq!(rec.head_hlc, None);
    log.create_room(&room("d"), RoomKind::Doc, &epoch())
        .await
        .unwrap();
    assert_eq!(
        h.load_room(&room("d")).await.unwrap().unwrap().kind,
        RoomKind::Doc
    );
}

/// `append` continues the expected head exactly: a head that moved is `HeadMoved` with the
/// actual head, a batch whose seqs skip is refused before anything is written, a missing room
/// is `NoRoom`, another epoch is `EpochChanged`; a success promises the log's durability.
pub async fn append_continues_the_expected_head(
    log: Arc<dyn CommitLog>,
    h: Arc<dyn History>,
    durability: Durability,
) {
    let r = room("b");
    assert!(matches!(
        put(&*log, &r, vec![ev(1, "c", None)]).await,
        Err(StoreError::NoRoom(_))
    ));
    log.create_room(&r, RoomKind::Stream, &epoch())
        .await
        .unwrap();
    let got = put(&*log, &r, vec![ev(1, "c", Some("m1")), ev(2, "c", None)]).await;
    assert_eq!(got.unwrap(), durability);
    // Ahead of the head, and behind it (another writer's event at a seq already taken).
    for (expected_head, event) in [(3, ev(4, "c", None)), (1, ev(2, "x", Some("x2")))] {
        let mut append = Append::new(epoch(), vec![event]);
        append.expected_head = Seq(expected_head);
        let got = log.append(&r, append).await;
        assert!(
            matches!(got, Err(StoreError::HeadMoved { head: 2, .. })),
            "expected head {expected_head}: {got:?}"
        );
    }
    // A batch whose seqs skip one is malformed: nothing of it lands.
    let half = put(&*log, &r, vec![ev(3, "c", None), ev(5, "c", None)]).await;
    assert!(
        matches!(half, Err(StoreError::NotContiguous { .. })),
        "{half:?}"
    );
    let other = log
        .append(
            &r,
            Append::new(Epoch("other".into()), vec![ev(3, "c", None)]),
        )
        .await;
    assert!(
        matches!(&other, Err(StoreError::EpochChanged { current, .. }) if *current == epoch()),
        "{other:?}"
    );
    assert_eq!(
        put(&*log, &r, vec![ev(3, "c", None)]).await.unwrap(),
        durability
    );
    let all = h.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&all), [1, 2, 3]);
    assert_eq!(all[0].data.get(), "{\"n\":1}");
    assert_eq!(all[0].op_id.as_ref().map(OpId::as_str), Some("m1"));
    assert!(all.iter().all(|e| e.from.as_str() == "c"), "{all:?}");
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(3));
    assert_eq!(rec.head_hlc.as_ref(), Some(&all[2].hlc));
    assert!(all.windows(2).all(|w| w[0].hlc < w[1].hlc), "{all:?}");
}

/// Appends to many rooms at once (needs a multi-thread runtime).
pub async fn concurrent_rooms(log: Arc<dyn CommitLog>, h: Arc<dyn History>, _: Durability) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let r = room(&format!("conc-{i}"));
            log.create_room(&r, RoomKind::Stream, &epoch())
                .await
                .unwrap();
            for seq in 1..=30 {
                put(&*log, &r, vec![ev(seq, "c", Some(&format!("m{seq}")))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..20 {
        let r = room(&format!("conc-{i}"));
        assert_eq!(h.load_room(&r).await.unwrap().unwrap().head, Seq(30));
        assert_eq!(
            seqs(&h.read_events(&r, Seq(0), 100).await.unwrap()),
            (1..=30).collect::<Vec<_>>()
        );
    }
}

/// Two appenders race for the same next seq of one room, again and again: exactly one wins
/// each round, the other is refused with `HeadMoved` (the winner's head), and the log holds
/// the winner's event at that seq and nothing of the loser's.
pub async fn racing_appenders_one_wins(
    log: Arc<dyn CommitLog>,
    h: Arc<dyn History>,
    _: Durability,
) {
    let r = room("race");
    log.create_room(&r, RoomKind::Stream, &epoch())
        .await
        .unwrap();
    for round in 1..=20u64 {
        let head = h.load_room(&r).await.unwrap().unwrap().head.0;
        assert_eq!(head, round - 1);
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let racer = |who: &'static str| {
            let (log, r, start) = (log.clone(), r.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let op = format!("{who}-{round}");
                put(&*log, &r, vec![ev(head + 1, who, Some(&op))]).await
            })
        };
        let (a, b) = (racer("a"), racer("b"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (winner, loser) = match (&a, &b) {
            (Ok(_), Err(e)) => ("a", e),
            (Err(e), Ok(_)) => ("b", e),
            _ => panic!("round {round}: exactly one appender must win: {a:?} / {b:?}"),
        };
        assert!(
            matches!(loser, StoreError::HeadMoved { head: moved, .. } if *moved == head + 1),
            "round {round}: the loser must be refused as its head moved: {loser:?}"
        );
        let at = h.read_events(&r, Seq(head), 10).await.unwrap();
        assert_eq!(seqs(&at), [head + 1], "round {round}");
        assert_eq!(at[0].from.as_str(), winner);
        assert_eq!(
            at[0].op_id.as_ref().map(OpId::as_str),
            Some(&*format!("{winner}-{round}"))
        );
        let rec = h.load_room(&r).await.unwrap().unwrap();
        assert_eq!(rec.head, Seq(head + 1));
        assert_eq!(rec.head_hlc.as_ref(), Some(&at[0].hlc));
    }
    assert_eq!(
        seqs(&h.read_events(&r, Seq(0), 100).await.unwrap()),
        (1..=20).collect::<Vec<_>>()
    );
}

/// A fenced zombie writer: A appended up to N, B (the newer owner) appended N+1..N+k, then A
/// appends after N from its stale view. A is refused (`HeadMoved`, B's head) whatever the size
/// of its batch, nothing of A's lands, B's events are intact; A only continues after
/// reloading.
pub async fn zombie_writer_is_fenced(log: Arc<dyn CommitLog>, h: Arc<dyn History>, _: Durability) {
    let r = room("zombie");
    log.create_room(&r, RoomKind::Stream, &epoch())
        .await
        .unwrap();
    put(
        &*log,
        &r,
        (1..=3)
            .map(|n| ev(n, "a", Some(&format!("a{n}"))))
            .collect(),
    )
    .await
    .unwrap();
    // B takes over: it loads the room and appends 4..=6.
    let b_head = h.load_room(&r).await.unwrap().unwrap().head;
    assert_eq!(b_head, Seq(3));
    for n in 4..=6 {
        put(&*log, &r, vec![ev(n, "b", Some(&format!("b{n}")))])
            .await
            .unwrap();
    }
    // A, still believing the head is 3: one event, a batch inside B's range, a batch reaching
    // past B's head (its tail would continue the head, the batch does not).
    for batch in [4..=4, 4..=6, 4..=9] {
        let batch: Vec<StoredEvent> = batch.map(|n| ev(n, "a", Some(&format!("a{n}")))).collect();
        let got = put(&*log, &r, batch).await;
        assert!(
            matches!(got, Err(StoreError::HeadMoved { head: 6, .. })),
            "a stale writer must be fenced: {got:?}"
        );
    }
    let all = h.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    let froms: Vec<&str> = all.iter().map(|e| e.from.as_str()).collect();
    assert_eq!(froms, ["a", "a", "a", "b", "b", "b"]);
    for e in &all[3..] {
        assert_eq!(
            e.op_id.as_ref().map(OpId::as_str),
            Some(&*format!("b{}", e.seq.0))
        );
        assert_eq!(e.data.get(), format!("{{\"n\":{}}}", e.seq.0));
    }
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(6));
    assert_eq!(rec.head_hlc, Some(all[5].hlc.clone()));
    let keys = h.recent_keys(&r, 3).await.unwrap();
    assert!(keys.iter().all(|k| k.from.as_str() == "b"), "{keys:?}");
    // After reloading, A continues from the real head (its op ids were never committed).
    let head = h.load_room(&r).await.unwrap().unwrap().head;
    put(&*log, &r, vec![ev(head.0 + 1, "a", Some("a4"))])
        .await
        .unwrap();
    let tail = h.read_events(&r, Seq(6), 10).await.unwrap();
    assert_eq!(seqs(&tail), [7]);
    assert_eq!(tail[0].op_id.as_ref().map(OpId::as_str), Some("a4"));
}

/// The same append handed over twice (its first answer lost): the log holds its events once.
/// The repeat is answered as landed, or — by a log whose answers are always definite, so that
/// its callers never repeat an append — refused with `HeadMoved` (the head after the first).
pub async fn a_repeated_append_lands_once(
    log: Arc<dyn CommitLog>,
    h: Arc<dyn History>,
    durability: Durability,
) {
    let r = room("repeat");
    log.create_room(&r, RoomKind::Stream, &epoch())
        .await
        .unwrap();
    put(&*log, &r, vec![ev(1, "c", Some("r1"))]).await.unwrap();
    let batch = vec![
        ev(2, "c", Some("r2")),
        ev(3, "c", None),
        ev(4, "d", Some("r4")),
    ];
    put(&*log, &r, batch.clone()).await.unwrap();
    match put(&*log, &r, batch).await {
        Ok(d) => assert_eq!(d, durability),
        Err(StoreError::HeadMoved { head: 4, .. }) => {}
        Err(e) => panic!("a repeat must land once: {e:?}"),
    }
    let all = h.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4]);
    let ops: Vec<(&str, Option<&str>)> = all
        .iter()
        .map(|e| (e.from.as_str(), e.op_id.as_ref().map(OpId::as_str)))
        .collect();
    assert_eq!(
        ops,
        [
            ("c", Some("r1")),
            ("c", Some("r2")),
            ("c", None),
            ("d", Some("r4"))
        ]
    );
    assert_eq!(h.load_room(&r).await.unwrap().unwrap().head, Seq(4));
    // The caller continues from the head.
    put(&*log, &r, vec![ev(5, "c", Some("r5"))]).await.unwrap();
    assert_eq!(h.load_room(&r).await.unwrap().unwrap().head, Seq(5));
}

/// `commit_log_suite!(name, make)`: a module `name` with one `#[test]` per [`CommitLog`]
/// contract; `make` yields `(Arc<dyn CommitLog>, Arc<dyn History>, Durability, guard)`: a
/// fresh log, the history its events are read from, what its appends promise.
#[macro_export]
macro_rules! commit_log_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $crate::commit_log_suite!(@contracts $make;
                create_and_load 1,
                append_continues_the_expected_head 1,
                concurrent_rooms 2,
                racing_appenders_one_wins 2,
                zombie_writer_is_fenced 1,
                a_repeated_append_lands_once 1
            );
        }
    };
    (@contracts $make:expr; $($contract:ident $threads:literal),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run($threads, async {
                    let (log, history, durability, _guard) = $make;
                    $crate::store::suite::log::$contract(log, history, durability).await;
                });
            }
        )*
    };
}
