//! The settings of `concord serve`: the server's [`Config`] (whose flags, `CONCORD_*` variables,
//! help and defaults are declared once, in concord-server's config.rs) plus the few that only the
//! binary uses — where to listen, the data directory, the key and schema files, the log format.

use clap::{Args, ValueEnum};
use concord_server::config::duration;
use concord_server::Config;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `concord serve`'s flags: the config file, then every setting.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// A TOML file of settings, one key per flag (`max_frame_bytes = 65536`, `write_timeout =
    /// "10s"`); `CONCORD_*` variables and flags override it. Unknown keys are an error.
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (defaults ← file ← environment ← flags) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub deployment: Deployment,
    #[command(flatten)]
    pub server: Config,
}

/// The settings the binary uses to build the server's store, authentication, admin key and doc
/// schemas, and its own logs. Defaults in `impl Default` below.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deployment {
    /// Address to listen on.
    #[arg(long, env = "CONCORD_LISTEN", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite database (created if missing).
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Keep everything in memory instead (nothing survives a restart; for experiments only).
    #[arg(long, env = "CONCORD_MEMORY")]
    pub memory: bool,
    /// SQLite durability: `full` fsyncs every group commit (survives power loss); `normal`
    /// survives a process crash (kill -9) but may lose the last commits on power loss.
    #[arg(long, env = "CONCORD_SQLITE_SYNC", value_enum)]
    pub sqlite_sync: SqliteSync,
    /// Authentication of clients: `none` (development only; allowed only when listening on a
    /// loopback address) or `jwt` (HS256 with --jwt-secret-file, or RS256/ES256 with
    /// --jwt-public-key).
    #[arg(long, env = "CONCORD_AUTH", value_enum)]
    pub auth: AuthKind,
    /// File holding the HS256 shared secret (at least 16 bytes; a text file has its surrounding
    /// whitespace trimmed, a binary file is used byte for byte).
    #[arg(long, env = "CONCORD_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key.
    #[arg(long, env = "CONCORD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp`/`nbf` (whole seconds; a plain number is seconds).
    #[serde(with = "duration")]
    #[arg(long, env = "CONCORD_JWT_LEEWAY", value_name = "DURATION", value_parser = duration::parse)]
    pub jwt_leeway: Duration,
    /// File holding a key that grants every right over HTTP (`Authorization: Bearer <key>`; at
    /// least 16 bytes, surrounding whitespace trimmed).
    #[arg(long, env = "CONCORD_ADMIN_KEY_FILE", value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// JSON file mapping room-name patterns to JSON Schemas: `{"doc:tasks:*": {…schema…}}`.
    /// Every state of a matching doc room must validate; an op list that would break it gets
    /// `rejected`.
    #[arg(long, env = "CONCORD_SCHEMA_FILE", value_name = "FILE")]
    pub schema_file: Option<PathBuf>,
    /// Log format (on stderr; the level comes from `CONCORD_LOG`, e.g. `info,concord_server=debug`).
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum)]
    pub log_format: LogFormat,
    /// Redis of the distributed mode (`redis://host:port`; several comma-separated seed URLs
    /// for a Redis Cluster). With it this process is a gateway of a cluster: stream rooms are
    /// sequenced by Redis and shared by every gateway (docs/distributed.md); without it, the
    /// embedded mode.
    #[arg(long, env = "CONCORD_REDIS_URL", value_name = "URL")]
    pub redis: Option<String>,
    /// PostgreSQL of the distributed mode (with --redis): the archive the workers write; a
    /// gateway reads history below what Redis keeps from it and binds client ids to users in it
    /// (needed with --auth jwt). Its schema is applied at start.
    #[arg(long, env = "CONCORD_POSTGRES_URL", value_name = "URL")]
    pub postgres: Option<String>,
    /// Prefix of every Redis key of the cluster (no `{`).
    #[arg(long, env = "CONCORD_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: String,
    /// Virtual partitions of the cluster (1024–4096), fixed when the cluster is created: every
    /// process of a cluster must give the same number.
    #[arg(long, env = "CONCORD_PARTITIONS", value_name = "N")]
    pub partitions: u32,
    /// What a gateway's `ack` promises (with --redis): `memory` (in Redis's memory), `redis`
    /// (fsynced in Redis's append-only file: Redis must run with appendonly yes and appendfsync
    /// always, checked at start) or `durable` (committed in PostgreSQL by a worker: needs
    /// --postgres and running workers).
    #[arg(long, env = "CONCORD_ACK_LEVEL", value_enum)]
    pub ack_level: AckLevel,
    /// A gateway's heartbeat lease (with --redis): a gateway silent for this long is taken for
    /// dead, and the other gateways remove its clients from their rooms.
    #[serde(with = "duration")]
    #[arg(long, env = "CONCORD_GATEWAY_LEASE", value_name = "DURATION", value_parser = duration::parse)]
    pub gateway_lease: Duration,
    /// Do not serve the web demo at `/` (the same as `--demo off`).
    #[arg(long, env = "CONCORD_NO_DEMO")]
    pub no_demo: bool,
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("./concord-data"),
            memory: false,
            sqlite_sync: SqliteSync::Full,
            auth: AuthKind::None,
            jwt_secret_file: None,
            jwt_public_key: None,
            jwt_leeway: Duration::from_secs(5),
            admin_key_file: None,
            schema_file: None,
            log_format: LogFormat::Text,
            redis: None,
            postgres: None,
            redis_prefix: "concord".into(),
            partitions: 1024,
            ack_level: AckLevel::Memory,
            gateway_lease: Duration::from_secs(10),
            no_demo: false,
        }
    }
}

/// SQLite durability (`--sqlite-sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every group commit is fsynced: survives power loss.
    Full,
    /// No fsync per commit: survives kill -9, not power loss.
    Normal,
}

/// What a gateway's ack promises (`--ack-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckLevel {
    /// In Redis's memory.
    Memory,
    /// Fsynced in Redis's append-only file.
    Redis,
    /// Committed in PostgreSQL by a worker.
    Durable,
}

/// How clients authenticate (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// Everyone may do everything (loopback only).
    None,
    /// JSON Web Tokens.
    Jwt,
}

/// Log format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
