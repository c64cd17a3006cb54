//! The archive's reads: events by room/after/limit, watermarks, op keys, rooms, snapshots, and
//! the write-once client registry.

use sqlx::Row;

use super::{ArchiveError, PgArchive};

/// One archived event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub seq: u64,
    pub epoch: String,
    pub hlc: String,
    pub from: String,
    pub op_id: Option<String>,
    pub data: String,
}

/// A room as the archive knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    pub kind: String,
    pub epoch: String,
    pub partition: u32,
    pub created_ms: u64,
}

/// An op found by its key (from, op id): the first seq it was archived at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundOp {
    pub from: String,
    pub op_id: String,
    pub seq: u64,
    pub hlc: String,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn seq_bind(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl PgArchive {
    /// The room's record, `None` if no event of it was archived.
    pub async fn room(&self, room: &str) -> Result<Option<RoomRow>, ArchiveError> {
        let row =
            sqlx::query("SELECT kind, epoch, partition, created_ms FROM rooms WHERE room = $1")
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| RoomRow {
            kind: r.get(0),
            epoch: r.get(1),
            partition: u32::try_from(r.get::<i32, _>(2)).unwrap_or(0),
            created_ms: to_u64(r.get(3)),
        }))
    }

    async fn shard_of_room(&self, room: &str) -> Result<Option<i16>, ArchiveError> {
        Ok(self.room(room).await?.map(|r| self.shard_of(r.partition)))
    }

    /// Up to `limit` events of the room with seq > `after`, in seq order.
    pub async fn read_events(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, ArchiveError> {
        let Some(shard) = self.shard_of_room(room).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT seq, epoch, hlc, from_client, op_id, data FROM events \
             WHERE shard = $1 AND room = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(shard)
        .bind(room)
        .bind(seq_bind(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredRow {
                seq: to_u64(r.get(0)),
                epoch: r.get(1),
                hlc: r.get(2),
                from: r.get(3),
                op_id: r.get(4),
                data: r.get(5),
            })
            .collect())
    }

    /// The room's watermark (epoch, last archived seq), `None` before its first batch.
    pub async fn watermark(&self, room: &str) -> Result<Option<(String, u64)>, ArchiveError> {
        let row = sqlx::query("SELECT epoch, seq FROM watermarks WHERE room = $1")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), to_u64(r.get(1)))))
    }

    /// The archived ops among `keys` (from, op id), each at the first seq it was archived at.
    pub async fn find_ops(
        &self,
        room: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<FoundOp>, ArchiveError> {
        let Some(shard) = self.shard_of_room(room).await? else {
            return Ok(Vec::new());
        };
        let froms: Vec<&str> = keys.iter().map(|(f, _)| f.as_str()).collect();
        let ops: Vec<&str> = keys.iter().map(|(_, o)| o.as_str()).collect();
        let rows = sqlx::query(
            "SELECT DISTINCT ON (e.from_client, e.op_id) e.from_client, e.op_id, e.seq, e.hlc \
             FROM unnest($3::text[], $4::text[]) AS k(f, o) \
             JOIN events e ON e.shard = $1 AND e.room = $2 AND e.from_client = k.f \
               AND e.op_id = k.o \
             ORDER BY e.from_client, e.op_id, e.seq",
        )
        .bind(shard)
        .bind(room)
        .bind(&froms)
        .bind(&ops)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FoundOp {
                from: r.get(0),
                op_id: r.get(1),
                seq: to_u64(r.get(2)),
                hlc: r.get(3),
            })
            .collect())
    }

    /// Saves a doc room's state at `seq`, replacing one at the same seq.
    pub async fn save_snapshot(
        &self,
        room: &str,
        seq: u64,
        state: &str,
    ) -> Result<(), ArchiveError> {
        sqlx::query(
            "INSERT INTO snapshots (room, seq, state) VALUES ($1, $2, $3) \
             ON CONFLICT (room, seq) DO UPDATE SET state = EXCLUDED.state",
        )
        .bind(room)
        .bind(seq_bind(seq))
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a room's snapshots but the newest `keep` (at least one is kept).
    pub async fn prune_snapshots(&self, room: &str, keep: usize) -> Result<(), ArchiveError> {
        sqlx::query(
            "DELETE FROM snapshots WHERE room = $1 AND seq < ( \
               SELECT seq FROM snapshots WHERE room = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)",
        )
        .bind(room)
        .bind(i64::try_from(keep.max(1) - 1).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest snapshot at or before `at` (or the latest of all), as (seq, state).
    pub async fn load_snapshot(
        &self,
        room: &str,
        at: Option<u64>,
    ) -> Result<Option<(u64, String)>, ArchiveError> {
        let row = sqlx::query(
            "SELECT seq, state FROM snapshots WHERE room = $1 AND seq <= $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(room)
        .bind(seq_bind(at.unwrap_or(u64::MAX)))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (to_u64(r.get(0)), r.get(1))))
    }

    /// Binds `client` to `user` unless it is bound already; returns the user it is bound to.
    pub async fn claim_client(&self, client: &str, user: &str) -> Result<String, ArchiveError> {
        // A concurrent first claim may commit between our INSERT's wait and our snapshot: the
        // next round sees it.
        for _ in 0..3 {
            let bound: Option<String> = sqlx::query_scalar(
                "WITH ins AS (INSERT INTO clients (client_id, user_id) VALUES ($1, $2) \
                   ON CONFLICT (client_id) DO NOTHING RETURNING user_id) \
                 SELECT user_id FROM ins UNION ALL \
                 SELECT user_id FROM clients WHERE client_id = $1 LIMIT 1",
            )
            .bind(client)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(bound) = bound {
                return Ok(bound);
            }
        }
        Err(ArchiveError::Invalid(format!(
            "client {client}: no binding visible after claiming it"
        )))
    }

    /// Number of archived events (all rooms): for tests and tools.
    pub async fn event_count(&self) -> Result<u64, ArchiveError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(n))
    }
}
