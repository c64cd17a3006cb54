//! The states of a room (missing, stale, a live stream room, a live doc room, a live room of
//! the distributed mode that follows a shared commit point's log) and the batches of writes
//! with their waiters.

use super::shared::NewEvent;
use super::window::{Committed, Window};
use crate::room::doc::DocState;
use crate::store::StoredEvent;
use concord_core::{Follower, HlcText, IdemKey, IdempotencyTable, Seq, Sequencer};
use std::collections::VecDeque;
use std::sync::Arc;

/// The sequencing state common to both kinds of live room.
pub(super) struct Live<W> {
    pub seqr: Sequencer,
    pub window: Window,
    /// (client, op id) → (seq, hlc) of recent and in-flight keyed writes.
    pub idem: IdempotencyTable<(Seq, HlcText)>,
    /// Retries of writes still in flight: answered once their seq commits.
    pub waiting: Vec<(Seq, HlcText, W)>,
}

pub(super) enum State<W> {
    /// The room does not exist (yet).
    Missing,
    /// Loading failed or a commit failed: reload before serving anything. `broken`: the
    /// document cannot be rebuilt from its op log (not a passing store error).
    Stale {
        broken: bool,
    },
    Stream(Box<Live<W>>),
    Doc {
        live: Box<Live<W>>,
        doc: Box<DocState>,
    },
    /// A room of the distributed mode: a shared commit point (the Redis function) assigns the
    /// seqs of every gateway's writes — of a doc room, the writes its owner rebased —, and
    /// this room follows the committed log (`live.seqr` is the head delivered here; nothing is
    /// sequenced locally; a doc room applies each delivered list to its replica).
    Shared {
        live: Box<Live<W>>,
        log: Box<SharedLog<W>>,
    },
}

/// The writes of a shared stream room and the delivery of its log.
pub(super) struct SharedLog<W> {
    /// Orders the committed log for delivery (notifications, with gaps filled).
    pub follower: Follower<StoredEvent>,
    /// The writes gathered for the next commit.
    pub batch: SharedBatch<W>,
    /// Commits handed to the commit point, oldest first: their outcomes come back in order.
    pub inflight: VecDeque<SharedBatch<W>>,
    /// Doc lists waiting for a credit: at most `forward_credits` are forwarded at once.
    pub queued: VecDeque<SharedBatch<W>>,
    /// Retries of writes in flight here, answered with their original's outcome.
    pub retries: Vec<(IdemKey, W)>,
    /// The highest seq this room's own commits were given.
    pub acked: Seq,
    /// Events of the log in order, not yet delivered to the members because the first one is a
    /// write gathered or in flight here: its ack goes out first (on the publisher's connection the ack
    /// precedes the event, as in the embedded mode).
    pub held: VecDeque<StoredEvent>,
    /// The log moved under the room (new epoch, room gone): nothing new is accepted, and the
    /// room reloads once its commits in flight have their outcomes.
    pub moved: bool,
    /// A doc room's replica: the document at the delivered head (`live.seqr.committed()`).
    pub doc: Option<Box<DocState>>,
    /// At the ack level `durable`: the watermark heard and the acks waiting for it.
    pub durable: Option<super::durable::Durable<W>>,
}

/// Writes committed together: the events in order, each with its waiter.
pub(super) struct SharedBatch<W> {
    pub events: Vec<NewEvent>,
    pub waiters: Vec<W>,
    /// Times the batch was handed over without a known outcome.
    pub attempts: u32,
    /// A doc room's op list (one per batch), forwarded to the owner with this base.
    pub base: Option<Seq>,
}

impl<W> Default for SharedBatch<W> {
    fn default() -> Self {
        SharedBatch {
            events: Vec::new(),
            waiters: Vec::new(),
            attempts: 0,
            base: None,
        }
    }
}

impl<W> SharedLog<W> {
    /// Every batch of writes not answered yet: gathered, in flight, queued.
    pub fn batches(&self) -> impl Iterator<Item = &SharedBatch<W>> {
        std::iter::once(&self.batch)
            .chain(self.inflight.iter())
            .chain(self.queued.iter())
    }
}

impl<W> State<W> {
    pub fn live(&self) -> Option<&Live<W>> {
        match self {
            State::Stream(live) | State::Doc { live, .. } | State::Shared { live, .. } => {
                Some(live)
            }
            _ => None,
        }
    }

    pub fn live_mut(&mut self) -> Option<&mut Live<W>> {
        match self {
            State::Stream(live) | State::Doc { live, .. } | State::Shared { live, .. } => {
                Some(live)
            }
            _ => None,
        }
    }
}

/// One acknowledgement to send once its seq is durable.
pub(super) struct PendingAck<W> {
    pub seq: Seq,
    pub hlc: HlcText,
    pub dropped: Vec<usize>,
    pub waiter: W,
}

/// Sequenced writes: being built, then in the store's hands.
pub(super) struct Batch<W> {
    pub events: Vec<Arc<Committed>>,
    pub acks: Vec<PendingAck<W>>,
    /// What the store must write (moved out when the batch is submitted).
    pub stored: Vec<StoredEvent>,
    /// A doc snapshot to save once the batch is durable: (seq, state JSON).
    pub snapshot: Option<(Seq, String)>,
}

impl<W> Default for Batch<W> {
    fn default() -> Self {
        Batch {
            events: Vec::new(),
            acks: Vec::new(),
            stored: Vec::new(),
            snapshot: None,
        }
    }
}
