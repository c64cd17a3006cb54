//! Loading the function library: loaded when missing (after FUNCTION FLUSH), an older version
//! replaced, a newer one refused. On a private Redis (FLUSH would disturb the shared one).

use crate::support::*;
use concord_dist::functions::{self, library_with_version, Loaded};
use concord_dist::testing::redis::{Persistence, RedisServer};
use concord_dist::{LogError, RedisLog};

#[tokio::test]
async fn the_library_is_loaded_when_missing_or_older_and_a_newer_one_is_refused() {
    let server = RedisServer::start(Persistence::None);
    let ours = functions::version();
    let log = connect(&server.target(), "fn").await;
    let versions = functions::versions(log.connection())
        .await
        .expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.1).collect::<Vec<_>>(),
        [Some(ours)]
    );
    assert_eq!(
        functions::ensure_loaded(log.connection())
            .await
            .expect("again"),
        Loaded::Current
    );

    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query::<()>(&mut server.client())
        .expect("flush");
    assert_eq!(
        functions::versions(log.connection())
            .await
            .expect("versions")[0]
            .1,
        None
    );
    let log = connect(&server.target(), "fn").await;
    assert_eq!(
        functions::versions(log.connection())
            .await
            .expect("versions")[0]
            .1,
        Some(ours),
        "loaded again"
    );

    functions::load(log.connection(), &library_with_version(ours - 1))
        .await
        .expect("load older");
    assert_eq!(
        functions::versions(log.connection())
            .await
            .expect("versions")[0]
            .1,
        Some(ours - 1)
    );
    let log = connect(&server.target(), "fn").await;
    assert_eq!(
        functions::versions(log.connection())
            .await
            .expect("versions")[0]
            .1,
        Some(ours),
        "an older one replaced"
    );

    // The same version with other code (a build whose library changed): replaced too.
    let other = functions::LIBRARY.replace("local MAX_LOGICAL", "-- changed\nlocal MAX_LOGICAL");
    functions::load(log.connection(), &other)
        .await
        .expect("load other code");
    let log = connect(&server.target(), "fn").await;
    let codes = functions::codes(log.connection()).await.expect("codes");
    assert_eq!(
        codes[0].1.as_deref(),
        Some(functions::LIBRARY),
        "this build's code loaded"
    );

    functions::load(log.connection(), &library_with_version(ours + 1))
        .await
        .expect("load newer");
    let refused = RedisLog::connect(&server.target(), config("fn")).await;
    assert!(
        matches!(refused, Err(LogError::LibraryNewer { found, ours: o }) if found == ours + 1 && o == ours),
        "a newer library is refused: {:?}",
        refused.err()
    );
    assert_eq!(
        functions::versions(log.connection())
            .await
            .expect("versions")[0]
            .1,
        Some(ours + 1),
        "and left in place"
    );
}

#[tokio::test]
async fn another_partition_count_is_refused() {
    let server = RedisServer::start(Persistence::None);
    connect(&server.target(), "pc").await;
    let mut cfg = config("pc");
    cfg.partitions = 2048;
    let got = RedisLog::connect(&server.target(), cfg).await;
    assert!(
        matches!(
            got,
            Err(LogError::PartitionMismatch {
                found: 1024,
                ours: 2048
            })
        ),
        "{:?}",
        got.err()
    );
}
