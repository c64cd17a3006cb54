//! Server configuration: every limit and timing knob, with production defaults.

use crate::auth::AuthMode;
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

/// Where committed events are kept.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// A SQLite database file (embedded mode). `sync_full` fsyncs every group commit.
    Sqlite { path: PathBuf, sync_full: bool },
    /// In-process memory only (tests of the logic above the store; nothing survives a restart).
    Memory,
}

/// Everything `run` needs. Environment variables and flags are read by the CLI, not here.
#[derive(Clone, Debug)]
pub struct Config {
    pub store: StoreConfig,
    /// This node's id: in `welcome.node` and in every HLC timestamp it issues.
    pub node_id: String,
    /// Largest WebSocket message accepted (larger → close 1009).
    pub max_frame_bytes: usize,
    /// Largest event `data` accepted, in bytes of JSON (larger → `too_large`).
    pub max_data_bytes: usize,
    /// Bytes queued for one connection before it is closed with 4008 (lagging): each queued
    /// text frame counts its payload plus 64 bytes of overhead. A lagging connection is closed
    /// at once; its queued frames are discarded (the client recovers with `since`).
    pub max_queue_bytes: usize,
    /// A write to a client socket that makes no progress for this long ends the connection (the
    /// peer does not read) and closes the socket: WebSocket frames (each feed, flush and close of
    /// the writer) and HTTP responses alike.
    pub write_timeout: Duration,
    /// Publishes one connection may have awaiting their ack; beyond it the server stops reading
    /// that connection's frames until acks go out (backpressure).
    pub max_inflight_per_conn: usize,
    /// Rooms one connection may be joined to at once.
    pub max_rooms_per_conn: usize,
    /// Most missed events replayed on a `since` rejoin; older positions get `recovered:false`.
    pub recovery_window: u64,
    /// Most events `history` may ask for on join.
    pub max_history: u64,
    /// Largest catch-up (bytes of events) sent in one `joined`: a recovery that needs more
    /// becomes `recovered:false`; `history` is trimmed to the newest events that fit.
    pub max_catch_up_bytes: usize,
    /// Recent committed events each loaded room keeps in memory for joins and recovery.
    pub room_window: usize,
    /// Bytes of recent events (encoded frames) each loaded room keeps in memory at most; older
    /// events are read from the store when a join needs them.
    pub room_window_bytes: usize,
    /// Recent idempotency keys each loaded room keeps in memory (older ones are looked up in the store).
    pub idempotency_cache: usize,
    /// Largest `limit` of `GET /v1/rooms/{room}/events`.
    pub max_page: usize,
    /// A connection that has not sent `hello` within this time is closed (1008).
    pub handshake_timeout: Duration,
    /// Interval of server WebSocket pings.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long is closed.
    pub idle_timeout: Duration,
    /// A room with no members and nothing in flight is unloaded after this long.
    pub room_idle_unload: Duration,
    /// On shutdown, how long connections get to receive their pending acks before close 1001.
    pub shutdown_grace: Duration,
    /// Most events the store writer commits in one transaction.
    pub max_commit_batch: usize,
    /// WebSocket read and write buffer sizes per connection (small: they cost memory per connection).
    pub ws_buffer_bytes: usize,
    /// How clients and HTTP callers authenticate.
    pub auth: AuthMode,
    /// A key that grants every right over HTTP (`Authorization: Bearer <key>`), for backends.
    pub admin_key: Option<crate::auth::AdminKey>,
    /// After a connection's token expires it may send `auth` with a fresh token within this
    /// time; then it is closed with 1008.
    pub auth_grace: Duration,
    /// Presence updates of a room are coalesced and sent at most this often.
    pub presence_interval: Duration,
    /// Largest presence `data` in bytes (larger → `too_large`).
    pub max_presence_bytes: usize,
    /// Connections one room may have as members.
    pub max_members_per_room: usize,
    /// TCP connections (HTTP and WebSocket) from one IP address; beyond it a new connection's
    /// request gets 429 `rate_limited` and the connection is closed.
    pub max_conns_per_ip: usize,
    /// TCP connections open at once (HTTP and WebSocket), so file descriptors stay free for the
    /// store. At the limit the longest-idle HTTP connection is closed to make room for a new
    /// one; with none idle, the new one is closed at once. The binary derives its default from
    /// the open-file limit.
    pub max_conns: usize,
    /// A request's head (request line and headers) must arrive within this time, counted from
    /// the accept or from the end of the previous response on a keep-alive connection: it is
    /// also the idle timeout of keep-alive connections (slowloris, idle sockets).
    pub http_header_timeout: Duration,
    /// A request body must arrive in full within this time (else 408 and the connection closes).
    pub http_body_timeout: Duration,
    /// Largest body of one `GET /v1/rooms/{room}/events` page in bytes of events: a page holds
    /// fewer than `limit` events (at least one) when they would not fit, with `more: true`.
    pub max_page_bytes: usize,
    /// On shutdown, `run` returns after this long even if connections or the store still hang.
    pub shutdown_timeout: Duration,
    /// Serve `/metrics` on this separate address only (then the main port answers 404 there).
    /// When unset, `/metrics` on the main port needs the admin right if auth or an admin key is on.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Origins (`scheme://host[:port]`, or `*`) allowed to open a WebSocket from a browser; empty:
    /// only the request's own host. In no-auth mode their hosts are also accepted in `Host`.
    pub allowed_origins: Vec<String>,
    /// Publishes per connection.
    pub rate_publish_per_conn: Rate,
    /// Publishes per room (all senders together, HTTP included).
    pub rate_publish_per_room: Rate,
    /// Presence updates per connection.
    pub rate_presence_per_conn: Rate,
    /// `drift` reports per connection (each accepted one is logged once).
    pub rate_drift_per_conn: Rate,
    /// Rooms one connection may create (joins of existing rooms do not count).
    pub rate_room_create_per_conn: Rate,
    /// Rooms one user (JWT `sub`) may create, all its connections and HTTP publishes together.
    pub rate_room_create_per_user: Rate,
    /// Most rooms the store holds; creating one more gets `unavailable`.
    pub max_rooms: u64,
    /// Room kinds fixed by room-name pattern (`*` matches any run of characters), first match
    /// wins: a join with another kind gets `kind_mismatch`, a join without a kind creates the
    /// room with this one, and HTTP publishes into a pattern mapped to `doc` get `kind_mismatch`.
    pub room_kinds: Vec<(String, concord_core::RoomKind)>,
    /// Retention policies by room-name pattern, first match wins; rooms matching none keep
    /// every event.
    pub retention: Vec<RetentionPolicy>,
    /// How often the retention sweep runs (zero: never).
    pub retention_interval: Duration,
    /// Recent op lists a doc room keeps to rebase stale ops; an older `base` gets `conflict`.
    pub doc_window: usize,
    /// Doc events carry the state hash every this many seqs (and `joined` always does).
    pub doc_hash_every: u64,
    /// A doc room saves a snapshot every this many ops (and when it unloads).
    pub doc_snapshot_every: u64,
    /// Most ops in one op list.
    pub doc_max_ops: usize,
    /// Deepest nesting of a doc room's document (containers, the root included). An op list
    /// that would put anything deeper (a `set`/`ins` whose path length plus value depth is
    /// larger) is refused with `rejected`; nothing of it is applied.
    pub doc_max_depth: usize,
    /// Largest document of a doc room, in bytes of canonical JSON (tracked op by op). An op
    /// list that grows the document beyond it is refused with `rejected`; lists that shrink it
    /// are always accepted. It also bounds every snapshot and `joined.state`.
    pub doc_max_bytes: usize,
    /// Most rebase work one op list may cost: ops in the list × ops committed since its `base`
    /// (checked before transforming), and the pairwise transformations actually done (a text
    /// delete split around inserts costs more). Beyond it → `conflict` (the client resyncs).
    /// The default costs at most ~50 ms of CPU (about 1 µs per pair in the worst case measured,
    /// `cargo run -p concord-core --example rebase_cost`).
    pub doc_max_rebase_work: u64,
    /// Most bytes of strings the `text` ops of one op list may edit, counted on the document
    /// before the list (each text op scans its string: ~2.4 ns per byte measured, so the
    /// default costs at most ~40 ms). Beyond it → `too_large` (send fewer text ops per list).
    pub doc_max_apply_work: u64,
    /// Snapshots kept per doc room (the newest ones; older ones are deleted when a new one is
    /// saved). Reading an older state replays from the newest kept snapshot at or before it,
    /// or from seq 0.
    pub doc_snapshots_kept: usize,
    /// JSON Schemas by room-name pattern; the first matching one validates every doc state.
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
            node_id: "concord".to_string(),
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
            max_conns: 10_000,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(30),
            max_page_bytes: 4 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            metrics_listen: None,
            allowed_origins: Vec::new(),
            rate_publish_per_conn: Rate::new(1_000, 2_000),
            rate_publish_per_room: Rate::new(50_000, 100_000),
            rate_presence_per_conn: Rate::new(30, 60),
            rate_drift_per_conn: Rate::new(1, 5),
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
            doc_schemas: Vec::new(),
        }
    }
}

impl Config {
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
