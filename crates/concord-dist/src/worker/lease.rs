//! The worker's heartbeat and partition leases (`{prefix}:T:wo`, value = worker id, TTL =
//! lease): acquire with `SET NX PX`, renew and release only while still the holder.

use redis::RedisResult;

use super::keys::Partition;
use super::stream::Streams;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct Leases {
    streams: Streams,
    me: String,
    lease_ms: u64,
    renew: redis::Script,
    release: redis::Script,
}

impl Leases {
    pub fn new(streams: Streams, me: &str, lease_ms: u64) -> Leases {
        Leases {
            streams,
            me: me.to_string(),
            lease_ms,
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
        }
    }

    /// Refreshes this worker's heartbeat (its key, and its expiry in the workers set), drops
    /// expired workers from the set and counts the live ones (itself included).
    pub async fn heartbeat(&self) -> RedisResult<usize> {
        let keys = self.streams.keys();
        let now = super::now_ms();
        let (live,): (usize,) = redis::pipe()
            .cmd("SET")
            .arg(keys.heartbeat(&self.me))
            .arg(1)
            .arg("PX")
            .arg(self.lease_ms)
            .ignore()
            .cmd("ZADD")
            .arg(keys.workers())
            .arg(now.saturating_add(self.lease_ms))
            .arg(&self.me)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(keys.workers())
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore()
            .cmd("ZCARD")
            .arg(keys.workers())
            .query_async(&mut self.streams.conn())
            .await?;
        Ok(live.max(1))
    }

    /// Drops the heartbeat (a clean stop: the others rebalance at their next tick).
    pub async fn stop(&self) -> RedisResult<()> {
        let keys = self.streams.keys();
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(keys.heartbeat(&self.me))
            .ignore()
            .cmd("ZREM")
            .arg(keys.workers())
            .arg(&self.me)
            .ignore()
            .query_async(&mut self.streams.conn())
            .await?;
        Ok(())
    }

    /// Takes the partition's lease if nobody holds it.
    pub async fn acquire(&self, p: &Partition) -> RedisResult<bool> {
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.streams.keys().owner(p))
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(self.lease_ms)
            .query_async(&mut self.streams.conn())
            .await?;
        Ok(ok.is_some())
    }

    /// Extends the lease if this worker still holds it.
    pub async fn renew(&self, p: &Partition) -> RedisResult<bool> {
        let n: i64 = self
            .renew
            .key(self.streams.keys().owner(p))
            .arg(&self.me)
            .arg(self.lease_ms)
            .invoke_async(&mut self.streams.conn())
            .await?;
        Ok(n == 1)
    }

    /// Gives the lease up if this worker holds it.
    pub async fn release(&self, p: &Partition) -> RedisResult<()> {
        let _: i64 = self
            .release
            .key(self.streams.keys().owner(p))
            .arg(&self.me)
            .invoke_async(&mut self.streams.conn())
            .await?;
        Ok(())
    }
}
