//! Doc rooms: the application's handle on a shared JSON document ([`Doc`]), kept in sync by
//! the client's task with operational transformation.
//!
//! Local edits apply at once to the local (optimistic) state and are sent in the background:
//! at most one op list in flight, later edits batched behind it. Committed lists of others are
//! transformed over what is pending and applied. Every `hash` the server sends is checked
//! against a shadow copy of the server's state; a mismatch is reported (`drift`) and the doc
//! resyncs to the server's state.
//!
//! **Pending edits and resyncs.** When the local state is replaced by the server's (drift, a
//! list refused, `conflict`, an epoch reset after a reconnect), pending local edits — the list
//! in flight, the edits behind it, and edits made until the server's state arrives — are
//! dropped, not rebased, and [`DocUpdate::Resynced`] says so. A plain reconnect that recovers
//! the missed events keeps them: the list in flight is resent with its id (the server answers
//! a list it already committed with the original ack) and the rest follows.

use concord_core::doc::{decode_ops, Limits, Op};
use serde_json::Value;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, watch};

use crate::error::ClientError;
use crate::replica::{EditRefusal, Replica};
use crate::task::Command;

/// Options of [`Client::join_doc`](crate::Client::join_doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DocOptions {
    /// Create the doc room (kind `"doc"`, empty object) if it does not exist; otherwise joining
    /// a missing room fails with `not_found`.
    pub create: bool,
}

impl DocOptions {
    /// Join, creating the doc room if it does not exist.
    pub fn create() -> Self {
        DocOptions { create: true }
    }
}

/// Why a doc's state was replaced by the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The state hash differed from the server's (reported to the server with `drift`).
    Drift,
    /// The server refused a list in flight (after [`DocUpdate::Rejected`]).
    Rejected,
    /// The server could no longer rebase a list (its base is older than the server's window).
    Conflict,
    /// After a reconnect the missed ops could not be recovered (epoch changed, history trimmed).
    Reset,
    /// The server's messages broke the protocol's promises (counted in
    /// [`Stats::protocol_violations`](crate::Stats::protocol_violations)).
    Protocol,
}

/// What a [`Doc`] yields, in order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DocUpdate {
    /// The committed list at `seq` was applied; `from_self` if it was this client's own list
    /// (acknowledged; its effect was already in the local state). One per seq, in order,
    /// except across a `Resynced`.
    Changed { seq: u64, from_self: bool },
    /// The server refused the list in flight `id` (`invalid_op`, `rejected` by the schema,
    /// `forbidden`, …): nothing of it was committed. The doc rolls back to the server's state;
    /// a [`Resynced`](DocUpdate::Resynced) with [`ResyncReason::Rejected`] follows.
    Rejected {
        id: String,
        code: String,
        message: String,
    },
    /// The local state was replaced by the server's state at `seq`; pending local edits were
    /// dropped.
    Resynced { seq: u64, reason: ResyncReason },
}

/// Why a doc stopped syncing.
#[derive(Clone, Debug)]
pub(crate) enum DocEnd {
    /// Left (by [`Client::leave`](crate::Client::leave) or after the handle was dropped).
    Left,
    /// Client closed, rejoin refused, …
    Failed(ClientError),
}

/// The replica and its fate, behind the handle's and the task's lock.
#[derive(Debug)]
pub(crate) struct DocCell {
    pub(crate) replica: Replica,
    pub(crate) end: Option<DocEnd>,
}

/// What the handle and the task share.
#[derive(Debug)]
pub(crate) struct DocShared {
    cell: Mutex<DocCell>,
    /// Bumped whenever pending work or the doc's fate may have changed (wakes `flushed`).
    changed: watch::Sender<()>,
}

impl DocShared {
    pub(crate) fn new(replica: Replica) -> Arc<Self> {
        Arc::new(DocShared {
            cell: Mutex::new(DocCell { replica, end: None }),
            changed: watch::Sender::new(()),
        })
    }

    /// Locks the cell. Never held across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, DocCell> {
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn bump(&self) {
        self.changed.send_replace(());
    }

    /// Marks the doc ended (first reason wins) and wakes waiters.
    pub(crate) fn end(&self, end: DocEnd) {
        self.lock().end.get_or_insert(end);
        self.bump();
    }
}

/// What the task sends to a [`Doc`].
#[derive(Debug)]
pub(crate) enum DocDelivery {
    Update(DocUpdate),
    /// The doc ended with an error; nothing follows.
    Ended(ClientError),
}

/// What the task hands to [`Client::join_doc`](crate::Client::join_doc) to build a [`Doc`].
#[derive(Debug)]
pub(crate) struct DocParts {
    pub(crate) shared: Arc<DocShared>,
    pub(crate) rx: mpsc::UnboundedReceiver<DocDelivery>,
}

/// A joined doc room: a local replica of the document that the client keeps in sync.
///
/// [`state`](Doc::state) is always readable; [`edit`](Doc::edit) changes it at once and the
/// change is sent in the background (also while disconnected: it goes out after the
/// reconnect). [`next`](Doc::next) tells what happened, in order. Dropping the `Doc` leaves
/// the room (lazily, at its next event).
#[derive(Debug)]
pub struct Doc {
    name: String,
    shared: Arc<DocShared>,
    /// Wakes the task to send; weak, so that a `Doc` does not keep a closed client's task up.
    kick: mpsc::WeakUnboundedSender<Command>,
    rx: mpsc::UnboundedReceiver<DocDelivery>,
    ended: Option<ClientError>,
}

impl Doc {
    pub(crate) fn new(
        name: String,
        parts: DocParts,
        kick: mpsc::WeakUnboundedSender<Command>,
    ) -> Self {
        Doc {
            name,
            shared: parts.shared,
            kick,
            rx: parts.rx,
            ended: None,
        }
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local state: the server's state at [`seq`](Doc::seq) plus the pending local edits.
    pub fn state(&self) -> Value {
        self.shared.lock().replica.state().clone()
    }

    /// Calls `f` with the local state, without cloning it (do not block in `f`: the client's
    /// task waits for it).
    pub fn with_state<R>(&self, f: impl FnOnce(&Value) -> R) -> R {
        f(self.shared.lock().replica.state())
    }

    /// The last committed seq applied to the local state (own lists count once acknowledged).
    pub fn seq(&self) -> u64 {
        self.shared.lock().replica.seq()
    }

    /// [`seq`](Doc::seq) and [`state`](Doc::state), read together.
    pub fn snapshot(&self) -> (u64, Value) {
        let cell = self.shared.lock();
        (cell.replica.seq(), cell.replica.state().clone())
    }

    /// The room's epoch as last joined.
    pub fn epoch(&self) -> String {
        self.shared.lock().replica.epoch().to_string()
    }

    /// Whether local edits are in flight, buffered, or awaiting a resync.
    pub fn has_pending(&self) -> bool {
        !self.shared.lock().replica.is_flushed()
    }

    /// Applies `ops` to the local state at once, atomically, and queues them for the server.
    /// An op list that does not apply to the local state is refused with
    /// [`ClientError::Apply`] (naming the op) and changes nothing; one that breaks the
    /// protocol's limits with [`ClientError::InvalidOps`] or [`ClientError::TooLarge`].
    /// Fails with [`ClientError::NotJoined`] once the doc was left and
    /// [`ClientError::Closed`] once the client is closed.
    pub fn edit(&self, ops: Vec<Op>) -> Result<(), ClientError> {
        let kick = self.kick.upgrade().ok_or(ClientError::Closed)?;
        if ops.is_empty() {
            return Ok(());
        }
        {
            let mut cell = self.shared.lock();
            match &cell.end {
                Some(DocEnd::Left) => return Err(ClientError::NotJoined(self.name.clone())),
                Some(DocEnd::Failed(e)) => return Err(e.clone()),
                None => {}
            }
            cell.replica.edit(ops).map_err(|e| match e {
                EditRefusal::Invalid(e) => ClientError::InvalidOps(e),
                EditRefusal::Apply(e) => ClientError::Apply(e),
                EditRefusal::TooLarge { size, limit } => ClientError::TooLarge { size, limit },
            })?;
        }
        self.shared.bump();
        let _ = kick.send(Command::DocKick {
            room: self.name.clone(),
        });
        Ok(())
    }

    /// [`edit`](Doc::edit) with an op list in its wire form, e.g.
    /// `[{"op":"text","path":["body"],"pos":0,"insert":"hi"}]`; one that does not decode is
    /// refused with [`ClientError::InvalidOps`].
    pub fn edit_json(&self, ops: Value) -> Result<(), ClientError> {
        let ops = decode_ops(&ops, &Limits::default()).map_err(ClientError::InvalidOps)?;
        self.edit(ops)
    }

    /// The next update; `None` once the doc has ended: left, client closed, or rejoin refused
    /// (see [`end_reason`](Doc::end_reason)).
    pub async fn next(&mut self) -> Option<DocUpdate> {
        let delivery = self.rx.recv().await;
        self.accept(delivery)
    }

    /// The next update if one is already queued.
    pub fn try_next(&mut self) -> Option<DocUpdate> {
        let delivery = self.rx.try_recv().ok();
        self.accept(delivery)
    }

    /// Why the doc ended, if it ended with an error. `None` while open or after a plain leave.
    pub fn end_reason(&self) -> Option<&ClientError> {
        self.ended.as_ref()
    }

    /// Resolves once nothing is in flight, buffered or awaiting a resync, i.e. every local
    /// edit so far was committed (or dropped by a resync) and the local state is the server's
    /// at [`seq`](Doc::seq). Fails if the doc ends first.
    pub async fn flushed(&self) -> Result<(), ClientError> {
        let mut changed = self.shared.changed.subscribe();
        loop {
            {
                let cell = self.shared.lock();
                match &cell.end {
                    Some(DocEnd::Left) => return Err(ClientError::NotJoined(self.name.clone())),
                    Some(DocEnd::Failed(e)) => return Err(e.clone()),
                    None if cell.replica.is_flushed() => return Ok(()),
                    None => {}
                }
            }
            if self.kick.upgrade().is_none() {
                return Err(ClientError::Closed);
            }
            if changed.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    fn accept(&mut self, delivery: Option<DocDelivery>) -> Option<DocUpdate> {
        match delivery? {
            DocDelivery::Update(update) => Some(update),
            DocDelivery::Ended(e) => {
                self.ended = Some(e);
                None
            }
        }
    }
}
