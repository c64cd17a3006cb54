//! The `concord` binary: `serve` (the default), `bench`, `repair`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use concord_core::RoomKind;
use concord_server::auth::{AdminKey, AuthMode, JwtKeys, JwtVerifier};
use concord_server::config::{Rate, RetentionPolicy};
use concord_server::room::doc::DocSchema;
use concord_server::{Config, StoreConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Rebuild a doc room's document from its op log and save it as a fresh snapshot (for a
    /// room whose document cannot be loaded). Run it with the server stopped.
    Repair(RepairArgs),
}

#[derive(Args)]
struct RepairArgs {
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./concord-data")]
    data_dir: PathBuf,
    /// The doc room to repair.
    #[arg(long)]
    room: String,
}

/// `concord repair`: replays the room's whole op log (leaving out the lists that do not decode
/// or apply), saves the result as a snapshot at the room's head, and says what it did.
async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    init_logs("text");
    let room = concord_core::RoomId::new(&args.room)
        .map_err(|e| anyhow::anyhow!("bad room name {:?}: {e}", args.room))?;
    let path = args.data_dir.join("concord.db");
    if !path.exists() {
        anyhow::bail!("no database at {}", path.display());
    }
    let store = concord_server::store::SqliteStore::open(
        &path,
        true,
        64,
        concord_server::metrics::Metrics::new(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let result = concord_server::room::doc::repair(&store, &room).await;
    concord_server::store::Store::close(&store).await;
    let done = result.map_err(|e| anyhow::anyhow!("repairing {room}: {e}"))?;
    println!(
        "repaired {room}: state rebuilt up to seq {} ({} bytes), {} op list(s) left out",
        done.seq, done.bytes, done.skipped
    );
    Ok(())
}

/// `PER_SEC[:BURST]`, e.g. `1000:2000`; `0` disables the limit.
fn parse_rate(s: &str) -> Result<Rate, String> {
    let (rate, burst) = s.split_once(':').unwrap_or((s, ""));
    let per_sec: u32 = rate
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {s:?} (PER_SEC[:BURST], e.g. 1000:2000)"))?;
    let burst: u32 = if burst.is_empty() {
        per_sec.saturating_mul(2)
    } else {
        burst
            .trim()
            .parse()
            .map_err(|_| format!("bad burst in {s:?}"))?
    };
    Ok(Rate::new(per_sec, burst))
}

/// `PATTERN=KIND,…` (`--room-kinds`).
#[derive(Clone, Debug, Default)]
struct RoomKinds(Vec<(String, RoomKind)>);

fn parse_room_kinds(s: &str) -> Result<RoomKinds, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (pattern, kind) = item
            .split_once('=')
            .ok_or_else(|| format!("bad room kind {item:?} (PATTERN=stream|doc)"))?;
        let kind = RoomKind::parse(kind.trim()).map_err(|e| format!("{item:?}: {e}"))?;
        out.push((pattern.trim().to_string(), kind));
    }
    Ok(RoomKinds(out))
}

/// `PATTERN=max_events:N,max_age:AGE;…` (`--retention`).
#[derive(Clone, Debug, Default)]
struct Retention(Vec<RetentionPolicy>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    let mut out = Vec::new();
    for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let (pattern, rules) = item
            .split_once('=')
            .ok_or_else(|| format!("bad retention {item:?} (PATTERN=max_events:N,max_age:AGE)"))?;
        let mut policy = RetentionPolicy {
            pattern: pattern.trim().to_string(),
            max_events: None,
            max_age: None,
        };
        for rule in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match rule.split_once(':') {
                Some(("max_events", n)) => {
                    let n: u64 = n
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad max_events in {item:?}"))?;
                    policy.max_events = Some(n.max(1));
                }
                Some(("max_age", age)) => policy.max_age = Some(parse_age(age)?),
                _ => {
                    return Err(format!(
                        "bad retention rule {rule:?} (max_events:N or max_age:AGE)"
                    ))
                }
            }
        }
        out.push(policy);
    }
    Ok(Retention(out))
}

/// A duration that may also be written in hours (`h`) or days (`d`).
fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hours = |n: &str, per: u64| {
        n.parse::<u64>()
            .map(|n| Duration::from_secs(n * per))
            .map_err(|_| format!("bad age {s:?}"))
    };
    if let Some(n) = s.strip_suffix('d') {
        hours(n, 86_400)
    } else if let Some(n) = s.strip_suffix('h') {
        hours(n, 3_600)
    } else {
        parse_duration(s)
    }
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
    /// Limit: bytes queued to one connection before it is closed with 4008 (lagging); each
    /// queued frame counts its payload + 64 bytes.
    #[arg(long, env = "CONCORD_MAX_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_queue_bytes: usize,
    /// Limit: a socket write or flush that does not complete within this time closes the
    /// connection (a peer that does not read).
    #[arg(long, env = "CONCORD_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    write_timeout: Duration,
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
    /// Bytes of recent events each loaded room keeps in memory at most.
    #[arg(long, env = "CONCORD_ROOM_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    room_window_bytes: usize,
    /// Recent idempotency keys each loaded room keeps in memory.
    #[arg(long, env = "CONCORD_IDEMPOTENCY_CACHE", default_value_t = 32_768)]
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
    /// Authentication of clients: `none` (development only; allowed only when listening on a
    /// loopback address) or `jwt` (HS256 with --jwt-secret-file, or RS256/ES256 with --jwt-public-key).
    #[arg(long, env = "CONCORD_AUTH", default_value = "none", value_parser = ["none", "jwt"])]
    auth: String,
    /// File holding the HS256 shared secret (at least 16 bytes; a text file has its surrounding
    /// whitespace trimmed, a binary file is used byte for byte).
    #[arg(long, env = "CONCORD_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key.
    #[arg(long, env = "CONCORD_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    #[arg(long, env = "CONCORD_JWT_LEEWAY", default_value_t = 5)]
    jwt_leeway: u64,
    /// File holding a key that grants every right over HTTP (`Authorization: Bearer <key>`; at
    /// least 16 bytes, surrounding whitespace trimmed).
    #[arg(long, env = "CONCORD_ADMIN_KEY_FILE")]
    admin_key_file: Option<PathBuf>,
    /// After a token expires, time to send `auth` with a fresh one before close 1008.
    #[arg(long, env = "CONCORD_AUTH_GRACE", default_value = "10s", value_parser = parse_duration)]
    auth_grace: Duration,
    /// Presence of a room is coalesced and sent at most this often.
    #[arg(long, env = "CONCORD_PRESENCE_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    presence_interval: Duration,
    /// Limit: largest presence `data` in bytes (larger → too_large).
    #[arg(long, env = "CONCORD_MAX_PRESENCE_BYTES", default_value_t = 4 * 1024)]
    max_presence_bytes: usize,
    /// Limit: member connections per room.
    #[arg(long, env = "CONCORD_MAX_MEMBERS_PER_ROOM", default_value_t = 10_000)]
    max_members_per_room: usize,
    /// Limit: TCP connections (HTTP and WebSocket) per client IP address (beyond it a request
    /// gets 429 and its connection is closed).
    #[arg(long, env = "CONCORD_MAX_CONNS_PER_IP", default_value_t = 10_000)]
    max_conns_per_ip: usize,
    /// Limit: TCP connections open at once (at it, the longest-idle HTTP connection is closed
    /// to make room, else the new one); 0 = the open-file limit minus a reserve for the store
    /// and logs (max(64, limit/8)).
    #[arg(long, env = "CONCORD_MAX_CONNS", default_value_t = 0)]
    max_conns: usize,
    /// Timeout: a request's head must arrive within this time (slowloris); also the idle
    /// timeout of keep-alive HTTP connections.
    #[arg(long, env = "CONCORD_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    http_header_timeout: Duration,
    /// Timeout: a request body must arrive in full within this time (else 408, connection closed).
    #[arg(long, env = "CONCORD_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    http_body_timeout: Duration,
    /// Limit: largest page of GET /v1/rooms/{room}/events in bytes of events (at least one event).
    #[arg(long, env = "CONCORD_MAX_PAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_page_bytes: usize,
    /// On shutdown, exit after this long even if connections or commits hang.
    #[arg(long, env = "CONCORD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// Serve /metrics on this separate address only (the main port then answers 404 there).
    /// Without it, /metrics on the main port needs the admin key (or an admin token) when
    /// --auth jwt or --admin-key-file is set.
    #[arg(long, env = "CONCORD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Origins (`https://app.example.com`, comma-separated, or `*`) whose pages may open a
    /// WebSocket; default: only pages of the host the request was sent to. With --auth none
    /// their hosts are also accepted in `Host` (besides loopback names).
    #[arg(long, env = "CONCORD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Limit: publishes per connection, PER_SEC[:BURST] (0 = unlimited).
    #[arg(long, env = "CONCORD_RATE_PUBLISH_PER_CONN", default_value = "1000:2000", value_parser = parse_rate)]
    rate_publish_per_conn: Rate,
    /// Limit: publishes per room from all senders, PER_SEC[:BURST] (0 = unlimited).
    #[arg(long, env = "CONCORD_RATE_PUBLISH_PER_ROOM", default_value = "50000:100000", value_parser = parse_rate)]
    rate_publish_per_room: Rate,
    /// Limit: presence updates per connection, PER_SEC[:BURST] (0 = unlimited).
    #[arg(long, env = "CONCORD_RATE_PRESENCE_PER_CONN", default_value = "30:60", value_parser = parse_rate)]
    rate_presence_per_conn: Rate,
    /// Limit: `drift` reports per connection, PER_SEC[:BURST] (0 = unlimited).
    #[arg(long, env = "CONCORD_RATE_DRIFT_PER_CONN", default_value = "1:5", value_parser = parse_rate)]
    rate_drift_per_conn: Rate,
    /// Limit: rooms one connection may create, PER_SEC[:BURST] (0 = unlimited; joins of
    /// existing rooms do not count).
    #[arg(long, env = "CONCORD_RATE_ROOM_CREATE_PER_CONN", default_value = "10:20", value_parser = parse_rate)]
    rate_room_create_per_conn: Rate,
    /// Limit: rooms one user (JWT `sub`) may create, PER_SEC[:BURST] (0 = unlimited).
    #[arg(long, env = "CONCORD_RATE_ROOM_CREATE_PER_USER", default_value = "50:100", value_parser = parse_rate)]
    rate_room_create_per_user: Rate,
    /// Limit: most rooms in the store (creating one more gets `unavailable`).
    #[arg(long, env = "CONCORD_MAX_ROOMS", default_value_t = 1_000_000)]
    max_rooms: u64,
    /// Room kinds by room-name pattern, e.g. `chat:*=stream,doc:*=doc` (first match wins): a
    /// join with another kind gets `kind_mismatch`; a join without a kind creates the mapped kind.
    #[arg(long, env = "CONCORD_ROOM_KINDS", default_value = "", value_parser = parse_room_kinds)]
    room_kinds: RoomKinds,
    /// Retention by room-name pattern, `PATTERN=max_events:N,max_age:AGE` with `;` between
    /// policies (first match wins), e.g. `chat:*=max_events:100000,max_age:30d`; AGE in ms, s,
    /// m, h or d. Older events are deleted (never a room's last one); doc rooms keep their
    /// latest snapshot and rebase window. Rooms matching no pattern keep everything.
    #[arg(long, env = "CONCORD_RETENTION", default_value = "", value_parser = parse_retention)]
    retention: Retention,
    /// How often the retention sweep runs (0 = never).
    #[arg(long, env = "CONCORD_RETENTION_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    retention_interval: Duration,
    /// Recent op lists a doc room keeps to rebase stale ops (an older base gets `conflict`).
    #[arg(long, env = "CONCORD_DOC_WINDOW", default_value_t = 10_000)]
    doc_window: usize,
    /// Doc events carry the state hash every this many seqs (`joined` always does).
    #[arg(long, env = "CONCORD_DOC_HASH_EVERY", default_value_t = 32)]
    doc_hash_every: u64,
    /// A doc room saves a snapshot every this many ops (and when it unloads).
    #[arg(long, env = "CONCORD_DOC_SNAPSHOT_EVERY", default_value_t = 1_000)]
    doc_snapshot_every: u64,
    /// Limit: most ops in one op list.
    #[arg(long, env = "CONCORD_DOC_MAX_OPS", default_value_t = 1_000)]
    doc_max_ops: usize,
    /// Limit: deepest nesting of a doc's document; a list that would go deeper → rejected.
    #[arg(long, env = "CONCORD_DOC_MAX_DEPTH", default_value_t = 64)]
    doc_max_depth: usize,
    /// Limit: largest doc, in bytes of canonical JSON; a list that grows it beyond → rejected.
    #[arg(long, env = "CONCORD_DOC_MAX_BYTES", default_value_t = 1024 * 1024)]
    doc_max_bytes: usize,
    /// Limit: rebase work of one op list (ops × ops committed since its base) → conflict.
    #[arg(long, env = "CONCORD_DOC_MAX_REBASE_WORK", default_value_t = 50_000)]
    doc_max_rebase_work: u64,
    /// Limit: bytes of strings the text ops of one op list may edit → too_large.
    #[arg(long, env = "CONCORD_DOC_MAX_APPLY_WORK", default_value_t = 16 * 1024 * 1024)]
    doc_max_apply_work: u64,
    /// Snapshots kept per doc room (the newest ones).
    #[arg(long, env = "CONCORD_DOC_SNAPSHOTS_KEPT", default_value_t = 2)]
    doc_snapshots_kept: usize,
    /// JSON file mapping room-name patterns to JSON Schemas: `{"doc:tasks:*": {…schema…}}`.
    /// Every state of a matching doc room must validate; an op list that would break it gets
    /// `rejected`.
    #[arg(long, env = "CONCORD_SCHEMA_FILE")]
    schema_file: Option<PathBuf>,
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

/// A secret from a file, as bytes: a text file (valid UTF-8) has its surrounding whitespace
/// trimmed (`echo secret > file` works); any other file is taken byte for byte.
fn read_secret(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    Ok(secret_bytes(bytes))
}

fn secret_bytes(bytes: Vec<u8>) -> Vec<u8> {
    match std::str::from_utf8(&bytes) {
        Ok(text) => text.trim().as_bytes().to_vec(),
        Err(_) => bytes,
    }
}

/// Reads `{"pattern": schema, …}` and compiles every schema.
fn load_schemas(path: &PathBuf) -> anyhow::Result<Vec<Arc<DocSchema>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading schema file {}", path.display()))?;
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| {
            format!(
                "{} must be a JSON object of pattern → schema",
                path.display()
            )
        })?;
    all.into_iter()
        .map(|(pattern, schema)| {
            let validator = jsonschema::validator_for(&schema).map_err(|e| {
                anyhow::anyhow!("schema for {pattern:?} in {}: {e}", path.display())
            })?;
            Ok(Arc::new(DocSchema { pattern, validator }))
        })
        .collect()
}

impl ServeArgs {
    fn auth_mode(&self) -> anyhow::Result<AuthMode> {
        match self.auth.as_str() {
            "jwt" => {
                let keys = match (&self.jwt_secret_file, &self.jwt_public_key) {
                    (Some(f), None) => JwtKeys::Secret(read_secret(f, "JWT secret")?),
                    (None, Some(f)) => JwtKeys::PublicPem(
                        std::fs::read(f)
                            .with_context(|| format!("reading public key {}", f.display()))?,
                    ),
                    _ => anyhow::bail!(
                        "--auth jwt needs exactly one of --jwt-secret-file or --jwt-public-key"
                    ),
                };
                Ok(AuthMode::Jwt(
                    JwtVerifier::new(keys, self.jwt_leeway).map_err(anyhow::Error::msg)?,
                ))
            }
            _ => {
                if !self.listen.ip().is_loopback() {
                    anyhow::bail!(
                        "--auth none is only allowed on a loopback address; use --auth jwt to listen on {}",
                        self.listen
                    );
                }
                Ok(AuthMode::None)
            }
        }
    }

    /// `--max-conns`, or (0) the open-file limit minus a reserve for the store, logs and the
    /// listeners, so that connections can never take the last descriptors.
    fn max_conns_or_auto(&self) -> usize {
        if self.max_conns > 0 {
            return self.max_conns;
        }
        match concord_bench::raise_nofile_limit() {
            Ok((soft, _)) => {
                let soft = usize::try_from(soft).unwrap_or(usize::MAX);
                soft.saturating_sub((soft / 8).max(64)).max(1)
            }
            Err(_) => Config::default().max_conns,
        }
    }

    fn config(&self) -> anyhow::Result<Config> {
        let store = if self.memory {
            StoreConfig::Memory
        } else {
            StoreConfig::Sqlite {
                path: self.data_dir.join("concord.db"),
                sync_full: self.sqlite_sync == "full",
            }
        };
        Ok(Config {
            store,
            node_id: self.node_id.clone(),
            max_frame_bytes: self.max_frame_bytes,
            max_data_bytes: self.max_data_bytes,
            max_queue_bytes: self.max_queue_bytes,
            write_timeout: self.write_timeout.max(Duration::from_millis(1)),
            max_inflight_per_conn: self.max_inflight.max(1),
            max_rooms_per_conn: self.max_rooms_per_conn,
            recovery_window: self.recovery_window,
            max_history: self.max_history,
            max_catch_up_bytes: self.max_catch_up_bytes,
            room_window: self.room_window,
            room_window_bytes: self.room_window_bytes,
            idempotency_cache: self.idempotency_cache.max(1),
            max_page: self.max_page.max(1),
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            room_idle_unload: self.room_idle_unload,
            shutdown_grace: self.shutdown_grace,
            max_commit_batch: self.max_commit_batch.max(1),
            ws_buffer_bytes: self.ws_buffer_bytes.max(256),
            auth: self.auth_mode()?,
            admin_key: match &self.admin_key_file {
                Some(f) => Some(
                    AdminKey::new(read_secret(f, "admin key")?)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                ),
                None => None,
            },
            auth_grace: self.auth_grace,
            presence_interval: self.presence_interval,
            max_presence_bytes: self.max_presence_bytes,
            max_members_per_room: self.max_members_per_room,
            max_conns_per_ip: self.max_conns_per_ip,
            max_conns: self.max_conns_or_auto(),
            http_header_timeout: self.http_header_timeout,
            http_body_timeout: self.http_body_timeout,
            max_page_bytes: self.max_page_bytes.max(1),
            shutdown_timeout: self.shutdown_timeout,
            metrics_listen: self.metrics_listen,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            rate_publish_per_conn: self.rate_publish_per_conn,
            rate_publish_per_room: self.rate_publish_per_room,
            rate_presence_per_conn: self.rate_presence_per_conn,
            rate_drift_per_conn: self.rate_drift_per_conn,
            rate_room_create_per_conn: self.rate_room_create_per_conn,
            rate_room_create_per_user: self.rate_room_create_per_user,
            max_rooms: self.max_rooms,
            room_kinds: self.room_kinds.0.clone(),
            retention: self.retention.0.clone(),
            retention_interval: self.retention_interval,
            doc_window: self.doc_window.max(1),
            doc_hash_every: self.doc_hash_every.max(1),
            doc_snapshot_every: self.doc_snapshot_every.max(1),
            doc_max_ops: self.doc_max_ops.max(1),
            doc_max_depth: self.doc_max_depth.max(1),
            doc_max_bytes: self.doc_max_bytes.max(2),
            doc_max_rebase_work: self.doc_max_rebase_work.max(1),
            doc_max_apply_work: self.doc_max_apply_work.max(1),
            doc_snapshots_kept: self.doc_snapshots_kept.max(1),
            doc_schemas: match &self.schema_file {
                Some(f) => load_schemas(f)?,
                None => Vec::new(),
            },
        })
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

/// Resolves at the first SIGTERM or ctrl-c (graceful shutdown, bounded by
/// --shutdown-timeout); a second one exits the process at once with status 1.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let (first, rx) = tokio::sync::oneshot::channel();
    let mut term = terminate_signals();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested: draining (send the signal again to exit at once)");
        let _ = first.send(());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::error!("second shutdown signal: exiting at once");
        std::process::exit(1);
    });
    async move {
        let _ = rx.await;
    }
}

/// SIGTERM as a stream (never fires where there is no SIGTERM, or it cannot be installed).
struct Terminate(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Terminate {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

fn terminate_signals() -> Terminate {
    #[cfg(unix)]
    return Terminate(
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
    );
    #[cfg(not(unix))]
    Terminate()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args.log_format);
    // Every connection is a file descriptor: use the hard open-file limit, not the soft one.
    match concord_bench::raise_nofile_limit() {
        Ok((soft, _)) => tracing::debug!(open_files = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let config = args.config()?;
    tracing::info!(max_conns = config.max_conns, "connection limit");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    if !config.auth.enabled() {
        tracing::warn!(
            "authentication is off (--auth none): every client may do everything; development only"
        );
    }
    let data_dir = args.data_dir.display().to_string();
    let env = concord_server::Env::system();
    concord_server::run_with_ready(config, listener, shutdown_signal(), env, move |ready| {
        tracing::info!(addr = %ready.addr, data_dir, "embedded mode");
        if let Some(m) = ready.metrics_addr {
            println!("concord metrics listening on {m}");
        }
        // One line on stdout that scripts (and the tests) wait for: printed once the store is
        // open and connections are served.
        println!("concord listening on {}", ready.addr);
    })
    .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = match cli.command {
        None => runtime.block_on(serve(ServeArgs::default())),
        Some(Command::Serve(args)) => runtime.block_on(serve(*args)),
        Some(Command::Bench(args)) => runtime.block_on(concord_bench::run(args)),
        Some(Command::Repair(args)) => runtime.block_on(repair(args)),
    };
    // After a shutdown deadline, tasks may still hang: do not wait for them again.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod secret_tests {
    use super::secret_bytes;

    #[test]
    fn text_secrets_are_trimmed_and_binary_secrets_kept_byte_for_byte() {
        assert_eq!(
            secret_bytes(b"  s3cret-of-16-bytes\n".to_vec()),
            b"s3cret-of-16-bytes"
        );
        let binary = vec![0xff, b' ', 0x00, b'\n', 0x80, 0x20];
        assert_eq!(secret_bytes(binary.clone()), binary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_room_kinds_parse() {
        let r = parse_retention("chat:*=max_events:100000,max_age:30d; log:*=max_age:12h").unwrap();
        assert_eq!(r.0.len(), 2);
        assert_eq!(
            (r.0[0].pattern.as_str(), r.0[0].max_events, r.0[0].max_age),
            (
                "chat:*",
                Some(100_000),
                Some(Duration::from_secs(30 * 86_400))
            )
        );
        assert_eq!(
            (r.0[1].max_events, r.0[1].max_age),
            (None, Some(Duration::from_secs(12 * 3_600)))
        );
        assert!(parse_retention("").unwrap().0.is_empty());
        assert!(parse_retention("chat:*").is_err());
        assert!(parse_retention("chat:*=max_rows:3").is_err());
        assert!(parse_retention("chat:*=max_age:3w").is_err());
        let k = parse_room_kinds("chat:*=stream, doc:*=doc").unwrap();
        assert_eq!(
            k.0,
            [
                ("chat:*".to_string(), RoomKind::Stream),
                ("doc:*".to_string(), RoomKind::Doc)
            ]
        );
        assert!(parse_room_kinds("chat:*=table").is_err());
        assert!(parse_room_kinds("").unwrap().0.is_empty());
    }
}
