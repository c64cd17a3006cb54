//! `StepEnv`: the core's environment for tests and simulations — the node's HLC on a counter
//! that advances one millisecond per reading instead of the wall clock, no room rate, heavy work
//! done inline.

use super::Env;
use concord_core::{HlcClock, HlcTimestamp};
use std::cell::RefCell;

/// A deterministic [`Env`]: every `hlc_now` reads the HLC at the next millisecond of a counter.
pub struct StepEnv(RefCell<(HlcClock, u64)>);

impl StepEnv {
    /// An HLC of node `node` whose first reading is at `start_ms`.
    pub fn new(node: &str, start_ms: u64) -> Self {
        StepEnv(RefCell::new((HlcClock::new(node), start_ms)))
    }
}

impl Env for StepEnv {
    fn hlc_now(&self) -> HlcTimestamp {
        let mut c = self.0.borrow_mut();
        c.1 += 1;
        let now = c.1;
        c.0.now(now)
    }
    fn room_rate(&self) -> Result<(), u64> {
        Ok(())
    }
    fn heavy(&self, work: &mut dyn FnMut()) {
        work()
    }
}
