//! Shared test vectors for other implementations of the doc model (the TypeScript client reads
//! `clients/ts/test/vectors.json`): op pairs with their `transform_pair` results, op lists
//! applied to states with the resulting states and hashes (or the failing op), and canonical
//! JSON with hashes, text with astral code points included.
//!
//! `ts_vectors_are_current` fails when the checked-in file differs from what this module
//! generates; `CONCORD_WRITE_VECTORS=1 cargo test -p concord-core vectors` rewrites it.

use super::gen::{op_list, Rng};
use crate::doc::{apply, canonical_json, encode_ops, state_hash, transform_pair, Op};
use serde_json::{json, Value};

/// Where the vectors live, relative to this crate.
const FILE: &str = "../../clients/ts/test/vectors.json";

/// Seed of the generated cases: changing it rewrites the file.
const SEED: u64 = 0x00c0_2c02_d7e5_7001;

fn text(rng: &mut Rng) -> String {
    let n = rng.below(6);
    (0..n)
        .map(|_| ['a', 'b', 'é', '😀'][rng.below(4)])
        .collect()
}

fn number(rng: &mut Rng) -> Value {
    if rng.below(4) == 0 {
        json!((rng.below(20) as f64 - 10.0) / 2.0 + 0.25)
    } else {
        json!(rng.below(10) as i64 - 5)
    }
}

fn element(rng: &mut Rng) -> Value {
    match rng.below(3) {
        0 => json!(rng.below(10) as i64 - 5),
        1 => json!(text(rng)),
        _ => {
            let l: Vec<u64> = (0..rng.below(3)).map(|_| rng.next() % 9).collect();
            json!({"t": text(rng), "n": number(rng), "l": l})
        }
    }
}

/// A document like the property tests' (a list, a map, a string, a number).
fn doc(rng: &mut Rng) -> Value {
    let list: Vec<Value> = (0..1 + rng.below(4)).map(|_| element(rng)).collect();
    let mut map = serde_json::Map::new();
    for key in ["a", "b", "c"] {
        if rng.below(2) == 0 {
            map.insert(key.into(), element(rng));
        }
    }
    json!({"list": list, "map": map, "text": text(rng), "num": number(rng)})
}

fn hash_case(value: Value) -> Value {
    json!({"value": value, "canonical": canonical_json(&value), "hash": state_hash(&value)})
}

fn hash_cases() -> Vec<Value> {
    let mut out: Vec<Value> = [
        json!({}),
        json!(null),
        json!({"title":"Spec","body":"hello Ada","tags":["a","b"],"likes":0}),
        json!({"b": 1, "a": [true, false, null], "c": {"z": "", "y": -0.0}}),
        json!({"\u{e000}": 1, "😀": 2, "z": 3, "é": 4, "A": 5, "": 6}),
        json!("a😀b\u{1f}\u{7f}\u{2028}\"\\\n\t\r\u{8}\u{c}"),
        json!([
            0.1,
            0.5,
            1.5,
            123_456_789.125,
            1e21,
            1e-7,
            1e-6,
            5e-324,
            1.797_693_134_862_315_7e308
        ]),
        json!([
            -1,
            9_007_199_254_740_991_i64,
            -9_007_199_254_740_991_i64,
            100,
            4.0,
            40e-1
        ]),
        json!({"nested": {"list": [{"t": "😀😀", "n": 2.25}], "deep": [[[]]]}}),
    ]
    .into_iter()
    .map(hash_case)
    .collect();
    let mut rng = Rng::new(SEED ^ 1);
    out.extend((0..8).map(|_| hash_case(doc(&mut rng))));
    out
}

fn apply_cases(rng: &mut Rng) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..60 {
        let state = doc(rng);
        let ops = op_list(&state, 1 + rng.below(4), rng);
        let result = apply(&state, &ops).expect("generated ops apply");
        out.push(json!({
            "state": state,
            "ops": encode_ops(&ops),
            "result": result,
            "hash": state_hash(&result),
        }));
    }
    let failing = [
        (
            json!({"s": "a😀b"}),
            json!([{"op":"text","path":["s"],"pos":4,"insert":"x"}]),
        ),
        (
            json!({"s": "a😀b"}),
            json!([{"op":"text","path":["s"],"pos":1,"delete":3}]),
        ),
        (
            json!({"l": [1, 2]}),
            json!([{"op":"ins","path":["l",0],"value":0},{"op":"del","path":["l",3]}]),
        ),
        (
            json!({"l": [1, 2]}),
            json!([{"op":"move","path":["l",0],"to":2}]),
        ),
        (
            json!({"m": {}}),
            json!([{"op":"set","path":["m","k"],"value":1},{"op":"del","path":["m","x"]}]),
        ),
        (
            json!({"n": "1"}),
            json!([{"op":"add","path":["n"],"value":1}]),
        ),
        (
            json!({"n": 1}),
            json!([{"op":"set","path":["n","k"],"value":1}]),
        ),
        (
            json!({"l": [1]}),
            json!([{"op":"set","path":["l","k"],"value":1}]),
        ),
    ];
    for (state, ops) in failing {
        let decoded =
            crate::doc::decode_ops(&ops, &crate::doc::Limits::default()).expect("decodes");
        let err = apply(&state, &decoded).expect_err("the case fails");
        out.push(
            json!({"state": state, "ops": ops, "error": err.to_string(), "error_index": err.index}),
        );
    }
    out
}

fn transform_cases(rng: &mut Rng) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..150 {
        let state = doc(rng);
        let a: Vec<Op> = op_list(&state, 1 + rng.below(3), rng);
        let b: Vec<Op> = op_list(&state, 1 + rng.below(3), rng);
        let (a1, b1) = transform_pair(&a, &b);
        let result = apply(&apply(&state, &b).expect("b applies"), &a1).expect("a' applies");
        out.push(json!({
            "state": state,
            "a": encode_ops(&a),
            "b": encode_ops(&b),
            "a1": encode_ops(&a1),
            "b1": encode_ops(&b1),
            "result": result,
            "hash": state_hash(&result),
        }));
    }
    out
}

/// The vectors file's text.
pub fn generate() -> String {
    let mut rng = Rng::new(SEED);
    let apply = apply_cases(&mut rng);
    let transform = transform_cases(&mut rng);
    let about = "Generated by concord-core (src/doc/tests/vectors.rs); do not edit. transform: (a1, b1) = transform_pair(a, b), a later than b; result = state·b·a1.";
    let section = |name: &str, cases: &[Value]| {
        let lines: Vec<String> = cases.iter().map(Value::to_string).collect();
        format!("  {name:?}: [\n    {}\n  ]", lines.join(",\n    "))
    };
    let text = format!(
        "{{\n  \"about\": {},\n{},\n{},\n{}\n}}\n",
        Value::from(about),
        section("hash", &hash_cases()),
        section("apply", &apply),
        section("transform", &transform),
    );
    text
}

#[test]
fn ts_vectors_are_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let fresh = generate();
    if std::env::var("CONCORD_WRITE_VECTORS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write the vectors file");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is not what concord-core generates: run `CONCORD_WRITE_VECTORS=1 cargo test -p concord-core vectors` and commit it",
        path.display()
    );
}
