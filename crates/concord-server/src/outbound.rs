//! The per-connection outbound queue: unbounded channel, bounded in bytes, with lag detection.
//!
//! Room actors and the connection itself push frames; one writer task per connection drains
//! them to the socket. When the bytes queued for a connection pass the bound, the connection is
//! marked lagging: nothing more is queued for it and it is closed with 4008, so the client
//! reconnects and recovers with `since` — committed events are never dropped silently.

use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use concord_core::ClientId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    /// Queues a frame. Returns false if the connection is gone or lagging (it will be closed
    /// with 4008 by this call if it just crossed the bound).
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        if self.shared.lagging.load(Ordering::Relaxed) {
            return false;
        }
        let n = frame.len();
        let before = self.shared.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.shared.max && before > 0 {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            if !self.shared.lagging.swap(true, Ordering::Relaxed) {
                self.shared.metrics.limit("max_queue_bytes");
                let _ = self.tx.send(Frame::Close(
                    concord_protocol::close::LAGGING,
                    "lagging too far behind: reconnect and recover with since",
                ));
            }
            return false;
        }
        if self.tx.send(Frame::Text(frame)).is_err() {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a control frame outside the byte bound.
    pub fn control(&self, frame: Frame) -> bool {
        self.tx.send(frame).is_ok()
    }

    pub fn is_lagging(&self) -> bool {
        self.shared.lagging.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl OutboundRx {
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }
    /// Tells the accounting that a text frame of `n` bytes left the queue.
    pub fn written(&self, n: usize) {
        self.shared.queued.fetch_sub(n, Ordering::Relaxed);
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
    pub out: Outbound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn crossing_the_bound_closes_with_4008_once() {
        let (out, mut rx) = channel(10, Metrics::new());
        assert!(out.send(Utf8Bytes::from("123456")));
        assert!(!out.send(Utf8Bytes::from("123456")));
        assert!(out.is_lagging());
        assert!(!out.send(Utf8Bytes::from("1")));
        assert!(matches!(rx.recv().await, Some(Frame::Text(_))));
        assert!(matches!(rx.recv().await, Some(Frame::Close(4008, _))));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_single_large_frame_is_allowed_when_the_queue_is_empty() {
        let (out, mut rx) = channel(4, Metrics::new());
        assert!(out.send(Utf8Bytes::from("much more than four bytes")));
        let Some(Frame::Text(t)) = rx.recv().await else {
            panic!()
        };
        rx.written(t.len());
        assert!(out.send(Utf8Bytes::from("ok")));
    }
}
