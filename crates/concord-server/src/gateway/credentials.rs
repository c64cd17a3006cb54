//! Who a request says it is, before any check: the bearer token of a request, and the client
//! ids reserved for HTTP callers. Used by both the WebSocket and the HTTP side.

use axum::http::HeaderMap;

/// The pseudo client id of events published over HTTP with the admin key or without
/// authentication (scope of their idempotency keys).
pub const HTTP_CLIENT: &str = "http";
/// Prefix of the pseudo client id of a JWT user's HTTP events: `http:<user>`. Reserved, like
/// [`HTTP_CLIENT`], so that no WebSocket client shares the idempotency scope of an HTTP caller.
pub const HTTP_CLIENT_PREFIX: &str = "http:";

/// Whether a client id is reserved for HTTP callers (`http`, `http:…`).
pub fn is_http_client(id: &str) -> bool {
    id == HTTP_CLIENT || id.starts_with(HTTP_CLIENT_PREFIX)
}

/// The bearer token of a request's `Authorization` header (the scheme name is
/// case-insensitive, RFC 7235).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    let (scheme, token) = v.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}
