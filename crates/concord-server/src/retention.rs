//! Retention: a background sweep that deletes the old events of rooms matched by a policy
//! (`max_events`, `max_age`), never a room's head event; doc rooms are compacted (ops before a
//! snapshot, and outside the rebase window, are deleted; the snapshot holds their effect).

use crate::config::RetentionPolicy;
use crate::context::Shared;
use crate::metrics::Limit;
use crate::store::StoreResult;
use concord_core::{RoomId, RoomKind, Seq};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Rooms listed per store read during a sweep.
const PAGE: usize = 500;
/// Events deleted per store write: the writer thread is shared by every room's commits.
const TRIM_STEP: u64 = 1_000;

/// Sweeps every `retention_interval` until `shutdown`; also forgets idle per-user buckets.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let interval = shared.config.retention_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        shared.room_create_per_user.forget_idle();
        if shared.config.retention.is_empty() {
            continue;
        }
        match sweep(&shared, &shutdown).await {
            Ok(0) => {}
            Ok(rooms) => tracing::info!(rooms, "retention trimmed old events"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next interval"),
        }
    }
}

/// One pass over every room; returns how many rooms were trimmed.
pub async fn sweep(shared: &Shared, shutdown: &CancellationToken) -> StoreResult<u64> {
    let store = &shared.store;
    let mut after: Option<RoomId> = None;
    let mut trimmed = 0;
    loop {
        let page = store.list_rooms(after.clone(), PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(trimmed);
        };
        after = Some(last.clone());
        for (room, kind) in page {
            if shutdown.is_cancelled() {
                return Ok(trimmed);
            }
            let Some(policy) = shared.retention_for(&room) else {
                continue;
            };
            let before = trim_point(shared, &room, kind, policy).await?;
            if before.0 <= 1 {
                continue;
            }
            // The floor: the first event still stored.
            let floor = store
                .read_events(&room, Seq::ZERO, 1)
                .await?
                .first()
                .map(|e| e.seq.0)
                .unwrap_or(before.0);
            if floor >= before.0 {
                continue;
            }
            let mut upto = floor;
            while upto < before.0 {
                upto = (upto + TRIM_STEP).min(before.0);
                store.trim(&room, Seq(upto)).await?;
            }
            shared.metrics.limit(Limit::Retention);
            tracing::debug!(room = %room, before = before.0, "retention trimmed");
            trimmed += 1;
        }
    }
}

/// The seq before which `policy` lets the room's events go (1: keep everything). Never past the
/// head; for a doc room, never past its latest snapshot at or before that point (the snapshot
/// holds the effect of the ops it deletes) nor into the rebase window.
async fn trim_point(
    shared: &Shared,
    room: &RoomId,
    kind: RoomKind,
    policy: &RetentionPolicy,
) -> StoreResult<Seq> {
    let store = &shared.store;
    let Some(record) = store.load_room(room).await? else {
        return Ok(Seq(1));
    };
    let head = record.head.0;
    let mut before = 1;
    if let Some(max) = policy.max_events {
        before = before.max((head + 1).saturating_sub(max));
    }
    if let Some(age) = policy.max_age {
        let cutoff_ms = shared.clock.now_ms().saturating_sub(age.as_millis() as u64);
        let first_young = store.seq_at_or_after(room, cutoff_ms).await?;
        before = before.max(first_young.map(|s| s.0).unwrap_or(head));
    }
    before = before.min(head);
    if kind == RoomKind::Doc && before > 1 {
        let window = shared.config.doc_window as u64;
        before = before.min((head + 1).saturating_sub(window));
        before = match store.load_snapshot(room, Some(Seq(before - 1))).await? {
            Some((snapshot, _)) => before.min(snapshot.0 + 1),
            None => 1,
        };
    }
    Ok(Seq(before.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::store::{Append, MemoryStore, Store, StoredEvent};
    use concord_core::{Epoch, ManualClock};
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn ev(seq: u64) -> StoredEvent {
        StoredEvent {
            seq: Seq(seq),
            // One event per second of wall time.
            hlc: concord_core::HlcText::parse(&format!("{:013}-000000-n", seq * 1000)).unwrap(),
            from: concord_core::ClientId::new("c").unwrap(),
            op_id: Some(concord_core::OpId::new(&format!("m{seq}")).unwrap()),
            data: RawValue::from_string("[]".into()).unwrap(),
        }
    }

    fn policy(pattern: &str, max_events: Option<u64>, max_age: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            pattern: pattern.into(),
            max_events,
            max_age: max_age.map(Duration::from_secs),
        }
    }

    async fn room_with(store: &dyn Store, name: &str, kind: RoomKind, n: u64) -> RoomId {
        let room = RoomId::new(name).unwrap();
        store
            .create_room(&room, kind, &Epoch("e".into()))
            .await
            .unwrap();
        let append = Append::new(Epoch("e".into()), (1..=n).map(ev).collect());
        store.append(&room, append).await.unwrap();
        room
    }

    async fn seqs(store: &dyn Store, room: &RoomId) -> Vec<u64> {
        let evs = store.read_events(room, Seq::ZERO, 10_000).await.unwrap();
        evs.iter().map(|e| e.seq.0).collect()
    }

    #[tokio::test]
    async fn sweeps_by_count_and_age_keep_the_head_and_respect_doc_snapshots() {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(20_500);
        let config = Config {
            retention: vec![
                policy("chat:*", Some(5), None),
                policy("log:*", None, Some(5)),
                policy("old:*", None, Some(1)),
                policy("doc:*", Some(1), None),
            ],
            doc_window: 3,
            ..Config::default()
        };
        let shared = Shared::new(
            config,
            store.clone(),
            Metrics::new(),
            crate::clock::Time::of(Arc::new(clock.clone())),
        );
        let s: &dyn Store = store.as_ref();
        let chat = room_with(s, "chat:a", RoomKind::Stream, 20).await;
        let log = room_with(s, "log:a", RoomKind::Stream, 20).await;
        let old = room_with(s, "old:a", RoomKind::Stream, 3).await;
        let doc = room_with(s, "doc:a", RoomKind::Doc, 30).await;
        let kept = room_with(s, "other", RoomKind::Stream, 20).await;
        s.save_snapshot(&doc, Seq(10), "{}".into()).await.unwrap();
        s.save_snapshot(&doc, Seq(25), "{}".into()).await.unwrap();
        s.save_snapshot(&doc, Seq(29), "{}".into()).await.unwrap();
        let trimmed = sweep(&shared, &CancellationToken::new()).await.unwrap();
        assert_eq!(trimmed, 4);
        assert_eq!(seqs(s, &chat).await, (16..=20).collect::<Vec<_>>());
        // 20.5 s − 5 s: events from 15.5 s on (seq 16) stay.
        assert_eq!(seqs(s, &log).await, (16..=20).collect::<Vec<_>>());
        // Every event is too old: the head survives.
        assert_eq!(seqs(s, &old).await, [3]);
        // Doc: the rebase window (3) ends the cut at 28, the last snapshot before it is at 25.
        assert_eq!(seqs(s, &doc).await, (26..=30).collect::<Vec<_>>());
        assert_eq!(seqs(s, &kept).await.len(), 20);
        // A second sweep finds nothing to do.
        assert_eq!(sweep(&shared, &CancellationToken::new()).await.unwrap(), 0);
        clock.advance(2_000);
        assert_eq!(sweep(&shared, &CancellationToken::new()).await.unwrap(), 1);
        assert_eq!(seqs(s, &log).await, (18..=20).collect::<Vec<_>>());
    }
}
