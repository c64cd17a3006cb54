//! `concord migrate` and `concord worker` as processes: the schema applied by the binary, a
//! work entry persisted by the worker, SIGTERM giving its lease back.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_dist::pg::PgArchive;
use concord_dist::testing::pg::TestDb;
use concord_dist::worker::{all_partitions, Keys};

const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn migrate_then_worker_persists_and_stops_on_sigterm() {
    let db = TestDb::create().await;
    let bin = env!("CARGO_BIN_EXE_concord");
    let out = Command::new(bin)
        .args(["migrate", "--postgres", db.url()])
        .output()
        .expect("concord migrate");
    assert!(
        out.status.success(),
        "concord migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Twice is fine.
    let again = Command::new(bin)
        .arg("migrate")
        .env("CONCORD_POSTGRES_URL", db.url())
        .output()
        .unwrap();
    assert!(again.status.success(), "a second migrate must be a no-op");
    let archive = PgArchive::connect(db.url())
        .await
        .expect("the schema exists after migrate");
    assert_eq!(archive.shards(), 8);

    let prefix = format!("clitest{}", std::process::id());
    let mut child = Command::new(bin)
        .args([
            "worker",
            "--partitions",
            "16",
            "--lease",
            "1s",
            "--no-migrate",
        ])
        .args(["--redis-prefix", &prefix, "--metrics-addr", "127.0.0.1:0"])
        .env("CONCORD_REDIS_URL", REDIS)
        .env("CONCORD_POSTGRES_URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("concord worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the worker exited before running")
            .unwrap();
        if line.starts_with("concord worker ") && line.ends_with(" running") {
            break;
        }
    }

    let keys = Keys::new(&prefix);
    let parts = all_partitions(16);
    let p = &parts[4];
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(keys.work(p))
        .arg("*")
        .arg(&[
            "r",
            "cli-room",
            "k",
            "doc",
            "e",
            "ep",
            "s",
            "1",
            "h",
            "1800000000000-000000-n",
            "f",
            "c9",
            "d",
            "{\"x\":1}",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while archive.event_count().await.unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "the worker did not persist the entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(archive.room("cli-room").await.unwrap().unwrap().kind, "doc");

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: a clean stop, got {status}");
    let owner: Option<String> = redis::cmd("GET")
        .arg(keys.owner(p))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, None, "the lease is given back at a clean stop");
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !found.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&found)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}
