//! Property: TP1 convergence for every pair of op kinds, and for op lists, on random documents.
//!
//! `PROPTEST_CASES` sets the cases per kind pair; without it, the pairwise law runs 1,000 (10,000
//! with `CONCORD_HEAVY=1`, about 40 s in a test build, where concord-core is optimised) and the
//! op-list law 200 (2,000 heavy).

use super::gen::{config, doc, op_list, op_of_kind, Rng};
use crate::doc::check::check_tp1;
use crate::doc::OpKind;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// Runs the TP1 property for `a_kind` against every kind of `b`.
fn tp1_against_every_kind(a_kind: OpKind) {
    for b_kind in OpKind::ALL {
        let mut runner = TestRunner::new(config(1_000, 10_000));
        let result = runner.run(&(doc(), any::<u64>(), any::<u64>()), |(s, sa, sb)| {
            let a = op_of_kind(&s, a_kind, &mut Rng::new(sa));
            let b = op_of_kind(&s, b_kind, &mut Rng::new(sb));
            if let (Some(a), Some(b)) = (a, b) {
                check_tp1(&s, &[a], &[b]).map_err(|v| TestCaseError::fail(v.0))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("TP1 {a_kind:?} (later) vs {b_kind:?} (earlier): {e}");
        }
    }
}

#[test]
fn tp1_set_vs_every_kind() {
    tp1_against_every_kind(OpKind::Set);
}

#[test]
fn tp1_del_vs_every_kind() {
    tp1_against_every_kind(OpKind::Del);
}

#[test]
fn tp1_ins_vs_every_kind() {
    tp1_against_every_kind(OpKind::Ins);
}

#[test]
fn tp1_move_vs_every_kind() {
    tp1_against_every_kind(OpKind::Move);
}

#[test]
fn tp1_text_insert_vs_every_kind() {
    tp1_against_every_kind(OpKind::TextInsert);
}

#[test]
fn tp1_text_delete_vs_every_kind() {
    tp1_against_every_kind(OpKind::TextDelete);
}

#[test]
fn tp1_add_vs_every_kind() {
    tp1_against_every_kind(OpKind::Add);
}

proptest! {
    #![proptest_config(config(200, 2_000))]

    /// TP1 for op lists of up to 4 ops per side (the OT grid, split text deletes included).
    #[test]
    fn tp1_op_lists(s in doc(), na in 1usize..5, nb in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let a = op_list(&s, na, &mut rng);
        let b = op_list(&s, nb, &mut rng);
        check_tp1(&s, &a, &b).map_err(|v| TestCaseError::fail(v.0))?;
    }
}
