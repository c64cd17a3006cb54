//! The room actor: the single sequencer of one room — idempotency, seq + hlc assignment,
//! group-committed appends, then acks and fan-out in seq order.
//!
//! Publishes are pipelined: while one batch is being committed by the store, the next one is
//! sequenced. Nothing is acked or broadcast before the store reports it durable, and batches
//! complete in the order they were submitted, so every member sees seq order with no gaps.

use super::members::Members;
use super::msg::{Acked, Publish, RoomError, RoomMsg, Waiter};
use super::registry::Registry;
use crate::context::{RoomStats, Shared};
use crate::limiter::Bucket;
use crate::outbound::ConnHandle;
use crate::store::{StoreResult, StoredEvent};
use axum::extract::ws::Utf8Bytes;
use concord_core::{
    IdemKey, IdempotencyTable, Lookup, RoomId, RoomKind, Seq, Sequencer, SinceCheck,
};
use concord_protocol::{outbound as wire, ErrorCode, Since};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

const MAILBOX_BATCH: usize = 256;

/// Ops found in the store by idempotency key: (from, op id) → (seq, hlc).
type Found = HashMap<(String, String), (Seq, Arc<str>)>;

/// A committed event, encoded once and shared by every member.
struct Committed {
    seq: Seq,
    frame: Utf8Bytes,
}

struct Live {
    kind: RoomKind,
    seqr: Sequencer,
    window: VecDeque<Arc<Committed>>,
    idem: IdempotencyTable<(Seq, Arc<str>)>,
    /// Retries of ops still in flight: answered once their seq commits.
    waiting: Vec<(Seq, Arc<str>, Waiter)>,
}

enum State {
    /// The room does not exist (yet).
    Missing,
    Live(Box<Live>),
    /// Loading failed or a commit failed: reload before serving anything.
    Stale,
}

/// A batch handed to the store, with everything to do once it is durable.
struct InFlight {
    events: Vec<Arc<Committed>>,
    acks: Vec<(Seq, Arc<str>, Waiter)>,
}

pub(crate) struct RoomActor {
    room: RoomId,
    generation: u64,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    rx: UnboundedReceiver<RoomMsg>,
    state: State,
    members: Members,
    /// Publishes into this room from all senders together.
    rate: Bucket,
    stats: Arc<RoomStats>,
    inflight: VecDeque<InFlight>,
    commits: FuturesOrdered<BoxFuture<'static, StoreResult<()>>>,
}

impl RoomActor {
    pub(crate) fn new(
        room: RoomId,
        generation: u64,
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        rx: UnboundedReceiver<RoomMsg>,
    ) -> Self {
        let stats = Arc::new(RoomStats::default());
        shared.room_stats.lock().insert(room.clone(), stats.clone());
        RoomActor {
            members: Members::new(shared.config.presence_interval),
            rate: Bucket::new(shared.config.rate_publish_per_room),
            stats,
            room,
            generation,
            shared,
            registry,
            rx,
            state: State::Stale,
            inflight: VecDeque::new(),
            commits: FuturesOrdered::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        self.shared.metrics.rooms_active.inc();
        self.reload().await;
        let mut buf = Vec::with_capacity(MAILBOX_BATCH);
        let idle = self.shared.config.room_idle_unload;
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        loop {
            let idle_now = self.is_idle();
            let flush_at = self.members.flush_at;
            tokio::select! {
                biased;
                Some(result) = self.commits.next(), if !self.commits.is_empty() => {
                    self.on_commit(result).await;
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    self.members.flush_presence(&self.room);
                }
                n = self.rx.recv_many(&mut buf, MAILBOX_BATCH) => {
                    if n == 0 {
                        // The registry is gone (shutdown): finish what is in flight.
                        while let Some(result) = self.commits.next().await {
                            self.on_commit(result).await;
                        }
                        break;
                    }
                    self.handle(&mut buf).await;
                    if self.is_idle() {
                        sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                }
                _ = &mut sleep, if idle_now => {
                    if self.registry.try_unload(&self.room, self.generation, &mut self.rx) {
                        break;
                    }
                    sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        }
        self.shared.metrics.rooms_active.dec();
        let mut stats = self.shared.room_stats.lock();
        if stats
            .get(&self.room)
            .is_some_and(|s| Arc::ptr_eq(s, &self.stats))
        {
            stats.remove(&self.room);
        }
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.inflight.is_empty()
    }

    /// (Re)builds the room's state from the store.
    async fn reload(&mut self) {
        let cfg = &self.shared.config;
        let store = &self.shared.store;
        let record = match store.load_room(&self.room).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.state = State::Missing;
                return;
            }
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "loading room failed");
                self.state = State::Stale;
                return;
            }
        };
        if let Some(h) = &record.head_hlc {
            self.shared.hlc_observe(h);
        }
        let keep = (cfg.room_window.max(cfg.idempotency_cache) as u64).min(record.head.0);
        let after = Seq(record.head.0 - keep);
        let tail = match store.read_events(&self.room, after, keep as usize).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "loading room tail failed");
                self.state = State::Stale;
                return;
            }
        };
        let mut idem = IdempotencyTable::new(cfg.idempotency_cache, after);
        let mut window = VecDeque::new();
        for e in &tail {
            if let Some(op) = &e.op_id {
                if let (Ok(client), Ok(id)) = (
                    concord_core::ClientId::new(&e.from),
                    concord_core::OpId::new(op),
                ) {
                    idem.insert(
                        IdemKey { client, id },
                        e.seq,
                        (e.seq, Arc::from(e.hlc.as_str())),
                    );
                }
            }
            window.push_back(Arc::new(Committed {
                seq: e.seq,
                frame: encode_event(&self.room, e),
            }));
            if window.len() > cfg.room_window {
                window.pop_front();
            }
        }
        self.state = State::Live(Box::new(Live {
            kind: record.kind,
            seqr: Sequencer::new(record.epoch, record.head),
            window,
            idem,
            waiting: Vec::new(),
        }));
    }

    async fn handle(&mut self, buf: &mut Vec<RoomMsg>) {
        if matches!(self.state, State::Stale) && self.inflight.is_empty() {
            self.reload().await;
        }
        let found = self.lookup_unknown_keys(buf).await;
        let mut batch = InFlight {
            events: Vec::new(),
            acks: Vec::new(),
        };
        let mut stored = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                RoomMsg::Publish(p) => self.publish(p, &found, &mut batch, &mut stored).await,
                RoomMsg::Join {
                    conn,
                    kind,
                    since,
                    history,
                    joined,
                } => {
                    // Events sequenced before the join go out through the normal broadcast.
                    self.submit(&mut batch, &mut stored);
                    // Tell the connection whether it is a member now (a failed rejoin keeps
                    // an existing membership).
                    let conn_id = conn.conn_id;
                    if self.join(conn, kind, since, history).await || self.members.contains(conn_id)
                    {
                        let _ = joined.send(true);
                    }
                }
                RoomMsg::Leave { conn_id, notify } => {
                    self.members
                        .remove(&self.room, conn_id, &self.shared.metrics);
                    self.stats
                        .members
                        .store(self.members.len() as u64, Ordering::Relaxed);
                    if let Some(out) = notify {
                        out.send(Utf8Bytes::from(wire::left(self.room.as_str())));
                    }
                }
                RoomMsg::Presence { conn_id, data } => {
                    let Some(client) = self.members.client_of(conn_id).cloned() else {
                        // The join was refused or the member left meanwhile.
                        continue;
                    };
                    self.stats.presence.fetch_add(1, Ordering::Relaxed);
                    self.members
                        .set_presence(&client, data, &self.shared.metrics);
                }
            }
        }
        self.submit(&mut batch, &mut stored);
    }

    /// Asks the store, in one query, about retried op ids older than the in-memory table.
    /// `Err` means the store could not answer: those publishes are refused as unavailable.
    async fn lookup_unknown_keys(&mut self, buf: &[RoomMsg]) -> Result<Found, ()> {
        let State::Live(live) = &self.state else {
            return Ok(HashMap::new());
        };
        let keys: Vec<(String, String)> = buf
            .iter()
            .filter_map(|m| match m {
                RoomMsg::Publish(Publish {
                    client,
                    waiter: Waiter { id: Some(id), .. },
                    ..
                }) => {
                    let key = IdemKey {
                        client: client.clone(),
                        id: id.clone(),
                    };
                    matches!(live.idem.lookup(&key), Lookup::Unknown)
                        .then(|| (client.to_string(), id.to_string()))
                }
                _ => None,
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        match self.shared.store.find_ops(&self.room, keys).await {
            Ok(found) => Ok(found
                .into_iter()
                .map(|f| ((f.from, f.op_id), (f.seq, Arc::from(f.hlc.as_str()))))
                .collect()),
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "idempotency lookup failed");
                Err(())
            }
        }
    }

    fn error(&self, w: Waiter, code: ErrorCode, message: &str) {
        self.shared.metrics.error(code);
        w.fail(&self.room, RoomError::new(code, message));
    }

    async fn create(&mut self, kind: RoomKind) -> Result<(), RoomError> {
        let epoch = self.shared.new_epoch();
        if let Err(e) = self
            .shared
            .store
            .create_room(&self.room, kind, &epoch)
            .await
        {
            tracing::error!(room = %self.room, error = %e, "creating room failed");
            return Err(RoomError::new(
                ErrorCode::Unavailable,
                "the store is unavailable",
            ));
        }
        self.reload().await;
        match &self.state {
            State::Live(_) => Ok(()),
            _ => Err(RoomError::new(
                ErrorCode::Unavailable,
                "the store is unavailable",
            )),
        }
    }

    async fn publish(
        &mut self,
        p: Publish,
        found: &Result<Found, ()>,
        batch: &mut InFlight,
        stored: &mut Vec<StoredEvent>,
    ) {
        let Publish {
            client,
            data,
            create,
            waiter,
        } = p;
        let p = waiter;
        if matches!(self.state, State::Missing) && create {
            if let Err(e) = self.create(RoomKind::Stream).await {
                return self.error(p, e.code, &e.message);
            }
        }
        let live = match &mut self.state {
            State::Live(live) => live,
            State::Missing => {
                return self.error(
                    p,
                    ErrorCode::NotFound,
                    "room does not exist; join it with a kind to create it",
                )
            }
            State::Stale => {
                return self.error(
                    p,
                    ErrorCode::Unavailable,
                    "room is recovering from a store error; retry",
                )
            }
        };
        if live.kind != RoomKind::Stream {
            return self.error(p, ErrorCode::KindMismatch, "publish is for stream rooms");
        }
        let key = p.id.as_ref().map(|id| IdemKey {
            client: client.clone(),
            id: id.clone(),
        });
        if let Some(key) = &key {
            let known = match live.idem.lookup(key) {
                Lookup::Hit((seq, hlc)) => Some((*seq, hlc.clone())),
                Lookup::New => None,
                Lookup::Unknown => match found {
                    Ok(found) => found
                        .get(&(key.client.to_string(), key.id.to_string()))
                        .cloned(),
                    Err(()) => {
                        return self.error(
                            p,
                            ErrorCode::Unavailable,
                            "idempotency lookup failed; retry",
                        )
                    }
                },
            };
            if let Some((seq, hlc)) = known {
                self.shared.metrics.duplicate_ops.inc();
                if seq <= live.seqr.committed() {
                    let epoch = live.seqr.epoch().clone();
                    p.ack(&self.room, Acked { seq, hlc, epoch });
                } else {
                    live.waiting.push((seq, hlc, p));
                }
                return;
            }
        }
        if let Err(retry) = self.rate.check() {
            self.shared.metrics.rate_limit("room");
            self.shared.metrics.error(ErrorCode::RateLimited);
            let err = RoomError {
                retry_after_ms: Some(retry),
                ..RoomError::new(
                    ErrorCode::RateLimited,
                    "this room receives more publishes than its limit",
                )
            };
            return p.fail(&self.room, err);
        }
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
        let seq = live.seqr.assign();
        let hlc: Arc<str> = Arc::from(self.shared.hlc_now().to_string());
        let ev = StoredEvent {
            seq,
            hlc: hlc.to_string(),
            from: client.to_string(),
            op_id: p.id.as_ref().map(|i| i.to_string()),
            data,
        };
        if let Some(key) = key {
            live.idem.insert(key, seq, (seq, hlc.clone()));
        }
        batch.events.push(Arc::new(Committed {
            seq,
            frame: encode_event(&self.room, &ev),
        }));
        stored.push(ev);
        batch.acks.push((seq, hlc, p));
    }

    /// Hands the sequenced events to the store.
    fn submit(&mut self, batch: &mut InFlight, stored: &mut Vec<StoredEvent>) {
        if stored.is_empty() {
            return;
        }
        let events = std::mem::take(stored);
        let store = self.shared.store.clone();
        let room = self.room.clone();
        self.commits
            .push_back(Box::pin(async move { store.append(&room, events).await }));
        self.inflight.push_back(InFlight {
            events: std::mem::take(&mut batch.events),
            acks: std::mem::take(&mut batch.acks),
        });
    }

    async fn on_commit(&mut self, result: StoreResult<()>) {
        let Some(done) = self.inflight.pop_front() else {
            return;
        };
        let State::Live(live) = &mut self.state else {
            // A commit failed earlier: everything after it fails too (the store refuses gaps).
            for (_, _, p) in done.acks {
                self.shared.metrics.error(ErrorCode::Unavailable);
                p.fail(
                    &self.room,
                    RoomError::new(ErrorCode::Unavailable, "commit failed; retry"),
                );
            }
            return;
        };
        if let Err(e) = result {
            tracing::error!(room = %self.room, error = %e, "commit failed; reloading room");
            let waiting = std::mem::take(&mut live.waiting);
            self.state = State::Stale;
            for (_, _, p) in done.acks.into_iter().chain(waiting) {
                self.shared.metrics.error(ErrorCode::Unavailable);
                p.fail(
                    &self.room,
                    RoomError::new(ErrorCode::Unavailable, "commit failed; retry"),
                );
            }
            if self.inflight.is_empty() {
                self.reload().await;
            }
            return;
        }
        let last = done
            .events
            .last()
            .map(|e| e.seq)
            .unwrap_or(live.seqr.committed());
        live.seqr.commit(last);
        let metrics = &self.shared.metrics;
        metrics.events_committed.inc_by(done.events.len() as u64);
        let epoch = live.seqr.epoch().clone();
        for (seq, hlc, p) in done.acks {
            metrics
                .ack_latency
                .observe(p.received.elapsed().as_secs_f64());
            p.ack(
                &self.room,
                Acked {
                    seq,
                    hlc,
                    epoch: epoch.clone(),
                },
            );
        }
        for ev in &done.events {
            self.members.broadcast(&self.room, &ev.frame, metrics);
            live.window.push_back(ev.clone());
            if live.window.len() > self.shared.config.room_window {
                live.window.pop_front();
            }
        }
        self.stats
            .members
            .store(self.members.len() as u64, Ordering::Relaxed);
        if !live.waiting.is_empty() {
            let committed = live.seqr.committed();
            let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut live.waiting)
                .into_iter()
                .partition(|(seq, _, _)| *seq <= committed);
            live.waiting = still;
            for (seq, hlc, p) in ready {
                p.ack(
                    &self.room,
                    Acked {
                        seq,
                        hlc,
                        epoch: epoch.clone(),
                    },
                );
            }
        }
    }

    /// Answers `joined` (or an error) and makes the connection a member; true on success.
    async fn join(
        &mut self,
        conn: ConnHandle,
        kind: Option<RoomKind>,
        since: Option<Since>,
        history: u64,
    ) -> bool {
        let fail = |s: &Self, code: ErrorCode, msg: &str| {
            s.shared.metrics.error(code);
            conn.out.send(Utf8Bytes::from(wire::error(
                None,
                Some(s.room.as_str()),
                code,
                msg,
                None,
            )));
            false
        };
        if matches!(self.state, State::Missing) {
            match kind {
                Some(RoomKind::Doc) => {
                    return fail(
                        self,
                        ErrorCode::BadRequest,
                        "doc rooms are not available on this server yet",
                    )
                }
                Some(k) => {
                    if let Err(e) = self.create(k).await {
                        return fail(self, e.code, &e.message);
                    }
                }
                None => {
                    return fail(
                        self,
                        ErrorCode::NotFound,
                        "room does not exist; give a kind to create it",
                    )
                }
            }
        }
        let live = match &self.state {
            State::Live(l) => l,
            _ => {
                return fail(
                    self,
                    ErrorCode::Unavailable,
                    "room is recovering from a store error; retry",
                )
            }
        };
        if kind.is_some_and(|k| k != live.kind) {
            return fail(
                self,
                ErrorCode::KindMismatch,
                &format!("room is a {} room", live.kind.as_str()),
            );
        }
        let max_members = self.shared.config.max_members_per_room;
        if !self.members.contains(conn.conn_id) && self.members.len() >= max_members {
            self.shared.metrics.limit("max_members_per_room");
            return fail(
                self,
                ErrorCode::Unavailable,
                &format!("room is full ({max_members} members)"),
            );
        }
        let committed = live.seqr.committed();
        let window = self.shared.config.recovery_window;
        let latest = |n: u64| Seq(committed.0 - n.min(committed.0));
        let (recovered, after, outcome) = match &since {
            Some(s) => match live.seqr.check_since(&s.epoch, Seq(s.seq), window) {
                SinceCheck::Recover { after } => (true, after, "recovered"),
                SinceCheck::Reset { reason } => {
                    tracing::debug!(room = %self.room, reason, "rejoin cannot recover by events");
                    (false, latest(history), "reset")
                }
            },
            None => (false, latest(history), "fresh"),
        };
        let (mut recovered, mut outcome) = (recovered, outcome);
        let Ok(mut frames) = self.catch_up(after, committed).await else {
            return fail(
                self,
                ErrorCode::Unavailable,
                "history is not readable right now; retry",
            );
        };
        let cap = self.shared.config.max_catch_up_bytes;
        let size = |f: &[Utf8Bytes]| f.iter().map(|e| e.len() + 1).sum::<usize>();
        if recovered && size(&frames) > cap {
            // Too much to replay in one frame: all or nothing, so this becomes a reset.
            self.shared.metrics.limit("max_catch_up_bytes");
            (recovered, outcome) = (false, "reset");
            let Ok(latest_frames) = self.catch_up(latest(history), committed).await else {
                return fail(
                    self,
                    ErrorCode::Unavailable,
                    "history is not readable right now; retry",
                );
            };
            frames = latest_frames;
        }
        if !recovered {
            // `history` gives the newest events that fit in the byte budget.
            let mut total = size(&frames);
            let mut drop = 0;
            while total > cap && drop < frames.len() {
                total -= frames[drop].len() + 1;
                drop += 1;
            }
            frames.drain(..drop);
        }
        let State::Live(live) = &self.state else {
            return false;
        };
        let frame = wire::joined(
            self.room.as_str(),
            live.kind.as_str(),
            live.seqr.epoch().as_str(),
            committed.0,
            recovered,
            frames.iter().map(|f| f.as_str()),
            &[
                ("presence", &self.members.presence_json()),
                ("members", &self.members.members_json(&conn)),
            ],
        );
        self.shared.metrics.join(outcome);
        if conn.out.send(Utf8Bytes::from(frame)) {
            self.members.add(&self.room, conn, &self.shared.metrics);
            self.stats
                .members
                .store(self.members.len() as u64, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl RoomActor {
    /// The encoded events after `after` up to `committed`, from memory or from the store.
    async fn catch_up(&mut self, after: Seq, committed: Seq) -> Result<Vec<Utf8Bytes>, ()> {
        let State::Live(live) = &self.state else {
            return Err(());
        };
        if after >= committed {
            return Ok(Vec::new());
        }
        if let Some(front) = live.window.front().filter(|f| f.seq.0 <= after.0 + 1) {
            let skip = (after.0 + 1 - front.seq.0) as usize;
            return Ok(live
                .window
                .iter()
                .skip(skip)
                .map(|c| c.frame.clone())
                .collect());
        }
        let n = (committed.0 - after.0) as usize;
        match self.shared.store.read_events(&self.room, after, n).await {
            Ok(evs) if evs.len() == n => {
                Ok(evs.iter().map(|e| encode_event(&self.room, e)).collect())
            }
            Ok(evs) => {
                tracing::error!(room = %self.room, want = n, got = evs.len(), "store returned a short history");
                Err(())
            }
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "reading history failed");
                Err(())
            }
        }
    }
}

fn encode_event(room: &RoomId, e: &StoredEvent) -> Utf8Bytes {
    Utf8Bytes::from(wire::event(
        room.as_str(),
        e.seq.0,
        &e.hlc,
        &e.from,
        e.op_id.as_deref(),
        &e.data,
    ))
}
