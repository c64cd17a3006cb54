//! Joining: the checks a join must pass and which events it is given — recovery after `since`
//! (all or nothing) or the newest `history`, from the window when it reaches back far enough.

use super::answer::RoomError;
use super::state::State;
use super::{RoomCore, Waiting};
use crate::metrics::JoinOutcome;
use axum::extract::ws::Utf8Bytes;
use concord_core::{RoomKind, Seq, SinceCheck};
use concord_protocol::{ErrorCode, Since};

/// Which events a join gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    pub kind: RoomKind,
    /// The committed head the join is answered at.
    pub committed: Seq,
    /// `since` can be recovered by events: the join gets every event after `after`.
    pub recovered: bool,
    /// The events after this seq (up to `committed`) are sent.
    pub after: Seq,
    /// Where a reset starts (the newest `history` events; none for a doc room).
    pub latest: Seq,
    /// Recovered, reset or fresh (for the metrics).
    pub outcome: JoinOutcome,
}

impl<W: Waiting> RoomCore<W> {
    /// Checks a join of a live room (kind) and plans its catch-up.
    pub fn plan_join(
        &self,
        kind: Option<RoomKind>,
        since: Option<&Since>,
        history: u64,
    ) -> Result<JoinPlan, RoomError> {
        let (live, room_kind) = match &self.state {
            State::Shared { live, log } if log.doc.is_some() => (live, RoomKind::Doc),
            State::Stream(live) | State::Shared { live, .. } => (live, RoomKind::Stream),
            State::Doc { live, .. } => (live, RoomKind::Doc),
            State::Missing => {
                return Err(RoomError::new(ErrorCode::NotFound, "room does not exist"))
            }
            State::Stale { .. } => {
                return Err(RoomError::new(ErrorCode::Unavailable, self.stale_message()))
            }
        };
        if kind.is_some_and(|k| k != room_kind) {
            return Err(RoomError::new(
                ErrorCode::KindMismatch,
                format!("room is a {} room", room_kind.as_str()),
            ));
        }
        let committed = live.seqr.committed();
        // A doc's truth is its state: `history` only applies to stream rooms.
        let history = if room_kind == RoomKind::Doc {
            0
        } else {
            history
        };
        let latest = Seq(committed.0 - history.min(committed.0));
        let window = self.config.recovery_window;
        let (recovered, after, outcome) = match since {
            Some(s) => match live.seqr.check_since(&s.epoch, Seq(s.seq), window) {
                SinceCheck::Recover { after } => (true, after, JoinOutcome::Recovered),
                SinceCheck::Reset { reason } => {
                    tracing::debug!(room = %self.room, reason, "rejoin cannot recover by events");
                    (false, latest, JoinOutcome::Reset)
                }
            },
            None => (false, latest, JoinOutcome::Fresh),
        };
        Ok(JoinPlan {
            kind: room_kind,
            committed,
            recovered,
            after,
            latest,
            outcome,
        })
    }

    /// The committed events after `after`, from the window: `None` when the window does not
    /// reach back that far (the store must be read).
    pub fn window_after(&self, after: Seq) -> Option<Vec<Utf8Bytes>> {
        let live = self.state.live()?;
        if after >= live.seqr.committed() {
            return Some(Vec::new());
        }
        live.window.after(after)
    }
}
