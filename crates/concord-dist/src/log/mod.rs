//! `RedisLog`: the Rust API of the `concord` function library — create a room, commit events
//! (seqs, hlcs, idempotency, fencing), read a room's log and meta, record what workers
//! persisted, rebuild a lost room. Leases are in `lease.rs`; the store role it plays
//! (`CommitLog`) is `RedisCommitLog` (`commit_log.rs`).

mod commit_log;
mod config;
mod conn;
mod driver;
mod error;
mod parse;
mod types;

pub use commit_log::{store_error, RedisCommitLog};
pub use config::LogConfig;
pub use conn::{RedisConn, RedisTarget};
pub use error::{CommitError, LogError};
pub use types::{
    CommitRequest, Committed, LoggedEvent, NewEvent, Rebuilt, RoomHead, RoomMeta, Watermark,
};

use crate::functions;
use crate::keys::{Keys, RoomKeys};
use crate::partition::Partitions;
use concord_core::{Epoch, HlcText, RoomId, RoomKind, Seq};
use redis::{Cmd, FromRedisValue, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The commit log of every room, in Redis. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct RedisLog {
    conn: RedisConn,
    keys: Keys,
    config: Arc<LogConfig>,
}

impl RedisLog {
    /// Connects, checks the cluster's partition count (recording it when new) and makes sure
    /// the function library is loaded (refusing a newer one).
    pub async fn connect(target: &RedisTarget, config: LogConfig) -> Result<Self, LogError> {
        config.check()?;
        let partitions =
            Partitions::new(config.partitions).map_err(|e| LogError::Config(e.to_string()))?;
        let keys =
            Keys::new(&config.prefix, partitions).map_err(|e| LogError::Config(e.to_string()))?;
        let conn = tokio::time::timeout(
            config.call_timeout,
            RedisConn::connect(target, config.call_timeout),
        )
        .await
        .map_err(|_| LogError::Unknown("timed out connecting to Redis".into()))??;
        let log = RedisLog {
            conn,
            keys,
            config: Arc::new(config),
        };
        log.check_cluster().await?;
        log.bounded(functions::ensure_loaded(&log.conn)).await?;
        Ok(log)
    }

    async fn check_cluster(&self) -> Result<(), LogError> {
        let key = self.keys.cluster();
        let ours = self.config.partitions;
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(&key).arg("partitions").arg(ours);
        self.call_cmd::<i64>(&cmd).await?;
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(&key)
            .arg("created_ms")
            .arg(self.config.clock.now_ms());
        self.call_cmd::<i64>(&cmd).await?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&key).arg("partitions");
        let found: Option<u32> = self.call_cmd(&cmd).await?;
        match found {
            Some(found) if found != ours => Err(LogError::PartitionMismatch { found, ours }),
            _ => Ok(()),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The underlying connection (tests, and the other parts of the crate).
    pub fn connection(&self) -> &RedisConn {
        &self.conn
    }

    /// Runs a future under the call timeout; a timeout is an unknown outcome.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        match tokio::time::timeout(self.config.call_timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.conn.replace_stalled();
                Err(LogError::Unknown(format!(
                    "no answer from Redis within {:?}",
                    self.config.call_timeout
                )))
            }
        }
    }

    /// One command under the call timeout. A Redis that lost the function library (it
    /// restarted empty: no persistence, or a failover to a node that never had it) ran
    /// nothing: the library and the cluster's record are put back and the command is sent
    /// once more.
    pub(crate) async fn call_cmd<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: &Cmd,
    ) -> Result<T, LogError> {
        self.bounded(async {
            match self.conn.query(cmd).await {
                Err(e) if function_missing(&e) => {
                    tracing::warn!(error = %e, "Redis has lost the function library: loading it again");
                    self.record_partitions().await?;
                    functions::ensure_loaded(&self.conn).await?;
                    Ok(self.conn.query(cmd).await?)
                }
                r => Ok(r?),
            }
        })
        .await
    }

    /// `HSETNX {prefix}:cluster partitions P` (without the call timeout: inside a call).
    async fn record_partitions(&self) -> Result<(), LogError> {
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(self.keys.cluster())
            .arg("partitions")
            .arg(self.config.partitions);
        self.conn.query::<i64>(&cmd).await?;
        Ok(())
    }

    fn fcall(name: &str, keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        cmd
    }

    fn room_keys(&self, room: &RoomId) -> RoomKeys {
        self.keys.room(room.as_str())
    }

    /// Creates the room, or answers the existing one (`Exists` when its kind differs).
    pub async fn create_room(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
    ) -> Result<RoomHead, LogError> {
        let rk = self.room_keys(room);
        let mut cmd = Self::fcall("concord_create", &[&rk.meta]);
        cmd.arg(kind.as_str())
            .arg(epoch.as_str())
            .arg(self.config.clock.now_ms());
        let reply: Value = self.call_cmd(&cmd).await?;
        parse::room_head(reply)
    }

    /// Commits events to a room (see `CommitRequest`); one answer per event, in order.
    pub async fn commit(
        &self,
        room: &RoomId,
        req: &CommitRequest,
    ) -> Result<Vec<Committed>, CommitError> {
        if req.events.is_empty() {
            return Ok(Vec::new());
        }
        if req.events.len() > self.config.max_commit_events {
            return Err(LogError::BatchTooLarge {
                len: req.events.len(),
                max: self.config.max_commit_events,
            });
        }
        let rk = self.room_keys(room);
        let buckets = self.config.buckets(self.config.clock.now_ms());
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("concord_commit")
            .arg(3 + buckets.len())
            .arg(&rk.meta)
            .arg(&rk.log)
            .arg(&rk.work);
        for b in &buckets {
            cmd.arg(rk.idem(*b));
        }
        cmd.arg(req.epoch.as_str())
            .arg(req.fence.map(|f| f.to_string()).unwrap_or_default())
            .arg(
                req.expected_head
                    .map(|h| h.0.to_string())
                    .unwrap_or_default(),
            )
            .arg(req.hlc.as_str())
            .arg(&req.node)
            .arg(self.config.idem_ttl_ms())
            .arg(self.config.log_max_len)
            .arg(self.config.recent_buckets)
            .arg(room.as_str());
        for e in &req.events {
            cmd.arg(e.from.as_str())
                .arg(e.op_id.as_ref().map(|o| o.as_str()).unwrap_or(""))
                .arg(e.data.get())
                .arg(if e.resend { "1" } else { "0" })
                .arg(e.key.as_deref().unwrap_or(""));
        }
        let reply: Vec<(u64, String, u8)> = self.call_cmd(&cmd).await?;
        if reply.len() != req.events.len() {
            return Err(LogError::Reply(format!(
                "{} answers for {} events",
                reply.len(),
                req.events.len()
            )));
        }
        reply
            .into_iter()
            .map(|(seq, hlc, dup)| {
                Ok(Committed {
                    seq: Seq(seq),
                    hlc: HlcText::parse(&hlc)
                        .ok_or_else(|| LogError::Reply(format!("bad hlc {hlc:?}")))?,
                    duplicate: dup == 1,
                })
            })
            .collect()
    }

    /// Up to `limit` events of the room's log stream after `after`, in seq order. Events below
    /// the room's `floor` are no longer in Redis (read them from PostgreSQL).
    pub async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, LogError> {
        if limit == 0 {
            // Redis 7.0 answers `XRANGE … COUNT 0` with nil, not an empty page.
            return Ok(Vec::new());
        }
        let rk = self.room_keys(room);
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&rk.log)
            .arg(format!("{}-0", after.0 + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let reply: Value = self.call_cmd(&cmd).await?;
        parse::log_entries(reply)
    }

    /// The room's meta hash, `None` when Redis does not have the room.
    pub async fn room_meta(&self, room: &RoomId) -> Result<Option<RoomMeta>, LogError> {
        let rk = self.room_keys(room);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&rk.meta);
        let map: HashMap<String, String> = self.call_cmd(&cmd).await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse::room_meta(&map).map(Some)
    }

    /// Records that a worker persisted the room up to `seq` (the watermark never lowers; a
    /// raised one is published on the room's channel) and trims the log stream below
    /// `wm − keep`, never the head.
    pub async fn persisted(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        seq: Seq,
        keep: u64,
    ) -> Result<Watermark, LogError> {
        let rk = self.room_keys(room);
        let mut cmd = Self::fcall("concord_persisted", &[&rk.meta, &rk.log, &rk.channel]);
        cmd.arg(epoch.as_str()).arg(seq.0).arg(keep);
        let (wm, floor): (u64, u64) = self.call_cmd(&cmd).await?;
        Ok(Watermark {
            wm: Seq(wm),
            floor: Seq(floor),
        })
    }

    /// Recreates the meta of a room Redis lost, from PostgreSQL's record, when it is absent —
    /// or, given `seen` (epoch, head), when it is still exactly there (a lost tail: its log is
    /// emptied, the new head being above it).
    pub async fn rebuild_over(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        head: Seq,
        hlc: Option<&HlcText>,
        seen: Option<(&Epoch, Seq)>,
    ) -> Result<Rebuilt, LogError> {
        let rk = self.room_keys(room);
        let mut cmd = Self::fcall("concord_rebuild", &[&rk.meta, &rk.log]);
        cmd.arg(kind.as_str())
            .arg(epoch.as_str())
            .arg(head.0)
            .arg(hlc.map(|h| h.as_str()).unwrap_or(""))
            .arg(self.config.clock.now_ms());
        if let Some((e, h)) = seen {
            cmd.arg(e.as_str()).arg(h.0);
        }
        let reply: Value = self.call_cmd(&cmd).await?;
        parse::rebuilt(reply)
    }

    /// Recreates the meta of a room Redis lost, from PostgreSQL's record (only when absent).
    pub async fn rebuild(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        head: Seq,
        hlc: Option<&HlcText>,
    ) -> Result<Rebuilt, LogError> {
        let rk = self.room_keys(room);
        let mut cmd = Self::fcall("concord_rebuild", &[&rk.meta]);
        cmd.arg(kind.as_str())
            .arg(epoch.as_str())
            .arg(head.0)
            .arg(hlc.map(|h| h.as_str()).unwrap_or(""))
            .arg(self.config.clock.now_ms());
        let reply: Value = self.call_cmd(&cmd).await?;
        parse::rebuilt(reply)
    }
}

/// Redis answered that the function called does not exist (it ran nothing).
fn function_missing(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    text.contains("Function not found") || text.contains("function not found")
}
