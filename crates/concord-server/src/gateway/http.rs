//! The HTTP API for backends: publish, read history, room info, health, readiness, metrics.

use super::App;
use crate::room::{Publish, Reply, RoomError, RoomMsg, Waiter};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use concord_core::{ClientId, OpId, RoomId, Seq};
use concord_protocol::{outbound as wire, ErrorCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The pseudo client id of events published over HTTP (scope of their idempotency keys).
pub const HTTP_CLIENT: &str = "http";

pub struct HttpError(RoomError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"code": self.0.code, "message": self.0.message});
        (status, axum::Json(body)).into_response()
    }
}

fn err(app: &App, code: ErrorCode, message: impl Into<String>) -> HttpError {
    app.shared.metrics.error(code);
    HttpError(RoomError::new(code, message))
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
    body: Bytes,
) -> Result<Response, HttpError> {
    let received = Instant::now();
    let room = room_id(&app, &room)?;
    let body: PostBody = serde_json::from_slice(&body).map_err(|e| {
        err(
            &app,
            ErrorCode::BadRequest,
            format!("body must be {{\"data\":…,\"id\":…}}: {e}"),
        )
    })?;
    if body.data.get().len() > app.shared.config.max_data_bytes {
        return Err(err(
            &app,
            ErrorCode::TooLarge,
            format!(
                "data is larger than {} bytes",
                app.shared.config.max_data_bytes
            ),
        ));
    }
    let id = body
        .id
        .as_deref()
        .map(OpId::new)
        .transpose()
        .map_err(|e| err(&app, ErrorCode::BadRequest, e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let msg = RoomMsg::Publish(Publish {
        client: ClientId::new(HTTP_CLIENT).expect("valid client id"),
        data: body.data,
        create: true,
        waiter: Waiter {
            id,
            received,
            reply: Reply::Http(tx),
        },
    });
    if app.registry.send(&room, msg).is_err() {
        return Err(err(&app, ErrorCode::Unavailable, "server is shutting down"));
    }
    match rx.await {
        Ok(Ok(acked)) => Ok(json(
            serde_json::json!({"seq": acked.seq.0, "epoch": acked.epoch.as_str(), "hlc": &*acked.hlc}).to_string(),
        )),
        Ok(Err(e)) => Err(HttpError(e)),
        Err(_) => Err(err(&app, ErrorCode::Unavailable, "room went away; retry")),
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn get_events(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, HttpError> {
    let room = room_id(&app, &room)?;
    let max = app.shared.config.max_page;
    let limit = q.limit.unwrap_or(100.min(max));
    if limit == 0 || limit > max {
        return Err(err(
            &app,
            ErrorCode::BadRequest,
            format!("limit must be 1..={max}"),
        ));
    }
    let store = &app.shared.store;
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(room = %room, error = %e, "reading events failed");
        err(&app, ErrorCode::Unavailable, "store unavailable")
    };
    let events = store
        .read_events(&room, Seq(q.after.unwrap_or(0)), limit)
        .await
        .map_err(unavailable)?;
    // Read the head after the events, so `seq` is never behind the last event returned.
    let record = store
        .load_room(&room)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| err(&app, ErrorCode::NotFound, "room does not exist"))?;
    let mut body = serde_json::json!({"room": room.as_str(), "epoch": record.epoch.as_str(), "seq": record.head.0})
        .to_string();
    body.pop();
    body.push_str(",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&wire::event(
            room.as_str(),
            e.seq.0,
            &e.hlc,
            &e.from,
            e.op_id.as_deref(),
            &e.data,
        ));
    }
    body.push_str("]}");
    Ok(json(body))
}

pub async fn get_room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
) -> Result<Response, HttpError> {
    let room = room_id(&app, &room)?;
    let record = app
        .shared
        .store
        .load_room(&room)
        .await
        .map_err(|e| {
            tracing::error!(room = %room, error = %e, "reading room failed");
            err(&app, ErrorCode::Unavailable, "store unavailable")
        })?
        .ok_or_else(|| err(&app, ErrorCode::NotFound, "room does not exist"))?;
    Ok(json(
        serde_json::json!({
            "room": room.as_str(),
            "kind": record.kind.as_str(),
            "epoch": record.epoch.as_str(),
            "seq": record.head.0,
        })
        .to_string(),
    ))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match app.shared.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response(),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.render(),
    )
        .into_response()
}
