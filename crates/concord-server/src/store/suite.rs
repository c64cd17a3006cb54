//! One contract test suite that every `Store` backend must pass.

use super::*;
use std::sync::Arc;

pub(crate) fn ev(seq: u64, from: &str, op: Option<&str>) -> StoredEvent {
    StoredEvent {
        seq: Seq(seq),
        hlc: format!("{:013}-000000-n", seq),
        from: from.to_string(),
        op_id: op.map(str::to_string),
        data: RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
    }
}

pub(crate) async fn recent_keys_without_bodies(s: Arc<dyn Store>) {
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
            from: "d".into(),
            op_id: Some("m3".into()),
            hlc: format!("{:013}-000000-n", 3),
        }
    );
    assert_eq!(keys[0].op_id, None);
    assert_eq!(s.recent_keys(&r, 100).await.unwrap().len(), 4);
    assert!(s.recent_keys(&room("nope"), 5).await.unwrap().is_empty());
}

pub(crate) async fn trim_keeps_the_head_and_forgets_trimmed_keys(s: Arc<dyn Store>) {
    let r = room("trim");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    let evs: Vec<StoredEvent> = (1..=10)
        .map(|n| ev(n, "c", Some(&format!("m{n}"))))
        .collect();
    s.append(&r, evs).await.unwrap();
    assert_eq!(
        s.seq_at_or_after(&r, &format!("{:013}", 4)).await.unwrap(),
        Some(Seq(4))
    );
    assert_eq!(
        s.seq_at_or_after(&r, &format!("{:013}", 11)).await.unwrap(),
        None
    );
    s.trim(&r, Seq(5)).await.unwrap();
    let seqs = |evs: Vec<StoredEvent>| evs.iter().map(|e| e.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(s.read_events(&r, Seq(0), 100).await.unwrap()),
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(s.read_events(&r, Seq(2), 3).await.unwrap()), [5, 6, 7]);
    assert_eq!(seqs(s.read_events(&r, Seq(6), 2).await.unwrap()), [7, 8]);
    assert_eq!(s.seq_at_or_after(&r, "").await.unwrap(), Some(Seq(5)));
    // Trimmed keys are forgotten; retained ones are still found.
    let keys = vec![
        ("c".to_string(), "m2".to_string()),
        ("c".to_string(), "m6".to_string()),
    ];
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

pub(crate) async fn list_rooms_pages_by_name(s: Arc<dyn Store>) {
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

pub(crate) async fn create_and_load(s: Arc<dyn Store>) {
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

pub(crate) async fn append_is_contiguous(s: Arc<dyn Store>) {
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
    assert_eq!(rec.head_hlc.as_deref(), Some("0000000000003-000000-n"));
    let all = s.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(all[0].data.get(), "{\"n\":1}");
    assert_eq!(all[0].op_id.as_deref(), Some("m1"));
}

pub(crate) async fn duplicate_op_ids_are_refused(s: Arc<dyn Store>) {
    let r = room("c");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    s.append(&r, vec![ev(1, "c1", Some("m1"))]).await.unwrap();
    assert!(s.append(&r, vec![ev(2, "c1", Some("m1"))]).await.is_err());
    // same id from another client is another op
    s.append(&r, vec![ev(2, "c2", Some("m1"))]).await.unwrap();
    let found = s
        .find_ops(
            &r,
            vec![
                ("c1".into(), "m1".into()),
                ("c2".into(), "m1".into()),
                ("c3".into(), "m1".into()),
            ],
        )
        .await
        .unwrap();
    let mut seqs: Vec<_> = found.iter().map(|f| (f.from.clone(), f.seq.0)).collect();
    seqs.sort();
    assert_eq!(seqs, vec![("c1".to_string(), 1), ("c2".to_string(), 2)]);
}

pub(crate) async fn pagination(s: Arc<dyn Store>) {
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

pub(crate) async fn concurrent_rooms(s: Arc<dyn Store>) {
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

pub(crate) async fn snapshots(s: Arc<dyn Store>) {
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

pub(crate) async fn snapshots_pruned(s: Arc<dyn Store>) {
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

pub(crate) async fn client_claims(s: Arc<dyn Store>) {
    assert_eq!(s.claim_client("c-1", "alice").await.unwrap(), "alice");
    assert_eq!(
        s.claim_client("c-1", "mallory").await.unwrap(),
        "alice",
        "first claim wins"
    );
    assert_eq!(s.claim_client("c-2", "mallory").await.unwrap(), "mallory");
}

macro_rules! store_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            #[tokio::test]
            async fn create_and_load() {
                let (s, _guard) = $make;
                suite::create_and_load(s).await;
            }
            #[tokio::test]
            async fn append_is_contiguous() {
                let (s, _guard) = $make;
                suite::append_is_contiguous(s).await;
            }
            #[tokio::test]
            async fn duplicate_op_ids_are_refused() {
                let (s, _guard) = $make;
                suite::duplicate_op_ids_are_refused(s).await;
            }
            #[tokio::test]
            async fn recent_keys_without_bodies() {
                let (s, _guard) = $make;
                suite::recent_keys_without_bodies(s).await;
            }
            #[tokio::test]
            async fn trim_keeps_the_head_and_forgets_trimmed_keys() {
                let (s, _guard) = $make;
                suite::trim_keeps_the_head_and_forgets_trimmed_keys(s).await;
            }
            #[tokio::test]
            async fn list_rooms_pages_by_name() {
                let (s, _guard) = $make;
                suite::list_rooms_pages_by_name(s).await;
            }
            #[tokio::test]
            async fn pagination() {
                let (s, _guard) = $make;
                suite::pagination(s).await;
            }
            #[tokio::test]
            async fn client_claims() {
                let (s, _guard) = $make;
                suite::client_claims(s).await;
            }
            #[tokio::test]
            async fn snapshots_pruned() {
                let (s, _guard) = $make;
                suite::snapshots_pruned(s).await;
            }
            #[tokio::test]
            async fn snapshots() {
                let (s, _guard) = $make;
                suite::snapshots(s).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_rooms() {
                let (s, _guard) = $make;
                suite::concurrent_rooms(s).await;
            }
        }
    };
}

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

store_suite!(memory_store, memory());
store_suite!(sqlite_store, sqlite());

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
