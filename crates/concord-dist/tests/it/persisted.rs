//! concord_persisted: the watermark never lowers; trimming keeps `wm − keep` and the head, and
//! `floor` names the first seq left in the log stream.

use crate::support::*;
use concord_core::{RoomKind, Seq};
use concord_dist::log::Watermark;
use concord_dist::CommitError;

#[tokio::test]
async fn the_watermark_never_lowers_and_trimming_keeps_the_head() {
    let (_p, log) = shared("persisted").await;
    let r = room("wm");
    create(&log, &r, RoomKind::Stream, "e1").await;
    let events = (1..=10)
        .map(|i| ev("c", Some(&format!("o{i}")), &i.to_string()))
        .collect();
    log.commit(&r, &req("e1", hlc(1_763_812_345_678, 0), events))
        .await
        .expect("commit");

    let first_seq = |evs: &[concord_dist::LoggedEvent]| evs.first().map(|e| e.seq);
    let wm = log
        .persisted(&r, &epoch("e1"), Seq(5), 2)
        .await
        .expect("persisted 5");
    assert_eq!(
        wm,
        Watermark {
            wm: Seq(5),
            floor: Seq(3)
        },
        "keeps seqs >= 5 - 2"
    );
    let logged = log.read_log(&r, Seq::ZERO, 100).await.expect("read");
    assert_eq!(
        first_seq(&logged),
        Some(Seq(3)),
        "the log starts at the floor"
    );
    assert_eq!(logged.len(), 8);

    let wm = log
        .persisted(&r, &epoch("e1"), Seq(4), 0)
        .await
        .expect("persisted 4");
    assert_eq!(wm.wm, Seq(5), "a lower seq does not lower the watermark");
    assert_eq!(
        wm.floor,
        Seq(5),
        "trimming follows the (unchanged) watermark"
    );

    let wm = log
        .persisted(&r, &epoch("e1"), Seq(10), 0)
        .await
        .expect("persisted 10");
    assert_eq!(
        wm,
        Watermark {
            wm: Seq(10),
            floor: Seq(10)
        },
        "the head is never trimmed"
    );
    let logged = log.read_log(&r, Seq::ZERO, 100).await.expect("read");
    assert_eq!(logged.iter().map(|e| e.seq).collect::<Vec<_>>(), [Seq(10)]);
    let meta = log.room_meta(&r).await.expect("meta").expect("room");
    assert_eq!(
        (meta.wm, meta.floor, meta.head),
        (Seq(10), Seq(10), Seq(10))
    );

    let got = log.persisted(&r, &epoch("old"), Seq(11), 0).await;
    assert!(
        matches!(got, Err(CommitError::EpochChanged { .. })),
        "{got:?}"
    );
    assert_eq!(
        log.room_meta(&r).await.expect("meta").expect("room").wm,
        Seq(10)
    );

    // Commits continue after the trimmed part.
    let next = log
        .commit(
            &r,
            &req(
                "e1",
                hlc(1_763_812_345_678, 0),
                vec![ev("c", Some("o11"), "11")],
            ),
        )
        .await
        .expect("commit");
    assert_eq!(next[0].seq, Seq(11));
}

#[tokio::test]
async fn the_log_cap_trims_the_oldest_and_moves_the_floor() {
    let (_p, log) = shared_with("cap", |c| c.log_max_len = 4).await;
    let r = room("capped");
    create(&log, &r, RoomKind::Stream, "e1").await;
    for i in 1..=10 {
        log.commit(
            &r,
            &req(
                "e1",
                hlc(1_763_812_345_678, 0),
                vec![ev("c", Some(&format!("o{i}")), "1")],
            ),
        )
        .await
        .expect("commit");
    }
    let logged = log.read_log(&r, Seq::ZERO, 100).await.expect("read");
    assert_eq!(
        logged.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    let meta = log.room_meta(&r).await.expect("meta").expect("room");
    assert_eq!((meta.floor, meta.head), (Seq(7), Seq(10)));
}
