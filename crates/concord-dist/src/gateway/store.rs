//! `RedisStore`: the `Store` a gateway of the distributed mode reads from — room records
//! (the meta hash), room creation (`concord_create`), recent history (the room's log stream),
//! and, given the PostgreSQL archive, the history below the stream's floor and the client
//! registry (write-once bindings of client ids to users). What lives elsewhere in this mode
//! answers as documented on each method: writes go through the commit point, retention is the
//! workers' trim (docs/distributed.md, "Gateways").

use super::rebuild::Seen;
use crate::pg::PgArchive;
use crate::{LogError, RedisLog};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};
use concord_server::store::{
    EventKey, FoundOp, RoomRecord, Store, StoreError, StoreResult, StoredEvent,
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

    /// Up to `limit` archived events after `after` (PostgreSQL), as stored events.
    async fn archived(
        &self,
        archive: &PgArchive,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = archive
            .read_events(room.as_str(), after.0, limit)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        rows.into_iter()
            .map(|r| {
                let bad =
                    |what: &str| StoreError::Backend(format!("archived event {}: {what}", r.seq));
                Ok(StoredEvent {
                    seq: Seq(r.seq),
                    hlc: concord_core::HlcText::parse(&r.hlc).ok_or_else(|| bad("hlc"))?,
                    from: ClientId::new(&r.from).map_err(|_| bad("client id"))?,
                    op_id: match &r.op_id {
                        Some(o) => Some(OpId::new(o).map_err(|_| bad("op id"))?),
                        None => None,
                    },
                    data: RawValue::from_string(r.data.clone()).map_err(|_| bad("data"))?,
                })
            })
            .collect()
    }
}

fn backend(e: LogError) -> StoreError {
    match e {
        LogError::NoRoom => StoreError::NoRoom(String::new()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// What gateways of the distributed mode do not do (yet): named in the error.
fn not_here(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "{what} is not available on gateways of the distributed mode"
    ))
}

#[async_trait]
impl Store for RedisStore {
    /// With the archive, a room Redis lost (or whose tail it lost) is rebuilt from it first
    /// (gateway/rebuild.rs).
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let mut meta = self.log.room_meta(room).await.map_err(backend)?;
        if let Some(archive) = &self.archive {
            let none = Seen::default();
            let seen = self.seen.as_deref().unwrap_or(&none);
            let clock = self.log.config().clock.clone();
            let outcome =
                super::rebuild::check(&self.log, archive, seen, room, meta.as_ref(), || {
                    Epoch::generate(clock.now_ms(), rand::random())
                })
                .await;
            match outcome {
                Ok(super::rebuild::Outcome::Kept) => {}
                Ok(_) => meta = self.log.room_meta(room).await.map_err(backend)?,
                // PostgreSQL unreachable: a room Redis has is served as Redis has it (checked
                // again at its next load); one it lacks cannot be told from a new room.
                Err(e) if meta.is_some() => {
                    tracing::warn!(room = %room, error = %e, "checking the room against PostgreSQL failed; serving it from Redis");
                }
                Err(e) => return Err(StoreError::Backend(e.to_string())),
            }
        }
        Ok(meta.map(|m| RoomRecord {
            kind: m.kind,
            epoch: m.epoch,
            head: m.head,
            head_hlc: m.hlc,
        }))
    }

    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        match self.log.create_room(room, kind, epoch).await {
            Ok(_) => Ok(()),
            Err(LogError::Exists { kind }) => Err(StoreError::Backend(format!(
                "room {room} exists as a {kind} room"
            ))),
            Err(e) => Err(backend(e)),
        }
    }

    /// Writes go through the commit point (`concord_commit`), never through here.
    async fn append(&self, _room: &RoomId, _events: Vec<StoredEvent>) -> StoreResult<()> {
        Err(not_here("appending outside the commit point"))
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
                out = self.archived(archive, room, after, want).await?;
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

    async fn trim(&self, _room: &RoomId, _before: Seq) -> StoreResult<()> {
        Ok(())
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

    async fn save_snapshot(&self, _room: &RoomId, _seq: Seq, _state: String) -> StoreResult<()> {
        Err(not_here("doc snapshots"))
    }

    async fn prune_snapshots(&self, _room: &RoomId, _keep: usize) -> StoreResult<()> {
        Ok(())
    }

    async fn load_snapshot(
        &self,
        _room: &RoomId,
        _at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        Ok(None)
    }

    /// In the archive's write-once registry (without an archive a gateway cannot bind client
    /// ids: it runs with `--auth none`).
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String> {
        match &self.archive {
            Some(a) => a
                .claim_client(client.as_str(), user)
                .await
                .map_err(|e| StoreError::Backend(e.to_string())),
            None => Err(not_here("binding client ids to users without PostgreSQL")),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        self.log
            .call_cmd::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}
