//! The outcome of an append: on success the batch's waiters are acked and its events go to
//! the members and into the window, in seq order; on failure (or an unknown outcome: a timeout
//! may hide a landed append) everything in flight is answered `unavailable` and the room is
//! reloaded from the store, which alone knows what landed.

use super::answer::{Acked, RoomError};
use super::effect::Effect;
use super::state::State;
use super::{RoomCore, Waiting};
use crate::metrics::Limit;
use concord_protocol::ErrorCode;

impl<W: Waiting> RoomCore<W> {
    /// The store's answer to the oldest append in flight: `Err` when it failed or its outcome
    /// is unknown.
    pub fn append_done(&mut self, outcome: Result<(), String>) {
        let Some(done) = self.inflight.pop_front() else {
            debug_assert!(false, "an outcome with nothing in flight");
            return;
        };
        let unavailable = || RoomError::new(ErrorCode::Unavailable, "commit failed; retry");
        let live = match (&mut self.state, &outcome) {
            (State::Stream(live) | State::Doc { live, .. }, Ok(())) => live,
            (State::Shared { .. }, _) => {
                debug_assert!(false, "a store append for a shared room");
                self.inflight.push_front(done);
                return;
            }
            (State::Stream(_) | State::Doc { .. }, Err(e)) => {
                tracing::error!(room = %self.room, error = %e, "commit failed; reloading room");
                let (State::Stream(mut live) | State::Doc { mut live, .. }) =
                    std::mem::replace(&mut self.state, State::Stale { broken: false })
                else {
                    unreachable!("matched as live")
                };
                // The batch being sequenced follows the failed one: it could never land.
                let unsent = std::mem::take(&mut self.batch);
                let waiters = done
                    .acks
                    .into_iter()
                    .chain(unsent.acks)
                    .map(|a| a.waiter)
                    .chain(live.waiting.drain(..).map(|w| w.2));
                for waiter in waiters {
                    self.effects.push(Effect::Fail {
                        waiter,
                        error: unavailable(),
                    });
                }
                self.reload_when_idle();
                return;
            }
            _ => {
                // A commit failed earlier: everything after it fails too (the store refuses
                // gaps; if it did land, the reload finds it and a retry gets its ack).
                for a in done.acks {
                    self.effects.push(Effect::Fail {
                        waiter: a.waiter,
                        error: unavailable(),
                    });
                }
                self.reload_when_idle();
                return;
            }
        };
        let last = done.events.last().map_or(live.seqr.committed(), |e| e.seq);
        live.seqr.commit(last);
        live.idem.commit(last);
        self.metrics
            .events_committed
            .inc_by(done.events.len() as u64);
        let epoch = live.seqr.epoch();
        for a in done.acks {
            let acked = Acked {
                seq: a.seq,
                hlc: a.hlc,
                epoch: epoch.clone(),
                dropped: a.dropped,
            };
            self.effects.push(Effect::Ack {
                waiter: a.waiter,
                acked,
                fresh: true,
            });
        }
        for ev in done.events {
            self.effects.push(Effect::Broadcast(ev.frame.clone()));
            if live.window.push(ev) {
                self.metrics.limit(Limit::RoomWindowBytes);
            }
        }
        if !live.waiting.is_empty() {
            let committed = live.seqr.committed();
            let mut i = 0;
            while i < live.waiting.len() {
                if live.waiting[i].0 <= committed {
                    let (seq, hlc, waiter) = live.waiting.remove(i);
                    let acked = Acked {
                        seq,
                        hlc,
                        epoch: epoch.clone(),
                        dropped: Vec::new(),
                    };
                    self.effects.push(Effect::Ack {
                        waiter,
                        acked,
                        fresh: false,
                    });
                } else {
                    i += 1;
                }
            }
        }
    }

    /// After a failure, the reload waits until every batch in flight has its outcome.
    fn reload_when_idle(&mut self) {
        if self.needs_reload() && !matches!(self.state, State::Stale { broken: true }) {
            self.effects.push(Effect::Reload);
        }
    }
}
