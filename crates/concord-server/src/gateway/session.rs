//! The protocol state of one WebSocket connection: identity, joined rooms, rights, rate limits,
//! and the handling of each client message.

use super::ws::End;
use super::App;
use crate::auth::{Identity, Right};
use crate::limiter::Bucket;
use crate::outbound::{ConnHandle, Outbound};
use crate::room::{Creator, OpMsg, Publish, Reply, RoomMsg, Waiter};
use axum::extract::ws::Utf8Bytes;
use concord_core::{ClientId, OpId, RoomId, RoomKind};
use concord_protocol::outbound::{AuthOk, ErrorMsg, Left, MemberInfo, Welcome};
use concord_protocol::{close, decode_client, ClientMsg, ErrorCode, ServerMsg, Since};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, Semaphore};

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
    /// When the token expires, or — once it has — when the grace for `auth` ends.
    pub auth_deadline: Option<tokio::time::Instant>,
    expired: bool,
    /// Joined (or joining) rooms; the receiver says whether a pending join succeeded.
    pub rooms: HashMap<RoomId, Option<oneshot::Receiver<bool>>>,
    permits: Arc<Semaphore>,
    publish_rate: Bucket,
    presence_rate: Bucket,
    drift_rate: Bucket,
    /// Rooms this connection creates (checked by a room's actor when a join creates it).
    room_create_rate: Arc<Bucket>,
}

impl Session {
    pub fn new(app: Arc<App>, out: Outbound, upgrade_token: Option<String>) -> Self {
        let cfg = &app.shared.config;
        Session {
            conn_id: app.next_conn_id.fetch_add(1, Ordering::Relaxed),
            permits: Arc::new(Semaphore::new(cfg.max_inflight_per_conn)),
            publish_rate: Bucket::new(cfg.rate_publish_per_conn),
            presence_rate: Bucket::new(cfg.rate_presence_per_conn),
            drift_rate: Bucket::new(cfg.rate_drift_per_conn),
            room_create_rate: Arc::new(Bucket::new(cfg.rate_room_create_per_conn)),
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

    pub fn error(&self, id: Option<&str>, room: Option<&str>, code: ErrorCode, message: &str) {
        self.error_retry(id, room, code, message, None)
    }

    fn error_retry(
        &self,
        id: Option<&str>,
        room: Option<&str>,
        code: ErrorCode,
        message: &str,
        retry: Option<u64>,
    ) {
        self.app.shared.metrics.error(code);
        let error = ServerMsg::Error(ErrorMsg {
            id: id.map(Into::into),
            room: room.map(Into::into),
            retry_after_ms: retry,
            ..ErrorMsg::new(code, message)
        });
        self.out.send(Utf8Bytes::from(error.encode()));
    }

    /// Waits (up to the shutdown grace) until every publish in flight was answered.
    pub async fn drain_in_flight(&self) {
        let cfg = &self.app.shared.config;
        let all = cfg.max_inflight_per_conn as u32;
        let _ = tokio::time::timeout(cfg.shutdown_grace, self.permits.acquire_many(all)).await;
    }

    pub async fn on_text(&mut self, text: &str) -> Option<End> {
        self.app.shared.metrics.frames_in.inc();
        let msg = match decode_client(text) {
            Ok(m) => m,
            Err(e) => {
                self.error(
                    e.id.as_deref(),
                    e.room.as_deref(),
                    ErrorCode::BadRequest,
                    &e.message,
                );
                return None;
            }
        };
        let Some((client, _)) = self.client.clone() else {
            return match msg {
                ClientMsg::Hello(h) => self.hello(&h.client_id, h.token.map(|t| t.into())).await,
                other => {
                    let msg = format!("{} before hello: send hello first", other.type_name());
                    self.error(None, None, ErrorCode::BadRequest, &msg);
                    None
                }
            };
        };
        if let ClientMsg::Auth(a) = msg {
            return self.auth(&a.token);
        }
        if self.expired {
            let msg = "token expired: send {\"type\":\"auth\",\"token\":…} with a fresh token";
            self.error(None, None, ErrorCode::Unauthorized, msg);
            return None;
        }
        match msg {
            ClientMsg::Hello(_) => self.error(
                None,
                None,
                ErrorCode::BadRequest,
                "hello was already sent on this connection",
            ),
            ClientMsg::Join(j) => self.join(client, &j.room, j.kind.as_deref(), j.since, j.history),
            ClientMsg::Leave(l) => self.leave(&l.room),
            ClientMsg::Publish(p) => self.publish(client, &p.room, &p.id, p.data).await,
            ClientMsg::Presence(p) => self.presence(&p.room, p.data),
            ClientMsg::Op(op) => self.op(client, &op.room, &op.id, op.base, op.ops).await,
            ClientMsg::Drift(d) => self.drift(&client, &d.room, d.seq, &d.hash),
            ClientMsg::Auth(_) => unreachable!("handled above"),
        }
        None
    }

    fn now_secs(&self) -> u64 {
        self.app.shared.clock.now_ms() / 1000
    }

    /// Verifies a token; on failure answers `unauthorized` and closes with 1008.
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, End> {
        let auth = &self.app.shared.config.auth;
        auth.authenticate(token, self.now_secs()).map_err(|e| {
            self.app.shared.metrics.auth_failure(e.reason());
            self.error(None, None, ErrorCode::Unauthorized, &e.to_string());
            End::Close(close::POLICY, "unauthorized")
        })
    }

    fn schedule_expiry(&mut self, identity: &Identity) {
        self.expired = false;
        let leeway = self.app.shared.config.auth.leeway_secs();
        self.auth_deadline = identity.exp.map(|exp| {
            let now_ms = self.app.shared.clock.now_ms();
            let left = ((exp + leeway) * 1000).saturating_sub(now_ms);
            tokio::time::Instant::now() + std::time::Duration::from_millis(left)
        });
    }

    async fn hello(&mut self, client_id: &str, token: Option<String>) -> Option<End> {
        let client = match ClientId::new(client_id) {
            Ok(c) if !super::http::is_http_client(c.as_str()) => c,
            Ok(_) => {
                let msg = "client_ids \"http\" and \"http:…\" are reserved for events published over HTTP";
                self.error(None, None, ErrorCode::BadRequest, msg);
                return None;
            }
            Err(e) => {
                self.error(None, None, ErrorCode::BadRequest, &e.to_string());
                return None;
            }
        };
        let token = token.or_else(|| self.upgrade_token.take());
        let identity = match self.authenticate(token.as_deref()) {
            Ok(i) => i,
            Err(end) => return Some(end),
        };
        if self.app.shared.config.auth.enabled() {
            // A client id scopes op ids (idempotency) and presence: it belongs to one user.
            match self
                .app
                .shared
                .store
                .claim_client(client.as_str(), &identity.user)
                .await
            {
                Ok(owner) if owner == identity.user => {}
                Ok(_) => {
                    self.app.shared.metrics.auth_failure("client_id_taken");
                    let msg = "this client_id belongs to another user: choose a random client_id";
                    self.error(None, None, ErrorCode::Unauthorized, msg);
                    return Some(End::Close(
                        close::POLICY,
                        "client_id belongs to another user",
                    ));
                }
                Err(e) => {
                    tracing::error!(client = %client, error = %e, "claiming a client id failed");
                    self.error(
                        None,
                        None,
                        ErrorCode::Unavailable,
                        "the store is unavailable; retry",
                    );
                    return None;
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
        self.schedule_expiry(&identity);
        self.identity = Some(identity);
        self.client = Some((client, member));
        None
    }

    /// `auth`: a fresh token for the same user; rooms no longer readable are left.
    fn auth(&mut self, token: &str) -> Option<End> {
        let identity = match self.authenticate(Some(token)) {
            Ok(i) => i,
            Err(end) => return Some(end),
        };
        let same_user = self
            .identity
            .as_ref()
            .is_some_and(|i| i.user == identity.user);
        if !same_user {
            self.app.shared.metrics.auth_failure("other_user");
            self.error(
                None,
                None,
                ErrorCode::Unauthorized,
                "a refreshed token must be for the same user",
            );
            return Some(End::Close(close::POLICY, "unauthorized"));
        }
        let revoked: Vec<RoomId> = self
            .rooms
            .keys()
            .filter(|r| !identity.may(r.as_str(), Right::Read))
            .cloned()
            .collect();
        for room in revoked {
            self.rooms.remove(&room);
            let msg = RoomMsg::Leave {
                conn_id: self.conn_id,
                notify: Some(self.out.clone()),
            };
            let _ = self.app.registry.send(&room, msg);
            self.error(
                None,
                Some(room.as_str()),
                ErrorCode::Forbidden,
                "the new token does not grant read",
            );
        }
        let ok = ServerMsg::AuthOk(AuthOk {
            user: identity.user.as_str().into(),
            exp: identity.exp,
        });
        self.out.send(Utf8Bytes::from(ok.encode()));
        self.schedule_expiry(&identity);
        self.identity = Some(identity);
        None
    }

    /// The token expired: warn once, then close 1008 when the grace ends without `auth`.
    pub fn on_auth_deadline(&mut self) -> Option<End> {
        if self.expired {
            self.app.shared.metrics.auth_failure("expired");
            return Some(End::Close(close::POLICY, "token expired"));
        }
        self.expired = true;
        let grace = self.app.shared.config.auth_grace;
        self.auth_deadline = Some(tokio::time::Instant::now() + grace);
        let msg = format!(
            "token expired: send {{\"type\":\"auth\",\"token\":…}} within {} ms or the connection closes",
            grace.as_millis()
        );
        self.error(None, None, ErrorCode::Unauthorized, &msg);
        None
    }

    fn room(&self, name: &str, id: Option<&str>) -> Option<RoomId> {
        match RoomId::new(name) {
            Ok(r) => Some(r),
            Err(e) => {
                let shown: String = name.chars().take(128).collect();
                self.error(id, Some(&shown), ErrorCode::BadRequest, &e.to_string());
                None
            }
        }
    }

    /// Checks a right; answers `forbidden` when it is not granted.
    fn allowed(&self, room: &RoomId, right: Right, id: Option<&str>) -> bool {
        if self
            .identity
            .as_ref()
            .is_some_and(|i| i.may(room.as_str(), right))
        {
            return true;
        }
        let msg = format!("your token does not grant {} in this room", right.as_str());
        self.error(id, Some(room.as_str()), ErrorCode::Forbidden, &msg);
        false
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

    fn join(
        &mut self,
        client: ClientId,
        name: &str,
        kind: Option<&str>,
        since: Option<Since>,
        history: Option<u64>,
    ) {
        let Some(room) = self.room(name, None) else {
            return;
        };
        let kind = match kind.map(RoomKind::parse).transpose() {
            Ok(k) => k,
            Err(e) => return self.error(None, Some(name), ErrorCode::BadRequest, &e.to_string()),
        };
        if !self.allowed(&room, Right::Read, None) {
            return;
        }
        let app = self.app.clone();
        let cfg = &app.shared.config;
        let history = history.unwrap_or(0);
        if history > cfg.max_history {
            self.app.shared.metrics.limit("max_history");
            let msg = format!("history must be at most {}", cfg.max_history);
            return self.error(None, Some(name), ErrorCode::BadRequest, &msg);
        }
        self.prune_failed_joins();
        if !self.rooms.contains_key(&room) && self.rooms.len() >= cfg.max_rooms_per_conn {
            self.app.shared.metrics.limit("max_rooms_per_conn");
            let msg = format!(
                "a connection may join at most {} rooms",
                cfg.max_rooms_per_conn
            );
            return self.error(None, Some(name), ErrorCode::BadRequest, &msg);
        }
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
        };
        if self.app.registry.send(&room, msg).is_err() {
            return self.error(
                None,
                Some(name),
                ErrorCode::Unavailable,
                "server is shutting down",
            );
        }
        self.rooms.insert(room, Some(rx));
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

    fn leave(&mut self, name: &str) {
        let Some(room) = self.room(name, None) else {
            return;
        };
        self.prune_failed_joins();
        if self.rooms.remove(&room).is_none() {
            return self.error(
                None,
                Some(name),
                ErrorCode::NotFound,
                "not a member of this room",
            );
        }
        let msg = RoomMsg::Leave {
            conn_id: self.conn_id,
            notify: Some(self.out.clone()),
        };
        if self.app.registry.send(&room, msg).is_err() {
            let left = ServerMsg::Left(Left { room: name.into() });
            self.out.send(Utf8Bytes::from(left.encode()));
        }
    }

    /// The checks every write (publish, op) passes: room name, id, size, right, rate. Returns
    /// the room and the op id.
    fn check_write(&mut self, name: &str, id: &str, size: usize) -> Option<(RoomId, OpId)> {
        let room = self.room(name, Some(id))?;
        let op_id = match OpId::new(id) {
            Ok(i) => i,
            Err(e) => {
                self.error(None, Some(name), ErrorCode::BadRequest, &e.to_string());
                return None;
            }
        };
        let max = self.app.shared.config.max_data_bytes;
        if size > max {
            self.app.shared.metrics.limit("max_data_bytes");
            let msg = format!("data is larger than {max} bytes");
            self.error(Some(id), Some(name), ErrorCode::TooLarge, &msg);
            return None;
        }
        if !self.allowed(&room, Right::Write, Some(id)) {
            return None;
        }
        if let Err(retry) = self.publish_rate.check() {
            self.app.shared.metrics.rate_limit("connection");
            let msg = "this connection writes faster than its limit";
            self.error_retry(
                Some(id),
                Some(name),
                ErrorCode::RateLimited,
                msg,
                Some(retry),
            );
            return None;
        }
        Some((room, op_id))
    }

    /// A waiter answering on this connection, holding one of its in-flight permits.
    /// Waits for a free slot when `max_inflight_per_conn` writes await their acks (reading
    /// this connection's frames pauses meanwhile: backpressure, counted as a limit hit).
    async fn waiter(&self, id: OpId, received: Instant) -> Option<Waiter> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.app.shared.metrics.limit("max_inflight_per_conn");
                self.permits.clone().acquire_owned().await.ok()?
            }
        };
        Some(Waiter {
            id: Some(id),
            received,
            reply: Reply::Ws {
                out: self.out.clone(),
                _permit: permit,
            },
        })
    }

    fn dispatch(&self, room: &RoomId, id: &str, msg: RoomMsg) {
        if self.app.registry.send(room, msg).is_err() {
            self.error(
                Some(id),
                Some(room.as_str()),
                ErrorCode::Unavailable,
                "server is shutting down",
            );
        }
    }

    async fn publish(&mut self, client: ClientId, name: &str, id: &str, data: &RawValue) {
        let received = Instant::now();
        let Some((room, op_id)) = self.check_write(name, id, data.get().len()) else {
            return;
        };
        let Some(waiter) = self.waiter(op_id, received).await else {
            return;
        };
        let msg = RoomMsg::Publish(Publish {
            client,
            data: data.to_owned(),
            create: None,
            waiter,
        });
        self.dispatch(&room, id, msg);
    }

    async fn op(&mut self, client: ClientId, name: &str, id: &str, base: u64, ops: &RawValue) {
        let received = Instant::now();
        let Some((room, op_id)) = self.check_write(name, id, ops.get().len()) else {
            return;
        };
        let limits = concord_core::doc::Limits {
            max_ops: self.app.shared.config.doc_max_ops,
            ..Default::default()
        };
        // The ops array and each op object wrap the values: two more levels than `data`.
        let decoded =
            concord_protocol::check_readable(ops.get(), concord_protocol::MAX_DATA_DEPTH + 2)
                .and_then(|v| {
                    concord_core::doc::decode_ops(&v, &limits).map_err(|e| e.to_string())
                });
        let ops = match decoded {
            Ok(ops) => ops,
            Err(e) => return self.error(Some(id), Some(name), ErrorCode::InvalidOp, &e),
        };
        let Some(waiter) = self.waiter(op_id, received).await else {
            return;
        };
        let msg = RoomMsg::Op(OpMsg {
            client,
            base: concord_core::Seq(base),
            ops,
            waiter,
        });
        self.dispatch(&room, id, msg);
    }

    /// `drift`: only from a member of the room, rate-limited, logged once with a capped hash.
    fn drift(&mut self, client: &ClientId, name: &str, seq: u64, hash: &str) {
        if self
            .joined_room(name, "join the room before reporting drift")
            .is_none()
        {
            return;
        }
        if let Err(retry) = self.drift_rate.check() {
            self.app.shared.metrics.rate_limit("drift");
            let msg = "this connection reports drift faster than its limit";
            return self.error_retry(None, Some(name), ErrorCode::RateLimited, msg, Some(retry));
        }
        self.app.shared.metrics.doc_hash_mismatch.inc();
        let shown: String = hash.chars().take(MAX_LOGGED_HASH).collect();
        let cut = hash.len() > shown.len();
        tracing::warn!(room = name, client = %client, seq, hash = shown, hash_cut = cut, "a client reports doc state drift");
    }

    /// The room `name` if this connection is a member of it; otherwise answers `not_found` with
    /// `message`.
    fn joined_room(&mut self, name: &str, message: &str) -> Option<RoomId> {
        let room = self.room(name, None)?;
        self.prune_failed_joins();
        if !self.rooms.contains_key(&room) {
            self.error(None, Some(name), ErrorCode::NotFound, message);
            return None;
        }
        Some(room)
    }

    fn presence(&mut self, name: &str, data: &RawValue) {
        let Some(room) = self.joined_room(name, "join the room before sending presence") else {
            return;
        };
        let max = self.app.shared.config.max_presence_bytes;
        if data.get().len() > max {
            self.app.shared.metrics.limit("max_presence_bytes");
            let msg = format!("presence data is larger than {max} bytes");
            return self.error(None, Some(name), ErrorCode::TooLarge, &msg);
        }
        if !self.allowed(&room, Right::Presence, None) {
            return;
        }
        if let Err(retry) = self.presence_rate.check() {
            self.app.shared.metrics.rate_limit("presence");
            let msg = "this connection sends presence faster than its limit";
            return self.error_retry(None, Some(name), ErrorCode::RateLimited, msg, Some(retry));
        }
        self.app.shared.metrics.presence_in.inc();
        let msg = RoomMsg::Presence {
            conn_id: self.conn_id,
            data: data.to_owned(),
        };
        let _ = self.app.registry.send(&room, msg);
    }
}
