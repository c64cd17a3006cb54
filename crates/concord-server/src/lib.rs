//! The Concord server as a library: `run(config, listener, shutdown, env)` (`env`: the injected clock and the metrics).
//!
//! See ARCHITECTURE.md for the crate map and the data flow of a publish.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
mod context;
mod edge;
pub mod exposition;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod gateway;
#[cfg(test)]
mod layering;
mod limiter;
pub mod metrics;
pub mod outbound;
mod retention;
pub mod room;
pub mod store;

pub use clock::{TestClock, Time};
pub use config::{Config, StoreConfig};
pub use metrics::Metrics;

use context::Shared;
use std::future::Future;
use std::net::SocketAddr;
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

/// Where a server that is ready serves (given to the `ready` callback of [`run_with_ready`]).
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub addr: SocketAddr,
    /// The separate `/metrics` listener, when `Config::metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
}

/// What a server is given besides its config: the clock it reads (and its timers follow), the
/// metrics it records into, and — in the distributed mode — the backend it shares with the
/// other gateways (None: the store its config names, rooms sequenced here). Keep a clone of
/// `metrics` to read them while it runs.
#[derive(Clone)]
pub struct Env {
    pub time: Time,
    pub metrics: Metrics,
    pub backend: Option<cluster::Backend>,
}

impl Env {
    /// The system clock and fresh metrics (what the binary runs with).
    pub fn system() -> Env {
        Env::with_time(Time::system())
    }

    /// An injected clock (e.g. a [`TestClock`]) and fresh metrics.
    pub fn with_time(time: impl Into<Time>) -> Env {
        Env {
            time: time.into(),
            metrics: Metrics::new(),
            backend: None,
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains: stops accepting, lets publishes
/// in flight get their acks, closes every WebSocket with 1001, finishes commits, closes the store.
/// Returns after `Config::shutdown_timeout` at the latest, even if connections hang.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    env: Env,
) -> Result<(), ServerError> {
    run_with_ready(config, listener, shutdown, env, |_| {}).await
}

/// [`run`], calling `ready` once the store is open and the server accepts connections.
pub async fn run_with_ready(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    env: Env,
    ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    let Env {
        time,
        metrics,
        backend,
    } = env;
    let (store, commit_point): (Arc<dyn Store>, _) = match (backend, &config.store) {
        (Some(b), _) => (b.store, Some(b.commit_point)),
        (None, StoreConfig::Sqlite { path, sync_full }) => (
            Arc::new(SqliteStore::open(
                path,
                *sync_full,
                config.max_commit_batch,
                metrics.clone(),
            )?),
            None,
        ),
        (None, StoreConfig::Memory) => (Arc::new(MemoryStore::new()), None),
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let shutdown_timeout = config.shutdown_timeout;
    let rooms_stored = store.room_count().await?;
    let mut shared = Shared::new(config, store.clone(), metrics.clone(), time);
    shared.commit_point = commit_point;
    let shared = Arc::new(shared);
    shared
        .rooms_stored
        .store(rooms_stored, std::sync::atomic::Ordering::Relaxed);
    let shared_for_retention = shared.clone();
    let registry = room::Registry::new(shared.clone());
    if let Some(inbox) = shared.commit_point.as_ref().and_then(|p| p.take_inbox()) {
        tokio::spawn(room::serve_inbox(inbox, registry.clone()));
    }
    let token = CancellationToken::new();
    let app = Arc::new(gateway::App {
        shared: shared.clone(),
        registry: registry.clone(),
        shutdown: token.clone(),
        conns: TaskTracker::new(),
        next_conn_id: AtomicU64::new(1),
    });
    let sweeper = tokio::spawn(retention::run(shared_for_retention, token.clone()));
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let cfg = &shared.config;
    let limits = edge::ConnLimits::new(
        cfg.conn_limit(),
        cfg.max_conns_per_ip,
        metrics.tcp_connections.clone(),
    );
    let hard = CancellationToken::new();
    let http_conns = TaskTracker::new();
    let edge_for = |router| {
        Arc::new(edge::Edge {
            router,
            limits: limits.clone(),
            metrics: metrics.clone(),
            header_timeout: cfg.http_header_timeout,
            write_timeout: cfg.write_timeout,
            max_conns_per_ip: cfg.max_conns_per_ip,
            shutdown: token.clone(),
            hard: hard.clone(),
            tasks: http_conns.clone(),
        })
    };
    let ready_at = Ready {
        addr: listener.local_addr()?,
        metrics_addr: match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = ?ready_at.metrics_addr, "serving /metrics");
        tokio::spawn(edge_for(gateway::metrics_router(app.clone())).serve(l))
    });
    let main = edge_for(gateway::router(app.clone()));
    tracing::info!(addr = %ready_at.addr, "serving");
    ready(ready_at);
    main.serve(listener).await;
    token.cancel();
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    let drain = async {
        http_conns.close();
        app.conns.close();
        http_conns.wait().await;
        app.conns.wait().await;
        let _ = sweeper.await;
        registry.close().await;
        store.close().await;
    };
    if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
        hard.cancel();
        tracing::error!(
            timeout = ?shutdown_timeout,
            "shutdown deadline passed: exiting with connections or commits still open"
        );
        return Ok(());
    }
    tracing::info!("stopped");
    Ok(())
}
