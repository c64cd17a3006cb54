//! Tests that the crate's layering holds (ARCHITECTURE.md, "Layering"): the room never imports
//! the gateway or the edge, and the config imports nothing above it. Read from the sources, so
//! a new import that breaks a rule fails here before it becomes a cycle.

use std::path::{Path, PathBuf};

/// Ways a module of the crate can name the modules in `targets`.
fn forbidden_paths(targets: &[&str]) -> Vec<String> {
    let mut paths = Vec::new();
    for t in targets {
        paths.push(format!("crate::{t}"));
        // From `room/x.rs`, `room/actor/x.rs`, … (`super::` chains up to the crate root).
        for depth in 1..=4 {
            paths.push(format!("{}{t}", "super::".repeat(depth)));
        }
    }
    paths
}

/// The `(line, text)` of each line of `source` (comments excluded) naming a forbidden path.
fn violations(source: &str, forbidden: &[String]) -> Vec<(usize, String)> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| forbidden.iter().any(|f| line.contains(f.as_str())))
        .map(|(i, line)| (i + 1, line.trim().to_string()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source dir") {
        let path = entry.expect("a dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_checker_sees_each_way_of_naming_the_gateway() {
    let forbidden = forbidden_paths(&["gateway"]);
    for line in [
        "use crate::gateway::http::HTTP_CLIENT;",
        "use super::super::gateway::App;",
        "let x = super::super::super::gateway::f();",
    ] {
        assert_eq!(violations(line, &forbidden).len(), 1, "{line}");
    }
    assert!(violations("use crate::room::doc;", &forbidden).is_empty());
    assert!(violations("// crate::gateway in a comment", &forbidden).is_empty());
}

#[test]
fn the_room_never_imports_the_gateway_or_the_edge() {
    let forbidden = forbidden_paths(&["gateway", "edge"]);
    let mut files = Vec::new();
    rust_files(&src().join("room"), &mut files);
    // The room module itself and its actor are among them: the walk reads the real tree.
    assert!(files.iter().any(|f| f.ends_with("room/mod.rs")));
    assert!(files.iter().any(|f| f.ends_with("room/actor/mod.rs")));
    // And the room's root is what the compiler reads (not a stale copy somewhere else).
    let root = std::fs::read_to_string(src().join("room/mod.rs")).expect("room/mod.rs");
    assert_eq!(root, include_str!("room/mod.rs"));
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a room source file");
        let found = violations(&text, &forbidden);
        assert!(
            found.is_empty(),
            "{} imports the gateway: {found:?}",
            file.display()
        );
    }
}

#[test]
fn the_config_imports_nothing_above_it() {
    let forbidden = forbidden_paths(&["room", "gateway", "edge", "context", "store"]);
    let found = violations(include_str!("config.rs"), &forbidden);
    assert!(
        found.is_empty(),
        "config.rs imports from above it: {found:?}"
    );
}
