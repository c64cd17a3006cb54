//! The [`Archive`] contracts: a batch written twice (or overlapping another) writes its
//! events once; the watermark follows the highest seq written and never moves back; doc
//! snapshots are saved, replaced, found at or before a seq and pruned. What was written is
//! read back through the [`History`] of the same backend.

use super::*;

/// The same batch twice, and a batch overlapping it: each event is written once, as sent;
/// the watermark is the highest seq written.
pub async fn upsert_is_idempotent(a: Arc<dyn Archive>, h: Arc<dyn History>) {
    let r = room("idem");
    assert_eq!(a.watermark(&r).await.unwrap(), None);
    let batch: Vec<StoredEvent> = (1..=30)
        .map(|n| ev(n, "c", Some(&format!("m{n}"))))
        .collect();
    a.upsert(&r, RoomKind::Stream, &epoch(), batch[..20].to_vec())
        .await
        .unwrap();
    a.upsert(&r, RoomKind::Stream, &epoch(), batch[..20].to_vec())
        .await
        .unwrap();
    assert_eq!(a.watermark(&r).await.unwrap(), Some(Seq(20)));
    a.upsert(&r, RoomKind::Stream, &epoch(), batch[10..].to_vec())
        .await
        .unwrap();
    assert_eq!(a.watermark(&r).await.unwrap(), Some(Seq(30)));
    let read = h.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&read), (1..=30).collect::<Vec<_>>());
    for (got, sent) in read.iter().zip(&batch) {
        assert_eq!(
            (&got.hlc, &got.from, &got.op_id, got.data.get()),
            (&sent.hlc, &sent.from, &sent.op_id, sent.data.get())
        );
    }
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!((rec.kind, rec.epoch), (RoomKind::Stream, epoch()));
    // Another room's watermark is its own.
    assert_eq!(a.watermark(&room("other")).await.unwrap(), None);
}

/// A batch older than the watermark (a slow worker's, written again) changes nothing: the
/// watermark stays, the events stay as first written.
pub async fn watermark_never_moves_back(a: Arc<dyn Archive>, h: Arc<dyn History>) {
    let r = room("wm");
    let batch: Vec<StoredEvent> = (1..=10).map(|n| ev(n, "c", None)).collect();
    a.upsert(&r, RoomKind::Stream, &epoch(), batch.clone())
        .await
        .unwrap();
    let mut stale = batch[3..5].to_vec();
    for e in &mut stale {
        e.data = RawValue::from_string("\"stale\"".into()).unwrap();
    }
    a.upsert(&r, RoomKind::Stream, &epoch(), stale)
        .await
        .unwrap();
    assert_eq!(a.watermark(&r).await.unwrap(), Some(Seq(10)));
    let read = h.read_events(&r, Seq(0), 100).await.unwrap();
    assert_eq!(seqs(&read), (1..=10).collect::<Vec<_>>());
    assert!(read.iter().all(|e| e.data.get() != "\"stale\""), "{read:?}");
    a.upsert(&r, RoomKind::Stream, &epoch(), vec![ev(11, "c", None)])
        .await
        .unwrap();
    assert_eq!(a.watermark(&r).await.unwrap(), Some(Seq(11)));
}

/// Snapshots: the latest at or before a seq, replaced at the same seq, pruned to the newest
/// ones (at least one).
pub async fn snapshots(a: Arc<dyn Archive>, h: Arc<dyn History>) {
    let r = room("s");
    a.upsert(
        &r,
        RoomKind::Doc,
        &epoch(),
        (1..=40).map(|i| ev(i, "c", None)).collect(),
    )
    .await
    .unwrap();
    assert_eq!(h.load_snapshot(&r, None).await.unwrap(), None);
    a.prune_snapshots(&r, 2).await.unwrap();
    a.save_snapshot(&r, Seq(10), r#"{"v":10}"#.into())
        .await
        .unwrap();
    a.save_snapshot(&r, Seq(20), r#"{"v":20}"#.into())
        .await
        .unwrap();
    assert_eq!(
        h.load_snapshot(&r, None).await.unwrap(),
        Some((Seq(20), r#"{"v":20}"#.into()))
    );
    assert_eq!(
        h.load_snapshot(&r, Some(Seq(19))).await.unwrap(),
        Some((Seq(10), r#"{"v":10}"#.into()))
    );
    assert_eq!(
        h.load_snapshot(&r, Some(Seq(20))).await.unwrap().unwrap().0,
        Seq(20)
    );
    assert_eq!(h.load_snapshot(&r, Some(Seq(9))).await.unwrap(), None);
    a.save_snapshot(&r, Seq(20), r#"{"v":"again"}"#.into())
        .await
        .unwrap();
    assert_eq!(
        h.load_snapshot(&r, None).await.unwrap().unwrap().1,
        r#"{"v":"again"}"#
    );
    for seq in [30, 40] {
        a.save_snapshot(&r, Seq(seq), format!(r#"{{"v":{seq}}}"#))
            .await
            .unwrap();
    }
    a.prune_snapshots(&r, 2).await.unwrap();
    assert_eq!(h.load_snapshot(&r, Some(Seq(29))).await.unwrap(), None);
    assert_eq!(
        h.load_snapshot(&r, Some(Seq(39))).await.unwrap(),
        Some((Seq(30), r#"{"v":30}"#.into()))
    );
    a.prune_snapshots(&r, 0).await.unwrap();
    assert_eq!(h.load_snapshot(&r, Some(Seq(39))).await.unwrap(), None);
    assert_eq!(h.load_snapshot(&r, None).await.unwrap().unwrap().0, Seq(40));
}

/// `archive_suite!(name, make)`: a module `name` with one `#[test]` per [`Archive`]
/// contract; `make` yields `(Arc<dyn Archive>, Arc<dyn History>, guard)`: a fresh archive
/// and the history that reads it.
#[macro_export]
macro_rules! archive_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $crate::archive_suite!(@contracts $make;
                upsert_is_idempotent,
                watermark_never_moves_back,
                snapshots
            );
        }
    };
    (@contracts $make:expr; $($contract:ident),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run(1, async {
                    let (archive, history, _guard) = $make;
                    $crate::store::suite::archive::$contract(archive, history).await;
                });
            }
        )*
    };
}
