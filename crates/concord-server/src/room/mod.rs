//! Rooms: one actor task per loaded room (the room's sequencer), and the registry that finds them.

mod actor;
/// The room's logic without IO (public for the crate's tests with the `testing` feature).
#[cfg(feature = "testing")]
pub mod core;
#[cfg(not(feature = "testing"))]
pub(crate) mod core;
pub mod doc;
pub mod load;
mod members;
mod msg;
mod registry;

pub use msg::{Acked, Creator, OpMsg, Publish, Reply, RoomError, RoomMsg, Waiter};
pub use registry::Registry;

use crate::store::StoredEvent;
use concord_core::{RoomId, RoomKind};
use concord_protocol::outbound as wire;

/// The `event` frame of a stored event: `data` for stream rooms, `ops` (and `hash` when given)
/// for doc rooms. The one encoding of events, for sockets and for the HTTP API.
pub fn event_frame(room: &RoomId, kind: RoomKind, e: &StoredEvent, hash: Option<&str>) -> String {
    let (seq, hlc, from, id) = (e.seq.0, e.hlc.as_str(), e.from.as_str(), e.op_id.as_deref());
    match kind {
        RoomKind::Stream => wire::event(room.as_str(), seq, hlc, from, id, &e.data),
        RoomKind::Doc => wire::op_event(room.as_str(), seq, hlc, from, id, &e.data, hash),
    }
}
