//! `RoomCore::check`: the core's invariants, for tests to call after every step.

use super::state::State;
use super::{RoomCore, Waiting};
use concord_core::Seq;

impl<W: Waiting> RoomCore<W> {
    /// Checks the invariants: the window is contiguous and ends at the committed head; a doc's
    /// seq is the sequencer's head; the batches being sequenced and in flight hold exactly the
    /// seqs after the committed head, in order; every key in flight belongs to a waiting write
    /// of that seq, and every retry waits for a seq in flight; the idempotency table is sound.
    pub fn check(&self) -> Result<(), String> {
        let Some(live) = self.state.live() else {
            if !self.batch.acks.is_empty() || !self.batch.stored.is_empty() {
                return Err("a room that is not live is sequencing".into());
            }
            return Ok(());
        };
        let committed = live.seqr.committed();
        let assigned = live.seqr.assigned();
        live.window.check(committed)?;
        if matches!(self.state, State::Shared { .. }) {
            self.shared_check()?;
            return live.idem.check();
        }
        if let State::Doc { doc, .. } = &self.state {
            if doc.seq != assigned {
                return Err(format!(
                    "the document is at {}, the sequencer at {assigned}",
                    doc.seq
                ));
            }
        }
        let pending: Vec<(Seq, Option<&concord_core::OpId>)> = self
            .inflight
            .iter()
            .chain(std::iter::once(&self.batch))
            .flat_map(|b| b.acks.iter().map(|a| (a.seq, a.waiter.op_id())))
            .collect();
        for (i, (seq, _)) in pending.iter().enumerate() {
            if seq.0 != committed.0 + 1 + i as u64 {
                return Err(format!(
                    "write {i} in flight has seq {seq}, the committed head is {committed}"
                ));
            }
        }
        if committed.0 + pending.len() as u64 != assigned.0 {
            return Err(format!(
                "{} writes in flight after {committed}, but {assigned} is assigned",
                pending.len()
            ));
        }
        if self.batch.stored.len() != self.batch.acks.len()
            || self.batch.events.len() != self.batch.acks.len()
        {
            return Err("the batch being sequenced is inconsistent".into());
        }
        for (key, seq) in live.idem.keys_after(committed) {
            let i = (seq.0 - committed.0 - 1) as usize;
            if pending.get(i).and_then(|p| p.1) != Some(&key.id) {
                return Err(format!("key {key:?} in flight at {seq} has no waiter"));
            }
        }
        for (seq, _, _) in &live.waiting {
            if *seq <= committed || *seq > assigned {
                return Err(format!(
                    "a retry waits for {seq}, not in flight ({committed}, {assigned}]"
                ));
            }
        }
        live.idem.check()
    }
}
