//! The effects a room core asks of its shell: store writes, answers to waiters, frames for the
//! members and reloads. The shell drains them in order after every input.

use super::answer::{Acked, RoomError};
use super::shared::{ForwardedList, NewEvent};
use crate::store::StoredEvent;
use axum::extract::ws::Utf8Bytes;
use concord_core::{Fill, Seq};

/// One thing for the shell to do, in the order given.
pub enum Effect<W> {
    /// Append these events (continuing the head exactly); report the outcome with
    /// [`super::RoomCore::append_done`], in the order the appends were asked for.
    Append(Append),
    /// Answer a waiter with an ack. `fresh` is true when its op was committed just now (not a
    /// retry answered from the idempotency table).
    Ack {
        waiter: W,
        acked: Acked,
        fresh: bool,
    },
    /// Answer a waiter with an error.
    Fail { waiter: W, error: RoomError },
    /// A committed event for every member (encoded once, shared).
    Broadcast(Utf8Bytes),
    /// Shared stream rooms: hand these writes to the commit point, in order; report the
    /// outcome with [`super::RoomCore::commit_done`], in the order the commits were asked for.
    Commit(Vec<NewEvent>),
    /// Doc rooms of the distributed mode: forward this op list to the room's owner; report its
    /// answer with [`super::RoomCore::commit_done`], in order with the commits.
    Forward(ForwardedList),
    /// Shared rooms: read the log's events in `(after, until]` (as many as can be read
    /// at once) and hand them to [`super::RoomCore::filled`] (or report
    /// [`super::RoomCore::fill_failed`]).
    Fill(Fill),
    /// The room must be rebuilt from the store: load it and hand the result to
    /// [`super::RoomCore::loaded`].
    Reload,
}

/// A batch for the store, and the doc snapshot to save once it is durable.
pub struct Append {
    pub events: Vec<StoredEvent>,
    /// (seq, state JSON): saved after the events are durable (the store refuses a snapshot
    /// beyond its head).
    pub snapshot: Option<(Seq, String)>,
}
