//! One page of `GET /v1/rooms/{room}/events`, streamed: events are read from the store a few at
//! a time as the client takes the body, and the page stops at `max_page_bytes` (with at least
//! one event), so a reader that stalls pins one small chunk, not the page.

use super::App;
use crate::metrics::Limit;
use crate::room::event_frame;
use axum::body::{Body, Bytes};
use concord_core::{RoomId, RoomKind, Seq};
use std::sync::Arc;

/// Events read from the store at once (each at most `max_data_bytes` of data).
const CHUNK: usize = 16;

/// What a page covers; `head` is read before the events, and no event after it is returned, so
/// the page's `seq` is never behind its last event.
pub struct PageSpec {
    pub room: RoomId,
    pub kind: RoomKind,
    pub epoch: String,
    pub head: Seq,
    pub after: Seq,
    pub limit: usize,
}

enum Phase {
    Head,
    Events,
    Tail,
    Done,
}

struct Page {
    app: Arc<App>,
    spec: PageSpec,
    phase: Phase,
    /// The seq of the last event sent (or `after`).
    next: Seq,
    sent: usize,
    bytes: usize,
}

/// The page as a streamed JSON body:
/// `{"room","epoch","seq","events":[…],"next_after":N,"more":bool}`.
pub fn body(app: Arc<App>, spec: PageSpec) -> Body {
    let page = Page {
        app,
        next: spec.after,
        spec,
        phase: Phase::Head,
        sent: 0,
        bytes: 0,
    };
    Body::from_stream(futures::stream::unfold(page, |mut page| async move {
        let chunk = page.step().await?;
        Some((chunk, page))
    }))
}

impl Page {
    async fn step(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            match self.phase {
                Phase::Head => {
                    self.phase = Phase::Events;
                    let s = &self.spec;
                    let mut head = serde_json::json!({"room": s.room.as_str(), "epoch": s.epoch, "seq": s.head.0})
                        .to_string();
                    head.pop();
                    head.push_str(",\"events\":[");
                    return Some(Ok(Bytes::from(head)));
                }
                Phase::Events => match self.events().await {
                    Ok(chunk) if chunk.is_empty() => continue,
                    Ok(chunk) => return Some(Ok(Bytes::from(chunk))),
                    Err(e) => {
                        self.phase = Phase::Done;
                        return Some(Err(e));
                    }
                },
                Phase::Tail => {
                    self.phase = Phase::Done;
                    let more = self.next < self.spec.head;
                    let tail = format!("],\"next_after\":{},\"more\":{more}}}", self.next.0);
                    return Some(Ok(Bytes::from(tail)));
                }
                Phase::Done => return None,
            }
        }
    }

    /// The next few events, comma-separated; moves to `Tail` at the end of the page.
    async fn events(&mut self) -> Result<String, std::io::Error> {
        let left = self.spec.limit - self.sent;
        if left == 0 || self.next >= self.spec.head {
            self.phase = Phase::Tail;
            return Ok(String::new());
        }
        let want = left.min(CHUNK);
        let cfg = &self.app.shared.config;
        let read = self
            .app
            .shared
            .store
            .read_events(&self.spec.room, self.next, want)
            .await;
        let events = read.map_err(|e| {
            tracing::error!(room = %self.spec.room, error = %e, "reading events failed mid-page");
            std::io::Error::other("store unavailable")
        })?;
        if events.len() < want {
            self.phase = Phase::Tail;
        }
        let mut out = String::new();
        for e in &events {
            if e.seq > self.spec.head {
                self.phase = Phase::Tail;
                break;
            }
            let frame = event_frame(&self.spec.room, self.spec.kind, e, None);
            if self.sent > 0 && self.bytes + frame.len() > cfg.max_page_bytes {
                self.app.shared.metrics.limit(Limit::MaxPageBytes);
                self.phase = Phase::Tail;
                break;
            }
            if self.sent > 0 {
                out.push(',');
            }
            out.push_str(&frame);
            self.bytes += frame.len();
            self.sent += 1;
            self.next = e.seq;
        }
        Ok(out)
    }
}
