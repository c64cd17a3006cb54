//! The room registry: finds or spawns the actor of a room, and unloads idle ones without races.
//!
//! Every message to a room goes through `send`, which looks up (or spawns) the actor and queues
//! the message under the registry shard's lock. An idle actor unloads itself under the same
//! lock, and only if its mailbox is empty, so no message is ever lost or served by two actors.
//! An actor that ends any other way (a panic) removes its own entry, by generation, when it is
//! dropped: the next message spawns a new actor, which reloads the room from the store.

use super::actor::RoomActor;
use super::msg::RoomMsg;
use crate::context::Shared;
use concord_core::RoomId;
use parking_lot::Mutex;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

const SHARDS: usize = 32;

struct Entry {
    tx: UnboundedSender<RoomMsg>,
    generation: u64,
}

pub struct Registry {
    shards: Vec<Mutex<HashMap<RoomId, Entry>>>,
    shared: Arc<Shared>,
    generations: AtomicU64,
    closed: AtomicBool,
    actors: TaskTracker,
}

impl Registry {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shared,
            generations: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            actors: TaskTracker::new(),
        })
    }

    fn shard(&self, room: &RoomId) -> &Mutex<HashMap<RoomId, Entry>> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Queues `msg` for the room's actor, loading the room if needed. Returns the message back
    /// if the server is shutting down.
    pub fn send(self: &Arc<Self>, room: &RoomId, msg: RoomMsg) -> Result<(), RoomMsg> {
        if self.closed.load(Ordering::Acquire) {
            return Err(msg);
        }
        let mut shard = self.shard(room).lock();
        let entry = shard.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = unbounded_channel();
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            let actor = RoomActor::new(
                room.clone(),
                generation,
                self.shared.clone(),
                self.clone(),
                rx,
            );
            // One span per actor (not per message): its logs name the room and generation.
            let span = tracing::info_span!("room", room = %room, generation);
            self.actors.spawn(actor.run().instrument(span));
            Entry { tx, generation }
        });
        entry.tx.send(msg).map_err(|e| e.0)
    }

    /// Called by an idle actor: removes it if nothing is queued for it. On `true` the actor
    /// must stop; its mailbox is closed.
    pub(crate) fn try_unload(
        &self,
        room: &RoomId,
        generation: u64,
        rx: &mut UnboundedReceiver<RoomMsg>,
    ) -> bool {
        let mut shard = self.shard(room).lock();
        let ours = shard.get(room).is_some_and(|e| e.generation == generation);
        if ours && rx.is_empty() {
            shard.remove(room);
            rx.close();
            true
        } else {
            !ours
        }
    }

    /// Called when an actor ends, however it ends (its drop guard): removes its entry if it is
    /// still the one of `generation` (never a newer actor's), so the next message to the room
    /// spawns a new actor that reloads the room from the store.
    pub(crate) fn remove(&self, room: &RoomId, generation: u64) {
        let mut shard = self.shard(room).lock();
        if shard.get(room).is_some_and(|e| e.generation == generation) {
            shard.remove(room);
        }
    }

    /// Number of loaded rooms.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops accepting messages, lets every actor finish what is in flight, and waits for them.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for s in &self.shards {
            s.lock().clear();
        }
        self.actors.close();
        self.actors.wait().await;
    }
}
