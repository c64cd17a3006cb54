//! Inputs found by the `protocol_decode` fuzz target (fuzz/README.md), kept as regression tests.

use concord_protocol::{decode_client, decode_server, outbound, ClientMsg, ServerMsg};

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
    assert!(matches!(decode_client(text), Ok(ClientMsg::Publish { .. })));
    let _ = decode_server(text);
    for data in unreadable_data() {
        let frame = format!(r#"{{"type":"publish","room":"r","id":"m","data":{data}}}"#);
        let _ = decode_client(&frame);
        let _ = decode_server(&frame);
    }
}

/// Known bug: `decode_client` checks `data` only as JSON text (`RawValue`), so it accepts values
/// that no serde_json-based client can read (numbers out of f64 range, lone surrogate escapes,
/// nesting beyond serde_json's recursion limit). The server relays `data` verbatim, so every
/// member then fails to decode that `event`, and every later `joined` that replays it.
/// Either `decode_client` refuses such data (`bad_request`), or `decode_server` must read it.
#[test]
#[ignore = "known bug: accepted data that decode_server cannot read (see the doc comment)"]
fn accepted_data_is_readable_by_clients() {
    let text = std::str::from_utf8(DATA_OUT_OF_RANGE).unwrap();
    let mut frames = vec![text.to_string()];
    for data in unreadable_data() {
        frames.push(format!(
            r#"{{"type":"publish","room":"r","id":"m","data":{data}}}"#
        ));
    }
    for frame in frames {
        let Ok(ClientMsg::Publish { room, id, data }) = decode_client(&frame) else {
            continue; // refused: fine
        };
        let ev = outbound::event(&room, 1, "h", "c", Some(&id), &data);
        assert!(
            matches!(decode_server(&ev), Ok(ServerMsg::Event(_))),
            "{frame} was accepted, but its event {ev} cannot be decoded"
        );
    }
}
