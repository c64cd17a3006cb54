//! Request guards of the HTTP edge, before any handler: the `Host` check of no-auth mode (DNS
//! rebinding), the allowed WebSocket `Origin`s (cross-site pages), and for `POST`s a JSON
//! content type (no cross-origin "simple" requests) and the body deadline (slow bodies).

use super::refusal::Refusal;
use super::App;
use crate::config::Config;
use crate::metrics::Limit;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use concord_protocol::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;

/// In no-auth mode only loopback names (and the hosts of `allowed_origins`) may be in `Host`:
/// a page whose DNS name was rebound to 127.0.0.1 sends its own name and gets 421.
pub async fn host_guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let cfg = &app.shared.config;
    if !cfg.auth.enabled() {
        if let Some(host) = req.headers().get(header::HOST) {
            if !host_allowed(cfg, host) {
                let msg = "this Host is not served without authentication (--auth none accepts \
                           only loopback names and the hosts of --allowed-origins)";
                let refusal = Refusal::new(ErrorCode::Forbidden, msg).limit(Limit::Host);
                return with_status(
                    refusal.http(&app.shared.metrics).into_response(),
                    StatusCode::MISDIRECTED_REQUEST,
                );
            }
        }
    }
    next.run(req).await
}

/// For `POST`s: a JSON content type (else 415), a body no larger than `max_frame_bytes` (else
/// 413) that arrives in full within `http_body_timeout` (else 408 and the connection closes).
pub async fn body_guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let cfg = &app.shared.config;
    if !is_json(req.headers()) {
        let msg = "the body must be JSON with Content-Type: application/json";
        let resp = Refusal::bad_request(msg).http(&app.shared.metrics);
        return closing(with_status(
            resp.into_response(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ));
    }
    let limit = cfg.max_frame_bytes;
    let too_large = |app: &App| {
        let msg = format!("the request body is larger than {limit} bytes");
        let refusal = Refusal::new(ErrorCode::TooLarge, msg);
        closing(refusal.http(&app.shared.metrics).into_response())
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&app);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(cfg.http_body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => too_large(&app),
        Err(_) => {
            let msg = format!(
                "the request body did not arrive within {:?}",
                cfg.http_body_timeout
            );
            let refusal = Refusal::bad_request(msg).limit(Limit::HttpBodyTimeout);
            let resp = refusal.http(&app.shared.metrics).into_response();
            closing(with_status(resp, StatusCode::REQUEST_TIMEOUT))
        }
    }
}

fn with_status(mut resp: Response, status: StatusCode) -> Response {
    *resp.status_mut() = status;
    resp
}

/// The body of this request was not read: the connection cannot be reused.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// May a browser page of `origin` open a WebSocket? With `allowed_origins` set: if it is one of
/// them (or the list has `*`); else: if it is the page of the host the request was sent to.
pub fn origin_allowed(cfg: &Config, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    if !cfg.allowed_origins.is_empty() {
        return cfg.allowed_origins.iter().any(|allowed| {
            let allowed = allowed.trim().trim_end_matches('/');
            allowed == "*" || allowed.eq_ignore_ascii_case(origin)
        });
    }
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    match origin.split_once("://") {
        Some((scheme, authority)) => {
            matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host.trim())
        }
        None => false,
    }
}

/// Is `host` (a `Host` header: name or address, with or without a port) a loopback name or
/// the host of one of the allowed origins?
pub fn host_allowed(cfg: &Config, host: &HeaderValue) -> bool {
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = strip_port(host.trim()).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    cfg.allowed_origins.iter().any(|o| {
        let authority = o.trim().split_once("://").map_or(o.as_str(), |(_, a)| a);
        strip_port(authority.trim_end_matches('/')).eq_ignore_ascii_case(&name)
    })
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`; a bare name or address as is.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn loopback_and_allowed_hosts_only() {
        let mut cfg = Config::default();
        for ok in [
            "localhost",
            "localhost:7400",
            "127.0.0.1:7400",
            "127.0.0.1",
            "[::1]:7400",
            "[::1]",
            "app.localhost:1",
        ] {
            assert!(host_allowed(&cfg, &hv(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7400",
            "10.0.0.1:7400",
            "127.0.0.1.evil.example",
        ] {
            assert!(!host_allowed(&cfg, &hv(bad)), "{bad}");
        }
        cfg.allowed_origins = vec!["https://app.example:8443".into()];
        assert!(host_allowed(&cfg, &hv("app.example:7400")));
        assert!(!host_allowed(&cfg, &hv("evil.example")));
    }

    #[test]
    fn same_host_origin_by_default_else_the_list() {
        let mut cfg = Config::default();
        let host = hv("127.0.0.1:7400");
        assert!(origin_allowed(
            &cfg,
            &hv("http://127.0.0.1:7400"),
            Some(&host)
        ));
        assert!(!origin_allowed(
            &cfg,
            &hv("http://evil.example"),
            Some(&host)
        ));
        assert!(!origin_allowed(&cfg, &hv("null"), Some(&host)));
        assert!(!origin_allowed(&cfg, &hv("http://127.0.0.1:7400"), None));
        cfg.allowed_origins = vec!["https://app.example/".into()];
        assert!(origin_allowed(
            &cfg,
            &hv("https://APP.example"),
            Some(&host)
        ));
        assert!(!origin_allowed(
            &cfg,
            &hv("http://127.0.0.1:7400"),
            Some(&host)
        ));
        cfg.allowed_origins = vec!["*".into()];
        assert!(origin_allowed(&cfg, &hv("http://anything"), Some(&host)));
    }
}
