//! The task's side of doc rooms: joining, sending op lists (one in flight per doc), routing
//! acks, events and errors to the [`Replica`], drift reports and resyncs, and rejoins.
//!
//! A resync asks the server for its full state by joining the room again without `since` (the
//! connection stays a member); until that `joined` arrives the doc ignores events and acks.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{text, Joined, Link, Step, Task};
use crate::client::Counters;
use crate::doc::{DocDelivery, DocEnd, DocParts, DocShared, DocUpdate, ResyncReason};
use crate::error::ClientError;
use crate::replica::{Replica, Trouble};
use crate::wire;
use crate::EventMsg;
use concord_protocol::ErrorCode;

/// The kind of doc rooms.
pub(super) const DOC_KIND: &str = "doc";

/// A doc room with a live [`Doc`](crate::Doc) handle.
pub(super) struct JoinedDoc {
    pub(super) shared: Arc<DocShared>,
    pub(super) tx: mpsc::UnboundedSender<DocDelivery>,
    /// Joined with `create`: rejoins carry `kind` too.
    create: bool,
}

impl JoinedDoc {
    /// The `join` frame of a session's rejoin: from the last event applied, or without
    /// `since` when the doc waits for the server's full state anyway.
    pub(super) fn rejoin_frame(&self, room: &str) -> String {
        let cell = self.shared.lock();
        let since = match cell.replica.resyncing() {
            Some(_) => None,
            None => Some(cell.replica.since()),
        };
        wire::join(room, self.kind(), since.as_ref(), None)
    }

    fn kind(&self) -> Option<&'static str> {
        self.create.then_some(DOC_KIND)
    }

    /// The doc ends with `reason`.
    pub(super) fn end_with(self, reason: ClientError) {
        self.shared.end(DocEnd::Failed(reason.clone()));
        let _ = self.tx.send(DocDelivery::Ended(reason));
    }
}

impl Task {
    /// The first `joined` of a doc: the replica starts from its `state`.
    pub(super) fn on_doc_joined(
        &mut self,
        j: Joined,
        create: bool,
        reply: oneshot::Sender<Result<DocParts, ClientError>>,
        out: &mut Vec<Message>,
    ) {
        let Joined {
            room,
            kind,
            epoch,
            seq,
            state,
            hash,
            ..
        } = j;
        if kind != DOC_KIND {
            let _ = reply.send(Err(ClientError::UnsupportedKind(kind)));
            self.send_leave(&room, None, out);
            return;
        }
        let state = match state {
            Some(state) => state,
            // A doc that never changed is the empty object.
            None if seq == 0 => serde_json::Value::Object(Default::default()),
            None => {
                Counters::bump(&self.counters.protocol_violations, 1);
                let _ = reply.send(Err(ClientError::Protocol(format!(
                    "joined of doc {room} at seq {seq} carries no state"
                ))));
                self.send_leave(&room, None, out);
                return;
            }
        };
        let ours = concord_core::doc::state_hash(&state);
        if let Some(hash) = hash.filter(|h| *h != ours) {
            self.count_drift(&room, seq, &ours, &hash, out);
        }
        let replica = Replica::new(self.config.client_id.clone(), epoch, seq, state);
        let shared = DocShared::new(replica);
        let (tx, rx) = mpsc::unbounded_channel();
        let parts = DocParts {
            shared: shared.clone(),
            rx,
        };
        if reply.send(Ok(parts)).is_err() {
            self.send_leave(&room, None, out);
            return;
        }
        self.docs.insert(room, JoinedDoc { shared, tx, create });
    }

    /// The `joined` answering a doc's rejoin (session start) or resync.
    pub(super) fn on_doc_rejoined(&mut self, j: Joined, out: &mut Vec<Message>) -> Step {
        let Some(doc) = self.docs.get(&j.room) else {
            return Step::Continue;
        };
        let result = {
            let mut cell = doc.shared.lock();
            let r = &mut cell.replica;
            r.on_rejoined(
                j.epoch,
                j.seq,
                j.recovered,
                &j.events,
                j.state,
                j.hash.as_deref(),
            )
        };
        doc.shared.bump();
        match result {
            Ok(rejoined) => {
                if let Some((seq, ours)) = rejoined.hash_mismatch {
                    let theirs = j.hash.unwrap_or_default();
                    self.count_drift(&j.room, seq, &ours, &theirs, out);
                }
                self.deliver(&j.room, rejoined.updates, out);
                if rejoined.need_state {
                    self.request_state(&j.room, out);
                }
                self.flush_doc(&j.room, out);
                Step::Continue
            }
            Err(trouble) => self.doc_trouble(&j.room, trouble, out),
        }
    }

    /// A live event of a doc room.
    pub(super) fn on_doc_event(&mut self, ev: EventMsg, out: &mut Vec<Message>) -> Step {
        let Some(doc) = self.docs.get(&*ev.room) else {
            return Step::Continue;
        };
        let result = doc.shared.lock().replica.on_event(&ev);
        doc.shared.bump();
        match result {
            Ok(update) => {
                self.deliver(&ev.room, update, out);
                self.flush_doc(&ev.room, out);
                Step::Continue
            }
            Err(trouble) => self.doc_trouble(&ev.room, trouble, out),
        }
    }

    /// An `ack` in a doc room.
    pub(super) fn on_doc_ack(
        &mut self,
        room: &str,
        id: &str,
        seq: u64,
        dropped: &[usize],
        out: &mut Vec<Message>,
    ) -> Step {
        let Some(doc) = self.docs.get(room) else {
            return Step::Continue;
        };
        if !dropped.is_empty() {
            tracing::debug!(
                room,
                id,
                seq,
                ?dropped,
                "ops without effect after transformation"
            );
        }
        let result = doc.shared.lock().replica.on_ack(id, seq);
        doc.shared.bump();
        match result {
            Ok(update) => {
                self.deliver(room, update, out);
                self.flush_doc(room, out);
                Step::Continue
            }
            Err(trouble) => self.doc_trouble(room, trouble, out),
        }
    }

    /// An `error` with an `id`: if it answers a doc's list in flight, handles it. `None` if it
    /// is not about a doc op.
    pub(super) fn on_doc_op_error(
        &mut self,
        id: &str,
        room: Option<&str>,
        err: &ClientError,
        out: &mut Vec<Message>,
    ) -> Option<Step> {
        let in_flight = |doc: &JoinedDoc| doc.shared.lock().replica.in_flight_id() == Some(id);
        let room = match room {
            Some(room) => self
                .docs
                .get(room)
                .filter(|d| in_flight(d))
                .map(|_| room.to_string()),
            None => self
                .docs
                .iter()
                .find(|(_, d)| in_flight(d))
                .map(|(name, _)| name.clone()),
        }?;
        let doc = self.docs.get(&room)?;
        let code = err.error_code();
        if matches!(
            code,
            Some(ErrorCode::Unavailable) | Some(ErrorCode::RateLimited)
        ) {
            let backoff = self.backoff;
            let at_least = match err {
                ClientError::Server { retry_after_ms, .. } => {
                    Duration::from_millis(retry_after_ms.unwrap_or(0))
                }
                _ => Duration::ZERO,
            };
            let delay = |n| backoff.delay(n, &mut rand::rng()).max(at_least);
            doc.shared
                .lock()
                .replica
                .retry_later(id, Instant::now(), delay);
            doc.shared.bump();
            tracing::debug!(room, id, error = %err, "op list not taken; will resend");
            return Some(Step::Continue);
        }
        let reason = if code == Some(ErrorCode::Conflict) {
            ResyncReason::Conflict
        } else {
            ResyncReason::Rejected
        };
        if !doc.shared.lock().replica.refused(id, reason) {
            return Some(Step::Continue);
        }
        tracing::info!(room, id, error = %err, "op list refused; resyncing");
        if reason == ResyncReason::Rejected {
            let (code, message) = match err {
                ClientError::Server { code, message, .. } => (code.clone(), message.clone()),
                other => (String::new(), other.to_string()),
            };
            let update = DocUpdate::Rejected {
                id: id.to_string(),
                code,
                message,
            };
            self.deliver(&room, Some(update), out);
        }
        self.request_state(&room, out);
        Some(Step::Continue)
    }

    /// Sends what a doc may send now: its list in flight again, or its buffered edits.
    pub(super) fn flush_doc(&mut self, room: &str, out: &mut Vec<Message>) {
        let may_send = match &self.link {
            Link::Offline => false,
            Link::Rejoining(waiting) => !waiting.contains(room),
            Link::Ready => true,
        };
        if !may_send {
            return;
        }
        let Some(doc) = self.docs.get(room) else {
            return;
        };
        let (nonce, next) = (&self.op_nonce, &mut self.next_op);
        let send = doc.shared.lock().replica.take_send(Instant::now(), || {
            let id = format!("d-{nonce}-{next}");
            *next += 1;
            id
        });
        if let Some(send) = send {
            tracing::trace!(
                room,
                id = send.id,
                base = send.base,
                ops = send.ops.len(),
                resend = send.resend,
                "sending op list"
            );
            out.push(text(wire::op(room, &send.id, send.base, &send.ops)));
            doc.shared.bump();
        }
    }

    pub(super) fn flush_docs(&mut self, out: &mut Vec<Message>) {
        let rooms: Vec<String> = self.docs.keys().cloned().collect();
        for room in rooms {
            self.flush_doc(&room, out);
        }
    }

    pub(super) fn docs_connection_lost(&mut self) {
        for doc in self.docs.values() {
            doc.shared.lock().replica.connection_lost();
        }
    }

    pub(super) fn docs_next_wakeup(&self) -> Option<Instant> {
        self.docs
            .values()
            .filter_map(|d| d.shared.lock().replica.next_wakeup())
            .min()
    }

    /// Whether the doc `room` waits for a `joined` with the server's state.
    pub(super) fn doc_awaits_state(&self, room: &str) -> bool {
        self.docs
            .get(room)
            .is_some_and(|d| d.shared.lock().replica.resyncing().is_some())
    }

    /// Forgets a doc (left or handle dropped). True if it was joined.
    pub(super) fn remove_doc(&mut self, room: &str) -> bool {
        match self.docs.remove(room) {
            Some(doc) => {
                doc.shared.end(DocEnd::Left);
                true
            }
            None => false,
        }
    }

    /// What the replica could not handle: reconnect on a gap; resync on drift or a broken
    /// promise.
    fn doc_trouble(&mut self, room: &str, trouble: Trouble, out: &mut Vec<Message>) -> Step {
        match trouble {
            Trouble::Gap { expected, got } => {
                Counters::bump(&self.counters.protocol_violations, 1);
                tracing::warn!(
                    room,
                    expected,
                    got,
                    "doc event out of sequence; reconnecting to recover"
                );
                Step::Reconnect(format!("room {room} expected seq {expected} got {got}"))
            }
            Trouble::Drift { report, why } => {
                Counters::bump(&self.counters.drift, 1);
                tracing::warn!(room, why, "doc drifted from the server's state; resyncing");
                if let Some((seq, hash)) = report {
                    out.push(text(wire::drift(room, seq, &hash)));
                }
                self.resync(room, ResyncReason::Drift, out);
                Step::Continue
            }
            Trouble::Protocol(why) => {
                Counters::bump(&self.counters.protocol_violations, 1);
                tracing::warn!(room, why, "doc messages broke the protocol; resyncing");
                self.resync(room, ResyncReason::Protocol, out);
                Step::Continue
            }
        }
    }

    /// A state hash that differs from the server's, where a resync cannot help (the server's
    /// own state and hash disagree): counted and reported.
    fn count_drift(
        &mut self,
        room: &str,
        seq: u64,
        ours: &str,
        theirs: &str,
        out: &mut Vec<Message>,
    ) {
        Counters::bump(&self.counters.drift, 1);
        tracing::warn!(
            room,
            seq,
            ours,
            theirs,
            "the server's doc state does not match its hash"
        );
        if self.online() {
            out.push(text(wire::drift(room, seq, ours)));
        }
    }

    fn resync(&mut self, room: &str, reason: ResyncReason, out: &mut Vec<Message>) {
        let Some(doc) = self.docs.get(room) else {
            return;
        };
        let already = {
            let mut cell = doc.shared.lock();
            let already = cell.replica.resyncing().is_some();
            cell.replica.begin_resync(reason);
            already
        };
        doc.shared.bump();
        if !already {
            self.request_state(room, out);
        }
    }

    /// Asks for the doc's full state: `join` without `since` (sent by the next session's
    /// rejoin when offline or while the room's rejoin is still unanswered).
    fn request_state(&mut self, room: &str, out: &mut Vec<Message>) {
        let rejoin_pending = match &self.link {
            Link::Offline => true,
            Link::Rejoining(waiting) => waiting.contains(room),
            Link::Ready => false,
        };
        if rejoin_pending {
            return;
        }
        if let Some(doc) = self.docs.get(room) {
            out.push(text(wire::join(room, doc.kind(), None, None)));
        }
    }

    /// Hands updates to the doc's handle; a dropped handle leaves the room.
    fn deliver(
        &mut self,
        room: &str,
        updates: impl IntoIterator<Item = DocUpdate>,
        out: &mut Vec<Message>,
    ) {
        let Some(doc) = self.docs.get(room) else {
            return;
        };
        let alive = updates
            .into_iter()
            .all(|u| doc.tx.send(DocDelivery::Update(u)).is_ok());
        if !alive {
            self.drop_room(room, out);
        }
    }
}
