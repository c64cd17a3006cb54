//! Clients that never read: they flood tiny frames without `hello`, or join with a large
//! `history`, and never read a byte (a 4 KiB receive buffer). The server must close their
//! sockets (handshake timeout, write timeout, queue bound), free their memory, never hold more
//! than `--max-conns-per-ip` of them at once, and keep serving everyone else meanwhile.

use crate::probe;
use crate::support::{Report, Server};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Raw = WebSocketStream<TcpStream>;

/// Attackers connect from this loopback address, so their per-IP limit is not the probes' one.
const ATTACKER_IP: &str = "127.0.0.2";

/// A WebSocket from [`ATTACKER_IP`] with a tiny receive buffer; `None` if the upgrade was refused.
async fn connect_raw(addr: &str) -> Option<(SplitSink<Raw, Message>, SplitStream<Raw>)> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .bind(format!("{ATTACKER_IP}:0").parse().expect("addr"))
        .expect("bind attacker address");
    let stream = socket
        .connect(addr.parse().expect("server addr"))
        .await
        .expect("tcp connect");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), stream)
        .await
        .ok()?;
    Some(ws.split())
}

/// Reads the raw socket (whatever the server left in it) and says whether it then ended (EOF
/// or reset) within `limit`.
async fn ends_within(tx: SplitSink<Raw, Message>, rx: SplitStream<Raw>, limit: Duration) -> bool {
    let mut ws = rx.reunite(tx).expect("halves of one socket");
    let tcp = ws.get_mut();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Warms the server up (the first write opens the store's WAL files, part of the baseline) and
/// returns its settled descriptor count.
async fn warm_up(server: &Server) -> usize {
    probe::assert_healthy(&server.addr, "warm-up").await;
    probe::assert_serves_clients(&server.addr, "warm-up").await;
    settled_fds(server.pid).await
}

/// The server's fd count once the sockets of earlier steps are closed.
async fn settled_fds(pid: u32) -> usize {
    tokio::time::sleep(Duration::from_secs(1)).await;
    probe::fd_count(pid)
}

/// Sends `n` small frames without `hello` and never reads; gives the write half back (the
/// server, not this client, must end the connection). Each frame is undecodable (no `type`)
/// with an `id` and a `room` of 256 bytes, which the error answering it echoes: ~650 bytes of
/// answer per frame, so the answers outgrow the socket buffers within seconds.
async fn flood(mut tx: SplitSink<Raw, Message>, n: usize) -> SplitSink<Raw, Message> {
    let frame = json!({"id": "i".repeat(256), "room": "r".repeat(256)}).to_string();
    for _ in 0..n {
        if tx.feed(Message::text(frame.clone())).await.is_err() {
            return tx;
        }
    }
    let _ = tx.flush().await;
    tx
}

/// The server's fd count comes back to `baseline` within `limit`.
async fn fds_return(pid: u32, baseline: usize, limit: Duration) -> bool {
    probe::eventually(limit, || probe::fd_count(pid) <= baseline).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_hello_that_never_reads_is_closed_and_its_slot_freed_only_then() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let args = [
        "--max-conns-per-ip",
        "4",
        "--handshake-timeout",
        "5s",
        "--write-timeout",
        "2s",
    ];
    let server = Server::start(report.data_dir(), &args, &log).await;
    let addr = server.addr.clone();
    let (fds0, rss0) = (warm_up(&server).await, probe::rss_kib(server.pid));

    // Open every socket first, then flood: at most 4 are accepted.
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match connect_raw(&addr).await {
            Some(c) => conns.push(c),
            None => refused += 1,
        }
    }
    assert_eq!((conns.len(), refused), (4, 4), "at most 4 per IP at once");
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (tx, rx) in conns {
        readers.push(rx);
        senders.push(tokio::spawn(flood(tx, 12_000)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    probe::assert_healthy(&addr, "the never-reading flood").await;
    probe::assert_serves_clients(&addr, "the never-reading flood").await;
    assert!(
        probe::fd_count(server.pid) <= fds0 + 5,
        "more than 4 attacker sockets open"
    );

    // Handshake timeout (5 s) + write timeout (2 s): every socket is really closed.
    assert!(
        fds_return(server.pid, fds0, Duration::from_secs(15)).await,
        "the server still holds {} fds (baseline {fds0}): never-reading sockets stay open",
        probe::fd_count(server.pid)
    );
    for (rx, sender) in readers.into_iter().zip(senders) {
        let tx = sender.await.expect("sender");
        assert!(
            ends_within(tx, rx, Duration::from_secs(10)).await,
            "the client side never saw its socket end"
        );
    }
    // At most what the queue bound lets 4 connections hold (malloc may keep it cached),
    // never the unbounded backlog of sockets left open.
    let rss = probe::rss_kib(server.pid);
    assert!(
        rss < rss0 + (4 * 8 + 16) * 1024,
        "rss grew from {rss0} to {rss} KiB and stayed"
    );
    // The slots are free again, and only now.
    let again = connect_raw(&addr).await;
    assert!(
        again.is_some(),
        "a slot of a closed connection was not freed"
    );
    probe::assert_serves_clients(&addr, "after the flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_faster_than_it_reads_hits_the_queue_bound_and_is_closed_at_once() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    // Long handshake and write timeouts: only the queue bound can end these connections.
    let args = [
        "--max-conns-per-ip",
        "4",
        "--handshake-timeout",
        "60s",
        "--write-timeout",
        "60s",
        "--max-queue-bytes",
        "4194304",
    ];
    let server = Server::start(report.data_dir(), &args, &log).await;
    let addr = server.addr.clone();
    let (fds0, rss0) = (warm_up(&server).await, probe::rss_kib(server.pid));
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = connect_raw(&addr).await.expect("upgrade");
        readers.push(rx);
        senders.push(tokio::spawn(flood(tx, 100_000)));
    }
    probe::assert_healthy(&addr, "the flood").await;
    probe::assert_serves_clients(&addr, "the flood").await;
    assert!(
        fds_return(server.pid, fds0, Duration::from_secs(15)).await,
        "the server still holds {} fds (baseline {fds0}): lagging sockets were not closed",
        probe::fd_count(server.pid)
    );
    for (rx, sender) in readers.into_iter().zip(senders) {
        let tx = sender.await.expect("sender");
        assert!(ends_within(tx, rx, Duration::from_secs(10)).await);
    }
    let rss = probe::rss_kib(server.pid);
    // At most what the queue bound (4 MiB) lets 4 connections hold, plus slack.
    assert!(
        rss < rss0 + (4 * 4 + 16) * 1024,
        "rss grew from {rss0} to {rss} KiB"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let cut = [("limit", "max_queue_bytes")];
    assert_eq!(
        crate::support::metric(&metrics, "concord_limit_hits_total", &cut),
        4.0,
        "{metrics}"
    );
}

/// Publishes `n` events of `size` bytes to `room` and waits for every ack.
async fn fill_room(addr: &str, room: &str, n: usize, size: usize) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let pad = "x".repeat(size);
    tx.send(Message::text(
        json!({"type":"hello","client_id":"filler"}).to_string(),
    ))
    .await
    .expect("hello");
    tx.send(Message::text(
        json!({"type":"join","room":room,"kind":"stream"}).to_string(),
    ))
    .await
    .expect("join");
    // In batches, reading the acks (and the events echoed to this member) in between.
    for batch in (0..n).collect::<Vec<_>>().chunks(10) {
        for i in batch {
            let m = json!({"type":"publish","room":room,"id":format!("f{i}"),"data":{"pad":pad}});
            tx.feed(Message::text(m.to_string())).await.expect("feed");
        }
        tx.flush().await.expect("flush");
        let mut acks = 0;
        while acks < batch.len() {
            let v = crate::support::next_json(&mut rx, "filling the room").await;
            match v["type"].as_str() {
                Some("ack") => acks += 1,
                Some("error") => panic!("filling the room: {v}"),
                _ => {}
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_clients_that_join_with_a_large_history_and_never_read_are_closed() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let args = [
        "--max-conns-per-ip",
        "4",
        "--write-timeout",
        "2s",
        "--max-catch-up-bytes",
        "33554432",
        "--sqlite-sync",
        "normal",
    ];
    // A fixed mmap threshold: glibc returns every large buffer to the OS when it is freed, so
    // resident memory measures what the server still holds, not what malloc keeps cached.
    let server = Server::start_wrapped(
        report.data_dir(),
        &args,
        &log,
        &["env", "MALLOC_MMAP_THRESHOLD_=131072"],
    )
    .await;
    let addr = server.addr.clone();
    let room = "big:r";
    // 300 events of 60 KB: a `joined` with history 1000 is ~18 MB, more than the socket buffers.
    fill_room(&addr, room, 300, 60_000).await;
    let (fds0, rss0) = (warm_up(&server).await, probe::anon_kib(server.pid));
    // Three waves: the memory of each is released when its sockets close.
    let mut rss_after = Vec::new();
    for wave in 0..3 {
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for i in 0..4 {
            let (mut tx, rx) = connect_raw(&addr).await.expect("upgrade");
            for m in [
                json!({"type":"hello","client_id":format!("sink-{wave}-{i}")}),
                json!({"type":"join","room":room,"history":1000}),
            ] {
                tx.send(Message::text(m.to_string())).await.expect("send");
            }
            readers.push(rx);
            writers.push(tx);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        probe::assert_healthy(&addr, "never-reading members").await;
        probe::assert_serves_clients(&addr, "never-reading members").await;
        // Write timeout 2 s: every socket is closed and its `joined` freed.
        assert!(
            fds_return(server.pid, fds0, Duration::from_secs(15)).await,
            "the server still holds {} fds (baseline {fds0}): stalled writers keep their sockets",
            probe::fd_count(server.pid)
        );
        for (rx, tx) in readers.into_iter().zip(writers) {
            assert!(ends_within(tx, rx, Duration::from_secs(10)).await);
        }
        // Each wave held ~4 × 2 × 18 MB while it lasted; all of it is released. Anonymous
        // memory: the history is read through the database's memory map, whose file pages
        // count in the RSS but belong to the kernel's page cache.
        let released = probe::eventually(Duration::from_secs(5), || {
            probe::anon_kib(server.pid) < rss0 + 24 * 1024
        })
        .await;
        rss_after.push(probe::anon_kib(server.pid));
        assert!(
            released,
            "anonymous memory before {rss0} KiB, after each wave {rss_after:?}"
        );
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    // Closed by the write timeout, or by the queue bound when `joined` found `welcome` still
    // queued.
    let hits = |limit: &str| -> u64 {
        crate::support::metric(&metrics, "concord_limit_hits_total", &[("limit", limit)]) as u64
    };
    assert_eq!(
        hits("write_timeout") + hits("max_queue_bytes"),
        12,
        "{metrics}"
    );
    probe::assert_serves_clients(&addr, "after the attack").await;
}
