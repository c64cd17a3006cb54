//! A local distributed-mode cluster of real processes for the chaos tests: a private Redis,
//! a PostgreSQL database (a fresh one on the machine's server, or one the test gives: a
//! private server it crashes), `concord serve` gateways on fixed free addresses (a restarted gateway
//! keeps its clients' URL) and `concord worker`s, each with its log in the test's report.
#![allow(dead_code)] // not every test binary that shares this module uses all of it

use super::{Report, Server};
use concord_dist::testing::pg::TestDb;
use concord_dist::testing::redis::{free_port, Persistence, RedisServer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The cluster's partitions (gateways and workers must agree).
pub const PARTITIONS: u32 = 1024;
/// Gateway, worker and doc leases: short, so that deaths are noticed within a test.
pub const LEASE: &str = "2s";
/// [`LEASE`] as a duration.
pub const LEASE_DURATION: Duration = Duration::from_secs(2);

/// A `concord worker` process, SIGKILLed on drop.
pub struct WorkerProc {
    child: Child,
    log: PathBuf,
}

impl WorkerProc {
    pub fn start(redis: &str, pg: &str, prefix: &str, id: &str, log: PathBuf) -> WorkerProc {
        let file = std::fs::File::create(&log).expect("worker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CONCORD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["worker", "--redis", redis, "--postgres", pg])
            .args(["--redis-prefix", prefix, "--worker-id", id, "--no-migrate"])
            .args(["--partitions", &PARTITIONS.to_string(), "--lease", LEASE])
            .env("CONCORD_LOG", super::server_log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn concord worker");
        WorkerProc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill SIG PID` (e.g. `-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    pub fn kill9(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("the worker had exited on its own ({status}); its log:\n{log}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill SIG PID`, asserting it was delivered.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// The database a cluster's processes use.
pub enum Db {
    /// A fresh database on the machine's server, dropped with the cluster.
    Test(TestDb),
    /// A migrated database the test owns (e.g. on a private server it crashes).
    Url(String),
}

impl Db {
    pub fn url(&self) -> &str {
        match self {
            Db::Test(db) => db.url(),
            Db::Url(url) => url,
        }
    }
}

/// The processes of one cluster and what they run on.
pub struct Cluster {
    pub report: Report,
    pub redis: RedisServer,
    pub prefix: String,
    /// The database the processes use.
    pub db: Db,
    /// Each gateway's listen address, kept across restarts.
    pub listen: Vec<String>,
    /// Arguments every gateway gets besides Redis, PostgreSQL, prefix and node id.
    pub gateway_extra: Vec<String>,
    pub gateways: Vec<Server>,
    pub workers: Vec<WorkerProc>,
    /// How many times each gateway was started (a restart logs to a file of its own).
    starts: Vec<usize>,
}

impl Cluster {
    /// Starts Redis (`persistence`), a migrated database, `gateways` gateways with
    /// `gateway_extra` arguments and `workers` workers.
    pub async fn start(
        report: Report,
        prefix: String,
        persistence: Persistence,
        counts: (usize, usize),
        gateway_extra: &[&str],
    ) -> Cluster {
        let db = Db::Test(TestDb::migrated().await);
        Self::start_on(report, prefix, persistence, counts, gateway_extra, db).await
    }

    /// [`Cluster::start`] on a given (migrated) database.
    pub async fn start_on(
        report: Report,
        prefix: String,
        persistence: Persistence,
        (gateways, workers): (usize, usize),
        gateway_extra: &[&str],
        db: Db,
    ) -> Cluster {
        let redis = tokio::task::block_in_place(|| RedisServer::start(persistence));
        let listen = (0..gateways)
            .map(|_| format!("127.0.0.1:{}", free_port(false)))
            .collect();
        let mut cluster = Cluster {
            report,
            redis,
            prefix,
            db,
            listen,
            gateway_extra: gateway_extra.iter().map(|s| s.to_string()).collect(),
            gateways: Vec::new(),
            workers: Vec::new(),
            starts: vec![0; gateways],
        };
        for g in 0..gateways {
            let s = cluster.start_gateway(g).await;
            cluster.gateways.push(s);
        }
        for w in 0..workers {
            let p = cluster.start_worker(w);
            cluster.workers.push(p);
        }
        cluster
    }

    /// The gateways' WebSocket URLs.
    pub fn urls(&self) -> Vec<String> {
        self.listen
            .iter()
            .map(|a| format!("ws://{a}/v1/ws"))
            .collect()
    }

    fn gateway_args(&self, g: usize) -> Vec<String> {
        let mut args: Vec<String> = [
            "--redis",
            &self.redis.url(),
            "--postgres",
            self.db.url(),
            "--redis-prefix",
            &self.prefix,
            "--node-id",
            &format!("gw{g}"),
            "--gateway-lease",
            LEASE,
            "--partitions",
            &PARTITIONS.to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.gateway_extra.iter().cloned());
        args
    }

    /// Starts gateway `g` at its address (its log `gwG.log`, then `gwG.N.log` for its N-th
    /// restart).
    pub async fn start_gateway(&mut self, g: usize) -> Server {
        let name = match self.starts[g] {
            0 => format!("gw{g}.log"),
            n => format!("gw{g}.{n}.log"),
        };
        self.starts[g] += 1;
        let log = self.report.log_path(&name);
        let dir = self.report.data_dir().join(format!("gw{g}"));
        std::fs::create_dir_all(&dir).expect("a data dir");
        let args = self.gateway_args(g);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_at(&dir, &self.listen[g], &args, &log).await
    }

    pub fn start_worker(&mut self, w: usize) -> WorkerProc {
        let log = self.report.log_path(&format!("wk{w}.log"));
        WorkerProc::start(
            &self.redis.url(),
            self.db.url(),
            &self.prefix,
            &format!("wk{w}"),
            log,
        )
    }

    /// SIGKILLs gateway `g` and starts it again at the same address.
    pub async fn restart_gateway(&mut self, g: usize) {
        self.gateways[g].kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.gateways[g] = self.start_gateway(g).await;
    }

    /// SIGKILLs worker `w` and starts it again.
    pub async fn restart_worker(&mut self, w: usize) {
        self.workers[w].kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.workers[w] = self.start_worker(w);
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

impl Cluster {
    /// Every gateway and worker process still runs (none exited or crashed).
    pub fn assert_running(&self) {
        for (g, s) in self.gateways.iter().enumerate() {
            assert!(running(s.pid), "gateway {g} (pid {}) is gone", s.pid);
        }
        for (w, p) in self.workers.iter().enumerate() {
            assert!(running(p.pid()), "worker {w} (pid {}) is gone", p.pid());
        }
    }

    /// Waits until every worker keeps its heartbeat in Redis and holds partition leases: each
    /// works (after a Redis restart, a SIGSTOP…) without being restarted.
    pub async fn wait_workers_working(&self, limit: Duration) {
        use concord_dist::worker::{all_partitions, Keys};
        let keys = Keys::new(&self.prefix);
        let parts = all_partitions(PARTITIONS);
        let deadline = tokio::time::Instant::now() + limit;
        let mut conn = self.redis.client();
        loop {
            let mut missing = Vec::new();
            let holders: Vec<Option<String>> = redis::cmd("MGET")
                .arg(parts.iter().map(|p| keys.owner(p)).collect::<Vec<_>>())
                .query(&mut conn)
                .unwrap_or_default();
            for w in 0..self.workers.len() {
                let id = format!("wk{w}");
                let beat: bool = redis::cmd("EXISTS")
                    .arg(keys.heartbeat(&id))
                    .query(&mut conn)
                    .unwrap_or(false);
                let owns = holders.iter().filter(|h| h.as_deref() == Some(&id)).count();
                if !beat || owns == 0 {
                    missing.push(format!("{id}: heartbeat {beat}, {owns} partitions"));
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "workers not working within {limit:?}: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
