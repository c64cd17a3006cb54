//! The persistence worker (docs/distributed.md, "Workers"): owns partitions through leases,
//! reads their work streams in the `persist` consumer group and writes batches into PostgreSQL
//! exactly once (ON CONFLICT DO NOTHING + XACK after COMMIT), raising each room's watermark.
//!
//! `keys.rs` key names and tags, `entry.rs` work entries, `stream.rs` the Redis calls,
//! `lease.rs` heartbeat and leases, `persist.rs` one step of a partition, `metrics.rs`,
//! `failpoint.rs` (crash tests), `config.rs`.

mod config;
mod entry;
mod failpoint;
pub mod keys;
mod lease;
pub mod metrics;
mod persist;
mod snapshot;
mod stream;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use redis::aio::ConnectionManager;

pub use config::{default_worker_id, WorkerConfig};
pub use entry::Entry;
pub use keys::{all_partitions, Keys, Partition};
pub use metrics::WorkerMetrics;

use crate::pg::{ArchiveError, PgArchive};
use lease::Leases;
use persist::{round, Mode, PartState};
use stream::Streams;

/// Why a worker stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What every step needs.
pub(crate) struct Ctx {
    pub config: WorkerConfig,
    pub streams: Streams,
    pub archive: PgArchive,
    pub metrics: WorkerMetrics,
}

/// The persistence worker.
pub struct Worker;

impl Worker {
    /// Runs a worker until `shutdown` completes (then releases its leases and heartbeat).
    pub async fn run(
        config: WorkerConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        Worker::run_with(config, WorkerMetrics::new(), |_| {}, shutdown).await
    }

    /// [`Worker::run`] with given metrics, calling `ready` with the metrics address (if
    /// served) once it is connected and serving.
    pub async fn run_with(
        config: WorkerConfig,
        metrics: WorkerMetrics,
        ready: impl FnOnce(Option<SocketAddr>),
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        check(&config)?;
        if config.migrate {
            crate::pg::migrate(&config.postgres_url).await?;
        }
        let mut pg = config.postgres.clone();
        // A worker paused inside a transaction must not hold row locks much past its lease.
        pg.idle_in_transaction_timeout.get_or_insert(config.lease);
        let archive = PgArchive::connect_with(&config.postgres_url, pg).await?;
        archive.ensure_partitions(config.total_partitions).await?;
        let client = redis::Client::open(config.redis_url.as_str())?;
        let conn = ConnectionManager::new(client).await?;
        let streams = Streams::new(conn, Keys::new(&config.redis_prefix), &config.worker_id);
        let bound = match config.metrics_addr {
            Some(addr) => Some(
                metrics::serve(addr, metrics.clone())
                    .await
                    .map_err(WorkerError::Metrics)?,
            ),
            None => None,
        };
        let lease_ms = u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX);
        let leases = Leases::new(streams.clone(), &config.worker_id, lease_ms);
        let ctx = Ctx {
            config,
            streams,
            archive,
            metrics,
        };
        tracing::info!(worker = %ctx.config.worker_id, partitions = ctx.config.partitions.len(), metrics = ?bound, "worker started");
        ready(bound);
        let result = run_loop(&ctx, &leases, shutdown).await;
        ctx.archive.close().await;
        result
    }
}

fn check(c: &WorkerConfig) -> Result<(), WorkerError> {
    let bad = |m: &str| Err(WorkerError::Config(m.to_string()));
    if c.redis_prefix.contains('{') || c.redis_prefix.contains('}') {
        return bad("the Redis prefix must not contain { or }");
    }
    if c.lease < Duration::from_millis(30) {
        return bad("the lease must be at least 30 ms");
    }
    if c.batch_max_events == 0 || c.batch_max_bytes == 0 || c.concurrency == 0 {
        return bad("batch limits and concurrency must be positive");
    }
    if c.max_deliveries == 0 {
        return bad("max deliveries must be at least 1");
    }
    Ok(())
}

async fn run_loop(
    ctx: &Ctx,
    leases: &Leases,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let mut owned: BTreeMap<u32, PartState> = BTreeMap::new();
    let tick_every = ctx.config.lease / 3;
    let mut next_tick = Instant::now();
    let mut cursor = 0usize;
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    loop {
        if Instant::now() >= next_tick {
            tick(ctx, leases, &mut owned).await;
            next_tick = Instant::now() + tick_every;
        }
        let worked = round(ctx, &mut owned, &mut cursor).await;
        if (&mut shutdown).now_or_never().is_some() {
            break;
        }
        if worked == 0 {
            let until = next_tick.min(Instant::now() + ctx.config.batch_max_wait);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
    for st in owned.values() {
        if let Err(e) = leases.release(&st.part).await {
            tracing::warn!(partition = st.part.number, error = %e, "releasing a lease");
        }
    }
    let _ = leases.stop().await;
    tracing::info!(worker = %ctx.config.worker_id, "worker stopped");
    Ok(())
}

/// Heartbeat, lease renewal, rebalancing (own up to ⌈P / live⌉), and the backlog gauges.
async fn tick(ctx: &Ctx, leases: &Leases, owned: &mut BTreeMap<u32, PartState>) {
    let started = Instant::now();
    let live = match leases.heartbeat().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed");
            ctx.metrics.errors.inc();
            return;
        }
    };
    let all = &ctx.config.partitions;
    let target = all.len().div_ceil(live);

    // Renew what we hold; forget what we lost.
    let renewals = futures::future::join_all(owned.values().map(|st| leases.renew(&st.part))).await;
    let mut lost = Vec::new();
    for ((n, st), r) in owned.iter_mut().zip(renewals) {
        match r {
            Ok(true) => {
                st.valid_until = started + ctx.config.lease;
                // Sweep the group for entries left by other consumers (a zombie owner).
                st.mode = Mode::Recovering;
            }
            Ok(false) => lost.push(*n),
            Err(e) => {
                tracing::warn!(partition = n, error = %e, "lease renewal failed");
                ctx.metrics.errors.inc();
            }
        }
    }
    for n in lost {
        tracing::info!(partition = n, "partition lease lost");
        owned.remove(&n);
    }
    // Give extras back so that a new worker gets its share.
    while owned.len() > target {
        let Some((n, st)) = owned.pop_last() else {
            break;
        };
        if let Err(e) = leases.release(&st.part).await {
            tracing::warn!(partition = n, error = %e, "releasing a lease");
        }
    }
    // Take free partitions, starting at a place of our own so workers spread.
    if owned.len() < target && !all.is_empty() {
        let start = (keys::crc16(ctx.config.worker_id.as_bytes()) as usize) % all.len();
        for i in 0..all.len() {
            if owned.len() >= target {
                break;
            }
            let p = &all[(start + i) % all.len()];
            if owned.contains_key(&p.number) {
                continue;
            }
            match leases.acquire(p).await {
                Ok(true) => {
                    tracing::info!(partition = p.number, "partition lease acquired");
                    owned.insert(
                        p.number,
                        PartState::new(p.clone(), started + ctx.config.lease),
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(partition = p.number, error = %e, "lease acquisition failed");
                    ctx.metrics.errors.inc();
                    break;
                }
            }
        }
    }
    ctx.metrics.partitions_owned.set(owned.len() as i64);

    // Forget the consumers of dead worker processes (only those with nothing pending).
    let idle_ms = u64::try_from(ctx.config.consumer_idle_max.as_millis()).unwrap_or(u64::MAX);
    let forgets = futures::future::join_all(
        owned
            .values()
            .filter(|st| st.group_ready())
            .map(|st| ctx.streams.forget_idle_consumers(&st.part, idle_ms)),
    )
    .await;
    for r in forgets {
        if let Err(e) = r {
            tracing::debug!(error = %e, "forgetting idle consumers");
        }
    }

    let now = now_ms();
    let backlogs =
        futures::future::join_all(owned.values().map(|st| ctx.streams.backlog(&st.part))).await;
    let mut oldest = 0u64;
    for (st, b) in owned.values().zip(backlogs) {
        if let Ok((len, first)) = b {
            ctx.metrics
                .backlog
                .get_or_create(&metrics::PartitionLabel {
                    partition: st.part.number,
                })
                .set(i64::try_from(len).unwrap_or(i64::MAX));
            if let Some(ms) = first {
                oldest = oldest.max(now.saturating_sub(ms));
            }
        }
    }
    ctx.metrics
        .oldest_pending_ms
        .set(i64::try_from(oldest).unwrap_or(i64::MAX));
}
