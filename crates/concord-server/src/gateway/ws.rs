//! One WebSocket connection: handshake, decoding, validation, routing to rooms, and the writer.
//!
//! A reader loop decodes frames and sends work to room actors; a writer task drains the
//! connection's outbound queue, feeding every frame already queued before one flush.

use super::App;
use crate::outbound::{self, ConnHandle, Frame, Outbound, OutboundRx};
use crate::room::{Publish, Reply, RoomMsg, Waiter};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use concord_core::{ClientId, OpId, RoomId, RoomKind};
use concord_protocol::{close, decode_client, outbound as wire, ClientMsg, ErrorCode};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

pub async fn upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    let cfg = &app.shared.config;
    let buf = cfg.ws_buffer_bytes;
    let app2 = app.clone();
    ws.read_buffer_size(buf)
        .write_buffer_size(buf)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = app2.conns.clone();
            tracker.track_future(connection(app2, socket))
        })
}

/// Why the reader loop ended.
enum End {
    /// The peer closed or the socket failed; nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Server shutdown: drain acks, then close 1001.
    Shutdown,
}

struct Conn {
    app: Arc<App>,
    conn_id: u64,
    out: Outbound,
    client: Option<ClientId>,
    /// Joined (or joining) rooms; the receiver says whether a pending join succeeded.
    rooms: HashMap<RoomId, Option<oneshot::Receiver<bool>>>,
    permits: Arc<Semaphore>,
}

async fn connection(app: Arc<App>, socket: WebSocket) {
    let metrics = app.shared.metrics.clone();
    metrics.connections.inc();
    let cfg = &app.shared.config;
    let (sink, stream) = socket.split();
    let (out, out_rx) = outbound::channel(cfg.max_queue_bytes, metrics.clone());
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(writer(sink, out_rx, writer_done.clone(), metrics.clone()));
    let mut conn = Conn {
        conn_id: app.next_conn_id.fetch_add(1, Ordering::Relaxed),
        permits: Arc::new(Semaphore::new(cfg.max_inflight_per_conn)),
        app,
        out,
        client: None,
        rooms: HashMap::new(),
    };
    let end = conn.read_loop(stream, &writer_done).await;
    match end {
        End::Gone => {}
        End::Close(code, reason) => {
            conn.out.control(Frame::Close(code, reason));
        }
        End::Shutdown => {
            // Let publishes in flight get their acks before closing.
            let grace = conn.app.shared.config.shutdown_grace;
            let all = conn.app.shared.config.max_inflight_per_conn as u32;
            let _ = tokio::time::timeout(grace, conn.permits.acquire_many(all)).await;
            conn.out
                .control(Frame::Close(close::GOING_AWAY, "server shutting down"));
        }
    }
    for room in conn.rooms.keys() {
        let _ = conn.app.registry.send(
            room,
            RoomMsg::Leave {
                conn_id: conn.conn_id,
                notify: None,
            },
        );
    }
    drop(conn);
    // The writer ends once it sent the close frame or every room dropped this connection.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    metrics.connections.dec();
}

async fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    done: CancellationToken,
    metrics: crate::metrics::Metrics,
) {
    let _done = done.drop_guard();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = None;
        while let Some(frame) = next.take() {
            match frame {
                Frame::Text(t) => {
                    let n = t.len();
                    if sink.feed(Message::Text(t)).await.is_err() {
                        return;
                    }
                    rx.written(n);
                }
                Frame::Ping => {
                    if sink.feed(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                Frame::Close(code, reason) => {
                    close = Some((code, reason));
                    break;
                }
            }
            next = rx.try_recv();
        }
        if sink.flush().await.is_err() {
            return;
        }
        if let Some((code, reason)) = close {
            metrics.disconnect(code);
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return;
        }
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(tungstenite::Error::Capacity(_)) = s.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

impl Conn {
    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        writer_done: &CancellationToken,
    ) -> End {
        let cfg = self.app.shared.config.clone();
        let hello_deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
        let mut ping = tokio::time::interval(cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_seen = Instant::now();
        let shutdown = self.app.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = writer_done.cancelled() => return End::Gone,
                _ = tokio::time::sleep_until(hello_deadline), if self.client.is_none() => {
                    self.app.shared.metrics.limit("handshake_timeout");
                    return End::Close(close::POLICY, "no hello within the handshake timeout");
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > cfg.idle_timeout {
                        self.app.shared.metrics.limit("idle_timeout");
                        return End::Close(close::GOING_AWAY, "idle timeout");
                    }
                    self.out.control(Frame::Ping);
                }
                msg = stream.next() => {
                    let msg = match msg {
                        None => return End::Gone,
                        Some(Err(e)) if is_too_big(&e) => {
                            self.app.shared.metrics.limit("max_frame_bytes");
                            return End::Close(close::TOO_BIG, "frame larger than the limit");
                        }
                        Some(Err(_)) => return End::Gone,
                        Some(Ok(m)) => m,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(t) => self.on_text(&t).await,
                        Message::Binary(_) => self.error(None, None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames"),
                        Message::Close(_) => return End::Gone,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        }
    }

    fn error(&self, id: Option<&str>, room: Option<&str>, code: ErrorCode, message: &str) {
        self.app.shared.metrics.error(code);
        self.out
            .send(Utf8Bytes::from(wire::error(id, room, code, message, None)));
    }

    async fn on_text(&mut self, text: &str) {
        self.app.shared.metrics.frames_in.inc();
        let msg = match decode_client(text) {
            Ok(m) => m,
            Err(e) => {
                return self.error(
                    e.id.as_deref(),
                    e.room.as_deref(),
                    ErrorCode::BadRequest,
                    &e.message,
                );
            }
        };
        let Some(client) = self.client.clone() else {
            return match msg {
                ClientMsg::Hello { client_id, .. } => self.hello(&client_id),
                other => self.error(
                    None,
                    None,
                    ErrorCode::BadRequest,
                    &format!("{} before hello: send hello first", other.type_name()),
                ),
            };
        };
        match msg {
            ClientMsg::Hello { .. } => self.error(
                None,
                None,
                ErrorCode::BadRequest,
                "hello was already sent on this connection",
            ),
            ClientMsg::Join {
                room,
                kind,
                since,
                history,
            } => self.join(client, &room, kind.as_deref(), since, history),
            ClientMsg::Leave { room } => self.leave(&room),
            ClientMsg::Publish { room, id, data } => self.publish(client, &room, &id, data).await,
        }
    }

    fn hello(&mut self, client_id: &str) {
        match ClientId::new(client_id) {
            Ok(c) => {
                let shared = &self.app.shared;
                self.out.send(Utf8Bytes::from(wire::welcome(
                    c.as_str(),
                    &shared.config.node_id,
                    shared.clock.now_ms(),
                )));
                self.client = Some(c);
            }
            Err(e) => self.error(None, None, ErrorCode::BadRequest, &e.to_string()),
        }
    }

    fn room(&self, name: &str, id: Option<&str>) -> Option<RoomId> {
        match RoomId::new(name) {
            Ok(r) => Some(r),
            Err(e) => {
                let shown: String = name.chars().take(128).collect();
                self.error(id, Some(&shown), ErrorCode::BadRequest, &e.to_string());
                None
            }
        }
    }

    /// Forgets rooms whose join was refused.
    fn prune_failed_joins(&mut self) {
        self.rooms.retain(|_, pending| match pending {
            None => true,
            Some(rx) => match rx.try_recv() {
                Ok(true) => {
                    *pending = None;
                    true
                }
                Ok(false) | Err(oneshot::error::TryRecvError::Closed) => false,
                Err(oneshot::error::TryRecvError::Empty) => true,
            },
        });
    }

    fn join(
        &mut self,
        client: ClientId,
        name: &str,
        kind: Option<&str>,
        since: Option<concord_protocol::Since>,
        history: Option<u64>,
    ) {
        let Some(room) = self.room(name, None) else {
            return;
        };
        let kind = match kind.map(RoomKind::parse).transpose() {
            Ok(k) => k,
            Err(e) => return self.error(None, Some(name), ErrorCode::BadRequest, &e.to_string()),
        };
        let cfg = self.app.shared.config.clone();
        let history = history.unwrap_or(0);
        if history > cfg.max_history {
            self.app.shared.metrics.limit("max_history");
            let msg = format!("history must be at most {}", cfg.max_history);
            return self.error(None, Some(name), ErrorCode::BadRequest, &msg);
        }
        self.prune_failed_joins();
        if !self.rooms.contains_key(&room) && self.rooms.len() >= cfg.max_rooms_per_conn {
            self.app.shared.metrics.limit("max_rooms_per_conn");
            let msg = format!(
                "a connection may join at most {} rooms",
                cfg.max_rooms_per_conn
            );
            return self.error(None, Some(name), ErrorCode::BadRequest, &msg);
        }
        let (tx, rx) = oneshot::channel();
        let conn = ConnHandle {
            conn_id: self.conn_id,
            client,
            out: self.out.clone(),
        };
        let msg = RoomMsg::Join {
            conn,
            kind,
            since,
            history,
            joined: tx,
        };
        if self.app.registry.send(&room, msg).is_err() {
            return self.error(
                None,
                Some(name),
                ErrorCode::Unavailable,
                "server is shutting down",
            );
        }
        self.rooms.insert(room, Some(rx));
    }

    fn leave(&mut self, name: &str) {
        let Some(room) = self.room(name, None) else {
            return;
        };
        self.prune_failed_joins();
        if self.rooms.remove(&room).is_none() {
            return self.error(
                None,
                Some(name),
                ErrorCode::NotFound,
                "not a member of this room",
            );
        }
        let msg = RoomMsg::Leave {
            conn_id: self.conn_id,
            notify: Some(self.out.clone()),
        };
        if self.app.registry.send(&room, msg).is_err() {
            self.out.send(Utf8Bytes::from(wire::left(name)));
        }
    }

    async fn publish(
        &mut self,
        client: ClientId,
        name: &str,
        id: &str,
        data: Box<serde_json::value::RawValue>,
    ) {
        let received = Instant::now();
        let Some(room) = self.room(name, Some(id)) else {
            return;
        };
        let op_id = match OpId::new(id) {
            Ok(i) => i,
            Err(e) => return self.error(None, Some(name), ErrorCode::BadRequest, &e.to_string()),
        };
        let max = self.app.shared.config.max_data_bytes;
        if data.get().len() > max {
            self.app.shared.metrics.limit("max_data_bytes");
            return self.error(
                Some(id),
                Some(name),
                ErrorCode::TooLarge,
                &format!("data is larger than {max} bytes"),
            );
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let msg = RoomMsg::Publish(Publish {
            client,
            data,
            create: false,
            waiter: Waiter {
                id: Some(op_id),
                received,
                reply: Reply::Ws {
                    out: self.out.clone(),
                    _permit: permit,
                },
            },
        });
        if self.app.registry.send(&room, msg).is_err() {
            self.error(
                Some(id),
                Some(name),
                ErrorCode::Unavailable,
                "server is shutting down",
            );
        }
    }
}
