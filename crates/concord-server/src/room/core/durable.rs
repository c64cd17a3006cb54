//! Acks at the ack level `durable` (the distributed mode): a shared room acks a write only once
//! the room's persisted watermark (the workers' PostgreSQL commit) covers its seq, and delivers
//! an event to its members only then too, so that no client sees or is acked an event a loss
//! of Redis could undo. The watermark comes from the feed ([`RoomCore::persisted`]: a note
//! the workers publish, or the shell's periodic read of the room's meta).

use super::answer::Acked;
use super::effect::Effect;
use super::state::State;
use super::{RoomCore, Waiting};
use crate::metrics::Metrics;
use concord_core::{Epoch, Seq};
use std::collections::VecDeque;

/// What a shared room holds at the ack level `durable`.
pub(super) struct Durable<W> {
    /// The room's persisted watermark as last heard (only moves forward).
    pub persisted: Seq,
    /// Acks whose seq the watermark does not cover yet, in the order they were given.
    pub acks: VecDeque<HeldAck<W>>,
}

/// One ack waiting for the watermark.
pub(super) struct HeldAck<W> {
    pub waiter: W,
    pub acked: Acked,
    pub fresh: bool,
    /// When the write was admitted (wall ms of the hlc it proposed).
    pub admitted_ms: u64,
}

impl<W> Durable<W> {
    /// A room just loaded: its watermark is not known until the feed or a read tells it (a
    /// retry of a write up to the loaded head may not be persisted yet).
    pub fn unknown() -> Self {
        Durable {
            persisted: Seq::ZERO,
            acks: VecDeque::new(),
        }
    }
}

/// Acks `acked` now, or holds it until the watermark covers it.
pub(super) fn ack_or_hold<W>(
    durable: &mut Option<Durable<W>>,
    effects: &mut Vec<Effect<W>>,
    metrics: &Metrics,
    held: HeldAck<W>,
) {
    match durable {
        Some(d) if held.acked.seq > d.persisted => {
            metrics.durable_acks_waiting.inc();
            d.acks.push_back(held);
        }
        _ => effects.push(Effect::Ack {
            waiter: held.waiter,
            acked: held.acked,
            fresh: held.fresh,
        }),
    }
}

impl<W: Waiting> RoomCore<W> {
    /// Holds acks and deliveries of this room until the persisted watermark covers them (the
    /// ack level `durable`); kept across reloads.
    pub fn hold_until_persisted(&mut self) {
        self.durable_acks = true;
        if let State::Shared { log, .. } = &mut self.state {
            if log.durable.is_none() {
                log.durable = Some(Durable::unknown());
            }
        }
    }

    /// The room's persisted watermark in `epoch` is at least `seq` (`now_ms`: the wall clock,
    /// for the wait's metric): the acks it covers go out, then the events it covers.
    pub fn persisted(&mut self, epoch: &Epoch, seq: Seq, now_ms: u64) {
        let State::Shared { live, log } = &mut self.state else {
            return;
        };
        if live.seqr.epoch() != epoch {
            return;
        }
        let Some(d) = log.durable.as_mut() else {
            return;
        };
        if seq <= d.persisted {
            return;
        }
        d.persisted = seq;
        // In the order they were given; a duplicate's original seq may be below a later one.
        let mut rest = VecDeque::new();
        for a in d.acks.drain(..) {
            if a.acked.seq > seq {
                rest.push_back(a);
                continue;
            }
            self.metrics.durable_acks_waiting.dec();
            let waited = now_ms.saturating_sub(a.admitted_ms);
            self.metrics.durable_wait.observe(waited as f64 / 1000.0);
            self.effects.push(Effect::Ack {
                waiter: a.waiter,
                acked: a.acked,
                fresh: a.fresh,
            });
        }
        d.acks = rest;
        self.deliver();
    }

    /// Whether acks or events wait for the watermark (the shell reads it while they do).
    pub fn waits_for_persisted(&self) -> bool {
        match &self.state {
            State::Shared { log, .. } => log.durable.as_ref().is_some_and(|d| {
                !d.acks.is_empty() || log.held.front().is_some_and(|e| e.seq > d.persisted)
            }),
            _ => false,
        }
    }

    /// The acks held for the watermark (for a shell that ends abnormally, or a room that
    /// reloads: their writes are committed, the waiters are answered `unavailable` and retry
    /// with the same id).
    pub(super) fn durable_waiters(&mut self, out: &mut Vec<W>) {
        if let State::Shared { log, .. } = &mut self.state {
            if let Some(d) = log.durable.as_mut() {
                for a in d.acks.drain(..) {
                    self.metrics.durable_acks_waiting.dec();
                    out.push(a.waiter);
                }
            }
        }
    }
}
