//! Property: decoding, applying and transforming arbitrary (mostly invalid) ops never panics,
//! a failed list leaves the state untouched, and the canonical form is stable.

use super::gen::{config, doc};
use crate::doc::check::{check_canonical, check_inverse};
use crate::doc::{apply, decode_ops, transform_pair, Limits, Op, PathSeg, TextEdit};
use proptest::prelude::*;
use serde_json::{json, Number, Value};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-c\\\\\"\u{0}-\u{1f}é😀\u{e000}]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c😀\u{e000}]{0,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn index() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..6, 1 => Just(usize::MAX), 1 => Just(usize::MAX - 1)]
}

fn seg() -> impl Strategy<Value = PathSeg> {
    prop_oneof![
        prop::sample::select(vec!["list", "map", "text", "num", "a", "t", "n", "l", "zz"])
            .prop_map(PathSeg::from),
        index().prop_map(PathSeg::Index),
    ]
}

/// Ops with arbitrary paths and operands: most are invalid against any given state.
fn any_op() -> impl Strategy<Value = Op> {
    let path = || prop::collection::vec(seg(), 0..4);
    let small = || {
        prop_oneof![
            Just(json!(1)),
            Just(json!("s")),
            Just(json!({"t": "x"})),
            Just(json!([]))
        ]
    };
    let number = prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        Just(Number::from_f64(1.5e308).expect("finite")),
        Just(Number::from(1)),
    ];
    prop_oneof![
        (path(), small()).prop_map(|(path, value)| Op::Set { path, value }),
        path().prop_map(|path| Op::Del { path }),
        (path(), small()).prop_map(|(path, value)| Op::Ins { path, value }),
        (path(), index()).prop_map(|(path, to)| Op::Move { path, to }),
        (path(), index(), "[xé😀]{0,3}").prop_map(|(path, pos, s)| Op::Text {
            path,
            pos,
            edit: TextEdit::Insert(s)
        }),
        (path(), index(), index()).prop_map(|(path, pos, n)| Op::Text {
            path,
            pos,
            edit: TextEdit::Delete(n)
        }),
        (path(), number).prop_map(|(path, value)| Op::Add { path, value }),
    ]
}

/// Wire-shaped op objects with plausible and implausible fields.
fn any_wire_op() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["set", "del", "ins", "move", "text", "add", "frob"]),
        prop_oneof![any_json(), Just(json!(["list", 0])), Just(json!(["text"]))],
        prop::option::of(any_json()),
        prop::option::of(any_json()),
        prop::option::of(any_json()),
    )
        .prop_map(|(op, path, a, b, c)| {
            let mut m = serde_json::Map::new();
            m.insert("op".into(), json!(op));
            m.insert("path".into(), path);
            for (k, v) in [
                ("value", a),
                ("pos", b),
                ("insert", c.clone()),
                ("delete", c),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m.insert("to".into(), json!(1));
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(config(200, 2_000))]

    #[test]
    fn decoding_anything_never_panics(v in any_json(), ops in prop::collection::vec(any_wire_op(), 0..4)) {
        let _ = decode_ops(&v, &Limits::default());
        let list = Value::Array(ops);
        if let Ok(decoded) = decode_ops(&list, &Limits::default()) {
            let back = decode_ops(&crate::doc::encode_ops(&decoded), &Limits::default());
            prop_assert_eq!(back.as_ref(), Ok(&decoded));
        }
    }

    #[test]
    fn apply_and_transform_never_panic(
        s in doc(),
        a in prop::collection::vec(any_op(), 0..4),
        b in prop::collection::vec(any_op(), 0..4),
    ) {
        check_inverse(&s, &a).map_err(|v| TestCaseError::fail(v.0))?;
        let (a1, b1) = transform_pair(&a, &b);
        if let Ok(sb) = apply(&s, &b) {
            let _ = apply(&sb, &a1);
        }
        if let Ok(sa) = apply(&s, &a) {
            let _ = apply(&sa, &b1);
        }
    }

    #[test]
    fn canonical_form_is_stable(v in any_json()) {
        check_canonical(&v).map_err(|e| TestCaseError::fail(e.0))?;
    }
}
