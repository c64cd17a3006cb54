//! From settings to the server's runtime `Config`: the store, the JWT verifier, the admin key
//! and the doc schemas, read from the files the settings name.

use crate::layers::Settings;
use crate::settings::{AckLevel, AuthKind, SqliteSync};
use anyhow::Context;
use concord_server::auth::{AdminKey, AuthMode, JwtKeys, JwtVerifier};
use concord_server::room::doc::DocSchema;
use concord_server::{Config, StoreConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// The `Config` `run` gets: the settings' server part, with the parts built from files.
pub fn config(settings: &Settings) -> anyhow::Result<Config> {
    let d = &settings.deployment;
    let mut config = settings.server.clone();
    config.store = if d.memory {
        StoreConfig::Memory
    } else {
        StoreConfig::Sqlite {
            path: d.data_dir.join("concord.db"),
            sync_full: d.sqlite_sync == SqliteSync::Full,
        }
    };
    config.auth = auth_mode(settings)?;
    if d.no_demo {
        config.demo = concord_server::config::Demo::Off;
    }
    config.admin_key = match &d.admin_key_file {
        Some(f) => Some(
            AdminKey::new(read_secret(f, "admin key")?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
        ),
        None => None,
    };
    config.doc_schemas = match &d.schema_file {
        Some(f) => load_schemas(f)?,
        None => Vec::new(),
    };
    Ok(config)
}

fn auth_mode(settings: &Settings) -> anyhow::Result<AuthMode> {
    let d = &settings.deployment;
    match d.auth {
        AuthKind::Jwt => {
            let keys = match (&d.jwt_secret_file, &d.jwt_public_key) {
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
                JwtVerifier::new(keys, d.jwt_leeway.as_secs()).map_err(anyhow::Error::msg)?,
            ))
        }
        AuthKind::None => {
            if !d.listen.ip().is_loopback() {
                anyhow::bail!(
                    "--auth none is only allowed on a loopback address; use --auth jwt to listen on {}",
                    d.listen
                );
            }
            Ok(AuthMode::None)
        }
    }
}

/// The backend of a gateway of the distributed mode: Redis at `url` (comma-separated seed URLs
/// for a Redis Cluster) and, with --postgres, the archive (its schema applied first). Client ids
/// are bound to users in PostgreSQL, so authentication needs --postgres.
pub async fn gateway_backend(
    settings: &Settings,
    url: &str,
    config: &Config,
) -> anyhow::Result<concord_server::cluster::Backend> {
    let d = &settings.deployment;
    let archive = match &d.postgres {
        Some(pg) => {
            concord_dist::pg::migrate(pg)
                .await
                .with_context(|| format!("applying the schema to PostgreSQL at {pg}"))?;
            Some(
                concord_dist::pg::PgArchive::connect(pg)
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {pg}"))?,
            )
        }
        None => None,
    };
    if config.auth.enabled() && archive.is_none() {
        anyhow::bail!(
            "--redis with --auth jwt needs --postgres: gateways bind client ids to users in \
             PostgreSQL's client registry"
        );
    }
    let urls: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
    let target = match urls.as_slice() {
        [one] => concord_dist::RedisTarget::Single(one.clone()),
        _ => concord_dist::RedisTarget::Cluster(urls),
    };
    let log = concord_dist::LogConfig {
        prefix: d.redis_prefix.clone(),
        partitions: d.partitions,
        ..concord_dist::LogConfig::default()
    };
    let ack = match d.ack_level {
        AckLevel::Memory => concord_dist::gateway::AckLevel::Memory,
        AckLevel::Redis => concord_dist::gateway::AckLevel::Redis,
        AckLevel::Durable if archive.is_none() => anyhow::bail!(
            "--ack-level durable (ack after the workers' PostgreSQL commit) needs --postgres: \
             a room Redis lost is rebuilt from it"
        ),
        AckLevel::Durable => concord_dist::gateway::AckLevel::Durable,
    };
    let options = concord_dist::gateway::GatewayOptions {
        ack,
        lease: d.gateway_lease,
        archive,
        ..concord_dist::gateway::GatewayOptions::new(&config.node_id)
    };
    concord_dist::gateway::connect(&target, log, options)
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
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
