//! Test support: start a server on port 0, a raw WebSocket client, a tiny HTTP client.

pub use concord_server::TestClock;
use concord_server::{Config, Env, Metrics, ServerError, StoreConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected message may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's metrics, read with [`TestServer::metric`].
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), ServerError>>,
}

/// A port that stays bound while servers come and go on it: each server accepts on a duplicate
/// of one listening socket, so a restart never releases the port (nothing else can take it,
/// and clients that connect between two servers wait in its backlog for the next one).
pub struct Port(std::net::TcpListener);

impl Port {
    pub fn bind() -> Port {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Port(l)
    }

    /// A listener on this port for the next server.
    pub fn listener(&self) -> tokio::net::TcpListener {
        tokio::net::TcpListener::from_std(self.0.try_clone().unwrap()).unwrap()
    }
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::with_listener(config, listener)
    }

    pub fn with_listener(config: Config, listener: tokio::net::TcpListener) -> TestServer {
        Self::with_env(config, listener, Env::system())
    }

    /// A server on an injected clock (and metrics).
    pub fn with_env(config: Config, listener: tokio::net::TcpListener, env: Env) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let metrics = env.metrics.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let join = tokio::spawn(concord_server::run(config, listener, shutdown, env));
        TestServer {
            addr,
            metrics,
            stop: Some(tx),
            join,
        }
    }

    /// A server with an in-memory store.
    pub async fn memory(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut c = Config::default();
        tweak(&mut c);
        Self::start(c).await
    }

    /// A server with an in-memory store whose time is `clock` (it moves only when the test
    /// advances it: token expiry, rate limits, HLC).
    pub async fn memory_at(clock: &TestClock, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut c = Config::default();
        tweak(&mut c);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::with_env(c, listener, Env::with_time(clock.clone()))
    }

    /// The current value of one of the server's metrics (0 for a labelled sample not yet
    /// recorded; a name the server does not export fails the test).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics.value(name, labels)
    }

    /// A server with a SQLite store in `dir`.
    pub async fn sqlite(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut c = Config::embedded(dir);
        if let StoreConfig::Sqlite { sync_full, .. } = &mut c.store {
            *sync_full = false;
        }
        tweak(&mut c);
        Self::start(c).await
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Graceful shutdown; waits until `run` returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, &mut self.join)
            .await
            .expect("server did not stop in time")
            .unwrap()
            .unwrap();
    }
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(server: &TestServer) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        Ws { ws }
    }

    /// Connects and completes the hello/welcome handshake.
    pub async fn hello(server: &TestServer, client_id: &str) -> Ws {
        let mut w = Self::connect(server).await;
        w.send(json!({"type":"hello","client_id":client_id})).await;
        let welcome = w.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["client_id"], client_id);
        w
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Queues without flushing (for pipelining many frames).
    pub async fn feed(&mut self, v: Value) {
        self.ws.feed(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn flush(&mut self) {
        self.ws.flush().await.unwrap();
    }

    /// The next JSON message (pings skipped); fails the test on timeout or close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection ended")
                .expect("socket error");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match m {
                None => return None,
                Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn join(&mut self, room: &str, extra: Value) -> Value {
        let mut msg = json!({"type":"join","room":room,"kind":"stream"});
        if let (Some(m), Some(e)) = (msg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        self.send(msg).await;
        let joined = self.recv().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        joined
    }

    /// Publishes and waits for the ack, skipping (and returning) events that arrive meanwhile.
    pub async fn publish(&mut self, room: &str, id: &str, data: Value) -> (Value, Vec<Value>) {
        self.send(json!({"type":"publish","room":room,"id":id,"data":data}))
            .await;
        let mut events = Vec::new();
        loop {
            let m = self.recv().await;
            match m["type"].as_str() {
                Some("ack") if m["id"] == id => return (m, events),
                Some("event") => events.push(m),
                _ if is_ephemeral(&m) => {}
                _ => panic!("unexpected {m} while waiting for ack of {id}"),
            }
        }
    }

    /// Collects `n` events, skipping ephemeral messages (presence, membership), failing on
    /// anything else.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self.recv().await;
            if is_ephemeral(&m) {
                continue;
            }
            assert_eq!(m["type"], "event", "{m}");
            out.push(m);
        }
        out
    }

    /// The next message that is not presence or a membership notice.
    pub async fn recv_durable(&mut self) -> Value {
        loop {
            let m = self.recv().await;
            if !is_ephemeral(&m) {
                return m;
            }
        }
    }
}

/// One HTTP request; returns the status and the body (JSON if it parses, else a string).
pub async fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{}{}", server.addr, path);
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Every event of a room over HTTP, following pagination.
pub async fn all_events(server: &TestServer, room: &str) -> Vec<Value> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let (status, page) = http(
            server,
            "GET",
            &format!("/v1/rooms/{room}/events?after={after}&limit=50"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        after = events.last().unwrap()["seq"].as_u64().unwrap();
        out.extend(events);
    }
}

/// One value of a scraped `/metrics` text (see `concord_server::exposition::sample`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    concord_server::exposition::sample(text, name, labels).unwrap_or_else(|e| panic!("{e}"))
}

/// Presence and membership notices: not part of a room's durable order.
pub fn is_ephemeral(m: &Value) -> bool {
    matches!(
        m["type"].as_str(),
        Some("presence" | "member_joined" | "member_left")
    )
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// Pipelines `each` publishes (`id` `m0`, `m1`, …, data `{"p":p,"n":n}`) on `w` into `room`,
/// then reads their acks: they must come in send order, with growing seqs (one connection's
/// publishes commit in the order they were sent). Returns the acks.
pub async fn pipelined_publishes(mut w: Ws, room: String, p: usize, each: usize) -> Vec<Value> {
    for n in 0..each {
        w.feed(json!({"type":"publish","room":room,"id":format!("m{n}"),"data":{"p":p,"n":n}}))
            .await;
    }
    w.flush().await;
    let mut acks = Vec::new();
    while acks.len() < each {
        let m = w.recv().await;
        assert_eq!(m["type"], "ack", "{m}");
        acks.push(m);
    }
    let ids: Vec<&str> = acks.iter().map(|a| a["id"].as_str().unwrap()).collect();
    let sent: Vec<String> = (0..each).map(|n| format!("m{n}")).collect();
    assert_eq!(ids, sent, "acks out of send order");
    let s: Vec<u64> = acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "one connection's publishes must commit in send order: {s:?}"
    );
    acks
}
