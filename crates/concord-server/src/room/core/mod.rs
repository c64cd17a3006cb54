//! The room core: everything a room decides, without IO and without an async runtime —
//! idempotency (with the retries waiting for their seq), seq + hlc assignment, the recent
//! window, doc rebasing, catch-up selection and the `joined` budget, what to do when a commit
//! succeeds or fails (ack, broadcast, or reload), and the members with their presence
//! ([`Members`]: membership events and coalesced presence, over member handles that queue
//! frames without waiting).
//!
//! Inputs are messages ([`RoomCore::publish`], [`RoomCore::op`], …) and store outcomes
//! ([`RoomCore::loaded`], [`RoomCore::append_done`]); outputs are [`Effect`]s, queued in order
//! for the shell (`room/actor/`) to carry out: append to the store, answer a waiter, send a
//! frame to the members, reload. Time comes in through [`Env`] (the HLC reading of the node),
//! and the waiter type is opaque (`W`), so tests drive the real core with tokens and a store
//! model. Every waiter handed in comes out in exactly one `Ack` or `Fail` (or through
//! [`RoomCore::take_waiters`] when the shell dies).

// Accessors and `check` serve the crate's tests (public with the `testing` feature).
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

mod answer;
mod check;
mod commit;
mod durable;
mod effect;
mod join;
mod joined;
mod load;
mod members;
mod roster;
mod shared;
mod state;
#[cfg(any(test, feature = "testing"))]
mod step_env;
#[cfg(test)]
mod tests;
mod window;
mod write;

pub use answer::{Acked, RoomError};
pub use effect::Effect;
pub use joined::{JoinBudget, NoRecovery};
pub use load::{Loaded, LoadedRoom};
pub use members::{MemberConn, Members};
pub use roster::RosterDelta;
pub use shared::{CommitFailure, CommitResult, ForwardedList, NewEvent};
#[cfg(any(test, feature = "testing"))]
pub use step_env::StepEnv;
pub use write::FoundOps;

use crate::metrics::Metrics;
use crate::room::doc::DocState;
use concord_core::{Epoch, HlcTimestamp, OpId, RoomId, RoomKind, Seq};
use state::{Batch, State};
use std::collections::VecDeque;

/// The limits and intervals the core applies (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Recent events kept in memory (count and bytes of frames).
    pub room_window: usize,
    pub room_window_bytes: usize,
    /// Idempotency keys kept in memory.
    pub idempotency_cache: usize,
    /// A join with `since` at most this far behind recovers by events.
    pub recovery_window: u64,
    /// Doc events carry `hash` every this many seqs.
    pub doc_hash_every: u64,
    /// A doc snapshot every this many seqs.
    pub doc_snapshot_every: u64,
    /// Rooms are sequenced by a shared commit point (the distributed mode) instead of here:
    /// they load as shared rooms that follow the committed log (a doc room with a replica of
    /// its document, its op lists forwarded to the room's owner).
    pub shared_streams: bool,
    /// Events a shared room buffers behind a gap in its log while the gap is read.
    pub follow_buffer: usize,
    /// Doc lists a gateway forwards to a room's owner at once (the rest wait for a credit).
    pub forward_credits: usize,
}

impl CoreConfig {
    pub fn of(c: &crate::Config) -> Self {
        CoreConfig {
            room_window: c.room_window,
            room_window_bytes: c.room_window_bytes,
            idempotency_cache: c.idempotency_cache,
            recovery_window: c.recovery_window,
            doc_hash_every: c.doc_hash_every,
            doc_snapshot_every: c.doc_snapshot_every,
            shared_streams: false,
            follow_buffer: c.room_window,
            forward_credits: FORWARD_CREDITS,
        }
    }
}

/// What the core needs from the world while handling a message.
pub trait Env {
    /// The node's hybrid logical clock, read now (the clock is injected).
    fn hlc_now(&self) -> HlcTimestamp;
    /// The room's write rate: `Err(retry_after_ms)` when the write must be refused.
    fn room_rate(&self) -> Result<(), u64>;
    /// Runs an expensive computation (a long op list), off the async workers if it can.
    fn heavy(&self, work: &mut dyn FnMut());
}

/// Whoever waits for the outcome of one write.
pub trait Waiting {
    /// The op id, when the write has one (its idempotency key, with the client).
    fn op_id(&self) -> Option<&OpId>;
    /// The client flagged the write as a resend: its key is also looked up beyond the
    /// commit point's recent keys (distributed mode).
    fn resend(&self) -> bool {
        false
    }
}

/// One room's logic and state.
pub struct RoomCore<W> {
    room: RoomId,
    config: CoreConfig,
    metrics: Metrics,
    state: State<W>,
    /// The batch being sequenced (handed to the store by [`RoomCore::submit`]).
    batch: Batch<W>,
    /// Batches handed to the store, oldest first: their outcomes come back in this order.
    inflight: VecDeque<Batch<W>>,
    effects: Vec<Effect<W>>,
    /// Acks and deliveries of shared rooms wait for the persisted watermark (ack level
    /// `durable`, room/core/durable.rs).
    durable_acks: bool,
}

impl<W: Waiting> RoomCore<W> {
    /// A core that knows nothing yet: it asks for a load first ([`Effect::Reload`]).
    pub fn new(room: RoomId, config: CoreConfig, metrics: Metrics) -> Self {
        RoomCore {
            room,
            config,
            metrics,
            state: State::Stale { broken: false },
            batch: Batch::default(),
            inflight: VecDeque::new(),
            effects: vec![Effect::Reload],
            durable_acks: false,
        }
    }

    /// The effects queued so far, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Effect<W>> {
        self.effects.drain(..)
    }

    /// The room does not exist (a join with a kind or a publish that may create it can).
    pub fn is_missing(&self) -> bool {
        matches!(self.state, State::Missing)
    }

    /// The room is known and serving.
    pub fn is_live(&self) -> bool {
        self.state.live().is_some()
    }

    /// The room must be loaded before it can serve, and nothing is in flight any more.
    pub fn needs_reload(&self) -> bool {
        matches!(self.state, State::Stale { .. }) && !self.has_inflight()
    }

    /// Whether batches are in the store's (or the commit point's) hands.
    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty() || self.shared_inflight()
    }

    pub fn kind(&self) -> Option<RoomKind> {
        match &self.state {
            State::Shared { log, .. } if log.doc.is_some() => Some(RoomKind::Doc),
            State::Stream(_) | State::Shared { .. } => Some(RoomKind::Stream),
            State::Doc { .. } => Some(RoomKind::Doc),
            _ => None,
        }
    }

    pub fn epoch(&self) -> Option<&Epoch> {
        self.state.live().map(|l| l.seqr.epoch())
    }

    /// The committed head (zero when the room is not live).
    pub fn committed(&self) -> Seq {
        self.state.live().map_or(Seq::ZERO, |l| l.seqr.committed())
    }

    /// The highest seq handed out (zero when the room is not live).
    pub fn assigned(&self) -> Seq {
        self.state.live().map_or(Seq::ZERO, |l| l.seqr.assigned())
    }

    /// The document of a doc room (its state runs ahead of the commit by the lists in flight;
    /// in the distributed mode, the replica at the delivered head).
    pub fn doc(&self) -> Option<&DocState> {
        match &self.state {
            State::Doc { doc, .. } => Some(doc),
            State::Shared { log, .. } => log.doc.as_deref(),
            _ => None,
        }
    }

    /// Whether a join must wait for the commits in flight (a doc room sequenced here: its
    /// document runs ahead of the commit).
    pub fn join_waits_for_commits(&self) -> bool {
        matches!(self.state, State::Doc { .. })
    }

    /// A doc room's state to save when it unloads: (seq, state JSON), when everything is
    /// committed and newer than the last snapshot.
    pub fn unload_snapshot(&self) -> Option<(Seq, String)> {
        let State::Doc { live, doc } = &self.state else {
            return None;
        };
        (doc.seq > doc.snapshot_seq && doc.seq == live.seqr.committed())
            .then(|| (doc.seq, doc.state.to_string()))
    }

    /// Why a room that is not live cannot answer (`unavailable`).
    fn stale_message(&self) -> &'static str {
        match self.state {
            State::Stale { broken: true } => BROKEN_MESSAGE,
            _ => "room is recovering from a store error; retry",
        }
    }

    /// Every waiter the core holds (the batch being sequenced, the batches in flight, the
    /// retries waiting for their seq): for a shell that ends abnormally and must answer them.
    pub fn take_waiters(&mut self) -> Vec<W> {
        let mut out: Vec<W> = Vec::new();
        let batches =
            std::iter::once(std::mem::take(&mut self.batch)).chain(self.inflight.drain(..));
        for b in batches {
            out.extend(b.acks.into_iter().map(|a| a.waiter));
        }
        self.shared_waiters(&mut out);
        if let Some(live) = self.state.live_mut() {
            out.extend(live.waiting.drain(..).map(|w| w.2));
        }
        for e in self.effects.drain(..) {
            match e {
                Effect::Ack { waiter, .. } | Effect::Fail { waiter, .. } => out.push(waiter),
                _ => {}
            }
        }
        out
    }

    /// How many writes are sequenced (or gathered) and not yet handed over.
    pub fn sequencing(&self) -> usize {
        self.batch.acks.len() + self.shared_gathering()
    }

    fn fail(&mut self, waiter: W, error: RoomError) {
        self.effects.push(Effect::Fail { waiter, error });
    }
}

/// Doc lists one gateway forwards to a room's owner at once.
pub const FORWARD_CREDITS: usize = 64;

/// The answer to every message of a room whose document cannot be loaded.
pub const BROKEN_MESSAGE: &str =
    "the document of this room cannot be loaded; an operator must repair it (concord repair)";
