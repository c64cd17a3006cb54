//! What the gateways of the distributed mode share: the commit point of shared stream rooms
//! and the feed of each room's committed log ([`CommitPoint`]), next to the [`Store`] the
//! gateways read history and room records from. The Redis implementation lives in
//! `concord-dist`; [`MemoryCommitPoint`] runs several servers of one process against one
//! in-memory log (for tests of the logic above it, never a deployment).
//!
//! A server given a [`Backend`] ([`crate::Env::backend`]) uses its store instead of the one its
//! config names, and serves stream rooms as shared rooms (`room/core/shared.rs`).

mod memory;

pub use memory::MemoryCommitPoint;

pub use crate::room::core::{CommitFailure, CommitResult, NewEvent, RosterDelta};
use crate::store::{Store, StoredEvent};
use async_trait::async_trait;
use concord_core::{Epoch, RoomId, Seq};
use futures::stream::BoxStream;
use std::sync::Arc;

/// One item of a room's feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// Events one commit added to the log (in seq order) in `epoch`.
    Events {
        epoch: Epoch,
        events: Vec<StoredEvent>,
    },
    /// Notifications may have been lost (the subscription dropped or lagged): read the head
    /// again and fill up to it.
    Lost,
    /// What gateway `gw` told about its own clients of the room (membership, presence).
    Roster { gw: String, delta: RosterDelta },
    /// The room's persisted watermark in `epoch` reached `seq` (the workers' PostgreSQL
    /// commit covers every event up to it).
    Persisted { epoch: Epoch, seq: Seq },
}

/// A room's feed: at most once, in commit order while it lasts; it may end (resubscribe).
pub type Feed = BoxStream<'static, FeedItem>;

/// The commit point of shared stream rooms and the feed of every room's log.
#[async_trait]
pub trait CommitPoint: Send + Sync + 'static {
    /// Commits `events` to the log of the stream room `room`, in order, if the room is in
    /// `epoch`: each gets the next seq and an hlc after the log's last (at least its proposed
    /// one); a write whose key (op id, or proposed hlc when it has none) was committed before
    /// gets its original seq and hlc and is not written again. Checks come before any write.
    async fn commit(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        events: Vec<NewEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure>;

    /// Follows `room`'s committed log from now on. Subscribe before reading the head, so that
    /// nothing committed in between is missed.
    async fn subscribe(&self, room: &RoomId) -> Feed;

    /// This gateway's id among the cluster's gateways (unique per process): what its roster
    /// deltas are tagged with and what its heartbeat is kept under.
    fn gateway_id(&self) -> &str;

    /// Tells the other gateways (and the room's stored roster) what changed among this
    /// gateway's clients of `room`; deltas of one room are told in order.
    async fn tell_roster(&self, room: &RoomId, delta: &RosterDelta) -> Result<(), String>;

    /// The room's stored roster: what each gateway (this one excluded) last told, as one delta
    /// per gateway whose heartbeat is alive.
    async fn load_roster(&self, room: &RoomId) -> Result<Vec<(String, RosterDelta)>, String>;

    /// Which of `gateways` have lapsed (their heartbeat is gone); their entries of the room's
    /// stored roster are removed.
    async fn gone_gateways(&self, room: &RoomId, gateways: &[String]) -> Vec<String>;

    /// Whether acks (and deliveries) of shared rooms wait for the persisted watermark (the
    /// ack level `durable`).
    fn durable(&self) -> bool {
        false
    }

    /// The room's persisted watermark (epoch, seq), read now; `None` when unknown.
    async fn persisted(&self, _room: &RoomId) -> Option<(Epoch, Seq)> {
        None
    }
}

/// The parts of a server of the distributed mode: the store its reads go to and the commit
/// point its shared rooms write through.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub commit_point: Arc<dyn CommitPoint>,
}
