//! The configuration of the real `concord` binary: a config file, `CONCORD_*` variables and
//! flags layered in that order (read back with `--print-config`), and bad values from the
//! environment or the file refused with a message naming the setting.

use std::path::Path;
use std::process::{Command, Output};

/// `concord ARGS` with exactly the environment `env` (nothing inherited), run to its end.
fn concord(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running concord")
}

fn printed(out: &Output) -> toml::Table {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .parse()
        .expect("--print-config prints TOML")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "concord.toml",
        "node_id = \"file\"\nmax_frame_bytes = 1000\nwrite_timeout = \"20s\"\n\
         rate_publish_per_conn = \"5:5\"\nretention = [\"chat:*=max_events:10\"]\n",
    );
    let out = concord(
        &[
            "serve",
            "--print-config",
            "--config",
            &file,
            "--node-id",
            "flag",
        ],
        &[
            ("CONCORD_NODE_ID", "env"),
            ("CONCORD_MAX_FRAME_BYTES", "2000"),
            ("CONCORD_IDLE_TIMEOUT", "90"),
        ],
    );
    let t = printed(&out);
    assert_eq!(
        t["node_id"].as_str(),
        Some("flag"),
        "flag over env over file"
    );
    assert_eq!(
        t["max_frame_bytes"].as_integer(),
        Some(2000),
        "env over file"
    );
    assert_eq!(
        t["idle_timeout"].as_str(),
        Some("1m 30s"),
        "env over default"
    );
    assert_eq!(
        t["write_timeout"].as_str(),
        Some("20s"),
        "file over default"
    );
    assert_eq!(t["rate_publish_per_conn"].as_str(), Some("5:5"));
    assert_eq!(t["retention"].as_array().map(|a| a.len()), Some(1), "{t:?}");
    assert_eq!(t["max_data_bytes"].as_integer(), Some(65_536), "default");
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:7400"), "default");
}

#[test]
fn the_config_file_can_come_from_the_environment_and_print_config_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.toml", "max_rooms = 7\nauth_grace = \"3s\"\n");
    let first = concord(
        &["serve", "--print-config"],
        &[("CONCORD_CONFIG", file.as_str())],
    );
    let t = printed(&first);
    assert_eq!(t["max_rooms"].as_integer(), Some(7));
    assert_eq!(t["auth_grace"].as_str(), Some("3s"));
    let again = write(
        dir.path(),
        "b.toml",
        std::str::from_utf8(&first.stdout).unwrap(),
    );
    let second = concord(&["serve", "--print-config", "--config", &again], &[]);
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&first.stdout)
    );
}

#[test]
fn bad_values_are_refused_naming_the_setting() {
    let out = concord(
        &["serve", "--print-config"],
        &[("CONCORD_MAX_FRAME_BYTES", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-frame-bytes") && err.contains("lots"),
        "{err}"
    );

    let out = concord(
        &["serve", "--print-config", "--shutdown-timeout", "soon"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shutdown-timeout"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "listen = \"nowhere\"\n");
    let out = concord(&["serve", "--print-config", "--config", &file], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`listen`") && err.contains("bad.toml"),
        "{err}"
    );

    let file = write(dir.path(), "unknown.toml", "max_conn = 5\n");
    let out = concord(&["serve", "--print-config", "--config", &file], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting `max_conn`"), "{err}");
}
