//! The `concord` Redis function library (functions/concord.lua): its source, its version, and
//! loading it (FUNCTION LOAD REPLACE) on every master when missing or older.

use crate::log::{LogError, RedisConn};
use redis::Value;

/// The library's source, as loaded into Redis.
pub const LIBRARY: &str = include_str!("functions/concord.lua");

/// The version line of the library: `local VERSION = N`.
const VERSION_LINE: &str = "local VERSION = ";

/// The version of this build's library (read from its source: one place to change it).
pub fn version() -> u64 {
    version_of(LIBRARY).unwrap_or(0)
}

fn version_of(source: &str) -> Option<u64> {
    source
        .lines()
        .find_map(|l| l.strip_prefix(VERSION_LINE))
        .and_then(|v| v.trim().parse().ok())
}

/// This build's library with another version number (tests of upgrades and refusals).
pub fn library_with_version(v: u64) -> String {
    LIBRARY
        .lines()
        .map(|l| {
            if l.starts_with(VERSION_LINE) {
                format!("{VERSION_LINE}{v}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `ensure_loaded` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// Every master already had this version.
    Current,
    /// The library was loaded where it was missing or older.
    Loaded {
        replaced: Vec<(String, Option<u64>)>,
    },
}

/// The library's version on each master (`None`: not loaded there).
pub async fn versions(conn: &RedisConn) -> Result<Vec<(String, Option<u64>)>, LogError> {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg("concord_version").arg(0);
    let answers = conn.on_masters(cmd).await?;
    answers
        .into_iter()
        .map(|(addr, value)| {
            let v = match value {
                Value::Int(n) => Some(
                    u64::try_from(n)
                        .map_err(|_| LogError::Reply(format!("concord_version answered {n}")))?,
                ),
                Value::ServerError(e) if e.details().unwrap_or("").contains("not found") => None,
                Value::ServerError(e) => {
                    return Err(LogError::Redis(redis::RedisError::from(e)));
                }
                other => return Err(LogError::Reply(format!("concord_version: {other:?}"))),
            };
            Ok((addr, v))
        })
        .collect()
}

/// The library's code on each master (`None`: not loaded there).
pub async fn codes(conn: &RedisConn) -> Result<Vec<(String, Option<String>)>, LogError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LIST")
        .arg("LIBRARYNAME")
        .arg("concord")
        .arg("WITHCODE");
    let answers = conn.on_masters(cmd).await?;
    Ok(answers
        .into_iter()
        .map(|(addr, value)| (addr, library_code(&value)))
        .collect())
}

/// The `library_code` of the library named exactly `concord` in a FUNCTION LIST reply.
fn library_code(v: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(libs) = v else {
        return None;
    };
    libs.iter().find_map(|lib| {
        let pairs: Vec<(String, &Value)> = match lib {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((text(k)?, v)),
                    _ => None,
                })
                .collect(),
            Value::Map(items) => items
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
            _ => return None,
        };
        let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if field("library_name").and_then(text).as_deref() != Some("concord") {
            return None;
        }
        field("library_code").and_then(text)
    })
}

/// Loads `source` on every master, replacing any library of the same name.
pub async fn load(conn: &RedisConn, source: &str) -> Result<(), LogError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(source);
    for (addr, answer) in conn.on_masters(cmd).await? {
        if let Value::ServerError(e) = answer {
            return Err(LogError::Reply(format!(
                "FUNCTION LOAD on {addr}: {} {}",
                e.code(),
                e.details().unwrap_or("")
            )));
        }
    }
    Ok(())
}

/// Makes sure every master runs this build's library: loads it where it is missing or older;
/// refuses (`LibraryNewer`) when any master has a newer one.
pub async fn ensure_loaded(conn: &RedisConn) -> Result<Loaded, LogError> {
    let ours = version();
    let found = versions(conn).await?;
    if let Some(newer) = found.iter().filter_map(|(_, v)| *v).find(|v| *v > ours) {
        return Err(LogError::LibraryNewer { found: newer, ours });
    }
    let mut stale: Vec<_> = found
        .iter()
        .filter(|(_, v)| *v != Some(ours))
        .cloned()
        .collect();
    if stale.is_empty() {
        // Same version everywhere: replace it all the same where its code is not this build's
        // (a library is exactly what a build runs; a version bump is for refusing).
        stale = codes(conn)
            .await?
            .into_iter()
            .filter(|(_, code)| code.as_deref() != Some(LIBRARY))
            .map(|(addr, _)| (addr, Some(ours)))
            .collect();
    }
    if stale.is_empty() {
        return Ok(Loaded::Current);
    }
    load(conn, LIBRARY).await?;
    Ok(Loaded::Loaded { replaced: stale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_source() {
        assert!(version() >= 1, "the library declares `local VERSION = N`");
        assert_eq!(
            version_of(&library_with_version(version() + 5)),
            Some(version() + 5)
        );
        assert!(LIBRARY.starts_with("#!lua name=concord\n"));
    }
}
