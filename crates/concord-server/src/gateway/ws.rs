//! One WebSocket connection: the upgrade (Origin check, upgrade-request token), the reader
//! loop (handshake timeout, pings, idle timeout, token expiry, frame size), and shutdown.
//!
//! Message handling lives in `session.rs`, the writer task in `writer.rs`.

use super::credentials::bearer;
use super::frame_gate::{Admit, FrameGate};
use super::refusal::Refusal;
use super::session::{End, Session};
use super::writer::{writer, LAG_CLOSE_WAIT};
use super::App;
use crate::metrics::{Limit, RateScope};
use crate::outbound::{self, Frame};
use crate::room::RoomMsg;
use axum::extract::ws::Utf8Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use concord_protocol::{close, ErrorCode};
use futures::stream::SplitStream;
use futures::StreamExt;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Deserialize)]
pub struct UpgradeQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<UpgradeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = &app.shared.config;
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers.get(axum::http::header::HOST);
        if !super::guard::origin_allowed(cfg, origin, host) {
            let msg = "this Origin may not open a WebSocket here (see --allowed-origins)";
            let refusal = Refusal::new(ErrorCode::Forbidden, msg).limit(Limit::Origin);
            return refusal.http(&app.shared.metrics).into_response();
        }
    }
    let token = bearer(&headers).or(q.token);
    let buf = cfg.ws_buffer_bytes;
    let app2 = app.clone();
    ws.read_buffer_size(buf)
        .write_buffer_size(buf)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = app2.conns.clone();
            tracker.track_future(connection(app2, socket, token, peer))
        })
}

async fn connection(app: Arc<App>, socket: WebSocket, token: Option<String>, peer: SocketAddr) {
    let conn_id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
    // One span per connection (not per message); `client_id` is recorded by `hello`.
    let span = tracing::info_span!(
        "conn",
        conn = conn_id,
        %peer,
        client_id = tracing::field::Empty
    );
    serve(app, socket, token, conn_id).instrument(span).await
}

async fn serve(app: Arc<App>, socket: WebSocket, token: Option<String>, conn_id: u64) {
    let metrics = app.shared.metrics.clone();
    metrics.connections.inc();
    let (write_timeout, shutdown_grace) = (
        app.shared.config.write_timeout,
        app.shared.config.shutdown_grace,
    );
    let (sink, stream) = socket.split();
    let (out, out_rx) = outbound::channel(app.shared.config.max_queue_bytes, metrics.clone());
    let writer_done = CancellationToken::new();
    let mut writer = tokio::spawn(
        writer(
            sink,
            out_rx,
            writer_done.clone(),
            metrics.clone(),
            write_timeout,
        )
        .in_current_span(),
    );
    let mut session = Session::new(app, conn_id, out, token);
    let (end, stream) = read_loop(&mut session, stream, &writer_done).await;
    let lagging = matches!(end, End::Lagging);
    let closing = match end {
        End::Gone | End::PeerClosed | End::Lagging => None,
        End::Close(code, reason) => Some((code, reason)),
        End::Shutdown => {
            // Let publishes in flight get their acks before closing.
            session.drain_in_flight().await;
            Some((close::GOING_AWAY, "server shutting down"))
        }
    };
    if let Some((code, reason)) = closing {
        session.out.control(Frame::Close(code, reason));
    }
    for room in session.rooms.keys() {
        let msg = RoomMsg::Leave {
            conn_id: session.conn_id,
            notify: None,
        };
        let _ = session.app.registry.send(room, msg);
    }
    drop(session);
    // The writer sends what is queued, then the close frame; each write has the write timeout,
    // and the whole ending at most that long.
    let wait = closing.is_some() || lagging;
    let limit = match closing {
        // Shutdown already gave `shutdown_grace` to the answers in flight.
        Some((close::GOING_AWAY, _)) => write_timeout.min(shutdown_grace),
        _ => write_timeout,
    };
    let finished = wait && tokio::time::timeout(limit, &mut writer).await.is_ok();
    if !finished {
        // Nothing more goes out: end the writer, which drops its half of the socket.
        writer.abort();
        let _ = writer.await;
    }
    // Both halves dropped: the socket is closed, and with it the connection's slots of the
    // edge's limits (`max_conns`, `max_conns_per_ip`, held by the socket itself).
    drop(stream);
    metrics.connections.dec();
}

/// The tungstenite error behind an axum WebSocket error.
fn ws_error(e: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

/// How a failed read ends the connection: too big → 1009, invalid UTF-8 → 1007, a protocol
/// violation (bad opcode, reserved bits, unmasked or fragmented control frame…) → 1002; an I/O
/// error or a reset means the peer is gone.
fn read_error_end(e: &axum::Error, metrics: &crate::metrics::Metrics) -> End {
    use tungstenite::error::ProtocolError;
    match ws_error(e) {
        Some(tungstenite::Error::Capacity(_)) => {
            metrics.limit(Limit::MaxFrameBytes);
            End::Close(close::TOO_BIG, "frame larger than the limit")
        }
        Some(tungstenite::Error::Utf8(_)) => {
            End::Close(close::INVALID_DATA, "text frame is not valid UTF-8")
        }
        Some(tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::ReceivedAfterClosing,
        )) => End::Gone,
        Some(tungstenite::Error::Protocol(_)) => {
            End::Close(close::PROTOCOL_ERROR, "WebSocket protocol violation")
        }
        _ => End::Gone,
    }
}

/// Reads until the connection ends; gives the read half back so the caller decides when the
/// socket closes.
async fn read_loop(
    s: &mut Session,
    mut stream: SplitStream<WebSocket>,
    writer_done: &CancellationToken,
) -> (End, SplitStream<WebSocket>) {
    let end = read_frames(s, &mut stream, writer_done).await;
    if let End::PeerClosed = end {
        // A peer's close frame is answered by tungstenite on the next read: give it a moment.
        let wait = s.app.shared.config.write_timeout.min(LAG_CLOSE_WAIT);
        let _ = tokio::time::timeout(wait, stream.next()).await;
    }
    (end, stream)
}

async fn read_frames(
    s: &mut Session,
    stream: &mut SplitStream<WebSocket>,
    writer_done: &CancellationToken,
) -> End {
    let cfg = &s.app.shared.config;
    let (handshake_timeout, ping_interval, idle_timeout) =
        (cfg.handshake_timeout, cfg.ping_interval, cfg.idle_timeout);
    let mut frames = FrameGate::new(
        cfg.rate_frames_per_conn,
        cfg.flood_close_after.as_millis() as u64,
        &s.app.shared.clock,
    );
    let hello_deadline = tokio::time::Instant::now() + handshake_timeout;
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let shutdown = s.app.shutdown.clone();
    let lagged = s.out.lagged();
    let time = s.app.shared.time.clone();
    // A data frame read while the frame rate had no token: it waits, and the socket is not
    // read, until `paused_until`.
    let mut held: Option<Message> = None;
    let mut paused_until: Option<u64> = None;
    loop {
        let auth_deadline = s.auth_deadline;
        let admitted = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            _ = lagged.cancelled() => return End::Lagging,
            _ = writer_done.cancelled() => return End::Gone,
            _ = tokio::time::sleep_until(hello_deadline), if !s.greeted() => {
                s.app.shared.metrics.limit(Limit::HandshakeTimeout);
                return End::Close(close::POLICY, "no hello within the handshake timeout");
            }
            _ = time.sleep_until_ms(auth_deadline.unwrap_or(0)), if auth_deadline.is_some() => {
                if let Err(end) = s.on_auth_deadline() {
                    return end;
                }
                None
            }
            _ = time.sleep_until_ms(s.presence.due().unwrap_or(0)), if s.presence.due().is_some() => {
                s.release_presence();
                None
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > idle_timeout {
                    s.app.shared.metrics.limit(Limit::IdleTimeout);
                    return End::Close(close::GOING_AWAY, "idle timeout");
                }
                s.out.control(Frame::Ping);
                None
            }
            _ = time.sleep_until_ms(paused_until.unwrap_or(0)), if paused_until.is_some() => {
                paused_until = None;
                let admit = frames.admit();
                match gate(s, admit, &mut held, &mut paused_until) {
                    Ok(m) => m,
                    Err(end) => return end,
                }
            }
            msg = stream.next(), if paused_until.is_none() => {
                let msg = match msg {
                    None => return End::Gone,
                    Some(Err(e)) => return read_error_end(&e, &s.app.shared.metrics),
                    Some(Ok(m)) => m,
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        held = Some(msg);
                        let admit = frames.admit();
                        match gate(s, admit, &mut held, &mut paused_until) {
                    Ok(m) => m,
                    Err(end) => return end,
                }
                    }
                    Message::Close(_) => return End::PeerClosed,
                    Message::Ping(_) | Message::Pong(_) => None,
                }
            }
        };
        match admitted {
            Some(Message::Text(t)) => {
                if let Err(end) = s.on_text(&t).await {
                    return end;
                }
            }
            Some(Message::Binary(_)) => s.refuse(Refusal::bad_request(
                "binary frames are not supported; send JSON text frames",
            )),
            _ => {}
        }
    }
}

/// Applies the frame rate's answer to the held frame: handed back to be handled now, or kept
/// while reading pauses (with a `rate_limited` notice when one is due), or the connection
/// closes.
fn gate(
    s: &Session,
    admit: Admit,
    held: &mut Option<Message>,
    paused_until: &mut Option<u64>,
) -> Result<Option<Message>, End> {
    let metrics = &s.app.shared.metrics;
    match admit {
        Admit::Now => Ok(held.take()),
        Admit::Pause { until, notice } => {
            metrics.rate_limit(RateScope::Frames);
            *paused_until = Some(until);
            if let Some(retry) = notice {
                let msg = "this connection sends frames faster than its limit: \
                           the server reads it again after retry_after_ms";
                let refusal =
                    Refusal::new(ErrorCode::RateLimited, msg).rate(RateScope::Frames, retry);
                metrics.error(ErrorCode::RateLimited);
                s.out.send(Utf8Bytes::from(refusal.frame()));
            }
            Ok(None)
        }
        Admit::Close => {
            metrics.limit(Limit::FloodCloseAfter);
            Err(End::Close(close::POLICY, "sustained flooding"))
        }
    }
}
