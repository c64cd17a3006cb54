//! Generators for doc tests: small random documents and random valid ops of a chosen kind.

use crate::doc::{apply, Op, OpKind, Path, PathSeg, TextEdit};
use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};

/// Number of cases: `PROPTEST_CASES` if set, else `heavy` with `CONCORD_HEAVY=1`, else `fast`
/// (the default of `scripts/test` and CI).
pub fn cases(fast: u32, heavy: u32) -> u32 {
    let heavy_on = std::env::var("CONCORD_HEAVY").is_ok_and(|v| v == "1");
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if heavy_on { heavy } else { fast })
}

pub fn config(fast: u32, heavy: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(fast, heavy),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn small_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '😀']), 0..6)
        .prop_map(|c| c.into_iter().collect())
}

/// A number that adds exactly: a small integer or a small multiple of 0.5.
fn small_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-5i64..5).prop_map(Value::from),
        1 => (-10i64..10).prop_map(|h| json!(h as f64 / 2.0 + 0.25)),
    ]
}

fn element() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::from),
        small_text().prop_map(Value::from),
        (
            small_text(),
            small_number(),
            prop::collection::vec(0i64..9, 0..3)
        )
            .prop_map(|(t, n, l)| json!({"t": t, "n": n, "l": l})),
    ]
}

/// A document with a list (of numbers, strings and records), a map, a string and a number.
pub fn doc() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(element(), 1..5),
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), element(), 0..3),
        small_text(),
        small_number(),
    )
        .prop_map(|(list, map, text, num)| {
            let map: Map<String, Value> = map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            json!({"list": list, "map": map, "text": text, "num": num})
        })
}

/// A tiny deterministic RNG (splitmix64) driven by a proptest-chosen seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
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

fn value(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!(rng.below(100)),
        1 => json!("v"),
        2 => json!({"t": "new", "n": 1, "l": []}),
        _ => json!([rng.below(3)]),
    }
}

fn with(mut path: Path, seg: PathSeg) -> Path {
    path.push(seg);
    path
}

/// A random op of `kind` valid against `state`, if `state` has a place for one.
pub fn op_of_kind(state: &Value, kind: OpKind, rng: &mut Rng) -> Option<Op> {
    let all = nodes(state);
    let lists: Vec<(&Path, usize)> = all
        .iter()
        .filter_map(|(p, v)| v.as_array().map(|a| (p, a.len())))
        .collect();
    let strings: Vec<(&Path, usize)> = all
        .iter()
        .filter_map(|(p, v)| v.as_str().map(|s| (p, s.chars().count())))
        .collect();
    let children: Vec<&Path> = all
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty())
        .collect();
    Some(match kind {
        OpKind::Set => {
            let roll = rng.below(10);
            let path = if roll == 0 {
                Vec::new()
            } else if roll < 4 {
                let maps: Vec<&Path> = all
                    .iter()
                    .filter(|(_, v)| v.is_object())
                    .map(|(p, _)| p)
                    .collect();
                let key = ["a", "b", "c", "t", "new"][rng.below(5)];
                with((*rng.pick(&maps)?).clone(), PathSeg::Key(key.into()))
            } else {
                (*rng.pick(&children)?).clone()
            };
            let value = if path.is_empty() {
                json!({"list": [1, {"t": "r", "n": 0, "l": []}], "text": "r", "num": 0})
            } else {
                value(rng)
            };
            Op::Set { path, value }
        }
        OpKind::Del => Op::Del {
            path: (*rng.pick(&children)?).clone(),
        },
        OpKind::Ins => {
            let (path, len) = rng.pick(&lists)?;
            let i = rng.below(len + 1);
            Op::Ins {
                path: with((*path).clone(), PathSeg::Index(i)),
                value: value(rng),
            }
        }
        OpKind::Move => {
            let non_empty: Vec<&(&Path, usize)> = lists.iter().filter(|(_, n)| *n > 0).collect();
            let (path, len) = rng.pick(&non_empty)?;
            let (from, to) = (rng.below(*len), rng.below(*len));
            Op::Move {
                path: with((*path).clone(), PathSeg::Index(from)),
                to,
            }
        }
        OpKind::TextInsert => {
            let (path, len) = rng.pick(&strings)?;
            let text = ["X", "YZ", "😀"][rng.below(3)];
            Op::Text {
                path: (*path).clone(),
                pos: rng.below(len + 1),
                edit: TextEdit::Insert(text.into()),
            }
        }
        OpKind::TextDelete => {
            let (path, len) = rng.pick(&strings)?;
            let pos = rng.below(len + 1);
            let n = rng.below(len - pos + 1);
            Op::Text {
                path: (*path).clone(),
                pos,
                edit: TextEdit::Delete(n),
            }
        }
        OpKind::Add => {
            let numbers: Vec<&Path> = all
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(p, _)| p)
                .collect();
            let path = (*rng.pick(&numbers)?).clone();
            let value = if rng.below(4) == 0 {
                Number::from_f64(0.5).expect("finite")
            } else {
                Number::from(rng.below(7) as i64 - 3)
            };
            Op::Add { path, value }
        }
    })
}

/// A random op of a random kind valid against `state`.
pub fn any_op(state: &Value, rng: &mut Rng) -> Op {
    loop {
        let kind = OpKind::ALL[rng.below(OpKind::ALL.len())];
        if let Some(op) = op_of_kind(state, kind, rng) {
            return op;
        }
    }
}

/// A list of `n` ops, each valid against the state the ones before it leave.
pub fn op_list(state: &Value, n: usize, rng: &mut Rng) -> Vec<Op> {
    let mut s = state.clone();
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = any_op(&s, rng);
        s = apply(&s, std::slice::from_ref(&op)).expect("generated op applies");
        ops.push(op);
    }
    ops
}
