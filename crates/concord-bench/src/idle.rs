//! The `idle` scenario: N connections that greet, join a room and then stay silent; the server's
//! RSS (from /proc/PID/status) before and after gives the memory cost of one idle connection.

use crate::conn::{self, Spec};
use crate::{parse_duration, sys, Common};
use anyhow::bail;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read buffer of idle bench connections (only the bench's own memory).
const IDLE_BUFFER: usize = 4 * 1024;
/// File descriptors the server needs besides its connections (listener, SQLite, epoll, …).
const SERVER_FD_SLACK: u64 = 64;

#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The server's pid, to read its RSS and open-file limit from /proc (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Rooms the connections are spread over (connection i joins room i mod ROOMS). Every join
    /// sends `member_joined` to the room's other members, so one huge room costs O(N²) frames.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Wait this long after the last join before reading the RSS.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| sys::proc_status_bytes(p, "VmRSS"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub async fn idle(common: &Common, a: IdleArgs) -> anyhow::Result<()> {
    let n = a.connections;
    if a.rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    match sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < n as u64 + 64 => eprintln!(
            "warning: this process may open only {soft} files; {n} connections need more (raise the hard limit: ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise this process's open-file limit: {e}"),
    }
    match a.server_pid {
        Some(pid) => match sys::nofile_soft_limit(pid) {
            Some(limit) if limit < n as u64 + SERVER_FD_SLACK => eprintln!(
                "warning: the server (pid {pid}) may open only {limit} files, fewer than {n} connections + {SERVER_FD_SLACK}: \
                 connections will fail; restart it with a higher limit (ulimit -n {})",
                n as u64 + SERVER_FD_SLACK * 4
            ),
            Some(_) => {}
            None => eprintln!("warning: cannot read /proc/{pid}/limits (is the server on this machine?)"),
        },
        None => eprintln!("note: without --server-pid the server's RSS cannot be read; only the setup is measured"),
    }
    let tag = conn::run_tag();
    println!(
        "scenario idle: {n} connections, each hello + join one of {} room(s), {}",
        a.rooms,
        common.url()
    );
    let before = rss(a.server_pid);
    let t = Instant::now();
    let specs: Vec<Spec> = (0..n)
        .map(|i| Spec {
            client_id: conn::client_id(&tag, "i", i),
            rooms: vec![format!("bench-{tag}-idle{}", i % a.rooms)],
        })
        .collect();
    // The first connection of each room creates it; the rest may then go in parallel.
    let first = a.rooms.min(n);
    let received = Arc::new(AtomicU64::new(0));
    let drain = |ws: conn::Ws| {
        let received = received.clone();
        // Each idle connection still reads (and so answers pings and lets the server's queue
        // of membership events drain), but sends nothing.
        tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(_)) = ws.next().await {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let firsts = conn::open_all(
        common.url(),
        &specs[..first],
        common.connect_concurrency,
        IDLE_BUFFER,
    )
    .await?;
    let mut rest = futures::stream::iter(specs[first..].iter().cloned())
        .map(|spec| {
            let url = common.url().to_string();
            async move { conn::open(&url, &spec, IDLE_BUFFER).await }
        })
        .buffer_unordered(common.connect_concurrency.max(1));
    let mut conns: Vec<_> = firsts.into_iter().map(drain).collect();
    let mut failures = 0usize;
    let mut first_failure = None;
    while let Some(r) = rest.next().await {
        match r {
            Ok(ws) => conns.push(drain(ws)),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(format!("{e:#}"));
            }
        }
    }
    drop(rest);
    let setup = t.elapsed();
    println!(
        "setup         {} connections open and joined in {:.2} s ({}/s); {failures} failed",
        conns.len(),
        setup.as_secs_f64(),
        (conns.len() as f64 / setup.as_secs_f64().max(1e-9)).round()
    );
    if let Some(e) = &first_failure {
        println!("first failure {e}");
    }
    // Wait for the membership events of the joins to be delivered.
    let quiet_from = Instant::now();
    let mut seen = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received.load(Ordering::Relaxed);
        if now == seen || quiet_from.elapsed() > Duration::from_secs(120) {
            break;
        }
        seen = now;
    }
    println!(
        "delivered     {seen} frames to the idle connections (member_joined of later joiners, …) \
         within {:.2} s of the last join",
        quiet_from.elapsed().as_secs_f64()
    );
    tokio::time::sleep(a.settle).await;
    let after = rss(a.server_pid);
    let open = conns.len();
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64),
        _ => None,
    };
    if let (Some(b), Some(a_), Some(per)) = (before, after, per_conn) {
        println!(
            "server RSS    before {:.1} MiB, with {open} idle connections {:.1} MiB: +{:.1} MiB",
            mib(b),
            mib(a_),
            mib(a_.saturating_sub(b))
        );
        println!("per idle conn {:.0} bytes ({:.2} KiB)", per, per / 1024.0);
    }
    for c in &conns {
        c.abort();
    }
    drop(conns);
    tokio::time::sleep(a.settle).await;
    let closed = rss(a.server_pid);
    if let Some(c) = closed {
        println!(
            "server RSS    {:.2} s after closing them: {:.1} MiB",
            a.settle.as_secs_f64(),
            mib(c)
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "idle",
                "url": common.url(),
                "connections": open,
                "failed": failures,
                "rss_before_bytes": before,
                "rss_after_bytes": after,
                "rss_after_close_bytes": closed,
                "bytes_per_connection": per_conn,
                "setup_s": setup.as_secs_f64(),
            })
        );
    }
    if failures > 0 && open == 0 {
        bail!("no connection could be opened");
    }
    Ok(())
}
