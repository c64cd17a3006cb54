//! Ordered, gap-free delivery of a room's log from a feed that may lose, repeat or reorder
//! entries (the distributed mode's pub/sub notifications), with gaps filled from the log.
//!
//! The model: the log is the sequence of committed entries `1, 2, 3, …` of one epoch. A
//! follower has delivered every entry up to `delivered` and nothing after. Entries arrive from
//! two sources: the feed ([`Follower::offer`]: at most once, any order, repeats possible) and
//! fills it asks for ([`Follower::fill_request`] → the shell reads the log → [`Follower::filled`]:
//! a contiguous run starting right after a seq, possibly shorter than asked when the log was
//! read with a limit). Entries are delivered exactly once, in seq order, with no gap: an entry
//! after a gap waits in a bounded buffer until the gap is filled. What the follower knows of the
//! head (the highest seq it has seen offered, or learned by [`Follower::head_at_least`] after a
//! resubscription) is what it fills up to.
//!
//! Pub/sub loss therefore becomes a short delay, never a lost or reordered event. The buffer
//! bound only limits memory: entries dropped from a full buffer are read again by the fill.

use crate::ids::Seq;
use std::collections::BTreeMap;

/// Orders one room's log for delivery. `E` is whatever the shell delivers (an encoded event).
#[derive(Debug)]
pub struct Follower<E> {
    /// Every entry up to here was delivered, in order.
    delivered: Seq,
    /// Entries after a gap, by seq (all > `delivered + 1`).
    buffer: BTreeMap<u64, E>,
    max_buffer: usize,
    /// The highest seq known to exist.
    known: Seq,
    /// A fill is being read: up to this seq. At most one at a time: set until its result (or
    /// failure) is handed back, even when the feed delivered the range meanwhile.
    filling: Option<Seq>,
}

/// A range of the log to read: the entries with `after < seq <= until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub after: Seq,
    pub until: Seq,
}

impl<E> Follower<E> {
    /// A follower that has delivered everything up to `delivered` (the head when it starts).
    pub fn new(delivered: Seq, max_buffer: usize) -> Self {
        Follower {
            delivered,
            buffer: BTreeMap::new(),
            max_buffer: max_buffer.max(1),
            known: delivered,
            filling: None,
        }
    }

    /// The last seq delivered.
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// The highest seq known to exist.
    pub fn known(&self) -> Seq {
        self.known
    }

    /// Entries buffered behind a gap.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// An entry from the feed. Returns the entries now deliverable, in order (this one and the
    /// buffered ones it unblocks); an entry already delivered or buffered is ignored.
    pub fn offer(&mut self, seq: Seq, entry: E) -> Vec<E> {
        self.known = self.known.max(seq);
        if seq <= self.delivered {
            return Vec::new();
        }
        if seq.0 == self.delivered.0 + 1 {
            let mut out = vec![entry];
            self.delivered = seq;
            self.drain_buffer(&mut out);
            return out;
        }
        if self.buffer.len() < self.max_buffer || self.evict_beyond(seq) {
            self.buffer.entry(seq.0).or_insert(entry);
        }
        Vec::new()
    }

    /// Makes room for `seq` by dropping the highest buffered entry if it is beyond `seq`
    /// (the fill reads it again); false when `seq` is the highest and is the one to drop.
    fn evict_beyond(&mut self, seq: Seq) -> bool {
        match self.buffer.last_key_value() {
            Some((&top, _)) if top > seq.0 => {
                self.buffer.remove(&top);
                true
            }
            _ => false,
        }
    }

    fn drain_buffer(&mut self, out: &mut Vec<E>) {
        while let Some(e) = self.buffer.remove(&(self.delivered.0 + 1)) {
            self.delivered = Seq(self.delivered.0 + 1);
            out.push(e);
        }
    }

    /// The log has at least `head` entries (learned after a resubscription, or from a
    /// commit's answer): anything after what was delivered must be filled.
    pub fn head_at_least(&mut self, head: Seq) {
        self.known = self.known.max(head);
    }

    /// The range to read now, if entries are missing and no read is under way. The caller
    /// reads it and hands the result to [`Follower::filled`] (or [`Follower::fill_failed`]).
    pub fn fill_request(&mut self) -> Option<Fill> {
        if self.filling.is_some() || self.known <= self.delivered {
            return None;
        }
        // Up to the entry before the first one buffered: the rest is here already. With
        // nothing buffered, up to the known head.
        let until = match self.buffer.first_key_value() {
            Some((&first, _)) => Seq(first - 1),
            None => self.known,
        };
        self.filling = Some(until);
        Some(Fill {
            after: self.delivered,
            until,
        })
    }

    /// The entries read for a fill: a contiguous run starting right after the seq the fill
    /// asked from (possibly shorter than asked). Returns what is now deliverable, in order.
    /// Entries the feed delivered meanwhile are skipped.
    pub fn filled(&mut self, after: Seq, entries: Vec<(Seq, E)>) -> Vec<E> {
        self.filling = None;
        let mut out = Vec::new();
        for (expect, (seq, e)) in (after.0 + 1..).zip(entries) {
            if seq.0 != expect {
                // Not contiguous: keep what was contiguous, ask again for the rest.
                break;
            }
            self.known = self.known.max(seq);
            if seq.0 == self.delivered.0 + 1 {
                self.delivered = seq;
                out.push(e);
                self.buffer.remove(&seq.0);
            }
        }
        self.drain_buffer(&mut out);
        out
    }

    /// A fill could not be read: the next [`Follower::fill_request`] asks again.
    pub fn fill_failed(&mut self) {
        self.filling = None;
    }

    /// Checks the invariants: everything buffered lies after a gap, within the bound and at
    /// or below the known head; a fill under way starts after what was delivered.
    pub fn check(&self) -> Result<(), String> {
        if self.buffer.len() > self.max_buffer {
            return Err(format!(
                "{} entries buffered, bound {}",
                self.buffer.len(),
                self.max_buffer
            ));
        }
        if let Some((&first, _)) = self.buffer.first_key_value() {
            if first <= self.delivered.0 + 1 {
                return Err(format!(
                    "entry {first} is buffered after {} was delivered",
                    self.delivered
                ));
            }
        }
        if let Some((&last, _)) = self.buffer.last_key_value() {
            if last > self.known.0 {
                return Err(format!(
                    "entry {last} is buffered beyond the head {}",
                    self.known
                ));
            }
        }
        if self.delivered > self.known {
            return Err(format!(
                "delivered {} beyond the known head {}",
                self.delivered, self.known
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seqs(v: &[u64]) -> Vec<u64> {
        v.to_vec()
    }

    #[test]
    fn in_order_entries_are_delivered_at_once() {
        let mut f = Follower::new(Seq(4), 8);
        assert_eq!(f.offer(Seq(5), 5), seqs(&[5]));
        assert_eq!(f.offer(Seq(6), 6), seqs(&[6]));
        assert_eq!(f.fill_request(), None);
        assert_eq!(f.delivered(), Seq(6));
    }

    #[test]
    fn repeats_and_old_entries_are_ignored() {
        let mut f = Follower::new(Seq(4), 8);
        assert!(f.offer(Seq(3), 3).is_empty());
        assert_eq!(f.offer(Seq(5), 5), seqs(&[5]));
        assert!(f.offer(Seq(5), 5).is_empty());
        assert!(f.offer(Seq(7), 7).is_empty());
        assert!(f.offer(Seq(7), 70).is_empty(), "the first copy is kept");
        assert_eq!(f.offer(Seq(6), 6), seqs(&[6, 7]));
    }

    #[test]
    fn a_gap_asks_for_a_fill_up_to_the_first_buffered_entry() {
        let mut f = Follower::new(Seq(0), 8);
        assert!(f.offer(Seq(4), 4).is_empty());
        let fill = f.fill_request().expect("a gap");
        assert_eq!(
            fill,
            Fill {
                after: Seq(0),
                until: Seq(3)
            }
        );
        assert_eq!(f.fill_request(), None, "one fill at a time");
        let got = f.filled(Seq(0), vec![(Seq(1), 1), (Seq(2), 2), (Seq(3), 3)]);
        assert_eq!(got, seqs(&[1, 2, 3, 4]));
        assert_eq!(f.fill_request(), None);
        f.check().unwrap();
    }

    #[test]
    fn a_short_fill_asks_again_for_the_rest() {
        let mut f = Follower::new(Seq(0), 8);
        f.offer(Seq(5), 5);
        let fill = f.fill_request().expect("a gap");
        assert_eq!(
            f.filled(fill.after, vec![(Seq(1), 1), (Seq(2), 2)]),
            seqs(&[1, 2])
        );
        let again = f.fill_request().expect("still a gap");
        assert_eq!(
            again,
            Fill {
                after: Seq(2),
                until: Seq(4)
            }
        );
    }

    #[test]
    fn a_learned_head_is_filled_without_any_feed_entry() {
        let mut f = Follower::<u64>::new(Seq(2), 8);
        f.head_at_least(Seq(5));
        let fill = f.fill_request().expect("missing 3..=5");
        assert_eq!(fill.until, Seq(5));
        assert_eq!(
            f.filled(fill.after, vec![(Seq(3), 3), (Seq(4), 4), (Seq(5), 5)]),
            seqs(&[3, 4, 5])
        );
    }

    #[test]
    fn entries_the_feed_delivered_during_a_fill_are_not_delivered_twice() {
        let mut f = Follower::new(Seq(0), 8);
        f.offer(Seq(3), 3);
        let fill = f.fill_request().expect("a gap");
        // 1 and 2 arrive late from the feed while the fill is read.
        assert_eq!(f.offer(Seq(1), 1), seqs(&[1]));
        assert_eq!(f.offer(Seq(2), 2), seqs(&[2, 3]));
        assert_eq!(f.fill_request(), None, "nothing missing any more");
        assert!(f
            .filled(fill.after, vec![(Seq(1), 1), (Seq(2), 2)])
            .is_empty());
        assert_eq!(f.delivered(), Seq(3));
    }

    #[test]
    fn a_failed_fill_is_asked_again() {
        let mut f = Follower::new(Seq(0), 8);
        f.offer(Seq(2), 2);
        let first = f.fill_request().expect("a gap");
        f.fill_failed();
        assert_eq!(f.fill_request(), Some(first));
    }

    #[test]
    fn a_full_buffer_keeps_the_lowest_entries() {
        let mut f = Follower::new(Seq(0), 2);
        f.offer(Seq(5), 5);
        f.offer(Seq(4), 4);
        f.offer(Seq(3), 3);
        f.offer(Seq(9), 9);
        assert_eq!(f.buffered(), 2);
        f.check().unwrap();
        let fill = f.fill_request().expect("a gap");
        assert_eq!(fill.until, Seq(2), "up to the first buffered entry");
        assert_eq!(
            f.filled(fill.after, vec![(Seq(1), 1), (Seq(2), 2)]),
            seqs(&[1, 2, 3, 4])
        );
        // 5 and 9 were dropped from the buffer: the known head brings them back by a fill.
        let rest = f.fill_request().expect("5..=9 missing");
        assert_eq!(
            rest,
            Fill {
                after: Seq(4),
                until: Seq(9)
            }
        );
    }

    /// One step of a randomised schedule: the feed hands over an entry (maybe a repeat), a fill
    /// in progress completes (maybe short), or the feed is lost and the head is learned anew.
    #[derive(Debug, Clone)]
    enum Step {
        Feed { pick: usize },
        Fill { short: usize },
        Resubscribe,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any::<usize>().prop_map(|pick| Step::Feed { pick }),
            3 => (0usize..4).prop_map(|short| Step::Fill { short }),
            1 => Just(Step::Resubscribe),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Whatever the feed loses, repeats or reorders, the follower delivers the log exactly
        /// once, in order, and with fills it always reaches the head.
        #[test]
        fn delivers_the_log_exactly_once_in_order(
            start in 0u64..5,
            head in 0u64..60,
            buffer in 1usize..8,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let head = start + head;
            let mut f = Follower::new(Seq(start), buffer);
            // The feed: what has been published and not yet handed over (it may repeat).
            let mut feed: Vec<u64> = (start + 1..=head).collect();
            let mut out: Vec<u64> = Vec::new();
            let mut pending: Option<Fill> = None;
            for s in steps {
                match s {
                    Step::Feed { pick } if !feed.is_empty() => {
                        let i = pick % feed.len();
                        let seq = feed[i];
                        // Sometimes the entry is lost or repeated.
                        match pick % 5 {
                            0 => { feed.swap_remove(i); }
                            1 => {}
                            _ => { feed.swap_remove(i); out.extend(f.offer(Seq(seq), seq)); }
                        }
                    }
                    Step::Feed { .. } => {}
                    Step::Fill { short } => {
                        if let Some(fill) = pending.take() {
                            let n = (fill.until.0 - fill.after.0) as usize;
                            let n = n.saturating_sub(short).max(1).min(n);
                            let entries = (fill.after.0 + 1..=fill.after.0 + n as u64)
                                .map(|s| (Seq(s), s))
                                .collect();
                            out.extend(f.filled(fill.after, entries));
                        }
                    }
                    Step::Resubscribe => f.head_at_least(Seq(head)),
                }
                if pending.is_none() {
                    pending = f.fill_request();
                }
                f.check().map_err(TestCaseError::fail)?;
                let expect: Vec<u64> = (start + 1..=f.delivered().0).collect();
                prop_assert_eq!(&out, &expect, "delivered out of order, twice or with a gap");
            }
            // Drain: the feed is gone; the shell learns the head and fills until done.
            f.head_at_least(Seq(head));
            for _ in 0..(head + 2) {
                if pending.is_none() {
                    pending = f.fill_request();
                }
                let Some(fill) = pending.take() else { break };
                let entries = (fill.after.0 + 1..=fill.until.0).map(|s| (Seq(s), s)).collect();
                out.extend(f.filled(fill.after, entries));
            }
            let all: Vec<u64> = (start + 1..=head).collect();
            prop_assert_eq!(out, all, "the whole log, once, in order");
        }
    }
}
