//! Writing into a room, the shell's side: the one store lookup of retried op ids older than
//! the core's table, creating a room on an HTTP publish, and reading the state a restore goes
//! back to. The decisions (idempotency, rate, rebasing, sequencing) are the core's.

use super::RoomActor;
use crate::room::core::FoundOps;
use crate::room::doc;
use crate::room::msg::{OpMsg, Publish, RoomError, RoomMsg, Waiter};
use concord_core::{ClientId, OpId, RoomKind, Seq};
use concord_protocol::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

fn idem_key(msg: &RoomMsg) -> Option<(&ClientId, &Waiter)> {
    match msg {
        RoomMsg::Publish(Publish { client, waiter, .. })
        | RoomMsg::Op(OpMsg { client, waiter, .. }) => Some((client, waiter)),
        _ => None,
    }
}

impl RoomActor {
    /// Asks the store, in one query, about retried op ids older than the in-memory table.
    /// `Err` means the store could not answer: those ops are refused as unavailable.
    pub(super) async fn lookup_unknown_keys(&mut self, buf: &[RoomMsg]) -> FoundOps {
        let keys: Vec<(ClientId, OpId)> = buf
            .iter()
            .filter_map(idem_key)
            .filter(|(client, waiter)| self.core.needs_lookup(client, waiter))
            .filter_map(|(client, waiter)| {
                let id = waiter.id.as_ref()?;
                Some((client.clone(), id.clone()))
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        match self.shared.store.find_ops(&self.room, keys).await {
            Ok(found) => Ok(found
                .into_iter()
                .map(|f| ((f.from, f.op_id), (f.seq, f.hlc)))
                .collect()),
            Err(e) => {
                tracing::error!(room = %self.room, error = %e, "idempotency lookup failed");
                Err(())
            }
        }
    }

    fn error(&self, w: Waiter, code: ErrorCode, message: &str) {
        self.shared.metrics.error(code);
        w.fail(&self.room, RoomError::new(code, message));
    }

    /// Counts the writes the core sequenced while running `f`.
    fn counting(&mut self, f: impl FnOnce(&mut Self)) {
        let before = self.core.sequencing();
        f(self);
        let n = self.core.sequencing().saturating_sub(before);
        self.stats.publishes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) async fn publish(&mut self, p: Publish, found: &FoundOps) {
        let Publish {
            client,
            data,
            create,
            waiter,
        } = p;
        if let (true, Some(creator)) = (self.core.is_missing(), &create) {
            if self.shared.config.kind_for(self.room.as_str()) == Some(RoomKind::Doc) {
                return self.error(
                    waiter,
                    ErrorCode::KindMismatch,
                    "rooms named like this are doc rooms; publish is for stream rooms",
                );
            }
            let creator = crate::room::Creator::clone(creator);
            if let Err(e) = self.create(RoomKind::Stream, &creator).await {
                self.shared.metrics.error(e.code);
                return waiter.fail(&self.room, e);
            }
        }
        self.counting(|a| {
            let env = super::ShellEnv {
                shared: &a.shared,
                rate: &a.rate,
            };
            a.core.publish(client, data, waiter, found, &env);
        });
    }

    pub(super) fn op(&mut self, m: OpMsg, found: &FoundOps) {
        let OpMsg {
            client,
            base,
            ops,
            waiter,
        } = m;
        self.counting(|a| {
            let env = super::ShellEnv {
                shared: &a.shared,
                rate: &a.rate,
            };
            a.core.op(client, base, &ops, waiter, found, &env);
        });
    }

    /// Commits, as one new op list from `client` (the HTTP caller's `http…` id), the ops that
    /// turn the document (all committed: the caller drained the commits) into its state at `seq`.
    pub(super) async fn restore(&mut self, seq: Seq, client: ClientId, w: Waiter) {
        let target = match self.core.restore_source(seq) {
            Err(e) => return self.error(w, e.code, &e.message),
            Ok(Some(current)) => current,
            Ok(None) => match doc::state_at(self.shared.store.as_ref(), &self.room, seq).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(room = %self.room, error = %e, "reading the state to restore failed");
                    return self.error(
                        w,
                        ErrorCode::Unavailable,
                        "history is not readable right now; retry",
                    );
                }
            },
        };
        self.counting(|a| {
            let env = super::ShellEnv {
                shared: &a.shared,
                rate: &a.rate,
            };
            a.core.restore(client, w, &target, &env);
        });
    }
}
