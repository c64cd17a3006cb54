//! Messages to a room actor and the ways it answers them.

use crate::limiter::Bucket;
use crate::outbound::{ConnHandle, Outbound};
use axum::extract::ws::Utf8Bytes;
use concord_core::{ClientId, OpId, RoomId, RoomKind, Seq};
use concord_protocol::outbound::Ack;
use concord_protocol::{ServerMsg, Since};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

pub enum RoomMsg {
    Join {
        conn: ConnHandle,
        kind: Option<RoomKind>,
        since: Option<Since>,
        history: u64,
        /// Set when the joiner may create the room (it has the `write` right); a join without it
        /// of a missing room gets `not_found`.
        create: Option<Box<Creator>>,
        /// Told `true` once the connection is a member (dropped on refusal).
        joined: oneshot::Sender<bool>,
        /// One of the connection's in-flight slots (`max_inflight_per_conn`), held until the
        /// join is answered: a connection cannot keep thousands of joins (and room loads) waiting.
        slot: OwnedSemaphorePermit,
    },
    /// The connection left (`notify` gets `left`) or went away (`notify` is None).
    Leave {
        conn_id: u64,
        notify: Option<Outbound>,
    },
    Publish(Publish),
    /// A doc op list (already decoded; rights and size checked).
    Op(OpMsg),
    /// Commit, as one new op list, the ops that turn the document back into its state at `seq`.
    Restore {
        seq: Seq,
        /// The HTTP caller's client id (scope of the waiter's idempotency key).
        client: ClientId,
        waiter: Waiter,
    },
    /// A doc op list another gateway (or this room's own core) forwarded to this gateway as
    /// the room's owner.
    Forward {
        list: crate::cluster::ForwardedList,
        reply: oneshot::Sender<crate::cluster::ForwardAnswer>,
    },
    /// A member's presence (already checked for size and rights).
    Presence {
        conn_id: u64,
        data: Box<RawValue>,
    },
}

/// One event to sequence.
pub struct Publish {
    pub client: ClientId,
    pub data: Box<RawValue>,
    /// Create the room as a stream room if it does not exist (HTTP publish).
    pub create: Option<Box<Creator>>,
    pub waiter: Waiter,
}

/// Who may create a missing room, and the room-creation rates it is held to: checked by the
/// actor only when it really creates the room (joining an existing room costs nothing).
#[derive(Clone)]
pub struct Creator {
    /// The connection's room-creation bucket (none for HTTP).
    pub conn_rate: Option<Arc<Bucket>>,
    /// The key of the user's bucket (`rate_room_create_per_user`): the JWT `sub`; none for the
    /// admin key and without authentication.
    pub user: Option<String>,
}

/// One doc op list to rebase, apply and sequence.
pub struct OpMsg {
    pub client: ClientId,
    /// The seq of the state the ops were made against.
    pub base: Seq,
    pub ops: Vec<concord_core::doc::Op>,
    pub waiter: Waiter,
}

/// Whoever waits for the outcome of one op: its id, when it arrived, and where to answer.
pub struct Waiter {
    pub id: Option<OpId>,
    /// The client flagged the write as a resend (`publish.resend`).
    pub resend: bool,
    pub received: Instant,
    pub reply: Reply,
}

/// Where the outcome of a publish goes.
pub enum Reply {
    /// A WebSocket connection; the permit bounds its publishes in flight.
    Ws {
        out: Outbound,
        _permit: OwnedSemaphorePermit,
    },
    Http(oneshot::Sender<Result<Acked, RoomError>>),
}

pub use super::core::{Acked, RoomError};

impl super::core::Waiting for Waiter {
    fn op_id(&self) -> Option<&OpId> {
        self.id.as_ref()
    }

    fn resend(&self) -> bool {
        self.resend
    }
}

impl Waiter {
    pub fn ack(self, room: &RoomId, acked: Acked) {
        match self.reply {
            Reply::Ws { out, .. } => {
                let id = self.id.as_ref().map(|i| i.as_str()).unwrap_or("");
                let ack = ServerMsg::Ack(Ack {
                    room: room.as_str().into(),
                    id: id.into(),
                    seq: acked.seq.0,
                    hlc: acked.hlc.as_str().into(),
                    dropped: acked.dropped.as_slice().into(),
                });
                out.send(Utf8Bytes::from(ack.encode()));
            }
            Reply::Http(tx) => {
                let _ = tx.send(Ok(acked));
            }
        }
    }

    pub fn fail(self, room: &RoomId, err: RoomError) {
        match self.reply {
            Reply::Ws { out, .. } => {
                let id = self.id.as_ref().map(|i| i.as_str());
                out.send(Utf8Bytes::from(err.frame(room, id)));
            }
            Reply::Http(tx) => {
                let _ = tx.send(Err(err));
            }
        }
    }
}
