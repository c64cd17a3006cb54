//! What the attack tests measure on the server process (resident memory, open file descriptors)
//! and what a well-behaved client checks while an attack runs (`/healthz`, publish → ack).

use crate::support::{next_json, within, Server};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Attack tests run one at a time: each asserts that one attack leaves the server responsive,
/// and several attacks at once on a small machine would measure each other instead. Hold the
/// guard for the whole test (a test that fails releases it as it unwinds).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// How long `/healthz` or a well-behaved publish may take during an attack. Generous on purpose:
/// the attacks it guards against stalled the server for seconds to minutes.
pub const RESPONSIVE: Duration = Duration::from_secs(3);

/// Resident memory of a process, in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Anonymous resident memory of a process, in KiB (`RssAnon`: what it allocated, without the
/// file pages it maps, such as the database's memory-mapped pages, which the kernel may drop).
pub fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Waits until `f()` holds, polling every 50 ms, for at most `limit`; returns whether it held.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /healthz` on a fresh connection; panics unless it answers 200 within [`RESPONSIVE`].
pub async fn assert_healthy(addr: &str, during: &str) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(RESPONSIVE)
        .build()
        .expect("http client");
    let start = Instant::now();
    let res = client.get(format!("http://{addr}/healthz")).send().await;
    match res {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => panic!("during {during}: /healthz answered {}", r.status()),
        Err(e) => panic!(
            "during {during}: /healthz failed after {:?}: {e}",
            start.elapsed()
        ),
    }
}

/// A well-behaved client: connects, says hello, joins a stream room, publishes and expects its
/// ack within [`RESPONSIVE`] for each step.
pub async fn assert_serves_clients(addr: &str, during: &str) {
    let step = |what: &str| format!("during {during}: a well-behaved client {what}");
    let connect = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"));
    let (ws, _) = match tokio::time::timeout(RESPONSIVE, connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => panic!("{}: {e}", step("could not connect")),
        Err(_) => panic!("{}", step("could not connect in time")),
    };
    let (mut tx, mut rx) = ws.split();
    let client = format!("good-{}", rand::random::<u32>());
    for frame in [
        json!({"type":"hello","client_id": client}),
        json!({"type":"join","room":"probe:good","kind":"stream"}),
        json!({"type":"publish","room":"probe:good","id":"p1","data":{"ok":true}}),
    ] {
        tx.send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }
    let deadline = Instant::now() + RESPONSIVE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, next_json(&mut rx, &step("reading")))
            .await
            .unwrap_or_else(|_| panic!("{}", step("got no ack in time")));
        match msg["type"].as_str() {
            Some("ack") => break,
            Some("error") => panic!("{}: {msg}", step("got an error")),
            _ => {}
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

/// Starts `concord serve` with `args` under a hard open-file limit (`prlimit --nofile=N:N`, which
/// execs the server, so the pid is the server's).
pub async fn start_with_nofile(data: &Path, args: &[&str], log: &Path, nofile: u64) -> Server {
    Server::start_wrapped(
        data,
        args,
        log,
        &["prlimit", &format!("--nofile={nofile}:{nofile}"), "--"],
    )
    .await
}

/// Runs `fut` with the step timeout of the support module.
pub async fn step<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    within(what, fut).await
}
