//! Key names the worker touches (docs/distributed.md, "Redis keys"), and the partitions'
//! hash tags (`{pNNNN.k}`: the smallest k whose CRC16 slot falls in the partition's share of
//! the 16384 slots).

/// One partition the worker may own: its number and its hash tag (braces included).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    pub number: u32,
    pub tag: String,
}

/// The consumer group of every work stream.
pub const GROUP: &str = "persist";

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// `{prefix}:T:w`, the partition's work stream.
    pub fn work(&self, p: &Partition) -> String {
        format!("{}:{}:w", self.prefix, p.tag)
    }
    /// `{prefix}:T:wo`, the worker owning the partition (lease as TTL).
    pub fn owner(&self, p: &Partition) -> String {
        format!("{}:{}:wo", self.prefix, p.tag)
    }
    /// `{prefix}:T:dead`, the partition's dead letters.
    pub fn dead(&self, p: &Partition) -> String {
        format!("{}:{}:dead", self.prefix, p.tag)
    }
    /// `{prefix}:T:m:{room}`, the room's meta hash.
    pub fn meta(&self, p: &Partition, room: &str) -> String {
        format!("{}:{}:m:{room}", self.prefix, p.tag)
    }
    /// `{prefix}:T:l:{room}`, the room's log stream.
    pub fn log(&self, p: &Partition, room: &str) -> String {
        format!("{}:{}:l:{room}", self.prefix, p.tag)
    }
    /// `{prefix}:T:n:{room}`, the room's notification channel.
    pub fn channel(&self, p: &Partition, room: &str) -> String {
        format!("{}:{}:n:{room}", self.prefix, p.tag)
    }
    /// `{prefix}:wk:{id}`, a worker's heartbeat.
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:wk:{worker}", self.prefix)
    }
    /// `{prefix}:workers`, a sorted set of worker ids scored by heartbeat expiry (ms): counts
    /// the live workers without scanning the keyspace.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
}

pub use crate::partition::crc16;

/// The hash tag of partition `p` of `total` (None if `p >= total` or no tag was found, which
/// cannot happen for 1 ≤ total ≤ 16384): the same tag as `crate::partition::Partitions` gives
/// (tested), for any partition count — tests run workers over a handful of partitions.
pub fn tag(p: u32, total: u32) -> Option<String> {
    if p >= total || total == 0 || total > 16384 {
        return None;
    }
    let lo = u64::from(p) * 16384 / u64::from(total);
    let hi = (u64::from(p) + 1) * 16384 / u64::from(total);
    (0u32..10_000_000).find_map(|k| {
        let text = format!("p{p:04}.{k}");
        let slot = u64::from(crc16(text.as_bytes()) % 16384);
        (lo..hi).contains(&slot).then(|| format!("{{{text}}}"))
    })
}

/// Every partition of a cluster of `total` partitions, with its tag.
pub fn all_partitions(total: u32) -> Vec<Partition> {
    (0..total)
        .filter_map(|number| tag(number, total).map(|tag| Partition { number, tag }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis() {
        // Redis's own test vector (cluster spec): CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn tags_are_the_gateways_tags() {
        for total in [1024, 4096] {
            let parts = crate::partition::Partitions::new(total).expect("a partition count");
            for (w, p) in all_partitions(total).iter().zip(parts.iter()) {
                assert_eq!(w.tag, parts.tag(p), "partition {} of {total}", w.number);
            }
        }
    }

    #[test]
    fn tags_fall_in_their_share_of_slots() {
        let parts = all_partitions(1024);
        assert_eq!(parts.len(), 1024);
        for p in &parts {
            let inner = p.tag.trim_start_matches('{').trim_end_matches('}');
            let slot = u32::from(crc16(inner.as_bytes()) % 16384);
            assert_eq!(
                slot / 16,
                p.number,
                "tag {} of partition {}",
                p.tag,
                p.number
            );
        }
    }
}
