use concord_core::doc::{decode_ops, transform_over_many, Limits};
use serde_json::json;
fn main() {
    let lim = Limits {
        max_ops: 100000,
        max_path_depth: 64,
    };
    for (name, mk) in [
        (
            "text",
            (|i: usize| json!({"op":"text","path":["t"],"pos":i % 7,"insert":"x"}))
                as fn(usize) -> serde_json::Value,
        ),
        (
            "ins",
            |i: usize| json!({"op":"ins","path":["l", i % 5],"value":1}),
        ),
        (
            "set-deep",
            |i: usize| json!({"op":"set","path":["a","b","c","d","e","f","g","h", format!("k{}", i%9)],"value":i}),
        ),
    ] {
        let list: Vec<_> = (0..300).map(mk).collect();
        let ops = decode_ops(&json!(list), &lim).unwrap();
        let committed: Vec<_> = (0..100).map(|_| ops.clone()).collect();
        let t = std::time::Instant::now();
        let out = transform_over_many(&ops, &committed);
        let el = t.elapsed();
        println!(
            "{name}: 300 x 30000 = 9e6 pairs in {el:?} ({:.1} ns/pair) {}",
            el.as_nanos() as f64 / 9e6,
            out.ops.len()
        );
    }
}
