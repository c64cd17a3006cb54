//! The Concord server as a library: `run(config, listener, shutdown)`.
//!
//! See ARCHITECTURE.md for the crate map and the data flow of a publish.

pub mod auth;
pub mod config;
mod context;
mod gateway;
mod limiter;
pub mod metrics;
pub mod outbound;
mod retention;
pub mod room;
pub mod store;

pub use config::{Config, StoreConfig};

use axum::serve::ListenerExt;
use concord_core::hlc::SystemClock;
use context::Shared;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use store::{MemoryStore, SqliteStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains: stops accepting, lets publishes
/// in flight get their acks, closes every WebSocket with 1001, finishes commits, closes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = metrics::Metrics::new();
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Sqlite { path, sync_full } => Arc::new(SqliteStore::open(
            path,
            *sync_full,
            config.max_commit_batch,
            metrics.clone(),
        )?),
        StoreConfig::Memory => Arc::new(MemoryStore::new()),
    };
    let rooms_stored = store.room_count().await?;
    let shared = Arc::new(Shared::new(
        config,
        store.clone(),
        metrics,
        Arc::new(SystemClock),
    ));
    shared
        .rooms_stored
        .store(rooms_stored, std::sync::atomic::Ordering::Relaxed);
    let shared_for_retention = shared.clone();
    let registry = room::Registry::new(shared.clone());
    let token = CancellationToken::new();
    let app = Arc::new(gateway::App {
        shared,
        registry: registry.clone(),
        shutdown: token.clone(),
        conns: TaskTracker::new(),
        next_conn_id: AtomicU64::new(1),
        ips: Default::default(),
    });
    let sweeper = tokio::spawn(retention::run(shared_for_retention, token.clone()));
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    tracing::info!(addr = ?listener.local_addr().ok(), "serving");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = gateway::router(app.clone());
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(token.clone().cancelled_owned())
    .await;
    token.cancel();
    app.conns.close();
    app.conns.wait().await;
    let _ = sweeper.await;
    registry.close().await;
    store.close().await;
    tracing::info!("stopped");
    served.map_err(ServerError::Io)
}
