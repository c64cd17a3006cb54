//! A refused request: the error code and message, what it echoes (`id`, `room`), the limit or
//! rate it hit, and — on a WebSocket — whether it closes the connection. The one place each
//! refusal becomes metrics ([`Refusal::count`]), an `error` frame ([`Refusal::frame`]) or an
//! HTTP response ([`HttpError`]).

use crate::metrics::{AuthFailure, Limit, Metrics, RateScope};
use crate::room::RoomError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use concord_protocol::outbound::ErrorMsg;
use concord_protocol::{ErrorCode, ServerMsg};

/// What a refusal counts besides `concord_errors_total{code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// A configured limit (`metrics.limit(name)`).
    Limit(Limit),
    /// A token bucket (`metrics.rate_limit(scope)`).
    Rate(RateScope),
    /// A failed authentication (`metrics.auth_failure(reason)`).
    Auth(AuthFailure),
}

/// Strings are boxed (`Box<str>`) to keep `Result<_, Refusal>` small on the paths that succeed.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: Box<str>,
    /// The op id echoed in the `error` frame.
    pub id: Option<Box<str>>,
    /// The room echoed in the `error` frame.
    pub room: Option<Box<str>>,
    pub hit: Option<Hit>,
    /// For `rate_limited`: when a retry may succeed.
    pub retry_after_ms: Option<u64>,
    /// A WebSocket closes with this code and reason after the `error` frame.
    pub close: Option<(u16, &'static str)>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into().into_boxed_str(),
            id: None,
            room: None,
            hit: None,
            retry_after_ms: None,
            close: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::BadRequest, message)
    }

    pub fn id(mut self, id: Option<&str>) -> Self {
        self.id = id.map(Box::from);
        self
    }

    pub fn room(mut self, room: impl Into<String>) -> Self {
        self.room = Some(room.into().into_boxed_str());
        self
    }

    /// The room echoed, if any (as decoding reported it).
    pub fn with_room(mut self, room: Option<String>) -> Self {
        self.room = room.map(String::into_boxed_str);
        self
    }

    pub fn limit(mut self, name: Limit) -> Self {
        self.hit = Some(Hit::Limit(name));
        self
    }

    /// A rate limit of `scope` refused it; a retry may succeed after `retry_after_ms`.
    pub fn rate(mut self, scope: RateScope, retry_after_ms: u64) -> Self {
        self.hit = Some(Hit::Rate(scope));
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    pub fn auth(mut self, reason: AuthFailure) -> Self {
        self.hit = Some(Hit::Auth(reason));
        self
    }

    pub fn close(mut self, code: u16, reason: &'static str) -> Self {
        self.close = Some((code, reason));
        self
    }

    /// Records the refusal in the metrics: its code, and the limit, rate or auth failure.
    pub fn count(&self, metrics: &Metrics) {
        match self.hit {
            Some(Hit::Limit(name)) => metrics.limit(name),
            Some(Hit::Rate(scope)) => metrics.rate_limit(scope),
            Some(Hit::Auth(reason)) => metrics.auth_failure(reason),
            None => {}
        }
        metrics.error(self.code);
    }

    /// The `error` frame of the refusal.
    pub fn frame(&self) -> String {
        ServerMsg::Error(ErrorMsg {
            id: self.id.as_deref().map(Into::into),
            room: self.room.as_deref().map(Into::into),
            retry_after_ms: self.retry_after_ms,
            ..ErrorMsg::new(self.code, &*self.message)
        })
        .encode()
    }

    /// Counts the refusal and makes it an HTTP answer.
    pub fn http(self, metrics: &Metrics) -> HttpError {
        self.count(metrics);
        HttpError(RoomError {
            code: self.code,
            message: self.message.into(),
            retry_after_ms: self.retry_after_ms,
        })
    }
}

/// An HTTP error answer: the status of its code, `{"code","message"[,"retry_after_ms"]}`, and
/// `Retry-After` when a retry may succeed later. Already counted (by [`Refusal::http`], or by
/// the room actor for a [`RoomError`] it answered with).
pub struct HttpError(pub RoomError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({"code": self.0.code, "message": self.0.message});
        match self.0.retry_after_ms {
            Some(ms) => {
                body["retry_after_ms"] = ms.into();
                let secs = ms.div_ceil(1000).max(1).to_string();
                (status, [(header::RETRY_AFTER, secs)], axum::Json(body)).into_response()
            }
            None => (status, axum::Json(body)).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_counts_its_code_and_its_limit_once() {
        let m = Metrics::new();
        Refusal::new(ErrorCode::TooLarge, "big")
            .limit(Limit::MaxDataBytes)
            .count(&m);
        assert_eq!(
            m.value("concord_errors_total", &[("code", "too_large")]),
            1.0
        );
        assert_eq!(
            m.value("concord_limit_hits_total", &[("limit", "max_data_bytes")]),
            1.0
        );
    }

    #[test]
    fn the_frame_echoes_id_room_and_retry() {
        let r = Refusal::new(ErrorCode::RateLimited, "slow down")
            .id(Some("op-1"))
            .room("r1")
            .rate(RateScope::Connection, 250);
        let v: serde_json::Value = serde_json::from_str(&r.frame()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["id"], "op-1");
        assert_eq!(v["room"], "r1");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["retry_after_ms"], 250);
    }
}
