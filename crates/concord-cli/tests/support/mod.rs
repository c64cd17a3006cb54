//! Shared by the crash tests: the real `concord` binary as a child process (started on port 0,
//! SIGKILLed by its pid, always reaped), step timeouts, and a report that keeps the data and
//! logs of a failed run.

pub mod dist;
pub mod load;

use futures::stream::{SplitStream, StreamExt};
use serde_json::Value;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[allow(dead_code)] // not every test binary that shares this module uses raw sockets
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The longest any single step may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One value of a scraped `/metrics` text: 0 for a labelled sample not yet recorded; a name the
/// server does not export fails the test.
#[allow(dead_code)] // not every test binary reads metrics
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    concord_server::exposition::sample(text, name, labels).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[allow(dead_code)] // not every test binary that shares this module kills at delays
/// `kills` delays in milliseconds within `range`, one from each equal slice of it (so every kill
/// point differs), in a seeded random order.
pub fn kill_delays(rng: &mut impl rand::Rng, range: (u64, u64), kills: usize) -> Vec<u64> {
    use rand::seq::SliceRandom;
    let slice = (range.1 - range.0) / kills as u64;
    let mut delays: Vec<u64> = (0..kills as u64)
        .map(|k| rng.random_range(range.0 + k * slice..range.0 + (k + 1) * slice))
        .collect();
    delays.shuffle(rng);
    delays
}

pub async fn within<T>(what: impl std::fmt::Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP_TIMEOUT:?}: {what}"),
    }
}

/// Owns the temp dirs; if the test panics it keeps them and prints the seed (with the variable
/// that replays it) and the tail of the current server log.
pub struct Report {
    seed: u64,
    replay_var: &'static str,
    data: Option<tempfile::TempDir>,
    logs: Option<tempfile::TempDir>,
    current_log: Option<PathBuf>,
}

impl Report {
    pub fn new(seed: u64, replay_var: &'static str) -> Report {
        Report {
            seed,
            replay_var,
            data: Some(tempfile::tempdir().expect("data dir")),
            logs: Some(tempfile::tempdir().expect("log dir")),
            current_log: None,
        }
    }
    pub fn data_dir(&self) -> &Path {
        self.data.as_ref().expect("data dir").path()
    }
    pub fn log_path(&mut self, name: &str) -> PathBuf {
        let p = self.logs.as_ref().expect("log dir").path().join(name);
        self.current_log = Some(p.clone());
        p
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (seed, var) = (self.seed, self.replay_var);
        eprintln!("\n*** test FAILED with seed {seed} (replay: {var}={seed})");
        if let Some(log) = &self.current_log {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("*** last lines of the server log {}:", log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("    {l}");
            }
        }
        if let Some(d) = self.data.take() {
            eprintln!("*** data dir kept at {}", d.keep().display());
        }
        if let Some(d) = self.logs.take() {
            eprintln!("*** server logs kept at {}", d.keep().display());
        }
    }
}

/// The log filter of the spawned processes: `CONCORD_TEST_SERVER_LOG` (e.g.
/// `info,concord_server::room=debug` to debug a failing seed), `info` by default.
pub fn server_log_filter() -> String {
    std::env::var("CONCORD_TEST_SERVER_LOG").unwrap_or_else(|_| "info".to_string())
}

/// A running `concord serve`; dropping it SIGKILLs the process (by its pid) and reaps it.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: String,
    /// The separate metrics listener (`--metrics-listen`), from its stdout line.
    pub metrics_addr: Option<String>,
    reaped: bool,
}

impl Server {
    /// Starts the binary on port 0 and waits for its `concord listening on ADDR` line.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub async fn start(data_dir: &Path, args: &[&str], log: &Path) -> Server {
        Self::start_wrapped(data_dir, args, log, &[]).await
    }

    /// Like [`Server::start`], run through `wrapper` (a command that execs its arguments, such as
    /// `prlimit --nofile=N:N --`, so the pid stays the server's).
    #[allow(dead_code)]
    pub async fn start_wrapped(
        data_dir: &Path,
        args: &[&str],
        log: &Path,
        wrapper: &[&str],
    ) -> Server {
        Self::start_listening(data_dir, "127.0.0.1:0", args, log, wrapper).await
    }

    /// Like [`Server::start`] on a given address (a restarted server keeps its clients' URL).
    #[allow(dead_code)]
    pub async fn start_at(data_dir: &Path, listen: &str, args: &[&str], log: &Path) -> Server {
        Self::start_listening(data_dir, listen, args, log, &[]).await
    }

    async fn start_listening(
        data_dir: &Path,
        listen: &str,
        args: &[&str],
        log: &Path,
        wrapper: &[&str],
    ) -> Server {
        let log_file = std::fs::File::create(log).expect("create server log");
        let bin = env!("CARGO_BIN_EXE_concord");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // The test's configuration only: no CONCORD_* variable of the environment leaks in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CONCORD_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("CONCORD_LOG", server_log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().expect("spawn concord");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        // From here on the guard kills the process whatever happens.
        let mut server = Server {
            child,
            pid,
            addr: String::new(),
            metrics_addr: None,
            reaped: false,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut metrics = None;
            // Keep draining stdout until the process is gone, so it never sees a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("concord metrics listening on ") {
                    metrics = Some(addr.trim().to_string());
                }
                if let Some(addr) = line.strip_prefix("concord listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((addr.trim().to_string(), metrics.take()));
                    }
                }
            }
        });
        match within(
            format!("concord (pid {pid}) to print its listening line"),
            rx,
        )
        .await
        {
            Ok((addr, metrics)) => {
                server.addr = addr;
                server.metrics_addr = metrics;
            }
            Err(_) => {
                let status = server.child.wait().ok();
                server.reaped = true;
                panic!(
                    "concord (pid {pid}) exited before listening: {status:?}; see its log {}",
                    log.display()
                );
            }
        }
        server
    }

    /// SIGTERM to the pid (`kill -TERM PID`): a graceful shutdown request.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid);
    }

    /// Waits up to `limit` for the process to exit and reaps it; `None` if it is still running.
    #[allow(dead_code)]
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9 (std's `Child::kill` sends SIGKILL to the pid) and check that it died of it.
    pub fn kill9(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.reaped = true;
            panic!(
                "concord (pid {}) had already exited before the kill: {status}",
                self.pid
            );
        }
        self.child.kill().expect("SIGKILL concord");
        let status = self.child.wait().expect("reap concord");
        self.reaped = true;
        assert_eq!(
            status.signal(),
            Some(9),
            "concord (pid {}) did not die of SIGKILL: {status}",
            self.pid
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next JSON text frame, within [`STEP_TIMEOUT`] in all (pings and other non-text frames
/// do not restart the clock).
#[allow(dead_code)]
pub async fn next_json(rx: &mut SplitStream<Ws>, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, rx.next()).await else {
            panic!("timed out after {STEP_TIMEOUT:?}: {what}");
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).expect("server frames are JSON")
            }
            Some(Ok(Message::Close(c))) => panic!("{what}: server closed the socket: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{what}: socket failed: {e}"),
            None => panic!("{what}: socket ended"),
        }
    }
}
