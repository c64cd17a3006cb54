//! A deterministic in-memory model of the doc OT loops, for simulation tests and as a reference.
//!
//! [`SimServer`] is the sequencer's side: it rebases an incoming list over everything committed
//! after its `base` ([`transform_over_many`]), applies it atomically and appends it to the log.
//! [`SimClient`] is a client in the ot.js style: local edits apply at once; at most one list is
//! in flight; later local edits wait in a buffer; a committed list from someone else is
//! transformed over the in-flight list and the buffer ([`transform_pair`]) before it is applied.
//! A rejected list makes the client resync from the server's state.

use super::apply::{apply_in_place, ApplyError};
use super::ops::Op;
use super::transform::{transform_over_many, transform_pair, Transformed};
use serde_json::Value;

/// One committed list in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub seq: u64,
    /// The client that sent it.
    pub from: usize,
    /// The ops as committed (transformed).
    pub ops: Vec<Op>,
}

/// The server's doc: state and log (seq `n` is `log[n - 1]`).
#[derive(Debug, Clone)]
pub struct SimServer {
    pub state: Value,
    pub log: Vec<Committed>,
}

impl SimServer {
    pub fn new(state: Value) -> Self {
        SimServer {
            state,
            log: Vec::new(),
        }
    }

    /// The latest committed seq (0 before the first commit).
    pub fn seq(&self) -> u64 {
        self.log.len() as u64
    }

    /// Commits `ops` from client `from`, made against the state at `base`. On error nothing
    /// is committed.
    pub fn submit(
        &mut self,
        from: usize,
        base: u64,
        ops: &[Op],
    ) -> Result<(u64, Transformed), ApplyError> {
        let start = usize::try_from(base)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        let after: Vec<&[Op]> = self.log[start..].iter().map(|c| c.ops.as_slice()).collect();
        let rebased = transform_over_many(ops, &after);
        apply_in_place(&mut self.state, &rebased.ops)?;
        let seq = self.seq() + 1;
        self.log.push(Committed {
            seq,
            from,
            ops: rebased.ops.clone(),
        });
        Ok((seq, rebased))
    }
}

/// A client replica.
#[derive(Debug, Clone)]
pub struct SimClient {
    pub id: usize,
    /// The optimistic local state (server state at `seq` plus pending edits).
    pub state: Value,
    /// The last committed seq applied (or acknowledged).
    pub seq: u64,
    /// The list sent and not yet acknowledged.
    pub in_flight: Option<Vec<Op>>,
    /// Local edits made since `in_flight` was sent.
    pub buffer: Vec<Op>,
}

impl SimClient {
    /// A client that joined at `seq` with `state`.
    pub fn new(id: usize, state: Value, seq: u64) -> Self {
        SimClient {
            id,
            state,
            seq,
            in_flight: None,
            buffer: Vec::new(),
        }
    }

    /// A local edit: applies at once (atomically) and waits in the buffer.
    pub fn edit(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
        apply_in_place(&mut self.state, ops)?;
        self.buffer.extend_from_slice(ops);
        Ok(())
    }

    /// The list to send now, with its base, if nothing is in flight and edits are waiting.
    pub fn take_send(&mut self) -> Option<(u64, Vec<Op>)> {
        if self.in_flight.is_some() || self.buffer.is_empty() {
            return None;
        }
        let ops = std::mem::take(&mut self.buffer);
        self.in_flight = Some(ops.clone());
        Some((self.seq, ops))
    }

    /// The next committed list, in seq order. Its own list is an ack.
    pub fn receive(&mut self, c: &Committed) -> Result<(), ApplyError> {
        debug_assert_eq!(c.seq, self.seq + 1, "gap in delivery");
        self.seq = c.seq;
        if c.from == self.id && self.in_flight.is_some() {
            self.in_flight = None;
            return Ok(());
        }
        let mut incoming = c.ops.clone();
        if let Some(flight) = self.in_flight.take() {
            let (flight, rest) = transform_pair(&flight, &incoming);
            self.in_flight = Some(flight);
            incoming = rest;
        }
        let (buffer, rest) = transform_pair(&self.buffer, &incoming);
        self.buffer = buffer;
        apply_in_place(&mut self.state, &rest)
    }

    /// The server refused the in-flight list: drop local edits and take the server's state.
    pub fn resync(&mut self, state: Value, seq: u64) {
        self.state = state;
        self.seq = seq;
        self.in_flight = None;
        self.buffer.clear();
    }
}
