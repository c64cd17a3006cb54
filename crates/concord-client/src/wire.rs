//! Encoding of client → server frames (`hello`, `join`, `leave`, `publish`).

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
    fn oversized_publish_is_refused_locally() {
        let big = Value::String("x".repeat(Limits::default().max_frame_bytes));
        let err = publish("r", "p-1", &big).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    }
}
