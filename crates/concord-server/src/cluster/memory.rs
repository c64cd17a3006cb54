//! `MemoryCommitPoint`: the commit point and feeds of shared stream rooms over one in-memory
//! store, for several servers of one process (tests of the gateways' logic; nothing survives
//! the process). It can lose notifications on purpose, so that gap filling is exercised: a lost
//! notification reaches the subscribers as [`FeedItem::Lost`], as a dropped Redis subscription
//! does (pub/sub loses messages only with the connection, and the subscriber learns of it when
//! it resubscribes).
//!
//! Doc rooms: leases on tokio's clock, a fence per room, the owner's fenced commit with its
//! expected head, and a per-gateway inbox for forwarded lists. Tests can cut a gateway off
//! (every call it makes fails as if it had died) or freeze its lease (its renewals stop
//! reaching the commit point while it goes on believing it owns its rooms: a zombie).

use super::{CommitPoint, Feed, FeedItem, ForwardAnswer, Forwarded, ForwardedList, Inbox};
use crate::room::core::{CommitFailure, CommitResult, NewEvent, RoomError, RosterDelta};
use crate::store::{Append, CommitLog, History, MemoryStore, RoomRecord, StoredEvent};
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, HlcTimestamp, RoomId, Seq};
use concord_protocol::outbound::MemberInfo;
use concord_protocol::ErrorCode;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// Notifications a feed holds for a slow subscriber before it reports [`FeedItem::Lost`].
const FEED_CAPACITY: usize = 1024;

pub struct MemoryCommitPoint {
    store: Arc<MemoryStore>,
    /// Commits run one at a time (the Redis function is atomic too).
    inner: Mutex<Inner>,
    /// Drop every n-th notification (0: none).
    lose_every: u64,
    published: AtomicU64,
    /// Each gateway's inbox of forwarded lists.
    inboxes: parking_lot::Mutex<HashMap<String, mpsc::UnboundedSender<Forwarded>>>,
    /// Owner commits refused as fenced.
    fenced: AtomicU64,
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
    /// Gateways whose every call fails (`cut_off`).
    cut: HashSet<String>,
    /// Gateways whose lease renewals do not reach the commit point (`freeze_lease`).
    frozen: HashSet<String>,
    /// Gateways whose feeds get no commit notifications (`deafen`).
    deaf: HashSet<String>,
    /// Gateways that never get the owner's answers to their forwards (`lose_answers`).
    answerless: HashSet<String>,
    /// Doc rooms' leases: holder and expiry.
    leases: HashMap<RoomId, (String, Instant)>,
    /// Doc rooms' fences (incremented by every acquisition).
    fences: HashMap<RoomId, u64>,
    /// The fence each gateway last acquired each room's lease with.
    granted: HashMap<(RoomId, String), u64>,
}

/// One server's handle on a [`MemoryCommitPoint`]: its gateway id and inbox.
pub struct MemoryGateway {
    point: Arc<MemoryCommitPoint>,
    id: String,
    inbox: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Forwarded>>>,
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
            inboxes: Default::default(),
            fenced: AtomicU64::new(0),
        }
    }

    /// The commit point as gateway `id` sees it (one per server).
    pub fn gateway(self: &Arc<Self>, id: &str) -> Arc<MemoryGateway> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes.lock().insert(id.to_string(), tx);
        Arc::new(MemoryGateway {
            point: self.clone(),
            id: id.to_string(),
            inbox: parking_lot::Mutex::new(Some(rx)),
        })
    }

    /// Gateway `id` dies without a word: its heartbeat lapses.
    pub async fn gateway_down(&self, id: &str) {
        self.inner.lock().down.insert(id.to_string());
    }

    /// Gateway `id` is cut off (as if its process died): its heartbeat lapses, every call it
    /// makes fails with an unknown outcome, lists forwarded to it get no answer; its leases
    /// lapse on their own.
    pub async fn cut_off(&self, id: &str) {
        let mut inner = self.inner.lock();
        inner.down.insert(id.to_string());
        inner.cut.insert(id.to_string());
    }

    /// Gateway `id`'s lease renewals stop reaching the commit point, while it is told they
    /// succeeded (a process paused past its lease): its leases lapse.
    pub async fn freeze_lease(&self, id: &str) {
        self.inner.lock().frozen.insert(id.to_string());
    }

    /// Gateway `id`'s feeds stop hearing of commits, without learning that they missed any
    /// (a gateway whose notifications lag far behind): its replicas stay where they are until
    /// something makes them read the log.
    pub async fn deafen(&self, id: &str) {
        self.inner.lock().deaf.insert(id.to_string());
    }

    /// The owner's answers to gateway `id`'s forwarded lists are lost on the way back (the
    /// lists are served, committed or not): its forwards end unknown and are forwarded again.
    pub async fn lose_answers(&self, id: &str, lose: bool) {
        let mut inner = self.inner.lock();
        if lose {
            inner.answerless.insert(id.to_string());
        } else {
            inner.answerless.remove(id);
        }
    }

    /// How many owner commits were refused as fenced.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The holder of `room`'s lease now.
    pub async fn owner_of(&self, room: &RoomId) -> Option<String> {
        let inner = self.inner.lock();
        live_holder(&inner, room)
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

/// The holder of a lease that has not expired.
/// A memory store's answer, which is there at the first poll: the commit point's state is
/// held in a plain mutex that no `.await` may span (an async mutex handed to a task that is
/// not polling — an owner renewing its lease while its own commit waits for the lock — would
/// deadlock).
fn now<T>(call: impl std::future::Future<Output = T>) -> T {
    call.now_or_never()
        .expect("the memory store answers without waiting")
}

fn live_holder(inner: &Inner, room: &RoomId) -> Option<String> {
    inner
        .leases
        .get(room)
        .filter(|(_, until)| Instant::now() < *until)
        .map(|(gw, _)| gw.clone())
}

fn cut_off_error() -> String {
    "the gateway is cut off".into()
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
        if self.is_cut().await {
            return Err(CommitFailure::Unknown(cut_off_error()));
        }
        self.point.commit(room, epoch, events).await
    }

    async fn acquire_lease(&self, room: &RoomId, lease: Duration) -> Result<Option<u64>, String> {
        let mut inner = self.point.inner.lock();
        if inner.cut.contains(&self.id) {
            return Err(cut_off_error());
        }
        let key = (room.clone(), self.id.clone());
        if inner.frozen.contains(&self.id) {
            // The call never arrives; the caller takes its lease as renewed.
            return Ok(inner.granted.get(&key).copied());
        }
        let fence = inner.fences.get(room).copied().unwrap_or(0);
        match live_holder(&inner, room) {
            Some(gw) if gw == self.id => {
                inner
                    .leases
                    .insert(room.clone(), (gw, Instant::now() + lease));
                Ok(Some(fence))
            }
            Some(_) => Ok(None),
            None => {
                let fence = fence + 1;
                inner.fences.insert(room.clone(), fence);
                inner.granted.insert(key, fence);
                inner
                    .leases
                    .insert(room.clone(), (self.id.clone(), Instant::now() + lease));
                Ok(Some(fence))
            }
        }
    }

    async fn release_lease(&self, room: &RoomId) -> Result<(), String> {
        let mut inner = self.point.inner.lock();
        if inner.cut.contains(&self.id) {
            return Err(cut_off_error());
        }
        if inner.leases.get(room).is_some_and(|(gw, _)| *gw == self.id) {
            inner.leases.remove(room);
        }
        Ok(())
    }

    async fn lease_holder(&self, room: &RoomId) -> Result<Option<String>, String> {
        let inner = self.point.inner.lock();
        if inner.cut.contains(&self.id) {
            return Err(cut_off_error());
        }
        Ok(live_holder(&inner, room))
    }

    async fn commit_doc(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        fence: u64,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        if self.is_cut().await {
            return Err(CommitFailure::Unknown(cut_off_error()));
        }
        self.point.commit_doc(room, epoch, fence, events).await
    }

    async fn forward(
        &self,
        owner: &str,
        room: &RoomId,
        list: ForwardedList,
        timeout: Duration,
    ) -> ForwardAnswer {
        let unknown = |why: &str| Err(CommitFailure::Unknown(why.to_string()));
        {
            let inner = self.point.inner.lock();
            if inner.cut.contains(&self.id) || inner.cut.contains(owner) {
                return unknown("the link to the owner is down");
            }
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.point.inboxes.lock().get(owner).map(|tx| {
            tx.send(Forwarded {
                room: room.clone(),
                list,
                reply,
            })
            .is_ok()
        });
        if sent != Some(true) {
            return unknown("the owner does not listen");
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(_)) if self.point.inner.lock().answerless.contains(&self.id) => {
                unknown("the answer was lost")
            }
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => unknown("the owner dropped the list"),
            Err(_) => unknown("the owner did not answer in time"),
        }
    }

    fn take_inbox(&self) -> Option<Inbox> {
        let rx = self.inbox.lock().take()?;
        Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        })))
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        let feed = self.point.subscribe(room).await;
        let (point, id) = (self.point.clone(), self.id.clone());
        Box::pin(feed.filter(move |item| {
            let deaf =
                matches!(item, FeedItem::Events { .. }) && point.inner.lock().deaf.contains(&id);
            std::future::ready(!deaf)
        }))
    }

    fn gateway_id(&self) -> &str {
        &self.id
    }

    async fn tell_roster(&self, room: &RoomId, delta: &RosterDelta) -> Result<(), String> {
        let mut inner = self.point.inner.lock();
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
        let inner = self.point.inner.lock();
        let Some(all) = inner.rosters.get(room) else {
            return Ok(Vec::new());
        };
        Ok(all
            .iter()
            .filter(|(gw, _)| **gw != self.id && !inner.down.contains(*gw))
            .map(|(gw, d)| (gw.clone(), d.clone()))
            .collect())
    }

    async fn take_seat(
        &self,
        room: &RoomId,
        info: &Arc<MemberInfo>,
        limit: usize,
    ) -> Result<bool, String> {
        if self.is_cut().await {
            return Err(cut_off_error());
        }
        let mut inner = self.point.inner.lock();
        let all = inner.rosters.entry(room.clone()).or_default();
        let client = ClientId::new(&info.client_id).map_err(|e| e.to_string())?;
        let mut clients: std::collections::BTreeSet<&ClientId> = std::collections::BTreeSet::new();
        for stored in all.values() {
            clients.extend(stored.members.keys());
        }
        if !clients.contains(&client) && clients.len() >= limit {
            return Ok(false);
        }
        all.entry(self.id.clone())
            .or_default()
            .members
            .insert(client, Some(info.clone()));
        Ok(true)
    }

    async fn gone_gateways(&self, room: &RoomId, gateways: &[String]) -> Vec<String> {
        let mut inner = self.point.inner.lock();
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

impl MemoryGateway {
    async fn is_cut(&self) -> bool {
        self.point.inner.lock().cut.contains(&self.id)
    }
}

impl MemoryCommitPoint {
    /// The room's record, if the room exists in `epoch` (else the commit is `Moved`).
    fn record_in(&self, room: &RoomId, epoch: &Epoch) -> Result<RoomRecord, CommitFailure> {
        let record = match now(self.store.load_room(room)) {
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
        Ok(record)
    }

    /// The owner's commit of a doc room: the fence, then the keys (all duplicates: their
    /// original seqs, without the head check), then the expected head; the events keep the
    /// seqs the owner gave them.
    async fn commit_doc(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        fence: u64,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        let mut inner = self.inner.lock();
        let record = self.record_in(room, epoch)?;
        let current = inner.fences.get(room).copied().unwrap_or(0);
        if fence != current {
            self.fenced.fetch_add(1, Ordering::Relaxed);
            return Err(CommitFailure::Fenced(format!("the fence is {current}")));
        }
        let keys: Vec<_> = events
            .iter()
            .filter_map(|e| Some((e.from.clone(), e.op_id.clone()?)))
            .collect();
        let found: HashMap<_, _> = now(self.store.find_ops(room, keys))
            .map_err(internal)?
            .into_iter()
            .map(|f| ((f.from, f.op_id), (f.seq, f.hlc)))
            .collect();
        let known = |e: &StoredEvent| {
            e.op_id
                .as_ref()
                .and_then(|id| found.get(&(e.from.clone(), id.clone())).cloned())
        };
        if !events.is_empty() && events.iter().all(|e| known(e).is_some()) {
            return Ok(events
                .iter()
                .map(|e| {
                    let (seq, hlc) = known(e).expect("checked");
                    CommitResult {
                        seq,
                        hlc,
                        duplicate: true,
                        dropped: Vec::new(),
                    }
                })
                .collect());
        }
        let expected = events.first().map_or(record.head, |e| Seq(e.seq.0 - 1));
        if expected != record.head || events.iter().any(|e| known(e).is_some()) {
            return Err(CommitFailure::HeadMoved(record.head));
        }
        let mut last = record.head_hlc;
        let mut stored = Vec::with_capacity(events.len());
        for e in events {
            let hlc = next_hlc(last.as_ref(), &e.hlc);
            last = Some(hlc.clone());
            stored.push(StoredEvent { hlc, ..e });
        }
        let append = Append::new(record.epoch.clone(), stored.clone());
        now(self.store.append(room, append)).map_err(internal)?;
        let results = stored
            .iter()
            .map(|e| CommitResult {
                seq: e.seq,
                hlc: e.hlc.clone(),
                duplicate: false,
                dropped: Vec::new(),
            })
            .collect();
        self.publish(&mut inner, room, record.epoch, stored);
        Ok(results)
    }

    async fn commit(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        events: Vec<NewEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        let mut inner = self.inner.lock();
        let record = self.record_in(room, epoch)?;
        let keys: Vec<_> = events
            .iter()
            .filter_map(|e| Some((e.from.clone(), e.op_id.clone()?)))
            .collect();
        let mut found: HashMap<_, _> = now(self.store.find_ops(room, keys))
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
                    dropped: Vec::new(),
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
                dropped: Vec::new(),
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
        let append = Append::new(record.epoch.clone(), stored.clone());
        now(self.store.append(room, append)).map_err(internal)?;
        inner.nonces.extend(nonces);
        self.publish(&mut inner, room, record.epoch, stored);
        Ok(results)
    }

    /// Notifies a commit's events (every `lose_every`-th notification is lost).
    fn publish(&self, inner: &mut Inner, room: &RoomId, epoch: Epoch, events: Vec<StoredEvent>) {
        let n = self.published.fetch_add(1, Ordering::Relaxed) + 1;
        let item = if self.lose_every == 0 || !n.is_multiple_of(self.lose_every) {
            FeedItem::Events { epoch, events }
        } else {
            FeedItem::Lost
        };
        // Nobody listening is fine: a subscriber reads the head when it starts.
        let _ = Self::feed(inner, room).send(item);
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        let rx = Self::feed(&mut self.inner.lock(), room).subscribe();
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
