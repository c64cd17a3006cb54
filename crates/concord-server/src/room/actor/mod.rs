//! The room actor: the shell around the room's core (`room/core/`). It owns the IO — the
//! mailbox, the store, the members' sockets, HTTP waiters — and carries out the core's effects.
//!
//! Publishes and doc ops are pipelined: while one batch is being committed by the store, the
//! next one is sequenced. Nothing is acked or broadcast before the store reports it durable, and
//! batches complete in the order they were submitted (`FuturesOrdered`), so every member sees
//! seq order with no gaps. Writing (publish, op, restore) is in `write.rs`, joining and
//! catch-up in `join.rs`; the distributed mode's shared rooms in `shared.rs`, and the
//! ownership of a doc room in `owner.rs`.

mod join;
mod owner;
mod shared;
mod write;

use super::core::{CommitFailure, CoreConfig, Effect, Env, Loaded, MemberConn, Members, RoomCore};
use super::msg::{Creator, RoomError, RoomMsg, Waiter};
use super::registry::Registry;
use crate::cluster::{ForwardAnswer, ForwardedList};
use crate::context::{RoomStats, Shared};
use crate::limiter::Bucket;
use crate::metrics::{Limit, RateScope};
use crate::outbound::ConnHandle;
use crate::store::{Append, StoreResult, StoredEvent};
use axum::extract::ws::Utf8Bytes;
use concord_core::{Epoch, HlcTimestamp, RoomId, Seq};
use concord_protocol::ErrorCode;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

const MAILBOX_BATCH: usize = 256;

/// How long a room whose document cannot be loaded waits before trying again (each try replays
/// its op log, so not on every message).
const BROKEN_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the core reads from the world: the node's HLC, the room's rate, and a way to run long
/// op lists off the async workers.
struct ShellEnv<'a> {
    shared: &'a Shared,
    rate: &'a Bucket,
}

impl Env for ShellEnv<'_> {
    fn hlc_now(&self) -> HlcTimestamp {
        self.shared.hlc_now()
    }

    fn room_rate(&self) -> Result<(), u64> {
        self.rate.check()
    }

    fn heavy(&self, work: &mut dyn FnMut()) {
        super::doc::off_the_workers(work)
    }
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
    core: RoomCore<Waiter>,
    members: Members<ConnHandle>,
    /// Publishes into this room from all senders together.
    rate: Bucket,
    stats: Arc<RoomStats>,
    commits: FuturesOrdered<BoxFuture<'static, StoreResult<()>>>,
    /// Set while the room's document cannot be loaded (not a passing store error): when to
    /// try loading again.
    broken: Option<tokio::time::Instant>,
    /// The distributed mode's commits, fills and feed (None: embedded mode).
    cluster: Option<shared::SharedShell>,
    /// A doc room this gateway owns (distributed mode).
    owner: Option<owner::Owner>,
    /// Doc lists the core asked to forward, not yet handed to the owner.
    forwards: Vec<ForwardedList>,
    /// A forward found the room without an owner: the next one tries to take the lease.
    want_lease: Arc<AtomicBool>,
    /// The epoch the room was last loaded in (a reload into another one resets the members).
    loaded_epoch: Option<concord_core::Epoch>,
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
            members: {
                let m = Members::new(
                    room.clone(),
                    shared.config.presence_interval,
                    shared.metrics.clone(),
                );
                if shared.commit_point.is_some() {
                    m.shared()
                } else {
                    m
                }
            },
            rate: Bucket::new(shared.config.rate_publish_per_room, &shared.clock),
            stats,
            core: RoomCore::new(
                room.clone(),
                CoreConfig {
                    shared_streams: shared.commit_point.is_some(),
                    ..CoreConfig::of(&shared.config)
                },
                shared.metrics.clone(),
            ),
            room,
            generation,
            shared,
            registry,
            rx,
            // Grows with the mailbox's batches: a room that is only loaded (or refused) never
            // pays for a full batch.
            buf: Vec::new(),
            commits: FuturesOrdered::new(),
            broken: None,
            cluster: None,
            owner: None,
            forwards: Vec::new(),
            want_lease: Arc::new(AtomicBool::new(false)),
            loaded_epoch: None,
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(point) = self.shared.commit_point.clone() {
            let store = self.shared.store.clone();
            let shell = shared::SharedShell::start(self.room.clone(), point, store).await;
            // Subscribed first: a roster change told from now on reaches this room.
            let roster = shell.load_roster().await.unwrap_or_default();
            let now = self.shared.clock.now_ms();
            for (gw, delta) in roster {
                self.members.apply_roster(&gw, delta, now);
            }
            if shell.durable() {
                self.core.hold_until_persisted();
            }
            self.cluster = Some(shell);
        }
        // The core asks for its first load.
        self.settle().await;
        let idle = self.shared.config.room_idle_unload;
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        loop {
            self.tell_roster();
            let idle_now = self.is_idle();
            let flush_at = self.members.flush_at();
            let remote = self.members.has_remote();
            tokio::select! {
                biased;
                Some(result) = self.commits.next(), if !self.commits.is_empty() => {
                    self.on_commit(result).await;
                }
                ev = Self::next_owner_event(&mut self.owner), if self.owner.is_some() => {
                    self.on_owner(ev).await;
                }
                ev = async { self.cluster.as_mut().expect("checked").next(remote).await }, if self.cluster.is_some() => {
                    self.on_shared(ev).await;
                }
                _ = self.shared.time.sleep_until_ms(flush_at.unwrap_or(0)), if flush_at.is_some() => {
                    self.members.flush_presence();
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
                    if self.core.is_missing()
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
        // The last departures (this room unloads once its members are gone) reach the other
        // gateways before the room stops.
        self.tell_roster();
        if let Some(c) = self.cluster.as_mut() {
            c.finish_telling().await;
        }
        self.release_lease().await;
        self.snapshot_on_unload().await;
        // The rest (registry entry, gauges, stats) is done by `Drop`.
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty()
            && !self.core.has_inflight()
            && !self.owner.as_ref().is_some_and(|o| o.has_inflight())
    }

    /// Waits for every batch in flight to be committed (or to fail).
    async fn drain_commits(&mut self) {
        while let Some(result) = self.commits.next().await {
            self.on_commit(result).await;
        }
        // A doc room's forwards may wait for this gateway's own owner core: both are driven.
        loop {
            let owner_busy = self.owner.as_ref().is_some_and(|o| o.has_inflight());
            let forwarding = self.cluster.as_ref().is_some_and(|c| c.has_commits());
            if !owner_busy && !forwarding {
                break;
            }
            tokio::select! {
                Some(outcome) = async { self.cluster.as_mut().expect("checked").next_commit().await }, if forwarding => {
                    self.core.commit_done(outcome);
                    self.settle().await;
                }
                ev = Self::next_owner_event(&mut self.owner), if owner_busy => {
                    self.on_owner(ev).await;
                }
            }
        }
    }

    /// What happened to a shared room's commits, fill or feed.
    async fn on_shared(&mut self, ev: shared::SharedEvent) {
        use shared::SharedEvent as E;
        match ev {
            E::Committed(outcome) => {
                if matches!(outcome, Err(CommitFailure::Unknown(_))) {
                    self.shared.metrics.cluster_unknown_outcomes.inc();
                }
                self.core.commit_done(outcome)
            }
            E::Filled(after, Ok(events)) => self.core.filled(after, events),
            E::Filled(_, Err(e)) => {
                tracing::warn!(room = %self.room, error = %e, "reading the log failed");
                self.core.fill_failed();
            }
            E::Notified(epoch, events) => self.core.notified(&epoch, events),
            E::Resumed(head, roster) => {
                self.shared.metrics.cluster_feed_resumes.inc();
                // What the other gateways told meanwhile may be lost, and what this one told
                // may be gone from Redis: read theirs again, tell ours again.
                if let Some(roster) = roster {
                    let now = self.shared.clock.now_ms();
                    self.members.replace_roster(roster, now);
                }
                if let (Some(c), Some(own)) = (self.cluster.as_mut(), self.members.own_roster()) {
                    c.tell(own);
                }
                match head {
                    Ok(Some((epoch, head))) => self.core.feed_resumed_in(&epoch, head),
                    Ok(None) => self.core.feed_resumed(Seq::ZERO),
                    Err(e) => {
                        tracing::warn!(room = %self.room, error = %e, "reading the head failed")
                    }
                }
            }
            E::Persisted(epoch, seq) => {
                let now = self.shared.clock.now_ms();
                self.core.persisted(&epoch, seq, now);
            }
            E::Behind => self.core.fill_acked(),
            E::Roster(gw, delta) => {
                let own = self.cluster.as_ref().map(|c| c.gateway_id() == gw);
                if own == Some(false) {
                    let now = self.shared.clock.now_ms();
                    self.members.apply_roster(&gw, delta, now);
                }
            }
            E::CheckGateways => {
                let gateways: Vec<String> = self.members.remote_gateways().into_iter().collect();
                let check = match (gateways.is_empty(), self.cluster.as_ref()) {
                    (false, Some(c)) => Some(c.gone_gateways(gateways)),
                    _ => None,
                };
                if let Some(check) = check {
                    let now = self.shared.clock.now_ms();
                    for gw in check.await {
                        tracing::info!(room = %self.room, gateway = %gw, "a gateway is gone: its clients leave");
                        self.members.gateway_gone(&gw, now);
                    }
                }
            }
            E::Nothing => {}
        }
        self.settle().await;
    }

    /// Forwards a doc list to the room's owner: this gateway's own owner core, or the holder
    /// of the lease (taken here first when a forward found the room without an owner).
    async fn forward(&mut self, list: ForwardedList) {
        let Some(point) = self.shared.commit_point.clone() else {
            return;
        };
        if self.owner.is_none() && self.want_lease.swap(false, Ordering::Relaxed) {
            self.take_lease().await;
        }
        let answer: BoxFuture<'static, ForwardAnswer> = if self.owner.is_some() {
            let (tx, rx) = oneshot::channel();
            self.serve_forward(list, tx).await;
            Box::pin(async move {
                rx.await.unwrap_or_else(|_| {
                    Err(CommitFailure::Unknown("the owner dropped the list".into()))
                })
            })
        } else {
            let (room, want) = (self.room.clone(), self.want_lease.clone());
            let metrics = self.shared.metrics.clone();
            let timeout =
                (self.shared.config.doc_lease / 3).max(std::time::Duration::from_millis(100));
            Box::pin(async move {
                let me = point.gateway_id().to_string();
                match point.lease_holder(&room).await {
                    Ok(Some(owner)) if owner != me => {
                        metrics.cluster_forwards.inc();
                        point.forward(&owner, &room, list, timeout).await
                    }
                    Ok(_) => {
                        want.store(true, Ordering::Relaxed);
                        Err(CommitFailure::Unknown("the room has no owner".into()))
                    }
                    Err(e) => Err(CommitFailure::Unknown(e)),
                }
            })
        };
        if let Some(c) = self.cluster.as_mut() {
            c.forward(answer);
        }
    }

    /// Tells the other gateways what changed among this gateway's clients of the room.
    fn tell_roster(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            if let Some(delta) = self.members.take_roster() {
                c.tell(delta);
            }
        }
    }

    /// The store's answer to the oldest append in flight.
    async fn on_commit(&mut self, result: StoreResult<()>) {
        self.core.append_done(result.map_err(|e| e.to_string()));
        self.settle().await;
    }

    /// Carries out the core's effects, reloading when it asks to, until none are left.
    async fn settle(&mut self) {
        loop {
            while self.route() {
                self.reload().await;
            }
            if self.forwards.is_empty() {
                break;
            }
            for list in std::mem::take(&mut self.forwards) {
                self.forward(list).await;
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            c.behind(self.core.behind_acked());
            c.waits_for_persisted(self.core.waits_for_persisted());
        }
    }

    /// Carries out the effects queued by the core, in order; true when it asks for a reload
    /// (done by the caller, which can await the store).
    fn route(&mut self) -> bool {
        let mut reload = false;
        let mut broadcast = false;
        // Without a shared commit point (the core only asks for one when `shared_streams` is
        // set) such requests are answered at once, so no waiter hangs.
        let (mut commits, mut fills) = (0, 0);
        let epoch = self.core.epoch().cloned();
        let metrics = &self.shared.metrics;
        for effect in self.core.drain() {
            match effect {
                Effect::Append(append) => {
                    let store = self.shared.store.clone();
                    let room = self.room.clone();
                    let keep = self.shared.config.doc_snapshots_kept;
                    // The core only appends to a live room, which has an epoch (an empty one
                    // would be refused as another epoch's, and the room reloaded).
                    let epoch = epoch.clone().unwrap_or_else(|| Epoch(String::new()));
                    let log_append = Append::new(epoch, append.events);
                    self.commits.push_back(Box::pin(async move {
                        store.append(&room, log_append).await?;
                        if let Some((seq, state)) = append.snapshot {
                            // Not awaited by the acks; the store refuses a snapshot beyond its
                            // head. Only the newest `doc_snapshots_kept` are kept.
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
                }
                Effect::Ack {
                    waiter,
                    acked,
                    fresh,
                } => {
                    if fresh {
                        metrics
                            .ack_latency
                            .observe(waiter.received.elapsed().as_secs_f64());
                    }
                    waiter.ack(&self.room, acked);
                }
                Effect::Fail { waiter, error } => {
                    metrics.error(error.code);
                    waiter.fail(&self.room, error);
                }
                Effect::Broadcast(frame) => {
                    self.members.broadcast(&frame, self.shared.clock.now_ms());
                    broadcast = true;
                }
                Effect::Reload => reload = true,
                Effect::Commit(events) => match (self.cluster.as_mut(), epoch.clone()) {
                    (Some(c), Some(epoch)) => c.commit(epoch, events),
                    _ => commits += 1,
                },
                Effect::Fill(fill) => match self.cluster.as_mut() {
                    Some(c) => {
                        self.shared.metrics.cluster_fills.inc();
                        c.fill(fill)
                    }
                    None => fills += 1,
                },
                Effect::Forward(list) => match self.cluster.is_some() {
                    true => self.forwards.push(list),
                    false => commits += 1,
                },
            }
        }
        if commits + fills > 0 {
            tracing::error!(room = %self.room, "a shared-room effect without a commit point");
            for _ in 0..commits {
                let e = RoomError::new(ErrorCode::Internal, "no commit point for this room");
                self.core.commit_done(Err(CommitFailure::Refused(e)));
            }
            for _ in 0..fills {
                self.core.fill_failed();
            }
            // Carry out the answers (failures only: nothing new is asked of a commit point).
            return self.route() || reload;
        }
        if broadcast {
            self.stats
                .members
                .store(self.members.len() as u64, Ordering::Relaxed);
        }
        reload
    }

    /// A doc room saves its state when it unloads, so the next load replays little.
    async fn snapshot_on_unload(&mut self) {
        let Some((seq, state)) = self.core.unload_snapshot() else {
            return;
        };
        let store = &self.shared.store;
        let saved = store.save_snapshot(&self.room, seq, state).await;
        let keep = self.shared.config.doc_snapshots_kept;
        if let Err(e) = match saved {
            Ok(()) => store.prune_snapshots(&self.room, keep).await,
            Err(e) => Err(e),
        } {
            tracing::warn!(room = %self.room, error = %e, "saving the unload snapshot failed");
        }
    }

    /// (Re)builds the room's state from the store (the core decides what it becomes). The
    /// caller routes the effects that follows (answers to retries that waited on the old state).
    async fn reload(&mut self) {
        let shared = &self.shared;
        let schema = shared.schema_for(&self.room);
        let loaded =
            super::load::load(shared.store.as_ref(), &self.room, &shared.config, schema).await;
        match &loaded {
            Loaded::Room(r) => {
                if let Some(h) = &r.record.head_hlc {
                    shared.hlc_observe(h);
                }
                if let Some(d) = &r.doc {
                    let unreadable = u64::from(d.unreadable_snapshots);
                    shared.metrics.doc_snapshot_unreadable.inc_by(unreadable);
                }
                self.broken = None;
            }
            Loaded::Corrupt(e) => {
                shared.metrics.doc_load_failures.inc();
                tracing::error!(
                    room = %self.room, error = %e,
                    "the document of this room cannot be loaded from its op log: every message \
                     gets `unavailable`; stop the server and run `concord repair --data-dir DIR \
                     --room ROOM`"
                );
                self.broken = Some(tokio::time::Instant::now() + BROKEN_RETRY);
            }
            Loaded::Failed(e) => {
                tracing::error!(room = %self.room, error = %e, "loading room failed");
            }
            Loaded::Missing => {}
        }
        self.core.loaded(loaded);
        if let Some(now) = self.core.epoch().cloned() {
            if self.loaded_epoch.as_ref().is_some_and(|e| *e != now) {
                self.members_rejoin();
            }
            self.loaded_epoch = Some(now);
        }
    }

    /// The room came back in another epoch (the distributed mode: Redis lost acked events):
    /// its members are told to join again, and get `recovered: false` when they do.
    fn members_rejoin(&mut self) {
        let ids: Vec<u64> = self.members.conns().map(|c| c.conn_id()).collect();
        let now = self.shared.clock.now_ms();
        for member in self.members.conns() {
            self.shared.metrics.error(ErrorCode::Unavailable);
            member.send(Utf8Bytes::from(unavailable_frame(
                &self.room,
                "the room's history was reset (new epoch); join again",
            )));
        }
        for id in ids {
            self.members.remove(id, now);
        }
    }

    /// Handles the messages in `self.buf`, in order.
    async fn handle(&mut self) {
        let retry = self
            .broken
            .is_none_or(|at| tokio::time::Instant::now() >= at);
        if self.core.needs_reload() && retry {
            self.reload().await;
            self.settle().await;
        }
        let buf = std::mem::take(&mut self.buf);
        let found = self.lookup_unknown_keys(&buf).await;
        self.buf = buf;
        // Taken one by one from the back: what is not handled yet stays in `self.buf`.
        self.buf.reverse();
        loop {
            #[cfg(feature = "fault-injection")]
            if self.core.sequencing() > 0 && !self.buf.is_empty() {
                crate::fault::check(&self.room, crate::fault::Point::MidBatch);
            }
            let Some(msg) = self.buf.pop() else { break };
            match msg {
                RoomMsg::Publish(p) => self.publish(p, &found).await,
                RoomMsg::Op(op) => self.op(op, &found),
                RoomMsg::Restore {
                    seq,
                    client,
                    waiter,
                } => {
                    self.submit().await;
                    self.drain_commits().await;
                    self.restore(seq, client, waiter).await;
                }
                RoomMsg::Join {
                    conn,
                    kind,
                    since,
                    history,
                    create,
                    joined,
                    slot,
                } => {
                    // Events sequenced before the join go out through the normal broadcast;
                    // a doc's state is given as committed, so its ops in flight finish first.
                    self.submit().await;
                    if self.core.join_waits_for_commits() {
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
                    drop(slot);
                }
                RoomMsg::Leave { conn_id, notify } => {
                    self.members.remove(conn_id, self.shared.clock.now_ms());
                    self.stats
                        .members
                        .store(self.members.len() as u64, Ordering::Relaxed);
                    if let Some(out) = notify {
                        out.send(Utf8Bytes::from(super::left_frame(&self.room)));
                    }
                }
                RoomMsg::Forward { list, reply } => self.serve_forward(list, reply).await,
                RoomMsg::Presence { conn_id, data } => {
                    // Ignored when the join was refused or the member left meanwhile.
                    let now = self.shared.clock.now_ms();
                    if self.members.set_presence(conn_id, data, now) {
                        self.stats.presence.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Refusals and answers from the table go out at once, in message order.
            self.settle().await;
        }
        self.submit().await;
    }

    /// Hands the batch being sequenced to the store.
    async fn submit(&mut self) {
        self.core.submit();
        self.settle().await;
    }

    /// Creates the missing room as `kind` for `creator`: the room quota (`max_rooms`) and the
    /// creator's room-creation rates apply.
    async fn create(
        &mut self,
        kind: concord_core::RoomKind,
        creator: &Creator,
    ) -> Result<(), RoomError> {
        let shared = &self.shared;
        let max = shared.config.max_rooms;
        if shared.rooms_stored.load(Ordering::Relaxed) >= max {
            shared.metrics.limit(Limit::MaxRooms);
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
            (per_conn, RateScope::RoomCreateConn),
            (per_user, RateScope::RoomCreateUser),
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
        self.settle().await;
        if self.core.is_live() {
            Ok(())
        } else {
            Err(RoomError::new(
                ErrorCode::Unavailable,
                "the store is unavailable",
            ))
        }
    }
}

/// A member is a connection's handle: frames go to its outbound queue, presence to its
/// latest-value slot.
impl MemberConn for ConnHandle {
    fn conn_id(&self) -> u64 {
        self.conn_id
    }
    fn client(&self) -> &concord_core::ClientId {
        &self.client
    }
    fn info(&self) -> &Arc<concord_protocol::outbound::MemberInfo> {
        &self.member
    }
    fn send(&self, frame: Utf8Bytes) -> bool {
        self.out.send(frame)
    }
    fn presence(&self, room: &RoomId, client: &concord_core::ClientId, frame: Utf8Bytes) {
        self.out.presence(room, client, frame)
    }
}

fn unavailable_frame(room: &RoomId, message: &str) -> String {
    RoomError::new(ErrorCode::Unavailable, message).frame(room, None)
}

/// The `event` frame of a stored event: `data` for stream rooms, `ops` (and `hash` when given)
/// for doc rooms.
fn encode_event(
    room: &RoomId,
    kind: concord_core::RoomKind,
    e: &StoredEvent,
    hash: Option<&str>,
) -> Utf8Bytes {
    Utf8Bytes::from(super::event_frame(room, kind, e, hash))
}

/// The answer to everyone waiting on an actor that panicked.
const FAILED_MESSAGE: &str = "the room failed; retry";

/// The actor's drop guard: runs however the actor ends — unloaded, at shutdown, or unwinding from
/// a panic (tokio drops the task's future while unwinding). It removes the registry entry of this
/// generation, so the next message spawns a new actor that reloads the room from the store, and
/// answers everyone still waiting on this actor (in the core: the batch being sequenced, the
/// batches in flight, retries waiting for their seq; and the messages not handled yet) instead
/// of leaving them in silence. After a normal end nothing is left to answer.
impl Drop for RoomActor {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        // No message reaches the mailbox once the entry is gone (sends happen under the shard
        // lock, with the entry present), so draining it below leaves nothing behind.
        self.registry.remove(&self.room, self.generation);
        self.rx.close();
        let metrics = &self.shared.metrics;
        metrics.rooms_active.dec();
        if self.owner.is_some() {
            metrics.doc_rooms_owned.dec();
        }
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
        let mut waiters: Vec<Waiter> = self.core.take_waiters();
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
                        out.send(Utf8Bytes::from(super::left_frame(&self.room)));
                    }
                }
                // The forwarder gets `Unknown` (its answer is dropped) and forwards it again.
                RoomMsg::Presence { .. } | RoomMsg::Forward { .. } => {}
            }
        }
        for w in waiters {
            metrics.error(ErrorCode::Unavailable);
            w.fail(&self.room, failed());
        }
        if panicked {
            // The members are not members of the next actor: they are told to join again
            // (with `since`, to get what they missed).
            for member in self.members.conns() {
                metrics.error(ErrorCode::Unavailable);
                member.send(Utf8Bytes::from(unavailable_frame(
                    &self.room,
                    "the room failed; join again with since to resume",
                )));
            }
        }
    }
}
