//! Concord wire protocol v1: the JSON messages of `/v1/ws` — one type per message and
//! direction ([`ClientMsg`], [`ServerMsg`]), each encoded and decoded with serde — error codes,
//! close codes, default limits.
//!
//! Both directions are decoded in two passes — first the `type`, then the message itself — so
//! that `data` can stay a borrowed raw JSON slice and never be re-encoded by the server.

pub mod codes;
pub mod inbound;
pub mod json;
pub mod limits;
pub mod outbound;

pub use codes::{close, ErrorCode};
pub use inbound::{check_readable, decode_client, ClientMsg, DecodeError, Since, MAX_DATA_DEPTH};
pub use json::{Json, Part};
pub use limits::Limits;
pub use outbound::{decode_server, ServerMsg};
