//! The chaos tests' client load and history checks: clients of the Rust client (every gateway
//! a fallback URL) publishing into shared stream rooms while a test injects faults, what each
//! client saw and every ack recorded, and the checkers of that history against each other,
//! PostgreSQL and Redis.
#![allow(dead_code)] // not every test binary that shares this module uses all of it

use super::dist::{Cluster, PARTITIONS};
use concord_client::{Client, ClientConfig, JoinOptions, RoomUpdate};
use concord_dist::pg::PgArchive;
use concord_dist::worker::{all_partitions, Keys};
use futures::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn room_name(r: usize) -> String {
    format!("chaos:{r}")
}

/// The rooms client `c` joins and publishes into (of `rooms`).
pub fn rooms_of(c: usize, rooms: usize) -> [usize; 2] {
    [c % rooms, (c + 1) % rooms]
}

/// One event a client received: (seq, from, op id, data, hlc).
pub type SeenEvent = (u64, String, Option<String>, String, String);

/// What one client saw of one room: every update, in order.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<SeenEvent>,
    /// Each reset: (how many events came before it, its epoch, its seq).
    pub resets: Vec<(usize, String, u64)>,
}

/// (client, room) → what it saw.
pub type Log = Arc<Mutex<HashMap<(usize, usize), Seen>>>;
/// (room, client, id) → (seq, hlc) of every ack.
pub type Acks = Arc<Mutex<BTreeMap<(usize, String, String), (u64, String)>>>;

/// How the test steers the clients' publishing.
pub struct Control {
    /// Rooms in the test.
    pub rooms: usize,
    /// Publishes each client sends once `done` is set, then it stops.
    pub each: usize,
    /// Set when the faults are over.
    pub done: AtomicBool,
    /// While set, clients send no new publish (those in flight still get their acks).
    pub paused: AtomicBool,
    /// Publishes sent and not yet acked, over all clients.
    pub inflight: AtomicUsize,
    /// When each ack arrived (since `start`), to check when acks flowed.
    pub ack_times: Mutex<Vec<Duration>>,
    pub start: Instant,
}

impl Control {
    pub fn new(rooms: usize, each: usize) -> Arc<Control> {
        Arc::new(Control {
            rooms,
            each,
            done: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            ack_times: Mutex::new(Vec::new()),
            start: Instant::now(),
        })
    }

    /// Pauses new publishes and waits until every publish sent has its ack.
    pub async fn quiesce(&self, limit: Duration) {
        self.paused.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        while self.inflight.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} publishes still without an ack after {limit:?}",
                self.inflight.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Acks that arrived in `[from, to)` (times since `start`).
    pub fn acks_between(&self, from: Duration, to: Duration) -> usize {
        let times = self.ack_times.lock().unwrap();
        times.iter().filter(|t| **t >= from && **t < to).count()
    }
}

/// Client `c`: connects through gateway `c mod n` (the others as fallbacks), joins its two
/// rooms, records every update, publishes (paced, up to 8 in flight) until `control.done`
/// plus `control.each` more, records every ack. A publish refused as `unavailable` is sent
/// again with the same id.
pub async fn run_client(
    c: usize,
    urls: Vec<String>,
    control: Arc<Control>,
    log: Log,
    acks: Acks,
) -> Client {
    let rooms = control.rooms;
    let config = ClientConfig::new(urls[c % urls.len()].clone())
        .with_client_id(format!("client-{c}"))
        .with_fallback_urls(
            (1..urls.len())
                .map(|k| urls[(c + k) % urls.len()].clone())
                .collect::<Vec<_>>(),
        )
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500));
    log_clients();
    let client =
        tracing::Instrument::instrument(Client::connect(config), tracing::info_span!("client", c))
            .await
            .expect("a first connection");
    for r in rooms_of(c, rooms) {
        // A join refused for a passing reason (Redis restarting) is tried again.
        let mut room = loop {
            match client.join(&room_name(r), JoinOptions::stream()).await {
                Ok(room) => break room,
                Err(e) if e.code() == Some("unavailable") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("client-{c} joining room {r}: {e}"),
            }
        };
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(update) = room.next().await {
                let mut log = log.lock().unwrap();
                let seen = log.entry((c, r)).or_default();
                match update {
                    RoomUpdate::Event(e) => seen.events.push((
                        e.seq,
                        e.from.to_string(),
                        e.id.map(|i| i.to_string()),
                        e.data.map(|d| d.get().to_string()).unwrap_or_default(),
                        e.hlc.to_string(),
                    )),
                    RoomUpdate::Reset {
                        epoch, seq, events, ..
                    } => {
                        let at = seen.events.len();
                        seen.resets.push((at, epoch, seq));
                        // The reset's events are the new truth up to `seq`.
                        for e in events {
                            seen.events.push((
                                e.seq,
                                e.from.to_string(),
                                e.id.map(|i| i.to_string()),
                                e.data.map(|d| d.get().to_string()).unwrap_or_default(),
                                e.hlc.to_string(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut after = 0;
    let record = |(r, id, seq, hlc): (usize, String, u64, String)| {
        control
            .ack_times
            .lock()
            .unwrap()
            .push(control.start.elapsed());
        control.inflight.fetch_sub(1, Ordering::SeqCst);
        acks.lock()
            .unwrap()
            .insert((r, format!("client-{c}"), id), (seq, hlc));
    };
    for n in 0.. {
        if control.done.load(Ordering::SeqCst) {
            if after == control.each {
                break;
            }
            after += 1;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        // The publish is counted before the pause is checked, so that `quiesce` (which sets
        // the pause, then waits for the count to drop to 0) cannot miss one about to go out.
        // Paused: collect the acks of what is in flight, send nothing new.
        loop {
            control.inflight.fetch_add(1, Ordering::SeqCst);
            if !control.paused.load(Ordering::SeqCst) || control.done.load(Ordering::SeqCst) {
                break;
            }
            control.inflight.fetch_sub(1, Ordering::SeqCst);
            tokio::select! {
                Some(a) = inflight.next(), if !inflight.is_empty() => record(a),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let r = rooms_of(c, rooms)[n % 2];
        let id = format!("m{n}");
        let client = &client;
        inflight.push(async move {
            let data = json!({"c": c, "n": n});
            loop {
                match client
                    .publish_with_id(&room_name(r), id.clone(), data.clone())
                    .await
                {
                    Ok(ack) => return (r, id, ack.seq, ack.hlc),
                    Err(e) => {
                        assert_eq!(
                            e.code(),
                            Some("unavailable"),
                            "client-{c} {id}: only a passing refusal is acceptable: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        if inflight.len() >= 8 {
            let a = inflight.next().await.unwrap();
            record(a);
        }
    }
    while let Some(a) = inflight.next().await {
        record(a);
    }
    drop(inflight);
    client
}

/// With `CONCORD_TEST_CLIENT_LOG=FILE`, the clients' debug logs go to FILE (the lines about
/// rejoins and resends name their client): what a client did when a run fails.
fn log_clients() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(path) = std::env::var_os("CONCORD_TEST_CLIENT_LOG") else {
            return;
        };
        let file = std::fs::File::create(path).expect("the client log");
        let _ = tracing_subscriber::fmt()
            .with_env_filter("concord_client=trace")
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    });
}

/// Clients `0..clients`, each running [`run_client`] under `control`, with the log and the acks
/// they fill.
pub fn spawn_clients(
    clients: usize,
    urls: &[String],
    control: &Arc<Control>,
) -> (Log, Acks, Vec<tokio::task::JoinHandle<Client>>) {
    let log: Log = Arc::default();
    let acks: Acks = Arc::default();
    let tasks = (0..clients)
        .map(|c| {
            let (urls, log, acks) = (urls.to_vec(), log.clone(), acks.clone());
            tokio::spawn(run_client(c, urls, control.clone(), log, acks))
        })
        .collect();
    (log, acks, tasks)
}

/// Waits until every (client, room) of `stayers` received the room's head.
pub async fn wait_caught_up(log: &Log, stayers: &[usize], rooms: usize, heads: &[u64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let behind: Vec<String> = {
            let log = log.lock().unwrap();
            stayers
                .iter()
                .flat_map(|c| rooms_of(*c, rooms).map(|r| (*c, r)))
                .filter_map(|(c, r)| {
                    let last = log.get(&(c, r)).and_then(|s| s.events.last()).map(|e| e.0);
                    (last != Some(heads[r]))
                        .then(|| format!("client-{c} room {r}: at {last:?} of {}", heads[r]))
                })
                .collect()
        };
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients never received their rooms' heads: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per room: seq ↔ (client, id) one to one, seqs exactly 1..=head. Returns the heads.
pub fn check_acks(
    acks: &BTreeMap<(usize, String, String), (u64, String)>,
    rooms: usize,
) -> Vec<u64> {
    let mut heads = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let seqs: BTreeSet<u64> = acks
            .iter()
            .filter(|((room, ..), _)| *room == r)
            .map(|(_, (seq, _))| *seq)
            .collect();
        let count = acks.keys().filter(|(room, ..)| *room == r).count();
        assert_eq!(
            seqs.len(),
            count,
            "room {r}: two publishes were acked with one seq"
        );
        assert_eq!(
            seqs,
            (1..=count as u64).collect(),
            "room {r}: the acked seqs are not exactly 1..=head (a gap or an event nobody acked)"
        );
        heads.push(count as u64);
    }
    heads
}

/// Every client's log: gap-free from its first event, no reset, each event equal to its ack,
/// hlcs increasing; all clients agree per (room, seq).
pub fn check_client_logs(
    log: &HashMap<(usize, usize), Seen>,
    acks: &BTreeMap<(usize, String, String), (u64, String)>,
    heads: &[u64],
) {
    let by_seq: HashMap<(usize, u64), (&str, &str, &str)> = acks
        .iter()
        .map(|((r, c, id), (seq, hlc))| ((*r, *seq), (c.as_str(), id.as_str(), hlc.as_str())))
        .collect();
    let mut agreed: HashMap<(usize, u64), &str> = HashMap::new();
    for ((c, r), seen) in log {
        assert_eq!(
            seen.resets,
            vec![],
            "client-{c} room {r}: a reset (acked events lost?)"
        );
        check_events(&format!("client-{c} room {r}"), &seen.events);
        if let Some(last) = seen.events.last() {
            assert!(last.0 <= heads[*r]);
        }
        for (seq, from, id, data, hlc) in &seen.events {
            let (ac, aid, ahlc) = by_seq[&(*r, *seq)];
            assert_eq!(
                (from.as_str(), id.as_deref(), hlc.as_str()),
                (ac, Some(aid), ahlc),
                "client-{c} room {r} seq {seq}: not the acked publish"
            );
            let prev = agreed.insert((*r, *seq), data);
            assert!(
                prev.is_none_or(|p| p == data),
                "room {r} seq {seq}: clients saw different data"
            );
        }
    }
}

/// A run of events is gap-free (consecutive seqs) and its hlcs increase.
pub fn check_events(what: &str, events: &[SeenEvent]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    if let Some(first) = seqs.first() {
        let want: Vec<u64> = (*first..*first + seqs.len() as u64).collect();
        assert_eq!(seqs, want, "{what}: a gap or a repeat");
    }
    assert!(
        events.windows(2).all(|w| w[0].4 < w[1].4),
        "{what}: hlcs do not increase with seqs"
    );
}

/// Waits until PostgreSQL's watermark of every room is at its head.
pub async fn wait_persisted(archive: &PgArchive, heads: &[u64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (r, head) in heads.iter().enumerate() {
        let room = room_name(r);
        loop {
            let wm = archive.watermark(&room).await.ok().flatten().map(|w| w.1);
            if wm == Some(*head) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {r}: the watermark ({wm:?}) never reached the head {head}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// PostgreSQL: every event once at its seq, as acked, in one epoch, watermark at the head.
pub async fn check_postgres(
    db_url: &str,
    acks: &BTreeMap<(usize, String, String), (u64, String)>,
    heads: &[u64],
) {
    let archive = PgArchive::connect(db_url).await.expect("the archive");
    wait_persisted(&archive, heads).await;
    for (r, head) in heads.iter().enumerate() {
        let room = room_name(r);
        let rows = archive
            .read_events(&room, 0, *head as usize + 10)
            .await
            .unwrap();
        let seqs: Vec<u64> = rows.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=*head).collect::<Vec<_>>(),
            "room {r}: PostgreSQL lost, doubled or reordered an event"
        );
        let epochs: BTreeSet<&str> = rows.iter().map(|e| e.epoch.as_str()).collect();
        assert_eq!(epochs.len(), 1, "room {r}: one epoch in PostgreSQL");
        for row in &rows {
            let op = row.op_id.clone().expect("every publish had an id");
            let (seq, hlc) = &acks[&(r, row.from.clone(), op)];
            assert_eq!(
                (*seq, hlc.as_str()),
                (row.seq, row.hlc.as_str()),
                "room {r}: PostgreSQL's row differs from the ack"
            );
        }
    }
    archive.close().await;
}

/// Redis: nothing pending in the rooms' work streams, no dead letter.
pub fn check_redis_drained(cluster: &Cluster, rooms: usize) {
    let keys = Keys::new(&cluster.prefix);
    let parts = all_partitions(PARTITIONS);
    let mut conn = cluster.redis.client();
    for r in 0..rooms {
        let p = concord_dist::partition::fnv1a_64(room_name(r).as_bytes()) % u64::from(PARTITIONS);
        let part = &parts[p as usize];
        // XPENDING's summary: [count, smallest id, greatest id, consumers].
        let summary: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(keys.work(part))
            .arg("persist")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("XPENDING of room {r}'s work stream: {e}"));
        let count = match summary.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING answered {other:?}"),
        };
        assert_eq!(
            count, 0,
            "room {r}: entries still pending in its work stream"
        );
        let dead: i64 = redis::cmd("XLEN")
            .arg(keys.dead(part))
            .query(&mut conn)
            .unwrap();
        assert_eq!(dead, 0, "room {r}: an entry was dead-lettered");
    }
}

/// PostgreSQL: no dead letter row.
pub async fn check_no_dead_letter_rows(db_url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("connect");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut conn)
        .await
        .expect("count dead letters");
    assert_eq!(n, 0, "an entry was dead-lettered");
    let _ = conn.close().await;
}
