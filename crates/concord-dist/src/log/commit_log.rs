//! `RedisCommitLog`: the [`CommitLog`] role played by the Redis log (`concord_create`,
//! `concord_commit`). An append's epoch, fence and expected head are `concord_commit`'s; a
//! call that timed out or lost its connection is [`StoreError::Unknown`], and the same append
//! handed over again is answered as landed when the first one did (the events' op ids, or for
//! an event without one its proposed hlc, are the idempotency keys `concord_commit` looks up).
//!
//! The log assigns the hlcs: an event keeps its proposed hlc when that is later than the
//! room's last one, else it gets the next after it (its seq and order are the append's).

use super::{CommitRequest, LogError, NewEvent, RedisLog};
use async_trait::async_trait;
use concord_core::{Epoch, RoomId, RoomKind};
use concord_server::store::{Append, CommitLog, Durability, StoreError, StoreResult};
use std::sync::Arc;

/// A [`RedisLog`] as a [`CommitLog`] whose successful appends promise `durability` (what
/// Redis is set up to keep: `Memory`, or `Fsynced` with `appendfsync always`; see
/// `gateway::AckLevel::durability`).
pub struct RedisCommitLog {
    log: Arc<RedisLog>,
    durability: Durability,
}

impl RedisCommitLog {
    pub fn new(log: Arc<RedisLog>, durability: Durability) -> Self {
        RedisCommitLog { log, durability }
    }

    pub fn log(&self) -> &Arc<RedisLog> {
        &self.log
    }
}

/// A log error as the store's: the outcomes of an append by name, the rest as backend errors.
pub fn store_error(room: &RoomId, e: LogError) -> StoreError {
    let room = room.to_string();
    match e {
        LogError::NoRoom => StoreError::NoRoom(room),
        LogError::EpochChanged { current } => StoreError::EpochChanged { room, current },
        LogError::Fenced { current } => StoreError::Fenced { room, current },
        LogError::HeadMoved { head } => StoreError::HeadMoved { room, head: head.0 },
        LogError::Unknown(why) => StoreError::Unknown(why),
        LogError::Exists { kind } => {
            StoreError::Backend(format!("room {room} exists as a {kind} room"))
        }
        other => StoreError::Backend(other.to_string()),
    }
}

/// The node part of an hlc text (`wall-counter-node`).
fn node_of(hlc: &str) -> &str {
    hlc.splitn(3, '-').nth(2).unwrap_or("")
}

#[async_trait]
impl CommitLog for RedisCommitLog {
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        self.log
            .create_room(room, kind, epoch)
            .await
            .map(|_| ())
            .map_err(|e| store_error(room, e))
    }

    async fn append(&self, room: &RoomId, append: Append) -> StoreResult<Durability> {
        append.check(room)?;
        let Some(first) = append.events.first() else {
            return Ok(self.durability);
        };
        let hlc = first.hlc.clone();
        let node = node_of(hlc.as_str()).to_string();
        let want: Vec<u64> = append.events.iter().map(|e| e.seq.0).collect();
        let req = CommitRequest {
            epoch: append.epoch,
            fence: append.fence,
            expected_head: Some(append.expected_head),
            hlc,
            node,
            events: append
                .events
                .into_iter()
                .map(|e| NewEvent {
                    key: e.op_id.is_none().then(|| e.hlc.as_str().to_string()),
                    from: e.from,
                    op_id: e.op_id,
                    data: e.data,
                    resend: false,
                })
                .collect(),
        };
        let committed = self
            .log
            .commit(room, &req)
            .await
            .map_err(|e| store_error(room, e))?;
        // Every event new (at the seqs asked for), or every one landed before (the same append
        // handed over again): anything else means some of its keys were committed by another
        // append.
        let seqs: Vec<u64> = committed.iter().map(|c| c.seq.0).collect();
        let dups = committed.iter().filter(|c| c.duplicate).count();
        if seqs == want && (dups == 0 || dups == committed.len()) {
            Ok(self.durability)
        } else {
            Err(StoreError::Backend(format!(
                "append to {room}: some of its keys were committed by another append (seqs {seqs:?})"
            )))
        }
    }
}
