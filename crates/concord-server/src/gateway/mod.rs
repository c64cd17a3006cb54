//! The network edge: the axum router with the WebSocket endpoint and the HTTP API.

mod credentials;
mod demo;
mod frame_gate;
mod guard;
mod http;
mod page;
mod presence_gate;
mod refusal;
mod session;
mod writer;
mod ws;

use crate::context::Shared;
use crate::room::Registry;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnRequest,
    DefaultOnResponse, TraceLayer,
};
use tracing::Level;

/// What every handler needs.
pub struct App {
    pub shared: Arc<Shared>,
    pub registry: Arc<Registry>,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
    /// Every WebSocket connection task, so shutdown can wait for them.
    pub conns: TaskTracker,
    pub next_conn_id: AtomicU64,
}

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.shared.config.max_frame_bytes;
    let mut router = Router::new();
    if app.shared.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(http::metrics));
    }
    if app.shared.config.demo_enabled() {
        router = demo::routes(router);
    }
    router
        .route("/v1/ws", get(ws::upgrade))
        .route(
            "/v1/rooms/{room}/events",
            post(http::post_event).get(http::get_events),
        )
        .route("/v1/rooms/{room}", get(http::get_room))
        .route("/v1/rooms/{room}/restore", post(http::restore))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/v1/admin/stats", get(http::admin_stats))
        .fallback(http::fallback)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::body_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::host_guard,
        ))
        .layer(trace_layer())
        .with_state(app)
}

/// The router of the separate metrics listener (`Config::metrics_listen`): `/metrics` only.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(http::metrics_open))
        .fallback(http::fallback)
        .layer(trace_layer())
        .with_state(app)
}

/// One span per HTTP request (method, URI, version), at debug level; a 5xx is logged at debug
/// too: the handlers log the causes they know (a store error) themselves.
fn trace_layer() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    DefaultMakeSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
> {
    TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG))
}
