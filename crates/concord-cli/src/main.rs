//! The `concord` binary: `serve` (the default), `bench`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use concord_server::{Config, StoreConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Concord: a real-time collaboration and event-sync server.
///
/// Without a subcommand, `concord` runs `serve` with its defaults: embedded mode, listening on
/// 127.0.0.1:7400, with a SQLite database under ./concord-data.
#[derive(Parser)]
#[command(name = "concord", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket clients and the HTTP API (embedded mode: one process, SQLite).
    Serve(Box<ServeArgs>),
    /// Run an open-loop load benchmark against a running server.
    Bench(concord_bench::BenchArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 10s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    }
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONCORD_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Directory of the embedded SQLite database (created if missing).
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./concord-data")]
    data_dir: PathBuf,
    /// Keep everything in memory instead (nothing survives a restart; for experiments only).
    #[arg(long, env = "CONCORD_MEMORY")]
    memory: bool,
    /// SQLite durability: `full` fsyncs every group commit (survives power loss); `normal`
    /// survives a process crash (kill -9) but may lose the last commits on power loss.
    #[arg(long, env = "CONCORD_SQLITE_SYNC", default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// This node's id (in `welcome.node` and every hlc timestamp).
    #[arg(long, env = "CONCORD_NODE_ID", default_value = "n1")]
    node_id: String,
    /// Limit: largest WebSocket message in bytes (larger → close 1009).
    #[arg(long, env = "CONCORD_MAX_FRAME_BYTES", default_value_t = 1024 * 1024)]
    max_frame_bytes: usize,
    /// Limit: largest event `data` in bytes (larger → error too_large).
    #[arg(long, env = "CONCORD_MAX_DATA_BYTES", default_value_t = 64 * 1024)]
    max_data_bytes: usize,
    /// Limit: bytes queued to one connection before it is closed with 4008 (lagging).
    #[arg(long, env = "CONCORD_MAX_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_queue_bytes: usize,
    /// Limit: publishes one connection may have awaiting acks (beyond it reading pauses).
    #[arg(long, env = "CONCORD_MAX_INFLIGHT", default_value_t = 1024)]
    max_inflight: usize,
    /// Limit: rooms one connection may join.
    #[arg(long, env = "CONCORD_MAX_ROOMS_PER_CONN", default_value_t = 128)]
    max_rooms_per_conn: usize,
    /// Limit: most missed events replayed on a `since` rejoin (older → recovered:false).
    #[arg(long, env = "CONCORD_RECOVERY_WINDOW", default_value_t = 10_000)]
    recovery_window: u64,
    /// Limit: most events `history` may ask for on join.
    #[arg(long, env = "CONCORD_MAX_HISTORY", default_value_t = 1_000)]
    max_history: u64,
    /// Limit: largest catch-up in one `joined`, in bytes (a larger recovery becomes a reset).
    #[arg(long, env = "CONCORD_MAX_CATCH_UP_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_catch_up_bytes: usize,
    /// Limit: largest `limit` of GET /v1/rooms/{room}/events.
    #[arg(long, env = "CONCORD_MAX_PAGE", default_value_t = 1_000)]
    max_page: usize,
    /// Recent events each loaded room keeps in memory.
    #[arg(long, env = "CONCORD_ROOM_WINDOW", default_value_t = 1_024)]
    room_window: usize,
    /// Recent idempotency keys each loaded room keeps in memory.
    #[arg(long, env = "CONCORD_IDEMPOTENCY_CACHE", default_value_t = 4_096)]
    idempotency_cache: usize,
    /// Limit: most events written in one store transaction (group commit).
    #[arg(long, env = "CONCORD_MAX_COMMIT_BATCH", default_value_t = 4_096)]
    max_commit_batch: usize,
    /// WebSocket read/write buffer per connection, in bytes.
    #[arg(long, env = "CONCORD_WS_BUFFER_BYTES", default_value_t = 4 * 1024)]
    ws_buffer_bytes: usize,
    /// Close connections that send no hello within this time (1008).
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Interval of server pings.
    #[arg(long, env = "CONCORD_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Close connections silent (no frame, no pong) for this long.
    #[arg(long, env = "CONCORD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Unload rooms without members after this long.
    #[arg(long, env = "CONCORD_ROOM_IDLE_UNLOAD", default_value = "30s", value_parser = parse_duration)]
    room_idle_unload: Duration,
    /// On shutdown, time given to publishes in flight before sockets close with 1001.
    #[arg(long, env = "CONCORD_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Log format.
    #[arg(long, env = "CONCORD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// `serve` with no flags: defaults, overridden by `CONCORD_*` environment variables.
#[derive(Parser)]
struct ServeDefaults {
    #[command(flatten)]
    args: ServeArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeDefaults::parse_from(["concord"]).args
    }
}

impl ServeArgs {
    fn config(&self) -> Config {
        let store = if self.memory {
            StoreConfig::Memory
        } else {
            StoreConfig::Sqlite {
                path: self.data_dir.join("concord.db"),
                sync_full: self.sqlite_sync == "full",
            }
        };
        Config {
            store,
            node_id: self.node_id.clone(),
            max_frame_bytes: self.max_frame_bytes,
            max_data_bytes: self.max_data_bytes,
            max_queue_bytes: self.max_queue_bytes,
            max_inflight_per_conn: self.max_inflight.max(1),
            max_rooms_per_conn: self.max_rooms_per_conn,
            recovery_window: self.recovery_window,
            max_history: self.max_history,
            max_catch_up_bytes: self.max_catch_up_bytes,
            room_window: self.room_window,
            idempotency_cache: self.idempotency_cache.max(1),
            max_page: self.max_page.max(1),
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            room_idle_unload: self.room_idle_unload,
            shutdown_grace: self.shutdown_grace,
            max_commit_batch: self.max_commit_batch.max(1),
            ws_buffer_bytes: self.ws_buffer_bytes.max(256),
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: draining");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args.log_format);
    // Every connection is a file descriptor: use the hard open-file limit, not the soft one.
    match concord_bench::raise_nofile_limit() {
        Ok((soft, _)) => tracing::debug!(open_files = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let config = args.config();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts (and the crash tests) can wait for.
    println!("concord listening on {addr}");
    if addr.ip().is_loopback() {
        tracing::info!(%addr, data_dir = %args.data_dir.display(), "embedded mode");
    } else {
        tracing::warn!(%addr, "listening beyond loopback without authentication");
    }
    concord_server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        None => runtime.block_on(serve(ServeArgs::default())),
        Some(Command::Serve(args)) => runtime.block_on(serve(*args)),
        Some(Command::Bench(args)) => runtime.block_on(concord_bench::run(args)),
    }
}
