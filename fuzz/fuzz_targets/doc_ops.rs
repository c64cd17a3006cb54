//! Fuzzes doc op decoding, atomic apply and transformation (concord-core's `doc` module).
//!
//! Inputs come in two shapes, chosen by the first byte:
//!
//! - JSON (`[` or `{` first): the text is parsed as JSON. `[[…],[…]]` is two op lists `a` and
//!   `b`; any other array is one list `a`; `{"state":…,"a":[…],"b":[…]}` also names the state
//!   (else the fixed document [`doc`] is used). Each list goes through `decode_ops` (must not
//!   panic; what decodes must re-encode and decode to the same ops).
//! - Anything else: the bytes drive a generator (`arbitrary::Unstructured`) that picks one of a
//!   few small documents and builds two op lists against it, mostly from paths that exist
//!   (each op valid against the state the ops before it leave), sometimes from arbitrary paths
//!   and operands.
//!
//! Then, for both lists: `apply` must not panic; a failed list must leave the state untouched
//! (`check_inverse` also checks that the inverse of a list that applies restores the state)
//! and a result must have a stable canonical form. When both lists apply to the state,
//! `transform_pair` must satisfy TP1 (`check_tp1`: S·b·a' = S·a·b', and a', b' apply), and the
//! server's rebase (`transform_over_many` over `b`) must commit the same ops as `a'`. The one
//! excuse is the documented limit of `add` arithmetic (see `add_arithmetic`).

#![no_main]

use concord_core::doc::check::{check_canonical, check_inverse, check_tp1};
use concord_core::doc::{
    apply, apply_in_place, decode_ops, encode_ops, transform_over_many, transform_pair, Limits, Op,
    Path, PathSeg, TextEdit,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Number, Value};

/// The documents ops are applied to.
fn doc(which: u8) -> Value {
    match which % 4 {
        0 => json!({
            "list": [1, "two", {"t": "xé😀", "n": 1, "l": [0, 1]}, [2, 3]],
            "map": {"a": 1, "b": "s", "c": {"d": [true, null]}},
            "text": "héllo 😀 wörld",
            "num": 1.5
        }),
        1 => json!({}),
        2 => json!({"l": [[1, [2, [3]]], {"t": ""}], "t": "ab", "n": -7}),
        _ => json!([1, {"a": [1, 2, "x"]}, "str"]),
    }
}

const KEYS: [&str; 12] = [
    "list", "map", "text", "num", "a", "b", "c", "d", "t", "n", "l", "zz",
];

fuzz_target!(|data: &[u8]| {
    let (state, a, b) = match data.first() {
        Some(b'[' | b'{') => match from_json(data) {
            Some(x) => x,
            None => return,
        },
        _ => match generate(&mut Unstructured::new(data)) {
            Ok(x) => x,
            Err(_) => return,
        },
    };
    check(&state, &a, &b);
});

fn from_json(data: &[u8]) -> Option<(Value, Vec<Op>, Vec<Op>)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let (state, a, b) = match &v {
        Value::Array(items) if items.len() == 2 && items.iter().all(|i| i.is_array()) => {
            (doc(0), items[0].clone(), items[1].clone())
        }
        Value::Array(_) => (doc(0), v.clone(), json!([])),
        Value::Object(m) => (
            m.get("state").cloned().unwrap_or_else(|| doc(0)),
            m.get("a").cloned().unwrap_or(json!([])),
            m.get("b").cloned().unwrap_or(json!([])),
        ),
        _ => {
            let _ = decode_ops(&v, &Limits::default());
            return None;
        }
    };
    let a = decode(&a);
    let b = decode(&b);
    Some((state, a?, b?))
}

/// `decode_ops`, and the round trip of what it accepts.
fn decode(v: &Value) -> Option<Vec<Op>> {
    let ops = decode_ops(v, &Limits::default()).ok()?;
    let wire = encode_ops(&ops);
    let back = decode_ops(&wire, &Limits::default())
        .unwrap_or_else(|e| panic!("encoded ops do not decode: {e}: {wire}"));
    assert_eq!(
        back, ops,
        "ops changed in an encode/decode round trip: {wire}"
    );
    Some(ops)
}

fn check(state: &Value, a: &[Op], b: &[Op]) {
    let after_a = apply_checked(state, a);
    let after_b = apply_checked(state, b);
    if after_a.is_none() || after_b.is_none() {
        // Transforming lists that do not apply must not panic either.
        let _ = transform_pair(a, b);
        let _ = transform_over_many(a, &[b]);
        return;
    }
    if let Err(v) = check_tp1(state, a, b) {
        if !add_arithmetic(state, a, b, &v.0) {
            panic!("TP1 violated: {v}");
        }
        return;
    }
    let (a1, _) = transform_pair(a, b);
    let rebased = transform_over_many(a, &[b]);
    assert_eq!(
        rebased.ops,
        a1,
        "the server's rebase differs from the client's transform: a {} b {}",
        encode_ops(a),
        encode_ops(b)
    );
}

/// Whether a TP1 failure is the documented limit of `add` arithmetic (docs/protocol.md, "`add`
/// arithmetic"): concurrent adds that are each valid can together overflow the integer range or
/// reach a non-finite double (the later list is then refused with `invalid_op`), and double sums
/// commute only up to rounding (every replica applies committed ops in seq order). Anything
/// else — a divergence outside numbers, or an op failing for another reason — is a bug.
fn add_arithmetic(state: &Value, a: &[Op], b: &[Op], violation: &str) -> bool {
    let has_add = |ops: &[Op]| ops.iter().any(|op| matches!(op, Op::Add { .. }));
    if !has_add(a) || !has_add(b) {
        return false;
    }
    if violation.contains("integer overflow adding") || violation.contains("not a finite number") {
        return true;
    }
    if !violation.starts_with("diverged") {
        return false;
    }
    let (a1, b1) = transform_pair(a, b);
    let x = apply(state, b).and_then(|s| apply(&s, &a1));
    let y = apply(state, a).and_then(|s| apply(&s, &b1));
    match (x, y) {
        (Ok(x), Ok(y)) => differ_only_in_doubles(&x, &y),
        _ => false,
    }
}

/// Same structure and values, except numbers where at least one side is a double.
fn differ_only_in_doubles(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Number(m), Value::Number(n)) => m == n || m.is_f64() || n.is_f64(),
        (Value::Array(p), Value::Array(q)) => {
            p.len() == q.len() && p.iter().zip(q).all(|(v, w)| differ_only_in_doubles(v, w))
        }
        (Value::Object(p), Value::Object(q)) => {
            p.len() == q.len()
                && p.iter()
                    .all(|(k, v)| q.get(k).is_some_and(|w| differ_only_in_doubles(v, w)))
        }
        _ => x == y,
    }
}

/// Applies `ops` to `state`, checking atomicity, the inverse and the canonical form.
fn apply_checked(state: &Value, ops: &[Op]) -> Option<Value> {
    if let Err(v) = check_inverse(state, ops) {
        panic!("{v}");
    }
    let mut s = state.clone();
    match apply_in_place(&mut s, ops) {
        Ok(()) => {
            assert_eq!(Ok(&s), apply(state, ops).as_ref().map_err(|_| ()));
            if let Err(v) = check_canonical(&s) {
                panic!("{v}");
            }
            Some(s)
        }
        Err(_) => {
            assert_eq!(&s, state, "a failed list changed the state");
            None
        }
    }
}

fn generate(u: &mut Unstructured<'_>) -> ArbResult<(Value, Vec<Op>, Vec<Op>)> {
    let state = doc(u.arbitrary()?);
    let a = gen_list(u, &state)?;
    let b = gen_list(u, &state)?;
    Ok((state, a, b))
}

/// Up to 4 ops, each made against the state the ones before it leave (when they apply).
fn gen_list(u: &mut Unstructured<'_>, state: &Value) -> ArbResult<Vec<Op>> {
    let mut s = state.clone();
    let n = u.int_in_range(0..=4)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = gen_op(u, &s)?;
        let _ = apply_in_place(&mut s, std::slice::from_ref(&op));
        ops.push(op);
    }
    Ok(ops)
}

/// Every path in `v` with its value.
fn nodes(v: &Value) -> Vec<(Path, &Value)> {
    let mut out = Vec::new();
    let mut stack: Vec<(Path, &Value)> = vec![(Vec::new(), v)];
    while let Some((path, v)) = stack.pop() {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(PathSeg::Index(i));
                    stack.push((p, item));
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let mut p = path.clone();
                    p.push(PathSeg::Key(k.clone()));
                    stack.push((p, item));
                }
            }
            _ => {}
        }
        out.push((path, v));
    }
    out
}

fn gen_index(u: &mut Unstructured<'_>, len: usize) -> ArbResult<usize> {
    Ok(match u.int_in_range(0..=9)? {
        0 => usize::MAX,
        1 => len + u.int_in_range(0..=2)?,
        _ => u.int_in_range(0..=len)?,
    })
}

fn gen_value(u: &mut Unstructured<'_>) -> ArbResult<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => json!(u.int_in_range(-3i64..=3)?),
        1 => json!("v"),
        2 => json!({"t": "new", "n": 1, "l": []}),
        3 => json!([u.int_in_range(0u8..=3)?]),
        4 => Value::Null,
        5 => json!(0.5),
        6 => json!("😀é"),
        _ => json!({}),
    })
}

fn gen_number(u: &mut Unstructured<'_>) -> ArbResult<Number> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Number::from(i64::MAX),
        1 => Number::from(u64::MAX),
        2 => Number::from_f64(1.5e308).expect("finite"),
        3 => Number::from_f64(0.25).expect("finite"),
        4 => Number::from(i64::MIN),
        _ => Number::from(u.int_in_range(-3i64..=3)?),
    })
}

fn gen_text(u: &mut Unstructured<'_>) -> ArbResult<String> {
    Ok(["x", "YZ", "😀", "é", "", "a\u{0}b"][u.int_in_range(0..=5)?].to_owned())
}

/// An arbitrary path: mostly keys and indexes that occur in the documents.
fn gen_path(u: &mut Unstructured<'_>) -> ArbResult<Path> {
    let n = u.int_in_range(0..=3)?;
    let mut p = Vec::with_capacity(n);
    for _ in 0..n {
        p.push(if u.arbitrary()? {
            PathSeg::Key(KEYS[u.int_in_range(0..=KEYS.len() - 1)?].into())
        } else {
            PathSeg::Index(gen_index(u, 3)?)
        });
    }
    Ok(p)
}

fn gen_op(u: &mut Unstructured<'_>, s: &Value) -> ArbResult<Op> {
    let all = nodes(s);
    let existing = u.int_in_range(0..=3)? != 0;
    let pick = |u: &mut Unstructured<'_>,
                filter: &dyn Fn(&Value) -> bool|
     -> ArbResult<Option<(Path, usize)>> {
        let found: Vec<&(Path, &Value)> = all.iter().filter(|(_, v)| filter(v)).collect();
        if found.is_empty() {
            return Ok(None);
        }
        let (p, v) = found[u.int_in_range(0..=found.len() - 1)?];
        let len = match v {
            Value::Array(a) => a.len(),
            Value::String(t) => t.chars().count(),
            _ => 0,
        };
        Ok(Some((p.clone(), len)))
    };
    let kind = u.int_in_range(0..=6)?;
    // A path to a node that exists (of the kind the op needs), or an arbitrary one.
    let target =
        |u: &mut Unstructured<'_>, filter: &dyn Fn(&Value) -> bool| -> ArbResult<(Path, usize)> {
            if existing {
                if let Some(found) = pick(u, filter)? {
                    return Ok(found);
                }
            }
            Ok((gen_path(u)?, u.int_in_range(0..=4)?))
        };
    Ok(match kind {
        0 => {
            let (mut path, _) = target(u, &|_| true)?;
            if existing && u.arbitrary()? {
                // A new key in a map.
                if let Some((map, _)) = pick(u, &|v| v.is_object())? {
                    path = map;
                    path.push(PathSeg::Key(
                        KEYS[u.int_in_range(0..=KEYS.len() - 1)?].into(),
                    ));
                }
            }
            Op::Set {
                path,
                value: gen_value(u)?,
            }
        }
        1 => {
            let (path, _) = target(u, &|_| true)?;
            if path.is_empty() {
                return Ok(Op::Del {
                    path: vec![PathSeg::Key("a".into())],
                });
            }
            Op::Del { path }
        }
        2 => {
            let (mut path, len) = target(u, &|v| v.is_array())?;
            path.push(PathSeg::Index(gen_index(u, len)?));
            Op::Ins {
                path,
                value: gen_value(u)?,
            }
        }
        3 => {
            let (mut path, len) = target(u, &|v| v.as_array().is_some_and(|a| !a.is_empty()))?;
            path.push(PathSeg::Index(gen_index(u, len.saturating_sub(1))?));
            Op::Move {
                path,
                to: gen_index(u, len.saturating_sub(1))?,
            }
        }
        4 => {
            let (path, len) = target(u, &|v| v.is_string())?;
            Op::Text {
                path,
                pos: gen_index(u, len)?,
                edit: TextEdit::Insert(gen_text(u)?),
            }
        }
        5 => {
            let (path, len) = target(u, &|v| v.is_string())?;
            let pos = gen_index(u, len)?;
            Op::Text {
                path,
                pos,
                edit: TextEdit::Delete(gen_index(u, len.saturating_sub(pos))?),
            }
        }
        _ => {
            let (path, _) = target(u, &|v| v.is_number())?;
            Op::Add {
                path,
                value: gen_number(u)?,
            }
        }
    })
}
