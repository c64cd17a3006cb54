//! Doc-room leases: acquire, renew, expiry (waited for on Redis's clock), the fence bumped by
//! every new owner, and the old owner's commits fenced.

use crate::support::*;
use concord_core::RoomId;
use concord_core::{RoomKind, Seq};
use concord_dist::{CommitError, RedisLog};
use std::time::{Duration, Instant};

/// Waits until Redis reports no holder (the key expired by Redis's own clock).
async fn wait_expired(log: &RedisLog, r: &RoomId) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lease_holder(r).await.expect("holder").is_some() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_new_owner_bumps_the_fence_and_the_old_one_is_fenced() {
    let (_p, log) = shared("lease").await;
    let r = room("doc-lease");
    create(&log, &r, RoomKind::Doc, "e1").await;
    let short = Duration::from_millis(200);

    let a = log
        .acquire_lease(&r, "gw-a", short)
        .await
        .expect("a")
        .expect("free: acquired");
    assert_eq!(a, 1, "the first acquisition sets the fence to 1");
    assert_eq!(
        log.acquire_lease(&r, "gw-b", short).await.expect("b"),
        None,
        "held by a"
    );
    // Renewal keeps the fence and extends the lease.
    let renewed = log
        .acquire_lease(&r, "gw-a", Duration::from_secs(30))
        .await
        .expect("renew")
        .expect("a holds it");
    assert_eq!(renewed, a, "a renewal keeps the fence");
    let holder = log.lease_holder(&r).await.expect("holder").expect("held");
    assert_eq!(holder.owner, "gw-a");
    assert!(
        holder.remaining > Duration::from_secs(20),
        "renewed to 30 s: {holder:?}"
    );

    let mut commit = req(
        "e1",
        hlc(1_763_812_345_678, 0),
        vec![ev("c", Some("a1"), "1")],
    );
    commit.fence = Some(a);
    commit.expected_head = Some(Seq(0));
    log.commit(&r, &commit).await.expect("the owner commits");

    // Shorten a's lease and let it lapse; b takes over with a higher fence.
    log.acquire_lease(&r, "gw-a", short)
        .await
        .expect("renew short")
        .expect("a");
    wait_expired(&log, &r).await;
    let b = log
        .acquire_lease(&r, "gw-b", short)
        .await
        .expect("b")
        .expect("lapsed: acquired");
    assert_eq!(b, a + 1, "a new owner increments the fence");

    // The zombie a commits with its old fence: refused, nothing written.
    let mut zombie = req(
        "e1",
        hlc(1_763_812_345_678, 0),
        vec![ev("c", Some("a2"), "2")],
    );
    zombie.fence = Some(a);
    zombie.expected_head = Some(Seq(1));
    let got = log.commit(&r, &zombie).await;
    assert!(
        matches!(got, Err(CommitError::Fenced { current }) if current == b),
        "{got:?}"
    );
    assert_eq!(
        log.room_meta(&r).await.expect("meta").expect("room").head,
        Seq(1)
    );

    zombie.fence = Some(b);
    let got = log
        .commit(&r, &zombie)
        .await
        .expect("the new owner commits");
    assert_eq!(got[0].seq, Seq(2));

    assert!(
        !log.release_lease(&r, "gw-a").await.expect("release"),
        "a does not hold it"
    );
    assert!(
        log.release_lease(&r, "gw-b").await.expect("release"),
        "b drops it"
    );
    assert_eq!(log.lease_holder(&r).await.expect("holder"), None);
    let c = log
        .acquire_lease(&r, "gw-a", short)
        .await
        .expect("a again")
        .expect("free");
    assert_eq!(
        c,
        b + 1,
        "every acquisition bumps the fence, after a release too"
    );
}

#[tokio::test]
async fn a_lease_on_a_missing_room_is_refused() {
    let (_p, log) = shared("lease-noroom").await;
    let got = log
        .acquire_lease(&room("nothing"), "gw", Duration::from_secs(1))
        .await;
    assert!(matches!(got, Err(CommitError::NoRoom)), "{got:?}");
}
