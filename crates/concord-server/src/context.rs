//! State shared by every part of one server instance: config, store, metrics, clocks.

use crate::clock::Time;
use crate::config::Config;
use crate::limiter::KeyedBucket;
use crate::metrics::Metrics;
use crate::store::Store;
use concord_core::{Clock, Epoch, HlcClock, HlcText, HlcTimestamp, RoomId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Live counters of one loaded room, for `/v1/admin/stats` and the top-rooms metric.
#[derive(Default, Debug)]
pub struct RoomStats {
    pub publishes: AtomicU64,
    pub presence: AtomicU64,
    pub members: AtomicU64,
}

impl RoomStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.publishes.load(Ordering::Relaxed),
            self.presence.load(Ordering::Relaxed),
            self.members.load(Ordering::Relaxed),
        )
    }
}

pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// The injected wall clock (HLC, epochs, JWT checks, rate limits, retention ages).
    pub clock: Arc<dyn Clock>,
    /// The same clock, with timers that follow it (token expiry).
    pub time: Time,
    hlc: Mutex<HlcClock>,
    /// Counters of every loaded room.
    pub room_stats: Mutex<HashMap<RoomId, Arc<RoomStats>>>,
    /// Rooms in the store (counted at start, then by every creation), against `max_rooms`.
    pub rooms_stored: AtomicU64,
    /// Room creations per user (`rate_room_create_per_user`).
    pub room_create_per_user: KeyedBucket,
    /// The distributed mode's commit point of shared stream rooms (None: embedded mode).
    pub commit_point: Option<Arc<dyn crate::cluster::CommitPoint>>,
}

impl Shared {
    pub fn new(config: Config, store: Arc<dyn Store>, metrics: Metrics, time: Time) -> Self {
        let clock = time.clock();
        let hlc = Mutex::new(HlcClock::new(&config.node_id));
        let room_create_per_user = KeyedBucket::new(config.rate_room_create_per_user, &clock);
        Shared {
            rooms_stored: AtomicU64::new(0),
            room_create_per_user,
            config,
            store,
            metrics,
            clock,
            time,
            hlc,
            room_stats: Mutex::new(HashMap::new()),
            commit_point: None,
        }
    }

    /// The JSON Schema of a doc room, if a configured pattern matches its name.
    pub fn schema_for(&self, room: &RoomId) -> Option<Arc<crate::config::DocSchema>> {
        self.config
            .doc_schemas
            .iter()
            .find(|s| crate::auth::glob(&s.pattern, room.as_str()))
            .cloned()
    }

    /// The retention policy of a room, if a configured pattern matches its name.
    pub fn retention_for(&self, room: &RoomId) -> Option<&crate::config::RetentionPolicy> {
        self.config
            .retention
            .iter()
            .find(|p| crate::auth::glob(&p.pattern, room.as_str()))
    }

    /// The busiest loaded rooms by publishes since load: (room, publishes, presence, members).
    pub fn top_rooms(&self, n: usize) -> Vec<(RoomId, u64, u64, u64)> {
        let mut all: Vec<_> = self
            .room_stats
            .lock()
            .iter()
            .map(|(r, s)| {
                let (p, pr, m) = s.snapshot();
                (r.clone(), p, pr, m)
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(b.3.cmp(&a.3)).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// A fresh node-wide HLC reading.
    pub fn hlc_now(&self) -> HlcTimestamp {
        let now = self.clock.now_ms();
        self.hlc.lock().now(now)
    }

    /// Makes every later reading greater than `seen` (e.g. the last stored hlc of a room).
    pub fn hlc_observe(&self, seen: &HlcText) {
        let now = self.clock.now_ms();
        self.hlc.lock().observe(&seen.timestamp(), now);
    }

    pub fn new_epoch(&self) -> Epoch {
        Epoch::generate(self.clock.now_ms(), rand::random())
    }
}
