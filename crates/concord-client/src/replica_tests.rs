//! Tests of the replica's OT loop against an in-process fake server built on `SimServer`
//! (sequencing, rebasing, ids, dedupe by (client, id), per-seq hashes), with no network.

use super::*;
use crate::doc::{DocUpdate, ResyncReason};
use concord_core::doc::sim::SimServer;
use concord_core::doc::{encode_ops, PathSeg, TextEdit};
use concord_protocol::Json;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;

const EPOCH: &str = "e1";

/// The server side: `SimServer` plus op ids, dedupe and the hash after every seq.
struct Fake {
    sim: SimServer,
    clients: Vec<String>,
    /// (client, op id) of each seq (index seq - 1).
    ids: Vec<(String, String)>,
    hashes: Vec<String>,
    dedupe: HashMap<(String, String), u64>,
    /// Ops whose base is older than this get `conflict`.
    window_start: u64,
}

impl Fake {
    fn new(state: Value) -> Self {
        Fake {
            sim: SimServer::new(state),
            clients: Vec::new(),
            ids: Vec::new(),
            hashes: Vec::new(),
            dedupe: HashMap::new(),
            window_start: 0,
        }
    }

    fn seq(&self) -> u64 {
        self.sim.seq()
    }

    fn state(&self) -> &Value {
        &self.sim.state
    }

    /// An op list from `client`: `Ok((seq, new))` (the original seq for a known id) or the
    /// error code.
    fn submit(&mut self, client: &str, send: &OpSend) -> Result<(u64, bool), &'static str> {
        let key = (client.to_string(), send.id.clone());
        if let Some(&seq) = self.dedupe.get(&key) {
            return Ok((seq, false));
        }
        if send.base < self.window_start || send.base > self.seq() {
            return Err("conflict");
        }
        let from = match self.clients.iter().position(|c| c == client) {
            Some(i) => i,
            None => {
                self.clients.push(client.to_string());
                self.clients.len() - 1
            }
        };
        let (seq, _) = self
            .sim
            .submit(from, send.base, &send.ops)
            .map_err(|_| "invalid_op")?;
        self.ids.push(key.clone());
        self.hashes.push(state_hash(&self.sim.state));
        self.dedupe.insert(key, seq);
        Ok((seq, true))
    }

    fn event(&self, seq: u64) -> EventMsg {
        let i = (seq - 1) as usize;
        let (from, id) = self.ids[i].clone();
        EventMsg {
            room: "doc".into(),
            seq,
            hlc: format!("h{seq}").into(),
            from: from.into(),
            id: Some(id.into()),
            data: None,
            ops: Some(Json::encode(&encode_ops(&self.sim.log[i].ops)).unwrap()),
            hash: Some(self.hashes[i].clone().into()),
        }
    }

    fn events_after(&self, seq: u64) -> Vec<EventMsg> {
        (seq + 1..=self.seq()).map(|s| self.event(s)).collect()
    }
}

/// A server → client message.
#[derive(Debug)]
enum Down {
    Ack { id: String, seq: u64 },
    Event(EventMsg),
    Refused { id: String, code: &'static str },
}

struct Peer {
    name: String,
    r: Replica,
    /// Sent and not yet received by the server, in order.
    up: VecDeque<OpSend>,
    /// Sent by the server and not yet received, in order.
    down: VecDeque<Down>,
    updates: Vec<DocUpdate>,
    next_id: u64,
    /// Ids of the lists this peer sent (for dedupe checks).
    sent_ids: Vec<String>,
}

impl Peer {
    fn new(name: &str, fake: &Fake) -> Self {
        Peer {
            name: name.into(),
            r: Replica::new(name.into(), EPOCH.into(), fake.seq(), fake.state().clone()),
            up: VecDeque::new(),
            down: VecDeque::new(),
            updates: Vec::new(),
            next_id: 1,
            sent_ids: Vec::new(),
        }
    }

    fn pump(&mut self) {
        let (name, next) = (&self.name, &mut self.next_id);
        while let Some(send) = self.r.take_send(Instant::now(), || {
            let id = format!("d-{name}-{next}");
            *next += 1;
            id
        }) {
            if !send.resend {
                self.sent_ids.push(send.id.clone());
            }
            self.up.push_back(send);
        }
        self.r
            .check()
            .unwrap_or_else(|e| panic!("replica {}: {e}", self.name));
    }
}

struct Net {
    fake: Fake,
    peers: Vec<Peer>,
}

impl Net {
    fn new(state: Value, names: &[&str]) -> Self {
        let fake = Fake::new(state);
        let peers = names.iter().map(|n| Peer::new(n, &fake)).collect();
        Net { fake, peers }
    }

    fn edit(&mut self, p: usize, ops: Value) {
        let ops = decode_ops(&ops, &Limits::default()).unwrap();
        self.peers[p].r.edit(ops).unwrap();
        self.peers[p].pump();
    }

    /// The server receives `p`'s next list; its ack goes before or after its event.
    fn deliver_up(&mut self, p: usize, ack_first: bool) {
        let Some(send) = self.peers[p].up.pop_front() else {
            return;
        };
        let name = self.peers[p].name.clone();
        match self.fake.submit(&name, &send) {
            Ok((seq, true)) => {
                for (q, peer) in self.peers.iter_mut().enumerate() {
                    if q == p && ack_first {
                        peer.down.push_back(Down::Ack {
                            id: send.id.clone(),
                            seq,
                        });
                    }
                    peer.down.push_back(Down::Event(self.fake.event(seq)));
                    if q == p && !ack_first {
                        peer.down.push_back(Down::Ack {
                            id: send.id.clone(),
                            seq,
                        });
                    }
                }
            }
            Ok((seq, false)) => self.peers[p].down.push_back(Down::Ack { id: send.id, seq }),
            Err(code) => self.peers[p]
                .down
                .push_back(Down::Refused { id: send.id, code }),
        }
    }

    /// `p` receives its next message. Trouble is returned, not handled.
    fn deliver_down(&mut self, p: usize) -> Result<(), Trouble> {
        let peer = &mut self.peers[p];
        let Some(msg) = peer.down.pop_front() else {
            return Ok(());
        };
        match msg {
            Down::Ack { id, seq } => peer.updates.extend(peer.r.on_ack(&id, seq)?),
            Down::Event(ev) => peer.updates.extend(peer.r.on_event(&ev)?),
            Down::Refused { id, code } => {
                let reason = if code == "conflict" {
                    ResyncReason::Conflict
                } else {
                    ResyncReason::Rejected
                };
                assert!(peer.r.refused(&id, reason), "refusal of {id} not in flight");
                // The task asks for the state; the fake answers at once.
                self.resync_now(p);
                return Ok(());
            }
        }
        self.peers[p].pump();
        Ok(())
    }

    /// A `joined` without `since` answers a resync.
    fn resync_now(&mut self, p: usize) {
        let (seq, state) = (self.fake.seq(), self.fake.state().clone());
        let peer = &mut self.peers[p];
        // Everything on the wire before the `joined` is in its state.
        peer.down.clear();
        let hash = state_hash(&state);
        let r = peer
            .r
            .on_rejoined(EPOCH.into(), seq, false, &[], Some(state), Some(&hash))
            .unwrap();
        assert_eq!(r.hash_mismatch, None);
        peer.updates.extend(r.updates);
        peer.pump();
    }

    /// `p` loses its connection (what is on the wire either way is lost) and rejoins with
    /// `since`; the fake recovers the missed events.
    fn reconnect(&mut self, p: usize) {
        let events = {
            let peer = &mut self.peers[p];
            peer.up.clear();
            peer.down.clear();
            peer.r.connection_lost();
            self.fake.events_after(peer.r.since().seq)
        };
        let peer = &mut self.peers[p];
        let r = peer
            .r
            .on_rejoined(EPOCH.into(), self.fake.seq(), true, &events, None, None)
            .unwrap();
        peer.updates.extend(r.updates);
        peer.pump();
    }

    fn drain(&mut self, rng: &mut StdRng) {
        loop {
            let busy: Vec<usize> = (0..self.peers.len())
                .filter(|&p| !self.peers[p].up.is_empty() || !self.peers[p].down.is_empty())
                .collect();
            if busy.is_empty() {
                return;
            }
            let p = busy[rng.random_range(0..busy.len())];
            if !self.peers[p].up.is_empty() && (self.peers[p].down.is_empty() || rng.random()) {
                self.deliver_up(p, rng.random());
            } else {
                self.deliver_down(p).unwrap();
            }
        }
    }

    fn assert_converged(&self) {
        let want = self.fake.state();
        for peer in &self.peers {
            assert!(peer.r.is_flushed(), "{} has pending edits", peer.name);
            assert_eq!(peer.r.seq(), self.fake.seq(), "{}", peer.name);
            assert_eq!(peer.r.confirmed_seq(), self.fake.seq(), "{}", peer.name);
            assert_eq!(peer.r.state(), want, "{} state", peer.name);
            assert_eq!(peer.r.confirmed(), want, "{} confirmed", peer.name);
            assert_eq!(
                state_hash(peer.r.state()),
                state_hash(want),
                "{}",
                peer.name
            );
        }
    }
}

/// Every `Changed` is the next seq after the previous update (a `Resynced` sets the seq).
fn assert_updates_in_order(start: u64, updates: &[DocUpdate]) {
    let mut seq = start;
    for u in updates {
        match u {
            DocUpdate::Changed { seq: s, .. } => {
                assert_eq!(*s, seq + 1, "updates {updates:?}");
                seq = *s;
            }
            DocUpdate::Resynced { seq: s, .. } => seq = *s,
            DocUpdate::Rejected { .. } => {}
        }
    }
}

fn ops(v: Value) -> Vec<Op> {
    decode_ops(&v, &Limits::default()).unwrap()
}

fn initial() -> Value {
    json!({"text":"hello","list":[1,2,3],"n":0,"f":0.5,"m":{"a":1}})
}

/// A random op list (1 to 3 ops) valid against `state`.
fn random_ops(rng: &mut StdRng, state: &Value) -> Vec<Op> {
    let mut scratch = state.clone();
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let op = random_op(rng, &scratch);
        apply_in_place(&mut scratch, std::slice::from_ref(&op)).unwrap();
        out.push(op);
    }
    out
}

fn random_op(rng: &mut StdRng, state: &Value) -> Op {
    let key = |k: &str| vec![PathSeg::Key(k.into())];
    let text_len = state["text"].as_str().map_or(0, |s| s.chars().count());
    let list_len = state["list"].as_array().map_or(0, Vec::len);
    let keys: Vec<String> = state["m"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let at = |i: usize| vec![PathSeg::Key("list".into()), PathSeg::Index(i)];
    loop {
        match rng.random_range(0..12) {
            0 | 1 => {
                let pieces = ["a", "b", "é", "😀", "xy"];
                return Op::Text {
                    path: key("text"),
                    pos: rng.random_range(0..=text_len),
                    edit: TextEdit::Insert(pieces[rng.random_range(0..pieces.len())].into()),
                };
            }
            2 if text_len > 0 => {
                let pos = rng.random_range(0..text_len);
                return Op::Text {
                    path: key("text"),
                    pos,
                    edit: TextEdit::Delete(rng.random_range(1..=(text_len - pos).min(3))),
                };
            }
            3 => {
                return Op::Ins {
                    path: at(rng.random_range(0..=list_len)),
                    value: json!(rng.random_range(0..100)),
                }
            }
            4 if list_len > 0 => {
                return Op::Del {
                    path: at(rng.random_range(0..list_len)),
                }
            }
            5 if list_len > 1 => {
                return Op::Move {
                    path: at(rng.random_range(0..list_len)),
                    to: rng.random_range(0..list_len),
                }
            }
            6 if list_len > 0 => {
                return Op::Set {
                    path: at(rng.random_range(0..list_len)),
                    value: json!(rng.random_range(100..200)),
                }
            }
            7 => {
                return Op::Add {
                    path: key("n"),
                    value: rng.random_range(-3i64..=5).into(),
                }
            }
            8 => {
                let v = [0.1, 0.2, 0.7, 1e-3][rng.random_range(0..4)];
                return Op::Add {
                    path: key("f"),
                    value: serde_json::Number::from_f64(v).unwrap(),
                };
            }
            9 => {
                let k = ["a", "b", "c"][rng.random_range(0..3)];
                return Op::Set {
                    path: vec![PathSeg::Key("m".into()), PathSeg::Key(k.into())],
                    value: json!(rng.random_range(0..10)),
                };
            }
            10 if !keys.is_empty() => {
                let k = keys[rng.random_range(0..keys.len())].clone();
                return Op::Del {
                    path: vec![PathSeg::Key("m".into()), PathSeg::Key(k)],
                };
            }
            11 if rng.random_range(0..8) == 0 => {
                return Op::Set {
                    path: key("m"),
                    value: json!({}),
                }
            }
            _ => {}
        }
    }
}

#[test]
fn random_concurrent_edits_converge_with_every_delivery_order() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut net = Net::new(initial(), &["c-a", "c-b", "c-c"]);
        for _ in 0..80 {
            let p = rng.random_range(0..3);
            match rng.random_range(0..10) {
                0..=3 => {
                    let ops = random_ops(&mut rng, net.peers[p].r.state());
                    net.peers[p].r.edit(ops).unwrap();
                    net.peers[p].pump();
                }
                4..=5 => net.deliver_up(p, rng.random()),
                6..=8 => net.deliver_down(p).unwrap(),
                _ => {
                    if rng.random_range(0..4) == 0 {
                        net.reconnect(p);
                    }
                }
            }
        }
        net.drain(&mut rng);
        net.assert_converged();
        for peer in &net.peers {
            assert_updates_in_order(0, &peer.updates);
            // Every list this peer sent committed once, and was reported once as its own.
            let own = peer
                .updates
                .iter()
                .filter(|u| {
                    matches!(
                        u,
                        DocUpdate::Changed {
                            from_self: true,
                            ..
                        }
                    )
                })
                .count();
            let committed = net.fake.ids.iter().filter(|(c, _)| *c == peer.name).count();
            assert_eq!(own, committed, "seed {seed} peer {}", peer.name);
            assert_eq!(
                committed,
                peer.sent_ids.len(),
                "seed {seed} peer {}",
                peer.name
            );
        }
    }
}

#[test]
fn concurrent_inserts_at_one_position_lists_and_counters_converge() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut net = Net::new(json!({"t":"ac","l":[1,2],"n":10}), &["c-a", "c-b"]);
    net.edit(
        0,
        json!([{"op":"text","path":["t"],"pos":1,"insert":"A"},{"op":"ins","path":["l",1],"value":"A"},{"op":"add","path":["n"],"value":5}]),
    );
    net.edit(
        1,
        json!([{"op":"text","path":["t"],"pos":1,"insert":"B"},{"op":"ins","path":["l",1],"value":"B"},{"op":"add","path":["n"],"value":-2}]),
    );
    // Both are in flight; more edits wait in the buffers.
    net.edit(0, json!([{"op":"move","path":["l",0],"to":2}]));
    net.edit(1, json!([{"op":"text","path":["t"],"pos":0,"delete":1}]));
    assert!(net.peers[0].up.len() == 1 && net.peers[1].up.len() == 1);
    net.deliver_up(0, true);
    net.deliver_up(1, false);
    net.drain(&mut rng);
    net.assert_converged();
    // a's insert was sequenced first, so it goes first.
    assert_eq!(net.fake.state()["t"], "ABc");
    assert_eq!(net.fake.state()["n"], 13);
    assert_eq!(net.fake.state()["l"], json!(["A", "B", 2, 1]));
}

#[test]
fn ack_first_and_echo_first_each_advance_seq_once() {
    for ack_first in [true, false] {
        let mut net = Net::new(json!({"n":0}), &["c-a"]);
        net.edit(0, json!([{"op":"add","path":["n"],"value":1}]));
        net.edit(0, json!([{"op":"add","path":["n"],"value":2}]));
        net.deliver_up(0, ack_first);
        net.deliver_down(0).unwrap();
        assert_eq!(net.peers[0].r.seq(), 1);
        // The buffer went out on the commit, whichever message came first.
        assert_eq!(net.peers[0].up.len(), 1);
        assert_eq!(net.peers[0].up[0].base, 1);
        net.deliver_down(0).unwrap();
        assert_eq!(net.peers[0].r.seq(), 1);
        assert_eq!(net.peers[0].r.confirmed_seq(), 1);
        net.deliver_up(0, !ack_first);
        net.deliver_down(0).unwrap();
        net.deliver_down(0).unwrap();
        assert_eq!(
            net.peers[0].updates,
            vec![
                DocUpdate::Changed {
                    seq: 1,
                    from_self: true
                },
                DocUpdate::Changed {
                    seq: 2,
                    from_self: true
                }
            ]
        );
        net.assert_converged();
    }
}

#[test]
fn an_ack_ahead_of_earlier_events_commits_at_its_echo() {
    let mut net = Net::new(json!({"t":""}), &["c-a", "c-b"]);
    net.edit(1, json!([{"op":"text","path":["t"],"pos":0,"insert":"b"}]));
    net.edit(0, json!([{"op":"text","path":["t"],"pos":0,"insert":"a"}]));
    net.deliver_up(1, true); // seq 1 (b)
    net.deliver_up(0, true); // seq 2 (a)
    let a = &mut net.peers[0];
    // a's queue: event 1, ack 2, event 2. Deliver the ack before event 1.
    let ev1 = a.down.pop_front().unwrap();
    let Some(Down::Ack { id, seq: 2 }) = a.down.pop_front() else {
        panic!()
    };
    assert_eq!(a.r.on_ack(&id, 2), Ok(None));
    assert_eq!(a.r.seq(), 0);
    a.down.push_front(ev1);
    net.deliver_down(0).unwrap();
    assert_eq!(net.peers[0].r.seq(), 1);
    net.deliver_down(0).unwrap();
    assert_eq!(net.peers[0].r.seq(), 2);
    let mut rng = StdRng::seed_from_u64(2);
    net.drain(&mut rng);
    net.assert_converged();
    assert_eq!(
        net.peers[0].updates,
        vec![
            DocUpdate::Changed {
                seq: 1,
                from_self: false
            },
            DocUpdate::Changed {
                seq: 2,
                from_self: true
            }
        ]
    );
}

#[test]
fn a_hash_mismatch_is_drift_and_the_resync_drops_pending_edits() {
    let mut net = Net::new(json!({"n":1}), &["c-a", "c-b"]);
    net.edit(1, json!([{"op":"add","path":["n"],"value":1}]));
    net.deliver_up(1, true);
    // a edits meanwhile: in flight, and more in the buffer.
    net.edit(0, json!([{"op":"set","path":["x"],"value":1}]));
    net.edit(0, json!([{"op":"set","path":["y"],"value":1}]));
    let a = &mut net.peers[0];
    let Some(Down::Event(mut ev)) = a.down.pop_front() else {
        panic!()
    };
    ev.hash = Some("0".repeat(32).into());
    match a.r.on_event(&ev) {
        Err(Trouble::Drift {
            report: Some((1, ours)),
            ..
        }) => assert_eq!(ours, state_hash(&json!({"n":2}))),
        other => panic!("{other:?}"),
    }
    // The task reports and asks for the state.
    a.r.begin_resync(ResyncReason::Drift);
    assert!(!a.r.is_flushed());
    assert_eq!(a.r.take_send(Instant::now(), || unreachable!()), None);
    // Edits until the state arrives apply locally but will be dropped too.
    a.r.edit(ops(json!([{"op":"set","path":["z"],"value":1}])))
        .unwrap();
    // a's in-flight list reaches the server anyway, and commits.
    net.deliver_up(0, true);
    net.resync_now(0);
    let a = &net.peers[0];
    assert_eq!(
        a.updates.last(),
        Some(&DocUpdate::Resynced {
            seq: 2,
            reason: ResyncReason::Drift
        })
    );
    assert_eq!(a.r.state(), &json!({"n":2,"x":1}));
    assert!(a.r.is_flushed());
    let mut rng = StdRng::seed_from_u64(3);
    net.drain(&mut rng);
    net.assert_converged();
    assert_eq!(net.fake.state(), &json!({"n":2,"x":1}));
}

#[test]
fn committed_ops_that_do_not_apply_are_drift() {
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({}));
    let ev = EventMsg {
        room: "doc".into(),
        seq: 1,
        hlc: "h".into(),
        from: "c-b".into(),
        id: Some("x".into()),
        data: None,
        ops: Some(Json::encode(&json!([{"op":"del","path":["nope"]}])).unwrap()),
        hash: None,
    };
    assert!(matches!(
        r.on_event(&ev),
        Err(Trouble::Drift {
            report: Some((0, _)),
            ..
        })
    ));
}

#[test]
fn a_refused_list_rolls_back_to_the_server_state() {
    let mut net = Net::new(json!({"l":[1]}), &["c-a"]);
    net.edit(0, json!([{"op":"set","path":["k"],"value":1}]));
    net.edit(0, json!([{"op":"set","path":["k2"],"value":2}]));
    // What reaches the server does not apply there: `invalid_op`.
    net.peers[0].up[0].ops = ops(json!([{"op":"del","path":["missing"]}]));
    net.deliver_up(0, true);
    net.deliver_down(0).unwrap();
    let a = &net.peers[0];
    assert_eq!(
        a.updates,
        vec![DocUpdate::Resynced {
            seq: 0,
            reason: ResyncReason::Rejected
        }]
    );
    assert_eq!(a.r.state(), &json!({"l":[1]}));
    assert!(a.r.is_flushed());
    assert!(a.up.is_empty());
}

#[test]
fn conflict_resyncs() {
    let mut net = Net::new(json!({}), &["c-a"]);
    net.edit(0, json!([{"op":"set","path":["k"],"value":1}]));
    net.fake.window_start = 5;
    net.deliver_up(0, true);
    net.deliver_down(0).unwrap();
    assert_eq!(
        net.peers[0].updates,
        vec![DocUpdate::Resynced {
            seq: 0,
            reason: ResyncReason::Conflict
        }]
    );
    assert_eq!(net.peers[0].r.state(), &json!({}));
}

#[test]
fn refusals_and_acks_for_lists_not_in_flight_are_ignored() {
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 3, json!({}));
    assert!(!r.refused("d-x", ResyncReason::Rejected));
    assert_eq!(r.on_ack("d-x", 4), Ok(None));
    assert!(!r.retry_later("d-x", Instant::now(), |_| std::time::Duration::ZERO));
    assert!(r.is_flushed());
}

#[test]
fn reconnect_after_a_lost_ack_commits_by_the_recovered_echo_and_does_not_resend() {
    let mut net = Net::new(json!({"n":0}), &["c-a", "c-b"]);
    net.edit(0, json!([{"op":"add","path":["n"],"value":1}]));
    net.deliver_up(0, true); // committed at 1, but a never hears of it
    net.edit(1, json!([{"op":"add","path":["n"],"value":10}]));
    net.deliver_up(1, true); // seq 2
    net.edit(0, json!([{"op":"add","path":["n"],"value":100}])); // buffered behind the in-flight
    net.reconnect(0);
    let a = &net.peers[0];
    assert_eq!(a.r.seq(), 2);
    // The buffer went out as a new list with base 2; the committed one was not resent.
    assert_eq!(a.up.len(), 1);
    assert!(!a.up[0].resend);
    assert_eq!(a.up[0].base, 2);
    assert_eq!(
        a.updates,
        vec![
            DocUpdate::Changed {
                seq: 1,
                from_self: true
            },
            DocUpdate::Changed {
                seq: 2,
                from_self: false
            }
        ]
    );
    let mut rng = StdRng::seed_from_u64(4);
    net.drain(&mut rng);
    net.assert_converged();
    assert_eq!(net.fake.state()["n"], 111);
}

#[test]
fn reconnect_resends_the_uncommitted_list_with_its_id_transformed_to_the_current_seq() {
    let mut net = Net::new(json!({"t":"abc"}), &["c-a", "c-b"]);
    net.edit(0, json!([{"op":"text","path":["t"],"pos":3,"insert":"!"}]));
    let first = net.peers[0].up[0].clone();
    net.edit(1, json!([{"op":"text","path":["t"],"pos":0,"insert":">>"}]));
    net.deliver_up(1, true);
    net.reconnect(0); // a's list was lost on the wire
    let a = &net.peers[0];
    assert_eq!(a.up.len(), 1);
    let again = &a.up[0];
    assert!(again.resend);
    assert_eq!(again.id, first.id);
    assert_eq!(again.base, 1);
    assert_eq!(
        again.ops,
        ops(json!([{"op":"text","path":["t"],"pos":5,"insert":"!"}]))
    );
    // Sent twice (e.g. the first one was not lost after all): the server dedupes.
    let dup = again.clone();
    net.peers[0].up.push_back(dup);
    let mut rng = StdRng::seed_from_u64(5);
    net.drain(&mut rng);
    net.assert_converged();
    assert_eq!(net.fake.seq(), 2);
    assert_eq!(net.fake.state()["t"], ">>abc!");
}

#[test]
fn reset_on_rejoin_takes_the_server_state_and_drops_pending_edits() {
    let mut net = Net::new(json!({"n":0}), &["c-a"]);
    net.edit(0, json!([{"op":"add","path":["n"],"value":1}]));
    net.edit(0, json!([{"op":"add","path":["n"],"value":2}]));
    let a = &mut net.peers[0];
    a.up.clear();
    a.r.connection_lost();
    let server = json!({"restored":true});
    let r =
        a.r.on_rejoined("e2".into(), 7, false, &[], Some(server.clone()), None)
            .unwrap();
    assert_eq!(
        r.updates,
        vec![DocUpdate::Resynced {
            seq: 7,
            reason: ResyncReason::Reset
        }]
    );
    assert_eq!(a.r.state(), &server);
    assert_eq!(a.r.seq(), 7);
    assert_eq!(
        a.r.since(),
        Since {
            epoch: "e2".into(),
            seq: 7
        }
    );
    assert!(a.r.is_flushed());
    assert_eq!(a.r.take_send(Instant::now(), || unreachable!()), None);
}

#[test]
fn recovery_that_does_not_continue_our_position_is_a_protocol_error() {
    let mut fake = Fake::new(json!({"n":0}));
    for n in 1..=3 {
        let send = OpSend {
            id: format!("d-{n}"),
            base: fake.seq(),
            ops: ops(json!([{"op":"add","path":["n"],"value":1}])),
            resend: false,
        };
        fake.submit("c-b", &send).unwrap();
    }
    let mut events = fake.events_after(0);
    events.remove(1);
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({"n":0}));
    assert!(matches!(
        r.on_rejoined(EPOCH.into(), 3, true, &events, None, None),
        Err(Trouble::Protocol(_))
    ));
    // With the state, it is a reset instead.
    let out = r
        .on_rejoined(EPOCH.into(), 3, true, &events, Some(json!({"n":3})), None)
        .unwrap();
    assert_eq!(
        out.updates,
        vec![DocUpdate::Resynced {
            seq: 3,
            reason: ResyncReason::Reset
        }]
    );
    assert_eq!(r.state(), &json!({"n":3}));
}

#[test]
fn a_resync_answered_by_an_earlier_rejoin_asks_for_the_state() {
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({}));
    r.begin_resync(ResyncReason::Drift);
    let out = r
        .on_rejoined(EPOCH.into(), 0, true, &[], None, None)
        .unwrap();
    assert!(out.need_state && out.updates.is_empty());
    assert_eq!(r.resyncing(), Some(ResyncReason::Drift));
    let out = r
        .on_rejoined(
            EPOCH.into(),
            4,
            false,
            &[],
            Some(json!({"a":1})),
            Some("bad"),
        )
        .unwrap();
    assert_eq!(out.hash_mismatch, Some((4, state_hash(&json!({"a":1})))));
    assert_eq!(
        out.updates,
        vec![DocUpdate::Resynced {
            seq: 4,
            reason: ResyncReason::Drift
        }]
    );
}

#[test]
fn gaps_and_impossible_acks_are_reported() {
    let mut net = Net::new(json!({"n":0}), &["c-a", "c-b"]);
    net.edit(1, json!([{"op":"add","path":["n"],"value":1}]));
    net.deliver_up(1, true);
    net.edit(1, json!([{"op":"add","path":["n"],"value":1}]));
    net.deliver_down(1).unwrap();
    net.deliver_down(1).unwrap();
    net.deliver_up(1, true);
    let ev2 = net.fake.event(2);
    assert_eq!(
        net.peers[0].r.on_event(&ev2),
        Err(Trouble::Gap {
            expected: 1,
            got: 2
        })
    );
    // An ack for a seq already applied.
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 5, json!({}));
    r.edit(ops(json!([{"op":"set","path":["k"],"value":1}])))
        .unwrap();
    let send = r.take_send(Instant::now(), || "d-1".into()).unwrap();
    assert!(matches!(r.on_ack(&send.id, 5), Err(Trouble::Protocol(_))));
    // An event at the seq our ack named that is not our list.
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({}));
    r.edit(ops(json!([{"op":"set","path":["k"],"value":1}])))
        .unwrap();
    let send = r.take_send(Instant::now(), || "d-1".into()).unwrap();
    assert_eq!(
        r.on_ack(&send.id, 1),
        Ok(Some(DocUpdate::Changed {
            seq: 1,
            from_self: true
        }))
    );
    let other = EventMsg {
        room: "doc".into(),
        seq: 1,
        hlc: "h".into(),
        from: "c-b".into(),
        id: Some("d-1".into()),
        data: None,
        ops: Some(Json::encode(&json!([{"op":"set","path":["j"],"value":1}])).unwrap()),
        hash: None,
    };
    assert!(matches!(r.on_event(&other), Err(Trouble::Protocol(_))));
}

#[test]
fn invalid_edits_are_refused_atomically() {
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({"t":"ab","l":[]}));
    let err = r
        .edit(ops(json!([
            {"op":"text","path":["t"],"pos":2,"insert":"c"},
            {"op":"del","path":["l",0]}
        ])))
        .unwrap_err();
    match err {
        EditRefusal::Apply(e) => {
            assert_eq!(e.index, 1);
            assert!(e.message.contains("out of range"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.state(), &json!({"t":"ab","l":[]}));
    assert!(r.is_flushed());
    let deep: Vec<PathSeg> = (0..65).map(|_| PathSeg::Key("k".into())).collect();
    assert!(matches!(
        r.edit(vec![Op::Del { path: deep }]),
        Err(EditRefusal::Invalid(DecodeError { index: Some(0), .. }))
    ));
    let many = vec![
        Op::Add {
            path: vec![PathSeg::Key("n".into())],
            value: 1.into()
        };
        1001
    ];
    assert!(matches!(
        r.edit(many),
        Err(EditRefusal::Invalid(DecodeError { index: None, .. }))
    ));
    let big = Op::Set {
        path: vec![PathSeg::Key("big".into())],
        value: json!("x".repeat(2 << 20)),
    };
    assert!(matches!(
        r.edit(vec![big]),
        Err(EditRefusal::TooLarge { .. })
    ));
    assert_eq!(r.edit(Vec::new()), Ok(()));
    assert!(r.is_flushed());
}

#[test]
fn buffered_edits_are_sent_whole_within_the_limits() {
    let limits = SendLimits {
        max_ops: 3,
        max_frame_bytes: 1 << 20,
    };
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({"n":0})).with_limits(limits);
    let add = |n: usize| {
        vec![
            Op::Add {
                path: vec![PathSeg::Key("n".into())],
                value: 1.into()
            };
            n
        ]
    };
    r.edit(add(1)).unwrap();
    let first = r.take_send(Instant::now(), || "d-1".into()).unwrap();
    assert_eq!(first.ops.len(), 1);
    for n in [2, 1, 2, 3] {
        r.edit(add(n)).unwrap();
    }
    assert!(matches!(r.edit(add(4)), Err(EditRefusal::Invalid(_))));
    assert_eq!(r.take_send(Instant::now(), || unreachable!()), None);
    assert_eq!(
        r.on_ack("d-1", 1),
        Ok(Some(DocUpdate::Changed {
            seq: 1,
            from_self: true
        }))
    );
    let mut sizes = Vec::new();
    let mut seq = 1;
    let mut n = 2;
    while let Some(send) = r.take_send(Instant::now(), || format!("d-{n}")) {
        assert_eq!(send.base, seq);
        sizes.push(send.ops.len());
        seq += 1;
        n += 1;
        r.on_ack(&send.id, seq).unwrap();
    }
    assert_eq!(sizes, vec![3, 2, 3]);
    assert_eq!(r.state(), &json!({"n":9}));
}

#[test]
fn retryable_answers_delay_the_resend() {
    let mut r = Replica::new("c-a".into(), EPOCH.into(), 0, json!({}));
    r.edit(ops(json!([{"op":"set","path":["k"],"value":1}])))
        .unwrap();
    let now = Instant::now();
    let send = r.take_send(now, || "d-1".into()).unwrap();
    assert!(r.retry_later(&send.id, now, |n| {
        assert_eq!(n, 0);
        std::time::Duration::from_millis(50)
    }));
    let due = now + std::time::Duration::from_millis(50);
    assert_eq!(r.next_wakeup(), Some(due));
    assert_eq!(r.take_send(now, || unreachable!()), None);
    let again = r.take_send(due, || unreachable!()).unwrap();
    assert_eq!((again.id.as_str(), again.resend), ("d-1", true));
    assert_eq!(r.next_wakeup(), None);
}

#[test]
fn float_adds_in_another_order_settle_on_the_server_state() {
    // (0.1 + 0.6) + 0.1 differs from (0.1 + 0.1) + 0.6 in f64.
    let mut net = Net::new(json!({"f":0.1}), &["c-a", "c-b"]);
    net.edit(0, json!([{"op":"add","path":["f"],"value":0.1}]));
    net.edit(1, json!([{"op":"add","path":["f"],"value":0.6}]));
    net.deliver_up(1, true);
    net.deliver_up(0, true);
    let mut rng = StdRng::seed_from_u64(6);
    net.drain(&mut rng);
    net.assert_converged();
    assert_eq!(net.fake.state()["f"], json!(0.1 + 0.6 + 0.1));
    assert_ne!(0.1 + 0.6 + 0.1, 0.1 + 0.1 + 0.6);
}
