//! Joining a room: creation on first join, kind and capacity checks, recovery from `since`
//! (all or nothing), `history`, the doc state, presence and members in `joined`. The shell
//! reads what the window lacks from the store; the core plans the join, fits it in its byte
//! budget (`max_catch_up_bytes`) and builds the frame.

use super::{encode_event, RoomActor};
use crate::metrics::{JoinOutcome, Limit};
use crate::outbound::ConnHandle;
use crate::room::core::{JoinBudget, MemberConn, NoRecovery, RosterDelta};
use crate::room::msg::{Creator, RoomError};
use axum::extract::ws::Utf8Bytes;
use concord_core::{RoomKind, Seq};
use concord_protocol::{ErrorCode, Since};
use std::sync::atomic::Ordering;

impl RoomActor {
    /// Answers `joined` (or an error) and makes the connection a member; true on success.
    pub(super) async fn join(
        &mut self,
        conn: ConnHandle,
        kind: Option<RoomKind>,
        since: Option<Since>,
        history: u64,
        create: Option<Box<Creator>>,
    ) -> bool {
        let fail = |s: &Self, code: ErrorCode, msg: &str| {
            s.shared.metrics.error(code);
            let frame = RoomError::new(code, msg).frame(&s.room, None);
            conn.out.send(Utf8Bytes::from(frame));
            false
        };
        let fixed = self.shared.config.kind_for(self.room.as_str());
        if let (Some(k), Some(f)) = (kind, fixed) {
            if k != f {
                return fail(
                    self,
                    ErrorCode::KindMismatch,
                    &format!("rooms named like this are {} rooms", f.as_str()),
                );
            }
        }
        if self.core.is_missing() {
            let Some(creator) = create else {
                return fail(
                    self,
                    ErrorCode::NotFound,
                    "room does not exist (creating it needs the write right)",
                );
            };
            match kind.or(fixed) {
                Some(k) => {
                    if let Err(e) = self.create(k, &creator).await {
                        self.shared.metrics.error(e.code);
                        conn.out.send(Utf8Bytes::from(e.frame(&self.room, None)));
                        return false;
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
        if !self.read_up_to_since(since.as_ref()).await {
            return fail(
                self,
                ErrorCode::Unavailable,
                "this gateway has not caught up with the room yet; retry",
            );
        }
        let plan = match self.core.plan_join(kind, since.as_ref(), history) {
            Ok(p) => p,
            Err(e) => return fail(self, e.code, &e.message),
        };
        let max_members = self.shared.config.max_members_per_room;
        // Cluster-wide in the distributed mode, from this gateway's view of the roster.
        if !self.members.contains(conn.conn_id) && self.members.cluster_len() >= max_members {
            self.shared.metrics.limit(Limit::MaxMembersPerRoom);
            return fail(
                self,
                ErrorCode::Unavailable,
                &format!("room is full ({max_members} members)"),
            );
        }
        let (committed, after) = (plan.committed, plan.after);
        let (mut recovered, mut outcome) = (plan.recovered, plan.outcome);
        let Ok((mut frames, complete)) = self.catch_up(after, committed).await else {
            return fail(
                self,
                ErrorCode::Unavailable,
                "history is not readable right now; retry",
            );
        };
        let members = self.members.members_json(&conn);
        let budget = JoinBudget::new(self.shared.config.max_catch_up_bytes, &members);
        if recovered {
            if let Err(why) = budget.recovery(&frames, complete) {
                // All or nothing: this becomes a reset.
                if why == NoRecovery::TooBig {
                    self.shared.metrics.limit(Limit::MaxCatchUpBytes);
                }
                (recovered, outcome) = (false, JoinOutcome::Reset);
                let Ok((latest_frames, _)) = self.catch_up(plan.latest, committed).await else {
                    return fail(
                        self,
                        ErrorCode::Unavailable,
                        "history is not readable right now; retry",
                    );
                };
                frames = latest_frames;
            }
        }
        if !recovered {
            budget.keep_newest(&mut frames);
        }
        let (presence, presence_rest) = self.members.presence_within(budget.left_after(&frames));
        if !presence_rest.is_empty() {
            self.shared.metrics.limit(Limit::MaxCatchUpBytes);
        }
        // The distributed mode: a new member takes its seat in Redis (atomic across gateways).
        let seated = !self.members.has_client(conn.client());
        if let (true, Some(point)) = (seated, self.shared.commit_point.clone()) {
            match point.take_seat(&self.room, conn.info(), max_members).await {
                Ok(true) => {}
                Ok(false) => {
                    self.shared.metrics.limit(Limit::MaxMembersPerRoom);
                    return fail(
                        self,
                        ErrorCode::Unavailable,
                        &format!("room is full ({max_members} members)"),
                    );
                }
                Err(e) => {
                    tracing::warn!(room = %self.room, error = %e, "taking a seat failed");
                    return fail(
                        self,
                        ErrorCode::Unavailable,
                        "room membership is not writable right now; retry",
                    );
                }
            }
        }
        let frame = self
            .core
            .joined_frame(&plan, recovered, &frames, &presence, &members);
        self.shared.metrics.join(outcome);
        if conn.out.send(Utf8Bytes::from(frame)) {
            for (client, frame) in presence_rest {
                conn.out.presence(&self.room, &client, frame);
            }
            let now = self.shared.clock.now_ms();
            self.members.add(conn, now);
            self.stats
                .members
                .store(self.members.len() as u64, Ordering::Relaxed);
            true
        } else {
            // Gone before it joined: the seat it took is given back.
            if let (true, Some(c)) = (seated, self.cluster.as_mut()) {
                let mut gone = RosterDelta::default();
                gone.members.insert(conn.client().clone(), None);
                c.tell(gone);
            }
            false
        }
    }

    /// The encoded events after `after` up to `committed`, from memory or from the store, and
    /// whether that is all of them (false when retention removed the oldest: then the events
    /// from the retained floor on).
    async fn catch_up(&mut self, after: Seq, committed: Seq) -> Result<(Vec<Utf8Bytes>, bool), ()> {
        if let Some(frames) = self.core.window_after(after) {
            return Ok((frames, true));
        }
        let Some(kind) = self.core.kind() else {
            return Err(());
        };
        let n = (committed.0 - after.0) as usize;
        match self.shared.store.read_events(&self.room, after, n).await {
            Ok(evs) if evs.len() == n || trimmed_tail(&evs, committed) => {
                let complete = evs.len() == n;
                let frames = evs.iter().map(|e| encode_event(&self.room, kind, e, None));
                Ok((frames.collect(), complete))
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

/// Whether `evs` (a short read) are the events from the retained floor up to `committed`, in
/// order and without gaps: what the store has once retention removed the older ones.
fn trimmed_tail(evs: &[crate::store::StoredEvent], committed: Seq) -> bool {
    evs.last().is_some_and(|e| e.seq == committed)
        && evs.windows(2).all(|w| w[1].seq.0 == w[0].seq.0 + 1)
}
