//! What a call of the log can fail with: the function library's refusals by code, an unknown
//! outcome (timeout, lost connection), and the rest.

use concord_core::{Epoch, Seq};
use redis::RedisError;

/// Errors of every `RedisLog` call (`CommitError` is the same type, named for commits).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The room does not exist in Redis (never created, or Redis lost it).
    #[error("the room does not exist in Redis")]
    NoRoom,
    /// The room's epoch is not the caller's: it must reload the room.
    #[error("the room's epoch is now {current}")]
    EpochChanged { current: Epoch },
    /// The caller's fence is stale: another owner acquired the room.
    #[error("fenced: the room's fence is now {current}")]
    Fenced { current: u64 },
    /// The expected head is not the room's head.
    #[error("the room's head is {head:?}, not the expected one")]
    HeadMoved { head: Seq },
    /// The room exists with another kind.
    #[error("the room exists as a {kind} room")]
    Exists { kind: String },
    /// The call timed out or its connection was lost: it may or may not have taken effect.
    /// Resolve it by repeating the call (commits: with the same op ids).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The function library in Redis is newer than this process's.
    #[error("the concord function library in Redis is version {found}, newer than this build's {ours}: refusing to run against it")]
    LibraryNewer { found: u64, ours: u64 },
    /// Redis holds another partition count for this prefix.
    #[error("the cluster was created with {found} partitions, not {ours}")]
    PartitionMismatch { found: u32, ours: u32 },
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A commit carries more events than allowed.
    #[error("a commit of {len} events exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    /// Redis answered something this build does not understand.
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
    /// Any other Redis error.
    #[error(transparent)]
    Redis(RedisError),
}

/// The error of `RedisLog::commit`.
pub type CommitError = LogError;

/// The first words of the function library's errors.
const CODES: [&str; 5] = ["NOROOM", "EPOCH", "FENCED", "HEAD", "EXISTS"];

impl From<RedisError> for LogError {
    fn from(e: RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            return LogError::Unknown(e.to_string());
        }
        // A one-word error ("NOROOM") may come back as a generic response error whose detail
        // is the word: read the code from the detail then.
        let (code, detail) = match e.code() {
            Some(c) if CODES.contains(&c) => (c.to_string(), e.detail().unwrap_or("").trim()),
            _ => {
                let text = e.detail().unwrap_or("").trim();
                let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
                (word.to_string(), rest.trim())
            }
        };
        let detail = detail.to_string();
        match Some(code.as_str()) {
            Some("NOROOM") => LogError::NoRoom,
            Some("EPOCH") => LogError::EpochChanged {
                current: Epoch(detail),
            },
            Some("FENCED") => match detail.parse() {
                Ok(current) => LogError::Fenced { current },
                Err(_) => LogError::Reply(format!("FENCED {detail}")),
            },
            Some("HEAD") => match detail.parse() {
                Ok(head) => LogError::HeadMoved { head: Seq(head) },
                Err(_) => LogError::Reply(format!("HEAD {detail}")),
            },
            Some("EXISTS") => LogError::Exists { kind: detail },
            _ => LogError::Redis(e),
        }
    }
}
