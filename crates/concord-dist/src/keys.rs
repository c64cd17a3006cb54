//! The Redis key and channel names of docs/distributed.md ("Redis keys"), from the prefix, the
//! partitions and a room.

use crate::partition::{Partition, Partitions};

/// Builds every key name of one cluster (one prefix, one partition count). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    partitions: Partitions,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Redis key prefix must be non-empty and contain no '{{' or '}}': {0:?}")]
    Prefix(String),
}

/// The keys of one room (all in its partition's slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomKeys {
    pub partition: Partition,
    /// Meta hash: kind, epoch, head, hlc, fence, wm, floor.
    pub meta: String,
    /// The room's recent log (stream, entry id `seq-0`).
    pub log: String,
    /// The partition's work stream.
    pub work: String,
    /// The doc room's owner (lease).
    pub owner: String,
    /// The notification channel.
    pub channel: String,
    /// The room's roster: each gateway's present clients (`m|{gw}|{client}` → member info)
    /// and their presence (`p|{gw}|{client}` → JSON).
    pub roster: String,
    /// The idempotency buckets' common prefix: the bucket number follows.
    idem: String,
}

impl RoomKeys {
    /// The idempotency hash of time bucket `bucket`.
    pub fn idem(&self, bucket: u64) -> String {
        format!("{}{bucket}", self.idem)
    }
}

impl Keys {
    pub fn new(prefix: &str, partitions: Partitions) -> Result<Self, KeyError> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(KeyError::Prefix(prefix.to_string()));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
            partitions,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// `{prefix}:cluster`: the cluster's settings (partitions, created_ms).
    pub fn cluster(&self) -> String {
        format!("{}:cluster", self.prefix)
    }

    /// Every key of a room.
    pub fn room(&self, room: &str) -> RoomKeys {
        let partition = self.partitions.of(room);
        let base = format!("{}:{}", self.prefix, self.partitions.tag(partition));
        RoomKeys {
            partition,
            meta: format!("{base}:m:{room}"),
            log: format!("{base}:l:{room}"),
            work: format!("{base}:w"),
            owner: format!("{base}:o:{room}"),
            channel: format!("{base}:n:{room}"),
            roster: format!("{base}:r:{room}"),
            idem: format!("{base}:i:{room}:"),
        }
    }

    /// The partition's work stream.
    pub fn work(&self, p: Partition) -> String {
        format!("{}:{}:w", self.prefix, self.partitions.tag(p))
    }

    /// The worker owning the partition (lease).
    pub fn work_owner(&self, p: Partition) -> String {
        format!("{}:{}:wo", self.prefix, self.partitions.tag(p))
    }

    /// The partition's dead-letter stream.
    pub fn dead(&self, p: Partition) -> String {
        format!("{}:{}:dead", self.prefix, self.partitions.tag(p))
    }

    /// A gateway's heartbeat.
    pub fn gateway(&self, id: &str) -> String {
        format!("{}:gw:{id}", self.prefix)
    }

    /// The pub/sub channel of gateway `id`'s inbox: doc op lists forwarded to it as a room's
    /// owner, and the answers to the lists it forwarded.
    pub fn gateway_inbox(&self, id: &str) -> String {
        format!("{}:gw:{id}:in", self.prefix)
    }

    /// A worker's heartbeat.
    pub fn worker(&self, id: &str) -> String {
        format!("{}:wk:{id}", self.prefix)
    }
}

/// The consumer group of every work stream.
pub const PERSIST_GROUP: &str = "persist";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::key_slot;

    #[test]
    fn room_keys_share_their_partitions_slot() {
        let keys = Keys::new("concord", Partitions::new(1024).expect("count")).expect("prefix");
        let rk = keys.room("chat:lobby");
        let tag = keys.partitions().tag(rk.partition).to_string();
        assert_eq!(rk.meta, format!("concord:{tag}:m:chat:lobby"));
        assert_eq!(rk.log, format!("concord:{tag}:l:chat:lobby"));
        assert_eq!(rk.work, format!("concord:{tag}:w"));
        assert_eq!(rk.owner, format!("concord:{tag}:o:chat:lobby"));
        assert_eq!(rk.channel, format!("concord:{tag}:n:chat:lobby"));
        assert_eq!(rk.idem(123), format!("concord:{tag}:i:chat:lobby:123"));
        assert_eq!(keys.work(rk.partition), rk.work);
        assert_eq!(keys.work_owner(rk.partition), format!("concord:{tag}:wo"));
        assert_eq!(keys.dead(rk.partition), format!("concord:{tag}:dead"));
        let slot = key_slot(rk.meta.as_bytes());
        for k in [
            &rk.log,
            &rk.work,
            &rk.owner,
            &rk.idem(7),
            &keys.dead(rk.partition),
        ] {
            assert_eq!(
                key_slot(k.as_bytes()),
                slot,
                "{k} is not in the slot of {}",
                rk.meta
            );
        }
        assert_eq!(keys.cluster(), "concord:cluster");
        assert_eq!(keys.gateway("g1"), "concord:gw:g1");
        assert_eq!(keys.worker("w1"), "concord:wk:w1");
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        let parts = Partitions::new(1024).expect("count");
        assert!(Keys::new("a{b", parts.clone()).is_err());
        assert!(Keys::new("a}b", parts.clone()).is_err());
        assert!(Keys::new("", parts).is_err());
    }
}
