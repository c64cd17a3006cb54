//! Doc property tests and simulations (unit tests of each rule live next to the rule).
//!
//! Cases per property: `PROPTEST_CASES`, else the fast default (1,000 per kind pair for TP1, 200
//! elsewhere, 50 for the simulation), or ten times that with `CONCORD_HEAVY=1`. The long run:
//! `CONCORD_HEAVY=1 cargo test -p concord-core --release doc::tests`.

mod fuzz;
mod gen;
mod simulation;
mod tp1;
mod vectors;
