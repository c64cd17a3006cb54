//! `SqliteStore`: the embedded store — one WAL database, one writer thread doing group commits.
//!
//! Appends from every room queue to the writer thread, which takes everything queued (up to a
//! batch bound), refuses appends that do not continue their room's head, writes the rest in one
//! transaction, commits (fsync with `synchronous=FULL`) and then answers each request. If the
//! transaction fails, each request is retried in a transaction of its own, so a failing request
//! never takes others down. Reads use a small pool of separate connections, which see committed
//! data only.

use super::{
    hlc_floor, Append, Archive, ClientRegistry, CommitLog, DirLock, Durability, EventKey, FoundOp,
    History, RoomRecord, Store, StoreError, StoreResult, StoredEvent,
};
use crate::metrics::Metrics;
use async_trait::async_trait;
use concord_core::{ClientId, Epoch, HlcText, OpId, RoomId, RoomKind, Seq};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rooms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    epoch TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    room INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hlc TEXT NOT NULL,
    client TEXT NOT NULL,
    op_id TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_op ON events (room, client, op_id) WHERE op_id IS NOT NULL;
-- Covers `recent_keys` (and searches by hlc): loading a room never touches the pages of its
-- event bodies.
CREATE INDEX IF NOT EXISTS events_keys ON events (room, seq, hlc, client, op_id);
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY,
    user TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    room INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
";

const MAX_READERS: usize = 8;

enum WriteReq {
    Create {
        room: RoomId,
        kind: RoomKind,
        epoch: Epoch,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Append {
        room: RoomId,
        epoch: Epoch,
        expected_head: Seq,
        events: Vec<StoredEvent>,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Upsert {
        room: RoomId,
        kind: RoomKind,
        epoch: Epoch,
        events: Vec<StoredEvent>,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Snapshot {
        room: RoomId,
        seq: Seq,
        state: String,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    PruneSnapshots {
        room: RoomId,
        keep: usize,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Claim {
        client: String,
        user: String,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Trim {
        room: RoomId,
        before: Seq,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The embedded SQLite store. See the module docs for the commit path.
pub struct SqliteStore {
    tx: mpsc::Sender<WriteReq>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// At most `MAX_READERS` reads run at once: a burst of reads (thousands of rooms loading)
    /// queues here instead of growing the blocking thread pool and the reader connections.
    read_slots: Arc<tokio::sync::Semaphore>,
    path: PathBuf,
    /// The data directory's lock: one server per database, released by `close`.
    lock: Mutex<Option<DirLock>>,
}

fn open_conn(path: &Path, sync_full: bool) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync_full { "FULL" } else { "NORMAL" },
    )?;
    // 64 MiB of page cache and memory-mapped reads: group commits touch many rooms' pages.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "mmap_size", 268_435_456)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread. Refuses
    /// ([`StoreError::InUse`]) when another process has the directory's lock file
    /// (`concord.lock` next to the database).
    pub fn open(
        path: &Path,
        sync_full: bool,
        max_batch: usize,
        metrics: Metrics,
    ) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let lock = DirLock::acquire(dir)?;
        let conn = open_conn(path, sync_full)?;
        conn.execute_batch(SCHEMA)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("concord-sqlite-writer".into())
            .spawn(move || Writer::new(conn, max_batch.max(1), metrics).run(rx))
            .map_err(|e| StoreError::Backend(format!("spawning writer: {e}")))?;
        Ok(SqliteStore {
            tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            path: path.to_path_buf(),
            lock: Mutex::new(Some(lock)),
        })
    }

    async fn write(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<()>>) -> WriteReq,
    ) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn client_owner(&self, client: &str) -> StoreResult<Option<String>> {
        let client = client.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT user FROM clients WHERE client = ?1")?
                    .query_row([&client], |r| r.get::<_, String>(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let pooled = pool.lock().pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = open_conn(&path, false)?;
                    c.pragma_update(None, "query_only", true)?;
                    c
                }
            };
            let result = f(&conn);
            let mut pool = pool.lock();
            if pool.len() < MAX_READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
    }
}

/// An hlc read back from the database; text that is not one is a store error.
fn stored_hlc(s: &str) -> StoreResult<HlcText> {
    HlcText::parse(s).ok_or_else(|| StoreError::Backend(format!("stored hlc {s:?} is not an hlc")))
}

/// A client id read back from the database.
fn stored_client(s: &str) -> StoreResult<ClientId> {
    ClientId::new(s).map_err(|e| StoreError::Backend(format!("stored client {s:?}: {e}")))
}

/// An op id read back from the database.
fn stored_op_id(s: &str) -> StoreResult<OpId> {
    OpId::new(s).map_err(|e| StoreError::Backend(format!("stored op id {s:?}: {e}")))
}

fn row_to_event(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(u64, String, String, Option<String>, String)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

#[async_trait]
impl CommitLog for SqliteStore {
    async fn create_room(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        self.write(|reply| WriteReq::Create {
            room: room.clone(),
            kind,
            epoch: epoch.clone(),
            reply,
        })
        .await
    }

    async fn append(&self, room: &RoomId, append: Append) -> StoreResult<Durability> {
        append.check(room)?;
        self.write(|reply| WriteReq::Append {
            room: room.clone(),
            epoch: append.epoch,
            expected_head: append.expected_head,
            events: append.events,
            reply,
        })
        .await?;
        Ok(Durability::Disk)
    }
}

#[async_trait]
impl History for SqliteStore {
    async fn load_room(&self, room: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let name = room.to_string();
        self.read(move |c| {
            let row = c
                .prepare_cached("SELECT id, kind, epoch FROM rooms WHERE name = ?1")?
                .query_row([&name], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .optional()?;
            let Some((id, kind, epoch)) = row else {
                return Ok(None);
            };
            let head = c
                .prepare_cached(
                    "SELECT seq, hlc FROM events WHERE room = ?1 ORDER BY seq DESC LIMIT 1",
                )?
                .query_row([id], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))
                .optional()?;
            let kind = RoomKind::parse(&kind).map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(Some(RoomRecord {
                kind,
                epoch: Epoch(epoch),
                head: Seq(head.as_ref().map(|h| h.0).unwrap_or(0)),
                head_hlc: head.map(|h| stored_hlc(&h.1)).transpose()?,
            }))
        })
        .await
    }

    async fn read_events(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let name = room.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.seq, e.hlc, e.client, e.op_id, e.data FROM events e JOIN rooms r ON e.room = r.id \
                 WHERE r.name = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![name, after.0, limit as i64], row_to_event)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, hlc, from, op_id, data) = row?;
                out.push(StoredEvent {
                    seq: Seq(seq),
                    hlc: stored_hlc(&hlc)?,
                    from: stored_client(&from)?,
                    op_id: op_id.as_deref().map(stored_op_id).transpose()?,
                    data: RawValue::from_string(data)
                        .map_err(|e| StoreError::Backend(format!("stored data is not JSON: {e}")))?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn recent_keys(&self, room: &RoomId, last: usize) -> StoreResult<Vec<EventKey>> {
        let name = room.to_string();
        self.read(move |c| {
            // Answered from the covering index `events_keys`: the table's pages, which hold the
            // bodies, are never read.
            let mut stmt = c.prepare_cached(
                "SELECT e.seq, e.client, e.op_id, e.hlc FROM events e INDEXED BY events_keys \
                 WHERE e.room = (SELECT id FROM rooms WHERE name = ?1) ORDER BY e.seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![name, last as i64], |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::with_capacity(last.min(4096));
            for row in rows {
                let (seq, from, op_id, hlc) = row?;
                out.push(EventKey {
                    seq: Seq(seq),
                    from: stored_client(&from)?,
                    op_id: op_id.as_deref().map(stored_op_id).transpose()?,
                    hlc: stored_hlc(&hlc)?,
                });
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn seq_at_or_after(&self, room: &RoomId, wall_ms: u64) -> StoreResult<Option<Seq>> {
        let (name, hlc) = (room.to_string(), hlc_floor(wall_ms));
        self.read(move |c| {
            // The covering index `events_keys` holds the hlcs: no body is read.
            Ok(c.prepare_cached(
                "SELECT e.seq FROM events e INDEXED BY events_keys \
                 WHERE e.room = (SELECT id FROM rooms WHERE name = ?1) AND e.hlc >= ?2 \
                 ORDER BY e.seq LIMIT 1",
            )?
            .query_row(params![name, hlc], |r| r.get::<_, u64>(0))
            .optional()?
            .map(Seq))
        })
        .await
    }

    async fn find_ops(
        &self,
        room: &RoomId,
        keys: Vec<(ClientId, OpId)>,
    ) -> StoreResult<Vec<FoundOp>> {
        let name = room.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.seq, e.hlc FROM events e JOIN rooms r ON e.room = r.id \
                 WHERE r.name = ?1 AND e.client = ?2 AND e.op_id = ?3",
            )?;
            let mut out = Vec::new();
            for (from, op_id) in keys {
                let found = stmt
                    .query_row(params![name, from.as_str(), op_id.as_str()], |r| {
                        Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?;
                if let Some((seq, hlc)) = found {
                    out.push(FoundOp {
                        from,
                        op_id,
                        seq: Seq(seq),
                        hlc: stored_hlc(&hlc)?,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn load_snapshot(
        &self,
        room: &RoomId,
        at: Option<Seq>,
    ) -> StoreResult<Option<(Seq, String)>> {
        let name = room.to_string();
        let at = at.map(|s| s.0).unwrap_or(i64::MAX as u64);
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT s.seq, s.state FROM snapshots s JOIN rooms r ON s.room = r.id \
                 WHERE r.name = ?1 AND s.seq <= ?2 ORDER BY s.seq DESC LIMIT 1",
            )?
            .query_row(params![name, at], |r| {
                Ok((Seq(r.get::<_, u64>(0)?), r.get::<_, String>(1)?))
            })
            .optional()?)
        })
        .await
    }

    async fn room_count(&self) -> StoreResult<u64> {
        self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM rooms", [], |r| r.get::<_, u64>(0))?))
            .await
    }

    async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: usize,
    ) -> StoreResult<Vec<(RoomId, RoomKind)>> {
        let after = after.map(|r| r.to_string()).unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, kind FROM rooms WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, kind) = row?;
                let bad = |e: String| StoreError::Backend(format!("stored room {name:?}: {e}"));
                let room = RoomId::new(&name).map_err(|e| bad(e.to_string()))?;
                let kind = RoomKind::parse(&kind).map_err(|e| bad(e.to_string()))?;
                out.push((room, kind));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Archive for SqliteStore {
    /// The log is the archive here: events at or below the head (or trimmed) are left alone,
    /// the rest must continue the head (a gap is refused, as an append's).
    async fn upsert(
        &self,
        room: &RoomId,
        kind: RoomKind,
        epoch: &Epoch,
        events: Vec<StoredEvent>,
    ) -> StoreResult<()> {
        self.write(|reply| WriteReq::Upsert {
            room: room.clone(),
            kind,
            epoch: epoch.clone(),
            events,
            reply,
        })
        .await
    }

    async fn watermark(&self, room: &RoomId) -> StoreResult<Option<Seq>> {
        Ok(self
            .load_room(room)
            .await?
            .map(|r| r.head)
            .filter(|h| h.0 > 0))
    }

    async fn trim(&self, room: &RoomId, before: Seq) -> StoreResult<()> {
        self.write(|reply| WriteReq::Trim {
            room: room.clone(),
            before,
            reply,
        })
        .await
    }

    async fn save_snapshot(&self, room: &RoomId, seq: Seq, state: String) -> StoreResult<()> {
        self.write(|reply| WriteReq::Snapshot {
            room: room.clone(),
            seq,
            state,
            reply,
        })
        .await
    }

    async fn prune_snapshots(&self, room: &RoomId, keep: usize) -> StoreResult<()> {
        self.write(|reply| WriteReq::PruneSnapshots {
            room: room.clone(),
            keep: keep.max(1),
            reply,
        })
        .await
    }
}

#[async_trait]
impl ClientRegistry for SqliteStore {
    async fn claim_client(&self, client: &ClientId, user: &str) -> StoreResult<String> {
        // Most hellos come from a client id that is already bound: a read answers them, and
        // only a first claim goes through the writer.
        if let Some(owner) = self.client_owner(client.as_str()).await? {
            return Ok(owner);
        }
        self.write(|reply| WriteReq::Claim {
            client: client.to_string(),
            user: user.to_string(),
            reply,
        })
        .await?;
        self.client_owner(client.as_str())
            .await?
            .ok_or_else(|| StoreError::Backend(format!("client {client} was not bound")))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn ping_write(&self) -> StoreResult<()> {
        // Its own short-lived connection, so the probe never sits in the writer's queue; SQLite's
        // write lock (busy timeout) orders it with the writer's group commits.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_conn(&path, false)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
                 INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, unixepoch('subsec') * 1000);",
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Backend(format!("write probe: {e}")))?
    }

    async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteReq::Close { reply }).is_ok() {
            let _ = rx.await;
        }
        self.readers.lock().clear();
        // The writer is done: another server may take the directory now.
        self.lock.lock().take();
    }
}

/// The writer thread: group commit of everything queued.
struct Writer {
    conn: Connection,
    max_batch: usize,
    metrics: Metrics,
    /// room name → (row id, head seq, epoch), for rooms appended to since the last failed
    /// commit.
    rooms: HashMap<RoomId, (i64, u64, Epoch)>,
}

impl Writer {
    fn new(conn: Connection, max_batch: usize, metrics: Metrics) -> Self {
        Writer {
            conn,
            max_batch,
            metrics,
            rooms: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<WriteReq>) {
        let mut close_reply = None;
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut events = 0usize;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    WriteReq::Close { reply } => {
                        close_reply = Some(reply);
                        break;
                    }
                    WriteReq::Append { events: ref e, .. }
                    | WriteReq::Upsert { events: ref e, .. } => events += e.len(),
                    WriteReq::Create { .. }
                    | WriteReq::Snapshot { .. }
                    | WriteReq::PruneSnapshots { .. }
                    | WriteReq::Trim { .. }
                    | WriteReq::Claim { .. } => events += 1,
                }
                batch.push(req);
                if events < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch, events);
            }
            if close_reply.is_some() {
                break;
            }
        }
        drop(self.conn);
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn commit(&mut self, batch: Vec<WriteReq>, events: usize) {
        let start = Instant::now();
        // Appends that cannot continue their room's known head are refused before the batch,
        // so they never send the others down the slow path.
        let mut ok = Vec::with_capacity(batch.len());
        // Heads as the batch will leave them (a room may have several appends in one batch).
        let mut heads: HashMap<RoomId, u64> = HashMap::new();
        for req in batch {
            match self.refused_upfront(&req, &mut heads) {
                Some(e) => reply(req, Err(e)),
                None => ok.push(req),
            }
        }
        let batch = ok;
        if batch.is_empty() {
            return;
        }
        // Fast path: the whole batch in one transaction. Appends are checked for contiguity
        // before they write, so a failure is rare (a refused append, a backend error); then the
        // batch is rolled back and each request runs in its own transaction, so that one failing
        // request never takes the others down.
        match self.transaction(&batch) {
            Ok(()) => {
                self.metrics
                    .store_commit
                    .observe(start.elapsed().as_secs_f64());
                self.metrics.store_batch_events.observe(events as f64);
                for req in batch {
                    reply(req, Ok(()));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(req) = batch.into_iter().next() {
                    reply(req, Err(e));
                }
            }
            Err(_) => {
                for req in batch {
                    let r = self.transaction(std::slice::from_ref(&req));
                    reply(req, r);
                }
            }
        }
    }

    fn refused_upfront(
        &self,
        req: &WriteReq,
        heads: &mut HashMap<RoomId, u64>,
    ) -> Option<StoreError> {
        let WriteReq::Append {
            room,
            epoch,
            expected_head,
            events,
            ..
        } = req
        else {
            return None;
        };
        let last = events.last()?.seq.0;
        let cached = self.rooms.get(room)?;
        if cached.2 != *epoch {
            return Some(StoreError::EpochChanged {
                room: room.to_string(),
                current: cached.2.clone(),
            });
        }
        let head = heads.get(room).copied().unwrap_or(cached.1);
        if expected_head.0 != head {
            return Some(StoreError::HeadMoved {
                room: room.to_string(),
                head,
            });
        }
        heads.insert(room.clone(), last);
        None
    }

    /// Applies `reqs` in one transaction: all of them or none (the head cache follows).
    fn transaction(&mut self, reqs: &[WriteReq]) -> StoreResult<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut result = Ok(());
        for req in reqs {
            match self.apply(req) {
                Ok(Some((room, id, head, epoch))) => {
                    // Later appends of the same room in this transaction continue from here.
                    self.rooms.insert(room, (id, head, epoch));
                }
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.conn.execute_batch("COMMIT").map_err(StoreError::from);
        }
        if result.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.rooms.clear();
        }
        result
    }

    /// Creates the room's record unless it exists.
    fn create(&self, room: &RoomId, kind: RoomKind, epoch: &Epoch) -> StoreResult<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.conn
            .prepare_cached(
                "INSERT INTO rooms (name, kind, epoch, created_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(name) DO NOTHING",
            )?
            .execute(params![room.as_str(), kind.as_str(), epoch.as_str(), now])?;
        Ok(())
    }

    /// The room's (row id, head, epoch): from the cache, else from the database.
    /// Inserts `events` (room row `id`), which must continue `head` one by one; the new head.
    fn insert_after<'e>(
        &self,
        room: &RoomId,
        id: i64,
        head: u64,
        events: impl Iterator<Item = &'e StoredEvent>,
    ) -> StoreResult<u64> {
        let mut expected = head + 1;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO events (room, seq, hlc, client, op_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in events {
            if e.seq.0 != expected {
                return Err(StoreError::NotContiguous {
                    room: room.to_string(),
                    expected,
                    got: e.seq.0,
                });
            }
            stmt.execute(params![
                id,
                e.seq.0,
                e.hlc.as_str(),
                e.from.as_str(),
                e.op_id.as_ref().map(OpId::as_str),
                e.data.get()
            ])?;
            expected += 1;
        }
        Ok(expected - 1)
    }

    fn room_head(&self, room: &RoomId) -> StoreResult<(i64, u64, Epoch)> {
        if let Some(v) = self.rooms.get(room) {
            return Ok(v.clone());
        }
        self.conn
            .prepare_cached(
                "SELECT id, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE room = rooms.id), epoch \
                 FROM rooms WHERE name = ?1",
            )?
            .query_row([room.as_str()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, u64>(1)?, Epoch(r.get::<_, String>(2)?)))
            })
            .optional()?
            .ok_or_else(|| StoreError::NoRoom(room.to_string()))
    }

    /// Applies one request inside the open transaction; returns the room's new head on append.
    fn apply(&mut self, req: &WriteReq) -> StoreResult<Option<(RoomId, i64, u64, Epoch)>> {
        match req {
            WriteReq::Create {
                room, kind, epoch, ..
            } => {
                self.create(room, *kind, epoch)?;
                Ok(None)
            }
            WriteReq::Append {
                room,
                epoch,
                expected_head,
                events,
                ..
            } => {
                let (id, head, current) = self.room_head(room)?;
                if current != *epoch {
                    return Err(StoreError::EpochChanged {
                        room: room.to_string(),
                        current,
                    });
                }
                if events.is_empty() {
                    return Ok(None);
                }
                if expected_head.0 != head {
                    return Err(StoreError::HeadMoved {
                        room: room.to_string(),
                        head,
                    });
                }
                let new_head = self.insert_after(room, id, head, events.iter())?;
                Ok(Some((room.clone(), id, new_head, current)))
            }
            WriteReq::Upsert {
                room,
                kind,
                epoch,
                events,
                ..
            } => {
                self.create(room, *kind, epoch)?;
                let (id, head, current) = self.room_head(room)?;
                let new_head =
                    self.insert_after(room, id, head, events.iter().filter(|e| e.seq.0 > head))?;
                Ok(Some((room.clone(), id, new_head, current)))
            }
            WriteReq::Snapshot {
                room, seq, state, ..
            } => {
                let (id, head): (i64, u64) = self
                    .conn
                    .prepare_cached(
                        "SELECT id, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE room = rooms.id) \
                         FROM rooms WHERE name = ?1",
                    )?
                    .query_row([room.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                    .ok_or_else(|| StoreError::NoRoom(room.to_string()))?;
                if seq.0 > head {
                    return Err(StoreError::NotContiguous {
                        room: room.to_string(),
                        expected: head,
                        got: seq.0,
                    });
                }
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO snapshots (room, seq, state) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, seq.0, state])?;
                Ok(None)
            }
            WriteReq::PruneSnapshots { room, keep, .. } => {
                self.conn
                    .prepare_cached(
                        "DELETE FROM snapshots WHERE room = (SELECT id FROM rooms WHERE name = ?1) \
                         AND seq < (SELECT s.seq FROM snapshots s JOIN rooms r ON s.room = r.id \
                         WHERE r.name = ?1 ORDER BY s.seq DESC LIMIT 1 OFFSET ?2)",
                    )?
                    .execute(params![room.as_str(), (*keep as i64) - 1])?;
                Ok(None)
            }
            WriteReq::Claim { client, user, .. } => {
                self.conn
                    .prepare_cached("INSERT INTO clients (client, user) VALUES (?1, ?2) ON CONFLICT(client) DO NOTHING")?
                    .execute(params![client, user])?;
                Ok(None)
            }
            WriteReq::Trim { room, before, .. } => {
                // Never the head: `seq < head` keeps the last event whatever `before` says.
                self.conn
                    .prepare_cached(
                        "DELETE FROM events WHERE room = (SELECT id FROM rooms WHERE name = ?1) \
                         AND seq < ?2 AND seq < (SELECT MAX(seq) FROM events \
                         WHERE room = (SELECT id FROM rooms WHERE name = ?1))",
                    )?
                    .execute(params![room.as_str(), before.0])?;
                Ok(None)
            }
            WriteReq::Close { .. } => Ok(None),
        }
    }
}

fn reply(req: WriteReq, result: StoreResult<()>) {
    match req {
        WriteReq::Create { reply, .. }
        | WriteReq::Append { reply, .. }
        | WriteReq::Upsert { reply, .. }
        | WriteReq::Snapshot { reply, .. }
        | WriteReq::PruneSnapshots { reply, .. }
        | WriteReq::Trim { reply, .. }
        | WriteReq::Claim { reply, .. } => {
            let _ = reply.send(result);
        }
        WriteReq::Close { reply } => {
            let _ = reply.send(());
        }
    }
}
