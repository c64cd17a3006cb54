//! Several gateways of one cluster (servers sharing a backend: an in-memory store and commit
//! point — the logic of the distributed mode without Redis): a stream room written through
//! every gateway has one gap-free order at every member, whichever gateway it is on, even when
//! the feed loses notifications; a retry on another gateway gets its original ack.

use crate::support::*;
use concord_server::cluster::{Backend, MemoryCommitPoint};
use concord_server::store::MemoryStore;
use concord_server::{Config, Env};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// `n` servers (gateways `gw0`, `gw1`, …) sharing one store and commit point (which loses
/// every `lose_every`-th notification; 0: none).
async fn cluster(n: usize, lose_every: u64) -> Vec<TestServer> {
    cluster_with(n, lose_every).await.0
}

async fn cluster_with(n: usize, lose_every: u64) -> (Vec<TestServer>, Arc<MemoryCommitPoint>) {
    cluster_configured(n, lose_every, Config::default()).await
}

/// Like [`cluster_with`], every gateway with `config` (its node id set per gateway).
pub(crate) async fn cluster_configured(
    n: usize,
    lose_every: u64,
    config: Config,
) -> (Vec<TestServer>, Arc<MemoryCommitPoint>) {
    let store = Arc::new(MemoryStore::new());
    let point = Arc::new(MemoryCommitPoint::lossy(store.clone(), lose_every));
    let mut servers = Vec::new();
    for i in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let env = Env {
            backend: Some(Backend {
                store: store.clone(),
                commit_point: point.gateway(&format!("gw{i}")),
            }),
            ..Env::system()
        };
        let config = Config {
            node_id: format!("gw{i}"),
            ..config.clone()
        };
        servers.push(TestServer::with_env(config, listener, env));
    }
    (servers, point)
}

/// Publishers on every gateway pipeline their publishes; observers on every gateway must see
/// the same gap-free order, each publish once, at the seq its ack named.
async fn one_order_across_gateways(lose_every: u64) {
    let servers = cluster(3, lose_every).await;
    const PUBLISHERS: usize = 9;
    const EACH: usize = 40;
    let room = "chat:cluster";
    let mut observers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut w = Ws::hello(s, &format!("obs{i}")).await;
        let j = w.join(room, json!({})).await;
        assert_eq!(j["seq"], 0, "{j}");
        observers.push(w);
    }
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let w = Ws::hello(&servers[p % servers.len()], &format!("pub{p}")).await;
        tasks.push(tokio::spawn(pipelined_publishes(
            w,
            room.to_string(),
            p,
            EACH,
        )));
    }
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    for (p, t) in tasks.into_iter().enumerate() {
        for m in t.await.unwrap() {
            let id = m["id"].as_str().unwrap().to_string();
            let seq = m["seq"].as_u64().unwrap();
            assert!(acked.insert((format!("pub{p}"), id), seq).is_none());
        }
    }
    let total = PUBLISHERS * EACH;
    let mut orders = Vec::new();
    for (i, o) in observers.iter_mut().enumerate() {
        let events = o.events(total).await;
        assert_eq!(
            seqs(&events),
            (1..=total as u64).collect::<Vec<_>>(),
            "observer {i} got a gap or a repeat"
        );
        for e in &events {
            let key = (
                e["from"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            );
            assert_eq!(
                acked.get(&key),
                Some(&e["seq"].as_u64().unwrap()),
                "event {e} is not at the seq its ack named"
            );
        }
        let hlcs: Vec<&str> = events.iter().map(|e| e["hlc"].as_str().unwrap()).collect();
        assert!(
            hlcs.windows(2).all(|w| w[0] < w[1]),
            "hlcs must grow with seqs across gateways"
        );
        orders.push(events);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every gateway delivers the same events in the same order"
    );
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_one_order() {
    one_order_across_gateways(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_are_filled_from_the_log() {
    one_order_across_gateways(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_gateway_gets_its_original_ack() {
    let servers = cluster(2, 0).await;
    let room = "chat:retry";
    let mut obs = Ws::hello(&servers[1], "obs").await;
    obs.join(room, json!({})).await;
    let mut a = Ws::hello(&servers[0], "writer").await;
    a.join(room, json!({})).await;
    let (first, _) = a.publish(room, "x", json!({"v": 1})).await;
    drop(a);
    // The client reconnects to the other gateway and sends the same publish again.
    let mut b = Ws::hello(&servers[1], "writer").await;
    b.join(room, json!({})).await;
    let (again, _) = b.publish(room, "x", json!({"v": 1})).await;
    assert_eq!(again["seq"], first["seq"], "{again} vs {first}");
    assert_eq!(again["hlc"], first["hlc"]);
    let (next, _) = b.publish(room, "y", json!({"v": 2})).await;
    let events = obs.events(2).await;
    assert_eq!(seqs(&events), vec![1, 2], "the retry was not written again");
    assert_eq!(events[1]["seq"], next["seq"]);
    for s in servers {
        s.stop().await;
    }
}

/// The next message of one of `types`, skipping the others.
async fn next_of(w: &mut Ws, types: &[&str]) -> serde_json::Value {
    loop {
        let m = w.recv().await;
        if types.contains(&m["type"].as_str().unwrap_or("")) {
            return m;
        }
    }
}

/// Members on other gateways are members: announced once when they join, listed in `joined`,
/// their presence delivered, their departure (and presence `null`) announced once — also when
/// their gateway dies without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_presence_cross_gateways() {
    let (servers, point) = cluster_with(2, 0).await;
    let room = "chat:roster";
    let mut a = Ws::hello(&servers[0], "alice").await;
    a.join(room, json!({})).await;
    let mut b = Ws::hello(&servers[1], "bob").await;
    let joined = b.join(room, json!({})).await;
    let listed: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"alice") && listed.contains(&"bob"),
        "{joined}"
    );
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_joined"), Some("bob"))
    );

    b.send(json!({"type":"presence","room":room,"data":{"cursor":7}}))
        .await;
    let p = next_of(&mut a, &["presence"]).await;
    assert_eq!(p["client_id"], "bob");
    assert_eq!(p["data"], json!({"cursor":7}));

    // A late joiner on the first gateway gets bob in its snapshot (presence included).
    let mut c = Ws::hello(&servers[0], "carol").await;
    let joined = c.join(room, json!({})).await;
    assert_eq!(joined["presence"]["bob"], json!({"cursor":7}), "{joined}");

    b.send(json!({"type":"leave","room":room})).await;
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_joined"), Some("carol"))
    );
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_left"), Some("bob"))
    );
    let p = next_of(&mut a, &["presence"]).await;
    assert_eq!(
        (p["client_id"].as_str(), &p["data"]),
        (Some("bob"), &json!(null))
    );

    // Dave joins through the second gateway, which then dies: dave leaves everywhere.
    let mut d = Ws::hello(&servers[1], "dave").await;
    d.join(room, json!({})).await;
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(m["client_id"], "dave");
    point.gateway_down("gw1").await;
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_left"), Some("dave"))
    );
    for s in servers {
        s.stop().await;
    }
}

/// A gateway that shuts down tells the others that its members left (before it stops, not a
/// heartbeat later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_tells_that_its_members_left() {
    let (mut servers, _point) = cluster_with(2, 0).await;
    let room = "chat:stop";
    let mut a = Ws::hello(&servers[0], "alice").await;
    a.join(room, json!({})).await;
    let mut b = Ws::hello(&servers[1], "bob").await;
    b.join(room, json!({})).await;
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(m["client_id"], "bob");
    let stopping = servers.pop().expect("the second gateway");
    stopping.stop().await;
    let m = next_of(&mut a, &["member_joined", "member_left"]).await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("member_left"), Some("bob"))
    );
    for s in servers {
        s.stop().await;
    }
}

/// `max_members_per_room` counts the room's members on every gateway: with two present
/// elsewhere, a third gateway refuses a third member until one of them left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_members_per_room_counts_every_gateway() {
    let config = Config {
        max_members_per_room: 2,
        ..Config::default()
    };
    let (servers, _point) = cluster_configured(3, 0, config).await;
    let room = "chat:full";
    let mut a = Ws::hello(&servers[0], "alice").await;
    a.join(room, json!({})).await;
    let mut b = Ws::hello(&servers[1], "bob").await;
    b.join(room, json!({})).await;
    let m = next_of(&mut a, &["member_joined"]).await;
    assert_eq!(m["client_id"], "bob");
    let mut c = Ws::hello(&servers[2], "carol").await;
    c.send(json!({"type":"join","room":room})).await;
    let refused = next_of(&mut c, &["joined", "error"]).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{refused}"
    );
    b.send(json!({"type":"leave","room":room})).await;
    let m = next_of(&mut a, &["member_left"]).await;
    assert_eq!(m["client_id"], "bob");
    // The third gateway learns of the departure too (same feed): carol gets in.
    let joined = loop {
        c.send(json!({"type":"join","room":room})).await;
        let m = next_of(&mut c, &["joined", "error"]).await;
        if m["type"] == "joined" {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        joined["members"].as_array().map(Vec::len),
        Some(2),
        "{joined}"
    );
    for s in servers {
        s.stop().await;
    }
}
