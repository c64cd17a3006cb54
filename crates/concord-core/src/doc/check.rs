//! Invariant checks for fuzzing and simulation: TP1, inverses, canonical form, convergence.
//!
//! Each check returns `Err(Violation)` describing what broke instead of panicking, so fuzzers
//! and simulations can report the failing input.

use super::apply::{apply, apply_with_inverse};
use super::hash::{canonical_json, state_hash};
use super::ops::{encode_ops, Op};
use super::transform::transform_pair;
use serde_json::Value;

/// A broken invariant, with enough context to reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

fn ops_text(ops: &[Op]) -> String {
    encode_ops(ops).to_string()
}

/// TP1 for two lists valid against `state` (`a` later, `b` earlier): both orders reach the
/// same state. Returns that state.
pub fn check_tp1(state: &Value, a: &[Op], b: &[Op]) -> Result<Value, Violation> {
    let ctx = || format!("state {state} a {} b {}", ops_text(a), ops_text(b));
    let after_a = apply(state, a).map_err(|e| Violation(format!("a invalid: {e}; {}", ctx())))?;
    let after_b = apply(state, b).map_err(|e| Violation(format!("b invalid: {e}; {}", ctx())))?;
    let (a1, b1) = transform_pair(a, b);
    let ctx2 = || format!("{} a' {} b' {}", ctx(), ops_text(&a1), ops_text(&b1));
    let x = apply(&after_b, &a1).map_err(|e| Violation(format!("a' fails: {e}; {}", ctx2())))?;
    let y = apply(&after_a, &b1).map_err(|e| Violation(format!("b' fails: {e}; {}", ctx2())))?;
    if state_hash(&x) != state_hash(&y) {
        return Err(Violation(format!(
            "diverged: S·b·a' = {x} but S·a·b' = {y}; {}",
            ctx2()
        )));
    }
    Ok(x)
}

/// Applying `ops` and then their inverse gives `state` back.
pub fn check_inverse(state: &Value, ops: &[Op]) -> Result<(), Violation> {
    let mut s = state.clone();
    let Ok(inverse) = apply_with_inverse(&mut s, ops) else {
        return if s == *state {
            Ok(())
        } else {
            Err(Violation(format!(
                "failed list changed the state: {state} -> {s} by {}",
                ops_text(ops)
            )))
        };
    };
    apply_with_inverse(&mut s, &inverse)
        .map_err(|e| Violation(format!("inverse fails: {e}; ops {}", ops_text(ops))))?;
    if s != *state {
        return Err(Violation(format!(
            "inverse of {} gave {s}, not {state}",
            ops_text(ops)
        )));
    }
    Ok(())
}

/// The canonical form parses back to a value with the same canonical form (and hash).
pub fn check_canonical(v: &Value) -> Result<(), Violation> {
    let text = canonical_json(v);
    let back: Value = serde_json::from_str(&text)
        .map_err(|e| Violation(format!("canonical JSON does not parse: {e}: {text}")))?;
    if canonical_json(&back) != text {
        return Err(Violation(format!("canonical JSON is not stable: {text}")));
    }
    Ok(())
}

/// Every replica has the same state hash.
pub fn check_converged<'a>(replicas: impl IntoIterator<Item = &'a Value>) -> Result<(), Violation> {
    let mut first: Option<(&Value, String)> = None;
    for (i, v) in replicas.into_iter().enumerate() {
        let h = state_hash(v);
        match &first {
            None => first = Some((v, h)),
            Some((v0, h0)) if *h0 != h => {
                return Err(Violation(format!(
                    "replica {i} diverged: {v} (hash {h}) vs replica 0: {v0} (hash {h0})"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::ops::{decode_ops, Limits};
    use serde_json::json;

    #[test]
    fn checks_pass_and_fail() {
        let s = json!({"l":[1,2],"n":1});
        let a = decode_ops(&json!([{"op":"del","path":["l",0]}]), &Limits::default()).unwrap();
        let b = decode_ops(
            &json!([{"op":"add","path":["n"],"value":1}]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(check_tp1(&s, &a, &b).unwrap(), json!({"l":[2],"n":2}));
        check_inverse(&s, &a).unwrap();
        check_canonical(&s).unwrap();
        check_converged([&s, &json!({"n":1,"l":[1,2]})]).unwrap();
        assert!(check_converged([&s, &json!({})]).is_err());
        assert!(check_tp1(&json!({}), &a, &b).is_err());
    }
}
