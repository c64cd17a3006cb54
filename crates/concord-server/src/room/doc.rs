//! The state of a loaded doc room: the JSON document, a window of recent committed op lists
//! (to rebase stale ops), state hashes, snapshots, schema validation, and restore diffs.
//!
//! Ops are rebased and applied when they are sequenced (before their commit is durable); a
//! failed commit makes the room reload from the store, so the in-memory document never keeps
//! anything the store does not have.

use crate::store::{Store, StoreError, StoredEvent};
use concord_core::doc::{self, Op, PathSeg, Transformed};
use concord_core::{RoomId, Seq};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;

/// Why an op list was refused.
#[derive(Debug)]
pub enum DocRefusal {
    /// The base is older than the window (or ahead of the room): the client must resync.
    Conflict(String),
    /// An op is invalid against the state (`invalid_op`, naming the op index).
    Invalid(String),
    /// The result violates the room's schema (`rejected`).
    Rejected(String),
}

/// A JSON Schema that every state of the rooms matching a pattern must satisfy.
pub struct DocSchema {
    pub pattern: String,
    pub validator: jsonschema::Validator,
}

impl std::fmt::Debug for DocSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocSchema({:?})", self.pattern)
    }
}

pub struct DocState {
    pub state: Value,
    /// Recent sequenced op lists, oldest first; seqs are consecutive.
    log: VecDeque<(Seq, Arc<Vec<Op>>)>,
    /// The seq `state` reflects (sequenced, possibly not yet committed).
    pub seq: Seq,
    window: usize,
    /// The last snapshot saved (or loaded).
    pub snapshot_seq: Seq,
    schema: Option<Arc<DocSchema>>,
}

/// Decodes the ops column of a stored doc event.
pub fn stored_ops(e: &StoredEvent) -> Result<Vec<Op>, StoreError> {
    let v: Value = serde_json::from_str(e.data.get()).map_err(|err| {
        StoreError::Backend(format!("stored ops at seq {} are not JSON: {err}", e.seq))
    })?;
    doc::decode_ops(
        &v,
        &doc::Limits {
            max_ops: usize::MAX,
            max_path_depth: usize::MAX,
        },
    )
    .map_err(|err| {
        StoreError::Backend(format!(
            "stored ops at seq {} do not decode: {}",
            e.seq, err.message
        ))
    })
}

/// The document as it was at `at` (the latest snapshot at or before it, plus the ops after).
pub async fn state_at(store: &dyn Store, room: &RoomId, at: Seq) -> Result<Value, StoreError> {
    let (mut seq, mut state) = match store.load_snapshot(room, Some(at)).await? {
        Some((s, json)) => (
            s,
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Backend(format!("bad snapshot: {e}")))?,
        ),
        None => (Seq::ZERO, Value::Object(Map::new())),
    };
    while seq < at {
        let events = store
            .read_events(room, seq, ((at.0 - seq.0) as usize).min(1000))
            .await?;
        if events.is_empty() {
            return Err(StoreError::Backend(format!(
                "history of {room} ends at {seq}, before {at}"
            )));
        }
        if events[0].seq.0 != seq.0 + 1 {
            // Retention removed these ops; the state at `at` cannot be rebuilt.
            return Err(StoreError::Trimmed(format!(
                "the history of {room} before seq {} was removed by retention",
                events[0].seq
            )));
        }
        for e in events.iter().take_while(|e| e.seq <= at) {
            let ops = stored_ops(e)?;
            doc::apply_in_place(&mut state, &ops).map_err(|err| {
                StoreError::Backend(format!("replaying seq {}: {}", e.seq, err.message))
            })?;
            seq = e.seq;
        }
    }
    Ok(state)
}

impl DocState {
    /// Loads the document at `head`, keeping the last `window` op lists for rebasing.
    pub async fn load(
        store: &dyn Store,
        room: &RoomId,
        head: Seq,
        window: usize,
        schema: Option<Arc<DocSchema>>,
    ) -> Result<DocState, StoreError> {
        let (snapshot_seq, snapshot) = match store.load_snapshot(room, Some(head)).await? {
            Some((s, json)) => (
                s,
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Backend(format!("bad snapshot: {e}")))?,
            ),
            None => (Seq::ZERO, Value::Object(Map::new())),
        };
        let mut doc = DocState {
            state: snapshot,
            log: VecDeque::new(),
            seq: snapshot_seq,
            window: window.max(1),
            snapshot_seq,
            schema,
        };
        // Ops before the snapshot still fill the window, so stale bases can be rebased.
        let from = Seq(head.0.saturating_sub(window as u64).min(snapshot_seq.0));
        let mut after = from;
        while after < head {
            let events = store.read_events(room, after, 1000).await?;
            if events.is_empty() {
                return Err(StoreError::Backend(format!(
                    "history of {room} ends at {after}, before {head}"
                )));
            }
            if events[0].seq.0 != after.0 + 1 {
                // Retention removed ops: fine before the snapshot (they only filled the rebase
                // window, which now starts later), fatal after it.
                if events[0].seq.0 > doc.seq.0 + 1 {
                    return Err(StoreError::Trimmed(format!(
                        "the ops of {room} after its snapshot at {} were removed",
                        doc.seq
                    )));
                }
                doc.log.clear();
            }
            for e in events {
                let ops = stored_ops(&e)?;
                if e.seq > doc.seq {
                    doc::apply_in_place(&mut doc.state, &ops).map_err(|err| {
                        StoreError::Backend(format!("replaying seq {}: {}", e.seq, err.message))
                    })?;
                    doc.seq = e.seq;
                }
                after = e.seq;
                doc.remember(e.seq, Arc::new(ops));
            }
        }
        Ok(doc)
    }

    fn remember(&mut self, seq: Seq, ops: Arc<Vec<Op>>) {
        self.log.push_back((seq, ops));
        while self.log.len() > self.window {
            self.log.pop_front();
        }
    }

    /// Rebases `ops` (made against the state at `base`) over everything sequenced since, applies
    /// them atomically and records them as `seq` (= current seq + 1).
    pub fn submit(&mut self, base: Seq, ops: &[Op]) -> Result<Transformed, DocRefusal> {
        if base > self.seq {
            return Err(DocRefusal::Conflict(format!(
                "base {base} is ahead of the document ({})",
                self.seq
            )));
        }
        let oldest_base = self
            .log
            .front()
            .map(|(s, _)| Seq(s.0 - 1))
            .unwrap_or(self.seq);
        if base < oldest_base {
            return Err(DocRefusal::Conflict(format!(
                "base {base} is older than the server's window (oldest base {oldest_base}): resync"
            )));
        }
        let skip = (base.0 - oldest_base.0) as usize;
        let after: Vec<&[Op]> = self
            .log
            .iter()
            .skip(skip)
            .map(|(_, l)| l.as_slice())
            .collect();
        let rebased = doc::transform_over_many(ops, &after);
        let inverse = doc::apply_with_inverse(&mut self.state, &rebased.ops)
            .map_err(|e| DocRefusal::Invalid(e.to_string()))?;
        if let Some(schema) = &self.schema {
            if let Err(e) = schema.validator.validate(&self.state) {
                let message = format!(
                    "the document would violate the schema of {}: {e}",
                    schema.pattern
                );
                doc::apply_in_place(&mut self.state, &inverse).expect("an inverse always applies");
                return Err(DocRefusal::Rejected(message));
            }
        }
        self.seq = self.seq.next();
        let seq = self.seq;
        self.remember(seq, Arc::new(rebased.ops.clone()));
        Ok(rebased)
    }

    pub fn hash(&self) -> String {
        doc::state_hash(&self.state)
    }
}

/// The ops that turn `from` into `to`: map keys are diffed recursively, anything else that
/// differs is replaced with `set`.
pub fn diff(from: &Value, to: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    diff_into(&mut Vec::new(), from, to, &mut ops);
    ops
}

fn diff_into(path: &mut Vec<PathSeg>, from: &Value, to: &Value, ops: &mut Vec<Op>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                path.push(PathSeg::Key(key.clone()));
                ops.push(Op::Del { path: path.clone() });
                path.pop();
            }
            for (key, bv) in b {
                path.push(PathSeg::Key(key.clone()));
                match a.get(key) {
                    Some(av) => diff_into(path, av, bv, ops),
                    None => ops.push(Op::Set {
                        path: path.clone(),
                        value: bv.clone(),
                    }),
                }
                path.pop();
            }
        }
        _ if from == to => {}
        _ => ops.push(Op::Set {
            path: path.clone(),
            value: to.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_turns_one_state_into_the_other() {
        let cases = [
            (json!({}), json!({"a":1})),
            (
                json!({"a":1,"b":{"c":[1,2],"d":"x"}}),
                json!({"b":{"c":[1,2,3],"e":true}}),
            ),
            (json!({"a":"text"}), json!({"a":{"nested":1}})),
            (json!({"n":1.5}), json!({"n":1.5})),
            (json!([1, 2]), json!({"root":"replaced"})),
        ];
        for (from, to) in cases {
            let ops = diff(&from, &to);
            assert_eq!(
                doc::apply(&from, &ops).unwrap(),
                to,
                "{from} → {to} with {ops:?}"
            );
        }
        assert!(diff(&json!({"x":[1]}), &json!({"x":[1]})).is_empty());
    }
}
