//! The client's error type.

use concord_core::doc::{ApplyError, DecodeError};
use concord_protocol::ErrorCode;

/// Everything a client call can fail with. Cloneable: one failure may answer several waiters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The first connection (TCP, WebSocket handshake or `welcome`) failed.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The server answered with an `error` message.
    #[error("server error {code}: {message}")]
    Server {
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The client was closed (or dropped) before the call completed.
    #[error("client closed")]
    Closed,
    /// No ack arrived within `ClientConfig::ack_timeout`.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The room is already joined (or being joined) by this client.
    #[error("room {0:?} is already joined")]
    AlreadyJoined(String),
    /// A `leave` for the room was issued while its join was in progress.
    #[error("join of room {0:?} cancelled by leave")]
    Cancelled(String),
    /// The room exists with another kind than the call handles: a `doc` room joined with
    /// [`Client::join`](crate::Client::join), a `stream` room with
    /// [`Client::join_doc`](crate::Client::join_doc).
    #[error("room kind {0:?} is not supported by this call")]
    UnsupportedKind(String),
    /// A doc edit does not apply to the local state (nothing was changed).
    #[error("edit refused: {0}")]
    Apply(ApplyError),
    /// A doc edit's op list does not decode or breaks the protocol's limits.
    #[error("invalid op list: {0}")]
    InvalidOps(DecodeError),
    /// The room is not joined (any more) by this client.
    #[error("room {0:?} is not joined")]
    NotJoined(String),
    /// The server broke the protocol (e.g. a doc `joined` without a state).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The encoded frame would exceed the protocol's frame limit.
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// A value could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
}

impl ClientError {
    pub(crate) fn server(code: String, message: String, retry_after_ms: Option<u64>) -> Self {
        ClientError::Server {
            code,
            message,
            retry_after_ms,
        }
    }

    /// The server's error code (`"not_found"`, …), if this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The server's error code as a known [`ErrorCode`], if it is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        let code = self.code()?;
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Errors after which reconnecting with the same configuration cannot help.
    pub(crate) fn is_fatal(&self) -> bool {
        self.code() == Some(ErrorCode::Unauthorized.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let e = ClientError::server("not_found".into(), "no room".into(), None);
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.error_code(), Some(ErrorCode::NotFound));
        assert!(!e.is_fatal());
        assert!(ClientError::server("unauthorized".into(), String::new(), None).is_fatal());
        assert_eq!(ClientError::Closed.code(), None);
        let e = ClientError::server("brand_new".into(), String::new(), None);
        assert_eq!(e.error_code(), None);
    }
}
