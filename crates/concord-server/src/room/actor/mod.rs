//! The room actor: the single sequencer of one room — idempotency, seq + hlc assignment,
//! group-committed appends, then acks and fan-out in seq order.
//!
//! Publishes and doc ops are pipelined: while one batch is being committed by the store, the
//! next one is sequenced. Nothing is acked or broadcast before the store reports it durable, and
//! batches complete in the order they were submitted, so every member sees seq order with no
//! gaps. Writing (publish, op, restore) is in `write.rs`, joining and catch-up in `join.rs`.

mod join;
mod write;

use super::doc::{DocLimits, DocLoadError, DocState};
use super::members::Members;
use super::msg::{Acked, Creator, RoomError, RoomMsg, Waiter};
use super::registry::Registry;
use crate::context::{RoomStats, Shared};
use crate::limiter::Bucket;
use crate::store::{StoreResult, StoredEvent};
use axum::extract::ws::Utf8Bytes;
use concord_core::{IdemKey, IdempotencyTable, RoomId, RoomKind, Seq, Sequencer};
use concord_protocol::outbound::{ErrorMsg, Left};
use concord_protocol::{ErrorCode, ServerMsg};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

const MAILBOX_BATCH: usize = 256;

/// How long a room whose document cannot be loaded waits before trying again (each try replays
/// its op log, so not on every message).
const BROKEN_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The answer to every message of a room whose document cannot be loaded.
const BROKEN_MESSAGE: &str =
    "the document of this room cannot be loaded; an operator must repair it (concord repair)";

/// A committed event, encoded once and shared by every member.
struct Committed {
    seq: Seq,
    frame: Utf8Bytes,
}

struct Live {
    kind: RoomKind,
    seqr: Sequencer,
    /// The newest committed events, contiguous up to the head: at most `room_window` events and
    /// `room_window_bytes` bytes of frames.
    window: VecDeque<Arc<Committed>>,
    /// Bytes of the frames in `window`.
    window_bytes: usize,
    idem: IdempotencyTable<(Seq, Arc<str>)>,
    /// Retries of ops still in flight: answered once their seq commits.
    waiting: Vec<(Seq, Arc<str>, Waiter)>,
    /// The document of a doc room.
    doc: Option<DocState>,
}

impl Live {
    /// Adds the newest committed event to the window, dropping the oldest beyond
    /// `room_window` events or `room_window_bytes` bytes. True when the byte bound dropped one.
    fn push_window(&mut self, ev: Arc<Committed>, cfg: &crate::config::Config) -> bool {
        self.window_bytes += ev.frame.len();
        self.window.push_back(ev);
        let mut by_bytes = false;
        while self.window.len() > cfg.room_window
            || (self.window_bytes > cfg.room_window_bytes && !self.window.is_empty())
        {
            by_bytes |= self.window.len() <= cfg.room_window;
            if let Some(old) = self.window.pop_front() {
                self.window_bytes -= old.frame.len();
            }
        }
        by_bytes
    }
}

enum State {
    /// The room does not exist (yet).
    Missing,
    Live(Box<Live>),
    /// Loading failed or a commit failed: reload before serving anything.
    Stale,
}

/// One acknowledgement to send once its seq is durable.
struct PendingAck {
    seq: Seq,
    hlc: Arc<str>,
    dropped: Vec<usize>,
    waiter: Waiter,
}

/// A batch handed to the store, with everything to do once it is durable.
#[derive(Default)]
struct InFlight {
    events: Vec<Arc<Committed>>,
    acks: Vec<PendingAck>,
    /// What the store must write.
    stored: Vec<StoredEvent>,
    /// A doc snapshot to save once the batch is durable: (seq, state JSON).
    snapshot: Option<(Seq, String)>,
}

pub(crate) struct RoomActor {
    room: RoomId,
    generation: u64,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    rx: UnboundedReceiver<RoomMsg>,
    /// Messages taken from the mailbox and not yet handled (kept here, not in a local, so that
    /// the drop guard answers them if the actor panics).
    buf: Vec<RoomMsg>,
    state: State,
    members: Members,
    /// Publishes into this room from all senders together.
    rate: Bucket,
    stats: Arc<RoomStats>,
    inflight: VecDeque<InFlight>,
    commits: FuturesOrdered<BoxFuture<'static, StoreResult<()>>>,
    /// Set while the room's document cannot be loaded (not a passing store error): when to
    /// try loading again.
    broken: Option<tokio::time::Instant>,
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
        // Paired with the decrement in `Drop`, which runs however the actor ends.
        shared.metrics.rooms_active.inc();
        RoomActor {
            members: Members::new(shared.config.presence_interval),
            rate: Bucket::new(shared.config.rate_publish_per_room),
            stats,
            room,
            generation,
            shared,
            registry,
            rx,
            buf: Vec::with_capacity(MAILBOX_BATCH),
            state: State::Stale,
            inflight: VecDeque::new(),
            commits: FuturesOrdered::new(),
            broken: None,
        }
    }

    pub(crate) async fn run(mut self) {
        self.reload().await;
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
                n = self.rx.recv_many(&mut self.buf, MAILBOX_BATCH) => {
                    if n == 0 {
                        // The registry is gone (shutdown): finish what is in flight.
                        self.drain_commits().await;
                        break;
                    }
                    self.handle().await;
                    #[cfg(feature = "fault-injection")]
                    crate::fault::check(&self.room, crate::fault::Point::AfterBatch);
                    // A room that does not exist (a refused join or creation) holds nothing worth
                    // keeping: unload at once, so probes of missing rooms cost no memory.
                    if matches!(self.state, State::Missing)
                        && self.is_idle()
                        && self.registry.try_unload(&self.room, self.generation, &mut self.rx)
                    {
                        break;
                    }
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
        self.snapshot_on_unload().await;
        // The rest (registry entry, gauges, stats) is done by `Drop`.
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.inflight.is_empty()
    }

    /// Waits for every batch in flight to be committed (or to fail).
    async fn drain_commits(&mut self) {
        while let Some(result) = self.commits.next().await {
            self.on_commit(result).await;
        }
    }

    /// A doc room saves its state when it unloads, so the next load replays little.
    async fn snapshot_on_unload(&mut self) {
        let State::Live(live) = &self.state else {
            return;
        };
        let Some(doc) = &live.doc else { return };
        if doc.seq > doc.snapshot_seq && doc.seq == live.seqr.committed() {
            let state = doc.state.to_string();
            let store = &self.shared.store;
            let saved = store.save_snapshot(&self.room, doc.seq, state).await;
            let keep = self.shared.config.doc_snapshots_kept;
            if let Err(e) = match saved {
                Ok(()) => store.prune_snapshots(&self.room, keep).await,
                Err(e) => Err(e),
            } {
                tracing::warn!(room = %self.room, error = %e, "saving the unload snapshot failed");
            }
        }
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
        let doc = if record.kind == RoomKind::Doc {
            let schema = self.shared.schema_for(&self.room);
            match DocState::load(
                store.as_ref(),
                &self.room,
                record.head,
                cfg.doc_window,
                schema,
                DocLimits::of(cfg),
            )
            .await
            {
                Ok(d) => {
                    let unreadable = u64::from(d.unreadable_snapshots);
                    self.shared
                        .metrics
                        .doc_snapshot_unreadable
                        .inc_by(unreadable);
                    self.broken = None;
                    Some(d)
                }
                Err(DocLoadError::Store(e)) => {
                    tracing::error!(room = %self.room, error = %e, "loading document failed");
                    self.state = State::Stale;
                    return;
                }
                Err(DocLoadError::Corrupt(e)) => {
                    self.shared.metrics.doc_load_failures.inc();
                    tracing::error!(
                        room = %self.room, error = %e,
                        "the document of this room cannot be loaded from its op log: every message \
                         gets `unavailable`; stop the server and run `concord repair --data-dir DIR \
                         --room ROOM`"
                    );
                    self.broken = Some(tokio::time::Instant::now() + BROKEN_RETRY);
                    self.state = State::Stale;
                    return;
                }
            }
        } else {
            None
        };
        // Idempotency keys come without bodies; only the events that fit the window (in count
        // and bytes) are read in full, newest first, a few at a time.
        let keep = (cfg.room_window.max(cfg.idempotency_cache) as u64).min(record.head.0);
        let after = Seq(record.head.0 - keep);
        let keys = match store.recent_keys(&self.room, keep as usize).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "loading room keys failed");
                self.state = State::Stale;
                return;
            }
        };
        let mut idem = IdempotencyTable::with_committed(cfg.idempotency_cache, after, record.head);
        for k in &keys {
            let Some(op) = &k.op_id else { continue };
            if let (Ok(client), Ok(id)) = (
                concord_core::ClientId::new(&k.from),
                concord_core::OpId::new(op),
            ) {
                idem.insert(
                    IdemKey { client, id },
                    k.seq,
                    (k.seq, Arc::from(k.hlc.as_str())),
                );
            }
        }
        let tail = match Self::window_tail(&self.shared, &self.room, record.head).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "loading room tail failed");
                self.state = State::Stale;
                return;
            }
        };
        let mut live = Live {
            kind: record.kind,
            seqr: Sequencer::new(record.epoch, record.head),
            window: VecDeque::new(),
            window_bytes: 0,
            idem,
            waiting: Vec::new(),
            doc,
        };
        for e in &tail {
            let frame = encode_event(&self.room, record.kind, e, None);
            let _ = live.push_window(Arc::new(Committed { seq: e.seq, frame }), cfg);
        }
        self.state = State::Live(Box::new(live));
    }

    /// The newest events up to `head` that fit the window (`room_window` events and
    /// `room_window_bytes` bytes of data), read backwards in small chunks so that a room of big
    /// events never has more than one chunk beyond the window in memory. Stops early at a gap
    /// (events removed by retention).
    async fn window_tail(
        shared: &Shared,
        room: &RoomId,
        head: Seq,
    ) -> StoreResult<Vec<StoredEvent>> {
        const CHUNK: u64 = 16;
        let cfg = &shared.config;
        let mut tail: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0usize;
        let mut upto = head.0;
        while upto > 0 && tail.len() < cfg.room_window {
            let n = CHUNK.min(upto).min((cfg.room_window - tail.len()) as u64);
            let start = upto;
            let chunk = shared
                .store
                .read_events(room, Seq(upto - n), n as usize)
                .await?;
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

    /// Handles the messages in `self.buf`, in order.
    async fn handle(&mut self) {
        let retry = self
            .broken
            .is_none_or(|at| tokio::time::Instant::now() >= at);
        if matches!(self.state, State::Stale) && self.inflight.is_empty() && retry {
            self.reload().await;
        }
        let buf = std::mem::take(&mut self.buf);
        let found = self.lookup_unknown_keys(&buf).await;
        self.buf = buf;
        // Taken one by one from the back: what is not handled yet stays in `self.buf`.
        self.buf.reverse();
        let mut batch = Unsubmitted {
            flight: InFlight::default(),
            room: self.room.clone(),
            metrics: self.shared.metrics.clone(),
        };
        loop {
            #[cfg(feature = "fault-injection")]
            if !batch.acks.is_empty() && !self.buf.is_empty() {
                crate::fault::check(&self.room, crate::fault::Point::MidBatch);
            }
            let Some(msg) = self.buf.pop() else { break };
            match msg {
                RoomMsg::Publish(p) => self.publish(p, &found, &mut batch).await,
                RoomMsg::Op(op) => self.op(op, &found, &mut batch),
                RoomMsg::Restore {
                    seq,
                    client,
                    waiter,
                } => {
                    self.submit(&mut batch);
                    self.drain_commits().await;
                    self.restore(seq, client, waiter, &mut batch).await;
                }
                RoomMsg::Join {
                    conn,
                    kind,
                    since,
                    history,
                    create,
                    joined,
                } => {
                    // Events sequenced before the join go out through the normal broadcast;
                    // a doc's state is given as committed, so its ops in flight finish first.
                    self.submit(&mut batch);
                    if self.live().is_some_and(|l| l.doc.is_some()) {
                        self.drain_commits().await;
                    }
                    // Tell the connection whether it is a member now (a failed rejoin keeps
                    // an existing membership).
                    let conn_id = conn.conn_id;
                    if self.join(conn, kind, since, history, create).await
                        || self.members.contains(conn_id)
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
                        out.send(Utf8Bytes::from(left_frame(&self.room)));
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
        self.submit(&mut batch);
    }

    fn live(&self) -> Option<&Live> {
        match &self.state {
            State::Live(l) => Some(l),
            _ => None,
        }
    }

    /// Why a room that is not live cannot answer (`unavailable`).
    fn stale_message(&self) -> &'static str {
        match self.broken {
            Some(_) => BROKEN_MESSAGE,
            None => "room is recovering from a store error; retry",
        }
    }

    fn error(&self, w: Waiter, code: ErrorCode, message: &str) {
        self.shared.metrics.error(code);
        w.fail(&self.room, RoomError::new(code, message));
    }

    /// Creates the missing room as `kind` for `creator`: the room quota (`max_rooms`) and the
    /// creator's room-creation rates apply.
    async fn create(&mut self, kind: RoomKind, creator: &Creator) -> Result<(), RoomError> {
        let shared = &self.shared;
        let max = shared.config.max_rooms;
        if shared.rooms_stored.load(Ordering::Relaxed) >= max {
            shared.metrics.limit("max_rooms");
            return Err(RoomError::new(
                ErrorCode::Unavailable,
                format!("the server holds its maximum number of rooms ({max})"),
            ));
        }
        let per_conn = creator.conn_rate.as_ref().map(|b| b.check());
        let per_user = creator
            .user
            .as_ref()
            .map(|u| shared.room_create_per_user.check(u));
        let limited = [
            (per_conn, "room_create_conn"),
            (per_user, "room_create_user"),
        ]
        .into_iter()
        .find_map(|(r, which)| match r {
            Some(Err(retry)) => Some((retry, which)),
            _ => None,
        });
        if let Some((retry, which)) = limited {
            shared.metrics.rate_limit(which);
            return Err(RoomError {
                retry_after_ms: Some(retry),
                ..RoomError::new(
                    ErrorCode::RateLimited,
                    "rooms are created faster than the limit",
                )
            });
        }
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
        self.shared.rooms_stored.fetch_add(1, Ordering::Relaxed);
        self.reload().await;
        match &self.state {
            State::Live(_) => Ok(()),
            _ => Err(RoomError::new(
                ErrorCode::Unavailable,
                "the store is unavailable",
            )),
        }
    }

    /// Hands the sequenced events to the store; a due doc snapshot follows once they are durable.
    fn submit(&mut self, batch: &mut InFlight) {
        if batch.stored.is_empty() {
            return;
        }
        let mut flight = std::mem::take(batch);
        let events = std::mem::take(&mut flight.stored);
        let snapshot = flight.snapshot.take();
        let store = self.shared.store.clone();
        let room = self.room.clone();
        let keep = self.shared.config.doc_snapshots_kept;
        self.commits.push_back(Box::pin(async move {
            store.append(&room, events).await?;
            if let Some((seq, state)) = snapshot {
                // Not awaited by the acks; the store refuses a snapshot beyond its head. Only
                // the newest `doc_snapshots_kept` are kept.
                tokio::spawn(async move {
                    let saved = match store.save_snapshot(&room, seq, state).await {
                        Ok(()) => store.prune_snapshots(&room, keep).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = saved {
                        tracing::warn!(room = %room, error = %e, "saving a snapshot failed");
                    }
                });
            }
            Ok(())
        }));
        self.inflight.push_back(flight);
    }

    async fn on_commit(&mut self, result: StoreResult<()>) {
        let Some(done) = self.inflight.pop_front() else {
            return;
        };
        let unavailable = || RoomError::new(ErrorCode::Unavailable, "commit failed; retry");
        let State::Live(live) = &mut self.state else {
            // A commit failed earlier: everything after it fails too (the store refuses gaps).
            for a in done.acks {
                self.shared.metrics.error(ErrorCode::Unavailable);
                a.waiter.fail(&self.room, unavailable());
            }
            return;
        };
        if let Err(e) = result {
            tracing::error!(room = %self.room, error = %e, "commit failed; reloading room");
            let waiting = std::mem::take(&mut live.waiting);
            self.state = State::Stale;
            let waiters = done
                .acks
                .into_iter()
                .map(|a| a.waiter)
                .chain(waiting.into_iter().map(|w| w.2));
            for w in waiters {
                self.shared.metrics.error(ErrorCode::Unavailable);
                w.fail(&self.room, unavailable());
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
        live.idem.commit(last);
        let metrics = &self.shared.metrics;
        metrics.events_committed.inc_by(done.events.len() as u64);
        let epoch = live.seqr.epoch().clone();
        for a in done.acks {
            metrics
                .ack_latency
                .observe(a.waiter.received.elapsed().as_secs_f64());
            let acked = Acked {
                seq: a.seq,
                hlc: a.hlc,
                epoch: epoch.clone(),
                dropped: a.dropped,
            };
            a.waiter.ack(&self.room, acked);
        }
        for ev in &done.events {
            self.members.broadcast(&self.room, &ev.frame, metrics);
            if live.push_window(ev.clone(), &self.shared.config) {
                metrics.limit("room_window_bytes");
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
            for (seq, hlc, w) in ready {
                let acked = Acked {
                    seq,
                    hlc,
                    epoch: epoch.clone(),
                    dropped: Vec::new(),
                };
                w.ack(&self.room, acked);
            }
        }
    }
}

fn left_frame(room: &RoomId) -> String {
    ServerMsg::Left(Left {
        room: room.as_str().into(),
    })
    .encode()
}

fn unavailable_frame(room: &RoomId, message: &str) -> String {
    ServerMsg::Error(ErrorMsg {
        room: Some(room.as_str().into()),
        ..ErrorMsg::new(ErrorCode::Unavailable, message)
    })
    .encode()
}

/// The `event` frame of a stored event: `data` for stream rooms, `ops` (and `hash` when given)
/// for doc rooms.
fn encode_event(room: &RoomId, kind: RoomKind, e: &StoredEvent, hash: Option<&str>) -> Utf8Bytes {
    Utf8Bytes::from(super::event_frame(room, kind, e, hash))
}

/// The batch being sequenced, before it is handed to the store: if the actor panics meanwhile,
/// its waiters are answered (`unavailable`) while unwinding instead of being dropped in silence.
struct Unsubmitted {
    flight: InFlight,
    room: RoomId,
    metrics: crate::metrics::Metrics,
}

impl std::ops::Deref for Unsubmitted {
    type Target = InFlight;
    fn deref(&self) -> &InFlight {
        &self.flight
    }
}

impl std::ops::DerefMut for Unsubmitted {
    fn deref_mut(&mut self) -> &mut InFlight {
        &mut self.flight
    }
}

impl Drop for Unsubmitted {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for a in self.flight.acks.drain(..) {
            self.metrics.error(ErrorCode::Unavailable);
            let failed = RoomError::new(ErrorCode::Unavailable, FAILED_MESSAGE);
            a.waiter.fail(&self.room, failed);
        }
    }
}

/// The answer to everyone waiting on an actor that panicked.
const FAILED_MESSAGE: &str = "the room failed; retry";

/// The actor's drop guard: runs however the actor ends — unloaded, at shutdown, or unwinding from
/// a panic (tokio drops the task's future while unwinding). It removes the registry entry of this
/// generation, so the next message spawns a new actor that reloads the room from the store, and
/// answers everyone still waiting on this actor instead of leaving them in silence. After a
/// normal end nothing is left to answer.
impl Drop for RoomActor {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        // No message reaches the mailbox once the entry is gone (sends happen under the shard
        // lock, with the entry present), so draining it below leaves nothing behind.
        self.registry.remove(&self.room, self.generation);
        self.rx.close();
        let metrics = &self.shared.metrics;
        metrics.rooms_active.dec();
        {
            let mut stats = self.shared.room_stats.lock();
            if stats
                .get(&self.room)
                .is_some_and(|s| Arc::ptr_eq(s, &self.stats))
            {
                stats.remove(&self.room);
            }
        }
        if panicked {
            metrics.room_actor_panics.inc();
            tracing::error!(
                room = %self.room, generation = self.generation,
                "the room actor panicked; its room is reloaded from the store on the next message"
            );
        }
        let failed = || RoomError::new(ErrorCode::Unavailable, FAILED_MESSAGE);
        let mut waiters: Vec<Waiter> = Vec::new();
        for flight in self.inflight.drain(..) {
            waiters.extend(flight.acks.into_iter().map(|a| a.waiter));
        }
        if let State::Live(live) = &mut self.state {
            waiters.extend(live.waiting.drain(..).map(|w| w.2));
        }
        let mut queued: Vec<RoomMsg> = self.buf.drain(..).rev().collect();
        while let Ok(msg) = self.rx.try_recv() {
            queued.push(msg);
        }
        for msg in queued {
            match msg {
                RoomMsg::Publish(p) => waiters.push(p.waiter),
                RoomMsg::Op(op) => waiters.push(op.waiter),
                RoomMsg::Restore { waiter, .. } => waiters.push(waiter),
                RoomMsg::Join { conn, .. } => {
                    // `joined` is dropped: the connection does not count itself a member.
                    metrics.error(ErrorCode::Unavailable);
                    conn.out.send(Utf8Bytes::from(unavailable_frame(
                        &self.room,
                        "the room failed; join again",
                    )));
                }
                RoomMsg::Leave { notify, .. } => {
                    if let Some(out) = notify {
                        out.send(Utf8Bytes::from(left_frame(&self.room)));
                    }
                }
                RoomMsg::Presence { .. } => {}
            }
        }
        for w in waiters {
            metrics.error(ErrorCode::Unavailable);
            w.fail(&self.room, failed());
        }
        if panicked {
            // The members are not members of the next actor: they are told to join again
            // (with `since`, to get what they missed).
            for out in self.members.outs() {
                metrics.error(ErrorCode::Unavailable);
                out.send(Utf8Bytes::from(unavailable_frame(
                    &self.room,
                    "the room failed; join again with since to resume",
                )));
            }
        }
    }
}
