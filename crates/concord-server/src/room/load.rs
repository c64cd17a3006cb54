//! Loading a room from the store for its core: the record, the idempotency keys of the newest
//! events (without bodies), the newest events that fit the window, and a doc room's document.

use super::core::{CoreConfig, Loaded, LoadedRoom};
use super::doc::{DocLimits, DocLoadError, DocSchema, DocState};
use crate::config::Config;
use crate::store::{History, StoreResult, StoredEvent};
use concord_core::{RoomId, RoomKind, Seq};
use std::sync::Arc;

/// Reads what the core needs to serve `room` (errors are part of the outcome).
pub async fn load(
    store: &dyn History,
    room: &RoomId,
    cfg: &Config,
    schema: Option<Arc<DocSchema>>,
) -> Loaded {
    let record = match store.load_room(room).await {
        Ok(Some(r)) => r,
        Ok(None) => return Loaded::Missing,
        Err(e) => return Loaded::Failed(e.to_string()),
    };
    let doc = if record.kind == RoomKind::Doc {
        let limits = DocLimits::of(cfg);
        match DocState::load(store, room, record.head, cfg.doc_window, schema, limits).await {
            Ok(d) => Some(d),
            Err(DocLoadError::Store(e)) => return Loaded::Failed(format!("document: {e}")),
            Err(DocLoadError::Corrupt(e)) => return Loaded::Corrupt(e.to_string()),
        }
    } else {
        None
    };
    // Idempotency keys come without bodies; only the events that fit the window (in count
    // and bytes) are read in full, newest first, a few at a time.
    let keep = LoadedRoom::keys_to_read(&CoreConfig::of(cfg), record.head);
    let keys = match store.recent_keys(room, keep as usize).await {
        // Only keys up to the record's head: in the distributed mode the log grows while the
        // room loads, and what comes after the head is delivered through the feed (a key
        // known twice would break the table's order).
        Ok(mut k) => {
            k.retain(|k| k.seq <= record.head);
            k
        }
        Err(e) => return Loaded::Failed(format!("keys: {e}")),
    };
    let tail = match window_tail(store, room, cfg, record.head).await {
        Ok(t) => t,
        Err(e) => return Loaded::Failed(format!("tail: {e}")),
    };
    Loaded::Room(Box::new(LoadedRoom {
        record,
        keys,
        tail,
        doc,
    }))
}

/// The newest events up to `head` that fit the window (`room_window` events and
/// `room_window_bytes` bytes of data), read backwards in small chunks so that a room of big
/// events never has more than one chunk beyond the window in memory. Stops early at a gap
/// (events removed by retention).
async fn window_tail(
    store: &dyn History,
    room: &RoomId,
    cfg: &Config,
    head: Seq,
) -> StoreResult<Vec<StoredEvent>> {
    const CHUNK: u64 = 16;
    let mut tail: Vec<StoredEvent> = Vec::new();
    let mut bytes = 0usize;
    let mut upto = head.0;
    while upto > 0 && tail.len() < cfg.room_window {
        let n = CHUNK.min(upto).min((cfg.room_window - tail.len()) as u64);
        let start = upto;
        let chunk = store.read_events(room, Seq(upto - n), n as usize).await?;
        for e in chunk.into_iter().rev().filter(|e| e.seq.0 <= start) {
            let size = e.data.get().len();
            if e.seq.0 != upto || bytes + size > cfg.room_window_bytes {
                tail.reverse();
                return Ok(tail);
            }
            bytes += size;
            upto -= 1;
            tail.push(e);
        }
        if upto != start - n {
            // A short chunk: the events before it were removed by retention.
            break;
        }
    }
    tail.reverse();
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Append, CommitLog, EventKey, FoundOp, MemoryStore, RoomRecord};
    use async_trait::async_trait;
    use concord_core::{ClientId, Epoch, HlcText, OpId};

    /// A store whose log grows between reading the record and reading the keys, as a shared
    /// room's log does while a gateway loads it.
    struct Growing {
        inner: MemoryStore,
    }

    fn event(seq: u64) -> StoredEvent {
        StoredEvent {
            seq: Seq(seq),
            hlc: HlcText::parse(&format!("{:013}-000000-n", 1_700_000_000_000 + seq)).unwrap(),
            from: ClientId::new("c").unwrap(),
            op_id: Some(OpId::new(&format!("o{seq}")).unwrap()),
            data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        }
    }

    #[async_trait]
    impl History for Growing {
        async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
            let record = self.inner.load_room(room).await?;
            let head = record.as_ref().map_or(0, |r| r.head.0);
            let append = Append::new(Epoch("e".into()), vec![event(head + 1)]);
            self.inner.append(room, append).await?;
            Ok(record)
        }
        async fn read_events(
            &self,
            r: &RoomId,
            after: Seq,
            n: usize,
        ) -> StoreResult<Vec<StoredEvent>> {
            self.inner.read_events(r, after, n).await
        }
        async fn recent_keys(&self, r: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
            self.inner.recent_keys(r, last).await
        }
        async fn room_count(&self) -> StoreResult<u64> {
            self.inner.room_count().await
        }
        async fn list_rooms(
            &self,
            after: Option<RoomId>,
            limit: usize,
        ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
            self.inner.list_rooms(after, limit).await
        }
        async fn seq_at_or_after(&self, r: &RoomId, ms: u64) -> StoreResult<Option<Seq>> {
            self.inner.seq_at_or_after(r, ms).await
        }
        async fn find_ops(
            &self,
            r: &RoomId,
            k: Vec<(ClientId, OpId)>,
        ) -> StoreResult<Vec<FoundOp>> {
            self.inner.find_ops(r, k).await
        }
        async fn load_snapshot(
            &self,
            r: &RoomId,
            at: Option<Seq>,
        ) -> StoreResult<Option<(Seq, String)>> {
            self.inner.load_snapshot(r, at).await
        }
    }

    #[tokio::test]
    async fn keys_committed_while_loading_are_left_to_the_feed() {
        let store = Growing {
            inner: MemoryStore::new(),
        };
        let room = RoomId::new("chat:growing").unwrap();
        store
            .inner
            .create_room(&room, RoomKind::Stream, &Epoch("e".into()))
            .await
            .unwrap();
        let append = Append::new(Epoch("e".into()), (1..=3).map(event).collect());
        store.inner.append(&room, append).await.unwrap();
        let Loaded::Room(loaded) = load(&store, &room, &Config::default(), None).await else {
            panic!("the room loads");
        };
        assert_eq!(loaded.record.head, Seq(3));
        let seqs: Vec<u64> = loaded.keys.iter().map(|k| k.seq.0).collect();
        assert_eq!(
            seqs.last(),
            Some(&3),
            "keys up to the head, the key of seq 4 (after it) left to the feed: {seqs:?}"
        );
        assert_eq!(loaded.tail.last().map(|e| e.seq), Some(Seq(3)));
    }
}
