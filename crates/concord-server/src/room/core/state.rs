//! The states of a room (missing, stale, a live stream room, a live doc room) and the batches
//! of sequenced writes with their waiters.

use super::window::{Committed, Window};
use crate::room::doc::DocState;
use crate::store::StoredEvent;
use concord_core::{HlcText, IdempotencyTable, Seq, Sequencer};
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
}

impl<W> State<W> {
    pub fn live(&self) -> Option<&Live<W>> {
        match self {
            State::Stream(live) | State::Doc { live, .. } => Some(live),
            _ => None,
        }
    }

    pub fn live_mut(&mut self) -> Option<&mut Live<W>> {
        match self {
            State::Stream(live) | State::Doc { live, .. } => Some(live),
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
