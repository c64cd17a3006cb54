//! The writer task of one connection: drains the outbound queue, feeding every frame already
//! queued before one flush, then the latest presence frames. Every socket write has a timeout,
//! and a lagging connection is closed at once (4008 ahead of the discarded backlog).
//!
//! The write timeout is enforced below this task, by the edge's socket (`edge/io.rs`): a write
//! that makes no progress for `write_timeout` fails there, which ends this task. Feeding a frame
//! therefore needs no timer of its own (one per frame cost a fifth of the fan-out latency); only
//! the final close frame is bounded here.

use crate::metrics::{Limit, Metrics};
use crate::outbound::{Frame, OutboundRx};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a lagging connection's close 4008 may take to be written before the socket is
/// closed without it (at most the write timeout).
pub const LAG_CLOSE_WAIT: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocket, Message>;

/// Why the writer stopped.
enum Stop {
    /// The socket failed or every sender is gone.
    Gone,
    /// A write made no progress within the write timeout.
    Stalled,
    /// Close with this code and reason (already written, or not writable).
    Closed,
}

/// Runs until the queue ends, the socket fails or stalls, a close was written, or the
/// connection lags; `done` is cancelled when it returns. The caller drops the socket after it.
pub async fn writer(
    mut sink: Sink,
    mut rx: OutboundRx,
    done: CancellationToken,
    metrics: Metrics,
    write_timeout: Duration,
) {
    let _done = done.drop_guard();
    let lagged = rx.lagged();
    let stop = tokio::select! {
        biased;
        _ = lagged.cancelled() => None,
        stop = drain(&mut sink, &mut rx, &metrics, write_timeout) => Some(stop),
    };
    match stop {
        None => {
            // Lagging: the backlog is discarded; the close goes out ahead of it if it can.
            let code = concord_protocol::close::LAGGING;
            metrics.disconnect(code);
            let reason = "lagging too far behind: reconnect and recover with since";
            let wait = LAG_CLOSE_WAIT.min(write_timeout);
            let _ = tokio::time::timeout(wait, sink.send(close(code, reason))).await;
        }
        Some(Stop::Stalled) => {
            metrics.limit(Limit::WriteTimeout);
            tracing::debug!("a socket write made no progress within the write timeout");
        }
        Some(Stop::Gone | Stop::Closed) => {}
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// One socket operation, bounded by the write timeout (for the close frame).
async fn timed<E>(t: Duration, op: impl Future<Output = Result<(), E>>) -> Result<(), Stop> {
    match tokio::time::timeout(t, op).await {
        Ok(r) => written(r),
        Err(_) => Err(Stop::Stalled),
    }
}

/// The outcome of one socket operation: an error (the edge's write timeout included) ends it.
fn written<E>(r: Result<(), E>) -> Result<(), Stop> {
    r.map_err(|_| Stop::Gone)
}

async fn drain(sink: &mut Sink, rx: &mut OutboundRx, metrics: &Metrics, t: Duration) -> Stop {
    match drain_inner(sink, rx, metrics, t).await {
        Ok(()) => Stop::Gone,
        Err(stop) => stop,
    }
}

async fn drain_inner(
    sink: &mut Sink,
    rx: &mut OutboundRx,
    metrics: &Metrics,
    t: Duration,
) -> Result<(), Stop> {
    while let Some(first) = rx.recv().await {
        let mut next = first;
        let mut closing = None;
        while let Some(frame) = next.take() {
            match frame {
                Frame::Text(text) => {
                    let n = text.len();
                    written(sink.feed(Message::Text(text)).await)?;
                    rx.written(n);
                }
                Frame::Ping => written(sink.feed(Message::Ping(Default::default())).await)?,
                Frame::Close(code, reason) => {
                    closing = Some((code, reason));
                    break;
                }
            }
            next = rx.try_recv();
        }
        if closing.is_none() {
            // Queued frames first, then presence: it never delays durable events.
            for p in rx.take_presence() {
                metrics.presence_out.inc();
                written(sink.feed(Message::Text(p)).await)?;
            }
        }
        written(sink.flush().await)?;
        if let Some((code, reason)) = closing {
            metrics.disconnect(code);
            timed(t, sink.send(close(code, reason))).await?;
            return Err(Stop::Closed);
        }
    }
    Ok(())
}
