//! Unit tests of the room core: it stays free of the async runtime, a failed commit
//! answers everyone, reloads, and lets a retry find its original seq, and the ack level
//! `durable` holds acks and events for the watermark.

use super::{CoreConfig, Effect, Env, Loaded, LoadedRoom, RoomCore, StepEnv, Waiting};
use crate::metrics::Metrics;
use crate::store::{EventKey, RoomRecord, StoredEvent};
use concord_core::{ClientId, Epoch, OpId, RoomId, RoomKind, Seq};
use serde_json::value::RawValue;

/// Every source file of the core, so that none of them can bring in the runtime.
const SOURCES: &[(&str, &str)] = &[
    ("answer.rs", include_str!("answer.rs")),
    ("check.rs", include_str!("check.rs")),
    ("commit.rs", include_str!("commit.rs")),
    ("durable.rs", include_str!("durable.rs")),
    ("effect.rs", include_str!("effect.rs")),
    ("join.rs", include_str!("join.rs")),
    ("joined.rs", include_str!("joined.rs")),
    ("load.rs", include_str!("load.rs")),
    ("members.rs", include_str!("members.rs")),
    ("mod.rs", include_str!("mod.rs")),
    ("roster.rs", include_str!("roster.rs")),
    ("shared.rs", include_str!("shared.rs")),
    ("state.rs", include_str!("state.rs")),
    ("step_env.rs", include_str!("step_env.rs")),
    ("tests.rs", include_str!("tests.rs")),
    ("window.rs", include_str!("window.rs")),
    ("write.rs", include_str!("write.rs")),
];

#[test]
fn the_core_does_not_use_the_async_runtime() {
    let forbidden = concat!("tok", "io");
    for (file, source) in SOURCES {
        assert!(
            !source.contains(forbidden),
            "room/core/{file} mentions {forbidden}: the core must stay sans-IO"
        );
    }
    // Every file of the directory is in the list above.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/room/core");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("the core's directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let listed: Vec<&str> = SOURCES.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, listed);
}

/// A waiter: a number and an op id.
struct W(u32, Option<OpId>);

impl Waiting for W {
    fn op_id(&self) -> Option<&OpId> {
        self.1.as_ref()
    }
}

fn config() -> CoreConfig {
    CoreConfig::of(&crate::Config::default())
}

fn stream_room(head: u64, keys: Vec<EventKey>) -> Loaded {
    Loaded::Room(Box::new(LoadedRoom {
        record: RoomRecord {
            kind: RoomKind::Stream,
            epoch: Epoch("e1".into()),
            head: Seq(head),
            head_hlc: None,
        },
        keys,
        tail: Vec::new(),
        doc: None,
    }))
}

/// What came out: (waiter, Ok(seq) or Err(code)), appends, reloads.
#[derive(Default, Debug)]
struct Out {
    answers: Vec<(u32, Result<u64, String>)>,
    appends: Vec<Vec<StoredEvent>>,
    reloads: usize,
    broadcasts: usize,
}

fn drain(core: &mut RoomCore<W>, out: &mut Out) {
    for e in core.drain() {
        match e {
            Effect::Append(a) => out.appends.push(a.events),
            Effect::Ack { waiter, acked, .. } => out.answers.push((waiter.0, Ok(acked.seq.0))),
            Effect::Fail { waiter, error } => {
                out.answers.push((waiter.0, Err(error.code.to_string())))
            }
            Effect::Broadcast(_) => out.broadcasts += 1,
            Effect::Reload => out.reloads += 1,
            Effect::Commit(_) | Effect::Fill(_) | Effect::Forward(_) => {
                panic!("an embedded room asked for a commit point")
            }
        }
    }
    core.check().expect("the core's invariants hold");
}

fn data() -> Box<RawValue> {
    RawValue::from_string("{}".into()).unwrap()
}

#[test]
fn a_failed_commit_answers_everyone_and_a_retry_after_the_reload_gets_its_original_seq() {
    let room = RoomId::new("r").unwrap();
    let env = StepEnv::new("n", 1_000);
    let mut core: RoomCore<W> = RoomCore::new(room, config(), Metrics::new());
    let mut out = Out::default();
    drain(&mut core, &mut out);
    assert_eq!(out.reloads, 1, "a new core asks for its load");
    core.loaded(stream_room(0, Vec::new()));
    let c = ClientId::new("c").unwrap();
    let id = |s: &str| Some(OpId::new(s).unwrap());
    let none = Ok(Default::default());
    // Two batches in flight; a retry of the first op waits for its seq.
    core.publish(c.clone(), data(), W(1, id("a")), &none, &env);
    core.submit();
    core.publish(c.clone(), data(), W(2, id("b")), &none, &env);
    core.publish(c.clone(), data(), W(3, id("a")), &none, &env);
    core.submit();
    drain(&mut core, &mut out);
    assert_eq!(out.appends.len(), 2);
    assert!(out.answers.is_empty(), "nothing answered before the commit");
    // The first append's outcome is unknown (it landed); the second is refused after it.
    core.append_done(Err("timed out".into()));
    drain(&mut core, &mut out);
    assert_eq!(out.reloads, 1, "no reload while a batch is in flight");
    core.append_done(Err("not contiguous".into()));
    drain(&mut core, &mut out);
    assert_eq!(out.reloads, 2, "the reload follows the last outcome");
    let mut answered: Vec<u32> = out.answers.iter().map(|a| a.0).collect();
    answered.sort();
    assert_eq!(answered, [1, 2, 3], "every waiter answered once");
    assert!(out.answers.iter().all(|a| a.1 == Err("unavailable".into())));
    // Writes while stale are refused, not dropped.
    core.publish(c.clone(), data(), W(4, id("c")), &none, &env);
    drain(&mut core, &mut out);
    assert_eq!(out.answers.last(), Some(&(4, Err("unavailable".into()))));
    // The store has the first event: the reload finds it, the retry gets seq 1.
    let first = &out.appends[0][0];
    let key = EventKey {
        seq: first.seq,
        from: first.from.clone(),
        op_id: first.op_id.clone(),
        hlc: first.hlc.clone(),
    };
    core.loaded(stream_room(1, vec![key]));
    core.publish(c.clone(), data(), W(5, id("a")), &none, &env);
    core.publish(c, data(), W(6, id("b")), &none, &env);
    core.submit();
    drain(&mut core, &mut out);
    assert_eq!(out.answers.last(), Some(&(5, Ok(1))), "the original seq");
    assert_eq!(out.appends.last().map(|a| a[0].seq), Some(Seq(2)));
    core.append_done(Ok(()));
    drain(&mut core, &mut out);
    assert_eq!(out.answers.last(), Some(&(6, Ok(2))));
    assert_eq!(out.broadcasts, 1);
}

/// At the ack level `durable`, a shared room acks a write and delivers its event only once
/// the persisted watermark covers it — the ack first —, and a retry of a write the room
/// loaded with waits for a watermark it has heard.
#[test]
fn at_the_durable_level_acks_and_events_wait_for_the_watermark() {
    use super::shared::CommitResult;
    let room = RoomId::new("r").unwrap();
    let env = StepEnv::new("n", 1_000);
    let cfg = CoreConfig {
        shared_streams: true,
        ..config()
    };
    let mut core: RoomCore<W> = RoomCore::new(room, cfg, Metrics::new());
    core.hold_until_persisted();
    let log = |core: &mut RoomCore<W>| -> Vec<String> {
        let out = core
            .drain()
            .filter_map(|e| match e {
                Effect::Ack { waiter, acked, .. } => {
                    Some(format!("ack {} {}", waiter.0, acked.seq))
                }
                Effect::Fail { waiter, .. } => Some(format!("fail {}", waiter.0)),
                Effect::Broadcast(_) => Some("event".into()),
                _ => None,
            })
            .collect();
        core.check().expect("the core's invariants hold");
        out
    };
    log(&mut core);
    let c = ClientId::new("c").unwrap();
    let id = |s: &str| Some(OpId::new(s).unwrap());
    let key = |seq: u64, op: &str| EventKey {
        seq: Seq(seq),
        from: c.clone(),
        op_id: id(op),
        hlc: concord_core::HlcText::from(&env.hlc_now()),
    };
    core.loaded(stream_room(1, vec![key(1, "old")]));
    let epoch = Epoch("e1".into());
    let none = Ok(Default::default());
    // A retry of the loaded write: the watermark is not known yet.
    core.publish(c.clone(), data(), W(1, id("old")), &none, &env);
    assert!(
        log(&mut core).is_empty(),
        "acked before the watermark was heard"
    );
    core.publish(c.clone(), data(), W(2, id("new")), &none, &env);
    core.submit();
    log(&mut core);
    let hlc = concord_core::HlcText::from(&env.hlc_now());
    core.commit_done(Ok(vec![CommitResult {
        seq: Seq(2),
        hlc: hlc.clone(),
        duplicate: false,
        dropped: Vec::new(),
    }]));
    core.notified(
        &epoch,
        vec![StoredEvent {
            seq: Seq(2),
            hlc,
            from: c.clone(),
            op_id: id("new"),
            data: data(),
        }],
    );
    core.persisted(&epoch, Seq(1), 2_000);
    assert_eq!(
        log(&mut core),
        ["ack 1 1"],
        "only what the watermark covers"
    );
    assert!(core.waits_for_persisted());
    // A watermark of another epoch says nothing about this one.
    core.persisted(&Epoch("e0".into()), Seq(9), 2_000);
    assert!(log(&mut core).is_empty());
    core.persisted(&epoch, Seq(2), 2_000);
    assert_eq!(
        log(&mut core),
        ["ack 2 2", "event"],
        "the ack, then the event"
    );
    assert!(!core.waits_for_persisted());
}
