//! Loading: the room as the store holds it (head, recent keys, the newest events, the doc)
//! becomes the core's state; whatever still waited on the old state is answered first.

use super::answer::RoomError;
use super::state::{Live, State};
use super::window::{Committed, Window};
use super::{Effect, RoomCore, Waiting};
use crate::room::doc::DocState;
use crate::store::{EventKey, RoomRecord, StoredEvent};
use axum::extract::ws::Utf8Bytes;
use concord_core::{IdemKey, IdempotencyTable, RoomKind, Seq, Sequencer};
use concord_protocol::ErrorCode;
use std::sync::Arc;

/// The outcome of loading a room from the store.
pub enum Loaded {
    /// The store has no such room.
    Missing,
    /// The store could not answer (a passing error, described): stale until the next try.
    Failed(String),
    /// The document cannot be rebuilt from its op log (why): stale until repaired.
    Corrupt(String),
    Room(Box<LoadedRoom>),
}

/// What is read to serve a room.
pub struct LoadedRoom {
    pub record: RoomRecord,
    /// The idempotency keys of the newest events (without bodies).
    pub keys: Vec<EventKey>,
    /// The newest events that fit the window, contiguous up to the head (or shorter).
    pub tail: Vec<StoredEvent>,
    /// The document of a doc room, at the head.
    pub doc: Option<DocState>,
}

impl LoadedRoom {
    /// How many of the newest keys and events to read for a room whose head is `head`: the
    /// idempotency table is complete after `head - n`.
    pub fn keys_to_read(cfg: &super::CoreConfig, head: Seq) -> u64 {
        (cfg.room_window.max(cfg.idempotency_cache) as u64).min(head.0)
    }
}

impl<W: Waiting> RoomCore<W> {
    /// Rebuilds the state from what the store holds. Called with nothing in flight.
    pub fn loaded(&mut self, loaded: Loaded) {
        debug_assert!(self.inflight.is_empty(), "loaded with batches in flight");
        // Nothing waits across a reload without an answer.
        let old = std::mem::replace(&mut self.state, State::Stale { broken: false });
        if let State::Stream(mut live)
        | State::Doc { mut live, .. }
        | State::Shared { mut live, .. } = old
        {
            for (_, _, w) in live.waiting.drain(..) {
                let error = RoomError::new(ErrorCode::Unavailable, "commit failed; retry");
                self.effects.push(Effect::Fail { waiter: w, error });
            }
        }
        self.state = match loaded {
            Loaded::Missing => State::Missing,
            Loaded::Failed(_) => State::Stale { broken: false },
            Loaded::Corrupt(_) => State::Stale { broken: true },
            Loaded::Room(r) => self.live_from(*r),
        };
        if self.durable_acks {
            self.hold_until_persisted();
        }
    }

    fn live_from(&self, r: LoadedRoom) -> State<W> {
        let cfg = &self.config;
        let head = r.record.head;
        let after = Seq(head.0 - LoadedRoom::keys_to_read(cfg, head));
        let mut idem = IdempotencyTable::with_committed(cfg.idempotency_cache, after, head);
        for k in &r.keys {
            let Some(op) = &k.op_id else { continue };
            let key = IdemKey {
                client: k.from.clone(),
                id: op.clone(),
            };
            idem.insert(key, k.seq, (k.seq, k.hlc.clone()));
        }
        let mut live = Box::new(Live {
            seqr: Sequencer::new(r.record.epoch, head),
            window: Window::new(cfg.room_window, cfg.room_window_bytes),
            idem,
            waiting: Vec::new(),
        });
        let kind = r.record.kind;
        for e in &r.tail {
            let frame = Utf8Bytes::from(crate::room::event_frame(&self.room, kind, e, None));
            let _ = live.window.push(Arc::new(Committed { seq: e.seq, frame }));
        }
        match (kind, r.doc) {
            (RoomKind::Doc, Some(doc)) if cfg.shared_streams => State::Shared {
                live,
                log: Box::new(super::shared::shared_log(
                    head,
                    cfg.follow_buffer,
                    Some(Box::new(doc)),
                )),
            },
            (RoomKind::Doc, Some(doc)) => State::Doc {
                live,
                doc: Box::new(doc),
            },
            (RoomKind::Doc, None) => State::Stale { broken: true },
            (RoomKind::Stream, _) if cfg.shared_streams => State::Shared {
                live,
                log: Box::new(super::shared::shared_log(head, cfg.follow_buffer, None)),
            },
            (RoomKind::Stream, _) => State::Stream(live),
        }
    }
}
