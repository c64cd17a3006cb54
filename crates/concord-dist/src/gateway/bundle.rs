//! `GatewayStore`: the `Store` bundle a gateway's room actors run on, made of the parts that
//! play each role in the distributed mode:
//!
//! - [`History`]: [`RedisStore`] (Redis first, then PostgreSQL below the stream's floor);
//! - [`CommitLog`]: rooms are created in Redis (`concord_create`); appends go through the
//!   commit point (`RedisCommitPoint`, over `concord_commit`), never through here, so
//!   `append` is refused. `RedisCommitLog` is the same log as a full `CommitLog`;
//! - [`Archive`]: the workers archive (`PgArchive::insert_batch`) and trim the Redis stream;
//!   a gateway's retention sweep finds nothing to do (`trim` is a no-op) and it keeps no doc
//!   snapshots;
//! - [`ClientRegistry`]: the archive's write-once registry (`PgArchive`); without PostgreSQL a
//!   gateway cannot bind client ids (it runs with `--auth none`).

use super::store::{not_here, RedisStore};
use crate::log::store_error;
use crate::pg::PgArchive;
use crate::RedisLog;
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};
use concord_server::store::{
    Append, Archive, ClientRegistry, CommitLog, Durability, EventKey, FoundOp, History, RoomRecord,
    Store, StoreError, StoreResult, StoredEvent,
};
use std::sync::Arc;

pub struct GatewayStore {
    log: Arc<RedisLog>,
    history: RedisStore,
    archive: Option<PgArchive>,
}

impl GatewayStore {
    pub fn new(log: Arc<RedisLog>, history: RedisStore, archive: Option<PgArchive>) -> Self {
        GatewayStore {
            log,
            history,
            archive,
        }
    }
}

#[async_trait]
impl CommitLog for GatewayStore {
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        self.log
            .create_room(room, kind, epoch)
            .await
            .map(|_| ())
            .map_err(|e| store_error(room, e))
    }

    /// Writes go through the commit point (`concord_commit`), never through here.
    async fn append(&self, _room: &RoomId, _append: Append) -> StoreResult<Durability> {
        Err(not_here("appending outside the commit point"))
    }
}

#[async_trait]
impl History for GatewayStore {
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        self.history.load_room(room).await
    }

    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.history.read_events(room, after, limit).await
    }

    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
        self.history.recent_keys(room, last).await
    }

    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>> {
        self.history.seq_at_or_after(room, wall_ms).await
    }

    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>> {
        self.history.find_ops(room, keys).await
    }

    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        self.history.load_snapshot(room, at).await
    }

    async fn room_count(&self) -> StoreResult<u64> {
        self.history.room_count().await
    }

    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
        self.history.list_rooms(after, limit).await
    }
}

#[async_trait]
impl Archive for GatewayStore {
    /// The workers archive, from the partitions' work streams.
    async fn upsert(
        &self,
        _room: &RoomId,
        _kind: RoomKind,
        _epoch: &Epoch,
        _events: Vec<StoredEvent>,
    ) -> StoreResult<()> {
        Err(not_here("archiving outside the workers"))
    }

    /// The archive's watermark of the room (what the workers wrote).
    async fn watermark(&self, room: &RoomId) -> StoreResult<Option<Seq>> {
        match &self.archive {
            Some(a) => Archive::watermark(a, room).await,
            None => Err(not_here("the archive's watermark without PostgreSQL")),
        }
    }

    /// Retention is the workers' trim: the gateway's sweep finds nothing to do.
    async fn trim(&self, _room: &RoomId, _before: Seq) -> StoreResult<()> {
        Ok(())
    }

    async fn save_snapshot(&self, _room: &RoomId, _seq: Seq, _state: String) -> StoreResult<()> {
        Err(not_here("doc snapshots"))
    }

    async fn prune_snapshots(&self, _room: &RoomId, _keep: usize) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl ClientRegistry for GatewayStore {
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String> {
        match &self.archive {
            Some(a) => ClientRegistry::claim_client(a, client, user).await,
            None => Err(not_here("binding client ids to users without PostgreSQL")),
        }
    }
}

#[async_trait]
impl Store for GatewayStore {
    async fn ping(&self) -> StoreResult<()> {
        self.log
            .call_cmd::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}
