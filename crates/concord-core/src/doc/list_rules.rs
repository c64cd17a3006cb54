//! Index arithmetic for concurrent list edits: where elements and gaps go under ins/del/move.
//!
//! Model: a list op is an insert at a *gap* (`0..=len`), a delete of an *element*, or a move
//! of an element to gap `to` of the list without it. Two concurrent ops are merged into one
//! canonical result: the list of the untouched elements in their old order, with the moved or
//! inserted items placed at their gaps in it, the earlier-sequenced item first on a tie. Each
//! transformed op is whatever turns the other side's result into that canonical list, so TP1
//! (`S·b·a' == S·a·b'`) holds for every pair by construction. Moving the same element twice:
//! the later move wins. Deleting a moved element: the delete wins.
//!
//! All arithmetic saturates, so nonsense input (indexes near `usize::MAX`) cannot panic.

/// A structural edit of one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListOp {
    /// Insert at gap `0`..=`len`.
    Ins(usize),
    /// Delete element `i`.
    Del(usize),
    /// Move element `from` so that it ends at index `to`.
    Move { from: usize, to: usize },
}

/// Where element `k` is after `b`, or `None` if `b` deleted it.
pub(crate) fn map_element(k: usize, b: ListOp) -> Option<usize> {
    match b {
        ListOp::Ins(q) => Some(if k >= q { k.saturating_add(1) } else { k }),
        ListOp::Del(d) if k == d => None,
        ListOp::Del(d) => Some(if k > d { k - 1 } else { k }),
        ListOp::Move { from, to } if k == from => Some(to),
        ListOp::Move { from, to } => {
            let k = if k > from { k - 1 } else { k };
            Some(if k >= to { k.saturating_add(1) } else { k })
        }
    }
}

/// Gap `g` of a list once element `i` is removed (the gaps on either side of it merge).
fn gap_without(g: usize, i: usize) -> usize {
    if g > i {
        g - 1
    } else {
        g
    }
}

/// Final index of an item placed at gap `g` when another item goes to gap `other` of the same
/// list; `first` says whether this item goes first when the gaps are equal.
fn place(g: usize, other: usize, first: bool) -> usize {
    if other < g || (other == g && !first) {
        g.saturating_add(1)
    } else {
        g
    }
}

/// Transforms list op `a` over the concurrent list op `b` on the same list.
/// `a_later`: `a` is sequenced after `b` (so `b` goes first on ties and `a` wins move/move).
pub(crate) fn transform_list_op(a: ListOp, b: ListOp, a_later: bool) -> Option<ListOp> {
    let a_first = !a_later;
    match (a, b) {
        (ListOp::Del(k), b) => map_element(k, b).map(ListOp::Del),
        (ListOp::Ins(p), ListOp::Ins(q)) => Some(ListOp::Ins(place(p, q, a_first))),
        (ListOp::Ins(p), ListOp::Del(k)) => Some(ListOp::Ins(gap_without(p, k))),
        (ListOp::Ins(p), ListOp::Move { from, to }) => {
            Some(ListOp::Ins(place(gap_without(p, from), to, a_first)))
        }
        (ListOp::Move { from: j, to: u }, ListOp::Ins(q)) => Some(ListOp::Move {
            from: map_element(j, b)?,
            to: place(u, gap_without(q, j), a_first),
        }),
        (ListOp::Move { from: j, to: u }, ListOp::Del(k)) => Some(ListOp::Move {
            from: map_element(j, b)?,
            to: gap_without(u, if k > j { k - 1 } else { k }),
        }),
        (ListOp::Move { from: j, to: u }, ListOp::Move { from: i, to: t }) if i == j => {
            a_later.then_some(ListOp::Move { from: t, to: u })
        }
        (ListOp::Move { from: j, to: u }, ListOp::Move { from: i, to: t }) => {
            let gap_a = gap_without(u, if i > j { i - 1 } else { i });
            let gap_b = gap_without(t, if j > i { j - 1 } else { j });
            Some(ListOp::Move {
                from: map_element(j, b)?,
                to: place(gap_a, gap_b, a_first),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListOp::*;

    /// Applies a list op to a vector of labels (test model).
    fn run(list: &mut Vec<char>, op: ListOp) {
        match op {
            Ins(i) => list.insert(i, '+'),
            Del(i) => {
                list.remove(i);
            }
            Move { from, to } => {
                let c = list.remove(from);
                list.insert(to, c);
            }
        }
    }

    fn all_ops(len: usize) -> Vec<ListOp> {
        let mut ops: Vec<ListOp> = (0..=len).map(Ins).collect();
        ops.extend((0..len).map(Del));
        for from in 0..len {
            ops.extend((0..len).map(|to| Move { from, to }));
        }
        ops
    }

    /// Exhaustive TP1 on lists of up to 5 elements, inserts labelled apart per side.
    #[test]
    fn tp1_exhaustive_small_lists() {
        for len in 0..=5 {
            let base: Vec<char> = "abcde".chars().take(len).collect();
            for a in all_ops(len) {
                for b in all_ops(len) {
                    let a1 = transform_list_op(a, b, true);
                    let b1 = transform_list_op(b, a, false);
                    let label = |list: &mut Vec<char>, op: ListOp, c: char| {
                        run(list, op);
                        if let Ins(i) = op {
                            list[i] = c;
                        }
                    };
                    let mut x = base.clone();
                    label(&mut x, b, 'B');
                    if let Some(a1) = a1 {
                        label(&mut x, a1, 'A');
                    }
                    let mut y = base.clone();
                    label(&mut y, a, 'A');
                    if let Some(b1) = b1 {
                        label(&mut y, b1, 'B');
                    }
                    assert_eq!(x, y, "len {len} a {a:?} b {b:?} -> a' {a1:?} b' {b1:?}");
                }
            }
        }
    }

    #[test]
    fn concurrent_inserts_at_one_index_put_the_earlier_first() {
        assert_eq!(transform_list_op(Ins(1), Ins(1), true), Some(Ins(2)));
        assert_eq!(transform_list_op(Ins(1), Ins(1), false), Some(Ins(1)));
    }

    #[test]
    fn move_move_of_one_element_later_wins() {
        let a = Move { from: 0, to: 3 };
        let b = Move { from: 0, to: 1 };
        assert_eq!(transform_list_op(a, b, true), Some(Move { from: 1, to: 3 }));
        assert_eq!(transform_list_op(b, a, false), None);
    }

    #[test]
    fn moves_to_one_gap_put_the_earlier_first() {
        // [a,b,c,d]: `a` (later) moves a to the end, `b` (earlier) moves b to the end.
        let a = Move { from: 0, to: 3 };
        let b = Move { from: 1, to: 3 };
        let mut x = vec!['a', 'b', 'c', 'd'];
        run(&mut x, b);
        run(&mut x, transform_list_op(a, b, true).unwrap());
        assert_eq!(x, vec!['c', 'd', 'b', 'a']);
        // An insert and a move to one gap: the earlier one first too.
        assert_eq!(
            transform_list_op(Ins(4), Move { from: 0, to: 3 }, true),
            Some(Ins(4))
        );
        assert_eq!(
            transform_list_op(Ins(4), Move { from: 0, to: 3 }, false),
            Some(Ins(3))
        );
    }

    #[test]
    fn elements_follow_moves() {
        let m = Move { from: 1, to: 3 };
        assert_eq!(map_element(1, m), Some(3));
        assert_eq!(map_element(0, m), Some(0));
        assert_eq!(map_element(2, m), Some(1));
        assert_eq!(map_element(4, m), Some(4));
        assert_eq!(map_element(2, Del(2)), None);
        assert_eq!(map_element(usize::MAX, Ins(0)), Some(usize::MAX));
    }
}
