//! A private PostgreSQL 15 server for tests that crash or restart PostgreSQL: `initdb` in a
//! temp dir (trust auth), `postgres` on a free port, stopped fast or immediately (a crash:
//! no checkpoint, crash recovery at the next start) and started again on the same port and
//! data. PostgreSQL refuses to run as root, so the data dir belongs to the `postgres` OS user
//! and every PostgreSQL program runs with that user's uid and gid when the test runs as root.
//!
//! The server process is the test's own child (no `pg_ctl` daemon in between): it is stopped
//! by its pid, and SIGKILLed when the handle drops.

use rustix::process::{kill_process, Pid, Signal};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// Where Debian's PostgreSQL 15 programs live (`CONCORD_TEST_PG_BIN` overrides it).
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a server may take to accept connections after it was started (crash recovery
/// included).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How [`PgServer::stop`] stops the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: connections are ended, a checkpoint is written.
    Fast,
    /// SIGQUIT: every process exits at once, no checkpoint — a crash; the next start
    /// replays the WAL.
    Immediate,
}

/// A private PostgreSQL server on a free port; SIGKILLed (by pid) on drop.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The uid and gid of the `postgres` OS user when running as root (PostgreSQL refuses root).
fn postgres_owner() -> Option<(u32, u32)> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("a `postgres` OS user to run PostgreSQL as (it refuses root)");
    let fields: Vec<&str> = line.split(':').collect();
    let uid = fields[2].parse().expect("postgres uid");
    let gid = fields[3].parse().expect("postgres gid");
    Some((uid, gid))
}

impl PgServer {
    /// Creates a cluster in a fresh temp dir (`initdb`, trust auth, superuser `postgres`) and
    /// starts it; returns once it accepts connections.
    pub fn start() -> PgServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let owner = postgres_owner();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).expect("data dir");
        if let Some((uid, gid)) = owner {
            for p in [tmp.path(), dir.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .expect("chown the data dir to postgres");
            }
        }
        let bin = std::env::var_os("CONCORD_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
        let mut s = PgServer {
            port: free_port(false),
            dir,
            _tmp: tmp,
            bin,
            owner,
            child: None,
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(&s.dir)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb (is PostgreSQL 15 installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        s.start_again();
        s
    }

    /// A command running `program` of the PostgreSQL binaries as the data dir's owner.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").current_dir(&self.dir);
        cmd
    }

    /// Starts the server on its port and data dir (after [`PgServer::stop`]) and waits until
    /// it accepts connections. No-op while it runs.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server's log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A crash here is a process crash, never the machine's: the OS keeps what was
            // written, so fsync buys nothing but load on a shared disk.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .parent()
            .expect("the data dir's parent")
            .join("postgres.log")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "postgres exited at start ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {} did not accept connections within {START_DEADLINE:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server and waits until its postmaster exited. No-op when it is stopped.
    pub fn stop(&mut self, mode: StopMode) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sig = match mode {
            StopMode::Fast => Signal::INT,
            StopMode::Immediate => Signal::QUIT,
        };
        let _ = kill_process(Pid::from_child(&child), sig);
        let _ = child.wait();
    }

    /// Stops the server (`mode`) and starts it again on the same port and data.
    pub fn restart(&mut self, mode: StopMode) {
        self.stop(mode);
        self.start_again();
    }

    /// The postmaster's pid while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A URL of the server's `postgres` database (superuser `postgres`, trust auth).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A URL of database `db` on the server.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The postmaster's children exit on their own once it is gone (they watch it).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, PgConnection};

    async fn query_one(url: &str, sql: &str) -> Result<i64, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(n)
    }

    /// Committed rows survive a crash (immediate stop) and a fast stop; a stopped server
    /// refuses connections; the port and the data stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_private_server_crashes_and_restarts_with_its_data() {
        let mut pg = tokio::task::block_in_place(PgServer::start);
        let url = pg.url();
        let first = pg.pid().expect("running");
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql("CREATE TABLE t (n bigint); INSERT INTO t VALUES (1), (2)")
            .execute(&mut conn)
            .await
            .expect("create and insert");
        drop(conn);
        tokio::task::block_in_place(|| pg.stop(StopMode::Immediate));
        assert!(pg.pid().is_none());
        assert!(query_one(&url, "SELECT 1").await.is_err(), "stopped");
        tokio::task::block_in_place(|| pg.start_again());
        assert_ne!(pg.pid(), Some(first), "a new postmaster");
        assert_eq!(pg.url(), url, "same port");
        let sum = query_one(&url, "SELECT sum(n)::bigint FROM t").await;
        assert_eq!(sum.expect("read after the crash"), 3);
        tokio::task::block_in_place(|| pg.restart(StopMode::Fast));
        let sum = query_one(&url, "SELECT sum(n)::bigint FROM t").await;
        assert_eq!(sum.expect("read after a fast restart"), 3);
    }
}
