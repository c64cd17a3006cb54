//! The PostgreSQL archive of the distributed mode (`PgArchive`): the schema's migrations, the
//! workers' idempotent batch insert and the reads (events by room/after/limit, watermarks, op
//! keys, rooms, snapshots, the client registry), and the store roles it plays (`roles.rs`:
//! `Archive`, `ClientRegistry`, the `History` of what it holds). Schema: docs/distributed.md.

mod copy;
mod error;
mod insert;
mod read;
mod roles;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use error::ArchiveError;
pub use read::{FoundOp, RoomRow, StoredRow};
pub use roles::stored_event;

/// How `insert_batch` moves a batch's events into `events` (docs/benchmarks.md measures both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InsertMethod {
    /// `INSERT … SELECT FROM unnest($1::…[], …) ON CONFLICT DO NOTHING` (one statement).
    #[default]
    Unnest,
    /// Binary COPY into a temporary staging table, then `INSERT … SELECT … ON CONFLICT DO NOTHING`.
    Copy,
}

/// One event as the archive stores it (a work-stream entry, parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedEvent {
    /// The room's virtual partition (its shard is `partition mod K`).
    pub partition: u32,
    pub room: String,
    /// `stream` or `doc`.
    pub kind: String,
    pub epoch: String,
    pub seq: u64,
    pub hlc: String,
    pub from: String,
    pub op_id: Option<String>,
    /// The event's data, JSON text as the client sent it.
    pub data: String,
}

/// Limits of the connection pool.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub max_connections: u32,
    /// How long to wait for a connection (from the pool or a new one) before failing.
    pub acquire_timeout: std::time::Duration,
    pub method: InsertMethod,
    /// PostgreSQL ends a session whose transaction stays idle this long
    /// (`idle_in_transaction_session_timeout`): a writer paused inside a transaction (SIGSTOP)
    /// cannot hold its row locks, and so stall the next owner, for longer than this.
    pub idle_in_transaction_timeout: Option<std::time::Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(5),
            method: InsertMethod::default(),
            idle_in_transaction_timeout: None,
        }
    }
}

/// The archive: a PostgreSQL pool and the number of event shards `K` read from `cluster`.
#[derive(Clone, Debug)]
pub struct PgArchive {
    pool: PgPool,
    shards: u32,
    method: InsertMethod,
}

/// The migrations of `crates/concord-dist/migrations`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the schema's migrations to the database at `url` (idempotent; concurrent callers
/// serialize on sqlx's advisory lock).
pub async fn migrate(url: &str) -> Result<(), ArchiveError> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

impl PgArchive {
    /// Connects with default options. The schema must exist ([`migrate`]).
    pub async fn connect(url: &str) -> Result<PgArchive, ArchiveError> {
        PgArchive::connect_with(url, PgOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: PgOptions) -> Result<PgArchive, ArchiveError> {
        let mut connect: PgConnectOptions = url.parse()?;
        if let Some(t) = options.idle_in_transaction_timeout {
            connect = connect.options([(
                "idle_in_transaction_session_timeout",
                format!("{}ms", t.as_millis().max(1)),
            )]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        let shards: i32 = sqlx::query_scalar("SELECT shards FROM cluster WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let shards = u32::try_from(shards)
            .ok()
            .filter(|k| *k > 0)
            .ok_or_else(|| ArchiveError::Invalid(format!("cluster.shards is {shards}")))?;
        Ok(PgArchive {
            pool,
            shards,
            method: options.method,
        })
    }

    /// Applies the migrations on this archive's pool.
    pub async fn migrate(&self) -> Result<(), ArchiveError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// K, the number of event shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The shard of partition `p`.
    pub fn shard_of(&self, partition: u32) -> i16 {
        // K ≤ i16::MAX in any sane schema; a larger K would fail the insert, not wrap silently.
        i16::try_from(partition % self.shards).unwrap_or(i16::MAX)
    }

    /// Records the cluster's partition count P on first use; refuses another value later.
    pub async fn ensure_partitions(&self, partitions: u32) -> Result<(), ArchiveError> {
        let p = i32::try_from(partitions)
            .map_err(|_| ArchiveError::Invalid(format!("{partitions} partitions")))?;
        sqlx::query("UPDATE cluster SET partitions = $1 WHERE id = 1 AND partitions IS NULL")
            .bind(p)
            .execute(&self.pool)
            .await?;
        let stored: Option<i32> = sqlx::query_scalar("SELECT partitions FROM cluster WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        match stored {
            Some(s) if s == p => Ok(()),
            other => Err(ArchiveError::PartitionsMismatch {
                stored: other.unwrap_or(0),
                given: partitions,
            }),
        }
    }

    /// Writes a batch in ONE transaction: the rooms (first sight wins), the events (a row
    /// already there at the same (shard, room, seq) is left alone, so the same batch twice
    /// writes its rows once) and each room's watermark (raised to the batch's highest seq,
    /// never lowered).
    pub async fn insert_batch(&self, events: &[ArchivedEvent]) -> Result<(), ArchiveError> {
        self.insert_batch_with(events, self.method).await
    }

    /// [`PgArchive::insert_batch`] with an explicit method (benchmarks).
    pub async fn insert_batch_with(
        &self,
        events: &[ArchivedEvent],
        method: InsertMethod,
    ) -> Result<(), ArchiveError> {
        let mut tx = self.pool.begin().await?;
        self.insert_in(&mut tx, events, method).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The batch's statements inside an open transaction (the worker's failpoints sit between
    /// this and COMMIT).
    pub async fn insert_in(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[ArchivedEvent],
        method: InsertMethod,
    ) -> Result<(), ArchiveError> {
        insert::insert(self, tx, events, method).await
    }

    /// Starts a transaction for [`PgArchive::insert_in`].
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ArchiveError> {
        Ok(self.pool.begin().await?)
    }

    /// Records a dead-lettered work entry (once per (partition, entry id)).
    pub async fn dead_letter(
        &self,
        partition: u32,
        entry_id: &str,
        fields: &str,
        error: &str,
        deliveries: u32,
        at_ms: u64,
    ) -> Result<(), ArchiveError> {
        sqlx::query(
            "INSERT INTO dead_letters (partition, entry_id, fields, error, deliveries, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (partition, entry_id) DO NOTHING",
        )
        .bind(i64::from(partition) as i32)
        .bind(entry_id)
        .bind(fields)
        .bind(error)
        .bind(i32::try_from(deliveries).unwrap_or(i32::MAX))
        .bind(i64::try_from(at_ms).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
