//! The state of a loaded doc room: the JSON document, a window of recent committed op lists
//! (to rebase stale ops), state hashes, snapshots, schema validation, and restore diffs.
//!
//! Every op list is bounded before it costs anything: its rebase work (ops × ops committed since
//! its base), the string bytes its text ops scan, the depth it writes at and the size it grows
//! the document to ([`DocLimits`]). Loading skips snapshots that cannot be read (rebuilding from
//! an older one or the op log); an op log that cannot be replayed is [`DocLoadError::Corrupt`],
//! which [`repair`] (`concord repair`) fixes by rebuilding from the lists it can replay.
//!
//! Ops are rebased and applied when they are sequenced (before their commit is durable); a
//! failed commit makes the room reload from the store, so the in-memory document never keeps
//! anything the store does not have.

pub use crate::config::DocSchema;
use crate::metrics::Limit;
use crate::store::{History, Store, StoreError, StoredEvent};
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
    /// A doc limit (`doc_max_rebase_work` → `conflict`; `doc_max_apply_work` → `too_large`;
    /// `doc_max_depth`, `doc_max_bytes` → `rejected`), named for the metrics.
    Limit { limit: Limit, message: String },
}

/// The limits of one doc room's document and of the work one op list may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Deepest nesting of the document (containers, the root included).
    pub max_depth: usize,
    /// Largest document, in bytes of canonical JSON.
    pub max_bytes: usize,
    /// Most pairwise op transformations one list may need (ops in the list × ops committed
    /// since its base, more when text deletes split).
    pub max_rebase_work: u64,
    /// Most bytes of strings the `text` ops of one list may edit (each scans its string).
    pub max_apply_work: u64,
}

impl DocLimits {
    /// No limits (for simulations of the OT loop).
    pub const UNLIMITED: DocLimits = DocLimits {
        max_depth: usize::MAX,
        max_bytes: usize::MAX,
        max_rebase_work: u64::MAX,
        max_apply_work: u64::MAX,
    };

    pub fn of(config: &crate::Config) -> DocLimits {
        DocLimits {
            max_depth: config.doc_max_depth,
            max_bytes: config.doc_max_bytes,
            max_rebase_work: config.doc_max_rebase_work,
            max_apply_work: config.doc_max_apply_work,
        }
    }
}

/// Why a document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DocLoadError {
    /// The store did not answer: worth retrying.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the store holds cannot be turned into the document (an op list that does not
    /// decode or apply, missing history): retrying will not help; `concord repair` does.
    #[error("{0}")]
    Corrupt(String),
}

/// One remembered op list, with the count of ops remembered before it (so the ops committed
/// since any base in the window are known in O(1)).
struct Logged {
    seq: Seq,
    ops: Arc<Vec<Op>>,
    ops_before: u64,
}

pub struct DocState {
    pub state: Value,
    /// Size of `state` in bytes of canonical JSON, kept up to date op by op.
    pub bytes: usize,
    /// Recent sequenced op lists, oldest first; seqs are consecutive.
    log: VecDeque<Logged>,
    /// Ops remembered in `log` and before it (a running count).
    ops_total: u64,
    /// The seq `state` reflects (sequenced, possibly not yet committed).
    pub seq: Seq,
    window: usize,
    /// The last snapshot saved (or loaded).
    pub snapshot_seq: Seq,
    /// Snapshots that could not be read while loading (the state was rebuilt without them).
    pub unreadable_snapshots: u32,
    schema: Option<Arc<DocSchema>>,
    limits: DocLimits,
}

/// Decodes an op list the server encoded (a forwarded list, a stored event's data).
pub fn list_ops(data: &serde_json::value::RawValue) -> Result<Vec<Op>, String> {
    let v = doc::read_stored(data.get()).map_err(|err| format!("not readable JSON: {err}"))?;
    doc::decode_ops(
        &v,
        &doc::Limits {
            max_ops: usize::MAX,
            max_path_depth: usize::MAX,
        },
    )
    .map_err(|err| err.message)
}

/// Decodes the ops column of a stored doc event.
pub fn stored_ops(e: &StoredEvent) -> Result<Vec<Op>, String> {
    let v = doc::read_stored(e.data.get())
        .map_err(|err| format!("stored ops at seq {} are not readable JSON: {err}", e.seq))?;
    doc::decode_ops(
        &v,
        &doc::Limits {
            max_ops: usize::MAX,
            max_path_depth: usize::MAX,
        },
    )
    .map_err(|err| format!("stored ops at seq {} do not decode: {}", e.seq, err.message))
}

/// The latest readable snapshot at or before `at` (or the empty document at seq 0), and how
/// many unreadable snapshots were skipped on the way (each one logged).
async fn base_state(
    store: &dyn History,
    room: &RoomId,
    at: Seq,
) -> Result<(Seq, Value, u32), StoreError> {
    let mut at = at;
    let mut skipped = 0;
    loop {
        let Some((seq, json)) = store.load_snapshot(room, Some(at)).await? else {
            return Ok((Seq::ZERO, Value::Object(Map::new()), skipped));
        };
        match doc::read_stored(&json) {
            Ok(state) => return Ok((seq, state, skipped)),
            Err(e) => {
                skipped += 1;
                tracing::error!(
                    room = %room, snapshot_seq = %seq, error = %e,
                    "doc snapshot cannot be read; rebuilding the state from an older snapshot and the op log"
                );
                if seq == Seq::ZERO {
                    return Ok((Seq::ZERO, Value::Object(Map::new()), skipped));
                }
                at = Seq(seq.0 - 1);
            }
        }
    }
}

/// Applies the stored op lists after `from` up to `to` to `state`, calling `each` with every
/// list read (also those at or before `from`, when `read_from` is older). A list that does not
/// decode or apply is an error unless `skip_bad` (then it is left out and counted).
struct Replay<'a> {
    store: &'a dyn History,
    room: &'a RoomId,
    skip_bad: bool,
    skipped: u64,
}

impl Replay<'_> {
    async fn run(
        &mut self,
        state: &mut Value,
        read_from: Seq,
        applied_to: Seq,
        to: Seq,
        mut each: impl FnMut(Seq, Vec<Op>),
    ) -> Result<Seq, DocLoadError> {
        let mut after = read_from;
        let mut seq = applied_to;
        while after < to {
            let want = ((to.0 - after.0) as usize).min(1000);
            let events = self.store.read_events(self.room, after, want).await?;
            if events.is_empty() {
                return Err(DocLoadError::Corrupt(format!(
                    "history of {} ends at {after}, before {to}",
                    self.room
                )));
            }
            if events[0].seq.0 > seq.0 + 1 {
                // Retention removes ops only behind a kept snapshot: ops missing right after
                // the state being rebuilt mean that state is gone.
                return Err(DocLoadError::Store(StoreError::Trimmed(format!(
                    "the ops of {} after seq {seq} were removed by retention",
                    self.room
                ))));
            }
            // Replaying a batch is CPU work (up to 1000 lists): keep it off the async workers.
            let batch =
                off_the_workers(|| self.apply_batch(state, &events, to, &mut seq, &mut each));
            let last = batch?;
            if last <= after {
                return Err(DocLoadError::Corrupt(format!(
                    "history of {} has a gap after {after}",
                    self.room
                )));
            }
            after = last;
            if events.last().is_some_and(|e| e.seq >= to) {
                break;
            }
        }
        Ok(seq)
    }

    /// Applies the lists of `events` up to `to` that come after `seq`; returns the last seq read.
    fn apply_batch(
        &mut self,
        state: &mut Value,
        events: &[StoredEvent],
        to: Seq,
        seq: &mut Seq,
        each: &mut impl FnMut(Seq, Vec<Op>),
    ) -> Result<Seq, DocLoadError> {
        let mut after = Seq::ZERO;
        for e in events.iter().take_while(|e| e.seq <= to) {
            after = e.seq;
            let ops = match stored_ops(e) {
                Ok(ops) => ops,
                Err(m) if self.skip_bad => {
                    tracing::warn!(room = %self.room, error = %m, "skipping an unreadable op list");
                    self.skipped += 1;
                    each(e.seq, Vec::new());
                    continue;
                }
                Err(m) => return Err(DocLoadError::Corrupt(m)),
            };
            if e.seq > *seq {
                if e.seq.0 != seq.0 + 1 {
                    // Retention removes ops only behind a kept snapshot: a gap after the state
                    // being rebuilt means that state is gone.
                    return Err(DocLoadError::Store(StoreError::Trimmed(format!(
                        "the ops of {} between {} and {} were removed by retention",
                        self.room, seq, e.seq
                    ))));
                }
                if let Err(err) = doc::apply_in_place(state, &ops) {
                    let m = format!("replaying seq {}: {err}", e.seq);
                    if !self.skip_bad {
                        return Err(DocLoadError::Corrupt(m));
                    }
                    tracing::warn!(room = %self.room, error = %m, "skipping an op list that does not apply");
                    self.skipped += 1;
                }
                *seq = e.seq;
            }
            each(e.seq, ops);
        }
        Ok(after)
    }
}

/// Runs CPU work with `block_in_place` on a multi-threaded runtime (the worker's other tasks
/// move to another thread meanwhile), directly otherwise.
pub fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The document as it was at `at`: the latest readable snapshot at or before it, plus the ops
/// after it (from seq 0 when no snapshot that old is kept).
pub async fn state_at(store: &dyn History, room: &RoomId, at: Seq) -> Result<Value, StoreError> {
    let (seq, mut state, _) = base_state(store, room, at).await?;
    let mut replay = Replay {
        store,
        room,
        skip_bad: false,
        skipped: 0,
    };
    match replay.run(&mut state, seq, seq, at, |_, _| {}).await {
        Ok(_) => Ok(state),
        Err(DocLoadError::Store(e)) => Err(e),
        Err(DocLoadError::Corrupt(m)) => Err(StoreError::Backend(m)),
    }
}

/// What `concord repair` did to one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The seq of the fresh snapshot (the room's head).
    pub seq: Seq,
    /// Op lists left out because they did not decode or apply.
    pub skipped: u64,
    /// Size of the rebuilt document, in bytes of canonical JSON.
    pub bytes: usize,
}

/// Rebuilds a doc room's state from its whole op log (ignoring every snapshot), leaving out the
/// lists that cannot be replayed, and saves it as a fresh snapshot at the head.
pub async fn repair(store: &dyn Store, room: &RoomId) -> Result<Repaired, DocLoadError> {
    let Some(record) = store.load_room(room).await? else {
        return Err(DocLoadError::Corrupt(format!("room {room} does not exist")));
    };
    if record.kind != concord_core::RoomKind::Doc {
        return Err(DocLoadError::Corrupt(format!("{room} is not a doc room")));
    }
    let mut state = Value::Object(Map::new());
    let mut replay = Replay {
        store,
        room,
        skip_bad: true,
        skipped: 0,
    };
    replay
        .run(&mut state, Seq::ZERO, Seq::ZERO, record.head, |_, _| {})
        .await?;
    let bytes = doc::canonical_len(&state);
    store
        .save_snapshot(room, record.head, state.to_string())
        .await?;
    Ok(Repaired {
        seq: record.head,
        skipped: replay.skipped,
        bytes,
    })
}

impl DocState {
    /// Loads the document at `head`, keeping the last `window` op lists for rebasing. An
    /// unreadable snapshot is skipped (an older one, or the op log from seq 0, rebuilds the
    /// state); an op log that cannot be replayed is [`DocLoadError::Corrupt`].
    pub async fn load(
        store: &dyn History,
        room: &RoomId,
        head: Seq,
        window: usize,
        schema: Option<Arc<DocSchema>>,
        limits: DocLimits,
    ) -> Result<DocState, DocLoadError> {
        let (snapshot_seq, mut state, unreadable) = base_state(store, room, head).await?;
        // Ops before the snapshot still fill the window, so stale bases can be rebased.
        let from = Seq(head.0.saturating_sub(window as u64).min(snapshot_seq.0));
        let window = window.max(1);
        let mut log = VecDeque::new();
        let mut replay = Replay {
            store,
            room,
            skip_bad: false,
            skipped: 0,
        };
        let seq = replay
            .run(&mut state, from, snapshot_seq, head, |s, ops| {
                // Ops trimmed by retention before the snapshot: the window restarts after them.
                if log
                    .back()
                    .is_some_and(|(last, _): &(Seq, _)| last.0 + 1 != s.0)
                {
                    log.clear();
                }
                log.push_back((s, ops));
                if log.len() > window {
                    log.pop_front();
                }
            })
            .await?;
        let mut doc = DocState {
            bytes: doc::canonical_len(&state),
            state,
            log: VecDeque::new(),
            ops_total: 0,
            seq,
            window,
            // A rebuilt state is saved again at the next snapshot point.
            snapshot_seq: if unreadable > 0 {
                Seq::ZERO
            } else {
                snapshot_seq
            },
            unreadable_snapshots: unreadable,
            schema,
            limits,
        };
        for (s, ops) in log {
            doc.remember(s, Arc::new(ops));
        }
        Ok(doc)
    }

    fn remember(&mut self, seq: Seq, ops: Arc<Vec<Op>>) {
        let ops_before = self.ops_total;
        self.ops_total += ops.len() as u64;
        self.log.push_back(Logged {
            seq,
            ops,
            ops_before,
        });
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
            .map(|l| Seq(l.seq.0 - 1))
            .unwrap_or(self.seq);
        if base < oldest_base {
            return Err(DocRefusal::Conflict(format!(
                "base {base} is older than the server's window (oldest base {oldest_base}): resync"
            )));
        }
        let skip = (base.0 - oldest_base.0) as usize;
        // The work is known before transforming anything: ops × ops committed since `base`.
        let since = self
            .log
            .get(skip)
            .map_or(0, |l| self.ops_total - l.ops_before);
        let max_work = self.limits.max_rebase_work;
        let work = (ops.len() as u64).saturating_mul(since);
        let too_much = || {
            DocRefusal::Limit {
            limit: Limit::DocMaxRebaseWork,
            message: format!(
                "rebasing {} ops over the {since} ops committed since base {base} is more work than \
                 allowed ({max_work} op pairs): resync and send the list again",
                ops.len()
            ),
        }
        };
        if work > max_work {
            return Err(too_much());
        }
        let after: Vec<&[Op]> = self
            .log
            .iter()
            .skip(skip)
            .map(|l| l.ops.as_slice())
            .collect();
        let rebased =
            doc::transform_over_many_bounded(ops, &after, max_work).map_err(|_| too_much())?;
        let depth = doc::op_list_depth(&rebased.ops);
        if depth > self.limits.max_depth {
            return Err(DocRefusal::Limit {
                limit: Limit::DocMaxDepth,
                message: format!(
                    "the document would be nested {depth} levels deep (more than {})",
                    self.limits.max_depth
                ),
            });
        }
        let scan = doc::text_scan_bytes(&self.state, &rebased.ops);
        if scan > self.limits.max_apply_work {
            return Err(DocRefusal::Limit {
                limit: Limit::DocMaxApplyWork,
                message: format!(
                    "the text ops of this list edit {scan} bytes of strings (more than {}): send \
                     fewer text ops per list",
                    self.limits.max_apply_work
                ),
            });
        }
        let (inverse, grew) = doc::apply_measured(&mut self.state, &rebased.ops)
            .map_err(|e| DocRefusal::Invalid(e.to_string()))?;
        let bytes = (self.bytes as i64 + grew).max(0) as usize;
        if grew > 0 && bytes > self.limits.max_bytes {
            doc::apply_in_place(&mut self.state, &inverse).expect("an inverse always applies");
            return Err(DocRefusal::Limit {
                limit: Limit::DocMaxBytes,
                message: format!(
                    "the document would be {bytes} bytes (more than {})",
                    self.limits.max_bytes
                ),
            });
        }
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
        self.bytes = bytes;
        self.seq = self.seq.next();
        let seq = self.seq;
        self.remember(seq, Arc::new(rebased.ops.clone()));
        Ok(rebased)
    }

    /// Applies a committed op list (already rebased by the room's owner) as `seq`, the next
    /// seq: how a replica follows the log. An error leaves the state unchanged.
    pub fn apply_committed(&mut self, seq: Seq, ops: Vec<Op>) -> Result<(), String> {
        if seq != self.seq.next() {
            return Err(format!(
                "list {seq} does not follow the document at {}",
                self.seq
            ));
        }
        let (_, grew) = doc::apply_measured(&mut self.state, &ops).map_err(|e| e.to_string())?;
        self.bytes = (self.bytes as i64 + grew).max(0) as usize;
        self.seq = seq;
        self.remember(seq, Arc::new(ops));
        Ok(())
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
    use crate::store::{Append, Archive, CommitLog, MemoryStore};
    use concord_core::{Epoch, RoomKind};
    use serde_json::json;
    use serde_json::value::RawValue;

    fn event(seq: u64, ops: &str) -> StoredEvent {
        StoredEvent {
            seq: Seq(seq),
            hlc: concord_core::HlcText::parse(&format!("{seq:013}-000000-n")).unwrap(),
            from: concord_core::ClientId::new("c").unwrap(),
            op_id: None,
            data: RawValue::from_string(ops.into()).unwrap(),
        }
    }

    /// A doc room with three lists: `a` = 1, `b` = 2, `c` = 3.
    async fn room_with_three_lists(store: &MemoryStore, second: &str) -> RoomId {
        let room = RoomId::new("doc:t").unwrap();
        store
            .create_room(&room, RoomKind::Doc, &Epoch("e".into()))
            .await
            .unwrap();
        let lists = [
            r#"[{"op":"set","path":["a"],"value":1}]"#,
            second,
            r#"[{"op":"set","path":["c"],"value":3}]"#,
        ];
        let events = lists
            .iter()
            .enumerate()
            .map(|(i, l)| event(i as u64 + 1, l))
            .collect();
        store
            .append(&room, Append::new(Epoch("e".into()), events))
            .await
            .unwrap();
        room
    }

    const B: &str = r#"[{"op":"set","path":["b"],"value":2}]"#;

    #[tokio::test]
    async fn an_unreadable_snapshot_is_rebuilt_from_older_ones_and_the_op_log() {
        let store = MemoryStore::new();
        let room = room_with_three_lists(&store, B).await;
        store
            .save_snapshot(&room, Seq(1), r#"{"a":1}"#.into())
            .await
            .unwrap();
        store
            .save_snapshot(&room, Seq(3), r#"{"a":1,"b":"#.into())
            .await
            .unwrap();
        let doc = DocState::load(&store, &room, Seq(3), 10, None, DocLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(doc.state, json!({"a":1,"b":2,"c":3}));
        assert_eq!(doc.unreadable_snapshots, 1);
        assert_eq!(
            doc.snapshot_seq,
            Seq::ZERO,
            "the next snapshot point saves it again"
        );
        assert_eq!(doc.bytes, doc::canonical_len(&doc.state));
        let at = state_at(&store, &room, Seq(3)).await.unwrap();
        assert_eq!(at, json!({"a":1,"b":2,"c":3}));
    }

    #[tokio::test]
    async fn an_unreplayable_op_log_is_corrupt_and_repair_rebuilds_what_it_can() {
        let store = MemoryStore::new();
        let bad = r#"[{"op":"del","path":["nope"]}]"#;
        let room = room_with_three_lists(&store, bad).await;
        let err = DocState::load(&store, &room, Seq(3), 10, None, DocLimits::UNLIMITED).await;
        assert!(matches!(err, Err(DocLoadError::Corrupt(_))));
        let done = repair(&store, &room).await.unwrap();
        assert_eq!((done.seq, done.skipped), (Seq(3), 1));
        let doc = DocState::load(&store, &room, Seq(3), 10, None, DocLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(doc.state, json!({"a":1,"c":3}));
    }

    #[tokio::test]
    async fn limits_refuse_deep_big_and_costly_lists_atomically() {
        let store = MemoryStore::new();
        let room = room_with_three_lists(&store, B).await;
        let limits = DocLimits {
            max_depth: 3,
            max_bytes: 40,
            max_rebase_work: 4,
            max_apply_work: 9,
        };
        let mut doc = DocState::load(&store, &room, Seq(3), 10, None, limits)
            .await
            .unwrap();
        let ops = |v: Value| doc::decode_ops(&v, &doc::Limits::default()).unwrap();
        let refused = |r: Result<Transformed, DocRefusal>| match r {
            Err(DocRefusal::Limit { limit, .. }) => limit,
            other => panic!("{other:?}"),
        };
        let deep = ops(json!([{"op":"set","path":["x"],"value":{"y":{"z":{}}}}]));
        assert_eq!(refused(doc.submit(Seq(3), &deep)), Limit::DocMaxDepth);
        let big = ops(json!([{"op":"set","path":["s"],"value":"0123456789012345678901234"}]));
        assert_eq!(refused(doc.submit(Seq(3), &big)), Limit::DocMaxBytes);
        let s = ops(json!([{"op":"set","path":["s"],"value":"12345"}]));
        doc.submit(Seq(3), &s).unwrap();
        let edits = ops(json!([
            {"op":"text","path":["s"],"pos":0,"insert":"a"},
            {"op":"text","path":["s"],"pos":0,"insert":"b"}
        ]));
        assert_eq!(refused(doc.submit(Seq(4), &edits)), Limit::DocMaxApplyWork);
        let del = ops(json!([{"op":"del","path":["s"]}]));
        doc.submit(Seq(4), &del).unwrap();
        assert_eq!(doc.state, json!({"a":1,"b":2,"c":3}), "nothing applied");
        let two =
            ops(json!([{"op":"add","path":["a"],"value":1},{"op":"add","path":["c"],"value":1}]));
        assert_eq!(refused(doc.submit(Seq(2), &two)), Limit::DocMaxRebaseWork);
        assert!(doc.submit(Seq(3), &two).is_ok(), "2 ops × 2 committed = 4");
        assert_eq!(doc.bytes, doc::canonical_len(&doc.state));
    }

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
