//! `WorkerConfig`: every setting and limit of a persistence worker.

use std::net::SocketAddr;
use std::time::Duration;

use super::keys::Partition;
use crate::pg::PgOptions;

/// A persistence worker's settings (defaults: `WorkerConfig::new`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub redis_url: String,
    /// Key prefix (docs/distributed.md; no `{`).
    pub redis_prefix: String,
    pub postgres_url: String,
    /// The cluster's partition count P (recorded in PostgreSQL; another value is refused).
    pub total_partitions: u32,
    /// The partitions this worker may own (every worker of a cluster gets the same list).
    pub partitions: Vec<Partition>,
    /// This worker's id: its consumer name in the `persist` groups and its lease value.
    pub worker_id: String,
    /// Partition lease and heartbeat TTL; renewed every lease/3. Entries pending on another
    /// consumer are claimed once idle this long.
    pub lease: Duration,
    /// At most this many entries per batch (one PostgreSQL transaction).
    pub batch_max_events: usize,
    /// At most this many bytes of entry fields per batch (a larger single entry goes alone).
    pub batch_max_bytes: usize,
    /// An idle partition is polled this often: the longest an entry waits to join a batch.
    pub batch_max_wait: Duration,
    /// A partition that stays empty is polled less and less often, down to once per this.
    pub idle_poll_max: Duration,
    /// An entry refused this many deliveries is dead-lettered.
    pub max_deliveries: u32,
    /// Events kept in a room's log stream below the watermark (the recovery window).
    pub log_keep: u64,
    /// A doc room's state is snapshotted into PostgreSQL at every seq that is a multiple of
    /// this (replaying the persisted ops on the last snapshot); 0: never.
    pub snapshot_every: u64,
    /// Snapshots kept per doc room (older ones are deleted after a new one is written).
    pub snapshots_kept: usize,
    /// A consumer of the `persist` group (a worker process) with nothing pending and idle this
    /// long is deleted from the group by the partition's owner.
    pub consumer_idle_max: Duration,
    /// Pause after a transient failure (Redis or PostgreSQL unreachable) before retrying.
    pub retry_delay: Duration,
    /// Transactions written at once (each a chunk of several partitions' batches).
    pub concurrency: usize,
    /// Where `/metrics` is served (none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Apply the schema's migrations at start.
    pub migrate: bool,
    pub postgres: PgOptions,
}

impl WorkerConfig {
    /// Defaults for everything but the addresses and the partitions.
    pub fn new(
        redis_url: &str,
        postgres_url: &str,
        partitions: Vec<Partition>,
        total: u32,
    ) -> Self {
        WorkerConfig {
            redis_url: redis_url.to_string(),
            redis_prefix: "concord".to_string(),
            postgres_url: postgres_url.to_string(),
            total_partitions: total,
            partitions,
            worker_id: default_worker_id(),
            lease: Duration::from_secs(10),
            batch_max_events: 2000,
            batch_max_bytes: 4 << 20,
            batch_max_wait: Duration::from_millis(20),
            idle_poll_max: Duration::from_millis(200),
            max_deliveries: 5,
            log_keep: 1000,
            snapshot_every: 1000,
            snapshots_kept: 2,
            retry_delay: Duration::from_millis(500),
            consumer_idle_max: Duration::from_secs(60),
            concurrency: 4,
            metrics_addr: None,
            migrate: true,
            postgres: PgOptions::default(),
        }
    }
}

/// `host-pid-random`: unique per process.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}
