//! Seeded fault-injection test of the room core (`concord_server::room::core::RoomCore`), the
//! real one, driven without a runtime against a store that fails.
//!
//! Each seed makes a stream or a doc room and runs a few hundred random steps: new writes from
//! three clients (most with op ids, some without), retries of earlier ids (same content),
//! handing the batch to the store, and store outcomes delivered late, one at a time, in
//! append order, interleaved with new input (a slow store). An outcome is one of: the append
//! lands and reports success (or the store's own refusal), the append fails without landing,
//! or the append lands but reports a failure (a timeout: the outcome is unknown to the core,
//! which must reload to find out). Loads are delivered late too and sometimes fail. Now and
//! then the catch-up the core would serve from its window is compared with the store.
//!
//! Checked after every step: `RoomCore::check()`; every waiter gets at most one answer; every
//! ack of a key names the same seq; no key the store holds (or an append in flight holds) is
//! sequenced again; broadcasts are gap-free from the head of the last load.
//! After every load: the core's head (and a doc's state hash) equals the store's. At the end,
//! once every outcome is delivered: every waiter was answered exactly once, every acked write
//! is in the store at its seq, no key is stored twice, and a doc's counter equals the number
//! of lists stored.
//!
//! `CONCORD_CORE_SEED=S` runs seed `S` only; `CONCORD_HEAVY=1` runs many more seeds and steps.
//! A failure names its seed.

#[macro_use]
mod sim;
use sim::{client_id, SimResult, Tok};

use concord_core::doc::{Op, PathSeg};
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomId, RoomKind, Seq};
use concord_server::metrics::Metrics;
use concord_server::room::core::{CoreConfig, Effect, Loaded, RoomCore, StepEnv};
use concord_server::room::doc::state_at;
use concord_server::room::load::load;
use concord_server::store::{Append, Archive, CommitLog, History, MemoryStore, StoredEvent};
use concord_server::Config;
use futures::executor::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use serde_json::{json, Number, Value};
use std::collections::{HashMap, HashSet, VecDeque};

/// A write the clients made (retried with the same content).
#[derive(Clone)]
struct Write {
    client: usize,
    id: Option<String>,
    base: u64,
}

/// An append handed to the store: its events and the doc snapshot to save after them.
type Pending = (Vec<StoredEvent>, Option<(Seq, String)>);

struct Sim {
    rng: StdRng,
    store: MemoryStore,
    room: RoomId,
    cfg: Config,
    kind: RoomKind,
    core: RoomCore<Tok>,
    env: StepEnv,
    /// Appends handed to the store whose outcome is not delivered yet, oldest first.
    appends: VecDeque<Pending>,
    reload_wanted: bool,
    next_token: u64,
    /// Token → the write it is for and its answer once given.
    waiters: sim::Waiters,
    writes: Vec<Write>,
    /// (client, id) → the seq its acks name.
    acked: HashMap<(String, String), u64>,
    /// The seq of the last broadcast (the head after a load).
    broadcast: u64,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    acks: u64,
    fails: u64,
    landed_unknown: u64,
    lost: u64,
    reloads: u64,
    window_catch_ups: u64,
}

impl Sim {
    /// Carries out the core's effects, checking what they say.
    fn effects(&mut self) -> SimResult<()> {
        let effects: Vec<Effect<Tok>> = self.core.drain().collect();
        for e in effects {
            match e {
                Effect::Append(a) => {
                    self.sequenced_once(&a.events)?;
                    self.appends.push_back((a.events, a.snapshot));
                }
                Effect::Ack { waiter, acked, .. } => {
                    self.stats.acks += 1;
                    let w = self.answer(waiter.n, Ok(acked.seq.0))?;
                    if let Some(id) = &self.writes[w].id {
                        let key = (format!("c{}", self.writes[w].client), id.clone());
                        let seq = *self.acked.entry(key.clone()).or_insert(acked.seq.0);
                        ensure!(
                            seq == acked.seq.0,
                            "{key:?} acked at {} and at {seq}",
                            acked.seq
                        );
                    }
                }
                Effect::Fail { waiter, error } => {
                    self.stats.fails += 1;
                    self.answer(waiter.n, Err(error.code.to_string()))?;
                }
                Effect::Broadcast(frame) => {
                    let v: Value =
                        serde_json::from_str(frame.as_str()).map_err(|e| e.to_string())?;
                    let seq = v["seq"].as_u64().ok_or("an event without seq")?;
                    ensure!(
                        seq == self.broadcast + 1,
                        "broadcast {seq} after {}",
                        self.broadcast
                    );
                    self.broadcast = seq;
                }
                Effect::Reload => self.reload_wanted = true,
                Effect::Commit(_) | Effect::Fill(_) | Effect::Forward(_) => {
                    return Err("a room of the embedded mode asked for a commit point".into())
                }
            }
        }
        self.core.check()
    }

    /// A key the store holds, or that an append in flight holds, is never sequenced again.
    fn sequenced_once(&self, events: &[StoredEvent]) -> SimResult<()> {
        let keys: Vec<(ClientId, OpId)> = events
            .iter()
            .filter_map(|e| Some((e.from.clone(), e.op_id.clone()?)))
            .collect();
        let stored =
            block_on(self.store.find_ops(&self.room, keys.clone())).map_err(|e| e.to_string())?;
        ensure!(
            stored.is_empty(),
            "the core sequenced again {}/{} (stored at {})",
            stored[0].from,
            stored[0].op_id,
            stored[0].seq
        );
        let in_flight: HashSet<(ClientId, OpId)> = self
            .appends
            .iter()
            .flat_map(|(evs, _)| {
                evs.iter()
                    .filter_map(|e| Some((e.from.clone(), e.op_id.clone()?)))
            })
            .collect();
        for k in &keys {
            ensure!(
                !in_flight.contains(k),
                "the core sequenced {k:?} twice while in flight"
            );
        }
        Ok(())
    }

    fn answer(&mut self, token: u64, answer: Result<u64, String>) -> SimResult<usize> {
        sim::answer(&mut self.waiters, token, answer)
    }

    /// Sends write `w` (again) to the core, with a fresh waiter.
    fn send(&mut self, w: usize) -> SimResult<()> {
        let write = self.writes[w].clone();
        let token = self.next_token;
        self.next_token += 1;
        self.waiters.insert(token, (w, None));
        let tok = Tok {
            n: token,
            id: write.id.as_deref().map(|i| OpId::new(i).expect("an op id")),
        };
        let client = client_id(write.client);
        // The one store lookup of keys older than the table (sometimes failing).
        let found = if self.core.needs_lookup(&client, &tok) {
            if self.rng.random_bool(0.1) {
                Err(())
            } else {
                let id = tok.id.clone().ok_or("a lookup of a write without an id")?;
                let keys = vec![(client.clone(), id)];
                let found =
                    block_on(self.store.find_ops(&self.room, keys)).map_err(|e| e.to_string())?;
                Ok(found
                    .into_iter()
                    .map(|f| ((f.from, f.op_id), (f.seq, f.hlc)))
                    .collect())
            }
        } else {
            Ok(HashMap::new())
        };
        match self.kind {
            RoomKind::Stream => {
                let data = RawValue::from_string(json!({"w": w}).to_string()).expect("JSON");
                self.core.publish(client, data, tok, &found, &self.env);
            }
            RoomKind::Doc => {
                let ops = [Op::Add {
                    path: vec![PathSeg::Key("counter".into())],
                    value: Number::from(1),
                }];
                let base = Seq(write.base.min(self.core.assigned().0));
                self.core.op(client, base, &ops, tok, &found, &self.env);
            }
        }
        self.effects()
    }

    fn new_write(&mut self) -> SimResult<()> {
        let client = self.rng.random_range(0..3);
        let id = self
            .rng
            .random_bool(0.9)
            .then(|| format!("o{}", self.writes.len()));
        let behind = self.rng.random_range(0..4);
        // Never before the document's first list (which sets the counter).
        let base = self.core.assigned().0.saturating_sub(behind).max(1);
        self.writes.push(Write { client, id, base });
        self.send(self.writes.len() - 1)
    }

    /// Delivers the outcome of the oldest append, with a fault now and then.
    fn outcome(&mut self) -> SimResult<()> {
        let Some((events, snapshot)) = self.appends.pop_front() else {
            return Ok(());
        };
        let roll = self.rng.random_range(0..100);
        let result = if roll < 75 {
            // Lands (unless the store refuses it: not contiguous after a lost append).
            let r = block_on(
                self.store
                    .append(&self.room, Append::new(Epoch("e-sim".into()), events)),
            )
            .map(|_| ())
            .map_err(|e| e.to_string());
            if r.is_ok() {
                if let Some((seq, state)) = snapshot {
                    block_on(self.store.save_snapshot(&self.room, seq, state))
                        .map_err(|e| format!("snapshot: {e}"))?;
                }
            }
            r
        } else if roll < 88 {
            self.stats.lost += 1;
            Err("injected: the append failed".into())
        } else {
            // Timed out: it landed (if the store took it), the core cannot know.
            self.stats.landed_unknown += 1;
            let _ = block_on(
                self.store
                    .append(&self.room, Append::new(Epoch("e-sim".into()), events)),
            )
            .map(|_| ());
            Err("injected: the append timed out".into())
        };
        self.core.append_done(result);
        self.effects()
    }

    /// Loads the room from the store (sometimes failing), as the shell does when asked.
    fn reload(&mut self, may_fail: bool) -> SimResult<()> {
        if !self.core.needs_reload() && !self.reload_wanted {
            return Ok(());
        }
        ensure!(
            !self.core.has_inflight(),
            "a reload was asked with appends in flight"
        );
        self.reload_wanted = false;
        self.stats.reloads += 1;
        let loaded = if may_fail && self.rng.random_bool(0.15) {
            Loaded::Failed("injected: the store is unavailable".into())
        } else {
            block_on(load(&self.store, &self.room, &self.cfg, None))
        };
        let ok = matches!(loaded, Loaded::Room(_));
        self.core.loaded(loaded);
        self.effects()?;
        if ok {
            self.same_as_store()?;
            self.broadcast = self.core.committed().0;
        }
        Ok(())
    }

    /// The core's head (and a doc's state) are the store's.
    fn same_as_store(&self) -> SimResult<()> {
        let record = block_on(self.store.load_room(&self.room))
            .map_err(|e| e.to_string())?
            .ok_or("the room is gone")?;
        ensure!(
            self.core.committed() == record.head && self.core.assigned() == record.head,
            "the core is at {} (assigned {}), the store at {}",
            self.core.committed(),
            self.core.assigned(),
            record.head
        );
        if let Some(doc) = self.core.doc() {
            let stored = block_on(state_at(&self.store, &self.room, record.head))
                .map_err(|e| e.to_string())?;
            ensure!(
                doc.hash() == concord_core::doc::state_hash(&stored) && doc.state == stored,
                "the loaded document {} differs from the store's {stored}",
                doc.state
            );
        }
        Ok(())
    }

    /// The catch-up the core serves from its window equals the store's events.
    fn catch_up(&mut self) -> SimResult<()> {
        let Ok(plan) = self
            .core
            .plan_join(None, None, self.rng.random_range(0..10))
        else {
            return Ok(());
        };
        ensure!(
            plan.committed == self.core.committed(),
            "a plan at another head"
        );
        let after = Seq(self.rng.random_range(0..=plan.committed.0));
        let Some(frames) = self.core.window_after(after) else {
            return Ok(());
        };
        self.stats.window_catch_ups += 1;
        let n = (plan.committed.0 - after.0) as usize;
        let stored =
            block_on(self.store.read_events(&self.room, after, n)).map_err(|e| e.to_string())?;
        ensure!(
            frames.len() == n && stored.len() == n,
            "catch-up after {after}: {} frames, {} stored, {n} expected",
            frames.len(),
            stored.len()
        );
        for (f, e) in frames.iter().zip(&stored) {
            let expected = concord_server::room::event_frame(&self.room, self.kind, e, None);
            let (a, b): (Value, Value) = (
                serde_json::from_str(f.as_str()).map_err(|e| e.to_string())?,
                serde_json::from_str(&expected).map_err(|e| e.to_string())?,
            );
            // The live frame may carry a doc `hash`; everything else is the stored event.
            let strip = |mut v: Value| {
                v.as_object_mut().map(|o| o.remove("hash"));
                v
            };
            ensure!(
                strip(a) == strip(b),
                "window frame {f} is not stored {expected}"
            );
        }
        Ok(())
    }

    /// Delivers every outcome (without faults) and every reload until nothing moves.
    fn drain(&mut self) -> SimResult<()> {
        for _ in 0..10_000 {
            self.core.submit();
            self.effects()?;
            if let Some((events, snapshot)) = self.appends.pop_front() {
                let r = block_on(
                    self.store
                        .append(&self.room, Append::new(Epoch("e-sim".into()), events)),
                )
                .map(|_| ())
                .map_err(|e| e.to_string());
                if let (Ok(()), Some((seq, state))) = (&r, snapshot) {
                    block_on(self.store.save_snapshot(&self.room, seq, state))
                        .map_err(|e| format!("snapshot: {e}"))?;
                }
                self.core.append_done(r);
                self.effects()?;
            } else if self.reload_wanted || self.core.needs_reload() {
                self.reload(false)?;
            } else {
                return Ok(());
            }
        }
        Err("the drain does not end".into())
    }

    fn check_end(&mut self) -> SimResult<()> {
        for (token, (w, answer)) in &self.waiters {
            ensure!(
                answer.is_some(),
                "waiter {token} (write {w}) was never answered"
            );
        }
        // A last load: the state is the store's.
        self.reload_wanted = true;
        self.reload(false)?;
        let head = self.core.committed();
        let events = block_on(
            self.store
                .read_events(&self.room, Seq::ZERO, head.0 as usize + 1),
        )
        .map_err(|e| e.to_string())?;
        ensure!(events.len() as u64 == head.0, "the store has gaps");
        let mut keys: HashMap<(String, String), u64> = HashMap::new();
        for e in &events {
            if let Some(id) = &e.op_id {
                let key = (e.from.to_string(), id.to_string());
                ensure!(
                    keys.insert(key.clone(), e.seq.0).is_none(),
                    "{key:?} stored twice"
                );
            }
        }
        for (key, seq) in &self.acked {
            ensure!(
                keys.get(key) == Some(seq),
                "{key:?} was acked at {seq} but the store has it at {:?}",
                keys.get(key)
            );
        }
        if let Some(doc) = self.core.doc() {
            let lists = events.len() as i64 - 1;
            ensure!(
                doc.state["counter"].as_i64() == Some(lists),
                "the counter is {} after {lists} lists",
                doc.state["counter"]
            );
        }
        Ok(())
    }
}

fn run_seed(seed: u64, steps: usize) -> SimResult<Stats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let kind = if seed.is_multiple_of(2) {
        RoomKind::Stream
    } else {
        RoomKind::Doc
    };
    let room = RoomId::new("core:sim").map_err(|e| e.to_string())?;
    let store = MemoryStore::new();
    block_on(store.create_room(&room, kind, &Epoch("e-sim".into()))).map_err(|e| e.to_string())?;
    if kind == RoomKind::Doc {
        // The document starts with a counter (the first committed list).
        let init = concord_core::doc::encode_ops(&[Op::Set {
            path: Vec::new(),
            value: json!({"counter": 0}),
        }]);
        let first = StoredEvent {
            seq: Seq(1),
            hlc: HlcText::parse("0000000000000-000000-init").ok_or("an hlc")?,
            from: ClientId::new("http").map_err(|e| e.to_string())?,
            op_id: None,
            data: RawValue::from_string(init.to_string()).expect("JSON"),
        };
        block_on(store.append(&room, Append::new(Epoch("e-sim".into()), vec![first])))
            .map_err(|e| e.to_string())?;
    }
    // Small bounds, so the table misses (store lookups) and the window drops by count and size.
    let cfg = Config {
        room_window: rng.random_range(1..12),
        room_window_bytes: rng.random_range(100..2_000),
        idempotency_cache: rng.random_range(1..8),
        doc_window: rng.random_range(2..10),
        doc_snapshot_every: rng.random_range(3..20),
        doc_hash_every: 4,
        ..Config::default()
    };
    let core = RoomCore::new(room.clone(), CoreConfig::of(&cfg), Metrics::new());
    let mut sim = Sim {
        rng,
        store,
        room,
        cfg,
        kind,
        core,
        env: StepEnv::new("sim", 1_000),
        appends: VecDeque::new(),
        reload_wanted: false,
        next_token: 0,
        waiters: HashMap::new(),
        writes: Vec::new(),
        acked: HashMap::new(),
        broadcast: 0,
        stats: Stats::default(),
    };
    sim.effects()?;
    sim.reload(false)?;
    for _ in 0..steps {
        match sim.rng.random_range(0..100) {
            0..35 => sim.new_write()?,
            35..47 if !sim.writes.is_empty() => {
                let w = sim.rng.random_range(0..sim.writes.len());
                sim.send(w)?;
            }
            47..62 => {
                sim.core.submit();
                sim.effects()?;
            }
            62..85 => sim.outcome()?,
            85..95 => sim.reload(true)?,
            95.. => sim.catch_up()?,
            _ => {}
        }
    }
    sim.drain()?;
    sim.check_end()?;
    Ok(sim.stats)
}

#[test]
fn the_core_survives_failed_lost_and_late_commits() {
    let (seeds, steps) = if sim::heavy() {
        (2_000, 3_000)
    } else {
        (200, 400)
    };
    let seeds = sim::seeds("CONCORD_CORE_SEED", seeds);
    let started = std::time::Instant::now();
    let mut totals = Stats::default();
    let mut keys_seen = HashSet::new();
    for &seed in &seeds {
        match run_seed(seed, steps) {
            Ok(s) => {
                totals.acks += s.acks;
                totals.fails += s.fails;
                totals.landed_unknown += s.landed_unknown;
                totals.lost += s.lost;
                totals.reloads += s.reloads;
                totals.window_catch_ups += s.window_catch_ups;
                keys_seen.insert(seed);
            }
            Err(e) => panic!(
                "seed {seed} failed (replay: CONCORD_CORE_SEED={seed} cargo test -p concord-server \
                 --test core_faults): {e}"
            ),
        }
    }
    eprintln!(
        "core faults: {} seeds × {steps} steps in {:.1?}: {totals:?}",
        seeds.len(),
        started.elapsed()
    );
    // The faults really happened (the test cannot pass by never injecting them).
    assert!(totals.landed_unknown > 0 && totals.lost > 0 && totals.reloads > seeds.len() as u64);
    assert!(totals.acks > 0 && totals.window_catch_ups > 0);
}
