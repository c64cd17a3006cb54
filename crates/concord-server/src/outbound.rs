//! The per-connection outbound queue: unbounded channel, bounded in bytes, with lag detection.
//!
//! Room actors and the connection itself push frames; one writer task per connection drains
//! them to the socket. Each queued text frame counts its payload plus [`FRAME_OVERHEAD`] bytes
//! (WebSocket header and bookkeeping), so a flood of tiny frames is bounded too. When the bytes
//! queued for a connection pass the bound, the connection is marked lagging: nothing more is
//! queued for it, the writer is told at once (it discards the backlog, tries to send close 4008
//! and closes the socket), so the client reconnects and recovers with `since` — committed
//! events are never dropped silently.
//!
//! Presence does not go through the queue: it goes to a per-connection slot that keeps only the
//! latest frame per (room, client). The writer sends it after every queued frame, so presence
//! never delays or displaces durable events and a slow connection gets only the latest values.

use crate::metrics::{Limit, Metrics};
use axum::extract::ws::Utf8Bytes;
use concord_core::ClientId;
use concord_core::RoomId;
use concord_protocol::outbound::MemberInfo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Bytes counted for each queued text frame on top of its payload: the WebSocket frame header,
/// the channel slot and the allocation behind it.
pub const FRAME_OVERHEAD: usize = 64;

/// What the writer task sends.
#[derive(Debug)]
pub enum Frame {
    Text(Utf8Bytes),
    Ping,
    Close(u16, &'static str),
}

struct Shared {
    queued: AtomicUsize,
    lagging: AtomicBool,
    max: usize,
    metrics: Metrics,
    presence: Mutex<HashMap<(RoomId, ClientId), Utf8Bytes>>,
    presence_ready: Notify,
    /// Cancelled when the connection crossed the bound: the writer stops at once.
    lagged: CancellationToken,
}

/// The sending side, cloned into every room the connection joined.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
}

/// The writer task's side.
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Frame>,
    shared: Arc<Shared>,
}

pub fn channel(max_bytes: usize, metrics: Metrics) -> (Outbound, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        lagging: AtomicBool::new(false),
        max: max_bytes,
        metrics,
        presence: Mutex::new(HashMap::new()),
        presence_ready: Notify::new(),
        lagged: CancellationToken::new(),
    });
    (
        Outbound {
            tx,
            shared: shared.clone(),
        },
        OutboundRx { rx, shared },
    )
}

impl Outbound {
    /// Queues a frame. Returns false if the connection is gone or lagging (if this call made it
    /// cross the bound, the writer is told to close with 4008 at once).
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        if self.shared.lagging.load(Ordering::Relaxed) {
            return false;
        }
        let n = frame.len() + FRAME_OVERHEAD;
        let before = self.shared.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.shared.max && before > 0 {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            if !self.shared.lagging.swap(true, Ordering::Relaxed) {
                self.shared.metrics.limit(Limit::MaxQueueBytes);
                self.shared.lagged.cancel();
            }
            return false;
        }
        if self.tx.send(Frame::Text(frame)).is_err() {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Sets the latest presence frame of `client` in `room` for this connection, replacing one
    /// not yet written.
    pub fn presence(&self, room: &RoomId, client: &ClientId, frame: Utf8Bytes) {
        if self.shared.lagging.load(Ordering::Relaxed) {
            return;
        }
        let replaced = self
            .shared
            .presence
            .lock()
            .insert((room.clone(), client.clone()), frame);
        if replaced.is_some() {
            self.shared.metrics.presence_coalesced.inc();
        }
        self.shared.presence_ready.notify_one();
    }

    /// Queues a control frame outside the byte bound.
    pub fn control(&self, frame: Frame) -> bool {
        self.tx.send(frame).is_ok()
    }

    pub fn is_lagging(&self) -> bool {
        self.shared.lagging.load(Ordering::Relaxed)
    }

    /// Cancelled when the connection crossed the bound: its reader stops at once.
    pub fn lagged(&self) -> CancellationToken {
        self.shared.lagged.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl OutboundRx {
    /// The next frame; `Some(None)` means presence is waiting (see [`Self::take_presence`]).
    pub async fn recv(&mut self) -> Option<Option<Frame>> {
        tokio::select! {
            biased;
            f = self.rx.recv() => f.map(Some),
            _ = self.shared.presence_ready.notified() => Some(None),
        }
    }
    /// Every pending presence frame (latest per room and client).
    pub fn take_presence(&self) -> Vec<Utf8Bytes> {
        let mut p = self.shared.presence.lock();
        if p.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *p).into_values().collect()
    }
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }
    /// Tells the accounting that a text frame of `n` payload bytes left the queue.
    pub fn written(&self, n: usize) {
        self.shared
            .queued
            .fetch_sub(n + FRAME_OVERHEAD, Ordering::Relaxed);
    }
    /// Cancelled when the connection crossed the bound and must be closed with 4008 now.
    pub fn lagged(&self) -> CancellationToken {
        self.shared.lagged.clone()
    }
    pub fn is_lagging(&self) -> bool {
        self.shared.lagging.load(Ordering::Relaxed)
    }
}

/// A connection as rooms see it.
#[derive(Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub client: ClientId,
    /// Who it is, as other members see it (user id and token metadata).
    pub member: Arc<MemberInfo>,
    pub out: Outbound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presence_keeps_only_the_latest_value_per_room_and_client() {
        let (out, mut rx) = channel(100, Metrics::new());
        let room = RoomId::new("r").unwrap();
        let (a, b) = (ClientId::new("a").unwrap(), ClientId::new("b").unwrap());
        for i in 0..5 {
            out.presence(&room, &a, Utf8Bytes::from(format!("a{i}")));
        }
        out.presence(&room, &b, Utf8Bytes::from("b0"));
        assert!(matches!(rx.recv().await, Some(None)));
        let mut got: Vec<String> = rx.take_presence().iter().map(|f| f.to_string()).collect();
        got.sort();
        assert_eq!(got, vec!["a4", "b0"]);
        assert!(rx.take_presence().is_empty());
    }

    #[tokio::test]
    async fn crossing_the_bound_tells_the_writer_at_once() {
        let (out, rx) = channel(2 * FRAME_OVERHEAD + 10, Metrics::new());
        let lagged = rx.lagged();
        assert!(out.send(Utf8Bytes::from("123456")));
        assert!(!lagged.is_cancelled());
        assert!(!out.send(Utf8Bytes::from("123456")));
        assert!(out.is_lagging());
        assert!(lagged.is_cancelled());
        assert!(!out.send(Utf8Bytes::from("1")));
    }

    #[tokio::test]
    async fn tiny_frames_count_their_overhead() {
        let (out, _rx) = channel(100 * FRAME_OVERHEAD, Metrics::new());
        let sent = (0..1000)
            .take_while(|_| out.send(Utf8Bytes::from("x")))
            .count();
        assert!(sent < 100, "{sent} one-byte frames fit in 100 overheads");
        assert!(out.is_lagging());
    }

    #[tokio::test]
    async fn a_single_large_frame_is_allowed_when_the_queue_is_empty() {
        let (out, mut rx) = channel(FRAME_OVERHEAD + 4, Metrics::new());
        assert!(out.send(Utf8Bytes::from("much more than four bytes")));
        let Some(Some(Frame::Text(t))) = rx.recv().await else {
            panic!()
        };
        rx.written(t.len());
        assert!(out.send(Utf8Bytes::from("ok")));
    }
}
