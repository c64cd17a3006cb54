//! The contracts of a whole [`Store`] bundle that the embedded mode relies on beyond the
//! roles': retention (`trim`) and what reads see after it, op lookups, room counts and
//! listings, snapshots refused beyond the head, duplicate op ids refused, and a retried append
//! refused (an embedded log's answers are definite, so its callers reload instead of
//! retrying).

use super::*;

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
    put(
        &*s,
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
    put(&*s, &r, evs).await.unwrap();
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
    put(&*s, &r, vec![ev(11, "c", Some("m2"))]).await.unwrap();
    assert!(put(&*s, &r, vec![ev(13, "c", None)]).await.is_err());
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

/// An op id is unique per client within a room; `find_ops` finds committed ones.
pub async fn duplicate_op_ids_are_refused(s: Arc<dyn Store>) {
    let r = room("c");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    put(&*s, &r, vec![ev(1, "c1", Some("m1"))]).await.unwrap();
    assert!(put(&*s, &r, vec![ev(2, "c1", Some("m1"))]).await.is_err());
    // same id from another client is another op
    put(&*s, &r, vec![ev(2, "c2", Some("m1"))]).await.unwrap();
    let found = s
        .find_ops(&r, vec![key("c1", "m1"), key("c2", "m1"), key("c3", "m1")])
        .await
        .unwrap();
    let mut seqs: Vec<_> = found.iter().map(|f| (f.from.as_str(), f.seq.0)).collect();
    seqs.sort();
    assert_eq!(seqs, vec![("c1", 1), ("c2", 2)]);
}

/// An append retried with the same events (same seqs, same op ids) after it had in fact
/// committed. An embedded store requires the retry to be **refused** with `HeadMoved` (it no
/// longer continues the log), not accepted as an idempotent repeat: the room actor never
/// retries an append — after a failed or unknown commit it reloads the room (head, keys) from
/// the store — so a store needs no memory of past batches, only the seq fence and the unique
/// op ids. Either way the log holds each op exactly once and `find_ops` finds it at its seq.
pub async fn retried_append_is_refused(s: Arc<dyn Store>) {
    let r = room("retry");
    s.create_room(&r, RoomKind::Stream, &Epoch("e".into()))
        .await
        .unwrap();
    put(&*s, &r, vec![ev(1, "c", Some("r1"))]).await.unwrap();
    let batch = || {
        vec![
            ev(2, "c", Some("r2")),
            ev(3, "c", None),
            ev(4, "d", Some("r4")),
        ]
    };
    // Committed, but the caller saw a timeout: the outcome is unknown to it.
    put(&*s, &r, batch()).await.unwrap();
    for retry in [batch(), batch()[..1].to_vec(), batch()[2..].to_vec()] {
        let got = put(&*s, &r, retry).await;
        assert!(
            matches!(got, Err(StoreError::HeadMoved { head: 4, .. })),
            "a retry of committed events must be refused as its head moved: {got:?}"
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
    put(&*s, &r, vec![ev(5, "c", Some("r5"))]).await.unwrap();
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
    put(
        &*s,
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
    put(&*s, &r, vec![ev(21, "c", Some("m21"))]).await.unwrap();
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
    // The ids of `round_trip_events`, for the op lookups below.
    let odd: String = (0x21u8..=0x7e).map(char::from).collect();
    let long = "x".repeat(128);
    let sent = super::history::round_trip_events();
    put(&*s, &r, sent.clone()).await.unwrap();
    let read = s.read_events(&r, Seq(0), 10).await.unwrap();
    let keys = s.recent_keys(&r, 10).await.unwrap();
    assert_reads_round_trip(&read, &keys, &sent);
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

/// A snapshot is refused for a missing room and beyond the room's head.
pub async fn snapshots_refused_beyond_the_head(s: Arc<dyn Store>) {
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
    put(&*s, &r, (1..=20).map(|i| ev(i, "c", None)).collect())
        .await
        .unwrap();
    assert!(s.save_snapshot(&r, Seq(21), "{}".into()).await.is_err());
    s.save_snapshot(&r, Seq(20), "{}".into()).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

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
        s.append(&r, Append::new(Epoch("e1".into()), vec![e]))
            .await
            .unwrap();
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
            s.append(
                &r,
                Append::new(Epoch("e1".into()), vec![ev(1, "c", Some("m1"))]),
            )
            .await
            .unwrap();
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
            s.append(
                &r,
                Append::new(
                    Epoch("e9".into()),
                    vec![ev(1, "c", Some("m1")), ev(2, "c", None)],
                ),
            )
            .await
            .unwrap();
            s.close().await;
        }
        let s = SqliteStore::open(&path, true, 1000, crate::metrics::Metrics::new()).unwrap();
        let rec = s.load_room(&r).await.unwrap().unwrap();
        assert_eq!((rec.epoch.as_str(), rec.head), ("e9", Seq(2)));
        s.append(&r, Append::new(Epoch("e9".into()), vec![ev(3, "c", None)]))
            .await
            .unwrap();
        assert!(s
            .append(&r, Append::new(Epoch("e9".into()), vec![ev(5, "c", None)]))
            .await
            .is_err());
    }
}
