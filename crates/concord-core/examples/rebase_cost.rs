//! Measures the cost of one pairwise op transformation in the server's rebase, for the kinds
//! that cost the most, to size `doc_max_rebase_work`: `cargo run -p concord-core --example
//! rebase_cost` (concord-core is built with opt-level 3 in every profile).

use concord_core::doc::{decode_ops, transform_over_many, Limits};
use serde_json::{json, Value};

/// An op kind: its name and the op it makes for index `i`.
type Kind = (&'static str, fn(usize) -> Value);

fn main() {
    let limits = Limits {
        max_ops: 100_000,
        max_path_depth: 64,
    };
    let kinds: [Kind; 3] = [
        (
            "text insert",
            |i| json!({"op":"text","path":["t"],"pos":i % 7,"insert":"x"}),
        ),
        (
            "list insert",
            |i| json!({"op":"ins","path":["l", i % 5],"value":1}),
        ),
        (
            "deep set",
            |i| json!({"op":"set","path":["a","b","c","d","e","f","g","h", format!("k{}", i % 9)],"value":i}),
        ),
    ];
    for (name, make) in kinds {
        let list: Vec<Value> = (0..300).map(make).collect();
        let ops = decode_ops(&json!(list), &limits).expect("ops");
        let committed: Vec<_> = (0..100).map(|_| ops.clone()).collect();
        let start = std::time::Instant::now();
        let out = transform_over_many(&ops, &committed);
        let took = start.elapsed();
        let per_pair = took.as_nanos() as f64 / 9e6;
        println!(
            "{name}: 300 ops over 100 lists of 300 (9e6 pairs) in {took:.2?}: {per_pair:.0} ns/pair, \
             50 000 pairs ≈ {:.1} ms ({} ops out)",
            per_pair * 50_000.0 / 1e6,
            out.ops.len()
        );
    }
}
