//! A room's members: their connections, membership events, and coalesced, throttled presence.

use crate::metrics::Metrics;
use crate::outbound::ConnHandle;
use axum::extract::ws::Utf8Bytes;
use concord_core::{ClientId, RoomId};
use concord_protocol::outbound::{Member, MemberInfo, Presence};
use concord_protocol::{Json, ServerMsg};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct Members {
    /// Presence of a room goes out at most this often.
    interval: std::time::Duration,
    conns: HashMap<u64, ConnHandle>,
    /// Connections per client id (a client may be joined from several connections).
    clients: HashMap<ClientId, (usize, Arc<MemberInfo>)>,
    /// The latest presence of each client that set one.
    presence: HashMap<ClientId, Arc<RawValue>>,
    /// Presence changes not yet sent (None = cleared).
    dirty: HashMap<ClientId, Option<Arc<RawValue>>>,
    /// When the pending presence changes go out (milliseconds on the server's clock).
    pub flush_at: Option<u64>,
    clock: Arc<dyn concord_core::Clock>,
}

impl Members {
    pub fn new(interval: std::time::Duration, clock: Arc<dyn concord_core::Clock>) -> Self {
        Members {
            interval,
            clock,
            conns: HashMap::new(),
            clients: HashMap::new(),
            presence: HashMap::new(),
            dirty: HashMap::new(),
            flush_at: None,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Where each member connection's frames go.
    pub fn outs(&self) -> impl Iterator<Item = &crate::outbound::Outbound> {
        self.conns.values().map(|c| &c.out)
    }

    pub fn contains(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    /// Sends `frame` to every member; members whose connection is gone or lagging are removed.
    pub fn broadcast(&mut self, room: &RoomId, frame: &Utf8Bytes, metrics: &Metrics) {
        let mut gone = Vec::new();
        for (id, c) in &self.conns {
            if !c.out.send(frame.clone()) {
                gone.push(*id);
            }
        }
        metrics
            .deliveries
            .inc_by((self.conns.len() - gone.len()) as u64);
        for id in gone {
            self.remove(room, id, metrics);
        }
    }

    /// Adds (or re-adds) a connection; the first connection of a client announces it.
    pub fn add(&mut self, room: &RoomId, conn: ConnHandle, metrics: &Metrics) {
        if let Some(old) = self.conns.insert(conn.conn_id, conn.clone()) {
            // A rejoin on the same connection: nothing changes for the others.
            let _ = old;
            return;
        }
        let entry = self
            .clients
            .entry(conn.client.clone())
            .or_insert_with(|| (0, conn.member.clone()));
        entry.0 += 1;
        if entry.0 == 1 {
            let frame = ServerMsg::MemberJoined(member(room, &conn.member));
            let frame = Utf8Bytes::from(frame.encode());
            let others: Vec<u64> = self
                .conns
                .keys()
                .copied()
                .filter(|id| *id != conn.conn_id)
                .collect();
            self.send_to(room, &others, &frame, metrics);
        }
    }

    fn send_to(&mut self, room: &RoomId, ids: &[u64], frame: &Utf8Bytes, metrics: &Metrics) {
        let gone: Vec<u64> = ids
            .iter()
            .filter(|id| {
                self.conns
                    .get(id)
                    .is_some_and(|c| !c.out.send(frame.clone()))
            })
            .copied()
            .collect();
        for id in gone {
            self.remove(room, id, metrics);
        }
    }

    /// Removes a connection; the last connection of a client announces its departure and
    /// clears its presence (`data: null`, exactly once).
    pub fn remove(&mut self, room: &RoomId, conn_id: u64, metrics: &Metrics) {
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        let Some(entry) = self.clients.get_mut(&conn.client) else {
            return;
        };
        entry.0 -= 1;
        if entry.0 > 0 {
            return;
        }
        let (_, info) = self.clients.remove(&conn.client).expect("entry exists");
        if self.presence.remove(&conn.client).is_some() {
            self.mark_dirty(conn.client.clone(), None);
        }
        let frame = Utf8Bytes::from(ServerMsg::MemberLeft(member(room, &info)).encode());
        let all: Vec<u64> = self.conns.keys().copied().collect();
        self.send_to(room, &all, &frame, metrics);
    }

    /// Queues a presence change; it goes out at the next flush (`interval` after the first
    /// pending change). Returns true if it replaced a change not yet sent.
    fn mark_dirty(&mut self, client: ClientId, value: Option<Arc<RawValue>>) -> bool {
        if self.flush_at.is_none() {
            let now = self.clock.now_ms();
            self.flush_at = Some(now.saturating_add(self.interval.as_millis() as u64));
        }
        self.dirty.insert(client, value).is_some()
    }

    /// Records a presence update, coalesced with any later update of the same client.
    /// `null` clears the client's presence (announced once; clearing nothing sends nothing).
    pub fn set_presence(&mut self, client: &ClientId, data: Box<RawValue>, metrics: &Metrics) {
        if data.get() == "null" {
            if self.presence.remove(client).is_some() && self.mark_dirty(client.clone(), None) {
                metrics.presence_coalesced.inc();
            }
            return;
        }
        let data: Arc<RawValue> = Arc::from(data);
        self.presence.insert(client.clone(), data.clone());
        if self.mark_dirty(client.clone(), Some(data)) {
            metrics.presence_coalesced.inc();
        }
    }

    /// Whether `conn_id`'s client is a member (presence is only for members).
    pub fn client_of(&self, conn_id: u64) -> Option<&ClientId> {
        self.conns.get(&conn_id).map(|c| &c.client)
    }

    /// Sends the pending presence changes to every member's presence slot.
    pub fn flush_presence(&mut self, room: &RoomId) {
        self.flush_at = None;
        for (client, value) in self.dirty.drain() {
            let frame = Utf8Bytes::from(presence_frame(room, &client, value.as_deref()));
            for c in self.conns.values() {
                c.out.presence(room, &client, frame.clone());
            }
        }
    }

    /// The `presence` field of `joined` (client id → current data) within `budget` bytes: as
    /// many entries as fit. The frames of the others are returned, to be sent after `joined`
    /// as ordinary `presence` frames.
    pub fn presence_within(
        &self,
        room: &RoomId,
        budget: usize,
    ) -> (String, Vec<(ClientId, Utf8Bytes)>) {
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
                let frame = presence_frame(room, client, Some(value));
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

    /// The `members` field of `joined` for `joining`: one entry per client, itself included.
    pub fn members_json(&self, joining: &ConnHandle) -> String {
        let mut list: Vec<&MemberInfo> = self.clients.values().map(|(_, m)| m.as_ref()).collect();
        if !self.clients.contains_key(&joining.client) {
            list.push(&joining.member);
        }
        serde_json::to_string(&list).expect("member info serializes")
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
