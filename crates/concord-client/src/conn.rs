//! Opening one connection: WebSocket handshake, `hello`, wait for `welcome`.

use concord_protocol::{decode_server, ServerMsg};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A custom TLS configuration for `wss://` (feature `tls`).
#[cfg(feature = "tls")]
pub(crate) type Tls = std::sync::Arc<rustls::ClientConfig>;
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

type Handshake = Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
>;

/// The WebSocket handshake (over TLS for `wss://`, which needs feature `tls`).
#[cfg(feature = "tls")]
async fn connect(url: &str, tls: Option<Tls>) -> Handshake {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await
}

#[cfg(not(feature = "tls"))]
async fn connect(url: &str, _tls: Option<Tls>) -> Handshake {
    tokio_tungstenite::connect_async_with_config(url, None, true).await
}

/// Connects to `url`, sends the `hello` frame and returns once `welcome` arrived.
/// An `error` before `welcome` (e.g. `unauthorized`) is returned as [`ClientError::Server`].
pub(crate) async fn establish(
    url: String,
    hello: String,
    timeout: Duration,
    tls: Option<Tls>,
) -> Result<Ws, ClientError> {
    let attempt = async {
        let (mut ws, _response) = connect(url.as_str(), tls)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        ws.send(Message::text(hello))
            .await
            .map_err(|e| ClientError::Connect(format!("sending hello: {e}")))?;
        loop {
            let frame = match ws.next().await {
                None => return Err(ClientError::Connect("closed before welcome".into())),
                Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            match frame {
                Message::Text(text) => match decode_server(&text) {
                    Ok(ServerMsg::Welcome(w)) => {
                        tracing::debug!(%url, node = %w.node, "welcome");
                        return Ok(ws);
                    }
                    Ok(ServerMsg::Error(e)) => {
                        return Err(ClientError::server(
                            e.code.into_owned(),
                            e.message.into_owned(),
                            e.retry_after_ms,
                        ))
                    }
                    other => tracing::debug!(?other, "ignoring frame before welcome"),
                },
                Message::Close(close) => {
                    let why = close.map_or_else(|| "no code".to_string(), |c| c.to_string());
                    return Err(ClientError::Connect(format!(
                        "closed before welcome: {why}"
                    )));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Connect(format!(
                "no welcome within {timeout:?}"
            )))
        })
}
