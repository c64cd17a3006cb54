//! The idempotency table: (client, op id) → the original result, bounded, in seq order.
//!
//! A room keeps the keys of its most recent keyed events in memory. The table knows from which
//! seq on it is complete, so a miss is either definite (the op is new) or means "ask the store".

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
}

impl<V> IdempotencyTable<V> {
    /// An empty table for a room whose history before `complete_after` (inclusive) is not loaded.
    pub fn new(capacity: usize, complete_after: Seq) -> Self {
        IdempotencyTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            complete_after,
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
    pub fn insert(&mut self, key: IdemKey, seq: Seq, value: V) {
        debug_assert!(self.order.back().is_none_or(|(_, s)| *s < seq));
        if self.order.len() >= self.capacity {
            if let Some((old, old_seq)) = self.order.pop_front() {
                self.map.remove(&old);
                self.complete_after = self.complete_after.max(old_seq);
            }
        }
        self.map.insert(key.clone(), value);
        self.order.push_back((key, seq));
    }

    pub fn len(&self) -> usize {
        self.map.len()
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
        assert_eq!(t.complete_after(), Seq(1));
        assert_eq!(t.lookup(&key("a", "1")), Lookup::Unknown);
        assert_eq!(t.lookup(&key("a", "3")), Lookup::Hit(&3));
        assert_eq!(t.len(), 2);
    }
}
