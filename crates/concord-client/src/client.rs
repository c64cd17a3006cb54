//! The `Client` handle: connect, join, publish, leave, close; it talks to the task over a channel.

use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{ClientConfig, JoinOptions};
use crate::doc::{Doc, DocOptions};
use crate::error::ClientError;
use crate::room::Room;
use crate::task::{Command, Task};
use crate::wire;

/// The server's acknowledgement of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub room: String,
    pub id: String,
    pub seq: u64,
    pub hlc: String,
}

/// Counters of the client's life so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions re-established after a lost connection (welcome received again).
    pub reconnects: u64,
    /// Publish frames sent again with an id already sent (after a reconnect or `unavailable`).
    pub resent_publishes: u64,
    /// Server messages that broke the protocol's promises (live gap, bad recovery).
    pub protocol_violations: u64,
    /// Times a doc's state was found to differ from the server's (a state hash mismatch, or
    /// committed ops that did not apply); each was reported with `drift` and resynced.
    pub drift: u64,
}

impl Stats {
    /// The counters as (metric name, value) pairs, named like Prometheus counters:
    /// `concord_client_reconnects_total`, `concord_client_resent_publishes_total`,
    /// `concord_client_protocol_violations_total`, `concord_client_drift_total`.
    pub fn counters(&self) -> [(&'static str, u64); 4] {
        [
            ("concord_client_reconnects_total", self.reconnects),
            (
                "concord_client_resent_publishes_total",
                self.resent_publishes,
            ),
            (
                "concord_client_protocol_violations_total",
                self.protocol_violations,
            ),
            ("concord_client_drift_total", self.drift),
        ]
    }

    /// The counters in the Prometheus text format (one `# TYPE` line and one sample each).
    pub fn to_prometheus(&self) -> String {
        self.counters()
            .iter()
            .map(|(name, v)| format!("# TYPE {name} counter\n{name} {v}\n"))
            .collect()
    }
}

/// Counters shared by the task (writer) and the handles (readers).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reconnects: AtomicU64,
    pub resent_publishes: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub drift: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Inner {
    client_id: String,
    ack_timeout: Option<std::time::Duration>,
    cmds: mpsc::UnboundedSender<Command>,
    connected: watch::Receiver<bool>,
    counters: Arc<Counters>,
    /// Publish ids are `p-<nonce>-<n>`: the nonce keeps a reused `client_id` from colliding
    /// with the ids of an earlier process (the server dedupes by (client_id, id)).
    id_nonce: String,
    next_id: AtomicU64,
}

/// A connection to a Concord server that survives disconnects: one background task owns the
/// WebSocket, reconnects with backoff, rejoins rooms from their last seq and resends unacked
/// publishes with their original ids. Cheap to clone; the task stops when the last clone is
/// dropped or [`close`](Client::close) is called.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects, and returns once the server's first `welcome` arrived. Fails if that first
    /// connection fails (later disconnects are retried forever, except `unauthorized`).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let (first_tx, first_rx) = oneshot::channel();
        let id_nonce = format!("{:08x}", rand::random::<u32>());
        let inner = Inner {
            client_id: config.client_id.clone(),
            ack_timeout: config.ack_timeout,
            cmds: cmd_tx,
            connected: connected_rx,
            counters: counters.clone(),
            id_nonce: id_nonce.clone(),
            next_id: AtomicU64::new(1),
        };
        let task = Task::new(config, cmd_rx, connected_tx, counters, id_nonce);
        // In the caller's span: an application (or a test) running many clients tells their logs apart.
        tokio::spawn(tracing::Instrument::in_current_span(task.run(first_tx)));
        first_rx.await.map_err(|_| ClientError::Closed)??;
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// This client's id (sent in `hello`).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Joins a room; returns after `joined` (or the server's `error` for the room, e.g.
    /// `not_found`, `kind_mismatch`, `forbidden`). Waits through reconnects.
    pub async fn join(&self, room: &str, opts: JoinOptions) -> Result<Room, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            room: room.to_string(),
            opts,
            reply,
        })?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Joins a doc room (creating it first if `opts.create`); returns after `joined`, with the
    /// doc's state as the local replica (or the server's `error`, e.g. `not_found`). A room of
    /// another kind fails with [`ClientError::UnsupportedKind`]. Waits through reconnects.
    pub async fn join_doc(&self, room: &str, opts: DocOptions) -> Result<Doc, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::JoinDoc {
            room: room.to_string(),
            opts,
            reply,
        })?;
        let parts = rx.await.map_err(|_| ClientError::Closed)??;
        Ok(Doc::new(
            room.to_string(),
            parts,
            self.inner.cmds.downgrade(),
        ))
    }

    /// Leaves a room (stream or doc): its [`Room`] or [`Doc`] ends and it is no longer
    /// rejoined. Returns after `left`, or at once when disconnected.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Leave {
            room: room.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Publishes `data` to `room` with a fresh id (`p-<nonce>-<n>`). The publish is queued at
    /// once (awaiting is not needed for it to be sent); the future resolves with its ack.
    pub fn publish(&self, room: &str, data: Value) -> AckFuture {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("p-{}-{n}", self.inner.id_nonce);
        self.publish_with_id(room, id, data)
    }

    /// Publishes with a caller-chosen id. Publishing an id again (even from a new process with
    /// the same `client_id`) returns the original ack and appends nothing.
    pub fn publish_with_id(&self, room: &str, id: impl Into<String>, data: Value) -> AckFuture {
        let id = id.into();
        let frame = match wire::publish(room, &id, &data) {
            Ok(frame) => frame,
            Err(e) => return AckFuture::failed(e),
        };
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            room: room.to_string(),
            id,
            frame: frame.into(),
            deadline: self.inner.ack_timeout.map(|t| Instant::now() + t),
            reply,
        };
        match self.send(cmd) {
            Ok(()) => AckFuture { rx: Ok(rx) },
            Err(e) => AckFuture::failed(e),
        }
    }

    /// Closes the connection gracefully and stops the task. Unacked publishes and pending
    /// joins fail with [`ClientError::Closed`]; rooms end.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Close { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether a session is up and every room has been rejoined.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until [`is_connected`](Client::is_connected); fails once the client is closed.
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut rx = self.inner.connected.clone();
        rx.wait_for(|up| *up)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            reconnects: c.reconnects.load(Ordering::Relaxed),
            resent_publishes: c.resent_publishes.load(Ordering::Relaxed),
            protocol_violations: c.protocol_violations.load(Ordering::Relaxed),
            drift: c.drift.load(Ordering::Relaxed),
        }
    }

    fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.inner.cmds.send(cmd).map_err(|_| ClientError::Closed)
    }
}

/// Resolves with the [`Ack`] of a publish (or its error). Dropping it does not cancel the
/// publish.
#[derive(Debug)]
#[must_use = "the publish is sent anyway; await this to learn its ack"]
pub struct AckFuture {
    rx: Result<oneshot::Receiver<Result<Ack, ClientError>>, Option<ClientError>>,
}

impl AckFuture {
    fn failed(e: ClientError) -> Self {
        AckFuture { rx: Err(Some(e)) }
    }
}

impl Future for AckFuture {
    type Output = Result<Ack, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.rx {
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(ClientError::Closed))),
            Err(e) => Poll::Ready(Err(e.take().unwrap_or(ClientError::Closed))),
        }
    }
}
