//! The body of `insert_batch`: rooms, events, watermarks inside one open transaction.
//!
//! Rows are written in (shard, room, seq) order and rooms in name order, so two transactions
//! over the same rooms (a stale owner and the new one) wait for each other instead of
//! deadlocking.

use std::collections::BTreeMap;

use concord_core::HlcText;
use sqlx::PgConnection;

use super::{copy, ArchiveError, ArchivedEvent, InsertMethod, PgArchive};

/// Column arrays of a batch of events, for `unnest` or COPY.
pub(super) struct Columns {
    pub shard: Vec<i16>,
    pub room: Vec<String>,
    pub seq: Vec<i64>,
    pub epoch: Vec<String>,
    pub hlc: Vec<String>,
    pub from: Vec<String>,
    pub op_id: Vec<Option<String>>,
    pub data: Vec<String>,
}

fn seq_i64(seq: u64) -> Result<i64, ArchiveError> {
    i64::try_from(seq).map_err(|_| ArchiveError::Invalid(format!("seq {seq} out of range")))
}

fn wall_ms(hlc: &str) -> i64 {
    HlcText::parse(hlc)
        .map(|h| h.timestamp().wall_ms)
        .and_then(|ms| i64::try_from(ms).ok())
        .unwrap_or(0)
}

pub(super) async fn insert(
    archive: &PgArchive,
    tx: &mut PgConnection,
    events: &[ArchivedEvent],
    method: InsertMethod,
) -> Result<(), ArchiveError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&ArchivedEvent> = events.iter().collect();
    sorted.sort_by(|a, b| {
        (archive.shard_of(a.partition), &a.room, a.seq).cmp(&(
            archive.shard_of(b.partition),
            &b.room,
            b.seq,
        ))
    });

    // Rooms: first sight wins (kind, epoch, partition of the room's first event here).
    let mut rooms: BTreeMap<&str, &ArchivedEvent> = BTreeMap::new();
    // Watermarks: the highest seq of each room in the batch, with its epoch.
    let mut marks: BTreeMap<&str, &ArchivedEvent> = BTreeMap::new();
    for e in &sorted {
        rooms.entry(&e.room).or_insert(e);
        let m = marks.entry(&e.room).or_insert(e);
        if e.seq > m.seq {
            *m = e;
        }
    }

    let mut r_room = Vec::with_capacity(rooms.len());
    let mut r_kind = Vec::with_capacity(rooms.len());
    let mut r_epoch = Vec::with_capacity(rooms.len());
    let mut r_part = Vec::with_capacity(rooms.len());
    let mut r_created = Vec::with_capacity(rooms.len());
    for (room, e) in &rooms {
        r_room.push(room.to_string());
        r_kind.push(e.kind.clone());
        r_epoch.push(e.epoch.clone());
        r_part.push(i32::try_from(e.partition).map_err(|_| {
            ArchiveError::Invalid(format!("partition {} out of range", e.partition))
        })?);
        r_created.push(wall_ms(&e.hlc));
    }
    sqlx::query(
        "INSERT INTO rooms (room, kind, epoch, partition, created_ms) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[]) \
         ON CONFLICT (room) DO NOTHING",
    )
    .bind(&r_room)
    .bind(&r_kind)
    .bind(&r_epoch)
    .bind(&r_part)
    .bind(&r_created)
    .execute(&mut *tx)
    .await?;

    let mut cols = Columns {
        shard: Vec::with_capacity(sorted.len()),
        room: Vec::with_capacity(sorted.len()),
        seq: Vec::with_capacity(sorted.len()),
        epoch: Vec::with_capacity(sorted.len()),
        hlc: Vec::with_capacity(sorted.len()),
        from: Vec::with_capacity(sorted.len()),
        op_id: Vec::with_capacity(sorted.len()),
        data: Vec::with_capacity(sorted.len()),
    };
    for e in &sorted {
        cols.shard.push(archive.shard_of(e.partition));
        cols.room.push(e.room.clone());
        cols.seq.push(seq_i64(e.seq)?);
        cols.epoch.push(e.epoch.clone());
        cols.hlc.push(e.hlc.clone());
        cols.from.push(e.from.clone());
        cols.op_id.push(e.op_id.clone());
        cols.data.push(e.data.clone());
    }
    match method {
        InsertMethod::Unnest => {
            sqlx::query(
                "INSERT INTO events (shard, room, seq, epoch, hlc, from_client, op_id, data) \
                 SELECT * FROM unnest($1::int2[], $2::text[], $3::int8[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[]) \
                 ON CONFLICT (shard, room, seq) DO NOTHING",
            )
            .bind(&cols.shard)
            .bind(&cols.room)
            .bind(&cols.seq)
            .bind(&cols.epoch)
            .bind(&cols.hlc)
            .bind(&cols.from)
            .bind(&cols.op_id)
            .bind(&cols.data)
            .execute(&mut *tx)
            .await?;
        }
        InsertMethod::Copy => copy::insert(tx, &cols).await?,
    }

    let mut w_room = Vec::with_capacity(marks.len());
    let mut w_epoch = Vec::with_capacity(marks.len());
    let mut w_seq = Vec::with_capacity(marks.len());
    for (room, e) in &marks {
        w_room.push(room.to_string());
        w_epoch.push(e.epoch.clone());
        w_seq.push(seq_i64(e.seq)?);
    }
    sqlx::query(
        "INSERT INTO watermarks AS w (room, epoch, seq) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
         ON CONFLICT (room) DO UPDATE SET \
           epoch = CASE WHEN EXCLUDED.seq > w.seq THEN EXCLUDED.epoch ELSE w.epoch END, \
           seq = GREATEST(w.seq, EXCLUDED.seq)",
    )
    .bind(&w_room)
    .bind(&w_epoch)
    .bind(&w_seq)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
