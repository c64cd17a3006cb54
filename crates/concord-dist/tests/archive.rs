//! The PostgreSQL archive against a real PostgreSQL (a fresh database per test).

use concord_dist::pg::{ArchivedEvent, InsertMethod, PgArchive};
use concord_dist::testing::pg::TestDb;

fn event(partition: u32, room: &str, seq: u64, data: &str) -> ArchivedEvent {
    ArchivedEvent {
        partition,
        room: room.to_string(),
        kind: "stream".to_string(),
        epoch: "e1".to_string(),
        seq,
        hlc: format!("{:013}-{:06}-n1", 1_700_000_000_000u64 + seq, 0),
        from: "c1".to_string(),
        op_id: Some(format!("op{seq}")),
        data: data.to_string(),
    }
}

async fn archive(db: &TestDb, method: InsertMethod) -> PgArchive {
    PgArchive::connect_with(
        db.url(),
        concord_dist::pg::PgOptions {
            method,
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

async fn batch_insert_is_idempotent_with(method: InsertMethod) {
    let db = TestDb::migrated().await;
    let a = archive(&db, method).await;
    let batch: Vec<_> = (1..=50).map(|s| event(3, "r1", s, "{\"n\":1}")).collect();
    a.insert_batch(&batch).await.expect("first insert");
    a.insert_batch(&batch).await.expect("same batch again");
    // An overlapping batch too.
    a.insert_batch(&batch[20..]).await.expect("overlap");
    assert_eq!(
        a.event_count().await.unwrap(),
        50,
        "{method:?}: rows written once"
    );
    let rows = a.read_events("r1", 0, 1000).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<_>>(),
        "{method:?}: every seq once"
    );
    assert_eq!(a.watermark("r1").await.unwrap(), Some(("e1".into(), 50)));
}

#[tokio::test]
async fn batch_insert_is_idempotent_unnest() {
    batch_insert_is_idempotent_with(InsertMethod::Unnest).await;
}

#[tokio::test]
async fn batch_insert_is_idempotent_copy() {
    batch_insert_is_idempotent_with(InsertMethod::Copy).await;
}

#[tokio::test]
async fn watermark_never_lowers() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    a.insert_batch(&[event(1, "r", 10, "1")]).await.unwrap();
    assert_eq!(a.watermark("r").await.unwrap(), Some(("e1".into(), 10)));
    // A late batch with older seqs (a stale worker) must not move it back.
    a.insert_batch(&[event(1, "r", 4, "1"), event(1, "r", 5, "1")])
        .await
        .unwrap();
    assert_eq!(
        a.watermark("r").await.unwrap(),
        Some(("e1".into(), 10)),
        "a batch of lower seqs lowered the watermark"
    );
    a.insert_batch(&[event(1, "r", 11, "1")]).await.unwrap();
    assert_eq!(a.watermark("r").await.unwrap(), Some(("e1".into(), 11)));
}

#[tokio::test]
async fn reads_by_after_and_limit_in_order_across_partitions() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    // Rooms of partitions in different shards (K = 8) and the same shard; inserted shuffled.
    let rooms = [("a", 0u32), ("b", 9), ("c", 13), ("d", 1023)];
    let mut batch = Vec::new();
    for seq in (1..=30).rev() {
        for (room, p) in rooms {
            batch.push(event(p, room, seq, &format!("{{\"s\":{seq}}}")));
        }
    }
    a.insert_batch(&batch).await.unwrap();
    for (room, p) in rooms {
        let page = a.read_events(room, 10, 7).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (11..=17).collect::<Vec<_>>(), "room {room} (p {p})");
        assert_eq!(page[0].data, "{\"s\":11}");
        let tail = a.read_events(room, 28, 100).await.unwrap();
        assert_eq!(tail.len(), 2, "room {room}: after 28 leaves 29 and 30");
        assert_eq!(a.room(room).await.unwrap().unwrap().partition, p);
    }
    assert!(a.read_events("nope", 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn nul_escape_in_data_round_trips() {
    let db = TestDb::migrated().await;
    for method in [InsertMethod::Unnest, InsertMethod::Copy] {
        let a = archive(&db, method).await;
        let room = format!("nul-{method:?}");
        let data = r#"{"s":"a\u0000b","t":"é\n"}"#;
        a.insert_batch(&[event(2, &room, 1, data)]).await.unwrap();
        let rows = a.read_events(&room, 0, 10).await.unwrap();
        assert_eq!(
            rows[0].data, data,
            "{method:?}: data must come back byte for byte"
        );
    }
}

#[tokio::test]
async fn client_claim_is_write_once() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    assert_eq!(a.claim_client("c1", "alice").await.unwrap(), "alice");
    assert_eq!(
        a.claim_client("c1", "bob").await.unwrap(),
        "alice",
        "a second claim must not rebind the client"
    );
    assert_eq!(a.claim_client("c2", "bob").await.unwrap(), "bob");
}

#[tokio::test]
async fn op_key_lookup_finds_archived_ops() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    let mut batch: Vec<_> = (1..=5).map(|s| event(7, "r", s, "1")).collect();
    batch[2].op_id = None;
    a.insert_batch(&batch).await.unwrap();
    let keys = vec![
        ("c1".to_string(), "op2".to_string()),
        ("c1".to_string(), "op3".to_string()), // seq 3 has no op id
        ("c2".to_string(), "op4".to_string()), // another client
        ("c1".to_string(), "op5".to_string()),
    ];
    let mut found = a.find_ops("r", &keys).await.unwrap();
    found.sort_by_key(|f| f.seq);
    let got: Vec<(String, u64)> = found.iter().map(|f| (f.op_id.clone(), f.seq)).collect();
    assert_eq!(got, vec![("op2".into(), 2), ("op5".into(), 5)]);
    assert_eq!(found[0].hlc, batch[1].hlc);
}

#[tokio::test]
async fn snapshots_save_and_load() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    assert_eq!(a.load_snapshot("r", None).await.unwrap(), None);
    a.save_snapshot("r", 5, "{\"a\":1}").await.unwrap();
    a.save_snapshot("r", 9, "{\"a\":2}").await.unwrap();
    a.save_snapshot("r", 9, "{\"a\":3}").await.unwrap();
    assert_eq!(
        a.load_snapshot("r", None).await.unwrap(),
        Some((9, "{\"a\":3}".into()))
    );
    assert_eq!(
        a.load_snapshot("r", Some(8)).await.unwrap(),
        Some((5, "{\"a\":1}".into()))
    );
}

#[tokio::test]
async fn partitions_are_fixed_at_first_use() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    a.ensure_partitions(1024).await.unwrap();
    a.ensure_partitions(1024).await.unwrap();
    assert!(
        a.ensure_partitions(2048).await.is_err(),
        "another partition count must be refused"
    );
    // Migrating again is a no-op.
    a.migrate().await.unwrap();
}

#[tokio::test]
async fn refused_data_is_a_refusal() {
    let db = TestDb::migrated().await;
    let a = archive(&db, InsertMethod::Unnest).await;
    let err = a
        .insert_batch(&[event(1, "r", 1, "a\0b")])
        .await
        .expect_err("PostgreSQL text refuses a NUL byte");
    assert!(err.is_refusal(), "{err} should be a refusal");
    assert_eq!(a.event_count().await.unwrap(), 0);
}
