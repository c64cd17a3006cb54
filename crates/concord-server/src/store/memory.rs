//! `MemoryStore`: the store contract held in process memory, for tests of the logic above it.

use super::{
    hlc_floor, Append, Archive, ClientRegistry, CommitLog, Durability, EventKey, FoundOp, History,
    RoomRecord, Store, StoreError, StoreResult, StoredEvent,
};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

#[derive(Default)]
struct MemRoom {
    kind: Option<RoomKind>,
    epoch: Option<Epoch>,
    /// The retained events: `events[i].seq == floor + i + 1`.
    events: Vec<StoredEvent>,
    /// Events removed by `trim` before the first retained one.
    floor: u64,
    keys: HashSet<(ClientId, OpId)>,
    snapshots: std::collections::BTreeMap<Seq, String>,
}

/// Nothing survives the process; use [`super::SqliteStore`] for anything durable.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<RoomId, MemRoom>>,
    clients: Mutex<HashMap<ClientId, String>>,
}

impl MemRoom {
    fn head(&self) -> u64 {
        self.floor + self.events.len() as u64
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CommitLog for MemoryStore {
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        let mut rooms = self.rooms.lock();
        let r = rooms.entry(room.clone()).or_default();
        if r.kind.is_none() {
            r.kind = Some(kind);
            r.epoch = Some(epoch.clone());
        }
        Ok(())
    }

    async fn append(&self, room: &RoomId, append: Append) -> StoreResult<Durability> {
        append.check(room)?;
        let mut rooms = self.rooms.lock();
        let r = rooms
            .get_mut(room)
            .filter(|r| r.kind.is_some())
            .ok_or_else(|| StoreError::NoRoom(room.to_string()))?;
        if let Some(current) = r.epoch.as_ref().filter(|e| **e != append.epoch) {
            return Err(StoreError::EpochChanged {
                room: room.to_string(),
                current: current.clone(),
            });
        }
        // The head first (as in SQLite): a retry of committed events no longer continues the
        // head, whatever its op ids.
        if append.events.is_empty() {
            return Ok(Durability::Memory);
        }
        if r.head() != append.expected_head.0 {
            return Err(StoreError::HeadMoved {
                room: room.to_string(),
                head: r.head(),
            });
        }
        let mut new_keys = HashSet::new();
        for e in &append.events {
            if let Some(op) = &e.op_id {
                let key = (e.from.clone(), op.clone());
                if r.keys.contains(&key) || !new_keys.insert(key) {
                    return Err(StoreError::Backend(format!(
                        "duplicate op id {op} from {}",
                        e.from
                    )));
                }
            }
        }
        r.keys.extend(new_keys);
        r.events.extend(append.events);
        Ok(Durability::Memory)
    }
}

#[async_trait]
impl History for MemoryStore {
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let rooms = self.rooms.lock();
        Ok(rooms.get(room).and_then(|r| {
            Some(RoomRecord {
                kind: r.kind?,
                epoch: r.epoch.clone()?,
                head: Seq(r.head()),
                head_hlc: r.events.last().map(|e| e.hlc.clone()),
            })
        }))
    }

    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rooms = self.rooms.lock();
        Ok(rooms
            .get(room)
            .map(|r| {
                r.events
                    .iter()
                    .skip(after.0.saturating_sub(r.floor) as usize)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
        let rooms = self.rooms.lock();
        let Some(r) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let skip = r.events.len().saturating_sub(last);
        Ok(r.events
            .iter()
            .skip(skip)
            .map(|e| EventKey {
                seq: e.seq,
                from: e.from.clone(),
                op_id: e.op_id.clone(),
                hlc: e.hlc.clone(),
            })
            .collect())
    }

    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>> {
        let hlc = hlc_floor(wall_ms);
        let hlc = hlc.as_str();
        let rooms = self.rooms.lock();
        Ok(rooms.get(room).and_then(|r| {
            r.events
                .iter()
                .find(|e| e.hlc.as_str() >= hlc)
                .map(|e| e.seq)
        }))
    }

    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>> {
        let rooms = self.rooms.lock();
        let Some(r) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        Ok(r.events
            .iter()
            .filter_map(|e| {
                let op = e.op_id.as_ref()?;
                keys.iter()
                    .any(|(f, o)| *f == e.from && o == op)
                    .then(|| FoundOp {
                        from: e.from.clone(),
                        op_id: op.clone(),
                        seq: e.seq,
                        hlc: e.hlc.clone(),
                    })
            })
            .collect())
    }

    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        let rooms = self.rooms.lock();
        Ok(rooms.get(room).and_then(|r| {
            r.snapshots
                .range(..=at.unwrap_or(Seq(u64::MAX)))
                .next_back()
                .map(|(s, v)| (*s, v.clone()))
        }))
    }

    async fn room_count(&self) -> StoreResult<u64> {
        Ok(self
            .rooms
            .lock()
            .values()
            .filter(|r| r.kind.is_some())
            .count() as u64)
    }

    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
        let rooms = self.rooms.lock();
        let mut all: Vec<(RoomId, RoomKind)> = rooms
            .iter()
            .filter(|(name, _)| after.as_ref().is_none_or(|a| name.as_str() > a.as_str()))
            .filter_map(|(name, r)| Some((name.clone(), r.kind?)))
            .collect();
        all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        all.truncate(limit);
        Ok(all)
    }
}

#[async_trait]
impl Archive for MemoryStore {
    /// The log is the archive here: events at or below the head (or trimmed) are left alone,
    /// the rest must continue the head (a gap is refused, as an append's).
    async fn upsert(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        events: Vec<StoredEvent>,
    ) -> StoreResult<()> {
        let mut rooms = self.rooms.lock();
        let r = rooms.entry(room.clone()).or_default();
        if r.kind.is_none() {
            r.kind = Some(kind);
            r.epoch = Some(epoch.clone());
        }
        let fresh: Vec<StoredEvent> = events.into_iter().filter(|e| e.seq.0 > r.head()).collect();
        let mut new_keys = HashSet::new();
        for (want, e) in (r.head() + 1..).zip(&fresh) {
            if e.seq.0 != want {
                return Err(StoreError::NotContiguous {
                    room: room.to_string(),
                    expected: want,
                    got: e.seq.0,
                });
            }
            if let Some(op) = &e.op_id {
                let key = (e.from.clone(), op.clone());
                if r.keys.contains(&key) || !new_keys.insert(key) {
                    return Err(StoreError::Backend(format!(
                        "duplicate op id {op} from {}",
                        e.from
                    )));
                }
            }
        }
        r.keys.extend(new_keys);
        r.events.extend(fresh);
        Ok(())
    }

    async fn watermark(&self, room: &RoomId) -> StoreResult<Option<Seq>> {
        let rooms = self.rooms.lock();
        Ok(rooms
            .get(room)
            .map(|r| r.head())
            .filter(|h| *h > 0)
            .map(Seq))
    }

    async fn trim(&self, room: &RoomId, before: Seq) -> StoreResult<()> {
        let mut rooms = self.rooms.lock();
        let Some(r) = rooms.get_mut(room) else {
            return Ok(());
        };
        // Never the head event.
        let keep_from = before.0.min(r.head()).max(r.floor + 1);
        let drop = (keep_from - 1 - r.floor) as usize;
        for e in r.events.drain(..drop) {
            if let Some(op) = e.op_id {
                r.keys.remove(&(e.from, op));
            }
        }
        r.floor += drop as u64;
        Ok(())
    }

    async fn save_snapshot(&self, room: &RoomId, seq: Seq, state: String) -> StoreResult<()> {
        let mut rooms = self.rooms.lock();
        let r = rooms
            .get_mut(room)
            .filter(|r| r.kind.is_some())
            .ok_or_else(|| StoreError::NoRoom(room.to_string()))?;
        if seq.0 > r.head() {
            return Err(StoreError::NotContiguous {
                room: room.to_string(),
                expected: r.head(),
                got: seq.0,
            });
        }
        r.snapshots.insert(seq, state);
        Ok(())
    }

    async fn prune_snapshots(&self, room: &RoomId, keep: usize) -> StoreResult<()> {
        let mut rooms = self.rooms.lock();
        if let Some(r) = rooms.get_mut(room) {
            while r.snapshots.len() > keep.max(1) {
                r.snapshots.pop_first();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ClientRegistry for MemoryStore {
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String> {
        let mut clients = self.clients.lock();
        Ok(clients
            .entry(client.clone())
            .or_insert_with(|| user.to_string())
            .clone())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
