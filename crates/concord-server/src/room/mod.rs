//! Rooms: one actor task per loaded room (the room's sequencer), and the registry that finds them.

mod actor;
pub mod doc;
mod members;
mod msg;
mod registry;

pub use msg::{Acked, OpMsg, Publish, Reply, RoomError, RoomMsg, Waiter};
pub use registry::Registry;
