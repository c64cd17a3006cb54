//! Token buckets (governor) for rate limits, on the server's injected clock; a disabled bucket
//! always admits.

use crate::config::Rate;
use concord_core::Clock;
use governor::clock::Reference;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;

/// governor's clock over the server's [`Clock`]: an instant is the wall time in nanoseconds
/// (millisecond resolution), so a test that advances its clock refills the buckets.
#[derive(Clone)]
pub struct BucketClock(Arc<dyn Clock>);

impl BucketClock {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        BucketClock(clock)
    }
}

impl governor::clock::Clock for BucketClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.now_ms().saturating_mul(1_000_000))
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, BucketClock, NoOpMiddleware<Nanos>>;
type Keyed = RateLimiter<String, DashMapStateStore<String>, BucketClock, NoOpMiddleware<Nanos>>;

pub struct Bucket(Option<(Direct, BucketClock)>);

fn quota(rate: Rate) -> Option<Quota> {
    let per_sec = NonZeroU32::new(rate.per_sec)?;
    let burst = NonZeroU32::new(rate.burst.max(rate.per_sec)).unwrap_or(per_sec);
    Some(Quota::per_second(per_sec).allow_burst(burst))
}

/// Milliseconds until `not_until`, at least 1.
fn wait_ms(not_until: governor::NotUntil<Nanos>, clock: &BucketClock) -> u64 {
    use governor::clock::Clock as _;
    let earliest = not_until.earliest_possible();
    let wait: std::time::Duration = earliest.duration_since(clock.now()).into();
    (wait.as_millis() as u64).max(1)
}

impl Bucket {
    pub fn new(rate: Rate, clock: &Arc<dyn Clock>) -> Self {
        let clock = BucketClock::new(clock.clone());
        Bucket(quota(rate).map(|q| (RateLimiter::direct_with_clock(q, clock.clone()), clock)))
    }

    /// Takes one token, or says in how many milliseconds one will be available.
    pub fn check(&self) -> Result<(), u64> {
        match &self.0 {
            None => Ok(()),
            Some((l, clock)) => l.check().map_err(|n| wait_ms(n, clock)),
        }
    }
}

/// One token bucket per key (e.g. per user), created on first use; `forget_idle` drops the
/// buckets that are full again, so the map only holds keys active within the last burst.
pub struct KeyedBucket(Option<(Keyed, BucketClock)>);

impl KeyedBucket {
    pub fn new(rate: Rate, clock: &Arc<dyn Clock>) -> Self {
        let clock = BucketClock::new(clock.clone());
        KeyedBucket(quota(rate).map(|q| (RateLimiter::dashmap_with_clock(q, clock.clone()), clock)))
    }

    /// Takes one token of `key`'s bucket, or says in how many milliseconds one will be available.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        match &self.0 {
            None => Ok(()),
            Some((l, clock)) => l.check_key(&key.to_string()).map_err(|n| wait_ms(n, clock)),
        }
    }

    /// Forgets the keys whose bucket is full again (they behave as new).
    pub fn forget_idle(&self) {
        if let Some((l, _)) = &self.0 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.0.as_ref().map(|(l, _)| l.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::ManualClock;

    fn manual() -> (ManualClock, Arc<dyn Clock>) {
        let c = ManualClock::new(1_000_000);
        (c.clone(), Arc::new(c))
    }

    #[test]
    fn admits_the_burst_then_refuses_until_the_clock_refills_it() {
        let (time, clock) = manual();
        let b = Bucket::new(Rate::new(10, 5), &clock);
        for _ in 0..10 {
            assert!(b.check().is_ok());
        }
        // 10 per second: the next token comes 100 ms after the burst was taken.
        assert_eq!(b.check(), Err(100));
        time.advance(99);
        assert_eq!(b.check(), Err(1));
        time.advance(1);
        assert!(b.check().is_ok());
        assert_eq!(b.check(), Err(100));
        // A second refills ten tokens, never more than the burst.
        time.advance(5_000);
        assert_eq!((0..20).filter(|_| b.check().is_ok()).count(), 10);
        let unlimited = Bucket::new(Rate::UNLIMITED, &clock);
        assert!((0..10_000).all(|_| unlimited.check().is_ok()));
    }

    #[test]
    fn keyed_buckets_are_separate_per_key_and_forgotten_when_full_again() {
        let (time, clock) = manual();
        let b = KeyedBucket::new(Rate::new(10, 3), &clock);
        for _ in 0..10 {
            assert!(b.check("alice").is_ok());
        }
        assert_eq!(b.check("alice"), Err(100));
        assert!(b.check("bob").is_ok());
        assert_eq!(b.len(), 2);
        b.forget_idle();
        assert_eq!(b.len(), 2, "both buckets are still refilling");
        // Bob's bucket is full again 100 ms later (and forgotten), Alice's a second later.
        time.advance(200);
        b.forget_idle();
        assert_eq!(b.len(), 1);
        time.advance(1_000);
        b.forget_idle();
        assert_eq!(b.len(), 0);
        assert!(KeyedBucket::new(Rate::UNLIMITED, &clock).check("x").is_ok());
    }
}
