//! Ack levels of a gateway: what an `ack` promises about the event it acknowledges.
//!
//! - `memory`: the event is in Redis's memory (and its replicas', asynchronously). A Redis
//!   restart without persistence, or a failover before replication, can lose it.
//! - `redis`: the event is in Redis's append-only file, fsynced before Redis answered
//!   (`appendonly yes`, `appendfsync always` on every master — checked when the gateway
//!   starts): a Redis crash or restart keeps it. (With Redis ≥ 7.2, `WAITAOF` would extend this
//!   to a replica; Redis 7.0 has no such wait.)
//! - `durable`: a worker committed the event to PostgreSQL (the room's persisted watermark
//!   covers it) before the gateway acks it, and no member is sent it before then either: a
//!   loss of Redis (restart without persistence, failover) loses no acked or delivered event,
//!   and the room is rebuilt from PostgreSQL in its epoch (gateway/rebuild.rs). The ack waits
//!   for the workers (their batch wait plus one PostgreSQL commit), and nothing is acked while
//!   they are stopped.

use crate::{LogError, RedisLog};
use concord_server::store::Durability;
use redis::Value;

/// What an ack promises (`--ack-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckLevel {
    Memory,
    Redis,
    Durable,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// The value of one `CONFIG GET` parameter in a master's answer (a map in RESP3, a flat
/// array of name, value in RESP2).
fn config_value(answer: &Value, name: &str) -> Option<String> {
    match answer {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k) == name)
            .map(|(_, v)| text(v)),
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| kv.len() == 2 && text(&kv[0]) == name)
            .map(|kv| text(&kv[1])),
        _ => None,
    }
}

impl AckLevel {
    /// What a commit in Redis promises at this level once it returns (its `CommitLog`
    /// durability): `Fsynced` at `redis`; `Memory` otherwise — at `durable` the ack waits,
    /// on top of the commit, for the workers' PostgreSQL commit (the archive's `Disk`).
    pub fn durability(self) -> Durability {
        match self {
            AckLevel::Redis => Durability::Fsynced,
            AckLevel::Memory | AckLevel::Durable => Durability::Memory,
        }
    }
}

/// Checks that Redis can keep the promise of `level` (`redis`: every master fsyncs its
/// append-only file before answering).
pub async fn check(log: &RedisLog, level: AckLevel) -> Result<(), LogError> {
    if level != AckLevel::Redis {
        return Ok(());
    }
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("append*");
    let answers = log.connection().on_masters(cmd).await?;
    for (addr, answer) in answers {
        let appendonly = config_value(&answer, "appendonly");
        let fsync = config_value(&answer, "appendfsync");
        if appendonly.as_deref() != Some("yes") || fsync.as_deref() != Some("always") {
            let at = if addr.is_empty() {
                "Redis"
            } else {
                addr.as_str()
            };
            return Err(LogError::Config(format!(
                "--ack-level redis needs appendonly yes and appendfsync always on every master; \
                 {at} has appendonly {} and appendfsync {} (or CONFIG is not allowed: {answer:?})",
                appendonly.unwrap_or_default(),
                fsync.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn config_answers_are_read_in_both_protocols() {
        let resp2 = Value::Array(vec![
            bulk("appendonly"),
            bulk("yes"),
            bulk("appendfsync"),
            bulk("always"),
        ]);
        assert_eq!(
            config_value(&resp2, "appendfsync").as_deref(),
            Some("always")
        );
        let resp3 = Value::Map(vec![(bulk("appendonly"), bulk("no"))]);
        assert_eq!(config_value(&resp3, "appendonly").as_deref(), Some("no"));
        assert_eq!(config_value(&resp3, "appendfsync"), None);
        assert_eq!(config_value(&Value::Nil, "appendonly"), None);
    }
}
