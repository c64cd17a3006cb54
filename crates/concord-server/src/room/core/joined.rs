//! The `joined` answer under its byte budget (`max_catch_up_bytes`): the members list first,
//! then the events, then presence. A recovery is all or nothing — events that do not fit, or
//! that retention removed, turn it into a reset; a fresh join or a reset gets the newest events
//! that fit; presence that does not fit follows `joined` as ordinary `presence` frames.

use super::join::JoinPlan;
use super::{RoomCore, Waiting};
use axum::extract::ws::Utf8Bytes;
use concord_protocol::outbound::Joined;
use concord_protocol::{Part, ServerMsg};

/// The bytes a `joined` may spend on events and presence, once the members list is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinBudget {
    cap: usize,
}

/// Why a recovery became a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRecovery {
    /// The events since `since` exceed the budget (counted as the `max_catch_up_bytes` limit).
    TooBig,
    /// Retention removed some of them.
    Trimmed,
}

/// Bytes an event frame takes in `joined.events` (its text and a separator).
fn size(frames: &[Utf8Bytes]) -> usize {
    frames.iter().map(|f| f.len() + 1).sum()
}

impl JoinBudget {
    pub fn new(max_catch_up_bytes: usize, members_json: &str) -> Self {
        JoinBudget {
            cap: max_catch_up_bytes.saturating_sub(members_json.len()),
        }
    }

    /// Whether `frames` (all the events after `since`; `complete` false when retention
    /// removed the oldest) can recover the join.
    pub fn recovery(&self, frames: &[Utf8Bytes], complete: bool) -> Result<(), NoRecovery> {
        if size(frames) > self.cap {
            Err(NoRecovery::TooBig)
        } else if !complete {
            Err(NoRecovery::Trimmed)
        } else {
            Ok(())
        }
    }

    /// Drops the oldest of `frames` until the rest fit.
    pub fn keep_newest(&self, frames: &mut Vec<Utf8Bytes>) {
        let mut total = size(frames);
        let mut drop = 0;
        while total > self.cap && drop < frames.len() {
            total -= frames[drop].len() + 1;
            drop += 1;
        }
        frames.drain(..drop);
    }

    /// What is left for presence once `frames` are in.
    pub fn left_after(&self, frames: &[Utf8Bytes]) -> usize {
        self.cap.saturating_sub(size(frames))
    }
}

impl<W: Waiting> RoomCore<W> {
    /// The `joined` frame of a join planned by [`RoomCore::plan_join`], with its events (already
    /// fitted), presence and members (JSON); a doc room's state and hash unless it recovered
    /// (its ops in flight are committed before a join, so the state is the committed one).
    pub fn joined_frame(
        &self,
        plan: &JoinPlan,
        recovered: bool,
        frames: &[Utf8Bytes],
        presence: &str,
        members: &str,
    ) -> String {
        let doc = self.doc().filter(|_| !recovered);
        ServerMsg::Joined(Joined {
            room: self.room.as_str().into(),
            kind: plan.kind.as_str().into(),
            epoch: self.epoch().map_or("", |e| e.as_str()).into(),
            seq: plan.committed.0,
            recovered,
            // Already encoded (shared with the members' queues): copied, not encoded again.
            events: frames.iter().map(|f| Part::Encoded(f.as_str())).collect(),
            state: doc.map(|d| std::borrow::Cow::Borrowed(&d.state)),
            hash: doc.map(|d| d.hash().into()),
            presence: Part::Encoded(presence),
            members: Part::Encoded(members),
        })
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lens: &[usize]) -> Vec<Utf8Bytes> {
        lens.iter()
            .map(|n| Utf8Bytes::from("x".repeat(*n)))
            .collect()
    }

    #[test]
    fn the_members_list_is_paid_first() {
        let b = JoinBudget::new(100, &"m".repeat(40));
        assert_eq!(b.left_after(&[]), 60);
        // A members list larger than the budget leaves nothing, without underflow.
        assert_eq!(JoinBudget::new(10, &"m".repeat(40)).left_after(&[]), 0);
    }

    #[test]
    fn a_recovery_that_fits_exactly_recovers() {
        // Each frame costs its length plus one.
        let b = JoinBudget::new(30, "");
        assert_eq!(b.recovery(&frames(&[9, 9, 9]), true), Ok(()));
        assert_eq!(b.left_after(&frames(&[9, 9, 9])), 0);
    }

    #[test]
    fn one_byte_over_is_a_reset() {
        let b = JoinBudget::new(30, "");
        assert_eq!(
            b.recovery(&frames(&[9, 9, 10]), true),
            Err(NoRecovery::TooBig)
        );
    }

    #[test]
    fn trimmed_events_are_a_reset_even_when_they_fit() {
        let b = JoinBudget::new(30, "");
        assert_eq!(b.recovery(&frames(&[1]), false), Err(NoRecovery::Trimmed));
        // Too big wins: it is the one counted as a limit.
        assert_eq!(b.recovery(&frames(&[40]), false), Err(NoRecovery::TooBig));
    }

    #[test]
    fn keep_newest_drops_from_the_oldest_end() {
        // 7 + 8 (+ 2 separators) fit in 23; adding 6 (+ 1) would not.
        let b = JoinBudget::new(23, "");
        let mut f = frames(&[5, 6, 7, 8]);
        b.keep_newest(&mut f);
        let lens: Vec<usize> = f.iter().map(|f| f.len()).collect();
        assert_eq!(lens, vec![7, 8], "the newest events that fit, in order");
    }

    #[test]
    fn keep_newest_can_keep_nothing() {
        let b = JoinBudget::new(5, "");
        let mut f = frames(&[10, 10]);
        b.keep_newest(&mut f);
        assert!(f.is_empty());
        let mut none: Vec<Utf8Bytes> = Vec::new();
        b.keep_newest(&mut none);
        assert!(none.is_empty());
    }
}
