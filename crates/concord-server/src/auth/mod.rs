//! Authentication and permissions: who a connection is (JWT claims) and what it may do in a room.
//!
//! Rights are granted per room-name pattern (`*` matches any run of characters). With auth
//! `none` (development only, loopback) every connection may do everything.

mod admin_key;
mod grants;
mod jwt;

pub use admin_key::{AdminKey, MIN_ADMIN_KEY_BYTES};
pub use grants::{glob, Grants, Right};
pub use jwt::{expires_at_ms, AuthError, JwtKeys, JwtVerifier};

use serde_json::{Map, Value};

/// How connections and HTTP requests are authenticated.
#[derive(Clone)]
pub enum AuthMode {
    /// Everyone may do everything (development; the CLI allows it only on loopback).
    None,
    Jwt(JwtVerifier),
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::None => f.write_str("None"),
            AuthMode::Jwt(_) => f.write_str("Jwt"),
        }
    }
}

/// An authenticated principal.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `sub` of the token (`anonymous` with auth none, `admin` for the admin key).
    pub user: String,
    /// Optional claims (`name`, …) that travel as member metadata.
    pub meta: Map<String, Value>,
    pub grants: Grants,
    /// Expiry (unix seconds), if the token has one.
    pub exp: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            user: "anonymous".into(),
            meta: Map::new(),
            grants: Grants::all(),
            exp: None,
        }
    }
    pub fn admin() -> Self {
        Identity {
            user: "admin".into(),
            ..Identity::anonymous()
        }
    }
    pub fn may(&self, room: &str, right: Right) -> bool {
        self.grants.allows(room, right)
    }
}

impl AuthMode {
    /// Verifies a token (or its absence) and returns the identity.
    /// `now_ms`: the server's clock.
    pub fn authenticate(&self, token: Option<&str>, now_ms: u64) -> Result<Identity, AuthError> {
        match self {
            AuthMode::None => Ok(Identity::anonymous()),
            AuthMode::Jwt(v) => v.verify(token.ok_or(AuthError::Missing)?, now_ms),
        }
    }

    /// Clock skew tolerated on token expiry.
    pub fn leeway_secs(&self) -> u64 {
        match self {
            AuthMode::None => 0,
            AuthMode::Jwt(v) => v.leeway_secs(),
        }
    }

    pub fn enabled(&self) -> bool {
        matches!(self, AuthMode::Jwt(_))
    }
}
