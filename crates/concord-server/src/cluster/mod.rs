//! What the gateways of the distributed mode share: the commit point of shared stream rooms
//! and the feed of each room's committed log ([`CommitPoint`]), next to the [`Store`] the
//! gateways read history and room records from. The Redis implementation lives in
//! `concord-dist`; [`MemoryCommitPoint`] runs several servers of one process against one
//! in-memory log (for tests of the logic above it, never a deployment).
//!
//! A server given a [`Backend`] ([`crate::Env::backend`]) uses its store instead of the one its
//! config names, and serves stream rooms as shared rooms (`room/core/shared.rs`). Doc rooms
//! have one owner at a time, the gateway holding the room's lease: it runs the OT and commits
//! with its fence and the expected head ([`CommitPoint::commit_doc`]); the other gateways
//! forward their clients' op lists to it ([`CommitPoint::forward`], answered from the owner's
//! [`Inbox`]) and follow the log like a stream room, applying each list to a replica.

mod memory;

pub use memory::MemoryCommitPoint;

pub use crate::room::core::{CommitFailure, CommitResult, ForwardedList, NewEvent, RosterDelta};
use crate::store::{Store, StoredEvent};
use async_trait::async_trait;
use concord_core::{Epoch, RoomId, Seq};
use concord_protocol::outbound::MemberInfo;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The owner's answer to a forwarded list: its seq (a list committed before gets its original
/// one), a refusal (conflict, invalid op, schema), or `Unknown` — forward it again (the owner
/// lost its lease, its commit's outcome is unknown, the answer did not come in time).
pub type ForwardAnswer = Result<CommitResult, CommitFailure>;

/// A list forwarded to this gateway as the room's owner, and where its answer goes.
pub struct Forwarded {
    pub room: RoomId,
    pub list: ForwardedList,
    pub reply: oneshot::Sender<ForwardAnswer>,
}

/// The lists other gateways forward to this one (at most once each: a forwarder that gets no
/// answer forwards the list again).
pub type Inbox = BoxStream<'static, Forwarded>;

fn no_docs<T>() -> Result<T, String> {
    Err("this commit point does not serve doc rooms".into())
}

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

    /// Takes a seat for the client of `info`, joining `room` through this gateway, if the
    /// room's stored roster has fewer than `limit` distinct clients or already lists it
    /// (atomically: `max_members_per_room` holds across gateways joining at once); the seat
    /// is the client's roster entry for this gateway. `false`: the room is full.
    async fn take_seat(
        &self,
        room: &RoomId,
        info: &Arc<MemberInfo>,
        limit: usize,
    ) -> Result<bool, String>;

    /// Acquires or renews the doc room's owner lease for this gateway: the fence to commit
    /// with (bumped by every acquisition, kept by a renewal), `None` while another gateway
    /// holds it.
    async fn acquire_lease(&self, _room: &RoomId, _lease: Duration) -> Result<Option<u64>, String> {
        no_docs()
    }

    /// Drops the lease if this gateway holds it.
    async fn release_lease(&self, _room: &RoomId) -> Result<(), String> {
        no_docs()
    }

    /// The gateway holding the doc room's lease, if any.
    async fn lease_holder(&self, _room: &RoomId) -> Result<Option<String>, String> {
        no_docs()
    }

    /// The owner's commit of a doc room: `events` continue the head exactly (their seqs are
    /// the next ones) and are written only while `fence` is the room's fence
    /// ([`CommitFailure::Fenced`]) and the head is the one before the first event
    /// ([`CommitFailure::HeadMoved`]). A call whose events were all committed before is
    /// answered with their original seqs without the head check (a call handed over again
    /// after an unknown outcome).
    async fn commit_doc(
        &self,
        _room: &RoomId,
        _epoch: &Epoch,
        _fence: u64,
        _events: Vec<StoredEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        Err(CommitFailure::Refused(crate::room::core::RoomError::new(
            concord_protocol::ErrorCode::Internal,
            "this commit point does not serve doc rooms",
        )))
    }

    /// Forwards an op list to `owner` (the holder of the room's lease) and waits at most
    /// `timeout` for its answer (then `Unknown`).
    async fn forward(
        &self,
        _owner: &str,
        _room: &RoomId,
        _list: ForwardedList,
        _timeout: Duration,
    ) -> ForwardAnswer {
        Err(CommitFailure::Refused(crate::room::core::RoomError::new(
            concord_protocol::ErrorCode::Internal,
            no_docs::<()>().unwrap_err(),
        )))
    }

    /// The lists forwarded to this gateway (taken once, by the server).
    fn take_inbox(&self) -> Option<Inbox> {
        None
    }

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
