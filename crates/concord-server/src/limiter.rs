//! Token buckets (governor) for rate limits; a disabled bucket always admits.

use crate::config::Rate;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct Bucket(Option<DefaultDirectRateLimiter>);

impl Bucket {
    pub fn new(rate: Rate) -> Self {
        let Some(per_sec) = NonZeroU32::new(rate.per_sec) else {
            return Bucket(None);
        };
        let burst = NonZeroU32::new(rate.burst.max(rate.per_sec)).unwrap_or(per_sec);
        Bucket(Some(RateLimiter::direct(
            Quota::per_second(per_sec).allow_burst(burst),
        )))
    }

    /// Takes one token, or says in how many milliseconds one will be available.
    pub fn check(&self) -> Result<(), u64> {
        match &self.0 {
            None => Ok(()),
            Some(l) => l.check().map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                (wait.as_millis() as u64).max(1)
            }),
        }
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
}
