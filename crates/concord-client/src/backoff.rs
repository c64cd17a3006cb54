//! Exponential reconnect/retry backoff with full jitter.

use rand::Rng;
use std::time::Duration;

/// `delay(n)` is uniform in `[0, min(max, initial · 2ⁿ)]` ("full jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The upper bound of the delay after `attempt` previous failures.
    pub(crate) fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(30);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `[0, cap(attempt)]`.
    pub(crate) fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(attempt).as_micros() as u64;
        Duration::from_micros(rng.random_range(0..=cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cap_doubles_then_saturates() {
        let b = Backoff::new(100 * MS, 5000 * MS);
        assert_eq!(b.cap(0), 100 * MS);
        assert_eq!(b.cap(1), 200 * MS);
        assert_eq!(b.cap(5), 3200 * MS);
        assert_eq!(b.cap(6), 5000 * MS);
        assert_eq!(b.cap(31), 5000 * MS);
        assert_eq!(b.cap(u32::MAX), 5000 * MS);
    }

    #[test]
    fn delay_within_bounds_and_jittered() {
        let b = Backoff::new(100 * MS, 5000 * MS);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in [0, 1, 3, 6, 40, u32::MAX] {
            let mut distinct = std::collections::HashSet::new();
            for _ in 0..200 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= b.cap(attempt), "{d:?} > {:?}", b.cap(attempt));
                distinct.insert(d);
            }
            assert!(distinct.len() > 50, "not jittered: {}", distinct.len());
        }
        // the mean of full jitter is about half the cap
        let sum: Duration = (0..2000).map(|_| b.delay(10, &mut rng)).sum();
        let mean = sum / 2000;
        assert!(mean > 2200 * MS && mean < 2800 * MS, "{mean:?}");
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.cap(0), MS);
        assert_eq!(b.cap(9), MS);
        let b = Backoff::new(200 * MS, 50 * MS);
        assert_eq!(b.cap(3), 200 * MS);
    }
}
