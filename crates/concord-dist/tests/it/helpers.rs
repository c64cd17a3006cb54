//! The test helpers other tests rely on: a key prefix's keys go with it; a private server
//! without persistence restarts empty, one with AOF keeps what it acknowledged.

use crate::support::*;
use concord_core::RoomKind;
use concord_dist::testing::redis::{Persistence, RedisServer, TestPrefix, SHARED_REDIS_URL};

fn count_keys(pattern: &str) -> usize {
    let mut conn = redis::Client::open(SHARED_REDIS_URL)
        .and_then(|c| c.get_connection())
        .expect("shared Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut conn)
        .expect("KEYS");
    keys.len()
}

#[tokio::test]
async fn a_test_prefix_deletes_its_keys_on_drop() {
    let (prefix, log) = shared("cleanup").await;
    let pattern = format!("{}:*", prefix.prefix());
    create(&log, &room("tidy"), RoomKind::Stream, "e1").await;
    assert!(
        count_keys(&pattern) >= 2,
        "the cluster key and the room's meta exist"
    );
    drop(prefix);
    assert_eq!(count_keys(&pattern), 0, "every key of the prefix deleted");
    let other = TestPrefix::new("cleanup");
    assert_ne!(
        other.prefix(),
        pattern.trim_end_matches(":*"),
        "prefixes are unique"
    );
}

#[test]
fn restarts_keep_data_only_with_aof() {
    for (persistence, kept) in [(Persistence::None, false), (Persistence::AofAlways, true)] {
        let mut server = RedisServer::start(persistence);
        let port = server.port();
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<()>(&mut server.client())
            .expect("SET");
        server.restart();
        assert_eq!(server.port(), port, "same port after a restart");
        let v: Option<String> = redis::cmd("GET")
            .arg("k")
            .query(&mut server.client())
            .expect("GET");
        assert_eq!(
            v.is_some(),
            kept,
            "{persistence:?}: the key after a restart"
        );
        let pid = server.pid().expect("running");
        drop(server);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "the server {pid} is gone after drop"
        );
    }
}
