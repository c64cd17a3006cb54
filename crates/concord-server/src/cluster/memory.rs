//! `MemoryCommitPoint`: the commit point and feeds of shared stream rooms over one in-memory
//! store, for several servers of one process (tests of the gateways' logic; nothing survives
//! the process). It can lose notifications on purpose, so that gap filling is exercised: a lost
//! notification reaches the subscribers as [`FeedItem::Lost`], as a dropped Redis subscription
//! does (pub/sub loses messages only with the connection, and the subscriber learns of it when
//! it resubscribes).

use super::{CommitPoint, Feed, FeedItem};
use crate::room::core::{CommitFailure, CommitResult, NewEvent, RoomError, RosterDelta};
use crate::store::{MemoryStore, Store, StoredEvent};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, HlcTimestamp, RoomId, Seq};
use concord_protocol::ErrorCode;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex};

/// Notifications a feed holds for a slow subscriber before it reports [`FeedItem::Lost`].
const FEED_CAPACITY: usize = 1024;

pub struct MemoryCommitPoint {
    store: Arc<MemoryStore>,
    /// Commits run one at a time (the Redis function is atomic too).
    inner: Mutex<Inner>,
    /// Drop every n-th notification (0: none).
    lose_every: u64,
    published: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Keys of writes without an op id: (room, client, proposed hlc) → (seq, hlc).
    nonces: HashMap<(RoomId, ClientId, HlcText), (Seq, HlcText)>,
    feeds: HashMap<RoomId, broadcast::Sender<FeedItem>>,
    /// Each room's stored roster: per gateway, its present clients and their presence.
    rosters: HashMap<RoomId, BTreeMap<String, RosterDelta>>,
    /// Gateways whose heartbeat lapsed (`gateway_down`).
    down: HashSet<String>,
}

/// One server's handle on a [`MemoryCommitPoint`]: its gateway id.
pub struct MemoryGateway {
    point: Arc<MemoryCommitPoint>,
    id: String,
}

impl MemoryCommitPoint {
    pub fn new(store: Arc<MemoryStore>) -> Self {
        Self::lossy(store, 0)
    }

    /// A commit point whose feeds lose every `n`-th notification (`0`: none), telling the
    /// subscribers that they lost one.
    pub fn lossy(store: Arc<MemoryStore>, n: u64) -> Self {
        MemoryCommitPoint {
            store,
            inner: Mutex::new(Inner::default()),
            lose_every: n,
            published: AtomicU64::new(0),
        }
    }

    /// The commit point as gateway `id` sees it (one per server).
    pub fn gateway(self: &Arc<Self>, id: &str) -> Arc<MemoryGateway> {
        Arc::new(MemoryGateway {
            point: self.clone(),
            id: id.to_string(),
        })
    }

    /// Gateway `id` dies without a word: its heartbeat lapses.
    pub async fn gateway_down(&self, id: &str) {
        self.inner.lock().await.down.insert(id.to_string());
    }

    fn feed(inner: &mut Inner, room: &RoomId) -> broadcast::Sender<FeedItem> {
        inner
            .feeds
            .entry(room.clone())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .clone()
    }
}

/// The hlc of the next event: `proposed`, or just after `last` when that is not later.
pub fn next_hlc(last: Option<&HlcText>, proposed: &HlcText) -> HlcText {
    let p = proposed.timestamp();
    let Some(last) = last.map(HlcText::timestamp) else {
        return proposed.clone();
    };
    if (p.wall_ms, p.logical) > (last.wall_ms, last.logical) {
        return proposed.clone();
    }
    let (wall_ms, logical) = if last.logical >= 999_999 {
        (last.wall_ms + 1, 0)
    } else {
        (last.wall_ms, last.logical + 1)
    };
    HlcText::from(&HlcTimestamp {
        wall_ms,
        logical,
        node: p.node,
    })
}

fn internal(e: impl std::fmt::Display) -> CommitFailure {
    CommitFailure::Refused(RoomError::new(ErrorCode::Internal, e.to_string()))
}

/// Folds a delta into a gateway's stored roster (present clients and their presence).
fn fold(stored: &mut RosterDelta, delta: &RosterDelta) {
    for (client, change) in &delta.members {
        match change {
            Some(info) => {
                stored.members.insert(client.clone(), Some(info.clone()));
            }
            None => {
                stored.members.remove(client);
                stored.presence.remove(client);
            }
        }
    }
    for (client, value) in &delta.presence {
        match value {
            Some(v) => {
                stored.presence.insert(client.clone(), Some(v.clone()));
            }
            None => {
                stored.presence.remove(client);
            }
        }
    }
}

#[async_trait]
impl CommitPoint for MemoryGateway {
    async fn commit(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        events: Vec<NewEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        self.point.commit(room, epoch, events).await
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        self.point.subscribe(room).await
    }

    fn gateway_id(&self) -> &str {
        &self.id
    }

    async fn tell_roster(&self, room: &RoomId, delta: &RosterDelta) -> Result<(), String> {
        let mut inner = self.point.inner.lock().await;
        let stored = inner
            .rosters
            .entry(room.clone())
            .or_default()
            .entry(self.id.clone())
            .or_default();
        fold(stored, delta);
        let item = FeedItem::Roster {
            gw: self.id.clone(),
            delta: delta.clone(),
        };
        let _ = MemoryCommitPoint::feed(&mut inner, room).send(item);
        Ok(())
    }

    async fn load_roster(&self, room: &RoomId) -> Result<Vec<(String, RosterDelta)>, String> {
        let inner = self.point.inner.lock().await;
        let Some(all) = inner.rosters.get(room) else {
            return Ok(Vec::new());
        };
        Ok(all
            .iter()
            .filter(|(gw, _)| **gw != self.id && !inner.down.contains(*gw))
            .map(|(gw, d)| (gw.clone(), d.clone()))
            .collect())
    }

    async fn gone_gateways(&self, room: &RoomId, gateways: &[String]) -> Vec<String> {
        let mut inner = self.point.inner.lock().await;
        let gone: Vec<String> = gateways
            .iter()
            .filter(|g| inner.down.contains(*g))
            .cloned()
            .collect();
        if let Some(all) = inner.rosters.get_mut(room) {
            for g in &gone {
                all.remove(g);
            }
        }
        gone
    }
}

impl MemoryCommitPoint {
    async fn commit(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        events: Vec<NewEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        let mut inner = self.inner.lock().await;
        let record = match self.store.load_room(room).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(CommitFailure::Moved("the room does not exist".into())),
            Err(e) => return Err(internal(e)),
        };
        if &record.epoch != epoch {
            return Err(CommitFailure::Moved(format!(
                "the room is in epoch {}",
                record.epoch
            )));
        }
        let keys: Vec<_> = events
            .iter()
            .filter_map(|e| Some((e.from.clone(), e.op_id.clone()?)))
            .collect();
        let mut found: HashMap<_, _> = self
            .store
            .find_ops(room, keys)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|f| ((f.from, f.op_id), (f.seq, f.hlc)))
            .collect();
        let (mut head, mut last) = (record.head, record.head_hlc);
        let mut results = Vec::with_capacity(events.len());
        let mut stored: Vec<StoredEvent> = Vec::new();
        let mut nonces = Vec::new();
        for e in events {
            let nonce = (room.clone(), e.from.clone(), e.proposed.clone());
            let known = match &e.op_id {
                Some(id) => found.get(&(e.from.clone(), id.clone())).cloned(),
                None => inner.nonces.get(&nonce).cloned(),
            };
            if let Some((seq, hlc)) = known {
                results.push(CommitResult {
                    seq,
                    hlc,
                    duplicate: true,
                });
                continue;
            }
            head = head.next();
            let hlc = next_hlc(last.as_ref(), &e.proposed);
            last = Some(hlc.clone());
            match &e.op_id {
                Some(id) => {
                    found.insert((e.from.clone(), id.clone()), (head, hlc.clone()));
                }
                None => nonces.push((nonce, (head, hlc.clone()))),
            }
            results.push(CommitResult {
                seq: head,
                hlc: hlc.clone(),
                duplicate: false,
            });
            stored.push(StoredEvent {
                seq: head,
                hlc,
                from: e.from,
                op_id: e.op_id,
                data: e.data,
            });
        }
        if stored.is_empty() {
            return Ok(results);
        }
        self.store
            .append(room, stored.clone())
            .await
            .map_err(internal)?;
        inner.nonces.extend(nonces);
        let n = self.published.fetch_add(1, Ordering::Relaxed) + 1;
        let item = if self.lose_every == 0 || !n.is_multiple_of(self.lose_every) {
            FeedItem::Events {
                epoch: record.epoch,
                events: stored,
            }
        } else {
            FeedItem::Lost
        };
        // Nobody listening is fine: a subscriber reads the head when it starts.
        let _ = Self::feed(&mut inner, room).send(item);
        Ok(results)
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        let rx = Self::feed(&mut *self.inner.lock().await, room).subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(item) => Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((FeedItem::Lost, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(s: &str) -> HlcText {
        HlcText::parse(s).expect("an hlc")
    }

    #[test]
    fn a_later_proposal_is_taken_as_it_is() {
        let last = hlc("0000000001000-000005-a");
        assert_eq!(
            next_hlc(Some(&last), &hlc("0000000001000-000006-b")).as_str(),
            "0000000001000-000006-b"
        );
        assert_eq!(
            next_hlc(None, &hlc("0000000000001-000000-b")).as_str(),
            "0000000000001-000000-b"
        );
    }

    #[test]
    fn an_earlier_or_equal_proposal_follows_the_last() {
        let last = hlc("0000000001000-000005-a");
        assert_eq!(
            next_hlc(Some(&last), &hlc("0000000000900-000009-b")).as_str(),
            "0000000001000-000006-b"
        );
        assert_eq!(
            next_hlc(Some(&last), &hlc("0000000001000-000005-b")).as_str(),
            "0000000001000-000006-b"
        );
    }

    #[test]
    fn the_logical_counter_overflows_into_the_next_millisecond() {
        let last = hlc("0000000001000-999999-a");
        assert_eq!(
            next_hlc(Some(&last), &hlc("0000000000001-000000-b")).as_str(),
            "0000000001001-000000-b"
        );
    }
}
