//! Doc op lists forwarded between gateways over Redis pub/sub. Each gateway listens on its
//! inbox channel (`{prefix}:gw:{id}:in`, on the feeds' subscriber connection): a request names
//! the forwarder and a request id; the owner's answer is published on the forwarder's inbox
//! with that id. Pub/sub is at most once: a forwarder that gets no answer within its timeout
//! answers `Unknown`, and the list is forwarded again with the same op id (the owner's
//! idempotency answers a list that had committed with its original ack). A request nobody
//! listens to (`PUBLISH` reached no subscriber) is `Unknown` at once.

use super::feed::Notifier;
use crate::RedisLog;
use concord_core::{ClientId, HlcText, OpId, RoomId, Seq};
use concord_protocol::ErrorCode;
use concord_server::cluster::{
    CommitFailure, CommitResult, ForwardAnswer, Forwarded, ForwardedList, Inbox,
};
use concord_server::room::RoomError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One message on a gateway's inbox channel: a request (`req`) or the answer to one (`ans`),
/// with the forwarder's request id.
#[derive(Serialize, Deserialize)]
struct Wire {
    rid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    req: Option<Req>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ans: Option<WireAnswer>,
}

/// A list forwarded to the owner by gateway `from`.
#[derive(Serialize, Deserialize)]
struct Req {
    from: String,
    room: String,
    client: String,
    op_id: Option<String>,
    base: u64,
    ops: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum WireAnswer {
    Ok {
        seq: u64,
        hlc: String,
        dup: bool,
        dropped: Vec<usize>,
    },
    /// Forward it again.
    Unknown {
        why: String,
    },
    Refused {
        code: ErrorCode,
        message: String,
    },
}

impl WireAnswer {
    fn of(answer: ForwardAnswer) -> Self {
        match answer {
            Ok(r) => WireAnswer::Ok {
                seq: r.seq.0,
                hlc: r.hlc.as_str().to_string(),
                dup: r.duplicate,
                dropped: r.dropped,
            },
            Err(CommitFailure::Refused(e)) => WireAnswer::Refused {
                code: e.code,
                message: e.message,
            },
            Err(CommitFailure::Unknown(why)) => WireAnswer::Unknown { why },
            Err(other) => WireAnswer::Unknown {
                why: format!("{other:?}"),
            },
        }
    }

    fn answer(self) -> ForwardAnswer {
        match self {
            WireAnswer::Ok {
                seq,
                hlc,
                dup,
                dropped,
            } => match HlcText::parse(&hlc) {
                Some(hlc) => Ok(CommitResult {
                    seq: Seq(seq),
                    hlc,
                    duplicate: dup,
                    dropped,
                }),
                None => Err(CommitFailure::Unknown("an answer with a bad hlc".into())),
            },
            WireAnswer::Unknown { why } => Err(CommitFailure::Unknown(why)),
            WireAnswer::Refused { code, message } => {
                Err(CommitFailure::Refused(RoomError::new(code, message)))
            }
        }
    }
}

/// A gateway's end of the forwarding: its inbox and the answers it waits for.
pub struct Forwarding {
    log: Arc<RedisLog>,
    me: String,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<ForwardAnswer>>>>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Forwarded>>>,
}

impl Forwarding {
    /// Subscribes to gateway `me`'s inbox and starts serving it.
    pub async fn start(log: Arc<RedisLog>, notifier: &Notifier, me: &str) -> Self {
        let raw = notifier.subscribe_raw(log.keys().gateway_inbox(me)).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<ForwardAnswer>>>> = Arc::default();
        tokio::spawn(serve(log.clone(), raw, tx, waiting.clone()));
        Forwarding {
            log,
            me: me.to_string(),
            next: AtomicU64::new(1),
            waiting,
            inbox: Mutex::new(Some(rx)),
        }
    }

    pub fn take_inbox(&self) -> Option<Inbox> {
        let rx = self.inbox.lock().expect("the inbox").take()?;
        Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        })))
    }

    /// Forwards `list` to `owner` and waits at most `timeout` for the answer.
    pub async fn forward(
        &self,
        owner: &str,
        room: &RoomId,
        list: ForwardedList,
        timeout: Duration,
    ) -> ForwardAnswer {
        let rid = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("the forwards waiting")
            .insert(rid, tx);
        let req = Wire {
            rid,
            req: Some(Req {
                from: self.me.clone(),
                room: room.as_str().to_string(),
                client: list.client.as_str().to_string(),
                op_id: list.op_id.map(|o| o.as_str().to_string()),
                base: list.base.0,
                ops: list.ops,
            }),
            ans: None,
        };
        let answer = async {
            let payload = serde_json::to_string(&req).expect("a request encodes");
            let mut publish = redis::cmd("PUBLISH");
            publish
                .arg(self.log.keys().gateway_inbox(owner))
                .arg(payload);
            match self.log.call_cmd::<i64>(&publish).await {
                Ok(0) => return Err(CommitFailure::Unknown("the owner does not listen".into())),
                Ok(_) => {}
                Err(e) => return Err(CommitFailure::Unknown(e.to_string())),
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                _ => Err(CommitFailure::Unknown(
                    "the owner did not answer in time".into(),
                )),
            }
        }
        .await;
        self.waiting
            .lock()
            .expect("the forwards waiting")
            .remove(&rid);
        answer
    }
}

/// Reads the inbox: requests go to the server (their answers are published back to the
/// forwarder), answers to the forward waiting for them. Ends with the subscription.
async fn serve(
    log: Arc<RedisLog>,
    mut raw: mpsc::UnboundedReceiver<Vec<u8>>,
    inbox: mpsc::UnboundedSender<Forwarded>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<ForwardAnswer>>>>,
) {
    while let Some(payload) = raw.recv().await {
        let Ok(msg) = serde_json::from_slice::<Wire>(&payload) else {
            tracing::warn!("an inbox message that does not parse");
            continue;
        };
        let rid = msg.rid;
        match (msg.req, msg.ans) {
            (None, Some(answer)) => {
                if let Some(tx) = waiting.lock().expect("the forwards waiting").remove(&rid) {
                    let _ = tx.send(answer.answer());
                }
            }
            (None, None) | (Some(_), Some(_)) => {
                tracing::warn!("an inbox message that is neither a request nor an answer");
            }
            (Some(req), None) => {
                let Req {
                    from,
                    room,
                    client,
                    op_id,
                    base,
                    ops,
                } = req;
                let parsed = (
                    RoomId::new(&room),
                    ClientId::new(&client),
                    op_id.as_deref().map(OpId::new).transpose(),
                );
                let (Ok(room), Ok(client), Ok(op_id)) = parsed else {
                    tracing::warn!(from = %from, "a forwarded list with bad ids");
                    continue;
                };
                let (reply, answer) = oneshot::channel();
                let list = ForwardedList {
                    client,
                    op_id,
                    base: Seq(base),
                    ops,
                };
                if inbox.send(Forwarded { room, list, reply }).is_err() {
                    return;
                }
                let log = log.clone();
                tokio::spawn(async move {
                    let answer = answer.await.unwrap_or_else(|_| {
                        Err(CommitFailure::Unknown("the owner dropped the list".into()))
                    });
                    let msg = Wire {
                        rid,
                        req: None,
                        ans: Some(WireAnswer::of(answer)),
                    };
                    let payload = serde_json::to_string(&msg).expect("an answer encodes");
                    let mut publish = redis::cmd("PUBLISH");
                    publish.arg(log.keys().gateway_inbox(&from)).arg(payload);
                    if let Err(e) = log.call_cmd::<i64>(&publish).await {
                        // The forwarder times out and forwards the list again.
                        tracing::warn!(error = %e, "publishing a forward's answer failed");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_cross_the_wire_unchanged() {
        let ok = Ok(CommitResult {
            seq: Seq(7),
            hlc: HlcText::parse("0000000001000-000002-gw").unwrap(),
            duplicate: true,
            dropped: vec![1],
        });
        let refused = Err(CommitFailure::Refused(RoomError::new(
            ErrorCode::Conflict,
            "base too old",
        )));
        let unknown = Err(CommitFailure::Unknown("later".into()));
        for a in [ok, refused, unknown] {
            let text = serde_json::to_string(&Wire {
                rid: 3,
                req: None,
                ans: Some(WireAnswer::of(a.clone())),
            })
            .unwrap();
            let msg: Wire = serde_json::from_str(&text).unwrap();
            let answer = msg.ans.expect("an answer");
            assert_eq!(msg.rid, 3);
            assert_eq!(format!("{:?}", answer.answer()), format!("{a:?}"), "{text}");
        }
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn a_request_keeps_its_ops_as_they_are() {
        let text = serde_json::to_string(&Wire {
            rid: 9,
            req: Some(Req {
                from: "gw-1".into(),
                room: "doc:a".into(),
                client: "c".into(),
                op_id: Some("o1".into()),
                base: 4,
                ops: RawValue::from_string(r#"[{"op":"add","path":["n"],"value":1}]"#.into())
                    .unwrap(),
            }),
            ans: None,
        })
        .unwrap();
        let msg: Wire = serde_json::from_str(&text).unwrap();
        let req = msg.req.expect("a request");
        assert_eq!((msg.rid, req.base), (9, 4));
        assert_eq!(req.ops.get(), r#"[{"op":"add","path":["n"],"value":1}]"#);
    }
}
