//! The store's roles: the commit log (where events become committed), the history (what is
//! read back), the archive (where committed events are kept for good) and the client registry.
//!
//! The embedded backends ([`super::SqliteStore`], [`super::MemoryStore`]) play every role at
//! once and are used as the [`super::Store`] bundle; the distributed mode plays them with
//! different parts (Redis commits, Redis then PostgreSQL reads, PostgreSQL archives and
//! registers). ARCHITECTURE.md ("Store") says which backend plays which role.

use super::{EventKey, FoundOp, RoomRecord, StoreError, StoreResult, StoredEvent};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};

/// What a successful append promises about its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Held in memory (the memory store; Redis without an fsynced append-only file): a crash
    /// of the process that holds them loses them.
    Memory,
    /// In an append-only file fsynced before the answer (Redis with `appendfsync always`).
    Fsynced,
    /// Committed to a database on disk (SQLite).
    Disk,
}

/// One append to a room's log: events that continue `expected_head` exactly (seqs
/// `expected_head + 1 ..`), in the room's `epoch`, under the writer's `fence` if it has one.
#[derive(Debug, Clone)]
pub struct Append {
    /// The room's epoch as the writer knows it (refused with [`StoreError::EpochChanged`]
    /// otherwise).
    pub epoch: Epoch,
    /// The writer's fence, for logs whose rooms have owners (Redis's doc rooms): refused with
    /// [`StoreError::Fenced`] unless it is the room's. Embedded logs have one writer per data
    /// directory (its lock file is their fence) and ignore it.
    pub fence: Option<u64>,
    /// The head the events continue (refused with [`StoreError::HeadMoved`] otherwise).
    pub expected_head: Seq,
    pub events: Vec<StoredEvent>,
}

impl Append {
    /// An append without a fence whose expected head is the seq before its first event's.
    pub fn new(epoch: Epoch, events: Vec<StoredEvent>) -> Self {
        let expected_head = Seq(events.first().map_or(0, |e| e.seq.0.saturating_sub(1)));
        Append {
            epoch,
            fence: None,
            expected_head,
            events,
        }
    }

    /// Refuses an append whose events' seqs do not follow `expected_head` one by one (a
    /// malformed request, told apart from a moved head).
    pub fn check(&self, room: &RoomId) -> StoreResult<()> {
        for (want, e) in (self.expected_head.0 + 1..).zip(&self.events) {
            if e.seq.0 != want {
                return Err(StoreError::NotContiguous {
                    room: room.to_string(),
                    expected: want,
                    got: e.seq.0,
                });
            }
        }
        Ok(())
    }
}

/// Where events become committed: a room's log, appended to at its head.
///
/// `append` answers, for the whole batch:
/// - `Ok(durability)`: every event landed, with the promise `durability` makes;
/// - [`StoreError::HeadMoved`]: the head is not `expected_head` (another writer appended
///   first); nothing landed;
/// - [`StoreError::Fenced`]: another owner took the room; nothing landed;
/// - [`StoreError::NoRoom`] / [`StoreError::EpochChanged`]: reload the room; nothing landed;
/// - [`StoreError::Unknown`]: the batch may or may not have landed. The same append handed
///   over again lands once and is answered as landed (`Ok`) if the first one did. A log that
///   never answers `Unknown` (the embedded ones: their answers are definite) may refuse such
///   a repeat with `HeadMoved` instead;
/// - any other error: nothing landed.
#[async_trait]
pub trait CommitLog: Send + Sync + 'static {
    /// Creates a room durably; creating an existing room with the same kind is a no-op (the
    /// first epoch stays).
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()>;
    /// Appends `append.events` after the room's head, all or nothing (see the trait docs).
    async fn append(&self, room: &RoomId, append: Append) -> StoreResult<Durability>;
}

/// What is read back: room records and committed events.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// The room's record, or `None` if it was never created.
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>>;
    /// Up to `limit` events with seq > `after`, in seq order, from the first readable one on
    /// (events removed by retention are not readable).
    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// The keys of the room's last `last` events, in seq order, without reading their bodies.
    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>>;
    /// The first seq of the room whose hlc's wall time is at or after `wall_ms` (hlcs grow with
    /// seqs), if any.
    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>>;
    /// The committed ops among `keys` (from, op_id).
    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>>;
    /// The latest snapshot at or before `at` (or the latest of all), as (seq, state JSON).
    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>>;
    /// Number of rooms ever created (and not deleted).
    async fn room_count(&self) -> StoreResult<u64>;
    /// Up to `limit` rooms whose name sorts after `after` (all from the start when `None`), in
    /// name order, with their kinds: for background sweeps.
    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>>;
}

/// Where committed events are kept for good: written in batches that may be written again
/// (after a crash, by another worker), with a per-room watermark; doc snapshots; retention.
#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Writes committed events of a room (creating its record with `kind` and `epoch` on first
    /// sight): an event already there at its seq is left alone, so the same batch written twice
    /// writes its events once. Raises the room's watermark to the batch's highest seq, never
    /// lowers it. Durable on return.
    async fn upsert(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        events: Vec<StoredEvent>,
    ) -> StoreResult<()>;
    /// The highest seq archived for the room (`None` before any): it never moves back.
    async fn watermark(&self, room: &RoomId) -> StoreResult<Option<Seq>>;
    /// Deletes the room's events with seq < `before` (retention), except the head event, which
    /// always survives so that seqs never restart. Reads then start at the retained floor; the
    /// idempotency keys of deleted events are forgotten (a retry of one is a new event). Durable
    /// on return.
    async fn trim(&self, room: &RoomId, before: Seq) -> StoreResult<()>;
    /// Saves a snapshot of a doc room's state at `seq` (a JSON document), replacing one at the
    /// same seq. Durable on return. A store that holds the room's log refuses a `seq` beyond
    /// its head (a snapshot never describes events that were not committed).
    async fn save_snapshot(&self, room: &RoomId, seq: Seq, state: String) -> StoreResult<()>;
    /// Deletes all but the newest `keep` snapshots of a room (at least one is kept).
    async fn prune_snapshots(&self, room: &RoomId, keep: usize) -> StoreResult<()>;
}

/// Write-once bindings of client ids to users.
#[async_trait]
pub trait ClientRegistry: Send + Sync + 'static {
    /// Binds `client` to `user` if it is not bound yet; returns the user it is bound to (with
    /// authentication on, a client id — the scope of op ids — belongs to one user for good).
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String>;
}
