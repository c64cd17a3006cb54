//! Server configuration: every limit and timing knob, with production defaults. Each setting
//! is declared once, here: its field (doc comment = help text), its flag and `CONCORD_*`
//! environment variable (clap, with the `cli` feature), its file key (serde) and its default
//! (`impl Default`).

pub mod duration;
pub mod syntax;

use crate::auth::AuthMode;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A token-bucket rate: `per_sec` sustained with bursts up to `burst`. `per_sec == 0` disables it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 0,
    };
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Rate { per_sec, burst }
    }
}

/// How long the events of rooms matching `pattern` are kept (`None`: no bound of that kind).
/// Older events are deleted by the retention sweep, except each room's head event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Room-name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Most events kept per room.
    pub max_events: Option<u64>,
    /// Events older than this (by their hlc) are deleted.
    pub max_age: Option<Duration>,
}

/// Room kinds by room-name pattern, in order. A flag takes the whole list as one value
/// (`chat:*=stream,doc:*=doc`; empty: none), which this alias tells clap.
pub type RoomKinds = Vec<(String, concord_core::RoomKind)>;

/// Retention policies, in order. A flag takes the whole list as one value, `;` between policies
/// (empty: none), which this alias tells clap.
pub type RetentionPolicies = Vec<RetentionPolicy>;

/// Whether `GET /` serves the web demo (`--demo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Demo {
    /// Served when authentication is off (`--auth none`), not with JWT auth.
    #[default]
    Auto,
    /// Always served (with JWT auth the page reads its token from `?token=`).
    On,
    /// Never served.
    Off,
}

/// Where committed events are kept.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// A SQLite database file (embedded mode). `sync_full` fsyncs every group commit.
    Sqlite { path: PathBuf, sync_full: bool },
    /// In-process memory only (tests of the logic above the store; nothing survives a restart).
    Memory,
}

/// Everything `run` needs. The `concord` binary reads it from flags, `CONCORD_*` environment
/// variables and a TOML file (with the `cli` feature, each field's flag and variable are derived
/// from its declaration here); `run` reads nothing from the environment.
///
/// To add a setting: add the field here (its doc comment is its help text; name its flag, its
/// variable and its unit as the others do) and its default in `impl Default`. The binary's
/// tests check that every field has a flag and a variable and that the binary's defaults are
/// these.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Config {
    /// Where committed events are kept (the binary builds it from `--data-dir`, `--memory` and
    /// `--sqlite-sync`).
    #[serde(skip)]
    #[cfg_attr(feature = "cli", arg(skip = StoreConfig::Memory))]
    pub store: StoreConfig,
    /// This node's id (in `welcome.node` and every hlc timestamp it issues).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_NODE_ID", value_name = "NAME")
    )]
    pub node_id: String,
    /// Limit: largest WebSocket message, in bytes (larger → close 1009); also the largest HTTP
    /// request body (→ 413).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_FRAME_BYTES", value_name = "BYTES")
    )]
    pub max_frame_bytes: usize,
    /// Limit: largest event `data`, in bytes of JSON (larger → error too_large).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_DATA_BYTES", value_name = "BYTES")
    )]
    pub max_data_bytes: usize,
    /// Limit: bytes queued to one connection before it is closed with 4008 (lagging); each queued
    /// frame counts its payload + 64 bytes. Its queued frames are discarded (the client recovers
    /// with `since`).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_QUEUE_BYTES", value_name = "BYTES")
    )]
    pub max_queue_bytes: usize,
    /// Limit: a write to a client socket (WebSocket frames and HTTP responses alike) that makes
    /// no progress for this long closes the connection (a peer that does not read).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_WRITE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub write_timeout: Duration,
    /// Limit: publishes one connection may have awaiting their ack; beyond it the server stops
    /// reading that connection's frames until acks go out (backpressure).
    #[serde(rename = "max_inflight")]
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "max_inflight",
            long = "max-inflight",
            env = "CONCORD_MAX_INFLIGHT",
            value_name = "N"
        )
    )]
    pub max_inflight_per_conn: usize,
    /// Limit: rooms one connection may be joined to at once.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_ROOMS_PER_CONN", value_name = "N")
    )]
    pub max_rooms_per_conn: usize,
    /// Limit: most missed events replayed on a `since` rejoin (older positions get
    /// recovered:false).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_RECOVERY_WINDOW", value_name = "EVENTS")
    )]
    pub recovery_window: u64,
    /// Limit: most events `history` may ask for on join.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_HISTORY", value_name = "EVENTS")
    )]
    pub max_history: u64,
    /// Limit: largest catch-up in one `joined`, in bytes of events: a recovery that needs more
    /// becomes recovered:false; `history` is trimmed to the newest events that fit.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_CATCH_UP_BYTES", value_name = "BYTES")
    )]
    pub max_catch_up_bytes: usize,
    /// Recent committed events each loaded room keeps in memory for joins and recovery.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_ROOM_WINDOW", value_name = "EVENTS")
    )]
    pub room_window: usize,
    /// Bytes of recent events (encoded frames) each loaded room keeps in memory at most; older
    /// events are read from the store when a join needs them.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_ROOM_WINDOW_BYTES", value_name = "BYTES")
    )]
    pub room_window_bytes: usize,
    /// Recent idempotency keys each loaded room keeps in memory (older ones are looked up in the
    /// store).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_IDEMPOTENCY_CACHE", value_name = "KEYS")
    )]
    pub idempotency_cache: usize,
    /// Limit: largest `limit` of GET /v1/rooms/{room}/events.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_PAGE", value_name = "EVENTS")
    )]
    pub max_page: usize,
    /// A connection that has not sent `hello` within this time is closed (1008).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub handshake_timeout: Duration,
    /// Interval of server WebSocket pings.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_PING_INTERVAL", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long is closed.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_IDLE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub idle_timeout: Duration,
    /// A room with no members and nothing in flight is unloaded after this long.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_ROOM_IDLE_UNLOAD", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub room_idle_unload: Duration,
    /// Distributed mode: the lease of a doc room's owner (the gateway that runs its OT),
    /// renewed every third of it; a gateway that stops renewing is replaced after this long.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_LEASE", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub doc_lease: Duration,
    /// On shutdown, how long connections get to receive their pending acks before close 1001.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub shutdown_grace: Duration,
    /// Limit: most events the store writer commits in one transaction (group commit).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_COMMIT_BATCH", value_name = "EVENTS")
    )]
    pub max_commit_batch: usize,
    /// WebSocket read and write buffer per connection, in bytes (small: they cost memory per
    /// connection).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_WS_BUFFER_BYTES", value_name = "BYTES")
    )]
    pub ws_buffer_bytes: usize,
    /// How clients and HTTP callers authenticate (the binary builds it from `--auth` and the
    /// `--jwt-*` settings).
    #[serde(skip)]
    #[cfg_attr(feature = "cli", arg(skip = AuthMode::None))]
    pub auth: AuthMode,
    /// A key that grants every right over HTTP (`Authorization: Bearer <key>`), for backends (the
    /// binary reads it from `--admin-key-file`).
    #[serde(skip)]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub admin_key: Option<crate::auth::AdminKey>,
    /// After a connection's token expires it may send `auth` with a fresh token within this
    /// time; then it is closed with 1008.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_AUTH_GRACE", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub auth_grace: Duration,
    /// Presence updates of a room are coalesced and sent at most this often.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_PRESENCE_INTERVAL", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub presence_interval: Duration,
    /// Limit: largest presence `data`, in bytes (larger → too_large).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_PRESENCE_BYTES", value_name = "BYTES")
    )]
    pub max_presence_bytes: usize,
    /// Limit: connections one room may have as members.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_MEMBERS_PER_ROOM", value_name = "N")
    )]
    pub max_members_per_room: usize,
    /// Limit: TCP connections (HTTP and WebSocket) from one IP address; beyond it a new
    /// connection's request gets 429 `rate_limited` and the connection is closed.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_CONNS_PER_IP", value_name = "N")
    )]
    pub max_conns_per_ip: usize,
    /// Limit: TCP connections open at once (HTTP and WebSocket), so file descriptors stay free
    /// for the store. At the limit the longest-idle HTTP connection is closed to make room for a
    /// new one; with none idle, the new one is closed at once. 0 = the open-file limit minus a
    /// reserve for the store and logs (max(64, limit/8)).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_CONNS", value_name = "N")
    )]
    pub max_conns: usize,
    /// Timeout: a request's head (request line and headers) must arrive within this time,
    /// counted from the accept or from the end of the previous response on a keep-alive
    /// connection: it is also the idle timeout of keep-alive connections (slowloris).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_HTTP_HEADER_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub http_header_timeout: Duration,
    /// Timeout: a request body must arrive in full within this time (else 408 and the
    /// connection closes).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_HTTP_BODY_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub http_body_timeout: Duration,
    /// Limit: largest page of GET /v1/rooms/{room}/events, in bytes of events: a page holds fewer
    /// than `limit` events (at least one) when they would not fit, with `more: true`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_PAGE_BYTES", value_name = "BYTES")
    )]
    pub max_page_bytes: usize,
    /// On shutdown, `run` returns after this long even if connections or the store still hang.
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub shutdown_timeout: Duration,
    /// Serve /metrics on this separate address only (then the main port answers 404 there).
    /// When unset, /metrics on the main port needs the admin right if auth or an admin key is on.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_METRICS_LISTEN", value_name = "ADDR")
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Origins (`https://app.example.com`, comma-separated, or `*`) whose pages may open a
    /// WebSocket; empty: only pages of the host the request was sent to. In no-auth mode their
    /// hosts are also accepted in `Host` (besides loopback names).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_ALLOWED_ORIGINS",
            value_name = "ORIGIN",
            value_delimiter = ','
        )
    )]
    pub allowed_origins: Vec<String>,
    /// Limit: publishes per connection (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_PUBLISH_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_publish_per_conn: Rate,
    /// Limit: publishes per room, all senders together, HTTP included (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_PUBLISH_PER_ROOM",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_publish_per_room: Rate,
    /// Presence updates per connection passed on to its rooms (0 = unlimited); updates beyond
    /// it are held, the latest per room replacing the one before, and passed on when the
    /// bucket refills.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_PRESENCE_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_presence_per_conn: Rate,
    /// Limit: presence updates per connection beyond which they are refused (`rate_limited`);
    /// 0 = unlimited.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_PRESENCE_FLOOD_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_presence_flood_per_conn: Rate,
    /// Limit: WebSocket data frames read per connection, checked before a frame is parsed
    /// (0 = unlimited). Beyond it the connection is not read until the rate admits its next
    /// frame (nothing is dropped), and it is told once a second with `rate_limited`.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_FRAMES_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_frames_per_conn: Rate,
    /// Limit: a connection held back by `rate_frames_per_conn` for this long without respite
    /// (no frame that found the rate free) is closed with 1008 (0 = never).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_FLOOD_CLOSE_AFTER", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub flood_close_after: Duration,
    /// Limit: `drift` reports per connection; each accepted one is logged once (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_DRIFT_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_drift_per_conn: Rate,
    /// Limit: rooms one connection may create; joins of existing rooms do not count (0 =
    /// unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_ROOM_CREATE_PER_CONN",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_room_create_per_conn: Rate,
    /// Limit: rooms one user (JWT `sub`) may create, all its connections and HTTP publishes
    /// together (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "CONCORD_RATE_ROOM_CREATE_PER_USER",
            value_name = "PER_SEC[:BURST]"
        )
    )]
    pub rate_room_create_per_user: Rate,
    /// Limit: most rooms the store holds; creating one more gets `unavailable`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_MAX_ROOMS", value_name = "ROOMS")
    )]
    pub max_rooms: u64,
    /// Room kinds by room-name pattern (`*` matches any run of characters), e.g.
    /// `chat:*=stream,doc:*=doc`, first match wins: a join with another kind gets
    /// `kind_mismatch`, a join without a kind creates the room with this one, and HTTP publishes
    /// into a pattern mapped to `doc` get `kind_mismatch`.
    #[serde(with = "syntax::room_kinds")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_ROOM_KINDS", value_name = "PATTERN=KIND,…", value_parser = syntax::parse_room_kinds)
    )]
    pub room_kinds: RoomKinds,
    /// Retention by room-name pattern, `PATTERN=max_events:N,max_age:AGE` with `;` between
    /// policies (first match wins), e.g. `chat:*=max_events:100000,max_age:30d`. Older events are
    /// deleted (never a room's last one); doc rooms keep their latest snapshot and rebase window.
    /// Rooms matching no pattern keep everything.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_RETENTION", value_name = "POLICY;…", value_parser = syntax::parse_retention)
    )]
    pub retention: RetentionPolicies,
    /// How often the retention sweep runs (0 = never).
    #[serde(with = "duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_RETENTION_INTERVAL", value_name = "DURATION", value_parser = duration::parse)
    )]
    pub retention_interval: Duration,
    /// Recent op lists a doc room keeps to rebase stale ops; an older `base` gets `conflict`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_WINDOW", value_name = "OP_LISTS")
    )]
    pub doc_window: usize,
    /// Doc events carry the state hash every this many seqs (and `joined` always does).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_HASH_EVERY", value_name = "SEQS")
    )]
    pub doc_hash_every: u64,
    /// A doc room saves a snapshot every this many ops (and when it unloads).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_SNAPSHOT_EVERY", value_name = "OPS")
    )]
    pub doc_snapshot_every: u64,
    /// Limit: most ops in one op list.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_MAX_OPS", value_name = "OPS")
    )]
    pub doc_max_ops: usize,
    /// Limit: deepest nesting of a doc room's document (containers, the root included). An op
    /// list that would put anything deeper (a `set`/`ins` whose path length plus value depth is
    /// larger) is refused with `rejected`; nothing of it is applied.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_MAX_DEPTH", value_name = "LEVELS")
    )]
    pub doc_max_depth: usize,
    /// Limit: largest document of a doc room, in bytes of canonical JSON (tracked op by op). An
    /// op list that grows the document beyond it is refused with `rejected`; lists that shrink it
    /// are always accepted. It also bounds every snapshot and `joined.state`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_MAX_BYTES", value_name = "BYTES")
    )]
    pub doc_max_bytes: usize,
    /// Limit: rebase work of one op list: ops in the list × ops committed since its `base`
    /// (checked before transforming), and the pairwise transformations actually done. Beyond it
    /// → `conflict` (the client resyncs). The default costs at most ~50 ms of CPU (about 1 µs
    /// per pair in the worst case measured, `cargo run -p concord-core --example rebase_cost`).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_MAX_REBASE_WORK", value_name = "OP_PAIRS")
    )]
    pub doc_max_rebase_work: u64,
    /// Limit: bytes of strings the `text` ops of one op list may edit, counted on the document
    /// before the list (each text op scans its string: ~2.4 ns per byte measured, so the default
    /// costs at most ~40 ms). Beyond it → `too_large` (send fewer text ops per list).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_MAX_APPLY_WORK", value_name = "BYTES")
    )]
    pub doc_max_apply_work: u64,
    /// Snapshots kept per doc room (the newest ones; older ones are deleted when a new one is
    /// saved). Reading an older state replays from the newest kept snapshot at or before it, or
    /// from seq 0.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DOC_SNAPSHOTS_KEPT", value_name = "SNAPSHOTS")
    )]
    pub doc_snapshots_kept: usize,
    /// The web demo at `/` (chat, tasks, shared text, cursors; built from `web/` and embedded):
    /// `auto` serves it only when authentication is off, `on` always, `off` never.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CONCORD_DEMO", value_name = "WHEN", value_enum)
    )]
    pub demo: Demo,
    /// JSON Schemas by room-name pattern; the first matching one validates every doc state (the
    /// binary reads them from `--schema-file`).
    #[serde(skip)]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub doc_schemas: Vec<std::sync::Arc<DocSchema>>,
}

/// A JSON Schema that every state of the rooms matching a pattern must satisfy.
pub struct DocSchema {
    pub pattern: String,
    pub validator: jsonschema::Validator,
}

impl std::fmt::Debug for DocSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocSchema({:?})", self.pattern)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: StoreConfig::Memory,
            node_id: "n1".to_string(),
            max_frame_bytes: 1024 * 1024,
            max_data_bytes: 64 * 1024,
            max_queue_bytes: 8 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_inflight_per_conn: 1024,
            max_rooms_per_conn: 128,
            recovery_window: 10_000,
            max_history: 1_000,
            max_catch_up_bytes: 8 * 1024 * 1024,
            room_window: 1_024,
            room_window_bytes: 1024 * 1024,
            idempotency_cache: 32_768,
            max_page: 1_000,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            room_idle_unload: Duration::from_secs(30),
            doc_lease: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            max_commit_batch: 4_096,
            ws_buffer_bytes: 4 * 1024,
            auth: AuthMode::None,
            admin_key: None,
            auth_grace: Duration::from_secs(10),
            presence_interval: Duration::from_millis(50),
            max_presence_bytes: 4 * 1024,
            max_members_per_room: 10_000,
            max_conns_per_ip: 10_000,
            max_conns: 0,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(30),
            max_page_bytes: 4 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            metrics_listen: None,
            allowed_origins: Vec::new(),
            rate_publish_per_conn: Rate::new(1_000, 1_000),
            rate_publish_per_room: Rate::new(50_000, 100_000),
            rate_presence_per_conn: Rate::new(30, 60),
            rate_presence_flood_per_conn: Rate::new(300, 600),
            rate_drift_per_conn: Rate::new(1, 5),
            rate_frames_per_conn: Rate::new(1_500, 1_500),
            flood_close_after: Duration::from_secs(10),
            rate_room_create_per_conn: Rate::new(10, 20),
            rate_room_create_per_user: Rate::new(50, 100),
            max_rooms: 1_000_000,
            room_kinds: Vec::new(),
            retention: Vec::new(),
            retention_interval: Duration::from_secs(60),
            doc_window: 10_000,
            doc_hash_every: 32,
            doc_snapshot_every: 1_000,
            doc_max_ops: 1_000,
            doc_max_depth: 64,
            doc_max_bytes: 1024 * 1024,
            doc_max_rebase_work: 50_000,
            doc_max_apply_work: 16 * 1024 * 1024,
            doc_snapshots_kept: 2,
            demo: Demo::Auto,
            doc_schemas: Vec::new(),
        }
    }
}

impl Config {
    /// The connection limit in force: `max_conns`, or (0) the open-file limit of this process
    /// minus a reserve for the store, logs and listeners (max(64, limit/8)), so that connections
    /// can never take the last descriptors; 10 000 where the limit cannot be read.
    pub fn conn_limit(&self) -> usize {
        if self.max_conns > 0 {
            return self.max_conns;
        }
        match nofile_soft_limit() {
            Some(soft) => soft.saturating_sub((soft / 8).max(64)).max(1),
            None => 10_000,
        }
    }

    /// The values the server cannot use raised to their minimum (a count of 0 counts as 1, and
    /// so on, as documented for each limit), and empty origins dropped.
    pub fn with_minimums(mut self) -> Self {
        self.write_timeout = self.write_timeout.max(Duration::from_millis(1));
        self.max_inflight_per_conn = self.max_inflight_per_conn.max(1);
        self.idempotency_cache = self.idempotency_cache.max(1);
        self.max_page = self.max_page.max(1);
        self.max_commit_batch = self.max_commit_batch.max(1);
        self.ws_buffer_bytes = self.ws_buffer_bytes.max(256);
        self.max_page_bytes = self.max_page_bytes.max(1);
        self.doc_window = self.doc_window.max(1);
        self.doc_hash_every = self.doc_hash_every.max(1);
        self.doc_snapshot_every = self.doc_snapshot_every.max(1);
        self.doc_max_ops = self.doc_max_ops.max(1);
        self.doc_max_depth = self.doc_max_depth.max(1);
        self.doc_max_bytes = self.doc_max_bytes.max(2);
        self.doc_max_rebase_work = self.doc_max_rebase_work.max(1);
        self.doc_max_apply_work = self.doc_max_apply_work.max(1);
        self.doc_snapshots_kept = self.doc_snapshots_kept.max(1);
        self.allowed_origins = std::mem::take(&mut self.allowed_origins)
            .into_iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        self
    }

    /// Whether `GET /` serves the web demo: `demo`, where `auto` means "when auth is off".
    pub fn demo_enabled(&self) -> bool {
        match self.demo {
            Demo::Auto => matches!(self.auth, AuthMode::None),
            Demo::On => true,
            Demo::Off => false,
        }
    }

    /// The kind fixed for `room` by `room_kinds`, if a pattern matches.
    pub fn kind_for(&self, room: &str) -> Option<concord_core::RoomKind> {
        self.room_kinds
            .iter()
            .find(|(pattern, _)| crate::auth::glob(pattern, room))
            .map(|(_, kind)| *kind)
    }

    /// The embedded default: a SQLite database under `data_dir`, fsync on every group commit.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            store: StoreConfig::Sqlite {
                path: data_dir.into().join("concord.db"),
                sync_full: true,
            },
            ..Config::default()
        }
    }
}

/// The soft RLIMIT_NOFILE of this process (`None` if it cannot be read; unlimited is usize::MAX).
#[cfg(unix)]
fn nofile_soft_limit() -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Some(
        lim.current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    )
}

#[cfg(not(unix))]
fn nofile_soft_limit() -> Option<usize> {
    None
}
