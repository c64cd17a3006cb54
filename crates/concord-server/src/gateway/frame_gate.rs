//! The read rate of one connection, checked before a frame is parsed: each text frame takes a
//! token of `rate_frames_per_conn`; without one, the connection is not read again until a
//! token comes back (TCP pushes the cost back to the sender: its frames wait in its own
//! buffers), it is told once per second with a `rate_limited` notice, and a connection that
//! stays throttled for `flood_close_after` is closed with 1008.
//!
//! Invariant: no frame is dropped or answered unread; a frame read without a token waits, and
//! is handled once the pause ends. A connection is "throttled" from a pause that began more
//! than [`RESPITE_MS`] after the previous one ended, for as long as its pauses follow each other
//! closer than that (a sender that always has its next frame ready).

use crate::config::Rate;
use crate::limiter::Bucket;
use concord_core::Clock;
use std::sync::Arc;

/// How often a throttled connection is told (`rate_limited` with `retry_after_ms`).
const NOTICE_EVERY_MS: u64 = 1_000;
/// A pause that begins this long after the previous one ended starts a new throttling.
pub const RESPITE_MS: u64 = 1_000;

/// What to do with a frame just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Handle it now.
    Now,
    /// Hold it and read nothing more until `until` (milliseconds on the server's clock), then
    /// ask [`FrameGate::admit`] again; `notice`: tell the connection, with this
    /// `retry_after_ms`.
    Pause { until: u64, notice: Option<u64> },
    /// Throttled for `flood_close_after` without respite: close the connection (1008).
    Close,
}

pub struct FrameGate {
    clock: Arc<dyn Clock>,
    bucket: Bucket,
    /// 0 = never close.
    close_after_ms: u64,
    /// Since when the connection is throttled.
    throttled_since: u64,
    /// When the last pause ended (or ends).
    paused_until: Option<u64>,
    /// When it was last told.
    noticed_at: Option<u64>,
}

impl FrameGate {
    pub fn new(rate: Rate, close_after_ms: u64, clock: &Arc<dyn Clock>) -> Self {
        FrameGate {
            clock: clock.clone(),
            bucket: Bucket::new(rate, clock),
            close_after_ms,
            throttled_since: 0,
            paused_until: None,
            noticed_at: None,
        }
    }

    /// A frame was read, or the pause of the held frame ended: take a token for it.
    pub fn admit(&mut self) -> Admit {
        match self.bucket.check() {
            Ok(()) => Admit::Now,
            Err(wait) => self.pause(wait),
        }
    }

    fn pause(&mut self, wait: u64) -> Admit {
        let now = self.clock.now_ms();
        if self
            .paused_until
            .is_none_or(|end| now.saturating_sub(end) > RESPITE_MS)
        {
            self.throttled_since = now;
        }
        let until = now.saturating_add(wait);
        self.paused_until = Some(until);
        if self.close_after_ms > 0
            && now.saturating_sub(self.throttled_since) >= self.close_after_ms
        {
            return Admit::Close;
        }
        let due = self
            .noticed_at
            .is_none_or(|at| now.saturating_sub(at) >= NOTICE_EVERY_MS);
        if due {
            self.noticed_at = Some(now);
        }
        Admit::Pause {
            until,
            notice: due.then_some(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::ManualClock;

    fn gate(rate: Rate, close_after_ms: u64) -> (ManualClock, FrameGate) {
        let time = ManualClock::new(1_000_000);
        let clock: Arc<dyn Clock> = Arc::new(time.clone());
        (time, FrameGate::new(rate, close_after_ms, &clock))
    }

    #[test]
    fn frames_within_the_rate_are_read_at_once() {
        let (_, mut g) = gate(Rate::new(10, 10), 0);
        for _ in 0..10 {
            assert_eq!(g.admit(), Admit::Now);
        }
    }

    #[test]
    fn a_frame_beyond_the_burst_pauses_reading_until_a_token_comes_back_and_is_then_handled() {
        let (time, mut g) = gate(Rate::new(10, 10), 0);
        for _ in 0..10 {
            g.admit();
        }
        // 10 per second: the next token 100 ms after the burst was taken; the first pause is
        // told.
        assert_eq!(
            g.admit(),
            Admit::Pause {
                until: 1_000_100,
                notice: Some(100)
            }
        );
        time.advance(100);
        assert_eq!(g.admit(), Admit::Now);
    }

    #[test]
    fn a_throttled_connection_is_told_once_a_second() {
        let (time, mut g) = gate(Rate::new(10, 10), 0);
        for _ in 0..10 {
            g.admit();
        }
        let mut notices = 0;
        // 3 s of a sender that always has the next frame ready.
        for _ in 0..30 {
            let Admit::Pause { until, notice } = g.admit() else {
                panic!("not paused")
            };
            notices += usize::from(notice.is_some());
            time.set(until);
            assert_eq!(g.admit(), Admit::Now);
        }
        assert_eq!(notices, 3);
    }

    #[test]
    fn a_connection_throttled_without_respite_for_close_after_is_closed() {
        let (time, mut g) = gate(Rate::new(10, 10), 2_000);
        for _ in 0..10 {
            g.admit();
        }
        let mut read = 0;
        loop {
            match g.admit() {
                Admit::Now => read += 1,
                Admit::Pause { until, .. } => {
                    time.set(until);
                    assert_eq!(g.admit(), Admit::Now);
                    read += 1;
                }
                Admit::Close => break,
            }
        }
        // 2 s at 10 per second: 20 frames read while throttled, then the close.
        assert_eq!(read, 20);
        assert_eq!(time.now_ms(), 1_002_000);
    }

    #[test]
    fn a_sender_that_pauses_longer_than_the_respite_starts_a_new_throttling() {
        let (time, mut g) = gate(Rate::new(10, 10), 2_000);
        for _ in 0..10 {
            g.admit();
        }
        let Admit::Pause { until, .. } = g.admit() else {
            panic!("not paused")
        };
        time.set(until);
        g.admit();
        // The sender pauses longer than the respite: its next burst starts a new count towards
        // the close, which a throttled run of close_after would have reached by now.
        time.advance(RESPITE_MS + 1);
        for _ in 0..10 {
            assert_eq!(g.admit(), Admit::Now);
        }
        for _ in 0..15 {
            let Admit::Pause { until, .. } = g.admit() else {
                panic!("not paused")
            };
            time.set(until);
            assert_eq!(g.admit(), Admit::Now);
        }
        assert!(time.now_ms() - 1_000_000 >= 2_000);
        assert!(matches!(g.admit(), Admit::Pause { .. }));
    }

    #[test]
    fn an_unlimited_rate_never_pauses() {
        let (_, mut g) = gate(Rate::UNLIMITED, 1);
        for _ in 0..10_000 {
            assert_eq!(g.admit(), Admit::Now);
        }
    }
}
