//! The idempotency table: (client, op id) → the original result, bounded, in seq order.
//!
//! A room keeps the keys of its most recent keyed events in memory. The table knows from which
//! seq on it is complete, so a miss is either definite (the op is new) or means "ask the store".
//!
//! Keys of ops sequenced but not yet committed are never evicted: the store cannot answer for
//! them yet, so evicting one would let a retry be sequenced a second time. The table may hold
//! more than its capacity while that many ops are in flight; it shrinks back on `commit`.

use crate::ids::{ClientId, OpId, Seq};
use std::collections::{HashMap, VecDeque};

/// The idempotency key of an op within a room.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IdemKey {
    pub client: ClientId,
    pub id: OpId,
}

/// The answer of [`IdempotencyTable::lookup`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Lookup<'a, V> {
    /// The op was already sequenced with this value.
    Hit(&'a V),
    /// The op is certainly new.
    New,
    /// The table is not complete far enough back; the store must be asked.
    Unknown,
}

/// Bounded map from keys to values (typically seq + hlc), evicting the oldest seqs first.
#[derive(Debug)]
pub struct IdempotencyTable<V> {
    map: HashMap<IdemKey, V>,
    order: VecDeque<(IdemKey, Seq)>,
    capacity: usize,
    /// Every keyed event with seq > `complete_after` is in the table.
    complete_after: Seq,
    /// Keys up to this seq are durable (and so can be found in the store once evicted).
    committed: Seq,
}

impl<V> IdempotencyTable<V> {
    /// An empty table for a room whose history before `complete_after` (inclusive) is not loaded.
    pub fn new(capacity: usize, complete_after: Seq) -> Self {
        IdempotencyTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            complete_after,
            committed: complete_after,
        }
    }

    /// An empty table for a room whose keys up to `committed` are durable and whose history
    /// before `complete_after` (inclusive) is not loaded.
    pub fn with_committed(capacity: usize, complete_after: Seq, committed: Seq) -> Self {
        IdempotencyTable {
            committed: committed.max(complete_after),
            ..Self::new(capacity, complete_after)
        }
    }

    pub fn lookup(&self, key: &IdemKey) -> Lookup<'_, V> {
        match self.map.get(key) {
            Some(v) => Lookup::Hit(v),
            None if self.complete_after == Seq::ZERO => Lookup::New,
            None => Lookup::Unknown,
        }
    }

    /// Records the key of the event sequenced at `seq`. Seqs must be inserted in increasing order.
    /// Evicts the oldest committed keys beyond the capacity; keys in flight stay.
    pub fn insert(&mut self, key: IdemKey, seq: Seq, value: V) {
        debug_assert!(self.order.back().is_none_or(|(_, s)| *s < seq));
        self.map.insert(key.clone(), value);
        self.order.push_back((key, seq));
        self.evict();
    }

    /// Every key up to `seq` is durable now: those beyond the capacity may be evicted.
    pub fn commit(&mut self, seq: Seq) {
        self.committed = self.committed.max(seq);
        self.evict();
    }

    fn evict(&mut self) {
        while self.order.len() > self.capacity {
            match self.order.front() {
                Some((_, s)) if *s <= self.committed => {}
                _ => break,
            }
            if let Some((old, old_seq)) = self.order.pop_front() {
                self.map.remove(&old);
                self.complete_after = self.complete_after.max(old_seq);
            }
        }
    }

    /// Checks the table's invariants (for tests, after every step): map and order hold the same
    /// keys, seqs increase, every key is after `complete_after`, and the table is over capacity
    /// only by keys still in flight.
    pub fn check(&self) -> Result<(), String> {
        if self.map.len() != self.order.len() {
            return Err(format!(
                "map has {} keys, order {}",
                self.map.len(),
                self.order.len()
            ));
        }
        let mut prev: Option<Seq> = None;
        for (k, s) in &self.order {
            if !self.map.contains_key(k) {
                return Err(format!("{k:?} at {s} is in the order but not in the map"));
            }
            if prev.is_some_and(|p| p >= *s) {
                return Err(format!("seqs do not increase at {s}"));
            }
            if *s <= self.complete_after {
                return Err(format!(
                    "{s} is not after complete_after {}",
                    self.complete_after
                ));
            }
            prev = Some(*s);
        }
        let over = self.order.len().saturating_sub(self.capacity);
        if let Some((_, s)) = self.order.get(over.saturating_sub(1)).filter(|_| over > 0) {
            if *s <= self.committed {
                return Err(format!(
                    "over capacity by {over} although {s} is committed ({})",
                    self.committed
                ));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The keys recorded after `seq` with their seqs, newest first (e.g. the keys in flight).
    pub fn keys_after(&self, seq: Seq) -> impl Iterator<Item = (&IdemKey, Seq)> + '_ {
        self.order
            .iter()
            .rev()
            .take_while(move |(_, s)| *s > seq)
            .map(|(k, s)| (k, *s))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn complete_after(&self) -> Seq {
        self.complete_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, i: &str) -> IdemKey {
        IdemKey {
            client: ClientId::new(c).unwrap(),
            id: OpId::new(i).unwrap(),
        }
    }

    #[test]
    fn eviction_makes_misses_unknown() {
        let mut t = IdempotencyTable::new(2, Seq::ZERO);
        assert_eq!(t.lookup(&key("a", "1")), Lookup::New);
        t.insert(key("a", "1"), Seq(1), 1);
        t.insert(key("a", "2"), Seq(2), 2);
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Hit(&1));
        assert_eq!(t.lookup(&key("b", "1")), Lookup::New);
        t.insert(key("a", "3"), Seq(3), 3);
        // Keys in flight stay; once committed, the oldest beyond the capacity goes.
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Hit(&1));
        t.commit(Seq(3));
        assert_eq!(t.complete_after(), Seq(1));
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Unknown);
        assert_eq!(t.lookup(&key("a", "3")), Lookup::Hit(&3));
        assert_eq!(t.len(), 2);
        t.check().unwrap();
    }

    #[test]
    fn keys_in_flight_are_never_evicted() {
        let mut t = IdempotencyTable::new(2, Seq::ZERO);
        for i in 1..=5u64 {
            t.insert(key("a", &i.to_string()), Seq(i), i);
            t.check().unwrap();
        }
        // Nothing committed: all five stay, a retry of the first is still a hit.
        assert_eq!(t.len(), 5);
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Hit(&1));
        assert_eq!(t.complete_after(), Seq::ZERO);
        t.commit(Seq(2));
        t.check().unwrap();
        assert_eq!(t.len(), 3, "only committed keys are evicted");
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Unknown);
        assert_eq!(t.lookup(&key("a", "3")), Lookup::Hit(&3));
        t.commit(Seq(5));
        t.check().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.complete_after(), Seq(3));
    }

    #[test]
    fn check_finds_a_table_over_capacity_with_committed_keys() {
        let mut t = IdempotencyTable::new(1, Seq::ZERO);
        t.insert(key("a", "1"), Seq(1), 1);
        t.insert(key("a", "2"), Seq(2), 2);
        t.check().unwrap();
        t.committed = Seq(2);
        assert!(t.check().is_err());
    }
}
