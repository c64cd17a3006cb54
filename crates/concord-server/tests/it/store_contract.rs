//! The store contract suite run from outside the crate, as a backend in another crate runs it
//! (`concord-server` with the `testing` feature, `store_suite!` with an async factory).

use concord_server::metrics::Metrics;
use concord_server::store::{Durability, SqliteStore, Store};
use std::sync::Arc;

/// A fresh SQLite store in a temp dir; the dir is the guard that outlives the test's store.
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db"), false, 1000, Metrics::new()).unwrap();
    (Arc::new(store), dir)
}

concord_server::store_suite!(sqlite_store, Durability::Disk, sqlite().await);
