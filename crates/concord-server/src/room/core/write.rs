//! Writing: the room-kind check, idempotency (a retry gets its original ack, at once or when
//! its seq commits), the room's rate, doc rebasing, seq + hlc assignment (the event is encoded
//! once), and handing batches to the store.

use super::answer::{Acked, RoomError};
use super::effect::{Append, Effect};
use super::state::{Batch, Live, PendingAck, State};
use super::window::Committed;
use super::{Env, RoomCore, Waiting};
use crate::metrics::{Limit, RateScope};
use crate::room::doc::{self, DocRefusal, DocState};
use crate::store::StoredEvent;
use axum::extract::ws::Utf8Bytes;
use concord_core::doc::Op;
use concord_core::{ClientId, HlcText, IdemKey, Lookup, OpId, RoomId, RoomKind, Seq};
use concord_protocol::ErrorCode;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Writes found in the store by idempotency key: (from, op id) → (seq, hlc). `Err`: the store
/// could not answer.
pub type FoundOps = Result<HashMap<(ClientId, OpId), (Seq, HlcText)>, ()>;

/// Lists with more ops than this are rebased and applied through [`Env::heavy`].
const HEAVY_LIST_OPS: usize = 32;

impl<W: Waiting> RoomCore<W> {
    /// Whether the key of a write is older than the in-memory table: the store must be asked
    /// (one lookup for the whole mailbox batch).
    pub fn needs_lookup(&self, client: &ClientId, w: &W) -> bool {
        // A shared room's commit point checks every key itself.
        if matches!(self.state, State::Shared { .. }) {
            return false;
        }
        let (Some(live), Some(id)) = (self.state.live(), w.op_id()) else {
            return false;
        };
        let key = IdemKey {
            client: client.clone(),
            id: id.clone(),
        };
        matches!(live.idem.lookup(&key), Lookup::Unknown)
    }

    /// Checks that the room takes a write of `kind`, that it is not a retry and that the
    /// room's rate allows it. Returns the waiter back when the write must be sequenced.
    fn admit(
        &mut self,
        kind: RoomKind,
        client: &ClientId,
        w: W,
        found: &FoundOps,
        env: &dyn Env,
    ) -> Option<W> {
        let refusal = match (&self.state, kind) {
            (State::Missing, _) => Some((
                ErrorCode::NotFound,
                "room does not exist; join it with a kind to create it",
            )),
            (State::Stale { .. }, _) => Some((ErrorCode::Unavailable, self.stale_message())),
            (State::Doc { .. }, RoomKind::Stream) => Some((
                ErrorCode::KindMismatch,
                "publish is for stream rooms; doc rooms take op",
            )),
            (State::Shared { log, .. }, RoomKind::Stream) if log.doc.is_some() => Some((
                ErrorCode::KindMismatch,
                "publish is for stream rooms; doc rooms take op",
            )),
            (State::Shared { log, .. }, RoomKind::Doc) if log.doc.is_none() => Some((
                ErrorCode::KindMismatch,
                "op is for doc rooms; stream rooms take publish",
            )),
            (State::Stream(_), RoomKind::Doc) => Some((
                ErrorCode::KindMismatch,
                "op is for doc rooms; stream rooms take publish",
            )),
            (State::Shared { log, .. }, _) if log.moved => {
                Some((ErrorCode::Unavailable, "room is reloading; retry"))
            }
            _ => None,
        };
        if let Some((code, message)) = refusal {
            self.fail(w, RoomError::new(code, message));
            return None;
        }
        let shared = matches!(self.state, State::Shared { .. });
        let live = self.state.live_mut().expect("a live room");
        if let Some(id) = w.op_id() {
            let key = IdemKey {
                client: client.clone(),
                id: id.clone(),
            };
            let known = match live.idem.lookup(&key) {
                Lookup::Hit((seq, hlc)) => Some((*seq, hlc.clone())),
                Lookup::New => None,
                // The commit point answers for keys older than the table.
                Lookup::Unknown if shared => None,
                Lookup::Unknown => match found {
                    Ok(found) => found.get(&(client.clone(), id.clone())).cloned(),
                    Err(()) => {
                        let e = RoomError::new(
                            ErrorCode::Unavailable,
                            "idempotency lookup failed; retry",
                        );
                        self.fail(w, e);
                        return None;
                    }
                },
            };
            if let Some((seq, hlc)) = known {
                self.metrics.duplicate_ops.inc();
                if seq <= live.seqr.committed() {
                    let admitted_ms = hlc.timestamp().wall_ms;
                    let acked = Acked {
                        seq,
                        hlc,
                        epoch: live.seqr.epoch().clone(),
                        dropped: Vec::new(),
                    };
                    let held = super::durable::HeldAck {
                        waiter: w,
                        acked,
                        fresh: false,
                        admitted_ms,
                    };
                    // A shared room at the ack level `durable` holds it for the watermark.
                    let durable = match &mut self.state {
                        State::Shared { log, .. } => &mut log.durable,
                        _ => &mut None,
                    };
                    super::durable::ack_or_hold(durable, &mut self.effects, &self.metrics, held);
                } else {
                    live.waiting.push((seq, hlc, w));
                }
                return None;
            }
        }
        if let Err(retry) = env.room_rate() {
            self.metrics.rate_limit(RateScope::Room);
            let err = RoomError {
                retry_after_ms: Some(retry),
                ..RoomError::new(
                    ErrorCode::RateLimited,
                    "this room receives more writes than its limit",
                )
            };
            self.fail(w, err);
            return None;
        }
        Some(w)
    }

    /// An event for a stream room.
    pub fn publish(
        &mut self,
        client: ClientId,
        data: Box<RawValue>,
        w: W,
        found: &FoundOps,
        env: &dyn Env,
    ) {
        let Some(w) = self.admit(RoomKind::Stream, &client, w, found, env) else {
            return;
        };
        if matches!(self.state, State::Shared { .. }) {
            return self.shared_publish(client, data, w, env);
        }
        let State::Stream(live) = &mut self.state else {
            unreachable!("admitted as a stream room")
        };
        let room = &self.room;
        sequence(
            room,
            RoomKind::Stream,
            live,
            &mut self.batch,
            (client, w),
            data,
            Vec::new(),
            None,
            env,
        );
    }

    /// An op list for a doc room, made against the state at `base`: rebased over what was
    /// sequenced since, applied atomically, then sequenced.
    pub fn op(
        &mut self,
        client: ClientId,
        base: Seq,
        ops: &[Op],
        w: W,
        found: &FoundOps,
        env: &dyn Env,
    ) {
        let Some(w) = self.admit(RoomKind::Doc, &client, w, found, env) else {
            return;
        };
        if matches!(self.state, State::Shared { .. }) {
            return self.shared_op(client, base, ops, w, env);
        }
        let State::Doc { live, doc } = &mut self.state else {
            unreachable!("admitted as a doc room")
        };
        let rebased = match submit(doc, base, ops, env) {
            Ok(t) => t,
            Err(refusal) => {
                let (code, msg) = match refusal {
                    DocRefusal::Conflict(m) => (ErrorCode::Conflict, m),
                    DocRefusal::Invalid(m) => (ErrorCode::InvalidOp, m),
                    DocRefusal::Rejected(m) => (ErrorCode::Rejected, m),
                    DocRefusal::Limit { limit, message } => {
                        self.metrics.limit(limit);
                        let code = match limit {
                            Limit::DocMaxRebaseWork => ErrorCode::Conflict,
                            Limit::DocMaxApplyWork => ErrorCode::TooLarge,
                            _ => ErrorCode::Rejected,
                        };
                        (code, message)
                    }
                };
                return self.fail(w, RoomError::new(code, msg));
            }
        };
        let cfg = &self.config;
        let seq = doc.seq;
        let hash = (seq.0 % cfg.doc_hash_every.max(1) == 0).then(|| doc.hash());
        if seq.0 - doc.snapshot_seq.0 >= cfg.doc_snapshot_every.max(1) {
            self.batch.snapshot = Some((seq, doc.state.to_string()));
            doc.snapshot_seq = seq;
        }
        let json = concord_core::doc::encode_ops(&rebased.ops).to_string();
        let data = RawValue::from_string(json).expect("encoded ops are JSON");
        sequence(
            &self.room,
            RoomKind::Doc,
            live,
            &mut self.batch,
            (client, w),
            data,
            rebased.dropped,
            hash,
            env,
        );
        debug_assert_eq!(
            doc.seq,
            live.seqr.assigned(),
            "the document and the log move together"
        );
    }

    /// Where the state to restore comes from: `Ok(Some(state))` when `seq` is the head (the
    /// current state; the shell drains the commits first), `Ok(None)` when it must be read from
    /// the store at `seq`.
    pub fn restore_source(&self, seq: Seq) -> Result<Option<Value>, RoomError> {
        let (live, doc) = match &self.state {
            State::Doc { live, doc } => (live, &**doc),
            State::Shared { live, log } if log.doc.is_some() => {
                (live, log.doc.as_deref().expect("checked"))
            }
            State::Missing => {
                return Err(RoomError::new(ErrorCode::NotFound, "room does not exist"))
            }
            State::Stale { .. } => {
                return Err(RoomError::new(ErrorCode::Unavailable, self.stale_message()))
            }
            State::Stream(_) | State::Shared { .. } => {
                return Err(RoomError::new(
                    ErrorCode::KindMismatch,
                    "restore is for doc rooms",
                ))
            }
        };
        let head = live.seqr.committed();
        if seq > head {
            return Err(RoomError::new(
                ErrorCode::BadRequest,
                format!("seq {seq} is after the latest ({head})"),
            ));
        }
        Ok((seq == head).then(|| doc.state.clone()))
    }

    /// Commits, as one new op list from `client`, the ops that turn the document (all
    /// committed) into `target`.
    pub fn restore(&mut self, client: ClientId, w: W, target: &Value, env: &dyn Env) {
        let (ops, head) = match &self.state {
            State::Doc { live, doc } => (doc::diff(&doc.state, target), live.seqr.committed()),
            State::Shared { live, log } if log.doc.is_some() => {
                let doc = log.doc.as_deref().expect("checked");
                (doc::diff(&doc.state, target), live.seqr.committed())
            }
            _ => {
                // Whatever the state is now, `op` answers the waiter.
                (Vec::new(), Seq::ZERO)
            }
        };
        self.op(client, head, &ops, w, &Ok(HashMap::new()), env);
    }

    /// Hands the batch being sequenced to the store ([`Effect::Append`]); its acks and
    /// broadcasts wait for the outcome.
    pub fn submit(&mut self) {
        self.shared_submit();
        if self.batch.stored.is_empty() {
            return;
        }
        let mut flight = std::mem::take(&mut self.batch);
        let events = std::mem::take(&mut flight.stored);
        let snapshot = flight.snapshot.take();
        self.effects
            .push(Effect::Append(Append { events, snapshot }));
        self.inflight.push_back(flight);
    }
}

/// Rebases and applies an op list; a long one runs through [`Env::heavy`].
fn submit(
    doc: &mut DocState,
    base: Seq,
    ops: &[Op],
    env: &dyn Env,
) -> Result<concord_core::doc::Transformed, DocRefusal> {
    if ops.len() <= HEAVY_LIST_OPS {
        return doc.submit(base, ops);
    }
    let mut out = None;
    env.heavy(&mut || out = Some(doc.submit(base, ops)));
    out.expect("the heavy work ran")
}

/// Assigns the next seq and hlc, encodes the event once and adds it to the batch.
#[allow(clippy::too_many_arguments)]
fn sequence<W: Waiting>(
    room: &RoomId,
    kind: RoomKind,
    live: &mut Live<W>,
    batch: &mut Batch<W>,
    (client, w): (ClientId, W),
    data: Box<RawValue>,
    dropped: Vec<usize>,
    hash: Option<String>,
    env: &dyn Env,
) {
    let seq = live.seqr.assign();
    let hlc = HlcText::from(&env.hlc_now());
    let ev = StoredEvent {
        seq,
        hlc: hlc.clone(),
        from: client,
        op_id: w.op_id().cloned(),
        data,
    };
    if let Some(id) = &ev.op_id {
        let key = IdemKey {
            client: ev.from.clone(),
            id: id.clone(),
        };
        live.idem.insert(key, seq, (seq, hlc.clone()));
    }
    let frame = Utf8Bytes::from(crate::room::event_frame(room, kind, &ev, hash.as_deref()));
    batch.events.push(Arc::new(Committed { seq, frame }));
    batch.stored.push(ev);
    batch.acks.push(PendingAck {
        seq,
        hlc,
        dropped,
        waiter: w,
    });
}
