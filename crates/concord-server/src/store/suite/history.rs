//! The [`History`] contracts: rooms and events read back as committed, in seq order, paged,
//! across the boundary where a backend moved older events away (trimmed by retention,
//! embedded; archived to PostgreSQL and trimmed out of the Redis stream, distributed). A
//! [`Seeder`] writes the events the way the backend's events are written.

use super::*;
use async_trait::async_trait;

/// How a history backend's events get there, for its contracts.
#[async_trait]
pub trait Seeder: Send + Sync + 'static {
    /// The history under test.
    fn history(&self) -> Arc<dyn History>;
    /// Creates `room` (epoch [`epoch`]) and commits `events` (seqs from 1), one append per
    /// event, keeping their hlcs.
    async fn seed(&self, room: &RoomId, kind: RoomKind, events: Vec<StoredEvent>);
    /// Moves the room's events with seq < `before` out of the room's log (trim, or archive
    /// then trim), never the head; answers the first seq still readable.
    async fn retire(&self, room: &RoomId, before: Seq) -> Seq;
}

/// The [`Seeder`] of a [`Store`] bundle: appends, and trims (the first readable seq is the
/// retained floor).
pub struct StoreSeeder(pub Arc<dyn Store>);

#[async_trait]
impl Seeder for StoreSeeder {
    fn history(&self) -> Arc<dyn History> {
        self.0.clone()
    }

    async fn seed(&self, room: &RoomId, kind: RoomKind, events: Vec<StoredEvent>) {
        self.0.create_room(room, kind, &epoch()).await.unwrap();
        for e in events {
            put(&*self.0, room, vec![e]).await.unwrap();
        }
    }

    async fn retire(&self, room: &RoomId, before: Seq) -> Seq {
        self.0.trim(room, before).await.unwrap();
        let first = self.0.read_events(room, Seq(0), 1).await.unwrap();
        first.first().map_or(Seq(0), |e| e.seq)
    }
}

/// `read_events` pages through a log in seq order; `load_room` names its head.
pub async fn pagination(s: Arc<dyn Seeder>) {
    let h = s.history();
    let r = room("d");
    assert_eq!(h.load_room(&r).await.unwrap(), None);
    s.seed(
        &r,
        RoomKind::Stream,
        (1..=25).map(|i| ev(i, "c", None)).collect(),
    )
    .await;
    let mut after = Seq(0);
    let mut seen = Vec::new();
    loop {
        let page = h.read_events(&r, after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|e| e.seq.0));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!(
        (rec.kind, rec.epoch, rec.head),
        (RoomKind::Stream, epoch(), Seq(25))
    );
    assert_eq!(rec.head_hlc, Some(hlc(25)));
    assert!(h.read_events(&r, Seq(25), 10).await.unwrap().is_empty());
}

/// Reads across the retired boundary: after events below `before` moved away, reading from
/// any position returns the readable events after it, in order, with no gap, from the first
/// readable one on; paging from 0 crosses the boundary; the head survives; `recent_keys` is a
/// gap-free tail ending at the head.
pub async fn reads_across_the_retired_boundary(s: Arc<dyn Seeder>) {
    let h = s.history();
    let r = room("boundary");
    s.seed(
        &r,
        RoomKind::Stream,
        (1..=20)
            .map(|n| ev(n, "c", Some(&format!("m{n}"))))
            .collect(),
    )
    .await;
    let mut first = Seq(1);
    for before in [8, 8, 5, 15, 1000] {
        let now = s.retire(&r, Seq(before)).await;
        assert!(now >= first, "the first readable seq never moves back");
        assert!(now.0 <= 20, "the head survives");
        first = now;
        let readable: Vec<u64> = (first.0..=20).collect();
        for after in [0, 1, 4, 7, 8, 9, 14, 15, 16, 19, 20] {
            let want: Vec<u64> = readable.iter().copied().filter(|&n| n > after).collect();
            let got = h.read_events(&r, Seq(after), 100).await.unwrap();
            assert_eq!(seqs(&got), want, "retire {before}, after {after}");
            for e in &got {
                assert_eq!(e.data.get(), format!("{{\"n\":{}}}", e.seq.0));
                assert_eq!(e.hlc, hlc(e.seq.0));
                assert_eq!(
                    e.op_id.as_ref().map(OpId::as_str),
                    Some(&*format!("m{}", e.seq.0))
                );
            }
            // A short page: the first two of them.
            let page = h.read_events(&r, Seq(after), 2).await.unwrap();
            assert_eq!(
                seqs(&page),
                want.iter().copied().take(2).collect::<Vec<_>>(),
                "retire {before}, after {after}, 2"
            );
        }
        // Paging from 0 crosses the boundary without a gap.
        let (mut after, mut seen) = (Seq(0), Vec::new());
        loop {
            let page = h.read_events(&r, after, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            seen.extend(seqs(&page));
        }
        assert_eq!(seen, readable, "retire {before}: paging");
        let rec = h.load_room(&r).await.unwrap().unwrap();
        assert_eq!(rec.head, Seq(20));
        assert_eq!(rec.head_hlc, Some(hlc(20)));
        let keys = h.recent_keys(&r, 3).await.unwrap();
        let got: Vec<u64> = keys.iter().map(|k| k.seq.0).collect();
        assert!(!got.is_empty() && got.len() <= 3, "{got:?}");
        assert_eq!(*got.last().unwrap(), 20);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    }
}

/// Every field of an event comes back exactly as committed, through `read_events`,
/// `recent_keys` and `load_room`'s head hlc: ids at their length bound and with every kind of
/// printable character, an hlc whose node holds dashes, a missing op id.
pub async fn fields_round_trip(s: Arc<dyn Seeder>) {
    let h = s.history();
    let r = room("fields");
    let sent = round_trip_events();
    s.seed(&r, RoomKind::Doc, sent.clone()).await;
    let read = h.read_events(&r, Seq(0), 10).await.unwrap();
    let keys = h.recent_keys(&r, 10).await.unwrap();
    assert_reads_round_trip(&read, &keys, &sent);
    let rec = h.load_room(&r).await.unwrap().unwrap();
    assert_eq!(rec.kind, RoomKind::Doc);
    assert_eq!(rec.head_hlc, Some(sent[2].hlc.clone()));
}

/// The events of [`fields_round_trip`]: odd ids at their bounds, hlcs with dashed nodes.
pub fn round_trip_events() -> Vec<StoredEvent> {
    let odd: String = (0x21u8..=0x7e).map(char::from).collect();
    let long = "x".repeat(128);
    let mut first = ev(1, &odd[..64], Some(&odd[64..]));
    first.hlc = HlcText::parse("1763812345678-000042-gw-1-eu").unwrap();
    let mut second = ev(2, &long, Some(&long));
    second.hlc = HlcText::parse("1763812345678-000043-gw-1-eu").unwrap();
    let mut third = ev(3, "http:alice", None);
    third.hlc = HlcText::parse("1763812345679-000000-n").unwrap();
    vec![first, second, third]
}

/// `history_suite!(name, make)`: a module `name` with one `#[test]` per [`History`]
/// contract; `make` yields `(Arc<dyn Seeder>, guard)` over a fresh, empty backend.
#[macro_export]
macro_rules! history_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $crate::history_suite!(@contracts $make;
                pagination,
                reads_across_the_retired_boundary,
                fields_round_trip
            );
        }
    };
    (@contracts $make:expr; $($contract:ident),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run(1, async {
                    let (seeder, _guard) = $make;
                    $crate::store::suite::history::$contract(seeder).await;
                });
            }
        )*
    };
}
