//! Encoding of client → server frames (`hello`, `join`, `leave`, `publish`, `op`, `drift`).

use concord_core::doc::Op;
use concord_protocol::{Limits, Since};
use serde::Serialize;
use serde_json::Value;

use crate::error::ClientError;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Hello {
        client_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    Join {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<&'a Since>,
        #[serde(skip_serializing_if = "Option::is_none")]
        history: Option<u64>,
    },
    Leave {
        room: &'a str,
    },
    Publish {
        room: &'a str,
        id: &'a str,
        data: &'a Value,
    },
    Op {
        room: &'a str,
        id: &'a str,
        base: u64,
        ops: &'a [Op],
    },
    Drift {
        room: &'a str,
        seq: u64,
        hash: &'a str,
    },
}

fn encode(msg: &Out<'_>) -> String {
    // Only strings, integers and already-valid JSON values: cannot fail.
    serde_json::to_string(msg).expect("client frames always serialize")
}

pub(crate) fn hello(client_id: &str, token: Option<&str>) -> String {
    encode(&Out::Hello { client_id, token })
}

pub(crate) fn join(
    room: &str,
    kind: Option<&str>,
    since: Option<&Since>,
    history: Option<u64>,
) -> String {
    encode(&Out::Join {
        room,
        kind,
        since,
        history,
    })
}

pub(crate) fn leave(room: &str) -> String {
    encode(&Out::Leave { room })
}

/// A `publish` frame, refused locally if it could never be accepted as a frame (the server
/// would close the connection with 1009 and every resend would do the same).
pub(crate) fn publish(room: &str, id: &str, data: &Value) -> Result<String, ClientError> {
    let frame = serde_json::to_string(&Out::Publish { room, id, data })
        .map_err(|e| ClientError::Encode(e.to_string()))?;
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
    encode(&Out::Op {
        room,
        id,
        base,
        ops,
    })
}

/// A `drift` frame: our state hash at `seq` differs from the server's.
pub(crate) fn drift(room: &str, seq: u64, hash: &str) -> String {
    encode(&Out::Drift { room, seq, hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::{decode_client, ClientMsg};
    use serde_json::json;

    #[test]
    fn frames_decode_with_the_server_codec() {
        let h = hello("c-1", Some("tok"));
        assert_eq!(h, r#"{"type":"hello","client_id":"c-1","token":"tok"}"#);
        assert!(
            matches!(decode_client(&h).unwrap(), ClientMsg::Hello { token: Some(t), .. } if t == "tok")
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
            ClientMsg::Join {
                room,
                since,
                history,
                ..
            } => {
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
            ClientMsg::Publish { id, data, .. } => {
                assert_eq!(id, "p-1");
                assert_eq!(data.get(), r#"{"text":"hi"}"#);
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
            ClientMsg::Op {
                room,
                id,
                base,
                ops: raw,
            } => {
                assert_eq!((room.as_str(), id.as_str(), base), ("doc:1", "d-1", 7));
                let back: Vec<Op> = serde_json::from_str(raw.get()).unwrap();
                assert_eq!(back, ops);
            }
            other => panic!("{other:?}"),
        }
        let d = drift("doc:1", 9, "abc");
        assert_eq!(d, r#"{"type":"drift","room":"doc:1","seq":9,"hash":"abc"}"#);
        assert!(matches!(
            decode_client(&d).unwrap(),
            ClientMsg::Drift { seq: 9, hash, .. } if hash == "abc"
        ));
    }

    #[test]
    fn oversized_publish_is_refused_locally() {
        let big = Value::String("x".repeat(Limits::default().max_frame_bytes));
        let err = publish("r", "p-1", &big).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    }
}
