//! Private `redis-server` processes for tests: one server on a free port in a temp dir (kill,
//! restart on the same port, SIGSTOP/SIGCONT), a three-master Redis Cluster, and a unique key
//! prefix on the machine's shared Redis (127.0.0.1:6379) whose keys are deleted on drop.
//!
//! Every process started here is stopped by its pid when its handle drops.

use crate::log::RedisTarget;
use rustix::process::{kill_process, Pid, Signal};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The machine's shared Redis.
pub const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A port nobody listens on now (and, when `bus` is set, whose cluster bus port +10000 is free
/// too).
pub fn free_port(bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Persistence of a private server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk: a restart comes back empty.
    None,
    /// AOF with `appendfsync always`: a restart keeps every acknowledged write.
    AofAlways,
}

/// A private `redis-server` on a free port, killed by pid on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    persistence: Persistence,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server in a fresh temp dir and waits until it answers.
    pub fn start(persistence: Persistence) -> RedisServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::with(free_port(false), dir, persistence, Vec::new());
        s._tmp = Some(tmp);
        s
    }

    fn with(port: u16, dir: PathBuf, persistence: Persistence, extra: Vec<String>) -> Self {
        let mut s = RedisServer {
            port,
            dir,
            _tmp: None,
            persistence,
            extra,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("open the server's log");
        let appendonly = match self.persistence {
            Persistence::None => "no",
            Persistence::AofAlways => "yes",
        };
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .args(["--save", ""])
            .args(["--appendonly", appendonly])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        wait_answers(self.port, &self.dir);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn target(&self) -> RedisTarget {
        RedisTarget::Single(self.url())
    }

    /// The server's pid (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: Signal) {
        if let Some(child) = &self.child {
            let pid = Pid::from_child(child);
            kill_process(pid, sig).expect("signal our redis-server");
        }
    }

    /// SIGSTOP: the server stops answering (connections stay open).
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGKILL and reap it (no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and dir (what survives depends
    /// on its persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A blocking connection (test set-up and inspection).
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to our redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server ignores nothing but SIGKILL; kill it all the same.
        self.kill();
    }
}

fn wait_answers(port: u16, dir: &Path) {
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let pong = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!("redis-server on port {port} did not answer within {START_DEADLINE:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Cluster of private servers (masters, and optionally replicas), each killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, creates the cluster over them (slots split
    /// evenly, in port order) and waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with_replicas(masters, 0)
    }

    /// Like [`RedisCluster::start`], with `replicas` replicas of each master (redis-cli
    /// chooses which nodes are masters; [`RedisCluster::failover`] promotes a replica).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> RedisCluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|i| {
                let dir = tmp.path().join(format!("node{i}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                let extra = vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                ];
                RedisServer::with(free_port(true), dir, Persistence::None, extra)
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _tmp: tmp };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        for node in &self.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.client())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never reported cluster_state:ok: {info}",
                    node.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A graceful failover of the master serving `slot`: `CLUSTER FAILOVER` on one of its
    /// replicas (which catches up with the master first, so no acknowledged write is lost),
    /// then waits until every node agrees the replica serves the slot. Returns the index of
    /// the new master.
    pub fn failover(&self, slot: u32) -> usize {
        let old = self.node_of_slot(slot).expect("a master serves the slot");
        let deadline = Instant::now() + START_DEADLINE;
        // A replica shows in its master's view once the handshake is done.
        let replica_port = loop {
            if let Some(port) = self.replica_of(old) {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "the master of slot {slot} has no replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let new = self
            .nodes
            .iter()
            .position(|n| n.port() == replica_port)
            .expect("the replica is one of ours");
        let _: String = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut self.nodes[new].client())
            .expect("CLUSTER FAILOVER");
        while self.node_of_slot(slot) != Some(new)
            || self.nodes.iter().any(|n| {
                let slots: Option<redis::Value> = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut n.client())
                    .ok();
                slot_master(slots, slot) != Some(replica_port)
            })
        {
            assert!(
                Instant::now() < deadline,
                "the failover of slot {slot} to port {replica_port} did not complete"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ok();
        new
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn target(&self) -> RedisTarget {
        RedisTarget::Cluster(self.urls())
    }

    /// The port of a replica of node `master`, as the master sees its cluster.
    fn replica_of(&self, master: usize) -> Option<u16> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.nodes[master].client())
            .ok()?;
        let master_id = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split(' ').next())?;
        nodes
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(master_id))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse::<u16>().ok())
    }

    /// The node (index into `nodes`) serving `slot`, as the cluster reports it.
    pub fn node_of_slot(&self, slot: u32) -> Option<usize> {
        let slots: Option<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.nodes[0].client())
            .ok();
        let port = slot_master(slots, slot)?;
        self.nodes.iter().position(|n| n.port() == port)
    }
}

/// The port of the master serving `slot` in a `CLUSTER SLOTS` reply.
fn slot_master(slots: Option<redis::Value>, slot: u32) -> Option<u16> {
    let Some(redis::Value::Array(ranges)) = slots else {
        return None;
    };
    for r in ranges {
        let redis::Value::Array(parts) = r else {
            continue;
        };
        let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi)), Some(master)) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if (*lo..=*hi).contains(&i64::from(slot)) {
            let redis::Value::Array(m) = master else {
                continue;
            };
            let Some(redis::Value::Int(port)) = m.get(1) else {
                continue;
            };
            return u16::try_from(*port).ok();
        }
    }
    None
}

/// A key prefix of its own on the shared Redis for one test; its keys are deleted on drop.
pub struct TestPrefix {
    prefix: String,
}

impl TestPrefix {
    /// `t:{name}:{pid}:{n}`: unique per process and call.
    pub fn new(name: &str) -> TestPrefix {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TestPrefix {
            prefix: format!("t:{name}:{}:{nanos}:{n}", std::process::id()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn target() -> RedisTarget {
        RedisTarget::Single(SHARED_REDIS_URL.to_string())
    }
}

impl std::ops::Deref for TestPrefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.prefix
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(SHARED_REDIS_URL).and_then(|c| c.get_connection())
        else {
            return;
        };
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(&keys).query::<i64>(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}
