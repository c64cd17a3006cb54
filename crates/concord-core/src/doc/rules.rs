//! Transforming one op over one concurrent op: which paths move, which ops lose.
//!
//! `transform_op(a, b, a_later)` rewrites `a` (made against the same state as `b`) so that it
//! applies after `b`. In order:
//!
//! 1. `b` is a `set`/`del` of a proper ancestor of `a`'s target → `a` is dropped (an edit inside
//!    something concurrently deleted or replaced).
//! 2. `b` is a list op (`ins`, `del` of a list element, `move`) on list `L` and `a`'s path goes
//!    into `L`: an `ins`/`move` of `a` on `L` itself is merged by [`list_rules`]; any other `a`
//!    follows the element it is in (dropped if `b` deleted that element, which includes a
//!    `set` replacing it: a list delete beats a concurrent replace).
//! 3. Same target, both not list ops:
//!    - `set`/`set` and `set`/`del` of a map key: the later-sequenced one wins;
//!    - `del`/`del`: the later one is a no-op (dropped);
//!    - `text`/`text`: merged by [`text_rules`];
//!    - `add`/`add`: both apply (integer adds commute);
//!    - `text` or `add` vs a `set` or `del` of the same value: the `text`/`add` is dropped,
//!      whichever came first (a `set` resets a counter: concurrent adds are lost).
//! 4. Anything else is independent and `a` stays as it is.
//!
//! [`list_rules`]: super::list_rules
//! [`text_rules`]: super::text_rules

use super::list_rules::{map_element, transform_list_op, ListOp};
use super::ops::Op;
use super::path::{is_strict_prefix, PathSeg};
use super::text_rules::transform_text;

/// The list an op edits structurally and the edit, for `ins`, `move` and list-element `del`.
fn as_list_op(op: &Op) -> Option<(&[PathSeg], ListOp)> {
    let (PathSeg::Index(i), list) = op.path().split_last()? else {
        return None;
    };
    let lop = match op {
        Op::Ins { .. } => ListOp::Ins(*i),
        Op::Del { .. } => ListOp::Del(*i),
        Op::Move { to, .. } => ListOp::Move { from: *i, to: *to },
        _ => return None,
    };
    Some((list, lop))
}

/// `a` with its list op replaced (for `ins`/`move`/`del` on the list at `depth`).
fn with_list_op(a: &Op, depth: usize, lop: ListOp) -> Op {
    let mut out = a.clone();
    let index = match lop {
        ListOp::Ins(i) | ListOp::Del(i) => i,
        ListOp::Move { from, to } => {
            if let Op::Move { to: t, .. } = &mut out {
                *t = to;
            }
            from
        }
    };
    out.path_mut()[depth] = PathSeg::Index(index);
    out
}

/// Transforms `a` over the concurrent op `b`; `a_later`: `a` is sequenced after `b`.
/// Returns the ops that replace `a`: none (dropped), one, or two (a split text delete).
pub(crate) fn transform_op(a: &Op, b: &Op, a_later: bool) -> Vec<Op> {
    let (pa, pb) = (a.path(), b.path());
    if matches!(b, Op::Set { .. } | Op::Del { .. }) && is_strict_prefix(pb, pa) {
        return Vec::new();
    }
    if let Some((list, b_lop)) = as_list_op(b) {
        let depth = list.len();
        if !is_strict_prefix(list, pa) {
            return vec![a.clone()];
        }
        if pa.len() == depth + 1 && matches!(a, Op::Ins { .. } | Op::Move { .. }) {
            if let Some((_, a_lop)) = as_list_op(a) {
                return transform_list_op(a_lop, b_lop, a_later)
                    .map(|lop| with_list_op(a, depth, lop))
                    .into_iter()
                    .collect();
            }
        }
        let PathSeg::Index(k) = pa[depth] else {
            return vec![a.clone()];
        };
        return match map_element(k, b_lop) {
            Some(k) => {
                let mut out = a.clone();
                out.path_mut()[depth] = PathSeg::Index(k);
                vec![out]
            }
            None => Vec::new(),
        };
    }
    if pa != pb {
        return vec![a.clone()];
    }
    same_target(a, b, a_later)
}

/// `a` and `b` have the same path and `b` is not a list op.
fn same_target(a: &Op, b: &Op, a_later: bool) -> Vec<Op> {
    let keep = |yes: bool| if yes { vec![a.clone()] } else { Vec::new() };
    let a_is_list_del = matches!(a, Op::Del { .. }) && as_list_op(a).is_some();
    match (a, b) {
        (Op::Set { .. }, Op::Set { .. } | Op::Del { .. }) => keep(a_later),
        (Op::Del { .. }, Op::Set { .. }) => keep(a_is_list_del || a_later),
        (Op::Del { .. } | Op::Text { .. } | Op::Add { .. }, Op::Del { .. }) => Vec::new(),
        (Op::Text { .. } | Op::Add { .. }, Op::Set { .. }) => Vec::new(),
        (
            Op::Text {
                path,
                pos,
                edit: a_edit,
            },
            Op::Text {
                pos: b_pos,
                edit: b_edit,
                ..
            },
        ) => transform_text((*pos, a_edit.clone()), &(*b_pos, b_edit.clone()), a_later)
            .into_iter()
            .map(|(pos, edit)| Op::Text {
                path: path.clone(),
                pos,
                edit,
            })
            .collect(),
        _ => keep(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::ops::{decode_op, Limits};
    use serde_json::{json, Value};

    fn op(v: Value) -> Op {
        decode_op(&v, &Limits::default()).unwrap()
    }

    fn xf(a: Value, b: Value, a_later: bool) -> Vec<Value> {
        transform_op(&op(a), &op(b), a_later)
            .iter()
            .map(Op::to_json)
            .collect()
    }

    #[test]
    fn edit_under_deleted_or_replaced_ancestor_is_dropped() {
        let edit = json!({"op":"text","path":["m","k"],"pos":0,"insert":"x"});
        assert!(xf(edit.clone(), json!({"op":"del","path":["m"]}), true).is_empty());
        assert!(xf(
            edit.clone(),
            json!({"op":"set","path":["m"],"value":{}}),
            true
        )
        .is_empty());
        assert!(xf(
            edit.clone(),
            json!({"op":"set","path":[],"value":{}}),
            false
        )
        .is_empty());
        let nested = json!({"op":"add","path":["l",2,"n"],"value":1});
        assert!(xf(nested, json!({"op":"del","path":["l",2]}), true).is_empty());
    }

    #[test]
    fn edit_inside_an_element_follows_it() {
        let edit = json!({"op":"add","path":["l",2,"n"],"value":1});
        assert_eq!(
            xf(
                edit.clone(),
                json!({"op":"ins","path":["l",0],"value":0}),
                true
            ),
            vec![json!({"op":"add","path":["l",3,"n"],"value":1})]
        );
        assert_eq!(
            xf(edit.clone(), json!({"op":"del","path":["l",1]}), true),
            vec![json!({"op":"add","path":["l",1,"n"],"value":1})]
        );
        assert_eq!(
            xf(edit, json!({"op":"move","path":["l",2],"to":0}), true),
            vec![json!({"op":"add","path":["l",0,"n"],"value":1})]
        );
    }

    #[test]
    fn set_set_later_wins_and_set_del_on_keys_too() {
        let a = json!({"op":"set","path":["k"],"value":1});
        let b = json!({"op":"set","path":["k"],"value":2});
        assert_eq!(xf(a.clone(), b.clone(), true), vec![a.clone()]);
        assert!(xf(a.clone(), b, false).is_empty());
        let del = json!({"op":"del","path":["k"]});
        assert_eq!(xf(a.clone(), del.clone(), true), vec![a.clone()]);
        assert!(xf(a.clone(), del.clone(), false).is_empty());
        assert_eq!(xf(del.clone(), a.clone(), true), vec![del.clone()]);
        assert!(xf(del, a, false).is_empty());
    }

    #[test]
    fn list_delete_beats_replace() {
        let set = json!({"op":"set","path":["l",1],"value":9});
        let del = json!({"op":"del","path":["l",1]});
        for later in [true, false] {
            assert!(xf(set.clone(), del.clone(), later).is_empty());
            assert_eq!(xf(del.clone(), set.clone(), later), vec![del.clone()]);
        }
    }

    #[test]
    fn counters() {
        let add = json!({"op":"add","path":["n"],"value":2});
        let add2 = json!({"op":"add","path":["n"],"value":3});
        assert_eq!(xf(add.clone(), add2.clone(), true), vec![add.clone()]);
        assert_eq!(xf(add2.clone(), add.clone(), false), vec![add2]);
        let set = json!({"op":"set","path":["n"],"value":0});
        for later in [true, false] {
            assert!(xf(add.clone(), set.clone(), later).is_empty());
            assert_eq!(xf(set.clone(), add.clone(), later), vec![set.clone()]);
        }
    }

    #[test]
    fn independent_ops_are_untouched() {
        let a = json!({"op":"set","path":["a"],"value":1});
        let b = json!({"op":"ins","path":["l",0],"value":1});
        assert_eq!(xf(a.clone(), b, true), vec![a.clone()]);
        let c = json!({"op":"set","path":["a","deeper"],"value":1});
        assert_eq!(xf(a.clone(), c, true), vec![a]);
    }
}
