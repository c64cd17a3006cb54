//! Position arithmetic for concurrent edits of one string (code point positions).
//!
//! - insert vs insert: positions shift by the other's length; at the same position the
//!   earlier-sequenced insert goes first.
//! - insert vs delete: an insert before or at the start of a deleted range stays put, one after
//!   it shifts left, one strictly inside it lands where the range was (its text survives).
//! - delete vs insert inside its range: the delete splits in two around the inserted text.
//! - delete vs delete: the union is removed once (the overlap is dropped from the later one);
//!   a delete left with nothing to delete disappears.
//!
//! All arithmetic saturates, so nonsense input cannot panic.

use super::ops::TextEdit;

/// A text edit at a position, as `(pos, edit)`.
pub(crate) type Edit = (usize, TextEdit);

fn len(edit: &TextEdit) -> usize {
    match edit {
        TextEdit::Insert(s) => s.chars().count(),
        TextEdit::Delete(n) => *n,
    }
}

/// Transforms edit `a` over the concurrent edit `b` of the same string; `a_later`: `a` is
/// sequenced after `b`. Returns zero, one or two edits to apply in order.
pub(crate) fn transform_text(a: Edit, b: &Edit, a_later: bool) -> Vec<Edit> {
    let (p, a_edit) = a;
    let q = b.0;
    let n = len(&b.1);
    match (&a_edit, &b.1) {
        (TextEdit::Insert(_), TextEdit::Insert(_)) => {
            let shift = q < p || (q == p && a_later);
            vec![(if shift { p.saturating_add(n) } else { p }, a_edit)]
        }
        (TextEdit::Insert(_), TextEdit::Delete(_)) => {
            let pos = if p <= q {
                p
            } else if p >= q.saturating_add(n) {
                p - n
            } else {
                q
            };
            vec![(pos, a_edit)]
        }
        (TextEdit::Delete(m), TextEdit::Insert(_)) => {
            let m = *m;
            if q <= p {
                vec![(p.saturating_add(n), a_edit)]
            } else if q >= p.saturating_add(m) {
                vec![(p, a_edit)]
            } else {
                vec![
                    (p, TextEdit::Delete(q - p)),
                    (
                        p.saturating_add(n),
                        TextEdit::Delete(p.saturating_add(m) - q),
                    ),
                ]
            }
        }
        (TextEdit::Delete(m), TextEdit::Delete(_)) => {
            let m = *m;
            let (a_end, b_end) = (p.saturating_add(m), q.saturating_add(n));
            let overlap = a_end.min(b_end).saturating_sub(p.max(q));
            let pos = if p <= q {
                p
            } else if p >= b_end {
                p - n
            } else {
                q
            };
            let left = m - overlap;
            if m > 0 && left == 0 {
                vec![]
            } else {
                vec![(pos, TextEdit::Delete(left))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str, (pos, edit): &Edit) -> String {
        let mut c: Vec<char> = s.chars().collect();
        match edit {
            TextEdit::Insert(t) => {
                c.splice(*pos..*pos, t.chars());
            }
            TextEdit::Delete(n) => {
                c.drain(*pos..*pos + n);
            }
        }
        c.into_iter().collect()
    }

    fn edits(len: usize, label: &str) -> Vec<Edit> {
        let mut out = Vec::new();
        for p in 0..=len {
            out.push((p, TextEdit::Insert(label.to_string())));
            for n in 0..=len - p {
                out.push((p, TextEdit::Delete(n)));
            }
        }
        out
    }

    /// Exhaustive TP1 on strings of up to 5 code points.
    #[test]
    fn tp1_exhaustive_small_strings() {
        for len in 0..=5 {
            let base: String = "aé😀dz".chars().take(len).collect();
            for a in edits(len, "XY") {
                for b in edits(len, "Q") {
                    let a1 = transform_text(a.clone(), &b, true);
                    let b1 = transform_text(b.clone(), &a, false);
                    let x = a1.iter().fold(run(&base, &b), |s, e| run(&s, e));
                    let y = b1.iter().fold(run(&base, &a), |s, e| run(&s, e));
                    assert_eq!(x, y, "{base:?} a {a:?} b {b:?} -> {a1:?} / {b1:?}");
                }
            }
        }
    }

    #[test]
    fn overlapping_deletes_remove_the_union_once() {
        // "abcdef": a deletes "bcd", b deletes "cde": together "af".
        let a = (1, TextEdit::Delete(3));
        let b = (2, TextEdit::Delete(3));
        let a1 = transform_text(a, &b, true);
        assert_eq!(a1, vec![(1, TextEdit::Delete(1))]);
        assert_eq!(a1.iter().fold(run("abcdef", &b), |s, e| run(&s, e)), "af");
    }

    #[test]
    fn delete_around_an_insert_keeps_the_inserted_text() {
        let a = (1, TextEdit::Delete(3));
        let b = (2, TextEdit::Insert("XY".into()));
        let a1 = transform_text(a, &b, true);
        assert_eq!(
            a1.iter().fold(run("abcdef", &b), |s, e| run(&s, e)),
            "aXYef"
        );
    }
}
