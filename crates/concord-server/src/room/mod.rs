//! Rooms: one actor task per loaded room (the room's sequencer), and the registry that finds them.

mod actor;
/// The room's logic without IO (public for the crate's tests with the `testing` feature).
#[cfg(feature = "testing")]
pub mod core;
#[cfg(not(feature = "testing"))]
pub(crate) mod core;
pub mod doc;
pub mod load;
mod msg;
mod registry;

pub use msg::{Acked, Creator, OpMsg, Publish, Reply, RoomError, RoomMsg, Waiter};
pub use registry::Registry;

use crate::store::StoredEvent;
use concord_core::{RoomId, RoomKind};
use concord_protocol::outbound::Event;
use concord_protocol::{Json, ServerMsg};

/// The `left` frame: the answer to `leave`, whoever gives it (the room, or the connection when
/// the room's actor is gone).
pub fn left_frame(room: &RoomId) -> String {
    ServerMsg::Left(concord_protocol::outbound::Left {
        room: room.as_str().into(),
    })
    .encode()
}

/// The `event` frame of a stored event: `data` for stream rooms, `ops` (and `hash` when given)
/// for doc rooms. The one encoding of events, for sockets and for the HTTP API.
pub fn event_frame(room: &RoomId, kind: RoomKind, e: &StoredEvent, hash: Option<&str>) -> String {
    let payload = Some(Json::from(&*e.data));
    let (data, ops) = match kind {
        RoomKind::Stream => (payload, None),
        RoomKind::Doc => (None, payload),
    };
    ServerMsg::Event(Event {
        room: room.as_str().into(),
        seq: e.seq.0,
        hlc: e.hlc.as_str().into(),
        from: e.from.as_str().into(),
        id: e.op_id.as_ref().map(|i| i.as_str().into()),
        data,
        ops,
        hash: hash.map(Into::into),
    })
    .encode()
}

/// Hands the doc lists other gateways forward to this one to their rooms' actors, until the
/// server stops (a list it cannot hand over is dropped: its forwarder gets no answer and
/// forwards it again).
pub async fn serve_inbox(mut inbox: crate::cluster::Inbox, registry: std::sync::Arc<Registry>) {
    use futures::StreamExt;
    while let Some(f) = inbox.next().await {
        let msg = RoomMsg::Forward {
            list: f.list,
            reply: f.reply,
        };
        if registry.send(&f.room, msg).is_err() {
            break;
        }
    }
}
