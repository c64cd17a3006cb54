//! Per-room sequencing state: epoch, the last assigned seq and the last committed seq.
//!
//! A room has exactly one sequencer at a time. Seqs are assigned gap-free when an op is accepted
//! and become visible (broadcast, acked) only once the store has committed them, in order.

use crate::ids::{Epoch, Seq};

/// Sequencing state of one room.
#[derive(Debug, Clone)]
pub struct Sequencer {
    epoch: Epoch,
    assigned: Seq,
    committed: Seq,
}

/// What a `since` position means for a joining client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinceCheck {
    /// Every event after `since` is available: send them and `recovered: true`.
    Recover { after: Seq },
    /// The events cannot all be given: send the current state and `recovered: false`.
    Reset { reason: &'static str },
}

impl Sequencer {
    /// A sequencer for a room whose log is committed up to `head` in `epoch`.
    pub fn new(epoch: Epoch, head: Seq) -> Self {
        Sequencer {
            epoch,
            assigned: head,
            committed: head,
        }
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The highest seq committed (durable, visible).
    pub fn committed(&self) -> Seq {
        self.committed
    }

    /// The highest seq handed out (committed or in flight).
    pub fn assigned(&self) -> Seq {
        self.assigned
    }

    /// Whether ops are in flight (assigned, not yet committed).
    pub fn in_flight(&self) -> bool {
        self.assigned > self.committed
    }

    /// Hands out the next seq.
    pub fn assign(&mut self) -> Seq {
        self.assigned = self.assigned.next();
        self.assigned
    }

    /// Marks every seq up to `upto` committed. Commits arrive in order.
    pub fn commit(&mut self, upto: Seq) {
        assert!(upto <= self.assigned, "commit beyond assigned seq");
        assert!(upto >= self.committed, "commit went backwards");
        self.committed = upto;
    }

    /// Moves the head to `upto` for a room sequenced elsewhere (the distributed mode's shared
    /// stream rooms: the commit point assigns the seqs, this sequencer follows the log as it is
    /// delivered). Never moves back, and never while seqs are assigned here.
    pub fn follow(&mut self, upto: Seq) {
        assert!(!self.in_flight(), "follow with seqs assigned here");
        assert!(upto >= self.committed, "follow went backwards");
        self.assigned = upto;
        self.committed = upto;
    }

    /// Forgets in-flight seqs after a failed commit: the next op gets `committed + 1` again.
    pub fn abort_in_flight(&mut self) {
        self.assigned = self.committed;
    }

    /// Decides whether a client that saw `(epoch, seq)` can be caught up by events, given that
    /// at most `window` missed events are replayed.
    pub fn check_since(&self, epoch: &str, seq: Seq, window: u64) -> SinceCheck {
        if epoch != self.epoch.as_str() {
            return SinceCheck::Reset {
                reason: "epoch changed",
            };
        }
        if seq > self.committed {
            return SinceCheck::Reset {
                reason: "since is ahead of the room",
            };
        }
        if self.committed.0 - seq.0 > window {
            return SinceCheck::Reset {
                reason: "since is older than the recovery window",
            };
        }
        SinceCheck::Recover { after: seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{IdemKey, IdempotencyTable, Lookup};
    use crate::ids::{ClientId, OpId};
    use proptest::prelude::*;

    #[test]
    fn since_checks() {
        let s = Sequencer::new(Epoch("e1".into()), Seq(57));
        assert_eq!(
            s.check_since("e1", Seq(41), 100),
            SinceCheck::Recover { after: Seq(41) }
        );
        assert!(matches!(
            s.check_since("e2", Seq(41), 100),
            SinceCheck::Reset { .. }
        ));
        assert!(matches!(
            s.check_since("e1", Seq(58), 100),
            SinceCheck::Reset { .. }
        ));
        assert!(matches!(
            s.check_since("e1", Seq(1), 10),
            SinceCheck::Reset { .. }
        ));
        assert_eq!(
            s.check_since("e1", Seq(47), 10),
            SinceCheck::Recover { after: Seq(47) }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Seqs are gap-free and each key takes effect once, whatever the mix of retries,
        /// in-flight windows and aborted commits.
        #[test]
        fn seq_assignment_is_gap_free_and_idempotent(
            ops in proptest::collection::vec((0u8..4, 0u8..30, 0u8..10), 1..300),
            cap in 1usize..40,
        ) {
            let mut seqr = Sequencer::new(Epoch("e".into()), Seq::ZERO);
            let mut table: IdempotencyTable<Seq> = IdempotencyTable::new(cap, Seq::ZERO);
            // The durable log: key of each committed seq (index = seq - 1).
            let mut log: Vec<IdemKey> = Vec::new();
            let mut pending: Vec<(IdemKey, Seq)> = Vec::new();
            for (client, id, action) in ops {
                let key = IdemKey {
                    client: ClientId::new(&format!("c{client}")).unwrap(),
                    id: OpId::new(&format!("m{id}")).unwrap(),
                };
                match action {
                    0 => {
                        // commit everything in flight
                        if let Some((_, last)) = pending.last() {
                            seqr.commit(*last);
                            table.commit(*last);
                        }
                        log.extend(pending.drain(..).map(|(k, _)| k));
                    }
                    _ => {
                        let known = match table.lookup(&key) {
                            Lookup::Hit(s) => Some(*s),
                            Lookup::New => None,
                            // the store knows only the durable log, never ops in flight
                            Lookup::Unknown => log.iter().position(|k| *k == key).map(|i| Seq(i as u64 + 1)),
                        };
                        match known {
                            Some(s) => {
                                let original = log.iter().position(|k| *k == key).map(|i| Seq(i as u64 + 1))
                                    .or_else(|| pending.iter().find(|(k, _)| *k == key).map(|(_, s)| *s));
                                prop_assert_eq!(Some(s), original);
                            }
                            None => {
                                let s = seqr.assign();
                                table.insert(key.clone(), s, s);
                                pending.push((key, s));
                            }
                        }
                    }
                }
                prop_assert_eq!(table.check(), Ok(()));
            }
            if let Some((_, last)) = pending.last() { seqr.commit(*last); }
            log.extend(pending.drain(..).map(|(k, _)| k));
            prop_assert_eq!(seqr.committed(), Seq(log.len() as u64));
            let mut keys = log.clone();
            keys.sort_by(|a, b| (a.client.as_str(), a.id.as_str()).cmp(&(b.client.as_str(), b.id.as_str())));
            keys.dedup();
            prop_assert_eq!(keys.len(), log.len(), "a key took effect twice");
        }
    }
}
