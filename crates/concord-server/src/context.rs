//! State shared by every part of one server instance: config, store, metrics, clocks.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use concord_core::{Clock, Epoch, HlcClock, HlcTimestamp};
use parking_lot::Mutex;
use std::sync::Arc;

pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    hlc: Mutex<HlcClock>,
}

impl Shared {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let hlc = Mutex::new(HlcClock::new(&config.node_id));
        Shared {
            config,
            store,
            metrics,
            clock,
            hlc,
        }
    }

    /// A fresh node-wide HLC reading.
    pub fn hlc_now(&self) -> HlcTimestamp {
        let now = self.clock.now_ms();
        self.hlc.lock().now(now)
    }

    /// Makes every later reading greater than `seen` (e.g. the last stored hlc of a room).
    pub fn hlc_observe(&self, seen: &str) {
        if let Some(ts) = HlcTimestamp::parse(seen) {
            let now = self.clock.now_ms();
            self.hlc.lock().observe(&ts, now);
        }
    }

    pub fn new_epoch(&self) -> Epoch {
        Epoch::generate(self.clock.now_ms(), rand::random())
    }
}
