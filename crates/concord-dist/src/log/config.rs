//! The settings of a `RedisLog`: prefix, partitions, call timeout, idempotency window and
//! buckets, log cap, batch limit, and the injected clock.

use super::LogError;
use concord_core::hlc::SystemClock;
use concord_core::Clock;
use std::sync::Arc;
use std::time::Duration;

/// At most this many idempotency buckets per window (each is a key a commit touches).
pub const MAX_BUCKETS: u64 = 64;

#[derive(Clone)]
pub struct LogConfig {
    /// The Redis key prefix (no braces).
    pub prefix: String,
    /// The cluster's partition count (1024..=4096), fixed at creation.
    pub partitions: u32,
    /// Every call's deadline; past it the outcome is `Unknown`.
    pub call_timeout: Duration,
    /// How long op keys are remembered in Redis.
    pub idem_window: Duration,
    /// The width of one idempotency bucket.
    pub idem_bucket: Duration,
    /// How many buckets (newest first) every event is looked up in; resends look in all.
    pub recent_buckets: u32,
    /// The most events a room's log stream keeps whatever the watermark (0: no cap).
    pub log_max_len: u64,
    /// The most events one commit call may carry.
    pub max_commit_events: usize,
    /// The clock of the idempotency buckets and of `created_ms`.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            prefix: "concord".into(),
            partitions: 1024,
            call_timeout: Duration::from_secs(2),
            idem_window: Duration::from_secs(600),
            idem_bucket: Duration::from_secs(60),
            recent_buckets: 2,
            log_max_len: 0,
            max_commit_events: 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("call_timeout", &self.call_timeout)
            .field("idem_window", &self.idem_window)
            .field("idem_bucket", &self.idem_bucket)
            .field("recent_buckets", &self.recent_buckets)
            .field("log_max_len", &self.log_max_len)
            .field("max_commit_events", &self.max_commit_events)
            .finish_non_exhaustive()
    }
}

impl LogConfig {
    pub(crate) fn check(&self) -> Result<(), LogError> {
        let bucket = self.idem_bucket.as_millis();
        if bucket == 0 {
            return Err(LogError::Config("idem_bucket must be at least 1 ms".into()));
        }
        if self.idem_window < self.idem_bucket {
            return Err(LogError::Config(
                "idem_window must be at least one idem_bucket".into(),
            ));
        }
        if self.bucket_count() > MAX_BUCKETS {
            return Err(LogError::Config(format!(
                "idem_window / idem_bucket must be below {MAX_BUCKETS}"
            )));
        }
        if self.recent_buckets == 0 {
            return Err(LogError::Config("recent_buckets must be at least 1".into()));
        }
        if self.call_timeout.is_zero() || self.max_commit_events == 0 {
            return Err(LogError::Config(
                "call_timeout and max_commit_events must be positive".into(),
            ));
        }
        Ok(())
    }

    fn bucket_ms(&self) -> u64 {
        self.idem_bucket.as_millis().max(1) as u64
    }

    /// Buckets covering the window: the current one and every one that may hold a key seen
    /// less than a window ago.
    fn bucket_count(&self) -> u64 {
        (self.idem_window.as_millis() as u64).div_ceil(self.bucket_ms()) + 1
    }

    /// The bucket numbers a commit at `now_ms` looks in, newest first.
    pub fn buckets(&self, now_ms: u64) -> Vec<u64> {
        let current = now_ms / self.bucket_ms();
        (0..self.bucket_count())
            .map_while(|i| current.checked_sub(i))
            .collect()
    }

    /// A bucket's time to live after its last write: the window plus one bucket.
    pub fn idem_ttl_ms(&self) -> u64 {
        self.idem_window.as_millis() as u64 + self.bucket_ms()
    }
}
