//! Token buckets (governor) for rate limits; a disabled bucket always admits.

use crate::config::Rate;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct Bucket(Option<DefaultDirectRateLimiter>);

fn quota(rate: Rate) -> Option<Quota> {
    let per_sec = NonZeroU32::new(rate.per_sec)?;
    let burst = NonZeroU32::new(rate.burst.max(rate.per_sec)).unwrap_or(per_sec);
    Some(Quota::per_second(per_sec).allow_burst(burst))
}

fn wait_ms(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    (wait.as_millis() as u64).max(1)
}

impl Bucket {
    pub fn new(rate: Rate) -> Self {
        Bucket(quota(rate).map(RateLimiter::direct))
    }

    /// Takes one token, or says in how many milliseconds one will be available.
    pub fn check(&self) -> Result<(), u64> {
        match &self.0 {
            None => Ok(()),
            Some(l) => l.check().map_err(wait_ms),
        }
    }
}

/// One token bucket per key (e.g. per user), created on first use; `forget_idle` drops the
/// buckets that are full again, so the map only holds keys active within the last burst.
pub struct KeyedBucket(Option<DefaultKeyedRateLimiter<String>>);

impl KeyedBucket {
    pub fn new(rate: Rate) -> Self {
        KeyedBucket(quota(rate).map(RateLimiter::keyed))
    }

    /// Takes one token of `key`'s bucket, or says in how many milliseconds one will be available.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        match &self.0 {
            None => Ok(()),
            Some(l) => l.check_key(&key.to_string()).map_err(wait_ms),
        }
    }

    /// Forgets the keys whose bucket is full again (they behave as new).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.0 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.0.as_ref().map(|l| l.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_refuses_with_a_wait() {
        let b = Bucket::new(Rate::new(10, 5));
        for _ in 0..10 {
            assert!(b.check().is_ok());
        }
        let wait = b.check().unwrap_err();
        assert!((1..=100).contains(&wait), "{wait}");
        let unlimited = Bucket::new(Rate::UNLIMITED);
        assert!((0..10_000).all(|_| unlimited.check().is_ok()));
    }

    #[test]
    fn keyed_buckets_are_separate_per_key() {
        let b = KeyedBucket::new(Rate::new(10, 3));
        for _ in 0..10 {
            assert!(b.check("alice").is_ok());
        }
        assert!(b.check("alice").is_err());
        assert!(b.check("bob").is_ok());
        assert_eq!(b.len(), 2);
        assert!(KeyedBucket::new(Rate::UNLIMITED).check("x").is_ok());
    }
}
