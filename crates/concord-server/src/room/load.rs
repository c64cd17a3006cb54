//! Loading a room from the store for its core: the record, the idempotency keys of the newest
//! events (without bodies), the newest events that fit the window, and a doc room's document.

use super::core::{CoreConfig, Loaded, LoadedRoom};
use super::doc::{DocLimits, DocLoadError, DocSchema, DocState};
use crate::config::Config;
use crate::store::{Store, StoreResult, StoredEvent};
use concord_core::{RoomId, RoomKind, Seq};
use std::sync::Arc;

/// Reads what the core needs to serve `room` (errors are part of the outcome).
pub async fn load(
    store: &dyn Store,
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
        Ok(k) => k,
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
    store: &dyn Store,
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
