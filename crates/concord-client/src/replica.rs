//! The OT loop of one doc replica, sans IO: the client side of `concord_core::doc::sim`.
//!
//! Like `SimClient`: local edits apply at once to the optimistic `state`; at most one op list
//! is in flight; later edits wait in `buffer` (one group per edit); a committed list from
//! someone else is transformed with `transform_pair` over the in-flight list and then the
//! buffer before it is applied. On top of that it keeps what a real connection needs:
//!
//! - **Ack or echo, whichever comes first.** The server answers an op list with an `ack`
//!   (to the sender) and an `event` (to everyone). The first of the two that can commit the
//!   in-flight list does so and advances `seq`; an ack that arrives before the events that
//!   precede it is remembered and the echo commits. An ack-committed list waits in `ahead`
//!   until its echo brings the committed ops for the shadow copy.
//! - **A shadow copy of the server state.** `confirmed` is the server's state at
//!   `confirmed_seq`, updated only by committed ops in seq order, so its
//!   [`state_hash`] can be compared with every `hash` the server sends, whatever is pending
//!   (float adds applied in another order never cause false alarms). When nothing is pending
//!   the optimistic state is replaced by the shadow copy, so replicas agree bit for bit.
//! - **Resync.** Drift, a refused list, a `conflict`, a reset epoch or a broken promise make
//!   the replica wait for the server's full state. Pending local edits are then **dropped**,
//!   never rebased: they were made against a state the server does not have (or was refused),
//!   and without the missed events there is nothing sound to rebase them over. The
//!   application learns it from `DocUpdate::Resynced` (and `Rejected`).
//! - **Reconnects** rejoin from `confirmed_seq`; recovered events go through the same loop (an
//!   event carrying the in-flight list's id commits it) and the in-flight list is then resent
//!   with its id, transformed to the current seq, with `base` = that seq.

use crate::EventMsg;
use concord_core::doc::{
    apply_in_place, decode_ops, state_hash, transform_pair, ApplyError, DecodeError, Limits, Op,
};
use concord_protocol::Since;
use serde_json::Value;
use std::collections::VecDeque;
use tokio::time::Instant;

use crate::doc::{DocUpdate, ResyncReason};

/// Room for the rest of an `op` frame (type, room, id, base) around its `ops`.
const FRAME_OVERHEAD: usize = 512;

/// Bounds of the op lists this replica sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendLimits {
    /// Most ops in one list (the server's `max_ops`).
    pub max_ops: usize,
    /// Most bytes of one `op` frame.
    pub max_frame_bytes: usize,
}

impl Default for SendLimits {
    fn default() -> Self {
        SendLimits {
            max_ops: Limits::default().max_ops,
            max_frame_bytes: concord_protocol::Limits::default().max_frame_bytes,
        }
    }
}

/// Why a local edit was refused; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EditRefusal {
    /// The list breaks a limit (too many ops, a path too deep).
    Invalid(DecodeError),
    /// The list does not apply to the local state.
    Apply(ApplyError),
    /// The list alone would not fit in one frame.
    TooLarge { size: usize, limit: usize },
}

/// An op list to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpSend {
    pub id: String,
    pub base: u64,
    pub ops: Vec<Op>,
    /// The id was sent before (after a reconnect or a retryable error).
    pub resend: bool,
}

/// Something the replica cannot handle by itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Trouble {
    /// A live event is not the next seq: reconnect and recover.
    Gap { expected: u64, got: u64 },
    /// The shadow copy disagrees with the server (hash mismatch, committed ops that do not
    /// apply): report `report` (seq, our hash) if any, and resync.
    Drift {
        report: Option<(u64, String)>,
        why: String,
    },
    /// The server broke a promise of the protocol (an echo we cannot place, an ack for a seq
    /// already applied, a recovery that does not continue our position): resync.
    Protocol(String),
}

/// The list sent and not yet committed.
#[derive(Debug, Clone)]
struct InFlight {
    id: String,
    /// Relative to the server state at `seq` (transformed over every event since it was made).
    ops: Vec<Op>,
    /// Sent on the current connection, answer pending.
    sent: bool,
    /// Sent at least once.
    ever_sent: bool,
    /// Its ack arrived before the events that precede it: the echo at this seq commits it.
    acked: Option<u64>,
    /// `unavailable`/`rate_limited` answers so far.
    retries: u32,
    /// Do not resend before this instant.
    not_before: Option<Instant>,
}

/// One doc room's replica.
#[derive(Debug)]
pub(crate) struct Replica {
    client_id: String,
    epoch: String,
    /// The optimistic state: the server's at `seq` plus pending edits.
    state: Value,
    /// The last committed seq applied to `state` (by event or by ack).
    seq: u64,
    /// The server's state at `confirmed_seq`.
    confirmed: Value,
    /// The last event applied (its position for rejoins and gap checks).
    confirmed_seq: u64,
    in_flight: Option<InFlight>,
    /// Own lists committed by ack whose events have not arrived: (seq, id), in order;
    /// `seq == confirmed_seq + ahead.len()`.
    ahead: VecDeque<(u64, String)>,
    /// Local edits made after `in_flight` was sent, one group per edit.
    buffer: Vec<Vec<Op>>,
    /// Waiting for the server's full state, and why.
    resync: Option<ResyncReason>,
    /// Local edits touched `state` since it last equalled `confirmed`.
    dirty: bool,
    limits: SendLimits,
}

impl Replica {
    /// A replica of a doc joined at `seq` with `state`.
    pub(crate) fn new(client_id: String, epoch: String, seq: u64, state: Value) -> Self {
        Replica {
            client_id,
            epoch,
            confirmed: state.clone(),
            state,
            seq,
            confirmed_seq: seq,
            in_flight: None,
            ahead: VecDeque::new(),
            buffer: Vec::new(),
            resync: None,
            dirty: false,
            limits: SendLimits::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_limits(mut self, limits: SendLimits) -> Self {
        self.limits = limits;
        self
    }

    pub(crate) fn state(&self) -> &Value {
        &self.state
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The server's state at [`confirmed_seq`](Self::confirmed_seq).
    #[cfg(test)]
    pub(crate) fn confirmed(&self) -> &Value {
        &self.confirmed
    }

    #[cfg(test)]
    pub(crate) fn confirmed_seq(&self) -> u64 {
        self.confirmed_seq
    }

    /// Where a rejoin resumes: the last event applied.
    pub(crate) fn since(&self) -> Since {
        Since {
            epoch: self.epoch.clone(),
            seq: self.confirmed_seq,
        }
    }

    pub(crate) fn resyncing(&self) -> Option<ResyncReason> {
        self.resync
    }

    /// The id of the list in flight, if any.
    pub(crate) fn in_flight_id(&self) -> Option<&str> {
        self.in_flight.as_ref().map(|f| f.id.as_str())
    }

    /// Nothing in flight, buffered, awaiting its echo, or awaiting a resync.
    pub(crate) fn is_flushed(&self) -> bool {
        self.in_flight.is_none()
            && self.buffer.is_empty()
            && self.ahead.is_empty()
            && self.resync.is_none()
    }

    /// A local edit: checked, applied at once (atomically) and queued.
    pub(crate) fn edit(&mut self, ops: Vec<Op>) -> Result<(), EditRefusal> {
        if ops.is_empty() {
            return Ok(());
        }
        let limits = Limits::default();
        if ops.len() > self.limits.max_ops {
            return Err(EditRefusal::Invalid(DecodeError {
                index: None,
                message: format!("too many ops ({} > {})", ops.len(), self.limits.max_ops),
            }));
        }
        if let Some((i, op)) = ops
            .iter()
            .enumerate()
            .find(|(_, op)| op.path().len() > limits.max_path_depth)
        {
            return Err(EditRefusal::Invalid(DecodeError {
                index: Some(i),
                message: format!(
                    "path too deep ({} > {})",
                    op.path().len(),
                    limits.max_path_depth
                ),
            }));
        }
        let size = encoded_len(&ops) + FRAME_OVERHEAD;
        if size > self.limits.max_frame_bytes {
            return Err(EditRefusal::TooLarge {
                size,
                limit: self.limits.max_frame_bytes,
            });
        }
        apply_in_place(&mut self.state, &ops).map_err(EditRefusal::Apply)?;
        self.buffer.push(ops);
        self.dirty = true;
        Ok(())
    }

    /// The list to send now, if any: the in-flight list again (same id, transformed to the
    /// current seq, `base` = that seq) when it is not sent on this connection and its retry
    /// time has come, else the buffer as a new list (as many whole edits as fit).
    pub(crate) fn take_send(
        &mut self,
        now: Instant,
        new_id: impl FnOnce() -> String,
    ) -> Option<OpSend> {
        if self.resync.is_some() {
            return None;
        }
        if let Some(flight) = &mut self.in_flight {
            if flight.sent || flight.not_before.is_some_and(|t| t > now) {
                return None;
            }
            flight.sent = true;
            flight.not_before = None;
            let resend = flight.ever_sent;
            flight.ever_sent = true;
            return Some(OpSend {
                id: flight.id.clone(),
                base: self.seq,
                ops: flight.ops.clone(),
                resend,
            });
        }
        self.buffer.retain(|g| !g.is_empty());
        if self.buffer.is_empty() {
            return None;
        }
        let mut take = 0;
        let mut count = 0;
        let mut bytes = FRAME_OVERHEAD;
        for group in &self.buffer {
            let size = encoded_len(group) + 1;
            if take > 0
                && (count + group.len() > self.limits.max_ops
                    || bytes + size > self.limits.max_frame_bytes)
            {
                break;
            }
            take += 1;
            count += group.len();
            bytes += size;
        }
        let ops: Vec<Op> = self.buffer.drain(..take).flatten().collect();
        let id = new_id();
        self.in_flight = Some(InFlight {
            id: id.clone(),
            ops: ops.clone(),
            sent: true,
            ever_sent: true,
            acked: None,
            retries: 0,
            not_before: None,
        });
        Some(OpSend {
            id,
            base: self.seq,
            ops,
            resend: false,
        })
    }

    /// When a retry of the in-flight list becomes due.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.in_flight
            .as_ref()
            .filter(|f| !f.sent)
            .and_then(|f| f.not_before)
    }

    /// The connection is gone: the in-flight list will be resent.
    pub(crate) fn connection_lost(&mut self) {
        if let Some(flight) = &mut self.in_flight {
            flight.sent = false;
            flight.not_before = None;
        }
    }

    /// A retryable answer (`unavailable`, `rate_limited`) to the in-flight list: resend it
    /// after `delay(earlier retries)`. False if `id` is not in flight.
    pub(crate) fn retry_later(
        &mut self,
        id: &str,
        now: Instant,
        delay: impl FnOnce(u32) -> std::time::Duration,
    ) -> bool {
        match &mut self.in_flight {
            Some(flight) if flight.id == id && self.resync.is_none() => {
                flight.sent = false;
                flight.not_before = Some(now + delay(flight.retries));
                flight.retries += 1;
                true
            }
            _ => false,
        }
    }

    /// The server refused the in-flight list `id` (nothing of it committed). Returns false if
    /// `id` is not in flight; else the replica now waits for a resync (`reason`), and the
    /// caller asks the server for its state.
    pub(crate) fn refused(&mut self, id: &str, reason: ResyncReason) -> bool {
        if self.resync.is_some() || self.in_flight_id() != Some(id) {
            return false;
        }
        self.begin_resync(reason);
        true
    }

    /// Starts waiting for the server's full state. Pending edits (and those made until the
    /// state arrives) will be dropped; acks and events until then are ignored.
    pub(crate) fn begin_resync(&mut self, reason: ResyncReason) {
        if self.resync.is_none() {
            self.resync = Some(reason);
        }
        self.in_flight = None;
        self.ahead.clear();
    }

    /// An `ack`. Commits the in-flight list if every earlier seq has been applied.
    pub(crate) fn on_ack(&mut self, id: &str, seq: u64) -> Result<Option<DocUpdate>, Trouble> {
        if self.resync.is_some() {
            return Ok(None);
        }
        let Some(flight) = self.in_flight.as_mut().filter(|f| f.id == id) else {
            return Ok(None); // its echo came first, or a list we gave up on
        };
        if seq == self.seq + 1 {
            self.in_flight = None;
            self.seq = seq;
            self.ahead.push_back((seq, id.to_string()));
            return Ok(Some(DocUpdate::Changed {
                seq,
                from_self: true,
            }));
        }
        if seq > self.seq + 1 {
            flight.acked = Some(seq);
            return Ok(None);
        }
        Err(Trouble::Protocol(format!(
            "ack of {id} at seq {seq}, but seq {} is already applied",
            self.seq
        )))
    }

    /// The next event of the room (live or recovered), in seq order.
    pub(crate) fn on_event(&mut self, ev: &EventMsg) -> Result<Option<DocUpdate>, Trouble> {
        if self.resync.is_some() {
            return Ok(None); // the state on its way includes it
        }
        let expected = self.confirmed_seq + 1;
        if ev.seq != expected {
            return Err(Trouble::Gap {
                expected,
                got: ev.seq,
            });
        }
        let ops = committed_ops(ev).map_err(|e| {
            Trouble::Protocol(format!("event {} carries undecodable ops: {e}", ev.seq))
        })?;
        if let Err(e) = apply_in_place(&mut self.confirmed, &ops) {
            return Err(Trouble::Drift {
                report: Some((self.confirmed_seq, state_hash(&self.confirmed))),
                why: format!("committed ops of seq {} do not apply: {e}", ev.seq),
            });
        }
        self.confirmed_seq = ev.seq;
        let own = |id: &str| ev.from == self.client_id && ev.id.as_deref() == Some(id);
        let update = if let Some((seq, id)) = self.ahead.front() {
            // Already committed by its ack: this must be its echo.
            if *seq != ev.seq || !own(id) {
                return Err(Trouble::Protocol(format!(
                    "event {} from {} ({:?}) is not the echo of {id} acked at seq {seq}",
                    ev.seq, ev.from, ev.id
                )));
            }
            self.ahead.pop_front();
            None
        } else if self.in_flight.as_ref().is_some_and(|f| own(&f.id)) {
            let flight = self.in_flight.take().expect("checked");
            if flight.acked.is_some_and(|s| s != ev.seq) {
                tracing::warn!(
                    id = flight.id,
                    acked = flight.acked,
                    seq = ev.seq,
                    "echo and ack disagree on the seq"
                );
            }
            self.seq = ev.seq;
            Some(DocUpdate::Changed {
                seq: ev.seq,
                from_self: true,
            })
        } else {
            if let Some(flight) = self.in_flight.as_ref().filter(|f| f.acked == Some(ev.seq)) {
                return Err(Trouble::Protocol(format!(
                    "list {} was acked at seq {}, but that event is {:?} from {}",
                    flight.id, ev.seq, ev.id, ev.from
                )));
            }
            let mut incoming = ops;
            if let Some(flight) = &mut self.in_flight {
                let (flight_ops, rest) = transform_pair(&flight.ops, &incoming);
                flight.ops = flight_ops;
                incoming = rest;
            }
            for group in &mut self.buffer {
                let (g, rest) = transform_pair(group, &incoming);
                *group = g;
                incoming = rest;
            }
            if let Err(e) = apply_in_place(&mut self.state, &incoming) {
                // The local state cannot take what the server committed: our replica is off.
                return Err(Trouble::Drift {
                    report: None,
                    why: format!(
                        "seq {} does not apply to the local state after transformation: {e}",
                        ev.seq
                    ),
                });
            }
            self.seq = ev.seq;
            Some(DocUpdate::Changed {
                seq: ev.seq,
                from_self: false,
            })
        };
        if let Some(hash) = &ev.hash {
            let ours = state_hash(&self.confirmed);
            if &ours != hash {
                return Err(Trouble::Drift {
                    report: Some((ev.seq, ours)),
                    why: format!("state hash differs from the server's at seq {}", ev.seq),
                });
            }
        }
        self.settle();
        Ok(update)
    }

    /// Checks the replica's invariants (for tests, after every step): `seq` is `confirmed_seq`
    /// plus the lists committed by ack ahead of their echo, those are consecutive, and an ack
    /// remembered for the in-flight list is for a later seq.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.seq != self.confirmed_seq + self.ahead.len() as u64 {
            return Err(format!(
                "seq {} != confirmed_seq {} + ahead {}",
                self.seq,
                self.confirmed_seq,
                self.ahead.len()
            ));
        }
        for (i, (seq, id)) in self.ahead.iter().enumerate() {
            if *seq != self.confirmed_seq + 1 + i as u64 {
                return Err(format!("ahead[{i}] ({id}) is at {seq}, not consecutive"));
            }
        }
        if let Some(acked) = self.in_flight.as_ref().and_then(|f| f.acked) {
            if acked <= self.seq {
                return Err(format!(
                    "the in-flight list is remembered as acked at {acked}, not after seq {}",
                    self.seq
                ));
            }
        }
        Ok(())
    }

    /// When nothing is pending, the optimistic state is the server's: take the shadow copy
    /// (equal but for the rounding of float adds applied in another order).
    fn settle(&mut self) {
        if self.dirty && self.is_flushed() && self.seq == self.confirmed_seq {
            if self.state != self.confirmed {
                tracing::debug!(
                    seq = self.seq,
                    "local state differed from the confirmed state; taking the confirmed one"
                );
                self.state = self.confirmed.clone();
            }
            self.dirty = false;
        }
    }

    /// The `joined` answering a rejoin with `since` (or a resync without it). Takes the
    /// recovered events through the loop when they continue our position in our epoch;
    /// otherwise takes the server's `state` and drops pending edits. After it, the in-flight
    /// list (if still uncommitted) is due to be resent.
    pub(crate) fn on_rejoined(
        &mut self,
        epoch: String,
        seq: u64,
        recovered: bool,
        events: &[EventMsg],
        state: Option<Value>,
        hash: Option<&str>,
    ) -> Result<Rejoined, Trouble> {
        if self.resync.is_none() && recovered && epoch == self.epoch {
            let fresh: Vec<&EventMsg> = events
                .iter()
                .filter(|e| e.seq > self.confirmed_seq)
                .collect();
            let contiguous = fresh
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == self.confirmed_seq + 1 + i as u64);
            if contiguous && self.confirmed_seq + fresh.len() as u64 == seq {
                let mut updates = Vec::new();
                for e in fresh {
                    updates.extend(self.on_event(e)?);
                }
                if let Some(flight) = &mut self.in_flight {
                    flight.sent = false;
                }
                return Ok(Rejoined {
                    updates,
                    hash_mismatch: None,
                    need_state: false,
                });
            }
            if state.is_none() {
                return Err(Trouble::Protocol(format!(
                    "recovery to seq {seq} does not continue seq {}",
                    self.confirmed_seq
                )));
            }
        }
        let Some(state) = state else {
            if self.resync.is_some() {
                // The answer to a rejoin with `since` sent before the resync began.
                return Ok(Rejoined {
                    updates: Vec::new(),
                    hash_mismatch: None,
                    need_state: true,
                });
            }
            return Err(Trouble::Protocol(format!(
                "joined at seq {seq} without recovery carries no state"
            )));
        };
        let reason = self.resync.take().unwrap_or(ResyncReason::Reset);
        let hash_mismatch = hash
            .map(|h| (h, state_hash(&state)))
            .filter(|(h, ours)| h != ours)
            .map(|(_, ours)| (seq, ours));
        self.reset(epoch, seq, state);
        Ok(Rejoined {
            updates: vec![DocUpdate::Resynced { seq, reason }],
            hash_mismatch,
            need_state: false,
        })
    }

    /// Takes `state` at `seq` as the truth; pending edits are dropped.
    fn reset(&mut self, epoch: String, seq: u64, state: Value) {
        let dropped = self.buffer.iter().map(Vec::len).sum::<usize>()
            + self.in_flight.as_ref().map_or(0, |f| f.ops.len());
        if dropped > 0 {
            tracing::info!(
                dropped,
                seq,
                "doc state replaced by the server's; pending edits dropped"
            );
        }
        self.epoch = epoch;
        self.confirmed = state.clone();
        self.state = state;
        self.seq = seq;
        self.confirmed_seq = seq;
        self.in_flight = None;
        self.ahead.clear();
        self.buffer.clear();
        self.resync = None;
        self.dirty = false;
    }
}

/// What a rejoin's `joined` produced.
#[derive(Debug, PartialEq)]
pub(crate) struct Rejoined {
    pub updates: Vec<DocUpdate>,
    /// The server's state did not hash to the server's hash: (seq, our hash of it).
    pub hash_mismatch: Option<(u64, String)>,
    /// The replica waits for a resync and this `joined` had no state: ask for it.
    pub need_state: bool,
}

/// The committed ops of a doc event (none if absent).
pub(crate) fn committed_ops(ev: &EventMsg) -> Result<Vec<Op>, DecodeError> {
    let Some(ops) = &ev.ops else {
        return Ok(Vec::new());
    };
    let v: Value = ops.parse().map_err(|e| DecodeError {
        index: None,
        message: format!("unreadable ops: {e}"),
    })?;
    if v.is_null() {
        return Ok(Vec::new());
    }
    decode_ops(
        &v,
        &Limits {
            max_ops: usize::MAX,
            max_path_depth: usize::MAX,
        },
    )
}

/// Bytes of the JSON of `ops`.
fn encoded_len(ops: &[Op]) -> usize {
    serde_json::to_vec(ops).map_or(usize::MAX / 2, |v| v.len())
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
