//! The store roles the PostgreSQL archive plays: [`Archive`] (idempotent batch upsert, the
//! per-room watermark, snapshots), [`ClientRegistry`] (write-once client bindings), and the
//! [`History`] of what it holds (the reads below the Redis stream's floor, and the archive's
//! own contract tests).

use super::{ArchiveError, ArchivedEvent, PgArchive, StoredRow};
use crate::Partitions;
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomId, RoomKind, Seq};
use concord_server::store::{
    Archive, ClientRegistry, EventKey, FoundOp, History, RoomRecord, StoreError, StoreResult,
    StoredEvent,
};
use serde_json::value::RawValue;
use sqlx::Row;

fn backend(e: ArchiveError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn seq_bind(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// An archived row as a stored event (refused if a field does not validate).
pub fn stored_event(r: StoredRow) -> StoreResult<StoredEvent> {
    let bad = |what: &str| StoreError::Backend(format!("archived event {}: {what}", r.seq));
    Ok(StoredEvent {
        seq: Seq(r.seq),
        hlc: HlcText::parse(&r.hlc).ok_or_else(|| bad("hlc"))?,
        from: ClientId::new(&r.from).map_err(|_| bad("client id"))?,
        op_id: match &r.op_id {
            Some(o) => Some(OpId::new(o).map_err(|_| bad("op id"))?),
            None => None,
        },
        data: RawValue::from_string(r.data.clone()).map_err(|_| bad("data"))?,
    })
}

impl PgArchive {
    /// The cluster's partitions (P is recorded by the first worker, `ensure_partitions`).
    async fn partitions(&self) -> StoreResult<Partitions> {
        let p: Option<i32> = sqlx::query_scalar("SELECT partitions FROM cluster WHERE id = 1")
            .fetch_one(self.pool())
            .await
            .map_err(|e| backend(e.into()))?;
        let p = p.ok_or_else(|| {
            StoreError::Backend("the archive has no partition count yet".to_string())
        })?;
        Partitions::new(u32::try_from(p).unwrap_or(0))
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// Up to `limit` archived events after `after`, as stored events.
    pub async fn stored_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = self
            .read_events(room.as_str(), after.0, limit)
            .await
            .map_err(backend)?;
        rows.into_iter().map(stored_event).collect()
    }
}

/// The archive keeps every event: retention (`trim`) is the Redis stream's, done by the
/// workers (docs/distributed.md); `trim` here is a no-op.
#[async_trait]
impl Archive for PgArchive {
    async fn upsert(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        events: Vec<StoredEvent>,
    ) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let partition = self.partitions().await?.of(room.as_str()).number();
        let rows: Vec<ArchivedEvent> = events
            .into_iter()
            .map(|e| ArchivedEvent {
                partition,
                room: room.to_string(),
                kind: kind.as_str().to_string(),
                epoch: epoch.as_str().to_string(),
                seq: e.seq.0,
                hlc: e.hlc.as_str().to_string(),
                from: e.from.as_str().to_string(),
                op_id: e.op_id.map(|o| o.as_str().to_string()),
                data: e.data.get().to_string(),
            })
            .collect();
        self.insert_batch(&rows).await.map_err(backend)
    }

    async fn watermark(&self, room: &RoomId) -> StoreResult<Option<Seq>> {
        Ok(PgArchive::watermark(self, room.as_str())
            .await
            .map_err(backend)?
            .map(|(_, seq)| Seq(seq)))
    }

    async fn trim(&self, _room: &RoomId, _before: Seq) -> StoreResult<()> {
        Ok(())
    }

    async fn save_snapshot(&self, room: &RoomId, seq: Seq, state: String) -> StoreResult<()> {
        PgArchive::save_snapshot(self, room.as_str(), seq.0, &state)
            .await
            .map_err(backend)
    }

    async fn prune_snapshots(&self, room: &RoomId, keep: usize) -> StoreResult<()> {
        PgArchive::prune_snapshots(self, room.as_str(), keep)
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl ClientRegistry for PgArchive {
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String> {
        PgArchive::claim_client(self, client.as_str(), user)
            .await
            .map_err(backend)
    }
}

/// What the archive holds: a room's head is its watermark.
#[async_trait]
impl History for PgArchive {
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let Some(row) = self.room(room.as_str()).await.map_err(backend)? else {
            return Ok(None);
        };
        let kind = RoomKind::parse(&row.kind).map_err(|e| StoreError::Backend(e.to_string()))?;
        let head = Archive::watermark(self, room).await?.unwrap_or(Seq(0));
        let head_hlc = match head.0 {
            0 => None,
            h => self
                .stored_events(room, Seq(h - 1), 1)
                .await?
                .pop()
                .map(|e| e.hlc),
        };
        Ok(Some(RoomRecord {
            kind,
            epoch: Epoch(row.epoch),
            head,
            head_hlc,
        }))
    }

    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.stored_events(room, after, limit).await
    }

    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
        let head = Archive::watermark(self, room).await?.unwrap_or(Seq(0));
        let after = Seq(head.0.saturating_sub(last as u64));
        Ok(self
            .stored_events(room, after, last)
            .await?
            .into_iter()
            .map(|e| EventKey {
                seq: e.seq,
                from: e.from,
                op_id: e.op_id,
                hlc: e.hlc,
            })
            .collect())
    }

    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>> {
        let Some(row) = self.room(room.as_str()).await.map_err(backend)? else {
            return Ok(None);
        };
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM events WHERE shard = $1 AND room = $2 AND hlc >= $3 \
             ORDER BY seq LIMIT 1",
        )
        .bind(self.shard_of(row.partition))
        .bind(room.as_str())
        .bind(format!("{wall_ms:013}"))
        .fetch_optional(self.pool())
        .await
        .map_err(|e| backend(e.into()))?;
        Ok(seq.map(|s| Seq(u64::try_from(s).unwrap_or(0))))
    }

    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>> {
        let keys: Vec<(String, String)> = keys
            .into_iter()
            .map(|(f, o)| (f.as_str().to_string(), o.as_str().to_string()))
            .collect();
        let found = PgArchive::find_ops(self, room.as_str(), &keys)
            .await
            .map_err(backend)?;
        found
            .into_iter()
            .map(|f| {
                let bad =
                    |what: &str| StoreError::Backend(format!("archived op {}: {what}", f.seq));
                Ok(FoundOp {
                    from: ClientId::new(&f.from).map_err(|_| bad("client id"))?,
                    op_id: OpId::new(&f.op_id).map_err(|_| bad("op id"))?,
                    seq: Seq(f.seq),
                    hlc: HlcText::parse(&f.hlc).ok_or_else(|| bad("hlc"))?,
                })
            })
            .collect()
    }

    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        Ok(
            PgArchive::load_snapshot(self, room.as_str(), at.map(|s| s.0))
                .await
                .map_err(backend)?
                .map(|(seq, state)| (Seq(seq), state)),
        )
    }

    async fn room_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rooms")
            .fetch_one(self.pool())
            .await
            .map_err(|e| backend(e.into()))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
        let rows = sqlx::query(
            "SELECT room, kind FROM rooms WHERE room COLLATE \"C\" > $1 \
             ORDER BY room COLLATE \"C\" LIMIT $2",
        )
        .bind(after.map(|r| r.to_string()).unwrap_or_default())
        .bind(seq_bind(limit as u64))
        .fetch_all(self.pool())
        .await
        .map_err(|e| backend(e.into()))?;
        rows.into_iter()
            .map(|r| {
                let (name, kind): (String, String) = (r.get(0), r.get(1));
                let bad = |e: String| StoreError::Backend(format!("archived room {name:?}: {e}"));
                Ok((
                    RoomId::new(&name).map_err(|e| bad(e.to_string()))?,
                    RoomKind::parse(&kind).map_err(|e| bad(e.to_string()))?,
                ))
            })
            .collect()
    }
}
