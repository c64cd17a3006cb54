//! Validated identifier newtypes: room names, client ids, op ids, sequence numbers, epochs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("room name must match [A-Za-z0-9._:-]{{1,128}}")]
    BadRoom,
    #[error("client_id must be 1..=128 printable ASCII characters")]
    BadClient,
    #[error("id must be 1..=128 printable ASCII characters")]
    BadOpId,
    #[error("unknown room kind {0:?} (expected \"stream\" or \"doc\")")]
    BadKind(String),
}

fn printable_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A room name: `[A-Za-z0-9._:-]{1,128}`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

impl RoomId {
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(RoomId(Arc::from(name)))
        } else {
            Err(IdError::BadRoom)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}
impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client id, chosen by the client and stable across its reconnects; the scope of op ids.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(id: &str) -> Result<Self, IdError> {
        if printable_ascii(id, 128) {
            Ok(ClientId(Arc::from(id)))
        } else {
            Err(IdError::BadClient)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen op id (`id` of publish/op), unique per (room, client).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OpId(Arc<str>);

impl OpId {
    pub fn new(id: &str) -> Result<Self, IdError> {
        if printable_ascii(id, 128) {
            Ok(OpId(Arc::from(id)))
        } else {
            Err(IdError::BadOpId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a room's log. Committed events have seq >= 1; 0 means "nothing yet".
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}
impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of one unbroken history of a room. Changes only if history was lost or reset.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub String);

impl Epoch {
    /// Builds a fresh epoch from caller-supplied entropy (time and randomness are injected).
    pub fn generate(now_ms: u64, random: u64) -> Epoch {
        Epoch(format!("{:x}{:08x}", now_ms, random as u32))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of a room, fixed when the room is created.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Stream,
    Doc,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Stream => "stream",
            RoomKind::Doc => "doc",
        }
    }
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s {
            "stream" => Ok(RoomKind::Stream),
            "doc" => Ok(RoomKind::Doc),
            other => Err(IdError::BadKind(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::new("chat:lobby").is_ok());
        assert!(RoomId::new("a.b_c-d:E9").is_ok());
        assert!(RoomId::new(&"x".repeat(128)).is_ok());
        assert_eq!(RoomId::new(&"x".repeat(129)), Err(IdError::BadRoom));
        assert_eq!(RoomId::new(""), Err(IdError::BadRoom));
        assert_eq!(RoomId::new("a b"), Err(IdError::BadRoom));
        assert_eq!(RoomId::new("é"), Err(IdError::BadRoom));
        assert_eq!(RoomId::new("a/b"), Err(IdError::BadRoom));
    }

    #[test]
    fn client_and_op_ids() {
        assert!(ClientId::new("c-7f3a").is_ok());
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("a b").is_err());
        assert!(OpId::new(&"m".repeat(128)).is_ok());
        assert!(OpId::new(&"m".repeat(129)).is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(RoomKind::parse("doc"), Ok(RoomKind::Doc));
        assert!(RoomKind::parse("yjs").is_err());
    }
}
