//! The contract suites every backend of a store role must pass, one per role: [`log`]
//! ([`CommitLog`]), [`history`] ([`History`]), [`archive`] ([`Archive`]), [`registry`]
//! ([`ClientRegistry`]), and [`store`]: what the embedded mode relies on from a whole
//! [`Store`] bundle (retention, op lookups, room counts, snapshots refused beyond the head).
//!
//! Compiled for this crate's own tests and, with the `testing` feature, as a public module, so
//! that a backend in another crate runs the very same contracts. In that crate:
//!
//! ```toml
//! [dev-dependencies]
//! concord-server = { workspace = true, features = ["testing"] }
//! ```
//!
//! ```ignore
//! // tests/store_contract.rs
//! use concord_server::store::{Durability, Store};
//! use std::sync::Arc;
//!
//! /// A fresh, empty store per test, and whatever must live as long as it (here nothing).
//! async fn make() -> (Arc<dyn Store>, ()) {
//!     (Arc::new(PostgresStore::connect(&scratch_database().await).await.unwrap()), ())
//! }
//!
//! concord_server::store_suite!(postgres_store, Durability::Disk, make().await);
//! // or role by role, for backends that play one role each:
//! concord_server::commit_log_suite!(redis_log, make_log().await);   // (log, history, durability, guard)
//! concord_server::history_suite!(redis_history, make_seeder().await); // (seeder, guard)
//! concord_server::archive_suite!(pg_archive, make_archive().await);  // (archive, history, guard)
//! concord_server::registry_suite!(pg_registry, make_registry().await); // (registry, guard)
//! ```
//!
//! Each macro expands to a module `name` with one plain `#[test]` per contract. `make` is an
//! expression evaluated inside the test's own tokio runtime (so it may `.await`; the calling
//! crate needs no tokio macros) and yields the role's parts and a guard (a temp dir, a server
//! handle, `()`) dropped when the test ends: new and empty for every test (contracts count
//! rooms). Names in `make` resolve in the module that calls the macro. Each contract is also a
//! public `async fn` in its module, to be called one by one (on a multi-thread runtime for the
//! concurrent ones; see [`run`]).

use super::*;
use concord_core::RoomId;
use std::future::Future;
use std::sync::Arc;

pub mod archive;
pub mod history;
pub mod log;
pub mod registry;
pub mod store;

pub use history::{Seeder, StoreSeeder};

/// Runs one contract to completion on a fresh tokio runtime: current-thread for `threads <= 1`,
/// else multi-thread with that many workers (what the suite macros call).
pub fn run<F: Future<Output = ()>>(threads: usize, contract: F) {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(contract)
}

/// An event at `seq` from client `from` with op id `op`; its hlc sorts with its seq.
pub fn ev(seq: u64, from: &str, op: Option<&str>) -> StoredEvent {
    StoredEvent {
        seq: Seq(seq),
        hlc: hlc(seq),
        from: client(from),
        op_id: op.map(op_id),
        data: RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
    }
}

/// The hlc of [`ev`]'s event at `seq` (its wall time is `seq` ms).
pub fn hlc(seq: u64) -> HlcText {
    HlcText::parse(&format!("{seq:013}-000000-n")).expect("an hlc")
}

/// A client id (panics if `id` is not one).
pub fn client(id: &str) -> ClientId {
    ClientId::new(id).expect("a client id")
}

/// An op id (panics if `id` is not one).
pub fn op_id(id: &str) -> OpId {
    OpId::new(id).expect("an op id")
}

/// The idempotency key (client, op id) that `find_ops` takes.
pub fn key(from: &str, op: &str) -> (ClientId, OpId) {
    (client(from), op_id(op))
}

/// A room id (panics if `name` is not one).
pub fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

/// The epoch the contracts create their rooms with.
pub fn epoch() -> Epoch {
    Epoch("e".into())
}

/// Appends `events` in the epoch [`epoch`], continuing the head before the first one.
pub async fn put<L: CommitLog + ?Sized>(
    log: &L,
    room: &RoomId,
    events: Vec<StoredEvent>,
) -> StoreResult<Durability> {
    log.append(room, Append::new(epoch(), events)).await
}

/// `read` (every event of a room) and `keys` (its recent keys) are exactly what `sent`
/// committed: every field of each event, and the keys without bodies.
pub fn assert_reads_round_trip(read: &[StoredEvent], keys: &[EventKey], sent: &[StoredEvent]) {
    let fields = |e: &StoredEvent| {
        (
            e.seq,
            e.hlc.clone(),
            e.from.clone(),
            e.op_id.clone(),
            e.data.get().to_string(),
        )
    };
    assert_eq!(
        read.iter().map(fields).collect::<Vec<_>>(),
        sent.iter().map(fields).collect::<Vec<_>>()
    );
    let expected: Vec<EventKey> = sent
        .iter()
        .map(|e| EventKey {
            seq: e.seq,
            from: e.from.clone(),
            op_id: e.op_id.clone(),
            hlc: e.hlc.clone(),
        })
        .collect();
    assert_eq!(keys, expected);
}

/// The seqs of `evs`, in the order read.
pub fn seqs(evs: &[StoredEvent]) -> Vec<u64> {
    evs.iter().map(|e| e.seq.0).collect()
}

/// `store_suite!(name, durability, make)`: every role's contracts and the bundle's on a fresh
/// [`Store`] from `make` (which yields `(Arc<dyn Store>, guard)`) whose appends promise
/// `durability`.
#[macro_export]
macro_rules! store_suite {
    ($modname:ident, $durability:expr, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::store::{Archive, ClientRegistry, CommitLog, History, Store};
            $crate::commit_log_suite!(log, {
                let (store, guard) = $make;
                (
                    store.clone() as ::std::sync::Arc<dyn CommitLog>,
                    store as ::std::sync::Arc<dyn History>,
                    $durability,
                    guard,
                )
            });
            $crate::history_suite!(history, {
                let (store, guard) = $make;
                (
                    ::std::sync::Arc::new($crate::store::suite::StoreSeeder(store))
                        as ::std::sync::Arc<dyn $crate::store::suite::Seeder>,
                    guard,
                )
            });
            $crate::archive_suite!(archive, {
                let (store, guard) = $make;
                (
                    store.clone() as ::std::sync::Arc<dyn Archive>,
                    store as ::std::sync::Arc<dyn History>,
                    guard,
                )
            });
            $crate::registry_suite!(registry, {
                let (store, guard) = $make;
                (store as ::std::sync::Arc<dyn ClientRegistry>, guard)
            });
            $crate::store_suite!(@contracts $make; store;
                recent_keys_without_bodies 1,
                trim_keeps_the_head_and_forgets_trimmed_keys 1,
                list_rooms_pages_by_name 1,
                duplicate_op_ids_are_refused 1,
                snapshots_refused_beyond_the_head 1,
                retried_append_is_refused 1,
                reads_across_a_trim_boundary 1,
                fields_round_trip 1
            );
        }
    };
    (@contracts $make:expr; $module:ident; $($contract:ident $threads:literal),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run($threads, async {
                    let (store, _guard) = $make;
                    $crate::store::suite::$module::$contract(store).await;
                });
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> (Arc<dyn Store>, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(
            &dir.path().join("t.db"),
            false,
            1000,
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        (Arc::new(s), dir)
    }

    crate::store_suite!(memory_store, Durability::Memory, memory());
    crate::store_suite!(sqlite_store, Durability::Disk, sqlite());
}
