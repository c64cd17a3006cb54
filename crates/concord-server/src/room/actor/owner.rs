//! A doc room's ownership in the distributed mode: the gateway holding the room's lease runs
//! a second room core in the embedded doc state (rebase window, apply, limits, schema,
//! idempotency) over the lists forwarded to it — its own clients' and other gateways' — and
//! commits each batch through the commit point with its fence and the expected head. Its
//! answers go back to the forwarders; delivery to members goes through the room's feed on
//! every gateway (the owner core's broadcasts are dropped).
//!
//! The lease is acquired when a list needs an owner and nobody holds it (or a list is
//! forwarded here), renewed every third of `doc_lease`, and released when the room unloads.
//! A renewal that finds the lease lost, a `FENCED` commit, or a lease that lapsed locally ends
//! the ownership: the lists in flight are handed back (`Unknown`: their forwarders forward
//! them again, and whoever owns the room next answers a list that had committed with its
//! original ack). A commit whose outcome is unknown is handed over again with the same ids,
//! fence and expected head (all duplicates are answered without the head check), never
//! answered `unavailable` while it may have landed.

use super::{RoomActor, ShellEnv};
use crate::cluster::{CommitFailure, CommitResult, ForwardAnswer, ForwardedList};
use crate::room::core::{CoreConfig, Effect, RoomCore, RoomError, Waiting};
use concord_core::{OpId, Seq};
use concord_protocol::ErrorCode;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Times an owner commit whose outcome is unknown is handed over again before the lists are
/// handed back to their forwarders.
const COMMIT_TRIES: u32 = 5;
/// The pause before handing a commit over again.
const COMMIT_RETRY: Duration = Duration::from_millis(50);

/// A forwarded list waiting for the owner core's answer.
pub(super) struct Fwd {
    id: Option<OpId>,
    reply: oneshot::Sender<ForwardAnswer>,
}

impl Waiting for Fwd {
    fn op_id(&self) -> Option<&OpId> {
        self.id.as_ref()
    }
}

type OwnerCommit = BoxFuture<'static, Result<(), CommitFailure>>;

/// This gateway's ownership of the room.
pub(super) struct Owner {
    fence: u64,
    core: RoomCore<Fwd>,
    commits: FuturesOrdered<OwnerCommit>,
    /// When the lease is renewed next.
    renew_at: Instant,
    /// Past this (the last renewal's start plus the lease) the lease may be someone else's.
    valid_until: Instant,
}

impl Owner {
    pub fn has_inflight(&self) -> bool {
        self.core.has_inflight() || !self.commits.is_empty()
    }
}

/// What happened to the owner's IO.
pub(super) enum OwnerEvent {
    Committed(Result<(), CommitFailure>),
    Renew,
}

impl RoomActor {
    fn lease(&self) -> Duration {
        self.shared.config.doc_lease.max(Duration::from_millis(3))
    }

    /// The next thing that happens to the ownership (pending without one).
    pub(super) async fn next_owner_event(owner: &mut Option<Owner>) -> OwnerEvent {
        let Some(o) = owner.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(outcome) = o.commits.next(), if !o.commits.is_empty() => OwnerEvent::Committed(outcome),
            _ = tokio::time::sleep_until(o.renew_at) => OwnerEvent::Renew,
        }
    }

    pub(super) async fn on_owner(&mut self, ev: OwnerEvent) {
        match ev {
            OwnerEvent::Committed(outcome) => {
                let fenced = matches!(outcome, Err(CommitFailure::Fenced(_)));
                if let Some(o) = self.owner.as_mut() {
                    o.core.append_done(outcome.map_err(|f| format!("{f:?}")));
                }
                self.owner_settle().await;
                if fenced {
                    self.lose_ownership("another gateway owns the room now");
                }
            }
            OwnerEvent::Renew => self.renew().await,
        }
    }

    async fn renew(&mut self) {
        let Some(point) = self.shared.commit_point.clone() else {
            return;
        };
        let lease = self.lease();
        let started = Instant::now();
        let renewed = point.acquire_lease(&self.room, lease).await;
        let Some(o) = self.owner.as_mut() else {
            return;
        };
        o.renew_at = started + lease / 3;
        let lost = match renewed {
            Ok(Some(fence)) if fence == o.fence => {
                o.valid_until = started + lease;
                None
            }
            Ok(_) => Some("the lease was lost"),
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "renewing the doc lease failed");
                (Instant::now() >= o.valid_until).then_some("the lease lapsed")
            }
        };
        if let Some(why) = lost {
            self.lose_ownership(why);
        }
    }

    /// Acquires the lease when it is free (or this gateway's already) and becomes the owner:
    /// the room is loaded after the acquisition bumped the fence, so it holds every list an
    /// earlier owner committed. Whether this gateway owns the room now.
    pub(super) async fn take_lease(&mut self) -> bool {
        if let Some(o) = &self.owner {
            if Instant::now() < o.valid_until {
                return true;
            }
            self.lose_ownership("the lease lapsed");
        }
        let Some(point) = self.shared.commit_point.clone() else {
            return false;
        };
        let lease = self.lease();
        let started = Instant::now();
        let fence = match point.acquire_lease(&self.room, lease).await {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "acquiring the doc lease failed");
                return false;
            }
        };
        tracing::info!(room = %self.room, fence, "this gateway owns the doc room");
        if self.owner.is_none() {
            self.shared.metrics.doc_rooms_owned.inc();
        }
        let config = CoreConfig::of(&self.shared.config);
        self.owner = Some(Owner {
            fence,
            core: RoomCore::new(self.room.clone(), config, self.shared.metrics.clone()),
            commits: FuturesOrdered::new(),
            renew_at: started + lease / 3,
            valid_until: started + lease,
        });
        // The core asks for its load first.
        self.owner_settle().await;
        true
    }

    /// Ends the ownership: the lists in flight go back to their forwarders (to be forwarded
    /// again to whoever owns the room next); commits in flight are abandoned (fenced, or
    /// found by the next owner's load).
    pub(super) fn lose_ownership(&mut self, why: &str) {
        let Some(mut o) = self.owner.take() else {
            return;
        };
        self.shared.metrics.doc_rooms_owned.dec();
        tracing::info!(room = %self.room, fence = o.fence, reason = why, "this gateway no longer owns the doc room");
        for w in o.core.take_waiters() {
            let _ = w.reply.send(Err(CommitFailure::Unknown(why.to_string())));
        }
    }

    /// Releases the lease (the room unloads).
    pub(super) async fn release_lease(&mut self) {
        if self.owner.take().is_none() {
            return;
        }
        self.shared.metrics.doc_rooms_owned.dec();
        if let Some(point) = self.shared.commit_point.clone() {
            if let Err(e) = point.release_lease(&self.room).await {
                tracing::warn!(room = %self.room, error = %e, "releasing the doc lease failed");
            }
        }
    }

    /// A list forwarded to this gateway (by another one or by this room's own core): served
    /// when this gateway owns the room (acquiring the lease if it is free), else handed back.
    pub(super) async fn serve_forward(
        &mut self,
        list: ForwardedList,
        reply: oneshot::Sender<ForwardAnswer>,
    ) {
        if !self.take_lease().await {
            let _ = reply.send(Err(CommitFailure::Unknown(
                "this gateway does not own the room".into(),
            )));
            return;
        }
        let needs_reload = self.owner.as_ref().is_some_and(|o| o.core.needs_reload());
        if needs_reload {
            self.owner_reload().await;
        }
        // Only the owner writes the log: a base past this owner's document means another
        // gateway committed (this one lost the room without learning it yet).
        let ahead = self
            .owner
            .as_ref()
            .is_some_and(|o| o.core.is_live() && list.base > o.core.assigned());
        if ahead {
            self.lose_ownership("the log moved past this owner");
            let _ = reply.send(Err(CommitFailure::Unknown(
                "this gateway does not own the room".into(),
            )));
            return;
        }
        let ops = match crate::room::doc::list_ops(&list.ops) {
            Ok(ops) => ops,
            Err(e) => {
                let e = RoomError::new(ErrorCode::InvalidOp, e);
                let _ = reply.send(Err(CommitFailure::Refused(e)));
                return;
            }
        };
        let env = ShellEnv {
            shared: &self.shared,
            rate: &self.rate,
        };
        let o = self.owner.as_mut().expect("taken");
        let w = Fwd {
            id: list.op_id.clone(),
            reply,
        };
        o.core
            .op(list.client, list.base, &ops, w, &Ok(HashMap::new()), &env);
        o.core.submit();
        self.owner_settle().await;
    }

    /// Carries out the owner core's effects (reloading when it asks to).
    async fn owner_settle(&mut self) {
        while self.route_owner() {
            self.owner_reload().await;
        }
    }

    async fn owner_reload(&mut self) {
        let schema = self.shared.schema_for(&self.room);
        let loaded = crate::room::load::load(
            self.shared.store.as_ref(),
            &self.room,
            &self.shared.config,
            schema,
        )
        .await;
        if let crate::room::core::Loaded::Room(r) = &loaded {
            if let Some(h) = &r.record.head_hlc {
                self.shared.hlc_observe(h);
            }
        }
        if let Some(o) = self.owner.as_mut() {
            o.core.loaded(loaded);
        }
    }

    /// The owner core's effects: commits go to the commit point with the fence, answers to
    /// the forwarders; broadcasts are dropped (every gateway delivers from the feed). True
    /// when it asks for a reload.
    fn route_owner(&mut self) -> bool {
        let (Some(o), Some(point)) = (self.owner.as_mut(), self.shared.commit_point.clone()) else {
            return false;
        };
        let mut reload = false;
        let epoch = o.core.epoch().cloned();
        for effect in o.core.drain() {
            match effect {
                Effect::Append(append) => {
                    let (room, fence, epoch) = (self.room.clone(), o.fence, epoch.clone());
                    let point = point.clone();
                    let events = append.events;
                    o.commits.push_back(Box::pin(async move {
                        let Some(epoch) = epoch else {
                            return Err(CommitFailure::Moved("the room is not loaded".into()));
                        };
                        let want: Vec<Seq> = events.iter().map(|e| e.seq).collect();
                        let mut tries = 0;
                        loop {
                            match point.commit_doc(&room, &epoch, fence, events.clone()).await {
                                Ok(r) if r.iter().map(|c| c.seq).eq(want.iter().copied()) => {
                                    return Ok(())
                                }
                                Ok(_) => {
                                    return Err(CommitFailure::Moved(
                                        "the log holds other seqs for these lists".into(),
                                    ))
                                }
                                Err(CommitFailure::Unknown(why)) if tries + 1 < COMMIT_TRIES => {
                                    tracing::debug!(room = %room, error = %why, "owner commit outcome unknown; handing it over again");
                                    tries += 1;
                                    tokio::time::sleep(COMMIT_RETRY).await;
                                }
                                Err(f) => return Err(f),
                            }
                        }
                    }));
                }
                Effect::Ack {
                    waiter,
                    acked,
                    fresh,
                } => {
                    let _ = waiter.reply.send(Ok(CommitResult {
                        seq: acked.seq,
                        hlc: acked.hlc,
                        duplicate: !fresh,
                        dropped: acked.dropped,
                    }));
                }
                Effect::Fail { waiter, error } => {
                    // A passing failure (a commit failed, the room reloads) hands the list
                    // back to be forwarded again; a refusal is the forwarder's answer.
                    let answer = if error.code == ErrorCode::Unavailable {
                        CommitFailure::Unknown(error.message)
                    } else {
                        CommitFailure::Refused(error)
                    };
                    let _ = waiter.reply.send(Err(answer));
                }
                Effect::Broadcast(_) => {}
                Effect::Reload => reload = true,
                Effect::Commit(_) | Effect::Fill(_) | Effect::Forward(_) => {
                    debug_assert!(false, "an owner core follows no log");
                }
            }
        }
        reload
    }
}
