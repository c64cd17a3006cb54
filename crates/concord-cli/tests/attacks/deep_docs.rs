//! Deep and huge documents (issue items 2 and 9): two small op lists used to make a doc room
//! ~128 levels deep, after which its snapshot could not be read back and every join, op and GET
//! of the room answered `unavailable` for good, across restarts; and nothing bounded the size of
//! a document (a 10 MB `joined`). Also: a room whose op log cannot be replayed fails loudly and
//! `concord repair` brings it back.

use crate::doc_client::{get, nested, DocConn};
use crate::probe;
use crate::support::{within, Report, Server};
use serde_json::{json, Value};

const ROOM: &str = "doc:deep";

/// The path of 64 steps that reaches the innermost object of `{"a": nested(63)}`, plus a key.
fn deepest_path() -> Value {
    let mut path = vec![json!("a")];
    path.extend(std::iter::repeat_n(json!("k"), 62));
    path.push(json!("x"));
    assert_eq!(path.len(), 64);
    Value::Array(path)
}

/// The two op lists of the report: each within its own limits.
async fn attack(c: &mut DocConn) -> (Value, Value) {
    let first = c
        .op(
            ROOM,
            "deep-1",
            0,
            json!([{"op":"set","path":["a"],"value":nested(63)}]),
        )
        .await;
    assert_eq!(
        first["type"], "ack",
        "the first list is legitimate: {first}"
    );
    let second = c
        .op(
            ROOM,
            "deep-2",
            1,
            json!([{"op":"set","path":deepest_path(),"value":nested(64)}]),
        )
        .await;
    (first, second)
}

/// Join, op and GET (latest and `at`) of the room all work, with a readable state.
/// Two more small lists (`deep-3`, `deep-4`), the first at `base`, each acked: enough to write
/// snapshots that a restart reads back.
async fn small_lists(c: &mut DocConn, base: u64) {
    for (i, base) in [(3, base), (4, base + 1)] {
        let ack = c
            .op(
                ROOM,
                &format!("deep-{i}"),
                base,
                json!([{"op":"set","path":[format!("n{i}")],"value":i}]),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
}

async fn assert_room_serves(addr: &str, client: &str, during: &str) {
    let mut c = DocConn::connect(addr, client).await;
    let joined = c.join(ROOM).await;
    assert_eq!(joined["type"], "joined", "{during}: join: {joined}");
    assert!(joined["hash"].is_string(), "{during}: {joined}");
    let head = joined["seq"].as_u64().expect("seq");
    let ack = c
        .op(
            ROOM,
            &format!("{client}-op"),
            head,
            json!([{"op":"set","path":[client],"value":true}]),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{during}: op: {ack}");
    let (status, body) = get(&format!("http://{addr}/v1/rooms/{ROOM}")).await;
    assert_eq!(status, 200, "{during}: GET: {body}");
    let (status, body) = get(&format!("http://{addr}/v1/rooms/{ROOM}?at=1")).await;
    assert_eq!(status, 200, "{during}: GET ?at=1: {body}");
    c.close().await;
}

#[tokio::test]
async fn two_small_op_lists_cannot_make_a_doc_room_unloadable() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let args = ["--doc-snapshot-every", "2", "--sqlite-sync", "normal"];
    let log = report.log_path("server-1.log");
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let mut c = DocConn::connect(&server.addr, "attacker").await;
    assert_eq!(c.join(ROOM).await["type"], "joined");
    let (_, second) = attack(&mut c).await;
    assert_eq!(
        second["code"], "rejected",
        "a list that makes the document deeper than doc_max_depth is refused: {second}"
    );
    // More lists, so that snapshots are written (every 2 seqs) and read back after the restart.
    small_lists(&mut c, 1).await;
    probe::assert_healthy(&server.addr, "the deep-doc attack").await;
    probe::assert_serves_clients(&server.addr, "the deep-doc attack").await;
    assert_room_serves(&server.addr, "reader-1", "after the attack").await;
    c.close().await;

    server.kill9();
    let log = report.log_path("server-2.log");
    let server = Server::start(report.data_dir(), &args, &log).await;
    assert_room_serves(&server.addr, "reader-2", "after a restart").await;
}

#[tokio::test]
async fn a_deep_document_written_before_the_limit_still_loads() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    // The old behaviour, on purpose: no effective depth limit, snapshots of the deep document.
    let old = [
        "--doc-max-depth",
        "1000",
        "--doc-snapshot-every",
        "2",
        "--sqlite-sync",
        "normal",
    ];
    let log = report.log_path("server-old.log");
    let mut server = Server::start(report.data_dir(), &old, &log).await;
    let mut c = DocConn::connect(&server.addr, "attacker").await;
    assert_eq!(c.join(ROOM).await["type"], "joined");
    let (_, second) = attack(&mut c).await;
    assert_eq!(second["type"], "ack", "{second}");
    small_lists(&mut c, 2).await;
    c.close().await;
    server.kill9();

    // Today's limits: the ~128-level snapshot must still be readable, and the room usable.
    let log = report.log_path("server-new.log");
    let server = Server::start(
        report.data_dir(),
        &["--doc-snapshot-every", "2", "--sqlite-sync", "normal"],
        &log,
    )
    .await;
    assert_room_serves(
        &server.addr,
        "reader",
        "after a restart with a deep snapshot",
    )
    .await;
    let (_, body) = get(&format!("http://{}/v1/rooms/{ROOM}", server.addr)).await;
    assert!(
        concord_core::doc::depth(&body["state"]) > 100,
        "the document is the deep one"
    );
    probe::assert_healthy(&server.addr, "loading a deep document").await;
}

#[tokio::test]
async fn an_unreplayable_op_log_fails_loudly_and_concord_repair_fixes_it() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let args = ["--sqlite-sync", "normal"];
    let log = report.log_path("server-1.log");
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let mut c = DocConn::connect(&server.addr, "writer").await;
    assert_eq!(c.join(ROOM).await["type"], "joined");
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let ack = c
            .op(
                ROOM,
                key,
                i as u64,
                json!([{"op":"set","path":[key],"value":i}]),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    c.close().await;
    server.kill9();

    // Damage the op log: seq 2 no longer applies.
    let db = rusqlite::Connection::open(report.data_dir().join("concord.db")).expect("open db");
    let changed = db
        .execute(
            "UPDATE events SET data = '[{\"op\":\"del\",\"path\":[\"nope\"]}]' \
             WHERE seq = 2 AND room = (SELECT id FROM rooms WHERE name = ?1)",
            [ROOM],
        )
        .expect("update");
    assert_eq!(changed, 1);
    drop(db);

    let log = report.log_path("server-2.log");
    let mut server = Server::start(report.data_dir(), &args, &log).await;
    let mut c = DocConn::connect(&server.addr, "reader").await;
    let refused = c.join(ROOM).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["message"].as_str().unwrap_or("").contains("repair"),
        "the answer says what is wrong: {refused}"
    );
    let again = c.op(ROOM, "x", 3, json!([])).await;
    assert_eq!(again["code"], "unavailable", "{again}");
    let (_, metrics) = (
        0,
        reqwest_text(&format!("http://{}/metrics", server.addr)).await,
    );
    assert_eq!(
        crate::support::metric(&metrics, "concord_doc_load_failures_total", &[]),
        1.0,
        "the failure is counted"
    );
    probe::assert_healthy(&server.addr, "a broken room").await;
    probe::assert_serves_clients(&server.addr, "a broken room").await;
    server.kill9();

    let out = within(
        "concord repair",
        tokio::task::spawn_blocking({
            let data = report.data_dir().to_path_buf();
            move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
                    .args(["repair", "--room", ROOM, "--data-dir"])
                    .arg(data)
                    .output()
                    .expect("run concord repair")
            }
        }),
    )
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "repair failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 op list(s) left out"), "{stdout}");

    let log = report.log_path("server-3.log");
    let server = Server::start(report.data_dir(), &args, &log).await;
    let mut c = DocConn::connect(&server.addr, "reader").await;
    let joined = c.join(ROOM).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["seq"], 3);
    assert_eq!(joined["state"], json!({"a":0,"c":2}));
    let ack = c
        .op(
            ROOM,
            "after-repair",
            3,
            json!([{"op":"set","path":["d"],"value":3}]),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

async fn reqwest_text(url: &str) -> String {
    let res = within(url, reqwest::get(url)).await.expect("GET");
    within(url, res.text()).await.expect("body")
}

#[tokio::test]
async fn a_document_cannot_grow_past_doc_max_bytes() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &["--sqlite-sync", "normal"], &log).await;
    let room = "doc:huge";
    let mut c = DocConn::connect(&server.addr, "grower").await;
    assert_eq!(c.join(room).await["type"], "joined");
    let rss_before = probe::rss_kib(server.pid);
    let chunk = "x".repeat(60_000);
    let (mut seq, mut acked, mut refused) = (0u64, 0, 0);
    for i in 0..30 {
        let answer = c
            .op(
                room,
                &format!("g-{i}"),
                seq,
                json!([{"op":"set","path":[format!("k{i}")],"value":chunk}]),
            )
            .await;
        match answer["type"].as_str() {
            Some("ack") => {
                seq = answer["seq"].as_u64().expect("seq");
                acked += 1;
            }
            _ => {
                assert_eq!(answer["code"], "rejected", "{answer}");
                refused += 1;
            }
        }
    }
    assert!(
        acked <= 17,
        "1 MiB holds at most 17 strings of 60 000 bytes; {acked} were accepted"
    );
    assert!(refused >= 13, "{refused} refused");
    // Shrinking is always allowed, and makes room again.
    let del = c
        .op(room, "shrink", seq, json!([{"op":"del","path":["k0"]}]))
        .await;
    assert_eq!(del["type"], "ack", "{del}");
    let grow = c
        .op(
            room,
            "grow-again",
            seq + 1,
            json!([{"op":"set","path":["again"],"value":chunk}]),
        )
        .await;
    assert_eq!(grow["type"], "ack", "{grow}");
    probe::assert_healthy(&server.addr, "the doc size attack").await;
    probe::assert_serves_clients(&server.addr, "the doc size attack").await;

    let mut reader = DocConn::connect(&server.addr, "reader").await;
    let joined = reader.join(room).await;
    let state_bytes = concord_core::doc::canonical_len(&joined["state"]);
    assert!(
        state_bytes <= 1024 * 1024,
        "joined.state is {state_bytes} bytes"
    );
    let grown_kib = probe::rss_kib(server.pid).saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the server grew by {grown_kib} KiB");
}
