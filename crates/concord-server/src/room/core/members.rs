//! A room's members: their connections, membership events (`member_joined` when a client's
//! first connection joins, `member_left` when its last one leaves, each exactly once), and
//! presence coalesced per client and sent at most once per interval.
//!
//! Sans-IO like the rest of the core: a member is a [`MemberConn`] — a handle that queues frames
//! without waiting (the shell's outbound queue; a recorder in tests) — and time comes in as
//! milliseconds on the server's clock. A connection whose queue refuses a frame (gone, or
//! lagging past its bound) stops being a member at once, announced like any other departure.

use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use concord_core::{ClientId, RoomId};
use concord_protocol::outbound::{Member, MemberInfo, Presence};
use concord_protocol::{Json, ServerMsg};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// One member connection, as the room sees it.
pub trait MemberConn {
    /// The connection (unique on this server).
    fn conn_id(&self) -> u64;
    /// The client it speaks for (a client may be joined from several connections).
    fn client(&self) -> &ClientId;
    /// Who it is, as other members see it.
    fn info(&self) -> &Arc<MemberInfo>;
    /// Queues a frame; false when the connection is gone or lagging (it is then removed).
    fn send(&self, frame: Utf8Bytes) -> bool;
    /// Replaces the latest presence frame of (`room`, `client`) waiting for this connection.
    fn presence(&self, room: &RoomId, client: &ClientId, frame: Utf8Bytes);
}

pub struct Members<C> {
    room: RoomId,
    metrics: Metrics,
    /// Presence of a room goes out at most this often (milliseconds).
    interval_ms: u64,
    conns: HashMap<u64, C>,
    /// Connections per client id (a client may be joined from several connections).
    pub(super) clients: HashMap<ClientId, (usize, Arc<MemberInfo>)>,
    /// The latest presence of each client that set one.
    pub(super) presence: HashMap<ClientId, Arc<RawValue>>,
    /// Presence changes not yet sent (None = cleared).
    dirty: HashMap<ClientId, Option<Arc<RawValue>>>,
    /// When the pending presence changes go out (milliseconds on the server's clock).
    flush_at: Option<u64>,
    /// The distributed mode: the room's members on other gateways, and what this gateway must
    /// tell them (`roster.rs`). `None` in the embedded mode.
    pub(super) roster: Option<super::roster::Roster>,
}

impl<C: MemberConn> Members<C> {
    pub fn new(room: RoomId, interval: std::time::Duration, metrics: Metrics) -> Self {
        Members {
            room,
            metrics,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            conns: HashMap::new(),
            clients: HashMap::new(),
            presence: HashMap::new(),
            dirty: HashMap::new(),
            flush_at: None,
            roster: None,
        }
    }

    /// Members on other gateways too (the distributed mode): see `roster.rs`.
    pub fn shared(mut self) -> Self {
        self.roster = Some(super::roster::Roster::default());
        self
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The member connections.
    pub fn conns(&self) -> impl Iterator<Item = &C> {
        self.conns.values()
    }

    /// When the pending presence changes are due ([`Members::flush_presence`]), if any.
    pub fn flush_at(&self) -> Option<u64> {
        self.flush_at
    }

    pub fn contains(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    /// Whether `client` is joined here through some connection.
    pub fn has_client(&self, client: &ClientId) -> bool {
        self.clients.contains_key(client)
    }

    /// Sends `frame` to every member; members whose connection is gone or lagging are removed.
    pub fn broadcast(&mut self, frame: &Utf8Bytes, now_ms: u64) {
        let mut gone = Vec::new();
        for (id, c) in &self.conns {
            if !c.send(frame.clone()) {
                gone.push(*id);
            }
        }
        let delivered = self.conns.len() - gone.len();
        self.metrics.deliveries.inc_by(delivered as u64);
        for id in gone {
            self.remove(id, now_ms);
        }
    }

    /// Adds (or re-adds) a connection; the first connection of a client announces it to the
    /// others.
    pub fn add(&mut self, conn: C, now_ms: u64) {
        let (conn_id, client, info) = (conn.conn_id(), conn.client().clone(), conn.info().clone());
        if self.conns.insert(conn_id, conn).is_some() {
            // A rejoin on the same connection: nothing changes for the others.
            return;
        }
        let elsewhere = self.remote_present(&client);
        let entry = self.clients.entry(client).or_insert_with(|| (0, info));
        entry.0 += 1;
        if entry.0 == 1 {
            if let Some(r) = &mut self.roster {
                r.joined_here(entry.1.clone());
            }
            if elsewhere {
                // Present through another gateway already: nothing changes for the others.
                return;
            }
            let frame = ServerMsg::MemberJoined(member(&self.room, &entry.1));
            let frame = Utf8Bytes::from(frame.encode());
            let others: Vec<u64> = self
                .conns
                .keys()
                .copied()
                .filter(|id| *id != conn_id)
                .collect();
            self.send_to(&others, &frame, now_ms);
        }
    }

    fn send_to(&mut self, ids: &[u64], frame: &Utf8Bytes, now_ms: u64) {
        let gone: Vec<u64> = ids
            .iter()
            .filter(|id| self.conns.get(id).is_some_and(|c| !c.send(frame.clone())))
            .copied()
            .collect();
        for id in gone {
            self.remove(id, now_ms);
        }
    }

    /// Removes a connection; the last connection of a client announces its departure and
    /// clears its presence (`data: null`, exactly once).
    pub fn remove(&mut self, conn_id: u64, now_ms: u64) {
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        let client = conn.client();
        let Some(entry) = self.clients.get_mut(client) else {
            return;
        };
        entry.0 -= 1;
        if entry.0 > 0 {
            return;
        }
        let (_, info) = self.clients.remove(client).expect("entry exists");
        if let Some(r) = &mut self.roster {
            r.left_here(client.clone());
        }
        if self.remote_present(client) {
            // Still present through another gateway.
            return;
        }
        self.gone(client.clone(), &info, now_ms);
    }

    /// A client is no longer present anywhere: its presence is cleared (`null`, once) and
    /// its departure announced.
    pub(super) fn gone(&mut self, client: ClientId, info: &MemberInfo, now_ms: u64) {
        if self.presence.remove(&client).is_some() {
            self.mark_dirty(client, None, now_ms);
        }
        let frame = ServerMsg::MemberLeft(member(&self.room, info));
        let frame = Utf8Bytes::from(frame.encode());
        let all: Vec<u64> = self.conns.keys().copied().collect();
        self.send_to(&all, &frame, now_ms);
    }

    /// Announces a client that became present (through another gateway) to every member.
    pub(super) fn arrived(&mut self, info: &MemberInfo, now_ms: u64) {
        let frame = ServerMsg::MemberJoined(member(&self.room, info));
        let frame = Utf8Bytes::from(frame.encode());
        let all: Vec<u64> = self.conns.keys().copied().collect();
        self.send_to(&all, &frame, now_ms);
    }

    /// Whether `client` has a connection to this room on this gateway.
    pub(super) fn local_present(&self, client: &ClientId) -> bool {
        self.clients.contains_key(client)
    }

    /// Sets or clears (None) a client's presence as another gateway reported it; false when
    /// nothing changed.
    pub(super) fn put_presence(
        &mut self,
        client: ClientId,
        value: Option<Arc<RawValue>>,
        now_ms: u64,
    ) -> bool {
        let changed = match &value {
            Some(v) => self
                .presence
                .insert(client.clone(), v.clone())
                .is_none_or(|old| old.get() != v.get()),
            None => self.presence.remove(&client).is_some(),
        };
        if changed && self.mark_dirty(client, value, now_ms) {
            self.metrics.presence_coalesced.inc();
        }
        changed
    }

    /// Queues a presence change; it goes out at the next flush (`interval` after the first
    /// pending change). Returns true if it replaced a change not yet sent.
    pub(super) fn mark_dirty(
        &mut self,
        client: ClientId,
        value: Option<Arc<RawValue>>,
        now_ms: u64,
    ) -> bool {
        if self.flush_at.is_none() {
            self.flush_at = Some(now_ms.saturating_add(self.interval_ms));
        }
        self.dirty.insert(client, value).is_some()
    }

    /// Records a presence update of the member connection `conn_id`, coalesced with any later
    /// update of the same client. `null` clears the client's presence (announced once;
    /// clearing nothing sends nothing). False when `conn_id` is not a member (its join was
    /// refused, or it left meanwhile): presence is only for members.
    pub fn set_presence(&mut self, conn_id: u64, data: Box<RawValue>, now_ms: u64) -> bool {
        let Some(client) = self.conns.get(&conn_id).map(|c| c.client().clone()) else {
            return false;
        };
        if let Some(r) = &mut self.roster {
            r.presence_here(client.clone());
        }
        let replaced = if data.get() == "null" {
            self.presence.remove(&client).is_some() && self.mark_dirty(client, None, now_ms)
        } else {
            let data: Arc<RawValue> = Arc::from(data);
            self.presence.insert(client.clone(), data.clone());
            self.mark_dirty(client, Some(data), now_ms)
        };
        if replaced {
            self.metrics.presence_coalesced.inc();
        }
        true
    }

    /// Sends the pending presence changes to every member's presence slot (and, in the
    /// distributed mode, readies this gateway's own changes for the other gateways).
    pub fn flush_presence(&mut self) {
        self.flush_at = None;
        if let Some(r) = &mut self.roster {
            r.flush(&self.presence);
        }
        for (client, value) in self.dirty.drain() {
            let frame = Utf8Bytes::from(presence_frame(&self.room, &client, value.as_deref()));
            for c in self.conns.values() {
                c.presence(&self.room, &client, frame.clone());
            }
        }
    }

    /// The `presence` field of `joined` (client id → current data) within `budget` bytes: as
    /// many entries as fit. The frames of the others are returned, to be sent after `joined`
    /// as ordinary `presence` frames.
    pub fn presence_within(&self, budget: usize) -> (String, Vec<(ClientId, Utf8Bytes)>) {
        let mut out = String::from("{");
        let mut rest = Vec::new();
        for (client, value) in &self.presence {
            let key = serde_json::to_string(client.as_str()).expect("a string serializes");
            // Re-encoded (compact, keys sorted), as the snapshot always was.
            let data = serde_json::from_str::<serde_json::Value>(value.get())
                .unwrap_or(serde_json::Value::Null)
                .to_string();
            let entry = key.len() + 1 + data.len() + 1;
            if out.len() + entry + 1 > budget {
                let frame = presence_frame(&self.room, client, Some(value));
                rest.push((client.clone(), Utf8Bytes::from(frame)));
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&key);
            out.push(':');
            out.push_str(&data);
        }
        out.push('}');
        (out, rest)
    }

    /// The `members` field of `joined` for `joining`: one entry per client, itself included
    /// (clients on other gateways too).
    pub fn members_json(&self, joining: &C) -> String {
        let mut list: Vec<&MemberInfo> = self.clients.values().map(|(_, m)| m.as_ref()).collect();
        if let Some(r) = &self.roster {
            list.extend(r.remote_only(&self.clients).map(|m| m.as_ref()));
        }
        if !self.clients.contains_key(joining.client()) && !self.remote_present(joining.client()) {
            list.push(joining.info());
        }
        serde_json::to_string(&list).expect("member info serializes")
    }

    /// Checks the bookkeeping: each client counts exactly its member connections; presence is
    /// only held for members; a pending change has its flush time.
    pub fn check(&self) -> Result<(), String> {
        let mut counts: HashMap<&ClientId, usize> = HashMap::new();
        for c in self.conns.values() {
            *counts.entry(c.client()).or_default() += 1;
        }
        if counts.len() != self.clients.len() {
            return Err(format!(
                "{} clients have connections, {} are counted",
                counts.len(),
                self.clients.len()
            ));
        }
        for (client, (n, _)) in &self.clients {
            if counts.get(client) != Some(n) {
                return Err(format!(
                    "client {client} is counted {n} times, has {:?}",
                    counts.get(client)
                ));
            }
        }
        if let Some(c) = self
            .presence
            .keys()
            .find(|c| !self.clients.contains_key(*c) && !self.remote_present(c))
        {
            return Err(format!("presence is held for {c}, not a member"));
        }
        if !self.dirty.is_empty() && self.flush_at.is_none() {
            return Err("presence changes are pending with no flush time".into());
        }
        Ok(())
    }
}

fn member<'a>(room: &'a RoomId, info: &'a MemberInfo) -> Member<'a> {
    Member {
        room: room.as_str().into(),
        member: std::borrow::Cow::Borrowed(info),
    }
}

/// A `presence` frame; `data` None is `null` (the client left or cleared its presence).
fn presence_frame(room: &RoomId, client: &ClientId, data: Option<&RawValue>) -> String {
    ServerMsg::Presence(Presence {
        room: room.as_str().into(),
        client_id: client.as_str().into(),
        data: data.map_or_else(Json::null, Json::from),
    })
    .encode()
}

#[cfg(test)]
mod tests {
    use super::super::roster::RosterDelta;
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    /// A member that records what it is sent; `open` false makes it refuse frames (gone or
    /// lagging).
    #[derive(Clone)]
    struct Rec {
        id: u64,
        client: ClientId,
        info: Arc<MemberInfo>,
        open: Rc<Cell<bool>>,
        frames: Rc<RefCell<Vec<serde_json::Value>>>,
        presence: Rc<RefCell<Vec<serde_json::Value>>>,
    }

    impl Rec {
        fn new(id: u64, client: &str) -> Self {
            Rec {
                id,
                client: ClientId::new(client).expect("a client id"),
                info: Arc::new(MemberInfo {
                    client_id: client.into(),
                    user: format!("user-{client}"),
                    meta: Default::default(),
                }),
                open: Rc::new(Cell::new(true)),
                frames: Rc::default(),
                presence: Rc::default(),
            }
        }
        /// The `type` of each frame received, with the client it is about.
        fn got(&self) -> Vec<String> {
            self.frames.borrow().iter().map(describe).collect()
        }
        fn got_presence(&self) -> Vec<String> {
            self.presence.borrow().iter().map(describe).collect()
        }
    }

    fn describe(v: &serde_json::Value) -> String {
        let about = v["member"]["client_id"]
            .as_str()
            .or(v["client_id"].as_str())
            .unwrap_or("-");
        match v["type"].as_str() {
            Some("presence") => format!("presence {about}={}", v["data"]),
            Some(t) => format!("{t} {about}"),
            None => "?".into(),
        }
    }

    impl MemberConn for Rec {
        fn conn_id(&self) -> u64 {
            self.id
        }
        fn client(&self) -> &ClientId {
            &self.client
        }
        fn info(&self) -> &Arc<MemberInfo> {
            &self.info
        }
        fn send(&self, frame: Utf8Bytes) -> bool {
            if !self.open.get() {
                return false;
            }
            let v = serde_json::from_str(&frame).expect("frames are JSON");
            self.frames.borrow_mut().push(v);
            true
        }
        fn presence(&self, room: &RoomId, client: &ClientId, frame: Utf8Bytes) {
            let v: serde_json::Value = serde_json::from_str(&frame).expect("frames are JSON");
            assert_eq!(v["room"], room.as_str());
            assert_eq!(v["client_id"], client.as_str());
            self.presence.borrow_mut().push(v);
        }
    }

    fn members() -> Members<Rec> {
        let room = RoomId::new("room").expect("a room id");
        Members::new(room, std::time::Duration::from_millis(50), Metrics::new())
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("JSON")
    }

    /// Runs a step, then the bookkeeping check.
    fn step(m: &mut Members<Rec>, f: impl FnOnce(&mut Members<Rec>)) {
        f(m);
        m.check().expect("members bookkeeping");
    }

    #[test]
    fn a_client_is_announced_once_to_the_others() {
        let mut m = members();
        let (a, b, b2) = (Rec::new(1, "a"), Rec::new(2, "b"), Rec::new(3, "b"));
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| m.add(b.clone(), 0));
        // A second connection of the same client announces nothing.
        step(&mut m, |m| m.add(b2.clone(), 0));
        // A rejoin on the same connection neither.
        step(&mut m, |m| m.add(b.clone(), 0));
        assert_eq!(a.got(), vec!["member_joined b"]);
        assert!(b.got().is_empty(), "nobody joined after b: {:?}", b.got());
        assert_eq!(m.len(), 3);
        let list: serde_json::Value =
            serde_json::from_str(&m.members_json(&Rec::new(9, "c"))).expect("JSON");
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(3),
            "a, b and the joining c: {list}"
        );
    }

    #[test]
    fn a_client_leaves_with_its_last_connection_and_its_presence_is_cleared_once() {
        let mut m = members();
        let (a, b, b2) = (Rec::new(1, "a"), Rec::new(2, "b"), Rec::new(3, "b"));
        for c in [&a, &b, &b2] {
            step(&mut m, |m| m.add(c.clone(), 0));
        }
        step(&mut m, |m| assert!(m.set_presence(2, raw(r#"{"x":1}"#), 0)));
        step(&mut m, |m| m.flush_presence());
        step(&mut m, |m| m.remove(2, 10));
        assert_eq!(a.got(), vec!["member_joined b"], "b still has a connection");
        step(&mut m, |m| m.remove(3, 10));
        step(&mut m, |m| m.remove(3, 10));
        assert_eq!(a.got(), vec!["member_joined b", "member_left b"]);
        assert_eq!(
            m.flush_at(),
            Some(60),
            "the clearing is due one interval later"
        );
        step(&mut m, |m| m.flush_presence());
        assert_eq!(
            a.got_presence(),
            vec![r#"presence b={"x":1}"#, "presence b=null"]
        );
        // A client that never set presence leaves without a `null`.
        step(&mut m, |m| m.remove(1, 20));
        assert_eq!(m.flush_at(), None);
        assert!(m.is_empty());
    }

    #[test]
    fn presence_is_coalesced_per_client_until_the_flush() {
        let mut m = members();
        let (a, b) = (Rec::new(1, "a"), Rec::new(2, "b"));
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| m.add(b.clone(), 0));
        step(&mut m, |m| assert!(m.set_presence(1, raw("1"), 100)));
        step(&mut m, |m| assert!(m.set_presence(1, raw("2"), 120)));
        step(&mut m, |m| assert!(m.set_presence(2, raw("3"), 130)));
        assert_eq!(
            m.flush_at(),
            Some(150),
            "the first pending change sets the time"
        );
        assert_eq!(
            m.metrics.value("concord_presence_coalesced_total", &[]),
            1.0
        );
        step(&mut m, |m| m.flush_presence());
        let mut got = b.got_presence();
        got.sort();
        assert_eq!(got, vec!["presence a=2", "presence b=3"]);
        assert_eq!(
            a.got_presence().len(),
            2,
            "the sender gets its own presence too"
        );
        // Clearing twice announces once; clearing what was never set announces nothing.
        step(&mut m, |m| assert!(m.set_presence(1, raw("null"), 200)));
        step(&mut m, |m| assert!(m.set_presence(1, raw("null"), 200)));
        step(&mut m, |m| m.flush_presence());
        step(&mut m, |m| assert!(m.set_presence(1, raw("null"), 300)));
        assert_eq!(m.flush_at(), None, "nothing to send");
        assert_eq!(
            b.got_presence()
                .iter()
                .filter(|p| *p == "presence a=null")
                .count(),
            1
        );
    }

    #[test]
    fn presence_of_a_connection_that_is_not_a_member_is_ignored() {
        let mut m = members();
        step(&mut m, |m| assert!(!m.set_presence(7, raw("1"), 0)));
        assert_eq!(m.flush_at(), None);
    }

    #[test]
    fn a_member_that_refuses_a_frame_is_removed_and_announced() {
        let mut m = members();
        let (a, b) = (Rec::new(1, "a"), Rec::new(2, "b"));
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| m.add(b.clone(), 0));
        step(&mut m, |m| assert!(m.set_presence(2, raw("5"), 0)));
        b.open.set(false);
        step(&mut m, |m| {
            m.broadcast(&Utf8Bytes::from(r#"{"type":"event"}"#), 10)
        });
        assert!(!m.contains(2));
        assert_eq!(a.got(), vec!["member_joined b", "event -", "member_left b"]);
        assert_eq!(m.metrics.value("concord_deliveries_total", &[]), 1.0);
        // Its presence is cleared at the next flush.
        step(&mut m, |m| m.flush_presence());
        assert_eq!(a.got_presence(), vec!["presence b=null"]);
    }

    #[test]
    fn joined_presence_takes_what_fits_and_the_rest_follows() {
        let mut m = members();
        for (id, c) in [(1, "a"), (2, "b"), (3, "c")] {
            step(&mut m, |m| m.add(Rec::new(id, c), 0));
            step(&mut m, |m| {
                assert!(m.set_presence(id, raw(r#"{"k": 1}"#), 0))
            });
        }
        // Each entry is `"x":{"k":1}` (11 bytes) plus a separator; the braces take 2.
        let (all, rest) = m.presence_within(1000);
        assert!(rest.is_empty());
        assert_eq!(all.len(), 2 + 3 * 11 + 2, "{all}");
        let (some, rest) = m.presence_within(2 + 2 * 12);
        let fitted: serde_json::Value = serde_json::from_str(&some).expect("JSON");
        assert_eq!(fitted.as_object().map(|o| o.len()), Some(2), "{some}");
        assert_eq!(rest.len(), 1);
        let (none, rest) = m.presence_within(0);
        assert_eq!(none, "{}");
        assert_eq!(rest.len(), 3);
    }

    fn shared_members() -> Members<Rec> {
        members().shared()
    }

    fn info(client: &str) -> Arc<MemberInfo> {
        Rec::new(0, client).info
    }

    fn delta(joined: &[&str], left: &[&str], presence: &[(&str, Option<&str>)]) -> RosterDelta {
        let mut d = RosterDelta::default();
        for c in joined {
            d.members.insert(ClientId::new(c).unwrap(), Some(info(c)));
        }
        for c in left {
            d.members.insert(ClientId::new(c).unwrap(), None);
        }
        for (c, v) in presence {
            d.presence
                .insert(ClientId::new(c).unwrap(), v.map(|v| Arc::from(raw(v))));
        }
        d
    }

    #[test]
    fn a_client_on_another_gateway_is_one_member_with_its_local_connections() {
        let mut m = shared_members();
        let a = Rec::new(1, "a");
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["b"], &[], &[]), 0)
        });
        // The same client through a third gateway, and locally: no second announcement.
        step(&mut m, |m| {
            m.apply_roster("gw3", delta(&["b"], &[], &[]), 0)
        });
        let b_here = Rec::new(2, "b");
        step(&mut m, |m| m.add(b_here.clone(), 0));
        assert_eq!(a.got(), vec!["member_joined b"]);
        let list: serde_json::Value =
            serde_json::from_str(&m.members_json(&Rec::new(9, "c"))).expect("JSON");
        assert_eq!(list.as_array().map(Vec::len), Some(3), "a, b, c: {list}");
        // b leaves two gateways and then this one: one departure, at the end.
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&[], &["b"], &[]), 0)
        });
        step(&mut m, |m| {
            m.apply_roster("gw3", delta(&[], &["b"], &[]), 0)
        });
        assert_eq!(a.got(), vec!["member_joined b"], "still here locally");
        step(&mut m, |m| m.remove(2, 0));
        assert_eq!(a.got(), vec!["member_joined b", "member_left b"]);
    }

    #[test]
    fn presence_from_another_gateway_reaches_the_members_and_is_cleared_once() {
        let mut m = shared_members();
        let a = Rec::new(1, "a");
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["b"], &[], &[("b", Some("1"))]), 0)
        });
        // Presence of a client that is not present anywhere is ignored.
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&[], &[], &[("z", Some("9"))]), 0)
        });
        step(&mut m, |m| m.flush_presence());
        assert_eq!(a.got_presence(), vec!["presence b=1"]);
        let (snapshot, _) = m.presence_within(1000);
        assert_eq!(snapshot, r#"{"b":1}"#);
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&[], &["b"], &[]), 10)
        });
        step(&mut m, |m| m.flush_presence());
        assert_eq!(a.got_presence(), vec!["presence b=1", "presence b=null"]);
        assert_eq!(a.got(), vec!["member_joined b", "member_left b"]);
    }

    #[test]
    fn a_gateway_gone_takes_its_clients_once() {
        let mut m = shared_members();
        let a = Rec::new(1, "a");
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["b", "c"], &[], &[("b", Some("2"))]), 0)
        });
        step(&mut m, |m| {
            m.apply_roster("gw3", delta(&["c"], &[], &[]), 0)
        });
        assert_eq!(
            m.remote_gateways().into_iter().collect::<Vec<_>>(),
            vec!["gw2".to_string(), "gw3".to_string()]
        );
        step(&mut m, |m| m.gateway_gone("gw2", 0));
        step(&mut m, |m| m.gateway_gone("gw2", 0));
        step(&mut m, |m| m.flush_presence());
        let mut got = a.got();
        got.sort();
        assert_eq!(
            got,
            vec!["member_joined b", "member_joined c", "member_left b"],
            "c is still present through gw3"
        );
        assert_eq!(a.got_presence(), vec!["presence b=null"]);
    }

    #[test]
    fn this_gateways_changes_are_told_once_presence_at_the_flush() {
        let mut m = shared_members();
        assert!(m.take_roster().is_none());
        step(&mut m, |m| m.add(Rec::new(1, "a"), 0));
        step(&mut m, |m| assert!(m.set_presence(1, raw("5"), 0)));
        let told = m.take_roster().expect("a join to tell");
        assert_eq!(told.members.len(), 1);
        assert!(told.presence.is_empty(), "presence goes out at the flush");
        step(&mut m, |m| m.flush_presence());
        let told = m.take_roster().expect("the presence");
        let value = told.presence.values().next().cloned().flatten();
        assert_eq!(value.map(|v| v.get().to_string()), Some("5".to_string()));
        assert!(m.take_roster().is_none(), "told once");
        step(&mut m, |m| assert!(m.set_presence(1, raw("6"), 0)));
        step(&mut m, |m| m.remove(1, 0));
        let told = m.take_roster().expect("the departure");
        assert_eq!(told.members.values().next(), Some(&None));
        assert!(
            told.presence.is_empty(),
            "a departed client's presence is not told"
        );
        // The embedded mode tells nobody.
        let mut alone = members();
        step(&mut alone, |m| m.add(Rec::new(1, "a"), 0));
        assert!(alone.take_roster().is_none());
    }

    #[test]
    fn a_stored_roster_read_again_replaces_what_notifications_said() {
        let mut m = shared_members();
        let a = Rec::new(1, "a");
        step(&mut m, |m| m.add(a.clone(), 0));
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["b", "c", "d"], &[], &[]), 0)
        });
        // Meanwhile (notifications lost): c left, d moved to gw3, e joined on gw3.
        let loaded = vec![
            ("gw2".to_string(), delta(&["b"], &[], &[])),
            (
                "gw3".to_string(),
                delta(&["d", "e"], &[], &[("e", Some("7"))]),
            ),
        ];
        step(&mut m, |m| m.replace_roster(loaded.clone(), 0));
        step(&mut m, |m| m.flush_presence());
        let mut got = a.got();
        got.sort();
        assert_eq!(
            got,
            vec![
                "member_joined b",
                "member_joined c",
                "member_joined d",
                "member_joined e",
                "member_left c"
            ],
            "d stayed (it moved), c left, e arrived"
        );
        assert_eq!(a.got_presence(), vec!["presence e=7"]);
        assert_eq!(
            m.remote_gateways().into_iter().collect::<Vec<_>>(),
            vec!["gw2".to_string(), "gw3".to_string()]
        );
        // The same roster again changes nothing; an empty one means everyone left.
        step(&mut m, |m| m.replace_roster(loaded, 0));
        assert_eq!(a.got().len(), 5);
        step(&mut m, |m| m.replace_roster(Vec::new(), 0));
        let left = a
            .got()
            .into_iter()
            .filter(|n| n.starts_with("member_left"))
            .count();
        assert_eq!(left, 4, "b, c, d and e left once each");
        assert!(!m.has_remote());
    }

    #[test]
    fn the_whole_own_roster_lists_every_local_client_with_its_presence() {
        let mut m = shared_members();
        assert!(m.own_roster().is_none(), "nobody here");
        step(&mut m, |m| m.add(Rec::new(1, "a"), 0));
        step(&mut m, |m| m.add(Rec::new(2, "b"), 0));
        step(&mut m, |m| assert!(m.set_presence(1, raw("5"), 0)));
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["z"], &[], &[]), 0)
        });
        let own = m.own_roster().expect("two clients here");
        let clients: Vec<&str> = own.members.keys().map(ClientId::as_str).collect();
        assert_eq!(clients, vec!["a", "b"], "only this gateway's clients");
        assert!(own.members.values().all(Option::is_some));
        let presence: Vec<(&str, String)> = own
            .presence
            .iter()
            .map(|(c, v)| (c.as_str(), v.as_ref().unwrap().get().to_string()))
            .collect();
        assert_eq!(presence, vec![("a", "5".to_string())]);
        let mut alone = members();
        step(&mut alone, |m| m.add(Rec::new(1, "a"), 0));
        assert!(
            alone.own_roster().is_none(),
            "the embedded mode tells nobody"
        );
    }

    #[test]
    fn the_cluster_count_adds_clients_present_only_elsewhere() {
        let mut m = shared_members();
        step(&mut m, |m| m.add(Rec::new(1, "a"), 0));
        step(&mut m, |m| m.add(Rec::new(2, "a"), 0));
        assert_eq!(m.cluster_len(), 2, "two connections here");
        step(&mut m, |m| {
            m.apply_roster("gw2", delta(&["a", "b"], &[], &[]), 0)
        });
        step(&mut m, |m| {
            m.apply_roster("gw3", delta(&["b", "c"], &[], &[]), 0)
        });
        assert_eq!(
            m.cluster_len(),
            4,
            "a's connections here, b and c once each"
        );
        step(&mut m, |m| m.gateway_gone("gw3", 0));
        assert_eq!(m.cluster_len(), 3, "c left with gw3, b is still on gw2");
    }
}
