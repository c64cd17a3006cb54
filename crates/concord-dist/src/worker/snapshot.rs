//! Doc snapshots written by the workers: when a batch persisted a doc room's event at a seq
//! that is a multiple of `snapshot_every`, the room's state at that seq is rebuilt from
//! PostgreSQL alone (the latest snapshot at or before it, then the persisted op lists after
//! it) and saved as a new snapshot; older ones beyond `snapshots_kept` are deleted. Gateways
//! and history reads then start from a recent state instead of replaying a room's whole log.
//!
//! A snapshot is an optimisation: one that cannot be built (an op list that does not apply,
//! PostgreSQL unreachable) is logged and counted, and the next multiple tries again; it never
//! holds a batch back. Redelivered batches write the same snapshot again (same seq, same
//! state: the replay is deterministic).

use std::collections::BTreeMap;

use concord_core::doc::{self, Limits};
use serde_json::{Map, Value};

use super::Ctx;
use crate::pg::{ArchiveError, ArchivedEvent, PgArchive};

/// Op lists read per query while replaying.
const PAGE: usize = 1000;

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Corrupt(String),
}

/// Snapshots the doc rooms of a landed batch whose seqs reached a multiple of the interval.
pub async fn after_batch<'a>(ctx: &Ctx, events: impl Iterator<Item = &'a ArchivedEvent>) {
    let every = ctx.config.snapshot_every;
    if every == 0 {
        return;
    }
    // The highest multiple reached per room in this batch.
    let mut due: BTreeMap<&str, u64> = BTreeMap::new();
    for ev in events.filter(|e| e.kind == "doc" && e.seq % every == 0) {
        let at = due.entry(ev.room.as_str()).or_default();
        *at = (*at).max(ev.seq);
    }
    for (room, seq) in due {
        match snapshot(&ctx.archive, room, seq).await {
            Ok(()) => {
                ctx.metrics.snapshots.inc();
                if let Err(e) = ctx
                    .archive
                    .prune_snapshots(room, ctx.config.snapshots_kept)
                    .await
                {
                    tracing::warn!(room, error = %e, "deleting old doc snapshots failed");
                }
            }
            Err(e) => {
                ctx.metrics.snapshot_errors.inc();
                tracing::warn!(room, seq, error = %e, "writing a doc snapshot failed");
            }
        }
    }
}

/// Rebuilds `room`'s state at `seq` from the archive and saves it.
pub async fn snapshot(archive: &PgArchive, room: &str, seq: u64) -> Result<(), SnapshotError> {
    let state = state_at(archive, room, seq).await?;
    archive.save_snapshot(room, seq, &state.to_string()).await?;
    Ok(())
}

/// The state after the op list at `seq`: the latest snapshot at or before it (the empty
/// document when there is none), then every persisted list after it, in order, without a gap.
pub async fn state_at(archive: &PgArchive, room: &str, seq: u64) -> Result<Value, SnapshotError> {
    let (mut after, mut state) = match archive.load_snapshot(room, Some(seq)).await? {
        Some((at, text)) => {
            let state = doc::read_stored(&text)
                .map_err(|e| SnapshotError::Corrupt(format!("snapshot at {at}: {e}")))?;
            (at, state)
        }
        None => (0, Value::Object(Map::new())),
    };
    let unlimited = Limits {
        max_ops: usize::MAX,
        max_path_depth: usize::MAX,
    };
    while after < seq {
        let want = usize::try_from(seq - after).unwrap_or(PAGE).min(PAGE);
        let rows = archive.read_events(room, after, want).await?;
        if rows.is_empty() {
            return Err(SnapshotError::Corrupt(format!(
                "the archive of {room} ends at {after}, before {seq}"
            )));
        }
        for row in rows.iter().take_while(|r| r.seq <= seq) {
            if row.seq != after + 1 {
                return Err(SnapshotError::Corrupt(format!(
                    "the archive of {room} has a gap after {after}"
                )));
            }
            let ops = doc::read_stored(&row.data)
                .map_err(|e| e.to_string())
                .and_then(|v| doc::decode_ops(&v, &unlimited).map_err(|e| e.message))
                .map_err(|e| SnapshotError::Corrupt(format!("ops at {}: {e}", row.seq)))?;
            doc::apply_in_place(&mut state, &ops)
                .map_err(|e| SnapshotError::Corrupt(format!("ops at {}: {e}", row.seq)))?;
            after = row.seq;
        }
    }
    Ok(state)
}
