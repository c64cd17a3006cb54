//! The time of one server: the injected wall clock, timers that follow it, and a test clock.
//!
//! Everything time-based that a test may need to control reads [`Time`]: JWT checks and the
//! expiry timer of a connection, the rate limiters (`limiter.rs`), HLC readings and epochs.
//! With the system clock a timer is a tokio sleep; with a [`TestClock`] a timer fires when the
//! test advances the clock past it, and never on its own.

use concord_core::hlc::SystemClock;
use concord_core::{Clock, ManualClock};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The wall clock a server reads, and how its timers learn that a manual clock moved.
#[derive(Clone)]
pub struct Time {
    wall: Arc<dyn Clock>,
    moved: Option<watch::Receiver<u64>>,
}

impl Time {
    /// The operating system's clock.
    pub fn system() -> Time {
        Time::of(Arc::new(SystemClock))
    }

    /// Any clock; its timers re-read it after sleeping for the time it says is left.
    pub fn of(wall: Arc<dyn Clock>) -> Time {
        Time { wall, moved: None }
    }

    /// The clock itself (shared with the HLC and everything that reads the time).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.wall.clone()
    }

    pub fn now_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// Returns once the clock reads `at_ms` or later.
    pub async fn sleep_until_ms(&self, at_ms: u64) {
        let mut moved = self.moved.clone();
        loop {
            if let Some(rx) = &mut moved {
                rx.borrow_and_update();
            }
            let now = self.wall.now_ms();
            if now >= at_ms {
                return;
            }
            match &mut moved {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The test clock is gone: it will never move again.
                        std::future::pending::<()>().await;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(at_ms - now)).await,
            }
        }
    }
}

impl From<TestClock> for Time {
    fn from(c: TestClock) -> Time {
        Time {
            moved: Some(c.moved.subscribe()),
            wall: Arc::new(c),
        }
    }
}

/// A clock that moves only when the test says so, waking the server's timers when it does.
#[derive(Clone, Debug)]
pub struct TestClock {
    clock: ManualClock,
    moved: Arc<watch::Sender<u64>>,
}

impl TestClock {
    /// A clock reading `ms` milliseconds since the Unix epoch.
    pub fn new(ms: u64) -> TestClock {
        TestClock {
            clock: ManualClock::new(ms),
            moved: Arc::new(watch::channel(ms).0),
        }
    }

    /// A clock starting at the current system time (so tokens with real `exp` claims work).
    pub fn at_system_time() -> TestClock {
        TestClock::new(SystemClock.now_ms())
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by.as_millis() as u64);
        self.moved.send_replace(self.clock.now_ms());
    }

    pub fn set(&self, ms: u64) {
        self.clock.set(ms);
        self.moved.send_replace(ms);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timer_fires_when_the_test_clock_passes_it_and_not_before() {
        let clock = TestClock::new(1_000);
        let time = Time::from(clock.clone());
        let timer = tokio::spawn({
            let time = time.clone();
            async move { time.sleep_until_ms(2_000).await }
        });
        clock.advance(Duration::from_millis(999));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!timer.is_finished(), "fired at 1999 ms");
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(10), timer)
            .await
            .expect("the timer did not fire at 2000 ms")
            .unwrap();
    }
}
