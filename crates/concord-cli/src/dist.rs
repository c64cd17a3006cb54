//! `concord migrate` and `concord worker`: the distributed mode's PostgreSQL schema and its
//! persistence worker (crate concord-dist; docs/distributed.md). Each setting is declared once:
//! its field (doc comment = help), flag, `CONCORD_*` variable and default.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use concord_dist::pg::{InsertMethod, PgOptions};
use concord_dist::worker::{all_partitions, default_worker_id, Worker, WorkerConfig};
use concord_server::config::duration;

use crate::settings::LogFormat;

/// `concord migrate`'s flags.
#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// PostgreSQL URL (postgres://user@host:port/db).
    #[arg(long, env = "CONCORD_POSTGRES_URL", value_name = "URL")]
    pub postgres: String,
}

/// How batches are written (`--insert-method`; docs/benchmarks.md compares them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Multi-row INSERT … SELECT FROM unnest(…).
    Unnest,
    /// Binary COPY into a staging table, then INSERT … SELECT.
    Copy,
}

/// `concord worker`'s flags.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Redis URL (redis://host:port/db).
    #[arg(long, env = "CONCORD_REDIS_URL", value_name = "URL")]
    pub redis: String,
    /// PostgreSQL URL (postgres://user@host:port/db).
    #[arg(long, env = "CONCORD_POSTGRES_URL", value_name = "URL")]
    pub postgres: String,
    /// Prefix of every Redis key (no `{` or `}`).
    #[arg(long, env = "CONCORD_REDIS_PREFIX", default_value = "concord")]
    pub redis_prefix: String,
    /// The cluster's number of virtual partitions P (fixed at cluster creation; 1024–4096 in
    /// production).
    #[arg(long, env = "CONCORD_PARTITIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub partitions: u32,
    /// This worker's id (consumer name and lease value); default: host-pid-random.
    #[arg(long, env = "CONCORD_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Partition lease and heartbeat TTL (renewed every third of it).
    #[arg(long, env = "CONCORD_WORKER_LEASE", default_value = "10s", value_parser = duration::parse)]
    pub lease: Duration,
    /// Most events in one batch (one PostgreSQL transaction).
    #[arg(long, env = "CONCORD_BATCH_MAX_EVENTS", default_value_t = 2000)]
    pub batch_max_events: usize,
    /// Most bytes of entries in one batch.
    #[arg(long, env = "CONCORD_BATCH_MAX_BYTES", default_value_t = 4 << 20)]
    pub batch_max_bytes: usize,
    /// Longest an entry waits before its partition is read again.
    #[arg(long, env = "CONCORD_BATCH_MAX_WAIT", default_value = "20ms", value_parser = duration::parse)]
    pub batch_max_wait: Duration,
    /// Slowest polling of a partition that stays empty.
    #[arg(long, env = "CONCORD_IDLE_POLL_MAX", default_value = "200ms", value_parser = duration::parse)]
    pub idle_poll_max: Duration,
    /// Deliveries of a refused entry before it is dead-lettered.
    #[arg(long, env = "CONCORD_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// Events kept in each room's Redis log below its watermark (the recovery window).
    #[arg(long, env = "CONCORD_LOG_KEEP", default_value_t = 1000)]
    pub log_keep: u64,
    /// Snapshot a doc room's state into PostgreSQL at every multiple of this seq (0: never).
    #[arg(long, env = "CONCORD_SNAPSHOT_EVERY", default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Snapshots kept per doc room.
    #[arg(long, env = "CONCORD_SNAPSHOTS_KEPT", default_value_t = 2)]
    pub snapshots_kept: usize,
    /// Pause before retrying after Redis or PostgreSQL failed.
    #[arg(long, env = "CONCORD_RETRY_DELAY", default_value = "500ms", value_parser = duration::parse)]
    pub retry_delay: Duration,
    /// A consumer of the `persist` group (a worker process) with nothing pending and idle this
    /// long is deleted from the group.
    #[arg(long, env = "CONCORD_CONSUMER_IDLE_MAX", default_value = "60s", value_parser = duration::parse)]
    pub consumer_idle_max: Duration,
    /// Transactions (chunks of partitions' batches) written at once.
    #[arg(long, env = "CONCORD_WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Most PostgreSQL connections.
    #[arg(long, env = "CONCORD_PG_MAX_CONNECTIONS", default_value_t = 8)]
    pub pg_max_connections: u32,
    /// How batches are written.
    #[arg(long, env = "CONCORD_INSERT_METHOD", value_enum, default_value_t = Method::Unnest)]
    pub insert_method: Method,
    /// Serve Prometheus metrics on this address.
    #[arg(long, env = "CONCORD_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Do not apply the schema's migrations at start.
    #[arg(long, env = "CONCORD_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Log format (on stderr; the level comes from `CONCORD_LOG`).
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl WorkerArgs {
    fn config(&self) -> WorkerConfig {
        let mut c = WorkerConfig::new(
            &self.redis,
            &self.postgres,
            all_partitions(self.partitions),
            self.partitions,
        );
        c.redis_prefix = self.redis_prefix.clone();
        c.worker_id = self.worker_id.clone().unwrap_or_else(default_worker_id);
        c.lease = self.lease;
        c.batch_max_events = self.batch_max_events;
        c.batch_max_bytes = self.batch_max_bytes;
        c.batch_max_wait = self.batch_max_wait;
        c.idle_poll_max = self.idle_poll_max;
        c.max_deliveries = self.max_deliveries;
        c.log_keep = self.log_keep;
        c.snapshot_every = self.snapshot_every;
        c.snapshots_kept = self.snapshots_kept;
        c.retry_delay = self.retry_delay;
        c.consumer_idle_max = self.consumer_idle_max;
        c.concurrency = self.concurrency;
        c.metrics_addr = self.metrics_addr;
        c.migrate = !self.no_migrate;
        c.postgres = PgOptions {
            max_connections: self.pg_max_connections,
            method: match self.insert_method {
                Method::Unnest => InsertMethod::Unnest,
                Method::Copy => InsertMethod::Copy,
            },
            ..PgOptions::default()
        };
        c
    }
}

/// `concord migrate`: applies the schema, says so.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    crate::init_logs(LogFormat::Text);
    concord_dist::pg::migrate(&args.postgres)
        .await
        .context("applying the PostgreSQL migrations")?;
    println!("concord migrate: schema up to date");
    Ok(())
}

/// `concord worker`: runs until SIGTERM or ctrl-c, then gives its leases back.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    crate::init_logs(args.log_format);
    let config = args.config();
    let id = config.worker_id.clone();
    Worker::run_with(
        config,
        concord_dist::worker::WorkerMetrics::new(),
        move |metrics| {
            if let Some(m) = metrics {
                println!("concord worker metrics listening on {m}");
            }
            // One line on stdout that scripts (and the tests) wait for.
            println!("concord worker {id} running");
        },
        crate::shutdown_signal(),
    )
    .await
    .context("the worker stopped")?;
    Ok(())
}
