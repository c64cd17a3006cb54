//! The queue of unacked publishes: kept in order, resent with the same ids, retried, expired.

use std::collections::{HashSet, VecDeque};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::client::Ack;
use crate::error::ClientError;

pub(crate) type AckReply = oneshot::Sender<Result<Ack, ClientError>>;

/// One publish waiting for its ack.
#[derive(Debug)]
struct Entry {
    room: String,
    id: String,
    /// The encoded `publish` frame, resent as is.
    frame: Utf8Bytes,
    waiters: Vec<AckReply>,
    /// Give up (answer `Timeout`) at this instant.
    deadline: Option<Instant>,
    /// Sent on the current connection and not answered yet.
    in_flight: bool,
    /// How many times it was sent.
    sends: u32,
    /// How many `unavailable` answers it got.
    retries: u32,
    /// Do not send before this instant (retry after `unavailable`).
    not_before: Option<Instant>,
}

/// A frame to write, and whether it is a resend of an id already sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub frame: Utf8Bytes,
    pub resend: bool,
}

/// Unacked publishes in the order they were issued.
#[derive(Debug, Default)]
pub(crate) struct PendingQueue {
    entries: VecDeque<Entry>,
}

impl PendingQueue {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    /// Queues a publish. An id already pending gets one more waiter and is not queued twice
    /// (the server would answer it with the original ack anyway).
    pub(crate) fn push(
        &mut self,
        room: String,
        id: String,
        frame: Utf8Bytes,
        deadline: Option<Instant>,
        reply: AckReply,
    ) {
        if let Some(i) = self.position(&id) {
            self.entries[i].waiters.push(reply);
            return;
        }
        self.entries.push_back(Entry {
            room,
            id,
            frame,
            waiters: vec![reply],
            deadline,
            in_flight: false,
            sends: 0,
            retries: 0,
            not_before: None,
        });
    }

    /// Marks and returns, in queue order, every entry that may be sent now: not in flight, not
    /// waiting for a retry, and not behind an entry of the same room that waits for a retry
    /// (so that one room's publishes are never sent out of order).
    pub(crate) fn take_sendable(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for e in self.entries.iter_mut() {
            if e.in_flight {
                continue;
            }
            if blocked.contains(e.room.as_str()) || e.not_before.is_some_and(|t| t > now) {
                blocked.insert(e.room.as_str());
                continue;
            }
            e.in_flight = true;
            e.not_before = None;
            out.push(Outgoing {
                frame: e.frame.clone(),
                resend: e.sends > 0,
            });
            e.sends += 1;
        }
        out
    }

    /// Removes an answered publish, returning its waiters.
    pub(crate) fn complete(&mut self, id: &str) -> Option<Vec<AckReply>> {
        let i = self.position(id)?;
        self.entries.remove(i).map(|e| e.waiters)
    }

    /// Schedules a resend after a retryable error; `delay` gets the number of earlier retries.
    /// Returns false if the id is not pending.
    pub(crate) fn retry_later(
        &mut self,
        id: &str,
        now: Instant,
        delay: impl FnOnce(u32) -> Duration,
    ) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        let e = &mut self.entries[i];
        e.not_before = Some(now + delay(e.retries));
        e.retries += 1;
        e.in_flight = false;
        true
    }

    /// The connection is gone: nothing is in flight any more, everything will be resent.
    pub(crate) fn connection_lost(&mut self) {
        for e in &mut self.entries {
            e.in_flight = false;
        }
    }

    /// When the queue next needs attention: a retry becoming due or a deadline passing.
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.entries
            .iter()
            .flat_map(|e| {
                let retry = e.not_before.filter(|&t| t > now && !e.in_flight);
                retry.into_iter().chain(e.deadline)
            })
            .min()
    }

    /// Removes the publishes whose deadline has passed, returning their waiters.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<AckReply> {
        let mut expired = Vec::new();
        self.entries.retain_mut(|e| {
            if e.deadline.is_some_and(|d| d <= now) {
                expired.append(&mut e.waiters);
                false
            } else {
                true
            }
        });
        expired
    }

    /// Empties the queue, returning every waiter.
    pub(crate) fn drain(&mut self) -> Vec<AckReply> {
        self.entries.drain(..).flat_map(|e| e.waiters).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: &str) -> Utf8Bytes {
        Utf8Bytes::from(format!("frame {id}"))
    }

    fn push(
        q: &mut PendingQueue,
        room: &str,
        id: &str,
    ) -> oneshot::Receiver<Result<Ack, ClientError>> {
        let (tx, rx) = oneshot::channel();
        q.push(room.into(), id.into(), frame(id), None, tx);
        rx
    }

    fn sent(out: &[Outgoing]) -> Vec<(String, bool)> {
        out.iter()
            .map(|o| {
                (
                    o.frame.as_str().trim_start_matches("frame ").to_string(),
                    o.resend,
                )
            })
            .collect()
    }

    fn ids(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, b)| (s.to_string(), *b)).collect()
    }

    #[test]
    fn sends_in_order_once_then_resends_same_ids_after_reconnect() {
        let now = Instant::now();
        let mut q = PendingQueue::default();
        let _r1 = push(&mut q, "a", "p-1");
        let _r2 = push(&mut q, "b", "p-2");
        let _r3 = push(&mut q, "a", "p-3");
        assert_eq!(
            sent(&q.take_sendable(now)),
            ids(&[("p-1", false), ("p-2", false), ("p-3", false)])
        );
        // in flight: nothing more to send
        assert!(q.take_sendable(now).is_empty());
        let _r4 = push(&mut q, "a", "p-4");
        assert_eq!(sent(&q.take_sendable(now)), ids(&[("p-4", false)]));
        assert!(q.complete("p-2").is_some());
        q.connection_lost();
        assert_eq!(
            sent(&q.take_sendable(now)),
            ids(&[("p-1", true), ("p-3", true), ("p-4", true)])
        );
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn ack_resolves_every_waiter_of_an_id() {
        let mut q = PendingQueue::default();
        let mut r1 = push(&mut q, "a", "x");
        let mut r2 = push(&mut q, "a", "x");
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_sendable(Instant::now()).len(), 1);
        let waiters = q.complete("x").unwrap();
        assert_eq!(waiters.len(), 2);
        for w in waiters {
            let _ = w.send(Err(ClientError::Closed));
        }
        assert_eq!(r1.try_recv().unwrap(), Err(ClientError::Closed));
        assert_eq!(r2.try_recv().unwrap(), Err(ClientError::Closed));
        assert!(q.complete("x").is_none());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn retry_waits_and_holds_back_later_publishes_of_its_room() {
        let now = Instant::now();
        let mut q = PendingQueue::default();
        let _r = push(&mut q, "a", "p-1");
        let _r = push(&mut q, "a", "p-2");
        let _r = push(&mut q, "b", "p-3");
        assert_eq!(q.take_sendable(now).len(), 3);
        assert!(q.complete("p-2").is_some());
        // p-1 answered `unavailable`
        assert!(q.retry_later("p-1", now, |n| {
            assert_eq!(n, 0);
            Duration::from_millis(100)
        }));
        assert!(!q.retry_later("nope", now, |_| Duration::ZERO));
        let _r = push(&mut q, "a", "p-4"); // behind p-1: held back
        let _r = push(&mut q, "b", "p-5"); // other room: goes
        assert_eq!(sent(&q.take_sendable(now)), ids(&[("p-5", false)]));
        assert_eq!(q.next_wakeup(now), Some(now + Duration::from_millis(100)));
        let later = now + Duration::from_millis(100);
        assert_eq!(
            sent(&q.take_sendable(later)),
            ids(&[("p-1", true), ("p-4", false)])
        );
        assert_eq!(q.next_wakeup(later), None);
        // second retry gets the retry count
        assert!(q.retry_later("p-1", later, |n| {
            assert_eq!(n, 1);
            Duration::from_millis(5)
        }));
    }

    #[test]
    fn deadlines_expire_entries() {
        let now = Instant::now();
        let mut q = PendingQueue::default();
        let (tx, mut rx) = oneshot::channel();
        q.push(
            "a".into(),
            "p-1".into(),
            frame("p-1"),
            Some(now + Duration::from_secs(1)),
            tx,
        );
        let _r = push(&mut q, "a", "p-2");
        assert_eq!(q.next_wakeup(now), Some(now + Duration::from_secs(1)));
        assert!(q.expire(now).is_empty());
        let expired = q.expire(now + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        for w in expired {
            let _ = w.send(Err(ClientError::Timeout));
        }
        assert_eq!(rx.try_recv().unwrap(), Err(ClientError::Timeout));
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain().len(), 1);
        assert_eq!(q.len(), 0);
    }
}
