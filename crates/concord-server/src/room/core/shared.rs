//! Shared stream rooms (the distributed mode): every gateway writes through one commit point
//! (the Redis function) that checks idempotency keys and assigns the seqs; every gateway
//! follows the committed log and delivers it to its members in seq order, with no gap.
//!
//! Writes: a publish is admitted here (kind, rate, a retry of a key delivered or in flight
//! here is answered without a new commit), gathered into a batch, and handed over as one
//! [`Effect::Commit`]. Its outcome ([`RoomCore::commit_done`]) acks each waiter with the seq
//! the commit point gave it — a duplicate gets the original seq — or, when the outcome is
//! unknown (a timeout may hide a commit that landed), the same batch is handed over again: the
//! commit point answers what had landed as duplicates, so nothing is written twice and nothing
//! is answered `unavailable` because of an ambiguity. Only a definite refusal fails the
//! waiters; a changed epoch or a vanished room reloads the room.
//!
//! Delivery: notifications ([`RoomCore::notified`]) feed a [`Follower`]; a gap asks for the
//! missing range ([`Effect::Fill`] → [`RoomCore::filled`]). Delivered events enter the window,
//! the idempotency table and go to the members ([`Effect::Broadcast`]) — except that an event
//! which is a write in flight here waits (with everything after it) until its commit's answer
//! acked it: on the publisher's connection the ack precedes the event, as in embedded mode. A room whose own acked
//! commits are not delivered after a while (its notification was lost and nothing followed)
//! is caught up by [`RoomCore::fill_acked`]; after a lost subscription the shell reads the head
//! and calls [`RoomCore::feed_resumed`].
//!
//! Doc rooms (one owner per room, elsewhere in the cluster or in this gateway's shell): a
//! client's op list is not rebased here but forwarded with its base ([`Effect::Forward`]); the
//! owner's answer comes back through [`RoomCore::commit_done`] like a commit's (its seq, the
//! indexes it dropped, or the owner's refusal). Every committed list is applied to the room's
//! replica in seq order as it is delivered, so `joined.state` is the replica at the delivered
//! head and never waits on the owner.
//!
//! [`Follower`]: concord_core::Follower

use super::answer::{Acked, RoomError};
use super::durable::{ack_or_hold, HeldAck};
use super::effect::Effect;
use super::state::{SharedBatch, SharedLog, State};
use super::window::Committed;
use super::{Env, RoomCore, Waiting};
use crate::metrics::Limit;
use crate::room::doc::DocState;
use crate::store::StoredEvent;
use axum::extract::ws::Utf8Bytes;
use concord_core::doc::Op;
use concord_core::{ClientId, Epoch, HlcText, IdemKey, OpId, RoomKind, Seq};
use concord_protocol::ErrorCode;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Outcomes of one commit that are not known after this many hand-overs are answered
/// `unavailable` (a retry with the same id is still exactly once).
pub const MAX_COMMIT_ATTEMPTS: u32 = 8;

/// The same for a doc list forwarded to the owner: an owner that is gone is replaced only
/// after its lease, so a list is forwarded again for longer (the shell pauses between tries).
pub const MAX_FORWARD_ATTEMPTS: u32 = 100;

/// One write for the commit point.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub from: ClientId,
    pub op_id: Option<OpId>,
    /// This gateway's HLC reading when the write was admitted: the hlc it proposes, and a
    /// cluster-unique key for a write without an op id (node ids are unique), so that handing
    /// a batch over again cannot commit it twice.
    pub proposed: HlcText,
    pub data: Box<RawValue>,
    /// The client flagged it as a resend (its key is looked up in every idempotency bucket,
    /// and beyond them in the archive).
    pub resend: bool,
}

/// What the commit point did with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    pub seq: Seq,
    pub hlc: HlcText,
    /// The write had been committed before (this is its original seq and hlc).
    pub duplicate: bool,
    /// A doc op list: the indexes of its ops that rebasing dropped.
    pub dropped: Vec<usize>,
}

/// A doc op list a gateway forwards to the room's owner.
#[derive(Debug, Clone)]
pub struct ForwardedList {
    pub client: ClientId,
    pub op_id: Option<OpId>,
    /// The seq of the state the ops were made against.
    pub base: Seq,
    /// The ops, as the protocol encodes them (a JSON array).
    pub ops: Box<RawValue>,
}

/// Why a commit has no result.
#[derive(Debug, Clone)]
pub enum CommitFailure {
    /// It may or may not have landed (timeout, connection lost): hand it over again.
    Unknown(String),
    /// The room's epoch changed or the room is gone from the commit point: nothing was
    /// written; the room must be reloaded.
    Moved(String),
    /// Refused before any write (nothing landed): the waiters get this error.
    Refused(RoomError),
    /// A doc room's owner commit with a fence that is no longer the room's: another gateway
    /// took the lease; nothing was written.
    Fenced(String),
    /// A doc room's owner commit whose expected head is not the head (given): nothing was
    /// written.
    HeadMoved(Seq),
}

impl<W: Waiting> RoomCore<W> {
    /// A publish into a shared stream room (admitted by `publish`).
    pub(super) fn shared_publish(
        &mut self,
        client: ClientId,
        data: Box<RawValue>,
        w: W,
        env: &dyn Env,
    ) {
        let Some(w) = self.retry_in_flight(&client, w) else {
            return;
        };
        let State::Shared { log, .. } = &mut self.state else {
            unreachable!("called for shared rooms")
        };
        log.batch.events.push(NewEvent {
            from: client,
            op_id: w.op_id().cloned(),
            proposed: HlcText::from(&env.hlc_now()),
            data,
            resend: w.resend(),
        });
        log.batch.waiters.push(w);
    }

    /// A retry of a write gathered or in flight here waits for its original's outcome
    /// (`None`); otherwise the waiter is given back.
    fn retry_in_flight(&mut self, client: &ClientId, w: W) -> Option<W> {
        let State::Shared { log, .. } = &mut self.state else {
            return Some(w);
        };
        let Some(id) = w.op_id() else {
            return Some(w);
        };
        let key = IdemKey {
            client: client.clone(),
            id: id.clone(),
        };
        let in_flight = log
            .batches()
            .flat_map(|b| &b.events)
            .any(|e| same_key(&key, e));
        if in_flight {
            self.metrics.duplicate_ops.inc();
            log.retries.push((key, w));
            return None;
        }
        Some(w)
    }

    /// An op list for a doc room of the distributed mode (admitted by `op`): forwarded to the
    /// owner with its base, one list per forward.
    pub(super) fn shared_op(
        &mut self,
        client: ClientId,
        base: Seq,
        ops: &[Op],
        w: W,
        env: &dyn Env,
    ) {
        let Some(w) = self.retry_in_flight(&client, w) else {
            return;
        };
        let State::Shared { log, .. } = &mut self.state else {
            unreachable!("called for shared rooms")
        };
        let json = concord_core::doc::encode_ops(ops).to_string();
        let data = RawValue::from_string(json).expect("encoded ops are JSON");
        let batch = SharedBatch {
            events: vec![NewEvent {
                from: client,
                op_id: w.op_id().cloned(),
                proposed: HlcText::from(&env.hlc_now()),
                data,
                resend: false,
            }],
            waiters: vec![w],
            attempts: 0,
            base: Some(base),
        };
        if log.inflight.len() >= self.config.forward_credits.max(1) {
            log.queued.push_back(batch);
            return;
        }
        self.effects.push(hand_over(&batch));
        log.inflight.push_back(batch);
    }

    /// Hands the gathered writes of a shared room to the commit point.
    pub(super) fn shared_submit(&mut self) {
        let State::Shared { log, .. } = &mut self.state else {
            return;
        };
        if log.batch.events.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut log.batch);
        self.effects.push(Effect::Commit(batch.events.clone()));
        log.inflight.push_back(batch);
    }

    /// The commit point's answer to the oldest commit in flight.
    pub fn commit_done(&mut self, outcome: Result<Vec<CommitResult>, CommitFailure>) {
        let state = std::mem::replace(&mut self.state, State::Stale { broken: false });
        let State::Shared { live, mut log } = state else {
            self.state = state;
            debug_assert!(false, "a commit outcome for a room that is not shared");
            return;
        };
        let Some(mut done) = log.inflight.pop_front() else {
            self.state = State::Shared { live, log };
            debug_assert!(false, "a commit outcome with nothing in flight");
            return;
        };
        let outcome = match outcome {
            Ok(r) if r.len() != done.waiters.len() => Err(CommitFailure::Refused(RoomError::new(
                ErrorCode::Internal,
                format!(
                    "the commit point answered {} results for {} writes",
                    r.len(),
                    done.waiters.len()
                ),
            ))),
            other => other,
        };
        match outcome {
            Ok(results) => {
                let epoch = live.seqr.epoch().clone();
                // A doc list is counted where it is committed: by the owner's core.
                if done.base.is_none() {
                    let fresh = results.iter().filter(|r| !r.duplicate).count();
                    self.metrics.events_committed.inc_by(fresh as u64);
                }
                for ((w, ev), r) in done.waiters.into_iter().zip(&done.events).zip(results) {
                    log.acked = log.acked.max(r.seq);
                    if r.duplicate {
                        self.metrics.duplicate_ops.inc();
                    }
                    let acked = Acked {
                        seq: r.seq,
                        hlc: r.hlc,
                        epoch: epoch.clone(),
                        dropped: r.dropped,
                    };
                    let admitted_ms = ev.proposed.timestamp().wall_ms;
                    answer_retries(&mut log, ev, &acked, &mut self.effects, &self.metrics);
                    let held = HeldAck {
                        waiter: w,
                        acked,
                        fresh: !r.duplicate,
                        admitted_ms,
                    };
                    ack_or_hold(&mut log.durable, &mut self.effects, &self.metrics, held);
                }
                self.state = State::Shared { live, log };
            }
            // A keyless doc list cannot be told apart from a second copy of itself by the
            // owner: it is not forwarded twice.
            Err(CommitFailure::Unknown(why))
                if done.attempts + 1
                    < (if done.base.is_some() {
                        MAX_FORWARD_ATTEMPTS
                    } else {
                        MAX_COMMIT_ATTEMPTS
                    })
                    && (done.base.is_none() || done.events.iter().all(|e| e.op_id.is_some())) =>
            {
                tracing::debug!(room = %self.room, error = %why, "commit outcome unknown; handing it over again");
                done.attempts += 1;
                self.effects.push(hand_over(&done));
                log.inflight.push_back(done);
                self.state = State::Shared { live, log };
            }
            Err(failure) => {
                let (error, moved) = match failure {
                    CommitFailure::Refused(e) => (e, false),
                    CommitFailure::Unknown(why) => {
                        tracing::error!(room = %self.room, error = %why, "commit outcome still unknown; giving up");
                        let e = RoomError::new(
                            ErrorCode::Unavailable,
                            "the commit's outcome is unknown; retry with the same id",
                        );
                        (e, false)
                    }
                    CommitFailure::Moved(why) | CommitFailure::Fenced(why) => {
                        tracing::warn!(room = %self.room, reason = %why, "the room moved; reloading");
                        let e = RoomError::new(ErrorCode::Unavailable, "room is reloading; retry");
                        (e, true)
                    }
                    CommitFailure::HeadMoved(head) => {
                        tracing::warn!(room = %self.room, head = %head, "the log's head moved; reloading");
                        let e = RoomError::new(ErrorCode::Unavailable, "room is reloading; retry");
                        (e, true)
                    }
                };
                let keys: Vec<NewEvent> = done.events;
                for w in done.waiters {
                    self.fail(w, error.clone());
                }
                for ev in &keys {
                    let mut i = 0;
                    while i < log.retries.len() {
                        if same_key(&log.retries[i].0, ev) {
                            let (_, w) = log.retries.remove(i);
                            self.fail(w, error.clone());
                        } else {
                            i += 1;
                        }
                    }
                }
                log.moved |= moved;
                self.state = State::Shared { live, log };
            }
        }
        // An answered forward gives its credit to the next list waiting.
        if let State::Shared { log, .. } = &mut self.state {
            while !log.moved && log.inflight.len() < self.config.forward_credits.max(1) {
                let Some(next) = log.queued.pop_front() else {
                    break;
                };
                self.effects.push(hand_over(&next));
                log.inflight.push_back(next);
            }
        }
        // Events held for these acks go out now (after them).
        self.deliver();
        // A room that moved reloads once the last outcome is in.
        if matches!(&self.state, State::Shared { log, .. } if log.moved) {
            self.shared_stale();
        }
    }

    /// A shared room whose log moved under it (new epoch, room gone): it accepts nothing new,
    /// and once the outcomes of its commits in flight are in, it answers what is left and
    /// reloads.
    fn shared_stale(&mut self) {
        let State::Shared { log, .. } = &mut self.state else {
            return;
        };
        log.moved = true;
        if !log.inflight.is_empty() {
            return;
        }
        let mut held = Vec::new();
        self.durable_waiters(&mut held);
        for w in held {
            let error = RoomError::new(ErrorCode::Unavailable, "room is reloading; retry");
            self.fail(w, error);
        }
        let old = std::mem::replace(&mut self.state, State::Stale { broken: false });
        if let State::Shared { mut log, .. } = old {
            let error = RoomError::new(ErrorCode::Unavailable, "room is reloading; retry");
            let unsent = std::mem::take(&mut log.batch);
            let waiters = unsent
                .waiters
                .into_iter()
                .chain(log.queued.drain(..).flat_map(|b| b.waiters))
                .chain(log.retries.drain(..).map(|r| r.1));
            for w in waiters {
                self.fail(w, error.clone());
            }
        }
        if self.needs_reload() {
            self.effects.push(Effect::Reload);
        }
    }

    /// A rejoin's position (`since`) past what this replica delivered, in its epoch: the seq
    /// the missing events follow (read them from the log for [`RoomCore::filled`]). `None`
    /// when the room is not shared, the epoch differs or nothing is missing.
    pub fn behind_since(&self, epoch: &str, seq: Seq) -> Option<Seq> {
        let State::Shared { live, log } = &self.state else {
            return None;
        };
        (live.seqr.epoch().as_str() == epoch && seq > live.seqr.committed())
            .then(|| log.follower.delivered())
    }

    /// Committed events of `epoch` from the room's notifications, in any order, possibly
    /// repeated or with some lost.
    pub fn notified(&mut self, epoch: &Epoch, events: Vec<StoredEvent>) {
        let State::Shared { live, log } = &mut self.state else {
            return;
        };
        if live.seqr.epoch() != epoch {
            // The log was rebuilt under a new epoch: reload.
            tracing::warn!(room = %self.room, "notification of another epoch; reloading");
            self.shared_stale();
            return;
        }
        for e in events {
            let seq = e.seq;
            let ready = log.follower.offer(seq, e);
            log.held.extend(ready);
        }
        self.deliver();
        self.request_fill();
    }

    /// The events read for a fill: contiguous from `after + 1` (possibly fewer than asked).
    pub fn filled(&mut self, after: Seq, events: Vec<StoredEvent>) {
        let State::Shared { log, .. } = &mut self.state else {
            return;
        };
        let ready = log
            .follower
            .filled(after, events.into_iter().map(|e| (e.seq, e)).collect());
        log.held.extend(ready);
        self.deliver();
        self.request_fill();
    }

    /// A fill could not be read: asked again at the next [`RoomCore::fill_acked`] or gap.
    pub fn fill_failed(&mut self) {
        if let State::Shared { log, .. } = &mut self.state {
            log.follower.fill_failed();
        }
    }

    /// The subscription was lost and is back: the log's head is `head` (read after
    /// resubscribing), so whatever was published meanwhile is filled.
    pub fn feed_resumed(&mut self, head: Seq) {
        if let State::Shared { log, .. } = &mut self.state {
            log.follower.head_at_least(head);
        }
        self.request_fill();
    }

    /// As [`RoomCore::feed_resumed`], with the room's epoch read again: a room rebuilt in
    /// another epoch meanwhile (Redis lost acked events) reloads.
    pub fn feed_resumed_in(&mut self, epoch: &Epoch, head: Seq) {
        let State::Shared { live, .. } = &self.state else {
            return;
        };
        if live.seqr.epoch() != epoch {
            tracing::warn!(room = %self.room, "the room is in another epoch; reloading");
            self.shared_stale();
            return;
        }
        self.feed_resumed(head);
    }

    /// Whether commits acked here are not received yet (their notification may be lost: the
    /// shell calls [`RoomCore::fill_acked`] if this stays true for a while).
    pub fn behind_acked(&self) -> bool {
        matches!(&self.state, State::Shared { log, .. } if log.acked > log.follower.delivered())
    }

    /// Fills up to the highest seq acked here.
    pub fn fill_acked(&mut self) {
        if let State::Shared { log, .. } = &mut self.state {
            log.follower.head_at_least(log.acked);
        }
        self.request_fill();
    }

    fn request_fill(&mut self) {
        if let State::Shared { log, .. } = &mut self.state {
            if let Some(fill) = log.follower.fill_request() {
                self.effects.push(Effect::Fill(fill));
            }
        }
    }

    /// Delivers the events of the log that are ready, in seq order, up to the first one that
    /// is a write gathered or in flight here (it waits for its ack to go out first).
    pub(super) fn deliver(&mut self) {
        let State::Shared { live, log } = &mut self.state else {
            return;
        };
        while let Some(e) = log.held.front() {
            let ours = e.op_id.as_ref().is_some_and(|id| {
                log.batches()
                    .flat_map(|b| &b.events)
                    .any(|w| w.from == e.from && w.op_id.as_ref() == Some(id))
            });
            // At the ack level `durable`, only what PostgreSQL holds is delivered.
            let unpersisted = log.durable.as_ref().is_some_and(|d| e.seq > d.persisted);
            if ours || unpersisted {
                break;
            }
            let e = log.held.pop_front().expect("a front event");
            let (kind, hash) = match log.doc.as_mut() {
                None => (RoomKind::Stream, None),
                Some(doc) => {
                    let applied = crate::room::doc::stored_ops(&e)
                        .and_then(|ops| doc.apply_committed(e.seq, ops));
                    if let Err(why) = applied {
                        tracing::error!(room = %self.room, seq = %e.seq, error = %why, "a committed list does not apply to the replica; reloading");
                        log.held.push_front(e);
                        return self.shared_stale();
                    }
                    let every = self.config.doc_hash_every.max(1);
                    (RoomKind::Doc, (e.seq.0 % every == 0).then(|| doc.hash()))
                }
            };
            live.seqr.follow(e.seq);
            if let Some(id) = &e.op_id {
                let key = IdemKey {
                    client: e.from.clone(),
                    id: id.clone(),
                };
                live.idem.insert(key, e.seq, (e.seq, e.hlc.clone()));
            }
            live.idem.commit(e.seq);
            let frame = crate::room::event_frame(&self.room, kind, &e, hash.as_deref());
            let frame = Utf8Bytes::from(frame);
            self.effects.push(Effect::Broadcast(frame.clone()));
            if live.window.push(Arc::new(Committed { seq: e.seq, frame })) {
                self.metrics.limit(Limit::RoomWindowBytes);
            }
        }
    }

    /// The waiters a shared room holds (for a shell that ends abnormally).
    pub(super) fn shared_waiters(&mut self, out: &mut Vec<W>) {
        if let State::Shared { log, .. } = &mut self.state {
            let batches = std::iter::once(std::mem::take(&mut log.batch))
                .chain(log.inflight.drain(..))
                .chain(log.queued.drain(..));
            for b in batches {
                out.extend(b.waiters);
            }
            out.extend(log.retries.drain(..).map(|(_, w)| w));
        }
        self.durable_waiters(out);
    }

    /// Whether commits of a shared room are in the commit point's hands.
    pub(super) fn shared_inflight(&self) -> bool {
        matches!(&self.state, State::Shared { log, .. } if !log.inflight.is_empty())
    }

    /// How many writes of a shared room are gathered and not yet handed over.
    pub(super) fn shared_gathering(&self) -> usize {
        match &self.state {
            State::Shared { log, .. } => log.batch.waiters.len(),
            _ => 0,
        }
    }

    /// Checks a shared room: nothing is sequenced locally, each batch has one waiter per
    /// write, every retry waits for a write in flight here, the follower is sound.
    pub(super) fn shared_check(&self) -> Result<(), String> {
        let State::Shared { live, log } = &self.state else {
            return Ok(());
        };
        if live.seqr.assigned() != live.seqr.committed() {
            return Err("a shared room assigned seqs itself".into());
        }
        let head = live.seqr.committed();
        if head.0 + log.held.len() as u64 != log.follower.delivered().0 {
            return Err(format!(
                "the head is {head} with {} events held, the follower delivered {}",
                log.held.len(),
                log.follower.delivered()
            ));
        }
        if log
            .held
            .iter()
            .enumerate()
            .any(|(i, e)| e.seq.0 != head.0 + 1 + i as u64)
        {
            return Err(format!("the held events do not follow the head {head}"));
        }
        if !self.batch.acks.is_empty() || !self.inflight.is_empty() {
            return Err("a shared room has local batches".into());
        }
        if let Some(doc) = &log.doc {
            if doc.seq != head {
                return Err(format!(
                    "the replica is at {} and the head at {head}",
                    doc.seq
                ));
            }
            if !log.batch.events.is_empty() || log.inflight.iter().any(|b| b.base.is_none()) {
                return Err("a doc room gathered stream writes".into());
            }
        }
        if log
            .inflight
            .iter()
            .any(|b| b.base.is_some() && b.events.len() != 1)
        {
            return Err("a forward holds more than one op list".into());
        }
        let batches = || log.batches();
        let free = log.inflight.len() < self.config.forward_credits.max(1);
        if !log.moved && !log.queued.is_empty() && free {
            return Err("a doc list waits for a credit while one is free".into());
        }
        if batches().any(|b| b.events.len() != b.waiters.len()) {
            return Err("a shared batch has a write without its waiter".into());
        }
        for (key, _) in &log.retries {
            if !batches().flat_map(|b| &b.events).any(|e| same_key(key, e)) {
                return Err(format!("retry {key:?} waits for nothing in flight"));
            }
        }
        log.follower.check()
    }
}

/// A shared room's state once loaded at `head` (a doc room with its replica at `head`).
pub(super) fn shared_log<W>(
    head: Seq,
    max_buffer: usize,
    doc: Option<Box<DocState>>,
) -> SharedLog<W> {
    SharedLog {
        doc,
        follower: concord_core::Follower::new(head, max_buffer),
        batch: SharedBatch::default(),
        inflight: Default::default(),
        retries: Vec::new(),
        acked: head,
        queued: Default::default(),
        held: Default::default(),
        moved: false,
        durable: None,
    }
}

/// The effect that hands a batch over: a doc list is forwarded to the owner, stream writes are
/// committed.
fn hand_over<W>(batch: &SharedBatch<W>) -> Effect<W> {
    match (batch.base, batch.events.first()) {
        (Some(base), Some(e)) => Effect::Forward(ForwardedList {
            client: e.from.clone(),
            op_id: e.op_id.clone(),
            base,
            ops: e.data.clone(),
        }),
        _ => Effect::Commit(batch.events.clone()),
    }
}

fn same_key(key: &IdemKey, ev: &NewEvent) -> bool {
    ev.from == key.client && ev.op_id.as_ref() == Some(&key.id)
}

/// Answers the retries waiting for `ev`'s outcome with its ack.
fn answer_retries<W>(
    log: &mut SharedLog<W>,
    ev: &NewEvent,
    acked: &Acked,
    effects: &mut Vec<Effect<W>>,
    metrics: &crate::metrics::Metrics,
) {
    if ev.op_id.is_none() {
        return;
    }
    let mut i = 0;
    while i < log.retries.len() {
        if same_key(&log.retries[i].0, ev) {
            let (_, waiter) = log.retries.remove(i);
            let held = HeldAck {
                waiter,
                acked: acked.clone(),
                fresh: false,
                admitted_ms: ev.proposed.timestamp().wall_ms,
            };
            ack_or_hold(&mut log.durable, effects, metrics, held);
        } else {
            i += 1;
        }
    }
}
