//! The values the log takes and returns: events to commit, committed answers, room metadata.

use concord_core::{ClientId, Epoch, HlcText, OpId, RoomKind, Seq};
use serde_json::value::RawValue;

/// One event to commit.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub from: ClientId,
    /// The idempotency key with `from`; events without one are never recognised as duplicates.
    pub op_id: Option<OpId>,
    /// The event's JSON (kept as text; spliced raw into the notification).
    pub data: Box<RawValue>,
    /// The client flagged it as a resend: its key is looked up in every idempotency bucket of
    /// the window, not only the recent ones.
    pub resend: bool,
    /// For an event without an op id: a key unique in the cluster (the gateway's proposed hlc)
    /// under which it is recognised when the same call is handed over again.
    pub key: Option<String>,
}

/// One commit call.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The room's epoch as the caller knows it.
    pub epoch: Epoch,
    /// Doc rooms: the owner's fence (the commit is refused unless it is the room's fence).
    pub fence: Option<u64>,
    /// Doc rooms: the head the caller's OT ran against.
    pub expected_head: Option<Seq>,
    /// The caller's HLC reading; each event gets max(proposed, previous + 1).
    pub hlc: HlcText,
    /// The node part of the assigned hlcs.
    pub node: String,
    pub events: Vec<NewEvent>,
}

/// The answer for one event of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub seq: Seq,
    pub hlc: HlcText,
    /// The event was committed earlier (same from + op id): this is its original seq and hlc.
    pub duplicate: bool,
}

/// A room's head as `create_room` and `rebuild` answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomHead {
    pub kind: RoomKind,
    pub epoch: Epoch,
    pub head: Seq,
    /// The hlc of the head event (`None` for an empty room).
    pub hlc: Option<HlcText>,
}

/// Everything the meta hash of a room holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMeta {
    pub kind: RoomKind,
    pub epoch: Epoch,
    pub head: Seq,
    pub hlc: Option<HlcText>,
    /// The doc room's owner fence (0 before any owner).
    pub fence: u64,
    /// The persisted watermark (set by workers).
    pub wm: Seq,
    /// The first seq still in the log stream.
    pub floor: Seq,
}

/// One event read back from a room's log stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub seq: Seq,
    pub hlc: HlcText,
    pub from: ClientId,
    pub op_id: Option<OpId>,
    /// The event's JSON text, as committed.
    pub data: String,
}

/// The answer of `persisted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub wm: Seq,
    pub floor: Seq,
}

/// The answer of `rebuild`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// False when the room already existed in Redis (left unchanged).
    pub rebuilt: bool,
    pub head: RoomHead,
}
