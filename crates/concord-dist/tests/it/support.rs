//! Helpers of the integration tests: configs, events, requests and key snapshots.

use concord_core::{ClientId, Epoch, HlcText, OpId, RoomId, RoomKind};
use concord_dist::keys::RoomKeys;
use concord_dist::testing::redis::TestPrefix;
use concord_dist::{CommitRequest, LogConfig, NewEvent, RedisLog, RedisTarget};
use redis::Value;
use std::time::Duration;

pub fn config(prefix: &str) -> LogConfig {
    LogConfig {
        prefix: prefix.to_string(),
        call_timeout: Duration::from_secs(10),
        ..LogConfig::default()
    }
}

/// A log on the shared Redis under a prefix of its own (its keys go when the guard drops).
pub async fn shared(name: &str) -> (TestPrefix, RedisLog) {
    shared_with(name, |_| {}).await
}

pub async fn shared_with(name: &str, tune: impl FnOnce(&mut LogConfig)) -> (TestPrefix, RedisLog) {
    let prefix = TestPrefix::new(name);
    let mut cfg = config(prefix.prefix());
    tune(&mut cfg);
    let log = RedisLog::connect(&TestPrefix::target(), cfg)
        .await
        .expect("connect to the shared Redis at 127.0.0.1:6379");
    (prefix, log)
}

pub async fn connect(target: &RedisTarget, prefix: &str) -> RedisLog {
    RedisLog::connect(target, config(prefix))
        .await
        .expect("connect")
}

pub fn room(name: &str) -> RoomId {
    RoomId::new(name).expect("a valid room name")
}

pub fn epoch(e: &str) -> Epoch {
    Epoch(e.to_string())
}

pub fn hlc(wall_ms: u64, logical: u32) -> HlcText {
    HlcText::parse(&format!("{wall_ms:013}-{logical:06}-prop")).expect("an hlc")
}

pub fn ev(from: &str, op: Option<&str>, data: &str) -> NewEvent {
    NewEvent {
        from: ClientId::new(from).expect("client id"),
        op_id: op.map(|o| OpId::new(o).expect("op id")),
        data: serde_json::value::RawValue::from_string(data.to_string()).expect("JSON"),
        resend: false,
        key: None,
    }
}

pub fn req(e: &str, proposed: HlcText, events: Vec<NewEvent>) -> CommitRequest {
    CommitRequest {
        epoch: epoch(e),
        fence: None,
        expected_head: None,
        hlc: proposed,
        node: "gw1".into(),
        events,
    }
}

pub async fn create(log: &RedisLog, r: &RoomId, kind: RoomKind, e: &str) {
    let head = log
        .create_room(r, kind, &epoch(e))
        .await
        .expect("create the room");
    assert_eq!(head.kind, kind);
}

/// Every key a commit to the room may write, DUMPed (None: absent), plus the stream lengths:
/// equal snapshots mean nothing was written.
pub async fn snapshot(log: &RedisLog, rk: &RoomKeys, buckets: &[u64]) -> Vec<Value> {
    let mut keys = vec![rk.meta.clone(), rk.log.clone(), rk.work.clone()];
    keys.extend(buckets.iter().map(|b| rk.idem(*b)));
    let mut out = Vec::new();
    for k in keys {
        let mut dump = redis::cmd("DUMP");
        dump.arg(&k);
        out.push(log.connection().query::<Value>(&dump).await.expect("DUMP"));
        let mut ty = redis::cmd("TYPE");
        ty.arg(&k);
        let t: String = log.connection().query(&ty).await.expect("TYPE");
        if t == "stream" {
            let mut xlen = redis::cmd("XLEN");
            xlen.arg(&k);
            out.push(log.connection().query::<Value>(&xlen).await.expect("XLEN"));
        }
    }
    out
}

/// The work stream's entries as field maps, in order.
pub async fn work_entries(
    log: &RedisLog,
    rk: &RoomKeys,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(&rk.work).arg("-").arg("+");
    let reply: redis::streams::StreamRangeReply =
        log.connection().query(&cmd).await.expect("XRANGE work");
    reply
        .ids
        .into_iter()
        .map(|id| {
            id.map
                .into_iter()
                .map(|(k, v)| {
                    let v: String = redis::from_redis_value(v).expect("a text field");
                    (k, v)
                })
                .collect()
        })
        .collect()
}
