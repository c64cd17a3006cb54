//! Fault injection for the crate's own tests (feature `fault-injection`, off by default and never
//! in a shipped build): makes a room actor panic, to test how the registry supervises actors.

use concord_core::RoomId;
use parking_lot::Mutex;

/// Where in its loop an actor panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Right after handling a batch of messages: its publishes are sequenced and handed to the
    /// store, not yet committed (their commit is never polled).
    AfterBatch,
    /// While handling a batch, once it has sequenced a publish: that publish is not handed to the
    /// store yet, and the rest of the batch is not handled.
    MidBatch,
}

/// Rooms whose actor panics once, at a point.
static ARMED: Mutex<Vec<(String, Point)>> = Mutex::new(Vec::new());

/// Makes the actor of room `room` panic once, at `point`. Room names are global to the process:
/// tests use names of their own.
pub fn panic_next(room: &str, point: Point) {
    ARMED.lock().push((room.to_string(), point));
}

/// Called by the actor at each point: panics if a panic is armed there for `room`.
pub(crate) fn check(room: &RoomId, point: Point) {
    let hit = {
        let mut armed = ARMED.lock();
        match armed
            .iter()
            .position(|(r, p)| r == room.as_str() && *p == point)
        {
            Some(i) => {
                armed.swap_remove(i);
                true
            }
            None => false,
        }
    };
    if hit {
        panic!("injected fault: the actor of room {room} panics ({point:?})");
    }
}
