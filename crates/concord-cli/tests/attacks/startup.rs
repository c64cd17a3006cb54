//! Misconfigurations an operator can make by accident (or an attacker can exploit): keys that
//! cannot do their job must stop the server at start, with a message that says why, instead of
//! starting and then refusing (or accepting) every request.

use std::process::{Command, Stdio};

const KEYS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../concord-server/src/auth/testkeys"
);

/// Runs `concord serve ARGS` on port 0 and expects it to exit with an error before listening;
/// returns its stderr.
fn refuses_to_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("data dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn concord");
    // A server that starts would run forever: give it 20 s, then kill it (by its pid) and fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(!status.success(), "concord {args:?} exited 0");
            assert!(
                !stdout.contains("listening"),
                "concord {args:?} listened before failing: {stdout}"
            );
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("concord {args:?} started although its configuration is unusable");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write file");
    p.display().to_string()
}

#[test]
fn a_private_or_wrong_curve_key_as_the_public_key_stops_the_server() {
    for key in [
        "ec_private.pem",
        "rsa_private.pem",
        "p384_public.pem",
        "rsa1024_public.pem",
    ] {
        let path = format!("{KEYS}/{key}");
        let err = refuses_to_start(&["--auth", "jwt", "--jwt-public-key", &path]);
        assert!(err.contains("key"), "{key}: unclear error: {err}");
    }
}

#[test]
fn an_empty_or_short_admin_key_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("one", b"x"),
        ("short", b"0123456789\n"),
    ] {
        let path = file(&dir, name, bytes);
        let err = refuses_to_start(&["--admin-key-file", &path]);
        assert!(err.contains("at least 16 bytes"), "{name}: {err}");
    }
}
