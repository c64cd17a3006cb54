//! Operational transformation of op lists: the server's rebase and the client's two-way step.
//!
//! Two op lists made against the same state are merged by transforming each op over every
//! op of the other side, in order (the usual OT grid); the per-op rules live in
//! [`rules`](super::rules). One side is always *earlier*: it was (or will be) sequenced first,
//! and wins position ties (inserts go first) while the *later* side wins value conflicts
//! (`set` vs `set`: last writer wins).
//!
//! - Server: an incoming list made at `base` is rebased with [`transform_over_many`] over every
//!   list committed after `base`, in seq order; ops that vanish are reported in `dropped`.
//! - Client (one op list in flight at a time): when a committed list arrives that is not its
//!   own, `(pending', committed') = transform_pair(pending, committed)`; it applies `committed'`
//!   to its optimistic state and keeps `pending'` as its pending list. The server computes the
//!   same `pending'` when the list arrives, so every replica converges:
//!   `apply(apply(S, b), a') == apply(apply(S, a), b')` (TP1) holds for every pair of op kinds.
//!
//! A client must not send a second list made on top of an unacknowledged one with the same
//! `base`: the server would transform it over the first list again. Send the next list after
//! the ack (with `base` = the acked seq, transformed over what arrived meanwhile).

use super::ops::Op;
use super::rules::transform_op;

/// An incoming op list rebased over committed ops.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transformed {
    /// The ops to commit, in order (may be fewer or, for split text deletes, more than sent).
    pub ops: Vec<Op>,
    /// Indexes of the incoming ops that contributed no op (target concurrently deleted or
    /// replaced, a lost `set`, a delete of something already deleted), ascending.
    pub dropped: Vec<usize>,
}

/// Bounds the work of one rebase: the number of pairwise op transformations it may do.
///
/// A rebase of `n` ops over `m` committed ops takes `n × m` steps, more when a text delete is
/// split around concurrent inserts (each piece is transformed on its own).
#[derive(Debug)]
pub struct Budget {
    left: std::cell::Cell<u64>,
    exhausted: std::cell::Cell<bool>,
}

impl Budget {
    pub fn new(steps: u64) -> Budget {
        Budget {
            left: std::cell::Cell::new(steps),
            exhausted: std::cell::Cell::new(false),
        }
    }
    pub fn unlimited() -> Budget {
        Budget::new(u64::MAX)
    }
    /// Takes one step; false (for good) once the budget is spent.
    fn spend(&self) -> bool {
        match self.left.get().checked_sub(1) {
            Some(left) if !self.exhausted.get() => {
                self.left.set(left);
                true
            }
            _ => {
                self.exhausted.set(true);
                false
            }
        }
    }
    pub fn is_exhausted(&self) -> bool {
        self.exhausted.get()
    }
}

/// A rebase stopped because it needed more steps than its [`Budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rebase needs more than {0} transformation steps")]
pub struct OverBudget(pub u64);

/// Rebases `incoming` (later) over `committed` (earlier), both made against the same state.
pub fn transform(incoming: &[Op], committed: &[Op]) -> Transformed {
    transform_in(incoming, committed, &Budget::unlimited())
}

fn transform_in(incoming: &[Op], committed: &[Op], budget: &Budget) -> Transformed {
    let mut dropped = Vec::new();
    let mut ops = Vec::with_capacity(incoming.len());
    let mut rest = std::borrow::Cow::Borrowed(committed);
    for (index, op) in incoming.iter().enumerate() {
        if budget.is_exhausted() {
            break;
        }
        let pieces = if index + 1 == incoming.len() {
            // The last op: nothing after it needs `committed` transformed over it.
            over_all(op, rest.iter(), true, budget)
        } else {
            let (pieces, next) = cross(op, &rest, true, budget);
            rest = std::borrow::Cow::Owned(next);
            pieces
        };
        if pieces.is_empty() {
            dropped.push(index);
        }
        ops.extend(pieces);
    }
    Transformed { ops, dropped }
}

/// Rebases `incoming`, made at `base`, over every op list committed after `base` (in seq order).
pub fn transform_over_many<L: AsRef<[Op]>>(incoming: &[Op], committed: &[L]) -> Transformed {
    transform_over_many_in(incoming, committed, &Budget::unlimited())
}

/// [`transform_over_many`] within at most `max_steps` pairwise steps (see [`Budget`]).
pub fn transform_over_many_bounded<L: AsRef<[Op]>>(
    incoming: &[Op],
    committed: &[L],
    max_steps: u64,
) -> Result<Transformed, OverBudget> {
    let budget = Budget::new(max_steps);
    let out = transform_over_many_in(incoming, committed, &budget);
    if budget.is_exhausted() {
        return Err(OverBudget(max_steps));
    }
    Ok(out)
}

fn transform_over_many_in<L: AsRef<[Op]>>(
    incoming: &[Op],
    committed: &[L],
    budget: &Budget,
) -> Transformed {
    if let [op] = incoming {
        // The common case (one op): walk the committed lists in place, one way only.
        let pieces = over_all(
            op,
            committed.iter().flat_map(|l| l.as_ref().iter()),
            true,
            budget,
        );
        let dropped = if pieces.is_empty() {
            vec![0]
        } else {
            Vec::new()
        };
        return Transformed {
            ops: pieces,
            dropped,
        };
    }
    let all: Vec<Op> = committed
        .iter()
        .flat_map(|list| list.as_ref().iter().cloned())
        .collect();
    transform_in(incoming, &all, budget)
}

/// `x` transformed over every op of `b`, in order — the first half of [`cross`], without
/// transforming `b` over `x`.
fn over_all<'a>(
    x: &Op,
    b: impl IntoIterator<Item = &'a Op>,
    x_later: bool,
    budget: &Budget,
) -> Vec<Op> {
    let mut xs = vec![x.clone()];
    for y in b {
        xs = match xs.as_slice() {
            [] => return Vec::new(),
            [one] => {
                if !budget.spend() {
                    return Vec::new();
                }
                transform_op(one, y, x_later)
            }
            many => grid(many, std::slice::from_ref(y), x_later, budget).0,
        };
    }
    xs
}

/// Transforms two concurrent lists over each other: `a` is later, `b` earlier. Returns
/// `(a', b')` with `apply(apply(S, b), a') == apply(apply(S, a), b')`.
pub fn transform_pair(a: &[Op], b: &[Op]) -> (Vec<Op>, Vec<Op>) {
    grid(a, b, true, &Budget::unlimited())
}

/// The OT grid: `a` over `b` and `b` over `a`.
fn grid(a: &[Op], b: &[Op], a_later: bool, budget: &Budget) -> (Vec<Op>, Vec<Op>) {
    let mut out = Vec::with_capacity(a.len());
    let mut rest = b.to_vec();
    for op in a {
        if budget.is_exhausted() {
            break;
        }
        let (pieces, next) = cross(op, &rest, a_later, budget);
        out.extend(pieces);
        rest = next;
    }
    (out, rest)
}

/// One op `x` over a list `b`: returns `x` transformed over all of `b` (zero or more ops) and
/// `b` transformed over `x`.
fn cross(x: &Op, b: &[Op], x_later: bool, budget: &Budget) -> (Vec<Op>, Vec<Op>) {
    let mut xs = vec![x.clone()];
    let mut b_out = Vec::with_capacity(b.len());
    for y in b {
        let (xs_next, ys) = match xs.as_slice() {
            [] => (Vec::new(), vec![y.clone()]),
            [one] => {
                if !budget.spend() {
                    return (Vec::new(), Vec::new());
                }
                (
                    transform_op(one, y, x_later),
                    transform_op(y, one, !x_later),
                )
            }
            // `x` was split (a text delete around inserts): merge the pieces with `y`.
            many => grid(many, std::slice::from_ref(y), x_later, budget),
        };
        xs = xs_next;
        b_out.extend(ys);
    }
    (xs, b_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::apply::apply;
    use crate::doc::ops::{decode_ops, Limits};
    use serde_json::{json, Value};

    fn ops(v: Value) -> Vec<Op> {
        decode_ops(&v, &Limits::default()).unwrap()
    }

    /// Checks TP1 for the pair and returns the merged state.
    fn merge(s: Value, a: Value, b: Value) -> Value {
        let (a, b) = (ops(a), ops(b));
        let (a1, b1) = transform_pair(&a, &b);
        let x = apply(&apply(&s, &b).unwrap(), &a1).unwrap();
        let y = apply(&apply(&s, &a).unwrap(), &b1).unwrap();
        assert_eq!(x, y);
        x
    }

    #[test]
    fn concurrent_inserts_at_one_position_converge_earlier_first() {
        let s = json!({"l":[1,2],"t":"ac"});
        let a = json!([{"op":"ins","path":["l",1],"value":"A"},{"op":"text","path":["t"],"pos":1,"insert":"A"}]);
        let b = json!([{"op":"ins","path":["l",1],"value":"B"},{"op":"text","path":["t"],"pos":1,"insert":"B"}]);
        assert_eq!(merge(s, a, b), json!({"l":[1,"B","A",2],"t":"aBAc"}));
    }

    #[test]
    fn overlapping_deletes_remove_the_union_once() {
        let s = json!({"t":"abcdef","l":[0,1,2,3]});
        let a = json!([{"op":"text","path":["t"],"pos":1,"delete":3},{"op":"del","path":["l",1]},{"op":"del","path":["l",1]}]);
        let b = json!([{"op":"text","path":["t"],"pos":2,"delete":3},{"op":"del","path":["l",2]}]);
        assert_eq!(merge(s, a, b), json!({"t":"af","l":[0,3]}));
    }

    #[test]
    fn move_vs_edit_inside_the_moved_element() {
        let s = json!({"l":[{"t":"x"},{"t":"y"},{"t":"z"}]});
        let a = json!([{"op":"text","path":["l",0,"t"],"pos":1,"insert":"!"}]);
        let b = json!([{"op":"move","path":["l",0],"to":2}]);
        assert_eq!(
            merge(s, a, b),
            json!({"l":[{"t":"y"},{"t":"z"},{"t":"x!"}]})
        );
    }

    #[test]
    fn edit_under_deleted_path_is_dropped_and_reported() {
        let committed = ops(json!([{"op":"del","path":["m"]}]));
        let incoming = ops(json!([
            {"op":"set","path":["n"],"value":1},
            {"op":"set","path":["m","k"],"value":1},
            {"op":"add","path":["c"],"value":1}
        ]));
        let out = transform(&incoming, &committed);
        assert_eq!(out.dropped, vec![1]);
        assert_eq!(out.ops.len(), 2);
    }

    #[test]
    fn set_set_later_wins() {
        let s = json!({"k":0});
        let a = json!([{"op":"set","path":["k"],"value":"later"}]);
        let b = json!([{"op":"set","path":["k"],"value":"earlier"}]);
        assert_eq!(merge(s, a, b), json!({"k":"later"}));
    }

    #[test]
    fn adds_commute() {
        let s = json!({"n":10});
        let a = json!([{"op":"add","path":["n"],"value":5}]);
        let b = json!([{"op":"add","path":["n"],"value":-2}]);
        assert_eq!(merge(s, a, b), json!({"n":13}));
    }

    #[test]
    fn set_resets_a_counter_over_concurrent_adds() {
        let s = json!({"n":10});
        let add = json!([{"op":"add","path":["n"],"value":5}]);
        let set = json!([{"op":"set","path":["n"],"value":0}]);
        assert_eq!(merge(s.clone(), add.clone(), set.clone()), json!({"n":0}));
        assert_eq!(merge(s, set, add), json!({"n":0}));
    }

    #[test]
    fn over_many_equals_one_after_another() {
        let s = json!({"t":"hello","l":[1,2,3]});
        let b1 = ops(json!([{"op":"text","path":["t"],"pos":0,"insert":">"}]));
        let b2 = ops(
            json!([{"op":"move","path":["l",0],"to":2},{"op":"text","path":["t"],"pos":6,"insert":"<"}]),
        );
        let a = ops(
            json!([{"op":"text","path":["t"],"pos":1,"delete":3},{"op":"set","path":["l",0],"value":"one"}]),
        );
        let many = transform_over_many(&a, &[b1.clone(), b2.clone()]);
        let step = transform(&transform(&a, &b1).ops, &b2);
        assert_eq!(many.ops, step.ops);
        let mut state = apply(&s, &b1).unwrap();
        state = apply(&state, &b2).unwrap();
        state = apply(&state, &many.ops).unwrap();
        assert_eq!(state, json!({"t":">ho<","l":[2,3,"one"]}));
    }

    #[test]
    fn a_bounded_rebase_stops_at_its_budget() {
        let committed: Vec<Vec<Op>> = (0..10)
            .map(|i| ops(json!([{"op":"set","path":[format!("k{i}")],"value":i}])))
            .collect();
        let incoming =
            ops(json!([{"op":"add","path":["n"],"value":1},{"op":"add","path":["m"],"value":1}]));
        let full = transform_over_many(&incoming, &committed);
        assert_eq!(
            transform_over_many_bounded(&incoming, &committed, 20),
            Ok(full)
        );
        assert_eq!(
            transform_over_many_bounded(&incoming, &committed, 19),
            Err(OverBudget(19))
        );
        // A delete split around many inserts costs more than one step per committed op.
        let inserts: Vec<Vec<Op>> = (0..50)
            .map(|i| ops(json!([{"op":"text","path":["t"],"pos":2 * i + 1,"insert":"x"}])))
            .collect();
        let del = ops(json!([{"op":"text","path":["t"],"pos":0,"delete":100}]));
        assert!(transform_over_many_bounded(&del, &inserts, 50).is_err());
        assert!(transform_over_many_bounded(&del, &inserts, 5_000).is_ok());
    }

    #[test]
    fn a_split_delete_still_merges_with_later_ops() {
        let s = json!({"t":"abcdefgh"});
        let a = json!([{"op":"text","path":["t"],"pos":1,"delete":6},{"op":"text","path":["t"],"pos":1,"insert":"_"}]);
        let b = json!([{"op":"text","path":["t"],"pos":3,"insert":"X"},{"op":"text","path":["t"],"pos":6,"insert":"Y"},{"op":"text","path":["t"],"pos":0,"delete":2}]);
        merge(s, a, b);
    }
}
