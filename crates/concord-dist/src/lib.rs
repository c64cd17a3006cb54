//! The distributed mode's building blocks: partitions and hash tags, Redis key names, the
//! `concord` Redis function library and its Rust API (the commit log of every room, leases,
//! watermarks), a gateway's backend over it (`gateway`: the commit point and feeds of shared
//! stream rooms, the store it reads, rosters), the PostgreSQL archive (`pg`), the persistence
//! worker (`worker`) that moves the partitions' work streams into it, and test helpers for
//! private Redis servers and clusters and PostgreSQL databases.
//!
//! docs/distributed.md is the design these modules implement.

pub mod functions;
pub mod gateway;
pub mod keys;
pub mod lease;
pub mod log;
pub mod partition;
pub mod pg;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use keys::Keys;
pub use log::{
    CommitError, CommitRequest, Committed, LogConfig, LogError, LoggedEvent, NewEvent,
    RedisCommitLog, RedisLog, RedisTarget, RoomMeta,
};
pub use partition::{Partition, PartitionError, Partitions};
