//! `RedisStore`: the [`History`] a gateway of the distributed mode reads — room records (the
//! meta hash, checked against PostgreSQL when Redis lost a room or its tail), recent history
//! (the room's log stream) and, given the PostgreSQL archive, the history below the stream's
//! floor. Reads that gateways do not serve answer as documented on each method. The rest of
//! a gateway's `Store` is `GatewayStore` (bundle.rs).

use super::rebuild::Seen;
use crate::pg::PgArchive;
use crate::{LogError, RedisLog};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};
use concord_server::store::{
    EventKey, FoundOp, History, RoomRecord, StoreError, StoreResult, StoredEvent,
};
use serde_json::value::RawValue;
use std::sync::Arc;

pub struct RedisStore {
    log: Arc<RedisLog>,
    archive: Option<PgArchive>,
    /// What this gateway acked or delivered (none at the ack level `durable`).
    seen: Option<Arc<Seen>>,
}

impl RedisStore {
    pub fn new(log: Arc<RedisLog>, archive: Option<PgArchive>) -> Self {
        RedisStore {
            log,
            archive,
            seen: None,
        }
    }

    /// Notes the events read here (a join's catch-up, a fill: delivered) in `seen`, and asks
    /// it whether acked events are gone when a room is rebuilt.
    pub fn with_seen(mut self, seen: Option<Arc<Seen>>) -> Self {
        self.seen = seen;
        self
    }
}

fn backend(e: LogError) -> StoreError {
    match e {
        LogError::NoRoom => StoreError::NoRoom(String::new()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// What gateways of the distributed mode do not do (yet): named in the error.
pub(super) fn not_here(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "{what} is not available on gateways of the distributed mode"
    ))
}

#[async_trait]
impl History for RedisStore {
    /// With the archive, a room Redis lost (or whose tail it lost) is rebuilt from it first
    /// (gateway/rebuild.rs).
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let mut meta = self.log.room_meta(room).await.map_err(backend)?;
        if let Some(archive) = &self.archive {
            let none = Seen::default();
            let seen = self.seen.as_deref().unwrap_or(&none);
            let clock = self.log.config().clock.clone();
            let outcome = super::rebuild::check(&self.log, archive, seen, room, &mut meta, || {
                Epoch::generate(clock.now_ms(), rand::random())
            })
            .await;
            match outcome {
                // `meta` is Redis's as the check left it.
                Ok(_) => {}
                // PostgreSQL unreachable: a room Redis has is served as Redis has it (checked
                // again at its next load); one it lacks cannot be told from a new room.
                Err(e) if meta.is_some() => {
                    tracing::warn!(room = %room, error = %e, "checking the room against PostgreSQL failed; serving it from Redis");
                }
                Err(e) => return Err(StoreError::Backend(e.to_string())),
            }
        }
        if let (Some(seen), Some(m)) = (&self.seen, &meta) {
            seen.note_kind(room, m.kind);
        }
        Ok(meta.map(|m| RoomRecord {
            kind: m.kind,
            epoch: m.epoch,
            head: m.head,
            head_hlc: m.hlc,
        }))
    }

    /// From the room's log stream. Below its floor (events moved to PostgreSQL and trimmed
    /// from Redis) the read starts at the floor, as a store's read starts at its retained floor:
    /// a short read that a join turns into a reset (`recovered: false`).
    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let meta = self.log.room_meta(room).await.map_err(backend)?;
        let Some(meta) = meta else {
            return Err(StoreError::NoRoom(room.to_string()));
        };
        // Below the floor: from the archive (as far as the workers wrote it), then from Redis.
        let mut out = Vec::new();
        let below = meta.floor.0.saturating_sub(1);
        if after.0 < below {
            if let Some(archive) = &self.archive {
                let want = ((below - after.0) as usize).min(limit);
                out = archive.stored_events(room, after, want).await?;
                let contiguous = out
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.seq.0 == after.0 + 1 + i as u64);
                if !contiguous || out.len() < want {
                    // Not all archived (a log cap ran ahead of the workers): a short read from
                    // the floor, as without the archive.
                    out.clear();
                } else if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        let done = out.last().map_or(after, |e| e.seq);
        let from = done.max(Seq(below));
        let limit = limit.saturating_sub(out.len() + (from.0 - done.0) as usize);
        if limit == 0 {
            return Ok(out);
        }
        let logged = self
            .log
            .read_log(room, from, limit)
            .await
            .map_err(backend)?;
        if let (Some(seen), Some(last)) = (&self.seen, logged.last()) {
            seen.note(room, &meta.epoch, last.seq);
        }
        for e in logged {
            let data = RawValue::from_string(e.data)
                .map_err(|err| StoreError::Backend(format!("event {}: {err}", e.seq)))?;
            out.push(StoredEvent {
                seq: e.seq,
                hlc: e.hlc,
                from: e.from,
                op_id: e.op_id,
                data,
            });
        }
        Ok(out)
    }

    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
        let Some(meta) = self.log.room_meta(room).await.map_err(backend)? else {
            return Ok(Vec::new());
        };
        let after = Seq(meta
            .head
            .0
            .saturating_sub(last as u64)
            .max(meta.floor.0 - 1));
        // From the floor on, so the log alone answers (no second meta read, no archive).
        let logged = self
            .log
            .read_log(room, after, last)
            .await
            .map_err(backend)?;
        Ok(logged
            .into_iter()
            .map(|e| EventKey {
                seq: e.seq,
                from: e.from,
                op_id: e.op_id,
                hlc: e.hlc,
            })
            .collect())
    }

    /// Not counted on gateways yet (`max_rooms` is not enforced in the distributed mode).
    async fn room_count(&self) -> StoreResult<u64> {
        Ok(0)
    }

    /// Retention is the workers' trim: the gateway's sweep finds nothing to do.
    async fn list_rooms(
        &self,
        _after: Option<RoomId>,
        _limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
        Ok(Vec::new())
    }

    async fn seq_at_or_after(&self, _room: &RoomId, _wall_ms: u64) -> StoreResult<Option<Seq>> {
        Err(not_here("reading a room at a time"))
    }

    /// The commit point checks every key itself.
    async fn find_ops(
        &self,
        _room: &RoomId,
        _keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>> {
        Ok(Vec::new())
    }

    /// Gateways keep no doc snapshots (a doc room loads from its log).
    async fn load_snapshot(
        &self,
        _room: &RoomId,
        _at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        Ok(None)
    }
}
