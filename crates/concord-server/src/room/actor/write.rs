//! Writing into a room: publishes (stream rooms), op lists and restores (doc rooms) — the
//! idempotency check, the room's rate limit, rebasing, and seq + hlc assignment.

use super::{Committed, InFlight, PendingAck, RoomActor, State};
use crate::room::doc::{self, DocRefusal};
use crate::room::msg::{Acked, OpMsg, Publish, RoomError, RoomMsg, Waiter};
use crate::store::StoredEvent;
use concord_core::{ClientId, IdemKey, Lookup, RoomKind, Seq};
use concord_protocol::ErrorCode;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Ops found in the store by idempotency key: (from, op id) → (seq, hlc).
pub(super) type Found = HashMap<(String, String), (Seq, Arc<str>)>;

fn idem_key(msg: &RoomMsg) -> Option<(&ClientId, &Waiter)> {
    match msg {
        RoomMsg::Publish(Publish { client, waiter, .. })
        | RoomMsg::Op(OpMsg { client, waiter, .. }) => Some((client, waiter)),
        _ => None,
    }
}

impl RoomActor {
    /// Asks the store, in one query, about retried op ids older than the in-memory table.
    /// `Err` means the store could not answer: those ops are refused as unavailable.
    pub(super) async fn lookup_unknown_keys(&mut self, buf: &[RoomMsg]) -> Result<Found, ()> {
        let State::Live(live) = &self.state else {
            return Ok(HashMap::new());
        };
        let keys: Vec<(String, String)> = buf
            .iter()
            .filter_map(idem_key)
            .filter_map(|(client, waiter)| {
                let id = waiter.id.as_ref()?;
                let key = IdemKey {
                    client: client.clone(),
                    id: id.clone(),
                };
                matches!(live.idem.lookup(&key), Lookup::Unknown)
                    .then(|| (client.to_string(), id.to_string()))
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        match self.shared.store.find_ops(&self.room, keys).await {
            Ok(found) => Ok(found
                .into_iter()
                .map(|f| ((f.from, f.op_id), (f.seq, Arc::from(f.hlc.as_str()))))
                .collect()),
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "idempotency lookup failed");
                Err(())
            }
        }
    }

    /// Checks that the room can take a write of `kind`, that the op is not a retry (a retry
    /// gets its original ack, at once or when its seq commits) and that the room's rate allows
    /// it. Returns the waiter back when the op must be sequenced.
    fn admit(
        &mut self,
        kind: RoomKind,
        client: &ClientId,
        w: Waiter,
        found: &Result<Found, ()>,
    ) -> Option<Waiter> {
        let live = match &mut self.state {
            State::Live(live) => live,
            State::Missing => {
                self.error(
                    w,
                    ErrorCode::NotFound,
                    "room does not exist; join it with a kind to create it",
                );
                return None;
            }
            State::Stale => {
                self.error(w, ErrorCode::Unavailable, self.stale_message());
                return None;
            }
        };
        if live.kind != kind {
            let msg = match kind {
                RoomKind::Stream => "publish is for stream rooms; doc rooms take op",
                RoomKind::Doc => "op is for doc rooms; stream rooms take publish",
            };
            self.error(w, ErrorCode::KindMismatch, msg);
            return None;
        }
        if let Some(id) = &w.id {
            let key = IdemKey {
                client: client.clone(),
                id: id.clone(),
            };
            let known = match live.idem.lookup(&key) {
                Lookup::Hit((seq, hlc)) => Some((*seq, hlc.clone())),
                Lookup::New => None,
                Lookup::Unknown => match found {
                    Ok(found) => found.get(&(client.to_string(), id.to_string())).cloned(),
                    Err(()) => {
                        self.error(
                            w,
                            ErrorCode::Unavailable,
                            "idempotency lookup failed; retry",
                        );
                        return None;
                    }
                },
            };
            if let Some((seq, hlc)) = known {
                self.shared.metrics.duplicate_ops.inc();
                if seq <= live.seqr.committed() {
                    let epoch = live.seqr.epoch().clone();
                    let acked = Acked {
                        seq,
                        hlc,
                        epoch,
                        dropped: Vec::new(),
                    };
                    w.ack(&self.room, acked);
                } else {
                    live.waiting.push((seq, hlc, w));
                }
                return None;
            }
        }
        if let Err(retry) = self.rate.check() {
            self.shared.metrics.rate_limit("room");
            self.shared.metrics.error(ErrorCode::RateLimited);
            let err = RoomError {
                retry_after_ms: Some(retry),
                ..RoomError::new(
                    ErrorCode::RateLimited,
                    "this room receives more writes than its limit",
                )
            };
            w.fail(&self.room, err);
            return None;
        }
        Some(w)
    }

    pub(super) async fn publish(
        &mut self,
        p: Publish,
        found: &Result<Found, ()>,
        batch: &mut InFlight,
    ) {
        let Publish {
            client,
            data,
            create,
            waiter,
        } = p;
        if let (State::Missing, Some(creator)) = (&self.state, &create) {
            if self.shared.config.kind_for(self.room.as_str()) == Some(RoomKind::Doc) {
                return self.error(
                    waiter,
                    ErrorCode::KindMismatch,
                    "rooms named like this are doc rooms; publish is for stream rooms",
                );
            }
            let creator = crate::room::Creator::clone(creator);
            if let Err(e) = self.create(RoomKind::Stream, &creator).await {
                self.shared.metrics.error(e.code);
                return waiter.fail(&self.room, e);
            }
        }
        if let Some(w) = self.admit(RoomKind::Stream, &client, waiter, found) {
            self.sequence(batch, client, w, data, Vec::new(), None);
        }
    }

    pub(super) fn op(&mut self, m: OpMsg, found: &Result<Found, ()>, batch: &mut InFlight) {
        let OpMsg {
            client,
            base,
            ops,
            waiter,
        } = m;
        let Some(w) = self.admit(RoomKind::Doc, &client, waiter, found) else {
            return;
        };
        let State::Live(live) = &mut self.state else {
            return;
        };
        let Some(doc) = live.doc.as_mut() else { return };
        let rebased = match submit_off_the_workers(doc, base, &ops) {
            Ok(t) => t,
            Err(refusal) => {
                let (code, msg) = match refusal {
                    DocRefusal::Conflict(m) => (ErrorCode::Conflict, m),
                    DocRefusal::Invalid(m) => (ErrorCode::InvalidOp, m),
                    DocRefusal::Rejected(m) => (ErrorCode::Rejected, m),
                    DocRefusal::Limit { limit, message } => {
                        self.shared.metrics.limit(limit);
                        let code = match limit {
                            "doc_max_rebase_work" => ErrorCode::Conflict,
                            "doc_max_apply_work" => ErrorCode::TooLarge,
                            _ => ErrorCode::Rejected,
                        };
                        (code, message)
                    }
                };
                return self.error(w, code, &msg);
            }
        };
        let cfg = &self.shared.config;
        let seq = doc.seq;
        let hash = (seq.0 % cfg.doc_hash_every.max(1) == 0).then(|| doc.hash());
        if seq.0 - doc.snapshot_seq.0 >= cfg.doc_snapshot_every.max(1) {
            batch.snapshot = Some((seq, doc.state.to_string()));
            doc.snapshot_seq = seq;
        }
        let json = concord_core::doc::encode_ops(&rebased.ops).to_string();
        let data = RawValue::from_string(json).expect("encoded ops are JSON");
        self.sequence(batch, client, w, data, rebased.dropped, hash);
    }

    /// Commits, as one new op list from `client` (the HTTP caller's `http…` id), the ops that
    /// turn the document (all committed: the caller drained the commits) into its state at `seq`.
    pub(super) async fn restore(
        &mut self,
        seq: Seq,
        client: ClientId,
        w: Waiter,
        batch: &mut InFlight,
    ) {
        let live = match &self.state {
            State::Live(live) => live,
            State::Missing => return self.error(w, ErrorCode::NotFound, "room does not exist"),
            State::Stale => return self.error(w, ErrorCode::Unavailable, self.stale_message()),
        };
        let Some(current) = live.doc.as_ref() else {
            return self.error(w, ErrorCode::KindMismatch, "restore is for doc rooms");
        };
        let head = live.seqr.committed();
        if seq > head {
            return self.error(
                w,
                ErrorCode::BadRequest,
                &format!("seq {seq} is after the latest ({head})"),
            );
        }
        let target = if seq == head {
            current.state.clone()
        } else {
            match doc::state_at(self.shared.store.as_ref(), &self.room, seq).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(room = %self.room, error = %e, "reading the state to restore failed");
                    return self.error(
                        w,
                        ErrorCode::Unavailable,
                        "history is not readable right now; retry",
                    );
                }
            }
        };
        let Some(current) = self.live().and_then(|l| l.doc.as_ref()) else {
            return;
        };
        let ops = doc::diff(&current.state, &target);
        let msg = OpMsg {
            client,
            base: head,
            ops,
            waiter: w,
        };
        self.op(msg, &Ok(HashMap::new()), batch);
    }

    /// Assigns the next seq and hlc, encodes the event once and adds it to the batch.
    fn sequence(
        &mut self,
        batch: &mut InFlight,
        client: ClientId,
        w: Waiter,
        data: Box<RawValue>,
        dropped: Vec<usize>,
        hash: Option<String>,
    ) {
        let State::Live(live) = &mut self.state else {
            return;
        };
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
        let seq = live.seqr.assign();
        if let Some(doc) = &live.doc {
            debug_assert_eq!(doc.seq, seq, "the document and the log move together");
        }
        let hlc: Arc<str> = Arc::from(self.shared.hlc_now().to_string());
        let ev = StoredEvent {
            seq,
            hlc: hlc.to_string(),
            from: client.to_string(),
            op_id: w.id.as_ref().map(|i| i.to_string()),
            data,
        };
        if let Some(id) = &w.id {
            let key = IdemKey {
                client,
                id: id.clone(),
            };
            live.idem.insert(key, seq, (seq, hlc.clone()));
        }
        batch.events.push(Arc::new(Committed {
            seq,
            frame: super::encode_event(&self.room, live.kind, &ev, hash.as_deref()),
        }));
        batch.stored.push(ev);
        batch.acks.push(PendingAck {
            seq,
            hlc,
            dropped,
            waiter: w,
        });
    }
}

/// Lists with more ops than this are rebased and applied with `block_in_place`.
const HEAVY_LIST_OPS: usize = 32;

/// Rebases and applies an op list. The work is bounded (`doc_max_rebase_work`,
/// `doc_max_apply_work`, `doc_max_bytes`), but a long list over a large document still takes
/// milliseconds: it runs in `block_in_place` (on a multi-threaded runtime), so the worker's
/// other tasks (other rooms, `/healthz`, connections) move to another thread meanwhile.
fn submit_off_the_workers(
    doc: &mut crate::room::doc::DocState,
    base: Seq,
    ops: &[concord_core::doc::Op],
) -> Result<concord_core::doc::Transformed, DocRefusal> {
    if ops.len() > HEAVY_LIST_OPS {
        doc::off_the_workers(|| doc.submit(base, ops))
    } else {
        doc.submit(base, ops)
    }
}
