//! Rebuilding a room Redis lost (a restart without persistence, a failover to a replica that
//! lagged) from PostgreSQL, the record. A gateway loading a room compares Redis's meta with
//! PostgreSQL's watermark: when Redis has no meta for a room PostgreSQL knows, or its head is
//! below the watermark in the same epoch (a lost tail), the room is rebuilt at the watermark.
//!
//! Its epoch stays unless acked events are really gone: the gateway knows ([`Seen`]) the
//! highest seq it acked or delivered in each room (at the ack levels `memory` and `redis`;
//! at `durable` nothing acked or delivered is above the watermark, so nothing is noted). Only
//! when that is above PostgreSQL's watermark in the watermark's epoch does the room start a
//! new epoch, its seqs resuming above everything either side knew (so no seq of the old epoch
//! that a worker may still write is reused: the archive's rows are never overwritten, and
//! clients get `recovered: false`). Nothing a client says (`since`) enters the decision.

use crate::pg::PgArchive;
use crate::{LogError, RedisLog, RoomMeta};
use concord_core::{Epoch, HlcText, RoomId, RoomKind, Seq};
use std::collections::HashMap;
use std::sync::Mutex;

/// Rooms [`Seen`] remembers at most (about 100 bytes each); past it, an arbitrary one is
/// forgotten for each new one (a loss in a forgotten room keeps its epoch).
const MAX_ROOMS: usize = 100_000;

/// What this gateway acked or delivered: the highest seq per room, with its epoch (one entry
/// per room it wrote or followed since it started, up to `MAX_ROOMS`), and each loaded room's
/// kind (what a rebuild needs when PostgreSQL never had the room).
#[derive(Default)]
pub struct Seen {
    inner: Mutex<SeenRooms>,
}

#[derive(Default)]
struct SeenRooms {
    rooms: HashMap<RoomId, (Epoch, Seq)>,
    kinds: HashMap<RoomId, RoomKind>,
}

/// Inserts into a map of at most `MAX_ROOMS` entries (an arbitrary one forgotten when full).
fn bounded_insert<V>(map: &mut HashMap<RoomId, V>, room: &RoomId, value: V) {
    if map.len() >= MAX_ROOMS && !map.contains_key(room) {
        if let Some(old) = map.keys().next().cloned() {
            map.remove(&old);
        }
    }
    map.insert(room.clone(), value);
}

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeenRooms> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `seq` of `room` in `epoch` was acked or delivered here.
    pub fn note(&self, room: &RoomId, epoch: &Epoch, seq: Seq) {
        let mut inner = self.lock();
        match inner.rooms.get_mut(room) {
            Some((e, s)) if e == epoch => *s = (*s).max(seq),
            Some(entry) => *entry = (epoch.clone(), seq),
            None => bounded_insert(&mut inner.rooms, room, (epoch.clone(), seq)),
        }
    }

    /// Notes the kind of a room this gateway loaded.
    pub fn note_kind(&self, room: &RoomId, kind: RoomKind) {
        let mut inner = self.lock();
        if inner.kinds.get(room) != Some(&kind) {
            bounded_insert(&mut inner.kinds, room, kind);
        }
    }

    /// The highest seq acked or delivered here in `room`'s `epoch`.
    pub fn get(&self, room: &RoomId, epoch: &Epoch) -> Option<Seq> {
        match self.lock().rooms.get(room) {
            Some((e, s)) if e == epoch => Some(*s),
            _ => None,
        }
    }

    /// The latest epoch of `room` seen here, its highest seq acked or delivered, and the
    /// room's kind (when it was loaded here).
    fn last(&self, room: &RoomId) -> Option<(Epoch, Seq, RoomKind)> {
        let inner = self.lock();
        let (epoch, seq) = inner.rooms.get(room)?.clone();
        Some((epoch, seq, *inner.kinds.get(room)?))
    }
}

/// Why a room could not be checked or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("reading the archive: {0}")]
    Archive(#[from] crate::pg::ArchiveError),
    #[error("rebuilding in Redis: {0}")]
    Log(#[from] LogError),
    #[error("the archive's record of the room is unreadable: {0}")]
    Record(String),
}

/// What a load found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Redis's meta stands (or PostgreSQL does not know the room).
    Kept,
    /// Another gateway rebuilt the room between this one's read of the meta and its rebuild
    /// (or Redis moved on meanwhile): Redis has the room now, read it again.
    Raced,
    /// Rebuilt at PostgreSQL's watermark, in the same epoch.
    SameEpoch { head: Seq },
    /// Acked events are gone: a new epoch whose seqs resume after `head`.
    NewEpoch { epoch: Epoch, head: Seq },
}

/// Checks `room` against PostgreSQL and rebuilds it if Redis lost it or its tail. `meta` is
/// Redis's meta as the load read it, and is left as Redis has it when the check returns.
/// `new_epoch` draws a fresh epoch.
pub async fn check(
    log: &RedisLog,
    archive: &PgArchive,
    seen: &Seen,
    room: &RoomId,
    meta: &mut Option<RoomMeta>,
    new_epoch: impl FnOnce() -> Epoch,
) -> Result<Outcome, RebuildError> {
    let Some((pg_epoch, wm)) = archive.watermark(room.as_str()).await? else {
        return unarchived(log, seen, room, meta, new_epoch).await;
    };
    let pg_epoch = Epoch(pg_epoch);
    // Another epoch in Redis (a newer one the workers have not reached, or PostgreSQL's is
    // older): Redis's stands. The same epoch at or above the watermark: nothing lost.
    let lost = |m: &Option<RoomMeta>| match m {
        Some(m) => m.epoch == pg_epoch && m.head.0 < wm,
        None => true,
    };
    if !lost(meta) {
        return Ok(Outcome::Kept);
    }
    // The meta was read before the watermark: commits that followed it may be persisted
    // now, or another gateway may have rebuilt the room meanwhile. Decide on Redis as it is
    // after the watermark was read.
    *meta = log.room_meta(room).await?;
    if !lost(meta) {
        return Ok(Outcome::Kept);
    }
    let now = meta.clone();
    let current = now.as_ref();
    let Some(row) = archive.room(room.as_str()).await? else {
        return Ok(Outcome::Kept);
    };
    let kind = match row.kind.as_str() {
        "stream" => RoomKind::Stream,
        "doc" => RoomKind::Doc,
        other => return Err(RebuildError::Record(format!("kind {other}"))),
    };
    let last = archive
        .read_events(room.as_str(), wm.saturating_sub(1), 1)
        .await?;
    let hlc = match last.first() {
        Some(e) if e.seq == wm => Some(
            HlcText::parse(&e.hlc).ok_or_else(|| RebuildError::Record(format!("hlc {}", e.hlc)))?,
        ),
        _ => None,
    };
    let known = seen.get(room, &pg_epoch).unwrap_or(Seq::ZERO);
    let redis_head = current.map_or(Seq::ZERO, |m| m.head);
    let seen_meta = current.map(|m| (&m.epoch, m.head));
    let (epoch, head) = if known.0 > wm {
        (new_epoch(), known.max(redis_head).max(Seq(wm)))
    } else {
        (pg_epoch.clone(), Seq(wm))
    };
    let done = log
        .rebuild_over(room, kind, &epoch, head, hlc.as_ref(), seen_meta)
        .await?;
    // Rebuilt here or by another gateway first: the load gets Redis's meta as it is now.
    *meta = log.room_meta(room).await?;
    if !done.rebuilt {
        // Another gateway was first (or Redis moved on meanwhile): its answer stands, and the
        // meta this load read before is stale (absent, when Redis had lost the room).
        return Ok(Outcome::Raced);
    }
    if epoch == pg_epoch {
        tracing::warn!(room = %room, head = %head, "Redis lost the room: rebuilt from PostgreSQL in its epoch");
        Ok(Outcome::SameEpoch { head })
    } else {
        tracing::warn!(
            room = %room,
            watermark = wm,
            known = %known,
            "Redis lost acked events PostgreSQL does not have: the room starts a new epoch"
        );
        Ok(Outcome::NewEpoch { epoch, head })
    }
}

/// A room PostgreSQL has no event of. When Redis lost it although this gateway acked or
/// delivered some of its events, those are gone (the watermark is 0, below them): the room
/// is rebuilt in a new epoch whose seqs resume above them. Otherwise Redis's meta stands (or
/// the room is new).
async fn unarchived(
    log: &RedisLog,
    seen: &Seen,
    room: &RoomId,
    meta: &mut Option<RoomMeta>,
    new_epoch: impl FnOnce() -> Epoch,
) -> Result<Outcome, RebuildError> {
    if meta.is_some() {
        return Ok(Outcome::Kept);
    }
    let Some((_, known, kind)) = seen.last(room).filter(|(_, seq, _)| seq.0 > 0) else {
        return Ok(Outcome::Kept);
    };
    let epoch = new_epoch();
    let done = log
        .rebuild_over(room, kind, &epoch, known, None, None)
        .await?;
    // Rebuilt here or by another gateway first: the load gets Redis's meta as it is now.
    *meta = log.room_meta(room).await?;
    if !done.rebuilt {
        return Ok(Outcome::Raced);
    }
    tracing::warn!(
        room = %room,
        known = %known,
        "Redis lost acked events of a room PostgreSQL never had: the room starts a new epoch"
    );
    Ok(Outcome::NewEpoch { epoch, head: known })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keeps_the_highest_seq_of_the_latest_epoch() {
        let seen = Seen::default();
        let room = RoomId::new("r").unwrap();
        let (e1, e2) = (Epoch("e1".into()), Epoch("e2".into()));
        seen.note(&room, &e1, Seq(5));
        seen.note(&room, &e1, Seq(3));
        assert_eq!(seen.get(&room, &e1), Some(Seq(5)));
        seen.note(&room, &e2, Seq(1));
        assert_eq!(seen.get(&room, &e1), None, "another epoch says nothing");
        assert_eq!(seen.get(&room, &e2), Some(Seq(1)));
        for n in 0..MAX_ROOMS + 10 {
            seen.note(&RoomId::new(&format!("r{n}")).unwrap(), &e1, Seq(1));
        }
        assert_eq!(seen.lock().rooms.len(), MAX_ROOMS, "bounded");
        assert_eq!(seen.last(&room), None, "no kind noted");
        seen.note_kind(&room, RoomKind::Stream);
        assert_eq!(seen.last(&room), Some((e2, Seq(1), RoomKind::Stream)));
    }
}
