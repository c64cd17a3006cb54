//! Chaos test of a hot doc room's owner with real processes: 3 `concord serve` gateways
//! (`--doc-lease 2s`, `--ack-level redis`) and a worker over a private Redis (`appendfsync
//! always`) and a fresh PostgreSQL database. Editors (the Rust client, each given every
//! gateway as a fallback URL, spread over the gateways) edit one doc room concurrently —
//! counter adds, inserts into a shared list, sets of their own key — while a seeded schedule
//! finds the room's owner (the gateway whose `concord_doc_rooms_owned` gauge is 1) and either
//! SIGKILLs it (restarted later at the same address) or SIGSTOPs it past the lease and then
//! SIGCONTs it (the zombie must be fenced, never commit, and step down: its gauge drops to 0).
//! Each fault waits until the room moved again after the previous one.
//!
//! A history checker then reads every editor's log, a fresh join through every gateway, and
//! PostgreSQL:
//! - no editor saw an error: no refusal, no resync (nothing it edited was dropped), no end;
//! - every editor's final state and hash are equal, equal to every gateway's replica, and to
//!   the state rebuilt by applying PostgreSQL's stored op lists in seq order;
//! - PostgreSQL's seqs are exactly 1..=head, once each, in one epoch; each (client, op id) is
//!   at one seq; the counter equals the number of adds the editors made and the adds stored;
//! - each editor's acked lists (its own `Changed` seqs) are exactly the stored rows from it;
//! - hlcs strictly increase with the seq across owner changes.
//!
//! The longest stall (the largest gap between the wall times of consecutive commits) is
//! printed and bounded generously (10 leases; `CONCORD_CHAOS_DOCS_MAX_STALL_MS` tightens it).
//! `CONCORD_CHAOS_DOCS_SEED=<seed>` replays a schedule (the editors' interleaving still
//! depends on timing); `CONCORD_HEAVY=1` runs more editors and faults;
//! `CONCORD_TEST_SERVER_LOG` and `CONCORD_TEST_CLIENT_LOG` set the processes' and the
//! editors' log filters.

mod support;

use concord_client::{Client, ClientConfig, Doc, DocOptions, DocUpdate};
use concord_core::doc::{self, state_hash, Limits};
use concord_dist::pg::PgArchive;
use concord_dist::testing::redis::Persistence;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::dist::{signal, Cluster, LEASE, LEASE_DURATION};
use support::{metric, Report};
use tokio::sync::{mpsc, watch};

const GATEWAYS: usize = 3;
const WORKERS: usize = 1;
const ROOM: &str = "doc:hot";
/// How long editors edit after the last fault.
const AFTER_FAULTS: Duration = Duration::from_secs(2);
/// An editor's pause between two edits.
const PACE: Duration = Duration::from_millis(100);

/// Editors, faults.
fn sizes() -> (usize, usize) {
    if std::env::var_os("CONCORD_HEAVY").is_some() {
        (12, 6)
    } else {
        (6, 2)
    }
}

fn editor(e: usize) -> String {
    format!("ed{e}")
}

/// The ops of edit `n` of editor `e`: one `add` to the counter, and some a `set` of the
/// editor's own key and an `ins` at the head of the shared list. Valid against any state.
fn ops_of(e: usize, n: u64) -> Value {
    let mut ops = vec![json!({"op": "add", "path": ["counter"], "value": 1})];
    if n % 3 != 1 {
        ops.push(json!({"op": "set", "path": ["keys", editor(e)], "value": n}));
    }
    if n.is_multiple_of(2) {
        ops.push(json!({"op": "ins", "path": ["list", 0], "value": format!("{e}-{n}")}));
    }
    Value::Array(ops)
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the owner, restart it at its address after the delay (ms).
    KillOwner(u64),
    /// SIGSTOP the owner for the delay (ms, past the lease), then SIGCONT it.
    StopOwner(u64),
}

/// `n` faults alternating kinds (in a seeded order), each after a seeded delay (ms).
fn schedule(rng: &mut StdRng, n: usize) -> Vec<(u64, Fault)> {
    let mut kinds = Vec::new();
    while kinds.len() < n {
        let mut two = [0, 1];
        two.shuffle(rng);
        kinds.extend(two);
    }
    let lease = LEASE_DURATION.as_millis() as u64;
    kinds[..n]
        .iter()
        .map(|k| {
            let fault = match k {
                0 => Fault::KillOwner(rng.random_range(200..1500)),
                _ => Fault::StopOwner(rng.random_range(lease + 500..lease + 1500)),
            };
            (rng.random_range(500..1500), fault)
        })
        .collect()
}

/// What one editor did and saw.
#[derive(Debug, Default)]
struct EditorLog {
    /// Edits made (each one `add`).
    edits: u64,
    /// Seqs of its own lists, as acknowledged (`Changed { from_self: true }`).
    own: Vec<u64>,
    /// Every seq applied, in order.
    seqs: Vec<u64>,
    /// Errors: refusals, resyncs, a failed edit, an end.
    problems: Vec<String>,
    final_seq: u64,
    final_state: Value,
}

fn client_config(urls: &[String], first: usize, id: String) -> ClientConfig {
    ClientConfig::new(urls[first % urls.len()].clone())
        .with_client_id(id)
        .with_fallback_urls(
            (1..urls.len())
                .map(|k| urls[(first + k) % urls.len()].clone())
                .collect::<Vec<_>>(),
        )
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

fn note(log: &mut EditorLog, update: DocUpdate) {
    match update {
        DocUpdate::Changed { seq, from_self } => {
            log.seqs.push(seq);
            if from_self {
                log.own.push(seq);
            }
        }
        other => log.problems.push(format!("{other:?}")),
    }
}

/// Edits until `stop`, then waits until its edits are flushed, reports its seq on `flushed`,
/// and catches up to the head `target` names (the highest seq an editor flushed at).
async fn run_editor(
    e: usize,
    urls: Vec<String>,
    (stop, progress): (Arc<AtomicBool>, Arc<AtomicU64>),
    (flushed, mut target): (mpsc::UnboundedSender<u64>, watch::Receiver<Option<u64>>),
) -> EditorLog {
    let mut log = EditorLog::default();
    let client = Client::connect(client_config(&urls, e, editor(e)))
        .await
        .expect("a first connection");
    let mut doc: Doc = loop {
        match client.join_doc(ROOM, DocOptions::default()).await {
            Ok(d) => break d,
            Err(err) if err.code() == Some("unavailable") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("{} joining: {err}", editor(e)),
        }
    };
    let mut tick = tokio::time::interval(PACE);
    let mut n = 0u64;
    let mut ended = false;
    while !stop.load(Ordering::SeqCst) && !ended {
        tokio::select! {
            _ = tick.tick() => {
                match doc.edit_json(ops_of(e, n)) {
                    Ok(()) => log.edits += 1,
                    Err(err) => log.problems.push(format!("edit {n}: {err}")),
                }
                n += 1;
            }
            update = doc.next() => match update {
                Some(u) => {
                    note(&mut log, u);
                    progress.fetch_max(doc.seq(), Ordering::SeqCst);
                }
                None => ended = true,
            },
        }
    }
    // Flushed: every edit committed (or dropped by a resync, a problem noted by `note`).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ended && doc.has_pending() {
        if Instant::now() > deadline {
            log.problems.push("not flushed within 30 s".into());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), doc.next()).await {
            Ok(Some(u)) => note(&mut log, u),
            Ok(None) => ended = true,
            Err(_) => {}
        }
    }
    let _ = flushed.send(doc.seq());
    let want = loop {
        if let Some(want) = *target.borrow_and_update() {
            break want;
        }
        if target.changed().await.is_err() {
            break 0;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ended && doc.seq() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), doc.next()).await {
            Ok(Some(u)) => note(&mut log, u),
            Ok(None) => ended = true,
            Err(_) => {}
        }
    }
    while let Some(u) = doc.try_next() {
        note(&mut log, u);
    }
    let (seq, state) = doc.snapshot();
    log.final_seq = seq;
    log.final_state = state;
    if ended || doc.end_reason().is_some() {
        log.problems.push(format!("ended: {:?}", doc.end_reason()));
    }
    client.close().await;
    log
}

/// Gateway `g`'s `concord_doc_rooms_owned` gauge (`None` if it does not answer).
async fn rooms_owned(cluster: &Cluster, g: usize) -> Option<f64> {
    let addr = cluster.gateways[g]
        .metrics_addr
        .as_ref()
        .expect("a metrics listener");
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    let text = resp.text().await.ok()?;
    Some(metric(&text, "concord_doc_rooms_owned", &[]))
}

/// The gateway that owns the room (its gauge is 1), waiting up to `limit` for one.
async fn find_owner(cluster: &Cluster, limit: Duration) -> Option<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let mut owners = Vec::new();
        for g in 0..cluster.gateways.len() {
            if rooms_owned(cluster, g).await.is_some_and(|n| n >= 1.0) {
                owners.push(g);
            }
        }
        if owners.len() == 1 {
            return Some(owners[0]);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inject(cluster: &mut Cluster, fault: Fault) {
    let Some(owner) = find_owner(cluster, Duration::from_secs(10)).await else {
        panic!("no single owner of {ROOM} found for {fault:?}");
    };
    eprintln!(
        "chaos_docs: {fault:?} on gw{owner} at {} ms",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    match fault {
        Fault::KillOwner(ms) => {
            cluster.gateways[owner].kill9();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            cluster.gateways[owner] = cluster.start_gateway(owner).await;
        }
        Fault::StopOwner(ms) => {
            let pid = cluster.gateways[owner].pid;
            signal(pid, "-STOP");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            signal(pid, "-CONT");
            // The zombie learns that another gateway owns the room (its renewal finds the
            // lease taken, or its next commit is fenced) and steps down.
            let deadline = Instant::now() + 2 * LEASE_DURATION;
            while rooms_owned(cluster, owner).await != Some(0.0) {
                assert!(
                    Instant::now() < deadline,
                    "gw{owner} still owns {ROOM} a lease after it woke up"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_docs_owner_killed_or_stopped_past_its_lease_loses_and_doubles_nothing() {
    let seed = std::env::var("CONCORD_CHAOS_DOCS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    // The editors' client logs, to debug a failing seed (e.g. `concord_client=debug`).
    if let Ok(filter) = std::env::var("CONCORD_TEST_CLIENT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let report = Report::new(seed, "CONCORD_CHAOS_DOCS_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let (editors, fault_count) = sizes();
    let started = Instant::now();
    let mut cluster = Cluster::start(
        report,
        format!("chaosdocs{seed}"),
        Persistence::AofAlways,
        (GATEWAYS, WORKERS),
        &[
            "--ack-level",
            "redis",
            "--doc-lease",
            LEASE,
            "--metrics-listen",
            "127.0.0.1:0",
            // The lists an editor batches up during a stall of a lease or two are rebased over
            // everyone else's: more than the default work allows when the editors are many.
            "--doc-max-rebase-work",
            "400000",
        ],
    )
    .await;
    let urls = cluster.urls();

    // The doc, created with its fields.
    let setup = Client::connect(client_config(&urls, 0, "setup".into()))
        .await
        .expect("the setup client");
    let doc = setup
        .join_doc(ROOM, DocOptions::create())
        .await
        .expect("create the doc");
    doc.edit_json(json!([
        {"op": "set", "path": ["counter"], "value": 0},
        {"op": "set", "path": ["list"], "value": []},
        {"op": "set", "path": ["keys"], "value": {}},
    ]))
    .expect("the setup edit");
    tokio::time::timeout(Duration::from_secs(30), doc.flushed())
        .await
        .expect("the setup list in time")
        .expect("the setup list committed");
    drop(doc);
    setup.close().await;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let (flushed_tx, mut flushed_rx) = mpsc::unbounded_channel();
    let (target_tx, target_rx) = watch::channel(None);
    let tasks: Vec<_> = (0..editors)
        .map(|e| {
            let sync = (flushed_tx.clone(), target_rx.clone());
            let load = (stop.clone(), progress.clone());
            tokio::spawn(run_editor(e, urls.clone(), load, sync))
        })
        .collect();
    drop(flushed_tx);
    for (delay, fault) in schedule(&mut rng, fault_count) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        inject(&mut cluster, fault).await;
        // The next fault hits the room once it moves again (so that each stall is one
        // fault's, not two back to back).
        let at = progress.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.load(Ordering::SeqCst) < at + 5 {
            assert!(
                Instant::now() < deadline,
                "the room did not move for 20 s after {fault:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(AFTER_FAULTS).await;
    stop.store(true, Ordering::SeqCst);
    let mut head = 0;
    for _ in 0..editors {
        let seq = tokio::time::timeout(Duration::from_secs(40), flushed_rx.recv())
            .await
            .expect("every editor flushed in time")
            .expect("an editor's flushed seq");
        head = head.max(seq);
    }
    target_tx.send_replace(Some(head));
    let mut logs = Vec::new();
    for (e, t) in tasks.into_iter().enumerate() {
        let log = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .unwrap_or_else(|_| panic!("{} never finished", editor(e)))
            .expect("the editor task");
        logs.push(log);
    }
    check(&cluster, &logs).await;
    eprintln!("chaos_docs: run took {:?}", started.elapsed());
}

async fn check(cluster: &Cluster, logs: &[EditorLog]) {
    for (e, log) in logs.iter().enumerate() {
        assert!(
            log.problems.is_empty(),
            "{}: errors reached the editor: {:?}",
            editor(e),
            log.problems
        );
        assert!(
            log.seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: applied seqs not consecutive: {:?}",
            editor(e),
            log.seqs
        );
    }
    let head = logs.iter().map(|l| l.final_seq).max().unwrap();
    for (e, log) in logs.iter().enumerate() {
        assert_eq!(log.final_seq, head, "{}: final seq", editor(e));
        assert_eq!(
            state_hash(&log.final_state),
            state_hash(&logs[0].final_state),
            "{} and {} differ: {} vs {}",
            editor(e),
            editor(0),
            log.final_state,
            logs[0].final_state
        );
    }

    // PostgreSQL: wait for the watermark, then rebuild.
    let archive = PgArchive::connect(cluster.db.url())
        .await
        .expect("the archive");
    let deadline = Instant::now() + Duration::from_secs(30);
    while archive.watermark(ROOM).await.unwrap().map(|w| w.1) != Some(head) {
        assert!(
            Instant::now() < deadline,
            "the watermark never reached the head {head}: {:?}",
            archive.watermark(ROOM).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = archive
        .read_events(ROOM, 0, head as usize + 100)
        .await
        .unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "PostgreSQL's seqs are not exactly 1..=head"
    );
    let epochs: BTreeSet<&str> = rows.iter().map(|r| r.epoch.as_str()).collect();
    assert_eq!(epochs.len(), 1, "one epoch in PostgreSQL: {epochs:?}");
    let mut state = json!({});
    let mut keys: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut by_client: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut adds = 0u64;
    // (gap in ms, the seq after it, the wall time it started at)
    let mut stall = (0u64, 0u64, 0u64);
    for (i, row) in rows.iter().enumerate() {
        let data: Value = serde_json::from_str(&row.data).expect("stored ops are JSON");
        let ops = doc::decode_ops(&data, &Limits::default())
            .unwrap_or_else(|err| panic!("seq {}: ops do not decode: {err}", row.seq));
        state = doc::apply(&state, &ops)
            .unwrap_or_else(|err| panic!("seq {}: ops do not apply: {err}", row.seq));
        adds += data
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["op"] == "add")
            .count() as u64;
        let id = row.op_id.clone().expect("every list has an id");
        if let Some(first) = keys.insert((row.from.clone(), id.clone()), row.seq) {
            panic!(
                "{}/{id} stored twice, at seq {first} and {}",
                row.from, row.seq
            );
        }
        by_client.entry(row.from.clone()).or_default().push(row.seq);
        if i > 0 {
            let prev = &rows[i - 1];
            assert!(
                prev.hlc < row.hlc,
                "hlc not increasing at seq {}: {} then {}",
                row.seq,
                prev.hlc,
                row.hlc
            );
            let wall = |h: &str| h[..13].parse::<u64>().expect("hlc wall time");
            let gap = wall(&row.hlc).saturating_sub(wall(&prev.hlc));
            if i > 1 && gap > stall.0 {
                stall = (gap, row.seq, wall(&prev.hlc));
            }
        }
    }
    assert_eq!(
        state, logs[0].final_state,
        "the editors' state differs from PostgreSQL's op lists applied in order"
    );
    let edits: u64 = logs.iter().map(|l| l.edits).sum();
    assert_eq!(adds, edits, "adds stored vs edits made");
    assert_eq!(
        state["counter"],
        json!(edits),
        "the counter vs the edits made"
    );
    for (e, log) in logs.iter().enumerate() {
        let stored = by_client.remove(&editor(e)).unwrap_or_default();
        assert_eq!(
            log.own,
            stored,
            "{}: its acked seqs differ from its stored rows",
            editor(e)
        );
    }
    by_client.remove("setup");
    assert!(by_client.is_empty(), "rows from nobody: {by_client:?}");

    // Every gateway's replica: a fresh join through it alone serves the same state.
    for (g, url) in cluster.urls().iter().enumerate() {
        let client =
            Client::connect(ClientConfig::new(url.clone()).with_client_id(format!("obs{g}")))
                .await
                .expect("the observer");
        let mut doc = client
            .join_doc(ROOM, DocOptions::default())
            .await
            .expect("the observer's join");
        let deadline = Instant::now() + Duration::from_secs(10);
        while doc.seq() < head {
            assert!(
                Instant::now() < deadline,
                "gw{g}'s replica never reached {head}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), doc.next()).await;
        }
        while let Some(u) = doc.try_next() {
            assert!(matches!(u, DocUpdate::Changed { .. }), "gw{g}: {u:?}");
        }
        assert_eq!(doc.seq(), head);
        assert_eq!(
            doc.state(),
            state,
            "gw{g}'s replica differs from PostgreSQL's"
        );
        client.close().await;
    }
    eprintln!(
        "chaos_docs: head {head}, {edits} edits, longest stall {} ms (from {} ms, before seq {})",
        stall.0, stall.2, stall.1
    );
    // `CONCORD_CHAOS_DOCS_MAX_STALL_MS` tightens the bound (to keep the logs of a long stall).
    let bound = std::env::var("CONCORD_CHAOS_DOCS_MAX_STALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10 * LEASE_DURATION.as_millis() as u64);
    assert!(stall.0 < bound, "a stall of {} ms", stall.0);
}
