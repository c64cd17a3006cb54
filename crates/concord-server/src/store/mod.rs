//! The store — the durable record of rooms and their events — split by role (`roles.rs`:
//! [`CommitLog`], [`History`], [`Archive`], [`ClientRegistry`]), the [`Store`] bundle of them
//! all, and the embedded backends.
//!
//! A store only ever holds committed events. An append names the head it continues and is
//! refused unless that is the room's head (`HeadMoved`), which is the fencing that keeps a log
//! gap-free even when an earlier commit failed.

use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomKind, Seq};
use serde_json::value::RawValue;

mod lock;
mod memory;
mod roles;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod suite;

pub use lock::DirLock;
pub use memory::MemoryStore;
pub use roles::{Append, Archive, ClientRegistry, CommitLog, Durability, History};
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
    /// The events do not follow the head they name one by one, or a snapshot lies beyond
    /// the head.
    #[error("append to {room} at seq {got} does not continue the log (expected {expected})")]
    NotContiguous {
        room: String,
        expected: u64,
        got: u64,
    },
    /// The room's head is not the one the append continues: nothing landed.
    #[error("append to {room}: the head is {head}, not the expected one")]
    HeadMoved { room: String, head: u64 },
    /// Another owner took the room (its fence is now `current`): nothing landed.
    #[error("append to {room}: fenced (the room's fence is now {current})")]
    Fenced { room: String, current: u64 },
    /// The room's epoch is not the writer's: nothing landed; reload the room.
    #[error("append to {room}: the room's epoch is now {current}")]
    EpochChanged { room: String, current: Epoch },
    /// The append may or may not have landed (a timeout, a lost connection): hand the same
    /// append over again (see [`CommitLog`]).
    #[error("outcome unknown: {0}")]
    Unknown(String),
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

/// The bundle of every role that the embedded mode and the room actors use
/// (`Arc<dyn Store>`), with the backend's health checks and shutdown. Implementations:
/// [`SqliteStore`] (embedded), [`MemoryStore`] (tests); a gateway of the distributed mode
/// bundles its own parts (concord-dist, `GatewayStore`).
#[async_trait]
pub trait Store: CommitLog + History + Archive + ClientRegistry {
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
