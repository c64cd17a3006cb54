//! The HTTP API for backends: publish, read history, room info, health, readiness, metrics.

use super::credentials::{bearer, HTTP_CLIENT, HTTP_CLIENT_PREFIX};
use super::refusal::{HttpError, Refusal};
use super::App;
use crate::auth::{Identity, Right};
use crate::metrics::Limit;
use crate::room::doc;
use crate::room::{Creator, Publish, Reply, RoomMsg, Waiter};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use concord_core::{ClientId, OpId, RoomId, RoomKind, Seq};
use concord_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Who called the HTTP API: a backend (admin key, or anyone when authentication is off) or a
/// JWT user. Idempotency keys (`id`) of HTTP writes are scoped to it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    Backend,
    User(String),
}

impl Caller {
    /// The key of the user's room-creation bucket (none for a backend).
    fn user(&self) -> Option<String> {
        match self {
            Caller::Backend => None,
            Caller::User(u) => Some(u.clone()),
        }
    }

    /// The client id stored as `from` of this caller's HTTP events: `http` for a backend,
    /// `http:<user>` for a JWT user, or `http:~<32 hex of a SHA-256 of the user>` when the user is
    /// not printable ASCII, too long for a client id, or starts with `~`.
    fn client_id(&self) -> ClientId {
        let id = match self {
            Caller::Backend => HTTP_CLIENT.to_string(),
            Caller::User(user) => {
                let plain = !user.is_empty()
                    && !user.starts_with('~')
                    && user.len() <= 128 - HTTP_CLIENT_PREFIX.len()
                    && user.bytes().all(|b| (0x21..=0x7e).contains(&b));
                if plain {
                    format!("{HTTP_CLIENT_PREFIX}{user}")
                } else {
                    // SHA-256 (first 16 bytes, hex) of the user as a JSON string.
                    let digest = concord_core::doc::state_hash(&serde_json::json!(user));
                    format!("{HTTP_CLIENT_PREFIX}~{digest}")
                }
            }
        };
        ClientId::new(&id).unwrap_or_else(|_| ClientId::new(HTTP_CLIENT).expect("valid client id"))
    }
}

/// Counts a refusal and makes it an HTTP answer.
pub(super) fn err(app: &App, code: ErrorCode, message: impl Into<String>) -> HttpError {
    Refusal::new(code, message).http(&app.shared.metrics)
}

/// Checks the caller's `Authorization: Bearer` credentials for `right` in `room`: the admin key
/// grants everything; otherwise a JWT with the right is needed. Open when neither JWT auth nor
/// an admin key is configured (development).
fn authorize(
    app: &App,
    headers: &HeaderMap,
    room: &str,
    right: Right,
) -> Result<Identity, HttpError> {
    authorize_caller(app, headers, room, right).map(|(identity, _)| identity)
}

/// [`authorize`], also saying who the caller is.
fn authorize_caller(
    app: &App,
    headers: &HeaderMap,
    room: &str,
    right: Right,
) -> Result<(Identity, Caller), HttpError> {
    let cfg = &app.shared.config;
    let token = bearer(headers);
    if let (Some(key), Some(t)) = (&cfg.admin_key, &token) {
        if key.matches(t) {
            return Ok((Identity::admin(), Caller::Backend));
        }
    }
    if !cfg.auth.enabled() && cfg.admin_key.is_none() {
        return Ok((Identity::anonymous(), Caller::Backend));
    }
    let now = app.shared.clock.now_ms();
    let identity = match &cfg.auth {
        crate::auth::AuthMode::Jwt(_) => cfg.auth.authenticate(token.as_deref(), now),
        crate::auth::AuthMode::None => Err(crate::auth::AuthError::Missing),
    }
    .map_err(|e| {
        Refusal::new(ErrorCode::Unauthorized, e.to_string())
            .auth(e.reason())
            .http(&app.shared.metrics)
    })?;
    if identity.may(room, right) {
        let caller = Caller::User(identity.user.clone());
        Ok((identity, caller))
    } else {
        Err(err(
            app,
            ErrorCode::Forbidden,
            format!("your token does not grant {} in this room", right.as_str()),
        ))
    }
}

/// A request body, or `too_large` (413, counted as the `max_frame_bytes` limit: the body limit
/// of HTTP requests) / `bad_request` in our JSON error format.
fn body_bytes(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, HttpError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(ErrorCode::TooLarge, e.body_text())
                .limit(Limit::MaxFrameBytes)
                .http(&app.shared.metrics)
        } else {
            err(app, ErrorCode::BadRequest, e.body_text())
        }
    })
}

fn room_id(app: &App, name: &str) -> Result<RoomId, HttpError> {
    RoomId::new(name).map_err(|e| err(app, ErrorCode::BadRequest, e.to_string()))
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize)]
struct PostBody {
    data: Box<RawValue>,
    id: Option<String>,
}

pub async fn post_event(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let received = Instant::now();
    let room = room_id(&app, &room)?;
    let (_, caller) = authorize_caller(&app, &headers, room.as_str(), Right::Write)?;
    let body: PostBody = json_body(&app, body, r#"{"data":…,"id":…}"#)?;
    if let Err(e) =
        concord_protocol::check_readable(body.data.get(), concord_protocol::MAX_DATA_DEPTH)
    {
        return Err(err(&app, ErrorCode::BadRequest, format!("data: {e}")));
    }
    let max = app.shared.config.max_data_bytes;
    if body.data.get().len() > max {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("data is larger than {max} bytes"),
        )
        .limit(Limit::MaxDataBytes)
        .http(&app.shared.metrics));
    }
    submit(&app, &room, body.id, received, |waiter| {
        RoomMsg::Publish(Publish {
            // Idempotency keys are scoped per caller: two users' `id`s never collide.
            client: caller.client_id(),
            data: body.data,
            create: Some(Box::new(Creator {
                conn_rate: None,
                user: caller.user(),
            })),
            waiter,
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Seqs are stored as SQLite integers: anything above `i64::MAX` is no position at all.
fn seq_param(app: &App, name: &str, v: Option<u64>) -> Result<Option<Seq>, HttpError> {
    match v {
        Some(n) if n > i64::MAX as u64 => Err(err(
            app,
            ErrorCode::BadRequest,
            format!("{name} must be at most {}", i64::MAX),
        )),
        v => Ok(v.map(Seq)),
    }
}

/// `GET /v1/rooms/{room}/events?after=&limit=`: a page of events, streamed, at most `limit`
/// events and `max_page_bytes` bytes of them (at least one); `next_after` and `more` say where
/// to continue.
pub async fn get_events(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let room = room_id(&app, &room)?;
    authorize(&app, &headers, room.as_str(), Right::Read)?;
    let Query(q) = q.map_err(|e| err(&app, ErrorCode::BadRequest, e.body_text()))?;
    let max = app.shared.config.max_page;
    let limit = q.limit.unwrap_or(100.min(max));
    if limit == 0 || limit > max {
        return Err(err(
            &app,
            ErrorCode::BadRequest,
            format!("limit must be 1..={max}"),
        ));
    }
    let after = seq_param(&app, "after", q.after)?.unwrap_or(Seq(0));
    let record = app
        .shared
        .store
        .load_room(&room)
        .await
        .map_err(|e| {
            tracing::error!(room = %room, error = %e, "reading events failed");
            err(&app, ErrorCode::Unavailable, "store unavailable")
        })?
        .ok_or_else(|| err(&app, ErrorCode::NotFound, "room does not exist"))?;
    let spec = super::page::PageSpec {
        room,
        kind: record.kind,
        epoch: record.epoch.as_str().to_string(),
        head: record.head,
        after,
        limit,
    };
    let body = super::page::body(app.clone(), spec);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
pub struct RoomQuery {
    at: Option<u64>,
}

/// `GET /v1/rooms/{room}[?at=SEQ]`: the room, and for a doc room its state (and hash) at the
/// latest seq or at `at`.
pub async fn get_room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    q: Result<Query<RoomQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let room = room_id(&app, &room)?;
    authorize(&app, &headers, room.as_str(), Right::Read)?;
    let Query(q) = q.map_err(|e| err(&app, ErrorCode::BadRequest, e.body_text()))?;
    let store = app.shared.store.as_ref();
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(room = %room, error = %e, "reading room failed");
        err(&app, ErrorCode::Unavailable, "store unavailable")
    };
    let record = store
        .load_room(&room)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| err(&app, ErrorCode::NotFound, "room does not exist"))?;
    let mut body = serde_json::json!({
        "room": room.as_str(),
        "kind": record.kind.as_str(),
        "epoch": record.epoch.as_str(),
        "seq": record.head.0,
    });
    match (record.kind, q.at) {
        (RoomKind::Stream, Some(_)) => {
            return Err(err(&app, ErrorCode::BadRequest, "at is for doc rooms"));
        }
        (RoomKind::Stream, None) => {}
        (RoomKind::Doc, at) => {
            let at = seq_param(&app, "at", at)?.unwrap_or(record.head);
            if at > record.head {
                let msg = format!("at {at} is after the latest seq ({})", record.head);
                return Err(err(&app, ErrorCode::NotFound, msg));
            }
            let state = doc::state_at(store, &room, at).await.map_err(|e| match e {
                crate::store::StoreError::Trimmed(m) => err(&app, ErrorCode::NotFound, m),
                e => unavailable(e),
            })?;
            body["seq"] = at.0.into();
            body["hash"] = concord_core::doc::state_hash(&state).into();
            body["state"] = state;
        }
    }
    Ok(json(body.to_string()))
}

#[derive(Deserialize)]
struct RestoreBody {
    seq: u64,
    id: Option<String>,
}

/// `POST /v1/rooms/{room}/restore {"seq":N}`: commits, as one new op list, the ops that turn
/// the document into its state at N (history is never rewritten). Needs `admin`.
pub async fn restore(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let received = Instant::now();
    let room = room_id(&app, &room)?;
    let (_, caller) = authorize_caller(&app, &headers, room.as_str(), Right::Admin)?;
    let body: RestoreBody = json_body(&app, body, r#"{"seq":N,"id":…}"#)?;
    let seq = Seq(body.seq);
    let client = caller.client_id();
    submit(&app, &room, body.id, received, |waiter| RoomMsg::Restore {
        seq,
        client,
        waiter,
    })
    .await
}

/// A JSON request body of type `T` (`shape` describes it in the error).
fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, HttpError> {
    let bytes = body_bytes(app, body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        err(
            app,
            ErrorCode::BadRequest,
            format!("body must be {shape}: {e}"),
        )
    })
}

/// Sends the write `make(waiter)` to the room and answers with its ack ({seq, epoch, hlc}).
async fn submit(
    app: &App,
    room: &RoomId,
    id: Option<String>,
    received: Instant,
    make: impl FnOnce(Waiter) -> RoomMsg,
) -> Result<Response, HttpError> {
    let id = id
        .as_deref()
        .map(OpId::new)
        .transpose()
        .map_err(|e| err(app, ErrorCode::BadRequest, e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let waiter = Waiter {
        id,
        resend: false,
        received,
        reply: Reply::Http(tx),
    };
    if app.registry.send(room, make(waiter)).is_err() {
        return Err(err(app, ErrorCode::Unavailable, "server is shutting down"));
    }
    match rx.await {
        Ok(Ok(acked)) => Ok(json(
            serde_json::json!({"seq": acked.seq.0, "epoch": acked.epoch.as_str(), "hlc": acked.hlc.as_str()})
                .to_string(),
        )),
        Ok(Err(e)) => Err(HttpError(e)),
        Err(_) => Err(err(app, ErrorCode::Unavailable, "room went away; retry")),
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when not shutting down and the store answers reads and takes a write (a full disk is
/// not ready). Store errors go to the log, never into the public answer.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let store = &app.shared.store;
    let probe = match store.ping().await {
        Ok(()) => store.ping_write().await,
        Err(e) => Err(e),
    };
    match probe {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness probe: the store cannot read or write");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// `GET /v1/admin/stats`: connections and the busiest loaded rooms (admin right on `*`).
pub async fn admin_stats(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    authorize(&app, &headers, "*", Right::Admin)?;
    let rooms: Vec<serde_json::Value> = app
        .shared
        .top_rooms(50)
        .into_iter()
        .map(|(room, publishes, presence, members)| {
            serde_json::json!({"room": room.as_str(), "publishes": publishes, "presence": presence, "members": members})
        })
        .collect();
    let body = serde_json::json!({
        "node": app.shared.config.node_id,
        "connections": app.shared.metrics.connections.get(),
        "rooms_loaded": app.registry.len(),
        "rooms": rooms,
    });
    Ok(json(body.to_string()))
}

/// Known paths with another method: a JSON `bad_request` with status 405.
pub async fn method_not_allowed(State(app): State<Arc<App>>) -> Response {
    let mut resp = err(
        &app,
        ErrorCode::BadRequest,
        "method not allowed on this endpoint",
    )
    .into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

/// Unknown paths: a JSON `not_found`.
pub async fn fallback(State(app): State<Arc<App>>) -> HttpError {
    err(&app, ErrorCode::NotFound, "no such endpoint")
}

/// `GET /metrics` on the main port: it names the busiest rooms, so with authentication or an
/// admin key configured it needs the admin right on `*` (or use `metrics_listen`).
pub async fn metrics(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    authorize(&app, &headers, "*", Right::Admin)?;
    Ok(metrics_open(State(app)).await)
}

/// `GET /metrics` on the separate metrics listener (no credentials: protect it by its address).
pub async fn metrics_open(State(app): State<Arc<App>>) -> Response {
    let top = &app.shared.metrics.room_top_publishes;
    top.clear();
    for (room, publishes, _, _) in app.shared.top_rooms(10) {
        top.get_or_create(&crate::metrics::RoomLabel {
            room: room.to_string(),
        })
        .set(publishes as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.render(),
    )
        .into_response()
}
