//! Fault injection for the crate's own tests (feature `fault-injection`, off by default and never
//! in a shipped build): makes a room actor panic, to test how the registry supervises actors.

use concord_core::RoomId;
use parking_lot::Mutex;

/// Rooms whose actor panics once, after handling its next batch of messages.
static ARMED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes the actor of room `room` panic once, right after it has handled (sequenced and handed
/// to the store, not yet committed) its next batch of messages. Room names are global to the
/// process: tests use names of their own.
pub fn panic_next(room: &str) {
    ARMED.lock().push(room.to_string());
}

/// Called by the actor after each batch: panics if a panic is armed for `room`.
pub(crate) fn check(room: &RoomId) {
    let hit = {
        let mut armed = ARMED.lock();
        match armed.iter().position(|r| r == room.as_str()) {
            Some(i) => {
                armed.swap_remove(i);
                true
            }
            None => false,
        }
    };
    if hit {
        panic!("injected fault: the actor of room {room} panics");
    }
}
