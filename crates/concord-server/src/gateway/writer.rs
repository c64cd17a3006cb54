//! The writer task of one connection: drains the outbound queue, feeding every frame already
//! queued before one flush, then the latest presence frames.

use crate::metrics::Metrics;
use crate::outbound::{Frame, OutboundRx};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio_util::sync::CancellationToken;

pub async fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    done: CancellationToken,
    metrics: Metrics,
) {
    let _done = done.drop_guard();
    while let Some(first) = rx.recv().await {
        let mut next = first;
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
        if close.is_none() {
            // Queued frames first, then presence: it never delays durable events.
            for p in rx.take_presence() {
                metrics.presence_out.inc();
                if sink.feed(Message::Text(p)).await.is_err() {
                    return;
                }
            }
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
