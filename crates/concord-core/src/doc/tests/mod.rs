//! Doc property tests and simulations (unit tests of each rule live next to the rule).
//!
//! Cases per property: `PROPTEST_CASES` (default 10,000 per kind pair for TP1, 1000 elsewhere, 300 for
//! the simulation). The long run:
//! `PROPTEST_CASES=10000 cargo test -p concord-core --release doc::tests`.

mod fuzz;
mod gen;
mod simulation;
mod tp1;
