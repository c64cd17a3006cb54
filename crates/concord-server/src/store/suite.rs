//! One contract test suite that every `Store` backend must pass.
//!
//! Compiled for this crate's own tests and, with the `testing` feature, as a public module, so
//! that a backend in another crate runs the very same contracts. In that crate:
//!
//! ```toml
//! [dev-dependencies]
//! concord-server = { workspace = true, features = ["testing"] }
//! ```
//!
//! ```ignore
//! // tests/store_contract.rs
//! use concord_server::store::Store;
//! use std::sync::Arc;
//!
//! /// A fresh, empty store per test, and whatever must live as long as it (here nothing).
//! async fn make() -> (Arc<dyn Store>, ()) {
//!     (Arc::new(PostgresStore::connect(&scratch_database().await).await.unwrap()), ())
//! }
//!
//! concord_server::store_suite!(postgres_store, make().await);
//! ```
//!
//! `store_suite!(name, make)` expands to a module `name` with one plain `#[test]` per contract.
//! `make` is an expression evaluated inside the test's own tokio runtime (so it may `.await`;
//! the calling crate needs no tokio macros) and yields `(Arc<dyn Store>, guard)`: a new, empty
//! store (contracts count rooms) for every test, and a guard (a temp dir, a container handle,
//! `()`) dropped when the test ends. Names in `make` resolve
//! in the module that calls the macro. Each contract is also a public `async fn(Arc<dyn Store>)`
//! here, to be called one by one (on a multi-thread runtime for the concurrent ones; see
//! [`run`]).

use super::*;
use std::future::Future;
use std::sync::Arc;

/// Runs one contract to completion on a fresh tokio runtime: current-thread for `threads <= 1`,
/// else multi-thread with that many workers (what `store_suite!` calls).
pub fn run<F: Future<Output = ()>>(threads: usize, contract: F) {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(contract)
}

/// An event at `seq` from client `from` with op id `op`; its hlc sorts with its seq.
pub fn ev(seq: u64, from: &str, op: Option<&str>) -> StoredEvent {
    StoredEvent {
        seq: Seq(seq),
        hlc: hlc(seq),
        from: client(from),
        op_id: op.map(op_id),
        data: RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
    }
}

/// The hlc of [`ev`]'s event at `seq` (its wall time is `seq` ms).
pub fn hlc(seq: u64) -> HlcText {
    HlcText::parse(&format!("{seq:013}-000000-n")).expect("an hlc")
}

/// A client id (panics if `id` is not one).
pub fn client(id: &str) -> ClientId {
    ClientId::new(id).expect("a client id")
}

/// An op id (panics if `id` is not one).
pub fn op_id(id: &str) -> OpId {
    OpId::new(id).expect("an op id")
}

/// The idempotency key (client, op id) that `find_ops` takes.
pub fn key(from: &str, op: &str) -> (ClientId, OpId) {
    (client(from), op_id(op))
}

/// Room counts and `recent_keys`: the last keys in seq order, without bodies.
pub async fn recent_keys_without_bodies(s: Arc<dyn Store>) {
    let r = room("keys");
    assert!(s.recent_keys(&r, 10).await.unwrap().is_empty());
    assert_eq!(s.room_count().await.unwrap(), 0);
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.create_room(&room("other"), RoomKind::Doc, &Epoch("e".into()))
        .await
        .unwrap();
    assert_eq!(s.room_count().await.unwrap(), 2);
    assert!(s.recent_keys(&r, 10).await.unwrap().is_empty());
    let mut big = ev(3, "d", Some("m3"));
    big.data = RawValue::from_string(format!("\"{}\"", "é".repeat(100))).unwrap();
    s.append(
        &r,
        vec![
            ev(1, "c", Some("m1")),
            ev(2, "c", None),
            big,
            ev(4, "c", Some("m4")),
        ],
    )
    .await
    .unwrap();
    let keys = s.recent_keys(&r, 3).await.unwrap();
    let seqs: Vec<u64> = keys.iter().map(|k| k.seq.0).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(
        keys[1],
        EventKey {
            seq: Seq(3),
            from: client("d"),
            op_id: Some(op_id("m3")),
            hlc: hlc(3),
        }
    );
    assert_eq!(keys[0].op_id, None);
    assert_eq!(s.recent_keys(&r, 100).await.unwrap().len(), 4);
    assert!(s.recent_keys(&room("nope"), 5).await.unwrap().is_empty());
}

/// `trim` deletes below `before` but never the head; trimmed keys are forgotten.
pub async fn trim_keeps_the_head_and_forgets_trimmed_keys(s: Arc<dyn Store>) {
    let r = room("trim");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    let evs: Vec<StoredEvent> = (1..=10)
        .map(|n| ev(n, "c", Some(&format!("m{n}"))))
        .collect();
    s.append(&r, evs).await.unwrap();
    assert_eq!(s.seq_at_or_after(&r, 4).await.unwrap(), Some(Seq(4)));
    assert_eq!(s.seq_at_or_after(&r, 11).await.unwrap(), None);
    s.trim(&r, Seq(5)).await.unwrap();
    let seqs = |evs: Vec<StoredEvent>| evs.iter().map(|e| e.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(s.read_events(&r, Seq(0), 100).await.unwrap()),
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(s.read_events(&r, Seq(2), 3).await.unwrap()), [5, 6, 7]);
    assert_eq!(seqs(s.read_events(&r, Seq(6), 2).await.unwrap()), [7, 8]);
    assert_eq!(s.seq_at_or_after(&r, 0).await.unwrap(), Some(Seq(5)));
    // Trimmed keys are forgotten; retained ones are still found.
    let keys = vec![key("c", "m2"), key("c", "m6")];
    let found = s.find_ops(&r, keys).await.unwrap();
    assert_eq!(found.iter().map(|f| f.seq.0).collect::<Vec<_>>(), [6]);
    let recent = s.recent_keys(&r, 100).await.unwrap();
    assert_eq!(recent.first().map(|k| k.seq), Some(Seq(5)));
    // Trimming everything keeps the head: seqs never restart.
    s.trim(&r, Seq(1000)).await.unwrap();
    assert_eq!(seqs(s.read_events(&r, Seq(0), 100).await.unwrap()), [10]);
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(10));
    s.append(&r, vec![ev(11, "c", Some("m2"))]).await.unwrap();
    assert!(s.append(&r, vec![ev(13, "c", None)]).await.is_err());
    assert_eq!(
        seqs(s.read_events(&r, Seq(0), 100).await.unwrap()),
        [10, 11]
    );
    s.save_snapshot(&r, Seq(11), "{}".into()).await.unwrap();
    // Trimming a missing room or nothing is a no-op.
    s.trim(&room("nope"), Seq(5)).await.unwrap();
    s.trim(&r, Seq(0)).await.unwrap();
    assert_eq!(
        seqs(s.read_events(&r, Seq(0), 100).await.unwrap()),
        [10, 11]
    );
}

/// `list_rooms` pages by name with the rooms' kinds.
pub async fn list_rooms_pages_by_name(s: Arc<dyn Store>) {
    for (name, kind) in [
        ("b", RoomKind::Doc),
        ("a", RoomKind::Stream),
        ("c", RoomKind::Stream),
    ] {
        s.create_room(&room(name), kind, &Epoch("e".into()))
            .await
            .unwrap();
    }
    let names = |v: Vec<(RoomId, RoomKind)>| {
        v.into_iter()
            .map(|(r, k)| (r.to_string(), k))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list_rooms(None, 2).await.unwrap()),
        [
            ("a".to_string(), RoomKind::Stream),
            ("b".to_string(), RoomKind::Doc)
        ]
    );
    assert_eq!(
        names(s.list_rooms(Some(room("b")), 10).await.unwrap()),
        [("c".to_string(), RoomKind::Stream)]
    );
    assert!(s.list_rooms(Some(room("c")), 10).await.unwrap().is_empty());
}

fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

/// Creating a room is idempotent and keeps the first epoch; a new room is empty.
pub async fn create_and_load(s: Arc<dyn Store>) {
    let r = room("a");
    assert_eq!(s.load_room(&r).await.unwrap(), None);
    s.create_room(&r, RoomKind::Stream, &Epoch("e1".into()))
        .await
        .unwrap();
    // creating again is a no-op and keeps the first epoch
    s.create_room(&r, RoomKind::Stream, &Epoch("e2".into()))
        .await
        .unwrap();
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.kind, RoomKind::Stream);
    assert_eq!(rec.epoch, Epoch("e1".into()));
    assert_eq!(rec.head, Seq(0));
    assert_eq!(rec.head_hlc, None);
}

/// `append` refuses gaps and repeats, all or nothing per batch.
pub async fn append_is_contiguous(s: Arc<dyn Store>) {
    let r = room("b");
    assert!(matches!(
        s.append(&r, vec![ev(1, "c", None)]).await,
        Err(StoreError::NoRoom(_))
    ));
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, vec![ev(1, "c", Some("m1")), ev(2, "c", None)])
        .await
        .unwrap();
    let gap = s.append(&r, vec![ev(4, "c", None)]).await;
    assert!(
        matches!(
            gap,
            Err(StoreError::NotContiguous {
                expected: 3,
                got: 4,
                ..
            })
        ),
        "{gap:?}"
    );
    let dup = s.append(&r, vec![ev(2, "c", None)]).await;
    assert!(matches!(dup, Err(StoreError::NotContiguous { .. })));
    // a batch failing half-way leaves nothing behind
    let half = s.append(&r, vec![ev(3, "c", None), ev(5, "c", None)]).await;
    assert!(half.is_err());
    s.append(&r, vec![ev(3, "c", None)]).await.unwrap();
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(3));
    assert_eq!(
        rec.head_hlc.as_ref().map(HlcText::as_str),
        Some("0000000000003-000000-n")
    );
    let all = s.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(all[0].data.get(), "{\"n\":1}");
    assert_eq!(all[0].op_id.as_ref().map(OpId::as_str), Some("m1"));
}

/// An op id is unique per client within a room; `find_ops` finds committed ones.
pub async fn duplicate_op_ids_are_refused(s: Arc<dyn Store>) {
    let r = room("c");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, vec![ev(1, "c1", Some("m1"))]).await.unwrap();
    assert!(s.append(&r, vec![ev(2, "c1", Some("m1"))]).await.is_err());
    // same id from another client is another op
    s.append(&r, vec![ev(2, "c2", Some("m1"))]).await.unwrap();
    let found = s
        .find_ops(&r, vec![key("c1", "m1"), key("c2", "m1"), key("c3", "m1")])
        .await
        .unwrap();
    let mut seqs: Vec<_> = found.iter().map(|f| (f.from.as_str(), f.seq.0)).collect();
    seqs.sort();
    assert_eq!(seqs, vec![("c1", 1), ("c2", 2)]);
}

/// `read_events` pages through a log in seq order.
pub async fn pagination(s: Arc<dyn Store>) {
    let r = room("d");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, (1..=25).map(|i| ev(i, "c", None)).collect())
        .await
        .unwrap();
    let mut after = Seq(0);
    let mut seen = Vec::new();
    loop {
        let page = s.read_events(&r, after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|e| e.seq.0));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert!(s
        .read_events(&room("nope"), Seq(0), 10)
        .await
        .unwrap()
        .is_empty());
}

/// Appends to many rooms at once (needs a multi-thread runtime).
pub async fn concurrent_rooms(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = room(&format!("conc-{i}"));
            s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
                .await
                .unwrap();
            for seq in 1..=30 {
                s.append(&r, vec![ev(seq, "c", Some(&format!("m{seq}")))])
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
        assert_eq!(s.load_room(&r).await.unwrap().unwrap().head, Seq(30));
    }
}

/// Snapshots: never beyond the head, the latest at or before a seq, replaced at the same seq.
pub async fn snapshots(s: Arc<dyn Store>) {
    let r = room("s");
    assert!(
        s.save_snapshot(&r, Seq(1), "{}".into()).await.is_err(),
        "no room yet"
    );
    s.create_room(&r, RoomKind::Doc, &Epoch("e".into()))
        .await
        .unwrap();
    assert!(
        s.save_snapshot(&r, Seq(1), "{}".into()).await.is_err(),
        "beyond the head"
    );
    s.append(&r, (1..=20).map(|i| ev(i, "c", None)).collect())
        .await
        .unwrap();
    assert_eq!(s.load_snapshot(&r, None).await.unwrap(), None);
    s.save_snapshot(&r, Seq(10), r#"{"v":10}"#.into())
        .await
        .unwrap();
    s.save_snapshot(&r, Seq(20), r#"{"v":20}"#.into())
        .await
        .unwrap();
    assert_eq!(
        s.load_snapshot(&r, None).await.unwrap(),
        Some((Seq(20), r#"{"v":20}"#.into()))
    );
    assert_eq!(
        s.load_snapshot(&r, Some(Seq(19))).await.unwrap(),
        Some((Seq(10), r#"{"v":10}"#.into()))
    );
    assert_eq!(
        s.load_snapshot(&r, Some(Seq(20))).await.unwrap().unwrap().0,
        Seq(20)
    );
    assert_eq!(s.load_snapshot(&r, Some(Seq(9))).await.unwrap(), None);
    s.save_snapshot(&r, Seq(20), r#"{"v":"again"}"#.into())
        .await
        .unwrap();
    assert_eq!(
        s.load_snapshot(&r, None).await.unwrap().unwrap().1,
        r#"{"v":"again"}"#
    );
}

/// `prune_snapshots` keeps the newest ones (at least one).
pub async fn snapshots_pruned(s: Arc<dyn Store>) {
    let r = room("p");
    s.create_room(&r, RoomKind::Doc, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, (1..=40).map(|i| ev(i, "c", None)).collect())
        .await
        .unwrap();
    s.prune_snapshots(&r, 2).await.unwrap();
    for seq in [10, 20, 30, 40] {
        s.save_snapshot(&r, Seq(seq), format!(r#"{{"v":{seq}}}"#))
            .await
            .unwrap();
    }
    s.prune_snapshots(&r, 2).await.unwrap();
    assert_eq!(s.load_snapshot(&r, Some(Seq(29))).await.unwrap(), None);
    assert_eq!(
        s.load_snapshot(&r, Some(Seq(39))).await.unwrap(),
        Some((Seq(30), r#"{"v":30}"#.into()))
    );
    s.prune_snapshots(&r, 0).await.unwrap();
    assert_eq!(s.load_snapshot(&r, Some(Seq(39))).await.unwrap(), None);
    assert_eq!(s.load_snapshot(&r, None).await.unwrap().unwrap().0, Seq(40));
}

/// `claim_client`: the first claim wins.
pub async fn client_claims(s: Arc<dyn Store>) {
    assert_eq!(
        s.claim_client(&client("c-1"), "alice").await.unwrap(),
        "alice"
    );
    assert_eq!(
        s.claim_client(&client("c-1"), "mallory").await.unwrap(),
        "alice",
        "first claim wins"
    );
    assert_eq!(
        s.claim_client(&client("c-2"), "mallory").await.unwrap(),
        "mallory"
    );
}

/// The seqs of `evs`, in the order read.
fn seqs(evs: &[StoredEvent]) -> Vec<u64> {
    evs.iter().map(|e| e.seq.0).collect()
}

/// Two appenders race for the same next seq of one room, again and again: exactly one wins
/// each round, the other is refused with `NotContiguous`, and the log holds the winner's event
/// at that seq and nothing of the loser's.
pub async fn racing_appenders_one_wins(s: Arc<dyn Store>) {
    let r = room("race");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    for round in 1..=20u64 {
        let head = s.load_room(&r).await.unwrap().unwrap().head.0;
        assert_eq!(head, round - 1);
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let racer = |who: &'static str| {
            let (s, r, start) = (s.clone(), r.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let op = format!("{who}-{round}");
                s.append(&r, vec![ev(head + 1, who, Some(&op))]).await
            })
        };
        let (a, b) = (racer("a"), racer("b"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (winner, loser) = match (&a, &b) {
            (Ok(()), Err(e)) => ("a", e),
            (Err(e), Ok(())) => ("b", e),
            _ => panic!("round {round}: exactly one appender must win: {a:?} / {b:?}"),
        };
        assert!(
            matches!(loser, StoreError::NotContiguous { got, .. } if *got == head + 1),
            "round {round}: the loser must be refused as not contiguous: {loser:?}"
        );
        let at = s.read_events(&r, Seq(head), 10).await.unwrap();
        assert_eq!(seqs(&at), [head + 1], "round {round}");
        assert_eq!(at[0].from.as_str(), winner);
        assert_eq!(
            at[0].op_id.as_ref().map(OpId::as_str),
            Some(&*format!("{winner}-{round}"))
        );
        let rec = s.load_room(&r).await.unwrap().unwrap();
        assert_eq!(rec.head, Seq(head + 1));
        assert_eq!(rec.head_hlc.as_ref(), Some(&at[0].hlc));
        let loser_op = format!("{}-{round}", if winner == "a" { "b" } else { "a" });
        let lost = [key("a", &loser_op), key("b", &loser_op)];
        assert!(s.find_ops(&r, lost.to_vec()).await.unwrap().is_empty());
    }
    assert_eq!(
        seqs(&s.read_events(&r, Seq(0), 100).await.unwrap()),
        (1..=20).collect::<Vec<_>>()
    );
}

/// A fenced zombie writer: A appended up to N, B (the newer owner) appended N+1..N+k, then A
/// appends at N+1 from its stale view. A is refused (`NotContiguous`) whatever the size of its
/// batch, nothing of A's lands, B's events are intact; A only continues after reloading.
pub async fn zombie_writer_is_fenced(s: Arc<dyn Store>) {
    let r = room("zombie");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(
        &r,
        (1..=3)
            .map(|n| ev(n, "a", Some(&format!("a{n}"))))
            .collect(),
    )
    .await
    .unwrap();
    // B takes over: it loads the room and appends 4..=6.
    let b_head = s.load_room(&r).await.unwrap().unwrap().head;
    assert_eq!(b_head, Seq(3));
    for n in 4..=6 {
        s.append(&r, vec![ev(n, "b", Some(&format!("b{n}")))])
            .await
            .unwrap();
    }
    // A, still believing the head is 3: one event, a batch inside B's range, a batch reaching
    // past B's head (its tail would be contiguous, the batch is not).
    for batch in [4..=4, 4..=6, 4..=9] {
        let batch: Vec<StoredEvent> = batch.map(|n| ev(n, "a", Some(&format!("a{n}")))).collect();
        let got = s.append(&r, batch).await;
        assert!(
            matches!(got, Err(StoreError::NotContiguous { got: 4, .. })),
            "a stale writer must be fenced: {got:?}"
        );
    }
    let all = s.read_events(&r, Seq(0), 100).await.unwrap();
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
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(6));
    assert_eq!(rec.head_hlc, Some(all[5].hlc.clone()));
    let zombie_ops: Vec<(ClientId, OpId)> = (4..=9).map(|n| key("a", &format!("a{n}"))).collect();
    assert!(s.find_ops(&r, zombie_ops).await.unwrap().is_empty());
    let keys = s.recent_keys(&r, 3).await.unwrap();
    assert!(keys.iter().all(|k| k.from.as_str() == "b"), "{keys:?}");
    // After reloading, A continues from the real head (its op ids were never committed).
    let head = s.load_room(&r).await.unwrap().unwrap().head;
    s.append(&r, vec![ev(head.0 + 1, "a", Some("a4"))])
        .await
        .unwrap();
    assert_eq!(
        s.find_ops(&r, vec![key("a", "a4")])
            .await
            .unwrap()
            .iter()
            .map(|f| f.seq.0)
            .collect::<Vec<_>>(),
        [7]
    );
}

/// A timed-out append retried with the same events (same seqs, same op ids) after it had in
/// fact committed. The contract requires the retry to be **refused** with `NotContiguous` (it
/// no longer continues the log), not accepted as an idempotent repeat: the room actor never
/// retries an append — after a failed or unknown commit it reloads the room (head, keys) from
/// the store — so a store needs no memory of past batches, only the seq fence and the unique
/// op ids. Either way the log holds each op exactly once and `find_ops` finds it at its seq.
pub async fn retried_append_lands_once(s: Arc<dyn Store>) {
    let r = room("retry");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, vec![ev(1, "c", Some("r1"))]).await.unwrap();
    let batch = || {
        vec![
            ev(2, "c", Some("r2")),
            ev(3, "c", None),
            ev(4, "d", Some("r4")),
        ]
    };
    // Committed, but the caller saw a timeout: the outcome is unknown to it.
    s.append(&r, batch()).await.unwrap();
    for retry in [batch(), batch()[..1].to_vec(), batch()[2..].to_vec()] {
        let got = s.append(&r, retry).await;
        assert!(
            matches!(got, Err(StoreError::NotContiguous { .. })),
            "a retry of committed events must be refused as not contiguous: {got:?}"
        );
    }
    let all = s.read_events(&r, Seq(0), 100).await.unwrap();
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
    // What the caller does after reloading: each op found once, at its seq.
    let mut found = s
        .find_ops(
            &r,
            vec![
                key("c", "r1"),
                key("c", "r2"),
                key("d", "r4"),
                key("c", "r4"),
            ],
        )
        .await
        .unwrap();
    found.sort_by_key(|f| f.seq);
    let found: Vec<(&str, &str, u64)> = found
        .iter()
        .map(|f| (f.from.as_str(), f.op_id.as_str(), f.seq.0))
        .collect();
    assert_eq!(found, [("c", "r1", 1), ("c", "r2", 2), ("d", "r4", 4)]);
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head, Seq(4));
    assert_eq!(s.recent_keys(&r, 100).await.unwrap().len(), 4);
    // The caller continues from the reloaded head.
    s.append(&r, vec![ev(5, "c", Some("r5"))]).await.unwrap();
    assert_eq!(s.load_room(&r).await.unwrap().unwrap().head, Seq(5));
}

/// Reads across a trim boundary: after `trim(room, before)`, reading from any position before
/// the retained floor returns the events from the floor on, in order, with no gap; the head
/// survives; `recent_keys` and `find_ops` never return trimmed keys.
pub async fn reads_across_a_trim_boundary(s: Arc<dyn Store>) {
    let r = room("boundary");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(
        &r,
        (1..=20)
            .map(|n| ev(n, "c", Some(&format!("m{n}"))))
            .collect(),
    )
    .await
    .unwrap();
    let all_ops =
        || -> Vec<(ClientId, OpId)> { (1..=25).map(|n| key("c", &format!("m{n}"))).collect() };
    // (trim before, the retained floor it leaves): a floor only ever rises, the head survives.
    for (before, floor) in [(8, 8), (8, 8), (5, 8), (15, 15), (1000, 20)] {
        s.trim(&r, Seq(before)).await.unwrap();
        let retained: Vec<u64> = (floor..=20).collect();
        for after in [0, 1, floor - 1, floor, floor + 1, 19, 20] {
            let want: Vec<u64> = retained.iter().copied().filter(|&n| n > after).collect();
            let got = s.read_events(&r, Seq(after), 100).await.unwrap();
            assert_eq!(seqs(&got), want, "trim {before}, after {after}");
            for e in &got {
                assert_eq!(e.data.get(), format!("{{\"n\":{}}}", e.seq.0));
            }
            // A short page from before the floor starts at the floor.
            let page = s.read_events(&r, Seq(after), 2).await.unwrap();
            assert_eq!(
                seqs(&page),
                want.iter().copied().take(2).collect::<Vec<_>>()
            );
        }
        // Paging from 0 crosses the boundary without a gap.
        let (mut after, mut seen) = (Seq(0), Vec::new());
        loop {
            let page = s.read_events(&r, after, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            seen.extend(seqs(&page));
        }
        assert_eq!(seen, retained, "trim {before}: paging");
        let rec = s.load_room(&r).await.unwrap().unwrap();
        assert_eq!(rec.head, Seq(20));
        assert_eq!(
            rec.head_hlc.as_ref().map(HlcText::as_str),
            Some("0000000000020-000000-n")
        );
        let keys = s.recent_keys(&r, 100).await.unwrap();
        assert_eq!(keys.iter().map(|k| k.seq.0).collect::<Vec<_>>(), retained);
        let keys = s.recent_keys(&r, 3).await.unwrap();
        let tail: Vec<u64> = retained.iter().copied().rev().take(3).rev().collect();
        assert_eq!(keys.iter().map(|k| k.seq.0).collect::<Vec<_>>(), tail);
        let mut found: Vec<u64> = s
            .find_ops(&r, all_ops())
            .await
            .unwrap()
            .iter()
            .map(|f| f.seq.0)
            .collect();
        found.sort();
        assert_eq!(found, retained, "trim {before}: find_ops");
        assert_eq!(s.seq_at_or_after(&r, 0).await.unwrap(), Some(Seq(floor)));
    }
    // The log continues after the head that survived.
    s.append(&r, vec![ev(21, "c", Some("m21"))]).await.unwrap();
    assert_eq!(
        seqs(&s.read_events(&r, Seq(3), 100).await.unwrap()),
        [20, 21]
    );
    assert_eq!(seqs(&s.read_events(&r, Seq(20), 100).await.unwrap()), [21]);
}

/// Every field of an event comes back exactly as appended, through every read (`read_events`,
/// `recent_keys`, `find_ops`, `load_room`'s head hlc): ids at their length bound and with
/// every kind of printable character, an hlc whose node holds dashes, a missing op id.
pub async fn fields_round_trip(s: Arc<dyn Store>) {
    let r = room("fields");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    let odd: String = (0x21u8..=0x7e).map(char::from).collect();
    let long = "x".repeat(128);
    let mut first = ev(1, &odd[..64], Some(&odd[64..]));
    first.hlc = HlcText::parse("1763812345678-000042-gw-1-eu").unwrap();
    let mut second = ev(2, &long, Some(&long));
    second.hlc = HlcText::parse("1763812345678-000043-gw-1-eu").unwrap();
    let mut third = ev(3, "http:alice", None);
    third.hlc = HlcText::parse("1763812345679-000000-n").unwrap();
    let sent = vec![first, second, third];
    s.append(&r, sent.clone()).await.unwrap();
    let fields = |e: &StoredEvent| {
        (
            e.seq,
            e.hlc.clone(),
            e.from.clone(),
            e.op_id.clone(),
            e.data.get().to_string(),
        )
    };
    let read = s.read_events(&r, Seq(0), 10).await.unwrap();
    assert_eq!(
        read.iter().map(fields).collect::<Vec<_>>(),
        sent.iter().map(fields).collect::<Vec<_>>()
    );
    let keys = s.recent_keys(&r, 10).await.unwrap();
    let expected: Vec<EventKey> = sent
        .iter()
        .map(|e| EventKey {
            seq: e.seq,
            from: e.from.clone(),
            op_id: e.op_id.clone(),
            hlc: e.hlc.clone(),
        })
        .collect();
    assert_eq!(keys, expected);
    let mut found = s
        .find_ops(
            &r,
            vec![
                key(&odd[..64], &odd[64..]),
                key(&long, &long),
                key("http:alice", "x"),
            ],
        )
        .await
        .unwrap();
    found.sort_by_key(|f| f.seq);
    let expected: Vec<FoundOp> = sent[..2]
        .iter()
        .map(|e| FoundOp {
            from: e.from.clone(),
            op_id: e.op_id.clone().unwrap(),
            seq: e.seq,
            hlc: e.hlc.clone(),
        })
        .collect();
    assert_eq!(found, expected);
    let rec = s.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.head_hlc, Some(sent[2].hlc.clone()));
    // The wall time of an hlc finds its first event, whatever the node and counter.
    assert_eq!(
        s.seq_at_or_after(&r, 1_763_812_345_678).await.unwrap(),
        Some(Seq(1))
    );
    assert_eq!(
        s.seq_at_or_after(&r, 1_763_812_345_679).await.unwrap(),
        Some(Seq(3))
    );
    assert_eq!(
        s.seq_at_or_after(&r, 1_763_812_345_680).await.unwrap(),
        None
    );
}

/// `store_suite!(name, make)`: a module `name` with one `#[test]` per contract of this suite,
/// each on a fresh store from `make` (see the module documentation).
#[macro_export]
macro_rules! store_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_suite!(@contracts $make;
                create_and_load 1,
                append_is_contiguous 1,
                duplicate_op_ids_are_refused 1,
                recent_keys_without_bodies 1,
                trim_keeps_the_head_and_forgets_trimmed_keys 1,
                list_rooms_pages_by_name 1,
                pagination 1,
                client_claims 1,
                snapshots_pruned 1,
                snapshots 1,
                concurrent_rooms 2,
                racing_appenders_one_wins 2,
                zombie_writer_is_fenced 1,
                retried_append_lands_once 1,
                reads_across_a_trim_boundary 1,
                fields_round_trip 1
            );
        }
    };
    (@contracts $make:expr; $($contract:ident $threads:literal),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run($threads, async {
                    let (store, _guard) = $make;
                    $crate::store::suite::$contract(store).await;
                });
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> (Arc<dyn Store>, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(
            &dir.path().join("t.db"),
            false,
            1000,
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        (Arc::new(s), dir)
    }

    crate::store_suite!(memory_store, memory());
    crate::store_suite!(sqlite_store, sqlite());

    fn open(path: &std::path::Path) -> SqliteStore {
        SqliteStore::open(path, true, 1000, crate::metrics::Metrics::new()).unwrap()
    }

    /// The stored text of every id and hlc is what it always was: rows written as earlier
    /// versions wrote them read back field by field, and what this version appends is stored
    /// as the same text.
    #[tokio::test]
    async fn sqlite_format_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let r = room("old");
        let s = open(&path);
        s.create_room(&r, RoomKind::Stream, &Epoch("e1".into()))
            .await
            .unwrap();
        s.close().await;
        drop(s);
        // Rows as an earlier version wrote them: plain text columns.
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "INSERT INTO events (room, seq, hlc, client, op_id, data) VALUES \
                   ((SELECT id FROM rooms WHERE name = 'old'), 1, '1763812345678-000000-gw-1', 'c-1', 'm1', '{\"a\":1}'), \
                   ((SELECT id FROM rooms WHERE name = 'old'), 2, '1763812345678-000001-gw-1', 'http:bob', NULL, '2'); \
                 INSERT INTO clients (client, user) VALUES ('c-1', 'alice');",
            )
            .unwrap();
        }
        let s = open(&path);
        let read = s.read_events(&r, Seq(0), 10).await.unwrap();
        let fields: Vec<_> = read
            .iter()
            .map(|e| {
                (
                    e.seq.0,
                    e.hlc.as_str(),
                    e.from.as_str(),
                    e.op_id.as_ref().map(OpId::as_str),
                    e.data.get(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                (
                    1,
                    "1763812345678-000000-gw-1",
                    "c-1",
                    Some("m1"),
                    "{\"a\":1}"
                ),
                (2, "1763812345678-000001-gw-1", "http:bob", None, "2"),
            ]
        );
        let rec = s.load_room(&r).await.unwrap().unwrap();
        assert_eq!(
            rec.head_hlc.as_ref().map(HlcText::as_str),
            Some("1763812345678-000001-gw-1")
        );
        let found = s.find_ops(&r, vec![key("c-1", "m1")]).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].hlc.as_str(), "1763812345678-000000-gw-1");
        assert_eq!(
            s.claim_client(&client("c-1"), "mallory").await.unwrap(),
            "alice"
        );
        // What this version appends is stored as the same text.
        let mut e = ev(3, "c-2", Some("m3"));
        e.hlc = HlcText::parse("1763812345679-000000-gw-1").unwrap();
        s.append(&r, vec![e]).await.unwrap();
        s.close().await;
        drop(s);
        let c = rusqlite::Connection::open(&path).unwrap();
        let row: (String, String, Option<String>) = c
            .query_row(
                "SELECT hlc, client, op_id FROM events WHERE seq = 3",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "1763812345679-000000-gw-1".to_string(),
                "c-2".to_string(),
                Some("m3".to_string())
            )
        );
    }

    /// A stored id or hlc that does not validate is a store error on every read of it, never a
    /// panic.
    #[tokio::test]
    async fn sqlite_invalid_stored_values_are_errors() {
        for (column, bad) in [("hlc", "not an hlc"), ("client", "a b"), ("op_id", "")] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let r = room("bad");
            let s = open(&path);
            s.create_room(&r, RoomKind::Stream, &Epoch("e1".into()))
                .await
                .unwrap();
            s.append(&r, vec![ev(1, "c", Some("m1"))]).await.unwrap();
            s.close().await;
            drop(s);
            {
                let c = rusqlite::Connection::open(&path).unwrap();
                c.execute(&format!("UPDATE events SET {column} = ?1"), [bad])
                    .unwrap();
            }
            let s = open(&path);
            let bad_err = |what: &str, e: Option<StoreError>| {
                assert!(
                    matches!(e, Some(StoreError::Backend(_))),
                    "{column} = {bad:?}: {what} must fail: {e:?}"
                );
            };
            bad_err("read_events", s.read_events(&r, Seq(0), 10).await.err());
            bad_err("recent_keys", s.recent_keys(&r, 10).await.err());
            if column == "hlc" {
                bad_err("load_room", s.load_room(&r).await.err());
                bad_err("find_ops", s.find_ops(&r, vec![key("c", "m1")]).await.err());
            }
            s.close().await;
        }
    }

    #[tokio::test]
    async fn sqlite_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let r = room("p");
        {
            let s = SqliteStore::open(&path, true, 1000, crate::metrics::Metrics::new()).unwrap();
            s.create_room(&r, RoomKind::Stream, &Epoch("e9".into()))
                .await
                .unwrap();
            s.append(&r, vec![ev(1, "c", Some("m1")), ev(2, "c", None)])
                .await
                .unwrap();
            s.close().await;
        }
        let s = SqliteStore::open(&path, true, 1000, crate::metrics::Metrics::new()).unwrap();
        let rec = s.load_room(&r).await.unwrap().unwrap();
        assert_eq!((rec.epoch.as_str(), rec.head), ("e9", Seq(2)));
        s.append(&r, vec![ev(3, "c", None)]).await.unwrap();
        assert!(s.append(&r, vec![ev(5, "c", None)]).await.is_err());
    }
}
