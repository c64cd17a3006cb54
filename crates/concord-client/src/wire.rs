//! The client → server frames this client sends (`hello`, `join`, `leave`, `publish`, `op`,
//! `drift`), as `concord_protocol::ClientMsg`s.

use concord_core::doc::Op;
use concord_protocol::inbound::{Drift, Hello, Join, Leave, Publish};
use concord_protocol::{inbound, ClientMsg, Json, Limits, Since};
use serde_json::Value;

use crate::error::ClientError;

pub(crate) fn hello(client_id: &str, token: Option<&str>) -> String {
    ClientMsg::Hello(Hello {
        client_id: client_id.into(),
        token: token.map(Into::into),
    })
    .encode()
}

pub(crate) fn join(
    room: &str,
    kind: Option<&str>,
    since: Option<&Since>,
    history: Option<u64>,
) -> String {
    ClientMsg::Join(Join {
        room: room.into(),
        kind: kind.map(Into::into),
        since: since.cloned(),
        history,
    })
    .encode()
}

pub(crate) fn leave(room: &str) -> String {
    ClientMsg::Leave(Leave { room: room.into() }).encode()
}

/// A `publish` frame, refused locally if it could never be accepted as a frame (the server
/// would close the connection with 1009 and every resend would do the same).
pub(crate) fn publish(room: &str, id: &str, data: &Value) -> Result<String, ClientError> {
    let data = Json::encode(data).map_err(|e| ClientError::Encode(e.to_string()))?;
    let frame = ClientMsg::Publish(Publish {
        room: room.into(),
        id: id.into(),
        data: &data,
        resend: false,
    })
    .encode();
    let limit = Limits::default().max_frame_bytes;
    if frame.len() > limit {
        return Err(ClientError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    Ok(frame)
}

/// An `op` frame: a doc op list made against the state at `base`. (Its size was checked when
/// the edits were made.)
pub(crate) fn op(room: &str, id: &str, base: u64, ops: &[Op]) -> String {
    // Ops are plain data: they always serialize.
    let ops = Json::encode(ops).expect("doc ops always serialize");
    ClientMsg::Op(inbound::Op {
        room: room.into(),
        id: id.into(),
        base,
        ops: &ops,
    })
    .encode()
}

/// A `drift` frame: our state hash at `seq` differs from the server's.
pub(crate) fn drift(room: &str, seq: u64, hash: &str) -> String {
    ClientMsg::Drift(Drift {
        room: room.into(),
        seq,
        hash: hash.into(),
    })
    .encode()
}

/// A `publish` frame sent again, flagged `"resend": true` (a distributed server then also looks
/// its id up beyond its idempotency window). Any other frame is returned as it is.
pub(crate) fn as_resend(frame: &str) -> String {
    match concord_protocol::decode_client(frame) {
        Ok(ClientMsg::Publish(mut p)) => {
            p.resend = true;
            ClientMsg::Publish(p).encode()
        }
        _ => frame.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::decode_client;
    use serde_json::json;

    #[test]
    fn frames_decode_with_the_server_codec() {
        let h = hello("c-1", Some("tok"));
        assert_eq!(h, r#"{"type":"hello","client_id":"c-1","token":"tok"}"#);
        assert!(
            matches!(decode_client(&h).unwrap(), ClientMsg::Hello(Hello { token: Some(t), .. }) if t == "tok")
        );
        assert_eq!(hello("c-1", None), r#"{"type":"hello","client_id":"c-1"}"#);

        let since = Since {
            epoch: "e1".into(),
            seq: 41,
        };
        let j = join("chat:lobby", Some("stream"), Some(&since), None);
        assert_eq!(
            j,
            r#"{"type":"join","room":"chat:lobby","kind":"stream","since":{"epoch":"e1","seq":41}}"#
        );
        match decode_client(&j).unwrap() {
            ClientMsg::Join(Join {
                room,
                since,
                history,
                ..
            }) => {
                assert_eq!(room, "chat:lobby");
                assert_eq!(since.unwrap().seq, 41);
                assert_eq!(history, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            join("r", None, None, Some(5)),
            r#"{"type":"join","room":"r","history":5}"#
        );
        assert_eq!(leave("r"), r#"{"type":"leave","room":"r"}"#);

        let p = publish("r", "p-1", &json!({"text":"hi"})).unwrap();
        match decode_client(&p).unwrap() {
            ClientMsg::Publish(Publish { id, data, .. }) => {
                assert_eq!(id, "p-1");
                assert_eq!(data.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(!p.contains("resend"), "a first send is not flagged: {p}");
        let again = as_resend(&p);
        match decode_client(&again).unwrap() {
            ClientMsg::Publish(Publish {
                id, data, resend, ..
            }) => {
                assert_eq!(
                    (id.as_ref(), data.get(), resend),
                    ("p-1", r#"{"text":"hi"}"#, true)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn doc_frames_decode_with_the_server_codec() {
        let ops: Vec<Op> = serde_json::from_value(json!([
            {"op":"text","path":["body"],"pos":2,"insert":"hé"},
            {"op":"add","path":["n"],"value":1}
        ]))
        .unwrap();
        let f = op("doc:1", "d-1", 7, &ops);
        assert_eq!(
            f,
            r#"{"type":"op","room":"doc:1","id":"d-1","base":7,"ops":[{"op":"text","path":["body"],"pos":2,"insert":"hé"},{"op":"add","path":["n"],"value":1}]}"#
        );
        match decode_client(&f).unwrap() {
            ClientMsg::Op(inbound::Op {
                room,
                id,
                base,
                ops: raw,
            }) => {
                assert_eq!((&*room, &*id, base), ("doc:1", "d-1", 7));
                let back: Vec<Op> = serde_json::from_str(raw.get()).unwrap();
                assert_eq!(back, ops);
            }
            other => panic!("{other:?}"),
        }
        let d = drift("doc:1", 9, "abc");
        assert_eq!(d, r#"{"type":"drift","room":"doc:1","seq":9,"hash":"abc"}"#);
        assert!(matches!(
            decode_client(&d).unwrap(),
            ClientMsg::Drift(Drift { seq: 9, hash, .. }) if hash == "abc"
        ));
    }

    #[test]
    fn oversized_publish_is_refused_locally() {
        let big = Value::String("x".repeat(Limits::default().max_frame_bytes));
        let err = publish("r", "p-1", &big).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    }
}
