//! The shell of a shared stream room (the distributed mode): the commits handed to the commit
//! point (pipelined, their outcomes taken in order), the one fill being read, the room's feed,
//! and the grace after which acked commits that were not delivered are filled.

use crate::cluster::{CommitPoint, Feed, FeedItem, ForwardAnswer};
use crate::room::core::{CommitFailure, CommitResult, NewEvent, RosterDelta};
use crate::store::{Store, StoreResult, StoredEvent};
use concord_core::{Epoch, Fill, RoomId, Seq};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long acked commits may stay undelivered (their notification lost, nothing after it)
/// before they are read from the log.
const FILL_GRACE: Duration = Duration::from_millis(250);

/// The pause before a doc list whose forward got no answer is forwarded again.
const FORWARD_RETRY: Duration = Duration::from_millis(100);
/// How often a room whose acks wait for the persisted watermark reads it (in case a
/// watermark note was lost; not while notes keep coming: a later note covers a lost one).
const READ_PERSISTED: Duration = Duration::from_millis(200);

/// How often a room with members on other gateways checks that those gateways live.
const CHECK_GATEWAYS: Duration = Duration::from_secs(1);

/// A roster delta whose telling failed is told again after this, doubling up to
/// [`TELL_RETRY_MAX`], [`TELL_ATTEMPTS`] times in all (about half a minute).
const TELL_RETRY_FIRST: Duration = Duration::from_millis(100);
const TELL_RETRY_MAX: Duration = Duration::from_secs(4);
const TELL_ATTEMPTS: u32 = 12;

/// The pause before a commit after `streak` unknown outcomes in a row: none, then 50 ms
/// doubling up to 2 s (the core's 8 attempts then cover about 5 s of an unreachable Redis).
fn commit_backoff(streak: u32) -> Duration {
    match streak {
        0 => Duration::ZERO,
        n => (Duration::from_millis(50) * 2u32.saturating_pow(n - 1)).min(Duration::from_secs(2)),
    }
}

type CommitOutcome = Result<Vec<CommitResult>, CommitFailure>;

/// What a resumed feed learns: a new subscription (when the feed had ended), the room's epoch
/// and head, and the other gateways' rosters.
type Resume = (
    Option<Feed>,
    StoreResult<Option<(Epoch, Seq)>>,
    Option<Vec<(String, RosterDelta)>>,
);

/// What happened to a shared room's IO.
pub(super) enum SharedEvent {
    /// The outcome of the oldest commit in flight.
    Committed(CommitOutcome),
    /// The fill read after `after`.
    Filled(Seq, StoreResult<Vec<StoredEvent>>),
    /// Events from the feed.
    Notified(Epoch, Vec<StoredEvent>),
    /// The feed lost notifications (it was resubscribed): the room's epoch and head read
    /// again (`None`: the room is gone), and the other gateways' stored rosters (`None`: they
    /// could not be read; the room keeps what it knows).
    Resumed(
        StoreResult<Option<(Epoch, Seq)>>,
        Option<Vec<(String, RosterDelta)>>,
    ),
    /// The room's persisted watermark (epoch, seq).
    Persisted(Epoch, Seq),
    /// Acked commits are still not delivered after the grace.
    Behind,
    /// What another gateway told about its clients of the room.
    Roster(String, RosterDelta),
    /// Time to check that the gateways with clients here live.
    CheckGateways,
    /// The shell moved on by itself (a roster delta told, a read started or answered
    /// nothing): nothing for the room to do.
    Nothing,
}

pub(super) struct SharedShell {
    room: RoomId,
    point: Arc<dyn CommitPoint>,
    store: Arc<dyn Store>,
    feed: Feed,
    /// Commits (`true`) and doc forwards (`false`), in order; only commits' unknown outcomes
    /// count in `unknown_streak` (a forward waits out its own retry pause).
    commits: FuturesOrdered<BoxFuture<'static, (bool, CommitOutcome)>>,
    /// Commits in a row whose outcome was unknown: the next one waits a little longer
    /// (Redis restarting, failing over), so that the core's attempts span seconds, not
    /// milliseconds, before it answers `unavailable`.
    unknown_streak: u32,
    fill: Option<BoxFuture<'static, (Seq, StoreResult<Vec<StoredEvent>>)>>,
    behind_since: Option<Instant>,
    /// This gateway's roster deltas, told one at a time, in order.
    to_tell: VecDeque<RosterDelta>,
    telling: Option<BoxFuture<'static, Result<(), String>>>,
    check: tokio::time::Interval,
    /// Acks or deliveries wait for the persisted watermark: it is read every
    /// `READ_PERSISTED`.
    waits_for_persisted: bool,
    read_persisted: tokio::time::Interval,
    persisted: Option<BoxFuture<'static, Option<(Epoch, Seq)>>>,
    /// When the last watermark note came.
    last_note: Option<Instant>,
    /// The feed lost notifications: the head and rosters being read again (`resume_again`:
    /// lost more meanwhile, read once more when this one is done). Every call the shell
    /// waits for is a future polled by [`SharedShell::next`], never awaited in an arm's body,
    /// so that the room's other IO goes on meanwhile.
    resuming: Option<BoxFuture<'static, Resume>>,
    resume_again: bool,
}

impl SharedShell {
    /// Subscribes to the room's feed (before the room is loaded, so nothing is missed).
    pub async fn start(room: RoomId, point: Arc<dyn CommitPoint>, store: Arc<dyn Store>) -> Self {
        let feed = point.subscribe(&room).await;
        SharedShell {
            room,
            point,
            store,
            feed,
            commits: FuturesOrdered::new(),
            unknown_streak: 0,
            fill: None,
            behind_since: None,
            to_tell: VecDeque::new(),
            telling: None,
            check: {
                let mut every = tokio::time::interval(CHECK_GATEWAYS);
                // A room without members elsewhere does not tick; when it has some again, it
                // checks once, not once per missed second.
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                every
            },
            waits_for_persisted: false,
            persisted: None,
            last_note: None,
            resuming: None,
            resume_again: false,
            read_persisted: {
                let mut every = tokio::time::interval(READ_PERSISTED);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every
            },
        }
    }

    /// Whether the commit point holds acks until the persisted watermark covers them.
    pub fn durable(&self) -> bool {
        self.point.durable()
    }

    /// Notes whether the core waits for the persisted watermark (it is then read regularly).
    pub fn waits_for_persisted(&mut self, waits: bool) {
        if waits && !self.waits_for_persisted {
            self.read_persisted.reset();
        }
        self.waits_for_persisted = waits;
    }

    /// This gateway's id in the cluster.
    pub fn gateway_id(&self) -> &str {
        self.point.gateway_id()
    }

    /// What the other gateways last told about their clients of the room (a future that does
    /// not borrow the shell).
    /// (`None` when it could not be read: logged here.)
    pub fn load_roster(&self) -> BoxFuture<'static, Option<Vec<(String, RosterDelta)>>> {
        let (point, room) = (self.point.clone(), self.room.clone());
        Box::pin(async move {
            match point.load_roster(&room).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "reading the room's roster failed");
                    None
                }
            }
        })
    }

    /// Which of `gateways` are gone (a future that does not borrow the shell).
    pub fn gone_gateways(&self, gateways: Vec<String>) -> BoxFuture<'static, Vec<String>> {
        let (point, room) = (self.point.clone(), self.room.clone());
        Box::pin(async move { point.gone_gateways(&room, &gateways).await })
    }

    /// Tells the other gateways what changed among this gateway's clients (in order).
    pub fn tell(&mut self, delta: RosterDelta) {
        self.to_tell.push_back(delta);
        self.tell_next();
    }

    fn tell_next(&mut self) {
        if self.telling.is_some() {
            return;
        }
        let Some(delta) = self.to_tell.pop_front() else {
            return;
        };
        let (point, room) = (self.point.clone(), self.room.clone());
        self.telling = Some(Box::pin(async move {
            // A delta not told would leave the other gateways with a ghost or a missing
            // member: it is told again (deltas are idempotent) while Redis is away.
            let mut delay = TELL_RETRY_FIRST;
            for _ in 1..TELL_ATTEMPTS {
                match point.tell_roster(&room, &delta).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, ?delay, "telling the room's roster failed; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(TELL_RETRY_MAX);
                    }
                }
            }
            point.tell_roster(&room, &delta).await
        }));
    }

    /// Tells whatever is still to be told (the room is unloading: its last departures must
    /// reach the other gateways).
    pub async fn finish_telling(&mut self) {
        loop {
            if let Some(telling) = self.telling.take() {
                if let Err(e) = telling.await {
                    tracing::warn!(room = %self.room, error = %e, "telling the room's roster failed");
                }
            }
            self.tell_next();
            if self.telling.is_none() {
                return;
            }
        }
    }

    /// Hands writes to the commit point; the outcome comes back through [`SharedShell::next`].
    pub fn commit(&mut self, epoch: Epoch, events: Vec<NewEvent>) {
        let (point, room) = (self.point.clone(), self.room.clone());
        let delay = commit_backoff(self.unknown_streak);
        self.commits.push_back(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            (true, point.commit(&room, &epoch, events).await)
        }));
    }

    /// Waits for a doc list's answer from the room's owner (in order with the commits). An
    /// `Unknown` answer comes after a pause, so a list forwarded again does not spin while
    /// the room has no owner.
    pub fn forward(&mut self, answer: BoxFuture<'static, ForwardAnswer>) {
        self.commits.push_back(Box::pin(async move {
            let outcome = match answer.await {
                Ok(r) => Ok(vec![r]),
                Err(CommitFailure::Unknown(why)) => {
                    tokio::time::sleep(FORWARD_RETRY).await;
                    Err(CommitFailure::Unknown(why))
                }
                Err(f) => Err(f),
            };
            (false, outcome)
        }));
    }

    /// Whether commits or forwards are in flight.
    pub fn has_commits(&self) -> bool {
        !self.commits.is_empty()
    }

    /// Reads a range of the log for the follower.
    pub fn fill(&mut self, fill: Fill) {
        let (store, room) = (self.store.clone(), self.room.clone());
        let n = (fill.until.0.saturating_sub(fill.after.0)) as usize;
        self.fill = Some(Box::pin(async move {
            (fill.after, store.read_events(&room, fill.after, n).await)
        }));
    }

    /// Notes whether the core is behind its own acks (starting the grace when it becomes so).
    pub fn behind(&mut self, behind: bool) {
        match (behind, self.behind_since) {
            (true, None) => self.behind_since = Some(Instant::now()),
            (false, _) => self.behind_since = None,
            _ => {}
        }
    }

    /// The next thing that happened (pending while nothing does). `check_gateways`: the room
    /// has members on other gateways, whose liveness is checked every second.
    pub async fn next(&mut self, check_gateways: bool) -> SharedEvent {
        let grace_at = self.behind_since.map(|t| t + FILL_GRACE);
        tokio::select! {
            Some((commit, outcome)) = self.commits.next(), if !self.commits.is_empty() => {
                if commit {
                    self.unknown_streak = match &outcome {
                        Err(CommitFailure::Unknown(_)) => self.unknown_streak.saturating_add(1),
                        _ => 0,
                    };
                }
                SharedEvent::Committed(outcome)
            }
            done = async { self.fill.as_mut().expect("checked").await }, if self.fill.is_some() => {
                self.fill = None;
                SharedEvent::Filled(done.0, done.1)
            }
            told = async { self.telling.as_mut().expect("checked").await }, if self.telling.is_some() => {
                self.telling = None;
                if let Err(e) = told {
                    tracing::warn!(room = %self.room, error = %e, "telling the room's roster failed");
                }
                self.tell_next();
                SharedEvent::Nothing
            }
            _ = self.check.tick(), if check_gateways => SharedEvent::CheckGateways,
            _ = self.read_persisted.tick(), if self.waits_for_persisted && self.persisted.is_none() => {
                if self.last_note.is_some_and(|t| t.elapsed() < READ_PERSISTED) {
                    return SharedEvent::Nothing;
                }
                let (point, room) = (self.point.clone(), self.room.clone());
                self.persisted = Some(Box::pin(async move { point.persisted(&room).await }));
                SharedEvent::Nothing
            }
            read = async { self.persisted.as_mut().expect("checked").await }, if self.persisted.is_some() => {
                self.persisted = None;
                match read {
                    Some((epoch, seq)) => SharedEvent::Persisted(epoch, seq),
                    None => SharedEvent::Nothing,
                }
            }
            resumed = async { self.resuming.as_mut().expect("checked").await }, if self.resuming.is_some() => {
                self.resuming = None;
                let (feed, head, roster) = resumed;
                if let Some(feed) = feed {
                    self.feed = feed;
                }
                if std::mem::take(&mut self.resume_again) {
                    self.resume(false);
                }
                SharedEvent::Resumed(head, roster)
            }
            item = self.feed.next() => match item {
                Some(FeedItem::Events { epoch, events }) => SharedEvent::Notified(epoch, events),
                Some(FeedItem::Roster { gw, delta }) => SharedEvent::Roster(gw, delta),
                Some(FeedItem::Persisted { epoch, seq }) => {
                    self.last_note = Some(Instant::now());
                    SharedEvent::Persisted(epoch, seq)
                }
                lost => {
                    let ended = lost.is_none();
                    if ended {
                        // Not polled again until the resumption brings a new subscription.
                        self.feed = Box::pin(futures::stream::pending());
                    }
                    if self.resuming.is_some() && !ended {
                        self.resume_again = true;
                    } else {
                        self.resume(ended);
                    }
                    SharedEvent::Nothing
                }
            },
            _ = tokio::time::sleep_until(grace_at.unwrap_or_else(Instant::now)), if grace_at.is_some() => {
                self.behind_since = None;
                SharedEvent::Behind
            }
        }
    }

    /// Reads the room's head and rosters again (after lost notifications), subscribing again
    /// first when the feed `ended`.
    fn resume(&mut self, ended: bool) {
        let (point, store, room) = (self.point.clone(), self.store.clone(), self.room.clone());
        let roster = self.load_roster();
        self.resuming = Some(Box::pin(async move {
            let feed = match ended {
                true => Some(point.subscribe(&room).await),
                false => None,
            };
            let head = store.load_room(&room).await;
            let head = head.map(|r| r.map(|r| (r.epoch, r.head)));
            (feed, head, roster.await)
        }));
    }

    /// Waits for every commit in flight (at shutdown).
    pub async fn next_commit(&mut self) -> Option<CommitOutcome> {
        self.commits.next().await.map(|(_, outcome)| outcome)
    }
}

/// Events past a rejoin's `since` read with the missing ones (the replica is brought to the
/// log's head, not just to the client's position).
const READ_PAST_SINCE: usize = 1000;

impl super::RoomActor {
    /// Before a join is planned: a rejoin whose `since` is past what this gateway's replica
    /// delivered (its notifications lag, or it loaded the room a moment ago) first reads the
    /// missing events from the log, so that it recovers instead of being served an older
    /// state. False when the log has them but the replica still could not deliver them — it
    /// holds them behind a write of its own whose ack is not back (the join is answered
    /// `unavailable`, to be tried again); a `since` past the log's own head
    /// is left to the join's checks (a reset), so a client's position never makes the
    /// gateway wait for events that do not exist.
    pub(super) async fn read_up_to_since(
        &mut self,
        since: Option<&concord_protocol::Since>,
    ) -> bool {
        let Some(since) = since else {
            return true;
        };
        let Some(after) = self.core.behind_since(&since.epoch, Seq(since.seq)) else {
            return true;
        };
        if after.0 >= since.seq {
            // The replica has the events but holds them behind a write of its own in flight
            // (their owner's answer is not back): not yet.
            return false;
        }
        // What is missing up to `since`, and whatever followed it (up to a bound).
        let missing = (since.seq - after.0) as usize + READ_PAST_SINCE;
        let read = self
            .shared
            .store
            .read_events(&self.room, after, missing)
            .await;
        tracing::debug!(
            room = %self.room,
            since = since.seq,
            delivered = %after,
            read = ?read.as_ref().map(|evs| (evs.first().map(|e| e.seq), evs.last().map(|e| e.seq))),
            "a rejoin past this replica: reading the log"
        );
        match read {
            Ok(events) if events.last().is_some_and(|e| e.seq.0 >= since.seq) => {
                self.core.filled(after, events);
                self.settle().await;
                self.core
                    .behind_since(&since.epoch, Seq(since.seq))
                    .is_none()
            }
            // The log does not reach `since`: not for this gateway to wait for.
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "reading the log for a rejoin failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::commit_backoff;
    use std::time::Duration;

    #[test]
    fn commits_after_unknown_outcomes_back_off_up_to_two_seconds() {
        let ms = |n| commit_backoff(n).as_millis();
        assert_eq!(
            (0..9).map(ms).collect::<Vec<_>>(),
            [0, 50, 100, 200, 400, 800, 1600, 2000, 2000]
        );
        // The core hands a batch over at most 8 times (`MAX_COMMIT_ATTEMPTS`).
        let covered: Duration = (0..8).map(commit_backoff).sum();
        assert!(covered >= Duration::from_secs(5), "{covered:?}");
        assert_eq!(commit_backoff(u32::MAX), Duration::from_secs(2));
    }
}
