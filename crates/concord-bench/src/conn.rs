//! Opening bench connections: connect (TCP_NODELAY), `hello` → `welcome`, then `join` every room
//! (kind `stream`) → `joined`, many connections at a time; or, to a Socket.IO server, the
//! Engine.IO open, the namespace connect and a `join` event per room, each acked.

use crate::eio::{self, Packet};
use crate::wire::{self, Kind};
use crate::Proto;
use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a reader's loop ended.
pub enum ReadEnd {
    /// The run told it to stop.
    Stopped,
    /// The connection ended; why.
    Closed(String),
}

/// The next text frame of a reader, skipping other frames, or how the reading ended.
pub async fn next_text(
    stream: &mut futures::stream::SplitStream<Ws>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, ReadEnd> {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => return Err(ReadEnd::Stopped),
            m = stream.next() => m,
        };
        return match msg {
            None => Err(ReadEnd::Closed("closed without a close frame".into())),
            Some(Err(e)) => Err(ReadEnd::Closed(format!("connection error: {e}"))),
            Some(Ok(Message::Close(f))) => Err(ReadEnd::Closed(match f {
                Some(f) => format!("close {} ({})", u16::from(f.code), f.reason),
                None => "close without a code".into(),
            })),
            Some(Ok(Message::Text(t))) => Ok(t),
            Some(Ok(_)) => continue,
        };
    }
}

/// How long one connection may take to connect, greet and join.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one connection is: its client id and the rooms it joins.
#[derive(Clone, Debug)]
pub struct Spec {
    pub client_id: String,
    pub rooms: Vec<String>,
}

/// A client id unique to this run: `bench-<pid>-<time>-<role><n>`.
pub fn client_id(run: &str, role: &str, n: usize) -> String {
    format!("bench-{run}-{role}{n}")
}

/// A short tag unique to this run (pid and time), for client ids and room names.
pub fn run_tag() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), ms % 0xffff_ffff)
}

/// Reads frames until one of kind `want`; an `error` frame or the end of the stream fails.
async fn expect(ws: &mut Ws, want: Kind) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            None => bail!("connection closed while waiting for {want:?}"),
            Some(Err(e)) => bail!("connection failed while waiting for {want:?}: {e}"),
            Some(Ok(Message::Text(t))) => match wire::kind(&t) {
                k if k == want => return Ok(t.to_string()),
                Kind::Error => bail!(
                    "server error while waiting for {want:?}: {}",
                    wire::describe_error(&t)
                ),
                _ => {}
            },
            Some(Ok(Message::Close(f))) => bail!("server closed the connection: {f:?}"),
            Some(Ok(_)) => {}
        }
    }
}

/// Connects, says hello and joins every room of `spec`.
pub async fn open(url: &str, spec: &Spec, buffer_bytes: usize) -> anyhow::Result<Ws> {
    open_kind(url, spec, buffer_bytes, "stream").await
}

/// Like `open`, joining every room with the given kind (`stream` or `doc`).
pub async fn open_kind(
    url: &str,
    spec: &Spec,
    buffer_bytes: usize,
    kind: &'static str,
) -> anyhow::Result<Ws> {
    let setup = async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config(buffer_bytes)), true)
                .await
                .with_context(|| format!("connecting to {url}"))?;
        ws.send(Message::text(wire::hello(&spec.client_id))).await?;
        expect(&mut ws, Kind::Welcome).await?;
        for room in &spec.rooms {
            ws.feed(Message::text(wire::join_kind(room, kind))).await?;
        }
        ws.flush().await?;
        for _ in &spec.rooms {
            expect(&mut ws, Kind::Joined).await?;
        }
        anyhow::Ok(ws)
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| anyhow!("connection setup took longer than {SETUP_TIMEOUT:?}"))?
}

fn ws_config(buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(buffer_bytes)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(usize::MAX)
}

/// The next text frame during setup; pings are answered, the end of the stream fails.
async fn next_setup_text(ws: &mut Ws, waiting_for: &str) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            None => bail!("connection closed while waiting for {waiting_for}"),
            Some(Err(e)) => bail!("connection failed while waiting for {waiting_for}: {e}"),
            Some(Ok(Message::Text(t))) => {
                if eio::parse(&t) == Packet::Ping {
                    ws.send(Message::text(eio::PONG)).await?;
                    continue;
                }
                return Ok(t.to_string());
            }
            Some(Ok(Message::Close(f))) => bail!("server closed the connection: {f:?}"),
            Some(Ok(_)) => {}
        }
    }
}

/// Connects to a Socket.IO server: Engine.IO open, namespace connect, then a `join` event per
/// room of `spec`, each acked.
pub async fn open_socketio(url: &str, spec: &Spec, buffer_bytes: usize) -> anyhow::Result<Ws> {
    let url = eio::endpoint(url);
    let setup = async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(&url, Some(ws_config(buffer_bytes)), true)
                .await
                .with_context(|| format!("connecting to {url}"))?;
        let open = next_setup_text(&mut ws, "the Engine.IO open packet").await?;
        if eio::parse(&open) != Packet::Open {
            bail!("expected the Engine.IO open packet, got {open:?}");
        }
        ws.send(Message::text(eio::CONNECT)).await?;
        loop {
            let t = next_setup_text(&mut ws, "the namespace connect").await?;
            match eio::parse(&t) {
                Packet::Connected => break,
                Packet::ConnectError(e) => bail!("the server refused the connection: {e}"),
                _ => {}
            }
        }
        for (i, room) in spec.rooms.iter().enumerate() {
            ws.feed(Message::text(eio::join(room, i as u64))).await?;
        }
        ws.flush().await?;
        let mut acked = 0;
        while acked < spec.rooms.len() {
            let t = next_setup_text(&mut ws, "the acks of the joins").await?;
            match eio::parse(&t) {
                Packet::Ack { .. } => acked += 1,
                Packet::Close | Packet::Disconnect => bail!("the server disconnected: {t:?}"),
                _ => {}
            }
        }
        anyhow::Ok(ws)
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| anyhow!("connection setup took longer than {SETUP_TIMEOUT:?}"))?
}

/// Opens every connection of `specs`, each to its own URL and with the given protocol (at most
/// `concurrency` at a time), in order. Stops at the first failure.
pub async fn open_each(
    proto: Proto,
    specs: &[(&str, Spec)],
    concurrency: usize,
    buffer_bytes: usize,
) -> anyhow::Result<Vec<Ws>> {
    let mut opened = Vec::with_capacity(specs.len());
    let mut stream = futures::stream::iter(specs.iter().enumerate())
        .map(|(i, (url, spec))| async move {
            let ws = match proto {
                Proto::Concord => open_kind(url, spec, buffer_bytes, "stream").await,
                Proto::Socketio => open_socketio(url, spec, buffer_bytes).await,
            };
            ws.with_context(|| format!("connection {i} ({}, {url})", spec.client_id))
        })
        .buffered(concurrency.max(1));
    while let Some(ws) = stream.next().await {
        opened.push(ws?);
    }
    Ok(opened)
}

/// Opens every connection of `specs` (at most `concurrency` at a time), in order. Stops at the
/// first failure.
pub async fn open_all(
    url: &str,
    specs: &[Spec],
    concurrency: usize,
    buffer_bytes: usize,
) -> anyhow::Result<Vec<Ws>> {
    open_all_kind(url, specs, concurrency, buffer_bytes, "stream").await
}

/// Like `open_all`, joining with the given room kind.
pub async fn open_all_kind(
    url: &str,
    specs: &[Spec],
    concurrency: usize,
    buffer_bytes: usize,
    kind: &'static str,
) -> anyhow::Result<Vec<Ws>> {
    let mut opened = Vec::with_capacity(specs.len());
    let mut stream = futures::stream::iter(specs.iter().enumerate())
        .map(|(i, spec)| async move {
            open_kind(url, spec, buffer_bytes, kind)
                .await
                .with_context(|| format!("connection {i} ({})", spec.client_id))
        })
        .buffered(concurrency.max(1));
    while let Some(ws) = stream.next().await {
        opened.push(ws?);
    }
    Ok(opened)
}

/// Reads and discards whatever the server queued during setup (e.g. `member_joined` of every
/// later joiner) until each connection has been quiet for `quiet`; returns the frames discarded.
pub async fn settle(conns: &mut [Ws], quiet: Duration) -> u64 {
    let drains = conns.iter_mut().map(|ws| async move {
        let mut n = 0u64;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(quiet, ws.next()).await {
            n += 1;
        }
        n
    });
    futures::future::join_all(drains).await.into_iter().sum()
}
