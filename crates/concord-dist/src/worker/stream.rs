//! The worker's Redis calls on a partition's work stream (consumer group `persist`), its dead
//! letters, and the watermark update of a room (`persisted`, the one call the function library's
//! `concord_persisted` replaces).

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};

use super::entry::{self, Entry};
use super::keys::{Keys, Partition, GROUP};

/// Raises the room's `wm` to ARGV[2] (never lowers it; skipped when the meta's epoch is not
/// ARGV[1], i.e. the room started a new history, or when Redis has no such room: it is
/// rebuilt from PostgreSQL by the next gateway that loads it), publishes the raised watermark
/// on the room's channel (KEYS[3]: `{"epoch","wm"}`, what gateways acking at the level
/// `durable` wait for) and trims the log below `wm − keep`, never the head, recording `floor`.
/// Returns the room's head (0 when unknown).
const PERSISTED: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return 0 end
local head = tonumber(redis.call('HGET', KEYS[1], 'head') or '0') or 0
if epoch ~= ARGV[1] then return head end
local seq = tonumber(ARGV[2])
local wm = tonumber(redis.call('HGET', KEYS[1], 'wm') or '0') or 0
if seq > wm then
  redis.call('HSET', KEYS[1], 'wm', ARGV[2])
  wm = seq
  redis.call('PUBLISH', KEYS[3], '{"epoch":' .. cjson.encode(epoch) .. ',"wm":' .. ARGV[2] .. '}')
end
local minid = wm - tonumber(ARGV[3])
if head > 0 and minid > head then minid = head end
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0') or 0
if minid > 1 and minid > floor then
  redis.call('XTRIM', KEYS[2], 'MINID', minid)
  redis.call('HSET', KEYS[1], 'floor', minid)
end
return head
"#;

/// Deletes the group's consumers other than ARGV[1] that have nothing pending and were idle at
/// least ARGV[2] ms (consumers of dead worker processes), atomically: a consumer cannot take an
/// entry between the check and the delete. Returns how many.
const FORGET: &str = r#"
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], 'persist')) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name ~= ARGV[1] and pending == 0 and idle >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'persist', name)
    n = n + 1
  end
end
return n
"#;

/// Redis access for one worker.
#[derive(Clone)]
pub struct Streams {
    conn: ConnectionManager,
    keys: Keys,
    me: String,
    persisted: redis::Script,
    forget: redis::Script,
}

impl Streams {
    pub fn new(conn: ConnectionManager, keys: Keys, me: &str) -> Streams {
        Streams {
            conn,
            keys,
            me: me.to_string(),
            persisted: redis::Script::new(PERSISTED),
            forget: redis::Script::new(FORGET),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Creates the `persist` group (and the stream) if missing.
    pub async fn ensure_group(&self, p: &Partition) -> RedisResult<()> {
        let r: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.work(p))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Claims up to `count` entries pending on any consumer and idle at least `idle_ms`.
    pub async fn autoclaim(
        &self,
        p: &Partition,
        idle_ms: u64,
        count: usize,
    ) -> RedisResult<Vec<Entry>> {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.work(p))
            .arg(GROUP)
            .arg(&self.me)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(entry::from_xautoclaim(&v))
    }

    /// This consumer's pending entries (`0`) or new entries (`>`).
    pub async fn read(&self, p: &Partition, from: &str, count: usize) -> RedisResult<Vec<Entry>> {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.me)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.keys.work(p))
            .arg(from)
            .query_async(&mut self.conn())
            .await?;
        Ok(entry::from_xreadgroup(&v))
    }

    /// Entries pending in the group (any consumer).
    pub async fn pending_count(&self, p: &Partition) -> RedisResult<u64> {
        let v: Value = redis::cmd("XPENDING")
            .arg(self.keys.work(p))
            .arg(GROUP)
            .query_async(&mut self.conn())
            .await?;
        Ok(match v {
            Value::Array(a) => match a.first() {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        })
    }

    /// Delivery counts of this consumer's pending entries between `first` and `last`.
    pub async fn deliveries(
        &self,
        p: &Partition,
        first: &str,
        last: &str,
        count: usize,
    ) -> RedisResult<HashMap<String, u64>> {
        let v: Value = redis::cmd("XPENDING")
            .arg(self.keys.work(p))
            .arg(GROUP)
            .arg(first)
            .arg(last)
            .arg(count)
            .arg(&self.me)
            .query_async(&mut self.conn())
            .await?;
        Ok(entry::from_xpending(&v).into_iter().collect())
    }

    /// Acknowledges and deletes entries (one MULTI: the stream does not grow).
    pub async fn ack(&self, p: &Partition, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.work(p);
        let _: Value = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves an entry to the dead-letter stream (its fields plus `x`, `err`, `n`) and
    /// acknowledges it, in one MULTI.
    pub async fn dead_letter(
        &self,
        p: &Partition,
        e: &Entry,
        err: &str,
        n: u64,
    ) -> RedisResult<()> {
        let key = self.keys.work(p);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.dead(p)).arg("*");
        for (k, v) in e.fields.iter().flatten() {
            xadd.arg(k.as_slice()).arg(v.as_slice());
        }
        xadd.arg("x").arg(&e.id).arg("err").arg(err).arg("n").arg(n);
        let _: Value = redis::pipe()
            .atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(&e.id)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(&e.id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Raises the room's watermark in Redis and trims its log; returns the room's head.
    pub async fn persisted(
        &self,
        p: &Partition,
        room: &str,
        epoch: &str,
        seq: u64,
        keep: u64,
    ) -> RedisResult<u64> {
        let head: i64 = self
            .persisted
            .key(self.keys.meta(p, room))
            .key(self.keys.log(p, room))
            .key(self.keys.channel(p, room))
            .arg(epoch)
            .arg(seq)
            .arg(keep)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(u64::try_from(head).unwrap_or(0))
    }

    /// Deletes the group's consumers (not this one) with nothing pending, idle `idle_ms`.
    pub async fn forget_idle_consumers(&self, p: &Partition, idle_ms: u64) -> RedisResult<u64> {
        self.forget
            .key(self.keys.work(p))
            .arg(&self.me)
            .arg(idle_ms)
            .invoke_async(&mut self.conn())
            .await
    }

    /// (entries in the work stream, ms timestamp of the oldest entry's id if any).
    pub async fn backlog(&self, p: &Partition) -> RedisResult<(u64, Option<u64>)> {
        let key = self.keys.work(p);
        let (len, first): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&key)
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        let oldest = entry::entries(&first)
            .first()
            .and_then(|e| e.id.split('-').next().and_then(|ms| ms.parse().ok()));
        Ok((len, oldest))
    }
}
