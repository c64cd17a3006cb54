//! Seeded simulation of a doc room, in process, with the server's real doc logic.
//!
//! Each seed runs 5 clients that make 2,000 random ops each (text inserts/deletes, list
//! ins/del/move/set, map set/del, edits inside list elements and map values, and `add` on one
//! shared counter). The server side is the real room core ([`RoomCore`]: idempotency by
//! (client, id) — with a small table, so older retries are looked up in the store —, rebasing
//! over a window + atomic apply, sequencing, acks and events only after the commit), loaded with
//! the server's own loader and committing every batch to a real [`MemoryStore`] (now at once,
//! now with the next lists) with its snapshots. `RoomCore::check()` runs after every step.
//! Clients are [`concord_core::doc::sim::SimClient`]s (optimistic state, one list in flight, the rest
//! buffered). Every client has an upstream and a downstream queue, delivered in random
//! interleavings (always in order per client; clients have different speeds), so lists are
//! made against stale bases and events arrive late. Now and then a client reconnects: what
//! it had sent but the server had not read yet is either read or lost, what the server had
//! sent it is lost, and it rejoins either with `recovered:true` (missed lists replayed from the
//! store, the in-flight list resent with the same id: the server answers a duplicate with its
//! original seq) or with `recovered:false` (takes the server's state, drops its pending edits).
//! A `conflict` (base older than the window) makes the client resync the same way.
//!
//! Checked along the way: every ack names a list of that client with that id at that seq (a
//! duplicate gets the original seq), the store's events equal the lists as sequenced, a
//! client with nothing pending has the hash its event frames carry (every 32nd seq), no `add` to the
//! counter is ever dropped by a rebase. At the end, after every queue drains: every client,
//! the server's `DocState`, `state_at(store, head)` and a fresh `DocState::load` have the same
//! state and `state_hash`, and the counter equals the sum of the adds of the committed lists.
//!
//! `CONCORD_SIM_SEEDS=N` runs seeds `0..N` (default 32, about a minute in a debug build; 500
//! with `CONCORD_HEAVY=1`); `CONCORD_SIM_SEED=S` runs seed `S` only; `CONCORD_SIM_OPS=N` sets the
//! ops per client (default 2,000). A failure names its seed.

#[macro_use]
mod sim;
use concord_core::doc::sim::{Committed, SimClient};
use concord_core::doc::{self, Op, PathSeg, TextEdit};
use concord_core::{ClientId, HlcText, OpId};
use concord_core::{Epoch, RoomId, RoomKind, Seq};
use concord_protocol::ErrorCode;
use concord_server::metrics::Metrics;
use concord_server::room::core::{CoreConfig, Effect, RoomCore, StepEnv, Waiting};
use concord_server::room::doc::{state_at, stored_ops, DocLimits, DocState};
use concord_server::room::load::load;
use concord_server::store::{Append, Archive, CommitLog, History, MemoryStore, StoredEvent};
use concord_server::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use serde_json::{json, Number, Value};
use sim::{env_u64, SimResult};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const CLIENTS: usize = 5;
const DEFAULT_OPS: usize = 2_000;
const DEFAULT_SEEDS: u64 = 32;
/// Seeds with `CONCORD_HEAVY=1`.
const HEAVY_SEEDS: u64 = 500;
/// Clients compare their hash with the server's at seqs that are multiples of this.
const HASH_EVERY: u64 = 32;
/// A client with more undelivered messages than this is disconnected, like a slow consumer.
const LAG_LIMIT: usize = 100;

/// A list sent by a client.
struct Up {
    id: u64,
    base: u64,
    ops: Vec<Op>,
}

/// What the server sends a client.
enum Down {
    Ack { id: u64, seq: u64 },
    Conflict { id: u64 },
    Event(Rc<Committed>),
}

struct Client {
    sim: SimClient,
    up: VecDeque<Up>,
    down: VecDeque<Down>,
    next_id: u64,
    /// The id of `sim.in_flight`.
    in_flight_id: Option<u64>,
    ops_left: usize,
    /// 1..=8: how often its queues move.
    speed: u32,
}

/// A waiter of the sim: the client and the id of its list.
struct SimWaiter {
    client: usize,
    id: u64,
    op_id: OpId,
}

impl Waiting for SimWaiter {
    fn op_id(&self) -> Option<&OpId> {
        Some(&self.op_id)
    }
}

struct Server {
    /// The real room core: idempotency, rebasing, sequencing, acks after commits.
    core: RoomCore<SimWaiter>,
    env: StepEnv,
    store: MemoryStore,
    room: RoomId,
    window: usize,
    /// Everything committed; seq `n` is `log[n - 1]`.
    log: Vec<Rc<Committed>>,
    /// The (client, id) of each committed seq.
    keys: Vec<(usize, u64)>,
    /// The counter adds of each list as sent, by the seq it was sequenced at.
    sent_adds: HashMap<u64, i64>,
    /// The server's hash at every `HASH_EVERY`th seq, as the event frames carry it.
    hashes: HashMap<u64, String>,
    /// The sum of the counter adds of every committed list (as sent).
    add_sum: i64,
    duplicates: u64,
    conflicts: u64,
}

fn counter_adds(ops: &[Op]) -> i64 {
    ops.iter()
        .filter_map(|op| match op {
            Op::Add { path, value } if path.as_slice() == [PathSeg::Key("counter".into())] => {
                value.as_i64()
            }
            _ => None,
        })
        .sum()
}

impl Server {
    /// Hands what the core sequenced to the store and delivers every outcome: the core acks
    /// and broadcasts what committed.
    async fn flush(&mut self, clients: &mut [Client]) -> SimResult<()> {
        self.core.submit();
        self.effects(clients).await
    }

    /// Carries out the core's effects: appends (committed at once, snapshots after them),
    /// answers to the clients, events to every member.
    async fn effects(&mut self, clients: &mut [Client]) -> SimResult<()> {
        loop {
            let effects: Vec<Effect<SimWaiter>> = self.core.drain().collect();
            if effects.is_empty() {
                return self.core.check();
            }
            for e in effects {
                match e {
                    Effect::Append(a) => {
                        for ev in &a.events {
                            self.sequenced(ev)?;
                        }
                        let r = self
                            .store
                            .append(&self.room, Append::new(Epoch("e-sim".into()), a.events))
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("append: {e}"));
                        if let (Ok(()), Some((seq, state))) = (&r, a.snapshot) {
                            self.store
                                .save_snapshot(&self.room, seq, state)
                                .await
                                .map_err(|e| format!("save_snapshot: {e}"))?;
                        }
                        self.core.append_done(Ok(r?));
                    }
                    Effect::Ack { waiter, acked, .. } => {
                        clients[waiter.client].down.push_back(Down::Ack {
                            id: waiter.id,
                            seq: acked.seq.0,
                        });
                    }
                    Effect::Fail { waiter, error } if error.code == ErrorCode::Conflict => {
                        self.conflicts += 1;
                        clients[waiter.client]
                            .down
                            .push_back(Down::Conflict { id: waiter.id });
                    }
                    Effect::Fail { waiter, error } => {
                        return Err(format!(
                            "server refused list {} of c{}: {error}",
                            waiter.id, waiter.client
                        ))
                    }
                    Effect::Broadcast(frame) => {
                        let v: Value =
                            serde_json::from_str(frame.as_str()).map_err(|e| e.to_string())?;
                        let seq = v["seq"].as_u64().ok_or("an event without seq")?;
                        let c = self
                            .log
                            .get((seq - 1) as usize)
                            .ok_or_else(|| format!("broadcast of {seq}, never appended"))?
                            .clone();
                        if let Some(h) = v["hash"].as_str() {
                            self.hashes.insert(seq, h.to_owned());
                        }
                        // Every member (the sender too) gets the event after the sender's ack.
                        for client in clients.iter_mut() {
                            client.down.push_back(Down::Event(c.clone()));
                        }
                    }
                    Effect::Reload => return Err("the core asked for a reload".into()),
                    Effect::Commit(_) | Effect::Fill(_) | Effect::Forward(_) => {
                        return Err("a doc room asked for a commit point".into())
                    }
                }
            }
        }
    }

    /// An event the core sequenced, on its way to the store: into the log, with checks.
    fn sequenced(&mut self, ev: &StoredEvent) -> SimResult<()> {
        let seq = ev.seq.0;
        ensure!(
            seq == self.log.len() as u64 + 1,
            "the core sequenced {seq} after {}",
            self.log.len()
        );
        let ops = stored_ops(ev)?;
        let from: usize = ev.from.as_str()[1..]
            .parse()
            .map_err(|_| "a client id".to_string())?;
        let id: u64 = ev
            .op_id
            .as_ref()
            .and_then(|i| i.as_str()[2..].parse().ok())
            .ok_or("an op id")?;
        let sent = self.sent_adds.remove(&seq).ok_or("a list never sent")?;
        ensure!(
            counter_adds(&ops) == sent,
            "a rebase changed the counter adds of seq {seq} into {}",
            doc::encode_ops(&ops)
        );
        self.add_sum += sent;
        self.log.push(Rc::new(Committed { seq, from, ops }));
        self.keys.push((from, id));
        Ok(())
    }

    /// The server reads one list from client `from`.
    async fn receive(
        &mut self,
        from: usize,
        up: Up,
        clients: &mut [Client],
        rng: &mut StdRng,
    ) -> SimResult<()> {
        let client = ClientId::new(&format!("c{from}")).map_err(|e| e.to_string())?;
        let waiter = SimWaiter {
            client: from,
            id: up.id,
            op_id: OpId::new(&format!("l-{}", up.id)).map_err(|e| e.to_string())?,
        };
        // The table is small: a retry of an old list is found in the store.
        let found = if self.core.needs_lookup(&client, &waiter) {
            let key = (client.clone(), waiter.op_id.clone());
            let found = self.store.find_ops(&self.room, vec![key]).await;
            Ok(found
                .map_err(|e| format!("find_ops: {e}"))?
                .into_iter()
                .map(|f| ((f.from, f.op_id), (f.seq, f.hlc)))
                .collect())
        } else {
            Ok(HashMap::new())
        };
        let before = self.core.assigned();
        let sent = counter_adds(&up.ops);
        self.core
            .op(client, Seq(up.base), &up.ops, waiter, &found, &self.env);
        let doc = self.core.doc().ok_or("not a doc room")?;
        ensure!(
            doc.bytes == doc::canonical_len(&doc.state),
            "the tracked size {} is not the size {} of {}",
            doc.bytes,
            doc::canonical_len(&doc.state),
            doc.state
        );
        let after = self.core.assigned();
        if after > before {
            self.sent_adds.insert(after.0, sent);
        }
        let conflicts = self.conflicts;
        self.effects(clients).await?;
        if after == before && self.conflicts == conflicts {
            // Neither sequenced nor refused: a retry, answered with its original seq.
            self.duplicates += 1;
        }
        // Usually the store commits at once; now and then lists wait for a later batch.
        if rng.random_bool(0.8) {
            self.flush(clients).await?;
        }
        Ok(())
    }

    /// The committed lists after `after`, read back from the store (a `recovered:true` join).
    async fn replay(
        &mut self,
        after: u64,
        clients: &mut [Client],
    ) -> SimResult<Vec<Rc<Committed>>> {
        self.flush(clients).await?;
        let mut out = Vec::new();
        let mut at = after;
        loop {
            let events = self
                .store
                .read_events(&self.room, Seq(at), 100)
                .await
                .map_err(|e| format!("read_events: {e}"))?;
            if events.is_empty() {
                break;
            }
            for e in events {
                let ops = stored_ops(&e).map_err(|e| e.to_string())?;
                let logged = &self.log[(e.seq.0 - 1) as usize];
                let (from, id) = self.keys[(e.seq.0 - 1) as usize];
                ensure!(
                    e.seq.0 == at + 1
                        && ops == logged.ops
                        && e.from.as_str() == format!("c{from}")
                        && e.op_id.as_ref().map(|i| i.as_str()) == Some(&*format!("l-{id}")),
                    "stored event {} differs from the sequenced list",
                    e.seq
                );
                at = e.seq.0;
                out.push(Rc::new(Committed {
                    seq: e.seq.0,
                    from,
                    ops,
                }));
            }
        }
        ensure!(
            at == self.core.committed().0,
            "replay ended at {at}, not at {}",
            self.core.committed()
        );
        Ok(out)
    }
}

/// Client `ci` handles the next message from the server.
fn deliver(ci: usize, clients: &mut [Client], server: &Server) -> SimResult<bool> {
    let client = &mut clients[ci];
    let Some(msg) = client.down.pop_front() else {
        return Ok(false);
    };
    match msg {
        Down::Ack { id, seq } => {
            ensure!(
                server.keys.get((seq as usize).wrapping_sub(1)) == Some(&(ci, id)),
                "c{ci} got ack of list {id} at seq {seq}, which holds {:?}",
                server.keys.get((seq as usize).wrapping_sub(1))
            );
        }
        Down::Conflict { id } => {
            ensure!(
                client.in_flight_id == Some(id),
                "c{ci} got a conflict for {id}, in flight {:?}",
                client.in_flight_id
            );
            return Err("conflicts are handled by the caller".into());
        }
        Down::Event(c) => {
            ensure!(
                c.seq == client.sim.seq + 1,
                "c{ci} at seq {} got event {}",
                client.sim.seq,
                c.seq
            );
            let own = c.from == ci && client.sim.in_flight.is_some();
            client.sim.receive(&c).map_err(|e| {
                format!(
                    "c{ci} cannot apply seq {}: {e}: {}",
                    c.seq,
                    doc::encode_ops(&c.ops)
                )
            })?;
            if own {
                client.in_flight_id = None;
            }
            if let Some(h) = server.hashes.get(&c.seq) {
                if client.sim.in_flight.is_none() && client.sim.buffer.is_empty() {
                    let mine = doc::state_hash(&client.sim.state);
                    ensure!(
                        &mine == h,
                        "c{ci} drifted at seq {}: {}",
                        c.seq,
                        client.sim.state
                    );
                }
            }
        }
    }
    Ok(true)
}

/// Client `ci` reconnects: lists it sent are read by the server or lost, events the server sent
/// it are lost, then it rejoins, recovering by replay or by taking the state.
async fn reconnect(
    ci: usize,
    recovered: bool,
    clients: &mut [Client],
    server: &mut Server,
    rng: &mut StdRng,
) -> SimResult<()> {
    let ups: Vec<Up> = clients[ci].up.drain(..).collect();
    for up in ups {
        if rng.random_bool(0.5) {
            server.receive(ci, up, clients, rng).await?;
        }
    }
    // What the server sequenced before the connection dropped went out (and is lost with it).
    server.flush(clients).await?;
    clients[ci].down.clear();
    if recovered {
        let seen = clients[ci].sim.seq;
        let missed = server.replay(seen, clients).await?;
        let client = &mut clients[ci];
        client.down.extend(missed.into_iter().map(Down::Event));
        // The in-flight list goes again with the same id, made against what the client has.
        if let (Some(ops), Some(id)) = (&client.sim.in_flight, client.in_flight_id) {
            client.up.push_back(Up {
                id,
                base: seen,
                ops: ops.clone(),
            });
        }
    } else {
        let doc = server.core.doc().ok_or("not a doc room")?;
        let client = &mut clients[ci];
        client.sim.resync(doc.state.clone(), doc.seq.0);
        client.in_flight_id = None;
    }
    Ok(())
}

fn text_piece(rng: &mut StdRng) -> String {
    ["a", "bc", "é", "😀", "xyz", " ", "Ω"][rng.random_range(0..7)].to_owned()
}

fn element(rng: &mut StdRng) -> Value {
    match rng.random_range(0..4) {
        0 => json!(rng.random_range(0..100)),
        1 => json!(text_piece(rng)),
        2 => json!({"t": text_piece(rng), "n": 0}),
        _ => json!([1, 2]),
    }
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.into())
}

/// A text op on the string `s` at `path`.
fn text_op(path: Vec<PathSeg>, s: &str, rng: &mut StdRng) -> Op {
    let len = s.chars().count();
    let insert = len == 0 || rng.random_bool(if len > 200 { 0.3 } else { 0.6 });
    if insert {
        Op::Text {
            path,
            pos: rng.random_range(0..=len),
            edit: TextEdit::Insert(text_piece(rng)),
        }
    } else {
        let pos = rng.random_range(0..len);
        let n = rng.random_range(1..=(len - pos).min(6));
        Op::Text {
            path,
            pos,
            edit: TextEdit::Delete(n),
        }
    }
}

/// A random op valid against `s` (`{"counter":n,"text":"…","list":[…],"map":{…}}`); nothing
/// ever replaces or deletes `counter`, so its final value is the sum of the committed adds.
fn gen_op(s: &Value, rng: &mut StdRng) -> Option<Op> {
    let list = s["list"].as_array()?;
    let map = s["map"].as_object()?;
    let roll = rng.random_range(0..100);
    Some(match roll {
        0..15 => Op::Add {
            path: vec![key("counter")],
            value: Number::from(rng.random_range(-3i64..=5)),
        },
        15..35 => text_op(vec![key("text")], s["text"].as_str()?, rng),
        35..65 => {
            let len = list.len();
            let r = rng.random_range(0..10);
            if len == 0 || (r < 4 && len < 40) {
                Op::Ins {
                    path: vec![key("list"), PathSeg::Index(rng.random_range(0..=len))],
                    value: element(rng),
                }
            } else if r < 6 || len >= 40 {
                Op::Del {
                    path: vec![key("list"), PathSeg::Index(rng.random_range(0..len))],
                }
            } else if r < 8 {
                Op::Move {
                    path: vec![key("list"), PathSeg::Index(rng.random_range(0..len))],
                    to: rng.random_range(0..len),
                }
            } else {
                Op::Set {
                    path: vec![key("list"), PathSeg::Index(rng.random_range(0..len))],
                    value: element(rng),
                }
            }
        }
        65..82 => {
            let k = ["a", "b", "c", "d", "e", "f"][rng.random_range(0..6)];
            if map.contains_key(k) && rng.random_bool(0.4) {
                Op::Del {
                    path: vec![key("map"), key(k)],
                }
            } else {
                Op::Set {
                    path: vec![key("map"), key(k)],
                    value: element(rng),
                }
            }
        }
        _ => {
            // An edit inside a list element or a map value.
            let (path, v) = if rng.random_bool(0.7) && !list.is_empty() {
                let i = rng.random_range(0..list.len());
                (vec![key("list"), PathSeg::Index(i)], &list[i])
            } else {
                let (k, v) = map.iter().nth(rng.random_range(0..map.len().max(1)))?;
                (vec![key("map"), key(k)], v)
            };
            match v {
                Value::String(t) => text_op(path, t, rng),
                Value::Number(_) => Op::Add {
                    path,
                    value: Number::from(rng.random_range(-2i64..=2)),
                },
                Value::Object(o) => {
                    let mut path = path;
                    if rng.random_bool(0.5) {
                        path.push(key("t"));
                        text_op(path, o.get("t")?.as_str()?, rng)
                    } else {
                        path.push(key("n"));
                        o.get("n")?.as_i64()?;
                        Op::Add {
                            path,
                            value: Number::from(rng.random_range(-2i64..=2)),
                        }
                    }
                }
                Value::Array(a) => {
                    let mut path = path;
                    path.push(PathSeg::Index(rng.random_range(0..=a.len())));
                    Op::Ins {
                        path,
                        value: json!(rng.random_range(0..9)),
                    }
                }
                _ => return None,
            }
        }
    })
}

/// Counts, for the summary.
#[derive(Default, Debug)]
struct Stats {
    commits: u64,
    duplicates: u64,
    conflicts: u64,
    reconnects: u64,
    lag_drops: u64,
}

async fn run_seed(seed: u64, ops_per_client: usize) -> SimResult<Stats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let room = RoomId::new("doc:sim").map_err(|e| e.to_string())?;
    let store = MemoryStore::new();
    store
        .create_room(&room, RoomKind::Doc, &Epoch("e-sim".into()))
        .await
        .map_err(|e| e.to_string())?;
    let initial = json!({"counter": 0, "text": "", "list": [], "map": {}});
    // The initial document is the first committed list, so the store has all of it.
    let window = if rng.random_bool(0.5) { 24 } else { 10_000 };
    let init_ops = vec![Op::Set {
        path: Vec::new(),
        value: initial.clone(),
    }];
    store
        .append(
            &room,
            Append::new(
                Epoch("e-sim".into()),
                vec![StoredEvent {
                    seq: Seq(1),
                    hlc: HlcText::parse("0000000000001-000000-init").ok_or("an hlc")?,
                    from: ClientId::new("http").map_err(|e| e.to_string())?,
                    op_id: None,
                    data: RawValue::from_string(doc::encode_ops(&init_ops).to_string())
                        .expect("JSON"),
                }],
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The server's limits do not bite: every list the clients make is valid.
    let cfg = Config {
        doc_window: window,
        doc_snapshot_every: rng.random_range(50..300),
        doc_hash_every: HASH_EVERY,
        // A small table and window: retries of older lists are looked up in the store.
        idempotency_cache: 64,
        room_window: 64,
        doc_max_ops: usize::MAX,
        doc_max_depth: usize::MAX,
        doc_max_bytes: usize::MAX,
        doc_max_rebase_work: u64::MAX,
        doc_max_apply_work: u64::MAX,
        ..Config::default()
    };
    let mut core = RoomCore::new(room.clone(), CoreConfig::of(&cfg), Metrics::new());
    core.loaded(load(&store, &room, &cfg, None).await);
    let _ = core.drain().count();
    ensure!(core.doc().is_some(), "the doc room did not load");
    let mut server = Server {
        core,
        env: StepEnv::new("sim", 1_000),
        store,
        room,
        window,
        log: vec![Rc::new(Committed {
            seq: 1,
            from: usize::MAX,
            ops: init_ops,
        })],
        keys: vec![(usize::MAX, 0)],
        sent_adds: HashMap::new(),
        hashes: HashMap::new(),
        add_sum: 0,
        duplicates: 0,
        conflicts: 0,
    };
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|id| Client {
            sim: SimClient::new(id, initial.clone(), 1),
            up: VecDeque::new(),
            down: VecDeque::new(),
            next_id: 0,
            in_flight_id: None,
            ops_left: ops_per_client,
            speed: rng.random_range(1..=8),
        })
        .collect();
    let mut reconnects = 0;
    let mut lag_drops = 0;
    let mut steps: u64 = 0;
    while clients.iter().any(|c| c.ops_left > 0) {
        steps += 1;
        ensure!(steps < 10_000_000, "no progress");
        let ci = rng.random_range(0..CLIENTS);
        let moves = rng.random_range(1..=8) <= clients[ci].speed;
        match rng.random_range(0..10_000) {
            0..2000 => {
                let c = &mut clients[ci];
                if c.ops_left == 0 {
                    continue;
                }
                let Some(op) = gen_op(&c.sim.state, &mut rng) else {
                    continue;
                };
                c.sim.edit(std::slice::from_ref(&op)).map_err(|e| {
                    format!(
                        "c{ci} cannot apply its own edit {}: {e}",
                        doc::encode_ops(std::slice::from_ref(&op))
                    )
                })?;
                c.ops_left -= 1;
            }
            2000..2500 => {
                send(&mut clients[ci]);
            }
            2500..5000 if moves => {
                if let Some(up) = clients[ci].up.pop_front() {
                    server.receive(ci, up, &mut clients, &mut rng).await?;
                }
                // A member too far behind is disconnected (close 4008) and rejoins.
                for lagging in 0..CLIENTS {
                    if clients[lagging].down.len() > LAG_LIMIT {
                        lag_drops += 1;
                        let recovered = rng.random_bool(0.5);
                        reconnect(lagging, recovered, &mut clients, &mut server, &mut rng).await?;
                    }
                }
            }
            5000..9997 if moves => {
                for _ in 0..rng.random_range(1..=4) {
                    if matches!(clients[ci].down.front(), Some(Down::Conflict { .. })) {
                        deliver_conflict(ci, &mut clients, &mut server, &mut rng).await?;
                    } else {
                        deliver(ci, &mut clients, &server)?;
                    }
                }
                // Like the real client: the next list goes as soon as the last is acked.
                send(&mut clients[ci]);
            }
            9997.. => {
                reconnects += 1;
                let recovered = rng.random_bool(0.5);
                reconnect(ci, recovered, &mut clients, &mut server, &mut rng).await?;
            }
            _ => {}
        }
    }
    // Drain: deliver everything, send what waits, until nothing moves.
    loop {
        let mut moved = false;
        for ci in 0..CLIENTS {
            while let Some(up) = clients[ci].up.pop_front() {
                server.receive(ci, up, &mut clients, &mut rng).await?;
                moved = true;
            }
        }
        // What is sequenced commits (acks and events to the clients).
        server.flush(&mut clients).await?;
        for ci in 0..CLIENTS {
            loop {
                if matches!(clients[ci].down.front(), Some(Down::Conflict { .. })) {
                    deliver_conflict(ci, &mut clients, &mut server, &mut rng).await?;
                } else if !deliver(ci, &mut clients, &server)? {
                    break;
                }
                moved = true;
            }
            moved |= send(&mut clients[ci]);
        }
        if !moved {
            break;
        }
    }
    server.flush(&mut clients).await?;
    check_end(&server, &clients).await?;
    Ok(Stats {
        commits: server.core.committed().0,
        duplicates: server.duplicates,
        conflicts: server.conflicts,
        reconnects,
        lag_drops,
    })
}

/// Sends the buffered edits if nothing is in flight.
fn send(c: &mut Client) -> bool {
    let Some((base, ops)) = c.sim.take_send() else {
        return false;
    };
    c.next_id += 1;
    c.in_flight_id = Some(c.next_id);
    c.up.push_back(Up {
        id: c.next_id,
        base,
        ops,
    });
    true
}

/// A `conflict` for the in-flight list: the client resyncs by rejoining (`recovered:false`).
async fn deliver_conflict(
    ci: usize,
    clients: &mut [Client],
    server: &mut Server,
    rng: &mut StdRng,
) -> SimResult<()> {
    let Some(Down::Conflict { id }) = clients[ci].down.pop_front() else {
        return Err("no conflict".into());
    };
    ensure!(
        clients[ci].in_flight_id == Some(id),
        "c{ci} got a conflict for {id}, in flight {:?}",
        clients[ci].in_flight_id
    );
    reconnect(ci, false, clients, server, rng).await
}

async fn check_end(server: &Server, clients: &[Client]) -> SimResult<()> {
    let doc = server.core.doc().ok_or("not a doc room")?;
    ensure!(
        doc.seq == server.core.committed(),
        "lists still in flight at the end"
    );
    let head = doc.seq;
    let hash = doc.hash();
    let state = &doc.state;
    for (ci, c) in clients.iter().enumerate() {
        ensure!(
            c.sim.seq == head.0 && c.sim.in_flight.is_none() && c.sim.buffer.is_empty(),
            "c{ci} did not drain: seq {} of {head}, in flight {:?}, buffer {}",
            c.sim.seq,
            c.sim.in_flight.is_some(),
            c.sim.buffer.len()
        );
        ensure!(
            doc::state_hash(&c.sim.state) == hash && &c.sim.state == state,
            "c{ci} diverged:\n client {}\n server {state}",
            c.sim.state
        );
    }
    let room = &server.room;
    let record = server
        .store
        .load_room(room)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("room missing")?;
    ensure!(record.head == head, "store head {} != {head}", record.head);
    let rebuilt = state_at(&server.store, room, head)
        .await
        .map_err(|e| format!("state_at: {e}"))?;
    ensure!(
        doc::state_hash(&rebuilt) == hash && &rebuilt == state,
        "state_at(head) differs:\n store  {rebuilt}\n server {state}"
    );
    let loaded = DocState::load(
        &server.store,
        room,
        head,
        server.window,
        None,
        DocLimits::UNLIMITED,
    )
    .await
    .map_err(|e| format!("load: {e}"))?;
    ensure!(
        loaded.seq == head
            && loaded.hash() == hash
            && &loaded.state == state
            && loaded.bytes == doc::canonical_len(state),
        "a fresh load differs:\n loaded {}\n server {state}",
        loaded.state
    );
    // Every list in the store once, in order, as sequenced.
    let mut keys = HashSet::new();
    let mut after = Seq::ZERO;
    loop {
        let events = server
            .store
            .read_events(room, after, 1000)
            .await
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            break;
        }
        for e in events {
            ensure!(e.seq == after.next(), "gap before {}", e.seq);
            after = e.seq;
            if let Some(id) = &e.op_id {
                ensure!(
                    keys.insert((e.from.clone(), id.clone())),
                    "{}/{id} stored twice",
                    e.from
                );
            }
            let sequenced = doc::encode_ops(&server.log[(e.seq.0 - 1) as usize].ops).to_string();
            ensure!(e.data.get() == sequenced, "stored ops at {} differ", e.seq);
        }
    }
    ensure!(after == head, "the store ends at {after}, not {head}");
    let counter = state["counter"]
        .as_i64()
        .ok_or("counter is not an integer")?;
    ensure!(
        counter == server.add_sum,
        "counter is {counter}, the committed adds sum to {}",
        server.add_sum
    );
    Ok(())
}

#[test]
fn doc_rooms_converge_under_random_delays_and_reconnects() {
    let ops = env_u64("CONCORD_SIM_OPS").map_or(DEFAULT_OPS, |n| n as usize);
    let default = if sim::heavy() {
        HEAVY_SEEDS
    } else {
        DEFAULT_SEEDS
    };
    let seeds = sim::seeds(
        "CONCORD_SIM_SEED",
        env_u64("CONCORD_SIM_SEEDS").unwrap_or(default),
    );
    let started = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let totals: Mutex<Stats> = Mutex::new(Stats::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let outcome =
                    std::panic::catch_unwind(|| futures::executor::block_on(run_seed(seed, ops)));
                let result = match outcome {
                    Ok(r) => r,
                    Err(panic) => Err(panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into())),
                };
                match result {
                    Ok(s) => {
                        let mut t = totals.lock().unwrap();
                        t.commits += s.commits;
                        t.duplicates += s.duplicates;
                        t.conflicts += s.conflicts;
                        t.reconnects += s.reconnects;
                        t.lag_drops += s.lag_drops;
                    }
                    Err(e) => {
                        eprintln!("seed {seed} FAILED: {e}");
                        failures.lock().unwrap().push((seed, e));
                    }
                }
            });
        }
    });
    let t = totals.into_inner().unwrap();
    eprintln!(
        "doc sim: {} seeds × {CLIENTS} clients × {ops} ops in {:.1?}: {} commits, {} duplicate \
         resends, {} conflicts, {} reconnects, {} lagging members dropped",
        seeds.len(),
        started.elapsed(),
        t.commits,
        t.duplicates,
        t.conflicts,
        t.reconnects,
        t.lag_drops
    );
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    if let Some((seed, e)) = failures.first() {
        panic!(
            "{} of {} seeds failed; first: seed {seed} (replay: CONCORD_SIM_SEED={seed} cargo \
             test -p concord-server --test doc_sim): {e}",
            failures.len(),
            seeds.len()
        );
    }
}
