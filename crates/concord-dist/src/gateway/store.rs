//! `RedisStore`: the `Store` a gateway of the distributed mode reads from — room records
//! (the meta hash), room creation (`concord_create`), and recent history (the room's log
//! stream). What lives elsewhere in this mode answers as documented on each method: writes go
//! through the commit point, retention is the workers' trim, and what PostgreSQL holds (history
//! below the stream's floor, snapshots, the client registry) is read from the archive once the
//! gateway reads it (docs/distributed.md, "Gateways").

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
}

impl RedisStore {
    pub fn new(log: Arc<RedisLog>) -> Self {
        RedisStore { log }
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
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let meta = self.log.room_meta(room).await.map_err(backend)?;
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
        let from = after.max(Seq(meta.floor.0.saturating_sub(1)));
        let limit = limit.saturating_sub((from.0 - after.0) as usize);
        let logged = self
            .log
            .read_log(room, from, limit)
            .await
            .map_err(backend)?;
        logged
            .into_iter()
            .map(|e| {
                let data = RawValue::from_string(e.data)
                    .map_err(|err| StoreError::Backend(format!("event {}: {err}", e.seq)))?;
                Ok(StoredEvent {
                    seq: e.seq,
                    hlc: e.hlc,
                    from: e.from,
                    op_id: e.op_id,
                    data,
                })
            })
            .collect()
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
        let events = self.read_events(room, after, last).await?;
        Ok(events
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

    /// The client registry belongs in PostgreSQL (write-once); until gateways read it there,
    /// a gateway refuses to bind client ids (run the distributed mode with `--auth none`).
    async fn claim_client(&self, _client: &ClientId, _user: &str) -> StoreResult<String> {
        Err(not_here("binding client ids to users"))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.log
            .connection()
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}
