//! What a waiter is finally told: an ack (`Acked`) or an error (`RoomError`).

use concord_core::{Epoch, HlcText, RoomId, Seq};
use concord_protocol::outbound::ErrorMsg;
use concord_protocol::{ErrorCode, ServerMsg};

/// A committed publish.
#[derive(Debug, Clone)]
pub struct Acked {
    pub seq: Seq,
    pub hlc: HlcText,
    pub epoch: Epoch,
    /// Doc ops that had no effect after rebasing (their target was concurrently removed).
    pub dropped: Vec<usize>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RoomError {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited`: when a retry may succeed.
    pub retry_after_ms: Option<u64>,
}

impl RoomError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RoomError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The `error` frame of this error in `room`, echoing the op `id` when there is one.
    pub fn frame(&self, room: &RoomId, id: Option<&str>) -> String {
        ServerMsg::Error(ErrorMsg {
            id: id.map(Into::into),
            room: Some(room.as_str().into()),
            retry_after_ms: self.retry_after_ms,
            ..ErrorMsg::new(self.code, self.message.as_str())
        })
        .encode()
    }
}
