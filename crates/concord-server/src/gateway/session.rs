//! The protocol state of one WebSocket connection: identity, joined rooms, rights, rate limits,
//! and the handling of each client message.

use super::credentials::is_http_client;
use super::presence_gate::{Offer, PresenceGate};
use super::refusal::Refusal;
use super::App;
use crate::auth::{Identity, Right};
use crate::limiter::Bucket;
use crate::metrics::{AuthFailure, Limit, RateScope};
use crate::outbound::{ConnHandle, Outbound};
use crate::room::{Creator, OpMsg, Publish, Reply, RoomMsg, Waiter};
use axum::extract::ws::Utf8Bytes;
use concord_core::{ClientId, OpId, RoomId, RoomKind};
use concord_protocol::outbound::{AuthOk, MemberInfo, Welcome};
use concord_protocol::{close, decode_client, ClientMsg, ErrorCode, ServerMsg, Since};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Why the reader loop ended.
pub enum End {
    /// The socket failed or the writer stopped; nothing more to send.
    Gone,
    /// The peer sent a close frame (tungstenite answers it).
    PeerClosed,
    /// The outbound queue passed its bound: the writer sends 4008 and stops.
    Lagging,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Server shutdown: drain acks, then close 1001.
    Shutdown,
}

/// Characters of a `drift` report's hash that go to the log.
const MAX_LOGGED_HASH: usize = 128;

pub struct Session {
    pub app: Arc<App>,
    pub conn_id: u64,
    pub out: Outbound,
    /// Set by `hello`.
    client: Option<(ClientId, Arc<MemberInfo>)>,
    identity: Option<Identity>,
    /// A token from the upgrade request (`Authorization` header or `?token=`), used by `hello`
    /// when it carries none.
    upgrade_token: Option<String>,
    /// When the token expires, or — once it has — when the grace for `auth` ends (milliseconds
    /// on the server's clock).
    pub auth_deadline: Option<u64>,
    expired: bool,
    /// Joined (or joining) rooms; the receiver says whether a pending join succeeded.
    pub rooms: HashMap<RoomId, Option<oneshot::Receiver<bool>>>,
    permits: Arc<Semaphore>,
    publish_rate: Bucket,
    /// The presence rate: updates sent, held or refused.
    pub presence: PresenceGate,
    drift_rate: Bucket,
    /// Rooms this connection creates (checked by a room's actor when a join creates it).
    room_create_rate: Arc<Bucket>,
}

impl Session {
    pub fn new(app: Arc<App>, conn_id: u64, out: Outbound, upgrade_token: Option<String>) -> Self {
        let cfg = &app.shared.config;
        Session {
            conn_id,
            permits: Arc::new(Semaphore::new(cfg.max_inflight_per_conn)),
            publish_rate: Bucket::new(cfg.rate_publish_per_conn, &app.shared.clock),
            presence: PresenceGate::new(
                cfg.rate_presence_per_conn,
                cfg.rate_presence_flood_per_conn,
                &app.shared.clock,
            ),
            drift_rate: Bucket::new(cfg.rate_drift_per_conn, &app.shared.clock),
            room_create_rate: Arc::new(Bucket::new(
                cfg.rate_room_create_per_conn,
                &app.shared.clock,
            )),
            app,
            out,
            client: None,
            identity: None,
            upgrade_token,
            auth_deadline: None,
            expired: false,
            rooms: HashMap::new(),
        }
    }

    pub fn greeted(&self) -> bool {
        self.client.is_some()
    }

    /// Answers a refused message: counts it and sends its `error` frame.
    pub fn refuse(&self, refusal: Refusal) {
        refusal.count(&self.app.shared.metrics);
        self.out.send(Utf8Bytes::from(refusal.frame()));
    }

    /// Waits (up to the shutdown grace) until every publish in flight was answered.
    pub async fn drain_in_flight(&self) {
        let cfg = &self.app.shared.config;
        let all = cfg.max_inflight_per_conn as u32;
        let _ = tokio::time::timeout(cfg.shutdown_grace, self.permits.acquire_many(all)).await;
    }

    /// Handles one text frame; `Err` ends the connection.
    pub async fn on_text(&mut self, text: &str) -> Result<(), End> {
        self.app.shared.metrics.frames_in.inc();
        match self.handle(text).await {
            Ok(()) => Ok(()),
            Err(refusal) => {
                let close = refusal.close;
                self.refuse(refusal);
                close.map_or(Ok(()), |(code, reason)| Err(End::Close(code, reason)))
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), Refusal> {
        let msg = decode_client(text).map_err(|e| {
            Refusal::bad_request(e.message)
                .id(e.id.as_deref())
                .with_room(e.room)
        })?;
        let Some((client, _)) = self.client.clone() else {
            return match msg {
                ClientMsg::Hello(h) => self.hello(&h.client_id, h.token.map(|t| t.into())).await,
                other => Err(Refusal::bad_request(format!(
                    "{} before hello: send hello first",
                    other.type_name()
                ))),
            };
        };
        if let ClientMsg::Auth(a) = msg {
            return self.auth(&a.token);
        }
        if self.expired {
            let msg = "token expired: send {\"type\":\"auth\",\"token\":…} with a fresh token";
            return Err(Refusal::new(ErrorCode::Unauthorized, msg));
        }
        match msg {
            ClientMsg::Hello(_) => Err(Refusal::bad_request(
                "hello was already sent on this connection",
            )),
            ClientMsg::Join(j) => {
                self.join(client, &j.room, j.kind.as_deref(), j.since, j.history)
                    .await
            }
            ClientMsg::Leave(l) => self.leave(&l.room),
            ClientMsg::Publish(p) => self.publish(client, &p.room, &p.id, p.data, p.resend).await,
            ClientMsg::Presence(p) => self.presence(&p.room, p.data),
            ClientMsg::Op(op) => self.op(client, &op.room, &op.id, op.base, op.ops).await,
            ClientMsg::Drift(d) => self.drift(&client, &d.room, d.seq, &d.hash),
            ClientMsg::Auth(_) => unreachable!("handled above"),
        }
    }

    /// Verifies a token; a failure is answered `unauthorized` and closes with 1008.
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, Refusal> {
        let auth = &self.app.shared.config.auth;
        auth.authenticate(token, self.app.shared.clock.now_ms())
            .map_err(|e| {
                Refusal::new(ErrorCode::Unauthorized, e.to_string())
                    .auth(e.reason())
                    .close(close::POLICY, "unauthorized")
            })
    }

    fn schedule_expiry(&mut self, identity: &Identity) {
        self.expired = false;
        let leeway = self.app.shared.config.auth.leeway_secs();
        self.auth_deadline = identity
            .exp
            .map(|exp| crate::auth::expires_at_ms(exp, leeway));
    }

    async fn hello(&mut self, client_id: &str, token: Option<String>) -> Result<(), Refusal> {
        let client = match ClientId::new(client_id) {
            Ok(c) if !is_http_client(c.as_str()) => c,
            Ok(_) => {
                let msg = "client_ids \"http\" and \"http:…\" are reserved for events published over HTTP";
                return Err(Refusal::bad_request(msg));
            }
            Err(e) => return Err(Refusal::bad_request(e.to_string())),
        };
        let token = token.or_else(|| self.upgrade_token.take());
        let identity = self.authenticate(token.as_deref())?;
        if self.app.shared.config.auth.enabled() {
            // A client id scopes op ids (idempotency) and presence: it belongs to one user.
            match self
                .app
                .shared
                .store
                .claim_client(&client, &identity.user)
                .await
            {
                Ok(owner) if owner == identity.user => {}
                Ok(_) => {
                    let msg = "this client_id belongs to another user: choose a random client_id";
                    return Err(Refusal::new(ErrorCode::Unauthorized, msg)
                        .auth(AuthFailure::ClientIdTaken)
                        .close(close::POLICY, "client_id belongs to another user"));
                }
                Err(e) => {
                    tracing::error!(client = %client, error = %e, "claiming a client id failed");
                    return Err(Refusal::new(
                        ErrorCode::Unavailable,
                        "the store is unavailable; retry",
                    ));
                }
            }
        }
        let shared = &self.app.shared;
        let welcome = ServerMsg::Welcome(Welcome {
            client_id: client.as_str().into(),
            node: shared.config.node_id.as_str().into(),
            server_time: shared.clock.now_ms(),
        });
        self.out.send(Utf8Bytes::from(welcome.encode()));
        let member = Arc::new(MemberInfo {
            client_id: client.to_string(),
            user: identity.user.clone(),
            meta: identity.meta.clone(),
        });
        tracing::Span::current().record("client_id", client.as_str());
        self.schedule_expiry(&identity);
        self.identity = Some(identity);
        self.client = Some((client, member));
        Ok(())
    }

    /// `auth`: a fresh token for the same user; rooms no longer readable are left.
    fn auth(&mut self, token: &str) -> Result<(), Refusal> {
        let identity = self.authenticate(Some(token))?;
        let same_user = self
            .identity
            .as_ref()
            .is_some_and(|i| i.user == identity.user);
        if !same_user {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                "a refreshed token must be for the same user",
            )
            .auth(AuthFailure::OtherUser)
            .close(close::POLICY, "unauthorized"));
        }
        let revoked: Vec<RoomId> = self
            .rooms
            .keys()
            .filter(|r| !identity.may(r.as_str(), Right::Read))
            .cloned()
            .collect();
        for room in revoked {
            self.rooms.remove(&room);
            self.presence.forget(&room);
            let msg = RoomMsg::Leave {
                conn_id: self.conn_id,
                notify: Some(self.out.clone()),
            };
            let _ = self.app.registry.send(&room, msg);
            self.refuse(
                Refusal::new(ErrorCode::Forbidden, "the new token does not grant read")
                    .room(room.as_str()),
            );
        }
        let ok = ServerMsg::AuthOk(AuthOk {
            user: identity.user.as_str().into(),
            exp: identity.exp,
        });
        self.out.send(Utf8Bytes::from(ok.encode()));
        self.schedule_expiry(&identity);
        self.identity = Some(identity);
        Ok(())
    }

    /// The token expired: warn once, then close 1008 when the grace ends without `auth`.
    pub fn on_auth_deadline(&mut self) -> Result<(), End> {
        if self.expired {
            self.app.shared.metrics.auth_failure(AuthFailure::Expired);
            return Err(End::Close(close::POLICY, "token expired"));
        }
        self.expired = true;
        let grace = self.app.shared.config.auth_grace;
        let now_ms = self.app.shared.clock.now_ms();
        self.auth_deadline = Some(now_ms.saturating_add(grace.as_millis() as u64));
        let msg = format!(
            "token expired: send {{\"type\":\"auth\",\"token\":…}} within {} ms or the connection closes",
            grace.as_millis()
        );
        self.refuse(Refusal::new(ErrorCode::Unauthorized, msg));
        Ok(())
    }

    fn room(&self, name: &str, id: Option<&str>) -> Result<RoomId, Refusal> {
        RoomId::new(name).map_err(|e| {
            let shown: String = name.chars().take(128).collect();
            Refusal::bad_request(e.to_string()).id(id).room(shown)
        })
    }

    /// Checks a right; refuses with `forbidden` when it is not granted.
    fn allowed(&self, room: &RoomId, right: Right, id: Option<&str>) -> Result<(), Refusal> {
        if self
            .identity
            .as_ref()
            .is_some_and(|i| i.may(room.as_str(), right))
        {
            return Ok(());
        }
        let msg = format!("your token does not grant {} in this room", right.as_str());
        Err(Refusal::new(ErrorCode::Forbidden, msg)
            .id(id)
            .room(room.as_str()))
    }

    /// Forgets rooms whose join was refused.
    fn prune_failed_joins(&mut self) {
        self.rooms.retain(|_, pending| match pending {
            None => true,
            Some(rx) => match rx.try_recv() {
                Ok(true) => {
                    *pending = None;
                    true
                }
                Ok(false) | Err(oneshot::error::TryRecvError::Closed) => false,
                Err(oneshot::error::TryRecvError::Empty) => true,
            },
        });
    }

    async fn join(
        &mut self,
        client: ClientId,
        name: &str,
        kind: Option<&str>,
        since: Option<Since>,
        history: Option<u64>,
    ) -> Result<(), Refusal> {
        let room = self.room(name, None)?;
        let kind = kind
            .map(RoomKind::parse)
            .transpose()
            .map_err(|e| Refusal::bad_request(e.to_string()).room(name))?;
        self.allowed(&room, Right::Read, None)?;
        let app = self.app.clone();
        let cfg = &app.shared.config;
        let history = history.unwrap_or(0);
        if history > cfg.max_history {
            let msg = format!("history must be at most {}", cfg.max_history);
            return Err(Refusal::bad_request(msg)
                .room(name)
                .limit(Limit::MaxHistory));
        }
        self.prune_failed_joins();
        if !self.rooms.contains_key(&room) && self.rooms.len() >= cfg.max_rooms_per_conn {
            let msg = format!(
                "a connection may join at most {} rooms",
                cfg.max_rooms_per_conn
            );
            return Err(Refusal::bad_request(msg)
                .room(name)
                .limit(Limit::MaxRoomsPerConn));
        }
        let Some(slot) = self.slot().await else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let member = self
            .client
            .as_ref()
            .map(|(_, m)| m.clone())
            .expect("greeted");
        let conn = ConnHandle {
            conn_id: self.conn_id,
            client,
            member,
            out: self.out.clone(),
        };
        let msg = RoomMsg::Join {
            conn,
            kind,
            since,
            history,
            create: self.creator(&room),
            joined: tx,
            slot,
        };
        if self.app.registry.send(&room, msg).is_err() {
            return Err(Refusal::new(ErrorCode::Unavailable, "server is shutting down").room(name));
        }
        self.rooms.insert(room, Some(rx));
        Ok(())
    }

    /// What a join may do if the room does not exist: only a writer creates it, held to this
    /// connection's and its user's room-creation rates (checked by the actor when it creates).
    fn creator(&self, room: &RoomId) -> Option<Box<Creator>> {
        let identity = self.identity.as_ref()?;
        if !identity.may(room.as_str(), Right::Write) {
            return None;
        }
        Some(Box::new(Creator {
            conn_rate: Some(self.room_create_rate.clone()),
            user: self
                .app
                .shared
                .config
                .auth
                .enabled()
                .then(|| identity.user.clone()),
        }))
    }

    fn leave(&mut self, name: &str) -> Result<(), Refusal> {
        let room = self.room(name, None)?;
        self.prune_failed_joins();
        if self.rooms.remove(&room).is_none() {
            return Err(Refusal::new(ErrorCode::NotFound, "not a member of this room").room(name));
        }
        self.presence.forget(&room);
        let msg = RoomMsg::Leave {
            conn_id: self.conn_id,
            notify: Some(self.out.clone()),
        };
        if self.app.registry.send(&room, msg).is_err() {
            self.out
                .send(Utf8Bytes::from(crate::room::left_frame(&room)));
        }
        Ok(())
    }

    /// The checks every write (publish, op) passes: room name, id, size, right, rate (a write
    /// flagged as a resend takes no token: it was counted when first sent, and the frame rate
    /// bounds a connection that flags everything). Returns the room and the op id.
    fn check_write(
        &mut self,
        name: &str,
        id: &str,
        size: usize,
        resend: bool,
    ) -> Result<(RoomId, OpId), Refusal> {
        let room = self.room(name, Some(id))?;
        let op_id = OpId::new(id).map_err(|e| Refusal::bad_request(e.to_string()).room(name))?;
        let max = self.app.shared.config.max_data_bytes;
        if size > max {
            let msg = format!("data is larger than {max} bytes");
            return Err(Refusal::new(ErrorCode::TooLarge, msg)
                .id(Some(id))
                .room(name)
                .limit(Limit::MaxDataBytes));
        }
        self.allowed(&room, Right::Write, Some(id))?;
        if !resend {
            if let Err(retry) = self.publish_rate.check() {
                let msg = "this connection writes faster than its limit";
                return Err(Refusal::new(ErrorCode::RateLimited, msg)
                    .id(Some(id))
                    .room(name)
                    .rate(RateScope::Connection, retry));
            }
        }
        Ok((room, op_id))
    }

    /// One of this connection's in-flight slots, held by each write until its ack and by each
    /// join until its answer. Waits for a free slot when `max_inflight_per_conn` are taken
    /// (reading this connection's frames pauses meanwhile: backpressure, counted as a limit hit).
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.app.shared.metrics.limit(Limit::MaxInflightPerConn);
                self.permits.clone().acquire_owned().await.ok()
            }
        }
    }

    /// A waiter answering on this connection, holding one of its in-flight slots.
    async fn waiter(&self, id: OpId, received: Instant) -> Option<Waiter> {
        let permit = self.slot().await?;
        Some(Waiter {
            id: Some(id),
            resend: false,
            received,
            reply: Reply::Ws {
                out: self.out.clone(),
                _permit: permit,
            },
        })
    }

    fn dispatch(&self, room: &RoomId, id: &str, msg: RoomMsg) -> Result<(), Refusal> {
        self.app.registry.send(room, msg).map_err(|_| {
            Refusal::new(ErrorCode::Unavailable, "server is shutting down")
                .id(Some(id))
                .room(room.as_str())
        })
    }

    async fn publish(
        &mut self,
        client: ClientId,
        name: &str,
        id: &str,
        data: &RawValue,
        resend: bool,
    ) -> Result<(), Refusal> {
        let received = Instant::now();
        let (room, op_id) = self.check_write(name, id, data.get().len(), resend)?;
        let Some(mut waiter) = self.waiter(op_id, received).await else {
            return Ok(());
        };
        waiter.resend = resend;
        let msg = RoomMsg::Publish(Publish {
            client,
            data: data.to_owned(),
            create: None,
            waiter,
        });
        self.dispatch(&room, id, msg)
    }

    async fn op(
        &mut self,
        client: ClientId,
        name: &str,
        id: &str,
        base: u64,
        ops: &RawValue,
    ) -> Result<(), Refusal> {
        let received = Instant::now();
        let (room, op_id) = self.check_write(name, id, ops.get().len(), false)?;
        let limits = concord_core::doc::Limits {
            max_ops: self.app.shared.config.doc_max_ops,
            ..Default::default()
        };
        // The ops array and each op object wrap the values: two more levels than `data`.
        let ops = concord_protocol::check_readable(ops.get(), concord_protocol::MAX_DATA_DEPTH + 2)
            .and_then(|v| concord_core::doc::decode_ops(&v, &limits).map_err(|e| e.to_string()))
            .map_err(|e| {
                Refusal::new(ErrorCode::InvalidOp, e)
                    .id(Some(id))
                    .room(name)
            })?;
        let Some(waiter) = self.waiter(op_id, received).await else {
            return Ok(());
        };
        let msg = RoomMsg::Op(OpMsg {
            client,
            base: concord_core::Seq(base),
            ops,
            waiter,
        });
        self.dispatch(&room, id, msg)
    }

    /// `drift`: only from a member of the room, rate-limited, logged once with a capped hash.
    fn drift(
        &mut self,
        client: &ClientId,
        name: &str,
        seq: u64,
        hash: &str,
    ) -> Result<(), Refusal> {
        self.joined_room(name, "join the room before reporting drift")?;
        if let Err(retry) = self.drift_rate.check() {
            let msg = "this connection reports drift faster than its limit";
            return Err(Refusal::new(ErrorCode::RateLimited, msg)
                .room(name)
                .rate(RateScope::Drift, retry));
        }
        self.app.shared.metrics.doc_hash_mismatch.inc();
        let shown: String = hash.chars().take(MAX_LOGGED_HASH).collect();
        let cut = hash.len() > shown.len();
        tracing::warn!(room = name, client = %client, seq, hash = shown, hash_cut = cut, "a client reports doc state drift");
        Ok(())
    }

    /// The room `name` if this connection is a member of it; otherwise refuses with
    /// `not_found` and `message`.
    fn joined_room(&mut self, name: &str, message: &str) -> Result<RoomId, Refusal> {
        let room = self.room(name, None)?;
        self.prune_failed_joins();
        if !self.rooms.contains_key(&room) {
            return Err(Refusal::new(ErrorCode::NotFound, message).room(name));
        }
        Ok(room)
    }

    fn presence(&mut self, name: &str, data: &RawValue) -> Result<(), Refusal> {
        let room = self.joined_room(name, "join the room before sending presence")?;
        let max = self.app.shared.config.max_presence_bytes;
        if data.get().len() > max {
            let msg = format!("presence data is larger than {max} bytes");
            return Err(Refusal::new(ErrorCode::TooLarge, msg)
                .room(name)
                .limit(Limit::MaxPresenceBytes));
        }
        self.allowed(&room, Right::Presence, None)?;
        let metrics = &self.app.shared.metrics;
        match self.presence.offer(&room, data.to_owned()) {
            Offer::Refused(retry) => {
                let msg = "this connection floods presence far beyond its rate";
                return Err(Refusal::new(ErrorCode::RateLimited, msg)
                    .room(name)
                    .rate(RateScope::Presence, retry));
            }
            Offer::Send(data) => {
                metrics.presence_in.inc();
                self.send_presence(&room, data);
            }
            Offer::Held { replaced } => {
                metrics.presence_in.inc();
                metrics.presence_held.inc();
                if replaced {
                    metrics.presence_coalesced.inc();
                }
            }
        }
        Ok(())
    }

    /// Sends the held presence updates the rate admits now (at [`PresenceGate::due`]).
    pub fn release_presence(&mut self) {
        for (room, data) in self.presence.release() {
            if self.rooms.contains_key(&room) {
                self.send_presence(&room, data);
            }
        }
    }

    fn send_presence(&self, room: &RoomId, data: Box<RawValue>) {
        let msg = RoomMsg::Presence {
            conn_id: self.conn_id,
            data,
        };
        let _ = self.app.registry.send(room, msg);
    }
}
