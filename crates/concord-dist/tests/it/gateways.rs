//! Gateways of the distributed mode over a real Redis: `concord_server::run` servers whose
//! backend is `concord_dist::gateway` (the Redis commit point, feeds and store). A stream room
//! written through every gateway has one gap-free order at every member; a retry on another
//! gateway gets its original ack; a feed whose connection was killed resubscribes and the
//! rooms fill what they missed; the same holds on a 3-master Redis Cluster, across a graceful
//! failover of a room's master.

use crate::support::config;
use concord_dist::gateway::{AckLevel, GatewayOptions};
use concord_dist::testing::redis::{Persistence, RedisServer, TestPrefix};
use concord_dist::RedisTarget;
use concord_server::{Config, Env};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct Gateway {
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

async fn gateway(target: &RedisTarget, prefix: &str, node: &str) -> Gateway {
    gateway_with(target, config(prefix), node).await
}

async fn gateway_with(target: &RedisTarget, log: concord_dist::LogConfig, node: &str) -> Gateway {
    let backend = concord_dist::gateway::connect(target, log, GatewayOptions::new(node))
        .await
        .expect("the gateway's backend connects");
    serve(backend, node).await
}

/// A server on port 0 over `backend`, as gateway `node`.
pub(crate) async fn serve(backend: concord_server::cluster::Backend, node: &str) -> Gateway {
    let config = Config {
        node_id: node.to_string(),
        ..Config::default()
    };
    serve_with(backend, config).await
}

/// A server on port 0 over `backend` with `config`.
pub(crate) async fn serve_with(
    backend: concord_server::cluster::Backend,
    config: Config,
) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let env = Env {
        backend: Some(backend),
        ..Env::system()
    };
    let join = tokio::spawn(async move {
        concord_server::run(config, listener, async move { drop(rx.await) }, env)
            .await
            .expect("the gateway runs");
    });
    Gateway { addr, stop, join }
}

impl Gateway {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("the gateway stops")
            .unwrap();
    }
}

pub(crate) struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    pub(crate) async fn hello(g: &Gateway, client: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", g.addr))
            .await
            .expect("connect");
        let mut w = Ws(ws);
        w.send(json!({"type":"hello","client_id":client})).await;
        let m = w.recv().await;
        assert_eq!(m["type"], "welcome", "{m}");
        w
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.0.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn feed(&mut self, v: Value) {
        self.0.feed(Message::text(v.to_string())).await.unwrap();
    }

    pub(crate) async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .expect("a frame");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                // Membership and presence are not what these tests look at.
                if matches!(
                    v["type"].as_str(),
                    Some("member_joined" | "member_left" | "presence")
                ) {
                    continue;
                }
                return v;
            }
        }
    }

    pub(crate) async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type":"join","room":room,"kind":"stream"}))
            .await;
        let j = self.recv().await;
        assert_eq!(j["type"], "joined", "{j}");
        j
    }

    pub(crate) async fn publish(&mut self, room: &str, id: &str, data: Value) -> Value {
        self.send(json!({"type":"publish","room":room,"id":id,"data":data}))
            .await;
        loop {
            let m = self.recv().await;
            if m["type"] == "ack" && m["id"] == id {
                return m;
            }
            assert_eq!(m["type"], "event", "{m}");
        }
    }

    pub(crate) async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let m = self.recv().await;
            assert_eq!(m["type"], "event", "{m}");
            out.push(m);
        }
        out
    }
}

/// Publishers on every gateway pipeline their publishes; observers on every gateway see one
/// gap-free order, each publish once at the seq its ack named, hlcs increasing.
async fn one_order(gws: &[Gateway], room: &str, publishers: usize, each: usize) {
    let mut observers = observe(gws, room).await;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let mut w = Ws::hello(&gws[p % gws.len()], &format!("pub{p}")).await;
        let room = room.to_string();
        tasks.push(tokio::spawn(async move {
            for n in 0..each {
                w.feed(
                    json!({"type":"publish","room":room,"id":format!("m{n}"),"data":{"p":p,"n":n}}),
                )
                .await;
            }
            w.0.flush().await.unwrap();
            let mut acks = Vec::new();
            while acks.len() < each {
                let m = w.recv().await;
                assert_eq!(m["type"], "ack", "{m}");
                acks.push((
                    m["id"].as_str().unwrap().to_string(),
                    m["seq"].as_u64().unwrap(),
                ));
            }
            acks
        }));
    }
    let mut acked = HashMap::new();
    for (p, t) in tasks.into_iter().enumerate() {
        let acks = t.await.unwrap();
        let seqs: Vec<u64> = acks.iter().map(|a| a.1).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one connection's publishes commit in send order: {seqs:?}"
        );
        for (id, seq) in acks {
            acked.insert((format!("pub{p}"), id), seq);
        }
    }
    check_order(&mut observers, &acked, publishers * each).await;
}

/// One member of `room` on every gateway.
async fn observe(gws: &[Gateway], room: &str) -> Vec<Ws> {
    let mut observers = Vec::new();
    for (i, g) in gws.iter().enumerate() {
        let mut w = Ws::hello(g, &format!("obs{i}")).await;
        w.join(room).await;
        observers.push(w);
    }
    observers
}

/// Every observer sees seqs 1..=total, each event at the seq its publish was acked with
/// (`acked`: (client, id) → seq), hlcs increasing, and all observers the same events.
async fn check_order(observers: &mut [Ws], acked: &HashMap<(String, String), u64>, total: usize) {
    let mut orders = Vec::new();
    for (i, o) in observers.iter_mut().enumerate() {
        let events = o.events(total).await;
        let got: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            got,
            (1..=total as u64).collect::<Vec<_>>(),
            "observer {i}: a gap or a repeat"
        );
        for e in &events {
            let key = (
                e["from"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            );
            assert_eq!(acked.get(&key), e["seq"].as_u64().as_ref(), "{e}");
        }
        let hlcs: Vec<&str> = events.iter().map(|e| e["hlc"].as_str().unwrap()).collect();
        assert!(hlcs.windows(2).all(|w| w[0] < w[1]), "hlcs grow with seqs");
        orders.push(events);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_over_redis_share_one_order() {
    let prefix = TestPrefix::new("gateways");
    let target = TestPrefix::target();
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(gateway(&target, prefix.prefix(), &format!("gw{i}")).await);
    }
    one_order(&gws, "chat:redis", 9, 40).await;
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_gateway_gets_its_original_ack() {
    let prefix = TestPrefix::new("gw-retry");
    let target = TestPrefix::target();
    let a = gateway(&target, prefix.prefix(), "gwa").await;
    let b = gateway(&target, prefix.prefix(), "gwb").await;
    let room = "chat:retry";
    let mut obs = Ws::hello(&b, "obs").await;
    obs.join(room).await;
    let mut w = Ws::hello(&a, "writer").await;
    w.join(room).await;
    let first = w.publish(room, "x", json!({"v": 1})).await;
    drop(w);
    let mut w = Ws::hello(&b, "writer").await;
    w.join(room).await;
    let again = w.publish(room, "x", json!({"v": 1})).await;
    assert_eq!(
        (&again["seq"], &again["hlc"]),
        (&first["seq"], &first["hlc"])
    );
    let next = w.publish(room, "y", json!({"v": 2})).await;
    let events = obs.events(2).await;
    let got: Vec<&Value> = events.iter().map(|e| &e["seq"]).collect();
    assert_eq!(
        got,
        vec![&json!(1), &next["seq"]],
        "the retry was not written again"
    );
    a.stop().await;
    b.stop().await;
}

/// The feeds' pub/sub connection is killed while publishers write: the notifier reconnects,
/// every room is told it lost notifications, reads its head and fills; nobody misses an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_is_resumed_and_filled() {
    let redis = RedisServer::start(Persistence::None);
    let target = redis.target();
    let prefix = "killsub";
    let mut gws = Vec::new();
    for i in 0..2 {
        gws.push(gateway(&target, prefix, &format!("gw{i}")).await);
    }
    // Kill the subscriptions every few milliseconds for as long as the publishes run.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = tokio::spawn({
        let url = redis.url();
        let done = done.clone();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut killed = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let n: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                killed += n;
            }
            killed
        }
    });
    one_order(&gws, "chat:killed", 6, 60).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "no subscription was killed: the test proved nothing"
    );
    for g in gws {
        g.stop().await;
    }
}

/// The Redis log keeps only its newest events (a cap here; the workers' trim in production): a
/// rejoin whose `since` lies below what Redis holds is answered `recovered: false` with the
/// newest history, like a store's retention — never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_below_the_redis_log_resets() {
    let prefix = TestPrefix::new("gw-floor");
    let log = concord_dist::LogConfig {
        log_max_len: 5,
        ..config(prefix.prefix())
    };
    let g = gateway_with(&TestPrefix::target(), log.clone(), "gwf").await;
    // The late joiners come through another gateway: it loads the room from Redis (the first
    // gateway's in-memory window would still recover them).
    let g2 = gateway_with(&TestPrefix::target(), log, "gwf2").await;
    let room = "chat:floor";
    let mut w = Ws::hello(&g, "writer").await;
    let joined = w.join(room).await;
    let epoch = joined["epoch"].clone();
    for n in 0..20 {
        w.publish(room, &format!("m{n}"), json!({"n": n})).await;
    }
    drop(w);
    let mut late = Ws::hello(&g2, "late").await;
    late.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":3},"history":3}))
        .await;
    let j = late.recv().await;
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(
        j["recovered"], false,
        "events 4..15 are gone from Redis: {j}"
    );
    let seqs: Vec<u64> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![18, 19, 20], "the newest `history` events");
    // A since within what Redis holds still recovers.
    let mut near = Ws::hello(&g2, "near").await;
    near.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":17}}))
        .await;
    let j = near.recv().await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["events"].as_array().map(Vec::len), Some(3));
    g.stop().await;
    g2.stop().await;
}

/// `--ack-level redis` is refused on a Redis that does not fsync its append-only file before
/// answering, and accepted on one that does; there an acked publish survives a SIGKILL of Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_level_redis_needs_an_fsynced_aof_and_then_survives_a_redis_kill() {
    let plain = RedisServer::start(Persistence::None);
    let redis_ack = |node: &str| GatewayOptions {
        ack: AckLevel::Redis,
        ..GatewayOptions::new(node)
    };
    let refused =
        concord_dist::gateway::connect(&plain.target(), config("ack"), redis_ack("gwx")).await;
    let Err(e) = refused else {
        panic!("a Redis without AOF was accepted for --ack-level redis")
    };
    assert!(e.to_string().contains("appendfsync always"), "{e}");

    let mut aof = RedisServer::start(Persistence::AofAlways);
    let backend = concord_dist::gateway::connect(&aof.target(), config("ack"), redis_ack("gwa"))
        .await
        .expect("an AOF Redis with appendfsync always is accepted");
    let g = serve(backend, "gwa").await;
    let mut w = Ws::hello(&g, "writer").await;
    w.join("chat:aof").await;
    let ack = w.publish("chat:aof", "kept", json!({"v": 1})).await;
    g.stop().await;
    aof.kill();
    aof.restart();
    let log = concord_dist::RedisLog::connect(&aof.target(), config("ack"))
        .await
        .expect("reconnect");
    let room = concord_core::RoomId::new("chat:aof").unwrap();
    let logged = log
        .read_log(&room, concord_core::Seq::ZERO, 10)
        .await
        .expect("the log");
    assert_eq!(
        logged.len(),
        1,
        "the acked publish survived the kill: {logged:?}"
    );
    assert_eq!(Some(logged[0].seq.0), ack["seq"].as_u64());
}

/// With the archive, history below what Redis keeps comes from PostgreSQL (written there by a
/// real worker): a rejoin far behind Redis's floor still recovers by events; and client ids
/// are bound to users once, in PostgreSQL, for every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_below_redis_comes_from_postgres_and_clients_bind_once() {
    use concord_dist::pg::PgArchive;
    use concord_dist::testing::pg::TestDb;
    use concord_dist::worker::{all_partitions, Worker, WorkerConfig};
    let db = TestDb::migrated().await;
    let prefix = TestPrefix::new("gw-archive");
    let log = concord_dist::LogConfig {
        log_max_len: 5,
        ..config(prefix.prefix())
    };
    let options = |node: &str, archive: PgArchive| GatewayOptions {
        archive: Some(archive),
        ..GatewayOptions::new(node)
    };
    let archive = PgArchive::connect(db.url()).await.expect("the archive");
    // A real worker moves the work streams into PostgreSQL.
    let mut wc = WorkerConfig::new(
        "redis://127.0.0.1:6379",
        db.url(),
        all_partitions(1024),
        1024,
    );
    wc.redis_prefix = prefix.prefix().to_string();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::run(wc, async move {
        let _ = worker_stopped.await;
    }));

    let backend = concord_dist::gateway::connect(
        &TestPrefix::target(),
        log.clone(),
        options("gwp1", archive.clone()),
    )
    .await
    .expect("a gateway with its archive");
    let store = backend.store.clone();
    let g1 = serve(backend, "gwp1").await;
    let room = "chat:archived";
    let mut w = Ws::hello(&g1, "writer").await;
    let epoch = w.join(room).await["epoch"].clone();
    for n in 0..20 {
        w.publish(room, &format!("m{n}"), json!({"n": n})).await;
    }
    drop(w);
    // Wait for the worker's watermark at the head.
    let deadline = tokio::time::Instant::now() + WAIT;
    while archive
        .watermark(room)
        .await
        .expect("a watermark read")
        .map(|w| w.1)
        != Some(20)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not persist the room"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g2 = gateway_with(&TestPrefix::target(), log.clone(), "gwp2").await;
    let g3 = {
        let backend = concord_dist::gateway::connect(
            &TestPrefix::target(),
            log,
            options("gwp3", archive.clone()),
        )
        .await
        .expect("a second gateway with the archive");
        let other = backend.store.clone();
        // Client ids bind once, whichever gateway asks first.
        let client = concord_core::ClientId::new("c-bound").unwrap();
        assert_eq!(
            store.claim_client(&client, "user-1").await.unwrap(),
            "user-1"
        );
        assert_eq!(
            other.claim_client(&client, "user-2").await.unwrap(),
            "user-1"
        );
        serve(backend, "gwp3").await
    };
    // Without the archive: a reset. With it: every event after seq 3 (16 from PostgreSQL).
    let mut plain = Ws::hello(&g2, "plain").await;
    plain
        .send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":3}}))
        .await;
    let j = plain.recv().await;
    assert_eq!(j["recovered"], false, "{j}");
    let mut late = Ws::hello(&g3, "late").await;
    late.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":3}}))
        .await;
    let j = late.recv().await;
    assert_eq!(j["recovered"], true, "{j}");
    let seqs: Vec<u64> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (4..=20).collect::<Vec<_>>());
    for g in [g1, g2, g3] {
        g.stop().await;
    }
    let _ = stop_worker.send(());
    worker.await.unwrap().expect("the worker stops cleanly");
}

/// Gateways over a 3-master Redis Cluster: rooms whose partitions live on different masters,
/// written through every gateway, each have one gap-free order at every member (one function
/// call touches one slot; notifications reach subscribers on any node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_over_a_redis_cluster_share_one_order() {
    use concord_dist::testing::redis::RedisCluster;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("start the cluster");
    let target = cluster.target();
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(gateway(&target, "clgw", &format!("gw{i}")).await);
    }
    let rooms = rooms_on_every_master(&cluster, "chat:cl");
    for room in &rooms {
        one_order(&gws, room, 6, 25).await;
    }
    for g in gws {
        g.stop().await;
    }
}

/// A graceful failover (`CLUSTER FAILOVER` on a replica) of the master holding a room, while
/// publishers on two gateways write it: commits that meet the switch are handed over again
/// (redirected to the new master), and every member still sees one gap-free order in which
/// each publish appears once, at the seq its ack named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_failover_keeps_one_order() {
    use concord_dist::testing::redis::RedisCluster;
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(3, 1))
            .await
            .expect("start the cluster"),
    );
    let target = cluster.target();
    let gws = vec![
        gateway(&target, "clfo", "gwa").await,
        gateway(&target, "clfo", "gwb").await,
    ];
    let room = "chat:failover";
    let slot = slot_of(room);
    let old = cluster.node_of_slot(slot).expect("a master");
    let mut observers = observe(&gws, room).await;
    // Publishers write one at a time until the failover is over, then `AFTER` more each.
    const AFTER: usize = 20;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..4 {
        let mut w = Ws::hello(&gws[p % 2], &format!("pub{p}")).await;
        let (room, done) = (room.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut after = 0;
            while after < AFTER {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                }
                let id = format!("m{}", acks.len());
                let ack = w.publish(&room, &id, json!({"p": p})).await;
                assert_eq!(ack["type"], "ack", "{ack}");
                acks.push((id, ack["seq"].as_u64().unwrap()));
            }
            acks
        }));
    }
    // Fail the room's master over once some publishes are committed.
    let log = crate::support::connect(&target, "clfo").await;
    let id = concord_core::RoomId::new(room).unwrap();
    while log.room_meta(&id).await.ok().flatten().map(|m| m.head.0) < Some(40) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.failover(slot))
            .await
            .expect("the failover")
    };
    assert_ne!(new, old, "another node serves the room's slot now");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = HashMap::new();
    for (p, t) in tasks.into_iter().enumerate() {
        for (id, seq) in t.await.unwrap() {
            acked.insert((format!("pub{p}"), id), seq);
        }
    }
    let total = acked.len();
    check_order(&mut observers, &acked, total).await;
    for g in gws {
        g.stop().await;
    }
}

/// The slot of a room's keys (its partition's hash tag, with the default partition count).
fn slot_of(room: &str) -> u32 {
    use concord_dist::partition::{key_slot, Partitions};
    let parts = Partitions::new(concord_dist::LogConfig::default().partitions).unwrap();
    key_slot(parts.tag(parts.of(room)).as_bytes())
}

/// One room name per master of `cluster` (`{base}:{n}` for the first n found on each).
fn rooms_on_every_master(
    cluster: &concord_dist::testing::redis::RedisCluster,
    base: &str,
) -> Vec<String> {
    let masters = cluster.nodes().len();
    let mut found: Vec<Option<String>> = vec![None; masters];
    for n in 0.. {
        let room = format!("{base}:{n}");
        let node = cluster.node_of_slot(slot_of(&room)).expect("a master");
        found[node].get_or_insert(room);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().flatten().collect()
}

/// `max_members_per_room` holds across gateways joining at the same moment: with one member
/// in a room of at most 4, 12 clients join through 3 gateways at once; exactly 3 get in (the
/// seat is taken in Redis, atomically), the others are refused `unavailable`, and after one
/// member leaves, one more gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_at_once_through_every_gateway_never_exceed_max_members() {
    let prefix = TestPrefix::new("seats");
    let target = TestPrefix::target();
    let mut gws = Vec::new();
    for i in 0..3 {
        let backend = concord_dist::gateway::connect(
            &target,
            config(prefix.prefix()),
            GatewayOptions::new(&format!("gw{i}")),
        )
        .await
        .expect("the gateway's backend connects");
        let config = Config {
            node_id: format!("gw{i}"),
            max_members_per_room: 4,
            ..Config::default()
        };
        gws.push(serve_with(backend, config).await);
    }
    let room = "chat:seats";
    // The room exists, with one member, before the rush.
    let mut first = Ws::hello(&gws[0], "opener").await;
    first.join(room).await;
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(Ws::hello(&gws[i % 3], &format!("c{i}")).await);
    }
    // Every join is written before any answer is read.
    for c in clients.iter_mut() {
        c.send(json!({"type":"join","room":room,"kind":"stream"}))
            .await;
    }
    let mut inside = Vec::new();
    let mut refused = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("joined") => inside.push(i),
            Some("error") => {
                assert_eq!(m["code"], "unavailable", "{m}");
                refused += 1;
            }
            _ => panic!("a join's answer: {m}"),
        }
    }
    assert_eq!(
        inside.len(),
        3,
        "exactly the room's 3 free seats taken: {inside:?}"
    );
    assert_eq!(refused, 9);
    // One leaves: its seat is free again for a client of another gateway (its departure is
    // told to Redis; the retry loop waits for that, not for a fixed time).
    let leaver = inside[0];
    clients[leaver]
        .send(json!({"type":"leave","room":room}))
        .await;
    let late = (0..12)
        .find(|i| !inside.contains(i) && i % 3 != leaver % 3)
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        clients[late]
            .send(json!({"type":"join","room":room,"kind":"stream"}))
            .await;
        let m = clients[late].recv().await;
        if m["type"] == "joined" {
            assert_eq!(m["members"].as_array().map(Vec::len), Some(4), "{m}");
            break;
        }
        assert_eq!(m["code"], "unavailable", "{m}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed seat was never taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for g in gws {
        g.stop().await;
    }
}
