//! Stale op lists (issue item 3): a list made against an old `base` is rebased over every list
//! committed since, which cost ops × committed ops transformations on a runtime worker — 300 ops
//! over 100 lists of 300 took seconds, two of them in two rooms blocked every worker (`/healthz`
//! stalled), and a text delete split around thousands of concurrent inserts grew quadratically.
//! Now the work is bounded by `doc_max_rebase_work` (checked before transforming, and counted
//! while transforming) and beyond it the list gets `conflict`.

use crate::doc_client::DocConn;
use crate::probe;
use crate::support::{within, Report, Server};
use serde_json::{json, Value};
use std::time::Instant;

const LISTS: usize = 120;
const OPS: usize = 250;
const TEXT: usize = 31_000;

/// A room whose `t` is a 31 000-char string, then 120 lists of 250 text inserts spread over it
/// (insert j lands inside the original text, between original chars j and j+1; each list edits
/// less than `doc_max_apply_work`). Returns the head seq.
async fn build_room(c: &mut DocConn, room: &str) -> u64 {
    assert_eq!(c.join(room).await["type"], "joined");
    let first = c
        .op(
            room,
            "init",
            0,
            json!([{"op":"set","path":["t"],"value":"a".repeat(TEXT)}]),
        )
        .await;
    assert_eq!(first["type"], "ack", "{first}");
    let mut head = 1;
    for l in 0..LISTS {
        let ops: Vec<Value> = (0..OPS)
            .map(|k| {
                let j = l * OPS + k;
                json!({"op":"text","path":["t"],"pos":2 * j + 1,"insert":"x"})
            })
            .collect();
        let ack = c.op(room, &format!("l-{l}"), head, Value::Array(ops)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        head = ack["seq"].as_u64().expect("seq");
    }
    head
}

/// The two stale lists, both made against seq 1: 250 inserts (250 × 29 750 pairs), and one
/// delete of the whole text that every committed insert splits.
fn attacks(round: usize) -> [(String, Value); 2] {
    let wide: Vec<Value> = (0..OPS)
        .map(|_| json!({"op":"text","path":["t"],"pos":0,"insert":"y"}))
        .collect();
    [
        (format!("wide-{round}"), Value::Array(wide)),
        (
            format!("split-{round}"),
            json!([{"op":"text","path":["t"],"pos":0,"delete":TEXT}]),
        ),
    ]
}

#[tokio::test]
async fn stale_op_lists_get_conflict_and_never_stall_the_server() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &["--sqlite-sync", "normal"], &log).await;
    let rooms = ["doc:stale-a", "doc:stale-b"];
    let mut heads = Vec::new();
    let mut conns = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let mut c = DocConn::connect(&server.addr, &format!("attacker-{i}")).await;
        heads.push(build_room(&mut c, room).await);
        conns.push(c);
    }
    let rss_before = probe::rss_kib(server.pid);

    // Every stale list into both rooms at once, three rounds, without waiting for answers.
    let start = Instant::now();
    for round in 0..3 {
        for (c, room) in conns.iter_mut().zip(rooms) {
            for (id, ops) in attacks(round) {
                c.send(json!({"type":"op","room":room,"id":id,"base":1,"ops":ops}))
                    .await;
            }
        }
    }
    probe::assert_healthy(&server.addr, "stale op lists in two rooms").await;
    probe::assert_serves_clients(&server.addr, "stale op lists in two rooms").await;
    // A well-behaved doc client in an attacked room, with a current base, is served.
    let mut good = DocConn::connect(&server.addr, "good-doc").await;
    assert_eq!(good.join(rooms[0]).await["type"], "joined");
    let ack = within(
        "a current op list during the attack",
        tokio::time::timeout(
            probe::RESPONSIVE,
            good.op(
                rooms[0],
                "good-1",
                heads[0],
                json!([{"op":"set","path":["ok"],"value":1}]),
            ),
        ),
    )
    .await
    .expect("a current op list is answered in time");
    assert_eq!(ack["type"], "ack", "{ack}");

    for (c, room) in conns.iter_mut().zip(rooms) {
        for round in 0..3 {
            for (id, _) in attacks(round) {
                let answer = c.answer(&id).await;
                assert_eq!(answer["code"], "conflict", "{room} {id}: {answer}");
            }
        }
    }
    let took = start.elapsed();
    assert!(
        took < probe::RESPONSIVE,
        "12 stale lists were refused in {took:?}"
    );
    probe::assert_healthy(&server.addr, "after the stale lists").await;
    let metrics = within("metrics", async {
        reqwest::get(format!("http://{}/metrics", server.addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    })
    .await;
    let refused = [("limit", "doc_max_rebase_work")];
    assert_eq!(
        crate::support::metric(&metrics, "concord_limit_hits_total", &refused),
        12.0,
        "{metrics}"
    );
    let grown_kib = probe::rss_kib(server.pid).saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the server grew by {grown_kib} KiB");
}

/// Text ops on a big string: each scans the string (positions count code points), so one list of
/// 1000 text ops on a 900 KB string took seconds of a runtime worker. The bytes a list's text
/// ops edit are bounded by `doc_max_apply_work`; beyond it the list gets `too_large`.
#[tokio::test]
async fn long_text_lists_on_a_big_string_are_refused_and_never_stall_the_server() {
    let _serial = probe::serial().await;
    let mut report = Report::new(0, "-");
    let log = report.log_path("server.log");
    let server = Server::start(report.data_dir(), &["--sqlite-sync", "normal"], &log).await;
    let rooms = ["doc:long-a", "doc:long-b"];
    let chunk = "a".repeat(60_000);
    let mut conns = Vec::new();
    let mut len = 0;
    for (i, room) in rooms.iter().enumerate() {
        let mut c = DocConn::connect(&server.addr, &format!("attacker-{i}")).await;
        assert_eq!(c.join(room).await["type"], "joined");
        let ack = c
            .op(
                room,
                "init",
                0,
                json!([{"op":"set","path":["t"],"value":chunk}]),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        len = chunk.len();
        for n in 1..15u64 {
            let ops = json!([{"op":"text","path":["t"],"pos":len,"insert":chunk}]);
            let ack = c.op(room, &format!("grow-{n}"), n, ops).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            len += chunk.len();
        }
        conns.push(c);
    }
    let rss_before = probe::rss_kib(server.pid);
    let start = Instant::now();
    let long: Vec<Value> = (0..1000)
        .map(|i| json!({"op":"text","path":["t"],"pos":len + i,"insert":"x"}))
        .collect();
    for round in 0..3 {
        for (c, room) in conns.iter_mut().zip(rooms) {
            let frame =
                json!({"type":"op","room":room,"id":format!("long-{round}"),"base":15,"ops":long});
            c.send(frame).await;
        }
    }
    probe::assert_healthy(&server.addr, "long text lists on big strings").await;
    probe::assert_serves_clients(&server.addr, "long text lists on big strings").await;
    for (c, room) in conns.iter_mut().zip(rooms) {
        for round in 0..3 {
            let answer = c.answer(&format!("long-{round}")).await;
            assert_eq!(answer["code"], "too_large", "{room}: {answer}");
        }
    }
    let took = start.elapsed();
    assert!(
        took < probe::RESPONSIVE,
        "6 long lists were refused in {took:?}"
    );
    // A short list on the same string is fine.
    let ack = conns[0]
        .op(
            rooms[0],
            "short",
            15,
            json!([{"op":"text","path":["t"],"pos":0,"insert":"ok"}]),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let grown_kib = probe::rss_kib(server.pid).saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the server grew by {grown_kib} KiB");
}
