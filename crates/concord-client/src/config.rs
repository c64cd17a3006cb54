//! Client configuration (`ClientConfig`) and per-room join options (`JoinOptions`).

use std::time::Duration;

/// How a [`Client`](crate::Client) connects and retries.
///
/// Build it with [`ClientConfig::new`] and adjust the public fields (or use the `with_*`
/// helpers); `..ClientConfig::new(url)` works in struct literals too.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// WebSocket URL of the server, e.g. `ws://127.0.0.1:7070/v1/ws`.
    pub url: String,
    /// Other URLs serving the same rooms (gateways of one cluster). The first connection
    /// tries `url`, then these in order; every reconnect moves on to the next one, so a client
    /// whose gateway died rejoins through another. Empty by default.
    pub fallback_urls: Vec<String>,
    /// Identity of this client: the scope of publish ids and of server-side dedupe.
    /// Stable across this client's reconnects. Random by default (`c-<16 hex>`).
    pub client_id: String,
    /// JWT sent in `hello` (optional in dev mode).
    pub token: Option<String>,
    /// First reconnect backoff cap; doubles per failed attempt (full jitter). Default 100 ms.
    pub backoff_initial: Duration,
    /// Largest reconnect backoff cap. Default 5 s.
    pub backoff_max: Duration,
    /// If set, a publish not acked within this time (from the `publish` call, across
    /// reconnects) fails with [`ClientError::Timeout`](crate::ClientError::Timeout) and is no
    /// longer resent. Its outcome is then unknown: publishing again with the same id (see
    /// [`Client::publish_with_id`](crate::Client::publish_with_id)) returns the original ack if
    /// it was committed. Default: `None` (wait, and resend, until acked or the client closes).
    pub ack_timeout: Option<Duration>,
    /// Limit for one connection attempt: TCP + WebSocket handshake + `hello`/`welcome`.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// TLS for `wss://` URLs (feature `tls`): `None` trusts the built-in roots (Mozilla's, and
    /// the system's with feature `tls-native-roots`); `Some` uses this rustls configuration,
    /// e.g. one that trusts a private CA or a self-signed certificate.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// Defaults for `url` with a fresh random `client_id`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            client_id: random_client_id(),
            token: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ack_timeout: None,
            connect_timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Uses `tls` for `wss://` URLs instead of the built-in roots.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds gateways to fall back to (see [`ClientConfig::fallback_urls`]).
    pub fn with_fallback_urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fallback_urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The URL of connection attempt `n` (0 = the first): `url`, then the fallbacks, round.
    pub(crate) fn url_for(&self, n: usize) -> &str {
        match n % (1 + self.fallback_urls.len()) {
            0 => &self.url,
            i => &self.fallback_urls[i - 1],
        }
    }

    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

/// A random client id, `c-` followed by 16 hex digits.
pub fn random_client_id() -> String {
    format!("c-{:016x}", rand::random::<u64>())
}

/// Options of [`Client::join`](crate::Client::join).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Room kind, needed only to create the room (`"stream"`; doc rooms are joined with
    /// [`Client::join_doc`](crate::Client::join_doc)).
    pub kind: Option<String>,
    /// On the first join, ask for the last N events (default 0). Ignored on rejoins, which
    /// resume from the last seq seen.
    pub history: Option<u64>,
}

impl JoinOptions {
    /// Join (and create if missing) a stream room.
    pub fn stream() -> Self {
        JoinOptions {
            kind: Some("stream".to_string()),
            history: None,
        }
    }

    pub fn with_history(mut self, n: u64) -> Self {
        self.history = Some(n);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ClientConfig::new("ws://x/v1/ws");
        assert_eq!(c.backoff_initial, Duration::from_millis(100));
        assert_eq!(c.backoff_max, Duration::from_secs(5));
        assert!(c.client_id.starts_with("c-") && c.client_id.len() == 18);
        assert_ne!(c.client_id, ClientConfig::new("ws://x/v1/ws").client_id);
        assert_eq!(JoinOptions::stream().with_history(3).history, Some(3));
    }

    #[test]
    fn attempts_go_round_the_urls_in_order() {
        let one = ClientConfig::new("ws://a");
        assert_eq!([one.url_for(0), one.url_for(5)], ["ws://a", "ws://a"]);
        let three = ClientConfig::new("ws://a").with_fallback_urls(["ws://b", "ws://c"]);
        let got: Vec<&str> = (0..5).map(|n| three.url_for(n)).collect();
        assert_eq!(got, ["ws://a", "ws://b", "ws://c", "ws://a", "ws://b"]);
    }
}
