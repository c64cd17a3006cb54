//! Inputs found by the `protocol_decode` fuzz target (fuzz/README.md), kept as regression tests.

use concord_protocol::outbound::Event;
use concord_protocol::{decode_client, decode_server, ClientMsg, ServerMsg};

/// fuzz/artifacts/protocol_decode/crash-2b683ce…, minimized (57 bytes).
const DATA_OUT_OF_RANGE: &[u8] = br#"{"type":"publish","room":"","id":"m","data":{"":[1e401]}}"#;

/// `data` values that are valid JSON *text* but that serde_json cannot read into a value.
fn unreadable_data() -> Vec<String> {
    vec![
        "1e400".to_string(),
        "-1e400".to_string(),
        r#""\ud800""#.to_string(),
        format!("{}1{}", "[".repeat(127), "]".repeat(127)),
    ]
}

#[test]
fn fuzz_inputs_decode_without_panicking() {
    let text = std::str::from_utf8(DATA_OUT_OF_RANGE).unwrap();
    assert!(decode_client(text).is_err(), "unreadable data is refused");
    let _ = decode_server(text);
    for data in unreadable_data() {
        let frame = format!(r#"{{"type":"publish","room":"r","id":"m","data":{data}}}"#);
        let _ = decode_client(&frame);
        let _ = decode_server(&frame);
    }
}

/// `decode_client` once checked `data` only as JSON text, so it accepted values that no
/// serde_json-based client can read (numbers out of f64 range, lone surrogate escapes, nesting
/// beyond the recursion limit), which the server then relayed verbatim. Accepted data must be
/// readable inside every frame that carries it.
#[test]
fn accepted_data_is_readable_by_clients() {
    let text = std::str::from_utf8(DATA_OUT_OF_RANGE).unwrap();
    let mut frames = vec![text.to_string()];
    for data in unreadable_data() {
        frames.push(format!(
            r#"{{"type":"publish","room":"r","id":"m","data":{data}}}"#
        ));
    }
    for frame in frames {
        let Ok(ClientMsg::Publish(p)) = decode_client(&frame) else {
            continue; // refused: fine
        };
        let ev = ServerMsg::Event(Event {
            room: p.room,
            seq: 1,
            hlc: "h".into(),
            from: "c".into(),
            id: Some(p.id),
            data: Some(p.data.into()),
            ops: None,
            hash: None,
        })
        .encode();
        assert!(
            matches!(decode_server(&ev), Ok(ServerMsg::Event(_))),
            "{frame} was accepted, but its event {ev} cannot be decoded"
        );
    }
}
