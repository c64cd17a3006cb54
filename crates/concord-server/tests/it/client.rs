//! The Rust client against the real server: a restart mid-publish loses nothing and doubles nothing.

use crate::support::*;
use concord_client::{Client, ClientConfig, JoinOptions, RoomUpdate};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// A SQLite-backed server on `port` (each restart serves the same port, never released).
fn on_port(dir: &std::path::Path, port: &Port) -> TestServer {
    let mut config = concord_server::Config::embedded(dir);
    if let concord_server::StoreConfig::Sqlite { sync_full, .. } = &mut config.store {
        *sync_full = false;
    }
    // Few publishes in flight per connection: most of the burst is unsent when the server stops.
    config.max_inflight_per_conn = 4;
    TestServer::with_listener(config, port.listener())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_a_server_restart_mid_publish_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let port = Port::bind();
    let first = on_port(dir.path(), &port);
    let config = |id: &str| {
        ClientConfig::new(first.url())
            .with_client_id(id)
            .with_backoff(Duration::from_millis(10), Duration::from_millis(200))
    };
    let sub = Client::connect(config("sub")).await.unwrap();
    let mut room = sub.join("r", JoinOptions::stream()).await.unwrap();
    let publisher = Client::connect(config("pub")).await.unwrap();
    const N: usize = 200;
    let acks: Vec<_> = (0..N)
        .map(|n| tokio::spawn(publisher.publish("r", json!({"n": n}))))
        .collect();
    // Wait until the first event is committed, then restart the server under the burst.
    let first_event = tokio::time::timeout(WAIT, room.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first_event, RoomUpdate::Event(ref e) if e.seq == 1));
    first.stop().await;
    let second = on_port(dir.path(), &port);

    let mut acked = BTreeSet::new();
    for a in acks {
        let ack = tokio::time::timeout(WAIT, a)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(acked.insert(ack.seq), "seq {} acked twice", ack.seq);
    }
    assert_eq!(
        acked,
        (1..=N as u64).collect::<BTreeSet<_>>(),
        "every publish acked once, gap-free"
    );
    let stats = publisher.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(
        stats.resent_publishes >= 1,
        "the burst was cut: some publishes had to be resent"
    );

    // The subscriber sees every event once, in order, across the restart.
    let mut seen = vec![1u64];
    while seen.len() < N {
        match tokio::time::timeout(WAIT, room.next())
            .await
            .unwrap()
            .unwrap()
        {
            RoomUpdate::Event(e) => seen.push(e.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>());
    let stored = all_events(&second, "r").await;
    assert_eq!(seqs(&stored), (1..=N as u64).collect::<Vec<_>>());
    let mut ns: Vec<u64> = stored
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..N as u64).collect::<Vec<_>>(),
        "each publish stored exactly once"
    );
    publisher.close().await;
    sub.close().await;
    second.stop().await;
}
