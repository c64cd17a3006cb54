//! The recent window of a room: its newest committed events, encoded once, contiguous up to
//! the committed head, bounded in count and bytes; catch-up is served from it when it reaches
//! back far enough.

use axum::extract::ws::Utf8Bytes;
use concord_core::Seq;
use std::collections::VecDeque;
use std::sync::Arc;

/// A committed event, encoded once and shared by every member.
pub struct Committed {
    pub seq: Seq,
    pub frame: Utf8Bytes,
}

/// The newest committed events: at most `max` events and `max_bytes` bytes of frames.
pub struct Window {
    events: VecDeque<Arc<Committed>>,
    bytes: usize,
    max: usize,
    max_bytes: usize,
}

impl Window {
    pub fn new(max: usize, max_bytes: usize) -> Self {
        Window {
            events: VecDeque::new(),
            bytes: 0,
            max,
            max_bytes,
        }
    }

    /// Adds the newest committed event, dropping the oldest beyond the bounds. True when the
    /// byte bound dropped one.
    pub fn push(&mut self, ev: Arc<Committed>) -> bool {
        self.bytes += ev.frame.len();
        self.events.push_back(ev);
        let mut by_bytes = false;
        while self.events.len() > self.max
            || (self.bytes > self.max_bytes && !self.events.is_empty())
        {
            by_bytes |= self.events.len() <= self.max;
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.frame.len();
            }
        }
        by_bytes
    }

    /// The frames after `after` up to the newest, if the window reaches back to `after + 1`.
    pub fn after(&self, after: Seq) -> Option<Vec<Utf8Bytes>> {
        let front = self.events.front().filter(|f| f.seq.0 <= after.0 + 1)?;
        let skip = (after.0 + 1 - front.seq.0) as usize;
        Some(
            self.events
                .iter()
                .skip(skip)
                .map(|c| c.frame.clone())
                .collect(),
        )
    }

    /// The seq of the newest event, if any.
    pub fn last(&self) -> Option<Seq> {
        self.events.back().map(|c| c.seq)
    }

    /// Checks the window: contiguous seqs, its byte count, its bounds, ending at `head` (when not
    /// empty).
    pub fn check(&self, head: Seq) -> Result<(), String> {
        if let Some(last) = self.last() {
            if last != head {
                return Err(format!(
                    "the window ends at {last}, the committed head is {head}"
                ));
            }
        }
        let mut prev: Option<Seq> = None;
        for c in &self.events {
            if prev.is_some_and(|p| p.0 + 1 != c.seq.0) {
                return Err(format!("the window has a gap before {}", c.seq));
            }
            prev = Some(c.seq);
        }
        let bytes: usize = self.events.iter().map(|c| c.frame.len()).sum();
        if bytes != self.bytes {
            return Err(format!(
                "the window counts {} bytes, holds {bytes}",
                self.bytes
            ));
        }
        if self.events.len() > self.max || self.bytes > self.max_bytes {
            return Err("the window exceeds its bounds".into());
        }
        Ok(())
    }
}
