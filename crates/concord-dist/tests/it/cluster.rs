//! The same API on a 3-master Redis Cluster started by the test: rooms on every master commit,
//! deduplicate and take leases; the library is on every master; tags hash as Redis says.

use crate::support::*;
use concord_core::{RoomKind, Seq};
use concord_dist::functions;
use concord_dist::partition::key_slot;
use concord_dist::testing::redis::RedisCluster;
use concord_dist::CommitError;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_duplicates_and_leases_work_on_every_master() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("start the cluster");
    let log = connect(&cluster.target(), "cl").await;
    let versions = functions::versions(log.connection())
        .await
        .expect("versions");
    assert_eq!(versions.len(), 3, "one answer per master: {versions:?}");
    assert!(
        versions.iter().all(|v| v.1 == Some(functions::version())),
        "{versions:?}"
    );

    // One room per master, found by where its partition's slot lives.
    let mut rooms = vec![None; 3];
    for i in 0.. {
        let name = format!("room-{i}");
        let rk = log.keys().room(&name);
        let slot = key_slot(rk.meta.as_bytes());
        let redis_slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&rk.meta)
            .query(&mut cluster.nodes()[0].client())
            .expect("CLUSTER KEYSLOT");
        assert_eq!(
            i64::from(slot),
            redis_slot,
            "our slot of {} is Redis's",
            rk.meta
        );
        let node = cluster
            .node_of_slot(slot)
            .expect("a node serves every slot");
        if rooms[node].is_none() {
            rooms[node] = Some(name);
        }
        if rooms.iter().all(Option::is_some) {
            break;
        }
        assert!(i < 10_000, "no room found on some master");
    }
    // A master that lost the library gets it back from the next process that connects.
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query::<()>(&mut cluster.nodes()[1].client())
        .expect("flush one master");
    let versions = functions::versions(log.connection())
        .await
        .expect("versions");
    assert_eq!(
        versions.iter().filter(|v| v.1.is_none()).count(),
        1,
        "{versions:?}"
    );
    let log = connect(&cluster.target(), "cl").await;
    let versions = functions::versions(log.connection())
        .await
        .expect("versions");
    assert!(
        versions.iter().all(|v| v.1 == Some(functions::version())),
        "reloaded: {versions:?}"
    );

    for name in rooms.into_iter().flatten() {
        let r = room(&name);
        create(&log, &r, RoomKind::Doc, "e1").await;
        let fence = log
            .acquire_lease(&r, "gw-a", Duration::from_secs(30))
            .await
            .expect("lease")
            .expect("free");
        assert_eq!(
            log.acquire_lease(&r, "gw-b", Duration::from_secs(30))
                .await
                .expect("b"),
            None
        );
        let mut commit = req(
            "e1",
            hlc(1_763_812_345_678, 0),
            vec![ev("c", Some("a"), "1"), ev("c", Some("b"), "2")],
        );
        commit.fence = Some(fence);
        commit.expected_head = Some(Seq(0));
        let first = log.commit(&r, &commit).await.expect("commit");
        assert_eq!(
            first.iter().map(|c| c.seq.0).collect::<Vec<_>>(),
            [1, 2],
            "{name}"
        );
        let again = log.commit(&r, &commit).await.expect("resubmit");
        assert!(again.iter().all(|c| c.duplicate), "{name}: {again:?}");
        assert_eq!(again.iter().map(|c| c.seq.0).collect::<Vec<_>>(), [1, 2]);
        let mut stale = req(
            "e1",
            hlc(1_763_812_345_678, 0),
            vec![ev("c", Some("z"), "3")],
        );
        stale.fence = Some(fence + 1);
        let got = log.commit(&r, &stale).await;
        assert!(
            matches!(got, Err(CommitError::Fenced { .. })),
            "{name}: {got:?}"
        );
        assert_eq!(
            log.read_log(&r, Seq::ZERO, 10).await.expect("read").len(),
            2
        );
        assert!(log.release_lease(&r, "gw-a").await.expect("release"));
        let wm = log
            .persisted(&r, &epoch("e1"), Seq(2), 0)
            .await
            .expect("persisted");
        assert_eq!(wm.wm, Seq(2));
        let lost = room(&format!("{name}.lost"));
        let rebuilt = log
            .rebuild(&lost, RoomKind::Stream, &epoch("e2"), Seq(9), None)
            .await
            .expect("rebuild");
        assert!(rebuilt.rebuilt && rebuilt.head.head == Seq(9));
    }
}
