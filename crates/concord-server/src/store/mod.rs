//! The `Store` trait — the durable record of rooms and their events — and its backends.
//!
//! A store only ever holds committed events. `append` returns once the events are durable and
//! refuses any append that does not continue the room's log exactly (`expected` seq), which is
//! the fencing that keeps a log gap-free even when an earlier commit failed.

use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomId, RoomKind, Seq};
use serde_json::value::RawValue;

mod lock;
mod memory;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod suite;

pub use lock::DirLock;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// One committed event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: Seq,
    pub hlc: HlcText,
    /// The client that sent it (`http` for the HTTP API).
    pub from: ClientId,
    /// The client's op id, if it gave one (idempotency key with `from`).
    pub op_id: Option<OpId>,
    pub data: Box<RawValue>,
}

/// The idempotency key of one stored event, without its body (what loading a room needs: the
/// bodies of a room's recent events may be hundreds of megabytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub seq: Seq,
    pub from: ClientId,
    pub op_id: Option<OpId>,
    pub hlc: HlcText,
}

/// What the store knows about a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub kind: RoomKind,
    pub epoch: Epoch,
    /// The last committed seq (0 for an empty room).
    pub head: Seq,
    /// The hlc of the event at `head`, if any.
    pub head_hlc: Option<HlcText>,
}

/// An op found by its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundOp {
    pub from: ClientId,
    pub op_id: OpId,
    pub seq: Seq,
    pub hlc: HlcText,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("room {0} does not exist")]
    NoRoom(String),
    #[error("append to {room} at seq {got} does not continue the log (expected {expected})")]
    NotContiguous {
        room: String,
        expected: u64,
        got: u64,
    },
    #[error("store is closed")]
    Closed,
    /// What was asked for lies before the retained floor of the room (removed by retention).
    #[error("{0}")]
    Trimmed(String),
    /// Another process holds the data directory's lock file.
    #[error("data directory {dir} is in use by another concord process (pid {pid})")]
    InUse { dir: String, pid: String },
    #[error("store backend error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The smallest hlc text of the millisecond `wall_ms`: every hlc of that time or later sorts at
/// or after it (the 13-digit wall time leads the text).
fn hlc_floor(wall_ms: u64) -> String {
    format!("{wall_ms:013}")
}

/// The durable record. Implementations: [`SqliteStore`] (embedded), [`MemoryStore`] (tests).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The room's record, or `None` if it was never created.
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>>;
    /// Creates a room durably; creating an existing room with the same kind is a no-op.
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()>;
    /// Appends events with consecutive seqs following the room's head; durable on return.
    async fn append(&self, room: &RoomId, events: Vec<StoredEvent>) -> StoreResult<()>;
    /// Up to `limit` events with seq > `after`, in seq order.
    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// The keys of the room's last `last` events, in seq order, without reading their bodies.
    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>>;
    /// Number of rooms ever created (and not deleted).
    async fn room_count(&self) -> StoreResult<u64>;
    /// Up to `limit` rooms whose name sorts after `after` (all from the start when `None`), in
    /// name order, with their kinds: for background sweeps.
    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>>;
    /// Deletes the room's events with seq < `before` (retention), except the head event, which
    /// always survives so that seqs never restart. Reads then start at the retained floor; the
    /// idempotency keys of deleted events are forgotten (a retry of one is a new event). Durable
    /// on return.
    async fn trim(&self, room: &RoomId, before: Seq) -> StoreResult<()>;
    /// The first seq of the room whose hlc's wall time is at or after `wall_ms` (hlcs grow with
    /// seqs), if any.
    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>>;
    /// The committed ops among `keys` (from, op_id).
    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>>;
    /// Saves a snapshot of a doc room's state at `seq` (a JSON document), replacing one at the
    /// same seq. Durable on return. Refused if `seq` is beyond the room's head (a snapshot
    /// never describes events that were not committed).
    async fn save_snapshot(&self, room: &RoomId, seq: Seq, state: String) -> StoreResult<()>;
    /// Deletes all but the newest `keep` snapshots of a room (at least one is kept).
    async fn prune_snapshots(&self, room: &RoomId, keep: usize) -> StoreResult<()>;
    /// The latest snapshot at or before `at` (or the latest of all), as (seq, state JSON).
    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>>;
    /// Binds `client` to `user` if it is not bound yet; returns the user it is bound to (with
    /// authentication on, a client id — the scope of op ids — belongs to one user for good).
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String>;
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// Cheap check for `/readyz` that the store can still commit (a full disk, a read-only
    /// file): one tiny write in a scratch place. Defaults to [`Store::ping`].
    async fn ping_write(&self) -> StoreResult<()> {
        self.ping().await
    }
    /// Finishes pending writes and releases the backend (called once, at shutdown).
    async fn close(&self) {}
}
